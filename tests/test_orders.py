"""Resting orders (docs/methodology.md §10, "Open orders"): the Rust engine
against the reference on random books with random orders, hand-worked cases, and bad input.

The rule is the worst case of Drift's and Mango's open-order margin. Drift ("Margin" in the
Drift protocol docs; `calculate_margin_requirement_and_total_collateral_and_liability_info` in
protocol-v2) margins a perpetual's *worst-case base position*: the position plus all its bids,
or plus all its asks, whichever is larger in size. Mango v4 (`HealthCache`, "Health" docs)
computes health with every bid filled and with every ask filled and keeps the worse. We take,
per instrument (standard model) or per underlying (portfolio model), the side that requires more
initial margin, and charge the loss of a fill against the mark (a bid above the mark fills at a
loss at once). Maintenance margin never sees orders.
"""

from __future__ import annotations

import math
from typing import Any

import pyarrow as pa
import pytest
from conftest import assert_tables_close, engine_objects
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import books

import margin_engine as me
from margin_engine import reference


@st.composite
def with_orders(draw: Any, max_accounts: int = 12) -> tuple[dict[str, Any], pa.Table]:
    """A `books()` example and an orders table over its instruments: some accounts of the
    book, some new ones (orders only), bids and asks, prices around the mark."""
    example = draw(books(max_accounts=max_accounts))
    keys = example["marks"].column("instrument").to_pylist()
    marks = dict(zip(keys, example["marks"].column("mark_price").to_pylist(), strict=True))
    accounts = sorted(set(example["positions"].column("account_id").to_pylist()) | set(example["balances"].column("account_id").to_pylist()))
    candidates = accounts + [draw(st.integers(0, 2**63 - 1))]
    rows = []
    for _ in range(draw(st.integers(0, 12))):
        key = draw(st.sampled_from(keys))
        q = draw(st.sampled_from([1.0, 0.5, 2.0, 3.25, 10.0])) * draw(st.sampled_from([1.0, -1.0]))
        # order prices must be normal floats: a near-zero option mark times 0.5 can underflow into the
        # subnormal range, which the engine (rightly) refuses
        mark = marks[key] if marks[key] and marks[key] > 1e-300 else 1.0
        price = mark * draw(st.sampled_from([1.0, 0.9, 1.1, 0.5, 1.5, 1.01]))
        rows.append({"account_id": draw(st.sampled_from(candidates)), "instrument": key, "quantity": q, "price": price})
    id_type = example["positions"].schema.field("account_id").type
    key_type = example["marks"].schema.field("instrument").type
    orders = pa.table(
        {
            "account_id": pa.array([r["account_id"] for r in rows], id_type),
            "instrument": pa.array([r["instrument"] for r in rows], key_type),
            "quantity": pa.array([r["quantity"] for r in rows], pa.float64()),
            "price": pa.array([r["price"] for r in rows], pa.float64()),
        }
    )
    return example, orders


@pytest.mark.parametrize("model", ["standard", "portfolio"])
@given(case=with_orders())
def test_margin_with_orders_matches_reference(model, case):
    example, orders = case
    book, market = engine_objects(example)
    got = me.margin(book, example["positions"], example["balances"], market, orders=orders, model=model)
    want = reference.margin(book, example["positions"], example["balances"], market, orders=orders, model=model)
    assert_tables_close(got, want)
    # maintenance never sees orders; initial margin only grows
    plain = me.margin(book, example["positions"], example["balances"], market, model=model)
    by_id = {r["account_id"]: r for r in plain.to_pylist()}
    for r in got.to_pylist():
        before = by_id.get(r["account_id"])
        if before is None:  # an account with orders only
            assert r["maintenance_margin"] == 0.0 and r["equity"] == 0.0
            continue
        assert r["maintenance_margin"] == before["maintenance_margin"]
        assert r["collateral_initial"] == before["collateral_initial"]
        assert r["initial_margin"] >= before["initial_margin"]


