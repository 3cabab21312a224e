"""Account results (docs/methodology.md §6) and the public `margin` function."""

from __future__ import annotations

import math

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import pyarrow as pa

from ._tables import BalanceRow, BookData, Instrument, MarketData, read_balances, read_book, read_market, read_positions
from .portfolio import RiskArrays, portfolio_margin
from .standard import standard_margin
from .valuation import NettedPosition, closed_inverse, closed_pnl, net_positions, value_account

Model = Literal["standard", "portfolio"]

MARGIN_SCHEMA = pa.schema(
    [
        ("account_id", pa.uint64()),
        ("equity", pa.float64()),
        ("collateral_initial", pa.float64()),
        ("collateral_maintenance", pa.float64()),
        ("initial_margin", pa.float64()),
        ("maintenance_margin", pa.float64()),
        ("free_collateral", pa.float64()),
        ("margin_excess", pa.float64()),
        ("health", pa.float64()),
        ("status", pa.utf8()),
    ]
)


STATUS_TOLERANCE = 1e-9
"""Relative tolerance of the status rule (see `meets`)."""


def meets(collateral: float, requirement: float) -> bool:
    """Collateral meets a requirement when `collateral >= requirement − 1e-9 × max(1, requirement)`:
    an account of long options and no cash sits exactly at maintenance in exact arithmetic, and
    its status must not ride on the last bits of `erfc`."""
    return collateral >= requirement - STATUS_TOLERANCE * max(requirement, 1.0)


def account_status(
    equity: float, collateral_initial: float, collateral_maintenance: float, im: float, mm: float
) -> str:
    """`bankrupt` if equity < 0; else `liquidatable` if collateral_maintenance does not meet MM;
    else `margin_call` if collateral_initial does not meet IM; else `healthy` (`meets`)."""
    if equity < 0.0:
        return "bankrupt"
    if not meets(collateral_maintenance, mm):
        return "liquidatable"
    if not meets(collateral_initial, im):
        return "margin_call"
    return "healthy"


def health(collateral_maintenance: float, mm: float) -> float | None:
    """§6 `collateral_maintenance / MM`, null when `MM = 0` (or when the ratio overflows)."""
    if mm == 0.0:
        return None
    try:
        ratio = collateral_maintenance / mm
    except OverflowError:
        return None
    return ratio if math.isfinite(ratio) else None


@dataclass(frozen=True)
class AccountResult:
    """One §6 row."""

    account_id: int
    equity: float
    collateral_initial: float
    collateral_maintenance: float
    initial_margin: float
    maintenance_margin: float
    free_collateral: float
    margin_excess: float
    health: float | None
    status: str


