#!/usr/bin/env bash
# Times softnce (examples/bench.rs) against PyTorch on the CPU, in one run on one machine,
# and prints a markdown table. Not part of the test suite.
#
#   bash benches/compare/run.sh            # the full comparison (≈ 10 min on 2 cores; quiet machine)
#   bash benches/compare/run.sh --quick    # tiny shapes, a smoke test of the whole pipeline
#
# Other flags go to compare.py: --threads T (default: all cores), --jemalloc (PyTorch under
# LD_PRELOAD=libjemalloc, a caching allocator), --max-broadcast-gib G (skip the authors'
# N×M×C formulation above G GiB; default 8), --out FILE (also write the table there).
# --setup-only builds the bench and the Python environment, then stops.
#
# Sets up its own Python environment in target/compare-venv (python3 -m venv, then pip
# install -r benches/compare/requirements.txt). torch comes from PyTorch's CPU-only index
# ($TORCH_INDEX_URL, default https://download.pytorch.org/whl/cpu) when that answers, else
# from the default package index. Reinstalls only when requirements.txt changes.
set -euo pipefail
cd "$(dirname "$0")/../.."

setup_only=0
pass=()
for a in "$@"; do
  if [ "$a" = "--setup-only" ]; then setup_only=1; else pass+=("$a"); fi
done

command -v python3 >/dev/null || { echo "error: python3 not found" >&2; exit 1; }
venv=target/compare-venv
req=benches/compare/requirements.txt
if [ ! -x "$venv/bin/python" ]; then
  echo "== creating $venv" >&2
  python3 -m venv "$venv" || {
    rm -rf "$venv"
    echo "error: python3 -m venv failed (Debian/Ubuntu: apt-get install python3-venv)" >&2
    exit 1
  }
fi
stamp="$venv/.requirements.sha256"
want=$(sha256sum "$req" | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
  py="$venv/bin/python"
  torch_spec=$(grep -E '^torch([<>=!~ ]|$)' "$req" | head -1)
  index=${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}
  if "$py" - "$index" <<'PY' 2>/dev/null
import sys, urllib.request
urllib.request.urlopen(sys.argv[1].rstrip("/") + "/torch/", timeout=10)
PY
  then
    echo "== installing $torch_spec from $index (CPU-only wheel)" >&2
    "$py" -m pip install --quiet --index-url "$index" "$torch_spec"
  else
    echo "== $index not reachable: torch comes from the default index (CUDA-enabled wheel," >&2
    echo "   a large download; it runs on the CPU all the same)" >&2
  fi
  echo "== installing $req" >&2
  "$py" -m pip install --quiet -r "$req"
  echo "$want" >"$stamp"
fi

echo "== building examples/bench.rs (release)" >&2
cargo build --release --example bench -q
[ "$setup_only" = 1 ] && exit 0
exec "$venv/bin/python" benches/compare/compare.py --bench target/release/examples/bench "${pass[@]}"
