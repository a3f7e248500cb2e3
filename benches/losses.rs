//! Criterion benchmarks (wall-clock) of the public loss calls: loss + gradient with respect to
//! the logits, `f32` (`bf16`/`f16` in the `half_*` groups), mean reduction, on rayon's global
//! pool (every core; set `RAYON_NUM_THREADS` to change that).
//!
//! ```text
//! cargo bench --bench losses                                   # everything (≈ 10 min, 2 cores)
//! cargo bench --bench losses -- cross_entropy/hard_ce          # a regex over benchmark ids
//! cargo bench --bench losses -- 'soft_infonce/mixed/.*/1024x'  # one form, every backend
//! cargo bench --bench losses -- '/avx512/.*x1000$'             # one backend, C = 1000
//! SOFTNCE_BENCH_BACKENDS=avx2,avx512 cargo bench --bench losses
//! cargo bench --bench losses -- --list                         # the ids, nothing run
//! cargo bench --bench losses -- --test '/256x'                 # run each once (smoke test)
//! ```
//!
//! `cargo test --benches` (or `--all-targets`) also runs this file, each benchmark once as a
//! test, but only at the smallest shape of each group (256x100, 256x256x1000).
//!
//! Benchmark ids are `<group>/<kernel>/<backend>/<shape>`:
//!
//! | group | kernels | shapes |
//! |---|---|---|
//! | `cross_entropy` | `soft_ce_dense`, `soft_ce_hard`, `soft_ce_mixed`, `soft_ce_sparse`, `hard_ce` | `NxC`: 256x100, 256x1000, 1024x1000, 4096x1000, 1024x10000, 4096x32000 |
//! | `soft_infonce` | `dense`, `hard`, `mixed`, `sparse` (M = N) | `NxMxC`: 256x256x1000, 1024x1024x1000, 4096x4096x1000, 1024x1024x10000 |
//! | `half_bf16`, `half_f16` | `soft_ce_dense`, `hard_ce`, `soft_infonce_dense`, `soft_infonce_mixed` on that type's logits, targets and gradients | the shapes above |
//!
//! and `<backend>` runs over every backend this CPU has (`softnce::available_backends()`,
//! forced per call with `.backend(Some(b))`), or over the comma-separated list in the
//! environment variable `SOFTNCE_BENCH_BACKENDS` (`scalar,avx2,avx512,neon`). Inputs of a
//! shape are built only when one of its benchmarks passes the filter, so a filtered run
//! skips the large allocations.
//!
//! Targets are built exactly as in `examples/bench.rs`: dense rows of uniform weights
//! normalised to sum 1; hard labels with label smoothing ε = 0.1; MixUp of each label with
//! the reversed batch's (λ = 0.7, ε = 0.1); sparse rows holding the same two classes with
//! weights 0.7(1−ε), 0.3(1−ε) over a floor of ε/C. `hard_ce` is `HardCrossEntropy` with
//! smoothing 0.1. Dense targets are checked (`check_targets(true)`, the default).
//!
//! **Throughput** is in elements per second:
//! - cross-entropy: elements = N·C (logits);
//! - soft InfoNCE: elements = N·M·C, so for dense targets the arithmetic rate is
//!   `GFLOP/s = 4 · elements/s · 1e-9` (loss and gradient each take one N·M·C
//!   multiply-add pass). Structured targets (`hard`, `mixed`, `sparse`) run on their own SIMD
//!   kernels, which never form the N×M score product; their figure is the rate of the dense
//!   problem of the same shape (how much faster than dense they are), not a count of the
//!   operations they execute.
//!
//! Run lengths are kept short so that the whole suite finishes in about 10 minutes on two
//! cores with three backends: each benchmark's settings follow a rough cost estimate per
//! call (`cost_seconds`): calls under 1 ms take 30 samples over 1 s, longer ones 10–20 flat
//! samples (one or more whole calls each) over ≈ 1.5 s or at least ten calls. Compare runs
//! on a quiet machine; the criterion reports land in `target/criterion/`. For numbers
//! against the machine's peak and bandwidth, and against PyTorch, see
//! `benches/nce_table.sh`, `benches/ce_table.sh` and `benches/compare/run.sh`; for
//! noise-free instruction counts, `benches/iai.sh`.

use criterion::{
    criterion_group, criterion_main, BenchmarkGroup, BenchmarkId, Criterion, SamplingMode, Throughput,
};
use rayon::prelude::*;
use softnce::{
    available_backends, Backend, Element, HardCrossEntropy, MatMut, MatRef, RowParam, SoftCrossEntropy,
    SoftInfoNce, SparseTargets, Targets,
};
use std::hint::black_box;
use std::time::Duration;

