"""Fuzzing the public API with malformed input: the only acceptable outcomes are a result or a
`me.MarginInputError` (docs/errors.md). Anything else — TypeError, OverflowError, RuntimeError
(a caught Rust panic), pyo3's PanicException, a hang or a crash of the interpreter — fails.

Each example starts from a valid book (the small hand-made book of test_bad_input.py, or a random
one from `books()`) and applies a few random mutations: dropped, renamed, duplicated and extra
columns; columns replaced by arrays of random Arrow types (strings of every layout, integers of
every width, float16/32/64, bools, timestamps of every unit and zone, dates, durations, decimals,
binary, lists, structs, nulls, dictionaries) holding random values (NaN, ±inf, ±0, negatives,
subnormals, 1e308, integer extremes); nulls; duplicated, dropped and shuffled rows; empty tables
(with and without record batches); chunked tables; entirely random tables; and objects that are
not tables at all. Then every public function is called. Results are also checked: their float
columns hold no NaN or inf (docs/errors.md: the engine raises rather than return them), and every
`MarginInputError` carries its documented attributes.

The scalar arguments (model, threads, stress, distance, liquidation_plan's parameters, the
valuation time, hedge instruments, the hedge objective) are fuzzed too, with numbers, strings,
None, huge integers and arbitrary objects. The bugs this fuzzer found are pinned as regression
tests at the end (FORMER_BUGS).

Example counts sum to 2,400+ (see `@settings` below); the whole module runs in well under a
minute on two cores.
"""

from __future__ import annotations

import datetime as dt
import decimal
import math
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import margin_engine as me
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import books
from test_bad_input import base as small_base

Draw = Callable[[st.SearchStrategy[Any]], Any]

FUZZ = {"deadline": None, "suppress_health_check": list(HealthCheck)}

BOOK_TABLES = ("instruments", "assets", "risk_params", "margin_tiers")
MARKET_TABLES = ("index_prices", "marks")
ACCOUNT_TABLES = ("positions", "balances")
ALL_TABLES = BOOK_TABLES + MARKET_TABLES + ACCOUNT_TABLES
DOCUMENTED_TABLES = {*ALL_TABLES, "market", "stress", "arguments", "hedge_instruments"}

COLUMN_NAMES = (
    "instrument", "kind", "underlying", "multiplier", "expiry", "strike", "option_type",
    "initial_margin_rate", "maintenance_margin_rate", "initial_margin_floor", "asset", "price",
    "initial_weight", "maintenance_weight", "initial_liability_weight",
    "maintenance_liability_weight", "size_premium", "price_range", "price_steps", "vol_up",
    "vol_down", "vol_term_exponent", "extreme_move", "extreme_cover", "short_option_minimum",
    "im_factor", "notional_floor", "account_id", "quantity", "entry_price", "amount",
    "index_price", "mark_price", "implied_vol", "delta", "gamma", "vega", "theta",
    "", "Instrument", "account_id ", "x", "ÄVAX", "\x00",
)  # fmt: skip

WORDS = (
    "BTC-PERP", "BTC-FUT", "BTC-C", "BTC-P", "ETH-PERP", "BTC", "ETH", "USD", "perpetual",
    "future", "option", "call", "put", "Call", "PUT", "", " ", "ÄVAX", "\x00", "nan", "1",
    "x" * 300,
)  # fmt: skip

SPECIAL_FLOATS = (
    math.nan, math.inf, -math.inf, 0.0, -0.0, -1.0, 1.0, 0.5, 1.5, 3.0, 1e-320, 5e-324, -5e-324,
    1e-300, 1e300, 1.7976931348623157e308, -1.7976931348623157e308, 1e15, 2.0**53 + 1, 0.1, 21.0, 100_001.0,
)  # fmt: skip

INT_BOUNDS = {
    pa.int8(): (-(2**7), 2**7 - 1),
    pa.int16(): (-(2**15), 2**15 - 1),
    pa.int32(): (-(2**31), 2**31 - 1),
    pa.int64(): (-(2**63), 2**63 - 1),
    pa.uint8(): (0, 2**8 - 1),
    pa.uint16(): (0, 2**16 - 1),
    pa.uint32(): (0, 2**32 - 1),
    pa.uint64(): (0, 2**64 - 1),
}

TIMESTAMP_TYPES = [pa.timestamp(u, tz) for u in ("s", "ms", "us", "ns") for tz in (None, "UTC", "Asia/Tokyo")]


# --------------------------------------------------------------------------------------------
# Random arrays
# --------------------------------------------------------------------------------------------


@lru_cache(maxsize=None)
def _ints(lo: int, hi: int) -> st.SearchStrategy[int]:
    edges = [v for v in (lo, hi, 0, 1, -1, 2, 21, 2**31, 2**53, 2**63 - 1, 2**63, 2**64 - 1) if lo <= v <= hi]
    return st.one_of(st.sampled_from(edges), st.integers(max(lo, -1000), min(hi, 1000)), st.integers(lo, hi))


