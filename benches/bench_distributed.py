"""The generated book in Parquet margined five ways: in memory, streamed (``margin-engine run
--stream``), on Spark local[2] and on Dask's local threaded scheduler; the overhead of each
against the in-memory engine, and the stages of the Spark run. Not part of ``make test`` or
``make bench`` (a standalone script: a Spark session and a 1M-account book take minutes).

    .venv/bin/python benches/bench_distributed.py                 # 1,000,000 accounts
    BENCH_ACCOUNTS=10000000 .venv/bin/python benches/bench_distributed.py
    BENCH_DIR=/tmp/book-1m  (where the Parquet book is written and reused; default: a temp dir)
    BENCH_MODELS=standard,portfolio   BENCH_PARTITIONS=8   BENCH_OUT=benches/results/distributed.json

What is timed (wall clock, best of ``BENCH_REPEAT`` runs, default 1; the machine's load average
is printed beside, since these runs share it):

- ``in_memory``: ``pq.read_table`` of both tables, then one ``me.margin`` call (both also alone;
  then the call again on one thread and on all, ``margin_again``: the first call of a process
  pays for memory it touches for the first time);
- ``stream``: the CLI, ``margin-engine run BOOK --stream --out FILE`` in a subprocess (its
  interpreter start, reading, margining, writing the results);
- ``spark``: ``spark.read.parquet`` → ``margin_engine.spark.margin`` → the ``noop`` sink (every
  row computed, nothing written), session start excluded and measured apart; then the stages of
  the same plan, each alone through the ``noop`` sink: the scan and tagging, + the hash shuffle
  and sort, + the Arrow hand-off to Python workers (a ``mapInArrow`` that reads every batch and
  returns one row), the rest being the engine and its results' way back;
- ``dask``: ``dd.read_parquet`` → ``margin_engine.dask.margin`` → ``compute()``.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

import margin_engine as me
from margin_engine import synthetic

ACCOUNTS = int(os.environ.get("BENCH_ACCOUNTS", "1000000"))
MODELS = os.environ.get("BENCH_MODELS", "standard").split(",")
PARTITIONS = int(os.environ.get("BENCH_PARTITIONS", "8"))
REPEAT = int(os.environ.get("BENCH_REPEAT", "1"))
OUT = os.environ.get("BENCH_OUT")
ONLY = set(filter(None, os.environ.get("BENCH_ONLY", "").split(",")))  # e.g. "spark": skip the others


def wanted(name: str) -> bool:
    return not ONLY or name in ONLY


def load() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def timed(label: str, fn: Callable[[], Any], results: dict[str, Any]) -> Any:
    best, value = float("inf"), None
    for _ in range(REPEAT):
        start = time.perf_counter()
        value = fn()
        best = min(best, time.perf_counter() - start)
    results[label] = round(best, 3)
    print(f"  {label:42s} {best:9.2f} s   (load {load()})", flush=True)
    return value


def book_dir() -> pathlib.Path:
    """The generated book of ``ACCOUNTS`` accounts in Parquet. Above 1M accounts it is built as
    ``benches/stream_memory.py`` builds its books: the 1M-account book (seed 2026) repeated with
    account ids shifted block by block, written row group by row group (generating 10M accounts
    at once would not fit this machine's memory)."""
    folder = pathlib.Path(os.environ.get("BENCH_DIR") or tempfile.mkdtemp(prefix=f"book-{ACCOUNTS}-"))
    meta = folder / "meta.json"
    if not meta.exists():
        print(f"generating {ACCOUNTS:,} accounts into {folder}", flush=True)
        if ACCOUNTS <= 1_000_000:
            synthetic.generate(ACCOUNTS).write_parquet(folder)
        else:
            sys.path.insert(0, str(pathlib.Path(__file__).parent))
            from stream_memory import build

            build(folder, ACCOUNTS)
    m = json.loads(meta.read_text())
    if "valuation_time_ns" not in m:  # a book written by margin_engine.io.write_book
        from datetime import datetime

        m["valuation_time_ns"] = int(datetime.fromisoformat(m["valuation_time"]).timestamp()) * 10**9
        partial = meta.with_suffix(".json.partial")  # renamed into place whole
        partial.write_text(json.dumps(m, indent=2) + "\n")
        partial.replace(meta)
    return folder


def engine_objects(folder: pathlib.Path) -> tuple[me.Book, me.Market]:
    tables = {n: pq.read_table(folder / f"{n}.parquet") for n in ("instruments", "assets", "margin_tiers", "index_prices", "marks")}
    meta = json.loads((folder / "meta.json").read_text())
    book = me.Book(tables["instruments"], tables["assets"], None, tables["margin_tiers"])
    return book, me.Market(tables["index_prices"], tables["marks"], int(meta["valuation_time_ns"]))


def in_memory(folder: pathlib.Path, book: me.Book, market: me.Market, model: str, r: dict[str, Any]) -> pa.Table:
    p, b = timed("in_memory.read", lambda: (pq.read_table(folder / "positions.parquet"), pq.read_table(folder / "balances.parquet")), r)
    r["rows"] = p.num_rows
    result = timed("in_memory.margin", lambda: me.margin(book, p, b, market, model=model), r)
    timed("in_memory.margin_1_thread", lambda: me.margin(book, p, b, market, model=model, threads=1), r)
    # the process's first call pays for memory it touches for the first time (docs/distributed.md)
    timed("in_memory.margin_again", lambda: me.margin(book, p, b, market, model=model), r)
    r["in_memory"] = round(r["in_memory.read"] + r["in_memory.margin"], 3)
    return result


def stream(folder: pathlib.Path, model: str, r: dict[str, Any]) -> None:
    out = folder / f"stream-{model}.parquet"
    cmd = [sys.executable, "-m", "margin_engine.cli", "--quiet", "run", str(folder), "--stream", "--model", model, "--out", str(out)]
    timed("stream", lambda: subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL), r)