/// Cross-entropy shapes (N, C).
const CE_SHAPES: [(usize, usize); 6] = [
    (256, 100),
    (256, 1000),
    (1024, 1000),
    (4096, 1000),
    (1024, 10000),
    (4096, 32000),
];
/// Soft InfoNCE shapes (N = M, C).
const NCE_SHAPES: [(usize, usize); 4] = [(256, 1000), (1024, 1000), (4096, 1000), (1024, 10000)];
/// Label smoothing of the structured forms and of `hard_ce`.
const EPS: f32 = 0.1;
/// MixUp weight of the first label.
const LAMBDA: f32 = 0.7;

/// The target forms, in benchmark-id spelling.
#[derive(Clone, Copy)]
enum Form {
    Dense,
    Hard,
    Mixed,
    Sparse,
}

impl Form {
    const ALL: [Form; 4] = [Form::Dense, Form::Hard, Form::Mixed, Form::Sparse];

    fn name(self) -> &'static str {
        match self {
            Form::Dense => "dense",
            Form::Hard => "hard",
            Form::Mixed => "mixed",
            Form::Sparse => "sparse",
        }
    }
}

/// Whether cargo started this binary as a benchmark (`cargo bench` passes `--bench`). Without
/// it (`cargo test --benches` / `--all-targets`), criterion runs every benchmark once as a
/// test, and only the smallest shape of each group is kept so that those commands stay fast.
fn full_grid() -> bool {
    std::env::args().skip(1).any(|a| a == "--bench")
}

/// The shapes to run: all of `shapes`, or only the first (smallest) when not benchmarking.
fn grid<const K: usize>(shapes: [(usize, usize); K]) -> Vec<(usize, usize)> {
    let keep = if full_grid() { K } else { 1 };
    shapes.into_iter().take(keep).collect()
}

/// The backends to run: `SOFTNCE_BENCH_BACKENDS` if set, otherwise every available one.
fn backends() -> Vec<Backend> {
    match std::env::var("SOFTNCE_BENCH_BACKENDS") {
        Ok(list) if !list.trim().is_empty() => list
            .split(',')
            .map(|name| {
                let b: Backend = name
                    .parse()
                    .unwrap_or_else(|e| panic!("SOFTNCE_BENCH_BACKENDS: {e}"));
                assert!(
                    b.is_available(),
                    "SOFTNCE_BENCH_BACKENDS: {b} is not available on this CPU"
                );
                b
            })
            .collect(),
        _ => available_backends(),
    }
}

/// A uniform number in [0, 1) from the index alone (splitmix64; as in `examples/bench.rs`).
fn uniform(seed: u64, i: usize) -> f32 {
    let mut x = seed.wrapping_add((i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    (x >> 40) as f32 / (1u64 << 24) as f32
}

/// `len` values `f(i)`, written in parallel so that pages are first touched by the pool's
/// threads, as in a training step.
fn par_vec(len: usize, f: impl Fn(usize) -> f32 + Sync) -> Vec<f32> {
    let mut v = vec![0.0f32; len];
    v.par_chunks_mut(1 << 16).enumerate().for_each(|(k, chunk)| {
        for (j, x) in chunk.iter_mut().enumerate() {
            *x = f(k * (1 << 16) + j);
        }
    });
    v
}

/// The inputs of one shape (N × C logits, M target rows) and its gradient buffer.
struct Data {
    n: usize,
    m: usize,
    c: usize,
    logits: Vec<f32>,
    dense: Vec<f32>,
    labels: Vec<u32>,
    partner: Vec<u32>,
    indptr: Vec<usize>,
    indices: Vec<u32>,
    weights: Vec<f32>,
    grad: Vec<f32>,
}

impl Data {
    /// The inputs of `examples/bench.rs` for the same shape.
    fn new(n: usize, m: usize, c: usize) -> Data {
        let logits = par_vec(n * c, |i| 8.0 * uniform(1, i) - 4.0);
        let mut dense = par_vec(m * c, |i| uniform(2, i));
        dense.par_chunks_mut(c).for_each(|row| {
            let s: f32 = row.iter().sum();
            row.iter_mut().for_each(|v| *v /= s);
        });
        // The labels of `examples/bench.rs` (its LCG, seed 42).
        let mut s = 42u64;
        let labels: Vec<u32> = (0..m)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let u = ((s >> 40) as f32) / (1u64 << 24) as f32;
                (u * c as f32) as u32 % c as u32
            })
            .collect();
        let partner: Vec<u32> = labels.iter().rev().copied().collect();
        let indptr: Vec<usize> = (0..=m).map(|j| 2 * j).collect();
        let indices: Vec<u32> = labels.iter().zip(&partner).flat_map(|(&a, &b)| [a, b]).collect();
        let weights: Vec<f32> = (0..m)
            .flat_map(|_| [LAMBDA * (1.0 - EPS), (1.0 - LAMBDA) * (1.0 - EPS)])
            .collect();
        let grad = par_vec(n * c, |_| 0.0);
        Data {
            n,
            m,
            c,
            logits,
            dense,
            labels,
            partner,
            indptr,
            indices,
            weights,
            grad,
        }
    }

    /// The logits, the targets in `form`, the first N labels (for `hard_ce`) and the gradient.
    fn split(&mut self, form: Form) -> (MatRef<'_>, Targets<'_>, &[u32], MatMut<'_>) {
        let (n, m, c) = (self.n, self.m, self.c);
        let targets = match form {
            Form::Dense => Targets::Dense(MatRef::new(&self.dense, m, c).unwrap()),
            Form::Hard => Targets::hard(&self.labels, EPS),
            Form::Mixed => Targets::mixed(&self.labels, &self.partner, RowParam::Batch(LAMBDA), EPS),
            Form::Sparse => Targets::Sparse(SparseTargets::new(
                &self.indptr,
                &self.indices,
                &self.weights,
                RowParam::Batch(EPS / c as f32),
            )),
        };
        (
            MatRef::new(&self.logits, n, c).unwrap(),
            targets,
            &self.labels[..n],
            MatMut::new(&mut self.grad, n, c).unwrap(),
        )
    }
}

