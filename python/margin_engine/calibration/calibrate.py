"""``me.calibrate``: portfolio-model scan ranges, vol shocks and collateral weights from a price
history (``docs/calibration.md``).

The same code gives today's calibration (:func:`calibrate`, the last candle of each symbol) and
the calibration as it stood at every date of a backtest (:func:`fit_series` at many dates), so a
backtest tests exactly what ``calibrate`` would have produced that day from the data up to it.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from margin_engine._inputs import as_output, check_choice, check_number, check_output, input_error
from margin_engine.calibration import models
from margin_engine.calibration.history import (
    DAY,
    GAP_CHOICES,
    History,
    Series,
    duration_text,
    iso,
    parse_duration,
    read_history,
)

__all__ = ["AntiProcyclicality", "Calibration", "Settings", "calibrate", "fit_series", "settings"]

METHODS = ("ewma", "fhs", "garch")
MEASURES = ("var", "es")
MAX_RANGE = 0.999  # price_range must be < 1
APC_PRESETS = {
    "buffer": {"buffer": 0.25},
    "stress_weight": {"stress_weight": 0.25},
    "long_floor": {"long_floor": True},
    "released_buffer": {"buffer": 0.25, "buffer_release": True},
}


@dataclasses.dataclass(frozen=True)
class AntiProcyclicality:
    """How the range is kept from swinging with the market, as central counterparties do
    (EMIR RTS 153/2013 Art. 28 lists the first three; ``docs/calibration.md`` shows each on the
    data). From the method's range ``R`` (today's), ``R_stress`` (the same method without the vol
    filter, over the stressed period) and ``R_long`` (the same over ``long_lookback``):

    1. ``R1 = (1 − stress_weight − long_weight)·R + stress_weight·R_stress + long_weight·R_long``
       (weights to stressed and to long-lookback observations; EMIR (b) is ``stress_weight=0.25``);
    2. ``R2 = max(R1, stress_floor·R_stress, R_long if long_floor)`` (a floor: EMIR (c) is
       ``long_floor=True`` with a ten-year lookback; ``stress_floor=1`` floors at the stressed VaR);
    3. ``R3 = (1 + buffer)·R2`` (a buffer the range carries in calm markets; EMIR (a) is 25%);
       with ``buffer_release=True`` the buffer is drawn down when the range rises:
       ``R3 = max(R2, (1 + buffer)·min R2 over the last buffer_window)`` (days at the same time of
       day), so a rise is absorbed up to the buffer, and the buffer is rebuilt once the higher
       range has lasted ``buffer_window`` (30 days).

    ``stress_period``: ``(start, end)`` (ISO dates or datetimes), or ``None``: the window of
    ``stress_window`` with the highest realized volatility in the history up to the date being
    calibrated (so a backtest never looks ahead). The presets ``"buffer"``, ``"stress_weight"``
    and ``"long_floor"`` are EMIR's three options with their regulatory minimums;
    ``"released_buffer"`` is the 25% buffer drawn down as the range rises.
    """

    buffer: float = 0.0
    stress_weight: float = 0.0
    stress_floor: float = 0.0
    long_weight: float = 0.0
    long_floor: bool = False
    long_lookback: str = "10y"
    stress_period: tuple[Any, Any] | None = None
    stress_window: str = "365d"
    buffer_release: bool = False
    buffer_window: str = "30d"

    @property
    def needs_stress(self) -> bool:
        return self.stress_weight > 0 or self.stress_floor > 0

    @property
    def needs_long(self) -> bool:
        return self.long_weight > 0 or self.long_floor

    def apply(self, base: Any, stress: float | None, long: float | None) -> Any:
        """The anti-procyclical range of ``base`` (a number or an array); a missing ``stress`` or
        ``long`` figure (no such history yet) leaves its weight on ``base`` and its floor off."""
        stress_v = base if stress is None else stress
        long_v = base if long is None else long
        r = (1.0 - self.stress_weight - self.long_weight) * base + self.stress_weight * stress_v + self.long_weight * long_v
        if self.stress_floor > 0 and stress is not None:
            r = np.maximum(r, self.stress_floor * stress)
        if self.long_floor and long is not None:
            r = np.maximum(r, long)
        return r if self.buffer_release else r * (1.0 + self.buffer)


def _anti_procyclicality(value: Any) -> AntiProcyclicality | None:
    if value is None or isinstance(value, AntiProcyclicality):
        return value
    if isinstance(value, str):
        if value not in APC_PRESETS:
            raise input_error(
                "arguments", "anti_procyclicality",
                f"unknown preset {value!r} (have {', '.join(map(repr, APC_PRESETS))}, a dict or an AntiProcyclicality)",
            )  # fmt: skip
        value = APC_PRESETS[value]
    if not isinstance(value, dict):
        raise input_error(
            "arguments", "anti_procyclicality", f"expected None, a preset name, a dict or an AntiProcyclicality, got {type(value).__name__}"
        )
    fields = {f.name for f in dataclasses.fields(AntiProcyclicality)}
    unknown = [k for k in value if k not in fields]
    if unknown:
        raise input_error("arguments", "anti_procyclicality", "unknown option", [repr(k) for k in unknown])
    apc = AntiProcyclicality(**value)
    for name in ("buffer", "stress_weight", "stress_floor", "long_weight"):
        check_number(getattr(apc, name), f"anti_procyclicality.{name}", 0.0, 10.0)
    if apc.stress_weight + apc.long_weight > 1.0:
        raise input_error("arguments", "anti_procyclicality", "stress_weight + long_weight must be <= 1")
    parse_duration(apc.long_lookback, "anti_procyclicality.long_lookback")
    parse_duration(apc.stress_window, "anti_procyclicality.stress_window")
    if parse_duration(apc.buffer_window, "anti_procyclicality.buffer_window") % DAY:
        raise input_error("arguments", "anti_procyclicality.buffer_window", f"must be whole days, got {apc.buffer_window!r}")
    if apc.stress_period is not None:
        _period_seconds(apc.stress_period)
    return apc


def _period_seconds(period: Any) -> tuple[int, int]:
    from margin_engine._inputs import timestamp_ns

    try:
        start, end = period
        a, b = timestamp_ns(start) // 1_000_000_000, timestamp_ns(end) // 1_000_000_000
    except Exception as e:
        raise input_error(
            "arguments", "anti_procyclicality.stress_period", f"expected (start, end) timestamps, got {period!r}"
        ) from e
    if b <= a:
        raise input_error("arguments", "anti_procyclicality.stress_period", f"end must be after start, got {period!r}")
    return int(a), int(b)


@dataclasses.dataclass(frozen=True)
class Settings:
    """Checked options of one calibration (see :func:`calibrate`)."""

    horizon: int
    confidence: float
    method: str
    measure: str
    decay: float
    lookback: int
    gaps: str
    apc: AntiProcyclicality | None
    im_factor: float
    price_steps: int
    extreme_cover: float
    vol_term_exponent: float
    short_option_minimum: float
    impact: float
    reference_fraction: float
    garch_refit: int

    def periods(self, period: int) -> float:
        """The horizon in periods of a series; a horizon longer than one period must be a whole
        number of them."""
        k = self.horizon / period
        if k > 1 and abs(k - round(k)) > 1e-9:
            raise input_error(
                "arguments", "horizon",
                f"a horizon longer than the history's period must be a whole number of periods: "
                f"{duration_text(self.horizon)} over {duration_text(period)} candles",
            )  # fmt: skip
        return float(round(k)) if k >= 1 else k

    def lam(self, period: int) -> float:
        """EWMA λ per period: ``decay`` is per day, ``λ = decay ** (period / 1 day)``."""
        return self.decay ** (period / DAY)


def settings(
    *,
    horizon: Any = "1h",
    confidence: Any = 0.999,
    method: Any = "ewma",
    measure: Any = "var",
    decay: Any = 0.94,
    lookback: Any = "4y",
    gaps: Any = "scale",
    anti_procyclicality: Any = None,
    im_factor: Any = 1.25,
    price_steps: Any = 21,
    extreme_cover: Any = 0.33,
    vol_term_exponent: Any = 0.3,
    short_option_minimum: Any = 0.01,
    impact: Any = 1.0,
    reference_fraction: Any = 0.1,
    garch_refit: Any = "30d",
) -> Settings:
    """Checked :class:`Settings`; a bad option is a MarginInputError on table ``arguments``."""
    method = check_choice(method, "method", METHODS)
    if method == "garch":
        try:
            import arch  # noqa: F401
        except ImportError as e:
            raise ImportError("method='garch' needs the arch library: pip install 'margin-engine[garch]'") from e
    steps = price_steps
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 3 or steps > 100_001 or steps % 2 == 0:
        raise input_error("arguments", "price_steps", f"must be an odd integer in [3, 100001], got {price_steps!r}")
    conf = check_number(confidence, "confidence", 0.5, 1.0)
    if not 0.5 < conf < 1.0:
        raise input_error("arguments", "confidence", f"must be in (0.5, 1), got {confidence!r}")
    dec = check_number(decay, "decay", 0.0, 1.0)
    if not 0.0 < dec < 1.0:
        raise input_error("arguments", "decay", f"must be in (0, 1), got {decay!r}")
    return Settings(
        horizon=parse_duration(horizon, "horizon"),
        confidence=conf,
        method=method,
        measure=check_choice(measure, "measure", MEASURES),
        decay=dec,
        lookback=parse_duration(lookback, "lookback"),
        gaps=check_choice(gaps, "gaps", GAP_CHOICES),
        apc=_anti_procyclicality(anti_procyclicality),
        im_factor=check_number(im_factor, "im_factor", 1.0, 100.0),
        price_steps=int(steps),
        extreme_cover=check_number(extreme_cover, "extreme_cover", 0.0, 100.0),
        vol_term_exponent=check_number(vol_term_exponent, "vol_term_exponent", 0.0, 100.0),
        short_option_minimum=check_number(short_option_minimum, "short_option_minimum", 0.0, 1.0),
        impact=check_number(impact, "impact", 0.0, 100.0),
        reference_fraction=check_number(reference_fraction, "reference_fraction", 1e-9, 1e9),
        garch_refit=parse_duration(garch_refit, "garch_refit"),
    )


# ----------------------------------------------------------------------------------------------
# One symbol at many dates
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Prepared:
    """A series' returns and EWMA filter, shared by every date of a fit."""

    series: Series
    r: np.ndarray          # log returns (gaps handled)
    end: np.ndarray        # candle index each return ends at
    t: np.ndarray          # time each return ends at
    lam: float
    burn: int              # returns used to seed the filter; no residual before it is sampled
    v0: float
    k: float               # horizon in periods
    ewma_pred: np.ndarray
    ewma_post: np.ndarray


