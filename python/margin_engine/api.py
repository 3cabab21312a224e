"""The public API: :class:`Book`, :class:`Market` and the functions over them.

Every function takes tables as anything that speaks the Arrow PyCapsule interface (pyarrow,
polars, duckdb, pandas >= 2.2; a dict of columns or an older pandas DataFrame is converted) and
returns a ``pyarrow.Table``, or a ``polars.DataFrame`` with ``output="polars"``. Options after
the tables are keyword-only. The work runs in Rust with the GIL released, in parallel over
accounts; ``threads`` picks the number of worker threads (default: all cores) and never changes
a result. Bad input raises :class:`margin_engine.MarginInputError` naming the table, the column
and up to 10 offending keys or rows.

Account tables (the book's and the market's tables are described in :class:`Book` and
:class:`Market`):

``positions``: one row per position, fill or sub-account row; rows need not be sorted, and the
rows of one (account, instrument) are netted by summing their quantities.

- ``account_id``: any integer type, >= 0, no nulls.
- ``instrument``: a key of the book's ``instruments`` (the same key type: strings or integers).
- ``quantity``: float, signed contracts (negative = short), finite, no nulls.
- ``entry_price`` (optional): float >= 0. A row with an entry price carries unrealized P&L
  ``quantity × multiplier × (mark − entry_price)`` (perpetuals and futures; options are valued
  at their mark; an inverse contract: ``quantity × multiplier × (1/entry_price − 1/mark)`` coins,
  entry > 0). A null, or no column, means the row's P&L is already settled into balances.
- ``unsettled_funding`` (optional): float, USD, finite; null = 0. Funding accrued but not yet
  paid: added to equity and collateral like P&L, never to requirements.

``balances``: one row per (account, asset); a repeated pair is an error.

- ``account_id``: as in positions.
- ``asset``: a key of the book's ``assets``.
- ``amount``: float in units of the asset, finite, no nulls; negative = a borrow.

Every account with a row in either table gets one result row. A tour, on a book of one
perpetual and one call option:

>>> import datetime as dt, pyarrow as pa, margin_engine as me
>>> expiry = dt.datetime(2025, 3, 28, 8, tzinfo=dt.timezone.utc)
>>> book = me.Book(
...     pa.table({"instrument": ["BTC-PERP", "BTC-C-60000"], "kind": ["perpetual", "option"],
...               "underlying": ["BTC", "BTC"], "multiplier": [1.0, 1.0],
...               "expiry": pa.array([None, expiry], pa.timestamp("us", "UTC")),
...               "strike": [None, 60_000.0], "option_type": [None, "call"],
...               "initial_margin_rate": [0.02, 0.15], "maintenance_margin_rate": [0.01, 0.075],
...               "initial_margin_floor": [None, 0.10]}),
...     pa.table({"asset": ["USD"], "price": [1.0], "initial_weight": [1.0],
...               "maintenance_weight": [1.0], "initial_liability_weight": [1.0],
...               "maintenance_liability_weight": [1.0]}))
>>> market = me.Market(
...     pa.table({"underlying": ["BTC"], "index_price": [50_000.0]}),
...     pa.table({"instrument": ["BTC-PERP", "BTC-C-60000"], "mark_price": [50_000.0, 1_200.0],
...               "implied_vol": [None, 0.6]}),
...     dt.datetime(2025, 1, 1))
>>> positions = pa.table({"account_id": [1, 2, 2], "instrument": ["BTC-PERP", "BTC-PERP", "BTC-C-60000"],
...                       "quantity": [1.0, 0.5, -2.0]})
>>> balances = pa.table({"account_id": [1, 2], "asset": ["USD", "USD"], "amount": [2_000.0, 30_000.0]})
>>> m = me.margin(book, positions, balances, market)   # standard model
>>> m.select(["account_id", "initial_margin", "maintenance_margin", "status"]).to_pylist()[0]
{'account_id': 1, 'initial_margin': 1000.0, 'maintenance_margin': 500.0, 'status': 'healthy'}
>>> pm = me.margin(book, positions, balances, market, model="portfolio", output="polars")
>>> pm["status"].to_list()   # the scan charges a naked perpetual its ±15% move
['liquidatable', 'healthy']
>>> g = me.greeks(book, positions, market)
>>> [round(d) for d in g.column("delta_usd").to_pylist()]
[50000, -6600]
>>> scan = me.liquidation_scan(book, positions, balances, market, stress={"BTC": -0.04})
>>> scan.select(["account_id", "status", "shortfall"]).to_pylist()[0]
{'account_id': 1, 'status': 'liquidatable', 'shortfall': 480.0}
>>> d = me.liquidation_distance(book, positions, balances, market)
>>> round(d.column("liquidation_price_down")[0].as_py(), 2)   # 2,000 + (P − 50,000) = 1% × P
48484.85
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Callable
from typing import Any, Literal, NamedTuple, TypeVar

import numpy as np
import pyarrow as pa

from margin_engine import _core
from margin_engine import isolated as _isolated
from margin_engine._inputs import (
    arrow_input,
    arrow_table,
    as_output,
    check_choice,
    check_flag,
    check_instance,
    check_model,
    check_number,
    check_output,
    check_threads,
    input_error,
    timestamp_ns,
)

Model = Literal["standard", "portfolio"]
Output = Literal["arrow", "polars"]
_F = TypeVar("_F", bound=Callable[..., Any])

# Docstring blocks that several functions share, inserted where a docstring has ``{name}`` on a
# line of its own (so that help() shows each function's whole contract, written once here).
_DOC_BLOCKS = {
    "reads_positions": (
        "- ``positions``: ``account_id`` (integer >= 0), ``instrument`` (a book key), ``quantity``\n"
        "  (float, signed contracts); optional ``entry_price`` (float >= 0, null = P&L settled)."
    ),
    "reads_balances": "- ``balances``: ``account_id``, ``asset`` (a book key), ``amount`` (float, negative = borrow).",
    "reads_book": (
        "- book: ``instruments`` and ``assets``; ``margin_tiers`` (standard model) or ``risk_params``\n"
        "  (portfolio model) when given (columns: :class:`Book`)."
    ),
    "reads_market": (
        "- market: ``index_prices`` (``underlying``, ``index_price``) of every underlying held and\n"
        "  ``marks`` (``instrument``, ``mark_price``; ``implied_vol`` for options) of every instrument\n"
        "  held (columns: :class:`Market`); rows of instruments or underlyings the book does not know\n"
        "  are ignored."
    ),
    "reads": "{reads_positions}\n{reads_balances}\n{reads_book}\n{reads_market}",
    "reads_isolation": (
        "- positions' optional ``margin_mode`` (utf8 ``\"cross\"``, the default, null = cross, or\n"
        "  ``\"isolated\"``; one mode per (account, instrument)) and ``isolated_collateral``\n"
        "  (``account_id``, ``instrument``, ``amount``: quote collateral >= 0 posted to that isolated\n"
        "  position; one row per key, each key an isolated position; none = 0)."
    ),
    "reads_linked": (
        "{reads}\n- the assets' ``underlying``: linked collateral moves with its underlying (stress,\n"
        "  distances and the map)."
    ),
    "account_columns": (
        "``account_id`` (uint64); ``equity`` (cash at full value plus unrealized P&L and option value);\n"
        "``collateral_initial`` and ``collateral_maintenance`` (balances after the initial or\n"
        "maintenance haircuts, plus the same P&L and option value); ``initial_margin``,\n"
        "``maintenance_margin``; ``free_collateral`` (collateral_initial − initial_margin);\n"
        "``margin_excess`` (collateral_maintenance − maintenance_margin); ``health``\n"
        "(collateral_maintenance / maintenance_margin, null when the margin is 0); ``status``:\n"
        "``bankrupt`` (equity < 0), else ``liquidatable`` (below maintenance), else ``margin_call``\n"
        "(below initial), else ``healthy``. Below means short of the margin by more than\n"
        "1e-9 × max(1, margin)."
    ),
    "reads_orders": (
        "- ``orders`` (optional): resting orders, ``account_id``, ``instrument`` (a book key),\n"
        "  ``quantity`` (float, signed: + bid, − ask, non-zero) and ``price`` (float > 0, the limit\n"
        "  price). They add to ``initial_margin`` only: per instrument (standard model) or per\n"
        "  underlying (portfolio model) the worse of all bids and all asks filling, plus the loss of\n"
        "  a fill above (bid) or below (ask) the mark (``docs/methodology.md``, \"Open orders\").\n"
        "  An account with orders and no other row gets a row. ``None``: no orders (today's numbers)."
    ),
    "options": (
        "``model``: ``\"standard\"`` (per-position rates) or ``\"portfolio\"`` (scenario scan per\n"
        "underlying). ``threads``: worker threads (default all cores; never changes a result).\n"
        "``output``: ``\"arrow\"`` (a ``pyarrow.Table``) or ``\"polars\"`` (a ``polars.DataFrame``)."
    ),
}


def _doc(f: _F) -> _F:
    """Fills the ``{name}`` lines of ``f``'s docstring from ``_DOC_BLOCKS``."""
    doc = inspect.cleandoc(f.__doc__ or "")
    for _ in range(3):  # blocks may name other blocks
        for name, block in _DOC_BLOCKS.items():
            doc = doc.replace("{" + name + "}", block)
    f.__doc__ = doc
    return f


