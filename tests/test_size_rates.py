"""Size- and open-interest-dependent rates (docs/methodology.md §10): Drift's size premium on
perpetual margin ratios and borrow liability weights, dYdX's open-interest-scaled initial margin.
The Rust engine against the reference on random books, and the venues' own worked numbers."""

from __future__ import annotations

import math
from typing import Any

import pyarrow as pa
import pytest
from conftest import assert_tables_close, engine_objects
from hypothesis import given
from hypothesis import strategies as st
from strategies import books

import margin_engine as me
from margin_engine import reference


def _with_column(table: pa.Table, name: str, values: list[Any]) -> pa.Table:
    return table.append_column(name, pa.array(values, pa.float64()))


@st.composite
def size_rate_books(draw: Any) -> dict[str, Any]:
    """A `books()` example with random `imf_factor` and open-interest caps on perpetuals and
    futures without tiers, `open_interest` marks, and `liability_imf_factor` on assets."""
    example = dict(draw(books(max_accounts=10)))
    ins = example["instruments"]
    tiered = set()
    if example["margin_tiers"] is not None:
        tiered = set(example["margin_tiers"].column("instrument").to_pylist())
    keys = ins.column("instrument").to_pylist()
    kinds = ins.column("kind").to_pylist()
    linear = [k != "option" and key not in tiered for key, k in zip(keys, kinds, strict=True)]
    imf = [draw(st.sampled_from([0.0, 0.0005, 0.001, 0.01, 0.1])) if ok else None for ok in linear]
    lower, upper = [], []
    for ok in linear:
        if ok and draw(st.booleans()):
            lo = draw(st.sampled_from([0.0, 1e3, 1e6]))
            lower.append(lo)
            upper.append(lo + draw(st.sampled_from([0.0, 1e3, 5e6])))
        else:
            lower.append(None)
            upper.append(None)
    example["instruments"] = _with_column(_with_column(_with_column(ins, "imf_factor", imf), "open_interest_lower_cap", lower), "open_interest_upper_cap", upper)
    marks = example["marks"]
    oi = [draw(st.one_of(st.none(), st.sampled_from([0.0, 5e2, 2e3, 1.5e6, 3e6, 1e9]))) for _ in range(marks.num_rows)]
    example["marks"] = _with_column(marks, "open_interest", oi)
    assets = example["assets"]
    example["assets"] = _with_column(assets, "liability_imf_factor", [draw(st.sampled_from([0.0, 0.001, 0.05])) for _ in range(assets.num_rows)])
    return example


@given(size_rate_books())
def test_standard_margin_with_size_rates_matches_reference(example):
    book, market = engine_objects(example)
    got = me.margin(book, example["positions"], example["balances"], market)
    want = reference.margin(book, example["positions"], example["balances"], market)
    assert_tables_close(got, want)


@given(size_rate_books(), st.sampled_from([-0.3, -0.05, 0.1]))
def test_stressed_scan_with_size_rates_matches_reference(example, move):
    book, market = engine_objects(example)
    u = example["index_prices"].column("underlying").to_pylist()
    stress = {u[0]: move} if u else None
    args = (book, example["positions"], example["balances"], market)
    assert_tables_close(me.liquidation_scan(*args, stress=stress), reference.liquidation_scan(*args, stress=stress))


@given(books(max_accounts=6))
def test_zero_factors_and_null_caps_change_nothing(example):
    book, market = engine_objects(example)
    plain = me.margin(book, example["positions"], example["balances"], market)
    n = example["instruments"].num_rows
    ex = dict(example)
    ex["instruments"] = _with_column(_with_column(_with_column(example["instruments"], "imf_factor", [0.0] * n),
                                                  "open_interest_lower_cap", [None] * n), "open_interest_upper_cap", [None] * n)
    ex["assets"] = _with_column(example["assets"], "liability_imf_factor", [0.0] * example["assets"].num_rows)
    ex["marks"] = _with_column(example["marks"], "open_interest", [1e9] * example["marks"].num_rows)
    book2, market2 = engine_objects(ex)
    assert plain.equals(me.margin(book2, ex["positions"], ex["balances"], market2))


def _usd(**extra: list[Any]) -> pa.Table:
    cols = {"asset": ["USD"], "price": [1.0], "initial_weight": [1.0], "maintenance_weight": [1.0],
            "initial_liability_weight": [1.0], "maintenance_liability_weight": [1.0]}
    cols.update(extra)
    return pa.table(cols)


