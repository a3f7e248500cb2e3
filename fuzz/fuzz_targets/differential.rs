//! Differential: every available backend against the `f64` reference, for every loss and
//! target form, on shapes that straddle the kernels' vector widths and tiles (up to 40 rows,
//! 64 targets, 80 classes, padded strides) and on values biased towards the hard cases
//! (masked `−∞` logits, NaN, `+∞`, denormals, ±80, ±1e4, temperatures 0.05…20, zero and
//! denormal target weights, repeated sparse classes, per-row floors), with `f32`, `bf16` or
//! `f16` logits, dense targets and gradients.
//!
//! # Element types
//! The last byte decoded picks the element type (`f32`, `bf16`, `f16`, about a third each),
//! so an input's shapes and values mean the same whatever the type. For `bf16`/`f16` the
//! logits and dense target weights are rounded to the type (round to nearest even; in `f16`
//! `1e-40` becomes `0`, and anything beyond 65504 would become `±∞`), and the reference runs
//! on those rounded values through the half-typed views (every half value widens exactly).
//! Structured targets (hard, mixed, sparse) have `f32` parameters and are shared as they are.
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
//! * an InfoNCE target-gradient element by `Σ_i |scale_i|·(U_i·(4·δ_i + (N + 4)·ε) + 2·ε·V_i)`,
//!   `V_i` the largest `|z_ic/t| + |log η_c|` of row `i` (over the classes with finite `u_ic`).
//!   The last term is the rounding of `u_ic = z_ic/t − log η_c` itself, which the target
//!   gradient multiplies directly: `1/t`, `z·(1/t)`, `log η` (an `f64` logarithm) and the
//!   difference are each rounded to `f32`, an error of at most `2·ε·(|z/t| + |log η|)` that
//!   does not shrink when `z/t` and `log η` cancel. The fuzzer found that case (`N = 1`,
//!   `C = 1`, `z = −2`, `η = 0.135`: `u ≈ 0.0025`, `U_i·(…)` alone allowed 5·10⁻⁸ where the
//!   rounding of `log η` moved the element by 7·10⁻⁸, relative 2·10⁻⁵). Scores and losses
//!   need no such term: the `(C + 8)·W·ε` part of `δ_i` and the `1e-5` floor cover it.
//!
//! NaN must meet NaN and an infinity the same infinity (the reference's conventions for
//! non-finite logits are part of the contract).
//!
//! ## Half precision
//! The kernels widen half inputs exactly and compute in `f32`, so `W`, `U_i` and the
//! reference are taken on the rounded values and every bound above holds as it is; losses
//! (returned in `f32`) keep exactly the `f32` tolerances. Each gradient element (logits and
//! InfoNCE targets) is computed in `f32` and rounded once to the type, which may move it by
//! half a unit in its last place more: `u·|g|` with `u = 2⁻⁸` (`bf16`) or `2⁻¹¹` (`f16`), plus
//! `2⁻²⁵` absolute for `f16` (half its subnormal spacing `2⁻²⁴`). A reference value beyond the
//! type's range is first rounded to the type: if that is `±∞` (`f16` above 65504; target
//! gradients reach `U_i ≈ 2·10⁵` here) the kernel must return the same infinity. Rounding is
//! monotone, so a result that lies between the roundings of `g − tol` and `g + tol` (the
//! `f32` tolerance before rounding) is accepted too: this only matters at the edge of the
//! range, where an `f32` result within tolerance of a reference just below 65520 may round
//! to `∞` (or one of a reference just above to 65504).
//!
//! Dense `bf16` InfoNCE may run its accumulator `O_i = Σ_j P_ij a_j` on the AVX-512 BF16 dot
//! product with every probability rounded to `bf16` (relative error `≤ u`), so its logit
//! gradient `g = k(O/l − a_p)` may also move by `u·k·O/l = u·|g + k·a_p|` (signed
//! `k = scale/t`, `a_p` the positive target row `offset + i` at that class) before its own
//! rounding; that term is added on every backend for dense `bf16` (as in `tests/half.rs`).
//! The target gradient runs on the `f32` products and gets only its output rounding.
#![no_main]

