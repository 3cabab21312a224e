"""The capital-efficiency report (margin_engine.report): its numbers agree with the engine and
with each other, and its HTML page has every section and renders in a headless browser."""

from __future__ import annotations

import html.parser
import math
import shutil
import subprocess

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import margin_engine as me
from margin_engine import synthetic
from margin_engine.report import QUANTILES, SAVING_BINS, TOP_HEDGES, efficiency_report, render_html, write_html


@pytest.fixture(scope="module")
def engine():
    g = synthetic.generate(5000, seed=7)
    book = me.Book(g.instruments, g.assets, None, g.margin_tiers)
    market = me.Market(g.index_prices, g.marks, g.valuation_time)
    return g, book, market


@pytest.fixture(scope="module")
def margins(engine):
    g, book, market = engine
    return {m: me.margin(book, g.positions, g.balances, market, model=m) for m in ("standard", "portfolio")}


@pytest.fixture(scope="module")
def report(engine):
    g, book, market = engine
    return efficiency_report(book, g.positions, g.balances, market)


def _np(t, c):
    return np.asarray(t.column(c).to_numpy(zero_copy_only=False), dtype=float)


def test_capital_freed_is_the_difference_of_total_initial_margins(report, margins):
    im_std = _np(margins["standard"], "initial_margin").sum()
    im_port = _np(margins["portfolio"], "initial_margin").sum()
    assert report.im_standard == pytest.approx(im_std, rel=1e-12)
    assert report.im_portfolio == pytest.approx(im_port, rel=1e-12)
    assert report.capital_freed == pytest.approx(im_std - im_port, rel=1e-12)
    assert report.capital_freed_pct == pytest.approx((im_std - im_port) / im_std, rel=1e-12)
    mm_freed = (
        _np(margins["standard"], "maintenance_margin").sum() - _np(margins["portfolio"], "maintenance_margin").sum()
    )
    assert report.mm_freed == pytest.approx(mm_freed, rel=1e-12)
    s = report.summary.to_pydict()
    assert s["model"] == ["standard", "portfolio"]
    assert s["initial_margin"] == pytest.approx([im_std, im_port], rel=1e-12)
    assert s["accounts"] == [5000, 5000]
    for k in range(2):
        assert sum(s[f"accounts_{st}"][k] for st in ("healthy", "margin_call", "liquidatable", "bankrupt")) == 5000


def test_per_account_savings_add_up(report, margins):
    a = report.accounts
    assert a.num_rows == 5000
    assert a.column("account_id").equals(margins["standard"].column("account_id"))
    saving = _np(a, "saving")
    np.testing.assert_allclose(saving, _np(a, "im_standard") - _np(a, "im_portfolio"), rtol=0, atol=0)
    assert saving.sum() == pytest.approx(report.capital_freed, rel=1e-9)
    # histogram: every account with a standard requirement counted once, USD sums add up
    h = report.saving_histogram.to_pydict()
    has_std = _np(a, "im_standard") > 0
    assert sum(h["accounts"]) == int(has_std.sum())
    assert sum(h["saving"]) == pytest.approx(saving[has_std].sum(), rel=1e-9)
    assert h["bin_low"] == list(SAVING_BINS[:-1]) and h["bin_high"] == list(SAVING_BINS[1:])
    pct = _np(a, "saving_pct")[has_std]
    assert (pct <= 1.0 + 1e-12).all()  # portfolio margin is never negative
    for lo, hi, n in zip(h["bin_low"], h["bin_high"], h["accounts"]):
        inside = (pct >= lo) & ((pct < hi) | (hi == SAVING_BINS[-1]))
        assert int(inside.sum()) == n
    # quantiles: monotone, ends are the extremes
    q = report.saving_quantiles.to_pydict()
    assert q["quantile"] == list(QUANTILES)
    assert np.all(np.diff(q["saving"]) >= 0) and np.all(np.diff(q["saving_pct"]) >= 0)
    margined = (_np(a, "im_standard") > 0) | (_np(a, "im_portfolio") > 0)
    assert q["saving"][0] == saving[margined].min() and q["saving"][-1] == saving[margined].max()
    assert q["saving_pct"][0] == pct.min() and q["saving_pct"][-1] == pct.max()


