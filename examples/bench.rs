//! A small command-line timer for the loss kernels; prints one JSON line per run.
//!
//! ```text
//! cargo run --release --example bench -- --loss soft-ce|hard-ce|soft-infonce \
//!     --targets dense|hard|mixed|sparse --n N [--m M] --c C \
//!     [--backend auto|scalar|avx2|avx512|neon] [--threads T] [--reps R] [--no-grad] [--roofline]
//!     [--trust-targets] [--peak] [--grad-targets] [--densify] [--dtype f32|bf16|f16]
//!     [--huge-pages] [--warmup-ms W]
//! ```
//!
//! `gbps` is the minimal number of bytes the call must move (logits and dense targets read
//! once, the gradient written once) divided by the median time; `gflops` counts the
//! `4·N·M·C` multiply-adds of dense InfoNCE. `--roofline` also measures, in the same run, the
//! machine's streaming bandwidth with a loop of the same access pattern (read logits and
//! dense targets, write one array of the problem's size), once with plain stores
//! (`stream_plain_gbps`) and once with non-temporal stores (`stream_nt_gbps`, x86-64 with
//! AVX), and reports the faster as `stream_gbps` with the fraction reached. Plain stores
//! read each line before writing it; the kernels write gradients above 64 MiB with
//! non-temporal stores, so the non-temporal loop is the fair limit there.
//! `--trust-targets` turns off the scan of dense target weights (`check_targets(false)`).
//! `--peak` (dense InfoNCE) measures the FMA peak (for `bf16` on AVX-512 BF16: the
//! `vdpbf16ps` peak) of the same threads with a register-only loop in the same run and
//! reports the fraction reached. `--grad-targets` (dense InfoNCE) also computes the
//! gradient with respect to the targets. `--densify` passes a structured
//! form (`hard|mixed|sparse`) as the equal dense matrix instead, to time the dense kernels on
//! the same targets. `--dtype` sets the element type of logits, dense targets and gradients
//! (`gbps` then counts that type's bytes). `--huge-pages` (Linux) asks for every large
//! buffer, the roofline loop's included, on transparent huge pages (`madvise`, before the
//! first write) and reports how much of the process's memory got them (`anon_huge_mib`;
//! 0 when the system's `transparent_hugepage/enabled` is `never`). By default the buffers
//! are plain `Vec`s, on whatever pages the system gives them (4 KiB on Linux unless that
//! setting is `always`).
//!
//! Timing starts after a warm-up: one call that pages in every buffer, then more calls until
//! `--warmup-ms` (default 500) have passed. On the 2-vCPU VMs this crate is measured on, a
//! freshly started process's two workers often run a small call at one thread's speed for
//! its first 50–600 ms; after that, and in a long-running process, they split it. Timing
//! that start-up would measure the VM's scheduler, not the kernels. `--warmup-ms 0` keeps
//! only the paging call.

use rayon::prelude::*;
use softnce::{
    Backend, Element, HardCrossEntropy, MatMut, MatRef, Outputs, RowParam, SoftCrossEntropy, SoftInfoNce,
    SparseTargets, Targets,
};
use std::hint::black_box;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

struct Args {
    loss: String,
    targets: String,
    n: usize,
    m: usize,
    c: usize,
    backend: Option<Backend>,
    threads: usize,
    reps: usize,
    grad: bool,
    roofline: bool,
    trust: bool,
    densify: bool,
    dtype: String,
    peak: bool,
    grad_targets: bool,
    warmup_ms: usize,
}

fn usage(msg: &str) -> ! {
    eprintln!("error: {msg}");
    eprintln!(
        "usage: bench --loss soft-ce|hard-ce|soft-infonce --targets dense|hard|mixed|sparse --n N [--m M] --c C \
         [--backend auto|scalar|avx2|avx512|neon] [--threads T] [--reps R] [--no-grad] [--roofline] [--trust-targets] [--peak] [--grad-targets] [--densify] [--dtype f32|bf16|f16] [--huge-pages] [--warmup-ms W]"
    );
    std::process::exit(2)
}

