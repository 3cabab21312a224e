"""Robustness: determinism, thread safety, the GIL, nothing lost, layout independence.

- Determinism: every result table (margin under both models, Greeks, the liquidation scan with and
  without stress or distance, distances, the map, and every table of the liquidation plan) is
  bit-identical for threads = 1, 2, 3, 4 and None, and across repeated runs, on random books
  (hypothesis `books()`, also "amplified" to hundreds of accounts so that the work is really split
  over threads) and on a generated 20,000-account book, sorted and shuffled.
- Thread safety: eight Python threads calling the engine at once on one Book / Market with
  different positions get exactly the single-threaded results; a long call releases the GIL (a
  pure-Python loop in another thread keeps running during it).
- Nothing lost: every account of positions or balances appears exactly once in margin and scan
  results, and liquidation_distance has exactly one row per account × underlying it is exposed to.
- Layout: record-batch chunking (including empty chunks) never changes a bit; shuffling rows
  changes nothing as long as the rows of each (account, instrument) keep their relative order.
  A full shuffle reorders the fills of a position, which the engine sums in input order by
  design (docs/methodology-notes.md), so results then agree to rounding (~1e-15 relative) and
  statuses exactly, but not bit for bit (`test_generated_full_shuffle_agrees_to_rounding`).

"Bit-identical" is checked with `pyarrow.Table.equals` and, for float columns, by comparing the
IEEE-754 bit patterns (so that 0.0 and -0.0 count as different).
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from conftest import engine_objects
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import books

import margin_engine as me
from margin_engine import synthetic

MODELS = ("standard", "portfolio")
THREADS = (1, 2, 3, 4)

# --------------------------------------------------------------------------------------------
# Comparing tables bit for bit
# --------------------------------------------------------------------------------------------


def _float_bits(column: pa.ChunkedArray) -> np.ndarray:
    """The IEEE-754 bit patterns of a float column (nulls as the bits of 0.0), plus validity."""
    values = pc.fill_null(column, 0.0).to_numpy().astype(np.float64)
    valid = column.is_valid().to_numpy(zero_copy_only=False)
    return np.concatenate([values.view(np.uint64), valid.astype(np.uint64)])


def differences(got: pa.Table, want: pa.Table) -> list[str]:
    """Why `got` and `want` are not bit-identical (empty if they are)."""
    if got.schema != want.schema:
        return [f"schema {got.schema} != {want.schema}"]
    if got.num_rows != want.num_rows:
        return [f"rows {got.num_rows} != {want.num_rows}"]
    out = []
    for name in got.column_names:
        g, w = got.column(name), want.column(name)
        if pa.types.is_floating(g.type):
            bits_g, bits_w = _float_bits(g), _float_bits(w)
            if not np.array_equal(bits_g, bits_w):
                n = int(np.count_nonzero(bits_g[: g.length()] != bits_w[: w.length()]))
                out.append(f"column {name}: {n} rows differ in their bits")
        elif not g.equals(w):
            out.append(f"column {name} differs")
    if not out and not got.equals(want):
        out.append("Table.equals is False")
    return out


def assert_identical(got: pa.Table, want: pa.Table, label: str) -> None:
    why = differences(got, want)
    assert not why, f"{label}: {'; '.join(why)}"


def assert_all_identical(got: dict[str, pa.Table], want: dict[str, pa.Table], label: str) -> None:
    assert got.keys() == want.keys()
    bad = {name: differences(got[name], want[name]) for name in want}
    bad = {k: v for k, v in bad.items() if v}
    assert not bad, f"{label}: {bad}"


# --------------------------------------------------------------------------------------------
# Every result of a book
# --------------------------------------------------------------------------------------------


def all_results(
    book: me.Book,
    market: me.Market,
    positions: Any,
    balances: Any,
    threads: int | None,
    walk_models: tuple[str, ...] = MODELS,
) -> dict[str, pa.Table]:
    """Every public result for these inputs, by name. Distance walks (scan with distance,
    liquidation_distance, liquidation_map) run under `walk_models` only."""
    out: dict[str, pa.Table] = {"greeks": me.greeks(book, positions, market, threads=threads)}
    stress = {u: (-0.2 if i % 2 == 0 else 0.15) for i, u in enumerate(book.underlyings)}
    for model in MODELS:
        out[f"margin/{model}"] = me.margin(book, positions, balances, market, model=model, threads=threads)
        out[f"scan/{model}"] = me.liquidation_scan(book, positions, balances, market, model=model, threads=threads)
        out[f"scan-stress/{model}"] = me.liquidation_scan(
            book, positions, balances, market, model=model, stress=stress, threads=threads
        )
        for name, kwargs in (("plan", {}), ("plan-stress", {"stress": stress, "buffer": 0.1, "insurance_fund": 1e4})):
            plan = me.liquidation_plan(book, positions, balances, market, model=model, threads=threads, **kwargs)
            for part in ("closes", "accounts", "underlyings", "adl"):
                out[f"{name}.{part}/{model}"] = getattr(plan, part)
            out[f"{name}.totals/{model}"] = pa.table(
                {
                    "total": pa.array(
                        [plan.liquidator_fees, plan.insurance_fees, plan.insurance_fund_after], pa.float64()
                    )
                }
            )
    for model in walk_models:
        out[f"scan-distance/{model}"] = me.liquidation_scan(
            book, positions, balances, market, model=model, distance=True, threads=threads
        )
        out[f"distance/{model}"] = me.liquidation_distance(
            book, positions, balances, market, model=model, threads=threads
        )
        out[f"map/{model}"] = me.liquidation_map(book, positions, balances, market, model=model, threads=threads)
    return out


def check_deterministic(
    book: me.Book, market: me.Market, positions: Any, balances: Any, walk_models: tuple[str, ...] = MODELS
) -> dict[str, pa.Table]:
    """Results for threads = 1 (twice), 2, 3, 4 and None are bit-identical; returns them."""
    want = all_results(book, market, positions, balances, 1, walk_models)
    for threads in (*THREADS, None):
        got = all_results(book, market, positions, balances, threads, walk_models)
        assert_all_identical(got, want, f"threads={threads}")
    return want


# --------------------------------------------------------------------------------------------
# Layout changes that must not change a bit
# --------------------------------------------------------------------------------------------


def chunked(table: pa.Table, rng: np.random.Generator) -> pa.Table:
    """`table` as a concatenation of slices of random lengths (some of them empty)."""
    n = table.num_rows
    cuts = np.sort(rng.integers(0, n + 1, size=rng.integers(1, 8)))
    bounds = [0, *cuts.tolist(), n]
    pieces = [table.slice(a, b - a) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    pieces.insert(int(rng.integers(0, len(pieces) + 1)), table.slice(0, 0))
    return pa.concat_tables(pieces)


def stable_shuffled(table: pa.Table, keys: list[str], rng: np.random.Generator) -> pa.Table:
    """`table`'s rows in a random order in which the rows of each `keys` group keep their
    relative order (so every per-group sum sees its terms in the same order)."""
    n = table.num_rows
    if n < 2:
        return table
    group = np.zeros(n, dtype=np.int64)
    for key in keys:
        column = table.column(key)
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        codes = pc.dictionary_encode(column).combine_chunks().indices.to_numpy().astype(np.int64)
        group = group * (int(codes.max()) + 1) + codes
    slots_of = rng.permutation(n)  # slot i of the new table holds a row of group group[slots_of[i]]
    slot_groups = group[slots_of]
    slots = np.argsort(slot_groups, kind="stable")  # the slots, grouped by group, in order
    rows = np.argsort(group, kind="stable")  # the rows, grouped by group, in input order
    order = np.empty(n, dtype=np.int64)
    order[slots] = rows
    return table.take(pa.array(order))


# --------------------------------------------------------------------------------------------
# Random books
# --------------------------------------------------------------------------------------------


def amplified(example: dict[str, Any], copies: int) -> tuple[pa.Table, pa.Table]:
    """Positions and balances of `example` repeated `copies` times under fresh account ids (copy
    c of the account of rank r gets id c × 64 + r): enough accounts to split over threads (the
    engine hands out accounts in blocks of 256)."""
    positions, balances = example["positions"], example["balances"]
    ids = sorted(set(positions.column("account_id").to_pylist()) | set(balances.column("account_id").to_pylist()))
    rank = {a: i for i, a in enumerate(ids)}

    def repeat(t: pa.Table) -> pa.Table:
        base = np.array([rank[a] for a in t.column("account_id").to_pylist()], dtype=np.uint64)
        parts = []
        for c in range(copies):
            ids_c = pa.array(base + np.uint64(c * 64), t.schema.field("account_id").type)
            parts.append(t.set_column(0, t.schema.field(0), ids_c))
        return pa.concat_tables(parts)

    return repeat(positions), repeat(balances)


ROBUST = settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))


@ROBUST
@given(example=books(), copies=st.integers(6, 20), seed=st.integers(0, 2**32 - 1))
def test_random_books_deterministic_and_layout_independent(example: dict[str, Any], copies: int, seed: int) -> None:
    book, market = engine_objects(example)
    positions, balances = example["positions"], example["balances"]
    rng = np.random.default_rng(seed)

    want = check_deterministic(book, market, positions, balances)

    # Chunked and stably shuffled inputs: the same bits.
    layouts = {
        "chunked": (chunked(positions, rng), chunked(balances, rng)),
        "shuffled": (
            stable_shuffled(positions, ["account_id", "instrument"], rng),
            stable_shuffled(balances, ["account_id"], rng),
        ),
    }
    s_pos, s_bal = layouts["shuffled"]
    layouts["shuffled+chunked"] = (chunked(s_pos, rng), chunked(s_bal, rng))
    for threads, (label, (pos, bal)) in zip((3, 1, 2), layouts.items(), strict=True):
        assert_all_identical(all_results(book, market, pos, bal, threads), want, f"{label} threads={threads}")

    # Hundreds of accounts (up to ~500): the work really is split over threads.
    big_positions, big_balances = amplified(example, copies)
    big = check_deterministic(book, market, big_positions, big_balances)
    pos, bal = (
        chunked(stable_shuffled(big_positions, ["account_id", "instrument"], rng), rng),
        chunked(stable_shuffled(big_balances, ["account_id"], rng), rng),
    )
    assert_all_identical(all_results(book, market, pos, bal, 2), big, "amplified, shuffled+chunked")


# --------------------------------------------------------------------------------------------
# The generated book
# --------------------------------------------------------------------------------------------

GENERATED_ACCOUNTS = 20_000
PORTFOLIO_WALK_ACCOUNTS = 3_000
"""Portfolio-model distance walks cost ~2 s of fixed setup per call on the generated book's
~2,000 instruments, so they run on a subset of accounts and fewer thread counts."""


@lru_cache(maxsize=None)
def generated(shuffle: bool) -> synthetic.SyntheticBook:
    return synthetic.generate(GENERATED_ACCOUNTS, shuffle=shuffle)


@lru_cache(maxsize=None)
def generated_objects() -> tuple[me.Book, me.Market]:
    g = generated(False)
    return me.Book(g.instruments, g.assets, None, g.margin_tiers), me.Market(
        g.index_prices, g.marks, g.valuation_time_ns
    )


@lru_cache(maxsize=None)
def generated_results(shuffle: bool) -> dict[str, pa.Table]:
    """Results of the generated book with threads=1 (standard-model walks only)."""
    book, market = generated_objects()
    g = generated(shuffle)
    return all_results(book, market, g.positions, g.balances, 1, walk_models=("standard",))


def _subset(g: synthetic.SyntheticBook, accounts: int) -> tuple[pa.Table, pa.Table]:
    ids = pc.unique(
        pa.concat_arrays([*g.positions.column("account_id").chunks, *g.balances.column("account_id").chunks])
    )
    keep = pc.sort_indices(ids)[:accounts]
    chosen = pc.take(ids, keep)
    return (
        g.positions.filter(pc.is_in(g.positions.column("account_id"), chosen)),
        g.balances.filter(pc.is_in(g.balances.column("account_id"), chosen)),
    )


@pytest.mark.parametrize("shuffle", [False, True], ids=["sorted", "shuffled"])
def test_generated_book_deterministic(shuffle: bool) -> None:
    book, market = generated_objects()
    g = generated(shuffle)
    want = generated_results(shuffle)
    assert want["margin/standard"].num_rows == GENERATED_ACCOUNTS
    for threads in (*THREADS, None):
        got = all_results(book, market, g.positions, g.balances, threads, walk_models=("standard",))
        assert_all_identical(got, want, f"shuffle={shuffle} threads={threads}")


def test_generated_book_portfolio_walks_deterministic() -> None:
    book, market = generated_objects()
    positions, balances = _subset(generated(True), PORTFOLIO_WALK_ACCOUNTS)
    want = me.liquidation_distance(book, positions, balances, market, model="portfolio", threads=1)
    assert want.num_rows > PORTFOLIO_WALK_ACCOUNTS // 2
    got = me.liquidation_distance(book, positions, balances, market, model="portfolio", threads=3)
    assert_identical(got, want, "distance/portfolio threads=3")


def test_generated_book_chunked_and_stably_shuffled() -> None:
    book, market = generated_objects()
    g = generated(False)
    want = generated_results(False)
    rng = np.random.default_rng(20_000)
    positions = stable_shuffled(g.positions, ["account_id", "instrument"], rng)
    balances = stable_shuffled(g.balances, ["account_id"], rng)
    cases = {
        "chunked": (chunked(g.positions, rng), chunked(g.balances, rng)),
        "batches": (pa.Table.from_batches(g.positions.to_batches(max_chunksize=997)), g.balances),
        "stably shuffled": (positions, balances),
        "stably shuffled + chunked": (chunked(positions, rng), chunked(balances, rng)),
    }
    for label, (pos, bal) in cases.items():
        got = all_results(book, market, pos, bal, None, walk_models=("standard",))
        assert_all_identical(got, want, label)
    # The generator's own shuffle, chunked, gives the bits of its unchunked self.
    s = generated(True)
    got = all_results(book, market, chunked(s.positions, rng), chunked(s.balances, rng), 2, walk_models=("standard",))
    assert_all_identical(got, generated_results(True), "generator-shuffled, chunked")


def test_generated_full_shuffle_agrees_to_rounding() -> None:
    """By design (docs/methodology-notes.md) the fills of one (account, instrument) are summed in
    input order, so reordering the rows of one account may change the last bits; results agree to
    rounding, and statuses exactly."""
    shuffled, ordered = generated_results(True), generated_results(False)
    for name in ordered:
        a, b = shuffled[name], ordered[name]
        if not isinstance(a, pa.Table):
            continue
        assert a.num_rows == b.num_rows and a.column_names == b.column_names, name
        for column in a.column_names:
            x, y = a.column(column).to_pylist(), b.column(column).to_pylist()
            if pa.types.is_floating(a.schema.field(column).type):
                for u, v in zip(x, y, strict=True):
                    close = u is None or abs(u - v) <= 1e-9 * max(1.0, abs(u), abs(v))
                    assert (u is None) == (v is None) and close, (name, column, u, v)
            else:
                assert x == y, (name, column)


# --------------------------------------------------------------------------------------------
# Thread safety and the GIL
# --------------------------------------------------------------------------------------------


def _account_groups(g: synthetic.SyntheticBook, groups: int) -> list[tuple[pa.Table, pa.Table]]:
    """The book's accounts split into `groups` disjoint sets (by account id modulo `groups`)."""
    p_ids = g.positions.column("account_id").to_numpy()
    b_ids = g.balances.column("account_id").to_numpy()
    return [
        (
            g.positions.filter(pa.array(p_ids % np.uint64(groups) == np.uint64(k))),
            g.balances.filter(pa.array(b_ids % np.uint64(groups) == np.uint64(k))),
        )
        for k in range(groups)
    ]


