use crate::simd::exp::{self, exp_scalar};
#[cfg(target_arch = "aarch64")]
use crate::simd::neon::Neon;
use crate::simd::scalar::S1;
use crate::simd::F32x;
#[cfg(target_arch = "x86_64")]
use crate::simd::{avx2::Avx2, avx512::Avx512};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------
// Harness: generic bodies over the trait, instantiated in target-feature entry points.
// ---------------------------------------------------------------------------------------

/// A test body written once, generically over the vector type (the same shape as a kernel).
trait Body {
    type Out;
    /// # Safety
    /// `V::is_available()` must be true.
    unsafe fn run<V: F32x>(self) -> Self::Out;
}

/// # Safety
/// The CPU must support AVX2, FMA and F16C.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn on_avx2<B: Body>(body: B) -> B::Out {
    // SAFETY: this entry point's contract (AVX2 + FMA + F16C) is exactly Avx2's CPU
    // requirement.
    unsafe { body.run::<Avx2>() }
}

/// # Safety
/// The CPU must support AVX-512 F, BW, VL and DQ.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq")]
unsafe fn on_avx512<B: Body>(body: B) -> B::Out {
    // SAFETY: this entry point's contract is exactly Avx512's CPU requirement.
    unsafe { body.run::<Avx512>() }
}

/// # Safety
/// The CPU must support AVX-512 F, BW, VL, DQ and BF16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512dq,avx512bf16")]
unsafe fn on_avx512_bf16<B: Body>(body: B) -> B::Out {
    // SAFETY: this entry point's contract is exactly Avx512<true>'s CPU requirement.
    unsafe { body.run::<Avx512<true>>() }
}

/// # Safety
/// The CPU must support NEON (every aarch64 CPU does).
#[cfg(target_arch = "aarch64")]
#[target_feature(enable = "neon")]
unsafe fn on_neon<B: Body>(body: B) -> B::Out {
    // SAFETY: this entry point's contract is exactly Neon's CPU requirement.
    unsafe { body.run::<Neon>() }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    Scalar,
    #[cfg(target_arch = "x86_64")]
    Avx2,
    #[cfg(target_arch = "x86_64")]
    Avx512,
    /// `Avx512<true>`: AVX-512 with the BF16 conversions.
    #[cfg(target_arch = "x86_64")]
    Avx512Bf16,
    #[cfg(target_arch = "aarch64")]
    Neon,
}

impl Backend {
    /// The backends the running CPU supports (runtime detection), scalar first.
    fn available() -> Vec<Backend> {
        let mut v = vec![Backend::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if Avx2::is_available() {
                v.push(Backend::Avx2);
            }
            if Avx512::<false>::is_available() {
                v.push(Backend::Avx512);
                if std::arch::is_x86_feature_detected!("avx512bf16") {
                    v.push(Backend::Avx512Bf16);
                }
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            assert!(Neon::is_available());
            v.push(Backend::Neon);
        }
        v
    }

    fn name(self) -> &'static str {
        match self {
            Backend::Scalar => "scalar",
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => "avx2",
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512 => "avx512",
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512Bf16 => "avx512+bf16",
            #[cfg(target_arch = "aarch64")]
            Backend::Neon => "neon",
        }
    }

    fn lanes(self) -> usize {
        match self {
            Backend::Scalar => S1::LANES,
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => Avx2::LANES,
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512 | Backend::Avx512Bf16 => Avx512::<false>::LANES,
            #[cfg(target_arch = "aarch64")]
            Backend::Neon => Neon::LANES,
        }
    }

    /// Runs `body` on this backend, through its target-feature entry point.
    fn run<B: Body>(self, body: B) -> B::Out {
        match self {
            // SAFETY: the scalar backend has no CPU requirement.
            Backend::Scalar => unsafe { body.run::<S1>() },
            #[cfg(target_arch = "x86_64")]
            Backend::Avx2 => {
                assert!(Avx2::is_available());
                // SAFETY: runtime detection just confirmed AVX2, FMA and F16C.
                unsafe { on_avx2(body) }
            }
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512 => {
                assert!(Avx512::<false>::is_available());
                // SAFETY: runtime detection just confirmed AVX-512 F/BW/VL/DQ.
                unsafe { on_avx512(body) }
            }
            #[cfg(target_arch = "x86_64")]
            Backend::Avx512Bf16 => {
                assert!(Avx512::<true>::is_available() && std::arch::is_x86_feature_detected!("avx512bf16"));
                // SAFETY: runtime detection just confirmed AVX-512 F/BW/VL/DQ and BF16.
                unsafe { on_avx512_bf16(body) }
            }
            #[cfg(target_arch = "aarch64")]
            Backend::Neon => {
                assert!(Neon::is_available());
                // SAFETY: NEON is present on every aarch64 CPU.
                unsafe { on_neon(body) }
            }
        }
    }
}

/// `dst[i] = exp(src[i])`: full vectors, then one partial vector for the tail.
struct ExpInto<'a> {
    src: &'a [f32],
    dst: &'a mut [f32],
    /// Use `exp_nonpos` instead of `exp`.
    nonpos: bool,
}

impl Body for ExpInto<'_> {
    type Out = ();
    #[inline(always)]
    unsafe fn run<V: F32x>(self) {
        let n = self.src.len();
        assert_eq!(n, self.dst.len());
        let (s, d) = (self.src.as_ptr(), self.dst.as_mut_ptr());
        let mut i = 0;
        // SAFETY: V is available (caller's contract); full vectors are accessed only while
        // `i + LANES <= n`, and the tail accesses exactly the `n - i < LANES` remaining
        // elements of both slices.
        unsafe {
            while i + V::LANES <= n {
                let x = V::load(s.add(i));
                let e = if self.nonpos { x.exp_nonpos() } else { x.exp() };
                e.store(d.add(i));
                i += V::LANES;
            }
            if i < n {
                let x = V::load_partial(s.add(i), n - i, 0.0);
                let e = if self.nonpos { x.exp_nonpos() } else { x.exp() };
                e.store_partial(d.add(i), n - i);
            }
        }
    }
}

