"""A/B of two builds of the extension on one book: how the *attempts* rows of docs/profiling.md
were measured (a change kept or reverted on these figures).

    cp -r python/margin_engine /tmp/A/            # build A (e.g. main)
    # ... change, `maturin develop --release` ...
    cp -r python/margin_engine /tmp/B/            # build B
    python benches/ab.py /tmp/A /tmp/B --book /tmp/book1m --function margin --threads 1 --rounds 3

The book is a directory written by ``margin-engine generate`` (read with ``read_book``). Each
round runs every build in turn, each in a fresh process with the build first on ``PYTHONPATH``,
timing ``--calls`` calls after one warm-up; alternating the builds spreads the shared machine's
drift over both. Printed per build: the best and each round's median, in milliseconds.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

CHILD = r"""
import sys, time
import margin_engine as me
from margin_engine.io import read_book
directory, function, model, threads, calls = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
b = read_book(directory)
book = me.Book(b.instruments, b.assets, None, b.margin_tiers)
market = me.Market(b.index_prices, b.marks, b.valuation_time)
if function == "margin":
    call = lambda: me.margin(book, b.positions, b.balances, market, model=model, threads=threads)
else:
    call = lambda: me.greeks(book, b.positions, market, threads=threads)
call()
times = []
for _ in range(calls):
    t = time.perf_counter()
    call()
    times.append(time.perf_counter() - t)
times.sort()
print(times[0] * 1e3, times[len(times) // 2] * 1e3)
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("builds", nargs="+", help="directories each holding a margin_engine package with its built extension")
    ap.add_argument("--book", required=True, help="book directory written by `margin-engine generate`")
    ap.add_argument("--function", choices=["margin", "greeks"], default="margin")
    ap.add_argument("--model", default="standard")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--calls", type=int, default=7)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    best: dict[str, float] = {}
    medians: dict[str, list[float]] = {b: [] for b in args.builds}
    for _ in range(args.rounds):
        for build in args.builds:
            env = dict(os.environ, PYTHONPATH=os.pathsep.join([build, os.environ.get("PYTHONPATH", "")]))
            out = subprocess.run(
                [sys.executable, "-c", CHILD, args.book, args.function, args.model, str(args.threads), str(args.calls)],
                env=env, capture_output=True, text=True, check=True,
            )  # fmt: skip
            low, median = map(float, out.stdout.split())
            best[build] = min(best.get(build, low), low)
            medians[build].append(median)
    for build in args.builds:
        print(f"{build}: best {best[build]:.1f} ms, medians " + " ".join(f"{m:.1f}" for m in medians[build]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
