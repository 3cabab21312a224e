"""The liquidation map chart (margin_engine.charts), issue 12 "charts a risk manager reads without
help": a legend, axis labels with units, a y-scale not set by the already-liquidatable bar
(level 0), the underlyings left out named in the figure, and a missing matplotlib naming the extra."""

from __future__ import annotations

import sys

import pyarrow as pa
import pyarrow.compute as pc
import pytest

import margin_engine as me
from margin_engine import synthetic

pytest.importorskip("matplotlib")

from margin_engine.charts import liquidation_map_figure, liquidation_map_png, money  # noqa: E402


def _map(spots: dict[str, float], level0: dict[str, float], bars: dict[str, dict[int, float]]) -> pa.Table:
    """A map table shaped like me.liquidation_map's: 201 levels per underlying."""
    rows = []
    for u, s in spots.items():
        cum_down = cum_up = level0.get(u, 0.0)
        acc_down = acc_up = 1 if level0.get(u, 0.0) else 0
        per_level = {lv: bars.get(u, {}).get(lv, 0.0) for lv in range(-100, 101)}
        cum = {0: (cum_down, acc_down)}
        for lv in range(1, 101):
            cum_up += per_level[lv]
            acc_up += 1 if per_level[lv] else 0
            cum[lv] = (cum_up, acc_up)
            cum_down += per_level[-lv]
            acc_down += 1 if per_level[-lv] else 0
            cum[-lv] = (cum_down, acc_down)
        for lv in range(-100, 101):
            n = level0.get(u, 0.0) if lv == 0 else per_level[lv]
            rows.append(
                {
                    "underlying": u,
                    "level": lv,
                    "move": 0.005 * lv,
                    "price": s * (1 + 0.005 * lv),
                    "accounts": 1 if n else 0,
                    "notional": n,
                    "collateral": 0.0,
                    "cumulative_accounts": cum[lv][1],
                    "cumulative_notional": cum[lv][0],
                }
            )
    return pa.Table.from_pylist(rows)


def _texts(fig) -> str:
    parts = [t.get_text() for t in fig.texts]
    for ax in fig.axes:
        parts += [t.get_text() for t in ax.texts] + [ax.get_title(loc="left"), ax.get_xlabel(), ax.get_ylabel()]
        parts += [c.get_xlabel() for c in ax.child_axes]  # the top axis: the index price
    return "\n".join(parts)


def test_issue12_map_has_a_legend_and_axis_labels_with_units():
    """Finding: the liquidation map had no legend and no units on its axes."""
    fig = liquidation_map_figure(_map({"BTC": 90000.0}, {}, {"BTC": {-10: 5e6, 20: 2e6}}))
    labels = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert "first liquidatable on a fall" in labels and "first liquidatable on a rise" in labels
    assert any("cumulative" in s for s in labels) and "current index price" in labels
    main = fig.axes[0]
    assert "(%)" in main.get_xlabel() and "BTC" in main.get_xlabel()
    assert "(USD)" in main.get_ylabel()
    everything = _texts(fig)
    assert "BTC index price (USD)" in everything  # the top axis: the price in the quote currency
    assert "cumulative notional (USD)" in everything


def test_issue12_map_scale_is_not_set_by_the_already_liquidatable_bar():
    """Finding: one huge level-0 bar (accounts liquidatable already) flattened every other bar."""
    fig = liquidation_map_figure(_map({"BTC": 90000.0}, {"BTC": 1e12}, {"BTC": {-10: 5e6, 20: 2e6}}))
    main = fig.axes[0]
    low, high = main.get_ylim()
    assert 5e6 <= high < 1e7  # scaled to the largest bar off level 0, not to 1e12
    heights = [p.get_height() for p in main.patches]
    assert max(heights) == 5e6 and 1e12 not in heights
    assert f"already liquidatable: 1 account, {money(1e12)} notional" in _texts(fig)  # stated instead


def test_issue12_map_names_the_underlyings_it_left_out():
    """Finding: the map drew the top N underlyings and did not say which ones it left out."""
    spots = {"AAA": 10.0, "BBB": 20.0, "CCC": 30.0, "DDD": 40.0}
    bars = {"AAA": {-4: 1e6}, "BBB": {-4: 3e6}, "CCC": {6: 2e6}}  # DDD: nothing at risk
    fig = liquidation_map_figure(_map(spots, {}, bars), max_underlyings=2)
    titles = [ax.get_title(loc="left") for ax in fig.axes if ax.get_title(loc="left")]
    assert [t.split()[0] for t in titles] == ["BBB", "CCC"]  # most notional at risk first
    foot = "\n".join(t.get_text() for t in fig.texts)
    assert "Not drawn (1 with less notional at risk): AAA $1.00M" in foot
    assert "No account liquidatable within ±50%: DDD" in foot
    assert fig.left_out == ["AAA", "DDD"]


def test_map_png_of_an_engine_map(tmp_path):
    g = synthetic.generate(1500, seed=3)
    book = me.Book(g.instruments, g.assets, None, g.margin_tiers)
    market = me.Market(g.index_prices, g.marks, g.valuation_time)
    lmap = me.liquidation_map(book, g.positions, g.balances, market)
    out = liquidation_map_png(lmap, tmp_path / "map.png", max_underlyings=4)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    fig = liquidation_map_figure(lmap, max_underlyings=4)
    n_under = len(set(lmap.column("underlying").to_pylist()))
    assert len(fig.left_out) == n_under - 4
    level0 = lmap.filter(pc.equal(lmap.column("level"), 0))
    for ax in fig.axes:
        title = ax.get_title(loc="left")
        if not title:
            continue
        u = title.split()[0]
        n0 = level0.filter(pc.equal(level0.column("underlying"), u)).column("notional")[0].as_py()
        if n0:
            assert money(n0) in _texts(fig)


def test_map_bad_input_names_the_column():
    with pytest.raises(me.MarginInputError, match="liquidation_map.cumulative_notional"):
        liquidation_map_figure(pa.table({"underlying": ["BTC"], "level": [0], "price": [1.0], "accounts": [0],
                                         "notional": [0.0], "cumulative_accounts": [0]}))
    with pytest.raises(me.MarginInputError, match="max_underlyings"):
        liquidation_map_figure(_map({"BTC": 1.0}, {}, {}), max_underlyings=0)


def test_issue12_missing_matplotlib_names_the_plot_extra(monkeypatch, tmp_path):
    """Finding: a missing matplotlib must raise an ImportError naming `margin-engine[plot]`."""
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"pip install 'margin-engine\[plot\]'"):
        liquidation_map_png(_map({"BTC": 1.0}, {}, {}), tmp_path / "x.png")


def test_money_formats_usd_amounts():
    assert [money(x) for x in (0.0, 950.0, 9999.0, 21994.87, 349797.5, 2.5e6, -3.25e9)] == [
        "$0", "$950", "$9,999", "$22.0k", "$349.8k", "$2.50M", "−$3.25B"]
    assert money(float("nan")) == "–"
