//! The two tile products of dense InfoNCE on `bf16` data with the AVX-512 BF16 dot-product
//! instruction `vdpbf16ps`, which does two multiply-adds per `f32` lane (twice the FMA rate
//! of `f32` on CPUs that have it).
//!
//! `vdpbf16ps acc, x, y` adds `x[2q]·y[2q] + x[2q+1]·y[2q+1]` to lane `q` of `acc`: the
//! operands are *pairs* of `bf16` along the summed dimension, so the packing pairs up
//! neighbours along that dimension:
//! * scores `S = Z·Aᵀ` sum over classes: a dword of a logit row (two neighbouring classes,
//!   exactly as they lie in memory) is broadcast against a panel of target dwords laid out
//!   `[target vector][class pair][lane]`. Products of two `bf16` are exact in `f32`, so
//!   these scores are as accurate as the `f32` kernel's on the widened values (only the
//!   summation order differs).
//! * the accumulator `O = P·A` sums over targets: `P` is rounded to `bf16` (one
//!   `vcvtne2ps2bf16` per 32 probabilities, round to nearest even) and paired along
//!   targets, against a panel of `(a_j[c], a_{j+1}[c])` dwords. This rounding is the
//!   accuracy cost of the fast path: every probability carries a relative error of at
//!   most `u = 2⁻⁸` (bf16's unit roundoff), so a gradient element `k(O/l − a_p)` may move
//!   by `k·u·O/l`: the size of the final `bf16` rounding of the gradient, except where
//!   `O/l` and `a_p` nearly cancel.
//!
//! The instruction treats subnormal `bf16` inputs as zero (they are below `1.2·10⁻³⁸`).
//! Everything else (the online log-sum-exp, the rescaling, the epilogue) is the `f32`
//! kernel's, in [`super::infonce`].

use super::infonce::{Bf16Data, NceProblem, MB};
use std::arch::x86_64::*;

/// Class pairs per packed score panel (the panel of a tile is `tile × KC2` dwords, the same
/// 128 KiB as the `f32` kernel's `tile × KC` floats).
pub(crate) const KC2: usize = 128;

/// Packs targets `[j0, j1)`, class pairs `[k0, k0 + kc)` into `panel` as
/// `[target vector][pair][lane]` dwords (the bits stored in `f32` slots; targets past `j1`
/// and the missing partner of an odd last class are zero). `c` is the number of classes.
pub(crate) fn pack_score_panel(
    d: &Bf16Data<'_>,
    (j0, j1): (usize, usize),
    (k0, kc): (usize, usize),
    (c, tile): (usize, usize),
    panel: &mut [f32],
) {
    const L: usize = 16;
    for jv in 0..tile / L {
        let base = jv * kc * L;
        for lane in 0..L {
            let j = j0 + jv * L + lane;
            if j < j1 {
                let row = &d.a[j * d.a_stride..j * d.a_stride + c];
                for k in 0..kc {
                    let q = 2 * (k0 + k);
                    let lo = row[q] as u32;
                    let hi = row.get(q + 1).map_or(0, |&h| h as u32);
                    panel[base + k * L + lane] = f32::from_bits(lo | hi << 16);
                }
            } else {
                for k in 0..kc {
                    panel[base + k * L + lane] = 0.0;
                }
            }
        }
    }
}

