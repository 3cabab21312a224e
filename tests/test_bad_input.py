"""Bad input of every kind raises ``MarginInputError`` naming the table, the column and the
offending keys or rows; Arrow layouts that are merely unusual (slices, chunks, dictionaries,
large / view strings, other integer widths, polars) give exactly the results of the plain case.

Every bad-input case mutates one cell or column of a small valid book (a BTC perpetual, future,
call and put, an ETH perpetual; USD and BTC collateral) and checks the error where the input is
first read: ``me.Book`` for book tables, ``me.Market`` for market tables, ``me.margin`` (both
models) and ``me.greeks`` for positions, balances and the checks that join tables together.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import margin_engine as me
import numpy as np
import pyarrow as pa
import pytest
from conftest import assert_tables_close
from margin_engine import reference

UTC = dt.timezone.utc
TS = pa.timestamp("ns", "UTC")
VALUATION = dt.datetime(2025, 1, 1, tzinfo=UTC)
EXPIRY = dt.datetime(2025, 3, 28, 8, tzinfo=UTC)
NAN = float("nan")
INF = float("inf")

# --------------------------------------------------------------------------------------------
# The valid base book
# --------------------------------------------------------------------------------------------


def base() -> dict[str, Any]:
    """A small valid book, market, positions and balances (fresh tables on every call)."""
    instruments = pa.table(
        {
            "instrument": pa.array(["BTC-PERP", "BTC-FUT", "BTC-C", "BTC-P", "ETH-PERP"]),
            "kind": pa.array(["perpetual", "future", "option", "option", "perpetual"]),
            "underlying": pa.array(["BTC", "BTC", "BTC", "BTC", "ETH"]),
            "multiplier": pa.array([1.0, 1.0, 1.0, 1.0, 0.1]),
            "expiry": pa.array([None, EXPIRY, EXPIRY, EXPIRY, None], TS),
            "strike": pa.array([None, None, 110_000.0, 90_000.0, None], pa.float64()),
            "option_type": pa.array([None, None, "call", "put", None], pa.string()),
            "initial_margin_rate": pa.array([0.02, 0.03, 0.15, 0.15, 0.04]),
            "maintenance_margin_rate": pa.array([0.01, 0.015, 0.075, 0.075, 0.02]),
            "initial_margin_floor": pa.array([None, None, 0.10, 0.10, None], pa.float64()),
        }
    )
    assets = pa.table(
        {
            "asset": pa.array(["USD", "BTC"]),
            "price": pa.array([1.0, 100_000.0]),
            "initial_weight": pa.array([1.0, 0.8]),
            "maintenance_weight": pa.array([1.0, 0.9]),
            "initial_liability_weight": pa.array([1.0, 1.2]),
            "maintenance_liability_weight": pa.array([1.0, 1.1]),
            "size_premium": pa.array([0.0, 0.001]),
            "underlying": pa.array([None, "BTC"], pa.string()),
        }
    )
    risk_params = pa.table(
        {
            "underlying": pa.array(["BTC", "ETH"]),
            "price_range": pa.array([0.15, 0.2]),
            "price_steps": pa.array([21, 11], pa.int64()),
            "vol_up": pa.array([0.45, 0.5]),
            "vol_down": pa.array([0.3, 0.3]),
            "vol_term_exponent": pa.array([0.3, 0.3]),
            "extreme_move": pa.array([3.0, 2.5]),
            "extreme_cover": pa.array([0.33, 0.33]),
            "short_option_minimum": pa.array([0.01, 0.01]),
            "im_factor": pa.array([1.25, 1.3]),
        }
    )
    margin_tiers = pa.table(
        {
            "instrument": pa.array(["BTC-PERP", "BTC-PERP", "BTC-FUT"]),
            "notional_floor": pa.array([0.0, 1_000_000.0, 500_000.0]),
            "initial_margin_rate": pa.array([0.02, 0.04, 0.05]),
            "maintenance_margin_rate": pa.array([0.01, 0.02, 0.025]),
        }
    )
    positions = pa.table(
        {
            "account_id": pa.array([1, 1, 2, 1, 2, 3, 3], pa.uint64()),
            "instrument": pa.array(["BTC-PERP", "BTC-C", "BTC-FUT", "BTC-P", "ETH-PERP", "BTC-PERP", "BTC-PERP"]),
            "quantity": pa.array([2.0, -1.0, -1.5, 3.0, 10.0, -0.5, 0.25]),
            "entry_price": pa.array([98_000.0, 0.0, 101_000.0, 0.0, 3_500.0, 99_000.0, 100_500.0]),
        }
    )
    balances = pa.table(
        {
            "account_id": pa.array([1, 2, 2, 4], pa.uint64()),
            "asset": pa.array(["USD", "USD", "BTC", "BTC"]),
            "amount": pa.array([50_000.0, 20_000.0, 0.5, -0.1]),
        }
    )
    index_prices = pa.table({"underlying": pa.array(["BTC", "ETH"]), "index_price": pa.array([100_000.0, 3_600.0])})
    marks = pa.table(
        {
            "instrument": pa.array(["BTC-PERP", "BTC-FUT", "BTC-C", "BTC-P", "ETH-PERP"]),
            "mark_price": pa.array([100_050.0, 101_200.0, 2_500.0, 1_800.0, 3_601.0]),
            "implied_vol": pa.array([None, None, 0.55, 0.6, None], pa.float64()),
        }
    )
    return {
        "instruments": instruments,
        "assets": assets,
        "risk_params": risk_params,
        "margin_tiers": margin_tiers,
        "positions": positions,
        "balances": balances,
        "index_prices": index_prices,
        "marks": marks,
        "valuation_time": VALUATION,
    }


def make_book(d: dict[str, Any]) -> me.Book:
    return me.Book(d["instruments"], d["assets"], d["risk_params"], d["margin_tiers"])


def make_market(d: dict[str, Any]) -> me.Market:
    return me.Market(d["index_prices"], d["marks"], d["valuation_time"])


def plain_results(d: dict[str, Any] | None = None) -> dict[str, pa.Table]:
    d = d or base()
    book, market = make_book(d), make_market(d)
    return {
        "standard": me.margin(book, d["positions"], d["balances"], market, model="standard"),
        "portfolio": me.margin(book, d["positions"], d["balances"], market, model="portfolio"),
        "greeks": me.greeks(book, d["positions"], market),
    }


# --------------------------------------------------------------------------------------------
# Mutations
# --------------------------------------------------------------------------------------------

Mutation = Callable[[dict[str, Any]], dict[str, Any]]


def _replace(t: pa.Table, column: str, array: pa.Array) -> pa.Table:
    i = t.column_names.index(column)
    return t.set_column(i, pa.field(column, array.type), array)


def cell(table: str, column: str, row: int, value: Any, typ: pa.DataType | None = None) -> Mutation:
    """Sets one cell (keeping the column's type unless `typ` is given)."""

    def mutate(d: dict[str, Any]) -> dict[str, Any]:
        t = d[table]
        values = t.column(column).to_pylist()
        values[row] = value
        d[table] = _replace(t, column, pa.array(values, typ or t.schema.field(column).type))
        return d

    return mutate


def column(table: str, name: str, make: Callable[[int], pa.Array]) -> Mutation:
    """Replaces a column by `make(num_rows)` (e.g. one of the wrong type)."""

    def mutate(d: dict[str, Any]) -> dict[str, Any]:
        t = d[table]
        d[table] = _replace(t, name, make(t.num_rows))
        return d

    return mutate


def drop(table: str, name: str) -> Mutation:
    def mutate(d: dict[str, Any]) -> dict[str, Any]:
        d[table] = d[table].drop_columns([name])
        return d

    return mutate


def doubled(table: str, name: str) -> Mutation:
    """Appends a second column of the same name (Arrow allows it; we must not pick one silently)."""

    def mutate(d: dict[str, Any]) -> dict[str, Any]:
        t = d[table]
        d[table] = t.append_column(name, t.column(name))
        return d

    return mutate


def rows(table: str, keep: Callable[[dict[str, Any]], bool]) -> Mutation:
    """Keeps only the rows for which `keep(row)` holds."""

    def mutate(d: dict[str, Any]) -> dict[str, Any]:
        t = d[table]
        d[table] = pa.Table.from_pylist([r for r in t.to_pylist() if keep(r)], schema=t.schema)
        return d

    return mutate


def both(*mutations: Mutation) -> Mutation:
    def mutate(d: dict[str, Any]) -> dict[str, Any]:
        for m in mutations:
            d = m(d)
        return d

    return mutate


def strings(n: int) -> pa.Array:
    return pa.array([f"x{i}" for i in range(n)])


def floats(n: int) -> pa.Array:
    return pa.array([1.5 + i for i in range(n)])


def ints(n: int) -> pa.Array:
    return pa.array(list(range(n)), pa.int64())


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    stage: str  # "book" | "market" | "use" (margin both models + greeks) | "margin" (both models)
    table: str
    column: str
    mutate: Mutation
    offender: str | None = None  # must appear in err.offenders and in str(err)
    problem: str | None = None  # must appear in err.problem


def C(id, stage, table, col, mutate, offender=None, problem=None) -> Any:
    return pytest.param(Case(id, stage, table, col, mutate, offender, problem), id=id)


def numeric_cases(stage: str, table: str, col: str, row: int, label: str, domain: str) -> list[Any]:
    """null, NaN, +-inf, out-of-domain values, wrong type, missing column of one float column."""
    out = [
        C(f"{table}.{col}-null", stage, table, col, cell(table, col, row, None), label, "null"),
        C(f"{table}.{col}-nan", stage, table, col, cell(table, col, row, NAN), label),
        C(f"{table}.{col}-inf", stage, table, col, cell(table, col, row, INF), label),
        C(f"{table}.{col}-neg-inf", stage, table, col, cell(table, col, row, -INF), label),
        C(f"{table}.{col}-wrong-type", stage, table, col, column(table, col, strings), None, "wrong type"),
        C(f"{table}.{col}-missing", stage, table, col, drop(table, col), None, "missing column"),
    ]
    bad = {"positive": [0.0, -1.0], "nonnegative": [-0.5], "unit": [1.5, -0.1], "atleastone": [0.5], "finite": []}[
        domain
    ]
    for v in bad:
        out.append(C(f"{table}.{col}-{v}", stage, table, col, cell(table, col, row, v), label))
    return out


I = "instruments"
A = "assets"
R = "risk_params"
T = "margin_tiers"
P = "positions"
B = "balances"
X = "index_prices"
M = "marks"

INSTRUMENT_CASES = [
    C("instrument-null", "book", I, "instrument", cell(I, "instrument", 1, None), "row 1", "null"),
    C("instrument-duplicate", "book", I, "instrument", cell(I, "instrument", 4, "BTC-PERP"), "'BTC-PERP'", "duplicate"),
    C("instrument-wrong-type", "book", I, "instrument", column(I, "instrument", floats), None, "wrong type"),
    C("instrument-missing", "book", I, "instrument", drop(I, "instrument"), None, "missing column"),
    C("instrument-doubled", "book", I, "instrument", doubled(I, "instrument"), None, "more than once"),
    C("kind-null", "book", I, "kind", cell(I, "kind", 1, None), "'BTC-FUT'", "null"),
    C("kind-unknown", "book", I, "kind", cell(I, "kind", 1, "swap"), "'BTC-FUT'"),
    C("kind-wrong-type", "book", I, "kind", column(I, "kind", ints), None, "wrong type"),
    C("kind-missing", "book", I, "kind", drop(I, "kind"), None, "missing column"),
    C("underlying-null", "book", I, "underlying", cell(I, "underlying", 4, None), "'ETH-PERP'", "null"),
    C("underlying-wrong-type", "book", I, "underlying", column(I, "underlying", ints), None, "wrong type"),
    C("underlying-missing", "book", I, "underlying", drop(I, "underlying"), None, "missing column"),
    *numeric_cases("book", I, "multiplier", 1, "'BTC-FUT'", "positive"),
    C("multiplier-doubled", "book", I, "multiplier", doubled(I, "multiplier"), None, "more than once"),
    C("expiry-null-future", "book", I, "expiry", cell(I, "expiry", 1, None), "'BTC-FUT'"),
    C("expiry-null-option", "book", I, "expiry", cell(I, "expiry", 3, None), "'BTC-P'"),
    C("expiry-wrong-type", "book", I, "expiry", column(I, "expiry", strings), None, "wrong type"),
    C(
        "expiry-out-of-range",
        "book",
        I,
        "expiry",
        column(I, "expiry", lambda n: pa.array([None, 10**17, 10**17, 10**17, None], pa.timestamp("s", "UTC"))),
        "'BTC-FUT'",
        "out of range",
    ),
    C("strike-null-option", "book", I, "strike", cell(I, "strike", 2, None), "'BTC-C'"),
    C("strike-zero", "book", I, "strike", cell(I, "strike", 2, 0.0), "'BTC-C'"),
    C("strike-negative", "book", I, "strike", cell(I, "strike", 3, -90_000.0), "'BTC-P'"),
    C("strike-nan", "book", I, "strike", cell(I, "strike", 2, NAN), "'BTC-C'"),
    C("strike-inf", "book", I, "strike", cell(I, "strike", 2, INF), "'BTC-C'"),
    C("strike-wrong-type", "book", I, "strike", column(I, "strike", strings), None, "wrong type"),
    C("strike-missing-with-options", "book", I, "strike", drop(I, "strike"), "'BTC-C'"),
    C("option_type-null", "book", I, "option_type", cell(I, "option_type", 3, None), "'BTC-P'"),
    C("option_type-unknown", "book", I, "option_type", cell(I, "option_type", 3, "straddle"), "'BTC-P'"),
    C("option_type-wrong-type", "book", I, "option_type", column(I, "option_type", ints), None, "wrong type"),
    C("option_type-missing-with-options", "book", I, "option_type", drop(I, "option_type"), "'BTC-C'"),
    *numeric_cases("book", I, "initial_margin_rate", 4, "'ETH-PERP'", "nonnegative"),
    C(
        "initial_margin_rate-below-maintenance",
        "book",
        I,
        "initial_margin_rate",
        cell(I, "initial_margin_rate", 0, 0.005),
        "'BTC-PERP'",
        ">= maintenance_margin_rate",
    ),
    *numeric_cases("book", I, "maintenance_margin_rate", 4, "'ETH-PERP'", "positive"),
    C(
        "initial_margin_floor-null-option",
        "book",
        I,
        "initial_margin_floor",
        cell(I, "initial_margin_floor", 2, None),
        "'BTC-C'",
    ),
    C(
        "initial_margin_floor-negative",
        "book",
        I,
        "initial_margin_floor",
        cell(I, "initial_margin_floor", 2, -0.1),
        "'BTC-C'",
    ),
    C(
        "initial_margin_floor-nan",
        "book",
        I,
        "initial_margin_floor",
        cell(I, "initial_margin_floor", 2, NAN),
        "'BTC-C'",
    ),
    C(
        "initial_margin_floor-inf",
        "book",
        I,
        "initial_margin_floor",
        cell(I, "initial_margin_floor", 2, INF),
        "'BTC-C'",
    ),
    C(
        "initial_margin_floor-wrong-type",
        "book",
        I,
        "initial_margin_floor",
        column(I, "initial_margin_floor", strings),
        None,
        "wrong type",
    ),
    C(
        "initial_margin_floor-missing-with-options",
        "book",
        I,
        "initial_margin_floor",
        drop(I, "initial_margin_floor"),
        "'BTC-P'",
    ),
    C(
        "instrument-uint64-beyond-int64",
        "book",
        I,
        "instrument",
        column(I, "instrument", lambda n: pa.array([2**63 + i for i in range(n)], pa.uint64())),
        "9223372036854775808",
    ),
]

ASSET_CASES = [
    C("asset-null", "book", A, "asset", cell(A, "asset", 1, None), "row 1", "null"),
    C("asset-duplicate", "book", A, "asset", cell(A, "asset", 1, "USD"), "'USD'", "duplicate"),
    C("asset-wrong-type", "book", A, "asset", column(A, "asset", floats), None, "wrong type"),
    C("asset-missing", "book", A, "asset", drop(A, "asset"), None, "missing column"),
    *numeric_cases("book", A, "price", 1, "'BTC'", "positive"),
    *numeric_cases("book", A, "initial_weight", 1, "'BTC'", "unit"),
    *numeric_cases("book", A, "maintenance_weight", 1, "'BTC'", "unit"),
    C(
        "initial_weight-above-maintenance",
        "book",
        A,
        "initial_weight",
        cell(A, "initial_weight", 1, 0.95),
        "'BTC'",
        "<= maintenance_weight",
    ),
    *numeric_cases("book", A, "initial_liability_weight", 1, "'BTC'", "atleastone"),
    *numeric_cases("book", A, "maintenance_liability_weight", 1, "'BTC'", "atleastone"),
    C(
        "maintenance_liability_weight-above-initial",
        "book",
        A,
        "maintenance_liability_weight",
        cell(A, "maintenance_liability_weight", 1, 1.5),
        "'BTC'",
        "<= initial_liability_weight",
    ),
    C("size_premium-null", "book", A, "size_premium", cell(A, "size_premium", 1, None), "'BTC'", "null"),
    C("size_premium-negative", "book", A, "size_premium", cell(A, "size_premium", 1, -0.01), "'BTC'"),
    C("size_premium-nan", "book", A, "size_premium", cell(A, "size_premium", 1, NAN), "'BTC'"),
    C("size_premium-inf", "book", A, "size_premium", cell(A, "size_premium", 1, INF), "'BTC'"),
    C("size_premium-wrong-type", "book", A, "size_premium", column(A, "size_premium", strings), None, "wrong type"),
    C("asset-underlying-wrong-type", "book", A, "underlying", column(A, "underlying", ints), None, "wrong type"),
]

RISK_CASES = [
    C("risk-underlying-null", "book", R, "underlying", cell(R, "underlying", 1, None), "row 1", "null"),
    C("risk-underlying-duplicate", "book", R, "underlying", cell(R, "underlying", 1, "BTC"), "'BTC'", "duplicate"),
    C("risk-underlying-wrong-type", "book", R, "underlying", column(R, "underlying", ints), None, "wrong type"),
    C("risk-underlying-missing", "book", R, "underlying", drop(R, "underlying"), None, "missing column"),
    *[
        C(f"price_range-{name}", "book", R, "price_range", cell(R, "price_range", 1, v), "'ETH'")
        for name, v in [("null", None), ("nan", NAN), ("inf", INF), ("zero", 0.0), ("negative", -0.1), ("one", 1.0)]
    ],
    C("price_range-wrong-type", "book", R, "price_range", column(R, "price_range", strings), None, "wrong type"),
    *[
        C(f"price_steps-{name}", "book", R, "price_steps", cell(R, "price_steps", 1, v), "'ETH'")
        for name, v in [
            ("even", 20),
            ("one", 1),
            ("two", 2),
            ("zero", 0),
            ("negative", -3),
            ("null", None),
            ("huge", 10**9 + 1),
        ]
    ],
    *[
        C(f"price_steps-float-{name}", "book", R, "price_steps", cell(R, "price_steps", 1, v, pa.float64()), "'ETH'")
        for name, v in [("fraction", 21.5), ("nan", NAN), ("inf", INF), ("even", 20.0)]
    ],
    C("price_steps-wrong-type", "book", R, "price_steps", column(R, "price_steps", strings), None, "wrong type"),
    *[
        C(f"{col}-{name}", "book", R, col, cell(R, col, 1, v), "'ETH'")
        for col in ["vol_up", "vol_down", "vol_term_exponent", "extreme_move", "extreme_cover", "short_option_minimum"]
        for name, v in [("negative", -0.1), ("nan", NAN), ("inf", INF), ("null", None)]
    ],
    *[
        C(f"im_factor-{name}", "book", R, "im_factor", cell(R, "im_factor", 1, v), "'ETH'")
        for name, v in [("below-one", 0.9), ("nan", NAN), ("inf", INF), ("null", None)]
    ],
    C("extreme_move-too-far", "book", R, "extreme_move", cell(R, "extreme_move", 1, 10.0), "'ETH'", "extreme_move"),
]

TIER_CASES = [
    C(
        "tier-instrument-unknown",
        "book",
        T,
        "instrument",
        cell(T, "instrument", 1, "XRP-PERP"),
        "'XRP-PERP' (row 1)",
        "unknown",
    ),
    C("tier-instrument-null", "book", T, "instrument", cell(T, "instrument", 1, None), "row 1", "null"),
    C(
        "tier-instrument-option",
        "book",
        T,
        "instrument",
        cell(T, "instrument", 2, "BTC-C"),
        "'BTC-C' (row 2)",
        "options",
    ),
    C("tier-instrument-wrong-type", "book", T, "instrument", column(T, "instrument", ints), None, "wrong type"),
    C("tier-instrument-missing", "book", T, "instrument", drop(T, "instrument"), None, "missing column"),
    *numeric_cases("book", T, "notional_floor", 1, "row 1", "nonnegative"),
    C("notional_floor-duplicate", "book", T, "notional_floor", cell(T, "notional_floor", 1, 0.0), "'BTC-PERP' floor 0"),
    *numeric_cases("book", T, "initial_margin_rate", 1, "row 1", "nonnegative"),
    *numeric_cases("book", T, "maintenance_margin_rate", 1, "row 1", "positive"),
    C(
        "tier-initial-below-maintenance",
        "book",
        T,
        "initial_margin_rate",
        cell(T, "initial_margin_rate", 2, 0.01),
        "row 2",
        ">= maintenance_margin_rate",
    ),
]

POSITION_CASES = [
    C("pos-account_id-null", "use", P, "account_id", cell(P, "account_id", 2, None), "row 2", "null"),
    C("pos-account_id-negative", "use", P, "account_id", cell(P, "account_id", 2, -7, pa.int64()), "row 2 = -7"),
    C("pos-account_id-string", "use", P, "account_id", column(P, "account_id", strings), None, "wrong type"),
    C("pos-account_id-float", "use", P, "account_id", column(P, "account_id", floats), None, "wrong type"),
    C("pos-account_id-missing", "use", P, "account_id", drop(P, "account_id"), None, "missing column"),
    C("pos-instrument-null", "use", P, "instrument", cell(P, "instrument", 2, None), "row 2", "null"),
    C(
        "pos-instrument-unknown",
        "use",
        P,
        "instrument",
        cell(P, "instrument", 2, "DOGE-PERP"),
        "'DOGE-PERP' (row 2)",
        "unknown",
    ),
    C("pos-instrument-int", "use", P, "instrument", column(P, "instrument", ints), None, "wrong type"),
    C("pos-instrument-missing", "use", P, "instrument", drop(P, "instrument"), None, "missing column"),
    *numeric_cases("use", P, "quantity", 2, "row 2", "finite"),
    C("pos-quantity-doubled", "use", P, "quantity", doubled(P, "quantity"), None, "more than once"),
    C("pos-quantity-overflow", "use", P, "quantity", cell(P, "quantity", 0, 1e308), "account 1", "too large"),
    C(
        "pos-quantity-sum-overflow",
        "use",
        P,
        "quantity",
        both(cell(P, "quantity", 5, 1e308), cell(P, "quantity", 6, 1e308)),
        "account 3",
        "too large",
    ),
    C("pos-entry_price-nan", "use", P, "entry_price", cell(P, "entry_price", 2, NAN), "row 2"),
    C("pos-entry_price-inf", "use", P, "entry_price", cell(P, "entry_price", 2, INF), "row 2"),
    C("pos-entry_price-negative", "use", P, "entry_price", cell(P, "entry_price", 2, -1.0), "row 2"),
    C("pos-entry_price-wrong-type", "use", P, "entry_price", column(P, "entry_price", strings), None, "wrong type"),
    # joins with the market, found when positions are read
    C("pos-no-mark", "use", M, "instrument", rows(M, lambda r: r["instrument"] != "BTC-FUT"), "'BTC-FUT'", "no mark"),
    C(
        "pos-no-index-price",
        "use",
        X,
        "underlying",
        rows(X, lambda r: r["underlying"] != "ETH"),
        "'ETH'",
        "no index price",
    ),
    C("pos-option-no-vol", "use", M, "implied_vol", cell(M, "implied_vol", 2, None), "'BTC-C'", "implied_vol"),
    C("pos-option-vol-column-missing", "use", M, "implied_vol", drop(M, "implied_vol"), "'BTC-P'", "implied_vol"),
]

BALANCE_CASES = [
    C("bal-account_id-null", "margin", B, "account_id", cell(B, "account_id", 1, None), "row 1", "null"),
    C("bal-account_id-negative", "margin", B, "account_id", cell(B, "account_id", 1, -2, pa.int64()), "row 1 = -2"),
    C("bal-account_id-string", "margin", B, "account_id", column(B, "account_id", strings), None, "wrong type"),
    C("bal-account_id-missing", "margin", B, "account_id", drop(B, "account_id"), None, "missing column"),
    C("bal-asset-null", "margin", B, "asset", cell(B, "asset", 1, None), "row 1", "null"),
    C("bal-asset-unknown", "margin", B, "asset", cell(B, "asset", 1, "EUR"), "'EUR' (row 1)", "unknown"),
    C("bal-asset-wrong-type", "margin", B, "asset", column(B, "asset", ints), None, "wrong type"),
    C("bal-asset-missing", "margin", B, "asset", drop(B, "asset"), None, "missing column"),
    C(
        "bal-asset-duplicate-key",
        "margin",
        B,
        "asset",
        cell(B, "asset", 2, "USD"),
        "account 2 asset 'USD'",
        "duplicate",
    ),
    *numeric_cases("margin", B, "amount", 1, "row 1", "finite"),
    C("bal-amount-overflow", "margin", B, "amount", cell(B, "amount", 2, 1e308), "account 2", "too large"),
    C("bal-amount-doubled", "margin", B, "amount", doubled(B, "amount"), None, "more than once"),
]

INDEX_CASES = [
    C("index-underlying-null", "market", X, "underlying", cell(X, "underlying", 1, None), "row 1", "null"),
    C("index-underlying-duplicate", "market", X, "underlying", cell(X, "underlying", 1, "BTC"), "'BTC'", "duplicate"),
    C("index-underlying-wrong-type", "market", X, "underlying", column(X, "underlying", ints), None, "wrong type"),
    C("index-underlying-missing", "market", X, "underlying", drop(X, "underlying"), None, "missing column"),
    *numeric_cases("market", X, "index_price", 1, "'ETH'", "positive"),
]

MARK_CASES = [
    C("marks-instrument-null", "market", M, "instrument", cell(M, "instrument", 2, None), "row 2", "null"),
    C(
        "marks-instrument-duplicate",
        "market",
        M,
        "instrument",
        cell(M, "instrument", 4, "BTC-PERP"),
        "'BTC-PERP'",
        "duplicate",
    ),
    C("marks-instrument-wrong-type", "market", M, "instrument", column(M, "instrument", floats), None, "wrong type"),
    C("marks-instrument-missing", "market", M, "instrument", drop(M, "instrument"), None, "missing column"),
    *numeric_cases("market", M, "mark_price", 2, "'BTC-C'", "nonnegative"),
    *[
        C(f"implied_vol-{name}", "market", M, "implied_vol", cell(M, "implied_vol", 2, v), "'BTC-C'")
        for name, v in [("zero", 0.0), ("negative", -0.5), ("nan", NAN), ("inf", INF)]
    ],
    C("implied_vol-wrong-type", "market", M, "implied_vol", column(M, "implied_vol", strings), None, "wrong type"),
    C(
        "greeks-partial",
        "market",
        M,
        "gamma",
        lambda d: {**d, M: d[M].append_column("delta", pa.array([1.0, 1.0, 0.4, -0.3, 1.0]))},
        None,
        "supplied Greeks",
    ),
    C(
        "greeks-nan",
        "market",
        M,
        "vega",
        lambda d: {
            **d,
            M: d[M]
            .append_column("delta", pa.array([1.0, 1.0, 0.4, -0.3, 1.0]))
            .append_column("gamma", pa.array([0.0, 0.0, 1e-5, 1e-5, 0.0]))
            .append_column("vega", pa.array([0.0, 0.0, NAN, 30.0, 0.0]))
            .append_column("theta", pa.array([0.0, 0.0, -50.0, -40.0, 0.0])),
        },
        "'BTC-C'",
    ),
]

ALL_CASES = (
    INSTRUMENT_CASES + ASSET_CASES + RISK_CASES + TIER_CASES + POSITION_CASES + BALANCE_CASES + INDEX_CASES + MARK_CASES
)


def _calls(case: Case) -> list[tuple[str, Callable[[], Any]]]:
    """(name, call) pairs that must each raise; the stages before the case's are built first and
    must succeed."""
    d = case.mutate(base())
    if case.stage == "book":
        return [("Book", lambda: make_book(d))]
    book = make_book(d)
    if case.stage == "market":
        return [("Market", lambda: make_market(d))]
    market = make_market(d)
    calls = [
        ("margin-standard", lambda: me.margin(book, d["positions"], d["balances"], market, model="standard")),
        ("margin-portfolio", lambda: me.margin(book, d["positions"], d["balances"], market, model="portfolio")),
    ]
    if hasattr(me, "liquidation_scan"):
        calls.append(("liquidation_scan", lambda: me.liquidation_scan(book, d["positions"], d["balances"], market)))
    if hasattr(me, "liquidation_distance"):
        calls.append(
            (
                "liquidation_distance",
                lambda: me.liquidation_distance(book, d["positions"], d["balances"], market, model="portfolio"),
            )
        )
    if case.stage == "use":
        calls.append(("greeks", lambda: me.greeks(book, d["positions"], market)))
    return calls


def check_error(
    err: BaseException, table: str, col: str, offender: str | None = None, problem: str | None = None
) -> None:
    assert type(err) is me.MarginInputError, f"{type(err).__name__}: {err}"
    assert isinstance(err, ValueError)
    message = str(err)
    assert err.table == table, message
    assert err.column == col, message
    assert message.startswith(f"{table}.{col}: "), message
    assert isinstance(err.offenders, list) and len(err.offenders) <= 10
    assert "''" not in message, message  # keys are quoted once
    assert err.count >= len(err.offenders)
    if offender is not None:
        assert any(offender in o for o in err.offenders), (offender, err.offenders, message)
        assert offender in message
        assert f"{err.count} offending" in message
    if problem is not None:
        assert problem in err.problem, message


@pytest.mark.parametrize("case", ALL_CASES)
def test_bad_input_raises_margin_input_error(case: Case) -> None:
    for name, call in _calls(case):
        with pytest.raises(me.MarginInputError) as info:
            call()
        try:
            check_error(info.value, case.table, case.column, case.offender, case.problem)
        except AssertionError as e:
            raise AssertionError(f"{name}: {e}") from e


def test_base_book_is_valid_and_matches_reference() -> None:
    d = base()
    book, market = make_book(d), make_market(d)
    got = plain_results(d)
    for model in ("standard", "portfolio"):
        want = reference.margin(book, d["positions"], d["balances"], market, model=model)
        assert_tables_close(got[model], want)
        assert got[model].column("account_id").to_pylist() == [1, 2, 3, 4]
    assert_tables_close(got["greeks"], reference.greeks(book, d["positions"], market))


def test_offenders_are_capped_at_ten_and_counted() -> None:
    d = base()
    n = 25
    d["positions"] = pa.table(
        {
            "account_id": pa.array(range(n), pa.uint64()),
            "instrument": pa.array([f"NOPE-{i}" for i in range(n)]),
            "quantity": pa.array([1.0] * n),
        }
    )
    with pytest.raises(me.MarginInputError) as info:
        me.margin(make_book(d), d["positions"], d["balances"], make_market(d))
    err = info.value
    check_error(err, "positions", "instrument", "'NOPE-0' (row 0)", "unknown instrument")
    assert err.count == n and len(err.offenders) == 10
    assert "25 offending, first 10" in str(err)


# --------------------------------------------------------------------------------------------
# Valuation time and non-table objects
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [None, "not a date", np.datetime64("NaT"), True, 1.5, 2**70, -(2**70), [2025, 1, 1], b"2025"],
    ids=["none", "bad-string", "nat", "bool", "float", "int-overflow", "int-underflow", "list", "bytes"],
)
def test_bad_valuation_time(value: Any) -> None:
    d = base()
    with pytest.raises(me.MarginInputError) as info:
        me.Market(d["index_prices"], d["marks"], value)
    check_error(info.value, "market", "valuation_time")


