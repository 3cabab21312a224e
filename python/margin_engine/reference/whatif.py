"""What-if margin for order entry: one account before and after trades (docs/optimization.md).

Rules, in the engine's words:
- the account's rows are margined exactly as `margin` margins one account (§2, §3/§4, §6);
- each trade adds a position row of `quantity` contracts at the mark;
- a trade at `price` (default: the mark) moves cash by `−quantity × multiplier × price` against a
  position worth `quantity × multiplier × mark`: an option trade pays (or receives) its premium
  (`premium`), which starts the account's P&L sum after the trade, while its mark value is in the
  new row; a linear trade pays nothing and adds `quantity × multiplier × (mark − price)` of P&L.
  `trade_pnl = Σ quantity × multiplier × (mark − price)` is the net of both;
- an inverse (coin-settled) trade does the same in its coin: a perpetual or future adds
  `quantity × multiplier × (1/price − 1/mark)` coins of P&L (at the coin's USD price), a
  coin-settled option's premium `quantity × multiplier × price` coins moves the account's
  balance of its settlement asset;
- a trade that closes a position keeps that position's P&L (`valuation.closed_pnl`);
- a position row without an entry price is valued at the mark (no unrealized P&L);
- the order is accepted when free collateral after it is ≥ 0, or when it reduces risk: initial
  margin does not rise and free collateral does not fall.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._tables import Asset, BalanceRow, BookData, PositionRow, as_table, column, read_book, read_market
from .portfolio import RiskArrays
from .results import AccountResult, Model, account_result
from .valuation import closed_inverse, closed_pnl, net_positions


@dataclass(frozen=True)
class WhatIfResult:
    """The account before and after the trades."""

    before: AccountResult
    after: AccountResult
    trade_pnl: float
    premium: float
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


def quote_asset(book: BookData) -> int | None:
    """The asset option premiums settle in when no other is named: the first asset of the table
    priced exactly 1 and linked to no underlying."""
    for asset in book.assets:
        if asset.price == 1.0 and asset.underlying is None:
            return asset.id
    return None


def with_premium(balances: list[BalanceRow], asset: Asset, premium: float) -> list[BalanceRow]:
    """The account's balances after `premium` (USD; < 0 paid) moved into its `asset` balance
    (a new row when it has none)."""
    out = list(balances)
    for i, row in enumerate(out):
        if row.asset_id == asset.id:
            out[i] = BalanceRow(row.account_id, row.asset_id, row.amount + premium / asset.price)
            return out
    out.append(BalanceRow(0, asset.id, premium / asset.price))
    return out


def with_coins(balances: list[BalanceRow], asset_id: int, coins: float) -> list[BalanceRow]:
    """The account's balances after `coins` units moved into its `asset_id` balance (a new row
    when it has none): a coin-settled option's premium."""
    out = list(balances)
    for i, row in enumerate(out):
        if row.asset_id == asset_id:
            out[i] = BalanceRow(row.account_id, row.asset_id, row.amount + coins)
            return out
    out.append(BalanceRow(0, asset_id, coins))
    return out


def what_if(
    book: Any,
    positions: Any,
    balances: Any,
    market: Any,
    trades: Any,
    *,
    model: Model = "standard",
    premium_asset: str | None = None,
) -> WhatIfResult:
    """One account's margin before and after `trades` (same inputs and result as `me.what_if`)."""
    bd = read_book(book)
    md = read_market(market, bd)
    arrays = RiskArrays(bd, md)
    position_rows = [
        PositionRow(0, bd.instrument_ids[k], q, entry) for k, q, entry in _tuples(positions, "instrument", "entry_price")
    ]
    balance_rows = _balances(balances, bd)

    trade_rows = _tuples(trades, "instrument", "price")
    trade_pnl = 0.0
    premium = 0.0
    linear_premium = 0.0
    linear_pnl = 0.0
    coin_premiums: list[tuple[int, float]] = []
    for k, q, price in trade_rows:
        instrument = bd.instruments[bd.instrument_ids[k]]
        mark = md.marks[instrument.id].mark_price
        paid = mark if price is None else price
        if instrument.is_inverse:
            coin = bd.settlement_price(instrument)
            if instrument.is_option:
                pnl = q * instrument.multiplier * (mark - paid) * coin
            else:
                pnl = q * instrument.multiplier * (1.0 / paid - 1.0 / mark) * coin
        else:
            pnl = q * instrument.multiplier * (mark - paid)
        trade_pnl += pnl
        if instrument.is_option:
            if instrument.is_inverse:
                premium -= q * instrument.multiplier * paid * bd.settlement_price(instrument)
                assert instrument.settlement_asset is not None
                coin_premiums.append((bd.asset_ids[instrument.settlement_asset], -(q * instrument.multiplier * paid)))
            else:
                premium -= q * instrument.multiplier * paid
                linear_premium -= q * instrument.multiplier * paid
        else:
            linear_pnl += pnl
    after_rows = position_rows + [PositionRow(0, bd.instrument_ids[k], q, None) for k, q, _ in trade_rows]
    balances_after = balance_rows
    for asset_id, coins in coin_premiums:
        balances_after = with_coins(balances_after, asset_id, coins)
    if any(
        bd.instruments[bd.instrument_ids[k]].is_option and not bd.instruments[bd.instrument_ids[k]].is_inverse
        for k, _, _ in trade_rows
    ):
        asset_id = quote_asset(bd) if premium_asset is None else bd.asset_ids[premium_asset]
        if asset_id is None:
            raise ValueError("trades: an option trade's premium needs a quote asset; name one with premium_asset=")
        balances_after = with_premium(balances_after, bd.assets[asset_id], linear_premium)

    def margin(rows: list[PositionRow], balances: list[BalanceRow], extra_pnl: float) -> AccountResult:
        netted = net_positions(rows, bd, md).get(0, [])
        closed = closed_pnl(rows, bd, md).get(0, 0.0)
        coins = closed_inverse(rows, bd, md).get(0, ())
        return account_result(0, netted, balances, bd, md, model, arrays, extra_pnl, closed, closed_coins=coins)

    before = margin(position_rows, balance_rows, 0.0)
    after = margin(after_rows, balances_after, linear_pnl)
    accepted = after.free_collateral >= 0.0 or (
        after.initial_margin <= before.initial_margin and after.free_collateral >= before.free_collateral
    )
    return WhatIfResult(
        before=before,
        after=after,
        trade_pnl=trade_pnl,
        premium=premium,
        accepted=accepted,
        initial_margin_change=after.initial_margin - before.initial_margin,
        maintenance_margin_change=after.maintenance_margin - before.maintenance_margin,
    )
