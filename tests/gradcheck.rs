//! Finite-difference gradient checks of the f64 reference (`softnce::reference`).
//!
//! The reference reads `f32` (or half) inputs and computes in `f64`. To differentiate it in
//! `f64` precision, every perturbed input is a multiple of 2^-12 of modest size, so that
//! `x ± h` and `x ± h/2` with `h = 2^-10` are exact `f32` values: the perturbation the
//! reference sees is exactly the one the difference quotient divides by.
//!
//! The derivative estimate is the Richardson extrapolation of two central differences,
//! `R = (4·D(h/2) − D(h)) / 3`, whose truncation error is O(h^4 · f^(5)) ≈ 1e-12 · f^(5) and
//! whose rounding error is about `1e-16 · |F| / h` ≈ 1e-12 for the O(1..100) objectives used
//! here. The tolerances below (`ATOL + RTOL·|g|` with `ATOL = 1e-8`, `RTOL = 1e-6`) leave
//! two or more orders of magnitude of headroom for that error, while a wrong factor,
//! sign, missing term or wrong reduction scale would be off by far more (see
//! `checker_rejects_a_slightly_wrong_gradient`).
//!
//! For `Reduction::None` the checked function is `Σ_i dl_i · l_i` with a non-trivial upstream
//! vector `dl` (negative, zero and positive entries); for `Mean`/`Sum` it is the returned loss.

use softnce::reference::{self, RefOutput, Request};
use softnce::{
    HardCrossEntropy, MatRef, Noise, Reduction, RowParam, SoftCrossEntropy, SoftInfoNce, SparseTargets,
    Targets,
};

/// Step of the central differences (exact in `f32`).
const H: f32 = 1.0 / 1024.0;
/// Grid of every perturbed input: `x ± 2^-10` and `x ± 2^-11` stay exact.
const GRID: f64 = 4096.0;
const ATOL: f64 = 1e-8;
const RTOL: f64 = 1e-6;

// ---------------------------------------------------------------------------------------
// Deterministic inputs
// ---------------------------------------------------------------------------------------

/// SplitMix64: a small deterministic generator (the tests need no `rand`).
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    /// A multiple of `1/GRID` in `[lo, hi]` (exactly representable in `f32`).
    fn grid(&mut self, lo: f64, hi: f64) -> f32 {
        let k = ((lo + (hi - lo) * self.unit()) * GRID).round();
        (k / GRID) as f32
    }

    fn grid_vec(&mut self, len: usize, lo: f64, hi: f64) -> Vec<f32> {
        (0..len).map(|_| self.grid(lo, hi)).collect()
    }

    fn labels(&mut self, len: usize, classes: usize) -> Vec<u32> {
        (0..len).map(|_| self.below(classes) as u32).collect()
    }
}

// ---------------------------------------------------------------------------------------
// The checker
// ---------------------------------------------------------------------------------------

/// `F(x)` and the analytic `∂F/∂x` at `x`.
type Eval<'a> = dyn Fn(&[f32]) -> (f64, Vec<f64>) + 'a;

