"""Liquidation plans (docs/liquidation.md §7): which positions to close, how much, and who pays.

The reference twin of `me.liquidation_plan`, built on the §2–§4, §6 and §8 reference pieces: an
account's row is `account_in(...)` of the scan, its margin after a close is the §3 / §4 margin of
its positions scaled down, and a plan under `stress` is made in the stressed `Scenario` of
`reference.liquidation` (positions netted at the current market, revalued to the moved marks).

Rules, for every account whose status is `liquidatable` or `bankrupt` (docs/methodology.md §6), taken
one by one in account-id order:

1. **Order.** Score each netted position by the maintenance margin that closing it alone (all
   others held) frees, per unit of its notional: `(MM − MM without it) / notional`; a position
   with no notional scores +inf if it frees margin, else 0. Highest score first, ties by
   instrument id. The order is fixed at the start.
2. **Closes.** Walk that order. Stop as soon as the account meets the target
   `equity ≥ 0 and collateral_maintenance ≥ (1 + buffer) × MM`. Otherwise, if closing the whole
   position (paying its fee) would meet the target, close the smallest fraction that does: 60
   bisection steps on [0, 1], keeping the feasible end `hi`. Else close all of it. Closing at mark
   turns the position's value into cash at full weight, so only the fee changes collateral and
   equity; MM is that of the positions left (each scaled by `1 − fraction closed`).
3. **Fees.** `liquidation_fee × fraction × notional`, capped at the maintenance collateral left
   (never below 0), split `liquidator_share` to the liquidator and the rest to the insurance fund.
4. **Deficits.** `deficit = max(0, −equity after)`. The fund (its balance plus every fee paid in
   by every plan) covers deficits in account-id order while it lasts; the rest is bad debt,
   attributed to underlyings in proportion to the notional the account closed in each (all of
   it to the book's first underlying when the account closed nothing).
5. **ADL queues** for each underlying with bad debt and a non-zero bankrupt delta (the delta the
   bankrupt accounts held there): every account not liquidated whose net delta in the underlying
   has the opposite sign, whose perpetuals and futures there are in profit, with positive
   leverage; `score = profit_ratio × leverage`, highest first, ties by account id; ranks from 1.

The engine runs the same algorithm (rust/margin-core/src/plan.rs) and adds the same numbers in
the same order, so `tests/test_liquidation_plan_differential.py` compares the two to 1e-9.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from margin_engine.api import LiquidationPlan

from .greeks import contract_greeks
from .liquidation import (
    Accounts,
    Scenario,
    _check_model,
    _not_null,
    positions_in,
    read_accounts,
    scenario_of,
)
from .portfolio import portfolio_margin
from .results import AccountResult, Model
from .standard import standard_margin
from .valuation import NettedPosition, notional, position_pnl

BISECTION_STEPS = 60
"""Halvings of [0, 1] for a partial close: the fraction is exact to 2^-60."""


def _plan_schema(keys: list[tuple[str, pa.DataType]], floats: str) -> pa.Schema:
    """An output table's schema: the key columns, then float64 columns (names separated by
    spaces); no column is nullable."""
    return _not_null(pa.schema(keys + [(name, pa.float64()) for name in floats.split()]), set())


CLOSES_SCHEMA = _plan_schema(
    [("account_id", pa.uint64()), ("step", pa.uint32()), ("instrument", pa.utf8()), ("underlying", pa.utf8())],
    "quantity_before quantity_closed fraction mark_price notional fee liquidator_fee insurance_fee value_before",
)
ACCOUNTS_SCHEMA = _plan_schema(
    [("account_id", pa.uint64()), ("status_before", pa.utf8()), ("status_after", pa.utf8())],
    "equity_before equity_after collateral_maintenance_before collateral_maintenance_after"
    " maintenance_margin_before maintenance_margin_after fees closed_notional deficit"
    " covered_by_insurance bad_debt",
)
UNDERLYINGS_SCHEMA = _plan_schema([("underlying", pa.utf8())], "closed_notional bad_debt")
ADL_SCHEMA = _plan_schema(
    [("underlying", pa.utf8()), ("rank", pa.uint32()), ("account_id", pa.uint64())],
    "delta profit_ratio leverage score",
)


# --------------------------------------------------------------------------------------------
# Parameters and results
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlanParams:
    """The liquidation's parameters (as `me.liquidation_plan` takes them)."""

    liquidation_fee: float
    """Fee as a fraction of closed notional, in [0, 1)."""
    liquidator_share: float
    """Share of each fee paid to the liquidator, in [0, 1]; the rest goes to the insurance fund."""
    buffer: float
    """Target after liquidation: `collateral_maintenance ≥ (1 + buffer) × MM`."""
    insurance_fund: float
    """Insurance fund balance before the liquidations."""

    @property
    def target(self) -> float:
        """`1 + buffer`: the multiple of MM an account is restored to."""
        return 1.0 + self.buffer

    def meets(self, collateral: float, margin: float, equity: float) -> bool:
        """Whether an account is restored: `equity ≥ 0` and `collateral ≥ (1 + buffer) × MM`."""
        return equity >= 0.0 and collateral >= self.target * margin

    def liquidator_fee(self, fee: float) -> float:
        """The liquidator's part of a fee."""
        return fee * self.liquidator_share

    def insurance_fee(self, fee: float) -> float:
        """The insurance fund's part of a fee: what the liquidator does not get."""
        return fee - fee * self.liquidator_share


