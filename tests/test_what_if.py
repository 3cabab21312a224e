"""What-if margin (order entry): engine against reference, against the bulk `margin` run, input
forms, and bad input."""

from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from conftest import close, engine_objects
from hypothesis import given
from hypothesis import strategies as st
from strategies import books

import margin_engine as me
from margin_engine import reference

FIELDS = [
    "equity", "collateral_initial", "collateral_maintenance", "initial_margin", "maintenance_margin",
    "free_collateral", "margin_excess", "health", "status",
]  # fmt: skip


def _account_rows(example, account):
    pos = example["positions"]
    pos = pos.filter(pc.equal(pos.column("account_id"), pa.scalar(account, pos.schema.field("account_id").type)))
    bal = example["balances"]
    bal = bal.filter(pc.equal(bal.column("account_id"), pa.scalar(account, bal.schema.field("account_id").type)))
    entries = pos.column("entry_price").to_pylist() if "entry_price" in pos.column_names else [None] * pos.num_rows
    positions = list(zip(pos.column("instrument").to_pylist(), pos.column("quantity").to_pylist(), entries))
    balances = dict(zip(bal.column("asset").to_pylist(), bal.column("amount").to_pylist()))
    return positions, balances


@st.composite
def what_if_cases(draw):
    example = draw(books(max_accounts=6))
    accounts = sorted(set(example["positions"].column("account_id").to_pylist()) | set(example["balances"].column("account_id").to_pylist()))
    account = draw(st.sampled_from(accounts)) if accounts else None
    marked = example["marks"].column("instrument").to_pylist()
    trade = st.tuples(
        st.sampled_from(marked),
        st.one_of(st.floats(-50, 50, allow_nan=False).filter(lambda q: q != 0.0), st.sampled_from([1.0, -1.0])),
        st.one_of(st.none(), st.floats(0, 1e6, allow_nan=False)),
    )
    trades = draw(st.lists(trade, max_size=4))
    return example, account, trades


def _assert_account_close(got, want, scale):
    for name in FIELDS:
        g, w = getattr(got, name), getattr(want, name)
        if isinstance(w, str) or w is None:
            assert g == w, (name, g, w)
        else:
            assert close(g, w, abs_=1e-9 * scale), (name, g, w)


@pytest.mark.parametrize("model", ["standard", "portfolio"])
@given(case=what_if_cases())
def test_what_if_matches_reference(model, case):
    example, account, trades = case
    book, market = engine_objects(example)
    positions, balances = _account_rows(example, account) if account is not None else ([], {})
    try:
        got = me.what_if(book, positions, balances, market, trades, model=model)
    except me.MarginInputError as e:
        # an option premium without a quote asset to settle in: the reference refuses it too
        assert "quote asset" in str(e)
        with pytest.raises(ValueError, match="quote asset"):
            reference.what_if(book, positions, balances, market, trades, model=model)
        return
    want = reference.what_if(book, positions, balances, market, trades, model=model)
    scale = 1.0 + sum(abs(getattr(want.before, f)) + abs(getattr(want.after, f)) for f in ("equity", "initial_margin", "maintenance_margin"))
    _assert_account_close(got.before, want.before, scale)
    _assert_account_close(got.after, want.after, scale)
    assert close(got.trade_pnl, want.trade_pnl, abs_=1e-9 * scale)
    assert close(got.premium, want.premium, abs_=1e-9 * scale)
    assert close(got.initial_margin_change, want.initial_margin_change, abs_=1e-9 * scale)
    assert close(got.maintenance_margin_change, want.maintenance_margin_change, abs_=1e-9 * scale)
    assert got.accepted == want.accepted


@pytest.mark.parametrize("model", ["standard", "portfolio"])
@given(case=what_if_cases())
def test_what_if_equals_the_bulk_margin_run(model, case):
    """Before = the account's row of `margin`; after (linear trades at the mark) = `margin` with
    the trade rows appended: bit for bit, the same code on the same numbers in the same order.
    (Option trades move cash by their premium: tests/test_what_if_vs_margin.py books it.)"""
    example, account, trades = case
    if account is None:
        return
    ins = example["instruments"]
    options = {k for k, kind in zip(ins.column("instrument").to_pylist(), ins.column("kind").to_pylist()) if kind == "option"}
    trades = [(k, q) for k, q, _ in trades if k not in options]
    book, market = engine_objects(example)
    positions, balances = _account_rows(example, account)
    got = me.what_if(book, positions, balances, market, trades, model=model)

    def bulk(rows):
        with_entry = "entry_price" in example["positions"].column_names
        cols = {
            "account_id": pa.array([account] * len(rows), pa.uint64()),
            "instrument": pa.array([r[0] for r in rows], example["positions"].schema.field("instrument").type),
            "quantity": pa.array([r[1] for r in rows], pa.float64()),
        }
        if with_entry:
            marks = dict(zip(example["marks"].column("instrument").to_pylist(), example["marks"].column("mark_price").to_pylist()))
            cols["entry_price"] = pa.array([r[2] if len(r) > 2 and r[2] is not None else marks[r[0]] for r in rows], pa.float64())
        bal = pa.table({
            "account_id": pa.array([account] * len(balances), pa.uint64()),
            "asset": pa.array(list(balances), example["balances"].schema.field("asset").type),
            "amount": pa.array(list(balances.values()), pa.float64()),
        })
        return me.margin(book, pa.table(cols), bal, market, model=model).to_pylist()[0]

    before = bulk(positions)
    after = bulk(positions + trades)
    for name in FIELDS:
        assert getattr(got.before, name) == before[name], name
        assert getattr(got.after, name) == after[name], name