def test_idle_collateral_is_free_collateral_of_healthy_accounts(report, margins):
    idle = report.idle.to_pydict()
    dist = report.idle_distribution
    for k, model in enumerate(("standard", "portfolio")):
        r = margins[model]
        healthy = r.filter(pc.equal(r.column("status"), "healthy"))
        free = _np(healthy, "free_collateral")
        assert (free >= 0).all()
        assert idle["model"][k] == model
        assert idle["healthy_accounts"][k] == healthy.num_rows
        assert idle["idle_total"][k] == pytest.approx(free.sum(), rel=1e-12)
        assert idle["idle_p50"][k] == pytest.approx(np.median(free), rel=1e-12)
        assert idle["idle_max"][k] == free.max()
        assert 0 < idle["top1pct_share"][k] <= idle["top10pct_share"][k] <= 1
        d = dist.filter(pc.equal(dist.column("model"), model))
        assert sum(d.column("accounts").to_pylist()) == healthy.num_rows
        assert sum(d.column("idle").to_pylist()) == pytest.approx(free.sum(), rel=1e-9)
    s = report.summary.to_pydict()
    assert s["idle_collateral"] == pytest.approx(idle["idle_total"], rel=1e-12)


def test_top_hedges_are_the_largest_margin_reductions(engine, report):
    if not hasattr(me, "optimal_hedge"):
        pytest.skip("margin_engine.optimal_hedge is not built yet")
    g, book, market = engine
    top = report.top_hedges
    assert 0 < top.num_rows <= TOP_HEDGES
    freed = _np(top, "margin_freed")
    np.testing.assert_allclose(freed, _np(top, "margin_before") - _np(top, "margin_after"), rtol=0, atol=0)
    assert (np.diff(freed) <= 0).all() and (freed > 0).all()
    # the same as ranking the engine's full answer
    assert report.hedge_instruments == sorted(report.hedge_instruments)
    assert all(h.endswith("-PERP") for h in report.hedge_instruments)
    full = me.optimal_hedge(
        book,
        g.positions,
        g.balances,
        market,
        hedge_instruments=report.hedge_instruments,
        model="portfolio",
        objective="initial",
    )
    all_freed = np.sort(_np(full, "margin_before") - _np(full, "margin_after"))[::-1]
    np.testing.assert_allclose(freed, all_freed[: top.num_rows], rtol=1e-12)
    # best single hedge per account, summed
    by_account: dict[int, float] = {}
    for a, f in zip(full.column("account_id").to_pylist(), all_freed_unsorted(full)):
        by_account[a] = max(by_account.get(a, 0.0), f)
    assert report.hedges_total_freed == pytest.approx(sum(max(v, 0.0) for v in by_account.values()), rel=1e-9)


def all_freed_unsorted(t: pa.Table) -> list[float]:
    return (_np(t, "margin_before") - _np(t, "margin_after")).tolist()


def test_hedges_can_be_skipped(engine):
    g, book, market = engine
    r = efficiency_report(book, g.positions, g.balances, market, hedge_instruments=[])
    assert r.top_hedges.num_rows == 0 and r.hedges_total_freed == 0.0
    assert any("no hedge instruments" in n for n in r.notes)
    assert "No hedge frees margin" in render_html(r)


