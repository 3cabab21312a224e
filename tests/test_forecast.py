"""me.forecast_margin: the simulated paths are filtered historical simulation (each day's moves are
past standardized returns of one common date, revolatilized by the EWMA along the path), the
engine margins every path and day (in blocks), the counts and shortfall equal an independent computation
from the paths' moves, the tail accounts, the forecast-driven rebalance; real data; bad inputs."""

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

DATA = Path(__file__).parent / "data" / "prices"
DAILY = DATA / "daily_btc_eth_usdc.parquet"
T0 = dt.datetime(2019, 1, 1, tzinfo=dt.timezone.utc)


def _prices(n=900, seed=0):
    rng = np.random.default_rng(seed)
    rows = {"symbol": [], "time": [], "close": []}
    for j, (sym, vol, s0) in enumerate((("AAA", 0.03, 100.0), ("BBB", 0.05, 10.0))):
        z = rng.standard_t(4, n) / math.sqrt(2)
        rows["symbol"] += [sym] * n
        rows["time"] += [T0 + dt.timedelta(days=i) for i in range(n)]
        rows["close"] += list(s0 * np.exp(np.cumsum(vol * z)))
    return pa.table({"symbol": rows["symbol"], "time": pa.array(rows["time"], pa.timestamp("s", "UTC")), "close": rows["close"]})


def _last(prices, sym):
    return prices.filter(pc.equal(prices.column("symbol"), sym)).column("close")[-1].as_py()


def _book():
    instruments = pa.table({"instrument": ["AAA-PERP", "BBB-PERP"], "kind": ["perpetual", "perpetual"], "underlying": ["AAA", "BBB"],
                            "multiplier": [1.0, 1.0], "initial_margin_rate": [0.10, 0.10], "maintenance_margin_rate": [0.05, 0.05]})  # fmt: skip
    assets = pa.table({"asset": ["USD"], "price": [1.0], "initial_weight": [1.0], "maintenance_weight": [1.0],
                       "initial_liability_weight": [1.0], "maintenance_liability_weight": [1.0]})  # fmt: skip
    return me.Book(instruments, assets)


def _market(prices):
    a, b = _last(prices, "AAA"), _last(prices, "BBB")
    return me.Market({"underlying": ["AAA", "BBB"], "index_price": [a, b]},
                     {"instrument": ["AAA-PERP", "BBB-PERP"], "mark_price": [a, b]}, T0 + dt.timedelta(days=899))  # fmt: skip


def _loop_residuals(close, lam=0.94):
    r = [math.log(close[i] / close[i - 1]) for i in range(1, len(close))]
    m = math.ceil(1 / (1 - lam))
    v = sum(x * x for x in r[:m]) / m
    z = []
    for x in r:
        z.append(x / math.sqrt(v))
        v = lam * v + (1 - lam) * x * x
    return z, v, m


def test_paths_are_filtered_historical_simulation():
    prices = _prices()
    positions = pa.table({"account_id": [1, 1], "instrument": ["AAA-PERP", "BBB-PERP"], "quantity": [1.0, -3.0]})
    balances = pa.table({"account_id": [1], "asset": ["USD"], "amount": [30.0]})
    fc = me.forecast_margin(_book(), positions, balances, _market(prices), prices, days=3, paths=150, lookback="800d", seed=4)
    closes = {s: prices.filter(pc.equal(prices.column("symbol"), s)).column("close").to_pylist() for s in ("AAA", "BBB")}
    res = {}
    for s, c in closes.items():
        z, v, m = _loop_residuals(c)
        # residuals of the lookback (returns ending in the last 800 days), after the seed
        res[s] = (z[max(m, len(z) - 800) :], v)
    pairs = {(round(a, 9), round(b, 9)) for a, b in zip(res["AAA"][0], res["BBB"][0])}
    mv = fc.moves.to_pylist()
    by = {(r["path"], r["day"], r["underlying"]): r["move"] for r in mv}
    lam = 0.94
    for p in range(150):
        var = {s: res[s][1] for s in res}
        cum = {s: 0.0 for s in res}
        for d in (1, 2, 3):
            r = {s: math.log1p(by[(p, d, s)]) - cum[s] for s in res}
            zz = tuple(round(r[s] / math.sqrt(var[s]), 9) for s in ("AAA", "BBB"))
            assert zz in pairs  # one past date's standardized returns, both underlyings together
            for s in res:
                cum[s] += r[s]
                var[s] = lam * var[s] + (1 - lam) * r[s] ** 2
    assert fc.vols["AAA"] == pytest.approx(math.sqrt(res["AAA"][1] * 365), rel=1e-12)
    again = me.forecast_margin(_book(), positions, balances, _market(prices), prices, days=3, paths=150, lookback="800d", seed=4)
    assert again.moves.equals(fc.moves) and again.paths.equals(fc.paths)


