"""Liquidation scan, stress, distance to liquidation and map (docs/methodology.md §8, docs/liquidation.md):
the Rust engine against `margin_engine.reference.liquidation`, plus properties and hand-worked
examples.

Random books come from `books()`; most of its accounts are either deep under water or never cross
within ±50%, so `near_books()` also tops accounts up with a cash balance that puts them a little
above maintenance (e_0 = f × MM, f in [0.001, 1]): that is where the distance walk interpolates.

Comparisons: the scan to 1e-9 (relative, 1e-9 absolute), statuses and row order exactly. Moves
are compared to 1e-7 absolute. The engine computes a walk's margin excess incrementally (the parts
a move leaves alone are summed once), the reference recomputes the whole account, so the two
excesses differ by rounding, ~1e-16 of the account's gross size. When the curve touches zero within
that noise (an account exactly at maintenance, or excess identically 0 on an interval) the first
grid crossing is legitimately ambiguous. Only when the 1e-7 comparison fails does
`assert_move_explained` accept the engine's move, and then only if perturbing the reference's grid
excesses by at most 1e-9 × the account's gross size gives that answer.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import pyarrow as pa
import pytest
from conftest import assert_tables_close, close, engine_objects, record_event
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import book_underlyings, books, log_uniform, reference_objects, with_topups

import margin_engine as me
from margin_engine import _core, api, reference
from margin_engine.reference import liquidation as ref_liq

MODELS = ["standard", "portfolio"]
MOVE_ABS = 1e-7
NOISE = 1e-9
"""Rounding noise allowed in a margin excess, relative to the account's gross size."""
STEP = ref_liq.GRID_STEP
LEVELS = ref_liq.GRID_LEVELS


# --------------------------------------------------------------------------------------------
# Strategies
# --------------------------------------------------------------------------------------------


@st.composite
def near_books(draw: Any, max_accounts: int = 6, model: str = "standard", linear: bool = False) -> dict[str, Any]:
    """A `books()` example where most accounts are topped up (or drawn down, with a negative cash
    balance) to a maintenance collateral of `MM × (1 + f)`, f log-uniform in [0.001, 1]; accounts
    without margin but holding linked assets to `f × gross linked value`, f in [0.05, 0.5].
    `linear`: the option position rows dropped first (a book of perpetuals and futures)."""
    example = draw(books(max_accounts=max_accounts))
    if linear:
        example = only_linear_positions(example)
    if draw(st.integers(0, 7)) == 0:
        return example  # as drawn
    book, market = reference_objects(example)
    rows = reference.margin(book, example["positions"], example["balances"], market, model=model).to_pylist()
    assets = example["assets"]
    names = assets.column("asset").to_pylist()
    price = dict(zip(names, assets.column("price").to_pylist(), strict=True))
    linked = (
        dict(zip(names, assets.column("underlying").to_pylist(), strict=True))
        if "underlying" in assets.column_names
        else {}
    )
    gross: dict[int, float] = {}
    for b in example["balances"].to_pylist():
        if linked.get(b["asset"]) is not None:
            gross[b["account_id"]] = gross.get(b["account_id"], 0.0) + abs(b["amount"] * price[b["asset"]])
    topups = []
    for r in rows:
        if draw(st.integers(0, 7)) == 0:
            continue  # leave this one as drawn
        if r["maintenance_margin"] > 0.0:
            target = r["maintenance_margin"] * (1.0 + draw(log_uniform(1e-3, 1.0)))
        elif gross.get(r["account_id"], 0.0) > 0.0:
            target = gross[r["account_id"]] * draw(st.floats(0.05, 0.5))
        else:
            continue
        topups.append((r["account_id"], target - r["collateral_maintenance"]))
    return with_topups(example, topups) if topups else example


def only_linear_positions(example: dict[str, Any]) -> dict[str, Any]:
    """`example` without its position rows in options."""
    ins = example["instruments"]
    options = {k for k, kind in zip(ins.column("instrument").to_pylist(), ins.column("kind").to_pylist(), strict=True) if kind == "option"}
    positions = example["positions"]
    keep = pa.array([k not in options for k in positions.column("instrument").to_pylist()], type=pa.bool_())
    out = dict(example)
    out["positions"] = positions.filter(keep)
    return out


move_values = st.one_of(
    st.floats(-0.6, 0.6),
    st.integers(-120, 120).map(lambda j: STEP * j),  # grid points
    st.just(0.0),
)


@st.composite
def stressed_books(draw: Any, model: str) -> tuple[dict[str, Any], dict[str, float]]:
    """A `near_books` example and a stress dict over some of its underlyings."""
    example = draw(near_books(model=model))
    names = draw(st.lists(st.sampled_from(book_underlyings(example)), unique=True))
    return example, {u: draw(move_values) for u in names}


