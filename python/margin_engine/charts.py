"""Charts a risk manager reads without help (matplotlib, an optional extra:
``pip install 'margin-engine[plot]'``).

:func:`liquidation_map_figure` / :func:`liquidation_map_png` draw the table of
:func:`margin_engine.liquidation_map`: one panel per underlying, the move of that underlying alone
(in %, the index price in the quote currency on the top axis), bars of the notional (USD) of the
accounts that first become liquidatable at each 0.5% step, and the cumulative notional from the
current price outward. Accounts liquidatable already (the map's level 0) are written in each panel,
not drawn as a bar, so that they never set the scale; underlyings not drawn are named under the
panels.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from margin_engine._inputs import arrow_table, input_error

__all__ = ["liquidation_map_figure", "liquidation_map_png", "pyplot"]

PLOT_EXTRA = "pip install 'margin-engine[plot]'"
_MAP_COLUMNS = ("underlying", "level", "price", "accounts", "notional", "cumulative_accounts", "cumulative_notional")
_DOWN, _UP, _LINE, _NOW = "#c0392b", "#1e8449", "#1c2833", "#566573"


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend; an :class:`ImportError` naming the
    extra to install when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError(f"charts need matplotlib (>= 3.7): {PLOT_EXTRA}") from e
    return plt


def money(x: float) -> str:
    """``$1.23M``-style USD amounts (B, M, k; whole dollars below $10k)."""
    if x is None or not math.isfinite(x):
        return "–"
    sign, a = ("−" if x < 0 else ""), abs(x)
    for threshold, scale, suffix, digits in ((1e9, 1e9, "B", 2), (1e6, 1e6, "M", 2), (1e4, 1e3, "k", 1)):
        if a >= threshold:
            return f"{sign}${a / scale:,.{digits}f}{suffix}"
    return f"{sign}${a:,.0f}"


def _short_money(x: float, _pos: Any = None) -> str:
    a = abs(x)
    if a >= 1e9:
        return f"${x / 1e9:,.3g}B"
    if a >= 1e6:
        return f"${x / 1e6:,.3g}M"
    if a >= 1e3:
        return f"${x / 1e3:,.3g}k"
    return f"${x:,.0f}"


def _checked_map(liquidation_map: Any) -> pa.Table:
    t = arrow_table(liquidation_map, "liquidation_map")
    missing = [c for c in _MAP_COLUMNS if c not in t.column_names]
    if missing:
        raise input_error(
            "liquidation_map",
            missing[0],
            f"missing column (expected the table of margin_engine.liquidation_map; have {', '.join(t.column_names)})",
        )
    return t


def _selection(t: pa.Table, max_underlyings: int) -> tuple[list[str], list[tuple[str, float]], list[str]]:
    """(drawn, left out with their notional at risk, underlyings with nothing at risk), the drawn
    ones by notional that a move within the grid makes liquidatable (level 0 as the tie-break)."""
    moved = t.filter(pc.not_equal(t.column("level"), 0)).group_by("underlying").aggregate([("notional", "sum")])
    now = t.filter(pc.equal(t.column("level"), 0)).group_by("underlying").aggregate([("notional", "sum")])
    at_risk = dict(zip(moved.column("underlying").to_pylist(), moved.column("notional_sum").to_pylist()))
    already = dict(zip(now.column("underlying").to_pylist(), now.column("notional_sum").to_pylist()))
    names = sorted(set(t.column("underlying").to_pylist()))
    ranked = sorted(names, key=lambda u: (-(at_risk.get(u) or 0.0), -(already.get(u) or 0.0), u))
    risky = [u for u in ranked if (at_risk.get(u) or 0.0) > 0 or (already.get(u) or 0.0) > 0]
    quiet = [u for u in names if u not in risky]
    drawn = risky[:max_underlyings] or names[:1]
    left_out = [(u, float(at_risk.get(u) or 0.0)) for u in risky[max_underlyings:]]
    return drawn, left_out, [u for u in quiet if u not in drawn]


def _names(items: list[str], limit: int = 12) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")


def liquidation_map_figure(
    liquidation_map: Any,
    *,
    max_underlyings: int = 6,
    currency: str = "USD",
    title: str | None = None,
) -> Any:
    """The liquidation map as a matplotlib Figure (see :func:`liquidation_map_png`, which
    reads the same columns); ``fig.left_out`` lists the underlyings of the map not drawn."""
    plt = pyplot()
    with plt.rc_context({"text.parse_math": False}):  # "$1.2M" is money, not mathtext
        return _map_figure(plt, liquidation_map, max_underlyings, currency, title)


def _map_figure(plt: Any, liquidation_map: Any, max_underlyings: int, currency: str, title: str | None) -> Any:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.ticker import FuncFormatter

    t = _checked_map(liquidation_map)
    if isinstance(max_underlyings, bool) or not isinstance(max_underlyings, int) or max_underlyings < 1:
        raise input_error("arguments", "max_underlyings", f"must be an integer >= 1, got {max_underlyings!r}")
    if t.num_rows == 0:
        raise input_error("liquidation_map", "underlying", "the map has no rows (a book without underlyings)")
    drawn, left_out, quiet = _selection(t, max_underlyings)
    cols = 2 if len(drawn) > 1 else 1
    rows = (len(drawn) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.4 * cols, 3.3 * rows + 1.0), squeeze=False)
    fmt = FuncFormatter(_short_money)
    for ax, name in zip(axes.flat, drawn):
        u = t.filter(pc.equal(t.column("underlying"), name)).sort_by("level")
        level = u.column("level").to_pylist()
        price = u.column("price").to_pylist()
        notional = [v or 0.0 for v in u.column("notional").to_pylist()]
        accounts = [v or 0 for v in u.column("accounts").to_pylist()]
        cum = [v or 0.0 for v in u.column("cumulative_notional").to_pylist()]
        cum_acc = [v or 0 for v in u.column("cumulative_accounts").to_pylist()]
        k0 = level.index(0)
        spot = price[k0]
        move = [100.0 * (p / spot - 1.0) for p in price] if spot else [0.5 * lv for lv in level]
        step = (move[-1] - move[0]) / max(len(move) - 1, 1)
        now_n, now_a = notional[k0], accounts[k0]
        # bars: the notional first liquidatable at each step, level 0 left out (written instead)
        xs = [m for m, lv in zip(move, level) if lv != 0]
        ys = [n for n, lv in zip(notional, level) if lv != 0]
        ax.bar(xs, ys, width=0.9 * step, color=[_DOWN if m < 0 else _UP for m in xs], linewidth=0)
        ax.axvline(0.0, color=_NOW, linestyle="--", linewidth=1)
        ax.set_xlim(move[0] - step, move[-1] + step)
        ax.set_ylim(0, max(max(ys, default=0.0), 1.0) * 1.4)  # headroom for the text box
        ax.yaxis.set_major_formatter(fmt)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:+.0f}%" if v else "0%"))
        ax.set_xlabel(f"move of the {name} index alone (%)")
        ax.set_ylabel("notional first liquidatable\nper 0.5% step (USD)")
        ax.grid(alpha=0.3)
        if spot:
            top = ax.secondary_xaxis("top", functions=(lambda m, s=spot: s * (1 + m / 100.0), lambda p, s=spot: 100.0 * (p / s - 1)))
            top.set_xlabel(f"{name} index price ({currency})", fontsize=8)
            top.tick_params(labelsize=7)
            top.xaxis.set_major_formatter(FuncFormatter(lambda p, _: f"{p:,.6g}"))
        # the cumulative line: what a move of this size adds to the accounts liquidatable already
        twin = ax.twinx()
        twin.plot(move[: k0 + 1], [c - now_n for c in cum[: k0 + 1]], color=_LINE, linewidth=1.4)
        twin.plot(move[k0:], [c - now_n for c in cum[k0:]], color=_LINE, linewidth=1.4)
        twin.set_ylim(bottom=0, top=max(max(cum, default=0.0) - now_n, 1.0) * 1.4)
        twin.yaxis.set_major_formatter(fmt)
        twin.set_ylabel("cumulative notional (USD)", fontsize=8)
        down_a, up_a = cum_acc[0] - now_a, cum_acc[-1] - now_a
        ax.set_title(f"{name}   index {spot:,.6g} {currency}", fontsize=10, loc="left")
        already = (
            f"already liquidatable: {now_a:,} account{'s' if now_a != 1 else ''}, {money(now_n)} notional (not in the bars)"
            if now_a or now_n
            else "no account liquidatable already"
        )
        reach = f"a fall to −50% adds {down_a:,} accounts ({money(cum[0] - now_n)}); a rise to +50% adds {up_a:,} ({money(cum[-1] - now_n)})"
        ax.text(0.01, 0.97, already + "\n" + reach, transform=ax.transAxes, va="top", ha="left", fontsize=7,
                bbox={"boxstyle": "round,pad=0.3", "facecolor": "white", "edgecolor": "#d5d8dc", "alpha": 0.9})
    for ax in list(axes.flat)[len(drawn):]:
        ax.axis("off")
    fig.suptitle(title or "Liquidation map: notional that becomes liquidatable as one underlying moves (others fixed)",
                 fontsize=11)
    handles = [
        Patch(color=_DOWN, label="first liquidatable on a fall"),
        Patch(color=_UP, label="first liquidatable on a rise"),
        Line2D([], [], color=_LINE, linewidth=1.4, label="cumulative from the current price (right axis)"),
        Line2D([], [], color=_NOW, linestyle="--", linewidth=1, label="current index price"),
    ]
    fig.legend(handles=handles, loc="upper center", ncol=4, frameon=False, fontsize=8, bbox_to_anchor=(0.5, 0.955))
    foot = ["Notional: Σ |quantity| × multiplier × mark of each account's positions in that underlying, USD at current marks."]
    if left_out:
        foot.append(
            f"Not drawn ({len(left_out)} with less notional at risk): "
            + _names([f"{u} {money(v)}" for u, v in left_out])
        )
    if quiet:
        foot.append(f"No account liquidatable within ±50%: {_names(quiet)}.")
    fig.text(0.01, 0.01, "\n".join(foot), fontsize=7.5, color="#34495e", va="bottom", ha="left")
    fig.tight_layout(rect=(0, 0.025 + 0.022 * len(foot), 1, 0.92))
    fig.left_out = [u for u, _ in left_out] + quiet  # underlyings of the map not drawn
    return fig


def liquidation_map_png(
    liquidation_map: Any,
    path: str | Path,
    *,
    max_underlyings: int = 6,
    currency: str = "USD",
    title: str | None = None,
    dpi: int = 100,
) -> Path:
    """Draws the table of :func:`margin_engine.liquidation_map` to a PNG at ``path`` and returns
    the path.

    Reads the map's columns ``underlying, level, price, accounts, notional, cumulative_accounts,
    cumulative_notional``. One panel per underlying, those with the most notional made liquidatable
    by a move within ±50% first, at most ``max_underlyings`` (the others are named under the
    panels). x: the move of that underlying alone in % (top axis: its index price in ``currency``);
    bars: notional (USD) of the accounts that first become liquidatable at each 0.5% step, red on a
    fall, green on a rise; line (right axis): the cumulative notional from the current price
    outward. The accounts liquidatable already (level 0) are stated in each panel, not drawn.
    Needs matplotlib (``pip install 'margin-engine[plot]'``).
    """
    plt = pyplot()
    fig = liquidation_map_figure(liquidation_map, max_underlyings=max_underlyings, currency=currency, title=title)
    out = Path(path)
    try:
        fig.savefig(out, dpi=dpi)
    finally:
        plt.close(fig)
    return out
