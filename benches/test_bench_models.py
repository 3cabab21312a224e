"""Benchmarks: the engine's model functions against numpy / polars / duckdb baselines and the
pure-Python reference, on generated books (``margin_engine.synthetic``).

    pytest benches --benchmark-only --benchmark-json=out/bench.json   # 10k and 100k accounts
    BENCH_FULL=1 pytest benches --benchmark-only ...                  # also 1M accounts
    python benches/report.py out/bench.json                           # docs/performance.md

Each benchmark is grouped by book size (``benchmark.group``), so pytest-benchmark's table puts
the implementations of one size side by side, and records in ``benchmark.extra_info`` what
``benches/report.py`` needs: implementation, function, model, threads, accounts, position rows.
Books are generated once per size (cached at module scope); generation and ``Book``/``Market``
construction are not timed; everything the baselines do from the Arrow tables to the result
table is. ``BENCH_SIZES=10000,50000`` overrides the sizes; ``BENCH_ROUNDS`` the rounds.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

me = pytest.importorskip("margin_engine")
from margin_engine import synthetic

FULL = os.environ.get("BENCH_FULL", "") not in ("", "0")
SIZES = [int(s) for s in os.environ["BENCH_SIZES"].split(",")] if os.environ.get("BENCH_SIZES") else (
    [10_000, 100_000] + ([1_000_000] if FULL else [])
)
REFERENCE_ACCOUNTS = 2_000
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "0")) or None
THREADS = (1, 2)


@dataclass
class Data:
    accounts: int
    book: Any             # SyntheticBook
    engine_book: Any      # me.Book
    market: Any           # me.Market

    @property
    def rows(self) -> int:
        return self.book.positions.num_rows

    @property
    def balance_rows(self) -> int:
        return self.book.balances.num_rows


@functools.cache
def data(accounts: int, shuffle: bool = False) -> Data:
    b = synthetic.generate(accounts, seed=7, shuffle=shuffle)
    return Data(
        accounts,
        b,
        me.Book(b.instruments, b.assets, None, b.margin_tiers),
        me.Market(b.index_prices, b.marks, b.valuation_time_ns),
    )


def group(accounts: int) -> str:
    return f"{accounts:>9,} accounts"


def run(benchmark: Any, d: Data, fn: Callable[[], Any], *, implementation: str, function: str,
        model: str | None = None, threads: int | None = None, rounds: int = 3, input_order: str = "sorted",
        suite: str = "scaling") -> Any:
    benchmark.group = group(d.accounts) if suite == "scaling" else f"reference vs engine, {d.accounts:,} accounts"
    benchmark.extra_info.update(
        implementation=implementation,
        function=function,
        model=model,
        threads=threads,
        accounts=d.accounts,
        rows=d.rows,
        balance_rows=d.balance_rows,
        input_order=input_order,
        suite=suite,
    )
    big = d.accounts >= 1_000_000
    result = benchmark.pedantic(fn, rounds=ROUNDS or rounds, iterations=1, warmup_rounds=0 if big else 1)
    benchmark.extra_info["result_rows"] = result.num_rows
    return result


# ----------------------------------------------------------------------------------------------
# Engine
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("model", ["standard", "portfolio"])
@pytest.mark.parametrize("accounts", SIZES)
def test_engine_margin(benchmark: Any, accounts: int, model: str, threads: int) -> None:
    d = data(accounts)
    b = d.book
    run(benchmark, d, lambda: me.margin(d.engine_book, b.positions, b.balances, d.market, model=model, threads=threads),
        implementation="engine", function="margin", model=model, threads=threads, rounds=7)


@pytest.mark.parametrize("accounts", SIZES)
def test_engine_margin_shuffled_input(benchmark: Any, accounts: int) -> None:
    """Position and balance rows in random order (the generator's default is sorted by account)."""
    d = data(accounts, shuffle=True)
    b = d.book
    run(benchmark, d, lambda: me.margin(d.engine_book, b.positions, b.balances, d.market, threads=2),
        implementation="engine", function="margin", model="standard", threads=2, rounds=7, input_order="shuffled")


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("accounts", SIZES)
def test_engine_greeks(benchmark: Any, accounts: int, threads: int) -> None:
    d = data(accounts)
    run(benchmark, d, lambda: me.greeks(d.engine_book, d.book.positions, d.market, threads=threads),
        implementation="engine", function="greeks", threads=threads, rounds=7)


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("accounts", SIZES)
def test_engine_liquidation_scan(benchmark: Any, accounts: int, threads: int) -> None:
    d = data(accounts)
    b = d.book
    run(benchmark, d, lambda: me.liquidation_scan(d.engine_book, b.positions, b.balances, d.market, threads=threads),
        implementation="engine", function="liquidation_scan", model="standard", threads=threads, rounds=7)


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("accounts", SIZES)
def test_engine_liquidation_scan_distance(benchmark: Any, accounts: int, threads: int) -> None:
    """The scan with distance to liquidation: 200 stressed re-margins per account × underlying."""
    d = data(accounts)
    b = d.book
    run(benchmark, d,
        lambda: me.liquidation_scan(d.engine_book, b.positions, b.balances, d.market, distance=True, threads=threads),
        implementation="engine", function="liquidation_scan_distance", model="standard", threads=threads)


# ----------------------------------------------------------------------------------------------
# Baselines (benches/baselines): the same model, written in numpy, polars and DuckDB SQL
# ----------------------------------------------------------------------------------------------


def _threads_of(name: str) -> int:
    if name.startswith("polars"):
        import polars as pl

        return pl.thread_pool_size()
    if name.startswith("duckdb"):
        import duckdb

        return int(duckdb.sql("SELECT current_setting('threads')").fetchall()[0][0])
    return 1


@pytest.mark.parametrize(
    "name", ["numpy_standard", "polars_standard", "duckdb_standard", "numpy_portfolio"]
)
@pytest.mark.parametrize("accounts", SIZES)
def test_baseline_margin(benchmark: Any, accounts: int, name: str) -> None:
    if name.startswith(("polars", "duckdb")):
        pytest.importorskip(name.split("_")[0])
    import importlib

    module = importlib.import_module(f"benches.baselines.{name}")
    d = data(accounts)
    b = d.book
    run(benchmark, d, lambda: module.margin(b, b.positions, b.balances, b),
        implementation=name.split("_")[0], function="margin", model=name.split("_")[1], threads=_threads_of(name))


# ----------------------------------------------------------------------------------------------
# Pure-Python reference, on a small book (per-row throughput), with the engine on the same book
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", ["standard", "portfolio"])
def test_reference_margin(benchmark: Any, model: str) -> None:
    import margin_engine.reference as ref

    d = data(REFERENCE_ACCOUNTS)
    b = d.book
    run(benchmark, d, lambda: ref.margin(d.engine_book, b.positions, b.balances, d.market, model=model),
        implementation="reference", function="margin", model=model, threads=1, suite="reference")


@pytest.mark.parametrize("model", ["standard", "portfolio"])
def test_reference_size_engine_margin(benchmark: Any, model: str) -> None:
    d = data(REFERENCE_ACCOUNTS)
    b = d.book
    run(benchmark, d, lambda: me.margin(d.engine_book, b.positions, b.balances, d.market, model=model, threads=1),
        implementation="engine", function="margin", model=model, threads=1, rounds=7, suite="reference")


# ----------------------------------------------------------------------------------------------
# What-if for order entry: one account of 10 positions, before and after a trade
# ----------------------------------------------------------------------------------------------


@functools.cache
def what_if_account() -> tuple[Data, list[Any], dict[str, float], list[Any], Any, Any]:
    """An account of the 10k book with exactly 10 position rows: its rows as tuples and as Arrow
    tables (the latter for the table-based path a user would take without `what_if`)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    d = data(10_000)
    pos, bal = d.book.positions, d.book.balances
    counts = pc.value_counts(pos.column("account_id")).to_pylist()
    account = min(c["values"] for c in counts if c["counts"] == 10)
    p = pos.filter(pc.equal(pos.column("account_id"), pa.scalar(account, pa.uint64())))
    b = bal.filter(pc.equal(bal.column("account_id"), pa.scalar(account, pa.uint64())))
    positions = list(zip(p.column("instrument").to_pylist(), p.column("quantity").to_pylist(), p.column("entry_price").to_pylist()))
    balances = dict(zip(b.column("asset").to_pylist(), b.column("amount").to_pylist()))
    trades = [(positions[0][0], 1.0)]
    return d, positions, balances, trades, p, b


def _what_if_info(benchmark: Any, implementation: str, model: str) -> None:
    benchmark.group = "what-if, one account of 10 positions"
    benchmark.extra_info.update(implementation=implementation, function="what_if", model=model, threads=1,
                                accounts=1, rows=10, balance_rows=0, input_order="sorted", suite="what_if")


@pytest.mark.parametrize("model", ["standard", "portfolio"])
def test_engine_what_if(benchmark: Any, model: str) -> None:
    d, positions, balances, trades, _, _ = what_if_account()
    _what_if_info(benchmark, "engine", model)
    w = benchmark(me.what_if, d.engine_book, positions, balances, d.market, trades, model=model)
    assert w.after.initial_margin > 0


@pytest.mark.parametrize("model", ["standard", "portfolio"])
def test_margin_tables_what_if(benchmark: Any, model: str) -> None:
    """Without `what_if`: `me.margin` on the account's rows as Arrow tables, before and after
    (the trade appended as a row): what a user would write with the bulk API."""
    import pyarrow as pa

    d, _, _, trades, p, b = what_if_account()
    marks = dict(zip(d.book.marks.column("instrument").to_pylist(), d.book.marks.column("mark_price").to_pylist()))
    trade = pa.table({"account_id": p.column("account_id").slice(0, 1), "instrument": p.column("instrument").slice(0, 1),
                      "quantity": pa.array([trades[0][1]]), "entry_price": pa.array([marks[trades[0][0]]])})  # at the mark
    after = pa.concat_tables([p, trade.cast(p.schema)])
    _what_if_info(benchmark, "engine margin() on 1-account tables", model)

    def both() -> Any:
        me.margin(d.engine_book, p, b, d.market, model=model, threads=1)
        return me.margin(d.engine_book, after, b, d.market, model=model, threads=1)

    benchmark(both)


@pytest.mark.parametrize("model", ["standard", "portfolio"])
def test_reference_what_if(benchmark: Any, model: str) -> None:
    import margin_engine.reference as ref

    d, positions, balances, trades, _, _ = what_if_account()
    _what_if_info(benchmark, "reference", model)
    benchmark.pedantic(ref.what_if, args=(d.engine_book, positions, balances, d.market, trades), kwargs={"model": model},
                       rounds=3, iterations=1)