CONCURRENT_CALLS: dict[str, Callable[..., pa.Table]] = {
    "margin/standard": lambda b, m, p, bal, t: me.margin(b, p, bal, m, model="standard", threads=t),
    "margin/portfolio": lambda b, m, p, bal, t: me.margin(b, p, bal, m, model="portfolio", threads=t),
    "scan/standard": lambda b, m, p, bal, t: me.liquidation_scan(b, p, bal, m, threads=t),
    "scan-distance/standard": lambda b, m, p, bal, t: me.liquidation_scan(b, p, bal, m, distance=True, threads=t),
    "scan-stress/portfolio": lambda b, m, p, bal, t: me.liquidation_scan(
        b, p, bal, m, model="portfolio", stress={"BTC": -0.25, "ETH": 0.1}, threads=t
    ),
}


def test_concurrent_python_threads() -> None:
    """8 Python threads at once, same Book and Market, different positions: every result equals
    the single-threaded one."""
    book, market = generated_objects()
    groups = _account_groups(generated(True), 8)
    want = {
        (k, name): call(book, market, p, b, 1)
        for k, (p, b) in enumerate(groups)
        for name, call in CONCURRENT_CALLS.items()
    }
    tasks = [(k, name, threads) for k in range(8) for name in CONCURRENT_CALLS for threads in (None, 1, 2)]
    np.random.default_rng(8).shuffle(tasks)
    with cf.ThreadPoolExecutor(max_workers=8) as pool:
        futures = {
            pool.submit(CONCURRENT_CALLS[name], book, market, *groups[k], threads): (k, name, threads)
            for k, name, threads in tasks
        }
        for future in cf.as_completed(futures):
            k, name, threads = futures[future]
            assert_identical(future.result(), want[(k, name)], f"group {k} {name} threads={threads}")


