"""Inverse (coin-margined) contracts, coin-settled options and unsettled funding
(docs/methodology.md, "Settlement"; docs/liquidation.md, "Inverse contracts").

- differential: the Rust engine against `margin_engine.reference` on books mixing linear and
  inverse contracts, coin collateral, options and funding (`inverse_strategies.py`), for
  margin (both models), Greeks, risk arrays, stress, distances and what-if;
- venues' published formulas on their own numbers (BitMEX, Binance COIN-M, Deribit);
- properties (a coin-hedged short keeps its USD value under any move; funding moves collateral,
  never requirements), bad input and the functions that refuse inverse contracts.
"""

from __future__ import annotations

import math
from typing import Any

import pyarrow as pa
import pytest
from conftest import assert_tables_close, engine_objects
from hypothesis import given, settings
from hypothesis import strategies as st
from inverse_strategies import inverse_books, near_inverse_books
from strategies import book_underlyings, reference_objects
from test_liquidation import ReferenceWalk, compare_distances, engine_grid
from test_liquidation_exact import ReferenceExcess, root_explained, same_root

import margin_engine as me
from margin_engine import reference

MODELS = ["standard", "portfolio"]


def _args(example: dict[str, Any]) -> tuple[Any, ...]:
    book, market = engine_objects(example)
    return book, example["positions"], example["balances"], market


# --------------------------------------------------------------------------------------------
# Differential
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
@settings(max_examples=200)
@given(example=inverse_books())
def test_margin_matches_reference(model, example):
    args = _args(example)
    book, market = reference_objects(example)
    got = me.margin(*args, model=model)
    want = reference.margin(book, example["positions"], example["balances"], market, model=model)
    assert_tables_close(got, want)


@settings(max_examples=100)
@given(example=inverse_books())
def test_greeks_match_reference(example):
    book, market = engine_objects(example)
    ref_book, ref_market = reference_objects(example)
    assert_tables_close(
        me.greeks(book, example["positions"], market), reference.greeks(ref_book, example["positions"], ref_market)
    )


@settings(max_examples=50)
@given(example=inverse_books(max_accounts=2))
def test_risk_arrays_match_reference(example):
    book, market = engine_objects(example)
    ref_book, ref_market = reference_objects(example)
    assert_tables_close(me.risk_arrays(book, market), reference.risk_arrays(ref_book, ref_market))


move_values = st.one_of(st.floats(-0.6, 0.6), st.integers(-120, 120).map(lambda j: 0.005 * j), st.just(0.0))


@pytest.mark.parametrize("model", MODELS)
@settings(max_examples=150)
@given(data=st.data())
def test_stressed_scan_matches_reference(model, data):
    example = data.draw(near_inverse_books(model=model))
    names = data.draw(st.lists(st.sampled_from(book_underlyings(example)), unique=True))
    stress = {u: data.draw(move_values) for u in names}
    args = _args(example)
    book, market = reference_objects(example)
    got = me.liquidation_scan(*args, model=model, stress=stress)
    want = reference.liquidation_scan(book, example["positions"], example["balances"], market, model=model, stress=stress)
    assert_tables_close(got, want)


@pytest.mark.parametrize("model", MODELS)
@settings(max_examples=80)
@given(data=st.data())
def test_distance_matches_reference(model, data):
    example = data.draw(near_inverse_books(model=model))
    args = _args(example)
    book, market = reference_objects(example)
    # the grid walk (the liquidation map's levels) against the reference's grid walk
    got = engine_grid(*args, model=model)
    want = reference.liquidation_distance_grid(book, example["positions"], example["balances"], market, model=model)
    compare_distances(got, want, ReferenceWalk(example, model))
    # the exact roots against the reference twin's (inverse contracts are bracketed: 1/price)
    got = me.liquidation_prices(*args, model=model)
    want = reference.liquidation_prices(book, example["positions"], example["balances"], market, model=model)
    excess = ReferenceExcess(example, model)
    for g, w in zip(got.to_pylist(), want.to_pylist(), strict=True):
        assert (g["account_id"], g["underlying"]) == (w["account_id"], w["underlying"])
        for side, name in ((-1, "down"), (1, "up")):
            gm, wm = g[f"move_{name}"], w[f"move_{name}"]
            if not same_root(gm, wm):
                assert root_explained(excess, g["account_id"], g["underlying"], side, gm), (g, w, side)


