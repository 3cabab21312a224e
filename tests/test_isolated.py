"""Isolated margin (docs/methodology.md "Isolated margin", docs/liquidation.md §8): positions with
``margin_mode = "isolated"`` margined alone with their own collateral, their liquidation prices
(closed form for perpetuals and futures, a bracketing root for options), venues' published
formulas, the cross accounts without them, and every function either honouring isolation or
refusing it."""

from __future__ import annotations

import math
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import margin_engine as me
from margin_engine import reference as ref
from conftest import assert_tables_close, close, engine_objects
from strategies import books, reference_objects, with_topups

USD = pa.table({"asset": ["USDT"], "price": [1.0], "initial_weight": [1.0], "maintenance_weight": [1.0],
                "initial_liability_weight": [1.0], "maintenance_liability_weight": [1.0]})


def _book(imr: float = 0.02, mmr: float = 0.005, tiers: Any = None, options: bool = False) -> me.Book:
    rows = {"instrument": ["BTCUSDT"], "kind": ["perpetual"], "underlying": ["BTC"], "multiplier": [1.0],
            "initial_margin_rate": [imr], "maintenance_margin_rate": [mmr]}
    if options:
        import datetime as dt

        expiry = dt.datetime(2025, 3, 28, 8, tzinfo=dt.timezone.utc)
        rows = {"instrument": ["BTCUSDT", "BTC-C", "BTC-P"], "kind": ["perpetual", "option", "option"],
                "underlying": ["BTC"] * 3, "multiplier": [1.0] * 3,
                "expiry": pa.array([None, expiry, expiry], pa.timestamp("us", "UTC")),
                "strike": [None, 22_000.0, 18_000.0], "option_type": [None, "call", "put"],
                "initial_margin_rate": [imr, 0.15, 0.15], "maintenance_margin_rate": [mmr, 0.075, 0.075],
                "initial_margin_floor": [None, 0.10, 0.10]}
    return me.Book(pa.table(rows), USD, None, tiers)


def _market(price: float, mark: float | None = None) -> me.Market:
    marks = {"instrument": ["BTCUSDT"], "mark_price": [price if mark is None else mark]}
    return me.Market(pa.table({"underlying": ["BTC"], "index_price": [price]}), pa.table(marks), "2025-01-01")


def _option_market(price: float) -> me.Market:
    return me.Market(
        pa.table({"underlying": ["BTC"], "index_price": [price]}),
        pa.table({"instrument": ["BTCUSDT", "BTC-C", "BTC-P"], "mark_price": [price, 600.0, 300.0],
                  "implied_vol": [None, 0.6, 0.6]}),
        "2025-01-01",
    )


def _isolated(account: int, instrument: str, quantity: float, entry: float | None, mode: str = "isolated") -> dict[str, Any]:
    return {"account_id": account, "instrument": instrument, "quantity": quantity, "entry_price": entry, "margin_mode": mode}


def _positions(*rows: dict[str, Any]) -> pa.Table:
    return pa.table({k: [r[k] for r in rows] for k in ("account_id", "instrument", "quantity", "entry_price", "margin_mode")},
                    schema=pa.schema([("account_id", pa.int64()), ("instrument", pa.string()), ("quantity", pa.float64()),
                                      ("entry_price", pa.float64()), ("margin_mode", pa.string())]))


def _collateral(*rows: tuple[int, str, float]) -> pa.Table:
    return pa.table({"account_id": [r[0] for r in rows], "instrument": [r[1] for r in rows], "amount": [r[2] for r in rows]})


# ----------------------------------------------------------------------------------------------
# Venues' published formulas
# ----------------------------------------------------------------------------------------------

# Binance, "How to Calculate Liquidation Price of USDⓈ-M Futures Contracts"
# (https://www.binance.com/en/support/faq/b3c689c1f50a44cabb3a84e663b81d93): isolated mode takes
# WB = isolatedWalletBalance, TMM = UPNL = 0, LP = (WB + cum − side·q·EP) / (q·MMR − side·q), with
# MMR and the maintenance amount cum of the bracket the liquidation notional falls in (the page's
# note: recompute at another level when the notional is not in the assumed one). Its BTCUSDT
# brackets: 0.4% from 0, 0.5% from 50,000 (cum 50), 1% from 250,000 (cum 1,300 =
# 250,000 × (1% − 0.5%) + 50, the page's worked maintenance amount).
BINANCE_BRACKETS = [(0.0, 0.004), (50_000.0, 0.005), (250_000.0, 0.01)]


