//! The cross-entropy family on rows of `f32`, `bf16` or `f16` (converted in the loads and
//! stores, computed in `f32`): soft-target CE with dense targets, soft-target CE
//! with structured targets (hard, MixUp, sparse: the logits are the only `N × C` array read),
//! and hard CE with label smoothing and `ignore_index`.
//!
//! Each row takes three sweeps; only the first touch of each array comes from memory, the
//! other sweeps find the row in cache (a row of logits and targets up to a few hundred KiB
//! stays in L2):
//! 1. `m = max_c u_c` with `u = z/t` (NaN-propagating);
//! 2. `e_c = exp(u_c − m)` into a per-block scratch row, `S = Σ e_c`, and for the loss the
//!    non-negative sums `T = Σ_c a_c (m − u_c)` (dense) or `R = Σ_c (m − u_c)` (floor term), so
//!    that `l = mass·ln S + T` has no cancellation even for logits of ±10⁴;
//! 3. the gradient `k·(mass·e_c/S − a_c)` with `k = scale/t`, then (structured forms) the
//!    explicit classes corrected in `f32` last.
//!
//! Sweeps 2 and 3 are software-pipelined across rows: row `i`'s gradient sweep runs inside
//! row `i + 1`'s sweep 2 (two scratch rows of exponentials alternate), so one row's exp
//! arithmetic overlaps the other's memory traffic ([`dense_block`], [`structured_block`]).
//!
//! With [`CeProblem::check`], sweep 2 also proves each dense target row valid (a finite
//! `Σ a` and a non-negative `min a`); rows whose sweep 2 is skipped (NaN or no finite logit)
//! check their targets on their own.
//!
//! Special rows follow the reference: NaN or `+∞` in `u` → NaN loss and gradient; no finite
//! logit (`m = −∞`) → loss `+∞` if the row has target mass (else 0), probabilities all zero.

use super::elem::KElem;
use super::{stamp, Block};
use crate::simd::F32x;
use crate::targets::Structured;
use std::sync::atomic::{AtomicBool, Ordering};

/// How gradient row `i` is scaled before the `1/t`.
#[derive(Clone, Copy)]
pub(crate) enum RowScale<'a> {
    /// Every row by the same factor (`1/N`, `1/count` or `1`).
    All(f32),
    /// Row `i` by `upstream[i]`.
    Upstream(&'a [f32]),
}

impl RowScale<'_> {
    #[inline(always)]
    pub(crate) fn get(&self, i: usize) -> f32 {
        match self {
            RowScale::All(s) => *s,
            RowScale::Upstream(u) => u[i],
        }
    }
}

/// What the rows are scored against.
#[derive(Clone, Copy)]
pub(crate) enum CeTargets<'a, E = f32> {
    /// Dense rows: `a` with row stride `stride`.
    Dense { a: &'a [E], stride: usize },
    /// A structured form; rows labelled `ignore` (hard CE) contribute nothing.
    Structured { s: Structured<'a>, ignore: Option<u32> },
}

/// A validated cross-entropy problem on logits of element type `E`.
#[derive(Clone, Copy)]
pub(crate) struct CeProblem<'a, E = f32> {
    pub z: &'a [E],
    pub z_stride: usize,
    pub c: usize,
    pub t: f32,
    pub targets: CeTargets<'a, E>,
    pub scale: RowScale<'a>,
    /// Write the gradient with non-temporal stores (it is too large to stay in cache), in
    /// every element type.
    pub stream: bool,
    /// Dense targets only: check every weight while it is read (finite and `>= 0`) and set
    /// this flag on a suspect row. A set flag means "rescan the targets exactly": the
    /// in-kernel test can also fire on finite weights whose sum overflows `f32`.
    pub check: Option<&'a AtomicBool>,
}

/// Scaling by the temperature: `x/t` computed as `x·(1/t)`. The dispatcher only sends a
/// problem here when `1/t` is finite (see [`kernel_temperature_ok`]).
#[derive(Clone, Copy)]
struct Temp {
    inv_t: f32,
    /// `inv_t == 1`. The blocks are instantiated once with a literal `true` and once with
    /// `false` (see [`ce_block_generic`]), so that the test folds away inside the loops.
    unit: bool,
}

impl Temp {
    fn new(t: f32) -> Temp {
        let inv_t = 1.0 / t;
        Temp {
            inv_t,
            unit: inv_t == 1.0,
        }
    }

    /// `t = 1`, with `unit` a literal.
    const UNIT: Temp = Temp {
        inv_t: 1.0,
        unit: true,
    };

    /// This temperature with `unit` a literal `false` (`inv_t != 1`).
    #[inline(always)]
    fn scaled(self) -> Temp {
        Temp {
            inv_t: self.inv_t,
            unit: false,
        }
    }

    #[inline(always)]
    fn scalar(&self, z: f32) -> f32 {
        z * self.inv_t
    }

    /// # Safety
    /// `V`'s CPU requirement.
    #[inline(always)]
    unsafe fn vec<V: F32x>(&self, z: V) -> V {
        // SAFETY: the caller guarantees V's CPU features.
        // `z · 1 = z` exactly: skip the multiply at the default temperature.
        unsafe {
            if self.unit {
                z
            } else {
                z.mul(V::splat(self.inv_t))
            }
        }
    }
}

/// Whether the kernels can take temperature `t`: `1/t` must be finite (`t` above about
/// `2.9e-39`; smaller temperatures run on the reference).
pub(crate) fn kernel_temperature_ok(t: f32) -> bool {
    (1.0 / t).is_finite()
}

/// The maximum sweep of a block's first row and of a row after a special one (the other
/// rows get their maximum from the previous row's statistics sweep, [`Ahead`], with the
/// same [`F32x::max`] and so the same result): the maximum of the raw logits `z` over the
/// row (the maximum of `u = z/t` is
/// `max(z)/t`; the kernels only ever scale differences `z − max z`, so finite logits whose
/// `z/t` would overflow f32 stay finite). The first `z.len()` elements of `next` are
/// prefetched, one vector's worth per vector read (see [`dense_block`]).
///
/// Exact for a row without NaN. A row with NaN may give NaN, `−∞` or a value below the
/// maximum of its other logits ([`F32x::max`] leaves NaN unspecified, which saves two
/// operations per vector): the callers find NaN rows through the sum of exponentials, which
/// a NaN logit makes NaN whatever `m` is, and through [`has_nan`] when `m = −∞`.
///
/// # Safety
/// `V`'s CPU requirement.
#[inline(always)]
unsafe fn row_max<V: F32x, E: KElem>(z: &[E], next: &[E]) -> f32 {
    let n = z.len();
    let p = z.as_ptr();
    let np = next.as_ptr();
    let l = V::LANES;
    // SAFETY: V's CPU features are guaranteed by the caller; every load reads within `z`
    // (full vectors while `i + l <= n` / `i + 4l <= n`, then a partial load of `n − i` < l);
    // prefetches are hints that never fault.
    unsafe {
        let ninf = V::splat(f32::NEG_INFINITY);
        let (mut m0, mut m1, mut m2, mut m3) = (ninf, ninf, ninf, ninf);
        let mut i = 0;
        while i + 4 * l <= n {
            if i < next.len() {
                for u in 0..4 {
                    V::prefetch(np.wrapping_add(i + u * l).cast());
                }
            }
            // The maximum does not depend on the lane order: paired types take the cheaper
            // interleaved widening.
            let (x0, x1, x2, x3) = if E::PAIRED {
                let (x0, x1) = E::load2::<V>(p.add(i));
                let (x2, x3) = E::load2::<V>(p.add(i + 2 * l));
                (x0, x1, x2, x3)
            } else {
                (
                    E::load::<V>(p.add(i)),
                    E::load::<V>(p.add(i + l)),
                    E::load::<V>(p.add(i + 2 * l)),
                    E::load::<V>(p.add(i + 3 * l)),
                )
            };
            m0 = m0.max(x0);
            m1 = m1.max(x1);
            m2 = m2.max(x2);
            m3 = m3.max(x3);
            i += 4 * l;
        }
        while i + l <= n {
            m0 = m0.max(E::load::<V>(p.add(i)));
            i += l;
        }
        if i < n {
            m1 = m1.max(E::load_partial::<V>(p.add(i), n - i, f32::NEG_INFINITY));
        }
        m0.max(m1).max(m2.max(m3)).hmax()
    }
}