@pytest.mark.parametrize("model", MODELS)
@settings(max_examples=100)
@given(data=st.data())
def test_what_if_matches_reference(model, data):
    example = data.draw(inverse_books(max_accounts=1, funding=False))
    book, market = engine_objects(example)
    ref_book, ref_market = reference_objects(example)
    keys = example["instruments"].column("instrument").to_pylist()
    marks = dict(zip(example["marks"].column("instrument").to_pylist(), example["marks"].column("mark_price").to_pylist()))
    account = example["positions"].column("account_id").to_pylist()[:1]
    positions = example["positions"].filter(pa.array([a == account[0] for a in example["positions"].column("account_id").to_pylist()])) if account else None
    positions = None if positions is None else positions.drop_columns(["account_id"])
    balances: dict[str, float] = {}
    for row in example["balances"].to_pylist():
        if account and row["account_id"] == account[0]:
            balances[row["asset"]] = row["amount"]
    trades = [
        (k, q, None if data.draw(st.booleans()) else marks[k] * data.draw(st.floats(0.9, 1.1)))
        for k, q in data.draw(st.lists(st.tuples(st.sampled_from(keys), st.floats(-5.0, 5.0).filter(lambda x: x != 0.0)), min_size=1, max_size=3))
        if marks[k] > 0.0
    ]
    # linear option premiums settle in a coin (the books may have no quote asset); coin-settled
    # ones in their own coin whatever premium_asset says
    premium_asset = next(a for a in example["assets"].column("asset").to_pylist() if a.startswith("COIN-"))
    got = me.what_if(book, positions, balances, market, trades, model=model, premium_asset=premium_asset)
    want = reference.what_if(ref_book, positions, balances, ref_market, trades, model=model, premium_asset=premium_asset)
    for side in ("before", "after"):
        g, w = getattr(got, side), getattr(want, side)
        for name in ("equity", "collateral_initial", "collateral_maintenance", "initial_margin", "maintenance_margin"):
            assert math.isclose(getattr(g, name), getattr(w, name), rel_tol=1e-9, abs_tol=1e-9), (side, name)
        assert g.status == w.status
    assert math.isclose(got.trade_pnl, want.trade_pnl, rel_tol=1e-9, abs_tol=1e-9)
    assert math.isclose(got.premium, want.premium, rel_tol=1e-9, abs_tol=1e-9)


# --------------------------------------------------------------------------------------------
# Small books
# --------------------------------------------------------------------------------------------

VALUATION = "2020-09-01T00:00:00"


def coin_book(
    rows: list[dict[str, Any]], coin_price: float, *, coin_weight: float = 1.0, tiers: pa.Table | None = None
) -> me.Book:
    """A book of BTC contracts `rows` (inverse unless said otherwise), a BTC coin linked to BTC
    priced `coin_price`, and USD."""
    defaults = {
        "kind": "perpetual", "underlying": "BTC", "multiplier": 1.0, "expiry": None, "strike": None,
        "option_type": None, "initial_margin_rate": 0.01, "maintenance_margin_rate": 0.005,
        "initial_margin_floor": None, "settlement": "inverse", "settlement_asset": "BTC",
    }  # fmt: skip
    full = [{**defaults, **r} for r in rows]
    instruments = pa.table(
        {
            name: pa.array([r[name] for r in full], pa.timestamp("s") if name == "expiry" else None)
            for name in ["instrument", *defaults]
        }
    )
    assets = pa.table(
        {
            "asset": ["USD", "BTC"], "price": [1.0, coin_price], "initial_weight": [1.0, coin_weight],
            "maintenance_weight": [1.0, coin_weight], "initial_liability_weight": [1.0, 1.0],
            "maintenance_liability_weight": [1.0, 1.0], "underlying": [None, "BTC"],
        }
    )  # fmt: skip
    return me.Book(instruments, assets, margin_tiers=tiers)


