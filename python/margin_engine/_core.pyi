"""Type stubs of the compiled module (thin pyo3 bindings over the Rust core).

These are the compiled functions' own signatures (``#[pyo3(signature = ...)]`` in
``rust/margin-py``), which take the book and the market first: ``(book, market, positions,
balances, ...)``, every argument positional-or-keyword. The public API (``margin_engine.api``)
takes ``(book, positions, balances, market, *, options...)`` and checks its arguments before it
calls these. ``tests/test_api_surface.py`` checks that this file matches the compiled module.

Tables come back as Arrow tables of the ``arro3`` package (any object with
``__arrow_c_stream__``); ``margin_engine.api`` turns them into ``pyarrow.Table``.
"""

from typing import Any, Protocol

import numpy as np

__version__: str

class _ArrowStream(Protocol):
    def __arrow_c_stream__(self, requested_schema: object | None = None) -> object: ...

class MarginInputError(ValueError):
    """Bad input: names the table, the column and up to 10 offending keys or rows."""

    table: str
    column: str
    problem: str
    offenders: list[str]
    count: int

class Book:
    def __init__(
        self,
        instruments: Any,
        assets: Any,
        risk_params: Any | None = None,
        margin_tiers: Any | None = None,
        methodology: dict[str, Any] | None = None,
    ) -> None: ...
    @property
    def methodology_name(self) -> str: ...
    @property
    def underlyings(self) -> list[str]: ...
    @property
    def num_instruments(self) -> int: ...

class Market:
    def __init__(self, index_prices: Any, marks: Any, valuation_time_ns: int, expiry_feeds: Any | None = None) -> None: ...
    @property
    def valuation_time_ns(self) -> int: ...

def margin(
    book: Book,
    market: Market,
    positions: Any,
    balances: Any,
    model: str = "standard",
    threads: int | None = None,
    orders: Any | None = None,
) -> _ArrowStream: ...
def greeks(book: Book, market: Market, positions: Any, threads: int | None = None) -> _ArrowStream: ...
def risk_arrays(book: Book, market: Market) -> _ArrowStream: ...
def scenario_losses(
    book: Book, market: Market, positions: Any, balances: Any, threads: int | None = None
) -> _ArrowStream: ...
def black76(
    forward: np.ndarray, strike: np.ndarray, time: np.ndarray, vol: np.ndarray, is_call: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]: ...
def liquidation_scan(
    book: Book,
    market: Market,
    positions: Any,
    balances: Any,
    model: str = "standard",
    stress: list[tuple[str, float]] | None = None,
    distance: bool = False,
    threads: int | None = None,
    orders: Any | None = None,
) -> _ArrowStream: ...
def liquidation_distance(
    book: Book, market: Market, positions: Any, balances: Any, model: str = "standard", threads: int | None = None
) -> _ArrowStream: ...
def liquidation_distance_grid(
    book: Book, market: Market, positions: Any, balances: Any, model: str = "standard", threads: int | None = None
) -> _ArrowStream: ...
def liquidation_prices(
    book: Book, market: Market, positions: Any, balances: Any, model: str = "standard", threads: int | None = None
) -> _ArrowStream: ...
def liquidation_map(
    book: Book, market: Market, positions: Any, balances: Any, model: str = "standard", threads: int | None = None
) -> _ArrowStream: ...
def liquidation_plan(
    book: Book,
    market: Market,
    positions: Any,
    balances: Any,
    model: str = "standard",
    liquidation_fee: float = 0.01,
    liquidator_share: float = 0.5,
    buffer: float = 0.0,
    insurance_fund: float = 0.0,
    stress: list[tuple[str, float]] | None = None,
    threads: int | None = None,
) -> tuple[_ArrowStream, _ArrowStream, _ArrowStream, _ArrowStream, float, float, float]: ...
def isolated_margin(
    book: Book,
    market: Market,
    positions: Any,
    balances: Any,
    model: str = "standard",
    maintenance_basis: str = "mark",
    threads: int | None = None,
) -> _ArrowStream: ...
def optimal_hedge(
    book: Book,
    market: Market,
    positions: Any,
    balances: Any,
    hedge_instruments: list[str],
    model: str = "portfolio",
    objective: str = "maintenance",
    threads: int | None = None,
) -> _ArrowStream: ...

