"""Isolated margin (docs/methodology.md "Isolated margin", docs/liquidation.md §8), in plain Python.

Rules:
- A position row is isolated when its `margin_mode` is `"isolated"` (`"cross"` or null: cross).
  An isolated (account, instrument) is margined alone: an account of its own holding that
  position's rows and its `isolated_collateral` amount as a balance of the book's quote asset
  (the first asset priced 1 and linked to no underlying). The cross accounts are the remaining
  rows with the account's balances.
- `maintenance_basis="entry"`: a perpetual's or future's maintenance margin on the entry
  notional `|Σ q × entry| × multiplier` (a row without entry price at the mark), through its
  tiers; the initial margin stays on the mark notional.
- Liquidation price: the index price nearest the current one (in ratio) where the margin excess
  of the position alone, in the market stressed to that index price (§8 stress), crosses 0,
  searched on [1e-8, 100] × the index price: a walk in 1% steps from the index, both sides side
  by side, the first change between >= 0 and < 0 (an excess of exactly 0 is not liquidatable) bisected to 1e-12 relative. The engine solves perpetuals and
  futures (standard model) in closed form, excess = 0: this walk is its oracle. Options and the
  portfolio model cross where the status turns liquidatable: excess < −1e-9 × max(1, MM).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pyarrow as pa

from ._tables import as_table, column, has_column, read_book
from .liquidation import Accounts, Scenario, Scenarios, read_accounts, stress_market
from .portfolio import RiskArrays
from .results import MARGIN_SCHEMA, STATUS_TOLERANCE, AccountResult, account_status, health
from .standard import brackets_with_base, tiered_margin

LOWEST_PRICE = 1e-8
HIGHEST_PRICE = 100.0
WALK_STEP = 1.01
ROOT_TOLERANCE = 1e-12

@dataclasses.dataclass(frozen=True)
class IsolatedBook:
    """Positions split by margin mode: the cross rows, and per isolated key (sorted) its rows."""

    cross: pa.Table
    keys: list[tuple[int, Any]]
    rows: dict[tuple[int, Any], list[int]]
    collateral: dict[tuple[int, Any], float]


def split_positions(positions: Any, isolated_collateral: Any = None) -> IsolatedBook:
    """The cross rows and the isolated keys with their rows and collateral (0 without a row)."""
    t = as_table(positions)
    n = t.num_rows
    modes = column(t, "margin_mode") if has_column(t, "margin_mode") else [None] * n
    accounts, instruments = column(t, "account_id"), column(t, "instrument")
    rows: dict[tuple[int, Any], list[int]] = {}
    cross = []
    for r in range(n):
        if modes[r] == "isolated":
            rows.setdefault((accounts[r], instruments[r]), []).append(r)
        else:
            cross.append(r)
    keep = [c for c in t.column_names if c != "margin_mode"]
    collateral: dict[tuple[int, Any], float] = {}
    if isolated_collateral is not None:
        c = as_table(isolated_collateral)
        for a, i, amount in zip(column(c, "account_id"), column(c, "instrument"), column(c, "amount")):
            collateral[(a, i)] = float(amount)
    return IsolatedBook(t.select(keep).take(pa.array(cross, pa.int64())), sorted(rows), rows, collateral)


def quote_asset(book: Any) -> str:
    for asset in read_book(book).assets:
        if asset.price == 1.0 and asset.underlying is None:
            return asset.key
    raise ValueError("the book has no quote asset (priced 1, linked to no underlying)")


def one_position_accounts(book: Any, positions: Any, split: IsolatedBook) -> tuple[pa.Table, pa.Table]:
    """Positions and balances of one account per isolated key (account id = key index)."""
    t = as_table(positions)
    instruments, quantities = column(t, "instrument"), column(t, "quantity")
    entries = column(t, "entry_price") if has_column(t, "entry_price") else [None] * t.num_rows
    ids, ins, qty, entry = [], [], [], []
    order = sorted((r, k) for k, key in enumerate(split.keys) for r in split.rows[key])
    for r, k in order:  # input order, as the engine nets rows
        ids.append(k)
        ins.append(instruments[r])
        qty.append(float(quantities[r]))
        entry.append(entries[r])
    p = pa.table({"account_id": pa.array(ids, pa.uint64()), "instrument": pa.array(ins, t.schema.field("instrument").type),
                  "quantity": pa.array(qty, pa.float64()), "entry_price": pa.array(entry, pa.float64())})
    asset = quote_asset(book) if split.keys else "USD"
    b = pa.table({"account_id": pa.array(range(len(split.keys)), pa.uint64()),
                  "asset": [asset] * len(split.keys),
                  "amount": pa.array([split.collateral.get(key, 0.0) for key in split.keys], pa.float64())})
    return p, b


def entry_maintenance(accounts: Accounts, k: int, rows: list[tuple[float, float | None]]) -> float:
    """MM on the entry notional `|Σ q × entry| × multiplier` (rows without entry at the mark)."""
    (position,) = accounts.positions[k]
    ins = position.instrument
    mark = accounts.market.marks[ins.id].mark_price
    worth = 0.0
    for q, e in rows:
        worth += q * (mark if e is None else e)
    brackets = brackets_with_base(ins, accounts.book.tiers.get(ins.id))
    return tiered_margin(abs(worth) * ins.multiplier, brackets, "maintenance")


def with_maintenance(r: AccountResult, mm: float) -> AccountResult:
    return dataclasses.replace(
        r, maintenance_margin=mm, margin_excess=r.collateral_maintenance - mm, health=health(r.collateral_maintenance, mm),
        status=account_status(r.equity, r.collateral_initial, r.collateral_maintenance, r.initial_margin, mm),
    )


def nearest_root(f: Any, x0: float, lo: float, hi: float) -> float | None:
    """The change of `f` between >= 0 and < 0 nearest `x0` on [lo, hi] (0 counts as >= 0)."""
    f0 = f(x0)
    found: dict[str, float] = {}
    state = {"down": (x0, f0), "up": (x0, f0)}
    j = 1
    while state and not found:
        for side in ("down", "up"):
            if side not in state:
                continue
            x_prev, f_prev = state[side]
            x = min(x0 * WALK_STEP**j, hi) if side == "up" else max(x0 / WALK_STEP**j, lo)
            fx = f(x)
            if (fx < 0.0) != (f_prev < 0.0):
                found[side] = bisect(f, x_prev, f_prev, x)
                del state[side]
            elif x in (lo, hi):
                del state[side]
            else:
                state[side] = (x, fx)
        j += 1
    if "down" in found and "up" in found:
        d, u = found["down"], found["up"]
        return u if abs(math.log(u / x0)) < abs(math.log(x0 / d)) else d
    return found.get("down", found.get("up"))


def bisect(f: Any, a: float, fa: float, b: float) -> float:
    for _ in range(200):
        if abs(b - a) <= ROOT_TOLERANCE * max(abs(a), abs(b)):
            break
        mid = 0.5 * (a + b)
        fm = f(mid)
        if (fm < 0.0) == (fa < 0.0):
            a, fa = mid, fm
        else:
            b = mid
    return 0.5 * (a + b)


def liquidation_price(accounts: Accounts, k: int, model: str, entry_mm: float | None) -> float | None:
    """The position's liquidation index price (see the module doc)."""
    if not accounts.positions.get(k):
        return None
    (position,) = accounts.positions[k]
    u = position.instrument.underlying
    spot = accounts.market.index_prices[u]

    def excess(s: float) -> float:
        book, market = stress_market(accounts.book, accounts.market, {u: s / spot - 1.0})
        scenario = Scenario(accounts.market, book, market, RiskArrays(book, market), stressed=True)
        r = accounts.row_in(scenario, k, model)  # type: ignore[arg-type]
        mm = r.maintenance_margin if entry_mm is None else entry_mm
        # the engine solves perpetuals and futures exactly (excess = 0); elsewhere a crossing is
        # where the status turns liquidatable (short by more than the status tolerance)
        return r.collateral_maintenance - mm + (0.0 if exact else STATUS_TOLERANCE * max(mm, 1.0))

    exact = not position.instrument.is_option and model == "standard"
    return nearest_root(excess, spot, spot * LOWEST_PRICE, spot * HIGHEST_PRICE)


