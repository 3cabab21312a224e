"""The engine over Apache Spark DataFrames: the same rows as the in-memory calls, bit for bit.

``margin_engine.spark.margin``, :func:`liquidation_scan` and :func:`greeks` take the in-memory
functions' arguments (a :class:`~margin_engine.Book`, the account tables, a
:class:`~margin_engine.Market`, the same keyword options), with the account tables as Spark
DataFrames, and return a Spark DataFrame of the engine's columns (``account_id`` as ``bigint``:
Spark has no unsigned type). Nothing runs until an action (``collect``, ``write``, ``count``).

How it runs (``docs/distributed.md``):

1. **One tagged stream.** Positions and balances are unioned into one DataFrame: ``account_id``,
   a tag (0 = position, 1 = balance), a sequence number (the row's place in its DataFrame:
   ``monotonically_increasing_id()``, or the ``order`` column) and each table's own columns
   under a prefix (``p_instrument``, ``b_amount``, ...). One shuffle instead of two.
2. **Accounts meet in one task.** ``repartition(partitions, "account_id")`` (hash) then
   ``sortWithinPartitions("account_id", tag, sequence)``: every row of an account lands in one
   partition, contiguous, positions before balances, each in its DataFrame's order (the engine
   sums an account's fills in row order, so the order is what makes the sums bit-identical).
3. **Arrow all the way.** ``mapInArrow`` hands each task its partition as Arrow record batches
   (``spark.sql.execution.arrow.maxRecordsPerBatch`` rows each). The task buffers batches until
   it holds ``rows_per_slice`` rows, cuts the buffer before the last account (which may go on in
   the next batch), splits the slice by tag into a positions and a balances table and margins it
   with the engine; an account of any size is margined whole, in one call. Memory per task is
   about one slice, whatever the partition's size.
4. **Book and market broadcast once.** Their tables travel as Arrow IPC bytes in one Spark
   broadcast variable (fetched once per executor); each Python worker process rebuilds the
   :class:`~margin_engine.Book` and :class:`~margin_engine.Market` at its first batch and keeps
   them, keyed by the payload's digest, for every later batch and task (Spark reuses Python
   workers: ``spark.python.worker.reuse``, on by default).

:func:`margin_by_date` margins every account at every date of a dict of dated books and
markets in one job; :func:`backtest` is :func:`margin_engine.backtest` with the accounts in
Spark, its dates margined by one such job.

Why ``mapInArrow`` and not ``groupBy("account_id").applyInArrow`` or a cogroup: those call the
function once per group (per account: a Python call and an engine call for each of millions of
accounts) and load each group whole; grouping by a coarser bucket instead loads a whole bucket
into memory and sorts both tables. The tagged union streams a partition in bounded memory with
one shuffle and a few engine calls per task.

Requirements: ``margin-engine`` and ``pyarrow`` installed on every executor (``pip install
'margin-engine[spark]'`` on the driver; ship the wheel to the cluster, ``docs/distributed.md``);
account ids below 2**63. Engine errors (a bad value in a row) surface when the action runs, as
Spark's ``PythonException`` carrying the :class:`~margin_engine.MarginInputError` message and
the slice's account range; missing columns and wrong column types are caught at the call.

A two-account book on a local Spark:

>>> import pyarrow as pa, margin_engine as me, margin_engine.spark as mes
>>> from pyspark.sql import SparkSession
>>> spark = SparkSession.builder.master("local[1]").getOrCreate()  # doctest: +SKIP
>>> book = me.Book(
...     pa.table({"instrument": ["BTC-PERP"], "kind": ["perpetual"], "underlying": ["BTC"],
...               "multiplier": [1.0], "initial_margin_rate": [0.02], "maintenance_margin_rate": [0.01]}),
...     pa.table({"asset": ["USD"], "price": [1.0], "initial_weight": [1.0], "maintenance_weight": [1.0],
...               "initial_liability_weight": [1.0], "maintenance_liability_weight": [1.0]}))
>>> market = me.Market(pa.table({"underlying": ["BTC"], "index_price": [50_000.0]}),
...                    pa.table({"instrument": ["BTC-PERP"], "mark_price": [50_000.0]}), "2025-01-01")
>>> positions = spark.createDataFrame([(1, "BTC-PERP", 1.0), (2, "BTC-PERP", -2.0)],
...                                   "account_id long, instrument string, quantity double")  # doctest: +SKIP
>>> balances = spark.createDataFrame([(1, "USD", 2_000.0), (2, "USD", 500.0)],
...                                  "account_id long, asset string, amount double")  # doctest: +SKIP
>>> m = mes.margin(book, positions, balances, market, ordered=True)  # doctest: +SKIP
>>> [(r.account_id, r.initial_margin, r.status) for r in m.collect()]  # doctest: +SKIP
[(1, 1000.0, 'healthy'), (2, 2000.0, 'liquidatable')]
"""