def _binance_cum(level: int) -> float:
    cum = 0.0
    for k in range(1, level + 1):
        cum += BINANCE_BRACKETS[k][0] * (BINANCE_BRACKETS[k][1] - BINANCE_BRACKETS[k - 1][1])
    return cum


def _binance_lp(wb: float, side: int, q: float, ep: float) -> float:
    for level, (floor, mmr) in enumerate(BINANCE_BRACKETS):
        ceiling = BINANCE_BRACKETS[level + 1][0] if level + 1 < len(BINANCE_BRACKETS) else math.inf
        lp = (wb + _binance_cum(level) - side * q * ep) / (q * mmr - side * q)
        if floor <= q * lp < ceiling:
            return lp
    raise AssertionError("no level holds the liquidation notional")


def _binance_book() -> me.Book:
    tiers = pa.table({"instrument": ["BTCUSDT"] * 2, "notional_floor": [50_000.0, 250_000.0],
                      "initial_margin_rate": [0.01, 0.02], "maintenance_margin_rate": [0.005, 0.01]})
    return _book(imr=0.008, mmr=0.004, tiers=tiers)


def test_binance_maintenance_amounts_are_the_pages():
    assert _binance_cum(1) == pytest.approx(50.0) and _binance_cum(2) == pytest.approx(1_300.0)
    # a 500,000 USDT position: 500,000 × 1% − 1,300 = 3,700 USDT of maintenance margin
    book, market = _binance_book(), _market(50_000.0)
    m = me.isolated_margin(book, _positions(_isolated(1, "BTCUSDT", 10.0, 50_000.0)), _collateral((1, "BTCUSDT", 60_000.0)), market)
    assert m.column("maintenance_margin")[0].as_py() == pytest.approx(3_700.0, rel=1e-12)


@pytest.mark.parametrize(
    "side,q,ep,wb,mark",
    [
        (1, 10.0, 30_000.0, 30_000.0, 30_000.0),   # 300,000 at entry, liquidates in the 0.5% bracket
        (1, 10.0, 30_000.0, 30_000.0, 31_500.0),   # the mark moved: LP depends on EP, not the mark
        (1, 2.0, 20_000.0, 2_000.0, 20_000.0),     # 0.4% bracket
        (-1, 10.0, 30_000.0, 30_000.0, 30_000.0),  # short: 1% bracket
        (-1, 1.0, 20_000.0, 500.0, 19_000.0),
    ],
)
def test_binance_isolated_liquidation_price(side, q, ep, wb, mark):
    book, market = _binance_book(), _market(mark)
    positions = _positions(_isolated(7, "BTCUSDT", side * q, ep))
    m = me.isolated_margin(book, positions, _collateral((7, "BTCUSDT", wb)), market)
    assert m.column("liquidation_price")[0].as_py() == pytest.approx(_binance_lp(wb, side, q, ep), rel=1e-12)


# Bybit, "Liquidation Price (USDT Contract)"
# (https://www.bybit.com/en/help-center/article/Liquidation-Price-USDT-Contract), isolated margin:
# LP(long) = Entry − (IM − MM) / size − extra margin / size, LP(short) = Entry + (IM − MM) / size
# + extra / size, IM = entry position value / leverage, MM = entry position value × MMR −
# deduction. Example 1: long 1 BTC at 20,000 USDT, 50x, MMR 0.5%: IM 400, MM 100, LP 19,700.
def test_bybit_example_1_long():
    book = _book(imr=0.02, mmr=0.005)
    positions = _positions(_isolated(1, "BTCUSDT", 1.0, 20_000.0))
    m = me.isolated_margin(book, positions, _collateral((1, "BTCUSDT", 400.0)), _market(20_000.0), maintenance_basis="entry")
    row = m.to_pylist()[0]
    assert row["maintenance_margin"] == pytest.approx(100.0, rel=1e-12)
    assert row["initial_margin"] == pytest.approx(400.0, rel=1e-12)
    assert row["liquidation_price"] == pytest.approx(19_700.0, rel=1e-12)


