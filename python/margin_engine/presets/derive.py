"""Derive (Lyra v2) portfolio margin, PMRM_2, as a parameter set of the scenario engine.

Derive publishes its PMRM_2 risk manager with portfolio test cases (derivexyz/v2-core,
`test/risk-managers/unit-tests/PMRM_2/portfolio_cases/`), each a JSON object with the account
(`Scenario`: cash, collateral coins, perpetuals, options, feeds with SVI vol slices), the
parameters (`Parameters`) and the expected result (`Result`). This module

- maps Derive's parameter names onto ours (`methodology_from_derive`) and builds the
  `derive_pmrm2` preset from Derive's baseline parameter set (`presets/data/`);
- turns one case into our tables (`case_tables`) and the tables into the scenario engine's
  portfolio (`portfolio_from_tables`).

Derive's code is under the Business Source License; nothing here is taken from it. The rules
are described in our own words in `margin_engine.reference.scenarios` and docs/methodologies.md.

How Derive's case inputs become ours:
- the account is one underlying (`underlying=`, "BASE" unless given) whose index is
  `SpotPrice`; cash (`Cash`) is a balance of the quote coin `USDC`, whose price is
  `StablePrice`;
- a collateral coin is an asset with its USD `Price`, haircuts and feed confidence; its value
  in the quote coin is `amount × price / StablePrice`; `IsRiskCancelling` coins are linked to
  the underlying (they move with it in every scenario);
- perpetuals: one instrument on `PerpPrice`, with the unsettled cash
  `UnrealisedPerpPNL + UnrealisedFunding`;
- options: one instrument per (expiry, strike, type); expiry = valuation time
  (1630000000 s, the harness's clock) + `Expiry` seconds; the implied vol of each strike is
  the expiry's SVI slice at that strike (`margin_engine.vol.svi_implied_vol`, with Derive's
  wing guards: k within ±4·sqrt(a + bσ), total variance at most 144, over the slice's own time
  `SVIparam[6]`);
- per expiry (`expiry_feeds`): the forward, the rate, and the lowest confidence of the forward,
  rate and vol feeds. Within the last 30 minutes before expiry the forward is partly fixed (the
  settlement average has started): fixed part `F × (1800 − s) / 1800`, variable part
  `F × s / 1800` for `s` seconds left, as Derive's test feeds are set up.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from typing import NamedTuple
from importlib import resources
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from margin_engine._inputs import input_error
from margin_engine.methodology_params import (
    BasisContingency,
    ConfidenceContingency,
    LossFactors,
    PegLoss,
    PositionContingency,
    ScenarioMethodology,
    ScenarioRow,
    SkewShock,
    StaticDiscount,
    VolShock,
)
from margin_engine.reference.scenarios import (
    CollateralHolding,
    ExpiryHolding,
    OptionHolding,
    ScenarioPortfolio,
)
from margin_engine.vol import svi_implied_vol

__all__ = [
    "REFERENCE_TIME_S",
    "DeriveCaseTables",
    "baseline_parameters",
    "DeriveCase",
    "case_inputs",
    "case_methodology",
    "case_tables",
    "derive_pmrm2",
    "methodology_from_derive",
    "portfolio_from_tables",
]

REFERENCE_TIME_S = 1_630_000_000
"""The valuation time of Derive's portfolio cases (their harness's clock), Unix seconds."""

QUOTE_ASSET = "USDC"
FIXING_WINDOW_S = 1800.0
"""Last 30 minutes before expiry: the settlement average has started (forward partly fixed)."""
REGULAR_MAX_MOVE = 0.18
"""Derive's regular grid spans ±18%; rows beyond (other than skew rows) are extreme ("tail")."""
SVI_K_BOUND_SCALE = 4.0
SVI_MAX_TOTAL_VARIANCE = 144.0

_VOL_DIRECTIONS = {"Up": "up", "Down": "down", "None": "none", "LINEAR": "skew_linear", "ABS": "skew_abs"}

