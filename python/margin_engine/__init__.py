"""margin-engine: margin, Greeks and liquidation for derivatives accounts at exchange scale.

A Rust core (``margin_engine._core``) does the work over Arrow data; this package is its typed
Python face (``margin_engine.api``). ``margin_engine.reference`` holds the same models in plain
Python, for reading and as the oracle of the differential tests.

Every public function's docstring lists the columns it reads and returns, and :class:`Book` and
:class:`Market` describe every column of the book and the market (``help(margin_engine.margin)``,
``help(margin_engine.Book)``). The rules behind the numbers are in ``docs/methodology.md`` of the
project's repository; input errors and their fixes in ``docs/errors.md``.
"""

from margin_engine._core import MarginInputError, __version__
from margin_engine.api import (
    AccountMargin,
    WhatIf,
    what_if,
    Black76,
    Book,
    LiquidationPlan,
    Market,
    Model,
    Output,
    black76,
    greeks,
    isolated_margin,
    liquidation_distance,
    liquidation_map,
    liquidation_plan,
    liquidation_prices,
    liquidation_scan,
    margin,
    optimal_hedge,
    risk_arrays,
    scenario_losses,
)
from margin_engine.methodology import Methodology
from margin_engine.live import LiveBook
from margin_engine.optimize import CollateralAllocation, RebalancePlan, allocate_collateral, rebalance
from margin_engine.report import EfficiencyReport, efficiency_report, write_html
from margin_engine.streaming import margin_batches
from margin_engine.calibration import AntiProcyclicality, Backtest, Calibration, Forecast, backtest, calibrate, forecast_margin
from margin_engine import vol  # input helpers: me.vol.svi_implied_vol

__all__ = [
    "AccountMargin",
    "WhatIf",
    "what_if",
    "CollateralAllocation",
    "EfficiencyReport",
    "RebalancePlan",
    "allocate_collateral",
    "efficiency_report",
    "rebalance",
    "write_html",
    "Black76",
    "Book",
    "LiquidationPlan",
    "LiveBook",
    "MarginInputError",
    "Methodology",
    "Market",
    "Model",
    "Output",
    "__version__",
    "black76",
    "greeks",
    "isolated_margin",
    "liquidation_distance",
    "liquidation_map",
    "liquidation_plan",
    "liquidation_prices",
    "liquidation_scan",
    "margin",
    "margin_batches",
    "optimal_hedge",
    "risk_arrays",
    "scenario_losses",
    "vol",
    "AntiProcyclicality", "Backtest", "Calibration", "Forecast", "backtest", "calibrate", "forecast_margin",
]