FLOATS = st.one_of(st.sampled_from(SPECIAL_FLOATS), st.floats(), st.floats(-10.0, 10.0), st.floats(0.0, 1e6))

# Element strategies, built once (hypothesis validates every new strategy object, which is slow).
ELEMENTS: dict[str, st.SearchStrategy[Any]] = {
    "word": st.one_of(st.sampled_from(WORDS), st.text(max_size=5)),
    "float": FLOATS,
    "bool": st.booleans(),
    "int64": _ints(-(2**63), 2**63 - 1),
    "int32": _ints(-(2**31), 2**31 - 1),
    "decimal": st.decimals(-1000, 1000, places=2, allow_nan=False),
    "float_list": st.lists(FLOATS, max_size=2),
    **{f"int:{t}": _ints(*bounds) for t, bounds in INT_BOUNDS.items()},
}
ARRAY_KINDS = st.sampled_from(
    [
        "string", "large_string", "string_view", "int", "float64", "float32", "float16", "bool",
        "timestamp", "date32", "date64", "duration", "null", "dict_string", "dict_int",
        "decimal", "binary", "list", "struct", "time64",
    ]
)  # fmt: skip
INT_TYPES = st.sampled_from(list(INT_BOUNDS))
TIMESTAMP_TYPE = st.sampled_from(TIMESTAMP_TYPES)
DURATION_UNIT = st.sampled_from(["s", "ms", "us", "ns"])
NULL_RATE = st.integers(0, 2)


@lru_cache(maxsize=None)
def _values(element: str, nullable: bool, n: int) -> st.SearchStrategy[list[Any]]:
    """Lists of exactly `n` values of ELEMENTS[element], with nulls if `nullable`."""
    values = ELEMENTS[element]
    return st.lists(st.one_of(values, st.none()) if nullable else values, min_size=n, max_size=n)


@st.composite
def random_array(draw: Draw, n: int) -> pa.Array:
    """An array of `n` values of a random Arrow type."""
    kind = draw(ARRAY_KINDS)
    nullable = draw(NULL_RATE) > 0

    def values(element: str) -> list[Any]:
        return draw(_values(element, nullable, n))

    if kind in ("string", "large_string", "string_view", "dict_string", "binary"):
        words = values("word")
        if kind == "binary":
            return pa.array([None if v is None else v.encode() for v in words], pa.binary())
        typ = {"string": pa.string(), "large_string": pa.large_string(), "string_view": pa.string_view()}.get(
            kind, pa.string()
        )
        arr = pa.array(words, typ)
        return arr.dictionary_encode() if kind == "dict_string" else arr
    if kind in ("int", "dict_int"):
        typ = draw(INT_TYPES)
        arr = pa.array(values(f"int:{typ}"), typ)
        return arr.dictionary_encode() if kind == "dict_int" else arr
    if kind in ("float64", "float32", "float16"):
        floats = values("float")
        if kind == "float16":
            with np.errstate(over="ignore"):
                data = np.array([0.0 if v is None else v for v in floats], np.float16)
            return pa.array(data, mask=np.array([v is None for v in floats], dtype=bool))
        arr = pa.array(floats, pa.float64())
        return arr.cast(pa.float32(), safe=False) if kind == "float32" else arr
    if kind == "bool":
        return pa.array(values("bool"), pa.bool_())
    if kind in ("timestamp", "duration", "time64"):
        ints = values("int64")
        if kind == "duration":
            return pa.array(ints, pa.int64()).cast(pa.duration(draw(DURATION_UNIT)))
        if kind == "time64":
            return pa.array([None if v is None else abs(v) % 86_400_000_000 for v in ints], pa.int64()).cast(
                pa.time64("us")
            )
        return pa.array(ints, pa.int64()).cast(draw(TIMESTAMP_TYPE))
    if kind == "date32":
        return pa.array(values("int32"), pa.int32()).cast(pa.date32())
    if kind == "date64":
        return pa.array(values("int64"), pa.int64()).cast(pa.date64())
    if kind == "null":
        return pa.nulls(n)
    if kind == "decimal":
        return pa.array(values("decimal"), pa.decimal128(10, 2))
    if kind == "list":
        return pa.array(values("float_list"), pa.list_(pa.float64()))
    return pa.StructArray.from_arrays(
        [pa.array(range(n), pa.int64()), pa.array([str(i) for i in range(n)])], ["a", "b"]
    )


# --------------------------------------------------------------------------------------------
# Wrong Python objects
# --------------------------------------------------------------------------------------------


