"""The margin-engine command line: demo, generate, run, scan, report, calibrate, backtest (docs/cli.md).

Long steps show progress on stderr (step name, a spinner while it runs on a terminal, then its
time); results go to stdout or to files. Every result file is written to a temporary file beside
it and renamed over it only when the command succeeds, so a failure, Ctrl-C or SIGTERM leaves
the previous result intact. A user error is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any, NoReturn

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from margin_engine import api
from margin_engine._core import MarginInputError, __version__
from margin_engine.io import BookTables, atomic_path, book_writer, count_rows, iter_table_batches, read_book, table_path

STATUSES = ("healthy", "margin_call", "liquidatable", "bankrupt")
SPIN = "|/-\\"


class Progress:
    """Prints each step and its duration to stderr, so a long run shows where it is. On a
    terminal a spinner (or, given a total, a bar) with the elapsed time runs while a step does:
    the engine releases the GIL, so the spinner's thread keeps turning during a long call."""

    def __init__(self, quiet: bool = False, stream: Any = None, interval: float = 0.1):
        self.quiet = quiet
        self.stream = stream
        self.interval = interval
        self.start = time.perf_counter()
        self.timings: dict[str, float] = {}
        self._fraction: float | None = None

    @property
    def out(self) -> Any:
        return self.stream or sys.stderr

    def _live(self) -> bool:
        isatty = getattr(self.out, "isatty", None)
        return not self.quiet and bool(isatty and isatty())

    def _clock(self) -> str:
        return f"[{time.perf_counter() - self.start:7.2f}s]"

    def _print(self, text: str) -> None:
        if not self.quiet:
            print(("\r\033[K" if self._live() else "") + text, file=self.out, flush=True)

    def note(self, message: str) -> None:
        self._print(f"{self._clock()}   {message}")

    def advance(self, done: float, total: float) -> None:
        """The share of the current step done (drawn as a bar on a terminal)."""
        self._fraction = min(1.0, done / total) if total else None

    def _indicator(self, name: str, t0: float, tick: int) -> str:
        elapsed = f"{time.perf_counter() - t0:6.1f}s"
        if self._fraction is None:
            return f"{self._clock()} {name} {SPIN[tick % len(SPIN)]} {elapsed}"
        filled = int(30 * self._fraction)
        return f"{self._clock()} {name} [{'#' * filled}{'.' * (30 - filled)}] {100 * self._fraction:3.0f}% {elapsed}"

    def _spin(self, name: str, t0: float, stop: threading.Event) -> None:
        tick = 0
        while not stop.wait(self.interval):
            width = shutil.get_terminal_size().columns - 1  # a wrapped line would not redraw in place
            print("\r\033[K" + self._indicator(name, t0, tick)[-width:], end="", file=self.out, flush=True)
            tick += 1

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        self._print(f"{self._clock()} {name} ...")
        t0 = time.perf_counter()
        self._fraction = None
        stop = threading.Event()
        spinner = threading.Thread(target=self._spin, args=(name, t0, stop), daemon=True) if self._live() else None
        if spinner:
            spinner.start()
        try:
            yield
        finally:
            stop.set()
            if spinner:
                spinner.join()
        self.timings[name] = time.perf_counter() - t0
        self._print(f"{self._clock()} {name}: done in {self.timings[name]:.3f}s")


# --------------------------------------------------------------------------------------------
# stdout that survives a closed pipe, results written atomically, signals as exceptions
# --------------------------------------------------------------------------------------------