fn exp_on(b: Backend, src: &[f32]) -> Vec<f32> {
    let mut dst = vec![f32::NAN; src.len()];
    b.run(ExpInto {
        src,
        dst: &mut dst,
        nonpos: false,
    });
    dst
}

fn exp_nonpos_on(b: Backend, src: &[f32]) -> Vec<f32> {
    let mut dst = vec![f32::NAN; src.len()];
    b.run(ExpInto {
        src,
        dst: &mut dst,
        nonpos: true,
    });
    dst
}

/// `exp_nonpos` is `exp`, bit for bit, on every backend for `x <= 0`, `-inf` and NaN.
fn assert_nonpos_is_exp(backends: &[Backend], xs: &[f32]) {
    for &b in backends {
        let (e, q) = (exp_on(b, xs), exp_nonpos_on(b, xs));
        for i in 0..xs.len() {
            assert!(
                e[i].to_bits() == q[i].to_bits() || (e[i].is_nan() && q[i].is_nan()),
                "{}: exp_nonpos({:e}) = {:e}, exp = {:e}",
                b.name(),
                xs[i],
                q[i],
                e[i]
            );
        }
    }
}

/// Lane-wise binary/ternary ops over whole vectors: returns, per op, the output slice.
struct Lanewise<'a> {
    a: &'a [f32],
    b: &'a [f32],
    c: &'a [f32],
}

const OPS: [&str; 7] = ["add", "sub", "mul", "div", "max", "min", "fma"];

impl Body for Lanewise<'_> {
    type Out = Vec<Vec<f32>>;
    #[inline(always)]
    unsafe fn run<V: F32x>(self) -> Vec<Vec<f32>> {
        let n = self.a.len();
        assert!(n.is_multiple_of(V::LANES) && self.b.len() == n && self.c.len() == n);
        let mut out = vec![vec![0.0f32; n]; OPS.len()];
        for i in (0..n).step_by(V::LANES) {
            // SAFETY: V is available; `i + LANES <= n` for all three inputs and every
            // output vector.
            unsafe {
                let a = V::load(self.a.as_ptr().add(i));
                let b = V::load(self.b.as_ptr().add(i));
                let c = V::load(self.c.as_ptr().add(i));
                let r = [
                    a.add(b),
                    a.sub(b),
                    a.mul(b),
                    a.div(b),
                    a.max(b),
                    a.min(b),
                    a.fma(b, c),
                ];
                for (o, v) in out.iter_mut().zip(r) {
                    v.store(o.as_mut_ptr().add(i));
                }
            }
        }
        out
    }
}

/// Per LANES-chunk of `data`: (hsum, hmax, is_nan_any).
struct Reduce<'a>(&'a [f32]);

impl Body for Reduce<'_> {
    type Out = Vec<(f32, f32, bool)>;
    #[inline(always)]
    unsafe fn run<V: F32x>(self) -> Self::Out {
        assert!(self.0.len().is_multiple_of(V::LANES));
        self.0
            .chunks_exact(V::LANES)
            .map(|c| {
                // SAFETY: V is available; `c` holds exactly LANES elements.
                unsafe {
                    let v = V::load(c.as_ptr());
                    (v.hsum(), v.hmax(), v.is_nan_any())
                }
            })
            .collect()
    }
}

/// `load_partial` / `store_partial` for every `n` in `0..=LANES`, with guarded buffers;
/// also `splat` and `zero`.
struct PartialIo;

const GUARD: usize = 16;
/// A NaN with a recognisable payload, compared bitwise.
const SENTINEL: u32 = 0x7fc0_dead;