/// A rough wall-clock cost of one call on two cores (calibrated on a Zen 4 machine; only
/// used to pick sample counts and measurement times, never reported).
fn cost_seconds(infonce: Option<Form>, backend: Backend, n: usize, m: usize, c: usize) -> f64 {
    let fast = !matches!(backend, Backend::Scalar);
    match infonce {
        None => (n * c) as f64 * if fast { 0.8e-9 } else { 2.0e-9 },
        Some(form) => {
            let dense = (n * m * c) as f64 * if fast { 0.025e-9 } else { 0.2e-9 };
            match form {
                Form::Dense => dense,
                _ => dense / 10.0,
            }
        }
    }
}

/// Sample count, sampling mode and times for a call of the given cost.
fn configure(group: &mut BenchmarkGroup<'_, criterion::measurement::WallTime>, cost: f64) {
    group.warm_up_time(Duration::from_millis(500));
    if cost < 1e-3 {
        group
            .sample_size(30)
            .sampling_mode(SamplingMode::Auto)
            .measurement_time(Duration::from_secs(1));
    } else {
        // Flat sampling: every sample is the same number of whole calls (at least one).
        let samples = if cost < 20e-3 { 20 } else { 10 };
        let secs = (samples as f64 * cost * 1.1).max(1.5);
        group
            .sample_size(samples)
            .sampling_mode(SamplingMode::Flat)
            .measurement_time(Duration::from_secs_f64(secs));
    }
}

fn cross_entropy(cr: &mut Criterion) {
    let mut group = cr.benchmark_group("cross_entropy");
    let backends = backends();
    for (n, c) in grid(CE_SHAPES) {
        // Built by the first benchmark of this shape that passes the filter.
        let mut data: Option<Data> = None;
        let shape = format!("{n}x{c}");
        group.throughput(Throughput::Elements((n * c) as u64));
        for &backend in &backends {
            configure(&mut group, cost_seconds(None, backend, n, n, c));
            for form in Form::ALL {
                let id = BenchmarkId::new(format!("soft_ce_{}/{backend}", form.name()), &shape);
                group.bench_function(id, |b| {
                    let d = data.get_or_insert_with(|| Data::new(n, n, c));
                    let (z, t, _, mut g) = d.split(form);
                    let cfg = SoftCrossEntropy::new().backend(Some(backend));
                    b.iter(|| cfg.loss_and_grad(black_box(z), &t, g.reborrow()).unwrap())
                });
            }
            let id = BenchmarkId::new(format!("hard_ce/{backend}"), &shape);
            group.bench_function(id, |b| {
                let d = data.get_or_insert_with(|| Data::new(n, n, c));
                let (z, _, labels, mut g) = d.split(Form::Hard);
                let cfg = HardCrossEntropy::new().smoothing(EPS).backend(Some(backend));
                b.iter(|| cfg.loss_and_grad(black_box(z), labels, g.reborrow()).unwrap())
            });
        }
    }
    group.finish();
}

fn soft_infonce(cr: &mut Criterion) {
    let mut group = cr.benchmark_group("soft_infonce");
    let backends = backends();
    for (n, c) in grid(NCE_SHAPES) {
        let m = n;
        let mut data: Option<Data> = None;
        let shape = format!("{n}x{m}x{c}");
        // N·M·C elements: for dense targets, GFLOP/s = 4 · elements/s · 1e-9.
        group.throughput(Throughput::Elements((n * m * c) as u64));
        for &backend in &backends {
            for form in Form::ALL {
                configure(&mut group, cost_seconds(Some(form), backend, n, m, c));
                let id = BenchmarkId::new(format!("{}/{backend}", form.name()), &shape);
                group.bench_function(id, |b| {
                    let d = data.get_or_insert_with(|| Data::new(n, m, c));
                    let (z, t, _, mut g) = d.split(form);
                    let cfg = SoftInfoNce::new().backend(Some(backend));
                    b.iter(|| cfg.loss_and_grad(black_box(z), &t, g.reborrow()).unwrap())
                });
            }
        }
    }
    group.finish();
}