/// Whether the row holds a NaN (for rows whose [`row_max`] is `−∞`).
///
/// # Safety
/// `V`'s CPU requirement.
#[inline(always)]
unsafe fn has_nan<V: F32x, E: KElem>(z: &[E]) -> bool {
    let (n, l, p) = (z.len(), V::LANES, z.as_ptr());
    // SAFETY: full vectors below `n`, then one partial vector of `n − i < l` elements.
    unsafe {
        let mut i = 0;
        while i + l <= n {
            if E::load::<V>(p.add(i)).is_nan_any() {
                return true;
            }
            i += l;
        }
        i < n && E::load_partial::<V>(p.add(i), n - i, 0.0).is_nan_any()
    }
}

/// Lanes `0..n` are 1, the rest 0: multiplies away the padding lanes of a tail.
///
/// # Safety
/// `V`'s CPU requirement; `n <= V::LANES`.
#[inline(always)]
unsafe fn tail_mask<V: F32x>(n: usize) -> V {
    const ONES: [f32; 64] = [1.0; 64];
    // SAFETY: n <= LANES <= 64 elements of ONES are read.
    unsafe { V::load_partial(ONES.as_ptr(), n, 0.0) }
}

/// What a statistics sweep ([`dense_stats`], [`exp_stats`]) does for the rows after its
/// own, so that each core keeps its memory busy while it computes: it reads the next row's
/// logits `next` (already prefetched, so from cache) for that row's maximum, which spares
/// the next row a sweep of its own, and it prefetches the slices `pf` (the next row's
/// targets and the logits of the row after it), one 64-byte line of each per line of the
/// sweep. Empty slices stand for rows that do not exist.
#[derive(Clone, Copy)]
struct Ahead<'a, E> {
    next: &'a [E],
    pf: [&'a [E]; 2],
}

impl<E: KElem> Ahead<'_, E> {
    /// Prefetches column `i` of each `pf` slice that has it.
    ///
    /// # Safety
    /// `V`'s CPU requirement.
    #[inline(always)]
    unsafe fn prefetch<V: F32x>(&self, i: usize) {
        for pf in self.pf {
            if i < pf.len() {
                // SAFETY: V's CPU requirement is the caller's; a prefetch is a hint that
                // never faults, and `i` is inside the slice.
                unsafe { V::prefetch(pf.as_ptr().add(i).cast()) };
            }
        }
    }

    /// Column `i`'s share: prefetches, then the running maximum `nm` of `next` over a whole
    /// vector.
    ///
    /// # Safety
    /// `V`'s CPU requirement; `next` is empty or holds a whole vector at `i`.
    #[inline(always)]
    unsafe fn step<V: F32x>(&self, i: usize, nm: V) -> V {
        // SAFETY: prefetches are hints that never fault; the load is the caller's guarantee.
        unsafe {
            // One prefetch per 64-byte line: every other vector of a 16-bit type.
            if (i * std::mem::size_of::<E>()) % 64 < V::LANES * std::mem::size_of::<E>() {
                self.prefetch::<V>(i);
            }
            if self.next.is_empty() {
                nm
            } else {
                nm.max(E::load::<V>(self.next.as_ptr().add(i)))
            }
        }
    }

    /// [`step`](Self::step) for the `r < LANES` columns from `i` on (the last, partial
    /// vector; padding lanes read as `−∞`).
    ///
    /// # Safety
    /// `V`'s CPU requirement; `next` is empty or holds `r` elements at `i`.
    #[inline(always)]
    unsafe fn step_partial<V: F32x>(&self, i: usize, r: usize, nm: V) -> V {
        // SAFETY: the caller's guarantees (V's CPU requirement; `next` is empty or holds
        // the columns read).
        unsafe {
            self.prefetch::<V>(i);
            if self.next.is_empty() {
                nm
            } else {
                nm.max(E::load_partial::<V>(
                    self.next.as_ptr().add(i),
                    r,
                    f32::NEG_INFINITY,
                ))
            }
        }
    }

    /// [`step`](Self::step) for a pair of vectors at `i` ([`KElem::load2`]'s order does
    /// not matter to a maximum), prefetching the pair's bytes.
    ///
    /// # Safety
    /// `V`'s CPU requirement; `next` is empty or holds two whole vectors at `i`.
    #[inline(always)]
    unsafe fn step2<V: F32x>(&self, i: usize, nm: V) -> V {
        // SAFETY: the caller's guarantees (V's CPU requirement; `next` is empty or holds
        // the columns read).
        unsafe {
            self.prefetch::<V>(i);
            if self.next.is_empty() {
                nm
            } else {
                let (x0, x1) = E::load2::<V>(self.next.as_ptr().add(i));
                nm.max(x0).max(x1)
            }
        }
    }
}

/// The running sums of [`dense_stats`]: `S`, `mass`, `−T` and the smallest weight.
type DenseAcc<V> = (V, V, V, V);

/// One vector of [`dense_stats`]: `d = (z − m)/t` and weights `av` into the sums (`dt` is
/// the `d` that multiplies the weights); returns `e = exp(d)` to store. `dt·a` is NaN only
/// for `0·(−∞)` (a masked class without weight), which `dense_stats` detects and recomputes.
///
/// # Safety
/// `V`'s CPU requirement.
#[inline(always)]
unsafe fn dense_vec<V: F32x>(d: V, dt: V, av: V, (s, mass, tt, lo): DenseAcc<V>) -> (V, DenseAcc<V>) {
    // SAFETY: the caller's guarantee; no memory access.
    unsafe {
        let ev = d.exp_nonpos();
        (ev, (s.add(ev), mass.add(av), dt.fma(av, tt), lo.min(av)))
    }
}

