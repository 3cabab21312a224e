"""Greeks aggregation per account × underlying (docs/methodology.md §7)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from ._tables import BookData, Instrument, Mark, read_book, read_market, read_positions
from .black76 import black76_scalar
from .valuation import NettedPosition, net_positions, notional, years_to_expiry

GREEKS_SCHEMA = pa.schema(
    [
        ("account_id", pa.uint64()),
        ("underlying", pa.utf8()),
        ("delta", pa.float64()),
        ("delta_usd", pa.float64()),
        ("gamma", pa.float64()),
        ("gamma_usd", pa.float64()),
        ("vega", pa.float64()),
        ("theta", pa.float64()),
        ("long_notional", pa.float64()),
        ("short_notional", pa.float64()),
    ]
)


@dataclass(frozen=True)
class ContractGreeks:
    """Greeks of one contract, before the multiplier (§5)."""

    delta: float
    gamma: float
    vega: float
    theta: float


def _supplied(value: float | None, fallback: float) -> float:
    """A supplied Greek when the marks table carries one for this row, else the model's."""
    return fallback if value is None else value


def contract_greeks(
    instrument: Instrument, mark: Mark, index_price: float, valuation_ns: int
) -> ContractGreeks:
    """§5/§7 per-contract Greeks.

    Perpetuals and futures: delta 1, the rest 0. Options: Black-76 at `F = S` (the index price),
    the instrument's strike, `T` and the implied vol, each Greek replaced by the value of the
    `marks` column of the same name when that column exists and is non-null for the row.
    """
    if not instrument.is_option:
        if instrument.is_inverse:
            # a contract of face value `multiplier` USD is `multiplier / mark` coins of exposure
            return ContractGreeks(1.0 / mark.mark_price, 0.0, 0.0, 0.0)
        return ContractGreeks(1.0, 0.0, 0.0, 0.0)
    assert instrument.strike is not None and mark.implied_vol is not None
    time = years_to_expiry(instrument.expiry_ns, valuation_ns)
    _, delta, gamma, vega, theta = black76_scalar(
        index_price, instrument.strike, time, mark.implied_vol, instrument.is_call
    )
    return ContractGreeks(
        _supplied(mark.delta, delta),
        _supplied(mark.gamma, gamma),
        _supplied(mark.vega, vega),
        _supplied(mark.theta, theta),
    )


@dataclass
class GreeksRow:
    """Running sums of one account × underlying (§7)."""

    delta: float = 0.0
    gamma: float = 0.0
    vega: float = 0.0
    theta: float = 0.0
    long_notional: float = 0.0
    short_notional: float = 0.0

    def add(self, position: NettedPosition, greeks: ContractGreeks, mark_price: float, book: BookData | None = None) -> None:
        """Add `q·mult·greek` for each Greek, and the §2.2 notional to the long or short side."""
        q = position.quantity
        mult = position.instrument.multiplier
        self.delta += q * mult * greeks.delta
        self.gamma += q * mult * greeks.gamma
        self.vega += q * mult * greeks.vega
        self.theta += q * mult * greeks.theta
        if q > 0.0:
            self.long_notional += notional(position, mark_price, book)
        else:
            self.short_notional += notional(position, mark_price, book)


def delta_usd(delta: float, index_price: float) -> float:
    """§7 `delta × S`."""
    return delta * index_price


def gamma_usd(gamma: float, index_price: float) -> float:
    """§7 `gamma × S × S / 100`: the P&L of a 1% move's convexity."""
    return gamma * index_price * index_price / 100.0


def greeks(book: Any, positions: Any, market: Any) -> pa.Table:
    """§7: one row per account × underlying with at least one non-zero netted position, sorted by
    `account_id` then underlying name. Sums over positions run in instrument-id order."""
    bd = read_book(book)
    md = read_market(market, bd)
    netted = net_positions(read_positions(positions, bd), bd, md)
    columns: dict[str, list[Any]] = {name: [] for name in GREEKS_SCHEMA.names}
    for account in sorted(netted):
        rows: dict[str, GreeksRow] = {}
        for position in netted[account]:
            ins = position.instrument
            mark = md.marks[ins.id]
            s = md.index_prices[ins.underlying]
            rows.setdefault(ins.underlying, GreeksRow()).add(
                position, contract_greeks(ins, mark, s, md.valuation_ns), mark.mark_price, bd
            )
        for underlying in sorted(rows):
            row = rows[underlying]
            s = md.index_prices[underlying]
            columns["account_id"].append(account)
            columns["underlying"].append(underlying)
            columns["delta"].append(row.delta)
            columns["delta_usd"].append(delta_usd(row.delta, s))
            columns["gamma"].append(row.gamma)
            columns["gamma_usd"].append(gamma_usd(row.gamma, s))
            columns["vega"].append(row.vega)
            columns["theta"].append(row.theta)
            columns["long_notional"].append(row.long_notional)
            columns["short_notional"].append(row.short_notional)
    return pa.table(columns, schema=GREEKS_SCHEMA)
