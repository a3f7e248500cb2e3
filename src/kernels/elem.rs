//! The element types the kernels read and write: `f32`, `bf16` and `f16`, converted inside
//! the vector loads and stores (a 16-bit shift for `bf16`, F16C / AVX-512 / scalar
//! conversions for `f16`), so that every kernel computes in `f32` and rounds once on store.

use crate::simd::F32x;
use crate::view::Element;
use half::{bf16, f16};
use std::any::TypeId;

/// A kernel element type: `f32`, `bf16` or `f16`.
///
/// # Safety
/// Implementations must read and write exactly `LANES` (resp. `n`) elements at the pointer.
pub(crate) unsafe trait KElem: Element {
    /// Whether this is `f32`.
    const IS_F32: bool;

    /// Whether the kernels' main loops read and write this type two vectors at a time, in
    /// [`load2`](KElem::load2)'s interleaved order (`bf16`, whose widening is then one
    /// operation per vector instead of two).
    const PAIRED: bool = false;

    /// `2·LANES` elements at `p`, widened, in the order of [`F32x::load_bf16x2`] (element
    /// `2i` in lane `i` of the first vector, `2i + 1` in lane `i` of the second). Only
    /// called when [`PAIRED`](KElem::PAIRED) (unpaired types keep this unreachable body).
    ///
    /// # Safety
    /// `V`'s CPU requirement; `p` valid for reads of `2·LANES` elements.
    #[inline(always)]
    unsafe fn load2<V: F32x>(_p: *const Self) -> (V, V) {
        unreachable!("only paired types are read in pairs")
    }

    /// The inverse of [`load2`](KElem::load2), rounding as [`store`](KElem::store); with
    /// `stream`, a non-temporal store (`p` then aligned to `2·LANES · size_of::<Self>()`
    /// bytes). Only called when [`PAIRED`](KElem::PAIRED).
    ///
    /// # Safety
    /// `V`'s CPU requirement; `p` valid for writes of `2·LANES` elements.
    #[inline(always)]
    unsafe fn store2<V: F32x>(_lo: V, _hi: V, _p: *mut Self, _stream: bool) {
        unreachable!("only paired types are written in pairs")
    }

    /// `LANES` elements at `p`, widened.
    ///
    /// # Safety
    /// `V`'s CPU requirement; `p` valid for reads of `LANES` elements.
    unsafe fn load<V: F32x>(p: *const Self) -> V;

    /// Stores the lanes rounded to this type (round to nearest even).
    ///
    /// # Safety
    /// `V`'s CPU requirement; `p` valid for writes of `LANES` elements.
    unsafe fn store<V: F32x>(v: V, p: *mut Self);

    /// [`store`](KElem::store) as a non-temporal (streaming) store where the backend has one
    /// (the same bits; see [`F32x::store_stream`]).
    ///
    /// # Safety
    /// As `store`, and `p` aligned to `LANES · size_of::<Self>()` bytes.
    unsafe fn store_stream<V: F32x>(v: V, p: *mut Self);

    /// The first `n` elements at `p`, widened; lanes `n..` are `fill` (representable in every
    /// element type: the kernels pass `0` and `−∞`).
    ///
    /// # Safety
    /// `V`'s CPU requirement; `n <= LANES`; `p` valid for reads of `n` elements.
    #[inline(always)]
    unsafe fn load_partial<V: F32x>(p: *const Self, n: usize, fill: f32) -> V {
        let mut buf = [Self::from_f32(fill); 16];
        // SAFETY: `n <= LANES <= 16` elements are readable at `p` and fit `buf`; `buf` then
        // holds the 16 >= LANES elements `load` reads.
        unsafe {
            std::ptr::copy_nonoverlapping(p, buf.as_mut_ptr(), n);
            Self::load::<V>(buf.as_ptr())
        }
    }

    /// Stores the first `n` lanes rounded to this type; memory from `p[n]` on is untouched.
    ///
    /// # Safety
    /// `V`'s CPU requirement; `n <= LANES`; `p` valid for writes of `n` elements.
    #[inline(always)]
    unsafe fn store_partial<V: F32x>(v: V, p: *mut Self, n: usize) {
        let mut buf = [Self::from_f32(0.0); 16];
        // SAFETY: `buf` holds 16 >= LANES elements; `n <= LANES` of them are copied to `p`,
        // which the caller guarantees writable.
        unsafe {
            Self::store::<V>(v, buf.as_mut_ptr());
            std::ptr::copy_nonoverlapping(buf.as_ptr(), p, n);
        }
    }

    /// `s` as a slice of this type, if `T` is this type.
    fn cast<T: Element>(s: &[T]) -> Option<&[Self]> {
        (TypeId::of::<T>() == TypeId::of::<Self>()).then(|| {
            // SAFETY: `T` and `Self` are the same type, so the slice is reinterpreted as itself.
            unsafe { std::slice::from_raw_parts(s.as_ptr().cast::<Self>(), s.len()) }
        })
    }

    /// `s` as a mutable slice of this type, if `T` is this type.
    fn cast_mut<T: Element>(s: &mut [T]) -> Option<&mut [Self]> {
        (TypeId::of::<T>() == TypeId::of::<Self>()).then(|| {
            // SAFETY: `T` and `Self` are the same type; the borrow is moved into the result.
            unsafe { std::slice::from_raw_parts_mut(s.as_mut_ptr().cast::<Self>(), s.len()) }
        })
    }
}

