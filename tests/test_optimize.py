"""Collateral allocation and rebalancing (margin_engine.optimize, docs/optimization.md).

allocate_collateral: the LP's smallest health is checked against brute force over a grid of
splits (two-sided: not below the best grid point, not above it by more than the grid's
Lipschitz bound), the allocation is feasible, and the second stage keeps low-haircut assets free.
rebalance: every plan lifts every account to the target, moves exactly the deficits, never takes
a donor below target, respects its transfer bounds, and the exact method is never worse."""

from __future__ import annotations

import itertools
import math
import sys

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import margin_engine as me
from margin_engine.optimize import allocate_collateral, rebalance  # scipy is imported lazily

pytest.importorskip("scipy")

TOL = 1e-6  # HiGHS works to ~1e-7 on health-scaled rows


def _pool(amount, price, weight):
    return {
        "asset": [f"A{j}" for j in range(len(amount))],
        "amount": list(map(float, amount)),
        "price": list(map(float, price)),
        "weight": list(map(float, weight)),
    }


def _req(mm, existing):
    return {
        "account_id": list(range(len(mm))),
        "maintenance_margin": list(map(float, mm)),
        "collateral": list(map(float, existing)),
    }


def _amounts(result, n, m):
    x = np.zeros((n, m))
    a = result.allocation.to_pydict()
    for acc, asset, amt in zip(a["account_id"], a["asset"], a["amount"]):
        x[acc, int(asset[1:])] += amt
    return x


def _check_feasible(result, amount, price, weight, mm, existing):
    n, m = len(mm), len(amount)
    x = _amounts(result, n, m)
    assert (x >= 0).all()
    assert (x.sum(axis=0) <= np.asarray(amount)).all()  # exactly: round-off is shrunk away
    health = (np.asarray(existing) + x @ (np.asarray(price) * np.asarray(weight))) / np.asarray(mm)
    got = np.asarray(result.accounts.column("health_after").to_pylist())
    np.testing.assert_allclose(got, health, rtol=1e-12, atol=1e-12)
    assert result.min_health_after == pytest.approx(health.min(), rel=1e-12, abs=1e-12)
    return x, health


def _brute_force(amount, price, weight, mm, existing, steps):
    """Best smallest health over a grid of the fraction of each asset given to account 0 (the
    rest to account 1: posting everything never hurts the smallest health)."""
    v = np.asarray(amount) * np.asarray(price) * np.asarray(weight)
    grid = np.linspace(0.0, 1.0, steps + 1)
    fr = np.stack(np.meshgrid(*([grid] * len(v)), indexing="ij"), axis=-1).reshape(-1, len(v))
    h0 = (existing[0] + fr @ v) / mm[0]
    h1 = (existing[1] + (1 - fr) @ v) / mm[1]
    best = float(np.max(np.minimum(h0, h1)))
    lipschitz = float(v.sum() / min(mm)) * (0.5 / steps)  # nearest grid point is this close
    return best, lipschitz


@settings(max_examples=60)
@given(
    st.lists(st.floats(0.0, 100.0), min_size=2, max_size=2),
    st.lists(st.floats(0.01, 50.0), min_size=2, max_size=2),
    st.lists(st.floats(0.0, 1.0), min_size=2, max_size=2),
    st.lists(st.floats(1.0, 500.0), min_size=2, max_size=2),
    st.lists(st.floats(-100.0, 500.0), min_size=2, max_size=2),
)
def test_two_by_two_matches_brute_force(amount, price, weight, mm, existing):
    r = allocate_collateral(_pool(amount, price, weight), _req(mm, existing))
    best, lip = _brute_force(amount, price, weight, mm, existing, 400)
    scale = max(1.0, abs(best))
    # optimal to the LP solver's tolerance (a pool worth 1e-15 gave health 0 against 1.9e-9)
    assert r.max_min_health >= best - TOL * scale
    assert r.max_min_health <= best + lip + TOL * scale
    _, health = _check_feasible(r, amount, price, weight, mm, existing)
    assert health.min() >= r.max_min_health - TOL * scale  # achievable


