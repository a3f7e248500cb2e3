//! Backend selection and routing.
//!
//! A [`Backend`] names an instruction set. The CPU is probed once per process; the process-wide
//! default is the fastest available backend unless the environment variable `SOFTNCE_BACKEND`
//! (`scalar|avx2|avx512|neon|auto`, read once) says otherwise; each loss configuration can also
//! force a backend for its calls. Forcing a backend the CPU lacks is an [`Error`], never a crash.
//!
//! Inside the crate a resolved backend is an [`Isa`]: a token that can only be made after the
//! CPU was checked, so the kernels' `#[target_feature]` entry points (see `kernels`) are only
//! ever reached on CPUs that have the features.

use crate::error::{Error, Result};
use std::fmt;
use std::str::FromStr;
use std::sync::OnceLock;

/// An instruction set the kernels are compiled for.
///
/// ```
/// use softnce::{available_backends, Backend};
/// // The scalar backend runs everywhere.
/// assert!(Backend::Scalar.is_available());
/// assert!(available_backends().contains(&Backend::Scalar));
/// assert_eq!("avx2".parse::<Backend>().unwrap(), Backend::Avx2);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    /// Portable scalar code (one lane; the same kernels as the SIMD backends).
    Scalar,
    /// x86-64 AVX2 with FMA and F16C (8 lanes).
    Avx2,
    /// x86-64 AVX-512 F/BW/VL/DQ (16 lanes).
    Avx512,
    /// AArch64 NEON (4 lanes).
    Neon,
}

impl Backend {
    /// Every backend, fastest last.
    pub const ALL: [Backend; 4] = [Backend::Scalar, Backend::Neon, Backend::Avx2, Backend::Avx512];

    /// Whether this CPU can run the backend (probed once, then cached).
    pub fn is_available(self) -> bool {
        static PROBE: OnceLock<[bool; 4]> = OnceLock::new();
        let probe = PROBE.get_or_init(|| Backend::ALL.map(probe));
        probe[Backend::ALL.iter().position(|&b| b == self).unwrap_or(0)]
    }

    /// The backend's name as `SOFTNCE_BACKEND` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Scalar => "scalar",
            Backend::Avx2 => "avx2",
            Backend::Avx512 => "avx512",
            Backend::Neon => "neon",
        }
    }

    /// Number of `f32` lanes in one vector of this backend.
    pub fn lanes(self) -> usize {
        match self {
            Backend::Scalar => 1,
            Backend::Avx2 => 8,
            Backend::Avx512 => 16,
            Backend::Neon => 4,
        }
    }

    /// The fastest backend this CPU can run (ignores `SOFTNCE_BACKEND`).
    pub fn best() -> Backend {
        *available_backends().last().unwrap_or(&Backend::Scalar)
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Backend {
    type Err = Error;

    /// Parses `scalar`, `avx2`, `avx512` or `neon` (case-insensitive).
    fn from_str(s: &str) -> Result<Backend> {
        Backend::ALL
            .into_iter()
            .find(|b| b.name().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| Error::UnknownBackend(s.to_string()))
    }
}

fn probe(b: Backend) -> bool {
    match b {
        Backend::Scalar => true,
        #[cfg(target_arch = "x86_64")]
        Backend::Avx2 => {
            is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
        }
        #[cfg(target_arch = "x86_64")]
        Backend::Avx512 => {
            is_x86_feature_detected!("avx512f")
                && is_x86_feature_detected!("avx512bw")
                && is_x86_feature_detected!("avx512vl")
                && is_x86_feature_detected!("avx512dq")
        }
        #[cfg(target_arch = "aarch64")]
        Backend::Neon => std::arch::is_aarch64_feature_detected!("neon"),
        #[allow(unreachable_patterns)]
        _ => false,
    }
}

/// The backends this CPU can run, slowest first (always starts with [`Backend::Scalar`]).
pub fn available_backends() -> Vec<Backend> {
    Backend::ALL.into_iter().filter(|b| b.is_available()).collect()
}

/// The backend calls use when their configuration does not force one: `SOFTNCE_BACKEND` if it
/// is set to something other than `auto` (or empty), otherwise [`Backend::best`]. The
/// variable is read once per process.
///
/// # Errors
/// [`Error::UnknownBackend`] if the variable holds an unknown name,
/// [`Error::BackendUnavailable`] if it names a backend this CPU cannot run.
pub fn default_backend() -> Result<Backend> {
    static DEFAULT: OnceLock<Result<Backend>> = OnceLock::new();
    DEFAULT
        .get_or_init(|| match std::env::var("SOFTNCE_BACKEND") {
            Ok(v) if !v.trim().is_empty() && !v.trim().eq_ignore_ascii_case("auto") => {
                let b: Backend = v.parse()?;
                if b.is_available() {
                    Ok(b)
                } else {
                    Err(Error::BackendUnavailable(b))
                }
            }
            _ => Ok(Backend::best()),
        })
        .clone()
}

/// A backend this CPU is known to support: the proof the kernels' entry points need. With
/// [`Backend::Avx512`] it also records whether the CPU has AVX-512 BF16 (probed once per
/// call, not per block).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Isa(Backend, bool);

impl Isa {
    /// The backend for a call: the forced one, or the process default.
    pub(crate) fn resolve(forced: Option<Backend>) -> Result<Isa> {
        let b = match forced {
            Some(b) => b,
            None => default_backend()?,
        };
        if b.is_available() {
            #[cfg(target_arch = "x86_64")]
            let bf16 = b == Backend::Avx512 && std::arch::is_x86_feature_detected!("avx512bf16");
            #[cfg(not(target_arch = "x86_64"))]
            let bf16 = false;
            Ok(Isa(b, bf16))
        } else {
            Err(Error::BackendUnavailable(b))
        }
    }

    /// The backend.
    pub(crate) fn backend(self) -> Backend {
        self.0
    }

    /// Whether the backend is AVX-512 on a CPU that also has AVX-512 BF16 (read by the x86
    /// entry points only).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub(crate) fn avx512_bf16(self) -> bool {
        self.1
    }
}