class RaisingStream:
    """Claims the Arrow stream interface, then fails in it."""

    def __arrow_c_stream__(self, requested_schema: Any = None) -> Any:
        raise ValueError("no stream today")


class RuntimeErrorStream:
    """Fails in the stream interface with something other than ValueError / TypeError."""

    def __arrow_c_stream__(self, requested_schema: Any = None) -> Any:
        raise RuntimeError("no stream today")


class NotACapsule:
    def __arrow_c_stream__(self, requested_schema: Any = None) -> Any:
        return 42


class NotACapsuleArray:
    def __arrow_c_array__(self, requested_schema: Any = None) -> Any:
        return (1, 2)


def _wrong_objects() -> list[Callable[[], Any]]:
    sample = small_base()["positions"]
    return [
        lambda: None, lambda: 0, lambda: 1.5, lambda: "positions", lambda: b"bytes", lambda: [1, 2],
        lambda: [[1, 2]], lambda: (), lambda: object(), lambda: {"a": [1, 2]}, lambda: {"a": [1, 2], "b": [1]},
        lambda: {1: [1]}, lambda: {"a": object()}, lambda: {}, lambda: pa.array([1, 2]),
        lambda: pa.array([{"account_id": 1, "instrument": "BTC-PERP", "quantity": 1.0}]),
        lambda: pa.chunked_array([[1, 2]]), lambda: np.zeros(3), lambda: np.zeros((2, 2)),
        lambda: pd.Series([1.0, 2.0]), lambda: pd.DataFrame(), lambda: pd.DataFrame({"a": [object()]}),
        lambda: sample.to_pandas(), lambda: sample.to_batches()[0], lambda: sample.schema,
        lambda: pa.scalar(1.0), lambda: pa.RecordBatchReader.from_batches(sample.schema, sample.to_batches()),
        lambda: RaisingStream(), lambda: RuntimeErrorStream(), lambda: NotACapsule(), lambda: NotACapsuleArray(),
        lambda: pa.table({"a": pa.array([[1.0]], pa.list_(pa.float64()))}),
    ]  # fmt: skip


WRONG_OBJECTS = _wrong_objects()


# --------------------------------------------------------------------------------------------
# Mutations of a valid case
# --------------------------------------------------------------------------------------------


def _set_column(t: pa.Table, i: int, name: str, arr: pa.Array) -> pa.Table:
    return t.set_column(i, pa.field(name, arr.type), arr)


@lru_cache(maxsize=None)
def _below(n: int) -> st.SearchStrategy[int]:
    """An index in range(n)."""
    return st.integers(0, n - 1)


@lru_cache(maxsize=None)
def _between(lo: int, hi: int) -> st.SearchStrategy[int]:
    return st.integers(lo, hi)


@lru_cache(maxsize=None)
def _one_of_names(names: tuple[str, ...]) -> st.SearchStrategy[str]:
    return st.sampled_from(names)


@lru_cache(maxsize=None)
def _mask(n: int) -> st.SearchStrategy[list[bool]]:
    return st.lists(st.booleans(), min_size=n, max_size=n)


@lru_cache(maxsize=None)
def _some_indices(n: int, unique: bool, most: int) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, n - 1), min_size=1, max_size=most, unique=unique)


@lru_cache(maxsize=None)
def _cuts(n: int) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, n), max_size=4)


@lru_cache(maxsize=None)
def _permutation(n: int) -> st.SearchStrategy[list[int]]:
    return st.permutations(range(n))


MUTATIONS = st.sampled_from(
    [
        "drop", "rename", "retype", "retype", "retype", "nulls", "specials", "specials", "dup_rows",
        "dup_column", "empty", "no_batches", "chunks", "shuffle", "dictionary", "extra",
        "random_table", "wrong_object", "drop_rows", "cast",
    ]
)  # fmt: skip
COLUMN_NAME = st.sampled_from(COLUMN_NAMES)
NUMERIC_SPECIAL = st.one_of(FLOATS, _ints(-(2**63), 2**64 - 1))
WORD_OR_NULL = st.one_of(st.sampled_from(WORDS), st.none())
CAST_TARGET = st.sampled_from([pa.float32(), pa.int32(), pa.uint64(), pa.large_string(), pa.string(), pa.float64()])
RANDOM_ROWS = st.integers(0, 5)
RANDOM_COLUMNS = st.lists(COLUMN_NAME, max_size=6)
WRONG_OBJECT = st.sampled_from(range(len(WRONG_OBJECTS)))


@st.composite
def mutate_table(draw: Draw, t: pa.Table) -> Any:
    """One random mutation of table `t` (or a replacement for it)."""
    kind = draw(MUTATIONS)
    try:
        return _mutate(draw, t, kind)
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):  # pyarrow lacks a kernel (e.g. for string_view)
        return t