def test_concurrent_python_threads_same_inputs() -> None:
    """8 Python threads at once on the very same tables."""
    book, market = generated_objects()
    g = generated(False)
    want = generated_results(False)
    with cf.ThreadPoolExecutor(max_workers=8) as pool:
        futures = [
            pool.submit(me.margin, book, g.positions, g.balances, market, model=MODELS[i % 2], threads=1 + i % 3)
            for i in range(16)
        ]
        for i, future in enumerate(futures):
            assert_identical(future.result(), want[f"margin/{MODELS[i % 2]}"], f"call {i}")


def _spin_rate_during(call: Callable[[], Any]) -> tuple[float, float, float]:
    """(iterations per second of a pure-Python loop in another thread while `call` runs, the
    loop's rate while this thread sleeps, how long `call` took)."""
    count = [0]
    stop = threading.Event()

    def spin() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            count[0] = n

    thread = threading.Thread(target=spin, daemon=True)
    thread.start()
    try:
        time.sleep(0.05)
        c0, t0 = count[0], time.perf_counter()
        time.sleep(0.25)  # releases the GIL: the loop's rate with a free core
        idle_rate = (count[0] - c0) / (time.perf_counter() - t0)
        c0, t0 = count[0], time.perf_counter()
        call()
        elapsed = time.perf_counter() - t0
        busy_rate = (count[0] - c0) / elapsed
    finally:
        stop.set()
        thread.join()
    return busy_rate, idle_rate, elapsed