// ---------------------------------------------------------------------------------------
// Routing of validated calls.

use crate::kernels::cross_entropy::{ce_block, kernel_temperature_ok, CeProblem, CeTargets, RowScale};
use crate::kernels::elem::{narrow_row, widen_row, KElem};
use crate::kernels::for_row_blocks;
use crate::kernels::infonce::{grad_targets, nce_block, Bf16Data, NceProblem};
use crate::kernels::infonce_structured::{snce_block, FlatTargets, SnceProblem};
use crate::loss::{HardCrossEntropy, Outputs, Reduction, SoftCrossEntropy, SoftInfoNce};
use crate::reference::{self, RefOutput, Request};
use crate::targets::{Structured, Targets};
use crate::view::{Element, MatMut, MatRef};
use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};

fn request<'o, T: Element>(outputs: &Outputs<'o, T>) -> Request<'o> {
    Request {
        grad_logits: outputs.grad_logits.is_some(),
        grad_targets: outputs.grad_targets.is_some(),
        upstream: outputs.upstream,
    }
}

/// Copies an `f64` reference result into the caller's buffers.
fn write<T: Element>(r: RefOutput, outputs: Outputs<'_, T>) -> f32 {
    if let Some(rows) = outputs.row_losses {
        for (o, &v) in rows.iter_mut().zip(&r.row_losses) {
            *o = v as f32;
        }
    }
    for (buf, vals) in [
        (outputs.grad_logits, &r.grad_logits),
        (outputs.grad_targets, &r.grad_targets),
    ] {
        if let Some(mut g) = buf {
            let c = g.cols();
            for i in 0..g.rows() {
                for (o, &v) in g.row_mut(i).iter_mut().zip(&vals[i * c..(i + 1) * c]) {
                    *o = T::from_f64(v);
                }
            }
        }
    }
    r.loss as f32
}

