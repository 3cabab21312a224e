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
5. **Combination**, by the methodology's `combination` rule:
   - `loss_factor` (Derive): `margin = loss_factor × worst + mtm + cash − contingencies`, the
     MM with the maintenance loss factor and the MM contingencies, the IM with the initial loss
     factor (raised by a stable-coin peg loss) and the MM plus IM contingencies. A positive
     margin is an excess; negative, a shortfall (Derive's signed figures);
   - `max_of_groups` (v1): the requirement `MM = max(scan, extreme_cover × extreme, short_min)
     + contingencies`, `IM = im_factor × MM + IM contingencies` (`max_of_group_requirements`).
   Both report the requirements and the signed figures (equity after the requirement).

Revaluation (`revaluation`): `expiry_sum` revalues each expiry's options together (the static
discount and the skew rule act on that total); `risk_array` is the sparse product of
per-contract risk arrays (`multiplier × (shocked − current)`) with the quantities, summed in the
holdings' `order` (v1's position order, so v1's sums are reproduced bit for bit).

Add-ons beyond v1 (the `exchange` preset): the calendar basis across expiry buckets and the
concentration charge against liquidity (`calendar_basis_charge`, `concentration_charge`), both
on the holdings' deltas.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import asdict, dataclass, field

from margin_engine.methodology_params import ScenarioMethodology, ScenarioRow

from .black76 import black76_scalar

SECONDS_PER_DAY = 86_400.0
SECONDS_PER_YEAR = 365.0 * SECONDS_PER_DAY

