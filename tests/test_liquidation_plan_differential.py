"""Liquidation plans (docs/liquidation.md §7): the Rust engine against
`margin_engine.reference.plan`, on random books under both models, with and without stress, with
random fee, liquidator share, buffer and insurance fund.

Comparison: the four tables with the same schema, the same rows in the same order; ids, steps,
instruments and statuses exactly; floats to 1e-9 (relative, 1e-9 absolute); and the three totals
(liquidator fees, insurance fees, insurance fund after) likewise. Two rounding ties, and only
those, are allowed for when the plans differ, each checked before it is accepted (see
`assert_engine_matches_reference`): positions with tied scores closed in another order, and
accounts at the maintenance boundary.
"""

from __future__ import annotations

import math
from typing import Any
from unittest import mock

import pyarrow as pa
import pytest
from conftest import ABS, REL, assert_tables_close, close, engine_objects, record_event
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import book_underlyings, books, log_uniform, reference_objects, with_topups

import margin_engine as me
from margin_engine import reference, synthetic
from margin_engine.reference import liquidation as ref_liq
from margin_engine.reference import plan as ref_plan
from margin_engine.reference.valuation import NettedPosition, notional

MODELS = ["standard", "portfolio"]
TABLES = ("closes", "accounts", "underlyings", "adl")
TOTALS = ("liquidator_fees", "insurance_fees", "insurance_fund_after")


# --------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------


@st.composite
def plan_books(draw: Any, model: str) -> dict[str, Any]:
    """A `books()` example in which most accounts with margin are topped up (or drawn down) to a
    maintenance collateral of `MM × (1 + f)`, f in [−0.9, 0.3]: a little below maintenance, so
    that plans stop part-way and close the last position partially; a few are left as drawn
    (mostly deep under water: bankrupt, insurance fund and bad debt)."""
    example = draw(books(max_accounts=8))
    if draw(st.integers(0, 4)) == 0:
        return example
    book, market = reference_objects(example)
    rows = reference.margin(book, example["positions"], example["balances"], market, model=model).to_pylist()
    topups = []
    for r in rows:
        if r["maintenance_margin"] > 0.0 and draw(st.integers(0, 4)) != 0:
            target = r["maintenance_margin"] * (1.0 + draw(st.floats(-0.9, 0.3)))
            topups.append((r["account_id"], target - r["collateral_maintenance"]))
    return with_topups(example, topups) if topups else example


