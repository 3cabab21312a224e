"""The generalized scenario (portfolio) margin engine, in plain Python (methodology v2 §9.1).

One engine, driven entirely by a `ScenarioMethodology` (`margin_engine.methodology_params`):
a preset such as `derive_pmrm2` is a parameter set, never a code path of its own. The engine is
written to be read from top to bottom; each step is one small function.

What one account holds, per underlying (`ScenarioPortfolio`):
- cash (quote currency), perpetuals (one net quantity on the perpetual's mark), their unsettled
  cash (unrealised P&L and funding), collateral coins (valued in the quote currency, some of
  them moving with the underlying: "risk cancelling"), and options grouped by expiry
  (`ExpiryHolding`: forward, rate, and the options with their implied vols).

The steps:
1. **Precompute per expiry**: its current option value `mtm` (Black-76 on the expiry's forward,
   discounted), its vol shocks (`vol_shock_factors`), its static discount factors
   (`static_discount_factors`), and the basis contingency (`basis_contingency`).
2. **Scenario P&L** (`scenario_pnl`): for each row of the scenario table, the change of value
   against the current marks: perpetuals on their mark, options revalued on the shocked forward
   with shocked (or tilted) vols, then scaled by the static discount of their sign, risk
   cancelling collateral moved with the spot; times the row's weight. In skew rows each
   expiry's P&L counts as a loss whichever its sign (a tilt in the other direction would turn a
   gain into a loss of about the same size).
3. **Worst loss**: the lowest P&L over every row and the basis contingency (0 when switched
   off or when nothing loses, so a scenario gain is never credited); per group for reporting.
4. **Contingencies** (`contingencies`): charges on size and data quality that no scenario
   captures: perpetual and naked-short-option size, collateral haircuts, oracle confidence.
5. **Combination** (`combine`): `margin = loss_factor × worst + mtm + cash − contingencies`, the
   MM with the maintenance loss factor and the MM contingencies, the IM with the initial loss
   factor (raised by a stable-coin peg loss) and the MM plus IM contingencies. A positive margin
   is an excess; negative, a shortfall (Derive's signed figures).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from margin_engine.methodology_params import ScenarioMethodology, ScenarioRow

from .black76 import black76_scalar

SECONDS_PER_DAY = 86_400.0
SECONDS_PER_YEAR = 365.0 * SECONDS_PER_DAY

__all__ = [
    "CollateralHolding",
    "ExpiryHolding",
    "OptionHolding",
    "ScenarioMargin",
    "ScenarioPortfolio",
    "margin_scenarios",
]


# --------------------------------------------------------------------------------------------
# What an account holds
# --------------------------------------------------------------------------------------------


@dataclass
class OptionHolding:
    """A net option position: `quantity` contracts (negative = short) of one strike and type."""

    strike: float
    is_call: bool
    quantity: float
    vol: float


@dataclass
class ExpiryHolding:
    """The options of one expiry and the market data they are revalued with.

    The forward is `forward_variable × (1 + spot_move) + forward_fixed`: the fixed part is what
    is already known of the settlement price (an averaging window that has started), the
    variable part moves with the underlying. `rate` is the expiry's yearly rate (a negative rate
    is treated as 0); `confidence` the lowest confidence of the expiry's forward, rate and vol
    feeds.
    """

    seconds_to_expiry: float
    forward_variable: float
    forward_fixed: float
    rate: float
    options: list[OptionHolding]
    confidence: float = 1.0

    @property
    def years(self) -> float:
        return max(self.seconds_to_expiry, 0.0) / SECONDS_PER_YEAR

    @property
    def forward(self) -> float:
        return self.forward_variable + self.forward_fixed


@dataclass
class CollateralHolding:
    """A collateral coin, `value` in the quote currency. A risk-cancelling coin moves with the
    underlying in every scenario (a BTC coin against BTC options); the others do not."""

    name: str
    value: float
    risk_cancelling: bool
    maintenance_haircut: float = 0.0
    initial_haircut: float = 0.0
    confidence: float = 1.0


@dataclass
class ScenarioPortfolio:
    """One account's holdings on one underlying, with the prices they are valued at."""

    spot: float
    cash: float = 0.0
    perp_quantity: float = 0.0
    perp_mark: float = 0.0
    perp_unsettled: float = 0.0
    """Unrealised perpetual P&L plus funding not yet settled into cash (part of the MtM)."""
    expiries: list[ExpiryHolding] = field(default_factory=list)
    collaterals: list[CollateralHolding] = field(default_factory=list)
    spot_confidence: float = 1.0
    perp_confidence: float = 1.0
    stable_price: float = 1.0
    """Price of the quote stable coin in USD (for the peg-loss add-on)."""


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass
class ExpiryPrecompute:
    """Per-expiry numbers computed once and used by every scenario."""

    mtm: float
    discount: float
    vol_up: float
    vol_down: float
    static_long: float
    static_short: float
    basis_up_pnl: float
    basis_down_pnl: float
    basis_charge: float


