"""Exact liquidation prices (docs/liquidation.md §3): `me.liquidation_prices`, and
`me.liquidation_distance` now exact over the whole price axis.

- Differential: the engine's roots (closed form on linear books, Illinois-refined brackets where
  options are held) against the reference twin (`reference.liquidation.account_roots`: the whole
  account recomputed at every point, bisection to 1e-12 of the price), both models, on
  hypothesis books with options, tiers and linked collateral.
- Each root is a root: the engine's own stressed scan at the root has an excess of ~0, and at
  points strictly between the current price and the root an excess >= 0 (the first crossing).
- Exact against the grid walk on linear books: within the grid's interpolation error.
- Published formulas: Binance USDⓈ-M cross liquidation price with tiered maintenance amounts.
- Thread-count invariance; hand-worked roots beyond the former ±50% limit.
"""

from __future__ import annotations

import math
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from conftest import engine_objects, record_event
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import log_uniform, reference_objects
from test_liquidation import _args, near_books

import margin_engine as me
from margin_engine import _core, api, reference
from margin_engine.reference import liquidation as ref_liq

MODELS = ["standard", "portfolio"]
PRICE_REL = 1e-8
"""Roots compared as prices (`1 + move`), relative: both are refined to 1e-10 or better."""
NOISE = 1e-9
"""Rounding noise allowed in a margin excess, relative to the account's gross size."""


def grid_distance(book: Any, positions: Any, balances: Any, market: Any, model: str = "standard") -> pa.Table:
    """The former grid walk, kept as `_core.liquidation_distance_grid`."""
    return api._per_account(_core.liquidation_distance_grid, book, positions, balances, market, model, None, "arrow")


class ReferenceExcess:
    """The reference's margin excess of one account with one underlying moved by any `m`, and the
    rounding noise to allow for it."""

    def __init__(self, example: dict[str, Any], model: str) -> None:
        book, market = reference_objects(example)
        self.accounts = ref_liq.read_accounts(book, example["positions"], example["balances"], market)
        self.scenarios = ref_liq.Scenarios(self.accounts.book, self.accounts.market)
        self.model = model

    def __call__(self, account: int, underlying: str, m: float) -> tuple[float, float]:
        scenario = self.scenarios.base if m == 0.0 else ref_liq._moved(self.scenarios, underlying, m, cache=False)
        result = self.accounts.row_in(scenario, account, self.model)  # type: ignore[arg-type]
        gross = result.maintenance_margin + abs(result.collateral_maintenance) + abs(self.accounts.closed.get(account, 0.0))
        for b in self.accounts.balances.get(account, []):
            gross += abs(b.amount * scenario.book.assets[b.asset_id].price)
        for p in self.accounts.positions.get(account, []):
            gross += abs(p.quantity * p.instrument.multiplier * scenario.market.marks[p.instrument.id].mark_price) + abs(p.upnl)
        return result.margin_excess, NOISE * max(gross, 1.0)


def root_explained(excess: ReferenceExcess, account: int, u: str, side: int, m: float | None) -> bool:
    """Does the reference accept `m` as the first crossing on `side`, within rounding noise? At
    `m` the excess is ~0 and at the axis points strictly inside (0, m) it is not below -noise;
    `None`: not below -noise at any axis point."""
    points = ref_liq.axis(side)
    if m is None:
        return all(excess(account, u, x)[0] >= -excess(account, u, x)[1] for x in points)
    if m == 0.0:
        e, tol = excess(account, u, 0.0)
        return e <= tol
    e, tol = excess(account, u, m)
    if abs(e) > tol * 10:
        # a steep crossing: the root is within 1e-10 of the price, so the excess is within
        # the slope times that
        e_near, _ = excess(account, u, m - side * 1e-9 * (1.0 + m))
        e_far, _ = excess(account, u, m + side * 1e-9 * (1.0 + m))
        if not (e_near >= -tol and e_far <= tol):
            return False
    return all(excess(account, u, x)[0] >= -excess(account, u, x)[1] for x in points if abs(x) < abs(m))