def _mutate(draw: Draw, t: pa.Table, kind: str) -> Any:
    n = t.num_rows
    names = t.column_names
    if kind == "drop" and names:
        dropped = set(draw(_some_indices(len(names), True, len(names))))
        return t.select([i for i in range(len(names)) if i not in dropped])
    if kind == "rename" and names:
        i = draw(_below(len(names)))
        return t.rename_columns([draw(COLUMN_NAME) if j == i else c for j, c in enumerate(names)])
    if kind == "retype" and names:
        i = draw(_below(len(names)))
        return _set_column(t, i, names[i], draw(random_array(n)))
    if kind == "extra":
        return t.append_column(draw(COLUMN_NAME), draw(random_array(n)))
    if kind == "nulls" and names and n:
        i = draw(_below(len(names)))
        col = t.column(i).combine_chunks()
        mask = draw(_mask(n))
        try:
            return _set_column(t, i, names[i], pc.if_else(pa.array(mask), pa.scalar(None, col.type), col))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            return t
    if kind == "specials" and names and n:
        i = draw(_below(len(names)))
        col = t.column(i)
        numeric = pa.types.is_floating(col.type) or pa.types.is_integer(col.type)
        if not (numeric or pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            return t
        values = col.to_pylist()
        for r in draw(_some_indices(n, True, n)):
            values[r] = draw(NUMERIC_SPECIAL if numeric else WORD_OR_NULL)
        for typ in (col.type, pa.float64(), None):
            try:
                arr = pa.array(values, typ)
            except (
                pa.ArrowInvalid,
                pa.ArrowTypeError,
                pa.ArrowNotImplementedError,
                OverflowError,
                TypeError,
                ValueError,
            ):
                continue
            return _set_column(t, i, names[i], arr)
        return t
    if kind == "dup_rows" and n:
        rows = draw(_some_indices(n, False, 2 * n + 1))
        return pa.concat_tables([t, t.take(rows)])
    if kind == "drop_rows" and n:
        keep = draw(_mask(n))
        return t.filter(pa.array(keep))
    if kind == "dup_column" and names:
        i = draw(_below(len(names)))
        return t.append_column(names[i], t.column(i))
    if kind == "empty":
        return t.slice(0, 0)
    if kind == "no_batches":
        return pa.Table.from_batches([], t.schema)
    if kind == "chunks" and n:
        cuts = sorted(draw(_cuts(n)))
        bounds = [0, *cuts, n]
        return pa.concat_tables([t.slice(a, b - a) for a, b in zip(bounds[:-1], bounds[1:], strict=True)])
    if kind == "shuffle" and n > 1:
        return t.take(draw(_permutation(n)))
    if kind == "dictionary" and names:
        i = draw(_below(len(names)))
        col = t.column(i)
        if pa.types.is_dictionary(col.type) or pa.types.is_null(col.type):
            return t
        try:
            return _set_column(t, i, names[i], col.combine_chunks().dictionary_encode())
        except pa.ArrowNotImplementedError:
            return t
    if kind == "cast" and names:
        i = draw(_below(len(names)))
        target = draw(CAST_TARGET)
        try:
            return _set_column(t, i, names[i], t.column(i).combine_chunks().cast(target, safe=False))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError):
            return t
    if kind == "random_table":
        rows = draw(RANDOM_ROWS)
        columns = draw(RANDOM_COLUMNS)
        arrays = [draw(random_array(rows)) for _ in columns]
        return pa.Table.from_arrays(arrays, names=columns) if columns else pa.table({})
    if kind == "wrong_object":
        return WRONG_OBJECTS[draw(WRONG_OBJECT)]()
    return t


ONE_IN_THREE = st.integers(0, 2)
RANDOM_BOOKS = books(max_accounts=6)


@st.composite
def valid_case(draw: Draw) -> dict[str, Any]:
    """A valid book, market, positions and balances: the hand-made one or a random one."""
    if draw(ONE_IN_THREE) == 0:
        example = dict(draw(RANDOM_BOOKS))
        example["valuation_time"] = example.pop("valuation_time_ns")
        return example
    return small_base()


def is_table(obj: Any) -> bool:
    return isinstance(obj, pa.Table)


@st.composite
def mutated_case(draw: Draw, tables: tuple[str, ...], mutations: tuple[int, int] = (1, 3)) -> dict[str, Any]:
    d = draw(valid_case())
    for _ in range(draw(_between(*mutations))):
        name = draw(_one_of_names(tables))
        t = d[name]
        if t is None:  # an optional table that the valid case does not have: add a random one
            d[name] = draw(mutate_table(small_base()[name]))
        elif is_table(t):
            d[name] = draw(mutate_table(t))
        else:
            d[name] = draw(mutate_table(small_base()[name]))
    return d


# --------------------------------------------------------------------------------------------
# Calling everything
# --------------------------------------------------------------------------------------------


