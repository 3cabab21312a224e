"""The Rust scenario engine (`margin_core::methodology`, bound as `_core.scenario_margin`)
against the pure-Python reference (`reference/scenarios.py`).

Both read the same plain structures (`ScenarioMethodology.to_dict()`,
`ScenarioPortfolio.to_dict()`) and add their terms in the same order, so they agree to rounding:
- every valid Derive PMRM_2 case (and so the published figures): IM, MM, every scenario P&L, the
  basis contingency and every contingency. The cases are Derive's own (derivexyz/v2-core @
  7736900d, test/risk-managers/unit-tests/PMRM_2/portfolio_cases/, harness
  TestPMRM_2_PortfolioCasesNEW.t.sol), copied with provenance in tests/data/derive/README.md;
- random scenario tables, weights and vol-shock parameters under the `expiry_sum` revaluation;
- the v1 and exchange presets (`risk_array` revaluation, `max_of_groups`, add-ons) on random books.

Tolerance: 1e-12 relative to the larger of the two figures and the portfolio's scale (its
gross option and linear notional), since a P&L is a difference of values of that size and the
two engines' Black-76 may differ in the last bit.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import books, reference_objects
from test_derive_pmrm2 import _compare as compare_with_published

from margin_engine import MarginInputError, _core
from margin_engine.methodology_params import ScenarioMethodology, ScenarioRow, SkewShock, StaticDiscount, VolShock
from margin_engine.presets import scenario_preset
from margin_engine.presets.derive import case_inputs, portfolio_from_tables
from margin_engine.reference.scenario_inputs import preset_for_book, scenario_portfolios
from margin_engine.reference.scenarios import (
    CollateralHolding,
    ExpiryHolding,
    OptionHolding,
    ScenarioPortfolio,
    margin_scenarios,
)

DATA = Path(__file__).parent / "data" / "derive"
CASES = json.loads((DATA / "pmrm2_portfolio_cases_1_to_71.json").read_text())
REL = 1e-12
CONTINGENCIES = (
    "perp_maintenance",
    "perp_initial",
    "option_maintenance",
    "option_initial",
    "collateral_maintenance",
    "collateral_initial",
    "confidence",
    "calendar_basis",
    "concentration",
)
MAX_SEEN = {"rel": 0.0}


def _scale(pf: ScenarioPortfolio) -> float:
    """Size of the values a P&L is a difference of."""
    total = abs(pf.perp_quantity * pf.perp_mark) + abs(pf.cash) + abs(pf.perp_unsettled)
    for e in pf.expiries:
        for o in e.options:
            total += abs(o.quantity * o.multiplier) * max(e.forward, o.strike)
    total += sum(abs(lin.quantity * lin.multiplier * lin.mark) for lin in pf.linears)
    total += sum(abs(c.value) for c in pf.collaterals)
    return total


def compare(pf: ScenarioPortfolio, meth: ScenarioMethodology) -> list[str]:
    """Every figure where Rust and the reference differ by more than `REL` (see the module)."""
    want = margin_scenarios(pf, meth)
    got = _core.scenario_margin(meth.to_dict(), pf.to_dict())
    scale = _scale(pf)
    misses = []

    def check(name: str, ours: float, ref: float) -> None:
        diff = abs(ours - ref)
        if diff == 0.0:
            return
        size = max(abs(ours), abs(ref), scale)
        MAX_SEEN["rel"] = max(MAX_SEEN["rel"], diff / size)
        if not diff <= REL * size:
            misses.append(f"{name}: rust {ours!r}, reference {ref!r} (rel {diff / size:.2e})")

    check("IM", got["initial_margin"], want.initial_margin)
    check("MM", got["maintenance_margin"], want.maintenance_margin)
    check("IM requirement", got["initial_requirement"], want.initial_requirement)
    check("MM requirement", got["maintenance_requirement"], want.maintenance_requirement)
    check("MtM", got["mark_to_market"], want.mark_to_market)
    check("basis", got["basis_contingency"], want.basis_contingency)
    check("worst", got["worst_loss"], want.worst_loss)
    if len(got["scenario_pnl"]) != len(want.scenario_pnl):
        misses.append("scenario count")
    else:
        for i, (a, b) in enumerate(zip(got["scenario_pnl"], want.scenario_pnl, strict=True)):
            check(f"scenario {i}", a, b)
    for name in CONTINGENCIES:
        check(name, got["contingencies"][name], getattr(want.contingencies, name))
    if set(got["worst_by_group"]) != set(want.worst_by_group):
        misses.append(f"groups {sorted(got['worst_by_group'])} vs {sorted(want.worst_by_group)}")
    else:
        for g, v in want.worst_by_group.items():
            check(f"worst {g}", got["worst_by_group"][g], v)
    check("IM loss factor", got["initial_loss_factor"], want.initial_loss_factor)
    return misses


VALID = [c for c in CASES if c["id"] != "lyra_pmrm2_test_67_misc_skew_scenario_with_spot_move"]


def test_seventy_valid_cases() -> None:
    assert len(VALID) == 70


@pytest.mark.parametrize("case", VALID, ids=[c["id"] for c in VALID])
def test_derive_case_rust_equals_reference(case: dict) -> None:
    """IM, MM, every scenario P&L and every contingency of one published case: Rust equals the
    reference (which test_derive_pmrm2.py checks against the published figures)."""
    tables = case_inputs(case)
    pf = portfolio_from_tables(tables)
    misses = compare(pf, tables.methodology)
    assert not misses, "\n".join(misses)
    # and, directly, the published figures (Derive's 1e-8 tolerance, test_derive_pmrm2.py)
    got = _core.scenario_margin(tables.methodology.to_dict(), pf.to_dict())
    result = SimpleNamespace(**{**got, "contingencies": SimpleNamespace(**got["contingencies"])})
    misses = compare_with_published(case, result)
    assert not misses, "\n".join(misses)


# --------------------------------------------------------------------------------------------
# Random tables, weights, vol shocks, skew and static discount
# --------------------------------------------------------------------------------------------

_rows = st.lists(
    st.builds(
        ScenarioRow,
        spot_move=st.floats(-0.9, 3.0),
        vol_shock=st.sampled_from(["none", "up", "down"]),
        weight=st.floats(0.0, 5.0),
        group=st.sampled_from(["regular", "extreme", "basis"]),
    ),
    min_size=1,
    max_size=8,
)
_skew_rows = st.lists(
    st.builds(ScenarioRow, spot_move=st.just(0.0), vol_shock=st.sampled_from(["skew_linear", "skew_abs"]), weight=st.floats(0.0, 2.0), group=st.just("skew")),
    max_size=2,
)
_vol = st.builds(
    VolShock,
    vol_up=st.floats(0.0, 2.0),
    vol_down=st.floats(0.0, 1.5),
    short_term_power=st.floats(0.0, 1.0),
    long_term_power=st.floats(0.0, 1.0),
    dte_floor_days=st.floats(0.01, 30.0),  # > 0: validation refuses a 0 floor
    term_threshold_days=st.floats(0.0, 60.0),
    min_shocked_vol_up=st.floats(0.0, 1.0),
    down_floor=st.floats(0.0, 0.5),
)
_skew = st.builds(
    SkewShock,
    linear_cap=st.floats(0.0, 0.5),
    linear_cap_slope=st.floats(-0.2, 0.2),
    abs_cap=st.floats(0.0, 0.5),
    abs_cap_slope=st.floats(-0.2, 0.2),
    min_k_star=st.floats(0.01, 1.0),
    width_scale=st.floats(0.0, 3.0),
    vol_level=st.floats(0.0, 1.5),
    vol_level_slope=st.floats(-0.5, 0.5),
)
_static = st.one_of(
    st.none(),
    st.builds(
        StaticDiscount,
        long_base=st.floats(0.5, 1.0),
        long_rate_mult=st.floats(0.0, 2.0),
        long_rate_add=st.floats(0.0, 0.1),
        short_base=st.floats(1.0, 1.5),
        short_rate_mult=st.floats(0.0, 2.0),
        short_rate_add=st.floats(0.0, 0.1),
        cap_short_at_inverse_discount=st.booleans(),
    ),
)
_option = st.builds(
    lambda k, call, q, v, mult: (k, call, q, v, mult),
    st.floats(0.3, 3.0),
    st.booleans(),
    st.floats(-10.0, 10.0),
    st.floats(0.05, 2.0),
    st.sampled_from([1.0, 0.1, 10.0]),
)
_expiry = st.tuples(
    st.floats(0.0, 400.0),  # days
    st.floats(0.9, 1.1),  # forward / spot
    st.floats(0.0, 0.3),  # fixed share of the forward
    st.floats(-0.02, 0.1),  # rate
    st.lists(_option, min_size=1, max_size=5),
    st.floats(0.5, 1.0),  # confidence
)


def _random_portfolio(spot, perp, coin, expiries, cash) -> ScenarioPortfolio:
    holdings = []
    for days, fwd, fixed, rate, options, conf in expiries:
        forward = spot * fwd
        holdings.append(
            ExpiryHolding(
                seconds_to_expiry=days * 86_400.0,
                forward_variable=forward * (1.0 - fixed),
                forward_fixed=forward * fixed,
                rate=rate,
                options=[OptionHolding(spot * k, call, q, v, mult) for k, call, q, v, mult in options],
                confidence=conf,
            )
        )
    return ScenarioPortfolio(
        spot=spot,
        cash=cash,
        perp_quantity=perp,
        perp_mark=spot * 1.001,
        perp_unsettled=perp * 3.0,
        expiries=holdings,
        collaterals=[
            CollateralHolding("COIN", coin * spot, True, 0.02, 0.05, 0.9),
            CollateralHolding("USDX", 1_000.0, False, 0.01, 0.02, 0.7),
        ],
        spot_confidence=0.95,
        perp_confidence=0.8,
        stable_price=0.97,
    )


@settings(max_examples=150, deadline=None)
@given(
    rows=_rows,
    skew_rows=_skew_rows,
    vol=_vol,
    skew=_skew,
    static=_static,
    discount=st.booleans(),
    spot=st.floats(10.0, 1e5),
    perp=st.floats(-5, 5),
    coin=st.floats(0, 5),
    cash=st.floats(-1e5, 1e5),
    expiries=st.lists(_expiry, max_size=3),
)
def test_random_methodology_rust_equals_reference(rows, skew_rows, vol, skew, static, discount, spot, perp, coin, cash, expiries) -> None:
    """Random scenario tables, weights, vol-shock, skew and static-discount parameters, with the
    Derive preset's contingencies (basis, position, confidence, peg loss) and loss factors."""
    base = scenario_preset("derive_pmrm2")
    meth = base.replace(
        name="random",
        scenarios=[{"spot_move": r.spot_move, "vol_shock": r.vol_shock, "weight": r.weight, "group": r.group} for r in rows + skew_rows],
        vol_shock=vol.__dict__,
        skew_shock=skew.__dict__,
        static_discount=None if static is None else static.__dict__,
        discount_options=discount,
    )
    misses = compare(_random_portfolio(spot, perp, coin, expiries, cash), meth)
    assert not misses, "\n".join(misses)


