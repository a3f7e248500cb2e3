#!/usr/bin/env bash
# Instruction-count benchmarks (benches/iai.rs) under valgrind's callgrind.
#
# Installs iai-callgrind-runner at exactly the version of the iai-callgrind library in
# Cargo.lock when it is missing or differs (the runner refuses a library of another version),
# then runs `cargo bench --bench iai`. Counts do not depend on machine load, so this runs on a
# shared machine or in CI; it takes a few minutes, most of it building the runner once.
#
# Usage: bash benches/iai.sh [runner args, e.g. a benchmark filter such as soft_infonce]
# Needs valgrind on PATH (Debian: apt-get install valgrind). Results and callgrind profiles
# go to target/iai/; a second run also prints the change against the previous one.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v valgrind >/dev/null 2>&1; then
  echo "error: valgrind not found on PATH; benches/iai.sh needs it (Debian/Ubuntu: apt-get install valgrind)" >&2
  exit 1
fi

# `cargo pkgid` prints e.g. registry+https://github.com/rust-lang/crates.io-index#iai-callgrind@0.16.1
pkgid=$(cargo pkgid iai-callgrind)
version=${pkgid##*[@#]}
if ! [[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+ ]]; then
  echo "error: could not read the iai-callgrind version from 'cargo pkgid' ($pkgid)" >&2
  exit 1
fi

# The runner has no --version flag; ask cargo which version it installed (into
# $CARGO_HOME/bin, which goes first on PATH so that an older copy elsewhere is not picked up).
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
installed=$(cargo install --list | awk '$1 == "iai-callgrind-runner" { v = $2; sub(/^v/, "", v); sub(/:$/, "", v); print v }')
if [ "$installed" != "$version" ] || ! command -v iai-callgrind-runner >/dev/null 2>&1; then
  echo "== installing iai-callgrind-runner $version (installed: ${installed:-none})"
  cargo install iai-callgrind-runner --version "$version" --locked
fi

echo "== $(valgrind --version), iai-callgrind $version, runner $(command -v iai-callgrind-runner)"
cargo bench --bench iai -- "$@"
