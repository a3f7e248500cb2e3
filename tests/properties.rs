//! Property tests: the exact identities of DESIGN §1 (target forms, label-smoothing and
//! uniform-noise invariance, the permutation identity with cross-entropy), reductions,
//! strided views and loss-only calls, through the public API (`f32`) and the `f64` reference.
//!
//! Shapes: `N, M ≤ 12`, `C ≤ 20` with the vector-width edges `{1, 2, 7, 8, 9, 15, 16, 17}`
//! drawn most often. The number of cases comes from `PROPTEST_CASES` (default 256).
//!
//! ## Tolerances
//! Comparisons are `|x − y| ≤ rtol · max(mag, |x|, |y|)` where `mag` is the natural size of
//! the quantity, derived from the inputs:
//! - `L = max(1, max_j Σ_c a_jc · (max|z|/t + max|log η|))` bounds every score `|S_ij|` and
//!   row loss; a reduced `Sum`/`None` total uses `N·L`.
//! - gradient row `i`: `G_i = |scale_i| · max_j Σ_c a_jc / t · max(1, L)` — the gradient is
//!   at most `2·|scale_i|·mass/t`, and a relative perturbation `δ` of the targets (e.g. their
//!   rounding to `f32`) moves the softmax weights by up to `≈ 2δ·L`, hence the factor `L`.
//!
//! `rtol` is `1e-5` where `f32` values are compared (outputs rounded to `f32`, targets
//! densified in `f32`), and `1e-10` (`1e-12` when both sides are computed identically after an
//! exact densification) where the `f64` reference is compared with itself.

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use softnce::reference::{self, RefOutput, Request};
use softnce::{
    HardCrossEntropy, MatMut, MatRef, Noise, Outputs, Reduction, RowParam, SoftCrossEntropy, SoftInfoNce,
    SparseTargets, Targets,
};

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    ProptestConfig {
        // Failing cases are printed (with the shrunk input); no regression files are written.
        failure_persistence: None,
        ..ProptestConfig::with_cases(cases)
    }
}

const F32_RTOL: f64 = 1e-5;
const F64_RTOL: f64 = 1e-10;
const EXACT_RTOL: f64 = 1e-12;

// ---------------------------------------------------------------------------------------
// Owned inputs
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

    fn get(&self, j: usize) -> f32 {
        match self {
            Lam::Batch(v) => *v,
            Lam::PerRow(v) => v[j],
        }
    }
}

