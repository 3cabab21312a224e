"""Streaming a book larger than a comfortable in-memory run: peak RSS of
``margin-engine run DIR --stream --out results.parquet`` on a 20,000,000-account book.

    python benches/stream_memory.py                          # 20M accounts (~200M position rows)
    python benches/stream_memory.py --accounts 2000000 --json benches/results/stream.json

The book is built once under ``--dir`` (default ``benches/results/stream-book``, ~3 GB for 20M):
a generated 1,000,000-account block (``synthetic.generate``) is written ``accounts / 1M`` times
with account ids shifted past the previous block, so the Parquet files are sorted by account as
streaming requires. Every block has the same rows, so its results are the same — this measures
memory and throughput, not model variety. The run itself is a fresh process under GNU
``/usr/bin/time -v``; its max RSS is the figure. For comparison the script also reports the
in-memory size the positions and balances would have as Arrow tables.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

BLOCK = 1_000_000


def build(directory: Path, accounts: int) -> tuple[int, int, int]:
    """Writes the book; returns (position rows, balance rows, Arrow bytes of both tables)."""
    from margin_engine import synthetic
    from margin_engine.io import BookTables, write_book

    g = synthetic.generate(min(accounts, BLOCK), seed=2026)
    write_book(
        BookTables(
            instruments=g.instruments, assets=g.assets, positions=g.positions.slice(0, 0),
            balances=g.balances.slice(0, 0), index_prices=g.index_prices, marks=g.marks,
            valuation_time=g.valuation_time, margin_tiers=g.margin_tiers,
        ),
        directory,
    )  # fmt: skip
    blocks = max(1, accounts // BLOCK)
    span = int(pc.max(g.positions.column("account_id")).as_py()) + 1  # ids of block k are shifted by k × span
    rows = [0, 0]
    nbytes = 0
    for i, (name, table) in enumerate((("positions", g.positions), ("balances", g.balances))):
        with pq.ParquetWriter(directory / f"{name}.parquet", table.schema) as writer:
            for k in range(blocks):
                shifted = table.set_column(0, "account_id", pc.add(table.column("account_id"), pa.scalar(k * span, pa.uint64())))
                writer.write_table(shifted, row_group_size=1 << 20)
                rows[i] += shifted.num_rows
                nbytes += shifted.nbytes
                print(f"  {name}: block {k + 1}/{blocks}", file=sys.stderr, flush=True)
    return rows[0], rows[1], nbytes


def run(directory: Path, model: str) -> dict[str, float]:
    out = directory / f"results-{model}.parquet"
    cmd = ["/usr/bin/time", "-v", sys.executable, "-m", "margin_engine.cli", "run", str(directory), "--stream", "--model", model, "--out", str(out)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - t0
    rss_kib = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr).group(1))
    print(proc.stdout.strip())
    accounts = pq.ParquetFile(out).metadata.num_rows
    return {"wall_s": wall, "max_rss_mib": rss_kib / 1024, "accounts": accounts, "summary": proc.stdout.strip()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--accounts", type=int, default=20_000_000)
    ap.add_argument("--dir", type=Path, default=Path("benches/results/stream-book"))
    ap.add_argument("--models", default="standard,portfolio")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--reuse", action="store_true", help="the book in --dir was built by an earlier run with the same --accounts")
    args = ap.parse_args()
    args.dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    if args.reuse:
        position_rows = pq.ParquetFile(args.dir / "positions.parquet").metadata.num_rows
        balance_rows = pq.ParquetFile(args.dir / "balances.parquet").metadata.num_rows
        previous = json.loads(args.json.read_text()) if args.json and args.json.exists() else {}
        nbytes = previous.get("arrow_bytes_of_rows", 0)
    else:
        position_rows, balance_rows, nbytes = build(args.dir, args.accounts)
    built = previous.get("build_s", 0.0) if args.reuse else time.perf_counter() - t0
    on_disk = sum(f.stat().st_size for f in args.dir.glob("*.parquet") if not f.name.startswith("results-"))
    report = {
        "accounts": args.accounts, "position_rows": position_rows, "balance_rows": balance_rows,
        "arrow_bytes_of_rows": nbytes, "parquet_bytes": on_disk, "build_s": built, "runs": {},
    }  # fmt: skip
    print(f"book: {args.accounts:,} accounts, {position_rows:,} position rows, {balance_rows:,} balance rows; "
          f"{nbytes / 2**30:.2f} GiB as Arrow, {on_disk / 2**30:.2f} GiB Parquet (built in {built:.0f} s)")  # fmt: skip
    for model in args.models.split(","):
        r = run(args.dir, model)
        report["runs"][model] = r
        print(f"{model}: {r['accounts']:,} accounts in {r['wall_s']:.1f} s "
              f"({position_rows / r['wall_s'] / 1e6:.1f}M position rows/s end to end), max RSS {r['max_rss_mib']:,.0f} MiB")  # fmt: skip
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