def test_valuation_time_forms_agree() -> None:
    d = base()
    ns = 1_735_689_600_000_000_000  # 2025-01-01T00:00:00Z
    forms = [
        VALUATION,
        VALUATION.replace(tzinfo=None),
        "2025-01-01T00:00:00+00:00",
        "2025-01-01T01:00:00+01:00",
        np.datetime64("2025-01-01T00:00:00", "ns"),
        ns,
        np.int64(ns),
        dt.date(2025, 1, 1),
    ]
    for form in forms:
        assert me.Market(d["index_prices"], d["marks"], form).valuation_time_ns == ns, form


NOT_TABLES = [
    [1, 2, 3],
    5,
    None,
    "positions.parquet",
    1.5,
    np.zeros(3),
    object(),
    {"account_id": [1, 2], "quantity": [1.0]},
]
NOT_TABLE_IDS = ["list", "int", "none", "str", "float", "ndarray", "object", "ragged-dict"]


@pytest.mark.parametrize("obj", NOT_TABLES, ids=NOT_TABLE_IDS)
@pytest.mark.parametrize("table", ["positions", "balances", "greeks-positions"])
def test_non_table_inputs(obj: Any, table: str) -> None:
    d = base()
    book, market = make_book(d), make_market(d)
    with pytest.raises(me.MarginInputError) as info:
        if table == "positions":
            me.margin(book, obj, d["balances"], market)
        elif table == "balances":
            me.margin(book, d["positions"], obj, market)
        else:
            me.greeks(book, obj, market)
    check_error(info.value, table.removeprefix("greeks-"), "*")


