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
