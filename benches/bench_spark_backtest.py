"""The cost per date of the book backtest, in memory (``me.backtest``) and on a local Spark
(``mes.backtest``, local[2]): ``python benches/bench_spark_backtest.py [accounts] [days]``.
Run from the repository root (it reads tests/data and the tests' example book)."""

from __future__ import annotations

import os
import sys
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))

import margin_engine as me  # noqa: E402
import margin_engine.spark as mes  # noqa: E402
from test_backtest import DAILY, _book  # noqa: E402


def main(n: int, days: int) -> None:
    from pyspark.sql import SparkSession

    os.environ["PYSPARK_PYTHON"] = sys.executable
    spark = (SparkSession.builder.master("local[2]").config("spark.ui.enabled", "false")
             .config("spark.sql.shuffle.partitions", "4").getOrCreate())  # fmt: skip
    spark.sparkContext.setLogLevel("ERROR")
    prices = pq.read_table(DAILY).filter(pc.is_in(pc.field("symbol"), pa.array(["BTC", "ETH"])))
    rng = np.random.default_rng(5)
    rows = 3 * n
    positions = pa.table({"account_id": np.repeat(np.arange(1, n + 1, dtype=np.int64), 3),
                          "instrument": rng.choice(["BTC-PERP", "ETH-PERP", "BTC-C"], rows).tolist(),
                          "quantity": np.round(rng.normal(0, 2, rows), 3), "row": np.arange(rows)})  # fmt: skip
    balances = pa.table({"account_id": np.arange(1, n + 1, dtype=np.int64), "asset": ["USD"] * n, "amount": rng.uniform(1, 2e5, n)})
    end = (np.datetime64("2023-01-01") + np.timedelta64(days - 1, "D")).astype(str)
    options = dict(horizon="1d", confidence=0.99, method="fhs", lookback="3y", start="2023-01-01", end=end)
    t0 = time.perf_counter()
    want = me.backtest(_book(), positions.drop_columns(["row"]), balances, prices, **options)
    t1 = time.perf_counter()
    p, b = spark.createDataFrame(positions), spark.createDataFrame(balances)
    mes.backtest(_book(), p, b, prices, order="row", partitions=4, **options)  # warm the workers
    t2 = time.perf_counter()
    got = mes.backtest(_book(), p, b, prices, order="row", partitions=4, **options)
    t3 = time.perf_counter()
    dates = want.book.num_rows + 1
    assert got.accounts.column("exceedances").equals(want.accounts.column("exceedances"))
    print(f"{n} accounts x {dates} dates: in memory {1e3 * (t1 - t0) / dates:.1f} ms/date, "
          f"Spark local[2] {1e3 * (t3 - t2) / dates:.1f} ms/date (first run {t2 - t1:.1f} s, warm {t3 - t2:.1f} s)")
    spark.stop()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 2_000, int(sys.argv[2]) if len(sys.argv) > 2 else 40)