/// The largest violation `|R − g| / (ATOL + RTOL·|g|)` over all coordinates (≤ 1 passes),
/// where `R` is the Richardson estimate of `∂F/∂x_k` and `g` the analytic gradient.
///
/// `eval(x)` returns `F(x)` and the analytic gradient `∂F/∂x` at `x` (same length as `x`).
fn worst_violation(x0: &[f32], perturb: &[usize], eval: &Eval<'_>) -> (f64, String) {
    let (_, grad) = eval(x0);
    assert_eq!(grad.len(), x0.len(), "analytic gradient has the wrong length");
    let mut worst = (0.0f64, String::new());
    let mut x = x0.to_vec();
    for &k in perturb {
        let base = x0[k];
        let f_at = |x: &mut Vec<f32>, h: f32| -> f64 {
            let v = base + h;
            // The perturbation the reference sees must be exactly `h`.
            assert_eq!(
                v as f64 - base as f64,
                h as f64,
                "x[{k}] = {base} + {h} is not exact in f32"
            );
            x[k] = v;
            let (f, _) = eval(x);
            x[k] = base;
            f
        };
        let d = |x: &mut Vec<f32>, h: f32| (f_at(x, h) - f_at(x, -h)) / (2.0 * h as f64);
        let d1 = d(&mut x, H);
        let d2 = d(&mut x, H / 2.0);
        let rich = (4.0 * d2 - d1) / 3.0;
        let g = grad[k];
        assert!(
            rich.is_finite() && g.is_finite(),
            "non-finite derivative at {k}: fd {rich}, analytic {g}"
        );
        let v = (rich - g).abs() / (ATOL + RTOL * g.abs());
        if v > worst.0 {
            worst = (
                v,
                format!("coordinate {k}: finite difference {rich:.12e}, analytic {g:.12e}"),
            );
        }
    }
    worst
}

/// Checks the analytic gradient of `eval` against finite differences at `x0` for every
/// coordinate in `perturb`, and that the check is not vacuous (some entry is clearly non-zero).
fn check(what: &str, x0: &[f32], perturb: &[usize], eval: &Eval<'_>) {
    let (_, grad) = eval(x0);
    let biggest = perturb.iter().map(|&k| grad[k].abs()).fold(0.0, f64::max);
    assert!(
        biggest > 1e-3,
        "{what}: gradient is (nearly) zero everywhere, the check would be vacuous"
    );
    let (v, detail) = worst_violation(x0, perturb, eval);
    assert!(
        v <= 1.0,
        "{what}: gradient mismatch ({v:.3}× the tolerance) at {detail}"
    );
}

/// The checked scalar: the reduced loss for `Mean`/`Sum`, `Σ dl_i·l_i` for `None`.
fn objective(r: &RefOutput, reduction: Reduction, upstream: &[f32]) -> f64 {
    match reduction {
        Reduction::None => r
            .row_losses
            .iter()
            .zip(upstream)
            .map(|(&l, &d)| l * d as f64)
            .sum(),
        Reduction::Mean | Reduction::Sum => r.loss,
    }
}

fn request<'a>(reduction: Reduction, upstream: &'a [f32], logits: bool, targets: bool) -> Request<'a> {
    Request {
        grad_logits: logits,
        grad_targets: targets,
        upstream: (reduction == Reduction::None).then_some(upstream),
    }
}

const REDUCTIONS: [Reduction; 3] = [Reduction::Mean, Reduction::Sum, Reduction::None];

/// An upstream vector with negative, zero and positive entries (f32-exact values).
fn upstream(n: usize) -> Vec<f32> {
    let pattern = [0.75f32, -1.25, 2.0, 0.0, 0.5, -0.375, 1.5];
    (0..n).map(|i| pattern[i % pattern.len()]).collect()
}

// ---------------------------------------------------------------------------------------
// Owned target forms and noise
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Lam {
    Batch(f32),
    PerRow(Vec<f32>),
}

impl Lam {
    fn param(&self) -> RowParam<'_> {
        match self {
            Lam::Batch(v) => RowParam::Batch(*v),
            Lam::PerRow(v) => RowParam::PerRow(v),
        }
    }
}

#[derive(Debug, Clone)]
enum Form {
    Dense {
        data: Vec<f32>,
        rows: usize,
        cols: usize,
    },
    Hard {
        labels: Vec<u32>,
        eps: f32,
    },
    Mixed {
        a: Vec<u32>,
        b: Vec<u32>,
        lambda: Lam,
        eps: f32,
    },
    Sparse {
        indptr: Vec<usize>,
        indices: Vec<u32>,
        weights: Vec<f32>,
        floor: Lam,
    },
}

