//! AVX-512 backend: 16 lanes in a `__m512`.
//!
//! Every `unsafe` block in this file executes AVX-512F/DQ instructions (and AVX/AVX2/FMA, which
//! AVX-512F implies); they are justified by the [`F32x`] CPU requirement (the caller guarantees
//! `Avx512::is_available()`), plus the pointer requirements for the memory operations.

use core::arch::x86_64::*;

use crate::simd::avx2::{hmax_m256, hsum_m256, max_nan_m256};
use crate::simd::exp::{
    EXP_C1, EXP_C2, EXP_C3, EXP_C4, EXP_C5, EXP_C6, EXP_X_MAX, EXP_X_MIN, LN2_HI, LN2_LO, LOG2E,
};
use crate::simd::F32x;

/// Sixteen `f32` lanes (`__m512`). Requires the `avx512f`, `avx512bw`, `avx512vl` and
/// `avx512dq` CPU features (the set the kernels' entry points enable).
///
/// `BF16 = true` also requires AVX-512 BF16 (and an entry point that enables it): rounding
/// to `bf16` then takes one `vcvtneps2bf16` instead of eight integer operations, with the
/// same bits (the instruction flushes subnormal inputs, so vectors holding one take the
/// integer path).
#[derive(Clone, Copy, Debug)]
#[repr(transparent)]
pub(crate) struct Avx512<const BF16: bool = false>(pub(crate) __m512);

impl<const BF16: bool> Avx512<BF16> {
    /// The lanes rounded to `bf16` (nearest even; NaN quietened), as sixteen raw `u16`s.
    ///
    /// # Safety
    /// AVX-512 F/BW, and AVX-512 BF16 when `BF16`.
    #[inline(always)]
    unsafe fn bf16_bits(self) -> __m256i {
        // SAFETY: the caller's guarantee.
        unsafe {
            if BF16 {
                // `vfpclassps` class 0x20: subnormal. Without one, the instruction's result
                // (round to nearest even, NaN quietened) is the integer path's bit for bit.
                if _mm512_fpclass_ps_mask::<0x20>(self.0) == 0 {
                    // (`__m256bh` and `__m256i` are both 256 bits of vector register.)
                    return std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(self.0));
                }
            }
            _mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(round_bf16(self.0)))
        }
    }

    /// Thirty-two `bf16` (raw bits) in [`F32x::load_bf16x2`]'s order: element `2i` from
    /// lane `i` of `lo`, element `2i + 1` from lane `i` of `hi`, rounded as by `bf16_bits`.
    ///
    /// # Safety
    /// As `bf16_bits`.
    #[inline(always)]
    unsafe fn bf16x2_bits(lo: Self, hi: Self) -> __m512i {
        // SAFETY: the caller's guarantee.
        unsafe {
            if BF16 && (_mm512_fpclass_ps_mask::<0x20>(lo.0) | _mm512_fpclass_ps_mask::<0x20>(hi.0)) == 0 {
                // Words 0..16 are `lo` rounded, 16..32 `hi` (same bits as the integer path,
                // as in `bf16_bits`); one word permute interleaves them.
                let both = std::mem::transmute::<__m512bh, __m512i>(_mm512_cvtne2ps_pbh(hi.0, lo.0));
                let idx = _mm512_set_epi16(
                    31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6, 21, 5, 20, 4,
                    19, 3, 18, 2, 17, 1, 16, 0,
                );
                return _mm512_permutexvar_epi16(idx, both);
            }
            // Odd words (the high halves) from `hi`'s rounded words, even words from `lo`'s.
            let lo_bits = _mm512_srli_epi32::<16>(round_bf16(lo.0));
            _mm512_mask_blend_epi16(0xAAAA_AAAA, lo_bits, round_bf16(hi.0))
        }
    }
}

