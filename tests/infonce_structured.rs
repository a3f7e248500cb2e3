//! Soft-target InfoNCE with structured targets (`Hard`, `Mixed` with per-row and per-batch
//! λ, `Sparse` with duplicate classes, empty rows and per-row floors) on every backend this
//! CPU can run, forced per call, against the f64 reference on the densified targets: λ = 0
//! and 1, a = b, ε = 0 and 1, `M > N` with offsets, masked (−∞) and NaN logits, every
//! reduction.

mod common;
use common::{cases, close};

use proptest::prelude::*;
use softnce::reference::{self, Request};
use softnce::{
    available_backends, MatMut, MatRef, Noise, Outputs, Reduction, RowParam, SoftInfoNce, SparseTargets,
    Targets,
};

#[derive(Debug, Clone)]
struct Case {
    n: usize,
    m: usize,
    c: usize,
    offset: usize,
    t: f32,
    logits: Vec<f32>,
    a: Vec<u32>,
    b: Vec<u32>,
    lambda: Vec<f32>,
    eps: f32,
    counts: Vec<usize>,
    entries: Vec<(u32, f32)>,
    floors: Vec<f32>,
    noise: Option<Vec<f32>>,
    upstream: Vec<f32>,
    reduction: Reduction,
}

fn case() -> impl Strategy<Value = Case> {
    (
        1usize..24,
        0usize..12,
        prop::sample::select(vec![1usize, 2, 7, 16, 17, 100, 1000]),
        prop::sample::select(vec![0.05f32, 0.5, 1.0, 20.0]),
        prop::sample::select(vec![Reduction::Mean, Reduction::Sum, Reduction::None]),
        any::<bool>(),
    )
        .prop_flat_map(|(n, extra, c, t, reduction, nonuniform)| {
            let m = n + extra;
            (
                Just((n, m, c, t, reduction)),
                0..=extra,
                prop::collection::vec(
                    prop_oneof![12 => -4.0f32..4.0, 1 => Just(f32::NEG_INFINITY), 1 => Just(25.0f32)],
                    n * c,
                ),
                prop::collection::vec((0..c as u32, 0..c as u32), m),
                prop::collection::vec(prop_oneof![Just(0.0f32), Just(1.0), 0.0f32..1.0], m),
                prop_oneof![Just(0.0f32), Just(1.0), 0.0f32..1.0],
                prop::collection::vec(0usize..4, m),
                prop::collection::vec((0..c as u32, 0.0f32..1.0), 4 * m),
                prop::collection::vec(prop_oneof![Just(0.0f32), 0.0f32..0.1], m),
                prop::option::weighted(
                    if nonuniform { 0.99 } else { 0.01 },
                    prop::collection::vec(0.01f32..1.0, c),
                ),
                prop::collection::vec(-2.0f32..2.0, n),
                (prop::option::weighted(0.05, 0..n), any::<bool>()),
            )
        })
        .prop_map(
            |(
                (n, m, c, t, reduction),
                offset,
                mut logits,
                ab,
                lambda,
                eps,
                counts,
                entries,
                floors,
                noise,
                upstream,
                (nan, masked),
            )| {
                // Half the cases have no masked logit, so that large-C rows take the
                // vectorised (all-finite) path too.
                if !masked {
                    logits
                        .iter_mut()
                        .filter(|x| x.is_infinite())
                        .for_each(|x| *x = -3.0);
                }
                let (a, b): (Vec<u32>, Vec<u32>) = ab.into_iter().unzip();
                if let Some(r) = nan {
                    logits[r * c] = f32::NAN;
                }
                let total: usize = counts.iter().sum();
                Case {
                    n,
                    m,
                    c,
                    offset,
                    t,
                    logits,
                    a,
                    b,
                    lambda,
                    eps,
                    counts,
                    entries: entries.into_iter().take(total).collect(),
                    floors,
                    noise,
                    upstream,
                    reduction,
                }
            },
        )
}

