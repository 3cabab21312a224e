"""Input helpers for implied vols.

Venues often publish their vol surface as SVI parameters per expiry rather than as a vol per
strike. The margin engine itself takes marks and implied vols; `svi_implied_vol` turns a venue's
raw SVI slice into the implied vols the engine reads.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from margin_engine._inputs import input_error

__all__ = ["svi_implied_vol", "svi_total_variance"]

_SVI_KEYS = ("a", "b", "rho", "m", "sigma")


def _svi_params(params: Any) -> tuple[float, float, float, float, float]:
    """`(a, b, rho, m, sigma)` from a mapping with those keys or a sequence of five numbers."""
    if isinstance(params, Mapping):
        unknown = sorted(set(params) - set(_SVI_KEYS))
        if unknown:
            raise input_error("svi", unknown[0], f"unknown SVI parameter (known: {', '.join(_SVI_KEYS)})")
        missing = [k for k in _SVI_KEYS if k not in params]
        if missing:
            raise input_error("svi", missing[0], "missing SVI parameter")
        values = [params[k] for k in _SVI_KEYS]
    else:
        values = list(params)
        if len(values) != 5:
            raise input_error("svi", "params", f"expected the five raw SVI parameters (a, b, rho, m, sigma), got {len(values)}")
    out = []
    for key, value in zip(_SVI_KEYS, values, strict=True):
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise input_error("svi", key, f"expected a number, got {value!r}") from None
        if not math.isfinite(v):
            raise input_error("svi", key, f"expected a finite number, got {value!r}")
        out.append(v)
    a, b, rho, m, sigma = out
    if b < 0.0:
        raise input_error("svi", "b", f"must be >= 0, got {b!r}")
    if not -1.0 < rho < 1.0:
        raise input_error("svi", "rho", f"must be in (-1, 1), got {rho!r}")
    if sigma <= 0.0:
        raise input_error("svi", "sigma", f"must be > 0, got {sigma!r}")
    return a, b, rho, m, sigma


def svi_total_variance(params: Any, k: float) -> float:
    """Raw SVI total implied variance at log-moneyness `k = ln(K / F)`:
    `w(k) = a + b (ρ (k − m) + sqrt((k − m)² + σ²))`."""
    a, b, rho, m, sigma = _svi_params(params)
    d = k - m
    return a + b * (rho * d + math.sqrt(d * d + sigma * sigma))


def svi_implied_vol(
    params: Any,
    forward: float,
    strikes: Iterable[float] | float,
    expiry: float,
    *,
    k_bound_scale: float | None = None,
    max_total_variance: float | None = None,
) -> Any:
    """Implied vols `sqrt(w(k) / t)` of a raw SVI slice at the given strikes.

    - `params`: the raw SVI parameters, a mapping `{a, b, rho, m, sigma}` or the sequence
      `(a, b, rho, m, sigma)`; `b >= 0`, `-1 < rho < 1`, `sigma > 0`.
    - `forward`: the slice's forward (> 0); log-moneyness is `k = ln(strike / forward)`.
    - `strikes`: one strike or a sequence (each > 0).
    - `expiry`: the slice's time to expiry in years (> 0), the `t` its total variance is
      quoted over (a venue may quote it on a clock slightly different from the calendar's).
    - `k_bound_scale`: if given, `k` is clamped to `±k_bound_scale × sqrt(a + b σ)` (the
      minimum total vol), a guard some venues apply far in the wings (Derive/Lyra: 4).
    - `max_total_variance`: if given, `w` is capped there (Derive/Lyra: 144).

    Returns a float for a scalar strike, else a float64 numpy array. A negative total variance
    (an arbitrageable slice) is a `MarginInputError` naming the strikes.
    """
    a, b, rho, m, sigma = _svi_params(params)
    forward = float(forward)
    expiry = float(expiry)
    if not (math.isfinite(forward) and forward > 0.0):
        raise input_error("svi", "forward", f"must be a finite number > 0, got {forward!r}")
    if not (math.isfinite(expiry) and expiry > 0.0):
        raise input_error("svi", "expiry", f"must be a finite number of years > 0, got {expiry!r}")
    scalar = np.ndim(strikes) == 0
    ks = np.atleast_1d(np.asarray(strikes, dtype=np.float64))
    bad = [str(s) for s in ks if not (math.isfinite(s) and s > 0.0)]
    if bad:
        raise input_error("svi", "strikes", "must be finite numbers > 0", bad[:10])
    bound = None
    if k_bound_scale is not None:
        floor_variance = a + b * sigma
        if floor_variance < 0.0:
            raise input_error("svi", "a", f"a + b*sigma must be >= 0 to bound k, got {floor_variance!r}")
        bound = float(k_bound_scale) * math.sqrt(floor_variance)
    vols = np.empty(ks.shape, dtype=np.float64)
    negative = []
    for i, strike in enumerate(ks):
        k = math.log(strike / forward)
        if bound is not None:
            k = min(max(k, -bound), bound)
        d = k - m
        w = a + b * (rho * d + math.sqrt(d * d + sigma * sigma))
        if w < 0.0:
            negative.append(str(strike))
            continue
        if max_total_variance is not None:
            w = min(w, float(max_total_variance))
        vols[i] = math.sqrt(w / expiry)
    if negative:
        raise input_error("svi", "params", "negative total variance at these strikes", negative[:10])
    return float(vols[0]) if scalar else vols
