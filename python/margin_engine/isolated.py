"""Isolated margin: splitting a book's positions into the cross accounts and the isolated
positions, each isolated position handed to the engine as an account of its own
(``docs/methodology.md``, "Isolated margin").

A position is isolated when its rows carry ``margin_mode = "isolated"`` (optional utf8 column of
positions; ``"cross"``, or null, is the default). All rows of one (account, instrument) must
agree. The ``isolated_collateral`` table ``(account_id, instrument, amount)`` holds the quote
collateral posted to each isolated position (one row per key, amount >= 0; an isolated position
without a row has none; a row without an isolated position is an error).

The engine then sees two books of accounts: the cross accounts (every row not isolated, the
account's balances) and one account per isolated position, numbered 0, 1, ... in
(account_id, instrument) order, holding that position's rows and its collateral as a balance of
the book's quote asset (the first asset priced 1 and linked to no underlying). Whatever the
engine answers for those one-position accounts is the isolated position's answer: its loss is
capped at its own collateral, and it is liquidated on its own.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from margin_engine._inputs import arrow_input, arrow_table, input_error

MARGIN_MODES = ("cross", "isolated")


@dataclasses.dataclass(frozen=True)
class Split:
    """Positions split by margin mode. ``cross``: the positions of the cross accounts (without
    the ``margin_mode`` column). ``positions`` / ``balances``: one account per isolated position
    (account id = its index in ``keys``). ``keys``: ``account_id``, ``instrument`` and ``amount``
    (its isolated collateral) per isolated position, sorted by account_id then instrument."""

    cross: pa.Table
    positions: pa.Table
    balances: pa.Table
    keys: pa.Table

    @property
    def any_isolated(self) -> bool:
        return self.keys.num_rows > 0


def column_names(obj: Any) -> list[str] | None:
    """The column names of a table-like object without reading it, or None when it does not say."""
    schema = getattr(obj, "schema", None)
    if isinstance(schema, pa.Schema):
        return list(schema.names)
    columns = getattr(obj, "columns", None)
    if columns is not None and not callable(columns):
        try:
            return [str(c) for c in columns]
        except TypeError:
            return None
    return None


def has_margin_mode(positions: Any) -> tuple[bool, Any]:
    """Whether ``positions`` has a ``margin_mode`` column, and the object to read it from (a
    ``pyarrow.Table`` when the names could only be learnt by reading it)."""
    if isinstance(positions, dict):
        return "margin_mode" in positions, positions
    names = column_names(positions)
    if names is None:
        positions = arrow_table(positions, "positions")
        names = positions.column_names
    return "margin_mode" in names, positions


def quote_asset(book: Any) -> str:
    """The book's quote asset (the first priced exactly 1 and linked to no underlying)."""
    assets = book.assets
    prices = assets.column("price").to_pylist()
    linked = assets.column("underlying").to_pylist() if "underlying" in assets.column_names else [None] * len(prices)
    for asset, price, underlying in zip(assets.column("asset").to_pylist(), prices, linked):
        if price == 1.0 and underlying is None:
            return asset
    raise input_error(
        "isolated_collateral",
        "amount",
        "isolated collateral is a quote amount: the book needs a quote asset (an asset priced 1, linked to no underlying)",
    )


def _rows(indices: Any, limit: int = 10) -> list[str]:
    return [f"row {int(i)}" for i in list(indices)[:limit]]


def _margin_modes(table: pa.Table) -> np.ndarray:
    """Per row, whether it is isolated; errors name bad values and disagreeing keys."""
    column = table.column("margin_mode")
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type) or pa.types.is_null(column.type)):
        raise input_error("positions", "margin_mode", f"expected utf8 ('cross' or 'isolated'), got {column.type}")
    if pa.types.is_null(column.type):
        return np.zeros(len(column), dtype=bool)
    known = pc.or_(pc.is_null(column), pc.is_in(column, value_set=pa.array(MARGIN_MODES, column.type)))
    if pc.all(known).as_py() is False:
        bad = np.flatnonzero(~known.to_numpy(zero_copy_only=False))
        shown = [f"row {int(i)} = {column[int(i)].as_py()!r}" for i in bad[:10]]
        raise input_error("positions", "margin_mode", "must be 'cross' or 'isolated' (null = cross)", shown)
    isolated = pc.fill_null(pc.equal(column, "isolated"), False).to_numpy(zero_copy_only=False)
    if isolated.any():
        keyed = pa.table({
            "account_id": table.column("account_id"),
            "instrument": table.column("instrument"),
            "isolated": pa.array(isolated.astype(np.int8)),
        })
        agg = keyed.group_by(["account_id", "instrument"], use_threads=False).aggregate(
            [("isolated", "min"), ("isolated", "max")]
        )
        mixed = agg.filter(pc.not_equal(agg.column("isolated_min"), agg.column("isolated_max")))
        if mixed.num_rows:
            bad_keys = set(zip(mixed.column("account_id").to_pylist(), mixed.column("instrument").to_pylist()))
            accounts, instruments = table.column("account_id").to_pylist(), table.column("instrument").to_pylist()
            rows = [i for i, key in enumerate(zip(accounts, instruments)) if key in bad_keys]
            raise input_error(
                "positions",
                "margin_mode",
                "the rows of one (account_id, instrument) must share one margin mode",
                _rows(rows),
            )
    return isolated


