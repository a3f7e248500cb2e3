//! Target forms: dense rows and the structured rows that training pipelines produce.
//!
//! Every form stands for an `M × C` matrix of non-negative weights; the structured forms are
//! exactly equal to the dense row they describe (DESIGN §1e):
//!
//! | form | row `j` |
//! |---|---|
//! | [`Targets::Dense`] | the given row |
//! | [`Targets::Hard`] | `(1 − ε)·e_{y_j} + ε/C` |
//! | [`Targets::Mixed`] | `(1 − ε)·(λ_j·e_{a_j} + (1 − λ_j)·e_{b_j}) + ε/C` |
//! | [`Targets::Sparse`] | `floor_j + Σ_k w_k·e_{c_k}` over the row's CSR entries (duplicates add) |

use crate::dispatch::Isa;
use crate::error::{Error, Result};
use crate::kernels::elem::KElem;
use crate::kernels::validate::dense_valid;
use crate::view::{Element, MatRef};

/// A per-row parameter that is either one value for the whole batch or one value per row.
///
/// ```
/// use softnce::RowParam;
/// let lam = [0.3f32, 0.9];
/// assert_eq!(RowParam::PerRow(&lam).get(1), 0.9);
/// assert_eq!(RowParam::Batch(0.5).get(7), 0.5);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RowParam<'a> {
    /// The same value for every row.
    Batch(f32),
    /// One value per target row.
    PerRow(&'a [f32]),
}

impl RowParam<'_> {
    /// The value for row `j`.
    ///
    /// # Panics
    /// If this is `PerRow` and `j` is out of range.
    pub fn get(&self, j: usize) -> f32 {
        match self {
            RowParam::Batch(v) => *v,
            RowParam::PerRow(v) => v[j],
        }
    }

    fn check_len(&self, rows: usize, what: &'static str) -> Result<()> {
        match self {
            RowParam::PerRow(v) if v.len() != rows => Err(Error::ShapeMismatch {
                what,
                expected: rows,
                found: v.len(),
            }),
            _ => Ok(()),
        }
    }

    fn values(&self) -> impl Iterator<Item = (usize, f32)> + '_ {
        let (single, many): (Option<f32>, &[f32]) = match self {
            RowParam::Batch(v) => (Some(*v), &[]),
            RowParam::PerRow(v) => (None, v),
        };
        single
            .into_iter()
            .map(|v| (0, v))
            .chain(many.iter().copied().enumerate())
    }
}

/// Sparse target rows in CSR form plus a uniform floor per row:
/// row `j` is `floor_j` on every class plus `weights[k]` on class `indices[k]` for
/// `k in indptr[j] .. indptr[j + 1]` (repeated classes add up).
///
/// ```
/// use softnce::{RowParam, SparseTargets};
/// // Two rows over 4 classes: {0: 0.7, 2: 0.2} + 0.025 everywhere, and {3: 1.0}.
/// let indptr = [0usize, 2, 3];
/// let indices = [0u32, 2, 3];
/// let weights = [0.7f32, 0.2, 1.0];
/// let floors = [0.025f32, 0.0];
/// let sp = SparseTargets::new(&indptr, &indices, &weights, RowParam::PerRow(&floors));
/// assert_eq!(sp.rows(), 2);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct SparseTargets<'a> {
    /// Row pointers, length `M + 1`, starting at 0, non-decreasing, ending at `indices.len()`.
    pub indptr: &'a [usize],
    /// Class of each stored entry.
    pub indices: &'a [u32],
    /// Weight of each stored entry (finite, ≥ 0).
    pub weights: &'a [f32],
    /// Weight added to every class of the row (finite, ≥ 0).
    pub floor: RowParam<'a>,
}

impl<'a> SparseTargets<'a> {
    /// Bundles CSR arrays and a floor (nothing is checked until a loss uses them).
    pub fn new(indptr: &'a [usize], indices: &'a [u32], weights: &'a [f32], floor: RowParam<'a>) -> Self {
        SparseTargets {
            indptr,
            indices,
            weights,
            floor,
        }
    }

