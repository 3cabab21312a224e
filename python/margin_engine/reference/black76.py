"""Black-76 with r = 0 and the forward equal to the index price (docs/methodology.md §5).

Every number is computed by the scalar function `black76_scalar` with `math`; the vectorized
`black76` only broadcasts its arguments with numpy and loops over the elements.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

_SQRT_2 = math.sqrt(2.0)
_SQRT_2PI = math.sqrt(2.0 * math.pi)


class Black76(NamedTuple):
    """Black-76 price and Greeks per contract, before the multiplier (§5)."""

    price: Any
    delta: Any
    gamma: Any
    vega: Any
    """Per vol point (the derivative divided by 100)."""
    theta: Any
    """Per calendar day (the time derivative divided by 365)."""


def norm_cdf(x: float) -> float:
    """Standard normal CDF: `N(x) = 0.5 * erfc(-x / sqrt(2))`."""
    return 0.5 * math.erfc(-x / _SQRT_2)


def norm_pdf(x: float) -> float:
    """Standard normal density: `n(x) = exp(-x²/2) / sqrt(2π)`."""
    return math.exp(-x * x / 2.0) / _SQRT_2PI


def intrinsic(forward: float, strike: float, is_call: bool) -> tuple[float, float, float, float, float]:
    """§5 at `T = 0`: intrinsic value; delta 1/0 for a call (F > K / else), −1/0 for a put
    (F < K / else); gamma = vega = theta = 0."""
    if is_call:
        return max(forward - strike, 0.0), (1.0 if forward > strike else 0.0), 0.0, 0.0, 0.0
    return max(strike - forward, 0.0), (-1.0 if forward < strike else 0.0), 0.0, 0.0, 0.0


def black76_scalar(
    forward: float, strike: float, time: float, vol: float, is_call: bool
) -> tuple[float, float, float, float, float]:
    """Black-76 `(price, delta, gamma, vega, theta)` of one contract (§5).

    `d1 = (ln(F/K) + σ²T/2) / (σ√T)`, `d2 = d1 − σ√T`;
    call `F·N(d1) − K·N(d2)`, put `K·N(−d2) − F·N(−d1)`;
    delta `N(d1)` (call) / `N(d1) − 1` (put); gamma `n(d1) / (F σ√T)`;
    vega `F·n(d1)·√T / 100`; theta `−F·n(d1)·σ / (2√T) / 365`.

    When `T <= 0`, or `σ√T` is not positive for any other reason, the `T = 0` rule applies
    (`intrinsic`). A non-positive forward (reachable only under extreme scenario moves of 100% or
    more) is treated the same way, since `ln(F/K)` is undefined.
    """
    forward = float(forward)
    strike = float(strike)
    time = float(time)
    vol = float(vol)
    if time <= 0.0 or forward <= 0.0:
        return intrinsic(forward, strike, is_call)
    sqrt_t = math.sqrt(time)
    vol_sqrt_t = vol * sqrt_t
    if not vol_sqrt_t > 0.0:
        return intrinsic(forward, strike, is_call)
    d1 = (math.log(forward / strike) + vol * vol * time / 2.0) / vol_sqrt_t
    d2 = d1 - vol_sqrt_t
    pdf_d1 = norm_pdf(d1)
    if is_call:
        price = forward * norm_cdf(d1) - strike * norm_cdf(d2)
        delta = norm_cdf(d1)
    else:
        price = strike * norm_cdf(-d2) - forward * norm_cdf(-d1)
        delta = norm_cdf(d1) - 1.0
    gamma = pdf_d1 / (forward * vol_sqrt_t)
    vega = forward * pdf_d1 * sqrt_t / 100.0
    theta = -forward * pdf_d1 * vol / (2.0 * sqrt_t) / 365.0
    return price, delta, gamma, vega, theta


def _as_is_call(is_call: Any) -> np.ndarray:
    """`is_call` as a bool array; the strings `"call"` / `"put"` are accepted too."""
    arr = np.asarray(is_call)
    if arr.dtype.kind in ("U", "S", "O"):
        calls: np.ndarray = np.vectorize(
            lambda v: (v.decode() if isinstance(v, bytes) else str(v)) == "call", otypes=[bool]
        )(arr)
        return calls
    return arr.astype(bool)


def black76(forward: Any, strike: Any, time: Any, vol: Any, is_call: Any) -> Black76:
    """Vectorized Black-76 (§5): scalars or equal-length sequences / numpy arrays, broadcast
    with numpy. Returns `Black76(price, delta, gamma, vega, theta)` of float64 arrays of the
    broadcast shape; each element is `black76_scalar` of the corresponding inputs."""
    f, k, t, v, c = np.broadcast_arrays(
        np.asarray(forward, dtype=np.float64),
        np.asarray(strike, dtype=np.float64),
        np.asarray(time, dtype=np.float64),
        np.asarray(vol, dtype=np.float64),
        _as_is_call(is_call),
    )
    out = [np.empty(f.shape, dtype=np.float64) for _ in range(5)]
    for idx in np.ndindex(f.shape):
        values = black76_scalar(float(f[idx]), float(k[idx]), float(t[idx]), float(v[idx]), bool(c[idx]))
        for arr, value in zip(out, values, strict=True):
            arr[idx] = value
    return Black76(*out)
