"""The generalized standard margin (`reference.standard_rules`) and its parameters
(`reference.standard_params`), docs/standard-methodologies.md.

- the `v1` parameter set is docs/methodology.md §3 bit for bit (`reference.standard`), on
  random books of `strategies.books()`;
- the rules hold their defining properties on random books under random parameter sets (the
  per-expiry floor never raises a charge and matches a brute-force payoff scan, `IM ≥ k × MM`,
  the mark counted once or twice, the base-asset factor);
- a bad or unknown parameter raises `ValueError` naming it.
"""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import books, reference_objects

from margin_engine import reference
from margin_engine.reference._tables import read_book, read_market, read_positions
from margin_engine.reference.standard_params import DERIVE_STANDARD, V1, StandardParams, preset
from margin_engine.reference.standard_rules import expiry_payoff, short_option_charge, standard_margin_rules
from margin_engine.reference.valuation import net_positions


def run(example, params, feeds=None):
    book, market = reference_objects(example)
    kwargs = {} if feeds is None else {"feeds": feeds}
    return standard_margin_rules(book, example["positions"], example["balances"], market, params, **kwargs)


@given(books())
def test_v1_parameter_set_is_methodology_section_3_exactly(example):
    """`V1` gives the §3 reference's IM, MM, collateral and equity bit for bit, every account."""
    book, market = reference_objects(example)
    want = reference.margin(book, example["positions"], example["balances"], market, model="standard").to_pylist()
    got = run(example, V1)
    assert [a.account_id for a in got] == [row["account_id"] for row in want]
    for account, row in zip(got, want, strict=True):
        assert account.initial_margin == row["initial_margin"]
        assert account.maintenance_margin == row["maintenance_margin"]
        assert account.collateral_initial == row["collateral_initial"]
        assert account.collateral_maintenance == row["collateral_maintenance"]
        assert account.equity == row["equity"]
        assert account.free_collateral == row["free_collateral"]
        assert account.margin_excess == row["margin_excess"]


@st.composite
def rule_params(draw):
    """A random parameter set: every rule drawn on or off, with random sizes."""
    maybe = lambda s: draw(st.one_of(st.none(), s))  # noqa: E731
    rate = st.floats(0.0, 0.5)
    linear = maybe(st.tuples(rate, rate).map(sorted))
    return StandardParams(
        name="random",
        option_im_rate=maybe(rate),
        option_im_floor=maybe(rate),
        call_mm_rate=maybe(rate),
        put_mm_rate=maybe(rate),
        put_mm_mark_rate=draw(rate),
        put_im_mm_multiple=maybe(st.floats(0.5, 3.0)),
        call_im_mm_multiple=maybe(st.floats(0.5, 3.0)),
        linear_im_rate=None if linear is None else linear[1],
        linear_mm_rate=None if linear is None else linear[0],
        max_loss_floor=draw(st.booleans()),
        unpaired_call_im_scale=draw(st.floats(0.0, 3.0)),
        unpaired_call_mm_scale=draw(st.floats(0.0, 3.0)),
        option_value_in_collateral=draw(st.booleans()),
        base_asset_margin_factor=maybe(st.floats(0.0, 1.0)),
        base_asset_im_scale=draw(st.floats(0.0, 1.0)),
    )


@given(books(max_accounts=5), rule_params())
def test_max_loss_floor_never_raises_a_charge(example, params):
    """Per expiry `min(Σ isolated, floor)`: switching the floor on never raises IM or MM, and each
    expiry's charge is its isolated sum or its floor, whichever is lower."""
    on = run(example, dataclasses.replace(params, max_loss_floor=True))
    off = run(example, dataclasses.replace(params, max_loss_floor=False))
    for a_on, a_off in zip(on, off, strict=True):
        assert a_on.initial_margin <= a_off.initial_margin * (1 + 1e-12) + 1e-9
        assert a_on.maintenance_margin <= a_off.maintenance_margin * (1 + 1e-12) + 1e-9
        for charge in a_on.expiries:
            assert charge.im == min(charge.isolated_im, charge.floor_im)
            assert charge.mm == min(charge.isolated_mm, charge.floor_mm)


