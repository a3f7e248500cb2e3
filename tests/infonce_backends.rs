//! The fused dense InfoNCE kernel on every backend this CPU can run, forced per call,
//! against the f64 reference: shapes that straddle the vector width, the 4 × 4 micro-tile,
//! the target tile and the row block in all three dimensions; `M > N` with offsets;
//! temperatures 0.05…20; non-uniform noise; masked (−∞) and NaN logits; every reduction;
//! the gradient with respect to the targets.

mod common;
use common::{cases, close};

use proptest::prelude::*;
use softnce::reference::{self, RefOutput, Request};
use softnce::{available_backends, MatMut, MatRef, Noise, Outputs, Reduction, SoftInfoNce, Targets};

#[derive(Debug, Clone)]
struct Case {
    n: usize,
    m: usize,
    c: usize,
    offset: usize,
    t: f32,
    logits: Vec<f32>,
    targets: Vec<f32>,
    noise: Option<Vec<f32>>,
    upstream: Vec<f32>,
    reduction: Reduction,
}

fn case() -> impl Strategy<Value = Case> {
    (
        1usize..41,
        0usize..24,
        prop::sample::select(vec![1usize, 3, 8, 15, 16, 17, 33, 100, 1000, 2049]),
        prop::sample::select(vec![0.05f32, 0.3, 1.0, 4.0, 20.0]),
        prop::sample::select(vec![Reduction::Mean, Reduction::Sum, Reduction::None]),
        any::<bool>(),
    )
        .prop_flat_map(|(n, extra, c, t, reduction, nonuniform)| {
            let m = n + extra;
            (
                Just((n, m, c, t, reduction)),
                0..=extra,
                prop::collection::vec(
                    prop_oneof![12 => -4.0f32..4.0, 1 => Just(f32::NEG_INFINITY), 1 => Just(30.0f32)],
                    n * c,
                ),
                prop::collection::vec(prop_oneof![1 => Just(0.0f32), 3 => 0.0f32..1.0], m * c),
                prop::option::weighted(
                    if nonuniform { 0.99 } else { 0.01 },
                    prop::collection::vec(0.01f32..1.0, c),
                ),
                prop::collection::vec(-2.0f32..2.0, n),
                prop::option::weighted(0.05, 0..n),
            )
        })
        .prop_map(
            |((n, m, c, t, reduction), offset, mut logits, targets, noise, upstream, nan_row)| {
                if let Some(r) = nan_row {
                    logits[r * c] = f32::NAN;
                }
                Case {
                    n,
                    m,
                    c,
                    offset,
                    t,
                    logits,
                    targets,
                    noise,
                    upstream,
                    reduction,
                }
            },
        )
}

/// Compares at the scale of the largest finite reference value, or `floor` (the natural size
/// of the quantity, so that exact zeros are compared against f32 rounding of that size).
fn check(what: &str, got: &[f32], want: &[f64], rel: f64, floor: f64) {
    let scale = want
        .iter()
        .filter(|v| v.is_finite())
        .fold(floor.max(1e-30), |s, v| s.max(v.abs()));
    for (k, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            close(g as f64, w, rel * scale),
            "{what}[{k}]: {g} vs {w} (scale {scale})"
        );
    }
}

