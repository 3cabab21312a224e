"""Reading and writing a book as a directory of Parquet files, and writing results safely.

Layout (what ``margin-engine generate`` writes and ``run`` / ``scan`` read)::

    DIR/instruments.parquet  assets.parquet  positions.parquet  balances.parquet
        index_prices.parquet marks.parquet   [margin_tiers.parquet] [risk_params.parquet]
        [isolated_collateral.parquet]
        [orders.parquet]     (resting orders: account_id, instrument, quantity, price)
        meta.json            {"valuation_time": "2026-11-25T08:00:00+00:00"}

Any table may instead be a folder of Parquet files (a partitioned dataset), e.g.
``positions/part-0.parquet, positions/part-1.parquet`` or hive-style ``balances/asset=USD/...``:
its files are read in natural order of their paths (``part-2`` before ``part-10``), files whose
name starts with ``.`` or ``_`` (``_SUCCESS``, ``_metadata``, ``.crc``) are skipped, and hive
partition keys become columns. Single-file positions and balances are memory-mapped, so a run
reads them without copying them twice.

Every result is written through :func:`atomic_path` (or :func:`atomic_directory`): to a
temporary file beside the target, renamed over it only once complete. A failure, Ctrl-C or
SIGTERM (when the CLI's handler turns it into an exception) leaves the previous result as it was
and no temporary file behind.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import errno
import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from margin_engine._core import MarginInputError
from margin_engine._inputs import input_error

REQUIRED = ("instruments", "assets", "positions", "balances", "index_prices", "marks")
OPTIONAL = ("margin_tiers", "risk_params", "isolated_collateral", "orders")


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
    isolated_collateral: pa.Table | None = None
    """Quote collateral of isolated positions (docs/methodology.md §10), when positions have a
    ``margin_mode`` column."""
    orders: pa.Table | None = None
    """Resting orders (``me.margin(..., orders=)``): they add initial margin."""

    @property
    def nbytes(self) -> int:
        tables: list[Any] = [getattr(self, f.name) for f in dataclasses.fields(self)]
        return sum(t.nbytes for t in tables if isinstance(t, pa.Table))

    def book(self, methodology: Any = None) -> Any:
        from margin_engine.api import Book

        return Book(self.instruments, self.assets, self.risk_params, self.margin_tiers, methodology=methodology)

    def market(self) -> Any:
        from margin_engine.api import Market

        return Market(self.index_prices, self.marks, self.valuation_time)


# --------------------------------------------------------------------------------------------
# Reading: one table, a single Parquet file or a folder of them
# --------------------------------------------------------------------------------------------


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def _unreadable(name: str, path: Path, e: BaseException) -> MarginInputError:
    return input_error(name, "*", f"{path}: not a readable Parquet file ({_first_line(e)})")


def _natural_key(path: Path) -> list[Any]:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", path.as_posix())]


def _dataset_files(name: str, folder: Path) -> list[Path]:
    """The data files of a partitioned dataset folder, in natural order of their paths."""
    files = [
        p for p in folder.rglob("*")
        if p.is_file() and not any(part[0] in "._" for part in p.relative_to(folder).parts)
    ]  # fmt: skip
    if not files:
        raise input_error(name, "*", f"{folder}: a dataset folder with no Parquet files")
    return sorted(files, key=lambda p: _natural_key(p.relative_to(folder)))


def table_path(directory: Path, name: str) -> Path | None:
    """``DIR/name.parquet`` or the dataset folder ``DIR/name/``, whichever exists (None if neither)."""
    file, folder = directory / f"{name}.parquet", directory / name
    if file.exists() and folder.is_dir():
        raise input_error(name, "*", f"{directory}: both {file.name} and the folder {name}/ exist; keep one")
    if folder.is_dir():
        return folder
    return file if file.exists() else None


def _dataset(name: str, folder: Path) -> ds.Dataset:
    """A folder's dataset, every file's footer read and its schema checked against the first's
    (so a truncated or foreign file is found before any work)."""
    files = _dataset_files(name, folder)
    schema = None
    for f in files:
        try:
            file_schema = pq.read_schema(f)
        except (pa.ArrowException, OSError) as e:
            raise _unreadable(name, f, e) from None
        if schema is None:
            schema, first = file_schema, f
        elif not file_schema.equals(schema):
            differs = schema_difference(schema, file_schema)
            raise input_error(name, differs, f"{f} has another schema than {first} ({differs})")
    try:
        return ds.dataset([str(f) for f in files], format="parquet", partitioning="hive", partition_base_dir=str(folder))
    except (pa.ArrowException, OSError) as e:
        raise _unreadable(name, folder, e) from None


def schema_difference(expected: pa.Schema, got: pa.Schema) -> str:
    """The first column whose presence or type differs between two schemas ("*" if none:
    they differ at most in column order, nullability or metadata)."""
    for field in expected:
        index = got.get_field_index(field.name)
        if index < 0 or not got.field(index).type.equals(field.type):
            return field.name
    for field in got:
        if expected.get_field_index(field.name) < 0:
            return field.name
    return "*"


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
    return _combine_columns(parquet.schema_arrow, lambda name: parquet.read(columns=[name]))


def _combine_columns(schema: pa.Schema, read_column: Any) -> pa.Table:
    columns = []
    for name in schema.names:
        chunked = read_column(name)
        columns.append(chunked.combine_chunks().column(0))
        del chunked
        pa.default_memory_pool().release_unused()
    return pa.Table.from_arrays(columns, schema=schema)


def read_table(name: str, path: Path) -> pa.Table:
    """One table of a book: a Parquet file or a dataset folder, single-chunk columns."""
    try:
        if path.is_dir():
            dataset = _dataset(name, path)
            return _combine_columns(dataset.schema, lambda column: dataset.to_table(columns=[column]))
        return _read_single_chunk(path)
    except MarginInputError:
        raise
    except (pa.ArrowException, OSError) as e:
        raise _unreadable(name, path, e) from None


def table_schema(name: str, path: Path) -> pa.Schema:
    """The Arrow schema of a table (file footer or dataset), without reading its rows."""
    try:
        return _dataset(name, path).schema if path.is_dir() else pq.read_schema(path)
    except MarginInputError:
        raise
    except (pa.ArrowException, OSError) as e:
        raise _unreadable(name, path, e) from None


def count_rows(name: str, path: Path) -> int:
    """Rows of a table, from the file footers."""
    try:
        files = _dataset_files(name, path) if path.is_dir() else [path]
        return sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    except MarginInputError:
        raise
    except (pa.ArrowException, OSError) as e:
        raise _unreadable(name, path, e) from None


def iter_table_batches(name: str, path: Path, batch_size: int = 1 << 20) -> Iterator[pa.RecordBatch]:
    """A table's rows batch by batch in file order, at least one (maybe empty) batch; memory is
    bounded by a few batches. A file that turns out corrupt while read raises MarginInputError."""
    schema = table_schema(name, path)
    try:
        if path.is_dir():
            # pre_buffer=False and little read-ahead: reading a file's batches must not keep every
            # row group read so far (memory grew by ~6 MB per 1M-row batch on 20M accounts)
            batches = _dataset(name, path).to_batches(
                batch_size=batch_size, fragment_readahead=1, batch_readahead=1,
                fragment_scan_options=ds.ParquetFragmentScanOptions(pre_buffer=False),
            )  # fmt: skip
        else:
            batches = pq.ParquetFile(path, pre_buffer=False).iter_batches(batch_size=batch_size)
        yielded = False
        for batch in batches:
            yielded = True
            yield batch
        if not yielded:
            yield pa.RecordBatch.from_pylist([], schema=schema)
    except (pa.ArrowException, OSError) as e:
        raise _unreadable(name, path, e) from None


def _read_meta(d: Path) -> dt.datetime:
    path = d / "meta.json"
    try:
        meta = json.loads(path.read_text())
        if not isinstance(meta, dict) or not isinstance(meta.get("valuation_time"), str):
            raise ValueError('expected an object like {"valuation_time": "2026-11-25T08:00:00+00:00"}')
        return dt.datetime.fromisoformat(meta["valuation_time"])
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise input_error("meta", "valuation_time", f"{path}: broken meta.json ({_first_line(e)})") from None


def read_book(directory: str | Path, rows: bool = True) -> BookTables:
    """Reads a book directory (see the module docstring). With ``rows=False`` positions and
    balances are not read (empty tables of their schema): for streaming them batch by batch.
    A missing, corrupt or truncated table or a broken ``meta.json`` raises MarginInputError."""
    d = Path(directory)
    if not d.is_dir():
        raise input_error("book", "*", f"{d}: not a book directory (no such directory)")
    paths = {name: table_path(d, name) for name in REQUIRED + OPTIONAL}
    missing = [f"{name}.parquet" for name in REQUIRED if paths[name] is None]
    if missing or not (d / "meta.json").exists():
        raise input_error("book", "*", f"{d}: not a book directory (missing {', '.join(missing) or 'meta.json'})")
    valuation_time = _read_meta(d)
    tables = {
        name: read_table(name, paths[name])
        if rows or name not in ("positions", "balances")
        else table_schema(name, paths[name]).empty_table()
        for name in REQUIRED
    }
    optional = {name: read_table(name, paths[name]) for name in OPTIONAL if paths[name] is not None}
    # the Parquet reader's scratch stays in pyarrow's pool unless handed back (~90 MB at 1M accounts)
    pa.default_memory_pool().release_unused()
    return BookTables(valuation_time=valuation_time, **tables, **optional)


# --------------------------------------------------------------------------------------------
# Writing: atomically, checked before any work
# --------------------------------------------------------------------------------------------


class OutputError(OSError):
    """A result could not be written (the message names the target, not the temporary file)."""


def _special(target: Path) -> bool:
    """An existing device or FIFO (``/dev/null``, a named pipe): written in place, it cannot be renamed over."""
    try:
        mode = target.stat().st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def check_output(target: Path, directory: bool = False) -> None:
    """Raises OutputError if ``target`` cannot be written: its directory is missing or not a
    directory, or the target is a directory (a file target) or a file (a directory target)."""
    parent = target.parent
    if not parent.exists():
        raise OutputError(f"cannot write {target}: directory {parent} does not exist")
    if not parent.is_dir():
        raise OutputError(f"cannot write {target}: {parent} is not a directory")
    if not directory and target.is_dir():
        raise OutputError(f"cannot write {target}: it is a directory")
    if directory and target.exists() and not target.is_dir():
        raise OutputError(f"cannot write {target}: it is a file, not a directory")


# errors of the destination (not of the work done inside the block): these name the target
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM}


def _write_failed(target: Path, e: OSError) -> OutputError:
    reason = e.strerror or _first_line(e)
    if "No space left" in reason or e.errno == errno.ENOSPC:
        reason = "no space left on device"
    return OutputError(f"cannot write {target}: {reason}")


def _is_write_error(e: OSError) -> bool:
    return not isinstance(e, OutputError) and e.errno in _WRITE_ERRNOS


def _chmod_like(tmp: Path, target: Path, default: int) -> None:
    """The permissions the target has, or a plain ``open()`` / ``mkdir()`` would give it
    (the temporary file is made private, 0600)."""
    try:
        mode = target.stat().st_mode & 0o7777
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        mode = default & ~umask
    os.chmod(tmp, mode)


def _remove(path: Path) -> None:
    try:
        shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
    except FileNotFoundError:
        pass


@contextmanager
def _until_committed(tmp: Path, target: Path, commit: Callable[[], None]) -> Iterator[None]:
    """Runs the block; calls ``commit`` when the block ends normally, removes ``tmp`` when the
    block or the commit raises (any exception, KeyboardInterrupt, SystemExit)."""
    try:
        yield
        commit()
    except OSError as e:
        _remove(tmp)
        if _is_write_error(e):
            raise _write_failed(target, e) from e
        raise
    except BaseException:
        _remove(tmp)
        raise


def _durable_replace(tmp: Path, target: Path) -> None:
    """``os.replace(tmp, target)`` after the file's data reached the disk (fsync), then the
    directory entry (fsync of the directory, where the platform allows it): after a crash or a
    power cut the target is the old result or the whole new one, never a torn or empty file."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, target)
    try:
        fd = os.open(target.parent, os.O_RDONLY)
    except OSError:
        return  # e.g. Windows: no directory handles
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """A temporary path beside ``target`` to write a result to; renamed over ``target`` when the
    block ends normally, removed when it raises (any exception, KeyboardInterrupt, SystemExit).

    Checks ``target`` (see :func:`check_output`) and creates the temporary file on entry, so a
    missing, read-only or otherwise unwritable destination fails before any work. The temporary
    name keeps the target's suffix (``.report.html.x1y2.tmp.html``): writers that choose a format
    by the suffix (matplotlib) still do. Devices and FIFOs are written in place."""
    target = Path(target)
    check_output(target)
    if _special(target):
        try:
            yield target
        except OSError as e:
            if _is_write_error(e):
                raise _write_failed(target, e) from e
            raise
        return
    try:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{target.suffix}", dir=target.parent)
    except OSError as e:
        raise _write_failed(target, e) from None
    os.close(fd)
    tmp = Path(name)
    with _until_committed(tmp, target, lambda: _durable_replace(tmp, target)):
        _chmod_like(tmp, target, 0o666)
        yield tmp


