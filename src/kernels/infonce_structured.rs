//! Soft-target InfoNCE with structured targets (hard labels, MixUp pairs, sparse rows): the
//! targets' structure turns the `O(N·M·C)` score product into gathers.
//!
//! Target `j` is a uniform floor `f_j` plus a few entries `(c_jk, w_jk)`, so with
//! `g_i = z_i/t − log η` and `G_i = Σ_c g_ic`:
//!
//! ```text
//! S_ij = f_j·G_i + Σ_k w_jk·g_{i,c_jk}                     (O(k) gathers per target)
//! Σ_j P_ij a_j = (Σ_j P_ij f_j)·1 + Σ_j Σ_k P_ij w_jk e_{c_jk}   (a fill and a scatter)
//! ```
//!
//! Rows go `LANES` at a time, one row per vector lane, so that every step is a contiguous
//! vector operation: `g` for the group is transposed to class-major order (register
//! transposes of `LANES × LANES` blocks), a target entry then costs one vector load of
//! `gT[c_jk]` and one multiply-add for all the group's rows, the `exp` pass runs over the
//! `M × LANES` scores, the gradient gathers `Σ w·P` per class from the class-sorted entries,
//! and a transpose writes it back into the rows. Cost `O(N·(C + M·k))`; scratch is
//! `LANES·(C + M)` floats per thread; no `N × M` matrix and no densified targets. Rows with a
//! non-finite logit (or score) are redone one by one with the reference's conventions
//! (`0·(±∞) = 0`, NaN or `+∞` logits give a NaN row, no finite candidate gives `+∞` and zero
//! probabilities).

use super::cross_entropy::RowScale;
use super::elem::KElem;
use super::infonce::{dot, exp_shift, mul0};
use super::stamp;
use crate::simd::F32x;

/// Structured targets flattened for the kernel: target `j` has floor `floor[j]` and entries
/// `class[k], weight[k]` for `k in start[j]..start[j + 1]`.
pub(crate) struct FlatTargets {
    pub floor: Vec<f32>,
    pub start: Vec<usize>,
    pub class: Vec<u32>,
    pub weight: Vec<f32>,
    /// The same entries grouped by class: class `c` receives `by_weight[k]` from target
    /// `by_target[k]` for `k in by_start[c]..by_start[c + 1]` (the gradient then gathers per
    /// class instead of scattering per target).
    pub by_start: Vec<usize>,
    pub by_target: Vec<u32>,
    pub by_weight: Vec<f32>,
}

impl FlatTargets {
    /// Flattens `m` rows of a structured form over `c` classes.
    pub(crate) fn new(s: &crate::targets::Structured<'_>, m: usize, c: usize) -> FlatTargets {
        let mut t = FlatTargets {
            floor: Vec::with_capacity(m),
            start: Vec::with_capacity(m + 1),
            class: Vec::new(),
            weight: Vec::new(),
            by_start: vec![0; c + 1],
            by_target: Vec::new(),
            by_weight: Vec::new(),
        };
        t.start.push(0);
        for j in 0..m {
            let (floor, entries) = s.row(j, c);
            t.floor.push(floor);
            for (cls, w) in entries.iter() {
                t.class.push(cls);
                t.weight.push(w);
            }
            t.start.push(t.class.len());
        }
        // Counting sort of the entries by class.
        for &cl in &t.class {
            t.by_start[cl as usize + 1] += 1;
        }
        for k in 0..c {
            t.by_start[k + 1] += t.by_start[k];
        }
        let mut fill = t.by_start.clone();
        t.by_target = vec![0; t.class.len()];
        t.by_weight = vec![0.0; t.class.len()];
        for j in 0..m {
            for k in t.start[j]..t.start[j + 1] {
                let cl = t.class[k] as usize;
                t.by_target[fill[cl]] = j as u32;
                t.by_weight[fill[cl]] = t.weight[k];
                fill[cl] += 1;
            }
        }
        t
    }

    #[inline(always)]
    fn entries(&self, j: usize) -> (&[u32], &[f32]) {
        let r = self.start[j]..self.start[j + 1];
        (&self.class[r.clone()], &self.weight[r])
    }
}

/// A validated structured InfoNCE problem on `f32` logits.
pub(crate) struct SnceProblem<'a, E = f32> {
    pub z: &'a [E],
    pub z_stride: usize,
    pub c: usize,
    pub inv_t: f32,
    pub log_eta: &'a [f32],
    pub targets: &'a FlatTargets,
    pub p0: usize,
    pub scale: RowScale<'a>,
}

