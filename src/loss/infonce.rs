//! Soft-target InfoNCE (Hugger & Uhlmann 2024, arXiv 2404.14076); hard InfoNCE is the same
//! loss with hard targets.

use super::{check_logits, check_outputs, check_temperature, Outputs, Reduction};
use crate::dispatch::{self, Isa};
use crate::error::{Error, Result};
use crate::targets::Targets;
use crate::view::{Element, MatMut, MatRef};
use crate::Backend;

/// The noise distribution `η` over classes that InfoNCE contrasts against.
///
/// Only `log η` enters the loss, through the per-target bias `b_j = Σ_c a_jc·log η_c`. It is
/// used as given (not renormalised); when every target row has the same mass, a constant
/// factor on `η` cancels. Setting `η` to the class prior of the training data makes hard
/// InfoNCE's optimum the true conditional, like cross-entropy's.
///
/// ```
/// use softnce::{Noise, SoftInfoNce};
/// let prior = [0.5f32, 0.3, 0.2];
/// let loss = SoftInfoNce::new().noise(Noise::Probs(&prior));
/// # let _ = loss;
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum Noise<'a> {
    /// `η_c = 1/C` for every class (the default).
    #[default]
    Uniform,
    /// Probabilities `η_c` (finite, > 0), one per class.
    Probs(&'a [f32]),
    /// Log-probabilities `log η_c` (finite), one per class.
    LogProbs(&'a [f32]),
}

/// Soft-target InfoNCE: every logit row `z_i` is scored against every target row `a_j`,
///
/// ```text
/// S_ij = Σ_c a_jc·(z_ic/t − log η_c)        l_i = logsumexp_j S_ij − S_{i, p0+i}
/// dL/dz_i = scale_i/t · (Σ_j P_ij·a_j − a_{p0+i})   with P_ij = softmax_j S_ij
/// dL/da_j = Σ_i scale_i·(P_ij − [j = p0+i])·(z_i/t − log η)
/// ```
///
/// where `scale_i` is `1/N` (mean), `1` (sum) or the upstream `dl_i` (none). Hard InfoNCE is
/// this loss with [`Targets::Hard`] (or one-hot dense) targets.
///
/// With structured targets ([`Targets::Hard`], [`Targets::Mixed`], [`Targets::Sparse`]) the
/// scores are gathered (`S_ij = f_j·Σ_c g_ic + Σ_k w_jk g_{i,c_jk}`), costing `O(N·M·k)`
/// instead of `O(N·M·C)`; those targets are constants, so they have no target gradient
/// ([`Error::TargetGradientNeedsDense`]).
///
/// The `M ≥ N` targets are the candidates; row `i`'s positive is target `p0 + i`
/// ([`offset`](Self::offset)): `p0 = 0, M = N` in one process, `p0 = rank·N, M = world·N`
/// after an all-gather of the targets across data-parallel ranks.
///
/// ```
/// use softnce::{MatMut, MatRef, RowParam, SoftInfoNce, Targets};
///
/// let (n, c) = (4, 3);
/// let z = [2.0f32, 0.1, -1.0, 0.0, 1.5, 0.2, -0.3, 0.0, 1.0, 0.5, 0.5, 0.5];
/// let a = [0u32, 1, 2, 0];
/// let b = [1u32, 1, 0, 2];
/// // MixUp targets with λ = 0.7 and label smoothing 0.1.
/// let targets = Targets::mixed(&a, &b, RowParam::Batch(0.7), 0.1);
/// let mut grad = vec![0.0f32; n * c];
/// let loss = SoftInfoNce::new()
///     .temperature(0.5)
///     .loss_and_grad(MatRef::new(&z, n, c)?, &targets, MatMut::new(&mut grad, n, c)?)?;
/// assert!(loss.is_finite() && loss > 0.0);
/// # Ok::<(), softnce::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SoftInfoNce<'n> {
    temperature: f32,
    noise: Noise<'n>,
    offset: usize,
    reduction: Reduction,
    backend: Option<Backend>,
    check_targets: bool,
}

