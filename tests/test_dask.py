"""margin_engine.dask on Dask's local schedulers: the same rows as the in-memory calls, bit for bit.

The inputs are split into many partitions (so accounts, and the skewed one of 100,000
positions, straddle partition boundaries before the shuffle) and shuffled into fewer; the
shuffled book scatters every account's rows. Results are compared sorted by account_id with
exact equality. Skipped without dask.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

dd = pytest.importorskip("dask.dataframe")
import dask  # noqa: E402

import margin_engine as me  # noqa: E402
from distributed_book import distributed_book  # noqa: E402

med = pytest.importorskip("margin_engine.dask")


def _frame(table: pa.Table, npartitions: int):
    return dd.from_pandas(table.to_pandas(types_mapper=None), npartitions=npartitions, sort=False)


def _result(ddf) -> pa.Table:
    """The computed result as Arrow, with the engine's nullability (pandas keeps no "not null")."""
    table = pa.Table.from_pandas(ddf.compute(), preserve_index=False).replace_schema_metadata(None)
    return table


def _sorted(table: pa.Table, *keys: str) -> pa.Table:
    return table.sort_by([(k, "ascending") for k in keys])


@pytest.fixture(scope="module")
def frames():
    data = distributed_book()
    return data, _frame(data.positions, 9), _frame(data.balances, 5)


@pytest.fixture(scope="module")
def shuffled_frames():
    data = distributed_book(shuffled=True)
    return data, _frame(data.positions, 9), _frame(data.balances, 5)


def _equal(got: pa.Table, want: pa.Table) -> bool:
    """Same column names and types (uint64 ids included) and the same values, exactly."""
    assert [(f.name, f.type) for f in got.schema] == [(f.name, f.type) for f in want.schema]
    return got.cast(want.schema).equals(want)


@pytest.mark.parametrize("model", ["standard", "portfolio"])
def test_margin_equals_in_memory(frames, model):
    data, positions, balances = frames
    want = me.margin(data.book, data.positions, data.balances, data.market, model=model)
    got = _sorted(_result(med.margin(data.book, positions, balances, data.market, model=model, partitions=4)), "account_id")
    assert _equal(got, want)


def test_shuffled_rows_on_processes(shuffled_frames):
    """Every account's rows scattered over the input partitions and summed in that order in
    memory; on the process scheduler (no shared memory: the payload is rebuilt per process)."""
    data, positions, balances = shuffled_frames
    want = me.margin(data.book, data.positions, data.balances, data.market, model="portfolio")
    with dask.config.set(scheduler="processes", num_workers=2):
        got = _result(med.margin(data.book, positions, balances, data.market, model="portfolio", partitions=3))
    assert _equal(_sorted(got, "account_id"), want)


def test_liquidation_scan_and_greeks(shuffled_frames):
    data, positions, balances = shuffled_frames
    stress = {"SOL": 0.25, "BTC": -0.1}
    want = me.liquidation_scan(data.book, data.positions, data.balances, data.market, stress=stress)
    got = _result(med.liquidation_scan(data.book, positions, balances, data.market, stress=stress, partitions=5))
    assert _equal(_sorted(got, "account_id"), _sorted(want, "account_id"))
    want = me.liquidation_scan(data.book, data.positions, data.balances, data.market, distance=True)
    got = _result(med.liquidation_scan(data.book, positions, balances, data.market, distance=True))
    assert _equal(_sorted(got, "account_id"), _sorted(want, "account_id"))
    want = me.greeks(data.book, data.positions, data.market)
    got = _result(med.greeks(data.book, positions, data.market, partitions=4))
    assert _equal(_sorted(got, "account_id", "underlying"), want)


def test_parquet_dataset(tmp_path):
    """The realistic path: dd.read_parquet of files with dictionary-encoded keys."""
    from margin_engine import synthetic

    sb = synthetic.generate(1_500, seed=4)
    pq.write_table(sb.positions, tmp_path / "positions.parquet", row_group_size=2_000)
    pq.write_table(sb.balances, tmp_path / "balances.parquet", row_group_size=500)
    book = me.Book(sb.instruments, sb.assets, None, sb.margin_tiers)
    market = me.Market(sb.index_prices, sb.marks, sb.valuation_time_ns)
    positions = dd.read_parquet(tmp_path / "positions.parquet", split_row_groups=True)
    balances = dd.read_parquet(tmp_path / "balances.parquet", split_row_groups=True)
    assert positions.npartitions > 1
    got = _sorted(_result(med.margin(book, positions, balances, market, model="portfolio")), "account_id")
    assert _equal(got, me.margin(book, sb.positions, sb.balances, market, model="portfolio"))


def test_bad_input(frames):
    data, positions, balances = frames
    with pytest.raises(me.MarginInputError, match=r"positions\.quantity: missing column"):
        med.margin(data.book, positions.drop(columns=["quantity"]), balances, data.market)
    with pytest.raises(me.MarginInputError, match=r"balances\.account_id: type int64 and positions\.account_id's uint64"):
        med.margin(data.book, positions.astype({"account_id": "uint64"}), balances, data.market)
    with pytest.raises(me.MarginInputError, match=r"positions\.\*: expected a Dask DataFrame"):
        med.greeks(data.book, data.positions, data.market)
    with pytest.raises(me.MarginInputError, match=r"arguments\.model"):
        med.margin(data.book, positions, balances, data.market, model="spam")
    bad = positions.assign(quantity=positions.quantity.where(positions.account_id != data.skewed_account, np.nan))
    with pytest.raises(me.MarginInputError, match=rf"positions\.quantity.*account {data.skewed_account}.*Dask partition"):
        med.margin(data.book, bad, balances, data.market, partitions=3).compute()


def test_order_column_restores_the_in_memory_order(shuffled_frames):
    data, _, _ = shuffled_frames

    def reversed_frame(table):
        table = table.append_column("row", pa.array(np.arange(table.num_rows), pa.int64()))
        return _frame(table.take(pa.array(np.arange(table.num_rows)[::-1])), 6)

    want = me.margin(data.book, data.positions, data.balances, data.market)
    got = _result(med.margin(data.book, reversed_frame(data.positions), reversed_frame(data.balances), data.market, order="row"))
    assert _equal(_sorted(got, "account_id"), want)
