"""margin_engine.cascade under issue 12's vocabulary: keyword-only options, output="polars", a
typed result even when nothing happens."""

from __future__ import annotations

import pyarrow as pa
import pytest

import margin_engine as me
from margin_engine import synthetic
from margin_engine.cascade import cascade


@pytest.fixture(scope="module")
def engine():
    g = synthetic.generate(800, seed=11)
    return g, me.Book(g.instruments, g.assets, None, g.margin_tiers), me.Market(g.index_prices, g.marks, g.valuation_time)


def test_issue12_cascade_options_are_keyword_only(engine):
    g, book, market = engine
    with pytest.raises(TypeError):
        cascade(book, g.positions, g.balances, market, {"BTC": -0.1}, {"BTC": 5e8}, "portfolio")


def test_issue12_cascade_output_polars(engine):
    pl = pytest.importorskip("polars")
    g, book, market = engine
    arrow = cascade(book, g.positions, g.balances, market, {"BTC": -0.1}, {"BTC": 5e8}, max_rounds=3)
    polars = cascade(book, g.positions, g.balances, market, {"BTC": -0.1}, {"BTC": 5e8}, max_rounds=3,
                     output="polars")
    assert isinstance(polars, pl.DataFrame) and polars.equals(pl.from_arrow(arrow))
    assert arrow.column_names == ["round", "underlying", "move", "price", "accounts_liquidated", "notional_closed",
                                  "bad_debt", "insurance_fund"]


def test_cascade_with_no_round_rows_keeps_its_columns(engine):
    g, book, market = engine
    empty = cascade(book, g.positions, g.balances, market, {}, {}, max_rounds=0)
    assert empty.num_rows == 0 and empty.schema.field("bad_debt").type == pa.float64()