@dataclass(frozen=True)
class Close:
    """One close of a plan."""

    account_id: int
    step: int
    """Position in the account's ranking (0 = first)."""
    position: NettedPosition
    """The whole position before the close (in the plan's market)."""
    fraction: float
    mark_price: float
    notional: float
    """`fraction × |q| × multiplier × mark`."""
    fee: float
    value_before: float
    """The whole position's value before the close (its P&L or option value), at the plan's marks."""


@dataclass
class Outcome:
    """One liquidated account: its §6 row before, where its plan left it, and who paid."""

    before: AccountResult
    equity_after: float
    collateral_maintenance_after: float
    maintenance_margin_after: float
    fees: float
    closed_notional: float
    deficit: float
    """`max(0, −equity_after)`."""
    covered_by_insurance: float = 0.0
    bad_debt: float = 0.0


# --------------------------------------------------------------------------------------------
# One account's plan
# --------------------------------------------------------------------------------------------


def maintenance_margin_left(
    positions: list[NettedPosition], closed: list[float], scenario: Scenario, model: Model
) -> float:
    """§3 / §4 maintenance margin of the positions, each scaled by `1 − closed[i]` (the fraction
    of it closed so far); a position fully closed is gone."""
    left: list[NettedPosition] = []
    for position, fraction in zip(positions, closed, strict=True):
        remaining = 1.0 - fraction
        if remaining > 0.0:
            left.append(NettedPosition(position.instrument, position.quantity * remaining, position.upnl))
    if model == "portfolio":
        return portfolio_margin(left, scenario.book, scenario.market, scenario.arrays)[1]
    return standard_margin(left, scenario.book, scenario.market)[1]


def total_order(x: float) -> int:
    """`x` as an integer that sorts like IEEE 754 total order (Rust's `f64::total_cmp`, which
    the engine sorts scores with): −0.0 before +0.0, NaNs at the ends."""
    bits: int = struct.unpack("<q", struct.pack("<d", x))[0]
    return bits ^ ((bits >> 63) & 0x7FFF_FFFF_FFFF_FFFF)


def margin_freed(positions: list[NettedPosition], scenario: Scenario, model: Model) -> list[float]:
    """For each position, the maintenance margin that closing it alone (the others held) frees:
    `MM − MM without it`."""
    n = len(positions)
    full_margin = maintenance_margin_left(positions, [0.0] * n, scenario, model)
    freed: list[float] = []
    for i in range(n):
        closed = [0.0] * n
        closed[i] = 1.0
        freed.append(full_margin - maintenance_margin_left(positions, closed, scenario, model))
    return freed