def _perp_book(imr: float, mmr: float, **extra: list[Any]) -> me.Book:
    cols = {"instrument": ["BTC-PERP"], "kind": ["perpetual"], "underlying": ["BTC"], "multiplier": [1.0],
            "initial_margin_rate": [imr], "maintenance_margin_rate": [mmr]}
    cols.update(extra)
    return me.Book(pa.table(cols), _usd())


def _market(mark: float, open_interest: float | None = None) -> me.Market:
    marks = {"instrument": ["BTC-PERP"], "mark_price": [mark]}
    if open_interest is not None:
        marks["open_interest"] = [open_interest]
    return me.Market(pa.table({"underlying": ["BTC"], "index_price": [mark]}), pa.table(marks), "2025-01-01")


def _one_position(book: me.Book, market: me.Market, q: float, cash: float = 1e9) -> dict[str, Any]:
    positions = pa.table({"account_id": [1], "instrument": ["BTC-PERP"], "quantity": [q]})
    balances = pa.table({"account_id": [1], "asset": ["USD"], "amount": [cash]})
    return me.margin(book, positions, balances, market).to_pylist()[0]


def test_drift_borrow_liability_weight_worked_example():
    """Drift protocol-v2, `programs/drift/src/math/margin/tests.rs`, `spot_market_asset_weight`:
    initial liability weight 11000 (1.1 at SPOT_WEIGHT_PRECISION 1e4), a borrow of 1000 tokens,
    `imf_factor` 10000 (0.01 at SPOT_IMF_PRECISION 1e6) gives 11962, and imf_factor 100000 (0.1)
    gives 40422. Drift's integer arithmetic truncates to 1e-4; ours is the continuous
    `max(w, 0.8 w + imf × sqrt(size))`, which those integers truncate."""
    for imf, drift in [(0.01, 11962), (0.1, 40422)]:
        book = me.Book(
            pa.table({"instrument": ["BTC-PERP"], "kind": ["perpetual"], "underlying": ["BTC"], "multiplier": [1.0],
                      "initial_margin_rate": [0.1], "maintenance_margin_rate": [0.05]}),
            pa.table({"asset": ["USD", "SOL"], "price": [1.0, 1.0], "initial_weight": [1.0, 0.9], "maintenance_weight": [1.0, 0.95],
                      "initial_liability_weight": [1.0, 1.1], "maintenance_liability_weight": [1.0, 1.05],
                      "liability_imf_factor": [0.0, imf]}),
        )
        positions = pa.table({"account_id": pa.array([], pa.int64()), "instrument": pa.array([], pa.utf8()), "quantity": pa.array([], pa.float64())})
        balances = pa.table({"account_id": [1, 1], "asset": ["USD", "SOL"], "amount": [1e6, -1000.0]})
        row = me.margin(book, positions, balances, _market(50_000.0)).to_pylist()[0]
        weight = -(row["collateral_initial"] - 1e6) / 1000.0
        assert weight == pytest.approx(0.8 * 1.1 + imf * math.sqrt(1000.0), rel=1e-12)
        assert math.floor(weight * 1e4) == drift


def test_drift_perp_margin_ratio_worked_example():
    """Drift protocol-v2, `margin/tests.rs`, `calculate_user_equity_value_tests`: margin ratio
    1000 (0.1 at MARGIN_PRECISION 1e4), imf_factor 1000 (0.001), a short of 6.147540983 BTC at an
    oracle price of 22,050: the premium `0.8 × 0.1 + 0.001 × sqrt(6.1475)` = 0.0825 stays below
    0.1, so the requirement is 13,555.327867 USD (Drift: 13555327867 at QUOTE_PRECISION 1e6).
    At 10,000 BTC the premium, 0.08 + 0.001 × 100 = 0.18, applies to both rates."""
    book = _perp_book(0.1, 0.05, imf_factor=[0.001])
    row = _one_position(book, _market(22_050.0), -6.147540983)
    assert math.floor(row["initial_margin"] * 1e6) == 13555327867
    big = _one_position(book, _market(22_050.0), 10_000.0)
    notional = 10_000.0 * 22_050.0
    assert big["initial_margin"] == pytest.approx(notional * 0.18, rel=1e-12)
    assert big["maintenance_margin"] == pytest.approx(notional * (0.8 * 0.05 + 0.1), rel=1e-12)


