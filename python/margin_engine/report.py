"""The capital-efficiency report: what portfolio margin would free, what collateral sits idle,
and which hedges free the most margin — as Arrow tables, and as one self-contained HTML page.

>>> report = efficiency_report(book, positions, balances, market)     # doctest: +SKIP
>>> write_html(report, "report.html")                                  # doctest: +SKIP

All numbers come from :func:`margin_engine.margin` under both models (METHODOLOGY §3, §4, §6)
and, when available, :func:`margin_engine.optimal_hedge`. Definitions are in
``docs/optimization.md`` ("Efficiency report").
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import html
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from margin_engine import api
from margin_engine.charts import money

__all__ = [
    "IDLE_BUCKETS",
    "QUANTILES",
    "SAVING_BINS",
    "EfficiencyReport",
    "efficiency_report",
    "render_html",
    "write_html",
]

QUANTILES = (0.0, 0.01, 0.05, 0.10, 0.25, 0.50, 0.75, 0.90, 0.95, 0.99, 1.0)
# Relative saving (IM_std − IM_port) / IM_std: 1 = portfolio margin is zero, < 0 = it costs more.
SAVING_BINS = (-math.inf, -5.0, -2.0, -1.0, -0.5, -0.2, -0.05, 0.05, 0.2, 0.4, 0.6, 0.8, 0.95, 1.0)
# Idle collateral (free_collateral of healthy accounts), USD.
IDLE_BUCKETS = (0.0, 1e3, 1e4, 1e5, 1e6, 1e7, math.inf)
TOP_HEDGES = 20


@dataclasses.dataclass(frozen=True)
class EfficiencyReport:
    """The report's numbers.

    ``summary``: one row per model (``standard``, ``portfolio``): accounts, equity, collateral,
    IM, MM, free collateral, idle collateral and accounts per status.
    ``accounts``: per account (sorted by ``account_id``): ``im_standard, im_portfolio, saving``
    (= ``im_standard − im_portfolio``), ``saving_pct`` (of ``im_standard``, null when it is 0),
    ``mm_standard, mm_portfolio, status_standard, status_portfolio``.
    ``saving_quantiles``: ``quantile, saving, saving_pct`` over accounts with margin under either
    model (``saving_pct`` over those with ``im_standard > 0``).
    ``saving_histogram``: ``bin_low, bin_high`` (relative saving, [low, high); the last bin
    includes 1), ``accounts``, ``saving`` (USD sum) over accounts with ``im_standard > 0``.
    ``idle``: per model: ``healthy_accounts, idle_total, idle_mean, idle_p50, idle_p90,
    idle_p99, idle_max, top1pct_share, top10pct_share``.
    ``idle_distribution``: per model and USD bucket ``[low, high)``: ``accounts, idle``.
    ``top_hedges``: up to 20 single hedges freeing the most margin, from
    :func:`margin_engine.optimal_hedge` (``margin_freed = margin_before − margin_after``).
    ``hedges_total_freed``: Σ over accounts of the best single hedge's ``margin_freed``.
    """

    summary: pa.Table
    accounts: pa.Table
    saving_quantiles: pa.Table
    saving_histogram: pa.Table
    idle: pa.Table
    idle_distribution: pa.Table
    top_hedges: pa.Table
    im_standard: float
    im_portfolio: float
    capital_freed: float
    capital_freed_pct: float
    mm_freed: float
    hedges_total_freed: float
    hedge_objective: str
    hedge_instruments: list[str]
    notes: list[str]
    generated_at: str


def _col(t: pa.Table, name: str) -> np.ndarray:
    return np.asarray(t.column(name).to_numpy(zero_copy_only=False), dtype=np.float64)


def _is(t: pa.Table, status: str) -> np.ndarray:
    return np.asarray(pc.equal(t.column("status"), status).to_numpy(zero_copy_only=False), dtype=bool)


_STATUSES = ("healthy", "margin_call", "liquidatable", "bankrupt")
_HEDGE_COLUMNS = {
    "account_id": pa.uint64(),
    "underlying": pa.string(),
    "hedge_instrument": pa.string(),
    "quantity": pa.float64(),
    "delta_neutral_quantity": pa.float64(),
    "margin_before": pa.float64(),
    "margin_after": pa.float64(),
    "margin_freed": pa.float64(),
    "margin_freed_pct": pa.float64(),
}


def _summary(results: dict[str, pa.Table]) -> pa.Table:
    rows: dict[str, list[Any]] = {"model": []}
    for model, t in results.items():
        rows["model"].append(model)
        healthy = _is(t, "healthy")
        values = {
            "accounts": t.num_rows,
            "equity": float(_col(t, "equity").sum()),
            "collateral_initial": float(_col(t, "collateral_initial").sum()),
            "collateral_maintenance": float(_col(t, "collateral_maintenance").sum()),
            "initial_margin": float(_col(t, "initial_margin").sum()),
            "maintenance_margin": float(_col(t, "maintenance_margin").sum()),
            "free_collateral": float(_col(t, "free_collateral").sum()),
            "idle_collateral": float(_col(t, "free_collateral")[healthy].sum()),
        }
        for s in _STATUSES:
            values[f"accounts_{s}"] = int(_is(t, s).sum())
        for k, v in values.items():
            rows.setdefault(k, []).append(v)
    return pa.table(rows)


def _quantiles(saving: np.ndarray, pct: np.ndarray) -> pa.Table:
    q = np.asarray(QUANTILES)
    s = np.quantile(saving, q) if saving.size else np.full(q.size, np.nan)
    p = np.quantile(pct, q) if pct.size else np.full(q.size, np.nan)
    return pa.table(
        {"quantile": q, "saving": pa.array(s, mask=np.isnan(s)), "saving_pct": pa.array(p, mask=np.isnan(p))}
    )


def _histogram(pct: np.ndarray, saving: np.ndarray) -> pa.Table:
    edges = np.asarray(SAVING_BINS)
    # bins [e_k, e_{k+1}); the last closed so that saving_pct = 1 (portfolio margin 0) counts
    idx = np.clip(np.searchsorted(edges, pct, side="right") - 1, 0, edges.size - 2)
    counts = np.bincount(idx, minlength=edges.size - 1)
    sums = np.bincount(idx, weights=saving, minlength=edges.size - 1)
    return pa.table(
        {"bin_low": edges[:-1], "bin_high": edges[1:], "accounts": pa.array(counts, pa.int64()), "saving": sums}
    )


def _top_share(descending: np.ndarray, fraction: float) -> float:
    """Share of the total held by the largest ``fraction`` of the values (at least one)."""
    total = float(descending.sum())
    if total <= 0:
        return math.nan
    k = max(1, math.ceil(fraction * descending.size))
    return float(descending[:k].sum() / total)


def _idle(results: dict[str, pa.Table]) -> tuple[pa.Table, pa.Table]:
    summary: dict[str, list[Any]] = {
        k: []
        for k in (
            "model",
            "healthy_accounts",
            "idle_total",
            "idle_mean",
            "idle_p50",
            "idle_p90",
            "idle_p99",
            "idle_max",
            "top1pct_share",
            "top10pct_share",
        )
    }
    dist: dict[str, list[Any]] = {k: [] for k in ("model", "bucket_low", "bucket_high", "accounts", "idle")}
    edges = np.asarray(IDLE_BUCKETS)
    for model, t in results.items():
        idle = np.sort(np.maximum(_col(t, "free_collateral")[_is(t, "healthy")], 0.0))[::-1]
        total = float(idle.sum())
        n = idle.size

        summary["model"].append(model)
        summary["healthy_accounts"].append(n)
        summary["idle_total"].append(total)
        for name, value in (
            ("idle_mean", idle.mean() if n else math.nan),
            ("idle_p50", np.quantile(idle, 0.5) if n else math.nan),
            ("idle_p90", np.quantile(idle, 0.9) if n else math.nan),
            ("idle_p99", np.quantile(idle, 0.99) if n else math.nan),
            ("idle_max", idle[0] if n else math.nan),
        ):
            summary[name].append(float(value))
        summary["top1pct_share"].append(_top_share(idle, 0.01))
        summary["top10pct_share"].append(_top_share(idle, 0.10))
        idx = np.clip(np.searchsorted(edges, idle, side="right") - 1, 0, edges.size - 2)
        counts = np.bincount(idx, minlength=edges.size - 1)
        sums = np.bincount(idx, weights=idle, minlength=edges.size - 1)
        for b in range(edges.size - 1):
            dist["model"].append(model)
            dist["bucket_low"].append(float(edges[b]))
            dist["bucket_high"].append(float(edges[b + 1]))
            dist["accounts"].append(int(counts[b]))
            dist["idle"].append(float(sums[b]))
    return pa.table(summary), pa.table(
        dist,
        schema=pa.schema(
            [
                ("model", pa.string()),
                ("bucket_low", pa.float64()),
                ("bucket_high", pa.float64()),
                ("accounts", pa.int64()),
                ("idle", pa.float64()),
            ]
        ),
    )


def _empty_hedges() -> pa.Table:
    return pa.table({k: pa.array([], t) for k, t in _HEDGE_COLUMNS.items()})


def _default_hedges(book: api.Book, market: api.Market) -> list[str]:
    """One perpetual per underlying that has a mark (the usual hedge instrument)."""
    inst = book.instruments
    marked = set(pc.cast(market.marks.column("instrument"), pa.string()).to_pylist())
    names = pc.cast(inst.column("instrument"), pa.string()).to_pylist()
    kinds = inst.column("kind").to_pylist()
    unders = inst.column("underlying").to_pylist()
    chosen: dict[str, str] = {}
    for name, kind, und in zip(names, kinds, unders):
        if kind == "perpetual" and name in marked and und not in chosen:
            chosen[und] = name
    return [chosen[u] for u in sorted(chosen)]


def _hedges(
    book: api.Book,
    positions: Any,
    balances: Any,
    market: api.Market,
    hedge_instruments: list[str],
    objective: str,
    threads: int | None,
    notes: list[str],
) -> tuple[pa.Table, float]:
    optimal_hedge = getattr(api, "optimal_hedge", None)
    if optimal_hedge is None:
        notes.append("optimal hedges unavailable: this build has no margin_engine.optimal_hedge")
        return _empty_hedges(), 0.0
    if not hedge_instruments:
        notes.append("optimal hedges skipped: no hedge instruments (none given, or no perpetual with a mark)")
        return _empty_hedges(), 0.0
    try:
        h = optimal_hedge(
            book,
            positions,
            balances,
            market,
            hedge_instruments=hedge_instruments,
            model="portfolio",
            objective=objective,
            threads=threads,
        )
    except NotImplementedError as e:  # pragma: no cover - a stub in a partial build
        notes.append(f"optimal hedges unavailable: {e}")
        return _empty_hedges(), 0.0
    before, after = _col(h, "margin_before"), _col(h, "margin_after")
    freed = before - after
    with np.errstate(divide="ignore", invalid="ignore"):
        freed_pct = np.where(before > 0, freed / np.where(before > 0, before, 1.0), np.nan)
    h = h.append_column("margin_freed", pa.array(freed, pa.float64()))
    h = h.append_column("margin_freed_pct", pa.array(freed_pct, pa.float64(), mask=np.isnan(freed_pct)))
    # best single hedge per account (rows of one account are alternatives, not additive)
    if h.num_rows:
        best = h.group_by("account_id").aggregate([("margin_freed", "max")])
        total = float(np.maximum(_col(best, "margin_freed_max"), 0.0).sum())
    else:
        total = 0.0
    useful = h.filter(pc.greater(h.column("margin_freed"), 0.0))
    keys = [("margin_freed", "descending"), ("account_id", "ascending"), ("hedge_instrument", "ascending")]
    if useful.num_rows:
        useful = useful.take(pc.select_k_unstable(useful, k=min(TOP_HEDGES, useful.num_rows), sort_keys=keys))
    top = useful.sort_by(keys)
    return top.select(list(_HEDGE_COLUMNS)), total


def efficiency_report(
    book: api.Book,
    positions: Any,
    balances: Any,
    market: api.Market,
    hedge_instruments: list[str] | None = None,
    *,
    hedge_objective: str = "initial",
    threads: int | None = None,
) -> EfficiencyReport:
    """Margin under the standard vs the portfolio model, capital freed, idle collateral, the
    per-account saving distribution and the single hedges that free the most margin.

    ``hedge_instruments``: instruments offered as hedges to :func:`margin_engine.optimal_hedge`
    (default: each underlying's perpetual); ``[]`` skips the hedges. ``hedge_objective``:
    ``"initial"`` (default: the margin that locks capital) or ``"maintenance"``.
    """
    results = {
        model: api.margin(book, positions, balances, market, model=model, threads=threads)
        for model in ("standard", "portfolio")
    }
    std, port = results["standard"], results["portfolio"]
    if not std.column("account_id").equals(port.column("account_id")):  # pragma: no cover - engine contract
        raise RuntimeError("standard and portfolio results are not aligned by account_id")
    im_s, im_p = _col(std, "initial_margin"), _col(port, "initial_margin")
    mm_s, mm_p = _col(std, "maintenance_margin"), _col(port, "maintenance_margin")
    saving = im_s - im_p
    with np.errstate(divide="ignore", invalid="ignore"):
        pct = np.where(im_s > 0, saving / np.where(im_s > 0, im_s, 1.0), np.nan)
    accounts = pa.table(
        {
            "account_id": std.column("account_id"),
            "im_standard": im_s,
            "im_portfolio": im_p,
            "saving": saving,
            "saving_pct": pa.array(pct, pa.float64(), mask=np.isnan(pct)),
            "mm_standard": mm_s,
            "mm_portfolio": mm_p,
            "status_standard": std.column("status"),
            "status_portfolio": port.column("status"),
        }
    )
    margined = (im_s > 0) | (im_p > 0)
    has_std = im_s > 0
    im_standard, im_portfolio = float(im_s.sum()), float(im_p.sum())
    freed = im_standard - im_portfolio
    idle, idle_dist = _idle(results)
    notes: list[str] = []
    if hedge_objective not in ("initial", "maintenance"):
        raise ValueError(f"hedge_objective must be 'initial' or 'maintenance', got {hedge_objective!r}")
    hedges = _default_hedges(book, market) if hedge_instruments is None else [str(h) for h in hedge_instruments]
    top, hedge_total = _hedges(book, positions, balances, market, hedges, hedge_objective, threads, notes)
    n_more = int((saving < 0).sum())
    if n_more:
        notes.append(
            f"{n_more:,} accounts need more initial margin under the portfolio model (its ±15% scan "
            "charges naked directional positions far more than the standard rates); hedged books save."
        )
    return EfficiencyReport(
        summary=_summary(results),
        accounts=accounts,
        saving_quantiles=_quantiles(saving[margined], pct[has_std]),
        saving_histogram=_histogram(pct[has_std], saving[has_std]),
        idle=idle,
        idle_distribution=idle_dist,
        top_hedges=top,
        im_standard=im_standard,
        im_portfolio=im_portfolio,
        capital_freed=freed,
        capital_freed_pct=freed / im_standard if im_standard else math.nan,
        mm_freed=float(mm_s.sum() - mm_p.sum()),
        hedges_total_freed=hedge_total,
        hedge_objective=hedge_objective,
        hedge_instruments=hedges,
        notes=notes,
        generated_at=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    )


# ----------------------------------------------------------------------------------------------
# HTML
# ----------------------------------------------------------------------------------------------


_usd = money  # one formatting of USD amounts for the page and the charts


def _pct(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{100 * x:+.1f}%"


def _bin_label(lo: float, hi: float, fmt: Any) -> str:
    if math.isinf(lo):
        return f"< {fmt(hi)}"
    if math.isinf(hi):
        return f"≥ {fmt(lo)}"
    return f"{fmt(lo)} to {fmt(hi)}"


def _html_table(headers: list[str], rows: list[list[str]], numeric_from: int = 1, cls: str = "") -> str:
    head = "".join(
        f'<th class="num">{html.escape(h)}</th>' if i >= numeric_from else f"<th>{html.escape(h)}</th>"
        for i, h in enumerate(headers)
    )
    body = []
    for r in rows:
        cells = "".join(
            f'<td class="num">{html.escape(str(c))}</td>' if i >= numeric_from else f"<td>{html.escape(str(c))}</td>"
            for i, c in enumerate(r)
        )
        body.append(f"<tr>{cells}</tr>")
    return f'<table class="{cls}"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _charts(report: EfficiencyReport) -> dict[str, str]:
    """Inline SVG charts (empty when matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError:  # pragma: no cover - exercised only without the plot extra
        return {}
    style = {
        "svg.fonttype": "none",  # text stays text: small files, the browser's font
        "text.parse_math": False,  # "$1k to $10k" is not mathtext
        "font.size": 9,
        "axes.spines.top": False,
        "axes.spines.right": False,
    }
    with plt.rc_context(style):
        return _draw(report, plt, FuncFormatter)


def _qty(q: float) -> str:
    return f"{q:+,.0f}" if abs(q) >= 100 else f"{q:+,.4g}"


def _draw(report: EfficiencyReport, plt: Any, formatter: Any) -> dict[str, str]:
    money = formatter(lambda v, _: _usd(v))
    out: dict[str, str] = {}

    def svg(fig: Any) -> str:
        buf = io.StringIO()
        fig.savefig(buf, format="svg", bbox_inches="tight")
        plt.close(fig)
        text = buf.getvalue()
        return text[text.index("<svg") :]  # drop the XML prolog and doctype: inline in HTML

    s = report.summary.to_pydict()
    fig, ax = plt.subplots(figsize=(5.6, 2.8))
    x = np.arange(2)
    for i, (model, color) in enumerate((("standard", "#7f8c8d"), ("portfolio", "#2e86c1"))):
        k = s["model"].index(model)
        ax.bar(
            x + (i - 0.5) * 0.38, [s["initial_margin"][k], s["maintenance_margin"][k]], 0.38, label=model, color=color
        )
    ax.set_xticks(x, ["initial margin", "maintenance margin"])
    ax.yaxis.set_major_formatter(money)
    ax.legend(frameon=False)
    ax.set_title("Total margin by model")
    out["margin"] = svg(fig)

    h = report.saving_histogram.to_pydict()
    labels = [_bin_label(lo, hi, lambda v: f"{100 * v:.0f}%") for lo, hi in zip(h["bin_low"], h["bin_high"])]
    colors = [
        "#c0392b" if hi <= -0.05 else "#95a5a6" if lo < 0.05 else "#27ae60"
        for lo, hi in zip(h["bin_low"], h["bin_high"])
    ]
    fig, ax = plt.subplots(figsize=(7.5, 3.0))
    ax.bar(range(len(labels)), h["accounts"], color=colors)
    ax.set_xticks(range(len(labels)), labels, rotation=35, ha="right")
    ax.set_ylabel("accounts")
    ax.set_title("Initial margin saved by portfolio margin, % of the standard requirement (red: pays more)")
    out["savings"] = svg(fig)

    d = report.idle_distribution.to_pydict()
    fig, ax = plt.subplots(figsize=(7.0, 2.8))
    models = list(dict.fromkeys(d["model"]))
    width = 0.8 / max(len(models), 1)
    for i, (model, color) in enumerate(zip(models, ("#7f8c8d", "#2e86c1"))):
        rows = [j for j, m in enumerate(d["model"]) if m == model]
        ax.bar(
            np.arange(len(rows)) + (i - (len(models) - 1) / 2) * width,
            [d["idle"][j] for j in rows],
            width,
            label=model,
            color=color,
        )
        labels = [_bin_label(d["bucket_low"][j], d["bucket_high"][j], _usd) for j in rows]
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
    ax.yaxis.set_major_formatter(money)
    ax.set_ylabel("idle collateral")
    ax.legend(frameon=False)
    ax.set_title("Idle collateral of healthy accounts, by the size of each account's idle amount")
    out["idle"] = svg(fig)

    t = report.top_hedges.to_pydict()
    if t["account_id"]:
        n = len(t["account_id"])
        fig, ax = plt.subplots(figsize=(7.5, 0.26 * n + 0.9))
        names = [f"{a} · {i} {_qty(q)}" for a, i, q in zip(t["account_id"], t["hedge_instrument"], t["quantity"])]
        ax.barh(range(n), t["margin_freed"], color="#27ae60")
        ax.set_yticks(range(n), names, fontsize=7)
        ax.invert_yaxis()
        ax.xaxis.set_major_formatter(money)
        ax.set_title(f"Single hedges freeing the most {report.hedge_objective} margin (portfolio model)")
        out["hedges"] = svg(fig)
    return out


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1100px;color:#1c2833;
background:#fff;line-height:1.4}
h1{font-size:22px;margin-bottom:2px} h2{font-size:17px;border-bottom:1px solid #d5d8dc;padding-bottom:4px;margin-top:30px}
.sub{color:#566573;font-size:12px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:16px 0}
.card{flex:1 1 180px;border:1px solid #d5d8dc;border-radius:6px;padding:10px 14px;background:#f8f9f9}
.card .v{font-size:22px;font-weight:600} .card .l{font-size:12px;color:#566573}
.good{color:#1e8449} .bad{color:#b03a2e}
table{border-collapse:collapse;font-size:12px;margin:8px 0}
th,td{padding:3px 9px;border-bottom:1px solid #e5e7e9;text-align:left} td.num,th.num{text-align:right;
font-variant-numeric:tabular-nums} th{background:#f2f3f4}
.row{display:flex;gap:24px;flex-wrap:wrap;align-items:flex-start} .chart svg{max-width:100%;height:auto}
.note{font-size:12px;color:#566573} ul.notes{font-size:12px;color:#566573}
"""


def render_html(report: EfficiencyReport, title: str = "Capital efficiency report") -> str:
    """The report as one self-contained HTML page (inline CSS and SVG; no scripts, no links)."""
    charts = _charts(report)
    s = report.summary.to_pydict()
    k_std, k_port = s["model"].index("standard"), s["model"].index("portfolio")
    idle = report.idle.to_pydict()
    freed_cls = "good" if report.capital_freed >= 0 else "bad"
    cards = [
        (
            _usd(report.capital_freed),
            f"capital freed by portfolio margin ({_pct(report.capital_freed_pct)} of standard IM)",
            freed_cls,
        ),
        (_usd(report.im_standard), "initial margin, standard model", ""),
        (_usd(report.im_portfolio), "initial margin, portfolio model", ""),
        (
            _usd(idle["idle_total"][idle["model"].index("portfolio")]),
            "idle collateral of healthy accounts (portfolio)",
            "",
        ),
        (_usd(report.hedges_total_freed), f"{report.hedge_objective} margin the best single hedges would free", "good"),
    ]
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        (
            f'<div class="sub">{s["accounts"][k_std]:,} accounts · generated {html.escape(report.generated_at)} · '
            "margin-engine: standard (§3) vs portfolio (§4) model</div>"
        ),
        '<section id="headline"><div class="cards">',
        *(
            f'<div class="card"><div class="v {c}">{html.escape(v)}</div><div class="l">{html.escape(lbl)}</div></div>'
            for v, lbl, c in cards
        ),
        "</div></section>",
    ]

    # Summary
    metrics = [
        ("equity", "equity"),
        ("collateral (initial weights)", "collateral_initial"),
        ("collateral (maintenance weights)", "collateral_maintenance"),
        ("initial margin", "initial_margin"),
        ("maintenance margin", "maintenance_margin"),
        ("free collateral", "free_collateral"),
        ("idle collateral (healthy accounts)", "idle_collateral"),
    ]
    rows = [[label, _usd(s[c][k_std]), _usd(s[c][k_port]), _usd(s[c][k_port] - s[c][k_std])] for label, c in metrics]
    rows += [
        [
            f"accounts {st.replace('_', ' ')}",
            f"{s['accounts_' + st][k_std]:,}",
            f"{s['accounts_' + st][k_port]:,}",
            f"{s['accounts_' + st][k_port] - s['accounts_' + st][k_std]:+,}",
        ]
        for st in _STATUSES
    ]
    parts += [
        '<section id="summary"><h2>Margin by model</h2><div class="row">',
        _html_table(["", "standard", "portfolio", "portfolio − standard"], rows),
        f'<div class="chart">{charts.get("margin", "")}</div></div>',
        (
            f'<p class="note">Capital freed = Σ IM(standard) − Σ IM(portfolio) = {_usd(report.im_standard)} − '
            f"{_usd(report.im_portfolio)} = <b>{_usd(report.capital_freed)}</b> ({_pct(report.capital_freed_pct)}); "
            f"maintenance margin freed {_usd(report.mm_freed)}.</p></section>"
        ),
    ]

    # Savings
    q = report.saving_quantiles.to_pydict()
    qrows = [[f"p{100 * qq:g}", _usd(sv), _pct(sp)] for qq, sv, sp in zip(q["quantile"], q["saving"], q["saving_pct"])]
    h = report.saving_histogram.to_pydict()
    hrows = [
        [_bin_label(lo, hi, lambda v: f"{100 * v:.0f}%"), f"{n:,}", _usd(sv)]
        for lo, hi, n, sv in zip(h["bin_low"], h["bin_high"], h["accounts"], h["saving"])
    ]
    parts += [
        '<section id="savings"><h2>Per-account saving</h2>',
        (
            '<p class="note">Saving = IM(standard) − IM(portfolio) per account; relative saving is that over '
            "IM(standard) (100% = the portfolio model needs no margin; negative = it needs more).</p>"
        ),
        f'<div class="chart">{charts.get("savings", "")}</div><div class="row">',
        _html_table(["quantile", "saving", "relative saving"], qrows),
        _html_table(["relative saving", "accounts", "saving (sum)"], hrows),
        "</div></section>",
    ]

    # Idle
    irows = [
        [
            m,
            f"{n:,}",
            _usd(t),
            _usd(mean),
            _usd(p50),
            _usd(p90),
            _usd(p99),
            _usd(mx),
            f"{100 * s1:.0f}%" if not math.isnan(s1) else "–",
            f"{100 * s10:.0f}%" if not math.isnan(s10) else "–",
        ]
        for m, n, t, mean, p50, p90, p99, mx, s1, s10 in zip(
            *(
                idle[c]
                for c in (
                    "model",
                    "healthy_accounts",
                    "idle_total",
                    "idle_mean",
                    "idle_p50",
                    "idle_p90",
                    "idle_p99",
                    "idle_max",
                    "top1pct_share",
                    "top10pct_share",
                )
            )
        )
    ]
    parts += [
        '<section id="idle"><h2>Idle collateral</h2>',
        (
            '<p class="note">Free collateral (collateral at initial weights − initial margin) of accounts in good '
            "standing (status healthy): capital that could be withdrawn or put to work.</p>"
        ),
        _html_table(
            [
                "model",
                "healthy accounts",
                "total",
                "mean",
                "median",
                "p90",
                "p99",
                "max",
                "top 1% hold",
                "top 10% hold",
            ],
            irows,
        ),
        f'<div class="chart">{charts.get("idle", "")}</div></section>',
    ]

    # Hedges
    t = report.top_hedges.to_pydict()
    trows = [
        [str(a), u, i, _qty(qn), _qty(dn), _usd(b), _usd(af), _usd(fr), _pct(-fp if fp is not None else None)]
        for a, u, i, qn, dn, b, af, fr, fp in zip(
            *(
                t[c]
                for c in (
                    "account_id",
                    "underlying",
                    "hedge_instrument",
                    "quantity",
                    "delta_neutral_quantity",
                    "margin_before",
                    "margin_after",
                    "margin_freed",
                    "margin_freed_pct",
                )
            )
        )
    ]
    parts += [
        '<section id="hedges"><h2>Hedges that free the most margin</h2>',
        (
            f'<p class="note">Minimum-{html.escape(report.hedge_objective)}-margin hedge of each account in each hedge '
            f"instrument ({html.escape(', '.join(report.hedge_instruments) or 'none')}) under the portfolio model, "
            "one hedge at a time; top 20 by margin freed. Quantity is contracts to add; the delta-neutral quantity is "
            f"shown for comparison. Best single hedge per account, summed: <b>{_usd(report.hedges_total_freed)}</b>.</p>"
        ),
        _html_table(
            [
                "account",
                "underlying",
                "hedge",
                "quantity",
                "delta-neutral qty",
                "margin before",
                "margin after",
                "freed",
                "change",
            ],
            trows,
            numeric_from=3,
        )
        if trows
        else '<p class="note">No hedge frees margin.</p>',
        f'<div class="chart">{charts.get("hedges", "")}</div></section>',
    ]
    if report.notes:
        parts += [
            '<section id="notes"><h2>Notes</h2><ul class="notes">',
            *(f"<li>{html.escape(n)}</li>" for n in report.notes),
            "</ul></section>",
        ]
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html(report: EfficiencyReport, path: str | Path, title: str = "Capital efficiency report") -> Path:
    """Writes :func:`render_html` to ``path`` (UTF-8) and returns the path."""
    out = Path(path)
    out.write_text(render_html(report, title), encoding="utf-8")
    return out