class Book:
    """Instruments, collateral assets, portfolio risk parameters and margin tiers, validated
    once and reusable across calls (and across markets). The rules that use each column are in
    ``docs/methodology.md``; bad values raise :class:`MarginInputError` naming table, column and
    rows. Extra columns are ignored; integer and float columns accept any numeric Arrow type.

    ``instruments``, one row per tradable contract (linear, quote-settled, unless
    ``settlement`` says ``inverse``):

    - ``instrument``: key, unique, non-null; utf8 or an integer type.
    - ``kind``: ``"perpetual"``, ``"future"`` or ``"option"``.
    - ``underlying``: utf8, the risk group; the key of its index price in ``index_prices``.
    - ``multiplier``: float > 0, contract size in units of the underlying.
    - ``expiry`` (optional column; required for futures and options): an Arrow timestamp of any
      unit, no time zone = UTC. Null and ignored for perpetuals: a book of perpetuals only needs
      no ``expiry`` column.
    - ``strike`` (options only): float > 0; null or any value on other rows.
    - ``option_type`` (options only): ``"call"`` or ``"put"``.
    - ``initial_margin_rate``: float >= ``maintenance_margin_rate``, the standard model's IM rate
      (for options: the rate of the short-option formula).
    - ``maintenance_margin_rate``: float > 0, the standard model's MM rate.
    - ``initial_margin_floor`` (options only): float >= 0, the floor of the short-option IM rate
      (Deribit: an IM rate of 0.15 and a floor of 0.10).
    - ``settlement`` (optional, null = ``"linear"``): ``"linear"`` or ``"inverse"``. An inverse
      perpetual or future (BitMEX XBTUSD, Deribit BTC-PERPETUAL) has a ``multiplier`` in USD of
      face value and a USD mark per coin; a coin-settled option (Deribit) a mark in coin per coin.
      Values and margins are computed in the coin and converted at its price
      (``docs/methodology.md`` §10).
    - ``settlement_asset`` (required on inverse rows): the asset the contract settles in, a key
      of ``assets`` linked (``assets.underlying``) to the instrument's own underlying.
    - ``imf_factor`` (optional, perpetuals and futures; null or 0 = none): float >= 0, Drift's
      size premium: both rates become ``max(rate, 0.8 × rate + imf_factor × sqrt(|q| × multiplier))``
      (Drift's integer imf_factor / 1e6). Standard model only; not with ``margin_tiers``.
    - ``open_interest_lower_cap``, ``open_interest_upper_cap`` (optional pair, perpetuals and
      futures; null = none): USD, lower <= upper; with an ``open_interest`` in ``marks`` the IM rate
      becomes ``imr + clamp((OI − lower) / (upper − lower), 0, 1) × (1 − imr)`` (dYdX's OIMF).
      Standard model only; not with ``margin_tiers``.

    ``assets``, one row per collateral asset:

    - ``asset``: utf8 key, unique.
    - ``price``: float > 0, in USD.
    - ``initial_weight``, ``maintenance_weight``: floats in [0, 1] (haircut = 1 − weight),
      initial <= maintenance.
    - ``initial_liability_weight``, ``maintenance_liability_weight``: floats >= 1, applied to
      borrows (negative amounts), maintenance <= initial.
    - ``size_premium`` (optional, default 0): float >= 0, no nulls; a holding of ``amount`` units
      has weight ``min(weight, 1.1 / (1 + size_premium × sqrt(amount)))``.
    - ``liability_imf_factor`` (optional, null = 0): float >= 0, Drift's borrow size premium: a
      negative balance's liability weights become ``max(w, 0.8 × w + factor × sqrt(|amount|))``.
    - ``underlying`` (optional, nullable): utf8; the asset's price moves with that underlying in
      stress tests, liquidation distances and the liquidation map.

    ``risk_params`` (optional), portfolio model parameters per underlying. Every column except
    ``underlying`` is optional, and a missing column or underlying takes the default in brackets;
    no nulls:

    - ``underlying``: utf8 key, unique (may name an underlying no instrument uses).
    - ``price_range`` [0.15]: R, the largest regular spot move, in (0, 1).
    - ``price_steps`` [21]: n, the number of spot moves from −R to +R, an odd integer in [3, 100001].
    - ``vol_up`` [0.45], ``vol_down`` [0.30]: relative implied-vol shocks (>= 0) at 30 days.
    - ``vol_term_exponent`` [0.3]: >= 0, how the vol shocks scale with time to expiry.
    - ``extreme_move`` [3.0]: >= 0, the extreme moves ±extreme_move × R (with R × extreme_move <= 1).
    - ``extreme_cover`` [0.33]: >= 0, the share of an extreme loss charged.
    - ``short_option_minimum`` [0.01]: >= 0, the minimum charge per short option, × index price.
    - ``im_factor`` [1.25]: >= 1, IM = im_factor × MM for this underlying.

    ``margin_tiers`` (optional), notional brackets of perpetuals and futures (not options), like
    exchange risk-limit tiers; the margin is continuous across brackets:

    - ``instrument``: a key of ``instruments``.
    - ``notional_floor``: float >= 0, where the bracket starts (distinct per instrument; below the
      lowest floor the instrument's own rates apply).
    - ``initial_margin_rate`` (>= the maintenance rate), ``maintenance_margin_rate`` (> 0).

    A book of one perpetual (no ``expiry`` column needed) and a dollar:

    >>> import pyarrow as pa, margin_engine as me
    >>> instruments = pa.table({"instrument": ["BTC-PERP"], "kind": ["perpetual"],
    ...     "underlying": ["BTC"], "multiplier": [1.0],
    ...     "initial_margin_rate": [0.02], "maintenance_margin_rate": [0.01]})
    >>> assets = pa.table({"asset": ["USD"], "price": [1.0], "initial_weight": [1.0],
    ...     "maintenance_weight": [1.0], "initial_liability_weight": [1.0],
    ...     "maintenance_liability_weight": [1.0]})
    >>> me.Book(instruments, assets).underlyings
    ['BTC']
    """

    def __init__(
        self,
        instruments: Any,
        assets: Any,
        risk_params: Any = None,
        margin_tiers: Any = None,
        *,
        methodology: Any = None,
    ):
        self.instruments: pa.Table = arrow_table(instruments, "instruments")
        self.assets: pa.Table = arrow_table(assets, "assets")
        self.risk_params: pa.Table | None = None if risk_params is None else arrow_table(risk_params, "risk_params")
        self.margin_tiers: pa.Table | None = (
            None if margin_tiers is None else arrow_table(margin_tiers, "margin_tiers")
        )
        self.methodology = _methodology(methodology)
        engine = None if self.methodology is None else self.methodology.engine_dict(self.risk_params)
        self._core = _core.Book(self.instruments, self.assets, self.risk_params, self.margin_tiers, engine)

    @property
    def underlyings(self) -> list[str]:
        """Underlying names, in id (sorted) order."""
        return list(self._core.underlyings)

    def __repr__(self) -> str:
        return (
            f"Book({self.instruments.num_rows} instruments, {self.assets.num_rows} assets, "
            f"underlyings={self.underlyings})"
        )