# Derive's parameter groups and names -> (our part, our name)
_PARAMETER_NAMES: dict[str, dict[str, tuple[str, str]]] = {
    "VolShock": {
        "VOLRANGEUP": ("vol_shock", "vol_up"),
        "VOLRANGEDOWN": ("vol_shock", "vol_down"),
        "SHORTTERMPOWER": ("vol_shock", "short_term_power"),
        "LONGTERMPOWER": ("vol_shock", "long_term_power"),
        "DTE_FLOOR": ("vol_shock", "dte_floor_days"),
        "MIN_VOL_EVAL_SHOCKED": ("vol_shock", "min_shocked_vol_up"),
    },
    "SkewShock": {
        "LINEAR_SCALE_CAP": ("skew_shock", "linear_cap"),
        "LINEAR_CBASE": ("skew_shock", "linear_cap_slope"),
        "ABS_SCALE_CAP": ("skew_shock", "abs_cap"),
        "ABS_CBASE": ("skew_shock", "abs_cap_slope"),
        "MIN_K_STAR": ("skew_shock", "min_k_star"),
        "MIN_WIDTH_SCALE": ("skew_shock", "width_scale"),
        "VOL_PARAM_STATIC": ("skew_shock", "vol_level"),
        "VOL_PARAM_SCALE": ("skew_shock", "vol_level_slope"),
    },
    "Margin": {
        "MM_LOSS_FACTOR": ("loss_factors", "maintenance"),
        "IM_LOSS_FACTOR": ("loss_factors", "initial"),
        "BASE_STATIC_DISCOUNT": ("static_discount", "long_base"),
        "LONG_RATE_MULTSCALE": ("static_discount", "long_rate_mult"),
        "LONG_RATE_ADDSCALE": ("static_discount", "long_rate_add"),
        "BASE_STATIC_DISCOUNT_NEG": ("static_discount", "short_base"),
        "SHORT_RATE_MULTSCALE": ("static_discount", "short_rate_mult"),
        "SHORT_RATE_ADDSCALE": ("static_discount", "short_rate_add"),
    },
    "BasisContingency": {
        "SCENARIO_SPOT_UP": ("basis_contingency", "spot_up"),
        "SCENARIO_SPOT_DOWN": ("basis_contingency", "spot_down"),
        "BASIS_CONT_ADD_FACTOR": ("basis_contingency", "add_factor"),
        "BASIS_CONT_MULT_FACTOR": ("basis_contingency", "mult_factor"),
    },
    "OtherContingency": {
        "PEG_LOSS_THRESHOLD": ("peg_loss", "threshold"),
        "PEG_LOSS_FACTOR": ("peg_loss", "factor"),
        "CONF_THRESHOLD": ("confidence_contingency", "threshold"),
        "CONF_MARGIN": ("confidence_contingency", "scale"),
        "MM_PERP_PERCENT": ("position_contingency", "perp_maintenance"),
        "IM_PERP_PERCENT": ("position_contingency", "perp_initial"),
        "MM_OPTION_PERCENT": ("position_contingency", "option_maintenance"),
        "IM_OPTION_PERCENT": ("position_contingency", "option_initial"),
        # Published in the parameter files but read by no rule of PMRM_2:
        "IM_PERP_PERCENT_NORMAL": ("", ""),
        "IM_OPTION_PERCENT_NORMAL": ("", ""),
    },
}


def baseline_parameters() -> dict[str, Any]:
    """Derive's baseline PMRM_2 parameter set as published (Derive's own names), with its
    provenance under `"source"` (see presets/data/README.md)."""
    text = resources.files("margin_engine.presets").joinpath("data/pmrm2_baseline_parameters.json").read_text()
    data: dict[str, Any] = json.loads(text)
    return data


def _scenario_row(raw: dict[str, Any]) -> ScenarioRow:
    unknown = sorted(set(raw) - {"SpotShock", "VolShockDirection", "DampeningFactor"})
    if unknown:
        raise input_error("derive.Parameters", f"Scenarios.{unknown[0]}", "unknown scenario field")
    direction = raw.get("VolShockDirection")
    if direction not in _VOL_DIRECTIONS:
        raise input_error("derive.Parameters", "Scenarios.VolShockDirection", f"unknown direction {direction!r}")
    vol_shock = _VOL_DIRECTIONS[direction]
    move = float(raw["SpotShock"]) - 1.0
    if vol_shock.startswith("skew"):
        group = "skew"
    elif abs(move) <= REGULAR_MAX_MOVE + 1e-9:
        group = "regular"
    else:
        group = "extreme"
    return ScenarioRow(spot_move=move, vol_shock=vol_shock, weight=float(raw.get("DampeningFactor", 1.0)), group=group)


