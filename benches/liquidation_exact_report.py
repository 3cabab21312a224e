"""How far the exact liquidation prices are from the former grid walk, on a generated book.

    python benches/liquidation_exact_report.py --accounts 100000 [--model standard] [--threads 2] \
        [--markdown benches/results/liquidation_exact.md]   # appended to docs/performance.md by report.py

Prints, per model, the time of each, how many moves each finds (within ±50% for the grid, on the
whole axis for the exact roots), and where both exist the largest |exact − grid|, split into
rows whose underlying's positions are all linear (perpetuals/futures: the grid interpolates a
straight line, so only a tier floor inside the grid cell can make them differ) and rows with
options (the grid's interpolation error of a curved excess).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import margin_engine as me
from margin_engine import _core, api, synthetic


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--accounts", type=int, default=100_000)
    parser.add_argument("--model", action="append")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--markdown", default=None, help="also write the table as a markdown section here")
    args = parser.parse_args()
    lines: list[str] = []
    b = synthetic.generate(args.accounts, seed=7)
    book = me.Book(b.instruments, b.assets, None, b.margin_tiers)
    market = me.Market(b.index_prices, b.marks, b.valuation_time_ns)
    print(f"{args.accounts:,} accounts, {b.positions.num_rows:,} position rows, {args.threads} threads")
    for model in args.model or ["standard", "portfolio"]:
        t0 = time.perf_counter()
        grid = api._per_account(_core.liquidation_distance_grid, book, b.positions, b.balances, market, model, args.threads, "arrow")
        t1 = time.perf_counter()
        exact = me.liquidation_prices(book, b.positions, b.balances, market, model=model, threads=args.threads)
        t2 = time.perf_counter()
        methods = exact.column("method").to_pylist()
        stats = {"closed_form": [0, 0.0], "bracketed": [0, 0.0]}
        found = {"grid": 0, "exact": 0, "exact beyond ±50%": 0}
        for name in ("down", "up"):
            g = grid.column(f"move_{name}").to_pylist()
            e = exact.column(f"move_{name}").to_pylist()
            for gm, em, method in zip(g, e, methods, strict=True):
                found["grid"] += gm is not None
                found["exact"] += em is not None
                found["exact beyond ±50%"] += em is not None and abs(em) > 0.5
                if gm is not None and em is not None and method in stats:
                    s = stats[method]
                    s[0] += 1
                    s[1] = max(s[1], abs(em - gm))
        counts = {m: methods.count(m) for m in sorted(set(methods))}
        print(f"\n{model}: grid {t1 - t0:.3f} s, exact {t2 - t1:.3f} s; rows {exact.num_rows:,} by method {counts}")
        print(f"  moves found: {found}")
        for method, (n, worst) in stats.items():
            print(f"  {method}: {n:,} moves found by both, max |exact − grid| = {worst:.3e}")
        lines.append(
            f"| {model} | {t1 - t0:.2f} s | {t2 - t1:.2f} s | {found['grid']:,} | {found['exact']:,} "
            f"({found['exact beyond ±50%']:,} beyond ±50%) | {stats['closed_form'][1]:.1e} ({stats['closed_form'][0]:,}) "
            f"| {stats['bracketed'][1]:.1e} ({stats['bracketed'][0]:,}) |"
        )
    if args.markdown:
        with open(args.markdown, "w") as out:
            out.write(
                f"## Exact liquidation prices vs the grid walk ({args.accounts:,} accounts, {args.threads} threads)\n\n"
                "`me.liquidation_distance` (exact roots, docs/liquidation.md §3) against the former grid walk "
                "(`_core.liquidation_distance_grid`) on the generated book; made by "
                "`benches/liquidation_exact_report.py`. Max |exact − grid| over the moves both find, by how the "
                "exact root was found (count in brackets).\n\n"
                "| model | grid walk | exact | moves (grid) | moves (exact) | max diff, closed form | max diff, bracketed |\n"
                "|---|---|---|---|---|---|---|\n" + "\n".join(lines) + "\n"
            )


if __name__ == "__main__":
    main()