def coin_market(index: float, marks: dict[str, float], vols: dict[str, float] | None = None) -> me.Market:
    vols = vols or {}
    return me.Market(
        pa.table({"underlying": ["BTC"], "index_price": [index]}),
        pa.table(
            {
                "instrument": list(marks),
                "mark_price": list(marks.values()),
                "implied_vol": pa.array([vols.get(k) for k in marks], pa.float64()),
            }
        ),
        VALUATION,
    )


def positions(rows: list[tuple[int, str, float, float | None]], funding: list[float | None] | None = None) -> pa.Table:
    data: dict[str, Any] = {
        "account_id": pa.array([r[0] for r in rows], pa.uint64()),
        "instrument": [r[1] for r in rows],
        "quantity": [r[2] for r in rows],
        "entry_price": pa.array([r[3] for r in rows], pa.float64()),
    }
    if funding is not None:
        data["unsettled_funding"] = pa.array(funding, pa.float64())
    return pa.table(data)


def balances(rows: list[tuple[int, str, float]]) -> pa.Table:
    return pa.table(
        {
            "account_id": pa.array([r[0] for r in rows], pa.uint64()),
            "asset": [r[1] for r in rows],
            "amount": [r[2] for r in rows],
        }
    )


# --------------------------------------------------------------------------------------------
# Published formulas
# --------------------------------------------------------------------------------------------


def test_bitmex_inverse_pnl_on_its_worked_example():
    """BitMEX, "Inverse Futures Guide" (https://www.bitmex.com/app/inverseFuturesGuide) and
    "Inverse Perpetuals Guide" (https://www.bitmex.com/app/inversePerpetualsGuide): multiplier
    1 USD, "PnL Calculation: # Contracts * Multiplier * (1/Entry Price - 1/Exit Price)", margin
    and P&L in XBT. Their example: long 10 XBT of XBTU20 at 10,000 = 100,000 contracts, the price
    rises to 10,500: profit 100,000 × 1 × (1/10,000 − 1/10,500) = 0.47619... XBT."""
    book = coin_book([{"instrument": "XBTU20", "kind": "future", "expiry": 1_601_020_800}], 10_500.0)
    market = coin_market(10_500.0, {"XBTU20": 10_500.0})
    m = me.margin(book, positions([(1, "XBTU20", 100_000.0, 10_000.0)]), balances([]), market).to_pylist()[0]
    pnl_xbt = 100_000 * 1 * (1 / 10_000 - 1 / 10_500)
    assert math.isclose(m["equity"] / 10_500.0, pnl_xbt, rel_tol=1e-12)
    assert math.isclose(pnl_xbt, 0.476190476190, rel_tol=1e-11)
    # and the short side of the same trade loses exactly that
    m = me.margin(book, positions([(1, "XBTU20", -100_000.0, 10_000.0)]), balances([]), market).to_pylist()[0]
    assert math.isclose(m["equity"] / 10_500.0, -pnl_xbt, rel_tol=1e-12)