@pytest.fixture(scope="module")
def perp_book():
    instruments = pa.table({
        "instrument": ["BTC-PERP", "BTC-C-60000"], "kind": ["perpetual", "option"], "underlying": ["BTC", "BTC"],
        "multiplier": [1.0, 1.0], "expiry": pa.array([None, 1_800_000_000_000_000_000], pa.timestamp("ns", "UTC")),
        "strike": [None, 60_000.0], "option_type": [None, "call"],
        "initial_margin_rate": [0.02, 0.15], "maintenance_margin_rate": [0.01, 0.075], "initial_margin_floor": [None, 0.1],
    })  # fmt: skip
    assets = pa.table({
        "asset": ["USD", "BTC"], "price": [1.0, 50_000.0], "initial_weight": [1.0, 0.9], "maintenance_weight": [1.0, 0.95],
        "initial_liability_weight": [1.0, 1.1], "maintenance_liability_weight": [1.0, 1.05],
    })  # fmt: skip
    book = me.Book(instruments, assets)
    market = me.Market(
        pa.table({"underlying": ["BTC"], "index_price": [50_000.0]}),
        pa.table({"instrument": ["BTC-PERP", "BTC-C-60000"], "mark_price": [50_000.0, 1_000.0], "implied_vol": [None, 0.6]}),
        1_700_000_000_000_000_000,
    )
    return book, market


def test_hand_worked_perpetual(perp_book):
    book, market = perp_book
    # 1 BTC long perp, 2,000 USD: IM 1,000 → buying 1 more at 49,000 adds 1,000 of IM and
    # realizes 1 × (50,000 − 49,000) = 1,000 of value
    w = me.what_if(book, {"BTC-PERP": 1.0}, {"USD": 2_000.0}, market, [("BTC-PERP", 1.0, 49_000.0)])
    assert (w.before.initial_margin, w.after.initial_margin) == (1_000.0, 2_000.0)
    assert w.trade_pnl == 1_000.0
    assert (w.before.equity, w.after.equity) == (2_000.0, 3_000.0)
    assert w.after.free_collateral == 1_000.0 and w.accepted
    assert w.initial_margin_change == 1_000.0 and w.maintenance_margin_change == 500.0
    # 1.5 more: IM 2,500 > 2,000 → rejected; closing half instead reduces risk → accepted
    assert not me.what_if(book, {"BTC-PERP": 1.0}, {"USD": 1_000.0}, market, {"BTC-PERP": 1.5}).accepted
    assert me.what_if(book, {"BTC-PERP": 1.0}, {"USD": 400.0}, market, {"BTC-PERP": -0.5}).accepted


def test_input_forms_agree(perp_book):
    book, market = perp_book
    rows = [("BTC-PERP", 2.0, 48_000.0), ("BTC-C-60000", -3.0, None)]
    table = pa.table({"account_id": [7, 7], "instrument": ["BTC-PERP", "BTC-C-60000"], "quantity": [2.0, -3.0], "entry_price": [48_000.0, None]})
    balances = pa.table({"asset": ["USD", "BTC"], "amount": [5_000.0, -0.1]})
    trades = pa.table({"instrument": ["BTC-C-60000"], "quantity": [1.0], "price": [900.0]})
    a = me.what_if(book, rows, {"USD": 5_000.0, "BTC": -0.1}, market, [("BTC-C-60000", 1.0, 900.0)], model="portfolio")
    b = me.what_if(book, table, balances, market, trades, model="portfolio")
    c = me.what_if(book, tuple(list(r) for r in rows), [("USD", 5_000.0), ("BTC", -0.1)], market, trades, model="portfolio")
    for other in (b, c):
        for name in FIELDS:
            assert getattr(a.before, name) == getattr(other.before, name)
            assert getattr(a.after, name) == getattr(other.after, name)
    assert a.trade_pnl == 100.0
    empty = me.what_if(book, None, None, market, None)
    assert empty.before.equity == 0.0 and empty.after.status == "healthy" and empty.accepted