class _Sections(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.ids: list[str] = []
        self.h2: list[str] = []
        self.tags: dict[str, int] = {}
        self.text: list[str] = []
        self._in_h2 = False
        self.external: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags[tag] = self.tags.get(tag, 0) + 1
        d = dict(attrs)
        if "id" in d and tag == "section":
            self.ids.append(d["id"])
        if tag == "h2":
            self._in_h2 = True
            self.h2.append("")
        for key in ("src", "href"):
            if key in d and not str(d[key]).startswith(("data:", "#")):
                self.external.append(d[key])
        if tag == "script":
            self.external.append("script")

    def handle_endtag(self, tag):
        if tag == "h2":
            self._in_h2 = False

    def handle_data(self, data):
        self.text.append(data)
        if self._in_h2:
            self.h2[-1] += data


@pytest.fixture(scope="module")
def page(report, tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "report.html"
    assert write_html(report, path) == path
    return path


def test_html_has_every_section(report, page):
    text = page.read_text(encoding="utf-8")
    p = _Sections()
    p.feed(text)
    p.close()
    assert p.ids == ["headline", "summary", "savings", "idle", "hedges", "stress", "liquidation", "notes"]
    assert p.h2[:6] == [
        "Margin by model", "Per-account saving", "Idle collateral", "Hedges that free the most margin",
        "Stress moves", "Liquidation",
    ]
    assert p.tags.get("table", 0) >= 5
    assert p.tags.get("svg", 0) >= 3  # margin, savings, idle (+ hedges when available)
    assert p.external == []  # self-contained
    body = " ".join(p.text)
    from margin_engine.report import _usd

    assert _usd(abs(report.capital_freed)) in body and _usd(report.im_standard) in body
    assert f"{report.accounts.num_rows:,} accounts" in body
    if report.top_hedges.num_rows:
        assert str(report.top_hedges.column("account_id")[0].as_py()) in body


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="no chromium on PATH (Debian: apt-get install chromium)")
def test_html_renders_in_headless_chromium(page, tmp_path):
    png = tmp_path / "report.png"
    cmd = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--window-size=1200,3000",
        f"--screenshot={png}",
        page.resolve().as_uri(),
    ]
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1200, 3000)
    assert len(data) > 50_000  # not a blank page


def test_report_on_a_tiny_book_without_margin():
    """Edge case: accounts with balances only (no margin anywhere)."""
    instruments = pa.table(
        {
            "instrument": ["BTC-PERP"],
            "kind": ["perpetual"],
            "underlying": ["BTC"],
            "multiplier": [1.0],
            "expiry": pa.array([None], pa.timestamp("ns", "UTC")),
            "initial_margin_rate": [0.02],
            "maintenance_margin_rate": [0.01],
        }
    )
    assets = pa.table(
        {
            "asset": ["USD"],
            "price": [1.0],
            "initial_weight": [1.0],
            "maintenance_weight": [1.0],
            "initial_liability_weight": [1.0],
            "maintenance_liability_weight": [1.0],
        }
    )
    book = me.Book(instruments, assets)
    market = me.Market(
        {"underlying": ["BTC"], "index_price": [90000.0]},
        {"instrument": ["BTC-PERP"], "mark_price": [90000.0], "implied_vol": pa.array([None], pa.float64())},
        "2026-11-25T08:00:00",
    )
    positions = pa.table(
        {
            "account_id": pa.array([], pa.uint64()),
            "instrument": pa.array([], pa.string()),
            "quantity": pa.array([], pa.float64()),
        }
    )
    balances = pa.table({"account_id": pa.array([1, 2], pa.uint64()), "asset": ["USD", "USD"], "amount": [10.0, 20.0]})
    r = efficiency_report(book, positions, balances, market)
    assert r.capital_freed == 0.0 and r.capital_freed_pct is None  # no standard IM: nothing to save from
    assert sum(r.saving_histogram.column("accounts").to_pylist()) == 0
    assert r.idle.column("idle_total").to_pylist() == [30.0, 30.0]
    text = render_html(r)
    assert "Capital efficiency report" in text


# ----------------------------------------------------------------------------------------------
# issue 12: the report shows its input, one sign convention, stress and liquidation sections,
# never a NaN, and says when it drew no charts
# ----------------------------------------------------------------------------------------------


