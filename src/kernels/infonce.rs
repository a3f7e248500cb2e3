//! Soft-target InfoNCE with dense targets, fused and tiled (flash-attention style).
//!
//! For a block of logit rows `I` and, in turn, every block of targets `J`:
//! 1. `S_IJ = Z_I·A_Jᵀ / t − b_J` with an outer-product micro-kernel (8 rows × 2 vectors of
//!    targets on 32-register ISAs) over `A_J` packed by [`pack_panel`]
//!    (`b_j = Σ_c a_jc log η_c` is computed once per call);
//! 2. per row an online maximum `m_i` and sum `l_i`; `P_IJ = exp(S_IJ − m_i)`, and when `m_i`
//!    grows the accumulator is rescaled;
//! 3. `O_I += P_IJ·A_J` (`=` for the first block) with an outer-product micro-kernel of the
//!    same shape over `KC`-column blocks of `A_J` packed by [`pack_axpy_panel`] (skipped for
//!    loss-only calls).
//!
//! At the end `l_i = (m_i − S_{i,p}) + ln l_i` and `∂l_i/∂z_i = k_i (O_i / l_i − a_p)`. The
//! `N × M` score matrix is never stored: extra memory is one `R × T` score tile and one
//! `R × C` accumulator per block of rows.
//!
//! Rows whose logits are not all finite (masked `−∞`, NaN, `+∞`) leave the tiled path and
//! go through [`dirty_row`], a plain per-row evaluation with the reference's conventions.
//! The optional gradient with respect to the targets is a second pass ([`grad_targets`])
//! over blocks of targets that recomputes `P` from the saved row log-sum-exps.

use super::cross_entropy::RowScale;
use super::stamp;
use crate::simd::F32x;

/// A validated dense InfoNCE problem on `f32` data.
#[derive(Clone, Copy)]
pub(crate) struct NceProblem<'a> {
    pub z: &'a [f32],
    pub z_stride: usize,
    pub c: usize,
    pub a: &'a [f32],
    pub a_stride: usize,
    pub m: usize,
    pub inv_t: f32,
    /// `log η_c`.
    pub log_eta: &'a [f32],
    /// `b_j = Σ_c a_jc log η_c`.
    pub b: &'a [f32],
    pub p0: usize,
    pub scale: RowScale<'a>,
    /// The original `bf16` bits of `z` and `a` when the tile products run on the AVX-512
    /// BF16 dot product (see [`super::infonce_bf16`]); `None` for the `f32` products.
    pub bf16: Option<Bf16Data<'a>>,
}

/// The raw `bf16` bits of the logits and targets of a dense InfoNCE call, next to the
/// widened `f32` copies in [`NceProblem`] that the rest of the kernel reads.
#[derive(Clone, Copy)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // only x86-64 builds the products
pub(crate) struct Bf16Data<'a> {
    pub z: &'a [u16],
    pub z_stride: usize,
    pub a: &'a [u16],
    pub a_stride: usize,
}

impl NceProblem<'_> {
    #[inline(always)]
    fn z_row(&self, i: usize) -> &[f32] {
        &self.z[i * self.z_stride..i * self.z_stride + self.c]
    }
    #[inline(always)]
    fn a_row(&self, j: usize) -> &[f32] {
        &self.a[j * self.a_stride..j * self.a_stride + self.c]
    }
}

/// Packs columns `[cb, cb + cw)` of the rows `src` into `panel` for [`axpy_packed`]: column
/// blocks of two vectors (then one vector for the last `cw mod 2L` columns, zero-padded), and
/// within a block starting at relative column `k` with width `bw`, row `j` at
/// `panel[w·k + j·bw ..][..bw]` (`w = src.len()`). The product then reads its targets as one
/// sequential stream instead of one far-apart row per target.
///
/// # Safety
/// `V`'s CPU requirement; every `src` pointer valid for reading `cb + cw` floats; `panel`
/// holds `src.len() × cw.next_multiple_of(LANES)` floats.
#[inline(always)]
unsafe fn pack_axpy_panel<V: F32x>(src: &[*const f32], cb: usize, cw: usize, panel: &mut [f32]) {
    let (l, w) = (V::LANES, src.len());
    assert!(panel.len() >= w * cw.next_multiple_of(l));
    let pp = panel.as_mut_ptr();
    // SAFETY: reads stay in `[cb, cb + cw)` of each source row; block `k` of width `bw` writes
    // `panel[w·k .. w·(k + bw)]`, and `w·(k + bw) <= w · cw.next_multiple_of(l)` (asserted).
    unsafe {
        for (j, &row) in src.iter().enumerate() {
            let row = row.add(cb);
            let mut k = 0;
            while k + 2 * l <= cw {
                let d = pp.add(w * k + j * 2 * l);
                V::load(row.add(k)).store(d);
                V::load(row.add(k + l)).store(d.add(l));
                k += 2 * l;
            }
            while k < cw {
                let n = (cw - k).min(l);
                V::load_partial(row.add(k), n, 0.0).store(pp.add(w * k + j * l));
                k += l;
            }
        }
    }
}

