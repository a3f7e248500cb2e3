//! Loss configurations (one module per loss), reductions and the outputs a call writes.

mod hard_ce;
mod infonce;
mod soft_ce;

pub use hard_ce::HardCrossEntropy;
pub use infonce::{Noise, SoftInfoNce};
pub use soft_ce::SoftCrossEntropy;

use crate::error::{Error, Result};
use crate::view::{Element, MatMut, MatRef};

/// How per-row losses `l_i` are combined into the value a call returns, and how the gradient
/// is scaled.
///
/// | reduction | returned value | gradient of row `i` scaled by |
/// |---|---|---|
/// | `Mean` | `Σ l_i / N` (hard CE: `/ #non-ignored`) | `1/N` |
/// | `Sum` | `Σ l_i` | `1` |
/// | `None` | `Σ l_i` (per-row values go to [`Outputs::row_losses`]) | the caller's upstream `dl_i` |
///
/// ```
/// use softnce::{MatRef, Reduction, SoftCrossEntropy, Targets};
/// let z = [1.0f32, 2.0, 3.0, 0.0, 0.0, 0.0];
/// let z = MatRef::new(&z, 2, 3).unwrap();
/// let y = [2u32, 0];
/// let t = Targets::hard(&y, 0.0);
/// let mean = SoftCrossEntropy::new().loss(z, &t).unwrap();
/// let sum = SoftCrossEntropy::new().reduction(Reduction::Sum).loss(z, &t).unwrap();
/// assert!((sum - 2.0 * mean).abs() < 1e-6);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Reduction {
    /// Average over rows (the default, like PyTorch).
    #[default]
    Mean,
    /// Sum over rows.
    Sum,
    /// No reduction: per-row losses, and a gradient weighted by an upstream vector.
    None,
}

/// Where a general [`compute`](SoftInfoNce::compute) call writes its results. Every part is
/// optional; a part left out is not computed (a loss-only call pays for no gradient).
///
/// ```
/// use softnce::{MatMut, MatRef, Outputs, Reduction, SoftCrossEntropy, Targets};
/// let z = [0.5f32, -1.0, 2.0, 0.0];
/// let z = MatRef::new(&z, 2, 2).unwrap();
/// let y = [0u32, 1];
/// let mut rows = [0.0f32; 2];
/// let mut g = [0.0f32; 4];
/// let upstream = [1.0f32, 0.5];
/// let total = SoftCrossEntropy::new()
///     .reduction(Reduction::None)
///     .compute(
///         z,
///         &Targets::hard(&y, 0.0),
///         Outputs::new()
///             .row_losses(&mut rows)
///             .grad_logits(MatMut::new(&mut g, 2, 2).unwrap())
///             .upstream(&upstream),
///     )
///     .unwrap();
/// assert!((total - (rows[0] + rows[1])).abs() < 1e-6);
/// ```
#[derive(Debug, Default)]
pub struct Outputs<'o, T = f32> {
    pub(crate) row_losses: Option<&'o mut [f32]>,
    pub(crate) grad_logits: Option<MatMut<'o, T>>,
    pub(crate) grad_targets: Option<MatMut<'o, T>>,
    pub(crate) upstream: Option<&'o [f32]>,
}

impl<'o, T: Element> Outputs<'o, T> {
    /// Nothing requested yet.
    pub fn new() -> Self {
        Outputs {
            row_losses: None,
            grad_logits: None,
            grad_targets: None,
            upstream: None,
        }
    }

    /// Write the unreduced loss of each row (length `N`; ignored rows of hard CE get 0).
    pub fn row_losses(mut self, out: &'o mut [f32]) -> Self {
        self.row_losses = Some(out);
        self
    }

    /// Write the gradient with respect to the logits (`N × C`).
    pub fn grad_logits(mut self, out: MatMut<'o, T>) -> Self {
        self.grad_logits = Some(out);
        self
    }

    /// Write the gradient with respect to the targets (`M × C`; InfoNCE with
    /// [`Targets::Dense`](crate::Targets::Dense) only).
    pub fn grad_targets(mut self, out: MatMut<'o, T>) -> Self {
        self.grad_targets = Some(out);
        self
    }

    /// The upstream gradient `dl_i` of each row's loss (length `N`); required with
    /// [`Reduction::None`] when a gradient is requested, refused otherwise.
    pub fn upstream(mut self, dl: &'o [f32]) -> Self {
        self.upstream = Some(dl);
        self
    }
}

/// Checks a temperature.
pub(crate) fn check_temperature(t: f32) -> Result<()> {
    if t.is_finite() && t > 0.0 {
        Ok(())
    } else {
        Err(Error::InvalidTemperature(t))
    }
}

/// Checks the logits' shape and the outputs against `n` rows, `c` classes and `m` targets.
pub(crate) fn check_outputs<T: Element>(
    logits: &MatRef<'_, T>,
    outputs: &Outputs<'_, T>,
    reduction: Reduction,
    m: usize,
) -> Result<()> {
    let (n, c) = (logits.rows(), logits.cols());
    if let Some(rows) = &outputs.row_losses {
        if rows.len() != n {
            return Err(Error::ShapeMismatch {
                what: "row_losses length vs logit rows",
                expected: n,
                found: rows.len(),
            });
        }
    }
    if let Some(g) = &outputs.grad_logits {
        check_dims(
            ["grad_logits rows vs logit rows", "grad_logits columns vs classes"],
            g,
            n,
            c,
        )?;
    }
    if let Some(g) = &outputs.grad_targets {
        check_dims(
            [
                "grad_targets rows vs target rows",
                "grad_targets columns vs classes",
            ],
            g,
            m,
            c,
        )?;
    }
    let wants_grad = outputs.grad_logits.is_some() || outputs.grad_targets.is_some();
    check_upstream(reduction, outputs.upstream, wants_grad, n)
}

/// Checks that an upstream vector is given exactly when it applies, with one entry per row.
pub(crate) fn check_upstream(
    reduction: Reduction,
    upstream: Option<&[f32]>,
    wants_grad: bool,
    n: usize,
) -> Result<()> {
    match (reduction, upstream) {
        (Reduction::None, Some(dl)) if dl.len() != n => Err(Error::ShapeMismatch {
            what: "upstream length vs logit rows",
            expected: n,
            found: dl.len(),
        }),
        (Reduction::None, None) if wants_grad => Err(Error::Upstream(
            "Reduction::None needs an upstream vector (Outputs::upstream) to compute a gradient",
        )),
        (Reduction::Mean | Reduction::Sum, Some(_)) => Err(Error::Upstream(
            "an upstream vector applies to Reduction::None only; scale a Mean or Sum gradient yourself",
        )),
        _ => Ok(()),
    }
}

fn check_dims<T: Element>(
    what: [&'static str; 2],
    g: &MatMut<'_, T>,
    rows: usize,
    cols: usize,
) -> Result<()> {
    if g.rows() != rows {
        return Err(Error::ShapeMismatch {
            what: what[0],
            expected: rows,
            found: g.rows(),
        });
    }
    if g.cols() != cols {
        return Err(Error::ShapeMismatch {
            what: what[1],
            expected: cols,
            found: g.cols(),
        });
    }
    Ok(())
}

/// Checks the logits have at least one class.
pub(crate) fn check_logits<T: Element>(logits: &MatRef<'_, T>) -> Result<()> {
    if logits.cols() == 0 {
        Err(Error::ZeroClasses)
    } else {
        Ok(())
    }
}