def prepare(series: Series, st: Settings) -> Prepared:
    r, end = series.returns(st.gaps)
    k = st.periods(series.period)
    lam = st.lam(series.period)
    burn = max(1, min(r.size, math.ceil(1.0 / (1.0 - lam))))
    if r.size <= burn + max(1, int(k)):
        raise input_error(
            "prices", "time", f"too few returns in {series.symbol!r}: {r.size} (the EWMA seed alone takes {burn})",
            [f"{series.symbol} {iso(series.times[0])} .. {iso(series.times[-1])}"],
        )  # fmt: skip
    v0 = float(np.mean(r[:burn] ** 2))
    if v0 <= 0:
        v0 = float(np.mean(r**2)) or 1e-12
    pred, post = models.variance_filter(r, 0.0, 1.0 - lam, lam, v0)
    return Prepared(series, r, end, series.times[end], lam, burn, v0, k, pred, post)


def first_eval_time(series: Series, st: Settings) -> int:
    """The first date with a whole lookback of history behind it."""
    return int(series.times[0]) + st.lookback


def check_lookback(series: Series, st: Settings) -> None:
    span = int(series.times[-1] - series.times[0])
    if span < st.lookback:
        raise input_error(
            "prices", "time",
            f"history shorter than the lookback ({duration_text(st.lookback)}): {series.symbol} spans "
            f"{span / DAY:.0f} days (pass a shorter lookback=)",
            [f"{series.symbol} {iso(series.times[0])} .. {iso(series.times[-1])}"],
        )  # fmt: skip


