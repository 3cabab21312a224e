"""Peak memory (max RSS) of a margin run on a book read from Parquet, against the size of its
input tables.

    python benches/peak_memory.py                       # 1M accounts, both models
    python benches/peak_memory.py --accounts 100000 --json out/peak_memory.json

Writes the book once with ``python -m margin_engine.cli generate`` (unless ``--book`` already
holds one), then measures, each in a fresh process under GNU ``/usr/bin/time -v``:

- ``import``: the interpreter with margin_engine (and pyarrow, numpy) imported;
- ``read``: the same plus ``me.io.read_book(dir)`` and ``Book``/``Market`` (holding the book);
- ``standard`` / ``portfolio``: the same plus ``me.margin(...)`` on that book.

The book is read from Parquet because generating it allocates far more than it keeps. The
figures printed: the tables' in-memory size (``BookTables.nbytes``), the Parquet size on disk,
max RSS of each run (from ``time -v``), the high-water mark just before the margin call
(``VmHWM`` from /proc), and margin wall time. ``--json`` also writes them for
``benches/report.py --memory``.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, sys, time
import margin_engine as me
import margin_engine.io

def status_kib(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])

def hwm_kib():
    return status_kib("VmHWM")

def reset_hwm():
    try:  # Linux >= 4.0: writing 5 resets the peak RSS (VmHWM) to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False

directory, model, threads = sys.argv[1], sys.argv[2], (None if sys.argv[3] == "all" else int(sys.argv[3]))
out = {"model": model}
if model == "import":
    out["hwm_before_margin_kib"] = hwm_kib()
    print("RESULT " + json.dumps(out))
    sys.exit(0)
t = time.perf_counter()
tables = me.io.read_book(directory)
book, market = tables.book(), tables.market()
out["read_seconds"] = time.perf_counter() - t
out["nbytes"] = tables.nbytes
out["positions_rows"] = tables.positions.num_rows
out["balances_rows"] = tables.balances.num_rows
out["hwm_before_margin_kib"] = hwm_kib()
if model != "read":
    reset = reset_hwm()
    out["rss_before_margin_kib"] = status_kib("VmRSS")
    t = time.perf_counter()
    result = me.margin(book, tables.positions, tables.balances, market, model=model, threads=threads)
    out["margin_seconds"] = time.perf_counter() - t
    if reset:  # the margin call's own peak: high-water mark since the reset, over RSS before it
        out["margin_peak_kib"] = hwm_kib() - out["rss_before_margin_kib"]
    out["accounts"] = result.num_rows
    out["result_nbytes"] = result.nbytes
print("RESULT " + json.dumps(out))
"""


def gnu_time() -> str:
    path = "/usr/bin/time" if Path("/usr/bin/time").exists() else shutil.which("time")
    if not path:
        sys.exit("GNU time not found: apt-get install -y time")
    return path


def ensure_book(directory: Path, accounts: int) -> None:
    if (directory / "meta.json").exists() and (directory / "positions.parquet").exists():
        return
    subprocess.run(
        [sys.executable, "-m", "margin_engine.cli", "generate", "--accounts", str(accounts), "--out", str(directory)],
        check=True,
    )


def measure(directory: Path, model: str, threads: str) -> dict:
    proc = subprocess.run(
        [gnu_time(), "-v", sys.executable, "-c", CHILD, str(directory), model, threads],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        sys.exit(f"{model}: failed\n{proc.stdout}\n{proc.stderr}")
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    out = json.loads(line[len("RESULT "):])
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", proc.stderr)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): (\S+)", proc.stderr)
    out["max_rss_kib"] = int(rss.group(1)) if rss else None
    out["process_wall"] = wall.group(1) if wall else None
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--accounts", type=int, default=1_000_000)
    ap.add_argument("--book", type=Path, default=None, help="book directory (default /tmp/margin-engine-book-<N>)")
    ap.add_argument("--models", nargs="+", default=["standard", "portfolio"])
    ap.add_argument("--threads", default="all", help="engine threads (default: all cores)")
    ap.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    args = ap.parse_args(argv)

    directory = args.book or Path(f"/tmp/margin-engine-book-{args.accounts}")
    ensure_book(directory, args.accounts)
    parquet_bytes = sum(p.stat().st_size for p in directory.glob("*.parquet"))

    runs = [measure(directory, m, args.threads) for m in ("import", "read", *args.models)]
    floor, base = runs[0], runs[1]
    mib = 1024 * 1024
    nbytes = base["nbytes"]
    for r in runs:
        r.setdefault("nbytes", nbytes)
    print(f"book: {directory}  ({base['positions_rows']:,} position rows, {base['balances_rows']:,} balance rows)")
    print(f"input tables in memory (BookTables.nbytes): {nbytes / mib:8.1f} MiB")
    print(f"Parquet on disk:                            {parquet_bytes / mib:8.1f} MiB")
    print(f"{'run':<10} {'max RSS':>12} {'- import':>12} {'/ input':>8} {'- read':>12} {'margin s':>9} {'margin peak':>14}")
    for r in runs:
        rss = r["max_rss_kib"] * 1024
        above_import = rss - floor["max_rss_kib"] * 1024
        above_read = rss - base["max_rss_kib"] * 1024
        secs = r.get("margin_seconds")
        print(
            f"{r['model']:<10} {rss / mib:8.1f} MiB {above_import / mib:8.1f} MiB {above_import / nbytes:7.2f}x "
            f"{above_read / mib:8.1f} MiB {'' if secs is None else f'{secs:9.3f}'}"
            + (f" {r['margin_peak_kib'] / 1024:10.1f} MiB" if "margin_peak_kib" in r else "")
        )
    print("(- import: RSS above the interpreter with margin_engine imported; / input: that, over the"
          " input tables' nbytes; - read: RSS above the read-only run; margin peak: the margin call's own"
          " peak RSS above the RSS just before it, from VmHWM reset through /proc/self/clear_refs)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "accounts": args.accounts,
            "book": str(directory),
            "threads": args.threads,
            "nbytes": nbytes,
            "positions_rows": base["positions_rows"],
            "balances_rows": base["balances_rows"],
            "parquet_bytes": parquet_bytes,
            "runs": runs,
        }, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
