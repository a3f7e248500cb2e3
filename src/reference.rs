//! The scalar reference: every loss, reduction and target form written as plainly as
//! possible, accumulating in `f64`, with structured targets densified row by row.
//!
//! This module is the oracle that every fast path is tested against. It favours clarity over
//! speed (it allocates, and InfoNCE costs `O(N·M·C)` whatever the target form). It validates
//! its inputs exactly like the public loss calls and returns every result in `f64`.
//!
//! ```
//! use softnce::{reference, MatRef, SoftInfoNce, Targets};
//!
//! let z = [2.0f32, 0.0, 0.0, 2.0];
//! let y = [0u32, 1];
//! let r = reference::soft_infonce(
//!     &SoftInfoNce::new(),
//!     MatRef::new(&z, 2, 2).unwrap(),
//!     &Targets::hard(&y, 0.0),
//!     &reference::Request::loss_and_grad(),
//! )
//! .unwrap();
//! // Each row: logsumexp(2, 0) − 2 = ln(1 + e^−2).
//! assert!((r.loss - (1.0 + (-2.0f64).exp()).ln()).abs() < 1e-12);
//! ```
//!
//! # Numerics (shared by every backend)
//! - `0 · (−∞) = 0`: a zero target weight on a masked (−∞) logit contributes nothing; a
//!   positive weight on it makes the row's loss `+∞`.
//! - A row whose logits contain NaN or `+∞` has a NaN loss and a NaN gradient row (for
//!   InfoNCE the NaN also reaches every row of the target gradient). Ignored rows of hard
//!   cross-entropy are the exception: they contribute nothing whatever their logits.
//! - A row whose candidates are all −∞ (every InfoNCE score `S_ij = −∞`, or every logit of a
//!   cross-entropy row with positive target mass) has loss `+∞`; its probabilities are taken
//!   as all zero (an empty normaliser), so its gradient is `−a_pos / t` (InfoNCE) or `−a / t`
//!   (cross-entropy), times the row's scale: exactly what the gradient of every masked class
//!   is when only some classes are masked.
//! - The InfoNCE target gradient `Σ_i scale_i (P_ij − [j = p0+i]) u_i` at a masked logit
//!   (`u_ic = −∞`) is `±∞` whenever the exact weight `P_ij − [j = p0+i]` is non-zero
//!   (`P_ij > 0` exactly when `S_ij` is finite, `P_pos < 1` exactly when another candidate
//!   is), however small it rounds, and `0` otherwise.

use crate::error::{Error, Result};
use crate::loss::{check_logits, check_upstream, HardCrossEntropy, Reduction, SoftCrossEntropy, SoftInfoNce};
use crate::targets::Targets;
use crate::view::{Element, MatRef};

/// What a reference call computes besides the loss.
#[derive(Debug, Clone, Copy, Default)]
pub struct Request<'a> {
    /// Compute the gradient with respect to the logits.
    pub grad_logits: bool,
    /// Compute the gradient with respect to the (dense) targets; InfoNCE only.
    pub grad_targets: bool,
    /// Upstream `dl_i` per row; required with [`Reduction::None`] when a gradient is requested.
    pub upstream: Option<&'a [f32]>,
}

impl Request<'_> {
    /// The loss only.
    pub fn loss_only() -> Self {
        Request::default()
    }

    /// The loss and the gradient with respect to the logits.
    pub fn loss_and_grad() -> Self {
        Request {
            grad_logits: true,
            ..Request::default()
        }
    }
}

/// Everything a reference call computed, in `f64`.
#[derive(Debug, Clone, PartialEq)]
pub struct RefOutput {
    /// The reduced loss (for [`Reduction::None`], the sum of the row losses).
    pub loss: f64,
    /// The unreduced loss of every row (length `N`).
    pub row_losses: Vec<f64>,
    /// Gradient with respect to the logits, `N × C` row-major (empty if not requested).
    pub grad_logits: Vec<f64>,
    /// Gradient with respect to the targets, `M × C` row-major (empty if not requested).
    pub grad_targets: Vec<f64>,
}