pub(crate) fn soft_infonce<T: Element>(
    isa: Isa,
    cfg: &SoftInfoNce<'_>,
    logits: MatRef<'_, T>,
    targets: &Targets<'_, T>,
    outputs: Outputs<'_, T>,
) -> Result<f32> {
    if kernel_temperature_ok(cfg.get_temperature()) {
        if let Some(st) = targets.structured() {
            let m = targets.rows();
            return Ok(match kind::<T>() {
                Kind::F32 => structured_infonce::<T, f32>(isa, cfg, logits, m, &st, outputs),
                Kind::Bf16 => structured_infonce::<T, half::bf16>(isa, cfg, logits, m, &st, outputs),
                Kind::F16 => structured_infonce::<T, half::f16>(isa, cfg, logits, m, &st, outputs),
            });
        }
        if let (Targets::Dense(a), false) = (targets, matches!(kind::<T>(), Kind::F32)) {
            return Ok(soft_infonce_widened(isa, cfg, logits, *a, outputs));
        }
    }
    let dense = match targets {
        Targets::Dense(a) => f32::cast(a.data()).map(|d| (d, a.stride(), a.rows())),
        _ => None,
    };
    let z = f32::cast(logits.data()).filter(|_| kernel_temperature_ok(cfg.get_temperature()));
    let (Some(z), Some((a, a_stride, m))) = (z, dense) else {
        // The reference scans dense target weights itself, even with `check_targets(false)`.
        let r = reference::soft_infonce(cfg, logits, targets, &request(&outputs))?;
        return Ok(write(r, outputs));
    };
    let outputs = Outputs {
        row_losses: outputs.row_losses,
        grad_logits: outputs.grad_logits.map(f32_mat),
        grad_targets: outputs.grad_targets.map(f32_mat),
        upstream: outputs.upstream,
    };
    let z = MatRef::with_stride(z, logits.rows(), logits.cols(), logits.stride()).expect("validated");
    let a = MatRef::with_stride(a, m, logits.cols(), a_stride).expect("validated");
    Ok(dense_infonce(isa, cfg, z, a, None, outputs))
}

/// `T` is `f32` here: the same matrix with its element type spelled out.
fn f32_mat<T: Element>(g: MatMut<'_, T>) -> MatMut<'_, f32> {
    let (data, rows, cols, stride) = g.into_parts();
    MatMut::with_stride(f32::cast_mut(data).expect("f32 path"), rows, cols, stride).expect("same shape")
}

/// Dense soft InfoNCE on the fused kernel (`f32` data, the temperature checked); `bf16`
/// carries the original bits when the tile products run on the AVX-512 BF16 dot product.
fn dense_infonce(
    isa: Isa,
    cfg: &SoftInfoNce<'_>,
    logits: MatRef<'_, f32>,
    targets: MatRef<'_, f32>,
    bf16: Option<Bf16Data<'_>>,
    outputs: Outputs<'_, f32>,
) -> f32 {
    let (z, a, a_stride, m) = (logits.data(), targets.data(), targets.stride(), targets.rows());
    let (n, c) = (logits.rows(), logits.cols());
    let log_eta: Vec<f32> = cfg.log_noise_f64(c).iter().map(|&v| v as f32).collect();
    // b_j = a_j · log η in f64: S = z·a/t − b subtracts two terms of similar size (with
    // uniform η, b_j = −ln C · Σ_c a_jc), so b must not add f32 rounding of its own.
    let mut b = vec![0.0f32; m];
    b.par_chunks_mut(64).enumerate().for_each(|(k, out)| {
        for (q, o) in out.iter_mut().enumerate() {
            let j = k * 64 + q;
            *o = dot_f64(&a[j * a_stride..j * a_stride + c], &log_eta) as f32;
        }
    });
    let reduction = cfg.get_reduction();
    let p = NceProblem {
        z,
        z_stride: logits.stride(),
        c,
        a,
        a_stride,
        m,
        inv_t: 1.0 / cfg.get_temperature(),
        log_eta: &log_eta,
        b: &b,
        p0: cfg.get_offset(),
        scale: row_scale(reduction, n, outputs.upstream),
        bf16,
    };
    let mut loss = vec![0.0f32; n];
    let mut lse = vec![0.0f32; n];
    let rows_per_block = infonce_rows_per_block(n);
    let grad = elem_rows::<f32, f32>(outputs.grad_logits);
    let total: f64 = {
        let blocks: Vec<_> = loss
            .chunks_mut(rows_per_block)
            .zip(lse.chunks_mut(rows_per_block))
            .collect();
        let gblocks = grad_blocks(grad, rows_per_block, blocks.len());
        let work: Vec<_> = blocks.into_iter().zip(gblocks).enumerate().collect();
        let run = |(b, ((l, e), g)): NceWork<'_>| {
            let r0 = b * rows_per_block;
            nce_block(isa, &p, r0..r0 + l.len(), l, e, g)
        };
        let partials: Vec<f64> = if n * m * c >= 1 << 20 && work.len() > 1 {
            work.into_par_iter().map(run).collect()
        } else {
            work.into_iter().map(run).collect()
        };
        partials.iter().sum()
    };
    if let Some(gt) = outputs.grad_targets {
        let (out, rows, _, stride) = gt.into_parts();
        let finite = |i: usize| {
            z[i * p.z_stride..i * p.z_stride + c]
                .iter()
                .all(|x| x.is_finite())
        };
        let poisoned = (0..n).any(|i| {
            z[i * p.z_stride..i * p.z_stride + c]
                .iter()
                .any(|x| x.is_nan() || *x == f32::INFINITY)
        });
        if poisoned {
            // A NaN (or +∞) row makes every P of its row NaN, and through it every entry.
            for j in 0..rows {
                out[j * stride..j * stride + c].fill(f32::NAN);
            }
        } else {
            let (clean, dirty): (Vec<usize>, Vec<usize>) = (0..n).partition(|&i| finite(i));
            // One packed tile of targets per task (16 vectors of the backend's width).
            let tb = 16 * isa.backend().lanes();
            let chunks: Vec<(usize, &mut [f32])> = out
                .chunks_mut(tb * stride)
                .take(rows.div_ceil(tb))
                .enumerate()
                .collect();
            chunks.into_par_iter().for_each(|(k, ch)| {
                let j0 = k * tb;
                let j1 = (j0 + tb).min(rows);
                grad_targets(isa, &p, (&clean, &dirty), &lse, j0..j1, (ch, stride));
            });
        }
    }
    if let Some(rl) = outputs.row_losses {
        rl.copy_from_slice(&loss);
    }
    reduced(reduction, total, n)
}