def _methodology(methodology: Any) -> Any:
    """A `Methodology` from what `Book(methodology=)` accepts: None (v1), a preset name, a
    file path (`.toml` / `.json`) or a `Methodology`."""
    if methodology is None:
        return None
    from margin_engine.methodology import Methodology

    if isinstance(methodology, Methodology):
        return methodology
    if isinstance(methodology, str) and not methodology.endswith((".toml", ".json")):
        return Methodology.preset(methodology)
    if isinstance(methodology, (str, os.PathLike)):
        return Methodology.from_file(methodology)
    raise input_error("arguments", "methodology", f"expected a Methodology, a preset name or a file, got {type(methodology).__name__}")


class Market:
    """Index prices, marks (with implied vols; optionally supplied Greeks) and the valuation
    time, validated on their own and resolved against a book at the first call that uses both.

    The market may cover more than a book holds (an exchange-wide feed): index prices and marks
    of underlyings and instruments that the book does not know are ignored. A held instrument
    without a mark, or a held underlying without an index price, is an error at the call.

    ``index_prices``:

    - ``underlying``: utf8 key, unique.
    - ``index_price``: float > 0. Black-76 uses it as the forward (r = 0).

    ``marks``:

    - ``instrument``: key, unique, of the book's key type.
    - ``mark_price``: float >= 0, per contract (before the multiplier).
    - ``implied_vol`` (required for options; optional column, nullable for other kinds): float > 0
      (0.6 = 60% a year), used by the portfolio model's scenarios, stress and Greeks.
    - ``open_interest`` (optional, nullable): float >= 0, the instrument's open notional in USD
      (open interest × oracle price), read with the instruments' open-interest caps.
    - ``delta``, ``gamma``, ``vega``, ``theta`` (optional, all four or none): supplied per-contract
      Greeks (vega per vol point, theta per calendar day), finite; non-null on option rows. When
      given, :func:`greeks` uses them instead of Black-76.

    ``valuation_time`` may be a datetime (naive = UTC), a date, numpy datetime64, pandas
    Timestamp, ISO string or integer nanoseconds since the epoch. Time to expiry is
    ``max(expiry − valuation_time, 0)`` in years of 365 days.
    """

    def __init__(self, index_prices: Any, marks: Any, valuation_time: Any, *, expiry_feeds: Any = None):
        self.index_prices: pa.Table = arrow_table(index_prices, "index_prices")
        self.marks: pa.Table = arrow_table(marks, "marks")
        self.valuation_time_ns: int = timestamp_ns(valuation_time)
        self.expiry_feeds: pa.Table | None = None if expiry_feeds is None else arrow_table(expiry_feeds, "expiry_feeds")
        self._core = _core.Market(self.index_prices, self.marks, self.valuation_time_ns, self.expiry_feeds)

    def __repr__(self) -> str:
        return f"Market({self.index_prices.num_rows} index prices, {self.marks.num_rows} marks)"


def _table(result: Any, output: str = "arrow") -> Any:
    return as_output(pa.table(result), output)


