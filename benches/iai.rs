//! Instruction-count benchmarks (iai-callgrind under valgrind's callgrind) of the public loss
//! calls: loss + gradient with respect to the logits, `f32`, mean reduction.
//!
//! ```text
//! bash benches/iai.sh                 # installs the matching iai-callgrind-runner, then runs all
//! bash benches/iai.sh soft_infonce    # forwards a filter to the runner (substring of the id)
//! ```
//!
//! Counts, unlike wall-clock times, do not depend on what else the machine is doing, so these
//! benches can run on a shared machine or in CI and be compared across commits. They count
//! instructions executed (`Ir`), not cycles: a change that trades instructions for memory
//! traffic, or uses wider vectors, shows up here differently than in `benches/losses.rs`.
//!
//! What is measured: every loss × target form, each forced to the `Scalar` and the `Avx2`
//! backend, at small shapes (cross-entropy at 64 × 1000, soft InfoNCE at N = M = 64, C = 256):
//!
//! | group | benchmark | bench ids |
//! |---|---|---|
//! | `cross_entropy` | `soft_ce` | `{dense,hard,mixed,sparse}_{scalar,avx2}` |
//! | `cross_entropy` | `hard_ce` (label smoothing 0.1) | `hard_{scalar,avx2}` |
//! | `soft_infonce` | `soft_infonce` | `{dense,hard,mixed,sparse}_{scalar,avx2}` |
//!
//! Targets are built as in `examples/bench.rs`: dense rows of uniform weights normalised to
//! sum 1; hard labels with smoothing ε = 0.1; MixUp with the reversed batch (λ = 0.7,
//! ε = 0.1); sparse rows of the same two classes with weights 0.7(1−ε), 0.3(1−ε) and floor
//! ε/C.
//!
//! Notes:
//! - **valgrind hides AVX-512**: its CPUID reports no AVX-512 (valgrind cannot execute it), so
//!   `Backend::Avx512` is unavailable under valgrind and is not benchmarked here; its
//!   wall-clock figures come from `benches/losses.rs` and `examples/bench.rs`. On a CPU (or
//!   valgrind) without AVX2+FMA the `*_avx2` benchmarks print a note and run nothing.
//! - Each benchmark runs one call after a warm-up call in its setup (the setup is not
//!   counted), so per-thread scratch buffers and the CPU probe are already in place.
//! - The rayon global pool is built with one thread, the calling one
//!   (`use_current_thread`), so every row block runs on the benchmark's own thread, where
//!   callgrind's collection is switched on; worker threads would escape the count.
//! - The iai-callgrind library and the `iai-callgrind-runner` binary must have the same
//!   version: `benches/iai.sh` installs the runner at the version in `Cargo.lock`.
//! - Run without `--bench` (as `cargo test --benches` / `--all-targets` does), this binary
//!   prints a note and exits successfully, so those commands need neither valgrind nor the
//!   runner.

use std::hint::black_box;

/// Whether cargo started this binary as a benchmark (`cargo bench` passes `--bench`) or the
/// iai-callgrind runner started it under valgrind (`--iai-run ...`).
fn benchmarking() -> bool {
    std::env::args()
        .skip(1)
        .any(|a| a == "--bench" || a == "--iai-run")
}

fn main() {
    if benchmarking() {
        suite::run();
    } else {
        eprintln!(
            "benches/iai.rs: instruction-count benchmarks run under valgrind; use `bash benches/iai.sh` \
             (or `cargo bench --bench iai` with iai-callgrind-runner installed). Nothing to test here."
        );
    }
}

mod suite {
    use super::black_box;
    use iai_callgrind::{library_benchmark, library_benchmark_group, main, LibraryBenchmarkConfig};
    use softnce::{
        Backend, HardCrossEntropy, MatMut, MatRef, RowParam, SoftCrossEntropy, SoftInfoNce, SparseTargets,
        Targets,
    };

    /// Cross-entropy shape (N × C).
    const CE: (usize, usize) = (64, 1000);
    /// InfoNCE shape (N = M, C).
    const NCE: (usize, usize) = (64, 256);
    /// Label smoothing ε of the structured forms and of hard cross-entropy.
    const EPS: f32 = 0.1;
    /// MixUp weight λ of the first label.
    const LAMBDA: f32 = 0.7;

