"""Liquidation scan, market stress, distance to liquidation and the liquidation map (docs/methodology.md §8).

Everything here is built on the §2–§4 and §6 reference pieces: a stressed market is just another
`BookData` / `MarketData` (moved index prices, marks and linked asset prices), positions netted at
the base market are revalued to it, and an account's margin excess under a move is
`account_result(...)` of that account in the stressed market — the whole account recomputed, no
shortcut. It is slow on purpose: it is the oracle of the engine's incremental grid walk.

Rules (docs/liquidation.md):
- Scan order: status severity (bankrupt, liquidatable, margin_call, healthy), then
  `shortfall = max(0, MM − collateral_maintenance)` descending, then `account_id` ascending.
- Stress `{u: m}`: `S' = S (1 + m)`; perpetual/future marks `× (1 + m)`; option marks
  `max(0, mark + (B76(S') − B76(S)))` at the implied vol and unchanged T; assets linked to `u`:
  `price × (1 + m)`. Linear positions keep their base value plus `q × mult × (mark' − mark)`;
  options are worth `q × mult × mark'`. Margin (either model) in the stressed market.
- Distances (exact, docs/liquidation.md §3): on each side the first crossing of `e(m) = 0` moving
  away from the current price over `m ∈ (−1, 99]`, found on the sample points `axis(side)` (plus,
  when every position in the underlying is linear, the moves where a position's notional meets a
  tier floor) and refined by bisection to 1e-12 of the price; `move_down = move_up = 0` when
  `e_0 < 0`.
- Grid walk (the map, and `liquidation_distance_grid`): `m_j = ±0.005 j`, j = 1..100, first j
  with `e(m_j) < 0`, linear interpolation with the previous point (`e_0` for j = 1).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from ._tables import (
    BalanceRow,
    BookData,
    Instrument,
    MarketData,
    read_balances,
    read_book,
    read_market,
    read_positions,
)
from .black76 import black76_scalar
from .portfolio import RiskArrays
from .results import MARGIN_SCHEMA, AccountResult, Model, account_result, meets
from .valuation import NettedPosition, closed_inverse, closed_pnl, net_positions, notional, years_to_expiry

GRID_STEP = 0.005
"""Distance grid step: 0.5% of the index price."""
GRID_LEVELS = 100
"""Grid points on each side: ±0.5% × 100 = ±50%."""

STATUS_SEVERITY = {"bankrupt": 0, "liquidatable": 1, "margin_call": 2, "healthy": 3}
"""Scan order of the statuses: most severe first."""


def _not_null(schema: pa.Schema, nullable: set[str]) -> pa.Schema:
    """`schema` with every field non-nullable except those named in `nullable` (the engine's
    output schemas mark which columns can hold nulls)."""
    return pa.schema([f.with_nullable(f.name in nullable) for f in schema])


SCAN_SCHEMA = _not_null(MARGIN_SCHEMA.append(pa.field("shortfall", pa.float64())), {"health"})
SCAN_DISTANCE_SCHEMA = SCAN_SCHEMA.append(pa.field("nearest_move", pa.float64())).append(
    pa.field("nearest_underlying", pa.utf8())
)
DISTANCE_SCHEMA = pa.schema(
    [
        pa.field("account_id", pa.uint64(), nullable=False),
        pa.field("underlying", pa.utf8(), nullable=False),
        pa.field("move_down", pa.float64()),
        pa.field("move_up", pa.float64()),
        pa.field("liquidation_price_down", pa.float64()),
        pa.field("liquidation_price_up", pa.float64()),
    ]
)
MAP_SCHEMA = pa.schema(
    [
        pa.field("underlying", pa.utf8(), nullable=False),
        pa.field("level", pa.int32(), nullable=False),
        pa.field("move", pa.float64(), nullable=False),
        pa.field("price", pa.float64()),
        pa.field("accounts", pa.uint64(), nullable=False),
        pa.field("notional", pa.float64(), nullable=False),
        pa.field("collateral", pa.float64(), nullable=False),
        pa.field("cumulative_accounts", pa.uint64(), nullable=False),
        pa.field("cumulative_notional", pa.float64(), nullable=False),
    ]
)


# --------------------------------------------------------------------------------------------
# Stress: a moved market
# --------------------------------------------------------------------------------------------


def grid_move(level: int) -> float:
    """The move of grid level `level` (negative = down): `0.005 × level`."""
    return GRID_STEP * level


def stressed_option_mark(
    instrument: Instrument, mark_price: float, vol: float, time: float, spot: float, moved_spot: float
) -> float:
    """§8 option mark under a move: `max(0, mark + (B76(S') − B76(S)))` at the same implied vol
    and time to expiry (a price never goes negative)."""
    assert instrument.strike is not None
    before = black76_scalar(spot, instrument.strike, time, vol, instrument.is_call)[0]
    after = black76_scalar(moved_spot, instrument.strike, time, vol, instrument.is_call)[0]
    if instrument.is_inverse:
        # a coin mark per coin: to USD at the index, moved by Black-76, back to coin at S'
        return max(0.0, mark_price * spot + (after - before)) / moved_spot
    return max(0.0, mark_price + (after - before))


def stress_market(
    book: BookData, market: MarketData, moves: Mapping[str, float]
) -> tuple[BookData, MarketData]:
    """The book and market with each underlying `u` of `moves` moved by `moves[u]` (§8).

    Index price `S (1 + m)`; perpetual and future marks `mark × (1 + m)`; option marks
    `stressed_option_mark`; collateral assets whose `underlying` is `u`: `price × (1 + m)`.
    Underlyings not in `moves` are unchanged. Returns new `(book, market)` objects; the inputs
    are not modified.
    """
    index_prices = dict(market.index_prices)
    for u, m in moves.items():
        if u in index_prices:
            index_prices[u] = market.index_prices[u] * (1.0 + m)

    marks = dict(market.marks)
    for ins_id, mark in market.marks.items():
        instrument = book.instruments[ins_id]
        if instrument.underlying not in moves:
            continue
        if instrument.is_inverse and moves[instrument.underlying] == 0.0:
            continue  # no move, no change (a coin mark through USD and back could lose a bit)
        if instrument.is_option:
            assert mark.implied_vol is not None
            time = years_to_expiry(instrument.expiry_ns, market.valuation_ns)
            spot = market.index_prices[instrument.underlying]
            price = stressed_option_mark(
                instrument, mark.mark_price, mark.implied_vol, time, spot, index_prices[instrument.underlying]
            )
        else:
            price = mark.mark_price * (1.0 + moves[instrument.underlying])
        marks[ins_id] = dataclasses.replace(mark, mark_price=price)

    assets = [
        dataclasses.replace(a, price=a.price * (1.0 + moves[a.underlying]))
        if a.underlying is not None and a.underlying in moves
        else a
        for a in book.assets
    ]
    stressed_book = dataclasses.replace(book, assets=assets)
    stressed_market = MarketData(index_prices=index_prices, marks=marks, valuation_ns=market.valuation_ns)
    return stressed_book, stressed_market


def revalue(position: NettedPosition, base: MarketData, stressed: MarketData) -> NettedPosition:
    """A position netted (and valued) at the `base` market, carried to the `stressed` market.

    Perpetuals and futures keep their base value (`upnl`, 0 without entry prices) plus the change
    of the mark, `q × multiplier × (mark' − mark)`. Options need nothing: their value is
    `q × multiplier × mark'`, read from the stressed market by `value_account`.
    """
    ins = position.instrument
    if ins.is_option:
        return position
    if ins.is_inverse:
        raise AssertionError("inverse positions are revalued by revalue_inverse (they need the coin price)")
    change = (
        position.quantity
        * ins.multiplier
        * (stressed.marks[ins.id].mark_price - base.marks[ins.id].mark_price)
    )
    return NettedPosition(ins, position.quantity, position.upnl + change)


def revalue_inverse(
    position: NettedPosition, base: MarketData, stressed: MarketData, stressed_book: BookData
) -> NettedPosition:
    """An inverse perpetual or future carried to the stressed market: its coin P&L plus
    `q × multiplier × (1/mark − 1/mark')`, converted at the moved coin price of `stressed_book`.
    Coin-settled options need nothing (`position_pnl` reads the stressed coin mark and price)."""
    ins = position.instrument
    if ins.is_option:
        return position
    coin = position.coin + position.quantity * ins.multiplier * (
        1.0 / base.marks[ins.id].mark_price - 1.0 / stressed.marks[ins.id].mark_price
    )
    return NettedPosition(ins, position.quantity, coin * stressed_book.settlement_price(ins), coin)


class _SharedRiskArrays(RiskArrays):
    """Portfolio risk arrays of a stressed market: recomputed (B76 around S', linear arrays on
    mark') for instruments of a moved underlying, taken from the base market for the others,
    whose arrays the move does not change. Only a speed-up: the numbers are the same."""

    def __init__(self, book: BookData, market: MarketData, base: RiskArrays, moved: set[str]) -> None:
        super().__init__(book, market)
        self._base = base
        self._moved = moved

    def get(self, instrument: Instrument) -> list[float]:
        if instrument.underlying in self._moved:
            return super().get(instrument)
        return self._base.get(instrument)


@dataclass
class Scenario:
    """A market to margin accounts in: the current market, or the current one moved."""

    base: MarketData
    """The current market: positions are netted and valued there, then revalued."""
    book: BookData
    """The book with the scenario's asset prices."""
    market: MarketData
    """The scenario's index prices and marks."""
    arrays: RiskArrays
    """Portfolio risk arrays in the scenario's market."""
    stressed: bool
    """False for the current market itself (no revaluation)."""


class Scenarios:
    """The input book and market, plus every stressed market asked for (cached by moves, so that
    all accounts of a distance walk share a grid point's marks and risk arrays)."""

    def __init__(self, book: BookData, market: MarketData) -> None:
        self.book = book
        self.market = market
        self.base = Scenario(market, book, market, RiskArrays(book, market), stressed=False)
        self._cache: dict[tuple[tuple[str, float], ...], Scenario] = {}

    def moved(self, moves: Mapping[str, float]) -> Scenario:
        """The scenario of `moves` ({underlying: relative move}); `{}` is a stressed scenario
        with nothing moved (positions are still revalued, which changes nothing)."""
        key = tuple(sorted(moves.items()))
        scenario = self._cache.get(key)
        if scenario is None:
            book, market = stress_market(self.book, self.market, moves)
            arrays = _SharedRiskArrays(book, market, self.base.arrays, set(moves))
            scenario = Scenario(self.market, book, market, arrays, stressed=True)
            self._cache[key] = scenario
        return scenario


def positions_in(scenario: Scenario, positions: list[NettedPosition]) -> list[NettedPosition]:
    """An account's positions, netted at the base market, carried to `scenario` (`revalue`d when
    it is a stressed one; as they are in the current market)."""
    if scenario.stressed:
        return [
            revalue_inverse(p, scenario.base, scenario.market, scenario.book)
            if p.instrument.is_inverse
            else revalue(p, scenario.base, scenario.market)
            for p in positions
        ]
    return positions


def account_in(
    scenario: Scenario,
    account_id: int,
    positions: list[NettedPosition],
    balances: list[BalanceRow],
    model: Model,
    closed: float = 0.0,
    closed_coins: Sequence[tuple[Instrument, float]] = (),
    orders: list[Any] | None = None,
) -> AccountResult:
    """§6 row of one account in `scenario`: positions netted at the base market, revalued to the
    scenario's marks, margined (§3 / §4) and collateral valued (§2.5, stressed asset prices) in
    the scenario's market. `closed` is the P&L of its positions that netted to 0 (no move
    changes it); `closed_coins` that of its inverse ones, in coin (valued at the scenario's coin
    prices)."""
    return account_result(
        account_id,
        positions_in(scenario, positions),
        balances,
        scenario.book,
        scenario.market,
        model,
        scenario.arrays,
        closed=closed,
        closed_coins=closed_coins,
        orders=orders,
    )


# --------------------------------------------------------------------------------------------
# Inputs per account
# --------------------------------------------------------------------------------------------


@dataclass
class Accounts:
    """The book, market and each account's netted positions and balances, in account-id order."""

    book: BookData
    market: MarketData
    ids: list[int]
    positions: dict[int, list[NettedPosition]]
    balances: dict[int, list[BalanceRow]]
    closed: dict[int, float]
    """P&L of positions that netted to 0, per account (`valuation.closed_pnl`)."""
    closed_coins: dict[int, list[tuple[Instrument, float]]] = dataclasses.field(default_factory=dict)
    """Coin P&L of inverse positions that netted to 0, per account (`valuation.closed_inverse`)."""
    orders: dict[int, list[Any]] = field(default_factory=dict)
    """Resting orders per account (`orders.read_orders`); they add to initial margin only."""

    def row_in(self, scenario: Scenario, account_id: int, model: Model) -> AccountResult:
        """`account_in` of one of these accounts."""
        return account_in(
            scenario,
            account_id,
            self.positions.get(account_id, []),
            self.balances.get(account_id, []),
            model,
            self.closed.get(account_id, 0.0),
            self.closed_coins.get(account_id, ()),
            self.orders.get(account_id),
        )


def read_accounts(book: Any, positions: Any, balances: Any, market: Any, orders: Any = None) -> Accounts:
    """Read the inputs and net positions at the base market (§2.1)."""
    bd = read_book(book)
    md = read_market(market, bd)
    rows = read_positions(positions, bd)
    netted = net_positions(rows, bd, md)
    by_account: dict[int, list[BalanceRow]] = {}
    for row in read_balances(balances, bd):
        by_account.setdefault(row.account_id, []).append(row)
    from .orders import read_orders

    orders_by_account = read_orders(orders, bd)
    ids = sorted(set(netted) | set(by_account) | set(orders_by_account))
    return Accounts(bd, md, ids, netted, by_account, closed_pnl(rows, bd, md), closed_inverse(rows, bd, md), orders_by_account)


def _check_model(model: str) -> None:
    if model not in ("standard", "portfolio"):
        raise ValueError(f"unknown model {model!r}: expected 'standard' or 'portfolio'")


def _check_stress(book: BookData, stress: Mapping[str, float]) -> dict[str, float]:
    """Stress moves as floats; unknown underlyings and moves that are not finite or not above
    −100% are errors (as in the engine)."""
    moves: dict[str, float] = {}
    for underlying, move in stress.items():
        name = str(underlying)
        m = float(move)
        if name not in book.underlyings:
            raise ValueError(f"stress: unknown underlying {name!r}")
        if not (m > -1.0 and m < float("inf")):
            raise ValueError(f"stress: move of {name!r} must be finite and > -1, got {m}")
        moves[name] = m
    return moves


def scenario_of(accounts: Accounts, stress: Mapping[str, float] | None) -> Scenario:
    """The market a scan or a plan works in: the current one, or the current one under `stress`."""
    scenarios = Scenarios(accounts.book, accounts.market)
    return scenarios.base if stress is None else scenarios.moved(_check_stress(accounts.book, stress))


# --------------------------------------------------------------------------------------------
# Distance to liquidation
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DistanceRow:
    """One account × underlying of the distance walk (§8), with what the map needs."""

    account_id: int
    underlying: str
    move_down: float | None
    move_up: float | None
    level_down: int | None
    """Grid level j (1..100) of the first point below maintenance going down; 0 when the account
    is liquidatable already; None when it never crosses."""
    level_up: int | None
    notional: float
    """`Σ |q| × multiplier × mark` over the account's netted positions in this underlying, at the
    current market."""
    collateral_maintenance: float
    """The account's maintenance collateral at the current market."""
    method: str = "grid"
    """How the moves were found: "grid" (the walk), "closed_form" / "bracketed" (exact roots),
    "liquidatable" (below maintenance now)."""


def exposed_underlyings(
    positions: list[NettedPosition], balances: list[BalanceRow], book: BookData
) -> list[str]:
    """The underlyings an account is exposed to: those of its netted (non-zero) positions and
    those linked to assets it holds a non-zero amount of; sorted by name."""
    names = {p.instrument.underlying for p in positions}
    for row in balances:
        linked = book.assets[row.asset_id].underlying
        if linked is not None and row.amount != 0.0:
            names.add(linked)
    return sorted(names)


ROUNDING = 1e-12
"""Relative size of the rounding in a margin excess (a sum and difference of values, margins
and scenario losses, each exact to a few ulps: about 1e-15 of the account's size), with room."""


def rounding_level(current: AccountResult, exposure: float) -> float:
    """How far below 0 an excess must go to count as a crossing: `ROUNDING × (|collateral_maintenance|
    + maintenance_margin + notional)` of the account now and the underlying moved. An excess that
    rests on 0 to rounding (a long-options-only account: its maintenance margin is all the value it
    can lose) has no liquidation price."""
    return ROUNDING * (abs(current.collateral_maintenance) + abs(current.maintenance_margin) + abs(exposure))


def walk(base_excess: float, side: int, level: float, excess_at: Any) -> tuple[float | None, int | None]:
    """One side of the walk (`side` −1 = down, +1 = up). `excess_at(j)` is the margin excess
    under the move `side × 0.005 j`.

    Already liquidatable (`e_0 < 0`): move 0 at level 0. Otherwise the first j = 1..100 with
    `e_j < −level` (below 0 by more than rounding) gives `m* = m_{j−1} + (m_j − m_{j−1}) × e_{j−1}
    / (e_{j−1} − e_j)`, with `level` added to both excesses when `e_{j−1} < 0` (an excess resting
    on 0, then falling); no crossing up to ±50%: `(None, None)`.
    """
    if base_excess < 0.0:
        return 0.0, 0
    previous = base_excess
    for j in range(1, GRID_LEVELS + 1):
        e = excess_at(j)
        if e < -level:
            shift = 0.0 if previous >= 0.0 else level
            ea, eb = previous + shift, e + shift
            m_a = side * grid_move(j - 1)
            m_b = side * grid_move(j)
            return m_a + (m_b - m_a) * ea / (ea - eb), j
        previous = e
    return None, None


def account_distances(
    account_id: int,
    positions: list[NettedPosition],
    balances: list[BalanceRow],
    scenarios: Scenarios,
    model: Model,
    closed: float = 0.0,
    closed_coins: Sequence[tuple[Instrument, float]] = (),
) -> list[DistanceRow]:
    """Distance rows of one account, one per exposed underlying (sorted by name)."""
    book = scenarios.book
    current = account_in(scenarios.base, account_id, positions, balances, model, closed, closed_coins)
    base_excess = current.margin_excess
    rows: list[DistanceRow] = []
    for u in exposed_underlyings(positions, balances, book):

        def excess_at(j: int, side: int, u: str = u) -> float:
            scenario = scenarios.moved({u: side * grid_move(j)})
            return account_in(scenario, account_id, positions, balances, model, closed, closed_coins).margin_excess

        exposure = 0.0
        for p in positions:
            if p.instrument.underlying == u:
                exposure += notional(p, scenarios.market.marks[p.instrument.id].mark_price, book)
        level = rounding_level(current, exposure)
        move_down, level_down = walk(base_excess, -1, level, lambda j: excess_at(j, -1))
        move_up, level_up = walk(base_excess, 1, level, lambda j: excess_at(j, 1))
        rows.append(
            DistanceRow(
                account_id,
                u,
                move_down,
                move_up,
                level_down,
                level_up,
                exposure,
                current.collateral_maintenance,
            )
        )
    return rows


def _all_distances(accounts: Accounts, model: Model, per_account: Any = None) -> list[DistanceRow]:
    """Distance rows of every account, by account id then underlying name: the grid walk's
    (`account_distances`), or `per_account`'s (e.g. `account_roots`)."""
    scenarios = Scenarios(accounts.book, accounts.market)
    rows: list[DistanceRow] = []
    for account in accounts.ids:
        rows.extend(
            (per_account or account_distances)(
                account,
                accounts.positions.get(account, []),
                accounts.balances.get(account, []),
                scenarios,
                model,
                accounts.closed.get(account, 0.0),
                accounts.closed_coins.get(account, ()),
            )
        )
    return rows


def nearest(rows: list[DistanceRow]) -> tuple[float, str] | None:
    """An account's nearest liquidation: over its rows (underlying-name order), move_down then
    move_up of each, the move of smallest magnitude; a later move replaces the best only when
    strictly smaller, so ties keep the earlier one. None without any move."""
    best: tuple[float, str] | None = None
    for row in rows:
        for m in (row.move_down, row.move_up):
            if m is not None and (best is None or abs(m) < abs(best[0])):
                best = (m, row.underlying)
    return best


def scan_nearest(current: AccountResult, rows: list[DistanceRow]) -> tuple[float, str | None] | None:
    """`nearest_move` and `nearest_underlying` of the scan for one account (`current`: its row at
    the current market, `rows`: its distance rows). An account below maintenance now
    (`e_0 < 0`, the walk's level 0) gets move 0 and no underlying: no move of one underlying is
    what liquidates it, it is liquidatable as it stands (whether or not it is exposed to any).
    Otherwise `nearest(rows)`."""
    if current.margin_excess < 0.0:
        return 0.0, None
    return nearest(rows)


def liquidation_price(spot: float, move: float | None) -> float | None:
    """`S × (1 + move)`, null when the move is, or when the underlying has no index price (one
    known only through linked collateral)."""
    if move is None or math.isnan(spot):
        return None
    return spot * (1.0 + move)


def liquidation_distance_grid(
    book: Any,
    positions: Any,
    balances: Any,
    market: Any,
    *,
    model: Model = "standard",
    threads: int | None = None,
) -> pa.Table:
    """The grid walk's distances (§8, the former `liquidation_distance`): one row per account ×
    exposed underlying, sorted by account id then underlying name: `account_id, underlying,
    move_down, move_up, liquidation_price_down, liquidation_price_up`. `threads` is ignored."""
    del threads
    _check_model(model)
    accounts = read_accounts(book, positions, balances, market)
    return _distance_table(accounts, _all_distances(accounts, model))


def _distance_table(accounts: Accounts, rows: list[DistanceRow]) -> pa.Table:
    columns: dict[str, list[Any]] = {name: [] for name in DISTANCE_SCHEMA.names}
    for row in rows:
        spot = accounts.market.index_prices.get(row.underlying, math.nan)
        columns["account_id"].append(row.account_id)
        columns["underlying"].append(row.underlying)
        columns["move_down"].append(row.move_down)
        columns["move_up"].append(row.move_up)
        columns["liquidation_price_down"].append(liquidation_price(spot, row.move_down))
        columns["liquidation_price_up"].append(liquidation_price(spot, row.move_up))
    return pa.table(columns, schema=DISTANCE_SCHEMA)


# --------------------------------------------------------------------------------------------
# Exact liquidation prices (docs/liquidation.md §3)
# --------------------------------------------------------------------------------------------

MAX_MOVE_UP = 99.0
"""Largest move up: 100× the index price."""
NEAR_STEP = 0.01
NEAR_STEPS = 10
MIDDLE_STEP = 0.025
MIDDLE_STEPS = 8
OUTER_STEP = 0.15
"""Relative price step of the sample axis beyond ±30% (near it: 1% steps to ±10%, 2.5% to ±30%)."""
LOWEST_RATIO = 1e-3
"""Lowest sampled price ratio above 0 on the way down (then `LAST_DOWN`)."""
LAST_DOWN = -1.0 + 1e-12
"""The last sample down: 1e-12 of the price, not 0 (an inverse contract's coin P&L is unbounded there)."""
BISECTION_TOLERANCE = 1e-12
"""Width of the final bisection bracket, relative to the price ratio `1 + m`."""

PRICES_SCHEMA = pa.schema(
    [
        pa.field("account_id", pa.uint64(), nullable=False),
        pa.field("underlying", pa.utf8(), nullable=False),
        pa.field("index_price", pa.float64()),
        pa.field("liquidation_price_down", pa.float64()),
        pa.field("liquidation_price_up", pa.float64()),
        pa.field("move_down", pa.float64()),
        pa.field("move_up", pa.float64()),
        pa.field("method", pa.utf8(), nullable=False),
    ]
)


def axis(side: int, model: str = "standard") -> list[float]:
    """Sample moves of one side, outward: `side × 0.01 j` (j = 1..10), `side × (0.10 + 0.025 j)`
    (j = 1..8), then price ratios `1.3 × 1.15^k` below 100 and 100 itself (up), or `0.7 × 0.85^k`
    above 0.001 and then 1e-12 of the price (down), each ratio the previous one times the factor (the engine's
    arithmetic, so both sample the same points). The portfolio model's axis is denser inside
    ±50%: `side × 0.005 j` (j = 1..100), then the same outer ratios from 1.5 / 0.5 on (its worst
    loss over scenarios can dip below maintenance within a few percent of the price)."""
    if model == "portfolio":
        out = [side * GRID_STEP * j for j in range(1, GRID_LEVELS + 1)]
        r = 1.0 + side * GRID_STEP * GRID_LEVELS
    else:
        out = [side * NEAR_STEP * j for j in range(1, NEAR_STEPS + 1)]
        near = NEAR_STEP * NEAR_STEPS
        out.extend(side * (near + MIDDLE_STEP * j) for j in range(1, MIDDLE_STEPS + 1))
        r = 1.0 + side * (near + MIDDLE_STEP * MIDDLE_STEPS)
    factor = 1.0 + side * OUTER_STEP
    while True:
        r *= factor
        if (side > 0 and r >= 1.0 + MAX_MOVE_UP) or (side < 0 and r <= LOWEST_RATIO):
            break
        out.append(r - 1.0)
    out.append(MAX_MOVE_UP if side > 0 else LAST_DOWN)
    return out


def tier_breakpoints(
    positions: list[NettedPosition], book: BookData, market: MarketData, side: int
) -> list[float]:
    """Moves on one side (inside the axis) where a position's notional `|q| × mult × mark ×
    (1 + m)` meets one of its tier floors: between two of them a linear book's excess is linear
    in the price."""
    out: set[float] = set()
    for p in positions:
        if p.instrument.is_inverse:
            continue  # 1/price P&L: bracketed on the axis, as the engine does
        notional_now = notional(p, market.marks[p.instrument.id].mark_price)
        if not notional_now > 0.0:
            continue
        for tier in book.tiers.get(p.instrument.id, []):
            m = tier.notional_floor / notional_now - 1.0
            if (side > 0 and 0.0 < m < MAX_MOVE_UP) or (side < 0 and -1.0 < m < 0.0):
                out.add(m)
    return sorted(out, key=abs)


def first_root(e0: float, points: list[float], level: float, excess_at: Any) -> float | None:
    """The first crossing below 0 along `points` (outward from 0, `e(0) = e0 >= 0`): the first
    point with `e < −level` (below 0 by more than rounding) and the previous one bracket it,
    bisected until the bracket is narrower than 1e-12 of the price ratio; the answer is the zero
    of the straight line through the last bracket's ends. When the previous point is itself a
    little below 0 (an excess resting on 0, then falling) the zero sought is that of `e + level`.
    None when `e >= −level` at every point."""
    a, ea = 0.0, e0
    for b in points:
        eb = excess_at(b)
        if eb < -level:
            shift = 0.0 if ea >= 0.0 else level
            ea, eb = ea + shift, eb + shift
            for _ in range(400):
                if abs(b - a) <= max(BISECTION_TOLERANCE * (1.0 + min(a, b)), 1e-16):
                    break
                c = 0.5 * (a + b)
                ec = excess_at(c) + shift
                if ec < 0.0:
                    b, eb = c, ec
                else:
                    a, ea = c, ec
            # the zero of the line through the last bracket's ends (inside it; exact on a line)
            root = a + (b - a) * ea / (ea - eb)
            return min(max(root, min(a, b)), max(a, b))
        a, ea = b, eb
    return None


def _moved(scenarios: Scenarios, u: str, m: float, cache: bool) -> Scenario:
    """The scenario of `u` moved by `m`: cached for the axis points every account shares, built
    afresh for the bisection points of one account."""
    if cache:
        return scenarios.moved({u: m})
    book, market = stress_market(scenarios.book, scenarios.market, {u: m})
    arrays = _SharedRiskArrays(book, market, scenarios.base.arrays, {u})
    return Scenario(scenarios.market, book, market, arrays, stressed=True)


def level_of(move: float | None) -> int | None:
    """Grid level of an exact move: `ceil(|m| / 0.005)` (at least 1), None beyond ±50%."""
    if move is None:
        return None
    j = max(1, math.ceil(abs(move) / GRID_STEP))
    return j if j <= GRID_LEVELS else None


def account_roots(
    account_id: int,
    positions: list[NettedPosition],
    balances: list[BalanceRow],
    scenarios: Scenarios,
    model: Model,
    closed: float = 0.0,
    closed_coins: Sequence[tuple[Instrument, float]] = (),
) -> list[DistanceRow]:
    """Exact distance rows of one account, one per exposed underlying (sorted by name): the whole
    account recomputed in the market with that underlying moved, at every point tried."""
    book = scenarios.book
    current = account_in(scenarios.base, account_id, positions, balances, model, closed, closed_coins)
    e0 = current.margin_excess
    rows: list[DistanceRow] = []
    for u in exposed_underlyings(positions, balances, book):
        in_u = [p for p in positions if p.instrument.underlying == u]
        linear = all(not p.instrument.is_option for p in in_u)
        exposure = sum(notional(p, scenarios.market.marks[p.instrument.id].mark_price, book) for p in in_u)
        level = rounding_level(current, exposure)
        if e0 < 0.0:
            moves: tuple[float | None, float | None] = (0.0, 0.0)
            method = "liquidatable"
        else:
            sides = []
            for side in (-1, 1):
                points = axis(side, model)
                cached = set(points)
                if linear and model == "standard":
                    points = sorted(set(points) | set(tier_breakpoints(in_u, book, scenarios.market, side)), key=abs)

                def excess_at(m: float, u: str = u, cached: set[float] = cached) -> float:
                    scenario = _moved(scenarios, u, m, m in cached)
                    return account_in(scenario, account_id, positions, balances, model, closed, closed_coins).margin_excess

                sides.append(first_root(e0, points, level, excess_at))
            moves = (sides[0], sides[1])
            method = "closed_form" if linear else "bracketed"
        rows.append(
            DistanceRow(
                account_id,
                u,
                moves[0],
                moves[1],
                0 if method == "liquidatable" else level_of(moves[0]),
                0 if method == "liquidatable" else level_of(moves[1]),
                exposure,
                current.collateral_maintenance,
                method,
            )
        )
    return rows


def _all_roots(accounts: Accounts, model: Model) -> list[DistanceRow]:
    """Exact distance rows of every account, by account id then underlying name."""
    return _all_distances(accounts, model, account_roots)


def liquidation_distance(
    book: Any,
    positions: Any,
    balances: Any,
    market: Any,
    *,
    model: Model = "standard",
    threads: int | None = None,
) -> pa.Table:
    """Distance to liquidation (§8), exact: one row per account × exposed underlying, sorted by
    account id then underlying name: `account_id, underlying, move_down, move_up,
    liquidation_price_down, liquidation_price_up`. `threads` is ignored."""
    del threads
    _check_model(model)
    accounts = read_accounts(book, positions, balances, market)
    return _distance_table(accounts, _all_roots(accounts, model))


def liquidation_prices(
    book: Any,
    positions: Any,
    balances: Any,
    market: Any,
    *,
    model: Model = "standard",
    threads: int | None = None,
) -> pa.Table:
    """Exact liquidation prices: the rows of `liquidation_distance` as `account_id, underlying,
    index_price, liquidation_price_down, liquidation_price_up, move_down, move_up, method`.
    `threads` is ignored."""
    del threads
    _check_model(model)
    accounts = read_accounts(book, positions, balances, market)
    columns: dict[str, list[Any]] = {name: [] for name in PRICES_SCHEMA.names}
    for row in _all_roots(accounts, model):
        spot = accounts.market.index_prices.get(row.underlying, math.nan)
        columns["account_id"].append(row.account_id)
        columns["underlying"].append(row.underlying)
        columns["index_price"].append(None if math.isnan(spot) else spot)
        columns["liquidation_price_down"].append(liquidation_price(spot, row.move_down))
        columns["liquidation_price_up"].append(liquidation_price(spot, row.move_up))
        columns["move_down"].append(row.move_down)
        columns["move_up"].append(row.move_up)
        columns["method"].append(row.method)
    return pa.table(columns, schema=PRICES_SCHEMA)


# --------------------------------------------------------------------------------------------
# Liquidation scan
# --------------------------------------------------------------------------------------------


def shortfall(result: AccountResult) -> float:
    """`max(0, MM − collateral_maintenance)`, and 0 for an account that meets maintenance within
    the status tolerance (`results.meets`): its status says it is not short."""
    if meets(result.collateral_maintenance, result.maintenance_margin):
        return 0.0
    return max(0.0, result.maintenance_margin - result.collateral_maintenance)


def scan_key(result: AccountResult) -> tuple[int, float, int]:
    """Scan order: status severity, then shortfall descending, then account id ascending."""
    return STATUS_SEVERITY[result.status], -shortfall(result), result.account_id


def liquidation_scan(
    book: Any,
    positions: Any,
    balances: Any,
    market: Any,
    *,
    orders: Any = None,
    model: Model = "standard",
    stress: Mapping[str, float] | None = None,
    distance: bool = False,
    threads: int | None = None,
) -> pa.Table:
    """The liquidation scan (§8): the §6 columns plus `shortfall`, in scan order.

    With `stress`, every account is margined in the stressed market. With `distance=True` (only
    without stress: distances are measured from the current market) two more columns,
    `nearest_move` and `nearest_underlying` (`scan_nearest`: 0 and null for an account
    liquidatable already). `threads` is ignored.
    """
    del threads
    _check_model(model)
    if distance and stress is not None:
        raise ValueError(
            "liquidation_scan: distance=True is measured from the current market; pass stress=None"
        )
    accounts = read_accounts(book, positions, balances, market, orders)
    scenario = scenario_of(accounts, stress)

    results = [
        accounts.row_in(scenario, a, model)
        for a in accounts.ids
    ]
    nearest_by_account: dict[int, tuple[float, str | None] | None] = {}
    if distance:
        by_account: dict[int, list[DistanceRow]] = {}
        for row in _all_roots(accounts, model):
            by_account.setdefault(row.account_id, []).append(row)
        # distance=True is refused under stress: `results` are the rows at the current market
        nearest_by_account = {
            r.account_id: scan_nearest(r, by_account.get(r.account_id, [])) for r in results
        }

    schema = SCAN_DISTANCE_SCHEMA if distance else SCAN_SCHEMA
    columns: dict[str, list[Any]] = {name: [] for name in schema.names}
    for result in sorted(results, key=scan_key):
        for name in MARGIN_SCHEMA.names:
            columns[name].append(getattr(result, name))
        columns["shortfall"].append(shortfall(result))
        if distance:
            best = nearest_by_account[result.account_id]
            columns["nearest_move"].append(None if best is None else best[0])
            columns["nearest_underlying"].append(None if best is None else best[1])
    return pa.table(columns, schema=schema)


# --------------------------------------------------------------------------------------------
# Liquidation map
# --------------------------------------------------------------------------------------------


@dataclass
class _Cell:
    accounts: int = 0
    notional: float = 0.0
    collateral: float = 0.0


def liquidation_map(
    book: Any,
    positions: Any,
    balances: Any,
    market: Any,
    *,
    model: Model = "standard",
    threads: int | None = None,
) -> pa.Table:
    """The liquidation map (§8): for each underlying of the book (sorted) and grid level
    −100..100, the accounts whose first crossing on that side is at that level (level 0: the
    accounts liquidatable already), their notional in the underlying and their maintenance
    collateral; cumulative accounts and notional run from level 0 outward on each side (level 0
    counted on both). `threads` is ignored."""
    del threads
    _check_model(model)
    accounts = read_accounts(book, positions, balances, market)
    levels = range(-GRID_LEVELS, GRID_LEVELS + 1)
    cells = {u: {level: _Cell() for level in levels} for u in accounts.book.underlyings}

    def add(row: DistanceRow, level: int) -> None:
        cell = cells[row.underlying][level]
        cell.accounts += 1
        cell.notional += row.notional
        cell.collateral += row.collateral_maintenance

    for row in _all_distances(accounts, model):
        if row.level_down == 0 or row.level_up == 0:
            add(row, 0)
            continue
        if row.level_down is not None:
            add(row, -row.level_down)
        if row.level_up is not None:
            add(row, row.level_up)

    columns: dict[str, list[Any]] = {name: [] for name in MAP_SCHEMA.names}
    for u in accounts.book.underlyings:
        by_level = cells[u]
        cum_accounts = {0: by_level[0].accounts}
        cum_notional = {0: by_level[0].notional}
        for k in range(1, GRID_LEVELS + 1):
            for level, inner in ((k, k - 1), (-k, -(k - 1))):
                cum_accounts[level] = cum_accounts[inner] + by_level[level].accounts
                cum_notional[level] = cum_notional[inner] + by_level[level].notional
        spot = accounts.market.index_prices.get(u, math.nan)
        for level in levels:
            move = grid_move(level)
            columns["underlying"].append(u)
            columns["level"].append(level)
            columns["move"].append(move)
            columns["price"].append(None if math.isnan(spot) else spot * (1.0 + move))
            columns["accounts"].append(by_level[level].accounts)
            columns["notional"].append(by_level[level].notional)
            columns["collateral"].append(by_level[level].collateral)
            columns["cumulative_accounts"].append(cum_accounts[level])
            columns["cumulative_notional"].append(cum_notional[level])
    return pa.table(columns, schema=MAP_SCHEMA)
