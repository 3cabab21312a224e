"""Turning what users pass in into what the Rust core reads.

Tables go to Rust through the Arrow PyCapsule interface, zero-copy: anything with
``__arrow_c_stream__`` or ``__arrow_c_array__`` (pyarrow, polars, duckdb, pandas >= 2.2) is passed
as it is. A few common non-Arrow inputs (a pandas DataFrame without the interface, a dict of
columns) are converted with pyarrow first. Anything else is a :class:`MarginInputError` naming
the table.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

import numpy as np
import pyarrow as pa

from margin_engine._core import MarginInputError

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)


def arrow_input(obj: Any, table: str) -> Any:
    """An object the core can read through the Arrow PyCapsule interface."""
    if hasattr(obj, "__arrow_c_stream__") or hasattr(obj, "__arrow_c_array__"):
        return obj
    if isinstance(obj, dict):
        try:
            return pa.table(obj)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as e:
            raise MarginInputError(f"{table}.*: cannot build an Arrow table from this dict ({e})") from e
    module = type(obj).__module__.split(".")[0]
    if module == "pandas":
        try:
            return pa.Table.from_pandas(obj, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
            raise MarginInputError(f"{table}.*: cannot convert this pandas DataFrame to Arrow ({e})") from e
    raise MarginInputError(
        f"{table}.*: expected an Arrow table (pyarrow, polars, pandas, duckdb, or any object with "
        f"__arrow_c_stream__), got {type(obj).__name__}"
    )


def arrow_table(obj: Any, table: str) -> pa.Table:
    """A ``pyarrow.Table`` view of a (small) book or market table, kept for inspection."""
    obj = arrow_input(obj, table)
    if isinstance(obj, pa.Table):
        return obj
    try:
        return pa.table(obj)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as e:
        raise MarginInputError(f"{table}.*: cannot read as an Arrow table ({e})") from e


def timestamp_ns(value: Any) -> int:
    """Nanoseconds since the epoch (UTC) of a datetime, numpy datetime64, pandas Timestamp,
    ISO string or integer nanoseconds. A naive datetime is taken as UTC."""
    if isinstance(value, bool):
        raise MarginInputError(f"market.valuation_time: expected a timestamp, got {value!r}")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if hasattr(value, "value") and type(value).__module__.startswith("pandas"):
        if value.tzinfo is None:
            return int(value.value)
        return int(value.tz_convert("UTC").value)
    if isinstance(value, np.datetime64):
        if np.isnat(value):
            raise MarginInputError("market.valuation_time: NaT is not a valuation time")
        return int(value.astype("datetime64[ns]").astype(np.int64))
    if isinstance(value, str):
        try:
            value = _dt.datetime.fromisoformat(value)
        except ValueError as e:
            raise MarginInputError(f"market.valuation_time: not an ISO timestamp: {value!r}") from e
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        delta = value - _EPOCH
        return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000
    if isinstance(value, _dt.date):
        return timestamp_ns(_dt.datetime(value.year, value.month, value.day))
    raise MarginInputError(f"market.valuation_time: expected a timestamp, got {type(value).__name__}")