@given(books(max_accounts=5))
def test_max_loss_is_the_worst_settlement_over_a_price_scan(example):
    """`L` (scanned at 0 and the strikes) is the worst loss of the expiry's payoff on a dense
    price grid up to the highest strike, and beyond it the payoff moves by `net calls` per unit:
    so the strikes and 0 are the only candidates, and unpaired short calls are the only way down."""
    bd = read_book(reference_objects(example)[0])
    md = read_market(reference_objects(example)[1], bd)
    for account in run(example, DERIVE_STANDARD):
        netted = net_positions(read_positions(example["positions"], bd), bd, md).get(account.account_id, [])
        for charge in account.expiries:
            options = [
                p for p in netted
                if p.instrument.is_option and (p.instrument.underlying, p.instrument.expiry_ns)
                == (charge.underlying, charge.expiry_ns)
            ]  # fmt: skip
            top = max(p.instrument.strike for p in options)
            grid = [top * i / 400 for i in range(401)]
            scale = sum(abs(p.quantity) * p.instrument.multiplier * p.instrument.strike for p in options)
            worst = min(0.0, *(expiry_payoff(options, x) for x in grid))
            assert charge.max_loss <= -worst + 1e-9 * scale
            assert charge.max_loss >= -worst - 1e-9 * scale - 1e-12
            net_calls = sum(p.quantity * p.instrument.multiplier for p in options if p.instrument.is_call)
            beyond = expiry_payoff(options, 2 * top) - expiry_payoff(options, top)
            assert math.isclose(beyond, net_calls * top, rel_tol=1e-9, abs_tol=1e-9 * scale)
            assert charge.unpaired_calls == max(-net_calls, 0.0)


@given(books(max_accounts=5), rule_params())
def test_short_option_mark_counted_once_or_twice(example, params):
    """Rule 4, the mark counted once or twice: with `option_value_in_collateral` the options'
    value is in both collateral sums (a short's mark counted twice), without it in neither;
    requirements and equity do not depend on the switch."""
    twice = run(example, dataclasses.replace(params, option_value_in_collateral=True))
    once = run(example, dataclasses.replace(params, option_value_in_collateral=False))
    for a, b in zip(twice, once, strict=True):
        assert a.initial_margin == b.initial_margin and a.maintenance_margin == b.maintenance_margin
        scale = 1.0 + abs(a.collateral_initial) + abs(b.collateral_initial) + abs(a.option_value)
        assert math.isclose(a.collateral_initial - b.collateral_initial, a.option_value, abs_tol=1e-9 * scale)
        assert math.isclose(a.equity, b.equity, rel_tol=1e-12, abs_tol=1e-9 * scale)


@given(books(max_accounts=5), st.floats(1.0, 3.0), st.floats(0.0, 0.5))
def test_put_im_at_least_k_times_mm(example, k, mark_rate):
    """`put_im_mm_multiple = k`: every short put's IM charge is at least k × its MM charge, and
    its MM is `mark + max(mm_rate × S, put_mm_mark_rate × mark)` per contract."""
    params = dataclasses.replace(DERIVE_STANDARD, put_im_mm_multiple=k, put_mm_mark_rate=mark_rate)
    book, market = reference_objects(example)
    bd = read_book(book)
    md = read_market(market, bd)
    for positions in net_positions(read_positions(example["positions"], bd), bd, md).values():
        for p in positions:
            ins = p.instrument
            if ins.is_option and not ins.is_call and p.quantity < 0.0:
                mark = md.marks[ins.id].mark_price
                spot = md.index_prices[ins.underlying]
                im, mm = short_option_charge(p, mark, spot, params)
                assert im >= k * mm
                per_contract = mark + max(0.075 * spot, mark_rate * mark)
                assert math.isclose(mm, abs(p.quantity) * ins.multiplier * per_contract, rel_tol=1e-12)


def test_v1_and_derive_presets_by_name():
    assert preset("v1") is V1
    assert preset("derive_standard") is DERIVE_STANDARD
    with pytest.raises(ValueError, match="'derive'"):
        preset("derive")


def test_unknown_parameter_is_named():
    with pytest.raises(ValueError, match="'max_los_floor'.*unknown parameter"):
        StandardParams.from_mapping({"max_loss_floor": True, "max_los_floor": True})


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("option_im_rate", -0.1),
        ("put_mm_mark_rate", float("nan")),
        ("unpaired_call_im_scale", "1.2"),
        ("max_loss_floor", 1),
        ("option_value_in_collateral", "no"),
        ("base_asset_margin_factor", 1.5),
        ("oracle_factor", 2.0),
        ("depeg_threshold", 1.5),
        ("put_im_mm_multiple", 0.0),
        ("linear_im_rate", 0.1),  # without linear_mm_rate
    ],
)
def test_bad_parameter_value_is_named(key, value):
    with pytest.raises(ValueError, match=repr(key)):
        StandardParams.from_mapping({key: value})


def test_from_mapping_round_trip():
    """`to_dict` / `from_mapping` give the same parameter set back; keys not given keep `base`."""
    assert StandardParams.from_mapping(DERIVE_STANDARD.to_dict()) == DERIVE_STANDARD
    tweaked = StandardParams.from_mapping({"depeg_factor": 2.0}, base=DERIVE_STANDARD)
    assert tweaked == dataclasses.replace(DERIVE_STANDARD, depeg_factor=2.0)