/// `a · g` with the convention `0 · (±∞) = 0` (a zero weight on a masked class contributes
/// nothing); NaN still propagates.
#[inline]
fn mul0(a: f64, g: f64) -> f64 {
    if a == 0.0 && g.is_infinite() {
        0.0
    } else {
        a * g
    }
}

/// True if a row of (scaled) logits holds a NaN or `+∞`, which makes the row NaN.
fn poisoned(u: &[f64]) -> bool {
    u.iter().any(|x| x.is_nan() || *x == f64::INFINITY)
}

/// Per-row gradient scale of a reduction (`Mean` divides by `count`).
fn scales(reduction: Reduction, n: usize, count: usize, upstream: Option<&[f32]>) -> Vec<f64> {
    match reduction {
        Reduction::Mean => vec![1.0 / count as f64; n],
        Reduction::Sum => vec![1.0; n],
        Reduction::None => match upstream {
            Some(dl) => dl.iter().map(|&d| d as f64).collect(),
            None => vec![f64::NAN; n],
        },
    }
}

fn reduce(reduction: Reduction, rows: &[f64], count: usize) -> f64 {
    let sum: f64 = rows.iter().sum();
    match reduction {
        Reduction::Mean => sum / count as f64,
        Reduction::Sum | Reduction::None => sum,
    }
}

fn check_request(reduction: Reduction, req: &Request<'_>, n: usize) -> Result<()> {
    check_upstream(reduction, req.upstream, req.grad_logits || req.grad_targets, n)
}

fn logits_f64<T: Element>(logits: &MatRef<'_, T>, i: usize, t: f64) -> Vec<f64> {
    logits.row(i).iter().map(|z| z.to_f64() / t).collect()
}

/// Soft-target InfoNCE (DESIGN §1a): `S_ij = Σ_c a_jc·(z_ic/t − log η_c)`,
/// `l_i = logsumexp_j S_ij − S_{i, offset+i}`.
///
/// # Errors
/// Exactly those of [`SoftInfoNce::compute`] for the inputs.
pub fn soft_infonce<T: Element>(
    cfg: &SoftInfoNce<'_>,
    logits: MatRef<'_, T>,
    targets: &Targets<'_, T>,
    req: &Request<'_>,
) -> Result<RefOutput> {
    let m = cfg.validate(&logits, targets, None)?;
    check_request(cfg.get_reduction(), req, logits.rows())?;
    if req.grad_targets && !matches!(targets, Targets::Dense(_)) {
        return Err(Error::TargetGradientNeedsDense);
    }
    let (n, c) = (logits.rows(), logits.cols());
    let t = cfg.get_temperature() as f64;
    let log_eta = cfg.log_noise_f64(c);
    let p0 = cfg.get_offset();
    let scale = scales(cfg.get_reduction(), n, n, req.upstream);

    // Densify the targets once (clarity over memory).
    let mut a = vec![0.0f64; m * c];
    for (j, row) in a.chunks_mut(c.max(1)).enumerate().take(m) {
        targets.dense_row_f64(j, row);
    }
    let arow = |j: usize| &a[j * c..(j + 1) * c];

    let mut row_losses = vec![0.0; n];
    let mut grad = if req.grad_logits {
        vec![0.0; n * c]
    } else {
        Vec::new()
    };
    let mut grad_a = if req.grad_targets {
        vec![0.0; m * c]
    } else {
        Vec::new()
    };
    let mut s = vec![0.0f64; m];
    let mut p = vec![0.0f64; m];
    for i in 0..n {
        let u = logits_f64(&logits, i, t);
        let g: Vec<f64> = u.iter().zip(&log_eta).map(|(u, le)| u - le).collect();
        let pos = p0 + i;
        for (j, sj) in s.iter_mut().enumerate() {
            *sj = arow(j).iter().zip(&g).map(|(&aj, &gi)| mul0(aj, gi)).sum();
        }
        let loss;
        if poisoned(&u) || s.iter().any(|x| x.is_nan()) {
            loss = f64::NAN;
            p.fill(f64::NAN);
        } else {
            let mx = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            if mx == f64::NEG_INFINITY {
                loss = f64::INFINITY;
                p.fill(0.0);
            } else {
                let sum: f64 = s.iter().map(|x| (x - mx).exp()).sum();
                for (pj, sj) in p.iter_mut().zip(&s) {
                    *pj = (sj - mx).exp() / sum;
                }
                // (mx − S_pos) + ln Σ: no cancellation between two large numbers.
                loss = (mx - s[pos]) + sum.ln();
            }
        }
        row_losses[i] = loss;
        if req.grad_logits {
            let gi = &mut grad[i * c..(i + 1) * c];
            for (j, &pj) in p.iter().enumerate() {
                for (o, &aj) in gi.iter_mut().zip(arow(j)) {
                    *o += pj * aj;
                }
            }
            for (o, &ap) in gi.iter_mut().zip(arow(pos)) {
                *o = (*o - ap) * scale[i] / t;
            }
        }
        if req.grad_targets {
            // Whether a candidate other than the positive has a finite score (then P_pos < 1).
            let rivals = s
                .iter()
                .enumerate()
                .any(|(j, &sj)| j != pos && sj > f64::NEG_INFINITY);
            for (j, &pj) in p.iter().enumerate() {
                let w = target_weight(pj, j == pos, s[j] > f64::NEG_INFINITY, rivals, scale[i]);
                for (o, &gc) in grad_a[j * c..(j + 1) * c].iter_mut().zip(&g) {
                    *o += mul0(w, gc);
                }
            }
        }
    }
    Ok(RefOutput {
        loss: reduce(cfg.get_reduction(), &row_losses, n),
        row_losses,
        grad_logits: grad,
        grad_targets: grad_a,
    })
}

