"""Initial margin of resting orders (docs/methodology.md §10, "Open orders").

The worst case of Drift's and Mango's open-order margin: per group of an account's positions,
either every bid fills or every ask fills, whichever requires more initial margin, and the
loss of filling above (a bid) or below (an ask) the mark is charged with it. A group is what
the model margins on its own: one instrument under the standard model (§3), one underlying under
the portfolio model (§4: all that underlying's bids, or all its asks, fill together and the
filled positions are revalued through the scenarios). For one group:

    B_i = Σ bids of instrument i, A_i = Σ asks (input order)
    fill_loss(side) = Σ over the side's orders of max(0, q × mult × (price − mark))
    addon = max(0, IM(q + B) − IM(q) + fill_loss(bids), IM(q + A) − IM(q) + fill_loss(asks))

`IM` is the group's own initial margin. The account's initial margin is its positions' plus
Σ addon over groups in id order. Maintenance margin never sees orders.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._tables import BookData, MarketData, as_table, column
from .portfolio import RiskArrays, underlying_maintenance_margin
from .standard import position_margin
from .valuation import NettedPosition


@dataclass(frozen=True)
class OrderRow:
    """One input row of `orders`, with the instrument resolved to its dense id."""

    account_id: int
    instrument_id: int
    quantity: float
    price: float


def read_orders(orders: Any, book: BookData) -> dict[int, list[OrderRow]]:
    """Order rows per account, in input order (an empty dict for `None`)."""
    if orders is None:
        return {}
    table = as_table(orders)
    accounts = column(table, "account_id")
    keys = column(table, "instrument")
    quantities = column(table, "quantity")
    prices = column(table, "price")
    out: dict[int, list[OrderRow]] = {}
    for i in range(table.num_rows):
        row = OrderRow(int(accounts[i]), book.instrument_ids[keys[i]], float(quantities[i]), float(prices[i]))
        out.setdefault(row.account_id, []).append(row)
    return out


def fill_loss(quantity: float, multiplier: float, price: float, mark: float) -> float:
    """The loss of an order filling at its limit price against the mark:
    `max(0, q × mult × (price − mark))` (a bid above the mark, an ask below it)."""
    return max(quantity * multiplier * (price - mark), 0.0)


def worse(base: float, with_bids: float, with_asks: float, bid_loss: float, ask_loss: float) -> float:
    """`max(0, IM(bids) − IM + loss(bids), IM(asks) − IM + loss(asks))`."""
    return max(max(0.0, with_bids - base + bid_loss), with_asks - base + ask_loss)


def _sides(rows: list[OrderRow]) -> dict[int, tuple[float, float]]:
    """Per instrument (ascending id): (Σ bids, Σ asks) in input order."""
    sides: dict[int, tuple[float, float]] = {}
    for r in sorted(rows, key=lambda r: r.instrument_id):  # stable: input order per instrument
        bids, asks = sides.get(r.instrument_id, (0.0, 0.0))
        if r.quantity > 0.0:
            bids += r.quantity
        else:
            asks += r.quantity
        sides[r.instrument_id] = (bids, asks)
    return sides


def _losses(rows: list[OrderRow], book: BookData, market: MarketData) -> tuple[float, float]:
    """(bid fill loss, ask fill loss), orders in (instrument id, input) order."""
    bid = 0.0
    ask = 0.0
    for r in sorted(rows, key=lambda r: r.instrument_id):
        ins = book.instruments[r.instrument_id]
        loss = fill_loss(r.quantity, ins.multiplier, r.price, market.marks[ins.id].mark_price)
        if r.quantity > 0.0:
            bid += loss
        else:
            ask += loss
    return bid, ask


def order_margin(
    positions: list[NettedPosition],
    orders: list[OrderRow],
    book: BookData,
    market: MarketData,
    model: str,
    arrays: RiskArrays,
) -> float:
    """The extra initial margin of one account's `orders` (module docstring), `positions` its
    netted positions in instrument-id order."""
    if not orders:
        return 0.0
    held = {p.instrument.id: p for p in positions}
    total = 0.0
    if model == "standard":
        by_instrument: dict[int, list[OrderRow]] = {}
        for r in orders:
            by_instrument.setdefault(r.instrument_id, []).append(r)
        for i in sorted(by_instrument):
            rows = by_instrument[i]
            ins = book.instruments[i]
            q = held[i].quantity if i in held else 0.0
            bids, asks = _sides(rows)[i]

            def im(quantity: float) -> float:
                return position_margin(NettedPosition(ins, quantity, 0.0), book, market)[0]

            total += worse(im(q), im(q + bids), im(q + asks), *_losses(rows, book, market))
        return total
    by_underlying: dict[str, list[OrderRow]] = {}
    for r in orders:
        by_underlying.setdefault(book.instruments[r.instrument_id].underlying, []).append(r)
    for u in book.underlyings:  # id (sorted name) order
        rows = by_underlying.get(u)
        if not rows:
            continue
        params = book.params(u)
        sides = _sides(rows)
        ids = sorted({p.instrument.id for p in positions if p.instrument.underlying == u} | set(sides))

        def im_with(side: int) -> float:
            filled = []
            for i in ids:
                q = held[i].quantity if i in held else 0.0
                if i in sides and side != 0:
                    q = q + sides[i][0 if side > 0 else 1]
                filled.append(NettedPosition(book.instruments[i], q, 0.0))
            return params.im_factor * underlying_maintenance_margin(filled, params, market.index_prices.get(u), arrays)

        total += worse(im_with(0), im_with(1), im_with(-1), *_losses(rows, book, market))
    return total