__all__ = [
    "CollateralHolding",
    "ExpiryHolding",
    "LinearHolding",
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
    """A net option position: `quantity` contracts (negative = short) of one strike and type;
    each contract is `multiplier` units of the underlying. `order` places the position in the
    account's sums (`risk_array` revaluation, short minimum)."""

    strike: float
    is_call: bool
    quantity: float
    vol: float
    multiplier: float = 1.0
    order: int = 0


@dataclass
class LinearHolding:
    """A net perpetual or dated future (beyond the one net perpetual of `ScenarioPortfolio`):
    `quantity` contracts of `multiplier` units on `mark`, moving one-for-one with the index in
    every scenario (`q × multiplier × mark × spot_move`). `seconds_to_expiry` is None for a
    perpetual; it places the holding in its expiry bucket (`CalendarBasis`)."""

    quantity: float
    mark: float
    multiplier: float = 1.0
    seconds_to_expiry: float | None = None
    order: int = 0
    days_to_expiry: float | None = None
    """Days as the caller measures them; None: `seconds_to_expiry / 86,400`."""
    confidence: float = 1.0
    """The mark's confidence; a perpetual's enters the oracle-confidence add-on beside the
    index feed's (as the net perpetual's does)."""

    @property
    def days(self) -> float | None:
        if self.seconds_to_expiry is None:
            return None
        if self.days_to_expiry is not None:
            return self.days_to_expiry
        return max(self.seconds_to_expiry, 0.0) / SECONDS_PER_DAY


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
    days_to_expiry: float | None = None
    """Days to expiry as the caller measures them (v1: years × 365); None: seconds / 86,400."""

    @property
    def years(self) -> float:
        return max(self.seconds_to_expiry, 0.0) / SECONDS_PER_YEAR

    @property
    def days(self) -> float:
        if self.days_to_expiry is not None:
            return self.days_to_expiry
        return max(self.seconds_to_expiry, 0.0) / SECONDS_PER_DAY

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
    linears: list[LinearHolding] = field(default_factory=list)
    spot_confidence: float = 1.0
    perp_confidence: float = 1.0
    stable_price: float = 1.0
    """Price of the quote stable coin in USD (for the peg-loss add-on)."""

    def to_dict(self) -> dict:
        """The plain structure (nested dicts and lists of the fields) that the Rust engine's
        binding `_core.scenario_margin` reads."""
        return asdict(self)


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
    calendar_basis: float = 0.0
    concentration: float = 0.0

    @property
    def maintenance(self) -> float:
        return (
            self.perp_maintenance
            + self.option_maintenance
            + self.collateral_maintenance
            + self.calendar_basis
            + self.concentration
        )

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
    initial_requirement: float = 0.0
    """The IM charged (>= 0 under `max_of_groups`): equity minus `initial_margin`."""
    maintenance_requirement: float = 0.0
    """The MM charged: equity minus `maintenance_margin`."""


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
    days = expiry.days
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
        total += o.quantity * o.multiplier * option_value(forward, o.strike, expiry.years, vol, o.is_call, discount)
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
        total += o.quantity * o.multiplier * option_value(forward, o.strike, expiry.years, vol, o.is_call, discount)
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
    for lin in portfolio.linears:
        pnl += lin.quantity * linear_contract_pnl(lin, row) * row.weight
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


def linear_contract_pnl(lin: LinearHolding, row: ScenarioRow) -> float:
    """Per-contract P&L of a perpetual / future in a row: `multiplier × mark × spot_move`."""
    return lin.multiplier * lin.mark * row.spot_move


def option_contract_pnl(expiry: ExpiryHolding, pre: ExpiryPrecompute, o: OptionHolding, row: ScenarioRow, meth: ScenarioMethodology) -> float:
    """Per-contract P&L of an option in a (non-skew) row, its risk-array entry:
    `multiplier × (value on the shocked forward and vol − value now)`."""
    if row.vol_shock == "up":
        vol = max(meth.vol_shock.min_shocked_vol_up, o.vol * pre.vol_up)
    elif row.vol_shock == "down":
        vol = o.vol * pre.vol_down
    else:
        vol = o.vol
    forward = expiry.forward_variable * row.spot_factor + expiry.forward_fixed
    shocked = option_value(forward, o.strike, expiry.years, vol, o.is_call, pre.discount)
    current = option_value(expiry.forward, o.strike, expiry.years, o.vol, o.is_call, pre.discount)
    return o.multiplier * (shocked - current)


def ordered_holdings(portfolio: ScenarioPortfolio) -> list[tuple[int, OptionHolding | LinearHolding]]:
    """Options (with their expiry's index) and linear holdings in `order` (stable): the order
    of the account's sums under `risk_array` revaluation."""
    items: list[tuple[int, int, OptionHolding | LinearHolding]] = []
    for e, expiry in enumerate(portfolio.expiries):
        items.extend((o.order, e, o) for o in expiry.options)
    items.extend((lin.order, -1, lin) for lin in portfolio.linears)
    items.sort(key=lambda item: item[0])
    return [(e, h) for _, e, h in items]


def risk_array_pnl(
    portfolio: ScenarioPortfolio,
    pres: list[ExpiryPrecompute],
    holdings: list[tuple[int, OptionHolding | LinearHolding]],
    row: ScenarioRow,
    meth: ScenarioMethodology,
) -> float:
    """`risk_array` revaluation of one row: `Σ q × risk array entry` over the holdings in
    order (the net perpetual first, risk-cancelling coins last), times the row's weight."""
    move = row.spot_factor - 1.0
    pnl = portfolio.perp_quantity * (move * portfolio.perp_mark) if portfolio.perp_quantity else 0.0
    for e, h in holdings:
        if isinstance(h, LinearHolding):
            pnl += h.quantity * linear_contract_pnl(h, row)
        else:
            pnl += h.quantity * option_contract_pnl(portfolio.expiries[e], pres[e], h, row, meth)
    for coin in portfolio.collaterals:
        if coin.risk_cancelling:
            pnl += coin.value * move
    return pnl * row.weight


# --------------------------------------------------------------------------------------------
# Step 4: contingencies
# --------------------------------------------------------------------------------------------


def bucket_deltas(portfolio: ScenarioPortfolio, pres: list[ExpiryPrecompute], meth: ScenarioMethodology) -> dict[int, float]:
    """Delta in the quote currency per expiry bucket of `CalendarBasis` (bucket 0: perpetuals
    and risk-cancelling coins). Linear: `q × multiplier × mark`; option: `q × multiplier ×
    discount × Black-76 delta × forward`. Edges of the `exchange` default when the methodology
    has no calendar part (only the total is used then)."""
    cb = meth.calendar_basis
    edges = cb.bucket_edges_days if cb is not None else ()

    def bucket(days: float | None) -> int:
        return 0 if days is None else 1 + bisect_left(edges, days)

    out: dict[int, float] = {}

    def add(b: int, delta: float) -> None:
        out[b] = out.get(b, 0.0) + delta

    if portfolio.perp_quantity:
        add(0, portfolio.perp_quantity * portfolio.perp_mark)
    for lin in portfolio.linears:
        add(bucket(lin.days), lin.quantity * lin.multiplier * lin.mark)
    for expiry, pre in zip(portfolio.expiries, pres, strict=True):
        forward = expiry.forward
        for o in expiry.options:
            delta = black76_scalar(forward, o.strike, expiry.years, o.vol, o.is_call)[1]
            add(bucket(expiry.days), o.quantity * o.multiplier * pre.discount * delta * forward)
    for coin in portfolio.collaterals:
        if coin.risk_cancelling:
            add(0, coin.value)
    return out


def calendar_basis_charge(deltas: dict[int, float], meth: ScenarioMethodology) -> float:
    """`CalendarBasis`: long bucket deltas matched in proportion against short ones, each pair
    charged at the larger of its two bucket rates."""
    cb = meth.calendar_basis
    if cb is None:
        return 0.0
    longs = {b: d for b, d in sorted(deltas.items()) if d > 0.0}
    shorts = {b: -d for b, d in sorted(deltas.items()) if d < 0.0}
    total_long = sum(longs.values())
    total_short = sum(shorts.values())
    if not longs or not shorts:
        return 0.0
    scale = max(total_long, total_short)
    charge = 0.0
    for i, li in longs.items():
        for j, sj in shorts.items():
            charge += li * sj / scale * max(cb.bucket_rates[i], cb.bucket_rates[j])
    return charge


def concentration_charge(deltas: dict[int, float], meth: ScenarioMethodology) -> float:
    """`Concentration`: `rate × max(0, |net delta| − L)^1.5 / L^0.5`."""
    c = meth.concentration
    if c is None:
        return 0.0
    excess = abs(sum(deltas[b] for b in sorted(deltas))) - c.liquidity_notional
    if excess <= 0.0:
        return 0.0
    return c.rate * excess * math.sqrt(excess / c.liquidity_notional)


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


def contingencies(portfolio: ScenarioPortfolio, meth: ScenarioMethodology, pres: list[ExpiryPrecompute] | None = None) -> Contingencies:
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
    # perpetuals held as linear holdings (a book's accounts) count as the net perpetual does
    for lin in portfolio.linears:
        if lin.seconds_to_expiry is None:
            perp_notional += abs(lin.quantity) * lin.multiplier * portfolio.spot
            book_confidence = min(book_confidence, lin.confidence)
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
    if meth.calendar_basis is not None or meth.concentration is not None:
        deltas = bucket_deltas(portfolio, pres if pres is not None else [precompute_expiry(e, meth) for e in portfolio.expiries], meth)
        out.calendar_basis = calendar_basis_charge(deltas, meth)
        out.concentration = concentration_charge(deltas, meth)
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

    if meth.revaluation == "risk_array":
        holdings = ordered_holdings(portfolio)
        pnls = [risk_array_pnl(portfolio, pres, holdings, row, meth) for row in meth.scenarios]
    else:
        pnls = [scenario_pnl(portfolio, pres, row, meth) for row in meth.scenarios]
    worst_by_group: dict[str, float] = {}
    for row, pnl in zip(meth.scenarios, pnls, strict=True):
        worst_by_group[row.group] = min(worst_by_group.get(row.group, math.inf), pnl)

    basis = sum(p.basis_charge for p in pres)
    worst, worst_row = basis, None
    for i, pnl in enumerate(pnls):
        if pnl < worst:
            worst, worst_row = pnl, i

    cont = contingencies(portfolio, meth, pres)
    im_factor = initial_loss_factor(portfolio, meth)
    mm_factor = meth.loss_factors.maintenance
    equity = mtm + portfolio.cash
    if meth.combination == "max_of_groups":
        im_req, mm_req = max_of_group_requirements(portfolio, pnls, basis, cont, meth)
        im, mm = equity - im_req, equity - mm_req
    else:
        mm = worst * mm_factor - cont.maintenance + equity
        im = worst * im_factor - cont.maintenance - cont.initial_extra + equity
        mm_req = cont.maintenance - worst * mm_factor
        im_req = cont.maintenance + cont.initial_extra - worst * im_factor
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
        initial_requirement=im_req,
        maintenance_requirement=mm_req,
    )


