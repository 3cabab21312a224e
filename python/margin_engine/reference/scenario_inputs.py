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

from ._tables import BalanceRow, BookData, ExpiryFeed, MarketData, read_book, read_market, read_positions
from .scenarios import CollateralHolding, ExpiryHolding, LinearHolding, OptionHolding, ScenarioMargin, ScenarioPortfolio, margin_scenarios
from .valuation import NANOS_PER_SECOND, NettedPosition, net_positions, years_to_expiry

__all__ = [
    "account_margins",
    "account_groups",
    "account_portfolio_margins",
    "account_requirements",
    "book_methodology",
    "portfolio_of",
    "preset_for_book",
    "scenario_losses",
    "scenario_portfolios",
    "underlying_margins",
]

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


def _coin(asset: Any, amount: float, linked: bool) -> CollateralHolding:
    """A collateral coin of the portfolio: haircuts `1 − weight` (a borrow: `1 − liability
    weight`, negative, so that the charge on its negative value is positive), the initial
    haircut being what the IM charges beyond the maintenance one."""
    if amount > 0.0:
        mm_haircut = 1.0 - asset.maintenance_weight
        im_haircut = asset.maintenance_weight - asset.initial_weight
    else:
        mm_haircut = 1.0 - asset.maintenance_liability_weight
        im_haircut = asset.maintenance_liability_weight - asset.initial_liability_weight
    return CollateralHolding(
        name=asset.key,
        value=amount * asset.price,
        risk_cancelling=linked,
        maintenance_haircut=mm_haircut,
        initial_haircut=im_haircut,
        confidence=asset.price_confidence,
    )


def portfolio_of(
    positions: list[NettedPosition],
    underlying: str | None,
    market: MarketData,
    coins: list[tuple[Any, float]] | None = None,
) -> ScenarioPortfolio:
    """The `ScenarioPortfolio` of one account's netted positions on one underlying
    (instrument-id order kept) and its coins linked to that underlying (`(asset, amount)` in
    asset-id order); `underlying=None`: the account's unlinked coins alone."""
    if underlying is None:
        portfolio = ScenarioPortfolio(spot=0.0, spot_confidence=1.0, stable_price=market.quote_usd_price)
    else:
        spot = market.index_prices.get(underlying, math.nan)
        if math.isnan(spot) and not positions:
            spot = 0.0  # coins alone: the spot only sizes positions' notionals
        portfolio = ScenarioPortfolio(
            spot=spot,
            spot_confidence=market.index_confidence.get(underlying, 1.0),
            stable_price=market.quote_usd_price,
        )
    by_expiry: dict[int, ExpiryHolding] = {}
    for position in positions:
        ins = position.instrument
        mark = market.marks[ins.id]
        days = None if ins.expiry_ns is None else years_to_expiry(ins.expiry_ns, market.valuation_ns) * 365.0
        if not ins.is_option:
            future = ins.kind == "future" and ins.expiry_ns is not None
            portfolio.linears.append(
                LinearHolding(
                    quantity=position.quantity,
                    mark=mark.mark_price,
                    multiplier=ins.multiplier,
                    seconds_to_expiry=_seconds(ins.expiry_ns, market.valuation_ns) if future else None,
                    order=ins.id,
                    days_to_expiry=days if ins.kind == "future" else None,
                    confidence=mark.confidence,
                )
            )
            continue
        assert ins.expiry_ns is not None and ins.strike is not None and mark.implied_vol is not None
        expiry = by_expiry.get(ins.expiry_ns)
        if expiry is None:
            assert underlying is not None
            feed = market.expiry_feeds.get((underlying, ins.expiry_ns)) or ExpiryFeed(portfolio.spot)
            expiry = ExpiryHolding(
                seconds_to_expiry=_seconds(ins.expiry_ns, market.valuation_ns),
                forward_variable=feed.forward_variable,
                forward_fixed=feed.forward_fixed,
                rate=feed.rate,
                options=[],
                confidence=min(feed.confidence, mark.confidence),
                days_to_expiry=days,
            )
            by_expiry[ins.expiry_ns] = expiry
            portfolio.expiries.append(expiry)
        else:
            expiry.confidence = min(expiry.confidence, mark.confidence)
        expiry.options.append(
            OptionHolding(ins.strike, ins.is_call, position.quantity, mark.implied_vol, ins.multiplier, ins.id)
        )
    for asset, amount in coins or []:
        portfolio.collaterals.append(_coin(asset, amount, underlying is not None and asset.underlying == underlying))
    return portfolio


def account_requirements(
    positions: list[NettedPosition],
    balances: list[BalanceRow],
    book: BookData,
    market: MarketData,
    meth: MethodologyByUnderlying,
) -> tuple[float, float]:
    """`(IM, MM)` of one account: the engine's requirements of each of its portfolios, summed
    in underlying (name) order, the portfolio of unlinked coins last. Under
    `collateral_haircuts_as_contingency` (of the default methodology: one answer per book)
    every balance other than the quote asset is a coin, in the portfolio of its linked
    underlying; an unlinked coin in the portfolio of the account's first underlying (name order)
    with positions or linked coins, or, with neither, in a portfolio of coins alone; otherwise collateral stays
    out of the portfolios."""
    groups = account_groups(positions, balances, book, meth)
    im = 0.0
    mm = 0.0
    for _, _, result in account_portfolio_margins(groups, market, meth):
        im += result.initial_requirement
        mm += result.maintenance_requirement
    return im, mm