    /// Number of target rows (`indptr.len() − 1`, or 0 for an empty `indptr`).
    pub fn rows(&self) -> usize {
        self.indptr.len().saturating_sub(1)
    }
}

/// The targets of a loss call: `M` rows over `C` classes, dense or structured.
///
/// For InfoNCE the rows are the candidates every logit row is scored against (`M ≥ N`); for
/// cross-entropy there is one target row per logit row (`M = N`).
///
/// ```
/// use softnce::{MatRef, RowParam, Targets};
///
/// let labels = [2u32, 0, 1];
/// let smoothed: Targets = Targets::hard(&labels, 0.1);
/// let partner = [1u32, 0, 2];
/// let mixup: Targets = Targets::mixed(&labels, &partner, RowParam::Batch(0.7), 0.1);
/// let dense = [0.5f32, 0.5, 0.0, 0.0, 0.0, 1.0];
/// let dense = Targets::Dense(MatRef::new(&dense, 2, 3).unwrap());
/// assert_eq!((smoothed.rows(), mixup.rows(), dense.rows()), (3, 3, 2));
/// ```
#[derive(Debug, Clone, Copy)]
pub enum Targets<'a, T = f32> {
    /// Arbitrary non-negative finite weights, one row per target.
    Dense(MatRef<'a, T>),
    /// One label per row with label smoothing `ε`: `(1 − ε)·e_y + ε/C`.
    Hard {
        /// Class of each row (`< C`).
        labels: &'a [u32],
        /// Label smoothing `ε ∈ [0, 1]`.
        smoothing: f32,
    },
    /// Two labels per row mixed by `λ` (MixUp / CutMix), then smoothed:
    /// `(1 − ε)·(λ·e_a + (1 − λ)·e_b) + ε/C`.
    Mixed {
        /// First label of each row.
        a: &'a [u32],
        /// Second label of each row (the MixUp partner; may equal `a`).
        b: &'a [u32],
        /// Mixing weight `λ ∈ [0, 1]`, per batch or per row.
        lambda: RowParam<'a>,
        /// Label smoothing `ε ∈ [0, 1]`.
        smoothing: f32,
    },
    /// k-sparse rows in CSR form plus a uniform floor.
    Sparse(SparseTargets<'a>),
}

impl<'a, T: Element> Targets<'a, T> {
    /// Hard labels with label smoothing `ε` (use `0.0` for one-hot targets).
    pub fn hard(labels: &'a [u32], smoothing: f32) -> Self {
        Targets::Hard { labels, smoothing }
    }

    /// MixUp / CutMix pairs: labels `a`, partners `b`, weight `λ`, then smoothing `ε`.
    pub fn mixed(a: &'a [u32], b: &'a [u32], lambda: RowParam<'a>, smoothing: f32) -> Self {
        Targets::Mixed {
            a,
            b,
            lambda,
            smoothing,
        }
    }

    /// Number of target rows `M`.
    pub fn rows(&self) -> usize {
        match self {
            Targets::Dense(m) => m.rows(),
            Targets::Hard { labels, .. } => labels.len(),
            Targets::Mixed { a, .. } => a.len(),
            Targets::Sparse(s) => s.rows(),
        }
    }

    /// Checks the targets against `classes` columns; returns the number of rows `M`. With an
    /// `isa`, dense `f32` weights are checked by the vectorised kernel first (the scalar loop
    /// then only runs to name the first bad entry). `check_dense = false` skips the scan of
    /// dense weights (shapes are still checked).
    pub(crate) fn validate(&self, classes: usize, isa: Option<Isa>, check_dense: bool) -> Result<usize> {
        match self {
            Targets::Dense(m) => {
                if m.cols() != classes {
                    return Err(Error::ShapeMismatch {
                        what: "target columns vs logit columns",
                        expected: classes,
                        found: m.cols(),
                    });
                }
                if !check_dense {
                    return Ok(m.rows());
                }
                if let Some(isa) = isa {
                    let (data, rows, cols, stride) = (m.data(), m.rows(), m.cols(), m.stride());
                    let ok = if let Some(a) = f32::cast(data) {
                        dense_valid(isa, a, rows, cols, stride)
                    } else if let Some(a) = half::bf16::cast(data) {
                        dense_valid(isa, a, rows, cols, stride)
                    } else {
                        half::f16::cast(data).is_some_and(|a| dense_valid(isa, a, rows, cols, stride))
                    };
                    if ok {
                        return Ok(m.rows());
                    }
                }
                for j in 0..m.rows() {
                    for (c, &v) in m.row(j).iter().enumerate() {
                        let v = v.to_f32();
                        if !(v.is_finite() && v >= 0.0) {
                            return Err(Error::InvalidTargetWeight {
                                what: "dense target",
                                row: j,
                                col: c,
                                value: v,
                            });
                        }
                    }
                }
            }
            Targets::Hard { labels, smoothing } => {
                check_unit("smoothing", 0, *smoothing)?;
                check_labels("labels", labels, classes)?;
            }
            Targets::Mixed {
                a,
                b,
                lambda,
                smoothing,
            } => {
                check_unit("smoothing", 0, *smoothing)?;
                if b.len() != a.len() {
                    return Err(Error::ShapeMismatch {
                        what: "mixed targets: length of b vs a",
                        expected: a.len(),
                        found: b.len(),
                    });
                }
                lambda.check_len(a.len(), "mixed targets: per-row lambda vs rows")?;
                for (j, v) in lambda.values() {
                    check_unit("lambda", j, v)?;
                }
                check_labels("a", a, classes)?;
                check_labels("b", b, classes)?;
            }
            Targets::Sparse(s) => s.validate(classes)?,
        }
        Ok(self.rows())
    }

    /// Row `j` as dense `f64` weights (the reference's densification). `out.len()` is `C`.
    pub(crate) fn dense_row_f64(&self, j: usize, out: &mut [f64]) {
        let classes = out.len();
        let uniform = |eps: f32| eps as f64 / classes as f64;
        match self {
            Targets::Dense(m) => {
                for (o, &v) in out.iter_mut().zip(m.row(j)) {
                    *o = v.to_f64();
                }
            }
            Targets::Hard { labels, smoothing } => {
                out.fill(uniform(*smoothing));
                out[labels[j] as usize] += 1.0 - *smoothing as f64;
            }
            Targets::Mixed {
                a,
                b,
                lambda,
                smoothing,
            } => {
                let eps = *smoothing as f64;
                let lam = lambda.get(j) as f64;
                out.fill(uniform(*smoothing));
                out[a[j] as usize] += (1.0 - eps) * lam;
                out[b[j] as usize] += (1.0 - eps) * (1.0 - lam);
            }
            Targets::Sparse(s) => {
                out.fill(s.floor.get(j) as f64);
                for k in s.indptr[j]..s.indptr[j + 1] {
                    out[s.indices[k] as usize] += s.weights[k] as f64;
                }
            }
        }
    }
}

/// The explicit entries `(class, weight)` of one structured target row.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Entries<'a> {
    /// Up to two entries (hard labels: one; MixUp pairs: two).
    Few([(u32, f32); 2], usize),
    /// A CSR row.
    Csr(&'a [u32], &'a [f32]),
}

