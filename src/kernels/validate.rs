//! Vectorised check that dense target weights (`f32`, `bf16` or `f16`) are finite and
//! non-negative.
//!
//! It only answers yes or no; on "no" the caller rescans with the scalar loop to report the
//! first offending entry, so errors are identical on every backend.

use super::elem::KElem;
use super::stamp;
use crate::dispatch::Isa;
use crate::simd::F32x;
use rayon::prelude::*;

/// Whether rows `r0..r1` (of `cols` entries, `stride` apart in `a`) hold only finite values
/// `>= 0`. Two cheap accumulations per vector, four independent chains each so the loop is
/// not latency-bound: `fma(v, 0, acc)` stays `0` while every `v` is finite and becomes NaN
/// for `±∞` or NaN; `min` catches negatives (its NaN handling does not matter, NaN is
/// caught by the first).
///
/// # Safety
/// `V`'s CPU requirement; every row `r0..r1` lies inside `a`.
#[inline(always)]
unsafe fn rows_valid_generic<V: F32x, E: KElem>(
    a: &[E],
    stride: usize,
    cols: usize,
    r0: usize,
    r1: usize,
) -> bool {
    let l = V::LANES;
    // SAFETY: V's CPU features are the caller's guarantee; each row spans
    // `a[i·stride .. i·stride + cols]`, inside `a` by the caller's guarantee, and the loads
    // are full vectors below `cols` and one partial vector for the tail.
    unsafe {
        let zero = V::zero();
        let mut fin = [zero; 4];
        let mut lo = [zero; 4];
        for i in r0..r1 {
            let p = a.as_ptr().add(i * stride);
            let mut k = 0;
            while k + 4 * l <= cols {
                for u in 0..4 {
                    let v = E::load::<V>(p.add(k + u * l));
                    fin[u] = v.fma(zero, fin[u]);
                    lo[u] = lo[u].min(v);
                }
                k += 4 * l;
            }
            while k + l <= cols {
                let v = E::load::<V>(p.add(k));
                fin[0] = v.fma(zero, fin[0]);
                lo[0] = lo[0].min(v);
                k += l;
            }
            if k < cols {
                let v = E::load_partial::<V>(p.add(k), cols - k, 0.0);
                fin[1] = v.fma(zero, fin[1]);
                lo[1] = lo[1].min(v);
            }
        }
        let fin = fin[0].add(fin[1]).add(fin[2].add(fin[3]));
        let lo = lo[0].min(lo[1]).min(lo[2].min(lo[3]));
        // `hmax` propagates NaN; `-hmax(-lo)` is the smallest lane.
        fin.hmax() == 0.0 && zero.sub(lo).hmax() <= 0.0
    }
}

stamp! {
    fn rows_valid<E: KElem>(a: &[E], stride: usize, cols: usize, r0: usize, r1: usize) -> bool = rows_valid_generic;
}

/// Whether the `rows × cols` matrix `a` (row stride `stride`) holds only finite values `>= 0`;
/// large matrices are checked on rayon.
pub(crate) fn dense_valid<E: KElem>(isa: Isa, a: &[E], rows: usize, cols: usize, stride: usize) -> bool {
    const BLOCK: usize = 1 << 16;
    let per = (BLOCK / cols.max(1)).max(1);
    if rows * cols < 2 * BLOCK {
        return rows_valid(isa, a, stride, cols, 0, rows);
    }
    (0..rows.div_ceil(per))
        .into_par_iter()
        .all(|b| rows_valid(isa, a, stride, cols, b * per, ((b + 1) * per).min(rows)))
}