def isolated_margin(
    book: Any, positions: Any, isolated_collateral: Any, market: Any, *, model: str = "standard",
    maintenance_basis: str = "mark",
) -> pa.Table:
    """One row per isolated (account, instrument): account_id, instrument, the §6 columns of the
    position margined alone, and its liquidation price."""
    split = split_positions(positions, isolated_collateral)
    p, b = one_position_accounts(book, positions, split)
    accounts = read_accounts(book, p, b, market)
    base = Scenarios(accounts.book, accounts.market).base
    t = as_table(positions)
    quantities = column(t, "quantity")
    entries = column(t, "entry_price") if has_column(t, "entry_price") else [None] * t.num_rows
    out: list[dict[str, Any]] = []
    for k, key in enumerate(split.keys):
        r = accounts.row_in(base, k, model)  # type: ignore[arg-type]
        entry_mm = None
        if maintenance_basis == "entry" and accounts.positions.get(k):
            entry_mm = entry_maintenance(accounts, k, [(float(quantities[i]), entries[i]) for i in split.rows[key]])
            r = with_maintenance(r, entry_mm)
        row = dataclasses.asdict(r)
        row["account_id"], row["instrument"] = key
        row["liquidation_price"] = liquidation_price(accounts, k, model, entry_mm)
        out.append(row)
    names = ["account_id", "instrument"] + [f.name for f in MARGIN_SCHEMA][1:] + ["liquidation_price"]
    key_type = t.schema.field("instrument").type
    arrays = {n: pa.array([r[n] for r in out], key_type if n == "instrument" else MARGIN_SCHEMA.field(n).type if n in MARGIN_SCHEMA.names else pa.float64()) for n in names}
    return pa.table(arrays)


def cross_positions(positions: Any) -> pa.Table:
    """The cross rows of `positions` (without `margin_mode`): what `margin` margins per account."""
    return split_positions(positions).cross