def engine_grid(book: Any, positions: Any, balances: Any, market: Any, *, model: str = "standard", threads: int | None = None) -> pa.Table:
    """The engine's grid walk (`_core.liquidation_distance_grid`): the former
    `liquidation_distance`, which the map's levels still come from. The grid tests below test it
    against `reference.liquidation_distance_grid`; the exact distances are tested in
    tests/test_liquidation_exact.py."""
    return api._per_account(_core.liquidation_distance_grid, book, positions, balances, market, model, threads, "arrow")


def _args(example: dict[str, Any]) -> tuple[Any, ...]:
    book, market = engine_objects(example)
    return book, example["positions"], example["balances"], market


# --------------------------------------------------------------------------------------------
# Tolerant comparison of moves
# --------------------------------------------------------------------------------------------


class ReferenceWalk:
    """The reference's margin excess of one account under a move of one underlying, with the
    rounding noise to allow for it (NOISE × the account's gross size in that market)."""

    def __init__(self, example: dict[str, Any], model: str) -> None:
        book, market = reference_objects(example)
        self.accounts = ref_liq.read_accounts(book, example["positions"], example["balances"], market)
        self.scenarios = ref_liq.Scenarios(self.accounts.book, self.accounts.market)
        self.model = model

    def excess(self, account: int, underlying: str, level: int) -> tuple[float, float]:
        """`(e, tolerance)` at grid level `level` (signed; 0 = the current market)."""
        positions = self.accounts.positions.get(account, [])
        balances = self.accounts.balances.get(account, [])
        scenario = (
            self.scenarios.base
            if level == 0
            else self.scenarios.moved({underlying: ref_liq.grid_move(level)})
        )
        result = self.accounts.row_in(scenario, account, self.model)  # type: ignore[arg-type]
        # the P&L of positions that netted to 0 is in the excess, and in its rounding noise
        gross = result.maintenance_margin + abs(result.collateral_maintenance) + abs(self.accounts.closed.get(account, 0.0))
        for b in balances:
            gross += abs(b.amount * scenario.book.assets[b.asset_id].price)
        for p in positions:
            mark = scenario.market.marks[p.instrument.id].mark_price
            gross += abs(p.quantity * p.instrument.multiplier * mark) + abs(p.upnl)
        return result.margin_excess, NOISE * gross


def assert_move_explained(
    walk: ReferenceWalk, account: int, underlying: str, side: int, got: float | None, want: float | None
) -> None:
    """The engine's move `got` on one side (−1 down, +1 up) differs from the reference's `want` by
    more than MOVE_ABS: accept it only if the reference's grid excesses, each moved by at most its
    noise tolerance, lead the walk of METHODOLOGY §8 to `got`."""
    e = [walk.excess(account, underlying, side * j) for j in range(LEVELS + 1)]
    detail = (
        f"account {account} {underlying} side {side:+d}: engine {got}, reference {want}, excess {e[:8]}..."
    )
    if got is None:  # never crossed: every excess may be >= 0
        assert all(x >= -t for x, t in e), detail
        return
    if got == 0.0 and e[0][0] <= e[0][1]:
        return  # liquidatable at the current market (within noise); or crossing from e_0 = 0
    assert side * got >= 0.0, detail
    offset = abs(got) / STEP
    for j in range(1, LEVELS + 1):
        if not all(x >= -t for x, t in e[:j]):
            break  # the walk cannot get past an excess that is negative beyond noise
        (a, ta), (b, tb) = e[j - 1], e[j]
        if b > tb:
            continue  # cannot cross here
        lo_a, hi_a = max(a - ta, 0.0), max(a + ta, 0.0)
        lo_b, hi_b = b - tb, min(b + tb, -1e-300)
        r_lo = lo_a / (lo_a - lo_b) if lo_a > 0.0 else 0.0
        r_hi = hi_a / (hi_a - hi_b) if hi_a > 0.0 else 0.0
        if r_lo - 1e-9 - MOVE_ABS / STEP <= offset - (j - 1) <= r_hi + 1e-9 + MOVE_ABS / STEP:
            record_event("distance: ambiguous crossing accepted (excess within rounding noise of 0)")
            return
    raise AssertionError(detail)