def _window(p: Prepared, t_end: int, span: int, burn: bool = True) -> tuple[int, int]:
    """[lo, hi) of the returns ending in (t_end − span, t_end]."""
    lo = int(np.searchsorted(p.t, t_end - span, side="right"))
    hi = int(np.searchsorted(p.t, t_end, side="right"))
    return (max(lo, p.burn) if burn else lo), hi


def _raw_moves(p: Prepared, lo: int, hi: int, st: Settings, normal_z: float | None) -> dict[str, float] | None:
    """Tail moves of the unfiltered returns ``r[lo:hi]`` over the horizon (the long-lookback and
    stressed figures): a normal at their root mean square (EWMA) or their empirical quantiles."""
    if hi - lo < max(2, int(p.k) + 1):
        return None
    r = p.r[lo:hi]
    if normal_z is not None:
        rms = math.sqrt(float(np.mean(r * r)))
        return models.tail_moves(None, rms * math.sqrt(p.k), st.confidence, z=normal_z)
    scale = math.sqrt(p.k)
    return models.tail_moves(models.horizon_sums(r, p.k), scale, st.confidence)


def _side(m: dict[str, float], measure: str) -> tuple[float, float]:
    return m[f"down_{measure}"], m[f"up_{measure}"]


def _stress_window(p: Prepared, t_end: int, st: Settings, cache: dict[str, Any]) -> tuple[int, int] | None:
    """[lo, hi) of the stressed period's returns known at ``t_end``."""
    apc = st.apc
    assert apc is not None
    hi_now = int(np.searchsorted(p.t, t_end, side="right"))
    if apc.stress_period is not None:
        a, b = _period_seconds(apc.stress_period)
        lo = int(np.searchsorted(p.t, a, side="right"))
        hi = int(np.searchsorted(p.t, min(b, t_end), side="right"))
        return (lo, hi) if hi - lo >= 2 else None
    width = parse_duration(apc.stress_window, "anti_procyclicality.stress_window")
    if "rms" not in cache:  # rolling mean square over windows ending at each return
        c2 = np.concatenate([[0.0], np.cumsum(p.r * p.r)])
        lo_w = np.searchsorted(p.t, p.t - width, side="right")
        idx = np.arange(p.r.size)
        ms = (c2[idx + 1] - c2[lo_w]) / (idx + 1 - lo_w)
        complete = p.t - width >= p.series.times[0]
        ms = np.where(complete, ms, -1.0)
        best = np.maximum.accumulate(ms)
        rises = np.diff(best, prepend=-2.0) > 0  # where the running maximum is first reached
        arg = np.maximum.accumulate(np.where(rises, np.arange(p.r.size), 0))  # running argmax
        cache["rms"], cache["arg"], cache["lo_w"], cache["best"] = ms, arg, lo_w, best
    if hi_now == 0:
        return None
    i = hi_now - 1
    if cache["best"][i] < 0:  # no complete window yet: all returns so far
        return (0, hi_now)
    j = int(cache["arg"][i])
    return int(cache["lo_w"][j]), j + 1


