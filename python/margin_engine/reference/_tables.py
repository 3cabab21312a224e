"""Arrow inputs turned into plain Python records (docs/methodology.md §1, docs/methodology-notes.md "Keys and ordering").

Everything downstream of this module works on lists, dicts and small frozen dataclasses. The
dense ids of methodology-notes are kept: an instrument's id is its row in `instruments`, an
asset's id its row in `assets`, and underlyings are listed in sorted name order.

Inputs are assumed VALID (validation is the engine's job); this module only reads them.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

InstrumentKey = Hashable
"""An instrument key: a `str`, or an `int` when the book uses integer keys."""


# --------------------------------------------------------------------------------------------
# Generic table access
# --------------------------------------------------------------------------------------------


def as_table(obj: Any) -> pa.Table:
    """Return `obj` as a `pyarrow.Table`.

    Accepts anything `pyarrow.table()` accepts: a Table, a RecordBatch, a polars DataFrame or any
    object exposing `__arrow_c_stream__` / `__arrow_c_array__`.
    """
    if isinstance(obj, pa.Table):
        return obj
    if isinstance(obj, pa.RecordBatch):
        return pa.Table.from_batches([obj])
    return pa.table(obj)


def column(table: pa.Table, name: str, default: Any = None) -> list[Any]:
    """The values of column `name` as a Python list, or `[default] * num_rows` when it is absent."""
    if name in table.column_names:
        values: list[Any] = table.column(name).to_pylist()
        return values
    return [default] * table.num_rows


def has_column(table: pa.Table, name: str) -> bool:
    """Whether `table` has a column called `name`."""
    return name in table.column_names


def timestamps_ns(table: pa.Table, name: str) -> list[int | None]:
    """Column `name` (a timestamp of any unit) as integer nanoseconds since the epoch, UTC.

    The cast is done by Arrow (`timestamp[unit] -> timestamp[ns] -> int64`), never through Python
    `datetime`, which would truncate to microseconds. A missing or all-null column gives `None`s.
    """
    if name not in table.column_names:
        return [None] * table.num_rows
    col = table.column(name)
    if pa.types.is_null(col.type):
        return [None] * table.num_rows
    if pa.types.is_timestamp(col.type):
        col = pc.cast(col, pa.timestamp("ns", tz=col.type.tz))
    nanos: list[int | None] = pc.cast(col, pa.int64()).to_pylist()
    return nanos


def key_is_integer(table: pa.Table, name: str) -> bool:
    """Whether key column `name` holds integers (possibly dictionary-encoded)."""
    typ = table.schema.field(name).type
    if pa.types.is_dictionary(typ):
        typ = typ.value_type
    return bool(pa.types.is_integer(typ))


# --------------------------------------------------------------------------------------------
# Book
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instrument:
    """One row of `instruments` (§1)."""

    id: int
    """Dense id: the row number in the instruments table."""
    key: InstrumentKey
    kind: str
    """`perpetual`, `future` or `option`."""
    underlying: str
    multiplier: float
    expiry_ns: int | None
    strike: float | None
    option_type: str | None
    initial_margin_rate: float
    maintenance_margin_rate: float
    initial_margin_floor: float | None
    settlement: str = "linear"
    """`linear` (quote-settled, the default) or `inverse` (coin-settled, §2)."""
    settlement_asset: str | None = None
    """The asset (a key of `assets`) an inverse contract settles in; `None` for linear ones."""

    @property
    def is_inverse(self) -> bool:
        """Whether the instrument is an inverse (coin-settled) contract."""
        return self.settlement == "inverse"
    imf_factor: float = 0.0
    """Optional column (default 0): Drift's size premium on a perpetual's or future's rates."""
    open_interest_lower_cap: float | None = None
    """Optional columns (default null): dYdX's open-interest caps (USD of open notional)."""
    open_interest_upper_cap: float | None = None

    @property
    def is_option(self) -> bool:
        """Whether the instrument is an option."""
        return self.kind == "option"

    @property
    def is_call(self) -> bool:
        """Whether the instrument is a call option."""
        return self.option_type == "call"


@dataclass(frozen=True)
class Asset:
    """One row of `assets` (§1)."""

    id: int
    """Dense id: the row number in the assets table."""
    key: str
    price: float
    initial_weight: float
    maintenance_weight: float
    initial_liability_weight: float
    maintenance_liability_weight: float
    size_premium: float
    underlying: str | None
    price_confidence: float = 1.0
    """Optional column (default 1): the price feed's confidence, read by the oracle-confidence
    add-on of a scenario methodology."""
    liability_imf_factor: float = 0.0
    """Optional column (default 0): Drift's size premium on a borrow's liability weights."""


