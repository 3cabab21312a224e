"""Hand-worked portfolios (docs/portfolio-margin-examples.md): every number below is derived by
hand from METHODOLOGY §2–§4 and §6, and both the Rust engine and `margin_engine.reference` must
reproduce it (to 1e-9).

One underlying, ETH, index S = 2000, with `risk_params` price_range R = 0.10 and price_steps n = 5
(spot moves −10%, −5%, 0, +5%, +10%; extreme moves ±3R = ±30%); the other parameters take the §4
defaults (extreme_cover 0.33, short_option_minimum 0.01, im_factor 1.25). The options expire at
the valuation time (T = 0), so Black-76 is the intrinsic value and the vol shocks change nothing.

Accounts (see the doc for the tables):
1. (a)  naked short perpetual, two fills         — scan loss binds (extreme = 0.99 × scan)
2. (b)  covered call: long future + short ITM call — regular scan flat, extreme loss binds
3. (c)  naked short deep-OTM put, K = 1300         — short-option minimum binds
4. (c') naked short OTM put, K = 1500              — only the extreme scenario sees it
5. (a') long future under water                    — scan binds; bankrupt
"""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pytest

import margin_engine as me
from margin_engine import reference

TOL = 1e-9

VALUATION = dt.datetime(2025, 3, 28, 8, 0, tzinfo=dt.timezone.utc)
FUTURE_EXPIRY = dt.datetime(2025, 6, 27, 8, 0, tzinfo=dt.timezone.utc)
S = 2000.0


def _instruments() -> pa.Table:
    rows = [
        # instrument, kind, multiplier, expiry, strike, option_type, imr, mmr, floor
        ("ETH-PERP", "perpetual", 0.01, None, None, None, 0.04, 0.02, None),
        ("ETH-27JUN25", "future", 1.0, FUTURE_EXPIRY, None, None, 0.04, 0.02, None),
        ("ETH-28MAR25-1600-C", "option", 1.0, VALUATION, 1600.0, "call", 0.15, 0.075, 0.10),
        ("ETH-28MAR25-1300-P", "option", 1.0, VALUATION, 1300.0, "put", 0.15, 0.075, 0.10),
        ("ETH-28MAR25-1500-P", "option", 1.0, VALUATION, 1500.0, "put", 0.15, 0.075, 0.10),
    ]
    cols = list(zip(*rows, strict=True))
    return pa.table(
        {
            "instrument": pa.array(cols[0], pa.utf8()),
            "kind": pa.array(cols[1], pa.utf8()),
            "underlying": pa.array(["ETH"] * len(rows), pa.utf8()),
            "multiplier": pa.array(cols[2], pa.float64()),
            "expiry": pa.array(cols[3], pa.timestamp("us", tz="UTC")),
            "strike": pa.array(cols[4], pa.float64()),
            "option_type": pa.array(cols[5], pa.utf8()),
            "initial_margin_rate": pa.array(cols[6], pa.float64()),
            "maintenance_margin_rate": pa.array(cols[7], pa.float64()),
            "initial_margin_floor": pa.array(cols[8], pa.float64()),
        }
    )


def _assets() -> pa.Table:
    return pa.table(
        {
            "asset": pa.array(["USD", "ETH"], pa.utf8()),
            "price": pa.array([1.0, 2000.0], pa.float64()),
            "initial_weight": pa.array([1.0, 0.8], pa.float64()),
            "maintenance_weight": pa.array([1.0, 0.9], pa.float64()),
            "initial_liability_weight": pa.array([1.0, 1.2], pa.float64()),
            "maintenance_liability_weight": pa.array([1.0, 1.1], pa.float64()),
            # Linked to the ETH underlying; in v1 that does not enter the scan (§4, last line).
            "underlying": pa.array([None, "ETH"], pa.utf8()),
        }
    )


def _risk_params() -> pa.Table:
    # Only R and n; everything else takes the §4 defaults.
    return pa.table(
        {
            "underlying": pa.array(["ETH"], pa.utf8()),
            "price_range": pa.array([0.10], pa.float64()),
            "price_steps": pa.array([5], pa.int64()),
        }
    )