@dataclass
class Contingencies:
    """Charges added to the scenario loss, each >= 0 (quote currency)."""

    perp_maintenance: float = 0.0
    perp_initial: float = 0.0
    option_maintenance: float = 0.0
    option_initial: float = 0.0
    collateral_maintenance: float = 0.0
    collateral_initial: float = 0.0
    confidence: float = 0.0

    @property
    def maintenance(self) -> float:
        return self.perp_maintenance + self.option_maintenance + self.collateral_maintenance

    @property
    def initial_extra(self) -> float:
        """What the IM charges on top of the maintenance contingencies."""
        return self.perp_initial + self.option_initial + self.collateral_initial + self.confidence


@dataclass
class ScenarioMargin:
    """The scenario engine's answer for one portfolio."""

    initial_margin: float
    """Signed: equity after the IM requirement (negative = shortfall)."""
    maintenance_margin: float
    """Signed: equity after the MM requirement (negative = shortfall)."""
    mark_to_market: float
    """Value of everything but cash: options, perpetual unsettled cash, collateral."""
    cash: float
    scenario_pnl: list[float]
    """P&L of each row of the scenario table, in its order (negative = loss)."""
    worst_by_group: dict[str, float]
    """The lowest P&L of each group present in the table (0 for an empty portfolio)."""
    basis_contingency: float
    """The (non-positive) basis candidate for the worst loss."""
    worst_loss: float
    worst_scenario: int | None
    """Row index of the worst loss, or None when the basis contingency is the worst."""
    contingencies: Contingencies
    initial_loss_factor: float
    maintenance_loss_factor: float
    expiries: list[ExpiryPrecompute]


# --------------------------------------------------------------------------------------------
# Step 1: per-expiry precomputes
# --------------------------------------------------------------------------------------------


def discount_factor(expiry: ExpiryHolding, meth: ScenarioMethodology) -> float:
    """`exp(−max(r, 0) × t)` when options are discounted, else 1."""
    if not meth.discount_options:
        return 1.0
    return math.exp(-max(expiry.rate, 0.0) * expiry.years)


def option_value(forward: float, strike: float, years: float, vol: float, is_call: bool, discount: float) -> float:
    """Discounted Black-76 value of one contract (intrinsic value when `vol × √t` is 0)."""
    price = black76_scalar(forward, strike, years, vol, is_call)[0]
    return discount * price


def vol_shock_factors(expiry: ExpiryHolding, meth: ScenarioMethodology) -> tuple[float, float]:
    """The expiry's `(up, down)` vol multipliers (`VolShock`)."""
    p = meth.vol_shock
    days = max(expiry.seconds_to_expiry, 0.0) / SECONDS_PER_DAY
    tau = p.reference_days / max(days, p.dte_floor_days)
    power = p.short_term_power if days <= p.term_threshold_days else p.long_term_power
    scale = tau**power
    return 1.0 + p.vol_up * scale, max(p.down_floor, 1.0 - p.vol_down * scale)


def static_discount_factors(expiry: ExpiryHolding, discount: float, meth: ScenarioMethodology) -> tuple[float, float]:
    """`(long, short)` scales of a positive / negative shocked expiry value (`StaticDiscount`)."""
    sd = meth.static_discount
    if sd is None:
        return 1.0, 1.0
    t = expiry.years
    r = max(expiry.rate, 0.0)
    long_scale = sd.long_base * math.exp(-t * (r * sd.long_rate_mult + sd.long_rate_add))
    short_scale = sd.short_base / math.exp(-t * (r * sd.short_rate_mult + sd.short_rate_add))
    if sd.cap_short_at_inverse_discount:
        short_scale = min(short_scale, 1.0 / discount)
    return long_scale, short_scale


def expiry_value(
    expiry: ExpiryHolding, discount: float, spot_factor: float = 1.0, vol_factor: float = 1.0, min_vol: float = 0.0
) -> float:
    """Value of the expiry's options with the variable part of the forward scaled by
    `spot_factor` and every vol scaled by `vol_factor` (never below `min_vol`)."""
    forward = expiry.forward_variable * spot_factor + expiry.forward_fixed
    total = 0.0
    for o in expiry.options:
        vol = max(min_vol, o.vol * vol_factor)
        total += o.quantity * option_value(forward, o.strike, expiry.years, vol, o.is_call, discount)
    return total