def compare_distances(got: pa.Table, want: pa.Table, walk: ReferenceWalk) -> set[tuple[int, str]]:
    """Same rows and keys; moves within MOVE_ABS or explained by rounding noise; liquidation prices
    `S × (1 + move)`. Returns the (account, underlying) rows that needed the noise explanation."""
    assert got.schema == want.schema, (got.schema, want.schema)
    keys = list(zip(got.column("account_id").to_pylist(), got.column("underlying").to_pylist(), strict=True))
    assert keys == list(
        zip(want.column("account_id").to_pylist(), want.column("underlying").to_pylist(), strict=True)
    )
    spot = walk.accounts.market.index_prices
    ambiguous: set[tuple[int, str]] = set()
    for name, side in (("down", -1), ("up", 1)):
        g_moves = got.column(f"move_{name}").to_pylist()
        w_moves = want.column(f"move_{name}").to_pylist()
        g_prices = got.column(f"liquidation_price_{name}").to_pylist()
        for (account, u), g, w, p in zip(keys, g_moves, w_moves, g_prices, strict=True):
            assert (g is None) == (p is None)
            if g is not None:
                assert side * g >= 0.0, f"move_{name} has the wrong sign: {g}"
                assert abs(g) <= STEP * LEVELS
                assert close(p, spot[u] * (1.0 + g), 1e-12, 0.0), (p, spot[u], g)
            if g is None and w is None:
                continue
            if g is not None and w is not None and abs(g - w) <= MOVE_ABS:
                continue
            assert_move_explained(walk, account, u, side, g, w)
            ambiguous.add((account, u))
    return ambiguous


# --------------------------------------------------------------------------------------------
# Scan
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
@settings(max_examples=200)
@given(data=st.data())
def test_scan_matches_reference(model, data):
    example = data.draw(near_books(model=model))
    args = _args(example)
    got = me.liquidation_scan(*args, model=model)
    want = reference.liquidation_scan(*args, model=model)
    assert got.schema == want.schema
    assert_tables_close(got, want)


@pytest.mark.parametrize("model", MODELS)
@settings(max_examples=200)
@given(data=st.data())
def test_stressed_scan_matches_reference(model, data):
    example, stress = data.draw(stressed_books(model))
    args = _args(example)
    got = me.liquidation_scan(*args, model=model, stress=stress)
    want = reference.liquidation_scan(*args, model=model, stress=stress)
    assert got.schema == want.schema
    assert_tables_close(got, want)


@pytest.mark.parametrize("model", MODELS)
@settings(max_examples=50)
@given(data=st.data())
def test_zero_stress_is_no_stress(model, data):
    example = data.draw(near_books(model=model))
    args = _args(example)
    names = data.draw(st.lists(st.sampled_from(book_underlyings(example)), unique=True))
    plain = me.liquidation_scan(*args, model=model)
    assert me.liquidation_scan(*args, model=model, stress={u: 0.0 for u in names}).equals(plain)
    assert me.liquidation_scan(*args, model=model, stress={}).equals(plain)
    assert reference.liquidation_scan(*args, model=model, stress={u: 0.0 for u in names}).equals(
        reference.liquidation_scan(*args, model=model)
    )


SEVERITY = {"bankrupt": 0, "liquidatable": 1, "margin_call": 2, "healthy": 3}


@pytest.mark.parametrize("model", MODELS)
@settings(max_examples=50)
@given(data=st.data())
def test_scan_is_the_margin_rows_in_scan_order(model, data):
    example, stress = data.draw(stressed_books(model))
    args = _args(example)
    scan = me.liquidation_scan(*args, model=model, stress=stress or None).to_pylist()
    if not stress:
        rows = me.margin(*args, model=model).to_pylist()
        assert sorted(scan, key=lambda r: r["account_id"]) == [
            {**r, "shortfall": max(0.0, r["maintenance_margin"] - r["collateral_maintenance"])} for r in rows
        ]
    for r in scan:
        assert r["shortfall"] == max(0.0, r["maintenance_margin"] - r["collateral_maintenance"])
    keys = [(SEVERITY[r["status"]], -r["shortfall"], r["account_id"]) for r in scan]
    assert keys == sorted(keys)
    assert len({r["account_id"] for r in scan}) == len(scan)


@pytest.mark.parametrize("impl", [me, reference], ids=["engine", "reference"])
def test_distance_with_stress_is_refused(impl):
    book, market = _hand_book()
    args = (book, _positions([(1, "X-PERP", 2.0)]), _balances([(1, "USD", 20.0)]), market)
    with pytest.raises(ValueError):
        impl.liquidation_scan(*args, stress={"X": -0.1}, distance=True)


# --------------------------------------------------------------------------------------------
# Distances, nearest move, map
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
@settings(max_examples=100)
@given(data=st.data())
def test_distance_matches_reference(model, data):
    example = data.draw(near_books(model=model))
    args = _args(example)
    got = engine_grid(*args, model=model)
    want = reference.liquidation_distance_grid(*args, model=model)
    compare_distances(got, want, ReferenceWalk(example, model))
    moves = [m for name in ("move_down", "move_up") for m in got.column(name).to_pylist()]
    if any(m not in (None, 0.0) for m in moves):
        record_event("distance: some move interpolated")


