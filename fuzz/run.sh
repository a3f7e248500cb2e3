#!/usr/bin/env bash
# Runs each cargo-fuzz target for a bounded time and prints libFuzzer's final statistics.
#
#   bash fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 60 s, every target)
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz --locked`). Each
# target reads the checked-in seeds (fuzz/seeds/TARGET) and grows a local corpus
# (fuzz/corpus/TARGET, not checked in); a failure leaves its input in fuzz/artifacts/TARGET
# and makes this script exit non-zero.
set -euo pipefail
cd "$(dirname "$0")"
secs=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t" "seeds/$t"
  echo "== fuzz target $t for ${secs}s"
  cargo +nightly fuzz build -O "$t"
  log=$(mktemp)
  status=0
  cargo +nightly fuzz run -O "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$secs" -rss_limit_mb=4096 -print_final_stats=1 >"$log" 2>&1 || status=$?
  # The last progress line (executions, coverage, features) and the final statistics.
  grep -E "^#[0-9]+" "$log" | tail -n 1 || true
  grep -E "^stat::" "$log" || true
  if [ "$status" -ne 0 ]; then
    grep -vE "^#[0-9]+" "$log" | tail -n 60
    echo "fuzz target $t failed (exit $status)" >&2
    exit "$status"
  fi
  rm -f "$log"
done