/// `s_r[0..32] (+)= Σ_pairs z_r[pair] · panel[pair][0..32]` for `RG` rows and two target
/// vectors (`a0`, `a1` point at their pairs in the panel); `kc` pairs, of which the last
/// holds one class only when `odd` (its logit partner is then read as zero, never beyond
/// the row).
///
/// # Safety
/// The CPU has AVX-512 F and BF16; `z[r]` is readable for `2·kc` (`2·kc − 1` when `odd`)
/// `u16`s, `a0`/`a1` for `16·kc` dwords, `s[r]` for 32 floats of reading and writing.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(crate) unsafe fn gemm_tile<const RG: usize>(
    z: [*const u16; RG],
    (a0, a1): (*const f32, *const f32),
    (kc, odd): (usize, bool),
    s: [*mut f32; RG],
    first: bool,
) {
    // SAFETY: the caller's guarantees; every dword broadcast from `z[r]` lies inside the
    // row except the last one of an odd row, which is read as a single u16.
    unsafe {
        let mut acc = [[_mm512_setzero_ps(); 2]; RG];
        if !first {
            for r in 0..RG {
                acc[r][0] = _mm512_loadu_ps(s[r]);
                acc[r][1] = _mm512_loadu_ps(s[r].add(16));
            }
        }
        let full = if odd { kc - 1 } else { kc };
        for k in 0..full {
            let v0 = m512bh(_mm512_loadu_si512(a0.add(16 * k).cast()));
            let v1 = m512bh(_mm512_loadu_si512(a1.add(16 * k).cast()));
            for r in 0..RG {
                let zb = m512bh(_mm512_set1_epi32(z[r].cast::<i32>().add(k).read_unaligned()));
                acc[r][0] = _mm512_dpbf16_ps(acc[r][0], zb, v0);
                acc[r][1] = _mm512_dpbf16_ps(acc[r][1], zb, v1);
            }
        }
        if odd {
            let k = kc - 1;
            let v0 = m512bh(_mm512_loadu_si512(a0.add(16 * k).cast()));
            let v1 = m512bh(_mm512_loadu_si512(a1.add(16 * k).cast()));
            for r in 0..RG {
                let zb = m512bh(_mm512_set1_epi32(*z[r].add(2 * k) as i32));
                acc[r][0] = _mm512_dpbf16_ps(acc[r][0], zb, v0);
                acc[r][1] = _mm512_dpbf16_ps(acc[r][1], zb, v1);
            }
        }
        for r in 0..RG {
            _mm512_storeu_ps(s[r], acc[r][0]);
            _mm512_storeu_ps(s[r].add(16), acc[r][1]);
        }
    }
}

/// Packs the targets `[j0, j0 + w)` for the accumulator product: for every column block
/// `[cb, ce)` of `kc` classes (blocks laid out one after the other, block `cb` at offset
/// `cb·⌈w/2⌉`), dwords `(a_j[col], a_{j+1}[col])` at `[pair][col − cb]` (a missing partner
/// of an odd last target is zero).
///
/// # Safety
/// The CPU has AVX-512 F/BW; rows `j0 .. j0 + w` are valid target rows; `out` holds
/// `⌈w/2⌉ · c` floats.
#[target_feature(enable = "avx512f,avx512bw")]
pub(crate) unsafe fn pack_pair_panel(
    d: &Bf16Data<'_>,
    j0: usize,
    w: usize,
    (c, kc): (usize, usize),
    out: &mut [f32],
) {
    let w2 = w.div_ceil(2);
    let o = out.as_mut_ptr();
    // SAFETY: reads stay inside rows `j0 .. j0 + w` (16 columns at a time while they fit,
    // then one class at a time); writes stay inside `out` (`w2 · c` dwords in all).
    unsafe {
        let mut cb = 0;
        while cb < c {
            let ce = (cb + kc).min(c);
            let bw = ce - cb;
            let blk = o.add(cb * w2);
            for q in 0..w2 {
                let j = j0 + 2 * q;
                let lo = d.a.as_ptr().add(j * d.a_stride);
                let hi = (2 * q + 1 < w).then(|| d.a.as_ptr().add((j + 1) * d.a_stride));
                let dst = blk.add(q * bw);
                let mut col = cb;
                while col + 16 <= ce {
                    let l = _mm512_cvtepu16_epi32(_mm256_loadu_si256(lo.add(col).cast()));
                    let h = match hi {
                        Some(h) => _mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(_mm256_loadu_si256(
                            h.add(col).cast(),
                        ))),
                        None => _mm512_setzero_si512(),
                    };
                    _mm512_storeu_si512(dst.add(col - cb).cast(), _mm512_or_si512(l, h));
                    col += 16;
                }
                while col < ce {
                    let l = *lo.add(col) as u32;
                    let h = hi.map_or(0, |h| *h.add(col) as u32);
                    *dst.add(col - cb) = f32::from_bits(l | h << 16);
                    col += 1;
                }
            }
            cb = ce;
        }
    }
}

