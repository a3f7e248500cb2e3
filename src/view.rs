//! Row-major matrix views with a row stride, and the element types they may hold.

use crate::error::{Error, Result};
use half::{bf16, f16};

mod sealed {
    pub trait Sealed {}
    impl Sealed for f32 {}
    impl Sealed for half::f16 {}
    impl Sealed for half::bf16 {}
}

/// A floating-point element type that logits, dense targets and gradients may use:
/// `f32`, [`half::f16`] or [`half::bf16`].
///
/// All arithmetic happens in `f32` or wider; values are widened on load and rounded to the
/// caller's type (round to nearest even) on store. The trait is sealed.
///
/// ```
/// use softnce::Element;
/// assert_eq!(<half::bf16 as Element>::from_f64(1.5).to_f64(), 1.5);
/// ```
pub trait Element: sealed::Sealed + Copy + Send + Sync + PartialEq + std::fmt::Debug + 'static {
    /// The value widened to `f32` (exact for all three types).
    fn to_f32(self) -> f32;
    /// The value widened to `f64` (exact).
    fn to_f64(self) -> f64;
    /// `x` rounded to this type (round to nearest even).
    fn from_f32(x: f32) -> Self;
    /// `x` rounded to this type (round to nearest even, directly from `f64`).
    fn from_f64(x: f64) -> Self;
}

impl Element for f32 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        self as f64
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        x
    }
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        x as f32
    }
}

impl Element for f16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        f16::to_f64(self)
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        f16::from_f64(x)
    }
}

impl Element for bf16 {
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
    #[inline(always)]
    fn to_f64(self) -> f64 {
        bf16::to_f64(self)
    }
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
    #[inline(always)]
    fn from_f64(x: f64) -> Self {
        bf16::from_f64(x)
    }
}

/// Number of elements a `rows × cols` matrix with `stride` spans, or `None` on overflow.
fn span(rows: usize, cols: usize, stride: usize) -> Option<usize> {
    if rows == 0 {
        Some(0)
    } else {
        (rows - 1).checked_mul(stride)?.checked_add(cols)
    }
}

fn check_shape(len: usize, rows: usize, cols: usize, stride: usize, what: &'static str) -> Result<()> {
    if stride < cols {
        return Err(Error::StrideTooSmall { stride, cols });
    }
    let needed = span(rows, cols, stride).unwrap_or(usize::MAX);
    if len < needed {
        return Err(Error::BufferTooSmall { what, needed, len });
    }
    Ok(())
}

/// A read-only row-major `rows × cols` matrix inside a slice, rows `stride` elements apart.
///
/// A stride larger than `cols` lets a caller pass a sub-matrix (a column range of a wider
/// buffer) without copying. Only the `cols` leading elements of each row are read.
///
/// ```
/// use softnce::MatRef;
///
/// // The left 2 columns of a 3 × 4 buffer.
/// let buf = [1.0f32, 2.0, 9.0, 9.0, 3.0, 4.0, 9.0, 9.0, 5.0, 6.0, 9.0, 9.0];
/// let m = MatRef::with_stride(&buf, 3, 2, 4).unwrap();
/// assert_eq!(m.row(1), &[3.0, 4.0]);
/// ```
#[derive(Debug, Clone, Copy)]
pub struct MatRef<'a, T = f32> {
    data: &'a [T],
    rows: usize,
    cols: usize,
    stride: usize,
}

impl<'a, T: Element> MatRef<'a, T> {
    /// A densely packed `rows × cols` matrix (stride = `cols`).
    ///
    /// # Errors
    /// [`Error::BufferTooSmall`] if `data` holds fewer than `rows · cols` elements.
    pub fn new(data: &'a [T], rows: usize, cols: usize) -> Result<Self> {
        Self::with_stride(data, rows, cols, cols)
    }

