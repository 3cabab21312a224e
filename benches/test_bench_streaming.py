"""Benchmark: ``margin_batches`` on one-row batches against the same rows in one batch.

    pytest benches/test_bench_streaming.py --benchmark-only -p no:cacheprovider

The stream is the first ``BENCH_STREAM_ROWS`` (default 200,000) position rows of a generated
book and the balances of the same accounts, fed as Python lists of record batches (not timed:
building them). What is timed is the whole ``margin_batches`` run, slicing, coalescing and the
engine's margin call. Small batches are coalesced before margining, so the one-row stream costs
the per-batch iteration (a few microseconds a batch) on top of the one-batch run; before the
coalescing it grew with the square of the number of batches (20,000 one-row batches: 539 s).
``benches/report.py`` leaves these out of docs/performance.md (no ``implementation`` key).
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

me = pytest.importorskip("margin_engine")
import pyarrow as pa  # noqa: E402
import pyarrow.compute as pc  # noqa: E402

from margin_engine import synthetic  # noqa: E402
from margin_engine.streaming import margin_batches  # noqa: E402

ROWS = int(os.environ.get("BENCH_STREAM_ROWS", "200000"))


@functools.cache
def stream_book() -> tuple[Any, Any, pa.Table, pa.Table]:
    g = synthetic.generate(max(1, ROWS // 5), seed=7)
    positions = g.positions.slice(0, ROWS)
    last = positions.column("account_id")[-1].as_py()
    balances = g.balances.filter(pc.less_equal(g.balances.column("account_id"), last))
    book = me.Book(g.instruments, g.assets, None, g.margin_tiers)
    market = me.Market(g.index_prices, g.marks, g.valuation_time)
    return book, market, positions, balances


@pytest.mark.parametrize("batch_rows", [None, 1], ids=["one-batch", "one-row-batches"])
def test_margin_batches(benchmark: Any, batch_rows: int | None) -> None:
    book, market, positions, balances = stream_book()
    if batch_rows is None:
        pos, bal = positions.combine_chunks().to_batches(), balances.combine_chunks().to_batches()
    else:
        pos, bal = positions.to_batches(max_chunksize=batch_rows), balances.to_batches(max_chunksize=batch_rows)
    benchmark.group = f"margin_batches, {positions.num_rows:,} position rows"
    benchmark.extra_info.update(batches=len(pos) + len(bal), position_rows=positions.num_rows)
    parts = benchmark.pedantic(lambda: list(margin_batches(book, pos, bal, market)), rounds=3, iterations=1)
    assert sum(p.num_rows for p in parts) == pc.count_distinct(
        pa.concat_arrays([positions.column("account_id").combine_chunks(), balances.column("account_id").combine_chunks()])
    ).as_py()