def same_root(g: float | None, w: float | None) -> bool:
    if g is None or w is None:
        return g is None and w is None
    return abs((1.0 + g) - (1.0 + w)) <= PRICE_REL * max(1.0 + w, 1e-6) or abs(g - w) <= 1e-12


# --------------------------------------------------------------------------------------------
# Differential and properties
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", MODELS)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_exact_roots_match_the_reference_twin(model, data):
    example = data.draw(near_books(model=model))
    args = _args(example)
    got = me.liquidation_prices(*args, model=model)
    want = reference.liquidation_prices(*args, model=model)
    assert got.schema == want.schema
    g_rows, w_rows = got.to_pylist(), want.to_pylist()
    assert [(r["account_id"], r["underlying"]) for r in g_rows] == [(r["account_id"], r["underlying"]) for r in w_rows]
    excess = ReferenceExcess(example, model)
    for g, w in zip(g_rows, w_rows, strict=True):
        assert g["method"] == w["method"] or "liquidatable" in (g["method"], w["method"]), (g, w)
        for side, name in ((-1, "down"), (1, "up")):
            gm, wm = g[f"move_{name}"], w[f"move_{name}"]
            if gm is not None:
                assert side * gm >= 0.0 and -1.0 < gm <= 99.0
                assert (g[f"liquidation_price_{name}"] is None) == (g["index_price"] is None)
                if g["index_price"] is not None:
                    assert math.isclose(g[f"liquidation_price_{name}"], g["index_price"] * (1.0 + gm), rel_tol=1e-12)
            if same_root(gm, wm):
                if gm not in (None, 0.0):
                    record_event(f"exact {g['method']}: root compared")
                continue
            # only where the excess touches 0 within rounding noise may they differ
            assert root_explained(excess, g["account_id"], g["underlying"], side, gm), (
                g, w, side, [(x, excess(g["account_id"], g["underlying"], x)) for x in ref_liq.axis(side)
                             if excess(g["account_id"], g["underlying"], x)[0] < -excess(g["account_id"], g["underlying"], x)[1]][:3])
            record_event("exact: ambiguous root accepted (excess within rounding noise of 0)")


@pytest.mark.parametrize("model", MODELS)
@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_each_root_is_the_first_crossing_in_the_engines_own_stressed_margin(model, data):
    """At each root the engine's stressed scan (the whole account margined in the moved market)
    has an excess of ~0, and at points strictly between the current price and the root one
    >= 0: the root is the first crossing. Also: the thread count changes nothing."""
    example = data.draw(near_books(model=model))
    args = _args(example)
    table = me.liquidation_prices(*args, model=model)
    assert me.liquidation_prices(*args, model=model, threads=1).equals(table)
    assert me.liquidation_distance(*args, model=model, threads=1).equals(me.liquidation_distance(*args, model=model))
    excess = ReferenceExcess(example, model)
    checked = 0
    for r in table.to_pylist():
        if r["method"] == "liquidatable" or checked >= 4:
            continue
        for side, name in ((-1, "down"), (1, "up")):
            m = r[f"move_{name}"]
            if m is None or m == 0.0 or m <= -1.0 + 1e-9:
                continue
            scan = {x["account_id"]: x for x in me.liquidation_scan(*args, model=model, stress={r["underlying"]: m}).to_pylist()}
            e = scan[r["account_id"]]["margin_excess"]
            _, tol = excess(r["account_id"], r["underlying"], m)
            # within noise, or within the slope × 1e-10 of the price for a steep crossing
            inside = [f * m for f in (0.25, 0.5, 0.9, 0.999)]
            for x in inside:
                at = {y["account_id"]: y for y in me.liquidation_scan(*args, model=model, stress={r["underlying"]: x}).to_pylist()}
                assert at[r["account_id"]]["margin_excess"] >= -tol, (r, x, at[r["account_id"]])
            e_before = {y["account_id"]: y for y in me.liquidation_scan(*args, model=model, stress={r["underlying"]: m - side * 1e-8 * (1 + m)}).to_pylist()}
            slope_room = abs(e_before[r["account_id"]]["margin_excess"] - e) * 100.0
            assert abs(e) <= max(tol, slope_room), (r, e, tol)
            checked += 1