/// `o_r[k] += Σ_j p_r[j] · a_j[k]` (`=` when `first`: `o` is not read) for `RI` rows and `k`
/// in `[0, cw)`, the targets `a_j` packed by [`pack_axpy_panel`] (`w` of them; `p_r` has at
/// least `w` weights). The addresses in `pf` (the caller's next accumulator block, which may
/// be far out in memory) are prefetched one per target during the first columns, so their
/// latency hides behind this call's multiply-adds.
///
/// # Safety
/// `V`'s CPU requirement; `o` pointers valid for reading and writing `cw` floats; `panel`
/// as written by [`pack_axpy_panel`] for `w` rows and `cw` columns.
#[inline(always)]
unsafe fn axpy_packed<V: F32x, const RI: usize>(
    o: [*mut f32; RI],
    p: [&[f32]; RI],
    panel: *const f32,
    (w, cw): (usize, usize),
    first: bool,
    pf: &[*const f32],
) {
    let l = V::LANES;
    // SAFETY: accumulator accesses stay in `[0, cw)` (whole vectors, then a partial one);
    // panel block `k` holds `w` vectors of width 2L or L at `w·k`; prefetches never fault.
    unsafe {
        let mut k = 0;
        while k + 2 * l <= cw {
            let blk = panel.add(w * k);
            let mut acc = [[V::zero(); 2]; RI];
            if !first {
                for r in 0..RI {
                    acc[r][0] = V::load(o[r].add(k));
                    acc[r][1] = V::load(o[r].add(k + l));
                }
            }
            let npf = if k == 0 { pf.len() } else { 0 };
            for j in 0..w {
                if j < npf {
                    V::prefetch(*pf.get_unchecked(j));
                }
                let a0 = V::load(blk.add(2 * j * l));
                let a1 = V::load(blk.add(2 * j * l + l));
                for r in 0..RI {
                    let wt = V::splat(*p[r].get_unchecked(j));
                    acc[r][0] = wt.fma(a0, acc[r][0]);
                    acc[r][1] = wt.fma(a1, acc[r][1]);
                }
            }
            for r in 0..RI {
                acc[r][0].store(o[r].add(k));
                acc[r][1].store(o[r].add(k + l));
            }
            k += 2 * l;
        }
        while k < cw {
            let n = (cw - k).min(l);
            let blk = panel.add(w * k);
            let mut acc = [V::zero(); RI];
            if !first {
                for r in 0..RI {
                    acc[r] = V::load_partial(o[r].add(k), n, 0.0);
                }
            }
            for j in 0..w {
                let a0 = V::load(blk.add(j * l));
                for r in 0..RI {
                    acc[r] = V::splat(*p[r].get_unchecked(j)).fma(a0, acc[r]);
                }
            }
            for r in 0..RI {
                acc[r].store_partial(o[r].add(k), n);
            }
            k += l;
        }
    }
}

/// `x[k] *= s` over a row.
///
/// # Safety
/// `V`'s CPU requirement.
#[inline(always)]
unsafe fn scale_row<V: F32x>(x: &mut [f32], s: f32) {
    let (n, l) = (x.len(), V::LANES);
    let p = x.as_mut_ptr();
    // SAFETY: full vectors below n, then one partial vector.
    unsafe {
        let vs = V::splat(s);
        let mut k = 0;
        while k + l <= n {
            V::load(p.add(k)).mul(vs).store(p.add(k));
            k += l;
        }
        if k < n {
            V::load_partial(p.add(k), n - k, 0.0)
                .mul(vs)
                .store_partial(p.add(k), n - k);
        }
    }
}

/// Targets per tile of the packed kernels: sixteen vectors' worth (256 on AVX-512).
#[inline(always)]
fn packed_tile<V: F32x>() -> usize {
    16 * V::LANES
}

/// Targets per tile of the forward kernel for `p`: twice [`packed_tile`] from `C = 4096` on
/// (`f32` products only). Each tile reads and writes every accumulator row once and may
/// rescale it; once a slab's `rows × C` accumulators outgrow L2, halving the number of
/// tiles saves about 1 % at `C = 10⁴`. Smaller `C` keeps the narrower tile and half the
/// scratch (the peak-memory budget at 8192 rows × 1000 classes).
#[inline(always)]
fn forward_tile<V: F32x>(p: &NceProblem<'_>) -> usize {
    if p.c >= 4096 && p.bf16.is_none() {
        2 * packed_tile::<V>()
    } else {
        packed_tile::<V>()
    }
}

/// Columns of `C` per packed panel (the panel of a tile is `tile × KC` floats).
const KC: usize = 128;

