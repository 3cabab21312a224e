//! Black-76 price and Greeks (methodology §5): r = 0, the forward is the index price.
//!
//! Greeks are per contract before the multiplier: delta, gamma, vega per vol point (/100) and
//! theta per calendar day (/365). At expiry (`T = 0`, or `σ√T = 0`) the option is worth its
//! intrinsic value, delta is 1/0 (call, F > K / else) or −1/0 (put, F < K / else), and gamma,
//! vega and theta are 0.

use rayon::prelude::*;

const SQRT_2: f64 = std::f64::consts::SQRT_2;
/// 1 / sqrt(2π)
const INV_SQRT_2PI: f64 = 0.398_942_280_401_432_7;

/// Standard normal cumulative distribution, via the complementary error function (accurate in
/// both tails, unlike `0.5 (1 + erf)`).
pub fn norm_cdf(x: f64) -> f64 {
    0.5 * libm::erfc(-x / SQRT_2)
}

/// Standard normal density.
pub fn norm_pdf(x: f64) -> f64 {
    INV_SQRT_2PI * (-0.5 * x * x).exp()
}

/// Price and Greeks of one option contract.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Greeks {
    pub price: f64,
    pub delta: f64,
    pub gamma: f64,
    pub vega: f64,
    pub theta: f64,
}

/// Black-76 value only (the risk-array hot path needs no Greeks).
#[inline]
pub fn price(forward: f64, strike: f64, time: f64, vol: f64, is_call: bool) -> f64 {
    let sd = vol * time.max(0.0).sqrt();
    if !(sd > 0.0) {
        return intrinsic(forward, strike, is_call);
    }
    let d1 = ((forward / strike).ln() + 0.5 * sd * sd) / sd;
    let d2 = d1 - sd;
    if is_call {
        forward * norm_cdf(d1) - strike * norm_cdf(d2)
    } else {
        strike * norm_cdf(-d2) - forward * norm_cdf(-d1)
    }
}

#[inline]
fn intrinsic(forward: f64, strike: f64, is_call: bool) -> f64 {
    if is_call {
        (forward - strike).max(0.0)
    } else {
        (strike - forward).max(0.0)
    }
}

/// Black-76 price and Greeks.
pub fn greeks(forward: f64, strike: f64, time: f64, vol: f64, is_call: bool) -> Greeks {
    let sqrt_t = time.max(0.0).sqrt();
    let sd = vol * sqrt_t;
    if !(sd > 0.0) {
        let delta = match (is_call, forward > strike, forward < strike) {
            (true, true, _) => 1.0,
            (false, _, true) => -1.0,
            _ => 0.0,
        };
        return Greeks { price: intrinsic(forward, strike, is_call), delta, ..Greeks::default() };
    }
    let d1 = ((forward / strike).ln() + 0.5 * sd * sd) / sd;
    let d2 = d1 - sd;
    let pdf = norm_pdf(d1);
    let (price, delta) = if is_call {
        (forward * norm_cdf(d1) - strike * norm_cdf(d2), norm_cdf(d1))
    } else {
        (strike * norm_cdf(-d2) - forward * norm_cdf(-d1), norm_cdf(d1) - 1.0)
    };
    Greeks {
        price,
        delta,
        gamma: pdf / (forward * sd),
        vega: forward * pdf * sqrt_t / 100.0,
        theta: -forward * pdf * vol / (2.0 * sqrt_t) / 365.0,
    }
}

/// Checks the inputs of [`greeks_batch`]: forward, strike and vol finite and > 0, time finite
/// (at or below 0 the option has expired and is worth its intrinsic value). Offenders are named `row N = value` under the
/// table `black76` and the argument's name.
pub fn check_inputs(forward: &[f64], strike: &[f64], time: &[f64], vol: &[f64]) -> crate::error::Result<()> {
    use crate::error::Offenders;
    let columns: [(&str, &[f64], bool, &str); 4] = [
        ("forward", forward, false, "values must be finite and > 0"),
        ("strike", strike, false, "values must be finite and > 0"),
        ("time", time, true, "values must be finite numbers (NaN or infinite found)"),
        ("vol", vol, false, "values must be finite and > 0"),
    ];
    for (name, values, any_sign, problem) in columns {
        let ok = |v: f64| v.is_finite() && (v > 0.0 || any_sign);
        if values.iter().all(|v| ok(*v)) {
            continue;
        }
        let mut bad = Offenders::default();
        for (i, v) in values.iter().enumerate().filter(|(_, v)| !ok(**v)) {
            bad.push(|| format!("row {i} = {}", crate::error::show_value(*v)));
        }
        bad.into_result("black76", name, problem)?;
    }
    Ok(())
}

/// Vectorized [`greeks`] over equal-length slices, in parallel; element `i` of each output is
/// the Greeks of input `i` (the same numbers whatever the thread count).
pub fn greeks_batch(
    forward: &[f64],
    strike: &[f64],
    time: &[f64],
    vol: &[f64],
    is_call: &[bool],
) -> Vec<Greeks> {
    let n = forward.len();
    assert!(strike.len() == n && time.len() == n && vol.len() == n && is_call.len() == n);
    (0..n)
        .into_par_iter()
        .with_min_len(4096)
        .map(|i| greeks(forward[i], strike[i], time[i], vol[i], is_call[i]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_call_parity() {
        let (f, k, t, v) = (100.0, 90.0, 0.5, 0.4);
        let c = greeks(f, k, t, v, true);
        let p = greeks(f, k, t, v, false);
        assert!((c.price - p.price - (f - k)).abs() < 1e-12);
        assert!((c.delta - p.delta - 1.0).abs() < 1e-15);
        assert_eq!(c.gamma, p.gamma);
        assert_eq!(c.vega, p.vega);
    }

    #[test]
    fn at_expiry_is_intrinsic() {
        let c = greeks(110.0, 100.0, 0.0, 0.5, true);
        assert_eq!(c, Greeks { price: 10.0, delta: 1.0, ..Greeks::default() });
        let p = greeks(110.0, 100.0, 0.0, 0.5, false);
        assert_eq!(p, Greeks::default());
        let atm = greeks(100.0, 100.0, 0.0, 0.5, true);
        assert_eq!(atm.delta, 0.0);
        assert_eq!(price(90.0, 100.0, 0.0, 0.5, false), 10.0);
    }

    #[test]
    fn known_value() {
        // ATM call, F = K = 100, σ√T = 0.2: price = 100 (2N(0.1) − 1) = 7.965567455405804
        let c = greeks(100.0, 100.0, 1.0, 0.2, true);
        assert!((c.price - 7.965_567_455_405_804).abs() < 1e-12, "{}", c.price);
        assert_eq!(price(100.0, 100.0, 1.0, 0.2, true), c.price);
    }

    #[test]
    fn norm_cdf_tails() {
        assert!((norm_cdf(0.0) - 0.5).abs() < 1e-16);
        assert!(norm_cdf(-40.0) >= 0.0 && norm_cdf(-10.0) > 0.0);
        assert_eq!(norm_cdf(40.0), 1.0);
    }
}
