"""Margining books larger than memory: stream positions and balances sorted by account.

:func:`margin_batches` reads both tables batch by batch (any Arrow record batch reader, e.g. a
Parquet dataset's ``to_batches()`` or ``pyarrow.parquet.ParquetFile.iter_batches()``), cuts them
at account boundaries so no account is split, margins each slice with the engine and yields one
result table per slice. Memory is bounded by the slice size, not the book.

Small batches are coalesced: batches are buffered (one concatenation per read, not one per
batch) until a slice holds ``rows_per_slice`` positions, so a stream of one-row batches costs
about what one large batch does.

What is checked, and what cannot be:

- rows must be sorted by ``account_id`` (ties anywhere) and have no null ``account_id``;
- every batch must have the first batch's columns and types (order and nullability may differ);
  a batch that does not raises :class:`MarginInputError` naming the column, the batch and the
  stream row where it starts;
- bad values found by the engine in a slice are reported with their row in the whole stream
  (``row N`` counts from the stream's first row), not in the slice;
- a one-shot source (a ``RecordBatchReader``, a generator or any other iterator) that yields no
  batch at all is taken for an exhausted or closed one (pyarrow gives a consumed reader no
  state to ask) and raises; so does a source an earlier ``margin_batches`` call read to its
  end. An empty input must be passed as a ``Table``, a list, or a reader carrying one empty
  batch. A reader that was *partly* read before is not detectable: its remaining rows are
  margined.
"""

from __future__ import annotations

import inspect
import re
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from margin_engine import api
from margin_engine._core import MarginInputError
from margin_engine._inputs import input_error
from margin_engine.io import schema_difference

_GROUP, _GROUP_ROWS = 256, 1 << 16  # small batches are concatenated this many (or rows) at a time

# one-shot sources that a margin_batches call has read to their end (weakly held)
_CONSUMED: weakref.WeakSet[Any] = weakref.WeakSet()

_EMPTY = {
    "positions": lambda: pa.table({"account_id": pa.array([], pa.uint64()), "instrument": pa.array([], pa.utf8()), "quantity": pa.array([], pa.float64())}),
    "balances": lambda: pa.table({"account_id": pa.array([], pa.uint64()), "asset": pa.array([], pa.utf8()), "amount": pa.array([], pa.float64())}),
}  # fmt: skip


def _one_shot(source: Any) -> bool:
    return isinstance(source, (pa.RecordBatchReader, Iterator))


def _consumed_before(source: Any) -> bool:
    if inspect.isgenerator(source) and inspect.getgeneratorstate(source) == inspect.GEN_CLOSED:
        return True
    try:
        return source in _CONSUMED
    except TypeError:
        return False


def _batches(source: Any, table: str) -> Iterator[pa.RecordBatch]:
    if isinstance(source, pa.Table):
        yield from source.to_batches()
    elif isinstance(source, pa.RecordBatch):
        yield source
    elif isinstance(source, pa.RecordBatchReader):
        yield from source
    elif hasattr(source, "__arrow_c_stream__"):
        yield from pa.RecordBatchReader.from_stream(source)
    elif isinstance(source, Iterable):
        for b in source:
            if isinstance(b, pa.RecordBatch):
                yield b
            elif isinstance(b, pa.Table):
                yield from b.to_batches()
            else:
                try:
                    yield pa.record_batch(b)
                except (TypeError, pa.ArrowException) as e:
                    raise input_error(table, "*", f"expected record batches, got {type(b).__name__} ({e})") from None
    else:
        raise input_error(table, "*", f"expected a record batch reader or an iterable of batches, got {type(source).__name__}")


def _error(table: str, column: str, problem: str, offenders: list[str], count: int) -> MarginInputError:
    """A MarginInputError worded and attributed like the engine's (``count`` offenders in all,
    the first few listed)."""
    message = f"{table}.{column}: {problem}"
    if count:
        first = f", first {len(offenders)}" if count > len(offenders) else ""
        message += f" ({count} offending{first}: {', '.join(offenders)})"
    err = MarginInputError(message)
    err.table, err.column, err.problem, err.offenders, err.count = table, column, problem, offenders, count
    return err


def _with_rows_shifted(e: MarginInputError, at: int) -> MarginInputError:
    """The engine's error for a slice, its ``row N`` offenders counted from the stream's start."""
    offenders = [re.sub(r"^row (\d+)", lambda m: f"row {int(m[1]) + at}", o) for o in e.offenders]
    return _error(e.table, e.column, e.problem, offenders, e.count)