def skewed_expiry_value(expiry: ExpiryHolding, discount: float, linear: bool, meth: ScenarioMethodology) -> float:
    """Value of the expiry's options with the smile tilted by log-moneyness (`SkewShock`), on
    the current forward."""
    s = meth.skew_shock
    assert s is not None
    root_t = math.sqrt(expiry.years)
    cap = (s.linear_cap + s.linear_cap_slope * root_t) if linear else (s.abs_cap + s.abs_cap_slope * root_t)
    k_star = max(s.min_k_star, root_t * s.width_scale * (s.vol_level + s.vol_level_slope * root_t))
    forward = expiry.forward
    total = 0.0
    for o in expiry.options:
        k = math.log(o.strike / forward)
        if not linear:
            k = abs(k)
        tilt = min(cap, k * cap / k_star) if k >= 0 else max(-cap, k * cap / k_star)
        vol = o.vol * max(0.0, 1.0 + tilt)
        total += o.quantity * option_value(forward, o.strike, expiry.years, vol, o.is_call, discount)
    return total


def basis_contingency(expiry: ExpiryHolding, mtm: float, discount: float, meth: ScenarioMethodology) -> tuple[float, float, float]:
    """`(up P&L, down P&L, charge)` of the basis contingency for one expiry: the expiry revalued
    with the spot up and down (vols unchanged); `charge = min(up, down, 0) × (add + mult × t)`
    (non-positive)."""
    bc = meth.basis_contingency
    if bc is None:
        return 0.0, 0.0, 0.0
    up = expiry_value(expiry, discount, 1.0 + bc.spot_up) - mtm
    down = expiry_value(expiry, discount, 1.0 + bc.spot_down) - mtm
    charge = min(up, down, 0.0) * (bc.add_factor + bc.mult_factor * expiry.years)
    return up, down, charge


def precompute_expiry(expiry: ExpiryHolding, meth: ScenarioMethodology) -> ExpiryPrecompute:
    discount = discount_factor(expiry, meth)
    mtm = expiry_value(expiry, discount)
    up, down = vol_shock_factors(expiry, meth)
    static_long, static_short = static_discount_factors(expiry, discount, meth)
    basis_up, basis_down, basis_charge = basis_contingency(expiry, mtm, discount, meth)
    return ExpiryPrecompute(mtm, discount, up, down, static_long, static_short, basis_up, basis_down, basis_charge)


# --------------------------------------------------------------------------------------------
# Step 2: the P&L of one scenario row
# --------------------------------------------------------------------------------------------


def shocked_expiry_value(expiry: ExpiryHolding, pre: ExpiryPrecompute, row: ScenarioRow, meth: ScenarioMethodology) -> float:
    """The expiry's option value in the scenario, before the static discount."""
    if row.vol_shock in ("skew_linear", "skew_abs"):
        return skewed_expiry_value(expiry, pre.discount, row.vol_shock == "skew_linear", meth)
    if row.vol_shock == "up":
        return expiry_value(expiry, pre.discount, row.spot_factor, pre.vol_up, meth.vol_shock.min_shocked_vol_up)
    if row.vol_shock == "down":
        return expiry_value(expiry, pre.discount, row.spot_factor, pre.vol_down)
    return expiry_value(expiry, pre.discount, row.spot_factor)


def scenario_pnl(
    portfolio: ScenarioPortfolio, pres: list[ExpiryPrecompute], row: ScenarioRow, meth: ScenarioMethodology
) -> float:
    """Change of the portfolio's value in one scenario row, times the row's weight."""
    move = row.spot_factor - 1.0
    pnl = portfolio.perp_quantity * (move * portfolio.perp_mark) * row.weight if portfolio.perp_quantity else 0.0
    for expiry, pre in zip(portfolio.expiries, pres, strict=True):
        shocked = shocked_expiry_value(expiry, pre, row, meth)
        shocked *= pre.static_long if shocked >= 0.0 else pre.static_short
        expiry_pnl = (shocked - pre.mtm) * row.weight
        if row.vol_shock in ("skew_linear", "skew_abs"):
            expiry_pnl = -abs(expiry_pnl)
        pnl += expiry_pnl
    for coin in portfolio.collaterals:
        if coin.risk_cancelling:
            pnl += coin.value * move * row.weight
    return pnl


# --------------------------------------------------------------------------------------------
# Step 4: contingencies
# --------------------------------------------------------------------------------------------


def naked_short_options(expiry: ExpiryHolding) -> float:
    """Contracts short at a strike beyond the longs of the same strike (calls and puts of one
    strike offset each other), summed over the expiry's strikes."""
    by_strike: dict[float, list[float]] = {}
    for o in expiry.options:
        by_strike.setdefault(o.strike, []).append(o.quantity)
    naked = 0.0
    for quantities in by_strike.values():
        shorts = -sum(q for q in quantities if q < 0)
        longs = sum(q for q in quantities if q > 0)
        naked += max(shorts - longs, 0.0)
    return naked