@pytest.mark.parametrize("obj", NOT_TABLES, ids=NOT_TABLE_IDS)
@pytest.mark.parametrize("table", ["instruments", "assets", "risk_params", "margin_tiers", "index_prices", "marks"])
def test_non_table_book_and_market_inputs(obj: Any, table: str) -> None:
    if obj is None and table in ("risk_params", "margin_tiers"):
        pytest.skip("None means 'no table' for the optional book tables")
    d = base()
    d[table] = obj
    with pytest.raises(me.MarginInputError) as info:
        if table in ("index_prices", "marks"):
            make_market(d)
        else:
            make_book(d)
    check_error(info.value, table, "*")


@pytest.mark.parametrize(
    "obj", [pa.array([1, 2, 3]), pa.chunked_array([[1.0, 2.0]]), pa.scalar(3)], ids=["array", "chunked-array", "scalar"]
)
def test_arrow_objects_that_are_not_tables(obj: Any) -> None:
    d = base()
    book, market = make_book(d), make_market(d)
    with pytest.raises(me.MarginInputError) as info:
        me.margin(book, obj, d["balances"], market)
    check_error(info.value, "positions", "*")


def test_model_and_threads_arguments() -> None:
    d = base()
    book, market = make_book(d), make_market(d)
    with pytest.raises(ValueError, match="model"):
        me.margin(book, d["positions"], d["balances"], market, model="bogus")
    with pytest.raises(me.MarginInputError) as info:
        me.margin(book, d["positions"], d["balances"], market, threads=0)
    check_error(info.value, "arguments", "threads")