def fit_series(
    series: Series, st: Settings, eval_times: np.ndarray, *, refit: int = 1, prepared: Prepared | None = None
) -> dict[str, np.ndarray]:
    """The calibration of ``series`` at each time of ``eval_times`` (ascending, each a candle
    time after the first lookback), from the returns up to that time only. The tail quantiles
    (and the GARCH parameters, every ``garch_refit``) are re-estimated every ``refit`` dates and
    carried in between; the volatility is today's at every date. Returns arrays, one value per
    date: the figures of :meth:`Calibration.report`."""
    p = prepared or prepare(series, st)
    apc = st.apc
    if apc is None or not apc.buffer_release or apc.buffer == 0:
        out = _fit(series, st, eval_times, refit, p)
        out.pop("_uncapped")
        return out
    # a released buffer needs the range on the days before each date (same time of day)
    window = parse_duration(apc.buffer_window, "buffer_window") // DAY
    first = first_eval_time(series, st)
    anchors = (eval_times[:, None] - DAY * np.arange(window)[None, :]).ravel()
    anchors = anchors[(anchors >= first) & np.isin(anchors, series.times)]
    grid = np.union1d(eval_times, anchors)
    out = _fit(series, st, grid, refit, p)
    r2 = out.pop("_uncapped")
    pos = {int(t): i for i, t in enumerate(grid)}
    low = np.empty(grid.size)
    for i, t in enumerate(grid.tolist()):
        idx = [pos[a] for a in range(t - (window - 1) * DAY, t + 1, DAY) if a in pos]
        low[i] = r2[idx].min()
    final = np.maximum(r2, (1.0 + apc.buffer) * low)
    scale = np.where(r2 > 0, final / np.where(r2 > 0, r2, 1.0), 1.0)
    out["capped"] = final > MAX_RANGE
    out["price_range"] = np.minimum(final, MAX_RANGE)
    out["haircut_move"] = np.minimum(1.0, out["haircut_move"] * scale)
    out["liability_move"] = out["liability_move"] * scale
    keep = np.searchsorted(grid, eval_times)
    return {name: values[keep] for name, values in out.items()}