/// Rows `rows` of the problem: losses into `loss`, gradient rows into `grad` (row `r` at
/// `r · stride`). Returns the sum of the losses.
///
/// Rows are taken `LANES` at a time, one row per vector lane: the group's `g` is transposed
/// to class-major (`gT[c]` holds class `c` of every row, register transposes of
/// `LANES × LANES` blocks), so each target entry costs one contiguous vector load and one
/// multiply-add for `LANES` rows at once; the `exp` pass and the per-class gradient gather
/// likewise, and the gradient is transposed back into the rows. Lanes never mix, so a row
/// with a non-finite `g` or score only spoils its own lane, which [`snce_row`] then redoes.
///
/// # Safety
/// `V`'s CPU requirement; the problem was validated (entry classes `< C`, positives `< M`).
#[inline(always)]
unsafe fn snce_block_generic<V: F32x, E: KElem>(
    p: &SnceProblem<'_, E>,
    rows: std::ops::Range<usize>,
    loss: &mut [f32],
    mut grad: Option<(&mut [E], usize)>,
) -> f64 {
    let (c, l) = (p.c, V::LANES);
    let t = p.targets;
    let m = t.floor.len();
    let r0 = rows.start;
    let mut total = 0.0f64;
    let mut scratch = super::take_scratch(c * l + m * l + c + m);
    let (gt, rest) = scratch.split_at_mut(c * l);
    let (st, rest) = rest.split_at_mut(m * l);
    let (g_row, rest) = rest.split_at_mut(c);
    let s_row = &mut rest[..m];
    // Destination of the transposed gradient for lanes without a row, and the widened block
    // of a transpose when the element type is not f32.
    let mut sink = [E::from_f32(0.0); 16];
    let mut wide = [0.0f32; 256];
    let c_full = c - c % l;
    let mut i0 = rows.start;
    while i0 < rows.end {
        let r = l.min(rows.end - i0);
        // Lanes `r..l` re-read the group's first row; their results are dropped.
        let mut z_rows: [&[E]; 16] = [&p.z[i0 * p.z_stride..i0 * p.z_stride + c]; 16];
        for (q, zr) in z_rows.iter_mut().enumerate().take(r) {
            *zr = &p.z[(i0 + q) * p.z_stride..(i0 + q) * p.z_stride + c];
        }
        // SAFETY: V's CPU requirement is the caller's. Bounds: every `z_rows[q]` holds `c`
        // floats and transposed blocks start at columns `cl ≤ c − l`; `gt` holds `c · l`
        // floats and `st` `m · l`; entry classes are `< c` and target indices `< m`
        // (validated), `start`/`by_start` offsets index `class`/`weight`/`by_target`/
        // `by_weight`, positives `p0 + i < m`; gradient rows `i − r0` of `buf` hold `c`, and
        // lanes without a row write their transposed block into `sink` (16 floats) unshifted.
        unsafe {
            // 1. gT = (z/t − log η) transposed, its row sums G (f64 across blocks of 64
            //    classes), and a finiteness flag (`fma(v, 0, bad)` turns NaN on ±∞ or NaN).
            let (vt, zero) = (V::splat(p.inv_t), V::zero());
            let mut src = [std::ptr::null::<f32>(); 16];
            let mut dst = [std::ptr::null_mut::<f32>(); 16];
            for cl in (0..c_full).step_by(l) {
                for q in 0..l {
                    src[q] = if E::IS_F32 {
                        // (E is f32: the cast is the identity.)
                        z_rows[q].as_ptr().add(cl).cast()
                    } else {
                        E::load::<V>(z_rows[q].as_ptr().add(cl)).store(wide.as_mut_ptr().add(q * l));
                        wide.as_ptr().add(q * l)
                    };
                    dst[q] = gt.as_mut_ptr().add((cl + q) * l);
                }
                V::transpose(&src, &dst);
            }
            for cl in c_full..c {
                for (q, zr) in z_rows.iter().enumerate().take(l) {
                    *gt.get_unchecked_mut(cl * l + q) = zr.get_unchecked(cl).to_f32();
                }
            }
            let (mut bad, mut part) = (zero, zero);
            let mut big_g = [0.0f64; 16];
            let mut lanes = [0.0f32; 16];
            for cl in 0..c {
                let v = V::load(gt.as_ptr().add(cl * l))
                    .mul(vt)
                    .sub(V::splat(*p.log_eta.get_unchecked(cl)));
                v.store(gt.as_mut_ptr().add(cl * l));
                bad = v.fma(zero, bad);
                part = part.add(v);
                if cl % 64 == 63 || cl + 1 == c {
                    part.store(lanes.as_mut_ptr());
                    for q in 0..l {
                        big_g[q] += lanes[q] as f64;
                    }
                    part = zero;
                }
            }
            for q in 0..l {
                lanes[q] = big_g[q] as f32;
            }
            let gv = V::load(lanes.as_ptr());
            // 2. Scores S_T[j] for the group's rows and their running maximum.
            let mut mx = V::splat(f32::NEG_INFINITY);
            for j in 0..m {
                let (lo, hi) = (*t.start.get_unchecked(j), *t.start.get_unchecked(j + 1));
                let mut v = V::splat(*t.floor.get_unchecked(j)).mul(gv);
                for k in lo..hi {
                    let cl = *t.class.get_unchecked(k) as usize;
                    v = V::splat(*t.weight.get_unchecked(k)).fma(V::load(gt.as_ptr().add(cl * l)), v);
                }
                v.store(st.as_mut_ptr().add(j * l));
                mx = mx.max(v);
            }
            let mut s_pos = [0.0f32; 16];
            for (q, sp) in s_pos.iter_mut().enumerate().take(r) {
                *sp = *st.get_unchecked((p.p0 + i0 + q) * l + q);
            }
            // 3. exp(S − max) in place, its sum, and Σ_j f_j·e_j for the floor term.
            let (mut sum, mut fb) = (zero, zero);
            for j in 0..m {
                let e = V::load(st.as_ptr().add(j * l)).sub(mx).exp();
                e.store(st.as_mut_ptr().add(j * l));
                sum = sum.add(e);
                fb = V::splat(*t.floor.get_unchecked(j)).fma(e, fb);
            }
            let (mut mx_l, mut sum_l, mut bad_l) = ([0.0f32; 16], [0.0f32; 16], [0.0f32; 16]);
            mx.store(mx_l.as_mut_ptr());
            sum.store(sum_l.as_mut_ptr());
            bad.store(bad_l.as_mut_ptr());
            // Lanes whose g, G or scores are not all finite are redone row by row below (a
            // NaN score makes its lane's sum NaN, whatever `max` did with it).
            let mut dirty = [false; 16];
            for q in 0..r {
                if bad_l[q] == 0.0 && lanes[q].is_finite() && mx_l[q].is_finite() && !sum_l[q].is_nan() {
                    let row_loss = (mx_l[q] - s_pos[q]) + sum_l[q].ln();
                    loss[i0 + q - r0] = row_loss;
                    total += row_loss as f64;
                } else {
                    dirty[q] = true;
                }
            }
            // 4. Gradient rows: base + kp·Σ_{entries of class c} w·e_target, gathered per
            //    class into gT (no longer needed), then transposed back into the rows.
            if let Some((buf, stride)) = grad.as_mut() {
                let (mut kl, mut base_l) = ([0.0f32; 16], [0.0f32; 16]);
                for q in 0..r {
                    let i = i0 + q;
                    kl[q] = p.scale.get(i) * p.inv_t;
                    base_l[q] = -kl[q] * *t.floor.get_unchecked(p.p0 + i);
                }
                let kp = V::load(kl.as_ptr()).div(sum);
                let basev = fb.fma(kp, V::load(base_l.as_ptr()));
                for cl in 0..c {
                    let (lo, hi) = (*t.by_start.get_unchecked(cl), *t.by_start.get_unchecked(cl + 1));
                    let mut acc = zero;
                    for q in lo..hi {
                        let j = *t.by_target.get_unchecked(q) as usize;
                        acc =
                            V::splat(*t.by_weight.get_unchecked(q)).fma(V::load(st.as_ptr().add(j * l)), acc);
                    }
                    acc.fma(kp, basev).store(gt.as_mut_ptr().add(cl * l));
                }
                // The positive's entries last, in f32, before the one rounding.
                for (q, &kq) in kl.iter().enumerate().take(r) {
                    let (pcls, pw) = t.entries(p.p0 + i0 + q);
                    for (&pc, &wk) in pcls.iter().zip(pw) {
                        *gt.get_unchecked_mut(pc as usize * l + q) -= kq * wk;
                    }
                }
                let base_ptr = buf.as_mut_ptr();
                let mut out_rows = [sink.as_mut_ptr(); 16];
                for (q, o) in out_rows.iter_mut().enumerate().take(r) {
                    *o = base_ptr.add((i0 + q - r0) * *stride);
                }
                for cl in (0..c_full).step_by(l) {
                    for k in 0..l {
                        src[k] = gt.as_ptr().add((cl + k) * l);
                        dst[k] = if E::IS_F32 {
                            // (E is f32: the cast is the identity.)
                            (if k < r { out_rows[k].add(cl) } else { out_rows[k] }).cast()
                        } else {
                            wide.as_mut_ptr().add(k * l)
                        };
                    }
                    V::transpose(&src, &dst);
                    if !E::IS_F32 {
                        for (q, &o) in out_rows.iter().enumerate().take(r) {
                            E::store::<V>(V::load(wide.as_ptr().add(q * l)), o.add(cl));
                        }
                    }
                }
                for (q, &o) in out_rows.iter().enumerate().take(r) {
                    let out = std::slice::from_raw_parts_mut(o, c);
                    for (cl, o) in out.iter_mut().enumerate().skip(c_full) {
                        *o = E::from_f32(*gt.get_unchecked(cl * l + q));
                    }
                }
            }
            for q in (0..r).filter(|&q| dirty[q]) {
                let i = i0 + q;
                let out = grad
                    .as_mut()
                    .map(|(buf, stride)| &mut buf[(i - r0) * *stride..(i - r0) * *stride + c]);
                let row_loss = snce_row::<V, E>(p, i, g_row, s_row, out);
                loss[i - r0] = row_loss;
                total += row_loss as f64;
            }
        }
        i0 += r;
    }
    super::give_scratch(scratch);
    total
}