def _checked(
    book: Any, market: Any, model: Any = "standard", threads: Any = None, output: Any = "arrow"
) -> tuple[Any, Any, str, int | None, str]:
    """The core objects of ``book`` and ``market``, and the checked ``model``, ``threads`` and
    ``output``."""
    check_instance(book, Book, "book")
    check_instance(market, Market, "market")
    return book._core, market._core, check_model(model), check_threads(threads), check_output(output)


def _per_account(
    core_function: Callable[..., Any], book: Any, positions: Any, balances: Any, market: Any, model: Any, threads: Any, output: Any
) -> Any:
    """``core_function(book, market, positions, balances, model, threads)`` on checked arguments,
    as the ``output`` asked for."""
    core_book, core_market, model, threads, output = _checked(book, market, model, threads, output)
    positions, balances = arrow_input(positions, "positions"), arrow_input(balances, "balances")
    return _table(core_function(core_book, core_market, positions, balances, model, threads), output)


def _orders(orders: Any) -> Any:
    """The optional ``orders`` table as Arrow (``None`` stays ``None``)."""
    return None if orders is None else arrow_input(orders, "orders")


@_doc
def margin(
    book: Book, positions: Any, balances: Any, market: Market, *,
    orders: Any = None, isolated_collateral: Any = None,
    model: Model = "standard", threads: int | None = None, output: Output = "arrow",
) -> Any:
    """Margin of every account in positions, balances or orders: netting, valuation, the
    standard or portfolio model, and the account's status (``docs/methodology.md`` §2–§4, §6).

    Reads:

    {reads}
    {reads_isolation}
    {reads_orders}

    Returns one row per account, sorted by ``account_id``:

    {account_columns}

    With a ``margin_mode`` column these are the cross accounts: isolated positions and their
    collateral are left out (they are :func:`isolated_margin`'s rows), so an account holding
    only isolated positions and no balance has no row.

    Options:

    {options}
    """
    split = _isolated.split(book, positions, isolated_collateral) if _can_split(book) else None
    if split is not None:
        positions = split.cross
    if orders is None:
        return _per_account(_core.margin, book, positions, balances, market, model, threads, output)
    core_book, core_market, model, threads, output = _checked(book, market, model, threads, output)
    return _table(
        _core.margin(
            core_book, core_market, arrow_input(positions, "positions"), arrow_input(balances, "balances"),
            model, threads, _orders(orders),
        ),
        output,
    )


def _entry_basis_refused(book: Any, split: Any, what: str) -> None:
    """Isolated rows beside the cross accounts are margined on the mark; a book whose methodology
    charges isolated maintenance on the entry notional gets them from ``isolated_margin`` only."""
    if split is not None and split.any_isolated and getattr(getattr(book, "methodology", None), "maintenance_basis", "mark") == "entry":
        raise input_error(
            "arguments", "maintenance_basis",
            f"{what} margins isolated positions on the mark; the book's methodology charges their maintenance on the "
            "entry notional (maintenance_basis='entry'): use isolated_margin for them, or a methodology on the mark",
        )  # fmt: skip


def _split_by_margin_mode(core: Any, what: str, book: Any, positions: Any, balances: Any, market: Any,
                          isolated_collateral: Any, model: Any, threads: Any, output: Any) -> Any:
    """A per-account × underlying kernel over cross accounts and, beside them, each isolated
    position margined alone (an ``instrument`` column tells them apart); the kernel alone
    without a ``margin_mode`` column."""
    split = _isolated.split(book, positions, isolated_collateral) if _can_split(book) else None
    _entry_basis_refused(book, split, what)
    if split is None:
        return _per_account(core, book, positions, balances, market, model, threads, output)
    cross = _per_account(core, book, split.cross, balances, market, model, threads, "arrow")
    isolated = None
    if split.any_isolated:
        isolated = _per_account(core, book, split.positions, split.balances, market, model, threads, "arrow")
    return as_output(_isolated.merge_by_account(cross, isolated, split.keys), output)


def _can_split(book: Any) -> bool:
    """Whether ``book`` is a :class:`Book` (else the core's own argument check reports it)."""
    return isinstance(book, Book)


@_doc
def isolated_margin(
    book: Book, positions: Any, isolated_collateral: Any, market: Market, *,
    model: Model = "standard", maintenance_basis: Literal["mark", "entry"] | None = None,
    threads: int | None = None, output: Output = "arrow",
) -> Any:
    """Margin of every isolated position on its own (``docs/methodology.md``, "Isolated
    margin"; ``docs/liquidation.md`` §8): its isolated collateral plus its own P&L (and value,
    for options), its margin from the model applied to that one position, its status, and its
    liquidation price. Its loss stops at its collateral: the cross account never absorbs it.

    Reads:

    {reads_positions}
    {reads_isolation}
    {reads_book}
    {reads_market}

    Returns one row per isolated (account, instrument), sorted by ``account_id`` then
    ``instrument``: ``account_id``, ``instrument``, then the columns of :func:`margin` for that
    position alone (its collateral is a balance of the book's quote asset, the first asset
    priced 1 and linked to no underlying, at that asset's weights): ``equity``,
    ``collateral_initial``, ``collateral_maintenance``, ``initial_margin``,
    ``maintenance_margin``, ``free_collateral``, ``margin_excess``, ``health``, ``status``; then
    ``liquidation_price``: the underlying's index price at which the position's margin excess
    crosses 0 (perpetual and future marks move with the index), nearest to the current index
    price, searched on [1e-8, 100] × the index price; null when there is none. Perpetuals and
    futures under the standard model: closed form, bracket by bracket of the margin tiers;
    options and the portfolio model: a bracketing root finder (1e-12 relative) of where the status
    turns liquidatable (short of maintenance by more than 1e-9 × max(1, MM)).

    Options: ``maintenance_basis``: ``None`` (the default: the book methodology's
    ``maintenance_basis``, ``"mark"`` without a methodology), ``"mark"`` (maintenance margin on
    the mark notional, the engine's rule) or ``"entry"`` (on the entry notional ``|Σ quantity × entry_price| ×
    multiplier``, a row without entry price at the mark: Bybit / KuCoin isolated positions;
    perpetuals and futures under the standard model only). Under ``model="portfolio"`` each
    position gets the portfolio model's scan of that one position. Books with a non-v1
    methodology are refused. ``threads`` and ``output`` as in :func:`margin`.
    """
    core_book, core_market, model, threads, output = _checked(book, market, model, threads, output)
    if maintenance_basis is None:  # the book's methodology says (docs/methodology.md §10.2)
        maintenance_basis = getattr(getattr(book, "methodology", None), "maintenance_basis", "mark")
    basis = check_choice(maintenance_basis, "maintenance_basis", ("mark", "entry"))
    split = _isolated.split(book, positions, isolated_collateral)
    if split is None:
        split = _isolated.split(book, _with_margin_mode(positions), isolated_collateral)
    result = _core.isolated_margin(core_book, core_market, split.positions, split.balances, model, basis, threads)
    return as_output(_isolated.to_keys(pa.table(result), split.keys), output)


