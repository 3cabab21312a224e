"""Benchmark: ``me.forecast_margin`` on a generated book beside the cost of one bulk stressed
margin call (``liquidation_scan(..., stress=...)``): the forecast margins the whole book
``paths × days`` times (in the engine's path pass, each account's row the one that call gives).

    pytest benches/test_bench_forecast.py --benchmark-only                 # 10,000 accounts, 20 paths x 5 days
    BENCH_FULL=1 pytest benches/test_bench_forecast.py --benchmark-only    # also 1,000,000 accounts, 1,000 x 5

``BENCH_FORECAST_PATHS`` / ``BENCH_FORECAST_DAYS`` / ``BENCH_FORECAST_SIZES`` override the
defaults. ``extra_info`` records ``calls`` (scenarios margined: paths × days + the tail paths'
last day + today's scan) so that the forecast's time can be set against ``calls ×`` the single call's (``suite = "forecast"``; benches/report.py
leaves this suite out of docs/performance.md). Needs the shared price data, or skips.
"""

from __future__ import annotations

import functools
import math
import os
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

me = pytest.importorskip("margin_engine")
pq = pytest.importorskip("pyarrow.parquet")
import pyarrow.compute as pc  # noqa: E402
from margin_engine import synthetic

FULL = os.environ.get("BENCH_FULL", "") not in ("", "0")
SIZES = [int(s) for s in os.environ["BENCH_FORECAST_SIZES"].split(",")] if os.environ.get("BENCH_FORECAST_SIZES") else (
    [10_000] + ([1_000_000] if FULL else [])
)
PATHS = int(os.environ.get("BENCH_FORECAST_PATHS", "0")) or None
DAYS = int(os.environ.get("BENCH_FORECAST_DAYS", "5"))
PRICES = Path(__file__).parent.parent / "tests" / "data" / "prices" / "daily_btc_eth_usdc.parquet"
SHARED = Path("/work/shared/data/prices/daily.parquet")


def _paths(accounts: int) -> int:
    return PATHS or (1_000 if accounts >= 1_000_000 else 20)


@functools.cache
def data(accounts: int) -> tuple[Any, Any, Any, Any, Any]:
    b = synthetic.generate(accounts, seed=7)
    prices_file = SHARED if SHARED.exists() else PRICES
    prices = pq.read_table(prices_file)
    book = me.Book(b.instruments, b.assets, None, b.margin_tiers)
    market = me.Market(b.index_prices, b.marks, b.valuation_time_ns)
    # only the underlyings with a price history (TON has none in the data): their positions
    have = pc.unique(prices.column("symbol"))
    names = b.instruments.filter(pc.is_in(b.instruments.column("underlying"), have)).column("instrument")
    positions = b.positions.filter(pc.is_in(b.positions.column("instrument"), names))
    return book, positions, b.balances, market, prices


def _held(book: Any, positions: Any, prices: Any) -> list[str]:
    have = set(prices.column("symbol").to_pylist())
    return [u for u in book.underlyings if u in have]


@pytest.mark.parametrize("accounts", SIZES)
def test_one_stressed_bulk_call(benchmark: Any, accounts: int) -> None:
    book, positions, balances, market, prices = data(accounts)
    stress = {u: -0.05 for u in _held(book, positions, prices)}
    benchmark.group = f"forecast, {accounts:,} accounts"
    benchmark.extra_info.update(suite="forecast", function="liquidation_scan(stress)", accounts=accounts, calls=1)
    benchmark.pedantic(lambda: me.liquidation_scan(book, positions, balances, market, model="portfolio", stress=stress),
                       rounds=3, iterations=1, warmup_rounds=1)  # fmt: skip


@pytest.mark.parametrize("accounts", SIZES)
def test_forecast_margin(benchmark: Any, accounts: int) -> None:
    book, positions, balances, market, prices = data(accounts)
    paths = _paths(accounts)
    calls = paths * DAYS + max(1, math.ceil(0.01 * paths - 1e-9)) + 1
    benchmark.group = f"forecast, {accounts:,} accounts"
    benchmark.extra_info.update(suite="forecast", function="forecast_margin", accounts=accounts, paths=paths, days=DAYS, calls=calls)
    benchmark.pedantic(lambda: me.forecast_margin(book, positions, balances, market, prices, days=DAYS, paths=paths, lookback="3y"),
                       rounds=1, iterations=1)  # fmt: skip
