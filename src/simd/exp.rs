//! The one `exp` algorithm shared by every backend: constants and the scalar version.
//!
//! Every backend (scalar, AVX2, AVX-512, NEON) evaluates exactly the same sequence of IEEE
//! binary32 operations with these constants (a fused multiply-add wherever [`exp_scalar`] uses
//! `f32::mul_add`), so all backends return bit-identical results.
//!
//! # Algorithm
//!
//! For lane `x`:
//!
//! 1. `xc = min(max(x, EXP_X_MIN), EXP_X_MAX)`, written so that NaN passes through unchanged.
//! 2. Range reduction `x = k·ln2 + r`: `kf = round_half_even(xc · LOG2E)` (an integral f32,
//!    `-126 <= kf <= 127`), then Cody–Waite with ln2 split in two:
//!    `r = fma(kf, -LN2_HI, xc)` (exact: `LN2_HI` has 15 significant bits, `|kf| < 2^7`) and
//!    `r = fma(kf, -LN2_LO, r)`; `|r| <= ln2/2 + 1e-5`.
//! 3. `e^r ≈ p(r) = 1 + C1·r + C2·r² + … + C6·r⁶`, Horner with fmas, highest degree first:
//!    `p = fma(C6, r, C5); p = fma(p, r, C4); … ; p = fma(p, r, C1); p = fma(p, r, 1.0)`.
//! 4. Scale by `2^k` by integer addition of `k << 23` to the bit pattern of `p`
//!    (`p ∈ [0.70, 1.42]`, so the biased exponent stays in `1..=254` for every clamped input).
//! 5. Lanes with `x < EXP_X_MIN` (including `-inf`) are replaced by `+0.0`.
//!
//! NaN: `xc`, `kf`, `r` and `p` are NaN; the float→int conversion of `kf` gives `0` (scalar,
//! NEON) or `i32::MIN` (x86), and both shift to `0` under `<< 23`, so the NaN `p` is returned
//! unchanged; the `x < EXP_X_MIN` test is false for NaN.
//!
//! # Accuracy
//!
//! * `x ∈ [EXP_X_MIN, 0]`, `EXP_X_MIN = -87.33654` (the smallest f32 with
//!   `e^x >= f32::MIN_POSITIVE`): the result is a normal f32 with error **≤ 2 ulp** against
//!   the exact value (measured: max 0.89 ulp over every f32 in `[-104, 0]`, at `x ≈ -5.8486`;
//!   the regular tests check ≥ 10^7 points per backend); `exp(0) == exp(-0.0) == 1.0` exactly.
//! * `x < EXP_X_MIN`: the exact result is below `f32::MIN_POSITIVE` (subnormal or zero in f32)
//!   and **is flushed to `+0.0`**; absolute error `< f32::MIN_POSITIVE ≈ 1.18e-38`. Flushing
//!   keeps the algorithm a single integer add (no subnormal arithmetic, so no x86 microcode
//!   assists); in the kernels such terms are far below one ulp of the running sum, which always
//!   contains `exp(0) = 1`.
//! * `x > 0` is outside the kernels' contract: up to `EXP_X_MAX = 88.0` it is computed with the
//!   same accuracy; larger inputs (and `+inf`) are clamped to `88.0`, giving `exp(88) ≈ 1.65e38`.
//!
//! # Polynomial fit
//!
//! `C1..C6` were fitted for this crate with the Remez exchange algorithm (mpmath, 50 digits),
//! minimising the maximum **relative** error of `1 + C1 r + … + C6 r⁶` against `e^r` on
//! `r ∈ [-0.3466, 0.3466]` (ln2/2 plus a margin for the rounding of `x·LOG2E`), with the constant
//! term pinned to 1. The coefficients were rounded to f32 one at a time from the lowest order
//! up: round `C1` and freeze it, re-run Remez for `C2..C6`, round `C2`, and so on (naive rounding
//! of all coefficients at once costs ~10x in accuracy, mostly from `C1`/`C2`). The unconstrained
//! degree-6 minimax error is 2.57e-9; the final f32 polynomial has a relative error of 3.19e-9
//! (2^-28.2, ≈ 0.05 ulp) in exact arithmetic, so the result error is dominated by the rounding
//! of the last Horner steps. Degree 5 was rejected: its minimax error is 4.3e-7 (≈ 4 ulp).
//! The fit is reproduced by `tools/fit_exp_poly.py` in this repository (`pip install numpy
//! mpmath; python3 tools/fit_exp_poly.py 6`).

