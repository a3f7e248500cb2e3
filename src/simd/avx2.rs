//! AVX2 + FMA (+ F16C) backend: 8 lanes in a `__m256`.
//!
//! Every `unsafe` block in this file executes AVX/AVX2/FMA (and SSE..SSE4.1, implied by AVX2)
//! instructions; they are justified by the [`F32x`] CPU requirement (the caller guarantees
//! `Avx2::is_available()`), plus the pointer requirements for the memory operations.

use core::arch::x86_64::*;

use crate::simd::exp::{
    EXP_C1, EXP_C2, EXP_C3, EXP_C4, EXP_C5, EXP_C6, EXP_X_MAX, EXP_X_MIN, LN2_HI, LN2_LO, LOG2E,
};
use crate::simd::F32x;

/// Eight `f32` lanes (`__m256`). Requires the `avx2`, `fma` and `f16c` CPU features (F16C
/// converts binary16 values; every AVX2 CPU has it).
#[derive(Clone, Copy, Debug)]
#[repr(transparent)]
pub(crate) struct Avx2(pub(crate) __m256);

/// Lane mask with lanes `0..n` all-ones and the others zero (`n <= 8`; larger `n` saturates).
///
/// # Safety
/// The CPU must support AVX2.
#[inline(always)]
unsafe fn prefix_mask(n: usize) -> __m256i {
    debug_assert!(n <= 8);
    let n = n.min(8) as i32;
    // SAFETY: AVX2 is available (caller's contract); no memory is accessed.
    unsafe { _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)) }
}

/// NaN-propagating lane-wise max of two `__m128`: `maxps` returns its second operand when either
/// is NaN, so OR-ing in the all-ones "unordered" mask (an all-ones f32 is a NaN) fixes the lanes
/// where the first operand is NaN.
///
/// # Safety
/// The CPU must support SSE (always true on `x86_64`, but the intrinsics are still `unsafe` to
/// call outside a `#[target_feature(enable = "sse")]` context).
#[inline(always)]
pub(crate) unsafe fn max_nan_m128(a: __m128, b: __m128) -> __m128 {
    // SAFETY: SSE is part of the x86_64 baseline; no memory is accessed.
    unsafe { _mm_or_ps(_mm_max_ps(a, b), _mm_cmpunord_ps(a, b)) }
}

/// NaN-propagating lane-wise max of two `__m256` (see [`max_nan_m128`]).
///
/// # Safety
/// The CPU must support AVX.
#[inline(always)]
pub(crate) unsafe fn max_nan_m256(a: __m256, b: __m256) -> __m256 {
    // SAFETY: AVX is available (caller's contract); no memory is accessed.
    unsafe { _mm256_or_ps(_mm256_max_ps(a, b), _mm256_cmp_ps::<_CMP_UNORD_Q>(a, b)) }
}

/// Horizontal sum of a `__m256`: `((v0+v4)+(v2+v6)) + ((v1+v5)+(v3+v7))`.
///
/// # Safety
/// The CPU must support AVX.
#[inline(always)]
pub(crate) unsafe fn hsum_m256(v: __m256) -> f32 {
    // SAFETY: AVX (which implies SSE3) is available (caller's contract); no memory is accessed.
    unsafe {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }
}

