//! Portable one-lane backend: the fallback on every target, and the reference the SIMD
//! backends are tested against.

use crate::simd::exp::exp_scalar;
use crate::simd::F32x;

/// One `f32` lane. Works on every CPU; the `unsafe` methods only carry pointer requirements.
///
/// `fma` uses `f32::mul_add` (correctly rounded; a libm call on x86-64 builds without the `fma`
/// target feature).
#[derive(Clone, Copy, Debug, PartialEq)]
#[repr(transparent)]
pub(crate) struct S1(pub(crate) f32);

// SAFETY: LANES is 1 and `load`/`store` access exactly one f32; the partial variants access
// `n <= 1` elements (see the method bodies).
unsafe impl F32x for S1 {
    const LANES: usize = 1;

    #[inline(always)]
    fn is_available() -> bool {
        true
    }

    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        S1(v)
    }

    #[inline(always)]
    unsafe fn zero() -> Self {
        S1(0.0)
    }

    #[inline(always)]
    unsafe fn load(ptr: *const f32) -> Self {
        // SAFETY: the caller guarantees `ptr` is valid for reading one aligned f32.
        S1(unsafe { ptr.read() })
    }

    #[inline(always)]
    unsafe fn store(self, ptr: *mut f32) {
        // SAFETY: the caller guarantees `ptr` is valid for writing one aligned f32.
        unsafe { ptr.write(self.0) }
    }

    #[inline(always)]
    unsafe fn load_bf16x2(ptr: *const u16) -> (Self, Self) {
        // SAFETY: the caller guarantees two readable u16s at `ptr`.
        let (a, b) = unsafe { (ptr.read(), ptr.add(1).read()) };
        (
            S1(f32::from_bits((a as u32) << 16)),
            S1(f32::from_bits((b as u32) << 16)),
        )
    }

    #[inline(always)]
    unsafe fn store_bf16x2(lo: Self, hi: Self, ptr: *mut u16) {
        // SAFETY: the caller guarantees two writable u16s at `ptr`.
        unsafe {
            ptr.write(half::bf16::from_f32(lo.0).to_bits());
            ptr.add(1).write(half::bf16::from_f32(hi.0).to_bits());
        }
    }

    #[inline(always)]
    unsafe fn store_bf16x2_stream(lo: Self, hi: Self, ptr: *mut u16) {
        // SAFETY: the caller's guarantees are those of `store_bf16x2`.
        unsafe { Self::store_bf16x2(lo, hi, ptr) }
    }

    #[inline(always)]
    unsafe fn load_partial(ptr: *const f32, n: usize, fill: f32) -> Self {
        debug_assert!(n <= Self::LANES);
        if n == 0 {
            S1(fill)
        } else {
            // SAFETY: n == 1 here, and the caller guarantees `ptr` is valid for n reads.
            S1(unsafe { ptr.read() })
        }
    }

    #[inline(always)]
    unsafe fn store_partial(self, ptr: *mut f32, n: usize) {
        debug_assert!(n <= Self::LANES);
        if n != 0 {
            // SAFETY: n == 1 here, and the caller guarantees `ptr` is valid for n writes.
            unsafe { ptr.write(self.0) }
        }
    }

    #[inline(always)]
    unsafe fn add(self, rhs: Self) -> Self {
        S1(self.0 + rhs.0)
    }

    #[inline(always)]
    unsafe fn sub(self, rhs: Self) -> Self {
        S1(self.0 - rhs.0)
    }

    #[inline(always)]
    unsafe fn mul(self, rhs: Self) -> Self {
        S1(self.0 * rhs.0)
    }

    #[inline(always)]
    unsafe fn div(self, rhs: Self) -> Self {
        S1(self.0 / rhs.0)
    }

    /// Same convention as x86 `maxps`: returns `rhs` unless `self > rhs` (so `rhs` if either is
    /// NaN).
    #[inline(always)]
    unsafe fn max(self, rhs: Self) -> Self {
        if self.0 > rhs.0 {
            self
        } else {
            rhs
        }
    }

    /// Same convention as x86 `minps`: returns `rhs` unless `self < rhs`.
    #[inline(always)]
    unsafe fn min(self, rhs: Self) -> Self {
        if self.0 < rhs.0 {
            self
        } else {
            rhs
        }
    }

    #[inline(always)]
    unsafe fn fma(self, b: Self, c: Self) -> Self {
        S1(self.0.mul_add(b.0, c.0))
    }

    #[inline(always)]
    unsafe fn hsum(self) -> f32 {
        self.0
    }

    #[inline(always)]
    unsafe fn hmax(self) -> f32 {
        self.0
    }

    #[inline(always)]
    unsafe fn zero_where_zero(self, mask: Self) -> Self {
        if mask.0 == 0.0 {
            S1(0.0)
        } else {
            self
        }
    }

    #[inline(always)]
    unsafe fn is_nan_any(self) -> bool {
        self.0.is_nan()
    }

    #[inline(always)]
    unsafe fn exp(self) -> Self {
        S1(exp_scalar(self.0))
    }
}
