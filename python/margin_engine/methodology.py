"""`me.Methodology`: how standard and portfolio margin are computed, as one validated value.

A methodology has a `name` and two parts:

- `portfolio` (a :class:`Portfolio`): how scenario (portfolio) margin is computed, one of
  - the **v1 recipe**: each underlying's scan grid built from the book's `risk_params` row
    (`methodology_params.v1_preset`), today's portfolio model;
  - the **exchange recipe**: v1 plus the calendar-basis and concentration add-ons
    (`methodology_params.exchange_preset`), with optional per-underlying arguments;
  - an **explicit scenario methodology**: one default `ScenarioMethodology` and optional
    per-underlying ones (Derive's PMRM_2, or a venue's own table);

  a recipe may carry parameter overrides, applied to every underlying's methodology it builds;
- `standard` (a `StandardParams`): the per-position rules.

Build one from a preset (`Methodology.preset("v1" | "exchange" | "derive_pmrm2" |
"derive_standard", **overrides)`), from a TOML or JSON file (`Methodology.from_file`, format in
docs/methodology-files.md), from the plain structure of `to_dict` (`Methodology.from_dict`), or
from parts (`Methodology(name, portfolio=..., standard=...)`). Everything is validated once, at
construction: a bad value raises `MarginInputError` with `table = "methodology"` and
`column` = the dotted key path (`portfolio.vol_shock.vol_up`, `portfolio.scenarios[3].weight`);
read from a file, the message also gives the key's line and, for an unknown key, the closest
known one.

A methodology is immutable, compares and hashes by value (`to_dict`) and pickles (it is rebuilt,
and so validated again, from `to_dict`). `resolve(risk_params)` gives the per-underlying
`ScenarioMethodology` set and the `StandardParams` for a book; `engine_dict(risk_params)` the
plain structure the Rust engine reads.

>>> import margin_engine as me
>>> m = me.Methodology.preset("derive_standard", portfolio="derive_pmrm2")
>>> m.portfolio.kind, m.standard.name
('scenarios', 'derive_standard')
>>> me.Methodology.preset("v1", **{"vol_shock.vol_up": 0.5}).engine_dict(None)["is_v1_portfolio"]
False
"""

from __future__ import annotations

import difflib
import json
import math
import re
import sys
from dataclasses import MISSING, dataclass, field, fields, replace
from functools import lru_cache
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from margin_engine._core import MarginInputError
from margin_engine._inputs import input_error
from margin_engine.methodology_params import (
    EXCHANGE_ARGS,
    MethodologyByUnderlying,
    ScenarioMethodology,
    ScenarioRow,
    exchange_methodology,
    exchange_preset,
    v1_methodology,
    v1_preset,
)
from margin_engine.reference.standard_params import DERIVE_STANDARD, V1, StandardParams

__all__ = ["Methodology", "Portfolio", "PRESETS", "RECIPES"]

PRESETS = ("v1", "exchange", "derive_pmrm2", "derive_standard")
"""Names accepted by `Methodology.preset` (and by `preset = ...` in a file)."""

RECIPES = ("v1", "exchange")
"""Portfolio recipes: scenario methodologies built per underlying from the book's risk_params."""

_TABLE = "methodology"
_SCENARIO_KEYS = tuple(f.name for f in fields(ScenarioMethodology))
_SCENARIO_PARTS: dict[str, type] = dict(ScenarioMethodology._PARTS)  # type: ignore[arg-type]
_PORTFOLIO_KEYS = ("preset", "recipe", "underlyings") + _SCENARIO_KEYS
_STANDARD_FIELDS = {f.name: f for f in fields(StandardParams)}
_STANDARD_KEYS = ("preset",) + tuple(_STANDARD_FIELDS)
# StandardParams fields whose None means "off" / "the instrument's own column" (TOML has no null:
# a file writes `false` for them)
_STANDARD_OPTIONAL = tuple(n for n, f in _STANDARD_FIELDS.items() if f.default is None)
_STANDARD_FROM_INSTRUMENT = ("option_im_rate", "option_im_floor", "call_mm_rate", "put_mm_rate",
                             "linear_im_rate", "linear_mm_rate")
_TOP_KEYS = ("name", "preset", "portfolio", "standard", "maintenance_basis")
MAINTENANCE_BASES = ("mark", "entry")
# errors of exchange_methodology, by the column they name, back to the argument given
_EXCHANGE_ARG_COLUMNS = {
    "calendar_basis.basis_rate_scale": "basis_rate_scale",
    "concentration.rate": "concentration_rate",
    "concentration.liquidity_notional": "liquidity_notional",
    "scenarios.price_range": "price_range",
}

Path_ = tuple  # a key path: str keys and int list indices


# --------------------------------------------------------------------------------------------
# Errors that name the key path and, read from a file, its line
# --------------------------------------------------------------------------------------------


def _path_str(path: Path_) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "*"


class _Source:
    """The text a methodology was read from: locates a key path's line on demand."""

    def __init__(self, name: str, kind: str, text: str) -> None:
        self.name = name
        self.kind = kind
        self.text = text
        self._lines: dict[Path_, int] | None = None
        self.duplicates: list[tuple[Path_, int]] = []

    def lines(self) -> dict[Path_, int]:
        if self._lines is None:
            scanner = _TomlLines(self.text) if self.kind == "toml" else _JsonLines(self.text)
            try:
                scanner.scan()
            except (IndexError, ValueError):  # the parser accepted the text: best effort only
                pass
            self._lines = scanner.lines
            self.duplicates = getattr(scanner, "duplicates", [])
        return self._lines

    def line(self, path: Path_) -> int | None:
        """The line of `path`, or of its longest prefix found in the text."""
        lines = self.lines()
        for n in range(len(path), 0, -1):
            if tuple(path[:n]) in lines:
                return lines[tuple(path[:n])]
        return None


def _error(path: Path_, problem: str, src: _Source | None) -> MarginInputError:
    line = src.line(path) if src is not None else None
    where = f"line {line} of {src.name}: " if src is not None and line is not None else ""
    err = input_error(_TABLE, _path_str(path), where + problem)
    err.line = line  # type: ignore[attr-defined]
    err.file = src.name if src is not None else None  # type: ignore[attr-defined]
    return err


def _unknown(path: Path_, key: Any, known: tuple[str, ...] | list[str], src: _Source | None, what: str = "key") -> MarginInputError:
    close = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]}?" if close else ""
    return _error(path + (str(key),), f"unknown {what}{hint} (known: {', '.join(sorted(known))})", src)


def _check_keys(data: Mapping[str, Any], known: tuple[str, ...], path: Path_, src: _Source | None) -> None:
    for key in data:
        if key not in known:
            raise _unknown(path, key, known, src)


def _need_table(data: Any, path: Path_, src: _Source | None, what: str = "a table") -> None:
    if not isinstance(data, dict):
        raise _error(path, f"expected {what}, got {type(data).__name__} {data!r}", src)


