"""The live book against the stateless engine (docs/live.md).

After every batch of a random event sequence, ``LiveBook.margin()`` must equal ``me.margin`` on
the tables rebuilt from the same events (``margin_engine.reference.live``), bit for bit, under
both models; ``Changes`` must list exactly the accounts whose status changed; ``check_order``
must equal ``me.what_if`` on the account's rebuilt rows; a rejected batch must change nothing;
and a journaled book reopened must equal the book it was.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import margin_engine as me
from margin_engine.reference.live import ReferenceLiveBook
from strategies import books

MODELS = ("standard", "portfolio")


def assert_same_bits(got: pa.Table, want: pa.Table) -> None:
    """Same columns and rows; floats equal bit for bit (nulls in the same places)."""
    assert got.column_names == want.column_names
    assert got.num_rows == want.num_rows, (got.num_rows, want.num_rows)
    for name in got.column_names:
        g, w = got.column(name).combine_chunks(), want.column(name).combine_chunks()
        if pa.types.is_floating(g.type):
            assert g.is_null().to_pylist() == w.is_null().to_pylist(), name
            gv = np.asarray(g.fill_null(0.0)).view(np.uint64)
            wv = np.asarray(w.fill_null(0.0)).view(np.uint64)
            assert (gv == wv).all(), (name, g, w)
        else:
            assert g.to_pylist() == w.to_pylist(), name


def stateless(book: me.Book, ref: ReferenceLiveBook, model: str) -> pa.Table:
    index, marks, ns = ref.market_tables()
    market = me.Market(index, marks, ns, expiry_feeds=ref.expiry_feeds)
    # resting orders enter initial margin (docs/methodology.md, "Open orders")
    return me.margin(book, ref.positions_table(), ref.balances_table(), market, orders=ref.orders_table(), model=model)


def statuses(t: pa.Table) -> dict[int, str]:
    return dict(zip(t.column("account_id").to_pylist(), t.column("status").to_pylist()))


def check_changes(changes: me.live.Changes, before: pa.Table, after: pa.Table) -> None:
    """The changes are exactly the accounts whose status differs (new accounts: before null),
    each with its new row."""
    b, a = statuses(before), statuses(after)
    want = sorted((acc, b.get(acc), s) for acc, s in a.items() if b.get(acc) != s)
    t = changes.table
    got = list(zip(t.column("account_id").to_pylist(), t.column("status_before").to_pylist(), t.column("status_after").to_pylist()))
    assert got == want
    rows = after.filter(pc.is_in(after.column("account_id"), value_set=t.column("account_id")))
    assert_same_bits(t.drop_columns(["status_before", "status_after"]), rows.drop_columns(["status"]))


def same_what_if(got: me.WhatIf, want: me.WhatIf) -> None:
    for side in ("before", "after"):
        g, w = getattr(got, side), getattr(want, side)
        for f in ("equity", "collateral_initial", "collateral_maintenance", "initial_margin", "maintenance_margin",
                  "free_collateral", "margin_excess"):
            assert math.copysign(1, getattr(g, f)) == math.copysign(1, getattr(w, f)) and getattr(g, f) == getattr(w, f), (side, f)
        assert g.health == w.health and g.status == w.status
    for f in ("trade_pnl", "premium", "accepted", "initial_margin_change", "maintenance_margin_change"):
        assert getattr(got, f) == getattr(want, f), f


class Scenario:
    """One random book, the live books of both models, and the reference."""

    def __init__(self, example: dict, allow_negative: bool, journal: str | None):
        self.example = example
        self.book = me.Book(example["instruments"], example["assets"], example["risk_params"], example["margin_tiers"])
        market = me.Market(example["index_prices"], example["marks"], example["valuation_time_ns"])
        self.ref = ReferenceLiveBook(self.book, market, example["positions"], example["balances"],
                                     allow_negative_balances=allow_negative)
        self.live = {
            m: me.LiveBook(self.book, market, example["positions"], example["balances"], model=m,
                           allow_negative_balances=allow_negative, journal=journal if m == "portfolio" else None)
            for m in MODELS
        }
        ins = example["instruments"].to_pylist()
        self.instruments = [r["instrument"] for r in ins]
        self.kind = {r["instrument"]: r["kind"] for r in ins}
        self.assets = example["assets"].column("asset").to_pylist()
        self.underlyings = sorted(set(example["index_prices"].column("underlying").to_pylist()))
        self.next_order = 1

    def accounts(self) -> list[int]:
        return sorted(self.ref.accounts())


def fills_table(rows: list[dict]) -> pa.Table:
    return pa.table({
        "account_id": pa.array([r["account_id"] for r in rows], pa.uint64()),
        "instrument": [r["instrument"] for r in rows],
        "quantity": pa.array([r["quantity"] for r in rows], pa.float64()),
        "price": pa.array([r["price"] for r in rows], pa.float64()),
        "fee": pa.array([r.get("fee", 0.0) for r in rows], pa.float64()),
    })


QUANTITIES = st.sampled_from([1.0, -1.0, 0.5, -2.5, 3.0, -0.1, 10.0, 1e-3])


def draw_account(data, s: Scenario, new: bool = True) -> int:
    accounts = s.accounts()
    choices = st.sampled_from(accounts) if accounts else st.nothing()
    if new or not accounts:
        choices = st.one_of(choices, st.integers(0, 2**64 - 1)) if accounts else st.integers(0, 2**64 - 1)
    return data.draw(choices)


def draw_fill(data, s: Scenario) -> dict:
    account = draw_account(data, s)
    instrument = data.draw(st.sampled_from(s.instruments))
    held = sum(p[2] for p in s.ref.positions if p[0] == account and p[1] == instrument)
    quantity = data.draw(st.one_of(QUANTITIES, st.just(-held) if held else QUANTITIES))
    mark = s.ref.marks[instrument]
    price = data.draw(st.one_of(st.just(mark), st.floats(0.5, 1.5).map(lambda f: mark * f), st.just(0.0)))
    fee = data.draw(st.sampled_from([0.0, 0.0, 1.25, -0.5]))
    return {"account_id": account, "instrument": instrument, "quantity": quantity, "price": price, "fee": fee}



def draw_batch(data, s: Scenario):
    """(kind, reference action, live action): the actions apply the same batch."""
    kind = data.draw(st.sampled_from(["fills", "fills", "transfers", "place", "cancel", "index", "marks", "both", "time"]))
    if kind == "fills":
        rows = [draw_fill(data, s) for _ in range(data.draw(st.integers(1, 3)))]
        return (lambda: s.ref.apply_fills(rows)), (lambda live: live.apply_fills(fills_table(rows)))
    if kind == "transfers":
        rows = []
        for _ in range(data.draw(st.integers(1, 3))):
            amount = data.draw(st.sampled_from([100.0, -50.0, 1e4, -1e6, 0.25, -0.25]))
            rows.append({"account_id": draw_account(data, s), "asset": data.draw(st.sampled_from(s.assets)), "amount": amount})
        table = pa.table({"account_id": pa.array([r["account_id"] for r in rows], pa.uint64()),
                          "asset": [r["asset"] for r in rows], "amount": pa.array([r["amount"] for r in rows], pa.float64())})
        return (lambda: s.ref.apply_transfers(rows)), (lambda live: live.apply_transfers(table))
    if kind == "place":
        if not s.accounts():
            return None
        rows = []
        for _ in range(data.draw(st.integers(1, 2))):
            rows.append({"order_id": s.next_order, "account_id": draw_account(data, s, new=False),
                         "instrument": data.draw(st.sampled_from(s.instruments)), "quantity": data.draw(QUANTITIES),
                         "price": data.draw(st.sampled_from([0.0, 1.0, 123.5]))})
            s.next_order += 1
        table = pa.table({"order_id": pa.array([r["order_id"] for r in rows], pa.uint64()),
                          "account_id": pa.array([r["account_id"] for r in rows], pa.uint64()),
                          "instrument": [r["instrument"] for r in rows],
                          "quantity": [r["quantity"] for r in rows], "price": [r["price"] for r in rows]})
        return (lambda: s.ref.place_orders(rows)), (lambda live: live.place_orders(table))
    if kind == "cancel":
        if not s.ref.orders:
            return None
        ids = data.draw(st.lists(st.sampled_from(sorted(s.ref.orders)), min_size=1, max_size=2, unique=True))
        return (lambda: s.ref.cancel_orders(ids)), (lambda live: live.cancel_orders(ids))
    index, marks, ns = None, None, None
    if kind in ("index", "both"):
        moved = data.draw(st.lists(st.sampled_from(s.underlyings), min_size=1, unique=True))
        index = {u: s.ref.index[u] * data.draw(st.floats(0.5, 1.5)) for u in moved}
        index["NOT-IN-THE-BOOK"] = 1.0  # an exchange-wide feed: ignored
    if kind in ("marks", "both"):
        marked = data.draw(st.lists(st.sampled_from(s.instruments), min_size=1, unique=True))
        marks = {}
        for i in marked:
            vol = data.draw(st.one_of(st.none(), st.floats(0.05, 2.0))) if s.kind[i] == "option" else None
            marks[i] = (s.ref.marks[i] * data.draw(st.floats(0.0, 2.0)), vol)
    if kind == "time":
        ns = s.ref.valuation_ns + data.draw(st.integers(-86_400, 40 * 86_400)) * 1_000_000_000
    index_t = None if index is None else pa.table({"underlying": list(index), "index_price": pa.array(list(index.values()), pa.float64())})
    marks_t = None if marks is None else pa.table({
        "instrument": list(marks), "mark_price": pa.array([m[0] for m in marks.values()], pa.float64()),
        "implied_vol": pa.array([m[1] for m in marks.values()], pa.float64())})
    return ((lambda: s.ref.update_market(index, marks, ns)),
            (lambda live: live.update_market(index_prices=index_t, marks=marks_t, valuation_time=ns)))


def check_state(s: Scenario, before: dict[str, pa.Table] | None, changes: dict | None) -> dict[str, pa.Table]:
    now = {}
    for m, live in s.live.items():
        want = stateless(s.book, s.ref, m)
        got = live.margin()
        assert_same_bits(got, want)
        if changes is not None:
            check_changes(changes[m], before[m], want)
        now[m] = want
    return now


def check_an_order(data, s: Scenario) -> None:
    account = draw_account(data, s)
    instrument = data.draw(st.sampled_from(s.instruments))
    quantity = data.draw(QUANTITIES)
    price = s.ref.marks[instrument] * data.draw(st.sampled_from([1.0, 0.9, 1.2, 0.0]))
    positions, balances = s.ref.account_rows(account)
    index, marks, ns = s.ref.market_tables()
    market = me.Market(index, marks, ns, expiry_feeds=s.ref.expiry_feeds)
    for m, live in s.live.items():
        try:
            resting = [(o[1], o[2], o[3]) for o in s.ref.orders.values() if o[0] == account]
            want = me.what_if(s.book, positions if positions.num_rows else None, balances, market,
                              [(instrument, quantity, price)], orders=resting or None, model=m)
        except me.MarginInputError:
            with pytest.raises(me.MarginInputError):
                live.check_order(account, instrument, quantity, price)
            continue
        same_what_if(live.check_order(account, instrument, quantity, price), want)


@settings(max_examples=60, deadline=None)
@given(example=books(max_accounts=6), data=st.data(), allow_negative=st.booleans(), journaled=st.booleans())
def test_after_every_batch_margin_is_the_stateless_margin(example, data, allow_negative, journaled):
    folder = tempfile.mkdtemp(prefix="live-") if journaled else None
    try:
        s = Scenario(example, allow_negative, None if folder is None else os.path.join(folder, "live"))
        tables = check_state(s, None, None)
        for _ in range(data.draw(st.integers(1, 10))):
            drawn = draw_batch(data, s)
            if drawn is None:
                continue
            ref_action, live_action = drawn
            try:
                ref_action()
            except ValueError:
                seqs = {m: live.seq for m, live in s.live.items()}
                for m, live in s.live.items():
                    with pytest.raises(me.MarginInputError):
                        live_action(live)
                    assert live.seq == seqs[m]
                check_state(s, None, None)  # nothing of the rejected batch applied
                continue
            changes = {m: live_action(live) for m, live in s.live.items()}
            tables = check_state(s, tables, changes)
            if data.draw(st.booleans()):
                check_an_order(data, s)
            if folder is not None and data.draw(st.integers(0, 4)) == 0:
                s.live["portfolio"].snapshot()
        want_orders = sorted(s.ref.orders.items())
        got = s.live["standard"].orders()
        assert list(zip(got.column("order_id").to_pylist(), got.column("account_id").to_pylist())) == [
            (i, o[0]) for i, o in want_orders]
        if folder is not None:
            live = s.live["portfolio"]
            reopened = me.LiveBook.open(os.path.join(folder, "live"))
            assert reopened.seq == live.seq and reopened.model == "portfolio"
            assert_same_bits(reopened.margin(), live.margin())
            for t in ("positions", "balances", "orders"):
                assert_same_bits(getattr(reopened, t)(), getattr(live, t)())
    finally:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


# --- hand cases ---------------------------------------------------------------------------------

@pytest.fixture()
def small():
    instruments = pa.table({
        "instrument": ["BTC-PERP", "BTC-C", "ETH-PERP"], "kind": ["perpetual", "option", "perpetual"],
        "underlying": ["BTC", "BTC", "ETH"], "multiplier": [1.0, 1.0, 1.0],
        "expiry": pa.array([None, 1_800_000_000_000_000_000, None], pa.timestamp("ns", "UTC")),
        "strike": [None, 60_000.0, None], "option_type": [None, "call", None],
        "initial_margin_rate": [0.02, 0.15, 0.05], "maintenance_margin_rate": [0.01, 0.075, 0.025],
        "initial_margin_floor": [None, 0.1, None]})
    assets = pa.table({"asset": ["USD", "BTC"], "price": [1.0, 50_000.0], "initial_weight": [1.0, 0.9],
                       "maintenance_weight": [1.0, 0.95], "initial_liability_weight": [1.0, 1.1],
                       "maintenance_liability_weight": [1.0, 1.05], "underlying": [None, "BTC"]})
    book = me.Book(instruments, assets)
    market = me.Market(pa.table({"underlying": ["BTC", "ETH"], "index_price": [50_000.0, 3_000.0]}),
                       pa.table({"instrument": ["BTC-PERP", "BTC-C", "ETH-PERP"], "mark_price": [50_000.0, 1_000.0, 3_000.0],
                                 "implied_vol": [None, 0.6, None]}), 1_700_000_000_000_000_000)
    positions = pa.table({"account_id": pa.array([1, 2, 3], pa.uint64()), "instrument": ["BTC-PERP", "ETH-PERP", "BTC-C"],
                          "quantity": [1.0, 2.0, -1.0]})
    balances = pa.table({"account_id": pa.array([1, 2, 3, 4], pa.uint64()), "asset": ["USD", "USD", "USD", "BTC"],
                         "amount": [2_000.0, 1_000.0, 10_000.0, 1.0]})
    return book, market, positions, balances


def test_market_moves_remargin_only_the_exposed_accounts(small):
    book, market, positions, balances = small
    live = me.LiveBook(book, market, positions, balances)
    eth = live.update_market(index_prices=pa.table({"underlying": ["ETH"], "index_price": [2_900.0]}))
    assert eth.remargined == 1  # account 2 only
    btc = live.update_market(index_prices=pa.table({"underlying": ["BTC"], "index_price": [49_000.0]}))
    assert btc.remargined == 3  # 1 and 3 hold BTC instruments, 4 holds BTC-linked collateral
    mark = live.update_market(marks=pa.table({"instrument": ["BTC-C"], "mark_price": [900.0]}))
    assert mark.remargined == 1
    fill = live.apply_fills(pa.table({"account_id": [9], "instrument": ["ETH-PERP"], "quantity": [1.0], "price": [3_000.0]}))
    assert fill.remargined == 1 and fill.changed == 1
    assert fill.table.column("status_before").to_pylist() == [None]
    again = live.update_market(index_prices=pa.table({"underlying": ["ETH"], "index_price": [2_800.0]}))
    assert again.remargined == 2  # the new account is in the index now
    assert live.seq == 5


@pytest.mark.parametrize("model", ["standard", "portfolio"])
def test_a_new_valuation_time_remargins_accounts_with_only_resting_orders(small, model):
    """Regression (found by the sequence test with option orders): a new valuation time re-margined
    only accounts with positions, so an account resting an option order and holding nothing kept
    its old initial margin while the option's time value (and its expiry) moved."""
    book, market, positions, balances = small
    live = me.LiveBook(book, market, positions, balances, model=model)
    orders = pa.table({"order_id": pa.array([1, 2], pa.uint64()), "account_id": pa.array([7, 2], pa.uint64()),
                       "instrument": ["BTC-C", "BTC-C"], "quantity": [-2.0, 1.0], "price": [1_000.0, 1_100.0]})
    live.apply_transfers(pa.table({"account_id": pa.array([7], pa.uint64()), "asset": ["USD"], "amount": [5_000.0]}))
    live.place_orders(orders)
    resting = orders.drop_columns(["order_id"])
    seen = set()
    for ns in (1_750_000_000_000_000_000, 1_799_000_000_000_000_000, 1_900_000_000_000_000_000):  # the last: expired
        moved = live.update_market(valuation_time=ns)
        assert moved.remargined == 4  # accounts 1, 2, 3 hold positions; 7 rests an order only
        want = me.margin(book, live.positions(), live.balances(), live.market(), orders=resting, model=model)
        assert_same_bits(live.margin(), want)
        seen.add(want.filter(pc.equal(want.column("account_id"), 7)).column("initial_margin")[0].as_py())
    if model == "portfolio":  # revalued with time to expiry: the order-only account's margin moves
        assert len(seen) > 1