@pytest.mark.parametrize("model", MODELS)
@settings(max_examples=50)
@given(data=st.data())
def test_distance_properties(model, data):
    """Results do not depend on the thread count; rows are exactly the exposures;
    move_down <= 0 <= move_up; both 0 iff the account is below maintenance now; and the engine's
    own stressed scan agrees with the walk at the grid points around each crossing (above
    maintenance at m_{j-1}, below at m_j, within noise)."""
    example = data.draw(near_books(model=model))
    args = _args(example)
    table = engine_grid(*args, model=model)
    # the thread count never changes a result
    assert engine_grid(*args, model=model, threads=1).equals(table)
    assert me.liquidation_map(*args, model=model, threads=1).equals(me.liquidation_map(*args, model=model))
    dist = table.to_pylist()
    margin = {r["account_id"]: r for r in me.margin(*args, model=model).to_pylist()}
    walk = ReferenceWalk(example, model)
    exposures = []
    for account in walk.accounts.ids:
        names = ref_liq.exposed_underlyings(
            walk.accounts.positions.get(account, []),
            walk.accounts.balances.get(account, []),
            walk.accounts.book,
        )
        exposures.extend((account, u) for u in names)
    assert [(r["account_id"], r["underlying"]) for r in dist] == exposures
    checked = 0
    for r in dist:
        down, up = r["move_down"], r["move_up"]
        assert down is None or down <= 0.0
        assert up is None or up >= 0.0
        excess = margin[r["account_id"]]["margin_excess"]
        underwater = excess < 0.0
        if underwater:
            assert down == 0.0 and up == 0.0, r
        elif 0.0 in (down, up):  # a crossing right away: only from an excess of (about) 0
            assert excess <= walk.excess(r["account_id"], r["underlying"], 0)[1], (r, excess)
        if underwater or checked >= 3:
            continue
        for side, m in ((-1, down), (1, up)):
            if m is None or m == 0.0:
                continue
            j = math.floor(abs(m) / STEP) + 1  # grid level of the first crossing (m in [m_{j-1}, m_j))
            j = min(j, LEVELS)
            for level, sign in ((j - 1, 1.0), (j, -1.0)):
                if level == 0:
                    continue
                stress = {r["underlying"]: side * STEP * level}
                row = next(
                    x
                    for x in me.liquidation_scan(*args, model=model, stress=stress).to_pylist()
                    if x["account_id"] == r["account_id"]
                )
                _, tol = walk.excess(r["account_id"], r["underlying"], side * level)
                assert sign * row["margin_excess"] >= -tol - 1e-300, (r, level, row["margin_excess"])
            checked += 1


@pytest.mark.parametrize("model", MODELS)
@settings(max_examples=50)
@given(data=st.data())
def test_scan_nearest_matches_reference(model, data):
    example = data.draw(near_books(model=model))
    args = _args(example)
    got = me.liquidation_scan(*args, model=model, distance=True)
    want = reference.liquidation_scan(*args, model=model, distance=True)
    assert got.schema == want.schema
    base = [n for n in got.column_names if not n.startswith("nearest_")]
    assert_tables_close(got.select(base), want.select(base))
    # the engine's nearest is its own distance rows' nearest, exactly
    engine_dist = me.liquidation_distance(*args, model=model).to_pylist()
    by_account: dict[int, list[ref_liq.DistanceRow]] = {}
    for r in engine_dist:
        by_account.setdefault(r["account_id"], []).append(
            ref_liq.DistanceRow(
                r["account_id"], r["underlying"], r["move_down"], r["move_up"], None, None, 0.0, 0.0
            )
        )
    # exact roots that differ (an excess touching 0 within rounding noise: explained in
    # tests/test_liquidation_exact.py) may change the nearest move
    want_dist = reference.liquidation_distance(*args, model=model).to_pylist()
    ambiguous_accounts = {
        g["account_id"]
        for g, w in zip(engine_dist, want_dist, strict=True)
        for name in ("move_down", "move_up")
        if (g[name] is None) != (w[name] is None) or (g[name] is not None and abs(g[name] - w[name]) > MOVE_ABS)
    }
    rows = zip(
        got.column("account_id").to_pylist(),
        got.column("margin_excess").to_pylist(),
        got.column("nearest_move").to_pylist(),
        got.column("nearest_underlying").to_pylist(),
        want.column("nearest_move").to_pylist(),
        want.column("nearest_underlying").to_pylist(),
        strict=True,
    )
    for account, excess, g_move, g_u, w_move, w_u in rows:
        # liquidatable already: move 0, no underlying (CHANGES-v2 point 9)
        own = (0.0, None) if excess < 0.0 else ref_liq.nearest(by_account.get(account, []))
        assert (g_move, g_u) == ((None, None) if own is None else own)
        if account in ambiguous_accounts:
            continue
        assert (g_move is None) == (w_move is None)
        if g_move is not None:
            assert abs(g_move - w_move) <= MOVE_ABS, (account, g_move, w_move)
            if g_u != w_u:  # only a near tie may pick another underlying
                moves = [
                    abs(m) for r in by_account[account] for m in (r.move_down, r.move_up) if m is not None
                ]
                assert sum(abs(m - abs(g_move)) <= 2 * MOVE_ABS for m in moves) >= 2, (account, g_u, w_u)