impl Entries<'_> {
    #[inline]
    pub(crate) fn iter(&self) -> impl Iterator<Item = (u32, f32)> + '_ {
        let (few, idx, w): (&[(u32, f32)], &[u32], &[f32]) = match self {
            Entries::Few(e, k) => (&e[..*k], &[], &[]),
            Entries::Csr(i, w) => (&[], i, w),
        };
        few.iter()
            .copied()
            .chain(idx.iter().copied().zip(w.iter().copied()))
    }
}

/// A structured target form without the element type (its weights are `f32` whatever the
/// logits' type), as the kernels consume it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Structured<'a> {
    Hard {
        labels: &'a [u32],
        smoothing: f32,
    },
    Mixed {
        a: &'a [u32],
        b: &'a [u32],
        lambda: RowParam<'a>,
        smoothing: f32,
    },
    Sparse(SparseTargets<'a>),
}

impl<'a, T: Element> Targets<'a, T> {
    /// The structured form, or `None` for dense targets.
    pub(crate) fn structured(&self) -> Option<Structured<'a>> {
        Some(match *self {
            Targets::Dense(_) => return None,
            Targets::Hard { labels, smoothing } => Structured::Hard { labels, smoothing },
            Targets::Mixed {
                a,
                b,
                lambda,
                smoothing,
            } => Structured::Mixed {
                a,
                b,
                lambda,
                smoothing,
            },
            Targets::Sparse(s) => Structured::Sparse(s),
        })
    }
}