    /// A `rows × cols` matrix whose rows start `stride` elements apart.
    ///
    /// # Errors
    /// [`Error::StrideTooSmall`] if `stride < cols`; [`Error::BufferTooSmall`] if `data` is
    /// shorter than `(rows − 1) · stride + cols`.
    pub fn with_stride(data: &'a [T], rows: usize, cols: usize, stride: usize) -> Result<Self> {
        check_shape(data.len(), rows, cols, stride, "matrix view")?;
        Ok(MatRef {
            data,
            rows,
            cols,
            stride,
        })
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Distance between the starts of consecutive rows, in elements.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Row `i` (its `cols` elements).
    ///
    /// # Panics
    /// If `i >= rows`.
    pub fn row(&self, i: usize) -> &'a [T] {
        assert!(i < self.rows, "row {i} out of range for {} rows", self.rows);
        &self.data[i * self.stride..i * self.stride + self.cols]
    }

    /// The underlying slice (rows start `stride` apart).
    pub(crate) fn data(&self) -> &'a [T] {
        self.data
    }

    /// Element `(i, c)` widened to `f64`.
    ///
    /// # Panics
    /// If the index is out of range.
    pub fn get_f64(&self, i: usize, c: usize) -> f64 {
        assert!(c < self.cols, "column {c} out of range for {} columns", self.cols);
        self.row(i)[c].to_f64()
    }
}

/// A mutable row-major `rows × cols` matrix inside a slice, rows `stride` elements apart:
/// where gradients are written. Elements between `cols` and `stride` are never touched.
///
/// ```
/// use softnce::MatMut;
///
/// let mut buf = vec![0.0f32; 2 * 5];
/// let g = MatMut::with_stride(&mut buf, 2, 3, 5).unwrap();
/// assert_eq!((g.rows(), g.cols(), g.stride()), (2, 3, 5));
/// ```
#[derive(Debug)]
pub struct MatMut<'a, T = f32> {
    data: &'a mut [T],
    rows: usize,
    cols: usize,
    stride: usize,
}

impl<'a, T: Element> MatMut<'a, T> {
    /// A densely packed `rows × cols` matrix (stride = `cols`).
    ///
    /// # Errors
    /// [`Error::BufferTooSmall`] if `data` holds fewer than `rows · cols` elements.
    pub fn new(data: &'a mut [T], rows: usize, cols: usize) -> Result<Self> {
        Self::with_stride(data, rows, cols, cols)
    }

    /// A `rows × cols` matrix whose rows start `stride` elements apart.
    ///
    /// # Errors
    /// [`Error::StrideTooSmall`] if `stride < cols`; [`Error::BufferTooSmall`] if `data` is
    /// shorter than `(rows − 1) · stride + cols`.
    pub fn with_stride(data: &'a mut [T], rows: usize, cols: usize, stride: usize) -> Result<Self> {
        check_shape(data.len(), rows, cols, stride, "mutable matrix view")?;
        Ok(MatMut {
            data,
            rows,
            cols,
            stride,
        })
    }

    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Number of columns.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Distance between the starts of consecutive rows, in elements.
    pub fn stride(&self) -> usize {
        self.stride
    }

    /// Row `i` (its `cols` elements), mutably.
    ///
    /// # Panics
    /// If `i >= rows`.
    pub fn row_mut(&mut self, i: usize) -> &mut [T] {
        assert!(i < self.rows, "row {i} out of range for {} rows", self.rows);
        &mut self.data[i * self.stride..i * self.stride + self.cols]
    }

    /// The underlying slice and the shape `(rows, cols, stride)`.
    pub(crate) fn into_parts(self) -> (&'a mut [T], usize, usize, usize) {
        (self.data, self.rows, self.cols, self.stride)
    }

    /// A read-only view of the same matrix.
    pub fn as_ref(&self) -> MatRef<'_, T> {
        MatRef {
            data: self.data,
            rows: self.rows,
            cols: self.cols,
            stride: self.stride,
        }
    }

    /// Reborrows the view for a shorter lifetime (so it can be passed to a call and used again).
    pub fn reborrow(&mut self) -> MatMut<'_, T> {
        MatMut {
            data: self.data,
            rows: self.rows,
            cols: self.cols,
            stride: self.stride,
        }
    }
}
