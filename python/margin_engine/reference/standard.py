"""Standard model (docs/methodology.md §3): per-position margin, summed per account."""

from __future__ import annotations

from typing import Literal

from ._tables import BookData, Instrument, MarketData, Tier
from .valuation import NettedPosition, notional, size_premium_rate

RateKind = Literal["initial", "maintenance"]


def brackets_with_base(instrument: Instrument, tiers: list[Tier] | None) -> list[Tier]:
    """§1 margin tiers as read by methodology-notes: the instrument's brackets sorted by floor,
    preceded by an implicit bracket at 0 with the instrument's own rates when no bracket starts at
    0. Without tiers, the instrument's rates apply at every size (one bracket from 0)."""
    base = Tier(0.0, instrument.initial_margin_rate, instrument.maintenance_margin_rate)
    if not tiers:
        return [base]
    if tiers[0].notional_floor > 0.0:
        return [base, *tiers]
    return list(tiers)


def _rate(tier: Tier, kind: RateKind) -> float:
    """The IM or MM rate of a bracket."""
    return tier.initial_margin_rate if kind == "initial" else tier.maintenance_margin_rate


def tiered_margin(notional_value: float, brackets: list[Tier], kind: RateKind) -> float:
    """§1/§3 tiered margin, continuous across brackets (methodology-notes §3):
    `cum_0 = 0`, `cum_b = cum_{b−1} + f_b × (r_b − r_{b−1})`, margin `= notional × r_b − cum_b`
    for the bracket b with the largest `f_b ≤ notional`."""
    cum = 0.0
    rate = _rate(brackets[0], kind)
    for b in range(1, len(brackets)):
        floor = brackets[b].notional_floor
        if floor > notional_value:
            break
        new_rate = _rate(brackets[b], kind)
        cum = cum + floor * (new_rate - rate)
        rate = new_rate
    return notional_value * rate - cum


def open_interest_rate(base: float, lower: float, upper: float, open_interest: float) -> float:
    """dYdX's open-interest-scaled initial margin rate: `base + s × (1 − base)` with
    `s = clamp((OI − lower) / (upper − lower), 0, 1)` (1 from `OI >= upper`, 0 up to `OI <= lower`);
    a base above 1 stays as it is."""
    if open_interest >= upper:
        s = 1.0
    elif open_interest <= lower:
        s = 0.0
    else:
        s = (open_interest - lower) / (upper - lower)
    return base + s * max(1.0 - base, 0.0)


def scaled_initial_rate(instrument: Instrument, market: MarketData) -> float | None:
    """The instrument's initial margin rate scaled by the market's open interest, or `None`
    when it has no caps or the market no `open_interest` for it (its own rate then)."""
    if instrument.open_interest_lower_cap is None or instrument.open_interest_upper_cap is None:
        return None
    mark = market.marks.get(instrument.id)
    if mark is None or mark.open_interest is None:
        return None
    return open_interest_rate(
        instrument.initial_margin_rate, instrument.open_interest_lower_cap, instrument.open_interest_upper_cap, mark.open_interest
    )


def linear_margin(
    position: NettedPosition, mark_price: float, tiers: list[Tier] | None, initial_rate: float | None = None
) -> tuple[float, float]:
    """§3 perpetual / future: `IM = notional × imr`, `MM = notional × mmr`, tiered when the
    instrument has `margin_tiers`; `initial_rate` replaces `imr` (open-interest scaling) and
    the instrument's `imf_factor` adds Drift's size premium to both rates. Returns `(IM, MM)`."""
    value = notional(position, mark_price)
    ins = position.instrument
    if not tiers and (ins.imf_factor > 0.0 or initial_rate is not None):
        # size- and open-interest-dependent rates (they never combine with tiers)
        imr = ins.initial_margin_rate if initial_rate is None else initial_rate
        size = abs(position.quantity) * ins.multiplier
        return (
            value * size_premium_rate(imr, ins.imf_factor, size),
            value * size_premium_rate(ins.maintenance_margin_rate, ins.imf_factor, size),
        )
    brackets = brackets_with_base(ins, tiers)
    return tiered_margin(value, brackets, "initial"), tiered_margin(value, brackets, "maintenance")