/// The rows of `m` widened into the contiguous `f32` matrix `out` (all threads).
fn widen_into<T: Element>(isa: Isa, m: MatRef<'_, T>, out: &mut [f32]) {
    fn rows<T: Element, E: KElem>(isa: Isa, m: MatRef<'_, T>, out: &mut [f32]) {
        let c = m.cols();
        out.par_chunks_mut(c.max(1)).enumerate().for_each(|(i, row)| {
            widen_row(isa, E::cast(m.row(i)).expect("E is T"), row);
        });
    }
    match kind::<T>() {
        Kind::F32 => rows::<T, f32>(isa, m, out),
        Kind::Bf16 => rows::<T, half::bf16>(isa, m, out),
        Kind::F16 => rows::<T, half::f16>(isa, m, out),
    }
}

/// Rounds a contiguous `f32` result into the caller's (strided) output, once per element.
fn narrow_into<T: Element>(isa: Isa, src: &[f32], dst: MatMut<'_, T>) {
    fn rows<T: Element, E: KElem>(isa: Isa, src: &[f32], dst: MatMut<'_, T>) {
        let (data, rows, cols, stride) = dst.into_parts();
        data.par_chunks_mut(stride.max(1))
            .take(rows)
            .zip(src.par_chunks(cols.max(1)))
            .for_each(|(d, s)| narrow_row(isa, s, E::cast_mut(&mut d[..cols]).expect("E is T")));
    }
    match kind::<T>() {
        Kind::F32 => rows::<T, f32>(isa, src, dst),
        Kind::Bf16 => rows::<T, half::bf16>(isa, src, dst),
        Kind::F16 => rows::<T, half::f16>(isa, src, dst),
    }
}