from __future__ import annotations

import collections
import dataclasses
import importlib
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from margin_engine import _distributed, api
from margin_engine._inputs import check_flag, input_error

try:
    from pyspark.sql import Column, DataFrame
    from pyspark.sql import functions as F
    from pyspark.sql import types as T
    from pyspark.sql.pandas.types import from_arrow_schema, to_arrow_schema
except ImportError as e:  # pragma: no cover - exercised only without pyspark
    raise ImportError(
        "margin_engine.spark needs pyspark, which is not installed: pip install 'margin-engine[spark]'"
    ) from e

__all__ = ["backtest", "greeks", "liquidation_scan", "margin", "margin_by_date"]

_TAG, _SEQ, _KEY = "_me_tag", "_me_seq", "_me_key"  # internal columns of the tagged stream
_POSITION, _BALANCE = 0, 1
_P, _B = "p_", "b_"  # prefixes of the positions' and the balances' own columns

_INTEGRAL = (T.ByteType, T.ShortType, T.IntegerType, T.LongType)
_NUMERIC = (*_INTEGRAL, T.FloatType, T.DoubleType)  # the engine reads no decimals: cast them to double
# the columns the engine reads, and the Spark types it can take them as
_REQUIRED = {
    "positions": {"account_id": _INTEGRAL, "instrument": (T.StringType, *_INTEGRAL), "quantity": _NUMERIC},
    "balances": {"account_id": _INTEGRAL, "asset": (T.StringType,), "amount": _NUMERIC},
}
_OPTIONAL = {"positions": {"entry_price": _NUMERIC, "unsettled_funding": _NUMERIC}, "balances": {}}


# ----------------------------------------------------------------------------------------------
# Shipping the book and the markets: one broadcast, rebuilt once per worker (_distributed)
# ----------------------------------------------------------------------------------------------

_DRIVER_BROADCASTS: collections.OrderedDict[tuple[str, str], Any] = collections.OrderedDict()


def _ship(spark: Any, books: dict[Any, api.Book], markets: dict[Any, api.Market]) -> _distributed.Shipped:
    data = _distributed.payload(books, markets)
    try:
        sc = spark.sparkContext
    except Exception:  # Spark Connect: no SparkContext, no broadcast; the bytes go with the function
        return _distributed.Shipped.of(data)
    shipped = _distributed.Shipped.of(data)
    key = (sc.applicationId, shipped.digest)  # a broadcast lives as long as its application
    if key not in _DRIVER_BROADCASTS:  # a repeated call with the same book and market reuses it
        _DRIVER_BROADCASTS[key] = sc.broadcast(data)
        while len(_DRIVER_BROADCASTS) > 16:
            _DRIVER_BROADCASTS.popitem(last=False)
    _DRIVER_BROADCASTS.move_to_end(key)
    return _distributed.Shipped(_DRIVER_BROADCASTS[key], shipped.digest)


# ----------------------------------------------------------------------------------------------
# The task: a sorted partition in, engine results out
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Job:
    """Everything one ``mapInArrow`` task needs (pickled with the function)."""

    op: str  # "margin", "liquidation_scan" or "greeks"
    shipped: _distributed.Shipped
    options: tuple[tuple[str, Any], ...]
    positions: tuple[tuple[str, str], ...]  # (column in the stream, column for the engine)
    balances: tuple[tuple[str, str], ...]
    output: pa.Schema  # the Arrow schema Spark expects back
    rows_per_slice: int
    key: str | None = None  # a column keying the book and market of each row (a date); None: one
    extra: tuple[str, ...] = ()  # output columns copied from the key (the backtest's date)
    key_name: str = "date"  # the user's name of the key column, for errors
    dates: tuple[int, ...] = ()  # without a key column: margin every slice at each of these keys


