//! A small f32 SIMD vector layer for the loss kernels.
//!
//! `F32x` is a vector of `f32` lanes with the handful of operations the cross-entropy / InfoNCE
//! kernels need (arithmetic, fused multiply-add, NaN-propagating max, horizontal reductions,
//! partial loads/stores for slice tails, and a shared vectorised `exp`). It is implemented by:
//!
//! | type             | lanes | where     | required CPU features                          |
//! |------------------|-------|-----------|------------------------------------------------|
//! | `scalar::S1`     | 1     | anywhere  | none (portable fallback)                       |
//! | `avx2::Avx2`     | 8     | `x86_64`  | `avx2`, `fma`, `f16c`                          |
//! | `avx512::Avx512` | 16    | `x86_64`  | `avx512f`, `avx512bw`, `avx512vl`, `avx512dq`  |
//! | `neon::Neon`     | 4     | `aarch64` | `neon` (always present on `aarch64`)           |
//!
//! # Usage pattern
//!
//! A kernel is written once as a generic `#[inline(always)]` function over the trait, and
//! instantiated inside one `#[target_feature]` entry point per backend, which is called only
//! after runtime detection. Because every trait method is `#[inline(always)]`, the whole kernel
//! body is compiled with the entry point's target features (this is the layout memchr uses in
//! its `arch/` modules):
//!
//! ```ignore
//! use crate::simd::{F32x, scalar::S1};
//! #[cfg(target_arch = "x86_64")]
//! use crate::simd::avx2::Avx2;
//!
//! /// Generic algorithm: sum of exp(x - m) over a slice.
//! ///
//! /// # Safety
//! /// `V::is_available()` must be true.
//! #[inline(always)]
//! unsafe fn sum_exp<V: F32x>(xs: &[f32], m: f32) -> f32 {
//!     // SAFETY: (for the whole body) the caller guarantees V's CPU features; every pointer
//!     // below stays inside `xs` (full vectors while LANES elements remain, then a partial tail).
//!     unsafe {
//!         let vm = V::splat(m);
//!         let mut acc = V::zero();
//!         let mut chunks = xs.chunks_exact(V::LANES);
//!         for c in &mut chunks {
//!             acc = acc.add(V::load(c.as_ptr()).sub(vm).exp());
//!         }
//!         let tail = chunks.remainder();
//!         // Padding lanes hold -inf, and exp(-inf - m) == 0 exactly (m finite).
//!         let t = V::load_partial(tail.as_ptr(), tail.len(), f32::NEG_INFINITY);
//!         acc = acc.add(t.sub(vm).exp());
//!         acc.hsum()
//!     }
//! }
//!
//! /// AVX2 entry point: the generic body is inlined and compiled with AVX2 + FMA.
//! ///
//! /// # Safety
//! /// The CPU must support AVX2 and FMA.
//! #[cfg(target_arch = "x86_64")]
//! #[target_feature(enable = "avx2,fma")]
//! unsafe fn sum_exp_avx2(xs: &[f32], m: f32) -> f32 {
//!     // SAFETY: this function's own contract is exactly Avx2's.
//!     unsafe { sum_exp::<Avx2>(xs, m) }
//! }
//!
//! pub(crate) fn sum_exp_dispatch(xs: &[f32], m: f32) -> f32 {
//!     #[cfg(target_arch = "x86_64")]
//!     if Avx2::is_available() {
//!         // SAFETY: runtime detection just confirmed AVX2 and FMA.
//!         return unsafe { sum_exp_avx2(xs, m) };
//!     }
//!     // SAFETY: the scalar backend has no CPU requirement.
//!     unsafe { sum_exp::<S1>(xs, m) }
//! }
//! ```
//!
//! # Floating-point semantics shared by all backends
//!
//! * `add`/`sub`/`mul`/`div`/`fma` are IEEE-754 binary32 operations with round-to-nearest-even;
//!   `fma` is a true fused multiply-add (one rounding) on every backend, including the scalar one
//!   (`f32::mul_add`). Subnormal inputs and outputs of these operations are not flushed (the layer
//!   never touches MXCSR / FPCR).
//! * `max`/`min` are the fast hardware operations: for non-NaN lanes they return the larger /
//!   smaller value; **if either lane is NaN the result lane is unspecified** (x86 and the scalar
//!   backend return `rhs`, NEON returns NaN), and between `-0.0` and `+0.0` either may be
//!   returned. Kernels that need NaN to propagate detect it another way (the cross-entropy max
//!   sweep relies on the NaN that a NaN logit leaves in the sum of exponentials).
//! * `hsum` adds the lanes in an unspecified (tree) order, so results can differ between
//!   backends by normal rounding; `hmax` returns NaN if any lane is NaN.
//! * `exp` uses one algorithm and one set of constants for every backend (see the `exp`
//!   module); results are bit-identical across backends on IEEE hardware.
#![deny(clippy::undocumented_unsafe_blocks)]
#![deny(clippy::missing_safety_doc)]

