//! Half-precision logits, targets and gradients (`bf16`, `f16`) on every backend, against the
//! f64 reference run on the same values (every half value widens exactly): every
//! cross-entropy variant and soft-target InfoNCE with every target form.
//!
//! Tolerances: the kernels compute in `f32` from the exactly widened inputs, so losses get
//! the `f32` tolerance of the `f32` tests; a gradient element is computed in `f32` and
//! rounded once to the caller's type, so it may also differ by half a unit in the last
//! place of that type: `u·|g|` with `u = 2⁻⁸` (bf16, 8 significant bits) or `2⁻¹¹` (f16), plus
//! `2⁻²⁵` absolute for f16's subnormals. Values beyond f16's range (65504) must round to
//! `±∞`. InfoNCE scores are `C`-term sums, so their tolerance grows with the row's largest
//! `|z/t − log η|` exactly as in the `f32` tests. Dense bf16 InfoNCE may round each
//! probability to bf16 in its accumulator product (the AVX-512 BF16 path): its gradient
//! elements get `u·|g + k·a_p|` more, `k = scale/t` (derived in the dedicated test below).

mod common;
use common::{cases, close};

use half::{bf16, f16};
use proptest::prelude::*;
use softnce::reference::{self, Request};
use softnce::{
    available_backends, Element, HardCrossEntropy, MatMut, MatRef, Outputs, Reduction, RowParam,
    SoftCrossEntropy, SparseTargets, Targets,
};

const CLASSES: &[usize] = &[1, 7, 8, 9, 15, 16, 17, 31, 33, 100, 1000];

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
    lambda: f32,
    eps: f32,
    counts: Vec<usize>,
    entries: Vec<(u32, f32)>,
    floor: f32,
    upstream: Vec<f32>,
    reduction: Reduction,
}

fn case() -> impl Strategy<Value = Case> {
    (
        1usize..6,
        prop::sample::select(CLASSES),
        0usize..3,
        prop::sample::select(vec![0.05f32, 1.0, 3.0]),
        prop::sample::select(vec![Reduction::Mean, Reduction::Sum, Reduction::None]),
    )
        .prop_flat_map(|(n, c, pad, t, reduction)| {
            let stride = c + pad;
            (
                Just((n, c, stride, t, reduction)),
                prop::collection::vec(
                    prop_oneof![
                        10 => -6.0f32..6.0,
                        1 => prop_oneof![Just(80.0f32), Just(-1e4), -1e4f32..1e4],
                        1 => Just(f32::NEG_INFINITY),
                    ],
                    n * stride,
                ),
                prop::collection::vec(prop_oneof![Just(0.0f32), 0.0f32..1.0], n * c),
                prop::collection::vec((0..c as u32, 0..c as u32), n),
                (
                    0.0f32..1.0,
                    prop_oneof![Just(0.0f32), Just(0.1), 0.0f32..1.0],
                    0.0f32..0.05,
                ),
                prop::collection::vec(0usize..4, n),
                prop::collection::vec((0..c as u32, 0.0f32..1.0), 3 * n),
                prop::collection::vec(-2.0f32..2.0, n),
                prop::option::weighted(0.1, 0..n),
            )
        })
        .prop_map(
            |(
                (n, c, stride, t, reduction),
                mut logits,
                dense,
                ab,
                (lambda, eps, floor),
                counts,
                entries,
                upstream,
                nan,
            )| {
                if let Some(r) = nan {
                    logits[r * stride] = f32::NAN;
                }
                let (labels, partner) = ab.into_iter().unzip();
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
                    counts,
                    entries: entries.into_iter().take(total).collect(),
                    floor,
                    upstream,
                    reduction,
                }
            },
        )
}

/// Unit roundoff and absolute floor of the element type's rounding.
fn rounding<T: Element>() -> (f64, f64) {
    if std::any::TypeId::of::<T>() == std::any::TypeId::of::<bf16>() {
        (2f64.powi(-8), 0.0)
    } else {
        (2f64.powi(-11), 2f64.powi(-25))
    }
}

