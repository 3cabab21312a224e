"""Portfolio model (docs/methodology.md §4): scenarios, risk arrays and the per-underlying scan.

Scenario numbering (methodology-notes §4): regular scenario `s = 3k + v` for spot step
`k = 0..n−1` and vol state `v` (0 = down, 1 = none, 2 = up); then the extreme scenarios
`3n` (move `−extreme_move × R`) and `3n + 1` (move `+extreme_move × R`), vol unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from ._tables import BookData, Instrument, MarketData, RiskParams, read_book, read_market
from .black76 import black76_scalar
from .valuation import NettedPosition, years_to_expiry

VOL_DOWN, VOL_NONE, VOL_UP = 0, 1, 2
VOL_STATE_NAMES = ("down", "none", "up")


@dataclass(frozen=True)
class Scenario:
    """One scenario of an underlying's scan."""

    index: int
    move: float
    """Relative spot move m: the index moves to `S × (1 + m)`."""
    vol_state: int
    """VOL_DOWN, VOL_NONE or VOL_UP (extreme scenarios: VOL_NONE)."""
    extreme: bool


def spot_moves(params: RiskParams) -> list[float]:
    """§4 `m_k = −R + 2R·k/(n−1)`, k = 0..n−1 (evaluated left to right)."""
    r = params.price_range
    n = params.price_steps
    return [-r + 2.0 * r * k / (n - 1) for k in range(n)]


def scenarios(params: RiskParams) -> list[Scenario]:
    """All `3n + 2` scenarios of an underlying, in scenario-number order."""
    out: list[Scenario] = []
    for k, move in enumerate(spot_moves(params)):
        for v in (VOL_DOWN, VOL_NONE, VOL_UP):
            out.append(Scenario(3 * k + v, move, v, False))
    n = params.price_steps
    extreme = params.extreme_move * params.price_range
    out.append(Scenario(3 * n, -extreme, VOL_NONE, True))
    out.append(Scenario(3 * n + 1, extreme, VOL_NONE, True))
    return out


def vol_shift(time: float, params: RiskParams) -> float:
    """§4 `shift = (30 / max(dte, 1)) ** vol_term_exponent` with `dte = T × 365` days."""
    dte = time * 365.0
    shift: float = (30.0 / max(dte, 1.0)) ** params.vol_term_exponent
    return shift


def scenario_vols(vol: float, time: float, params: RiskParams) -> tuple[float, float, float]:
    """§4 `(σ_down, σ, σ_up)`: `σ_up = σ × (1 + vol_up × shift)`,
    `σ_down = σ × max(1 − vol_down × shift, 0.01)`."""
    shift = vol_shift(time, params)
    up = vol * (1.0 + params.vol_up * shift)
    down = vol * max(1.0 - params.vol_down * shift, 0.01)
    return down, vol, up


def linear_risk_array(instrument: Instrument, mark_price: float, params: RiskParams) -> list[float]:
    """§4 perpetual/future per-contract P&L: `multiplier × mark × m` in every scenario."""
    return [instrument.multiplier * mark_price * s.move for s in scenarios(params)]


def option_risk_array(
    instrument: Instrument, index_price: float, vol: float, time: float, params: RiskParams
) -> list[float]:
    """§4 option per-contract P&L: `multiplier × (B76(S(1+m), K, T, σ') − B76(S, K, T, σ))`, with
    σ the implied vol and σ' the scenario's vol (measured against the model value, not the mark)."""
    assert instrument.strike is not None
    strike = instrument.strike
    is_call = instrument.is_call
    base = black76_scalar(index_price, strike, time, vol, is_call)[0]
    vols = scenario_vols(vol, time, params)
    out: list[float] = []
    for s in scenarios(params):
        shocked = black76_scalar(index_price * (1.0 + s.move), strike, time, vols[s.vol_state], is_call)[0]
        out.append(instrument.multiplier * (shocked - base))
    return out


def inverse_risk_array(
    instrument: Instrument, book: BookData, market: MarketData, params: RiskParams
) -> list[float]:
    """§4 for an inverse contract: its coin P&L per scenario times the moved coin price
    `P (1 + m)`. A perpetual or future: `multiplier × (1/mark − 1/(mark (1+m))) × P (1+m)`,
    which is `multiplier × P × m / mark`; a coin-settled option:
    `multiplier × (B76(S')/S' − B76(S)/S) × P (1+m)` with `S' = S (1+m)`, which is
    `multiplier × P × (B76(S')/S − B76(S)/S × (1+m))` (both finite at m = −1)."""
    price = book.settlement_price(instrument)
    mark = market.marks[instrument.id]
    if not instrument.is_option:
        return [instrument.multiplier * price * s.move / mark.mark_price for s in scenarios(params)]
    assert instrument.strike is not None and mark.implied_vol is not None
    time = years_to_expiry(instrument.expiry_ns, market.valuation_ns)
    spot = market.index_prices[instrument.underlying]
    vol = mark.implied_vol
    base = black76_scalar(spot, instrument.strike, time, vol, instrument.is_call)[0] / spot
    vols = scenario_vols(vol, time, params)
    out: list[float] = []
    for s in scenarios(params):
        moved = black76_scalar(spot * (1.0 + s.move), instrument.strike, time, vols[s.vol_state], instrument.is_call)[0]
        out.append(instrument.multiplier * price * (moved / spot - base * (1.0 + s.move)))
    return out