fn run(case: &Case) {
    let Case {
        n, m, c, offset, t, ..
    } = *case;
    let z = MatRef::new(&case.logits, n, c).unwrap();
    let a = Targets::Dense(MatRef::new(&case.targets, m, c).unwrap());
    let noise = case.noise.as_deref().map_or(Noise::Uniform, Noise::Probs);
    let cfg = SoftInfoNce::new()
        .temperature(t)
        .offset(offset)
        .noise(noise)
        .reduction(case.reduction);
    let up = (case.reduction == Reduction::None).then_some(&case.upstream[..]);
    let req = Request {
        grad_logits: true,
        grad_targets: true,
        upstream: up,
    };
    let r: RefOutput = reference::soft_infonce(&cfg, z, &a, &req).unwrap();
    // f32 accumulation over C terms (scores up to ~|z|·Σa/t) bounds the agreement.
    let rel = 2e-5 * (1.0 + (c as f64).sqrt() / 8.0) * (1.0 / t as f64).max(1.0);
    // Natural sizes: |∂l/∂z_i| <= scale_i/t · max a; |∂L/∂a_j| <= Σ_i scale_i · 2 max|g_i|.
    let scales: Vec<f64> = (0..n)
        .map(|i| match case.reduction {
            Reduction::Mean => 1.0 / n as f64,
            Reduction::Sum => 1.0,
            Reduction::None => case.upstream[i].abs() as f64,
        })
        .collect();
    let max_a = case.targets.iter().fold(0.0f64, |m, &v| m.max(v as f64));
    let log_eta: Vec<f64> = match &case.noise {
        Some(p) => p.iter().map(|&v| (v as f64).ln()).collect(),
        None => vec![-(c as f64).ln(); c],
    };
    let max_g = case
        .logits
        .iter()
        .enumerate()
        .filter(|(_, z)| z.is_finite())
        .fold(0.0f64, |m, (k, &z)| {
            m.max((z as f64 / t as f64 - log_eta[k % c]).abs())
        });
    let gl_floor = scales.iter().fold(0.0f64, |m, &s| m.max(s)) / t as f64 * max_a;
    let gt_floor = 2.0 * scales.iter().sum::<f64>() * max_g;
    for backend in available_backends() {
        let mut g = vec![7.0f32; n * c];
        let mut ga = vec![7.0f32; m * c];
        let mut rows = vec![0.0f32; n];
        let mut out = Outputs::new()
            .grad_logits(MatMut::new(&mut g, n, c).unwrap())
            .grad_targets(MatMut::new(&mut ga, m, c).unwrap())
            .row_losses(&mut rows);
        if let Some(u) = up {
            out = out.upstream(u);
        }
        let loss = cfg.backend(Some(backend)).compute(z, &a, out).unwrap();
        let what = format!("{backend} n={n} m={m} c={c} t={t} {:?}", case.reduction);
        let lt = rel * r.loss.abs().max(1.0);
        assert!(
            close(loss as f64, r.loss, lt),
            "{what}: loss {loss} vs {}",
            r.loss
        );
        for (i, (&got, &want)) in rows.iter().zip(&r.row_losses).enumerate() {
            assert!(
                close(got as f64, want, rel * want.abs().max(1.0)),
                "{what}: row {i}: {got} vs {want}"
            );
        }
        check(&format!("{what} grad_logits"), &g, &r.grad_logits, rel, gl_floor);
        // The target gradient of a class masked (−∞) in some row is ±∞ or NaN in exact
        // arithmetic (it weighs −∞ by probabilities that are never exactly 0); in f32 those
        // probabilities underflow to 0 earlier than in f64, so such entries are only required
        // to be non-finite where the kernel's own probabilities are non-zero: skip them.
        let masked: Vec<bool> = (0..c)
            .map(|k| (0..n).any(|i| case.logits[i * c + k] == f32::NEG_INFINITY))
            .collect();
        let keep: Vec<usize> = (0..m * c)
            .filter(|&e| !masked[e % c] || r.grad_targets[e].is_finite())
            .collect();
        let got: Vec<f32> = keep.iter().map(|&e| ga[e]).collect();
        let want: Vec<f64> = keep.iter().map(|&e| r.grad_targets[e]).collect();
        check(&format!("{what} grad_targets"), &got, &want, rel, gt_floor);
        // The loss-only call agrees and computes no gradient.
        let l2 = cfg.backend(Some(backend)).loss(z, &a).unwrap();
        assert!(
            l2.to_bits() == loss.to_bits()
                || (l2.is_nan() && loss.is_nan())
                || close(l2 as f64, loss as f64, lt)
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(64),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn dense_infonce_matches_reference_on_every_backend(case in case()) {
        run(&case);
    }
}

/// A problem large enough for several row blocks, target tiles and the parallel path; the
/// result does not depend on the number of threads.
#[test]
fn dense_infonce_large_and_thread_independent() {
    let (n, m, c) = (70usize, 150usize, 517usize);
    let mut next = common::uniform(7);
    let logits: Vec<f32> = (0..n * c).map(|_| 6.0 * next() - 3.0).collect();
    let targets: Vec<f32> = (0..m * c).map(|_| next()).collect();
    let z = MatRef::new(&logits, n, c).unwrap();
    let a = Targets::Dense(MatRef::new(&targets, m, c).unwrap());
    let cfg = SoftInfoNce::new().temperature(0.5).offset(m - n);
    let r = reference::soft_infonce(&cfg, z, &a, &Request::loss_and_grad()).unwrap();
    for backend in available_backends() {
        let mut results = Vec::new();
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut g = vec![f32::NAN; n * c]; // overwritten, never read
            let loss = pool.install(|| {
                cfg.backend(Some(backend))
                    .loss_and_grad(z, &a, MatMut::new(&mut g, n, c).unwrap())
                    .unwrap()
            });
            assert!(
                close(loss as f64, r.loss, 1e-4 * r.loss.abs()),
                "{backend}: {loss} vs {}",
                r.loss
            );
            check(
                &format!("{backend} {threads} threads"),
                &g,
                &r.grad_logits,
                1e-4,
                0.0,
            );
            results.push((loss.to_bits(), g));
        }
        assert!(
            results.windows(2).all(|w| w[0] == w[1]),
            "{backend}: depends on the thread count"
        );
    }
}

/// Wide rows (`C = 4099`, where the forward kernel switches to tiles of twice the width) with
/// more targets than two such tiles (1100, the last tile partial), a large offset, the
/// target gradient (whose pass keeps the narrower tile) and NaN-filled outputs, on every
/// backend.
#[test]
fn dense_infonce_wide_classes() {
    let (n, m, c) = (40usize, 1100usize, 4099usize);
    let mut next = common::uniform(23);
    let logits: Vec<f32> = (0..n * c).map(|_| 6.0 * next() - 3.0).collect();
    let targets: Vec<f32> = (0..m * c).map(|_| next()).collect();
    let cfg = SoftInfoNce::new().temperature(0.5).offset(m - n - 7);
    let z = MatRef::new(&logits, n, c).unwrap();
    let a = Targets::Dense(MatRef::new(&targets, m, c).unwrap());
    let req = Request {
        grad_logits: true,
        grad_targets: true,
        upstream: None,
    };
    let r = reference::soft_infonce(&cfg, z, &a, &req).unwrap();
    for backend in available_backends() {
        let mut g = vec![f32::NAN; n * c];
        let mut ga = vec![f32::NAN; m * c];
        let out = Outputs::new()
            .grad_logits(MatMut::new(&mut g, n, c).unwrap())
            .grad_targets(MatMut::new(&mut ga, m, c).unwrap());
        let loss = cfg.backend(Some(backend)).compute(z, &a, out).unwrap();
        assert!(
            close(loss as f64, r.loss, 1e-5 * r.loss.abs()),
            "{backend}: {loss} vs {}",
            r.loss
        );
        check(
            &format!("{backend} wide grad_logits"),
            &g,
            &r.grad_logits,
            2e-4,
            0.0,
        );
        let ga_floor = 1e-6 * r.grad_targets.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        check(
            &format!("{backend} wide grad_targets"),
            &ga,
            &r.grad_targets,
            2e-4,
            ga_floor,
        );
    }
}

/// Large row blocks (530 rows: two slabs of 272 and 258 rows, each running more than 32 row
/// groups of the micro-kernels over every packed chunk), several target tiles (533 targets)
/// and odd `C` and `M`, in f32 and bf16 (whose AVX-512 BF16 products have their own
/// packing), on every backend.
#[test]
fn dense_infonce_several_sub_blocks() {
    let (n, m, c) = (530usize, 533usize, 263usize);
    let mut next = common::uniform(11);
    let logits: Vec<f32> = (0..n * c).map(|_| 6.0 * next() - 3.0).collect();
    let targets: Vec<f32> = (0..m * c).map(|_| next()).collect();
    let cfg = SoftInfoNce::new().temperature(0.7).offset(1);
    // f32
    let z = MatRef::new(&logits, n, c).unwrap();
    let a = Targets::Dense(MatRef::new(&targets, m, c).unwrap());
    let r = reference::soft_infonce(&cfg, z, &a, &Request::loss_and_grad()).unwrap();
    for backend in available_backends() {
        let mut g = vec![f32::NAN; n * c]; // overwritten, never read
        let loss = cfg
            .backend(Some(backend))
            .loss_and_grad(z, &a, MatMut::new(&mut g, n, c).unwrap())
            .unwrap();
        assert!(
            close(loss as f64, r.loss, 1e-5 * r.loss.abs()),
            "{backend}: {loss} vs {}",
            r.loss
        );
        check(&format!("{backend} f32"), &g, &r.grad_logits, 1e-4, 0.0);
    }
    // bf16: the reference on the same (rounded) values; gradients to bf16 precision plus
    // the dot-product path's rounding of the probabilities.
    let zb: Vec<half::bf16> = logits.iter().map(|&v| half::bf16::from_f32(v)).collect();
    let ab: Vec<half::bf16> = targets.iter().map(|&v| half::bf16::from_f32(v)).collect();
    let z = MatRef::new(&zb, n, c).unwrap();
    let a = Targets::Dense(MatRef::new(&ab, m, c).unwrap());
    let r = reference::soft_infonce(&cfg, z, &a, &Request::loss_and_grad()).unwrap();
    let k = 1.0 / (n as f64 * 0.7);
    for backend in available_backends() {
        let mut g = vec![half::bf16::NAN; n * c];
        let loss = cfg
            .backend(Some(backend))
            .loss_and_grad(z, &a, MatMut::new(&mut g, n, c).unwrap())
            .unwrap();
        assert!(
            close(loss as f64, r.loss, 1e-5 * r.loss.abs()),
            "{backend} bf16: {loss} vs {}",
            r.loss
        );
        for i in 0..n {
            for col in 0..c {
                let b = r.grad_logits[i * c + col];
                let a_p = ab[(i + 1) * c + col].to_f64();
                let tol = 2f64.powi(-8) * (b.abs() + (b + k * a_p).abs()) + 1e-6 * k;
                let got = g[i * c + col].to_f64();
                assert!(
                    (got - b).abs() <= tol,
                    "{backend} bf16: grad[{i},{col}] {got} vs {b}"
                );
            }
        }
    }
}