/// Horizontal NaN-propagating max of a `__m256`.
///
/// # Safety
/// The CPU must support AVX.
#[inline(always)]
pub(crate) unsafe fn hmax_m256(v: __m256) -> f32 {
    // SAFETY: AVX (which implies SSE3) is available (caller's contract); no memory is accessed.
    unsafe {
        let m = max_nan_m128(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let m = max_nan_m128(m, _mm_movehl_ps(m, m));
        let m = max_nan_m128(m, _mm_movehdup_ps(m));
        _mm_cvtss_f32(m)
    }
}

// SAFETY: LANES is 8 = the number of f32 in a __m256; `load`/`store` use unaligned 256-bit
// accesses of exactly 8 f32s; the partial variants use masked accesses that touch only lanes
// `0..n` (masked-off lanes are not accessed and cannot fault).
unsafe impl F32x for Avx2 {
    const LANES: usize = 8;

    #[inline]
    fn is_available() -> bool {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    }

    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        // SAFETY: AVX is available (trait CPU requirement).
        Avx2(unsafe { _mm256_set1_ps(v) })
    }

    #[inline(always)]
    unsafe fn zero() -> Self {
        // SAFETY: AVX is available (trait CPU requirement).
        Avx2(unsafe { _mm256_setzero_ps() })
    }

    #[inline(always)]
    unsafe fn load(ptr: *const f32) -> Self {
        // SAFETY: AVX is available, and the caller guarantees `ptr` is valid for reading 8 f32s
        // (`loadu` has no alignment requirement).
        Avx2(unsafe { _mm256_loadu_ps(ptr) })
    }

    #[inline(always)]
    unsafe fn store(self, ptr: *mut f32) {
        // SAFETY: AVX is available, and the caller guarantees `ptr` is valid for writing 8 f32s
        // (`storeu` has no alignment requirement).
        unsafe { _mm256_storeu_ps(ptr, self.0) }
    }

    #[inline(always)]
    unsafe fn load_partial(ptr: *const f32, n: usize, fill: f32) -> Self {
        // SAFETY: AVX2 is available; `vmaskmovps` reads only the lanes whose mask is set, i.e.
        // `ptr[0..n]`, which the caller guarantees to be readable; masked-off lanes do not fault.
        unsafe {
            let mask = prefix_mask(n);
            let loaded = _mm256_maskload_ps(ptr, mask);
            Avx2(_mm256_blendv_ps(
                _mm256_set1_ps(fill),
                loaded,
                _mm256_castsi256_ps(mask),
            ))
        }
    }

    #[inline(always)]
    unsafe fn store_partial(self, ptr: *mut f32, n: usize) {
        // SAFETY: AVX2 is available; `vmaskmovps` writes only `ptr[0..n]`, which the caller
        // guarantees to be writable; masked-off lanes are not touched.
        unsafe { _mm256_maskstore_ps(ptr, prefix_mask(n), self.0) }
    }

    #[inline(always)]
    unsafe fn add(self, rhs: Self) -> Self {
        // SAFETY: AVX is available (trait CPU requirement).
        Avx2(unsafe { _mm256_add_ps(self.0, rhs.0) })
    }

    #[inline(always)]
    unsafe fn sub(self, rhs: Self) -> Self {
        // SAFETY: AVX is available (trait CPU requirement).
        Avx2(unsafe { _mm256_sub_ps(self.0, rhs.0) })
    }

    #[inline(always)]
    unsafe fn mul(self, rhs: Self) -> Self {
        // SAFETY: AVX is available (trait CPU requirement).
        Avx2(unsafe { _mm256_mul_ps(self.0, rhs.0) })
    }

    #[inline(always)]
    unsafe fn div(self, rhs: Self) -> Self {
        // SAFETY: AVX is available (trait CPU requirement).
        Avx2(unsafe { _mm256_div_ps(self.0, rhs.0) })
    }

    /// `vmaxps`: returns `rhs` in lanes where either operand is NaN.
    #[inline(always)]
    unsafe fn max(self, rhs: Self) -> Self {
        // SAFETY: AVX is available (trait CPU requirement).
        Avx2(unsafe { _mm256_max_ps(self.0, rhs.0) })
    }

    /// `vminps`: returns `rhs` in lanes where either operand is NaN.
    #[inline(always)]
    unsafe fn min(self, rhs: Self) -> Self {
        // SAFETY: AVX is available (trait CPU requirement).
        Avx2(unsafe { _mm256_min_ps(self.0, rhs.0) })
    }

    #[inline(always)]
    unsafe fn fma(self, b: Self, c: Self) -> Self {
        // SAFETY: FMA is available (trait CPU requirement).
        Avx2(unsafe { _mm256_fmadd_ps(self.0, b.0, c.0) })
    }

    #[inline(always)]
    unsafe fn hsum(self) -> f32 {
        // SAFETY: AVX is available (trait CPU requirement).
        unsafe { hsum_m256(self.0) }
    }

    #[inline(always)]
    unsafe fn hmax(self) -> f32 {
        // SAFETY: AVX is available (trait CPU requirement).
        unsafe { hmax_m256(self.0) }
    }

    #[inline(always)]
    unsafe fn zero_where_zero(self, mask: Self) -> Self {
        // `mask != 0` (unordered-true, so NaN keeps `self`) as all-ones lanes, then AND.
        // SAFETY: AVX is available (trait CPU requirement).
        unsafe {
            let keep = _mm256_cmp_ps::<_CMP_NEQ_UQ>(mask.0, _mm256_setzero_ps());
            Avx2(_mm256_and_ps(self.0, keep))
        }
    }

    #[inline(always)]
    unsafe fn load_bf16(ptr: *const u16) -> Self {
        // SAFETY: AVX2 is available; 8 u16s (16 bytes) are readable at `ptr`.
        unsafe {
            let h = _mm_loadu_si128(ptr.cast());
            Avx2(_mm256_castsi256_ps(_mm256_slli_epi32::<16>(
                _mm256_cvtepu16_epi32(h),
            )))
        }
    }

    #[inline(always)]
    unsafe fn load_f16(ptr: *const u16) -> Self {
        // SAFETY: F16C is part of this backend's requirement; 8 u16s are readable at `ptr`.
        unsafe { Avx2(_mm256_cvtph_ps(_mm_loadu_si128(ptr.cast()))) }
    }

    #[inline(always)]
    unsafe fn store_bf16(self, ptr: *mut u16) {
        // SAFETY: AVX2 is available; 8 u16s are writable at `ptr`.
        unsafe { _mm_storeu_si128(ptr.cast(), bf16_bits(self.0)) }
    }

    #[inline(always)]
    unsafe fn store_bf16_stream(self, ptr: *mut u16) {
        // SAFETY: as `store_bf16`; the caller guarantees `ptr` aligned to 16 bytes, as the
        // streaming store needs.
        unsafe { _mm_stream_si128(ptr.cast(), bf16_bits(self.0)) }
    }

    #[inline(always)]
    unsafe fn load_bf16x2(ptr: *const u16) -> (Self, Self) {
        // SAFETY: AVX2 is available; 16 u16s (32 bytes) are readable at `ptr`. Element `2i`
        // is the low half of 32-bit word `i`, element `2i + 1` its high half.
        unsafe {
            let x = _mm256_loadu_si256(ptr.cast());
            let lo = _mm256_slli_epi32::<16>(x);
            let hi = _mm256_and_si256(x, _mm256_set1_epi32(0xFFFF_0000u32 as i32));
            (Avx2(_mm256_castsi256_ps(lo)), Avx2(_mm256_castsi256_ps(hi)))
        }
    }

    #[inline(always)]
    unsafe fn store_bf16x2(lo: Self, hi: Self, ptr: *mut u16) {
        // SAFETY: AVX2 is available; 16 u16s are writable at `ptr`.
        unsafe { _mm256_storeu_si256(ptr.cast(), bf16x2_bits(lo.0, hi.0)) }
    }

    #[inline(always)]
    unsafe fn store_bf16x2_stream(lo: Self, hi: Self, ptr: *mut u16) {
        // SAFETY: as `store_bf16x2`; the caller guarantees `ptr` aligned to 32 bytes, as the
        // streaming store needs.
        unsafe { _mm256_stream_si256(ptr.cast(), bf16x2_bits(lo.0, hi.0)) }
    }

    #[inline(always)]
    unsafe fn store_f16(self, ptr: *mut u16) {
        // SAFETY: F16C is part of this backend's requirement (vcvtps2ph, round to nearest
        // even); 8 u16s are writable at `ptr`.
        unsafe { _mm_storeu_si128(ptr.cast(), _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(self.0)) }
    }

    #[inline(always)]
    unsafe fn store_f16_stream(self, ptr: *mut u16) {
        // SAFETY: as `store_f16`; the caller guarantees `ptr` aligned to 16 bytes.
        unsafe { _mm_stream_si128(ptr.cast(), _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(self.0)) }
    }

    #[inline(always)]
    unsafe fn transpose(src: &[*const f32; 16], dst: &[*mut f32; 16]) {
        // SAFETY: the CPU requirement holds; the caller guarantees 8 readable floats at every
        // `src[q]` and 8 writable floats at every `dst[k]` (q, k < 8). Register shuffles: the
        // 32- and 64-bit interleaves leave column `4b + m` of rows `4k..4k + 4` in 128-bit
        // half b of `u[4k + m]`; a half swap joins the halves of `u[m]` and `u[4 + m]`.
        unsafe {
            let mut r = [_mm256_setzero_ps(); 8];
            for (q, v) in r.iter_mut().enumerate() {
                *v = _mm256_loadu_ps(src[q]);
            }
            let mut t = [_mm256_setzero_ps(); 8];
            for k in 0..4 {
                t[2 * k] = _mm256_unpacklo_ps(r[2 * k], r[2 * k + 1]);
                t[2 * k + 1] = _mm256_unpackhi_ps(r[2 * k], r[2 * k + 1]);
            }
            let mut u = [_mm256_setzero_ps(); 8];
            for k in 0..2 {
                let b = 4 * k;
                u[b] = _mm256_shuffle_ps::<0x44>(t[b], t[b + 2]);
                u[b + 1] = _mm256_shuffle_ps::<0xEE>(t[b], t[b + 2]);
                u[b + 2] = _mm256_shuffle_ps::<0x44>(t[b + 1], t[b + 3]);
                u[b + 3] = _mm256_shuffle_ps::<0xEE>(t[b + 1], t[b + 3]);
            }
            for m in 0..4 {
                _mm256_storeu_ps(dst[m], _mm256_permute2f128_ps::<0x20>(u[m], u[4 + m]));
                _mm256_storeu_ps(dst[4 + m], _mm256_permute2f128_ps::<0x31>(u[m], u[4 + m]));
            }
        }
    }

    #[inline(always)]
    unsafe fn prefetch(ptr: *const f32) {
        // SAFETY: prefetch is a hint: it never faults and does not access memory
        // architecturally, whatever the address (SSE, implied by AVX).
        unsafe { _mm_prefetch::<_MM_HINT_T1>(ptr.cast::<i8>()) }
    }

    #[inline(always)]
    unsafe fn store_stream(self, ptr: *mut f32) {
        // SAFETY: the CPU requirement holds, and the caller guarantees `ptr` is valid for
        // writing LANES f32s and aligned to LANES · 4 bytes, as the streaming store needs.
        unsafe { _mm256_stream_ps(ptr, self.0) }
    }

    #[inline(always)]
    unsafe fn stream_fence() {
        // SAFETY: SFENCE (SSE) has no preconditions.
        unsafe { _mm_sfence() }
    }

    #[inline(always)]
    unsafe fn is_nan_any(self) -> bool {
        // SAFETY: AVX is available (trait CPU requirement).
        unsafe { _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_UNORD_Q>(self.0, self.0)) != 0 }
    }

    #[inline(always)]
    unsafe fn exp(self) -> Self {
        // The shared algorithm of `crate::simd::exp`, step for step (see `exp_scalar`).
        // SAFETY: AVX, AVX2 and FMA are available (trait CPU requirement); no memory access.
        unsafe {
            let x = self.0;
            // 1. Clamp. `vmaxps`/`vminps` return the second operand if either is NaN, so NaN
            //    in `x` passes through.
            let xc = _mm256_min_ps(
                _mm256_set1_ps(EXP_X_MAX),
                _mm256_max_ps(_mm256_set1_ps(EXP_X_MIN), x),
            );
            // 2. Range reduction.
            let kf = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
                xc,
                _mm256_set1_ps(LOG2E),
            ));
            let r = _mm256_fmadd_ps(kf, _mm256_set1_ps(-LN2_HI), xc);
            let r = _mm256_fmadd_ps(kf, _mm256_set1_ps(-LN2_LO), r);
            // 3. Polynomial.
            let mut p = _mm256_fmadd_ps(_mm256_set1_ps(EXP_C6), r, _mm256_set1_ps(EXP_C5));
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_C4));
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_C3));
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_C2));
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(EXP_C1));
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0));
            // 4. Scale by 2^k (NaN converts to i32::MIN, and i32::MIN << 23 == 0).
            let k = _mm256_cvttps_epi32(kf);
            let y = _mm256_castsi256_ps(_mm256_add_epi32(
                _mm256_castps_si256(p),
                _mm256_slli_epi32::<23>(k),
            ));
            // 5. Flush x < EXP_X_MIN (ordered compare: false for NaN) to +0.
            let under = _mm256_cmp_ps::<_CMP_LT_OQ>(x, _mm256_set1_ps(EXP_X_MIN));
            Avx2(_mm256_andnot_ps(under, y))
        }
    }
}

