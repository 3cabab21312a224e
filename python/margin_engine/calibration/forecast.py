"""``me.forecast_margin``: predictive margin (``docs/calibration.md``).

Simulated paths of the underlyings over the next days, the book margined by the engine along
each: filtered historical simulation (each day's standardized returns of every underlying drawn
together from one past date of the lookback, so cross-asset co-movement and fat tails come from
history; the volatility updated along the path by the EWMA or the fitted GARCH(1,1)). Each
(path, day) is the book margined under the stress of that path's cumulative moves, each
account's row the one :func:`margin_engine.liquidation_scan` gives under that stress; the engine
margins every account under a block of scenarios in one pass (``margin_core::paths``) and hands
back only the totals, not a table per scenario. Out come the per-day distributions of margin calls, liquidations and shortfall,
the accounts that drive the tail, and a forecast-driven :func:`margin_engine.rebalance`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from margin_engine._inputs import as_output, check_choice, check_instance, check_model, check_output, input_error
from margin_engine.calibration import models
from margin_engine.calibration.backtest import _held_underlyings, _instruments
from margin_engine.calibration.calibrate import prepare, settings
from margin_engine.calibration.history import DAY, Series, read_history

__all__ = ["Forecast", "forecast_margin"]


def _status_counts(scan: pa.Table) -> dict[str, int]:
    vc = pc.value_counts(scan.column("status"))
    return dict(zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist()))


def _daily(series: Series, anchor: int) -> Series:
    """The series at one candle a day: itself if daily, else its candles at the time of day of
    ``anchor`` (missing days are gaps, handled like any other)."""
    if series.period == DAY:
        return series
    if series.period > DAY or DAY % series.period:
        raise input_error("prices", "time", f"{series.symbol}: forecasts need daily or intraday candles that divide a day")
    keep = (anchor - series.times) % DAY == 0
    return Series(
        symbol=series.symbol, times=series.times[keep], close=series.close[keep],
        volume=None if series.volume is None else series.volume[keep], rows=series.rows[keep], period=DAY,
    )  # fmt: skip


@dataclasses.dataclass
class Forecast:
    """What :func:`forecast_margin` simulated.

    ``days``: one row per day ``1..days``: ``margin_call_mean, margin_call_p99`` (accounts in
    margin call), ``liquidatable_mean, liquidatable_p99`` (liquidatable or bankrupt),
    ``bankrupt_mean``, ``shortfall_mean, shortfall_p95, shortfall_p99, shortfall_es99`` (Σ
    shortfall over accounts, USD; ES: the mean of the worst 1% of paths), ``call_amount_mean,
    call_amount_p99`` (Σ max(0, IM − collateral_initial): the collateral the margin calls ask
    for), ``p_any_liquidation`` (share of paths with a liquidatable account). ``paths``: one row
    per path and day: ``path, day, margin_call, liquidatable, bankrupt, shortfall, call_amount``.
    ``moves``: ``path, day, underlying, move`` (cumulative relative move from today). ``accounts``:
    the ``top`` accounts by ``tail_shortfall`` (their mean shortfall on the last day over the tail
    paths, the worst ``1 − tail`` share by total shortfall), with ``share`` (of the tail's total),
    ``p_liquidatable`` (last day) and ``p_liquidatable_any`` (on any day). ``today``: the current
    counts (``margin_call, liquidatable, bankrupt, shortfall``). ``vols``: today's annualized vol
    per underlying. ``held_constant``: held underlyings without a history, kept at today's prices
    (``unpriced="hold"``).
    """

    days: Any
    paths: Any
    moves: Any
    accounts: Any
    today: dict[str, float]
    vols: dict[str, float]
    method: str
    paths_count: int
    tail: float
    _inputs: tuple[Any, ...]
    _tail_paths: np.ndarray
    held_constant: list[str] = dataclasses.field(default_factory=list)

    def chart(self, path: Any = None, *, title: str | None = None) -> Any:
        """The per-day distributions (:func:`margin_engine.calibration.charts.forecast_figure`);
        a PNG at ``path`` if given."""
        from margin_engine.calibration.charts import forecast_figure, save_png

        fig = forecast_figure(self, title=title)
        if path is not None:
            save_png(fig, path)
        return fig

    def rebalance(
        self,
        *,
        target_health: float = 1.0,
        day: int | None = None,
        account_ids: Any = None,
        trigger: dict[str, float] | None = None,
        method: Literal["greedy", "exact"] = "greedy",
        output: Literal["arrow", "polars"] = "arrow",
    ) -> Any:
        """Transfers that keep every account at ``target_health`` on the forecast's tail paths of
        ``day`` (default: the last): each account enters :func:`margin_engine.rebalance` as it
        stands on its worst tail path (the collateral_maintenance and maintenance margin of the
        path where its margin excess is smallest), so the collateral moves before the forecast
        breach. ``account_ids``: the owner's accounts (default: all). ``trigger``:
        ``{underlying: vol}``: rebalance only if today's annualized vol of an underlying reaches
        its threshold (``Forecast.vols``). Returns a :class:`margin_engine.RebalancePlan`."""
        from margin_engine.api import liquidation_scan
        from margin_engine.optimize import rebalance

        book, positions, balances, market, model, threads, moves, held = self._inputs
        d = moves.shape[1] if day is None else int(day)
        if not 1 <= d <= moves.shape[1]:
            raise input_error("arguments", "day", f"must be in [1, {moves.shape[1]}], got {day!r}")
        worst_excess = worst_coll = worst_mm = ids = None
        for p in self._tail_paths:
            stress = {u: float(moves[p, d - 1, j]) for j, u in enumerate(held)}
            scan = liquidation_scan(book, positions, balances, market, model=model, stress=stress, threads=threads).sort_by("account_id")
            coll = scan.column("collateral_maintenance").to_numpy()
            mm = scan.column("maintenance_margin").to_numpy()
            excess = coll - target_health * mm
            if ids is None:
                ids = scan.column("account_id").to_numpy()
                worst_excess, worst_coll, worst_mm = excess, coll, mm
            else:
                worse = excess < worst_excess
                worst_excess = np.where(worse, excess, worst_excess)
                worst_coll = np.where(worse, coll, worst_coll)
                worst_mm = np.where(worse, mm, worst_mm)
        assert ids is not None and worst_coll is not None and worst_mm is not None
        keep = np.ones(ids.size, dtype=bool) if account_ids is None else np.isin(ids, np.asarray(list(account_ids)))
        accounts = pa.table({"account_id": pa.array(ids[keep]), "collateral": pa.array(worst_coll[keep]), "maintenance_margin": pa.array(worst_mm[keep])})
        return rebalance(
            accounts, target_health=target_health, trigger=trigger, vols=None if trigger is None else self.vols, method=method, output=output
        )


_SCENARIOS_PER_CALL = 250
"""Scenarios margined per engine call: the progress callback runs between calls."""


def _cross_positions(book: Any, positions: Any) -> Any:
    """``positions`` without a ``margin_mode`` column; isolated positions are refused (their
    rows would be liquidation-queue rows of their own, which the per-account results of the
    forecast do not have yet)."""
    from margin_engine import isolated as _isolated

    split = _isolated.split(book, positions, None)
    if split is None:
        return positions
    if split.any_isolated:
        keys = split.keys
        raise input_error(
            "positions", "margin_mode", "forecast_margin margins cross accounts only; isolated positions are not forecast yet",
            [f"account {a} {i}" for a, i in zip(keys.column("account_id").to_pylist()[:10], keys.column("instrument").to_pylist()[:10])],
        )  # fmt: skip
    return split.cross


def _margin_along(
    book: Any, positions: Any, balances: Any, market: Any, model: str, threads: Any, held: list[str], moves: np.ndarray, days: int,
    paths_per_block: int | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Every account under each row of ``moves`` (scenario × held underlying; ``days`` rows a
    path) in one engine pass: per-scenario totals (``margin_call``, ``liquidatable`` with
    bankrupt, ``bankrupt``, ``shortfall``, ``call_amount``) and per account (by ``account_id``)
    the paths liquidatable on the last day / on any day and the shortfall summed over the
    scenarios. The rows are those of ``liquidation_scan(stress=)`` under each scenario.
    ``paths_per_block``: paths margined per pass over the accounts (default: as many as fit in
    the engine's cache budget); it changes no number."""
    from margin_engine import _core
    from margin_engine._inputs import arrow_input
    from margin_engine.api import _checked

    core_book, core_market, model, threads, _ = _checked(book, market, model, threads)
    totals, accounts = _core.stressed_paths(
        core_book, core_market, arrow_input(positions, "positions"), arrow_input(balances, "balances"),
        list(held), np.ascontiguousarray(moves, dtype=np.float64).tolist(), int(days), model, threads, paths_per_block,
    )  # fmt: skip
    t, a = pa.table(totals), pa.table(accounts)
    return (
        {k: t.column(k).to_numpy().astype(np.float64) for k in ("margin_call", "liquidatable", "bankrupt", "shortfall", "call_amount")},
        {k: a.column(k).to_numpy() for k in ("account_id", "liquidatable_last", "liquidatable_any", "shortfall")},
    )


def forecast_margin(
    book: Any,
    positions: Any,
    balances: Any,
    market: Any,
    prices: Any,
    *,
    days: int = 10,
    paths: int = 1000,
    method: Literal["fhs", "garch"] = "fhs",
    decay: float = 0.94,
    lookback: str = "4y",
    gaps: Literal["scale", "drop"] = "scale",
    model: Literal["standard", "portfolio"] = "portfolio",
    tail: float = 0.99,
    top: int = 20,
    seed: int = 0,
    unpriced: Literal["error", "hold"] = "error",
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    output: Literal["arrow", "polars"] = "arrow",
) -> Forecast:
    """The distribution of margin calls, liquidations and shortfall over the next ``days``.

    Reads the book, ``positions``, ``balances`` and ``market`` as :func:`margin_engine.liquidation_scan`
    does, and ``prices`` as :func:`margin_engine.calibrate` (``symbol, time, close``; intraday
    candles are taken once a day, at the time of day of the earliest last candle among the held
    underlyings, so that their days line up). Every underlying the positions hold
    needs a history; the moves are relative to today's market (the stress of
    ``liquidation_scan``: index prices, perpetual and future marks and linked collateral move,
    options are repriced by Black-76 at their implied vol; the valuation time stays today's, so
    no theta and no expiry along the path).

    ``method``: ``"fhs"`` (EWMA filter, λ = ``decay`` a day) or ``"garch"`` (GARCH(1,1) fitted by
    ``arch`` per underlying over the ``lookback``). Each day of each path draws one past date of the
    lookback (common to all underlyings) and takes its standardized returns, times the path's
    current vol. The engine margins the book ``paths × days`` times (blocks of 250 scenarios a
    pass, each account's row the one ``liquidation_scan(stress=)`` gives); ``progress(done,
    total)`` after each block, in scenarios. Positions with a ``margin_mode`` column: cross
    positions only (isolated ones raise ``MarginInputError``, not forecast yet).
    ``seed``: the draws (same seed, same forecast). ``unpriced="hold"``: underlyings without a
    history stay at today's prices along every path (``Forecast.held_constant``) instead of raising.

    >>> import margin_engine as me, numpy as np, datetime as dt, pyarrow as pa
    >>> t = [dt.datetime(2020, 1, 1) + dt.timedelta(days=i) for i in range(800)]
    >>> close = 100 * np.exp(np.cumsum(0.03 * np.random.default_rng(0).standard_normal(800)))
    >>> book = me.Book(pa.table({"instrument": ["X-PERP"], "kind": ["perpetual"], "underlying": ["X"],
    ...     "multiplier": [1.0], "initial_margin_rate": [0.1], "maintenance_margin_rate": [0.05]}),
    ...     pa.table({"asset": ["USD"], "price": [1.0], "initial_weight": [1.0], "maintenance_weight": [1.0],
    ...               "initial_liability_weight": [1.0], "maintenance_liability_weight": [1.0]}))
    >>> market = me.Market({"underlying": ["X"], "index_price": [close[-1]]},
    ...                    {"instrument": ["X-PERP"], "mark_price": [close[-1]]}, t[-1])
    >>> fc = me.forecast_margin(book, {"account_id": [1], "instrument": ["X-PERP"], "quantity": [1.0]},
    ...     {"account_id": [1], "asset": ["USD"], "amount": [0.08 * close[-1]]}, market,
    ...     {"symbol": ["X"] * 800, "time": t, "close": close}, days=3, paths=200, lookback="700d",
    ...     model="standard")
    >>> fc.days.column("day").to_pylist()
    [1, 2, 3]
    """
    from margin_engine.api import Book, Market, liquidation_scan

    check_instance(book, Book, "book")
    check_instance(market, Market, "market")
    model = check_model(model)
    output = check_output(output)
    method = check_choice(method, "method", ("fhs", "garch"))
    for name, value, low in (("days", days, 1), ("paths", paths, 1), ("top", top, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise input_error("arguments", name, f"must be an integer >= {low}, got {value!r}")
    if not (isinstance(tail, (int, float)) and 0.0 < float(tail) < 1.0):
        raise input_error("arguments", "tail", f"must be in (0, 1), got {tail!r}")
    st = settings(horizon="1d", confidence=0.99, method="garch" if method == "garch" else "fhs", decay=decay, lookback=lookback, gaps=gaps)
    history = read_history(prices)
    unpriced = check_choice(unpriced, "unpriced", ("error", "hold"))
    held = _held_underlyings(book, _instruments(positions))
    if not held:
        raise input_error("positions", "instrument", "the positions hold no underlying to simulate")
    missing = [u for u in held if u not in history.series]
    if missing and unpriced == "error":
        raise input_error(
            "prices", "symbol", "no history for an underlying the book holds (unpriced='hold' keeps it at today's price)",
            [repr(u) for u in missing[:10]],
        )  # fmt: skip
    held = [u for u in held if u not in missing]
    if not held:
        raise input_error("prices", "symbol", "no underlying the book holds has a history")

    # filter each underlying's daily returns; standardized residuals on a common date grid
    resid: dict[str, dict[int, float]] = {}
    v_today: dict[str, float] = {}
    garch_params: dict[str, tuple[float, float, float]] = {}
    lam = st.lam(DAY)
    anchor = min(int(history[u].times[-1]) for u in held)  # one time of day for every underlying
    for u in held:
        ser = _daily(history[u], anchor)
        p = prepare(ser, st)
        lo = int(np.searchsorted(p.t, p.t[-1] - st.lookback, side="right"))
        if method == "garch":
            g = models.garch_fit(p.r[lo:])
            garch_params[u] = g
            pred, post = models.variance_filter(p.r, *g, p.v0)
        else:
            pred, post = p.ewma_pred, p.ewma_post
        lo = max(lo, p.burn)
        z = p.r[lo:] / np.sqrt(pred[lo:])
        resid[u] = dict(zip(p.t[lo:].tolist(), z.tolist()))
        v_today[u] = float(post[-1])
    common = sorted(set.intersection(*(set(r) for r in resid.values())))
    if len(common) < 2:
        raise input_error("prices", "time", "the held underlyings share fewer than two dates in the lookback")
    z_mat = np.array([[resid[u][t] for u in held] for t in common])  # dates × underlyings
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(common), size=(paths, days))
    n_u = len(held)
    var = np.tile(np.array([v_today[u] for u in held]), (paths, 1))
    cum = np.zeros((paths, n_u))
    moves = np.empty((paths, days, n_u))
    for d in range(days):
        r = np.sqrt(var) * z_mat[draws[:, d]]
        cum += r
        moves[:, d, :] = np.expm1(cum)
        if method == "garch":
            om = np.array([garch_params[u][0] for u in held])
            al = np.array([garch_params[u][1] for u in held])
            be = np.array([garch_params[u][2] for u in held])
            var = om + al * r * r + be * var
        else:
            var = lam * var + (1.0 - lam) * r * r

    positions = _cross_positions(book, positions)
    base = liquidation_scan(book, positions, balances, market, model=model, threads=threads).sort_by("account_id")
    ids = base.column("account_id").to_numpy()
    counts0 = _status_counts(base)
    today = {
        "margin_call": int(counts0.get("margin_call", 0)),
        "liquidatable": int(counts0.get("liquidatable", 0) + counts0.get("bankrupt", 0)),
        "bankrupt": int(counts0.get("bankrupt", 0)),
        "shortfall": float(base.column("shortfall").to_numpy().sum()),
    }
    stats = {k: np.zeros((paths, days)) for k in ("margin_call", "liquidatable", "bankrupt", "shortfall", "call_amount")}
    liq_last = np.zeros(ids.size, dtype=np.int64)
    liq_any = np.zeros(ids.size, dtype=np.int64)
    # one engine pass per block of whole paths (the progress callback between blocks)
    block = max(1, _SCENARIOS_PER_CALL // days)
    for first in range(0, paths, block):
        last = min(paths, first + block)
        totals, per_account = _margin_along(book, positions, balances, market, model, threads, held, moves[first:last].reshape(-1, n_u), days)
        for k in stats:
            stats[k][first:last] = totals[k].reshape(last - first, days)
        if not np.array_equal(per_account["account_id"], ids):  # the engine's rows are the scan's accounts
            raise RuntimeError("forecast: the engine's accounts differ from the scan's")
        liq_last += per_account["liquidatable_last"]
        liq_any += per_account["liquidatable_any"]
        if progress is not None:
            progress(last * days, paths * days)

    # the tail: the worst (1 − tail) share of paths by total shortfall on the last day
    n_tail = max(1, int(math.ceil((1.0 - tail) * paths - 1e-9)))  # 1e-9: (1 − 0.95)·100 is 5.000000000000004
    tail_paths = np.argsort(-stats["shortfall"][:, -1], kind="stable")[:n_tail]
    _, per_account = _margin_along(book, positions, balances, market, model, threads, held, moves[tail_paths, days - 1, :], 1)
    tail_sum = per_account["shortfall"]
    tail_mean = tail_sum / n_tail
    order = np.argsort(-tail_mean, kind="stable")[:top]
    order = order[tail_mean[order] > 0] if (tail_mean[order] > 0).any() else order[:0]
    denom = tail_mean.sum()
    accounts = pa.table(
        {
            "account_id": pa.array(ids[order]),
            "tail_shortfall": pa.array(tail_mean[order]),
            "share": pa.array(tail_mean[order] / denom if denom > 0 else np.zeros(order.size)),
            "p_liquidatable": pa.array(liq_last[order] / paths),
            "p_liquidatable_any": pa.array(liq_any[order] / paths),
        }
    )

    def q(x: np.ndarray, level: float) -> np.ndarray:
        return np.quantile(x, level, axis=0)

    sf = stats["shortfall"]
    k99 = max(1, int(math.ceil(0.01 * paths)))
    es99 = np.sort(sf, axis=0)[-k99:].mean(axis=0)
    days_table = pa.table(
        {
            "day": pa.array(np.arange(1, days + 1), pa.int64()),
            "margin_call_mean": pa.array(stats["margin_call"].mean(axis=0)),
            "margin_call_p99": pa.array(q(stats["margin_call"], 0.99)),
            "liquidatable_mean": pa.array(stats["liquidatable"].mean(axis=0)),
            "liquidatable_p99": pa.array(q(stats["liquidatable"], 0.99)),
            "bankrupt_mean": pa.array(stats["bankrupt"].mean(axis=0)),
            "shortfall_mean": pa.array(sf.mean(axis=0)),
            "shortfall_p95": pa.array(q(sf, 0.95)),
            "shortfall_p99": pa.array(q(sf, 0.99)),
            "shortfall_es99": pa.array(es99),
            "call_amount_mean": pa.array(stats["call_amount"].mean(axis=0)),
            "call_amount_p99": pa.array(q(stats["call_amount"], 0.99)),
            "p_any_liquidation": pa.array((stats["liquidatable"] > 0).mean(axis=0)),
        }
    )
    pp, dd = np.meshgrid(np.arange(paths), np.arange(1, days + 1), indexing="ij")
    paths_table = pa.table(
        {
            "path": pa.array(pp.ravel(), pa.int64()),
            "day": pa.array(dd.ravel(), pa.int64()),
            "margin_call": pa.array(stats["margin_call"].ravel().astype(np.int64)),
            "liquidatable": pa.array(stats["liquidatable"].ravel().astype(np.int64)),
            "bankrupt": pa.array(stats["bankrupt"].ravel().astype(np.int64)),
            "shortfall": pa.array(sf.ravel()),
            "call_amount": pa.array(stats["call_amount"].ravel()),
        }
    )
    mp, md, mu = np.meshgrid(np.arange(paths), np.arange(1, days + 1), np.arange(n_u), indexing="ij")
    moves_table = pa.table(
        {
            "path": pa.array(mp.ravel(), pa.int64()),
            "day": pa.array(md.ravel(), pa.int64()),
            "underlying": pa.array(np.array(held, dtype=object)[mu.ravel()].tolist(), pa.string()),
            "move": pa.array(moves.ravel()),
        }
    )
    vols = {u: math.sqrt(v_today[u] * 365.0) for u in held}
    return Forecast(
        days=as_output(days_table, output), paths=as_output(paths_table, output), moves=as_output(moves_table, output),
        accounts=as_output(accounts, output), today=today, vols=vols, method=method, paths_count=int(paths), tail=float(tail),
        _inputs=(book, positions, balances, market, model, threads, moves, held), _tail_paths=tail_paths,
        held_constant=missing,
    )  # fmt: skip
