"""The public API: :class:`Book`, :class:`Market` and the functions over them.

Every function takes tables as anything that speaks the Arrow PyCapsule interface and returns a
``pyarrow.Table``. The work runs in Rust with the GIL released, in parallel over accounts;
``threads`` picks the number of worker threads (default: all cores) and never changes a result.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal, NamedTuple

import numpy as np
import pyarrow as pa

from margin_engine import _core
from margin_engine._inputs import (
    arrow_input,
    arrow_table,
    check_choice,
    check_flag,
    check_instance,
    check_model,
    check_number,
    check_threads,
    input_error,
    timestamp_ns,
)

Model = Literal["standard", "portfolio"]


class Book:
    """Instruments, collateral assets, portfolio risk parameters and margin tiers, validated
    once and reusable across calls (METHODOLOGY §1).

    >>> import pyarrow as pa, margin_engine as me
    >>> instruments = pa.table({"instrument": ["BTC-PERP"], "kind": ["perpetual"],
    ...     "underlying": ["BTC"], "multiplier": [1.0],
    ...     "expiry": pa.array([None], pa.timestamp("ns", "UTC")),
    ...     "initial_margin_rate": [0.02], "maintenance_margin_rate": [0.01]})
    >>> assets = pa.table({"asset": ["USD"], "price": [1.0], "initial_weight": [1.0],
    ...     "maintenance_weight": [1.0], "initial_liability_weight": [1.0],
    ...     "maintenance_liability_weight": [1.0]})
    >>> me.Book(instruments, assets).underlyings
    ['BTC']
    """

    def __init__(self, instruments: Any, assets: Any, risk_params: Any = None, margin_tiers: Any = None):
        self.instruments: pa.Table = arrow_table(instruments, "instruments")
        self.assets: pa.Table = arrow_table(assets, "assets")
        self.risk_params: pa.Table | None = None if risk_params is None else arrow_table(risk_params, "risk_params")
        self.margin_tiers: pa.Table | None = (
            None if margin_tiers is None else arrow_table(margin_tiers, "margin_tiers")
        )
        self._core = _core.Book(self.instruments, self.assets, self.risk_params, self.margin_tiers)

    @property
    def underlyings(self) -> list[str]:
        """Underlying names, in id (sorted) order."""
        return list(self._core.underlyings)

    def __repr__(self) -> str:
        return (
            f"Book({self.instruments.num_rows} instruments, {self.assets.num_rows} assets, "
            f"underlyings={self.underlyings})"
        )


class Market:
    """Index prices, marks (with implied vols; optionally supplied Greeks) and the valuation time.

    ``valuation_time`` may be a datetime (naive = UTC), numpy datetime64, pandas Timestamp, ISO
    string or integer nanoseconds since the epoch.
    """

    def __init__(self, index_prices: Any, marks: Any, valuation_time: Any):
        self.index_prices: pa.Table = arrow_table(index_prices, "index_prices")
        self.marks: pa.Table = arrow_table(marks, "marks")
        self.valuation_time_ns: int = timestamp_ns(valuation_time)
        self._core = _core.Market(self.index_prices, self.marks, self.valuation_time_ns)

    def __repr__(self) -> str:
        return f"Market({self.index_prices.num_rows} index prices, {self.marks.num_rows} marks)"


def _table(result: Any) -> pa.Table:
    return pa.table(result)


def _checked(book: Any, market: Any, model: Any = "standard", threads: Any = None) -> tuple[Any, Any, str, int | None]:
    """The core objects of ``book`` and ``market``, and the checked ``model`` and ``threads``."""
    check_instance(book, Book, "book")
    check_instance(market, Market, "market")
    return book._core, market._core, check_model(model), check_threads(threads)


def margin(
    book: Book, positions: Any, balances: Any, market: Market, model: Model = "standard", threads: int | None = None
) -> pa.Table:
    """Margin of every account in positions or balances (METHODOLOGY §2–§4, §6).

    Returns one row per account, sorted by ``account_id``: ``equity, collateral_initial,
    collateral_maintenance, initial_margin, maintenance_margin, free_collateral, margin_excess,
    health, status``. Raises :class:`MarginInputError` on bad input.
    """
    core_book, core_market, model, threads = _checked(book, market, model, threads)
    return _table(
        _core.margin(
            core_book, core_market, arrow_input(positions, "positions"), arrow_input(balances, "balances"), model, threads
        )
    )


def greeks(book: Book, positions: Any, market: Market, threads: int | None = None) -> pa.Table:
    """Greeks per account × underlying (METHODOLOGY §7): ``delta, delta_usd, gamma, gamma_usd,
    vega, theta, long_notional, short_notional``."""
    core_book, core_market, _, threads = _checked(book, market, "standard", threads)
    return _table(_core.greeks(core_book, core_market, arrow_input(positions, "positions"), threads))


def _stress_pairs(stress: Any) -> list[tuple[str, float]] | None:
    if stress is None:
        return None
    if not isinstance(stress, dict):
        raise input_error("stress", "*", f"expected a dict {{underlying: move}}, got {type(stress).__name__}")
    pairs = []
    for underlying, move in stress.items():
        if isinstance(move, bool):
            raise input_error("stress", "move", "not a number", [f"{underlying!r} = {move!r}"])
        try:
            pairs.append((str(underlying), float(move)))
        except (TypeError, ValueError, OverflowError) as e:
            raise input_error("stress", "move", "not a number", [f"{underlying!r} = {move!r}"]) from e
    return pairs


def liquidation_scan(
    book: Book,
    positions: Any,
    balances: Any,
    market: Market,
    model: Model = "standard",
    stress: dict[str, float] | None = None,
    distance: bool = False,
    threads: int | None = None,
) -> pa.Table:
    """The liquidation scan (METHODOLOGY §8): the §6 columns plus ``shortfall``
    (``max(0, MM − collateral_maintenance)``), sorted bankrupt, liquidatable, margin call,
    healthy, then by shortfall descending.

    ``stress={"BTC": -0.2}`` first moves BTC's index price, marks (options repriced with
    Black-76) and BTC-linked collateral by −20%. ``distance=True`` adds ``nearest_move`` and
    ``nearest_underlying``: the smallest move of one underlying that makes the account liquidatable.
    """
    core_book, core_market, model, threads = _checked(book, market, model, threads)
    distance = check_flag(distance, "distance")
    if distance and stress is not None:
        raise input_error("arguments", "distance", "distance=True is measured from the current market; pass stress=None")
    return _table(
        _core.liquidation_scan(
            core_book,
            core_market,
            arrow_input(positions, "positions"),
            arrow_input(balances, "balances"),
            model,
            _stress_pairs(stress),
            distance,
            threads,
        )
    )


def liquidation_distance(
    book: Book, positions: Any, balances: Any, market: Market, model: Model = "standard", threads: int | None = None
) -> pa.Table:
    """Distance to liquidation per account × underlying it is exposed to (METHODOLOGY §8):
    ``move_down, move_up`` (relative moves of that underlying alone, interpolated on a 0.5% grid
    out to ±50%; null if never reached) and the matching ``liquidation_price_down/up``."""
    core_book, core_market, model, threads = _checked(book, market, model, threads)
    return _table(
        _core.liquidation_distance(
            core_book, core_market, arrow_input(positions, "positions"), arrow_input(balances, "balances"), model, threads
        )
    )


def liquidation_map(
    book: Book, positions: Any, balances: Any, market: Market, model: Model = "standard", threads: int | None = None
) -> pa.Table:
    """The liquidation map of the whole book: for each underlying and grid level (−50%..+50% in
    0.5% steps), how many accounts first become liquidatable there, with their notional in the
    underlying and their maintenance collateral (plus cumulative columns, from the current price
    outward). Level 0 counts the accounts liquidatable already."""
    core_book, core_market, model, threads = _checked(book, market, model, threads)
    return _table(
        _core.liquidation_map(
            core_book, core_market, arrow_input(positions, "positions"), arrow_input(balances, "balances"), model, threads
        )
    )


@dataclasses.dataclass(frozen=True)
class LiquidationPlan:
    """The outcome of liquidating every account below maintenance (docs/liquidation.md).

    ``closes``: one row per position closed (fully or partially), in each account's order;
    ``accounts``: one row per liquidated account, before and after, with fees, deficit, what the
    insurance fund covered and the bad debt; ``underlyings``: closed notional and bad debt per
    underlying; ``adl``: auto-deleveraging queues (opposite side, in profit, ranked by
    profit ratio × leverage) for underlyings left with bad debt.
    """

    closes: pa.Table
    accounts: pa.Table
    underlyings: pa.Table
    adl: pa.Table
    liquidator_fees: float
    insurance_fees: float
    insurance_fund_after: float


def liquidation_plan(
    book: Book,
    positions: Any,
    balances: Any,
    market: Market,
    model: Model = "standard",
    liquidation_fee: float = 0.01,
    liquidator_share: float = 0.5,
    buffer: float = 0.0,
    insurance_fund: float = 0.0,
    stress: dict[str, float] | None = None,
    threads: int | None = None,
) -> LiquidationPlan:
    """Liquidation plans for every liquidatable or bankrupt account: positions closed at mark
    in order of maintenance margin freed per unit of notional (partial closes allowed) until
    ``collateral_maintenance >= (1 + buffer) × MM``; a fee of ``liquidation_fee`` × closed
    notional (``liquidator_share`` to the liquidator, the rest to the insurance fund); deficits of
    bankrupt accounts drawn from ``insurance_fund``, the rest reported as bad debt. With
    ``stress``, the plan is made in the moved market (as in :func:`liquidation_scan`)."""
    core_book, core_market, model, threads = _checked(book, market, model, threads)
    closes, accounts, underlyings, adl, liq_fees, ins_fees, fund_after = _core.liquidation_plan(
        core_book,
        core_market,
        arrow_input(positions, "positions"),
        arrow_input(balances, "balances"),
        model,
        check_number(liquidation_fee, "liquidation_fee", 0.0, 0.999999),
        check_number(liquidator_share, "liquidator_share", 0.0, 1.0),
        check_number(buffer, "buffer", 0.0),
        check_number(insurance_fund, "insurance_fund", 0.0),
        _stress_pairs(stress),
        threads,
    )
    return LiquidationPlan(_table(closes), _table(accounts), _table(underlyings), _table(adl), liq_fees, ins_fees, fund_after)


def optimal_hedge(
    book: Book,
    positions: Any,
    balances: Any,
    market: Market,
    hedge_instruments: list[str],
    model: Model = "portfolio",
    objective: Literal["maintenance", "initial"] = "maintenance",
    threads: int | None = None,
) -> pa.Table:
    """The minimum-margin hedge of every account in each hedge instrument's underlying
    (docs/optimization.md): one row per account × hedge instrument with ``account_id,
    underlying, hedge_instrument, quantity`` (contracts to add), ``margin_before, margin_after``
    (the account's margin of that objective without / with that one hedge) and
    ``delta_neutral_quantity`` for comparison. Under the portfolio model the optimum is exact (the
    margin is a maximum of affine functions of the hedge quantity); under the standard model it
    closes the account's existing position in the hedge instrument."""
    core_book, core_market, model, threads = _checked(book, market, model, threads)
    objective = check_choice(objective, "objective", ("maintenance", "initial"))
    if not isinstance(hedge_instruments, (list, tuple)) or not all(
        isinstance(h, (str, int)) and not isinstance(h, bool) for h in hedge_instruments
    ):
        raise input_error("hedge_instruments", "instrument", f"expected a list of instrument keys, got {hedge_instruments!r}")
    return _table(
        _core.optimal_hedge(
            core_book,
            core_market,
            arrow_input(positions, "positions"),
            arrow_input(balances, "balances"),
            [str(h) for h in hedge_instruments],
            model,
            objective,
            threads,
        )
    )


def risk_arrays(book: Book, market: Market) -> pa.Table:
    """The per-contract scenario P&L of every instrument with a mark (METHODOLOGY §4), one row
    per instrument × scenario: ``instrument, underlying, scenario, move, vol_state, extreme, pnl``."""
    core_book, core_market, _, _ = _checked(book, market)
    return _table(_core.risk_arrays(core_book, core_market))


class Black76(NamedTuple):
    """Black-76 price and Greeks per contract (vega per vol point, theta per calendar day)."""

    price: np.ndarray
    delta: np.ndarray
    gamma: np.ndarray
    vega: np.ndarray
    theta: np.ndarray


def _is_call(x: Any) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind in "US":
        lowered = np.char.lower(a.astype(str))
        if not np.isin(lowered, ["call", "put"]).all():
            raise ValueError("is_call: strings must be 'call' or 'put'")
        return lowered == "call"
    return a.astype(bool)


def black76(forward: Any, strike: Any, time: Any, vol: Any, is_call: Any) -> Black76:
    """Vectorized Black-76 (r = 0, forward = index price; METHODOLOGY §5), broadcasting numpy-style.

    >>> import margin_engine as me
    >>> round(float(me.black76(100.0, 100.0, 1.0, 0.2, True).price), 6)
    7.965567
    """
    f, k, t, v, c = np.broadcast_arrays(
        np.asarray(forward, dtype=np.float64),
        np.asarray(strike, dtype=np.float64),
        np.asarray(time, dtype=np.float64),
        np.asarray(vol, dtype=np.float64),
        _is_call(is_call),
    )
    shape = f.shape
    flat = [np.ascontiguousarray(a.reshape(-1)) for a in (f, k, t, v, c)]
    out = _core.black76(*flat)
    return Black76(*(np.asarray(a).reshape(shape) for a in out))


AccountMargin = _core.AccountMargin
WhatIf = _core.WhatIf


def what_if(
    book: Book,
    account_positions: Any,
    account_balances: Any,
    market: Market,
    trades: Any,
    model: Model = "standard",
) -> WhatIf:
    """One account's margin before and after ``trades``: the pre-trade check of order entry.

    ``account_positions`` and ``trades`` are a dict ``{instrument: quantity}``, a list of
    ``(instrument, quantity[, price])`` tuples (``entry_price`` for positions, the trade price
    for trades; ``None`` or absent means the mark), or an Arrow table with those columns.
    ``account_balances`` is a dict ``{asset: amount}``, ``(asset, amount)`` tuples or a table.
    Any argument may be ``None`` (nothing).

    Built for one account: no table conversion, no thread pool, the market resolved once per
    (book, market) pair and cached on the market. The result has ``before`` and ``after``
    (:class:`AccountMargin`: equity, collateral, IM, MM, free collateral, margin excess, health,
    status), ``trade_pnl`` (``Σ quantity × multiplier × (mark − price)``, in ``after``),
    ``initial_margin_change``, ``maintenance_margin_change`` and ``accepted`` (free collateral
    ≥ 0 after the trade, or the trade reduces risk: IM does not rise and free collateral does not
    fall).

    With the one-perpetual book of :class:`Book`'s example (IM rate 2%), an index and mark of
    50,000, one BTC-PERP held and 2,000 USD (``tests/test_what_if.py`` checks these numbers)::

        w = me.what_if(book, {"BTC-PERP": 1.0}, {"USD": 2_000.0}, market, [("BTC-PERP", 1.0, 49_000.0)])
        w.before.initial_margin, w.after.initial_margin  # (1000.0, 2000.0)
        w.trade_pnl, w.after.free_collateral, w.accepted  # (1000.0, 1000.0, True): bought 1,000 below the mark
    """
    if not isinstance(book, Book) or not isinstance(market, Market):
        check_instance(book, Book, "book")
        check_instance(market, Market, "market")
    return _core.what_if(book._core, market._core, account_positions, account_balances, trades, model)