def instrument_risk_array(instrument: Instrument, book: BookData, market: MarketData) -> list[float]:
    """The instrument's risk array (§4), computed once per instrument."""
    params = book.params(instrument.underlying)
    mark = market.marks[instrument.id]
    if instrument.is_inverse:
        return inverse_risk_array(instrument, book, market, params)
    if not instrument.is_option:
        return linear_risk_array(instrument, mark.mark_price, params)
    assert mark.implied_vol is not None
    time = years_to_expiry(instrument.expiry_ns, market.valuation_ns)
    return option_risk_array(
        instrument, market.index_prices[instrument.underlying], mark.implied_vol, time, params
    )


class RiskArrays:
    """Lazily computed risk arrays, keyed by instrument id."""

    def __init__(self, book: BookData, market: MarketData) -> None:
        self._book = book
        self._market = market
        self._arrays: dict[int, list[float]] = {}

    def get(self, instrument: Instrument) -> list[float]:
        """The risk array of `instrument`."""
        arr = self._arrays.get(instrument.id)
        if arr is None:
            arr = instrument_risk_array(instrument, self._book, self._market)
            self._arrays[instrument.id] = arr
        return arr


def scenario_pnl(positions: list[NettedPosition], arrays: RiskArrays, n_scenarios: int) -> list[float]:
    """§4 `P_s = Σ q × riskarray_s` over the positions of one underlying (instrument-id order)."""
    pnl = [0.0] * n_scenarios
    for position in positions:
        arr = arrays.get(position.instrument)
        q = position.quantity
        for s in range(n_scenarios):
            pnl[s] += q * arr[s]
    return pnl


def short_option_minimum(positions: list[NettedPosition], index_price: float, params: RiskParams) -> float:
    """§4 `short_min = Σ_short options |q| × multiplier × S × short_option_minimum`."""
    total = 0.0
    for position in positions:
        if position.instrument.is_option and position.quantity < 0.0:
            total += (
                abs(position.quantity)
                * position.instrument.multiplier
                * index_price
                * params.short_option_minimum
            )
    return total


def underlying_maintenance_margin(
    positions: list[NettedPosition], params: RiskParams, index_price: float | None, arrays: RiskArrays
) -> float:
    """§4 `MM_u = max(scan_loss, extreme_loss, short_min)` with
    `scan_loss = max(0, −min_regular P_s)` and
    `extreme_loss = extreme_cover × max(0, −min_extreme P_s)`."""
    n_regular = 3 * params.price_steps
    pnl = scenario_pnl(positions, arrays, n_regular + 2)
    scan_loss = max(0.0, -min(pnl[:n_regular]))
    extreme_loss = params.extreme_cover * max(0.0, -min(pnl[n_regular:]))
    short_min = 0.0
    if any(p.instrument.is_option and p.quantity < 0.0 for p in positions):
        assert index_price is not None
        short_min = short_option_minimum(positions, index_price, params)
    return max(scan_loss, extreme_loss, short_min)


def portfolio_margin(
    positions: list[NettedPosition], book: BookData, market: MarketData, arrays: RiskArrays
) -> tuple[float, float]:
    """§4 account `(IM, MM)`: `MM = Σ_u MM_u`, `IM = Σ_u im_factor_u × MM_u`, over underlyings in
    underlying-id (sorted name) order; positions grouped by their instrument's underlying."""
    by_underlying: dict[str, list[NettedPosition]] = {}
    for position in positions:  # instrument-id order is kept within each group
        by_underlying.setdefault(position.instrument.underlying, []).append(position)
    im = 0.0
    mm = 0.0
    for underlying in book.underlyings:
        group = by_underlying.get(underlying)
        if not group:
            continue
        params = book.params(underlying)
        mm_u = underlying_maintenance_margin(group, params, market.index_prices.get(underlying), arrays)
        mm += mm_u
        im += params.im_factor * mm_u
    return im, mm


# --------------------------------------------------------------------------------------------
# Public: risk_arrays
# --------------------------------------------------------------------------------------------


def _risk_arrays_schema(int_keys: bool) -> pa.Schema:
    """Output schema of `risk_arrays`."""
    return pa.schema(
        [
            ("instrument", pa.int64() if int_keys else pa.utf8()),
            ("underlying", pa.utf8()),
            ("scenario", pa.int32()),
            ("move", pa.float64()),
            ("vol_state", pa.utf8()),
            ("extreme", pa.bool_()),
            ("pnl", pa.float64()),
        ]
    )


def risk_arrays(book: Any, market: Any) -> pa.Table:
    """Per instrument × scenario P&L per contract (§4), long format.

    One row per scenario for every instrument of the book that has a mark in the market,
    instruments in book row order, scenarios in the methodology-notes numbering. Columns:
    `instrument` (utf8, or int64 for integer keys), `underlying`, `scenario` (int32), `move`,
    `vol_state` ("down" / "none" / "up"), `extreme` (bool), `pnl`.
    """
    bd = read_book(book)
    md = read_market(market, bd)
    columns: dict[str, list[Any]] = {name: [] for name in _risk_arrays_schema(False).names}
    for instrument in bd.instruments:
        if instrument.id not in md.marks:
            continue
        arr = instrument_risk_array(instrument, bd, md)
        for s in scenarios(bd.params(instrument.underlying)):
            columns["instrument"].append(instrument.key)
            columns["underlying"].append(instrument.underlying)
            columns["scenario"].append(s.index)
            columns["move"].append(s.move)
            columns["vol_state"].append(VOL_STATE_NAMES[s.vol_state])
            columns["extreme"].append(s.extreme)
            columns["pnl"].append(arr[s.index])
    return pa.table(columns, schema=_risk_arrays_schema(bd.instrument_keys_are_ints))
