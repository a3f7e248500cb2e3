//! NEON backend (`aarch64`): 4 lanes in a `float32x4_t`.
//!
//! NEON is part of the `aarch64` baseline, but the intrinsics are still `unsafe` to call from a
//! function without `#[target_feature(enable = "neon")]`; every `unsafe` block below is justified
//! by the [`F32x`] CPU requirement (always met on `aarch64`), plus the pointer requirements for the
//! memory operations.

use core::arch::aarch64::*;

use crate::simd::exp::{
    EXP_C1, EXP_C2, EXP_C3, EXP_C4, EXP_C5, EXP_C6, EXP_X_MAX, EXP_X_MIN, LN2_HI, LN2_LO, LOG2E,
};
use crate::simd::F32x;

/// Four `f32` lanes (`float32x4_t`). Requires NEON, which every `aarch64` CPU has.
#[derive(Clone, Copy, Debug)]
#[repr(transparent)]
pub(crate) struct Neon(pub(crate) float32x4_t);

// SAFETY: LANES is 4 = the number of f32 in a float32x4_t; `load`/`store` access exactly 4 f32s;
// the partial variants copy exactly `n <= 4` f32s through a stack buffer.
unsafe impl F32x for Neon {
    const LANES: usize = 4;

    #[inline(always)]
    fn is_available() -> bool {
        true
    }

    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        // SAFETY: NEON is available (trait CPU requirement).
        Neon(unsafe { vdupq_n_f32(v) })
    }

    #[inline(always)]
    unsafe fn zero() -> Self {
        // SAFETY: NEON is available (trait CPU requirement).
        Neon(unsafe { vdupq_n_f32(0.0) })
    }

    #[inline(always)]
    unsafe fn load(ptr: *const f32) -> Self {
        // SAFETY: NEON is available, and the caller guarantees `ptr` is valid for reading 4
        // aligned f32s (`ld1` needs only element alignment).
        Neon(unsafe { vld1q_f32(ptr) })
    }

    #[inline(always)]
    unsafe fn store(self, ptr: *mut f32) {
        // SAFETY: NEON is available, and the caller guarantees `ptr` is valid for writing 4
        // aligned f32s.
        unsafe { vst1q_f32(ptr, self.0) }
    }

    #[inline(always)]
    unsafe fn load_partial(ptr: *const f32, n: usize, fill: f32) -> Self {
        debug_assert!(n <= 4);
        let mut buf = [fill; 4];
        // SAFETY: the caller guarantees `ptr` is non-null, aligned and valid for `n <= 4` reads;
        // `buf` has room for 4 and does not overlap caller memory. NEON is available.
        unsafe {
            core::ptr::copy_nonoverlapping(ptr, buf.as_mut_ptr(), n.min(4));
            Neon(vld1q_f32(buf.as_ptr()))
        }
    }

    #[inline(always)]
    unsafe fn store_partial(self, ptr: *mut f32, n: usize) {
        debug_assert!(n <= 4);
        let mut buf = [0.0f32; 4];
        // SAFETY: NEON is available; `buf` has room for 4 f32s; the caller guarantees `ptr` is
        // non-null, aligned and valid for `n <= 4` writes, and `buf` does not overlap it.
        unsafe {
            vst1q_f32(buf.as_mut_ptr(), self.0);
            core::ptr::copy_nonoverlapping(buf.as_ptr(), ptr, n.min(4));
        }
    }

    #[inline(always)]
    unsafe fn add(self, rhs: Self) -> Self {
        // SAFETY: NEON is available (trait CPU requirement).
        Neon(unsafe { vaddq_f32(self.0, rhs.0) })
    }

    #[inline(always)]
    unsafe fn sub(self, rhs: Self) -> Self {
        // SAFETY: NEON is available (trait CPU requirement).
        Neon(unsafe { vsubq_f32(self.0, rhs.0) })
    }

    #[inline(always)]
    unsafe fn mul(self, rhs: Self) -> Self {
        // SAFETY: NEON is available (trait CPU requirement).
        Neon(unsafe { vmulq_f32(self.0, rhs.0) })
    }

    #[inline(always)]
    unsafe fn div(self, rhs: Self) -> Self {
        // SAFETY: NEON is available (trait CPU requirement).
        Neon(unsafe { vdivq_f32(self.0, rhs.0) })
    }

    /// `fmax`: NaN if either lane is NaN.
    #[inline(always)]
    unsafe fn max(self, rhs: Self) -> Self {
        // SAFETY: NEON is available (trait CPU requirement).
        Neon(unsafe { vmaxq_f32(self.0, rhs.0) })
    }

    /// `fmin`: NaN if either lane is NaN.
    #[inline(always)]
    unsafe fn min(self, rhs: Self) -> Self {
        // SAFETY: NEON is available (trait CPU requirement).
        Neon(unsafe { vminq_f32(self.0, rhs.0) })
    }

    #[inline(always)]
    unsafe fn fma(self, b: Self, c: Self) -> Self {
        // vfmaq_f32(acc, x, y) = acc + x * y, fused.
        // SAFETY: NEON is available (trait CPU requirement).
        Neon(unsafe { vfmaq_f32(c.0, self.0, b.0) })
    }

    #[inline(always)]
    unsafe fn hsum(self) -> f32 {
        // SAFETY: NEON is available (trait CPU requirement).
        unsafe { vaddvq_f32(self.0) }
    }

    /// `fmaxv` propagates NaN.
    #[inline(always)]
    unsafe fn hmax(self) -> f32 {
        // SAFETY: NEON is available (trait CPU requirement).
        unsafe { vmaxvq_f32(self.0) }
    }

    #[inline(always)]
    unsafe fn zero_where_zero(self, mask: Self) -> Self {
        // `mask == 0` is all-ones exactly where the mask is ±0 (false for NaN): clear those.
        // SAFETY: NEON is available (trait CPU requirement).
        unsafe {
            let zero = vceqzq_f32(mask.0);
            Neon(vreinterpretq_f32_u32(vbicq_u32(
                vreinterpretq_u32_f32(self.0),
                zero,
            )))
        }
    }

    #[inline(always)]
    unsafe fn is_nan_any(self) -> bool {
        // `x == x` is all-ones exactly in the non-NaN lanes.
        // SAFETY: NEON is available (trait CPU requirement).
        unsafe { vminvq_u32(vceqq_f32(self.0, self.0)) == 0 }
    }

    #[inline(always)]
    unsafe fn load_bf16(ptr: *const u16) -> Self {
        // SAFETY: NEON is available; 4 u16s are readable at `ptr`. Widening shift by 16.
        unsafe { Neon(vreinterpretq_f32_u32(vshll_n_u16::<16>(vld1_u16(ptr)))) }
    }

    #[inline(always)]
    unsafe fn store_bf16(self, ptr: *mut u16) {
        // SAFETY: NEON is available; 4 u16s are writable at `ptr`. Round to nearest even on
        // the bits; NaN lanes (where `v == v` is false) are quietened instead.
        unsafe {
            vst1_u16(ptr, vshrn_n_u32::<16>(round_bf16(self.0)));
        }
    }

    #[inline(always)]
    unsafe fn load_bf16x2(ptr: *const u16) -> (Self, Self) {
        // SAFETY: NEON is available; 8 u16s are readable at `ptr`. Element `2i` is the low
        // half of 32-bit word `i` (little-endian), element `2i + 1` its high half.
        unsafe {
            let x = vreinterpretq_u32_u16(vld1q_u16(ptr));
            let lo = vshlq_n_u32::<16>(x);
            let hi = vandq_u32(x, vdupq_n_u32(0xFFFF_0000));
            (Neon(vreinterpretq_f32_u32(lo)), Neon(vreinterpretq_f32_u32(hi)))
        }
    }

    #[inline(always)]
    unsafe fn store_bf16x2(lo: Self, hi: Self, ptr: *mut u16) {
        // SAFETY: NEON is available; 8 u16s are writable at `ptr`. Shift-right-and-insert
        // keeps `hi`'s rounded high halves and puts `lo`'s below them.
        unsafe {
            let w = vsriq_n_u32::<16>(round_bf16(hi.0), round_bf16(lo.0));
            vst1q_u16(ptr, vreinterpretq_u16_u32(w));
        }
    }

    #[inline(always)]
    unsafe fn store_bf16x2_stream(lo: Self, hi: Self, ptr: *mut u16) {
        // SAFETY: the caller's guarantees include those of `store_bf16x2` (NEON has no
        // streaming store here).
        unsafe { Self::store_bf16x2(lo, hi, ptr) }
    }

    #[inline(always)]
    unsafe fn exp(self) -> Self {
        // The shared algorithm of `crate::simd::exp`, step for step (see `exp_scalar`).
        // SAFETY: NEON is available (trait CPU requirement); no memory access.
        unsafe {
            let x = self.0;
            // 1. Clamp (`fmax`/`fmin` propagate NaN).
            let xc = vminq_f32(vmaxq_f32(x, vdupq_n_f32(EXP_X_MIN)), vdupq_n_f32(EXP_X_MAX));
            // 2. Range reduction (`frintn`: round to nearest, ties to even).
            let kf = vrndnq_f32(vmulq_f32(xc, vdupq_n_f32(LOG2E)));
            let r = vfmaq_f32(xc, kf, vdupq_n_f32(-LN2_HI));
            let r = vfmaq_f32(r, kf, vdupq_n_f32(-LN2_LO));
            // 3. Polynomial.
            let mut p = vfmaq_f32(vdupq_n_f32(EXP_C5), vdupq_n_f32(EXP_C6), r);
            p = vfmaq_f32(vdupq_n_f32(EXP_C4), p, r);
            p = vfmaq_f32(vdupq_n_f32(EXP_C3), p, r);
            p = vfmaq_f32(vdupq_n_f32(EXP_C2), p, r);
            p = vfmaq_f32(vdupq_n_f32(EXP_C1), p, r);
            p = vfmaq_f32(vdupq_n_f32(1.0), p, r);
            // 4. Scale by 2^k (`fcvtzs` maps NaN to 0).
            let k = vcvtq_s32_f32(kf);
            let y = vreinterpretq_f32_s32(vaddq_s32(vreinterpretq_s32_f32(p), vshlq_n_s32::<23>(k)));
            // 5. Flush x < EXP_X_MIN (false for NaN) to +0.
            let under = vcltq_f32(x, vdupq_n_f32(EXP_X_MIN));
            Neon(vbslq_f32(under, vdupq_n_f32(0.0), y))
        }
    }
}

/// Every lane of `x` rounded to `bf16` in the high half of its 32 bits (round to nearest even
/// on the bits: add `0x7FFF` plus the kept lsb); NaN lanes (where `x == x` is false) are
/// quietened instead. The low halves are garbage.
///
/// # Safety
/// The CPU has NEON.
#[inline(always)]
unsafe fn round_bf16(x: float32x4_t) -> uint32x4_t {
    // SAFETY: the caller's guarantee; no memory access.
    unsafe {
        let b = vreinterpretq_u32_f32(x);
        let lsb = vandq_u32(vshrq_n_u32::<16>(b), vdupq_n_u32(1));
        let r = vaddq_u32(vaddq_u32(b, vdupq_n_u32(0x7FFF)), lsb);
        let q = vorrq_u32(b, vdupq_n_u32(0x0040_0000));
        vbslq_u32(vceqq_f32(x, x), r, q)
    }
}