def spark_session() -> Any:
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    from pyspark.sql import SparkSession

    session = (
        SparkSession.builder.master("local[2]")
        .config("spark.ui.enabled", "true")  # its REST API on localhost gives the stage metrics
        .config("spark.ui.port", os.environ.get("BENCH_SPARK_UI_PORT", "4047"))
        .config("spark.driver.memory", "6g")
        .config("spark.sql.shuffle.partitions", str(PARTITIONS))
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "100000")
        .getOrCreate()
    )
    session.sparkContext.setLogLevel("ERROR")
    return session


def spark_stages(spark: Any) -> list[dict[str, Any]]:
    import urllib.request

    url = f"{spark.sparkContext.uiWebUrl}/api/v1/applications/{spark.sparkContext.applicationId}/stages"
    with urllib.request.urlopen(url) as response:  # the local driver's own UI (loopback)
        return json.load(response)


def spark_runs(spark: Any, folder: pathlib.Path, book: me.Book, market: me.Market, model: str, r: dict[str, Any]) -> None:
    import margin_engine.spark as mes

    positions = spark.read.parquet(str(folder / "positions.parquet"))
    balances = spark.read.parquet(str(folder / "balances.parquet"))
    r["spark.input_partitions"] = positions.rdd.getNumPartitions()

    def noop(df: Any) -> None:
        df.write.format("noop").mode("overwrite").save()

    noop(mes.margin(book, positions, balances, market, model=model, partitions=PARTITIONS))  # warm the workers
    before = {s["stageId"] for s in spark_stages(spark)}
    timed("spark", lambda: noop(mes.margin(book, positions, balances, market, model=model, partitions=PARTITIONS)), r)
    # per-stage executor time and shuffle volume of that run, from the UI's REST API
    for s in spark_stages(spark):
        if s["stageId"] in before or s["status"] != "COMPLETE" or s["numTasks"] == 0:
            continue
        kind = "map" if s["shuffleWriteBytes"] else "reduce"
        r[f"spark.{kind}.tasks"] = s["numTasks"]
        r[f"spark.{kind}.executor_seconds"] = round(s["executorRunTime"] / 1000, 3)
        r[f"spark.{kind}.seconds_per_task"] = round(s["executorRunTime"] / 1000 / s["numTasks"], 3)
        if s["shuffleWriteBytes"]:
            r["spark.shuffle_write_bytes"] = s["shuffleWriteBytes"]
            r["spark.shuffle_write_records"] = s["shuffleWriteRecords"]
            r["spark.shuffle_bytes_per_row"] = round(s["shuffleWriteBytes"] / s["shuffleWriteRecords"], 2)
    # the stages of the same plan, each through the noop sink
    p_cols, b_cols = mes._own_columns(positions, None), mes._own_columns(balances, None)
    tagged = mes._tagged(positions, mes._POSITION, mes._P, None, None, p_cols).unionByName(
        mes._tagged(balances, mes._BALANCE, mes._B, None, None, b_cols), allowMissingColumns=True
    )
    timed("spark.stage.scan_and_tag", lambda: noop(tagged), r)
    shuffled = tagged.repartition(PARTITIONS, "account_id").sortWithinPartitions("account_id", mes._TAG, mes._SEQ)
    timed("spark.stage.+shuffle_and_sort", lambda: noop(shuffled), r)

    def consume(batches):  # the rows reach Python as Arrow; nothing comes back
        rows = sum(batch.num_rows for batch in batches)
        yield pa.record_batch({"rows": pa.array([rows], pa.int64())})

    timed("spark.stage.+arrow_to_python", lambda: noop(shuffled.mapInArrow(consume, "rows long")), r)
    # the shuffle's volume, from the stream's own size (Spark writes it compressed)
    r["spark.shuffle_rows"] = shuffled.count()
    r["spark.stream_columns"] = len(shuffled.columns)