@settings(max_examples=60, deadline=None)
@given(rows=_rows, vol=_vol, spot=st.floats(10.0, 1e5), perp=st.floats(-5, 5), coin=st.floats(0, 5), expiries=st.lists(_expiry, max_size=3))
def test_random_table_minimal_methodology(rows, vol, spot, perp, coin, expiries) -> None:
    """No optional part at all: only the table and the vol shocks; collateral haircuts weight
    the value instead of being charged."""
    meth = ScenarioMethodology(name="bare", scenarios=tuple(rows), vol_shock=vol, collateral_haircuts_as_contingency=False)
    misses = compare(_random_portfolio(spot, perp, coin, expiries, 0.0), meth)
    assert not misses, "\n".join(misses)


@settings(max_examples=40, deadline=None)
@given(books(max_accounts=6))
def test_v1_and_exchange_presets_rust_equals_reference(example) -> None:
    """`risk_array` revaluation, the `max_of_groups` rule and the exchange add-ons, on the
    portfolios of random books."""
    book, market = reference_objects(example)
    portfolios = scenario_portfolios(book, example["positions"], market)
    for preset in ("v1", "exchange"):
        by_u = preset_for_book(book, preset)
        for account, pfs in portfolios.items():
            for u, pf in pfs.items():
                misses = compare(pf, by_u.for_underlying(u))
                assert not misses, (preset, account, u, "\n".join(misses))


