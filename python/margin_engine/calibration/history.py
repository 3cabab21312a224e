"""Price histories: reading, validating and turning candles into returns.

A history is any Arrow table (pyarrow, polars, pandas, a dict of columns) with one row per
symbol per candle:

- ``symbol``: utf8, the underlying or asset name (``"BTC"``); no nulls.
- ``time``: an Arrow timestamp (any unit; no time zone = UTC) or date, the candle's time; no
  nulls. Within each symbol the rows must be in increasing time order (the table need not be
  grouped by symbol), with no repeated (symbol, time).
- ``close``: float > 0 and finite, the price the returns are computed from.
- ``volume`` (optional): float >= 0 and finite, traded volume of the candle (in the base coin, or
  in the quote currency: say which with ``volume_in=``). Only the haircuts' liquidity term reads it.

Other columns (``open``, ``high``, ``low``, ...) are ignored. A bad row is a
:class:`margin_engine.MarginInputError` naming table ``prices``, the column and up to 10 rows
(``row 17 (BTC 2020-03-12T00:00:00Z)``).

**Period and gaps.** Each symbol's period is its most common time step (one day, one hour). A step
longer than the period is a gap (an exchange outage, a missing day): gaps are never filled or
interpolated. They are listed in :attr:`History.gaps` and, in the returns, handled as the caller
chooses with ``gaps=``: ``"scale"`` (default) keeps the one return across a gap of ``k`` periods,
divided by ``sqrt(k)`` so that it enters the volatility estimate as a one-period return of the same
variance (the move that happened during an outage is real risk and is not thrown away);
``"drop"`` leaves the returns across gaps out.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import re
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from margin_engine._inputs import arrow_table, input_error

__all__ = ["History", "Series", "read_history", "parse_duration", "iso"]

DAY = 86_400
_UNITS = {"s": 1, "m": 60, "min": 60, "h": 3_600, "d": DAY, "w": 7 * DAY, "y": 365 * DAY}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|min|m|h|d|w|y)\s*$")
GAP_CHOICES = ("scale", "drop")


def parse_duration(value: Any, argument: str) -> int:
    """Seconds of ``"1h"``, ``"2d"``, ``"30m"``, ``"4y"`` (y = 365 days) or a ``timedelta``."""
    if isinstance(value, _dt.timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, str) and _DURATION.match(value):
        number, unit = _DURATION.match(value).groups()  # type: ignore[union-attr]
        seconds = float(number) * _UNITS[unit]
    else:
        raise input_error(
            "arguments", argument, f"expected a duration such as '1h', '1d', '2d', '4y' or a timedelta, got {value!r}"
        )
    if not (math.isfinite(seconds) and seconds >= 1 and seconds == int(seconds)):
        raise input_error("arguments", argument, f"must be a whole number of seconds >= 1, got {value!r}")
    return int(seconds)


def iso(seconds: int | float) -> str:
    """``2020-03-12T00:00:00Z`` of seconds since the epoch."""
    return _dt.datetime.fromtimestamp(int(seconds), _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def duration_text(seconds: int | float) -> str:
    """``1d``, ``2d``, ``1h``, ``90m``: the shortest exact form."""
    s = int(seconds)
    for unit, size in (("y", 365 * DAY), ("w", 7 * DAY), ("d", DAY), ("h", 3_600), ("m", 60)):
        if s % size == 0 and s >= size:
            return f"{s // size}{unit}"
    return f"{s}s"


@dataclasses.dataclass
class Series:
    """One symbol's candles, in time order. ``times`` in seconds since the epoch; ``rows`` the
    row numbers of the input table (for error messages)."""

    symbol: str
    times: np.ndarray      # int64 seconds
    close: np.ndarray      # float64
    volume: np.ndarray | None
    rows: np.ndarray       # int64, input row numbers
    period: int            # seconds

    @property
    def steps(self) -> np.ndarray:
        """Length of each step between consecutive candles, in periods (1 = no gap)."""
        return np.diff(self.times) / self.period

    def returns(self, gaps: str = "scale") -> tuple[np.ndarray, np.ndarray]:
        """(log returns, index of the candle each return ends at). Across a gap of k periods the
        return is divided by sqrt(k) (``gaps="scale"``) or left out (``"drop"``)."""
        r = np.diff(np.log(self.close))
        k = self.steps
        end = np.arange(1, self.close.size)
        if gaps == "drop":
            keep = k <= 1.0
            return r[keep], end[keep]
        return r / np.sqrt(np.maximum(k, 1.0)), end

    def index_at(self, t: int) -> int:
        """Index of the candle at exactly time ``t``, or -1."""
        i = int(np.searchsorted(self.times, t))
        return i if i < self.times.size and self.times[i] == t else -1


@dataclasses.dataclass
class History:
    """A validated price history: one :class:`Series` per symbol (sorted by symbol), the gaps,
    and the volume's unit."""

    series: dict[str, Series]
    gaps: pa.Table
    volume_in: str

    @property
    def symbols(self) -> list[str]:
        return list(self.series)

    def __getitem__(self, symbol: str) -> Series:
        return self.series[symbol]


