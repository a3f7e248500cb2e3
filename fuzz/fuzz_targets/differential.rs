//! Differential: every available backend against the `f64` reference, for every loss and
//! target form, on shapes that straddle the kernels' vector widths and tiles (up to 40 rows,
//! 64 targets, 80 classes, padded strides) and on values biased towards the hard cases
//! (masked `−∞` logits, NaN, `+∞`, denormals, ±80, ±1e4, temperatures 0.05…20, zero and
//! denormal target weights, repeated sparse classes, per-row floors).
//!
//! # Tolerances
//! The kernels compute in `f32` with any summation order, so a score `S = Σ_c a_c u_c`
//! (`u = z/t − log η`) is off by at most about `(C + 8)·ε·Σ_c |a_c|·|u_c|` (first-order bound
//! for a length-`C` sum in any order, `ε = 2⁻²³`), and a log-sum-exp over `M` scores adds
//! `M·ε`. With `W` the largest target mass and `U_i` the largest finite `|u_ic|` of row `i`:
//!
//! * `δ_i = ((C + 8)·W·(1 + U_i) + M + 8)·ε` bounds the error of any score of row `i`
//!   relative to its log-sum-exp (the second term is the sum over `M` candidates, which
//!   does not shrink with the target mass);
//! * a row loss may differ by `4·δ_i + 1e-5·(1 + |l_i|)`;
//! * a gradient element of row `i` by `k_i·W·(4·δ_i + 32·ε)` (`k_i` the row's scale over `t`);
//! * an InfoNCE target-gradient element by `Σ_i |scale_i|·U_i·(4·δ_i + (N + 4)·ε)`.
//!
//! NaN must meet NaN and an infinity the same infinity (the reference's conventions for
//! non-finite logits are part of the contract).
#![no_main]

use libfuzzer_sys::fuzz_target;
use softnce::reference::{self, RefOutput, Request};
use softnce::{
    available_backends, HardCrossEntropy, MatMut, MatRef, Noise, Outputs, Reduction, RowParam,
    SoftCrossEntropy, SoftInfoNce, SparseTargets, Targets,
};

const EPS: f64 = f32::EPSILON as f64;

/// Raw bytes first, then a generator seeded from them, so that large shapes are filled
/// without the fuzzer having to grow huge inputs.
struct Source<'a> {
    bytes: &'a [u8],
    state: u64,
}

impl Source<'_> {
    fn u8(&mut self) -> u8 {
        if let Some((&b, rest)) = self.bytes.split_first() {
            self.bytes = rest;
            self.state = (self.state ^ b as u64).wrapping_mul(0x100_0000_01b3);
            b
        } else {
            self.state ^= self.state >> 12;
            self.state ^= self.state << 25;
            self.state ^= self.state >> 27;
            (self.state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 56) as u8
        }
    }
    fn small(&mut self, max: usize) -> usize {
        self.u8() as usize % (max + 1)
    }
    /// A logit: mostly moderate, with the hard cases at a rate set by `special` (0–255).
    fn logit(&mut self, special: u8) -> f32 {
        if self.u8() < special {
            [
                f32::NEG_INFINITY,
                f32::NEG_INFINITY,
                0.0,
                1e-40,
                -80.0,
                80.0,
                1e4,
                -1e4,
                f32::NAN,
                f32::INFINITY,
            ][self.small(9)]
        } else {
            (self.u8() as f32 - 128.0) / 16.0
        }
    }
    /// A non-negative target weight, often zero, sometimes denormal.
    fn weight(&mut self) -> f32 {
        match self.u8() % 8 {
            0 | 1 => 0.0,
            2 => 1.0,
            3 => 1e-40,
            _ => self.u8() as f32 / 255.0,
        }
    }
    fn unit(&mut self) -> f32 {
        match self.u8() % 6 {
            0 => 0.0,
            1 => 1.0,
            _ => self.u8() as f32 / 255.0,
        }
    }
}

/// `got` is within `tol` of `want`; NaN must meet NaN, an infinity the same infinity.
fn close(got: f32, want: f64, tol: f64) -> bool {
    if want.is_nan() {
        got.is_nan()
    } else if want.is_infinite() {
        got as f64 == want
    } else {
        (got as f64 - want).abs() <= tol
    }
}