class Unexpected(AssertionError):
    pass


def _check_result_table(label: str, t: Any) -> None:
    """A pyarrow.Table without NaN or inf (nulls are fine)."""
    if not isinstance(t, pa.Table):
        raise Unexpected(f"{label}: returned {type(t).__name__}, not a pyarrow.Table")
    for name in t.column_names:
        col = t.column(name)
        if pa.types.is_floating(col.type) and col.null_count < len(col):
            values = pc.fill_null(col, 0.0).to_numpy()
            bad = ~np.isfinite(values)
            if bad.any():
                raise Unexpected(f"{label}: column {name} holds non-finite values {values[bad][:5].tolist()}")


def _check_error(label: str, e: me.MarginInputError) -> None:
    for attr in ("table", "column", "problem", "offenders", "count"):
        if not hasattr(e, attr):
            raise Unexpected(f"{label}: MarginInputError without .{attr}: {e}")
    if e.table not in DOCUMENTED_TABLES:
        raise Unexpected(f"{label}: MarginInputError names an undocumented table {e.table!r}: {e}")
    if not str(e).startswith(f"{e.table}.{e.column}: "):
        raise Unexpected(f"{label}: message does not start with '<table>.<column>: ': {e}")


def attempt(label: str, call: Callable[[], Any]) -> Any:
    """`call()`'s result, or None after a MarginInputError; anything else fails the test."""
    try:
        result = call()
    except me.MarginInputError as e:
        _check_error(label, e)
        return None
    except (KeyboardInterrupt, SystemExit):
        raise
    except Unexpected:
        raise
    except BaseException as e:  # noqa: BLE001 - pyo3's PanicException is a BaseException
        raise Unexpected(f"{label}: {type(e).__module__}.{type(e).__name__}: {e}") from e
    if isinstance(result, me.LiquidationPlan):
        for part in ("closes", "accounts", "underlyings", "adl"):
            _check_result_table(f"{label}.{part}", getattr(result, part))
        for total in (result.liquidator_fees, result.insurance_fees, result.insurance_fund_after):
            if not math.isfinite(total):
                raise Unexpected(f"{label}: non-finite total {total}")
    elif result is not None and not isinstance(result, (me.Book, me.Market)):
        _check_result_table(label, result)
    return result


def call_everything(book: Any, market: Any, positions: Any, balances: Any, args: dict[str, Any] | None = None) -> None:
    """Every public function over these objects (each must return or raise MarginInputError)."""
    a = {"model": "standard", "threads": None, "stress": None, "distance": False, "plan": {}, "hedge": None,
         "objective": "maintenance", **(args or {})}  # fmt: skip
    model, threads, stress = a["model"], a["threads"], a["stress"]
    attempt("margin", lambda: me.margin(book, positions, balances, market, model=model, threads=threads))
    attempt(
        "margin/portfolio", lambda: me.margin(book, positions, balances, market, model="portfolio", threads=threads)
    )
    attempt("greeks", lambda: me.greeks(book, positions, market, threads=threads))
    attempt("risk_arrays", lambda: me.risk_arrays(book, market))
    attempt(
        "scan",
        lambda: me.liquidation_scan(
            book, positions, balances, market, model=model, stress=stress, distance=a["distance"], threads=threads
        ),
    )
    attempt(
        "scan/distance",
        lambda: me.liquidation_scan(book, positions, balances, market, model=model, distance=True, threads=threads),
    )
    attempt(
        "distance", lambda: me.liquidation_distance(book, positions, balances, market, model=model, threads=threads)
    )
    attempt("map", lambda: me.liquidation_map(book, positions, balances, market, model=model, threads=threads))
    attempt(
        "plan",
        lambda: me.liquidation_plan(
            book, positions, balances, market, model=model, stress=stress, threads=threads, **a["plan"]
        ),
    )
    hedge = a["hedge"]
    if hedge is None and isinstance(book, me.Book):
        keys = (
            book.instruments.column("instrument").to_pylist() if "instrument" in book.instruments.column_names else []
        )
        hedge = [k for k in keys[:2] if isinstance(k, (str, int))]
    attempt(
        "optimal_hedge",
        lambda: me.optimal_hedge(
            book, positions, balances, market, hedge or [], model=model, objective=a["objective"], threads=threads
        ),
    )


def build(d: dict[str, Any]) -> tuple[Any, Any]:
    book = attempt("Book", lambda: me.Book(d["instruments"], d["assets"], d["risk_params"], d["margin_tiers"]))
    market = attempt("Market", lambda: me.Market(d["index_prices"], d["marks"], d["valuation_time"]))
    return book, market


