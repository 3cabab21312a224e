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
from dataclasses import dataclass, field, fields, replace
from typing import Any

from margin_engine._inputs import input_error

__all__ = [
    "BasisContingency",
    "CalendarBasis",
    "COMBINATIONS",
    "Concentration",
    "MaxOfGroups",
    "MethodologyByUnderlying",
    "REVALUATIONS",
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
    "exchange_methodology",
    "exchange_preset",
    "v1_methodology",
    "v1_preset",
]

VOL_SHOCKS = ("none", "up", "down", "skew_linear", "skew_abs")
"""How a scenario row moves implied vols: not at all, the term-scaled up / down shock, or a
tilt of the smile by log-moneyness (linear in k, or in |k|)."""

SCENARIO_GROUPS = ("regular", "extreme", "skew", "basis")
"""Reporting groups of scenario rows: the worst loss is shown per group."""

REVALUATIONS = ("expiry_sum", "risk_array")
"""How a row's P&L is summed: `expiry_sum` revalues each expiry's options together (so a static
discount and the skew rule can act on the expiry's total); `risk_array` is the sparse product of
per-contract risk arrays (`multiplier × (shocked − current)` per contract) with the quantities,
summed in the holdings' `order`."""

COMBINATIONS = ("loss_factor", "max_of_groups")
"""How the worst losses become margin: `loss_factor` (Derive: `factor × worst − contingencies +
MtM + cash`, signed) or `max_of_groups` (v1: `max(scan, cover × extreme, short minimum)` plus
add-ons, a requirement; `IM = im_factor × MM`)."""


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


def _plain(value: Any) -> Any:
    """A parameter value as JSON / TOML writes it (tuples as lists)."""
    return list(value) if isinstance(value, tuple) else value


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
        _nonnegative(self, g, ("down_floor", "term_threshold_days"))
        _check(g, "reference_days", self.reference_days, self.reference_days > 0.0, "> 0")
        # the floor divides: an expired expiry (0 days) with a 0 floor has no term factor
        _check(g, "dte_floor_days", self.dte_floor_days, self.dte_floor_days > 0.0, "> 0")


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
class MaxOfGroups:
    """The v1 combination rule (`combination = "max_of_groups"`), per underlying:
    `MM = max(scan, extreme_cover × extreme, short_min) + add-ons`, `IM = im_factor × MM`, with
    `scan` the worst loss (>= 0) of the regular (and skew / basis) rows, `extreme` that of the
    extreme rows, `short_min = Σ short options |q| × multiplier × spot × short_option_minimum`."""

    extreme_cover: float
    short_option_minimum: float
    im_factor: float

    def __post_init__(self) -> None:
        _numbers(self, "max_of_groups")
        _nonnegative(self, "max_of_groups", ("extreme_cover", "short_option_minimum"))
        _check("max_of_groups", "im_factor", self.im_factor, self.im_factor > 0.0, "> 0")