def test_bad_batches_are_rejected_whole_and_name_the_rows(small):
    book, market, positions, balances = small
    live = me.LiveBook(book, market, positions, balances, allow_negative_balances=False)
    before = live.margin()

    def rejected(call, column, text):
        with pytest.raises(me.MarginInputError) as info:
            call()
        assert info.value.column == column, info.value
        assert text in str(info.value), info.value
        assert live.seq == 0
        assert live.margin().equals(before)

    good = {"account_id": 1, "instrument": "BTC-PERP", "quantity": 1.0, "price": 50_000.0}
    for column, bad, text in [("instrument", "NOPE", "NOPE"), ("price", float("nan"), "row 1"),
                              ("price", -1.0, "row 1"), ("price", float("inf"), "row 1"), ("quantity", float("nan"), "row 1")]:
        rows = [good, {**good, column: bad}]
        rejected(lambda: live.apply_fills(pa.table({k: [r[k] for r in rows] for k in good})), column, text)
    rejected(lambda: live.apply_transfers(pa.table({"account_id": [1, 77], "asset": ["USD", "USD"], "amount": [5.0, -1.0]})),
             "account_id", "row 1: account 77")
    rejected(lambda: live.apply_transfers(pa.table({"account_id": [1, 1], "asset": ["USD", "USD"], "amount": [-1_000.0, -1_500.0]})),
             "amount", "row 1")
    rejected(lambda: live.apply_transfers(pa.table({"account_id": [1], "asset": ["EUR"], "amount": [1.0]})), "asset", "EUR")
    rejected(lambda: live.update_market(index_prices=pa.table({"underlying": ["BTC"], "index_price": [float("nan")]})),
             "index_price", "BTC")
    rejected(lambda: live.cancel_orders([5]), "order_id", "row 0")
    rejected(lambda: live.place_orders(pa.table({"order_id": [1], "account_id": [55], "instrument": ["BTC-PERP"],
                                                 "quantity": [1.0], "price": [1.0]})), "account_id", "account 55")
    # a deposit to an unknown account opens it; a withdrawal within the balance passes
    live.apply_transfers(pa.table({"account_id": [77, 1], "asset": ["USD", "USD"], "amount": [5.0, -2_000.0]}))
    assert live.seq == 1 and live.account(77).equity == 5.0 and live.account(1).equity == 0.0


