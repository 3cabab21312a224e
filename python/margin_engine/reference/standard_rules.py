"""Generalized standard (per position) margin: §3 plus the rules real venues publish.

One function computes every methodology's standard margin; a methodology is a
`StandardParams` (`standard_params`), never a separate code path. With `V1` the numbers are
those of `standard.py` (docs/methodology.md §3) bit for bit; with `DERIVE_STANDARD` they are
Derive's standard manager. The rules, each switched and sized by a parameter:

1. **Short-option charge** per contract (longs are charged nothing):
   `IM = mark + max(im_rate × S − OTM, im_floor × S)`; calls `MM = mark + call_mm_rate × S`;
   puts `MM = mark + max(put_mm_rate × S, put_mm_mark_rate × mark)`; then, where set,
   `IM ≥ k × MM` (`put_im_mm_multiple`, `call_im_mm_multiple`). Times `|q| × multiplier`.
2. **Perpetuals and futures**: `notional × rate` (v1: the instrument's rate and tiers).
3. **Per-expiry max-loss floor** (`max_loss_floor`): the options of one (underlying, expiry)
   are charged `min(Σ their charges of rule 1, L + u × forward × N)`, where `L` is the largest
   loss of the expiry's payoff at settlement over the prices {0} ∪ {its strikes} (the payoff is
   piecewise linear between strikes, so these are its only candidate minima on [0, ∞)), `N` the
   net short calls `max(−Σ_calls q × mult, 0)` (the payoff falls without bound above the highest
   strike by N per unit of price), and `u` the unpaired-call scale (IM and MM each their own).
4. **Collateral**: the §2 collateral, except that with `option_value_in_collateral = False` no
   option position adds its value (a short's mark is then counted once, in its charge) and, with
   `base_asset_margin_factor`, a held asset linked to an underlying counts
   `amount × price × factor` (× `base_asset_im_scale` for IM) instead of its weights.
5. **IM add-ons**: stable-coin depeg and oracle confidence (see `StandardParams`).

Market data beyond v1's (forwards per expiry, feed confidences, the stable's price) come in a
`MarketFeeds`; every field defaults to what v1 implies (forward = index, confidence 1, stable 1).

Summation order: the account's charges are added in instrument-id order, an expiry's floored
charge at the place of its first option; then, per underlying in sorted order, the depeg add-on
and the oracle add-ons. With the floor and the add-ons off this is exactly §3's order.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._tables import (
    BalanceRow,
    BookData,
    InstrumentKey,
    MarketData,
    read_balances,
    read_book,
    read_market,
    read_positions,
)
from .results import health
from .standard import linear_margin, out_of_the_money, scaled_initial_rate
from .standard_params import StandardParams
from .valuation import NettedPosition, closed_pnl, net_positions, notional, position_pnl, weighted_value

__all__ = [
    "AccountStandardMargin",
    "ExpiryCharge",
    "MarketFeeds",
    "UnderlyingCharges",
    "account_standard_margin",
    "expiry_payoff",
    "standard_margin_rules",
]


# --------------------------------------------------------------------------------------------
# Inputs beyond v1
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MarketFeeds:
    """Market data that only the generalized rules read; every default is v1's implicit value."""

    forwards: Mapping[tuple[str, int], float] = field(default_factory=dict)
    """(underlying, expiry_ns) -> forward price of that expiry; missing: the index price."""
    stable_price: float = 1.0
    """USD price of the stable coin the account's cash is held in (the depeg add-on)."""
    index_confidence: Mapping[str, float] = field(default_factory=dict)
    """underlying -> confidence of its index feed, in [0, 1]; missing: 1."""
    mark_confidence: Mapping[InstrumentKey, float] = field(default_factory=dict)
    """perpetual / future key -> confidence of its mark feed; missing: 1."""
    forward_confidence: Mapping[tuple[str, int], float] = field(default_factory=dict)
    """(underlying, expiry_ns) -> confidence of the forward; missing: 1."""
    vol_confidence: Mapping[tuple[str, int], float] = field(default_factory=dict)
    """(underlying, expiry_ns) -> lowest confidence of that expiry's vols; missing: 1."""

    def forward(self, underlying: str, expiry_ns: int, index_price: float) -> float:
        """The forward of one expiry (the index price when none is given)."""
        return self.forwards.get((underlying, expiry_ns), index_price)