def test_counts_and_shortfall_equal_an_independent_computation(monkeypatch):
    prices = _prices(seed=1)
    a0, b0 = _last(prices, "AAA"), _last(prices, "BBB")
    cash = np.array([8.0, 15.0, 40.0, 1.0]) * a0 / 100
    positions = pa.table({"account_id": [1, 2, 3, 4, 4], "instrument": ["AAA-PERP", "AAA-PERP", "BBB-PERP", "AAA-PERP", "BBB-PERP"],
                          "quantity": [1.0, -1.0, 20.0, 0.5, -5.0]})  # fmt: skip
    balances = pa.table({"account_id": [1, 2, 3, 4], "asset": ["USD"] * 4, "amount": cash})
    import margin_engine.api as api

    from margin_engine import _core

    calls, passes = [], []
    real, real_pass = api.liquidation_scan, _core.stressed_paths
    monkeypatch.setattr(api, "liquidation_scan", lambda *a, **k: calls.append(k.get("stress")) or real(*a, **k))
    monkeypatch.setattr(_core, "stressed_paths", lambda *a, **k: passes.append(len(a[5])) or real_pass(*a, **k))
    ticks = []
    fc = me.forecast_margin(_book(), positions, balances, _market(prices), prices, days=4, paths=100, lookback="800d",
                            model="standard", tail=0.95, progress=lambda d, t: ticks.append((d, t)))  # fmt: skip
    assert calls == [None]  # today's scan; the paths are margined by the engine's path pass
    assert passes == [248, 152, 5]  # blocks of 62 paths x 4 days, then the 5 tail paths' last day
    assert ticks == [(248, 400), (400, 400)]
    by = {(r["path"], r["day"], r["underlying"]): r["move"] for r in fc.moves.to_pylist()}
    qa = {1: 1.0, 2: -1.0, 3: 0.0, 4: 0.5}
    qb = {1: 0.0, 2: 0.0, 3: 20.0, 4: -5.0}
    worst = {}
    liq_last = {k: 0 for k in qa}
    liq_any = {k: set() for k in qa}
    for row in fc.paths.to_pylist():
        p, d = row["path"], row["day"]
        sa, sb = a0 * (1 + by[(p, d, "AAA")]), b0 * (1 + by[(p, d, "BBB")])
        liq = calls_ = bankrupt = 0
        shortfall = call_amount = 0.0
        for k, c in enumerate(cash, start=1):
            equity = c + qa[k] * (sa - a0) + qb[k] * (sb - b0)
            mm = 0.05 * (abs(qa[k]) * sa + abs(qb[k]) * sb)
            im = 0.10 * (abs(qa[k]) * sa + abs(qb[k]) * sb)
            if equity < 0:
                bankrupt += 1
            if equity < mm - 1e-9 * max(1, mm):
                liq += 1
                liq_any[k].add(p)
                liq_last[k] += d == 4
            elif equity < im - 1e-9 * max(1, im):
                calls_ += 1
            shortfall += max(0.0, mm - equity)
            call_amount += max(0.0, im - equity)
            if d == 4:
                worst.setdefault(p, {})[k] = max(0.0, mm - equity)
        assert (row["liquidatable"], row["margin_call"], row["bankrupt"]) == (liq, calls_, bankrupt), row
        assert row["shortfall"] == pytest.approx(shortfall, rel=1e-9, abs=1e-9)
        assert row["call_amount"] == pytest.approx(call_amount, rel=1e-9, abs=1e-9)
    days = fc.days.to_pylist()
    sf4 = np.array([r["shortfall"] for r in fc.paths.to_pylist() if r["day"] == 4])
    assert days[3]["shortfall_p99"] == pytest.approx(np.quantile(sf4, 0.99))
    assert days[3]["shortfall_es99"] == pytest.approx(np.sort(sf4)[-1])
    # the tail: the 5 worst paths of day 4; each account's mean shortfall on them
    tail = np.argsort(-sf4, kind="stable")[:5]
    mean = {k: np.mean([worst[p][k] for p in tail]) for k in qa}
    got = {r["account_id"]: r["tail_shortfall"] for r in fc.accounts.to_pylist()}
    assert got == pytest.approx({k: v for k, v in mean.items() if v > 0})
    assert list(got) == sorted(got, key=lambda k: -got[k])
    for r in fc.accounts.to_pylist():
        assert r["p_liquidatable"] == liq_last[r["account_id"]] / 100
        assert r["p_liquidatable_any"] == len(liq_any[r["account_id"]]) / 100


