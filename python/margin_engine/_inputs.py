"""Turning what users pass in into what the Rust core reads.

Tables go to Rust through the Arrow PyCapsule interface, zero-copy: anything with
``__arrow_c_stream__`` or ``__arrow_c_array__`` (pyarrow, polars, duckdb, pandas >= 2.2) is passed
as it is. A few common non-Arrow inputs (a pandas DataFrame without the interface, a dict of
columns) are converted with pyarrow first. Anything else is a :class:`MarginInputError` naming
the table.

Errors raised here carry the same attributes as the core's (``table``, ``column``, ``problem``,
``offenders``, ``count``), so callers can handle every bad input the same way.
"""

from __future__ import annotations

import datetime as _dt
import math
from typing import Any

import numpy as np
import pyarrow as pa

from margin_engine._core import MarginInputError

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.timezone.utc)
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1
# numpy datetime64 units finer than a second: nanoseconds per tick, or (1, ticks per nanosecond)
_FINE_UNITS: dict[str, Any] = {
    "s": 1_000_000_000,
    "ms": 1_000_000,
    "us": 1_000,
    "ns": 1,
    "ps": (1, 1_000),
    "fs": (1, 1_000_000),
    "as": (1, 1_000_000_000),
}


def input_error(table: str, column: str, problem: str, offenders: list[str] | None = None) -> MarginInputError:
    """A :class:`MarginInputError` formatted and attributed like the core's:
    ``"<table>.<column>: <problem> (N offending: ...)"``."""
    offenders = list(offenders or [])
    message = f"{table}.{column}: {problem}"
    if offenders:
        message += f" ({len(offenders)} offending: {', '.join(offenders)})"
    err = MarginInputError(message)
    err.table = table
    err.column = column
    err.problem = problem
    err.offenders = offenders
    err.count = len(offenders)
    return err


def _not_a_table(table: str, obj: Any, detail: str = "") -> MarginInputError:
    return input_error(
        table,
        "*",
        "expected an Arrow table (pyarrow, polars, pandas, duckdb, or any object with "
        f"__arrow_c_stream__ / __arrow_c_array__), got {type(obj).__name__}{detail}",
    )


def arrow_input(obj: Any, table: str) -> Any:
    """An object the core can read through the Arrow PyCapsule interface."""
    if hasattr(obj, "__arrow_c_stream__") or hasattr(obj, "__arrow_c_array__"):
        return obj
    if isinstance(obj, dict):
        try:
            return pa.table(obj)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as e:
            raise input_error(table, "*", f"cannot build an Arrow table from this dict ({e})") from e
    module = type(obj).__module__.split(".")[0]
    if module == "pandas":
        try:
            return pa.Table.from_pandas(obj, preserve_index=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError) as e:
            raise input_error(table, "*", f"cannot convert this pandas object to Arrow ({e})") from e
    raise _not_a_table(table, obj)


def arrow_table(obj: Any, table: str) -> pa.Table:
    """A ``pyarrow.Table`` view of a (small) book or market table, kept for inspection."""
    obj = arrow_input(obj, table)
    if isinstance(obj, pa.Table):
        return obj
    try:
        result = pa.table(obj)
    except Exception as e:  # anything the object's own export raises is bad input, named
        raise _not_a_table(table, obj, f" ({type(e).__name__}: {e})") from e
    if not isinstance(result, pa.Table):
        raise _not_a_table(table, obj)
    return result


def _valuation_error(problem: str) -> MarginInputError:
    return input_error("market", "valuation_time", problem)


def _checked_ns(ns: int, value: Any) -> int:
    if not _I64_MIN <= ns <= _I64_MAX:
        raise _valuation_error(f"out of range: {value!r} is not representable as int64 nanoseconds since the epoch")
    return ns