@pytest.mark.parametrize(
    ("stress", "column"),
    [
        ({"BTC": NAN}, "move"),
        ({"BTC": INF}, "move"),
        ({"BTC": -1.0}, "move"),
        ({"BTC": -1.5}, "move"),
        ({"DOGE": 0.1}, "underlying"),
        ({"BTC": "x"}, "move"),
        ("BTC=-0.2", "*"),
    ],
    ids=["nan", "inf", "minus-one", "below-minus-one", "unknown", "not-a-number", "not-a-dict"],
)
def test_bad_stress(stress: Any, column: str) -> None:
    if not hasattr(me, "liquidation_scan"):
        pytest.skip("no liquidation_scan")
    d = base()
    book, market = make_book(d), make_market(d)
    with pytest.raises(me.MarginInputError) as info:
        me.liquidation_scan(book, d["positions"], d["balances"], market, stress=stress)
    assert str(info.value).startswith(f"stress.{column}: "), str(info.value)


# --------------------------------------------------------------------------------------------
# Unusual but valid Arrow layouts: exactly the plain results
# --------------------------------------------------------------------------------------------


def assert_same(got: dict[str, pa.Table], want: dict[str, pa.Table]) -> None:
    for name, table in want.items():
        assert got[name].schema == table.schema, name
        assert got[name].to_pylist() == table.to_pylist(), name