V1_FEEDS = MarketFeeds()


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass
class ExpiryCharge:
    """Rule 3 for the options of one (underlying, expiry)."""

    underlying: str
    expiry_ns: int
    forward: float
    isolated_im: float = 0.0
    """Σ of the options' rule-1 IM charges (0 for longs), in instrument-id order."""
    isolated_mm: float = 0.0
    max_loss: float = 0.0
    """`L ≥ 0`: the largest settlement loss of the expiry's payoff over {0} ∪ strikes."""
    unpaired_calls: float = 0.0
    """`N ≥ 0`: net short calls, in units of the underlying."""
    short_contracts: float = 0.0
    """Σ |q| × mult over the expiry's short options (oracle and depeg add-ons)."""
    floor_im: float = 0.0
    """`L + unpaired_call_im_scale × forward × N`."""
    floor_mm: float = 0.0
    im: float = 0.0
    """The expiry's charge: `min(isolated_im, floor_im)` under the floor, else `isolated_im`."""
    mm: float = 0.0


@dataclass
class UnderlyingCharges:
    """Everything charged or credited for one underlying (positive = requirement)."""

    option_isolated_im: float = 0.0
    option_isolated_mm: float = 0.0
    option_floor_im: float = 0.0
    option_floor_mm: float = 0.0
    option_im: float = 0.0
    """Σ over expiries of `ExpiryCharge.im` (before add-ons)."""
    option_mm: float = 0.0
    linear_im: float = 0.0
    linear_mm: float = 0.0
    depeg_im: float = 0.0
    oracle_linear_im: float = 0.0
    oracle_option_im: float = 0.0
    oracle_base_im: float = 0.0
    base_collateral_initial: float = 0.0
    """Collateral of held assets linked to this underlying (rule 4)."""
    base_collateral_maintenance: float = 0.0

    @property
    def oracle_im(self) -> float:
        """All oracle-confidence add-ons of the underlying."""
        return self.oracle_linear_im + self.oracle_option_im + self.oracle_base_im


@dataclass
class AccountStandardMargin:
    """One account under the generalized standard margin."""

    account_id: int
    initial_margin: float
    maintenance_margin: float
    equity: float
    collateral_initial: float
    collateral_maintenance: float
    upnl: float
    """Σ unrealized P&L of perpetuals / futures (closed P&L included)."""
    option_value: float
    """Σ q × mult × mark over option positions (in collateral only under v1's convention)."""
    by_underlying: dict[str, UnderlyingCharges]
    expiries: list[ExpiryCharge]

    @property
    def free_collateral(self) -> float:
        """`collateral_initial − IM` (Derive's signed initial margin)."""
        return self.collateral_initial - self.initial_margin

    @property
    def margin_excess(self) -> float:
        """`collateral_maintenance − MM` (Derive's signed maintenance margin)."""
        return self.collateral_maintenance - self.maintenance_margin

    @property
    def health(self) -> float | None:
        """§6 `collateral_maintenance / MM`."""
        return health(self.collateral_maintenance, self.maintenance_margin)


# --------------------------------------------------------------------------------------------
# Rule 1: one short option
# --------------------------------------------------------------------------------------------


def _choose(override: float | None, own: float | None) -> float:
    """A methodology rate when set, else the instrument's own (a missing floor is 0)."""
    if override is not None:
        return override
    return 0.0 if own is None else own