/// One row of the problem, plainly: `g` and `G`, the `M` scores by gathers, one `exp` pass,
/// the loss, and the gradient row (if `out`) from the floor term and a per-class gather. Keeps
/// the reference's conventions for non-finite logits. Returns the row's loss.
///
/// # Safety
/// `V`'s CPU requirement; the problem was validated; `g` holds `C` floats and `s` `M`.
#[inline(always)]
unsafe fn snce_row<V: F32x, E: KElem>(
    p: &SnceProblem<'_, E>,
    i: usize,
    g: &mut [f32],
    s: &mut [f32],
    out: Option<&mut [E]>,
) -> f32 {
    let c = p.c;
    let t = p.targets;
    let z = &p.z[i * p.z_stride..i * p.z_stride + c];
    let k = p.scale.get(i) * p.inv_t;
    let pos = p.p0 + i;
    if z.iter()
        .any(|x| x.to_f32().is_nan() || x.to_f32() == f32::INFINITY)
    {
        if let Some(out) = out {
            out.fill(E::from_f32(f32::NAN));
        }
        return f32::NAN;
    }
    // SAFETY: V's CPU requirement is the caller's; `g` and `z` hold `c` floats, `s` `m`;
    // entry classes are below `c` (validated), `start` has `m + 1` offsets into `class`
    // and `weight`, so the unchecked accesses are in bounds.
    let (row_loss, sum, mx) = unsafe {
        for ((gk, zk), &le) in g.iter_mut().zip(z).zip(p.log_eta) {
            *gk = zk.to_f32() * p.inv_t - le;
        }
        let big_g = g.iter().map(|&x| x as f64).sum::<f64>() as f32;
        for (j, sj) in s.iter_mut().enumerate() {
            let (cls, w) = t.entries(j);
            let mut v = mul0(t.floor[j], big_g);
            for (&cl, &wk) in cls.iter().zip(w) {
                v += mul0(wk, *g.get_unchecked(cl as usize));
            }
            *sj = v;
        }
        let s_pos = s[pos];
        let mx = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        if mx == f32::NEG_INFINITY {
            (f32::INFINITY, 0.0, mx)
        } else {
            let mut sum = 0.0f32;
            exp_shift::<V>(s, mx, &mut sum);
            ((mx - s_pos) + sum.ln(), sum, mx)
        }
    };
    if let Some(out_e) = out {
        // The gradient row in f32 (`g` is free again), rounded once at the end.
        let out = &mut *g;
        let (pcls, pw) = t.entries(pos);
        if mx == f32::NEG_INFINITY {
            // No finite candidate: all probabilities are zero.
            out.fill(-k * t.floor[pos]);
        } else {
            let kp = k / sum;
            // SAFETY: `s` (now the unnormalised probabilities) and the floors hold `m`.
            let f_bar = unsafe { dot::<V>(s, &t.floor) } * kp;
            let base = f_bar - k * t.floor[pos];
            for (cl, o) in out.iter_mut().enumerate() {
                let (lo, hi) = (t.by_start[cl], t.by_start[cl + 1]);
                let mut acc = 0.0f32;
                for q in lo..hi {
                    // SAFETY: `by_target` holds target indices below `m = s.len()`, and
                    // `q` lies in `by_target`/`by_weight` (built together).
                    acc += unsafe {
                        s.get_unchecked(*t.by_target.get_unchecked(q) as usize) * t.by_weight.get_unchecked(q)
                    };
                }
                *o = base + acc * kp;
            }
        }
        // The positive's entries last, in f32.
        for (&cl, &wk) in pcls.iter().zip(pw) {
            out[cl as usize] -= k * wk;
        }
        for (o, &v) in out_e.iter_mut().zip(out.iter()) {
            *o = E::from_f32(v);
        }
    }
    row_loss
}

stamp! {
    /// Rows of a structured InfoNCE problem on the backend `isa`; returns the sum of losses.
    pub(crate) fn snce_block<E: KElem>(
        p: &SnceProblem<'_, E>,
        rows: std::ops::Range<usize>,
        loss: &mut [f32],
        grad: Option<(&mut [E], usize)>,
    ) -> f64 = snce_block_generic + bf16;
}