@pytest.mark.parametrize("model", MODELS)
@settings(max_examples=50)
@given(data=st.data())
def test_map_matches_reference(model, data):
    example = data.draw(near_books(model=model))
    args = _args(example)
    got = me.liquidation_map(*args, model=model)
    want = reference.liquidation_map(*args, model=model)
    assert got.schema == want.schema
    names = book_underlyings(example)
    assert got.num_rows == want.num_rows == len(names) * (2 * LEVELS + 1)
    ambiguous = compare_distances(
        engine_grid(*args, model=model),
        reference.liquidation_distance_grid(*args, model=model),
        ReferenceWalk(example, model),
    )
    skip = {u for _, u in ambiguous}  # an ambiguous crossing may sit at another level
    # a move within MOVE_ABS of a grid point may belong to either neighbouring level
    for r in engine_grid(*args, model=model).to_pylist():
        for m in (r["move_down"], r["move_up"]):
            if m not in (None, 0.0) and abs(abs(m) / STEP - round(abs(m) / STEP)) * STEP <= MOVE_ABS:
                skip.add(r["underlying"])
    if skip:
        record_event("map: underlying with an ambiguous crossing not compared")
    keep = pa.array([u not in skip for u in got.column("underlying").to_pylist()])
    assert_tables_close(
        got.select(["underlying", "level", "move", "price"]),
        want.select(["underlying", "level", "move", "price"]),
    )
    assert_tables_close(got.filter(keep), want.filter(keep))


# --------------------------------------------------------------------------------------------
# Hand-worked examples
# --------------------------------------------------------------------------------------------

VALUATION = dt.datetime(2025, 3, 28, 8, 0, tzinfo=dt.timezone.utc)


def _hand_book(mark: float = 100.0, index: float = 100.0) -> tuple[Any, Any]:
    """One underlying X (index 100): a perpetual (mmr 5%) and a 30-day 110 call (vol 60%);
    collateral USD and XCOIN (price = index, maintenance weight 0.9, linked to X)."""
    instruments = pa.table(
        {
            "instrument": ["X-PERP", "X-CALL"],
            "kind": ["perpetual", "option"],
            "underlying": ["X", "X"],
            "multiplier": [1.0, 1.0],
            "expiry": pa.array([None, VALUATION + dt.timedelta(days=30)], pa.timestamp("us", "UTC")),
            "strike": [None, 110.0],
            "option_type": [None, "call"],
            "initial_margin_rate": [0.10, 0.15],
            "maintenance_margin_rate": [0.05, 0.075],
            "initial_margin_floor": [None, 0.10],
        }
    )
    assets = pa.table(
        {
            "asset": ["USD", "XCOIN"],
            "price": [1.0, index],
            "initial_weight": [1.0, 0.8],
            "maintenance_weight": [1.0, 0.9],
            "initial_liability_weight": [1.0, 1.2],
            "maintenance_liability_weight": [1.0, 1.1],
            "underlying": [None, "X"],
        }
    )
    call_mark = float(me.black76(index, 110.0, 30 / 365, 0.6, True).price)
    book = me.Book(instruments, assets)
    market = me.Market(
        pa.table({"underlying": ["X"], "index_price": [index]}),
        pa.table(
            {"instrument": ["X-PERP", "X-CALL"], "mark_price": [mark, call_mark], "implied_vol": [None, 0.6]}
        ),
        VALUATION,
    )
    return book, market


def _positions(rows: list[tuple[int, str, float]]) -> pa.Table:
    return pa.table(
        {
            "account_id": pa.array([r[0] for r in rows], pa.uint64()),
            "instrument": pa.array([r[1] for r in rows], pa.utf8()),
            "quantity": pa.array([r[2] for r in rows], pa.float64()),
        }
    )


def _balances(rows: list[tuple[int, str, float]]) -> pa.Table:
    return pa.table(
        {
            "account_id": pa.array([r[0] for r in rows], pa.uint64()),
            "asset": pa.array([r[1] for r in rows], pa.utf8()),
            "amount": pa.array([r[2] for r in rows], pa.float64()),
        }
    )


