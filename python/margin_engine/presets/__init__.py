"""Methodology presets: named parameter sets of the margin engines.

A preset is data, never a code path of its own. `scenario_preset(name)` returns the
`ScenarioMethodology` of a scenario-margin preset:

- `derive_pmrm2`: Derive's PMRM_2 portfolio margin with its baseline parameters
  (`margin_engine.presets.derive`, validated on Derive's published portfolio cases).

The presets whose parameters come from the book are built from its `risk_params` table instead:
`v1` (today's portfolio model as a scenario table) by `methodology_params.v1_preset(risk_params)`
and `exchange` (v1 plus calendar-basis and concentration add-ons) by
`methodology_params.exchange_preset(risk_params, overrides)`. The standard (per-position)
presets `v1` and `derive_standard` are `reference.standard_params.preset(name)`; Derive's
standard-manager cases convert with `presets.derive_standard_cases.case_inputs(case)`.
These engines are the pure-Python reference of the methodologies (docs/methodologies.md,
docs/presets.md); the Rust engine does not read them yet.
"""

from __future__ import annotations

from typing import Any

from margin_engine._inputs import input_error
from margin_engine.methodology_params import ScenarioMethodology

__all__ = ["SCENARIO_PRESETS", "scenario_preset"]

SCENARIO_PRESETS = ("derive_pmrm2",)


def scenario_preset(name: str, **overrides: Any) -> ScenarioMethodology:
    """The scenario methodology of preset `name`, with top-level parts replaced by `overrides`
    (plain tables as in `ScenarioMethodology.to_dict`)."""
    if name == "derive_pmrm2":
        from .derive import derive_pmrm2

        meth = derive_pmrm2()
    else:
        raise input_error("methodology", "preset", f"unknown scenario preset {name!r} (known: {', '.join(SCENARIO_PRESETS)})")
    return meth.replace(**overrides) if overrides else meth