def short_option_minimum(portfolio: ScenarioPortfolio, rate: float) -> float:
    """v1's short-option minimum: `Σ |q| × multiplier × spot × rate` over the short options, in
    the holdings' order."""
    total = 0.0
    for _, h in ordered_holdings(portfolio):
        if isinstance(h, OptionHolding) and h.quantity < 0.0:
            total += abs(h.quantity) * h.multiplier * portfolio.spot * rate
    return total


def max_of_group_requirements(
    portfolio: ScenarioPortfolio, pnls: list[float], basis: float, cont: Contingencies, meth: ScenarioMethodology
) -> tuple[float, float]:
    """The `max_of_groups` rule: `(IM, MM)` requirements of the portfolio. `scan` is the worst
    loss (>= 0) of every row outside the extreme group (and the basis contingency when it is
    on), `extreme` that of the extreme rows; `MM = max(scan, extreme_cover × extreme,
    short_min) + MM contingencies` (the add-ons), `IM = im_factor × MM + IM contingencies`.
    The loss factors and the peg loss belong to the `loss_factor` rule and are not read."""
    mg = meth.max_of_groups
    assert mg is not None
    regular = [p for row, p in zip(meth.scenarios, pnls, strict=True) if row.group != "extreme"]
    extreme = [p for row, p in zip(meth.scenarios, pnls, strict=True) if row.group == "extreme"]
    scan = max(0.0, -min(regular)) if regular else 0.0
    if meth.basis_contingency is not None:
        scan = max(scan, -basis)
    extreme_loss = mg.extreme_cover * max(0.0, -min(extreme)) if extreme else 0.0
    short_min = short_option_minimum(portfolio, mg.short_option_minimum)
    mm = max(scan, extreme_loss, short_min)
    if cont.maintenance:
        mm += cont.maintenance
    im = mg.im_factor * mm
    if cont.initial_extra:
        im += cont.initial_extra
    return im, mm