def _with_margin_mode(positions: Any) -> pa.Table:
    """``positions`` with an all-cross ``margin_mode`` column (positions without the column
    hold no isolated position)."""
    t = arrow_table(positions, "positions")
    return t.append_column("margin_mode", pa.array(["cross"] * t.num_rows, pa.string()))


@_doc
def greeks(book: Book, positions: Any, market: Market, *, threads: int | None = None, output: Output = "arrow") -> Any:
    """Greeks per account × underlying (``docs/methodology.md`` §5, §7), from Black-76 or from
    the Greeks supplied in ``marks``.

    Reads:

    {reads_positions}
    - book: ``instruments`` (columns: :class:`Book`).
    - market: ``index_prices`` (``underlying``, ``index_price``), ``marks`` (``instrument``,
      ``mark_price``, ``implied_vol`` of options; optional ``delta``, ``gamma``, ``vega``,
      ``theta``, used instead of Black-76 when present).

    Returns one row per account × underlying it holds a non-zero netted position in, sorted by
    ``account_id`` then underlying: ``account_id``, ``underlying``, ``delta`` (Σ quantity ×
    multiplier × per-contract delta, in units of the underlying), ``delta_usd`` (× index price),
    ``gamma``, ``gamma_usd`` (× index price² / 100: the delta change of a 1% move, in USD),
    ``vega`` (USD per vol point), ``theta`` (USD per calendar day), ``long_notional`` and
    ``short_notional`` (Σ |quantity| × multiplier × mark of the long and the short positions).

    Options: ``threads`` and ``output`` as in :func:`margin`.
    """
    core_book, core_market, _, threads, output = _checked(book, market, "standard", threads, output)
    return _table(_core.greeks(core_book, core_market, arrow_input(positions, "positions"), threads), output)


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


@_doc
def liquidation_scan(
    book: Book,
    positions: Any,
    balances: Any,
    market: Market,
    *,
    orders: Any = None,
    isolated_collateral: Any = None,
    model: Model = "standard",
    stress: dict[str, float] | None = None,
    distance: bool = False,
    threads: int | None = None,
    output: Output = "arrow",
) -> Any:
    """The liquidation queue (``docs/methodology.md`` §8, ``docs/liquidation.md`` §1–§3): every
    account's margin row plus its ``shortfall``, most severe first.

    ``stress={"BTC": -0.2}`` first moves BTC's index price, perpetual and future marks and
    BTC-linked collateral by −20% and reprices BTC options with Black-76, then margins every
    account in the moved market. ``distance=True`` (without ``stress``) adds how far the nearest
    single-underlying move to liquidation is.

    Reads:

    {reads_linked}
    {reads_isolation}
    {reads_orders}
      Orders never move ``maintenance_margin``, ``shortfall`` or ``nearest_move``; under
      ``stress`` their fill loss is measured against the moved marks.

    Returns one row per account, the columns of :func:`margin`:

    {account_columns}

    Then ``shortfall`` = max(0, maintenance_margin − collateral_maintenance). Sorted bankrupt,
    liquidatable, margin_call, healthy, then by shortfall descending, then by ``account_id``.

    With a ``margin_mode`` column, the queue lists the cross accounts (without their isolated
    positions) and, beside them, every isolated position margined alone (as in
    :func:`isolated_margin`): an ``instrument`` column after ``account_id`` is null on cross
    rows and names the isolated position on the others; at equal status, shortfall and
    ``account_id`` the cross row comes first, then the isolated positions by instrument.
    With ``distance=True`` also ``nearest_move`` (the signed move of smallest size, over the
    account's underlyings, that makes it liquidatable; 0 when it is liquidatable already; null
    when no move within ±50% does) and ``nearest_underlying`` (that move's underlying; null when
    the account is liquidatable already or no move reaches it).

    Options:

    {options}
    """
    core_book, core_market, model, threads, output = _checked(book, market, model, threads, output)
    distance = check_flag(distance, "distance")
    if distance and stress is not None:
        raise input_error("arguments", "distance", "distance=True is measured from the current market; pass stress=None")
    split = _isolated.split(book, positions, isolated_collateral)
    _entry_basis_refused(book, split, "liquidation_scan")
    core_orders = _orders(orders)

    def scan(p: Any, b: Any, o: Any = None) -> pa.Table:
        return pa.table(_core.liquidation_scan(
            core_book, core_market, arrow_input(p, "positions"), arrow_input(b, "balances"),
            model, _stress_pairs(stress), distance, threads, o,
        ))

    if split is None:
        return _table(scan(positions, balances, core_orders), output)
    # resting orders belong to the cross account (docs/methodology.md: isolated margin)
    cross = scan(split.cross, balances, core_orders)
    isolated = scan(split.positions, split.balances) if split.any_isolated else None
    return as_output(_isolated.merge_scan(cross, isolated, split.keys), output)


@_doc
def liquidation_distance(
    book: Book, positions: Any, balances: Any, market: Market, *,
    isolated_collateral: Any = None,
    model: Model = "standard", threads: int | None = None, output: Output = "arrow",
) -> Any:
    """Distance to liquidation per account × underlying it is exposed to (``docs/methodology.md``
    §8, ``docs/liquidation.md`` §3): how far that underlying alone may move, stressed as in
    :func:`liquidation_scan`, before the account falls below maintenance. Exact roots of the
    margin excess over the whole price axis (down to price 0, up to 100× the index): the first
    crossing on each side, in closed form for perpetuals and futures, bracketed and refined to
    1e-10 of the price where options are held (:func:`liquidation_prices` says which).

    Reads:

    {reads_linked}

    Returns one row per account × exposed underlying (a non-zero netted position in it, or a
    non-zero balance of an asset linked to it), sorted by ``account_id`` then underlying:
    ``account_id``, ``underlying``, ``move_down`` (in (−1, 0]) and ``move_up`` (in [0, 99]): the
    relative moves (null when the account stays at or above maintenance all the way to price 0,
    or to 100× the index; 0 on both sides when it is liquidatable already),
    ``liquidation_price_down`` and ``liquidation_price_up`` (index price × (1 + move); null with
    the move, or when the underlying has no index price).

    With a ``margin_mode`` column (and ``isolated_collateral``), a cross account's distances
    leave its isolated positions out (they do not move it), and each isolated position margined
    alone gets its own rows: an ``instrument`` column after ``account_id`` is null on cross rows
    and names the isolated position on the others (sorted by ``account_id``, the cross rows
    first, then by instrument).

    Options:

    {options}
    """
    return _split_by_margin_mode(_core.liquidation_distance, "liquidation_distance", book, positions, balances, market, isolated_collateral, model, threads, output)


