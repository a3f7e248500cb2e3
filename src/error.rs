//! The crate's one error type.

use std::fmt;

/// Everything that can be wrong with the arguments of a loss call.
///
/// Every call validates all of its inputs and output buffers before it computes or writes
/// anything, so when a call returns an error the caller's output buffers are untouched. The
/// one exception is [`Error::InvalidTargetWeight`] for *dense* targets of
/// [`SoftCrossEntropy`](crate::SoftCrossEntropy): those weights are checked inside the
/// kernel as it reads them (a separate scan would cost a quarter of the call's memory
/// traffic), so the outputs hold unspecified values when that error is returned.
/// Non-finite *logits* are not errors: they are data and follow the numerics contract
/// described in the crate documentation.
///
/// ```
/// use softnce::{Error, MatRef};
///
/// let data = [0.0f32; 6];
/// // A stride smaller than the number of columns is rejected.
/// assert!(matches!(MatRef::with_stride(&data, 2, 3, 2), Err(Error::StrideTooSmall { .. })));
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Error {
    /// A matrix has zero columns (a loss needs at least one class).
    ZeroClasses,
    /// A matrix's row stride is smaller than its number of columns.
    StrideTooSmall {
        /// The stride given.
        stride: usize,
        /// The number of columns.
        cols: usize,
    },
    /// A buffer is too short for the shape it is meant to hold.
    BufferTooSmall {
        /// Which buffer.
        what: &'static str,
        /// How many elements the shape needs.
        needed: usize,
        /// How many the buffer has.
        len: usize,
    },
    /// Two sizes that must agree do not.
    ShapeMismatch {
        /// Which size.
        what: &'static str,
        /// The size implied by the other arguments.
        expected: usize,
        /// The size found.
        found: usize,
    },
    /// The temperature is not a finite number greater than zero.
    InvalidTemperature(f32),
    /// InfoNCE positives `offset .. offset + N` do not fit inside the `M` targets.
    OffsetOutOfRange {
        /// The positive offset.
        offset: usize,
        /// Number of logit rows.
        rows: usize,
        /// Number of targets.
        targets: usize,
    },
    /// A class label is not below the number of classes (and is not the ignore index).
    LabelOutOfRange {
        /// Which label array.
        what: &'static str,
        /// Position in that array.
        index: usize,
        /// The label found.
        label: u32,
        /// Number of classes.
        classes: usize,
    },
    /// A smoothing ε or mixing λ lies outside `[0, 1]` (or is NaN).
    OutOfUnitInterval {
        /// Which parameter.
        what: &'static str,
        /// Position (0 for a per-batch value).
        index: usize,
        /// The value found.
        value: f32,
    },
    /// A target weight (dense entry, sparse weight or floor) is negative or not finite.
    InvalidTargetWeight {
        /// Which part of the targets.
        what: &'static str,
        /// Target row.
        row: usize,
        /// Class (or position in the sparse arrays).
        col: usize,
        /// The value found.
        value: f32,
    },
    /// A noise probability is not finite and positive (or a log-probability is not finite).
    InvalidNoise {
        /// Class index.
        class: usize,
        /// The value found.
        value: f32,
    },
    /// A CSR sparse target structure is not well formed.
    MalformedSparse(&'static str),
    /// The combination of reduction, upstream vector and requested outputs is inconsistent.
    Upstream(&'static str),
    /// The gradient with respect to targets was requested for targets that are not `Dense`.
    TargetGradientNeedsDense,
    /// A backend was forced (per call or through `SOFTNCE_BACKEND`) that this CPU cannot run.
    BackendUnavailable(crate::Backend),
    /// `SOFTNCE_BACKEND` (or a parsed string) names no backend.
    UnknownBackend(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::ZeroClasses => write!(f, "zero classes: a loss needs at least one column"),
            Error::StrideTooSmall { stride, cols } => {
                write!(f, "row stride {stride} is smaller than the {cols} columns")
            }
            Error::BufferTooSmall { what, needed, len } => write!(
                f,
                "{what}: buffer of {len} elements is too small, the shape needs {needed}"
            ),
            Error::ShapeMismatch {
                what,
                expected,
                found,
            } => write!(f, "{what}: expected {expected}, found {found}"),
            Error::InvalidTemperature(t) => {
                write!(f, "temperature must be finite and > 0, got {t}")
            }
            Error::OffsetOutOfRange {
                offset,
                rows,
                targets,
            } => write!(
                f,
                "positive offset {offset} + {rows} rows exceeds the {targets} targets"
            ),
            Error::LabelOutOfRange {
                what,
                index,
                label,
                classes,
            } => write!(
                f,
                "{what}[{index}] = {label} is out of range for {classes} classes"
            ),
            Error::OutOfUnitInterval { what, index, value } => {
                write!(f, "{what}[{index}] = {value} is outside [0, 1]")
            }
            Error::InvalidTargetWeight {
                what,
                row,
                col,
                value,
            } => write!(
                f,
                "{what} at row {row}, position {col} is {value}: target weights must be finite and >= 0"
            ),
            Error::InvalidNoise { class, value } => write!(
                f,
                "noise distribution at class {class} is {value}: probabilities must be finite and > 0 \
                 (log-probabilities finite)"
            ),
            Error::MalformedSparse(why) => write!(f, "malformed sparse targets: {why}"),
            Error::Upstream(why) => write!(f, "upstream gradient: {why}"),
            Error::BackendUnavailable(b) => write!(
                f,
                "backend {b} was requested but this CPU cannot run it (available: {})",
                crate::available_backends()
                    .iter()
                    .map(|b| b.name())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Error::UnknownBackend(s) => write!(
                f,
                "unknown backend {s:?}: expected scalar, avx2, avx512, neon or auto"
            ),
            Error::TargetGradientNeedsDense => write!(
                f,
                "the gradient with respect to targets is only available for dense targets"
            ),
        }
    }
}

impl std::error::Error for Error {}

/// Shorthand for `std::result::Result<T, softnce::Error>`.
pub type Result<T> = std::result::Result<T, Error>;
