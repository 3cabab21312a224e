"""``me.backtest``: the calibrated margin against what the market then did (``docs/calibration.md``).

At every date of the history (every ``step``, after the first ``lookback``), the calibration is
the one :func:`margin_engine.calibrate` would have produced from the candles up to that date; the
P&L is the move over the next ``horizon``. Per underlying: a unit long and a unit short, each
charged ``price_range × price`` (the portfolio model's scan loss of a naked perpetual), exceed
when the loss is larger. For a book: every account margined by the engine (``me.margin``, one
bulk call per date on a market built from the closes at that date), its equity change over the
horizon against the margin it held. Kupiec's proportion-of-failures and Christoffersen's
independence tests on each series of exceedances.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from margin_engine._inputs import arrow_input, arrow_table, as_output, check_choice, check_model, check_output, input_error, timestamp_ns
from margin_engine.calibration import models
from margin_engine.calibration.calibrate import Settings, check_lookback, extreme_move, first_eval_time, fit_series, prepare, settings
from margin_engine.calibration.history import DAY, History, duration_text, parse_duration, read_history

__all__ = ["Accounts", "Backtest", "Tables", "backtest", "christoffersen", "kupiec", "STRESS_PERIODS"]

STRESS_PERIODS = {
    "COVID crash 2020-03": ("2020-03-01", "2020-04-15"),
    "LUNA/UST 2022-05": ("2022-05-01", "2022-06-15"),
    "FTX 2022-11": ("2022-11-01", "2022-12-15"),
}


def _xlogy(x: float, y: float) -> float:
    return 0.0 if x == 0 else x * math.log(y)


def kupiec(observations: int, exceedances: int, p: float) -> tuple[float, float]:
    """Kupiec's proportion-of-failures test: (LR, p-value) of ``exceedances`` in
    ``observations`` against the expected rate ``p``,
    ``LR = −2 [ (n−x) ln(1−p) + x ln p − (n−x) ln(1−x/n) − x ln(x/n) ]`` ~ χ²(1).

    >>> lr, pv = kupiec(1000, 10, 0.01)
    >>> round(lr, 12), round(pv, 6)
    (0.0, 1.0)
    """
    n, x = int(observations), int(exceedances)
    if n == 0:
        return math.nan, math.nan
    phat = x / n
    lr = -2.0 * (_xlogy(n - x, 1 - p) + _xlogy(x, p) - _xlogy(n - x, 1 - phat) - _xlogy(x, phat))
    lr = lr if lr > 0 else 0.0
    return lr, models.chi2_sf(lr, 1)


def christoffersen(hits: Any) -> tuple[float, float, dict[str, int]]:
    """Christoffersen's independence test of a 0/1 exceedance sequence: (LR, p-value, the
    transition counts n00, n01, n10, n11). With ``π0 = n01/(n00+n01)``, ``π1 = n11/(n10+n11)``,
    ``π = (n01+n11)/(n−1)``: ``LR = −2 [ ln L(π) − ln L(π0, π1) ]`` ~ χ²(1). A 2-D array (dates ×
    series, e.g. accounts) pools the transitions within each column.

    >>> lr, pv, n = christoffersen([0, 0, 1, 1, 0, 0, 0, 1, 0, 0])
    >>> n
    {'n00': 4, 'n01': 2, 'n10': 2, 'n11': 1}
    """
    h = np.asarray(hits, dtype=bool)
    if h.ndim == 1:
        h = h[:, None]
    a, b = h[:-1], h[1:]
    n00 = int(np.sum(~a & ~b))
    n01 = int(np.sum(~a & b))
    n10 = int(np.sum(a & ~b))
    n11 = int(np.sum(a & b))
    counts = {"n00": n00, "n01": n01, "n10": n10, "n11": n11}
    total = n00 + n01 + n10 + n11
    if total == 0:
        return math.nan, math.nan, counts
    pi = (n01 + n11) / total
    pi0 = n01 / (n00 + n01) if n00 + n01 else 0.0
    pi1 = n11 / (n10 + n11) if n10 + n11 else 0.0
    ll_null = _xlogy(n00 + n10, 1 - pi) + _xlogy(n01 + n11, pi)
    ll_alt = _xlogy(n00, 1 - pi0) + _xlogy(n01, pi0) + _xlogy(n10, 1 - pi1) + _xlogy(n11, pi1)
    lr = -2.0 * (ll_null - ll_alt)
    lr = lr if lr > 0 else 0.0
    return lr, models.chi2_sf(lr, 1), counts


def _tests(hits: np.ndarray, p: float) -> dict[str, Any]:
    n, x = int(hits.size), int(hits.sum())
    k_lr, k_p = kupiec(n, x, p)
    c_lr, c_p, _ = christoffersen(hits)
    cc_lr = k_lr + c_lr if np.isfinite(k_lr) and np.isfinite(c_lr) else math.nan
    return {
        "observations": n, "exceedances": x, "rate": (x / n) if n else math.nan, "expected": p,
        "kupiec_lr": k_lr, "kupiec_p": k_p, "christoffersen_lr": c_lr, "christoffersen_p": c_p,
        "conditional_lr": cc_lr, "conditional_p": models.chi2_sf(cc_lr, 2) if np.isfinite(cc_lr) else math.nan,
    }  # fmt: skip


@dataclasses.dataclass
class Backtest:
    """What :func:`backtest` measured.

    ``dates``: per underlying and date, ``symbol, time, close, sigma, price_range, move`` (the
    relative move over the horizon), ``exceed_long`` (``move < −price_range``), ``exceed_short``
    (``move > price_range``). ``summary``: one row per underlying and side (``long``, ``short``)
    and, with a book, ``symbol = "book"``, ``side = "total"`` (the book's total P&L against its
    total margin) and ``"accounts"`` (every account-date pooled): ``observations, exceedances,
    rate, expected`` (1 − confidence), ``kupiec_lr, kupiec_p, christoffersen_lr,
    christoffersen_p, conditional_lr, conditional_p`` (Christoffersen's conditional coverage,
    χ²(2)), ``mean_range, max_range``. ``book`` (with a book): per date ``time, margin`` (Σ
    margin held plus haircuts), ``pnl`` (Σ equity change over the horizon), ``exceed``, ``accounts``,
    ``exceeding_accounts``. ``accounts``: per account ``account_id, observations, exceedances,
    rate, kupiec_p, worst_excess`` (the largest loss beyond its margin). ``skipped``: dates left
    out because the candle a horizon later is missing (a gap). ``dropped`` (``unpriced="drop"``):
    the held underlyings without a history and how many position rows were left out with them.
    """

    dates: Any
    summary: Any
    book: Any
    accounts: Any
    skipped: dict[str, int]
    settings: Settings
    margin: str
    model: str
    dropped: dict[str, Any] = dataclasses.field(default_factory=dict)

    def margin_moves(self, periods: dict[str, tuple[str, str]] | None = None, output: str = "arrow") -> Any:
        """How far the range rose in stress periods: per period and symbol, ``before`` (the range
        on the period's first date), ``peak`` (its largest value in the period), ``ratio``
        (peak / before), ``exceedances`` (long or short) in the period. Default periods: March
        2020, May 2022 and November 2022 (``STRESS_PERIODS``)."""
        periods = STRESS_PERIODS if periods is None else periods
        d = arrow_table(self.dates, "dates")
        sym = np.array(d.column("symbol").to_pylist(), dtype=object)
        t = pc.cast(d.column("time"), pa.int64()).to_numpy()
        rng = d.column("price_range").to_numpy()
        exc = d.column("exceed_long").to_numpy(zero_copy_only=False) | d.column("exceed_short").to_numpy(zero_copy_only=False)
        rows: dict[str, list[Any]] = {k: [] for k in ("period", "symbol", "before", "peak", "ratio", "exceedances")}
        for name, (a, b) in periods.items():
            lo, hi = timestamp_ns(a) // 1_000_000_000, timestamp_ns(b) // 1_000_000_000
            for s in sorted(set(sym.tolist())):
                m = (sym == s) & (t >= lo) & (t <= hi)
                if not m.any():
                    continue
                r = rng[m]
                rows["period"].append(name)
                rows["symbol"].append(s)
                rows["before"].append(float(r[0]))
                rows["peak"].append(float(r.max()))
                rows["ratio"].append(float(r.max() / r[0]))
                rows["exceedances"].append(int(exc[m].sum()))
        return as_output(pa.table(rows) if rows["period"] else pa.table({k: pa.array([], pa.float64()) for k in rows}), output)

    def chart(self, path: Any = None, *, symbols: list[str] | None = None, title: str | None = None) -> Any:
        """P&L over the horizon against the margin, exceedances marked (see
        :func:`margin_engine.calibration.charts.backtest_figure`); a PNG at ``path`` if given."""
        from margin_engine.calibration.charts import backtest_figure, save_png

        fig = backtest_figure(self, symbols=symbols, title=title)
        if path is not None:
            save_png(fig, path)
        return fig


def _grid(times: np.ndarray, t0: int, t1: int, step: int) -> np.ndarray:
    """Candle times in [t0, t1] on the grid t0 + i·step."""
    sel = times[(times >= t0) & (times <= t1)]
    return sel[(sel - t0) % step == 0]


def backtest(
    book: Any = None,
    positions: Any = None,
    balances: Any = None,
    prices: Any = None,
    *,
    horizon: str = "1d",
    confidence: float = 0.99,
    method: Literal["ewma", "fhs", "garch"] = "ewma",
    anti_procyclicality: Any = None,
    measure: Literal["var", "es"] = "var",
    decay: float = 0.94,
    lookback: str = "4y",
    gaps: Literal["scale", "drop"] = "scale",
    symbols: list[str] | None = None,
    start: Any = None,
    end: Any = None,
    step: str | None = None,
    refit: int | None = None,
    model: Literal["standard", "portfolio"] = "portfolio",
    margin: Literal["maintenance", "initial"] = "maintenance",
    implied_vol: Any = None,
    recalibrate: bool = True,
    unpriced: Literal["error", "drop"] = "error",
    threads: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    output: Literal["arrow", "polars"] = "arrow",
    **calibration_options: Any,
) -> Backtest:
    """Backtests the calibration (and, given a book, the engine's margin of its accounts) over a
    price history.

    Reads ``prices`` as :func:`margin_engine.calibrate` does (``symbol, time, close``). Without a
    book: every symbol (or ``symbols``). With ``book``, ``positions`` and ``balances`` (columns as
    in :func:`margin_engine.margin`): the book's held underlyings, each needing a history; at
    every date a market is built from the closes (index price = close; perpetual and future marks
    = close; options by Black-76 at ``implied_vol``: a number, a dict per underlying, or None for
    the calibrated EWMA vol of that date, annualized), the assets linked to a symbol (``asset`` or
    ``underlying`` column) priced at its close, and, with ``recalibrate`` and the portfolio model,
    the book's ``risk_params`` replaced by that date's calibration (``price_range``, ``vol_up``,
    ``vol_down``, ``extreme_move``). One ``me.margin`` call per date; positions and balances are
    held constant, and a perpetual or future row without an ``entry_price`` gets the first date's
    close as its entry price, so that its P&L reaches equity (without one the engine counts it as
    settled, and it would move nothing). An account exceeds when its equity falls over the horizon by more than the
    protection it held: its ``margin`` (``"maintenance"`` or ``"initial"``) plus its collateral's
    haircuts (``equity − collateral_maintenance``, or ``− collateral_initial``).

    Dates: every ``step`` (default: the horizon, so the windows do not overlap) from the first
    date with ``lookback`` behind it, within [``start``, ``end``]; a date whose candle a horizon
    later is missing is skipped (``Backtest.skipped``). Tail quantiles are re-estimated every
    ``refit`` dates (default: daily); the vol every date. Calibration options (``method``,
    ``confidence``, ``anti_procyclicality``, ``measure``, ``decay``, ``lookback``, ``gaps`` and
    the rest of :func:`margin_engine.calibrate`'s) as there. ``progress(done, total)`` is called
    after each date of the book loop. ``unpriced="drop"``: positions in underlyings without a
    history are left out (``Backtest.dropped``) instead of raising. ``positions`` may instead be
    an :class:`Accounts` (``balances`` then None): the accounts held elsewhere, as
    ``margin_engine.spark.backtest`` holds them in Spark DataFrames.

    >>> import margin_engine as me, numpy as np, datetime as dt
    >>> rng = np.random.default_rng(1)
    >>> t = [dt.datetime(2020, 1, 1) + dt.timedelta(days=i) for i in range(1500)]
    >>> close = 100 * np.exp(np.cumsum(0.02 * rng.standard_normal(1500)))
    >>> bt = me.backtest(prices={"symbol": ["X"] * 1500, "time": t, "close": close},
    ...                  horizon="1d", confidence=0.99, lookback="365d")
    >>> s = bt.summary.to_pylist()[0]
    >>> s["side"], s["observations"], 0.0 < s["rate"] < 0.03
    ('long', 1134, True)
    """
    if prices is None:
        raise input_error("prices", "*", "a price history is required")
    if isinstance(symbols, str):
        symbols = [symbols]
    st = settings(
        horizon=horizon, confidence=confidence, method=method, measure=measure, decay=decay, lookback=lookback,
        gaps=gaps, anti_procyclicality=anti_procyclicality, **calibration_options,
    )  # fmt: skip
    output = check_output(output)
    model = check_model(model)
    margin = check_choice(margin, "margin", ("maintenance", "initial"))
    unpriced = check_choice(unpriced, "unpriced", ("error", "drop"))
    with_book = book is not None
    if with_book:
        from margin_engine.api import Book
        from margin_engine._inputs import check_instance

        check_instance(book, Book, "book")
        if isinstance(positions, Accounts):  # the accounts held elsewhere (margin_engine.spark.backtest)
            accounts: Accounts = positions
        elif positions is None or balances is None:
            raise input_error("arguments", "positions", "a book backtest needs positions and balances")
        else:
            accounts = Tables(positions, balances)
    history = read_history(prices, symbols=None)
    held: list[str] = []
    dropped: dict[str, Any] = {}
    if with_book:
        held = _held_underlyings(book, accounts.instruments())
        missing = [u for u in held if u not in history.series]
        if missing and unpriced == "drop":
            accounts, dropped = _drop_unpriced(book, accounts, missing)
            held = [u for u in held if u not in missing]
            if not held:
                raise input_error("prices", "symbol", "no underlying the book holds has a history")
        elif missing:
            raise input_error(
                "prices", "symbol", "no history for an underlying the book holds (unpriced='drop' leaves its positions out)",
                [repr(u) for u in missing[:10]],
            )  # fmt: skip
        names = held if symbols is None else sorted(set(held) | set(symbols))
    else:
        names = history.symbols if symbols is None else sorted(set(symbols))
    unknown = [s for s in names if s not in history.series]
    if unknown:
        raise input_error("prices", "symbol", "no rows for a requested symbol", [repr(s) for s in unknown[:10]])
    for s in names:
        check_lookback(history[s], st)
    step_s = st.horizon if step is None else parse_duration(step, "step")
    for s in names:
        if step_s % history[s].period:
            raise input_error("arguments", "step", f"must be a whole number of {s}'s period ({duration_text(history[s].period)})")
    refit = max(1, DAY // step_s) if refit is None else int(refit)
    if refit < 1:
        raise input_error("arguments", "refit", f"must be >= 1, got {refit}")
    t_lo = -(2**62) if start is None else timestamp_ns(start) // 1_000_000_000
    t_hi = 2**62 if end is None else timestamp_ns(end) // 1_000_000_000
    p_exc = 1.0 - st.confidence

    # the dates: a common grid for a book's underlyings, each symbol's own otherwise
    grids: dict[str, np.ndarray] = {}
    if with_book:
        t0 = max(first_eval_time(history[s], st) for s in held)
        t0 = max(t0, t_lo)
        common = None
        for s in held:
            g = _grid(history[s].times, t0, t_hi, step_s)
            common = g if common is None else np.intersect1d(common, g)
        assert common is not None
        if common.size == 0:
            raise input_error("prices", "time", "no date at which every held underlying has a candle after the lookback")
        for s in names:
            grids[s] = common if s in held else _grid(history[s].times, max(first_eval_time(history[s], st), t_lo, int(common[0])), t_hi, step_s)
    else:
        for s in names:
            g = _grid(history[s].times, max(first_eval_time(history[s], st), t_lo), t_hi, step_s)
            if g.size == 0:
                raise input_error("prices", "time", f"{s}: no date to backtest in the range given")
            grids[s] = g

    fits: dict[str, dict[str, np.ndarray]] = {}
    cols: dict[str, list[Any]] = {k: [] for k in ("symbol", "time", "close", "sigma", "price_range", "move", "exceed_long", "exceed_short")}
    summary: dict[str, list[Any]] = {}
    skipped: dict[str, int] = {}
    for s in names:
        ser = history[s]
        p = prepare(ser, st)
        grid = grids[s]
        fits[s] = fit_series(ser, st, grid, refit=refit, prepared=p)
        idx = np.searchsorted(ser.times, grid)
        nxt = np.searchsorted(ser.times, grid + st.horizon)
        ok = (nxt < ser.times.size) & (ser.times[np.minimum(nxt, ser.times.size - 1)] == grid + st.horizon)
        skipped[s] = int((~ok).sum())
        c0 = ser.close[idx[ok]]
        move = ser.close[nxt[ok]] / c0 - 1.0
        rng = fits[s]["price_range"][ok]
        el, es = move < -rng, move > rng
        n = int(ok.sum())
        cols["symbol"] += [s] * n
        cols["time"].append(grid[ok])
        cols["close"].append(c0)
        cols["sigma"].append(fits[s]["sigma"][ok])
        cols["price_range"].append(rng)
        cols["move"].append(move)
        cols["exceed_long"].append(el)
        cols["exceed_short"].append(es)
        for side, hits in (("long", el), ("short", es)):
            _add(summary, s, side, _tests(hits, p_exc), rng)
    ts = pa.timestamp("s", "UTC")
    dates = pa.table(
        {
            "symbol": pa.array(cols["symbol"], pa.string()),
            "time": pa.array(np.concatenate(cols["time"]).astype("datetime64[s]"), ts),
            **{k: pa.array(np.concatenate(cols[k])) for k in ("close", "sigma", "price_range", "move", "exceed_long", "exceed_short")},
        }
    )
    book_table = accounts_table = None
    if with_book:
        book_table, accounts_table, book_rows, skipped["book"] = _book_loop(
            book, accounts, history, held, grids, fits, st, model, margin, implied_vol, recalibrate, threads, progress
        )
        for side, hits in book_rows.items():
            _add(summary, "book", side, _tests(hits, p_exc), np.zeros(0))
    return Backtest(
        dates=as_output(dates, output),
        summary=as_output(pa.table(summary), output),
        book=None if book_table is None else as_output(book_table, output),
        accounts=None if accounts_table is None else as_output(accounts_table, output),
        skipped=skipped,
        settings=st,
        margin=margin,
        model=model,
        dropped=dropped,
    )


class Accounts:
    """The book's accounts as the backtest holds them (constant over the dates): :class:`Tables`
    in memory; ``margin_engine.spark`` keeps them in Spark DataFrames. The backtest asks them for
    the instruments they hold, drops rows, fills entry prices and has them margined at every
    date; everything else (the dates, each date's book and market, the statistics) is shared."""

    def instruments(self) -> list[Any]:
        """The distinct ``instrument`` values of the positions."""
        raise NotImplementedError

    def without(self, instruments: list[Any]) -> tuple[Accounts, int]:
        """These accounts without the position rows of ``instruments``; how many rows left."""
        raise NotImplementedError

    def with_entry_prices(self, fill: dict[Any, float]) -> Accounts:
        """These accounts with a null or absent ``entry_price`` of an instrument in ``fill`` set to it."""
        raise NotImplementedError

    def margins(
        self, times: list[int], at: Callable[[int], tuple[Any, Any]], model: str, threads: Any,
        progress: Callable[[int, int], None] | None,
    ) -> Iterator[tuple[int, pa.Table]]:  # fmt: skip
        """``(t, me.margin(*at(t), ...))`` for every ``t`` of ``times``, in order; each result's
        accounts in one order (ascending ``account_id``) at every date."""
        raise NotImplementedError


class Tables(Accounts):
    """The accounts in memory: one ``me.margin`` call per date."""

    def __init__(self, positions: Any, balances: Any) -> None:
        pos, bal = arrow_input(positions, "positions"), arrow_input(balances, "balances")
        self.positions = pos if isinstance(pos, pa.Table) else arrow_table(pos, "positions")
        self.balances = bal if isinstance(bal, pa.Table) else arrow_table(bal, "balances")

    def instruments(self) -> list[Any]:
        return _instruments(self.positions)

    def without(self, instruments: list[Any]) -> tuple[Accounts, int]:
        pos = self.positions
        kept = pos.filter(pc.invert(pc.is_in(pos.column("instrument"), pa.array(instruments, pos.column("instrument").type))))
        return Tables(kept, self.balances), pos.num_rows - kept.num_rows

    def with_entry_prices(self, fill: dict[Any, float]) -> Accounts:
        pos = self.positions
        if "entry_price" in pos.column_names:
            entry = pc.cast(pos.column("entry_price"), pa.float64()).to_pylist()
        else:
            entry = [None] * pos.num_rows
        names = pos.column("instrument").to_pylist()
        column = pa.array([fill.get(n) if e is None else e for n, e in zip(names, entry)], pa.float64())
        if "entry_price" in pos.column_names:
            pos = pos.set_column(pos.column_names.index("entry_price"), "entry_price", column)
        else:
            pos = pos.append_column("entry_price", column)
        return Tables(pos, self.balances)

    def margins(
        self, times: list[int], at: Callable[[int], tuple[Any, Any]], model: str, threads: Any,
        progress: Callable[[int, int], None] | None,
    ) -> Iterator[tuple[int, pa.Table]]:  # fmt: skip
        from margin_engine.api import margin as engine_margin

        for done, t in enumerate(times):
            b, market = at(t)
            yield t, engine_margin(b, self.positions, self.balances, market, model=model, threads=threads)
            if progress is not None:
                progress(done + 1, len(times))


def _drop_unpriced(book: Any, accounts: Accounts, missing: list[str]) -> tuple[Accounts, dict[str, Any]]:
    """``accounts`` without the position rows of instruments on the ``missing`` underlyings."""
    inst = book.instruments
    gone = inst.filter(pc.is_in(inst.column("underlying"), pa.array(missing, pa.string()))).column("instrument")
    kept, rows = accounts.without(gone.to_pylist())
    return kept, {"underlyings": list(missing), "positions": rows}


def _add(summary: dict[str, list[Any]], symbol: str, side: str, tests: dict[str, Any], rng: np.ndarray) -> None:
    row = {"symbol": symbol, "side": side, **tests,
           "mean_range": float(np.mean(rng)) if rng.size else math.nan,
           "max_range": float(np.max(rng)) if rng.size else math.nan}  # fmt: skip
    for k, v in row.items():
        summary.setdefault(k, []).append(v)


def _instruments(positions: Any) -> list[Any]:
    """The distinct instruments of in-memory ``positions`` (which need ``instrument`` and ``quantity``)."""
    pos = arrow_table(positions, "positions")
    for c in ("instrument", "quantity"):
        if c not in pos.column_names:
            raise input_error("positions", c, "missing column")
    return pc.unique(pos.column("instrument")).to_pylist()


def _held_underlyings(book: Any, instruments: list[Any]) -> list[str]:
    inst = book.instruments
    keys = inst.column("instrument").to_pylist()
    und = dict(zip(keys, inst.column("underlying").to_pylist()))
    held = {und.get(k) for k in instruments}
    held.discard(None)
    return sorted(held)


def _entry_fill(book: Any, history: History, t: int) -> dict[Any, float]:
    """The close at ``t`` of every perpetual's and future's underlying, by instrument: the entry
    price of a row without one. The backtest holds the positions, so their P&L over each horizon
    must reach equity (a row without an entry price would count as settled at every date and
    move nothing)."""
    inst = book.instruments
    fill = {}
    for name, kind, u in zip(inst.column("instrument").to_pylist(), inst.column("kind").to_pylist(), inst.column("underlying").to_pylist()):
        if kind in ("perpetual", "future") and u in history.series:
            ser = history[u]
            fill[name] = float(ser.close[ser.index_at(t)])
    return fill


def _annual(sigma: float, period: int) -> float:
    return sigma * math.sqrt(365 * DAY / period)


def _market_at(
    book: Any, history: History, held: list[str], t: int, sigma: dict[str, float], implied_vol: Any
) -> tuple[Any, Any]:
    """(index_prices, marks) at time ``t`` from the closes (see :func:`backtest`)."""
    from margin_engine.api import black76

    inst = book.instruments
    spot = {}
    for u in held:
        ser = history[u]
        i = ser.index_at(t)
        spot[u] = float(ser.close[i])
    und = inst.column("underlying").to_pylist()
    kinds = inst.column("kind").to_pylist()
    take = [i for i, u in enumerate(und) if u in spot]
    sub = inst.take(pa.array(take, pa.int64()))
    s = np.array([spot[und[i]] for i in take])
    is_opt = np.array([kinds[i] == "option" for i in take], dtype=bool)
    marks = s.copy()
    ivs = np.full(len(take), np.nan)
    if is_opt.any():
        for j, i in enumerate(take):
            if is_opt[j]:
                u = und[i]
                if implied_vol is None:
                    ivs[j] = sigma[u]
                elif isinstance(implied_vol, dict):
                    if u not in implied_vol:
                        raise input_error("arguments", "implied_vol", "no implied vol for a held underlying", [repr(u)])
                    ivs[j] = float(implied_vol[u])
                else:
                    ivs[j] = float(implied_vol)
        expiry = pc.cast(pc.cast(sub.column("expiry"), pa.timestamp("s")), pa.int64()).to_numpy(zero_copy_only=False)
        years = np.maximum(expiry[is_opt] - t, 0) / (365.0 * DAY)
        strikes = np.asarray(sub.column("strike").to_numpy(zero_copy_only=False), dtype=np.float64)[is_opt]
        calls = np.array(sub.column("option_type").to_pylist(), dtype=object)[is_opt] == "call"
        marks[is_opt] = black76(s[is_opt], strikes, years, ivs[is_opt], calls).price
        if "settlement" in inst.column_names:
            # a coin-settled option's mark is in coin per coin: its USD price over the index
            settlement = inst.column("settlement").to_pylist()
            coin = is_opt & np.array([settlement[i] == "inverse" for i in take], dtype=bool)
            marks[coin] = marks[coin] / s[coin]
    index_prices = pa.table({"underlying": pa.array(held, pa.string()), "index_price": pa.array([spot[u] for u in held])})
    marks_table = pa.table(
        {"instrument": sub.column("instrument"), "mark_price": pa.array(marks), "implied_vol": pa.array(np.where(is_opt, ivs, np.nan), from_pandas=True)}
    )
    return index_prices, marks_table


def book_at(book: Any, history: History, t: int, risk: dict[str, dict[str, float]] | None) -> Any:
    """The book (its methodology kept) with its assets priced at the closes of time ``t`` and,
    given ``risk``, its risk_params replaced per underlying by those figures."""
    from margin_engine.api import Book

    assets = book.assets
    names = assets.column("asset").to_pylist()
    linked = assets.column("underlying").to_pylist() if "underlying" in assets.column_names else [None] * len(names)
    prices = assets.column("price").to_numpy(zero_copy_only=False).astype(np.float64).copy()
    for i, (a, u) in enumerate(zip(names, linked)):
        sym = u if u in history.series else (a if a in history.series else None)
        if sym is not None:
            j = history[sym].index_at(t)
            if j >= 0:
                prices[i] = history[sym].close[j]
    assets = assets.set_column(assets.column_names.index("price"), "price", pa.array(prices))
    rp = book.risk_params
    if risk:
        rp = merge_risk_params(rp, risk)
    methodology = getattr(book, "methodology", None)
    if methodology is None:
        return Book(book.instruments, assets, risk_params=rp, margin_tiers=book.margin_tiers)
    return Book(book.instruments, assets, risk_params=rp, margin_tiers=book.margin_tiers, methodology=methodology)


def merge_risk_params(rp: pa.Table | None, risk: dict[str, dict[str, float]]) -> pa.Table:
    """``rp`` with the columns of ``risk`` (per underlying) replaced; rows added for underlyings
    it lacks (the book's other columns at the engine's defaults)."""
    defaults = {"price_range": 0.15, "price_steps": 21, "vol_up": 0.45, "vol_down": 0.30, "vol_term_exponent": 0.3,
                "extreme_move": 3.0, "extreme_cover": 0.33, "short_option_minimum": 0.01, "im_factor": 1.25}  # fmt: skip
    rows = {} if rp is None else {r["underlying"]: dict(r) for r in rp.to_pylist()}
    columns = ["underlying"] + ([c for c in rp.column_names if c != "underlying"] if rp is not None else [])
    for u, figures in risk.items():
        row = rows.setdefault(u, {"underlying": u})
        row.update(figures)
    for c in {k for r in risk.values() for k in r}:
        if c not in columns:
            columns.append(c)
    out = {}
    for c in columns:
        vals = [r.get(c, defaults.get(c)) for r in rows.values()]
        out[c] = pa.array(vals, pa.int64() if c == "price_steps" else (pa.string() if c == "underlying" else pa.float64()))
    return pa.table(out)


def _book_loop(
    book: Any, accounts: Accounts, history: History, held: list[str], grids: dict[str, np.ndarray],
    fits: dict[str, dict[str, np.ndarray]], st: Settings, model: str, margin_kind: str, implied_vol: Any,
    recalibrate: bool, threads: Any, progress: Callable[[int, int], None] | None,
) -> tuple[pa.Table, pa.Table, dict[str, np.ndarray], int]:  # fmt: skip
    from margin_engine.api import Market

    grid = grids[held[0]]
    accounts = accounts.with_entry_prices(_entry_fill(book, history, int(grid[0])))
    need = np.union1d(grid, grid + st.horizon)
    have = set(grid.tolist())
    pos_of = {int(t): i for i, t in enumerate(grid)}
    # extra dates (t + horizon off the grid) are calibrated too, so every call has its figures
    extra = np.array([t for t in need if t not in have and all(history[u].index_at(int(t)) >= 0 for u in held)], dtype=np.int64)
    extra_fits = {u: fit_series(history[u], st, extra) for u in held} if extra.size else {}
    col, coll = ("maintenance_margin", "collateral_maintenance") if margin_kind == "maintenance" else ("initial_margin", "collateral_initial")
    equity: dict[int, np.ndarray] = {}
    req: dict[int, np.ndarray] = {}
    ids: np.ndarray | None = None
    todo = [int(t) for t in need if all(history[u].index_at(int(t)) >= 0 for u in held)]

    def at(t: int) -> tuple[Any, Any]:
        """The book and the market of date ``t``."""
        figures: dict[str, dict[str, float]] = {}
        sigma: dict[str, float] = {}
        for u in held:
            if t in pos_of:
                f, i = fits[u], pos_of[t]
            else:
                f, i = extra_fits[u], int(np.searchsorted(extra, t))
            r = float(f["price_range"][i])
            figures[u] = {"price_range": r, "vol_up": float(f["vol_up"][i]), "vol_down": float(f["vol_down"][i]), "extreme_move": extreme_move(r)}
            sigma[u] = _annual(float(f["sigma"][i]), history[u].period)
        b = book_at(book, history, t, figures if (recalibrate and model == "portfolio") else None)
        index_prices, marks = _market_at(book, history, held, t, sigma, implied_vol)
        return b, Market(index_prices, marks, t * 1_000_000_000)

    for t, res in accounts.margins(todo, at, model, threads, progress):
        acc = res.column("account_id").to_numpy()
        if ids is None:
            ids = acc
        equity[t] = res.column("equity").to_numpy()
        # the protection held: the margin plus the collateral's haircuts (equity − weighted collateral)
        req[t] = res.column(col).to_numpy() + (equity[t] - res.column(coll).to_numpy())
    assert ids is not None
    rows = {k: [] for k in ("time", "margin", "pnl", "exceed", "accounts", "exceeding_accounts")}
    hits_all: list[np.ndarray] = []
    per_acc_hits = []
    worst = np.full(ids.size, -np.inf)
    skipped = 0
    for t in grid.tolist():
        t2 = t + st.horizon
        if t not in equity or t2 not in equity:
            skipped += 1
            continue
        pnl = equity[t2] - equity[t]
        m = req[t]
        hit = -pnl > m
        worst = np.maximum(worst, -pnl - m)
        per_acc_hits.append(hit)
        hits_all.append(hit)
        rows["time"].append(t)
        rows["margin"].append(float(m.sum()))
        rows["pnl"].append(float(pnl.sum()))
        rows["exceed"].append(bool(-pnl.sum() > m.sum()))
        rows["accounts"].append(int(ids.size))
        rows["exceeding_accounts"].append(int(hit.sum()))
    book_table = pa.table(
        {
            "time": pa.array(np.array(rows["time"], dtype="datetime64[s]"), pa.timestamp("s", "UTC")),
            "margin": pa.array(rows["margin"], pa.float64()),
            "pnl": pa.array(rows["pnl"], pa.float64()),
            "exceed": pa.array(rows["exceed"], pa.bool_()),
            "accounts": pa.array(rows["accounts"], pa.int64()),
            "exceeding_accounts": pa.array(rows["exceeding_accounts"], pa.int64()),
        }
    )
    p_exc = 1.0 - st.confidence
    mat = np.array(per_acc_hits, dtype=bool).reshape(len(per_acc_hits), ids.size)
    obs = mat.shape[0]
    exc = mat.sum(axis=0)
    kp = np.array([kupiec(obs, int(x), p_exc)[1] for x in exc]) if obs else np.full(ids.size, np.nan)
    accounts = pa.table(
        {
            "account_id": pa.array(ids),
            "observations": pa.array(np.full(ids.size, obs), pa.int64()),
            "exceedances": pa.array(exc.astype(np.int64)),
            "rate": pa.array(exc / obs if obs else np.full(ids.size, np.nan)),
            "kupiec_p": pa.array(kp),
            "worst_excess": pa.array(np.where(np.isfinite(worst), worst, np.nan)),
        }
    )
    book_rows: dict[str, np.ndarray] = {
        "total": np.array(rows["exceed"], dtype=bool),
        "accounts": mat,  # dates × accounts: Christoffersen's transitions within each account
    }
    return book_table, accounts, book_rows, skipped
