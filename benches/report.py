"""Turns pytest-benchmark's JSON into docs/performance.md (and a log-log scaling chart).

    pytest benches --benchmark-only --benchmark-json=out/bench.json
    python benches/peak_memory.py --json out/peak_memory.json          # optional, slow (1M accounts)
    python benches/report.py out/bench.json [more runs.json ...] [--memory out/peak_memory.json] [--out docs/performance.md]

Several JSON files of repeated runs may be given (useful on a shared machine): each benchmark
is then reported from the run where its median was lowest.

The chart (``performance-scaling.png``, next to the Markdown file) needs matplotlib; without it
the report is written all the same, without the chart. Every number is a median over the
benchmark's rounds (see the rounds column of pytest-benchmark's own table).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

# (implementation, function, model, threads or None = "any", input order) -> label, in table order
ROWS: list[tuple[tuple[str, str, str | None, int | None, str], str]] = [
    (("engine", "margin", "standard", 1, "sorted"), "engine · margin standard · 1 thread"),
    (("engine", "margin", "standard", 2, "sorted"), "engine · margin standard · 2 threads"),
    (("engine", "margin", "standard", 2, "shuffled"), "engine · margin standard · 2 threads · shuffled rows"),
    (("numpy", "margin", "standard", None, "sorted"), "numpy · standard (1 thread)"),
    (("polars", "margin", "standard", None, "sorted"), "polars · standard (all cores)"),
    (("duckdb", "margin", "standard", None, "sorted"), "duckdb · standard (all cores)"),
    (("engine", "margin", "portfolio", 1, "sorted"), "engine · margin portfolio · 1 thread"),
    (("engine", "margin", "portfolio", 2, "sorted"), "engine · margin portfolio · 2 threads"),
    (("numpy", "margin", "portfolio", None, "sorted"), "numpy · portfolio (1 thread)"),
    (("engine", "greeks", None, 1, "sorted"), "engine · greeks · 1 thread"),
    (("engine", "greeks", None, 2, "sorted"), "engine · greeks · 2 threads"),
    (("engine", "liquidation_scan", "standard", 1, "sorted"), "engine · liquidation scan · 1 thread"),
    (("engine", "liquidation_scan", "standard", 2, "sorted"), "engine · liquidation scan · 2 threads"),
    (("engine", "liquidation_scan_distance", "standard", 1, "sorted"), "engine · scan + distance · 1 thread"),
    (("engine", "liquidation_scan_distance", "standard", 2, "sorted"), "engine · scan + distance · 2 threads"),
]

# (baseline, engine reference row) pairs for the ratio table
RATIOS = [
    ("numpy", "standard"),
    ("polars", "standard"),
    ("duckdb", "standard"),
    ("numpy", "portfolio"),
]

THREAD_LINES = [
    ("margin", "standard", "margin, standard"),
    ("margin", "portfolio", "margin, portfolio"),
    ("greeks", None, "greeks"),
    ("liquidation_scan", "standard", "liquidation scan"),
    ("liquidation_scan_distance", "standard", "scan + distance"),
]

CHART_LINES = [
    (("engine", "margin", "standard", 2, "sorted"), "engine standard (2 threads)", "C0", "-"),
    (("engine", "margin", "standard", 1, "sorted"), "engine standard (1 thread)", "C0", ":"),
    (("numpy", "margin", "standard", None, "sorted"), "numpy standard", "C1", "-"),
    (("polars", "margin", "standard", None, "sorted"), "polars standard", "C2", "-"),
    (("duckdb", "margin", "standard", None, "sorted"), "duckdb standard", "C3", "-"),
    (("engine", "margin", "portfolio", 2, "sorted"), "engine portfolio (2 threads)", "C4", "-"),
    (("numpy", "margin", "portfolio", None, "sorted"), "numpy portfolio", "C5", "-"),
    (("engine", "greeks", None, 2, "sorted"), "engine greeks (2 threads)", "C6", "--"),
    (("engine", "liquidation_scan", "standard", 2, "sorted"), "engine liquidation scan (2 threads)", "C7", "--"),
]


# ----------------------------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------------------------


class Result:
    def __init__(self, bench: dict[str, Any]) -> None:
        info = bench.get("extra_info", {})
        self.name: str = bench["name"]
        self.implementation: str = info.get("implementation", "?")
        self.function: str = info.get("function", "?")
        self.model: str | None = info.get("model")
        self.threads: int | None = info.get("threads")
        self.accounts: int = int(info.get("accounts", 0))
        self.rows: int = int(info.get("rows", 0))
        self.input_order: str = info.get("input_order", "sorted")
        self.suite: str = info.get("suite", "reference" if self.implementation == "reference" else "scaling")
        stats = bench["stats"]
        self.median: float = stats["median"]
        self.rounds: int = stats["rounds"]
        self.min: float = stats["min"]
        self.max: float = stats["max"]
        # this benchmark's median in each run merged (in the order the runs were given)
        self.run_medians: list[float] = [self.median]

    def matches(self, key: tuple[str, str, str | None, int | None, str]) -> bool:
        impl, function, model, threads, order = key
        return (
            self.implementation == impl
            and self.function == function
            and self.model == model
            and (threads is None or self.threads == threads)
            and self.input_order == order
        )


def load(paths: list[Path]) -> tuple[dict[str, Any], list[Result]]:
    """One or more JSON files of the same benchmarks (repeated runs on a shared machine): for each
    benchmark, the run with the lowest median is kept (the least disturbed one)."""
    first: dict[str, Any] | None = None
    every_run: dict[str, list[Result]] = defaultdict(list)
    runs = []
    for path in paths:
        data = json.loads(path.read_text())
        first = first or data
        mine = data.get("machine_info", {}).get("margin_engine", {})
        runs.append({"file": path.name, "datetime": data.get("datetime"),
                     "commit": data.get("commit_info", {}).get("id"),
                     "loadavg_at_start": mine.get("loadavg_at_start"), "loadavg_at_end": mine.get("loadavg_at_end")})
        for b in data["benchmarks"]:
            if "implementation" not in b.get("extra_info", {}):
                continue
            every_run[b.get("fullname", b["name"])].append(Result(b))
    assert first is not None
    best = []
    for results in every_run.values():
        kept = min(results, key=lambda r: r.median)
        kept.run_medians = [r.median for r in results]
        best.append(kept)
    first = dict(first)
    first["runs"] = runs
    return first, best


def find(results: list[Result], key: Any, accounts: int) -> Result | None:
    hits = [r for r in results if r.accounts == accounts and r.matches(key)]
    return min(hits, key=lambda r: r.median) if hits else None


# ----------------------------------------------------------------------------------------------
# Formatting
# ----------------------------------------------------------------------------------------------


def seconds(s: float | None) -> str:
    if s is None:
        return "—"
    if s < 1e-3:
        return f"{s * 1e6:.0f} µs"
    if s < 1.0:
        return f"{s * 1e3:.1f} ms"
    return f"{s:.2f} s"


def rate(n: float) -> str:
    if n >= 1e6:
        return f"{n / 1e6:.1f} M"
    if n >= 1e3:
        return f"{n / 1e3:.0f} k"
    return f"{n:.0f}"


def ratio(x: float | None) -> str:
    return "—" if x is None else (f"{x:.1f}×" if x < 100 else f"{x:,.0f}×")


def table(header: list[str], rows: list[list[str]], align: str | None = None) -> list[str]:
    align = align or ("l" + "r" * (len(header) - 1))
    sep = ["---:" if a == "r" else "---" for a in align]
    out = ["| " + " | ".join(header) + " |", "| " + " | ".join(sep) + " |"]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return out


def _loads(start: list[float] | None, end: list[float] | None) -> str:
    parts = [f"{name} {v[0]:.2f}" for name, v in (("start", start), ("end", end)) if v]
    return f" (1-min load average at {', '.join(parts)})" if parts else ""


def machine_section(data: dict[str, Any]) -> list[str]:
    info = data.get("machine_info", {})
    mine = info.get("margin_engine")
    if mine is None:  # JSON from a run without benches/conftest.py: describe this machine
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
        from benches.machine import machine_info

        mine = machine_info()
    versions = mine.get("versions", {})
    ram = mine.get("ram_bytes")
    lines = [
        "## Machine",
        "",
        (f"- CPU: {mine.get('cpu_model') or info.get('cpu', {}).get('brand_raw', '?')}, "
        f"**{mine.get('nproc')} cores** available (nproc)"),
        f"- RAM: {ram / 2**30:.1f} GiB" if ram else "- RAM: ?",
        f"- OS: {mine.get('system', '?')}; Python {mine.get('python', '?')} ({mine.get('python_implementation', '')})",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v),
        f"- Benchmark run: finished {data.get('datetime', '?')[:19]}"
        + _loads(mine.get("loadavg_at_start"), mine.get("loadavg_at_end"))
        if len(data.get("runs", [])) <= 1 else "- Benchmark runs: see below",
    ]
    runs = data.get("runs", [])
    if len(runs) > 1:
        lines.append(
            f"- Merged from {len(runs)} runs of the suite (the machine is shared): each benchmark's figures "
            "come from the run where its median was lowest. Runs: "
            + "; ".join(
                f"{r['datetime'][:19] if r.get('datetime') else r['file']}"
                + _loads(r.get("loadavg_at_start"), r.get("loadavg_at_end"))
                + (f" at commit {r['commit'][:12]}" if r.get("commit") else "")
                for r in runs
            )
        )
    commit = data.get("commit_info", {})
    if commit.get("id") and len(runs) <= 1:
        lines.append(f"- Commit: {commit['id'][:12]}{' (dirty tree)' if commit.get('dirty') else ''}")
    return lines


# ----------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------


def report(data: dict[str, Any], all_results: list[Result], memory: dict[str, Any] | None, chart: str | None,
           stream: dict[str, Any] | None = None) -> str:
    results = [r for r in all_results if r.suite == "scaling"]
    reference = [r for r in all_results if r.suite == "reference"]
    sizes = sorted({r.accounts for r in results})
    ref_sizes = sorted({r.accounts for r in reference if r.implementation == "reference"})
    main_sizes = [s for s in sizes if any(r.accounts == s and r.implementation != "engine" for r in results)] or sizes
    rows_of = {s: next((r.rows for r in results if r.accounts == s), 0) for s in sizes}
    L: list[str] = [
        "# Performance",
        "",
        ("Generated by `benches/report.py` from pytest-benchmark's JSON "
        "(`pytest benches --benchmark-only --benchmark-json=...`). Books come from "
        "`margin_engine.synthetic.generate(accounts, seed=7)`, about 10 position rows and 1.6 balance rows "
        "per account, rows sorted by account unless marked *shuffled*. Times are medians of the "
        "benchmark's rounds (engine: 7, baselines: 3, after one warm-up below 1M accounts) and include "
        "everything from the Arrow input tables to the Arrow result table; generating the book and "
        "building `me.Book` / `me.Market` are not timed."),
        "",
        ("The baselines (`benches/baselines/`) compute the same standard / portfolio margin from the same "
        "tables, written the way a quant would without the engine: numpy (np.unique, bincount, reduceat; "
        "one thread), a polars lazy query and DuckDB SQL (both on all cores). `tests/test_baselines.py` "
        "checks that each equals the engine to 1e-9 relative with identical statuses."),
        "",
        *machine_section(data),
        "",
        "## Medians",
        "",
    ]
    header = ["implementation"] + [f"{s:,} accounts ({rows_of[s] / 1e6:.2f}M rows)" for s in sizes]
    body = []
    for key, label in ROWS:
        cells = [find(results, key, s) for s in sizes]
        if any(cells):
            body.append([label] + [seconds(c.median if c else None) for c in cells])
    L += table(header, body)

    # ratios
    L += ["", "## Engine vs baselines", "",
          ("Baseline median ÷ engine median for the same model (higher: the engine is faster). "
          "The 2-thread column is the like-for-like comparison with polars and DuckDB, which use "
          "both cores; the 1-thread column with numpy, which uses one."), ""]
    header = ["baseline"] + [f"{s:,}: vs engine 1 thread" for s in main_sizes] + [f"{s:,}: vs engine 2 threads" for s in main_sizes]
    body = []
    for impl, model in RATIOS:
        cells1, cells2 = [], []
        for s in main_sizes:
            base = find(results, (impl, "margin", model, None, "sorted"), s)
            e1 = find(results, ("engine", "margin", model, 1, "sorted"), s)
            e2 = find(results, ("engine", "margin", model, 2, "sorted"), s)
            cells1.append(ratio(base.median / e1.median) if base and e1 else "—")
            cells2.append(ratio(base.median / e2.median) if base and e2 else "—")
        body.append([f"{impl} {model}"] + cells1 + cells2)
    L += table(header, body)

    # throughput
    big = max(sizes)
    L += ["", f"## Throughput at {big:,} accounts", "",
          f"Position rows per second ({rows_of[big]:,} rows) and accounts per second.", ""]
    body = []
    for key, label in ROWS:
        r = find(results, key, big)
        if r:
            body.append([label, seconds(r.median), rate(r.rows / r.median) + " rows/s", rate(r.accounts / r.median) + " accounts/s"])
    L += table(["implementation", "median", "position rows/s", "accounts/s"], body)

    n_runs = len(data.get("runs", []))
    if n_runs > 1:
        L += ["", f"## Run-to-run spread at {big:,} accounts", "",
              (f"The figures above are the lowest of {n_runs} runs' medians, baselines and engine alike. "
               "Each run's median, to show how much this shared 2-core machine moves between runs:"), ""]
        body = []
        for key, label in ROWS:
            r = find(results, key, big)
            if r:
                body.append([label] + [seconds(m) for m in r.run_medians]
                            + [f"{(max(r.run_medians) / min(r.run_medians) - 1) * 100:.0f}%"])
        L += table(["implementation"] + [f"run {i + 1}" for i in range(n_runs)] + ["highest over lowest"], body)

    if ref_sizes:
        n = ref_sizes[0]
        L += ["", f"## Pure-Python reference ({n:,} accounts)", "",
              ("`margin_engine.reference` is the readable oracle of the differential tests, not a "
              "production path; timed on a small book for its per-row throughput, with the engine "
              "(1 thread) on the same book."), ""]
        body = []
        for model in ("standard", "portfolio"):
            ref = find(reference, ("reference", "margin", model, None, "sorted"), n)
            eng = find(reference, ("engine", "margin", model, 1, "sorted"), n)
            if ref:
                body.append([
                    model,
                    seconds(ref.median),
                    rate(ref.rows / ref.median) + " rows/s",
                    seconds(eng.median) if eng else "—",
                    rate(eng.rows / eng.median) + " rows/s" if eng else "—",
                    ratio(ref.median / eng.median) if eng else "—",
                ])
        L += table(["model", "reference", "reference rows/s", "engine (1 thread)", "engine rows/s", "engine speed-up"], body)
        L += ["", (f"Per position row, the reference's rate is about the same at any size (one Python loop per "
              f"row), while the engine's fixed cost per call (reading the book's keys, thread start) is spread over "
              f"more rows on a bigger book. Per-row speed-up at {big:,} accounts: engine rows/s there ÷ reference "
              f"rows/s above."), ""]
        body = []
        for model in ("standard", "portfolio"):
            ref = find(reference, ("reference", "margin", model, None, "sorted"), n)
            for threads in (1, 2):
                eng = find(results, ("engine", "margin", model, threads, "sorted"), big)
                if ref and eng:
                    body.append([f"{model}, {threads} thread{'s' if threads > 1 else ''}", rate(eng.rows / eng.median) + " rows/s",
                                 rate(ref.rows / ref.median) + " rows/s", ratio((eng.rows / eng.median) / (ref.rows / ref.median))])
        L += table(["engine model, threads", f"engine at {big:,} accounts", "reference", "per-row speed-up"], body)

    what_if = [r for r in all_results if r.suite == "what_if"]
    if what_if:
        L += ["", "## What-if (order entry): one account of 10 positions, before and after one trade", "",
              ("`me.what_if` from Python (pytest-benchmark's calibrated rounds), against the same question asked "
              "with the bulk API (`me.margin` on the account's rows as Arrow tables, before and after) and the "
              "reference's `what_if`."), ""]
        body = []
        for model in ("standard", "portfolio"):
            eng = next((r for r in what_if if r.implementation == "engine" and r.model == model), None)
            for r in sorted((r for r in what_if if r.model == model), key=lambda r: r.median):
                body.append([model, r.implementation, f"{r.median * 1e6:,.1f} µs", f"{r.min * 1e6:,.1f} µs",
                             ratio(r.median / eng.median) if eng else "—"])
        L += table(["model", "implementation", "median", "min", "÷ engine what_if"], body)

    if stream:
        gib = 2**30
        L += ["", f"## Streaming a {stream['accounts']:,}-account book from Parquet", "",
              (f"`benches/stream_memory.py`: `margin-engine run DIR --stream --out results.parquet` in a fresh process "
              f"under GNU `time -v`. Book: {stream['position_rows']:,} position rows and {stream['balance_rows']:,} balance "
              f"rows ({stream['arrow_bytes_of_rows'] / gib:.2f} GiB as Arrow tables, {stream['parquet_bytes'] / gib:.2f} GiB "
              "Parquet), a generated 1M-account block repeated with shifted account ids. Results are written slice by "
              "slice; nothing of the book is held whole."), ""]
        body = [[model, f"{r['accounts']:,}", f"{r['wall_s']:.1f} s", rate(stream['position_rows'] / r['wall_s']) + " rows/s",
                 f"{r['max_rss_mib']:,.0f} MiB", f"{r['max_rss_mib'] * 2**20 / stream['arrow_bytes_of_rows']:.2f}×"]
                for model, r in stream["runs"].items()]
        L += table(["model", "accounts", "wall time (read + margin + write)", "position rows/s", "max RSS", "RSS ÷ book as Arrow"], body)

    # thread scaling
    L += ["", "## Thread scaling (1 → 2 threads)", "",
          "Engine median at 1 thread ÷ median at 2 threads (2.0× is perfect scaling on this 2-core machine).", ""]
    body = []
    for function, model, label in THREAD_LINES:
        cells = []
        for s in sizes:
            t1 = find(results, ("engine", function, model, 1, "sorted"), s)
            t2 = find(results, ("engine", function, model, 2, "sorted"), s)
            cells.append(f"{ratio(t1.median / t2.median)} ({seconds(t1.median)} → {seconds(t2.median)})" if t1 and t2 else "—")
        body.append([label] + cells)
    L += table(["function"] + [f"{s:,} accounts" for s in sizes], body)

    if memory:
        mib = 2**20
        runs = {r["model"]: r for r in memory["runs"]}
        floor = runs.get("import", {}).get("max_rss_kib", 0) * 1024
        held = runs.get("read", {}).get("max_rss_kib", 0) * 1024
        L += ["", f"## Peak memory ({memory['accounts']:,} accounts, book read from Parquet)", "",
              (f"`benches/peak_memory.py`: max RSS from GNU `time -v`, each run in a fresh process that reads "
              f"the book with `me.io.read_book` (generation is not measured: it allocates far more than it keeps). "
              f"Input tables in memory (`nbytes`): **{memory['nbytes'] / mib:,.0f} MiB** "
              f"({memory.get('positions_rows', 0):,} position rows, {memory.get('balances_rows', 0):,} balance rows); "
              f"Parquet on disk {memory['parquet_bytes'] / mib:,.0f} MiB. Threads: {memory.get('threads', 'all')}."), ""]
        body = []
        for name, label in (("import", "python + `import margin_engine`"), ("read", "+ read the book"),
                            ("standard", "+ margin, standard"), ("portfolio", "+ margin, portfolio")):
            r = runs.get(name)
            if not r:
                continue
            rss = r["max_rss_kib"] * 1024
            body.append([
                label,
                f"{rss / mib:,.0f} MiB",
                f"{(rss - floor) / memory['nbytes']:.2f}×" if name != "import" else "—",
                f"{(rss - held) / mib:,.0f} MiB" if name in ("standard", "portfolio") else "—",
                (f"{r['margin_peak_kib'] * 1024 / mib:,.0f} MiB ({r['margin_peak_kib'] * 1024 / memory['nbytes']:.2f}× input)"
                 if "margin_peak_kib" in r else "—"),
                seconds(r.get("margin_seconds")) if r.get("margin_seconds") else "—",
            ])
        L += table(["run", "max RSS", "(RSS − import) ÷ input", "RSS − read run", "margin call's own peak", "margin time"], body)
        L += ["", ("*margin call's own peak*: the high-water mark during `me.margin` above the RSS just before "
              "it (VmHWM reset through `/proc/self/clear_refs`), i.e. the engine's working memory.")]

    if chart:
        L += ["", "## Scaling", "", f"![time vs accounts, log-log]({chart})", "",
              "Median time against accounts, both axes logarithmic: a slope of 1 is linear scaling."]
    else:
        L += ["", "## Scaling", "", "_(matplotlib not installed: no chart; `pip install matplotlib`.)_"]
    L += ["", "## Reproduce", "", "```",
          "make bench                                   # 10k and 100k accounts",
          "BENCH_FULL=1 make bench                      # also 1M accounts",
          "BENCH_FULL=1 BENCH_RUNS=3 make bench         # three runs, merged (this page)",
          "python benches/peak_memory.py --json out/peak_memory.json",
          "python benches/report.py out/bench.json --memory out/peak_memory.json",
          "```", ""]
    return "\n".join(L)


def draw_chart(results: list[Result], path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, ax = plt.subplots(figsize=(8, 5.5), dpi=120)
    for key, label, color, style in CHART_LINES:
        pts = sorted((r.accounts, r.median) for r in results if r.matches(key) and r.suite == "scaling")
        by_size: dict[int, float] = defaultdict(lambda: float("inf"))
        for a, m in pts:
            by_size[a] = min(by_size[a], m)
        if len(by_size) < 1:
            continue
        xs = sorted(by_size)
        ax.plot(xs, [by_size[x] for x in xs], style, marker="o", color=color, label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("accounts")
    ax.set_ylabel("median time (s)")
    ax.set_title("margin-engine vs baselines: time against book size")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("bench_json", type=Path, nargs="+", help="one or more runs (lowest median per benchmark kept)")
    ap.add_argument("--memory", type=Path, default=None, help="JSON written by benches/peak_memory.py --json")
    ap.add_argument("--stream", type=Path, default=None, help="JSON written by benches/stream_memory.py --json")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "docs" / "performance.md")
    args = ap.parse_args(argv)
    data, results = load(args.bench_json)
    if not results:
        sys.exit(f"{', '.join(map(str, args.bench_json))}: no benchmarks with extra_info from benches/test_bench_models.py")
    memory = json.loads(args.memory.read_text()) if args.memory and args.memory.exists() else None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    chart_path = args.out.with_name("performance-scaling.png")
    chart = chart_path.name if draw_chart(results, chart_path) else None
    stream = json.loads(args.stream.read_text()) if args.stream and args.stream.exists() else None
    text = report(data, results, memory, chart, stream)
    exact = Path(__file__).resolve().parent / "results" / "liquidation_exact.md"
    if exact.exists():  # written by benches/liquidation_exact_report.py --markdown
        text += "\n" + exact.read_text()
    args.out.write_text(text)
    print(f"wrote {args.out}" + (f" and {chart_path}" if chart else " (no chart: matplotlib missing)"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