@given(case=with_orders(max_accounts=6), move=st.sampled_from([-0.2, -0.05, 0.03, 0.1]), model=st.sampled_from(["standard", "portfolio"]))
def test_stressed_scan_with_orders_matches_reference(case, move, model):
    example, orders = case
    book, market = engine_objects(example)
    underlying = example["index_prices"].column("underlying").to_pylist()
    stress = {underlying[0]: move} if underlying else None
    args = (book, example["positions"], example["balances"], market)
    got = me.liquidation_scan(*args, orders=orders, model=model, stress=stress)
    want = reference.liquidation_scan(*args, orders=orders, model=model, stress=stress)
    assert_tables_close(got, want)


@given(books(max_accounts=8))
def test_empty_orders_change_nothing(example):
    book, market = engine_objects(example)
    args = (book, example["positions"], example["balances"], market)
    empty = pa.table({"account_id": pa.array([], pa.uint64()), "instrument": pa.array([], pa.utf8()),
                      "quantity": pa.array([], pa.float64()), "price": pa.array([], pa.float64())})
    if pa.types.is_integer(example["marks"].schema.field("instrument").type):
        empty = empty.set_column(1, "instrument", pa.array([], pa.int64()))
    for model in ("standard", "portfolio"):
        assert me.margin(*args, model=model).equals(me.margin(*args, orders=empty, model=model))


def _one_perp() -> tuple[me.Book, me.Market]:
    book = me.Book(
        pa.table({"instrument": ["BTC-PERP", "ETH-PERP"], "kind": ["perpetual", "perpetual"], "underlying": ["BTC", "ETH"],
                  "multiplier": [1.0, 1.0], "initial_margin_rate": [0.10, 0.05], "maintenance_margin_rate": [0.05, 0.025]}),
        pa.table({"asset": ["USD"], "price": [1.0], "initial_weight": [1.0], "maintenance_weight": [1.0],
                  "initial_liability_weight": [1.0], "maintenance_liability_weight": [1.0]}),
    )
    market = me.Market(pa.table({"underlying": ["BTC", "ETH"], "index_price": [50_000.0, 3_000.0]}),
                       pa.table({"instrument": ["BTC-PERP", "ETH-PERP"], "mark_price": [50_000.0, 3_000.0]}), "2025-01-01")
    return book, market


def test_worst_side_and_fill_loss_by_hand():
    """Long 1 BTC-PERP at 50,000 (IM 10%: 5,000). Bids 2 @ 49,000, asks −3 @ 51,000 and −1 @ 49,500.
    All bids fill: |1 + 2| × 50,000 × 10% = 15,000, no loss (bid below the mark).
    All asks fill: |1 − 4| × 50,000 × 10% = 15,000, plus the ask below the mark: 1 × 500 = 500.
    The asks are worse: IM = 5,000 + (15,500 − 5,000) = 15,500; MM stays 2,500."""
    book, market = _one_perp()
    positions = pa.table({"account_id": [7], "instrument": ["BTC-PERP"], "quantity": [1.0]})
    balances = pa.table({"account_id": [7], "asset": ["USD"], "amount": [12_000.0]})
    orders = pa.table({"account_id": [7, 7, 7], "instrument": ["BTC-PERP"] * 3,
                       "quantity": [2.0, -3.0, -1.0], "price": [49_000.0, 51_000.0, 49_500.0]})
    m = me.margin(book, positions, balances, market, orders=orders).to_pylist()[0]
    assert m["initial_margin"] == 15_500.0
    assert m["maintenance_margin"] == 2_500.0
    assert m["status"] == "margin_call"  # orders count towards initial margin, never towards liquidation
    plain = me.margin(book, positions, balances, market).to_pylist()[0]
    assert plain["initial_margin"] == 5_000.0 and plain["status"] == "healthy"