def _fit(series: Series, st: Settings, eval_times: np.ndarray, refit: int, p: Prepared) -> dict[str, np.ndarray]:
    n = eval_times.size
    conf, k, method = st.confidence, p.k, st.method
    z = models.normal_quantile(conf)
    out: dict[str, np.ndarray] = {
        name: np.full(n, np.nan)
        for name in (
            "sigma", "sigma_horizon", "down_var", "up_var", "down_es", "up_es", "base_range", "long_range",
            "stress_range", "price_range", "vol_up", "vol_down", "kurtosis", "haircut_move", "liability_move",
            "samples", "omega", "alpha", "beta", "stress_start", "stress_end",
        )
    }  # fmt: skip
    out["capped"] = np.zeros(n, dtype=bool)
    out["_uncapped"] = np.full(n, np.nan)
    his = np.searchsorted(p.t, eval_times, side="right")  # returns known at each date
    if (his <= p.burn).any():
        raise input_error("arguments", "lookback", "a date to calibrate has no return after the EWMA seed")
    garch: tuple[float, float, float] | None = None
    g_pred = g_post = None
    g_set: set[int] = set()
    cache: dict[str, Any] = {}
    kp = max(1, int(round(k))) if k >= 1 else 1
    normal = method == "ewma"
    # blocks of dates sharing one estimate of the tails (and of the GARCH parameters)
    starts = list(range(0, n, refit))
    if method == "garch":  # a GARCH refit also starts a block
        g_starts, last = [], None
        for e in range(n):
            if last is None or int(eval_times[e]) - last >= st.garch_refit:
                g_starts.append(e)
                last = int(eval_times[e])
        starts = sorted(set(starts) | set(g_starts))
        g_set = set(g_starts)
    bounds = starts + [n]
    for b0, b1 in zip(bounds[:-1], bounds[1:]):
        t_end, hi = int(eval_times[b0]), int(his[b0])
        if method == "garch" and b0 in g_set:
            lo_r, _ = _window(p, t_end, st.lookback, burn=False)
            garch = models.garch_fit(p.r[lo_r:hi])
            g_pred, g_post = models.variance_filter(p.r, *garch, p.v0)
        pred, post = (g_pred, g_post) if method == "garch" else (p.ewma_pred, p.ewma_post)
        assert pred is not None and post is not None
        lo, _ = _window(p, t_end, st.lookback)
        resid = p.r[lo:hi] / np.sqrt(pred[lo:hi])
        s = models.horizon_sums(resid, k)
        nsamp = s.size
        if nsamp < max(2, math.ceil(1.0 / (1.0 - conf))):
            raise input_error(
                "arguments", "lookback",
                f"{series.symbol}: the lookback ({duration_text(st.lookback)}) holds {nsamp} samples of the horizon, "
                f"fewer than 1/(1 − confidence) = {math.ceil(1.0 / (1.0 - conf))}; lengthen lookback= or lower confidence=",
            )  # fmt: skip
        kurt = models.excess_kurtosis(s)
        tail = models.tail_moves(None if normal else s, 1.0, conf, z=z if normal else None)
        ratio = np.sqrt(post[lo + kp : hi] / post[lo : hi - kp]) if hi - lo > kp else np.ones(1)
        q_lo, q_hi = np.quantile(ratio, [1.0 - conf, conf])
        shock = (max(0.0, float(q_hi) - 1.0), min(0.99, max(0.0, 1.0 - float(q_lo))))
        long_r = stress_r = None
        stress_span = (np.nan, np.nan)
        if st.apc is not None and st.apc.needs_long:
            llo, lhi = _window(p, t_end, parse_duration(st.apc.long_lookback, "long_lookback"), burn=False)
            m = _raw_moves(p, llo, lhi, st, z if normal else None)
            long_r = None if m is None else max(_side(m, st.measure))
        if st.apc is not None and st.apc.needs_stress:
            w = _stress_window(p, t_end, st, cache)
            m = None if w is None else _raw_moves(p, w[0], w[1], st, z if normal else None)
            stress_r = None if m is None else max(_side(m, st.measure))
            stress_span = (np.nan, np.nan) if w is None else (float(p.t[w[0]]), float(p.t[w[1] - 1]))
        # every date of the block: today's vol, the block's tails
        blk = slice(b0, b1)
        v_next = post[his[blk] - 1]
        sigma = np.sqrt(v_next)
        if method == "garch":
            assert garch is not None
            sig_h = np.sqrt(models.garch_horizon_variance(v_next, *garch, k))
            out["omega"][blk], out["alpha"][blk], out["beta"][blk] = garch
        else:
            sig_h = sigma * math.sqrt(k)
        if normal:
            pdf = math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)
            lo_var, hi_var, lo_es, hi_es = -z, z, -pdf / (1.0 - conf), pdf / (1.0 - conf)
        else:
            lo_var, hi_var, lo_es, hi_es = tail["log_down_var"], tail["log_up_var"], tail["log_down_es"], tail["log_up_es"]
        moves = {
            "down_var": -np.expm1(lo_var * sig_h), "up_var": np.expm1(hi_var * sig_h),
            "down_es": -np.expm1(lo_es * sig_h), "up_es": np.expm1(hi_es * sig_h),
        }  # fmt: skip
        down, up = moves[f"down_{st.measure}"], moves[f"up_{st.measure}"]
        base = np.maximum(down, up)
        final = base if st.apc is None else st.apc.apply(base, stress_r, long_r)
        # haircut moves: EWMA's normal tail replaced by the Student-t of the samples' kurtosis
        if normal:
            zt_var, zt_es = models.student_tail(conf, kurt)
            zt = zt_var if st.measure == "var" else zt_es
            h_down, h_up = -np.expm1(-zt * sig_h), np.expm1(zt * sig_h)
        else:
            h_down, h_up = down, up
        factor = np.where(base > 0, final / np.where(base > 0, base, 1.0), 1.0)
        out["sigma"][blk], out["sigma_horizon"][blk] = sigma, sig_h
        for name in ("down_var", "up_var", "down_es", "up_es"):
            out[name][blk] = moves[name]
        out["base_range"][blk] = base
        out["long_range"][blk] = np.nan if long_r is None else long_r
        out["stress_range"][blk] = np.nan if stress_r is None else stress_r
        out["stress_start"][blk], out["stress_end"][blk] = stress_span
        out["capped"][blk] = final > MAX_RANGE
        out["_uncapped"][blk] = final
        out["price_range"][blk] = np.minimum(final, MAX_RANGE)
        out["vol_up"][blk], out["vol_down"][blk] = shock
        out["kurtosis"][blk] = kurt
        out["haircut_move"][blk] = np.minimum(1.0, h_down * factor)
        out["liability_move"][blk] = h_up * factor
        out["samples"][blk] = nsamp
    return out


# ----------------------------------------------------------------------------------------------
# calibrate()
# ----------------------------------------------------------------------------------------------


def extreme_move(price_range: float) -> float:
    """3.0 (the engine's default), or less so that ``extreme_move × price_range <= 1``."""
    em = min(3.0, 1.0 / price_range)
    while em * price_range > 1.0:
        em = math.nextafter(em, 0.0)
    return em


