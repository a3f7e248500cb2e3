//! Reproducers of what the fuzz targets (`fuzz/`) found, as plain regression tests.

use softnce::reference::{self, Request};
use softnce::{available_backends, MatMut, MatRef, Outputs, Reduction, SoftInfoNce, Targets};

/// `cargo fuzz run differential` (first campaign): the target gradient at a masked logit
/// was `0` on the kernels but `−∞` on the reference when the positive's probability rounded
/// to 1 in f32 but not in f64. Both now follow the exact weight `P_ij − [j = pos]`: `±∞`
/// when it is non-zero however small, `0` when it is exactly zero.
#[test]
fn masked_logit_target_gradient_follows_the_exact_weight() {
    // One row over classes (0, 1), class 1 masked; t = 0.05 makes the positive dominate.
    let z = [10.0f32, f32::NEG_INFINITY];
    let z = MatRef::new(&z, 1, 2).unwrap();
    let req = Request {
        grad_logits: true,
        grad_targets: true,
        upstream: None,
    };
    // Rival score 200 − 20·k below the positive's: P_pos − 1 ≈ −e^(−20k), which rounds to 0
    // in f32 for k = 1 and in f64 too for k = 5; the exact weight is non-zero either way.
    for (rival, m) in [(0.9f32, 2usize), (0.5, 2), (0.0, 1)] {
        let a = [1.0f32, 0.0, rival, 0.0];
        let targets = Targets::Dense(MatRef::new(&a[..2 * m], m, 2).unwrap());
        let cfg = SoftInfoNce::new().temperature(0.05).reduction(Reduction::Sum);
        let want = reference::soft_infonce(&cfg, z, &targets, &req).unwrap();
        // With a rival (m = 2): +∞ for the positive's masked class (weight < 0 times −∞) and
        // −∞ for the rival's; alone (m = 1, P_pos = 1 exactly): 0.
        let expect = if m == 2 {
            vec![0.0, f64::INFINITY, 0.0, f64::NEG_INFINITY]
        } else {
            vec![0.0, 0.0]
        };
        assert_eq!(want.grad_targets[1], expect[1], "reference, rival {rival}");
        assert_eq!(
            want.grad_targets[2 * m - 1],
            expect[2 * m - 1],
            "reference, rival {rival}"
        );
        for b in available_backends() {
            let (mut g, mut gt) = (vec![0.0f32; 2], vec![0.0f32; 2 * m]);
            cfg.backend(Some(b))
                .compute(
                    z,
                    &targets,
                    Outputs::new()
                        .grad_logits(MatMut::new(&mut g, 1, 2).unwrap())
                        .grad_targets(MatMut::new(&mut gt, m, 2).unwrap()),
                )
                .unwrap();
            for k in [1, 2 * m - 1] {
                assert_eq!(gt[k] as f64, expect[k], "{b}, rival {rival}: grad_targets[{k}]");
            }
            // The masked class never gets a logit gradient.
            assert_eq!(g[1], 0.0, "{b}");
        }
    }
}