def _collateral(isolated_collateral: Any, keys: pa.Table) -> pa.Table:
    """``keys`` with the ``amount`` of collateral of each key (0 without a row); errors name bad
    amounts, repeated keys and keys without an isolated position."""
    n = keys.num_rows
    if isolated_collateral is None:
        return keys.append_column("amount", pa.array(np.zeros(n), pa.float64()))
    t = arrow_table(arrow_input(isolated_collateral, "isolated_collateral"), "isolated_collateral")
    for name in ("account_id", "instrument", "amount"):
        if name not in t.column_names:
            raise input_error("isolated_collateral", name, "missing column")
    amount = t.column("amount")
    if not (pa.types.is_floating(amount.type) or pa.types.is_integer(amount.type)):
        raise input_error("isolated_collateral", "amount", f"expected a float column, got {amount.type}")
    values = amount.to_pylist()
    bad = [i for i, v in enumerate(values) if v is None or not math.isfinite(float(v)) or float(v) < 0.0]
    if bad:
        raise input_error(
            "isolated_collateral", "amount", "must be finite and >= 0, no nulls", [f"row {i} = {values[i]!r}" for i in bad[:10]]
        )
    accounts = t.column("account_id")
    if not pa.types.is_integer(accounts.type) or accounts.null_count or (len(accounts) and pc.min(accounts).as_py() < 0):
        raise input_error("isolated_collateral", "account_id", "expected integers >= 0, no nulls")
    instruments = t.column("instrument")
    if instruments.null_count:
        raise input_error("isolated_collateral", "instrument", "no nulls")
    seen: dict[tuple[Any, Any], int] = {}
    repeated = []
    pairs = list(zip(accounts.to_pylist(), instruments.to_pylist()))
    for i, key in enumerate(pairs):
        if key in seen:
            repeated.append(f"account {key[0]} instrument {key[1]!r}")
        seen[key] = i
    if repeated:
        raise input_error("isolated_collateral", "instrument", "duplicate (account_id, instrument) key", repeated[:10])
    index = {key: k for k, key in enumerate(zip(keys.column("account_id").to_pylist(), keys.column("instrument").to_pylist()))}
    unknown = [f"account {a} instrument {i!r}" for a, i in pairs if (a, i) not in index]
    if unknown:
        raise input_error(
            "isolated_collateral", "instrument", "no isolated position holds this (account_id, instrument)", unknown[:10]
        )
    per_key = np.zeros(n)
    for (key, v) in zip(pairs, values):
        per_key[index[key]] = float(v)
    return keys.append_column("amount", pa.array(per_key, pa.float64()))


