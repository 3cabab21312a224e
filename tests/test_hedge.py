"""The minimum-margin hedge: exact under the portfolio model, checked against brute force.

For random books, every suggested hedge is re-checked by actually adding it to the account's
positions: the engine's and the reference's margin of the hedged account equals ``margin_after``,
and no quantity on a fine grid around it (nor 0, nor the delta-neutral quantity) does better."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from conftest import engine_objects
from hypothesis import given, settings
from strategies import books

import margin_engine as me
from margin_engine import reference


def _linear_instruments(example):
    t = example["instruments"]
    keys = t.column("instrument").to_pylist()
    kinds = t.column("kind").to_pylist()
    return [k for k, kind in zip(keys, kinds) if kind != "option"]


def _account_margin(book, market, example, account, extra, model="portfolio", objective="maintenance", ref=False):
    """Margin of one account with extra (instrument, quantity) rows added (rows rebuilt from
    Python values, instrument keys typed like the instruments table)."""
    key_type = example["instruments"].schema.field("instrument").type
    key_type = pa.int64() if pa.types.is_integer(key_type) else pa.utf8()
    rows = [r for r in pa.table(example["positions"]).to_pylist() if r["account_id"] == account]
    rows += [{"account_id": account, "instrument": k, "quantity": q, "entry_price": 0.0} for k, q in extra]
    own = pa.table(
        {
            "account_id": pa.array([r["account_id"] for r in rows], pa.uint64()),
            "instrument": pa.array([r["instrument"] for r in rows], key_type),
            "quantity": pa.array([r["quantity"] for r in rows], pa.float64()),
        }
    )
    balances = [r for r in pa.table(example["balances"]).to_pylist() if r["account_id"] == account]
    bal = pa.table(
        {
            "account_id": pa.array([r["account_id"] for r in balances], pa.uint64()),
            "asset": pa.array([r["asset"] for r in balances], pa.utf8()),
            "amount": pa.array([r["amount"] for r in balances], pa.float64()),
        }
    )
    fn = reference.margin if ref else me.margin
    out = fn(book, own, bal, market, model=model)
    column = "maintenance_margin" if objective == "maintenance" else "initial_margin"
    return out.column(column).to_pylist()[0]


def _gross(example, account, extra=()) -> float:
    """Scale of the account's scenario P&L terms (Σ |q| × multiplier × (S + mark)): sums of terms
    this large cancel to the hedged margin, so agreement is judged relative to it."""
    ins = {str(r["instrument"]): r for r in example["instruments"].to_pylist()}
    spot = dict(zip(example["index_prices"].column("underlying").to_pylist(), example["index_prices"].column("index_price").to_pylist()))
    mark = {str(k): v for k, v in zip(example["marks"].column("instrument").to_pylist(), example["marks"].column("mark_price").to_pylist())}
    total = 0.0
    rows = [r for r in pa.table(example["positions"]).to_pylist() if r["account_id"] == account]
    rows += [{"instrument": k, "quantity": q} for k, q in extra]
    for r in rows:
        if True:
            i = ins[str(r["instrument"])]
            total += abs(r["quantity"]) * i["multiplier"] * (spot[i["underlying"]] + mark[str(r["instrument"])])
    return total


@settings(max_examples=200)
@given(books(max_accounts=5))
def test_optimal_hedge_is_exact_and_never_beaten_by_a_grid(example):
    hedges = _linear_instruments(example)
    if not hedges:
        return
    book, market = engine_objects(example)
    for objective in ("maintenance", "initial"):
        result = me.optimal_hedge(book, example["positions"], example["balances"], market, hedges, objective=objective)
        for row in result.to_pylist()[:4]:
            account, x = row["account_id"], row["quantity"]
            key = row["hedge_instrument"]
            key = int(key) if pa.types.is_integer(example["instruments"].schema.field("instrument").type) else key
            after = row["margin_after"]
            tol = 1e-9 * (_gross(example, account, [(key, x)]) + abs(row["margin_before"])) + 1e-7
            assert after <= row["margin_before"] + tol
            hedged = _account_margin(book, market, example, account, [(key, x)] if x else [], objective=objective)
            assert abs(hedged - after) <= tol, (hedged, after, tol)
            # the reference agrees on the hedged account
            hedged_ref = _account_margin(book, market, example, account, [(key, x)] if x else [], objective=objective, ref=True)
            assert abs(hedged_ref - after) <= tol, (hedged_ref, after, tol)
            # brute force: a fine grid around the optimum, 0, and the delta-neutral trade
            scale = max(abs(x), abs(row["delta_neutral_quantity"]), 1e-3)
            grid = list(np.linspace(x - 2 * scale, x + 2 * scale, 41)) + [0.0, row["delta_neutral_quantity"]]
            for q in grid:
                m = _account_margin(book, market, example, account, [(key, float(q))] if q else [], objective=objective)
                assert m >= after - tol, (q, m, x, after, tol)


def test_short_put_hedge_by_hand():
    """The hand-worked ETH book (docs/portfolio-margin-examples.md): one short 1500 put at expiry,
    S = 2000, R = 10%, 5 steps. With x perpetuals (mult 0.01, mark 2010) the ETH margin is
    max(20 short-minimum, 2.01|x| scan, 0.33 (100 + 6.03 x) extreme down, 0.33 (−6.03 x) extreme up):
    33 at x = 0, and 20 on the flat piece x ∈ [−9.95, −6.533]; the smallest trade is
    x* = (20 / 0.33 − 100) / 6.03."""
    from test_hand_worked import _assets, _instruments, _market_tables, _risk_params, VALUATION

    book = me.Book(_instruments(), _assets(), _risk_params())
    index_prices, marks = _market_tables()
    market = me.Market(index_prices, marks, VALUATION)
    positions = pa.table({"account_id": pa.array([4], pa.uint64()), "instrument": ["ETH-28MAR25-1500-P"], "quantity": [-1.0]})
    balances = pa.table({"account_id": pa.array([4], pa.uint64()), "asset": ["USD"], "amount": [1_000.0]})
    out = me.optimal_hedge(book, positions, balances, market, ["ETH-PERP"]).to_pylist()[0]
    assert math.isclose(out["margin_before"], 33.0, rel_tol=1e-12)
    assert math.isclose(out["margin_after"], 20.0, rel_tol=1e-12)
    assert math.isclose(out["quantity"], (20 / 0.33 - 100) / 6.03, rel_tol=1e-9)
    # delta-neutral for an expired OTM put is 0 contracts: here the two suggestions differ
    assert out["delta_neutral_quantity"] == 0.0


def test_hedge_arguments_are_checked():
    example_instruments = pa.table(
        {
            "instrument": ["P", "C"],
            "kind": ["perpetual", "option"],
            "underlying": ["X", "X"],
            "multiplier": [1.0, 1.0],
            "expiry": pa.array([None, 2_000_000_000_000_000_000], pa.timestamp("ns", "UTC")),
            "strike": [None, 100.0],
            "option_type": [None, "call"],
            "initial_margin_rate": [0.1, 0.15],
            "maintenance_margin_rate": [0.05, 0.075],
            "initial_margin_floor": [None, 0.1],
        }
    )
    assets = pa.table(
        {
            "asset": ["USD"],
            "price": [1.0],
            "initial_weight": [1.0],
            "maintenance_weight": [1.0],
            "initial_liability_weight": [1.0],
            "maintenance_liability_weight": [1.0],
        }
    )
    book = me.Book(example_instruments, assets)
    market = me.Market(
        pa.table({"underlying": ["X"], "index_price": [100.0]}),
        pa.table({"instrument": ["P", "C"], "mark_price": [100.0, 5.0], "implied_vol": [None, 0.5]}),
        1_900_000_000_000_000_000,
    )
    positions = pa.table({"account_id": pa.array([1], pa.uint64()), "instrument": ["C"], "quantity": [-1.0]})
    balances = pa.table({"account_id": pa.array([1], pa.uint64()), "asset": ["USD"], "amount": [100.0]})
    for bad, column in ((["Z"], "instrument"), (["C"], "instrument"), (["P", "P"], "instrument")):
        with pytest.raises(me.MarginInputError) as e:
            me.optimal_hedge(book, positions, balances, market, bad)
        assert e.value.table == "hedge_instruments" and e.value.column == column
    with pytest.raises(me.MarginInputError):
        me.optimal_hedge(book, positions, balances, market, ["P"], objective="nope")
    # standard model: close the existing hedge position
    positions = pa.table({"account_id": pa.array([1, 1], pa.uint64()), "instrument": ["C", "P"], "quantity": [-1.0, 3.0]})
    out = me.optimal_hedge(book, positions, balances, market, ["P"], model="standard").to_pylist()[0]
    assert out["quantity"] == -3.0
    assert math.isclose(out["margin_before"] - out["margin_after"], 3 * 100.0 * 0.05)