def test_orders_only_account_and_bid_above_mark():
    """An account with no position and no balance: a bid of 1 ETH-PERP at 3,100 (mark 3,000)
    requires 3,000 × 5% = 150 plus the 100 it loses at once: 250."""
    book, market = _one_perp()
    positions = pa.table({"account_id": pa.array([], pa.int64()), "instrument": pa.array([], pa.utf8()), "quantity": pa.array([], pa.float64())})
    balances = pa.table({"account_id": pa.array([], pa.int64()), "asset": pa.array([], pa.utf8()), "amount": pa.array([], pa.float64())})
    orders = pa.table({"account_id": [3], "instrument": ["ETH-PERP"], "quantity": [1.0], "price": [3_100.0]})
    rows = me.margin(book, positions, balances, market, orders=orders).to_pylist()
    assert [(r["account_id"], r["initial_margin"], r["maintenance_margin"], r["status"]) for r in rows] == [(3, 250.0, 0.0, "margin_call")]


def test_portfolio_model_fills_the_underlying_together():
    """Under the portfolio model a short perpetual and a bid that reduces it: all bids filling
    leaves a smaller position, so the asks (none: the position itself) are the worse side and
    the orders add nothing."""
    book, market = _one_perp()
    positions = pa.table({"account_id": [1], "instrument": ["BTC-PERP"], "quantity": [-2.0]})
    balances = pa.table({"account_id": [1], "asset": ["USD"], "amount": [100_000.0]})
    orders = pa.table({"account_id": [1], "instrument": ["BTC-PERP"], "quantity": [1.0], "price": [49_000.0]})
    with_orders = me.margin(book, positions, balances, market, orders=orders, model="portfolio")
    plain = me.margin(book, positions, balances, market, model="portfolio")
    assert with_orders.equals(plain)


@pytest.mark.parametrize(
    ("column", "value", "problem"),
    [
        ("instrument", "NOPE-PERP", "instrument"),
        ("quantity", 0.0, "non-zero"),
        ("quantity", math.nan, "quantity"),
        ("price", 0.0, "price"),
        ("price", -5.0, "price"),
        ("price", math.nan, "price"),
    ],
)
def test_bad_orders_are_refused_naming_the_rows(column, value, problem):
    book, market = _one_perp()
    positions = pa.table({"account_id": [1], "instrument": ["BTC-PERP"], "quantity": [1.0]})
    balances = pa.table({"account_id": [1], "asset": ["USD"], "amount": [10_000.0]})
    data = {"account_id": [1, 1], "instrument": ["BTC-PERP", "BTC-PERP"], "quantity": [1.0, -1.0], "price": [50_000.0, 50_000.0]}
    data[column] = [data[column][0], value]
    with pytest.raises(me.MarginInputError) as err:
        me.margin(book, positions, balances, market, orders=pa.table(data))
    text = str(err.value)
    assert "orders" in text and column in text and problem in text
    assert "1" in text  # the offending row


def test_a_methodology_that_replaces_the_model_refuses_orders():
    from strategies import books as _  # noqa: F401  (the module's helpers are shared)

    book, market = _one_perp()
    derive = me.Book(book.instruments, book.assets, methodology=me.Methodology.preset("derive_standard"))
    positions = pa.table({"account_id": [1], "instrument": ["BTC-PERP"], "quantity": [1.0]})
    balances = pa.table({"account_id": [1], "asset": ["USD"], "amount": [10_000.0]})
    orders = pa.table({"account_id": [1], "instrument": ["BTC-PERP"], "quantity": [1.0], "price": [50_000.0]})
    with pytest.raises(me.MarginInputError, match="orders"):
        me.margin(derive, positions, balances, market, orders=orders)