fn parse() -> Args {
    let mut a = Args {
        loss: "soft-ce".into(),
        targets: "dense".into(),
        n: 256,
        m: 0,
        c: 1000,
        backend: None,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        reps: 20,
        grad: true,
        roofline: false,
        trust: false,
        densify: false,
        dtype: "f32".into(),
        peak: false,
        grad_targets: false,
        warmup_ms: 500,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || {
            it.next()
                .unwrap_or_else(|| usage(&format!("{flag} needs a value")))
        };
        let num = |v: String| {
            v.parse::<usize>()
                .unwrap_or_else(|_| usage(&format!("bad number {v:?}")))
        };
        match flag.as_str() {
            "--loss" => a.loss = val(),
            "--targets" => a.targets = val(),
            "--n" => a.n = num(val()),
            "--m" => a.m = num(val()),
            "--c" => a.c = num(val()),
            "--threads" => a.threads = num(val()),
            "--reps" => a.reps = num(val()).max(1),
            "--backend" => {
                let v = val();
                a.backend = (v != "auto").then(|| v.parse().unwrap_or_else(|e| usage(&format!("{e}"))));
            }
            "--no-grad" => a.grad = false,
            "--roofline" => a.roofline = true,
            "--trust-targets" => a.trust = true,
            "--densify" => a.densify = true,
            "--dtype" => a.dtype = val(),
            "--peak" => a.peak = true,
            "--grad-targets" => a.grad_targets = true,
            "--warmup-ms" => a.warmup_ms = num(val()),
            "--huge-pages" => {
                if !cfg!(target_os = "linux") {
                    usage("--huge-pages needs Linux (transparent huge pages)");
                }
                HUGE_PAGES.store(true, Ordering::Relaxed);
            }
            "-h" | "--help" => usage("help requested"),
            other => usage(&format!("unknown flag {other}")),
        }
    }
    if a.m == 0 {
        a.m = a.n;
    }
    a
}

/// Deterministic uniform numbers in [0, 1).
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> f32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32) / (1u64 << 24) as f32
    }
}