pub(crate) mod exp;
pub(crate) mod scalar;

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2;
#[cfg(target_arch = "x86_64")]
pub(crate) mod avx512;

#[cfg(target_arch = "aarch64")]
pub(crate) mod neon;

#[cfg(test)]
mod tests;

/// A vector of `LANES` `f32` lanes.
///
/// All operations are lane-wise unless stated otherwise. Methods are `unsafe` because the SIMD
/// implementations execute instructions that exist only on CPUs with the backend's target
/// features; the scalar implementation has the same signatures (and then only the pointer
/// requirements matter).
///
/// **The common safety requirement of every `unsafe` method** ("the CPU requirement" below): the
/// running CPU supports the implementing type's target features, i.e. [`F32x::is_available`]
/// returns `true`. For performance, call the methods only from code compiled with those features
/// enabled (a `#[target_feature]` entry point, see the [module docs](self)); elsewhere they are
/// still correct but the intrinsics are not inlined.
///
/// Pointer arguments need not be aligned beyond `f32`'s natural 4-byte alignment.
///
/// # Safety
///
/// Implementors must guarantee that `LANES` is the exact number of `f32` lanes, that `load` /
/// `store` access exactly `LANES` consecutive `f32`s starting at the pointer, and that
/// `load_partial` / `store_partial` access only the first `n` of them. Generic kernel code relies
/// on this for memory safety.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) unsafe trait F32x: Copy {
    /// Number of `f32` lanes.
    const LANES: usize;

    /// Whether the running CPU supports this backend (runtime detection; cached by `std`).
    fn is_available() -> bool;

    /// All lanes set to `v`.
    ///
    /// # Safety
    /// The CPU requirement (see the trait docs).
    unsafe fn splat(v: f32) -> Self;

    /// All lanes `+0.0`.
    ///
    /// # Safety
    /// The CPU requirement (see the trait docs).
    unsafe fn zero() -> Self;

    /// Loads `LANES` consecutive values starting at `ptr`.
    ///
    /// # Safety
    /// The CPU requirement, and `ptr` must be valid for reads of `LANES` `f32`s and aligned to
    /// 4 bytes.
    unsafe fn load(ptr: *const f32) -> Self;

    /// Stores the `LANES` lanes to consecutive locations starting at `ptr`.
    ///
    /// # Safety
    /// The CPU requirement, and `ptr` must be valid for writes of `LANES` `f32`s and aligned to
    /// 4 bytes.
    unsafe fn store(self, ptr: *mut f32);

    /// Loads the first `n` lanes from `ptr`; lanes `n..LANES` are set to `fill`.
    ///
    /// Only `ptr[0..n]` is accessed (masked loads on x86, a copy through a stack buffer on NEON
    /// and scalar), so the memory after it may be unmapped. `n == LANES` is a full load.
    ///
    /// # Safety
    /// The CPU requirement, `n <= LANES`, and `ptr` must be non-null, aligned to 4 bytes and valid
    /// for reads of `n` `f32`s (for `n == 0` nothing is read).
    unsafe fn load_partial(ptr: *const f32, n: usize, fill: f32) -> Self;

    /// Stores the first `n` lanes to `ptr[0..n]`; memory from `ptr[n]` on is not touched.
    ///
    /// # Safety
    /// The CPU requirement, `n <= LANES`, and `ptr` must be non-null, aligned to 4 bytes and valid
    /// for writes of `n` `f32`s (for `n == 0` nothing is written).
    unsafe fn store_partial(self, ptr: *mut f32, n: usize);

    /// `self + rhs`.
    ///
    /// # Safety
    /// The CPU requirement (see the trait docs).
    unsafe fn add(self, rhs: Self) -> Self;

    /// `self - rhs`.
    ///
    /// # Safety
    /// The CPU requirement (see the trait docs).
    unsafe fn sub(self, rhs: Self) -> Self;

    /// `self * rhs`.
    ///
    /// # Safety
    /// The CPU requirement (see the trait docs).
    unsafe fn mul(self, rhs: Self) -> Self;

    /// `self / rhs` (IEEE division, correctly rounded).
    ///
    /// # Safety
    /// The CPU requirement (see the trait docs).
    unsafe fn div(self, rhs: Self) -> Self;

    /// Lane-wise maximum. **NaN handling is unspecified**: if either lane is NaN the result lane
    /// may be either operand (x86 and scalar return `rhs`, NEON returns NaN); `max(-0.0, +0.0)`
    /// may return either zero.
    ///
    /// # Safety
    /// The CPU requirement (see the trait docs).
    unsafe fn max(self, rhs: Self) -> Self;

    /// Lane-wise minimum, with the same unspecified NaN / signed-zero behaviour as
    /// [`F32x::max`].
    ///
    /// # Safety
    /// The CPU requirement (see the trait docs).
    unsafe fn min(self, rhs: Self) -> Self;

    /// Fused multiply-add `self * b + c` with a single rounding on every backend.
    ///
    /// # Safety
    /// The CPU requirement (see the trait docs).
    unsafe fn fma(self, b: Self, c: Self) -> Self;

    /// Horizontal sum of all lanes (summation order unspecified; a pairwise tree on SIMD).
    ///
    /// # Safety
    /// The CPU requirement (see the trait docs).
    unsafe fn hsum(self) -> f32;

    /// Horizontal maximum of all lanes; NaN if any lane is NaN (payload unspecified).
    ///
    /// # Safety
    /// The CPU requirement (see the trait docs).
    unsafe fn hmax(self) -> f32;

    /// `self` with the lanes where `mask` equals zero (`±0.0`) replaced by `+0.0`: the
    /// `0 · x = 0` convention of the kernels (a zero target weight contributes nothing even
    /// where `x` is infinite). Lanes where `mask` is non-zero or NaN keep `self`.
    ///
    /// # Safety
    /// The CPU requirement (see the trait docs).
    unsafe fn zero_where_zero(self, mask: Self) -> Self;

    /// Whether any lane is NaN.
    ///
    /// # Safety
    /// The CPU requirement (see the trait docs).
    unsafe fn is_nan_any(self) -> bool;

    /// Lane-wise `e^x`, the shared algorithm of the [`crate::simd::exp`] module.
    ///
    /// Contract: `x` in `[-104, 0]` (the kernels exponentiate `x - running_max <= 0`).
    /// * error ≤ 2 ulp (measured max 0.89 ulp) for `x` in `[EXP_X_MIN, 0]`,
    ///   `EXP_X_MIN = -87.33654`, where the result is a normal f32 (`>= f32::MIN_POSITIVE`);
    /// * `x < EXP_X_MIN` (true result `< f32::MIN_POSITIVE`, i.e. subnormal or zero) gives
    ///   exactly `+0.0`: subnormals are flushed, absolute error `< f32::MIN_POSITIVE ≈ 1.18e-38`;
    /// * `exp(-inf) == +0.0`, `exp(±0.0) == 1.0` exactly, `exp(NaN)` is NaN;
    /// * outside the contract, `x > 0` is still computed accurately up to `88.0`, and larger `x`
    ///   (including `+inf`) is clamped to `88.0` (result `exp(88) ≈ 1.65e38`, finite).
    ///
    /// # Safety
    /// The CPU requirement (see the trait docs).
    unsafe fn exp(self) -> Self;

    /// [`exp`](F32x::exp) for `x <= 0`, `-inf` or NaN only (what the kernels exponentiate:
    /// `x − max`), bit for bit; backends may skip the clamps that only matter for `x > 0`
    /// or, with a zeroing mask, for `x < EXP_X_MIN`. Unspecified for `x > 0`.
    ///
    /// # Safety
    /// The CPU requirement (see the trait docs).
    #[inline(always)]
    unsafe fn exp_nonpos(self) -> Self {
        // SAFETY: the caller's guarantee.
        unsafe { self.exp() }
    }

    /// Loads `LANES` consecutive `bf16` values (raw bits) widened to `f32` (exact: a 16-bit
    /// shift on every backend).
    ///
    /// # Safety
    /// The CPU requirement; `ptr` valid for reads of `LANES` `u16`s (aligned to 2 bytes).
    #[inline(always)]
    unsafe fn load_bf16(ptr: *const u16) -> Self {
        const { assert!(Self::LANES <= 16) };
        let mut buf = [0.0f32; 16];
        for (l, b) in buf.iter_mut().enumerate().take(Self::LANES) {
            // SAFETY: the caller guarantees LANES readable u16s.
            *b = f32::from_bits((unsafe { *ptr.add(l) } as u32) << 16);
        }
        // SAFETY: `buf` holds 16 >= LANES floats.
        unsafe { Self::load(buf.as_ptr()) }
    }

    /// Loads `2·LANES` consecutive `bf16` values (raw bits) widened to `f32`, in an
    /// interleaved order that makes the widening one operation per vector: element `2i` goes
    /// to lane `i` of the first vector, element `2i + 1` to lane `i` of the second. (Kernels
    /// that only reduce over a row, or that write back through
    /// [`store_bf16x2`](F32x::store_bf16x2), never see the order.)
    ///
    /// # Safety
    /// The CPU requirement; `ptr` valid for reads of `2·LANES` `u16`s (aligned to 2 bytes).
    unsafe fn load_bf16x2(ptr: *const u16) -> (Self, Self);

    /// The inverse of [`load_bf16x2`](F32x::load_bf16x2): stores lane `i` of `lo` as element
    /// `2i` and lane `i` of `hi` as element `2i + 1`, each rounded as by
    /// [`store_bf16`](F32x::store_bf16).
    ///
    /// # Safety
    /// The CPU requirement; `ptr` valid for writes of `2·LANES` `u16`s (aligned to 2 bytes).
    unsafe fn store_bf16x2(lo: Self, hi: Self, ptr: *mut u16);

    /// [`store_bf16x2`](F32x::store_bf16x2) as a non-temporal (streaming) store where the
    /// backend has one; the same bits.
    ///
    /// # Safety
    /// As `store_bf16x2`, and `ptr` must be aligned to `LANES · 4` bytes.
    unsafe fn store_bf16x2_stream(lo: Self, hi: Self, ptr: *mut u16);

    /// Loads `LANES` consecutive IEEE binary16 values (raw bits) widened to `f32` (exact).
    ///
    /// # Safety
    /// The CPU requirement; `ptr` valid for reads of `LANES` `u16`s (aligned to 2 bytes).
    #[inline(always)]
    unsafe fn load_f16(ptr: *const u16) -> Self {
        const { assert!(Self::LANES <= 16) };
        let mut buf = [0.0f32; 16];
        for (l, b) in buf.iter_mut().enumerate().take(Self::LANES) {
            // SAFETY: the caller guarantees LANES readable u16s.
            *b = half::f16::from_bits(unsafe { *ptr.add(l) }).to_f32();
        }
        // SAFETY: `buf` holds 16 >= LANES floats.
        unsafe { Self::load(buf.as_ptr()) }
    }

    /// Stores the lanes rounded to `bf16` (round to nearest even; NaN stays NaN) as raw bits.
    ///
    /// # Safety
    /// The CPU requirement; `ptr` valid for writes of `LANES` `u16`s (aligned to 2 bytes).
    #[inline(always)]
    unsafe fn store_bf16(self, ptr: *mut u16) {
        const { assert!(Self::LANES <= 16) };
        let mut buf = [0.0f32; 16];
        // SAFETY: `buf` holds 16 >= LANES floats.
        unsafe { self.store(buf.as_mut_ptr()) };
        for (l, &b) in buf.iter().enumerate().take(Self::LANES) {
            // SAFETY: the caller guarantees LANES writable u16s.
            unsafe { *ptr.add(l) = half::bf16::from_f32(b).to_bits() };
        }
    }

    /// Stores the lanes rounded to IEEE binary16 (round to nearest even) as raw bits.
    ///
    /// # Safety
    /// The CPU requirement; `ptr` valid for writes of `LANES` `u16`s (aligned to 2 bytes).
    #[inline(always)]
    unsafe fn store_f16(self, ptr: *mut u16) {
        const { assert!(Self::LANES <= 16) };
        let mut buf = [0.0f32; 16];
        // SAFETY: `buf` holds 16 >= LANES floats.
        unsafe { self.store(buf.as_mut_ptr()) };
        for (l, &b) in buf.iter().enumerate().take(Self::LANES) {
            // SAFETY: the caller guarantees LANES writable u16s.
            unsafe { *ptr.add(l) = half::f16::from_f32(b).to_bits() };
        }
    }

    /// [`store_bf16`](F32x::store_bf16), as a non-temporal (streaming) store where the
    /// backend has one (see [`store_stream`](F32x::store_stream)); the same bits.
    ///
    /// # Safety
    /// As [`store_bf16`](F32x::store_bf16), and `ptr` must be aligned to `LANES · 2` bytes.
    #[inline(always)]
    unsafe fn store_bf16_stream(self, ptr: *mut u16) {
        // SAFETY: the caller's guarantees include those of `store_bf16`.
        unsafe { self.store_bf16(ptr) }
    }

    /// [`store_f16`](F32x::store_f16), as a non-temporal (streaming) store where the backend
    /// has one (see [`store_stream`](F32x::store_stream)); the same bits.
    ///
    /// # Safety
    /// As [`store_f16`](F32x::store_f16), and `ptr` must be aligned to `LANES · 2` bytes.
    #[inline(always)]
    unsafe fn store_f16_stream(self, ptr: *mut u16) {
        // SAFETY: the caller's guarantees include those of `store_f16`.
        unsafe { self.store_f16(ptr) }
    }

    /// Transposes a `LANES × LANES` block: reads row `q` from `src[q][0..LANES]` and writes
    /// `dst[k][q] = src[q][k]` (register shuffles on x86; element by element elsewhere). Only
    /// the first `LANES` pointers of each array are used. Every source row is read before any
    /// destination row is written.
    ///
    /// # Safety
    /// The CPU requirement; `src[q]` valid for reads and `dst[k]` for writes of `LANES` `f32`s
    /// (aligned to 4 bytes) for `q, k < LANES`.
    #[inline(always)]
    unsafe fn transpose(src: &[*const f32; 16], dst: &[*mut f32; 16]) {
        const { assert!(Self::LANES <= 16) };
        let l = Self::LANES;
        let mut buf = [0.0f32; 256];
        for q in 0..l {
            for k in 0..l {
                // SAFETY: the caller guarantees `src[q]` readable for LANES floats.
                buf[k * l + q] = unsafe { *src[q].add(k) };
            }
        }
        for (k, &d) in dst.iter().enumerate().take(l) {
            // SAFETY: the caller guarantees `dst[k]` writable for LANES floats.
            unsafe { std::ptr::copy_nonoverlapping(buf.as_ptr().add(k * l), d, l) };
        }
    }

    /// Hints the CPU to bring the cache line holding `ptr` into the L2 cache (a no-op where
    /// the backend has no stable prefetch instruction). Never faults, whatever `ptr` is.
    ///
    /// # Safety
    /// The CPU requirement (see the trait docs).
    #[inline(always)]
    unsafe fn prefetch(ptr: *const f32) {
        let _ = ptr;
    }

    /// Stores the lanes like [`store`](F32x::store), but as a non-temporal (streaming)
    /// store where the backend has one: the line is written to memory without being read
    /// first or kept in cache. Call [`stream_fence`](F32x::stream_fence) before the data is
    /// handed to another thread.
    ///
    /// # Safety
    /// As [`store`](F32x::store), and `ptr` must be aligned to `LANES · 4` bytes.
    #[inline(always)]
    unsafe fn store_stream(self, ptr: *mut f32) {
        // SAFETY: the caller's guarantees include those of `store`.
        unsafe { self.store(ptr) }
    }

    /// Orders earlier streaming stores before later stores (a no-op where
    /// [`store_stream`](F32x::store_stream) is an ordinary store).
    ///
    /// # Safety
    /// The CPU requirement (see the trait docs).
    #[inline(always)]
    unsafe fn stream_fence() {}
}
