"""Shared test helpers: building engine objects from strategy examples, comparing tables."""

from __future__ import annotations

import math
import os
import sys
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis.control import currently_in_test_context

sys.path.insert(0, os.path.dirname(__file__))

settings.register_profile(
    "default",
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
# CI (`.ci/run`) runs the same examples every time (`derandomize`): a rare example found by a
# random draw fails a local run, where the example database replays it until fixed, rather than
# the one CI run that decides whether a change lands. Local runs keep exploring.
settings.register_profile("ci", settings.get_profile("default"), derandomize=True, database=None)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

REL = 1e-9
ABS = 1e-9


def engine_objects(example: dict[str, Any]) -> tuple[Any, Any]:
    import margin_engine as me

    book = me.Book(example["instruments"], example["assets"], example["risk_params"], example["margin_tiers"])
    market = me.Market(example["index_prices"], example["marks"], example["valuation_time_ns"])
    return book, market


def close(a: float | None, b: float | None, rel: float = REL, abs_: float = ABS) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=rel, abs_tol=abs_)


def assert_tables_close(got: pa.Table, want: pa.Table, scale_columns: dict[str, list[float]] | None = None) -> None:
    """Same columns, same rows in the same order; floats to 1e-9 relative (1e-9 absolute near
    zero), everything else exactly. ``scale_columns`` gives, for columns that are differences of
    large numbers, a per-row scale: such a row may also differ by 1e-9 of its scale."""
    assert got.column_names == want.column_names
    assert got.num_rows == want.num_rows, (got.num_rows, want.num_rows)
    scales = scale_columns or {}
    for name in got.column_names:
        g = got.column(name).to_pylist()
        w = want.column(name).to_pylist()
        if pa.types.is_floating(got.schema.field(name).type):
            scale = scales.get(name) or [0.0] * len(w)
            bad = [(i, x, y) for i, (x, y, k) in enumerate(zip(g, w, scale))
                   if not close(x, y, abs_=max(ABS, REL * abs(k)))]
            assert not bad, f"column {name}: {len(bad)} rows differ, first {bad[:5]}"
        else:
            assert g == w, f"column {name} differs"


def record_event(text: str) -> None:
    """`hypothesis.event`, a no-op outside a hypothesis test (hand tests reuse the helpers)."""
    if currently_in_test_context():
        event(text)


@pytest.fixture(scope="session")
def me_module() -> Any:
    import margin_engine

    return margin_engine
