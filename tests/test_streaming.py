"""Streaming (margin_batches) gives exactly the in-memory results, slice by slice."""

from __future__ import annotations

import pyarrow as pa
import pytest
from conftest import engine_objects
from hypothesis import given, settings
from strategies import books

import margin_engine as me
from margin_engine import synthetic
from margin_engine.streaming import margin_batches


def _sorted(table: pa.Table) -> pa.Table:
    return table.sort_by("account_id")


@pytest.mark.parametrize("model", ["standard", "portfolio"])
@pytest.mark.parametrize("batch_rows", [1, 7, 1000])
def test_streaming_equals_in_memory_on_a_generated_book(model, batch_rows):
    g = synthetic.generate(3_000, seed=3)
    book = me.Book(g.instruments, g.assets, None, g.margin_tiers)
    market = me.Market(g.index_prices, g.marks, g.valuation_time)
    whole = me.margin(book, g.positions, g.balances, market, model=model)
    pos = g.positions.to_batches(max_chunksize=batch_rows * 10)
    bal = g.balances.to_batches(max_chunksize=batch_rows)
    parts = list(margin_batches(book, pos, bal, market, model=model, rows_per_slice=5_000))
    assert len(parts) > 1
    assert pa.concat_tables(parts).equals(whole)


@settings(max_examples=100)
@given(books(max_accounts=8))
def test_streaming_equals_in_memory_on_random_books(example):
    book, market = engine_objects(example)
    positions, balances = _sorted(pa.table(example["positions"])), _sorted(pa.table(example["balances"]))
    whole = me.margin(book, positions, balances, market)
    parts = list(margin_batches(book, positions.to_batches(max_chunksize=2), balances.to_batches(max_chunksize=3), market, rows_per_slice=3))
    got = pa.concat_tables(parts) if parts else whole.slice(0, 0)
    assert got.equals(whole)


def test_unsorted_stream_is_an_error():
    g = synthetic.generate(500, seed=1, shuffle=True)
    book = me.Book(g.instruments, g.assets, None, g.margin_tiers)
    market = me.Market(g.index_prices, g.marks, g.valuation_time)
    with pytest.raises(me.MarginInputError):
        list(margin_batches(book, g.positions.to_batches(max_chunksize=50), g.balances, market))
