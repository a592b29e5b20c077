//! The arithmetic of the scores.

// ---------------------------------------------------------------------------
// Arithmetic (basic IEEE operations only, so results are bit-identical on
// every platform)
// ---------------------------------------------------------------------------

pub(super) fn clamp01(x: f64) -> f64 {
    if x.is_nan() { 0.0 } else { x.clamp(0.0, 1.0) }
}

/// `x / (x + half)`: 0 at 0, ½ at `half`, → 1.
pub(super) fn saturate(x: f64, half: f64) -> f64 {
    if x <= 0.0 { 0.0 } else { x / (x + half) }
}

/// Piecewise-linear log2 (exact at powers of two, monotone); 0 for x ≤ 1.
pub(super) fn log2(x: f64) -> f64 {
    // Also 0 for NaN.
    if x.is_nan() || x <= 1.0 {
        return 0.0;
    }
    let x = x.min(1e15);
    let mut k = 0.0;
    let mut p = 1.0;
    while p * 2.0 <= x {
        p *= 2.0;
        k += 1.0;
    }
    k + (x - p) / p
}

/// `1 / (1 + e^-x)`, finite and within `[0, 1]` for every input.
pub(super) fn logistic(x: f64) -> f64 {
    if x.is_nan() {
        return 0.5;
    }
    let x = x.clamp(-40.0, 40.0);
    1.0 / (1.0 + exp(-x))
}

/// `e^x` for `x` in `[-40, 40]`: range reduction to `2^k · e^r`, `|r| ≤ ln2/2`,
/// then a degree-12 Taylor polynomial (relative error < 1e-15).
fn exp(x: f64) -> f64 {
    const LN_2: f64 = std::f64::consts::LN_2;
    let k = (x / LN_2 + 0.5).floor();
    let r = x - k * LN_2;
    let mut sum = 1.0;
    let mut term = 1.0;
    for n in 1..=12 {
        term = term * r / f64::from(n);
        sum += term;
    }
    // 2^k by exponent bits; k is within ±58 here.
    let bits = ((k as i64 + 1023) as u64) << 52;
    sum * f64::from_bits(bits)
}