def test_batch_boundaries_do_not_matter(small):
    book, market, positions, balances = small
    fills = [{"account_id": a, "instrument": i, "quantity": q, "price": p, "fee": f}
             for a, i, q, p, f in [(1, "BTC-PERP", -1.0, 51_000.0, 1.0), (2, "BTC-C", 2.0, 1_100.0, 0.0),
                                   (1, "BTC-PERP", 0.5, 49_500.0, 0.0), (5, "ETH-PERP", -3.0, 3_100.0, 2.5)]]
    for model in MODELS:
        whole = me.LiveBook(book, market, positions, balances, model=model)
        whole.apply_fills(fills_table(fills))
        one_by_one = me.LiveBook(book, market, positions, balances, model=model)
        for f in fills:
            one_by_one.apply_fills(fills_table([f]))
        assert_same_bits(whole.margin(), one_by_one.margin())
        assert one_by_one.seq == 4 and whole.seq == 1


def test_journal_survives_reopen_and_a_torn_tail(small, tmp_path):
    book, market, positions, balances = small
    folder = tmp_path / "live"
    live = me.LiveBook(book, market, positions, balances, model="portfolio", journal=folder)
    with pytest.raises(me.MarginInputError):
        me.LiveBook(book, market, positions, balances, journal=folder)  # already a live book
    live.apply_fills(pa.table({"account_id": [1], "instrument": ["BTC-C"], "quantity": [1.0], "price": [1_000.0]}))
    live.snapshot()
    states = [live.margin()]
    for k in range(3):
        live.update_market(index_prices=pa.table({"underlying": ["BTC"], "index_price": [50_000.0 - 500 * k]}))
        states.append(live.margin())
    journal = next(p for p in folder.iterdir() if p.name.startswith("journal-"))
    whole = journal.read_bytes()
    reopened = me.LiveBook.open(folder)
    assert reopened.seq == 4 and reopened.margin().equals(states[-1])
    del reopened
    # cut inside the last record: the reopened book is the one before it, and appends go on
    journal.write_bytes(whole[:-7])
    reopened = me.LiveBook.open(folder)
    assert reopened.seq == 3 and reopened.margin().equals(states[-2])
    assert journal.stat().st_size < len(whole) - 7  # the torn record was cut off
    reopened.update_market(index_prices=pa.table({"underlying": ["BTC"], "index_price": [49_000.0]}))
    del reopened
    assert me.LiveBook.open(folder).margin().equals(states[-1])
    # a flipped byte in an earlier record is corruption, not a torn tail
    data = bytearray(journal.read_bytes())
    data[20] ^= 0xFF
    journal.write_bytes(bytes(data))
    with pytest.raises(OSError, match="corrupt"):
        me.LiveBook.open(folder)


