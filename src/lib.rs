//! # softnce
//!
//! Classification losses with soft targets for CPUs: **soft-target InfoNCE** (Hugger &
//! Uhlmann 2024, arXiv 2404.14076), hard InfoNCE, **soft-target cross-entropy** and **hard
//! cross-entropy** with label smoothing and `ignore_index`, each computing the loss and its
//! gradient in one call, for dense and structured targets (hard labels, MixUp/CutMix pairs,
//! k-sparse rows), with `f32`, `f16` or `bf16` elements.
//!
//! ## The losses
//! `Z` is `N × C` logits, `A` is `M × C` non-negative target weights, `t > 0` a temperature,
//! `η` a noise distribution over classes (InfoNCE only, uniform by default), `p0` the offset
//! of the positives (`p0 = 0`, `M = N` in one process).
//!
//! | loss | row loss `l_i` | `∂l_i/∂z_i` |
//! |---|---|---|
//! | [`SoftInfoNce`] | `logsumexp_j S_ij − S_{i,p0+i}`, `S_ij = Σ_c a_jc (z_ic/t − log η_c)` | `(Σ_j P_ij a_j − a_{p0+i}) / t`, `P = softmax_j S` |
//! | [`SoftCrossEntropy`] | `(Σ_c a_ic)·logsumexp(z_i/t) − a_i·z_i/t` | `((Σ_c a_ic)·softmax(z_i/t) − a_i) / t` |
//! | [`HardCrossEntropy`] | the same with `a_i = (1−ε) e_{y_i} + ε/C`; ignored rows: 0 | the same; ignored rows: 0 |
//!
//! [`Reduction::Mean`] divides the sum of row losses (and scales every gradient row) by `N`
//! (hard CE: by the number of non-ignored rows), [`Reduction::Sum`] does not,
//! [`Reduction::None`] returns per-row losses and weights gradient row `i` by a caller-given
//! upstream `dl_i`. InfoNCE can also return `∂L/∂a_j = Σ_i scale_i (P_ij − [j = p0+i]) (z_i/t − log η)`
//! for dense targets.
//!
//! ## Example
//! ```
//! use softnce::{HardCrossEntropy, MatMut, MatRef, RowParam, SoftCrossEntropy, SoftInfoNce, Targets};
//!
//! // A batch of 3 rows over 4 classes.
//! let (n, c) = (3, 4);
//! let logits = [1.0f32, 0.0, -1.0, 2.0, 0.5, 0.5, 0.0, -2.0, 3.0, 1.0, 0.0, 0.0];
//! let logits = MatRef::new(&logits, n, c)?;
//! let labels = [3u32, 0, 0];
//! let partner = [0u32, 0, 3]; // MixUp with the reversed batch
//!
//! let mixup = Targets::mixed(&labels, &partner, RowParam::Batch(0.6), 0.1);
//! let mut grad = vec![0.0f32; n * c];
//!
//! // Soft-target InfoNCE: loss and gradient in one call.
//! let nce = SoftInfoNce::new().temperature(1.0);
//! let l_nce = nce.loss_and_grad(logits, &mixup, MatMut::new(&mut grad, n, c)?)?;
//!
//! // The same targets under soft-target cross-entropy, loss only.
//! let l_ce = SoftCrossEntropy::new().loss(logits, &mixup)?;
//!
//! // PyTorch-style hard cross-entropy with label smoothing.
//! let l_hard = HardCrossEntropy::new().smoothing(0.1).loss(logits, &labels)?;
//! assert!(l_nce > 0.0 && l_ce > 0.0 && l_hard > 0.0);
//! # Ok::<(), softnce::Error>(())
//! ```
//!
//! ## Errors and numerics
//! Every call checks its inputs and outputs first and returns a typed [`Error`] (never a
//! panic) for bad shapes, strides, temperatures, offsets, labels, smoothing or mixing weights,
//! negative or non-finite target weights, non-positive noise probabilities and malformed
//! sparse rows; on error nothing is written (one exception: soft cross-entropy checks
//! *dense* target weights inside its kernel, see
//! [`SoftCrossEntropy::check_targets`]). Non-finite logits are data, handled as the
//! [`reference`](mod@crate::reference) module documents: `0·(−∞) = 0`, NaN (and `+∞`) logits make their row NaN,
//! and a row with no finite candidate has loss `+∞`.
//!
//! ## Backends
//! Kernels are compiled for AVX-512 (F/BW/VL/DQ), AVX2+FMA (with F16C), NEON and portable scalar code;
//! the CPU is probed once and the fastest [`Backend`] is used unless the environment
//! variable `SOFTNCE_BACKEND` (`scalar|avx2|avx512|neon|auto`) or a configuration's
//! `.backend(Some(..))` forces one ([`available_backends`] lists what this CPU runs; forcing
//! a missing one is [`Error::BackendUnavailable`]). Large calls run on rayon over blocks of
//! rows whose partition depends only on the shape, so results do not depend on the number
//! of threads. Every loss and target form runs on the SIMD kernels (structured InfoNCE
//! targets by gathers, not a product).
//!
//! ## Half precision
//! `bf16` and `f16` logits, dense targets and gradients are converted inside the kernels
//! (AVX-512 / F16C conversions, `bf16` as a 16-bit shift, NEON conversions), everything is
//! accumulated in `f32`, and each gradient element is rounded once to the caller's type
//! (the target class's `softmax − 1` computed in `f32` first), to nearest even — with
//! `vcvtneps2bf16` on CPUs with AVX-512 BF16, giving the same bits as the integer rounding
//! elsewhere. Large gradients are written with streaming stores in every element type.
//! Dense InfoNCE on `bf16` runs
//! both tile products on the AVX-512 BF16 dot product (`vdpbf16ps`, two multiply-adds per
//! lane) where the CPU has it: scores are as accurate as in `f32` (products of two `bf16`
//! are exact), but the accumulator `Σ_j P_ij a_j` rounds each probability to `bf16`, so a
//! gradient element may move by `u·|g + k·a_p|` (`u = 2⁻⁸`, `k` its row's `scale/t`) beyond
//! its final rounding: the size of that rounding, except where `Σ_j P_ij a_j` and `a_p`
//! nearly cancel. Without AVX-512 BF16, and for `f16`, dense InfoNCE widens to `f32`.
//!
//! ## Performance notes
//! - Large cross-entropy calls move every byte of the logits, dense targets and gradient
//!   once from or to memory; gradients from 64 MiB on are written with streaming stores.
//!   Such calls run faster when the caller's buffers sit on huge pages: on the Zen 4
//!   machine of the README, dense soft and hard `f32` CE at 4096 × 32000 ran 1.07–1.22×
//!   faster on Linux transparent huge pages than on 4 KiB pages
//!   (`madvise(MADV_HUGEPAGE)` on a buffer before its first write, or
//!   `transparent_hugepage/enabled = always`; `bf16` within noise). The crate does not
//!   change how the caller's memory is mapped.
//! - Asking for the loss alone (no [`Outputs::grad_logits`]) skips the gradient sweep and
//!   its scratch stores.
//! - Calls of at least 2¹⁷ logits split their rows over the current rayon pool. On the
//!   2-vCPU VM of the README, a freshly started process often ran such small calls
//!   (256 × 1000) at one thread's speed for its first 50–600 ms, and in 42–48 µs after
//!   that. A long-running training loop sees the latter; a benchmark should warm up first.
//!
//! ## Layout
//! - [`reference`](mod@crate::reference): the scalar `f64` oracle every fast path is tested against;
//! - `dispatch`: backend detection and forcing, and routing of validated calls;
//! - `simd/`: one small vector trait with scalar, AVX2, AVX-512 and NEON implementations
//!   and one shared `exp` (≤ 2 ulp, bit-identical across backends);
//! - `kernels/`: each kernel written once over that trait and stamped per backend;
//! - `loss/`: one module per loss (configuration, validation, orchestration);
//! - [`targets`](Targets): target forms; `view`: strided matrix views.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

mod dispatch;
mod error;
mod kernels;
mod loss;
pub mod reference;
mod simd;
mod targets;
mod view;

pub use dispatch::{available_backends, default_backend, Backend};
pub use error::{Error, Result};
pub use half::{bf16, f16};
pub use loss::{HardCrossEntropy, Noise, Outputs, Reduction, SoftCrossEntropy, SoftInfoNce};
pub use targets::{RowParam, SparseTargets, Targets};
pub use view::{Element, MatMut, MatRef};

/// Compiles the README's Rust examples as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