def test_binance_coin_m_maintenance_margin_on_its_worked_example():
    """Binance, "How to Calculate Liquidation Price of COIN-M Futures Contracts"
    (https://www.binance.com/en/support/faq/ceccfcfb4e3a45e3b48b0b1bb1a8ae46): "100 BTCUSD
    contracts [contract size 100 USD], mark price 25,000: the position's notional value is
    100 × 100 / 25,000 = 0.4 BTC, in margin level 1 ... Maintenance Margin = 100 × 100 / 25,000 ×
    0.4% − 0 = 0.0016 BTC." Tiers and rates read coin notional."""
    book = coin_book([{"instrument": "BTCUSD_PERP", "multiplier": 100.0, "maintenance_margin_rate": 0.004, "initial_margin_rate": 0.008}], 25_000.0)
    market = coin_market(25_000.0, {"BTCUSD_PERP": 25_000.0})
    m = me.margin(book, positions([(1, "BTCUSD_PERP", 100.0, None)]), balances([(1, "BTC", 1.0)]), market).to_pylist()[0]
    assert math.isclose(m["maintenance_margin"] / 25_000.0, 0.0016, rel_tol=1e-12)
    g = me.greeks(book, positions([(1, "BTCUSD_PERP", 100.0, None)]), market).to_pylist()[0]
    assert math.isclose(g["long_notional"] / 25_000.0, 0.4, rel_tol=1e-12)  # the 0.4 BTC notional
    assert math.isclose(g["delta"], 0.4, rel_tol=1e-12)  # in coins: 0.4 BTC of exposure


def test_binance_coin_m_maintenance_amount_of_a_bracket():
    """Same page: "Maintenance Amount on Level n = Floor of Position Bracket on Level n ×
    (MMR on Level n − MMR on Level n−1) + Maintenance Amount on Level n−1; for example, the
    BTCUSD Maintenance Amount on Level 5 = 50 BTC × (5% − 2.5%) + 0.56 BTC = 1.81 BTC".
    An inverse contract's `margin_tiers` floors are coin notionals with this continuity rule: a
    schedule whose 2.5% bracket carries a maintenance amount of 0.56 BTC (from 28 BTC, 0.5% below)
    and a 5% bracket from 50 BTC charges a 60 BTC position 60 × 5% − 1.81 BTC."""
    tiers = pa.table(
        {
            "instrument": ["BTCUSD_PERP"] * 3,
            "notional_floor": [0.0, 28.0, 50.0],
            "initial_margin_rate": [0.01, 0.05, 0.10],
            "maintenance_margin_rate": [0.005, 0.025, 0.05],
        }
    )
    assert math.isclose(28.0 * (0.025 - 0.005), 0.56, rel_tol=1e-12)
    book = coin_book([{"instrument": "BTCUSD_PERP", "multiplier": 100.0}], 25_000.0, tiers=tiers)
    market = coin_market(25_000.0, {"BTCUSD_PERP": 25_000.0})
    contracts = 60.0 * 25_000.0 / 100.0  # 60 BTC of notional
    m = me.margin(book, positions([(1, "BTCUSD_PERP", contracts, None)]), balances([(1, "BTC", 10.0)]), market).to_pylist()[0]
    assert math.isclose(50.0 * (0.05 - 0.025) + 0.56, 1.81, rel_tol=1e-12)
    assert math.isclose(m["maintenance_margin"] / 25_000.0, 60.0 * 0.05 - 1.81, rel_tol=1e-12)


def coin_m_liquidation_price(wallet: float, contracts: float, size: float, entry: float, mmr: float, cum: float = 0.0) -> float:
    """Binance's COIN-M liquidation price for one position in one-way mode (same page; cross
    margin with TMM = UPNL = 0, or isolated): `LP = (|Q| × CS × MMR + Side × |Q| × CS) /
    (WB + cum + Side × |Q| × CS / EP)`. It is our rule solved: coin equity
    `WB + q × CS × (1/EP − 1/P)` equals coin maintenance `|q| × CS / P × MMR − cum`."""
    side = 1.0 if contracts > 0 else -1.0
    q = abs(contracts)
    return (q * size * mmr + side * q * size) / (wallet + cum + side * q * size / entry)