use libfuzzer_sys::fuzz_target;
use softnce::reference::{self, RefOutput, Request};
use softnce::{
    available_backends, bf16, f16, Element, HardCrossEntropy, MatMut, MatRef, Noise, Outputs, Reduction,
    RowParam, SoftCrossEntropy, SoftInfoNce, SparseTargets, Targets,
};
use std::any::TypeId;

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
    close_f64(got as f64, want, tol)
}

fn close_f64(got: f64, want: f64, tol: f64) -> bool {
    if want.is_nan() {
        got.is_nan()
    } else if want.is_infinite() {
        got == want
    } else {
        (got - want).abs() <= tol
    }
}

/// How the element type rounds a result: unit roundoff `u` and absolute floor (both zero
/// for `f32`, whose checks are exactly [`close`]).
#[derive(Clone, Copy)]
struct Rounding {
    name: &'static str,
    u: f64,
    abs: f64,
    /// Dense InfoNCE may round its probabilities to this type (`bf16` only).
    dot: bool,
}

fn rounding<T: Element>() -> Rounding {
    let id = TypeId::of::<T>();
    if id == TypeId::of::<bf16>() {
        Rounding {
            name: "bf16",
            u: 2f64.powi(-8),
            abs: 0.0,
            dot: true,
        }
    } else if id == TypeId::of::<f16>() {
        Rounding {
            name: "f16",
            u: 2f64.powi(-11),
            abs: 2f64.powi(-25),
            dot: false,
        }
    } else {
        Rounding {
            name: "f32",
            u: 0.0,
            abs: 0.0,
            dot: false,
        }
    }
}