@dataclass(frozen=True)
class Tier:
    """One notional bracket of `margin_tiers` (§1)."""

    notional_floor: float
    initial_margin_rate: float
    maintenance_margin_rate: float


@dataclass(frozen=True)
class RiskParams:
    """Portfolio-model parameters of one underlying (§4); the defaults are those of docs/methodology.md §1."""

    price_range: float = 0.15
    price_steps: int = 21
    vol_up: float = 0.45
    vol_down: float = 0.30
    vol_term_exponent: float = 0.3
    extreme_move: float = 3.0
    extreme_cover: float = 0.33
    short_option_minimum: float = 0.01
    im_factor: float = 1.25


RISK_PARAM_COLUMNS: tuple[str, ...] = (
    "price_range",
    "price_steps",
    "vol_up",
    "vol_down",
    "vol_term_exponent",
    "extreme_move",
    "extreme_cover",
    "short_option_minimum",
    "im_factor",
)

DEFAULT_RISK_PARAMS = RiskParams()


@dataclass
class BookData:
    """The book (instruments, assets, tiers, risk parameters) as plain Python data."""

    instruments: list[Instrument]
    """In id (= input row) order."""
    instrument_ids: dict[InstrumentKey, int]
    instrument_keys_are_ints: bool
    assets: list[Asset]
    """In id (= input row) order."""
    asset_ids: dict[str, int]
    underlyings: list[str]
    """All underlyings named by instruments, assets and risk_params, sorted: underlying-id order."""
    risk_params: dict[str, RiskParams] = field(default_factory=dict)
    tiers: dict[int, list[Tier]] = field(default_factory=dict)
    """Instrument id -> its brackets as given, sorted by `notional_floor`."""

    def settlement_price(self, instrument: Instrument) -> float:
        """The USD price of the coin an inverse contract settles in (this book's assets: moved
        under a stress)."""
        assert instrument.settlement_asset is not None
        return self.assets[self.asset_ids[instrument.settlement_asset]].price

    def params(self, underlying: str) -> RiskParams:
        """The risk parameters of `underlying` (the §4 defaults when it has no row)."""
        return self.risk_params.get(underlying, DEFAULT_RISK_PARAMS)


def _read_instruments(table: pa.Table) -> list[Instrument]:
    """Instrument records in row order."""
    keys = column(table, "instrument")
    kinds = column(table, "kind")
    underlyings = column(table, "underlying")
    multipliers = column(table, "multiplier")
    expiries = timestamps_ns(table, "expiry")
    strikes = column(table, "strike")
    option_types = column(table, "option_type")
    imrs = column(table, "initial_margin_rate")
    mmrs = column(table, "maintenance_margin_rate")
    floors = column(table, "initial_margin_floor")
    settlements = column(table, "settlement")
    settlement_assets = column(table, "settlement_asset")
    imfs = column(table, "imf_factor", 0.0)
    lower_caps = column(table, "open_interest_lower_cap")
    upper_caps = column(table, "open_interest_upper_cap")
    return [
        Instrument(
            id=i,
            key=keys[i],
            kind=kinds[i],
            underlying=underlyings[i],
            multiplier=float(multipliers[i]),
            expiry_ns=expiries[i],
            strike=None if strikes[i] is None else float(strikes[i]),
            option_type=option_types[i],
            initial_margin_rate=float(imrs[i]),
            maintenance_margin_rate=float(mmrs[i]),
            initial_margin_floor=None if floors[i] is None else float(floors[i]),
            settlement=settlements[i] or "linear",
            settlement_asset=settlement_assets[i] if settlements[i] == "inverse" else None,
            imf_factor=0.0 if imfs[i] is None else float(imfs[i]),
            open_interest_lower_cap=None if lower_caps[i] is None else float(lower_caps[i]),
            open_interest_upper_cap=None if upper_caps[i] is None else float(upper_caps[i]),
        )
        for i in range(table.num_rows)
    ]


def _read_assets(table: pa.Table) -> list[Asset]:
    """Asset records in row order (`size_premium` defaults to 0, `underlying` to null)."""
    keys = column(table, "asset")
    prices = column(table, "price")
    iw = column(table, "initial_weight")
    mw = column(table, "maintenance_weight")
    ilw = column(table, "initial_liability_weight")
    mlw = column(table, "maintenance_liability_weight")
    premiums = column(table, "size_premium", 0.0)
    underlyings = column(table, "underlying")
    confidences = column(table, "price_confidence", 1.0)
    liability_imfs = column(table, "liability_imf_factor", 0.0)
    return [
        Asset(
            id=i,
            key=keys[i],
            price=float(prices[i]),
            initial_weight=float(iw[i]),
            maintenance_weight=float(mw[i]),
            initial_liability_weight=float(ilw[i]),
            maintenance_liability_weight=float(mlw[i]),
            size_premium=0.0 if premiums[i] is None else float(premiums[i]),
            underlying=underlyings[i],
            price_confidence=1.0 if confidences[i] is None else float(confidences[i]),
            liability_imf_factor=0.0 if liability_imfs[i] is None else float(liability_imfs[i]),
        )
        for i in range(table.num_rows)
    ]