def methodology_from_derive(parameters: dict[str, Any], *, name: str = "derive_pmrm2") -> ScenarioMethodology:
    """Our `ScenarioMethodology` from a Derive PMRM_2 parameter set (`Parameters` of a case,
    with `Scenarios` a list). Unknown groups or names are an error naming them."""
    parts: dict[str, dict[str, Any]] = {}
    for group, values in parameters.items():
        if group == "Scenarios":
            continue
        if group not in _PARAMETER_NAMES:
            raise input_error("derive.Parameters", group, "unknown parameter group")
        for key, value in values.items():
            if key not in _PARAMETER_NAMES[group]:
                raise input_error("derive.Parameters", f"{group}.{key}", "unknown parameter")
            part, ours = _PARAMETER_NAMES[group][key]
            if part:
                parts.setdefault(part, {})[ours] = value
    bc = parts.get("basis_contingency")
    if bc is not None:  # Derive gives the basis scenarios as spot multipliers
        bc = dict(bc)
        for key in ("spot_up", "spot_down"):
            if key in bc:
                bc[key] = float(bc[key]) - 1.0
    scenarios = parameters.get("Scenarios")
    if not isinstance(scenarios, list):
        raise input_error("derive.Parameters", "Scenarios", "expected the list of scenarios")
    return ScenarioMethodology(
        name=name,
        scenarios=tuple(_scenario_row(s) for s in scenarios),
        vol_shock=VolShock(**parts["vol_shock"]),
        loss_factors=LossFactors(**parts["loss_factors"]),
        skew_shock=SkewShock(**parts["skew_shock"]) if "skew_shock" in parts else None,
        static_discount=StaticDiscount(**parts["static_discount"]) if "static_discount" in parts else None,
        basis_contingency=BasisContingency(**bc) if bc is not None else None,
        position_contingency=PositionContingency(**parts.get("position_contingency", {})),
        confidence_contingency=ConfidenceContingency(**parts["confidence_contingency"])
        if "confidence_contingency" in parts
        else None,
        peg_loss=PegLoss(**parts["peg_loss"]) if "peg_loss" in parts else None,
        discount_options=True,
        collateral_haircuts_as_contingency=True,
    )


def derive_pmrm2() -> ScenarioMethodology:
    """The `derive_pmrm2` preset: Derive's baseline PMRM_2 parameters in our terms."""
    return methodology_from_derive(baseline_parameters()["baseline"])


def case_parameters(case: dict[str, Any]) -> dict[str, Any]:
    """A case's full Derive parameter set: the baseline with the case's
    `parameter_diff_vs_baseline` applied (`"Group.NAME": [baseline, case value]`; a
    `"Scenarios"` entry means the case's own scenario list, given in its `Parameters`)."""
    inputs = case["published_inputs"]
    params = copy.deepcopy(baseline_parameters()["baseline"])
    for key, change in inputs.get("parameter_diff_vs_baseline", {}).items():
        if key == "Scenarios":
            params["Scenarios"] = copy.deepcopy(inputs["Parameters"]["Scenarios"])
            continue
        group, _, name = key.partition(".")
        if group not in params or name not in params[group]:
            raise input_error("derive.parameter_diff_vs_baseline", key, "unknown parameter")
        before, after = change
        if not math.isclose(float(params[group][name]), float(before), rel_tol=0, abs_tol=1e-15):
            raise input_error("derive.parameter_diff_vs_baseline", key, f"baseline is {params[group][name]}, diff says {before}")
        params[group][name] = after
    return params


def case_methodology(case: dict[str, Any]) -> ScenarioMethodology:
    """The methodology of one published case: `derive_pmrm2` with the case's overrides."""
    return methodology_from_derive(case_parameters(case))