@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_exact_agrees_with_the_grid_walk_on_linear_books(data):
    """Perpetuals and futures only (tiers, linked collateral): where the grid walk finds a
    crossing, the exact root is no farther out, in the same grid cell or an earlier one, and within
    one step; without tier floors in the cell, the two agree to rounding (linear interpolation of
    a linear piece is exact)."""
    for model in MODELS:
        example = data.draw(near_books(model=model, linear=True))
        args = _args(example)
        exact = me.liquidation_prices(*args, model=model).to_pylist()
        grid = grid_distance(*args, model=model).to_pylist()
        assert [(r["account_id"], r["underlying"]) for r in exact] == [(r["account_id"], r["underlying"]) for r in grid]
        for e, g in zip(exact, grid, strict=True):
            assert e["method"] in ("closed_form", "liquidatable")
            for name in ("down", "up"):
                em, gm = e[f"move_{name}"], g[f"move_{name}"]
                if gm is None:
                    assert em is None or abs(em) > 0.5 - 1e-12 or abs(em) < 0.5, (e, g)
                    continue
                assert em is not None, (e, g)
                assert abs(em) <= abs(gm) + 1e-9 * (1 + abs(gm)), (e, g)
                assert abs(em - gm) <= ref_liq.GRID_STEP + 1e-12, (e, g)
                if abs(em - gm) <= 1e-9:
                    record_event("exact vs grid: equal to rounding")
                else:
                    record_event("exact vs grid: differ within a grid step (a tier floor in the cell)")


# --------------------------------------------------------------------------------------------
# Hand-worked roots and the method column
# --------------------------------------------------------------------------------------------


def _book(tiers: pa.Table | None = None, option: bool = False) -> tuple[me.Book, me.Market]:
    names = ["X-PERP"] + (["X-C"] if option else [])
    instruments = pa.table(
        {
            "instrument": names,
            "kind": ["perpetual"] + (["option"] if option else []),
            "underlying": ["X"] * len(names),
            "multiplier": [1.0] * len(names),
            "expiry": pa.array([None] + ([1_800_000_000_000_000_000] if option else []), pa.timestamp("ns")),
            "strike": [None] + ([100.0] if option else []),
            "option_type": [None] + (["call"] if option else []),
            "initial_margin_rate": [0.10] * len(names),
            "maintenance_margin_rate": [0.05] * len(names),
            "initial_margin_floor": [None] + ([0.05] if option else []),
        }
    )
    assets = pa.table(
        {
            "asset": ["USD"], "price": [1.0], "initial_weight": [1.0], "maintenance_weight": [1.0],
            "initial_liability_weight": [1.0], "maintenance_liability_weight": [1.0],
        }
    )
    book = me.Book(instruments, assets, None, tiers)
    marks = {"instrument": names, "mark_price": [100.0] + ([10.0] if option else [])}
    if option:
        marks["implied_vol"] = [None, 0.8]
    market = me.Market(pa.table({"underlying": ["X"], "index_price": [100.0]}), pa.table(marks), 1_700_000_000_000_000_000)
    return book, market


def _rows(positions: list[tuple[int, str, float, float | None]], balances: list[tuple[int, float]]) -> tuple[pa.Table, pa.Table]:
    p = pa.table(
        {
            "account_id": pa.array([r[0] for r in positions], pa.uint64()),
            "instrument": [r[1] for r in positions],
            "quantity": [r[2] for r in positions],
            "entry_price": pa.array([r[3] for r in positions], pa.float64()),
        }
    )
    b = pa.table({"account_id": pa.array([r[0] for r in balances], pa.uint64()), "asset": ["USD"] * len(balances), "amount": [r[1] for r in balances]})
    return p, b


