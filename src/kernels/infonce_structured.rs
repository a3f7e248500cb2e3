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
//! Per row: `g_i` and `G_i` (vectorised), the `M` scores by gathers, one vectorised `exp`
//! pass with the row's maximum, the loss, and a gradient row built from the floor term and
//! a scatter. Cost `O(N·(C + M·k))`; no `N × M` matrix and no densified targets. The
//! conventions of the reference hold (`0·(±∞) = 0`, NaN or `+∞` logits give a NaN row, no
//! finite candidate gives `+∞` and zero probabilities).

use super::cross_entropy::RowScale;
use super::infonce::{dot, exp_shift, mul0, scaled_shift};
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
pub(crate) struct SnceProblem<'a> {
    pub z: &'a [f32],
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
/// # Safety
/// `V`'s CPU requirement; the problem was validated (entry classes `< C`, positives `< M`).
#[inline(always)]
unsafe fn snce_block_generic<V: F32x>(
    p: &SnceProblem<'_>,
    rows: std::ops::Range<usize>,
    loss: &mut [f32],
    mut grad: Option<(&mut [f32], usize)>,
) -> f64 {
    let c = p.c;
    let t = p.targets;
    let m = t.floor.len();
    let mut scratch = super::take_scratch(c + m);
    let (g, s) = scratch.split_at_mut(c);
    let s = &mut s[..m];
    let r0 = rows.start;
    let mut total = 0.0f64;
    for i in rows {
        let z = &p.z[i * p.z_stride..i * p.z_stride + c];
        let k = p.scale.get(i) * p.inv_t;
        let pos = p.p0 + i;
        let out = grad
            .as_mut()
            .map(|(buf, stride)| &mut buf[(i - r0) * *stride..(i - r0) * *stride + c]);
        if z.iter().any(|x| x.is_nan() || *x == f32::INFINITY) {
            if let Some(out) = out {
                out.fill(f32::NAN);
            }
            loss[i - r0] = f32::NAN;
            total += f64::NAN;
            continue;
        }
        // SAFETY: V's CPU requirement is the caller's; `g` and `z` hold `c` floats, `s` `m`;
        // entry classes are below `c` (validated), `start` has `m + 1` offsets into `class`
        // and `weight`, so the unchecked accesses are in bounds.
        let (row_loss, sum, mx) = unsafe {
            scaled_shift::<V>(z, p.inv_t, p.log_eta, g);
            let big_g = g.iter().map(|&x| x as f64).sum::<f64>() as f32;
            if big_g.is_finite() {
                // Every g is finite: plain multiply-adds over the flattened entries.
                for (j, sj) in s.iter_mut().enumerate() {
                    let (lo, hi) = (*t.start.get_unchecked(j), *t.start.get_unchecked(j + 1));
                    let mut v = t.floor.get_unchecked(j) * big_g;
                    for k in lo..hi {
                        v += t.weight.get_unchecked(k) * g.get_unchecked(*t.class.get_unchecked(k) as usize);
                    }
                    *sj = v;
                }
            } else {
                for (j, sj) in s.iter_mut().enumerate() {
                    let (cls, w) = t.entries(j);
                    let mut v = mul0(t.floor[j], big_g);
                    for (&cl, &wk) in cls.iter().zip(w) {
                        v += mul0(wk, *g.get_unchecked(cl as usize));
                    }
                    *sj = v;
                }
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
        loss[i - r0] = row_loss;
        total += row_loss as f64;
        if let Some(out) = out {
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
                            s.get_unchecked(*t.by_target.get_unchecked(q) as usize)
                                * t.by_weight.get_unchecked(q)
                        };
                    }
                    *o = base + acc * kp;
                }
            }
            // The positive's entries last, in f32.
            for (&cl, &wk) in pcls.iter().zip(pw) {
                out[cl as usize] -= k * wk;
            }
        }
    }
    super::give_scratch(scratch);
    total
}

stamp! {
    /// Rows of a structured InfoNCE problem on the backend `isa`; returns the sum of losses.
    pub(crate) fn snce_block(
        p: &SnceProblem<'_>,
        rows: std::ops::Range<usize>,
        loss: &mut [f32],
        grad: Option<(&mut [f32], usize)>,
    ) -> f64 = snce_block_generic;
}
