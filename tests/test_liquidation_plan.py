"""Liquidation plans and cascades: properties on random and generated books."""

from __future__ import annotations

import math

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from conftest import engine_objects
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import books

import margin_engine as me
from margin_engine import synthetic
from margin_engine.cascade import cascade


def _check_plan(book, positions, balances, market, model, fee, share, buffer, fund):
    before = me.margin(book, positions, balances, market, model=model)
    plan = me.liquidation_plan(
        book, positions, balances, market, model=model, liquidation_fee=fee,
        liquidator_share=share, buffer=buffer, insurance_fund=fund,
    )
    below = set(before.filter(pc.or_(pc.less(before.column("collateral_maintenance"), before.column("maintenance_margin")),
                                     pc.less(before.column("equity"), 0.0))).column("account_id").to_pylist())
    touched = set(plan.accounts.column("account_id").to_pylist())
    assert touched == below  # every account below maintenance, and no other, is liquidated
    assert set(plan.closes.column("account_id").to_pylist()) <= below
    for r in plan.accounts.to_pylist():
        scale = abs(r["maintenance_margin_before"]) + abs(r["collateral_maintenance_before"]) + 1.0
        if r["status_after"] == "restored":
            assert r["collateral_maintenance_after"] >= (1 + buffer) * r["maintenance_margin_after"] - 1e-9 * scale
            assert r["equity_after"] >= 0
        if r["status_after"] == "bankrupt":
            assert r["equity_after"] < 0
        assert math.isclose(r["deficit"], max(0.0, -r["equity_after"]), abs_tol=1e-12)
        assert math.isclose(r["deficit"], r["covered_by_insurance"] + r["bad_debt"], rel_tol=1e-12, abs_tol=1e-9)
        assert r["fees"] >= 0
    closes = plan.closes
    if closes.num_rows:
        fees = pc.sum(closes.column("fee")).as_py()
        assert math.isclose(fees, plan.liquidator_fees + plan.insurance_fees, rel_tol=1e-12, abs_tol=1e-9)
        assert math.isclose(plan.liquidator_fees, pc.sum(closes.column("liquidator_fee")).as_py(), rel_tol=1e-12, abs_tol=1e-9)
        assert pc.all(pc.and_(pc.greater(closes.column("fraction"), 0.0), pc.less_equal(closes.column("fraction"), 1.0))).as_py()
    covered = pc.sum(plan.accounts.column("covered_by_insurance")).as_py() or 0.0
    assert math.isclose(fund + plan.insurance_fees - covered, plan.insurance_fund_after, rel_tol=1e-12, abs_tol=1e-6)
    bad = pc.sum(plan.accounts.column("bad_debt")).as_py() or 0.0
    assert math.isclose(bad, pc.sum(plan.underlyings.column("bad_debt")).as_py() or 0.0, rel_tol=1e-9, abs_tol=1e-6)
    return plan


@settings(max_examples=150)
@given(
    books(max_accounts=8),
    st.sampled_from(["standard", "portfolio"]),
    st.floats(0.0, 0.05),
    st.floats(0.0, 1.0),
    st.floats(0.0, 0.5),
    st.floats(0.0, 1e4),
)
def test_plan_properties_on_random_books(example, model, fee, share, buffer, fund):
    book, market = engine_objects(example)
    _check_plan(book, example["positions"], example["balances"], market, model, fee, share, buffer, fund)


@pytest.mark.parametrize("model", ["standard", "portfolio"])
def test_plan_properties_on_a_generated_book(model):
    g = synthetic.generate(5_000, seed=11)
    book = me.Book(g.instruments, g.assets, None, g.margin_tiers)
    market = me.Market(g.index_prices, g.marks, g.valuation_time)
    plan = _check_plan(book, g.positions, g.balances, market, model, 0.01, 0.5, 0.1, 1e5)
    assert plan.closes.num_rows > 0
    statuses = set(plan.accounts.column("status_after").to_pylist())
    assert "restored" in statuses and "bankrupt" in statuses
    # plans are the same whatever the thread count
    again = me.liquidation_plan(book, g.positions, g.balances, market, model=model, buffer=0.1, insurance_fund=1e5, threads=1)
    assert again.closes.equals(plan.closes) and again.accounts.equals(plan.accounts)


def test_cascade_moves_the_price_and_stops():
    g = synthetic.generate(5_000, seed=5)
    book = me.Book(g.instruments, g.assets, None, g.margin_tiers)
    market = me.Market(g.index_prices, g.marks, g.valuation_time)
    rounds = cascade(book, g.positions, g.balances, market, {"BTC": -0.15}, {"BTC": 5e8}, insurance_fund=1e6)
    btc = rounds.filter(pc.equal(rounds.column("underlying"), "BTC")).to_pylist()
    assert btc[0]["move"] == -0.15 and btc[0]["accounts_liquidated"] > 0
    moves = [r["move"] for r in btc]
    assert all(b <= a + 1e-12 for a, b in zip(moves, moves[1:]))  # liquidating longs pushes the price down
    assert len(btc) < 20
    with pytest.raises(me.MarginInputError):
        cascade(book, g.positions, g.balances, market, {"BTC": -0.1}, {"BTC": -1.0})
