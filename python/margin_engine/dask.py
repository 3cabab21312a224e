"""The engine over Dask DataFrames: the same rows as the in-memory calls, bit for bit.

``margin_engine.dask.margin``, :func:`liquidation_scan` and :func:`greeks` take the in-memory
functions' arguments with the account tables as Dask DataFrames and return a lazy Dask
DataFrame of the engine's columns (Arrow-backed pandas dtypes: ``uint64[pyarrow]`` ids,
``double[pyarrow]``, ``string[pyarrow]``, nulls kept as nulls), one partition per shuffle
partition; ``.compute()`` runs it.

How it runs (``docs/distributed.md``):

1. Each table gets a sequence column (partition number << 40 | row in the partition: the row's
   place in its DataFrame) and is shuffled with ``shuffle(on="account_id", npartitions=n)``.
   Both tables are hashed alike, so partition ``i`` of the positions and partition ``i`` of the
   balances hold the same accounts (the co-partitioning Dask's hash joins rely on), and
   ``map_partitions`` pairs them without aligning divisions.
2. A task turns its two partitions into Arrow tables (zero-copy for Arrow-backed columns),
   sorts each by (account_id, sequence) so an account's fills are summed in input order as in
   memory, and calls the engine once on the whole partition; the result goes back as
   Arrow-backed pandas (zero-copy).
3. The book and the market are Arrow IPC bytes in one ``dask.delayed`` payload: one key of the
   graph, sent once to each worker; each worker process rebuilds the Book and Market at its
   first task and keeps them, keyed by the payload's digest.

Why Dask rather than Ray Data here: after ``shuffle(on=...)`` a Dask partition is guaranteed
to hold every row of its accounts and ``map_partitions`` sees it whole; Ray Data's
``map_batches`` gives no such guarantee after a keyed repartition (blocks are split and
coalesced into batches), only ``groupby(...).map_groups`` does, one call per group; Ray's
batches are Arrow, but the install (~260 MB, a cluster runtime to start) costs more than
Dask's (~26 MB, pure Python). ``docs/distributed.md`` has the numbers.

Requirements: ``pip install 'margin-engine[dask]'`` (``dask[dataframe]``), margin-engine on
every worker. Both tables' ``account_id`` of one signedness. A partition is margined in one
engine call, so it must fit in a worker's memory (choose ``partitions`` accordingly).

>>> import pandas as pd, pyarrow as pa, dask.dataframe as dd, margin_engine as me
>>> import margin_engine.dask as med
>>> book = me.Book(
...     pa.table({"instrument": ["BTC-PERP"], "kind": ["perpetual"], "underlying": ["BTC"],
...               "multiplier": [1.0], "initial_margin_rate": [0.02], "maintenance_margin_rate": [0.01]}),
...     pa.table({"asset": ["USD"], "price": [1.0], "initial_weight": [1.0], "maintenance_weight": [1.0],
...               "initial_liability_weight": [1.0], "maintenance_liability_weight": [1.0]}))
>>> market = me.Market(pa.table({"underlying": ["BTC"], "index_price": [50_000.0]}),
...                    pa.table({"instrument": ["BTC-PERP"], "mark_price": [50_000.0]}), "2025-01-01")
>>> positions = dd.from_pandas(pd.DataFrame({"account_id": [1, 2], "instrument": ["BTC-PERP"] * 2,
...                                          "quantity": [1.0, -2.0]}), npartitions=2)
>>> balances = dd.from_pandas(pd.DataFrame({"account_id": [1, 2], "asset": ["USD"] * 2,
...                                         "amount": [2_000.0, 500.0]}), npartitions=1)
>>> m = med.margin(book, positions, balances, market).compute().sort_values("account_id")
>>> m[["account_id", "initial_margin", "status"]].values.tolist()
[[1, 1000.0, 'healthy'], [2, 2000.0, 'liquidatable']]
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pyarrow as pa

from margin_engine import _distributed, api
from margin_engine._inputs import input_error

try:
    import dask
    import dask.dataframe as dd
    import pandas as pd
except ImportError as e:  # pragma: no cover - exercised only without dask
    raise ImportError("margin_engine.dask needs dask[dataframe]: pip install 'margin-engine[dask]'") from e

__all__ = ["greeks", "liquidation_scan", "margin"]

_SEQ = "_me_seq"
_REQUIRED = {"positions": ("account_id", "instrument", "quantity"), "balances": ("account_id", "asset", "amount")}


@dataclasses.dataclass(frozen=True)
class _Spec:
    """What each task needs besides its partitions and the payload (pickled into the graph)."""

    op: str
    options: tuple[tuple[str, Any], ...]
    digest: str


def _arrow(part: pd.DataFrame) -> pa.Table:
    """A partition as Arrow, its rows in (account_id, sequence) order, without the sequence."""
    table = pa.Table.from_pandas(part, preserve_index=False)
    table = table.sort_by([("account_id", "ascending"), (_SEQ, "ascending")])
    return table.drop_columns([_SEQ])


def _pandas(table: pa.Table) -> pd.DataFrame:
    return table.to_pandas(types_mapper=pd.ArrowDtype)


def _task(positions: pd.DataFrame, balances: pd.DataFrame | None, payload: bytes, spec: _Spec, partition_info: Any = None) -> pd.DataFrame:
    book, market = _distributed.engine(_distributed.Shipped(payload, spec.digest))
    p = _arrow(positions)
    b = _arrow(balances) if balances is not None else None
    number = partition_info.get("number", "?") if isinstance(partition_info, dict) else "?"
    result = _distributed.call_in(f"Dask partition {number}", spec.op, dict(spec.options), book, market, p, b)
    return _pandas(result)


def _with_sequence(part: pd.DataFrame, order: str | None, partition_info: Any = None) -> pd.DataFrame:
    if order is not None and order in part.columns:
        sequence = part[order].to_numpy(dtype=np.int64)
    else:
        number = int(partition_info["number"]) if isinstance(partition_info, dict) else 0
        sequence = (np.int64(number) << np.int64(40)) + np.arange(len(part), dtype=np.int64)
    return part.assign(**{_SEQ: sequence})


def _check_frame(df: Any, table: str) -> Any:
    if not isinstance(df, dd.DataFrame):
        raise input_error(table, "*", f"expected a Dask DataFrame, got {type(df).__name__}")
    for column in _REQUIRED[table]:
        if column not in df.columns:
            raise input_error(table, column, f"missing column (the DataFrame has: {', '.join(map(str, df.columns))})")
    kind = np.dtype(_numpy_dtype(df.dtypes["account_id"])).kind
    if kind not in "iu":
        raise input_error(table, "account_id", f"expected an integer column, got {df.dtypes['account_id']}")
    return df


def _numpy_dtype(dtype: Any) -> Any:
    return dtype.numpy_dtype if hasattr(dtype, "numpy_dtype") else dtype


def _same_ids(positions: Any, balances: Any) -> tuple[Any, Any]:
    """Both tables' account ids of one dtype, so that they hash alike: int64 for two signed
    types, uint64 for two unsigned ones; a signed and an unsigned one is an error."""
    a, b = (np.dtype(_numpy_dtype(df.dtypes["account_id"])) for df in (positions, balances))
    if a == b:
        return positions, balances
    if a.kind != b.kind:
        raise input_error("balances", "account_id", f"type {b} and positions.account_id's {a} hash differently: cast one to the other's")
    common = "int64" if a.kind == "i" else "uint64"
    return positions.astype({"account_id": common}), balances.astype({"account_id": common})


def _prepared(df: Any, order: str | None, partitions: int) -> Any:
    meta = df._meta.assign(**{_SEQ: np.array([], dtype=np.int64)})
    return df.map_partitions(_with_sequence, order, meta=meta).shuffle(on="account_id", npartitions=partitions)


def _run(op: str, book: api.Book, market: api.Market, positions: Any, balances: Any, options: dict[str, Any], partitions: Any, order: Any) -> Any:
    if order is not None and not isinstance(order, str):
        raise input_error("arguments", "order", f"must be a column name or None, got {order!r}")
    positions = _check_frame(positions, "positions")
    if balances is not None:
        positions, balances = _same_ids(positions, _check_frame(balances, "balances"))
    n = _distributed.positive_int(partitions, "partitions", optional=True)
    n = n or max(positions.npartitions, balances.npartitions if balances is not None else 1)
    # the output's schema: the engine on empty partitions typed as the tasks will see them
    empty_p = _arrow(_with_sequence(positions._meta, order))
    empty_b = _arrow(_with_sequence(balances._meta, order)) if balances is not None else None
    meta = _pandas(_distributed.call(op, options, book, market, empty_p, empty_b))
    data = _distributed.payload({None: book}, {None: market})
    shipped = _distributed.Shipped.of(data)
    payload = dask.delayed(data, pure=True, name=f"margin-engine-payload-{shipped.digest[:16]}")
    spec = _Spec(op, tuple(options.items()), shipped.digest)
    p = _prepared(positions, order, n)
    b = _prepared(balances, order, n) if balances is not None else None
    return dd.map_partitions(_task, p, b, payload, spec, meta=meta, align_dataframes=False, enforce_metadata=False)


def margin(
    book: api.Book, positions: Any, balances: Any, market: api.Market, *,
    model: api.Model = "standard", threads: int | None = 1, partitions: int | None = None, order: str | None = None,
) -> Any:  # fmt: skip
    """:func:`margin_engine.margin` over Dask DataFrames: one row per account in either table,
    the same columns and values bit for bit. Reads the columns :func:`margin_engine.margin`
    reads. ``partitions``: shuffle partitions (default: the larger input's count); ``threads``:
    engine threads per task (default 1: Dask's workers are the parallelism; never changes a
    result); ``order``: a column giving each table's row order for the netting sums (default:
    the DataFrame's own order)."""
    options = _distributed.options_of("margin", book, market, model, threads)
    return _run("margin", book, market, positions, balances, options, partitions, order)


def liquidation_scan(
    book: api.Book, positions: Any, balances: Any, market: api.Market, *,
    model: api.Model = "standard", stress: dict[str, float] | None = None, distance: bool = False,
    threads: int | None = 1, partitions: int | None = None, order: str | None = None,
) -> Any:  # fmt: skip
    """:func:`margin_engine.liquidation_scan` over Dask DataFrames (each partition in the queue
    order; ``compute()`` and sort for the whole queue). Options as in :func:`margin` and
    :func:`margin_engine.liquidation_scan`."""
    options = _distributed.options_of("liquidation_scan", book, market, model, threads, stress, distance)
    return _run("liquidation_scan", book, market, positions, balances, options, partitions, order)


def greeks(
    book: api.Book, positions: Any, market: api.Market, *,
    threads: int | None = 1, partitions: int | None = None, order: str | None = None,
) -> Any:  # fmt: skip
    """:func:`margin_engine.greeks` over a Dask DataFrame of positions. Options as in :func:`margin`."""
    options = _distributed.options_of("greeks", book, market, "standard", threads)
    return _run("greeks", book, market, positions, None, options, partitions, order)