def _read_risk_params(table: pa.Table | None) -> dict[str, RiskParams]:
    """Per-underlying risk parameters; missing columns take the §4 default."""
    if table is None:
        return {}
    names = column(table, "underlying")
    values = {name: column(table, name) for name in RISK_PARAM_COLUMNS if has_column(table, name)}
    params: dict[str, RiskParams] = {}
    for i, underlying in enumerate(names):
        given: dict[str, Any] = {}
        for name, col in values.items():
            if col[i] is not None:
                given[name] = int(col[i]) if name == "price_steps" else float(col[i])
        params[underlying] = RiskParams(**given)
    return params


def _read_tiers(table: pa.Table | None, instrument_ids: dict[InstrumentKey, int]) -> dict[int, list[Tier]]:
    """Brackets per instrument id, sorted by `notional_floor` (stable)."""
    if table is None:
        return {}
    keys = column(table, "instrument")
    floors = column(table, "notional_floor")
    imrs = column(table, "initial_margin_rate")
    mmrs = column(table, "maintenance_margin_rate")
    tiers: dict[int, list[Tier]] = {}
    for i in range(table.num_rows):
        tiers.setdefault(instrument_ids[keys[i]], []).append(
            Tier(float(floors[i]), float(imrs[i]), float(mmrs[i]))
        )
    for brackets in tiers.values():
        brackets.sort(key=lambda t: t.notional_floor)
    return tiers


def read_book(book: Any) -> BookData:
    """Read a duck-typed book (`instruments`, `assets`, `risk_params`, `margin_tiers` attributes)."""
    instruments_table = as_table(book.instruments)
    assets_table = as_table(book.assets)
    risk_table = getattr(book, "risk_params", None)
    tiers_table = getattr(book, "margin_tiers", None)
    risk_table = None if risk_table is None else as_table(risk_table)
    tiers_table = None if tiers_table is None else as_table(tiers_table)

    instruments = _read_instruments(instruments_table)
    instrument_ids = {ins.key: ins.id for ins in instruments}
    assets = _read_assets(assets_table)
    risk_params = _read_risk_params(risk_table)

    names: set[str] = {ins.underlying for ins in instruments}
    names.update(a.underlying for a in assets if a.underlying is not None)
    names.update(risk_params)
    return BookData(
        instruments=instruments,
        instrument_ids=instrument_ids,
        instrument_keys_are_ints=key_is_integer(instruments_table, "instrument"),
        assets=assets,
        asset_ids={a.key: a.id for a in assets},
        # Python orders str by code point, which is the same as UTF-8 byte order.
        underlyings=sorted(names),
        risk_params=risk_params,
        tiers=_read_tiers(tiers_table, instrument_ids),
    )


# --------------------------------------------------------------------------------------------
# Market
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mark:
    """One row of `marks`: the mark price, the implied vol and any supplied Greeks (§1, §7)."""

    mark_price: float
    implied_vol: float | None
    delta: float | None = None
    gamma: float | None = None
    vega: float | None = None
    theta: float | None = None
    confidence: float = 1.0
    """Optional `confidence` column of marks (default 1)."""
    open_interest: float | None = None
    """Optional `open_interest` column of marks: open notional in USD (dYdX's OI × oracle price)."""


@dataclass(frozen=True)
class ExpiryFeed:
    """One row of the optional `expiry_feeds` table: the expiry's forward as a part moving with
    the index and a fixed part, the discount rate and the feed's confidence."""

    forward_variable: float
    forward_fixed: float = 0.0
    rate: float = 0.0
    confidence: float = 1.0


@dataclass
class MarketData:
    """The market as plain Python data."""

    index_prices: dict[str, float]
    marks: dict[int, Mark]
    """Instrument id -> mark. Marks of instruments the book does not know are dropped."""
    valuation_ns: int
    index_confidence: dict[str, float] = field(default_factory=dict)
    """Optional `confidence` column of index_prices (an absent underlying: 1)."""
    expiry_feeds: dict[tuple[str, int], ExpiryFeed] = field(default_factory=dict)
    """(underlying, expiry ns) -> its feed."""
    quote_usd_price: float = 1.0
    """The index price of an index_prices row named like the book's quote asset (first asset
    priced exactly 1 with no underlying), else 1: read by the peg-loss add-on."""


