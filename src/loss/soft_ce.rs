//! Soft-target cross-entropy: the strong baseline that learns the (smoothed / mixed) targets.

use super::{check_logits, check_outputs, check_temperature, Outputs, Reduction};
use crate::dispatch::{self, Isa};
use crate::error::{Error, Result};
use crate::targets::Targets;
use crate::view::{Element, MatMut, MatRef};
use crate::Backend;

/// Soft-target cross-entropy against one target row per logit row (`M = N`):
///
/// ```text
/// l_i     = (Σ_c a_ic)·logsumexp(z_i/t) − a_i·z_i/t
/// dL/dz_i = scale_i/t · ((Σ_c a_ic)·softmax(z_i/t) − a_i)
/// ```
///
/// Rows need not sum to 1 (like PyTorch's probability targets); a zero row contributes 0 loss
/// and 0 gradient. With [`Targets::Hard`] this is PyTorch's label-smoothed cross-entropy
/// (without `ignore_index`; see [`HardCrossEntropy`](crate::HardCrossEntropy) for that).
///
/// ```
/// use softnce::{MatMut, MatRef, SoftCrossEntropy, Targets};
/// let z = [3.0f32, 1.0, 0.0, 0.0, 0.0, 5.0];
/// let a = [0.9f32, 0.05, 0.05, 0.0, 0.5, 0.5];
/// let mut g = [0.0f32; 6];
/// let loss = SoftCrossEntropy::new().loss_and_grad(
///     MatRef::new(&z, 2, 3)?,
///     &Targets::Dense(MatRef::new(&a, 2, 3)?),
///     MatMut::new(&mut g, 2, 3)?,
/// )?;
/// assert!(loss > 0.0);
/// // Each gradient row sums to zero when the target row sums to one.
/// assert!((g[0] + g[1] + g[2]).abs() < 1e-6);
/// # Ok::<(), softnce::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SoftCrossEntropy {
    temperature: f32,
    reduction: Reduction,
    backend: Option<Backend>,
    check_targets: bool,
}

impl Default for SoftCrossEntropy {
    fn default() -> Self {
        Self::new()
    }
}

impl SoftCrossEntropy {
    /// Temperature 1, mean reduction.
    pub fn new() -> Self {
        SoftCrossEntropy {
            temperature: 1.0,
            reduction: Reduction::Mean,
            backend: None,
            check_targets: true,
        }
    }

    /// Sets the temperature `t` (finite, > 0; checked when the loss is computed).
    pub fn temperature(mut self, t: f32) -> Self {
        self.temperature = t;
        self
    }

    /// Sets the reduction (default [`Reduction::Mean`]: divide by `N`, zero rows included).
    pub fn reduction(mut self, reduction: Reduction) -> Self {
        self.reduction = reduction;
        self
    }

    /// The temperature.
    pub fn get_temperature(&self) -> f32 {
        self.temperature
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

    /// Whether calls check dense target weights for negative or non-finite values (default
    /// `true`). The kernels check each weight as they read it (one vector `min` per 16
    /// weights, no extra pass over memory), and an invalid weight is reported as
    /// [`Error::InvalidTargetWeight`] naming the first offending entry, exactly as a scan
    /// before the call would. The one difference from every other error: this one is found
    /// *while* the kernel runs, so when it is returned the output buffers hold unspecified
    /// values. Turning the check off saves the `min` and the final test; invalid weights
    /// then give unspecified values (typically NaN or infinite losses) but never a panic or
    /// undefined behaviour. Shapes, labels and every other argument are always checked
    /// before anything is written, and the [`reference`](crate::reference) always scans (so
    /// do calls whose temperature is too small for the kernels and runs on it: they report
    /// an invalid weight).
    pub fn check_targets(mut self, check: bool) -> Self {
        self.check_targets = check;
        self
    }

    /// Whether dense target weights are scanned (see [`check_targets`](Self::check_targets)).
    pub fn get_check_targets(&self) -> bool {
        self.check_targets
    }

    /// The reduction.
    pub fn get_reduction(&self) -> Reduction {
        self.reduction
    }

    /// The reduced loss only; no gradient is computed.
    ///
    /// # Errors
    /// As [`compute`](Self::compute).
    pub fn loss<T: Element>(&self, logits: MatRef<'_, T>, targets: &Targets<'_, T>) -> Result<f32> {
        self.compute(logits, targets, Outputs::new())
    }

    /// The reduced loss, with the gradient with respect to the logits written to `grad`.
    ///
    /// # Errors
    /// As [`compute`](Self::compute).
    pub fn loss_and_grad<T: Element>(
        &self,
        logits: MatRef<'_, T>,
        targets: &Targets<'_, T>,
        grad: MatMut<'_, T>,
    ) -> Result<f32> {
        self.compute(logits, targets, Outputs::new().grad_logits(grad))
    }

    /// The general call: returns the reduced loss (the sum of row losses for
    /// [`Reduction::None`]) and writes whatever `outputs` asks for.
    ///
    /// # Errors
    /// Nothing is written when an error is returned, with one exception: an invalid dense
    /// target weight is found during the computation (see
    /// [`check_targets`](Self::check_targets)), so with [`Error::InvalidTargetWeight`] for
    /// dense targets the outputs hold unspecified values. [`Error::ZeroClasses`],
    /// [`Error::InvalidTemperature`], [`Error::ShapeMismatch`] (target rows ≠ `N`, target
    /// columns, output shapes), the target errors ([`Error::LabelOutOfRange`],
    /// [`Error::OutOfUnitInterval`], [`Error::InvalidTargetWeight`], [`Error::MalformedSparse`]),
    /// [`Error::Upstream`], and [`Error::TargetGradientNeedsDense`] if a target gradient is
    /// requested (cross-entropy does not provide one).
    pub fn compute<T: Element>(
        &self,
        logits: MatRef<'_, T>,
        targets: &Targets<'_, T>,
        outputs: Outputs<'_, T>,
    ) -> Result<f32> {
        let isa = Isa::resolve(self.backend)?;
        // Dense weights are checked by `dispatch::soft_cross_entropy`, fused into the kernel.
        let m = self.validate_shapes(&logits, targets)?;
        check_outputs(&logits, &outputs, self.reduction, m)?;
        if outputs.grad_targets.is_some() {
            return Err(Error::TargetGradientNeedsDense);
        }
        dispatch::soft_cross_entropy(isa, self, logits, targets, outputs)
    }

    /// [`validate`](Self::validate) without the scan of dense target weights (the kernels
    /// do it while they read them).
    fn validate_shapes<T: Element>(&self, logits: &MatRef<'_, T>, targets: &Targets<'_, T>) -> Result<usize> {
        self.validate_inner(logits, targets, false)
    }

    /// Validates configuration, logits and targets, dense target weights included (the
    /// reference always scans them); returns `M` (= `N`).
    pub(crate) fn validate<T: Element>(
        &self,
        logits: &MatRef<'_, T>,
        targets: &Targets<'_, T>,
    ) -> Result<usize> {
        self.validate_inner(logits, targets, true)
    }

    fn validate_inner<T: Element>(
        &self,
        logits: &MatRef<'_, T>,
        targets: &Targets<'_, T>,
        check_dense: bool,
    ) -> Result<usize> {
        check_logits(logits)?;
        check_temperature(self.temperature)?;
        let m = targets.validate(logits.cols(), None, check_dense)?;
        if m != logits.rows() {
            return Err(Error::ShapeMismatch {
                what: "cross-entropy target rows vs logit rows",
                expected: logits.rows(),
                found: m,
            });
        }
        Ok(m)
    }
}