def short_option_charge(
    position: NettedPosition, mark: float, index_price: float, params: StandardParams
) -> tuple[float, float]:
    """Rule 1 `(IM, MM)` of one short option (see the module docstring)."""
    ins = position.instrument
    im_rate = _choose(params.option_im_rate, ins.initial_margin_rate)
    im_floor = _choose(params.option_im_floor, ins.initial_margin_floor)
    otm = out_of_the_money(ins, index_price)
    im_per_contract = mark + max(im_rate * index_price - otm, im_floor * index_price)
    if ins.is_call:
        mm_rate = _choose(params.call_mm_rate, ins.maintenance_margin_rate)
        mm_per_contract = mark + mm_rate * index_price
        multiple = params.call_im_mm_multiple
    else:
        mm_rate = _choose(params.put_mm_rate, ins.maintenance_margin_rate)
        if params.put_mm_mark_rate > 0.0:
            mm_per_contract = mark + max(mm_rate * index_price, params.put_mm_mark_rate * mark)
        else:
            mm_per_contract = mark + mm_rate * index_price
        multiple = params.put_im_mm_multiple
    size = abs(position.quantity) * ins.multiplier
    im = size * im_per_contract
    mm = size * mm_per_contract
    if multiple is not None:
        im = max(im, multiple * mm)
    return im, mm


def isolated_charge(
    position: NettedPosition, book: BookData, market: MarketData, params: StandardParams
) -> tuple[float, float]:
    """Rules 1 and 2 `(IM, MM)` of one netted position, before any floor."""
    ins = position.instrument
    mark = market.marks[ins.id].mark_price
    if not ins.is_option:
        if params.linear_im_rate is None or params.linear_mm_rate is None:
            return linear_margin(position, mark, book.tiers.get(ins.id), scaled_initial_rate(ins, market))
        value = notional(position, mark)
        return value * params.linear_im_rate, value * params.linear_mm_rate
    if position.quantity > 0.0:
        return 0.0, 0.0
    return short_option_charge(position, mark, market.index_prices[ins.underlying], params)


# --------------------------------------------------------------------------------------------
# Rule 3: one expiry
# --------------------------------------------------------------------------------------------


def expiry_payoff(options: list[NettedPosition], price: float) -> float:
    """The settlement value of an expiry's options if the underlying settles at `price`:
    `Σ q × mult × intrinsic(price)`."""
    total = 0.0
    for position in options:
        ins = position.instrument
        assert ins.strike is not None
        if ins.is_call:
            intrinsic = max(price - ins.strike, 0.0)
        else:
            intrinsic = max(ins.strike - price, 0.0)
        total += position.quantity * ins.multiplier * intrinsic
    return total


def expiry_charge(
    underlying: str,
    expiry_ns: int,
    options: list[NettedPosition],
    book: BookData,
    market: MarketData,
    params: StandardParams,
    feeds: MarketFeeds,
) -> ExpiryCharge:
    """Rule 3 for the options of one expiry (in instrument-id order)."""
    index_price = market.index_prices[underlying]
    charge = ExpiryCharge(underlying, expiry_ns, feeds.forward(underlying, expiry_ns, index_price))
    worst = min(0.0, expiry_payoff(options, 0.0))
    net_calls = 0.0
    for position in options:
        p_im, p_mm = isolated_charge(position, book, market, params)
        charge.isolated_im += p_im
        charge.isolated_mm += p_mm
        ins = position.instrument
        assert ins.strike is not None
        worst = min(worst, expiry_payoff(options, ins.strike))
        if ins.is_call:
            net_calls += position.quantity * ins.multiplier
        if position.quantity < 0.0:
            charge.short_contracts += -position.quantity * ins.multiplier
    charge.max_loss = -worst
    charge.unpaired_calls = max(-net_calls, 0.0)
    charge.floor_im = charge.max_loss + params.unpaired_call_im_scale * charge.forward * charge.unpaired_calls
    charge.floor_mm = charge.max_loss + params.unpaired_call_mm_scale * charge.forward * charge.unpaired_calls
    if params.max_loss_floor:
        charge.im = min(charge.isolated_im, charge.floor_im)
        charge.mm = min(charge.isolated_mm, charge.floor_mm)
    else:
        charge.im = charge.isolated_im
        charge.mm = charge.isolated_mm
    return charge