def _float_tuple(group: str, name: str, values: Any) -> tuple[float, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
        raise _bad(group, name, f"expected a list of numbers, got {values!r}")
    return tuple(_finite(group, name, v) for v in values)


@dataclass(frozen=True)
class CalendarBasis:
    """Calendar (basis) add-on: dated futures, options and perpetuals of one underlying do not
    move one-for-one with its index.

    Every holding's delta in the quote currency (linear: `q × multiplier × mark`; option:
    `q × multiplier × Black-76 delta × forward`) goes to an expiry bucket: bucket 0 holds the
    perpetuals (and risk-cancelling coins); bucket `i >= 1` the expiries with days to expiry in
    `(bucket_edges_days[i−2], bucket_edges_days[i−1]]` (the first dated bucket starts at 0, the
    last is open). Within a bucket deltas net. Across buckets, the long bucket deltas `D_i > 0`
    are matched against the short ones `D_j < 0` in proportion,
    `m_ij = D_i × |D_j| / max(Σ long, Σ |short|)` (so `Σ m_ij = min(Σ long, Σ |short|)`, the size
    of the calendar spread), and each matched pair is charged at the larger of the two buckets'
    rates: `charge = Σ_ij m_ij × max(bucket_rates[i], bucket_rates[j])`. A book whose deltas all
    sit in one bucket (or all have one sign) is charged nothing."""

    bucket_edges_days: tuple[float, ...]
    bucket_rates: tuple[float, ...]

    def __post_init__(self) -> None:
        g = "calendar_basis"
        edges = _float_tuple(g, "bucket_edges_days", self.bucket_edges_days)
        rates = _float_tuple(g, "bucket_rates", self.bucket_rates)
        for a, b in zip(edges, edges[1:]):
            _check(g, "bucket_edges_days", b, b > a, f"increasing (after {a!r})")
        if edges and edges[0] <= 0.0:
            _check(g, "bucket_edges_days", edges[0], False, "> 0")
        if len(rates) != len(edges) + 2:
            raise _bad(g, "bucket_rates", f"needs {len(edges) + 2} rates (perpetual bucket, then one per dated bucket), got {len(rates)}")
        for r in rates:
            _check(g, "bucket_rates", r, r >= 0.0, ">= 0")
        object.__setattr__(self, "bucket_edges_days", edges)
        object.__setattr__(self, "bucket_rates", rates)


@dataclass(frozen=True)
class Concentration:
    """Concentration (size) add-on against liquidity, per underlying: with `N = |net delta|` in
    the quote currency (the sum of every holding's delta, as in `CalendarBasis`) and `L` =
    `liquidity_notional`, `charge = rate × max(0, N − L)^1.5 / L^0.5`: nothing up to the
    notional the market absorbs within the close-out horizon, then the excess times
    `rate × sqrt(excess / L)` (square-root market impact)."""

    rate: float
    liquidity_notional: float

    def __post_init__(self) -> None:
        _numbers(self, "concentration")
        _check("concentration", "rate", self.rate, self.rate >= 0.0, ">= 0")
        _check("concentration", "liquidity_notional", self.liquidity_notional, self.liquidity_notional > 0.0, "> 0 (it divides)")


@dataclass(frozen=True)
class ScenarioMethodology:
    """Everything the scenario engine reads. Optional parts are `None` when switched off.

    `discount_options`: revalue options with the expiry's discount factor `exp(−max(r, 0) t)`;
    `collateral_haircuts_as_contingency`: each collateral's haircut × value is charged as a
    contingency (its value enters the mark-to-market in full) instead of weighting the value;
    `revaluation`: one of `REVALUATIONS`; `combination`: one of `COMBINATIONS` (`max_of_groups`
    reads the `max_of_groups` part). `calendar_basis` and `concentration` are add-ons charged
    under either combination rule.
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
    max_of_groups: MaxOfGroups | None = None
    calendar_basis: CalendarBasis | None = None
    concentration: Concentration | None = None
    revaluation: str = "expiry_sum"
    combination: str = "loss_factor"

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
        if self.revaluation not in REVALUATIONS:
            raise _bad("", "revaluation", f"must be one of {', '.join(REVALUATIONS)}, got {self.revaluation!r}")
        if self.combination not in COMBINATIONS:
            raise _bad("", "combination", f"must be one of {', '.join(COMBINATIONS)}, got {self.combination!r}")
        if self.combination == "max_of_groups" and self.max_of_groups is None:
            raise _bad("", "max_of_groups", "combination max_of_groups needs the max_of_groups parameters")
        if self.revaluation == "risk_array":
            if self.static_discount is not None:
                raise _bad("", "static_discount", "acts on an expiry's total: it needs revaluation expiry_sum")
            if any(r.vol_shock.startswith("skew") for r in rows):
                raise _bad("", "scenarios", "skew rows act on an expiry's total: they need revaluation expiry_sum")

    _PARTS = {
        "vol_shock": VolShock,
        "loss_factors": LossFactors,
        "skew_shock": SkewShock,
        "static_discount": StaticDiscount,
        "basis_contingency": BasisContingency,
        "position_contingency": PositionContingency,
        "confidence_contingency": ConfidenceContingency,
        "peg_loss": PegLoss,
        "max_of_groups": MaxOfGroups,
        "calendar_basis": CalendarBasis,
        "concentration": Concentration,
    }
    _SWITCHES = ("discount_options", "collateral_haircuts_as_contingency", "revaluation", "combination")

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
            out[key] = None if part is None else {f.name: _plain(getattr(part, f.name)) for f in fields(part)}
        for key in self._SWITCHES:
            out[key] = getattr(self, key)
        return out

    def replace(self, **overrides: Any) -> ScenarioMethodology:
        """A copy with some top-level parts replaced (validated again)."""
        data = self.to_dict()
        data.update(overrides)
        return ScenarioMethodology.from_dict(data)


# --------------------------------------------------------------------------------------------
# Per-underlying presets built from a book's risk_params table: v1 and exchange
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MethodologyByUnderlying:
    """One `ScenarioMethodology` per underlying (v1's risk parameters are per underlying), and
    the one used for an underlying without a row of its own."""

    name: str
    default: ScenarioMethodology
    by_underlying: dict[str, ScenarioMethodology] = field(default_factory=dict)

    def for_underlying(self, underlying: str) -> ScenarioMethodology:
        return self.by_underlying.get(underlying, self.default)


def v1_scenarios(params: Any) -> tuple[ScenarioRow, ...]:
    """v1's table (docs/methodology.md §4), in v1's scenario numbering: for each spot step
    `m_k = −R + 2R·k/(n−1)` (k = 0..n−1, evaluated left to right) the vol states down, none,
    up (group `regular`); then `−extreme_move × R` and `+extreme_move × R` with vols unchanged
    (group `extreme`)."""
    r = params.price_range
    n = params.price_steps
    rows = [
        ScenarioRow(-r + 2.0 * r * k / (n - 1), shock)
        for k in range(n)
        for shock in ("down", "none", "up")
    ]
    extreme = params.extreme_move * r
    rows += [ScenarioRow(-extreme, "none", 1.0, "extreme"), ScenarioRow(extreme, "none", 1.0, "extreme")]
    return tuple(rows)


def v1_methodology(params: Any, name: str = "v1") -> ScenarioMethodology:
    """v1's portfolio model for one underlying, from its risk parameters (anything with the
    attributes of `margin_engine.reference._tables.RiskParams`): the generated table, one term
    exponent (`τ = 30 / max(days, 1)`, `up = 1 + vol_up τ^p`, `down = max(0.01, 1 − vol_down τ^p)`),
    Black-76 on the index undiscounted, risk arrays summed in position order, and the
    `max_of_groups` combination."""
    p = params.vol_term_exponent
    return ScenarioMethodology(
        name=name,
        scenarios=v1_scenarios(params),
        vol_shock=VolShock(
            vol_up=params.vol_up,
            vol_down=params.vol_down,
            short_term_power=p,
            long_term_power=p,
            dte_floor_days=1.0,
            term_threshold_days=30.0,
            reference_days=30.0,
            min_shocked_vol_up=0.0,
            down_floor=0.01,
        ),
        discount_options=False,
        collateral_haircuts_as_contingency=False,
        max_of_groups=MaxOfGroups(params.extreme_cover, params.short_option_minimum, params.im_factor),
        revaluation="risk_array",
        combination="max_of_groups",
    )


def _risk_params_rows(risk_params: Any) -> tuple[Any, dict[str, Any]]:
    """`(defaults, {underlying: RiskParams})` read from a risk_params table as v1 reads it."""
    from margin_engine.reference._tables import DEFAULT_RISK_PARAMS, _read_risk_params, as_table

    table = None if risk_params is None else as_table(risk_params)
    return DEFAULT_RISK_PARAMS, _read_risk_params(table)


def v1_preset(risk_params: Any = None) -> MethodologyByUnderlying:
    """The `v1` preset of a book: `v1_methodology` of each underlying's risk_params row (the
    docs/methodology.md §1 defaults for the others). `risk_params` is the book's table (or None)."""
    defaults, rows = _risk_params_rows(risk_params)
    return MethodologyByUnderlying(
        "v1", v1_methodology(defaults), {u: v1_methodology(p) for u, p in rows.items()}
    )