def _adv_units(series: Series, volume_in: str) -> float | None:
    """Median volume per candle over the last 30 days, in units of the asset, × candles per day."""
    if series.volume is None:
        return None
    lo = int(np.searchsorted(series.times, series.times[-1] - 30 * DAY, side="right"))
    vol = series.volume[lo:]
    if volume_in == "quote":
        vol = vol / series.close[lo:]
    adv = float(np.median(vol)) * DAY / series.period
    return adv if adv > 0 else None


def size_premium(weight: float, sigma_daily: float, adv: float | None, st: Settings) -> tuple[float, float]:
    """(size_premium, impact at the reference size). The square-root law of market impact: selling
    a holding of ``A`` units moves the price by about ``impact × σ_daily × sqrt(A / ADV)``. The
    engine's ``min(w, 1.1 / (1 + size_premium·sqrt(A)))`` is matched to ``w − impact`` at the
    reference holding ``A* = reference_fraction × ADV``."""
    if adv is None or st.impact == 0 or weight <= 0:
        return 0.0, 0.0
    impact = st.impact * sigma_daily * math.sqrt(st.reference_fraction)
    target = max(weight - impact, 0.01)
    a_star = st.reference_fraction * adv
    return max(0.0, (1.1 / target - 1.0) / math.sqrt(a_star)), impact


@dataclasses.dataclass
class Calibration:
    """What :func:`calibrate` measured.

    ``risk_params``: one row per symbol, the portfolio-model columns of :class:`margin_engine.Book`
    (``underlying, price_range, price_steps, vol_up, vol_down, vol_term_exponent, extreme_move,
    extreme_cover, short_option_minimum, im_factor``), ready for ``me.Book(..., risk_params=...)``.
    ``assets``: one row per symbol plus the quote asset (``asset, price, initial_weight,
    maintenance_weight, initial_liability_weight, maintenance_liability_weight, size_premium,
    underlying``), ready for ``me.Book(instruments, assets, ...)``. ``gaps``: the history's gaps
    (``symbol, after, missing_periods``). :meth:`report`: the figures behind every number.
    """

    risk_params: Any
    assets: Any
    gaps: pa.Table
    settings: Settings
    _report: pa.Table
    output: str = "arrow"

    def report(self, output: Literal["arrow", "polars"] = "arrow") -> Any:
        """One row per symbol: ``symbol, method, measure, horizon, confidence, period, returns,
        first, last, gaps, lambda, sigma`` (today's vol per period), ``sigma_annual`` (× √(periods
        a year, 365 days)), ``sigma_horizon``, ``down_var, up_var, down_es, up_es`` (relative moves
        over the horizon), ``kurtosis`` (excess, of the filtered horizon samples), ``samples``,
        ``base_range`` (max of the down and up move of the measure), ``long_range``,
        ``stress_range``, ``stress_start``, ``stress_end`` (anti-procyclicality inputs, null when
        unused), ``price_range`` (after anti-procyclicality, capped at 0.999: ``capped``),
        ``vol_up, vol_down`` (the horizon's relative change of the filter's vol at the
        confidence), ``haircut_move`` and ``liability_move`` (the down and up moves behind the
        weights), ``adv`` (units a day), ``impact`` (at the reference holding), ``size_premium``,
        ``omega, alpha, beta`` (GARCH only)."""
        return as_output(self._report, output)

    def __repr__(self) -> str:
        st = self.settings
        return (
            f"Calibration({self._report.num_rows} symbols, method={st.method!r}, horizon={duration_text(st.horizon)!r}, "
            f"confidence={st.confidence})"
        )