def _relocate(e: MarginInputError, path: Path_, src: _Source | None, drop_group: bool) -> MarginInputError:
    """A parameter class's error (column `group.name`, relative to `path`) with the full path."""
    column = str(getattr(e, "column", "") or "")
    parts = column.split(".")
    if drop_group and len(parts) > 1:
        parts = parts[1:]
    sub = tuple(p for p in parts if p and p != "*")
    return _error(path + sub, str(getattr(e, "problem", e)), src)


# --------------------------------------------------------------------------------------------
# Building the parts from plain tables
# --------------------------------------------------------------------------------------------


def _build_part(cls: type, data: Any, path: Path_, src: _Source | None) -> Any:
    """`cls(**data)` for one parameter group (`VolShock`, a `ScenarioRow`, ...)."""
    names = tuple(f.name for f in fields(cls))
    _need_table(data, path, src, f"a table of parameters ({', '.join(names)})")
    _check_keys(data, names, path, src)
    required = [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]
    missing = [n for n in required if n not in data]
    if missing:
        raise _error(path + (missing[0],), f"missing (required: {', '.join(required)})", src)
    try:
        return cls(**data)
    except MarginInputError as e:
        raise _relocate(e, path, src, drop_group=True) from None


def _build_scenario(data: Any, path: Path_, src: _Source | None) -> ScenarioMethodology:
    """A `ScenarioMethodology` from its full plain table (`false` / None = a part switched off)."""
    _need_table(data, path, src)
    _check_keys(data, _SCENARIO_KEYS, path, src)
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        p = path + (key,)
        if key == "scenarios":
            if isinstance(value, (str, bytes, dict)) or not isinstance(value, (list, tuple)):
                raise _error(p, f"expected a list of scenario rows, got {type(value).__name__}", src)
            kwargs[key] = tuple(
                row if isinstance(row, ScenarioRow) else _build_part(ScenarioRow, row, p + (i,), src)
                for i, row in enumerate(value)
            )
        elif key in _SCENARIO_PARTS:
            cls = _SCENARIO_PARTS[key]
            if value is None or value is False:
                kwargs[key] = None
            elif isinstance(value, cls):
                kwargs[key] = value
            else:
                kwargs[key] = _build_part(cls, value, p, src)
        else:
            kwargs[key] = value
    for required in ("name", "scenarios", "vol_shock"):
        if kwargs.get(required) is None:
            raise _error(path + (required,), "missing (a scenario methodology needs name, scenarios and vol_shock)", src)
    try:
        return ScenarioMethodology(**kwargs)
    except MarginInputError as e:
        raise _relocate(e, path, src, drop_group=False) from None