def results_of(d: dict[str, Any]) -> dict[str, pa.Table]:
    return plain_results(d)


def with_padding(t: pa.Table, pad: int = 3) -> pa.Table:
    """`t` as a slice (non-zero offsets in every buffer) of a larger table."""
    junk = pa.Table.from_pylist([t.to_pylist()[0]] * pad, schema=t.schema)
    whole = pa.concat_tables([junk, t, junk]).combine_chunks()
    sliced = whole.slice(pad, t.num_rows)
    assert sliced.column(0).chunk(0).offset == pad
    return sliced


def chunked(t: pa.Table, sizes: tuple[int, ...] = (1, 2)) -> pa.Table:
    """`t` split into several record batches (one of them empty)."""
    parts, start = [t.slice(0, 0)], 0
    for s in sizes:
        parts.append(t.slice(start, s))
        start += s
    parts.append(t.slice(start))
    out = pa.concat_tables(parts)
    assert out.column(0).num_chunks >= 3
    return out


def map_string_columns(t: pa.Table, cast: Callable[[pa.ChunkedArray], pa.ChunkedArray]) -> pa.Table:
    for i, f in enumerate(t.schema):
        if pa.types.is_string(f.type):
            col = cast(t.column(i))
            t = t.set_column(i, pa.field(f.name, col.type), col)
    return t