def _market_tables() -> tuple[pa.Table, pa.Table]:
    index_prices = pa.table({"underlying": ["ETH"], "index_price": pa.array([S], pa.float64())})
    marks = pa.table(
        {
            "instrument": pa.array(
                ["ETH-PERP", "ETH-27JUN25", "ETH-28MAR25-1600-C", "ETH-28MAR25-1300-P", "ETH-28MAR25-1500-P"],
                pa.utf8(),
            ),
            "mark_price": pa.array([2010.0, 2000.0, 400.0, 0.0, 0.0], pa.float64()),
            # Perpetual / future: ignored (null). Options: required, irrelevant at T = 0.
            "implied_vol": pa.array([None, None, 0.6, 0.6, 0.6], pa.float64()),
        }
    )
    return index_prices, marks


def _positions() -> pa.Table:
    rows = [
        # account, instrument, quantity, entry_price
        (1, "ETH-PERP", -150.0, 2100.0),
        (2, "ETH-27JUN25", 1.0, 1950.0),
        (1, "ETH-PERP", -50.0, 2140.0),  # second fill of account 1 (rows need not be sorted)
        (2, "ETH-28MAR25-1600-C", -1.0, 400.0),  # entry price ignored for options (§2.4)
        (3, "ETH-28MAR25-1300-P", -5.0, 0.0),
        (4, "ETH-28MAR25-1500-P", -1.0, 0.0),
        (5, "ETH-27JUN25", 1.0, 2300.0),
    ]
    cols = list(zip(*rows, strict=True))
    return pa.table(
        {
            "account_id": pa.array(cols[0], pa.uint64()),
            "instrument": pa.array(cols[1], pa.utf8()),
            "quantity": pa.array(cols[2], pa.float64()),
            "entry_price": pa.array(cols[3], pa.float64()),
        }
    )


def _balances() -> pa.Table:
    rows = [
        (1, "USD", 300.0),
        (1, "ETH", 0.25),
        (2, "USD", 700.0),
        (2, "ETH", -0.1),  # a borrow
        (3, "USD", 110.0),
        (4, "USD", 180.0),
        (5, "USD", 100.0),
    ]
    cols = list(zip(*rows, strict=True))
    return pa.table(
        {
            "account_id": pa.array(cols[0], pa.uint64()),
            "asset": pa.array(cols[1], pa.utf8()),
            "amount": pa.array(cols[2], pa.float64()),
        }
    )


@pytest.fixture(scope="module")
def book() -> me.Book:
    return me.Book(_instruments(), _assets(), _risk_params())


@pytest.fixture(scope="module")
def market() -> me.Market:
    index_prices, marks = _market_tables()
    return me.Market(index_prices, marks, VALUATION)


# ------------------------------------------------------------------------------------------------
# Hand numbers
# ------------------------------------------------------------------------------------------------

MOVES = [-0.10, -0.05, 0.0, 0.05, 0.10]
EXTREME_MOVES = [-0.30, 0.30]

# Per-contract P&L at the 5 spot moves (the same in the 3 vol states) and the 2 extreme moves.
# perpetual: 0.01 × 2010 × m; future: 1 × 2000 × m;
# options at T = 0: intrinsic(2000 × (1 + m)) − intrinsic(2000).
RISK_ARRAYS = {
    "ETH-PERP": ([-2.01, -1.005, 0.0, 1.005, 2.01], [-6.03, 6.03]),
    "ETH-27JUN25": ([-200.0, -100.0, 0.0, 100.0, 200.0], [-600.0, 600.0]),
    # call K = 1600: value 200, 300, 400, 500, 600 at 1800..2200; 0 at 1400, 1000 at 2600; base 400
    "ETH-28MAR25-1600-C": ([-200.0, -100.0, 0.0, 100.0, 200.0], [-400.0, 600.0]),
    # put K = 1300: out of the money everywhere, even at 1400
    "ETH-28MAR25-1300-P": ([0.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0]),
    # put K = 1500: out of the money in every regular scenario, worth 100 at 1400
    "ETH-28MAR25-1500-P": ([0.0, 0.0, 0.0, 0.0, 0.0], [100.0, 0.0]),
}

# Account P&L per scenario (regular spot steps, extremes) and the §4 components.
SCAN = {
    1: {"regular": [402.0, 201.0, 0.0, -201.0, -402.0], "extreme": [1206.0, -1206.0],
        "scan_loss": 402.0, "extreme_loss": 397.98, "short_min": 0.0},
    2: {"regular": [0.0, 0.0, 0.0, 0.0, 0.0], "extreme": [-200.0, 0.0],
        "scan_loss": 0.0, "extreme_loss": 66.0, "short_min": 20.0},
    3: {"regular": [0.0, 0.0, 0.0, 0.0, 0.0], "extreme": [0.0, 0.0],
        "scan_loss": 0.0, "extreme_loss": 0.0, "short_min": 100.0},
    4: {"regular": [0.0, 0.0, 0.0, 0.0, 0.0], "extreme": [-100.0, 0.0],
        "scan_loss": 0.0, "extreme_loss": 33.0, "short_min": 20.0},
    5: {"regular": [-200.0, -100.0, 0.0, 100.0, 200.0], "extreme": [-600.0, 600.0],
        "scan_loss": 200.0, "extreme_loss": 198.0, "short_min": 0.0},
}  # fmt: skip