impl Form {
    fn targets(&self) -> Targets<'_, f32> {
        match self {
            Form::Dense { data, rows, cols } => Targets::Dense(MatRef::new(data, *rows, *cols).unwrap()),
            Form::Hard { labels, eps } => Targets::hard(labels, *eps),
            Form::Mixed { a, b, lambda, eps } => Targets::mixed(a, b, lambda.param(), *eps),
            Form::Sparse {
                indptr,
                indices,
                weights,
                floor,
            } => Targets::Sparse(SparseTargets::new(indptr, indices, weights, floor.param())),
        }
    }
}

/// Dense soft targets: non-negative, unnormalised, with some exact zeros.
fn dense_form(rng: &mut Rng, m: usize, c: usize) -> Form {
    let data = (0..m * c)
        .map(|_| {
            if rng.below(4) == 0 {
                0.0
            } else {
                rng.grid(0.0, 1.5)
            }
        })
        .collect();
    Form::Dense {
        data,
        rows: m,
        cols: c,
    }
}

/// Sparse rows with a duplicate class in row 0, an empty row, and per-row floors (one zero).
fn sparse_form(rng: &mut Rng, m: usize, c: usize, per_row_floor: bool) -> Form {
    let mut indptr = vec![0usize];
    let mut indices = Vec::new();
    let mut weights = Vec::new();
    for j in 0..m {
        let nnz = match j % 4 {
            0 => 3,
            1 => 0, // empty row (the floor alone)
            2 => 2,
            _ => 1,
        };
        for e in 0..nnz {
            let class = if j == 0 && e == 2 {
                indices[indices.len() - 1]
            } else {
                rng.below(c) as u32
            };
            indices.push(class); // row 0 repeats its second class
            weights.push(rng.grid(0.05, 1.0));
        }
        indptr.push(indices.len());
    }
    let floor = if per_row_floor {
        Lam::PerRow(
            (0..m)
                .map(|j| if j == 2 { 0.0 } else { rng.grid(0.01, 0.2) })
                .collect(),
        )
    } else {
        Lam::Batch(0.03125)
    };
    Form::Sparse {
        indptr,
        indices,
        weights,
        floor,
    }
}

fn mixed_form(rng: &mut Rng, m: usize, c: usize, per_row: bool) -> Form {
    let a = rng.labels(m, c);
    let mut b = rng.labels(m, c);
    b[0] = a[0]; // a = b on one row
    let lambda = if per_row {
        let mut l: Vec<f32> = (0..m).map(|_| rng.grid(0.0, 1.0)).collect();
        l[m - 1] = 1.0;
        if m > 2 {
            l[1] = 0.0;
        }
        Lam::PerRow(l)
    } else {
        Lam::Batch(0.625)
    };
    Form::Mixed {
        a,
        b,
        lambda,
        eps: 0.1,
    }
}

#[derive(Debug, Clone)]
enum NoiseSpec {
    Uniform,
    Probs(Vec<f32>),
    LogProbs(Vec<f32>),
}

impl NoiseSpec {
    fn noise(&self) -> Noise<'_> {
        match self {
            NoiseSpec::Uniform => Noise::Uniform,
            NoiseSpec::Probs(p) => Noise::Probs(p),
            NoiseSpec::LogProbs(l) => Noise::LogProbs(l),
        }
    }
}

/// Uniform, a non-uniform (unnormalised) probability vector, and non-uniform log-probabilities.
fn noises(rng: &mut Rng, c: usize) -> Vec<NoiseSpec> {
    let probs = (0..c)
        .map(|k| 0.05 + 0.9 * ((k * 7 + 3) % c) as f32 / c as f32)
        .collect();
    vec![
        NoiseSpec::Uniform,
        NoiseSpec::Probs(probs),
        NoiseSpec::LogProbs(rng.grid_vec(c, -3.0, 0.5)),
    ]
}

// ---------------------------------------------------------------------------------------
// Soft InfoNCE, gradient with respect to the logits
// ---------------------------------------------------------------------------------------