def test_cli_run_and_scan_read_an_orders_table(tmp_path, capsys):
    """A book directory with `orders.parquet`: `run` and `scan` margin the orders as
    `me.margin(orders=)` does; `run --stream` refuses them."""
    import pyarrow.parquet as pq

    from margin_engine import cli, synthetic
    from margin_engine.io import BookTables, write_book

    g = synthetic.generate(50, seed=3)
    key = g.marks.column("instrument")[0].as_py()
    account = g.positions.column("account_id")[0].as_py()
    orders = pa.table({"account_id": pa.array([account], g.positions.schema.field("account_id").type),
                       "instrument": pa.array([key], g.marks.schema.field("instrument").type),
                       "quantity": [-1000.0], "price": [g.marks.column("mark_price")[0].as_py() or 1.0]})
    tables = BookTables(instruments=g.instruments, assets=g.assets, positions=g.positions, balances=g.balances,
                        index_prices=g.index_prices, marks=g.marks, valuation_time=g.valuation_time,
                        margin_tiers=g.margin_tiers, orders=orders)
    d = tmp_path / "book"
    write_book(tables, d)
    out = tmp_path / "m.parquet"
    assert cli.main(["--quiet", "run", str(d), "--out", str(out)]) == 0
    book, market = tables.book(), tables.market()
    want = me.margin(book, g.positions, g.balances, market, orders=orders)
    assert pq.read_table(out).equals(want)
    assert not want.equals(me.margin(book, g.positions, g.balances, market))
    scan_out = tmp_path / "s.parquet"
    assert cli.main(["--quiet", "scan", str(d), "--out", str(scan_out)]) == 0
    assert pq.read_table(scan_out).equals(me.liquidation_scan(book, g.positions, g.balances, market, orders=orders))
    assert cli.main(["--quiet", "run", str(d), "--stream"]) != 0
    assert "--stream does not margin orders" in capsys.readouterr().err


@pytest.mark.parametrize("model", ["standard", "portfolio"])
@settings(max_examples=60)
@given(case=with_orders(max_accounts=4))
def test_what_if_with_orders_is_margin_with_orders(model, case):
    """`me.what_if(orders=)`: `before` is the account's row of `me.margin(orders=)` bit for bit,
    and `after` (a trade at the mark) the row with the trade appended."""
    example, orders = case
    book, market = engine_objects(example)
    rows = orders.to_pylist()
    if not rows:
        return
    account = rows[0]["account_id"]
    mine = [r for r in rows if r["account_id"] == account]
    def only(t: pa.Table) -> pa.Table:
        return t.filter(pa.array([a == account for a in t.column("account_id").to_pylist()], pa.bool_()))

    positions, balances, account_orders = only(example["positions"]), only(example["balances"]), only(orders)
    kinds = dict(zip(example["instruments"].column("instrument").to_pylist(), example["instruments"].column("kind").to_pylist(), strict=True))
    linear = [r["instrument"] for r in mine if kinds[r["instrument"]] != "option"]
    trade = (linear[0], 1.5) if linear else None  # an option trade would need a quote asset
    w = me.what_if(book, positions.drop_columns(["account_id"]) if positions.num_rows else None,
                   {r["asset"]: r["amount"] for r in balances.to_pylist()}, market, [trade] if trade else None,
                   orders=[(r["instrument"], r["quantity"], r["price"]) for r in mine], model=model)
    whole = me.margin(book, positions, balances, market, orders=account_orders, model=model).to_pylist()[0]
    assert w.before.initial_margin == whole["initial_margin"]
    assert w.before.maintenance_margin == whole["maintenance_margin"]
    assert w.before.status == whole["status"]
    if trade is None:
        return
    traded = pa.concat_tables([positions.select(["account_id", "instrument", "quantity"]),
                               pa.table({"account_id": pa.array([account], positions.schema.field("account_id").type),
                                         "instrument": pa.array([trade[0]], positions.schema.field("instrument").type),
                                         "quantity": [trade[1]]})])
    after = me.margin(book, traded, balances, market, orders=account_orders, model=model).to_pylist()[0]
    assert math.isclose(w.after.initial_margin, after["initial_margin"], rel_tol=1e-9, abs_tol=1e-9)