def _fallback(d: dict[str, Any], book: Any, market: Any) -> tuple[Any, Any]:
    """Where the mutated book or market was rejected, the valid hand-made one (so that the
    functions still run on the other mutated tables)."""
    if book is None or market is None:
        b = small_base()
        book = book or me.Book(b["instruments"], b["assets"], b["risk_params"], b["margin_tiers"])
        market = market or me.Market(b["index_prices"], b["marks"], b["valuation_time"])
    return book, market


# --------------------------------------------------------------------------------------------
# The fuzz tests (example counts sum to 2,450)
# --------------------------------------------------------------------------------------------


@settings(max_examples=500, **FUZZ)
@given(d=mutated_case(BOOK_TABLES, (1, 2)))
def test_fuzz_book_tables(d: dict[str, Any]) -> None:
    book, market = build(d)
    if book is not None:
        call_everything(book, market, d["positions"], d["balances"])


@settings(max_examples=400, **FUZZ)
@given(d=mutated_case(MARKET_TABLES))
def test_fuzz_market_tables(d: dict[str, Any]) -> None:
    book, market = build(d)
    if market is not None:
        call_everything(book, market, d["positions"], d["balances"])


@settings(max_examples=700, **FUZZ)
@given(d=mutated_case(ACCOUNT_TABLES, (1, 4)))
def test_fuzz_positions_and_balances(d: dict[str, Any]) -> None:
    book, market = _fallback(d, *build(d))
    call_everything(book, market, d["positions"], d["balances"])


@settings(max_examples=350, **FUZZ)
@given(d=mutated_case(ALL_TABLES, (1, 6)))
def test_fuzz_all_tables(d: dict[str, Any]) -> None:
    book, market = _fallback(d, *build(d))
    call_everything(book, market, d["positions"], d["balances"])


# --- scalar arguments -------------------------------------------------------------------------

JUNK = st.one_of(
    st.none(), st.text(max_size=8), st.binary(max_size=4), st.lists(st.integers(), max_size=2), st.just(object())
)
MODELS_FUZZ = st.one_of(
    st.sampled_from(["standard", "portfolio", "Standard", "PORTFOLIO", "", "standard "]),
    JUNK,
    st.integers(),
    st.floats(),
)
THREADS_FUZZ = st.one_of(
    st.none(), st.integers(-3, 6), st.booleans(), st.floats(), st.text(max_size=3), st.just(np.int64(2)),
    st.just(np.uint8(1)), st.just(np.int32(0)), st.just(np.float64(2.0)), st.just(-(2**70)),
    st.sampled_from([4097, 10**6, 2**63, 2**64, 10**30, np.uint64(2**64 - 1)]),
)  # fmt: skip
NUMBERS = st.one_of(
    st.floats(), st.sampled_from(SPECIAL_FLOATS), st.integers(-(10**300), 10**300), st.just(np.float32(0.5)),
    st.just(np.float64("nan")), st.just(np.int64(-1)), st.booleans(), st.just(decimal.Decimal("0.01")),
    st.sampled_from([10**400, -(10**400), "0.01", "x", None, [0.01], b"1", decimal.Decimal("NaN")]),
)  # fmt: skip
STRESS_FUZZ = st.one_of(
    st.none(),
    st.dictionaries(
        st.one_of(st.sampled_from(["BTC", "ETH", "SOL", "doge", "ÄVAX", "XRP", "", "btc"]), st.integers(), st.none()),
        st.one_of(NUMBERS, st.text(max_size=4), st.none(), st.just([0.1])),
        max_size=4,
    ),
    st.lists(st.tuples(st.just("BTC"), st.floats()), max_size=2),
    st.text(max_size=4),
    st.floats(),
)
PLAN_FUZZ = st.fixed_dictionaries(
    {},
    optional={
        "liquidation_fee": NUMBERS,
        "liquidator_share": NUMBERS,
        "buffer": NUMBERS,
        "insurance_fund": NUMBERS,
    },
)
VALUATION_FUZZ = st.one_of(
    st.integers(-(2**70), 2**70), st.integers(1_600_000_000 * 10**9, 1_900_000_000 * 10**9), st.floats(),
    st.datetimes(timezones=st.sampled_from([None, dt.timezone.utc, dt.timezone(dt.timedelta(hours=-5))])),
    st.dates(), st.text(max_size=30),
    st.sampled_from(["2025-01-01", "2025-01-01T00:00:00+00:00", "9999-12-31", "not a date"]),
    st.sampled_from([
        np.datetime64("NaT"), np.datetime64("2025-01-01", "D"), np.datetime64("2025-01-01T00:00", "ps"),
        np.datetime64(2**62, "s"), np.datetime64(1, "Y"), pd.Timestamp("2025-01-01"), pd.NaT,
        pd.Timestamp("2025-01-01", tz="US/Eastern"),
    ]),
    st.none(), st.booleans(), st.just(np.int64(-1)), st.just(np.uint64(2**64 - 1)),
)  # fmt: skip
HEDGE_FUZZ = st.one_of(
    st.lists(
        st.one_of(
            st.sampled_from(["BTC-PERP", "BTC-FUT", "BTC-C", "ETH-PERP", "NOPE", ""]),
            st.integers(),
            st.none(),
            st.floats(),
        ),
        max_size=3,
    ),
    st.sampled_from(["BTC-PERP", ("BTC-PERP",), {"BTC-PERP": 1}, frozenset(["ETH-PERP"]), 5, None, 1.5, [True]]),
    st.just(iter(["BTC-PERP"])),
)  # fmt: skip
OBJECTIVE_FUZZ = st.one_of(st.sampled_from(["maintenance", "initial", "Initial", "", "margin"]), JUNK, st.integers())
DISTANCE_FUZZ = st.one_of(st.booleans(), st.just(np.bool_(True)), st.just(np.bool_(False)), JUNK, st.integers(0, 1))