def test_forecast_driven_rebalance():
    prices = _prices(seed=2)
    a0 = _last(prices, "AAA")
    positions = pa.table({"account_id": [1, 2], "instrument": ["AAA-PERP", "AAA-PERP"], "quantity": [1.0, 1.0]})
    balances = pa.table({"account_id": [1, 2], "asset": ["USD", "USD"], "amount": [a0, 0.06 * a0]})
    fc = me.forecast_margin(_book(), positions, balances, _market(prices), prices, days=2, paths=200, lookback="800d",
                            model="standard", tail=0.9)  # fmt: skip
    plan = fc.rebalance(target_health=1.0)
    # account 2's worst tail path on day 2: cash + (S' − S) against 5% of S'
    moves = {(r["path"], r["day"]): r["move"] for r in fc.moves.to_pylist() if r["underlying"] == "AAA"}
    sf2 = {r["path"]: r["shortfall"] for r in fc.paths.to_pylist() if r["day"] == 2}
    tail = sorted(sf2, key=lambda p: (-sf2[p], p))[:20]
    deficit = max(0.05 * a0 * (1 + moves[(p, 2)]) - (0.06 * a0 + a0 * moves[(p, 2)]) for p in tail)
    assert deficit > 0
    t = plan.transfers.to_pylist()
    assert plan.feasible and t == [{"from_account_id": 1, "to_account_id": 2, "amount": pytest.approx(deficit, rel=1e-9)}]
    # a volatility trigger above today's vol: nothing moves
    quiet = fc.rebalance(target_health=1.0, trigger={"AAA": fc.vols["AAA"] * 2})
    assert not quiet.triggered and quiet.transfers.num_rows == 0
    assert fc.rebalance(target_health=1.0, trigger={"AAA": fc.vols["AAA"] / 2}).triggered
    with pytest.raises(me.MarginInputError):
        fc.rebalance(day=3)


def test_garch_paths():
    pytest.importorskip("arch")
    prices = _prices(seed=3)
    positions = pa.table({"account_id": [1], "instrument": ["AAA-PERP"], "quantity": [1.0]})
    balances = pa.table({"account_id": [1], "asset": ["USD"], "amount": [20.0]})
    fc = me.forecast_margin(_book(), positions, balances, _market(prices), prices, days=2, paths=50, lookback="800d", method="garch")
    assert fc.method == "garch" and fc.paths.num_rows == 100
    assert 0.2 < fc.vols["AAA"] < 2.0


def test_real_btc_eth_forecast(tmp_path, capsys):
    prices = pq.read_table(DAILY)
    s = {u: prices.filter(pc.equal(prices.column("symbol"), u)).column("close")[-1].as_py() for u in ("BTC", "ETH")}
    instruments = pa.table({"instrument": ["BTC-PERP", "ETH-PERP"], "kind": ["perpetual"] * 2, "underlying": ["BTC", "ETH"],
                            "multiplier": [1.0, 1.0], "initial_margin_rate": [0.02] * 2, "maintenance_margin_rate": [0.01] * 2})  # fmt: skip
    cal = me.calibrate(prices, horizon="1d", confidence=0.99, method="fhs", symbols=["BTC", "ETH"], volume_in="quote")
    book = me.Book(instruments, cal.assets, risk_params=cal.risk_params)
    market = me.Market({"underlying": ["BTC", "ETH"], "index_price": [s["BTC"], s["ETH"]]},
                       {"instrument": ["BTC-PERP", "ETH-PERP"], "mark_price": [s["BTC"], s["ETH"]]}, "2025-02-10")  # fmt: skip
    rng = np.random.default_rng(0)
    n = 200
    q = rng.normal(0, 1, (n, 2))
    positions = pa.table({"account_id": np.repeat(np.arange(n), 2), "instrument": ["BTC-PERP", "ETH-PERP"] * n,
                          "quantity": (q * [1.0, 20.0]).ravel()})  # fmt: skip
    need = np.abs(q[:, 0]) * s["BTC"] * 0.12 + np.abs(q[:, 1]) * 20 * s["ETH"] * 0.14
    balances = pa.table({"account_id": np.arange(n), "asset": ["USD"] * n, "amount": need * rng.uniform(0.8, 2.0, n)})
    fc = me.forecast_margin(book, positions, balances, market, prices, days=5, paths=100)
    d = fc.days.to_pylist()
    with capsys.disabled():
        print(f"\nforecast, 200 accounts, 100 paths x 5 days, portfolio margin at the FHS 99% 1-day range: today {fc.today}")
        for r in d:
            print(f"  day {r['day']}: liquidatable mean {r['liquidatable_mean']:.1f} p99 {r['liquidatable_p99']:.0f}, "
                  f"shortfall p99 {r['shortfall_p99']:,.0f} USD, P(any liquidation) {r['p_any_liquidation']:.2f}")  # fmt: skip
    assert d[-1]["liquidatable_mean"] >= d[0]["liquidatable_mean"]  # risk grows with the days
    assert fc.accounts.num_rows <= 20
    pytest.importorskip("matplotlib")
    fc.chart(tmp_path / "fc.png")
    assert (tmp_path / "fc.png").stat().st_size > 10_000


