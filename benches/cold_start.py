"""Where the first call of a process goes: the 1M-account book margined three times in one fresh
process, each call timed, with the engine's own phase trace (MARGIN_ENGINE_TRACE=1) of the first
and the second call.

    python benches/cold_start.py DIR [--model standard]

DIR is a book written by `margin-engine generate`. Prints one JSON object with the calls'
seconds on stdout; docs/performance.md ("The first call") reads it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ["MARGIN_ENGINE_TRACE"] = "1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("book", help="a book directory written by margin-engine generate")
    parser.add_argument("--model", default="standard", choices=["standard", "portfolio"])
    args = parser.parse_args()

    import margin_engine as me
    from margin_engine.io import read_book

    tables = read_book(args.book)
    book = me.Book(tables.instruments, tables.assets, tables.risk_params, tables.margin_tiers)
    market = me.Market(tables.index_prices, tables.marks, tables.valuation_time)
    seconds = []
    for call in range(3):
        print(f"--- call {call + 1}", file=sys.stderr, flush=True)
        t = time.perf_counter()
        me.margin(book, tables.positions, tables.balances, market, model=args.model)
        seconds.append(time.perf_counter() - t)
    print(json.dumps({"model": args.model, "calls_s": seconds}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