def test_bad_dicts_are_input_errors() -> None:
    meth = scenario_preset("derive_pmrm2").to_dict()
    pf = ScenarioPortfolio(spot=100.0).to_dict()
    with pytest.raises(MarginInputError, match="spot"):
        _core.scenario_margin(meth, {"cash": 1.0})
    with pytest.raises(MarginInputError, match="vol_shock"):
        _core.scenario_margin({**meth, "vol_shock": None}, pf)
    with pytest.raises(MarginInputError, match="scenarios.vol_shock"):
        _core.scenario_margin({**meth, "scenarios": [{"spot_move": 0.1, "vol_shock": "sideways"}]}, pf)
    with pytest.raises(MarginInputError, match="skew_shock"):
        _core.scenario_margin({**meth, "skew_shock": None}, pf)
    with pytest.raises(MarginInputError, match="expected a number"):
        _core.scenario_margin(meth, {"spot": "100"})
    with pytest.raises(MarginInputError, match="calendar_basis.bucket_rates"):
        _core.scenario_margin({**meth, "calendar_basis": {"bucket_edges_days": [7.0], "bucket_rates": [0.1]}}, pf)


def test_report_max_difference() -> None:
    """Runs last in this file: prints the largest relative difference seen (for the record)."""
    print(f"max relative difference Rust vs reference: {MAX_SEEN['rel']:.3e}")
    assert MAX_SEEN["rel"] <= REL or math.isnan(MAX_SEEN["rel"])