LAYOUT_TABLES = [
    "instruments",
    "assets",
    "risk_params",
    "margin_tiers",
    "positions",
    "balances",
    "index_prices",
    "marks",
]


@pytest.mark.parametrize("table", LAYOUT_TABLES)
def test_sliced_tables(table: str) -> None:
    d = base()
    d[table] = with_padding(d[table])
    assert_same(results_of(d), plain_results())


@pytest.mark.parametrize("table", LAYOUT_TABLES)
def test_chunked_tables(table: str) -> None:
    d = base()
    d[table] = chunked(d[table])
    assert_same(results_of(d), plain_results())


def test_sliced_and_chunked_everything() -> None:
    d = base()
    for t in LAYOUT_TABLES:
        d[t] = chunked(with_padding(d[t]), (2,))
    assert_same(results_of(d), plain_results())


STRING_LAYOUTS: dict[str, Callable[[pa.ChunkedArray], pa.ChunkedArray]] = {
    "dictionary": lambda c: c.dictionary_encode(),
    "dictionary-int8": lambda c: c.cast(pa.dictionary(pa.int8(), pa.string())),
    "dictionary-uint32-large": lambda c: c.cast(pa.large_string()).cast(pa.dictionary(pa.uint32(), pa.large_string())),
    "large_string": lambda c: c.cast(pa.large_string()),
    "string_view": lambda c: c.cast(pa.string_view()),
}


@pytest.mark.parametrize("layout", list(STRING_LAYOUTS))
@pytest.mark.parametrize("table", [*LAYOUT_TABLES, "all"])
def test_string_key_layouts(layout: str, table: str) -> None:
    d = base()
    for t in LAYOUT_TABLES if table == "all" else [table]:
        d[t] = map_string_columns(d[t], STRING_LAYOUTS[layout])
    assert_same(results_of(d), plain_results())


def test_dictionary_keys_with_unused_and_chunked_dictionaries() -> None:
    d = base()
    pos = d["positions"]
    dictionary = pa.array(["ETH-PERP", "UNUSED", "BTC-P", "BTC-C", "BTC-FUT", "BTC-PERP"])
    lookup = {k: i for i, k in enumerate(dictionary.to_pylist())}
    codes = pa.array([lookup[k] for k in pos.column("instrument").to_pylist()], pa.int16())
    col = pa.DictionaryArray.from_arrays(codes, dictionary)
    d["positions"] = chunked(pos.set_column(1, pa.field("instrument", col.type), col))
    assert_same(results_of(d), plain_results())


def test_chunks_with_different_dictionaries() -> None:
    """Each record batch of a dictionary column may carry its own dictionary."""
    d = base()
    for t in ("instruments", "positions", "balances", "marks"):
        tab = d[t]
        parts = [tab.slice(0, 2), tab.slice(2)]
        encoded = [map_string_columns(p, lambda c: c.dictionary_encode()) for p in parts]
        assert encoded[0].schema == encoded[1].schema
        d[t] = pa.Table.from_batches([b for e in encoded for b in e.to_batches()], schema=encoded[0].schema)
    assert_same(results_of(d), plain_results())