/// Rounds `p[0..w]` to `bf16` pairs `(p[2q], p[2q+1])` in `out[q]` (`p[w] = 0` when `w` is
/// odd), 32 probabilities per `vcvtne2ps2bf16` (round to nearest even).
///
/// # Safety
/// The CPU has AVX-512 F and BF16; `out` holds `⌈w/2⌉` floats.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(crate) unsafe fn round_pairs(p: &[f32], out: &mut [f32]) {
    let w = p.len();
    // SAFETY: full vectors below `w`, then partial (masked) loads and stores.
    unsafe {
        let mut k = 0;
        while k < w {
            let n = (w - k).min(32);
            let lo_n = n.min(16);
            let hi_n = n - lo_n;
            let lo = _mm512_maskz_loadu_ps(mask16(lo_n), p.as_ptr().add(k));
            let hi = _mm512_maskz_loadu_ps(mask16(hi_n), p.as_ptr().add(k + 16));
            let packed: __m512i = std::mem::transmute(_mm512_cvtne2ps_pbh(hi, lo));
            _mm512_mask_storeu_epi32(out.as_mut_ptr().add(k / 2).cast(), mask16(n.div_ceil(2)), packed);
            k += n;
        }
    }
}

/// The first `n <= 16` lanes.
#[inline(always)]
fn mask16(n: usize) -> __mmask16 {
    if n >= 16 {
        0xFFFF
    } else {
        ((1u32 << n) - 1) as __mmask16
    }
}

/// `o_r[k] += Σ_q pairs_r[q] · panel[q][k − cb]` (`=` when `first`: `o` is not read) for
/// `RI` rows and columns `k` in `[cb, ce)` (`panel` is that column block of
/// [`pack_pair_panel`], `w2` pairs of `ce − cb` dwords).
///
/// # Safety
/// The CPU has AVX-512 F and BF16; `o[r]` valid for reading and writing `[cb, ce)`, every
/// `pairs[r]` at least `w2` long.
#[target_feature(enable = "avx512f,avx512bf16")]
pub(crate) unsafe fn axpy_tile<const RI: usize>(
    o: [*mut f32; RI],
    pairs: [&[f32]; RI],
    panel: *const f32,
    w2: usize,
    (cb, ce): (usize, usize),
    first: bool,
) {
    let bw = ce - cb;
    // SAFETY: accesses stay in `[cb, ce)` of each row and inside the block's panel.
    unsafe {
        let mut k = 0;
        while k + 32 <= bw {
            let mut acc = [[_mm512_setzero_ps(); 2]; RI];
            if !first {
                for r in 0..RI {
                    acc[r][0] = _mm512_loadu_ps(o[r].add(cb + k));
                    acc[r][1] = _mm512_loadu_ps(o[r].add(cb + k + 16));
                }
            }
            for q in 0..w2 {
                let row = panel.add(q * bw + k);
                let a0 = m512bh(_mm512_loadu_si512(row.cast()));
                let a1 = m512bh(_mm512_loadu_si512(row.add(16).cast()));
                for r in 0..RI {
                    let pq = m512bh(_mm512_set1_epi32(pairs[r].get_unchecked(q).to_bits() as i32));
                    acc[r][0] = _mm512_dpbf16_ps(acc[r][0], pq, a0);
                    acc[r][1] = _mm512_dpbf16_ps(acc[r][1], pq, a1);
                }
            }
            for r in 0..RI {
                _mm512_storeu_ps(o[r].add(cb + k), acc[r][0]);
                _mm512_storeu_ps(o[r].add(cb + k + 16), acc[r][1]);
            }
            k += 32;
        }
        while k < bw {
            let n = (bw - k).min(16);
            let mk = mask16(n);
            let mut acc = [_mm512_setzero_ps(); RI];
            if !first {
                for r in 0..RI {
                    acc[r] = _mm512_maskz_loadu_ps(mk, o[r].add(cb + k));
                }
            }
            for q in 0..w2 {
                let a0 = m512bh(_mm512_maskz_loadu_epi32(mk, panel.add(q * bw + k).cast()));
                for r in 0..RI {
                    let pq = m512bh(_mm512_set1_epi32(pairs[r].get_unchecked(q).to_bits() as i32));
                    acc[r] = _mm512_dpbf16_ps(acc[r], pq, a0);
                }
            }
            for r in 0..RI {
                _mm512_mask_storeu_ps(o[r].add(cb + k), mk, acc[r]);
            }
            k += n;
        }
    }
}