@st.composite
def plan_cases(draw: Any, model: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A `plan_books` example and the keyword arguments of a plan: fee, share, buffer, fund,
    and (half the time) a stress of some of the book's underlyings."""
    example = draw(plan_books(model))
    kwargs: dict[str, Any] = {
        "model": model,
        "liquidation_fee": draw(st.one_of(st.just(0.0), st.floats(0.0, 0.05), st.floats(0.0, 0.5))),
        "liquidator_share": draw(st.one_of(st.sampled_from([0.0, 0.5, 1.0]), st.floats(0.0, 1.0))),
        "buffer": draw(st.one_of(st.just(0.0), st.floats(0.0, 0.5))),
        "insurance_fund": draw(st.one_of(st.just(0.0), log_uniform(1e-3, 1e7))),
    }
    if draw(st.booleans()):
        names = draw(st.lists(st.sampled_from(book_underlyings(example)), unique=True))
        kwargs["stress"] = {u: draw(st.one_of(st.just(0.0), st.floats(-0.6, 0.6))) for u in names}
    return example, kwargs


# --------------------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------------------


def account_sizes(plan: me.LiquidationPlan) -> dict[int, float]:
    """Each account's size: its largest close (value or notional), equity or margin."""
    size: dict[int, float] = {}
    for r in plan.closes.to_pylist():
        size[r["account_id"]] = max(size.get(r["account_id"], 0.0), abs(r["notional"]), abs(r["value_before"]))
    for r in plan.accounts.to_pylist():
        size[r["account_id"]] = max(size.get(r["account_id"], 0.0), abs(r["equity_before"]),
                                    abs(r["maintenance_margin_before"]), abs(r["collateral_maintenance_before"]))
    return size


def plan_scales(plan: me.LiquidationPlan, table: str) -> dict[str, list[float]]:
    """A partial close's fraction is bisected on `collateral ≥ target` of the whole account: where
    the two sides agree to rounding (1e-16 of the account's size) the fraction can differ by that
    rounding over the slope (an account of 6e8 closing a position of 600 to gain 36: its fraction
    is known to 1e-6 at best). So what a close moves is compared to 1e-9 of the account's size
    (its largest close value or notional, its equity and margin), the fraction and the closed
    quantity to 1e-9 of that size over the position's whole notional, and the per-underlying sums
    and plan totals to 1e-9 of the largest account in the plan."""
    size = account_sizes(plan)
    rows = getattr(plan, table).to_pylist()
    if table == "closes":
        amounts = [size[r["account_id"]] for r in rows]
        # the fraction's rounding is the account's size over the position's (whole) notional
        share = [max(1.0, size[r["account_id"]] * r["fraction"] / r["notional"]) if r["notional"] > 0.0 and r["fraction"] > 0.0
                 else 1.0 for r in rows]
        return {"fraction": share, "quantity_closed": [abs(r["quantity_before"]) * k for r, k in zip(rows, share)],
                **{c: amounts for c in ("notional", "fee", "liquidator_fee", "insurance_fee")}}
    if table == "accounts":
        amounts = [size[r["account_id"]] for r in rows]
        return {c: amounts for c in ("equity_after", "collateral_maintenance_after", "maintenance_margin_after", "fees",
                                     "closed_notional", "deficit", "covered_by_insurance", "bad_debt")}
    largest = max(size.values(), default=0.0)
    return {c: [largest] * len(rows) for c in getattr(plan, table).column_names}


def assert_plans_match(got: me.LiquidationPlan, want: me.LiquidationPlan) -> None:
    """Every table column by column (`assert_tables_close`, after an exact schema check) and the
    three totals."""
    for name in TABLES:
        g, w = getattr(got, name), getattr(want, name)
        assert g.schema == w.schema, (name, g.schema, w.schema)
        try:
            assert_tables_close(g, w, plan_scales(want, name))
        except AssertionError as e:
            raise AssertionError(f"plan.{name}: {e}") from e
    largest = max(account_sizes(want).values(), default=0.0)
    for name in TOTALS:
        assert close(getattr(got, name), getattr(want, name), abs_=max(ABS, REL * largest)), (name, getattr(got, name), getattr(want, name))


def _args(example: dict[str, Any]) -> tuple[Any, ...]:
    book, market = engine_objects(example)
    return book, example["positions"], example["balances"], market


def boundary_accounts(example: dict[str, Any], kwargs: dict[str, Any]) -> set[int]:
    """The accounts whose maintenance collateral equals their MM to rounding, in the engine's or
    the reference's market (`|collateral − MM| ≤ 1e-12 × (|collateral| + MM)`, equity ≥ 0).

    Whether such an account is below maintenance is decided by the last bits of the portfolio
    model's Black-76 (`erfc`), which the two implementations compute a few ulps apart
    (docs/methodology-notes.md, "Points the spec should settle", 6; `plan_books` also tops
    accounts up to exactly MM when it draws f = 0). And when it is planned with `buffer = 0`, the
    fraction to close makes up a gap of rounding size: any fraction from 0 up can be the smallest
    sufficient one. So one implementation may liquidate it and the other not, or both with
    different fractions, and everything downstream (fees paid in, the fund) moves with it."""
    market_kwargs = {k: kwargs.get(k) for k in ("model", "stress")}
    tied = set()
    for impl in (me, reference):
        for r in impl.liquidation_scan(*_args(example), **market_kwargs).to_pylist():
            gap = abs(r["collateral_maintenance"] - r["maintenance_margin"])
            if r["equity"] >= 0.0 and gap <= 1e-12 * (abs(r["collateral_maintenance"]) + r["maintenance_margin"]):
                tied.add(r["account_id"])
    return tied


def without_accounts(example: dict[str, Any], accounts: set[int]) -> dict[str, Any]:
    """`example` with the positions and balances of `accounts` removed."""
    out = dict(example)
    for name in ("positions", "balances"):
        table = example[name]
        keep = [a not in accounts for a in table.column("account_id").to_pylist()]
        out[name] = table.filter(pa.array(keep, pa.bool_()))
    return out


SCORE_NOISE = 1e-14
"""Rounding noise allowed in a position's score, relative to the account's gross size over the
position's notional (see `engine_orders`)."""


def _gross(position: NettedPosition, scenario: ref_liq.Scenario) -> float:
    """`|q| × multiplier × max(mark, index price, strike)`: a bound on the values the position's
    margin adds up, in any scenario of the portfolio model."""
    ins = position.instrument
    sizes = [scenario.market.marks[ins.id].mark_price, scenario.market.index_prices.get(ins.underlying, 0.0)]
    return abs(position.quantity) * ins.multiplier * max(*sizes, ins.strike or 0.0)


def engine_orders(example: dict[str, Any], kwargs: dict[str, Any], got: me.LiquidationPlan) -> dict[Any, list[int]]:
    """The engine's closing order of every account whose closes follow another order than the
    reference's ranking, keyed by the account's positions (the ranking depends on nothing else):
    the positions the engine closed, in its steps, then the rest in the reference's order.

    Each such order is first checked to be one the reference's scores allow up to rounding:
    wherever it puts a position before one the reference ranks higher, the two scores agree to
    `SCORE_NOISE × gross / notional` (each). Scores tie exactly more often than not (in the
    portfolio model every lone perpetual scores its underlying's price range R; linear contracts
    of one underlying on the same side score the same), so the order between them is decided by
    the last bits of `full MM − MM without it`, which the two implementations compute a few ulps
    apart wherever Black-76 (`erfc`) enters the margin: the portfolio model's option risk arrays,
    and option marks under stress in either model."""
    book, market = reference_objects(example)
    accounts = ref_liq.read_accounts(book, example["positions"], example["balances"], market)
    scenario = ref_liq.scenario_of(accounts, kwargs.get("stress"))
    closed: dict[int, list[str]] = {}
    for c in got.closes.to_pylist():
        closed.setdefault(c["account_id"], []).append(c["instrument"])
    orders: dict[Any, list[int]] = {}
    for account, instruments in closed.items():
        positions = ref_liq.positions_in(scenario, accounts.positions.get(account, []))
        marks = [scenario.market.marks[p.instrument.id].mark_price for p in positions]
        notionals = [notional(p, m) for p, m in zip(positions, marks, strict=True)]
        ranked = ref_plan.closing_order(positions, notionals, scenario, kwargs["model"])
        index = {str(p.instrument.key): i for i, p in enumerate(positions)}
        prefix = [index[k] for k in instruments]
        if prefix == ranked[: len(prefix)]:
            continue
        order = prefix + [i for i in ranked if i not in prefix]
        freed = ref_plan.margin_freed(positions, scenario, kwargs["model"])
        scores = [ref_plan.score(f, n) for f, n in zip(freed, notionals, strict=True)]
        gross = sum(_gross(p, scenario) for p in positions)
        # a score's rounding noise; without notional, the score is +inf or 0 by the sign of `freed`
        noise = [
            SCORE_NOISE * gross / n if n > 0.0 else (math.inf if abs(f) <= SCORE_NOISE * gross else 0.0)
            for f, n in zip(freed, notionals, strict=True)
        ]
        rank = {i: r for r, i in enumerate(ranked)}
        for a, i in enumerate(prefix):
            for j in order[a + 1 :]:
                if rank[j] < rank[i] and scores[i] != scores[j]:
                    assert abs(scores[i] - scores[j]) <= noise[i] + noise[j], (
                        f"account {account}: the engine closes {positions[i].instrument.key} "
                        f"(score {scores[i]!r}) before {positions[j].instrument.key} (score {scores[j]!r})"
                    )
        orders[tuple((p.instrument.id, p.quantity) for p in positions)] = order
    return orders


def reference_plan(example: dict[str, Any], kwargs: dict[str, Any], orders: dict[Any, list[int]]) -> me.LiquidationPlan:
    """The reference's plan, with the closing orders of `orders` (from `engine_orders`) in place
    of its own for those accounts."""
    ranking = ref_plan.closing_order

    def closing_order(positions: list[NettedPosition], *args: Any) -> list[int]:
        order = orders.get(tuple((p.instrument.id, p.quantity) for p in positions))
        return ranking(positions, *args) if order is None else order

    with mock.patch.object(ref_plan, "closing_order", closing_order):
        return reference.liquidation_plan(*_args(example), **kwargs)


def assert_engine_matches_reference(example: dict[str, Any], kwargs: dict[str, Any]) -> me.LiquidationPlan:
    """The engine's plan equals the reference's (`assert_plans_match`); returns it.

    When they differ, two rounding ties (and only those) are allowed for, each checked first:
    1. positions whose scores tie to rounding, closed in another order (`engine_orders`): the
       reference is run again with the engine's order for those accounts;
    2. accounts at the maintenance boundary (`boundary_accounts`): taken out of the book.
    After that the plans must be equal: every other account, every fee, the fund, bad debt and
    ADL."""
    got = me.liquidation_plan(*_args(example), **kwargs)
    try:
        assert_plans_match(got, reference.liquidation_plan(*_args(example), **kwargs))
        return got
    except AssertionError as e:
        error = e
    orders = engine_orders(example, kwargs, got)
    if orders:
        record_event("plan: positions with tied scores closed in the engine's order")
        try:
            assert_plans_match(got, reference_plan(example, kwargs, orders))
            return got
        except AssertionError as e:
            error = e
    tied = boundary_accounts(example, kwargs)
    if not tied:
        raise error
    record_event("plan: accounts at the maintenance boundary taken out")
    example = without_accounts(example, tied)
    got = me.liquidation_plan(*_args(example), **kwargs)
    assert_plans_match(got, reference_plan(example, kwargs, engine_orders(example, kwargs, got)))
    return got


# --------------------------------------------------------------------------------------------
# Tests
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
@settings(max_examples=150)
@given(data=st.data())
def test_plan_matches_reference(model, data):
    example, kwargs = data.draw(plan_cases(model))
    plan = assert_engine_matches_reference(example, kwargs)
    if plan.closes.num_rows and min(plan.closes.column("fraction").to_pylist()) < 1.0:
        record_event("plan: partial close")
    if plan.adl.num_rows:
        record_event("plan: ADL queue")


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("stress", [None, {"BTC": -0.15, "ETH": 0.1}], ids=["current", "stressed"])
def test_plan_matches_reference_on_a_generated_book(model, stress):
    g = synthetic.generate(2_000, seed=3)
    example = {
        "instruments": g.instruments,
        "assets": g.assets,
        "risk_params": None,
        "margin_tiers": g.margin_tiers,
        "positions": g.positions,
        "balances": g.balances,
        "index_prices": g.index_prices,
        "marks": g.marks,
        "valuation_time_ns": me.Market(g.index_prices, g.marks, g.valuation_time).valuation_time_ns,
    }
    kwargs = {"model": model, "buffer": 0.1, "insurance_fund": 1e3, "stress": stress}
    plan = assert_engine_matches_reference(example, kwargs)
    assert plan.closes.num_rows > 0 and plan.adl.num_rows > 0
    assert set(plan.accounts.column("status_after").to_pylist()) >= {"restored", "bankrupt"}
