"""margin_engine.spark on a local Spark (local[2]): the same rows as the in-memory calls, bit for bit.

The inputs are Parquet files read back in several input partitions, with 997-row Arrow batches
and 4 shuffle partitions, so every large account straddles batch boundaries and (the skewed one
of 100,000 positions, and any account of the shuffled book) input-partition boundaries; small
``rows_per_slice`` values make each task cut its stream at many account boundaries. Results are
compared sorted by account_id with exact equality (``pa.Table.equals``), or in the in-memory
order with ``ordered=True``. Skipped without pyspark or without Java.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

pytest.importorskip("pyspark")


def _java_major() -> int:
    """The major version of the ``java`` Spark would start (0 when there is none)."""
    home = os.environ.get("JAVA_HOME")
    java = os.path.join(home, "bin", "java") if home else shutil.which("java")
    if not java or not os.path.exists(java):
        return 0
    out = subprocess.run([java, "-version"], capture_output=True, text=True, timeout=60)
    found = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
    if not found:
        return 0
    major = int(found[1])
    return int(found[2] or 0) if major == 1 else major  # "1.8.0" is Java 8


if _java_major() < 17:
    pytest.skip("pyspark 4 needs Java 17 or later", allow_module_level=True)

import margin_engine as me  # noqa: E402
from margin_engine import _distributed  # noqa: E402
from distributed_book import SKEWED_ROWS, as_spark_types, distributed_book  # noqa: E402

mes = pytest.importorskip("margin_engine.spark")

BATCH = 997
pytestmark = pytest.mark.filterwarnings("ignore:PySpark does not yet fully support pandas:FutureWarning")


@pytest.fixture(scope="module")
def spark():
    from pyspark.sql import SparkSession

    previous = os.environ.get("PYSPARK_PYTHON")
    os.environ["PYSPARK_PYTHON"] = sys.executable  # the workers import this interpreter's margin_engine
    session = (
        SparkSession.builder.master("local[2]")
        .appName("margin-engine-tests")
        .config("spark.ui.enabled", "false")
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.sql.adaptive.enabled", "false")  # keep the 4 partitions: their boundaries are tested
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", str(BATCH))
        .config("spark.sql.files.maxPartitionBytes", str(256 * 1024))  # several input partitions
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.driver.memory", "2g")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()
    if previous is None:
        os.environ.pop("PYSPARK_PYTHON", None)
    else:
        os.environ["PYSPARK_PYTHON"] = previous


def _frames(spark, tmp_path_factory, shuffled: bool):
    data = distributed_book(shuffled=shuffled)
    folder = tmp_path_factory.mktemp("shuffled" if shuffled else "sorted")
    pq.write_table(data.positions, folder / "positions.parquet", row_group_size=5_000)
    pq.write_table(data.balances, folder / "balances.parquet", row_group_size=1_000)
    positions = spark.read.parquet(str(folder / "positions.parquet"))
    balances = spark.read.parquet(str(folder / "balances.parquet"))
    return data, positions, balances


@pytest.fixture(scope="module")
def frames(spark, tmp_path_factory):
    return _frames(spark, tmp_path_factory, shuffled=False)


@pytest.fixture(scope="module")
def shuffled_frames(spark, tmp_path_factory):
    return _frames(spark, tmp_path_factory, shuffled=True)


def _sorted(table: pa.Table, *keys: str) -> pa.Table:
    return table.sort_by([(k, "ascending") for k in keys])


def test_inputs_straddle_batches_and_partitions(frames, shuffled_frames):
    """The inputs are what the other tests claim: several input partitions, the skewed account
    in more than one of them and in many batches; in the shuffled book, accounts of a few rows
    each in more than one input partition."""
    from pyspark.sql import functions as F

    data, positions, _ = frames
    assert positions.rdd.getNumPartitions() >= 3
    skewed = positions.filter(F.col("account_id") == data.skewed_account).select(F.spark_partition_id()).distinct()
    assert skewed.count() >= 2 and SKEWED_ROWS > 50 * BATCH
    data, shuffled, _ = shuffled_frames
    counts = pa.compute.value_counts(data.positions.column("account_id"))
    sample = [c["values"] for c in counts.to_pylist() if 5 <= c["counts"] <= 50][:40]
    spread = (
        shuffled.filter(F.col("account_id").isin(sample))
        .select("account_id", F.spark_partition_id().alias("p")).distinct()
        .groupBy("account_id").count().filter(F.col("count") >= 2).count()
    )  # fmt: skip
    assert spread >= len(sample) // 2


@pytest.mark.parametrize("model", ["standard", "portfolio"])
def test_margin_equals_in_memory(frames, model):
    data, positions, balances = frames
    want = me.margin(data.book, data.positions, data.balances, data.market, model=model)
    got = _sorted(mes.margin(data.book, positions, balances, data.market, model=model, partitions=4).toArrow(), "account_id")
    assert got.num_rows == want.num_rows
    assert got.equals(as_spark_types(want, got))
    skewed = got.filter(pa.compute.equal(got.column("account_id"), data.skewed_account))
    assert skewed.num_rows == 1 and skewed.column("initial_margin")[0].as_py() > 0


def test_margin_small_slices_and_order(shuffled_frames):
    """Rows in a random order (every account's fills scattered over the input partitions and
    summed in that order in memory), slices cut every 300 rows, ``ordered=True``: the in-memory
    table row for row."""
    data, positions, balances = shuffled_frames
    want = me.margin(data.book, data.positions, data.balances, data.market, model="portfolio")
    got = mes.margin(
        data.book, positions, balances, data.market, model="portfolio", partitions=3, rows_per_slice=300, ordered=True
    ).toArrow()
    assert got.equals(as_spark_types(want, got))


def test_liquidation_scan_under_stress_in_queue_order(frames):
    data, positions, balances = frames
    stress = {"BTC": -0.18, "ETH": 0.07}
    want = me.liquidation_scan(data.book, data.positions, data.balances, data.market, model="portfolio", stress=stress)
    got = mes.liquidation_scan(
        data.book, positions, balances, data.market, model="portfolio", stress=stress, partitions=4, ordered=True
    ).toArrow()
    assert got.equals(as_spark_types(want, got))
    assert set(got.column("status").to_pylist()) >= {"bankrupt", "liquidatable", "healthy"}


def test_liquidation_scan_distance(frames):
    data, positions, balances = frames
    want = me.liquidation_scan(data.book, data.positions, data.balances, data.market, distance=True)
    # partitions=None: spark.sql.shuffle.partitions (4 here)
    got = mes.liquidation_scan(data.book, positions, balances, data.market, distance=True, rows_per_slice=2_000)
    got = _sorted(got.toArrow(), "account_id")
    assert got.equals(as_spark_types(_sorted(want, "account_id"), got))
    assert got.column("nearest_underlying").null_count < got.num_rows


def test_greeks_equal_in_memory(spark, shuffled_frames):
    """Also with Spark's large Arrow string types (the tasks then see and return large_utf8)."""
    data, positions, _ = shuffled_frames
    want = me.greeks(data.book, data.positions, data.market)
    got = mes.greeks(data.book, positions, data.market, partitions=4, rows_per_slice=1_000, ordered=True).toArrow()
    assert got.equals(as_spark_types(want, got))
    spark.conf.set("spark.sql.execution.arrow.useLargeVarTypes", "true")
    try:
        got = mes.greeks(data.book, positions, data.market, partitions=2, ordered=True).toArrow()
    finally:
        spark.conf.unset("spark.sql.execution.arrow.useLargeVarTypes")
    assert got.cast(as_spark_types(want, got).schema).equals(as_spark_types(want, got))