/// Packs targets `[j0, j1)`, columns `[k0, k0 + kc)` into `panel` as
/// `[target vector][k][lane]` (targets past `j1` are zero), so that the score kernel loads
/// one vector of targets per column. Whole `LANES × LANES` blocks go through register
/// transposes ([`F32x::transpose`]); the last `kc mod LANES` columns one by one.
///
/// # Safety
/// `V`'s CPU requirement; `[j0, j1)` are target rows of `p`, at most `tile` of them;
/// `k0 + kc <= C`; `panel` holds `tile × kc` floats.
#[inline(always)]
unsafe fn pack_panel<V: F32x>(
    p: &NceProblem<'_>,
    targets: std::ops::Range<usize>,
    k0: usize,
    kc: usize,
    tile: usize,
    panel: &mut [f32],
) {
    const ZEROS: [f32; 16] = [0.0; 16];
    let (j0, j1) = (targets.start, targets.end);
    let lanes = V::LANES;
    let whole = kc - kc % lanes;
    for jv in 0..tile / lanes {
        let base = jv * kc * lanes;
        let row = |lane: usize| {
            let j = j0 + jv * lanes + lane;
            (j < j1).then(|| p.a_row(j))
        };
        let mut k = 0;
        while k < whole {
            // SAFETY: V's CPU requirement is the caller's; each source reads `lanes` floats
            // at `k0 + k + lanes <= C` of its row (or the zero block, never advanced), and
            // destination row `q` is `panel[base + (k + q)·lanes ..][..lanes]`, inside the
            // panel's `tile × kc` floats.
            unsafe {
                let src: [*const f32; 16] =
                    std::array::from_fn(|q| match (q < lanes).then(|| row(q)).flatten() {
                        Some(r) => r.as_ptr().add(k0 + k),
                        None => ZEROS.as_ptr(),
                    });
                let pp = panel.as_mut_ptr();
                let dst: [*mut f32; 16] =
                    std::array::from_fn(|q| pp.add(base + (k + q.min(lanes - 1)) * lanes));
                V::transpose(&src, &dst);
            }
            k += lanes;
        }
        for lane in 0..lanes {
            let r = row(lane);
            for kk in whole..kc {
                panel[base + kk * lanes + lane] = r.map_or(0.0, |r| r[k0 + kk]);
            }
        }
    }
}

/// `s_r[0..2L] (+)= Σ_k z_r[k] · panel[k][0..2L]` for `RG` rows and two target vectors
/// (`a0`, `a1` point at the two vectors' columns in the panel). Outer-product form: one
/// broadcast of `z_r[k]` feeds two fused multiply-adds, and no horizontal sums are needed.
///
/// # Safety
/// `V`'s CPU requirement; `z[r]` valid for `kc` reads, `a0`/`a1` for `kc · LANES`, `s[r]`
/// for `2 · LANES` reads and writes.
#[inline(always)]
unsafe fn gemm_tile<V: F32x, const RG: usize>(
    z: [*const f32; RG],
    a0: *const f32,
    a1: *const f32,
    kc: usize,
    s: [*mut f32; RG],
    first: bool,
) {
    let l = V::LANES;
    // SAFETY: the caller's guarantees.
    unsafe {
        let mut acc = [[V::zero(); 2]; RG];
        if !first {
            for r in 0..RG {
                acc[r][0] = V::load(s[r]);
                acc[r][1] = V::load(s[r].add(l));
            }
        }
        for k in 0..kc {
            let v0 = V::load(a0.add(k * l));
            let v1 = V::load(a1.add(k * l));
            for r in 0..RG {
                let zb = V::splat(*z[r].add(k));
                acc[r][0] = zb.fma(v0, acc[r][0]);
                acc[r][1] = zb.fma(v1, acc[r][1]);
            }
        }
        for r in 0..RG {
            acc[r][0].store(s[r]);
            acc[r][1].store(s[r].add(l));
        }
    }
}

/// Rows per register block of the packed kernels (16 accumulators on 32-register ISAs).
#[inline(always)]
fn row_group<V: F32x>() -> usize {
    if V::LANES >= 16 || V::LANES == 4 {
        8
    } else {
        4
    }
}

/// Most rows per call of [`clean_rows`] and [`score_tile_packed`] (the dispatcher's slabs are
/// no larger): the slab's scores (`MB × tile` floats, 512 KiB on AVX-512) stay in L2 while
/// every `KC` panel of the tile streams past them, and a thread's scratch stays near 1 MiB.
pub(crate) const MB: usize = 512;

/// Scores `S[r][j] = (z_r · a_j)/t − b_j` of `rows × [j0, j1)` into `s` (row stride
/// `tile`). Each `KC`-column chunk of the tile's targets is packed into `panel` just
/// before use (a `tile × KC` panel stays in L2) and reused by every row.
///
/// # Safety
/// `V`'s CPU requirement; `rows` are valid logit rows, at most [`MB`] of them;
/// `tile` a multiple of `2 · LANES`, `j1 − j0 <= tile`; `s` holds `rows.len() × tile` floats
/// and `panel` `tile × min(KC, C)`.
#[inline(always)]
unsafe fn score_tile_packed<V: F32x>(
    p: &NceProblem<'_>,
    rows: &[usize],
    j0: usize,
    j1: usize,
    tile: usize,
    s: &mut [f32],
    panel: &mut [f32],
) {
    let (c, l) = (p.c, V::LANES);
    let rg = row_group::<V>();
    assert!(rows.len() <= MB);
    // SAFETY: V's CPU requirement is the caller's; all pointers index the packed chunk of
    // `tile × kc` floats, logit rows of `c` floats at offset `k0 + kc <= c`, and score rows
    // of `tile` floats.
    unsafe {
        let nr = rows.len();
        let mut k0 = 0;
        while k0 < c {
            let kc = (c - k0).min(KC);
            pack_panel::<V>(p, j0..j1, k0, kc, tile, &mut panel[..tile * kc]);
            let chunk = panel.as_ptr();
            let first = k0 == 0;
            for jp in 0..tile / (2 * l) {
                let a0 = chunk.add(2 * jp * kc * l);
                let a1 = chunk.add((2 * jp + 1) * kc * l);
                let col = 2 * jp * l;
                let mut r = 0;
                while r < nr {
                    if rg == 8 && nr - r >= 8 {
                        let zp: [*const f32; 8] =
                            std::array::from_fn(|q| p.z_row(rows[r + q]).as_ptr().add(k0));
                        let sp: [*mut f32; 8] =
                            std::array::from_fn(|q| s.as_mut_ptr().add((r + q) * tile + col));
                        gemm_tile::<V, 8>(zp, a0, a1, kc, sp, first);
                        r += 8;
                    } else if nr - r >= 4 {
                        let zp: [*const f32; 4] =
                            std::array::from_fn(|q| p.z_row(rows[r + q]).as_ptr().add(k0));
                        let sp: [*mut f32; 4] =
                            std::array::from_fn(|q| s.as_mut_ptr().add((r + q) * tile + col));
                        gemm_tile::<V, 4>(zp, a0, a1, kc, sp, first);
                        r += 4;
                    } else {
                        let zp = [p.z_row(rows[r]).as_ptr().add(k0)];
                        let sp = [s.as_mut_ptr().add(r * tile + col)];
                        gemm_tile::<V, 1>(zp, a0, a1, kc, sp, first);
                        r += 1;
                    }
                }
            }
            k0 += kc;
        }
        for r in 0..rows.len() {
            for j in j0..j1 {
                let v = &mut s[r * tile + (j - j0)];
                *v = *v * p.inv_t - p.b[j];
            }
        }
    }
}