@pytest.mark.parametrize(
    ("lower", "upper", "open_interest", "dydx"),
    [
        # dydxprotocol/v4-chain, protocol/x/perpetuals/types/liquidity_tier_test.go,
        # TestGetInitialMarginQuoteQuantums: base IMF 20%, 500,000 quote quantums of notional;
        # caps and open notional in quote quantums (1e-6 USDC), here in USD
        (None, None, 1.5e6, 100_000),  # no caps: base IMF
        (1e6, 2e6, 1.5e6, 300_000),  # scaling factor 0.5: 20% + 0.5 × 80% = 60%
        (25e6, 50e6, 80e6, 500_000),  # open interest above the upper cap: 100%
        (25e6, 50e6, 25e6, 100_000),  # at the lower cap: the base IMF
        (25e6, 60e6, 28_123_456.789123, 135_697),  # "realistic numbers", rounded up by dYdX
    ],
)
def test_dydx_open_interest_scaled_initial_margin(lower, upper, open_interest, dydx):
    """dYdX v4 "Margining" (OIMF): `IMF = base + clamp((OI − lower)/(upper − lower), 0, 1) × (1 −
    base)`, OI the open notional (open interest × oracle price) in USD, caps in USD. dYdX rounds
    the requirement up to a quote quantum; maintenance is unaffected."""
    book = _perp_book(0.2, 0.1, open_interest_lower_cap=[lower], open_interest_upper_cap=[upper])
    row = _one_position(book, _market(50_000.0, open_interest), 10.0)  # notional 500,000
    assert math.ceil(row["initial_margin"] - 1e-6) == dydx
    assert abs(row["initial_margin"] - dydx) < 1.0
    assert row["maintenance_margin"] == pytest.approx(50_000.0, rel=1e-15)


def test_bad_size_rate_columns_are_refused():
    with pytest.raises(me.MarginInputError, match="imf_factor"):
        _perp_book(0.1, 0.05, imf_factor=[-1.0])
    with pytest.raises(me.MarginInputError, match="pairs"):
        _perp_book(0.1, 0.05, open_interest_lower_cap=[1.0], open_interest_upper_cap=[None])
    with pytest.raises(me.MarginInputError, match="open_interest_upper_cap"):
        _perp_book(0.1, 0.05, open_interest_lower_cap=[2.0], open_interest_upper_cap=[1.0])
    with pytest.raises(me.MarginInputError, match="open_interest_upper_cap"):
        _perp_book(0.1, 0.05, open_interest_lower_cap=[2.0])
    with pytest.raises(me.MarginInputError, match="open_interest"):
        _market(50_000.0, -1.0)
    tiers = pa.table({"instrument": ["BTC-PERP"], "notional_floor": [1e6], "initial_margin_rate": [0.2], "maintenance_margin_rate": [0.1]})
    ins = pa.table({"instrument": ["BTC-PERP"], "kind": ["perpetual"], "underlying": ["BTC"], "multiplier": [1.0],
                    "initial_margin_rate": [0.1], "maintenance_margin_rate": [0.05], "imf_factor": [0.01]})
    with pytest.raises(me.MarginInputError, match="tiers"):
        me.Book(ins, _usd(), margin_tiers=tiers)


def test_portfolio_model_refuses_size_rates():
    book = _perp_book(0.1, 0.05, imf_factor=[0.01])
    positions = pa.table({"account_id": [1], "instrument": ["BTC-PERP"], "quantity": [1.0]})
    balances = pa.table({"account_id": [1], "asset": ["USD"], "amount": [1e5]})
    with pytest.raises(me.MarginInputError, match="standard model"):
        me.margin(book, positions, balances, _market(50_000.0), model="portfolio")
    with pytest.raises(me.MarginInputError, match="standard model"):
        me.what_if(book, {"BTC-PERP": 1.0}, {"USD": 1e5}, _market(50_000.0), [("BTC-PERP", 1.0)], model="portfolio")
    # the standard model honours it, in what-if too
    w = me.what_if(book, {"BTC-PERP": 1.0}, {"USD": 1e5}, _market(50_000.0), [("BTC-PERP", 99.0)])
    assert w.after.initial_margin == pytest.approx(100 * 50_000.0 * max(0.1, 0.08 + 0.01 * 10.0), rel=1e-12)
