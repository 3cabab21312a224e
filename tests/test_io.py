"""Parquet book directories: round trip, single-chunk columns on read, and the streaming run."""

from __future__ import annotations

import subprocess
import sys

import pyarrow.parquet as pq

import margin_engine as me
from margin_engine import synthetic
from margin_engine.io import BookTables, read_book, write_book


def _tables(g) -> BookTables:
    return BookTables(
        instruments=g.instruments, assets=g.assets, positions=g.positions, balances=g.balances,
        index_prices=g.index_prices, marks=g.marks, valuation_time=g.valuation_time, margin_tiers=g.margin_tiers,
    )  # fmt: skip


def test_read_book_combines_row_groups_into_single_chunks(tmp_path):
    g = synthetic.generate(3_000, seed=5)
    write_book(_tables(g), tmp_path)
    # rewrite positions with many row groups, as a large export would have
    pq.write_table(g.positions, tmp_path / "positions.parquet", row_group_size=1_000)
    assert pq.ParquetFile(tmp_path / "positions.parquet").metadata.num_row_groups > 10
    t = read_book(tmp_path)
    assert all(c.num_chunks == 1 for c in t.positions.columns)
    assert t.positions.equals(g.positions) and t.balances.equals(g.balances)
    book, market = t.book(), t.market()
    got = me.margin(book, t.positions, t.balances, market)
    want = me.margin(book, g.positions, g.balances, market)
    assert got.equals(want)


def test_cli_run_streams_to_the_same_results(tmp_path):
    g = synthetic.generate(3_000, seed=6)
    write_book(_tables(g), tmp_path / "book")
    pq.write_table(g.positions, tmp_path / "book" / "positions.parquet", row_group_size=2_000)
    for extra, out in (([], "whole.parquet"), (["--stream"], "streamed.parquet")):
        subprocess.run([sys.executable, "-m", "margin_engine.cli", "--quiet", "run", str(tmp_path / "book"),
                        "--out", str(tmp_path / out), *extra], check=True)  # fmt: skip
    assert pq.read_table(tmp_path / "streamed.parquet").equals(pq.read_table(tmp_path / "whole.parquet"))
