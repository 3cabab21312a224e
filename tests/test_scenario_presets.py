"""The scenario engine (`reference/scenarios.py`) under the `v1` and `exchange` presets
(`margin_engine.methodology_params`), through the table adapter `reference/scenario_inputs.py`.

- v1 as a parameter set: on random books the engine gives v1's portfolio IM and MM of every
  account bit for bit (the adapter keeps v1's summation order);
- the `exchange` preset: the worked examples of docs/presets.md (a perpetual-vs-future calendar
  spread, a whale position), hand-checked in the comments;
- the exchange add-ons' rules on random inputs, and their parameters' validation.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import books, reference_objects

from margin_engine import MarginInputError, reference
from margin_engine.methodology_params import (
    CalendarBasis,
    Concentration,
    ScenarioMethodology,
    exchange_preset,
    v1_methodology,
    v1_preset,
)
from margin_engine.reference._tables import DEFAULT_RISK_PARAMS
from margin_engine.reference.scenario_inputs import account_margins, underlying_margins
from margin_engine.reference.scenarios import LinearHolding, ScenarioPortfolio, margin_scenarios


@given(books())
def test_v1_preset_equals_v1_portfolio_margin(example):
    """The v1 combination rule is a parameter set of the one scenario engine: IM and MM of every
    account equal `reference.margin(..., model="portfolio")` exactly (same terms, same order)."""
    book, market = reference_objects(example)
    want = reference.margin(book, example["positions"], example["balances"], market, model="portfolio")
    got = account_margins(book, example["positions"], market, "v1")
    for account, im, mm in zip(
        want.column("account_id").to_pylist(),
        want.column("initial_margin").to_pylist(),
        want.column("maintenance_margin").to_pylist(),
        strict=True,
    ):
        got_im, got_mm = got.get(account, (0.0, 0.0))
        assert (got_im, got_mm) == (im, mm), (account, got_im, im, got_mm, mm)