/// Checks dL/dz of soft InfoNCE for one target form over every reduction and noise, with
/// `M = N` (offset 0) and `M > N` (non-zero offset), at temperatures ≠ 1.
fn infonce_logit_grad(name: &str, seed: u64, make: impl Fn(&mut Rng, usize, usize) -> Form) {
    let mut rng = Rng(seed);
    let c = 6;
    let temps = [0.7f32, 2.5, 1.0, 0.45];
    let mut case = 0;
    for (n, m, p0) in [(3usize, 3usize, 0usize), (3, 7, 2), (2, 5, 3)] {
        let form = make(&mut rng, m, c);
        let targets = form.targets();
        for noise in noises(&mut rng, c) {
            for reduction in REDUCTIONS {
                let t = temps[case % temps.len()];
                case += 1;
                let up = upstream(n);
                let z0 = rng.grid_vec(n * c, -2.5, 2.5);
                let cfg = SoftInfoNce::new()
                    .temperature(t)
                    .noise(noise.noise())
                    .offset(p0)
                    .reduction(reduction);
                let eval = |z: &[f32]| {
                    let r = reference::soft_infonce(
                        &cfg,
                        MatRef::new(z, n, c).unwrap(),
                        &targets,
                        &request(reduction, &up, true, false),
                    )
                    .unwrap();
                    (objective(&r, reduction, &up), r.grad_logits.clone())
                };
                let all: Vec<usize> = (0..n * c).collect();
                check(
                    &format!("soft InfoNCE dL/dz, {name}, N={n} M={m} p0={p0} t={t} {noise:?} {reduction:?}"),
                    &z0,
                    &all,
                    &eval,
                );
            }
        }
    }
}

#[test]
fn infonce_logit_grad_dense_targets() {
    infonce_logit_grad("dense", 11, dense_form);
}

#[test]
fn infonce_logit_grad_hard_targets_smoothed() {
    infonce_logit_grad("hard ε=0.1", 12, |rng, m, c| Form::Hard {
        labels: rng.labels(m, c),
        eps: 0.1,
    });
}

#[test]
fn infonce_logit_grad_hard_targets_one_hot() {
    infonce_logit_grad("hard ε=0", 13, |rng, m, c| Form::Hard {
        labels: rng.labels(m, c),
        eps: 0.0,
    });
}

#[test]
fn infonce_logit_grad_mixed_per_row_lambda() {
    infonce_logit_grad("mixed, per-row λ", 14, |rng, m, c| mixed_form(rng, m, c, true));
}

#[test]
fn infonce_logit_grad_mixed_batch_lambda() {
    infonce_logit_grad("mixed, batch λ", 15, |rng, m, c| mixed_form(rng, m, c, false));
}

#[test]
fn infonce_logit_grad_sparse_per_row_floor() {
    infonce_logit_grad("sparse, per-row floor", 16, |rng, m, c| {
        sparse_form(rng, m, c, true)
    });
}

#[test]
fn infonce_logit_grad_sparse_batch_floor() {
    infonce_logit_grad("sparse, batch floor", 17, |rng, m, c| {
        sparse_form(rng, m, c, false)
    });
}

// ---------------------------------------------------------------------------------------
// Soft InfoNCE, gradient with respect to dense targets
// ---------------------------------------------------------------------------------------