@pytest.fixture(scope="module")
def big_book() -> tuple[me.Book, me.Market, synthetic.SyntheticBook]:
    g = synthetic.generate(200_000, seed=11)
    return (
        me.Book(g.instruments, g.assets, None, g.margin_tiers),
        me.Market(g.index_prices, g.marks, g.valuation_time_ns),
        g,
    )


@pytest.mark.parametrize("function", ["margin", "liquidation_scan"])
def test_gil_released_during_a_long_call(function: str, big_book: Any) -> None:
    """While a long call runs on one engine thread, a pure-Python loop in another Python thread
    runs at a good fraction of its free rate. Were the GIL held, it would not run at all (but for
    a switch interval or two at the call's ends)."""
    book, market, g = big_book

    def call() -> None:
        getattr(me, function)(book, g.positions, g.balances, market, model="portfolio", threads=1)

    call()  # warm up
    busy_rate, idle_rate, elapsed = _spin_rate_during(call)
    iterations = busy_rate * elapsed
    assert elapsed > 0.05, "the call is too short to tell"
    assert iterations > 10_000, (iterations, elapsed)
    assert busy_rate > 0.2 * idle_rate, f"loop ran at {busy_rate:.0f}/s during the call vs {idle_rate:.0f}/s idle"


# --------------------------------------------------------------------------------------------
# Nothing lost
# --------------------------------------------------------------------------------------------