def test_long_string_view_keys() -> None:
    """string_view keys longer than 12 bytes live out of line in data buffers."""
    d = base()
    long = {
        k: f"{k}-with-a-name-long-enough-to-leave-the-view" for k in d["instruments"].column("instrument").to_pylist()
    }
    for t in ("instruments", "margin_tiers", "positions", "marks"):
        keys = [long[k] for k in d[t].column("instrument").to_pylist()]
        d[t] = _replace(d[t], "instrument", pa.array(keys, pa.string_view()))
    d["positions"] = with_padding(d["positions"])
    assert_same(results_of(d), plain_results())


def test_all_null_nullable_columns_with_empty_dictionary() -> None:
    """An all-null dictionary column may have an empty dictionary (no panic)."""
    d = base()
    empty = pa.DictionaryArray.from_arrays(pa.nulls(2, pa.int32()), pa.array([], pa.string()))
    d["assets"] = _replace(d["assets"], "underlying", empty)
    assert_same(results_of(d), plain_results())


@pytest.mark.parametrize(
    "typ", [pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64()]
)
def test_account_id_types(typ: pa.DataType) -> None:
    d = base()
    for t in ("positions", "balances"):
        d[t] = _replace(d[t], "account_id", d[t].column("account_id").cast(typ))
    assert_same(results_of(d), plain_results())


def test_account_ids_beyond_int64() -> None:
    d = base()
    big = 2**64 - 5
    for t in ("positions", "balances"):
        ids = [big + i - 1 for i in d[t].column("account_id").to_pylist()]
        d[t] = _replace(d[t], "account_id", pa.array(ids, pa.uint64()))
    got, want = results_of(d), plain_results()
    assert got["standard"].column("account_id").to_pylist() == [big, big + 1, big + 2, big + 3]
    for name in want:
        g = got[name].drop_columns(["account_id"]).to_pylist()
        assert g == want[name].drop_columns(["account_id"]).to_pylist(), name


@pytest.mark.parametrize("typ", [pa.int32(), pa.int64(), pa.uint64()])
def test_integer_instrument_keys(typ: pa.DataType) -> None:
    d = base()
    codes = {"BTC-PERP": 10, "BTC-FUT": 11, "BTC-C": 12, "BTC-P": 13, "ETH-PERP": 20}
    for t in ("instruments", "margin_tiers", "positions", "marks"):
        keys = [codes[k] for k in d[t].column("instrument").to_pylist()]
        d[t] = _replace(d[t], "instrument", pa.array(keys, typ))
    assert_same(results_of(d), plain_results())
    # and a string key against an integer book is a type error, not an unknown key
    d["positions"] = base()["positions"]
    with pytest.raises(me.MarginInputError) as info:
        me.margin(make_book(d), d["positions"], d["balances"], make_market(d))
    check_error(info.value, "positions", "instrument", None, "wrong type")


def test_integer_quantities_and_float32_rates() -> None:
    d = base()
    d["positions"] = rows("positions", lambda r: float(r["quantity"]).is_integer())(d)["positions"]
    want = plain_results(d)
    d["positions"] = _replace(d["positions"], "quantity", d["positions"].column("quantity").cast(pa.int32()))
    d["index_prices"] = _replace(
        d["index_prices"], "index_price", d["index_prices"].column("index_price").cast(pa.int64())
    )
    assert_same(results_of(d), want)


def test_column_order_and_extra_columns_do_not_matter() -> None:
    d = base()
    for t in LAYOUT_TABLES:
        tab = d[t].append_column("comment", pa.array(["x"] * d[t].num_rows))
        d[t] = tab.select(list(reversed(tab.column_names)))
    assert_same(results_of(d), plain_results())


def test_record_batch_and_reader_inputs() -> None:
    d = base()
    want = plain_results()
    book, market = make_book(d), make_market(d)
    pos, bal = d["positions"], d["balances"]
    batch_p, batch_b = (pos.combine_chunks().to_batches()[0], bal.combine_chunks().to_batches()[0])
    assert me.margin(book, batch_p, batch_b, market).to_pylist() == want["standard"].to_pylist()
    reader_p = pa.RecordBatchReader.from_batches(pos.schema, pos.to_batches())
    reader_b = pa.RecordBatchReader.from_batches(bal.schema, bal.to_batches())
    assert me.margin(book, reader_p, reader_b, market).to_pylist() == want["standard"].to_pylist()
    assert me.margin(book, pos.to_pydict(), bal.to_pydict(), market).to_pylist() == want["standard"].to_pylist()


def test_polars_inputs() -> None:
    pl = pytest.importorskip("polars")
    d = base()
    for t in LAYOUT_TABLES:
        d[t] = pl.from_arrow(d[t])
    assert_same(results_of(d), plain_results())


def test_polars_categorical_keys() -> None:
    pl = pytest.importorskip("polars")
    d = base()
    for t in ("positions", "balances", "marks"):
        df = pl.from_arrow(d[t])
        d[t] = df.with_columns(pl.col(c).cast(pl.Categorical) for c, typ in df.schema.items() if typ == pl.String)
    assert_same(results_of(d), plain_results())


def test_pandas_inputs() -> None:
    pd = pytest.importorskip("pandas")
    d = base()
    for t in ("positions", "balances", "index_prices", "marks"):
        d[t] = d[t].to_pandas()
    assert isinstance(d["positions"], pd.DataFrame)
    assert_same(results_of(d), plain_results())


# --------------------------------------------------------------------------------------------
# Degenerate sizes
# --------------------------------------------------------------------------------------------


def reference_results(d: dict[str, Any]) -> dict[str, pa.Table]:
    book, market = make_book(d), make_market(d)
    return {
        "standard": reference.margin(book, d["positions"], d["balances"], market, model="standard"),
        "portfolio": reference.margin(book, d["positions"], d["balances"], market, model="portfolio"),
        "greeks": reference.greeks(book, d["positions"], market),
    }


def assert_matches_reference(d: dict[str, Any]) -> dict[str, pa.Table]:
    got, want = results_of(d), reference_results(d)
    for name in want:
        assert_tables_close(got[name], want[name])
    return got


def test_empty_positions() -> None:
    d = base()
    d["positions"] = d["positions"].slice(0, 0)
    got = assert_matches_reference(d)
    assert got["standard"].column("account_id").to_pylist() == [1, 2, 4]
    assert got["greeks"].num_rows == 0
    assert got["standard"].column("initial_margin").to_pylist() == [0.0, 0.0, 0.0]


def test_empty_balances() -> None:
    d = base()
    d["balances"] = d["balances"].slice(0, 0)
    got = assert_matches_reference(d)
    assert got["standard"].column("account_id").to_pylist() == [1, 2, 3]


def test_empty_positions_and_balances() -> None:
    d = base()
    d["positions"] = d["positions"].slice(0, 0)
    d["balances"] = d["balances"].slice(0, 0)
    got = assert_matches_reference(d)
    assert got["standard"].num_rows == 0 and got["portfolio"].num_rows == 0
    assert got["standard"].schema == plain_results()["standard"].schema