def test_a_methodology_book_with_expiry_feeds_and_a_peg(tmp_path):
    """A Derive case (scenario methodology in the book, expiry feeds, confidences, the USDC peg as
    an index row): the live book follows me.margin through index, peg, mark and cash moves, and
    a reopened journal restores the methodology with the rest."""
    from margin_engine.presets import derive

    book, market, positions, balances = derive.case_tables(derive.example_case())
    ref = ReferenceLiveBook(book, market, positions, balances)
    live = me.LiveBook(book, market, positions, balances, model="portfolio", journal=tmp_path / "live")
    assert_same_bits(live.margin(), me.margin(book, positions, balances, market, model="portfolio"))
    u = book.underlyings[0]
    held = positions.column("instrument")[0].as_py()
    account = positions.column("account_id")[0].as_py()
    moves = [
        ({u: ref.index[u] * 0.97}, None),
        ({"USDC": 0.995}, None),  # the peg: not an underlying of the book, read by the methodology
        (None, {held: (ref.marks[held] * 1.1, None)}),
    ]
    for index, marks in moves:
        ref.update_market(index, marks)
        changes = live.update_market(
            index_prices=None if index is None else pa.table({"underlying": list(index), "index_price": list(index.values())}),
            marks=None if marks is None else pa.table({"instrument": list(marks), "mark_price": [m[0] for m in marks.values()]}))
        assert changes.remargined >= 1
        assert_same_bits(live.margin(), stateless(book, ref, "portfolio"))
    ref.apply_transfers([{"account_id": account, "asset": "USDC", "amount": -1_000.0}])
    live.apply_transfers(pa.table({"account_id": [account], "asset": ["USDC"], "amount": [-1_000.0]}))
    assert_same_bits(live.margin(), stateless(book, ref, "portfolio"))
    reopened = me.LiveBook.open(tmp_path / "live")
    assert reopened.book.methodology is not None
    assert_same_bits(reopened.margin(), live.margin())