@pytest.mark.parametrize(
    ("wallet", "contracts", "entry"),
    [(1.0, 100_000.0, 50_000.0), (0.5, 30_000.0, 48_000.0), (1.0, -150_000.0, 50_000.0), (0.2, -46_500.0, 51_000.0)],
)
def test_inverse_liquidation_price_is_the_coin_m_formula(wallet, contracts, entry):
    """The distance walk's liquidation price of a one-position coin-margined account equals the
    COIN-M closed form (Binance, "How to Calculate Liquidation Price of COIN-M Futures
    Contracts"; BitMEX and Deribit liquidate where the coin equity meets maintenance, the same
    equation). The walk interpolates linearly, and an inverse account's USD excess is linear in
    the price when its coin moves with the index, so it lands on the root."""
    mark = 50_000.0
    book = coin_book([{"instrument": "BTC-PERPETUAL", "multiplier": 10.0}], mark)
    market = coin_market(mark, {"BTC-PERPETUAL": mark})
    pos = positions([(7, "BTC-PERPETUAL", contracts / 10.0, entry)])
    bal = balances([(7, "BTC", wallet)])
    want = coin_m_liquidation_price(wallet, contracts / 10.0, 10.0, entry, 0.005)
    d = me.liquidation_distance(book, pos, bal, market).to_pylist()[0]
    got = d["liquidation_price_down"] if contracts > 0 else d["liquidation_price_up"]
    assert got is not None and math.isclose(got, want, rel_tol=1e-9), (got, want)


def test_deribit_coin_settled_option_margin_in_btc():
    """Deribit's standard margin for BTC (coin-settled) options, in BTC per contract of 1 BTC, as
    its knowledge base states it (quoted in "Deribit Margin Requirements Calculation",
    https://doc.tslab.pro/tslab/eng/data-providers/connection-to-broker/deribit-cryptocurrency-exchange/deribit-margin-requirements-calculation):
    short call IM = max(0.15 − OTM amount / underlying mark price, 0.1) + mark price of the
    option, MM = 0.075 + mark price; short put IM = max(max(0.15 − OTM/S, 0.1) + mark, MM),
    MM = max(0.075, 0.075 × mark) + mark (the same numbers for marks <= 1 BTC)."""
    s = 50_000.0
    rows = [
        {"instrument": "BTC-25SEP20-55000-C", "kind": "option", "strike": 55_000.0, "option_type": "call"},
        {"instrument": "BTC-25SEP20-52000-C", "kind": "option", "strike": 52_000.0, "option_type": "call"},
        {"instrument": "BTC-25SEP20-40000-P", "kind": "option", "strike": 40_000.0, "option_type": "put"},
        {"instrument": "BTC-25SEP20-60000-P", "kind": "option", "strike": 60_000.0, "option_type": "put"},
    ]
    for r in rows:
        r.update(expiry=1_601_020_800, initial_margin_rate=0.15, maintenance_margin_rate=0.075, initial_margin_floor=0.10)
    marks = {"BTC-25SEP20-55000-C": 0.0213, "BTC-25SEP20-52000-C": 0.034, "BTC-25SEP20-40000-P": 0.0051, "BTC-25SEP20-60000-P": 0.2105}
    book = coin_book(rows, s)
    market = coin_market(s, marks, {k: 0.7 for k in marks})
    for r in rows:
        k, strike = r["instrument"], r["strike"]
        otm = max(strike - s, 0.0) if r["option_type"] == "call" else max(s - strike, 0.0)
        im_btc = max(0.15 - otm / s, 0.1) + marks[k]
        mm_btc = 0.075 + marks[k]
        if r["option_type"] == "put":
            mm_btc = max(0.075, 0.075 * marks[k]) + marks[k]
            im_btc = max(max(0.15 - otm / s, 0.1) + marks[k], mm_btc)
        m = me.margin(book, positions([(1, k, -3.0, None)]), balances([(1, "BTC", 5.0)]), market).to_pylist()[0]
        assert math.isclose(m["initial_margin"] / s, 3 * im_btc, rel_tol=1e-12), k
        assert math.isclose(m["maintenance_margin"] / s, 3 * mm_btc, rel_tol=1e-12), k
        # the short option's coin value, −3 × mark BTC, is in equity at the coin's price
        assert math.isclose(m["equity"], (5.0 - 3 * marks[k]) * s, rel_tol=1e-12), k