def split(book: Any, positions: Any, isolated_collateral: Any = None) -> Split | None:
    """The split of ``positions`` by margin mode; ``None`` when positions have no ``margin_mode``
    column (the engine's behaviour of today: no isolation). ``isolated_collateral`` without a
    ``margin_mode`` column is an error (its keys hold no isolated position)."""
    present, positions = has_margin_mode(positions)
    if not present:
        if isolated_collateral is not None:
            t = arrow_table(arrow_input(isolated_collateral, "isolated_collateral"), "isolated_collateral")
            if t.num_rows:
                raise input_error(
                    "isolated_collateral",
                    "instrument",
                    "no isolated position holds this (account_id, instrument): positions have no margin_mode column",
                    [f"row {i}" for i in range(min(10, t.num_rows))],
                )
        return None
    table = arrow_table(arrow_input(positions, "positions"), "positions")
    for name in ("account_id", "instrument", "quantity"):
        if name not in table.column_names:
            raise input_error("positions", name, "missing column")
    isolated = _margin_modes(table)
    mask = pa.array(isolated)
    cross = table.filter(pc.invert(mask)).drop_columns(["margin_mode"])
    rows = table.filter(mask)
    instrument_type = rows.schema.field("instrument").type
    if pa.types.is_dictionary(instrument_type):  # keys are grouped, sorted and joined on: plain values
        rows = rows.set_column(rows.column_names.index("instrument"), "instrument", rows.column("instrument").cast(instrument_type.value_type))
    order = [("account_id", "ascending"), ("instrument", "ascending")]
    keys = rows.select(["account_id", "instrument"]).group_by(["account_id", "instrument"], use_threads=False).aggregate([])
    keys = keys.sort_by(order) if keys.num_rows else keys
    keys = _collateral(isolated_collateral, keys)
    k = pa.array(np.arange(keys.num_rows, dtype=np.uint64))
    numbered = keys.select(["account_id", "instrument"]).append_column("__account", k)
    with_row = rows.append_column("__row", pa.array(np.arange(rows.num_rows, dtype=np.int64)))
    joined = with_row.join(numbered, ["account_id", "instrument"], use_threads=False).sort_by("__row")
    columns = {"account_id": joined.column("__account"), "instrument": joined.column("instrument"), "quantity": joined.column("quantity")}
    if "entry_price" in table.column_names:
        columns["entry_price"] = joined.column("entry_price")
    one_position = pa.table(columns)
    asset = quote_asset(book) if keys.num_rows else None
    balances = pa.table({
        "account_id": k,
        "asset": pa.array([asset] * keys.num_rows, pa.string()),
        "amount": keys.column("amount"),
    })
    return Split(cross=cross, positions=one_position, balances=balances, keys=keys)


def without_isolated(book: Any, positions: Any, what: str) -> Any:
    """``positions`` for a function that does not model isolated positions: as given without a
    ``margin_mode`` column or when no row is isolated, else a :class:`MarginInputError`."""
    present, positions = has_margin_mode(positions)
    if not present:
        return positions
    s = split(book, positions)
    assert s is not None
    if s.any_isolated:
        raise input_error(
            "positions",
            "margin_mode",
            f"{what} does not model isolated positions yet: margin them with me.isolated_margin, or pass the cross rows only",
        )
    return s.cross


def to_keys(table: pa.Table, keys: pa.Table, *, column: str = "account_id") -> pa.Table:
    """A result of the one-position accounts with their ids replaced by the isolated position's
    ``account_id`` and ``instrument`` (inserted after ``account_id``)."""
    ids = table.column(column).to_numpy(zero_copy_only=False).astype(np.int64)
    accounts = pc.take(keys.column("account_id"), pa.array(ids)).cast(pa.uint64())
    instruments = pc.take(keys.column("instrument"), pa.array(ids))
    at = table.column_names.index(column)
    out = table.set_column(at, pa.field(column, pa.uint64(), nullable=False), accounts)
    return out.add_column(at + 1, "instrument", instruments)


_STATUS_RANK = {"bankrupt": 0, "liquidatable": 1, "margin_call": 2, "healthy": 3}


def _cross_with_instrument(table: pa.Table, keys: pa.Table) -> pa.Table:
    """A cross result with a null ``instrument`` column (of the keys' type) after ``account_id``."""
    at = table.column_names.index("account_id")
    return table.add_column(at + 1, pa.field("instrument", keys.column("instrument").type), pa.nulls(table.num_rows, keys.column("instrument").type))


def _concat_sorted(cross: pa.Table, isolated: pa.Table | None, keys: pa.Table, sort_keys: list[tuple[str, str]], helpers: dict[str, tuple[Any, Any]]) -> pa.Table:
    """Cross rows (``instrument`` null) and isolated rows (ids mapped to keys), concatenated and
    stably sorted by ``sort_keys`` over helper columns ``name: (cross values, isolated values)``."""
    parts = [_cross_with_instrument(cross, keys)]
    ids = None
    if isolated is not None and isolated.num_rows:
        ids = isolated.column("account_id").to_numpy(zero_copy_only=False).astype(np.int64)
        parts.append(to_keys(isolated, keys))
    combined = pa.concat_tables(parts)
    if ids is None:
        return combined
    # the position's index among the isolated keys orders isolated rows: (account_id, instrument)
    order_columns = {"__isolated": np.concatenate([np.zeros(cross.num_rows, np.int8), np.ones(len(ids), np.int8)]),
                     "__key": np.concatenate([np.zeros(cross.num_rows, np.int64), ids])}
    for name, (c, i) in helpers.items():
        order_columns[name] = np.concatenate([c, i])
    helper = pa.table({name: pa.array(v) for name, v in order_columns.items()})
    for name in combined.column_names:
        helper = helper.append_column(name, combined.column(name))
    order = pc.sort_indices(helper, sort_keys=sort_keys)
    return combined.take(order)


