"""Parameters of the generalized scenario-margin engine (`reference/scenarios.py`).

A methodology is data: one `ScenarioMethodology` holds every number the scenario engine reads,
grouped the way a risk team thinks about them (the scenario table, the vol shocks, the skew
tilts, discounting, the loss factors and each optional contingency). A preset such as
`derive_pmrm2` (`margin_engine.presets`) is nothing but one instance of these classes.

Every class is a frozen dataclass, validated when it is built: a value out of its range raises
`MarginInputError` naming the parameter (`methodology.<group>.<name>`), and `from_dict` rejects
unknown or misspelt keys by name, so a typo in a hand-written file never silently falls back to
a default. `to_dict` gives the same plain structure back (JSON/TOML friendly).

Conventions: spot moves are relative (`+0.18` = the underlying 18% higher), times are in days
where they are parameters and in seconds where they describe an instrument, a year has 365
days, rates are continuously compounded per year.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Any

from margin_engine._inputs import input_error

__all__ = [
    "BasisContingency",
    "ConfidenceContingency",
    "LossFactors",
    "PegLoss",
    "PositionContingency",
    "ScenarioMethodology",
    "ScenarioRow",
    "SkewShock",
    "StaticDiscount",
    "VolShock",
    "VOL_SHOCKS",
    "SCENARIO_GROUPS",
]

VOL_SHOCKS = ("none", "up", "down", "skew_linear", "skew_abs")
"""How a scenario row moves implied vols: not at all, the term-scaled up / down shock, or a
tilt of the smile by log-moneyness (linear in k, or in |k|)."""

SCENARIO_GROUPS = ("regular", "extreme", "skew", "basis")
"""Reporting groups of scenario rows: the worst loss is shown per group."""


def _bad(group: str, name: str, problem: str) -> Exception:
    return input_error("methodology", f"{group}.{name}" if group else name, problem)


def _finite(group: str, name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _bad(group, name, f"expected a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise _bad(group, name, f"expected a finite number, got {value!r}")
    return value


def _check(group: str, name: str, value: float, ok: bool, rule: str) -> None:
    if not ok:
        raise _bad(group, name, f"must be {rule}, got {value!r}")


def _nonnegative(obj: Any, group: str, names: tuple[str, ...]) -> None:
    for name in names:
        v = getattr(obj, name)
        _check(group, name, v, v >= 0.0, ">= 0")


def _build(cls: type, group: str, data: Any) -> Any:
    """`cls(**data)` after checking that `data` is a mapping whose keys are `cls`'s fields."""
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise _bad("", group, f"expected a table of parameters, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise _bad(group, unknown[0], f"unknown parameter (known: {', '.join(sorted(known))})")
    return cls(**data)


def _numbers(obj: Any, group: str) -> None:
    """Coerce every float-annotated field of a dataclass instance, in place, naming bad ones."""
    for f in fields(obj):
        if f.type in ("float", float):
            object.__setattr__(obj, f.name, _finite(group, f.name, getattr(obj, f.name)))


@dataclass(frozen=True)
class ScenarioRow:
    """One row of the scenario table.

    `spot_move`: relative move of the underlying (and of the variable part of every forward);
    `vol_shock`: one of `VOL_SHOCKS`; `weight`: the factor the row's P&L is scaled by (a
    dampening factor: extreme moves are charged only in part); `group`: one of
    `SCENARIO_GROUPS`, for reporting the worst loss per group. A skew row tilts the smile on
    the current forward, so its `spot_move` is 0.
    """

    spot_move: float
    vol_shock: str = "none"
    weight: float = 1.0
    group: str = "regular"

    def __post_init__(self) -> None:
        _numbers(self, "scenarios")
        _check("scenarios", "spot_move", self.spot_move, self.spot_move > -1.0, "> -1 (a price stays positive)")
        _check("scenarios", "weight", self.weight, self.weight >= 0.0, ">= 0")
        if self.vol_shock not in VOL_SHOCKS:
            raise _bad("scenarios", "vol_shock", f"must be one of {', '.join(VOL_SHOCKS)}, got {self.vol_shock!r}")
        if self.vol_shock.startswith("skew") and self.spot_move != 0.0:
            raise _bad(
                "scenarios",
                "spot_move",
                f"a {self.vol_shock} row tilts the smile on the current forward: its spot_move must be 0, got {self.spot_move!r}",
            )
        if self.group not in SCENARIO_GROUPS:
            raise _bad("scenarios", "group", f"must be one of {', '.join(SCENARIO_GROUPS)}, got {self.group!r}")

    @property
    def spot_factor(self) -> float:
        """The multiplier applied to the underlying: `1 + spot_move`."""
        return 1.0 + self.spot_move


@dataclass(frozen=True)
class VolShock:
    """Term-scaled relative vol shocks.

    With `τ = reference_days / max(days to expiry, dte_floor_days)` and `p` the short-term power
    (expiry at most `term_threshold_days` away) or the long-term power otherwise:
    `up = 1 + vol_up × τ^p`, `down = max(down_floor, 1 − vol_down × τ^p)`. In an up scenario a
    shocked vol is never below `min_shocked_vol_up` (an absolute vol).
    """

    vol_up: float
    vol_down: float
    short_term_power: float
    long_term_power: float
    dte_floor_days: float = 1.0
    term_threshold_days: float = 30.0
    reference_days: float = 30.0
    min_shocked_vol_up: float = 0.0
    down_floor: float = 0.0

    def __post_init__(self) -> None:
        g = "vol_shock"
        _numbers(self, g)
        _nonnegative(self, g, ("vol_up", "vol_down", "short_term_power", "long_term_power", "min_shocked_vol_up"))
        _nonnegative(self, g, ("down_floor", "dte_floor_days", "term_threshold_days"))
        _check(g, "reference_days", self.reference_days, self.reference_days > 0.0, "> 0")


@dataclass(frozen=True)
class SkewShock:
    """Smile tilts of the `skew_linear` / `skew_abs` scenarios.

    For an expiry `t` years away (`√t` below) and an option of log-moneyness `k = ln(K / F)`
    (`|k|` in the abs scenario): cap `c = cap + cap_slope × √t`; width
    `k* = max(min_k_star, width_scale × √t × (vol_level + vol_level_slope × √t))`; the vol is
    multiplied by `max(0, 1 + clamp(k × c / k*, −c, c))`.
    """

    linear_cap: float
    linear_cap_slope: float
    abs_cap: float
    abs_cap_slope: float
    min_k_star: float
    width_scale: float
    vol_level: float
    vol_level_slope: float

    def __post_init__(self) -> None:
        g = "skew_shock"
        _numbers(self, g)
        _nonnegative(self, g, ("linear_cap", "abs_cap", "width_scale", "vol_level"))
        _check(g, "min_k_star", self.min_k_star, self.min_k_star > 0.0, "> 0 (it divides)")


@dataclass(frozen=True)
class StaticDiscount:
    """A scale applied to each expiry's shocked option value, by its sign.

    For an expiry `t` years away with rate `r`: a long (positive) value is multiplied by
    `long_base × exp(−t × (r × long_rate_mult + long_rate_add))`, a short (negative) value by
    `short_base / exp(−t × (r × short_rate_mult + short_rate_add))`, the latter at most
    `1 / discount factor` when `cap_short_at_inverse_discount`. Identity: bases 1, rates 0.
    """

    long_base: float = 1.0
    long_rate_mult: float = 0.0
    long_rate_add: float = 0.0
    short_base: float = 1.0
    short_rate_mult: float = 0.0
    short_rate_add: float = 0.0
    cap_short_at_inverse_discount: bool = True

    def __post_init__(self) -> None:
        g = "static_discount"
        _numbers(self, g)
        _nonnegative(self, g, tuple(f.name for f in fields(self) if f.name != "cap_short_at_inverse_discount"))
        if not isinstance(self.cap_short_at_inverse_discount, bool):
            raise _bad(g, "cap_short_at_inverse_discount", "expected true or false")


@dataclass(frozen=True)
class LossFactors:
    """The worst scenario loss is multiplied by `initial` (IM) or `maintenance` (MM)."""

    initial: float = 1.0
    maintenance: float = 1.0

    def __post_init__(self) -> None:
        _numbers(self, "loss_factors")
        for name in ("initial", "maintenance"):
            _check("loss_factors", name, getattr(self, name), getattr(self, name) > 0.0, "> 0")


@dataclass(frozen=True)
class BasisContingency:
    """Forward (basis) contingency: each expiry revalued with the spot moved to `spot_up` and
    `spot_down` (relative moves, vols unchanged); its worst loss (0 if none) times
    `add_factor + mult_factor × t` (t in years) is summed over expiries. The sum competes with
    the scenario losses as one more candidate for the worst loss."""

    spot_up: float
    spot_down: float
    add_factor: float
    mult_factor: float

    def __post_init__(self) -> None:
        g = "basis_contingency"
        _numbers(self, g)
        _check(g, "spot_up", self.spot_up, self.spot_up > 0.0, "> 0")
        _check(g, "spot_down", self.spot_down, -1.0 < self.spot_down < 0.0, "in (-1, 0)")
        _nonnegative(self, g, ("add_factor", "mult_factor"))


@dataclass(frozen=True)
class PositionContingency:
    """Charges on size: `|perpetual quantity| × spot × perp_*`, and the net naked short
    options of each strike (shorts not offset by longs of the same strike and expiry, calls and
    puts together) `× spot × option_*`. The IM charge is added on top of the MM charge."""

    perp_maintenance: float = 0.0
    perp_initial: float = 0.0
    option_maintenance: float = 0.0
    option_initial: float = 0.0

    def __post_init__(self) -> None:
        _numbers(self, "position_contingency")
        _nonnegative(self, "position_contingency", tuple(f.name for f in fields(self)))


@dataclass(frozen=True)
class ConfidenceContingency:
    """Oracle-confidence charge (IM only): an exposure whose price feeds report a confidence
    `c < threshold` is charged `(1 − c) × scale × notional`."""

    threshold: float = 0.0
    scale: float = 1.0

    def __post_init__(self) -> None:
        _numbers(self, "confidence_contingency")
        _check("confidence_contingency", "threshold", self.threshold, 0.0 <= self.threshold <= 1.0, "in [0, 1]")
        _check("confidence_contingency", "scale", self.scale, self.scale >= 0.0, ">= 0")


@dataclass(frozen=True)
class PegLoss:
    """Stable-coin peg loss (IM only): when the quote stable coin trades below `threshold`, the
    IM loss factor grows by `(threshold − price) × factor`."""

    threshold: float = 0.0
    factor: float = 0.0

    def __post_init__(self) -> None:
        _numbers(self, "peg_loss")
        _nonnegative(self, "peg_loss", ("threshold", "factor"))


@dataclass(frozen=True)
class ScenarioMethodology:
    """Everything the scenario engine reads. Optional parts are `None` when switched off.

    `discount_options`: revalue options with the expiry's discount factor `exp(−max(r, 0) t)`;
    `collateral_haircuts_as_contingency`: each collateral's haircut × value is charged as a
    contingency (its value enters the mark-to-market in full) instead of weighting the value.
    """

    name: str
    scenarios: tuple[ScenarioRow, ...]
    vol_shock: VolShock
    loss_factors: LossFactors = field(default_factory=LossFactors)
    skew_shock: SkewShock | None = None
    static_discount: StaticDiscount | None = None
    basis_contingency: BasisContingency | None = None
    position_contingency: PositionContingency | None = None
    confidence_contingency: ConfidenceContingency | None = None
    peg_loss: PegLoss | None = None
    discount_options: bool = True
    collateral_haircuts_as_contingency: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise _bad("", "name", "expected a non-empty string")
        rows = tuple(self.scenarios)
        if not rows:
            raise _bad("", "scenarios", "the scenario table needs at least one row")
        object.__setattr__(self, "scenarios", rows)
        if any(r.vol_shock.startswith("skew") for r in rows) and self.skew_shock is None:
            raise _bad("", "skew_shock", "the scenario table has skew rows but no skew_shock parameters")
        for name in ("discount_options", "collateral_haircuts_as_contingency"):
            if not isinstance(getattr(self, name), bool):
                raise _bad("", name, "expected true or false")

    _PARTS = {
        "vol_shock": VolShock,
        "loss_factors": LossFactors,
        "skew_shock": SkewShock,
        "static_discount": StaticDiscount,
        "basis_contingency": BasisContingency,
        "position_contingency": PositionContingency,
        "confidence_contingency": ConfidenceContingency,
        "peg_loss": PegLoss,
    }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScenarioMethodology:
        """Build from the plain structure of `to_dict` (as read from JSON or TOML). Unknown keys
        at any level are an error that names them."""
        if not isinstance(data, dict):
            raise _bad("", "methodology", f"expected a table, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise _bad("", unknown[0], f"unknown parameter (known: {', '.join(sorted(known))})")
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key == "scenarios":
                if not isinstance(value, (list, tuple)):
                    raise _bad("", "scenarios", "expected a list of rows")
                kwargs[key] = tuple(_build(ScenarioRow, "scenarios", row) for row in value)
            elif key in cls._PARTS:
                kwargs[key] = None if value is None else _build(cls._PARTS[key], key, value)
            else:
                kwargs[key] = value
        for required in ("name", "scenarios", "vol_shock"):
            if required not in kwargs:
                raise _bad("", required, "missing")
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The plain structure `from_dict` reads."""
        out: dict[str, Any] = {"name": self.name}
        out["scenarios"] = [{f.name: getattr(r, f.name) for f in fields(r)} for r in self.scenarios]
        for key in self._PARTS:
            part = getattr(self, key)
            out[key] = None if part is None else {f.name: getattr(part, f.name) for f in fields(part)}
        out["discount_options"] = self.discount_options
        out["collateral_haircuts_as_contingency"] = self.collateral_haircuts_as_contingency
        return out

    def replace(self, **overrides: Any) -> ScenarioMethodology:
        """A copy with some top-level parts replaced (validated again)."""
        data = self.to_dict()
        data.update(overrides)
        return ScenarioMethodology.from_dict(data)