# --------------------------------------------------------------------------------------------
# Properties and rules
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("move", [-0.5, -0.2, 0.0, 0.1, 0.4, 2.0])
def test_a_coin_hedged_short_keeps_its_usd_value(model, move):
    """1 BTC held and short 50,000 USD of inverse contracts entered at 50,000: the USD value is
    locked, under any move the coin collateral and the inverse P&L move together."""
    book = coin_book([{"instrument": "XBTUSD"}], 50_000.0)
    market = coin_market(50_000.0, {"XBTUSD": 50_000.0})
    scan = me.liquidation_scan(
        book, positions([(1, "XBTUSD", -50_000.0, 50_000.0)]), balances([(1, "BTC", 1.0)]), market,
        model=model, stress={"BTC": move},
    ).to_pylist()[0]  # fmt: skip
    assert math.isclose(scan["equity"], 50_000.0, rel_tol=1e-12)


def test_stress_moves_coin_settled_option_marks_in_coin():
    """A coin-settled option's mark under a move: its USD value `mark × S` moved by Black-76,
    converted back to coin at the moved index: `max(0, mark × S + B76(S') − B76(S)) / S'`."""
    rows = [{"instrument": "C", "kind": "option", "strike": 55_000.0, "option_type": "call", "expiry": 1_601_020_800,
             "initial_margin_rate": 0.15, "maintenance_margin_rate": 0.075, "initial_margin_floor": 0.1}]  # fmt: skip
    s, mark, vol = 50_000.0, 0.02, 0.7
    book = coin_book(rows, s)
    market = coin_market(s, {"C": mark}, {"C": vol})
    t = (1_601_020_800 - 1_598_918_400) / 31_536_000
    before = float(me.black76(s, 55_000.0, t, vol, "call").price)
    after = float(me.black76(s * 1.1, 55_000.0, t, vol, "call").price)
    moved_mark = max(0.0, mark * s + after - before) / (s * 1.1)
    got = me.liquidation_scan(book, positions([(1, "C", 1.0, None)]), balances([]), market, stress={"BTC": 0.1}).to_pylist()[0]
    assert math.isclose(got["equity"], moved_mark * s * 1.1, rel_tol=1e-12)


def test_unsettled_funding_is_pnl_not_requirement():
    """`unsettled_funding` (USD) is added to equity and both collateral sums, nulls are 0, and
    the requirements do not move; on a position netted to 0 it still counts."""
    book = coin_book([{"instrument": "XBTUSD"}, {"instrument": "BTC-USD", "settlement": "linear", "settlement_asset": None}], 50_000.0)
    market = coin_market(50_000.0, {"XBTUSD": 50_000.0, "BTC-USD": 50_000.0})
    rows = [(1, "XBTUSD", 10_000.0, None), (1, "BTC-USD", 1.0, None), (1, "BTC-USD", -1.0, None), (2, "XBTUSD", 5.0, None)]
    bal = balances([(1, "USD", 1_000.0), (2, "USD", 10.0)])
    plain = me.margin(book, positions(rows), bal, market).to_pylist()
    funded = me.margin(book, positions(rows, [-12.5, 3.0, 0.25, None]), bal, market).to_pylist()
    assert math.isclose(funded[0]["equity"], plain[0]["equity"] - 12.5 + 3.25, rel_tol=1e-12)
    assert math.isclose(funded[0]["collateral_maintenance"], plain[0]["collateral_maintenance"] - 9.25, rel_tol=1e-12)
    for a, b in zip(plain, funded, strict=True):
        assert (a["initial_margin"], a["maintenance_margin"]) == (b["initial_margin"], b["maintenance_margin"])
    assert funded[1] == plain[1]  # a null is 0


