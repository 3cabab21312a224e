"""me.backtest: Kupiec and Christoffersen statistics against hand-computed values and an
independent implementation; exceedances recounted from the raw closes; the book loop (one engine
call per date, each account's P&L against its margin) against per-underlying arithmetic; real
BTC/ETH history (rates reported, not timed); the chart; bad inputs."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import margin_engine as me
from margin_engine.calibration import christoffersen, kupiec

DATA = Path(__file__).parent / "data" / "prices"
DAILY = DATA / "daily_btc_eth_usdc.parquet"
HOURLY = DATA / "hourly_btc_2022.parquet"


def _series(close, start=dt.datetime(2019, 1, 1), step=dt.timedelta(days=1), symbol="X"):
    n = len(close)
    return pa.table({"symbol": [symbol] * n, "time": pa.array([start + i * step for i in range(n)], pa.timestamp("s", "UTC")),
                     "close": np.asarray(close, float)})  # fmt: skip


def _random_close(n, vol=0.03, seed=0, df=4):
    rng = np.random.default_rng(seed)
    z = rng.standard_t(df, n) / math.sqrt(df / (df - 2))
    return 100.0 * np.exp(np.cumsum(vol * z))


# --- the tests' statistics ----------------------------------------------------------------------


def test_kupiec_hand_values():
    # no exceedance in 100 at p = 1%: LR = −2 · 100 · ln 0.99
    lr, p = kupiec(100, 0, 0.01)
    assert lr == pytest.approx(-200 * math.log(0.99), rel=1e-14)
    assert lr == pytest.approx(2.0100671707002873, rel=1e-14)
    assert p == pytest.approx(math.erfc(math.sqrt(lr / 2)), rel=1e-14)
    # 5 in 250 at 1%: LR = −2 [245 ln .99 + 5 ln .01 − 245 ln .98 − 5 ln .02]
    lr, _ = kupiec(250, 5, 0.01)
    want = -2 * (245 * math.log(0.99) + 5 * math.log(0.01) - 245 * math.log(0.98) - 5 * math.log(0.02))
    assert lr == pytest.approx(want, rel=1e-14)
    assert lr == pytest.approx(1.956809788230622, rel=1e-12)
    # exactly the expected rate: LR 0, p 1; every observation an exceedance: the (1 − x/n) term is 0·ln 0 = 0
    assert kupiec(1000, 10, 0.01) == (0.0, 1.0)
    assert kupiec(10, 10, 0.01)[0] == pytest.approx(-20 * math.log(0.01), rel=1e-14)


def _binom_logpmf(x, n, p):
    """log C(n, x) p^x (1 − p)^(n − x), through lgamma (0·ln 0 = 0)."""
    out = math.lgamma(n + 1) - math.lgamma(x + 1) - math.lgamma(n - x + 1)
    if x:
        out += x * math.log(p)
    if n - x:
        out += (n - x) * math.log1p(-p)
    return out


def _chi2_sf(x, dof):
    special = pytest.importorskip("scipy.special")
    return float(special.chdtrc(dof, x))


@pytest.mark.parametrize("n,x,p", [(250, 0, 0.01), (250, 7, 0.01), (1000, 1, 0.001), (5000, 12, 0.001), (37, 37, 0.05)])
def test_kupiec_against_the_binomial_likelihood(n, x, p):
    lr, pv = kupiec(n, x, p)
    want = 2 * (_binom_logpmf(x, n, x / n) - _binom_logpmf(x, n, p))
    assert lr == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert pv == pytest.approx(_chi2_sf(want, 1), rel=1e-8, abs=1e-300)


def test_christoffersen_hand_values():
    # transitions 00 00 01 11 10 00 01 10 00 → n00=4 n01=2 n10=2 n11=1: π0 = π1 = π = 1/3, LR 0
    lr, p, n = christoffersen([0, 0, 1, 1, 0, 0, 0, 1, 0, 0])
    assert n == {"n00": 4, "n01": 2, "n10": 2, "n11": 1}
    assert lr == pytest.approx(0.0, abs=1e-12) and p == pytest.approx(1.0)
    # clustered: 0 0 0 0 1 1 1 0 0 0 → n00=5 n01=1 n10=1 n11=2
    lr, p, n = christoffersen([0, 0, 0, 0, 1, 1, 1, 0, 0, 0])
    assert n == {"n00": 5, "n01": 1, "n10": 1, "n11": 2}
    pi, pi0, pi1 = 3 / 9, 1 / 6, 2 / 3
    want = -2 * ((6 * math.log(1 - pi) + 3 * math.log(pi)) - (5 * math.log(1 - pi0) + math.log(pi0) + math.log(1 - pi1) + 2 * math.log(pi1)))
    assert lr == pytest.approx(want, rel=1e-14)
    assert p == pytest.approx(math.erfc(math.sqrt(want / 2)), rel=1e-13)
    # no exceedance at all: nothing to test against, LR 0
    assert christoffersen([0] * 20)[0] == 0.0


def test_christoffersen_against_an_independent_count():
    rng = np.random.default_rng(5)
    for rate in (0.02, 0.1, 0.3):
        hits = (rng.random(800) < rate).astype(int).tolist()
        counts = {"n00": 0, "n01": 0, "n10": 0, "n11": 0}
        for a, b in zip(hits[:-1], hits[1:]):
            counts[f"n{a}{b}"] += 1
        lr, p, n = christoffersen(hits)
        assert n == counts
        pi0 = counts["n01"] / (counts["n00"] + counts["n01"])
        pi1 = counts["n11"] / (counts["n10"] + counts["n11"]) if counts["n10"] + counts["n11"] else 0.0
        pi = (counts["n01"] + counts["n11"]) / (len(hits) - 1)
        alt = _binom_logpmf(counts["n01"], counts["n00"] + counts["n01"], pi0) + _binom_logpmf(
            counts["n11"], counts["n10"] + counts["n11"], pi1)
        null = _binom_logpmf(counts["n01"], counts["n00"] + counts["n01"], pi) + _binom_logpmf(
            counts["n11"], counts["n10"] + counts["n11"], pi)
        assert lr == pytest.approx(2 * (alt - null), rel=1e-9, abs=1e-10)
        assert p == pytest.approx(_chi2_sf(2 * (alt - null), 1), rel=1e-8)


# --- per underlying --------------------------------------------------------------------------------


def test_exceedances_recounted_from_the_closes():
    close = _random_close(1400, seed=2)
    t = _series(close)
    bt = me.backtest(prices=t, horizon="2d", confidence=0.98, method="fhs", lookback="1000d")
    d = bt.dates.to_pylist()
    start = dt.datetime(2019, 1, 1, tzinfo=dt.timezone.utc)
    assert d[0]["time"] == start + dt.timedelta(days=1000)
    # non-overlapping windows: every 2 days, the move to the close 2 days later
    assert all((b["time"] - a["time"]).days == 2 for a, b in zip(d[:-1], d[1:]))
    long_hits = []
    for row in d:
        i = (row["time"] - start).days
        move = close[i + 2] / close[i] - 1
        assert row["move"] == pytest.approx(move, rel=1e-12)
        assert row["exceed_long"] == (move < -row["price_range"]) and row["exceed_short"] == (move > row["price_range"])
        long_hits.append(move < -row["price_range"])
    s = {r["side"]: r for r in bt.summary.to_pylist()}
    assert s["long"]["observations"] == len(d) and s["long"]["exceedances"] == sum(long_hits)
    lr, p = kupiec(len(d), sum(long_hits), 0.02)
    assert s["long"]["kupiec_lr"] == pytest.approx(lr) and s["long"]["kupiec_p"] == pytest.approx(p)
    c_lr, c_p, _ = christoffersen(long_hits)
    assert s["long"]["christoffersen_p"] == pytest.approx(c_p)
    assert s["long"]["conditional_lr"] == pytest.approx(lr + c_lr)
    assert s["long"]["conditional_p"] == pytest.approx(math.exp(-(lr + c_lr) / 2))
    assert bt.skipped == {"X": 1}  # the last date's close 2 days on is past the end


def test_a_larger_range_never_exceeds_more():
    t = _series(_random_close(1500, seed=6))
    plain = me.backtest(prices=t, horizon="1d", confidence=0.99, lookback="1000d")
    apc = me.backtest(prices=t, horizon="1d", confidence=0.99, lookback="1000d", anti_procyclicality="buffer")
    a, b = plain.dates.to_pylist(), apc.dates.to_pylist()
    assert all(y["price_range"] == pytest.approx(1.25 * x["price_range"], rel=1e-12) for x, y in zip(a, b))
    assert all(y["exceed_long"] <= x["exceed_long"] for x, y in zip(a, b))


def test_real_btc_eth_daily_exceedance_rates(capsys):
    prices = pq.read_table(DAILY)
    lines = []
    rates = {}
    for method, apc in (("ewma", None), ("fhs", None), ("fhs", "buffer")):
        bt = me.backtest(prices=prices, symbols=["BTC", "ETH"], horizon="1d", confidence=0.99, method=method, anti_procyclicality=apc)
        for r in bt.summary.to_pylist():
            lines.append(f"{method:4} {str(apc):6} {r['symbol']} {r['side']:5} {r['exceedances']:3}/{r['observations']} "
                         f"rate {100 * r['rate']:.2f}% kupiec p {r['kupiec_p']:.3f} christoffersen p {r['christoffersen_p']:.3f}")  # fmt: skip
            rates[(method, apc, r["symbol"], r["side"])] = r["rate"]
            if apc is None:  # near 1 − confidence: within a factor of 3 of 1% over >1,000 days (EWMA's normal is the worst)
                assert 0.003 < r["rate"] < 0.03, lines[-1]
            else:  # the buffer only widens the range
                assert r["rate"] <= rates[(method, None, r["symbol"], r["side"])], lines[-1]
        if method == "fhs" and apc is None:
            fhs = bt
    with capsys.disabled():
        print("\n" + "\n".join(lines))
    moves = fhs.margin_moves().to_pylist()
    covid = [m for m in moves if m["period"].startswith("COVID") and m["symbol"] == "BTC"][0]
    assert covid["peak"] > 3 * covid["before"]  # the range rose with the vol in March 2020
    assert {m["period"] for m in moves} == {"COVID crash 2020-03", "LUNA/UST 2022-05", "FTX 2022-11"}


def test_real_btc_hourly_exceedance_rate(capsys):
    prices = pq.read_table(HOURLY)
    bt = me.backtest(prices=prices, horizon="1h", confidence=0.999, method="fhs", lookback="120d")
    rows = bt.summary.to_pylist()
    with capsys.disabled():
        for r in rows:
            print(f"\nhourly BTC 2022 1h 99.9% FHS {r['side']}: {r['exceedances']}/{r['observations']} "
                  f"rate {100 * r['rate']:.3f}% kupiec p {r['kupiec_p']:.3f}")  # fmt: skip
    for r in rows:
        assert r["observations"] > 5000 and r["rate"] < 0.004


# --- a book ---------------------------------------------------------------------------------------


def _book(risk_params=None):
    expiry = dt.datetime(2026, 3, 27, 8, tzinfo=dt.timezone.utc)
    instruments = pa.table({
        "instrument": ["BTC-PERP", "ETH-PERP", "BTC-C"], "kind": ["perpetual", "perpetual", "option"],
        "underlying": ["BTC", "ETH", "BTC"], "multiplier": [1.0, 1.0, 1.0],
        "expiry": pa.array([None, None, expiry], pa.timestamp("us", "UTC")), "strike": [None, None, 60_000.0],
        "option_type": [None, None, "call"], "initial_margin_rate": [0.02, 0.02, 0.15],
        "maintenance_margin_rate": [0.01, 0.01, 0.075], "initial_margin_floor": [None, None, 0.10]})  # fmt: skip
    assets = pa.table({"asset": ["USD", "BTC"], "price": [1.0, 50_000.0], "initial_weight": [1.0, 0.9],
                       "maintenance_weight": [1.0, 0.95], "initial_liability_weight": [1.0, 1.1],
                       "maintenance_liability_weight": [1.0, 1.05], "underlying": [None, "BTC"]})  # fmt: skip
    return me.Book(instruments, assets, risk_params=risk_params)


def test_book_backtest_one_engine_call_per_date(monkeypatch):
    prices = pq.read_table(DAILY).filter(pc.is_in(pc.field("symbol"), pa.array(["BTC", "ETH"])))
    prices = prices.filter(pc.greater_equal(pc.field("time"), pa.scalar(dt.datetime(2019, 6, 1, tzinfo=dt.timezone.utc), pa.timestamp("ms", "UTC"))))
    positions = pa.table({"account_id": [1, 2, 2, 3, 4], "instrument": ["BTC-PERP", "ETH-PERP", "BTC-C", "BTC-PERP", "BTC-PERP"],
                          "quantity": [1.0, -10.0, -2.0, -0.5, 0.0], "entry_price": [30_000.0, None, None, None, None]})  # fmt: skip
    balances = pa.table({"account_id": [1, 2, 3, 4], "asset": ["USD", "USD", "BTC", "USD"], "amount": [1e6, 1e6, 1.0, 10.0]})
    import margin_engine.api as api

    calls = []
    real = api.margin
    monkeypatch.setattr(api, "margin", lambda *a, **k: calls.append(a[3].valuation_time_ns) or real(*a, **k))
    ticks = []
    bt = me.backtest(_book(), positions, balances, prices, horizon="1d", confidence=0.99, method="fhs", lookback="3y",
                     start="2023-01-01", end="2023-12-31", progress=lambda done, total: ticks.append((done, total)))  # fmt: skip
    book = bt.book.to_pylist()
    assert len(book) == 365
    assert len(calls) == 366 == len(set(calls))  # each date once (the last date's next day included)
    assert ticks[-1] == (366, 366)
    d = {(r["symbol"], r["time"]): r for r in bt.dates.to_pylist()}
    btc = prices.filter(pc.equal(prices.column("symbol"), "BTC"))
    closes = dict(zip(btc.column("time").to_pylist(), btc.column("close").to_pylist()))
    acc = {r["account_id"]: r for r in bt.accounts.to_pylist()}
    # account 1, long one BTC perpetual with USD: its P&L is the BTC move, its margin the range ×
    # the close, so its exceedances are BTC's long exceedances on the same dates
    long_btc = sum(d[("BTC", r["time"])]["exceed_long"] for r in book)
    assert acc[1]["exceedances"] == long_btc
    # account 4 holds nothing: never exceeds; the engine's equity change is exactly zero
    assert acc[4]["exceedances"] == 0
    # the book's margin on the first date, from the calibrated range: account 1's MM is range × S
    first = book[0]["time"]
    m1 = d[("BTC", first)]["price_range"] * closes[first]
    market = me.Market({"underlying": ["BTC", "ETH"], "index_price": [closes[first], 1.0]},
                       {"instrument": ["BTC-PERP"], "mark_price": [closes[first]]}, first)  # fmt: skip
    rp = pa.table({"underlying": ["BTC"], "price_range": [d[("BTC", first)]["price_range"]]})
    one = me.margin(_book(rp), positions.slice(0, 1), balances.slice(0, 1), market, model="portfolio").to_pylist()[0]
    assert one["maintenance_margin"] == pytest.approx(m1, rel=1e-9)
    s = {(r["symbol"], r["side"]): r for r in bt.summary.to_pylist()}
    assert s[("book", "accounts")]["observations"] == 4 * 365
    assert s[("book", "accounts")]["exceedances"] == sum(a["exceedances"] for a in acc.values())
    assert s[("book", "total")]["exceedances"] == sum(r["exceed"] for r in book)


def test_book_backtest_standard_model_and_fixed_parameters():
    prices = pq.read_table(DAILY).filter(pc.equal(pc.field("symbol"), "BTC"))
    positions = pa.table({"account_id": [1], "instrument": ["BTC-PERP"], "quantity": [2.0]})
    balances = pa.table({"account_id": [1], "asset": ["USD"], "amount": [1e6]})
    bt = me.backtest(_book(), positions, balances, prices, horizon="1d", confidence=0.99, lookback="2y",
                     start="2024-01-01", model="standard", recalibrate=False)  # fmt: skip
    # standard model: MM = 1% of notional; a 1%-or-worse daily fall is an exceedance
    d = {r["time"]: r for r in bt.dates.to_pylist()}
    acc = bt.accounts.to_pylist()[0]
    assert acc["exceedances"] == sum(1 for r in bt.book.to_pylist() if d[r["time"]]["move"] < -0.01)


def test_backtest_chart(tmp_path):
    pytest.importorskip("matplotlib")
    t = _series(_random_close(900, seed=1))
    bt = me.backtest(prices=t, horizon="1d", confidence=0.99, lookback="600d")
    out = bt.chart(tmp_path / "bt.png")
    assert (tmp_path / "bt.png").stat().st_size > 10_000
    assert out is not None


def test_backtest_bad_inputs():
    t = _series(_random_close(500))
    with pytest.raises(me.MarginInputError, match="price history is required"):
        me.backtest()
    with pytest.raises(me.MarginInputError) as e:
        me.backtest(prices=t, lookback="2y")
    assert e.value.table == "prices" and "shorter than the lookback" in str(e.value)
    with pytest.raises(me.MarginInputError) as e:
        me.backtest(prices=t, lookback="300d", step="36h")
    assert e.value.column == "step"
    with pytest.raises(me.MarginInputError) as e:
        me.backtest(prices=t, lookback="300d", margin="variation")
    assert e.value.column == "margin"
    with pytest.raises(me.MarginInputError) as e:
        me.backtest(prices=t, lookback="300d", start="2030-01-01")
    assert "no date to backtest" in str(e.value)
    positions = pa.table({"account_id": [1], "instrument": ["ETH-PERP"], "quantity": [1.0]})
    balances = pa.table({"account_id": [1], "asset": ["USD"], "amount": [1.0]})
    with pytest.raises(me.MarginInputError) as e:
        me.backtest(_book(), positions, balances, t, lookback="300d")
    assert e.value.table == "prices" and e.value.offenders == ["'ETH'"]
    with pytest.raises(me.MarginInputError) as e:
        me.backtest("not a book", positions, balances, t, lookback="300d")
    assert e.value.column == "book"


def test_book_at_keeps_the_methodology():
    if not hasattr(me, "Methodology"):
        pytest.skip("no me.Methodology in this build")
    from margin_engine.calibration.backtest import book_at
    from margin_engine.calibration.history import read_history

    prices = pq.read_table(DAILY).filter(pc.equal(pc.field("symbol"), "BTC"))
    inst = pa.table({"instrument": ["BTC-PERP"], "kind": ["perpetual"], "underlying": ["BTC"], "multiplier": [1.0],
                     "initial_margin_rate": [0.02], "maintenance_margin_rate": [0.01]})  # fmt: skip
    assets = pa.table({"asset": ["USD", "BTC"], "price": [1.0, 1.0], "initial_weight": [1.0, 0.9], "maintenance_weight": [1.0, 0.95],
                       "initial_liability_weight": [1.0, 1.1], "maintenance_liability_weight": [1.0, 1.05]})  # fmt: skip
    book = me.Book(inst, assets, methodology=me.Methodology.preset("exchange"))
    h = read_history(prices)
    t = int(h["BTC"].times[-1])
    moved = book_at(book, h, t, {"BTC": {"price_range": 0.05}})
    assert moved.methodology == book.methodology
    assert moved.assets.column("price").to_pylist() == [1.0, h["BTC"].close[-1]]  # the BTC coin at its close
    assert moved.risk_params.column("price_range").to_pylist() == [0.05]


def test_christoffersen_pools_columns():
    a = [0, 1, 1, 0, 0, 0]
    b = [1, 0, 0, 0, 1, 1]
    lr, p, n = christoffersen(np.array([a, b]).T)
    na, nb = christoffersen(a)[2], christoffersen(b)[2]
    assert n == {k: na[k] + nb[k] for k in na}  # no transition from a's last date to b's first
    assert n["n00"] + n["n01"] + n["n10"] + n["n11"] == 10


def test_unpriced_underlyings_raise_or_are_dropped():
    prices = pq.read_table(DAILY).filter(pc.equal(pc.field("symbol"), "BTC"))
    positions = pa.table({"account_id": [1, 1, 2], "instrument": ["BTC-PERP", "ETH-PERP", "ETH-PERP"], "quantity": [1.0, 5.0, -5.0],
                          "entry_price": [30_000.0, None, None]})  # fmt: skip
    balances = pa.table({"account_id": [1, 2], "asset": ["USD", "USD"], "amount": [1e6, 1e5]})
    with pytest.raises(me.MarginInputError, match="unpriced='drop'"):
        me.backtest(_book(), positions, balances, prices, lookback="2y", start="2024-06-01")
    bt = me.backtest(_book(), positions, balances, prices, lookback="2y", start="2024-06-01", unpriced="drop")
    assert bt.dropped == {"underlyings": ["ETH"], "positions": 2}
    alone = me.backtest(_book(), positions.slice(0, 1), balances, prices, lookback="2y", start="2024-06-01")
    assert bt.accounts.column("exceedances").to_pylist() == alone.accounts.column("exceedances").to_pylist()
    with pytest.raises(me.MarginInputError) as e:
        me.backtest(_book(), positions, balances, prices, lookback="2y", unpriced="ignore")
    assert e.value.column == "unpriced"