@dataclass
class DeriveCaseTables:
    """One Derive case as our tables (one account, `account_id` 0).

    - `instruments`: instrument, kind (`perpetual` / `option`), underlying, multiplier, expiry
      (timestamp, ns), strike, option_type;
    - `assets`: asset, price (USD), underlying (the linked underlying of a risk-cancelling coin,
      else null), maintenance_haircut, initial_haircut, price_confidence;
    - `positions`: account_id, instrument, quantity, unsettled_cash (perpetual P&L and funding
      not yet settled);
    - `balances`: account_id, asset, amount (the quote coin `USDC` is the cash);
    - `index_prices`: underlying, index_price, confidence;
    - `marks`: instrument, mark_price (options: discounted Black-76 on the forward; perpetuals:
      the perpetual's price), implied_vol (options), confidence;
    - `expiry_feeds`: underlying, expiry, forward, forward_fixed, rate, confidence;
    - `valuation_time_ns`; `methodology`: the case's methodology.
    """

    instruments: pa.Table
    assets: pa.Table
    positions: pa.Table
    balances: pa.Table
    index_prices: pa.Table
    marks: pa.Table
    expiry_feeds: pa.Table
    valuation_time_ns: int
    methodology: ScenarioMethodology


def _table(columns: dict[str, list[Any]], types: dict[str, pa.DataType]) -> pa.Table:
    """A table of the given columns; a column not in `types` is float64."""
    return pa.table({name: pa.array(values, types.get(name, pa.float64())) for name, values in columns.items()})


def _svi_vol(feed: dict[str, Any], strike: float) -> float:
    raw = feed["SVIparam"]
    a, b, rho, m, sigma = (float(x) for x in raw[:5])
    forward, tau = float(raw[5]), float(raw[6])
    vol: float = svi_implied_vol(
        (a, b, rho, m, sigma),
        forward,
        strike,
        tau,
        k_bound_scale=SVI_K_BOUND_SCALE,
        max_total_variance=SVI_MAX_TOTAL_VARIANCE,
    )
    return vol