impl Body for PartialIo {
    type Out = ();
    #[inline(always)]
    unsafe fn run<V: F32x>(self) {
        let l = V::LANES;
        let sentinel = f32::from_bits(SENTINEL);
        let mut full = vec![0.0f32; l];
        // SAFETY: (all blocks in this function) V is available (caller's contract); every
        // pointer is offset `GUARD` into a buffer of `GUARD + l + GUARD` elements, or points
        // to a buffer of exactly `l` (or `n`) elements, and at most `l` (resp. `n`)
        // elements are accessed.
        unsafe {
            V::splat(2.5).store(full.as_mut_ptr());
            assert!(full.iter().all(|&x| x == 2.5));
            V::zero().store(full.as_mut_ptr());
            assert!(full.iter().all(|&x| x.to_bits() == 0));
        }
        for n in 0..=l {
            for fill in [-7.25f32, f32::NEG_INFINITY, f32::NAN] {
                // Load: n values surrounded by sentinels; lanes >= n must be `fill`, never
                // a sentinel.
                let mut src = vec![sentinel; GUARD + l + GUARD];
                for i in 0..n {
                    src[GUARD + i] = 1.5 + i as f32;
                }
                // SAFETY: see above.
                let v = unsafe { V::load_partial(src.as_ptr().add(GUARD), n, fill) };
                // SAFETY: see above.
                unsafe { v.store(full.as_mut_ptr()) };
                for (i, &got) in full.iter().enumerate() {
                    let want = if i < n { 1.5 + i as f32 } else { fill };
                    assert_eq!(got.to_bits(), want.to_bits(), "load_partial n={n} lane={i}");
                }
                // Same with the n values at the very end of their own allocation.
                let exact: Box<[f32]> = (0..n).map(|i| 1.5 + i as f32).collect();
                // SAFETY: see above (the pointer is valid for exactly n reads).
                let v = unsafe { V::load_partial(exact.as_ptr(), n, fill) };
                // SAFETY: see above.
                unsafe { v.store(full.as_mut_ptr()) };
                for (i, &got) in full.iter().enumerate() {
                    let want = if i < n { exact[i] } else { fill };
                    assert_eq!(got.to_bits(), want.to_bits(), "load_partial(end) n={n}");
                }
            }
            // Store: only dst[GUARD..GUARD+n] may change.
            let vals: Vec<f32> = (0..l).map(|i| 100.0 + i as f32).collect();
            let mut dst = vec![sentinel; GUARD + l + GUARD];
            // SAFETY: see above.
            unsafe { V::load(vals.as_ptr()).store_partial(dst.as_mut_ptr().add(GUARD), n) };
            for (j, &got) in dst.iter().enumerate() {
                let want = if (GUARD..GUARD + n).contains(&j) {
                    vals[j - GUARD]
                } else {
                    sentinel
                };
                assert_eq!(got.to_bits(), want.to_bits(), "store_partial n={n} idx={j}");
            }
            // Into an allocation of exactly n elements.
            let mut exact = vec![0.0f32; n].into_boxed_slice();
            // SAFETY: see above (the pointer is valid for exactly n writes).
            unsafe { V::load(vals.as_ptr()).store_partial(exact.as_mut_ptr(), n) };
            assert_eq!(&exact[..], &vals[..n]);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------

/// SplitMix64: a tiny deterministic generator for test inputs.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
    fn range(&mut self, lo: f32, hi: f32) -> f32 {
        (lo as f64 + (hi as f64 - lo as f64) * self.unit()) as f32
    }
}

/// Distance in representable f32 values (0 if both NaN, u64::MAX if exactly one is NaN;
/// +0 and -0 are the same point).
fn ulp_dist(a: f32, b: f32) -> u64 {
    match (a.is_nan(), b.is_nan()) {
        (true, true) => return 0,
        (false, false) => {}
        _ => return u64::MAX,
    }
    let key = |x: f32| {
        let bits = x.to_bits();
        if bits >> 31 == 1 {
            -((bits & 0x7fff_ffff) as i64)
        } else {
            bits as i64
        }
    };
    key(a).abs_diff(key(b))
}

/// The f32 ulp at the (normal-range, positive) f64 value `y`: 2^(floor(log2 y) - 23).
fn f32_ulp_at(y: f64) -> f64 {
    debug_assert!(y >= f32::MIN_POSITIVE as f64);
    let e = ((y.to_bits() >> 52) & 0x7ff) as i32 - 1023;
    2f64.powi(e - 23)
}

/// Accuracy statistics of one backend against f64 `exp`.
#[derive(Default, Clone)]
struct ExpStats {
    points: u64,
    max_ulp: f64,
    worst_x: f32,
    flushed: u64,
    max_abs_below_min_positive: f64,
    max_dist_to_scalar: u64,
}

impl ExpStats {
    fn update(&mut self, x: f32, got: f32, want: f64, scalar: f32) {
        self.points += 1;
        self.max_dist_to_scalar = self.max_dist_to_scalar.max(ulp_dist(got, scalar));
        if want >= f32::MIN_POSITIVE as f64 {
            let err = (got as f64 - want).abs() / f32_ulp_at(want);
            // A NaN error must register too (and fail the check).
            if err.is_nan() || err > self.max_ulp {
                self.max_ulp = err;
                self.worst_x = x;
            }
        } else {
            self.flushed += 1;
            let err = (got as f64 - want).abs();
            if err.is_nan() || err > self.max_abs_below_min_positive {
                self.max_abs_below_min_positive = err;
            }
        }
    }

    fn check(&self, name: &str, what: &str) {
        println!(
            "exp[{name:>6}] {what}: {} points, max error {:.4} ulp (at x = {:e}), \
                 {} results below f32::MIN_POSITIVE (max abs error {:.3e}), \
                 max distance to scalar {} ulp",
            self.points,
            self.max_ulp,
            self.worst_x,
            self.flushed,
            self.max_abs_below_min_positive,
            self.max_dist_to_scalar
        );
        assert!(
            self.max_ulp <= 2.0,
            "{name}: {} ulp at x = {:e}",
            self.max_ulp,
            self.worst_x
        );
        assert!(self.max_abs_below_min_positive < f32::MIN_POSITIVE as f64);
        assert!(self.max_dist_to_scalar <= 1, "{name} disagrees with scalar");
    }
}

/// Evaluates every available backend on `xs` and accumulates statistics.
fn accumulate(backends: &[Backend], stats: &mut [ExpStats], xs: &[f32]) {
    let want: Vec<f64> = xs.iter().map(|&x| (x as f64).exp()).collect();
    let scalar = exp_on(Backend::Scalar, xs);
    for (b, st) in backends.iter().zip(stats.iter_mut()) {
        let got = if *b == Backend::Scalar {
            scalar.clone()
        } else {
            exp_on(*b, xs)
        };
        for i in 0..xs.len() {
            st.update(xs[i], got[i], want[i], scalar[i]);
        }
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .map(|v| v.parse().expect("numeric env var"))
        .unwrap_or(default)
}

// ---------------------------------------------------------------------------------------
// exp
// ---------------------------------------------------------------------------------------

#[test]
fn exp_constants_are_the_documented_ones() {
    assert_eq!(exp::EXP_X_MIN.to_bits(), 0xc2ae_ac4f);
    assert_eq!(exp::LOG2E.to_bits(), 0x3fb8_aa3b);
    assert_eq!(exp::LN2_HI.to_bits(), 0x3f31_7200);
    assert_eq!(exp::LN2_LO.to_bits(), 0x35bf_be8e);
    let c = [
        exp::EXP_C1,
        exp::EXP_C2,
        exp::EXP_C3,
        exp::EXP_C4,
        exp::EXP_C5,
        exp::EXP_C6,
    ];
    let bits = [
        0x3f80_0000,
        0x3eff_fffe,
        0x3e2a_aa46,
        0x3d2a_ac2c,
        0x3c09_1ef0,
        0x3ab5_63a7,
    ];
    for (c, b) in c.iter().zip(bits) {
        assert_eq!(c.to_bits(), b);
    }
    // EXP_X_MIN is the smallest f32 whose exp is >= f32::MIN_POSITIVE.
    let min_pos = f32::MIN_POSITIVE as f64;
    assert!((exp::EXP_X_MIN as f64).exp() >= min_pos);
    let below = f32::from_bits(exp::EXP_X_MIN.to_bits() + 1);
    assert!(below < exp::EXP_X_MIN && (below as f64).exp() < min_pos);
    // The ln2 split.
    let split = exp::LN2_HI as f64 + exp::LN2_LO as f64;
    assert!((split - std::f64::consts::LN_2).abs() < 1e-13);
}

#[test]
fn exp_special_values_all_backends() {
    let below = f32::from_bits(exp::EXP_X_MIN.to_bits() + 1);
    let xs = [
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::NAN,
        0.0,
        -0.0,
        f32::MIN,
        -1e30,
        -104.0,
        -103.9,
        -88.0,
        below,
        exp::EXP_X_MIN,
        -f32::MIN_POSITIVE,
        -1e-30,
        -1e-8,
        1e-8,
        88.0,
        88.7,
        100.0,
        f32::MAX,
        f32::INFINITY,
    ];
    let exp88 = exp_scalar(88.0);
    assert!(exp88.is_finite() && ((exp88 as f64) / 88f64.exp() - 1.0).abs() < 2.4e-7);
    for b in Backend::available() {
        let y = exp_on(b, &xs);
        let name = b.name();
        assert_eq!(y[0].to_bits(), 0, "{name}: exp(-inf) must be +0");
        assert!(y[1].is_nan() && y[2].is_nan(), "{name}: exp(NaN) must be NaN");
        assert_eq!(y[3].to_bits(), 1f32.to_bits(), "{name}: exp(0)");
        assert_eq!(y[4].to_bits(), 1f32.to_bits(), "{name}: exp(-0)");
        for (x, y) in xs[5..11].iter().zip(&y[5..11]) {
            assert_eq!(y.to_bits(), 0, "{name}: exp({x}) must be flushed to +0");
        }
        assert!(y[11] >= f32::MIN_POSITIVE, "{name}: exp(EXP_X_MIN) = {:e}", y[11]);
        for (x, y) in xs[12..16].iter().zip(&y[12..16]) {
            assert_eq!(*y, 1.0, "{name}: exp({x})");
        }
        for (x, y) in xs[16..].iter().zip(&y[16..]) {
            assert!(y.is_finite() && *y > 1.6e38, "{name}: exp({x}) = {y}");
            assert!(*y <= exp88, "{name}: exp({x}) must be clamped to exp(88)");
        }
        assert_eq!(y[16].to_bits(), exp88.to_bits());
    }
}

/// At least 10^7 points per backend over [-104, 0] against f64 exp: a uniform grid, uniform
/// random points, and random f32 bit patterns (dense near 0). Set `SIMDLAYER_EXP_POINTS` to
/// change the grid size (default 10^7; the random sets are each a fifth of it).
#[test]
fn exp_accuracy_all_backends() {
    let grid = env_usize("SIMDLAYER_EXP_POINTS", 10_000_000);
    let random = grid / 5;
    let backends = Backend::available();
    let mut stats = vec![ExpStats::default(); backends.len()];
    // Chunks of a size that is not a multiple of any LANES, so the partial tail runs.
    const CHUNK: usize = (1 << 16) + 3;
    let mut buf = Vec::with_capacity(CHUNK);
    let flush = |buf: &mut Vec<f32>, stats: &mut [ExpStats], force: bool| {
        if buf.len() >= CHUNK || (force && !buf.is_empty()) {
            accumulate(&backends, stats, buf);
            buf.clear();
        }
    };
    // Uniform grid over [-104, 0], both end points included.
    for i in 0..grid {
        buf.push((-104.0 + 104.0 * i as f64 / (grid - 1) as f64) as f32);
        flush(&mut buf, &mut stats, false);
    }
    let mut rng = Rng(0x5eed_0001);
    for _ in 0..random {
        buf.push(rng.range(-104.0, 0.0));
        flush(&mut buf, &mut stats, false);
    }
    // Every negative f32 in [-104, -0.0] is equally likely: exercises tiny |x|.
    let (lo, hi) = ((-0.0f32).to_bits() as u64, (-104.0f32).to_bits() as u64);
    for _ in 0..random {
        buf.push(f32::from_bits((lo + rng.next_u64() % (hi - lo + 1)) as u32));
        flush(&mut buf, &mut stats, false);
    }
    // Neighbourhoods of the flush threshold, of 0 and of the end points.
    for centre in [exp::EXP_X_MIN, -0.0, -104.0, -1.0, -0.5 * std::f32::consts::LN_2] {
        let mut x = centre;
        let mut y = centre;
        for _ in 0..64 {
            buf.extend([x, y]);
            x = f32::from_bits(x.to_bits() + 1); // more negative
            y = f32::from_bits(y.to_bits().wrapping_sub(1).max(0x8000_0000));
        }
    }
    flush(&mut buf, &mut stats, true);
    for (b, st) in backends.iter().zip(&stats) {
        assert!(st.points as usize >= grid + 2 * random);
        st.check(b.name(), "x in [-104, 0]");
    }
    let names: Vec<_> = backends.iter().map(|b| b.name()).collect();
    println!("exp accuracy: backends tested on this CPU: {names:?}");
}

/// Outside the contract: 0 < x <= 88 is still accurate, larger x is clamped.
#[test]
fn exp_positive_inputs() {
    let backends = Backend::available();
    let mut stats = vec![ExpStats::default(); backends.len()];
    let n = 200_000;
    let xs: Vec<f32> = (0..=n).map(|i| (88.0 * i as f64 / n as f64) as f32).collect();
    accumulate(&backends, &mut stats, &xs);
    for (b, st) in backends.iter().zip(&stats) {
        st.check(b.name(), "x in [0, 88] (outside the contract)");
    }
}

/// Every f32 in [-104, 0] (about 1.1e9 values) on every backend. Slow in debug builds: run
/// with `cargo test --release -- --ignored exp_exhaustive --nocapture`.
#[test]
#[ignore]
fn exp_exhaustive() {
    let backends = Backend::available();
    let mut stats = vec![ExpStats::default(); backends.len()];
    let (lo, hi) = ((-0.0f32).to_bits(), (-104.0f32).to_bits());
    let mut buf = Vec::with_capacity(1 << 20);
    for bits in lo..=hi {
        buf.push(f32::from_bits(bits));
        if buf.len() == buf.capacity() || bits == hi {
            accumulate(&backends, &mut stats, &buf);
            assert_nonpos_is_exp(&backends, &buf);
            buf.clear();
        }
    }
    for (b, st) in backends.iter().zip(&stats) {
        st.check(b.name(), "every f32 in [-104, 0]");
    }
}

/// `exp_nonpos` against `exp` on random non-positive values of every magnitude, the edges
/// of the flush threshold and the special values (every f32 in `[-104, 0]` in
/// `exp_exhaustive`).
#[test]
fn exp_nonpos_is_exp_on_its_domain() {
    let mut rng = Rng(0x5eed_0003);
    let mut xs: Vec<f32> = (0..200_003)
        .map(|i| match i % 3 {
            0 => -f32::from_bits(rng.next_u64() as u32 & 0x7fff_ffff), // any magnitude, NaN
            _ => rng.range(-104.0, 0.0),
        })
        .collect();
    let edge = exp::EXP_X_MIN.to_bits();
    xs.extend((edge - 40..edge + 40).map(f32::from_bits));
    xs.extend([
        0.0,
        -0.0,
        f32::NEG_INFINITY,
        f32::NAN,
        -f32::MAX,
        -1e30,
        -f32::MIN_POSITIVE,
        -1e-45,
    ]);
    assert_nonpos_is_exp(&Backend::available(), &xs);
}

/// Bulk agreement: all backends give the scalar result within 1 ulp (in fact bitwise).
#[test]
fn exp_backends_agree_with_scalar_bulk() {
    let mut rng = Rng(0x5eed_0002);
    let xs: Vec<f32> = (0..1_000_003)
        .map(|i| match i % 4 {
            0 => f32::from_bits(rng.next_u64() as u32), // anything, incl. NaN/inf/positive
            _ => rng.range(-104.0, 0.0),
        })
        .collect();
    let scalar: Vec<f32> = xs.iter().map(|&x| exp_scalar(x)).collect();
    for b in Backend::available() {
        let got = exp_on(b, &xs);
        let worst = (0..xs.len()).map(|i| ulp_dist(got[i], scalar[i])).max().unwrap();
        let bitwise = (0..xs.len())
            .filter(|&i| !xs[i].is_nan())
            .all(|i| got[i].to_bits() == scalar[i].to_bits());
        println!(
            "exp[{:>6}] vs scalar on {} random inputs: max distance {worst} ulp, \
                 bit-identical (non-NaN inputs): {bitwise}",
            b.name(),
            xs.len()
        );
        assert!(worst <= 1);
    }
}

proptest! {
    #[test]
    fn exp_backends_agree_with_scalar(
        xs in prop::collection::vec(
            prop_oneof![4 => -104.0f32..=0.0f32, 1 => any::<f32>()],
            0..70,
        )
    ) {
        for b in Backend::available() {
            let got = exp_on(b, &xs);
            for (x, g) in xs.iter().zip(&got) {
                let s = exp_scalar(*x);
                prop_assert!(ulp_dist(*g, s) <= 1, "{}: exp({x:e}) = {g:e}, scalar {s:e}",
                    b.name());
            }
        }
    }

    #[test]
    fn lanewise_ops_match_f32(
        vals in prop::collection::vec(
            (-1e6f32..1e6f32, -1e6f32..1e6f32, -1e6f32..1e6f32), 1..40)
    ) {
        for b in Backend::available() {
            check_lanewise(b, &vals);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Vector operations
// ---------------------------------------------------------------------------------------

/// Runs the lane-wise ops on `b` (input padded to a multiple of 16 lanes) and compares every
/// lane with plain f32 arithmetic (fma with `f32::mul_add`, correctly rounded).
fn check_lanewise(b: Backend, vals: &[(f32, f32, f32)]) {
    let n = vals.len().div_ceil(16) * 16;
    let get = |i: usize| vals[i % vals.len()];
    let a: Vec<f32> = (0..n).map(|i| get(i).0).collect();
    let bb: Vec<f32> = (0..n).map(|i| get(i).1).collect();
    let c: Vec<f32> = (0..n).map(|i| get(i).2).collect();
    let out = b.run(Lanewise { a: &a, b: &bb, c: &c });
    for i in 0..n {
        let (x, y, z) = (a[i], bb[i], c[i]);
        let ordered_max = if x > y { x } else { y };
        let ordered_min = if x < y { x } else { y };
        let want = [
            x + y,
            x - y,
            x * y,
            x / y,
            ordered_max,
            ordered_min,
            x.mul_add(y, z),
        ];
        for (k, op) in OPS.iter().enumerate() {
            let got = out[k][i];
            let same = got.to_bits() == want[k].to_bits()
                    // max/min may return either zero for (-0, +0).
                    || ((4..=5).contains(&k) && got == 0.0 && want[k] == 0.0)
                    || (got.is_nan() && want[k].is_nan());
            assert!(
                same,
                "{}: {op}({x}, {y}, {z}) = {got}, want {}",
                b.name(),
                want[k]
            );
        }
    }
}

#[test]
fn lanewise_ops_special_cases() {
    let specials = [
        (1.0f32, 2.0f32, 3.0f32),
        (-0.0, 0.0, 0.0),
        (f32::INFINITY, 1.0, -1.0),
        (f32::NEG_INFINITY, f32::MAX, f32::MIN),
        (1e-40, 1e-3, 1e-41), // subnormals are not flushed
        (7.0, -3.0, 0.5),
        (f32::MIN_POSITIVE, 0.5, 0.0),
    ];
    for b in Backend::available() {
        check_lanewise(b, &specials);
    }
}

#[test]
fn fma_is_fused() {
    // a*b = 1 + 2^-11 + 2^-24 exactly; rounded first it would be 1 + 2^-11 and the sum 0.
    let a = 1.0 + 2f32.powi(-12);
    let c = -(1.0 + 2f32.powi(-11));
    let v = vec![(a, a, c); 16];
    for b in Backend::available() {
        let n = 16;
        let av = vec![a; n];
        let cv = vec![c; n];
        let out = b.run(Lanewise {
            a: &av,
            b: &av,
            c: &cv,
        });
        assert!(
            out[OPS.iter().position(|&o| o == "fma").unwrap()]
                .iter()
                .all(|&r| r == 2f32.powi(-24)),
            "{}: not fused",
            b.name()
        );
        check_lanewise(b, &v);
    }
}

/// A NaN in one lane (either operand or both) leaves `max` and `min` exact in the others.
#[test]
fn max_min_semantics_on_non_nan_lanes() {
    for b in Backend::available() {
        let l = b.lanes();
        for j in 0..l {
            for (na, nb) in [(true, false), (false, true), (true, true)] {
                let mut a: Vec<f32> = (0..l).map(|i| i as f32 - 3.0).collect();
                let mut bb: Vec<f32> = (0..l).map(|i| 2.0 - i as f32).collect();
                if na {
                    a[j] = f32::NAN;
                }
                if nb {
                    bb[j] = -f32::NAN;
                }
                let c = vec![0.0; l];
                let out = b.run(Lanewise { a: &a, b: &bb, c: &c });
                for i in 0..l {
                    if i != j {
                        // `max`/`min` are specified only for non-NaN lanes.
                        assert_eq!(out[4][i], a[i].max(bb[i]));
                        assert_eq!(out[5][i], a[i].min(bb[i]));
                    }
                }
            }
        }
    }
}

#[test]
fn hsum_hmax_is_nan_any() {
    let mut rng = Rng(0x5eed_0003);
    for b in Backend::available() {
        let l = b.lanes();
        let name = b.name();
        // Small integers: every summation order is exact.
        let ints: Vec<f32> = (0..l * 64)
            .map(|_| (rng.next_u64() % 2001) as f32 - 1000.0)
            .collect();
        let r = b.run(Reduce(&ints));
        for (chunk, (s, m, nan)) in ints.chunks(l).zip(&r) {
            assert_eq!(*s, chunk.iter().sum::<f32>(), "{name}: hsum");
            assert_eq!(*m, chunk.iter().cloned().fold(f32::NEG_INFINITY, f32::max));
            assert!(!nan);
        }
        // Random reals: within the error bound of any summation order.
        let reals: Vec<f32> = (0..l * 64).map(|_| rng.range(-1e3, 1e3)).collect();
        let r = b.run(Reduce(&reals));
        for (chunk, (s, _, _)) in reals.chunks(l).zip(&r) {
            let exact: f64 = chunk.iter().map(|&x| x as f64).sum();
            let mag: f64 = chunk.iter().map(|&x| (x as f64).abs()).sum();
            let tol = l as f64 * f32::EPSILON as f64 * mag;
            assert!((*s as f64 - exact).abs() <= tol, "{name}: hsum {s} vs {exact}");
        }
        // The maximum in every lane position, NaN in every lane position, infinities.
        for j in 0..l {
            let mut v: Vec<f32> = (0..l).map(|i| -(i as f32) - 1.0).collect();
            v[j] = 42.0;
            let (_, m, nan) = b.run(Reduce(&v))[0];
            assert!(m == 42.0 && !nan, "{name}: hmax with max in lane {j}");
            for nan_val in [f32::NAN, -f32::NAN] {
                let mut w = v.clone();
                w[j] = nan_val;
                let (s, m, nan) = b.run(Reduce(&w))[0];
                assert!(m.is_nan(), "{name}: hmax must be NaN (NaN in lane {j})");
                assert!(s.is_nan() && nan, "{name}: hsum / is_nan_any (lane {j})");
                // NaN next to +inf / -inf everywhere else.
                let mut w = vec![f32::INFINITY; l];
                w[j] = nan_val;
                assert!(b.run(Reduce(&w))[0].1.is_nan(), "{name}: NaN among +inf");
            }
        }
        let (s, m, nan) = b.run(Reduce(&vec![f32::NEG_INFINITY; l]))[0];
        assert!(s == f32::NEG_INFINITY && m == f32::NEG_INFINITY && !nan);
        let mut w = vec![f32::NEG_INFINITY; l];
        w[l - 1] = f32::INFINITY;
        let (_, m, nan) = b.run(Reduce(&w))[0];
        assert!(m == f32::INFINITY && !nan);
    }
}

#[test]
fn partial_load_store_every_n() {
    for b in Backend::available() {
        b.run(PartialIo);
    }
}

/// `transpose` maps `src[q][k]` to `dst[k][q]` with rows at arbitrary strides, leaving the
/// memory around each destination row untouched.
struct Transpose;

impl Body for Transpose {
    type Out = ();
    #[inline(always)]
    unsafe fn run<V: F32x>(self) {
        let l = V::LANES;
        let (src_stride, dst_stride) = (l + 5, l + 3);
        let src: Vec<f32> = (0..l * src_stride).map(|i| i as f32 + 0.25).collect();
        let sentinel = f32::from_bits(SENTINEL);
        let mut dst = vec![sentinel; l * dst_stride + 2];
        let mut sp = [std::ptr::null::<f32>(); 16];
        let mut dp = [std::ptr::null_mut::<f32>(); 16];
        for q in 0..l {
            // SAFETY: row q starts inside `src`, which holds `l · src_stride` floats.
            sp[q] = unsafe { src.as_ptr().add(q * src_stride) };
            // SAFETY: row k starts at `1 + k · dst_stride` and its `l` floats fit in `dst`.
            dp[q] = unsafe { dst.as_mut_ptr().add(1 + q * dst_stride) };
        }
        // SAFETY: the first `l` pointers each address `l` valid floats (see above).
        unsafe { V::transpose(&sp, &dp) };
        for (i, &v) in dst.iter().enumerate() {
            let (k, q) = ((i.wrapping_sub(1)) / dst_stride, (i.wrapping_sub(1)) % dst_stride);
            if i >= 1 && k < l && q < l {
                assert_eq!(v, src[q * src_stride + k], "transpose dst[{k}][{q}]");
            } else {
                assert_eq!(v.to_bits(), SENTINEL, "transpose wrote outside at {i}");
            }
        }
    }
}

#[test]
fn transpose_every_backend() {
    for b in Backend::available() {
        b.run(Transpose);
    }
}

/// Half-precision loads widen every one of the 65536 bit patterns exactly as the `half`
/// crate does, and stores round like it (nearest even, NaN stays NaN) on a sweep of `f32`
/// bit patterns that covers ties, denormals, overflow and the specials.
struct HalfIo;

impl Body for HalfIo {
    type Out = ();
    #[inline(always)]
    unsafe fn run<V: F32x>(self) {
        let l = V::LANES;
        let mut got = vec![0.0f32; l];
        let same = |a: f32, b: f32| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
        for start in (0..=u16::MAX as usize).step_by(l) {
            let bits: Vec<u16> = (start..start + l).map(|b| b as u16).collect();
            // SAFETY: V is available (caller's contract); `bits` holds `l` u16s, `got` `l` f32s.
            unsafe { V::load_bf16(bits.as_ptr()).store(got.as_mut_ptr()) };
            for (&b, &g) in bits.iter().zip(&got) {
                assert!(
                    same(g, half::bf16::from_bits(b).to_f32()),
                    "load_bf16 {b:#06x}: {g}"
                );
            }
            // SAFETY: as above.
            unsafe { V::load_f16(bits.as_ptr()).store(got.as_mut_ptr()) };
            for (&b, &g) in bits.iter().zip(&got) {
                assert!(
                    same(g, half::f16::from_bits(b).to_f32()),
                    "load_f16 {b:#06x}: {g}"
                );
            }
        }
        let vals = store_probes(l);
        let mut out = vec![0u16; l];
        // Streaming stores need `LANES · 2`-byte alignment.
        #[repr(align(64))]
        struct Aligned([u16; 32]);
        let mut streamed = Aligned([0; 32]);
        for chunk in vals.chunks(l) {
            // SAFETY: `chunk` holds `l` f32s, `out` `l` u16s.
            let v = unsafe { V::load(chunk.as_ptr()) };
            // SAFETY: as above; `streamed` holds 32 >= l u16s aligned to 64 bytes.
            unsafe {
                v.store_bf16(out.as_mut_ptr());
                v.store_bf16_stream(streamed.0.as_mut_ptr());
                V::stream_fence();
            }
            assert_eq!(out, streamed.0[..l], "store_bf16_stream of {chunk:?}");
            for (&x, &o) in chunk.iter().zip(&out) {
                let want = half::bf16::from_f32(x);
                let got = half::bf16::from_bits(o);
                assert!(
                    o == want.to_bits() || (want.is_nan() && got.is_nan()),
                    "store_bf16 {x:e} ({:#010x}): {o:#06x} vs {:#06x}",
                    x.to_bits(),
                    want.to_bits()
                );
            }
            // SAFETY: as above.
            unsafe {
                v.store_f16(out.as_mut_ptr());
                v.store_f16_stream(streamed.0.as_mut_ptr());
                V::stream_fence();
            }
            assert_eq!(out, streamed.0[..l], "store_f16_stream of {chunk:?}");
            for (&x, &o) in chunk.iter().zip(&out) {
                let want = half::f16::from_f32(x);
                let got = half::f16::from_bits(o);
                assert!(
                    o == want.to_bits() || (want.is_nan() && got.is_nan()),
                    "store_f16 {x:e} ({:#010x}): {o:#06x} vs {:#06x}",
                    x.to_bits(),
                    want.to_bits()
                );
            }
        }
    }
}

#[test]
fn half_loads_and_stores_every_backend() {
    for b in Backend::available() {
        b.run(HalfIo);
    }
}

/// The paired `bf16` loads and stores: `load_bf16x2` puts element `2i` in lane `i` of the
/// first vector and element `2i + 1` in lane `i` of the second, exactly widened, for every
/// bit pattern; `store_bf16x2` (and its streaming form) is its inverse with `store_bf16`'s
/// rounding, on the probe values paired so that both the conversion-instruction path and
/// its subnormal fallback are taken.
struct HalfPairIo;

impl Body for HalfPairIo {
    type Out = ();
    #[inline(always)]
    unsafe fn run<V: F32x>(self) {
        let l = V::LANES;
        let (mut lo, mut hi) = (vec![0.0f32; l], vec![0.0f32; l]);
        let same = |a: f32, b: f32| a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan());
        for start in (0..=u16::MAX as usize).step_by(2 * l) {
            let bits: Vec<u16> = (start..start + 2 * l).map(|b| b as u16).collect();
            // SAFETY: V is available (caller's contract); `bits` holds `2l` u16s, `lo` and
            // `hi` `l` f32s each.
            unsafe {
                let (a, b) = V::load_bf16x2(bits.as_ptr());
                a.store(lo.as_mut_ptr());
                b.store(hi.as_mut_ptr());
            }
            for (j, &b) in bits.iter().enumerate() {
                let g = if j % 2 == 0 { lo[j / 2] } else { hi[j / 2] };
                assert!(
                    same(g, half::bf16::from_bits(b).to_f32()),
                    "load_bf16x2 {b:#06x}: {g}"
                );
            }
        }
        let mut vals = store_probes(2 * l);
        // A pair with one subnormal in the second vector only, and one without any.
        vals.extend((0..2 * l).map(|j| if j == 2 * l - 1 { 1e-40 } else { 1.5 + j as f32 }));
        vals.extend((0..2 * l).map(|j| -3.0e-3 * (j as f32 + 0.25)));
        let mut out = vec![0u16; 2 * l];
        #[repr(align(64))]
        struct Aligned([u16; 32]);
        let mut streamed = Aligned([0; 32]);
        for chunk in vals.chunks(2 * l) {
            let even: Vec<f32> = chunk.iter().step_by(2).copied().collect();
            let odd: Vec<f32> = chunk.iter().skip(1).step_by(2).copied().collect();
            // SAFETY: `even` and `odd` hold `l` f32s, `out` `2l` u16s; `streamed` holds
            // 32 >= 2l u16s aligned to 64 bytes.
            unsafe {
                let (a, b) = (V::load(even.as_ptr()), V::load(odd.as_ptr()));
                V::store_bf16x2(a, b, out.as_mut_ptr());
                V::store_bf16x2_stream(a, b, streamed.0.as_mut_ptr());
                V::stream_fence();
            }
            assert_eq!(out, streamed.0[..2 * l], "store_bf16x2_stream of {chunk:?}");
            for (&x, &o) in chunk.iter().zip(&out) {
                let want = half::bf16::from_f32(x);
                assert!(
                    o == want.to_bits() || (want.is_nan() && half::bf16::from_bits(o).is_nan()),
                    "store_bf16x2 {x:e} ({:#010x}): {o:#06x} vs {:#06x}",
                    x.to_bits(),
                    want.to_bits()
                );
            }
        }
    }
}

#[test]
fn paired_bf16_loads_and_stores_every_backend() {
    for b in Backend::available() {
        b.run(HalfPairIo);
    }
}

/// `f32` values that probe a rounding store: a sweep of bit patterns (ties, subnormals,
/// overflow), exact ties and their neighbours for both half formats, and the specials;
/// padded with ones to a multiple of `l`.
fn store_probes(l: usize) -> Vec<f32> {
    let mut vals: Vec<f32> = (0..1u64 << 32)
        .step_by(4099)
        .map(|b| f32::from_bits(b as u32))
        .collect();
    // Exact ties and their neighbours for both formats, and the specials.
    for k in [
        0x3f80_8000u32,
        0x3f81_8000,
        0x3f80_1000,
        0x3f80_3000,
        0x477f_f000,
        0x4780_0000,
    ] {
        vals.extend([k - 1, k, k + 1].map(f32::from_bits));
    }
    vals.extend([
        f32::NAN,
        -f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        -0.0,
        0.0,
        1e-40,
        65520.0,
        65519.0,
    ]);
    vals.extend([f32::from_bits(0x7f80_0001), f32::from_bits(0xffff_ffff)]);
    while !vals.len().is_multiple_of(l) {
        vals.push(1.0);
    }
    vals
}

/// The usage pattern shown in the `simd` module docs, verbatim, so that it is known to
/// compile and work.
mod doc_pattern {
    #[cfg(target_arch = "x86_64")]
    use crate::simd::avx2::Avx2;
    use crate::simd::{scalar::S1, F32x};

    /// Generic algorithm: sum of exp(x - m) over a slice.
    ///
    /// # Safety
    /// `V::is_available()` must be true.
    #[inline(always)]
    unsafe fn sum_exp<V: F32x>(xs: &[f32], m: f32) -> f32 {
        // SAFETY: (for the whole body) the caller guarantees V's CPU features; every pointer
        // below stays inside `xs` (full vectors while LANES elements remain, then a partial tail).
        unsafe {
            let vm = V::splat(m);
            let mut acc = V::zero();
            let mut chunks = xs.chunks_exact(V::LANES);
            for c in &mut chunks {
                acc = acc.add(V::load(c.as_ptr()).sub(vm).exp());
            }
            let tail = chunks.remainder();
            // Padding lanes hold -inf, and exp(-inf - m) == 0 exactly (m finite).
            let t = V::load_partial(tail.as_ptr(), tail.len(), f32::NEG_INFINITY);
            acc = acc.add(t.sub(vm).exp());
            acc.hsum()
        }
    }

    /// AVX2 entry point: the generic body is inlined and compiled with AVX2 + FMA.
    ///
    /// # Safety
    /// The CPU must support AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn sum_exp_avx2(xs: &[f32], m: f32) -> f32 {
        // SAFETY: this function's own contract is exactly Avx2's.
        unsafe { sum_exp::<Avx2>(xs, m) }
    }

    pub(crate) fn sum_exp_dispatch(xs: &[f32], m: f32) -> f32 {
        #[cfg(target_arch = "x86_64")]
        if Avx2::is_available() {
            // SAFETY: runtime detection just confirmed AVX2 and FMA.
            return unsafe { sum_exp_avx2(xs, m) };
        }
        // SAFETY: the scalar backend has no CPU requirement.
        unsafe { sum_exp::<S1>(xs, m) }
    }

    #[test]
    fn sum_exp_matches_f64() {
        for n in [0usize, 1, 7, 8, 9, 100, 1003] {
            let xs: Vec<f32> = (0..n).map(|i| ((i * 37) % 101) as f32 * -0.25).collect();
            let m = xs.iter().cloned().fold(f32::NEG_INFINITY, f32::max).max(0.0);
            let want: f64 = xs.iter().map(|&x| (x as f64 - m as f64).exp()).sum();
            let got = sum_exp_dispatch(&xs, m) as f64;
            assert!(
                (got - want).abs() <= 1e-6 * want.max(1.0),
                "n={n}: {got} vs {want}"
            );
        }
    }
}

#[test]
fn backends_detected() {
    let names: Vec<_> = Backend::available().iter().map(|b| b.name()).collect();
    println!("backends available on this CPU: {names:?}");
    #[cfg(target_arch = "x86_64")]
    if std::env::var_os("SIMDLAYER_REQUIRE_AVX512").is_some() {
        assert!(names.contains(&"avx512") && names.contains(&"avx2"));
    }
}
