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


# --------------------------------------------------------------------------------------------
# Issue 12, streaming findings
# --------------------------------------------------------------------------------------------


def _small_book(accounts: int = 300, seed: int = 11):
    g = synthetic.generate(accounts, seed=seed)
    book = me.Book(g.instruments, g.assets, None, g.margin_tiers)
    market = me.Market(g.index_prices, g.marks, g.valuation_time)
    return g, book, market


def _with_value(table: pa.Table, column: str, row: int, value) -> pa.Table:
    values = table.column(column).to_pylist()
    values[row] = value
    i = table.schema.get_field_index(column)
    return table.set_column(i, table.schema.field(i), pa.array(values, table.schema.field(i).type))


@pytest.mark.parametrize("table", ["positions", "balances"])
def test_finding_5a_offending_rows_are_numbered_across_the_stream(table):
    """Issue 12 finding 5a: a bad value in a later slice was reported by its row inside the
    slice; it must be its row in the whole stream."""
    g, book, market = _small_book()
    column = "quantity" if table == "positions" else "amount"
    source = getattr(g, table)
    bad_row = source.num_rows - 7
    tables = {"positions": g.positions, "balances": g.balances}
    tables[table] = _with_value(source, column, bad_row, float("nan"))
    with pytest.raises(me.MarginInputError) as err:
        list(margin_batches(book, tables["positions"].to_batches(max_chunksize=50), tables["balances"].to_batches(max_chunksize=40), market, rows_per_slice=200))
    e = err.value
    assert (e.table, e.column, e.count) == (table, column, 1)
    assert e.offenders[0].startswith(f"row {bad_row} ") or e.offenders[0] == f"row {bad_row}", e.offenders
    assert f"row {bad_row}" in str(e)
    # the whole table in memory names the same row
    with pytest.raises(me.MarginInputError) as whole:
        me.margin(book, tables["positions"], tables["balances"], market)
    assert whole.value.offenders == e.offenders


def test_finding_5a_unsorted_and_null_ids_name_their_stream_rows():
    """Issue 12 finding 5a: the streaming checks themselves (sort order, nulls) name rows of the stream."""
    g, book, market = _small_book()
    ids = g.positions.column("account_id").to_pylist()
    row = len(ids) - 5
    unsorted = _with_value(g.positions, "account_id", row, 0)
    with pytest.raises(me.MarginInputError, match=f"row {row}: 0 after") as err:
        list(margin_batches(book, unsorted.to_batches(max_chunksize=30), g.balances, market, rows_per_slice=100))
    assert err.value.column == "account_id" and err.value.offenders[0].startswith(f"row {row}:")
    nulls = _with_value(g.positions, "account_id", row, None)
    with pytest.raises(me.MarginInputError) as err:
        list(margin_batches(book, nulls.to_batches(max_chunksize=30), g.balances, market, rows_per_slice=100))
    assert err.value.offenders == [f"row {row}"] and "null" in err.value.problem


@pytest.mark.parametrize(
    "change, column",
    [
        (lambda b: b.set_column(2, "quantity", b.column(2).cast(pa.float32())), "quantity"),
        (lambda b: b.drop_columns(["entry_price"]), "entry_price"),
        (lambda b: b.append_column("extra", pa.array([1] * b.num_rows)), "extra"),
    ],
    ids=["type", "missing", "new"],
)
def test_finding_5b_a_later_batch_with_another_schema_names_table_column_and_row(change, column):
    """Issue 12 finding 5b: a later batch with another schema escaped as a pyarrow error."""
    g, book, market = _small_book()
    batches = g.positions.to_batches(max_chunksize=100)
    k = len(batches) - 2
    batches[k] = change(batches[k])
    with pytest.raises(me.MarginInputError) as err:
        list(margin_batches(book, batches, g.balances, market, rows_per_slice=250))
    e = err.value
    assert (e.table, e.column) == ("positions", column)
    assert f"batch {k} (from stream row {100 * k})" in str(e)


