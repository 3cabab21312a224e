"""The capital-efficiency and risk report: what portfolio margin would save, what collateral sits
idle, which hedges free the most margin, what standard stress moves do and what liquidating today
would cost — as Arrow tables, and as one self-contained HTML page.

>>> report = efficiency_report(book, positions, balances, market)     # doctest: +SKIP
>>> write_html(report, "report.html")                                  # doctest: +SKIP

All numbers come from :func:`margin_engine.margin` under both models (the standard and the
portfolio margin model of ``docs/methodology.md``), :func:`margin_engine.optimal_hedge`,
:func:`margin_engine.liquidation_scan` (with and without ``stress``, and with ``distance``) and
:func:`margin_engine.liquidation_plan`. Definitions are in ``docs/optimization.md`` ("Efficiency
report").

One sign convention throughout: a *saving* (capital freed, margin freed) is positive when the
portfolio model (or the hedge) needs less margin; when it needs more the page says so in words
("portfolio margin needs $X more") rather than showing a negative saving.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import html
import io
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from margin_engine import api
from margin_engine._inputs import (
    arrow_table,
    as_output,
    check_choice,
    check_flag,
    check_number,
    check_output,
    input_error,
)
from margin_engine.charts import money, pyplot

__all__ = [
    "DISTANCE_BUCKETS",
    "IDLE_BUCKETS",
    "QUANTILES",
    "SAVING_BINS",
    "STRESS_MOVES",
    "EfficiencyReport",
    "efficiency_report",
    "render_html",
    "write_html",
]

# Standard stress moves of the stress section: each underlying alone, and all together.
STRESS_MOVES = (-0.2, -0.1, 0.1, 0.2)
# Distance-to-liquidation buckets of |nearest_move| ([low, high), the last one closed at ±50%).
DISTANCE_BUCKETS = (0.0, 0.05, 0.10, 0.20, 0.50)
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

    ``capital_freed = im_standard − im_portfolio`` (positive = portfolio margin needs less);
    ``capital_freed_pct`` is that over ``im_standard``, ``None`` when there is no standard initial
    margin (nothing to save from). Statistics over no accounts are null (``None``), sums over no
    accounts 0; the report never holds a NaN.

    ``valuation_time``: the market's valuation time (ISO 8601, UTC); ``source``: what the book was
    read from, as given (``None`` if not given); ``inputs``: row counts of what was read
    (``accounts, positions, balances, instruments, underlyings``).

    ``liquidation_model``: the model of the stress and liquidation sections.
    ``stress``: one row per scenario: ``underlying`` (``"all"`` = every underlying moved
    together), ``move``, ``accounts_healthy, accounts_margin_call, accounts_liquidatable,
    accounts_bankrupt``, ``shortfall`` (Σ max(0, MM − collateral_maintenance), USD) and
    ``newly_liquidatable`` (liquidatable or bankrupt under the move, less those now).
    ``liquidation_now``: the scan at the current market: ``accounts, accounts_liquidatable``
    (liquidatable or bankrupt), ``accounts_bankrupt, accounts_margin_call, shortfall``, and the
    totals of :func:`margin_engine.liquidation_plan`: ``accounts_liquidated, positions_closed,
    closed_notional, liquidator_fees, insurance_fees, deficit, covered_by_insurance, bad_debt,
    insurance_fund_before, insurance_fund_after``.
    ``liquidation_underlyings``: per underlying of the plan: ``underlying, closed_notional,
    bad_debt``.
    ``distance``: accounts by the smallest move of one underlying that makes them liquidatable
    (``nearest_move`` of :func:`margin_engine.liquidation_scan`): ``bucket`` (a label),
    ``move_low, move_high`` (bounds of |move|, [low, high), the last closed; the first row is the
    accounts liquidatable or bankrupt now, the last those no move within ±50% liquidates, bounds
    null),
    ``accounts, accounts_down, accounts_up`` (the move is a fall / a rise), ``maintenance_margin``;
    ``None`` with ``distance=False``.
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
    capital_freed_pct: float | None
    mm_freed: float
    hedges_total_freed: float
    hedge_objective: str
    hedge_instruments: list[str]
    notes: list[str]
    generated_at: str
    valuation_time: str = ""
    source: str | None = None
    inputs: dict[str, int] = dataclasses.field(default_factory=dict)
    liquidation_model: str = "standard"
    stress: pa.Table | None = None
    liquidation_now: dict[str, float] = dataclasses.field(default_factory=dict)
    liquidation_underlyings: pa.Table | None = None
    distance: pa.Table | None = None


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


def _top_share(descending: np.ndarray, fraction: float) -> float | None:
    """Share of the total held by the largest ``fraction`` of the values (at least one)."""
    total = float(descending.sum())
    if total <= 0:
        return None
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
            ("idle_mean", idle.mean() if n else None),
            ("idle_p50", np.quantile(idle, 0.5) if n else None),
            ("idle_p90", np.quantile(idle, 0.9) if n else None),
            ("idle_p99", np.quantile(idle, 0.99) if n else None),
            ("idle_max", idle[0] if n else None),
        ):
            summary[name].append(None if value is None else float(value))
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
    floats = {k: pa.array(v, pa.float64()) for k, v in summary.items() if k not in ("model", "healthy_accounts")}
    return pa.table({**summary, **floats}), pa.table(
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


def _stress(
    book: api.Book, positions: pa.Table, balances: pa.Table, market: api.Market, model: str,
    moves: tuple[float, ...], now_liquidatable: int, threads: int | None,
) -> pa.Table:
    """Status counts and total shortfall after each standard move: every underlying alone, then
    all of them together (``underlying = "all"``)."""
    priced = set(market.index_prices.column("underlying").to_pylist())
    unders = [u for u in book.underlyings if u in priced]
    rows: dict[str, list[Any]] = {k: [] for k in ("underlying", "move", *(f"accounts_{s}" for s in _STATUSES),
                                                  "shortfall", "newly_liquidatable")}
    scenarios = [(u, m) for u in unders for m in moves] + ([("all", m) for m in moves] if len(unders) > 1 else [])
    for underlying, move in scenarios:
        stress = {u: move for u in unders} if underlying == "all" else {underlying: move}
        scan = api.liquidation_scan(book, positions, balances, market, model=model, stress=stress, threads=threads)
        rows["underlying"].append(underlying)
        rows["move"].append(float(move))
        counts = {s: int(_is(scan, s).sum()) for s in _STATUSES}
        for st in _STATUSES:
            rows[f"accounts_{st}"].append(counts[st])
        rows["shortfall"].append(float(_col(scan, "shortfall").sum()))
        rows["newly_liquidatable"].append(counts["liquidatable"] + counts["bankrupt"] - now_liquidatable)
    schema = pa.schema(
        [("underlying", pa.string()), ("move", pa.float64())]
        + [(f"accounts_{s}", pa.int64()) for s in _STATUSES]
        + [("shortfall", pa.float64()), ("newly_liquidatable", pa.int64())]
    )
    return pa.table(rows, schema=schema)


def _distance(scan: pa.Table) -> pa.Table:
    """Accounts by |nearest_move| bucket: liquidatable (or bankrupt) now, then by the size of the
    move (exact roots, so also "beyond 50%"), then "no move liquidates" (a null move: no move of
    one underlying, from price 0 to 100× the index, makes the account liquidatable)."""
    move = np.asarray(scan.column("nearest_move").to_numpy(zero_copy_only=False), dtype=np.float64)
    mm = _col(scan, "maintenance_margin")
    now = _is(scan, "liquidatable") | _is(scan, "bankrupt")
    reached = ~np.isnan(move) & ~now
    size = np.abs(move)
    rows: dict[str, list[Any]] = {k: [] for k in ("bucket", "move_low", "move_high", "accounts", "accounts_down",
                                                  "accounts_up", "maintenance_margin")}

    def add(label: str, low: float | None, high: float | None, inside: np.ndarray) -> None:
        rows["bucket"].append(label)
        rows["move_low"].append(low)
        rows["move_high"].append(high)
        rows["accounts"].append(int(inside.sum()))
        rows["accounts_down"].append(int((inside & (move < 0)).sum()))
        rows["accounts_up"].append(int((inside & (move > 0)).sum()))
        rows["maintenance_margin"].append(float(mm[inside].sum()))

    add("liquidatable now", 0.0, 0.0, now)
    edges = DISTANCE_BUCKETS
    for k, (lo, hi) in enumerate(zip(edges[:-1], edges[1:])):
        last = k == len(edges) - 2  # the grid's end (±50%) belongs to the last bucket
        label = f"within {100 * hi:g}%" if k == 0 else f"{100 * lo:g}% to {100 * hi:g}%"
        add(label, lo, hi, reached & (size >= lo) & ((size <= hi) if last else (size < hi)))
    # the moves are exact roots on the whole price axis (price 0 to 100× the index)
    add("beyond 50%", DISTANCE_BUCKETS[-1], None, reached & (size > DISTANCE_BUCKETS[-1]))
    add("no move liquidates", None, None, ~now & ~reached)
    schema = pa.schema([("bucket", pa.string()), ("move_low", pa.float64()), ("move_high", pa.float64()),
                        ("accounts", pa.int64()), ("accounts_down", pa.int64()), ("accounts_up", pa.int64()),
                        ("maintenance_margin", pa.float64())])
    return pa.table(rows, schema=schema)


def _liquidation(
    book: api.Book, positions: pa.Table, balances: pa.Table, market: api.Market, model: str,
    insurance_fund: float, distance: bool, threads: int | None,
) -> tuple[dict[str, float], pa.Table, pa.Table | None]:
    scan = api.liquidation_scan(book, positions, balances, market, model=model, distance=distance, threads=threads)
    plan = api.liquidation_plan(book, positions, balances, market, model=model, insurance_fund=insurance_fund,
                                threads=threads)
    acc = plan.accounts
    now = {
        "accounts": scan.num_rows,
        "accounts_liquidatable": int(_is(scan, "liquidatable").sum() + _is(scan, "bankrupt").sum()),
        "accounts_bankrupt": int(_is(scan, "bankrupt").sum()),
        "accounts_margin_call": int(_is(scan, "margin_call").sum()),
        "shortfall": float(_col(scan, "shortfall").sum()),
        "accounts_liquidated": acc.num_rows,
        "positions_closed": plan.closes.num_rows,
        "closed_notional": float(_col(acc, "closed_notional").sum()),
        "liquidator_fees": float(plan.liquidator_fees),
        "insurance_fees": float(plan.insurance_fees),
        "deficit": float(_col(acc, "deficit").sum()),
        "covered_by_insurance": float(_col(acc, "covered_by_insurance").sum()),
        "bad_debt": float(_col(acc, "bad_debt").sum()),
        "insurance_fund_before": float(insurance_fund),
        "insurance_fund_after": float(plan.insurance_fund_after),
    }
    under = plan.underlyings.select(["underlying", "closed_notional", "bad_debt"])
    return now, under, _distance(scan) if distance else None


def efficiency_report(
    book: api.Book,
    positions: Any,
    balances: Any,
    market: api.Market,
    *,
    hedge_instruments: list[str] | None = None,
    hedge_objective: str = "initial",
    liquidation_model: api.Model = "standard",
    stress_moves: tuple[float, ...] = STRESS_MOVES,
    distance: bool = True,
    insurance_fund: float = 0.0,
    source: str | None = None,
    threads: int | None = None,
    output: api.Output = "arrow",
) -> EfficiencyReport:
    """Margin under the standard vs the portfolio model, capital freed, idle collateral, the
    per-account saving distribution, the single hedges that free the most margin, standard stress
    moves and what liquidating today would do.

    Reads:

    - ``positions``: ``account_id``, ``instrument``, ``quantity`` (optional ``entry_price``);
      ``balances``: ``account_id``, ``asset``, ``amount`` (any Arrow table, a dict of columns, or a
      stream; read once).
    - ``book``: its ``instruments`` (``instrument, kind, underlying, multiplier, expiry``, margin
      rates), ``assets`` (prices and weights), ``risk_params`` and ``margin_tiers`` as
      :func:`margin_engine.margin` does; ``market``: ``index_prices`` (``underlying,
      index_price``), ``marks`` (``instrument, mark_price, implied_vol``) and its
      ``valuation_time``.

    Options: ``hedge_instruments``: instruments offered as hedges to
    :func:`margin_engine.optimal_hedge` (default: each underlying's perpetual); ``[]`` skips the
    hedges. ``hedge_objective``: ``"initial"`` (default: the margin that locks capital) or
    ``"maintenance"``. ``liquidation_model``: the model of the stress and liquidation sections
    (``"standard"`` default, or ``"portfolio"``). ``stress_moves``: relative index moves applied
    to each underlying alone and to all together (default ±10%, ±20%; ``()`` skips the stress
    section; each scenario costs one :func:`margin_engine.liquidation_scan`, about three margin
    calls). ``distance``: the distance-to-liquidation summary (``False`` skips it: it searches every
    account's exposed underlyings, the costliest part of the report). ``insurance_fund``: USD
    available to the liquidation plan. ``source``: where the book
    came from (a path), shown on the page. ``output="polars"``: the report's tables as polars
    DataFrames (:func:`render_html` reads either).
    """
    output = check_output(output)
    liquidation_model = check_choice(liquidation_model, "liquidation_model", ("standard", "portfolio"))
    if hedge_objective not in ("initial", "maintenance"):
        raise input_error("arguments", "hedge_objective",
                          f"must be 'initial' or 'maintenance', got {hedge_objective!r}")
    try:
        moves = tuple(float(m) for m in stress_moves)
    except (TypeError, ValueError) as e:
        raise input_error("arguments", "stress_moves", f"expected a list of numbers, got {stress_moves!r}") from e
    if not all(math.isfinite(m) and m > -1.0 for m in moves):
        raise input_error("arguments", "stress_moves", "moves must be finite and > -1", [repr(m) for m in moves])
    # read once: the tables feed several engine calls (a stream could be read only once)
    positions = arrow_table(positions, "positions")
    balances = arrow_table(balances, "balances")
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
    hedges = _default_hedges(book, market) if hedge_instruments is None else [str(h) for h in hedge_instruments]
    top, hedge_total = _hedges(book, positions, balances, market, hedges, hedge_objective, threads, notes)
    n_more = int((saving < 0).sum())
    if n_more:
        notes.append(
            f"{n_more:,} accounts need more initial margin under the portfolio model (its ±15% scan "
            "charges naked directional positions far more than the standard rates); hedged books save."
        )
    now, liq_under, distance = _liquidation(
        book, positions, balances, market, liquidation_model, check_number(insurance_fund, "insurance_fund", 0.0),
        check_flag(distance, "distance"), threads,
    )
    stress = _stress(book, positions, balances, market, liquidation_model, moves, int(now["accounts_liquidatable"]),
                     threads)
    inputs = {
        "accounts": std.num_rows,
        "positions": positions.num_rows,
        "balances": balances.num_rows,
        "instruments": book.instruments.num_rows,
        "underlyings": len(book.underlyings),
    }
    tables = {
        "summary": _summary(results),
        "accounts": accounts,
        "saving_quantiles": _quantiles(saving[margined], pct[has_std]),
        "saving_histogram": _histogram(pct[has_std], saving[has_std]),
        "idle": idle,
        "idle_distribution": idle_dist,
        "top_hedges": top,
        "stress": stress,
        "liquidation_underlyings": liq_under,
        "distance": distance,
    }
    return EfficiencyReport(
        **{k: None if t is None else as_output(t, output) for k, t in tables.items()},
        im_standard=im_standard,
        im_portfolio=im_portfolio,
        capital_freed=freed,
        capital_freed_pct=freed / im_standard if im_standard > 0 else None,
        mm_freed=float(mm_s.sum() - mm_p.sum()),
        hedges_total_freed=hedge_total,
        hedge_objective=hedge_objective,
        hedge_instruments=hedges,
        notes=notes,
        generated_at=dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        valuation_time=_iso(market.valuation_time_ns),
        source=None if source is None else str(source),
        inputs=inputs,
        liquidation_model=liquidation_model,
        liquidation_now=now,
    )


def _iso(ns: int) -> str:
    t = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(microseconds=ns // 1000)
    return t.strftime("%Y-%m-%d %H:%M:%S UTC")


# ----------------------------------------------------------------------------------------------
# HTML
# ----------------------------------------------------------------------------------------------


_usd = money  # one formatting of USD amounts for the page and the charts


def _pct(x: float | None) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{100 * x:+.1f}%".replace("-", "−")


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
    thead = f"<thead><tr>{head}</tr></thead>" if any(headers) else ""  # a label/value table needs no header
    return f'<table class="{cls}">{thead}<tbody>{"".join(body)}</tbody></table>'


NO_CHARTS = "charts not drawn: matplotlib is not installed (pip install 'margin-engine[plot]'); the tables are complete"


def _charts(report: EfficiencyReport) -> dict[str, str] | None:
    """Inline SVG charts; ``None`` when matplotlib is missing."""
    try:
        plt = pyplot()
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        return None
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

    st = report.stress.to_pydict() if report.stress is not None else {"underlying": []}
    names = [u for u in dict.fromkeys(st["underlying"]) if u != "all"]  # "all together": in the table
    if names:
        moves = sorted(set(st["move"]))
        at = {(u, m): k for k, (u, m) in enumerate(zip(st["underlying"], st["move"]))}
        fig, ax = plt.subplots(figsize=(8.0, 2.9))
        width = 0.8 / len(moves)
        down, up = [m for m in moves if m < 0], [m for m in moves if m >= 0]
        shades = dict(zip(down, ("#922b21", "#c0392b", "#e6b0aa", "#f2d7d5")))
        shades.update(zip(up[::-1], ("#145a32", "#1e8449", "#a9dfbf", "#d5f5e3")))
        for i, m in enumerate(moves):
            ax.bar(
                np.arange(len(names)) + (i - (len(moves) - 1) / 2) * width,
                [st["newly_liquidatable"][at[(u, m)]] for u in names],
                width, label=_move(m), color=shades.get(m, "#7f8c8d"),
            )
        ax.axhline(0, color="#1c2833", linewidth=0.8)
        ax.set_xticks(range(len(names)), names)
        ax.set_ylabel("accounts newly liquidatable\n(vs now)")
        ax.legend(frameon=False, fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), title="move")
        ax.set_title(f"Accounts made liquidatable by a move of one underlying alone ({report.liquidation_model} model)")
        out["stress"] = svg(fig)
    return out


_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1100px;color:#1c2833;
background:#fff;line-height:1.4}
h1{font-size:22px;margin-bottom:2px} h2{font-size:17px;border-bottom:1px solid #d5d8dc;padding-bottom:4px;margin-top:30px}
.sub{color:#566573;font-size:12px}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:16px 0}
.card{flex:1 1 130px;border:1px solid #d5d8dc;border-radius:6px;padding:10px 14px;background:#f8f9f9}
.card .v{font-size:20px;font-weight:600;white-space:nowrap} .card .l{font-size:12px;color:#566573}
.good{color:#1e8449} .bad{color:#b03a2e}
table{border-collapse:collapse;font-size:12px;margin:8px 0}
th,td{padding:3px 9px;border-bottom:1px solid #e5e7e9;text-align:left} td.num,th.num{text-align:right;
font-variant-numeric:tabular-nums} th{background:#f2f3f4}
.row{display:flex;gap:24px;flex-wrap:wrap;align-items:flex-start} .chart svg{max-width:100%;height:auto}
.note{font-size:12px;color:#566573} ul.notes{font-size:12px;color:#566573}
h3{font-size:14px;margin:14px 0 4px} .warn{background:#fef5e7;border:1px solid #f0b27a;padding:6px 10px;font-size:13px}
"""


def _arrow(t: Any) -> pa.Table:
    if t is None or isinstance(t, pa.Table):
        return t
    return t.to_arrow() if hasattr(t, "to_arrow") else pa.table(t)  # a polars DataFrame (output="polars")


def _as_arrow(report: EfficiencyReport) -> EfficiencyReport:
    tables = {f.name: _arrow(getattr(report, f.name)) for f in dataclasses.fields(report)
              if f.name in _TABLE_FIELDS}
    return dataclasses.replace(report, **tables)


_TABLE_FIELDS = ("summary", "accounts", "saving_quantiles", "saving_histogram", "idle", "idle_distribution",
                 "top_hedges", "stress", "liquidation_underlyings", "distance")


def _saving(x: float) -> str:
    """A saving in words: positive saves, negative needs more (one sign convention)."""
    if x is None or not math.isfinite(x):
        return "–"
    if x > 0:
        return f"saves {_usd(x)}"
    if x < 0:
        return f"needs {_usd(-x)} more"
    return "same"


def _signed(x: float | None) -> str:
    """A signed USD amount with an explicit + (positive = saved)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return ("+" if x > 0 else "") + _usd(x)


def _move(m: float) -> str:
    return f"{100 * m:+g}%".replace("-", "−")


def _headline(report: EfficiencyReport, idle_port: float | None) -> list[tuple[str, str, str]]:
    freed, pct = report.capital_freed, report.capital_freed_pct
    if freed >= 0:
        first = (_usd(freed), "initial margin saved by portfolio margin"
                 + (f" ({100 * pct:.1f}% of standard IM)" if pct is not None else ""), "good" if freed > 0 else "")
    else:
        first = (f"{_usd(-freed)} more", "initial margin that portfolio margin needs beyond the standard model"
                 + (f" (+{100 * -pct:.1f}%)" if pct is not None else ""), "")
    now = report.liquidation_now
    return [
        first,
        (_usd(report.im_standard), "initial margin, standard model", ""),
        (_usd(report.im_portfolio), "initial margin, portfolio model", ""),
        (_usd(idle_port), "idle collateral of healthy accounts (portfolio)", ""),
        (_usd(report.hedges_total_freed), f"{report.hedge_objective} margin the best single hedges would save", ""),
        (f"{int(now.get('accounts_liquidatable', 0)):,}",
         f"accounts liquidatable now ({report.liquidation_model} model), shortfall {_usd(now.get('shortfall', 0.0))}",
         "bad" if now.get("accounts_liquidatable") else ""),
    ]


def _stress_section(report: EfficiencyReport, charts: dict[str, str]) -> list[str]:
    t = report.stress
    if t is None or t.num_rows == 0:
        return ['<section id="stress"><h2>Stress moves</h2><p class="note">No stress moves were run.</p></section>']
    d = t.to_pydict()
    moves = list(dict.fromkeys(d["move"]))
    names = list(dict.fromkeys(d["underlying"]))
    cell = {(u, m): k for k, (u, m) in enumerate(zip(d["underlying"], d["move"]))}
    now = int(report.liquidation_now.get("accounts_liquidatable", 0))
    rows = []
    for u in (["all"] if "all" in names else []) + [u for u in names if u != "all"]:
        row = ["all underlyings together" if u == "all" else u]
        for m in moves:
            k = cell[(u, m)]
            liq = d["accounts_liquidatable"][k] + d["accounts_bankrupt"][k]
            row.append(f"{liq:,} ({d['newly_liquidatable'][k]:+,}) · {_usd(d['shortfall'][k])}")
        rows.append(row)
    return [
        '<section id="stress"><h2>Stress moves</h2>',
        (f'<p class="note">Each underlying\'s index price, marks (options repriced) and linked collateral moved by '
         f"the given amount, everything else fixed ({html.escape(report.liquidation_model)} model). Each cell: "
         f"accounts liquidatable or bankrupt after the move (change from the {now:,} now) · total shortfall "
         "Σ max(0, maintenance margin − maintenance collateral).</p>"),
        f'<div class="chart">{charts.get("stress", "")}</div>',
        _html_table(["scenario", *(f"move {_move(m)}" for m in moves)], rows),
        "</section>",
    ]


def _liquidation_section(report: EfficiencyReport) -> list[str]:
    n = report.liquidation_now
    if not n:
        return []
    rows = [
        ["accounts", f"{int(n['accounts']):,}"],
        ["liquidatable or bankrupt now", f"{int(n['accounts_liquidatable']):,}"],
        ["  of which bankrupt (equity < 0)", f"{int(n['accounts_bankrupt']):,}"],
        ["margin call (below initial, above maintenance)", f"{int(n['accounts_margin_call']):,}"],
        ["total shortfall (maintenance margin − collateral)", _usd(n["shortfall"])],
    ]
    plan = [
        ["accounts liquidated", f"{int(n['accounts_liquidated']):,}"],
        ["positions closed (fully or partly)", f"{int(n['positions_closed']):,}"],
        ["notional closed at mark", _usd(n["closed_notional"])],
        ["fees to liquidators", _usd(n["liquidator_fees"])],
        ["fees to the insurance fund", _usd(n["insurance_fees"])],
        ["deficits of bankrupt accounts", _usd(n["deficit"])],
        ["covered by the insurance fund", _usd(n["covered_by_insurance"])],
        ["bad debt (left after the fund)", _usd(n["bad_debt"])],
        ["insurance fund before → after", f"{_usd(n['insurance_fund_before'])} → {_usd(n['insurance_fund_after'])}"],
    ]
    u = report.liquidation_underlyings.to_pydict() if report.liquidation_underlyings is not None else {}
    urows = [[a, _usd(c), _usd(b)] for a, c, b in zip(u.get("underlying", []), u.get("closed_notional", []),
                                                       u.get("bad_debt", [])) if c or b]
    d = report.distance.to_pydict() if report.distance is not None else {}
    drows = [[b, f"{a:,}", f"{dn:,}", f"{up:,}", _usd(mm)] for b, a, dn, up, mm in zip(
        d.get("bucket", []), d.get("accounts", []), d.get("accounts_down", []), d.get("accounts_up", []),
        d.get("maintenance_margin", []))]
    return [
        '<section id="liquidation"><h2>Liquidation</h2><div class="row">',
        '<div><h3>Now</h3>' + _html_table(["", ""], rows) + "</div>",
        '<div><h3>Liquidating them now (the plan)</h3>' + _html_table(["", ""], plan) + "</div>",
        ('<div><h3>By underlying</h3>' + _html_table(["underlying", "notional closed", "bad debt"], urows) + "</div>")
        if urows else "",
        "</div>",
        (f'<p class="note">{html.escape(report.liquidation_model.capitalize())} model. The plan closes positions at '
         "mark, those freeing the most maintenance margin per unit of notional first, until each account is back "
         "above maintenance; bankrupt accounts are closed out, their deficit drawn from the insurance fund and the "
         "rest reported as bad debt.</p>"),
        "<h3>Distance to liquidation</h3>",
        ('<p class="note">Accounts by the smallest move of one underlying alone (the others fixed) that makes them '
         "liquidatable, searched out to ±50%; on a fall / rise: the move is a fall / a rise.</p>"
         + _html_table(["smallest move that liquidates", "accounts", "on a fall", "on a rise", "maintenance margin"],
                       drows))
        if drows else '<p class="note">Not computed (distance=False).</p>',
        "</section>",
    ]


def render_html(report: EfficiencyReport, *, title: str = "Capital efficiency report", backtest: Any = None) -> str:
    """The report as one self-contained HTML page (inline CSS and SVG; no scripts, no links).
    Reads the tables and figures of an :class:`EfficiencyReport` (pyarrow or polars tables).
    With ``backtest`` (a :class:`margin_engine.Backtest`) the page ends with its chart, P&L over
    the horizon against the margin with the exceedances marked (``Backtest.chart``), embedded as
    a PNG. Without matplotlib the page has every table and says that it drew no charts."""
    return _render(report, title, backtest)[0]


def _backtest_section(backtest: Any) -> list[str]:
    """The backtest's chart as an embedded PNG (``data:`` URI: the page stays one file)."""
    fig = backtest.chart()
    buf = io.BytesIO()
    try:
        fig.savefig(buf, format="png", dpi=100)
    finally:
        pyplot().close(fig)
    png = base64.b64encode(buf.getvalue()).decode("ascii")
    return [
        '<section id="backtest"><h2>Backtest</h2>',
        '<p class="note">P&amp;L over the horizon against the margin at each date; exceedances marked '
        "(margin_engine.backtest, docs/calibration.md §5).</p>",
        f'<div class="chart"><img alt="backtest: P&amp;L against margin" src="data:image/png;base64,{png}"></div></section>',
    ]


def _render(report: EfficiencyReport, title: str, backtest: Any = None) -> tuple[str, bool]:
    """The page and whether it has its charts."""
    report = _as_arrow(report)
    drawn = _charts(report)
    charts = drawn or {}
    s = report.summary.to_pydict()
    k_std, k_port = s["model"].index("standard"), s["model"].index("portfolio")
    idle = report.idle.to_pydict()
    cards = _headline(report, idle["idle_total"][idle["model"].index("portfolio")])
    inp = report.inputs
    source = html.escape(report.source) if report.source else "tables passed in"
    counts = ", ".join(f"{inp[k]:,} {k}" for k in ("accounts", "positions", "balances", "instruments", "underlyings")
                       if k in inp)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        (f'<div class="sub"><b>Valuation time {html.escape(report.valuation_time or "–")}</b> · input: {source}'
         f" ({counts}) · generated {html.escape(report.generated_at)}</div>"),
        ('<div class="sub">Sign convention: a saving is positive when portfolio margin (or a hedge) needs less '
         "margin than the standard model; where it needs more, the page says “needs $X more”. USD throughout.</div>"),
    ]
    if drawn is None:
        parts.append(f'<p class="warn" id="no-charts">{html.escape(NO_CHARTS)}.</p>')
    parts += [
        '<section id="headline"><div class="cards">',
        *(
            f'<div class="card"><div class="v {c}">{html.escape(v)}</div><div class="l">{html.escape(lbl)}</div></div>'
            for v, lbl, c in cards
        ),
        "</div></section>",
    ]

    # Summary: every difference said in words (the sign convention above)
    def effect(c: str) -> str:
        diff = s[c][k_port] - s[c][k_std]
        if c in ("initial_margin", "maintenance_margin"):
            return _saving(-diff)
        if abs(diff) <= 1e-9 * max(1.0, abs(s[c][k_std])):
            return "same"
        return f"{_usd(abs(diff))} {'more' if diff > 0 else 'less'}"

    metrics = [
        ("equity", "equity"),
        ("collateral (initial weights)", "collateral_initial"),
        ("collateral (maintenance weights)", "collateral_maintenance"),
        ("initial margin", "initial_margin"),
        ("maintenance margin", "maintenance_margin"),
        ("free collateral", "free_collateral"),
        ("idle collateral (healthy accounts)", "idle_collateral"),
    ]
    rows = [[label, _usd(s[c][k_std]), _usd(s[c][k_port]), effect(c)] for label, c in metrics]
    for st in _STATUSES:
        a, b = s["accounts_" + st][k_std], s["accounts_" + st][k_port]
        rows.append([f"accounts {st.replace('_', ' ')}", f"{a:,}", f"{b:,}",
                     "same" if a == b else f"{abs(b - a):,} {'more' if b > a else 'fewer'}"])
    freed = report.capital_freed
    pct = report.capital_freed_pct
    if freed >= 0:
        verdict = (f"Capital freed = Σ IM(standard) − Σ IM(portfolio) = {_usd(report.im_standard)} − "
                   f"{_usd(report.im_portfolio)} = <b>{_usd(freed)}</b>"
                   + (f" ({100 * pct:.1f}% of standard IM)" if pct is not None else " (no standard initial margin)"))
    else:
        verdict = (f"Portfolio margin needs <b>{_usd(-freed)} more</b> initial margin than standard: Σ IM(portfolio) "
                   f"{_usd(report.im_portfolio)} against Σ IM(standard) {_usd(report.im_standard)}"
                   + (f" (+{100 * -pct:.1f}%)" if pct is not None else ""))
    parts += [
        '<section id="summary"><h2>Margin by model</h2><div class="row">',
        _html_table(["", "standard", "portfolio", "under portfolio margin"], rows),
        f'<div class="chart">{charts.get("margin", "")}</div></div>',
        f'<p class="note">{verdict}; maintenance margin: portfolio margin {_saving(report.mm_freed)}.</p></section>',
    ]

    # Savings
    q = report.saving_quantiles.to_pydict()
    qrows = [[f"p{100 * qq:g}", _signed(sv), _pct(sp)] for qq, sv, sp in zip(q["quantile"], q["saving"], q["saving_pct"])]
    h = report.saving_histogram.to_pydict()
    hrows = [
        [_bin_label(lo, hi, lambda v: f"{100 * v:.0f}%"), f"{n:,}", _signed(sv)]
        for lo, hi, n, sv in zip(h["bin_low"], h["bin_high"], h["accounts"], h["saving"])
    ]
    parts += [
        '<section id="savings"><h2>Per-account saving</h2>',
        (
            '<p class="note">Saving = IM(standard) − IM(portfolio) per account, positive when portfolio margin needs '
            "less; relative saving is that over IM(standard) (+100% = the portfolio model needs no margin; negative = "
            "it needs more).</p>"
        ),
        f'<div class="chart">{charts.get("savings", "")}</div><div class="row">',
        _html_table(["quantile", "saving", "relative saving"], qrows),
        _html_table(["relative saving", "accounts", "saving (sum)"], hrows),
        "</div></section>",
    ]

    # Idle
    def share(x: float | None) -> str:
        return "–" if x is None else f"{100 * x:.0f}%"

    cols = ("model", "healthy_accounts", "idle_total", "idle_mean", "idle_p50", "idle_p90", "idle_p99", "idle_max",
            "top1pct_share", "top10pct_share")
    irows = [
        [m, f"{n:,}", *(_usd(v) for v in vals), share(s1), share(s10)]
        for m, n, *vals, s1, s10 in zip(*(idle[c] for c in cols))
    ]
    parts += [
        '<section id="idle"><h2>Idle collateral</h2>',
        (
            '<p class="note">Free collateral (collateral at initial weights − initial margin) of accounts in good '
            "standing (status healthy): capital that could be withdrawn or put to work.</p>"
        ),
        _html_table(
            ["model", "healthy accounts", "total", "mean", "median", "p90", "p99", "max", "top 1% hold",
             "top 10% hold"],
            irows,
        ),
        f'<div class="chart">{charts.get("idle", "")}</div></section>',
    ]

    # Hedges
    t = report.top_hedges.to_pydict()
    hcols = ("account_id", "underlying", "hedge_instrument", "quantity", "delta_neutral_quantity", "margin_before",
             "margin_after", "margin_freed", "margin_freed_pct")
    trows = [
        [str(a), u, i, _qty(qn), _qty(dn), _usd(b), _usd(af), _usd(fr), "–" if fp is None else f"{100 * fp:.1f}%"]
        for a, u, i, qn, dn, b, af, fr, fp in zip(*(t[c] for c in hcols))
    ]
    parts += [
        '<section id="hedges"><h2>Hedges that free the most margin</h2>',
        (
            f'<p class="note">Minimum-{html.escape(report.hedge_objective)}-margin hedge of each account in each hedge '
            f"instrument ({html.escape(', '.join(report.hedge_instruments) or 'none')}) under the portfolio model, "
            f"one hedge at a time; top {TOP_HEDGES} by margin freed (margin before − after, % of before). Quantity is "
            "contracts to add; the delta-neutral quantity is shown for comparison. Best single hedge per account, "
            f"summed: <b>{_usd(report.hedges_total_freed)}</b>.</p>"
        ),
        _html_table(
            ["account", "underlying", "hedge", "quantity", "delta-neutral qty", "margin before", "margin after",
             "freed", "freed %"],
            trows,
            numeric_from=3,
        )
        if trows
        else '<p class="note">No hedge frees margin.</p>',
        f'<div class="chart">{charts.get("hedges", "")}</div></section>',
    ]
    parts += _stress_section(report, charts)
    parts += _liquidation_section(report)
    if backtest is not None and drawn is not None:
        parts += _backtest_section(backtest)
    notes = list(report.notes) + ([NO_CHARTS] if drawn is None else [])
    if notes:
        parts += [
            '<section id="notes"><h2>Notes</h2><ul class="notes">',
            *(f"<li>{html.escape(n)}</li>" for n in notes),
            "</ul></section>",
        ]
    parts.append("</body></html>")
    return "\n".join(parts), drawn is not None


def write_html(report: EfficiencyReport, path: str | Path, *, title: str = "Capital efficiency report",
               backtest: Any = None) -> Path:
    """Writes :func:`render_html` (with the ``backtest`` chart when given) to ``path`` (UTF-8) and
    returns the path. Without matplotlib the page has the tables only, says so at the top, and a
    :class:`UserWarning` says so too."""
    out = Path(path)
    text, has_charts = _render(report, title, backtest)
    if not has_charts:
        warnings.warn(f"{out}: {NO_CHARTS}", UserWarning, stacklevel=2)
    out.write_text(text, encoding="utf-8")
    return out