/// Soft-target InfoNCE with dense targets on `bf16`/`f16` data: the `f32` kernel on widened
/// copies of the logits and targets (`N × C` and `M × C` temporaries, converted with the
/// backend's vector conversions), the gradients rounded once at the end. With AVX-512 BF16,
/// `bf16` tile products run on the original bits (`bf16_bits`); the widened copies serve
/// the rest (rows with non-finite logits, the epilogue, the target gradient).
fn soft_infonce_widened<T: Element>(
    isa: Isa,
    cfg: &SoftInfoNce<'_>,
    logits: MatRef<'_, T>,
    targets: MatRef<'_, T>,
    outputs: Outputs<'_, T>,
) -> f32 {
    let (n, c, m) = (logits.rows(), logits.cols(), targets.rows());
    let (gn, gm) = (
        if outputs.grad_logits.is_some() { n * c } else { 0 },
        if outputs.grad_targets.is_some() { m * c } else { 0 },
    );
    with_wide_scratch(n * c + m * c + gn + gm, |buf| {
        let (z, rest) = buf.split_at_mut(n * c);
        let (dense, rest) = rest.split_at_mut(m * c);
        let (g, gt) = rest.split_at_mut(gn);
        widen_into(isa, logits, z);
        widen_into(isa, targets, dense);
        let (z, dense) = (&*z, &*dense);
        let out32 = Outputs {
            row_losses: outputs.row_losses,
            grad_logits: outputs
                .grad_logits
                .as_ref()
                .map(|_| MatMut::new(&mut *g, n, c).expect("same shape")),
            grad_targets: outputs
                .grad_targets
                .as_ref()
                .map(|_| MatMut::new(&mut *gt, m, c).expect("same shape")),
            upstream: outputs.upstream,
        };
        let z32 = MatRef::new(z, n, c).expect("same shape");
        let a32 = MatRef::new(dense, m, c).expect("same shape");
        // With AVX-512 BF16, the tile products run on the original bits.
        let loss = dense_infonce(isa, cfg, z32, a32, bf16_bits(isa, &logits, &targets), out32);
        if let Some(dst) = outputs.grad_logits {
            narrow_into(isa, g, dst);
        }
        if let Some(dst) = outputs.grad_targets {
            narrow_into(isa, gt, dst);
        }
        loss
    })
}

/// Largest widened scratch (in floats, 16 MiB) kept on a thread between calls.
const WIDE_KEEP: usize = 4 << 20;

thread_local! {
    /// The widened copies of [`soft_infonce_widened`], reused across calls on this thread:
    /// fresh megabyte-sized buffers page-fault on every call, which at 256 × 256 × 1000
    /// cost more than the kernel. Larger requests get a fresh buffer (their product
    /// dwarfs the page faults) so that no more than [`WIDE_KEEP`] floats stay allocated.
    static WIDE: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Runs `f` on `len` floats of scratch (contents unspecified).
fn with_wide_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    if len > WIDE_KEEP {
        return f(&mut vec![0.0f32; len]);
    }
    let mut buf = WIDE.with(|cell| cell.take());
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let r = f(&mut buf[..len]);
    WIDE.with(|cell| cell.set(buf));
    r
}

/// The raw bits of `bf16` logits and targets when dense InfoNCE can run its tile products on
/// the AVX-512 BF16 dot product: the backend is AVX-512 and the CPU has AVX-512 BF16.
fn bf16_bits<'a, T: Element>(
    isa: Isa,
    logits: &MatRef<'a, T>,
    targets: &MatRef<'a, T>,
) -> Option<Bf16Data<'a>> {
    #[cfg(target_arch = "x86_64")]
    if isa.avx512_bf16() {
        let z = half::bf16::cast(logits.data())?;
        let a = half::bf16::cast(targets.data())?;
        return Some(Bf16Data {
            z: bits(z),
            z_stride: logits.stride(),
            a: bits(a),
            a_stride: targets.stride(),
        });
    }
    let _ = (isa, logits, targets);
    None
}

/// The bits of `bf16` values.
#[cfg(target_arch = "x86_64")]
fn bits(v: &[half::bf16]) -> &[u16] {
    use half::slice::HalfFloatSliceExt;
    v.reinterpret_cast()
}