def case_inputs(case: dict[str, Any], *, underlying: str = "BASE") -> DeriveCaseTables:
    """The inputs of one case of Derive's published PMRM_2 JSON as plain tables (see the module
    docstring for how each input maps); `case_tables` makes them a book and a market."""
    from margin_engine.reference.black76 import black76_scalar

    sc = case["published_inputs"]["Scenario"]
    meth = case_methodology(case)
    t0_ns = REFERENCE_TIME_S * 1_000_000_000
    spot = float(sc["SpotPrice"])
    stable = float(sc["StablePrice"])

    feeds: dict[int, dict[str, Any]] = {}
    for feed in sc.get("OptionFeeds", []):
        seconds = int(feed["FeedExpiry"])
        if seconds in feeds:
            raise input_error("derive.OptionFeeds", "FeedExpiry", "an expiry is given twice", [str(seconds)])
        feeds[seconds] = feed

    inst: dict[str, list[Any]] = {k: [] for k in ("instrument", "kind", "underlying", "multiplier", "expiry", "strike", "option_type")}
    pos: dict[str, list[Any]] = {k: [] for k in ("account_id", "instrument", "quantity", "unsettled_cash")}
    marks: dict[str, list[Any]] = {k: [] for k in ("instrument", "mark_price", "implied_vol", "confidence")}

    quantity_perp = float(sc.get("NumPerps", 0) or 0)
    if quantity_perp != 0.0:
        name = f"{underlying}-PERP"
        for k, v in zip(inst, (name, "perpetual", underlying, 1.0, None, None, None), strict=True):
            inst[k].append(v)
        unsettled = float(sc.get("UnrealisedPerpPNL", 0.0)) + float(sc.get("UnrealisedFunding", 0.0))
        for k, v in zip(pos, (0, name, quantity_perp, unsettled), strict=True):
            pos[k].append(v)
        for k, v in zip(marks, (name, float(sc["PerpPrice"]), None, float(sc["PerpConfidence"])), strict=True):
            marks[k].append(v)

    used_expiries: set[int] = set()
    for o in sc.get("Options", []):
        seconds = int(o["Expiry"])
        if seconds not in feeds:
            raise input_error("derive.Options", "Expiry", "no OptionFeeds entry for this expiry", [str(seconds)])
        used_expiries.add(seconds)
        feed = feeds[seconds]
        strike = float(o["Strike"])
        is_call = bool(int(o["IsCall"]))
        kind = "call" if is_call else "put"
        name = f"{underlying}-{seconds}-{strike:.10g}-{'C' if is_call else 'P'}"
        if name in inst["instrument"]:
            raise input_error("derive.Options", "Strike", "an option is given twice", [name])
        vol = _svi_vol(feed, strike)
        forward = float(feed["Forward"])
        years = seconds / (365 * 86400)
        discount = math.exp(-max(float(feed["Rate"]), 0.0) * years)
        mark = discount * black76_scalar(forward, strike, years, vol, is_call)[0]
        for k, v in zip(inst, (name, "option", underlying, 1.0, t0_ns + seconds * 1_000_000_000, strike, kind), strict=True):
            inst[k].append(v)
        for k, v in zip(pos, (0, name, float(o["Amount"]), 0.0), strict=True):
            pos[k].append(v)
        for k, v in zip(marks, (name, mark, vol, float(feed["OptionVolConfidences"])), strict=True):
            marks[k].append(v)

    ef: dict[str, list[Any]] = {k: [] for k in ("underlying", "expiry", "forward", "forward_fixed", "rate", "confidence")}
    for seconds in sorted(used_expiries):
        feed = feeds[seconds]
        forward = float(feed["Forward"])
        fixed = forward * (FIXING_WINDOW_S - seconds) / FIXING_WINDOW_S if seconds < FIXING_WINDOW_S else 0.0
        conf = min(float(feed["ForwardConfidence"]), float(feed["RateConfidence"]), float(feed["OptionVolConfidences"]))
        for k, v in zip(ef, (underlying, t0_ns + seconds * 1_000_000_000, forward, fixed, float(feed["Rate"]), conf), strict=True):
            ef[k].append(v)

    assets: dict[str, list[Any]] = {k: [] for k in ("asset", "price", "underlying", "maintenance_haircut", "initial_haircut", "price_confidence")}
    bals: dict[str, list[Any]] = {k: [] for k in ("account_id", "asset", "amount")}
    for k, v in zip(assets, (QUOTE_ASSET, stable, None, 0.0, 0.0, float(sc.get("StableConfidence", 1.0))), strict=True):
        assets[k].append(v)
    cash = float(sc.get("Cash", 0.0) or 0.0)
    if cash != 0.0:
        for k, v in zip(bals, (0, QUOTE_ASSET, cash), strict=True):
            bals[k].append(v)
    for c in sc.get("Collaterals", []):
        if c["Name"] in assets["asset"]:
            raise input_error("derive.Collaterals", "Name", "a coin is given twice", [c["Name"]])
        row = (
            c["Name"],
            float(c["Price"]),
            underlying if c["IsRiskCancelling"] else None,
            float(c["MMHaircut"]),
            float(c["IMHaircut"]),
            float(c["Confidence"]),
        )
        for k, v in zip(assets, row, strict=True):
            assets[k].append(v)
        for k, v in zip(bals, (0, c["Name"], float(c["Amount"])), strict=True):
            bals[k].append(v)

    ts, f64, s = pa.timestamp("ns"), pa.float64(), pa.string()
    index = {"underlying": [underlying], "index_price": [spot], "confidence": [float(sc.get("SpotConfidence", 1.0))]}
    return DeriveCaseTables(
        instruments=_table(inst, {"instrument": s, "kind": s, "underlying": s, "expiry": ts, "option_type": s}),
        assets=_table(assets, {"asset": s, "underlying": s}),
        positions=_table(pos, {"account_id": pa.int64(), "instrument": s}),
        balances=_table(bals, {"account_id": pa.int64(), "asset": s}),
        index_prices=_table(index, {"underlying": s}),
        marks=_table(marks, {"instrument": s}),
        expiry_feeds=_table(ef, {"underlying": s, "expiry": ts}),
        valuation_time_ns=t0_ns,
        methodology=meth,
    )


class DeriveCase(NamedTuple):
    """One Derive case as the engine's inputs: `me.margin(book, positions, balances, market,
    model="portfolio")` gives, in `free_collateral` and `margin_excess`, Derive's signed IM and MM."""

    book: Any
    market: Any
    positions: pa.Table
    balances: pa.Table


STANDARD_RATES_FOR_CASES = {"initial_margin_rate": 0.15, "maintenance_margin_rate": 0.075, "initial_margin_floor": 0.10}
"""The standard model's columns a book needs and Derive's PMRM_2 cases do not give: Deribit-like
rates (docs/presets.md); they only matter under `model="standard"`."""


