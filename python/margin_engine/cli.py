"""The ``margin-engine`` command line: ``demo``, ``generate``, ``run``, ``scan``.

Long steps print progress (step name, then its time) on stderr; results go to stdout or Parquet.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from margin_engine import api
from margin_engine._core import MarginInputError
from margin_engine.io import BookTables, read_book, write_book

STATUSES = ("healthy", "margin_call", "liquidatable", "bankrupt")


class Progress:
    """Prints each step and its duration to stderr, so a long run shows where it is."""

    def __init__(self, quiet: bool = False):
        self.quiet = quiet
        self.start = time.perf_counter()
        self.timings: dict[str, float] = {}

    def note(self, message: str) -> None:
        if not self.quiet:
            print(f"[{time.perf_counter() - self.start:7.2f}s]   {message}", file=sys.stderr, flush=True)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        if not self.quiet:
            print(f"[{time.perf_counter() - self.start:7.2f}s] {name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        yield
        self.timings[name] = time.perf_counter() - t0
        if not self.quiet:
            print(
                f"[{time.perf_counter() - self.start:7.2f}s] {name}: done in {self.timings[name]:.3f}s",
                file=sys.stderr,
                flush=True,
            )


def _generate(accounts: int, seed: int, shuffle: bool, progress: Progress) -> BookTables:
    from margin_engine import synthetic

    with progress.step(f"generating an exchange book of {accounts:,} accounts"):
        g = synthetic.generate(accounts, seed=seed, shuffle=shuffle, progress=progress.note)
    return BookTables(
        instruments=g.instruments,
        assets=g.assets,
        positions=g.positions,
        balances=g.balances,
        index_prices=g.index_prices,
        marks=g.marks,
        valuation_time=g.valuation_time,
        margin_tiers=g.margin_tiers,
    )


def _usd(x: float) -> str:
    return f"${x:,.0f}"


def _sum(table: pa.Table, column: str) -> float:
    return float(pc.sum(table.column(column)).as_py() or 0.0)


def _status_counts(results: pa.Table) -> dict[str, int]:
    counts = results.group_by("status").aggregate([("status", "count")])
    found = dict(zip(counts.column("status").to_pylist(), counts.column("status_count").to_pylist()))
    return {s: int(found.get(s, 0)) for s in STATUSES}


def _print_summary(tables: BookTables, results: dict[str, pa.Table], progress: Progress, out: Any = sys.stdout) -> None:
    std, port = results["standard"], results["portfolio"]
    n_accounts = std.num_rows
    rows = tables.positions.num_rows
    p = lambda *a: print(*a, file=out)  # noqa: E731
    p()
    p("margin-engine demo")
    p("=" * 78)
    p(
        f"book: {n_accounts:,} accounts, {rows:,} position rows, {tables.balances.num_rows:,} balances, "
        f"{tables.instruments.num_rows:,} instruments, input {tables.nbytes / 2**20:,.0f} MiB"
    )
    p()
    p(f"{'':24}{'standard':>18}{'portfolio':>18}")
    for label, column in (
        ("equity", "equity"),
        ("collateral (maint.)", "collateral_maintenance"),
        ("initial margin", "initial_margin"),
        ("maintenance margin", "maintenance_margin"),
    ):
        p(f"{label:24}{_usd(_sum(std, column)):>18}{_usd(_sum(port, column)):>18}")
    counts = {m: _status_counts(r) for m, r in results.items()}
    for s in STATUSES:
        p(f"{'accounts ' + s:24}{counts['standard'][s]:>18,}{counts['portfolio'][s]:>18,}")
    im_std, im_port = _sum(std, "initial_margin"), _sum(port, "initial_margin")
    freed = im_std - im_port
    p()
    p(
        f"capital freed by portfolio margin: {_usd(freed)} of initial margin "
        f"({100 * freed / im_std if im_std else 0.0:.1f}% of the standard requirement)"
    )
    differs = pc.not_equal(std.column("status"), port.column("status"))
    changed = std.filter(differs)
    p(f"accounts whose status differs between the models: {changed.num_rows:,}")
    if changed.num_rows:
        moves = pa.table(
            {"from": changed.column("status"), "to": port.filter(differs).column("status")}
        ).group_by(["from", "to"]).aggregate([("from", "count")])
        for f, t, c in zip(*(moves.column(n).to_pylist() for n in ("from", "to", "from_count"))):
            p(f"    {f:>12} -> {t:<12} {c:>10,}")
    p()
    p("top accounts at risk (standard model, largest maintenance shortfall):")
    shortfall = pc.subtract(std.column("maintenance_margin"), std.column("collateral_maintenance"))
    at_risk = std.append_column("shortfall", shortfall).filter(pc.greater(shortfall, 0.0))
    top = at_risk.sort_by([("shortfall", "descending")]).slice(0, 10)
    p(f"    {'account_id':>20} {'status':>13} {'equity':>16} {'maint. margin':>16} {'shortfall':>16}")
    for r in top.to_pylist():
        p(
            f"    {r['account_id']:>20} {r['status']:>13} {_usd(r['equity']):>16} "
            f"{_usd(r['maintenance_margin']):>16} {_usd(r['shortfall']):>16}"
        )
    p()
    p("timings:")
    for name, seconds in progress.timings.items():
        rate = f"  ({rows / seconds / 1e6:,.1f}M position rows/s)" if name.startswith("margin") and seconds else ""
        p(f"    {name:46} {seconds:8.3f}s{rate}")


def cmd_demo(args: argparse.Namespace) -> int:
    progress = Progress(args.quiet)
    tables = _generate(args.accounts, args.seed, False, progress)
    with progress.step("validating book and market"):
        book, market = tables.book(), tables.market()
    results = {}
    for model in ("standard", "portfolio"):
        with progress.step(f"margin, {model} model"):
            results[model] = api.margin(book, tables.positions, tables.balances, market, model=model, threads=args.threads)
    with progress.step("greeks per account x underlying"):
        api.greeks(book, tables.positions, market, threads=args.threads)
    _print_summary(tables, results, progress)
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    progress = Progress(args.quiet)
    tables = _generate(args.accounts, args.seed, args.shuffle, progress)
    with progress.step(f"writing Parquet to {args.out}"):
        write_book(tables, args.out)
    print(f"wrote {tables.positions.num_rows:,} positions of {args.accounts:,} accounts to {args.out}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    progress = Progress(args.quiet)
    with progress.step(f"reading {args.book}"):
        tables = read_book(args.book)
        book, market = tables.book(), tables.market()
    with progress.step(f"margin, {args.model} model"):
        results = api.margin(book, tables.positions, tables.balances, market, model=args.model, threads=args.threads)
    if args.out:
        with progress.step(f"writing {args.out}"):
            pq.write_table(results, args.out)
    counts = _status_counts(results)
    print(
        f"{results.num_rows:,} accounts: IM {_usd(_sum(results, 'initial_margin'))}, "
        f"MM {_usd(_sum(results, 'maintenance_margin'))}; "
        + ", ".join(f"{s} {c:,}" for s, c in counts.items())
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="margin-engine", description=__doc__)
    parser.add_argument("--quiet", action="store_true", help="no progress on stderr")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="generate an exchange book and margin it under both models")
    demo.add_argument("--accounts", type=int, default=1_000_000)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument("--threads", type=int, default=None)
    demo.set_defaults(func=cmd_demo)

    gen = sub.add_parser("generate", help="write a generated book as Parquet")
    gen.add_argument("--accounts", type=int, default=1_000_000)
    gen.add_argument("--seed", type=int, default=7)
    gen.add_argument("--shuffle", action="store_true", help="rows not sorted by account")
    gen.add_argument("--out", type=Path, required=True)
    gen.set_defaults(func=cmd_generate)

    run = sub.add_parser("run", help="margin a book directory")
    run.add_argument("book", type=Path)
    run.add_argument("--model", choices=["standard", "portfolio"], default="standard")
    run.add_argument("--out", type=Path, default=None, help="results Parquet file")
    run.add_argument("--threads", type=int, default=None)
    run.set_defaults(func=cmd_run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except MarginInputError as e:
        print(f"margin-engine: bad input: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