def test_empty_tables_from_empty_lists() -> None:
    """Empty tables built without types (columns of Arrow type null) are accepted."""
    d = base()
    want = plain_results({**d, "positions": d["positions"].slice(0, 0), "balances": d["balances"].slice(0, 0)})
    d["positions"] = pa.table({"account_id": [], "instrument": [], "quantity": []})
    d["balances"] = pa.table({"account_id": [], "asset": [], "amount": []})
    assert_same(results_of(d), want)


def test_zero_batch_tables() -> None:
    d = base()
    d["positions"] = pa.Table.from_batches([], schema=d["positions"].schema)
    d["balances"] = pa.Table.from_batches([], schema=d["balances"].schema)
    got = results_of(d)
    assert got["standard"].num_rows == 0 and got["greeks"].num_rows == 0


def test_empty_optional_book_tables() -> None:
    d = base()
    want = plain_results({**d, "risk_params": None, "margin_tiers": None})
    d["risk_params"] = d["risk_params"].slice(0, 0)
    d["margin_tiers"] = d["margin_tiers"].slice(0, 0)
    assert_same(results_of(d), want)


def test_empty_market_is_an_error_only_when_used() -> None:
    d = base()
    d["marks"] = d["marks"].slice(0, 0)
    d["index_prices"] = d["index_prices"].slice(0, 0)
    book, market = make_book(d), make_market(d)
    assert me.margin(book, d["positions"].slice(0, 0), d["balances"], market).num_rows == 3
    with pytest.raises(me.MarginInputError) as info:
        me.margin(book, d["positions"], d["balances"], market)
    check_error(info.value, "marks", "instrument", "'BTC-PERP'", "no mark")


def test_one_row() -> None:
    d = base()
    d["positions"] = d["positions"].slice(1, 1)  # account 1, short call
    d["balances"] = d["balances"].slice(0, 1)
    got = assert_matches_reference(d)
    assert got["standard"].column("account_id").to_pylist() == [1]
    assert got["standard"].column("initial_margin").to_pylist()[0] > 0


def test_all_rows_of_one_account() -> None:
    d = base()
    for t in ("positions", "balances"):
        d[t] = _replace(d[t], "account_id", pa.array([42] * d[t].num_rows, pa.uint64()))
    d["balances"] = rows("balances", lambda r: r["amount"] in (50_000.0, 0.5))(d)["balances"]
    got = assert_matches_reference(d)
    assert got["standard"].column("account_id").to_pylist() == [42]
    assert got["greeks"].column("underlying").to_pylist() == ["BTC", "ETH"]


def test_positions_netting_to_zero_keep_the_account() -> None:
    d = base()
    d["positions"] = pa.table(
        {"account_id": pa.array([7, 7], pa.uint64()), "instrument": ["BTC-PERP", "BTC-PERP"], "quantity": [1.5, -1.5]}
    )
    got = assert_matches_reference(d)
    (row,) = [r for r in got["standard"].to_pylist() if r["account_id"] == 7]
    assert row["account_id"] == 7 and row["maintenance_margin"] == 0.0 and row["health"] is None


def test_perpetual_only_book_with_all_null_columns() -> None:
    """Optional columns that are all null may arrive with Arrow type null (untyped Nones)."""
    d = base()
    d["instruments"] = pa.table(
        {
            "instrument": ["BTC-PERP", "ETH-PERP"],
            "kind": ["perpetual", "perpetual"],
            "underlying": ["BTC", "ETH"],
            "multiplier": [1.0, 0.1],
            "expiry": [None, None],
            "strike": [None, None],
            "option_type": [None, None],
            "initial_margin_rate": [0.02, 0.04],
            "maintenance_margin_rate": [0.01, 0.02],
            "initial_margin_floor": [None, None],
        }
    )
    assert d["instruments"].schema.field("expiry").type == pa.null()
    d["margin_tiers"] = rows("margin_tiers", lambda r: r["instrument"] == "BTC-PERP")(d)["margin_tiers"]
    d["positions"] = rows("positions", lambda r: r["instrument"] in ("BTC-PERP", "ETH-PERP"))(d)["positions"]
    d["marks"] = rows("marks", lambda r: r["instrument"] in ("BTC-PERP", "ETH-PERP"))(d)["marks"]
    d["marks"] = d["marks"].drop_columns(["implied_vol"]).append_column("implied_vol", pa.nulls(2))
    d["assets"] = d["assets"].drop_columns(["underlying"]).append_column("underlying", pa.nulls(2))
    assert_matches_reference(d)


def test_huge_but_finite_inputs_stay_finite_or_raise() -> None:
    """Large values either give finite results or a MarginInputError, never inf or NaN."""
    for q in (1e150, 1e200, 1e300, 1e308, -1e308):
        d = base()
        d = cell("positions", "quantity", 2, q)(d)
        d = cell("balances", "amount", 0, abs(q))(d)
        book, market = make_book(d), make_market(d)
        for fn, args in (
            (partial(me.margin, model="standard"), (book, d["positions"], d["balances"], market)),
            (partial(me.margin, model="portfolio"), (book, d["positions"], d["balances"], market)),
            (me.greeks, (book, d["positions"], market)),
        ):
            try:
                out = fn(*args)
            except me.MarginInputError as e:
                assert e.column in ("quantity", "amount"), str(e)
                continue
            for name in out.column_names:
                if pa.types.is_floating(out.schema.field(name).type):
                    assert all(v is None or math.isfinite(v) for v in out.column(name).to_pylist()), name


# --------------------------------------------------------------------------------------------
# Overflow outside the input layer (see docs/errors.md, "Overflow")
# --------------------------------------------------------------------------------------------


def test_free_collateral_overflow_is_an_error() -> None:
    d = base()
    d = cell("balances", "amount", 3, -1.4e303)(d)  # account 4 borrows 1.4e303 BTC: -1.68e308 weighted
    d = cell("instruments", "initial_margin_rate", 0, 1.0)(d)
    d["margin_tiers"] = None
    d["positions"] = pa.table(
        {"account_id": pa.array([4], pa.uint64()), "instrument": ["BTC-PERP"], "quantity": [1.5e303]}
    )
    book, market = make_book(d), make_market(d)
    with pytest.raises(me.MarginInputError):
        out = me.margin(book, d["positions"], d["balances"], market, model="standard")
        assert all(math.isfinite(v) for v in out.column("free_collateral").to_pylist())


def test_tiny_margin_gives_finite_health() -> None:
    d = base()
    d = cell("positions", "quantity", 0, 1e-320)(d)
    d["positions"] = d["positions"].slice(0, 1)
    book, market = make_book(d), make_market(d)
    try:
        out = me.margin(book, d["positions"], d["balances"], market)
    except me.MarginInputError:
        return
    assert all(v is None or math.isfinite(v) for v in out.column("health").to_pylist())
