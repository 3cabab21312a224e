"""Benchmarks: exact liquidation prices (``me.liquidation_distance``, docs/liquidation.md §3)
against the former grid walk (``_core.liquidation_distance_grid``) on generated books
(``margin_engine.synthetic``).

    pytest benches/test_bench_liquidation_exact.py --benchmark-only             # 10k and 100k accounts
    BENCH_FULL=1 pytest benches/test_bench_liquidation_exact.py --benchmark-only # also 1M accounts
    python benches/liquidation_exact_report.py --accounts 100000                # how far apart they are

Books are generated once per size; generation and ``Book``/``Market`` construction are not
timed. ``BENCH_SIZES`` overrides the sizes, ``BENCH_ROUNDS`` the rounds.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

me = pytest.importorskip("margin_engine")
from margin_engine import _core, api, synthetic

FULL = os.environ.get("BENCH_FULL", "") not in ("", "0")
SIZES = [int(s) for s in os.environ["BENCH_SIZES"].split(",")] if os.environ.get("BENCH_SIZES") else (
    [10_000, 100_000] + ([1_000_000] if FULL else [])
)
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "0")) or None


@functools.cache
def data(accounts: int) -> tuple[Any, Any, Any]:
    b = synthetic.generate(accounts, seed=7)
    return b, me.Book(b.instruments, b.assets, None, b.margin_tiers), me.Market(b.index_prices, b.marks, b.valuation_time_ns)


def grid(book: Any, positions: Any, balances: Any, market: Any, model: str, threads: int) -> Any:
    return api._per_account(_core.liquidation_distance_grid, book, positions, balances, market, model, threads, "arrow")


def exact(book: Any, positions: Any, balances: Any, market: Any, model: str, threads: int) -> Any:
    return me.liquidation_distance(book, positions, balances, market, model=model, threads=threads)


@pytest.mark.parametrize("threads", [2])
@pytest.mark.parametrize("model", ["standard", "portfolio"])
@pytest.mark.parametrize("method", ["exact", "grid"])
@pytest.mark.parametrize("accounts", SIZES)
def test_liquidation_distance_exact_vs_grid(benchmark: Any, accounts: int, method: str, model: str, threads: int) -> None:
    b, book, market = data(accounts)
    fn = exact if method == "exact" else grid
    benchmark.group = f"liquidation distance, {accounts:,} accounts, {model}"
    benchmark.extra_info.update(suite="liquidation_exact", implementation="engine", function=f"liquidation_distance_{method}",
                                model=model, threads=threads, accounts=accounts, rows=b.positions.num_rows)
    big = accounts >= 1_000_000
    result = benchmark.pedantic(lambda: fn(book, b.positions, b.balances, market, model, threads),
                                rounds=ROUNDS or (1 if big else 3), iterations=1, warmup_rounds=0 if big else 1)
    benchmark.extra_info["result_rows"] = result.num_rows