/// One block of structured InfoNCE rows: its index, its losses, its gradient rows and stride.
type SnceWork<'a, E> = (usize, (&'a mut [f32], Option<(&'a mut [E], usize)>));

/// Soft-target InfoNCE on structured targets (gathers; see `kernels::infonce_structured`).
/// `E` is the caller's element type `T`; `m` the number of target rows.
fn structured_infonce<T: Element, E: KElem>(
    isa: Isa,
    cfg: &SoftInfoNce<'_>,
    logits: MatRef<'_, T>,
    m: usize,
    s: &Structured<'_>,
    outputs: Outputs<'_, T>,
) -> f32 {
    let z = E::cast(logits.data()).expect("E is the caller's element type");
    let (n, c, z_stride) = (logits.rows(), logits.cols(), logits.stride());
    let log_eta: Vec<f32> = cfg.log_noise_f64(c).iter().map(|&v| v as f32).collect();
    let flat = FlatTargets::new(s, m, c);
    let reduction = cfg.get_reduction();
    let p = SnceProblem {
        z,
        z_stride,
        c,
        inv_t: 1.0 / cfg.get_temperature(),
        log_eta: &log_eta,
        targets: &flat,
        p0: cfg.get_offset(),
        scale: row_scale(reduction, n, outputs.upstream),
    };
    let mut loss = vec![0.0f32; n];
    let rows_per_block = 16usize;
    let grad = elem_rows::<T, E>(outputs.grad_logits);
    let blocks: Vec<&mut [f32]> = loss.chunks_mut(rows_per_block).collect();
    let gblocks = grad_blocks(grad, rows_per_block, blocks.len());
    let work: Vec<_> = blocks.into_iter().zip(gblocks).enumerate().collect();
    let run = |(b, (l, g)): SnceWork<'_, E>| {
        let r0 = b * rows_per_block;
        snce_block(isa, &p, r0..r0 + l.len(), l, g)
    };
    let partials: Vec<f64> = if n * (c + m) >= 1 << 16 && work.len() > 1 {
        work.into_par_iter().map(run).collect()
    } else {
        work.into_iter().map(run).collect()
    };
    let total: f64 = partials.iter().sum();
    if let Some(rl) = outputs.row_losses {
        rl.copy_from_slice(&loss);
    }
    reduced(reduction, total, n)
}

/// `Σ x_k y_k` in f64 with eight independent partial sums (so it vectorises without
/// reassociating a single chain).
fn dot_f64(x: &[f32], y: &[f32]) -> f64 {
    let mut acc = [0.0f64; 8];
    let mut xs = x.chunks_exact(8);
    let mut ys = y.chunks_exact(8);
    for (xc, yc) in (&mut xs).zip(&mut ys) {
        for q in 0..8 {
            acc[q] += xc[q] as f64 * yc[q] as f64;
        }
    }
    for (&a, &b) in xs.remainder().iter().zip(ys.remainder()) {
        acc[0] += a as f64 * b as f64;
    }
    acc.iter().sum()
}