def _group_start(columns: list[np.ndarray]) -> int:
    """The row where the last group (the run of rows equal to the last row in every column,
    a suffix of sorted rows) starts."""
    same = np.ones(len(columns[0]), dtype=bool)
    for c in columns:
        same &= c == c[-1]
    return int(np.argmax(same))


def _slices(batches: Iterable[pa.RecordBatch], job: _Job) -> Iterator[pa.Table]:
    """The partition's rows in tables of about ``rows_per_slice`` rows, each ending at a group
    boundary (an account; with a key column, a (key, account) pair), the groups whole."""
    keys = ["account_id"] if job.key is None else [job.key, "account_id"]
    pending: list[pa.RecordBatch] = []
    rows = 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        pending.append(batch)
        rows += batch.num_rows
        if rows < job.rows_per_slice:
            continue
        first, last = pending[0], pending[-1]
        if all(first.column(k)[0] == last.column(k)[-1] for k in keys):
            continue  # one group so far (a large account): read on, no copy
        table = pa.Table.from_batches(pending)
        cut = _group_start([table.column(k).to_numpy() for k in keys])
        yield table.slice(0, cut)
        rest = table.slice(cut)
        pending, rows = rest.to_batches(), rest.num_rows
    if pending:
        yield pa.Table.from_batches(pending)


def _runs(table: pa.Table, column: str) -> Iterator[tuple[Any, pa.Table]]:
    """The runs of equal values of a sorted ``column``: (value, rows)."""
    values = table.column(column).to_numpy()
    starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    for s, e in zip(starts, ends):
        yield values[s].item(), table.slice(int(s), int(e - s))


def _side(table: pa.Table, tag: int, columns: tuple[tuple[str, str], ...]) -> pa.Table:
    rows = table.filter(pc.equal(table.column(_TAG), pa.scalar(tag, pa.int8())))
    return pa.table([rows.column(src) for src, _ in columns], names=[dst for _, dst in columns])


def _where(table: pa.Table) -> str:
    ids = table.column("account_id")
    return f"accounts {ids[0].as_py()}..{ids[-1].as_py()} of Spark partition {_partition_id()}"


def _partition_id() -> Any:
    try:
        from pyspark import TaskContext

        context = TaskContext.get()
        return context.partitionId() if context is not None else "?"
    except Exception:  # pragma: no cover - outside a task
        return "?"


def _margin_piece(job: _Job, piece: pa.Table, key: Any) -> pa.Table:
    book, market = _distributed.engine(job.shipped, key, key)
    positions = _side(piece, _POSITION, job.positions)
    balances = _side(piece, _BALANCE, job.balances) if job.op != "greeks" else None
    result = _distributed.call_in(_where(piece), job.op, dict(job.options), book, market, positions, balances)
    for name in job.extra:  # the key's value on every row (the backtest's date)
        result = result.append_column(name, pa.array(np.full(result.num_rows, key), pa.int32()))
    return result.select(job.output.names).cast(job.output)


def _undated(table: pa.Table, column: str) -> Exception:
    rows = table.filter(pc.is_null(table.column(_KEY)))
    tag = rows.column(_TAG)[0].as_py()
    ids = sorted(set(rows.column("account_id").to_pylist()))
    return input_error(
        "positions" if tag == _POSITION else "balances", column,
        "no book and market in `dated` for this date", [f"account {a}" for a in ids[:10]],
    )  # fmt: skip