def _body(text: str) -> str:
    p = _Sections()
    p.feed(text)
    p.close()
    return " ".join("".join(p.text).split())


def _section(text: str, section_id: str) -> str:
    start = text.index(f'<section id="{section_id}">')
    return text[start : text.index("</section>", start)]


def test_issue12_report_shows_the_valuation_time_and_the_input(engine):
    """Finding: the HTML report did not show the valuation time nor what it was made from."""
    g, book, market = engine
    r = efficiency_report(book, g.positions, g.balances, market, hedge_instruments=[], stress_moves=(),
                          source="books/demo-5k")
    assert r.valuation_time == g.valuation_time.strftime("%Y-%m-%d %H:%M:%S UTC")
    assert r.source == "books/demo-5k"
    assert r.inputs == {
        "accounts": 5000,
        "positions": g.positions.num_rows,
        "balances": g.balances.num_rows,
        "instruments": g.instruments.num_rows,
        "underlyings": len(book.underlyings),
    }
    body = _body(render_html(r))
    assert f"Valuation time {r.valuation_time}" in body
    assert "books/demo-5k" in body
    assert f"{g.positions.num_rows:,} positions" in body and f"{g.instruments.num_rows:,} instruments" in body


def test_issue12_report_says_portfolio_margin_needs_more_not_a_negative_freed(report):
    """Finding: the headline showed a red "−$X freed" when portfolio margin costs more; the page
    must use one stated sign convention and say "portfolio margin needs $X more"."""
    import dataclasses

    from margin_engine.report import _usd

    more = dataclasses.replace(report, capital_freed=-2.5e6, capital_freed_pct=-0.25)
    text = render_html(more)
    head, summary = _section(text, "headline"), _section(text, "summary")
    assert "$2.50M more" in _body(head) and "that portfolio margin needs beyond the standard model" in _body(head)
    assert "−" not in _body(head) and 'class="v bad">$2.50M' not in head
    assert "Portfolio margin needs $2.50M more initial margin" in _body(summary)
    assert "Sign convention: a saving is positive" in _body(text)
    saved = dataclasses.replace(report, capital_freed=2.5e6, capital_freed_pct=0.25)
    head = _section(render_html(saved), "headline")
    assert "$2.50M" in head and "initial margin saved by portfolio margin (25.0% of standard IM)" in _body(head)
    # the summary table says its differences in words, by the same convention
    s = report.summary.to_pydict()
    diff = s["initial_margin"][0] - s["initial_margin"][1]  # standard − portfolio = saving
    word = f"saves {_usd(diff)}" if diff > 0 else f"needs {_usd(-diff)} more"
    assert word in _body(_section(render_html(report), "summary"))
    # hedges: "freed %" is positive like "freed" (it was a negative "change")
    if report.top_hedges.num_rows:
        hedges = _body(_section(render_html(report), "hedges"))
        pct = report.top_hedges.column("margin_freed_pct")[0].as_py()
        assert f"{100 * pct:.1f}%" in hedges and pct > 0


def test_issue12_stress_section_is_the_engine_scan_under_each_move(engine, report):
    """Finding: the report had no stress section."""
    g, book, market = engine
    st = report.stress.to_pydict()
    unders = book.underlyings
    assert len(st["underlying"]) == (len(unders) + 1) * 4
    now = me.liquidation_scan(book, g.positions, g.balances, market)
    now_liq = sum(s in ("liquidatable", "bankrupt") for s in now.column("status").to_pylist())
    for k in (0, 5, len(st["underlying"]) - 1):  # a single-underlying move and the joint one
        u, m = st["underlying"][k], st["move"][k]
        stress = {x: m for x in unders} if u == "all" else {u: m}
        scan = me.liquidation_scan(book, g.positions, g.balances, market, stress=stress)
        status = scan.column("status").to_pylist()
        for name in ("healthy", "margin_call", "liquidatable", "bankrupt"):
            assert st[f"accounts_{name}"][k] == status.count(name)
        assert st["shortfall"][k] == pytest.approx(_np(scan, "shortfall").sum(), rel=1e-12)
        assert st["newly_liquidatable"][k] == status.count("liquidatable") + status.count("bankrupt") - now_liq
    body = _body(_section(render_html(report), "stress"))
    assert "all underlyings together" in body and "move −20%" in body
    assert st["underlying"][-1] == "all" and st["move"][-4:] == [-0.2, -0.1, 0.1, 0.2]