@_doc
def liquidation_prices(
    book: Book, positions: Any, balances: Any, market: Market, *,
    isolated_collateral: Any = None,
    model: Model = "standard", threads: int | None = None, output: Output = "arrow",
) -> Any:
    """Exact liquidation prices per account × underlying it is exposed to (``docs/liquidation.md``
    §3): the prices of that underlying, moved alone as in :func:`liquidation_scan`, at which the
    account's margin excess first reaches zero going down and going up.

    Reads:

    {reads_linked}

    Returns one row per account × exposed underlying (as :func:`liquidation_distance`), sorted by
    ``account_id`` then underlying: ``account_id``, ``underlying``, ``index_price`` (now; null
    for an underlying known only through linked collateral), ``liquidation_price_down``,
    ``liquidation_price_up`` (null where no root exists on that side, between price 0 exclusive
    and 100× the index), ``move_down``, ``move_up`` (the relative moves), and ``method``:
    ``"closed_form"`` (every position in the underlying is a perpetual or future: the excess is
    piecewise linear in the price and solved piece by piece), ``"bracketed"`` (options: sampled
    on the axis, the first sign change refined to 1e-10 of the price) or ``"liquidatable"``
    (below maintenance now: both moves 0). An inverse contract's coin P&L is not linear in the
    price: its rows are ``"bracketed"``.

    With a ``margin_mode`` column (and ``isolated_collateral``), as in :func:`liquidation_distance`:
    cross rows leave the isolated positions out, each isolated position margined alone gets its
    own rows, told apart by an ``instrument`` column after ``account_id`` (null on cross rows).

    Options:

    {options}
    """
    return _split_by_margin_mode(_core.liquidation_prices, "liquidation_prices", book, positions, balances, market, isolated_collateral, model, threads, output)


@_doc
def liquidation_map(
    book: Book, positions: Any, balances: Any, market: Market, *,
    isolated_collateral: Any = None,
    model: Model = "standard", threads: int | None = None, output: Output = "arrow",
) -> Any:
    """The liquidation map of the whole book (``docs/liquidation.md`` §4): for each underlying
    and grid level, how many accounts first become liquidatable there, and how much.

    Reads:

    {reads_linked}

    Returns 201 rows per underlying of the book (sorted by name), one per ``level`` −100..100:
    ``underlying``, ``level`` (int32), ``move`` (0.005 × level), ``price`` (index price × (1 +
    move); null without an index price), ``accounts`` (accounts first liquidatable at this level;
    level 0 counts those liquidatable already), ``notional`` (their notional in this underlying at
    the current marks), ``collateral`` (their maintenance collateral now), and
    ``cumulative_accounts`` / ``cumulative_notional`` (running totals from level 0 outward, each
    side on its own, level 0 in both).

    With a ``margin_mode`` column, each isolated position counts as an account of its own
    (margined alone, as in :func:`isolated_margin`) and the cross accounts without their
    isolated positions: the map is the sum of the two maps.

    Options:

    {options}
    """
    split = _isolated.split(book, positions, isolated_collateral) if _can_split(book) else None
    _entry_basis_refused(book, split, "liquidation_map")
    if split is None:
        return _per_account(_core.liquidation_map, book, positions, balances, market, model, threads, output)
    cross = _per_account(_core.liquidation_map, book, split.cross, balances, market, model, threads, "arrow")
    if not split.any_isolated:
        return as_output(cross, output)
    isolated = _per_account(_core.liquidation_map, book, split.positions, split.balances, market, model, threads, "arrow")
    return as_output(_isolated.sum_maps(cross, isolated), output)


@dataclasses.dataclass(frozen=True)
class LiquidationPlan:
    """The outcome of liquidating every account below maintenance (``docs/liquidation.md`` §7).
    The four tables are ``pyarrow.Table`` (``polars.DataFrame`` with ``output="polars"``).

    ``closes``, one row per position closed (fully or partially), in each account's order:
    ``account_id``, ``step`` (0, 1, ... within the account), ``instrument``, ``underlying``,
    ``quantity_before``, ``quantity_closed`` (signed: the trade that closes), ``fraction`` (of the
    position), ``mark_price``, ``notional`` (closed), ``fee``, ``liquidator_fee``,
    ``insurance_fee``, ``value_before`` (the position's value before the close).

    ``accounts``, one row per liquidated account: ``account_id``, ``status_before``,
    ``status_after`` (``restored``, ``bankrupt`` or ``collateral_shortfall``), ``equity_before``,
    ``equity_after``, ``collateral_maintenance_before``, ``collateral_maintenance_after``,
    ``maintenance_margin_before``, ``maintenance_margin_after``, ``fees``, ``closed_notional``,
    ``deficit`` (−equity of a bankrupt account), ``covered_by_insurance``, ``bad_debt``.

    ``underlyings``: ``underlying``, ``closed_notional``, ``bad_debt``.

    ``adl``, auto-deleveraging queues for underlyings left with bad debt: ``underlying``,
    ``rank``, ``account_id``, ``delta``, ``profit_ratio``, ``leverage``, ``score``
    (profit_ratio × leverage, highest first).

    ``liquidator_fees``, ``insurance_fees``: fee totals; ``insurance_fund_after``: the fund after
    the fees paid in and the deficits drawn.

    With isolated positions (a ``margin_mode`` column in positions): ``closes`` gains
    ``margin_mode`` (``cross`` or ``isolated``) after ``account_id``; ``accounts`` and ``adl``
    gain ``instrument`` after ``account_id`` (null for a cross account, else the isolated
    position liquidated on its own).
    """

    closes: Any
    accounts: Any
    underlyings: Any
    adl: Any
    liquidator_fees: float
    insurance_fees: float
    insurance_fund_after: float