fn run(case: &Case) {
    let Case {
        n, m, c, offset, t, ..
    } = *case;
    // Odd cases read the logits through a padded row stride.
    let pad = n % 2 * 3;
    let padded: Vec<f32> = case
        .logits
        .chunks(c)
        .flat_map(|row| row.iter().copied().chain(std::iter::repeat_n(f32::NAN, pad)))
        .collect();
    let z = MatRef::with_stride(&padded, n, c, c + pad).unwrap();
    let mut indptr = vec![0usize];
    for &k in &case.counts {
        indptr.push(indptr.last().unwrap() + k);
    }
    let classes: Vec<u32> = case.entries.iter().map(|e| e.0).collect();
    let weights: Vec<f32> = case.entries.iter().map(|e| e.1).collect();
    let forms: Vec<(&str, Targets<'_>)> = vec![
        ("hard", Targets::hard(&case.a, case.eps)),
        (
            "mixed/row",
            Targets::mixed(&case.a, &case.b, RowParam::PerRow(&case.lambda), case.eps),
        ),
        (
            "mixed/batch",
            Targets::mixed(&case.a, &case.b, RowParam::Batch(case.lambda[0]), case.eps),
        ),
        (
            "mixed/a=b",
            Targets::mixed(&case.a, &case.a, RowParam::Batch(0.3), case.eps),
        ),
        (
            "sparse",
            Targets::Sparse(SparseTargets::new(
                &indptr,
                &classes,
                &weights,
                RowParam::PerRow(&case.floors),
            )),
        ),
    ];
    let noise = case.noise.as_deref().map_or(Noise::Uniform, Noise::Probs);
    let cfg = SoftInfoNce::new()
        .temperature(t)
        .offset(offset)
        .noise(noise)
        .reduction(case.reduction);
    let up = (case.reduction == Reduction::None).then_some(&case.upstream[..]);
    let req = Request {
        grad_logits: true,
        grad_targets: false,
        upstream: up,
    };
    let scale_max = match case.reduction {
        Reduction::Mean => 1.0 / n as f64,
        Reduction::Sum => 1.0,
        Reduction::None => case.upstream.iter().fold(0.0f64, |s, &u| s.max(u.abs() as f64)),
    };
    let rel = 3e-5 * (1.0 / t as f64).max(1.0) * (1.0 + (c as f64).sqrt() / 8.0);
    for (name, targets) in &forms {
        let r = reference::soft_infonce(&cfg, z, targets, &req).unwrap();
        // Target rows here have mass up to about 1 + C·floor (sparse: a few weights below 1).
        let mass = 4.0 + c as f64 * 0.1;
        let gscale = r
            .grad_logits
            .iter()
            .filter(|v| v.is_finite())
            .fold(scale_max / t as f64 * mass, |s, v| s.max(v.abs()));
        for backend in available_backends() {
            let mut g = vec![7.0f32; n * c];
            let mut rows = vec![0.0f32; n];
            let mut out = Outputs::new()
                .grad_logits(MatMut::new(&mut g, n, c).unwrap())
                .row_losses(&mut rows);
            if let Some(u) = up {
                out = out.upstream(u);
            }
            let loss = cfg.backend(Some(backend)).compute(z, targets, out).unwrap();
            let what = format!("{backend} {name} n={n} m={m} c={c} t={t} {:?}", case.reduction);
            assert!(
                close(loss as f64, r.loss, rel * r.loss.abs().max(1.0)),
                "{what}: loss {loss} vs {}",
                r.loss
            );
            for (i, (&got, &want)) in rows.iter().zip(&r.row_losses).enumerate() {
                assert!(
                    close(got as f64, want, rel * want.abs().max(1.0)),
                    "{what}: row {i}: {got} vs {want}"
                );
            }
            for (k, (&got, &want)) in g.iter().zip(&r.grad_logits).enumerate() {
                assert!(
                    close(got as f64, want, rel * gscale),
                    "{what}: grad[{k}]: {got} vs {want} (scale {gscale})"
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: cases(64),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn structured_infonce_matches_reference_on_every_backend(case in case()) {
        run(&case);
    }
}

/// A structured target gradient is refused (the targets are constants), on every backend.
#[test]
fn structured_targets_have_no_target_gradient() {
    let z = [0.0f32; 6];
    let y = [0u32, 1];
    let mut g = [0.0f32; 6];
    for backend in available_backends() {
        let r = SoftInfoNce::new().backend(Some(backend)).compute(
            MatRef::new(&z, 2, 3).unwrap(),
            &Targets::hard(&y, 0.1),
            Outputs::new().grad_targets(MatMut::new(&mut g, 2, 3).unwrap()),
        );
        assert_eq!(r, Err(softnce::Error::TargetGradientNeedsDense));
    }
}
