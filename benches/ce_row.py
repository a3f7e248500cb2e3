"""Formats one JSON line of examples/bench.rs as a markdown table row (used by ce_table.sh)."""
import json
import sys

d = json.loads(sys.stdin.read())
name = d["loss_kind"] + " / " + d["targets"]
if d["targets"] == "dense" and not d["checked_targets"]:
    name += " (check_targets off)"
shape = "{} x {}".format(d["n"], d["c"])
ms = d["median_ms"]
t = "{:.1f} ms".format(ms) if ms >= 1 else "{:.0f} us".format(ms * 1000)
if "stream_gbps" in d:
    bw = "{:.1f} of {:.1f} ({:.0f}%)".format(d["gbps"], d["stream_gbps"], 100 * d["fraction_of_stream"])
else:
    bw = "{:.1f}".format(d["gbps"])
print("| {} | {} | {} | {} | {} |".format(name, shape, d["backend"], t, bw))