impl Structured<'_> {
    /// Row `j` as `f32` (uniform floor, explicit entries): exactly the row that
    /// [`Targets::dense_row_f64`] densifies, up to the `f32` rounding of `ε/C`, `(1 − ε)·λ`
    /// and `(1 − ε)·(1 − λ)`.
    #[inline]
    pub(crate) fn row(&self, j: usize, classes: usize) -> (f32, Entries<'_>) {
        let uniform = |eps: f32| eps / classes as f32;
        match self {
            Structured::Hard { labels, smoothing } => (
                uniform(*smoothing),
                Entries::Few([(labels[j], 1.0 - smoothing), (0, 0.0)], 1),
            ),
            Structured::Mixed {
                a,
                b,
                lambda,
                smoothing,
            } => {
                let lam = lambda.get(j);
                let keep = 1.0 - smoothing;
                (
                    uniform(*smoothing),
                    Entries::Few([(a[j], keep * lam), (b[j], keep * (1.0 - lam))], 2),
                )
            }
            Structured::Sparse(s) => {
                let r = s.indptr[j]..s.indptr[j + 1];
                (s.floor.get(j), Entries::Csr(&s.indices[r.clone()], &s.weights[r]))
            }
        }
    }
}

impl SparseTargets<'_> {
    fn validate(&self, classes: usize) -> Result<()> {
        let p = self.indptr;
        if p.is_empty() {
            return Err(Error::MalformedSparse("indptr is empty (it needs M + 1 entries)"));
        }
        if p[0] != 0 {
            return Err(Error::MalformedSparse("indptr[0] is not 0"));
        }
        if p.windows(2).any(|w| w[1] < w[0]) {
            return Err(Error::MalformedSparse("indptr is decreasing somewhere"));
        }
        if self.indices.len() != self.weights.len() {
            return Err(Error::MalformedSparse("indices and weights differ in length"));
        }
        if p[p.len() - 1] != self.indices.len() {
            return Err(Error::MalformedSparse(
                "indptr's last entry is not the number of stored entries",
            ));
        }
        let rows = self.rows();
        self.floor
            .check_len(rows, "sparse targets: per-row floor vs rows")?;
        for (j, v) in self.floor.values() {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::InvalidTargetWeight {
                    what: "sparse floor",
                    row: j,
                    col: 0,
                    value: v,
                });
            }
        }
        for j in 0..rows {
            for k in p[j]..p[j + 1] {
                let (c, w) = (self.indices[k], self.weights[k]);
                if c as usize >= classes {
                    return Err(Error::LabelOutOfRange {
                        what: "sparse indices",
                        index: k,
                        label: c,
                        classes,
                    });
                }
                if !(w.is_finite() && w >= 0.0) {
                    return Err(Error::InvalidTargetWeight {
                        what: "sparse weight",
                        row: j,
                        col: k,
                        value: w,
                    });
                }
            }
        }
        Ok(())
    }
}

pub(crate) fn check_unit(what: &'static str, index: usize, v: f32) -> Result<()> {
    if (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(Error::OutOfUnitInterval {
            what,
            index,
            value: v,
        })
    }
}

pub(crate) fn check_labels(what: &'static str, labels: &[u32], classes: usize) -> Result<()> {
    match labels.iter().position(|&y| y as usize >= classes) {
        Some(index) => Err(Error::LabelOutOfRange {
            what,
            index,
            label: labels[index],
            classes,
        }),
        None => Ok(()),
    }
}