# --------------------------------------------------------------------------------------------
# Rule 4: collateral
# --------------------------------------------------------------------------------------------


def _is_base(asset_underlying: str | None, amount: float, params: StandardParams) -> bool:
    return params.base_asset_margin_factor is not None and asset_underlying is not None and amount > 0.0


# --------------------------------------------------------------------------------------------
# The account
# --------------------------------------------------------------------------------------------


def _confidence(values: Mapping[Any, float], key: Any) -> float:
    return values.get(key, 1.0)


def _oracle_addon(threshold: float | None, confidence: float, factor: float, amount: float) -> float:
    """`(1 − c) × factor × amount` when `c` is below the threshold, else 0."""
    if threshold is None or not confidence < threshold:
        return 0.0
    return (1.0 - confidence) * factor * amount


def position_addons(
    u: UnderlyingCharges,
    underlying: str,
    positions: list[NettedPosition],
    expiries: dict[tuple[str, int], ExpiryCharge],
    market: MarketData,
    params: StandardParams,
    feeds: MarketFeeds,
) -> None:
    """Rule 5 for the positions of one underlying, into `u`: the depeg add-on on
    `Σ |linear contracts| + Σ short option contracts`, the oracle add-on of each perpetual /
    future and of each option expiry. Sizes are `|q| × mult`."""
    index_price = market.index_prices[underlying]
    index_conf = _confidence(feeds.index_confidence, underlying)
    exposure = 0.0
    for position in positions:
        ins = position.instrument
        if ins.underlying != underlying:
            continue
        size = abs(position.quantity) * ins.multiplier
        if not ins.is_option:
            exposure += size
            conf = min(_confidence(feeds.mark_confidence, ins.key), index_conf)
            u.oracle_linear_im += _oracle_addon(
                params.oracle_linear_threshold, conf, params.oracle_factor, index_price * size
            )
        elif position.quantity < 0.0:
            exposure += size
    for key, charge in expiries.items():
        if key[0] != underlying:
            continue
        conf = min(index_conf, _confidence(feeds.forward_confidence, key), _confidence(feeds.vol_confidence, key))
        u.oracle_option_im += _oracle_addon(
            params.oracle_option_threshold, conf, params.oracle_factor, index_price * charge.short_contracts
        )
    if params.depeg_threshold is not None and feeds.stable_price < params.depeg_threshold:
        depeg_rate = (params.depeg_threshold - feeds.stable_price) * params.depeg_factor
        u.depeg_im = depeg_rate * index_price * exposure