def test_book_and_market_built_once_per_worker(spark, frames):
    """Many batches and slices per task, yet each Python worker built the book once."""
    data, positions, balances = frames
    mes.margin(data.book, positions, balances, data.market, partitions=4, rows_per_slice=500).count()
    digest = mes._ship(spark, {None: data.book}, {None: data.market}).digest  # the broadcast is reused: same digest

    def stats(batches):
        for _ in batches:
            pass
        from margin_engine import _distributed

        s = _distributed.worker_stats(digest)
        yield pa.record_batch({"pid": [s["pid"]], "builds": [s["builds"]]})

    rows = spark.range(0, 8, numPartitions=8).mapInArrow(stats, "pid long, builds long").collect()
    builds = {r.pid: r.builds for r in rows}
    assert max(builds.values()) == 1, builds  # never rebuilt per batch or per task


def test_bad_input_at_the_call(frames):
    data, positions, balances = frames
    with pytest.raises(me.MarginInputError, match=r"positions\.quantity: missing column"):
        mes.margin(data.book, positions.drop("quantity"), balances, data.market)
    with pytest.raises(me.MarginInputError, match=r"balances\.amount: Spark type string"):
        mes.margin(data.book, positions, balances.withColumn("amount", balances.amount.cast("string")), data.market)
    with pytest.raises(me.MarginInputError, match=r"positions\.quantity: Spark type decimal\(18,6\)"):
        mes.margin(data.book, positions.withColumn("quantity", positions.quantity.cast("decimal(18,6)")), balances, data.market)
    with pytest.raises(me.MarginInputError, match=r"arguments\.model"):
        mes.margin(data.book, positions, balances, data.market, model="spam")
    with pytest.raises(me.MarginInputError, match=r"arguments\.rows_per_slice"):
        mes.margin(data.book, positions, balances, data.market, rows_per_slice=0)
    with pytest.raises(me.MarginInputError, match=r"arguments\.distance"):
        mes.liquidation_scan(data.book, positions, balances, data.market, distance=True, stress={"BTC": 0.1})
    with pytest.raises(me.MarginInputError, match=r"positions\.\*: expected a Spark DataFrame"):
        mes.greeks(data.book, data.positions, data.market)