/// [`dense_stats`] on the whole vectors of columns `i..end`, then a partial one; returns the
/// next column (`end`) and the sums. Padding lanes read as `z = −∞`, `a = 0`: their `e` is
/// 0, and their `d` is zeroed before it meets the weight (the `0·(−∞) = 0` convention, so
/// padding never sends the row to the masked path). `e` is stored at `ep` unless it is
/// null. `ahead` steps once per vector (the next row's maximum in `nm`), and so does
/// `prev`'s sweep.
///
/// # Safety
/// `V`'s CPU requirement; the row's slices hold at least `end` elements.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn dense_span<V: F32x, E: KElem>(
    (zp, ap, ep): (*const E, *const E, *mut f32),
    (mut i, end): (usize, usize),
    vm: V,
    tp: Temp,
    (ahead, mut nm): (Ahead<'_, E>, V),
    (sweep, mut pj): (PrevSweep<V, E>, usize),
    mut acc: DenseAcc<V>,
) -> (usize, DenseAcc<V>, V) {
    let l = V::LANES;
    // SAFETY: the caller's guarantees: full vectors below `end`, then one partial vector of
    // `end − i < l` elements (`ahead.next` has the row's length or none).
    unsafe {
        // No closures here: a closure would be compiled without the entry point's target
        // features and the vector intrinsics would not inline.
        while i + l <= end {
            nm = ahead.step(i, nm);
            pj = sweep.step(pj);
            let av = E::load::<V>(ap.add(i));
            let d = tp.vec(E::load::<V>(zp.add(i)).sub(vm)); // (z − m)/t <= 0
            let (ev, a2) = dense_vec(d, d, av, acc);
            if !ep.is_null() {
                ev.store(ep.add(i));
            }
            acc = a2;
            i += l;
        }
        if i < end {
            let r = end - i;
            let av = E::load_partial::<V>(ap.add(i), r, 0.0);
            let d = tp.vec(E::load_partial::<V>(zp.add(i), r, f32::NEG_INFINITY).sub(vm));
            let (ev, a2) = dense_vec(d, d.zero_where_zero(av), av, acc);
            if !ep.is_null() {
                ev.store_partial(ep.add(i), r);
            }
            acc = a2;
            nm = ahead.step_partial(i, r, nm);
        }
        (pj, acc, nm)
    }
}

/// Sweep 2, dense targets, with `m` the maximum raw logit: `e = exp((z − m)/t)` into `e`
/// (unless `None`: the gradient sweep then recomputes it, or there is none); returns
/// `(S, mass, T, ok, m')` with `T = Σ a_c (m − z_c)/t` (a zero weight contributes 0 even
/// where `z_c = −∞`), `ok` false if a weight may be negative or non-finite (a finite
/// `mass` and a non-negative minimum weight prove the row valid; one `min` per vector) and
/// `m'` the maximum of `ahead.next` as [`row_max`] would give it (`−∞` without a next
/// row). `ahead`'s work and `prev`'s gradient sweep (the previous row's) run in the same
/// loop (see [`dense_block`]).
///
/// Paired element types ([`KElem::PAIRED`]) read columns `h..` two vectors at a time and
/// store their `e` in the pairs' interleaved order (see [`e_index`]); `h` is the row's
/// [`pair_origin`], so that its own gradient sweep later meets the same pairs.
///
/// # Safety
/// `V`'s CPU requirement; `z`, `a` and `e` (if any) have the same length; `m` is finite;
/// `h <= len`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn dense_stats<V: F32x, E: KElem>(
    z: &[E],
    a: &[E],
    m: f32,
    tp: Temp,
    e: Option<&mut [f32]>,
    h: usize,
    ahead: Ahead<'_, E>,
    prev: Option<PrevGrad<'_, E>>,
) -> (f32, f32, f32, bool, f32) {
    let n = z.len();
    let l = V::LANES;
    let ep = e.map_or(std::ptr::null_mut(), |e| e.as_mut_ptr());
    let (zp, ap) = (z.as_ptr(), a.as_ptr());
    // The previous row's gradient sweep rides along (see `dense_block`): `pj` is its next
    // column; its unaligned head (streaming stores need aligned vectors) goes first.
    // SAFETY: V's CPU requirement is the caller's; the row's slices have equal length.
    let (sweep, mut pj) = unsafe { PrevSweep::<V, E>::start(prev) };
    // SAFETY: V's CPU features are guaranteed by the caller; the three slices (and
    // `ahead.next`, unless empty) have length n and every access is inside them (spans end
    // at `h <= n` or `n`, pairs at `i + 2l <= n`); prefetches are hints that never fault.
    unsafe {
        let vm = V::splat(m);
        let mut acc = (V::zero(), V::zero(), V::zero(), V::zero());
        let mut nm = V::splat(f32::NEG_INFINITY);
        let mut i = 0;
        if E::PAIRED {
            (pj, acc, nm) = dense_span::<V, E>((zp, ap, ep), (0, h), vm, tp, (ahead, nm), (sweep, pj), acc);
            i = h;
            while i + 2 * l <= n {
                nm = ahead.step2(i, nm);
                pj = sweep.step(pj);
                let (a0, a1) = E::load2::<V>(ap.add(i));
                let (z0, z1) = E::load2::<V>(zp.add(i));
                let d0 = tp.vec(z0.sub(vm));
                let d1 = tp.vec(z1.sub(vm));
                let (e0, a2) = dense_vec(d0, d0, a0, acc);
                let (e1, a3) = dense_vec(d1, d1, a1, a2);
                if !ep.is_null() {
                    e0.store(ep.add(i));
                    e1.store(ep.add(i + l));
                }
                acc = a3;
                i += 2 * l;
            }
        }
        (pj, acc, nm) = dense_span::<V, E>((zp, ap, ep), (i, n), vm, tp, (ahead, nm), (sweep, pj), acc);
        sweep.finish(pj);
        let (s, mass, tt, lo) = acc;
        let mass = mass.hsum();
        // A NaN weight makes `mass` NaN whatever `min` does with it; `−hmax(−lo)` is the
        // smallest lane.
        let ok = mass.is_finite() && V::zero().sub(lo).hmax() <= 0.0;
        let (s, mut t_sum) = (s.hsum(), -tt.hsum());
        if t_sum.is_nan() && !s.is_nan() {
            // The row has a masked (−∞) logit where some target weight is 0. The row holds no
            // NaN (S is not NaN) and the weights are finite, so only 0·(−∞) made the NaN:
            // recompute T with the convention 0·(−∞) = 0 (a rare, slower path).
            t_sum = -masked_dot::<V, E>(z, a, vm, tp);
        }
        (s, mass, t_sum, ok, nm.hmax())
    }
}

/// `Σ_c a_c (z_c − m)/t` with `0·(−∞) = 0`, for rows with masked logits.
///
/// # Safety
/// `V`'s CPU requirement; `z` and `a` have the same length.
#[inline(always)]
unsafe fn masked_dot<V: F32x, E: KElem>(z: &[E], a: &[E], vm: V, tp: Temp) -> f32 {
    let n = z.len();
    let l = V::LANES;
    let (zp, ap) = (z.as_ptr(), a.as_ptr());
    // SAFETY: full vectors below n, then one partial vector of n − i < l elements.
    unsafe {
        let mut tt = V::zero();
        let mut i = 0;
        while i + l <= n {
            let av = E::load::<V>(ap.add(i));
            let d = tp.vec(E::load::<V>(zp.add(i)).sub(vm));
            tt = tt.add(d.mul(av).zero_where_zero(av));
            i += l;
        }
        if i < n {
            let av = E::load_partial::<V>(ap.add(i), n - i, 0.0);
            let d = tp.vec(E::load_partial::<V>(zp.add(i), n - i, f32::NEG_INFINITY).sub(vm));
            tt = tt.add(d.mul(av).zero_where_zero(av));
        }
        tt.hsum()
    }
}