    #[derive(Clone, Copy, Debug)]
    pub enum Loss {
        SoftCe,
        HardCe,
        SoftInfoNce,
    }

    #[derive(Clone, Copy, Debug)]
    pub enum Form {
        Dense,
        Hard,
        Mixed,
        Sparse,
    }

    /// One benchmark's inputs and output buffer, owned so that the targets can borrow them.
    pub struct Problem {
        loss: Loss,
        form: Form,
        backend: Backend,
        n: usize,
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

    /// Deterministic uniform numbers in [0, 1) (the LCG of `benches/losses.rs`).
    fn uniform(seed: u64) -> impl FnMut() -> f32 {
        let mut s = seed;
        move || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32) / (1u64 << 24) as f32
        }
    }

    /// Makes the rayon global pool a single worker that is the calling thread, so the
    /// kernels' parallel loops run inline on the thread callgrind counts. Idempotent.
    fn single_thread_pool() {
        // An error means the pool exists already (a second setup in the same process).
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .use_current_thread()
            .build_global();
    }

    impl Problem {
        fn new(loss: Loss, form: Form, backend: Backend) -> Problem {
            let ((n, c), m) = match loss {
                Loss::SoftInfoNce => (NCE, NCE.0),
                _ => (CE, CE.0),
            };
            let mut next = uniform(0x9e37_79b9_7f4a_7c15);
            let logits: Vec<f32> = (0..n * c).map(|_| 8.0 * next() - 4.0).collect();
            let dense: Vec<f32> = match form {
                Form::Dense => {
                    let mut d: Vec<f32> = (0..m * c).map(|_| next()).collect();
                    for row in d.chunks_mut(c) {
                        let s: f32 = row.iter().sum();
                        row.iter_mut().for_each(|v| *v /= s);
                    }
                    d
                }
                _ => Vec::new(),
            };
            let labels: Vec<u32> = (0..m).map(|_| (next() * c as f32) as u32 % c as u32).collect();
            let partner: Vec<u32> = labels.iter().rev().copied().collect();
            let indptr: Vec<usize> = (0..=m).map(|j| 2 * j).collect();
            let indices: Vec<u32> = labels.iter().zip(&partner).flat_map(|(&a, &b)| [a, b]).collect();
            let weights: Vec<f32> = (0..m)
                .flat_map(|_| [LAMBDA * (1.0 - EPS), (1.0 - LAMBDA) * (1.0 - EPS)])
                .collect();
            Problem {
                loss,
                form,
                backend,
                n,
                c,
                logits,
                dense,
                labels,
                partner,
                indptr,
                indices,
                weights,
                grad: vec![0.0; n * c],
            }
        }

        fn targets(&self) -> Targets<'_> {
            let m = self.labels.len();
            match self.form {
                Form::Dense => Targets::Dense(MatRef::new(&self.dense, m, self.c).unwrap()),
                Form::Hard => Targets::hard(&self.labels, EPS),
                Form::Mixed => Targets::mixed(&self.labels, &self.partner, RowParam::Batch(LAMBDA), EPS),
                Form::Sparse => Targets::Sparse(SparseTargets::new(
                    &self.indptr,
                    &self.indices,
                    &self.weights,
                    RowParam::Batch(EPS / self.c as f32),
                )),
            }
        }

        /// One loss + gradient call on the forced backend.
        fn run(&mut self) -> f32 {
            let (n, c) = (self.n, self.c);
            let mut grad = std::mem::take(&mut self.grad);
            let z = MatRef::new(&self.logits, n, c).unwrap();
            let g = MatMut::new(&mut grad, n, c).unwrap();
            let loss = match self.loss {
                Loss::SoftCe => SoftCrossEntropy::new().backend(Some(self.backend)).loss_and_grad(
                    black_box(z),
                    &self.targets(),
                    g,
                ),
                Loss::SoftInfoNce => SoftInfoNce::new().backend(Some(self.backend)).loss_and_grad(
                    black_box(z),
                    &self.targets(),
                    g,
                ),
                Loss::HardCe => HardCrossEntropy::new()
                    .smoothing(EPS)
                    .backend(Some(self.backend))
                    .loss_and_grad(black_box(z), &self.labels[..n], g),
            }
            .unwrap();
            self.grad = grad;
            black_box(&self.grad);
            loss
        }
    }

    /// Setup (not counted): the problem, a single-thread pool and one warm-up call. `None`
    /// when this CPU (as valgrind presents it) lacks the backend.
    fn setup(loss: Loss, form: Form, backend: Backend) -> Option<Problem> {
        single_thread_pool();
        if !backend.is_available() {
            eprintln!("{backend} is not available on this CPU under valgrind: {loss:?}/{form:?} skipped");
            return None;
        }
        let mut p = Problem::new(loss, form, backend);
        p.run();
        Some(p)
    }

    fn setup_soft_ce(form: Form, backend: Backend) -> Option<Problem> {
        setup(Loss::SoftCe, form, backend)
    }

    fn setup_hard_ce(backend: Backend) -> Option<Problem> {
        setup(Loss::HardCe, Form::Hard, backend)
    }

    fn setup_soft_infonce(form: Form, backend: Backend) -> Option<Problem> {
        setup(Loss::SoftInfoNce, form, backend)
    }

    /// The counted part: one call on a warmed-up problem.
    fn call(p: Option<Problem>) -> Option<f32> {
        p.map(|mut p| p.run())
    }

    #[library_benchmark]
    #[bench::dense_scalar(args = (Form::Dense, Backend::Scalar), setup = setup_soft_ce)]
    #[bench::dense_avx2(args = (Form::Dense, Backend::Avx2), setup = setup_soft_ce)]
    #[bench::hard_scalar(args = (Form::Hard, Backend::Scalar), setup = setup_soft_ce)]
    #[bench::hard_avx2(args = (Form::Hard, Backend::Avx2), setup = setup_soft_ce)]
    #[bench::mixed_scalar(args = (Form::Mixed, Backend::Scalar), setup = setup_soft_ce)]
    #[bench::mixed_avx2(args = (Form::Mixed, Backend::Avx2), setup = setup_soft_ce)]
    #[bench::sparse_scalar(args = (Form::Sparse, Backend::Scalar), setup = setup_soft_ce)]
    #[bench::sparse_avx2(args = (Form::Sparse, Backend::Avx2), setup = setup_soft_ce)]
    fn bench_soft_ce(p: Option<Problem>) -> Option<f32> {
        black_box(call(p))
    }

    #[library_benchmark]
    #[bench::hard_scalar(args = (Backend::Scalar), setup = setup_hard_ce)]
    #[bench::hard_avx2(args = (Backend::Avx2), setup = setup_hard_ce)]
    fn bench_hard_ce(p: Option<Problem>) -> Option<f32> {
        black_box(call(p))
    }

    #[library_benchmark]
    #[bench::dense_scalar(args = (Form::Dense, Backend::Scalar), setup = setup_soft_infonce)]
    #[bench::dense_avx2(args = (Form::Dense, Backend::Avx2), setup = setup_soft_infonce)]
    #[bench::hard_scalar(args = (Form::Hard, Backend::Scalar), setup = setup_soft_infonce)]
    #[bench::hard_avx2(args = (Form::Hard, Backend::Avx2), setup = setup_soft_infonce)]
    #[bench::mixed_scalar(args = (Form::Mixed, Backend::Scalar), setup = setup_soft_infonce)]
    #[bench::mixed_avx2(args = (Form::Mixed, Backend::Avx2), setup = setup_soft_infonce)]
    #[bench::sparse_scalar(args = (Form::Sparse, Backend::Scalar), setup = setup_soft_infonce)]
    #[bench::sparse_avx2(args = (Form::Sparse, Backend::Avx2), setup = setup_soft_infonce)]
    fn bench_soft_infonce(p: Option<Problem>) -> Option<f32> {
        black_box(call(p))
    }

    library_benchmark_group!(
        name = cross_entropy;
        benchmarks = bench_soft_ce, bench_hard_ce
    );

    library_benchmark_group!(
        name = soft_infonce;
        benchmarks = bench_soft_infonce
    );

    main!(
        config = LibraryBenchmarkConfig::default();
        library_benchmark_groups = cross_entropy, soft_infonce
    );

    /// Runs the suite (the `main` that `iai_callgrind::main!` generates in this module).
    pub fn run() {
        main();
    }
}