fn run<T: Element>(case: &Case) {
    let Case {
        n,
        c,
        stride,
        t,
        reduction,
        ..
    } = *case;
    let h = |v: &[f32]| -> Vec<T> { v.iter().map(|&x| T::from_f32(x)).collect() };
    let logits = h(&case.logits);
    let dense = h(&case.dense);
    let z = MatRef::with_stride(&logits, n, c, stride).unwrap();
    let mut indptr = vec![0usize];
    for &k in &case.counts {
        indptr.push(indptr.last().unwrap() + k);
    }
    let classes: Vec<u32> = case.entries.iter().map(|e| e.0).collect();
    let weights: Vec<f32> = case.entries.iter().map(|e| e.1).collect();
    let forms: Vec<(&str, Targets<'_, T>)> = vec![
        ("dense", Targets::Dense(MatRef::new(&dense, n, c).unwrap())),
        ("hard", Targets::hard(&case.labels, case.eps)),
        (
            "mixed",
            Targets::mixed(
                &case.labels,
                &case.partner,
                RowParam::Batch(case.lambda),
                case.eps,
            ),
        ),
        (
            "sparse",
            Targets::Sparse(SparseTargets::new(
                &indptr,
                &classes,
                &weights,
                RowParam::Batch(case.floor),
            )),
        ),
    ];
    let up = (reduction == Reduction::None).then_some(&case.upstream[..]);
    let req = Request {
        grad_logits: true,
        grad_targets: false,
        upstream: up,
    };
    let (u, abs) = rounding::<T>();
    let check_loss = |what: &str, loss: f32, rows: &[f32], r: &reference::RefOutput| {
        let loss_tol = |b: f64| 3e-5 * b.abs().max(1.0);
        assert!(
            close(loss as f64, r.loss, loss_tol(r.loss)),
            "{what}: loss {loss} vs {}",
            r.loss
        );
        for (i, (&a, &b)) in rows.iter().zip(&r.row_losses).enumerate() {
            assert!(close(a as f64, b, loss_tol(b)), "{what}: row {i}: {a} vs {b}");
        }
    };
    let check = |what: &str, loss: f32, rows: &[f32], g: &[T], r: &reference::RefOutput| {
        check_loss(what, loss, rows, r);
        let scale = r
            .grad_logits
            .iter()
            .filter(|v| v.is_finite())
            .fold(1.0 / t as f64, |m, v| m.max(v.abs()));
        for (k, &b) in r.grad_logits.iter().enumerate() {
            let (i, j) = (k / c, k % c);
            let a = g[i * stride + j].to_f64();
            let tol = 3e-5 * scale + u * b.abs() + abs;
            assert!(close(a, b, tol), "{what}: grad[{i},{j}] {a} vs {b} (tol {tol})");
        }
    };
    for backend in available_backends() {
        for (name, targets) in &forms {
            let cfg = SoftCrossEntropy::new()
                .temperature(t)
                .reduction(reduction)
                .backend(Some(backend));
            let r = reference::soft_cross_entropy(&cfg, z, targets, &req).unwrap();
            let mut g = vec![T::from_f32(7.0); n * stride];
            let mut rows = vec![0.0f32; n];
            let mut out = Outputs::new()
                .grad_logits(MatMut::with_stride(&mut g, n, c, stride).unwrap())
                .row_losses(&mut rows);
            if let Some(u) = up {
                out = out.upstream(u);
            }
            let loss = cfg.compute(z, targets, out).unwrap();
            check(
                &format!("soft-ce/{name} {backend} n={n} c={c} t={t} {reduction:?}"),
                loss,
                &rows,
                &g,
                &r,
            );
            // Without a gradient (the sweeps then store no exponentials).
            let mut rows = vec![0.0f32; n];
            let loss = cfg
                .compute(z, targets, Outputs::new().row_losses(&mut rows))
                .unwrap();
            check_loss(
                &format!("soft-ce/{name} loss only {backend} n={n} c={c} t={t} {reduction:?}"),
                loss,
                &rows,
                &r,
            );
            // Padding between gradient rows is never written.
            for i in 0..n {
                for k in c..stride {
                    if i * stride + k < g.len() {
                        assert_eq!(g[i * stride + k].to_f32(), 7.0, "padding written");
                    }
                }
            }
        }
        let ignore = Some(case.labels[0]).filter(|_| n > 1);
        let cfg = HardCrossEntropy::new()
            .temperature(t)
            .smoothing(case.eps)
            .ignore_index(ignore)
            .reduction(reduction)
            .backend(Some(backend));
        let r = reference::hard_cross_entropy(&cfg, z, &case.labels, &req).unwrap();
        let mut g = vec![T::from_f32(7.0); n * stride];
        let mut rows = vec![0.0f32; n];
        let mut out = Outputs::new()
            .grad_logits(MatMut::with_stride(&mut g, n, c, stride).unwrap())
            .row_losses(&mut rows);
        if let Some(u) = up {
            out = out.upstream(u);
        }
        let loss = cfg.compute(z, &case.labels, out).unwrap();
        check(
            &format!("hard-ce {backend} n={n} c={c} t={t} {reduction:?}"),
            loss,
            &rows,
            &g,
            &r,
        );
        let mut rows = vec![0.0f32; n];
        let loss = cfg
            .compute(z, &case.labels, Outputs::new().row_losses(&mut rows))
            .unwrap();
        check_loss(
            &format!("hard-ce loss only {backend} n={n} c={c} t={t} {reduction:?}"),
            loss,
            &rows,
            &r,
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(48),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn bf16_cross_entropy_matches_reference_on_every_backend(case in case()) {
        run::<bf16>(&case);
    }

    #[test]
    fn f16_cross_entropy_matches_reference_on_every_backend(case in case()) {
        run::<f16>(&case);
    }
}

/// The target class's gradient `softmax − 1` is formed in `f32` before the one rounding:
/// with a confident row the difference is about 2⁻¹⁶, and rounding the softmax to bf16 first
/// (1.0) would lose it entirely.
#[test]
fn target_class_gradient_is_rounded_once() {
    for backend in available_backends() {
        let z: Vec<bf16> = [12.0f32, 0.0, 0.0, 0.0]
            .iter()
            .map(|&x| bf16::from_f32(x))
            .collect();
        let z = MatRef::new(&z, 1, 4).unwrap();
        let mut g = vec![bf16::ZERO; 4];
        let cfg = HardCrossEntropy::new()
            .reduction(Reduction::Sum)
            .backend(Some(backend));
        cfg.loss_and_grad(z, &[0], MatMut::new(&mut g, 1, 4).unwrap())
            .unwrap();
        let want = -3.0 * (-12.0f64).exp() / (1.0 + 3.0 * (-12.0f64).exp());
        let got = g[0].to_f64();
        // f32 rounding of the softmax near 1 (a few 2⁻²⁴), then one bf16 rounding.
        let tol = 2f64.powi(-8) * want.abs() + 4.0 * 2f64.powi(-24);
        assert!(
            got != 0.0 && (got - want).abs() <= tol,
            "{backend}: {got} vs {want}"
        );
    }
}

/// Soft-target InfoNCE on half-precision data: every target form (dense with its target
/// gradient too), against the reference on the same values.
/// The kernel's value `a` (in `T`) agrees with the exact `b` within `tol`, counting the
/// format's range (f16: 65504): where `b` itself rounds to ±∞ the kernel must give that
/// infinity, and where a value within `tol` of `b` rounds to ±∞ (the kernel's `f32` result
/// may lie past the threshold while `b` does not) that infinity is accepted too.
fn close_in<T: Element>(a: f64, b: f64, tol: f64) -> bool {
    let rb = T::from_f64(b).to_f64();
    if rb.is_infinite() {
        return a == rb;
    }
    if a.is_infinite() && a.signum() == b.signum() {
        return T::from_f64(b + b.signum() * tol).to_f64() == a;
    }
    close(a, b, tol)
}

fn run_infonce<T: Element>(case: &Case, extra: usize) {
    let Case {
        n,
        c,
        stride,
        t,
        reduction,
        ..
    } = *case;
    let m = n + extra;
    let h = |v: &[f32]| -> Vec<T> { v.iter().map(|&x| T::from_f32(x)).collect() };
    let logits = h(&case.logits);
    let z = MatRef::with_stride(&logits, n, c, stride).unwrap();
    // Targets: the case's rows, then `extra` more made from the first ones.
    let dense: Vec<T> = h(&(0..m * c).map(|k| case.dense[k % (n * c)]).collect::<Vec<_>>());
    let labels: Vec<u32> = (0..m).map(|j| case.labels[j % n]).collect();
    let partner: Vec<u32> = (0..m).map(|j| case.partner[j % n]).collect();
    let indptr: Vec<usize> = (0..=m).map(|j| j.min(case.entries.len())).collect();
    let classes: Vec<u32> = case.entries.iter().take(m).map(|e| e.0).collect();
    let weights: Vec<f32> = case.entries.iter().take(m).map(|e| e.1).collect();
    let forms: Vec<(&str, Targets<'_, T>)> = vec![
        ("dense", Targets::Dense(MatRef::new(&dense, m, c).unwrap())),
        ("hard", Targets::hard(&labels, case.eps)),
        (
            "mixed",
            Targets::mixed(&labels, &partner, RowParam::Batch(case.lambda), case.eps),
        ),
        (
            "sparse",
            Targets::Sparse(SparseTargets::new(
                &indptr,
                &classes,
                &weights,
                RowParam::Batch(case.floor),
            )),
        ),
    ];
    let up = (reduction == Reduction::None).then_some(&case.upstream[..]);
    let (u, abs) = rounding::<T>();
    let rel = 3e-5 * (1.0 / t as f64).max(1.0) * (1.0 + (c as f64).sqrt() / 8.0);
    // Target rows carry mass up to C (dense weights below 1) or about 1 + C·floor.
    let mass = (c as f64).max(4.0 + 0.05 * c as f64);
    for backend in available_backends() {
        for (name, targets) in &forms {
            let is_dense = *name == "dense";
            let req = Request {
                grad_logits: true,
                grad_targets: is_dense,
                upstream: up,
            };
            let cfg = softnce::SoftInfoNce::new()
                .temperature(t)
                .offset(extra / 2)
                .reduction(reduction)
                .backend(Some(backend));
            let r = reference::soft_infonce(&cfg, z, targets, &req).unwrap();
            let mut g = vec![T::from_f32(7.0); n * stride];
            let mut gt = vec![T::from_f32(7.0); m * c];
            let mut rows = vec![0.0f32; n];
            let mut out = Outputs::new()
                .grad_logits(MatMut::with_stride(&mut g, n, c, stride).unwrap())
                .row_losses(&mut rows);
            if is_dense {
                out = out.grad_targets(MatMut::new(&mut gt, m, c).unwrap());
            }
            if let Some(u) = up {
                out = out.upstream(u);
            }
            let loss = cfg.compute(z, targets, out).unwrap();
            let what = format!("soft-infonce/{name} {backend} n={n} m={m} c={c} t={t} {reduction:?}");
            // Scores are sums of C products in f32: their error grows with the largest
            // |u| = |z/t − log η| of the row (logits reach ±1e4 here), as in the f32 tests.
            let umax: Vec<f64> = (0..n)
                .map(|i| {
                    (0..c)
                        .map(|k| logits[i * stride + k].to_f64() / t as f64 + (c as f64).ln())
                        .filter(|x| x.is_finite())
                        .fold(0.0f64, |a, x| a.max(x.abs()))
                })
                .collect();
            let delta: Vec<f64> = umax
                .iter()
                .map(|&u| (c + m + 8) as f64 * f32::EPSILON as f64 * mass * (1.0 + u))
                .collect();
            let row_tol = |i: usize, b: f64| 4.0 * delta[i] + rel * b.abs().max(1.0);
            let loss_tol: f64 = (0..n).map(|i| row_tol(i, r.row_losses[i])).sum();
            assert!(
                close(loss as f64, r.loss, loss_tol),
                "{what}: loss {loss} vs {}",
                r.loss
            );
            for (i, (&a, &b)) in rows.iter().zip(&r.row_losses).enumerate() {
                assert!(close(a as f64, b, row_tol(i, b)), "{what}: row {i}: {a} vs {b}");
            }
            let gscale = r
                .grad_logits
                .iter()
                .filter(|v| v.is_finite())
                .fold(mass / t as f64, |m, v| m.max(v.abs()));
            // bf16 dense targets may run the accumulator product on the AVX-512 BF16 dot
            // product with every probability rounded to bf16 (see the test below): a
            // gradient element may also move by u·k·O/l = u·|b + k·a_p|, k = scale/t.
            let bf16_dot = is_dense && std::any::TypeId::of::<T>() == std::any::TypeId::of::<bf16>();
            let row_k = |i: usize| {
                let scale = match reduction {
                    Reduction::Mean => 1.0 / n as f64,
                    Reduction::Sum => 1.0,
                    Reduction::None => case.upstream[i] as f64,
                };
                scale / t as f64
            };
            for (k, &b) in r.grad_logits.iter().enumerate() {
                let (i, j) = (k / c, k % c);
                let a = g[i * stride + j].to_f64();
                let dot = if bf16_dot {
                    u * (b + row_k(i) * dense[(extra / 2 + i) * c + j].to_f64()).abs()
                } else {
                    0.0
                };
                assert!(
                    close_in::<T>(a, b, rel * gscale + u * b.abs() + abs + dot),
                    "{what}: grad[{i},{j}] {a} vs {b}"
                );
            }
            if is_dense {
                let tscale = r
                    .grad_targets
                    .iter()
                    .filter(|v| v.is_finite())
                    .fold(1.0f64, |m, v| m.max(v.abs()));
                for (k, &b) in r.grad_targets.iter().enumerate() {
                    let a = gt[k].to_f64();
                    // Σ_i scale_i (P_ij − [j = pos]) u_i: each term carries the probability
                    // error of its scores times |u_i| (as in the fuzz target's bound).
                    let eps = f32::EPSILON as f64;
                    let prop: f64 = (0..n)
                        .map(|i| {
                            let sc = match reduction {
                                Reduction::Mean => 1.0 / n as f64,
                                Reduction::Sum => 1.0,
                                Reduction::None => (case.upstream[i] as f64).abs(),
                            };
                            sc * umax[i] * (4.0 * delta[i] + (n + 4) as f64 * eps)
                        })
                        .sum();
                    assert!(
                        close_in::<T>(a, b, prop + rel * tscale * n as f64 + u * b.abs() + abs),
                        "{what}: grad_targets[{k}] {a} vs {b}"
                    );
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(32),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn bf16_infonce_matches_reference_on_every_backend(case in case(), extra in 0usize..4) {
        run_infonce::<bf16>(&case, extra);
    }

    #[test]
    fn f16_infonce_matches_reference_on_every_backend(case in case(), extra in 0usize..4) {
        run_infonce::<f16>(&case, extra);
    }
}

/// A case the proptest found (a CI run): `f16` InfoNCE at `t = 0.05` with a masked logit,
/// where the exact target-gradient element is −65438.5 (finite in `f16`) and the `f32`
/// kernel computes −65760.1 on every backend, well inside this row's bound (its scores are
/// ~10⁵ in `f32`) but past the format's overflow threshold (65520): the `f16` result is −∞,
/// which [`close_in`] accepts because a value within the tolerance rounds to it.
#[test]
fn f16_infonce_target_gradient_at_the_overflow_threshold() {
    let mut logits = vec![0.0f32; 20];
    logits[5] = 80.0;
    logits[10] = f32::NEG_INFINITY;
    logits[15] = -9894.0205;
    let mut dense = vec![0.0f32; 18];
    dense[5] = 0.833936;
    dense[9] = 0.78333455;
    let case = Case {
        n: 2,
        c: 9,
        stride: 10,
        t: 0.05,
        logits,
        dense,
        labels: vec![0, 0],
        partner: vec![0, 0],
        lambda: 0.0,
        eps: 0.0,
        counts: vec![0, 0],
        entries: vec![],
        floor: 0.0,
        upstream: vec![0.0, 0.0],
        reduction: Reduction::Sum,
    };
    run_infonce::<f16>(&case, 3);
}

/// Structured InfoNCE converts inside its kernel: on several full lane groups (37 rows over
/// 1000 classes, padded stride) a half-precision call computes exactly what the `f32` call
/// computes on the widened values, rounded once: losses equal, gradients equal after
/// rounding the `f32` gradient.
#[test]
fn structured_infonce_half_is_the_f32_result_rounded_once() {
    fn check<T: Element>() {
        let (n, c, stride) = (37usize, 1000usize, 1003usize);
        let logits: Vec<T> = (0..n * stride)
            .map(|k| T::from_f32(((k * 7919) % 1000) as f32 / 125.0 - 4.0))
            .collect();
        let wide: Vec<f32> = logits.iter().map(|v| v.to_f32()).collect();
        let labels: Vec<u32> = (0..n as u32).map(|i| (i * 37) % c as u32).collect();
        let partner: Vec<u32> = labels.iter().rev().copied().collect();
        for backend in available_backends() {
            let cfg = softnce::SoftInfoNce::new()
                .temperature(0.5)
                .backend(Some(backend));
            let t_h = Targets::<T>::mixed(&labels, &partner, RowParam::Batch(0.7), 0.1);
            let t_f = Targets::<f32>::mixed(&labels, &partner, RowParam::Batch(0.7), 0.1);
            let (mut gh, mut gf) = (vec![T::from_f32(0.0); n * c], vec![0.0f32; n * c]);
            let (mut rh, mut rf) = (vec![0.0f32; n], vec![0.0f32; n]);
            let zh = MatRef::with_stride(&logits, n, c, stride).unwrap();
            let zf = MatRef::with_stride(&wide, n, c, stride).unwrap();
            let lh = cfg
                .compute(
                    zh,
                    &t_h,
                    Outputs::new()
                        .grad_logits(MatMut::new(&mut gh, n, c).unwrap())
                        .row_losses(&mut rh),
                )
                .unwrap();
            let lf = cfg
                .compute(
                    zf,
                    &t_f,
                    Outputs::new()
                        .grad_logits(MatMut::new(&mut gf, n, c).unwrap())
                        .row_losses(&mut rf),
                )
                .unwrap();
            assert_eq!(lh, lf, "{backend}: loss");
            assert_eq!(rh, rf, "{backend}: row losses");
            for (k, (&h, &f)) in gh.iter().zip(&gf).enumerate() {
                assert_eq!(h, T::from_f32(f), "{backend}: grad[{k}]");
            }
        }
    }
    check::<bf16>();
    check::<f16>();
}

/// Dense bf16 InfoNCE on AVX-512 with BF16 runs both tile products on `vdpbf16ps`: the
/// scores exactly as the `f32` kernel would (products of two bf16 are exact in f32), the
/// accumulator `O_i = Σ_j P_ij a_j` with every `P_ij` rounded to bf16 (relative error at
/// most `u = 2⁻⁸`). So a gradient element `g = k(O/l − a_p)` may be off by `k·u·(O/l)` on top
/// of its final rounding, where `O/l = g_ref/k + a_p` comes from the reference gradient.
/// Checked here on every backend (only AVX-512 with BF16 takes the bf16 path; the others
/// must meet the bound with room to spare), on shapes with odd `C` and `M` and rows enough
/// for the kernel's sub-blocks, with moderately peaked scores.
#[test]
fn bf16_dense_infonce_accuracy_of_the_dot_product_path() {
    for &(n, m, c, t) in &[
        (67usize, 67usize, 37usize, 1.0f32),
        (300, 301, 301, 0.1),
        (40, 45, 1000, 0.5),
    ] {
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let mut rnd = move || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32
        };
        let z: Vec<bf16> = (0..n * c).map(|_| bf16::from_f32(4.0 * rnd() - 2.0)).collect();
        let a: Vec<bf16> = (0..m * c)
            .map(|_| bf16::from_f32(if rnd() < 0.3 { 0.0 } else { rnd() }))
            .collect();
        let zm = MatRef::new(&z, n, c).unwrap();
        let am = MatRef::new(&a, m, c).unwrap();
        let targets = Targets::Dense(am);
        let offset = (m - n) / 2;
        for backend in available_backends() {
            let cfg = softnce::SoftInfoNce::new()
                .temperature(t)
                .offset(offset)
                .backend(Some(backend));
            let r = reference::soft_infonce(&cfg, zm, &targets, &Request::loss_and_grad()).unwrap();
            let mut g = vec![bf16::ZERO; n * c];
            let loss = cfg
                .loss_and_grad(zm, &targets, MatMut::new(&mut g, n, c).unwrap())
                .unwrap();
            // Scores as accurate as in f32: the loss keeps the f32 tolerance.
            assert!(
                close(loss as f64, r.loss, 1e-5 * r.loss.abs().max(1.0)),
                "{backend} {n}x{m}x{c}: loss {loss} vs {}",
                r.loss
            );
            let k = 1.0 / (n as f64 * t as f64);
            let mut worst = 0.0f64;
            for i in 0..n {
                for col in 0..c {
                    let b = r.grad_logits[i * c + col];
                    let o_over_l = b / k + a[(offset + i) * c + col].to_f64();
                    let tol = 2f64.powi(-8) * (b.abs() + k * o_over_l.abs()) + 1e-5 * k;
                    let err = (g[i * c + col].to_f64() - b).abs();
                    worst = worst.max(err / tol);
                    assert!(
                        err <= tol,
                        "{backend} {n}x{m}x{c}: grad[{i},{col}] {} vs {b}",
                        g[i * c + col]
                    );
                }
            }
            println!("{backend} {n}x{m}x{c} t={t}: worst gradient error {worst:.3} of the bound");
        }
    }
}