@_doc
def liquidation_plan(
    book: Book,
    positions: Any,
    balances: Any,
    market: Market,
    *,
    model: Model = "standard",
    liquidation_fee: float = 0.01,
    liquidator_share: float = 0.5,
    buffer: float = 0.0,
    insurance_fund: float = 0.0,
    stress: dict[str, float] | None = None,
    isolated_collateral: Any = None,
    threads: int | None = None,
    output: Output = "arrow",
) -> LiquidationPlan:
    """Liquidation plans for every liquidatable or bankrupt account (``docs/liquidation.md`` §7):
    positions closed at mark in order of maintenance margin freed per unit of notional (partial
    closes allowed) until ``collateral_maintenance >= (1 + buffer) × MM``; a fee of
    ``liquidation_fee`` × closed notional (``liquidator_share`` of it to the liquidator, the rest
    to the insurance fund); deficits of bankrupt accounts drawn from ``insurance_fund``, the rest
    reported as bad debt. With ``stress``, the plan is made in the moved market (as in
    :func:`liquidation_scan`).

    Reads:

    {reads}
    {reads_isolation}

    Returns a :class:`LiquidationPlan` (its tables' columns are listed there).

    With a ``margin_mode`` column, the cross accounts (without their isolated positions) are
    liquidated first, then every isolated position on its own: only its collateral stands
    behind it, its deficit is its own (drawn from what the cross plans left of the insurance
    fund, then bad debt of that position), and the cross account never covers it. ``closes``,
    ``accounts`` and ``adl`` then have an ``instrument`` column after ``account_id`` (null for
    cross accounts; ``closes`` keeps its own ``instrument`` and gets ``margin_mode``), the
    isolated rows after the cross ones; ``underlyings`` sums both; ADL queues rank cross accounts
    and isolated positions each among their own.

    Options: ``liquidation_fee`` in [0, 1), ``liquidator_share`` in [0, 1], ``buffer`` >= 0,
    ``insurance_fund`` >= 0 (USD), ``stress`` as in :func:`liquidation_scan`; ``output`` applies to
    the four tables.
    {options}
    """
    core_book, core_market, model, threads, output = _checked(book, market, model, threads, output)
    fee = check_number(liquidation_fee, "liquidation_fee", 0.0, 0.999999)
    share = check_number(liquidator_share, "liquidator_share", 0.0, 1.0)
    buffer = check_number(buffer, "buffer", 0.0)
    fund = check_number(insurance_fund, "insurance_fund", 0.0)
    split = _isolated.split(book, positions, isolated_collateral)
    _entry_basis_refused(book, split, "liquidation_plan")

    def plan(p: Any, b: Any, fund: float) -> tuple[Any, ...]:
        return _core.liquidation_plan(
            core_book, core_market, arrow_input(p, "positions"), arrow_input(b, "balances"),
            model, fee, share, buffer, fund, _stress_pairs(stress), threads,
        )

    if split is None:
        closes, accounts, underlyings, adl, liq_fees, ins_fees, fund_after = plan(positions, balances, fund)
        tables = (_table(t, output) for t in (closes, accounts, underlyings, adl))
        return LiquidationPlan(*tables, liq_fees, ins_fees, fund_after)
    cross = plan(split.cross, balances, fund)
    isolated = plan(split.positions, split.balances, cross[6]) if split.any_isolated else None
    tables, totals = _isolated.merge_plans(cross, isolated, split.keys)
    return LiquidationPlan(*(as_output(t, output) for t in tables), *totals)


@_doc
def optimal_hedge(
    book: Book,
    positions: Any,
    balances: Any,
    market: Market,
    hedge_instruments: list[str],
    *,
    model: Model = "portfolio",
    objective: Literal["maintenance", "initial"] = "maintenance",
    threads: int | None = None,
    output: Output = "arrow",
) -> Any:
    """The minimum-margin hedge of every account in each hedge instrument's underlying
    (``docs/optimization.md``). Under the portfolio model the optimum is exact (the margin is a
    maximum of affine functions of the hedge quantity); under the standard model it closes the
    account's existing position in the hedge instrument.

    ``hedge_instruments``: keys of perpetuals or futures of the book, at most one per underlying.

    Reads:

    {reads}

    Returns one row per account × hedge instrument whose underlying the account holds:
    ``account_id``, ``underlying``, ``hedge_instrument``, ``quantity`` (contracts to add),
    ``margin_before``, ``margin_after`` (the account's margin of ``objective`` without / with that
    one hedge) and ``delta_neutral_quantity`` (the contracts that would zero its delta, for
    comparison).

    Options: ``objective``: ``"maintenance"`` or ``"initial"`` margin to minimize; model (default
    ``"portfolio"``), threads and output as in :func:`margin`.

    With a ``margin_mode`` column the hedge is of the cross account: its isolated positions are
    left out (they are margined on their own, a cross hedge does not lower their margin).
    """
    core_book, core_market, model, threads, output = _checked(book, market, model, threads, output)
    split = _isolated.split(book, positions)
    if split is not None:
        positions = split.cross
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
        ),
        output,
    )


def risk_arrays(book: Book, market: Market, *, output: Output = "arrow") -> Any:
    """The portfolio model's per-contract scenario P&L of every instrument with a mark
    (``docs/methodology.md`` §4), for inspection.

    Reads: the book's ``instruments`` and ``risk_params``; the market's ``index_prices``
    (``underlying``, ``index_price``) and ``marks`` (``instrument``, ``mark_price``, ``implied_vol``).

    Returns one row per instrument × scenario: ``instrument``, ``underlying``, ``scenario``
    (int32: ``3k + v`` for spot step k and vol state v, then the two extreme scenarios),
    ``move`` (the relative spot move), ``vol_state`` (``down``, ``none``, ``up``), ``extreme``
    (bool), ``pnl`` (per contract, multiplier included). ``output`` as in :func:`margin`.

    Under a book's scenario methodology (``Book(methodology=...)`` other than v1's grid), the
    rows follow that methodology's scenario table: ``instrument``, ``underlying``, ``scenario``
    (uint32, the table's row), ``spot_move``, ``vol_shock``, ``weight``, ``group``, ``pnl``: the
    weighted P&L of one contract held alone (rules acting on an expiry's total, the static
    discount and the skew rows, act on that one contract; the market's ``expiry_feeds`` give
    the forwards). An account's own losses are :func:`scenario_losses`.
    """
    core_book, core_market, _, _, output = _checked(book, market, output=output)
    return _table(_core.risk_arrays(core_book, core_market), output)