@pytest.mark.parametrize("impl", [me, reference], ids=["engine", "reference"])
@pytest.mark.parametrize("model", ["standard"])
def test_hand_long_perpetual(impl, model):
    """Account 1: long q = 2 perpetuals (mult 1, mark 100 = index, mmr 5%), 20 USD of collateral.

    Excess under a move m: e(m) = 20 + 2·100·m − 0.05·2·100·(1 + m) = 10 + 190 m, linear, so the
    grid interpolation is exact: e < 0 first at m = −0.055 (level 11), and
    m* = −0.05 + (−0.005) · e(−0.05) / (e(−0.05) − e(−0.055)) = −10/190.
    Closed form: C + q·mult·(P − mark) = mmr·q·mult·P  ⇒  P = (q·mult·mark − C) / (q·mult·(1 − mmr))
    = 180 / 1.9 = 94.7368…, i.e. m* = P / 100 − 1. Up: the excess only grows, no crossing.
    """
    book, market = _hand_book()
    positions = _positions([(1, "X-PERP", 2.0)])
    balances = _balances([(1, "USD", 20.0)])
    q, mult, mark, c, mmr = 2.0, 1.0, 100.0, 20.0, 0.05
    price = (q * mult * mark - c) / (q * mult * (1.0 - mmr))
    d = impl.liquidation_distance(book, positions, balances, market, model=model).to_pylist()
    assert len(d) == 1 and d[0]["account_id"] == 1 and d[0]["underlying"] == "X"
    assert d[0]["move_down"] == pytest.approx(price / mark - 1.0, abs=1e-12)
    assert d[0]["liquidation_price_down"] == pytest.approx(price, rel=1e-12)
    assert d[0]["move_up"] is None and d[0]["liquidation_price_up"] is None

    scan = impl.liquidation_scan(book, positions, balances, market, model=model, distance=True).to_pylist()
    assert scan[0]["nearest_move"] == d[0]["move_down"] and scan[0]["nearest_underlying"] == "X"
    # at the liquidation price the account is exactly at maintenance (linear excess)
    at = impl.liquidation_scan(
        book, positions, balances, market, model=model, stress={"X": d[0]["move_down"]}
    )
    assert at.column("margin_excess")[0].as_py() == pytest.approx(0.0, abs=1e-11)

    m = {
        (r["level"]): r
        for r in impl.liquidation_map(book, positions, balances, market, model=model).to_pylist()
    }
    assert len(m) == 2 * LEVELS + 1
    assert m[-11]["accounts"] == 1 and m[-11]["notional"] == 200.0 and m[-11]["collateral"] == 20.0
    assert m[-11]["price"] == pytest.approx(94.5) and m[-11]["move"] == pytest.approx(-0.055)
    assert sum(r["accounts"] for r in m.values()) == 1
    assert [m[k]["cumulative_accounts"] for k in (-100, -12, -11, -10, 0, 10, 100)] == [1, 1, 1, 0, 0, 0, 0]
    assert m[-100]["cumulative_notional"] == 200.0


@pytest.mark.parametrize("impl", [me, reference], ids=["engine", "reference"])
def test_hand_short_perpetual_with_linked_collateral(impl):
    """Account 2: short q = −3 perpetuals, collateral 1 XCOIN (price 100, maintenance weight 0.9,
    linked to X) and 40 USD. Under a move m: value −3·100·m, collateral 40 + 90 (1 + m), MM
    0.05·300·(1 + m), so e(m) = 130 − 15 + (90 − 300 − 15) m = 115 − 225 m: up crossing at
    m* = 115/225 = 0.5111… (beyond the grid's 50%: null there, exact now); down: e grows all the
    way to price 0 → null. With 20 USD instead: e(m) = 95 − 225 m, m* = 95/225 = 0.42222…"""
    book, market = _hand_book()
    positions = _positions([(2, "X-PERP", -3.0)])
    d = impl.liquidation_distance(
        book, positions, _balances([(2, "XCOIN", 1.0), (2, "USD", 40.0)]), market
    ).to_pylist()
    assert d[0]["move_down"] is None and d[0]["move_up"] == pytest.approx(115.0 / 225.0, abs=1e-12)
    grid = (engine_grid if impl is me else reference.liquidation_distance_grid)(
        book, positions, _balances([(2, "XCOIN", 1.0), (2, "USD", 40.0)]), market
    ).to_pylist()
    assert [(r["move_down"], r["move_up"]) for r in grid] == [(None, None)]
    d = impl.liquidation_distance(
        book, positions, _balances([(2, "XCOIN", 1.0), (2, "USD", 20.0)]), market
    ).to_pylist()
    assert d[0]["move_down"] is None
    assert d[0]["move_up"] == pytest.approx(95.0 / 225.0, abs=1e-12)
    # exposure through a linked asset alone: a row, no position, no crossing (collateral only)
    d = impl.liquidation_distance(book, _positions([]), _balances([(3, "XCOIN", 1.0)]), market).to_pylist()
    assert [(r["account_id"], r["underlying"], r["move_down"], r["move_up"]) for r in d] == [
        (3, "X", None, None)
    ]


