"""A methodology inside the book drives `me.margin` (issue 13): the engine against Derive's
published numbers and against the reference, with every kind of call order.

- Derive's PMRM_2 portfolio cases (derivexyz/v2-core @ 7736900d, `test/risk-managers/unit-tests/
  PMRM_2/portfolio_cases/`, fixtures in tests/data/derive/ with provenance), each turned into a
  book, market, positions and balances by `presets.derive.case_tables`: `me.margin` gives
  Derive's signed IM and MM in `free_collateral` and `margin_excess`, and `me.scenario_losses`
  its per-scenario losses, within Derive's harness tolerance (1e-8 relative).
- Random books (tests/strategies.py) under random scenario methodologies (tables, weights, vol
  shocks, skew, static discount, loss factors, add-ons, both combination rules) and random
  expiry feeds and confidences: `me.margin` equals `reference.margin` on the same objects
  (1e-9 of the account's scale), both models, any thread count.
- The `v1` methodology is today's engine bit for bit; a Market used with books of different
  methodologies in any order gives the results of fresh objects; the kernels that still read
  v1's risk arrays refuse a scenario methodology rather than answer with v1's numbers.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from strategies import books
from test_scenario_engine_rust import _rows, _skew, _skew_rows, _static, _vol

import margin_engine as me
from margin_engine import MarginInputError, _core, reference
from margin_engine.presets.derive_standard_cases import case_inputs as standard_case_inputs
from margin_engine.presets.derive_standard_cases import case_tables as standard_case_tables
from margin_engine.presets.derive_standard_cases import load_cases, published_figures
from margin_engine.reference.standard_params import DERIVE_STANDARD
from margin_engine.methodology_params import (
    BasisContingency,
    CalendarBasis,
    Concentration,
    ConfidenceContingency,
    LossFactors,
    MaxOfGroups,
    PegLoss,
    PositionContingency,
    ScenarioMethodology,
)
from margin_engine.presets import derive

DATA = Path(__file__).parent / "data" / "derive"
CASES = json.loads((DATA / "pmrm2_portfolio_cases_1_to_71.json").read_text())
INVALID = {"lyra_pmrm2_test_67_misc_skew_scenario_with_spot_move"}
REL = 1e-8
NEAR_ZERO = 1e-10
"""A hedged book's P&L that is 0 up to rounding (a box): compared absolutely, as in
tests/test_derive_pmrm2.py."""


def _close(ours: float, published: float) -> bool:
    if abs(ours) < NEAR_ZERO or abs(published) < NEAR_ZERO:
        return abs(ours - published) <= REL
    return abs(ours - published) <= REL * abs(published)


def _published_losses(case: dict) -> list[float]:
    full = case["published_expected"]["full"]
    return (
        [float(r[2]) for r in full["reg_losses"]]
        + [float(r[2]) for r in full["tail_losses"]]
        + [float(r[1]) for r in full["skew_losses"]]
    )


def _case(case: dict):
    marks = [pytest.mark.xfail(strict=True, raises=MarginInputError, reason="PMRM_2 rejects its table too")] if case["id"] in INVALID else []
    return pytest.param(case, id=case["id"], marks=marks)


@pytest.mark.parametrize("case", [_case(c) for c in CASES])
def test_derive_case_through_margin(case: dict) -> None:
    """One published case (named by its source id) through the book-level engine: IM, MM and
    every scenario loss."""
    book, market, positions, balances = derive.case_tables(case)
    full = case["published_expected"]["full"]
    rows = me.margin(book, positions, balances, market, model="portfolio").to_pylist()
    assert len(rows) == 1, case["id"]
    row = rows[0]
    assert _close(row["free_collateral"], float(full["IM"])), (row["free_collateral"], full["IM"])
    assert _close(row["margin_excess"], float(full["MM"])), (row["margin_excess"], full["MM"])
    losses = me.scenario_losses(book, positions, balances, market)
    published = _published_losses(case)
    ours = losses.column("pnl").to_pylist()
    if not ours:  # cash alone: no portfolio, no scenario row (Derive lists zero losses)
        assert all(p == 0.0 for p in published)
        ours = [0.0] * len(published)
    assert len(ours) == len(published)
    misses = [(i, o, p) for i, (o, p) in enumerate(zip(ours, published, strict=True)) if not _close(o, p)]
    assert not misses, misses
    # the reference, through the same objects, gives the same row
    ref = reference.margin(book, positions, balances, market, model="portfolio").to_pylist()[0]
    for k in ("initial_margin", "maintenance_margin", "collateral_initial", "collateral_maintenance"):
        assert math.isclose(row[k], ref[k], rel_tol=1e-12, abs_tol=1e-9), k


# --------------------------------------------------------------------------------------------
# Random methodologies on random books: engine == reference
# --------------------------------------------------------------------------------------------

_addons = st.fixed_dictionaries(
    {},
    optional={
        "position_contingency": st.builds(
            PositionContingency,
            perp_maintenance=st.floats(0.0, 0.05),
            perp_initial=st.floats(0.0, 0.05),
            option_maintenance=st.floats(0.0, 0.05),
            option_initial=st.floats(0.0, 0.05),
        ),
        "confidence_contingency": st.builds(ConfidenceContingency, threshold=st.floats(0.0, 1.0), scale=st.floats(0.0, 1.0)),
        "peg_loss": st.builds(PegLoss, threshold=st.floats(0.9, 1.0), factor=st.floats(0.0, 3.0)),
        "basis_contingency": st.builds(
            BasisContingency,
            spot_up=st.floats(1e-4, 0.1),
            spot_down=st.floats(-0.1, -1e-4),
            add_factor=st.floats(0.0, 2.0),
            mult_factor=st.floats(0.0, 2.0),
        ),
        "calendar_basis": st.builds(
            lambda r: CalendarBasis((7.0, 30.0, 90.0), tuple(r)), st.lists(st.floats(0.0, 0.05), min_size=5, max_size=5)
        ),
        "concentration": st.builds(Concentration, rate=st.floats(0.0, 0.2), liquidity_notional=st.floats(1.0, 1e7)),
    },
)


@st.composite
def methodologies(draw) -> ScenarioMethodology:
    combination = draw(st.sampled_from(["loss_factor", "max_of_groups"]))
    revaluation = draw(st.sampled_from(["expiry_sum", "risk_array"]))
    rows = list(draw(_rows))
    parts = draw(_addons)
    if revaluation == "expiry_sum":
        rows += list(draw(_skew_rows))
        static = draw(_static)
    else:
        static = None
    return ScenarioMethodology(
        name="random",
        scenarios=tuple(rows),
        vol_shock=draw(_vol),
        loss_factors=LossFactors(draw(st.floats(1.0, 2.0)), draw(st.floats(0.5, 1.0))),
        skew_shock=draw(_skew),
        static_discount=static,
        discount_options=draw(st.booleans()),
        collateral_haircuts_as_contingency=draw(st.booleans()),
        max_of_groups=MaxOfGroups(draw(st.floats(0.0, 1.0)), draw(st.floats(0.0, 0.05)), draw(st.floats(1.0, 2.0)))
        if combination == "max_of_groups"
        else None,
        revaluation=revaluation,
        combination=combination,
        **parts,
    )


def _feeds_and_confidences(draw, example: dict) -> tuple[pa.Table, pa.Table, pa.Table | None]:
    """The example's index prices and marks with random confidences, and an expiry_feeds table
    for some (underlying, expiry) pairs of its options and futures."""
    idx = example["index_prices"]
    marks = example["marks"]
    idx = idx.append_column("confidence", pa.array([draw(st.floats(0.0, 1.0)) for _ in range(idx.num_rows)], pa.float64()))
    marks = marks.append_column("confidence", pa.array([draw(st.floats(0.0, 1.0)) for _ in range(marks.num_rows)], pa.float64()))
    ins = example["instruments"]
    if "expiry" not in ins.column_names:
        return idx, marks, None
    spots = dict(zip(idx.column("underlying").to_pylist(), idx.column("index_price").to_pylist(), strict=True))
    pairs = sorted(
        {(u, e) for u, e, k in zip(ins.column("underlying").to_pylist(), ins.column("expiry").cast(pa.timestamp("ns")).cast(pa.int64()).to_pylist(),
                                      ins.column("kind").to_pylist(), strict=True) if e is not None and k != "perpetual" and u in spots}
    )
    rows = [p for p in pairs if draw(st.booleans())]
    if not rows:
        return idx, marks, None
    fwd = [spots[u] * draw(st.floats(0.9, 1.1)) for u, _ in rows]
    return idx, marks, pa.table(
        {
            "underlying": [u for u, _ in rows],
            "expiry": pa.array([e for _, e in rows], pa.timestamp("ns")),
            "forward": fwd,
            "forward_fixed": [f * draw(st.floats(0.0, 0.5)) for f in fwd],
            "rate": [draw(st.floats(-0.02, 0.1)) for _ in rows],
            "confidence": [draw(st.floats(0.0, 1.0)) for _ in rows],
        }
    )


def _scale(row: dict) -> float:
    return max(1.0, abs(row["equity"]), abs(row["initial_margin"]), abs(row["maintenance_margin"]), abs(row["collateral_initial"]))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(example=books(max_accounts=8), meth=methodologies(), data=st.data())
def test_random_methodology_engine_equals_reference(example: dict, meth: ScenarioMethodology, data) -> None:
    """`me.margin` under a random scenario methodology equals the reference, both models."""
    idx, marks, feeds = _feeds_and_confidences(data.draw, example)
    methodology = me.Methodology("random", portfolio=meth, standard=data.draw(st.sampled_from(["v1", "derive_standard"])))
    try:
        book = me.Book(example["instruments"], example["assets"], example["risk_params"], example["margin_tiers"], methodology=methodology)
    except MarginInputError:
        event("methodology refused by a structural rule")
        return  # a structural rule refused the drawn methodology (e.g. skew rows with risk_array)
    event("methodology accepted")
    market = me.Market(idx, marks, example["valuation_time_ns"], expiry_feeds=feeds)
    for model in ("portfolio", "standard"):
        try:
            got = me.margin(book, example["positions"], example["balances"], market, model=model, threads=data.draw(st.sampled_from([1, 2])))
        except MarginInputError as e:
            with pytest.raises(MarginInputError):
                reference.margin(book, example["positions"], example["balances"], market, model=model)
            assert "too large" in str(e) or "overflow" in str(e), e
            continue
        want = reference.margin(book, example["positions"], example["balances"], market, model=model).to_pylist()
        got = got.to_pylist()
        assert [r["account_id"] for r in got] == [r["account_id"] for r in want]
        for g, w in zip(got, want, strict=True):
            scale = _scale(w)
            for k in ("equity", "collateral_initial", "collateral_maintenance", "initial_margin", "maintenance_margin"):
                assert abs(g[k] - w[k]) <= 1e-9 * scale, (model, g["account_id"], k, g[k], w[k])


# --------------------------------------------------------------------------------------------
# v1 bit for bit; call orders; refusals
# --------------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(example=books(max_accounts=10))
def test_v1_methodology_is_todays_engine_bit_for_bit(example: dict) -> None:
    plain = me.Book(example["instruments"], example["assets"], example["risk_params"], example["margin_tiers"])
    v1 = me.Book(example["instruments"], example["assets"], example["risk_params"], example["margin_tiers"], methodology="v1")
    market = me.Market(example["index_prices"], example["marks"], example["valuation_time_ns"])
    for model in ("standard", "portfolio"):
        try:
            a = me.margin(plain, example["positions"], example["balances"], market, model=model)
        except MarginInputError:
            continue
        b = me.margin(v1, example["positions"], example["balances"], market, model=model)
        assert a.equals(b)


def _synthetic():
    from margin_engine import synthetic

    return synthetic.generate(300, seed=11)


def test_every_order_of_calls_on_one_market_gives_fresh_results() -> None:
    """One Market shared by books of four methodologies, called in every order: each call equals
    the same call on fresh objects (the resolved-market cache is keyed by the book)."""
    g = _synthetic()
    presets = ["v1", "exchange", "derive_pmrm2", "derive_standard"]

    def fresh(name: str, model: str) -> pa.Table:
        book = me.Book(g.instruments, g.assets, None, g.margin_tiers, methodology=name)
        return me.margin(book, g.positions, g.balances, me.Market(g.index_prices, g.marks, g.valuation_time_ns), model=model)

    want = {(p, m): fresh(p, m) for p in presets for m in ("standard", "portfolio")}
    assert not want[("exchange", "portfolio")].equals(want[("v1", "portfolio")])
    assert not want[("derive_pmrm2", "portfolio")].equals(want[("v1", "portfolio")])
    books_ = {p: me.Book(g.instruments, g.assets, None, g.margin_tiers, methodology=p) for p in presets}
    calls = [(p, m) for p in presets for m in ("standard", "portfolio")]
    for order in itertools.islice(itertools.permutations(calls), 0, 40320, 997):
        market = me.Market(g.index_prices, g.marks, g.valuation_time_ns)
        for p, m in order:
            assert me.margin(books_[p], g.positions, g.balances, market, model=m).equals(want[(p, m)]), (order, p, m)


def test_kernels_on_v1_arrays_refuse_a_scenario_methodology() -> None:
    g = _synthetic()
    book = me.Book(g.instruments, g.assets, None, g.margin_tiers, methodology="exchange")
    market = me.Market(g.index_prices, g.marks, g.valuation_time_ns)
    for call in (
        lambda: me.liquidation_map(book, g.positions, g.balances, market, model="portfolio"),
        lambda: me.liquidation_plan(book, g.positions, g.balances, market, model="portfolio"),
    ):
        with pytest.raises(MarginInputError, match="exchange"):
            call()
    # the standard model, the scan and the exact distances (whole accounts margined in each moved
    # market: tests/test_liquidation_exact.py) follow the methodology
    me.liquidation_distance(book, g.positions, g.balances, market, model="standard")
    scan = me.liquidation_scan(book, g.positions, g.balances, market, model="portfolio")
    m = me.margin(book, g.positions, g.balances, market, model="portfolio")
    assert sorted(scan.column("maintenance_margin").to_pylist()) == sorted(m.column("maintenance_margin").to_pylist())


def test_stress_moves_forwards_with_the_index() -> None:
    """Under stress the scenario engine revalues on moved forwards: a −10% BTC stress equals the
    margin of a market whose BTC index, marks and forwards are moved by hand."""
    book, market, positions, balances = derive.case_tables(derive.example_case())
    stressed = me.liquidation_scan(book, positions, balances, market, model="portfolio", stress={"BASE": -0.1})
    by_hand_idx = market.index_prices.to_pylist()
    for r in by_hand_idx:
        if r["underlying"] == "BASE":
            r["index_price"] *= 0.9
    feeds = market.expiry_feeds.to_pylist()
    for f in feeds:
        f["forward"] = (f["forward"] - f["forward_fixed"]) * 0.9 + f["forward_fixed"]
    kinds = dict(zip(book.instruments.column("instrument").to_pylist(), book.instruments.column("kind").to_pylist(), strict=True))
    marks = market.marks.to_pylist()
    for r in marks:  # the perpetual's mark moves with its index (options are revalued on forwards)
        if kinds[r["instrument"]] == "perpetual":
            r["mark_price"] *= 0.9
    assets = book.assets.to_pylist()
    for a in assets:  # a coin linked to BASE moves with it
        if a["underlying"] == "BASE":
            a["price"] *= 0.9
    moved_book = me.Book(book.instruments, pa.Table.from_pylist(assets, book.assets.schema), methodology=book.methodology)
    moved = me.Market(pa.Table.from_pylist(by_hand_idx, market.index_prices.schema), pa.Table.from_pylist(marks, market.marks.schema),
                      market.valuation_time_ns, expiry_feeds=pa.Table.from_pylist(feeds, market.expiry_feeds.schema))
    plain = me.margin(moved_book, positions, balances, moved, model="portfolio")
    assert math.isclose(stressed.column("maintenance_margin")[0].as_py(), plain.column("maintenance_margin")[0].as_py(), rel_tol=1e-9)


def test_risk_arrays_follow_the_methodology() -> None:
    """Under a scenario methodology, `risk_arrays` holds the table's rows: the losses of one
    contract held alone equal `scenario_losses` of an account holding exactly that contract."""
    book, market, positions, balances = derive.case_tables(derive.example_case())
    arrays = me.risk_arrays(book, market)
    n = len(book.methodology.portfolio.default.scenarios)
    first = positions.column("instrument")[0].as_py()
    mine = [r for r in arrays.to_pylist() if r["instrument"] == first]
    assert len(mine) == n and {"spot_move", "vol_shock", "weight", "group"} <= set(arrays.column_names)
    one = pa.table({"account_id": pa.array([5], pa.int64()), "instrument": [first], "quantity": [1.0]})
    losses = me.scenario_losses(book, one, balances.slice(0, 0), market).column("pnl").to_pylist()
    assert [r["pnl"] for r in mine] == losses
    plain = me.Book(book.instruments, book.assets)
    with pytest.raises(MarginInputError, match="risk_arrays"):
        me.scenario_losses(plain, positions, balances, market)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(example=books(max_accounts=8), meth=methodologies(), data=st.data())
def test_scenario_losses_equal_the_reference(example: dict, meth: ScenarioMethodology, data) -> None:
    """`me.scenario_losses` row for row against `reference.scenario_inputs.scenario_losses`."""
    from margin_engine.reference.scenario_inputs import scenario_losses

    idx, marks, feeds = _feeds_and_confidences(data.draw, example)
    try:
        book = me.Book(example["instruments"], example["assets"], example["risk_params"], example["margin_tiers"],
                       methodology=me.Methodology("random", portfolio=meth))
    except MarginInputError:
        return
    market = me.Market(idx, marks, example["valuation_time_ns"], expiry_feeds=feeds)
    got = me.scenario_losses(book, example["positions"], example["balances"], market).to_pylist()
    want = scenario_losses(book, example["positions"], example["balances"], market)
    assert [(r["account_id"], r["underlying"], r["scenario"], r["group"]) for r in got] == [
        (r["account_id"], r["underlying"], r["scenario"], r["group"]) for r in want
    ]
    for g, w in zip(got, want, strict=True):
        assert math.isclose(g["pnl"], w["pnl"], rel_tol=1e-9, abs_tol=1e-9 * max(1.0, abs(w["pnl"]))), (g, w)


def test_scenario_losses_refuse_a_repeated_balance() -> None:
    book, market, positions, balances = derive.case_tables(derive.example_case())
    twice = pa.concat_tables([balances, balances])
    with pytest.raises(MarginInputError, match="duplicate"):
        me.scenario_losses(book, positions, twice, market)


# --------------------------------------------------------------------------------------------
# Derive's standard-manager cases through me.margin, and order entry under a methodology
# --------------------------------------------------------------------------------------------

STANDARD_CASES = load_cases(DATA / "standard_manager_test_cases.json")


@pytest.mark.parametrize("case", STANDARD_CASES, ids=[c["id"] for c in STANDARD_CASES])
def test_derive_standard_case_through_margin(case: dict) -> None:
    """One of the 28 published standard-manager cases (derivexyz/v2-core @ 7736900d,
    `test/risk-managers/unit-tests/StandardManager/test-cases.json`, named by its id) through
    `me.margin(model="standard")` on `derive_standard_cases.case_tables`: Derive's signed IM
    (`realIM`) and MM (`realMM`) within 1e-8, and the very row of the standard-rules kernel
    called with the feeds as explicit dicts (the market's columns carry the same feeds)."""
    book, market, positions, balances = standard_case_tables(case)
    [row] = me.margin(book, positions, balances, market, model="standard").to_pylist()
    published = published_figures(case)
    assert _close(row["free_collateral"], published["realIM"]), (row["free_collateral"], published["realIM"])
    assert _close(row["margin_excess"], published["realMM"]), (row["margin_excess"], published["realMM"])
    inputs = standard_case_inputs(case)
    t = inputs.tables
    [kernel] = pa.table(_core.standard_rules_margin(
        t.book()._core, t.market()._core, t.positions, t.balances, dataclasses.asdict(DERIVE_STANDARD),
        dataclasses.asdict(inputs.feeds), None,
    )).to_pylist()  # fmt: skip
    for column in ("equity", "collateral_initial", "collateral_maintenance", "initial_margin",
                   "maintenance_margin", "free_collateral", "margin_excess"):  # fmt: skip
        assert row[column] == kernel[column], column


def _appended(positions: pa.Table, balances: pa.Table, book: me.Book, market: me.Market, trade: tuple) -> tuple:
    """The account's rows with the trade booked as a back office would: a position row at the
    trade price, and an option's premium `−q × multiplier × price` out of the quote asset (USDC)."""
    instrument, quantity, price = trade
    ins = book.instruments
    kind = dict(zip(ins.column("instrument").to_pylist(), ins.column("kind").to_pylist(), strict=True))
    mult = (dict(zip(ins.column("instrument").to_pylist(), ins.column("multiplier").to_pylist(), strict=True))
            if "multiplier" in ins.column_names else {})  # fmt: skip
    account = positions.column("account_id")[0].as_py() if positions.num_rows else balances.column("account_id")[0].as_py()
    p = positions.to_pylist()
    p.append({"account_id": account, "instrument": instrument, "quantity": quantity, "entry_price": price})
    cash = {b["asset"]: b["amount"] for b in balances.to_pylist()}
    if kind[instrument] == "option":
        cash["USDC"] = cash.get("USDC", 0.0) - quantity * (mult.get(instrument) or 1.0) * price
    new_positions = pa.table({
        "account_id": pa.array([r["account_id"] for r in p], positions.schema.field("account_id").type),
        "instrument": pa.array([r["instrument"] for r in p], pa.string()),
        "quantity": pa.array([r["quantity"] for r in p], pa.float64()),
        "entry_price": pa.array([r.get("entry_price") for r in p], pa.float64()),
    })  # fmt: skip
    new_balances = pa.table({
        "account_id": pa.array([account] * len(cash), balances.schema.field("account_id").type),
        "asset": pa.array(list(cash), pa.string()),
        "amount": pa.array(list(cash.values()), pa.float64()),
    })  # fmt: skip
    return new_positions, new_balances


def _holds_positions(model: str, case: dict) -> bool:
    positions = (derive.case_tables(case) if model == "portfolio" else standard_case_tables(case)).positions
    return positions.num_rows > 0


ORDER_ENTRY_CASES = [
    (m, c)
    for m, c in [("portfolio", c) for c in CASES if c["id"] not in INVALID][::5] + [("standard", c) for c in STANDARD_CASES][::3]
    if _holds_positions(m, c)
]


@pytest.mark.parametrize("model,case", ORDER_ENTRY_CASES, ids=[f"{m}-{c['id']}" for m, c in ORDER_ENTRY_CASES])
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_what_if_under_a_methodology_equals_margin_on_the_appended_rows(model: str, case: dict, data) -> None:
    """Order entry under Derive's methodologies: on a published case's portfolio, `what_if`'s
    `before` is the account's `me.margin` row bit for bit and its `after` is `me.margin` on the
    rows with the trade appended (1e-9 of the account's scale), for random trades in the case's
    instruments, at the mark and away from it."""
    tables = derive.case_tables(case) if model == "portfolio" else standard_case_tables(case)
    book, market, positions, balances = tables
    instruments = book.instruments.column("instrument").to_pylist()
    marks = dict(zip(market.marks.column("instrument").to_pylist(), market.marks.column("mark_price").to_pylist(), strict=True))
    instrument = data.draw(st.sampled_from([k for k in instruments if marks.get(k) is not None]))
    quantity = data.draw(st.sampled_from([-10.0, -1.0, -0.25, 0.5, 3.0]))
    price = marks[instrument] * data.draw(st.sampled_from([1.0, 0.97, 1.05]))
    rows = [(r["instrument"], r["quantity"], r.get("entry_price")) for r in positions.to_pylist()]
    cash = {b["asset"]: b["amount"] for b in balances.to_pylist()}
    got = me.what_if(book, rows, cash, market, [(instrument, quantity, price)], model=model)
    [before] = me.margin(book, positions, balances, market, model=model).to_pylist()
    for name in ("equity", "initial_margin", "maintenance_margin", "free_collateral", "margin_excess", "status"):
        assert getattr(got.before, name) == before[name], name
    new_positions, new_balances = _appended(positions, balances, book, market, (instrument, quantity, price))
    [after] = me.margin(book, new_positions, new_balances, market, model=model).to_pylist()
    scale = 1.0 + sum(abs(after[f]) + abs(before[f]) for f in ("equity", "initial_margin", "maintenance_margin"))
    for name in ("equity", "initial_margin", "maintenance_margin", "free_collateral", "margin_excess"):
        assert abs(getattr(got.after, name) - after[name]) <= 1e-9 * scale, (name, getattr(got.after, name), after[name])