@pytest.mark.parametrize("seed", range(5))
def test_two_accounts_three_assets_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    amount, price, weight = rng.uniform(1, 100, 3), rng.uniform(0.5, 20, 3), rng.uniform(0.3, 1, 3)
    mm, existing = rng.uniform(50, 500, 2), rng.uniform(-50, 300, 2)
    r = allocate_collateral(_pool(amount, price, weight), _req(mm, existing))
    best, lip = _brute_force(amount, price, weight, mm, existing, 60)
    assert best - 1e-9 <= r.max_min_health <= best + lip + 1e-9
    _, health = _check_feasible(r, amount, price, weight, mm, existing)
    assert health.min() >= r.max_min_health - TOL * max(1.0, r.max_min_health)


def test_hand_worked_example():
    # a: MM 1000, has 500; b: MM 2000, has 3000; pool: 1000 USD (w 1), 2000 ALT (w 0.5).
    # Everything posted: total weighted 500 + 3000 + 1000 + 1000 = 5500 over MM 3000 → t* ≤ 11/6,
    # reached by giving a 1333.33 and b 666.67 of weighted value.
    pool = {"asset": ["USD", "ALT"], "amount": [1000.0, 2000.0], "price": [1.0, 1.0], "weight": [1.0, 0.5]}
    r = allocate_collateral(
        pool, {"account_id": ["a", "b"], "maintenance_margin": [1000.0, 2000.0], "collateral": [500.0, 3000.0]}
    )
    assert r.max_min_health == pytest.approx(11 / 6, rel=1e-9)
    assert r.min_health_before == pytest.approx(0.5)
    assert r.status == "optimal"
    acc = r.accounts.to_pydict()
    assert acc["health_after"] == pytest.approx([11 / 6, 11 / 6], rel=1e-6)
    assert r.free.column("free").to_pylist() == pytest.approx([0.0, 0.0], abs=1e-3)


def test_second_stage_posts_high_haircut_assets_first_and_only_what_is_needed():
    # One account needs 100 of weighted value beyond what it has; the pool could give 1000 of
    # either. Max-min health is unbounded by need (t* = all posted), so use a second account
    # that caps t*: it has health 2 and no eligible assets.
    pool = {"asset": ["USD", "ALT"], "amount": [1000.0, 1000.0], "price": [1.0, 1.0], "weight": [1.0, 0.5]}
    req = {
        "account_id": ["needy", "capped"],
        "maintenance_margin": [100.0, 100.0],
        "collateral": [100.0, 200.0],
        "eligible_assets": [None, []],
    }
    r = allocate_collateral(pool, req)
    assert r.max_min_health == pytest.approx(2.0, rel=1e-9)
    alloc = r.allocation.to_pydict()
    assert set(alloc["account_id"]) == {"needy"}
    assert alloc["asset"] == ["ALT"]  # 200 ALT at weight 0.5 rather than 100 USD
    assert alloc["amount"][0] == pytest.approx(200.0, rel=1e-6)
    free = dict(zip(r.free.column("asset").to_pylist(), r.free.column("free").to_pylist()))
    assert free["USD"] == pytest.approx(1000.0)
    assert free["ALT"] == pytest.approx(800.0, rel=1e-6)


def test_accounts_above_the_optimum_get_nothing():
    pool = _pool([10.0], [100.0], [0.8])  # 800 of weighted value
    r = allocate_collateral(pool, _req([100.0, 100.0, 100.0], [0.0, 50.0, 5000.0]))
    # t* with accounts 0 and 1 sharing 800: (0 + y0) = (50 + y1) = t·100, y0 + y1 = 800 → t = 4.25
    assert r.max_min_health == pytest.approx(4.25, rel=1e-9)
    posted = r.accounts.column("posted_value").to_pylist()
    assert posted[2] == 0.0
    assert posted[0] == pytest.approx(425.0, rel=1e-6) and posted[1] == pytest.approx(375.0, rel=1e-6)


