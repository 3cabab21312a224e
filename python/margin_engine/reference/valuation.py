"""Netting, valuation and collateral (docs/methodology.md §1 time to expiry, §2).

Summation orders follow methodology-notes: rows of one (account, instrument) are summed in input
row order; an account's netted positions in instrument-id order; its balances in asset-id order.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
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
    0 for options and when positions carry no `entry_price`. An inverse perpetual or future:
    its coin P&L (`coin`) times the settlement coin's price, in USD."""
    coin: float = 0.0
    """An inverse perpetual's or future's P&L in its settlement coin (§2):
    Σ over the rows of `quantity × multiplier × (1/entry − 1/mark)`; 0 otherwise."""


def row_upnl(quantity: float, multiplier: float, mark: float, entry: float) -> float:
    """§2.3 for one row: `quantity × multiplier × (mark − entry)`, left to right."""
    return quantity * multiplier * (mark - entry)


def inverse_row_pnl(quantity: float, multiplier: float, mark: float, entry: float) -> float:
    """An inverse row's coin P&L: `quantity × multiplier × (1/entry − 1/mark)` (BitMEX's
    XBTUSD formula), left to right."""
    return quantity * multiplier * (1.0 / entry - 1.0 / mark)


def _row_sums(
    rows: Iterable[PositionRow], book: BookData, market: MarketData
) -> tuple[dict[tuple[int, int], float], dict[tuple[int, int], float], dict[int, None], dict[tuple[int, int], float]]:
    """Per (account, instrument): `Σ quantity` and `Σ upnl` over the rows in input row order
    (upnl of linear rows with an entry price only; in coin for inverse ones), the accounts in
    first-seen order, and `Σ unsettled_funding`."""
    quantity: dict[tuple[int, int], float] = {}
    upnl: dict[tuple[int, int], float] = {}
    funding: dict[tuple[int, int], float] = {}
    accounts: dict[int, None] = {}
    for row in rows:
        accounts[row.account_id] = None
        key = (row.account_id, row.instrument_id)
        quantity[key] = quantity.get(key, 0.0) + row.quantity
        funding[key] = funding.get(key, 0.0) + row.unsettled_funding
        instrument = book.instruments[row.instrument_id]
        if row.entry_price is not None and not instrument.is_option:
            mark = market.marks[row.instrument_id].mark_price
            pnl = inverse_row_pnl if instrument.is_inverse else row_upnl
            upnl[key] = upnl.get(key, 0.0) + pnl(row.quantity, instrument.multiplier, mark, row.entry_price)
    return quantity, upnl, accounts, funding


def net_positions(
    rows: Iterable[PositionRow], book: BookData, market: MarketData
) -> dict[int, list[NettedPosition]]:
    """§2.1: net the rows per (account, instrument).

    Returns, per account that has any position row, its netted positions with `q != 0` in
    instrument-id order (an account whose positions all net to zero maps to an empty list).
    """
    quantity, upnl, accounts, _ = _row_sums(rows, book, market)
    netted: dict[int, list[NettedPosition]] = {account: [] for account in accounts}
    for account, ins_id in sorted(quantity):
        q = quantity[(account, ins_id)]
        if q == 0.0:
            continue  # a net of exactly 0 carries no notional, margin or Greeks (§2.1)
        instrument = book.instruments[ins_id]
        pnl = upnl.get((account, ins_id), 0.0)
        if instrument.is_inverse and not instrument.is_option:
            netted[account].append(NettedPosition(instrument, q, pnl * book.settlement_price(instrument), pnl))
        else:
            netted[account].append(NettedPosition(instrument, q, pnl))
    return netted


