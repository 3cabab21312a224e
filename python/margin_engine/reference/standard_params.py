"""Parameters of the generalized standard (per position) margin (`standard_rules`).

One frozen dataclass, `StandardParams`, holds every number and switch that the standard-margin
rules read. A methodology preset is one instance of it, never a separate code path:

- `V1` gives exactly docs/methodology.md §3 (every rate from the instrument's own columns, no
  per-expiry floor, option values in collateral, no add-ons);
- `DERIVE_STANDARD` gives Derive's standard manager (derivexyz/v2-core, `StandardManager.sol`)
  with the parameter values of its published unit-test cases (provenance on each field below).

`StandardParams.from_mapping` builds an instance from a plain mapping (a parsed JSON/TOML table)
and rejects an unknown or misspelt key by name; building an instance with an out-of-range value
raises `ValueError` naming the parameter. Pure Python, no dependency on the compiled core.

Conventions: rates multiply the index price `S` per contract (times `|q| × multiplier`),
"scales" and "multiples" are dimensionless factors, confidences and thresholds are in [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

__all__ = ["StandardParams", "V1", "DERIVE_STANDARD", "PRESETS", "preset"]

_OPTIONAL_RATES = (
    "option_im_rate",
    "option_im_floor",
    "call_mm_rate",
    "put_mm_rate",
    "linear_im_rate",
    "linear_mm_rate",
)
_BOOLS = ("max_loss_floor", "option_value_in_collateral")


def _bad(name: str, problem: str) -> ValueError:
    return ValueError(f"standard-margin parameter {name!r}: {problem}")


@dataclass(frozen=True)
class StandardParams:
    """Every rule of the generalized standard margin, switched and sized by data.

    A field left at its default switches its rule off (or, for the optional rates, takes the
    value from the instrument's own column as v1 does)."""

    name: str = "custom"
    """A label shown in reports; no effect on any number."""

    # --- short-option charges, per contract -----------------------------------------------
    option_im_rate: float | None = None
    """IM rate of a short option, `mark + max(rate × S − OTM, floor × S)`. None: the
    instrument's `initial_margin_rate` (v1)."""
    option_im_floor: float | None = None
    """IM floor rate of a short option (above). None: the instrument's `initial_margin_floor`."""
    call_mm_rate: float | None = None
    """MM rate of a short call, `mark + rate × S`. None: the instrument's
    `maintenance_margin_rate`."""
    put_mm_rate: float | None = None
    """MM rate of a short put, `mark + max(rate × S, put_mm_mark_rate × mark)`. None: the
    instrument's `maintenance_margin_rate`."""
    put_mm_mark_rate: float = 0.0
    """The mark-proportional alternative of the short-put MM (above); 0 = off (v1). A deep
    in-the-money put is charged on its price rather than on the index."""
    put_im_mm_multiple: float | None = None
    """Short-put IM is at least this multiple of its MM (`IM ≥ k × MM`); None = off."""
    call_im_mm_multiple: float | None = None
    """Short-call IM is at least this multiple of its MM; None = off."""

    # --- perpetuals and futures --------------------------------------------------------------
    linear_im_rate: float | None = None
    """IM rate on the notional of a perpetual / future, replacing the instrument's rate and its
    margin tiers. None: the instrument's rate and tiers (v1)."""
    linear_mm_rate: float | None = None
    """MM rate on the notional of a perpetual / future (as above)."""

    # --- per-expiry max-loss floor -----------------------------------------------------------
    max_loss_floor: bool = False
    """For the options of one (underlying, expiry), charge
    `min(Σ isolated charges, max loss of the expiry's payoff + unpaired-call charge)`."""
    unpaired_call_im_scale: float = 1.0
    """IM charge per net short call of an expiry, in forwards: `scale × forward × unpaired`."""
    unpaired_call_mm_scale: float = 1.0
    """MM charge per net short call of an expiry (as above)."""

    # --- collateral ----------------------------------------------------------------------------
    option_value_in_collateral: bool = True
    """True (v1, Deribit): every option position's value `q × mult × mark` is in collateral, so a
    short option's mark is counted twice (in its charge and, negative, in collateral). False
    (Derive): option positions add nothing to collateral and a short's mark is counted once,
    in its charge (docs/standard-methodologies.md, rule 4)."""
    base_asset_margin_factor: float | None = None
    """When set, a held asset linked to an underlying (assets.underlying not null) counts
    `amount × price × factor` in maintenance collateral, instead of its table weights. None: the
    table weights (v1)."""
    base_asset_im_scale: float = 1.0
    """Initial collateral of such an asset: `amount × price × factor × scale`."""

    # --- initial-margin add-ons ----------------------------------------------------------------
    depeg_threshold: float | None = None
    """Stable-coin depeg add-on, IM only: when the stable's price `p` is below this threshold,
    each underlying is charged `(threshold − p) × depeg_factor × S × (Σ |linear contracts| +
    Σ short option contracts)`. None = off."""
    depeg_factor: float = 0.0
    """Size of the depeg add-on (above)."""
    oracle_factor: float = 0.0
    """Oracle-confidence add-on, IM only: a position priced off a feed whose confidence `c` is
    below its threshold is charged `(1 − c) × oracle_factor × S × size` (size: |linear
    contracts|, an expiry's short option contracts, or a base asset's units)."""
    oracle_linear_threshold: float | None = None
    """Threshold for perpetuals / futures (min of index and mark confidences); None = off."""
    oracle_option_threshold: float | None = None
    """Threshold per option expiry (min of index, forward and vol confidences); None = off."""
    oracle_base_threshold: float | None = None
    """Threshold for base assets (index confidence); None = off."""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str):
            raise _bad("name", f"expected a string, got {self.name!r}")
        for name in _BOOLS:
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise _bad(name, f"expected true or false, got {value!r}")
        for f in fields(self):
            if f.name == "name" or f.name in _BOOLS:
                continue
            value = getattr(self, f.name)
            if value is None and (f.name in _OPTIONAL_RATES or f.name.endswith(("_multiple", "_threshold"))
                                  or f.name == "base_asset_margin_factor"):
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise _bad(f.name, f"expected a number, got {value!r}")
            value = float(value)
            if not math.isfinite(value) or value < 0.0:
                raise _bad(f.name, f"must be a finite number >= 0, got {value!r}")
            object.__setattr__(self, f.name, value)
        for name in ("base_asset_margin_factor", "base_asset_im_scale", "depeg_threshold",
                     "oracle_linear_threshold", "oracle_option_threshold", "oracle_base_threshold",
                     "oracle_factor"):
            value = getattr(self, name)
            if value is not None and value > 1.0:
                raise _bad(name, f"must be in [0, 1], got {value!r}")
        for name in ("put_im_mm_multiple", "call_im_mm_multiple"):
            value = getattr(self, name)
            if value is not None and value == 0.0:
                raise _bad(name, "must be > 0 (use null to switch the rule off)")
        if (self.linear_im_rate is None) != (self.linear_mm_rate is None):
            raise _bad("linear_im_rate", "linear_im_rate and linear_mm_rate are set together or not at all")

    # ------------------------------------------------------------------------------------------

    @classmethod
    def from_mapping(cls, data: Any, *, base: StandardParams | None = None) -> StandardParams:
        """Build from a plain mapping (e.g. a parsed JSON/TOML table); keys not given keep the
        value of `base` (default: the v1 set). An unknown key raises `ValueError` naming it."""
        if not isinstance(data, dict):
            raise ValueError(f"standard-margin parameters: expected a table, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        for key in data:
            if key not in known:
                raise _bad(str(key), f"unknown parameter (known: {', '.join(sorted(known))})")
        return replace(base if base is not None else V1, **data)

    def to_dict(self) -> dict[str, Any]:
        """The plain structure `from_mapping` reads back."""
        return asdict(self)


V1 = StandardParams(name="v1")
"""docs/methodology.md §3 exactly: instrument rates and tiers, no floor, options in collateral."""

DERIVE_STANDARD = StandardParams(
    name="derive_standard",
    # test/config-test.sol::getSRMParams, OptionMarginParams:
    option_im_rate=0.15,  # maxSpotReq
    option_im_floor=0.10,  # minSpotReq
    call_mm_rate=0.075,  # mmCallSpotReq
    put_mm_rate=0.075,  # mmPutSpotReq
    put_mm_mark_rate=0.075,  # MMPutMtMReq
    put_im_mm_multiple=1.05,  # mmOffsetScale (applies to puts only)
    unpaired_call_im_scale=1.2,  # unpairedIMScale
    unpaired_call_mm_scale=1.1,  # unpairedMMScale
    max_loss_floor=True,
    # TestStandardManagerBase.t.sol::setUp, setPerpMarginRequirements(0.05e18, 0.065e18):
    linear_mm_rate=0.05,
    linear_im_rate=0.065,
    option_value_in_collateral=False,
    # TestStandardManager_Cases.t.sol::setUp, setBaseAssetMarginFactor(0.1e18, 1e18):
    base_asset_margin_factor=0.1,
    base_asset_im_scale=1.0,
    # TestStandardManager_Cases.t.sol::setUp, DepegParams(0.98e18, 1.2e18):
    depeg_threshold=0.98,
    depeg_factor=1.2,
    # test/config-test.sol::getSRMParams, OracleContingencyParams (set again in Cases.setUp):
    oracle_linear_threshold=0.4,  # perpThreshold
    oracle_option_threshold=0.4,  # optionThreshold
    oracle_base_threshold=0.4,  # baseThreshold
    oracle_factor=0.4,  # OCFactor
)
"""Derive's standard manager as configured for its 28 published cases
(derivexyz/v2-core @ 7736900d395703c4f675376caa4c315402943831,
`test/risk-managers/unit-tests/StandardManager/test-cases.json`). Every value is cited above
from the test set-up that the cases run under."""

PRESETS: dict[str, StandardParams] = {"v1": V1, "derive_standard": DERIVE_STANDARD}


def preset(name: str) -> StandardParams:
    """The standard-margin parameter set of preset `name` (`v1`, `derive_standard`)."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown standard-margin preset {name!r} (known: {', '.join(PRESETS)})") from None