def dask_run(folder: pathlib.Path, book: me.Book, market: me.Market, model: str, r: dict[str, Any]) -> None:
    import dask.dataframe as dd

    import margin_engine.dask as med

    def run() -> Any:
        positions = dd.read_parquet(folder / "positions.parquet", split_row_groups=True)
        balances = dd.read_parquet(folder / "balances.parquet", split_row_groups=True)
        return med.margin(book, positions, balances, market, model=model, partitions=PARTITIONS).compute()

    result = timed("dask", run, r)
    r["dask.rows"] = len(result)


def main() -> None:
    folder = book_dir()
    book, market = engine_objects(folder)
    report: dict[str, Any] = {"accounts": ACCOUNTS, "partitions": PARTITIONS, "cpus": os.cpu_count(), "models": {}}
    spark = None
    try:
        start = time.perf_counter()
        spark = spark_session()
        report["spark.session_start"] = round(time.perf_counter() - start, 3)
        print(f"spark session started in {report['spark.session_start']:.1f} s", flush=True)
    except Exception as e:  # noqa: BLE001 - no Java or no pyspark: the other columns still run
        print(f"spark unavailable: {e}", flush=True)
    for model in MODELS:
        print(f"{model} model, {ACCOUNTS:,} accounts", flush=True)
        r: dict[str, Any] = {}
        in_memory(folder, book, market, model, r)
        if wanted("stream"):
            stream(folder, model, r)
        if spark is not None and wanted("spark"):
            spark_runs(spark, folder, book, market, model, r)
        try:
            if wanted("dask"):
                dask_run(folder, book, market, model, r)
        except ImportError as e:
            print(f"dask unavailable: {e}", flush=True)
        base = r["in_memory"]
        for label in ("stream", "spark", "dask"):
            if label in r:
                r[f"{label}.overhead_x"] = round(r[label] / base, 2)
                print(f"  {label:42s} {r[label] / base:9.2f} x in-memory (read + margin)", flush=True)
        report["models"][model] = r
    report["load_after"] = load()
    if OUT:
        pathlib.Path(OUT).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    if spark is not None:
        spark.stop()


if __name__ == "__main__":
    main()