def test_roots_beyond_fifty_percent_and_no_root_on_the_axis():
    """e(m) = 80 + 100 m − 5 (1 + m) for a long of 1 at 100 (MMR 5%) with 80 USD: the root
    m = −75/95, beyond the former ±50% grid. A short of 1 with 1,000 USD: 995 − 105 m, root
    m = 995/105 (price ≈ 1,047.6, inside 100× the index). A long with 101 USD never reaches
    maintenance: at price 0 it still has 1 USD: null."""
    book, market = _book()
    positions, balances = _rows([(1, "X-PERP", 1.0, None), (2, "X-PERP", -1.0, None), (3, "X-PERP", 1.0, None)], [(1, 80.0), (2, 1000.0), (3, 101.0)])
    for impl in (me, reference):
        rows = impl.liquidation_prices(book if impl is me else book, positions, balances, market).to_pylist()
        assert [r["method"] for r in rows] == ["closed_form"] * 3
        assert rows[0]["move_down"] == pytest.approx(-75.0 / 95.0, rel=1e-12)
        assert rows[0]["liquidation_price_down"] == pytest.approx(100.0 * (1 - 75.0 / 95.0), rel=1e-12)
        assert rows[0]["move_up"] is None
        assert rows[1]["move_up"] == pytest.approx(995.0 / 105.0, rel=1e-12)
        assert rows[1]["move_down"] is None
        assert rows[2]["move_down"] is None and rows[2]["move_up"] is None
    grid = grid_distance(book, positions, balances, market).to_pylist()
    assert grid[0]["move_down"] is None  # the grid stops at −50%


def test_a_root_across_tier_floors_in_closed_form():
    """Brackets 0: 5%, 150: 10% (cum 7.5), 300: 20% (cum 37.5) on a short of 1 at 100 with 60 USD:
    e(P) = 60 − (P − 100) − MM(P). At P = 150: 60 − 50 − 7.5 = 2.5 >= 0; in the 10% bracket the
    root solves 160 − P − (0.1 P − 7.5) = 0: P = 167.5 / 1.1."""
    tiers = pa.table(
        {"instrument": ["X-PERP"] * 2, "notional_floor": [150.0, 300.0], "initial_margin_rate": [0.2, 0.4], "maintenance_margin_rate": [0.1, 0.2]}
    )
    book, market = _book(tiers)
    positions, balances = _rows([(1, "X-PERP", -1.0, 100.0)], [(1, 60.0)])
    for impl in (me, reference):
        (row,) = impl.liquidation_prices(book, positions, balances, market).to_pylist()
        assert row["liquidation_price_up"] == pytest.approx(167.5 / 1.1, rel=1e-12)
        assert row["method"] == "closed_form"


def test_options_are_bracketed_and_accounts_below_maintenance_are_marked():
    book, market = _book(option=True)
    positions, balances = _rows([(1, "X-C", -1.0, None), (1, "X-PERP", 0.5, None), (2, "X-PERP", 1.0, None)], [(1, 40.0), (2, 1.0)])
    rows = me.liquidation_prices(book, positions, balances, market).to_pylist()
    assert [r["method"] for r in rows] == ["bracketed", "liquidatable"]
    assert rows[1]["move_down"] == rows[1]["move_up"] == 0.0
    up = rows[0]["move_up"]
    assert up is not None and up > 0.0
    scan = me.liquidation_scan(book, positions, balances, market, stress={"X": up}).to_pylist()
    e = next(r for r in scan if r["account_id"] == 1)["margin_excess"]
    assert abs(e) <= 1e-6, e
    want = reference.liquidation_prices(book, positions, balances, market).to_pylist()
    assert want[0]["move_up"] == pytest.approx(up, rel=1e-9)