def _same(a: Any, b: Any) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def _merge(base: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """`base` (a `ScenarioMethodology.to_dict()`) with `patch` applied: a parameter group given
    as a table is merged key by key into the base's group, `false` / None switches a group off,
    anything else (the scenario list, a switch, the name) replaces the base value."""
    out = dict(base)
    for key, value in patch.items():
        if key in _SCENARIO_PARTS and (value is None or value is False):
            out[key] = None
        elif key in _SCENARIO_PARTS and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def _patch_scenario(base: ScenarioMethodology, patch: Mapping[str, Any], path: Path_, src: _Source | None) -> ScenarioMethodology:
    if not patch:
        return base
    _check_keys(patch, _SCENARIO_KEYS, path, src)
    return _build_scenario(_merge(base.to_dict(), patch), path, src)


def _diff(base: dict[str, Any], d: dict[str, Any]) -> dict[str, Any]:
    """The patch that turns `base` into `d` (both `ScenarioMethodology.to_dict()`): `_merge`'s
    inverse, so `_merge(base, _diff(base, d)) == d`."""
    out: dict[str, Any] = {}
    for key, value in d.items():
        b = base.get(key)
        if _same(value, b):
            continue
        if value is None:
            out[key] = False
        elif key in _SCENARIO_PARTS and isinstance(value, dict) and isinstance(b, dict):
            out[key] = {k: v for k, v in value.items() if not _same(v, b.get(k))}
        else:
            out[key] = value
    return out


def _project(resolved: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """`patch` with its values as the validated methodology holds them (numbers as floats)."""
    out: dict[str, Any] = {}
    for key, value in patch.items():
        if key in _SCENARIO_PARTS and (value is None or value is False):
            out[key] = False
        elif key in _SCENARIO_PARTS and isinstance(value, dict):
            out[key] = {k: resolved[key][k] for k in value}
        else:
            out[key] = resolved[key]
    return out


def _plain_dict(d: Mapping[str, Any]) -> dict[str, Any]:
    """A to_dict without its None entries (absent = the default, which is None for these)."""
    return {k: v for k, v in d.items() if v is not None}


# --------------------------------------------------------------------------------------------
# The portfolio part
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Portfolio:
    """The portfolio (scenario) part of a methodology. Build it through `Methodology`
    (`Methodology.preset`, a file, or `Methodology(name, portfolio=<ScenarioMethodology>)`).

    `recipe`: `"v1"` or `"exchange"` (the scenario methodologies are built per underlying from the
    book's risk_params) or None (explicit: `default` and `by_underlying`). `recipe_args`: the
    exchange recipe's per-underlying arguments (`methodology_params.EXCHANGE_ARGS`). `patch`:
    parameter overrides applied to every methodology a recipe builds (the plain structure of
    `ScenarioMethodology.to_dict`, groups merged key by key, `false` = switched off)."""

    recipe: str | None = None
    recipe_args: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    patch: Mapping[str, Any] = field(default_factory=dict)
    default: ScenarioMethodology | None = None
    by_underlying: Mapping[str, ScenarioMethodology] = field(default_factory=dict)

    def __post_init__(self) -> None:
        path = ("portfolio",)
        if self.recipe is None:
            if not isinstance(self.default, ScenarioMethodology):
                raise _error(path, "an explicit portfolio needs a default ScenarioMethodology", None)
            if self.patch or self.recipe_args:
                raise _error(path, "overrides and recipe arguments belong to a recipe (v1, exchange)", None)
            for u, m in self.by_underlying.items():
                if not isinstance(u, str) or not isinstance(m, ScenarioMethodology):
                    raise _error(path + ("underlyings", str(u)), "expected a ScenarioMethodology per underlying name", None)
        else:
            if self.recipe not in RECIPES:
                raise _error(path + ("recipe",), f"unknown recipe {self.recipe!r} (known: {', '.join(RECIPES)})", None)
            if self.default is not None or self.by_underlying:
                raise _error(path, "a recipe builds its scenario methodologies: give no default / by_underlying", None)
            if not isinstance(self.patch, Mapping) or not isinstance(self.recipe_args, Mapping):
                raise _error(path, "a recipe's patch and recipe_args are tables", None)
            args, patch = _validate_recipe(self.recipe, {u: dict(a) for u, a in self.recipe_args.items()},
                                           _thaw(self.patch), path, None)
            object.__setattr__(self, "recipe_args", args)
            object.__setattr__(self, "patch", patch)
        object.__setattr__(self, "recipe_args", MappingProxyType({u: MappingProxyType(dict(a)) for u, a in self.recipe_args.items()}))
        object.__setattr__(self, "patch", MappingProxyType(dict(self.patch)))
        object.__setattr__(self, "by_underlying", MappingProxyType(dict(self.by_underlying)))

    @property
    def kind(self) -> str:
        """`"v1"`, `"exchange"` (recipes) or `"scenarios"` (explicit)."""
        return self.recipe if self.recipe is not None else "scenarios"

    @property
    def is_v1(self) -> bool:
        """The v1 recipe with no override: the engine's own v1 portfolio model."""
        return self.recipe == "v1" and not self.patch and not self.recipe_args

    def resolve(self, risk_params: Any = None, name: str | None = None) -> MethodologyByUnderlying:
        """The scenario methodology of every underlying of a book with this `risk_params`."""
        label = name or self.kind
        if self.recipe is None:
            assert self.default is not None
            return MethodologyByUnderlying(label, self.default, dict(self.by_underlying))
        try:
            if self.recipe == "v1":
                built = v1_preset(risk_params)
            else:
                built = exchange_preset(risk_params, {u: dict(a) for u, a in self.recipe_args.items()})
        except MarginInputError:
            raise
        except (ArithmeticError, ValueError, TypeError) as e:
            raise input_error("risk_params", "*", f"cannot build the {self.recipe} scenario tables: {e}") from None
        patch = dict(self.patch)
        path = ("portfolio",)
        return MethodologyByUnderlying(
            label,
            _patch_scenario(built.default, patch, path, None),
            {u: _patch_scenario(m, patch, path + ("underlyings", u), None) for u, m in sorted(built.by_underlying.items())},
        )

    def to_dict(self) -> dict[str, Any]:
        """The `[portfolio]` table of a methodology file."""
        if self.recipe is not None:
            out: dict[str, Any] = {"recipe": self.recipe}
            out.update({k: _thaw(v) for k, v in self.patch.items()})
            if self.recipe_args:
                out["underlyings"] = {u: dict(a) for u, a in sorted(self.recipe_args.items())}
            return out
        assert self.default is not None
        base = self.default.to_dict()
        out = _plain_dict(base)
        if self.by_underlying:
            out["underlyings"] = {u: _diff(base, m.to_dict()) for u, m in sorted(self.by_underlying.items())}
        return out

    def _key(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Portfolio) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __reduce__(self) -> Any:
        return (_portfolio_from_dict, (self.to_dict(),))

    def __repr__(self) -> str:
        if self.recipe is not None:
            extra = []
            if self.patch:
                extra.append(f"{len(_leaves(self.patch))} overrides")
            if self.recipe_args:
                extra.append(f"arguments for {', '.join(sorted(self.recipe_args))}")
            return f"Portfolio({self.recipe} recipe{': ' + ', '.join(extra) if extra else ''})"
        assert self.default is not None
        own = f", own for {', '.join(sorted(self.by_underlying))}" if self.by_underlying else ""
        return f"Portfolio({self.default.name!r}: {len(self.default.scenarios)} scenarios{own})"


def _thaw(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _thaw(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


def _leaves(d: Mapping[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in d.items():
        if isinstance(v, Mapping) and v:
            out += _leaves(v, f"{prefix}{k}.")
        else:
            out.append(f"{prefix}{k}")
    return out


def _portfolio_from_dict(d: dict[str, Any]) -> Portfolio:
    return _build_portfolio(d, None, ("portfolio",), None, "portfolio")


@lru_cache(maxsize=1)
def _derive_pmrm2() -> ScenarioMethodology:
    from margin_engine.presets.derive import derive_pmrm2

    return derive_pmrm2()


@lru_cache(maxsize=1)
def _exchange_scan_ranges() -> dict[str, dict[str, float]]:
    from margin_engine.presets.calibrated import exchange_scan_ranges

    return {u: {"price_range": r} for u, r in exchange_scan_ranges().items()}


def _preset_parts(name: Any, path: Path_, src: _Source | None) -> tuple[Portfolio, StandardParams]:
    if name == "v1":
        return Portfolio(recipe="v1"), V1
    if name == "exchange":  # its scan ranges calibrated on real prices (presets/calibrated.py)
        return Portfolio(recipe="exchange", recipe_args=_exchange_scan_ranges()), V1
    if name == "derive_pmrm2":
        return Portfolio(default=_derive_pmrm2()), V1
    if name == "derive_standard":
        return Portfolio(recipe="v1"), DERIVE_STANDARD
    if not isinstance(name, str):
        raise _error(path, f"expected a preset name ({', '.join(PRESETS)}), got {name!r}", src)
    close = difflib.get_close_matches(name, PRESETS, n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]}?" if close else ""
    raise _error(path, f"unknown preset {name!r}{hint} (known: {', '.join(PRESETS)})", src)


def _validate_recipe(recipe: str, args: dict[str, dict[str, Any]], patch: dict[str, Any], path: Path_, src: _Source | None) -> tuple[dict[str, dict[str, float]], dict[str, Any]]:
    """Checks a recipe's arguments and overrides on the default risk parameters; returns them
    normalized (numbers as the methodology holds them)."""
    from margin_engine.reference._tables import DEFAULT_RISK_PARAMS

    clean: dict[str, dict[str, float]] = {}
    for u, a in args.items():
        p = path + ("underlyings", u)
        if recipe == "v1":
            raise _error(p, "the v1 recipe reads each underlying's parameters from the book's risk_params table; "
                            "per-underlying tables need recipe = \"exchange\" or an explicit scenario table", src)
        _need_table(a, p, src, f"a table of exchange arguments ({', '.join(EXCHANGE_ARGS)})")
        _check_keys(a, EXCHANGE_ARGS, p, src)
        try:
            exchange_methodology(DEFAULT_RISK_PARAMS, **a)  # checks every argument (finite, in range)
        except MarginInputError as e:
            key = _EXCHANGE_ARG_COLUMNS.get(str(getattr(e, "column", "")), "")
            raise _error(p + ((key,) if key else ()), str(getattr(e, "problem", e)), src) from None
        clean[str(u)] = {k: float(v) for k, v in a.items()}
    build = exchange_methodology if recipe == "exchange" else v1_methodology
    default = _patch_scenario(build(DEFAULT_RISK_PARAMS), patch, path, src)
    return clean, _project(default.to_dict(), patch)


def _build_portfolio(data: Any, base: Portfolio | None, path: Path_, src: _Source | None, default_name: str) -> Portfolio:
    """A portfolio part from a `[portfolio]` table; with `base`, the table's parameters patch it."""
    if isinstance(data, str):
        data = {"preset": data}
    _need_table(data, path, src)
    _check_keys(data, _PORTFOLIO_KEYS, path, src)
    data = dict(data)
    preset = data.pop("preset", None)
    recipe = data.pop("recipe", None)
    underlyings = data.pop("underlyings", None)
    if preset is not None and recipe is not None:
        raise _error(path + ("recipe",), "give recipe or preset, not both", src)
    if preset is not None:
        base = _preset_parts(preset, path + ("preset",), src)[0]
    if recipe is not None:
        if recipe not in RECIPES:
            close = difflib.get_close_matches(str(recipe), RECIPES, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise _error(path + ("recipe",), f"unknown recipe {recipe!r}{hint} (known: {', '.join(RECIPES)}; "
                                             "or leave recipe out and give the scenario table)", src)
        base = Portfolio(recipe=recipe)
    if underlyings is None:
        underlyings = {}
    _need_table(underlyings, path + ("underlyings",), src, "a table of per-underlying tables")
    for u, table in underlyings.items():
        _need_table(table, path + ("underlyings", u), src)

    if base is None:  # explicit, from scratch
        if not data and not underlyings:
            raise _error(path, "missing: give recipe = \"v1\" | \"exchange\", preset = ..., or the scenario "
                               "methodology (scenarios, vol_shock, ...)", src)
        data.setdefault("name", default_name)
        default = _build_scenario(data, path, src)
        by_u = {str(u): _patch_scenario(default, p, path + ("underlyings", u), src) for u, p in underlyings.items()}
        return Portfolio(default=default, by_underlying=by_u)
    if base.recipe is None:  # explicit base: the table patches every underlying's methodology
        assert base.default is not None
        default = _patch_scenario(base.default, data, path, src)
        by_u = {u: _patch_scenario(m, data, path, src) for u, m in base.by_underlying.items()}
        for u, p in underlyings.items():
            by_u[str(u)] = _patch_scenario(by_u.get(str(u), default), p, path + ("underlyings", u), src)
        return Portfolio(default=default, by_underlying=by_u)
    # a recipe: overrides kept as a patch, applied when the book's risk_params are known
    _check_keys(data, _SCENARIO_KEYS, path, src)
    patch = _merge_patch(dict(base.patch), data)
    args = {u: dict(a) for u, a in base.recipe_args.items()}
    for u, a in underlyings.items():
        args.setdefault(str(u), {}).update(a)
    args, patch = _validate_recipe(base.recipe, args, patch, path, src)
    return Portfolio(recipe=base.recipe, recipe_args=args, patch=patch)


def _merge_patch(old: dict[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """Two patches in sequence as one."""
    out = dict(old)
    for key, value in new.items():
        if key in _SCENARIO_PARTS and isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = _thaw(value)
    return out


def _portfolio_part(obj: Any, path: Path_, name: str) -> Portfolio:
    if isinstance(obj, Portfolio):
        return obj
    if isinstance(obj, ScenarioMethodology):
        return Portfolio(default=obj)
    if isinstance(obj, MethodologyByUnderlying):
        return Portfolio(default=obj.default, by_underlying=dict(obj.by_underlying))
    if isinstance(obj, Methodology):
        return obj.portfolio
    if isinstance(obj, (str, dict)):
        return _build_portfolio(obj, None, path, None, name)
    raise _error(path, "expected a preset name, a [portfolio] table, a ScenarioMethodology, a "
                       f"MethodologyByUnderlying or a Portfolio, got {type(obj).__name__}", None)


# --------------------------------------------------------------------------------------------
# The standard part
# --------------------------------------------------------------------------------------------


_STANDARD_ERROR = re.compile(r"^standard-margin parameter '([^']*)': (.*)$", re.S)


def _build_standard(data: Any, base: StandardParams, path: Path_, src: _Source | None) -> StandardParams:
    """A `StandardParams` from a `[standard]` table: the keys it gives replace `base`'s."""
    if isinstance(data, str):
        data = {"preset": data}
    _need_table(data, path, src)
    _check_keys(data, _STANDARD_KEYS, path, src)
    data = dict(data)
    if "preset" in data:
        base = _preset_parts(data.pop("preset"), path + ("preset",), src)[1]
    values = {}
    for key, value in data.items():
        values[key] = None if key in _STANDARD_OPTIONAL and value is False else value
    try:
        return replace(base, **values)
    except ValueError as e:
        m = _STANDARD_ERROR.match(str(e))
        if m is None:
            raise _error(path, str(e), src) from None
        raise _error(path + (m.group(1),), m.group(2), src) from None


def _standard_part(obj: Any, path: Path_) -> StandardParams:
    if isinstance(obj, StandardParams):
        return obj
    if isinstance(obj, Methodology):
        return obj.standard
    if isinstance(obj, (str, dict)):
        return _build_standard(obj, V1, path, None)
    raise _error(path, f"expected a preset name, a [standard] table or a StandardParams, got {type(obj).__name__}", None)


def _standard_dict(s: StandardParams) -> dict[str, Any]:
    return _plain_dict(s.to_dict())


def _standard_numbers(s: StandardParams) -> dict[str, Any]:
    d = s.to_dict()
    d.pop("name")
    return d


# --------------------------------------------------------------------------------------------
# Overrides of Methodology.preset
# --------------------------------------------------------------------------------------------


def _route_overrides(overrides: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Dotted / nested overrides split into a `[portfolio]` and a `[standard]` table."""
    portfolio: dict[str, Any] = {}
    standard: dict[str, Any] = {}
    known = sorted((set(_PORTFOLIO_KEYS) | set(_STANDARD_FIELDS)) - {"name", "preset"})
    for key, value in overrides.items():
        parts = str(key).split(".")
        head = parts[0]
        if head == "portfolio" and len(parts) > 1:
            target, rest = portfolio, parts[1:]
        elif head == "standard" and len(parts) > 1:
            target, rest = standard, parts[1:]
        elif head in _PORTFOLIO_KEYS and head not in ("name", "preset"):
            target, rest = portfolio, parts
        elif head in _STANDARD_FIELDS and head != "name":
            target, rest = standard, parts
        else:
            close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise input_error(_TABLE, str(key), f"unknown override{hint} (a portfolio or standard parameter, "
                                                "dotted like loss_factors.maintenance, or name, portfolio, standard)")
        _set_nested(target, rest, value)
    return portfolio, standard


def _set_nested(target: dict[str, Any], keys: list[str], value: Any) -> None:
    for k in keys[:-1]:
        nxt = target.get(k)
        if not isinstance(nxt, dict):
            nxt = target[k] = {}
        target = nxt
    last = keys[-1]
    if isinstance(value, Mapping) and isinstance(target.get(last), dict):
        target[last].update(value)
    else:
        target[last] = _thaw(value) if isinstance(value, Mapping) else value


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def _toml_loads(text: str, name: str) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise input_error(_TABLE, "*", f"reading {name} needs the tomli package on Python 3.10 (pip install tomli)") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise input_error(_TABLE, "*", f"{name} is not valid TOML: {e}") from None


def _json_loads(text: str, name: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise input_error(_TABLE, "*", f"{name} is not valid JSON: {e.msg} (line {e.lineno}, column {e.colno})") from None


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _toml_str(s: str) -> str:
    out = json.dumps(s, ensure_ascii=False)  # JSON escapes are TOML basic-string escapes
    return out.replace("\x7f", "\\u007f")


def _toml_key(k: str) -> str:
    return k if _BARE_KEY.fullmatch(k) else _toml_str(k)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"cannot write {v!r} to TOML")
        return repr(v)
    if isinstance(v, str):
        return _toml_str(v)
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        if v and all(isinstance(x, dict) for x in v):
            return "[\n" + "".join(f"    {_toml_value(x)},\n" for x in v) + "]"
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise ValueError(f"cannot write {type(v).__name__} to TOML")


def _toml_dumps(data: dict[str, Any]) -> str:
    """TOML for the plain structure of `Methodology.to_dict` (strings, numbers, booleans,
    lists, tables; no None): scalars first, then one `[table]` per nested table, lists of
    tables as arrays of inline tables (a scenario table reads as one row per line)."""
    out: list[str] = []

    def table(path: tuple[str, ...], d: dict[str, Any]) -> None:
        scalars = [(k, v) for k, v in d.items() if not isinstance(v, dict)]
        tables = [(k, v) for k, v in d.items() if isinstance(v, dict)]
        if path and (scalars or not tables):
            out.append(("\n" if out else "") + "[" + ".".join(_toml_key(p) for p in path) + "]")
        for k, v in scalars:
            if v is None:
                raise ValueError(f"cannot write a null ({'.'.join(path + (k,))}) to TOML")
            out.append(f"{_toml_key(k)} = {_toml_value(v)}")
        for k, v in tables:
            table(path + (k,), v)

    table((), data)
    return "\n".join(out) + "\n"


class _Scanner:
    """Shared character scanning of the line locators."""

    def __init__(self, text: str) -> None:
        self.t = text
        self.i = 0
        self.line = 1
        self.lines: dict[Path_, int] = {}

    def note(self, path: Path_) -> None:
        self.lines.setdefault(tuple(path), self.line)

    def peek(self, k: int = 0) -> str:
        j = self.i + k
        return self.t[j] if j < len(self.t) else ""

    def advance(self, k: int = 1) -> None:
        for _ in range(k):
            if self.i < len(self.t):
                if self.t[self.i] == "\n":
                    self.line += 1
                self.i += 1


class _TomlLines(_Scanner):
    """The line of every key path of a TOML text (tables, arrays of tables, dotted keys, inline
    tables and arrays). The text has been accepted by the TOML parser."""

    def scan(self) -> None:
        table: Path_ = ()
        counts: dict[Path_, int] = {}
        while self.i < len(self.t):
            self.skip(newlines=True)
            c = self.peek()
            if not c:
                break
            if c == "[":
                array = self.peek(1) == "["
                self.advance(2 if array else 1)
                key = self.key()
                self.advance(2 if array else 1)
                if array:
                    n = counts[key] = counts.get(key, -1) + 1
                    for k in range(1, len(key) + 1):
                        self.note(key[:k])
                    table = key + (n,)
                else:
                    table = key
                for k in range(1, len(table) + 1):
                    self.note(table[:k])
            else:
                start = self.i
                self.key_value(table)
                if self.i == start:  # never stall on something unexpected
                    self.advance()
            self.to_line_end()

    def key_value(self, table: Path_) -> None:
        """`key = value` (a dotted key noting each of its tables) under `table`."""
        key = self.key()
        for k in range(1, len(key) + 1):
            self.note(table + key[:k])
        self.skip()
        if self.peek() == "=":
            self.advance()
        self.value(table + key)

    def skip(self, newlines: bool = False) -> None:
        while True:
            c = self.peek()
            if c in (" ", "\t", "\r") or (newlines and c == "\n"):
                self.advance()
            elif c == "#":
                while self.peek() not in ("\n", ""):
                    self.advance()
            else:
                return

    def to_line_end(self) -> None:
        self.skip()
        while self.peek() not in ("\n", ""):
            self.advance()

    def string(self) -> str:
        q = self.peek()
        if self.t.startswith(q * 3, self.i):
            self.advance(3)
            start = self.i
            while self.i < len(self.t) and not self.t.startswith(q * 3, self.i):
                self.advance(2 if q == '"' and self.peek() == "\\" else 1)
            s = self.t[start:self.i]
            self.advance(3)
            while self.peek() == q:  # up to two quotes may close a multi-line string
                self.advance()
            return s
        self.advance()
        start = self.i
        while self.peek() not in (q, "\n", ""):
            self.advance(2 if q == '"' and self.peek() == "\\" else 1)
        s = self.t[start:self.i]
        self.advance()
        if q == "'":
            return s
        try:
            return json.loads(f'"{s}"')
        except ValueError:  # a TOML-only escape (\U0001F600, \e): the raw text locates it as well
            return s

    def key(self) -> Path_:
        parts: list[str] = []
        while True:
            self.skip()
            c = self.peek()
            if c in ('"', "'"):
                parts.append(self.string())
            else:
                start = self.i
                while self.peek() and (self.peek().isalnum() or self.peek() in "_-"):
                    self.advance()
                parts.append(self.t[start:self.i])
            self.skip()
            if self.peek() == ".":
                self.advance()
                continue
            return tuple(parts)

    def value(self, path: Path_) -> None:
        self.skip()
        c = self.peek()
        if c in ('"', "'"):
            self.string()
        elif c == "[":
            self.advance()
            n = 0
            while True:
                self.skip(newlines=True)
                if self.peek() in ("]", ""):
                    self.advance()
                    return
                self.note(path + (n,))
                self.value(path + (n,))
                self.skip(newlines=True)
                if self.peek() == ",":
                    self.advance()
                    n += 1
        elif c == "{":
            self.advance()
            while True:
                self.skip()
                if self.peek() in ("}", ""):
                    self.advance()
                    return
                self.key_value(path)
                self.skip()
                if self.peek() == ",":
                    self.advance()
        else:
            while self.peek() not in (",", "]", "}", "\n", "#", ""):
                self.advance()


class _JsonLines(_Scanner):
    """The line of every key path of a JSON text, and the keys given twice in one object."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.duplicates: list[tuple[Path_, int]] = []

    def scan(self) -> None:
        self.value(())

    def skip(self) -> None:
        while self.peek() in (" ", "\t", "\r", "\n"):
            self.advance()

    def string(self) -> str:
        self.advance()
        start = self.i
        while self.peek() not in ('"', ""):
            self.advance(2 if self.peek() == "\\" else 1)
        s = self.t[start:self.i]
        self.advance()
        return json.loads(f'"{s}"')

    def value(self, path: Path_) -> None:
        self.skip()
        c = self.peek()
        if c == "{":
            self.advance()
            seen: set[str] = set()
            while True:
                self.skip()
                if self.peek() in ("}", ""):
                    self.advance()
                    return
                if self.peek() == ",":
                    self.advance()
                    continue
                key = self.string()
                if key in seen:
                    self.duplicates.append((path + (key,), self.line))
                seen.add(key)
                self.note(path + (key,))
                self.skip()
                self.advance()  # ':'
                self.value(path + (key,))
        elif c == "[":
            self.advance()
            n = 0
            while True:
                self.skip()
                if self.peek() in ("]", ""):
                    self.advance()
                    return
                if self.peek() == ",":
                    self.advance()
                    n += 1
                    continue
                self.note(path + (n,))
                self.value(path + (n,))
        elif c == '"':
            self.string()
        else:
            while self.peek() not in (",", "]", "}", " ", "\t", "\r", "\n", ""):
                self.advance()


# --------------------------------------------------------------------------------------------
# describe()
# --------------------------------------------------------------------------------------------


def _num(x: Any) -> str:
    """A number as a risk manager reads it: shortest exact form, at most 10 significant digits."""
    if isinstance(x, bool):
        return "true" if x else "false"
    if isinstance(x, int):
        return str(x)
    if isinstance(x, float):
        if x == int(x) and abs(x) < 1e15:
            return str(int(x))
        s = repr(x)
        return s if len(s) <= 12 else f"{x:.10g}"
    return str(x)


def _val(name: str, v: Any) -> str:
    if v is None:
        return "from instrument" if name in _STANDARD_FROM_INSTRUMENT else "off"
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_num(x) for x in v) + "]"
    return _num(v)


def _params(obj: Any, indent: str) -> str:
    return indent + ", ".join(f"{f.name} = {_val(f.name, getattr(obj, f.name))}" for f in fields(obj))


def _pct(x: float) -> str:
    """A relative move in percent, signed (`+18%`, `-4.5%`, `0%`)."""
    s = _num(round(x * 100.0, 9) + 0.0)
    return f"{'+' if x > 0 else ''}{s}%"


_PART_TEXT = {
    "vol_shock": ("Vol shock", "τ = reference_days / max(days to expiry, dte_floor_days); p = short_term_power up to "
                  "term_threshold_days, long_term_power beyond; up = 1 + vol_up × τ^p, down = max(down_floor, "
                  "1 − vol_down × τ^p); a vol shocked up is at least min_shocked_vol_up"),
    "skew_shock": ("Skew shock", "skew rows multiply each vol by max(0, 1 + clamp(k × c / k*, −c, c)), k = ln(K / F) "
                   "(|k| in skew_abs), c = cap + cap_slope × √t, k* = max(min_k_star, width_scale × √t × "
                   "(vol_level + vol_level_slope × √t))"),
    "loss_factors": ("Loss factors", "used by combination loss_factor: the worst weighted loss × initial (IM) or "
                     "× maintenance (MM)"),
    "max_of_groups": ("Max of groups", "used by combination max_of_groups: MM = max(scan, extreme_cover × extreme, short_option_minimum × Σ short "
                      "|q| × multiplier × spot) + add-ons, IM = im_factor × MM"),
    "static_discount": ("Static discount", "each expiry's shocked option value × long_base × exp(−t (r × long_rate_mult "
                        "+ long_rate_add)) when long, ÷ the same with short_* when short"),
    "basis_contingency": ("Basis contingency", "each expiry revalued at spot × (1 + spot_up) and (1 + spot_down); its "
                          "worst loss × (add_factor + mult_factor × t) summed over expiries, a candidate worst loss"),
    "position_contingency": ("Position contingency", "|perpetual q| × spot × perp_*, and net naked short options per "
                             "strike × spot × option_* (IM adds the initial rate on top of maintenance)"),
    "confidence_contingency": ("Oracle-confidence contingency", "IM only: an exposure whose feed confidence c < "
                               "threshold is charged (1 − c) × scale × notional"),
    "peg_loss": ("Stable-coin peg loss", "IM only: below threshold the IM loss factor grows by (threshold − price) × "
                 "factor"),
    "calendar_basis": ("Calendar basis add-on", "deltas per expiry bucket (perpetuals, then up to each of "
                       "bucket_edges_days, then beyond), long buckets matched against short ones in proportion, each "
                       "matched pair × the larger of its buckets' bucket_rates"),
    "concentration": ("Concentration add-on", "rate × max(0, N − liquidity_notional)^1.5 / liquidity_notional^0.5, "
                      "N = |net delta| of the underlying in the quote currency"),
}
_ADD_ONS = ("static_discount", "basis_contingency", "position_contingency", "confidence_contingency", "peg_loss",
            "calendar_basis", "concentration")


def _describe_scenarios(m: ScenarioMethodology, title: str) -> list[str]:
    out = [f"  {title}: scenario methodology {m.name!r}"]
    out.append(f"    Scenario table, {len(m.scenarios)} rows (each row's P&L × weight; the worst loss per group):")
    out.append("        row  spot move  vol shock           weight  group")
    for i, r in enumerate(m.scenarios):
        out.append(f"      {i:>5}  {_pct(r.spot_move):>9}  {r.vol_shock:<11}  {_num(r.weight):>13}  {r.group}")
    counts = {g: sum(1 for r in m.scenarios if r.group == g) for g in ("regular", "extreme", "skew", "basis")}
    out.append("      rows per group: " + ", ".join(f"{g} {n}" for g, n in counts.items() if n))
    for key in ("vol_shock", "skew_shock"):
        label, text = _PART_TEXT[key]
        part = getattr(m, key)
        if part is None:
            out.append(f"    {label} ({key}): off")
        else:
            out.append(f"    {label} ({key}): {text}")
            out.append(_params(part, "        "))
    reval = {"expiry_sum": "each expiry's options revalued together", "risk_array": "per-contract risk arrays × quantities"}
    out.append(f"    Revaluation: revaluation = {m.revaluation} ({reval[m.revaluation]}), options on the expiry's forward; "
               f"discount_options = {_num(m.discount_options)}, collateral_haircuts_as_contingency = "
               f"{_num(m.collateral_haircuts_as_contingency)}")
    if m.combination == "loss_factor":
        rule = "margin = loss_factor × worst weighted loss − contingencies + mark-to-market + cash (signed)"
    else:
        rule = "margin = max(scan, extreme_cover × extreme, short-option minimum) + add-ons (a requirement)"
    out.append(f"    Combination: combination = {m.combination}: {rule}")
    for key in ("loss_factors", "max_of_groups"):
        label, text = _PART_TEXT[key]
        part = getattr(m, key)
        out.append(f"      {label} ({key}): " + ("off" if part is None else text))
        if part is not None:
            out.append(_params(part, "          "))
    out.append("    Add-ons:")
    for key in _ADD_ONS:
        label, text = _PART_TEXT[key]
        part = getattr(m, key)
        if part is None:
            out.append(f"      {label} ({key}): off")
        else:
            out.append(f"      {label} ({key}): on: {text}")
            out.append(_params(part, "          "))
    return out


_STANDARD_TEXT = (
    ("Short option IM", "mark + max(option_im_rate × S − OTM, option_im_floor × S)", ("option_im_rate", "option_im_floor")),
    ("Short call MM", "mark + call_mm_rate × S", ("call_mm_rate",)),
    ("Short put MM", "mark + max(put_mm_rate × S, put_mm_mark_rate × mark)", ("put_mm_rate", "put_mm_mark_rate")),
    ("IM at least k × MM", "short puts / calls", ("put_im_mm_multiple", "call_im_mm_multiple")),
    ("Perpetuals and futures", "rate × notional (from instrument: its rates and margin tiers)", ("linear_im_rate", "linear_mm_rate")),
    ("Per-expiry max-loss floor", "min(Σ isolated charges, the expiry's max loss + unpaired calls × scale × forward)",
     ("max_loss_floor", "unpaired_call_im_scale", "unpaired_call_mm_scale")),
    ("Option values in collateral", "true: a short's mark counted in its charge and in collateral; false: once",
     ("option_value_in_collateral",)),
    ("Base-asset collateral", "amount × price × factor (× im scale for IM) instead of the asset's weights",
     ("base_asset_margin_factor", "base_asset_im_scale")),
    ("Stable-coin depeg add-on (IM)", "(threshold − price) × factor × S × size", ("depeg_threshold", "depeg_factor")),
    ("Oracle-confidence add-on (IM)", "(1 − confidence) × factor × S × size below a threshold",
     ("oracle_factor", "oracle_linear_threshold", "oracle_option_threshold", "oracle_base_threshold")),
)


def _describe_standard(s: StandardParams) -> list[str]:
    out = [f"Standard margin (per position): {s.name!r}"]
    for label, text, names in _STANDARD_TEXT:
        values = ", ".join(f"{n} = {_val(n, getattr(s, n))}" for n in names)
        out.append(f"  {label}: {text}")
        out.append(f"      {values}")
    return out


# --------------------------------------------------------------------------------------------
# Methodology
# --------------------------------------------------------------------------------------------


def _from_dict(d: dict[str, Any]) -> Methodology:
    return Methodology.from_dict(d)


class Methodology:
    """How standard and portfolio margin are computed: `name`, `portfolio` (a `Portfolio`) and
    `standard` (a `StandardParams`), validated at construction. See the module docstring and
    docs/methodology-files.md.

    `Methodology(name, portfolio=..., standard=...)`: `portfolio` a preset name, a
    `[portfolio]` table (dict), a `ScenarioMethodology`, a `MethodologyByUnderlying` or a
    `Portfolio`; `standard` a preset name, a `[standard]` table or a `StandardParams`.

    >>> import margin_engine as me
    >>> from margin_engine.presets.derive import derive_pmrm2
    >>> me.Methodology("mine", portfolio=derive_pmrm2(), standard="derive_standard")
    Methodology('mine', portfolio=Portfolio('derive_pmrm2': 31 scenarios), standard='derive_standard')
    """

    __slots__ = ("name", "portfolio", "standard", "maintenance_basis", "_key")

    name: str
    portfolio: Portfolio
    standard: StandardParams
    maintenance_basis: str
    """``"mark"`` (the default) or ``"entry"``: the notional an isolated position's maintenance
    margin is charged on (Bybit and KuCoin charge isolated positions on the entry notional;
    docs/methodology.md §10.2). Read by ``isolated_margin``; cross accounts stay on the mark."""

    def __init__(self, name: str, portfolio: Any = "v1", standard: Any = "v1", maintenance_basis: str = "mark") -> None:
        if not isinstance(name, str) or not name:
            raise _error(("name",), f"expected a non-empty string, got {name!r}", None)
        if maintenance_basis not in MAINTENANCE_BASES:
            raise _error(("maintenance_basis",), f"expected 'mark' or 'entry', got {maintenance_basis!r}", None)
        object.__setattr__(self, "maintenance_basis", maintenance_basis)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "portfolio", _portfolio_part(portfolio, ("portfolio",), name))
        object.__setattr__(self, "standard", _standard_part(standard, ("standard",)))
        object.__setattr__(self, "_key", json.dumps(self.to_dict(), sort_keys=True))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("a Methodology is immutable: build a new one (Methodology.preset(..., **overrides))")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("a Methodology is immutable")

    # --- construction ----------------------------------------------------------------------

    @classmethod
    def preset(cls, name: str, /, **overrides: Any) -> Methodology:
        """A preset (`PRESETS`), optionally changed.

        Overrides: `name=` (the methodology's name); `portfolio=` / `standard=` (another preset's
        part by name, or a part object: `ScenarioMethodology`, `StandardParams`, ...); then any
        portfolio or standard parameter, dotted (`**{"loss_factors.maintenance": 0.8}`,
        `**{"standard.put_mm_rate": 0.1}`) or as a nested table (`vol_shock={"vol_up": 0.5}`),
        `False` switching an optional part off. On a recipe (v1, exchange) the portfolio
        overrides apply to every underlying's scan table built from the book's risk_params;
        `underlyings={"BTC": {...}}` gives per-underlying arguments (exchange) or patches
        (explicit scenario tables). An unknown override raises `MarginInputError` naming it.

        >>> import margin_engine as me
        >>> m = me.Methodology.preset("derive_pmrm2", **{"loss_factors.maintenance": 0.7})
        >>> m.portfolio.default.loss_factors.maintenance
        0.7
        """
        base_p, base_s = _preset_parts(name, ("preset",), None)
        overrides = dict(overrides)
        new_name = overrides.pop("name", name)
        if not isinstance(new_name, str) or not new_name:
            raise _error(("name",), f"expected a non-empty string, got {new_name!r}", None)
        basis = overrides.pop("maintenance_basis", "mark")
        if "portfolio" in overrides:
            base_p = _portfolio_part(overrides.pop("portfolio"), ("portfolio",), new_name)
        if "standard" in overrides:
            base_s = _standard_part(overrides.pop("standard"), ("standard",))
        p_patch, s_patch = _route_overrides(overrides)
        portfolio = _build_portfolio(p_patch, base_p, ("portfolio",), None, new_name) if p_patch else base_p
        standard = _build_standard(s_patch, base_s, ("standard",), None) if s_patch else base_s
        return cls(new_name, portfolio, standard, basis)

    @classmethod
    def from_dict(cls, data: Any, *, _source: _Source | None = None) -> Methodology:
        """From the plain structure of `to_dict` (a parsed file): top-level `name`, optional
        `preset`, `portfolio` and `standard` tables (docs/methodology-files.md)."""
        src = _source
        _need_table(data, (), src, "a methodology table (name, preset, portfolio, standard)")
        if src is not None and src.kind == "json":
            src.lines()
            if src.duplicates:
                path, line = src.duplicates[0]
                raise _error(path, f"given twice (line {line}); a key may appear once", src)
        _check_keys(data, _TOP_KEYS, (), src)
        base_p: Portfolio | None = None
        base_s: StandardParams | None = None
        preset = data.get("preset")
        if preset is not None:
            base_p, base_s = _preset_parts(preset, ("preset",), src)
        name = data.get("name", preset)
        if name is None:
            raise _error(("name",), "missing: a methodology file starts with name = \"...\"", src)
        if not isinstance(name, str) or not name:
            raise _error(("name",), f"expected a non-empty string, got {name!r}", src)
        if "portfolio" in data:
            p = data["portfolio"]
            if isinstance(p, (Portfolio, ScenarioMethodology, MethodologyByUnderlying)):
                portfolio = _portfolio_part(p, ("portfolio",), name)
            else:
                portfolio = _build_portfolio(p, base_p, ("portfolio",), src, name)
        elif base_p is not None:
            portfolio = base_p
        else:
            raise _error(("portfolio",), "missing: give a [portfolio] table (recipe = \"v1\", or a scenario table) "
                                         "or a top-level preset", src)
        if "standard" in data:
            s = data["standard"]
            standard = s if isinstance(s, StandardParams) else _build_standard(s, base_s or V1, ("standard",), src)
        elif base_s is not None:
            standard = base_s
        else:
            raise _error(("standard",), "missing: give a [standard] table (preset = \"v1\" for the v1 rules) "
                                        "or a top-level preset", src)
        basis = data.get("maintenance_basis", "mark")
        if basis not in MAINTENANCE_BASES:
            raise _error(("maintenance_basis",), f"expected \"mark\" or \"entry\", got {basis!r}", src)
        return cls(name, portfolio, standard, basis)

    @classmethod
    def from_file(cls, path: str | Path) -> Methodology:
        """Read a TOML (`.toml`) or JSON (`.json`) methodology file (docs/methodology-files.md).

        An unknown or misspelt key raises `MarginInputError` naming the key path, its line and
        the closest known key; so does any bad value."""
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix not in (".toml", ".json"):
            raise input_error(_TABLE, "*", f"{path}: a methodology file ends in .toml or .json")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise input_error(_TABLE, "*", f"cannot read {path}: {e}") from None
        kind = suffix[1:]
        data = _toml_loads(text, path.name) if kind == "toml" else _json_loads(text, path.name)
        return cls.from_dict(data, _source=_Source(path.name, kind, text))

    # --- output ----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """The plain structure of a methodology file (no preset reference: every number is in it)."""
        out = {"name": self.name, "portfolio": self.portfolio.to_dict(), "standard": _standard_dict(self.standard)}
        if self.maintenance_basis != "mark":  # the default is left out: files of the mark basis stay as they were
            out["maintenance_basis"] = self.maintenance_basis
        return out

    def to_file(self, path: str | Path) -> None:
        """Write `to_dict` as TOML (`.toml`) or JSON (`.json`), atomically (a temporary file
        beside the target, synced, then renamed over it); `from_file` reads it back equal."""
        from margin_engine.io import atomic_path

        path = Path(path)
        suffix = path.suffix.lower()
        if suffix == ".toml":
            text = f"# margin-engine methodology {self.name!r} (docs/methodology-files.md)\n" + _toml_dumps(self.to_dict())
        elif suffix == ".json":
            text = json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"
        else:
            raise input_error(_TABLE, "*", f"{path}: a methodology file ends in .toml or .json")
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")

    def resolve(self, risk_params: Any = None) -> tuple[MethodologyByUnderlying, StandardParams]:
        """The scenario methodology of every underlying of a book with this `risk_params` table
        (columns of `margin_engine.Book`'s risk_params; None: the defaults), and the standard
        parameters."""
        return self.portfolio.resolve(risk_params, self.name), self.standard

    def engine_dict(self, risk_params: Any = None) -> dict[str, Any]:
        """The plain, JSON-able structure the Rust engine reads:
        `{"name", "is_v1_portfolio", "portfolio": {"default": <ScenarioMethodology.to_dict()>,
        "by_underlying": {underlying: <to_dict()>}}, "standard": <StandardParams fields>,
        "is_v1_standard"}`. `is_v1_portfolio`: the v1 recipe with no override (the engine keeps
        its v1 kernel); `is_v1_standard`: the standard numbers are V1's."""
        resolved, standard = self.resolve(risk_params)
        return {
            "name": self.name,
            "is_v1_portfolio": self.portfolio.is_v1,
            "portfolio": {
                "default": resolved.default.to_dict(),
                "by_underlying": {u: m.to_dict() for u, m in sorted(resolved.by_underlying.items())},
            },
            "standard": standard.to_dict(),
            "is_v1_standard": _standard_numbers(standard) == _standard_numbers(V1),
        }

    def describe(self, risk_params: Any = None) -> str:
        """A summary a risk manager can read: every scenario table (rows, moves, vol shocks,
        weights, groups), the vol-shock parameters, the combination rule, each add-on on or off
        with its parameters, and the standard rules in force. With `risk_params`, a recipe's
        tables are shown for each underlying of that table."""
        p = self.portfolio
        out = [f"Methodology {self.name!r}", ""]
        if p.recipe is not None:
            what = {"v1": "the v1 recipe: each underlying's scan grid from the book's risk_params row (scan range "
                          "price_range in price_steps steps × vol down / none / up, ± extreme_move × range covered "
                          "at extreme_cover)",
                    "exchange": "the exchange recipe: v1 per underlying plus the calendar-basis and concentration "
                                "add-ons"}[p.recipe]
            out.append(f"Portfolio margin: {what}")
            if p.patch:
                out.append("  overrides on every underlying: " + ", ".join(
                    f"{k} = {_val(k, v) if not isinstance(v, Mapping) else v}" for k, v in _flat(p.patch)))
            for u, a in sorted(p.recipe_args.items()):
                out.append(f"  {u}: " + ", ".join(f"{k} = {_num(v)}" for k, v in a.items()))
            shown = "the book's risk_params" if risk_params is not None else "the default risk parameters"
            out.append(f"  (tables below: {shown})")
        else:
            own = f"; own tables for {', '.join(sorted(p.by_underlying))}" if p.by_underlying else ""
            out.append(f"Portfolio margin: explicit scenario methodology, the same for every underlying{own}")
        resolved = p.resolve(risk_params, self.name)
        out += _describe_scenarios(resolved.default, "every underlying" if not resolved.by_underlying else "default")
        for u, m in sorted(resolved.by_underlying.items()):
            out += _describe_scenarios(m, f"underlying {u}")
        out.append("")
        out += _describe_standard(self.standard)
        out.append("")
        out.append(f"Isolated positions: maintenance margin on the {self.maintenance_basis} notional"
                   + (" (|Σ quantity × entry price| × multiplier, as Bybit and KuCoin; initial margin on the mark)"
                      if self.maintenance_basis == "entry" else " (|quantity| × multiplier × mark)"))
        return "\n".join(out) + "\n"

    # --- value semantics -------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Methodology) and self._key == other._key

    def __hash__(self) -> int:
        return hash(self._key)

    def __reduce__(self) -> Any:
        return (_from_dict, (self.to_dict(),))

    def __repr__(self) -> str:
        return f"Methodology({self.name!r}, portfolio={self.portfolio!r}, standard={self.standard.name!r})"


def _flat(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for k, v in d.items():
        if isinstance(v, Mapping):
            out += _flat(v, f"{prefix}{k}.")
        elif isinstance(v, (list, tuple)) and v and isinstance(v[0], Mapping):
            out.append((f"{prefix}{k}", f"{len(v)} rows"))
        else:
            out.append((f"{prefix}{k}", v))
    return out