#[derive(Debug, Clone)]
enum Form {
    Dense(Vec<f32>),
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
    fn targets(&self, m: usize, c: usize) -> Targets<'_, f32> {
        match self {
            Form::Dense(d) => Targets::Dense(MatRef::new(d, m, c).unwrap()),
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

    /// The `M × C` matrix the form stands for, built in `f64` from the definitions of
    /// DESIGN §1e (independently of the crate's densification).
    fn densify(&self, m: usize, c: usize) -> Vec<f64> {
        let mut out = vec![0.0f64; m * c];
        for j in 0..m {
            let row = &mut out[j * c..(j + 1) * c];
            match self {
                Form::Dense(d) => {
                    for (o, &v) in row.iter_mut().zip(&d[j * c..(j + 1) * c]) {
                        *o = v as f64;
                    }
                }
                Form::Hard { labels, eps } => {
                    let e = *eps as f64;
                    for (k, o) in row.iter_mut().enumerate() {
                        *o = e / c as f64 + if k == labels[j] as usize { 1.0 - e } else { 0.0 };
                    }
                }
                Form::Mixed { a, b, lambda, eps } => {
                    let (e, l) = (*eps as f64, lambda.get(j) as f64);
                    for (k, o) in row.iter_mut().enumerate() {
                        let on_a = if k == a[j] as usize { l } else { 0.0 };
                        let on_b = if k == b[j] as usize { 1.0 - l } else { 0.0 };
                        *o = (1.0 - e) * (on_a + on_b) + e / c as f64;
                    }
                }
                Form::Sparse {
                    indptr,
                    indices,
                    weights,
                    floor,
                } => {
                    row.fill(floor.get(j) as f64);
                    for k in indptr[j]..indptr[j + 1] {
                        row[indices[k] as usize] += weights[k] as f64;
                    }
                }
            }
        }
        out
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

    fn log_eta(&self, c: usize) -> Vec<f64> {
        match self {
            NoiseSpec::Uniform => vec![-(c as f64).ln(); c],
            NoiseSpec::Probs(p) => p.iter().map(|&v| (v as f64).ln()).collect(),
            NoiseSpec::LogProbs(l) => l.iter().map(|&v| v as f64).collect(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Nce,
    SoftCe,
}

/// One soft InfoNCE or soft cross-entropy call (`M = N` for cross-entropy).
#[derive(Debug, Clone)]
struct Case {
    kind: Kind,
    n: usize,
    m: usize,
    c: usize,
    logits: Vec<f32>,
    form: Form,
    t: f32,
    noise: NoiseSpec,
    offset: usize,
    reduction: Reduction,
    upstream: Vec<f32>,
}

/// What an API call wrote: the returned loss, the row losses and the logit gradient.
#[derive(Debug, Clone)]
struct Api {
    loss: f32,
    rows: Vec<f32>,
    grad: Vec<f32>,
}

fn up_for(reduction: Reduction, upstream: &[f32]) -> Option<&[f32]> {
    (reduction == Reduction::None).then_some(upstream)
}

fn row_scale(reduction: Reduction, n: usize, upstream: &[f32], i: usize) -> f64 {
    match reduction {
        Reduction::Mean => 1.0 / n as f64,
        Reduction::Sum => 1.0,
        Reduction::None => upstream[i] as f64,
    }
}

impl Case {
    fn nce(&self) -> SoftInfoNce<'_> {
        SoftInfoNce::new()
            .temperature(self.t)
            .noise(self.noise.noise())
            .offset(self.offset)
            .reduction(self.reduction)
    }

    fn soft_ce(&self) -> SoftCrossEntropy {
        SoftCrossEntropy::new()
            .temperature(self.t)
            .reduction(self.reduction)
    }

    fn z(&self) -> MatRef<'_, f32> {
        MatRef::new(&self.logits, self.n, self.c).unwrap()
    }

    /// The public API with row losses and the logit gradient requested.
    fn api(&self, targets: &Targets<'_, f32>) -> Api {
        let (n, c) = (self.n, self.c);
        let mut rows = vec![f32::NAN; n];
        let mut grad = vec![f32::NAN; n * c];
        let mut out = Outputs::new()
            .row_losses(&mut rows)
            .grad_logits(MatMut::new(&mut grad, n, c).unwrap());
        if let Some(up) = up_for(self.reduction, &self.upstream) {
            out = out.upstream(up);
        }
        let loss = match self.kind {
            Kind::Nce => self.nce().compute(self.z(), targets, out),
            Kind::SoftCe => self.soft_ce().compute(self.z(), targets, out),
        }
        .unwrap();
        Api { loss, rows, grad }
    }

    fn reference(&self, targets: &Targets<'_, f32>) -> RefOutput {
        let req = Request {
            grad_logits: true,
            grad_targets: false,
            upstream: up_for(self.reduction, &self.upstream),
        };
        match self.kind {
            Kind::Nce => reference::soft_infonce(&self.nce(), self.z(), targets, &req),
            Kind::SoftCe => reference::soft_cross_entropy(&self.soft_ce(), self.z(), targets, &req),
        }
        .unwrap()
    }

    fn log_eta(&self) -> Vec<f64> {
        match self.kind {
            Kind::Nce => self.noise.log_eta(self.c),
            Kind::SoftCe => vec![0.0; self.c],
        }
    }

    fn mags(&self, dense: &[f64]) -> Mags {
        Mags::new(
            self.n,
            self.c,
            &self.logits,
            dense,
            self.t,
            &self.log_eta(),
            self.reduction,
            &self.upstream,
        )
    }
}

/// Natural magnitudes of the outputs of one call (see the module docs).
struct Mags {
    total: f64,
    row: f64,
    grad: Vec<f64>,
}

impl Mags {
    #[allow(clippy::too_many_arguments)]
    fn new(
        n: usize,
        c: usize,
        logits: &[f32],
        dense: &[f64],
        t: f32,
        log_eta: &[f64],
        reduction: Reduction,
        upstream: &[f32],
    ) -> Mags {
        let t = t as f64;
        let zmax = logits.iter().map(|z| (*z as f64).abs()).fold(0.0, f64::max);
        let emax = log_eta.iter().map(|v| v.abs()).fold(0.0, f64::max);
        let mass = dense.chunks(c).map(|r| r.iter().sum::<f64>()).fold(0.0, f64::max);
        let l = (mass * (zmax / t + emax)).max(1.0);
        let total = match reduction {
            Reduction::Mean => l,
            Reduction::Sum | Reduction::None => l * n as f64,
        };
        let grad = (0..n)
            .map(|i| row_scale(reduction, n, upstream, i).abs() * mass / t * l)
            .collect();
        Mags { total, row: l, grad }
    }
}

// ---------------------------------------------------------------------------------------
// Comparison helpers
// ---------------------------------------------------------------------------------------

fn near(what: &str, x: f64, y: f64, rtol: f64, mag: f64) -> Result<(), TestCaseError> {
    let tol = rtol * mag.max(x.abs()).max(y.abs());
    if x == y || (x.is_nan() && y.is_nan()) || (x - y).abs() <= tol {
        Ok(())
    } else {
        Err(TestCaseError::fail(format!(
            "{what}: {x:e} vs {y:e} (difference {:e}, tolerance {tol:e})",
            (x - y).abs()
        )))
    }
}

fn near_rows(what: &str, x: &[f64], y: &[f64], rtol: f64, mag: f64) -> Result<(), TestCaseError> {
    prop_assert_eq!(x.len(), y.len(), "{}: lengths differ", what);
    for (i, (&a, &b)) in x.iter().zip(y).enumerate() {
        near(&format!("{what}[{i}]"), a, b, rtol, mag)?;
    }
    Ok(())
}

/// Gradients `n × c`, row `i` compared at magnitude `mags[i]`.
fn near_grad(
    what: &str,
    x: &[f64],
    y: &[f64],
    c: usize,
    rtol: f64,
    mags: &[f64],
) -> Result<(), TestCaseError> {
    prop_assert_eq!(x.len(), y.len(), "{}: lengths differ", what);
    for (k, (&a, &b)) in x.iter().zip(y).enumerate() {
        near(&format!("{what}[{}, {}]", k / c, k % c), a, b, rtol, mags[k / c])?;
    }
    Ok(())
}

fn wide(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn compare_api(what: &str, a: &Api, b: &Api, c: usize, rtol: f64, m: &Mags) -> Result<(), TestCaseError> {
    near(
        &format!("{what}: loss"),
        a.loss as f64,
        b.loss as f64,
        rtol,
        m.total,
    )?;
    near_rows(
        &format!("{what}: row losses"),
        &wide(&a.rows),
        &wide(&b.rows),
        rtol,
        m.row,
    )?;
    near_grad(
        &format!("{what}: grad"),
        &wide(&a.grad),
        &wide(&b.grad),
        c,
        rtol,
        &m.grad,
    )
}

fn compare_ref(
    what: &str,
    a: &RefOutput,
    b: &RefOutput,
    c: usize,
    rtol: f64,
    m: &Mags,
) -> Result<(), TestCaseError> {
    near(&format!("{what}: loss"), a.loss, b.loss, rtol, m.total)?;
    near_rows(
        &format!("{what}: row losses"),
        &a.row_losses,
        &b.row_losses,
        rtol,
        m.row,
    )?;
    near_grad(
        &format!("{what}: grad"),
        &a.grad_logits,
        &b.grad_logits,
        c,
        rtol,
        &m.grad,
    )
}

/// `f64` values rounded to `f32`; with `exact`, asserts that no rounding happened.
fn to_f32(v: &[f64], exact: bool) -> Result<Vec<f32>, TestCaseError> {
    let out: Vec<f32> = v.iter().map(|&x| x as f32).collect();
    if exact {
        for (&a, &b) in v.iter().zip(&out) {
            prop_assert_eq!(a, b as f64, "test setup: value is not exact in f32");
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------

const EDGE_CLASSES: [usize; 8] = [1, 2, 7, 8, 9, 15, 16, 17];

fn classes() -> BoxedStrategy<usize> {
    prop_oneof![3 => prop::sample::select(EDGE_CLASSES.to_vec()), 1 => 1usize..=20].boxed()
}

/// `(N, M, C)` with `1 ≤ N ≤ M ≤ 12`.
fn shape() -> impl Strategy<Value = (usize, usize, usize)> {
    (1usize..=12, 1usize..=12, classes()).prop_map(|(a, b, c)| (a.min(b), a.max(b), c))
}

fn logit() -> impl Strategy<Value = f32> {
    -3.0f32..3.0
}

/// A multiple of 1/64 in `[-3, 3]` (products with 1/16-multiples stay exact in `f32`).
fn dyadic_logit() -> impl Strategy<Value = f32> {
    (-192i32..=192).prop_map(|k| k as f32 / 64.0)
}

/// A value in `[0, 1]`: arbitrary (with 0 and 1 often), or (exact) a multiple of 1/16.
fn unit(exact: bool) -> BoxedStrategy<f32> {
    if exact {
        prop_oneof![
            Just(0.0f32),
            Just(1.0f32),
            (0u32..=16).prop_map(|k| k as f32 / 16.0)
        ]
        .boxed()
    } else {
        prop_oneof![Just(0.0f32), Just(1.0f32), 0.0f32..=1.0].boxed()
    }
}

/// Smoothing `ε`: arbitrary in `[0, 1]` with 0 and 1 often; or (exact) `C·j/64` so that
/// `ε/C`, `1 − ε` and their products with 1/16-multiples are exact in `f32`.
fn smoothing(c: usize, exact: bool) -> BoxedStrategy<f32> {
    if exact {
        let jmax = 64 / c;
        let v = move |j: usize| (c * j) as f32 / 64.0;
        prop_oneof![Just(0.0f32), Just(v(jmax)), (0..=jmax).prop_map(v)].boxed()
    } else {
        unit(false)
    }
}

fn weight(exact: bool) -> BoxedStrategy<f32> {
    if exact {
        (0u32..=64).prop_map(|k| k as f32 / 64.0).boxed()
    } else {
        prop_oneof![1 => Just(0.0f32), 4 => 0.0f32..1.0].boxed()
    }
}

fn floor_value(exact: bool) -> BoxedStrategy<f32> {
    if exact {
        prop_oneof![Just(0.0f32), (0u32..=32).prop_map(|k| k as f32 / 256.0)].boxed()
    } else {
        prop_oneof![Just(0.0f32), 0.0f32..0.1].boxed()
    }
}

fn lam(m: usize, value: BoxedStrategy<f32>) -> BoxedStrategy<Lam> {
    prop_oneof![
        value.clone().prop_map(Lam::Batch),
        vec(value, m).prop_map(Lam::PerRow)
    ]
    .boxed()
}

fn labels(m: usize, c: usize) -> impl Strategy<Value = Vec<u32>> {
    vec(0..c as u32, m)
}

fn hard_form(m: usize, c: usize, exact: bool) -> BoxedStrategy<Form> {
    (labels(m, c), smoothing(c, exact))
        .prop_map(|(labels, eps)| Form::Hard { labels, eps })
        .boxed()
}

fn mixed_form(m: usize, c: usize, exact: bool) -> BoxedStrategy<Form> {
    (
        labels(m, c),
        labels(m, c),
        any::<bool>(),
        lam(m, unit(exact)),
        smoothing(c, exact),
    )
        .prop_map(|(a, b, same, lambda, eps)| Form::Mixed {
            b: if same { a.clone() } else { b },
            a,
            lambda,
            eps,
        })
        .boxed()
}

/// CSR rows of 0..=4 entries (empty rows included), a repeated class in some rows, and a
/// batch or per-row floor.
fn sparse_form(m: usize, c: usize, exact: bool) -> BoxedStrategy<Form> {
    let row = (vec((0..c as u32, weight(exact)), 0..=4), any::<bool>()).prop_map(|(mut e, dup)| {
        if dup && !e.is_empty() {
            let (class, w) = (e[0].0, e[e.len() - 1].1);
            e.push((class, w));
        }
        e
    });
    (vec(row, m), lam(m, floor_value(exact)))
        .prop_map(|(rows, floor)| {
            let mut indptr = vec![0usize];
            let (mut indices, mut weights) = (Vec::new(), Vec::new());
            for r in rows {
                for (k, w) in r {
                    indices.push(k);
                    weights.push(w);
                }
                indptr.push(indices.len());
            }
            Form::Sparse {
                indptr,
                indices,
                weights,
                floor,
            }
        })
        .boxed()
}

/// Dense non-negative, unnormalised rows with exact zeros.
fn dense_form(m: usize, c: usize) -> BoxedStrategy<Form> {
    vec(prop_oneof![1 => Just(0.0f32), 3 => 0.0f32..1.0], m * c)
        .prop_map(Form::Dense)
        .boxed()
}

fn structured_form(m: usize, c: usize, exact: bool) -> BoxedStrategy<Form> {
    prop_oneof![
        hard_form(m, c, exact),
        mixed_form(m, c, exact),
        sparse_form(m, c, exact)
    ]
    .boxed()
}

fn any_form(m: usize, c: usize) -> BoxedStrategy<Form> {
    prop_oneof![1 => dense_form(m, c), 3 => structured_form(m, c, false)].boxed()
}

fn noise(c: usize) -> BoxedStrategy<NoiseSpec> {
    prop_oneof![
        Just(NoiseSpec::Uniform),
        vec(0.05f32..2.0, c).prop_map(NoiseSpec::Probs),
        vec(-3.0f32..1.0, c).prop_map(NoiseSpec::LogProbs),
    ]
    .boxed()
}

/// Log-probabilities that are multiples of 1/32 in `[-3, 1]`.
fn dyadic_log_noise(c: usize) -> BoxedStrategy<Vec<f32>> {
    vec((-96i32..=32).prop_map(|k| k as f32 / 32.0), c).boxed()
}

fn reduction() -> impl Strategy<Value = Reduction> {
    prop::sample::select(vec![Reduction::Mean, Reduction::Sum, Reduction::None])
}

/// An upstream vector with zeros, negatives and positives.
fn upstream(n: usize) -> impl Strategy<Value = Vec<f32>> {
    vec(prop_oneof![1 => Just(0.0f32), 4 => -2.0f32..2.0], n)
}

/// A soft InfoNCE or soft CE case; `forms` picks the target form for `(M, C)`.
fn case_with(forms: fn(usize, usize) -> BoxedStrategy<Form>) -> impl Strategy<Value = Case> {
    (shape(), any::<bool>()).prop_flat_map(move |((n, m, c), is_nce)| {
        let (kind, m) = if is_nce { (Kind::Nce, m) } else { (Kind::SoftCe, n) };
        (
            vec(logit(), n * c),
            forms(m, c),
            0.5f32..2.0,
            noise(c),
            0..=m - n,
            reduction(),
            upstream(n),
        )
            .prop_map(
                move |(logits, form, t, noise, offset, reduction, upstream)| Case {
                    kind,
                    n,
                    m,
                    c,
                    logits,
                    form,
                    t,
                    noise,
                    offset,
                    reduction,
                    upstream,
                },
            )
    })
}

fn structured_case() -> impl Strategy<Value = Case> {
    case_with(|m, c| structured_form(m, c, false))
}

fn exact_structured_case() -> impl Strategy<Value = Case> {
    case_with(|m, c| structured_form(m, c, true))
}

fn general_case() -> impl Strategy<Value = Case> {
    case_with(any_form)
}

/// A hard cross-entropy case. `ignore_mode`: 0 none, 1 `u32::MAX` (out of range), 2 an
/// in-range class (every row with that label is ignored).
#[derive(Debug, Clone)]
struct HardCase {
    n: usize,
    c: usize,
    logits: Vec<f32>,
    labels: Vec<u32>,
    ignore: Option<u32>,
    eps: f32,
    t: f32,
    reduction: Reduction,
    upstream: Vec<f32>,
}

impl HardCase {
    fn cfg(&self) -> HardCrossEntropy {
        HardCrossEntropy::new()
            .temperature(self.t)
            .smoothing(self.eps)
            .ignore_index(self.ignore)
            .reduction(self.reduction)
    }

    fn ignored(&self, i: usize) -> bool {
        self.ignore == Some(self.labels[i])
    }

    fn count(&self) -> usize {
        (0..self.n).filter(|&i| !self.ignored(i)).count()
    }

    fn api(&self) -> Api {
        let (n, c) = (self.n, self.c);
        let mut rows = vec![f32::NAN; n];
        let mut grad = vec![f32::NAN; n * c];
        let mut out = Outputs::new()
            .row_losses(&mut rows)
            .grad_logits(MatMut::new(&mut grad, n, c).unwrap());
        if let Some(up) = up_for(self.reduction, &self.upstream) {
            out = out.upstream(up);
        }
        let loss = self
            .cfg()
            .compute(MatRef::new(&self.logits, n, c).unwrap(), &self.labels, out)
            .unwrap();
        Api { loss, rows, grad }
    }

    fn reference(&self) -> RefOutput {
        let req = Request {
            grad_logits: true,
            grad_targets: false,
            upstream: up_for(self.reduction, &self.upstream),
        };
        reference::hard_cross_entropy(
            &self.cfg(),
            MatRef::new(&self.logits, self.n, self.c).unwrap(),
            &self.labels,
            &req,
        )
        .unwrap()
    }

    /// The densified targets: `(1 − ε)e_y + ε/C`, a zero row for ignored rows.
    fn densify(&self) -> Vec<f64> {
        let (n, c) = (self.n, self.c);
        let e = self.eps as f64;
        let mut out = vec![0.0; n * c];
        for i in (0..n).filter(|&i| !self.ignored(i)) {
            for k in 0..c {
                out[i * c + k] = e / c as f64
                    + if k == self.labels[i] as usize {
                        1.0 - e
                    } else {
                        0.0
                    };
            }
        }
        out
    }

    fn mags(&self) -> Mags {
        let dense = self.densify();
        let mut m = Mags::new(
            self.n,
            self.c,
            &self.logits,
            &dense,
            self.t,
            &[],
            self.reduction,
            &self.upstream,
        );
        if self.reduction == Reduction::Mean {
            // Hard CE divides by the non-ignored count, not by N.
            let k = self.n as f64 / self.count().max(1) as f64;
            m.grad.iter_mut().for_each(|g| *g *= k);
        }
        m
    }
}

fn hard_case(exact_eps: bool) -> impl Strategy<Value = HardCase> {
    (1usize..=12, classes()).prop_flat_map(move |(n, c)| {
        (
            vec(logit(), n * c),
            vec((0..c as u32, prop::bool::weighted(0.25)), n),
            0u8..3,
            0..c as u32,
            smoothing(c, exact_eps),
            0.5f32..2.0,
            reduction(),
            upstream(n),
        )
            .prop_map(move |(logits, raw, mode, k, eps, t, reduction, upstream)| {
                let ignore = match mode {
                    0 => None,
                    1 => Some(u32::MAX),
                    _ => Some(k),
                };
                let labels = raw
                    .iter()
                    .map(|&(y, flagged)| match (ignore, flagged) {
                        (Some(ig), true) => ig,
                        _ => y,
                    })
                    .collect();
                HardCase {
                    n,
                    c,
                    logits,
                    labels,
                    ignore,
                    eps,
                    t,
                    reduction,
                    upstream,
                }
            })
    })
}

// ---------------------------------------------------------------------------------------
// 1. Structured target forms equal their dense rows
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    /// Public API (f32): a structured form and the dense matrix holding its values (built in
    /// the test from DESIGN §1e, rounded to f32) give the same loss, row losses and gradient.
    #[test]
    fn structured_form_matches_dense_api(case in structured_case()) {
        let dense = case.form.densify(case.m, case.c);
        let dense32 = to_f32(&dense, false)?;
        let structured = case.api(&case.form.targets(case.m, case.c));
        let densed = case.api(&Targets::Dense(MatRef::new(&dense32, case.m, case.c).unwrap()));
        compare_api("structured vs dense (API)", &structured, &densed, case.c, F32_RTOL, &case.mags(&dense))?;
    }

    /// Reference (f64): with parameters chosen so that every densified value is exact in f32
    /// (dyadic ε, λ, weights, floors), the structured and dense forms agree to f64 precision.
    #[test]
    fn structured_form_matches_dense_reference(case in exact_structured_case()) {
        let dense = case.form.densify(case.m, case.c);
        let dense32 = to_f32(&dense, true)?;
        let structured = case.reference(&case.form.targets(case.m, case.c));
        let densed = case.reference(&Targets::Dense(MatRef::new(&dense32, case.m, case.c).unwrap()));
        compare_ref("structured vs dense (reference)", &structured, &densed, case.c, EXACT_RTOL, &case.mags(&dense))?;
        // The exact f32 data also reaches the API unchanged.
        let a = case.api(&case.form.targets(case.m, case.c));
        let b = case.api(&Targets::Dense(MatRef::new(&dense32, case.m, case.c).unwrap()));
        compare_api("structured vs dense, exact data (API)", &a, &b, case.c, F32_RTOL, &case.mags(&dense))?;
    }

    /// Hard cross-entropy (smoothing, ignored rows) equals soft cross-entropy against the
    /// densified targets `(1 − ε)e_y + ε/C` with zero rows for ignored rows: `Sum` and row
    /// losses directly, hard `Mean` as the soft `Sum` over the non-ignored count.
    #[test]
    fn hard_ce_matches_soft_ce_on_dense_targets(hc in hard_case(true)) {
        let (n, c) = (hc.n, hc.c);
        let dense = hc.densify();
        let dense32 = to_f32(&dense, true)?;
        let soft_reduction = if hc.reduction == Reduction::None { Reduction::None } else { Reduction::Sum };
        let soft = Case {
            kind: Kind::SoftCe,
            n,
            m: n,
            c,
            logits: hc.logits.clone(),
            form: Form::Dense(dense32.clone()),
            t: hc.t,
            noise: NoiseSpec::Uniform,
            offset: 0,
            reduction: soft_reduction,
            upstream: hc.upstream.clone(),
        };
        let targets = soft.form.targets(n, c);
        let mags = hc.mags();
        let count = hc.count();
        // Hard Mean = soft Sum / count (NaN loss and a zero gradient when every row is ignored).
        let div = if hc.reduction == Reduction::Mean { count as f64 } else { 1.0 };
        let r_soft = soft.reference(&targets);
        let r_hard = hc.reference();
        let expected = RefOutput {
            loss: r_soft.loss / div,
            row_losses: r_soft.row_losses.clone(),
            grad_logits: if count == 0 {
                vec![0.0; n * c]
            } else {
                r_soft.grad_logits.iter().map(|g| g / div).collect()
            },
            grad_targets: Vec::new(),
        };
        compare_ref("hard CE vs soft CE (reference)", &r_hard, &expected, c, F64_RTOL, &mags)?;

        let a_soft = soft.api(&targets);
        let a_hard = hc.api();
        let expected = Api {
            loss: (a_soft.loss as f64 / div) as f32,
            rows: a_soft.rows.clone(),
            grad: if count == 0 {
                vec![0.0; n * c]
            } else {
                a_soft.grad.iter().map(|&g| (g as f64 / div) as f32).collect()
            },
        };
        compare_api("hard CE vs soft CE (API)", &a_hard, &expected, c, F32_RTOL, &mags)?;
    }
}

// ---------------------------------------------------------------------------------------
// 2. Label-smoothing invariance (DESIGN §1a)
// ---------------------------------------------------------------------------------------

/// Dense targets that are multiples of 1/1024 with row mass ≤ 2, and a shift `u` (multiple of
/// 1/1024, ≤ 1/C·1): `A + u` is exact in `f32`.
fn shift_case() -> impl Strategy<Value = (Case, f32)> {
    shape().prop_flat_map(|(n, m, c)| {
        let kmax = (2048 / c) as u32;
        let umax = (1024 / c) as u32;
        (
            vec(logit(), n * c),
            vec(prop_oneof![1 => Just(0u32), 3 => 0..=kmax], m * c),
            prop_oneof![Just(0u32), 1..=umax],
            0.5f32..2.0,
            noise(c),
            0..=m - n,
            reduction(),
            upstream(n),
        )
            .prop_map(move |(logits, ks, u, t, noise, offset, reduction, upstream)| {
                let form = Form::Dense(ks.iter().map(|&k| k as f32 / 1024.0).collect());
                let case = Case {
                    kind: Kind::Nce,
                    n,
                    m,
                    c,
                    logits,
                    form,
                    t,
                    noise,
                    offset,
                    reduction,
                    upstream,
                };
                (case, u as f32 / 1024.0)
            })
    })
}

/// The smoothing identity: `forms(ε)` with logits `z` and log-noise `le` against the
/// unsmoothed forms with logits `(1 − ε)·z` and log-noise `(1 − ε)·le`. Every scaled value is
/// exact in f32 (dyadic inputs).
#[derive(Debug, Clone)]
struct SmoothCase {
    base: Case,
    eps: f32,
    smoothed: Form,
    plain: Form,
}

fn smooth_case() -> impl Strategy<Value = SmoothCase> {
    (shape(), 0usize..4).prop_flat_map(|((n, m, c), which)| {
        let eps = prop_oneof![
            Just(0.0f32),
            Just(1.0f32),
            (0u32..=16).prop_map(|k| k as f32 / 16.0)
        ];
        let forms = (
            labels(m, c),
            labels(m, c),
            lam(m, unit(true)),
            vec((0..=64u32).prop_map(|k| k as f32 / 64.0), m * c),
            sparse_form(m, c, true),
            0.0f32..0.5,
        );
        (
            vec(dyadic_logit(), n * c),
            eps,
            forms,
            prop::sample::select(vec![0.5f32, 0.75, 1.0, 1.25, 2.0]),
            dyadic_log_noise(c),
            0..=m - n,
            reduction(),
            upstream(n),
        )
            .prop_map(move |(logits, eps, forms, t, le, offset, reduction, upstream)| {
                let (a, b, lambda, dense_k, sparse, u) = forms;
                let keep = 1.0 - eps; // a multiple of 1/16
                let (smoothed, plain) = match which {
                    0 => (
                        Form::Hard {
                            labels: a.clone(),
                            eps,
                        },
                        Form::Hard { labels: a, eps: 0.0 },
                    ),
                    1 => (
                        Form::Mixed {
                            a: a.clone(),
                            b: b.clone(),
                            lambda: lambda.clone(),
                            eps,
                        },
                        Form::Mixed {
                            a,
                            b,
                            lambda,
                            eps: 0.0,
                        },
                    ),
                    2 => {
                        // (1 − ε)·A + u with any constant u: rounded to 1/1024 so the sum is exact.
                        let u = (u * 1024.0).round() / 1024.0;
                        let s = dense_k.iter().map(|&v| keep * v + u).collect();
                        (Form::Dense(s), Form::Dense(dense_k))
                    }
                    _ => match sparse {
                        Form::Sparse {
                            indptr,
                            indices,
                            weights,
                            ..
                        } => {
                            // A batch floor is a constant shift; any value works (here not dyadic).
                            let scaled = weights.iter().map(|&w| keep * w).collect();
                            (
                                Form::Sparse {
                                    indptr: indptr.clone(),
                                    indices: indices.clone(),
                                    weights: scaled,
                                    floor: Lam::Batch(u),
                                },
                                Form::Sparse {
                                    indptr,
                                    indices,
                                    weights,
                                    floor: Lam::Batch(0.0),
                                },
                            )
                        }
                        _ => unreachable!(),
                    },
                };
                let base = Case {
                    kind: Kind::Nce,
                    n,
                    m,
                    c,
                    logits,
                    form: smoothed.clone(),
                    t,
                    noise: NoiseSpec::LogProbs(le),
                    offset,
                    reduction,
                    upstream,
                };
                SmoothCase {
                    base,
                    eps,
                    smoothed,
                    plain,
                }
            })
    })
}

proptest! {
    #![proptest_config(config())]

    /// Adding the same `u` to every entry of every target row leaves InfoNCE's row losses and
    /// dL/dz unchanged.
    #[test]
    fn infonce_target_shift_invariance((case, u) in shift_case()) {
        let (m, c) = (case.m, case.c);
        let Form::Dense(a) = &case.form else { unreachable!() };
        let shifted: Vec<f32> = a.iter().map(|&v| v + u).collect();
        for (&x, &y) in a.iter().zip(&shifted) {
            prop_assert_eq!((y - u) as f64, x as f64, "test setup: shift is not exact");
        }
        let mut dense = case.form.densify(m, c);
        dense.iter_mut().for_each(|v| *v += u as f64);
        let mags = case.mags(&dense);
        let t0 = Targets::Dense(MatRef::new(a, m, c).unwrap());
        let t1 = Targets::Dense(MatRef::new(&shifted, m, c).unwrap());
        compare_ref("shifted targets (reference)", &case.reference(&t0), &case.reference(&t1), c, F64_RTOL, &mags)?;
        compare_api("shifted targets (API)", &case.api(&t0), &case.api(&t1), c, F32_RTOL, &mags)?;
    }

    /// Smoothing `(1 − ε)·a + ε/C` (and, more generally, `(1 − ε)·a + u`) equals the unsmoothed
    /// loss with `z/t` and `log η` scaled by `1 − ε`; dL/dz of the smoothed loss is `(1 − ε)`
    /// times the gradient with respect to the scaled logits.
    #[test]
    fn infonce_smoothing_equals_scaled_logits(sc in smooth_case()) {
        let case = &sc.base;
        let (m, c) = (case.m, case.c);
        let keep = 1.0 - sc.eps;
        let NoiseSpec::LogProbs(le) = &case.noise else { unreachable!() };
        let scaled = Case {
            logits: to_f32(&case.logits.iter().map(|&z| (keep * z) as f64).collect::<Vec<_>>(), true)?,
            noise: NoiseSpec::LogProbs(le.iter().map(|&v| keep * v).collect()),
            form: sc.plain.clone(),
            ..case.clone()
        };
        // Exactness of the scaled inputs (dyadic values with few bits).
        for (&z, &s) in case.logits.iter().zip(&scaled.logits) {
            prop_assert_eq!(s as f64, keep as f64 * z as f64);
        }
        if let NoiseSpec::LogProbs(ls) = &scaled.noise {
            for (&v, &s) in le.iter().zip(ls) {
                prop_assert_eq!(s as f64, keep as f64 * v as f64);
            }
        }
        let mags = case.mags(&sc.smoothed.densify(m, c));

        let r_s = case.reference(&sc.smoothed.targets(m, c));
        let mut r_p = scaled.reference(&sc.plain.targets(m, c));
        r_p.grad_logits.iter_mut().for_each(|g| *g *= keep as f64);
        compare_ref("smoothed vs scaled (reference)", &r_s, &r_p, c, F64_RTOL, &mags)?;

        let a_s = case.api(&sc.smoothed.targets(m, c));
        let mut a_p = scaled.api(&sc.plain.targets(m, c));
        a_p.grad.iter_mut().for_each(|g| *g *= keep);
        compare_api("smoothed vs scaled (API)", &a_s, &a_p, c, F32_RTOL, &mags)?;
    }

    /// Uniform label smoothing through `Noise::Uniform` in the API (log η = −ln C is rounded
    /// to f32 for the scaled side, hence f32 tolerance only).
    #[test]
    fn infonce_smoothing_equals_scaled_logits_uniform_noise(sc in smooth_case()) {
        let case = Case { noise: NoiseSpec::Uniform, ..sc.base.clone() };
        let (m, c) = (case.m, case.c);
        let keep = 1.0 - sc.eps;
        let scaled = Case {
            logits: case.logits.iter().map(|&z| keep * z).collect(),
            noise: NoiseSpec::LogProbs(vec![(keep as f64 * -(c as f64).ln()) as f32; c]),
            form: sc.plain.clone(),
            ..case.clone()
        };
        let mags = case.mags(&sc.smoothed.densify(m, c));
        let a_s = case.api(&sc.smoothed.targets(m, c));
        let mut a_p = scaled.api(&sc.plain.targets(m, c));
        a_p.grad.iter_mut().for_each(|g| *g *= keep);
        compare_api("smoothed vs scaled, uniform η (API)", &a_s, &a_p, c, F32_RTOL, &mags)?;
    }
}

// ---------------------------------------------------------------------------------------
// 3. Uniform η cancels when every target row has the same mass
// ---------------------------------------------------------------------------------------

/// Targets whose rows all have the same mass: Hard / Mixed (mass 1), dense rows that share
/// `K` units of 1/64, sparse rows that share `K` units plus a batch floor.
fn equal_mass_form(m: usize, c: usize) -> BoxedStrategy<Form> {
    let units = 1usize..=96;
    let dense = (units.clone(), vec(vec(0..c, 96), m))
        .prop_map(move |(k, picks)| {
            let mut d = vec![0.0f32; m * c];
            for (j, row) in picks.iter().enumerate() {
                for &class in &row[..k] {
                    d[j * c + class] += 1.0 / 64.0;
                }
            }
            Form::Dense(d)
        })
        .boxed();
    let sparse = (
        units,
        vec((vec(0..c as u32, 4), 0usize..4), m),
        floor_value(false),
    )
        .prop_map(move |(k, rows, floor)| {
            // Row j splits k/64 over up to 4 entries (classes may repeat).
            let mut indptr = vec![0usize];
            let (mut indices, mut weights) = (Vec::new(), Vec::new());
            for (classes, cut) in rows {
                let parts = cut + 1;
                let mut left = k;
                for (p, &cl) in classes.iter().take(parts).enumerate() {
                    let share = if p + 1 == parts { left } else { left / 2 };
                    left -= share;
                    indices.push(cl);
                    weights.push(share as f32 / 64.0);
                }
                indptr.push(indices.len());
            }
            Form::Sparse {
                indptr,
                indices,
                weights,
                floor: Lam::Batch(floor),
            }
        })
        .boxed();
    prop_oneof![hard_form(m, c, false), mixed_form(m, c, false), dense, sparse].boxed()
}

fn uniform_noise_case() -> impl Strategy<Value = (Case, NoiseSpec)> {
    (shape(), any::<bool>()).prop_flat_map(|((n, m, c), log)| {
        let constant = if log {
            (-5.0f32..3.0)
                .prop_map(move |v| NoiseSpec::LogProbs(vec![v; c]))
                .boxed()
        } else {
            prop_oneof![Just(0.37f32), 0.01f32..10.0]
                .prop_map(move |v| NoiseSpec::Probs(vec![v; c]))
                .boxed()
        };
        (
            vec(logit(), n * c),
            equal_mass_form(m, c),
            0.5f32..2.0,
            constant,
            0..=m - n,
            reduction(),
            upstream(n),
        )
            .prop_map(move |(logits, form, t, constant, offset, reduction, upstream)| {
                let case = Case {
                    kind: Kind::Nce,
                    n,
                    m,
                    c,
                    logits,
                    form,
                    t,
                    noise: NoiseSpec::Uniform,
                    offset,
                    reduction,
                    upstream,
                };
                (case, constant)
            })
    })
}

proptest! {
    #![proptest_config(config())]

    /// A constant η (any value, as probabilities or log-probabilities) gives the same result
    /// as `Noise::Uniform` when every target row has the same mass.
    #[test]
    fn infonce_constant_noise_equals_uniform((case, constant) in uniform_noise_case()) {
        let (m, c) = (case.m, case.c);
        let dense = case.form.densify(m, c);
        let masses: Vec<f64> = dense.chunks(c).map(|r| r.iter().sum()).collect();
        for &s in &masses {
            prop_assert!((s - masses[0]).abs() <= 1e-12, "test setup: row masses differ: {:?}", masses);
        }
        let other = Case { noise: constant.clone(), ..case.clone() };
        let targets = case.form.targets(m, c);
        let mags = other.mags(&dense);
        compare_ref("constant η vs uniform (reference)", &case.reference(&targets), &other.reference(&targets), c, F64_RTOL, &mags)?;
        compare_api("constant η vs uniform (API)", &case.api(&targets), &other.api(&targets), c, F32_RTOL, &mags)?;
    }
}

// ---------------------------------------------------------------------------------------
// 4. One-hot targets covering every class once: InfoNCE = cross-entropy shifted by −t·log η
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
struct PermCase {
    case: Case,
    perm: Vec<u32>,
    dense_one_hot: bool,
    exact: bool,
}

fn perm_case() -> impl Strategy<Value = PermCase> {
    (classes(), 1usize..=12, 0usize..3).prop_flat_map(|(c, n0, noise_kind)| {
        let n = n0.min(c);
        let exact = noise_kind == 0;
        let noise = match noise_kind {
            0 => dyadic_log_noise(c).prop_map(NoiseSpec::LogProbs).boxed(),
            1 => Just(NoiseSpec::Uniform).boxed(),
            _ => vec(0.05f32..2.0, c).prop_map(NoiseSpec::Probs).boxed(),
        };
        (
            vec(dyadic_logit(), n * c),
            Just((0..c as u32).collect::<Vec<u32>>()).prop_shuffle(),
            any::<bool>(),
            prop::sample::select(vec![0.25f32, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0]),
            noise,
            0..=c - n,
            reduction(),
            upstream(n),
        )
            .prop_map(
                move |(logits, perm, dense_one_hot, t, noise, offset, reduction, upstream)| {
                    let form = if dense_one_hot {
                        let mut d = vec![0.0f32; c * c];
                        for (j, &y) in perm.iter().enumerate() {
                            d[j * c + y as usize] = 1.0;
                        }
                        Form::Dense(d)
                    } else {
                        Form::Hard {
                            labels: perm.clone(),
                            eps: 0.0,
                        }
                    };
                    let case = Case {
                        kind: Kind::Nce,
                        n,
                        m: c,
                        c,
                        logits,
                        form,
                        t,
                        noise,
                        offset,
                        reduction,
                        upstream,
                    };
                    PermCase {
                        case,
                        perm,
                        dense_one_hot,
                        exact,
                    }
                },
            )
    })
}

proptest! {
    #![proptest_config(config())]

    /// M = C one-hot targets whose labels are a permutation of the classes: InfoNCE equals hard
    /// cross-entropy with label `perm[p0 + i]` on logits `z_ic − t·log η_c`, loss and gradient.
    #[test]
    fn infonce_permutation_targets_equal_cross_entropy(pc in perm_case()) {
        let case = &pc.case;
        let (n, c) = (case.n, case.c);
        let t = case.t as f64;
        let le = case.noise.log_eta(c);
        let shifted: Vec<f64> = (0..n * c).map(|k| case.logits[k] as f64 - t * le[k % c]).collect();
        let hc = HardCase {
            n,
            c,
            logits: to_f32(&shifted, pc.exact)?,
            labels: (0..n).map(|i| pc.perm[case.offset + i]).collect(),
            ignore: None,
            eps: 0.0,
            t: case.t,
            reduction: case.reduction,
            upstream: case.upstream.clone(),
        };
        let targets = case.form.targets(case.m, c);
        let mags = case.mags(&case.form.densify(case.m, c));
        let (rtol_ref, what) = if pc.exact { (F64_RTOL, "exact") } else { (F32_RTOL, "rounded shift") };
        compare_ref(
            &format!("InfoNCE (dense {}) vs CE, {what} (reference)", pc.dense_one_hot),
            &case.reference(&targets),
            &hc.reference(),
            c,
            rtol_ref,
            &mags,
        )?;
        compare_api(
            &format!("InfoNCE (dense {}) vs CE, {what} (API)", pc.dense_one_hot),
            &case.api(&targets),
            &hc.api(),
            c,
            F32_RTOL,
            &mags,
        )?;
    }
}

// ---------------------------------------------------------------------------------------
// 5. Reductions
// ---------------------------------------------------------------------------------------

/// Runs `case` under another reduction; `None` gets an upstream vector of ones.
fn with_reduction(case: &Case, r: Reduction) -> Case {
    Case {
        reduction: r,
        upstream: vec![1.0; case.n],
        ..case.clone()
    }
}

fn hard_with_reduction(hc: &HardCase, r: Reduction) -> HardCase {
    HardCase {
        reduction: r,
        upstream: vec![1.0; hc.n],
        ..hc.clone()
    }
}

/// `None` rows sum to `Sum` (and to `None`'s returned total), `Mean = Sum / count`, `None`
/// with upstream ones gives the `Sum` gradient, and the `Mean` gradient is the `Sum` gradient
/// over `count`. `count` is `N`, or the non-ignored rows for hard CE (all ignored: NaN mean,
/// zero gradient).
fn check_reductions(
    what: &str,
    none: &Api,
    sum: &Api,
    mean: &Api,
    count: usize,
    c: usize,
    m: &Mags,
) -> Result<(), TestCaseError> {
    let row_sum: f64 = none.rows.iter().map(|&x| x as f64).sum();
    near(
        &format!("{what}: Σ None rows vs Sum"),
        row_sum,
        sum.loss as f64,
        F32_RTOL,
        m.total,
    )?;
    near(
        &format!("{what}: None total vs Sum"),
        none.loss as f64,
        sum.loss as f64,
        F32_RTOL,
        m.total,
    )?;
    near_rows(
        &format!("{what}: row losses of None vs Sum"),
        &wide(&none.rows),
        &wide(&sum.rows),
        F32_RTOL,
        m.row,
    )?;
    near_rows(
        &format!("{what}: row losses of Mean vs Sum"),
        &wide(&mean.rows),
        &wide(&sum.rows),
        F32_RTOL,
        m.row,
    )?;
    near_grad(
        &format!("{what}: None (upstream 1) vs Sum gradient"),
        &wide(&none.grad),
        &wide(&sum.grad),
        c,
        F32_RTOL,
        &m.grad,
    )?;
    if count == 0 {
        prop_assert!(
            mean.loss.is_nan(),
            "{}: Mean over zero rows should be NaN, got {}",
            what,
            mean.loss
        );
        prop_assert!(
            mean.grad.iter().all(|&g| g == 0.0),
            "{}: Mean gradient with every row ignored: {:?}",
            what,
            mean.grad
        );
    } else {
        let k = count as f64;
        near(
            &format!("{what}: Mean vs Sum / count"),
            mean.loss as f64,
            sum.loss as f64 / k,
            F32_RTOL,
            m.total / k,
        )?;
        let scaled: Vec<f64> = sum.grad.iter().map(|&g| g as f64 / k).collect();
        let gm: Vec<f64> = m.grad.iter().map(|g| g / k).collect();
        near_grad(
            &format!("{what}: Mean vs Sum gradient / count"),
            &wide(&mean.grad),
            &scaled,
            c,
            F32_RTOL,
            &gm,
        )?;
    }
    Ok(())
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn reductions_are_consistent(case in general_case()) {
        let targets = case.form.targets(case.m, case.c);
        let sum_case = with_reduction(&case, Reduction::Sum);
        let mags = sum_case.mags(&case.form.densify(case.m, case.c));
        let none = with_reduction(&case, Reduction::None).api(&targets);
        let sum = sum_case.api(&targets);
        let mean = with_reduction(&case, Reduction::Mean).api(&targets);
        check_reductions(&format!("{:?}", case.kind), &none, &sum, &mean, case.n, case.c, &mags)?;
    }

    #[test]
    fn hard_ce_reductions_are_consistent(hc in hard_case(false)) {
        let sum_case = hard_with_reduction(&hc, Reduction::Sum);
        let mags = sum_case.mags();
        let none = hard_with_reduction(&hc, Reduction::None).api();
        let sum = sum_case.api();
        let mean = hard_with_reduction(&hc, Reduction::Mean).api();
        check_reductions("hard CE", &none, &sum, &mean, hc.count(), hc.c, &mags)?;
        for i in (0..hc.n).filter(|&i| hc.ignored(i)) {
            prop_assert_eq!(none.rows[i], 0.0, "ignored row {} has a loss", i);
            prop_assert!(none.grad[i * hc.c..(i + 1) * hc.c].iter().all(|&g| g == 0.0), "ignored row {} has a gradient", i);
        }
    }
}

// ---------------------------------------------------------------------------------------
// 6. Strided views
// ---------------------------------------------------------------------------------------

const SENTINEL: f32 = 7.0;

/// `rows × cols` values laid out with `stride`, padding filled with `pad`; the buffer ends
/// right after the last row's `cols` elements (the shortest valid buffer).
fn strided(v: &[f32], rows: usize, cols: usize, stride: usize, pad: f32) -> Vec<f32> {
    let len = if rows == 0 { 0 } else { (rows - 1) * stride + cols };
    let mut out = vec![pad; len];
    for i in 0..rows {
        out[i * stride..i * stride + cols].copy_from_slice(&v[i * cols..(i + 1) * cols]);
    }
    out
}

/// The `cols` leading values of each row; asserts every padding element is still `SENTINEL`.
fn unstride(buf: &[f32], rows: usize, cols: usize, stride: usize) -> Result<Vec<f32>, TestCaseError> {
    let mut out = Vec::with_capacity(rows * cols);
    for (k, &x) in buf.iter().enumerate() {
        if k % stride < cols && k / stride < rows {
            out.push(x);
        } else {
            prop_assert!(
                x.to_bits() == SENTINEL.to_bits(),
                "padding element {} was written: {}",
                k,
                x
            );
        }
    }
    Ok(out)
}

#[derive(Debug, Clone)]
enum AnyCase {
    Soft(Case),
    Hard(HardCase),
}

fn any_case() -> impl Strategy<Value = AnyCase> {
    prop_oneof![2 => general_case().prop_map(AnyCase::Soft), 1 => hard_case(false).prop_map(AnyCase::Hard)]
}

proptest! {
    #![proptest_config(config())]

    /// Logits, dense targets and gradients (logits and targets) in strided buffers give the
    /// same results as packed ones; input padding (NaN) is never read and output padding is
    /// never written.
    #[test]
    fn strided_views_match_packed(case in any_case(), pads in (1usize..=5, 1usize..=5, 1usize..=5, 1usize..=5)) {
        let (zpad, gpad, apad, gapad) = pads;
        match case {
            AnyCase::Hard(hc) => {
                let (n, c) = (hc.n, hc.c);
                let packed = hc.api();
                let zs = strided(&hc.logits, n, c, c + zpad, f32::NAN);
                let mut gbuf = vec![SENTINEL; n * (c + gpad)];
                let mut rows = vec![f32::NAN; n];
                let mut out = Outputs::new()
                    .row_losses(&mut rows)
                    .grad_logits(MatMut::with_stride(&mut gbuf, n, c, c + gpad).unwrap());
                if let Some(up) = up_for(hc.reduction, &hc.upstream) {
                    out = out.upstream(up);
                }
                let loss = hc.cfg().compute(MatRef::with_stride(&zs, n, c, c + zpad).unwrap(), &hc.labels, out).unwrap();
                let grad = unstride(&gbuf, n, c, c + gpad)?;
                compare_api("hard CE strided vs packed", &Api { loss, rows, grad }, &packed, c, 1e-6, &hc.mags())?;
            }
            AnyCase::Soft(case) => {
                let (n, m, c) = (case.n, case.m, case.c);
                let dense = case.form.densify(m, c);
                let mags = case.mags(&dense);
                // Packed run (with the target gradient for dense InfoNCE).
                let is_dense = matches!(case.form, Form::Dense(_));
                let want_ga = case.kind == Kind::Nce && is_dense;
                let run = |z: MatRef<'_, f32>, targets: &Targets<'_, f32>, g: MatMut<'_, f32>, ga: Option<MatMut<'_, f32>>, rows: &mut [f32]| {
                    let mut out = Outputs::new().row_losses(rows).grad_logits(g);
                    if let Some(ga) = ga {
                        out = out.grad_targets(ga);
                    }
                    if let Some(up) = up_for(case.reduction, &case.upstream) {
                        out = out.upstream(up);
                    }
                    match case.kind {
                        Kind::Nce => case.nce().compute(z, targets, out),
                        Kind::SoftCe => case.soft_ce().compute(z, targets, out),
                    }
                    .unwrap()
                };
                let mut g0 = vec![0.0f32; n * c];
                let mut ga0 = vec![0.0f32; m * c];
                let mut rows0 = vec![0.0f32; n];
                let loss0 = run(
                    case.z(),
                    &case.form.targets(m, c),
                    MatMut::new(&mut g0, n, c).unwrap(),
                    want_ga.then(|| MatMut::new(&mut ga0, m, c).unwrap()),
                    &mut rows0,
                );

                let zs = strided(&case.logits, n, c, c + zpad, f32::NAN);
                let astride = c + apad;
                let a_strided = match &case.form {
                    Form::Dense(a) => strided(a, m, c, astride, f32::NAN),
                    _ => Vec::new(),
                };
                let targets = match &case.form {
                    Form::Dense(_) => Targets::Dense(MatRef::with_stride(&a_strided, m, c, astride).unwrap()),
                    other => other.targets(m, c),
                };
                let mut gbuf = vec![SENTINEL; n * (c + gpad)];
                let mut gabuf = vec![SENTINEL; m * (c + gapad)];
                let mut rows1 = vec![0.0f32; n];
                let loss1 = run(
                    MatRef::with_stride(&zs, n, c, c + zpad).unwrap(),
                    &targets,
                    MatMut::with_stride(&mut gbuf, n, c, c + gpad).unwrap(),
                    want_ga.then(|| MatMut::with_stride(&mut gabuf, m, c, c + gapad).unwrap()),
                    &mut rows1,
                );
                let g1 = unstride(&gbuf, n, c, c + gpad)?;
                let a = Api { loss: loss1, rows: rows1, grad: g1 };
                let b = Api { loss: loss0, rows: rows0, grad: g0 };
                compare_api(&format!("{:?} strided vs packed", case.kind), &a, &b, c, 1e-6, &mags)?;
                if want_ga {
                    let ga1 = unstride(&gabuf, m, c, c + gapad)?;
                    prop_assert!(ga0.iter().all(|g| g.is_finite()));
                    near_rows("target gradient strided vs packed", &wide(&ga1), &wide(&ga0), 1e-6, mags.total)?;
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// 7. Loss-only and loss-and-gradient calls agree; the API agrees with the reference
// ---------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    #[test]
    fn loss_only_matches_loss_and_grad(case in any_case()) {
        match case {
            AnyCase::Hard(hc) => {
                let (n, c) = (hc.n, hc.c);
                let z = MatRef::new(&hc.logits, n, c).unwrap();
                let full = hc.api();
                let only = if hc.reduction == Reduction::None {
                    hc.cfg().compute(z, &hc.labels, Outputs::new()).unwrap()
                } else {
                    let mut g = vec![0.0f32; n * c];
                    let with = hc.cfg().loss_and_grad(z, &hc.labels, MatMut::new(&mut g, n, c).unwrap()).unwrap();
                    near("hard CE loss_and_grad vs compute", with as f64, full.loss as f64, 1e-6, hc.mags().total)?;
                    hc.cfg().loss(z, &hc.labels).unwrap()
                };
                near("hard CE loss-only vs loss and grad", only as f64, full.loss as f64, 1e-6, hc.mags().total)?;
            }
            AnyCase::Soft(case) => {
                let (n, m, c) = (case.n, case.m, case.c);
                let targets = case.form.targets(m, c);
                let mags = case.mags(&case.form.densify(m, c));
                let full = case.api(&targets);
                let only = if case.reduction == Reduction::None {
                    match case.kind {
                        Kind::Nce => case.nce().compute(case.z(), &targets, Outputs::new()),
                        Kind::SoftCe => case.soft_ce().compute(case.z(), &targets, Outputs::new()),
                    }
                    .unwrap()
                } else {
                    let mut g = vec![0.0f32; n * c];
                    let gm = MatMut::new(&mut g, n, c).unwrap();
                    let with = match case.kind {
                        Kind::Nce => case.nce().loss_and_grad(case.z(), &targets, gm),
                        Kind::SoftCe => case.soft_ce().loss_and_grad(case.z(), &targets, gm),
                    }
                    .unwrap();
                    near("loss_and_grad vs compute", with as f64, full.loss as f64, 1e-6, mags.total)?;
                    near_grad("loss_and_grad vs compute gradient", &wide(&g), &wide(&full.grad), c, 1e-6, &mags.grad)?;
                    match case.kind {
                        Kind::Nce => case.nce().loss(case.z(), &targets),
                        Kind::SoftCe => case.soft_ce().loss(case.z(), &targets),
                    }
                    .unwrap()
                };
                near(&format!("{:?} loss-only vs loss and grad", case.kind), only as f64, full.loss as f64, 1e-6, mags.total)?;
            }
        }
    }

    /// The public API (f32 outputs) agrees with the f64 reference.
    #[test]
    fn api_matches_reference(case in any_case()) {
        match case {
            AnyCase::Hard(hc) => {
                let r = hc.reference();
                let a = hc.api();
                let rr = Api {
                    loss: r.loss as f32,
                    rows: r.row_losses.iter().map(|&x| x as f32).collect(),
                    grad: r.grad_logits.iter().map(|&x| x as f32).collect(),
                };
                compare_api("hard CE API vs reference", &a, &rr, hc.c, F32_RTOL, &hc.mags())?;
            }
            AnyCase::Soft(case) => {
                let targets = case.form.targets(case.m, case.c);
                let r = case.reference(&targets);
                let a = case.api(&targets);
                let rr = Api {
                    loss: r.loss as f32,
                    rows: r.row_losses.iter().map(|&x| x as f32).collect(),
                    grad: r.grad_logits.iter().map(|&x| x as f32).collect(),
                };
                let mags = case.mags(&case.form.densify(case.m, case.c));
                compare_api(&format!("{:?} API vs reference", case.kind), &a, &rr, case.c, F32_RTOL, &mags)?;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// 8. Deterministic checks: large problems (several row blocks, parallel) and extreme logits
// ---------------------------------------------------------------------------------------

/// Shapes big enough for the row-block driver to split the rows (one row per block) and run
/// them in parallel: strided logits (NaN padding) and gradients (sentinel padding) against the
/// packed call (same backend: `1e-6`) and the reference.
///
/// Against the reference the tolerance is the worst-case bound of an `f32` sum of `C` terms,
/// `C·2^-24` (≈ 2e-3 here): what "accumulation in f32" guarantees. The check is about the
/// block/stride/parallel structure (a wrong row or offset is an O(1) error), not about the
/// summation accuracy of very wide rows.
#[test]
fn large_problems_strided_match_packed_and_reference() {
    for (n, c, pad) in [(6usize, 33_000usize, 3usize), (4, 40_961, 1)] {
        let s = c + pad;
        let wide_rtol = F32_RTOL.max(c as f64 * f64::powi(2.0, -24));
        let z: Vec<f32> = (0..n * c)
            .map(|k| (((k * 37 + k / c * 11) % 101) as f32 - 50.0) / 16.0)
            .collect();
        let zs = strided(&z, n, c, s, f32::NAN);
        let labels: Vec<u32> = (0..n).map(|i| ((i * 7919) % c) as u32).collect();
        let up: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 1.0).collect();
        let a: Vec<f32> = (0..n * c)
            .map(|k| ((k * 13) % 7) as f32 / 7.0 / c as f32)
            .collect();
        for reduction in [Reduction::Mean, Reduction::None] {
            let hc = HardCase {
                n,
                c,
                logits: z.clone(),
                labels: labels.clone(),
                ignore: Some(labels[1]),
                eps: 0.1,
                t: 0.7,
                reduction,
                upstream: up.clone(),
            };
            let packed = hc.api();
            let mut gbuf = vec![SENTINEL; n * s];
            let mut rows = vec![f32::NAN; n];
            let mut out = Outputs::new()
                .row_losses(&mut rows)
                .grad_logits(MatMut::with_stride(&mut gbuf, n, c, s).unwrap());
            if reduction == Reduction::None {
                out = out.upstream(&up);
            }
            let loss = hc
                .cfg()
                .compute(MatRef::with_stride(&zs, n, c, s).unwrap(), &labels, out)
                .unwrap();
            let grad = unstride(&gbuf, n, c, s).unwrap();
            let mags = hc.mags();
            compare_api(
                "large hard CE, strided vs packed",
                &Api { loss, rows, grad },
                &packed,
                c,
                1e-6,
                &mags,
            )
            .unwrap();
            let r = hc.reference();
            let rr = Api {
                loss: r.loss as f32,
                rows: r.row_losses.iter().map(|&x| x as f32).collect(),
                grad: r.grad_logits.iter().map(|&x| x as f32).collect(),
            };
            compare_api(
                "large hard CE, API vs reference",
                &packed,
                &rr,
                c,
                wide_rtol,
                &mags,
            )
            .unwrap();

            let sc = Case {
                kind: Kind::SoftCe,
                n,
                m: n,
                c,
                logits: z.clone(),
                form: Form::Dense(a.clone()),
                t: 0.7,
                noise: NoiseSpec::Uniform,
                offset: 0,
                reduction,
                upstream: up.clone(),
            };
            let targets = sc.form.targets(n, c);
            let mags = sc.mags(&sc.form.densify(n, c));
            let r = sc.reference(&targets);
            let rr = Api {
                loss: r.loss as f32,
                rows: r.row_losses.iter().map(|&x| x as f32).collect(),
                grad: r.grad_logits.iter().map(|&x| x as f32).collect(),
            };
            compare_api(
                "large soft CE, API vs reference",
                &sc.api(&targets),
                &rr,
                c,
                wide_rtol,
                &mags,
            )
            .unwrap();
        }
    }
}

/// Finite logits whose scaled value `z/t` exceeds the `f32` range are data like any other:
/// the row's loss is the true value rounded to `f32` (here `+∞`, as the f64 reference gives
/// 6e38) and its gradient is finite, never NaN. Row 0: `z = [3e38, 0, −1]`, `t = 0.5`, label 1,
/// so `softmax(z/t) = e_0` and `dL/dz_0 = (e_0 − e_1)/t = [2, −2, 0]` (`Sum` reduction).
#[test]
fn finite_logits_overflowing_f32_after_temperature_are_not_nan() {
    let z = [3.0e38f32, 0.0, -1.0, 1.0, 2.0, 0.5];
    let zm = MatRef::new(&z, 2, 3).unwrap();
    let y = [1u32, 2];
    let a = [0.0f32, 1.0, 0.0, 0.0, 0.0, 1.0]; // the same targets, dense
    let dense = Targets::Dense(MatRef::new(&a, 2, 3).unwrap());
    let expected_grad0 = [2.0f32, -2.0, 0.0];
    for which in ["hard CE", "soft CE (dense)", "soft CE (hard targets)"] {
        let mut rows = [f32::NAN; 2];
        let mut g = [f32::NAN; 6];
        let out = Outputs::new()
            .row_losses(&mut rows)
            .grad_logits(MatMut::new(&mut g, 2, 3).unwrap());
        let sce = SoftCrossEntropy::new().temperature(0.5).reduction(Reduction::Sum);
        let r = match which {
            "hard CE" => HardCrossEntropy::new()
                .temperature(0.5)
                .reduction(Reduction::Sum)
                .compute(zm, &y, out),
            "soft CE (dense)" => sce.compute(zm, &dense, out),
            _ => sce.compute(zm, &Targets::hard(&y, 0.0), out),
        };
        r.unwrap();
        let reference = reference::soft_cross_entropy(&sce, zm, &dense, &Request::loss_and_grad()).unwrap();
        // The f64 oracle: 2 · 3e38 (finite in f64, beyond f32::MAX) and the gradient above.
        assert!(
            (reference.row_losses[0] / 6e38 - 1.0).abs() <= 1e-6
                && reference.row_losses[0] as f32 == f32::INFINITY,
            "reference: {:?}",
            reference.row_losses
        );
        for (r, e) in reference.grad_logits.iter().zip(expected_grad0) {
            assert!(
                (r - e as f64).abs() <= 1e-12,
                "reference gradient {:?}",
                reference.grad_logits
            );
        }
        let grad_ok = g[..3]
            .iter()
            .zip(expected_grad0)
            .all(|(x, e)| (x - e).abs() <= 1e-6);
        assert!(
            rows[0] == f32::INFINITY && grad_ok,
            "{which}: finite logits [3e38, 0, -1] at t = 0.5 (label 1, Sum): expected row loss +inf \
             (f64 reference: 6e38) and gradient row {expected_grad0:?}; got row loss {} and gradient row {:?}",
            rows[0],
            &g[..3]
        );
        assert!(rows[1].is_finite() && g[3..].iter().all(|x| x.is_finite()));
    }
}

/// `k` tied maximal logits `L`: the loss is exactly `ln k` whatever `L` (the other classes
/// contribute `e^−L ≈ 0`). The cross-entropy kernels compute `mass·ln S + Σ a (m − u)` and keep
/// it; this checks them (and the same call through the public API).
#[test]
fn tied_huge_logits_cross_entropy_api() {
    let big = 1.0e20f32;
    let z = [big, big, big, 0.0];
    let zm = MatRef::new(&z, 1, 4).unwrap();
    let expected = 3.0f64.ln();
    let hard = HardCrossEntropy::new().loss(zm, &[0]).unwrap();
    assert!(
        (hard as f64 - expected).abs() <= 1e-6,
        "hard CE API: {hard}, expected ln 3 = {expected}"
    );
    let soft = SoftCrossEntropy::new()
        .loss(zm, &Targets::hard(&[0], 0.0))
        .unwrap();
    assert!(
        (soft as f64 - expected).abs() <= 1e-6,
        "soft CE API: {soft}, expected ln 3 = {expected}"
    );
}

/// The same for the f64 reference (the oracle): it must not lose `ln 3` to cancellation in
/// `lse − z_y` when `|z/t|` is large (here 1e20, a finite `f32`).
#[test]
fn tied_huge_logits_cross_entropy_reference() {
    let big = 1.0e20f32;
    let z = [big, big, big, 0.0];
    let zm = MatRef::new(&z, 1, 4).unwrap();
    let expected = 3.0f64.ln();
    let r = reference::hard_cross_entropy(&HardCrossEntropy::new(), zm, &[0], &Request::loss_only()).unwrap();
    assert!(
        (r.loss - expected).abs() <= 1e-9,
        "reference hard CE: {}, expected ln 3 = {expected}",
        r.loss
    );
    let r = reference::soft_cross_entropy(
        &SoftCrossEntropy::new(),
        zm,
        &Targets::hard(&[0], 0.0),
        &Request::loss_only(),
    )
    .unwrap();
    assert!(
        (r.loss - expected).abs() <= 1e-9,
        "reference soft CE: {}, expected ln 3 = {expected}",
        r.loss
    );
}

/// InfoNCE with one-hot targets over classes {0, 1, 2} and logits `[L, L, L, 0]`: the three
/// scores tie at `L + ln 4`, so `l = ln 3` exactly whatever `L`.
#[test]
fn tied_huge_logits_infonce() {
    let big = 1.0e20f32;
    let z = [big, big, big, 0.0];
    let zm = MatRef::new(&z, 1, 4).unwrap();
    let labels = [0u32, 1, 2];
    let targets = Targets::hard(&labels, 0.0);
    let expected = 3.0f64.ln();
    let cfg = SoftInfoNce::new();
    let r = reference::soft_infonce(&cfg, zm, &targets, &Request::loss_only()).unwrap();
    let api = cfg.loss(zm, &targets).unwrap();
    assert!(
        (r.loss - expected).abs() <= 1e-9 && (api as f64 - expected).abs() <= 1e-6,
        "InfoNCE: reference {}, API {api}, expected ln 3 = {expected}",
        r.loss
    );
}