/// Every lane of `x` rounded to `bf16` in the high half of its 32 bits (round to nearest even
/// on the bits: add `0x7FFF` plus the kept lsb); NaN lanes are quietened instead (their
/// rounding could carry into the exponent). The low halves are garbage.
///
/// # Safety
/// The CPU has AVX-512F.
#[inline(always)]
unsafe fn round_bf16(x: __m512) -> __m512i {
    // SAFETY: the caller's guarantee; no memory access.
    unsafe {
        let b = _mm512_castps_si512(x);
        let lsb = _mm512_and_si512(_mm512_srli_epi32::<16>(b), _mm512_set1_epi32(1));
        let r = _mm512_add_epi32(_mm512_add_epi32(b, _mm512_set1_epi32(0x7FFF)), lsb);
        let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(x, x);
        _mm512_mask_mov_epi32(r, nan, _mm512_or_si512(b, _mm512_set1_epi32(0x0040_0000)))
    }
}

/// Write/read mask with bits `0..n` set (`n <= 16`; larger `n` saturates).
#[inline(always)]
fn prefix_kmask(n: usize) -> __mmask16 {
    debug_assert!(n <= 16);
    ((1u32 << n.min(16)) - 1) as __mmask16
}

// SAFETY: LANES is 16 = the number of f32 in a __m512; `load`/`store` use unaligned 512-bit
// accesses of exactly 16 f32s; the partial variants use masked accesses that touch only lanes
// `0..n` (masked-off lanes are not accessed and cannot fault).
unsafe impl<const BF16: bool> F32x for Avx512<BF16> {
    const LANES: usize = 16;

