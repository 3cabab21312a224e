"""margin-engine: margin, Greeks and liquidation for derivatives accounts at exchange scale.

A Rust core (``margin_engine._core``) does the work over Arrow data; this package is its typed
Python face. ``margin_engine.reference`` holds the same models in plain Python, for reading and
as the oracle of the differential tests. See ``docs/`` and the methodology for the rules.
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
    black76,
    greeks,
    liquidation_distance,
    liquidation_map,
    liquidation_plan,
    liquidation_scan,
    margin,
    optimal_hedge,
    risk_arrays,
)
from margin_engine.optimize import CollateralAllocation, RebalancePlan, allocate_collateral, rebalance
from margin_engine.report import EfficiencyReport, efficiency_report, write_html
from margin_engine.streaming import margin_batches

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
    "MarginInputError",
    "Market",
    "Model",
    "__version__",
    "black76",
    "greeks",
    "liquidation_distance",
    "liquidation_map",
    "liquidation_plan",
    "liquidation_scan",
    "margin",
    "margin_batches",
    "optimal_hedge",
    "risk_arrays",
]
