//! Kernels: each written once, generic over the vector trait [`F32x`](crate::simd::F32x), and
//! stamped per backend inside a `#[target_feature]` entry point by [`stamp!`].
//!
//! The row-block driver [`for_row_blocks`] splits a call into blocks of rows whose size depends
//! only on the shape (never on the thread count), runs them on rayon when the problem is
//! large enough, and adds the blocks' partial losses in block order: results are identical
//! whatever the number of threads.

pub(crate) mod cross_entropy;
pub(crate) mod elem;
pub(crate) mod infonce;
#[cfg(target_arch = "x86_64")]
pub(crate) mod infonce_bf16;
pub(crate) mod infonce_structured;
pub(crate) mod validate;

use rayon::prelude::*;
use std::ops::Range;

/// Defines `$name(isa, args…)`, which runs the generic `$generic::<V>(args…)` with `V` the
/// vector type of the backend `isa` proves available, compiled inside a `#[target_feature]`
/// function so that every `#[inline(always)]` vector method is inlined with the backend's
/// instructions. `= generic + bf16` adds a third x86 entry point, taken on AVX-512 CPUs that
/// also have AVX-512 BF16, with `V = Avx512<true>` (hardware `bf16` rounding).
macro_rules! stamp {
    ($(#[$meta:meta])* $vis:vis fn $name:ident $(<$($g:ident : $b:ident),*>)? ($($arg:ident : $ty:ty),* $(,)?) -> $ret:ty = $generic:ident;) => {
        crate::kernels::stamp!(@go false; $(#[$meta])* $vis fn $name $(<$($g: $b),*>)? ($($arg: $ty),*) -> $ret = $generic;);
    };
    ($(#[$meta:meta])* $vis:vis fn $name:ident $(<$($g:ident : $b:ident),*>)? ($($arg:ident : $ty:ty),* $(,)?) -> $ret:ty = $generic:ident + bf16;) => {
        crate::kernels::stamp!(@go true; $(#[$meta])* $vis fn $name $(<$($g: $b),*>)? ($($arg: $ty),*) -> $ret = $generic;);
    };
    (@go $bf16:literal; $(#[$meta:meta])* $vis:vis fn $name:ident $(<$($g:ident : $b:ident),*>)? ($($arg:ident : $ty:ty),*) -> $ret:ty = $generic:ident;) => {
        $(#[$meta])*
        $vis fn $name $(<$($g: $b),*>)? (isa: crate::dispatch::Isa, $($arg: $ty),*) -> $ret {
            match isa.backend() {
                #[cfg(target_arch = "x86_64")]
                crate::Backend::Avx512 => {
                    if $bf16 && isa.avx512_bf16() {
                        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c,avx512bf16")]
                        unsafe fn imp $(<$($g: $b),*>)? ($($arg: $ty),*) -> $ret {
                            // SAFETY: only called when the CPU has AVX-512 F/BW/VL/DQ and
                            // BF16, `Avx512<true>`'s requirement.
                            unsafe { $generic::<crate::simd::avx512::Avx512<true> $($(, $g)*)?>($($arg),*) }
                        }
                        // SAFETY: `isa` proves AVX-512 F/BW/VL/DQ and BF16 (`Isa::resolve`).
                        return unsafe { imp $(::<$($g),*>)? ($($arg),*) };
                    }
                    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx2,fma,f16c")]
                    unsafe fn imp $(<$($g: $b),*>)? ($($arg: $ty),*) -> $ret {
                        // SAFETY: this function is only called when the CPU has AVX-512
                        // F/BW/VL/DQ, which is `Avx512`'s requirement (and implies AVX2, FMA
                        // and F16C).
                        unsafe { $generic::<crate::simd::avx512::Avx512 $($(, $g)*)?>($($arg),*) }
                    }
                    // SAFETY: an `Isa` holding `Avx512` is only made after the CPU was probed
                    // for AVX-512 F/BW/VL/DQ (`Isa::resolve`).
                    unsafe { imp $(::<$($g),*>)? ($($arg),*) }
                }
                #[cfg(target_arch = "x86_64")]
                crate::Backend::Avx2 => {
                    #[target_feature(enable = "avx2,fma,f16c")]
                    unsafe fn imp $(<$($g: $b),*>)? ($($arg: $ty),*) -> $ret {
                        // SAFETY: this function is only called when the CPU has AVX2, FMA and
                        // F16C, which is `Avx2`'s requirement.
                        unsafe { $generic::<crate::simd::avx2::Avx2 $($(, $g)*)?>($($arg),*) }
                    }
                    // SAFETY: an `Isa` holding `Avx2` is only made after the CPU was probed
                    // for AVX2, FMA and F16C (`Isa::resolve`).
                    unsafe { imp $(::<$($g),*>)? ($($arg),*) }
                }
                #[cfg(target_arch = "aarch64")]
                crate::Backend::Neon => {
                    #[target_feature(enable = "neon")]
                    unsafe fn imp $(<$($g: $b),*>)? ($($arg: $ty),*) -> $ret {
                        // SAFETY: this function is only called when the CPU has NEON, which
                        // is `Neon`'s requirement.
                        unsafe { $generic::<crate::simd::neon::Neon $($(, $g)*)?>($($arg),*) }
                    }
                    // SAFETY: an `Isa` holding `Neon` is only made after the CPU was probed
                    // for NEON (`Isa::resolve`).
                    unsafe { imp $(::<$($g),*>)? ($($arg),*) }
                }
                _ => {
                    // The scalar backend computes true fused multiply-adds (`f32::mul_add`);
                    // where the CPU has FMA, compile it with the instruction instead of the
                    // software routine (same results, two orders of magnitude faster).
                    #[cfg(target_arch = "x86_64")]
                    if std::arch::is_x86_feature_detected!("fma") {
                        #[target_feature(enable = "fma")]
                        unsafe fn imp $(<$($g: $b),*>)? ($($arg: $ty),*) -> $ret {
                            // SAFETY: the scalar vector type has no CPU requirement; FMA was
                            // detected by the caller.
                            unsafe { $generic::<crate::simd::scalar::S1 $($(, $g)*)?>($($arg),*) }
                        }
                        // SAFETY: FMA was just detected.
                        return unsafe { imp $(::<$($g),*>)? ($($arg),*) };
                    }
                    // SAFETY: the scalar vector type has no CPU requirement.
                    unsafe { $generic::<crate::simd::scalar::S1 $($(, $g)*)?>($($arg),*) }
                }
            }
        }
    };
}
pub(crate) use stamp;

/// Logit elements per row block (a block is the unit of parallel work).
const BLOCK_ELEMS: usize = 1 << 15;
/// Raising blocks to `min_rows` rows (see [`for_row_blocks`]) stops short of leaving fewer
/// blocks than this, so that machines with many cores still get work for each.
const MIN_LIFTED_BLOCKS: usize = 64;
/// Below this many logit elements a call stays on the calling thread.
const PARALLEL_MIN_ELEMS: usize = 1 << 17;

/// One block of rows: their range, their gradient rows (a slice whose row `r` starts at
/// `r · stride`) and their row-loss outputs.
pub(crate) struct Block<'a, E = f32> {
    pub rows: Range<usize>,
    pub grad: Option<&'a mut [E]>,
    pub row_losses: Option<&'a mut [f32]>,
}

/// Runs `body` over blocks of rows (in parallel for large problems) and returns the sum of
/// the partial results in block order. `grad` is `(data, stride)` of an `n`-row gradient.
/// Blocks hold [`BLOCK_ELEMS`] logits, but at least `min_rows` rows while that still leaves
/// [`MIN_LIFTED_BLOCKS`] blocks (the cross-entropy kernels pipeline consecutive rows of a
/// block). The size depends on the shape only, never on the thread count.
pub(crate) fn for_row_blocks<E: Send, F>(
    (n, c, min_rows): (usize, usize, usize),
    grad: Option<(&mut [E], usize)>,
    row_losses: Option<&mut [f32]>,
    body: F,
) -> f64
where
    F: Fn(Block<'_, E>) -> f64 + Sync,
{
    let lift = min_rows.min(n / MIN_LIFTED_BLOCKS).max(1);
    let rows_per_block = (BLOCK_ELEMS / c.max(1)).max(lift).clamp(1, n.max(1));
    let nblocks = n.div_ceil(rows_per_block);
    let mut blocks: Vec<Block<'_, E>> = (0..nblocks)
        .map(|b| Block {
            rows: b * rows_per_block..((b + 1) * rows_per_block).min(n),
            grad: None,
            row_losses: None,
        })
        .collect();
    if let Some((g, stride)) = grad {
        for (blk, chunk) in blocks.iter_mut().zip(g.chunks_mut(rows_per_block * stride)) {
            blk.grad = Some(chunk);
        }
    }
    if let Some(rl) = row_losses {
        for (blk, chunk) in blocks.iter_mut().zip(rl.chunks_mut(rows_per_block)) {
            blk.row_losses = Some(chunk);
        }
    }
    let partials: Vec<f64> = if n.saturating_mul(c) >= PARALLEL_MIN_ELEMS && nblocks > 1 {
        blocks.into_par_iter().map(&body).collect()
    } else {
        blocks.into_iter().map(&body).collect()
    };
    partials.iter().sum()
}

thread_local! {
    /// Per-thread scratch, reused across calls: large fresh allocations are mapped anew by
    /// the allocator and page-fault on first touch every call.
    static SCRATCH: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// This thread's scratch buffer, at least `len` floats long (contents unspecified). Hand it
/// back with [`give_scratch`] so the next call reuses it. (No closure-taking API: kernel
/// code inside a closure would be compiled without the entry point's target features.)
pub(crate) fn take_scratch(len: usize) -> Vec<f32> {
    let mut buf = SCRATCH.with(|cell| cell.take());
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    buf
}

/// Returns a buffer from [`take_scratch`] for reuse by this thread.
pub(crate) fn give_scratch(buf: Vec<f32>) {
    SCRATCH.with(|cell| cell.set(buf));
}
