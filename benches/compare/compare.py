#!/usr/bin/env python3
"""softnce against PyTorch on the CPU: the same shapes, inputs and targets, in one run on
one machine. Started by benches/compare/run.sh, which sets up the Python environment and
builds examples/bench.rs; see that script for the flags.

What is timed (f32, loss + gradient with respect to the logits, medians over several calls
after a warm-up of one call and then more calls until WARMUP_S = 0.5 s have passed, the
same thread count on both sides):

- softnce: examples/bench.rs, one process per case, one JSON line each (its own warm-up
  and repetitions; the gradient buffer is allocated once, as a training loop would reuse it).
- PyTorch, in a separate worker process (so that LD_PRELOAD can swap its allocator), each
  call being ``z.grad = None; loss = f(z); loss.backward()``:
  (a) the authors' reference formulation of soft-target InfoNCE, which broadcasts an
      N×M×C tensor: ``S = ((z/t - log eta)[:, None, :] * A[None, :, :]).sum(-1)``, then
      ``F.cross_entropy(S, arange(N))`` (skipped where that tensor exceeds
      --max-broadcast-gib);
  (b) the matmul formulation ``S = (z/t - log eta) @ A.T``, then
      ``F.cross_entropy(S, arange(N))``;
  (c) timm-style soft-target cross-entropy ``torch.sum(-A * F.log_softmax(z, -1), -1).mean()``;
  (d) ``F.cross_entropy(z, A)`` with probability targets;
  (e) ``F.cross_entropy(z, labels, label_smoothing=0.1)``.
  PyTorch has no structured target forms: MixUp and label-smoothed targets are passed as the
  equal dense matrix (as timm's Mixup produces them).

Inputs are those of examples/bench.rs, reproduced bit for bit (splitmix64 logits in
[-4, 4), dense rows of uniform weights normalised with a sequential f32 sum, labels from its
LCG with seed 42, MixUp partner = the reversed batch, lambda = 0.7, smoothing 0.1, t = 1,
uniform noise eta = 1/C), so the losses of both sides are printed side by side as a check
that the same function was timed.

The machine's FMA peak (``--peak``) and streaming bandwidth (``--roofline``,
``stream_gbps``) come from the same bench runs.

Run it on a quiet machine. PyTorch's OpenMP threads spin while they wait for each other, so
when other processes hold the cores a call can stall far beyond its work (seen on a shared
2-core machine: about 56 ms per call at any shape with 2 threads, gone with 1 thread or
with OMP_WAIT_POLICY=PASSIVE). The worker inherits the environment, so OMP_WAIT_POLICY
(and KMP_*/GOMP_* settings) can be set by the caller; the report names it when set.
"""

import argparse
import datetime
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

EPS = 0.1  # label smoothing of the structured forms and of hard cross-entropy
LAMBDA = 0.7  # MixUp weight of the first label

# (N, C, reps) per mode. InfoNCE uses M = N; every InfoNCE shape runs with dense and with
# MixUp + smoothing targets, every CE shape with dense, MixUp + smoothing and hard targets.
CE_SHAPES = {
    "full": [(4096, 32000, 7), (1024, 10000, 20), (256, 1000, 100)],
    "quick": [(128, 4000, 10), (64, 1000, 10)],
}
NCE_SHAPES = {
    "full": [(4096, 1000, 5), (1024, 10000, 5), (1024, 1000, 10), (256, 1000, 50)],
    "quick": [(128, 512, 10), (64, 256, 10)],
}
# A PyTorch formulation gets fewer calls when one call is slow (the warm-up call tells):
# at most this many seconds of timed calls, and never fewer than MIN_REPS calls.
TORCH_BUDGET_S = {"full": 30.0, "quick": 2.0}
MIN_REPS = 3
BROADCAST_MAX_REPS = 3
# After the first call, both sides keep calling until this long has passed before timing
# (examples/bench.rs: --warmup-ms, same default): on the 2-vCPU VMs here a fresh process's
# two threads often share one CPU's speed for its first 50-600 ms.
WARMUP_S = 0.5