/// One block of clean rows (all logits finite): losses into `loss`, and when `grad` is given
/// the gradient rows (`grad[r]` for `rows[r]`). Returns each row's log-sum-exp in `lse`.
///
/// # Safety
/// `V`'s CPU requirement; `rows` are valid and hold only finite logits.
#[inline(always)]
unsafe fn clean_rows<V: F32x>(
    p: &NceProblem<'_>,
    rows: &[usize],
    loss: &mut [f32],
    lse: &mut [f32],
    grad: Option<&mut [&mut [f32]]>,
) {
    let (c, m) = (p.c, p.m);
    let nr = rows.len();
    let tile = forward_tile::<V>(p);
    let rg = row_group::<V>();
    let panel_len = tile * KC.min(c);
    // The bf16 products also need each row's probabilities as bf16 pairs and the tile's
    // targets paired for the accumulator product.
    let (pairs_len, pair_panel_len) = if p.bf16.is_some() {
        (nr * tile / 2, tile / 2 * c)
    } else {
        (0, 0)
    };
    // The f32 accumulator product reads the tile's targets from a packed `tile × KC` panel.
    let apanel_len = if p.bf16.is_some() { 0 } else { tile * KC };
    let mut scratch = super::take_scratch(nr * tile + panel_len + pairs_len + pair_panel_len + apanel_len);
    let (s, rest) = scratch.split_at_mut(nr * tile);
    let (panel, rest) = rest.split_at_mut(panel_len);
    let (pairs, rest) = rest.split_at_mut(pairs_len);
    let (pair_panel, apanel) = rest.split_at_mut(pair_panel_len);
    let apanel = &mut apanel[..apanel_len];
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (&pairs, &pair_panel); // only the x86-64 bf16 products use them
    let mut mx = vec![f32::NEG_INFINITY; nr];
    let mut sum = vec![0.0f32; nr];
    // The accumulators O_i = Σ_j P_ij a_j live in the caller's gradient rows (no extra N × C
    // memory); the first tile's products write them (no zero fill, which would cost a pass
    // over the rows; validation guarantees `M >= offset + N >= 1`, so there is a first
    // tile), and they are finished in place at the end.
    debug_assert!(m > 0);
    let optrs: Vec<*mut f32> = match grad {
        Some(g) => g.iter_mut().map(|row| row.as_mut_ptr()).collect(),
        None => Vec::new(),
    };
    let want_grad = !optrs.is_empty();
    // SAFETY: V's CPU requirement is the caller's; tiles and rows are in range; every pointer
    // in `optrs` is the start of a distinct gradient row of `c` floats borrowed for this call.
    unsafe {
        let mut j0 = 0;
        while j0 < m {
            let j1 = (j0 + tile).min(m);
            let w = j1 - j0;
            #[cfg(target_arch = "x86_64")]
            if let Some(d) = &p.bf16 {
                // SAFETY: `bf16` is only set when the backend is AVX-512 (so `tile` is 256)
                // and the CPU has AVX-512 BF16 (`dispatch`).
                super::infonce_bf16::score_tile(p, d, rows, (j0, j1), tile, s, panel);
            } else {
                score_tile_packed::<V>(p, rows, j0, j1, tile, s, panel);
            }
            #[cfg(not(target_arch = "x86_64"))]
            score_tile_packed::<V>(p, rows, j0, j1, tile, s, panel);
            for r in 0..nr {
                let srow = &mut s[r * tile..r * tile + w];
                let tmax = srow.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let new_m = mx[r].max(tmax);
                let alpha = if mx[r] == f32::NEG_INFINITY {
                    0.0
                } else {
                    (mx[r] - new_m).exp()
                };
                let mut tsum = 0.0f32;
                exp_shift::<V>(srow, new_m, &mut tsum);
                sum[r] = sum[r] * alpha + tsum;
                if want_grad && alpha != 1.0 && j0 > 0 {
                    scale_row::<V>(std::slice::from_raw_parts_mut(optrs[r], c), alpha);
                }
                mx[r] = new_m;
            }
            #[cfg(target_arch = "x86_64")]
            if let (true, Some(d)) = (want_grad, &p.bf16) {
                use super::infonce_bf16 as bf;
                // SAFETY: as for the scores; `pairs` holds `nr × tile/2` and `pair_panel`
                // `tile/2 × c` floats; every `optrs` row is a distinct row of `c` floats.
                bf::pack_pair_panel(d, j0, w, (c, KC), pair_panel);
                let w2 = w.div_ceil(2);
                for r in 0..nr {
                    bf::round_pairs(
                        &s[r * tile..r * tile + w],
                        &mut pairs[r * tile / 2..r * tile / 2 + w2],
                    );
                }
                let prow = |r: usize| &pairs[r * tile / 2..r * tile / 2 + w2];
                for cb in (0..c).step_by(KC) {
                    let ce = (cb + KC).min(c);
                    let blk = pair_panel.as_ptr().add(cb * w2);
                    let mut r = 0;
                    while r < nr {
                        if nr - r >= 8 {
                            let o = std::array::from_fn(|q| optrs[r + q]);
                            bf::axpy_tile::<8>(
                                o,
                                std::array::from_fn(|q| prow(r + q)),
                                blk,
                                w2,
                                (cb, ce),
                                j0 == 0,
                            );
                            r += 8;
                        } else {
                            bf::axpy_tile::<1>([optrs[r]], [prow(r)], blk, w2, (cb, ce), j0 == 0);
                            r += 1;
                        }
                    }
                }
                j0 = j1;
                continue;
            }
            if want_grad {
                let aptrs: Vec<*const f32> = (j0..j1).map(|j| p.a_row(j).as_ptr()).collect();
                let prow = |r: usize| &s[r * tile..r * tile + w];
                // Column blocks of `KC`: the tile's `w × KC` block of targets, packed, stays in
                // L2 while every row of the slab passes over it.
                for cb in (0..c).step_by(KC) {
                    let ce = (cb + KC).min(c);
                    let cw = ce - cb;
                    pack_axpy_panel::<V>(&aptrs, cb, cw, apanel);
                    let ap = apanel.as_ptr();
                    let mut r = 0;
                    while r < nr {
                        if rg == 8 && nr - r >= 8 {
                            // The next group's accumulator block, one address per cache line
                            // (with C = 10⁴ the slab's accumulators outgrow the caches).
                            let mut pf = [std::ptr::null::<f32>(); 64];
                            let mut npf = 0;
                            for &o in &optrs[r + 8..nr.min(r + 16)] {
                                let mut col = cb;
                                while col < ce && npf < pf.len() {
                                    pf[npf] = o.add(col);
                                    npf += 1;
                                    col += 16;
                                }
                            }
                            axpy_packed::<V, 8>(
                                std::array::from_fn(|q| optrs[r + q].add(cb)),
                                std::array::from_fn(|q| prow(r + q)),
                                ap,
                                (w, cw),
                                j0 == 0,
                                &pf[..npf],
                            );
                            r += 8;
                        } else if nr - r >= 4 {
                            axpy_packed::<V, 4>(
                                std::array::from_fn(|q| optrs[r + q].add(cb)),
                                std::array::from_fn(|q| prow(r + q)),
                                ap,
                                (w, cw),
                                j0 == 0,
                                &[],
                            );
                            r += 4;
                        } else {
                            axpy_packed::<V, 1>([optrs[r].add(cb)], [prow(r)], ap, (w, cw), j0 == 0, &[]);
                            r += 1;
                        }
                    }
                }
            }
            j0 = j1;
        }
        for (r, &i) in rows.iter().enumerate() {
            let pos = p.p0 + i;
            let s_pos = dot::<V>(p.z_row(i), p.a_row(pos)) * p.inv_t - p.b[pos];
            let ln_l = sum[r].ln();
            loss[r] = (mx[r] - s_pos) + ln_l;
            lse[r] = mx[r] + ln_l;
            if want_grad {
                let k = p.scale.get(i) * p.inv_t;
                let g = std::slice::from_raw_parts_mut(optrs[r], c);
                finish_grad_in_place::<V>(g, p.a_row(pos), k / sum[r], -k);
            }
        }
    }
    super::give_scratch(scratch);
}