EXCHANGE_BUCKET_EDGES_DAYS = (7.0, 30.0, 90.0, 180.0, 365.0)
"""Expiry buckets of the `exchange` preset: perpetuals, then up to 1 week, 1 month, 1 quarter,
half a year, a year, and beyond."""

EXCHANGE_BUCKET_RATES = (0.005, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05)
"""Basis rate of each bucket (perpetual first): how far a bucket's forward may move against the
index, beyond the common move the scan already charges (docs/presets.md says why)."""

EXCHANGE_CONCENTRATION_RATE = 0.05
EXCHANGE_LIQUIDITY_NOTIONAL = 10_000_000.0

EXCHANGE_COLUMNS = ("basis_rate_scale", "concentration_rate", "liquidity_notional")
"""Optional columns of a risk_params table read by `exchange_preset`, per underlying:
`basis_rate_scale` multiplies every bucket rate (default 1), `concentration_rate` and
`liquidity_notional` are the `Concentration` parameters."""

EXCHANGE_ARGS = EXCHANGE_COLUMNS + ("price_range",)
"""Per-underlying arguments of the exchange recipe (`exchange_preset`'s `overrides`, a
methodology's `[portfolio.underlyings.X]`): the `EXCHANGE_COLUMNS` and `price_range`, the scan
range replacing the risk_params row's (the `exchange` preset's calibrated ranges,
`margin_engine.presets.calibrated`)."""