    #[inline]
    fn is_available() -> bool {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512dq")
    }

    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        // SAFETY: AVX-512F is available (trait CPU requirement).
        Avx512(unsafe { _mm512_set1_ps(v) })
    }

    #[inline(always)]
    unsafe fn zero() -> Self {
        // SAFETY: AVX-512F is available (trait CPU requirement).
        Avx512(unsafe { _mm512_setzero_ps() })
    }

    #[inline(always)]
    unsafe fn load(ptr: *const f32) -> Self {
        // SAFETY: AVX-512F is available, and the caller guarantees `ptr` is valid for reading
        // 16 f32s (`loadu` has no alignment requirement).
        Avx512(unsafe { _mm512_loadu_ps(ptr) })
    }

    #[inline(always)]
    unsafe fn store(self, ptr: *mut f32) {
        // SAFETY: AVX-512F is available, and the caller guarantees `ptr` is valid for writing
        // 16 f32s (`storeu` has no alignment requirement).
        unsafe { _mm512_storeu_ps(ptr, self.0) }
    }

    #[inline(always)]
    unsafe fn load_partial(ptr: *const f32, n: usize, fill: f32) -> Self {
        // SAFETY: AVX-512F is available; the masked load reads only `ptr[0..n]` (the set mask
        // bits), which the caller guarantees to be readable; masked-off lanes do not fault and
        // take `fill`.
        unsafe { Avx512(_mm512_mask_loadu_ps(_mm512_set1_ps(fill), prefix_kmask(n), ptr)) }
    }

    #[inline(always)]
    unsafe fn store_partial(self, ptr: *mut f32, n: usize) {
        // SAFETY: AVX-512F is available; the masked store writes only `ptr[0..n]`, which the
        // caller guarantees to be writable.
        unsafe { _mm512_mask_storeu_ps(ptr, prefix_kmask(n), self.0) }
    }

    #[inline(always)]
    unsafe fn add(self, rhs: Self) -> Self {
        // SAFETY: AVX-512F is available (trait CPU requirement).
        Avx512(unsafe { _mm512_add_ps(self.0, rhs.0) })
    }

    #[inline(always)]
    unsafe fn sub(self, rhs: Self) -> Self {
        // SAFETY: AVX-512F is available (trait CPU requirement).
        Avx512(unsafe { _mm512_sub_ps(self.0, rhs.0) })
    }

    #[inline(always)]
    unsafe fn mul(self, rhs: Self) -> Self {
        // SAFETY: AVX-512F is available (trait CPU requirement).
        Avx512(unsafe { _mm512_mul_ps(self.0, rhs.0) })
    }

    #[inline(always)]
    unsafe fn div(self, rhs: Self) -> Self {
        // SAFETY: AVX-512F is available (trait CPU requirement).
        Avx512(unsafe { _mm512_div_ps(self.0, rhs.0) })
    }

    /// `vmaxps`: returns `rhs` in lanes where either operand is NaN.
    #[inline(always)]
    unsafe fn max(self, rhs: Self) -> Self {
        // SAFETY: AVX-512F is available (trait CPU requirement).
        Avx512(unsafe { _mm512_max_ps(self.0, rhs.0) })
    }

    /// `vminps`: returns `rhs` in lanes where either operand is NaN.
    #[inline(always)]
    unsafe fn min(self, rhs: Self) -> Self {
        // SAFETY: AVX-512F is available (trait CPU requirement).
        Avx512(unsafe { _mm512_min_ps(self.0, rhs.0) })
    }

    #[inline(always)]
    unsafe fn fma(self, b: Self, c: Self) -> Self {
        // SAFETY: AVX-512F is available (trait CPU requirement).
        Avx512(unsafe { _mm512_fmadd_ps(self.0, b.0, c.0) })
    }

    #[inline(always)]
    unsafe fn hsum(self) -> f32 {
        // SAFETY: AVX-512F/DQ (and thus AVX) are available (trait CPU requirement).
        unsafe {
            let lo = _mm512_castps512_ps256(self.0);
            let hi = _mm512_extractf32x8_ps::<1>(self.0);
            hsum_m256(_mm256_add_ps(lo, hi))
        }
    }

    #[inline(always)]
    unsafe fn hmax(self) -> f32 {
        // SAFETY: AVX-512F/DQ (and thus AVX) are available (trait CPU requirement).
        unsafe {
            let lo = _mm512_castps512_ps256(self.0);
            let hi = _mm512_extractf32x8_ps::<1>(self.0);
            hmax_m256(max_nan_m256(lo, hi))
        }
    }

    #[inline(always)]
    unsafe fn zero_where_zero(self, mask: Self) -> Self {
        // SAFETY: AVX-512F is available (trait CPU requirement).
        unsafe {
            let keep = _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(mask.0, _mm512_setzero_ps());
            Avx512(_mm512_maskz_mov_ps(keep, self.0))
        }
    }

    #[inline(always)]
    unsafe fn load_bf16(ptr: *const u16) -> Self {
        // SAFETY: AVX-512F is available; 16 u16s (32 bytes) are readable at `ptr`.
        unsafe {
            let h = _mm256_loadu_si256(ptr.cast());
            Avx512(_mm512_castsi512_ps(_mm512_slli_epi32::<16>(
                _mm512_cvtepu16_epi32(h),
            )))
        }
    }

    #[inline(always)]
    unsafe fn load_f16(ptr: *const u16) -> Self {
        // SAFETY: AVX-512F is available (vcvtph2ps zmm); 16 u16s are readable at `ptr`.
        unsafe { Avx512(_mm512_cvtph_ps(_mm256_loadu_si256(ptr.cast()))) }
    }

    #[inline(always)]
    unsafe fn store_bf16(self, ptr: *mut u16) {
        // SAFETY: AVX-512F/BW (and BF16 when `BF16`) are available; 16 u16s are writable at
        // `ptr`.
        unsafe { _mm256_storeu_si256(ptr.cast(), self.bf16_bits()) }
    }

    #[inline(always)]
    unsafe fn store_bf16_stream(self, ptr: *mut u16) {
        // SAFETY: as `store_bf16`; the caller guarantees `ptr` aligned to 32 bytes, as the
        // streaming store needs.
        unsafe { _mm256_stream_si256(ptr.cast(), self.bf16_bits()) }
    }

    #[inline(always)]
    unsafe fn load_bf16x2(ptr: *const u16) -> (Self, Self) {
        // SAFETY: AVX-512F is available; 32 u16s (64 bytes) are readable at `ptr`. Element
        // `2i` is the low half of 32-bit word `i`, element `2i + 1` its high half.
        unsafe {
            let x = _mm512_loadu_si512(ptr.cast());
            let lo = _mm512_slli_epi32::<16>(x);
            let hi = _mm512_and_si512(x, _mm512_set1_epi32(0xFFFF_0000u32 as i32));
            (Avx512(_mm512_castsi512_ps(lo)), Avx512(_mm512_castsi512_ps(hi)))
        }
    }

    #[inline(always)]
    unsafe fn store_bf16x2(lo: Self, hi: Self, ptr: *mut u16) {
        // SAFETY: AVX-512F/BW (and BF16 when `BF16`) are available; 32 u16s are writable at
        // `ptr`.
        unsafe { _mm512_storeu_si512(ptr.cast(), Self::bf16x2_bits(lo, hi)) }
    }

    #[inline(always)]
    unsafe fn store_bf16x2_stream(lo: Self, hi: Self, ptr: *mut u16) {
        // SAFETY: as `store_bf16x2`; the caller guarantees `ptr` aligned to 64 bytes, as the
        // streaming store needs.
        unsafe { _mm512_stream_si512(ptr.cast(), Self::bf16x2_bits(lo, hi)) }
    }

    #[inline(always)]
    unsafe fn store_f16_stream(self, ptr: *mut u16) {
        // SAFETY: as `store_f16`; the caller guarantees `ptr` aligned to 32 bytes.
        unsafe { _mm256_stream_si256(ptr.cast(), _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(self.0)) }
    }

    #[inline(always)]
    unsafe fn store_f16(self, ptr: *mut u16) {
        // SAFETY: AVX-512F is available (vcvtps2ph zmm, round to nearest even); 16 u16s are
        // writable at `ptr`.
        unsafe { _mm256_storeu_si256(ptr.cast(), _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(self.0)) }
    }

    #[inline(always)]
    unsafe fn transpose(src: &[*const f32; 16], dst: &[*mut f32; 16]) {
        // SAFETY: the CPU requirement holds; the caller guarantees 16 readable floats at every
        // `src[q]` and 16 writable floats at every `dst[k]`. The shuffles are pure register
        // operations: 32-bit then 64-bit interleaves within 128-bit blocks give, in block b of
        // `u[4k + m]`, column `4b + m` of rows `4k..4k + 4`; two 128-bit block shuffles then
        // gather blocks b of `u[m], u[4 + m], u[8 + m], u[12 + m]` into output row `4b + m`.
        unsafe {
            let mut r = [_mm512_setzero_ps(); 16];
            for (q, v) in r.iter_mut().enumerate() {
                *v = _mm512_loadu_ps(src[q]);
            }
            let mut t = [_mm512_setzero_ps(); 16];
            for k in 0..8 {
                t[2 * k] = _mm512_unpacklo_ps(r[2 * k], r[2 * k + 1]);
                t[2 * k + 1] = _mm512_unpackhi_ps(r[2 * k], r[2 * k + 1]);
            }
            let mut u = [_mm512_setzero_ps(); 16];
            for k in 0..4 {
                let b = 4 * k;
                u[b] = _mm512_shuffle_ps::<0x44>(t[b], t[b + 2]);
                u[b + 1] = _mm512_shuffle_ps::<0xEE>(t[b], t[b + 2]);
                u[b + 2] = _mm512_shuffle_ps::<0x44>(t[b + 1], t[b + 3]);
                u[b + 3] = _mm512_shuffle_ps::<0xEE>(t[b + 1], t[b + 3]);
            }
            for m in 0..4 {
                let v0 = _mm512_shuffle_f32x4::<0x44>(u[m], u[4 + m]);
                let v1 = _mm512_shuffle_f32x4::<0xEE>(u[m], u[4 + m]);
                let w0 = _mm512_shuffle_f32x4::<0x44>(u[8 + m], u[12 + m]);
                let w1 = _mm512_shuffle_f32x4::<0xEE>(u[8 + m], u[12 + m]);
                _mm512_storeu_ps(dst[m], _mm512_shuffle_f32x4::<0x88>(v0, w0));
                _mm512_storeu_ps(dst[4 + m], _mm512_shuffle_f32x4::<0xDD>(v0, w0));
                _mm512_storeu_ps(dst[8 + m], _mm512_shuffle_f32x4::<0x88>(v1, w1));
                _mm512_storeu_ps(dst[12 + m], _mm512_shuffle_f32x4::<0xDD>(v1, w1));
            }
        }
    }

    #[inline(always)]
    unsafe fn prefetch(ptr: *const f32) {
        // SAFETY: prefetch is a hint: it never faults and does not access memory
        // architecturally, whatever the address (SSE, implied by AVX-512F).
        unsafe { _mm_prefetch::<_MM_HINT_T1>(ptr.cast::<i8>()) }
    }

    #[inline(always)]
    unsafe fn store_stream(self, ptr: *mut f32) {
        // SAFETY: the CPU requirement holds, and the caller guarantees `ptr` is valid for
        // writing LANES f32s and aligned to LANES · 4 bytes, as the streaming store needs.
        unsafe { _mm512_stream_ps(ptr, self.0) }
    }

    #[inline(always)]
    unsafe fn stream_fence() {
        // SAFETY: SFENCE (SSE) has no preconditions.
        unsafe { _mm_sfence() }
    }

    #[inline(always)]
    unsafe fn is_nan_any(self) -> bool {
        // SAFETY: AVX-512F is available (trait CPU requirement).
        unsafe { _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(self.0, self.0) != 0 }
    }

    /// The steps of [`exp`](F32x::exp) without its clamps: for `x <= 0` the upper clamp is
    /// a no-op, and lanes below `EXP_X_MIN` (where the lower clamp would act, including
    /// `-inf`) are zeroed by the mask whatever the polynomial made of them.
    #[inline(always)]
    unsafe fn exp_nonpos(self) -> Self {
        // SAFETY: AVX-512F is available (trait CPU requirement).
        unsafe { Avx512(exp_core(self.0, self.0)) }
    }

    #[inline(always)]
    unsafe fn exp(self) -> Self {
        // The shared algorithm of `crate::simd::exp`, step for step (see `exp_scalar`).
        // SAFETY: AVX-512F is available (trait CPU requirement); no memory access.
        unsafe {
            let x = self.0;
            // 1. Clamp. `vmaxps`/`vminps` return the second operand if either is NaN, so NaN
            //    in `x` passes through.
            let xc = _mm512_min_ps(
                _mm512_set1_ps(EXP_X_MAX),
                _mm512_max_ps(_mm512_set1_ps(EXP_X_MIN), x),
            );
            Avx512(exp_core(xc, x))
        }
    }
}