/// `x = exp(x − m)` over a row, adding the results into `sum`.
///
/// # Safety
/// `V`'s CPU requirement.
#[inline(always)]
pub(crate) unsafe fn exp_shift<V: F32x>(x: &mut [f32], m: f32, sum: &mut f32) {
    let (n, l) = (x.len(), V::LANES);
    let p = x.as_mut_ptr();
    // SAFETY: full vectors below n, then one partial vector.
    unsafe {
        let vm = V::splat(m);
        let mut acc = V::zero();
        let mut k = 0;
        while k + l <= n {
            let e = V::load(p.add(k)).sub(vm).exp();
            e.store(p.add(k));
            acc = acc.add(e);
            k += l;
        }
        if k < n {
            let e = V::load_partial(p.add(k), n - k, f32::NEG_INFINITY).sub(vm).exp();
            e.store_partial(p.add(k), n - k);
            acc = acc.add(e);
        }
        *sum = acc.hsum();
    }
}

/// Whether every value of `x` is finite: `fma(v, 0, acc)` stays 0 until a `±∞` or NaN
/// makes it NaN (two independent chains).
///
/// # Safety
/// `V`'s CPU requirement.
#[inline(always)]
unsafe fn all_finite<V: F32x>(x: &[f32]) -> bool {
    let (n, l) = (x.len(), V::LANES);
    let p = x.as_ptr();
    // SAFETY: full vectors below n, then one partial vector.
    unsafe {
        let zero = V::zero();
        let (mut a0, mut a1) = (zero, zero);
        let mut k = 0;
        while k + 2 * l <= n {
            a0 = V::load(p.add(k)).fma(zero, a0);
            a1 = V::load(p.add(k + l)).fma(zero, a1);
            k += 2 * l;
        }
        while k < n {
            let r = (n - k).min(l);
            a0 = V::load_partial(p.add(k), r, 0.0).fma(zero, a0);
            k += r;
        }
        !a0.add(a1).is_nan_any()
    }
}