/// One block of dense InfoNCE rows: its index, its loss and log-sum-exp outputs, and its
/// gradient rows with their stride.
type NceWork<'a> = (
    usize,
    ((&'a mut [f32], &'a mut [f32]), Option<(&'a mut [f32], usize)>),
);

/// Logit rows per block ("slab") of dense InfoNCE: a multiple of the 8-row micro-kernel,
/// at most the kernel's `MB`.
fn infonce_rows_per_block(n: usize) -> usize {
    // Large slabs amortise the packing of each target tile over many rows, at least two keep
    // both cores busy, and at most `MB` rows keep a slab's scores in L2 and each thread's
    // scratch near 1 MiB (the peak memory stays within 10 % of the inputs and gradient).
    n.div_ceil(2)
        .div_ceil(8)
        .clamp(1, crate::kernels::infonce::MB / 8)
        * 8
}

/// Runs a cross-entropy problem on the kernels in the caller's element type; `count` is the
/// mean's denominator.
/// Runs a cross-entropy problem on the kernels. With `check` (dense targets only), the
/// kernels check the weights as they read them and set the flag on a suspect row.
fn run_ce<T: Element>(
    isa: Isa,
    logits: MatRef<'_, T>,
    (t, check): (f32, Option<&AtomicBool>),
    targets: CeTargets<'_, T>,
    (reduction, count): (Reduction, usize),
    outputs: Outputs<'_, T>,
) -> f32 {
    let tc = (t, check);
    match kind::<T>() {
        Kind::F32 => ce_on::<T, f32>(isa, logits, tc, targets, (reduction, count), outputs),
        Kind::Bf16 => ce_on::<T, half::bf16>(isa, logits, tc, targets, (reduction, count), outputs),
        Kind::F16 => ce_on::<T, half::f16>(isa, logits, tc, targets, (reduction, count), outputs),
    }
}

/// The fewest rows an `f32` cross-entropy block holds (see [`ce_on`]).
const PIPELINE_ROWS: usize = 16;

/// [`run_ce`] with `E` the caller's element type `T`.
fn ce_on<T: Element, E: KElem>(
    isa: Isa,
    logits: MatRef<'_, T>,
    (t, check): (f32, Option<&AtomicBool>),
    targets: CeTargets<'_, T>,
    (reduction, count): (Reduction, usize),
    outputs: Outputs<'_, T>,
) -> f32 {
    fn cast<T: Element, E: KElem>(d: &[T]) -> &[E] {
        E::cast(d).expect("E is the caller's element type")
    }
    let (n, c) = (logits.rows(), logits.cols());
    let p = CeProblem {
        z: cast::<T, E>(logits.data()),
        z_stride: logits.stride(),
        c,
        t,
        targets: match targets {
            CeTargets::Dense { a, stride } => CeTargets::Dense {
                a: cast::<T, E>(a),
                stride,
            },
            CeTargets::Structured { s, ignore } => CeTargets::Structured { s, ignore },
        },
        scale: row_scale(reduction, count, outputs.upstream),
        stream: stream_gradient(n, c),
        check: check.filter(|_| matches!(targets, CeTargets::Dense { .. })),
    };
    let grad = elem_rows::<T, E>(outputs.grad_logits);
    let g_stride = grad.as_ref().map_or(0, |g| g.1);
    // f32 rows are pipelined in blocks of at least PIPELINE_ROWS rows (the gradient sweep of
    // one row runs inside the next row's exp sweep). Measured at 4096 × 32000 (2 threads),
    // that is 10-25 % faster than one row per block for f32, dense or structured, whose rows
    // wait on memory; the half-precision rows are bound by their conversions instead, and
    // there the fused loop is slower (f16 by ~15 %, in cache too; bf16 even).
    let min_rows = if E::IS_F32 { PIPELINE_ROWS } else { 1 };
    let total = for_row_blocks((n, c, min_rows), grad, outputs.row_losses, |blk| {
        ce_block(isa, &p, g_stride, blk)
    });
    reduced(reduction, total, count)
}

/// The element types the kernels take.
#[derive(Clone, Copy)]
enum Kind {
    F32,
    Bf16,
    F16,
}

fn kind<T: Element>() -> Kind {
    use std::any::TypeId;
    if TypeId::of::<T>() == TypeId::of::<half::bf16>() {
        Kind::Bf16
    } else if TypeId::of::<T>() == TypeId::of::<half::f16>() {
        Kind::F16
    } else {
        Kind::F32
    }
}

/// The gradient output as kernel elements `E` (the caller's own type) and its row stride.
fn elem_rows<T: Element, E: KElem>(g: Option<MatMut<'_, T>>) -> Option<(&mut [E], usize)> {
    g.map(|g| {
        let (data, _, _, stride) = g.into_parts();
        (E::cast_mut(data).expect("E is the caller's element type"), stride)
    })
}

/// Gradients of at least this many bytes in `f32` (16 Mi elements, whatever the element type)
/// are written with non-temporal stores: they cannot stay in cache anyway, and streaming
/// stores skip the read for ownership.
const STREAM_MIN_BYTES: usize = 64 << 20;

fn stream_gradient(n: usize, c: usize) -> bool {
    n.saturating_mul(c).saturating_mul(4) >= STREAM_MIN_BYTES
}

/// Splits gradient rows into `nblocks` blocks of `rows_per_block` rows (`None` for each block
/// when no gradient is requested).
fn grad_blocks<E>(
    grad: Option<(&mut [E], usize)>,
    rows_per_block: usize,
    nblocks: usize,
) -> Vec<Option<(&mut [E], usize)>> {
    let mut blocks: Vec<_> = match grad {
        Some((g, stride)) => g
            .chunks_mut(rows_per_block * stride)
            .map(|ch| Some((ch, stride)))
            .collect(),
        None => Vec::new(),
    };
    blocks.resize_with(nblocks, || None);
    blocks
}

/// The reduced loss from the sum of row losses (`Mean` divides by `count`).
fn reduced(reduction: Reduction, total: f64, count: usize) -> f32 {
    match reduction {
        Reduction::Mean => (total / count as f64) as f32,
        Reduction::Sum | Reduction::None => total as f32,
    }
}

fn row_scale<'a>(reduction: Reduction, count: usize, upstream: Option<&'a [f32]>) -> RowScale<'a> {
    match (reduction, upstream) {
        (Reduction::Mean, _) => RowScale::All(1.0 / count as f32),
        (Reduction::None, Some(u)) => RowScale::Upstream(u),
        _ => RowScale::All(1.0),
    }
}

