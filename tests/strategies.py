"""Hypothesis strategies for the differential tests: random VALID books and Black-76 inputs.

`books()` draws a dict with keys `instruments, assets, margin_tiers, risk_params, positions,
balances, index_prices, marks` (pyarrow Tables; `margin_tiers` / `risk_params` may be None) and
`valuation_time_ns` (int). The books respect every validity rule of METHODOLOGY.md §1 and
docs/methodology-notes.md (unique keys, weights and rates in range, a mark for every instrument,
an index price for every underlying, no duplicate (account, asset) balance, ...), while covering
the edge cases the engine must get right: perpetuals, futures and options (calls and puts, near,
at and after expiry, strikes around spot), uint64 account ids above 2^63, repeated and unsorted
position rows, rows netting exactly to zero, accounts with balances only / positions only /
nothing left, borrows, size premiums, margin tiers, entry prices present or absent, integer or
string instrument keys in several Arrow encodings, timestamps of every unit.

This module is self-contained (it does not import margin_engine), so it can be imported before the
extension module is built.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import numpy as np
import pyarrow as pa
from hypothesis import strategies as st

NS_PER_SECOND = 1_000_000_000
NS_PER_DAY = 86_400 * NS_PER_SECOND
NS_PER_YEAR = 365 * NS_PER_DAY
UNIT_NS = {"s": NS_PER_SECOND, "ms": 1_000_000, "us": 1_000, "ns": 1}

# Deliberately not in sorted order, with lower case and a non-ASCII name, so that "underlyings
# in sorted name order (UTF-8 bytes)" is exercised.
UNDERLYING_NAMES = ("ETH", "BTC", "SOL", "doge", "XRP", "ÄVAX")
STABLE_ASSETS = ("USD", "USDC", "USDT")

RISK_PARAM_COLUMNS = (
    "price_range",
    "price_steps",
    "vol_up",
    "vol_down",
    "vol_term_exponent",
    "extreme_move",
    "extreme_cover",
    "short_option_minimum",
    "im_factor",
)

Draw = Callable[[st.SearchStrategy[Any]], Any]


# --------------------------------------------------------------------------------------------
# Small building blocks
# --------------------------------------------------------------------------------------------


def log_uniform(lo: float, hi: float) -> st.SearchStrategy[float]:
    """Floats in [lo, hi], uniform in log scale (realistic spread over orders of magnitude)."""
    return st.floats(math.log10(lo), math.log10(hi)).map(lambda e: min(max(10.0**e, lo), hi))


def signed_quantity() -> st.SearchStrategy[float]:
    """A signed position quantity with |q| in [1e-3, 1e4]."""
    return st.tuples(st.booleans(), log_uniform(1e-3, 1e4)).map(lambda t: t[1] if t[0] else -t[1])


def dyadic_quantity() -> st.SearchStrategy[float]:
    """A signed quantity `k / 2^e` (k < 2^20, e <= 10): sums of a few of them are exact in any
    order, so rows built from them net to exactly 0 whatever the row order."""
    return st.tuples(st.integers(1, 2**20 - 1), st.integers(0, 10), st.booleans()).map(
        lambda t: (t[0] / 2.0 ** t[1]) * (1.0 if t[2] else -1.0)
    )


def _ncdf(x: float) -> float:
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _b76_price(forward: float, strike: float, time: float, vol: float, is_call: bool) -> float:
    """Black-76 price (r = 0), used only to make realistic option marks."""
    if time <= 0.0:
        return max(forward - strike, 0.0) if is_call else max(strike - forward, 0.0)
    sd = vol * math.sqrt(time)
    d1 = (math.log(forward / strike) + sd * sd / 2.0) / sd
    d2 = d1 - sd
    if is_call:
        return max(forward * _ncdf(d1) - strike * _ncdf(d2), 0.0)
    return max(strike * _ncdf(-d2) - forward * _ncdf(-d1), 0.0)


def _shuffled(draw: Draw, rows: list[Any]) -> list[Any]:
    """`rows` in a drawn order (input tables need not be sorted)."""
    if len(rows) < 2:
        return list(rows)
    return list(draw(st.permutations(rows)))


def _columns(rows: list[dict[str, Any]], names: list[str]) -> dict[str, list[Any]]:
    """Row dicts to column lists."""
    return {name: [row[name] for row in rows] for name in names}


def _key_array(values: list[Any], int_keys: bool, encoding: str) -> pa.Array:
    """An instrument key column: int64, or strings as utf8 / large_utf8 / dictionary."""
    if int_keys:
        return pa.array(values, pa.int64())
    if encoding == "large_utf8":
        return pa.array(values, pa.large_utf8())
    if encoding == "dictionary":
        return pa.array(values, pa.utf8()).dictionary_encode()
    return pa.array(values, pa.utf8())


# --------------------------------------------------------------------------------------------
# Instruments, tiers, marks
# --------------------------------------------------------------------------------------------


@st.composite
def expiry_offset_ns(draw: Draw, kind: str) -> int:
    """Expiry minus valuation time, ns. Options: already expired, exactly at expiry, within an
    hour, or days to two years out. Futures: days to a year out (or just expired)."""
    bucket = draw(st.integers(0, 9))  # an explicit mix: plain one_of would favour the first branch
    if kind == "option":
        if bucket == 0:
            return 0
        if bucket == 1:
            after: int = draw(st.integers(-30 * NS_PER_DAY, -1))
            return after
        if bucket == 2:
            near: int = draw(st.integers(1, 3600 * NS_PER_SECOND))
            return near
        later: int = draw(st.integers(NS_PER_DAY, 2 * NS_PER_YEAR))
        return later
    if bucket == 0:
        expired: int = draw(st.integers(-NS_PER_DAY, 0))
        return expired
    offset: int = draw(st.integers(NS_PER_DAY, NS_PER_YEAR))
    return offset


@st.composite
def _instrument(
    draw: Draw, kind: str, underlying: str, spot: float, valuation_ns: int, unit: str
) -> dict[str, Any]:
    """One instrument row (without its key), plus a `_mark` entry describing its market."""
    multiplier = draw(
        st.one_of(st.sampled_from([1.0, 0.1, 0.01, 0.001, 10.0, 100.0]), log_uniform(1e-3, 1e2))
    )
    mmr = draw(st.floats(0.001, 0.2))
    imr = mmr * draw(st.floats(1.0, 3.0))
    row: dict[str, Any] = {
        "kind": kind,
        "underlying": underlying,
        "multiplier": multiplier,
        "expiry": None,
        "strike": None,
        "option_type": None,
        "initial_margin_rate": imr,
        "maintenance_margin_rate": mmr,
        "initial_margin_floor": None,
    }
    time = 0.0
    if kind != "perpetual":
        expiry_ns = valuation_ns + draw(expiry_offset_ns(kind))
        row["expiry"] = expiry_ns // UNIT_NS[unit]  # floor: "at expiry" stays at or before valuation
        time = max(row["expiry"] * UNIT_NS[unit] - valuation_ns, 0) / 1e9 / 31_536_000
    if kind == "option":
        row["strike"] = spot * (1.0 if draw(st.integers(0, 5)) == 0 else draw(st.floats(0.5, 1.6)))
        row["option_type"] = draw(st.sampled_from(["call", "put"]))
        row["initial_margin_floor"] = draw(st.floats(0.0, 0.2))
        vol = draw(st.floats(0.05, 3.0))
        model = _b76_price(spot, row["strike"], time, vol, row["option_type"] == "call")
        mark = model * draw(st.one_of(st.just(1.0), st.floats(0.95, 1.05)))
        row["_mark"] = (mark, vol)
    elif kind == "future":
        row["_mark"] = (spot * draw(st.floats(0.95, 1.1)), None)
    else:
        row["_mark"] = (spot * draw(st.floats(0.99, 1.01)), None)
    return row


@st.composite
def _tiers_for(draw: Draw, key: Any, imr: float, mmr: float) -> list[dict[str, Any]]:
    """1-4 brackets for one perpetual/future: increasing floors (the first at 0 or not, so the
    implicit base bracket is exercised) and non-decreasing rates with 1 >= imr >= mmr > 0."""
    n = draw(st.integers(1, 4))
    floors = sorted(set(draw(st.lists(log_uniform(1e2, 1e7), min_size=n, max_size=n))))
    if draw(st.booleans()):
        floors[0] = 0.0
    rows = []
    for floor in floors:
        mmr = min(mmr * draw(st.one_of(st.just(1.0), st.floats(1.0, 2.0))), 1.0)
        imr = min(max(imr * draw(st.one_of(st.just(1.0), st.floats(1.0, 2.0))), mmr), 1.0)
        rows.append(
            {
                "instrument": key,
                "notional_floor": floor,
                "initial_margin_rate": imr,
                "maintenance_margin_rate": mmr,
            }
        )
    return rows


# --------------------------------------------------------------------------------------------
# Assets and risk parameters
# --------------------------------------------------------------------------------------------


@st.composite
def _assets(draw: Draw, underlyings: list[str], spots: dict[str, float]) -> list[dict[str, Any]]:
    """1-5 collateral assets: stablecoins and coins linked to an underlying (or not)."""
    names = draw(
        st.lists(
            st.sampled_from(STABLE_ASSETS + tuple(underlyings) + ("GOLD",)),
            min_size=1,
            max_size=5,
            unique=True,
        )
    )
    rows = []
    for name in names:
        stable = name in STABLE_ASSETS
        if stable:
            price = draw(st.one_of(st.just(1.0), st.floats(0.98, 1.02)))
        elif name in spots:
            price = spots[name] * draw(st.floats(0.99, 1.01))
        else:
            price = draw(log_uniform(0.01, 1e5))
        iw, mw = sorted(draw(st.lists(st.floats(0.0, 1.0), min_size=2, max_size=2)))
        if stable and draw(st.booleans()):
            iw = mw = 1.0
        mlw, ilw = sorted(draw(st.lists(st.floats(1.0, 1.5), min_size=2, max_size=2)))
        rows.append(
            {
                "asset": name,
                "price": price,
                "initial_weight": iw,
                "maintenance_weight": mw,
                "initial_liability_weight": ilw,
                "maintenance_liability_weight": mlw,
                "size_premium": draw(st.one_of(st.just(0.0), st.floats(1e-5, 1e-2))),
                "underlying": name if name in spots and draw(st.booleans()) else None,
            }
        )
    return rows


@st.composite
def _risk_params(draw: Draw, underlyings: list[str]) -> pa.Table | None:
    """None, or a table for some underlyings with a random subset of the §4 columns.

    `extreme_move × price_range` stays below 1 (R <= 0.3, extreme_move <= 3), so no scenario
    takes a price to zero or below.
    """
    if draw(st.booleans()):
        return None
    names = draw(st.lists(st.sampled_from(underlyings), min_size=1, max_size=len(underlyings), unique=True))
    cols = draw(st.lists(st.sampled_from(RISK_PARAM_COLUMNS), unique=True, max_size=len(RISK_PARAM_COLUMNS)))
    values: dict[str, st.SearchStrategy[Any]] = {
        "price_range": st.floats(0.02, 0.3),
        "price_steps": st.integers(1, 20).map(lambda k: 2 * k + 1),
        "vol_up": st.floats(0.0, 1.0),
        "vol_down": st.floats(0.0, 0.9),
        "vol_term_exponent": st.floats(0.0, 1.0),
        "extreme_move": st.floats(1.0, 3.0),
        "extreme_cover": st.floats(0.0, 1.0),
        "short_option_minimum": st.floats(0.0, 0.05),
        "im_factor": st.floats(1.0, 2.0),
    }
    data: dict[str, Any] = {"underlying": pa.array(names, pa.utf8())}
    for col in RISK_PARAM_COLUMNS:
        if col in cols:
            vals = [draw(values[col]) for _ in names]
            data[col] = pa.array(vals, pa.int64() if col == "price_steps" else pa.float64())
    return pa.table(data)


# --------------------------------------------------------------------------------------------
# Accounts: positions and balances
# --------------------------------------------------------------------------------------------


@st.composite
def _account_positions(draw: Draw, account: int, keys: list[Any]) -> list[dict[str, Any]]:
    """Position rows of one account: for each chosen instrument, one to three rows, netting to
    a non-zero quantity or (sometimes) to exactly zero."""
    rows: list[dict[str, Any]] = []
    chosen = draw(st.lists(st.sampled_from(keys), max_size=min(8, len(keys))))  # repeats allowed
    for key in chosen:
        if draw(st.integers(0, 4)) == 0:  # nets to exactly 0 whatever the row order
            qs = draw(st.lists(dyadic_quantity(), min_size=1, max_size=2))
            qs.append(-sum(qs))
        else:
            qs = draw(st.lists(signed_quantity(), min_size=1, max_size=3))
        rows.extend({"account_id": account, "instrument": key, "quantity": q} for q in qs)
    return rows


@st.composite
def _account_balances(draw: Draw, account: int, assets: list[str]) -> list[dict[str, Any]]:
    """Balance rows of one account: distinct assets, amounts positive, negative (borrows) or 0."""
    names = draw(st.lists(st.sampled_from(assets), unique=True, max_size=len(assets)))
    amount = st.one_of(
        log_uniform(1e-3, 1e6),
        log_uniform(1e-3, 1e5).map(lambda a: -a),
        st.just(0.0),
    )
    return [{"account_id": account, "asset": name, "amount": draw(amount)} for name in names]


# --------------------------------------------------------------------------------------------
# The book
# --------------------------------------------------------------------------------------------


@st.composite
def books(draw: Draw, max_accounts: int = 25) -> dict[str, Any]:
    """A random valid book, positions, balances and market (see the module docstring)."""
    valuation_ns = draw(
        st.one_of(
            st.integers(1_600_000_000, 1_900_000_000).map(lambda s: s * NS_PER_SECOND),  # whole second
            st.integers(1_600_000_000 * NS_PER_SECOND, 1_900_000_000 * NS_PER_SECOND),
        )
    )
    underlyings = draw(st.lists(st.sampled_from(UNDERLYING_NAMES), min_size=1, max_size=4, unique=True))
    spots = {u: draw(log_uniform(0.01, 1e5)) for u in underlyings}

    # --- instruments -------------------------------------------------------------------------
    unit = draw(st.sampled_from(list(UNIT_NS)))
    tz = draw(st.sampled_from(["UTC", None]))
    int_keys = draw(st.booleans())
    rows: list[dict[str, Any]] = []
    for u in underlyings:
        kinds = (
            ["perpetual"] * draw(st.integers(0, 2))
            + ["future"] * draw(st.integers(0, 2))
            + ["option"] * draw(st.integers(0, 6))
        )
        rows.extend(draw(_instrument(kind, u, spots[u], valuation_ns, unit)) for kind in kinds)
    if not rows:
        rows.append(draw(_instrument("perpetual", underlyings[0], spots[underlyings[0]], valuation_ns, unit)))
    if int_keys:
        keys: list[Any] = draw(
            st.lists(st.integers(-(2**63), 2**63 - 1), min_size=len(rows), max_size=len(rows), unique=True)
        )
    else:
        keys = [f"{r['underlying']}-{r['kind'][:3].upper()}-{i}" for i, r in enumerate(rows)]
    for key, row in zip(keys, rows, strict=True):
        row["instrument"] = key
    rows = _shuffled(draw, rows)
    keys = [r["instrument"] for r in rows]
    names = [
        "instrument", "kind", "underlying", "multiplier", "expiry", "strike", "option_type",
        "initial_margin_rate", "maintenance_margin_rate", "initial_margin_floor",
    ]  # fmt: skip
    cols = _columns(rows, names)
    instruments = pa.table(
        {
            "instrument": _key_array(cols["instrument"], int_keys, "utf8"),
            "kind": pa.array(cols["kind"], pa.utf8()),
            "underlying": pa.array(cols["underlying"], pa.utf8()),
            "multiplier": pa.array(cols["multiplier"], pa.float64()),
            "expiry": pa.array(cols["expiry"], pa.timestamp(unit, tz=tz)),
            "strike": pa.array(cols["strike"], pa.float64()),
            "option_type": pa.array(cols["option_type"], pa.utf8()),
            "initial_margin_rate": pa.array(cols["initial_margin_rate"], pa.float64()),
            "maintenance_margin_rate": pa.array(cols["maintenance_margin_rate"], pa.float64()),
            "initial_margin_floor": pa.array(cols["initial_margin_floor"], pa.float64()),
        }
    )

    # --- margin tiers (some perpetuals / futures) ---------------------------------------------
    tier_rows: list[dict[str, Any]] = []
    if draw(st.booleans()):
        for row in rows:
            if row["kind"] != "option" and draw(st.booleans()):
                tier_rows.extend(
                    draw(
                        _tiers_for(
                            row["instrument"], row["initial_margin_rate"], row["maintenance_margin_rate"]
                        )
                    )
                )
    margin_tiers: pa.Table | None = None
    if tier_rows:
        tier_rows = _shuffled(draw, tier_rows)
        tcols = _columns(
            tier_rows, ["instrument", "notional_floor", "initial_margin_rate", "maintenance_margin_rate"]
        )
        margin_tiers = pa.table(
            {
                "instrument": _key_array(tcols["instrument"], int_keys, "utf8"),
                "notional_floor": pa.array(tcols["notional_floor"], pa.float64()),
                "initial_margin_rate": pa.array(tcols["initial_margin_rate"], pa.float64()),
                "maintenance_margin_rate": pa.array(tcols["maintenance_margin_rate"], pa.float64()),
            }
        )

    # --- market --------------------------------------------------------------------------------
    mark_rows = _shuffled(draw, [(r["instrument"], r["kind"], *r["_mark"]) for r in rows])
    marks_data: dict[str, Any] = {
        "instrument": _key_array([m[0] for m in mark_rows], int_keys, "utf8"),
        "mark_price": pa.array([m[2] for m in mark_rows], pa.float64()),
        "implied_vol": pa.array([m[3] for m in mark_rows], pa.float64()),
    }
    if draw(st.integers(0, 3)) == 0:  # supplied Greeks (§7): used instead of Black-76 for options
        greeks: dict[str, list[float]] = {"delta": [], "gamma": [], "vega": [], "theta": []}
        for _, kind, _, _ in mark_rows:
            option = kind == "option"
            greeks["delta"].append(draw(st.floats(-1.0, 1.0)) if option else 1.0)
            greeks["gamma"].append(draw(st.floats(0.0, 1.0)) if option else 0.0)
            greeks["vega"].append(draw(st.floats(0.0, 100.0)) if option else 0.0)
            greeks["theta"].append(draw(st.floats(-100.0, 0.0)) if option else 0.0)
        for name, values in greeks.items():
            marks_data[name] = pa.array(values, pa.float64())
    marks = pa.table(marks_data)
    index_rows = _shuffled(draw, [(u, spots[u]) for u in underlyings])
    index_prices = pa.table(
        {
            "underlying": pa.array([u for u, _ in index_rows], pa.utf8()),
            "index_price": pa.array([p for _, p in index_rows], pa.float64()),
        }
    )

    # --- assets and risk parameters -------------------------------------------------------------
    asset_rows = _shuffled(draw, draw(_assets(underlyings, spots)))
    asset_names = [a["asset"] for a in asset_rows]
    asset_cols = [
        "asset", "price", "initial_weight", "maintenance_weight",
        "initial_liability_weight", "maintenance_liability_weight",
    ]  # fmt: skip
    acols = _columns(asset_rows, asset_cols + ["size_premium", "underlying"])
    assets_data: dict[str, Any] = {"asset": pa.array(acols["asset"], pa.utf8())}
    for name in asset_cols[1:]:
        assets_data[name] = pa.array(acols[name], pa.float64())
    if draw(st.booleans()) or any(p > 0.0 for p in acols["size_premium"]):
        assets_data["size_premium"] = pa.array(acols["size_premium"], pa.float64())
    if draw(st.booleans()):
        assets_data["underlying"] = pa.array(acols["underlying"], pa.utf8())
    assets = pa.table(assets_data)
    risk_params = draw(_risk_params(underlyings))
    # Index prices only for underlyings the book knows (an unknown underlying is bad input).
    known = set(instruments.column("underlying").to_pylist())
    if "underlying" in assets.column_names:
        known |= {u for u in assets.column("underlying").to_pylist() if u is not None}
    if risk_params is not None:
        known |= set(risk_params.column("underlying").to_pylist())
    index_prices = index_prices.filter(pa.array([u in known for u in index_prices.column("underlying").to_pylist()]))

    # --- accounts --------------------------------------------------------------------------------
    account_ids = draw(
        st.lists(
            st.one_of(st.integers(0, 2**64 - 1), st.integers(2**63, 2**64 - 1), st.integers(0, 1000)),
            min_size=1,
            max_size=max_accounts,
            unique=True,
        )
    )
    position_rows: list[dict[str, Any]] = []
    balance_rows: list[dict[str, Any]] = []
    for account in account_ids:
        profile = draw(st.sampled_from(["both", "both", "positions_only", "balances_only", "flat"]))
        if profile in ("both", "positions_only"):
            position_rows.extend(draw(_account_positions(account, keys)))
        if profile in ("both", "balances_only"):
            balance_rows.extend(draw(_account_balances(account, asset_names)))
        if profile == "flat":  # present, but holds nothing: zero balances or positions netting to 0
            key = draw(st.sampled_from(keys))
            q = draw(dyadic_quantity())
            position_rows.extend({"account_id": account, "instrument": key, "quantity": x} for x in (q, -q))
            balance_rows.append(
                {"account_id": account, "asset": draw(st.sampled_from(asset_names)), "amount": 0.0}
            )
    position_rows = _shuffled(draw, position_rows)
    balance_rows = _shuffled(draw, balance_rows)

    id_type = pa.uint64() if any(a >= 2**63 for a in account_ids) or draw(st.booleans()) else pa.int64()
    key_encoding = draw(st.sampled_from(["utf8", "large_utf8", "dictionary"]))
    marks_by_key = {r["instrument"]: r["_mark"][0] for r in rows}
    positions_data: dict[str, Any] = {
        "account_id": pa.array([r["account_id"] for r in position_rows], id_type),
        "instrument": _key_array([r["instrument"] for r in position_rows], int_keys, key_encoding),
        "quantity": pa.array([r["quantity"] for r in position_rows], pa.float64()),
    }
    if draw(st.booleans()):
        positions_data["entry_price"] = pa.array(
            [marks_by_key[r["instrument"]] * draw(st.floats(0.8, 1.2)) for r in position_rows], pa.float64()
        )
    positions = pa.table(positions_data)
    balances = pa.table(
        {
            "account_id": pa.array([r["account_id"] for r in balance_rows], id_type),
            "asset": pa.array([r["asset"] for r in balance_rows], pa.utf8()),
            "amount": pa.array([r["amount"] for r in balance_rows], pa.float64()),
        }
    )
    return {
        "instruments": instruments,
        "assets": assets,
        "margin_tiers": margin_tiers,
        "risk_params": risk_params,
        "positions": positions,
        "balances": balances,
        "index_prices": index_prices,
        "marks": marks,
        "valuation_time_ns": valuation_ns,
    }


TOPUP = "TOPUP"
"""A cash asset (price 1, weights 1) that `with_topups` adds to a book."""


def with_topups(example: dict[str, Any], topups: list[tuple[int, float]]) -> dict[str, Any]:
    """`example` with a cash asset TOPUP (price 1, weights 1) and a TOPUP balance per account."""
    assets = example["assets"]
    row: dict[str, list[Any]] = {name: [None] for name in assets.column_names}
    row.update(
        asset=[TOPUP],
        price=[1.0],
        initial_weight=[1.0],
        maintenance_weight=[1.0],
        initial_liability_weight=[1.0],
        maintenance_liability_weight=[1.0],
    )
    if "size_premium" in assets.column_names:
        row["size_premium"] = [0.0]
    balances = example["balances"]
    extra = pa.table(
        {
            "account_id": [a for a, _ in topups],
            "asset": [TOPUP] * len(topups),
            "amount": [x for _, x in topups],
        },
        schema=balances.schema,
    )
    out = dict(example)
    out["assets"] = pa.concat_tables([assets, pa.table(row, schema=assets.schema)])
    out["balances"] = pa.concat_tables([balances, extra])
    return out


def book_underlyings(example: dict[str, Any]) -> list[str]:
    """Underlyings of the book (instruments, linked assets, risk params), sorted."""
    names = set(example["instruments"].column("underlying").to_pylist())
    if "underlying" in example["assets"].column_names:
        names |= {u for u in example["assets"].column("underlying").to_pylist() if u is not None}
    if example["risk_params"] is not None:
        names |= set(example["risk_params"].column("underlying").to_pylist())
    return sorted(names)


def reference_objects(example: dict[str, Any]) -> tuple[SimpleNamespace, SimpleNamespace]:
    """Duck-typed `(book, market)` for `margin_engine.reference` from a `books()` example."""
    book = SimpleNamespace(
        instruments=example["instruments"],
        assets=example["assets"],
        risk_params=example["risk_params"],
        margin_tiers=example["margin_tiers"],
    )
    market = SimpleNamespace(
        index_prices=example["index_prices"],
        marks=example["marks"],
        valuation_time_ns=example["valuation_time_ns"],
    )
    return book, market


# --------------------------------------------------------------------------------------------
# Black-76 inputs
# --------------------------------------------------------------------------------------------


@st.composite
def black76_inputs(draw: Draw) -> tuple[float, float, float, float, bool]:
    """One `(forward, strike, time, vol, is_call)`: forwards 0.01-1e5, strikes 0.2x-5x the
    forward (or exactly at it), times at/after expiry (<= 0), within minutes, or up to 5 years,
    vols 0.05-3."""
    forward = draw(log_uniform(0.01, 1e5))
    strike = forward * draw(st.one_of(st.just(1.0), log_uniform(0.2, 5.0)))
    time = draw(
        st.one_of(
            st.just(0.0),
            st.floats(-1.0, 0.0),
            st.floats(1e-6, 1e-3),
            st.floats(1e-3, 5.0),
        )
    )
    vol = draw(st.floats(0.05, 3.0))
    return forward, strike, time, vol, draw(st.booleans())


@st.composite
def black76_arrays(
    draw: Draw, min_size: int = 0, max_size: int = 50
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Equal-length numpy arrays `(forward, strike, time, vol, is_call)` for vectorized Black-76."""
    rows = draw(st.lists(black76_inputs(), min_size=min_size, max_size=max_size))
    cols = list(zip(*rows, strict=True)) if rows else [(), (), (), (), ()]
    return (
        np.asarray(cols[0], dtype=np.float64),
        np.asarray(cols[1], dtype=np.float64),
        np.asarray(cols[2], dtype=np.float64),
        np.asarray(cols[3], dtype=np.float64),
        np.asarray(cols[4], dtype=bool),
    )