def calibrate(
    prices: Any,
    *,
    horizon: str = "1h",
    confidence: float = 0.999,
    method: Literal["ewma", "fhs", "garch"] = "ewma",
    anti_procyclicality: Any = None,
    measure: Literal["var", "es"] = "var",
    decay: float = 0.94,
    lookback: str = "4y",
    gaps: Literal["scale", "drop"] = "scale",
    symbols: list[str] | None = None,
    volume_in: Literal["base", "quote"] = "base",
    quote_asset: str | None = "USD",
    im_factor: float = 1.25,
    price_steps: int = 21,
    extreme_cover: float = 0.33,
    vol_term_exponent: float = 0.3,
    short_option_minimum: float = 0.01,
    impact: float = 1.0,
    reference_fraction: float = 0.1,
    output: Literal["arrow", "polars"] = "arrow",
) -> Calibration:
    """Scan ranges, vol shocks and collateral weights per symbol from a price history
    (``docs/calibration.md``).

    Reads ``prices``: ``symbol`` (utf8), ``time`` (timestamp or date), ``close`` (float > 0),
    optional ``volume`` (float >= 0; ``volume_in="base"`` units of the coin, ``"quote"`` USD);
    other columns are ignored. Within a symbol, times increase, no repeats; gaps are reported in
    ``Calibration.gaps`` and handled by ``gaps=`` (``"scale"``: the return across a gap of k
    periods enters divided by √k; ``"drop"``: left out). Each symbol needs ``lookback`` of history.

    Method (log returns, zero mean; λ per period = ``decay`` ** (period / 1 day), RiskMetrics'
    0.94 a day):

    - ``"ewma"``: σ from the EWMA filter, σ_h = σ√k over the horizon's k periods, normal quantile.
    - ``"fhs"``: filtered historical simulation: returns over the ``lookback`` divided by their
      EWMA vol (devolatilized), summed over k consecutive periods, and rescaled by today's σ_h
      (revolatilized); their empirical quantile (VaR) and tail mean (expected shortfall).
    - ``"garch"``: as ``"fhs"`` with a GARCH(1,1) filter fitted by ``arch`` over the lookback,
      σ_h from GARCH's variance term structure (``pip install 'margin-engine[garch]'``).

    ``price_range`` = the larger of the down move ``1 − e^q_low`` and the up move ``e^q_high − 1``
    at ``confidence`` (``measure="var"``) or their expected shortfall (``"es"``), then
    ``anti_procyclicality`` (None, ``"buffer"``, ``"released_buffer"``, ``"stress_weight"``,
    ``"long_floor"``, a dict or an :class:`AntiProcyclicality`), capped at 0.999. ``vol_up``/``vol_down``: the confidence
    quantiles of the filter's vol change over the horizon (a realized-vol proxy of the implied-vol
    shock). Other risk_params columns: the given values (``extreme_move`` 3, or 1/range).

    Assets: maintenance haircut = the down move (EWMA: of the unit-variance Student-t whose excess
    kurtosis is the samples'; FHS and GARCH: their own fat tails), scaled like the range by
    anti-procyclicality; initial haircut = ``im_factor`` × that; liability weights 1 + the up move
    (× ``im_factor`` for initial). ``size_premium`` from traded volume by the square-root impact
    law (``impact``, ``reference_fraction`` of the average daily volume; 0 without volume). The
    ``quote_asset`` row (price 1, weights 1) is added unless ``None``.

    >>> import margin_engine as me, numpy as np, datetime as dt
    >>> t = [dt.datetime(2020, 1, 1) + dt.timedelta(days=i) for i in range(800)]
    >>> close = 100 * np.exp(np.cumsum(np.where(np.arange(800) % 2, 0.02, -0.02)))
    >>> cal = me.calibrate({"symbol": ["X"] * 800, "time": t, "close": close}, horizon="1d",
    ...                    confidence=0.99, lookback="700d")
    >>> r = cal.risk_params.to_pylist()[0]
    >>> round(r["price_range"], 4)   # a vol of 2% a day: e^(2.326 × 0.02) − 1
    0.0476
    """
    st = settings(
        horizon=horizon, confidence=confidence, method=method, measure=measure, decay=decay, lookback=lookback,
        gaps=gaps, anti_procyclicality=anti_procyclicality, im_factor=im_factor, price_steps=price_steps,
        extreme_cover=extreme_cover, vol_term_exponent=vol_term_exponent, short_option_minimum=short_option_minimum,
        impact=impact, reference_fraction=reference_fraction,
    )  # fmt: skip
    output = check_output(output)
    if quote_asset is not None and not isinstance(quote_asset, str):
        raise input_error("arguments", "quote_asset", f"expected a string or None, got {quote_asset!r}")
    history = read_history(prices, volume_in=volume_in, symbols=symbols)
    if quote_asset is not None and quote_asset in history.series:
        raise input_error("arguments", "quote_asset", f"{quote_asset!r} is also a symbol of prices; pass quote_asset=None")
    for s in history.series.values():
        check_lookback(s, st)
    return _calibration(history, st, quote_asset, output)


