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