/// One vector of [`exp_stats`]: `e = exp(d)` to store, added to `S`, and (with `want_r`)
/// `dr`, the `d` that counts towards `R`, subtracted from `−R`.
///
/// # Safety
/// `V`'s CPU requirement.
#[inline(always)]
unsafe fn exp_vec<V: F32x>(d: V, dr: V, want_r: bool, (s, r): (V, V)) -> (V, (V, V)) {
    // SAFETY: the caller's guarantee; no memory access.
    unsafe {
        let ev = d.exp_nonpos();
        (ev, (s.add(ev), if want_r { r.sub(dr) } else { r }))
    }
}

/// [`exp_stats`] on the whole vectors of columns `i..end`, then a partial one (padding
/// lanes read as `z = −∞`: `e = 0`, and they are selected out of `R`); returns the next
/// column (`end`) and the sums `(S, −R)`. `e` is stored at `ep` unless it is null.
/// `ahead`'s and `prev`'s steps as in [`dense_span`].
///
/// # Safety
/// `V`'s CPU requirement; the row's slices hold at least `end` elements.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn exp_span<V: F32x, E: KElem>(
    (zp, ep): (*const E, *mut f32),
    (mut i, end): (usize, usize),
    (vm, tp, want_r): (V, Temp, bool),
    (ahead, mut nm): (Ahead<'_, E>, V),
    (sweep, mut pj): (PrevSweep<V, E>, usize),
    mut acc: (V, V),
) -> (usize, (V, V), V) {
    let l = V::LANES;
    // SAFETY: as in `dense_span`.
    unsafe {
        while i + l <= end {
            nm = ahead.step(i, nm);
            pj = sweep.step(pj);
            let d = tp.vec(E::load::<V>(zp.add(i)).sub(vm)); // (z − m)/t <= 0
            let (ev, a2) = exp_vec(d, d, want_r, acc);
            if !ep.is_null() {
                ev.store(ep.add(i));
            }
            acc = a2;
            i += l;
        }
        if i < end {
            let k = end - i;
            let d = tp.vec(E::load_partial::<V>(zp.add(i), k, f32::NEG_INFINITY).sub(vm));
            // Padding lanes hold −∞ − m = −∞: select them away from `R` (∞·0 would be NaN).
            let (ev, a2) = exp_vec(d, d.zero_where_zero(tail_mask::<V>(k)), want_r, acc);
            if !ep.is_null() {
                ev.store_partial(ep.add(i), k);
            }
            acc = a2;
            nm = ahead.step_partial(i, k, nm);
        }
        (pj, acc, nm)
    }
}

/// Sweep 2, structured targets, with `m` the maximum raw logit: `e = exp((z − m)/t)` into
/// `e` (unless `None`: a call without a gradient), returns `(S, R, m')` with
/// `R = Σ_c (m − z_c)/t` when `want_r` (else 0) and `m'` the maximum of `ahead.next` (as in
/// [`dense_stats`]). `ahead`'s work and `prev`'s gradient sweep run in the same loop (see
/// [`structured_block`]). Paired element types read columns `h..` in pairs, as in
/// [`dense_stats`].
///
/// # Safety
/// `V`'s CPU requirement; `z` and `e` (if any) have the same length; `m` is finite;
/// `h <= len`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn exp_stats<V: F32x, E: KElem>(
    z: &[E],
    m: f32,
    tp: Temp,
    e: Option<&mut [f32]>,
    h: usize,
    want_r: bool,
    ahead: Ahead<'_, E>,
    prev: Option<PrevGrad<'_, E>>,
) -> (f32, f32, f32) {
    let n = z.len();
    let l = V::LANES;
    let (zp, ep) = (z.as_ptr(), e.map_or(std::ptr::null_mut(), |e| e.as_mut_ptr()));
    // The previous row's gradient sweep rides along, as in `dense_stats`.
    // SAFETY: V's CPU requirement is the caller's; the row's slices have equal length.
    let (sweep, mut pj) = unsafe { PrevSweep::<V, E>::start(prev) };
    // SAFETY: as in `dense_stats`.
    unsafe {
        let vm = V::splat(m);
        let mut acc = (V::zero(), V::zero());
        let mut nm = V::splat(f32::NEG_INFINITY);
        let mut i = 0;
        if E::PAIRED {
            (pj, acc, nm) =
                exp_span::<V, E>((zp, ep), (0, h), (vm, tp, want_r), (ahead, nm), (sweep, pj), acc);
            i = h;
            while i + 2 * l <= n {
                nm = ahead.step2(i, nm);
                pj = sweep.step(pj);
                let (z0, z1) = E::load2::<V>(zp.add(i));
                let d0 = tp.vec(z0.sub(vm));
                let d1 = tp.vec(z1.sub(vm));
                let (e0, a2) = exp_vec(d0, d0, want_r, acc);
                let (e1, a3) = exp_vec(d1, d1, want_r, a2);
                if !ep.is_null() {
                    e0.store(ep.add(i));
                    e1.store(ep.add(i + l));
                }
                acc = a3;
                i += 2 * l;
            }
        }
        let (pj, (s, r), nm) =
            exp_span::<V, E>((zp, ep), (i, n), (vm, tp, want_r), (ahead, nm), (sweep, pj), acc);
        sweep.finish(pj);
        (s.hsum(), if want_r { r.hsum() } else { 0.0 }, nm.hmax())
    }
}

/// Where column `c` of a row of `n` with pair origin `h` keeps its exponential in the
/// scratch row: paired types ([`KElem::PAIRED`]) store each whole pair of vectors from `h`
/// on in [`KElem::load2`]'s order (even columns of the pair, then odd ones); other columns
/// (and other types) in place.
#[inline(always)]
fn e_index<V: F32x, E: KElem>(c: usize, h: usize, n: usize) -> usize {
    let w = 2 * V::LANES;
    if !E::PAIRED || c < h || c - h >= (n - h) / w * w {
        return c;
    }
    let q = c - h;
    h + q / w * w + (q % 2) * V::LANES + (q % w) / 2
}

/// The pair origin of a gradient row of `n` at `g`: where the paired sweeps of a paired
/// element type ([`KElem::PAIRED`]) start, the first column aligned to a whole pair of
/// vectors (`2·LANES · size_of::<E>()` bytes, as its streaming stores need). The row's
/// statistics sweep and its gradient sweep both derive it from `g`, so they agree.
#[inline(always)]
fn pair_origin<V: F32x, E>(g: *const E, n: usize) -> usize {
    aligned_head(g, n, 2 * V::LANES)
}

/// How many elements of a row of `n` at `g` precede the first one aligned to `lanes`
/// elements of `E` (`lanes · size_of::<E>()` bytes).
#[inline(always)]
fn aligned_head<E>(g: *const E, n: usize, lanes: usize) -> usize {
    let (size, vb) = (std::mem::size_of::<E>(), lanes * std::mem::size_of::<E>());
    ((vb - (g as usize) % vb) % vb / size).min(n)
}

/// Where a gradient sweep takes its exponentials: the scratch row `e` its statistics sweep
/// stored, or (`z` not null) recomputed from the logits `z` with the row's maximum `vm`,
/// by the very operations of [`dense_span`], so bit for bit the values it would have
/// stored.
#[derive(Clone, Copy)]
struct ESrc<V, E> {
    e: *const f32,
    z: *const E,
    vm: V,
    tp: Temp,
}