_any_float = st.floats(allow_nan=True, allow_infinity=True)


@settings(max_examples=150, deadline=None)
@given(
    spot=_any_float,
    perp=_any_float,
    strike=_any_float,
    vol=_any_float,
    seconds=_any_float,
    forward=_any_float,
    rate=_any_float,
    quantity=_any_float,
    move=_any_float,
    weight=_any_float,
    liquidity=_any_float,
)
def test_any_numbers_never_crash_the_rust_engine(spot, perp, strike, vol, seconds, forward, rate, quantity, move, weight, liquidity) -> None:
    """Numbers the reference's validation would refuse (NaN, infinities, zero strikes, negative
    times, a zero liquidity) reach the Rust engine unchecked through the raw dicts: it answers
    with numbers or a MarginInputError, never a panic (RuntimeError) or a crash."""
    meth = scenario_preset("derive_pmrm2").to_dict()
    meth["scenarios"] = meth["scenarios"][:3] + [{"spot_move": move, "vol_shock": "up", "weight": weight, "group": "regular"}]
    meth["calendar_basis"] = {"bucket_edges_days": [7.0, 30.0], "bucket_rates": [0.01, 0.01, 0.02, 0.03]}
    meth["concentration"] = {"rate": 0.05, "liquidity_notional": liquidity}
    pf = {
        "spot": spot,
        "perp_quantity": perp,
        "perp_mark": spot,
        "expiries": [
            {
                "seconds_to_expiry": seconds,
                "forward_variable": forward,
                "forward_fixed": 0.0,
                "rate": rate,
                "options": [{"strike": strike, "is_call": True, "quantity": quantity, "vol": vol}],
            }
        ],
        "linears": [{"quantity": quantity, "mark": spot, "seconds_to_expiry": seconds}],
    }
    try:
        out = _core.scenario_margin(meth, pf)
    except MarginInputError:
        return
    assert len(out["scenario_pnl"]) == 4