@pytest.mark.parametrize("side,extra,mark", [(1, 0.0, 20_500.0), (1, 50.0, 19_800.0), (-1, 0.0, 20_000.0), (-1, 120.0, 20_300.0)])
def test_bybit_formula_with_extra_margin_and_a_moved_mark(side, extra, mark):
    """The same page's formula with extra margin added and the mark away from the entry: on the
    entry basis the liquidation price does not depend on the mark."""
    entry, size, leverage, mmr = 20_000.0, 1.5, 50.0, 0.005
    im, mm = size * entry / leverage, size * entry * mmr
    want = entry - side * (im - mm) / size - side * extra / size
    book = _book(imr=1 / leverage, mmr=mmr)
    positions = _positions(_isolated(1, "BTCUSDT", side * size, entry))
    m = me.isolated_margin(book, positions, _collateral((1, "BTCUSDT", im + extra)), _market(mark), maintenance_basis="entry")
    assert m.column("liquidation_price")[0].as_py() == pytest.approx(want, rel=1e-12)
    assert m.column("maintenance_margin")[0].as_py() == pytest.approx(mm, rel=1e-12)


# ----------------------------------------------------------------------------------------------
# Hand-worked rules
# ----------------------------------------------------------------------------------------------


def test_isolated_loss_never_reaches_the_cross_account():
    """Account 1: a bankrupt isolated long (collateral 100, price fell 10%) beside a healthy
    cross position. The cross row is the account without the isolated position; the isolated
    row is bankrupt on its own, and the plan writes its deficit as bad debt of that position."""
    book = _book()
    positions = _positions(_isolated(1, "BTCUSDT", 1.0, 20_000.0), _isolated(2, "BTCUSDT", -1.0, 20_000.0, "cross"))
    balances = pa.table({"account_id": [1, 2], "asset": ["USDT", "USDT"], "amount": [10_000.0, 10_000.0]})
    collateral = _collateral((1, "BTCUSDT", 100.0))
    market = _market(18_000.0)
    cross = me.margin(book, positions, balances, market, isolated_collateral=collateral)
    assert cross.column("account_id").to_pylist() == [1, 2]
    assert cross.to_pylist()[0]["equity"] == 10_000.0 and cross.to_pylist()[0]["status"] == "healthy"
    iso = me.isolated_margin(book, positions, collateral, market).to_pylist()
    assert [(r["account_id"], r["instrument"], r["status"]) for r in iso] == [(1, "BTCUSDT", "bankrupt")]
    assert iso[0]["equity"] == pytest.approx(100.0 - 2_000.0)
    plan = me.liquidation_plan(book, positions, balances, market, isolated_collateral=collateral, insurance_fund=500.0)
    accounts = plan.accounts.to_pylist()
    assert [(a["account_id"], a["instrument"]) for a in accounts] == [(1, "BTCUSDT")]
    assert accounts[0]["covered_by_insurance"] == pytest.approx(500.0)
    assert accounts[0]["deficit"] >= 1_900.0 - 1e-9
    assert accounts[0]["bad_debt"] == pytest.approx(accounts[0]["deficit"] - 500.0)
    assert plan.closes.column("margin_mode").to_pylist() == ["isolated"]
    assert plan.insurance_fund_after == pytest.approx(0.0, abs=1e-9)


def test_scan_lists_isolated_positions_beside_accounts():
    book = _book()
    positions = _positions(_isolated(1, "BTCUSDT", 1.0, 20_000.0), _isolated(1, "BTCUSDT", 0.5, 20_000.0),
                           _isolated(2, "BTCUSDT", -1.0, 20_000.0, "cross"))
    balances = pa.table({"account_id": [1, 2], "asset": ["USDT", "USDT"], "amount": [10_000.0, 1_000.0]})
    collateral = _collateral((1, "BTCUSDT", 100.0))
    scan = me.liquidation_scan(book, positions, balances, _market(19_950.0), isolated_collateral=collateral)
    rows = [(r["account_id"], r["instrument"], r["status"]) for r in scan.to_pylist()]
    # the isolated long (1.5 at 20,000, collateral 100) lost 75 and needs 149.6: liquidatable alone;
    # account 1's cross part (10,000 of cash) stays healthy
    assert rows == [(1, "BTCUSDT", "liquidatable"), (1, None, "healthy"), (2, None, "healthy")]
    assert scan.column_names[:2] == ["account_id", "instrument"]
    # without a margin_mode column: today's output, bit for bit
    plain = positions.drop_columns(["margin_mode"])
    assert me.liquidation_scan(book, plain, balances, _market(19_950.0)).column_names[1] == "equity"