def account_groups(
    positions: list[NettedPosition], balances: list[BalanceRow], book: BookData, meth: MethodologyByUnderlying
) -> dict[tuple[int, str | None], tuple[list[NettedPosition], list[tuple[Any, float]]]]:
    """An account's holdings per portfolio: `(underlying id, name)` (the coins-alone portfolio:
    `(number of underlyings, None)`) -> (netted positions, `(asset, amount)` coins); see
    `account_requirements`."""
    coins_in = meth.default.collateral_haircuts_as_contingency
    quote = next((a.id for a in book.assets if a.price == 1.0 and a.underlying is None), None)
    groups: dict[tuple[int, str | None], tuple[list[NettedPosition], list[tuple[Any, float]]]] = {}
    order = {u: i for i, u in enumerate(book.underlyings)}
    for position in positions:
        u = position.instrument.underlying
        groups.setdefault((order[u], u), ([], []))[0].append(position)
    if coins_in:
        # an unlinked coin joins the account's first underlying (name order), else stands alone
        # (with positions or linked coins)
        coin_rows = [b for b in sorted(balances, key=lambda b: b.asset_id) if b.asset_id != quote and b.amount != 0.0]
        linked = [book.assets[b.asset_id].underlying for b in coin_rows]
        first = min(
            list(groups) + [(order[u], u) for u in linked if u is not None], key=lambda k: k[0], default=(len(order), None)
        )
        for row in coin_rows:
            asset = book.assets[row.asset_id]
            key = (order[asset.underlying], asset.underlying) if asset.underlying is not None else first
            groups.setdefault(key, ([], []))[1].append((asset, row.amount))
    return groups


def account_portfolio_margins(
    groups: dict[tuple[int, str | None], tuple[list[NettedPosition], list[tuple[Any, float]]]],
    market: MarketData,
    meth: MethodologyByUnderlying,
) -> list[tuple[str | None, ScenarioMethodology, ScenarioMargin]]:
    """The engine's answer for each of an account's portfolios (`groups` as `account_requirements`
    builds them), in underlying order, the coins-alone portfolio (underlying None) last."""
    out = []
    for key in sorted(groups, key=lambda k: k[0]):
        held, coins = groups[key]
        u = key[1]
        m = meth.default if u is None else meth.for_underlying(u)
        out.append((u, m, margin_scenarios(portfolio_of(held, u, market, coins), m)))
    return out


def _engine_dict(book: Any) -> dict[str, Any] | None:
    meth = getattr(book, "methodology", None)
    if meth is None:
        return None
    d: dict[str, Any] = meth.engine_dict(getattr(book, "risk_params", None)) if hasattr(meth, "engine_dict") else meth
    return d


def book_standard_rules(book: Any) -> Any:
    """The `StandardParams` of a book's methodology, None for v1's standard model (§3)."""
    from .standard_params import StandardParams

    d = _engine_dict(book)
    if d is None or d.get("is_v1_standard", True):
        return None
    return StandardParams.from_mapping(d["standard"])


def market_feeds(market: MarketData, book: BookData) -> Any:
    """The `standard_rules.MarketFeeds` of what the market carries: each expiry feed's forward
    and confidence (as the forward's; the rules read the lowest of the forward's and the vols'),
    the index and mark confidences, the quote asset's USD price as the stable price."""
    from .standard_rules import MarketFeeds

    return MarketFeeds(
        forwards={k: f.forward_variable + f.forward_fixed for k, f in market.expiry_feeds.items()},
        stable_price=market.quote_usd_price,
        index_confidence=dict(market.index_confidence),
        mark_confidence={book.instruments[i].key: m.confidence for i, m in market.marks.items()},
        forward_confidence={k: f.confidence for k, f in market.expiry_feeds.items()},
    )


def book_methodology(book: Any) -> MethodologyByUnderlying | None:
    """The scenario methodologies of a book's `methodology` attribute, None for v1's portfolio
    model (no methodology, or one whose portfolio part is v1's grid). The attribute is a
    `margin_engine.Methodology` (anything with `engine_dict(risk_params)`) or such a dict."""
    d = _engine_dict(book)
    if d is None or d.get("is_v1_portfolio", False):
        return None
    portfolio = d["portfolio"]
    return MethodologyByUnderlying(
        d.get("name", "custom"),
        ScenarioMethodology.from_dict(portfolio["default"]),
        {u: ScenarioMethodology.from_dict(v) for u, v in (portfolio.get("by_underlying") or {}).items()},
    )


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


def scenario_losses(book: Any, positions: Any, balances: Any, market: Any) -> list[dict[str, Any]]:
    """The twin of `me.scenario_losses`: per account (sorted), portfolio and scenario row, the
    weighted P&L under the book's scenario methodology (rows as the engine's table gives them)."""
    from ._tables import read_balances

    meth = book_methodology(book)
    if meth is None:
        raise input_error("arguments", "methodology", "the book has no scenario methodology (v1): its per-contract scenario P&L is risk_arrays")
    bd, md, netted = _netted(book, positions, market)
    by_account: dict[int, list[BalanceRow]] = {}
    for row in read_balances(balances, bd):
        by_account.setdefault(row.account_id, []).append(row)
    out: list[dict[str, Any]] = []
    for account in sorted(set(netted) | set(by_account)):
        groups = account_groups(netted.get(account, []), by_account.get(account, []), bd, meth)
        for u, m, result in account_portfolio_margins(groups, md, meth):
            for i, (row, pnl) in enumerate(zip(m.scenarios, result.scenario_pnl, strict=True)):
                out.append(
                    {"account_id": account, "underlying": u, "scenario": i, "spot_move": row.spot_move,
                     "vol_shock": row.vol_shock, "weight": row.weight, "group": row.group, "pnl": pnl}
                )
    return out