def out_of_the_money(instrument: Instrument, index_price: float) -> float:
    """§3: `max(K − S, 0)` for calls, `max(S − K, 0)` for puts."""
    assert instrument.strike is not None
    if instrument.is_call:
        return max(instrument.strike - index_price, 0.0)
    return max(index_price - instrument.strike, 0.0)


def short_option_margin(
    position: NettedPosition, mark_price: float, index_price: float
) -> tuple[float, float]:
    """§3 short option. Per contract
    `IM = mark + max(imr × S − OTM, initial_margin_floor × S)`, `MM = mark + mmr × S`;
    each multiplied by `|q| × multiplier` (evaluated as `|q| × multiplier × per_contract`, left to
    right, like the notional). Returns `(IM, MM)`."""
    ins = position.instrument
    floor = ins.initial_margin_floor if ins.initial_margin_floor is not None else 0.0
    otm = out_of_the_money(ins, index_price)
    im_per_contract = mark_price + max(ins.initial_margin_rate * index_price - otm, floor * index_price)
    mm_per_contract = mark_price + ins.maintenance_margin_rate * index_price
    size = abs(position.quantity) * ins.multiplier
    return size * im_per_contract, size * mm_per_contract


def inverse_margin(
    position: NettedPosition, book: BookData, mark_price: float, index_price: float
) -> tuple[float, float]:
    """§3 for an inverse (coin-settled) contract: the margin in coin times the settlement coin's
    price. A perpetual or future on its coin notional `|q| × multiplier / mark` (tiers read coin
    notional); a short coin-settled option per contract, Deribit's rule in coin,
    `IM = mark + max(imr − OTM/S, floor)`, `MM = mark + mmr`, times `|q| × multiplier`; a long
    option 0. Returns `(IM, MM)` in USD."""
    ins = position.instrument
    price = book.settlement_price(ins)
    if not ins.is_option:
        coins = abs(position.quantity) * ins.multiplier / mark_price
        brackets = brackets_with_base(ins, book.tiers.get(ins.id))
        im = tiered_margin(coins, brackets, "initial")
        mm = tiered_margin(coins, brackets, "maintenance")
        return im * price, mm * price
    if position.quantity > 0.0:
        return 0.0, 0.0
    floor = ins.initial_margin_floor if ins.initial_margin_floor is not None else 0.0
    otm = out_of_the_money(ins, index_price)
    im_per_contract = mark_price + max(ins.initial_margin_rate - otm / index_price, floor)
    mm_per_contract = mark_price + ins.maintenance_margin_rate
    size = abs(position.quantity) * ins.multiplier
    return size * im_per_contract * price, size * mm_per_contract * price


def position_margin(position: NettedPosition, book: BookData, market: MarketData) -> tuple[float, float]:
    """§3 `(IM, MM)` of one netted position: linear for perpetuals/futures, 0 for a long option,
    the short-option formula for a short option (`inverse_margin` for inverse contracts)."""
    ins = position.instrument
    mark_price = market.marks[ins.id].mark_price
    if ins.is_inverse:
        return inverse_margin(position, book, mark_price, market.index_prices[ins.underlying])
    if not ins.is_option:
        return linear_margin(position, mark_price, book.tiers.get(ins.id), scaled_initial_rate(ins, market))
    if position.quantity > 0.0:
        return 0.0, 0.0  # long option: premium paid, its value is in equity
    return short_option_margin(position, mark_price, market.index_prices[ins.underlying])


def standard_margin(
    positions: list[NettedPosition], book: BookData, market: MarketData
) -> tuple[float, float]:
    """§3 account `(IM, MM) = (Σ IM, Σ MM)` over netted positions in instrument-id order."""
    im = 0.0
    mm = 0.0
    for position in positions:
        p_im, p_mm = position_margin(position, book, market)
        im += p_im
        mm += p_mm
    return im, mm