/// Inputs below this give results below `f32::MIN_POSITIVE`; they are flushed to `+0.0`.
/// It is the smallest f32 `t` with `e^t >= f32::MIN_POSITIVE` (`ln(2^-126) = -87.336544750…`;
/// bits `0xC2AE_AC4F`). It is also the lower clamp of the range reduction.
pub(crate) const EXP_X_MIN: f32 = -87.336_54;
/// Upper clamp of the input (`exp(88) ≈ 1.65e38` is finite; `k = 127` keeps the exponent valid).
pub(crate) const EXP_X_MAX: f32 = 88.0;
/// `log2(e)` rounded to f32 (bits `0x3FB8_AA3B`).
pub(crate) const LOG2E: f32 = core::f32::consts::LOG2_E;
/// High part of ln2: ln2 truncated to a multiple of 2^-16, exactly `45426 / 65536 =
/// 0.693145751953125` (bits `0x3F31_7200`, 15 significant bits, so `k * LN2_HI` is exact for
/// `|k| < 2^9`). The literal is the shortest decimal that rounds to it.
pub(crate) const LN2_HI: f32 = 0.693_145_75;
/// Low part of ln2: `ln2 - LN2_HI` rounded to f32 (bits `0x35BF_BE8E`).
pub(crate) const LN2_LO: f32 = 1.428_606_8e-6;

/// Coefficient of `r` (bits `0x3F80_0000`: the fit rounds it to exactly 1).
pub(crate) const EXP_C1: f32 = 1.0;
/// Coefficient of `r²` (bits `0x3EFF_FFFE`).
pub(crate) const EXP_C2: f32 = 0.499_999_94;
/// Coefficient of `r³` (bits `0x3E2A_AA46`).
pub(crate) const EXP_C3: f32 = 0.166_665_17;
/// Coefficient of `r⁴` (bits `0x3D2A_AC2C`).
pub(crate) const EXP_C4: f32 = 0.041_668_102;
/// Coefficient of `r⁵` (bits `0x3C09_1EF0`).
pub(crate) const EXP_C5: f32 = 0.008_369_192_5;
/// Coefficient of `r⁶` (bits `0x3AB5_63A7`).
pub(crate) const EXP_C6: f32 = 0.001_383_890_3;

/// Scalar `e^x`: the reference implementation of the shared algorithm (see the module docs for
/// the steps, the accuracy and the special values). SIMD backends perform the same operations
/// lane-wise and return bit-identical results.
#[inline(always)]
pub(crate) fn exp_scalar(x: f32) -> f32 {
    // 1. Clamp (`f32::clamp` returns NaN for NaN).
    let xc = x.clamp(EXP_X_MIN, EXP_X_MAX);
    // 2. Range reduction.
    let kf = (xc * LOG2E).round_ties_even();
    let r = kf.mul_add(-LN2_HI, xc);
    let r = kf.mul_add(-LN2_LO, r);
    // 3. Polynomial (Horner, fused).
    let mut p = EXP_C6.mul_add(r, EXP_C5);
    p = p.mul_add(r, EXP_C4);
    p = p.mul_add(r, EXP_C3);
    p = p.mul_add(r, EXP_C2);
    p = p.mul_add(r, EXP_C1);
    p = p.mul_add(r, 1.0);
    // 4. Scale by 2^k in the exponent field (`as` saturates and maps NaN to 0).
    let k = kf as i32;
    let y = f32::from_bits(p.to_bits().wrapping_add((k as u32) << 23));
    // 5. Flush results below f32::MIN_POSITIVE (and exp(-inf)) to +0.
    if x < EXP_X_MIN {
        0.0
    } else {
        y
    }
}