/// `Σ x_k y_k`.
///
/// # Safety
/// `V`'s CPU requirement; `x` and `y` have the same length.
#[inline(always)]
pub(crate) unsafe fn dot<V: F32x>(x: &[f32], y: &[f32]) -> f32 {
    let (n, l) = (x.len(), V::LANES);
    let (xp, yp) = (x.as_ptr(), y.as_ptr());
    // SAFETY: the caller's guarantees; full vectors below n, then one partial vector.
    unsafe {
        let (mut a0, mut a1) = (V::zero(), V::zero());
        let mut k = 0;
        while k + 2 * l <= n {
            a0 = V::load(xp.add(k)).fma(V::load(yp.add(k)), a0);
            a1 = V::load(xp.add(k + l)).fma(V::load(yp.add(k + l)), a1);
            k += 2 * l;
        }
        while k < n {
            let r = (n - k).min(l);
            a0 = V::load_partial(xp.add(k), r, 0.0).fma(V::load_partial(yp.add(k), r, 0.0), a0);
            k += r;
        }
        a0.add(a1).hsum()
    }
}

/// `g = g·c1 + a·c2` in place.
///
/// # Safety
/// `V`'s CPU requirement; `g` and `a` have the same length.
#[inline(always)]
unsafe fn finish_grad_in_place<V: F32x>(g: &mut [f32], a: &[f32], c1: f32, c2: f32) {
    let (n, l) = (g.len(), V::LANES);
    let (gp, ap) = (g.as_mut_ptr(), a.as_ptr());
    // SAFETY: full vectors below n, then one partial vector.
    unsafe {
        let (v1, v2) = (V::splat(c1), V::splat(c2));
        let mut k = 0;
        while k + l <= n {
            V::load(gp.add(k))
                .fma(v1, V::load(ap.add(k)).mul(v2))
                .store(gp.add(k));
            k += l;
        }
        if k < n {
            let r = n - k;
            V::load_partial(gp.add(k), r, 0.0)
                .fma(v1, V::load_partial(ap.add(k), r, 0.0).mul(v2))
                .store_partial(gp.add(k), r);
        }
    }
}

/// `a·g` with `0·(±∞) = 0`.
#[inline(always)]
pub(crate) fn mul0(a: f32, g: f32) -> f32 {
    if a == 0.0 && g.is_infinite() {
        0.0
    } else {
        a * g
    }
}

/// A row with a non-finite logit, evaluated plainly with the reference's conventions:
/// `0·(−∞) = 0`; NaN or `+∞` make the row NaN; no finite candidate gives `+∞` and zero
/// probabilities. Writes the gradient row if given; returns `(loss, lse)`.
fn dirty_row(p: &NceProblem<'_>, i: usize, g: Option<&mut [f32]>, scores: &mut Vec<f32>) -> (f32, f32) {
    let c = p.c;
    let z = p.z_row(i);
    let k = p.scale.get(i) * p.inv_t;
    if z.iter().any(|x| x.is_nan() || *x == f32::INFINITY) {
        if let Some(g) = g {
            g.fill(f32::NAN);
        }
        return (f32::NAN, f32::NAN);
    }
    let gi: Vec<f32> = z
        .iter()
        .zip(p.log_eta)
        .map(|(&x, &le)| x * p.inv_t - le)
        .collect();
    scores.clear();
    scores.extend((0..p.m).map(|j| p.a_row(j).iter().zip(&gi).map(|(&a, &g)| mul0(a, g)).sum::<f32>()));
    let mx = scores.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let pos = p.p0 + i;
    let (loss, lse, sum) = if mx == f32::NEG_INFINITY {
        (f32::INFINITY, f32::NEG_INFINITY, 0.0)
    } else {
        let sum: f32 = scores.iter().map(|s| (s - mx).exp()).sum();
        ((mx - scores[pos]) + sum.ln(), mx + sum.ln(), sum)
    };
    if let Some(g) = g {
        g.fill(0.0);
        if sum > 0.0 {
            for (j, &s) in scores.iter().enumerate() {
                let w = (s - mx).exp() / sum;
                if w != 0.0 {
                    for (o, &a) in g.iter_mut().zip(p.a_row(j)) {
                        *o += w * a;
                    }
                }
            }
        }
        for (o, &a) in g.iter_mut().zip(p.a_row(pos)) {
            *o = (*o - a) * k;
        }
    }
    debug_assert_eq!(scores.len(), p.m);
    let _ = c;
    (loss, lse)
}