def _silence_stdout() -> None:
    """After a broken pipe (``| head -1``): the rest of the output goes nowhere, quietly."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115  (an in-process stdout without a descriptor)


def say(*args: Any) -> None:
    """print() to stdout; a reader that went away (``| head``) does not stop the work."""
    try:
        print(*args)
    except BrokenPipeError:
        _silence_stdout()


class Outputs(ExitStack):
    """The result files of one command, each a temporary file (see :func:`atomic_path`) made
    when it is declared, before any work: a missing, read-only or directory destination fails
    at once. All are renamed into place when the command's block ends normally, all removed
    when it raises."""

    def file(self, target: Path | None) -> Path | None:
        return None if target is None else self.enter_context(atomic_path(target))


class Terminated(BaseException):
    """SIGTERM or SIGHUP, raised in the main thread so that every temporary file is removed."""


@contextmanager
def _signals_raise() -> Iterator[None]:
    def handler(signum: int, _frame: Any) -> NoReturn:
        raise Terminated(signum)

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


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


def _print_summary(tables: BookTables, results: dict[str, pa.Table], progress: Progress, out: Any = None) -> None:
    std, port = results["standard"], results["portfolio"]
    n_accounts = std.num_rows
    rows = tables.positions.num_rows
    p = say if out is None else lambda *a: print(*a, file=out)  # noqa: E731
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
    share = f" ({100 * abs(freed) / im_std:.1f}% of the standard requirement)" if im_std else ""
    if freed >= 0:
        p(f"portfolio margin frees {_usd(freed)} of initial margin{share}")
    else:
        p(f"portfolio margin needs {_usd(-freed)} more initial margin{share}")
    saving = pc.subtract(std.column("initial_margin"), port.column("initial_margin"))
    gains = pc.greater(saving, 0.0)
    n_gain = pc.sum(gains).as_py() or 0
    p(
        f"    {n_gain:,} accounts need less under portfolio margin, freeing "
        f"{_usd(pc.sum(pc.if_else(gains, saving, 0.0)).as_py() or 0.0)}; "
        f"{pc.sum(pc.less(saving, 0.0)).as_py() or 0:,} need more"
    )
    if freed < 0:
        p(
            "    (the §4 scan range of ±15% charges naked directional positions ~15% of notional, "
            "against 1-2% in the standard model; hedged books save)"
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


def _print_liquidation(stressed: pa.Table, distances: pa.Table, out: Any = None) -> None:
    p = say if out is None else lambda *a: print(*a, file=out)  # noqa: E731
    p()
    counts = _status_counts(stressed)
    p("stress test, BTC -20% (index, marks, options repriced, BTC collateral): " + ", ".join(f"{s} {c:,}" for s, c in counts.items()))
    p(f"    total shortfall after the move: {_usd(_sum(stressed, 'shortfall'))}")
    p()
    p("distance to liquidation (standard model), accounts liquidatable within a move of:")
    down = pc.abs(distances.column("move_down"))
    up = distances.column("move_up")
    for threshold in (0.01, 0.05, 0.10, 0.20, 0.50):
        hit = pc.or_kleene(pc.less_equal(down, threshold), pc.less_equal(up, threshold))
        accounts = pc.count_distinct(distances.filter(pc.fill_null(hit, False)).column("account_id")).as_py()
        p(f"    {threshold:>5.0%}: {accounts:>10,} accounts")


def _print_plan_and_hedges(plan: Any, hedges: pa.Table | None, out: Any = None) -> None:
    p = say if out is None else lambda *a: print(*a, file=out)  # noqa: E731
    p()
    after = dict(zip(*plan.accounts.group_by("status_after").aggregate([("account_id", "count")]).to_pydict().values()))
    p(
        f"liquidation plans: {plan.accounts.num_rows:,} accounts, {plan.closes.num_rows:,} closes, "
        f"{_usd(_sum(plan.closes, 'notional'))} notional closed; after: "
        + ", ".join(f"{k} {v:,}" for k, v in sorted(after.items()))
    )
    p(
        f"    fees {_usd(plan.liquidator_fees)} to liquidators, {_usd(plan.insurance_fees)} to the insurance fund; "
        f"bad debt {_usd(_sum(plan.accounts, 'bad_debt'))}; fund after {_usd(plan.insurance_fund_after)}"
    )
    if hedges is None:
        return
    saved = pc.subtract(hedges.column("margin_before"), hedges.column("margin_after"))
    best = hedges.append_column("saved", saved).group_by("account_id").aggregate([("saved", "max")])
    p(
        f"optimal hedges (one perpetual per account, portfolio IM): would free "
        f"{_usd(pc.sum(best.column('saved_max')).as_py() or 0.0)} across {pc.sum(pc.greater(best.column('saved_max'), 0.0)).as_py() or 0:,} accounts"
    )


def cmd_demo(args: argparse.Namespace) -> int:
    progress = Progress(args.quiet)
    tables = _generate(args.accounts, args.seed, False, progress)
    with progress.step("validating book and market"):
        book, market = tables.book(getattr(args, "methodology", None)), tables.market()
    results = {}
    for model in ("standard", "portfolio"):
        with progress.step(f"margin, {model} model"):
            results[model] = api.margin(book, tables.positions, tables.balances, market, model=model, threads=args.threads)
    with progress.step("greeks per account x underlying"):
        api.greeks(book, tables.positions, market, threads=args.threads)
    with progress.step("liquidation scan, standard model"):
        api.liquidation_scan(book, tables.positions, tables.balances, market, threads=args.threads)
    with progress.step("liquidation scan, BTC -20% stress"):
        stressed = api.liquidation_scan(book, tables.positions, tables.balances, market, stress={"BTC": -0.2}, threads=args.threads)
    with progress.step("exact liquidation prices (roots per account x underlying)"):
        distances = api.liquidation_distance(book, tables.positions, tables.balances, market, threads=args.threads)
    with progress.step("liquidation plans, standard model"):
        plan = api.liquidation_plan(book, tables.positions, tables.balances, market, insurance_fund=10e6, threads=args.threads)
    perpetuals = [
        k for k, kind in zip(tables.instruments.column("instrument").to_pylist(), tables.instruments.column("kind").to_pylist())
        if kind == "perpetual"
    ]
    with progress.step("optimal hedges (portfolio model, every perpetual)"):
        hedges = api.optimal_hedge(book, tables.positions, tables.balances, market, perpetuals, objective="initial", threads=args.threads)
    _print_summary(tables, results, progress)
    _print_calibrated(tables, market, results, args, progress)
    _print_liquidation(stressed, distances)
    _print_plan_and_hedges(plan, hedges)
    _print_mechanics(tables, args, progress)
    return 0


def _print_mechanics(tables: BookTables, args: argparse.Namespace, progress: Progress) -> None:
    """Exchange mechanics (docs/methodology.md §10) on the same book, mixed in by
    ``synthetic.with_mechanics``: inverse perpetuals, isolated positions, resting orders and
    unsettled funding, margined by the standard model."""
    from margin_engine import synthetic

    with progress.step("mixing in inverse perpetuals, isolated positions, resting orders, funding"):
        mb = synthetic.with_mechanics(tables)
        book = api.Book(mb.instruments, mb.assets, None, mb.margin_tiers)
        market = api.Market(mb.index_prices, mb.marks, mb.valuation_time)
    iso = mb.isolated_collateral
    with progress.step("margin of the cross accounts, with and without their resting orders"):
        with_orders = api.margin(book, mb.positions, mb.balances, market, orders=mb.orders, isolated_collateral=iso, threads=args.threads)
        without = api.margin(book, mb.positions, mb.balances, market, isolated_collateral=iso, threads=args.threads)
    with progress.step("isolated positions margined alone, with liquidation prices"):
        isolated = api.isolated_margin(book, mb.positions, iso, market, threads=args.threads)
    inverse_names = [name for name, _, _ in synthetic.INVERSE_PERPETUALS]
    holds_inverse = pc.is_in(mb.positions.column("instrument").cast(pa.string()), pa.array(inverse_names))
    inverse_accounts = pc.unique(mb.positions.filter(holds_inverse).column("account_id"))
    sample = inverse_accounts.slice(0, 20_000)
    sample_positions = mb.positions.filter(pc.is_in(mb.positions.column("account_id"), sample))
    sample_balances = mb.balances.filter(pc.is_in(mb.balances.column("account_id"), sample))
    with progress.step(f"exact liquidation prices of {len(sample):,} accounts holding inverse perpetuals"):
        sample_iso = iso.filter(pc.is_in(iso.column("account_id"), sample))
        prices = api.liquidation_prices(book, sample_positions, sample_balances, market, isolated_collateral=sample_iso, threads=args.threads)
    c = mb.counts
    say()
    say(f"exchange mechanics on the same book (standard model): {c['inverse_accounts']:,} accounts hold inverse "
        f"perpetuals ({', '.join(inverse_names)}, settled in coin), {c['isolated_positions']:,} isolated positions, "
        f"{c['orders']:,} resting orders on {c['order_accounts']:,} accounts, {c['funding_rows']:,} rows with unsettled funding "
        f"({_usd(_sum(mb.positions, 'unsettled_funding'))} net)")
    extra = _sum(with_orders, "initial_margin") - _sum(without, "initial_margin")
    calls = _status_counts(with_orders)["margin_call"] - _status_counts(without)["margin_call"]
    say(f"    resting orders add {_usd(extra)} of initial margin (worst of all bids or all asks filling); "
        f"{calls:+,} margin calls; maintenance unchanged")
    ic = _status_counts(isolated)
    liq = isolated.column("liquidation_price")
    say(f"    isolated positions: {isolated.num_rows:,} margined alone on {_usd(_sum(isolated, 'collateral_maintenance'))} of their own "
        f"collateral; liquidatable {ic['liquidatable']:,}, bankrupt {ic['bankrupt']:,}; "
        f"{len(liq) - liq.null_count:,} with a liquidation price")
    method = dict(zip(*prices.group_by("method").aggregate([("account_id", "count")]).to_pydict().values())) if prices.num_rows else {}
    far = pc.sum(pc.fill_null(pc.or_kleene(pc.less(prices.column("move_down"), -0.5), pc.greater(prices.column("move_up"), 0.5)), False)).as_py() or 0
    say(f"    inverse accounts' exact liquidation prices: {prices.num_rows:,} account x underlying rows ("
        + ", ".join(f"{k} {v:,}" for k, v in sorted(method.items())) + f"); {far:,} beyond ±50% that a grid stops at")


def _print_calibrated(tables: BookTables, market: Any, results: dict[str, pa.Table], args: argparse.Namespace,
                      progress: Progress) -> None:
    """Portfolio margin with scan ranges calibrated on real prices (docs/calibration.md,
    "Calibrated presets") against v1's default ranges and the standard model, on this book."""
    from margin_engine.methodology import Methodology
    from margin_engine.presets.calibrated import calibrated_risk_params, exchange_scan_ranges, provenance

    t = tables
    books = {
        "v1, default ranges": t.book(None),
        "v1, calibrated ranges": api.Book(t.instruments, t.assets, calibrated_risk_params(), t.margin_tiers),
        "exchange preset": api.Book(t.instruments, t.assets, None, t.margin_tiers, methodology=Methodology.preset("exchange")),
    }
    rows = {"standard model": results["standard"]}
    for label, book in books.items():
        if label == "v1, default ranges" and getattr(args, "methodology", None) is None:
            rows[label] = results["portfolio"]  # already computed: the demo's portfolio column
            continue
        with progress.step(f"margin, portfolio model, {label}"):
            rows[label] = api.margin(book, t.positions, t.balances, market, model="portfolio", threads=args.threads)
    ranges = ", ".join(f"{u} ±{r:.2%}" for u, r in exchange_scan_ranges().items())
    cal = provenance()
    how = cal["settings"]
    to = max(cal["last_candle"].values())[:10]
    say()
    say(f"portfolio margin with calibrated scan ranges ({how['horizon']}, {how['confidence']:.1%}, "
        f"{how['method'].upper()} on daily prices to {to}): {ranges}; others v1's ±15%")
    say(f"{'':24}{'initial margin':>18}{'maint. margin':>18}{'liquidatable':>14}{'bankrupt':>10}")
    for label, r in rows.items():
        c = _status_counts(r)
        say(f"{label:24}{_usd(_sum(r, 'initial_margin')):>18}{_usd(_sum(r, 'maintenance_margin')):>18}"
            f"{c['liquidatable']:>14,}{c['bankrupt']:>10,}")