def test_isolated_rows_are_one_position_accounts_holding_their_collateral():
    book = _book(options=True)
    market = _option_market(20_000.0)
    positions = _positions(_isolated(3, "BTC-C", -2.0, None), _isolated(3, "BTCUSDT", 1.0, 19_000.0), _isolated(4, "BTC-P", -1.0, None))
    collateral = _collateral((3, "BTC-C", 9_000.0), (3, "BTCUSDT", 2_000.0), (4, "BTC-P", 4_000.0))
    iso = me.isolated_margin(book, positions, collateral, market)
    assert [(r["account_id"], r["instrument"]) for r in iso.to_pylist()] == [(3, "BTC-C"), (3, "BTCUSDT"), (4, "BTC-P")]
    for k, (account, instrument, amount) in enumerate([(3, "BTC-C", 9_000.0), (3, "BTCUSDT", 2_000.0), (4, "BTC-P", 4_000.0)]):
        one = positions.filter(pa.compute.and_(pa.compute.equal(positions["account_id"], account),
                                               pa.compute.equal(positions["instrument"], instrument))).drop_columns(["margin_mode"])
        m = me.margin(book, one, pa.table({"account_id": [account], "asset": ["USDT"], "amount": [amount]}), market).to_pylist()[0]
        got = iso.to_pylist()[k]
        for c in ("equity", "collateral_initial", "collateral_maintenance", "initial_margin", "maintenance_margin", "status"):
            assert got[c] == m[c], (instrument, c)


@pytest.mark.parametrize("instrument,quantity,amount", [("BTC-C", -2.0, 9_000.0), ("BTC-P", -1.0, 4_000.0), ("BTC-C", -1.0, 100.0)])
@pytest.mark.parametrize("model", ["standard", "portfolio"])
def test_option_liquidation_price_is_a_root_of_the_margin_excess(instrument, quantity, amount, model):
    """At the liquidation price (an index price) the position, stressed there as in the scan,
    has a margin excess of 0 to 1e-9 of its margin."""
    book, market = _book(options=True), _option_market(20_000.0)
    positions = _positions(_isolated(5, instrument, quantity, None))
    collateral = _collateral((5, instrument, amount))
    lp = me.isolated_margin(book, positions, collateral, market, model=model).column("liquidation_price")[0].as_py()
    assert lp is not None and 0 < lp < 100 * 20_000.0
    one = positions.drop_columns(["margin_mode"])
    bal = pa.table({"account_id": [5], "asset": ["USDT"], "amount": [amount]})
    at = me.liquidation_scan(book, one, bal, market, model=model, stress={"BTC": lp / 20_000.0 - 1.0}).to_pylist()[0]
    assert abs(at["margin_excess"]) <= 1e-9 * max(1.0, at["maintenance_margin"]) * 1e3


def test_long_option_never_liquidates():
    book, market = _book(options=True), _option_market(20_000.0)
    m = me.isolated_margin(book, _positions(_isolated(5, "BTC-C", 1.0, None)), None, market)
    assert m.column("liquidation_price")[0].as_py() is None
    assert m.column("status")[0].as_py() == "healthy"


# ----------------------------------------------------------------------------------------------
# Differential: the engine against the reference and against the book without isolation
# ----------------------------------------------------------------------------------------------


@st.composite
def isolated_books(draw: Any) -> dict[str, Any]:
    example = with_topups(draw(books(max_accounts=8)), [])
    positions = example["positions"]
    if pa.types.is_dictionary(positions.schema.field("instrument").type):
        positions = positions.set_column(1, "instrument", positions.column("instrument").cast(positions.schema.field("instrument").type.value_type))
    keys = sorted(set(zip(positions.column("account_id").to_pylist(), positions.column("instrument").to_pylist())))
    isolated = {k for k in keys if draw(st.booleans())}
    modes = ["isolated" if k in isolated else draw(st.sampled_from(["cross", None]))
             for k in zip(positions.column("account_id").to_pylist(), positions.column("instrument").to_pylist())]
    example["positions"] = positions.append_column("margin_mode", pa.array(modes, pa.string()))
    posted = [k for k in sorted(isolated) if draw(st.booleans())]
    amounts = [draw(st.floats(0.0, 1e6)) for _ in posted]
    example["isolated_collateral"] = pa.table({
        "account_id": pa.array([k[0] for k in posted], positions.schema.field("account_id").type),
        "instrument": pa.array([k[1] for k in posted], positions.schema.field("instrument").type),
        "amount": pa.array(amounts, pa.float64()),
    })
    return example


