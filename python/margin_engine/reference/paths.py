"""Reference twin of the engine's path pass (``margin_core::paths``): the book margined under
every scenario of simulated paths, one :func:`liquidation_scan` per scenario, summed in plain
Python.

Scenario ``s`` is day ``s % days`` of path ``s // days``; ``moves[s][j]`` is the move of
``underlyings[j]``. Per scenario: accounts on margin call, liquidatable (bankrupt included),
bankrupt, total shortfall, total margin call amount ``Σ max(IM − collateral_initial, 0)``. Per
account (by ``account_id``): paths on which it is liquidatable on the last day, on any day, and
its shortfall summed over every scenario.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .liquidation import liquidation_scan
from .results import Model

LIQUIDATED = ("liquidatable", "bankrupt")


def stressed_paths(
    book: Any,
    positions: Any,
    balances: Any,
    market: Any,
    underlyings: Sequence[str],
    moves: Sequence[Sequence[float]],
    days: int,
    *,
    model: Model = "standard",
) -> tuple[list[dict[str, Any]], dict[int, dict[str, Any]]]:
    """``(scenarios, accounts)``: one dict per scenario (``margin_call``, ``liquidatable``,
    ``bankrupt``, ``shortfall``, ``call_amount``) and per account id (``liquidatable_last``,
    ``liquidatable_any``, ``shortfall``)."""
    if days < 1 or len(moves) % days:
        raise ValueError(f"{len(moves)} scenarios are not whole paths of {days} days")
    scenarios: list[dict[str, Any]] = []
    accounts: dict[int, dict[str, Any]] = {}
    on_path: set[int] = set()
    for s, row in enumerate(moves):
        scan = liquidation_scan(book, positions, balances, market, model=model, stress=dict(zip(underlyings, row, strict=True)))
        total = {"margin_call": 0, "liquidatable": 0, "bankrupt": 0, "shortfall": 0.0, "call_amount": 0.0}
        last_day = (s + 1) % days == 0
        for r in sorted(scan.to_pylist(), key=lambda r: r["account_id"]):
            a = accounts.setdefault(r["account_id"], {"liquidatable_last": 0, "liquidatable_any": 0, "shortfall": 0.0})
            liquidated = r["status"] in LIQUIDATED
            total["margin_call"] += r["status"] == "margin_call"
            total["liquidatable"] += liquidated
            total["bankrupt"] += r["status"] == "bankrupt"
            total["shortfall"] += r["shortfall"]
            total["call_amount"] += max(r["initial_margin"] - r["collateral_initial"], 0.0)
            a["shortfall"] += r["shortfall"]
            if liquidated:
                on_path.add(r["account_id"])
            if last_day:
                a["liquidatable_last"] += liquidated
                a["liquidatable_any"] += r["account_id"] in on_path
        if last_day:
            on_path = set()
        scenarios.append(total)
    return scenarios, accounts