def cmd_generate(args: argparse.Namespace) -> int:
    progress = Progress(args.quiet)
    with book_writer(args.out) as write:
        tables = _generate(args.accounts, args.seed, args.shuffle, progress)
        with progress.step(f"writing Parquet to {args.out}"):
            write(tables)
    say(f"wrote {tables.positions.num_rows:,} positions of {args.accounts:,} accounts to {args.out}")
    return 0


def _stream_margin(
    args: argparse.Namespace, tables: BookTables, out: Path | None, progress: Progress
) -> tuple[int, float, float, dict[str, int]]:
    """Margins the book's positions and balances (files or dataset folders, sorted by account)
    slice by slice, writing each result slice to ``out`` as it comes: memory stays bounded by the
    slice, not the book. Returns (accounts, IM, MM, status counts)."""
    from margin_engine.streaming import margin_batches

    book, market = tables.book(getattr(args, "methodology", None)), tables.market()
    paths = {name: table_path(args.book, name) for name in ("positions", "balances")}
    total_rows = count_rows("positions", paths["positions"])
    batch = min(1 << 20, args.rows_per_slice)
    read = [0]

    def counted(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for b in batches:
            read[0] += b.num_rows
            yield b

    positions = counted(iter_table_batches("positions", paths["positions"], batch))
    balances = iter_table_batches("balances", paths["balances"], batch)
    writer = None
    accounts, im, mm = 0, 0.0, 0.0
    counts = dict.fromkeys(STATUSES, 0)
    try:
        with progress.step(f"margin, {args.model} model, streamed from Parquet ({total_rows:,} position rows)"):
            parts = margin_batches(book, positions, balances, market, model=args.model, threads=args.threads, rows_per_slice=args.rows_per_slice)
            for part in parts:
                if out is not None:
                    writer = writer or pq.ParquetWriter(out, part.schema)
                    writer.write_table(part)
                accounts += part.num_rows
                im += _sum(part, "initial_margin")
                mm += _sum(part, "maintenance_margin")
                for status, n in _status_counts(part).items():
                    counts[status] += n
                progress.advance(read[0], total_rows)
                progress.note(f"{accounts:,} accounts")
        if writer is not None:
            writer.close()
            writer = None
        elif out is not None:  # an empty book: an empty results file
            pq.write_table(api.margin(book, tables.positions, tables.balances, market), out)
    finally:
        if writer is not None:  # failed: the temporary file is removed, its writer just closed
            with suppress(Exception):
                writer.close()
    return accounts, im, mm, counts


def cmd_run(args: argparse.Namespace) -> int:
    progress = Progress(args.quiet)
    with Outputs() as outputs:
        out = outputs.file(args.out)
        with progress.step(f"reading {args.book}"):
            tables = read_book(args.book, rows=not args.stream)
        if args.stream and tables.orders is not None:
            raise MarginInputError(f"orders.*: {args.book} has resting orders; --stream does not margin orders yet (run without --stream)")
        if args.stream:
            accounts, im, mm, counts = _stream_margin(args, tables, out, progress)
        else:
            with progress.step("validating book and market"):
                book, market = tables.book(getattr(args, "methodology", None)), tables.market()
            with progress.step(f"margin, {args.model} model"):
                results = api.margin(
                    book, tables.positions, tables.balances, market, orders=tables.orders, isolated_collateral=tables.isolated_collateral,
                    model=args.model, threads=args.threads,
                )  # fmt: skip
            if out is not None:
                with progress.step(f"writing {args.out}"):
                    pq.write_table(results, out)
            accounts, counts = results.num_rows, _status_counts(results)
            im, mm = _sum(results, "initial_margin"), _sum(results, "maintenance_margin")
    say(f"{accounts:,} accounts: IM {_usd(im)}, MM {_usd(mm)}; " + ", ".join(f"{s} {c:,}" for s, c in counts.items()))
    return 0


def _parse_stress(items: list[str] | None) -> dict[str, float] | None:
    """``["BTC=-0.2", "ETH=-0.25"]`` as a stress dict; a malformed, non-finite or repeated
    underlying raises MarginInputError."""
    if items is None:
        return None
    stress: dict[str, float] = {}
    for item in items:
        name, sep, value = item.partition("=")
        name = name.strip()
        try:
            move = float(value)
            if not (sep and name and math.isfinite(move)):
                raise ValueError
        except ValueError:
            raise MarginInputError(f"stress.move: expected UNDERLYING=MOVE like BTC=-0.2 (a finite number), got {item!r}") from None
        if name in stress:
            raise MarginInputError(f"stress.underlying: {name} is given twice ({name}={stress[name]:g} and {item}); give each underlying once")
        stress[name] = move
    return stress


def _print_scan(scan: pa.Table, args: argparse.Namespace) -> None:
    counts = _status_counts(scan)
    say(f"{scan.num_rows:,} accounts: " + ", ".join(f"{s} {c:,}" for s, c in counts.items()))
    say(f"total shortfall: {_usd(_sum(scan, 'shortfall'))}")
    columns = ["account_id", "status", "equity", "maintenance_margin", "shortfall"]
    if args.distance:
        columns += ["nearest_move", "nearest_underlying"]
    top = scan.select(columns).slice(0, args.top)
    say(top.to_pandas().to_string(index=False) if _has_pandas() else top)


def cmd_scan(args: argparse.Namespace) -> int:
    progress = Progress(args.quiet)
    stress = _parse_stress(args.stress)
    if stress and args.distance:
        raise MarginInputError("arguments.distance: --distance is measured from the current market; drop --stress or --distance")
    base = args.plan.with_suffix("") if args.plan else None
    written = []
    with Outputs() as outputs:
        out, map_png = outputs.file(args.out), outputs.file(args.map)
        closes = outputs.file(Path(f"{base}.closes.parquet")) if base else None
        plan_accounts = outputs.file(Path(f"{base}.accounts.parquet")) if base else None
        with progress.step(f"reading {args.book}"):
            tables = read_book(args.book)
        with progress.step("validating book and market"):
            book, market = tables.book(getattr(args, "methodology", None)), tables.market()
        held = (book, tables.positions, tables.balances, market)
        label = f"liquidation scan, {args.model} model" + (f", stress {stress}" if stress else "")
        label += ", with distance to liquidation (201 grid levels x underlying)" if args.distance else ""
        with progress.step(label):
            scan = api.liquidation_scan(
                *held, orders=tables.orders, isolated_collateral=tables.isolated_collateral, model=args.model, stress=stress,
                distance=args.distance, threads=args.threads,
            )  # fmt: skip
        _print_scan(scan, args)
        if out is not None:
            with progress.step(f"writing {args.out}"):
                pq.write_table(scan, out)
            written.append(f"scan results written to {args.out}")
        if map_png is not None:
            with progress.step(f"liquidation map, {args.model} model"):
                lmap = api.liquidation_map(*held, isolated_collateral=tables.isolated_collateral, model=args.model, threads=args.threads)
            from margin_engine.charts import liquidation_map_png

            with progress.step(f"drawing {args.map}"):
                liquidation_map_png(lmap, map_png, title=f"Liquidation map, {args.model} model: {args.book}")
            written.append(f"liquidation map written to {args.map}")
        if closes is not None and plan_accounts is not None:
            with progress.step(f"liquidation plans, {args.model} model"):
                plan = api.liquidation_plan(
                    *held, model=args.model, stress=stress, insurance_fund=args.insurance_fund,
                    isolated_collateral=tables.isolated_collateral, threads=args.threads,
                )  # fmt: skip
            pq.write_table(plan.closes, closes)
            pq.write_table(plan.accounts, plan_accounts)
            _print_plan_and_hedges(plan, None)
            written.append(f"plan written to {base}.closes.parquet and {base}.accounts.parquet")
    for line in written:
        say(line)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from margin_engine.report import efficiency_report, write_html

    progress = Progress(args.quiet)
    with Outputs() as outputs:
        out = outputs.file(args.out)
        assert out is not None
        with progress.step(f"reading {args.book}"):
            tables = read_book(args.book)
        with progress.step("validating book and market"):
            book, market = tables.book(getattr(args, "methodology", None)), tables.market()
        hedging = "" if args.hedge == [] else ", optimal hedges"
        with progress.step(f"efficiency report: margin under both models{hedging}"):
            report = efficiency_report(
                book, tables.positions, tables.balances, market,
                hedge_instruments=args.hedge, hedge_objective=args.hedge_objective, threads=args.threads,
                stress_moves=tuple(args.stress_moves), distance=not args.no_distance, source=str(args.book),
            )  # fmt: skip
        with progress.step(f"writing {args.out}"), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            write_html(report, out)
    pct = report.capital_freed_pct
    idle = dict(zip(report.idle.column("model").to_pylist(), report.idle.column("idle_total").to_pylist()))
    share = "" if pct is None else f" ({100 * abs(pct):.1f}% of standard IM)"
    freed = report.capital_freed
    say(
        (f"portfolio margin frees {_usd(freed)}{share}" if freed >= 0 else f"portfolio margin needs {_usd(-freed)} more{share}")
        + f"; idle collateral of healthy accounts: {_usd(idle.get('portfolio', 0.0))} (portfolio model); "
        f"best single hedges free {_usd(report.hedges_total_freed)} of {report.hedge_objective} margin"
    )
    for note in [*report.notes, *(str(w.message).replace(str(out), str(args.out)) for w in caught)]:
        say(f"note: {note}")
    say(f"report written to {args.out}")
    return 0


# --------------------------------------------------------------------------------------------
# calibrate and backtest (margin_engine.calibration, docs/calibration.md)
# --------------------------------------------------------------------------------------------


def _read_prices(path: Path) -> pa.Table:
    """A price history: a Parquet file or a folder of them (``symbol, time, close[, volume]``)."""
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or directory")
    try:
        return pq.read_table(path)
    except pa.ArrowException as e:
        raise MarginInputError(f"prices.*: {path}: not a readable Parquet file or folder ({_one_line(e)})") from e


def _apc(text: str | None) -> Any:
    return None if text in (None, "none") else text


def _calibration_options(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "horizon": args.horizon, "confidence": args.confidence, "method": args.method, "measure": args.measure,
        "anti_procyclicality": _apc(args.anti_procyclicality), "lookback": args.lookback, "decay": args.decay,
        "gaps": args.gaps,
    }  # fmt: skip


def cmd_calibrate(args: argparse.Namespace) -> int:
    from margin_engine.calibration import calibrate

    progress = Progress(args.quiet)
    written = []
    with Outputs() as outputs:
        out, assets_out, report_out = outputs.file(args.out), outputs.file(args.assets_out), outputs.file(args.report_out)
        with progress.step(f"reading {args.prices}"):
            prices = _read_prices(args.prices)
        label = f"calibrating {args.method.upper()} {args.measure.upper()} at {args.confidence:g}, horizon {args.horizon}"
        with progress.step(label):
            cal = calibrate(prices, symbols=args.symbols, volume_in=args.volume_in, **_calibration_options(args))
        rep = cal.report()
        weights = {r["asset"]: r for r in cal.assets.to_pylist()}
        lines = [f"{'symbol':8} {'vol/yr':>8} {'range':>8} {'vol_up':>7} {'vol_dn':>7} {'weight':>7} {'kurt':>7}  gaps"]
        for r in rep.to_pylist():
            w = weights[r["symbol"]]["maintenance_weight"]
            lines.append(
                f"{r['symbol']:8} {100 * r['sigma_annual']:7.1f}% {100 * r['price_range']:7.2f}% {100 * r['vol_up']:6.1f}% "
                f"{100 * r['vol_down']:6.1f}% {w:7.4f} {r['kurtosis']:7.1f}  {r['gaps']}" + ("  (capped)" if r["capped"] else "")
            )
        for line in lines:
            say(line)
        for target, table, what, named in (
            (out, cal.risk_params, "risk_params", args.out), (assets_out, cal.assets, "assets", args.assets_out),
            (report_out, rep, "report", args.report_out),
        ):  # fmt: skip
            if target is not None:
                pq.write_table(table, target)
                written.append(f"{what} written to {named}")
    for line in written:
        say(line)
    return 0


def cmd_backtest(args: argparse.Namespace) -> int:
    from margin_engine.calibration import backtest

    progress = Progress(args.quiet)
    written = []
    with Outputs() as outputs:
        out, summary_out, chart = outputs.file(args.out), outputs.file(args.summary_out), outputs.file(args.chart)
        with progress.step(f"reading {args.prices}"):
            prices = _read_prices(args.prices)
        held: tuple[Any, ...] = (None, None, None)
        if args.book is not None:
            with progress.step(f"reading {args.book}"):
                tables = read_book(args.book)
            with progress.step("validating book"):
                held = (tables.book(getattr(args, "methodology", None)), tables.positions, tables.balances)
        label = f"backtest {args.method.upper()} at {args.confidence:g}, horizon {args.horizon}" + (
            f", {args.model} margin of the book at every date" if args.book is not None else ""
        )
        with progress.step(label):
            bt = backtest(
                *held, prices, symbols=args.symbols, start=args.start, end=args.end, model=args.model,
                unpriced=args.unpriced, threads=args.threads, progress=progress.advance, **_calibration_options(args),
            )  # fmt: skip
        if bt.dropped:
            progress.note(f"left out {bt.dropped['positions']:,} position rows in {', '.join(bt.dropped['underlyings'])} (no history)")
        for r in bt.summary.to_pylist():
            say(
                f"{r['symbol']:8} {r['side']:8} {r['exceedances']:6,}/{r['observations']:<7,} rate {100 * r['rate']:6.3f}% "
                f"(expected {100 * r['expected']:.3g}%)  Kupiec p {r['kupiec_p']:.3f}  Christoffersen p {r['christoffersen_p']:.3f}"
            )
        if out is not None:
            pq.write_table(bt.dates, out)
            written.append(f"dates written to {args.out}")
        if summary_out is not None:
            pq.write_table(bt.summary, summary_out)
            written.append(f"summary written to {args.summary_out}")
        if chart is not None:
            with progress.step(f"drawing {args.chart}"):
                from margin_engine.calibration.charts import save_png

                save_png(bt.chart(), chart)
            written.append(f"chart written to {args.chart}")
    for line in written:
        say(line)
    return 0


def cmd_live_replay(args: argparse.Namespace) -> int:
    from margin_engine.live import LiveBook, replay_events

    progress = Progress(args.quiet)
    with progress.step(f"opening the live book in {args.journal}"):
        live = LiveBook.open(args.journal)
    with progress.step(f"reading {args.events}"):
        events = pq.read_table(args.events)
    counts = {"batches": 0, "changes": 0}

    def on_batch(changes: Any, done: int, total: int) -> None:
        counts["changes"] += changes.changed
        t = changes.table
        for account, before, after, excess in zip(
            t.column("account_id").to_pylist(), t.column("status_before").to_pylist(),
            t.column("status_after").to_pylist(), t.column("margin_excess").to_pylist(),
        ):  # fmt: skip
            say(f"batch {changes.seq}: account {account} {before or 'new'} -> {after} (margin excess {excess:,.2f})")
        progress.advance(done, total)

    with progress.step(f"replaying {events.num_rows:,} events into {live.num_accounts:,} accounts"):
        counts["batches"] = replay_events(live, events, batch_rows=args.batch_rows, on_batch=on_batch)
    if args.snapshot:
        with progress.step("writing a snapshot"):
            live.snapshot()
    status = live.margin().column("status").to_pylist()
    summary = ", ".join(f"{s} {status.count(s):,}" for s in STATUSES)
    say(f"{events.num_rows:,} events in {counts['batches']:,} batches, {counts['changes']:,} status changes; "
        f"journal at batch {live.seq:,}; {live.num_accounts:,} accounts: {summary}")
    return 0


def _has_pandas() -> bool:
    try:
        import pandas  # noqa: F401
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------------------------
# The parser: every option has help; a usage error is one line and exit 2
# --------------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _count(text: str) -> int:
    return 0 if text.strip() == "0" else _positive_int(text)


def _amount(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


QUIET_HELP = "no progress on stderr (accepted before or after the subcommand)"


def _subcommand(sub: Any, name: str, help: str, func: Any) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, help=help, description=help)
    # SUPPRESS: an absent --quiet here leaves the one given before the subcommand
    parser.add_argument("--quiet", action="store_true", default=argparse.SUPPRESS, help=QUIET_HELP)
    parser.set_defaults(func=func)
    return parser


def _methodology(text: str) -> Any:
    """``--methodology``: a preset name or a ``.toml`` / ``.json`` file, loaded and validated
    before any work (a bad file is one line: the key, its line, what is wrong)."""
    from margin_engine.methodology import PRESETS, Methodology

    try:
        if text in PRESETS:
            return Methodology.preset(text)
        if not text.endswith((".toml", ".json")):
            raise argparse.ArgumentTypeError(f"expected a preset ({', '.join(PRESETS)}) or a .toml / .json file, got {text!r}")
        return Methodology.from_file(text)
    except MarginInputError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    except OSError as e:
        raise argparse.ArgumentTypeError(f"cannot read {text}: {e.strerror or e}") from None


def _book_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("book", type=Path, help="book directory (see margin-engine generate); a table may be a folder of Parquet files")
    parser.add_argument("--threads", type=_positive_int, default=None, help="worker threads (default: all cores)")
    parser.add_argument(
        "--methodology", type=_methodology, default=None, metavar="FILE|PRESET",
        help="how margin is computed: a preset (v1, exchange, derive_pmrm2, derive_standard) or a "
        "methodology file (.toml / .json, see docs/methodology-files.md); default v1",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="margin-engine", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"margin-engine {__version__}", help="print the version and exit")
    parser.add_argument("--quiet", action="store_true", help=QUIET_HELP)
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", help="what to do (margin-engine COMMAND --help for its options)"
    )

    demo = _subcommand(sub, "demo", "generate an exchange book and margin it under both models", cmd_demo)
    demo.add_argument("--accounts", type=_positive_int, default=1_000_000, help="accounts to generate (default: 1,000,000)")
    demo.add_argument("--seed", type=int, default=7, help="random seed of the generated book (default: 7)")
    demo.add_argument("--threads", type=_positive_int, default=None, help="worker threads (default: all cores)")

    gen = _subcommand(sub, "generate", "write a generated book as a directory of Parquet files", cmd_generate)
    gen.add_argument("--accounts", type=_positive_int, default=1_000_000, help="accounts to generate, at least 1 (default: 1,000,000)")
    gen.add_argument("--seed", type=int, default=7, help="random seed of the generated book (default: 7)")
    gen.add_argument("--shuffle", action="store_true", help="rows not sorted by account")
    gen.add_argument("--out", type=Path, required=True, help="book directory to write (created or updated; written atomically)")

    run = _subcommand(sub, "run", "margin a book directory", cmd_run)
    _book_options(run)
    run.add_argument("--model", choices=["standard", "portfolio"], default="standard", help="margin model (default: standard)")
    run.add_argument("--out", type=Path, default=None, help="results Parquet file (written atomically)")
    run.add_argument("--stream", action="store_true", help="stream positions/balances (sorted by account) in batches: bounded memory")
    run.add_argument(
        "--rows-per-slice", type=_positive_int, default=2_000_000, metavar="N",
        help="with --stream: positions margined per slice, the memory bound (default: 2,000,000)",
    )  # fmt: skip

    scan = _subcommand(sub, "scan", "liquidation scan of a book directory", cmd_scan)
    _book_options(scan)
    scan.add_argument("--model", choices=["standard", "portfolio"], default="standard", help="margin model (default: standard)")
    scan.add_argument("--stress", nargs="+", metavar="UNDERLYING=MOVE", help="index moves to apply, each underlying once, e.g. BTC=-0.2 ETH=-0.25")
    scan.add_argument("--distance", action="store_true", help="add each account's nearest liquidation move")
    scan.add_argument("--map", type=Path, default=None, metavar="PNG", help="draw the liquidation map to this PNG file")
    scan.add_argument("--out", type=Path, default=None, help="scan results Parquet file")
    scan.add_argument("--plan", type=Path, default=None, metavar="PARQUET", help="write liquidation plans (PLAN.closes/.accounts.parquet)")
    scan.add_argument("--insurance-fund", type=_amount, default=0.0, help="insurance fund balance for --plan (default: 0)")
    scan.add_argument("--top", type=_count, default=15, help="accounts to print (default: 15)")

    rep = _subcommand(sub, "report", "capital-efficiency report of a book directory, as one HTML page", cmd_report)
    _book_options(rep)
    rep.add_argument("--out", type=Path, default=Path("report.html"), help="HTML file (default: report.html)")
    rep.add_argument(
        "--hedge", nargs="*", default=None, metavar="INSTRUMENT",
        help="hedge instruments offered to optimal_hedge (default: each underlying's perpetual; "
        "--hedge with no names skips the hedges)",
    )  # fmt: skip
    rep.add_argument("--hedge-objective", choices=["initial", "maintenance"], default="initial", help="margin the hedges minimise (default: initial)")
    rep.add_argument(
        "--stress-moves", nargs="*", type=float, default=[-0.2, -0.1, 0.1, 0.2], metavar="MOVE",
        help="relative moves of the stress section, each underlying alone and all together "
        "(default: -0.2 -0.1 0.1 0.2; no values skips the section)",
    )  # fmt: skip
    rep.add_argument("--no-distance", action="store_true", help="skip the distance-to-liquidation summary (the slowest section)")
    def duration(text: str) -> str:
        from margin_engine.calibration.history import parse_duration

        try:
            parse_duration(text, "duration")
        except MarginInputError:
            raise argparse.ArgumentTypeError(f"expected a duration such as 1h, 1d, 2d, 4y, got {text!r}") from None
        return text

    def confidence(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not 0.5 < value < 1:
            raise argparse.ArgumentTypeError(f"must be in (0.5, 1), got {text}")
        return value

    def calibration_options(p: argparse.ArgumentParser, horizon: str, conf: float) -> None:
        p.add_argument("prices", type=Path, help="price history: a Parquet file or folder with symbol, time, close[, volume]")
        p.add_argument("--horizon", type=duration, default=horizon, help=f"liquidation horizon, e.g. 1h, 1d, 2d (default: {horizon})")
        p.add_argument("--confidence", type=confidence, default=conf, help=f"confidence level in (0.5, 1) (default: {conf})")
        p.add_argument("--method", choices=["ewma", "fhs", "garch"], default="ewma", help="EWMA, filtered historical simulation or GARCH (needs arch) (default: ewma)")
        p.add_argument("--measure", choices=["var", "es"], default="var", help="value at risk or expected shortfall (default: var)")
        p.add_argument(
            "--anti-procyclicality", choices=["none", "buffer", "released_buffer", "stress_weight", "long_floor"], default="none",
            help="EMIR's options: a 25%% buffer (constant, or released as the range rises), 25%% weight on the stressed period, a 10-year floor (default: none)",
        )  # fmt: skip
        p.add_argument("--lookback", type=duration, default="4y", help="history behind each figure (default: 4y)")
        p.add_argument("--decay", type=float, default=0.94, help="EWMA decay per day (default: 0.94)")
        p.add_argument("--gaps", choices=["scale", "drop"], default="scale", help="returns across gaps: scaled by 1/sqrt(k) or dropped (default: scale)")
        p.add_argument("--symbols", nargs="+", default=None, metavar="SYMBOL", help="symbols to use (default: all)")

    cal = _subcommand(sub, "calibrate", "scan ranges, vol shocks and collateral weights from a price history", cmd_calibrate)
    calibration_options(cal, "1h", 0.999)
    cal.add_argument("--volume-in", choices=["base", "quote"], default="base", help="unit of the volume column (default: base, coins)")
    cal.add_argument("--out", type=Path, default=None, metavar="PARQUET", help="risk_params table for a book (written atomically)")
    cal.add_argument("--assets-out", type=Path, default=None, metavar="PARQUET", help="assets table (collateral weights) for a book")
    cal.add_argument("--report-out", type=Path, default=None, metavar="PARQUET", help="the figures behind every number")

    bt = _subcommand(sub, "backtest", "backtest the calibration (and a book's margin) over a price history", cmd_backtest)
    calibration_options(bt, "1d", 0.99)
    bt.add_argument("--book", type=Path, default=None, help="book directory: also margin its accounts at every date")
    bt.add_argument("--model", choices=["standard", "portfolio"], default="portfolio", help="margin model of the book (default: portfolio)")
    bt.add_argument("--unpriced", choices=["error", "drop"], default="error", help="positions in underlyings without a history: an error, or left out (default: error)")
    bt.add_argument("--start", default=None, help="first date (ISO), default: the first with a whole lookback")
    bt.add_argument("--end", default=None, help="last date (ISO), default: the end of the history")
    bt.add_argument("--threads", type=_positive_int, default=None, help="worker threads (default: all cores)")
    bt.add_argument("--out", type=Path, default=None, metavar="PARQUET", help="per underlying and date: range, move, exceedances")
    bt.add_argument("--summary-out", type=Path, default=None, metavar="PARQUET", help="exceedances and test statistics")
    bt.add_argument("--chart", type=Path, default=None, metavar="PNG", help="draw P&L against margin with exceedances marked")

    replay = _subcommand(sub, "live-replay", "replay an event file into a live book's journal folder, printing status changes", cmd_live_replay)
    replay.add_argument("journal", type=Path, help="the live book's journal folder (made with LiveBook(..., journal=DIR))")
    replay.add_argument("events", type=Path, help="Parquet file of events (columns: docs/live.md, 'Replaying events')")
    replay.add_argument("--batch-rows", type=_positive_int, default=10_000, metavar="N", help="most events per batch (default: 10,000)")
    replay.add_argument("--snapshot", action="store_true", help="write a snapshot after the replay")
    return parser


def _fail(message: str, status: int = 2) -> int:
    with suppress(BrokenPipeError):
        sys.stdout.flush()
    print(f"margin-engine: {message}", file=sys.stderr)
    return status


def _one_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with _signals_raise():
            status = int(args.func(args))
        sys.stdout.flush()
        return status
    except BrokenPipeError:  # stdout closed by its reader; the work is done or cannot report
        _silence_stdout()
        return 0
    except MarginInputError as e:
        return _fail(f"bad input: {_one_line(e)}")
    except (OSError, pa.ArrowException) as e:
        return _fail(_one_line(e))
    except KeyboardInterrupt:
        return _fail("interrupted; no result written", 130)
    except Terminated as e:
        return _fail(f"terminated by signal {e.args[0]}; no result written", 128 + int(e.args[0]))


if __name__ == "__main__":
    sys.exit(main())
