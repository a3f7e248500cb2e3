//! Every backend this CPU can run, forced per call, against the f64 reference: every
//! cross-entropy variant, target form and reduction, on shapes that straddle the vector
//! widths and on adversarial values (±80 and ±1e4 logits, −∞ masked classes, NaN, zero target
//! rows, tiny temperatures).

mod common;
use common::{cases, close};

use proptest::prelude::*;
use softnce::reference::{self, RefOutput, Request};
use softnce::{
    available_backends, Backend, HardCrossEntropy, MatMut, MatRef, Outputs, Reduction, RowParam,
    SoftCrossEntropy, SparseTargets, Targets,
};

const CLASSES: &[usize] = &[1, 2, 7, 8, 9, 15, 16, 17, 31, 33, 64, 100, 1000];

/// A logit value: mostly moderate, sometimes adversarial.
fn logit() -> impl Strategy<Value = f32> {
    prop_oneof![
        8 => -6.0f32..6.0,
        1 => prop_oneof![Just(80.0f32), Just(-80.0), Just(1e4), Just(-1e4), -1e4f32..1e4],
        1 => Just(f32::NEG_INFINITY),
    ]
}

#[derive(Debug, Clone)]
struct Case {
    n: usize,
    c: usize,
    stride: usize,
    t: f32,
    logits: Vec<f32>,
    dense: Vec<f32>,
    labels: Vec<u32>,
    partner: Vec<u32>,
    lambda: Vec<f32>,
    eps: f32,
    csr_counts: Vec<usize>,
    csr_classes: Vec<u32>,
    csr_weights: Vec<f32>,
    floors: Vec<f32>,
    upstream: Vec<f32>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        1usize..7,
        prop::sample::select(CLASSES),
        0usize..3,
        prop::sample::select(vec![0.05f32, 0.5, 1.0, 3.0, 20.0]),
    )
        .prop_flat_map(|(n, c, pad, t)| {
            let stride = c + pad;
            (
                Just((n, c, stride, t)),
                prop::collection::vec(logit(), n * stride),
                prop::collection::vec(prop_oneof![2 => Just(0.0f32), 3 => 0.0f32..1.0], n * c),
                prop::collection::vec(0..c as u32, n),
                prop::collection::vec(0..c as u32, n),
                prop::collection::vec(prop_oneof![Just(0.0f32), Just(1.0), 0.0f32..1.0], n),
                prop_oneof![Just(0.0f32), Just(0.1), Just(1.0), 0.0f32..1.0],
                prop::collection::vec(0usize..4, n),
                prop::collection::vec((0..c as u32, 0.0f32..1.0), 4 * n),
                prop::collection::vec(prop_oneof![Just(0.0f32), 0.0f32..0.05], n),
                prop::collection::vec(-2.0f32..2.0, n),
                prop::option::weighted(0.1, 0..n),
            )
        })
        .prop_map(
            |(
                (n, c, stride, t),
                mut logits,
                mut dense,
                labels,
                partner,
                lambda,
                eps,
                counts,
                entries,
                floors,
                upstream,
                nan_row,
            )| {
                // A zero target row now and then.
                if n > 1 {
                    dense[c..2 * c].fill(0.0);
                }
                if let Some(r) = nan_row {
                    logits[r * stride] = f32::NAN;
                }
                // Keep padding finite garbage: it must never be read.
                for i in 0..n {
                    for k in c..stride {
                        logits[i * stride + k] = f32::NAN;
                    }
                }
                let total: usize = counts.iter().sum();
                Case {
                    n,
                    c,
                    stride,
                    t,
                    logits,
                    dense,
                    labels,
                    partner,
                    lambda,
                    eps,
                    csr_counts: counts,
                    csr_classes: entries.iter().take(total).map(|e| e.0).collect(),
                    csr_weights: entries.iter().take(total).map(|e| e.1).collect(),
                    floors,
                    upstream,
                }
            },
        )
}

/// Compares an f32 API result against the reference (loss, row losses, gradient).
///
/// Gradients are compared at the scale of the row's gradient: `|scale_i|/t · max(1, mass_i)`
/// bounds every entry of row `i` (`gscale`), and f32 rounding is relative to it.
#[allow(clippy::too_many_arguments)]
fn compare(
    what: &str,
    loss: f32,
    rows: &[f32],
    grad: &[f32],
    stride: usize,
    c: usize,
    r: &RefOutput,
    gscale: f64,
) {
    let loss_tol = |b: f64| 3e-5 * b.abs().max(1.0);
    assert!(
        close(loss as f64, r.loss, loss_tol(r.loss)),
        "{what}: loss {loss} vs {} (rows {rows:?}, reference rows {:?})",
        r.loss,
        r.row_losses
    );
    for (i, (&a, &b)) in rows.iter().zip(&r.row_losses).enumerate() {
        assert!(close(a as f64, b, loss_tol(b)), "{what}: row {i} loss {a} vs {b}");
    }
    let scale = r
        .grad_logits
        .iter()
        .filter(|g| g.is_finite())
        .fold(gscale, |m, g| m.max(g.abs()));
    for (k, &b) in r.grad_logits.iter().enumerate() {
        let (i, j) = (k / c, k % c);
        let a = grad[i * stride + j] as f64;
        assert!(
            close(a, b, 3e-5 * scale),
            "{what}: grad[{i},{j}] {a} vs {b} (scale {scale})"
        );
    }
    // Padding between rows is never written.
    for i in 0..rows.len() {
        for k in c..stride {
            if i * stride + k < grad.len() {
                assert_eq!(
                    grad[i * stride + k].to_bits(),
                    7.0f32.to_bits(),
                    "{what}: padding written"
                );
            }
        }
    }
}