@pytest.mark.parametrize("model", MODELS)
def test_hand_short_call_interpolation_error(model):
    """A short call: the excess is curved, so the interpolated move is only within one grid step
    of the true root; find the root by bisection on the engine's stressed scan and compare both
    implementations to it (within one step) and to each other (1e-7)."""
    book, market = _hand_book()
    positions = _positions([(4, "X-CALL", -5.0)])
    balances = _balances([(4, "USD", 120.0 if model == "standard" else 160.0)])
    args = (book, positions, balances, market)
    got = me.liquidation_distance(*args, model=model).to_pylist()[0]
    want = reference.liquidation_distance(*args, model=model).to_pylist()[0]
    assert got["move_up"] is not None and got["move_up"] > 0.0
    assert got["move_up"] == pytest.approx(want["move_up"], abs=MOVE_ABS)

    def excess(m: float) -> float:
        return me.liquidation_scan(*args, model=model, stress={"X": m}).column("margin_excess")[0].as_py()

    lo, hi = 0.0, 0.5
    assert excess(lo) >= 0.0 > excess(hi)
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if excess(mid) >= 0.0 else (lo, mid)
    assert abs(got["move_up"] - lo) <= STEP
    j = math.floor(got["move_up"] / STEP) + 1
    assert excess(STEP * (j - 1)) >= 0.0 > excess(STEP * j)


@pytest.mark.parametrize("impl", [me, reference], ids=["engine", "reference"])
def test_worked_example_of_the_docs(impl):
    """docs/liquidation.md §5, number by number."""
    book, market = _hand_book()
    positions = _positions([(1, "X-PERP", 2.0), (2, "X-PERP", -3.0)])
    balances = _balances([(1, "USD", 20.0), (2, "XCOIN", 1.0), (2, "USD", 20.0), (3, "USD", 5.0)])
    args = (book, positions, balances, market)

    scan = impl.liquidation_scan(*args, distance=True).to_pylist()
    assert [(r["account_id"], r["status"]) for r in scan] == [(1, "healthy"), (2, "healthy"), (3, "healthy")]
    assert [(r["collateral_maintenance"], r["maintenance_margin"], r["margin_excess"]) for r in scan] == [
        (20.0, 10.0, 10.0),
        (110.0, 15.0, 95.0),
        (5.0, 0.0, 5.0),
    ]
    assert scan[0]["nearest_move"] == pytest.approx(-10.0 / 190.0, abs=1e-12)
    assert scan[1]["nearest_move"] == pytest.approx(95.0 / 225.0, abs=1e-12)
    assert [r["nearest_underlying"] for r in scan] == ["X", "X", None] and scan[2]["nearest_move"] is None

    stressed = impl.liquidation_scan(*args, stress={"X": -0.10}).to_pylist()
    assert [(r["account_id"], r["status"]) for r in stressed] == [
        (1, "liquidatable"),
        (2, "healthy"),
        (3, "healthy"),
    ]
    one, two = stressed[0], stressed[1]
    assert (one["collateral_maintenance"], one["maintenance_margin"], one["shortfall"]) == pytest.approx(
        (0.0, 9.0, 9.0)
    )
    assert (two["collateral_maintenance"], two["maintenance_margin"]) == pytest.approx((131.0, 13.5))

    dist = impl.liquidation_distance(*args).to_pylist()
    assert [(r["account_id"], r["underlying"]) for r in dist] == [(1, "X"), (2, "X")]
    assert dist[0]["move_down"] == pytest.approx(-0.05 - 0.005 * 0.5 / 0.95, abs=1e-12)
    assert dist[0]["liquidation_price_down"] == pytest.approx(180.0 / 1.9, rel=1e-12)
    assert dist[0]["move_up"] is None and dist[1]["move_down"] is None
    assert dist[1]["move_up"] == pytest.approx(95.0 / 225.0, abs=1e-12)
    assert dist[1]["liquidation_price_up"] == pytest.approx(100.0 * (1.0 + 95.0 / 225.0), rel=1e-12)

    rows = {r["level"]: r for r in impl.liquidation_map(*args).to_pylist()}
    busy = {k: (r["accounts"], r["notional"], r["collateral"]) for k, r in rows.items() if r["accounts"]}
    assert busy == {-11: (1, 200.0, 20.0), 85: (1, 300.0, 110.0)}
    assert rows[-11]["price"] == pytest.approx(94.5) and rows[85]["price"] == pytest.approx(142.5)
    assert all(rows[k]["cumulative_accounts"] == 0 for k in range(-10, 85))
    assert all(
        rows[k]["cumulative_accounts"] == 1 and rows[k]["cumulative_notional"] == 200.0
        for k in range(-100, -10)
    )
    assert all(
        rows[k]["cumulative_accounts"] == 1 and rows[k]["cumulative_notional"] == 300.0
        for k in range(85, 101)
    )


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("impl", [me, reference], ids=["engine", "reference"])
def test_changes_point_9_liquidatable_accounts_have_move_0_and_no_nearest_underlying(impl, model):
    """CHANGES-v2 point 9: in a distance scan an account liquidatable already has
    `nearest_move = 0` and `nearest_underlying = null` (no underlying is "the" cause), whether it
    is exposed to an underlying (account 1: long perpetuals, too little cash) or to none (account
    2: a borrow, bankrupt); an account above maintenance keeps its underlying (account 3)."""
    book, market = _hand_book()
    positions = _positions([(1, "X-PERP", 2.0), (3, "X-PERP", 2.0)])
    balances = _balances([(1, "USD", 5.0), (2, "USD", -10.0), (3, "USD", 40.0)])
    args = (book, positions, balances, market)
    scan = {r["account_id"]: r for r in impl.liquidation_scan(*args, model=model, distance=True).to_pylist()}
    assert scan[1]["status"] == "liquidatable" and scan[2]["status"] == "bankrupt"
    for account in (1, 2):
        assert scan[account]["nearest_move"] == 0.0, scan[account]
        assert scan[account]["nearest_underlying"] is None, scan[account]
    assert scan[3]["nearest_underlying"] == "X" and scan[3]["nearest_move"] < 0.0
    # the distance rows themselves still name the underlying, at move 0 on both sides
    d = impl.liquidation_distance(*args, model=model).to_pylist()
    assert [(r["account_id"], r["underlying"], r["move_down"], r["move_up"]) for r in d][0] == (1, "X", 0.0, 0.0)
    assert scan[3]["nearest_move"] == d[1]["move_down"]


