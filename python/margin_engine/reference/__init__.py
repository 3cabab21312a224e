"""Pure-Python reference implementation of the margin-engine methodology.

Plain Python (loops, `math`, dicts), written for reading: one small function per rule of
`docs/methodology.md`, each citing its section (§1–§9), following the summation orders and
edge-case choices of `docs/methodology-notes.md`. It is the oracle of the differential tests
against the Rust engine, so it adds the same numbers in the same order.

Modules:
- `_tables`    — Arrow inputs to Python records (§1; dense ids, sorted underlyings)
- `black76`    — Black-76 price and Greeks (§5)
- `valuation`  — netting, P&L, option value, collateral, equity (§2)
- `standard`   — standard model, incl. margin tiers (§3)
- `portfolio`  — portfolio model: scenarios, risk arrays, scan (§4)
- `greeks`     — Greeks aggregation (§7)
- `results`    — account rows, status and `margin` (§6)
- `liquidation` — liquidation scan, stress, distance to liquidation and map (§8)
- `plan`       — liquidation plans: closes, fees, insurance fund, bad debt, ADL (docs/liquidation.md §7)
- `whatif`     — one account before and after trades (order entry)
- `isolated`   — isolated positions margined alone, their liquidation prices

Inputs are duck-typed: a book has `instruments`, `assets`, `risk_params`, `margin_tiers`; a market
has `index_prices`, `marks`, `valuation_time_ns`. Tables are anything `pyarrow.table()` accepts.
"""

from .black76 import Black76, black76, black76_scalar
from .greeks import greeks
from .isolated import isolated_margin
from .liquidation import liquidation_distance, liquidation_distance_grid, liquidation_map, liquidation_prices, liquidation_scan
from .paths import stressed_paths
from .plan import liquidation_plan
from .portfolio import risk_arrays
from .results import margin
from .whatif import WhatIfResult, what_if

__all__ = [
    "Black76",
    "black76",
    "black76_scalar",
    "greeks",
    "isolated_margin",
    "liquidation_distance",
    "liquidation_distance_grid",
    "liquidation_map",
    "liquidation_prices",
    "liquidation_plan",
    "liquidation_scan",
    "stressed_paths",
    "margin",
    "risk_arrays",
    "WhatIfResult",
    "what_if",
]
