"""Charts a risk manager reads at a glance (matplotlib, an optional extra: ``pip install
margin-engine[plot]``)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc


def liquidation_map_png(liquidation_map: pa.Table, path: str | Path, max_underlyings: int = 6) -> Path:
    """Draws the liquidation map: one panel per underlying (those with the most notional at risk
    first), the price on the x axis, bars of the notional that becomes liquidatable at each price
    (red below the current price, green above), and the cumulative notional as a line."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise RuntimeError("drawing the map needs matplotlib: pip install 'margin-engine[plot]'") from e

    moved = liquidation_map.filter(pc.not_equal(liquidation_map.column("level"), 0))
    totals = moved.group_by("underlying").aggregate([("notional", "sum")]).sort_by([("notional_sum", "descending")])
    names = [n for n, v in zip(*(totals.column(c).to_pylist() for c in ("underlying", "notional_sum"))) if v > 0]
    names = names[:max_underlyings] or totals.column("underlying").to_pylist()[:1]
    cols = 2 if len(names) > 1 else 1
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(7 * cols, 3.6 * rows), squeeze=False)
    money = FuncFormatter(lambda x, _: f"${x / 1e6:,.0f}M" if abs(x) >= 1e6 else f"${x / 1e3:,.0f}k")
    for ax, name in zip(axes.flat, names):
        t = liquidation_map.filter(pc.equal(liquidation_map.column("underlying"), name)).sort_by("level")
        level = t.column("level").to_pylist()
        price = t.column("price").to_pylist()
        notional = t.column("notional").to_pylist()
        cumulative = t.column("cumulative_notional").to_pylist()
        accounts = t.column("cumulative_accounts").to_pylist()
        spot = price[level.index(0)]
        width = (price[-1] - price[0]) / len(price)
        colors = ["#c0392b" if lv < 0 else "#27ae60" if lv > 0 else "#7f8c8d" for lv in level]
        ax.bar(price, notional, width=width, color=colors, alpha=0.85, label="notional liquidatable at this price")
        ax.axvline(spot, color="black", linestyle="--", linewidth=1)
        ax.set_title(f"{name}: index {spot:,.6g}   (accounts at ±50%: {accounts[0]:,} down / {accounts[-1]:,} up)")
        ax.set_xlabel("index price")
        ax.yaxis.set_major_formatter(money)
        twin = ax.twinx()
        twin.plot(price, cumulative, color="#2c3e50", linewidth=1.5, label="cumulative from current price")
        twin.yaxis.set_major_formatter(money)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle("Liquidation map: notional that becomes liquidatable as one underlying moves (others fixed)")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out