class AccountMargin:
    """One account's valuation and margin (the columns of ``margin``)."""

    @property
    def equity(self) -> float: ...
    @property
    def collateral_initial(self) -> float: ...
    @property
    def collateral_maintenance(self) -> float: ...
    @property
    def initial_margin(self) -> float: ...
    @property
    def maintenance_margin(self) -> float: ...
    @property
    def free_collateral(self) -> float: ...
    @property
    def margin_excess(self) -> float: ...
    @property
    def health(self) -> float | None: ...
    @property
    def status(self) -> str: ...

class WhatIf:
    """One account before and after trades."""

    @property
    def before(self) -> AccountMargin: ...
    @property
    def after(self) -> AccountMargin: ...
    @property
    def trade_pnl(self) -> float: ...
    @property
    def premium(self) -> float: ...
    @property
    def accepted(self) -> bool: ...
    @property
    def initial_margin_change(self) -> float: ...
    @property
    def maintenance_margin_change(self) -> float: ...

def what_if(
    book: Book,
    market: Market,
    positions: Any | None,
    balances: Any | None,
    trades: Any | None,
    model: str = "standard",
    premium_asset: str | int | None = None,
    orders: Any | None = None,
) -> WhatIf: ...
def scenario_margin(methodology: dict[str, Any], portfolio: dict[str, Any]) -> dict[str, Any]: ...
def standard_rules_margin(
    book: Book,
    market: Market,
    positions: Any,
    balances: Any,
    params: dict[str, Any],
    feeds: dict[str, Any] | None = None,
    threads: int | None = None,
) -> _ArrowStream: ...

_Changes = tuple[_ArrowStream, int, int, int]  # (changes table, re-margined, events, seq)

class LiveBook:
    """The live risk book (margin_engine.live.LiveBook wraps it; docs/live.md)."""

    def __init__(
        self,
        book: Book,
        market: Market,
        positions: Any,
        balances: Any,
        orders: Any | None = None,
        model: str = "standard",
        allow_negative_balances: bool = True,
        premium_asset: str | None = None,
        journal: str | None = None,
        expiry_feeds: Any | None = None,
    ) -> None: ...
    @staticmethod
    def open(book: Book, journal: str) -> LiveBook: ...
    def apply_fills(self, fills: Any) -> _Changes: ...
    def apply_transfers(self, transfers: Any) -> _Changes: ...
    def place_orders(self, orders: Any) -> _Changes: ...
    def cancel_orders(self, order_ids: Any) -> _Changes: ...
    def update_market(self, index_prices: Any | None = None, marks: Any | None = None, valuation_time_ns: int | None = None) -> _Changes: ...
    def check_order(self, account_id: int, instrument: str | int, quantity: float, price: float) -> WhatIf: ...
    def margin(self) -> _ArrowStream: ...
    def account(self, account_id: int) -> AccountMargin: ...
    def snapshot(self) -> None: ...
    def positions(self) -> _ArrowStream: ...
    def balances(self) -> _ArrowStream: ...
    def orders(self) -> _ArrowStream: ...
    def market_tables(self) -> tuple[_ArrowStream, _ArrowStream, int, _ArrowStream | None]: ...
    @property
    def seq(self) -> int: ...
    @property
    def num_accounts(self) -> int: ...
    @property
    def model(self) -> str: ...
    @property
    def allow_negative_balances(self) -> bool: ...
    @property
    def premium_asset(self) -> str | None: ...
    @property
    def journal(self) -> bool: ...
    @staticmethod
    def _set_failpoint(name: str | None = None, delay_us: int = 0, fd: int = -1) -> None: ...
def stressed_paths(
    book: Book,
    market: Market,
    positions: Any,
    balances: Any,
    underlyings: list[str],
    moves: list[list[float]],
    days: int,
    model: str = "standard",
    threads: int | None = None,
    paths_per_block: int | None = None,
) -> tuple[Any, Any]: ...
