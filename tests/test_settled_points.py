"""The methodology points settled this turn that change behaviour, and the silent-error findings
of the adversarial run that live in the core: each test names its point or finding and fails on
the code before it.

- market data may cover more than the book (settled point 7);
- the status boundary tolerance (point 8);
- null entry prices mean "P&L settled" for that row (point 11);
- a perpetual-only book needs no `expiry` column;
- `me.black76` validates its inputs;
- a subnormal index price is not blamed on `positions.quantity`.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pytest

import margin_engine as me
from margin_engine import reference

VALUATION = 1_700_000_000_000_000_000


def _book(expiry_column: bool = True):
    cols = {
        "instrument": ["BTC-PERP", "BTC-C-60000"], "kind": ["perpetual", "option"], "underlying": ["BTC", "BTC"],
        "multiplier": [1.0, 1.0],
        "strike": [None, 60_000.0], "option_type": [None, "call"],
        "initial_margin_rate": [0.02, 0.15], "maintenance_margin_rate": [0.01, 0.075], "initial_margin_floor": [None, 0.1],
    }  # fmt: skip
    if expiry_column:
        cols["expiry"] = pa.array([None, VALUATION + 30 * 86_400 * 10**9], pa.timestamp("ns", "UTC"))
    assets = pa.table({
        "asset": ["USD"], "price": [1.0], "initial_weight": [1.0], "maintenance_weight": [1.0],
        "initial_liability_weight": [1.0], "maintenance_liability_weight": [1.0],
    })  # fmt: skip
    return me.Book(pa.table(cols), assets)


def _market(extra: bool = False, index: float = 50_000.0):
    underlyings, prices = ["BTC"], [index]
    instruments, marks, vols = ["BTC-PERP", "BTC-C-60000"], [50_000.0, 1_000.0], [None, 0.6]
    if extra:  # an exchange-wide feed: underlyings and instruments this book does not know
        underlyings, prices = ["ETH", "BTC", "SOL"], [3_000.0, index, 150.0]
        instruments, marks, vols = ["ETH-PERP", *instruments, "SOL-C-200"], [3_000.0, *marks, 5.0], [None, *vols, 0.9]
    return me.Market(
        pa.table({"underlying": underlyings, "index_price": prices}),
        pa.table({"instrument": instruments, "mark_price": marks, "implied_vol": vols}),
        VALUATION,
    )


def _tables(quantity=(1.0,), instruments=("BTC-PERP",), usd=2_000.0, entry=None):
    n = len(quantity)
    cols = {"account_id": pa.array([1] * n, pa.uint64()), "instrument": list(instruments), "quantity": list(quantity)}
    if entry is not None:
        cols["entry_price"] = pa.array(entry, pa.float64())
    balances = pa.table({"account_id": pa.array([1], pa.uint64()), "asset": ["USD"], "amount": [usd]})
    return pa.table(cols), balances


# --------------------------------------------------------------------------------------------
# point 7: market data may cover more than the book
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["standard", "portfolio"])
def test_market_covering_more_than_the_book_is_ignored_not_an_error(model):
    book = _book()
    positions, balances = _tables((1.0, -2.0), ("BTC-PERP", "BTC-C-60000"))
    narrow = me.margin(book, positions, balances, _market(), model=model)
    wide = me.margin(book, positions, balances, _market(extra=True), model=model)
    assert wide.equals(narrow)
    assert reference.margin(book, positions, balances, _market(extra=True), model=model).to_pylist() == narrow.to_pylist()
    trade = ({"BTC-PERP": 1.0, "BTC-C-60000": -2.0}, {"USD": 2_000.0})
    wide_w = me.what_if(book, *trade, _market(extra=True), [("BTC-PERP", 1.0)], model=model)
    narrow_w = me.what_if(book, *trade, _market(), [("BTC-PERP", 1.0)], model=model)
    assert wide_w.before.initial_margin == narrow.column("initial_margin")[0].as_py()
    assert (wide_w.after.initial_margin, wide_w.after.equity) == (narrow_w.after.initial_margin, narrow_w.after.equity)


def test_a_held_instrument_without_a_mark_is_still_an_error():
    book = _book()
    market = me.Market(
        pa.table({"underlying": ["BTC", "ETH"], "index_price": [50_000.0, 3_000.0]}),
        pa.table({"instrument": ["BTC-PERP", "ETH-PERP"], "mark_price": [50_000.0, 3_000.0]}),
        VALUATION,
    )
    positions, balances = _tables((1.0,), ("BTC-C-60000",))
    with pytest.raises(me.MarginInputError, match="no mark for an instrument that positions hold") as e:
        me.margin(book, positions, balances, market)
    assert (e.value.table, e.value.column) == ("marks", "instrument")


# --------------------------------------------------------------------------------------------
# point 8: status at the boundary
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shortfall", "status"),
    [
        (0.0, "margin_call"),  # exactly at maintenance: meets it
        (5e-7, "margin_call"),  # 1e-9 × MM = 5e-7 below maintenance: within the tolerance
        (1e-5, "liquidatable"),  # 2e-8 × MM below: liquidatable
    ],
)
def test_status_tolerance_at_maintenance(shortfall, status):
    """One perp long (MM = 1% of 50,000 = 500; IM = 1,000): collateral 500 − shortfall meets
    maintenance when within 1e-9 × max(1, MM) of it; engine and reference agree."""
    book, market = _book(), _market()
    positions, balances = _tables((1.0,), ("BTC-PERP",), usd=500.0 - shortfall)
    got = me.margin(book, positions, balances, market).to_pylist()[0]
    assert got["maintenance_margin"] == 500.0
    assert got["status"] == status
    assert reference.margin(book, positions, balances, market).to_pylist()[0]["status"] == status
    scan = me.liquidation_scan(book, positions, balances, market).to_pylist()[0]
    assert scan["status"] == status
    plan = me.liquidation_plan(book, positions, balances, market)
    assert plan.accounts.num_rows == (status == "liquidatable")


def test_status_tolerance_is_relative_to_at_least_one_dollar():
    """Below an MM of 1 the tolerance is 1e-9 absolute: MM = 1e-3 (a tiny perp) and collateral
    1e-3 − 5e-10 still meets it; 1e-3 − 2e-9 does not."""
    book, market = _book(), _market()
    for usd, status in ((1e-3 - 5e-10, "margin_call"), (1e-3 - 2e-9, "liquidatable")):
        positions, balances = _tables((1e-3 / 500.0,), ("BTC-PERP",), usd=usd)
        row = me.margin(book, positions, balances, market).to_pylist()[0]
        assert math.isclose(row["maintenance_margin"], 1e-3, rel_tol=1e-12)
        assert row["status"] == status, (usd, row)


# --------------------------------------------------------------------------------------------
# point 11: null entry prices
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["standard", "portfolio"])
def test_null_entry_price_means_settled(model):
    """Rows 1 @ 40,000 and 1 @ null: only the first carries P&L (10,000); the second is as if
    the column were absent for it. Before, a null entry price was rejected."""
    book, market = _book(), _market()
    positions, balances = _tables((1.0, 1.0), ("BTC-PERP", "BTC-PERP"), entry=[40_000.0, None])
    row = me.margin(book, positions, balances, market, model=model).to_pylist()[0]
    assert row["equity"] == 12_000.0
    assert reference.margin(book, positions, balances, market, model=model).to_pylist() == [row]
    nan = pa.table({**{c: positions.column(c) for c in ("account_id", "instrument", "quantity")}, "entry_price": [40_000.0, float("nan")]})
    with pytest.raises(me.MarginInputError, match="entry_price"):
        me.margin(book, nan, balances, market)


# --------------------------------------------------------------------------------------------
# a perpetual-only book needs no expiry column
# --------------------------------------------------------------------------------------------


def _one_linear_contract(kind: str):
    """A book of one linear contract of `kind` and no `expiry` column."""
    instruments = pa.table({
        "instrument": ["BTC-PERP" if kind == "perpetual" else "BTC-FUT"], "kind": [kind], "underlying": ["BTC"], "multiplier": [1.0],
        "initial_margin_rate": [0.02], "maintenance_margin_rate": [0.01],
    })  # fmt: skip
    assets = pa.table({
        "asset": ["USD"], "price": [1.0], "initial_weight": [1.0], "maintenance_weight": [1.0],
        "initial_liability_weight": [1.0], "maintenance_liability_weight": [1.0],
    })  # fmt: skip
    return me.Book(instruments, assets)


def test_perpetual_only_book_needs_no_expiry_column():
    book = _one_linear_contract("perpetual")
    positions, balances = _tables()
    row = me.margin(book, positions, balances, _market()).to_pylist()[0]
    assert row["initial_margin"] == 1_000.0
    assert reference.margin(book, positions, balances, _market()).to_pylist() == [row]


def test_a_future_without_an_expiry_column_names_the_column():
    with pytest.raises(me.MarginInputError, match="futures and options need an expiry") as e:
        _one_linear_contract("future")
    assert e.value.column == "expiry" and e.value.offenders == ["'BTC-FUT'"]


# --------------------------------------------------------------------------------------------
# me.black76 validates its inputs
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argument", "value"),
    [
        ("forward", float("nan")), ("forward", 0.0), ("forward", -1.0), ("forward", float("inf")),
        ("strike", 0.0), ("strike", float("nan")), ("strike", -5.0),
        ("time", float("inf")), ("time", float("nan")),
        ("vol", 0.0), ("vol", -0.2), ("vol", float("nan")),
    ],
)  # fmt: skip
def test_black76_rejects_bad_inputs(argument, value):
    """Before: NaN/inf came back as NaN/inf, zero or negative inputs as a silent price of 0."""
    args = {"forward": [100.0, 100.0], "strike": [100.0, 100.0], "time": [1.0, 1.0], "vol": [0.2, 0.2]}
    args[argument] = [100.0 if argument in ("forward", "strike") else (1.0 if argument == "time" else 0.2), value]
    with pytest.raises(me.MarginInputError) as e:
        me.black76(args["forward"], args["strike"], args["time"], args["vol"], True)
    assert (e.value.table, e.value.column) == ("black76", argument)
    assert len(e.value.offenders) == 1 and e.value.offenders[0].startswith("row 1 = ")


def test_black76_at_or_after_expiry_is_allowed():
    out = me.black76(np.array([120.0, 80.0, 120.0]), 100.0, np.array([0.0, 0.0, -0.5]), 0.5, True)
    assert out.price.tolist() == [20.0, 0.0, 20.0]


# --------------------------------------------------------------------------------------------
# a subnormal index price
# --------------------------------------------------------------------------------------------


def test_subnormal_index_price_is_not_blamed_on_quantity():
    """A subnormal index price (5e-324 passes `> 0`) used to surface as an overflow "values too
    large" on `positions.quantity`; it is bad market data and is named as such, when the market
    is built. (Asset prices likewise; marks may underflow.)"""
    with pytest.raises(me.MarginInputError) as e:
        _market(index=5e-324)
    assert (e.value.table, e.value.column) == ("index_prices", "index_price")
    assert e.value.offenders == ["'BTC' = 5e-324"]
    # a mark may underflow (a deep out-of-the-money option): accepted, and worth ~0
    me.Market(
        pa.table({"underlying": ["BTC"], "index_price": [50_000.0]}),
        pa.table({"instrument": ["BTC-PERP"], "mark_price": [1e-310]}),
        VALUATION,
    )
