#!/usr/bin/env bash
# Half precision against f32, side by side: cross-entropy at N = 4096, C = 32000 and dense
# InfoNCE at N = M = 4096, C = 1000 (loss + gradient, 2 threads, medians), each f32 run
# followed at once by the same call in bf16 (and f16 for cross-entropy), so both see the
# same phase of the shared machine's memory bandwidth. Prints one line per pair with the
# speed-up. Usage: bash benches/half_ratio.sh [rounds, default 3] [extra bench flags]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
shift || true
cargo build --release --example bench -q
bench=target/release/examples/bench
ms() {
  local out
  out=$("$bench" "$@" --threads 2)
  echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["median_ms"])'
}
pair() {
  local label=$1 dtype=$2
  shift 2
  local a b
  a=$(ms "$@" --dtype f32)
  b=$(ms "$@" --dtype "$dtype")
  python3 -c "print(f'| $label | $dtype | {$a:.1f} ms | {$b:.1f} ms | {$a / $b:.2f}x |')"
}
echo "| case | dtype | f32 | half | speed-up |"
echo "|---|---|---|---|---|"
for _ in $(seq "$rounds"); do
  pair "soft-ce / dense, 4096 x 32000" bf16 --loss soft-ce --targets dense --n 4096 --c 32000 --reps 10 "$@"
  pair "hard-ce / hard, 4096 x 32000" bf16 --loss hard-ce --targets hard --n 4096 --c 32000 --reps 10 "$@"
  pair "soft-ce / dense, 4096 x 32000" f16 --loss soft-ce --targets dense --n 4096 --c 32000 --reps 10 "$@"
  pair "soft-infonce / dense, 4096 x 4096 x 1000" bf16 --loss soft-infonce --targets dense --n 4096 --m 4096 --c 1000 --reps 3 "$@"
done