ONE_IN_FIVE = st.integers(0, 4)
JUNK_OBJECT = st.one_of(
    st.sampled_from(WRONG_OBJECTS).map(lambda f: f()), st.sampled_from([me.Book, me.Market, "book"])
)


@st.composite
def book_or_junk(draw: Draw, valid: Callable[[], Any]) -> Any:
    """Usually `valid()`, sometimes something that is not a Book / Market at all."""
    return valid() if draw(ONE_IN_FIVE) else draw(JUNK_OBJECT)


@settings(max_examples=500, **FUZZ)
@given(
    model=MODELS_FUZZ,
    threads=THREADS_FUZZ,
    stress=STRESS_FUZZ,
    distance=DISTANCE_FUZZ,
    plan=PLAN_FUZZ,
    valuation_time=VALUATION_FUZZ,
    hedge=HEDGE_FUZZ,
    objective=OBJECTIVE_FUZZ,
    data=st.data(),
)
def test_fuzz_arguments(
    model: Any, threads: Any, stress: Any, distance: Any, plan: dict[str, Any], valuation_time: Any, hedge: Any,
    objective: Any, data: Any,
) -> None:  # fmt: skip
    d = small_base()
    valid_book = lambda: me.Book(d["instruments"], d["assets"], d["risk_params"], d["margin_tiers"])  # noqa: E731
    book = data.draw(book_or_junk(valid_book))
    market = attempt("Market", lambda: me.Market(d["index_prices"], d["marks"], valuation_time))
    if market is None or data.draw(ONE_IN_FIVE) == 0:
        market = data.draw(book_or_junk(lambda: me.Market(d["index_prices"], d["marks"], d["valuation_time"])))
    args = {"model": model, "threads": threads, "stress": stress, "distance": distance, "plan": plan, "hedge": hedge,
            "objective": objective}  # fmt: skip
    call_everything(book, market, d["positions"], d["balances"], args)


# --- black76 ------------------------------------------------------------------------------------

B76_ARG = st.one_of(
    FLOATS, st.integers(-(10**6), 10**6), st.lists(FLOATS, max_size=4), st.just(np.array([[1.0, 2.0], [3.0, 4.0]])),
    st.just(np.array([], np.float64)), st.just(np.array([1, 2, 3], np.int8)), st.just(np.float32(1.5)),
)  # fmt: skip
B76_CALL = st.one_of(
    st.booleans(), st.lists(st.booleans(), max_size=4), st.sampled_from(["call", "put", "CALL", "maybe", ""]),
    st.lists(st.sampled_from(["call", "put", "x"]), max_size=3), st.integers(-2, 2), st.just(np.array([1, 0])),
)  # fmt: skip


@settings(max_examples=300, **FUZZ)
@given(forward=B76_ARG, strike=B76_ARG, time=B76_ARG, vol=B76_ARG, is_call=B76_CALL)
def test_fuzz_black76(forward: Any, strike: Any, time: Any, vol: Any, is_call: Any) -> None:
    """black76 takes numbers, not tables: it validates with plain ValueError (docs/errors.md), so
    ValueError (shape mismatch, bad 'call'/'put' strings) is accepted here too."""
    try:
        out = me.black76(forward, strike, time, vol, is_call)
    except ValueError:
        return
    except BaseException as e:  # noqa: BLE001
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            raise
        raise Unexpected(f"black76: {type(e).__name__}: {e}") from e
    assert isinstance(out, me.Black76)
    shapes = {a.shape for a in out}
    assert len(shapes) == 1


# --------------------------------------------------------------------------------------------
# Bugs this fuzzer found (each raised something other than MarginInputError, or returned NaN)
# --------------------------------------------------------------------------------------------