@settings(max_examples=60)
@given(isolated_books(), st.sampled_from(["standard", "portfolio"]))
def test_cross_rows_are_the_book_without_isolated_positions(example, model):
    book, market = engine_objects(example)
    p, b, c = example["positions"], example["balances"], example["isolated_collateral"]
    cross = p.filter(pa.compute.not_equal(pa.compute.fill_null(p["margin_mode"], "cross"), "isolated")).drop_columns(["margin_mode"])
    got = me.margin(book, p, b, market, isolated_collateral=c, model=model)
    want = me.margin(book, cross, b, market, model=model)
    assert got.equals(want)


def _prices_close(a: float | None, b: float | None, spot: float) -> bool:
    if a is None or b is None:
        # a root within a hair of the searched range's ends may fall on either side of them
        other = a if b is None else b
        return other is None or any(math.isclose(other, x, rel_tol=1e-6) for x in (spot * 1e-8, spot * 100.0))
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


@settings(max_examples=40)
@given(isolated_books(), st.sampled_from(["standard", "portfolio"]), st.sampled_from(["mark", "entry"]))
def test_isolated_margin_matches_the_reference(example, model, basis):
    book, market = engine_objects(example)
    rbook, rmarket = reference_objects(example)
    p, c = example["positions"], example["isolated_collateral"]
    kinds = dict(zip(example["instruments"].column("instrument").to_pylist(), example["instruments"].column("kind").to_pylist()))
    net: dict[Any, float] = {}
    for a, i, q, m in zip(*(p.column(n).to_pylist() for n in ("account_id", "instrument", "quantity", "margin_mode"))):
        if m == "isolated" and kinds[i] == "option":
            net[(a, i)] = net.get((a, i), 0.0) + q
    isolated_options = any(q != 0.0 for q in net.values())  # an option netted to 0 carries no margin
    if basis == "entry" and (model == "portfolio" or isolated_options):
        with pytest.raises(me.MarginInputError):
            me.isolated_margin(book, p, c, market, model=model, maintenance_basis=basis)
        return
    got = me.isolated_margin(book, p, c, market, model=model, maintenance_basis=basis)
    want = ref.isolated_margin(rbook, p, c, rmarket, model=model, maintenance_basis=basis)
    assert got.column_names == want.column_names
    assert got.drop_columns(["liquidation_price"]).num_rows == want.num_rows
    assert_tables_close(got.drop_columns(["liquidation_price"]), want.drop_columns(["liquidation_price"]).cast(got.drop_columns(["liquidation_price"]).schema))
    spots = dict(zip(example["index_prices"].column("underlying").to_pylist(), example["index_prices"].column("index_price").to_pylist()))
    underlying = dict(zip(example["instruments"].column("instrument").to_pylist(), example["instruments"].column("underlying").to_pylist()))
    for g, w, ins in zip(got.column("liquidation_price").to_pylist(), want.column("liquidation_price").to_pylist(), got.column("instrument").to_pylist()):
        assert _prices_close(g, w, spots[underlying[ins]]), (ins, g, w)


@settings(max_examples=40)
@given(isolated_books())
def test_isolated_rows_equal_one_position_accounts(example):
    """Each isolated row is me.margin of an account holding only that position and its
    collateral (a balance of the quote asset)."""
    book, market = engine_objects(example)
    p, c = example["positions"], example["isolated_collateral"]
    iso = me.isolated_margin(book, p, c, market)
    from margin_engine.isolated import quote_asset, split

    s = split(book, p, c)
    assert s is not None
    one = me.margin(book, s.positions, s.balances, market)
    assert iso.drop_columns(["instrument", "liquidation_price"]).drop_columns(["account_id"]).equals(one.drop_columns(["account_id"]))
    assert quote_asset(book) == s.balances.column("asset").to_pylist()[0] if s.any_isolated else True