def test_bad_value_names_the_engine_error_and_the_accounts(spark, frames):
    from pyspark.errors import PythonException
    from pyspark.sql import functions as F

    data, positions, balances = frames
    bad = positions.withColumn(
        "instrument", F.when(F.col("account_id") == data.skewed_account, F.lit("NO-SUCH")).otherwise(F.col("instrument"))
    )
    with pytest.raises(PythonException, match=rf"MarginInputError: positions\.instrument: unknown instrument.*'NO-SUCH' \(account {data.skewed_account}\).*\[in accounts "):
        mes.margin(data.book, bad, balances, data.market, partitions=2).collect()


def test_slices_cut_at_account_boundaries():
    """The task's slicing on its own: random sorted ids in random batch sizes; every slice ends
    where an account ends, holds at least ``rows_per_slice`` rows unless it is the last, and
    the slices are the stream."""
    rng = np.random.default_rng(5)
    for trial in range(40):
        counts = rng.geometric(0.3 if trial % 2 else 0.01, size=int(rng.integers(1, 60)))
        ids = np.repeat(np.arange(len(counts)) * 3, counts).astype(np.int64)
        bounds = np.unique(np.r_[0, np.sort(rng.integers(0, len(ids), size=int(rng.integers(0, 30)))), len(ids)])
        batches = [pa.record_batch({"account_id": ids[a:b], "x": np.arange(a, b)}) for a, b in zip(bounds[:-1], bounds[1:])]
        batches.insert(len(batches) // 2, batches[0].slice(0, 0))  # an empty batch
        rows = int(rng.integers(1, 50))
        job = mes._Job("margin", _distributed.Shipped(b"", ""), (), (), (), pa.schema([]), rows)
        slices = list(mes._slices(iter(batches), job))
        joined = pa.concat_tables(slices)
        assert joined.column("x").to_pylist() == list(range(len(ids)))
        owners = {}
        for i, s in enumerate(slices):
            assert s.num_rows > 0
            for account in set(s.column("account_id").to_pylist()):
                assert owners.setdefault(account, i) == i  # an account lies in one slice


def _dated(data, days: int = 3):
    """Three dates: the market moved (index and marks × a factor, a day later each) and, on the
    last, the book's BTC scan range widened (the portfolio model reads it)."""
    import datetime as dt

    dated = {}
    for i, factor in enumerate([1.0, 0.93, 1.06][:days]):
        day = dt.date(2026, 11, 25) + dt.timedelta(days=i)
        idx, marks = data.market.index_prices, data.market.marks
        idx = idx.set_column(idx.schema.get_field_index("index_price"), "index_price", pa.compute.multiply(idx.column("index_price"), factor))
        marks = marks.set_column(marks.schema.get_field_index("mark_price"), "mark_price", pa.compute.multiply(marks.column("mark_price"), factor))
        market = me.Market(idx, marks, data.market.valuation_time_ns + i * 86_400 * 10**9)
        book = data.book
        if i == days - 1:
            risk = pa.table({"underlying": ["BTC"], "price_range": [0.2]})
            book = me.Book(book.instruments, book.assets, risk, book.margin_tiers)
        dated[day] = (book, market)
    return dated


def test_margin_by_date_held_constant(frames):
    """Positions without a date column: every account at every date, each date equal to the
    in-memory call on that date's book and market."""
    data, positions, balances = frames
    dated = _dated(data)
    got = mes.margin_by_date(dated, positions, balances, model="portfolio", partitions=4, rows_per_slice=5_000, ordered=True).toArrow()
    assert got.column_names[0] == "date"
    for day, (book, market) in dated.items():
        want = me.margin(book, data.positions, data.balances, market, model="portfolio")
        rows = got.filter(pa.compute.equal(got.column("date"), pa.scalar(day))).drop_columns(["date"])
        assert rows.equals(as_spark_types(want, rows)), day
    assert got.num_rows == 3 * want.num_rows


def test_margin_by_date_daily_snapshots(spark, frames):
    """Positions and balances with a date column (each date its own rows, here a different
    subset of accounts per date, the skewed account on every date)."""
    data, _, _ = frames
    dated = _dated(data)
    p_days, b_days, wants = [], [], {}
    ids = data.positions.column("account_id")
    for i, (day, (book, market)) in enumerate(dated.items()):
        keep_p = pa.compute.or_(pa.compute.not_equal(pa.compute.bit_wise_and(ids, 3), i), pa.compute.equal(ids, data.skewed_account))
        p = data.positions.filter(keep_p)
        b = data.balances.filter(pa.compute.not_equal(pa.compute.bit_wise_and(data.balances.column("account_id"), 3), i))
        wants[day] = me.margin(book, p, b, market)
        p_days.append(p.append_column("date", pa.array([day] * p.num_rows, pa.date32())))
        b_days.append(b.append_column("date", pa.array([day] * b.num_rows, pa.date32())))
    positions = spark.createDataFrame(pa.concat_tables(p_days))
    balances = spark.createDataFrame(pa.concat_tables(b_days))
    got = mes.margin_by_date(dated, positions, balances, partitions=3).toArrow()
    for day, want in wants.items():
        rows = got.filter(pa.compute.equal(got.column("date"), pa.scalar(day))).drop_columns(["date"])
        assert _sorted(rows, "account_id").equals(as_spark_types(want, rows)), day
    # balances held constant (no date column: replicated to every date) beside daily positions;
    # the third date's positions have no book and market
    missing = dict(list(dated.items())[:2])
    with pytest.raises(Exception, match=r"MarginInputError: positions\.date: no book and market"):
        mes.margin_by_date(missing, positions, balances.drop("date"), partitions=2).collect()


def test_order_column_restores_the_in_memory_order(spark, shuffled_frames):
    """A DataFrame whose own order is not the in-memory table's (here reversed) with an
    ``order`` column giving that order: the sums follow the column, the rows equal in memory."""
    data, _, _ = shuffled_frames

    def reversed_frame(table):
        table = table.append_column("row", pa.array(np.arange(table.num_rows), pa.int64()))
        return spark.createDataFrame(table.take(pa.array(np.arange(table.num_rows)[::-1])))

    positions, balances = reversed_frame(data.positions), reversed_frame(data.balances)
    want = me.margin(data.book, data.positions, data.balances, data.market, model="portfolio")
    got = mes.margin(data.book, positions, balances, data.market, model="portfolio", order="row", partitions=3, ordered=True)
    assert got.toArrow().equals(as_spark_types(want, got.toArrow()))


def _bit_equal(a: pa.Table, b: pa.Table) -> bool:
    """Same schema and values, floats compared by their bits (the summary's NaNs included)."""
    if a.schema != b.schema:
        return False
    for x, y in zip(a.columns, b.columns):
        if pa.types.is_floating(x.type):
            if not np.array_equal(x.to_numpy().view(np.int64), y.to_numpy().view(np.int64)):
                return False
        elif not x.equals(y):
            return False
    return True


def test_backtest_equals_in_memory(spark):
    """``mes.backtest`` (accounts in Spark, every date in one margin_by_date job) equals
    ``me.backtest`` on the same inputs bit for bit: the per-date book series, the per-account
    exceedances and the summary's Kupiec and Christoffersen statistics. 80 accounts of perpetuals
    and a short call, some entry prices missing (filled from the first close), over ~40 daily
    dates; the input read in 3 partitions and shuffled into 4, so accounts straddle partitions."""
    import pyarrow.compute as pc

    from test_backtest import DAILY, _book

    prices = pq.read_table(DAILY).filter(pc.is_in(pc.field("symbol"), pa.array(["BTC", "ETH"])))
    rng = np.random.default_rng(5)
    n = 80
    rows = 3 * n
    accounts = np.repeat(np.arange(1, n + 1, dtype=np.uint64), 3)
    positions = pa.table({
        "account_id": accounts,
        "instrument": rng.choice(["BTC-PERP", "ETH-PERP", "BTC-C"], rows).tolist(),
        "quantity": np.round(rng.normal(0, 2, rows), 3),
        "entry_price": pa.array([None if rng.random() < 0.5 else float(rng.uniform(20_000, 40_000)) for _ in range(rows)], pa.float64()),
    })  # fmt: skip
    balances = pa.table({"account_id": np.arange(1, n + 1, dtype=np.uint64),
                         "asset": rng.choice(["USD", "BTC"], n).tolist(), "amount": rng.uniform(1, 200_000, n)})  # fmt: skip
    options = dict(horizon="1d", confidence=0.99, method="fhs", lookback="3y", start="2023-01-01", end="2023-02-10")
    want = me.backtest(_book(), positions, balances, prices, **options)
    ticks = []
    signed = pa.field("account_id", pa.int64())
    # repartition(3) scatters the rows: the `row` column gives the in-memory netting order back
    p = positions.cast(pa.schema([signed, *list(positions.schema)[1:]])).append_column("row", pa.array(np.arange(rows)))
    p = spark.createDataFrame(p).repartition(3)
    b = spark.createDataFrame(balances.cast(pa.schema([signed, *list(balances.schema)[1:]])))
    got = mes.backtest(_book(), p, b, prices, partitions=4, rows_per_slice=50, order="row",
                       progress=lambda done, total: ticks.append((done, total)), **options)  # fmt: skip
    assert want.book.num_rows >= 35 and ticks[-1][0] == ticks[-1][1] == want.book.num_rows + 1
    for part in ("book", "accounts", "summary", "dates"):
        assert _bit_equal(getattr(got, part), getattr(want, part)), part
    assert got.skipped == want.skipped
    assert sum(got.book.column("exceeding_accounts").to_pylist()) > 0  # the comparison covers exceedances


def test_backtest_drops_unpriced_rows_as_in_memory(spark):
    """``unpriced="drop"`` on Spark leaves out the same position rows (an underlying without a
    history) and gives the same bits; a table name reads the Spark table."""
    import pyarrow.compute as pc

    from test_backtest import DAILY, _book

    base = _book()
    sol = pa.table({"instrument": ["SOL-PERP"], "kind": ["perpetual"], "underlying": ["SOL"], "multiplier": [1.0],
                    "initial_margin_rate": [0.02], "maintenance_margin_rate": [0.01]})  # fmt: skip
    book = me.Book(pa.concat_tables([base.instruments, sol], promote_options="default"), base.assets)
    prices = pq.read_table(DAILY).filter(pc.is_in(pc.field("symbol"), pa.array(["BTC", "ETH"])))
    positions = pa.table({"account_id": [1, 1, 2, 3, 3], "instrument": ["BTC-PERP", "SOL-PERP", "ETH-PERP", "SOL-PERP", "BTC-C"],
                          "quantity": [1.0, 5.0, -3.0, 2.0, -1.0]})  # fmt: skip
    balances = pa.table({"account_id": [1, 2, 3], "asset": ["USD", "USD", "BTC"], "amount": [5e4, 1e4, 2.0]})
    options = dict(horizon="1d", lookback="3y", start="2023-03-01", end="2023-03-12", unpriced="drop")
    want = me.backtest(book, positions, balances, prices, **options)
    spark.createDataFrame(positions).createOrReplaceTempView("bt_positions")
    got = mes.backtest(book, "bt_positions", spark.createDataFrame(balances), prices, partitions=2, **options)
    assert got.dropped == want.dropped == {"underlyings": ["SOL"], "positions": 2}
    for part in ("book", "accounts", "summary"):
        assert _bit_equal(getattr(got, part), getattr(want, part)), part