def test_eligibility_table_restricts_pairs():
    pool = {"asset": ["USD", "BTC"], "amount": [100.0, 1.0], "price": [1.0, 1000.0], "weight": [1.0, 0.9]}
    req = {"account_id": [1, 2], "maintenance_margin": [100.0, 100.0]}
    r = allocate_collateral(pool, req, eligible={"account_id": [1], "asset": ["USD"]})
    alloc = r.allocation.to_pydict()
    assert all(asset == "USD" for acc, asset in zip(alloc["account_id"], alloc["asset"]) if acc == 1)
    assert r.max_min_health == pytest.approx(1.0, rel=1e-9)  # account 1 can only get 100 USD


def test_min_posted_objective_reaches_the_target_cheaply_or_reports_infeasible():
    pool = _pool([1000.0, 1000.0], [1.0, 1.0], [1.0, 0.5])
    req = _req([100.0, 200.0], [50.0, 100.0])
    r = allocate_collateral(pool, req, objective="min_posted", target_health=1.5)
    assert r.status == "optimal"
    h = np.asarray(r.accounts.column("health_after").to_pylist())
    assert (h >= 1.5 - TOL).all()
    assert r.accounts.column("posted_value").to_pylist() == pytest.approx([100.0, 200.0], rel=1e-6)
    assert [a for a in r.allocation.column("asset").to_pylist()] == ["A1", "A1"]  # the 50% haircut asset
    bad = allocate_collateral(pool, req, objective="min_posted", target_health=100.0)
    assert bad.status == "infeasible"
    assert bad.allocation.num_rows == 0


def test_large_instance_is_feasible_and_fast():
    rng = np.random.default_rng(42)
    n, m = 200, 6
    amount, price, weight = rng.uniform(0, 1e4, m), rng.uniform(0.5, 5e4, m), rng.uniform(0.0, 1.0, m)
    mm, existing = rng.lognormal(8, 1.5, n), rng.uniform(-1e4, 5e5, n)
    r = allocate_collateral(_pool(amount, price, weight), _req(mm, existing))
    assert r.status == "optimal"
    _, health = _check_feasible(r, amount, price, weight, mm, existing)
    t = r.max_min_health
    assert health.min() >= t - TOL * max(1.0, abs(t))
    assert t >= health.min() - TOL * max(1.0, abs(t))
    # no allocation can beat the pooled bound
    v = amount * price * weight
    assert t <= (existing.sum() + v.sum()) / mm.sum() + 1e-9
    # the optimum is at least what the naive "everything to the worst account" achieves, and
    # every account that started below t* ends at t* (the binding set)
    below = np.asarray(existing) / mm < t - TOL
    assert np.allclose(health[below], t, rtol=1e-5)


def test_bad_inputs_raise_margin_input_errors():
    pool = _pool([1.0], [1.0], [1.0])
    with pytest.raises(me.MarginInputError, match="maintenance_margin"):
        allocate_collateral(pool, _req([0.0], [0.0]))
    with pytest.raises(me.MarginInputError, match="weight"):
        allocate_collateral(_pool([1.0], [1.0], [1.5]), _req([1.0], [0.0]))
    with pytest.raises(me.MarginInputError, match="duplicate"):
        allocate_collateral(
            {"asset": ["X", "X"], "amount": [1.0, 1.0], "price": [1.0, 1.0], "weight": [1.0, 1.0]}, _req([1.0], [0.0])
        )
    with pytest.raises(me.MarginInputError, match="target_health"):
        allocate_collateral(pool, _req([1.0], [0.0]), objective="min_posted")
    with pytest.raises(me.MarginInputError, match="objective"):
        allocate_collateral(pool, _req([1.0], [0.0]), objective="max")


# ----------------------------------------------------------------------------------------------
# rebalance
# ----------------------------------------------------------------------------------------------


