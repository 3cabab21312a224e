"""The `exchange` preset's scan ranges are a calibration on real prices (docs/calibration.md,
"Calibrated presets"): the stored numbers equal what `me.calibrate` measures on the shipped
slice today, so they cannot drift from the data, and the preset uses them."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import margin_engine as me
from margin_engine.methodology import Portfolio
from margin_engine.methodology_params import exchange_methodology
from margin_engine.presets import calibrated
from margin_engine.reference._tables import DEFAULT_RISK_PARAMS, RiskParams

PRICES = Path(__file__).parent / "data" / "prices" / "daily_btc_eth_usdc.parquet"


def test_stored_scan_ranges_equal_a_recalibration_on_the_shipped_prices():
    stored = json.loads(calibrated.DATA.read_text(encoding="utf-8"))
    again = calibrated.calibrate_scan_ranges(pq.read_table(PRICES))
    assert stored == again  # provenance (source, method, settings, last candle) and every range
    assert stored["settings"]["horizon"] == "1d" and stored["settings"]["confidence"] == 0.99
    assert set(stored["price_range"]) == set(calibrated.SYMBOLS)
    # the same numbers straight from me.calibrate, not through the module
    cal = me.calibrate(pq.read_table(PRICES), symbols=["BTC", "ETH"], horizon="1d", confidence=0.99, method="fhs")
    rp = cal.risk_params.to_pydict()
    assert dict(zip(rp["underlying"], rp["price_range"], strict=True)) == calibrated.exchange_scan_ranges()


def test_exchange_preset_uses_the_calibrated_ranges_and_the_recipe_the_books_rows():
    ranges = calibrated.exchange_scan_ranges()
    assert 0.03 < ranges["BTC"] < ranges["ETH"] < DEFAULT_RISK_PARAMS.price_range  # the shipped data's order
    risk = pa.table({"underlying": ["BTC", "SOL"], "price_range": [0.2, 0.25], "vol_up": [0.6, 0.7]})
    resolved, _ = me.Methodology.preset("exchange").resolve(risk)
    assert resolved.by_underlying["BTC"] == exchange_methodology(RiskParams(price_range=0.2, vol_up=0.6),
                                                                 price_range=ranges["BTC"])
    assert resolved.by_underlying["ETH"] == exchange_methodology(DEFAULT_RISK_PARAMS, price_range=ranges["ETH"])
    assert resolved.by_underlying["SOL"] == exchange_methodology(RiskParams(price_range=0.25, vol_up=0.7))
    assert resolved.by_underlying["ETH"].scenarios[0].spot_move == -ranges["ETH"]
    # the bare recipe keeps reading the book's rows
    plain, _ = me.Methodology("x", portfolio=Portfolio(recipe="exchange")).resolve(risk)
    assert plain.by_underlying["BTC"] == exchange_methodology(RiskParams(price_range=0.2, vol_up=0.6))
    assert "ETH" not in plain.by_underlying


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1, float("nan"), "x"])
def test_a_bad_scan_range_argument_is_refused_naming_its_key(bad):
    with pytest.raises(me.MarginInputError) as e:
        me.Methodology.preset("exchange", underlyings={"BTC": {"price_range": bad}})
    assert e.value.table == "methodology" and e.value.column == "portfolio.underlyings.BTC.price_range"


def test_regenerate_writes_the_same_file(tmp_path, monkeypatch):
    target = tmp_path / "exchange_scan_ranges.json"
    monkeypatch.setattr(calibrated, "DATA", target)
    assert calibrated.main([str(PRICES)]) == 0
    assert json.loads(target.read_text()) == json.loads((Path(calibrated.__file__).with_name("data")
                                                        / "exchange_scan_ranges.json").read_text())


def test_demo_prints_calibrated_against_default_ranges_and_standard(capsys):
    """The demo's comparison rows equal the engine's totals for each variant on the same book."""
    from margin_engine import synthetic
    from margin_engine.cli import main

    assert main(["demo", "--accounts", "2000", "--seed", "3", "--quiet"]) == 0
    out = capsys.readouterr().out
    g = synthetic.generate(2000, seed=3)
    market = me.Market(g.index_prices, g.marks, g.valuation_time)
    variants = {
        "standard model": (me.Book(g.instruments, g.assets, None, g.margin_tiers), "standard"),
        "v1, default ranges": (me.Book(g.instruments, g.assets, None, g.margin_tiers), "portfolio"),
        "v1, calibrated ranges": (me.Book(g.instruments, g.assets, calibrated.calibrated_risk_params(), g.margin_tiers), "portfolio"),
        "exchange preset": (me.Book(g.instruments, g.assets, None, g.margin_tiers,
                                    methodology=me.Methodology.preset("exchange")), "portfolio"),
    }
    ims = {}
    for label, (book, model) in variants.items():
        r = me.margin(book, g.positions, g.balances, market, model=model)
        im = sum(r.column("initial_margin").to_pylist())
        liq = r.column("status").to_pylist().count("liquidatable")
        [line] = [ln for ln in out.splitlines() if ln.startswith(label)]
        assert line.split()[-4] == f"${im:,.0f}" and line.split()[-2] == f"{liq:,}", line
        ims[label] = im
    # calibrated ranges (below ±15%) ask less than v1's defaults on this book
    assert ims["v1, calibrated ranges"] < ims["v1, default ranges"]
    assert "BTC ±6.27%" in out and "ETH ±9.35%" in out