impl<V: F32x, E: KElem> ESrc<V, E> {
    /// The exponentials of lanes `i .. i + r` (`r <= LANES`; padding lanes 0).
    ///
    /// # Safety
    /// `V`'s CPU requirement; the source row holds `i + r` values.
    #[inline(always)]
    unsafe fn get(&self, i: usize, r: usize) -> V {
        // SAFETY: the caller's guarantees.
        unsafe {
            let full = r == V::LANES;
            if self.z.is_null() {
                if full {
                    V::load(self.e.add(i))
                } else {
                    V::load_partial(self.e.add(i), r, 0.0)
                }
            } else {
                let zv = if full {
                    E::load::<V>(self.z.add(i))
                } else {
                    E::load_partial::<V>(self.z.add(i), r, f32::NEG_INFINITY)
                };
                self.tp.vec(zv.sub(self.vm)).exp_nonpos()
            }
        }
    }
}

/// Gradient values `e·c1 + a·c2` (dense) or `e·c1 + c2` (`ap` null) of lanes `i .. i + r`.
///
/// # Safety
/// `V`'s CPU requirement; `src` (and `ap` if not null) are valid for reading `i + r` values;
/// `r <= LANES`.
#[inline(always)]
unsafe fn grad_vec<V: F32x, E: KElem>(src: ESrc<V, E>, ap: *const E, i: usize, r: usize, v1: V, v2: V) -> V {
    // SAFETY: the caller's guarantees.
    unsafe {
        let full = r == V::LANES;
        let ev = src.get(i, r);
        if ap.is_null() {
            ev.fma(v1, v2)
        } else {
            let av = if full {
                E::load::<V>(ap.add(i))
            } else {
                E::load_partial::<V>(ap.add(i), r, 0.0)
            };
            ev.fma(v1, av.mul(v2))
        }
    }
}

/// A row whose gradient sweep is still to do: `g = e·c1 + a·c2` (dense) or `e·c1 + c2`.
pub(super) struct PrevGrad<'a, E> {
    e: &'a [f32],
    /// The row's logits and maximum, when `e` is to be recomputed from them (see [`ESrc`])
    /// instead of read from `e`.
    z: Option<(&'a [E], f32)>,
    tp: Temp,
    /// Dense target row, or `None` for `g = e·c1 + c2` (structured rows).
    a: Option<&'a [E]>,
    c1: f32,
    c2: f32,
    g: &'a mut [E],
    stream: bool,
}

impl<'a, E> PrevGrad<'a, E> {
    /// A row whose exponentials are stored in `e`; `(c1, c2)` as in [`write_grad`].
    fn stored(e: &'a [f32], a: Option<&'a [E]>, (c1, c2): (f32, f32), g: &'a mut [E], stream: bool) -> Self {
        PrevGrad {
            e,
            z: None,
            tp: Temp::UNIT,
            a,
            c1,
            c2,
            g,
            stream,
        }
    }

    /// With `recompute`, this row with its exponentials recomputed from its logits `z`
    /// (maximum `m`, temperature `tp`) instead of read from `e`; else the row unchanged.
    fn recomputed_if(self, recompute: bool, z: &'a [E], m: f32, tp: Temp) -> Self {
        if !recompute {
            return self;
        }
        PrevGrad {
            z: Some((z, m)),
            tp,
            ..self
        }
    }
}

/// The target row's pointer, null for structured rows (see [`grad_vec`]).
#[inline(always)]
fn a_ptr<E>(a: Option<&[E]>) -> *const E {
    a.map_or(std::ptr::null(), |a| a.as_ptr())
}

/// [`PrevGrad`]'s sweep, one vector per [`step`](Self::step), interleaved with the next
/// row's statistics sweep. Plain `Copy` data with the column index kept by the caller, so
/// that the fused loop keeps everything in registers (a `&mut` state struct made the
/// compiler spill the loop's accumulators to the stack). Without a previous row `n` is 0
/// and every step is a no-op.
#[derive(Clone, Copy)]
struct PrevSweep<V, E> {
    e: ESrc<V, E>,
    a: *const E,
    g: *mut E,
    n: usize,
    v1: V,
    v2: V,
    /// Whether whole vectors are written with streaming stores.
    nt: bool,
}

impl<V: F32x, E: KElem> PrevSweep<V, E> {
    /// Writes the head (before the pair origin for paired types, before the first aligned
    /// vector when streaming); returns the sweep and its next column.
    ///
    /// # Safety
    /// `V`'s CPU requirement; `e`, `a` (if any) and `g` have the same length.
    #[inline(always)]
    unsafe fn start(prev: Option<PrevGrad<'_, E>>) -> (Self, usize) {
        // SAFETY: V's CPU requirement is the caller's; the head is at most `n` elements.
        unsafe {
            match prev {
                None => (
                    PrevSweep {
                        e: ESrc {
                            e: std::ptr::null(),
                            z: std::ptr::null(),
                            vm: V::zero(),
                            tp: Temp::UNIT,
                        },
                        a: std::ptr::null(),
                        g: std::ptr::null_mut(),
                        n: 0,
                        v1: V::zero(),
                        v2: V::zero(),
                        nt: false,
                    },
                    0,
                ),
                Some(pg) => {
                    let n = pg.g.len();
                    let nt = pg.stream;
                    let (v1, v2) = (V::splat(pg.c1), V::splat(pg.c2));
                    // Recomputed exponentials are for unpaired types (the paired step
                    // reads stored pairs).
                    debug_assert!(pg.z.is_none() || !E::PAIRED);
                    let (zp, m) = pg.z.map_or((std::ptr::null(), 0.0), |(z, m)| (z.as_ptr(), m));
                    let sweep = PrevSweep {
                        e: ESrc {
                            e: pg.e.as_ptr(),
                            z: zp,
                            vm: V::splat(m),
                            tp: pg.tp,
                        },
                        a: a_ptr(pg.a),
                        g: pg.g.as_mut_ptr(),
                        n,
                        v1,
                        v2,
                        nt,
                    };
                    // Paired types start their pairs at the row's pair origin (where its
                    // statistics sweep started them); others stream from the first aligned
                    // vector. The head before it is written with plain stores.
                    let head = if E::PAIRED {
                        pair_origin::<V, E>(sweep.g, n)
                    } else if nt {
                        aligned_head(sweep.g, n, V::LANES)
                    } else {
                        0
                    };
                    let (l, mut j) = (V::LANES, 0);
                    while j + l <= head {
                        E::store::<V>(grad_vec::<V, E>(sweep.e, sweep.a, j, l, v1, v2), sweep.g.add(j));
                        j += l;
                    }
                    if j < head {
                        let v = grad_vec::<V, E>(sweep.e, sweep.a, j, head - j, v1, v2);
                        E::store_partial::<V>(v, sweep.g.add(j), head - j);
                        j = head;
                    }
                    (sweep, j)
                }
            }
        }
    }