# --------------------------------------------------------------------------------------------
# Bad input and refusals
# --------------------------------------------------------------------------------------------


def _instruments(**columns: list[Any]) -> pa.Table:
    base: dict[str, Any] = {
        "instrument": ["XBTUSD"], "kind": ["perpetual"], "underlying": ["BTC"], "multiplier": [1.0],
        "initial_margin_rate": [0.01], "maintenance_margin_rate": [0.005],
    }  # fmt: skip
    base.update(columns)
    return pa.table(base)


ASSETS = pa.table(
    {
        "asset": ["USD", "BTC", "ETH"], "price": [1.0, 50_000.0, 3_000.0], "initial_weight": [1.0] * 3,
        "maintenance_weight": [1.0] * 3, "initial_liability_weight": [1.0] * 3,
        "maintenance_liability_weight": [1.0] * 3, "underlying": [None, "BTC", "ETH"],
    }
)  # fmt: skip


@pytest.mark.parametrize(
    ("columns", "column", "words"),
    [
        ({"settlement": ["coin"]}, "settlement", "'linear' or 'inverse'"),
        ({"settlement": ["inverse"]}, "settlement_asset", "need a settlement_asset"),
        ({"settlement": ["inverse"], "settlement_asset": [None]}, "settlement_asset", "need a settlement_asset"),
        ({"settlement": ["inverse"], "settlement_asset": ["DOGE"]}, "settlement_asset", "not a key of assets"),
        ({"settlement": ["inverse"], "settlement_asset": ["ETH"]}, "settlement_asset", "linked"),
        ({"settlement": ["inverse"], "settlement_asset": ["USD"]}, "settlement_asset", "linked"),
    ],
)
def test_bad_settlement_columns(columns, column, words):
    with pytest.raises(me.MarginInputError, match=rf"instruments\.{column}.*{words}") as e:
        me.Book(_instruments(**columns), ASSETS)
    assert "XBTUSD" in str(e.value)


def test_inverse_prices_must_be_positive_and_funding_finite():
    book = me.Book(_instruments(settlement=["inverse"], settlement_asset=["BTC"]), ASSETS)
    market = coin_market(50_000.0, {"XBTUSD": 50_000.0})
    with pytest.raises(me.MarginInputError, match=r"positions\.entry_price.*> 0.*row 1"):
        me.margin(book, positions([(1, "XBTUSD", 1.0, 50_000.0), (1, "XBTUSD", 1.0, 0.0)]), balances([]), market)
    with pytest.raises(me.MarginInputError, match=r"marks\.mark_price.*> 0.*XBTUSD"):
        me.margin(book, positions([(1, "XBTUSD", 1.0, None)]), balances([]), coin_market(50_000.0, {"XBTUSD": 0.0}))
    with pytest.raises(me.MarginInputError, match=r"positions\.unsettled_funding"):
        me.margin(book, positions([(1, "XBTUSD", 1.0, None)], [math.nan]), balances([]), market)
    with pytest.raises(me.MarginInputError, match=r"trades\.price.*> 0"):
        me.what_if(book, None, {"BTC": 1.0}, market, [("XBTUSD", 1.0, 0.0)])