def _generated_option_accounts() -> tuple[me.Book, me.Market, pa.Table, pa.Table]:
    """Accounts found on the 1M-account generated book (seed 7) under the portfolio model, on the
    same instruments and market: long options and nothing else (no balance). Account 4 adds a
    short perpetual and 500 USD, so it has a real crossing up."""
    from margin_engine import synthetic

    b = synthetic.generate(200, seed=7)
    book = me.Book(b.instruments, b.assets, None, b.margin_tiers)
    market = me.Market(b.index_prices, b.marks, b.valuation_time_ns)
    rows = [
        (1, "ETH-27NOV26-3600-P", 15.0),  # 4732687772 on the 1M book
        (2, "ETH-11DEC26-2750-C", 63.0),  # 6000515401
        (3, "BTC-25DEC26-86000-C", 2.0),  # 6653734329
        (4, "ETH-27NOV26-3600-P", 15.0),
        (4, "ETH-PERP", -1.0),
    ]
    positions = pa.table(
        {
            "account_id": pa.array([r[0] for r in rows], pa.uint64()),
            "instrument": [r[1] for r in rows],
            "quantity": [r[2] for r in rows],
            "entry_price": pa.array([None] * len(rows), pa.float64()),
        }
    )
    balances = pa.table({"account_id": pa.array([4], pa.uint64()), "asset": ["USDC"], "amount": [500.0]})
    return book, market, positions, balances


def test_an_excess_resting_on_zero_is_not_a_crossing():
    """A long-options-only account without collateral under the portfolio model: its maintenance
    margin is the whole value it can lose, so its excess is the option's value in the worst
    scenario, which tends to 0 as the option goes out of the money, and along the axis the engine
    computes it as ±1e-13 (the difference of two equal sums). Taking the first sample that rounds
    below 0 as the liquidation price showed a liquidation price for an account that can never be
    liquidated (0.30875 up for account 1, -0.5625 for account 3; the grid walk had its own noise
    roots). No crossing, in the engine, the grid walk and the reference; a real crossing next to
    it (account 4) is still found, and is a root of the stressed margin."""
    book, market, positions, balances = _generated_option_accounts()
    exact = me.liquidation_prices(book, positions, balances, market, model="portfolio").to_pylist()
    grid = grid_distance(book, positions, balances, market, "portfolio").to_pylist()
    want = reference.liquidation_prices(book, positions, balances, market, model="portfolio").to_pylist()
    for rows in (exact, grid, want):
        for r in rows[:3]:
            assert r["move_down"] is None and r["move_up"] is None, r
    up = exact[3]["move_up"]
    assert up is not None and 0.0 < up
    assert same_root(up, want[3]["move_up"])
    (moved,) = me.liquidation_scan(book, positions, balances, market, model="portfolio", stress={"ETH": up}).filter(pc.equal(pc.field("account_id"), 4)).to_pylist()
    assert abs(moved["margin_excess"]) <= 1e-6, moved


# --------------------------------------------------------------------------------------------
# Binance USDⓈ-M: cross-margin liquidation price with tiered maintenance amounts
# --------------------------------------------------------------------------------------------


def binance_maintenance_amounts(brackets: list[tuple[float, float]]) -> list[float]:
    """Binance's maintenance amount per bracket, as its FAQ gives it ("Maintenance Amount on Level
    n = Floor of Position Bracket on Level n × (MMR on Level n − MMR on Level n−1) + Maintenance
    Amount on Level n−1", 0 on level 1)."""
    cum = [0.0]
    for n in range(1, len(brackets)):
        cum.append(brackets[n][0] * (brackets[n][1] - brackets[n - 1][1]) + cum[n - 1])
    return cum


def binance_cross_lp(wb: float, tmm1: float, upnl1: float, side: int, position: float, entry: float, mmr: float, cum: float) -> float:
    """Binance FAQ "How to Calculate Liquidation Price of USDⓈ-M Futures Contracts"
    (https://www.binance.com/en/support/faq/b3c689c1f50a44cabb3a84e663b81d93), cross margin,
    one-way mode (only the BOTH position):
    `LP = (WB − TMM1 + UPNL1 + cumB − Side1BOTH × Position1BOTH × EP1BOTH) /
    (Position1BOTH × MMR_B − Side1BOTH × Position1BOTH)`."""
    return (wb - tmm1 + upnl1 + cum - side * position * entry) / (position * mmr - side * position)


