"""Charts of backtests and forecasts, in the style of :mod:`margin_engine.charts` (matplotlib, an
optional extra: ``pip install 'margin-engine[plot]'``).

:func:`backtest_figure`: one panel per underlying (at most four): the move over the horizon at
each date (grey), the margin as ± the calibrated range (red below, green above), exceedances
marked; with a book, a last panel of the book's P&L against its margin (USD). :func:`forecast_figure`:
per forecast day, the distribution over paths of the accounts in margin call or liquidatable and of
the shortfall (median and the 5–95% and 1–99% bands).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from margin_engine._inputs import arrow_table
from margin_engine.charts import _DOWN, _LINE, _NOW, _UP, _short_money, pyplot

__all__ = ["backtest_figure", "forecast_figure", "save_png"]


def save_png(fig: Any, path: Any, dpi: int = 100) -> Path:
    """Writes ``fig`` to ``path`` as PNG and closes it."""
    plt = pyplot()
    out = Path(path)
    try:
        fig.savefig(out, dpi=dpi)
    finally:
        plt.close(fig)
    return out


def _dates(values: Any) -> np.ndarray:
    return pc.cast(values, pa.int64()).to_numpy(zero_copy_only=False).astype("datetime64[s]")


def backtest_figure(bt: Any, *, symbols: list[str] | None = None, title: str | None = None) -> Any:
    """The backtest's P&L against margin (see the module docstring); a matplotlib Figure."""
    plt = pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.ticker import FuncFormatter

    d = arrow_table(bt.dates, "dates")
    summary = arrow_table(bt.summary, "summary")
    names = sorted(set(d.column("symbol").to_pylist())) if symbols is None else list(symbols)
    names = names[:4]
    book = None if bt.book is None else arrow_table(bt.book, "book")
    panels = len(names) + (book is not None)
    st = bt.settings
    with plt.rc_context({"text.parse_math": False}):
        fig, axes = plt.subplots(panels, 1, figsize=(10, 2.6 * panels + 0.9), squeeze=False)
        rates = {(r["symbol"], r["side"]): r for r in summary.to_pylist()}
        for ax, name in zip(axes[:, 0], names):
            u = d.filter(pc.equal(d.column("symbol"), name))
            t = _dates(u.column("time"))
            move = 100 * u.column("move").to_numpy()
            rng = 100 * u.column("price_range").to_numpy()
            el = u.column("exceed_long").to_numpy(zero_copy_only=False)
            es = u.column("exceed_short").to_numpy(zero_copy_only=False)
            ax.plot(t, move, color="#aab7b8", linewidth=0.6)
            ax.plot(t, -rng, color=_DOWN, linewidth=1.0)
            ax.plot(t, rng, color=_UP, linewidth=1.0)
            ax.scatter(t[el], move[el], color=_DOWN, marker="v", s=18, zorder=3)
            ax.scatter(t[es], move[es], color=_UP, marker="^", s=18, zorder=3)
            ax.axhline(0, color=_NOW, linewidth=0.5)
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:+.0f}%" if v else "0%"))
            lo, hi = rates.get((name, "long"), {}), rates.get((name, "short"), {})
            ax.set_title(
                f"{name}: long {lo.get('exceedances', 0)}/{lo.get('observations', 0)} exceedances "
                f"(Kupiec p {lo.get('kupiec_p', float('nan')):.2f}), short {hi.get('exceedances', 0)} "
                f"(p {hi.get('kupiec_p', float('nan')):.2f}); expected rate {100 * (1 - st.confidence):.2g}%",
                fontsize=9, loc="left",
            )  # fmt: skip
            ax.set_ylabel("move over horizon")
            ax.grid(alpha=0.3)
        if book is not None:
            ax = axes[-1, 0]
            t = _dates(book.column("time"))
            pnl = book.column("pnl").to_numpy()
            m = book.column("margin").to_numpy()
            exc = book.column("exceed").to_numpy(zero_copy_only=False)
            ax.plot(t, pnl, color="#aab7b8", linewidth=0.6)
            ax.plot(t, -m, color=_DOWN, linewidth=1.0)
            ax.scatter(t[exc], pnl[exc], color=_DOWN, marker="v", s=18, zorder=3)
            ax.axhline(0, color=_NOW, linewidth=0.5)
            ax.yaxis.set_major_formatter(FuncFormatter(_short_money))
            r = rates.get(("book", "total"), {})
            a = rates.get(("book", "accounts"), {})
            ax.set_title(
                f"book: total P&L below −margin on {r.get('exceedances', 0)}/{r.get('observations', 0)} dates; "
                f"account-dates {a.get('exceedances', 0)}/{a.get('observations', 0)} ({bt.model} model, {bt.margin} margin + haircuts)",
                fontsize=9, loc="left",
            )  # fmt: skip
            ax.set_ylabel("USD")
            ax.grid(alpha=0.3)
        handles = [
            Line2D([], [], color="#aab7b8", linewidth=0.8, label="P&L (move) over the horizon"),
            Line2D([], [], color=_DOWN, linewidth=1.0, label="− margin (long loses below)"),
            Line2D([], [], color=_UP, linewidth=1.0, label="+ margin (short loses above)"),
            Line2D([], [], color=_DOWN, marker="v", linestyle="", label="exceedance"),
        ]
        fig.legend(handles=handles, loc="upper center", ncol=4, frameon=False, fontsize=8, bbox_to_anchor=(0.5, 0.985))
        from margin_engine.calibration.history import duration_text

        fig.suptitle(
            title or f"Backtest: {st.method.upper()} {st.measure.upper()} at {100 * st.confidence:g}%, horizon {duration_text(st.horizon)}"
            + ("" if st.apc is None else ", anti-procyclical"),
            fontsize=11, y=0.999,
        )  # fmt: skip
        fig.tight_layout(rect=(0, 0, 1, 0.95))
    return fig