def score(freed: float, notional_value: float) -> float:
    """Rule 1's score: margin freed per unit of notional; without notional, +inf if the position
    frees margin, else 0."""
    if notional_value > 0.0:
        return freed / notional_value
    return math.inf if freed > 0.0 else 0.0


def ranking_key(s: float) -> float:
    """A score rounded to a multiple of 2^-40 (~1e-12), so that scores equal mathematically but a
    few ulps apart tie and the instrument id decides. Scaling by a power of two is exact."""
    scaled = s * 2.0**40
    return float(math.floor(scaled + 0.5)) if math.isfinite(scaled) else scaled


def closing_order(
    positions: list[NettedPosition], notionals: list[float], scenario: Scenario, model: Model
) -> list[int]:
    """Rule 1: indexes of `positions`, highest score first (compared to 2^-40), ties by
    instrument id."""
    freed = margin_freed(positions, scenario, model)
    scores = [ranking_key(score(f, n)) for f, n in zip(freed, notionals, strict=True)]
    return sorted(range(len(positions)), key=lambda i: (-total_order(scores[i]), positions[i].instrument.id))


def plan_account(
    row: AccountResult, positions: list[NettedPosition], scenario: Scenario, model: Model, params: PlanParams
) -> tuple[list[Close], Outcome]:
    """Rules 1–3 for one account below maintenance: its closes and where they leave it.
    `positions` are its netted positions in the plan's market, in instrument-id order."""
    n = len(positions)
    marks = [scenario.market.marks[p.instrument.id].mark_price for p in positions]
    notionals = [notional(p, mark) for p, mark in zip(positions, marks, strict=True)]
    order = closing_order(positions, notionals, scenario, model)

    def fee_for(fraction: float, i: int, collateral: float) -> float:
        """Rule 3: the fee of closing `fraction` of position i, never more than the maintenance
        collateral left (so a fee alone never makes an account bankrupt)."""
        return min(params.liquidation_fee * fraction * notionals[i], max(collateral, 0.0))

    closed = [0.0] * n  # fraction of each position closed so far
    equity = row.equity
    collateral = row.collateral_maintenance
    margin = maintenance_margin_left(positions, closed, scenario, model)
    fees = 0.0
    closed_notional = 0.0
    closes: list[Close] = []
    for step, i in enumerate(order):
        if params.meets(collateral, margin, equity):
            break
        # Would closing all of it be enough? Then the smallest fraction that is (rule 2).
        closed[i] = 1.0
        margin_if_all = maintenance_margin_left(positions, closed, scenario, model)
        fee_if_all = fee_for(1.0, i, collateral)
        if params.meets(collateral - fee_if_all, margin_if_all, equity - fee_if_all):
            lo, hi = 0.0, 1.0  # lo is never enough, hi always is
            for _ in range(BISECTION_STEPS):
                mid = 0.5 * (lo + hi)
                closed[i] = mid
                fee = fee_for(mid, i, collateral)
                if params.meets(
                    collateral - fee, maintenance_margin_left(positions, closed, scenario, model), equity - fee
                ):
                    hi = mid
                else:
                    lo = mid
            fraction = hi
        else:
            fraction = 1.0
        closed[i] = fraction
        fee = fee_for(fraction, i, collateral)
        margin = maintenance_margin_left(positions, closed, scenario, model)
        collateral -= fee
        equity -= fee
        fees += fee
        closed_notional += fraction * notionals[i]
        closes.append(
            Close(
                account_id=row.account_id,
                step=step,
                position=positions[i],
                fraction=fraction,
                mark_price=marks[i],
                notional=fraction * notionals[i],
                fee=fee,
                value_before=position_pnl(positions[i], marks[i]),
            )
        )
    outcome = Outcome(
        before=row,
        equity_after=equity,
        collateral_maintenance_after=collateral,
        maintenance_margin_after=margin,
        fees=fees,
        closed_notional=closed_notional,
        deficit=max(0.0, -equity),
    )
    return closes, outcome