@settings(max_examples=30)
@given(isolated_books())
def test_scan_distance_map_and_plan_split_the_book(example):
    """The scan's cross rows are the scan of the cross book and its isolated rows the scan of the
    one-position accounts; the map is the sum of both maps; the plan's cross accounts are the
    cross book's plan."""
    book, market = engine_objects(example)
    p, b, c = example["positions"], example["balances"], example["isolated_collateral"]
    from margin_engine.isolated import split

    s = split(book, p, c)
    assert s is not None
    scan = me.liquidation_scan(book, p, b, market, isolated_collateral=c)
    is_cross = pa.compute.is_null(scan["instrument"])
    assert scan.filter(is_cross).drop_columns(["instrument"]).equals(me.liquidation_scan(book, s.cross, b, market))
    assert scan.filter(pa.compute.invert(is_cross)).num_rows == s.keys.num_rows
    d = me.liquidation_distance(book, p, b, market, isolated_collateral=c)
    assert d.filter(pa.compute.is_null(d["instrument"])).drop_columns(["instrument"]).equals(me.liquidation_distance(book, s.cross, b, market))
    m = me.liquidation_map(book, p, b, market, isolated_collateral=c)
    want = me.liquidation_map(book, s.cross, b, market).column("accounts").to_pylist()
    if s.any_isolated:
        extra = me.liquidation_map(book, s.positions, s.balances, market).column("accounts").to_pylist()
        want = [x + y for x, y in zip(want, extra)]
    assert m.column("accounts").to_pylist() == want
    plan = me.liquidation_plan(book, p, b, market, isolated_collateral=c, stress={u: -0.3 for u in book.underlyings[:1]})
    cross_plan = me.liquidation_plan(book, s.cross, b, market, stress={u: -0.3 for u in book.underlyings[:1]})
    a = plan.accounts
    assert a.filter(pa.compute.is_null(a["instrument"])).drop_columns(["instrument"]).equals(cross_plan.accounts)


# ----------------------------------------------------------------------------------------------
# Bad input and refusals
# ----------------------------------------------------------------------------------------------


def test_bad_margin_mode_values_are_named():
    book, market = _book(), _market(20_000.0)
    p = _positions(_isolated(1, "BTCUSDT", 1.0, None, "isolate"))
    with pytest.raises(me.MarginInputError, match="margin_mode") as e:
        me.margin(book, p, pa.table({"account_id": [1], "asset": ["USDT"], "amount": [1.0]}), market)
    assert e.value.table == "positions" and e.value.column == "margin_mode" and "row 0" in str(e.value)


def test_disagreeing_rows_of_one_position_are_named():
    book, market = _book(), _market(20_000.0)
    p = _positions(_isolated(1, "BTCUSDT", 1.0, None), _isolated(2, "BTCUSDT", 1.0, None, "cross"), _isolated(1, "BTCUSDT", 1.0, None, "cross"))
    with pytest.raises(me.MarginInputError, match="one margin mode") as e:
        me.isolated_margin(book, p, None, market)
    assert e.value.offenders == ["row 0", "row 2"]


@pytest.mark.parametrize(
    "collateral,problem",
    [
        (_collateral((1, "BTCUSDT", 1.0), (1, "BTCUSDT", 2.0)), "duplicate"),
        (_collateral((2, "BTCUSDT", 1.0)), "no isolated position"),
        (_collateral((1, "BTCUSDT", -1.0)), ">= 0"),
        (_collateral((1, "BTCUSDT", math.nan)), ">= 0"),
        (pa.table({"account_id": [1], "instrument": ["BTCUSDT"]}), "missing"),
    ],
)
def test_bad_isolated_collateral_is_named(collateral, problem):
    book, market = _book(), _market(20_000.0)
    p = _positions(_isolated(1, "BTCUSDT", 1.0, None), _isolated(2, "BTCUSDT", 1.0, None, "cross"))
    with pytest.raises(me.MarginInputError, match=problem) as e:
        me.isolated_margin(book, p, collateral, market)
    assert e.value.table == "isolated_collateral"


def test_isolated_collateral_without_margin_mode_is_an_error():
    book, market = _book(), _market(20_000.0)
    p = pa.table({"account_id": [1], "instrument": ["BTCUSDT"], "quantity": [1.0]})
    with pytest.raises(me.MarginInputError, match="no isolated position"):
        me.margin(book, p, pa.table({"account_id": [1], "asset": ["USDT"], "amount": [1.0]}), market,
                  isolated_collateral=_collateral((1, "BTCUSDT", 5.0)))


def test_entry_basis_refuses_options_and_the_portfolio_model():
    book, market = _book(options=True), _option_market(20_000.0)
    with pytest.raises(me.MarginInputError, match="not options"):
        me.isolated_margin(book, _positions(_isolated(1, "BTC-C", -1.0, None)), None, market, maintenance_basis="entry")
    with pytest.raises(me.MarginInputError, match="standard model only"):
        me.isolated_margin(book, _positions(_isolated(1, "BTCUSDT", 1.0, 1.0)), None, market, model="portfolio", maintenance_basis="entry")
    with pytest.raises(me.MarginInputError, match="maintenance_basis"):
        me.isolated_margin(book, _positions(_isolated(1, "BTCUSDT", 1.0, 1.0)), None, market, maintenance_basis="average")