def _error(book, market, positions=None, balances=None, trades=None, model="standard"):
    with pytest.raises(me.MarginInputError) as e:
        me.what_if(book, positions, balances, market, trades, model=model)
    return e.value


@pytest.mark.parametrize(
    "kwargs, table, column, needle",
    [
        ({"positions": {"ETH-PERP": 1.0}}, "positions", "instrument", "'ETH-PERP'"),
        ({"trades": [("BTC-PERP", 1.0), ("NOPE", 1.0)]}, "trades", "instrument", "row 1: 'NOPE'"),
        ({"positions": {"BTC-PERP": float("nan")}}, "positions", "quantity", "row 0 = NaN"),
        ({"trades": [("BTC-PERP", float("inf"))]}, "trades", "quantity", "row 0 = inf"),
        ({"trades": [("BTC-PERP", 1.0, -5.0)]}, "trades", "price", "row 0 = -5"),
        ({"positions": [("BTC-PERP", 1.0, float("nan"))]}, "positions", "entry_price", "row 0 = NaN"),
        ({"positions": {"BTC-PERP": "1"}}, "positions", "quantity", "row 0"),
        ({"positions": {"BTC-PERP": True}}, "positions", "quantity", "row 0"),
        ({"positions": [("BTC-PERP",)]}, "positions", "*", "row 0"),
        ({"positions": ["BTC-PERP"]}, "positions", "*", "row 0"),
        ({"positions": 5}, "positions", "*", "int"),
        ({"balances": {"EUR": 1.0}}, "balances", "asset", "'EUR'"),
        ({"balances": {"USD": float("nan")}}, "balances", "amount", "row 0 = NaN"),
        ({"balances": [("USD", 1.0), ("USD", 2.0)]}, "balances", "asset", "'USD'"),
        ({"positions": pa.table({"account_id": [1, 2], "instrument": ["BTC-PERP"] * 2, "quantity": [1.0, 1.0]})}, "positions", "account_id", "several"),
        ({"positions": pa.table({"instrument": ["BTC-PERP"], "quantity": [None]}, schema=pa.schema([("instrument", pa.utf8()), ("quantity", pa.float64())]))}, "positions", "quantity", "null"),
        ({"positions": {"BTC-PERP": 1e308}, "balances": {"USD": 1e308}}, "positions", "quantity", "too large"),
    ],
)
def test_bad_input_names_table_column_and_rows(perp_book, kwargs, table, column, needle):
    book, market = perp_book
    e = _error(book, market, **kwargs)
    assert (e.table, e.column) == (table, column), str(e)
    assert needle in str(e), str(e)


def test_instrument_without_a_mark(perp_book):
    book, _ = perp_book
    market = me.Market(pa.table({"underlying": ["BTC"], "index_price": [50_000.0]}), pa.table({"instrument": ["BTC-PERP"], "mark_price": [50_000.0]}), 0)
    e = _error(book, market, trades={"BTC-C-60000": -1.0})
    assert (e.table, e.column) == ("marks", "instrument") and "BTC-C-60000" in str(e)
    with pytest.raises(me.MarginInputError):
        me.what_if(book, None, None, market, None, model="margin")
    with pytest.raises(me.MarginInputError, match="arguments.book"):
        me.what_if("book", None, None, market, None)


def test_market_cache_follows_the_book(perp_book):
    """A market used with two books resolves against each (the cache is per book)."""
    book, _ = perp_book
    market = me.Market(pa.table({"underlying": ["BTC"], "index_price": [50_000.0]}), pa.table({"instrument": ["BTC-PERP"], "mark_price": [50_000.0]}), 0)
    other = me.Book(
        pa.table({"instrument": ["BTC-PERP"], "kind": ["perpetual"], "underlying": ["BTC"], "multiplier": [2.0],
                  "expiry": pa.array([None], pa.timestamp("ns", "UTC")), "initial_margin_rate": [0.05], "maintenance_margin_rate": [0.02]}),
        book.assets,
    )  # fmt: skip
    for _ in range(2):
        assert me.what_if(book, {"BTC-PERP": 1.0}, None, market, None).before.initial_margin == 1_000.0
        assert me.what_if(other, {"BTC-PERP": 1.0}, None, market, None).before.initial_margin == 5_000.0
        assert math.isclose(me.margin(other, pa.table({"account_id": [1], "instrument": ["BTC-PERP"], "quantity": [1.0]}),
                                      pa.table({"account_id": [1], "asset": ["USD"], "amount": [0.0]}), market).column("initial_margin")[0].as_py(), 5_000.0)  # fmt: skip