def status_after(outcome: Outcome, params: PlanParams) -> str:
    """`bankrupt` (equity still negative), `restored` (at or above the target) or
    `collateral_shortfall` (everything closed, collateral still short: haircuts on borrows)."""
    if outcome.equity_after < 0.0:
        return "bankrupt"
    if outcome.collateral_maintenance_after >= params.target * outcome.maintenance_margin_after:
        return "restored"
    return "collateral_shortfall"


# --------------------------------------------------------------------------------------------
# The whole book: fees, the insurance fund, bad debt
# --------------------------------------------------------------------------------------------


@dataclass
class Liquidation:
    """Every plan of the book and the tallies (per underlying: in the book's underlying order)."""

    closes: list[Close]
    outcomes: list[Outcome]
    closed_notional_by_underlying: dict[str, float]
    bad_debt_by_underlying: dict[str, float]
    liquidator_fees: float
    insurance_fees: float
    insurance_fund_after: float


def attribute_bad_debt(closes: list[Close], outcome: Outcome, underlyings: list[str], by_underlying: dict[str, float]) -> None:
    """Rule 4: an account's bad debt over the underlyings it closed, by closed notional."""
    if outcome.closed_notional > 0.0:
        for c in closes:
            share = c.notional / outcome.closed_notional
            by_underlying[c.position.instrument.underlying] += outcome.bad_debt * share
    elif underlyings:
        by_underlying[underlyings[0]] += outcome.bad_debt  # nothing closed: collateral only


def liquidate(
    accounts: Accounts,
    rows: dict[int, AccountResult],
    scenario: Scenario,
    model: Model,
    params: PlanParams,
) -> Liquidation:
    """Rules 1–4 over the book: a plan for every account below maintenance (account-id order),
    then the fees paid into the fund, then the deficits drawn from it in account-id order."""
    underlyings = scenario.book.underlyings
    plans: list[tuple[list[Close], Outcome]] = []
    for account in accounts.ids:
        row = rows[account]
        if row.status in ("liquidatable", "bankrupt"):
            positions = positions_in(scenario, accounts.positions.get(account, []))
            plans.append(plan_account(row, positions, scenario, model, params))

    closed_notional = {u: 0.0 for u in underlyings}
    bad_debt = {u: 0.0 for u in underlyings}
    liquidator_fees = 0.0
    insurance_fees = 0.0
    for closes, _ in plans:
        for c in closes:
            closed_notional[c.position.instrument.underlying] += c.notional
            liquidator_fees += params.liquidator_fee(c.fee)
            insurance_fees += params.insurance_fee(c.fee)

    # The fund: its balance plus all the fees paid in, then drawn by deficits in account-id order.
    fund = params.insurance_fund + insurance_fees
    for closes, outcome in plans:
        if outcome.deficit > 0.0:
            covered = min(outcome.deficit, max(fund, 0.0))
            fund -= covered
            outcome.covered_by_insurance = covered
            outcome.bad_debt = outcome.deficit - covered
            if outcome.bad_debt > 0.0:
                attribute_bad_debt(closes, outcome, underlyings, bad_debt)
    return Liquidation(
        closes=[c for closes, _ in plans for c in closes],
        outcomes=[outcome for _, outcome in plans],
        closed_notional_by_underlying=closed_notional,
        bad_debt_by_underlying=bad_debt,
        liquidator_fees=liquidator_fees,
        insurance_fees=insurance_fees,
        insurance_fund_after=fund,
    )


# --------------------------------------------------------------------------------------------
# Auto-deleveraging queues
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdlEntry:
    """One account in the ADL queue of one underlying."""

    underlying: str
    account_id: int
    delta: float
    """The account's net delta in the underlying (underlying units): the side it holds."""
    profit_ratio: float
    """Unrealized P&L of its perpetuals and futures in the underlying over their notional."""
    leverage: float
    """The account's total notional over its equity."""

    @property
    def score(self) -> float:
        """`profit_ratio × leverage`: who is deleveraged first."""
        return self.profit_ratio * self.leverage