def test_issue12_liquidation_section_is_the_plan_and_the_distance(engine, report):
    """Finding: the report had no liquidation section (accounts liquidatable now, shortfall, the
    plan's totals, distance to liquidation)."""
    g, book, market = engine
    plan = me.liquidation_plan(book, g.positions, g.balances, market)
    scan = me.liquidation_scan(book, g.positions, g.balances, market, distance=True)
    n = report.liquidation_now
    status = scan.column("status").to_pylist()
    assert n["accounts_liquidatable"] == status.count("liquidatable") + status.count("bankrupt") > 0
    assert n["shortfall"] == pytest.approx(_np(scan, "shortfall").sum(), rel=1e-12)
    assert n["accounts_liquidated"] == plan.accounts.num_rows and n["positions_closed"] == plan.closes.num_rows
    for key in ("closed_notional", "deficit", "covered_by_insurance", "bad_debt"):
        assert n[key] == pytest.approx(_np(plan.accounts, key).sum(), rel=1e-12)
    assert n["liquidator_fees"] == plan.liquidator_fees and n["insurance_fund_after"] == plan.insurance_fund_after
    d = report.distance.to_pydict()
    assert sum(d["accounts"]) == 5000  # every account in exactly one bucket
    assert d["bucket"][0] == "liquidatable now" and d["accounts"][0] == n["accounts_liquidatable"]
    move = np.abs(_np(scan, "nearest_move"))
    healthy_enough = ~np.isin(np.array(status), ["liquidatable", "bankrupt"])
    assert d["accounts"][1] == int((healthy_enough & (move < 0.05)).sum())
    body = _body(_section(render_html(report), "liquidation"))
    assert "Distance to liquidation" in body and f"{plan.closes.num_rows:,}" in body


def _tiny_engine():
    instruments = pa.table({
        "instrument": ["BTC-PERP"], "kind": ["perpetual"], "underlying": ["BTC"], "multiplier": [1.0],
        "expiry": pa.array([None], pa.timestamp("ns", "UTC")), "initial_margin_rate": [0.02],
        "maintenance_margin_rate": [0.01],
    })
    assets = pa.table({"asset": ["USD"], "price": [1.0], "initial_weight": [1.0], "maintenance_weight": [1.0],
                       "initial_liability_weight": [1.0], "maintenance_liability_weight": [1.0]})
    market = me.Market({"underlying": ["BTC"], "index_price": [90000.0]},
                       {"instrument": ["BTC-PERP"], "mark_price": [90000.0],
                        "implied_vol": pa.array([None], pa.float64())}, "2026-11-25T08:00:00")
    return me.Book(instruments, assets), market


def test_issue12_report_on_an_empty_book_has_no_nan():
    """Finding: efficiency_report returned NaN on an empty book; it must be well defined (zeros for
    sums, None / null for statistics over no accounts)."""
    book, market = _tiny_engine()
    positions = pa.table({"account_id": pa.array([], pa.uint64()), "instrument": pa.array([], pa.string()),
                          "quantity": pa.array([], pa.float64())})
    balances = pa.table({"account_id": pa.array([], pa.uint64()), "asset": pa.array([], pa.string()),
                         "amount": pa.array([], pa.float64())})
    r = efficiency_report(book, positions, balances, market)
    assert r.capital_freed == 0.0 and r.capital_freed_pct is None and r.im_standard == 0.0
    for name in ("im_standard", "im_portfolio", "capital_freed", "mm_freed", "hedges_total_freed"):
        assert math.isfinite(getattr(r, name))
    assert all(math.isfinite(v) for v in r.liquidation_now.values()) and r.liquidation_now["accounts"] == 0
    for field in ("summary", "accounts", "saving_quantiles", "saving_histogram", "idle", "idle_distribution",
                  "top_hedges", "stress", "liquidation_underlyings", "distance"):
        t = getattr(r, field)
        for c in t.column_names:
            if pa.types.is_floating(t.schema.field(c).type):
                assert not pc.any(pc.is_nan(t.column(c))).as_py(), f"NaN in {field}.{c}"
    assert r.idle.column("idle_mean").to_pylist() == [None, None]  # a mean over no accounts: null
    text = render_html(r)
    import re

    assert not re.search(r"\bnan\b", _body(text), re.IGNORECASE)
    assert "0 accounts" in _body(text)