/// A cross-entropy call for [`checked_call`].
enum Ce<'a> {
    Soft(&'a SoftCrossEntropy, &'a Targets<'a>),
    Hard(&'a HardCrossEntropy, &'a [u32]),
}

/// Runs `ce` on `zm` through the API (gradient rows of `stride`, padding pre-filled with
/// 7.0) and [`compare`]s it with the reference; returns the row losses and the gradient.
fn checked_call(what: &str, ce: Ce<'_>, zm: MatRef<'_, f32>, stride: usize) -> (Vec<f32>, Vec<f32>) {
    let (n, c) = (zm.rows(), zm.cols());
    let req = Request::loss_and_grad();
    let (mut g, mut rows) = (vec![7.0f32; n * stride], vec![0.0f32; n]);
    let out = Outputs::new()
        .grad_logits(MatMut::with_stride(&mut g, n, c, stride).unwrap())
        .row_losses(&mut rows);
    let (loss, r) = match ce {
        Ce::Soft(l, t) => (
            l.compute(zm, t, out).unwrap(),
            reference::soft_cross_entropy(l, zm, t, &req).unwrap(),
        ),
        Ce::Hard(l, y) => (
            l.compute(zm, y, out).unwrap(),
            reference::hard_cross_entropy(l, zm, y, &req).unwrap(),
        ),
    };
    compare(what, loss, &rows, &g, stride, c, &r, 0.0);
    (rows, g)
}