def adl_queues(
    accounts: Accounts, rows: dict[int, AccountResult], scenario: Scenario, liquidation: Liquidation
) -> list[tuple[int, AdlEntry]]:
    """Rule 5: `(rank, entry)` pairs, by underlying (book order), then score descending, then
    account id; ranks count from 1 within each underlying."""
    book, market = scenario.book, scenario.market

    def delta_of(position: NettedPosition) -> float:
        """`q × multiplier × δ` (§7 per-contract delta, in the plan's market)."""
        ins = position.instrument
        greeks = contract_greeks(
            ins, market.marks[ins.id], market.index_prices.get(ins.underlying, math.nan), market.valuation_ns
        )
        return position.quantity * ins.multiplier * greeks.delta

    # The bankrupt side per underlying: the delta the accounts left with bad debt closed there.
    bankrupt = {o.before.account_id for o in liquidation.outcomes if o.bad_debt > 0.0}
    bankrupt_delta = {u: 0.0 for u in book.underlyings}
    for c in liquidation.closes:
        if c.account_id in bankrupt:
            bankrupt_delta[c.position.instrument.underlying] += delta_of(c.position)
    wanted = [
        u for u in book.underlyings if liquidation.bad_debt_by_underlying[u] > 0.0 and bankrupt_delta[u] != 0.0
    ]
    liquidated = {o.before.account_id for o in liquidation.outcomes}

    entries: list[AdlEntry] = []
    for account in accounts.ids:
        if account in liquidated:
            continue
        positions = positions_in(scenario, accounts.positions.get(account, []))
        total_notional = 0.0
        for p in positions:
            total_notional += notional(p, market.marks[p.instrument.id].mark_price)
        equity = rows[account].equity
        leverage = total_notional / equity if equity > 0.0 else 0.0
        for u in wanted:
            delta = 0.0
            pnl = 0.0
            linear_notional = 0.0
            for p in positions:
                if p.instrument.underlying != u:
                    continue
                delta += delta_of(p)
                if not p.instrument.is_option:
                    pnl += p.upnl
                    linear_notional += notional(p, market.marks[p.instrument.id].mark_price)
            opposite_side = delta * bankrupt_delta[u] < 0.0
            if opposite_side and pnl > 0.0 and linear_notional > 0.0 and leverage > 0.0:
                entries.append(AdlEntry(u, account, delta, pnl / linear_notional, leverage))

    position_of = {u: i for i, u in enumerate(book.underlyings)}
    entries.sort(key=lambda e: (position_of[e.underlying], -total_order(e.score), e.account_id))
    ranked: list[tuple[int, AdlEntry]] = []
    for i, e in enumerate(entries):
        same_queue = i > 0 and entries[i - 1].underlying == e.underlying
        ranked.append((ranked[-1][0] + 1 if same_queue else 1, e))
    return ranked


# --------------------------------------------------------------------------------------------
# Public: liquidation_plan
# --------------------------------------------------------------------------------------------


def _check_params(params: PlanParams) -> None:
    """The engine's ranges: fee in [0, 1), share in [0, 1], buffer and fund ≥ 0, all finite."""
    checks = {
        "liquidation_fee": 0.0 <= params.liquidation_fee < 1.0,
        "liquidator_share": 0.0 <= params.liquidator_share <= 1.0,
        "buffer": 0.0 <= params.buffer < math.inf,
        "insurance_fund": 0.0 <= params.insurance_fund < math.inf,
    }
    for name, ok in checks.items():
        if not ok:
            raise ValueError(f"liquidation_plan: invalid {name} {getattr(params, name)!r}")


def _closes_table(closes: list[Close], params: PlanParams) -> pa.Table:
    columns: dict[str, list[Any]] = {name: [] for name in CLOSES_SCHEMA.names}
    for c in closes:
        ins = c.position.instrument
        columns["account_id"].append(c.account_id)
        columns["step"].append(c.step)
        columns["instrument"].append(str(ins.key))
        columns["underlying"].append(ins.underlying)
        columns["quantity_before"].append(c.position.quantity)
        columns["quantity_closed"].append(-c.position.quantity * c.fraction)
        columns["fraction"].append(c.fraction)
        columns["mark_price"].append(c.mark_price)
        columns["notional"].append(c.notional)
        columns["fee"].append(c.fee)
        columns["liquidator_fee"].append(params.liquidator_fee(c.fee))
        columns["insurance_fee"].append(params.insurance_fee(c.fee))
        columns["value_before"].append(c.value_before)
    return pa.table(columns, schema=CLOSES_SCHEMA)