@settings(max_examples=200, deadline=None)
@given(
    floors=st.lists(log_uniform(1e3, 1e7), min_size=1, max_size=5, unique=True),
    rates=st.lists(st.floats(0.004, 0.1), min_size=6, max_size=6),
    side=st.sampled_from([1, -1]),
    position=log_uniform(0.01, 100.0),
    entry=log_uniform(100.0, 1e5),
    mark_ratio=st.floats(0.8, 1.25),
    leverage=st.floats(2.0, 100.0),
    other=st.tuples(st.floats(-3.0, 3.0), log_uniform(1e-3, 1.0), st.floats(0.8, 1.25)),
)
def test_binance_usdm_cross_liquidation_price(floors, rates, side, position, entry, mark_ratio, leverage, other):
    """Our `margin_tiers` are Binance's brackets: a bracket's maintenance margin is `notional ×
    MMR − cum` (docs/methodology.md §3), and our cum (book.rs `Tiers::new`: `cum_n = cum_{n−1} +
    floor_n (mmr_n − mmr_{n−1})`) is Binance's maintenance amount. So for an account holding
    contract 1 (X, the BOTH position) and another contract (Y, giving TMM1 and UPNL1), with its
    wallet balance WB in USDT, the exact root of the excess is Binance's LP, evaluated with the
    bracket of the position's notional at LP (Binance's note: "substitute the maintenance margin
    rate and the maintenance margin amount of the position level at the liquidation price")."""
    floors = sorted(floors)
    mmrs = sorted(rates[: len(floors) + 1])
    brackets = [(0.0, mmrs[0])] + [(f, m) for f, m in zip(floors, mmrs[1:], strict=False)]
    cum = binance_maintenance_amounts(brackets)
    mark = entry * mark_ratio
    notional_now = position * mark
    # WB: at the margin of the leverage, so the LP is near; others: a position in Y
    y_q, y_size, y_mark_ratio = other
    y_entry = 1000.0
    y_mark = y_entry * y_mark_ratio
    wb = notional_now / leverage + abs(y_q) * y_size * y_mark * 0.05
    instruments = pa.table(
        {
            "instrument": ["X-PERP", "Y-PERP"], "kind": ["perpetual"] * 2, "underlying": ["X", "Y"],
            "multiplier": [1.0, y_size], "initial_margin_rate": [0.2, 0.1], "maintenance_margin_rate": [mmrs[0], 0.05],
        }
    )
    tiers = pa.table(
        {
            "instrument": ["X-PERP"] * len(floors), "notional_floor": floors,
            "initial_margin_rate": [0.5] * len(floors), "maintenance_margin_rate": mmrs[1 : len(floors) + 1],
        }
    )
    assets = pa.table(
        {
            "asset": ["USDT"], "price": [1.0], "initial_weight": [1.0], "maintenance_weight": [1.0],
            "initial_liability_weight": [1.0], "maintenance_liability_weight": [1.0],
        }
    )
    book = me.Book(instruments, assets, None, tiers)
    market = me.Market(
        pa.table({"underlying": ["X", "Y"], "index_price": [mark, y_mark]}),
        pa.table({"instrument": ["X-PERP", "Y-PERP"], "mark_price": [mark, y_mark]}),
        1_700_000_000_000_000_000,
    )
    y_qty = y_q if y_q != 0.0 else 1.0
    positions = pa.table(
        {
            "account_id": pa.array([1, 1], pa.uint64()), "instrument": ["X-PERP", "Y-PERP"],
            "quantity": [side * position, y_qty], "entry_price": [entry, y_entry],
        }
    )
    balances = pa.table({"account_id": pa.array([1], pa.uint64()), "asset": ["USDT"], "amount": [wb]})
    rows = {r["underlying"]: r for r in me.liquidation_prices(book, positions, balances, market).to_pylist()}
    x = rows["X"]
    if x["method"] == "liquidatable":
        return
    tmm1 = abs(y_qty) * y_size * y_mark * 0.05
    upnl1 = y_qty * y_size * (y_mark - y_entry)
    lp = x["liquidation_price_down"] if side > 0 else x["liquidation_price_up"]
    if lp is None:
        # no root on the axis: then the account survives price 0 (long) or 100× (short)
        end = {"X": -1.0 + 1e-12 if side > 0 else 99.0}
        scan = me.liquidation_scan(book, positions, balances, market, stress=end).to_pylist()
        assert scan[0]["margin_excess"] >= -1e-9 * wb
        return
    k = max(i for i, (floor, _) in enumerate(brackets) if floor <= position * lp * (1 + 1e-12))
    want = binance_cross_lp(wb, tmm1, upnl1, side, position, entry, brackets[k][1], cum[k])
    if abs(position * lp - brackets[k][0]) <= 1e-9 * position * lp and k > 0:
        # the root sits on a floor: both brackets give it
        alt = binance_cross_lp(wb, tmm1, upnl1, side, position, entry, brackets[k - 1][1], cum[k - 1])
        assert min(abs(lp - want), abs(lp - alt)) <= 1e-9 * lp
        return
    assert lp == pytest.approx(want, rel=1e-9), (lp, want, k, brackets, cum)
    record_event(f"binance LP reproduced in bracket {k}")


