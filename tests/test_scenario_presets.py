"""The scenario engine (`reference/scenarios.py`) under the `v1` and `exchange` presets
(`margin_engine.methodology_params`), through the table adapter `reference/scenario_inputs.py`.

- v1 as a parameter set: on random books the engine gives v1's portfolio IM and MM of every
  account bit for bit (the adapter keeps v1's summation order);
- the `exchange` preset: the worked examples of docs/presets.md (a perpetual-vs-future calendar
  spread, a whale position), hand-checked in the comments;
- the exchange add-ons' rules on random inputs, and their parameters' validation.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import books, reference_objects

from margin_engine import MarginInputError, reference
from margin_engine.methodology_params import (
    CalendarBasis,
    Concentration,
    ScenarioMethodology,
    exchange_preset,
    v1_methodology,
    v1_preset,
)
from margin_engine.reference._tables import DEFAULT_RISK_PARAMS
from margin_engine.reference.scenario_inputs import account_margins, underlying_margins
from margin_engine.reference.scenarios import LinearHolding, ScenarioPortfolio, margin_scenarios


@given(books())
def test_v1_preset_equals_v1_portfolio_margin(example):
    """The v1 combination rule is a parameter set of the one scenario engine: IM and MM of every
    account equal `reference.margin(..., model="portfolio")` exactly (same terms, same order)."""
    book, market = reference_objects(example)
    want = reference.margin(book, example["positions"], example["balances"], market, model="portfolio")
    got = account_margins(book, example["positions"], market, "v1")
    for account, im, mm in zip(
        want.column("account_id").to_pylist(),
        want.column("initial_margin").to_pylist(),
        want.column("maintenance_margin").to_pylist(),
        strict=True,
    ):
        got_im, got_mm = got.get(account, (0.0, 0.0))
        assert (got_im, got_mm) == (im, mm), (account, got_im, im, got_mm, mm)


# --------------------------------------------------------------------------------------------
# Worked examples of docs/presets.md, computed by the code through our tables
# --------------------------------------------------------------------------------------------

VALUATION_NS = 1_700_000_000 * 1_000_000_000
DAY_NS = 86_400 * 1_000_000_000
SPOT = 60_000.0


def _example(positions: list[tuple[str, float]], risk_params: pa.Table | None = None):
    """A BTC book (index 60,000): a perpetual marked 60,000 and a 90-day future marked 61,000."""
    instruments = pa.table(
        {
            "instrument": ["BTC-PERP", "BTC-FUT-90D"],
            "kind": ["perpetual", "future"],
            "underlying": ["BTC", "BTC"],
            "multiplier": [1.0, 1.0],
            "expiry": pa.array([None, VALUATION_NS + 90 * DAY_NS], pa.timestamp("ns")),
            "strike": pa.array([None, None], pa.float64()),
            "option_type": pa.array([None, None], pa.utf8()),
            "initial_margin_rate": [0.1, 0.1],
            "maintenance_margin_rate": [0.05, 0.05],
            "initial_margin_floor": pa.array([None, None], pa.float64()),
        }
    )
    assets = pa.table(
        {"asset": ["USD"], "price": [1.0], "initial_weight": [1.0], "maintenance_weight": [1.0],
         "initial_liability_weight": [1.0], "maintenance_liability_weight": [1.0]}
    )  # fmt: skip
    book = SimpleNamespace(instruments=instruments, assets=assets, risk_params=risk_params, margin_tiers=None)
    market = SimpleNamespace(
        index_prices=pa.table({"underlying": ["BTC"], "index_price": [SPOT]}),
        marks=pa.table({"instrument": ["BTC-PERP", "BTC-FUT-90D"], "mark_price": [60_000.0, 61_000.0],
                        "implied_vol": pa.array([None, None], pa.float64())}),  # fmt: skip
        valuation_time_ns=VALUATION_NS,
    )
    pos = pa.table(
        {"account_id": pa.array([1] * len(positions), pa.uint64()), "instrument": [k for k, _ in positions],
         "quantity": [q for _, q in positions]}
    )  # fmt: skip
    balances = pa.table({"account_id": pa.array([], pa.uint64()), "asset": pa.array([], pa.utf8()), "amount": pa.array([], pa.float64())})
    return book, pos, balances, market


def _v1_reference(book, pos, balances, market) -> tuple[float, float]:
    table = reference.margin(book, pos, balances, market, model="portfolio")
    return table.column("initial_margin")[0].as_py(), table.column("maintenance_margin")[0].as_py()


def test_worked_example_calendar_spread():
    """docs/presets.md, exchange example 1: +10 BTC-PERP (mark 60,000) against −10 BTC-FUT-90D
    (mark 61,000), default risk parameters (R = 15%, 21 steps, extreme 3R covered 33%, IM 1.25).

    v1 (by hand): P&L(m) = 10 × 60,000 m − 10 × 61,000 m = −10,000 m; worst regular at m = +15%:
    −1,500; extreme ±45%: 4,500 × 0.33 = 1,485; MM = max(1,500, 1,485, 0) = 1,500, IM = 1,875.
    The scan sees only the mark difference: 1,500 against $600,000 of calendar spread.
    exchange (by hand): bucket deltas perpetual +600,000, 30–90 days −610,000; matched
    600,000 × 610,000 / 610,000 = 600,000 at max(0.5%, 2%) = 2% → 12,000; net delta −10,000 is far
    below the $10M liquidity: no concentration add-on. MM = 1,500 + 12,000 = 13,500,
    IM = 1.25 × 13,500 = 16,875.
    """
    book, pos, balances, market = _example([("BTC-PERP", 10.0), ("BTC-FUT-90D", -10.0)])
    v1_im, v1_mm = account_margins(book, pos, market, "v1")[1]
    assert (v1_im, v1_mm) == _v1_reference(book, pos, balances, market)
    assert v1_mm == pytest.approx(1_500.0, rel=1e-12)
    assert v1_im == pytest.approx(1_875.0, rel=1e-12)
    [ex] = underlying_margins(book, pos, market, "exchange")[1].values()
    assert ex.contingencies.calendar_basis == pytest.approx(12_000.0, rel=1e-12)
    assert ex.contingencies.concentration == 0.0
    assert ex.maintenance_requirement == pytest.approx(13_500.0, rel=1e-12)
    assert ex.initial_requirement == pytest.approx(16_875.0, rel=1e-12)


def test_worked_example_whale():
    """docs/presets.md, exchange example 2: a whale long 1,000 BTC-PERP (notional $60M).

    v1 (by hand): scan 1,000 × 60,000 × 15% = 9,000,000 (extreme 0.33 × 45% × 60M = 8,910,000);
    MM 9,000,000, IM 11,250,000, and twice the size is charged exactly twice.
    exchange (by hand): the calendar add-on is 0 (one bucket); concentration with the default
    $10M liquidity: 0.05 × (60M − 10M)^1.5 / 10M^0.5 = 0.05 × 50M × sqrt(5) = 5,590,169.94;
    MM = 14,590,169.94, IM = 18,237,712.43. At 2,000 BTC ($120M): 0.05 × 110M × sqrt(11) =
    18,241,436.35 on top of v1's 18,000,000 (the add-on grows faster than the size). With BTC's
    own liquidity of $250M in the risk_params table, the $60M whale pays no add-on.
    """
    book, pos, balances, market = _example([("BTC-PERP", 1_000.0)])
    v1_im, v1_mm = account_margins(book, pos, market, "v1")[1]
    assert (v1_im, v1_mm) == _v1_reference(book, pos, balances, market)
    assert v1_mm == pytest.approx(9_000_000.0, rel=1e-12)
    assert v1_im == pytest.approx(11_250_000.0, rel=1e-12)
    [ex] = underlying_margins(book, pos, market, "exchange")[1].values()
    assert ex.contingencies.calendar_basis == 0.0
    assert ex.contingencies.concentration == pytest.approx(0.05 * 50e6 * math.sqrt(5.0), rel=1e-12)
    assert ex.contingencies.concentration == pytest.approx(5_590_169.94, abs=0.01)
    assert ex.maintenance_requirement == pytest.approx(14_590_169.94, abs=0.01)
    assert ex.initial_requirement == pytest.approx(18_237_712.43, abs=0.01)

    book2, pos2, _, market2 = _example([("BTC-PERP", 2_000.0)])
    v1_im2, v1_mm2 = account_margins(book2, pos2, market2, "v1")[1]
    assert v1_mm2 == pytest.approx(2 * v1_mm, rel=1e-12)
    [ex2] = underlying_margins(book2, pos2, market2, "exchange")[1].values()
    assert ex2.contingencies.concentration == pytest.approx(18_241_436.35, abs=0.01)
    assert ex2.contingencies.concentration > 2 * ex.contingencies.concentration

    liquid = pa.table({"underlying": ["BTC"], "liquidity_notional": [250e6]})
    book3, pos3, _, market3 = _example([("BTC-PERP", 1_000.0)], risk_params=liquid)
    [ex3] = underlying_margins(book3, pos3, market3, "exchange")[1].values()
    assert ex3.contingencies.concentration == 0.0
    assert ex3.maintenance_requirement == pytest.approx(9_000_000.0, rel=1e-12)


# --------------------------------------------------------------------------------------------
# The exchange add-ons on random inputs
# --------------------------------------------------------------------------------------------


@given(books(max_accounts=8))
def test_exchange_is_v1_plus_its_add_ons(example):
    """On random books, per account and underlying: exchange MM = v1 MM + calendar +
    concentration add-ons (each >= 0), IM = im_factor × MM; with both add-on rates at 0 the
    exchange preset is v1 bit for bit."""
    book, market = reference_objects(example)
    v1 = underlying_margins(book, example["positions"], market, "v1")
    ex = underlying_margins(book, example["positions"], market, "exchange")
    zero = exchange_preset(book.risk_params)
    zero = type(zero)(
        "exchange0",
        zero.default.replace(calendar_basis={"bucket_edges_days": [7.0], "bucket_rates": [0.0, 0.0, 0.0]},
                             concentration={"rate": 0.0, "liquidity_notional": 1.0}),  # fmt: skip
        {u: m.replace(calendar_basis={"bucket_edges_days": [7.0], "bucket_rates": [0.0, 0.0, 0.0]},
                      concentration={"rate": 0.0, "liquidity_notional": 1.0}) for u, m in zero.by_underlying.items()},  # fmt: skip
    )
    ex0 = underlying_margins(book, example["positions"], market, zero)
    for account, by_u in v1.items():
        for u, r1 in by_u.items():
            re = ex[account][u]
            c = re.contingencies
            assert c.calendar_basis >= 0.0 and c.concentration >= 0.0
            assert re.maintenance_requirement == pytest.approx(
                r1.maintenance_requirement + c.calendar_basis + c.concentration, rel=1e-12, abs=1e-300
            )
            factor = v1_preset(book.risk_params).for_underlying(u).max_of_groups.im_factor
            assert re.initial_requirement == pytest.approx(factor * re.maintenance_requirement, rel=1e-12, abs=1e-300)
            r0 = ex0[account][u]
            assert (r0.initial_requirement, r0.maintenance_requirement) == (
                r1.initial_requirement,
                r1.maintenance_requirement,
            )


_quantity = st.floats(-1e4, 1e4, allow_nan=False).filter(lambda q: abs(q) > 1e-6)


@given(
    st.lists(st.tuples(_quantity, st.floats(1.0, 1e5), st.one_of(st.none(), st.floats(0.0, 800.0))), min_size=1, max_size=6),
    st.lists(st.floats(0.0, 0.2), min_size=4, max_size=4),
)
def test_calendar_charge_rules(linears, rates):
    """Calendar add-on on random perpetual / future books and bucket rates: 0 when every delta
    sits in one bucket or has one sign; never more than min(longs, shorts) × the highest rate;
    unchanged when the holdings are listed in another order."""
    meth = v1_methodology(DEFAULT_RISK_PARAMS).replace(
        calendar_basis={"bucket_edges_days": [30.0, 180.0], "bucket_rates": rates}
    )
    holdings = [LinearHolding(q, mark, 1.0, None if days is None else days * 86_400.0, i) for i, (q, mark, days) in enumerate(linears)]
    result = margin_scenarios(ScenarioPortfolio(spot=SPOT, linears=holdings), meth)
    charge = result.contingencies.calendar_basis
    deltas: dict[int, float] = {}
    for h in holdings:
        b = 0 if h.days is None else (1 if h.days <= 30.0 else 2 if h.days <= 180.0 else 3)
        deltas[b] = deltas.get(b, 0.0) + h.quantity * h.mark
    longs = sum(d for d in deltas.values() if d > 0)
    shorts = -sum(d for d in deltas.values() if d < 0)
    if len(deltas) == 1 or longs == 0.0 or shorts == 0.0:
        assert charge == 0.0
    assert 0.0 <= charge <= min(longs, shorts) * max(rates) * (1 + 1e-12)
    shuffled = margin_scenarios(ScenarioPortfolio(spot=SPOT, linears=holdings[::-1]), meth)
    assert shuffled.contingencies.calendar_basis == pytest.approx(charge, rel=1e-12, abs=1e-9)


@given(st.floats(1e3, 1e9), st.floats(1e4, 1e8), st.floats(0.0, 0.5))
def test_concentration_charge_rules(notional, liquidity, rate):
    """Concentration add-on: 0 up to the liquidity, then `rate × excess^1.5 / L^0.5`; convex in
    size (doubling the position more than doubles the add-on)."""
    meth = v1_methodology(DEFAULT_RISK_PARAMS).replace(concentration={"rate": rate, "liquidity_notional": liquidity})

    def charge(n: float) -> float:
        pf = ScenarioPortfolio(spot=SPOT, linears=[LinearHolding(n / SPOT, SPOT)])
        return margin_scenarios(pf, meth).contingencies.concentration

    excess = notional - liquidity
    want = 0.0 if excess <= 0 else rate * excess**1.5 / liquidity**0.5
    assert charge(notional) == pytest.approx(want, rel=1e-9)
    if excess > 0 and rate > 0:
        assert charge(2 * notional) > 2 * charge(notional)


@pytest.mark.parametrize(
    ("part", "value", "match"),
    [
        ("calendar_basis", {"bucket_edges_days": [30.0, 7.0], "bucket_rates": [0, 0, 0, 0]}, "calendar_basis.bucket_edges_days"),
        ("calendar_basis", {"bucket_edges_days": [7.0], "bucket_rates": [0.01, 0.02]}, "calendar_basis.bucket_rates"),
        ("calendar_basis", {"bucket_edges_days": [7.0], "bucket_rates": [0.01, -0.02, 0.0]}, "calendar_basis.bucket_rates"),
        ("calendar_basis", {"bucket_edges_days": "7", "bucket_rates": [0.0, 0.0, 0.0]}, "calendar_basis.bucket_edges_days"),
        ("concentration", {"rate": 0.05, "liquidity_notional": 0.0}, "concentration.liquidity_notional"),
        ("concentration", {"rate": -0.05, "liquidity_notional": 1e6}, "concentration.rate"),
        ("concentration", {"rate": 0.05, "liquidity": 1e6}, "concentration.liquidity"),
        ("combination", "max_of_group", "combination"),
        ("revaluation", "per_contract", "revaluation"),
        ("max_of_groups", None, "max_of_groups"),
    ],
)
def test_bad_preset_parameters_are_named(part, value, match):
    """A bad add-on or switch value raises MarginInputError naming methodology.<part>.<name>."""
    with pytest.raises(MarginInputError, match=match):
        v1_methodology(DEFAULT_RISK_PARAMS).replace(**{part: value})


def test_risk_array_revaluation_rejects_expiry_total_rules():
    """`risk_array` revaluation sums per contract: a static discount or a skew row (which act on
    an expiry's total) is rejected by name."""
    base = v1_methodology(DEFAULT_RISK_PARAMS)
    with pytest.raises(MarginInputError, match="static_discount"):
        base.replace(static_discount={})
    with pytest.raises(MarginInputError, match="unknown parameter"):
        exchange_preset(None, overrides={"BTC": {"liquidity": 1.0}})


def test_v1_preset_reads_per_underlying_risk_params():
    """`v1_preset` builds each underlying's table from its own risk_params row (scan range,
    steps, extreme move) and the §1 defaults elsewhere; exchange keeps those scan ranges."""
    table = pa.table({"underlying": ["BTC"], "price_range": [0.2], "price_steps": [5], "extreme_move": [2.0]})
    preset = v1_preset(table)
    btc = preset.for_underlying("BTC")
    assert [r.spot_move for r in btc.scenarios[::3][:5]] == pytest.approx([-0.2, -0.1, 0.0, 0.1, 0.2])
    assert len(btc.scenarios) == 3 * 5 + 2 and btc.scenarios[-1].spot_move == pytest.approx(0.4)
    assert len(preset.for_underlying("ETH").scenarios) == 3 * 21 + 2
    assert exchange_preset(table).for_underlying("BTC").scenarios == btc.scenarios
    assert ScenarioMethodology.from_dict(btc.to_dict()) == btc
    assert isinstance(exchange_preset(table).for_underlying("BTC").calendar_basis, CalendarBasis)
    assert isinstance(exchange_preset(table).default.concentration, Concentration)