/// What the tolerances need to know about one problem.
struct Scales {
    /// Largest target mass `Σ_c a_jc`.
    mass: f64,
    /// Per row: the largest finite `|z_ic/t − log η_c|`.
    u_max: Vec<f64>,
    /// Per row: the factor of the gradient row (`1/(N t)`, `1/t` or `|dl_i|/t`).
    k: Vec<f64>,
    /// `C + 8`, the summation length of one score.
    len: f64,
    /// `M + 8`, the summation length of one log-sum-exp (`8` for cross-entropy: its
    /// log-sum-exp runs over the `C` classes already counted in `len`).
    lse_len: f64,
}

impl Scales {
    fn delta(&self, i: usize) -> f64 {
        (self.len * self.mass * (1.0 + self.u_max[i]) + self.lse_len) * EPS
    }
    fn row_tol(&self, i: usize, want: f64) -> f64 {
        4.0 * self.delta(i) + 1e-5 * (1.0 + want.abs())
    }
    fn grad_tol(&self, i: usize) -> f64 {
        self.k[i] * self.mass * (4.0 * self.delta(i) + 32.0 * EPS) + 1e-30
    }
}

#[allow(clippy::too_many_arguments)]
fn compare(
    what: &str,
    n: usize,
    c: usize,
    reduction: Reduction,
    s: &Scales,
    got: (f32, &[f32], &[f32]),
    want: &RefOutput,
) {
    let (loss, rows, grad) = got;
    for i in 0..n {
        let tol = s.row_tol(i, want.row_losses[i]);
        assert!(
            close(rows[i], want.row_losses[i], tol),
            "{what}: row {i} loss {} vs reference {} (tol {tol})",
            rows[i],
            want.row_losses[i]
        );
        let tol = s.grad_tol(i);
        for k in 0..c {
            assert!(
                close(grad[i * c + k], want.grad_logits[i * c + k], tol),
                "{what}: grad[{i}][{k}] = {} vs reference {} (tol {tol})",
                grad[i * c + k],
                want.grad_logits[i * c + k]
            );
        }
    }
    if reduction != Reduction::None {
        let tol: f64 = (0..n).map(|i| s.row_tol(i, want.row_losses[i])).sum();
        let tol = if reduction == Reduction::Mean { tol / n as f64 } else { tol };
        assert!(close(loss, want.loss, tol), "{what}: loss {loss} vs reference {} (tol {tol})", want.loss);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut b = Source { bytes: data, state: 0xcbf2_9ce4_8422_2325 };
    let n = 1 + b.small(39);
    let m = n + b.small(24);
    let c = 1 + b.small(79);
    let stride = c + b.small(3);
    let t = [1.0f32, 0.05, 20.0, 0.5, 3.0][b.small(4)];
    let reduction = [Reduction::Mean, Reduction::Sum, Reduction::None][b.small(2)];
    let special = [0u8, 0, 8, 40][b.small(3)];
    let logits: Vec<f32> = (0..n * stride).map(|_| b.logit(special)).collect();
    let z = MatRef::with_stride(&logits, n, c, stride).unwrap();
    let upstream: Vec<f32> = (0..n).map(|_| (b.u8() as f32 - 100.0) / 50.0).collect();
    let eta: Vec<f32> = (0..c).map(|_| 0.01 + b.u8() as f32 / 64.0).collect();
    let log_eta: Vec<f32> = eta.iter().map(|&p| p.ln() - 0.5).collect();
    let (noise, log_noise): (Noise<'_>, Vec<f64>) = match b.small(2) {
        // Uniform noise is η = 1/C: it cancels in the losses but not in the target gradient.
        0 => (Noise::Uniform, vec![-(c as f64).ln(); c]),
        1 => (Noise::Probs(&eta), eta.iter().map(|&p| (p as f64).ln()).collect()),
        _ => (Noise::LogProbs(&log_eta), log_eta.iter().map(|&l| l as f64).collect()),
    };

    // Targets: every form over the same rows.
    let dense: Vec<f32> = (0..m * c).map(|_| b.weight()).collect();
    let labels: Vec<u32> = (0..m).map(|_| b.small(c - 1) as u32).collect();
    let partner: Vec<u32> = (0..m).map(|_| b.small(c - 1) as u32).collect();
    let lambda: Vec<f32> = (0..m).map(|_| b.unit()).collect();
    let eps = b.unit();
    let mut indptr = vec![0usize];
    for _ in 0..m {
        indptr.push(indptr.last().unwrap() + b.small(4));
    }
    let nnz = *indptr.last().unwrap();
    // Few distinct classes, so that sparse rows repeat classes.
    let spread = 1 + b.small(c - 1);
    let idx: Vec<u32> = (0..nnz).map(|_| b.small(spread - 1) as u32).collect();
    let w: Vec<f32> = (0..nnz).map(|_| b.weight()).collect();
    let floors: Vec<f32> = (0..m).map(|_| b.weight() * 0.1).collect();
    let offset = b.small(m - n);

    let dense_mass = dense.chunks(c).map(|r| r.iter().map(|&x| x as f64).sum::<f64>()).fold(0.0, f64::max);
    let sparse_mass = (0..m)
        .map(|j| {
            w[indptr[j]..indptr[j + 1]].iter().map(|&x| x as f64).sum::<f64>() + c as f64 * floors[j] as f64
        })
        .fold(0.0, f64::max);
    let forms: Vec<(&str, Targets<'_>, f64)> = vec![
        ("dense", Targets::Dense(MatRef::new(&dense, m, c).unwrap()), dense_mass),
        ("hard", Targets::hard(&labels, eps), 1.0),
        ("mixed/row", Targets::mixed(&labels, &partner, RowParam::PerRow(&lambda), eps), 1.0),
        ("mixed/batch", Targets::mixed(&labels, &partner, RowParam::Batch(lambda[0]), eps), 1.0),
        (
            "sparse",
            Targets::Sparse(SparseTargets::new(&indptr, &idx, &w, RowParam::PerRow(&floors))),
            sparse_mass,
        ),
    ];

    let u_max = |with_noise: bool| -> Vec<f64> {
        (0..n)
            .map(|i| {
                (0..c)
                    .map(|k| {
                        let le = if with_noise { log_noise[k] } else { 0.0 };
                        logits[i * stride + k] as f64 / t as f64 - le
                    })
                    .filter(|u| u.is_finite())
                    .fold(0.0, |a: f64, u| a.max(u.abs()))
            })
            .collect()
    };
    let scale: Vec<f64> = (0..n)
        .map(|i| match reduction {
            Reduction::Mean => 1.0 / n as f64,
            Reduction::Sum => 1.0,
            Reduction::None => (upstream[i] as f64).abs(),
        })
        .collect();
    let up = (reduction == Reduction::None).then_some(&upstream[..]);
    let req = Request { grad_logits: true, grad_targets: false, upstream: up };
    let k: Vec<f64> = scale.iter().map(|s| s / t as f64).collect();
    let backends = available_backends();

    let mut grad = vec![0.0f32; n * c];
    let mut rows = vec![0.0f32; n];
    let mut gt = vec![0.0f32; m * c];
    for (name, targets, mass) in &forms {
        // Soft-target InfoNCE (dense targets also with the target gradient).
        let cfg = SoftInfoNce::new().temperature(t).noise(noise).offset(offset).reduction(reduction);
        let is_dense = *name == "dense";
        let req_nce = Request { grad_targets: is_dense, ..req };
        let want = reference::soft_infonce(&cfg, z, targets, &req_nce).unwrap();
        let s = Scales {
            mass: mass.max(1e-30),
            u_max: u_max(true),
            k: k.clone(),
            len: (c + 8) as f64,
            lse_len: (m + 8) as f64,
        };
        for &backend in &backends {
            grad.fill(7.0);
            rows.fill(7.0);
            gt.fill(7.0);
            let mut out = Outputs::new().grad_logits(MatMut::new(&mut grad, n, c).unwrap()).row_losses(&mut rows);
            if is_dense {
                out = out.grad_targets(MatMut::new(&mut gt, m, c).unwrap());
            }
            if let Some(u) = up {
                out = out.upstream(u);
            }
            let loss = cfg.backend(Some(backend)).compute(z, targets, out).unwrap();
            let what = format!("soft-infonce/{name} on {backend} (n={n} m={m} c={c} t={t} {reduction:?})");
            compare(&what, n, c, reduction, &s, (loss, &rows, &grad), &want);
            if is_dense {
                for j in 0..m {
                    let tol: f64 = (0..n)
                        .map(|i| scale[i] * s.u_max[i] * (4.0 * s.delta(i) + (n + 4) as f64 * EPS))
                        .sum::<f64>()
                        + 1e-30;
                    for kk in 0..c {
                        let (g, r) = (gt[j * c + kk], want.grad_targets[j * c + kk]);
                        assert!(close(g, r, tol), "{what}: grad_targets[{j}][{kk}] = {g} vs reference {r} (tol {tol})");
                    }
                }
            }
        }

        // Soft-target cross-entropy on the first N target rows.
        let ce_targets = match targets {
            Targets::Dense(_) => Targets::Dense(MatRef::new(&dense[..n * c], n, c).unwrap()),
            Targets::Hard { labels, smoothing } => Targets::hard(&labels[..n], *smoothing),
            Targets::Mixed { a, b: pb, lambda: RowParam::PerRow(l), smoothing } => {
                Targets::mixed(&a[..n], &pb[..n], RowParam::PerRow(&l[..n]), *smoothing)
            }
            Targets::Mixed { a, b: pb, lambda, smoothing } => Targets::mixed(&a[..n], &pb[..n], *lambda, *smoothing),
            Targets::Sparse(_) => Targets::Sparse(SparseTargets::new(
                &indptr[..=n],
                &idx[..indptr[n]],
                &w[..indptr[n]],
                RowParam::PerRow(&floors[..n]),
            )),
        };
        let cfg = SoftCrossEntropy::new().temperature(t).reduction(reduction);
        let want = reference::soft_cross_entropy(&cfg, z, &ce_targets, &req).unwrap();
        let s = Scales {
            mass: mass.max(1e-30),
            u_max: u_max(false),
            k: k.clone(),
            len: (c + 8) as f64,
            lse_len: (c + 8) as f64,
        };
        for &backend in &backends {
            grad.fill(7.0);
            rows.fill(7.0);
            let mut out = Outputs::new().grad_logits(MatMut::new(&mut grad, n, c).unwrap()).row_losses(&mut rows);
            if let Some(u) = up {
                out = out.upstream(u);
            }
            let loss = cfg.backend(Some(backend)).compute(z, &ce_targets, out).unwrap();
            let what = format!("soft-ce/{name} on {backend} (n={n} c={c} t={t} {reduction:?})");
            compare(&what, n, c, reduction, &s, (loss, &rows, &grad), &want);
        }
    }

    // Hard cross-entropy with smoothing and ignore_index (ignored rows: 0 loss, 0 gradient).
    let ignore = [None, Some(labels[0]), Some(c as u32 + 3)][b.small(2)];
    let cfg = HardCrossEntropy::new().temperature(t).smoothing(eps).ignore_index(ignore).reduction(reduction);
    let want = reference::hard_cross_entropy(&cfg, z, &labels[..n], &req).unwrap();
    let kept = labels[..n].iter().filter(|&&y| Some(y) != ignore).count().max(1);
    let k_hard: Vec<f64> = (0..n)
        .map(|i| match reduction {
            Reduction::Mean => 1.0 / (kept as f64 * t as f64),
            _ => k[i],
        })
        .collect();
    let s = Scales {
        mass: 1.0,
        u_max: u_max(false),
        k: k_hard,
        len: (c + 8) as f64,
        lse_len: (c + 8) as f64,
    };
    for &backend in &backends {
        grad.fill(7.0);
        rows.fill(7.0);
        let mut out = Outputs::new().grad_logits(MatMut::new(&mut grad, n, c).unwrap()).row_losses(&mut rows);
        if let Some(u) = up {
            out = out.upstream(u);
        }
        let loss = cfg.backend(Some(backend)).compute(z, &labels[..n], out).unwrap();
        let what = format!("hard-ce on {backend} (n={n} c={c} t={t} eps={eps} ignore={ignore:?} {reduction:?})");
        compare(&what, n, c, reduction, &s, (loss, &rows, &grad), &want);
    }
});