def _check_plan(plan, coll, mm, target):
    coll, mm = np.asarray(coll, float), np.asarray(mm, float)
    scale = max(1.0, float(np.abs(coll).max(initial=0)), float((target * mm).max(initial=0)))
    tol = 1e-9 * scale * max(1, len(coll))
    acc = plan.accounts.to_pydict()
    before, after = np.asarray(acc["collateral_before"]), np.asarray(acc["collateral_after"])
    sent, received = np.asarray(acc["sent"]), np.asarray(acc["received"])
    need = target * mm
    deficit = np.where((mm > 0) & (coll < need), need - coll, 0.0)
    surplus = np.maximum(coll - need, 0.0)
    feasible = surplus.sum() >= deficit.sum() - tol
    assert plan.feasible == feasible
    np.testing.assert_allclose(before, coll)
    np.testing.assert_allclose(after, before - sent + received, rtol=0, atol=tol)
    t = plan.transfers.to_pydict()
    assert all(a > 0 for a in t["amount"])
    assert plan.n_transfers == len(t["amount"])
    if not feasible or not plan.triggered:
        assert plan.n_transfers == 0
        assert (after == before).all()
        if not feasible:
            assert plan.shortfall == pytest.approx(deficit.sum() - surplus.sum(), rel=1e-9, abs=tol)
        return
    # every account with a requirement ends at or above target
    assert ((mm == 0) | (after >= need - tol)).all()
    # no donor goes below target (so no account is lowered below target), nobody both sends and receives
    assert (sent <= surplus + tol).all()
    assert not ((sent > 0) & (received > 0)).any()
    # recipients get exactly their deficit: the least amount that can be moved
    np.testing.assert_allclose(received, deficit, rtol=0, atol=tol)
    assert plan.total_moved == pytest.approx(deficit.sum(), rel=1e-9, abs=tol)
    # transfer-count bounds
    r, d = int((deficit > 0).sum()), int((surplus > 0).sum())
    assert r <= plan.lower_bound <= plan.n_transfers
    if r:
        assert plan.n_transfers <= r + d - 1
    # transfers are between distinct accounts, at most one per (donor, recipient) pair
    pairs = list(zip(t["from_account_id"], t["to_account_id"]))
    assert len(set(pairs)) == len(pairs) and all(a != b for a, b in pairs)


def test_rebalance_hand_worked():
    plan = rebalance(
        {
            "account_id": ["a", "b", "c", "d"],
            "collateral": [100.0, 500.0, 50.0, 30.0],
            "maintenance_margin": [100.0, 100.0, 100.0, 0.0],
        },
        target_health=1.2,
    )
    assert plan.feasible and plan.triggered
    assert plan.total_moved == pytest.approx(90.0)  # a needs 20, c needs 70
    assert plan.n_transfers == 2 and plan.proven_minimal
    # largest deficit first: c (70) from b (the only donor covering it), then a (20) by best fit
    # from d (surplus 30, smaller than b's remaining 310)
    t = plan.transfers.to_pydict()
    assert list(zip(t["from_account_id"], t["to_account_id"], t["amount"])) == [
        ("b", "c", 70.0),
        ("d", "a", pytest.approx(20.0)),
    ]
    _check_plan(plan, [100.0, 500.0, 50.0, 30.0], [100.0, 100.0, 100.0, 0.0], 1.2)


def test_rebalance_infeasible_reports_the_shortfall():
    plan = rebalance({"account_id": [1, 2], "collateral": [100.0, 150.0], "maintenance_margin": [100.0, 100.0]}, target_health=1.5)
    assert not plan.feasible
    assert plan.shortfall == pytest.approx(50.0)
    assert plan.n_transfers == 0 and plan.transfers.num_rows == 0


def test_rebalance_splits_a_large_deficit_over_the_largest_donors():
    plan = rebalance(
        {
            "account_id": [1, 2, 3, 4],
            "collateral": [0.0, 60.0, 50.0, 45.0],
            "maintenance_margin": [100.0, 10.0, 10.0, 10.0],
        },
        target_health=1.0,
    )
    # deficit 100; surpluses 50, 40, 35: needs three donors? 50 + 40 = 90 < 100 → yes, 3
    assert plan.lower_bound == 3 and plan.n_transfers == 3 and plan.proven_minimal
    _check_plan(plan, [0.0, 60.0, 50.0, 45.0], [100.0, 10.0, 10.0, 10.0], 1.0)