# (equity, collateral_initial, collateral_maintenance): the same under both models.
COLLATERAL = {
    1: (1000.0, 900.0, 950.0),  # cash 300 + 500, weighted 300 + 400 / 300 + 450, upnl +135 + 65
    2: (150.0, 110.0, 130.0),  # cash 700 − 200, weighted 700 − 240 / 700 − 220, upnl +50, option −400
    3: (110.0, 110.0, 110.0),
    4: (180.0, 180.0, 180.0),
    5: (-200.0, -200.0, -200.0),  # 100 + upnl (2000 − 2300)
}

# (IM, MM, status)
PORTFOLIO = {
    1: (502.5, 402.0, "healthy"),
    2: (82.5, 66.0, "healthy"),
    3: (125.0, 100.0, "margin_call"),
    4: (41.25, 33.0, "healthy"),
    5: (250.0, 200.0, "bankrupt"),
}
STANDARD = {
    1: (160.8, 80.4, "healthy"),  # notional 200 × 0.01 × 2010 = 4020; × 4% / × 2%
    2: (780.0, 590.0, "liquidatable"),  # future 80 / 40; call 400 + max(300 − 0, 200) / 400 + 150
    3: (1000.0, 750.0, "liquidatable"),  # 5 × (0 + max(300 − 700, 200)) / 5 × (0 + 150)
    4: (200.0, 150.0, "margin_call"),  # 0 + max(300 − 500, 200) / 0 + 150
    5: (80.0, 40.0, "bankrupt"),
}


def expected_rows(model: str) -> list[dict]:
    table = PORTFOLIO if model == "portfolio" else STANDARD
    rows = []
    for account in sorted(table):
        im, mm, status = table[account]
        equity, ci, cm = COLLATERAL[account]
        rows.append(
            {
                "account_id": account,
                "equity": equity,
                "collateral_initial": ci,
                "collateral_maintenance": cm,
                "initial_margin": im,
                "maintenance_margin": mm,
                "free_collateral": ci - im,
                "margin_excess": cm - mm,
                "health": cm / mm,
                "status": status,
            }
        )
    return rows


def _assert_rows(got: pa.Table, want: list[dict]) -> None:
    rows = got.to_pylist()
    assert [r["account_id"] for r in rows] == [w["account_id"] for w in want]
    for g, w in zip(rows, want, strict=True):
        for name, value in w.items():
            if isinstance(value, float):
                assert g[name] == pytest.approx(value, rel=TOL, abs=TOL), (w["account_id"], name, g[name], value)
            else:
                assert g[name] == value, (w["account_id"], name, g[name], value)


# ------------------------------------------------------------------------------------------------
# Tests
# ------------------------------------------------------------------------------------------------


def test_hand_numbers_are_consistent():
    """The tables above follow from each other by §4: MM = max(components), IM = 1.25 × MM."""
    for account, scan in SCAN.items():
        assert scan["scan_loss"] == pytest.approx(max(0.0, -min(scan["regular"])))
        assert scan["extreme_loss"] == pytest.approx(0.33 * max(0.0, -min(scan["extreme"])))
        mm = max(scan["scan_loss"], scan["extreme_loss"], scan["short_min"])
        im, mm_table, _ = PORTFOLIO[account]
        assert mm == pytest.approx(mm_table) and im == pytest.approx(1.25 * mm)