def exchange_methodology(
    params: Any,
    *,
    basis_rate_scale: float = 1.0,
    concentration_rate: float = EXCHANGE_CONCENTRATION_RATE,
    liquidity_notional: float = EXCHANGE_LIQUIDITY_NOTIONAL,
    price_range: float | None = None,
    name: str = "exchange",
) -> ScenarioMethodology:
    """The `exchange` preset for one underlying: `v1_methodology(params)` (its own scan range,
    or `price_range` when given) plus the calendar-basis and concentration add-ons."""
    scale = _finite("calendar_basis", "basis_rate_scale", basis_rate_scale)
    _check("calendar_basis", "basis_rate_scale", scale, scale >= 0.0, ">= 0")
    if price_range is not None:
        r = _finite("scenarios", "price_range", price_range)
        _check("scenarios", "price_range", r, 0.0 < r < 1.0, "in (0, 1)")
        params = replace(params, price_range=r)
    base = v1_methodology(params, name)
    return ScenarioMethodology(
        **{f.name: getattr(base, f.name) for f in fields(base) if f.name not in ("calendar_basis", "concentration")},
        calendar_basis=CalendarBasis(EXCHANGE_BUCKET_EDGES_DAYS, tuple(r * scale for r in EXCHANGE_BUCKET_RATES)),
        concentration=Concentration(concentration_rate, liquidity_notional),
    )


def exchange_preset(risk_params: Any = None, overrides: dict[str, dict[str, float]] | None = None) -> MethodologyByUnderlying:
    """The `exchange` preset of a book: per underlying, its v1 risk parameters (scan range,
    vol shocks, ...) and the `EXCHANGE_COLUMNS` of its risk_params row when the table has them,
    then `overrides[underlying]` (keyword arguments of `exchange_methodology`) on top."""
    from margin_engine.reference._tables import as_table, column, has_column

    defaults, rows = _risk_params_rows(risk_params)
    extra: dict[str, dict[str, float]] = {}
    if risk_params is not None:
        table = as_table(risk_params)
        names = column(table, "underlying")
        for col in EXCHANGE_COLUMNS:
            if has_column(table, col):
                for u, v in zip(names, column(table, col), strict=True):
                    if v is not None:
                        extra.setdefault(u, {})[col] = float(v)
    overrides = dict(overrides or {})
    for u, kw in overrides.items():
        if not isinstance(kw, dict):
            raise _bad("exchange", u, f"expected a table of parameters, got {type(kw).__name__}")
        unknown = sorted(set(kw) - set(EXCHANGE_ARGS))
        if unknown:
            raise _bad("exchange", f"{u}.{unknown[0]}", f"unknown parameter (known: {', '.join(EXCHANGE_ARGS)})")
        extra.setdefault(u, {}).update(kw)
    by_underlying = {
        u: exchange_methodology(rows.get(u, defaults), **extra.get(u, {})) for u in sorted(set(rows) | set(extra))
    }
    return MethodologyByUnderlying("exchange", exchange_methodology(defaults), by_underlying)