def forecast_figure(fc: Any, *, title: str | None = None) -> Any:
    """Per forecast day, the distribution over paths of margin calls, liquidations and shortfall."""
    plt = pyplot()
    from matplotlib.ticker import FuncFormatter

    paths = arrow_table(fc.paths, "paths")
    days = sorted(set(paths.column("day").to_pylist()))
    with plt.rc_context({"text.parse_math": False}):
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.6), squeeze=False)
        for ax, (column, label, color) in zip(
            axes[0],
            (("margin_call", "accounts in margin call", _NOW), ("liquidatable", "accounts liquidatable or bankrupt", _DOWN),
             ("shortfall", "shortfall (USD)", _LINE)),
        ):  # fmt: skip
            qs = []
            for day in days:
                v = paths.filter(pc.equal(paths.column("day"), day)).column(column).to_numpy().astype(np.float64)
                qs.append(np.quantile(v, [0.01, 0.05, 0.5, 0.95, 0.99]))
            q = np.array(qs)
            ax.fill_between(days, q[:, 0], q[:, 4], color=color, alpha=0.15, linewidth=0, label="1–99%")
            ax.fill_between(days, q[:, 1], q[:, 3], color=color, alpha=0.3, linewidth=0, label="5–95%")
            ax.plot(days, q[:, 2], color=color, linewidth=1.4, label="median")
            ax.set_xlabel("day")
            ax.set_title(label, fontsize=9, loc="left")
            ax.grid(alpha=0.3)
            if column == "shortfall":
                ax.yaxis.set_major_formatter(FuncFormatter(_short_money))
        axes[0, 0].legend(fontsize=7, frameon=False)
        fig.suptitle(title or f"Margin forecast: {fc.paths_count:,} paths × {len(days)} days ({fc.method.upper()})", fontsize=11)
        fig.tight_layout(rect=(0, 0, 1, 0.93))
    return fig
