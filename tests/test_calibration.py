"""me.calibrate: EWMA, filtered historical simulation and GARCH numbers against independent plain
loops and hand-computed values; anti-procyclicality arithmetic; haircuts; bad histories.

The calibration is numpy and is its own reference (docs/calibration.md): the oracles here are
scalar loops written from the definitions, not calls into the package.
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

import margin_engine as me
from margin_engine.calibration import models
from margin_engine.calibration.backtest import backtest as _backtest

DATA = Path(__file__).parent / "data" / "prices"
DAILY = DATA / "daily_btc_eth_usdc.parquet"
HOURLY = DATA / "hourly_btc_2022.parquet"
SHARED_DAILY = Path("/work/shared/data/prices/daily.parquet")
DAY = 86_400


def _series(close, start=dt.datetime(2019, 1, 1), step=dt.timedelta(days=1), symbol="X", volume=None):
    n = len(close)
    t = [start + i * step for i in range(n)]
    cols = {"symbol": [symbol] * n, "time": pa.array(t, pa.timestamp("s", "UTC")), "close": np.asarray(close, float)}
    if volume is not None:
        cols["volume"] = np.asarray(volume, float)
    return pa.table(cols)


def _random_close(n, vol=0.03, seed=0, df=None):
    rng = np.random.default_rng(seed)
    z = rng.standard_t(df, n) / math.sqrt(df / (df - 2)) if df else rng.standard_normal(n)
    # a vol regime change half way, so the filter has something to do
    sig = np.where(np.arange(n) < n // 2, vol, 2 * vol)
    return 100.0 * np.exp(np.cumsum(sig * z))


# --- independent scalar oracles -----------------------------------------------------------------


def loop_ewma(returns, lam):
    """(sigma² before each return, sigma² after the last), seeded with the mean square of the first
    ceil(1 / (1 − λ)) returns."""
    m = max(1, min(len(returns), math.ceil(1.0 / (1.0 - lam))))
    v = sum(r * r for r in returns[:m]) / m
    before = []
    for r in returns:
        before.append(v)
        v = lam * v + (1.0 - lam) * r * r
    return before, v, m


def loop_quantile(values, p):
    """numpy's default ('linear') quantile: position (n − 1)·p between the sorted values."""
    xs = sorted(values)
    h = (len(xs) - 1) * p
    lo = math.floor(h)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (h - lo) * (xs[hi] - xs[lo])


def loop_fhs_range(close, lam, k, conf, lookback_returns):
    """FHS by hand: log returns, EWMA-standardized, the last `lookback_returns` after the seed,
    sums of k consecutive residuals / √k, quantiles × today's σ√k, max(down, up)."""
    r = [math.log(close[i] / close[i - 1]) for i in range(1, len(close))]
    before, v_now, m = loop_ewma(r, lam)
    z = [r[i] / math.sqrt(before[i]) for i in range(len(r))]
    lo = max(m, len(r) - lookback_returns)
    window = z[lo:]
    sums = [sum(window[i : i + k]) / math.sqrt(k) for i in range(len(window) - k + 1)]
    sig_h = math.sqrt(v_now) * math.sqrt(k)
    q_lo, q_hi = loop_quantile(sums, 1 - conf), loop_quantile(sums, conf)
    down, up = 1 - math.exp(q_lo * sig_h), math.exp(q_hi * sig_h) - 1
    return max(down, up), math.sqrt(v_now), len(sums)


# --- EWMA -----------------------------------------------------------------------------------------


def test_ewma_hand_case_constant_vol():
    """Returns of ±2% every day: the EWMA vol is 2% exactly, the 99% one-day range e^(z·0.02) − 1,
    the 2-day one e^(z·0.02·√2) − 1, and the down move 1 − e^(−z·0.02·√2)."""
    close = 100 * np.exp(np.cumsum(np.where(np.arange(900) % 2, 0.02, -0.02)))
    z = NormalDist().inv_cdf(0.99)
    cal = me.calibrate(_series(close), horizon="1d", confidence=0.99, lookback="800d", quote_asset=None)
    rep = cal.report().to_pylist()[0]
    assert rep["sigma"] == pytest.approx(0.02, rel=1e-12)
    assert rep["price_range"] == pytest.approx(math.exp(z * 0.02) - 1, rel=1e-12)
    cal2 = me.calibrate(_series(close), horizon="2d", confidence=0.99, lookback="800d")
    rep2 = cal2.report().to_pylist()[0]
    assert rep2["price_range"] == pytest.approx(math.exp(z * 0.02 * math.sqrt(2)) - 1, rel=1e-12)
    assert rep2["down_var"] == pytest.approx(1 - math.exp(-z * 0.02 * math.sqrt(2)), rel=1e-12)
    # 1 hour from daily candles: σ scaled by √(1/24)
    cal3 = me.calibrate(_series(close), horizon="1h", confidence=0.99, lookback="800d")
    assert cal3.report().column("sigma_horizon")[0].as_py() == pytest.approx(0.02 / math.sqrt(24), rel=1e-12)