#[test]
fn infonce_target_grad_dense() {
    let mut rng = Rng(21);
    let c = 5;
    let mut case = 0;
    for (n, m, p0) in [(3usize, 3usize, 0usize), (2, 6, 1), (3, 7, 4)] {
        for noise in noises(&mut rng, c) {
            for reduction in REDUCTIONS {
                let t = [0.6f32, 1.0, 1.7][case % 3];
                case += 1;
                let up = upstream(n);
                let z = rng.grid_vec(n * c, -2.0, 2.0);
                // Strictly positive targets (≥ 2^-6), so that a ± 2h stays ≥ 0 and valid.
                let a0 = rng.grid_vec(m * c, 1.0 / 64.0, 1.25);
                let cfg = SoftInfoNce::new()
                    .temperature(t)
                    .noise(noise.noise())
                    .offset(p0)
                    .reduction(reduction);
                let what = format!("soft InfoNCE dL/da, N={n} M={m} p0={p0} t={t} {noise:?} {reduction:?}");
                let eval_a = |a: &[f32]| {
                    let r = reference::soft_infonce(
                        &cfg,
                        MatRef::new(&z, n, c).unwrap(),
                        &Targets::Dense(MatRef::new(a, m, c).unwrap()),
                        &request(reduction, &up, false, true),
                    )
                    .unwrap();
                    (objective(&r, reduction, &up), r.grad_targets.clone())
                };
                let all: Vec<usize> = (0..m * c).collect();
                check(&what, &a0, &all, &eval_a);

                // Both gradients from one call: the logit gradient of the same call is right too.
                let eval_z = |zz: &[f32]| {
                    let r = reference::soft_infonce(
                        &cfg,
                        MatRef::new(zz, n, c).unwrap(),
                        &Targets::Dense(MatRef::new(&a0, m, c).unwrap()),
                        &request(reduction, &up, true, true),
                    )
                    .unwrap();
                    assert_eq!(r.grad_targets.len(), m * c);
                    (objective(&r, reduction, &up), r.grad_logits.clone())
                };
                let all: Vec<usize> = (0..n * c).collect();
                check(&format!("{what} (dL/dz in the same call)"), &z, &all, &eval_z);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Soft cross-entropy
// ---------------------------------------------------------------------------------------

fn soft_ce_logit_grad(name: &str, seed: u64, make: impl Fn(&mut Rng, usize, usize) -> Form) {
    let mut rng = Rng(seed);
    let c = 7;
    let mut case = 0;
    for n in [1usize, 4] {
        let form = make(&mut rng, n, c);
        let targets = form.targets();
        for reduction in REDUCTIONS {
            for t in [0.55f32, 1.0, 3.0] {
                case += 1;
                let up = upstream(n);
                let z0 = rng.grid_vec(n * c, -3.0, 3.0);
                let cfg = SoftCrossEntropy::new().temperature(t).reduction(reduction);
                let eval = |z: &[f32]| {
                    let r = reference::soft_cross_entropy(
                        &cfg,
                        MatRef::new(z, n, c).unwrap(),
                        &targets,
                        &request(reduction, &up, true, false),
                    )
                    .unwrap();
                    (objective(&r, reduction, &up), r.grad_logits.clone())
                };
                let all: Vec<usize> = (0..n * c).collect();
                check(
                    &format!("soft CE dL/dz, {name}, case {case}, N={n} t={t} {reduction:?}"),
                    &z0,
                    &all,
                    &eval,
                );
            }
        }
    }
}

#[test]
fn soft_ce_logit_grad_dense_targets() {
    soft_ce_logit_grad("dense (unnormalised, with a zero row)", 31, |rng, m, c| {
        let mut f = dense_form(rng, m, c);
        if let Form::Dense { data, .. } = &mut f {
            if m > 1 {
                data[c..2 * c].fill(0.0); // a zero row: no loss, no gradient
            }
        }
        f
    });
}

#[test]
fn soft_ce_logit_grad_hard_targets() {
    soft_ce_logit_grad("hard ε=0.2", 32, |rng, m, c| Form::Hard {
        labels: rng.labels(m, c),
        eps: 0.2,
    });
}

#[test]
fn soft_ce_logit_grad_mixed_per_row_lambda() {
    soft_ce_logit_grad("mixed, per-row λ", 33, |rng, m, c| mixed_form(rng, m, c, true));
}

#[test]
fn soft_ce_logit_grad_mixed_batch_lambda() {
    soft_ce_logit_grad("mixed, batch λ", 34, |rng, m, c| mixed_form(rng, m, c, false));
}

#[test]
fn soft_ce_logit_grad_sparse() {
    soft_ce_logit_grad("sparse, per-row floor", 35, |rng, m, c| {
        sparse_form(rng, m, c, true)
    });
    soft_ce_logit_grad("sparse, batch floor", 36, |rng, m, c| {
        sparse_form(rng, m, c, false)
    });
}

// ---------------------------------------------------------------------------------------
// Hard cross-entropy with label smoothing and ignored rows
// ---------------------------------------------------------------------------------------

#[test]
fn hard_ce_logit_grad_smoothing_and_ignored_rows() {
    let mut rng = Rng(41);
    let (n, c) = (5usize, 6usize);
    // Row 2 is ignored through an out-of-range ignore label, or through an in-range one (class 4,
    // which then ignores every row labelled 4).
    let ignore_cases: [(Option<u32>, [u32; 5]); 3] = [
        (None, [1, 0, 5, 3, 1]),
        (Some(u32::MAX), [1, 0, u32::MAX, 3, 5]),
        (Some(4), [1, 0, 4, 3, 2]),
    ];
    let mut case = 0;
    for (ignore, labels) in ignore_cases {
        for eps in [0.0f32, 0.15, 1.0] {
            for reduction in REDUCTIONS {
                let t = [0.8f32, 1.0, 2.2][case % 3];
                case += 1;
                let up = upstream(n);
                let z0 = rng.grid_vec(n * c, -3.0, 3.0);
                let cfg = HardCrossEntropy::new()
                    .temperature(t)
                    .smoothing(eps)
                    .ignore_index(ignore)
                    .reduction(reduction);
                let eval = |z: &[f32]| {
                    let r = reference::hard_cross_entropy(
                        &cfg,
                        MatRef::new(z, n, c).unwrap(),
                        &labels,
                        &request(reduction, &up, true, false),
                    )
                    .unwrap();
                    (objective(&r, reduction, &up), r.grad_logits.clone())
                };
                let all: Vec<usize> = (0..n * c).collect();
                let what = format!("hard CE dL/dz, ignore {ignore:?}, ε={eps} t={t} {reduction:?}");
                check(&what, &z0, &all, &eval);
                if ignore.is_some() {
                    let (_, g) = eval(&z0);
                    assert!(
                        g[2 * c..3 * c].iter().all(|&x| x == 0.0),
                        "{what}: ignored row has a gradient"
                    );
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// The checker itself can fail
// ---------------------------------------------------------------------------------------

/// A check that accepted everything would make every test above vacuous: a gradient that is
/// wrong by a relative 1e-4, or that belongs to a slightly different temperature, is rejected.
#[test]
fn checker_rejects_a_slightly_wrong_gradient() {
    let mut rng = Rng(51);
    let (n, m, c) = (3usize, 4usize, 5usize);
    let z0 = rng.grid_vec(n * c, -2.0, 2.0);
    let form = dense_form(&mut rng, m, c);
    let targets = form.targets();
    let all: Vec<usize> = (0..n * c).collect();
    let run = |z: &[f32], t: f32| {
        let cfg = SoftInfoNce::new().temperature(t).offset(1);
        reference::soft_infonce(
            &cfg,
            MatRef::new(z, n, c).unwrap(),
            &targets,
            &Request::loss_and_grad(),
        )
        .unwrap()
    };

    let right = |z: &[f32]| {
        let r = run(z, 0.9);
        (r.loss, r.grad_logits)
    };
    assert!(worst_violation(&z0, &all, &right).0 <= 1.0);

    let scaled = |z: &[f32]| {
        let r = run(z, 0.9);
        (r.loss, r.grad_logits.iter().map(|g| g * (1.0 + 1e-4)).collect())
    };
    assert!(
        worst_violation(&z0, &all, &scaled).0 > 1.0,
        "a gradient off by 1e-4 passed"
    );

    let other_t = |z: &[f32]| (run(z, 0.9).loss, run(z, 0.9001).grad_logits);
    assert!(
        worst_violation(&z0, &all, &other_t).0 > 1.0,
        "the gradient of another temperature passed"
    );
}
