#!/usr/bin/env bash
# Prints the README's InfoNCE tables: loss + gradient w.r.t. logits, 2 threads, medians. Dense
# targets (f32) count 4·N·M·C flops against the FMA peak of the same threads, measured in the
# same run by a register-only loop; then structured targets, the dense kernel on the same
# MixUp targets densified, and dense bf16. Usage: bash benches/nce_table.sh [extra bench flags]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --example bench -q
bench=target/release/examples/bench
row() {
  # Capture first: a formatter starting up in a pipe would steal a core from the timing.
  local out
  out=$("$bench" --loss soft-infonce --targets dense --peak --threads 2 "$@")
  echo "$out" | python3 benches/bench_row.py
}
echo "| loss / targets | N x M x C | backend | median | rate (of FMA peak) |"
echo "|---|---|---|---|---|"
row --n 4096 --c 1000 --reps 5 "$@"
row --n 1024 --c 10000 --reps 5 "$@"
row --n 1024 --c 1000 --reps 20 "$@"
row --n 256 --c 1000 --reps 50 "$@"
# Structured targets at N = M = 4096, C = 1000, and the dense kernel on the same MixUp
# targets written out densely; then the dense kernel on bf16 inputs.
row --n 4096 --c 1000 --reps 15 --targets mixed "$@"
row --n 4096 --c 1000 --reps 15 --targets hard "$@"
row --n 4096 --c 1000 --reps 15 --targets sparse "$@"
row --n 4096 --c 1000 --reps 5 --targets mixed --densify "$@"
row --n 4096 --c 1000 --reps 5 --dtype bf16 "$@"