impl Default for SoftInfoNce<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl<'n> SoftInfoNce<'n> {
    /// Temperature 1, uniform noise, offset 0, mean reduction.
    pub fn new() -> Self {
        SoftInfoNce {
            temperature: 1.0,
            noise: Noise::Uniform,
            offset: 0,
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

    /// Sets the noise distribution `η` (default [`Noise::Uniform`]).
    pub fn noise(mut self, noise: Noise<'n>) -> Self {
        self.noise = noise;
        self
    }

    /// Sets the positive offset `p0`: row `i`'s positive is target `p0 + i` (default 0).
    pub fn offset(mut self, p0: usize) -> Self {
        self.offset = p0;
        self
    }

    /// Sets the reduction (default [`Reduction::Mean`]).
    pub fn reduction(mut self, reduction: Reduction) -> Self {
        self.reduction = reduction;
        self
    }

    /// The temperature.
    pub fn get_temperature(&self) -> f32 {
        self.temperature
    }

    /// The noise distribution.
    pub fn get_noise(&self) -> Noise<'n> {
        self.noise
    }

    /// The positive offset.
    pub fn get_offset(&self) -> usize {
        self.offset
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

    /// Whether calls scan dense target weights for negative or non-finite values (default
    /// `true`). The scan reads the whole `M × C` target matrix once more before the kernel
    /// runs (small next to the `N·M·C` product, but a full pass), so a training loop whose
    /// targets come from a trusted pipeline may turn it off. Without the scan, invalid
    /// weights give unspecified values (typically NaN or infinite losses) but never a panic
    /// or undefined behaviour. Shapes, labels and every other argument are always checked,
    /// and the [`reference`](crate::reference) always scans (so do calls whose temperature
    /// is too small for the kernels and runs on it: they report an invalid weight).
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

    /// The reduced loss, with the gradient with respect to the logits written to `grad`
    /// (`N × C`). With [`Reduction::None`] use [`compute`](Self::compute), which takes the
    /// upstream vector.
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
    /// Nothing is written when an error is returned.
    /// - [`Error::ZeroClasses`], [`Error::ShapeMismatch`] (target columns, output shapes,
    ///   noise length, upstream length), [`Error::InvalidTemperature`],
    ///   [`Error::OffsetOutOfRange`] if `offset + N > M`, [`Error::InvalidNoise`];
    /// - the target errors: [`Error::LabelOutOfRange`], [`Error::OutOfUnitInterval`],
    ///   [`Error::InvalidTargetWeight`], [`Error::MalformedSparse`];
    /// - [`Error::Upstream`] for a missing or superfluous upstream vector;
    /// - [`Error::TargetGradientNeedsDense`] if the target gradient is requested for
    ///   structured targets (they are constants).
    pub fn compute<T: Element>(
        &self,
        logits: MatRef<'_, T>,
        targets: &Targets<'_, T>,
        outputs: Outputs<'_, T>,
    ) -> Result<f32> {
        let isa = Isa::resolve(self.backend)?;
        let m = self.validate(&logits, targets, Some(isa))?;
        check_outputs(&logits, &outputs, self.reduction, m)?;
        if outputs.grad_targets.is_some() && !matches!(targets, Targets::Dense(_)) {
            return Err(Error::TargetGradientNeedsDense);
        }
        dispatch::soft_infonce(isa, self, logits, targets, outputs)
    }

    /// Validates configuration, logits and targets; returns `M`.
    pub(crate) fn validate<T: Element>(
        &self,
        logits: &MatRef<'_, T>,
        targets: &Targets<'_, T>,
        isa: Option<Isa>,
    ) -> Result<usize> {
        check_logits(logits)?;
        check_temperature(self.temperature)?;
        let c = logits.cols();
        match self.noise {
            Noise::Uniform => {}
            Noise::Probs(p) | Noise::LogProbs(p) => {
                if p.len() != c {
                    return Err(Error::ShapeMismatch {
                        what: "noise distribution length vs classes",
                        expected: c,
                        found: p.len(),
                    });
                }
                let is_log = matches!(self.noise, Noise::LogProbs(_));
                for (class, &v) in p.iter().enumerate() {
                    let ok = v.is_finite() && (is_log || v > 0.0);
                    if !ok {
                        return Err(Error::InvalidNoise { class, value: v });
                    }
                }
            }
        }
        let m = targets.validate(c, isa, self.check_targets || isa.is_none())?;
        if self.offset.checked_add(logits.rows()).is_none_or(|end| end > m) {
            return Err(Error::OffsetOutOfRange {
                offset: self.offset,
                rows: logits.rows(),
                targets: m,
            });
        }
        Ok(m)
    }

    /// `log η_c` for each of `c` classes, in `f64`.
    pub(crate) fn log_noise_f64(&self, c: usize) -> Vec<f64> {
        match self.noise {
            Noise::Uniform => vec![-(c as f64).ln(); c],
            Noise::Probs(p) => p.iter().map(|&v| (v as f64).ln()).collect(),
            Noise::LogProbs(l) => l.iter().map(|&v| v as f64).collect(),
        }
    }
}