def test_finding_5b_column_order_and_nullability_are_not_a_schema_change():
    """Issue 12 finding 5b: batches whose columns only come in another order (or nullability) are read by name."""
    g, book, market = _small_book()
    batches = g.positions.to_batches(max_chunksize=100)
    batches[1] = batches[1].select(["quantity", "entry_price", "account_id", "instrument"])
    got = pa.concat_tables(margin_batches(book, batches, g.balances, market, rows_per_slice=250))
    assert got.equals(me.margin(book, g.positions, g.balances, market))


def test_finding_5c_an_exhausted_reader_passed_again_is_an_error():
    """Issue 12 finding 5c: an exhausted RecordBatchReader passed again silently yielded no
    positions (the accounts vanished or were margined on their balances alone)."""
    g, book, market = _small_book()
    whole = me.margin(book, g.positions, g.balances, market)
    reader = pa.RecordBatchReader.from_batches(g.positions.schema, g.positions.to_batches(max_chunksize=100))
    assert pa.concat_tables(margin_batches(book, reader, g.balances, market)).equals(whole)
    with pytest.raises(me.MarginInputError, match="already read to its end") as err:
        list(margin_batches(book, reader, g.balances, market))
    assert err.value.table == "positions"
    # a reader exhausted elsewhere (not by margin_batches) yields no batch at all: also an error
    other = pa.RecordBatchReader.from_batches(g.balances.schema, g.balances.to_batches())
    other.read_all()
    with pytest.raises(me.MarginInputError, match="no batch at all") as err:
        list(margin_batches(book, g.positions, other, market))
    assert err.value.table == "balances"
    # as is a generator already run to its end
    gen = (b for b in g.positions.to_batches())
    list(gen)
    with pytest.raises(me.MarginInputError, match="already read to its end"):
        list(margin_batches(book, gen, g.balances, market))


def test_finding_5c_empty_inputs_that_say_so_are_not_errors():
    """Issue 12 finding 5c (documented boundary): an empty Table, an empty list, or a reader with
    one empty batch is an empty stream, not an exhausted one."""
    g, book, market = _small_book()
    empty_pos, empty_bal = g.positions.slice(0, 0), g.balances.slice(0, 0)
    assert list(margin_batches(book, empty_pos, empty_bal, market)) == []
    assert list(margin_batches(book, [], [], market)) == []
    reader = pa.RecordBatchReader.from_batches(empty_pos.schema, [pa.RecordBatch.from_pylist([], schema=empty_pos.schema)])
    got = pa.concat_tables(margin_batches(book, reader, g.balances, market))
    assert got.equals(me.margin(book, empty_pos, g.balances, market))


def test_finding_5d_one_row_batches_are_coalesced():
    """Issue 12 finding 5d: one-row batches ran ~100x (and quadratically) slower than one batch
    (20,000 of them: 539 s on the old code). The speed is measured side by side in
    benches/test_bench_streaming.py (no timed assertion here); this checks that 10,000 one-row
    batches are coalesced into a few slices that equal the whole-table call."""
    g, book, market = _small_book(2_000, seed=4)
    positions = g.positions.slice(0, 10_000)
    last = positions.column("account_id")[-1].as_py()
    balances = g.balances.filter(pa.compute.less_equal(g.balances.column("account_id"), last))
    whole = me.margin(book, positions, balances, market)
    parts = list(margin_batches(book, positions.to_batches(max_chunksize=1), balances.to_batches(max_chunksize=1), market, rows_per_slice=3_000))
    assert 1 < len(parts) <= 10_000 // 3_000 + 2
    assert pa.concat_tables(parts).equals(whole)


def test_finding_5d_slices_stay_near_rows_per_slice_with_small_batches():
    """Issue 12 finding 5d: coalescing must not make slices (the memory bound) larger than
    rows_per_slice positions plus the rest of their last account."""
    g, book, market = _small_book(2_000, seed=4)
    counts = pa.compute.value_counts(g.positions.column("account_id"))
    per_account = dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()))
    largest = max(per_account.values())
    parts = list(margin_batches(book, g.positions.to_batches(max_chunksize=1), g.balances.to_batches(max_chunksize=1), market, rows_per_slice=500))
    rows = [sum(per_account.get(a, 0) for a in part.column("account_id").to_pylist()) for part in parts]
    assert sum(rows) == g.positions.num_rows
    assert max(rows) <= 500 + largest
    assert len(parts) >= g.positions.num_rows // (500 + largest)
