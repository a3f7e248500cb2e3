#!/usr/bin/env bash
# Prints the README's cross-entropy performance table: every CE variant at N = 4096,
# C = 32000 (with the streaming bandwidth of the same access pattern measured in the same
# run) and at N = 256, C = 1000, f32 (then bf16 and f16 at the large shape), loss + gradient,
# 2 threads, medians.
# Usage: bash benches/ce_table.sh [extra bench flags, e.g. --backend avx2]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --example bench -q
bench=target/release/examples/bench
row() {
  # Capture first: a formatter starting up in a pipe would steal a core from the timing.
  local out
  out=$("$bench" "$@" --threads 2)
  echo "$out" | python3 benches/bench_row.py
}
echo "| loss / targets | N x C | backend | median | minimal bytes / time (of streaming loop) |"
echo "|---|---|---|---|---|"
for shape in "--n 4096 --c 32000 --reps 10 --roofline" "--n 256 --c 1000 --reps 300"; do
  row --loss soft-ce --targets dense $shape "$@"
  row --loss soft-ce --targets dense --trust-targets $shape "$@"
  row --loss soft-ce --targets mixed $shape "$@"
  row --loss soft-ce --targets sparse $shape "$@"
  row --loss hard-ce --targets hard $shape "$@"
done
# Half precision at the large shape: half the bytes of f32.
for dtype in bf16 f16; do
  row --loss soft-ce --targets dense --trust-targets --dtype "$dtype" --n 4096 --c 32000 --reps 10 --roofline "$@"
  row --loss hard-ce --targets hard --dtype "$dtype" --n 4096 --c 32000 --reps 10 --roofline "$@"
done
