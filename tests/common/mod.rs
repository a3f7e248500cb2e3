//! Helpers shared by the backend test files.
#![allow(dead_code)]

/// Proptest cases per property: `PROPTEST_CASES`, else `default`.
pub fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `a` equals `b` within `tol`, where a NaN `b` wants NaN and an infinite `b` the same
/// infinity.
pub fn close(a: f64, b: f64, tol: f64) -> bool {
    if b.is_nan() {
        a.is_nan()
    } else if b.is_infinite() {
        a == b
    } else {
        (a - b).abs() <= tol
    }
}

/// A deterministic stream of `f32` in `[0, 1)` (a 64-bit LCG's top 24 bits) for tests whose
/// shapes are too large for proptest.
pub fn uniform(seed: u64) -> impl FnMut() -> f32 {
    let mut s = seed;
    move || {
        s = s.wrapping_mul(6364136223846793005).wrapping_add(1);
        (s >> 40) as f32 / (1u64 << 24) as f32
    }
}