def _exposures(example: dict[str, Any]) -> set[tuple[int, str]]:
    """(account, underlying) pairs the account is exposed to: a position netting (rows summed in
    input order, like the engine) to non-zero, or a non-zero balance of an underlying-linked asset."""
    instruments = example["instruments"]
    underlying_of = dict(
        zip(instruments.column("instrument").to_pylist(), instruments.column("underlying").to_pylist(), strict=True)
    )
    positions = example["positions"]
    net: dict[tuple[int, Any], float] = {}
    for a, i, q in zip(
        positions.column("account_id").to_pylist(),
        positions.column("instrument").to_pylist(),
        positions.column("quantity").to_pylist(),
        strict=True,
    ):
        net[(a, i)] = net.get((a, i), 0.0) + q
    pairs = {(a, underlying_of[i]) for (a, i), q in net.items() if q != 0.0}
    assets = example["assets"]
    if "underlying" in assets.column_names:
        linked = dict(zip(assets.column("asset").to_pylist(), assets.column("underlying").to_pylist(), strict=True))
        balances = example["balances"]
        for a, asset, amount in zip(
            balances.column("account_id").to_pylist(),
            balances.column("asset").to_pylist(),
            balances.column("amount").to_pylist(),
            strict=True,
        ):
            if amount != 0.0 and linked.get(asset) is not None:
                pairs.add((a, linked[asset]))
    return pairs


