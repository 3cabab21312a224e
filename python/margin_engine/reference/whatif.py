"""What-if margin for order entry: one account before and after trades (docs/optimization.md).

Rules, in the engine's words:
- the account's rows are margined exactly as `margin` margins one account (§2, §3/§4, §6);
- each trade adds a position row of `quantity` contracts at the mark;
- a trade at `price` realizes `quantity × multiplier × (mark − price)` (`trade_pnl`), which starts
  the account's P&L sum after the trade (for an option: the premium paid against its mark value);
- a position row without an entry price is valued at the mark (no unrealized P&L);
- the order is accepted when free collateral after it is ≥ 0, or when it reduces risk: initial
  margin does not rise and free collateral does not fall.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._tables import BalanceRow, BookData, PositionRow, as_table, column, read_book, read_market
from .portfolio import RiskArrays
from .results import AccountResult, Model, account_result
from .valuation import net_positions


@dataclass(frozen=True)
class WhatIfResult:
    """The account before and after the trades."""

    before: AccountResult
    after: AccountResult
    trade_pnl: float
    accepted: bool
    initial_margin_change: float
    maintenance_margin_change: float


def _tuples(rows: Any, key: str, price: str) -> list[tuple[Any, float, float | None]]:
    """`(key, quantity, price or None)` from a dict `{key: quantity}`, a list of
    `(key, quantity[, price])` tuples, or an Arrow table with columns `key, quantity[, price]`."""
    if rows is None:
        return []
    if isinstance(rows, dict):
        return [(k, float(q), None) for k, q in rows.items()]
    if hasattr(rows, "__arrow_c_stream__") or hasattr(rows, "__arrow_c_array__"):
        table = as_table(rows)
        return list(zip(column(table, key), map(float, column(table, "quantity")), column(table, price), strict=True))
    out = []
    for row in rows:
        k, q, *p = row
        out.append((k, float(q), None if not p or p[0] is None else float(p[0])))
    return out


def _balances(rows: Any, book: BookData) -> list[BalanceRow]:
    if rows is not None and (hasattr(rows, "__arrow_c_stream__") or hasattr(rows, "__arrow_c_array__")):
        table = as_table(rows)
        pairs = list(zip(column(table, "asset"), column(table, "amount"), strict=True))
    else:
        pairs = [(a, x) for a, x, _ in _tuples(rows, "asset", "price")]
    return [BalanceRow(0, book.asset_ids[a], float(x)) for a, x in pairs]


def what_if(
    book: Any, account_positions: Any, account_balances: Any, market: Any, trades: Any, model: Model = "standard"
) -> WhatIfResult:
    """One account's margin before and after `trades` (same inputs and result as `me.what_if`)."""
    bd = read_book(book)
    md = read_market(market, bd)
    arrays = RiskArrays(bd, md)
    positions = [
        PositionRow(0, bd.instrument_ids[k], q, entry) for k, q, entry in _tuples(account_positions, "instrument", "entry_price")
    ]
    balances = _balances(account_balances, bd)

    trade_rows = _tuples(trades, "instrument", "price")
    trade_pnl = 0.0
    for k, q, price in trade_rows:
        instrument = bd.instruments[bd.instrument_ids[k]]
        mark = md.marks[instrument.id].mark_price
        trade_pnl += q * instrument.multiplier * (mark - (mark if price is None else price))
    after_rows = positions + [PositionRow(0, bd.instrument_ids[k], q, None) for k, q, _ in trade_rows]

    def margin(rows: list[PositionRow], extra_pnl: float) -> AccountResult:
        netted = net_positions(rows, bd, md).get(0, [])
        return account_result(0, netted, balances, bd, md, model, arrays, extra_pnl)

    before = margin(positions, 0.0)
    after = margin(after_rows, trade_pnl)
    accepted = after.free_collateral >= 0.0 or (
        after.initial_margin <= before.initial_margin and after.free_collateral >= before.free_collateral
    )
    return WhatIfResult(
        before=before,
        after=after,
        trade_pnl=trade_pnl,
        accepted=accepted,
        initial_margin_change=after.initial_margin - before.initial_margin,
        maintenance_margin_change=after.maintenance_margin - before.maintenance_margin,
    )
