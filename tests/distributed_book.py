"""The book the distributed tests (test_spark.py, test_dask.py) margin: a synthetic exchange book
plus the cases that break a naive split by rows.

- one skewed account of 100,000 position rows (fills of a few hundred instruments, each netted
  from many rows with entry prices, so the order of the sums shows in the last bits), placed in
  the middle of the account range so that it spans many batches and input partitions;
- accounts with positions and no balances, and (from the generator) accounts with balances only;
- with ``shuffled=True`` the rows in a random order, so that an account's rows are scattered
  over every input partition and their order within the account is not the sorted one.
"""

from __future__ import annotations

import dataclasses
from functools import cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import margin_engine as me
from margin_engine import synthetic

SKEWED_ROWS = 100_000


@dataclasses.dataclass(frozen=True)
class DistributedBook:
    book: me.Book
    market: me.Market
    positions: pa.Table  # account_id int64, instrument utf8 (the types a Spark DataFrame has)
    balances: pa.Table
    skewed_account: int


def _plain(table: pa.Table) -> pa.Table:
    """Dictionary columns as utf8 and account ids as int64, as they come out of Spark."""
    fields = []
    for f in table.schema:
        if pa.types.is_dictionary(f.type):
            fields.append(pa.field(f.name, pa.string()))
        elif f.name == "account_id":
            fields.append(pa.field(f.name, pa.int64()))
        else:
            fields.append(f)
    return table.cast(pa.schema(fields))


@cache
def distributed_book(accounts: int = 3_000, seed: int = 11, shuffled: bool = False) -> DistributedBook:
    sb = synthetic.generate(accounts, seed=seed)
    rng = np.random.default_rng(seed)
    positions, balances = _plain(sb.positions), _plain(sb.balances)
    ids = np.unique(positions.column("account_id").to_numpy())
    # the skewed account: between two existing ids near the middle
    middle = len(ids) // 2
    skewed = int(ids[middle] + 1)
    assert skewed < ids[middle + 1]
    names = sb.instruments.column("instrument").to_numpy(zero_copy_only=False)
    marks = dict(zip(sb.marks.column("instrument").to_pylist(), sb.marks.column("mark_price").to_pylist()))
    held = rng.choice(names, size=300, replace=False)
    instrument = rng.choice(held, size=SKEWED_ROWS)
    quantity = rng.integers(1, 5, size=SKEWED_ROWS) * rng.choice([-1.0, 1.0], size=SKEWED_ROWS) * 0.1
    mark = np.array([marks[i] for i in instrument])
    entry = mark * np.exp(rng.normal(0.0, 0.05, size=SKEWED_ROWS))
    skew = pa.table({
        "account_id": pa.array(np.full(SKEWED_ROWS, skewed), pa.int64()),
        "instrument": pa.array(instrument, pa.string()),
        "quantity": pa.array(quantity, pa.float64()),
        "entry_price": pa.array(entry, pa.float64()),
    })  # fmt: skip
    cut = int(np.searchsorted(positions.column("account_id").to_numpy(), skewed))
    positions = pa.concat_tables([positions.slice(0, cut), skew, positions.slice(cut)]).combine_chunks()
    skew_balance = pa.table({"account_id": pa.array([skewed], pa.int64()), "asset": ["USD"], "amount": [5.0e7]})
    cut = int(np.searchsorted(balances.column("account_id").to_numpy(), skewed))
    balances = pa.concat_tables([balances.slice(0, cut), skew_balance, balances.slice(cut)]).combine_chunks()
    # a few accounts with positions and no balances
    no_cash = pa.array(rng.choice(ids, size=25, replace=False), pa.int64())
    balances = balances.filter(pc.invert(pc.is_in(balances.column("account_id"), value_set=no_cash)))
    if shuffled:
        positions = positions.take(pa.array(rng.permutation(positions.num_rows)))
        balances = balances.take(pa.array(rng.permutation(balances.num_rows)))
    book = me.Book(sb.instruments, sb.assets, None, sb.margin_tiers)
    market = me.Market(sb.index_prices, sb.marks, sb.valuation_time_ns)
    return DistributedBook(book, market, positions, balances, skewed)


def as_spark_types(expected: pa.Table, got: pa.Table) -> pa.Table:
    """``expected`` (an in-memory result) with ``got``'s schema (uint64 ids as int64): a cast
    that changes no value (it raises on an id >= 2**63)."""
    return expected.cast(got.schema)