# --------------------------------------------------------------------------------------------
# Book methodologies: the whole account margined at each point
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("preset,model", [("exchange", "portfolio"), ("derive_pmrm2", "portfolio")])
def test_roots_under_a_scenario_methodology_are_roots_of_the_stressed_margin(preset, model):
    """Formerly refused (issue #13): under a scenario methodology the roots come from the whole
    account margined in the moved market. Each is checked with the engine's own stressed scan:
    excess ~0 at the root, >= 0 strictly inside, thread-count invariant."""
    from margin_engine import synthetic

    g = synthetic.generate(40, seed=3)
    # a dozen accounts, and the book cut down to the instruments they hold (the moved markets of
    # the axis points are whole markets)
    accounts = sorted(set(g.positions.column("account_id").to_pylist()))[:12]
    positions = g.positions.filter(pc.is_in(g.positions.column("account_id"), pa.array(accounts, pa.uint64())))
    balances = g.balances.filter(pc.is_in(g.balances.column("account_id"), pa.array(accounts, pa.uint64())))
    names = set(positions.column("instrument").to_pylist())
    def keep(t: pa.Table) -> pa.Table:
        return t.filter(pa.array([k in names for k in t.column("instrument").to_pylist()], pa.bool_()))
    instruments = keep(g.instruments)
    tiers = None if g.margin_tiers is None else keep(g.margin_tiers)
    book = me.Book(instruments, g.assets, None, tiers, methodology=preset)
    market = me.Market(g.index_prices, g.marks, g.valuation_time_ns)
    args = (book, positions, balances, market)
    table = me.liquidation_prices(*args, model=model)
    assert me.liquidation_prices(*args, model=model, threads=1).equals(table)
    rows = table.to_pylist()
    assert rows and {r["method"] for r in rows} <= {"bracketed", "liquidatable"}
    margin = {r["account_id"]: r for r in me.margin(*args, model=model).to_pylist()}
    checked = 0
    for r in rows:
        if r["method"] == "liquidatable":
            assert margin[r["account_id"]]["margin_excess"] < 0.0
            continue
        for side, name in ((-1, "down"), (1, "up")):
            m = r[f"move_{name}"]
            if m is None or m <= -1.0 + 1e-9 or checked >= 12:
                continue
            def excess(x: float) -> float:
                scan = me.liquidation_scan(*args, model=model, stress={r["underlying"]: x}).to_pylist()
                return next(y for y in scan if y["account_id"] == r["account_id"])["margin_excess"]
            gross = abs(margin[r["account_id"]]["collateral_maintenance"]) + margin[r["account_id"]]["maintenance_margin"] + 1.0
            e = excess(m)
            e_before = excess(m - side * 1e-8 * (1 + m))
            assert abs(e) <= max(1e-9 * gross, 100 * abs(e_before - e)), (r, e, e_before)
            for f in (0.5, 0.99):
                assert excess(f * m) >= -1e-9 * gross, (r, f)
            checked += 1
    assert checked > 0
