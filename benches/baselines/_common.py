"""What every baseline shares: the output schema of ``me.margin`` and the status names.

The baselines take the same arguments as ``me.margin(book, positions, balances, market)``, duck
typed like ``margin_engine.reference``: ``book`` has ``instruments``, ``assets`` and optionally
``margin_tiers`` / ``risk_params``; ``market`` has ``index_prices``, ``marks`` and
``valuation_time_ns`` (or ``valuation_time``). A ``SyntheticBook`` is both.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

MARGIN_SCHEMA = pa.schema(
    [
        pa.field("account_id", pa.uint64(), nullable=False),
        pa.field("equity", pa.float64(), nullable=False),
        pa.field("collateral_initial", pa.float64(), nullable=False),
        pa.field("collateral_maintenance", pa.float64(), nullable=False),
        pa.field("initial_margin", pa.float64(), nullable=False),
        pa.field("maintenance_margin", pa.float64(), nullable=False),
        pa.field("free_collateral", pa.float64(), nullable=False),
        pa.field("margin_excess", pa.float64(), nullable=False),
        pa.field("health", pa.float64()),
        pa.field("status", pa.utf8(), nullable=False),
    ]
)

# Status codes in §6 precedence order.
STATUSES = ("bankrupt", "liquidatable", "margin_call", "healthy")

# §4 defaults of the portfolio model's per-underlying parameters.
RISK_DEFAULTS = {
    "price_range": 0.15,
    "price_steps": 21,
    "vol_up": 0.45,
    "vol_down": 0.30,
    "vol_term_exponent": 0.3,
    "extreme_move": 3.0,
    "extreme_cover": 0.33,
    "short_option_minimum": 0.01,
    "im_factor": 1.25,
}

SECONDS_PER_YEAR = 31_536_000


def table(obj: Any) -> pa.Table:
    """A pyarrow Table view of anything with the Arrow PyCapsule interface."""
    if obj is None or isinstance(obj, pa.Table):
        return obj
    if isinstance(obj, pa.RecordBatch):
        return pa.Table.from_batches([obj])
    return pa.table(obj)


def valuation_ns(market: Any) -> int:
    """The market's valuation time in integer nanoseconds since the epoch (UTC)."""
    ns = getattr(market, "valuation_time_ns", None)
    if ns is not None:
        return int(ns)
    from margin_engine._inputs import timestamp_ns

    return timestamp_ns(market.valuation_time)