def test_trigger_semantics():
    acc = {"account_id": [1, 2], "collateral": [50.0, 500.0], "maintenance_margin": [100.0, 100.0]}
    quiet = rebalance(acc, target_health=1.1, trigger={"BTC": 0.8, "ETH": 0.9}, vols={"BTC": 0.5, "ETH": 0.6})
    assert not quiet.triggered and quiet.breaches == [] and quiet.n_transfers == 0
    assert quiet.accounts.column("collateral_after").to_pylist() == [50.0, 500.0]
    loud = rebalance(acc, target_health=1.1, trigger={"BTC": 0.8, "ETH": 0.9}, vols={"BTC": 0.5, "ETH": 0.9})
    assert loud.triggered and loud.breaches == ["ETH"]  # at the threshold counts as breached
    assert loud.n_transfers == 1 and loud.total_moved == pytest.approx(60.0)
    with pytest.raises(me.MarginInputError, match="vols"):
        rebalance(acc, target_health=1.1, trigger={"BTC": 0.8}, vols={"ETH": 1.0})
    with pytest.raises(me.MarginInputError, match="vols"):
        rebalance(acc, target_health=1.1, trigger={"BTC": 0.8})


def test_rebalance_bad_inputs():
    acc = {"account_id": [1], "collateral": [1.0], "maintenance_margin": [1.0]}
    for bad in (0.0, -1.0, math.inf, "1", True):
        with pytest.raises(me.MarginInputError, match="target_health"):
            rebalance(acc, target_health=bad)
    with pytest.raises(me.MarginInputError, match="maintenance_margin"):
        rebalance({"account_id": [1], "collateral": [1.0], "maintenance_margin": [-1.0]}, target_health=1.0)
    with pytest.raises(me.MarginInputError, match="collateral"):
        rebalance({"account_id": [1], "maintenance_margin": [1.0]}, target_health=1.0)


money = st.floats(0.0, 1e6, allow_nan=False).map(lambda x: round(x, 2))
accounts_strategy = st.lists(
    st.tuples(st.floats(-1e4, 1e6).map(lambda x: round(x, 2)), st.one_of(st.just(0.0), money)),
    min_size=1,
    max_size=12,
)


@given(accounts_strategy, st.floats(0.5, 3.0))
def test_rebalance_properties(rows, target):
    coll = [c for c, _ in rows]
    mm = [m for _, m in rows]
    plan = rebalance({"account_id": list(range(len(rows))), "collateral": coll, "maintenance_margin": mm}, target_health=target)
    _check_plan(plan, coll, mm, target)


@settings(max_examples=40)
@given(
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 100)), min_size=2, max_size=7),
    st.sampled_from([1.0, 1.5, 2.0]),
)
def test_exact_method_is_never_worse_than_greedy(rows, target):
    coll = [float(c) for c, _ in rows]
    mm = [float(m) for _, m in rows]
    table = {"account_id": list(range(len(rows))), "collateral": coll, "maintenance_margin": mm}
    greedy = rebalance(table, target_health=target)
    exact = rebalance(table, target_health=target, method="exact")
    _check_plan(exact, coll, mm, target)
    if greedy.feasible:
        assert exact.proven_minimal
        assert greedy.lower_bound <= exact.n_transfers <= greedy.n_transfers


def test_exact_agrees_with_enumeration_on_a_tricky_case():
    # Deficits 6 and 4, surpluses 5 and 5: no donor covers 6 alone, so it takes one 5 and 1 of the
    # other, and 4 takes the remaining 4: 3 transfers, optimal (6 needs two donors).
    # Deficits 3 and 3, surpluses 4 and 2: 3 ← 4 (best fit), then 3 ← 2 + 1: 3 transfers, optimal
    # (the donor of 2 cannot cover a recipient alone).
    for coll, mm in (([0.0, 0.0, 15.0, 15.0], [6.0, 4.0, 10.0, 10.0]), ([0.0, 0.0, 5.0, 3.0], [3.0, 3.0, 1.0, 1.0])):
        table = {"account_id": [0, 1, 2, 3], "collateral": coll, "maintenance_margin": mm}
        g, e = rebalance(table, target_health=1.0), rebalance(table, target_health=1.0, method="exact")
        assert e.n_transfers == g.n_transfers == 3
        best = _enumerate_min_transfers(np.array(coll), np.array(mm), 1.0)
        assert e.n_transfers == best


