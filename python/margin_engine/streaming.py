"""Margining books larger than memory: stream positions and balances sorted by account.

:func:`margin_batches` reads both tables batch by batch (any Arrow record batch reader, e.g. a
Parquet dataset's ``to_batches()`` or ``pyarrow.parquet.ParquetFile.iter_batches()``), cuts them
at account boundaries so no account is split, margins each slice with the engine and yields one
result table per slice. Memory is bounded by the slice size, not the book.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from margin_engine import api
from margin_engine._inputs import input_error


def _batches(source: Any, table: str) -> Iterator[pa.RecordBatch]:
    if isinstance(source, pa.Table):
        yield from source.to_batches()
    elif isinstance(source, pa.RecordBatch):
        yield source
    elif hasattr(source, "__arrow_c_stream__"):
        yield from pa.RecordBatchReader.from_stream(source)
    elif isinstance(source, Iterable):
        for b in source:
            yield b if isinstance(b, pa.RecordBatch) else pa.record_batch(b)
    else:
        raise input_error(table, "*", f"expected a record batch reader or an iterable of batches, got {type(source).__name__}")


class _Cursor:
    """Rows of one stream buffered until a given account id has been passed."""

    def __init__(self, source: Any, table: str):
        self.table = table
        self.it = _batches(source, table)
        self.pending: list[pa.RecordBatch] = []
        self.schema: pa.Schema | None = None
        self.done = False
        self.last: int | None = None

    def _pull(self) -> bool:
        for batch in self.it:
            if batch.num_rows == 0:
                self.schema = self.schema or batch.schema
                continue
            self.schema = self.schema or batch.schema
            ids = batch.column("account_id")
            first = ids[0].as_py()
            if self.last is not None and first < self.last:
                raise input_error(self.table, "account_id", "streamed rows must be sorted by account_id", [f"{first} after {self.last}"])
            if len(ids) > 1 and not pc.all(pc.greater_equal(ids.slice(1), ids.slice(0, len(ids) - 1))).as_py():
                raise input_error(self.table, "account_id", "streamed rows must be sorted by account_id")
            self.last = ids[-1].as_py()
            self.pending.append(batch)
            return True
        self.done = True
        return False

    def buffered_max(self) -> int | None:
        return self.last if self.pending else None

    def take_through(self, account: int) -> pa.Table:
        """All buffered rows with account_id <= account (pulling more while the last buffered
        account is not past it)."""
        while not self.done and (not self.pending or self.last is None or self.last <= account):
            if not self._pull():
                break
        if not self.pending:
            return pa.Table.from_batches([], schema=self.schema) if self.schema else pa.table({})
        table = pa.Table.from_batches(self.pending)
        ids = table.column("account_id")
        cut = int(pc.sum(pc.less_equal(ids, pa.scalar(account, ids.type))).as_py() or 0)
        taken, rest = table.slice(0, cut), table.slice(cut)
        self.pending = rest.to_batches() if rest.num_rows else []
        return taken


def margin_batches(
    book: api.Book,
    positions: Any,
    balances: Any,
    market: api.Market,
    model: api.Model = "standard",
    threads: int | None = None,
    rows_per_slice: int = 2_000_000,
) -> Iterator[pa.Table]:
    """Yields margin results (the columns of :func:`margin_engine.margin`) slice by slice for
    positions and balances streams sorted by ``account_id``. Concatenated, the slices equal
    ``me.margin`` on the whole book."""
    pos, bal = _Cursor(positions, "positions"), _Cursor(balances, "balances")
    pos._pull()
    bal._pull()
    while pos.pending or bal.pending or not (pos.done and bal.done):
        # cut at the last account of the smaller side's buffered rows, so neither side splits it
        candidates = [c.buffered_max() for c in (pos, bal) if c.buffered_max() is not None]
        if not candidates:
            if not pos._pull() and not bal._pull():
                break
            continue
        boundary = min(candidates)
        # grow the slice to about rows_per_slice positions before margining
        while pos.pending and sum(b.num_rows for b in pos.pending) < rows_per_slice and not pos.done:
            if not pos._pull():
                break
            boundary = max(boundary, min(c for c in (pos.buffered_max(), bal.buffered_max()) if c is not None))
        p = pos.take_through(boundary)
        b = bal.take_through(boundary)
        if p.num_rows == 0 and b.num_rows == 0:
            continue
        if p.num_rows == 0:
            p = pa.table({"account_id": pa.array([], pa.uint64()), "instrument": pa.array([], pa.utf8()), "quantity": pa.array([], pa.float64())})
        if b.num_rows == 0:
            b = pa.table({"account_id": pa.array([], pa.uint64()), "asset": pa.array([], pa.utf8()), "amount": pa.array([], pa.float64())})
        yield api.margin(book, p, b, market, model=model, threads=threads)
