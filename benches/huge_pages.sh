#!/usr/bin/env bash
# The kernels on 4 KiB pages against transparent huge pages, side by side: each case at
# N = 4096, C = 32000 (loss + gradient, 2 threads, medians) runs once with the bench's plain
# buffers and at once again with `--huge-pages`, both with `--roofline` (the streaming
# loop's buffers follow the same policy), so the pair sees the same phase of the shared
# machine's memory bandwidth. Linux only; `anon_huge_mib` shows whether the system granted
# the huge pages (`/sys/kernel/mm/transparent_hugepage/enabled` must not be `never`).
# Usage: bash benches/huge_pages.sh [rounds, default 3] [extra bench flags]
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
shift || true
cargo build --release --example bench -q
bench=target/release/examples/bench
row() {
  python3 - "$@" <<'PY'
import json, sys
label, a, b = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
cell = lambda d: f"{d['median_ms']:.1f} ms, {d['fraction_of_stream']:.0%} of {d['stream_gbps']:.0f} GB/s"
ratio = a["median_ms"] / b["median_ms"]
print(f"| {label} | {cell(a)} | {cell(b)} | {ratio:.2f}x | {b['anon_huge_mib']} |")
PY
}
pair() {
  local label=$1 a b
  shift
  a=$("$bench" "$@" --threads 2 --roofline)
  b=$("$bench" "$@" --threads 2 --roofline --huge-pages)
  row "$label" "$a" "$b"
}
echo "| case | 4 KiB pages | huge pages | speed-up | huge MiB |"
echo "|---|---|---|---|---|"
for _ in $(seq "$rounds"); do
  pair "soft-ce / dense f32" --loss soft-ce --targets dense --n 4096 --c 32000 --reps 10 "$@"
  pair "hard-ce / hard f32" --loss hard-ce --targets hard --n 4096 --c 32000 --reps 10 "$@"
  pair "soft-ce / mixed f32" --loss soft-ce --targets mixed --n 4096 --c 32000 --reps 10 "$@"
  pair "soft-ce / dense bf16" --loss soft-ce --targets dense --n 4096 --c 32000 --reps 10 --dtype bf16 "$@"
  pair "hard-ce / hard bf16" --loss hard-ce --targets hard --n 4096 --c 32000 --reps 10 --dtype bf16 "$@"
done