def test_live_replay_cli_prints_the_status_changes(small, tmp_path, capsys):
    from margin_engine import cli

    book, market, positions, balances = small
    folder = tmp_path / "live"
    me.LiveBook(book, market, positions, balances, journal=folder)
    events = pa.table({
        "event": ["mark", "index", "fill", "fill", "transfer", "order", "cancel"],
        "account_id": pa.array([None, None, 1, 9, 1, 1, None], pa.uint64()),
        "instrument": ["BTC-PERP", None, "BTC-PERP", "ETH-PERP", None, "ETH-PERP", None],
        "quantity": [None, None, 1.0, -1.0, None, 2.0, None],
        "price": [None, None, 47_000.0, 3_000.0, None, 2_900.0, None],
        "mark_price": [47_000.0, None, None, None, None, None, None],
        "underlying": [None, "BTC", None, None, None, None, None],
        "index_price": [None, 47_000.0, None, None, None, None, None],
        "asset": [None, None, None, None, "USD", None, None],
        "amount": [None, None, None, None, 5_000.0, None, None],
        "order_id": pa.array([None, None, None, None, None, 7, 7], pa.uint64()),
    })
    import pyarrow.parquet as pq

    pq.write_table(events, tmp_path / "events.parquet")
    assert cli.main(["--quiet", "live-replay", str(folder), str(tmp_path / "events.parquet"), "--snapshot"]) == 0
    out = capsys.readouterr().out.splitlines()
    # the same batches by hand: mark + index together, the two fills, the transfer, the order, the cancel
    want = me.LiveBook(book, market, positions, balances)
    moves = [want.update_market(index_prices=pa.table({"underlying": ["BTC"], "index_price": [47_000.0]}),
                                marks=pa.table({"instrument": ["BTC-PERP"], "mark_price": [47_000.0]})),
             want.apply_fills(fills_table([{"account_id": 1, "instrument": "BTC-PERP", "quantity": 1.0, "price": 47_000.0},
                                           {"account_id": 9, "instrument": "ETH-PERP", "quantity": -1.0, "price": 3_000.0}])),
             want.apply_transfers(pa.table({"account_id": pa.array([1], pa.uint64()), "asset": ["USD"], "amount": [5_000.0]}))]
    lines = [f"batch {c.seq}: account {a} {b or 'new'} -> {s}" for c in moves
             for a, b, s in zip(c.table.column("account_id").to_pylist(), c.table.column("status_before").to_pylist(),
                                c.table.column("status_after").to_pylist())]
    assert [line.split(" (")[0] for line in out[:-1]] == lines
    assert out[-1].startswith("7 events in 5 batches")
    reopened = me.LiveBook.open(folder)
    assert reopened.seq == 5
    assert_same_bits(reopened.margin(), want.margin())


def test_a_book_that_cannot_be_made_leaves_its_journal_folder_free(small, tmp_path):
    book, market, positions, balances = small
    bad = pa.table({"account_id": [1, 1], "asset": ["USD", "USD"], "amount": [1.0, 2.0]})  # a repeated (account, asset)
    with pytest.raises(me.MarginInputError, match="duplicate"):
        me.LiveBook(book, market, positions, bad, journal=tmp_path / "live")
    live = me.LiveBook(book, market, positions, balances, journal=tmp_path / "live")
    assert me.LiveBook.open(tmp_path / "live").margin().equals(live.margin())
