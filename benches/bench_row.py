"""Formats one JSON line of examples/bench.rs as a markdown table row (used by the
benches/*_table.sh scripts)."""
import json
import sys

d = json.loads(sys.stdin.read())
name = d["loss_kind"] + " / " + d["targets"]
if d["targets"] == "dense" and not d["checked_targets"]:
    name += " (check_targets off)"
if d.get("densified"):
    name += " (densified)"
if d.get("dtype", "f32") != "f32":
    name += ", " + d["dtype"]
shape = "{} x {}".format(d["n"], d["c"]) if d["loss_kind"] != "soft-infonce" else "{} x {} x {}".format(d["n"], d["m"], d["c"])
ms = d["median_ms"]
t = "{:.1f} ms".format(ms) if ms >= 1 else "{:.0f} us".format(ms * 1000)
if "fma_peak_gflops" in d:
    rate = "{:.0f} of {:.0f} GFLOP/s ({:.0f}%{})".format(
        d["gflops"], d["fma_peak_gflops"], 100 * d["fraction_of_peak"],
        " of the bf16 dot-product peak" if d.get("peak_kind") == "bf16-dot" else "")
elif "gflops" in d:
    rate = "{:.0f} GFLOP/s".format(d["gflops"])
elif "stream_gbps" in d:
    rate = "{:.1f} of {:.1f} GB/s ({:.0f}%)".format(d["gbps"], d["stream_gbps"], 100 * d["fraction_of_stream"])
else:
    rate = "{:.1f} GB/s".format(d["gbps"])
print("| {} | {} | {} | {} | {} |".format(name, shape, d["backend"], t, rate))