/// `bf16` / `f16` copies of a shape's logits and dense targets, its labels, and a gradient
/// buffer of the same type.
struct HalfData<T> {
    logits: Vec<T>,
    dense: Vec<T>,
    labels: Vec<u32>,
    partner: Vec<u32>,
    grad: Vec<T>,
}

impl<T: Element> HalfData<T> {
    fn new(n: usize, m: usize, c: usize) -> HalfData<T> {
        let d = Data::new(n, m, c);
        let conv = |v: &[f32]| -> Vec<T> { v.par_iter().map(|&x| T::from_f32(x)).collect() };
        HalfData {
            logits: conv(&d.logits),
            dense: conv(&d.dense),
            labels: d.labels,
            partner: d.partner,
            grad: conv(&d.grad),
        }
    }
}

/// Half-precision inputs and gradients (`half_<dtype>/<kernel>/<backend>/<shape>`): soft CE on
/// dense targets and hard CE at the cross-entropy shapes, soft InfoNCE on dense and MixUp
/// targets at the InfoNCE shapes. Throughput as in the `f32` groups.
fn half_precision<T: Element>(cr: &mut Criterion, dtype: &str) {
    let mut group = cr.benchmark_group(format!("half_{dtype}"));
    let backends = backends();
    for (n, c) in grid(CE_SHAPES) {
        let mut data: Option<HalfData<T>> = None;
        let shape = format!("{n}x{c}");
        group.throughput(Throughput::Elements((n * c) as u64));
        for &backend in &backends {
            configure(&mut group, cost_seconds(None, backend, n, n, c));
            let id = BenchmarkId::new(format!("soft_ce_dense/{backend}"), &shape);
            group.bench_function(id, |b| {
                let d = data.get_or_insert_with(|| HalfData::new(n, n, c));
                let z = MatRef::new(&d.logits, n, c).unwrap();
                let t = Targets::Dense(MatRef::new(&d.dense, n, c).unwrap());
                let mut g = MatMut::new(&mut d.grad, n, c).unwrap();
                let cfg = SoftCrossEntropy::new().backend(Some(backend));
                b.iter(|| cfg.loss_and_grad(black_box(z), &t, g.reborrow()).unwrap())
            });
            let id = BenchmarkId::new(format!("hard_ce/{backend}"), &shape);
            group.bench_function(id, |b| {
                let d = data.get_or_insert_with(|| HalfData::new(n, n, c));
                let z = MatRef::new(&d.logits, n, c).unwrap();
                let mut g = MatMut::new(&mut d.grad, n, c).unwrap();
                let cfg = HardCrossEntropy::new().smoothing(EPS).backend(Some(backend));
                b.iter(|| {
                    cfg.loss_and_grad(black_box(z), &d.labels[..n], g.reborrow())
                        .unwrap()
                })
            });
        }
    }
    for (n, c) in grid(NCE_SHAPES) {
        let m = n;
        let mut data: Option<HalfData<T>> = None;
        let shape = format!("{n}x{m}x{c}");
        group.throughput(Throughput::Elements((n * m * c) as u64));
        for &backend in &backends {
            for form in [Form::Dense, Form::Mixed] {
                configure(&mut group, cost_seconds(Some(form), backend, n, m, c));
                let id = BenchmarkId::new(format!("soft_infonce_{}/{backend}", form.name()), &shape);
                group.bench_function(id, |b| {
                    let d = data.get_or_insert_with(|| HalfData::new(n, m, c));
                    let z = MatRef::new(&d.logits, n, c).unwrap();
                    let t = match form {
                        Form::Dense => Targets::Dense(MatRef::new(&d.dense, m, c).unwrap()),
                        _ => Targets::mixed(&d.labels, &d.partner, RowParam::Batch(LAMBDA), EPS),
                    };
                    let mut g = MatMut::new(&mut d.grad, n, c).unwrap();
                    let cfg = SoftInfoNce::new().backend(Some(backend));
                    b.iter(|| cfg.loss_and_grad(black_box(z), &t, g.reborrow()).unwrap())
                });
            }
        }
    }
    group.finish();
}

fn half(cr: &mut Criterion) {
    half_precision::<half::bf16>(cr, "bf16");
    half_precision::<half::f16>(cr, "f16");
}

criterion_group!(benches, cross_entropy, soft_infonce, half);
criterion_main!(benches);
