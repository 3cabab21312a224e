"""Calibration, backtesting and predictive margin (``docs/calibration.md``).

- :func:`calibrate`: portfolio-model ``risk_params`` and collateral ``assets`` from a price
  history (EWMA, filtered historical simulation, GARCH), with anti-procyclicality options.
- :func:`backtest`: the calibrated margin against the P&L over the horizon at every date, per
  underlying and for a book margined by the engine; Kupiec and Christoffersen tests; a chart.
- :func:`forecast_margin`: simulated paths of the underlyings over the next days, the book
  margined by the engine along each, the distribution of margin calls, liquidations and
  shortfall, and a forecast-driven :func:`margin_engine.rebalance`.

All of it is numpy and the standard library (scipy for the Student-t of the EWMA haircuts; ``arch`` to fit GARCH) and is its own
reference: the tests check it against plain loops and hand-computed values. The engine's margin
calls are the engine's (``me.margin``, ``me.liquidation_scan``).
"""

from margin_engine.calibration.calibrate import AntiProcyclicality, Calibration, calibrate
from margin_engine.calibration.backtest import Backtest, backtest, christoffersen, kupiec
from margin_engine.calibration.forecast import Forecast, forecast_margin
from margin_engine.calibration.history import History, read_history

__all__ = [
    "AntiProcyclicality", "Backtest", "Calibration", "Forecast", "History",
    "backtest", "calibrate", "christoffersen", "forecast_margin", "kupiec", "read_history",
]