// SAFETY: plain LANES-wide (partial: n-wide) f32 loads and stores.
unsafe impl KElem for f32 {
    const IS_F32: bool = true;
    #[inline(always)]
    unsafe fn load<V: F32x>(p: *const f32) -> V {
        // SAFETY: the caller's guarantees.
        unsafe { V::load(p) }
    }
    #[inline(always)]
    unsafe fn store<V: F32x>(v: V, p: *mut f32) {
        // SAFETY: the caller's guarantees.
        unsafe { v.store(p) }
    }
    #[inline(always)]
    unsafe fn store_stream<V: F32x>(v: V, p: *mut f32) {
        // SAFETY: the caller's guarantees.
        unsafe { v.store_stream(p) }
    }
    #[inline(always)]
    unsafe fn load_partial<V: F32x>(p: *const f32, n: usize, fill: f32) -> V {
        // SAFETY: the caller's guarantees.
        unsafe { V::load_partial(p, n, fill) }
    }
    #[inline(always)]
    unsafe fn store_partial<V: F32x>(v: V, p: *mut f32, n: usize) {
        // SAFETY: the caller's guarantees.
        unsafe { v.store_partial(p, n) }
    }
}

// SAFETY: `bf16` is `repr(transparent)` over its `u16` bits; LANES u16s are accessed.
unsafe impl KElem for bf16 {
    const IS_F32: bool = false;
    const PAIRED: bool = true;
    #[inline(always)]
    unsafe fn load2<V: F32x>(p: *const bf16) -> (V, V) {
        // SAFETY: the caller's guarantees; bf16 has the layout of u16.
        unsafe { V::load_bf16x2(p.cast()) }
    }
    #[inline(always)]
    unsafe fn store2<V: F32x>(lo: V, hi: V, p: *mut bf16, stream: bool) {
        // SAFETY: the caller's guarantees (alignment when streaming); bf16 has the layout of
        // u16.
        unsafe {
            if stream {
                V::store_bf16x2_stream(lo, hi, p.cast())
            } else {
                V::store_bf16x2(lo, hi, p.cast())
            }
        }
    }
    #[inline(always)]
    unsafe fn load<V: F32x>(p: *const bf16) -> V {
        // SAFETY: the caller's guarantees; bf16 has the layout of u16.
        unsafe { V::load_bf16(p.cast()) }
    }
    #[inline(always)]
    unsafe fn store<V: F32x>(v: V, p: *mut bf16) {
        // SAFETY: the caller's guarantees; bf16 has the layout of u16.
        unsafe { v.store_bf16(p.cast()) }
    }
    #[inline(always)]
    unsafe fn store_stream<V: F32x>(v: V, p: *mut bf16) {
        // SAFETY: the caller's guarantees; bf16 has the layout of u16.
        unsafe { v.store_bf16_stream(p.cast()) }
    }
}

// SAFETY: `f16` is `repr(transparent)` over its `u16` bits; LANES u16s are accessed.
unsafe impl KElem for f16 {
    const IS_F32: bool = false;
    #[inline(always)]
    unsafe fn load<V: F32x>(p: *const f16) -> V {
        // SAFETY: the caller's guarantees; f16 has the layout of u16.
        unsafe { V::load_f16(p.cast()) }
    }
    #[inline(always)]
    unsafe fn store<V: F32x>(v: V, p: *mut f16) {
        // SAFETY: the caller's guarantees; f16 has the layout of u16.
        unsafe { v.store_f16(p.cast()) }
    }
    #[inline(always)]
    unsafe fn store_stream<V: F32x>(v: V, p: *mut f16) {
        // SAFETY: the caller's guarantees; f16 has the layout of u16.
        unsafe { v.store_f16_stream(p.cast()) }
    }
}

/// `dst = src` widened to `f32`, a vector at a time.
///
/// # Safety
/// `V`'s CPU requirement; `dst` and `src` have the same length.
#[inline(always)]
unsafe fn widen_generic<V: F32x, E: KElem>(src: &[E], dst: &mut [f32]) {
    let (n, l) = (src.len(), V::LANES);
    let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr());
    // SAFETY: full vectors below `n`, then one partial vector, inside both slices.
    unsafe {
        let mut i = 0;
        while i + l <= n {
            E::load::<V>(sp.add(i)).store(dp.add(i));
            i += l;
        }
        if i < n {
            E::load_partial::<V>(sp.add(i), n - i, 0.0).store_partial(dp.add(i), n - i);
        }
    }
}

/// `dst = src` rounded to `E` (nearest even), a vector at a time.
///
/// # Safety
/// `V`'s CPU requirement; `dst` and `src` have the same length.
#[inline(always)]
unsafe fn narrow_generic<V: F32x, E: KElem>(src: &[f32], dst: &mut [E]) {
    let (n, l) = (src.len(), V::LANES);
    let (sp, dp) = (src.as_ptr(), dst.as_mut_ptr());
    // SAFETY: full vectors below `n`, then one partial vector, inside both slices.
    unsafe {
        let mut i = 0;
        while i + l <= n {
            E::store::<V>(V::load(sp.add(i)), dp.add(i));
            i += l;
        }
        if i < n {
            E::store_partial::<V>(V::load_partial(sp.add(i), n - i, 0.0), dp.add(i), n - i);
        }
    }
}

super::stamp! {
    /// Widens a row to `f32` on the backend `isa` (`src` and `dst` of equal length).
    pub(crate) fn widen_row<E: KElem>(src: &[E], dst: &mut [f32]) -> () = widen_generic;
}

super::stamp! {
    /// Rounds a row of `f32` to `E` on the backend `isa` (equal lengths).
    pub(crate) fn narrow_row<E: KElem>(src: &[f32], dst: &mut [E]) -> () = narrow_generic + bf16;
}