def closed_pnl(rows: Iterable[PositionRow], book: BookData, market: MarketData) -> dict[int, float]:
    """The P&L of each account not carried by an open position: per instrument in
    instrument-id order, its rows' `unsettled_funding` (when not 0), then the P&L of a linear
    position that nets to exactly 0: realized but not yet settled, it stays in equity and
    collateral (rows `+1 @ 50,000` and `−1 @ 60,000` carry `+10,000 × multiplier`). Accounts
    without either are absent. Inverse positions that net to 0: `closed_inverse`."""
    quantity, upnl, _, funding = _row_sums(rows, book, market)
    closed: dict[int, float] = {}
    for account, ins_id in sorted(quantity):
        key = (account, ins_id)
        if funding[key] != 0.0:
            closed[account] = closed.get(account, 0.0) + funding[key]
        if quantity[key] == 0.0 and key in upnl and not book.instruments[ins_id].is_inverse:
            closed[account] = closed.get(account, 0.0) + upnl[key]
    return closed


def closed_inverse(
    rows: Iterable[PositionRow], book: BookData, market: MarketData
) -> dict[int, list[tuple[Instrument, float]]]:
    """Per account, its inverse perpetuals and futures that net to exactly 0 with a non-zero
    coin P&L, `(instrument, coin P&L)` in instrument-id order: their USD value moves with the
    settlement coin, so it is converted where the coin's price is known (`value_account`)."""
    quantity, upnl, _, _ = _row_sums(rows, book, market)
    out: dict[int, list[tuple[Instrument, float]]] = {}
    for account, ins_id in sorted(quantity):
        key = (account, ins_id)
        instrument = book.instruments[ins_id]
        if quantity[key] == 0.0 and instrument.is_inverse and upnl.get(key, 0.0) != 0.0:
            out.setdefault(account, []).append((instrument, upnl[key]))
    return out


def notional(position: NettedPosition, mark_price: float, book: BookData | None = None) -> float:
    """§2.2: `|q| × multiplier × mark_price`; an inverse contract's coin notional in USD at its
    settlement coin's price of `book` (`|q| × multiplier / mark × price` for a perpetual or
    future, `|q| × multiplier × mark × price` for a coin-settled option)."""
    ins = position.instrument
    if ins.is_inverse:
        assert book is not None, "an inverse contract's notional needs the book's coin price"
        if ins.is_option:
            return abs(position.quantity) * ins.multiplier * mark_price * book.settlement_price(ins)
        return abs(position.quantity) * ins.multiplier / mark_price * book.settlement_price(ins)
    return abs(position.quantity) * ins.multiplier * mark_price


def option_value(position: NettedPosition, mark_price: float) -> float:
    """§2.4: `q × multiplier × mark_price` (negative for shorts)."""
    return position.quantity * position.instrument.multiplier * mark_price


def position_pnl(position: NettedPosition, mark_price: float, book: BookData | None = None) -> float:
    """The position's contribution to equity and collateral (§2.6): its upnl (perpetuals and
    futures) or its option value (options). A coin-settled option: its coin value
    `q × multiplier × mark` times the settlement coin's price of `book`."""
    if position.instrument.is_option:
        if position.instrument.is_inverse:
            assert book is not None
            return option_value(position, mark_price) * book.settlement_price(position.instrument)
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
    closed_coins: Sequence[tuple[Instrument, float]] = (),
) -> AccountValue:
    """§2.6 for one account. `positions` must be in instrument-id order; balances are summed in
    asset-id order (each (account, asset) appears once). `extra_pnl` (value realized outside the
    positions, e.g. a what-if trade away from the mark) starts the P&L sum; `closed` (the
    account's `closed_pnl`) ends it, then `closed_coins` (its `closed_inverse`), summed apart
    at `book`'s coin prices."""
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
        pnl += position_pnl(position, market.marks[position.instrument.id].mark_price, book)
    pnl += closed
    if closed_coins:
        coins = 0.0
        for instrument, coin in closed_coins:
            coins += coin * book.settlement_price(instrument)
        pnl += coins
    return AccountValue(cash, weighted_initial, weighted_maintenance, pnl)