def _small() -> tuple[me.Book, me.Market, dict[str, Any]]:
    d = small_base()
    book = me.Book(d["instruments"], d["assets"], d["risk_params"], d["margin_tiers"])
    return book, me.Market(d["index_prices"], d["marks"], d["valuation_time"]), d


def _unpriced_underlying(book: me.Book, market: me.Market, d: dict[str, Any]) -> None:
    """ETH has no index price and no position, but a collateral asset linked to it: the map's
    and the distances' ETH prices are null (they were NaN)."""
    index_prices = d["index_prices"].filter(pa.array([u != "ETH" for u in d["index_prices"]["underlying"].to_pylist()]))
    market = me.Market(index_prices, d["marks"], d["valuation_time"])
    positions = d["positions"].filter(pa.array([i != "ETH-PERP" for i in d["positions"]["instrument"].to_pylist()]))
    assets = d["assets"].to_pylist()
    assets.append(dict(assets[1], asset="ETHC", price=3_000.0, underlying="ETH"))
    book = me.Book(
        d["instruments"], pa.Table.from_pylist(assets, d["assets"].schema), d["risk_params"], d["margin_tiers"]
    )
    balances = pa.table({"account_id": pa.array([1, 9], pa.uint64()), "asset": ["ETHC", "ETHC"], "amount": [2.0, -1.0]})
    for function in (me.liquidation_map, me.liquidation_distance):
        result = attempt(function.__name__, lambda f=function: f(book, positions, balances, market))
        eth = [r for r in result.to_pylist() if r["underlying"] == "ETH"]
        assert eth, function.__name__
        for column in ("price", "liquidation_price_down", "liquidation_price_up"):
            assert all(r[column] is None for r in eth if column in r), (function.__name__, column)


FORMER_BUGS: dict[str, Callable[[me.Book, me.Market, dict[str, Any]], Any]] = {
    # check_threads accepted any int >= 1: pyo3's usize conversion raised OverflowError, and
    # threads=100_000 spent minutes starting threads.
    "threads=2**64": lambda b, m, d: me.margin(b, d["positions"], d["balances"], m, threads=2**64),
    "threads=100_000": lambda b, m, d: me.margin(b, d["positions"], d["balances"], m, threads=100_000),
    # float() of a non-number in liquidation_plan: ValueError / TypeError / OverflowError.
    "liquidation_fee='x'": lambda b, m, d: me.liquidation_plan(
        b, d["positions"], d["balances"], m, liquidation_fee="x"
    ),
    "buffer=None": lambda b, m, d: me.liquidation_plan(b, d["positions"], d["balances"], m, buffer=None),
    "insurance_fund=10**400": lambda b, m, d: me.liquidation_plan(
        b, d["positions"], d["balances"], m, insurance_fund=10**400
    ),
    # _stress_pairs caught TypeError and ValueError but not OverflowError from float(move).
    "stress move 10**400": lambda b, m, d: me.liquidation_scan(
        b, d["positions"], d["balances"], m, stress={"BTC": 10**400}
    ),
    # distance and objective went to pyo3 unchecked: TypeError "'str' object is not an instance of 'bool'".
    "distance='yes'": lambda b, m, d: me.liquidation_scan(b, d["positions"], d["balances"], m, distance="yes"),
    "distance=None": lambda b, m, d: me.liquidation_scan(b, d["positions"], d["balances"], m, distance=None),
    "objective=None": lambda b, m, d: me.optimal_hedge(
        b, d["positions"], d["balances"], m, ["BTC-PERP"], objective=None
    ),
    # lib.rs raised MarginInputError::new_err(...) for a bad objective: no .table, .column, ...
    "objective='x' (error without attributes)": lambda b, m, d: me.optimal_hedge(
        b, d["positions"], d["balances"], m, ["BTC-PERP"], objective="x"
    ),
    # hedge_instruments was iterated unchecked: TypeError "'int' object is not iterable".
    "hedge_instruments=5": lambda b, m, d: me.optimal_hedge(b, d["positions"], d["balances"], m, 5),
    # _inputs.arrow_table (me.Book / me.Market) let an exception raised inside the object's
    # __arrow_c_stream__ escape; me.margin & co. (Rust side) wrapped the same object already.
    "Book(object whose __arrow_c_stream__ raises)": lambda b, m, d: me.Book(RuntimeErrorStream(), d["assets"]),
    # An underlying without an index price that no position holds: the map had rows for it with
    # price NaN, and an asset linked to it gave liquidation_distance rows with NaN prices.
    "map/distance price of an underlying without an index price": _unpriced_underlying,
}


@pytest.mark.parametrize("name", list(FORMER_BUGS))
def test_former_bug_now_raises_margin_input_error_or_returns(name: str) -> None:
    """Each of these once raised something other than MarginInputError (found by this fuzzer)."""
    book, market, d = _small()
    attempt(name, lambda: FORMER_BUGS[name](book, market, d))