def _enumerate_min_transfers(coll, mm, target):
    """Fewest transfers by brute force over which (donor, recipient) pairs are used (tiny cases):
    a pair set works iff the max flow through it covers every deficit."""
    from scipy.optimize import linprog

    need = target * mm
    rec = [i for i in range(len(coll)) if mm[i] > 0 and coll[i] < need[i]]
    don = [i for i in range(len(coll)) if coll[i] > need[i]]
    all_pairs = list(itertools.product(range(len(don)), range(len(rec))))
    for k in range(len(rec), len(all_pairs) + 1):
        for pairs in itertools.combinations(all_pairs, k):
            # feasibility LP: flows on the pairs
            a_eq = np.zeros((len(rec), k))
            a_ub = np.zeros((len(don), k))
            for p, (d, r) in enumerate(pairs):
                a_eq[r, p] = 1
                a_ub[d, p] = 1
            res = linprog(
                np.zeros(k),
                A_ub=a_ub,
                b_ub=[coll[d] - need[d] for d in don],
                A_eq=a_eq,
                b_eq=[need[r] - coll[r] for r in rec],
                bounds=[(0, None)] * k,
                method="highs",
            )
            if res.status == 0:
                return k
    raise AssertionError("infeasible")


def test_rebalance_from_engine_results():
    """The intended pipeline: an owner's accounts from me.margin feed rebalance directly."""
    from margin_engine import synthetic

    g = synthetic.generate(50, seed=3)
    book = me.Book(g.instruments, g.assets, None, g.margin_tiers)
    market = me.Market(g.index_prices, g.marks, g.valuation_time)
    res = me.margin(book, g.positions, g.balances, market)
    owner = res.select(["account_id", "collateral_maintenance", "maintenance_margin"]).rename_columns(
        ["account_id", "collateral", "maintenance_margin"]
    )
    plan = rebalance(owner, target_health=1.1)
    coll = owner.column("collateral").to_pylist()
    mm = owner.column("maintenance_margin").to_pylist()
    _check_plan(plan, coll, mm, 1.1)
    assert plan.transfers.schema.field("from_account_id").type == pa.uint64()


def test_greedy_can_be_beaten_and_exact_finds_the_optimum():
    # Deficits 3, 6, 8; surpluses 9, 1, 7 (they sum to the deficits exactly). Greedy: 8 ← 9 (best
    # fit), 6 ← 7, then 3 must be gathered from three leftovers of 1: 5 transfers. Optimal: 8 ← 7 + 1
    # and 6 + 3 ← 9: 4 transfers. The lower bound (3) proves neither, so greedy says so.
    table = {
        "account_id": list(range(6)),
        "collateral": [0.0, 0.0, 0.0, 10.0, 2.0, 8.0],
        "maintenance_margin": [3.0, 6.0, 8.0, 1.0, 1.0, 1.0],
    }
    g, e = rebalance(table, target_health=1.0), rebalance(table, target_health=1.0, method="exact")
    assert (g.n_transfers, e.n_transfers, g.lower_bound) == (5, 4, 3)
    assert not g.proven_minimal and e.proven_minimal
    assert _enumerate_min_transfers(np.array(table["collateral"]), np.array(table["maintenance_margin"]), 1.0) == 4
    _check_plan(e, table["collateral"], table["maintenance_margin"], 1.0)


# ----------------------------------------------------------------------------------------------
# issue 12: one vocabulary (account_id), keyword-only options, output="polars", scipy extra
# ----------------------------------------------------------------------------------------------