@contextmanager
def atomic_directory(target: str | Path) -> Iterator[Path]:
    """Like :func:`atomic_path` for a directory of files (a book): a temporary directory to
    fill. A new directory is renamed into place whole; into an existing one each file is
    renamed (so no file is ever partial, and other files in it are left alone)."""
    target = Path(target)
    check_output(target, directory=True)
    exists = target.is_dir()
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target if exists else target.parent))
    except OSError as e:
        raise _write_failed(target, e) from None

    def commit() -> None:
        if not exists:
            _chmod_like(tmp, target, 0o777)
            os.replace(tmp, target)
            return
        for item in sorted(tmp.iterdir(), key=lambda p: p.name == "meta.json"):
            os.replace(item, target / item.name)
        tmp.rmdir()

    with _until_committed(tmp, target, commit):
        yield tmp


def _write_book_files(tables: BookTables, directory: Path) -> None:
    for name in REQUIRED + OPTIONAL:
        table = getattr(tables, name)
        if table is not None:
            pq.write_table(table, directory / f"{name}.parquet")
    (directory / "meta.json").write_text(json.dumps({"valuation_time": tables.valuation_time.isoformat()}))


def _remove_stale(tables: BookTables, directory: Path) -> None:
    """Tables of an older book in ``directory`` that would shadow or join the new one's: a
    dataset folder of a table now written as one file, an optional table the new book lacks."""
    for name in REQUIRED + OPTIONAL:
        if (directory / name).is_dir():
            _remove(directory / name)
        if getattr(tables, name) is None:
            _remove(directory / f"{name}.parquet")


@contextmanager
def book_writer(directory: str | Path) -> Iterator[Callable[[BookTables], None]]:
    """A function writing a book into ``directory`` atomically (see :func:`atomic_directory`);
    the destination is checked, and its temporary directory made, on entry (before the book
    exists)."""
    d = Path(directory)
    written: list[BookTables] = []
    with atomic_directory(d) as tmp:

        def write(tables: BookTables) -> None:
            _write_book_files(tables, tmp)
            written.append(tables)

        yield write
    if written:
        _remove_stale(written[-1], d)


def write_book(tables: BookTables, directory: str | Path) -> None:
    """Writes a book directory (see the module docstring), atomically file by file; tables of an
    older book there that this one lacks (an optional table, a dataset folder) are removed."""
    with book_writer(directory) as write:
        write(tables)