@pytest.mark.parametrize("decay,horizon", [(0.94, "1d"), (0.97, "2d"), (0.9, "5d")])
def test_ewma_equals_a_plain_loop(decay, horizon):
    close = _random_close(1200, seed=3)
    k = int(horizon[:-1])
    cal = me.calibrate(_series(close), horizon=horizon, confidence=0.995, decay=decay, lookback="1000d")
    rep = cal.report().to_pylist()[0]
    r = [math.log(close[i] / close[i - 1]) for i in range(1, len(close))]
    _, v_now, _ = loop_ewma(r, decay)
    z = NormalDist().inv_cdf(0.995)
    assert rep["lambda"] == decay
    assert rep["sigma"] == pytest.approx(math.sqrt(v_now), rel=1e-12)
    assert rep["sigma_annual"] == pytest.approx(math.sqrt(v_now * 365), rel=1e-12)
    assert rep["price_range"] == pytest.approx(math.exp(z * math.sqrt(v_now * k)) - 1, rel=1e-12)
    # ES of the normal in log space: σ_h φ(z) / (1 − c)
    es = math.sqrt(v_now * k) * math.exp(-z * z / 2) / math.sqrt(2 * math.pi) / 0.005
    assert rep["up_es"] == pytest.approx(math.expm1(es), rel=1e-12)


def test_lambda_per_period_from_a_daily_decay():
    close = _random_close(24 * 200, vol=0.005, seed=5)
    t = _series(close, step=dt.timedelta(hours=1))
    cal = me.calibrate(t, horizon="1h", confidence=0.99, lookback="150d")
    rep = cal.report().to_pylist()[0]
    lam = 0.94 ** (1 / 24)
    assert rep["lambda"] == pytest.approx(lam, rel=1e-15)
    r = [math.log(close[i] / close[i - 1]) for i in range(1, len(close))]
    assert rep["sigma"] == pytest.approx(math.sqrt(loop_ewma(r, lam)[1]), rel=1e-11)
    assert rep["period"] == "1h" and rep["horizon"] == "1h"


# --- FHS ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("horizon,conf", [("1d", 0.99), ("1d", 0.999), ("2d", 0.99), ("3d", 0.995)])
def test_fhs_equals_a_plain_loop(horizon, conf):
    close = _random_close(1600, seed=11, df=4)
    k = int(horizon[:-1])
    cal = me.calibrate(_series(close), horizon=horizon, confidence=conf, method="fhs", lookback="1400d")
    rep = cal.report().to_pylist()[0]
    want, sigma, n = loop_fhs_range(close, 0.94, k, conf, lookback_returns=1400)
    assert rep["sigma"] == pytest.approx(sigma, rel=1e-12)
    assert rep["samples"] == n
    assert rep["price_range"] == pytest.approx(want, rel=1e-10)


def test_fhs_expected_shortfall_is_the_tail_mean():
    close = _random_close(1500, seed=2, df=5)
    cal = me.calibrate(_series(close), horizon="1d", confidence=0.99, method="fhs", measure="es", lookback="1400d")
    rep = cal.report().to_pylist()[0]
    r = [math.log(close[i] / close[i - 1]) for i in range(1, len(close))]
    before, v_now, m = loop_ewma(r, 0.94)
    z = [r[i] / math.sqrt(before[i]) for i in range(len(r))][max(m, len(r) - 1400) :]
    q = loop_quantile(z, 0.01)
    tail = [x for x in z if x <= q]
    es_down = 1 - math.exp(sum(tail) / len(tail) * math.sqrt(v_now))
    assert rep["down_es"] == pytest.approx(es_down, rel=1e-10)
    assert rep["base_range"] == pytest.approx(max(rep["down_es"], rep["up_es"]), rel=1e-15)
    assert rep["down_es"] > rep["down_var"]


# --- real data --------------------------------------------------------------------------------------


