"""The benchmark baselines (benches/baselines: numpy, polars, duckdb) compute what the engine
computes: on a generated book of 3,000 accounts (~30k position rows with repeated rows, entry
prices, margin tiers, short options, size premiums and borrows), sorted and shuffled, every float
column agrees to 1e-9 relative and every status exactly. This is what makes the benchmark
comparisons in docs/performance.md like for like."""

from __future__ import annotations

import importlib
import os
import sys
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

me = pytest.importorskip("margin_engine")
from margin_engine import synthetic

ACCOUNTS = 3000
REL = 1e-9
ABS = 1e-9

STANDARD = ["numpy_standard", "polars_standard", "duckdb_standard"]
PORTFOLIO = ["numpy_portfolio"]


def baseline(name: str) -> Any:
    if name.startswith("polars"):
        pytest.importorskip("polars")
    if name.startswith("duckdb"):
        pytest.importorskip("duckdb")
    return importlib.import_module(f"benches.baselines.{name}")


@pytest.fixture(scope="module", params=[False, True], ids=["sorted", "shuffled"])
def book(request: pytest.FixtureRequest) -> Any:
    return synthetic.generate(ACCOUNTS, seed=7, shuffle=request.param)


def engine(book: Any, model: str, positions: Any = None, balances: Any = None, risk_params: Any = None,
           margin_tiers: Any = "book") -> pa.Table:
    tiers = book.margin_tiers if margin_tiers == "book" else margin_tiers
    b = me.Book(book.instruments, book.assets, risk_params, tiers)
    m = me.Market(book.index_prices, book.marks, book.valuation_time_ns)
    return me.margin(b, book.positions if positions is None else positions,
                     book.balances if balances is None else balances, m, model=model)


def assert_same(got: pa.Table, want: pa.Table) -> None:
    assert got.schema.names == want.schema.names
    assert [f.type for f in got.schema] == [f.type for f in want.schema]
    assert got.num_rows == want.num_rows
    assert got.column("account_id").equals(want.column("account_id"))
    for name in want.column_names:
        field = want.schema.field(name)
        if not pa.types.is_floating(field.type):
            continue
        g, w = got.column(name), want.column(name)
        assert pc.is_null(g).equals(pc.is_null(w)), f"{name}: nulls differ"
        gv = g.to_numpy(zero_copy_only=False)
        wv = w.to_numpy(zero_copy_only=False)
        bad = ~np.isclose(gv, wv, rtol=REL, atol=ABS, equal_nan=True)
        assert not bad.any(), f"{name}: {bad.sum()} rows differ, e.g. {list(zip(gv[bad][:3], wv[bad][:3]))}"
    status_g = got.column("status").to_numpy(zero_copy_only=False)
    status_w = want.column("status").to_numpy(zero_copy_only=False)
    differ = status_g != status_w
    assert not differ.any(), f"status: {differ.sum()} rows differ"


def test_book_exercises_the_methodology(book: Any) -> None:
    """The generated book has what the baselines must get right."""
    pos = book.positions
    keys = pc.binary_join_element_wise(pc.cast(pos["account_id"], pa.string()),
                                       pc.cast(pos["instrument"], pa.string()), "|")
    assert pc.count_distinct(keys).as_py() < pos.num_rows  # repeated (account, instrument) rows
    assert "entry_price" in pos.column_names
    assert book.margin_tiers.num_rows > 0
    assert pc.any(pc.less(book.balances["amount"], 0.0)).as_py()  # borrows
    statuses = set(engine(book, "standard")["status"].to_pylist())
    assert statuses == {"healthy", "margin_call", "liquidatable", "bankrupt"}


@pytest.mark.parametrize("name", STANDARD)
def test_standard_baseline_equals_engine(book: Any, name: str) -> None:
    assert_same(baseline(name).margin(book, book.positions, book.balances, book), engine(book, "standard"))


@pytest.mark.parametrize("pricer", ["numpy", "engine"])
def test_portfolio_baseline_equals_engine(book: Any, pricer: str) -> None:
    got = baseline("numpy_portfolio").margin(book, book.positions, book.balances, book, pricer=pricer)
    assert_same(got, engine(book, "portfolio"))


# Variants on the sorted book only: plain string keys, no entry prices, no tiers, risk params.


@pytest.fixture(scope="module")
def plain() -> Any:
    return synthetic.generate(ACCOUNTS, seed=11)


@pytest.mark.parametrize("name", STANDARD + PORTFOLIO)
def test_plain_string_keys_without_entry_prices(plain: Any, name: str) -> None:
    positions = plain.positions.drop_columns(["entry_price"])
    positions = positions.set_column(1, "instrument", pc.cast(positions["instrument"], pa.string()))
    balances = plain.balances.set_column(1, "asset", pc.cast(plain.balances["asset"], pa.string()))
    model = "portfolio" if "portfolio" in name else "standard"
    got = baseline(name).margin(plain, positions, balances, plain)
    assert_same(got, engine(plain, model, positions, balances))


@pytest.mark.parametrize("name", STANDARD)
def test_standard_without_tiers(plain: Any, name: str) -> None:
    no_tiers = SimpleNamespace(instruments=plain.instruments, assets=plain.assets, margin_tiers=None)
    got = baseline(name).margin(no_tiers, plain.positions, plain.balances, plain)
    assert_same(got, engine(plain, "standard", margin_tiers=None))


def test_portfolio_with_risk_params(plain: Any) -> None:
    params = pa.table({
        "underlying": ["BTC", "ETH", "SOL"],
        "price_range": [0.2, 0.1, 0.15],
        "price_steps": pa.array([11, 31, 21], pa.int64()),
        "im_factor": [1.5, 1.1, 1.25],
        "extreme_cover": [0.5, 0.2, 0.33],
        "short_option_minimum": [0.02, 0.01, 0.005],
    })

    with_params = SimpleNamespace(instruments=plain.instruments, assets=plain.assets,
                                  margin_tiers=plain.margin_tiers, risk_params=params)
    got = baseline("numpy_portfolio").margin(with_params, plain.positions, plain.balances, plain)
    assert_same(got, engine(plain, "portfolio", risk_params=params))


@pytest.mark.parametrize("name", STANDARD)
def test_standard_with_binding_size_premiums(plain: Any, name: str) -> None:
    """The generated size premiums bind on a couple of balances only; make them bind often."""
    i = plain.assets.schema.get_field_index("size_premium")
    assets = plain.assets.set_column(i, "size_premium", pc.multiply(plain.assets["size_premium"], 100.0))

    big = SimpleNamespace(instruments=plain.instruments, assets=assets, margin_tiers=plain.margin_tiers)
    got = baseline(name).margin(big, plain.positions, plain.balances, plain)
    b = me.Book(plain.instruments, assets, None, plain.margin_tiers)
    m = me.Market(plain.index_prices, plain.marks, plain.valuation_time_ns)
    assert_same(got, me.margin(b, plain.positions, plain.balances, m))