@pytest.mark.parametrize("impl", ["engine", "reference"])
def test_risk_arrays(book, market, impl):
    fn = me.risk_arrays if impl == "engine" else reference.risk_arrays
    got = fn(book, market).to_pylist()
    assert len(got) == len(RISK_ARRAYS) * (3 * 5 + 2)
    by_instrument: dict[str, list[dict]] = {}
    for row in got:
        assert row["underlying"] == "ETH"
        by_instrument.setdefault(row["instrument"], []).append(row)
    assert list(by_instrument) == list(RISK_ARRAYS)  # book row order
    for instrument, (regular, extreme) in RISK_ARRAYS.items():
        rows = by_instrument[instrument]
        assert [r["scenario"] for r in rows] == list(range(17))
        for k, (move, pnl) in enumerate(zip(MOVES, regular, strict=True)):
            for v, state in enumerate(("down", "none", "up")):
                row = rows[3 * k + v]
                assert row["vol_state"] == state and row["extreme"] is False
                assert row["move"] == pytest.approx(move, abs=TOL)
                assert row["pnl"] == pytest.approx(pnl, rel=TOL, abs=TOL), (instrument, row)
        for j, (move, pnl) in enumerate(zip(EXTREME_MOVES, extreme, strict=True)):
            row = rows[15 + j]
            assert row["vol_state"] == "none" and row["extreme"] is True
            assert row["move"] == pytest.approx(move, abs=TOL)
            assert row["pnl"] == pytest.approx(pnl, rel=TOL, abs=TOL), (instrument, row)


def test_scan_from_engine_risk_arrays(book, market):
    """P_s = Σ q × riskarray_s, rebuilt from the engine's risk arrays, gives the hand scan table."""
    arrays: dict[str, list[float]] = {}
    for row in me.risk_arrays(book, market).to_pylist():
        arrays.setdefault(row["instrument"], []).append(row["pnl"])
    net: dict[int, dict[str, float]] = {}
    for row in _positions().to_pylist():
        account = net.setdefault(row["account_id"], {})
        account[row["instrument"]] = account.get(row["instrument"], 0.0) + row["quantity"]
    for account, scan in SCAN.items():
        pnl = [sum(q * arrays[i][s] for i, q in net[account].items()) for s in range(17)]
        for k, want in enumerate(scan["regular"]):
            for v in range(3):
                assert pnl[3 * k + v] == pytest.approx(want, rel=TOL, abs=TOL)
        assert pnl[15:] == pytest.approx(scan["extreme"], rel=TOL, abs=TOL)


@pytest.mark.parametrize("impl", ["engine", "reference"])
@pytest.mark.parametrize("model", ["portfolio", "standard"])
def test_margin(book, market, model, impl):
    fn = me.margin if impl == "engine" else reference.margin
    got = fn(book, _positions(), _balances(), market, model=model)
    _assert_rows(got, expected_rows(model))


def test_portfolio_far_below_standard_for_hedged_and_otm(book, market):
    """The point of the examples: the covered call (2) and the short OTM options (3, 4) need a
    fraction of the standard margin; the naked linear positions (1, 5) need more (R = 10% is
    wider than a 2% maintenance rate)."""
    pm = {r["account_id"]: r for r in me.margin(book, _positions(), _balances(), market, model="portfolio").to_pylist()}
    sm = {r["account_id"]: r for r in me.margin(book, _positions(), _balances(), market, model="standard").to_pylist()}
    assert pm[2]["maintenance_margin"] < 0.12 * sm[2]["maintenance_margin"]  # 66 vs 590
    assert pm[3]["maintenance_margin"] < 0.14 * sm[3]["maintenance_margin"]  # 100 vs 750
    assert pm[4]["maintenance_margin"] < 0.23 * sm[4]["maintenance_margin"]  # 33 vs 150
    assert pm[1]["maintenance_margin"] == pytest.approx(5.0 * sm[1]["maintenance_margin"])  # 402 vs 80.4
    assert pm[5]["maintenance_margin"] == pytest.approx(5.0 * sm[5]["maintenance_margin"])  # 200 vs 40


def test_greeks_at_expiry(book, market):
    """§5/§7 by hand: the perpetual and future have delta 1; the expired ITM call has delta 1,
    the expired OTM puts 0; gamma, vega and theta are all 0 at T = 0."""
    want_delta = {1: -2.0, 2: 0.0, 3: 0.0, 4: 0.0, 5: 1.0}
    for impl in (me.greeks, reference.greeks):
        rows = impl(book, _positions(), market).to_pylist()
        assert [(r["account_id"], r["underlying"]) for r in rows] == [(a, "ETH") for a in sorted(want_delta)]
        for r in rows:
            assert r["delta"] == pytest.approx(want_delta[r["account_id"]], abs=TOL)
            assert r["delta_usd"] == pytest.approx(want_delta[r["account_id"]] * S, abs=TOL)
            for name in ("gamma", "gamma_usd", "vega", "theta"):
                assert r[name] == pytest.approx(0.0, abs=TOL), (r["account_id"], name)