fn run_all(case: &Case, reduction: Reduction) {
    let Case { n, c, stride, t, .. } = *case;
    let z = MatRef::with_stride(&case.logits, n, c, stride).unwrap();
    let mut indptr = vec![0usize];
    for &k in &case.csr_counts {
        indptr.push(indptr.last().unwrap() + k);
    }
    let sparse = SparseTargets::new(
        &indptr,
        &case.csr_classes,
        &case.csr_weights,
        RowParam::PerRow(&case.floors),
    );
    let forms: Vec<(&str, Targets<'_>)> = vec![
        ("dense", Targets::Dense(MatRef::new(&case.dense, n, c).unwrap())),
        ("hard", Targets::hard(&case.labels, case.eps)),
        (
            "mixed/row",
            Targets::mixed(
                &case.labels,
                &case.partner,
                RowParam::PerRow(&case.lambda),
                case.eps,
            ),
        ),
        (
            "mixed/batch",
            Targets::mixed(
                &case.labels,
                &case.partner,
                RowParam::Batch(case.lambda[0]),
                case.eps,
            ),
        ),
        ("sparse", Targets::Sparse(sparse)),
    ];
    let up = (reduction == Reduction::None).then_some(&case.upstream[..]);
    let req = Request {
        grad_logits: true,
        grad_targets: false,
        upstream: up,
    };
    fn outputs<'o>(
        g: &'o mut [f32],
        rows: &'o mut [f32],
        shape: (usize, usize, usize),
        up: Option<&'o [f32]>,
    ) -> Outputs<'o, f32> {
        let (n, c, stride) = shape;
        let o = Outputs::new()
            .grad_logits(MatMut::with_stride(g, n, c, stride).unwrap())
            .row_losses(rows);
        match up {
            Some(u) => o.upstream(u),
            None => o,
        }
    }
    // Row masses of each form, from the definitions (DESIGN §1e).
    let masses = |name: &str| -> Vec<f64> {
        (0..n)
            .map(|i| match name {
                "dense" => case.dense[i * c..(i + 1) * c].iter().map(|&v| v as f64).sum(),
                "sparse" => {
                    let (lo, hi) = (indptr[i], indptr[i + 1]);
                    case.floors[i] as f64 * c as f64
                        + case.csr_weights[lo..hi].iter().map(|&w| w as f64).sum::<f64>()
                }
                _ => 1.0,
            })
            .collect()
    };
    let gscale = |name: &str, count: usize| -> f64 {
        masses(name)
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let s = match reduction {
                    Reduction::Mean => 1.0 / count.max(1) as f64,
                    Reduction::Sum => 1.0,
                    Reduction::None => case.upstream[i].abs() as f64,
                };
                s / t as f64 * m.max(1.0)
            })
            .fold(1e-30, f64::max)
    };
    for backend in available_backends() {
        for (name, targets) in &forms {
            let cfg = SoftCrossEntropy::new().temperature(t).reduction(reduction);
            let r = reference::soft_cross_entropy(&cfg, z, targets, &req).unwrap();
            let mut g = vec![7.0f32; n * stride];
            let mut rows = vec![0.0f32; n];
            let loss = cfg
                .backend(Some(backend))
                .compute(z, targets, outputs(&mut g, &mut rows, (n, c, stride), up))
                .unwrap();
            compare(
                &format!("{backend} soft CE {name} {reduction:?}"),
                loss,
                &rows,
                &g,
                stride,
                c,
                &r,
                gscale(name, n),
            );
            let loss_only = cfg.backend(Some(backend)).loss(z, targets).unwrap();
            assert!(loss_only.to_bits() == loss.to_bits() || (loss.is_nan() && loss_only.is_nan()));
        }
        // Hard CE with smoothing, with and without an ignored row.
        let mut labels = case.labels.clone();
        for ignore in [None, Some(u32::MAX)] {
            if ignore.is_some() {
                labels[0] = u32::MAX;
            }
            let cfg = HardCrossEntropy::new()
                .temperature(t)
                .smoothing(case.eps)
                .ignore_index(ignore)
                .reduction(reduction);
            let r = reference::hard_cross_entropy(&cfg, z, &labels, &req).unwrap();
            let mut g = vec![7.0f32; n * stride];
            let mut rows = vec![0.0f32; n];
            let loss = cfg
                .backend(Some(backend))
                .compute(z, &labels, outputs(&mut g, &mut rows, (n, c, stride), up))
                .unwrap();
            let count = labels.iter().filter(|&&y| Some(y) != ignore).count();
            compare(
                &format!("{backend} hard CE ignore={ignore:?} {reduction:?}"),
                loss,
                &rows,
                &g,
                stride,
                c,
                &r,
                gscale("hard", count),
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(256),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn backends_match_reference_mean(case in case()) {
        run_all(&case, Reduction::Mean);
    }

    #[test]
    fn backends_match_reference_sum(case in case()) {
        run_all(&case, Reduction::Sum);
    }

    #[test]
    fn backends_match_reference_none(case in case()) {
        run_all(&case, Reduction::None);
    }
}

/// Large rows (several blocks, parallel path) agree with the reference and do not depend on
/// the number of threads.
#[test]
fn large_problem_all_backends_and_thread_counts() {
    let (n, c) = (64usize, 4099usize);
    let mut next = common::uniform(12345);
    let logits: Vec<f32> = (0..n * c).map(|_| 10.0 * next() - 5.0).collect();
    let dense: Vec<f32> = (0..n * c).map(|_| next()).collect();
    let z = MatRef::new(&logits, n, c).unwrap();
    let targets = Targets::Dense(MatRef::new(&dense, n, c).unwrap());
    let cfg = SoftCrossEntropy::new().temperature(0.7);
    let r = reference::soft_cross_entropy(&cfg, z, &targets, &Request::loss_and_grad()).unwrap();
    for backend in available_backends() {
        let mut results = Vec::new();
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut g = vec![0.0f32; n * c];
            let mut rows = vec![0.0f32; n];
            let loss = pool.install(|| {
                cfg.backend(Some(backend))
                    .compute(
                        z,
                        &targets,
                        Outputs::new()
                            .grad_logits(MatMut::new(&mut g, n, c).unwrap())
                            .row_losses(&mut rows),
                    )
                    .unwrap()
            });
            compare(
                &format!("{backend} large, {threads} threads"),
                loss,
                &rows,
                &g,
                c,
                c,
                &r,
                0.0,
            );
            results.push((loss.to_bits(), g));
        }
        assert!(
            results.windows(2).all(|w| w[0] == w[1]),
            "{backend}: results depend on the thread count"
        );
    }
}

#[test]
fn forcing_an_unavailable_backend_is_an_error() {
    let z = [0.0f32; 4];
    let y = [0u32, 1];
    for b in Backend::ALL {
        let res = HardCrossEntropy::new()
            .backend(Some(b))
            .loss(MatRef::new(&z, 2, 2).unwrap(), &y);
        if b.is_available() {
            assert!(res.is_ok());
        } else {
            assert_eq!(res, Err(softnce::Error::BackendUnavailable(b)));
        }
    }
}

/// A gradient larger than 64 MiB is written with streaming stores; with a row stride that
/// is not a multiple of the vector width every row starts at a different alignment. Only on
/// x86-64 (the streaming path does not exist elsewhere and emulation would be slow).
#[cfg(target_arch = "x86_64")]
#[test]
fn streaming_gradient_matches_reference() {
    let (n, c, stride) = (1031usize, 16411usize, 16413usize);
    let mut next = common::uniform(99);
    let logits: Vec<f32> = (0..n * stride).map(|_| 8.0 * next() - 4.0).collect();
    let labels: Vec<u32> = (0..n).map(|i| (i * 7919 % c) as u32).collect();
    let z = MatRef::with_stride(&logits, n, c, stride).unwrap();
    let cfg = HardCrossEntropy::new().smoothing(0.1);
    let r = reference::hard_cross_entropy(&cfg, z, &labels, &Request::loss_and_grad()).unwrap();
    for backend in available_backends() {
        let mut g = vec![7.0f32; n * stride];
        let mut rows = vec![0.0f32; n];
        let loss = cfg
            .backend(Some(backend))
            .compute(
                z,
                &labels,
                Outputs::new()
                    .grad_logits(MatMut::with_stride(&mut g, n, c, stride).unwrap())
                    .row_losses(&mut rows),
            )
            .unwrap();
        compare(
            &format!("{backend} streaming"),
            loss,
            &rows,
            &g,
            stride,
            c,
            &r,
            0.0,
        );
    }
}

/// Dense soft CE large enough to stream its gradient (above 64 MiB), where `f32` rows
/// recompute their exponentials in the gradient sweep instead of storing them: against
/// the reference at `t = 1` and `t = 0.7`, with a row without a finite logit, a NaN row and
/// a row with masked (`−∞`, zero-weight) classes among pipelined rows, on every backend.
#[test]
fn streaming_dense_gradient_matches_reference() {
    let (n, c, stride) = (1031usize, 16411usize, 16413usize);
    let mut next = common::uniform(41);
    let mut logits: Vec<f32> = (0..n * stride).map(|_| 8.0 * next() - 4.0).collect();
    let mut a: Vec<f32> = (0..n * c).map(|_| next()).collect();
    logits[5 * stride..5 * stride + c].fill(f32::NEG_INFINITY);
    logits[6 * stride + c / 2] = f32::NAN;
    logits[7 * stride + c / 3..7 * stride + c / 3 + 100].fill(f32::NEG_INFINITY);
    a[7 * c + c / 3..7 * c + c / 3 + 100].fill(0.0);
    let z = MatRef::with_stride(&logits, n, c, stride).unwrap();
    let dense = Targets::Dense(MatRef::new(&a, n, c).unwrap());
    for t in [1.0, 0.7] {
        let cfg = SoftCrossEntropy::new().temperature(t);
        for backend in available_backends() {
            let what = format!("{backend} streaming dense, t = {t}");
            checked_call(&what, Ce::Soft(&cfg.backend(Some(backend)), &dense), z, stride);
        }
    }
}

/// A NaN logit anywhere in a row (first, in the middle, last, in the vector tail, among
/// `−∞` only, alone) makes that row's loss and gradient NaN and leaves its neighbours alone,
/// in pipelined blocks (soft CE dense and MixUp, hard CE; f32 against the reference, and
/// `bf16` / `f16` by the NaN pattern) on every backend. The kernels' max sweep does not
/// propagate NaN (`F32x::max`); the sum of exponentials and a `−∞` rescan catch it instead.
#[test]
fn nan_anywhere_in_a_row_makes_that_row_nan() {
    let (n, c, stride) = (12usize, 1037usize, 1040usize);
    let mut next = common::uniform(23);
    let mut z: Vec<f32> = (0..n * stride).map(|_| 8.0 * next() - 4.0).collect();
    let nan_rows = [1usize, 3, 4, 5, 6, 9, 10];
    z[stride] = f32::NAN; // row 1: first
    z[3 * stride + c - 1] = f32::NAN; // row 3: last (in the tail)
    z[4 * stride + c / 2] = f32::NAN; // row 4: middle
    z[5 * stride..5 * stride + c].fill(f32::NEG_INFINITY); // row 5: NaN among −∞
    z[5 * stride + 700] = f32::NAN;
    z[6 * stride..6 * stride + c].fill(f32::NAN); // row 6: all NaN
    z[8 * stride..8 * stride + c].fill(f32::NEG_INFINITY); // row 8: no finite logit
    z[9 * stride + 33] = f32::NAN; // row 9: NaN before the maximum
    z[9 * stride + 900] = 80.0;
    z[10 * stride + c - 17] = f32::NAN; // row 10: NaN next to a large logit
    z[10 * stride + c - 16] = 80.0;
    let a: Vec<f32> = (0..n * c).map(|_| next()).collect();
    let labels: Vec<u32> = (0..n).map(|i| (i * 331 % c) as u32).collect();
    let partner: Vec<u32> = (0..n).map(|i| (i * 577 % c) as u32).collect();
    let zm = MatRef::with_stride(&z, n, c, stride).unwrap();
    let soft = SoftCrossEntropy::new().reduction(Reduction::Sum);
    let hard = HardCrossEntropy::new().smoothing(0.1).reduction(Reduction::Sum);
    let dense = Targets::Dense(MatRef::new(&a, n, c).unwrap());
    let mixed = Targets::mixed(&labels, &partner, RowParam::Batch(0.3), 0.1);
    fn pattern<T: softnce::Element>(
        what: &str,
        rows: &[f32],
        g: &[T],
        (c, stride): (usize, usize),
        nan_rows: &[usize],
    ) {
        for (i, l) in rows.iter().enumerate() {
            let want = nan_rows.contains(&i);
            assert_eq!(l.is_nan(), want, "{what}: row {i} loss {l}");
            let row = &g[i * stride..i * stride + c];
            assert!(
                row.iter().all(|v| v.to_f32().is_nan() == want),
                "{what}: row {i} gradient"
            );
        }
    }
    for backend in available_backends() {
        let (soft, hard) = (soft.backend(Some(backend)), hard.backend(Some(backend)));
        for (form, t) in [("dense", &dense), ("mixed", &mixed)] {
            let what = format!("soft-ce/{form} {backend}");
            let (rows, g) = checked_call(&what, Ce::Soft(&soft, t), zm, stride);
            pattern(&what, &rows, &g, (c, stride), &nan_rows);
        }
        let what = format!("hard-ce {backend}");
        let (rows, g) = checked_call(&what, Ce::Hard(&hard, &labels), zm, stride);
        pattern(&what, &rows, &g, (c, stride), &nan_rows);
        fn half<T: softnce::Element>(
            backend: Backend,
            (z, a, labels): (&[f32], &[f32], &[u32]),
            (n, c, stride): (usize, usize, usize),
            nan_rows: &[usize],
        ) {
            let zh: Vec<T> = z.iter().map(|&v| T::from_f32(v)).collect();
            let ah: Vec<T> = a.iter().map(|&v| T::from_f32(v)).collect();
            let zm = MatRef::with_stride(&zh, n, c, stride).unwrap();
            let dense = Targets::Dense(MatRef::new(&ah, n, c).unwrap());
            let soft = SoftCrossEntropy::new().reduction(Reduction::Sum);
            let hard = HardCrossEntropy::new().reduction(Reduction::Sum);
            for form in ["soft-ce/dense", "hard-ce"] {
                let (mut g, mut rows) = (vec![T::from_f32(7.0); n * stride], vec![0.0f32; n]);
                let out = Outputs::new()
                    .grad_logits(MatMut::with_stride(&mut g, n, c, stride).unwrap())
                    .row_losses(&mut rows);
                if form == "hard-ce" {
                    hard.backend(Some(backend)).compute(zm, labels, out).unwrap();
                } else {
                    soft.backend(Some(backend)).compute(zm, &dense, out).unwrap();
                }
                let what = format!("{form} half {backend}");
                pattern(&what, &rows, &g, (c, stride), nan_rows);
            }
        }
        half::<softnce::bf16>(backend, (&z, &a, &labels), (n, c, stride), &nan_rows);
        half::<softnce::f16>(backend, (&z, &a, &labels), (n, c, stride), &nan_rows);
    }
}

/// Each row's sweep finds the next row's maximum (no max sweep of its own): rows far apart
/// in scale, with ignored, masked and NaN rows between them, on every backend. A row given
/// a neighbour's maximum overflows (`exp(+300)`) or loses its whole sum (`exp(−300) = 0`).
#[test]
fn every_row_gets_its_own_maximum_in_pipelined_blocks() {
    let (n, c, stride) = (40usize, 1037usize, 1040usize);
    let mut next = common::uniform(29);
    let offsets = [0.0f32, 300.0, -300.0, 5000.0, -5000.0, 40.0, -2000.0];
    let mut z: Vec<f32> = (0..n * stride)
        .map(|k| offsets[(k / stride) % offsets.len()] + 8.0 * next() - 4.0)
        .collect();
    z[9 * stride..9 * stride + c].fill(f32::NEG_INFINITY); // no finite logit
    z[17 * stride + 100] = f32::NAN; // a NaN row with a finite maximum
    z[25 * stride..25 * stride + c].fill(f32::NEG_INFINITY); // masked but one class
    z[25 * stride + 500] = 1.0;
    let a: Vec<f32> = (0..n * c).map(|_| next()).collect();
    let ignore = 7u32;
    let labels: Vec<u32> = (0..n)
        .map(|i| {
            if i % 5 == 2 || i == 23 {
                ignore
            } else {
                (i * 331 % c) as u32
            }
        })
        .collect();
    let partner: Vec<u32> = (0..n).map(|i| (i * 577 % c) as u32).collect();
    let zm = MatRef::with_stride(&z, n, c, stride).unwrap();
    let req = Request::loss_and_grad();
    let soft = SoftCrossEntropy::new().reduction(Reduction::Mean);
    let hard = HardCrossEntropy::new()
        .smoothing(0.1)
        .ignore_index(Some(ignore))
        .reduction(Reduction::Sum);
    let dense = Targets::Dense(MatRef::new(&a, n, c).unwrap());
    let mixed = Targets::mixed(&labels, &partner, RowParam::Batch(0.3), 0.1);
    for backend in available_backends() {
        let (soft, hard) = (soft.backend(Some(backend)), hard.backend(Some(backend)));
        for (form, t) in [("dense", &dense), ("mixed", &mixed)] {
            checked_call(
                &format!("soft-ce/{form} {backend}"),
                Ce::Soft(&soft, t),
                zm,
                stride,
            );
        }
        checked_call(
            &format!("hard-ce {backend}"),
            Ce::Hard(&hard, &labels),
            zm,
            stride,
        );
        // bf16: the row losses against the reference on the rounded values (the same sums
        // in f32, so far inside bf16's own precision).
        let zb: Vec<softnce::bf16> = z.iter().map(|&v| softnce::bf16::from_f32(v)).collect();
        let zw: Vec<f32> = zb.iter().map(|v| v.to_f32()).collect();
        let zbm = MatRef::with_stride(&zb, n, c, stride).unwrap();
        let zwm = MatRef::with_stride(&zw, n, c, stride).unwrap();
        let r = reference::hard_cross_entropy(&hard, zwm, &labels, &req).unwrap();
        let (mut g, mut rows) = (vec![softnce::bf16::from_f32(7.0); n * stride], vec![0.0f32; n]);
        let out = Outputs::new()
            .grad_logits(MatMut::with_stride(&mut g, n, c, stride).unwrap())
            .row_losses(&mut rows);
        hard.compute(zbm, &labels, out).unwrap();
        for (i, (&l, &want)) in rows.iter().zip(&r.row_losses).enumerate() {
            let ok = (l.is_nan() && want.is_nan()) || close(l as f64, want, 1e-4 * want.abs().max(1.0));
            assert!(ok, "hard-ce bf16 {backend}: row {i} loss {l} vs {want}");
        }
    }
}

/// Streamed `bf16` and `f16` gradients (large enough for non-temporal stores, every row at a
/// different alignment) are the `f32` kernel's gradient on the same (rounded) inputs,
/// rounded, and the padding between rows stays untouched. The `f16` kernels do the same
/// arithmetic after widening, so they agree bit for bit. The `bf16` kernels read and write
/// pairs of vectors in an interleaved lane order, which reassociates the row sums: their
/// gradient element `(p·mass − a)/N` is the rounding of a value within `1e-5` of the `f32`
/// one relative to its two terms (`|g| + a/N`: the difference cancels), which a misplaced
/// element would miss by far; the loss agrees to `1e-6`. x86-64 only, as
/// [`streaming_gradient_matches_reference`].
#[cfg(target_arch = "x86_64")]
#[test]
fn streaming_half_gradient_is_the_rounded_f32_gradient() {
    fn check<H: softnce::Element>(what: &str, exact: bool) {
        let (n, c, stride) = (1031usize, 16411usize, 16413usize);
        let mut next = common::uniform(5);
        let zh: Vec<H> = (0..n * stride).map(|_| H::from_f32(8.0 * next() - 4.0)).collect();
        let ah: Vec<H> = (0..n * c).map(|_| H::from_f32(next())).collect();
        let z32: Vec<f32> = zh.iter().map(|v| v.to_f32()).collect();
        let a32: Vec<f32> = ah.iter().map(|v| v.to_f32()).collect();
        let cfg = SoftCrossEntropy::new();
        for backend in available_backends() {
            let cfg = cfg.backend(Some(backend));
            let mut g32 = vec![0.0f32; n * stride];
            let l32 = cfg
                .loss_and_grad(
                    MatRef::with_stride(&z32, n, c, stride).unwrap(),
                    &Targets::Dense(MatRef::new(&a32, n, c).unwrap()),
                    MatMut::with_stride(&mut g32, n, c, stride).unwrap(),
                )
                .unwrap();
            let pad = H::from_f32(7.0);
            let mut gh = vec![pad; n * stride];
            let lh = cfg
                .loss_and_grad(
                    MatRef::with_stride(&zh, n, c, stride).unwrap(),
                    &Targets::Dense(MatRef::new(&ah, n, c).unwrap()),
                    MatMut::with_stride(&mut gh, n, c, stride).unwrap(),
                )
                .unwrap();
            if exact {
                assert_eq!(
                    lh.to_bits(),
                    l32.to_bits(),
                    "{what} {backend}: loss {lh} vs {l32}"
                );
            } else {
                assert!(
                    (lh - l32).abs() <= 1e-6 * l32.abs(),
                    "{what} {backend}: loss {lh} vs {l32}"
                );
            }
            let tol = if exact { 0.0 } else { 1e-5 };
            for i in 0..n {
                for k in 0..stride {
                    let (got, at) = (gh[i * stride + k], i * stride + k);
                    let ok = if k < c {
                        // The roundings of the ends of the tolerance interval bracket every
                        // rounding inside it (rounding is monotonic).
                        let w = g32[at];
                        let err = tol * (w.abs() + a32[i * c + k] / n as f32);
                        let (lo, hi) = (w - err, w + err);
                        let g = got.to_f32();
                        (H::from_f32(lo).to_f32() <= g && g <= H::from_f32(hi).to_f32())
                            || (g.is_nan() && w.is_nan())
                    } else {
                        got == pad
                    };
                    assert!(ok, "{what} {backend}: row {i} col {k}: {got:?} vs {}", g32[at]);
                }
            }
        }
    }
    check::<softnce::bf16>("bf16", false);
    check::<softnce::f16>("f16", true);
}

/// Structured `bf16` rows (MixUp targets with smoothing, `SoftCrossEntropy`, and hard labels
/// with smoothing, `HardCrossEntropy`) on rows long enough for the paired sweeps and at
/// every alignment (odd stride): the gradient, explicit classes included, is the rounding of
/// the `f32` kernel's gradient on the same widened logits, within `1e-5` relative to its
/// terms (`|g| + 1/N`; the paired sweeps reassociate the sums), and the padding stays
/// untouched. Runs on every backend, NEON included.
#[test]
fn paired_bf16_structured_gradient_is_the_rounded_f32_gradient() {
    use softnce::bf16;
    let (n, c, stride) = (67usize, 1037usize, 1040usize);
    let mut next = common::uniform(11);
    let zh: Vec<bf16> = (0..n * stride)
        .map(|_| bf16::from_f32(8.0 * next() - 4.0))
        .collect();
    let z32: Vec<f32> = zh.iter().map(|v| v.to_f32()).collect();
    let labels: Vec<u32> = (0..n).map(|_| (next() * c as f32) as u32 % c as u32).collect();
    let partner: Vec<u32> = (0..n).map(|_| (next() * c as f32) as u32 % c as u32).collect();
    let (pad, lambda) = (bf16::from_f32(7.0), RowParam::Batch(0.3));
    let check = |what: &str, (l32, g32): (f32, &[f32]), (lh, gh): (f32, &[bf16])| {
        assert!((lh - l32).abs() <= 1e-6 * l32.abs(), "{what}: loss {lh} vs {l32}");
        for i in 0..n {
            for k in 0..stride {
                let (got, at) = (gh[i * stride + k].to_f32(), i * stride + k);
                let ok = if k < c {
                    let w = g32[at];
                    let err = 1e-5 * (w.abs() + 1.0 / n as f32);
                    let (lo, hi) = (bf16::from_f32(w - err), bf16::from_f32(w + err));
                    lo.to_f32() <= got && got <= hi.to_f32()
                } else {
                    got == 7.0
                };
                assert!(ok, "{what}: row {i} col {k}: {got} vs {}", g32[at]);
            }
        }
    };
    let (z32, zh) = (
        MatRef::with_stride(&z32, n, c, stride).unwrap(),
        MatRef::with_stride(&zh, n, c, stride).unwrap(),
    );
    for backend in available_backends() {
        let (mut g32, mut gh) = (vec![0.0f32; n * stride], vec![pad; n * stride]);
        let soft = SoftCrossEntropy::new().backend(Some(backend));
        let l32 = soft
            .loss_and_grad(
                z32,
                &Targets::mixed(&labels, &partner, lambda, 0.1),
                MatMut::with_stride(&mut g32, n, c, stride).unwrap(),
            )
            .unwrap();
        let lh = soft
            .loss_and_grad(
                zh,
                &Targets::mixed(&labels, &partner, lambda, 0.1),
                MatMut::with_stride(&mut gh, n, c, stride).unwrap(),
            )
            .unwrap();
        check(&format!("mixed {backend}"), (l32, &g32), (lh, &gh));
        let (mut g32, mut gh) = (vec![0.0f32; n * stride], vec![pad; n * stride]);
        let hard = HardCrossEntropy::new().smoothing(0.1).backend(Some(backend));
        let l32 = hard
            .loss_and_grad(z32, &labels, MatMut::with_stride(&mut g32, n, c, stride).unwrap())
            .unwrap();
        let lh = hard
            .loss_and_grad(zh, &labels, MatMut::with_stride(&mut gh, n, c, stride).unwrap())
            .unwrap();
        check(&format!("hard {backend}"), (l32, &g32), (lh, &gh));
    }
}

/// Temperatures whose inverse overflows run on the reference, which always scans dense
/// weights: with `check_targets(false)` an invalid weight is then an error, never a panic
/// (soft CE and soft InfoNCE).
#[test]
fn unchecked_targets_on_the_reference_path_do_not_panic() {
    let z = [0.5f32, -0.5, 1.0, 0.0];
    let a = [0.5f32, -0.5, 0.0, 1.0];
    let z = MatRef::new(&z, 2, 2).unwrap();
    let t = Targets::Dense(MatRef::new(&a, 2, 2).unwrap());
    for backend in available_backends() {
        let r = SoftCrossEntropy::new()
            .temperature(1e-40)
            .check_targets(false)
            .backend(Some(backend))
            .loss(z, &t);
        assert!(
            matches!(r, Err(softnce::Error::InvalidTargetWeight { row: 0, col: 1, .. })),
            "{backend}: {r:?}"
        );
        let r = softnce::SoftInfoNce::new()
            .temperature(1e-40)
            .check_targets(false)
            .backend(Some(backend))
            .loss(z, &t);
        assert!(
            matches!(r, Err(softnce::Error::InvalidTargetWeight { row: 0, col: 1, .. })),
            "{backend} InfoNCE: {r:?}"
        );
    }
}

/// `check_targets(false)` skips the scan of dense weights: an invalid weight is then no
/// error and no panic, while the default reports it.
#[test]
fn unchecked_targets_skip_the_scan() {
    let z = [0.5f32, -0.5, 1.0, 0.0];
    let a = [0.5f32, -0.5, 0.0, 1.0];
    let z = MatRef::new(&z, 2, 2).unwrap();
    let t = Targets::Dense(MatRef::new(&a, 2, 2).unwrap());
    assert!(matches!(
        SoftCrossEntropy::new().loss(z, &t),
        Err(softnce::Error::InvalidTargetWeight { row: 0, col: 1, .. })
    ));
    for backend in available_backends() {
        assert!(SoftCrossEntropy::new()
            .check_targets(false)
            .backend(Some(backend))
            .loss(z, &t)
            .is_ok());
    }
}

/// A temperature so small that `1/t` overflows `f32` still gives the reference's result
/// (such calls are routed to the reference).
#[test]
fn subnormal_temperature_matches_reference() {
    let z = [1e-38f32, 0.0, -1e-38, 2e-38, -3e-38, 0.0];
    let y = [0u32, 2];
    let z = MatRef::new(&z, 2, 3).unwrap();
    let cfg = HardCrossEntropy::new().temperature(1e-39).smoothing(0.1);
    let r = reference::hard_cross_entropy(&cfg, z, &y, &Request::loss_and_grad()).unwrap();
    for backend in available_backends() {
        let mut g = vec![0.0f32; 6];
        let mut rows = vec![0.0f32; 2];
        let loss = cfg
            .backend(Some(backend))
            .compute(
                z,
                &y,
                Outputs::new()
                    .grad_logits(MatMut::new(&mut g, 2, 3).unwrap())
                    .row_losses(&mut rows),
            )
            .unwrap();
        // 1/t alone exceeds f32's range: compare with the reference rounded to f32.
        assert!(
            close(loss as f64, r.loss, 1e-5 * r.loss.abs()),
            "{backend}: {loss} vs {}",
            r.loss
        );
        for (k, (&got, &want)) in g.iter().zip(&r.grad_logits).enumerate() {
            let want = want as f32;
            assert!(
                got == want || (got - want).abs() <= 1e-5 * want.abs(),
                "{backend}: grad[{k}] {got} vs {want}"
            );
        }
        assert!(
            g.iter().any(|x| x.is_infinite()),
            "the gradient overflows f32 here"
        );
    }
}

/// The vectorised target scan finds every kind of bad weight at every position of rows of
/// many widths (unrolled body, single vectors, tails), and names the first one, on every
/// backend.
#[test]
fn target_scan_finds_bad_weights_everywhere() {
    for c in [1usize, 3, 16, 17, 64, 65, 100, 1000] {
        let n = 3;
        let z = vec![0.0f32; n * c];
        let z = MatRef::new(&z, n, c).unwrap();
        let positions = [0, c / 2, c - 1];
        for bad in [-1e-30f32, -1.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            for &col in &positions {
                let mut a = vec![0.25f32; n * c];
                a[c + col] = bad;
                let t = Targets::Dense(MatRef::new(&a, n, c).unwrap());
                for backend in available_backends() {
                    let err = SoftCrossEntropy::new()
                        .backend(Some(backend))
                        .loss(z, &t)
                        .unwrap_err();
                    match err {
                        softnce::Error::InvalidTargetWeight {
                            row, col: k, value, ..
                        } => {
                            assert_eq!((row, k), (1, col), "{backend} c={c} bad={bad}");
                            assert!(value.to_bits() == bad.to_bits() || (value.is_nan() && bad.is_nan()));
                        }
                        other => panic!("{backend} c={c} bad={bad}: {other:?}"),
                    }
                }
            }
        }
        // -0.0 is a valid weight.
        let a = vec![-0.0f32; n * c];
        let t = Targets::Dense(MatRef::new(&a, n, c).unwrap());
        for backend in available_backends() {
            assert!(SoftCrossEntropy::new().backend(Some(backend)).loss(z, &t).is_ok());
        }
    }
}

/// Dense CE checks its target weights inside the kernel. Bad weights in rows the kernel
/// handles specially (NaN, +∞ or no finite logit: the statistics sweep is skipped) are
/// still found and named, on every backend, with and without a gradient, in f32 and bf16,
/// on one thread and on many (large shapes).
#[test]
fn fused_target_check_covers_special_rows_and_large_shapes() {
    for (n, c) in [(4usize, 33usize), (64, 4099)] {
        for special in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 0.0] {
            let mut z = vec![0.25f32; n * c];
            let row = n - 2;
            z[row * c..(row + 1) * c].fill(special);
            let mut a = vec![0.5f32; n * c];
            let col = c - 3;
            a[row * c + col] = -2.0;
            a[(n - 1) * c] = f32::NAN; // a later bad row: the first one is named
            let zm = MatRef::new(&z, n, c).unwrap();
            let t = Targets::Dense(MatRef::new(&a, n, c).unwrap());
            for backend in available_backends() {
                let cfg = SoftCrossEntropy::new().backend(Some(backend));
                let mut g = vec![0.0f32; n * c];
                for err in [
                    cfg.loss(zm, &t).unwrap_err(),
                    cfg.loss_and_grad(zm, &t, MatMut::new(&mut g, n, c).unwrap())
                        .unwrap_err(),
                ] {
                    assert_eq!(
                        err,
                        softnce::Error::InvalidTargetWeight {
                            what: "dense target",
                            row,
                            col,
                            value: -2.0
                        },
                        "{backend} n={n} c={c} logits {special}"
                    );
                }
                // The same in bf16.
                let zb: Vec<half::bf16> = z.iter().map(|&v| half::bf16::from_f32(v)).collect();
                let ab: Vec<half::bf16> = a.iter().map(|&v| half::bf16::from_f32(v)).collect();
                let tb = Targets::Dense(MatRef::new(&ab, n, c).unwrap());
                let err = cfg.loss(MatRef::new(&zb, n, c).unwrap(), &tb).unwrap_err();
                assert!(
                    matches!(err, softnce::Error::InvalidTargetWeight { row: r, col: k, .. } if (r, k) == (row, col)),
                    "{backend} bf16: {err:?}"
                );
            }
        }
    }
}

/// The in-kernel test cannot tell an invalid weight from finite weights whose sum
/// overflows `f32`; the exact rescan then finds nothing wrong and the result stands (the
/// same as without the check).
#[test]
fn fused_target_check_accepts_overflowing_sums() {
    let (n, c) = (3usize, 40usize);
    let z: Vec<f32> = (0..n * c).map(|k| (k % 7) as f32 * 0.3).collect();
    let a = vec![3e37f32; n * c]; // each row sums to 1.2e39 > f32::MAX
    let zm = MatRef::new(&z, n, c).unwrap();
    let t = Targets::Dense(MatRef::new(&a, n, c).unwrap());
    for backend in available_backends() {
        let cfg = SoftCrossEntropy::new().backend(Some(backend));
        let checked = cfg.loss(zm, &t).expect("valid weights");
        let unchecked = cfg.check_targets(false).loss(zm, &t).unwrap();
        assert_eq!(checked.to_bits(), unchecked.to_bits(), "{backend}");
    }
}