/// The lanes of `x` rounded to `bf16` (nearest even on the bits; NaN lanes quietened instead),
/// as eight raw `u16`s. The 32-bit results fit 16 bits, so the saturating pack is exact; the
/// 64-bit permute gathers both 128-bit halves.
///
/// # Safety
/// The CPU has AVX2.
#[inline(always)]
unsafe fn bf16_bits(x: __m256) -> __m128i {
    // SAFETY: the caller's guarantee; no memory access.
    unsafe {
        let r = _mm256_srli_epi32::<16>(round_bf16(x));
        let packed = _mm256_permute4x64_epi64::<0b1000>(_mm256_packus_epi32(r, r));
        _mm256_castsi256_si128(packed)
    }
}

/// Every lane of `x` rounded to `bf16` in the high half of its 32 bits (round to nearest even
/// on the bits: add `0x7FFF` plus the kept lsb); NaN lanes are quietened instead (their
/// rounding could carry into the exponent). The low halves are garbage.
///
/// # Safety
/// The CPU has AVX2.
#[inline(always)]
unsafe fn round_bf16(x: __m256) -> __m256i {
    // SAFETY: the caller's guarantee; no memory access.
    unsafe {
        let b = _mm256_castps_si256(x);
        let lsb = _mm256_and_si256(_mm256_srli_epi32::<16>(b), _mm256_set1_epi32(1));
        let r = _mm256_add_epi32(_mm256_add_epi32(b, _mm256_set1_epi32(0x7FFF)), lsb);
        let nan = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_UNORD_Q>(x, x));
        let q = _mm256_or_si256(b, _mm256_set1_epi32(0x0040_0000));
        _mm256_blendv_epi8(r, q, nan)
    }
}

/// Sixteen `bf16` (raw bits) in [`F32x::load_bf16x2`]'s order: element `2i` from lane `i` of
/// `lo`, element `2i + 1` from lane `i` of `hi` (odd words from `hi`'s rounded words, even
/// words from `lo`'s shifted down).
///
/// # Safety
/// The CPU has AVX2.
#[inline(always)]
unsafe fn bf16x2_bits(lo: __m256, hi: __m256) -> __m256i {
    // SAFETY: the caller's guarantee; no memory access.
    unsafe { _mm256_blend_epi16::<0xAA>(_mm256_srli_epi32::<16>(round_bf16(lo)), round_bf16(hi)) }
}