def account_result(
    account_id: int,
    positions: list[NettedPosition],
    balances: list[BalanceRow],
    book: BookData,
    market: MarketData,
    model: Model,
    arrays: RiskArrays,
    extra_pnl: float = 0.0,
    closed: float = 0.0,
    methodology: Any = None,
    standard_rules: Any = None,
    closed_coins: Sequence[tuple[Instrument, float]] = (),
    orders: list[Any] | None = None,
) -> AccountResult:
    """§6 row of one account: §2 valuation, §3 or §4 margin, then
    `free_collateral = collateral_initial − IM`, `margin_excess = collateral_maintenance − MM`.
    `extra_pnl` is value realized outside the positions and `closed` the P&L of positions that
    netted to 0, `closed_coins` that of inverse ones in coin (see `value_account`)."""
    if orders and ((model == "standard" and standard_rules is not None) or (model == "portfolio" and methodology is not None)):
        raise ValueError("resting orders are margined under v1's standard and portfolio models only")
    if model == "standard" and standard_rules is not None:
        # the book's generalized standard rules (they may change collateral too)
        from .scenario_inputs import market_feeds
        from .standard_rules import account_standard_margin

        a = account_standard_margin(
            account_id, positions, balances, book, market, standard_rules, market_feeds(market, book), closed + extra_pnl
        )
        return AccountResult(
            account_id=account_id,
            equity=a.equity,
            collateral_initial=a.collateral_initial,
            collateral_maintenance=a.collateral_maintenance,
            initial_margin=a.initial_margin,
            maintenance_margin=a.maintenance_margin,
            free_collateral=a.free_collateral,
            margin_excess=a.margin_excess,
            health=a.health,
            status=account_status(a.equity, a.collateral_initial, a.collateral_maintenance, a.initial_margin, a.maintenance_margin),
        )
    value = value_account(positions, balances, book, market, extra_pnl, closed, closed_coins)
    equity = value.equity
    ci = value.collateral_initial
    cm = value.collateral_maintenance
    if model == "standard":
        im, mm = standard_margin(positions, book, market)
    elif model == "portfolio" and methodology is not None:
        # a scenario methodology (`scenario_inputs.book_methodology`): its requirements
        from .scenario_inputs import account_requirements

        im, mm = account_requirements(positions, balances, book, market, methodology)
        if methodology.default.collateral_haircuts_as_contingency:
            ci = cm = equity  # collateral at its full value: the haircuts are in the requirements
    elif model == "portfolio":
        im, mm = portfolio_margin(positions, book, market, arrays)
    else:
        raise ValueError(f"unknown model {model!r}: expected 'standard' or 'portfolio'")
    if orders:
        from .orders import order_margin

        im = im + order_margin(positions, orders, book, market, model, arrays)
    return AccountResult(
        account_id=account_id,
        equity=equity,
        collateral_initial=ci,
        collateral_maintenance=cm,
        initial_margin=im,
        maintenance_margin=mm,
        free_collateral=ci - im,
        margin_excess=cm - mm,
        health=health(cm, mm),
        status=account_status(equity, ci, cm, im, mm),
    )


def margin(
    book: Any,
    positions: Any,
    balances: Any,
    market: Any,
    *,
    orders: Any = None,
    model: Model = "standard",
    threads: int | None = None,
) -> pa.Table:
    """§6: one row per account present in `positions`, `balances` or `orders`, sorted by
    `account_id`.

    `model` is `"standard"` (§3) or `"portfolio"` (§4); `orders` (optional) adds the resting
    orders' initial margin (`orders.order_margin`). `threads` is accepted for API
    compatibility and ignored.
    """
    del threads
    if model not in ("standard", "portfolio"):
        raise ValueError(f"unknown model {model!r}: expected 'standard' or 'portfolio'")
    bd = read_book(book)
    md = read_market(market, bd)
    rows = read_positions(positions, bd)
    netted = net_positions(rows, bd, md)
    closed = closed_pnl(rows, bd, md)
    coins = closed_inverse(rows, bd, md)
    balances_by_account: dict[int, list[BalanceRow]] = {}
    for row in read_balances(balances, bd):
        balances_by_account.setdefault(row.account_id, []).append(row)
    arrays = RiskArrays(bd, md)
    from .scenario_inputs import book_methodology, book_standard_rules

    methodology = book_methodology(book)
    standard_rules = book_standard_rules(book)
    from .orders import read_orders

    orders_by_account = read_orders(orders, bd)

    columns: dict[str, list[Any]] = {name: [] for name in MARGIN_SCHEMA.names}
    for account in sorted(set(netted) | set(balances_by_account) | set(orders_by_account)):
        result = account_result(
            account,
            netted.get(account, []),
            balances_by_account.get(account, []),
            bd,
            md,
            model,
            arrays,
            closed=closed.get(account, 0.0),
            methodology=methodology,
            standard_rules=standard_rules,
            closed_coins=coins.get(account, ()),
            orders=orders_by_account.get(account),
        )
        for name in MARGIN_SCHEMA.names:
            columns[name].append(getattr(result, name))
    return pa.table(columns, schema=MARGIN_SCHEMA)