def test_btc_daily_range_is_what_its_vol_implies():
    prices = pq.read_table(DAILY)
    ewma = me.calibrate(prices, horizon="1d", confidence=0.999, symbols=["BTC"], volume_in="quote").report().to_pylist()[0]
    fhs = me.calibrate(prices, horizon="1d", confidence=0.999, method="fhs", symbols=["BTC"]).report().to_pylist()[0]
    btc = prices.filter(pc.equal(prices.column("symbol"), "BTC"))
    close = btc.column("close").to_numpy()
    r = np.diff(np.log(close)).tolist()
    _, v_now, _ = loop_ewma(r, 0.94)
    z = NormalDist().inv_cdf(0.999)
    assert ewma["sigma"] == pytest.approx(math.sqrt(v_now), rel=1e-10)
    assert ewma["price_range"] == pytest.approx(math.expm1(z * math.sqrt(v_now)), rel=1e-12)
    # FHS: the same vol, fatter tails than the normal's at 99.9% (BTC's filtered residuals are fat)
    assert fhs["sigma"] == ewma["sigma"]
    ratio = math.log1p(fhs["price_range"]) / fhs["sigma_horizon"]
    assert z < ratio < 3 * z, ratio
    assert fhs["kurtosis"] > 1
    # the day-horizon vol is today's daily vol: between 20% and 150% a year on any day of BTC's history
    assert 0.2 < ewma["sigma_annual"] < 1.5


def test_calibrated_book_charges_a_naked_perpetual_its_range():
    """Calibration output goes straight into me.Book: a naked BTC perpetual's portfolio MM is
    notional × price_range; a BTC coin's collateral is amount × price × maintenance_weight."""
    prices = pq.read_table(DAILY)
    cal = me.calibrate(prices, horizon="2d", confidence=0.99, method="fhs", symbols=["BTC", "ETH"], volume_in="quote")
    rp = {r["underlying"]: r for r in cal.risk_params.to_pylist()}
    assets = {r["asset"]: r for r in cal.assets.to_pylist()}
    assert set(assets) == {"BTC", "ETH", "USD"} and assets["USD"]["maintenance_weight"] == 1.0
    instruments = pa.table({"instrument": ["BTC-PERP"], "kind": ["perpetual"], "underlying": ["BTC"], "multiplier": [1.0],
                            "initial_margin_rate": [0.02], "maintenance_margin_rate": [0.01]})  # fmt: skip
    book = me.Book(instruments, cal.assets, risk_params=cal.risk_params)
    s = assets["BTC"]["price"]
    market = me.Market({"underlying": ["BTC"], "index_price": [s]}, {"instrument": ["BTC-PERP"], "mark_price": [s]}, "2025-02-10")
    m = me.margin(book, {"account_id": [1, 2], "instrument": ["BTC-PERP", "BTC-PERP"], "quantity": [2.0, 0.0]},
                  {"account_id": [1, 2], "asset": ["USD", "BTC"], "amount": [1e6, 0.001]}, market, model="portfolio").to_pylist()  # fmt: skip
    assert m[0]["maintenance_margin"] == pytest.approx(2 * s * rp["BTC"]["price_range"], rel=1e-9)
    assert m[0]["initial_margin"] == pytest.approx(1.25 * m[0]["maintenance_margin"], rel=1e-12)
    w = min(assets["BTC"]["maintenance_weight"], 1.1 / (1 + assets["BTC"]["size_premium"] * math.sqrt(0.001)))
    assert m[1]["collateral_maintenance"] == pytest.approx(0.001 * s * w, rel=1e-12)