def case_tables(case: dict[str, Any], *, underlying: str = "BASE") -> DeriveCase:
    """`(book, market, positions, balances)` of one case of Derive's published PMRM_2 JSON, with
    the case's methodology (`derive_pmrm2` and the case's overrides) inside the book.

    Derive counts money in its quote coin (USDC): the USDC asset is priced 1, a collateral coin
    at `Price / StablePrice` (its value in USDC), and the USDC price in dollars
    (`StablePrice`) is an index_prices row named `USDC`, read by the peg-loss add-on. Haircuts are
    weights (`maintenance_weight = 1 − MMHaircut`, `initial_weight = maintenance_weight −
    IMHaircut`), charged as contingencies by the methodology. A perpetual's unsettled P&L and
    funding are cash, added to the USDC balance. Options are on their expiry's forward
    (`expiry_feeds`: forward, the part already fixed, rate, the lowest of the feeds'
    confidences), marked at the discounted Black-76 value of their SVI vol.

    >>> import json, margin_engine as me
    >>> from importlib import resources
    >>> from margin_engine.presets import derive
    >>> case = derive.example_case()
    >>> book, market, positions, balances = derive.case_tables(case)
    >>> row = me.margin(book, positions, balances, market, model="portfolio").to_pylist()[0]
    >>> expected = case["published_expected"]["full"]
    >>> abs(row["margin_excess"] - float(expected["MM"])) <= 1e-8 * abs(float(expected["MM"]))
    True
    """
    import margin_engine as me

    t = case_inputs(case, underlying=underlying)
    ins = t.instruments
    for col, value in STANDARD_RATES_FOR_CASES.items():
        values = [None if (col == "initial_margin_floor" and k != "option") else value for k in ins.column("kind").to_pylist()]
        ins = ins.append_column(col, pa.array(values, pa.float64()))
    a = t.assets.to_pylist()
    stable = next(r["price"] for r in a if r["asset"] == QUOTE_ASSET)
    assets = {k: [] for k in ("asset", "price", "underlying", "initial_weight", "maintenance_weight",
                               "initial_liability_weight", "maintenance_liability_weight", "price_confidence")}
    for r in a:
        quote = r["asset"] == QUOTE_ASSET
        mw = 1.0 - r["maintenance_haircut"]
        row = (r["asset"], 1.0 if quote else r["price"] / stable, r["underlying"], mw - r["initial_haircut"], mw,
               1.0, 1.0, r["price_confidence"])
        for k, v in zip(assets, row, strict=True):
            assets[k].append(v)
    bad = [x for x, w in zip(assets["asset"], assets["initial_weight"], strict=True) if not 0.0 <= w]
    if bad:
        raise input_error("derive.Collaterals", "IMHaircut", "MMHaircut + IMHaircut exceeds 1", bad)
    unsettled = sum(v or 0.0 for v in t.positions.column("unsettled_cash").to_pylist())
    bal = t.balances.to_pylist()
    if unsettled != 0.0:
        cash = next((b for b in bal if b["asset"] == QUOTE_ASSET), None)
        if cash is None:
            bal.insert(0, {"account_id": 0, "asset": QUOTE_ASSET, "amount": unsettled})
        else:
            cash["amount"] += unsettled
    balances = pa.table({"account_id": pa.array([b["account_id"] for b in bal], pa.int64()),
                         "asset": pa.array([b["asset"] for b in bal], pa.string()),
                         "amount": pa.array([b["amount"] for b in bal], pa.float64())})
    idx = t.index_prices.to_pylist() + [{"underlying": QUOTE_ASSET, "index_price": stable, "confidence": 1.0}]
    index_prices = pa.table({"underlying": pa.array([r["underlying"] for r in idx], pa.string()),
                             "index_price": pa.array([r["index_price"] for r in idx], pa.float64()),
                             "confidence": pa.array([r["confidence"] for r in idx], pa.float64())})
    meth = me.Methodology(t.methodology.name, portfolio=t.methodology, standard="v1")
    book = me.Book(ins, pa.table({k: pa.array(v, pa.string() if k in ("asset", "underlying") else pa.float64())
                                  for k, v in assets.items()}), methodology=meth)
    market = me.Market(index_prices, t.marks, t.valuation_time_ns, expiry_feeds=t.expiry_feeds)
    return DeriveCase(book, market, t.positions.drop_columns(["unsettled_cash"]), balances)


def example_case() -> dict[str, Any]:
    """One of Derive's published PMRM_2 cases shipped with the package (a short call spread
    with a perpetual and collateral, see presets/data/README.md), for examples."""
    text = resources.files("margin_engine.presets").joinpath("data/pmrm2_example_case.json").read_text()
    data: dict[str, Any] = json.loads(text)
    return data