def _rows(rows: np.ndarray, symbols: np.ndarray, times: np.ndarray, limit: int = 10) -> list[str]:
    return [f"row {int(r)} ({symbols[r]} {iso(times[r])})" for r in rows[:limit]]


def _times_seconds(column: pa.ChunkedArray) -> np.ndarray:
    t = column.type
    if pa.types.is_timestamp(t):
        unit = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[t.unit]
        raw = pc.cast(column, pa.int64()).to_numpy(zero_copy_only=False)
        return np.floor_divide(raw, unit).astype(np.int64)
    if pa.types.is_date(t):
        days = pc.cast(pc.cast(column, pa.date32()), pa.int32()).to_numpy(zero_copy_only=False)
        return days.astype(np.int64) * DAY
    raise input_error("prices", "time", f"expected an Arrow timestamp or date column, got {t}")


def _floats(table: pa.Table, column: str) -> np.ndarray:
    col = table.column(column)
    if not (pa.types.is_floating(col.type) or pa.types.is_integer(col.type) or pa.types.is_decimal(col.type)):
        raise input_error("prices", column, f"expected a numeric column, got {col.type}")
    return pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)


def read_history(prices: Any, *, volume_in: str = "base", symbols: list[str] | None = None) -> History:
    """Validates ``prices`` (columns in the module docstring) into a :class:`History`.

    >>> import datetime as dt, margin_engine as me
    >>> from margin_engine.calibration.history import read_history
    >>> days = [dt.datetime(2024, 1, d) for d in (1, 2, 3, 5)]
    >>> h = read_history({"symbol": ["BTC"] * 4, "time": days, "close": [100.0, 101.0, 99.0, 103.0]})
    >>> h["BTC"].period, h.gaps.column("missing_periods").to_pylist()
    (86400, [1])
    >>> try:
    ...     read_history({"symbol": ["BTC"] * 2, "time": days[:2], "close": [100.0, -1.0]})
    ... except me.MarginInputError as e:
    ...     print(e)
    prices.close: must be finite and > 0 (1 offending: row 1 (BTC 2024-01-02T00:00:00Z))
    """
    if volume_in not in ("base", "quote"):
        raise input_error("arguments", "volume_in", f"must be 'base' or 'quote', got {volume_in!r}")
    table = arrow_table(prices, "prices")
    for column in ("symbol", "time", "close"):
        if column not in table.column_names:
            raise input_error("prices", column, f"missing column (have {', '.join(table.column_names) or 'none'})")
    if table.num_rows == 0:
        raise input_error("prices", "*", "the history is empty")
    sym_col = table.column("symbol")
    t = sym_col.type
    text = pa.types.is_string(t) or pa.types.is_large_string(t) or str(t) == "string_view"  # polars: string_view
    if pa.types.is_dictionary(t) and (pa.types.is_string(t.value_type) or pa.types.is_large_string(t.value_type)):
        text = True
    if not text:
        raise input_error("prices", "symbol", f"expected a utf8 column, got {t}")
    sym_col = pc.cast(sym_col, pa.string())
    for name, col in (("symbol", sym_col), ("time", table.column("time")), ("close", table.column("close"))):
        if col.null_count:
            rows = np.flatnonzero(pc.is_null(col).to_numpy(zero_copy_only=False))
            raise input_error("prices", name, "null values", [f"row {int(r)}" for r in rows[:10]])
    sym = np.asarray(sym_col.to_numpy(zero_copy_only=False), dtype=object)
    times = _times_seconds(table.column("time"))
    close = _floats(table, "close")
    bad = np.flatnonzero(~(np.isfinite(close) & (close > 0)))
    if bad.size:
        raise input_error("prices", "close", "must be finite and > 0", _rows(bad, sym, times))
    volume = None
    if "volume" in table.column_names:
        vcol = table.column("volume")
        volume = _floats(table, "volume")
        bad = np.flatnonzero(~(np.isfinite(volume) & (volume >= 0)) | pc.is_null(vcol).to_numpy(zero_copy_only=False))
        if bad.size:
            raise input_error("prices", "volume", "must be finite and >= 0 (no nulls)", _rows(bad, sym, times))

    if isinstance(symbols, str):
        symbols = [symbols]
    wanted = None if symbols is None else [str(s) for s in symbols]
    names = sorted(set(sym.tolist()))
    if wanted is not None:
        missing = [s for s in wanted if s not in names]
        if missing:
            raise input_error("prices", "symbol", "no rows for a requested symbol", [repr(s) for s in missing[:10]])
        names = sorted(set(wanted))
    series: dict[str, Series] = {}
    gap_sym: list[str] = []
    gap_after: list[int] = []
    gap_len: list[float] = []
    for name in names:
        rows = np.flatnonzero(sym == name)
        t = times[rows]
        dt = np.diff(t)
        dup = np.flatnonzero(dt == 0)
        if dup.size:
            raise input_error("prices", "time", "duplicate (symbol, time)", _rows(rows[dup + 1], sym, times))
        back = np.flatnonzero(dt < 0)
        if back.size:
            raise input_error(
                "prices", "time", "times not increasing within the symbol (sort by symbol, time)",
                _rows(rows[back + 1], sym, times),
            )  # fmt: skip
        if rows.size < 2:
            raise input_error("prices", "time", "a symbol needs at least two candles", _rows(rows, sym, times))
        steps, counts = np.unique(dt, return_counts=True)
        period = int(steps[np.argmax(counts)])  # the most common step; ties: the shortest
        irregular = np.flatnonzero(dt % period != 0)
        if irregular.size:
            raise input_error(
                "prices", "time", f"steps that are not a whole number of the symbol's period ({duration_text(period)})",
                _rows(rows[irregular + 1], sym, times),
            )  # fmt: skip
        for i in np.flatnonzero(dt > period):
            gap_sym.append(name)
            gap_after.append(int(t[i]))
            gap_len.append(float(dt[i] / period - 1))
        series[name] = Series(
            symbol=name,
            times=t,
            close=close[rows],
            volume=None if volume is None else volume[rows],
            rows=rows,
            period=period,
        )
    gaps = pa.table(
        {
            "symbol": pa.array(gap_sym, pa.string()),
            "after": pa.array(np.array(gap_after, dtype="datetime64[s]"), pa.timestamp("s", "UTC")),
            "missing_periods": pa.array(np.array(gap_len, dtype=np.float64).astype(np.int64), pa.int64()),
        }
    )
    return History(series=series, gaps=gaps, volume_in=volume_in)