def test_haircuts_grow_with_vol_kurtosis_and_size():
    prices = pq.read_table(DAILY)
    cal = me.calibrate(prices, horizon="1d", confidence=0.99, symbols=["BTC", "ETH", "USDC"], volume_in="quote")
    a = {r["asset"]: r for r in cal.assets.to_pylist()}
    rep = {r["symbol"]: r for r in cal.report().to_pylist()}
    # vol: the stable coin keeps nearly all its value, BTC less, ETH (more volatile today) least
    assert a["USDC"]["maintenance_weight"] > a["BTC"]["maintenance_weight"]
    assert (rep["ETH"]["sigma"] > rep["BTC"]["sigma"]) == (a["ETH"]["maintenance_weight"] < a["BTC"]["maintenance_weight"])
    for r in a.values():
        assert 0 <= r["initial_weight"] <= r["maintenance_weight"] <= 1
        assert r["initial_liability_weight"] >= r["maintenance_liability_weight"] >= 1
    # kurtosis: EWMA haircuts use the unit-variance Student-t matched to it (normal at 0)
    zs = [models.student_quantile(0.99, k) for k in (0.0, 1.0, 5.0, 50.0)]
    assert zs[0] == pytest.approx(NormalDist().inv_cdf(0.99), rel=1e-12)
    assert zs == sorted(zs)  # at 99% a fatter tail needs a larger move for the same volatility
    special = pytest.importorskip("scipy.special")
    for k in (0.5, 5.0, 50.0):  # the quantile through the t's CDF, the ES by integrating its density
        nu = 4 + 6 / k
        unit = math.sqrt((nu - 2) / nu)
        q, es = models.student_tail(0.99, k)
        assert float(special.stdtr(nu, q / unit)) == pytest.approx(0.99, rel=1e-12)
        x = np.linspace(q / unit, q / unit + 2000.0, 4_000_001)
        logc = math.lgamma((nu + 1) / 2) - math.lgamma(nu / 2) - 0.5 * math.log(nu * math.pi)
        f = x * np.exp(logc - (nu + 1) / 2 * np.log1p(x * x / nu))
        tail = float(np.sum((f[1:] + f[:-1]) / 2 * np.diff(x)))  # the far tail beyond +2000 is < 1e-7 of it
        assert es == pytest.approx(tail / 0.01 * unit, rel=2e-5)
    btc = rep["BTC"]
    zt = models.student_quantile(0.99, btc["kurtosis"])
    assert btc["haircut_move"] == pytest.approx(-math.expm1(-zt * btc["sigma_horizon"]), rel=1e-12)
    assert a["BTC"]["maintenance_weight"] == pytest.approx(1 - btc["haircut_move"], rel=1e-12)
    # size: at the reference holding (10% of the daily volume) the engine's weight is w − impact
    adv = btc["adv"]
    sp = a["BTC"]["size_premium"]
    assert sp > 0
    impact = 1.0 * btc["sigma"] * math.sqrt(0.1)
    w_ref = min(a["BTC"]["maintenance_weight"], 1.1 / (1 + sp * math.sqrt(0.1 * adv)))
    assert w_ref == pytest.approx(a["BTC"]["maintenance_weight"] - impact, rel=1e-12)
    # volume in USD: the ADV in coins is the median USD volume / close over the last 30 days
    btc_rows = prices.filter(pc.equal(prices.column("symbol"), "BTC")).slice(3800 - 30)
    units = btc_rows.column("volume").to_numpy() / btc_rows.column("close").to_numpy()
    assert adv == pytest.approx(float(np.median(units)), rel=1e-12)


# --- anti-procyclicality ---------------------------------------------------------------------------


