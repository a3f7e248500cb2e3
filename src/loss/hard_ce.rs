//! Hard-label cross-entropy with label smoothing and `ignore_index` (PyTorch semantics).

use super::{check_logits, check_outputs, check_temperature, Outputs, Reduction};
use crate::dispatch::{self, Isa};
use crate::error::{Error, Result};
use crate::targets::check_unit;
use crate::view::{Element, MatMut, MatRef};
use crate::Backend;

/// Cross-entropy with integer labels, label smoothing `ε` and an optional `ignore_index`,
/// following `torch.nn.functional.cross_entropy(z / t, y, label_smoothing=ε, ignore_index=…)`:
///
/// ```text
/// target of row i = (1 − ε)·e_{y_i} + ε/C          (ε/C lands on the true class too)
/// l_i = logsumexp(z_i/t) − (1 − ε)·z_{i,y_i}/t − (ε/C)·Σ_c z_ic/t
/// ```
///
/// Rows whose label equals the ignore index contribute nothing (loss 0, gradient 0, whatever
/// their logits) and are left out of the mean's denominator. If every row is ignored, the
/// `Mean` loss is NaN (0/0, as in PyTorch) and the gradient is all zeros (no row contributes;
/// a NaN gradient would poison optimiser state).
///
/// ```
/// use softnce::{HardCrossEntropy, MatMut, MatRef};
/// let z = [2.0f32, 0.5, -1.0, 0.0, 0.0, 0.0];
/// let y = [0u32, u32::MAX]; // the second row is ignored
/// let mut g = [9.0f32; 6];
/// let ce = HardCrossEntropy::new().smoothing(0.1).ignore_index(Some(u32::MAX));
/// let loss = ce.loss_and_grad(MatRef::new(&z, 2, 3)?, &y, MatMut::new(&mut g, 2, 3)?)?;
/// assert!(loss > 0.0);
/// assert_eq!(&g[3..], &[0.0, 0.0, 0.0]);
/// # Ok::<(), softnce::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HardCrossEntropy {
    temperature: f32,
    smoothing: f32,
    ignore_index: Option<u32>,
    reduction: Reduction,
    backend: Option<Backend>,
}

impl Default for HardCrossEntropy {
    fn default() -> Self {
        Self::new()
    }
}

impl HardCrossEntropy {
    /// Temperature 1, no smoothing, no ignore index, mean reduction.
    pub fn new() -> Self {
        HardCrossEntropy {
            temperature: 1.0,
            smoothing: 0.0,
            ignore_index: None,
            reduction: Reduction::Mean,
            backend: None,
        }
    }

    /// Sets the temperature `t` (finite, > 0; checked when the loss is computed).
    pub fn temperature(mut self, t: f32) -> Self {
        self.temperature = t;
        self
    }

    /// Sets the label smoothing `ε ∈ [0, 1]` (checked when the loss is computed).
    pub fn smoothing(mut self, eps: f32) -> Self {
        self.smoothing = eps;
        self
    }

    /// Sets the label whose rows are ignored (`None`, the default, ignores nothing). Any
    /// `u32` may serve, including one below `C` (that class's rows are then ignored);
    /// `u32::MAX` is a convenient stand-in for PyTorch's `-100`.
    pub fn ignore_index(mut self, ignore: Option<u32>) -> Self {
        self.ignore_index = ignore;
        self
    }

    /// Sets the reduction (default [`Reduction::Mean`] over the non-ignored rows).
    pub fn reduction(mut self, reduction: Reduction) -> Self {
        self.reduction = reduction;
        self
    }

    /// The temperature.
    pub fn get_temperature(&self) -> f32 {
        self.temperature
    }

    /// The label smoothing.
    pub fn get_smoothing(&self) -> f32 {
        self.smoothing
    }

    /// The ignore index.
    pub fn get_ignore_index(&self) -> Option<u32> {
        self.ignore_index
    }

    /// Forces the backend for this configuration's calls (`None`, the default, uses
    /// [`default_backend`](crate::default_backend): `SOFTNCE_BACKEND` or the fastest
    /// available). A backend the CPU lacks makes every call return
    /// [`Error::BackendUnavailable`].
    pub fn backend(mut self, backend: Option<Backend>) -> Self {
        self.backend = backend;
        self
    }

    /// The forced backend, if any.
    pub fn get_backend(&self) -> Option<Backend> {
        self.backend
    }

    /// The reduction.
    pub fn get_reduction(&self) -> Reduction {
        self.reduction
    }

    /// The reduced loss only; no gradient is computed.
    ///
    /// # Errors
    /// As [`compute`](Self::compute).
    pub fn loss<T: Element>(&self, logits: MatRef<'_, T>, labels: &[u32]) -> Result<f32> {
        self.compute(logits, labels, Outputs::new())
    }

    /// The reduced loss, with the gradient with respect to the logits written to `grad`.
    ///
    /// # Errors
    /// As [`compute`](Self::compute).
    pub fn loss_and_grad<T: Element>(
        &self,
        logits: MatRef<'_, T>,
        labels: &[u32],
        grad: MatMut<'_, T>,
    ) -> Result<f32> {
        self.compute(logits, labels, Outputs::new().grad_logits(grad))
    }

    /// The general call: returns the reduced loss (the sum of row losses for
    /// [`Reduction::None`]) and writes whatever `outputs` asks for.
    ///
    /// # Errors
    /// Nothing is written when an error is returned. [`Error::ZeroClasses`],
    /// [`Error::InvalidTemperature`], [`Error::OutOfUnitInterval`] (smoothing),
    /// [`Error::ShapeMismatch`] (labels ≠ `N`, output shapes), [`Error::LabelOutOfRange`] for a
    /// label `≥ C` that is not the ignore index, [`Error::Upstream`], and
    /// [`Error::TargetGradientNeedsDense`] if a target gradient is requested.
    pub fn compute<T: Element>(
        &self,
        logits: MatRef<'_, T>,
        labels: &[u32],
        outputs: Outputs<'_, T>,
    ) -> Result<f32> {
        let isa = Isa::resolve(self.backend)?;
        check_logits(&logits)?;
        self.validate(&logits, labels)?;
        check_outputs(&logits, &outputs, self.reduction, labels.len())?;
        if outputs.grad_targets.is_some() {
            return Err(Error::TargetGradientNeedsDense);
        }
        dispatch::hard_cross_entropy(isa, self, logits, labels, outputs)
    }

    /// Validates configuration and labels.
    pub(crate) fn validate<T: Element>(&self, logits: &MatRef<'_, T>, labels: &[u32]) -> Result<()> {
        check_temperature(self.temperature)?;
        check_unit("smoothing", 0, self.smoothing)?;
        if labels.len() != logits.rows() {
            return Err(Error::ShapeMismatch {
                what: "labels length vs logit rows",
                expected: logits.rows(),
                found: labels.len(),
            });
        }
        let c = logits.cols();
        for (index, &y) in labels.iter().enumerate() {
            if y as usize >= c && self.ignore_index != Some(y) {
                return Err(Error::LabelOutOfRange {
                    what: "labels",
                    index,
                    label: y,
                    classes: c,
                });
            }
        }
        Ok(())
    }
}