@pytest.mark.parametrize("model", MODELS)
def test_many_accounts_match_reference(model):
    """600 accounts near their liquidation level on one underlying (perpetuals, calls, linked
    collateral, borrows): more than the engine's per-thread chunk of accounts, so chunk boundaries
    and the thread count are exercised. Distances, map and the scan's nearest moves all match."""
    import numpy as np

    book, market = _hand_book()
    rng = np.random.default_rng(7)
    pos, bal = [], []
    for a in range(600):
        q = float(rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 5.0))
        pos.append((a, "X-PERP", q))
        if rng.random() < 0.5:
            pos.append((a, "X-CALL", float(rng.uniform(-3.0, 3.0))))
        bal.append((a, "USD", float(abs(q) * 100.0 * rng.uniform(0.03, 0.4))))
        if rng.random() < 0.3:
            bal.append((a, "XCOIN", float(rng.uniform(-0.2, 0.5))))
    positions, balances = _positions(pos), _balances(bal)
    args = (book, positions, balances, market)
    example = {
        "instruments": book.instruments,
        "assets": book.assets,
        "risk_params": None,
        "margin_tiers": None,
        "positions": positions,
        "balances": balances,
        "index_prices": market.index_prices,
        "marks": market.marks,
        "valuation_time_ns": market.valuation_time_ns,
    }
    got = engine_grid(*args, model=model)
    assert got.equals(engine_grid(*args, model=model, threads=3))
    assert (
        compare_distances(
            got, reference.liquidation_distance_grid(*args, model=model), ReferenceWalk(example, model)
        )
        == set()
    )
    exact = me.liquidation_distance(*args, model=model)
    assert exact.equals(me.liquidation_distance(*args, model=model, threads=3))
    for g, w in zip(exact.to_pylist(), reference.liquidation_distance(*args, model=model).to_pylist(), strict=True):
        for name in ("move_down", "move_up"):
            assert (g[name] is None) == (w[name] is None), (g, w)
            assert g[name] is None or abs(g[name] - w[name]) <= 1e-9 * (1.0 + abs(w[name])), (g, w)
    got_map = me.liquidation_map(*args, model=model)
    assert sum(got_map.column("accounts").to_pylist()) > 500
    assert_tables_close(got_map, reference.liquidation_map(*args, model=model))
    scan = me.liquidation_scan(*args, model=model, distance=True)
    want = reference.liquidation_scan(*args, model=model, distance=True)
    assert scan.column("account_id").equals(want.column("account_id"))
    assert scan.column("nearest_underlying").equals(want.column("nearest_underlying"))
    for g, w in zip(
        scan.column("nearest_move").to_pylist(), want.column("nearest_move").to_pylist(), strict=True
    ):
        assert (g is None and w is None) or abs(g - w) <= MOVE_ABS