/// Rows `rows` of the problem: losses into `loss` (one per row), the log-sum-exp of each row
/// into `lse`, and gradient rows into `grad` (row `r` at `r · g_stride`). Returns the sum of
/// the losses.
///
/// # Safety
/// `V`'s CPU requirement; the problem was validated; `loss` and `lse` hold `rows.len()`
/// floats; `grad`, if given, holds the block's rows at stride `g_stride`.
#[inline(always)]
unsafe fn nce_block_generic<V: F32x>(
    p: &NceProblem<'_>,
    rows: std::ops::Range<usize>,
    loss: &mut [f32],
    lse: &mut [f32],
    grad: Option<(&mut [f32], usize)>,
) -> f64 {
    let c = p.c;
    let r0 = rows.start;
    let all: Vec<usize> = rows.clone().collect();
    // A plain loop, not `partition` with a closure: a closure is compiled without the entry
    // point's target features and the vector intrinsics inside would not inline.
    let (mut clean, mut dirty) = (Vec::with_capacity(all.len()), Vec::new());
    for &i in &all {
        // SAFETY: V's CPU requirement is the caller's.
        if unsafe { all_finite::<V>(p.z_row(i)) } {
            clean.push(i);
        } else {
            dirty.push(i);
        }
    }
    let mut grows: Vec<&mut [f32]> = match grad {
        Some((g, gs)) => g
            .chunks_mut(gs)
            .take(all.len())
            .map(|row| &mut row[..c])
            .collect(),
        None => Vec::new(),
    };
    let want_grad = !grows.is_empty();
    let mut scores = Vec::new();
    for &i in &dirty {
        let r = i - r0;
        let g = if want_grad { Some(&mut *grows[r]) } else { None };
        let (l, e) = dirty_row(p, i, g, &mut scores);
        loss[r] = l;
        lse[r] = e;
    }
    if !clean.is_empty() {
        let mut cl = vec![0.0f32; clean.len()];
        let mut ce = vec![0.0f32; clean.len()];
        if want_grad {
            let mut taken: Vec<Option<&mut [f32]>> = grows.into_iter().map(Some).collect();
            let mut cg: Vec<&mut [f32]> = clean.iter().map(|&i| taken[i - r0].take().unwrap()).collect();
            // SAFETY: V's CPU requirement is the caller's; `clean` rows are finite.
            unsafe { clean_rows::<V>(p, &clean, &mut cl, &mut ce, Some(&mut cg)) };
        } else {
            // SAFETY: as above.
            unsafe { clean_rows::<V>(p, &clean, &mut cl, &mut ce, None) };
        }
        for (k, &i) in clean.iter().enumerate() {
            loss[i - r0] = cl[k];
            lse[i - r0] = ce[k];
        }
    }
    loss.iter().map(|&l| l as f64).sum()
}

stamp! {
    /// Rows of a dense InfoNCE problem on the backend `isa`; returns the sum of their losses.
    pub(crate) fn nce_block(
        p: &NceProblem<'_>,
        rows: std::ops::Range<usize>,
        loss: &mut [f32],
        lse: &mut [f32],
        grad: Option<(&mut [f32], usize)>,
    ) -> f64 = nce_block_generic;
}