    /// Writes the whole vector at column `j` (a whole pair of vectors for paired types, while
    /// one fits), if it fits; returns the next column.
    ///
    /// # Safety
    /// `V`'s CPU requirement; `j` came from [`start`](Self::start) or `step`.
    #[inline(always)]
    unsafe fn step(self, j: usize) -> usize {
        let l = V::LANES;
        if E::PAIRED && j + 2 * l <= self.n {
            // SAFETY: `j + 2l <= n`: two whole vectors inside all three rows; `j` is the pair
            // origin plus whole pairs, so `e` holds this pair's exponentials in `load2`'s
            // order and, with `nt`, `g + j` is aligned to the pair's size.
            unsafe {
                let (e0, e1) = (V::load(self.e.e.add(j)), V::load(self.e.e.add(j + l)));
                let (g0, g1) = if self.a.is_null() {
                    (e0.fma(self.v1, self.v2), e1.fma(self.v1, self.v2))
                } else {
                    let (a0, a1) = E::load2::<V>(self.a.add(j));
                    (e0.fma(self.v1, a0.mul(self.v2)), e1.fma(self.v1, a1.mul(self.v2)))
                };
                E::store2::<V>(g0, g1, self.g.add(j), self.nt);
            }
            return j + 2 * l;
        }
        if j + l > self.n {
            return j;
        }
        // SAFETY: `j + l <= n`: a whole vector inside all three rows; with `nt`, `g + j` is
        // aligned to the vector's size in `E` (the head was written by `start`).
        unsafe {
            let v = grad_vec::<V, E>(self.e, self.a, j, l, self.v1, self.v2);
            if self.nt {
                E::store_stream::<V>(v, self.g.add(j));
            } else {
                E::store::<V>(v, self.g.add(j));
            }
        }
        j + l
    }

    /// Writes whatever is left from column `j` on.
    ///
    /// # Safety
    /// As [`step`](Self::step).
    #[inline(always)]
    unsafe fn finish(self, mut j: usize) {
        let (n, l) = (self.n, V::LANES);
        // SAFETY: as in `step`, then one partial vector of fewer than `l` elements.
        unsafe {
            while j + l <= n {
                j = self.step(j);
            }
            if j < n {
                let v = grad_vec::<V, E>(self.e, self.a, j, n - j, self.v1, self.v2);
                E::store_partial::<V>(v, self.g.add(j), n - j);
            }
        }
    }
}

/// Sweep 3 on its own (a block's last row, or a row before a special one; the others run
/// fused into the next row's sweep): [`PrevSweep`] run to the end. `g_c = e_c·c1 + a_c·c2`
/// (dense, `a = Some`) or `g_c = e_c·c1 + c2` (structured). With `stream`, whole aligned
/// vectors are written with non-temporal stores (no read for ownership); the caller then
/// issues [`F32x::stream_fence`] before the block completes.
///
/// # Safety
/// `V`'s CPU requirement; the row's slices (`e` or `z`, `g`, and `a`) have the same length.
#[inline(always)]
unsafe fn write_grad<V: F32x, E: KElem>(prev: PrevGrad<'_, E>) {
    // SAFETY: V's CPU requirement is the caller's; the row's slices have the same length.
    unsafe {
        let (sweep, j) = PrevSweep::<V, E>::start(Some(prev));
        sweep.finish(j);
    }
}

/// `Σ a` over a row (for rows without a finite logit) and whether the row is provably
/// valid (as in [`dense_stats`]).
///
/// # Safety
/// `V`'s CPU requirement.
#[inline(always)]
unsafe fn row_sum<V: F32x, E: KElem>(a: &[E]) -> (f32, bool) {
    let n = a.len();
    let l = V::LANES;
    let p = a.as_ptr();
    // SAFETY: loads stay within `a` (full vectors, then a partial tail).
    unsafe {
        let (mut s, mut lo) = (V::zero(), V::zero());
        let mut i = 0;
        while i + l <= n {
            let v = E::load::<V>(p.add(i));
            s = s.add(v);
            lo = lo.min(v);
            i += l;
        }
        if i < n {
            let v = E::load_partial::<V>(p.add(i), n - i, 0.0);
            s = s.add(v);
            lo = lo.min(v);
        }
        let s = s.hsum();
        (s, s.is_finite() && V::zero().sub(lo).hmax() <= 0.0)
    }
}

/// `a·b` with `0·x = 0` for every `x` (the `0 · (−∞) = 0` convention on scalars).
#[inline(always)]
fn mul0(a: f32, b: f32) -> f32 {
    if a == 0.0 {
        0.0
    } else {
        a * b
    }
}