@_doc
def scenario_losses(
    book: Book, positions: Any, balances: Any, market: Market, *, threads: int | None = None, output: Output = "arrow"
) -> Any:
    """Per account, portfolio and scenario row, the weighted P&L that the book's scenario
    methodology finds (the losses its worst-loss rule reads): Derive's per-scenario losses under
    ``derive_pmrm2``.

    Reads the same columns as :func:`margin` (with the market's ``expiry_feeds`` and
    confidences). Returns ``account_id``, ``underlying`` (null: the account's coins linked to no
    underlying it trades, under ``collateral_haircuts_as_contingency``), ``scenario`` (row of the
    table), ``spot_move``, ``vol_shock``, ``weight``, ``group``, ``pnl``; rows by account, then
    underlying, then scenario. A book without a scenario methodology (v1) raises
    :class:`MarginInputError`: its per-contract arrays are :func:`risk_arrays`.

    >>> import margin_engine as me
    >>> from margin_engine.presets import derive
    >>> book, market, positions, balances = derive.case_tables(derive.example_case())
    >>> losses = me.scenario_losses(book, positions, balances, market)
    >>> losses.num_rows == len(book.methodology.portfolio.default.scenarios)
    True
    """
    core_book, core_market, _, threads, output = _checked(book, market, threads=threads, output=output)
    p, b = arrow_input(positions, "positions"), arrow_input(balances, "balances")
    return _table(_core.scenario_losses(core_book, core_market, p, b, threads), output)


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
    """Vectorized Black-76 with r = 0 and the forward = the index price (``docs/methodology.md``
    §5), broadcasting numpy-style. ``time`` in years, ``vol`` a yearly implied vol (0.2 = 20%),
    ``is_call`` booleans or the strings ``"call"`` / ``"put"``.

    Returns :class:`Black76` arrays per contract: ``price``, ``delta``, ``gamma``, ``vega`` (per
    vol point), ``theta`` (per calendar day). At ``time = 0``: intrinsic value, delta 1/0 or
    −1/0, the rest 0.

    >>> import margin_engine as me
    >>> round(float(me.black76(100.0, 100.0, 1.0, 0.2, True).price), 6)
    7.965567
    >>> [round(float(d), 4) for d in me.black76(100.0, [90.0, 110.0], 0.5, 0.2, "put").delta]
    [-0.2073, -0.7268]
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
    positions: Any,
    balances: Any,
    market: Market,
    trades: Any,
    *,
    orders: Any = None,
    model: Model = "standard",
    premium_asset: str | None = None,
) -> WhatIf:
    """One account's margin before and after ``trades``: the pre-trade check of order entry
    (``docs/optimization.md``, "What-if").

    ``positions`` and ``trades`` are a dict ``{instrument: quantity}``, a list of
    ``(instrument, quantity[, price])`` tuples, or an Arrow table with columns ``instrument``,
    ``quantity`` and optional ``entry_price`` (positions) or ``price`` (trades); an
    ``account_id`` column, if any, must hold one account. A position without an entry price is
    at the mark (P&L settled); a trade without a price trades at the mark. ``balances`` is a dict
    ``{asset: amount}``, ``(asset, amount)`` tuples or a table with ``asset`` and ``amount``.
    Any of the three may be ``None`` (nothing). The book's and the market's columns are read as
    in :func:`margin`.

    A trade of ``quantity`` at ``price`` adds a position row (netted with the account's rows) and
    moves cash by ``−quantity × multiplier × price``, against the position's worth ``quantity ×
    multiplier × mark``; a trade that closes a position keeps that position's P&L. An option
    trade's premium (``premium`` on the result, < 0 when paid) moves the account's balance of
    ``premium_asset`` (default: the book's quote asset, the first asset priced 1 and linked to no
    underlying), valued at that asset's weights like any balance: a premium bought on credit
    counts at its liability weight.

    Returns a :class:`WhatIf`: ``before`` and ``after`` (:class:`AccountMargin`: the columns of
    :func:`margin` for this account: ``equity``, ``collateral_initial``,
    ``collateral_maintenance``, ``initial_margin``, ``maintenance_margin``, ``free_collateral``,
    ``margin_excess``, ``health``, ``status``), ``trade_pnl`` (``Σ quantity × multiplier × (mark −
    price)``), ``premium`` (``−Σ quantity × multiplier × price`` over option trades),
    ``initial_margin_change``, ``maintenance_margin_change`` and ``accepted`` (free
    collateral >= 0 after the trade, or the trade reduces risk: IM does not rise and free
    collateral does not fall).

    ``orders`` (optional): the account's resting orders, in the forms ``trades`` takes
    (``(instrument, quantity, price)`` tuples or a table with ``instrument``, ``quantity``,
    ``price``; quantity non-zero, + bid, − ask). Both ``before`` and ``after`` include their
    initial margin (``docs/methodology.md``, "Open orders"); the trades do not cancel them.

    Built for one account: no table conversion, no thread pool, the market resolved once per
    (book, market) pair and cached on the market. ``model`` as in :func:`margin`;
    ``premium_asset``: an asset key of the book, or ``None`` for the quote asset.

    One perpetual (IM rate 2%) at 50,000, one held, 2,000 USD, buying one more at 49,000:

    >>> import pyarrow as pa, margin_engine as me
    >>> book = me.Book(
    ...     pa.table({"instrument": ["BTC-PERP"], "kind": ["perpetual"], "underlying": ["BTC"],
    ...               "multiplier": [1.0], "initial_margin_rate": [0.02], "maintenance_margin_rate": [0.01]}),
    ...     pa.table({"asset": ["USD"], "price": [1.0], "initial_weight": [1.0], "maintenance_weight": [1.0],
    ...               "initial_liability_weight": [1.0], "maintenance_liability_weight": [1.0]}))
    >>> market = me.Market(pa.table({"underlying": ["BTC"], "index_price": [50_000.0]}),
    ...                    pa.table({"instrument": ["BTC-PERP"], "mark_price": [50_000.0]}), "2025-01-01")
    >>> w = me.what_if(book, {"BTC-PERP": 1.0}, {"USD": 2_000.0}, market, [("BTC-PERP", 1.0, 49_000.0)])
    >>> w.before.initial_margin, w.after.initial_margin, w.accepted
    (1000.0, 2000.0, True)
    """
    if not isinstance(book, Book) or not isinstance(market, Market):
        check_instance(book, Book, "book")
        check_instance(market, Market, "market")
    if not isinstance(positions, (dict, list, tuple)) and positions is not None:
        positions = _isolated.without_isolated(book, positions, "what_if")
    return _core.what_if(book._core, market._core, positions, balances, trades, check_model(model), premium_asset, orders)