/// Soft-target cross-entropy on validated inputs. Dense target weights are checked here
/// when `cfg.get_check_targets()`: fused into the kernel's read of the targets (the only
/// check that costs no extra pass over memory), then, if the kernel saw a suspect row, by
/// an exact scan that reports the first invalid weight. Only in that case are the
/// outputs already (partly) written when the error is returned.
pub(crate) fn soft_cross_entropy<T: Element>(
    isa: Isa,
    cfg: &SoftCrossEntropy,
    logits: MatRef<'_, T>,
    targets: &Targets<'_, T>,
    outputs: Outputs<'_, T>,
) -> Result<f32> {
    let t = cfg.get_temperature();
    if !kernel_temperature_ok(t) {
        // The reference scans dense target weights itself (and reports a bad one).
        let r = reference::soft_cross_entropy(cfg, logits, targets, &request(&outputs))?;
        return Ok(write(r, outputs));
    }
    let check_dense = cfg.get_check_targets() && matches!(targets, Targets::Dense(_));
    let ce_targets = match targets {
        Targets::Dense(a) => CeTargets::Dense {
            a: a.data(),
            stride: a.stride(),
        },
        _ => CeTargets::Structured {
            s: targets.structured().expect("a structured form"),
            ignore: None,
        },
    };
    let n = logits.rows();
    let suspect = AtomicBool::new(false);
    let check = check_dense.then_some(&suspect);
    let c = logits.cols();
    let loss = run_ce(
        isa,
        logits,
        (t, check),
        ce_targets,
        (cfg.get_reduction(), n),
        outputs,
    );
    if suspect.load(Ordering::Relaxed) {
        // Exact scan: reports the first invalid weight, or finds none (the kernel's test
        // also fires when finite weights sum past f32::MAX) and the result stands.
        targets.validate(c, None, true)?;
    }
    Ok(loss)
}

pub(crate) fn hard_cross_entropy<T: Element>(
    isa: Isa,
    cfg: &HardCrossEntropy,
    logits: MatRef<'_, T>,
    labels: &[u32],
    outputs: Outputs<'_, T>,
) -> Result<f32> {
    let t = cfg.get_temperature();
    if !kernel_temperature_ok(t) {
        let r = reference::hard_cross_entropy(cfg, logits, labels, &request(&outputs))?;
        return Ok(write(r, outputs));
    }
    let ignore = cfg.get_ignore_index();
    let count = labels.iter().filter(|&&y| Some(y) != ignore).count();
    let ce_targets = CeTargets::Structured {
        s: Structured::Hard {
            labels,
            smoothing: cfg.get_smoothing(),
        },
        ignore,
    };
    Ok(run_ce(
        isa,
        logits,
        (t, None),
        ce_targets,
        (cfg.get_reduction(), count),
        outputs,
    ))
}