/// A gradient element `got` against the reference `want`, `tol` the `f32` tolerance (before
/// the rounding to `T`): for `f32` exactly [`close`]; for the halves `want` rounded to the
/// type when that overflows, then `tol + u·|want| + abs`, or anywhere between the roundings
/// of `want − tol` and `want + tol` (see the module documentation).
fn close_elem<T: Element>(got: T, want: f64, tol: f64, r: Rounding) -> bool {
    if r.u == 0.0 {
        return close(got.to_f32(), want, tol);
    }
    let g = got.to_f64();
    let rounded = T::from_f64(want).to_f64();
    let w = if rounded.is_infinite() { rounded } else { want };
    close_f64(g, w, tol + r.u * want.abs() + r.abs)
        || (want.is_finite()
            && tol.is_finite()
            && T::from_f64(want - tol).to_f64() <= g
            && g <= T::from_f64(want + tol).to_f64())
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

/// Extra gradient tolerance before rounding, per `(row, class, reference value)`.
type Extra<'a> = &'a dyn Fn(usize, usize, f64) -> f64;

#[allow(clippy::too_many_arguments)]
fn compare<T: Element>(
    what: &str,
    n: usize,
    c: usize,
    reduction: Reduction,
    s: &Scales,
    got: (f32, &[f32], &[T]),
    want: &RefOutput,
    extra: Extra<'_>,
) {
    let r = rounding::<T>();
    let (loss, rows, grad) = got;
    for i in 0..n {
        let tol = s.row_tol(i, want.row_losses[i]);
        assert!(
            close(rows[i], want.row_losses[i], tol),
            "{what}: row {i} loss {} vs reference {} (tol {tol})",
            rows[i],
            want.row_losses[i]
        );
        for k in 0..c {
            let b = want.grad_logits[i * c + k];
            let tol = s.grad_tol(i) + extra(i, k, b);
            assert!(
                close_elem(grad[i * c + k], b, tol, r),
                "{what}: grad[{i}][{k}] = {:?} vs reference {b} (tol {tol} before rounding)",
                grad[i * c + k],
            );
        }
    }
    if reduction != Reduction::None {
        let tol: f64 = (0..n).map(|i| s.row_tol(i, want.row_losses[i])).sum();
        let tol = if reduction == Reduction::Mean {
            tol / n as f64
        } else {
            tol
        };
        assert!(
            close(loss, want.loss, tol),
            "{what}: loss {loss} vs reference {} (tol {tol})",
            want.loss
        );
    }
}

/// One decoded problem, in `f32` (rounded to the element type when it is run).
struct Problem {
    n: usize,
    m: usize,
    c: usize,
    stride: usize,
    t: f32,
    reduction: Reduction,
    logits: Vec<f32>,
    upstream: Vec<f32>,
    eta: Vec<f32>,
    log_eta: Vec<f32>,
    noise: usize,
    dense: Vec<f32>,
    labels: Vec<u32>,
    partner: Vec<u32>,
    lambda: Vec<f32>,
    eps: f32,
    indptr: Vec<usize>,
    idx: Vec<u32>,
    w: Vec<f32>,
    floors: Vec<f32>,
    offset: usize,
    ignore: Option<u32>,
}

impl Problem {
    /// Decodes in the order the target has always used (the element type comes after).
    fn decode(b: &mut Source<'_>) -> Problem {
        let n = 1 + b.small(39);
        let m = n + b.small(24);
        let c = 1 + b.small(79);
        let stride = c + b.small(3);
        let t = [1.0f32, 0.05, 20.0, 0.5, 3.0][b.small(4)];
        let reduction = [Reduction::Mean, Reduction::Sum, Reduction::None][b.small(2)];
        let special = [0u8, 0, 8, 40][b.small(3)];
        let logits: Vec<f32> = (0..n * stride).map(|_| b.logit(special)).collect();
        let upstream: Vec<f32> = (0..n).map(|_| (b.u8() as f32 - 100.0) / 50.0).collect();
        let eta: Vec<f32> = (0..c).map(|_| 0.01 + b.u8() as f32 / 64.0).collect();
        let log_eta: Vec<f32> = eta.iter().map(|&p| p.ln() - 0.5).collect();
        let noise = b.small(2);
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
        let ignore = [None, Some(labels[0]), Some(c as u32 + 3)][b.small(2)];
        Problem {
            n,
            m,
            c,
            stride,
            t,
            reduction,
            logits,
            upstream,
            eta,
            log_eta,
            noise,
            dense,
            labels,
            partner,
            lambda,
            eps,
            indptr,
            idx,
            w,
            floors,
            offset,
            ignore,
        }
    }
}

fn run<T: Element>(p: &Problem) {
    let Problem {
        n,
        m,
        c,
        stride,
        t,
        reduction,
        eps,
        offset,
        ignore,
        ..
    } = *p;
    let (labels, partner, lambda) = (&p.labels[..], &p.partner[..], &p.lambda[..]);
    let (indptr, idx, w, floors) = (&p.indptr[..], &p.idx[..], &p.w[..], &p.floors[..]);
    let upstream = &p.upstream[..];
    let rnd = rounding::<T>();
    let ty = rnd.name;
    // The element type's values: the kernels and the reference both see exactly these.
    let logits: Vec<T> = p.logits.iter().map(|&x| T::from_f32(x)).collect();
    let dense: Vec<T> = p.dense.iter().map(|&x| T::from_f32(x)).collect();
    let z = MatRef::with_stride(&logits, n, c, stride).unwrap();
    let (noise, log_noise): (Noise<'_>, Vec<f64>) = match p.noise {
        // Uniform noise is η = 1/C: it cancels in the losses but not in the target gradient.
        0 => (Noise::Uniform, vec![-(c as f64).ln(); c]),
        1 => (
            Noise::Probs(&p.eta),
            p.eta.iter().map(|&q| (q as f64).ln()).collect(),
        ),
        _ => (
            Noise::LogProbs(&p.log_eta),
            p.log_eta.iter().map(|&l| l as f64).collect(),
        ),
    };

    let dense_mass = dense
        .chunks(c)
        .map(|r| r.iter().map(|x| x.to_f64()).sum::<f64>())
        .fold(0.0, f64::max);
    let sparse_mass = (0..m)
        .map(|j| {
            w[indptr[j]..indptr[j + 1]].iter().map(|&x| x as f64).sum::<f64>() + c as f64 * floors[j] as f64
        })
        .fold(0.0, f64::max);
    let forms: Vec<(&str, Targets<'_, T>, f64)> = vec![
        (
            "dense",
            Targets::Dense(MatRef::new(&dense, m, c).unwrap()),
            dense_mass,
        ),
        ("hard", Targets::hard(labels, eps), 1.0),
        (
            "mixed/row",
            Targets::mixed(labels, partner, RowParam::PerRow(lambda), eps),
            1.0,
        ),
        (
            "mixed/batch",
            Targets::mixed(labels, partner, RowParam::Batch(lambda[0]), eps),
            1.0,
        ),
        (
            "sparse",
            Targets::Sparse(SparseTargets::new(indptr, idx, w, RowParam::PerRow(floors))),
            sparse_mass,
        ),
    ];

    let u_max = |with_noise: bool| -> Vec<f64> {
        (0..n)
            .map(|i| {
                (0..c)
                    .map(|k| {
                        let le = if with_noise { log_noise[k] } else { 0.0 };
                        logits[i * stride + k].to_f64() / t as f64 - le
                    })
                    .filter(|u| u.is_finite())
                    .fold(0.0, |a: f64, u| a.max(u.abs()))
            })
            .collect()
    };
    // Per row: the largest `|z/t| + |log η|` over the classes with a finite `z/t − log η`.
    let v_max: Vec<f64> = (0..n)
        .map(|i| {
            (0..c)
                .map(|k| (logits[i * stride + k].to_f64() / t as f64, log_noise[k]))
                .filter(|(x, le)| (x - le).is_finite())
                .fold(0.0, |a: f64, (x, le)| a.max(x.abs() + le.abs()))
        })
        .collect();
    let scale: Vec<f64> = (0..n)
        .map(|i| match reduction {
            Reduction::Mean => 1.0 / n as f64,
            Reduction::Sum => 1.0,
            Reduction::None => (upstream[i] as f64).abs(),
        })
        .collect();
    let up = (reduction == Reduction::None).then_some(upstream);
    let req = Request {
        grad_logits: true,
        grad_targets: false,
        upstream: up,
    };
    let k: Vec<f64> = scale.iter().map(|s| s / t as f64).collect();
    // The signed row factor `scale/t` (upstream with its sign) of the bf16 accumulator term.
    let k_signed: Vec<f64> = (0..n)
        .map(|i| match reduction {
            Reduction::None => upstream[i] as f64 / t as f64,
            _ => k[i],
        })
        .collect();
    let none: Extra<'_> = &|_, _, _| 0.0;
    let backends = available_backends();

    let mut grad = vec![T::from_f32(7.0); n * c];
    let mut rows = vec![0.0f32; n];
    let mut gt = vec![T::from_f32(7.0); m * c];
    for (name, targets, mass) in &forms {
        // Soft-target InfoNCE (dense targets also with the target gradient).
        let cfg = SoftInfoNce::new()
            .temperature(t)
            .noise(noise)
            .offset(offset)
            .reduction(reduction);
        let is_dense = *name == "dense";
        let req_nce = Request {
            grad_targets: is_dense,
            ..req
        };
        let want = reference::soft_infonce(&cfg, z, targets, &req_nce).unwrap();
        let s = Scales {
            mass: mass.max(1e-30),
            u_max: u_max(true),
            k: k.clone(),
            len: (c + 8) as f64,
            lse_len: (m + 8) as f64,
        };
        // bf16 probabilities in the accumulator product: u·|g + k·a_p| (module docs).
        let dot = |i: usize, col: usize, g: f64| {
            rnd.u * (g + k_signed[i] * dense[(offset + i) * c + col].to_f64()).abs()
        };
        let extra: Extra<'_> = if is_dense && rnd.dot { &dot } else { none };
        for &backend in &backends {
            grad.fill(T::from_f32(7.0));
            rows.fill(7.0);
            gt.fill(T::from_f32(7.0));
            let mut out = Outputs::new()
                .grad_logits(MatMut::new(&mut grad, n, c).unwrap())
                .row_losses(&mut rows);
            if is_dense {
                out = out.grad_targets(MatMut::new(&mut gt, m, c).unwrap());
            }
            if let Some(u) = up {
                out = out.upstream(u);
            }
            let loss = cfg.backend(Some(backend)).compute(z, targets, out).unwrap();
            let what =
                format!("soft-infonce/{name} {ty} on {backend} (n={n} m={m} c={c} t={t} {reduction:?})");
            compare(&what, n, c, reduction, &s, (loss, &rows, &grad), &want, extra);
            if is_dense {
                for j in 0..m {
                    let tol: f64 = (0..n)
                        .map(|i| {
                            scale[i]
                                * (s.u_max[i] * (4.0 * s.delta(i) + (n + 4) as f64 * EPS)
                                    + 2.0 * EPS * v_max[i])
                        })
                        .sum::<f64>()
                        + 1e-30;
                    for kk in 0..c {
                        let (g, r) = (gt[j * c + kk], want.grad_targets[j * c + kk]);
                        assert!(
                            close_elem(g, r, tol, rnd),
                            "{what}: grad_targets[{j}][{kk}] = {g:?} vs reference {r} (tol {tol} before rounding)"
                        );
                    }
                }
            }
        }

        // Soft-target cross-entropy on the first N target rows.
        let ce_targets = match targets {
            Targets::Dense(_) => Targets::Dense(MatRef::new(&dense[..n * c], n, c).unwrap()),
            Targets::Hard { labels, smoothing } => Targets::hard(&labels[..n], *smoothing),
            Targets::Mixed {
                a,
                b: pb,
                lambda: RowParam::PerRow(l),
                smoothing,
            } => Targets::mixed(&a[..n], &pb[..n], RowParam::PerRow(&l[..n]), *smoothing),
            Targets::Mixed {
                a,
                b: pb,
                lambda,
                smoothing,
            } => Targets::mixed(&a[..n], &pb[..n], *lambda, *smoothing),
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
            grad.fill(T::from_f32(7.0));
            rows.fill(7.0);
            let mut out = Outputs::new()
                .grad_logits(MatMut::new(&mut grad, n, c).unwrap())
                .row_losses(&mut rows);
            if let Some(u) = up {
                out = out.upstream(u);
            }
            let loss = cfg.backend(Some(backend)).compute(z, &ce_targets, out).unwrap();
            let what = format!("soft-ce/{name} {ty} on {backend} (n={n} c={c} t={t} {reduction:?})");
            compare(&what, n, c, reduction, &s, (loss, &rows, &grad), &want, none);
        }
    }

    // Hard cross-entropy with smoothing and ignore_index (ignored rows: 0 loss, 0 gradient).
    let cfg = HardCrossEntropy::new()
        .temperature(t)
        .smoothing(eps)
        .ignore_index(ignore)
        .reduction(reduction);
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
        grad.fill(T::from_f32(7.0));
        rows.fill(7.0);
        let mut out = Outputs::new()
            .grad_logits(MatMut::new(&mut grad, n, c).unwrap())
            .row_losses(&mut rows);
        if let Some(u) = up {
            out = out.upstream(u);
        }
        let loss = cfg.backend(Some(backend)).compute(z, &labels[..n], out).unwrap();
        let what = format!(
            "hard-ce {ty} on {backend} (n={n} c={c} t={t} eps={eps} ignore={ignore:?} {reduction:?})"
        );
        compare(&what, n, c, reduction, &s, (loss, &rows, &grad), &want, none);
    }
}

fuzz_target!(|data: &[u8]| {
    let mut b = Source {
        bytes: data,
        state: 0xcbf2_9ce4_8422_2325,
    };
    let p = Problem::decode(&mut b);
    // Last, so that an input's shapes and values do not depend on the element type.
    match b.small(2) {
        0 => run::<f32>(&p),
        1 => run::<bf16>(&p),
        _ => run::<f16>(&p),
    }
});