@settings(max_examples=100, deadline=None, suppress_health_check=list(HealthCheck))
@given(example=books(), seed=st.integers(0, 2**32 - 1))
def test_nothing_lost(example: dict[str, Any], seed: int) -> None:
    book, market = engine_objects(example)
    rng = np.random.default_rng(seed)
    positions = chunked(example["positions"], rng) if seed % 2 else example["positions"]
    balances = chunked(example["balances"], rng) if seed % 3 else example["balances"]
    accounts = set(example["positions"].column("account_id").to_pylist()) | set(
        example["balances"].column("account_id").to_pylist()
    )
    exposures = _exposures(example)
    underlyings = set(book.underlyings)
    for model in MODELS:
        margin = me.margin(book, positions, balances, market, model=model)
        ids = margin.column("account_id").to_pylist()
        assert ids == sorted(accounts), f"margin/{model}: accounts lost, added, repeated or unsorted"

        for kwargs in ({}, {"distance": True}, {"stress": {book.underlyings[0]: -0.3}}):
            scan = me.liquidation_scan(book, positions, balances, market, model=model, **kwargs)
            ids = scan.column("account_id").to_pylist()
            assert len(ids) == len(accounts) and set(ids) == accounts, f"scan/{model} {kwargs}"

        distance = me.liquidation_distance(book, positions, balances, market, model=model)
        pairs = list(
            zip(distance.column("account_id").to_pylist(), distance.column("underlying").to_pylist(), strict=True)
        )
        assert len(pairs) == len(set(pairs)), f"distance/{model}: repeated (account, underlying)"
        assert set(pairs) == exposures, (
            f"distance/{model}: missing {exposures - set(pairs)}, unexpected {set(pairs) - exposures}"
        )
        order = [(a, book.underlyings.index(u)) for a, u in pairs]
        assert order == sorted(order), f"distance/{model}: rows not by account, then underlying"

        liquidatable = {
            a
            for a, s in zip(margin.column("account_id").to_pylist(), margin.column("status").to_pylist(), strict=True)
            if s in ("liquidatable", "bankrupt")
        }
        plan = me.liquidation_plan(book, positions, balances, market, model=model)
        planned = plan.accounts.column("account_id").to_pylist()
        assert len(planned) == len(set(planned)) and set(planned) == liquidatable, f"plan/{model}"
        assert set(plan.closes.column("account_id").to_pylist()) <= liquidatable

        lmap = me.liquidation_map(book, positions, balances, market, model=model)
        assert set(lmap.column("underlying").to_pylist()) <= underlyings

    greeks = me.greeks(book, positions, market)
    pairs = list(zip(greeks.column("account_id").to_pylist(), greeks.column("underlying").to_pylist(), strict=True))
    assert len(pairs) == len(set(pairs)), "greeks: repeated (account, underlying)"
    position_pairs = {p for p in _exposures({**example, "assets": example["assets"].select(["asset"])})}
    assert set(pairs) == position_pairs, (
        f"greeks: missing {position_pairs - set(pairs)}, unexpected {set(pairs) - position_pairs}"
    )