def _accounts_table(outcomes: list[Outcome], params: PlanParams) -> pa.Table:
    columns: dict[str, list[Any]] = {name: [] for name in ACCOUNTS_SCHEMA.names}
    for o in outcomes:
        columns["account_id"].append(o.before.account_id)
        columns["status_before"].append(o.before.status)
        columns["status_after"].append(status_after(o, params))
        columns["equity_before"].append(o.before.equity)
        columns["equity_after"].append(o.equity_after)
        columns["collateral_maintenance_before"].append(o.before.collateral_maintenance)
        columns["collateral_maintenance_after"].append(o.collateral_maintenance_after)
        columns["maintenance_margin_before"].append(o.before.maintenance_margin)
        columns["maintenance_margin_after"].append(o.maintenance_margin_after)
        for name in ("fees", "closed_notional", "deficit", "covered_by_insurance", "bad_debt"):
            columns[name].append(getattr(o, name))
    return pa.table(columns, schema=ACCOUNTS_SCHEMA)


def _adl_table(queues: list[tuple[int, AdlEntry]]) -> pa.Table:
    columns: dict[str, list[Any]] = {name: [] for name in ADL_SCHEMA.names}
    for rank, e in queues:
        columns["underlying"].append(e.underlying)
        columns["rank"].append(rank)
        columns["account_id"].append(e.account_id)
        columns["delta"].append(e.delta)
        columns["profit_ratio"].append(e.profit_ratio)
        columns["leverage"].append(e.leverage)
        columns["score"].append(e.score)
    return pa.table(columns, schema=ADL_SCHEMA)


def liquidation_plan(
    book: Any,
    positions: Any,
    balances: Any,
    market: Any,
    *,
    model: Model = "standard",
    liquidation_fee: float = 0.01,
    liquidator_share: float = 0.5,
    buffer: float = 0.0,
    insurance_fund: float = 0.0,
    stress: Mapping[str, float] | None = None,
    threads: int | None = None,
) -> LiquidationPlan:
    """Liquidation plans for every liquidatable or bankrupt account (docs/liquidation.md §7), in
    the current market or under `stress` (as in `liquidation_scan`). Returns the engine's
    `LiquidationPlan`: `closes` (account-id order, then step), `accounts` (account-id order),
    `underlyings` (book order), `adl`, and the liquidator's fees, the insurance fund's fees and
    the fund after the deficits. `threads` is ignored."""
    del threads
    _check_model(model)
    params = PlanParams(float(liquidation_fee), float(liquidator_share), float(buffer), float(insurance_fund))
    _check_params(params)
    accounts = read_accounts(book, positions, balances, market)
    scenario = scenario_of(accounts, stress)
    rows = {
        a: accounts.row_in(scenario, a, model)
        for a in accounts.ids
    }
    liquidation = liquidate(accounts, rows, scenario, model, params)
    underlyings = scenario.book.underlyings
    return LiquidationPlan(
        closes=_closes_table(liquidation.closes, params),
        accounts=_accounts_table(liquidation.outcomes, params),
        underlyings=pa.table(
            {
                "underlying": underlyings,
                "closed_notional": [liquidation.closed_notional_by_underlying[u] for u in underlyings],
                "bad_debt": [liquidation.bad_debt_by_underlying[u] for u in underlyings],
            },
            schema=UNDERLYINGS_SCHEMA,
        ),
        adl=_adl_table(adl_queues(accounts, rows, scenario, liquidation)),
        liquidator_fees=liquidation.liquidator_fees,
        insurance_fees=liquidation.insurance_fees,
        insurance_fund_after=liquidation.insurance_fund_after,
    )