/// Rows `rows` of soft-target CE against dense targets `a` (row stride `stride`): row
/// losses into `row_losses`, gradient rows into `grad` (row `r` of the block at
/// `r·g_stride`); returns the sum of the losses.
///
/// Software-pipelined, one sweep per row: the statistics sweep of row `i` also writes the
/// gradient of row `i − 1` and, through [`Ahead`], finds the maximum of row `i + 1` and
/// prefetches the targets of row `i + 1` and the logits of row `i + 2`. So every sweep
/// reads from DRAM (prefetches) and writes to it (streaming stores) while it computes, and
/// only a block's first row (or one after a special row) has a max sweep of its own. (Three
/// separate sweeps left memory idle while the exponentials were computed; a separate max
/// sweep per row left the writes idle while it read.) The gradient sweep needs the row's
/// exponentials again: they are kept in two alternating scratch rows, except for `f32`
/// calls large enough to stream their gradient, which recompute them from the logits (bit
/// for bit the same values, [`ESrc`]): there, writing a scratch row and reading it back
/// cost more than the second `exp`. In cache, and for half precision (whose rows are bound
/// by their `exp`), the second `exp` costs more. A call without a gradient stores no
/// exponentials at all.
///
/// With `p.check`, each target row is proven valid (see [`dense_stats`]) and a suspect
/// row sets the flag.
///
/// # Safety
/// `V`'s CPU requirement; `p` was validated; `grad` (if any) holds the block's rows at
/// `g_stride`; `e0` and `e1` hold `C` floats each.
#[inline(always)]
unsafe fn dense_block<V: F32x, E: KElem>(
    p: &CeProblem<'_, E>,
    (a, stride): (&[E], usize),
    rows: std::ops::Range<usize>,
    (grad, g_stride): (Option<&mut [E]>, usize),
    mut row_losses: Option<&mut [f32]>,
    (e0, e1): (&mut [f32], &mut [f32]),
    tp: Temp,
) -> f64 {
    let c = p.c;
    let check = p.check.is_some();
    let gp = grad.map(|g| g.as_mut_ptr());
    let (mut e_cur, mut e_prev) = (e0, e1);
    // The row whose gradient is still to write: (block row, problem row, c1, c2, its max).
    let mut pending: Option<(usize, usize, f32, f32, f32)> = None;
    // Streamed `f32` gradients (large calls) recompute their exponentials in the gradient
    // sweep instead of storing them: writing a scratch row and reading it back cost more
    // than the second `exp` there. In cache, and for half precision (bound by the `exp`),
    // the second `exp` costs more.
    let recompute = E::IS_F32 && p.stream;
    // The next row's maximum, when this row's sweep computed it.
    let mut carried: Option<f32> = None;
    let mut suspect = false;
    let mut total = 0.0f64;
    let end = rows.end;
    let zrow = |i: usize| &p.z[i * p.z_stride..i * p.z_stride + c];
    let arow = |i: usize| &a[i * stride..i * stride + c];
    // SAFETY (for the whole body): V's CPU requirement is the caller's; every slice has
    // length C; `grow(r)` is row `r` of the caller's gradient block (rows are disjoint and
    // never alias the scratch rows), and only one gradient row is borrowed at a time.
    unsafe {
        let grow = |r: usize| gp.map(|g| std::slice::from_raw_parts_mut(g.add(r * g_stride), c));
        for (r, i) in rows.enumerate() {
            let (z, ai) = (zrow(i), arow(i));
            let k = p.scale.get(i) / p.t;
            let (next_z, next_a) = if i + 1 < end {
                (zrow(i + 1), arow(i + 1))
            } else {
                (&[][..], &[][..])
            };
            let after = if i + 2 < end { zrow(i + 2) } else { &[][..] };
            // The previous row's sweep found this row's maximum, unless it was special or
            // this is the block's first row: then a sweep of its own (prefetching the next
            // row, which this row's sweep reads).
            let m = match carried.take() {
                Some(m) => m,
                None => row_max::<V, E>(z, next_z),
            };
            let loss = if m.is_finite() {
                let prev = pending.take().map(|(pr, pi, c1, c2, pm)| {
                    let g = grow(pr).expect("pending rows have a gradient");
                    let pg = PrevGrad::stored(&*e_prev, Some(arow(pi)), (c1, c2), g, p.stream);
                    pg.recomputed_if(recompute, zrow(pi), pm, tp)
                });
                let h = gp.map_or(0, |g| pair_origin::<V, E>(g.add(r * g_stride), c));
                let ahead = Ahead {
                    next: next_z,
                    pf: [next_a, after],
                };
                let e = if recompute || gp.is_none() {
                    None
                } else {
                    Some(&mut *e_cur)
                };
                let (s, mass, tt, ok, next_m) = dense_stats::<V, E>(z, ai, m, tp, e, h, ahead, prev);
                if !next_z.is_empty() {
                    carried = Some(next_m);
                }
                suspect |= !ok;
                if s.is_nan() {
                    // A NaN logit (see `row_max`).
                    if let Some(g) = grow(r) {
                        g.fill(E::from_f32(f32::NAN));
                    }
                    f32::NAN
                } else {
                    if gp.is_some() {
                        pending = Some((r, i, k * mass / s, -k, m));
                        std::mem::swap(&mut e_cur, &mut e_prev);
                    }
                    mass * s.ln() + tt
                }
            } else {
                // A special row: finish the pending one first (it owns `e_prev`).
                if let Some((pr, pi, c1, c2, pm)) = pending.take() {
                    let g = grow(pr).expect("pending rows have a gradient");
                    let pg = PrevGrad::stored(&*e_prev, Some(arow(pi)), (c1, c2), g, p.stream);
                    write_grad::<V, E>(pg.recomputed_if(recompute, zrow(pi), pm, tp));
                }
                let (mass, ok) = row_sum::<V, E>(ai);
                suspect |= check && !ok;
                if m == f32::NEG_INFINITY && !has_nan::<V, E>(z) {
                    if let Some(g) = grow(r) {
                        // Probabilities are all zero: g = −k·a.
                        e_cur.fill(0.0);
                        write_grad::<V, E>(PrevGrad::stored(e_cur, Some(ai), (0.0, -k), g, false));
                    }
                    if mass > 0.0 {
                        f32::INFINITY
                    } else {
                        0.0
                    }
                } else {
                    // NaN or +∞ in the row.
                    if let Some(g) = grow(r) {
                        g.fill(E::from_f32(f32::NAN));
                    }
                    f32::NAN
                }
            };
            if let Some(rl) = row_losses.as_deref_mut() {
                rl[r] = loss;
            }
            total += loss as f64;
        }
        if let Some((pr, pi, c1, c2, pm)) = pending {
            let g = grow(pr).expect("pending rows have a gradient");
            let pg = PrevGrad::stored(&*e_prev, Some(arow(pi)), (c1, c2), g, p.stream);
            write_grad::<V, E>(pg.recomputed_if(recompute, zrow(pi), pm, tp));
        }
    }
    if let (true, Some(flag)) = (suspect, p.check) {
        flag.store(true, Ordering::Relaxed);
    }
    total
}

/// The explicit classes of a structured row's gradient, last and in `f32`:
/// `g_c = e_c·c1 + c2 − k·Σw` over the row's entries (`c2 = −k·floor`), after the sweep
/// wrote `e·c1 + c2` everywhere. `d` is scratch of `C` floats (half precision only); `e`
/// is in the order the row's sweeps used (see [`e_index`]).
#[inline(always)]
fn fix_explicit<V: F32x, E: KElem>(
    g: &mut [E],
    e: &[f32],
    entries: crate::targets::Entries<'_>,
    (c1, c2, k): (f32, f32, f32),
    d: &mut [f32],
) {
    if E::IS_F32 {
        for (cls, w) in entries.iter() {
            let gc = &mut g[cls as usize];
            *gc = E::from_f32(gc.to_f32() - k * w);
        }
    } else {
        // Rounded gradients cannot carry the f32 value: rebuild it from `e` with the class's
        // summed weights (`d`, cleared and filled for these classes only).
        for (cls, _) in entries.iter() {
            d[cls as usize] = 0.0;
        }
        for (cls, w) in entries.iter() {
            d[cls as usize] += k * w;
        }
        let (n, h) = (g.len(), pair_origin::<V, E>(g.as_ptr(), g.len()));
        for (cls, _) in entries.iter() {
            let c = cls as usize;
            g[c] = E::from_f32(e[e_index::<V, E>(c, h, n)].mul_add(c1, c2) - d[c]);
        }
    }
}