/// Gradient with respect to targets `[j0, j1)`:
/// `dA_j = Σ_i scale_i (P_ij − [j = p0 + i]) g_i` with `P_ij = exp(S_ij − lse_i)` and
/// `g_i = z_i/t − log η`, written to `out = (data, stride)` (row `j − j0` at `stride`).
/// `rows = (clean, dirty)` splits the logit rows by whether all their logits are finite; the
/// caller handles the case where some row holds NaN or `+∞` (every entry is then NaN).
///
/// # Safety
/// `V`'s CPU requirement; the problem was validated; `lse` holds every row's log-sum-exp;
/// `j1 − j0 <= packed_tile::<V>()`.
#[inline(always)]
unsafe fn grad_targets_generic<V: F32x>(
    p: &NceProblem<'_>,
    rows: (&[usize], &[usize]),
    lse: &[f32],
    targets: std::ops::Range<usize>,
    out: (&mut [f32], usize),
) {
    let (clean, dirty) = rows;
    let (j0, j1) = (targets.start, targets.end);
    let (out, j_stride) = out;
    let c = p.c;
    let w = j1 - j0;
    for r in 0..w {
        out[r * j_stride..r * j_stride + c].fill(0.0);
    }
    let tile = packed_tile::<V>();
    let rb = MB;
    let (s_len, panel_len, g_len) = (rb * tile, tile * KC.min(c), rb * c);
    // `wcols` holds the weights transposed (target-major), `gpanel` a packed `rb × KC` block.
    let mut scratch = super::take_scratch(s_len + panel_len + g_len + tile * rb + rb * KC);
    let (s, rest) = scratch.split_at_mut(s_len);
    let (panel, rest) = rest.split_at_mut(panel_len);
    let (gbuf, rest) = rest.split_at_mut(g_len);
    let (wcols, gpanel) = rest.split_at_mut(tile * rb);
    // SAFETY: V's CPU requirement is the caller's; all rows and tiles are in range; the
    // output rows `j − j0` are distinct rows of `out`.
    unsafe {
        // Target sub-blocks no wider than the packed tile of this backend.
        for tb0 in (j0..j1).step_by(tile) {
            let tb1 = (tb0 + tile).min(j1);
            let w = tb1 - tb0;
            let jj_base = tb0 - j0;
            for chunk in clean.chunks(rb) {
                let nr = chunk.len();
                score_tile_packed::<V>(p, chunk, tb0, tb1, tile, s, panel);
                for (r, &i) in chunk.iter().enumerate() {
                    let sc = p.scale.get(i);
                    for jj in 0..w {
                        let j = tb0 + jj;
                        let mut v = (s[r * tile + jj] - lse[i]).exp() * sc;
                        if j == p.p0 + i {
                            v -= sc;
                        }
                        s[r * tile + jj] = v;
                    }
                    scaled_shift::<V>(p.z_row(i), p.inv_t, p.log_eta, &mut gbuf[r * c..(r + 1) * c]);
                }
                // dA_j += Σ_r W[r][j] g_r: rows of the output are targets, eight at a time; the
                // weights of target j are column j of W.
                let gptrs: Vec<*const f32> = (0..nr).map(|r| gbuf.as_ptr().add(r * c)).collect();
                for jj in 0..w {
                    for r in 0..nr {
                        wcols[jj * rb + r] = s[r * tile + jj];
                    }
                }
                // Columns in blocks of KC: the chunk's `nr × KC` block of g, packed once, stays
                // in L2 while every output row passes over it.
                for cb in (0..c).step_by(KC) {
                    let cw = (cb + KC).min(c) - cb;
                    pack_axpy_panel::<V>(&gptrs, cb, cw, gpanel);
                    let gp = gpanel.as_ptr();
                    let op = out.as_mut_ptr();
                    let wcol = |t: usize| &wcols[t * rb..t * rb + nr];
                    let mut jj = 0;
                    while jj < w {
                        if w - jj >= 8 {
                            axpy_packed::<V, 8>(
                                std::array::from_fn(|t| op.add((jj_base + jj + t) * j_stride + cb)),
                                std::array::from_fn(|t| wcol(jj + t)),
                                gp,
                                (nr, cw),
                                false,
                                &[],
                            );
                            jj += 8;
                        } else {
                            axpy_packed::<V, 1>(
                                [op.add((jj_base + jj) * j_stride + cb)],
                                [wcol(jj)],
                                gp,
                                (nr, cw),
                                false,
                                &[],
                            );
                            jj += 1;
                        }
                    }
                }
            }
        }
    }
    super::give_scratch(scratch);
    // Rows with masked logits: plain evaluation with 0·(−∞) = 0.
    let mut scores = Vec::new();
    for &i in dirty {
        let gi: Vec<f32> = p
            .z_row(i)
            .iter()
            .zip(p.log_eta)
            .map(|(&x, &le)| x * p.inv_t - le)
            .collect();
        scores.clear();
        scores.extend((0..p.m).map(|j| p.a_row(j).iter().zip(&gi).map(|(&a, &g)| mul0(a, g)).sum::<f32>()));
        let sc = p.scale.get(i);
        let pos = p.p0 + i;
        let rivals = scores
            .iter()
            .enumerate()
            .any(|(j, &s)| j != pos && s > f32::NEG_INFINITY);
        for j in j0..j1 {
            let pij = if lse[i] == f32::NEG_INFINITY {
                0.0
            } else {
                (scores[j] - lse[i]).exp()
            };
            let mut wgt = (pij - if j == pos { 1.0 } else { 0.0 }) * sc;
            // As in the reference: a weight that rounds to zero but is not zero exactly
            // (P_ij > 0 iff S_ij is finite; P_pos < 1 iff another candidate is) keeps its
            // sign, so a masked logit gives the infinite gradient the exact weight implies.
            let exact_nonzero = if j == pos {
                rivals
            } else {
                scores[j] > f32::NEG_INFINITY
            };
            if wgt == 0.0 && sc != 0.0 && exact_nonzero {
                wgt = f32::MIN_POSITIVE.copysign(if j == pos { -sc } else { sc });
            }
            for (o, &g) in out[(j - j0) * j_stride..(j - j0) * j_stride + c]
                .iter_mut()
                .zip(&gi)
            {
                *o += mul0(wgt, g);
            }
        }
    }
}

/// `g = z·inv_t − log η` over a row.
///
/// # Safety
/// `V`'s CPU requirement; all slices have the same length.
#[inline(always)]
pub(crate) unsafe fn scaled_shift<V: F32x>(z: &[f32], inv_t: f32, log_eta: &[f32], g: &mut [f32]) {
    let (n, l) = (z.len(), V::LANES);
    let (zp, ep, gp) = (z.as_ptr(), log_eta.as_ptr(), g.as_mut_ptr());
    // SAFETY: full vectors below n, then one partial vector.
    unsafe {
        let vt = V::splat(inv_t);
        let mut k = 0;
        while k + l <= n {
            V::load(zp.add(k))
                .mul(vt)
                .sub(V::load(ep.add(k)))
                .store(gp.add(k));
            k += l;
        }
        if k < n {
            let r = n - k;
            V::load_partial(zp.add(k), r, 0.0)
                .mul(vt)
                .sub(V::load_partial(ep.add(k), r, 0.0))
                .store_partial(gp.add(k), r);
        }
    }
}

stamp! {
    /// The target gradient of targets `[j0, j1)` on the backend `isa`.
    pub(crate) fn grad_targets(
        p: &NceProblem<'_>,
        rows: (&[usize], &[usize]),
        lse: &[f32],
        targets: std::ops::Range<usize>,
        out: (&mut [f32], usize),
    ) -> () = grad_targets_generic;
}