def timestamp_ns(value: Any) -> int:
    """Nanoseconds since the epoch (UTC) of a datetime, numpy datetime64, pandas Timestamp,
    ISO string or integer nanoseconds. A naive datetime is taken as UTC."""
    if isinstance(value, (bool, np.bool_)):
        raise _valuation_error(f"expected a timestamp, got {value!r}")
    if isinstance(value, (int, np.integer)):
        return _checked_ns(int(value), value)
    if hasattr(value, "value") and type(value).__module__.startswith("pandas"):
        if getattr(value, "value", None) is None or str(value) == "NaT":  # pandas.NaT
            raise _valuation_error("NaT is not a valuation time")
        if value.tzinfo is None:
            return _checked_ns(int(value.value), value)
        return _checked_ns(int(value.tz_convert("UTC").value), value)
    if isinstance(value, np.datetime64):
        if np.isnat(value):
            raise _valuation_error("NaT is not a valuation time")
        unit, count = np.datetime_data(value.dtype)
        if unit in _FINE_UNITS:  # integer arithmetic in Python: no silent int64 wrap-around
            ticks = int(value.astype(np.int64)) * count
            scale = _FINE_UNITS[unit]
            ns = ticks * scale if isinstance(scale, int) else ticks // scale[1]
        else:  # calendar units (Y, M, W, D, h, m): whole seconds first
            ns = int(value.astype("datetime64[s]").astype(np.int64)) * 1_000_000_000
        return _checked_ns(ns, value)
    if isinstance(value, str):
        try:
            value = _dt.datetime.fromisoformat(value)
        except ValueError as e:
            raise _valuation_error(f"not an ISO timestamp: {value!r}") from e
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        delta = value - _EPOCH
        return _checked_ns((delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1_000, value)
    if isinstance(value, _dt.date):
        return timestamp_ns(_dt.datetime(value.year, value.month, value.day))
    raise _valuation_error(f"expected a timestamp, got {type(value).__name__}")


# Arguments that are not tables. The API can call these so that a bad argument is a
# MarginInputError ("arguments.<name>: ...") like every other bad input.

_MODELS = ("standard", "portfolio")


def check_model(model: Any) -> str:
    """``model`` as given, if it is ``"standard"`` or ``"portfolio"``."""
    if not isinstance(model, str) or model not in _MODELS:
        raise input_error("arguments", "model", f"model must be 'standard' or 'portfolio', got {model!r}")
    return model


def check_threads(threads: Any) -> int | None:
    """``threads`` as an int >= 1, or ``None`` (all cores)."""
    if threads is None:
        return None
    if isinstance(threads, (bool, np.bool_)) or not isinstance(threads, (int, np.integer)):
        raise input_error("arguments", "threads", f"threads must be an integer >= 1 or None, got {threads!r}")
    if threads < 1 or threads > 256:
        raise input_error("arguments", "threads", f"threads must be between 1 and 256, got {threads}")
    return int(threads)


def check_instance(obj: Any, cls: type, argument: str) -> Any:
    """``obj`` if it is a ``cls`` (e.g. a :class:`Book` where a book is expected)."""
    if not isinstance(obj, cls):
        raise input_error(
            "arguments",
            argument,
            f"expected a margin_engine.{cls.__name__}, got {type(obj).__name__} "
            f"(build one with margin_engine.{cls.__name__}(...))",
        )
    return obj


def check_number(value: Any, argument: str, low: float = -math.inf, high: float = math.inf) -> float:
    """``value`` as a finite float in ``[low, high]`` (bools are not numbers)."""
    if isinstance(value, (bool, np.bool_)):
        raise input_error("arguments", argument, f"expected a number, got {value!r}")
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError) as e:
        raise input_error("arguments", argument, f"expected a finite number, got {value!r}") from e
    if not (math.isfinite(number) and low <= number <= high):
        raise input_error("arguments", argument, f"must be a finite number in [{low}, {high}], got {value!r}")
    return number


def check_flag(value: Any, argument: str) -> bool:
    """``value`` if it is a bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise input_error("arguments", argument, f"expected True or False, got {value!r}")
    return bool(value)


def check_choice(value: Any, argument: str, choices: tuple[str, ...]) -> str:
    """``value`` if it is one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise input_error("arguments", argument, f"must be one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


# Results: ``pyarrow.Table`` by default, or a polars DataFrame with ``output="polars"``.

_OUTPUTS = ("arrow", "polars")


def check_output(output: Any) -> str:
    """``output`` if it is ``"arrow"`` or ``"polars"``; for ``"polars"``, checked before any work
    that polars can be imported (an ``ImportError`` naming the package to install)."""
    output = check_choice(output, "output", _OUTPUTS)
    if output == "polars":
        _polars()
    return output


def _polars() -> Any:
    try:
        import polars
    except ImportError as e:
        raise ImportError(
            "output='polars' needs the polars package, which is not installed: pip install polars "
            "(or leave output='arrow' for a pyarrow.Table)"
        ) from e
    return polars


def as_output(table: pa.Table, output: str = "arrow") -> Any:
    """``table`` as the caller asked: the ``pyarrow.Table`` itself for ``output="arrow"``, a
    ``polars.DataFrame`` over the same buffers (``pl.from_arrow``, zero-copy) for
    ``output="polars"``."""
    if check_output(output) == "arrow":
        return table
    return _polars().from_arrow(table, rechunk=False)
