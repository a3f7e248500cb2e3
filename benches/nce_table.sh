#!/usr/bin/env bash
# Prints the README's dense InfoNCE table: loss + gradient w.r.t. logits, f32, 2 threads,
# medians, counting 4·N·M·C flops, with the FMA peak of the same threads measured in the
# same run by a register-only loop. Usage: bash benches/nce_table.sh [extra bench flags]
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
