"""Reading and writing a book as a directory of Parquet files.

Layout (what ``margin-engine generate`` writes and ``run`` / ``scan`` read)::

    DIR/instruments.parquet  assets.parquet  positions.parquet  balances.parquet
        index_prices.parquet marks.parquet   [margin_tiers.parquet] [risk_params.parquet]
        meta.json            {"valuation_time": "2026-11-25T08:00:00+00:00"}

Positions and balances are memory-mapped, so a run reads them without copying them twice.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from margin_engine._core import MarginInputError

REQUIRED = ("instruments", "assets", "positions", "balances", "index_prices", "marks")
OPTIONAL = ("margin_tiers", "risk_params")


@dataclasses.dataclass
class BookTables:
    """The input tables of one book and its market."""

    instruments: pa.Table
    assets: pa.Table
    positions: pa.Table
    balances: pa.Table
    index_prices: pa.Table
    marks: pa.Table
    valuation_time: dt.datetime
    margin_tiers: pa.Table | None = None
    risk_params: pa.Table | None = None

    @property
    def nbytes(self) -> int:
        tables: list[Any] = [getattr(self, f.name) for f in dataclasses.fields(self)]
        return sum(t.nbytes for t in tables if isinstance(t, pa.Table))

    def book(self) -> Any:
        from margin_engine.api import Book

        return Book(self.instruments, self.assets, self.risk_params, self.margin_tiers)

    def market(self) -> Any:
        from margin_engine.api import Market

        return Market(self.index_prices, self.marks, self.valuation_time)


def _read_single_chunk(path: Path) -> pa.Table:
    """A Parquet file as a table with one chunk per column.

    A Parquet read comes in one chunk per row group; the engine reads a single-chunk float or
    integer column in place but has to concatenate a chunked one on every call. So the columns
    are combined here, once, one column at a time (so the read never holds a second copy of the
    whole table), each column's chunks handed back to the OS before the next is read (pyarrow's
    allocator keeps freed memory otherwise)."""
    parquet = pq.ParquetFile(path, memory_map=True)
    if parquet.metadata.num_row_groups <= 1:
        return parquet.read()
    columns = []
    for name in parquet.schema_arrow.names:
        chunked = parquet.read(columns=[name])
        columns.append(chunked.combine_chunks().column(0))
        del chunked
        pa.default_memory_pool().release_unused()
    return pa.Table.from_arrays(columns, schema=parquet.schema_arrow)


def read_book(directory: str | Path, rows: bool = True) -> BookTables:
    """Reads a book directory (see the module docstring). With ``rows=False`` positions and
    balances are not read (empty tables of their schema): for streaming them batch by batch."""
    d = Path(directory)
    missing = [name for name in REQUIRED if not (d / f"{name}.parquet").exists()]
    if missing or not (d / "meta.json").exists():
        raise MarginInputError(
            f"{d}: not a book directory (missing {', '.join(f'{m}.parquet' for m in missing) or 'meta.json'})"
        )
    tables = {
        name: _read_single_chunk(d / f"{name}.parquet")
        if rows or name not in ("positions", "balances")
        else pq.read_schema(d / f"{name}.parquet").empty_table()
        for name in REQUIRED
    }
    optional = {
        name: pq.read_table(d / f"{name}.parquet") for name in OPTIONAL if (d / f"{name}.parquet").exists()
    }
    # the Parquet reader's scratch stays in pyarrow's pool unless handed back (~90 MB at 1M accounts)
    pa.default_memory_pool().release_unused()
    meta = json.loads((d / "meta.json").read_text())
    valuation_time = dt.datetime.fromisoformat(meta["valuation_time"])
    return BookTables(valuation_time=valuation_time, **tables, **optional)


def write_book(tables: BookTables, directory: str | Path) -> None:
    """Writes a book directory (see the module docstring)."""
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    for name in REQUIRED + OPTIONAL:
        table = getattr(tables, name)
        if table is not None:
            pq.write_table(table, d / f"{name}.parquet")
    (d / "meta.json").write_text(json.dumps({"valuation_time": tables.valuation_time.isoformat()}))