def test_functions_that_cannot_honour_inverse_contracts_refuse():
    book = me.Book(_instruments(settlement=["inverse"], settlement_asset=["BTC"]), ASSETS)
    market = coin_market(50_000.0, {"XBTUSD": 50_000.0})
    pos, bal = positions([(1, "XBTUSD", -60_000.0, 50_000.0)]), balances([(1, "BTC", 0.01)])
    with pytest.raises(me.MarginInputError, match=r"positions\.instrument.*liquidation_plan.*inverse.*XBTUSD"):
        me.liquidation_plan(book, pos, bal, market)
    with pytest.raises(me.MarginInputError, match=r"optimal_hedge.*inverse"):
        me.optimal_hedge(book, pos, bal, market, ["XBTUSD"])
    with pytest.raises(me.MarginInputError, match=r"LiveBook.*inverse"):
        me.LiveBook(book, market, pos, bal)
    for preset in ("derive_pmrm2", "derive_standard", "exchange"):
        with pytest.raises(me.MarginInputError, match=r"instruments\.settlement.*methodology.*inverse"):
            me.Book(_instruments(settlement=["inverse"], settlement_asset=["BTC"]), ASSETS, methodology=preset)


def test_functions_that_cannot_honour_funding_refuse():
    book = me.Book(_instruments(), ASSETS)
    market = coin_market(50_000.0, {"XBTUSD": 50_000.0})
    pos, bal = positions([(1, "XBTUSD", 1.0, None)], [5.0]), balances([(1, "USD", 100.0)])
    with pytest.raises(me.MarginInputError, match=r"LiveBook.*unsettled_funding"):
        me.LiveBook(book, market, pos, bal)
    with pytest.raises(me.MarginInputError, match=r"what_if.*unsettled_funding"):
        me.what_if(book, pos.drop_columns(["account_id"]), {"USD": 100.0}, market, [("XBTUSD", 1.0)])


def test_absent_columns_change_nothing():
    """`settlement` all linear (or null) and `unsettled_funding` all null: the same bits."""
    book = me.Book(_instruments(), ASSETS)
    linear = me.Book(_instruments(settlement=["linear"], settlement_asset=[None]), ASSETS)
    market = coin_market(50_000.0, {"XBTUSD": 50_500.0})
    pos, bal = positions([(1, "XBTUSD", 2.0, 49_000.0)]), balances([(1, "USD", 1_000.0)])
    want = me.margin(book, pos, bal, market)
    assert me.margin(linear, pos, bal, market).equals(want)
    assert me.margin(book, positions([(1, "XBTUSD", 2.0, 49_000.0)], [None]), bal, market).equals(want)


def test_what_if_of_inverse_trades_is_margin_with_the_trade_rows():
    """An inverse perpetual bought at `price` is the row `(quantity, entry = price)`; a
    coin-settled option bought at `price` pays `quantity × mult × price` coins out of the
    account's settlement-coin balance and holds the option at its mark."""
    rows = [{"instrument": "XBTUSD"},
            {"instrument": "C", "kind": "option", "strike": 55_000.0, "option_type": "call", "expiry": 1_601_020_800,
             "initial_margin_rate": 0.15, "maintenance_margin_rate": 0.075, "initial_margin_floor": 0.1}]  # fmt: skip
    book = coin_book(rows, 50_100.0)
    market = coin_market(50_000.0, {"XBTUSD": 50_200.0, "C": 0.02}, {"C": 0.7})
    w = me.what_if(book, None, {"BTC": 2.0}, market, [("XBTUSD", 30_000.0, 49_900.0), ("C", -4.0, 0.021)])
    m = me.margin(
        book, positions([(0, "XBTUSD", 30_000.0, 49_900.0), (0, "C", -4.0, None)]), balances([(0, "BTC", 2.0 + 4 * 0.021)]), market
    ).to_pylist()[0]
    for name in ("equity", "collateral_initial", "collateral_maintenance", "initial_margin", "maintenance_margin"):
        assert math.isclose(getattr(w.after, name), m[name], rel_tol=1e-12), name
    assert math.isclose(w.premium, 4 * 0.021 * 50_100.0, rel_tol=1e-12)
    assert math.isclose(w.trade_pnl, (30_000.0 * (1 / 49_900.0 - 1 / 50_200.0) - 4 * (0.02 - 0.021)) * 50_100.0, rel_tol=1e-12)