/// One cross-entropy row: loss `(Σa)·logsumexp(u) − a·u` with `u = z/t`, and, if `grad` is
/// given, `grad = scale/t · ((Σa)·softmax(u) − a)`.
fn ce_row(u: &[f64], a: &[f64], t: f64, scale: f64, grad: Option<&mut [f64]>) -> f64 {
    let mass: f64 = a.iter().sum();
    let (loss, probs): (f64, Vec<f64>) = if poisoned(u) {
        (f64::NAN, vec![f64::NAN; u.len()])
    } else if mass == 0.0 {
        (0.0, vec![0.0; u.len()])
    } else {
        let mx = u.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        if mx == f64::NEG_INFINITY {
            (f64::INFINITY, vec![0.0; u.len()])
        } else {
            let sum: f64 = u.iter().map(|x| (x - mx).exp()).sum();
            // mass·(mx + ln Σ) − a·u written as a sum of non-negative terms (no cancellation
            // between two large numbers when the logits are large).
            let gap: f64 = a.iter().zip(u).map(|(&ac, &uc)| mul0(ac, mx - uc)).sum();
            (
                mass * sum.ln() + gap,
                u.iter().map(|x| (x - mx).exp() / sum).collect(),
            )
        }
    };
    if let Some(g) = grad {
        for ((o, &pc), &ac) in g.iter_mut().zip(&probs).zip(a) {
            *o = (mass * pc - ac) * scale / t;
        }
    }
    loss
}

/// The weight `(P_ij − [j = pos])·scale` of `u_i` in the target gradient of target `j`. When
/// it rounds to zero but is not zero mathematically (`P_ij > 0` exactly when `S_ij` is
/// finite, `P_pos < 1` exactly when another candidate is finite), the smallest normal value
/// of the right sign stands in for it, so that a masked logit (`u = −∞`) gives the infinite
/// gradient the exact weight implies, not a rounding-dependent `0·(−∞) = 0`.
fn target_weight(p: f64, is_pos: bool, finite: bool, rivals: bool, scale: f64) -> f64 {
    let w = (p - if is_pos { 1.0 } else { 0.0 }) * scale;
    let exact_nonzero = if is_pos { rivals } else { finite };
    if w == 0.0 && scale != 0.0 && exact_nonzero {
        f64::MIN_POSITIVE.copysign(if is_pos { -scale } else { scale })
    } else {
        w
    }
}