def test_a_book_without_quote_asset_cannot_hold_isolated_collateral():
    assets = pa.table({"asset": ["BTC"], "price": [20_000.0], "initial_weight": [0.9], "maintenance_weight": [0.95],
                       "initial_liability_weight": [1.1], "maintenance_liability_weight": [1.05]})
    book = me.Book(_book().instruments, assets)
    with pytest.raises(me.MarginInputError, match="quote asset"):
        me.isolated_margin(book, _positions(_isolated(1, "BTCUSDT", 1.0, None)), None, _market(20_000.0))


def test_what_if_and_live_book_refuse_isolated_positions():
    book, market = _book(), _market(20_000.0)
    p = _positions(_isolated(1, "BTCUSDT", 1.0, None))
    with pytest.raises(me.MarginInputError, match="what_if does not model isolated"):
        me.what_if(book, p, {"USDT": 1_000.0}, market, [("BTCUSDT", 1.0)])
    with pytest.raises(me.MarginInputError, match="LiveBook does not model isolated"):
        me.LiveBook(book, market, p, pa.table({"account_id": [1], "asset": ["USDT"], "amount": [1.0]}))
    # all-cross rows are fine
    cross = _positions(_isolated(1, "BTCUSDT", 1.0, None, "cross"))
    assert me.what_if(book, cross, {"USDT": 1_000.0}, market, [("BTCUSDT", 1.0)]).accepted


def test_hedge_is_of_the_cross_account():
    book, market = _book(), _market(20_000.0)
    p = _positions(_isolated(1, "BTCUSDT", 1.0, None), _isolated(2, "BTCUSDT", 2.0, None, "cross"))
    b = pa.table({"account_id": [1, 2], "asset": ["USDT", "USDT"], "amount": [1_000.0, 1_000.0]})
    h = me.optimal_hedge(book, p, b, market, ["BTCUSDT"], model="standard")
    assert h.column("account_id").to_pylist() == [2]


def test_margin_batches_give_the_cross_accounts():
    book, market = _book(), _market(20_000.0)
    p = _positions(_isolated(1, "BTCUSDT", 1.0, None), _isolated(1, "BTCUSDT", 1.0, None), _isolated(2, "BTCUSDT", 2.0, None, "cross"),
                   _isolated(3, "BTCUSDT", -1.0, None))
    b = pa.table({"account_id": [1, 2, 3], "asset": ["USDT"] * 3, "amount": [1_000.0, 1_000.0, 5.0]})
    parts = list(me.margin_batches(book, p, b, market, rows_per_slice=1))
    assert pa.concat_tables(parts).equals(me.margin(book, p, b, market))


def test_cluster_scan_refuses_isolated_positions():
    from margin_engine import _distributed

    book, market = _book(), _market(20_000.0)
    p = _positions(_isolated(1, "BTCUSDT", 1.0, None))
    b = pa.table({"account_id": [1], "asset": ["USDT"], "amount": [1_000.0]})
    with pytest.raises(me.MarginInputError, match="on a cluster"):
        _distributed.call("liquidation_scan", {}, book, market, p, b)
    assert _distributed.call("margin", {}, book, market, p, b).equals(me.margin(book, p, b, market))


def test_cli_scan_reads_isolated_collateral(tmp_path, capsys):
    """``margin-engine scan DIR`` reads an optional isolated_collateral.parquet beside positions
    with a margin_mode column, and lists the isolated positions in the scan."""
    import pyarrow.parquet as pq

    from margin_engine import cli

    assert cli.main(["generate", "--accounts", "50", "--out", str(tmp_path / "b"), "--quiet"]) == 0
    positions = pq.read_table(tmp_path / "b" / "positions.parquet")
    modes = ["isolated"] + ["cross"] * (positions.num_rows - 1)
    first = positions.slice(0, 1)
    same = [i for i, (a, k) in enumerate(zip(positions["account_id"].to_pylist(), positions["instrument"].to_pylist()))
            if (a, k) == (first["account_id"][0].as_py(), first["instrument"][0].as_py())]
    modes = ["isolated" if i in same else "cross" for i in range(positions.num_rows)]
    pq.write_table(positions.append_column("margin_mode", pa.array(modes)), tmp_path / "b" / "positions.parquet")
    pq.write_table(pa.table({"account_id": first["account_id"], "instrument": first["instrument"], "amount": [1e6]}),
                   tmp_path / "b" / "isolated_collateral.parquet")
    assert cli.main(["scan", str(tmp_path / "b"), "--out", str(tmp_path / "scan.parquet"), "--quiet"]) == 0
    scan = pq.read_table(tmp_path / "scan.parquet")
    isolated = scan.filter(pa.compute.is_valid(scan["instrument"])).to_pylist()
    assert [(r["account_id"], r["instrument"]) for r in isolated] == [(first["account_id"][0].as_py(), first["instrument"][0].as_py())]
    assert isolated[0]["equity"] >= 1e6 - 1e5


