"""Benchmarks: `me.margin` under each methodology preset, side by side with v1's standard and
portfolio models on the same generated book (issue 13: each preset's portfolio model should
cost at most 3x the standard model).

    pytest benches/test_bench_methodology.py --benchmark-only          # 100k accounts
    BENCH_FULL=1 pytest benches/test_bench_methodology.py --benchmark-only   # also 1M
"""

from __future__ import annotations

import functools
import os

import pytest

me = pytest.importorskip("margin_engine")
from margin_engine import synthetic

FULL = os.environ.get("BENCH_FULL", "") not in ("", "0")
SIZES = [100_000] + ([1_000_000] if FULL else [])
CASES = [
    ("v1", "standard"),
    ("v1", "portfolio"),
    ("exchange", "portfolio"),
    ("derive_pmrm2", "portfolio"),
    ("derive_standard", "standard"),
]


@functools.cache
def _book(accounts: int):
    return synthetic.generate(accounts, seed=7)


@pytest.mark.parametrize("accounts", SIZES)
@pytest.mark.parametrize(("methodology", "model"), CASES)
def test_margin_under_methodology(benchmark, accounts: int, methodology: str, model: str) -> None:
    g = _book(accounts)
    book = me.Book(g.instruments, g.assets, None, g.margin_tiers, methodology=methodology)
    market = me.Market(g.index_prices, g.marks, g.valuation_time_ns)
    me.margin(book, g.positions, g.balances, market, model=model)  # warm: risk arrays / option values cached
    benchmark.group = f"methodologies, {accounts:,} accounts"
    benchmark.extra_info.update(implementation="engine", function="margin", model=model, methodology=methodology, accounts=accounts)
    result = benchmark(me.margin, book, g.positions, g.balances, market, model=model)
    assert result.num_rows == accounts