/// Soft-target cross-entropy (DESIGN §1b): `l_i = (Σ_c a_ic)·logsumexp(z_i/t) − a_i·z_i/t`.
///
/// # Errors
/// Exactly those of [`SoftCrossEntropy::compute`] for the inputs.
pub fn soft_cross_entropy<T: Element>(
    cfg: &SoftCrossEntropy,
    logits: MatRef<'_, T>,
    targets: &Targets<'_, T>,
    req: &Request<'_>,
) -> Result<RefOutput> {
    cfg.validate(&logits, targets)?;
    check_request(cfg.get_reduction(), req, logits.rows())?;
    if req.grad_targets {
        return Err(Error::TargetGradientNeedsDense);
    }
    let (n, c) = (logits.rows(), logits.cols());
    let t = cfg.get_temperature() as f64;
    let scale = scales(cfg.get_reduction(), n, n, req.upstream);
    let mut row_losses = vec![0.0; n];
    let mut grad = if req.grad_logits {
        vec![0.0; n * c]
    } else {
        Vec::new()
    };
    let mut a = vec![0.0f64; c];
    for i in 0..n {
        targets.dense_row_f64(i, &mut a);
        let u = logits_f64(&logits, i, t);
        let g = req.grad_logits.then(|| &mut grad[i * c..(i + 1) * c]);
        row_losses[i] = ce_row(&u, &a, t, scale[i], g);
    }
    Ok(RefOutput {
        loss: reduce(cfg.get_reduction(), &row_losses, n),
        row_losses,
        grad_logits: grad,
        grad_targets: Vec::new(),
    })
}

/// Hard cross-entropy with label smoothing and `ignore_index` (DESIGN §1c, PyTorch semantics):
/// row `i` is soft cross-entropy against `(1 − ε)·e_{y_i} + ε/C`; rows labelled `ignore_index`
/// contribute nothing and leave the mean's denominator.
///
/// # Errors
/// Exactly those of [`HardCrossEntropy::compute`] for the inputs.
pub fn hard_cross_entropy<T: Element>(
    cfg: &HardCrossEntropy,
    logits: MatRef<'_, T>,
    labels: &[u32],
    req: &Request<'_>,
) -> Result<RefOutput> {
    check_logits(&logits)?;
    cfg.validate(&logits, labels)?;
    check_request(cfg.get_reduction(), req, logits.rows())?;
    if req.grad_targets {
        return Err(Error::TargetGradientNeedsDense);
    }
    let (n, c) = (logits.rows(), logits.cols());
    let t = cfg.get_temperature() as f64;
    let eps = cfg.get_smoothing() as f64;
    let ignored = |y: u32| cfg.get_ignore_index() == Some(y);
    let count = labels.iter().filter(|&&y| !ignored(y)).count();
    let scale = scales(cfg.get_reduction(), n, count, req.upstream);
    let mut row_losses = vec![0.0; n];
    let mut grad = if req.grad_logits {
        vec![0.0; n * c]
    } else {
        Vec::new()
    };
    let mut a = vec![0.0f64; c];
    for i in 0..n {
        if ignored(labels[i]) {
            continue; // loss 0, gradient row 0
        }
        a.fill(eps / c as f64);
        a[labels[i] as usize] += 1.0 - eps;
        let u = logits_f64(&logits, i, t);
        let g = req.grad_logits.then(|| &mut grad[i * c..(i + 1) * c]);
        row_losses[i] = ce_row(&u, &a, t, scale[i], g);
    }
    Ok(RefOutput {
        loss: reduce(cfg.get_reduction(), &row_losses, count),
        row_losses,
        grad_logits: grad,
        grad_targets: Vec::new(),
    })
}