/// A uniform number in [0, 1) from the index alone (splitmix64), so arrays can be filled in
/// parallel with the same values whatever the thread count.
fn uniform(seed: u64, i: usize) -> f32 {
    let mut x = seed.wrapping_add((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    (x >> 40) as f32 / (1u64 << 24) as f32
}

/// A vector of `len` values `f(i)`, written by all threads of the pool: pages are first
/// touched by the threads that later stream them, as in a real training step (a single
/// thread touching everything can halve the measured bandwidth on some machines).
fn par_vec(len: usize, f: impl Fn(usize) -> f32 + Sync) -> Vec<f32> {
    par_fill(len, f)
}

/// Whether `--huge-pages` asked for the large buffers on transparent huge pages.
static HUGE_PAGES: AtomicBool = AtomicBool::new(false);

/// [`par_vec`] for any element type. With `--huge-pages` the allocation is marked for
/// transparent huge pages before its first write (which is when Linux backs it).
fn par_fill<T: Copy + Send + Sync>(len: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let mut v: Vec<T> = Vec::with_capacity(len);
    advise_huge_pages(v.as_mut_ptr().cast(), len * std::mem::size_of::<T>());
    v.spare_capacity_mut()
        .par_chunks_mut(1 << 16)
        .enumerate()
        .for_each(|(k, chunk)| {
            for (j, x) in chunk.iter_mut().enumerate() {
                x.write(f(k * (1 << 16) + j));
            }
        });
    // SAFETY: the loop above wrote all `len` elements of the spare capacity.
    unsafe { v.set_len(len) };
    v
}

/// `madvise(MADV_HUGEPAGE)` on the whole pages of `bytes` bytes at `ptr`, with
/// `--huge-pages` (Linux only; `parse` rejects the flag elsewhere).
fn advise_huge_pages(ptr: *mut u8, bytes: usize) {
    if !HUGE_PAGES.load(Ordering::Relaxed) {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        let start = (ptr as usize).next_multiple_of(PAGE);
        let end = (ptr as usize + bytes) / PAGE * PAGE;
        if end > start {
            // SAFETY: `start..end` lies inside the allocation of `bytes` bytes at `ptr`, which
            // the caller owns; MADV_HUGEPAGE changes how its pages are backed, not its
            // contents.
            let r = unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
            if r != 0 {
                eprintln!(
                    "warning: madvise(MADV_HUGEPAGE) failed: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (ptr, bytes);
}

/// The process's anonymous memory on transparent huge pages, in MiB (Linux; `None` when
/// `/proc/self/smaps_rollup` cannot be read).
fn anon_huge_mib() -> Option<f64> {
    let s = std::fs::read_to_string("/proc/self/smaps_rollup").ok()?;
    let line = s.lines().find(|l| l.starts_with("AnonHugePages:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Streaming bandwidth, in GB/s, of a loop with the kernel's access pattern over arrays of
/// `len` f32: `g = z + a` (two reads, one write) when `dense`, else `g = z + z` (one read,
/// one write). Returns `(plain, nt)`: the median of `reps` runs with plain stores, and with
/// non-temporal stores (`None` off x86-64 or without AVX). Plain stores read each
/// gradient line before writing it (read for ownership), which the minimal byte count does
/// not include; non-temporal stores do not, as the kernels' own gradient stores above
/// 64 MiB. The two loops alternate run by run, so both see the same machine.
fn stream_gbps(len: usize, dense: bool, reps: usize) -> (f64, Option<f64>) {
    let z = par_vec(len, |_| 1.0);
    let a = if dense { par_vec(len, |_| 2.0) } else { Vec::new() };
    let a: &[f32] = if dense { &a } else { &z };
    let mut g = par_vec(len, |_| 0.0);
    let chunk = 1 << 16;
    let nt = nt_available();
    let (mut plain, mut streamed) = (Vec::new(), Vec::new());
    for rep in 0..reps + 1 {
        let t0 = Instant::now();
        g.par_chunks_mut(chunk)
            .zip(z.par_chunks(chunk).zip(a.par_chunks(chunk)))
            .for_each(|(g, (z, a))| {
                for ((g, z), a) in g.iter_mut().zip(z).zip(a) {
                    *g = z + a;
                }
            });
        black_box(&g);
        let t1 = Instant::now();
        if nt {
            g.par_chunks_mut(chunk)
                .zip(z.par_chunks(chunk).zip(a.par_chunks(chunk)))
                .for_each(|(g, (z, a))| add_nt(g, z, a));
            black_box(&g);
        }
        // The first run of each loop warms up.
        if rep > 0 {
            plain.push((t1 - t0).as_secs_f64());
            streamed.push(t1.elapsed().as_secs_f64());
        }
    }
    let bytes = ((if dense { 12 } else { 8 }) * len) as f64;
    (
        bytes / median(&mut plain) / 1e9,
        nt.then(|| bytes / median(&mut streamed) / 1e9),
    )
}

/// Whether [`add_nt`] can use non-temporal stores on this machine.
fn nt_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx")
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// `g = z + a` with non-temporal stores for the 32-byte-aligned vectors of `g`, then a fence
/// (only called when [`nt_available`]).
fn add_nt(g: &mut [f32], z: &[f32], a: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        #[target_feature(enable = "avx")]
        fn run(g: &mut [f32], z: &[f32], a: &[f32]) {
            let n = g.len().min(z.len()).min(a.len());
            let head = ((32 - g.as_ptr() as usize % 32) % 32 / 4).min(n);
            let mut i = 0;
            while i < head {
                g[i] = z[i] + a[i];
                i += 1;
            }
            while i + 8 <= n {
                // SAFETY: `i + 8 <= n`: eight elements inside all three slices, and
                // `g + i` is 32-byte aligned (`head` aligned it, then steps of 32 bytes).
                unsafe {
                    let v = _mm256_add_ps(
                        _mm256_loadu_ps(z.as_ptr().add(i)),
                        _mm256_loadu_ps(a.as_ptr().add(i)),
                    );
                    _mm256_stream_ps(g.as_mut_ptr().add(i), v);
                }
                i += 8;
            }
            while i < n {
                g[i] = z[i] + a[i];
                i += 1;
            }
            // Orders the streaming stores before the timer stops.
            _mm_sfence();
        }
        assert!(nt_available(), "add_nt needs AVX");
        // SAFETY: AVX was detected just above.
        unsafe { run(g, z, a) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (g, z, a);
        unreachable!("add_nt is only called when nt_available()")
    }
}

/// GFLOP/s of the pool's threads all running the register-only loop `f(iters)`, which does
/// `flops_per_iter` flops per iteration: the best of three timings.
///
/// # Safety
/// The CPU has the features `f` needs.
#[cfg(target_arch = "x86_64")]
unsafe fn register_loop_gflops(f: unsafe fn(usize) -> f32, flops_per_iter: usize) -> f64 {
    let iters = 20_000_000usize;
    let threads = rayon::current_num_threads();
    let mut best = 0.0f64;
    for _ in 0..3 {
        let t0 = Instant::now();
        // SAFETY: the caller's guarantee.
        let r: Vec<f32> = rayon::broadcast(|_| unsafe { f(iters) });
        black_box(r);
        let secs = t0.elapsed().as_secs_f64();
        best = best.max((threads * iters * flops_per_iter) as f64 / secs / 1e9);
    }
    best
}

/// Whether dense bf16 InfoNCE takes the AVX-512 BF16 dot-product path for this `--backend`.
fn bf16_dot_available(backend: &Option<softnce::Backend>) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        let b = backend.or_else(|| softnce::default_backend().ok());
        b == Some(softnce::Backend::Avx512) && is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = backend;
        false
    }
}

/// The `vdpbf16ps` peak of the pool's threads in GFLOP/s (64 flops per instruction: 16
/// lanes × 2 products × multiply and add), from a register-only loop. `None` without
/// AVX-512 BF16.
fn bf16_dot_peak_gflops() -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        #[target_feature(enable = "avx512f,avx512bf16")]
        unsafe fn run(iters: usize) -> f32 {
            let mut acc = [_mm512_set1_ps(1.0); 12];
            // SAFETY: both are plain 512-bit vectors.
            let (x, y): (__m512bh, __m512bh) = unsafe {
                (
                    std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(0x3f80_3f80)),
                    std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(0x33d6_33d6)),
                )
            };
            for _ in 0..iters {
                for a in acc.iter_mut() {
                    *a = _mm512_dpbf16_ps(*a, x, y);
                }
            }
            acc.iter().map(|&a| _mm512_reduce_add_ps(a)).sum()
        }
        if !is_x86_feature_detected!("avx512bf16") {
            return None;
        }
        // SAFETY: AVX-512 BF16 was detected above.
        Some(unsafe { register_loop_gflops(run, 12 * 64) })
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

/// The FMA peak of the pool's threads in GFLOP/s: every thread runs a register-only loop of
/// independent 512-bit (AVX-512) or 256-bit (AVX2) fused multiply-adds. `None` where neither
/// exists.
fn fma_peak_gflops() -> Option<f64> {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        #[target_feature(enable = "avx512f")]
        unsafe fn run512(iters: usize) -> f32 {
            let mut acc = [_mm512_set1_ps(1.0); 12];
            let (x, y) = (_mm512_set1_ps(0.999_999), _mm512_set1_ps(1e-7));
            for _ in 0..iters {
                for a in acc.iter_mut() {
                    *a = _mm512_fmadd_ps(*a, x, y);
                }
            }
            acc.iter().map(|&a| _mm512_reduce_add_ps(a)).sum()
        }
        #[target_feature(enable = "avx2,fma")]
        unsafe fn run256(iters: usize) -> f32 {
            let mut acc = [_mm256_set1_ps(1.0); 12];
            let (x, y) = (_mm256_set1_ps(0.999_999), _mm256_set1_ps(1e-7));
            for _ in 0..iters {
                for a in acc.iter_mut() {
                    *a = _mm256_fmadd_ps(*a, x, y);
                }
            }
            let mut out = [0.0f32; 8];
            _mm256_storeu_ps(
                out.as_mut_ptr(),
                acc.iter().fold(_mm256_setzero_ps(), |s, &a| _mm256_add_ps(s, a)),
            );
            out.iter().sum()
        }
        let (lanes, f): (usize, unsafe fn(usize) -> f32) = if is_x86_feature_detected!("avx512f") {
            (16, run512)
        } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            (8, run256)
        } else {
            return None;
        };
        // SAFETY: the feature the function needs was detected above.
        Some(unsafe { register_loop_gflops(f, 12 * lanes * 2) })
    }
    #[cfg(not(target_arch = "x86_64"))]
    None
}

fn main() {
    let args = parse();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build()
        .unwrap();
    pool.install(|| match args.dtype.as_str() {
        "f32" => run::<f32>(&args),
        "bf16" => run::<half::bf16>(&args),
        "f16" => run::<half::f16>(&args),
        other => usage(&format!("unknown dtype {other}")),
    });
}

/// `v` in the element type `T`: the same vector for `f32` (a copy would double the peak
/// resident memory that `/usr/bin/time -v` reports for the bench), else a rounded copy.
fn to_elem<T: Element>(v: Vec<f32>) -> Vec<T> {
    let any: Box<dyn std::any::Any> = Box::new(v);
    match any.downcast::<Vec<T>>() {
        Ok(same) => *same,
        Err(any) => {
            let v = any.downcast::<Vec<f32>>().expect("a Vec<f32>");
            par_fill(v.len(), |i| T::from_f32(v[i]))
        }
    }
}

fn run<T: Element>(args: &Args) {
    let (n, c) = (args.n, args.c);
    let m = if args.loss == "soft-infonce" { args.m } else { n };
    let mut rng = Lcg(42);
    let logits: Vec<T> = to_elem(par_vec(n * c, |i| 8.0 * uniform(1, i) - 4.0));
    let labels: Vec<u32> = (0..m)
        .map(|_| (rng.next() * c as f32) as u32 % c as u32)
        .collect();
    let partner: Vec<u32> = labels.iter().rev().copied().collect();
    let eps = 0.1f32;
    let dense: Vec<T> = if args.targets == "dense" {
        let mut d = par_vec(m * c, |i| uniform(2, i));
        d.par_chunks_mut(c).for_each(|row| {
            let s: f32 = row.iter().sum();
            row.iter_mut().for_each(|v| *v /= s);
        });
        to_elem(d)
    } else {
        Vec::new()
    };
    let indptr: Vec<usize> = (0..=m).map(|j| 2 * j).collect();
    let indices: Vec<u32> = labels.iter().zip(&partner).flat_map(|(&a, &b)| [a, b]).collect();
    let weights: Vec<f32> = (0..m)
        .flat_map(|_| [0.7 * (1.0 - eps), 0.3 * (1.0 - eps)])
        .collect();
    let targets: Targets<'_, T> = match args.targets.as_str() {
        "dense" => Targets::Dense(MatRef::new(&dense, m, c).unwrap()),
        "hard" => Targets::hard(&labels, eps),
        "mixed" => Targets::mixed(&labels, &partner, RowParam::Batch(0.7), eps),
        "sparse" => Targets::Sparse(SparseTargets::new(
            &indptr,
            &indices,
            &weights,
            RowParam::Batch(eps / c as f32),
        )),
        other => usage(&format!("unknown targets {other}")),
    };
    // The structured rows written out densely: floor ε/C plus the entries.
    let densified: Vec<T> = if args.densify && args.targets != "dense" {
        let mut d = par_vec(m * c, |_| eps / c as f32);
        d.par_chunks_mut(c)
            .enumerate()
            .for_each(|(j, row)| match args.targets.as_str() {
                "hard" => row[labels[j] as usize] += 1.0 - eps,
                _ => {
                    for k in indptr[j]..indptr[j + 1] {
                        row[indices[k] as usize] += weights[k];
                    }
                }
            });
        to_elem(d)
    } else {
        Vec::new()
    };
    let targets = if densified.is_empty() {
        targets
    } else {
        Targets::Dense(MatRef::new(&densified, m, c).unwrap())
    };
    let z = MatRef::new(&logits, n, c).unwrap();
    let mut grad: Vec<T> = to_elem(par_vec(n * c, |_| 0.0));
    let backend = match args.backend {
        Some(b) => b,
        None => softnce::default_backend().unwrap_or_else(|e| usage(&format!("{e}"))),
    };

    let mut gt: Vec<T> = to_elem(par_vec(if args.grad_targets { m * c } else { 0 }, |_| 0.0));
    let call = |grad: &mut [T], gt: &mut [T]| -> f32 {
        let mut out = if args.grad {
            Outputs::new().grad_logits(MatMut::new(grad, n, c).unwrap())
        } else {
            Outputs::new()
        };
        if args.grad_targets {
            out = out.grad_targets(MatMut::new(gt, m, c).unwrap());
        }
        let r = match args.loss.as_str() {
            "soft-ce" => SoftCrossEntropy::new()
                .backend(Some(backend))
                .check_targets(!args.trust)
                .compute(z, &targets, out),
            "soft-infonce" => SoftInfoNce::new()
                .backend(Some(backend))
                .check_targets(!args.trust)
                .compute(z, &targets, out),
            "hard-ce" => HardCrossEntropy::new()
                .smoothing(eps)
                .backend(Some(backend))
                .compute(z, &labels[..n], out),
            other => usage(&format!("unknown loss {other}")),
        };
        r.unwrap_or_else(|e| usage(&format!("{e}")))
    };
    // Warm-up: one call pages in every buffer, then more keep the workers busy for a while
    // (see the module docs).
    let loss = call(&mut grad, &mut gt);
    let warm = Instant::now();
    while warm.elapsed().as_secs_f64() * 1e3 < args.warmup_ms as f64 {
        black_box(call(black_box(&mut grad), &mut gt));
    }
    let mut times = Vec::with_capacity(args.reps);
    for _ in 0..args.reps {
        let t0 = Instant::now();
        black_box(call(black_box(&mut grad), &mut gt));
        times.push(t0.elapsed().as_secs_f64());
    }
    let min = times.iter().copied().fold(f64::INFINITY, f64::min);
    let med = median(&mut times);

    let size = std::mem::size_of::<T>();
    let dense_target_bytes = if args.targets == "dense" || !densified.is_empty() {
        size * m * c
    } else {
        0
    };
    let grad_bytes = if args.grad { size * n * c } else { 0 };
    let bytes = size * n * c + dense_target_bytes + grad_bytes;
    let gbps = bytes as f64 / med / 1e9;
    let mut json = format!(
        "{{\"loss_kind\":\"{}\",\"targets\":\"{}\",\"n\":{n},\"m\":{m},\"c\":{c},\"grad\":{},\"backend\":\"{}\",\
         \"dtype\":\"{}\",\"threads\":{},\"reps\":{},\"warmup_ms\":{},\"checked_targets\":{},\"densified\":{},\"loss\":{loss},\"median_ms\":{:.4},\"min_ms\":{:.4},\"bytes\":{bytes},\"gbps\":{:.2}",
        args.loss,
        args.targets,
        args.grad,
        backend,
        args.dtype,
        args.threads,
        args.reps,
        args.warmup_ms,
        !args.trust,
        !densified.is_empty(),
        med * 1e3,
        min * 1e3,
        gbps
    );
    if args.loss == "soft-infonce" && (args.targets == "dense" || !densified.is_empty()) {
        let flops = (2 + if args.grad { 2 } else { 0 } + if args.grad_targets { 4 } else { 0 }) as f64
            * (n * m * c) as f64;
        let gflops = flops / med / 1e9;
        json += &format!(",\"gflops\":{gflops:.2}");
        if args.peak {
            // Dense bf16 InfoNCE on AVX-512 BF16 runs on vdpbf16ps: its peak is the limit.
            let dot = args.dtype == "bf16" && args.targets == "dense" && bf16_dot_available(&args.backend);
            let peak = if dot {
                bf16_dot_peak_gflops()
            } else {
                fma_peak_gflops()
            };
            if let Some(peak) = peak {
                json += &format!(
                    ",\"fma_peak_gflops\":{peak:.1},\"fraction_of_peak\":{:.3},\"peak_kind\":\"{}\"",
                    gflops / peak,
                    if dot { "bf16-dot" } else { "fma" }
                );
            }
        }
    }
    if args.roofline {
        let (plain, nt) = stream_gbps(
            n * c,
            args.targets == "dense" || !densified.is_empty(),
            args.reps.clamp(5, 20),
        );
        // The roofline is the faster of the two loops.
        let s = nt.map_or(plain, |nt| nt.max(plain));
        json += &format!(
            ",\"stream_gbps\":{s:.2},\"stream_plain_gbps\":{plain:.2},\"stream_nt_gbps\":{},\"fraction_of_stream\":{:.3}",
            nt.map_or("null".into(), |v| format!("{v:.2}")),
            gbps / s
        );
    }
    if HUGE_PAGES.load(Ordering::Relaxed) {
        json += &format!(
            ",\"huge_pages\":true,\"anon_huge_mib\":{}",
            anon_huge_mib().map_or("null".into(), |v| format!("{v:.0}"))
        );
    }
    println!("{json}}}");
}
