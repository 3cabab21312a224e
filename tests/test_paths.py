"""The engine's path pass (`_core.stressed_paths`, what `me.forecast_margin` margins its paths
with): every account under every (path, day) scenario in one pass. Its totals are those of one
`liquidation_scan(stress=)` per scenario, against the reference twin on hypothesis books under
both models and against the engine's own scans on the generated book; the same numbers on any
thread count; bad arguments named."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
from conftest import engine_objects
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import reference_objects
from test_liquidation import near_books

import margin_engine as me
from margin_engine import _core, reference, synthetic
from margin_engine.calibration.forecast import _margin_along

TOTALS = ("margin_call", "liquidatable", "bankrupt", "shortfall", "call_amount")


def _engine(book: Any, positions: Any, balances: Any, market: Any, names: list[str], moves: np.ndarray, days: int, model: str, threads: int | None = None, paths_per_block: int | None = None):
    return _margin_along(book, positions, balances, market, model, threads, names, moves, days, paths_per_block)


def _size(example: dict[str, Any]) -> float:
    """A scale for the rounding of a sum over the book: gross cash and position notional."""
    gross = sum(abs(a) for a in example["balances"].column("amount").to_pylist())
    for q in example["positions"].column("quantity").to_pylist():
        gross += abs(q)
    return max(gross, 1.0)


@pytest.mark.parametrize("model", ["standard", "portfolio"])
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_path_totals_match_the_reference_twin(model, data):
    example = data.draw(near_books(model=model))
    book, market = engine_objects(example)
    rbook, rmarket = reference_objects(example)
    names = list(book.underlyings)
    paths, days = data.draw(st.integers(1, 3)), data.draw(st.integers(1, 3))
    moves = np.array(
        data.draw(st.lists(st.lists(st.floats(-0.6, 1.5), min_size=len(names), max_size=len(names)), min_size=paths * days, max_size=paths * days))
    ).reshape(paths * days, len(names))
    totals, accounts = _engine(book, example["positions"], example["balances"], market, names, moves, days, model)
    want, want_accounts = reference.stressed_paths(rbook, example["positions"], example["balances"], rmarket, names, moves.tolist(), days, model=model)
    tol = 1e-9 * _size(example) * 1e3  # prices up to ~1e3 in the strategies
    for s, w in enumerate(want):
        for k in ("margin_call", "liquidatable", "bankrupt"):
            assert totals[k][s] == w[k], (s, k, totals[k][s], w)
        for k in ("shortfall", "call_amount"):
            assert math.isclose(totals[k][s], w[k], rel_tol=1e-9, abs_tol=tol), (s, k, totals[k][s], w)
    assert sorted(want_accounts) == accounts["account_id"].tolist()
    for i, a in enumerate(accounts["account_id"].tolist()):
        w = want_accounts[a]
        assert (accounts["liquidatable_last"][i], accounts["liquidatable_any"][i]) == (w["liquidatable_last"], w["liquidatable_any"])
        assert math.isclose(accounts["shortfall"][i], w["shortfall"], rel_tol=1e-9, abs_tol=tol)


def _generated(n: int = 2_000, methodology: str = "v1"):
    b = synthetic.generate(n, seed=11)
    book = me.Book(b.instruments, b.assets, None, b.margin_tiers, methodology=methodology)
    market = me.Market(b.index_prices, b.marks, b.valuation_time_ns)
    return book, b.positions, b.balances, market


@pytest.mark.parametrize("model", ["standard", "portfolio"])
def test_path_totals_are_the_engines_own_scans(model):
    """Per scenario, the engine's stressed scan summed: counts exact, sums to 1e-12 (a different
    order of addition)."""
    book, positions, balances, market = _generated()
    names = list(book.underlyings)
    rng = np.random.default_rng(3)
    days = 3
    moves = rng.normal(0.0, 0.08, (2 * days, len(names)))
    totals, accounts = _engine(book, positions, balances, market, names, moves, days, model)
    liq = {}
    for s in range(moves.shape[0]):
        scan = me.liquidation_scan(book, positions, balances, market, model=model, stress=dict(zip(names, moves[s].tolist()))).sort_by("account_id")
        status = np.array(scan.column("status").to_pylist())
        liquidated = np.isin(status, ["liquidatable", "bankrupt"])
        assert totals["margin_call"][s] == (status == "margin_call").sum()
        assert totals["liquidatable"][s] == liquidated.sum()
        assert totals["bankrupt"][s] == (status == "bankrupt").sum()
        assert totals["shortfall"][s] == pytest.approx(scan.column("shortfall").to_numpy().sum(), rel=1e-12)
        gap = scan.column("initial_margin").to_numpy() - scan.column("collateral_initial").to_numpy()
        assert totals["call_amount"][s] == pytest.approx(np.maximum(gap, 0.0).sum(), rel=1e-12)
        liq[s] = liquidated
        assert np.array_equal(accounts["account_id"], scan.column("account_id").to_numpy())
    last = liq[days - 1].astype(int) + liq[2 * days - 1].astype(int)
    any_ = (liq[0] | liq[1] | liq[2]).astype(int) + (liq[3] | liq[4] | liq[5]).astype(int)
    assert np.array_equal(accounts["liquidatable_last"], last)
    assert np.array_equal(accounts["liquidatable_any"], any_)
    assert 0 < last.sum()  # the moves do liquidate some accounts


@pytest.mark.parametrize("model", ["standard", "portfolio"])
def test_path_totals_are_the_same_on_any_thread_count(model):
    book, positions, balances, market = _generated(3_000)
    names = list(book.underlyings)
    moves = np.random.default_rng(5).normal(0.0, 0.1, (4, len(names)))
    one = _engine(book, positions, balances, market, names, moves, 2, model, threads=1)
    two = _engine(book, positions, balances, market, names, moves, 2, model, threads=2)
    for a, b in zip(one, two, strict=True):
        for k in a:
            assert np.array_equal(a[k], b[k]), k  # bit for bit, floats included


@pytest.mark.parametrize(("model", "methodology"), [("standard", "v1"), ("portfolio", "v1"), ("portfolio", "exchange")])
def test_path_totals_do_not_depend_on_the_block_size(model, methodology):
    """The engine sizes its blocks of paths by the moved markets' bytes: one path a block, a few,
    all of them, or its own choice give the same numbers to the bit."""
    book, positions, balances, market = _generated(1_500, methodology)
    names = list(book.underlyings)
    days = 2
    moves = np.random.default_rng(8).normal(0.0, 0.1, (5 * days, len(names)))
    runs = [_engine(book, positions, balances, market, names, moves, days, model, paths_per_block=b) for b in (None, 1, 2, 5, 64)]
    for other in runs[1:]:
        for a, b in zip(runs[0], other, strict=True):
            for k in a:
                assert np.array_equal(a[k], b[k]), k
    assert runs[0][0]["liquidatable"].sum() > 0  # the moves do liquidate some accounts


def test_path_pass_names_bad_arguments():
    book, positions, balances, market = _generated(50)
    core = (book._core, market._core, pa.table(positions), pa.table(balances))
    with pytest.raises(me.MarginInputError, match="days"):
        _core.stressed_paths(*core, ["BTC"], [[0.1], [0.2], [0.3]], 2)
    with pytest.raises(me.MarginInputError, match="NOPE"):
        _core.stressed_paths(*core, ["NOPE"], [[0.1]], 1)
    with pytest.raises(me.MarginInputError, match="moves"):
        _core.stressed_paths(*core, ["BTC", "ETH"], [[0.1]], 1)
    with pytest.raises(me.MarginInputError):
        _core.stressed_paths(*core, ["BTC"], [[-1.5]], 1)