/// Steps 2–5 of the shared `exp` on the clamped `xc`, flushing the lanes where the original
/// `x < EXP_X_MIN`:
/// 2. range reduction (`vrndscaleps` with scale 0 = round to nearest integer, ties to even,
///    exceptions suppressed); 3. the polynomial;
/// 4. scaling by `2^k` with `vscalefps`, and 5. flushing `x < EXP_X_MIN` to `+0` through its
///    zeroing mask. For `x >= EXP_X_MIN` the result is normal, so `p·2^k` is exact and equals
///    the shared algorithm's exponent-field add bit for bit; one instruction instead of
///    convert, shift and add. The mask `!(x < EXP_X_MIN)` is true for NaN (unordered
///    compare), whose lanes stay NaN.
///
/// # Safety
/// The CPU has AVX-512F.
#[inline(always)]
unsafe fn exp_core(xc: __m512, x: __m512) -> __m512 {
    // SAFETY: the caller's guarantee; no memory access.
    unsafe {
        let kf = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm512_mul_ps(
            xc,
            _mm512_set1_ps(LOG2E),
        ));
        let r = _mm512_fmadd_ps(kf, _mm512_set1_ps(-LN2_HI), xc);
        let r = _mm512_fmadd_ps(kf, _mm512_set1_ps(-LN2_LO), r);
        let mut p = _mm512_fmadd_ps(_mm512_set1_ps(EXP_C6), r, _mm512_set1_ps(EXP_C5));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_C4));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_C3));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_C2));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(EXP_C1));
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0));
        let keep = _mm512_cmp_ps_mask::<_CMP_NLT_UQ>(x, _mm512_set1_ps(EXP_X_MIN));
        _mm512_maskz_scalef_ps(keep, p, kf)
    }
}