def _opt_float(value: Any) -> float | None:
    """`float(value)`, keeping `None`."""
    return None if value is None else float(value)


def read_market(market: Any, book: BookData) -> MarketData:
    """Read a duck-typed market (`index_prices`, `marks`, `valuation_time_ns` attributes)."""
    index_table = as_table(market.index_prices)
    marks_table = as_table(market.marks)
    index_prices = {
        u: float(p)
        for u, p in zip(column(index_table, "underlying"), column(index_table, "index_price"), strict=True)
    }
    keys = column(marks_table, "instrument")
    prices = column(marks_table, "mark_price")
    vols = column(marks_table, "implied_vol")
    greek_cols = {g: column(marks_table, g) for g in ("delta", "gamma", "vega", "theta")}
    mark_conf = column(marks_table, "confidence", 1.0)
    open_interest = column(marks_table, "open_interest")
    marks: dict[int, Mark] = {}
    for i, key in enumerate(keys):
        ins_id = book.instrument_ids.get(key)
        if ins_id is None:
            continue
        marks[ins_id] = Mark(
            mark_price=float(prices[i]),
            implied_vol=_opt_float(vols[i]),
            delta=_opt_float(greek_cols["delta"][i]),
            gamma=_opt_float(greek_cols["gamma"][i]),
            vega=_opt_float(greek_cols["vega"][i]),
            theta=_opt_float(greek_cols["theta"][i]),
            confidence=float(mark_conf[i]) if mark_conf[i] is not None else 1.0,
            open_interest=_opt_float(open_interest[i]),
        )
    index_confidence = {
        u: float(c) for u, c in zip(column(index_table, "underlying"), column(index_table, "confidence", 1.0), strict=True)
    }
    feeds: dict[tuple[str, int], ExpiryFeed] = {}
    feeds_table = getattr(market, "expiry_feeds", None)
    if feeds_table is not None:
        ft = as_table(feeds_table)
        fixed = column(ft, "forward_fixed", 0.0)
        rates = column(ft, "rate", 0.0)
        confs = column(ft, "confidence", 1.0)
        for i, (u, e, fwd) in enumerate(
            zip(column(ft, "underlying"), timestamps_ns(ft, "expiry"), column(ft, "forward"), strict=True)
        ):
            assert e is not None
            feeds[(u, e)] = ExpiryFeed(float(fwd) - float(fixed[i]), float(fixed[i]), float(rates[i]), float(confs[i]))
    quote = next((a for a in book.assets if a.price == 1.0 and a.underlying is None), None)
    quote_usd = index_prices.get(quote.key, 1.0) if quote is not None else 1.0
    return MarketData(
        index_prices=index_prices,
        marks=marks,
        valuation_ns=int(market.valuation_time_ns),
        index_confidence=index_confidence,
        expiry_feeds=feeds,
        quote_usd_price=quote_usd,
    )


# --------------------------------------------------------------------------------------------
# Positions and balances
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PositionRow:
    """One input row of `positions`, with the instrument resolved to its dense id."""

    account_id: int
    instrument_id: int
    quantity: float
    entry_price: float | None
    unsettled_funding: float = 0.0
    """Funding accrued but not yet paid into balances (USD; a null or absent column: 0)."""


@dataclass(frozen=True)
class BalanceRow:
    """One input row of `balances`, with the asset resolved to its dense id."""

    account_id: int
    asset_id: int
    amount: float


def read_positions(positions: Any, book: BookData) -> list[PositionRow]:
    """Position rows in input order (`entry_price` is `None` when the column is absent)."""
    table = as_table(positions)
    accounts = column(table, "account_id")
    keys = column(table, "instrument")
    quantities = column(table, "quantity")
    entries = column(table, "entry_price")
    funding = column(table, "unsettled_funding")
    return [
        PositionRow(
            int(accounts[i]),
            book.instrument_ids[keys[i]],
            float(quantities[i]),
            _opt_float(entries[i]),
            0.0 if funding[i] is None else float(funding[i]),
        )
        for i in range(table.num_rows)
    ]


def read_balances(balances: Any, book: BookData) -> list[BalanceRow]:
    """Balance rows in input order."""
    table = as_table(balances)
    accounts = column(table, "account_id")
    keys = column(table, "asset")
    amounts = column(table, "amount")
    return [
        BalanceRow(int(accounts[i]), book.asset_ids[keys[i]], float(amounts[i]))
        for i in range(table.num_rows)
    ]