class _Cursor:
    """The rows of one stream not yet margined, read in coalesced blocks and checked."""

    def __init__(self, source: Any, table: str):
        self.table = table
        if _consumed_before(source):
            raise input_error(table, "*", "this reader or iterator was already read to its end; pass a fresh one")
        self.source = source
        self.one_shot = _one_shot(source)
        self.it = _batches(source, table)
        self.schema: pa.Schema | None = None
        self.buffer: pa.Table | None = None  # rows read and not yet taken
        self.offset = 0  # stream row of the buffer's first row
        self.rows_read = 0
        self.batches_read = 0
        self.last: Any = None  # account_id of the last row read
        self.done = False

    @property
    def buffered(self) -> int:
        return self.buffer.num_rows if self.buffer is not None else 0

    def _conform(self, batch: pa.RecordBatch, at: int) -> pa.RecordBatch:
        """The batch with the first batch's schema; another set of columns or types raises
        (naming the batch and ``at``, the stream row of its first row)."""
        if self.schema is None:
            if batch.schema.get_field_index("account_id") < 0:
                raise input_error(self.table, "account_id", f"missing column (the table has: {', '.join(batch.schema.names)})")
            self.schema = batch.schema
            return batch
        if batch.schema.equals(self.schema):
            return batch
        column = schema_difference(self.schema, batch.schema)
        if column == "*":  # the same columns, in another order or nullability
            return pa.RecordBatch.from_arrays([batch.column(n) for n in self.schema.names], schema=self.schema)
        raise input_error(
            self.table, column,
            f"batch {self.batches_read} (from stream row {at}) has another schema than the first batch: "
            f"{_describe(self.schema, batch.schema, column)}",
        )  # fmt: skip

    def _read(self, rows: int | None = None, past: Any = None) -> None:
        """Reads until ``rows`` more rows are read, or the rows read are past the account id
        ``past``, or the stream ends; appends them to the buffer. Small batches are concatenated
        in groups as they come (arrow's concatenation costs microseconds per piece: in groups of
        256 it is ~2x faster on one-row batches than all at once), the groups once at the end;
        ``past`` is checked once per group, so a read may go up to a group beyond it."""
        groups: list[pa.Table] = []
        group: list[pa.RecordBatch] = []
        got = in_group = 0
        for batch in self.it:
            batch = self._conform(batch, self.rows_read + got + in_group)
            self.batches_read += 1
            if batch.num_rows == 0:
                continue
            group.append(batch)
            in_group += batch.num_rows
            if len(group) < _GROUP and in_group < _GROUP_ROWS and (rows is None or got + in_group < rows):
                continue
            groups.append(self._concat(group))
            got, group, in_group = got + in_group, [], 0
            if (rows is not None and got >= rows) or (past is not None and _last_id(groups[-1]) > past):
                break
        else:
            self._end()
            if group:
                groups.append(self._concat(group))
        if groups:
            block = pa.concat_tables(groups) if len(groups) > 1 else groups[0]
            self._check(block)
            self.rows_read += block.num_rows
            pieces = [self.buffer, *groups] if self.buffered else groups
            # one copy into the new buffer (a lone piece is used as it is)
            self.buffer = pa.concat_tables(pieces).combine_chunks() if len(pieces) > 1 else pieces[0]

    def _concat(self, batches: list[pa.RecordBatch]) -> pa.Table:
        table = pa.Table.from_batches(batches, schema=self.schema)
        return table.combine_chunks() if len(batches) > 1 else table

    def _end(self) -> None:
        self.done = True
        if self.one_shot and self.batches_read == 0:
            raise input_error(
                self.table, "*",
                "the stream yielded no batch at all: an exhausted or closed reader? (pass an empty input "
                "as a Table, a list, or a reader with one empty batch)",
            )  # fmt: skip
        if self.one_shot:
            try:
                _CONSUMED.add(self.source)
            except TypeError:  # not weakly referenceable
                pass

    def _check(self, block: pa.Table) -> None:
        """Null or out-of-order account ids in a new block (rows counted from the stream's start)."""
        ids = block.column("account_id").combine_chunks()
        at = self.rows_read
        if ids.null_count:
            rows = pc.indices_nonzero(pc.is_null(ids)).to_pylist()
            raise _error(self.table, "account_id", "null values are not allowed", [f"row {at + r}" for r in rows[:10]], len(rows))
        if self.last is not None:  # each row against the one before it, the first against the last read
            before, after, first = pa.concat_arrays([pa.array([self.last], ids.type), ids.slice(0, len(ids) - 1)]), ids, 0
        else:
            before, after, first = ids.slice(0, len(ids) - 1), ids.slice(1), 1
        descending = pc.less(after, before)
        if pc.any(descending).as_py():
            rows = pc.indices_nonzero(descending).to_pylist()
            offenders = [f"row {at + first + r}: {after[r].as_py()} after {before[r].as_py()}" for r in rows[:10]]
            raise _error(self.table, "account_id", "streamed rows must be sorted by account_id", offenders, len(rows))
        self.last = ids[-1].as_py()

    def fill(self, rows: int) -> None:
        """Reads until at least ``rows`` rows are buffered or the stream ends."""
        if not self.done and self.buffered < rows:
            self._read(rows=rows - self.buffered)

    def take_through(self, account: Any) -> tuple[pa.Table, int]:
        """All rows with account_id <= account (reading on until the stream is past it), and
        the stream row of the first of them."""
        if not self.done and (not self.buffered or self.last <= account):
            self._read(past=account)
        at = self.offset
        if not self.buffered:
            return (self.schema.empty_table() if self.schema else _EMPTY[self.table]()), at
        assert self.buffer is not None
        ids = self.buffer.column("account_id")
        cut = int(pc.sum(pc.less_equal(ids, pa.scalar(account, ids.type))).as_py() or 0)
        taken, rest = self.buffer.slice(0, cut), self.buffer.slice(cut)
        if 0 < rest.num_rows < cut:  # a short rest copied out, so the slice's buffers can be freed
            rest = pa.Table.from_arrays([pa.concat_arrays(c.chunks) for c in rest.columns], schema=rest.schema)
        self.buffer = rest
        self.offset += cut
        return taken, at

    def account_at(self, rows: int) -> Any:
        """The account id of the buffer's row ``rows - 1`` (its last row if it holds fewer)."""
        assert self.buffer is not None
        return self.buffer.column("account_id")[min(rows, self.buffered) - 1].as_py()