def test_anti_procyclicality_arithmetic():
    close = _random_close(3000, seed=8)
    t = _series(close)
    opts = dict(horizon="1d", confidence=0.99, lookback="2y")
    base = me.calibrate(t, **opts).report().to_pylist()[0]
    buf = me.calibrate(t, anti_procyclicality="buffer", **opts).report().to_pylist()[0]
    assert buf["price_range"] == pytest.approx(1.25 * base["price_range"], rel=1e-12)
    assert buf["haircut_move"] == pytest.approx(min(1.0, 1.25 * base["haircut_move"]), rel=1e-12)
    longf = me.calibrate(t, anti_procyclicality={"long_floor": True, "long_lookback": "6y"}, **opts).report().to_pylist()[0]
    # the long-lookback figure (EWMA: normal at the raw returns' root mean square over 6 years)
    r = np.diff(np.log(close))[-(6 * 365) :]
    z = NormalDist().inv_cdf(0.99)
    assert longf["long_range"] == pytest.approx(math.expm1(z * math.sqrt(np.mean(r * r))), rel=1e-10)
    assert longf["price_range"] == pytest.approx(max(base["price_range"], longf["long_range"]), rel=1e-12)
    sw = me.calibrate(t, anti_procyclicality={"stress_weight": 0.25, "stress_floor": 0.0}, **opts).report().to_pylist()[0]
    assert sw["stress_range"] > 0
    assert sw["price_range"] == pytest.approx(0.75 * base["price_range"] + 0.25 * sw["stress_range"], rel=1e-12)
    # the auto stress window is the 365 days with the highest mean square before today; here
    # the second half of the series (twice the vol)
    assert sw["stress_start"] >= dt.datetime(2019, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(days=1500)
    lw = me.calibrate(t, anti_procyclicality={"long_weight": 0.5, "long_lookback": "6y", "buffer": 0.1}, **opts).report().to_pylist()[0]
    assert lw["price_range"] == pytest.approx(1.1 * (0.5 * base["price_range"] + 0.5 * lw["long_range"]), rel=1e-12)
    fixed = me.calibrate(t, anti_procyclicality={"stress_floor": 1.0, "stress_period": ("2019-03-01", "2019-09-01")}, **opts)
    f = fixed.report().to_pylist()[0]
    assert f["stress_start"].date() == dt.date(2019, 3, 2) and f["stress_end"].date() == dt.date(2019, 9, 1)
    assert f["price_range"] == pytest.approx(max(base["price_range"], f["stress_range"]), rel=1e-12)


def test_calibrate_is_the_backtest_at_its_last_date():
    """A backtest's range at a date is calibrate() on the history up to that date (no look-ahead)."""
    close = _random_close(1300, seed=4, df=5)
    t = _series(close)
    opts = dict(horizon="1d", confidence=0.99, method="fhs", lookback="1000d", anti_procyclicality={"stress_weight": 0.3})
    bt = _backtest(prices=t, refit=1, **opts)
    d = bt.dates.to_pylist()
    for row in (d[0], d[len(d) // 2], d[-1]):
        cut = t.filter(pc.less_equal(t.column("time"), pa.scalar(row["time"], pa.timestamp("s", "UTC"))))
        rep = me.calibrate(cut, **opts).report().to_pylist()[0]
        assert rep["price_range"] == pytest.approx(row["price_range"], rel=1e-12)


# --- GARCH ------------------------------------------------------------------------------------------


def test_garch_horizon_vol_follows_its_term_structure():
    pytest.importorskip("arch")
    close = _random_close(1600, seed=9, df=6)
    rep = me.calibrate(_series(close), horizon="5d", confidence=0.99, method="garch", lookback="1500d").report().to_pylist()[0]
    om, al, be = rep["omega"], rep["alpha"], rep["beta"]
    assert 0 < al < 1 and 0 < be < 1 and al + be < 1
    r = np.diff(np.log(close))
    m = math.ceil(1 / (1 - 0.94))
    v = float(np.mean(r[:m] ** 2))
    for x in r:  # the GARCH recursion by hand, seeded like the EWMA
        v = om + al * x * x + be * v
    long_run = om / (1 - al - be)
    total = sum(long_run + (al + be) ** (h - 1) * (v - long_run) for h in range(1, 6))
    assert rep["sigma"] == pytest.approx(math.sqrt(v), rel=1e-10)
    assert rep["sigma_horizon"] == pytest.approx(math.sqrt(total), rel=1e-10)


def test_garch_without_arch_names_the_extra(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_arch(name, *args, **kwargs):
        if name == "arch" or name.startswith("arch."):
            raise ImportError("no arch")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_arch)
    with pytest.raises(ImportError, match=r"margin-engine\[garch\]"):
        me.calibrate(_series(_random_close(900)), method="garch", lookback="800d")


# --- histories: gaps and bad input -----------------------------------------------------------------


def test_gaps_are_reported_and_scaled_or_dropped():
    close = _random_close(1000, seed=1)
    t = _series(close)
    keep = np.ones(1000, dtype=bool)
    keep[[300, 301, 302, 700]] = False  # a 3-day outage and a missing day
    g = t.filter(pa.array(keep))
    cal = me.calibrate(g, horizon="1d", confidence=0.99, lookback="900d")
    gaps = cal.gaps.to_pylist()
    assert [(r["symbol"], r["missing_periods"]) for r in gaps] == [("X", 3), ("X", 1)]
    assert gaps[0]["after"] == dt.datetime(2019, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(days=299)
    assert cal.report().column("gaps")[0].as_py() == 2
    c = close[keep]
    r_all = [math.log(c[i] / c[i - 1]) for i in range(1, len(c))]
    steps = np.diff(np.flatnonzero(keep))
    scaled = [x / math.sqrt(s) for x, s in zip(r_all, steps)]
    dropped = [x for x, s in zip(r_all, steps) if s == 1]
    assert cal.report().column("sigma")[0].as_py() == pytest.approx(math.sqrt(loop_ewma(scaled, 0.94)[1]), rel=1e-12)
    drop = me.calibrate(g, horizon="1d", confidence=0.99, lookback="900d", gaps="drop")
    assert drop.report().column("sigma")[0].as_py() == pytest.approx(math.sqrt(loop_ewma(dropped, 0.94)[1]), rel=1e-12)
    assert drop.report().column("returns")[0].as_py() == len(dropped)


def _bad(table, column, match, **kwargs):
    with pytest.raises(me.MarginInputError, match=match) as e:
        me.calibrate(table, horizon="1d", confidence=0.99, lookback="100d", **kwargs)
    assert e.value.table in ("prices", "arguments")
    if column:
        assert e.value.column == column
    return e.value


def test_bad_histories_are_named():
    good = _series(_random_close(400))
    close = good.column("close").to_numpy().copy()
    for value in (0.0, -1.0, np.nan, np.inf):
        c = close.copy()
        c[17] = value
        err = _bad(good.set_column(2, "close", pa.array(c)), "close", "must be finite and > 0")
        assert err.table == "prices" and err.offenders == ["row 17 (X 2019-01-18T00:00:00Z)"]
    # duplicate (symbol, time): row 5 repeated
    dup = pa.concat_tables([good.slice(0, 6), good.slice(5)])
    err = _bad(dup, "time", "duplicate")
    assert err.offenders == ["row 6 (X 2019-01-06T00:00:00Z)"]
    # unsorted times within a symbol
    idx = list(range(400))
    idx[10], idx[11] = 11, 10
    err = _bad(good.take(pa.array(idx)), "time", "not increasing")
    assert err.offenders == ["row 11 (X 2019-01-11T00:00:00Z)"]
    # another symbol interleaved is fine: rows need not be grouped by symbol
    other = _series(_random_close(400, seed=5), symbol="Y")
    mixed = pa.concat_tables([good, other]).take(pa.array(np.argsort(np.tile(np.arange(400), 2), kind="stable")))
    assert me.calibrate(mixed, horizon="1d", confidence=0.99, lookback="300d").risk_params.num_rows == 2
    # history shorter than the lookback, naming the symbol and its span
    with pytest.raises(me.MarginInputError, match="history shorter than the lookback") as e:
        me.calibrate(good, horizon="1d", lookback="2y")
    assert e.value.table == "prices" and e.value.column == "time" and e.value.offenders[0].startswith("X 2019-01-01")
    # too few samples for the confidence
    with pytest.raises(me.MarginInputError, match="fewer than 1/") as e:
        me.calibrate(good, horizon="1d", confidence=0.999, lookback="300d", method="fhs")
    assert e.value.column == "lookback"
    # missing columns, nulls, wrong types, negative volume
    _bad(good.drop_columns(["close"]), "close", "missing column")
    nulls = good.set_column(1, "time", pa.array([None] + good.column("time").to_pylist()[1:], pa.timestamp("s", "UTC")))
    _bad(nulls, "time", "null")
    _bad(good.set_column(2, "close", pa.array(["1"] * 400)), "close", "numeric")
    v = np.ones(400)
    v[3] = -1
    err = _bad(good.append_column("volume", pa.array(v)), "volume", ">= 0")
    assert err.offenders == ["row 3 (X 2019-01-04T00:00:00Z)"]
    # irregular steps
    t = good.column("time").to_pylist()
    t[50] = t[50] + dt.timedelta(hours=5)
    _bad(good.set_column(1, "time", pa.array(t, pa.timestamp("s", "UTC"))), "time", "whole number")
    with pytest.raises(me.MarginInputError, match="at least two candles"):
        me.calibrate(good.slice(0, 1), lookback="1d")
    with pytest.raises(me.MarginInputError, match="empty"):
        me.calibrate(good.slice(0, 0))


@pytest.mark.parametrize(
    "kwargs,column",
    [
        ({"horizon": "3x"}, "horizon"),
        ({"horizon": "36h"}, "horizon"),  # 1.5 daily periods
        ({"confidence": 1.0}, "confidence"),
        ({"confidence": 0.3}, "confidence"),
        ({"method": "historical"}, "method"),
        ({"measure": "cvar"}, "measure"),
        ({"decay": 1.0}, "decay"),
        ({"gaps": "fill"}, "gaps"),
        ({"anti_procyclicality": "everything"}, "anti_procyclicality"),
        ({"anti_procyclicality": {"bufer": 0.2}}, "anti_procyclicality"),
        ({"anti_procyclicality": {"stress_weight": 0.7, "long_weight": 0.5}}, "anti_procyclicality"),
        ({"anti_procyclicality": {"stress_period": ("2020-01-01", "2019-01-01")}}, "anti_procyclicality.stress_period"),
        ({"price_steps": 20}, "price_steps"),
        ({"symbols": ["BTC"]}, "symbol"),
        ({"quote_asset": "X"}, "quote_asset"),
    ],
)
def test_bad_arguments_are_named(kwargs, column):
    good = _series(_random_close(400))
    opts = {"horizon": "1d", "confidence": 0.99, "lookback": "300d", **kwargs}
    with pytest.raises(me.MarginInputError) as e:
        me.calibrate(good, **opts)
    assert e.value.column == column, str(e.value)


def test_polars_output_and_report_columns():
    pl = pytest.importorskip("polars")
    cal = me.calibrate(_series(_random_close(500)), horizon="1d", confidence=0.99, lookback="400d", output="polars")
    assert isinstance(cal.risk_params, pl.DataFrame) and isinstance(cal.assets, pl.DataFrame)
    assert isinstance(cal.report("polars"), pl.DataFrame)
    book_columns = {"underlying", "price_range", "price_steps", "vol_up", "vol_down", "vol_term_exponent", "extreme_move",
                    "extreme_cover", "short_option_minimum", "im_factor"}  # fmt: skip
    assert set(cal.risk_params.columns) == book_columns
    r = cal.risk_params.to_dicts()[0]
    assert r["extreme_move"] * r["price_range"] <= 1 and r["price_steps"] % 2 == 1


def test_extreme_move_keeps_the_book_valid_for_wide_ranges():
    from margin_engine.calibration.calibrate import extreme_move

    for r in (0.01, 0.3333333333333333, 0.34, 0.5, 0.999):
        em = extreme_move(r)
        assert em * r <= 1.0 and em <= 3.0
    assert extreme_move(0.5) == 2.0


@pytest.mark.skipif(not SHARED_DAILY.exists(), reason="the shared price data is not on this machine")
def test_every_shared_daily_symbol_calibrates_into_a_valid_book():
    prices = pq.read_table(SHARED_DAILY)
    cal = me.calibrate(prices, horizon="2d", confidence=0.999, method="fhs", volume_in="quote")
    assert cal.risk_params.num_rows == 14
    instruments = pa.table({"instrument": [f"{u}-PERP" for u in cal.risk_params.column("underlying").to_pylist()],
                            "kind": ["perpetual"] * 14, "underlying": cal.risk_params.column("underlying"),
                            "multiplier": [1.0] * 14, "initial_margin_rate": [0.02] * 14, "maintenance_margin_rate": [0.01] * 14})  # fmt: skip
    me.Book(instruments, cal.assets, risk_params=cal.risk_params)  # validates every column's range
    assert cal.gaps.filter(pc.equal(cal.gaps.column("symbol"), "AVAX")).column("missing_periods").to_pylist() == [69]


# --- the command line -------------------------------------------------------------------------------


def test_cli_calibrate_and_backtest(tmp_path, capsys):
    from margin_engine import cli

    out, assets = tmp_path / "rp.parquet", tmp_path / "assets.parquet"
    args = ["--quiet", "calibrate", str(DAILY), "--horizon", "2d", "--confidence", "0.99", "--method", "fhs",
            "--volume-in", "quote", "--symbols", "BTC", "ETH", "--out", str(out), "--assets-out", str(assets)]  # fmt: skip
    assert cli.main(args) == 0
    want = me.calibrate(pq.read_table(DAILY), horizon="2d", confidence=0.99, method="fhs", symbols=["BTC", "ETH"], volume_in="quote")
    assert pq.read_table(out).equals(want.risk_params) and pq.read_table(assets).equals(want.assets)
    printed = capsys.readouterr().out
    assert "BTC" in printed and f"{100 * want.risk_params.column('price_range')[0].as_py():.2f}%" in printed
    summary = tmp_path / "summary.parquet"
    assert cli.main(["--quiet", "backtest", str(DAILY), "--symbols", "USDC", "--summary-out", str(summary)]) == 0
    assert pq.read_table(summary).column("symbol").to_pylist() == ["USDC", "USDC"]
    # one-line errors, exit 2, nothing written
    bad = tmp_path / "never.parquet"
    assert cli.main(["--quiet", "calibrate", str(DAILY), "--lookback", "20y", "--out", str(bad)]) == 2
    assert "history shorter than the lookback" in capsys.readouterr().err and not bad.exists()
    assert cli.main(["--quiet", "calibrate", str(tmp_path / "missing.parquet")]) == 2
    with pytest.raises(SystemExit) as e:
        cli.main(["calibrate", str(DAILY), "--horizon", "3x"])
    assert e.value.code == 2


@pytest.mark.parametrize("module", ["history", "models", "calibrate", "backtest", "forecast"])
def test_docstring_examples_pass(module):
    import doctest
    import importlib

    mod = importlib.import_module(f"margin_engine.calibration.{module}")
    result = doctest.testmod(mod, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


def test_any_arrow_table_of_prices():
    """pyarrow, polars (string_view symbols), pandas, a dict of columns, dictionary-encoded symbols
    and date32 times give the same calibration."""
    t = pq.read_table(DAILY)
    want = me.calibrate(t, horizon="1d", confidence=0.99).risk_params
    inputs = [t.to_pandas(), {c: t.column(c).to_pylist() for c in ("symbol", "time", "close")},
              t.set_column(0, "symbol", pc.dictionary_encode(t.column("symbol"))).set_column(
                  1, "time", pc.cast(pc.cast(t.column("time"), pa.timestamp("s")), pa.date32()))]  # fmt: skip
    pl = pytest.importorskip("polars")
    inputs.append(pl.from_arrow(t))
    for obj in inputs:
        assert me.calibrate(obj, horizon="1d", confidence=0.99).risk_params.equals(want), type(obj)
    with pytest.raises(me.MarginInputError, match="utf8"):
        me.calibrate(t.set_column(0, "symbol", pa.array([1] * t.num_rows)))


def test_released_buffer_is_drawn_down_when_the_range_rises():
    """buffer_release: the range is max(R, 1.25 × the lowest R of the last 30 days), R the range
    without the buffer; calibrate() at a date equals the backtest's figure there."""
    close = _random_close(1500, seed=12, df=4)
    t = _series(close)
    opts = dict(horizon="1d", confidence=0.99, method="fhs", lookback="1000d")
    plain = _backtest(prices=t, refit=1, **opts).dates.column("price_range").to_numpy()
    bt = _backtest(prices=t, refit=1, anti_procyclicality="released_buffer", **opts)
    rel = bt.dates.column("price_range").to_numpy()
    for i in range(rel.size):
        assert rel[i] == pytest.approx(max(plain[i], 1.25 * plain[max(0, i - 29) : i + 1].min()), rel=1e-12)
    assert (rel < 1.25 * plain - 1e-12).any() and (rel > plain + 1e-12).any()  # drawn down on some days, held on others
    rows = bt.dates.to_pylist()
    for row in (rows[40], rows[-1]):
        cut = t.filter(pc.less_equal(t.column("time"), pa.scalar(row["time"], pa.timestamp("s", "UTC"))))
        rep = me.calibrate(cut, anti_procyclicality="released_buffer", **opts).report().to_pylist()[0]
        assert rep["price_range"] == pytest.approx(row["price_range"], rel=1e-12)
    with pytest.raises(me.MarginInputError):
        me.calibrate(t, anti_procyclicality={"buffer": 0.2, "buffer_release": True, "buffer_window": "36h"}, **opts)


# --- random histories ---------------------------------------------------------------------------


@hsettings(max_examples=25, deadline=None)
@given(
    n=st.integers(420, 700),
    seed=st.integers(0, 2**31 - 1),
    df=st.sampled_from([3, 5, 30]),
    vol=st.floats(0.001, 0.2),
    k=st.sampled_from([1, 2, 3]),
    conf=st.sampled_from([0.95, 0.99, 0.995]),
    decay=st.floats(0.8, 0.99),
)
def test_random_histories_equal_the_plain_loops(n, seed, df, vol, k, conf, decay):
    close = _random_close(n, vol=vol, seed=seed, df=df)
    t = _series(close)
    ew = me.calibrate(t, horizon=f"{k}d", confidence=conf, decay=decay, lookback="400d").report().to_pylist()[0]
    fhs = me.calibrate(t, horizon=f"{k}d", confidence=conf, decay=decay, lookback="400d", method="fhs").report().to_pylist()[0]
    r = [math.log(close[i] / close[i - 1]) for i in range(1, len(close))]
    _, v_now, _ = loop_ewma(r, decay)
    z = NormalDist().inv_cdf(conf)
    assert ew["sigma"] == pytest.approx(math.sqrt(v_now), rel=1e-10)
    assert ew["price_range"] == pytest.approx(min(0.999, math.expm1(z * math.sqrt(v_now * k))), rel=1e-10)
    want, _, samples = loop_fhs_range(close, decay, k, conf, lookback_returns=400)
    assert fhs["samples"] == samples
    assert fhs["price_range"] == pytest.approx(min(0.999, want), rel=1e-9)


def test_auto_stress_window_is_the_highest_mean_square_year():
    rng = np.random.default_rng(21)
    n = 1600
    vol = 0.01 * (1 + np.sin(np.arange(n) / 150.0) ** 2 + np.arange(n) / 2000.0)  # many new running maxima
    close = 100 * np.exp(np.cumsum(vol * rng.standard_normal(n)))
    t = _series(close)
    rep = me.calibrate(t, horizon="1d", confidence=0.99, lookback="1000d",
                       anti_procyclicality={"stress_weight": 0.5}).report().to_pylist()[0]  # fmt: skip
    r = np.diff(np.log(close))
    best, where = -1.0, None
    for end in range(365 - 1, r.size):  # windows of the 365 returns ending at `end` (return i ends on day i + 1)
        ms = float(np.mean(r[end - 364 : end + 1] ** 2))
        if ms > best:
            best, where = ms, end
    start = dt.datetime(2019, 1, 1, tzinfo=dt.timezone.utc)
    assert rep["stress_start"] == start + dt.timedelta(days=where - 364 + 1)
    assert rep["stress_end"] == start + dt.timedelta(days=where + 1)