# maintenance_basis as a methodology option: the book's methodology decides what isolated_margin
# charges when the call does not say, and the functions that margin isolated rows on the mark
# refuse such a book rather than answer on the mark.
def _entry_book() -> me.Book:
    plain = _book(imr=0.02, mmr=0.005)
    return me.Book(plain.instruments, plain.assets, None, None, methodology=me.Methodology.preset("v1", name="bybit-like", maintenance_basis="entry"))


def test_entry_basis_from_the_methodology_is_the_keyword_s():
    positions = _positions(_isolated(1, "BTCUSDT", 1.0, 20_000.0), _isolated(2, "BTCUSDT", -2.0, 21_000.0))
    collateral = _collateral((1, "BTCUSDT", 400.0), (2, "BTCUSDT", 900.0))
    market = _market(20_500.0)
    by_methodology = me.isolated_margin(_entry_book(), positions, collateral, market)
    by_keyword = me.isolated_margin(_book(imr=0.02, mmr=0.005), positions, collateral, market, maintenance_basis="entry")
    on_the_mark = me.isolated_margin(_entry_book(), positions, collateral, market, maintenance_basis="mark")
    assert by_methodology.equals(by_keyword)
    assert by_methodology.column("maintenance_margin").to_pylist() == pytest.approx([100.0, 210.0], rel=1e-12)
    assert on_the_mark.column("maintenance_margin").to_pylist() == pytest.approx([102.5, 205.0], rel=1e-12)
    # Bybit example 1 through the methodology: LP 19,700
    one = me.isolated_margin(_entry_book(), _positions(_isolated(1, "BTCUSDT", 1.0, 20_000.0)),
                             _collateral((1, "BTCUSDT", 400.0)), _market(20_000.0))
    assert one.column("liquidation_price").to_pylist()[0] == pytest.approx(19_700.0, rel=1e-12)


def test_entry_basis_methodology_round_trips_and_is_validated(tmp_path):
    m = me.Methodology.preset("v1", name="bybit-like", maintenance_basis="entry")
    assert m != me.Methodology.preset("v1", name="bybit-like")  # the cache key sees the basis
    assert "entry notional" in m.describe()
    for suffix in (".toml", ".json"):
        path = tmp_path / f"m{suffix}"
        m.to_file(path)
        assert me.Methodology.from_file(path) == m
    assert "maintenance_basis" not in me.Methodology.preset("v1").to_dict()  # mark: files unchanged
    with pytest.raises(me.MarginInputError, match="maintenance_basis"):
        me.Methodology.preset("v1", maintenance_basis="average")
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\npreset = "v1"\nmaintenance_basis = "entyr"\n')
    with pytest.raises(me.MarginInputError, match="maintenance_basis"):
        me.Methodology.from_file(bad)


def test_functions_margining_isolated_rows_on_the_mark_refuse_an_entry_basis_book():
    positions = _positions(_isolated(1, "BTCUSDT", 1.0, 20_000.0), {**_isolated(1, "BTCUSDT", 0.0, 20_000.0), "account_id": 3, "margin_mode": "cross"})
    collateral = _collateral((1, "BTCUSDT", 400.0))
    balances = pa.table({"account_id": pa.array([3], pa.uint64()), "asset": ["USDT"], "amount": [100.0]})
    book, market = _entry_book(), _market(20_000.0)
    for call in (me.liquidation_scan, me.liquidation_distance, me.liquidation_prices, me.liquidation_map, me.liquidation_plan):
        with pytest.raises(me.MarginInputError, match="maintenance_basis"):
            call(book, positions, balances, market, isolated_collateral=collateral)
    # cross accounts alone are margined on the mark, as before
    assert me.margin(book, positions, balances, market, isolated_collateral=collateral).num_rows == 1