def confidence_charge(confidence: float, notional: float, meth: ScenarioMethodology) -> float:
    """`(1 − c) × scale × notional` when the confidence `c` is below the threshold."""
    cc = meth.confidence_contingency
    if cc is None or confidence >= cc.threshold:
        return 0.0
    return (1.0 - confidence) * cc.scale * notional


def contingencies(portfolio: ScenarioPortfolio, meth: ScenarioMethodology) -> Contingencies:
    """Every contingency of the portfolio (`PositionContingency`, collateral haircuts,
    `ConfidenceContingency`).

    Confidence of each exposure: the index feed's for everything; a held perpetual adds its own
    feed to the perpetual and option exposures (they are margined together); each expiry adds
    its forward, rate and vol feeds; each coin its own price feed.
    """
    out = Contingencies()
    pc = meth.position_contingency
    book_confidence = portfolio.spot_confidence
    if portfolio.perp_quantity:
        book_confidence = min(book_confidence, portfolio.perp_confidence)
    perp_notional = abs(portfolio.perp_quantity) * portfolio.spot
    if pc is not None:
        out.perp_maintenance = perp_notional * pc.perp_maintenance
        out.perp_initial = perp_notional * pc.perp_initial
    out.confidence += confidence_charge(book_confidence, perp_notional, meth)
    for expiry in portfolio.expiries:
        if pc is not None:
            naked_notional = naked_short_options(expiry) * portfolio.spot
            out.option_maintenance += naked_notional * pc.option_maintenance
            out.option_initial += naked_notional * pc.option_initial
        gross = sum(abs(o.quantity) for o in expiry.options) * portfolio.spot
        out.confidence += confidence_charge(min(book_confidence, expiry.confidence), gross, meth)
    for coin in portfolio.collaterals:
        if meth.collateral_haircuts_as_contingency:
            out.collateral_maintenance += coin.value * coin.maintenance_haircut
            out.collateral_initial += coin.value * coin.initial_haircut
        out.confidence += confidence_charge(min(portfolio.spot_confidence, coin.confidence), coin.value, meth)
    return out


# --------------------------------------------------------------------------------------------
# Steps 3 and 5: worst loss and combination
# --------------------------------------------------------------------------------------------


def initial_loss_factor(portfolio: ScenarioPortfolio, meth: ScenarioMethodology) -> float:
    """The IM loss factor, raised by the peg loss when the stable coin is below its threshold."""
    factor = meth.loss_factors.initial
    peg = meth.peg_loss
    if peg is not None and portfolio.stable_price < peg.threshold:
        factor += (peg.threshold - portfolio.stable_price) * peg.factor
    return factor


def margin_scenarios(portfolio: ScenarioPortfolio, meth: ScenarioMethodology) -> ScenarioMargin:
    """Scenario margin of one portfolio under `meth` (steps 1–5 of the module docstring)."""
    pres = [precompute_expiry(e, meth) for e in portfolio.expiries]
    mtm = portfolio.perp_unsettled + sum(p.mtm for p in pres)
    if meth.collateral_haircuts_as_contingency:
        mtm += sum(c.value for c in portfolio.collaterals)
    else:
        mtm += sum(c.value * (1.0 - c.maintenance_haircut) for c in portfolio.collaterals)

    pnls = [scenario_pnl(portfolio, pres, row, meth) for row in meth.scenarios]
    worst_by_group: dict[str, float] = {}
    for row, pnl in zip(meth.scenarios, pnls, strict=True):
        worst_by_group[row.group] = min(worst_by_group.get(row.group, math.inf), pnl)

    basis = sum(p.basis_charge for p in pres)
    worst, worst_row = basis, None
    for i, pnl in enumerate(pnls):
        if pnl < worst:
            worst, worst_row = pnl, i

    cont = contingencies(portfolio, meth)
    im_factor = initial_loss_factor(portfolio, meth)
    mm_factor = meth.loss_factors.maintenance
    equity = mtm + portfolio.cash
    mm = worst * mm_factor - cont.maintenance + equity
    im = worst * im_factor - cont.maintenance - cont.initial_extra + equity
    return ScenarioMargin(
        initial_margin=im,
        maintenance_margin=mm,
        mark_to_market=mtm,
        cash=portfolio.cash,
        scenario_pnl=pnls,
        worst_by_group=worst_by_group,
        basis_contingency=basis,
        worst_loss=worst,
        worst_scenario=worst_row,
        contingencies=cont,
        initial_loss_factor=im_factor,
        maintenance_loss_factor=mm_factor,
        expiries=pres,
    )