/// Reinterprets 32 packed `bf16` as the dot-product instruction's operand type.
#[inline(always)]
fn m512bh(v: __m512i) -> __m512bh {
    // SAFETY: both are 512-bit plain-data vector types; every bit pattern is valid.
    unsafe { std::mem::transmute::<__m512i, __m512bh>(v) }
}

/// Scores `S[r][j] = (z_r · a_j)/t − b_j` of `rows × [j0, j1)` into `s` (row stride `tile`)
/// with [`gemm_tile`]; the `bf16` twin of the `f32` kernel's `score_tile_packed` (the same
/// blocking, panels of [`KC2`] class pairs packed just before use).
///
/// # Safety
/// The CPU has AVX-512 F/BW and BF16; `rows` are valid logit rows of `p` and of `d`, at most
/// [`MB`] of them; `j1 − j0 <= tile`, `tile` a multiple of 32; `s` holds
/// `rows.len() × tile` floats and `panel` `tile × min(KC2, ⌈C/2⌉)`.
pub(crate) unsafe fn score_tile(
    p: &NceProblem<'_>,
    d: &Bf16Data<'_>,
    rows: &[usize],
    (j0, j1): (usize, usize),
    tile: usize,
    s: &mut [f32],
    panel: &mut [f32],
) {
    let c = p.c;
    let c2 = c.div_ceil(2);
    let odd_c = c % 2 == 1;
    assert!(rows.len() <= MB);
    let zrow = |i: usize, k0: usize| d.z[i * d.z_stride + 2 * k0..].as_ptr();
    // SAFETY: the caller's CPU guarantee; pointers index the packed chunk (`tile × kc`
    // dwords), logit rows from class `2·k0` on (`2·kc` classes, one fewer in an odd row's
    // last chunk) and score rows of `tile` floats.
    unsafe {
        let nr = rows.len();
        let mut k0 = 0;
        while k0 < c2 {
            let kc = (c2 - k0).min(KC2);
            let odd = odd_c && k0 + kc == c2;
            pack_score_panel(d, (j0, j1), (k0, kc), (c, tile), &mut panel[..tile * kc]);
            let chunk = panel.as_ptr();
            let first = k0 == 0;
            for jp in 0..tile / 32 {
                let a = (chunk.add(2 * jp * kc * 16), chunk.add((2 * jp + 1) * kc * 16));
                let col = 32 * jp;
                let mut r = 0;
                while r < nr {
                    if nr - r >= 8 {
                        let zp: [*const u16; 8] = std::array::from_fn(|q| zrow(rows[r + q], k0));
                        let sp: [*mut f32; 8] =
                            std::array::from_fn(|q| s.as_mut_ptr().add((r + q) * tile + col));
                        gemm_tile::<8>(zp, a, (kc, odd), sp, first);
                        r += 8;
                    } else {
                        let zp = [zrow(rows[r], k0)];
                        let sp = [s.as_mut_ptr().add(r * tile + col)];
                        gemm_tile::<1>(zp, a, (kc, odd), sp, first);
                        r += 1;
                    }
                }
            }
            k0 += kc;
        }
    }
    for r in 0..rows.len() {
        for j in j0..j1 {
            let v = &mut s[r * tile + (j - j0)];
            *v = *v * p.inv_t - p.b[j];
        }
    }
}
