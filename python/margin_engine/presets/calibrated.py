"""The `exchange` preset's scan ranges, calibrated on real prices (docs/calibration.md,
"Calibrated presets").

`presets/data/exchange_scan_ranges.json` holds, per underlying, the `price_range` that
`me.calibrate` measures with `SETTINGS` on the daily price slice shipped with the tests
(`tests/data/prices/daily_btc_eth_usdc.parquet`: Yahoo Finance daily closes in USD, BTC and ETH to
2025-02-10; provenance in that folder's README), and the file records the source, the method, the
horizon, the confidence and the last candle. `Methodology.preset("exchange")` gives each of these
underlyings that scan range (its other risk parameters still come from the book's risk_params);
an underlying without a price history keeps its risk_params row's range.

Regenerate the file (after changing `SETTINGS` or the data):

    python -m margin_engine.presets.calibrated tests/data/prices/daily_btc_eth_usdc.parquet

`tests/test_calibrated_presets.py` recomputes it from the same data and fails if the file has
drifted from what `me.calibrate` measures.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Any

DATA = Path(__file__).with_name("data") / "exchange_scan_ranges.json"

SYMBOLS = ("BTC", "ETH")
"""The generated book's underlyings that have a daily history in the shipped slice."""

SETTINGS: dict[str, Any] = {
    "horizon": "1d",
    "confidence": 0.99,
    "method": "fhs",
    "measure": "var",
    "decay": 0.94,
    "lookback": "4y",
    "anti_procyclicality": None,
}
"""`me.calibrate` arguments of the preset: one day (a venue's time to close a book out with
margin), 99%, filtered historical simulation over 4 years, no anti-procyclicality add-on."""

SOURCE = ("tests/data/prices/daily_btc_eth_usdc.parquet: Yahoo Finance <COIN>-USD daily candles via "
          "yfinance, as committed in budydeveloper/crypto-dataset 7791d62448ab (2025-02-11); "
          "provenance in tests/data/prices/README.md")


def calibrate_scan_ranges(prices: Any) -> dict[str, Any]:
    """The file's content measured on `prices` (any table `me.calibrate` reads)."""
    from margin_engine.calibration import calibrate
    from margin_engine.calibration.history import iso, read_history

    cal = calibrate(prices, symbols=list(SYMBOLS), **SETTINGS)
    rp = cal.risk_params.to_pydict() if hasattr(cal.risk_params, "to_pydict") else dict(cal.risk_params)
    ranges = {u: float(r) for u, r in zip(rp["underlying"], rp["price_range"], strict=True)}
    history = read_history(prices, symbols=list(SYMBOLS))
    return {
        "source": SOURCE,
        "method": f"margin_engine.calibrate(prices, symbols={list(SYMBOLS)}, **settings), column price_range",
        "settings": SETTINGS,
        "last_candle": {s: iso(int(history[s].times[-1])) for s in SYMBOLS},
        "price_range": dict(sorted(ranges.items())),
    }


@lru_cache(maxsize=1)
def _load() -> dict[str, Any]:
    with open(DATA, encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


def provenance() -> dict[str, Any]:
    """The stored file: `source`, `method`, `settings`, `last_candle`, `price_range`."""
    return json.loads(json.dumps(_load()))


def exchange_scan_ranges() -> dict[str, float]:
    """`{underlying: price_range}` of the `exchange` preset, as stored."""
    return {str(u): float(r) for u, r in _load()["price_range"].items()}


def calibrated_risk_params() -> Any:
    """A `risk_params` table giving each calibrated underlying its calibrated `price_range` (the
    other columns absent: the defaults): v1's portfolio model with calibrated scan ranges."""
    import pyarrow as pa

    ranges = exchange_scan_ranges()
    return pa.table({"underlying": list(ranges), "price_range": list(ranges.values())})


def main(argv: list[str] | None = None) -> int:
    """Recalibrates from a price file and rewrites `DATA` (atomically)."""
    import pyarrow.parquet as pq

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m margin_engine.presets.calibrated PRICES.parquet", file=sys.stderr)
        return 2
    data = calibrate_scan_ranges(pq.read_table(args[0]))
    fd, tmp = tempfile.mkstemp(dir=DATA.parent, suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, DATA)
    print(f"wrote {DATA}: " + ", ".join(f"{u} {r:.4%}" for u, r in data["price_range"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