def merge_scan(cross: pa.Table, isolated: pa.Table | None, keys: pa.Table) -> pa.Table:
    """The liquidation queue of cross accounts and isolated positions: status, then shortfall
    descending, then account_id, the cross row first, then the isolated positions in key order."""
    def rank(t: pa.Table | None) -> Any:
        if t is None:
            return np.zeros(0, np.int8)
        return np.array([_STATUS_RANK[s] for s in t.column("status").to_pylist()], np.int8)

    helpers = {"__rank": (rank(cross), rank(isolated))}
    sort_keys = [("__rank", "ascending"), ("shortfall", "descending"), ("account_id", "ascending"),
                 ("__isolated", "ascending"), ("__key", "ascending")]
    return _concat_sorted(cross, isolated, keys, sort_keys, helpers)


def merge_by_account(cross: pa.Table, isolated: pa.Table | None, keys: pa.Table) -> pa.Table:
    """Per-account rows (e.g. distances) of cross accounts and isolated positions: by account_id,
    the cross rows first, then isolated positions in key order; each one's rows in their order."""
    sort_keys = [("account_id", "ascending"), ("__isolated", "ascending"), ("__key", "ascending")]
    return _concat_sorted(cross, isolated, keys, sort_keys, {})


_MAP_SUMS = ("accounts", "notional", "collateral", "cumulative_accounts", "cumulative_notional")


def sum_maps(cross: pa.Table, isolated: pa.Table) -> pa.Table:
    """Two liquidation maps of the same book (same rows in the same order), summed."""
    out = cross
    for name in _MAP_SUMS:
        at = out.column_names.index(name)
        out = out.set_column(at, out.schema.field(name), pc.add(cross.column(name), isolated.column(name)))
    return out


def _map_ids(table: pa.Table, keys: pa.Table) -> pa.Table:
    """A plan table of one-position accounts with ``account_id`` mapped to the owner's."""
    ids = pa.array(table.column("account_id").to_numpy(zero_copy_only=False).astype(np.int64))
    at = table.column_names.index("account_id")
    return table.set_column(at, table.schema.field("account_id"), pc.take(keys.column("account_id"), ids).cast(pa.uint64()))


def _with_mode(table: pa.Table, mode: str) -> pa.Table:
    at = table.column_names.index("account_id")
    return table.add_column(at + 1, pa.field("margin_mode", pa.string(), nullable=False), pa.array([mode] * table.num_rows, pa.string()))


def merge_plans(cross: tuple[Any, ...], isolated: tuple[Any, ...] | None, keys: pa.Table) -> tuple[list[pa.Table], tuple[float, float, float]]:
    """Liquidation plans of cross accounts, then of isolated positions (see liquidation_plan)."""
    c_closes, c_accounts, c_underlyings, c_adl = (pa.table(t) for t in cross[:4])
    if isolated is None:
        tables = [_with_mode(c_closes, "cross"), _cross_with_instrument(c_accounts, keys), c_underlyings, _cross_with_instrument(c_adl, keys)]
        return tables, (cross[4], cross[5], cross[6])
    i_closes, i_accounts, i_underlyings, i_adl = (pa.table(t) for t in isolated[:4])
    closes = pa.concat_tables([_with_mode(c_closes, "cross"), _with_mode(_map_ids(i_closes, keys), "isolated")])
    accounts = pa.concat_tables([_cross_with_instrument(c_accounts, keys), to_keys(i_accounts, keys)])
    adl = pa.concat_tables([_cross_with_instrument(c_adl, keys), to_keys(i_adl, keys)])
    underlyings = c_underlyings
    for name in ("closed_notional", "bad_debt"):
        at = underlyings.column_names.index(name)
        underlyings = underlyings.set_column(at, underlyings.schema.field(name), pc.add(c_underlyings.column(name), i_underlyings.column(name)))
    totals = (cross[4] + isolated[4], cross[5] + isolated[5], isolated[6])
    return [closes, accounts, underlyings, adl], totals
