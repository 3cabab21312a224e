"""Netting, valuation and collateral (docs/methodology.md §1 time to expiry, §2).

Summation orders follow methodology-notes: rows of one (account, instrument) are summed in input
row order; an account's netted positions in instrument-id order; its balances in asset-id order.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from ._tables import Asset, BalanceRow, BookData, Instrument, MarketData, PositionRow

WeightSet = Literal["initial", "maintenance"]

NANOS_PER_SECOND = 1e9
SECONDS_PER_YEAR = 31_536_000  # 365 days


def years_to_expiry(expiry_ns: int | None, valuation_ns: int) -> float:
    """`T = max(expiry − valuation_time, 0)` in years of 365 days (§1).

    Integer nanosecond difference first, then `/ 1e9 / 31_536_000` (methodology-notes).
    A missing expiry (perpetuals) gives 0.
    """
    if expiry_ns is None:
        return 0.0
    return max(expiry_ns - valuation_ns, 0) / NANOS_PER_SECOND / SECONDS_PER_YEAR


# --------------------------------------------------------------------------------------------
# §2.1-2.4: netting and position values
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NettedPosition:
    """The net position of one account in one instrument (§2.1), with a non-zero quantity."""

    instrument: Instrument
    quantity: float
    """`q = Σ quantity` over the rows, in input row order."""
    upnl: float
    """Unrealized P&L (§2.3): Σ over the rows of `quantity × multiplier × (mark − entry)`;
    0 for options and when positions carry no `entry_price`."""


def row_upnl(quantity: float, multiplier: float, mark: float, entry: float) -> float:
    """§2.3 for one row: `quantity × multiplier × (mark − entry)`, left to right."""
    return quantity * multiplier * (mark - entry)


def _row_sums(
    rows: Iterable[PositionRow], book: BookData, market: MarketData
) -> tuple[dict[tuple[int, int], float], dict[tuple[int, int], float], dict[int, None]]:
    """Per (account, instrument): `Σ quantity` and `Σ upnl` over the rows in input row order
    (upnl of linear rows with an entry price only), and the accounts in first-seen order."""
    quantity: dict[tuple[int, int], float] = {}
    upnl: dict[tuple[int, int], float] = {}
    accounts: dict[int, None] = {}
    for row in rows:
        accounts[row.account_id] = None
        key = (row.account_id, row.instrument_id)
        quantity[key] = quantity.get(key, 0.0) + row.quantity
        instrument = book.instruments[row.instrument_id]
        if row.entry_price is not None and not instrument.is_option:
            mark = market.marks[row.instrument_id].mark_price
            upnl[key] = upnl.get(key, 0.0) + row_upnl(
                row.quantity, instrument.multiplier, mark, row.entry_price
            )
    return quantity, upnl, accounts


def net_positions(
    rows: Iterable[PositionRow], book: BookData, market: MarketData
) -> dict[int, list[NettedPosition]]:
    """§2.1: net the rows per (account, instrument).

    Returns, per account that has any position row, its netted positions with `q != 0` in
    instrument-id order (an account whose positions all net to zero maps to an empty list).
    """
    quantity, upnl, accounts = _row_sums(rows, book, market)
    netted: dict[int, list[NettedPosition]] = {account: [] for account in accounts}
    for account, ins_id in sorted(quantity):
        q = quantity[(account, ins_id)]
        if q == 0.0:
            continue  # a net of exactly 0 carries no notional, margin or Greeks (§2.1)
        netted[account].append(NettedPosition(book.instruments[ins_id], q, upnl.get((account, ins_id), 0.0)))
    return netted


def closed_pnl(rows: Iterable[PositionRow], book: BookData, market: MarketData) -> dict[int, float]:
    """The P&L of each account's linear positions that net to exactly 0, summed in
    instrument-id order: realized but not yet settled, it stays in equity and collateral
    (rows `+1 @ 50,000` and `−1 @ 60,000` carry `+10,000 × multiplier`). Accounts without such
    a position are absent."""
    quantity, upnl, _ = _row_sums(rows, book, market)
    closed: dict[int, float] = {}
    for account, ins_id in sorted(quantity):
        if quantity[(account, ins_id)] == 0.0 and (account, ins_id) in upnl:
            closed[account] = closed.get(account, 0.0) + upnl[(account, ins_id)]
    return closed


def notional(position: NettedPosition, mark_price: float) -> float:
    """§2.2: `|q| × multiplier × mark_price`."""
    return abs(position.quantity) * position.instrument.multiplier * mark_price


def option_value(position: NettedPosition, mark_price: float) -> float:
    """§2.4: `q × multiplier × mark_price` (negative for shorts)."""
    return position.quantity * position.instrument.multiplier * mark_price


def position_pnl(position: NettedPosition, mark_price: float) -> float:
    """The position's contribution to equity and collateral (§2.6): its upnl (perpetuals and
    futures) or its option value (options)."""
    if position.instrument.is_option:
        return option_value(position, mark_price)
    return position.upnl


# --------------------------------------------------------------------------------------------
# §2.5: collateral
# --------------------------------------------------------------------------------------------


def asset_weight(weight: float, size_premium: float, amount: float) -> float:
    """§2.5 size premium: `min(weight, 1.1 / (1 + size_premium × sqrt(amount)))`, applied only
    when `amount > 0` and `size_premium > 0` (the amount is in units of the asset)."""
    if amount > 0.0 and size_premium > 0.0:
        return min(weight, 1.1 / (1.0 + size_premium * math.sqrt(amount)))
    return weight


def size_premium_rate(rate: float, imf_factor: float, size: float) -> float:
    """Drift's size premium (docs/methodology.md "Size- and open-interest-dependent rates"):
    `max(rate, 0.8 × rate + imf_factor × sqrt(size))`, `rate` itself when `imf_factor` is 0. Used
    on perpetual / future margin rates (size `|q| × multiplier`) and on borrows' liability
    weights (size `|amount|`)."""
    if imf_factor > 0.0:
        return max(rate, 0.8 * rate + imf_factor * math.sqrt(size))
    return rate


def weighted_value(asset: Asset, amount: float, weight_set: WeightSet) -> float:
    """§2.5: a holding's collateral value under weight set `weight_set`.

    `amount > 0`: `amount × price × weight_w(asset, amount)`;
    `amount < 0`: `amount × price × liability_weight_w` (after the asset's
    `liability_imf_factor` size premium on `|amount|`); `amount = 0`: 0.
    """
    if amount > 0.0:
        weight = asset.initial_weight if weight_set == "initial" else asset.maintenance_weight
        return amount * asset.price * asset_weight(weight, asset.size_premium, amount)
    if amount < 0.0:
        liability = (
            asset.initial_liability_weight if weight_set == "initial" else asset.maintenance_liability_weight
        )
        return amount * asset.price * size_premium_rate(liability, asset.liability_imf_factor, -amount)
    return 0.0


# --------------------------------------------------------------------------------------------
# §2.6: the account's value
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AccountValue:
    """§2.6 (methodology-notes): the sums from which equity and collateral follow."""

    cash: float
    """`Σ amount × price` over balances, asset-id order."""
    weighted_initial: float
    weighted_maintenance: float
    pnl: float
    """`Σ (upnl + option_value)` over netted positions, instrument-id order."""

    @property
    def equity(self) -> float:
        """`cash + pnl`: the net liquidation value, no haircuts."""
        return self.cash + self.pnl

    @property
    def collateral_initial(self) -> float:
        """`weighted_initial + pnl`."""
        return self.weighted_initial + self.pnl

    @property
    def collateral_maintenance(self) -> float:
        """`weighted_maintenance + pnl`."""
        return self.weighted_maintenance + self.pnl


def value_account(
    positions: list[NettedPosition],
    balances: list[BalanceRow],
    book: BookData,
    market: MarketData,
    extra_pnl: float = 0.0,
    closed: float = 0.0,
) -> AccountValue:
    """§2.6 for one account. `positions` must be in instrument-id order; balances are summed in
    asset-id order (each (account, asset) appears once). `extra_pnl` (value realized outside the
    positions, e.g. a what-if trade away from the mark) starts the P&L sum; `closed` (the
    account's `closed_pnl`) ends it."""
    cash = 0.0
    weighted_initial = 0.0
    weighted_maintenance = 0.0
    for row in sorted(balances, key=lambda b: b.asset_id):
        asset = book.assets[row.asset_id]
        cash += row.amount * asset.price
        weighted_initial += weighted_value(asset, row.amount, "initial")
        weighted_maintenance += weighted_value(asset, row.amount, "maintenance")
    pnl = extra_pnl
    for position in positions:
        pnl += position_pnl(position, market.marks[position.instrument.id].mark_price)
    pnl += closed
    return AccountValue(cash, weighted_initial, weighted_maintenance, pnl)