def account_standard_margin(
    account_id: int,
    positions: list[NettedPosition],
    balances: list[BalanceRow],
    book: BookData,
    market: MarketData,
    params: StandardParams,
    feeds: MarketFeeds = V1_FEEDS,
    closed: float = 0.0,
) -> AccountStandardMargin:
    """The generalized standard margin of one account. `positions` in instrument-id order
    (`net_positions`); `closed` is the P&L of its positions that netted to 0."""
    per_u: dict[str, UnderlyingCharges] = {}

    def charges(underlying: str) -> UnderlyingCharges:
        return per_u.setdefault(underlying, UnderlyingCharges())

    # Rule 3 groups: the options of each (underlying, expiry), in instrument-id order.
    groups: dict[tuple[str, int], list[NettedPosition]] = {}
    for position in positions:
        ins = position.instrument
        if ins.is_option:
            assert ins.expiry_ns is not None
            groups.setdefault((ins.underlying, ins.expiry_ns), []).append(position)
    expiries = {key: expiry_charge(*key, options, book, market, params, feeds) for key, options in groups.items()}
    for (underlying, _), charge in expiries.items():
        u = charges(underlying)
        u.option_isolated_im += charge.isolated_im
        u.option_isolated_mm += charge.isolated_mm
        u.option_floor_im += charge.floor_im
        u.option_floor_mm += charge.floor_mm
        u.option_im += charge.im
        u.option_mm += charge.mm

    # Rules 1-3 summed in instrument-id order (an expiry's charge at its first option).
    im = 0.0
    mm = 0.0
    added: set[tuple[str, int]] = set()
    upnl = closed
    option_value = 0.0
    for position in positions:
        ins = position.instrument
        mark = market.marks[ins.id].mark_price
        if ins.is_option:
            option_value += position_pnl(position, mark)
            assert ins.expiry_ns is not None
            key = (ins.underlying, ins.expiry_ns)
            if params.max_loss_floor:
                if key not in added:
                    added.add(key)
                    im += expiries[key].im
                    mm += expiries[key].mm
                continue
        else:
            upnl += position.upnl
        p_im, p_mm = isolated_charge(position, book, market, params)
        im += p_im
        mm += p_mm
        if not ins.is_option:
            u = charges(ins.underlying)
            u.linear_im += p_im
            u.linear_mm += p_mm

    # Rule 4: collateral (§2.5-2.6 with the two switches), balances in asset-id order.
    cash = 0.0
    weighted_initial = 0.0
    weighted_maintenance = 0.0
    for row in sorted(balances, key=lambda b: b.asset_id):
        asset = book.assets[row.asset_id]
        cash += row.amount * asset.price
        if _is_base(asset.underlying, row.amount, params):
            assert params.base_asset_margin_factor is not None and asset.underlying is not None
            value_m = row.amount * asset.price * params.base_asset_margin_factor
            value_i = value_m * params.base_asset_im_scale
            u = charges(asset.underlying)
            u.base_collateral_initial += value_i
            u.base_collateral_maintenance += value_m
            u.oracle_base_im += _oracle_addon(
                params.oracle_base_threshold if value_i != 0.0 else None,
                _confidence(feeds.index_confidence, asset.underlying),
                params.oracle_factor,
                row.amount * asset.price,
            )
            weighted_initial += value_i
            weighted_maintenance += value_m
        else:
            weighted_initial += weighted_value(asset, row.amount, "initial")
            weighted_maintenance += weighted_value(asset, row.amount, "maintenance")
    pnl = 0.0
    for position in positions:
        if position.instrument.is_option and not params.option_value_in_collateral:
            continue
        pnl += position_pnl(position, market.marks[position.instrument.id].mark_price)
    pnl += closed

    # Rule 5: IM add-ons of the positions, per underlying (the base assets' came with rule 4).
    for underlying in sorted({p.instrument.underlying for p in positions}):
        position_addons(charges(underlying), underlying, positions, expiries, market, params, feeds)
    for underlying in sorted(per_u):
        u = per_u[underlying]
        addon = u.depeg_im + u.oracle_im
        if addon != 0.0:
            im += addon

    return AccountStandardMargin(
        account_id=account_id,
        initial_margin=im,
        maintenance_margin=mm,
        equity=cash + pnl if params.option_value_in_collateral else cash + pnl + option_value,
        collateral_initial=weighted_initial + pnl,
        collateral_maintenance=weighted_maintenance + pnl,
        upnl=upnl,
        option_value=option_value,
        by_underlying=per_u,
        expiries=list(expiries.values()),
    )


def standard_margin_rules(
    book: Any,
    positions: Any,
    balances: Any,
    market: Any,
    params: StandardParams,
    feeds: MarketFeeds = V1_FEEDS,
) -> list[AccountStandardMargin]:
    """Every account present in `positions` or `balances`, sorted by id, under `params`.
    Tables and duck-typed book / market as for `reference.margin`."""
    bd = read_book(book)
    md = read_market(market, bd)
    rows = read_positions(positions, bd)
    netted = net_positions(rows, bd, md)
    closed = closed_pnl(rows, bd, md)
    by_account: dict[int, list[BalanceRow]] = {}
    for row in read_balances(balances, bd):
        by_account.setdefault(row.account_id, []).append(row)
    return [
        account_standard_margin(
            account,
            netted.get(account, []),
            by_account.get(account, []),
            bd,
            md,
            params,
            feeds,
            closed.get(account, 0.0),
        )
        for account in sorted(set(netted) | set(by_account))
    ]