def _last_id(batch: pa.Table) -> Any:
    last = batch.column("account_id")[-1].as_py()
    return last if last is not None else float("inf")  # stop reading: the check reports the null


def _describe(expected: pa.Schema, got: pa.Schema, column: str) -> str:
    if got.get_field_index(column) < 0:
        return f"column {column} is missing"
    if expected.get_field_index(column) < 0:
        return f"column {column} is new"
    return f"column {column} is {got.field(column).type}, was {expected.field(column).type}"


def _margin_slice(book: api.Book, market: api.Market, positions: tuple[pa.Table, int], balances: tuple[pa.Table, int], **options: Any) -> pa.Table:
    (p, p_at), (b, b_at) = positions, balances
    try:
        return api.margin(book, p, b, market, **options)
    except MarginInputError as e:
        at = {"positions": p_at, "balances": b_at}.get(getattr(e, "table", None) or "")
        if not at:
            raise
        raise _with_rows_shifted(e, at) from None


def margin_batches(
    book: api.Book,
    positions: Any,
    balances: Any,
    market: api.Market,
    *,
    model: api.Model = "standard",
    threads: int | None = None,
    rows_per_slice: int = 2_000_000,
) -> Iterator[pa.Table]:
    """Yields margin results (the columns of :func:`margin_engine.margin`) slice by slice for
    positions and balances streams sorted by ``account_id``. Concatenated, the slices equal
    ``me.margin`` on the whole book.

    Reads the columns :func:`margin_engine.margin` reads (positions: ``account_id``,
    ``instrument``, ``quantity`` [, ``entry_price``]; balances: ``account_id``, ``asset``,
    ``amount``). A slice holds about ``rows_per_slice`` positions (more if one account has
    more). See the module docstring for what is checked."""
    if not isinstance(rows_per_slice, int) or rows_per_slice < 1:
        raise input_error("margin_batches", "rows_per_slice", f"must be a positive integer, got {rows_per_slice!r}")
    pos, bal = _Cursor(positions, "positions"), _Cursor(balances, "balances")
    while True:
        pos.fill(rows_per_slice)
        if pos.buffered:  # the slice ends with the account of its rows_per_slice-th position
            boundary = pos.account_at(rows_per_slice)
        else:  # positions exhausted: the accounts that hold only balances
            bal.fill(rows_per_slice)
            if not bal.buffered:
                break
            boundary = bal.account_at(rows_per_slice)
        p, b = pos.take_through(boundary), bal.take_through(boundary)
        yield _margin_slice(book, market, p, b, model=model, threads=threads)