def _calibration(history: History, st: Settings, quote_asset: str | None, output: str) -> Calibration:
    rows: dict[str, list[Any]] = {}
    assets: dict[str, list[Any]] = {c: [] for c in ("asset", "price", "initial_weight", "maintenance_weight",
                                                    "initial_liability_weight", "maintenance_liability_weight",
                                                    "size_premium", "underlying")}  # fmt: skip
    gap_counts = dict(zip(*np.unique(np.array(history.gaps.column("symbol").to_pylist(), dtype=object), return_counts=True))) if history.gaps.num_rows else {}
    for name, s in history.series.items():
        p = prepare(s, st)
        fit = fit_series(s, st, np.array([s.times[-1]]), prepared=p)
        f = {key: (v[0].item() if hasattr(v[0], "item") else v[0]) for key, v in fit.items()}
        sigma_daily = f["sigma"] * math.sqrt(DAY / s.period)
        h_m = f["haircut_move"]
        w_m = max(0.0, 1.0 - h_m)
        w_i = max(0.0, 1.0 - min(1.0, st.im_factor * h_m))
        adv = _adv_units(s, history.volume_in)
        sp, impact = size_premium(w_m, sigma_daily, adv, st)
        assets["asset"].append(name)
        assets["price"].append(float(s.close[-1]))
        assets["initial_weight"].append(w_i)
        assets["maintenance_weight"].append(w_m)
        assets["initial_liability_weight"].append(1.0 + st.im_factor * f["liability_move"])
        assets["maintenance_liability_weight"].append(1.0 + f["liability_move"])
        assets["size_premium"].append(sp)
        assets["underlying"].append(name)
        record = {
            "symbol": name, "method": st.method, "measure": st.measure, "horizon": duration_text(st.horizon),
            "confidence": st.confidence, "period": duration_text(s.period), "returns": int(p.r.size),
            "first": int(s.times[0]), "last": int(s.times[-1]), "gaps": int(gap_counts.get(name, 0)),
            "lambda": p.lam, "sigma": f["sigma"], "sigma_annual": f["sigma"] * math.sqrt(365 * DAY / s.period),
            "sigma_horizon": f["sigma_horizon"], "down_var": f["down_var"], "up_var": f["up_var"],
            "down_es": f["down_es"], "up_es": f["up_es"], "kurtosis": f["kurtosis"], "samples": int(f["samples"]),
            "base_range": f["base_range"], "long_range": f["long_range"], "stress_range": f["stress_range"],
            "stress_start": f["stress_start"], "stress_end": f["stress_end"], "price_range": f["price_range"],
            "capped": bool(f["capped"]), "vol_up": f["vol_up"], "vol_down": f["vol_down"],
            "haircut_move": h_m, "liability_move": f["liability_move"], "adv": adv, "impact": impact,
            "size_premium": sp, "omega": f["omega"], "alpha": f["alpha"], "beta": f["beta"],
        }  # fmt: skip
        for key, value in record.items():
            rows.setdefault(key, []).append(value)
    if quote_asset is not None:
        for key, value in (("asset", quote_asset), ("price", 1.0), ("initial_weight", 1.0), ("maintenance_weight", 1.0),
                           ("initial_liability_weight", 1.0), ("maintenance_liability_weight", 1.0),
                           ("size_premium", 0.0), ("underlying", None)):  # fmt: skip
            assets[key].append(value)
    n = len(rows["symbol"])
    ranges = rows["price_range"]
    risk_params = pa.table(
        {
            "underlying": pa.array(rows["symbol"], pa.string()),
            "price_range": pa.array(ranges, pa.float64()),
            "price_steps": pa.array([st.price_steps] * n, pa.int64()),
            "vol_up": pa.array(rows["vol_up"], pa.float64()),
            "vol_down": pa.array(rows["vol_down"], pa.float64()),
            "vol_term_exponent": pa.array([st.vol_term_exponent] * n, pa.float64()),
            "extreme_move": pa.array([extreme_move(r) for r in ranges], pa.float64()),
            "extreme_cover": pa.array([st.extreme_cover] * n, pa.float64()),
            "short_option_minimum": pa.array([st.short_option_minimum] * n, pa.float64()),
            "im_factor": pa.array([st.im_factor] * n, pa.float64()),
        }
    )
    assets_table = pa.table(
        {
            "asset": pa.array(assets["asset"], pa.string()),
            "price": pa.array(assets["price"], pa.float64()),
            "initial_weight": pa.array(assets["initial_weight"], pa.float64()),
            "maintenance_weight": pa.array(assets["maintenance_weight"], pa.float64()),
            "initial_liability_weight": pa.array(assets["initial_liability_weight"], pa.float64()),
            "maintenance_liability_weight": pa.array(assets["maintenance_liability_weight"], pa.float64()),
            "size_premium": pa.array(assets["size_premium"], pa.float64()),
            "underlying": pa.array(assets["underlying"], pa.string()),
        }
    )
    report = _report_table(rows)
    return Calibration(
        risk_params=as_output(risk_params, output), assets=as_output(assets_table, output), gaps=history.gaps,
        settings=st, _report=report, output=output,
    )  # fmt: skip


def _report_table(rows: dict[str, list[Any]]) -> pa.Table:
    cols: dict[str, pa.Array] = {}
    ts = pa.timestamp("s", "UTC")
    for key, values in rows.items():
        if key in ("first", "last"):
            cols[key] = pa.array(np.array(values, dtype="datetime64[s]"), ts)
        elif key in ("stress_start", "stress_end"):
            cols[key] = pa.array([None if not np.isfinite(v) else int(v) for v in values], pa.int64()).cast(ts)
        elif key in ("symbol", "method", "measure", "horizon", "period"):
            cols[key] = pa.array(values, pa.string())
        elif key in ("returns", "gaps", "samples"):
            cols[key] = pa.array(values, pa.int64())
        elif key == "capped":
            cols[key] = pa.array(values, pa.bool_())
        else:
            cols[key] = pa.array([None if v is None or not np.isfinite(v) else float(v) for v in values], pa.float64())
    return pa.table(cols)
