"""Our tables (book, positions, market) as the scenario engine's inputs, and account margin
under a per-underlying scenario methodology (`v1`, `exchange`, or any `ScenarioMethodology`).

`scenario_portfolios` nets each account's positions (§2.1) and builds, per account and
underlying, the `ScenarioPortfolio` that `reference.scenarios.margin_scenarios` reads, exactly
as v1's portfolio model sees the positions (docs/methodology.md §4):

- options, grouped by expiry, on the index (the forward is the index price, no fixed part,
  rate 0), with the mark's implied vol and the instrument's multiplier;
- perpetuals and dated futures as `LinearHolding`s on their marks;
- every holding's `order` is its instrument id, so the engine sums in v1's position order;
- times as v1 measures them: `T = max(expiry − valuation, 0) / 1e9 / 31,536,000` years and
  `T × 365` days (`days_to_expiry`).

Cash, collateral and the P&L already made are not part of the portfolio: under v1 they enter
equity and collateral (§2, §6), not the margin requirement. `account_margins` gives, per
account, `(IM, MM)` = the sums over underlyings (sorted, as v1) of the engine's requirements.
"""

from __future__ import annotations

import math
from typing import Any

from margin_engine._inputs import input_error
from margin_engine.methodology_params import (
    MethodologyByUnderlying,
    ScenarioMethodology,
    exchange_preset,
    v1_preset,
)

from ._tables import BookData, MarketData, read_book, read_market, read_positions
from .scenarios import ExpiryHolding, LinearHolding, OptionHolding, ScenarioMargin, ScenarioPortfolio, margin_scenarios
from .valuation import NANOS_PER_SECOND, NettedPosition, net_positions, years_to_expiry

__all__ = ["account_margins", "preset_for_book", "scenario_portfolios", "underlying_margins"]

PRESETS = ("v1", "exchange")


def preset_for_book(book: Any, preset: str | ScenarioMethodology | MethodologyByUnderlying) -> MethodologyByUnderlying:
    """The per-underlying methodology of `preset` for `book`: `v1` / `exchange` built from the
    book's risk_params table, a `MethodologyByUnderlying` as given, or one
    `ScenarioMethodology` for every underlying."""
    if isinstance(preset, MethodologyByUnderlying):
        return preset
    if isinstance(preset, ScenarioMethodology):
        return MethodologyByUnderlying(preset.name, preset)
    risk_params = getattr(book, "risk_params", None)
    if preset == "v1":
        return v1_preset(risk_params)
    if preset == "exchange":
        return exchange_preset(risk_params)
    raise input_error("methodology", "preset", f"unknown preset {preset!r} (known: {', '.join(PRESETS)})")


def _seconds(expiry_ns: int, valuation_ns: int) -> float:
    """Seconds to expiry as v1 measures them (integer nanoseconds first, then / 1e9)."""
    return max(expiry_ns - valuation_ns, 0) / NANOS_PER_SECOND


def portfolio_of(positions: list[NettedPosition], underlying: str, market: MarketData) -> ScenarioPortfolio:
    """The `ScenarioPortfolio` of one account's netted positions on one underlying
    (instrument-id order kept)."""
    spot = market.index_prices.get(underlying, math.nan)
    portfolio = ScenarioPortfolio(spot=spot)
    by_expiry: dict[int, ExpiryHolding] = {}
    for position in positions:
        ins = position.instrument
        mark = market.marks[ins.id]
        days = None if ins.expiry_ns is None else years_to_expiry(ins.expiry_ns, market.valuation_ns) * 365.0
        if not ins.is_option:
            portfolio.linears.append(
                LinearHolding(
                    quantity=position.quantity,
                    mark=mark.mark_price,
                    multiplier=ins.multiplier,
                    seconds_to_expiry=None if ins.expiry_ns is None else _seconds(ins.expiry_ns, market.valuation_ns),
                    order=ins.id,
                    days_to_expiry=days,
                )
            )
            continue
        assert ins.expiry_ns is not None and ins.strike is not None and mark.implied_vol is not None
        expiry = by_expiry.get(ins.expiry_ns)
        if expiry is None:
            expiry = ExpiryHolding(
                seconds_to_expiry=_seconds(ins.expiry_ns, market.valuation_ns),
                forward_variable=spot,
                forward_fixed=0.0,
                rate=0.0,
                options=[],
                days_to_expiry=days,
            )
            by_expiry[ins.expiry_ns] = expiry
            portfolio.expiries.append(expiry)
        expiry.options.append(
            OptionHolding(ins.strike, ins.is_call, position.quantity, mark.implied_vol, ins.multiplier, ins.id)
        )
    return portfolio


def _netted(book: Any, positions: Any, market: Any) -> tuple[BookData, MarketData, dict[int, list[NettedPosition]]]:
    bd = read_book(book)
    md = read_market(market, bd)
    return bd, md, net_positions(read_positions(positions, bd), bd, md)


def scenario_portfolios(book: Any, positions: Any, market: Any) -> dict[int, dict[str, ScenarioPortfolio]]:
    """Per account (sorted) and underlying (sorted), the engine's portfolio; an account whose
    positions all net to 0 maps to an empty dict."""
    bd, md, netted = _netted(book, positions, market)
    out: dict[int, dict[str, ScenarioPortfolio]] = {}
    for account in sorted(netted):
        by_underlying: dict[str, list[NettedPosition]] = {}
        for position in netted[account]:
            by_underlying.setdefault(position.instrument.underlying, []).append(position)
        out[account] = {u: portfolio_of(by_underlying[u], u, md) for u in bd.underlyings if u in by_underlying}
    return out


def underlying_margins(
    book: Any, positions: Any, market: Any, preset: str | ScenarioMethodology | MethodologyByUnderlying = "v1"
) -> dict[int, dict[str, ScenarioMargin]]:
    """The engine's full answer per account and underlying under `preset`."""
    meth = preset_for_book(book, preset)
    return {
        account: {u: margin_scenarios(pf, meth.for_underlying(u)) for u, pf in portfolios.items()}
        for account, portfolios in scenario_portfolios(book, positions, market).items()
    }


def account_margins(
    book: Any, positions: Any, market: Any, preset: str | ScenarioMethodology | MethodologyByUnderlying = "v1"
) -> dict[int, tuple[float, float]]:
    """Per account with positions, `(IM, MM)`: the engine's requirements summed over the
    underlyings in sorted order (v1's §4 account sum). Accounts without positions are absent
    (their margin is 0)."""
    out: dict[int, tuple[float, float]] = {}
    for account, results in underlying_margins(book, positions, market, preset).items():
        im = 0.0
        mm = 0.0
        for result in results.values():
            mm += result.maintenance_requirement
            im += result.initial_requirement
        out[account] = (im, mm)
    return out
