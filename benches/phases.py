"""Where a margin call spends its time: median of each `MARGIN_ENGINE_TRACE` phase over several
calls on a generated book (the table of docs/profiling.md).

    python benches/phases.py                       # 1,000,000 accounts, standard model, all cores
    python benches/phases.py --accounts 100000 --model portfolio --threads 1 --calls 9

The calls run in a child process with `MARGIN_ENGINE_TRACE=1`; its stderr is parsed, one block of
phases per call, and the median of each phase printed (with the median of the whole call).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys

CHILD = r"""
import sys, time
import margin_engine as me
from margin_engine import synthetic
accounts, model, threads, calls = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
threads = None if threads == "all" else int(threads)
b = synthetic.generate(accounts, seed=7)
book = me.Book(b.instruments, b.assets, None, b.margin_tiers)
market = me.Market(b.index_prices, b.marks, b.valuation_time_ns)
me.margin(book, b.positions, b.balances, market, model=model, threads=threads)  # warm-up
print("@@ start", file=sys.stderr, flush=True)
for _ in range(calls):
    t = time.perf_counter()
    me.margin(book, b.positions, b.balances, market, model=model, threads=threads)
    print(f"@@ total {(time.perf_counter() - t) * 1e3:.1f}", file=sys.stderr, flush=True)
"""

LINE = re.compile(r"^\[margin-engine\]\s+([\d.]+) ms\s+(.+)$")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--accounts", type=int, default=1_000_000)
    ap.add_argument("--model", default="standard")
    ap.add_argument("--threads", default="all")
    ap.add_argument("--calls", type=int, default=7)
    args = ap.parse_args()
    env = dict(os.environ, MARGIN_ENGINE_TRACE="1")
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(args.accounts), args.model, args.threads, str(args.calls)],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    lines = proc.stderr.split("@@ start", 1)[1].splitlines()
    phases: dict[str, list[float]] = {}
    totals: list[float] = []
    for line in lines:
        if line.startswith("@@ total "):
            totals.append(float(line.split()[-1]))
        elif m := LINE.match(line.strip()):
            phases.setdefault(m.group(2), []).append(float(m.group(1)))
    print(f"{args.accounts:,} accounts, {args.model} model, threads={args.threads}, median of {args.calls} calls\n")
    print("| phase | median |\n|---|---:|")
    for name, values in phases.items():
        print(f"| {name} | {statistics.median(values):.1f} ms |")
    print(f"| **whole call (from Python)** | **{statistics.median(totals):.1f} ms** |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