def test_issue12_write_html_says_when_it_drew_no_charts(report, tmp_path, monkeypatch):
    """Finding: without matplotlib write_html silently wrote a page without charts."""
    import sys

    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    path = tmp_path / "r.html"
    with pytest.warns(UserWarning, match=r"charts not drawn: matplotlib is not installed .*margin-engine\[plot\]"):
        write_html(report, path)
    text = path.read_text(encoding="utf-8")
    assert 'id="no-charts"' in text and "<svg" not in text
    assert "pip install 'margin-engine[plot]'" in _body(text)


def test_issue12_report_tables_as_polars(engine, report):
    """Finding: output="polars" on table-returning functions; render_html reads either."""
    pl = pytest.importorskip("polars")
    g, book, market = engine
    r = efficiency_report(book, g.positions, g.balances, market, hedge_instruments=[], output="polars")
    assert isinstance(r.summary, pl.DataFrame) and isinstance(r.stress, pl.DataFrame)
    assert r.accounts.equals(pl.from_arrow(report.accounts))
    assert "Stress moves" in render_html(r)


def test_issue12_report_options_are_keyword_only(engine):
    """Finding: options after the tables are keyword-only."""
    g, book, market = engine
    with pytest.raises(TypeError):
        efficiency_report(book, g.positions, g.balances, market, ["BTC-PERP"])
    with pytest.raises(me.MarginInputError, match="stress_moves"):
        efficiency_report(book, g.positions, g.balances, market, stress_moves=(-1.5,))
    with pytest.raises(me.MarginInputError, match="liquidation_model"):
        efficiency_report(book, g.positions, g.balances, market, liquidation_model="cross")


def test_report_sections_can_be_skipped(engine):
    g, book, market = engine
    r = efficiency_report(book, g.positions, g.balances, market, hedge_instruments=[], stress_moves=(), distance=False)
    assert r.stress.num_rows == 0 and r.distance is None
    text = render_html(r)
    assert "No stress moves were run" in text and "Not computed (distance=False)" in text
    assert r.liquidation_now["accounts_liquidated"] > 0  # the plan is still made


def test_the_page_embeds_a_backtests_chart_when_given(report, tmp_path):
    """`backtest=`: the page ends with the backtest's P&L-against-margin chart as an embedded PNG
    (decodes to a PNG of the figure's size); without it the page has no backtest section."""
    import base64
    import re
    from pathlib import Path

    import pyarrow.parquet as pq

    pytest.importorskip("matplotlib")
    prices = pq.read_table(Path(__file__).parent / "data" / "prices" / "daily_btc_eth_usdc.parquet")
    bt = me.backtest(prices=prices, symbols=["BTC"], horizon="1d", confidence=0.99, lookback="1000d")
    page = render_html(report, backtest=bt)
    found = re.findall(r'<section id="backtest">.*?<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)">', page, re.S)
    assert len(found) == 1
    png = base64.b64decode(found[0])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert 'id="backtest"' not in render_html(report)
    out = write_html(report, tmp_path / "r.html", backtest=bt)
    assert out.read_text(encoding="utf-8").count("data:image/png;base64,") == 1