def test_issue12_optimizers_key_accounts_by_account_id():
    """Finding: the optimizers called the account key `account` (and `from_account`/`to_account`);
    the rest of the package says `account_id`."""
    r = allocate_collateral(_pool([100.0], [1.0], [1.0]), _req([10.0, 20.0], [0.0, 0.0]),
                            eligible={"account_id": [0], "asset": ["A0"]})
    assert r.allocation.column_names[0] == "account_id" and r.accounts.column_names[0] == "account_id"
    plan = rebalance({"account_id": [1, 2], "collateral": [0.0, 500.0], "maintenance_margin": [100.0, 100.0]},
                     target_health=1.0)
    assert plan.transfers.column_names == ["from_account_id", "to_account_id", "amount"]
    assert plan.accounts.column_names[0] == "account_id"
    assert plan.transfers.to_pylist() == [{"from_account_id": 2, "to_account_id": 1, "amount": 100.0}]
    # the old name is an error that says what the column is called now
    with pytest.raises(me.MarginInputError, match=r"accounts\.account_id: missing column \(renamed from `account`"):
        rebalance({"account": [1], "collateral": [1.0], "maintenance_margin": [1.0]}, target_health=1.0)
    with pytest.raises(me.MarginInputError, match=r"requirements\.account_id"):
        allocate_collateral(_pool([1.0], [1.0], [1.0]), {"account": [1], "maintenance_margin": [1.0]})
    with pytest.raises(me.MarginInputError, match=r"eligible\.account_id"):
        allocate_collateral(_pool([1.0], [1.0], [1.0]), _req([1.0], [0.0]), eligible={"account": [0], "asset": ["A0"]})


def test_issue12_rebalance_takes_margin_results_as_they_are():
    """With account_id, me.margin's columns need only `collateral` named (other columns ignored)."""
    from margin_engine import synthetic

    g = synthetic.generate(30, seed=5)
    book = me.Book(g.instruments, g.assets, None, g.margin_tiers)
    market = me.Market(g.index_prices, g.marks, g.valuation_time)
    res = me.margin(book, g.positions, g.balances, market)
    res = res.append_column("collateral", res.column("collateral_maintenance"))
    plan = rebalance(res, target_health=1.05)
    assert plan.accounts.column("account_id").equals(res.column("account_id"))


def test_issue12_optimizer_options_are_keyword_only():
    """Finding: options after the tables are keyword-only (target_health included)."""
    acc = {"account_id": [1], "collateral": [1.0], "maintenance_margin": [1.0]}
    with pytest.raises(TypeError):
        rebalance(acc, 1.0)
    with pytest.raises(TypeError):
        allocate_collateral(_pool([1.0], [1.0], [1.0]), _req([1.0], [0.0]), "min_posted")


def test_issue12_optimizers_output_polars(monkeypatch):
    """Finding: table-returning functions accept output="polars"."""
    pl = pytest.importorskip("polars")
    acc = {"account_id": [1, 2], "collateral": [0.0, 500.0], "maintenance_margin": [100.0, 100.0]}
    plan = rebalance(acc, target_health=1.0, output="polars")
    assert isinstance(plan.transfers, pl.DataFrame) and isinstance(plan.accounts, pl.DataFrame)
    assert plan.transfers.equals(pl.from_arrow(rebalance(acc, target_health=1.0).transfers))
    r = allocate_collateral(_pool([100.0], [1.0], [1.0]), _req([10.0], [0.0]), output="polars")
    assert all(isinstance(t, pl.DataFrame) for t in (r.allocation, r.accounts, r.free))
    with pytest.raises(me.MarginInputError, match="output"):
        rebalance(acc, target_health=1.0, output="pandas")
    monkeypatch.setitem(sys.modules, "polars", None)
    with pytest.raises(ImportError, match="pip install polars"):
        rebalance(acc, target_health=1.0, output="polars")


def test_issue12_missing_scipy_names_the_optimize_extra(monkeypatch):
    """Finding: a missing scipy must raise an ImportError naming `margin-engine[optimize]`."""
    for name in [m for m in sys.modules if m == "scipy" or m.startswith("scipy.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "scipy", None)
    extra = r"pip install 'margin-engine\[optimize\]'"
    with pytest.raises(ImportError, match=extra):
        allocate_collateral(_pool([1.0], [1.0], [1.0]), _req([1.0], [0.0]))
    acc = {"account_id": [1, 2], "collateral": [0.0, 500.0], "maintenance_margin": [100.0, 100.0]}
    with pytest.raises(ImportError, match=extra):
        rebalance(acc, target_health=1.0, method="exact")
    assert rebalance(acc, target_health=1.0).n_transfers == 1  # greedy needs no scipy