/// Rows `rows` of soft-target CE against structured targets `s` (rows labelled `ignore`
/// contribute nothing), pipelined like [`dense_block`]: the gradient sweep of a row runs
/// inside the exp sweep of the next, and its explicit classes are fixed right after. The
/// exp sweep also finds the next row's maximum and prefetches the logits of the row after
/// it ([`Ahead`]), while the gradient stores stream out.
///
/// # Safety
/// `V`'s CPU requirement; `p` was validated (entry classes `< C`); `grad` (if any) holds
/// the block's rows at `g_stride`; `e0`, `e1` and `d` hold `C` floats each.
#[inline(always)]
unsafe fn structured_block<V: F32x, E: KElem>(
    p: &CeProblem<'_, E>,
    (s, ignore): (Structured<'_>, Option<u32>),
    rows: std::ops::Range<usize>,
    (grad, g_stride): (Option<&mut [E]>, usize),
    mut row_losses: Option<&mut [f32]>,
    (e0, e1, d): (&mut [f32], &mut [f32], &mut [f32]),
    tp: Temp,
) -> f64 {
    let c = p.c;
    let gp = grad.map(|g| g.as_mut_ptr());
    let (mut e_cur, mut e_prev) = (e0, e1);
    // The row whose gradient is still to write: (block row, its entries, c1, c2, k).
    let mut pending: Option<(usize, crate::targets::Entries<'_>, f32, f32, f32)> = None;
    // The next row's maximum, when this row's sweep computed it.
    let mut carried: Option<f32> = None;
    let mut total = 0.0f64;
    let end = rows.end;
    let zrow = |i: usize| &p.z[i * p.z_stride..i * p.z_stride + c];
    // SAFETY (for the whole body): as in `dense_block`.
    unsafe {
        let grow = |r: usize| gp.map(|g| std::slice::from_raw_parts_mut(g.add(r * g_stride), c));
        for (r, i) in rows.enumerate() {
            let (floor, entries) = s.row(i, c);
            let carried_m = carried.take();
            if let (Some(ig), Some((y, _))) = (ignore, entries.iter().next()) {
                if y == ig {
                    if let Some(g) = grow(r) {
                        g.fill(E::from_f32(0.0));
                    }
                    if let Some(rl) = row_losses.as_deref_mut() {
                        rl[r] = 0.0;
                    }
                    continue;
                }
            }
            let z = zrow(i);
            let k = p.scale.get(i) / p.t;
            let mass = floor * c as f32 + entries.iter().map(|(_, w)| w).sum::<f32>();
            let next = if i + 1 < end { zrow(i + 1) } else { &[][..] };
            let after = if i + 2 < end { zrow(i + 2) } else { &[][..] };
            // As in `dense_block`: the maximum from the previous row's sweep, or a sweep.
            let m = match carried_m {
                Some(m) => m,
                None => row_max::<V, E>(z, next),
            };
            let loss = if m.is_finite() {
                let prev_row = pending.take();
                let prev = prev_row.map(|(pr, _, c1, c2, _)| {
                    let g = grow(pr).expect("pending rows have a gradient");
                    PrevGrad::stored(&*e_prev, None, (c1, c2), g, p.stream)
                });
                let h = gp.map_or(0, |g| pair_origin::<V, E>(g.add(r * g_stride), c));
                let ahead = Ahead {
                    next,
                    pf: [after, &[][..]],
                };
                // Without a gradient the exponentials are not needed again: no scratch row.
                let e = gp.map(|_| &mut *e_cur);
                let (sum, rr, next_m) = exp_stats::<V, E>(z, m, tp, e, h, floor > 0.0, ahead, prev);
                if !next.is_empty() {
                    carried = Some(next_m);
                }
                if let Some((pr, pe, c1, c2, pk)) = prev_row {
                    // The previous row's sweep is done: its explicit classes now.
                    let g = grow(pr).expect("pending rows have a gradient");
                    fix_explicit::<V, E>(g, e_prev, pe, (c1, c2, pk), d);
                }
                if sum.is_nan() {
                    // A NaN logit (see `row_max`).
                    if let Some(g) = grow(r) {
                        g.fill(E::from_f32(f32::NAN));
                    }
                    f32::NAN
                } else {
                    let mut loss = mass * sum.ln() + if floor > 0.0 { floor * rr } else { 0.0 };
                    for (cls, w) in entries.iter() {
                        loss += mul0(w, tp.scalar(m - z[cls as usize].to_f32()));
                    }
                    if gp.is_some() {
                        pending = Some((r, entries, k * mass / sum, -k * floor, k));
                        std::mem::swap(&mut e_cur, &mut e_prev);
                    }
                    loss
                }
            } else {
                // A special row: finish the pending one first (it owns `e_prev`).
                if let Some((pr, pe, c1, c2, pk)) = pending.take() {
                    let g = grow(pr).expect("pending rows have a gradient");
                    write_grad::<V, E>(PrevGrad::stored(e_prev, None, (c1, c2), &mut *g, p.stream));
                    fix_explicit::<V, E>(g, e_prev, pe, (c1, c2, pk), d);
                }
                if m == f32::NEG_INFINITY && !has_nan::<V, E>(z) {
                    if let Some(g) = grow(r) {
                        // Probabilities are all zero: g = −k·floor, explicit classes −k·(floor + w).
                        e_cur.fill(0.0);
                        write_grad::<V, E>(PrevGrad::stored(e_cur, None, (0.0, -k * floor), &mut *g, false));
                        fix_explicit::<V, E>(g, e_cur, entries, (0.0, -k * floor, k), d);
                    }
                    if mass > 0.0 {
                        f32::INFINITY
                    } else {
                        0.0
                    }
                } else {
                    // NaN or +∞ in the row.
                    if let Some(g) = grow(r) {
                        g.fill(E::from_f32(f32::NAN));
                    }
                    f32::NAN
                }
            };
            if let Some(rl) = row_losses.as_deref_mut() {
                rl[r] = loss;
            }
            total += loss as f64;
        }
        if let Some((pr, pe, c1, c2, pk)) = pending {
            let g = grow(pr).expect("pending rows have a gradient");
            write_grad::<V, E>(PrevGrad::stored(e_prev, None, (c1, c2), &mut *g, p.stream));
            fix_explicit::<V, E>(g, e_prev, pe, (c1, c2, pk), d);
        }
    }
    total
}

/// Rows `blk.rows` of a cross-entropy problem; returns the sum of their losses.
///
/// # Safety
/// `V`'s CPU requirement; `p` was validated (shapes, strides, labels) and `blk` comes from
/// [`for_row_blocks`](super::for_row_blocks) with the gradient's stride `g_stride`.
#[inline(always)]
unsafe fn ce_block_generic<V: F32x, E: KElem>(
    p: &CeProblem<'_, E>,
    g_stride: usize,
    blk: Block<'_, E>,
) -> f64 {
    let c = p.c;
    let tp = Temp::new(p.t);
    let mut scratch = super::take_scratch(3 * c);
    let (e, rest) = scratch[..3 * c].split_at_mut(c);
    let (e2, d) = rest.split_at_mut(c);
    let Block {
        rows,
        grad,
        row_losses,
    } = blk;
    if let CeTargets::Dense { a, stride } = p.targets {
        // SAFETY: V's CPU requirement is the caller's; `e` and `e2` hold C floats each.
        let g = (grad, g_stride);
        let total = unsafe {
            if tp.unit {
                dense_block::<V, E>(p, (a, stride), rows, g, row_losses, (e, e2), Temp::UNIT)
            } else {
                dense_block::<V, E>(p, (a, stride), rows, g, row_losses, (e, e2), tp.scaled())
            }
        };
        if p.stream {
            // SAFETY: V's CPU requirement is the caller's.
            unsafe { V::stream_fence() };
        }
        super::give_scratch(scratch);
        return total;
    }
    let CeTargets::Structured { s, ignore } = p.targets else {
        unreachable!("dense targets returned above")
    };
    // SAFETY: V's CPU requirement is the caller's; `e`, `e2` and `d` hold C floats each.
    let g = (grad, g_stride);
    let total = unsafe {
        if tp.unit {
            structured_block::<V, E>(p, (s, ignore), rows, g, row_losses, (e, e2, d), Temp::UNIT)
        } else {
            structured_block::<V, E>(p, (s, ignore), rows, g, row_losses, (e, e2, d), tp.scaled())
        }
    };
    if p.stream {
        // SAFETY: V's CPU requirement is the caller's.
        unsafe { V::stream_fence() };
    }
    super::give_scratch(scratch);
    total
}

stamp! {
    /// Rows of a cross-entropy problem on the backend `isa`; returns the sum of their losses.
    pub(crate) fn ce_block<E: KElem>(p: &CeProblem<'_, E>, g_stride: usize, blk: Block<'_, E>) -> f64 = ce_block_generic + bf16;
}