def test_forecast_bad_inputs():
    prices = _prices()
    positions = pa.table({"account_id": [1], "instrument": ["AAA-PERP"], "quantity": [1.0]})
    balances = pa.table({"account_id": [1], "asset": ["USD"], "amount": [20.0]})
    args = (_book(), positions, balances, _market(prices), prices)
    for kwargs, column in (({"paths": 0}, "paths"), ({"days": "5"}, "days"), ({"tail": 1.0}, "tail"),
                           ({"method": "ewma"}, "method"), ({"model": "other"}, "model")):  # fmt: skip
        with pytest.raises(me.MarginInputError) as e:
            me.forecast_margin(*args, lookback="800d", **kwargs)
        assert e.value.column == column
    only_b = prices.filter(pc.equal(prices.column("symbol"), "BBB"))
    with pytest.raises(me.MarginInputError) as e:
        me.forecast_margin(_book(), positions, balances, _market(prices), only_b, lookback="800d")
    assert e.value.table == "prices" and e.value.offenders == ["'AAA'"]
    with pytest.raises(me.MarginInputError) as e:
        me.forecast_margin(_book(), positions, balances, "market", prices)
    assert e.value.column == "market"
    # isolated positions are refused by name; a margin_mode column of cross positions only is read
    isolated = positions.append_column("margin_mode", pa.array(["isolated"]))
    with pytest.raises(me.MarginInputError) as e:
        me.forecast_margin(_book(), isolated, balances, _market(prices), prices, lookback="800d")
    assert (e.value.table, e.value.column, e.value.offenders) == ("positions", "margin_mode", ["account 1 AAA-PERP"])
    cross = positions.append_column("margin_mode", pa.array(["cross"]))
    kw = {"lookback": "800d", "days": 2, "paths": 10, "model": "standard"}
    assert me.forecast_margin(_book(), cross, balances, _market(prices), prices, **kw).paths.equals(
        me.forecast_margin(_book(), positions, balances, _market(prices), prices, **kw).paths
    )


def test_unpriced_underlyings_held_at_todays_price():
    prices = _prices(seed=4)
    only_a = prices.filter(pc.equal(prices.column("symbol"), "AAA"))
    positions = pa.table({"account_id": [1, 1], "instrument": ["AAA-PERP", "BBB-PERP"], "quantity": [1.0, -3.0]})
    balances = pa.table({"account_id": [1], "asset": ["USD"], "amount": [30.0]})
    args = (_book(), positions, balances, _market(prices), only_a)
    with pytest.raises(me.MarginInputError, match="unpriced='hold'"):
        me.forecast_margin(*args, days=2, paths=20, lookback="800d")
    fc = me.forecast_margin(*args, days=2, paths=20, lookback="800d", unpriced="hold", model="standard")
    assert fc.held_constant == ["BBB"] and set(fc.moves.column("underlying").to_pylist()) == {"AAA"}
    # BBB stays at today's price: shortfall = max(0, MM − equity) with only AAA moved
    a0, b0 = _last(prices, "AAA"), _last(prices, "BBB")
    moves = {(r["path"], r["day"]): r["move"] for r in fc.moves.to_pylist()}
    for r in fc.paths.to_pylist():
        sa = a0 * (1 + moves[(r["path"], r["day"])])
        want = max(0.0, 0.05 * (sa + 3 * b0) - (30.0 + sa - a0))
        assert r["shortfall"] == pytest.approx(want, rel=1e-9, abs=1e-9)


def test_hourly_histories_ending_at_different_hours_line_up():
    """Intraday candles are taken once a day at one time of day for every underlying (the
    earliest last candle's), so series that end at different hours still share their days."""
    rng = np.random.default_rng(9)
    n = 24 * 500
    rows = []
    for sym, cut, s0 in (("AAA", 0, 100.0), ("BBB", 5, 10.0)):  # BBB's last 5 hours are missing
        close = s0 * np.exp(np.cumsum(0.004 * rng.standard_normal(n - cut)))
        rows.append(pa.table({"symbol": [sym] * (n - cut), "time": pa.array([T0 + dt.timedelta(hours=i) for i in range(n - cut)], pa.timestamp("s", "UTC")),
                              "close": close}))  # fmt: skip
    prices = pa.concat_tables(rows)
    positions = pa.table({"account_id": [1, 1], "instrument": ["AAA-PERP", "BBB-PERP"], "quantity": [1.0, -3.0]})
    balances = pa.table({"account_id": [1], "asset": ["USD"], "amount": [30.0]})
    fc = me.forecast_margin(_book(), positions, balances, _market(prices), prices, days=2, paths=20, lookback="400d")
    assert fc.paths.num_rows == 40