def portfolio_from_tables(tables: DeriveCaseTables, account_id: int = 0, *, underlying: str | None = None) -> ScenarioPortfolio:
    """The scenario engine's portfolio of one account on one underlying, read from the tables
    of `case_tables` (or tables of the same columns). Cash is the balance of the quote coin;
    coin values are converted to the quote coin at its price."""
    idx = tables.index_prices.to_pylist()
    if underlying is None:
        if len(idx) != 1:
            raise input_error("index_prices", "underlying", "several underlyings: name one with underlying=")
        underlying = idx[0]["underlying"]
    index = next((r for r in idx if r["underlying"] == underlying), None)
    if index is None:
        raise input_error("index_prices", "underlying", "no index price", [str(underlying)])
    assets = {r["asset"]: r for r in tables.assets.to_pylist()}
    quote_price = assets[QUOTE_ASSET]["price"]
    instruments = {
        r["instrument"]: r for r in _rows_with_int_times(tables.instruments, "expiry") if r["underlying"] == underlying
    }
    marks = {r["instrument"]: r for r in tables.marks.to_pylist()}
    feeds = {r["expiry"]: r for r in _rows_with_int_times(tables.expiry_feeds, "expiry") if r["underlying"] == underlying}
    t0_ns = tables.valuation_time_ns

    portfolio = ScenarioPortfolio(
        spot=index["index_price"], spot_confidence=index["confidence"], stable_price=quote_price
    )
    by_expiry: dict[Any, ExpiryHolding] = {}
    for p in tables.positions.to_pylist():
        if p["account_id"] != account_id or p["instrument"] not in instruments:
            continue
        ins = instruments[p["instrument"]]
        mark = marks.get(p["instrument"])
        if mark is None:
            raise input_error("marks", "instrument", "a held instrument has no mark", [str(p["instrument"])])
        if ins["kind"] == "perpetual":
            portfolio.perp_quantity += p["quantity"]
            portfolio.perp_mark = mark["mark_price"]
            portfolio.perp_confidence = mark["confidence"]
            portfolio.perp_unsettled += p["unsettled_cash"] or 0.0
        elif ins["kind"] == "option":
            expiry = ins["expiry"]
            feed = feeds.get(expiry)
            if feed is None:
                raise input_error("expiry_feeds", "expiry", "a held option's expiry has no feed", [str(p["instrument"])])
            holding = by_expiry.get(expiry)
            if holding is None:
                seconds = max((expiry - t0_ns) / 1e9, 0.0)
                holding = ExpiryHolding(
                    seconds_to_expiry=seconds,
                    forward_variable=feed["forward"] - feed["forward_fixed"],
                    forward_fixed=feed["forward_fixed"],
                    rate=feed["rate"],
                    options=[],
                    confidence=feed["confidence"],
                )
                by_expiry[expiry] = holding
            holding.options.append(
                OptionHolding(ins["strike"], ins["option_type"] == "call", p["quantity"], mark["implied_vol"])
            )
            holding.confidence = min(holding.confidence, mark["confidence"])
        else:
            raise input_error("instruments", "kind", "the scenario engine takes perpetuals and options", [str(ins["kind"])])
    portfolio.expiries = [by_expiry[k] for k in sorted(by_expiry)]
    for b in tables.balances.to_pylist():
        if b["account_id"] != account_id:
            continue
        if b["asset"] == QUOTE_ASSET:
            portfolio.cash += b["amount"]
            continue
        a = assets[b["asset"]]
        portfolio.collaterals.append(
            CollateralHolding(
                name=b["asset"],
                value=b["amount"] * a["price"] / quote_price,
                risk_cancelling=a["underlying"] == underlying,
                maintenance_haircut=a["maintenance_haircut"],
                initial_haircut=a["initial_haircut"],
                confidence=a["price_confidence"],
            )
        )
    return portfolio



def _rows_with_int_times(table: pa.Table, column: str) -> list[dict[str, Any]]:
    """`table.to_pylist()` with the timestamp `column` as integer nanoseconds."""
    idx = table.schema.get_field_index(column)
    ns = table.column(column).cast(pa.timestamp("ns")).cast(pa.int64())
    return table.set_column(idx, column, ns).to_pylist()