FORMULATIONS = {
    "broadcast": "(a) authors' N×M×C broadcast",
    "matmul": "(b) matmul + F.cross_entropy",
    "timm": "(c) timm soft CE",
    "ce_probs": "(d) F.cross_entropy(probs)",
    "ce_ls": "(e) F.cross_entropy(labels, ls=0.1)",
}
FORM_NAMES = {
    "dense": "dense targets",
    "mixed": "MixUp (k=2) + smoothing 0.1",
    "hard": "hard labels, smoothing 0.1",
}


# ---------------------------------------------------------------------------------------
# The inputs of examples/bench.rs (worker side; needs numpy)
# ---------------------------------------------------------------------------------------


def _uniform(np, seed, start, count):
    """bench.rs `uniform(seed, i)` for i in [start, start + count): splitmix64 -> [0, 1)."""
    u64 = np.uint64
    x = u64(seed) + np.arange(start, start + count, dtype=np.uint64) * u64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> u64(30))) * u64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> u64(27))) * u64(0x94D049BB133111EB)
    x ^= x >> u64(31)
    return (x >> u64(40)).astype(np.float32) / np.float32(1 << 24)


def _filled(np, rows, cols, seed, row_fn):
    """A rows × cols float32 matrix from `uniform(seed, i)`, built in row chunks."""
    out = np.empty((rows, cols), dtype=np.float32)
    step = max(1, (1 << 24) // cols)
    for r in range(0, rows, step):
        r1 = min(rows, r + step)
        u = _uniform(np, seed, r * cols, (r1 - r) * cols).reshape(r1 - r, cols)
        out[r:r1] = row_fn(u)
    return out


def bench_logits(np, n, c):
    return _filled(np, n, c, 1, lambda u: np.float32(8.0) * u - np.float32(4.0))


def bench_dense(np, m, c):
    def normalise(u):
        # Rust's `row.iter().sum()` adds left to right in f32: a float32 cumsum does the same.
        s = np.cumsum(u, axis=1, dtype=np.float32)[:, -1:]
        return u / s

    return _filled(np, m, c, 2, normalise)


def bench_labels(np, m, c):
    state, mask, labels = 42, (1 << 64) - 1, []
    for _ in range(m):
        state = (state * 6364136223846793005 + 1442695040888963407) & mask
        u = np.float32(state >> 40) / np.float32(1 << 24)
        labels.append(int(np.float32(u * np.float32(c))) % c)
    return np.array(labels, dtype=np.int64)


def densified(np, form, labels, c):
    """The dense matrix equal to the structured `form` (hard or mixed) of `labels`."""
    m = len(labels)
    a = np.full((m, c), np.float32(EPS) / np.float32(c), dtype=np.float32)
    rows = np.arange(m)
    if form == "hard":
        np.add.at(a, (rows, labels), np.float32(1.0 - EPS))
    else:
        partner = labels[::-1].copy()
        np.add.at(a, (rows, labels), np.float32(LAMBDA * (1.0 - EPS)))
        np.add.at(a, (rows, partner), np.float32((1.0 - LAMBDA) * (1.0 - EPS)))
    return a


# ---------------------------------------------------------------------------------------
# PyTorch worker: one JSON job per stdin line, one JSON result per stdout line
# ---------------------------------------------------------------------------------------


def worker(threads, budget_s):
    import numpy as np
    import torch
    import torch.nn.functional as F

    torch.set_num_threads(threads)
    info = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "mkl": torch.backends.mkl.is_available(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "ld_preload": os.environ.get("LD_PRELOAD", ""),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", ""),
    }
    print(json.dumps(info), flush=True)

    for line in sys.stdin:
        job = json.loads(line)
        kind, form, n, m, c = job["kind"], job["form"], job["n"], job["m"], job["c"]
        z = torch.from_numpy(bench_logits(np, n, c)).requires_grad_(True)
        labels_np = bench_labels(np, m, c)
        if form == "dense":
            a = torch.from_numpy(bench_dense(np, m, c))
        else:
            a = torch.from_numpy(densified(np, form, labels_np, c))
        labels = torch.from_numpy(labels_np[:n].copy())
        log_eta = -math.log(c)  # uniform noise
        t = 1.0
        positives = torch.arange(n)

        fns = {}
        if kind == "nce":
            fns["broadcast"] = lambda z: F.cross_entropy(((z / t - log_eta)[:, None, :] * a[None, :, :]).sum(-1), positives)
            fns["matmul"] = lambda z: F.cross_entropy((z / t - log_eta) @ a.T, positives)
        else:
            fns["timm"] = lambda z: torch.sum(-a * F.log_softmax(z, dim=-1), dim=-1).mean()
            fns["ce_probs"] = lambda z: F.cross_entropy(z, a)
            if form == "hard":
                fns["ce_ls"] = lambda z: F.cross_entropy(z, labels, label_smoothing=EPS)

        results = {}
        for name, fn in fns.items():
            if name == "broadcast":
                gib = n * m * c * 4 / 2**30
                if gib > job["max_broadcast_gib"]:
                    results[name] = {"skipped": "N×M×C tensor {:.0f} GiB > {:g} GiB".format(gib, job["max_broadcast_gib"])}
                    continue

            def call():
                z.grad = None
                loss = fn(z)
                loss.backward()
                return loss.item()

            t0 = time.perf_counter()
            loss = call()  # warm-up
            first = time.perf_counter() - t0
            while time.perf_counter() - t0 < WARMUP_S:
                call()
            reps = max(MIN_REPS, min(job["reps"], int(budget_s / max(first, 1e-9))))
            if name == "broadcast":
                reps = min(reps, BROADCAST_MAX_REPS)
            times = []
            for _ in range(reps):
                t0 = time.perf_counter()
                call()
                times.append(time.perf_counter() - t0)
            results[name] = {"median_ms": 1e3 * statistics.median(times), "reps": reps, "loss": loss}
            gc.collect()
        del z, a, fns
        gc.collect()
        print(json.dumps(results), flush=True)


# ---------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------


def fmt_ms(ms):
    if ms is None:
        return "—"
    if ms >= 1000:
        return "{:.2f} s".format(ms / 1000)
    if ms >= 1:
        return "{:.1f} ms".format(ms)
    return "{:.0f} us".format(ms * 1000)


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_commit():
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout.strip()
        return rev + (" (with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def find_jemalloc():
    for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib"):
        p = os.path.join(d, "libjemalloc.so.2")
        if os.path.exists(p):
            return p
    return None


def run_bench(bench, args, threads):
    cmd = [bench] + [str(a) for a in args] + ["--threads", str(threads)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit("error: {} failed:\n{}".format(" ".join(cmd), out.stderr))
    return json.loads(out.stdout.strip().splitlines()[-1])


class Worker:
    def __init__(self, threads, budget_s, jemalloc):
        env = dict(os.environ)
        env.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
        if jemalloc:
            env["LD_PRELOAD"] = jemalloc
        cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--threads", str(threads), "--budget", str(budget_s)]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
        self.info = self._read()

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            sys.exit("error: the PyTorch worker exited (see its messages above)")
        return json.loads(line)

    def run(self, job):
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def settle():
    """Lets PyTorch's OpenMP threads stop spinning before softnce's next timing starts."""
    time.sleep(0.5)


def rel_diff(a, b):
    return abs(a - b) / max(abs(a), abs(b), 1e-30)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bench", default="target/release/examples/bench")
    ap.add_argument("--quick", action="store_true", help="tiny shapes: a smoke test of the pipeline")
    ap.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())
    ap.add_argument("--jemalloc", action="store_true", help="run PyTorch with LD_PRELOAD=libjemalloc.so.2")
    ap.add_argument("--max-broadcast-gib", type=float, default=8.0)
    ap.add_argument("--out", help="also write the markdown report to this file")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--budget", type=float, default=30.0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        worker(args.threads, args.budget)
        return

    mode = "quick" if args.quick else "full"
    jemalloc = None
    if args.jemalloc:
        jemalloc = find_jemalloc()
        if not jemalloc:
            sys.exit("error: --jemalloc: libjemalloc.so.2 not found (Debian/Ubuntu: apt-get install libjemalloc2)")
    if not os.access(args.bench, os.X_OK):
        sys.exit("error: {} not found: build it with `cargo build --release --example bench`".format(args.bench))

    started = datetime.datetime.now(datetime.timezone.utc)
    worker_proc = Worker(args.threads, TORCH_BUDGET_S[mode], jemalloc)
    tinfo = worker_proc.info
    os.makedirs("target/compare", exist_ok=True)
    raw_path = "target/compare/raw-{}.jsonl".format(started.strftime("%Y%m%dT%H%M%SZ"))
    raw = open(raw_path, "w")

    def log(record):
        raw.write(json.dumps(record) + "\n")
        raw.flush()

    log({"torch": tinfo})
    peak, stream, backend = None, None, None
    ce_rows, nce_rows = [], []

    for n, c, reps in CE_SHAPES[mode]:
        for form in ("dense", "mixed", "hard"):
            loss_flag = "hard-ce" if form == "hard" else "soft-ce"
            print("== {} {} {}x{}".format(loss_flag, form, n, c), file=sys.stderr, flush=True)
            s = run_bench(args.bench, ["--loss", loss_flag, "--targets", form, "--n", n, "--c", c, "--reps", reps, "--roofline"], args.threads)
            backend = s["backend"]
            if form == "dense" and stream is None:
                stream = (s["stream_gbps"], n, c)  # the first (largest) dense case
            job = {"kind": "ce", "form": form, "n": n, "m": n, "c": c, "reps": reps, "max_broadcast_gib": args.max_broadcast_gib}
            p = worker_proc.run(job)
            settle()
            log({"softnce": s, "torch": p, "job": job})
            case = ("hard CE, smoothing 0.1" if form == "hard" else "soft CE, " + FORM_NAMES[form])
            rate = "{:.1f} GB/s ({:.0f}% of {:.1f})".format(s["gbps"], 100 * s["fraction_of_stream"], s["stream_gbps"])
            ce_rows.append((case, "{} x {}".format(n, c), s, rate, p))

    for n, c, reps in NCE_SHAPES[mode]:
        for form in ("dense", "mixed"):
            print("== soft-infonce {} {}x{}x{}".format(form, n, n, c), file=sys.stderr, flush=True)
            flags = ["--loss", "soft-infonce", "--targets", form, "--n", n, "--c", c, "--reps", reps]
            if form == "dense":
                flags.append("--peak")
            s = run_bench(args.bench, flags, args.threads)
            if "fma_peak_gflops" in s:
                peak = max(peak or 0.0, s["fma_peak_gflops"])
            job = {"kind": "nce", "form": form, "n": n, "m": n, "c": c, "reps": reps, "max_broadcast_gib": args.max_broadcast_gib}
            p = worker_proc.run(job)
            settle()
            log({"softnce": s, "torch": p, "job": job})
            if "fraction_of_peak" in s:
                rate = "{:.0f} GFLOP/s ({:.0f}% of peak)".format(s["gflops"], 100 * s["fraction_of_peak"])
            elif "gflops" in s:
                rate = "{:.0f} GFLOP/s".format(s["gflops"])
            else:
                rate = "no N×M×C product"
            nce_rows.append(("soft InfoNCE, " + FORM_NAMES[form], "{} x {} x {}".format(n, n, c), s, rate, p))
    worker_proc.close()
    raw.close()

    def table(rows, forms, shape_head):
        heads = ["case", shape_head, "softnce", "softnce rate"] + [FORMULATIONS[f] for f in forms] + ["fastest PyTorch / softnce", "loss: softnce vs PyTorch (max rel. diff)"]
        out = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
        for case, shape, s, rate, p in rows:
            cells = [case, shape, fmt_ms(s["median_ms"]), rate]
            times, diffs = [], []
            for f in forms:
                r = p.get(f)
                if r is None:
                    cells.append("—")
                elif "skipped" in r:
                    cells.append("skipped: " + r["skipped"])
                else:
                    cells.append(fmt_ms(r["median_ms"]))
                    times.append(r["median_ms"])
                    diffs.append(rel_diff(s["loss"], r["loss"]))
            cells.append("{:.1f}×".format(min(times) / s["median_ms"]) if times else "—")
            cells.append("{:.6g} vs {:.6g} ({:.0e})".format(s["loss"], p[forms_first(p, forms)]["loss"], max(diffs)) if diffs else "—")
            out.append("| " + " | ".join(cells) + " |")
        return "\n".join(out)

    def forms_first(p, forms):
        return next(f for f in forms if f in p and "loss" in p[f])

    alloc = "jemalloc via LD_PRELOAD ({})".format(jemalloc) if jemalloc else "PyTorch's default CPU allocator (no caching: large tensors are mapped and page-faulted on every call; --jemalloc swaps in a caching allocator)"
    if tinfo.get("omp_wait_policy"):
        alloc += "; OMP_WAIT_POLICY={}".format(tinfo["omp_wait_policy"])
    lines = [
        "## softnce vs PyTorch on the CPU ({} mode)".format(mode),
        "",
        "- date: {}; softnce commit {}".format(started.strftime("%Y-%m-%d %H:%M UTC"), git_commit()),
        "- CPU: {} ({} logical CPUs, {}); threads: {} on both sides (softnce's rayon pool; torch.set_num_threads)".format(cpu_model(), os.cpu_count(), platform.machine(), args.threads),
        "- softnce backend: {}; PyTorch {} (MKL: {}, oneDNN: {}); PyTorch allocator: {}".format(
            backend, tinfo["torch"], "yes" if tinfo["mkl"] else "no", "yes" if tinfo["mkldnn"] else "no", alloc),
        "- FMA peak ({} threads): {} (examples/bench.rs --peak, this run)".format(args.threads, "{:.0f} GFLOP/s".format(peak) if peak else "not measured (no AVX2/AVX-512)"),
        "- streaming bandwidth: {:.1f} GB/s (--roofline, stream_gbps: read two {}×{} f32 arrays, write one, the faster of plain and non-temporal stores; this run)".format(stream[0], stream[1], stream[2]) if stream else "- streaming bandwidth: not measured",
        "- f32, loss + gradient with respect to the logits, mean over rows, t = 1, uniform η; medians after a warm-up "
        "(one call, then calls until {:g} s have passed, both sides) "
        "(softnce: the case's reps; PyTorch: the same, fewer when one call is slow, at most {} for (a)). "
        "PyTorch gets MixUp and smoothed targets as the equal dense matrix; softnce takes them structured. "
        "Ratio = fastest PyTorch formulation's median ÷ softnce's. Raw results: {}".format(WARMUP_S, BROADCAST_MAX_REPS, raw_path),
        "",
        "### Cross-entropy",
        "",
        table(ce_rows, ["timm", "ce_probs", "ce_ls"], "N x C"),
        "",
        "### Soft-target InfoNCE (M = N)",
        "",
        table(nce_rows, ["broadcast", "matmul"], "N x M x C"),
        "",
    ]
    report = "\n".join(lines)
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report)


if __name__ == "__main__":
    main()