def _run_partition(job: _Job, batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
    for table in _slices(batches, job):
        table = table.combine_chunks()
        if job.key is not None and table.column(job.key).null_count:
            raise _undated(table, job.key_name)
        pieces = _runs(table, job.key) if job.key is not None else [(None, table)]
        for key, piece in pieces:
            for date in job.dates or (key,):  # rows held constant: the slice at every date
                yield from _margin_piece(job, piece, date).to_batches()


# ----------------------------------------------------------------------------------------------
# The driver: checks, the tagged stream, the plan
# ----------------------------------------------------------------------------------------------


def _check_frame(df: Any, table: str) -> DataFrame:
    if not isinstance(df, DataFrame):
        # Spark Connect's DataFrame is another class; a Connect frame exists only once its module
        # is loaded, so look it up rather than import it (importing pyspark.sql.connect without
        # grpc exits the interpreter when __main__ has no file, as under pytest-xdist or embedding)
        connect = sys.modules.get("pyspark.sql.connect.dataframe")
        if connect is None or not isinstance(df, connect.DataFrame):
            raise input_error(table, "*", f"expected a Spark DataFrame, got {type(df).__name__}")
    fields = {f.name: f.dataType for f in df.schema.fields}
    for column, types in {**_REQUIRED[table], **_OPTIONAL[table]}.items():
        if column not in fields:
            if column in _REQUIRED[table]:
                raise input_error(table, column, f"missing column (the DataFrame has: {', '.join(df.columns)})")
            continue
        kind = fields[column]
        whole = isinstance(kind, T.DecimalType) and kind.scale == 0  # Parquet's uint64 reads as decimal(20,0)
        if not isinstance(kind, types) and not (column == "account_id" and whole):
            raise input_error(table, column, f"Spark type {kind.simpleString()} cannot be read here")
    return df


def _own_columns(df: DataFrame, order: str | None, keep: Iterable[str] = ()) -> list[str]:
    skip = {"account_id", order, *keep}
    return [c for c in df.columns if c not in skip]


def _tagged(df: DataFrame, tag: int, prefix: str, order: str | None, key: Column | None, columns: list[str]) -> DataFrame:
    sequence = F.col(order).cast("long") if order is not None and order in df.columns else F.monotonically_increasing_id()
    selected = [
        F.col("account_id").cast("long").alias("account_id"),
        F.lit(tag).cast("byte").alias(_TAG),
        sequence.alias(_SEQ),
        *[F.col(f"`{c}`").alias(prefix + c) for c in columns],
    ]
    if key is not None:
        selected.insert(0, key.alias(_KEY))
    return df.select(*selected)


def _large_types(spark: Any) -> bool:
    try:
        return str(spark.conf.get("spark.sql.execution.arrow.useLargeVarTypes", "false")).lower() == "true"
    except Exception:  # pragma: no cover
        return False


def _output_schema(empty_result: pa.Table, spark: Any, extra: list[pa.Field] | None = None) -> tuple[T.StructType, pa.Schema]:
    """The Spark schema of the engine's result (uint64 ids as bigint) and the Arrow schema that
    Spark expects the task to return for it."""
    fields = [pa.field(f.name, pa.int64(), f.nullable) if f.name == "account_id" else f for f in empty_result.schema]
    arrow = pa.schema([*(extra or []), *fields])
    spark_schema = from_arrow_schema(arrow)
    return spark_schema, to_arrow_schema(spark_schema, prefers_large_types=_large_types(spark))


def _empty(df: DataFrame, columns: list[str]) -> pa.Table:
    """An empty Arrow table of ``df``'s columns, typed as the task will see them."""
    schema = to_arrow_schema(T.StructType([df.schema[c] for c in columns]))
    return schema.empty_table()


def _plan(
    op: str,
    books: dict[Any, api.Book],
    markets: dict[Any, api.Market],
    positions: DataFrame,
    balances: DataFrame | None,
    options: dict[str, Any],
    *,
    partitions: int | None,
    rows_per_slice: int,
    order: str | None,
    keyed: bool = False,
    key_name: str = "date",
    dates: tuple[int, ...] = (),
) -> DataFrame:
    """The tagged stream, partitioned by account (with ``keyed``: by the ``_KEY`` column that
    both tables then carry, and account) and sorted, mapped through the engine; ``books`` and
    ``markets`` by key (``None`` without ``keyed`` or ``dates``). With ``dates`` (and no key
    column) every slice is margined at each of those keys: rows shuffled once, not per date."""
    spark = positions.sparkSession
    keep = (_KEY,) if keyed else ()
    p_cols = _own_columns(positions, order, keep)
    b_cols = _own_columns(balances, order, keep) if balances is not None else []
    # the engine on empty tables, typed as the tasks will see them, gives the output's schema
    empty_p = _empty(positions, ["account_id", *p_cols])
    empty_b = _empty(balances, ["account_id", *b_cols]) if balances is not None else None
    some = next(iter(books))
    empty = _distributed.call(op, options, books[some], markets[some], empty_p, empty_b)
    dated = keyed or bool(dates)
    spark_schema, arrow_schema = _output_schema(empty, spark, [pa.field(_KEY, pa.int32(), False)] if dated else None)

    key = F.col(_KEY) if keyed else None
    stream = _tagged(positions, _POSITION, _P, order, key, p_cols)
    if balances is not None:
        stream = stream.unionByName(_tagged(balances, _BALANCE, _B, order, key, b_cols), allowMissingColumns=True)
    by = [_KEY, "account_id"] if keyed else ["account_id"]
    stream = stream.repartition(partitions, *by) if partitions else stream.repartition(*by)
    stream = stream.sortWithinPartitions(*by, _TAG, _SEQ)
    job = _Job(
        op=op,
        shipped=_ship(spark, books, markets),
        options=tuple(options.items()),
        positions=(("account_id", "account_id"), *((_P + c, c) for c in p_cols)),
        balances=(("account_id", "account_id"), *((_B + c, c) for c in b_cols)),
        output=arrow_schema,
        rows_per_slice=rows_per_slice,
        key=_KEY if keyed else None,
        extra=(_KEY,) if dated else (),
        key_name=key_name,
        dates=dates,
    )
    return stream.mapInArrow(_partial(job), spark_schema)


def _partial(job: _Job) -> Callable[[Iterator[pa.RecordBatch]], Iterator[pa.RecordBatch]]:
    def run(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        return _run_partition(job, batches)

    return run


def _queue_order(df: DataFrame) -> DataFrame:
    rank = F.lit(len(_distributed.STATUS_RANK))
    for i, status in reversed(list(enumerate(_distributed.STATUS_RANK))):
        rank = F.when(F.col("status") == status, F.lit(i)).otherwise(rank)
    return df.orderBy(rank.asc(), F.col("shortfall").desc(), F.col("account_id").asc())


def _knobs(partitions: Any, rows_per_slice: Any, order: Any, ordered: Any) -> dict[str, Any]:
    if order is not None and not isinstance(order, str):
        raise input_error("arguments", "order", f"must be a column name or None, got {order!r}")
    check_flag(ordered, "ordered")
    return {
        "partitions": _distributed.positive_int(partitions, "partitions", optional=True),
        "rows_per_slice": _distributed.positive_int(rows_per_slice, "rows_per_slice"),
        "order": order,
    }


_OPTIONS_DOC = """
    Spark options: ``partitions`` (default ``spark.sql.shuffle.partitions``): the number of
    hash partitions by ``account_id``; ``rows_per_slice`` (default 500,000): rows a task margins
    per engine call (an account is never split; a larger one is margined whole);
    ``threads`` (default 1): engine threads per task (Spark's task slots are the parallelism;
    set it to ``spark.task.cpus``; it never changes a result); ``order``: a column giving each
    table's row order for the netting sums (default: the DataFrame's own order,
    ``monotonically_increasing_id``); ``ordered``: sort the result as the in-memory call does
    (one more shuffle; without it, each partition's rows are sorted but the partitions are not).
"""


def margin(
    book: api.Book,
    positions: DataFrame,
    balances: DataFrame,
    market: api.Market,
    *,
    model: api.Model = "standard",
    threads: int | None = 1,
    partitions: int | None = None,
    rows_per_slice: int = 500_000,
    order: str | None = None,
    ordered: bool = False,
) -> DataFrame:
    """:func:`margin_engine.margin` over Spark DataFrames: one row per account in either table,
    the same columns and the same values bit for bit (``account_id`` as ``bigint``).

    Reads (Spark types): ``positions``: ``account_id`` (an integral type, >= 0), ``instrument``
    (string or integral, a book key), ``quantity`` (numeric); optional ``entry_price``. Other
    columns travel along and reach the engine as in-memory (extra columns are ignored there).
    ``balances``: ``account_id``, ``asset`` (string), ``amount`` (numeric). The book and the
    market as :func:`margin_engine.margin` reads them.
    {options}
    ``model`` as in :func:`margin_engine.margin`.
    """
    options = _distributed.options_of("margin", book, market, model, threads)
    knobs = _knobs(partitions, rows_per_slice, order, ordered)
    p, b = _check_frame(positions, "positions"), _check_frame(balances, "balances")
    df = _plan("margin", {None: book}, {None: market}, p, b, options, **knobs)
    return df.orderBy("account_id") if ordered else df


def liquidation_scan(
    book: api.Book,
    positions: DataFrame,
    balances: DataFrame,
    market: api.Market,
    *,
    model: api.Model = "standard",
    stress: dict[str, float] | None = None,
    distance: bool = False,
    threads: int | None = 1,
    partitions: int | None = None,
    rows_per_slice: int = 500_000,
    order: str | None = None,
    ordered: bool = False,
) -> DataFrame:
    """:func:`margin_engine.liquidation_scan` over Spark DataFrames: each account's margin row
    plus ``shortfall`` (and with ``distance=True`` ``nearest_move``, ``nearest_underlying``), the
    same values bit for bit. ``ordered=True`` gives the in-memory queue order (bankrupt,
    liquidatable, margin_call, healthy; shortfall descending; account_id).

    Reads the columns :func:`margin` reads, and the assets' ``underlying``. ``stress`` and
    ``distance`` as in :func:`margin_engine.liquidation_scan`.
    {options}
    """
    options = _distributed.options_of("liquidation_scan", book, market, model, threads, stress, distance)
    knobs = _knobs(partitions, rows_per_slice, order, ordered)
    p, b = _check_frame(positions, "positions"), _check_frame(balances, "balances")
    df = _plan("liquidation_scan", {None: book}, {None: market}, p, b, options, **knobs)
    return _queue_order(df) if ordered else df


def greeks(
    book: api.Book,
    positions: DataFrame,
    market: api.Market,
    *,
    threads: int | None = 1,
    partitions: int | None = None,
    rows_per_slice: int = 500_000,
    order: str | None = None,
    ordered: bool = False,
) -> DataFrame:
    """:func:`margin_engine.greeks` over a Spark DataFrame of positions: one row per account ×
    underlying held, the same values bit for bit; ``ordered=True`` sorts by ``account_id`` then
    ``underlying`` as the in-memory call does.

    Reads ``positions`` as :func:`margin` does; the book's instruments and the market as
    :func:`margin_engine.greeks` reads them.
    {options}
    """
    options = _distributed.options_of("greeks", book, market, "standard", threads)
    knobs = _knobs(partitions, rows_per_slice, order, ordered)
    df = _plan("greeks", {None: book}, {None: market}, _check_frame(positions, "positions"), None, options, **knobs)
    return df.orderBy("account_id", "underlying") if ordered else df


for _f in (margin, liquidation_scan, greeks):
    _f.__doc__ = (_f.__doc__ or "").replace("    {options}\n", _OPTIONS_DOC.strip("\n") + "\n")
del _f


def _dated_frame(df: DataFrame, keys: DataFrame, date_column: str) -> DataFrame:
    """``df`` with the ``_KEY`` of each row's date: its own (a daily snapshot; null for a date
    not in ``keys``, an error in the task) or, without a date column, every date (rows held
    constant, replicated)."""
    if date_column in df.columns:
        return df.join(F.broadcast(keys), on=date_column, how="left").drop(date_column)
    return df.crossJoin(F.broadcast(keys.select(_KEY)))


def margin_by_date(
    dated: dict[Any, tuple[api.Book, api.Market]],
    positions: DataFrame,
    balances: DataFrame,
    *,
    date_column: str = "date",
    model: api.Model = "standard",
    threads: int | None = 1,
    partitions: int | None = None,
    rows_per_slice: int = 500_000,
    order: str | None = None,
    ordered: bool = False,
) -> DataFrame:
    """:func:`margin_engine.margin` of every account at every date of ``dated`` in one job, the
    date a partition key: the showcase of a workload past one machine (a backtest's year of
    daily books).

    ``dated``: ``{date: (Book, Market)}``, the dates any values Spark holds as one type
    (``datetime.date``, ``datetime.datetime``, strings, integers), e.g. each day's marks and
    recalibrated risk parameters.

    - ``positions`` (or ``balances``) with a ``date_column``: daily snapshots, each date its own
      rows (a date missing from ``dated`` is a :class:`~margin_engine.MarginInputError` in the
      task; a table without the column is held constant and replicated to every date). The
      stream is keyed by (date, account): hash-partitioned on both, sorted by date, account,
      table and row order; each task margins whole accounts date by date.
    - neither with a ``date_column``: the rows are held constant (as ``me.backtest`` holds them),
      shuffled once by account, and each task margins each slice at every date.

    Each worker process builds a date's book and market once (all of them travel in one
    broadcast).

    Returns ``date_column`` then the columns of :func:`margin_engine.margin`, one row per date ×
    account in that date's tables, each equal bit for bit to ``me.margin(*dated[date],
    ...)`` on the date's rows; ``ordered=True`` sorts by date then account_id. Options as in
    :func:`margin`.
    """
    if not isinstance(dated, dict) or not dated:
        raise input_error("arguments", "dated", "expected a non-empty dict {date: (Book, Market)}")
    dates = sorted(dated)
    for d in dates:
        pair = dated[d]
        if not (isinstance(pair, tuple) and len(pair) == 2):
            raise input_error("arguments", "dated", f"expected (Book, Market) pairs, got {type(pair).__name__} for {d!r}")
    options = _distributed.options_of("margin", *dated[dates[0]], model, threads)
    for d in dates[1:]:
        _distributed.options_of("margin", *dated[d], model, threads)  # every pair a Book and a Market
    if not isinstance(date_column, str):
        raise input_error("arguments", "date_column", f"must be a column name, got {date_column!r}")
    knobs = _knobs(partitions, rows_per_slice, order, ordered)
    p, b = _check_frame(positions, "positions"), _check_frame(balances, "balances")
    spark = p.sparkSession
    keys = spark.createDataFrame([(i, d) for i, d in enumerate(dates)], [_KEY, date_column])
    keys = keys.withColumn(_KEY, F.col(_KEY).cast("int"))
    books = {i: dated[d][0] for i, d in enumerate(dates)}
    markets = {i: dated[d][1] for i, d in enumerate(dates)}
    if date_column in p.columns or date_column in b.columns:  # daily snapshots: (date, account) keys
        p, b = _dated_frame(p, keys, date_column), _dated_frame(b, keys, date_column)
        df = _plan("margin", books, markets, p, b, options, keyed=True, key_name=date_column, **knobs)
    else:  # held constant: shuffled once by account, each slice margined at every date
        df = _plan("margin", books, markets, p, b, options, dates=tuple(books), **knobs)
    engine_columns = [c for c in df.columns if c != _KEY]
    df = df.join(F.broadcast(keys), on=_KEY).select(date_column, *engine_columns)
    return df.orderBy(date_column, "account_id") if ordered else df


# ----------------------------------------------------------------------------------------------
# The backtest: me.backtest with the accounts in Spark DataFrames, every date in one job
# ----------------------------------------------------------------------------------------------

_backtest = importlib.import_module("margin_engine.calibration.backtest")  # the module (its name is also a function's)
_BACKTEST_DATE = "_me_backtest_date"  # the date column of margin_by_date's result (not the user's)


class _SparkAccounts(_backtest.Accounts):
    """The backtest's accounts as Spark DataFrames: every date margined in one
    :func:`margin_by_date` job (rows held constant: shuffled once by account)."""

    def __init__(self, positions: DataFrame, balances: DataFrame, knobs: dict[str, Any]) -> None:
        self.positions, self.balances, self.knobs = positions, balances, knobs

    def instruments(self) -> list[Any]:
        return [r[0] for r in self.positions.select("instrument").distinct().collect()]

    def without(self, instruments: list[Any]) -> tuple[_backtest.Accounts, int]:
        kept = self.positions.filter(~F.col("instrument").isin(instruments))
        return _SparkAccounts(kept, self.balances, self.knobs), self.positions.count() - kept.count()

    def with_entry_prices(self, fill: dict[Any, float]) -> _backtest.Accounts:
        if not fill:
            return self
        # a map literal, not a join: each row stays where it is, so the netting order is kept
        lookup = F.create_map(*[x for k, v in fill.items() for x in (F.lit(k), F.lit(float(v)).cast("double"))])
        filled = lookup[F.col("instrument")]
        if "entry_price" in self.positions.columns:
            filled = F.coalesce(F.col("entry_price").cast("double"), filled)
        return _SparkAccounts(self.positions.withColumn("entry_price", filled), self.balances, self.knobs)

    def margins(
        self, times: list[int], at: Callable[[int], tuple[Any, Any]], model: str, threads: Any,
        progress: Callable[[int, int], None] | None,
    ) -> Iterator[tuple[int, pa.Table]]:  # fmt: skip
        dated = {t: at(t) for t in times}
        df = margin_by_date(dated, self.positions, self.balances, date_column=_BACKTEST_DATE, model=model,
                            threads=1 if threads is None else threads, **self.knobs)  # fmt: skip
        result = df.toArrow().sort_by([(_BACKTEST_DATE, "ascending"), ("account_id", "ascending")])
        dates = result.column(_BACKTEST_DATE).to_numpy()
        for done, t in enumerate(times):
            lo, hi = np.searchsorted(dates, t), np.searchsorted(dates, t, side="right")
            rows = result.slice(int(lo), int(hi - lo)).drop_columns([_BACKTEST_DATE])
            ids = pc.cast(rows.column("account_id"), pa.uint64())  # the in-memory type (Spark's ids are >= 0)
            yield t, rows.set_column(rows.column_names.index("account_id"), "account_id", ids)
            if progress is not None:
                progress(done + 1, len(times))


def backtest(
    book: api.Book,
    positions: DataFrame | str,
    balances: DataFrame | str,
    prices: Any,
    *,
    partitions: int | None = None,
    rows_per_slice: int = 500_000,
    order: str | None = None,
    **options: Any,
) -> _backtest.Backtest:
    """:func:`margin_engine.backtest` of a book whose accounts are Spark DataFrames (or the names
    of Spark tables): the same :class:`~margin_engine.calibration.backtest.Backtest`, bit for bit.

    The dates, each date's book and market (the closes, that date's calibration) and the
    statistics (Kupiec, Christoffersen) are computed on the driver by the in-memory code; the
    margin of every account at every date (and the date a horizon later) runs in one Spark job,
    :func:`margin_by_date` with the rows held constant: positions and balances shuffled once by
    account, each slice margined at every date, all the dates' books and markets in one
    broadcast. The per-date margins come back to the driver (accounts × dates rows), so the
    driver needs memory for them. ``prices`` (in memory) and every keyword of
    :func:`margin_engine.backtest` (``horizon``, ``confidence``, ``method``, ``start``,
    ``end``, ``model``, ``margin``, ``unpriced``, ``progress``, ...) as there; the Spark options
    ``partitions``, ``rows_per_slice`` and ``order`` as in :func:`margin`. Reads the columns
    :func:`margin` reads.
    """
    frames = []
    for df, table in ((positions, "positions"), (balances, "balances")):
        if isinstance(df, str):
            from pyspark.sql import SparkSession

            session = SparkSession.getActiveSession()
            if session is None:
                raise input_error("arguments", table, "a table name needs an active SparkSession")
            df = session.table(df)
        frames.append(_check_frame(df, table))
    knobs = _knobs(partitions, rows_per_slice, order, False)
    return _backtest.backtest(book, _SparkAccounts(frames[0], frames[1], knobs), None, prices, **options)
