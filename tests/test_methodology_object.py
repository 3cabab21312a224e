"""`me.Methodology` (python/margin_engine/methodology.py): presets, overrides, files, errors,
describe(), resolve() / engine_dict(), value semantics.

- every preset (and composed / overridden ones, and random explicit methodologies) goes through
  `to_file` / `from_file` in TOML and JSON to an equal object; the TOML we write parses, with
  tomllib, to exactly `to_dict`;
- the hand-written `docs/examples/my_venue.toml` loads to the numbers it states, and runs
  through the reference scenario engine (its calendar-basis add-on charges a perp-vs-future
  spread that the same table without it does not);
- a misspelt key, in TOML (table, inline row, array-of-tables row) and in JSON, names its key
  path, its line (found in the text by the test itself) and the closest known key; wrong types,
  out-of-range values, unknown presets / recipes / overrides and missing parts are
  `MarginInputError`s naming the key path;
- `describe()` shows every scenario row and every parameter of every part in force (read back
  from the text and compared with the object's fields);
- `engine_dict` of `v1` for a risk_params table is `v1_methodology` of each row.
"""

from __future__ import annotations

import json
import math
import pickle
import re
import sys
from dataclasses import fields
from pathlib import Path
from types import SimpleNamespace

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import margin_engine as me
from margin_engine.presets.calibrated import exchange_scan_ranges
from margin_engine import MarginInputError
from margin_engine.methodology import PRESETS, Portfolio
from margin_engine.methodology_params import (
    CalendarBasis,
    Concentration,
    LossFactors,
    MaxOfGroups,
    PositionContingency,
    ScenarioMethodology,
    ScenarioRow,
    SkewShock,
    StaticDiscount,
    VolShock,
    exchange_methodology,
    v1_methodology,
)
from margin_engine.presets.derive import derive_pmrm2
from margin_engine.reference._tables import DEFAULT_RISK_PARAMS, RiskParams
from margin_engine.reference.standard_params import DERIVE_STANDARD, V1, StandardParams

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
MY_VENUE = ROOT / "docs" / "examples" / "my_venue.toml"


def _variants() -> dict[str, me.Methodology]:
    out = {name: me.Methodology.preset(name) for name in PRESETS}
    out["derive_both"] = me.Methodology.preset("derive_standard", portfolio="derive_pmrm2", name="derive_both")
    out["v1_patched"] = me.Methodology.preset("v1", **{"vol_shock.vol_up": 0.5, "max_of_groups": {"im_factor": 1.5}})
    out["exchange_args"] = me.Methodology.preset(
        "exchange", underlyings={"BTC": {"basis_rate_scale": 2, "liquidity_notional": 5e7}, "weird key.x": {}}
    )
    out["pmrm2_per_underlying"] = me.Methodology.preset(
        "derive_pmrm2", static_discount=False, underlyings={"ETH": {"vol_shock": {"vol_up": 0.7}, "peg_loss": False}}
    )
    out["my_venue"] = me.Methodology.from_file(MY_VENUE)
    return out


VARIANTS = _variants()


def _round_trip(m: me.Methodology, tmp_path: Path, suffix: str) -> me.Methodology:
    target = tmp_path / f"m{suffix}"
    m.to_file(target)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "a temporary file was left behind"
    if suffix == ".toml":
        assert tomllib.loads(target.read_text(encoding="utf-8")) == m.to_dict()
    else:
        assert json.loads(target.read_text(encoding="utf-8")) == m.to_dict()
    return me.Methodology.from_file(target)


@pytest.mark.parametrize("suffix", [".toml", ".json"])
@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_round_trip_through_files(name, suffix, tmp_path):
    m = VARIANTS[name]
    back = _round_trip(m, tmp_path, suffix)
    assert back == m and hash(back) == hash(m)
    assert back.engine_dict() == m.engine_dict()
    assert pickle.loads(pickle.dumps(m)) == m


def test_presets_are_what_they_say():
    v1, exchange, pmrm2, dstd = (VARIANTS[n] for n in ("v1", "exchange", "derive_pmrm2", "derive_standard"))
    assert v1.portfolio.kind == "v1" and v1.standard == V1
    assert exchange.portfolio.kind == "exchange" and exchange.standard == V1
    assert pmrm2.portfolio.default == derive_pmrm2() and pmrm2.standard == V1
    assert dstd.portfolio.kind == "v1" and dstd.standard == DERIVE_STANDARD
    assert len({v1, exchange, pmrm2, dstd}) == 4
    assert VARIANTS["v1_patched"] != v1


def test_immutable():
    m = VARIANTS["v1"]
    with pytest.raises(AttributeError):
        m.name = "x"  # type: ignore[misc]
    with pytest.raises(TypeError):
        m.portfolio.patch["x"] = 1  # type: ignore[index]


# --------------------------------------------------------------------------------------------
# Random explicit methodologies round-trip
# --------------------------------------------------------------------------------------------

finite = st.floats(-10.0, 10.0, allow_nan=False, width=64)
positive = st.floats(1e-6, 10.0, allow_nan=False)
names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=12)


@st.composite
def explicit_methodologies(draw) -> me.Methodology:
    n = draw(st.integers(1, 6))
    rows = [
        ScenarioRow(draw(st.floats(-0.99, 3.0)), draw(st.sampled_from(("none", "up", "down"))),
                    draw(st.floats(0.0, 2.0)), draw(st.sampled_from(("regular", "extreme", "basis"))))
        for _ in range(n)
    ]
    skew = draw(st.booleans())
    if skew:
        rows.append(ScenarioRow(0.0, "skew_linear", 1.0, "skew"))
    revaluation = "expiry_sum" if skew or draw(st.booleans()) else "risk_array"
    combination = draw(st.sampled_from(("loss_factor", "max_of_groups")))
    meth = ScenarioMethodology(
        name=draw(names),
        scenarios=tuple(rows),
        vol_shock=VolShock(draw(positive), draw(positive), draw(positive), draw(positive), draw(positive)),
        loss_factors=LossFactors(draw(positive), draw(positive)),
        skew_shock=SkewShock(*(draw(positive) for _ in range(8))) if skew else None,
        static_discount=StaticDiscount(draw(positive)) if revaluation == "expiry_sum" and draw(st.booleans()) else None,
        position_contingency=PositionContingency(draw(positive)) if draw(st.booleans()) else None,
        discount_options=draw(st.booleans()),
        max_of_groups=MaxOfGroups(draw(positive), draw(positive), draw(positive)) if combination == "max_of_groups" else None,
        calendar_basis=CalendarBasis((1.0, 2.5), (0.1, 0.2, draw(positive), 0.0)) if draw(st.booleans()) else None,
        concentration=Concentration(draw(positive), draw(positive)) if draw(st.booleans()) else None,
        revaluation=revaluation,
        combination=combination,
    )
    own = {}
    for u in draw(st.lists(names, max_size=2, unique=True)):
        own[u] = meth.replace(loss_factors={"initial": draw(positive), "maintenance": 1.0}, concentration=None)
    standard = StandardParams(name=draw(names), put_mm_mark_rate=draw(st.floats(0, 1)), max_loss_floor=draw(st.booleans()))
    return me.Methodology(draw(names), portfolio=Portfolio(default=meth, by_underlying=own), standard=standard)


@settings(max_examples=25, deadline=None)
@given(explicit_methodologies(), st.sampled_from([".toml", ".json"]))
def test_random_explicit_methodologies_round_trip(m, suffix):
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        back = _round_trip(m, Path(d), suffix)
    assert back == m
    assert back.resolve()[0].by_underlying == m.resolve()[0].by_underlying


# --------------------------------------------------------------------------------------------
# The hand-written example
# --------------------------------------------------------------------------------------------


def test_my_venue_loads_to_what_it_states():
    m = VARIANTS["my_venue"]
    d = m.portfolio.default
    assert m.name == "my_venue" and d.name == "my_venue_portfolio"
    assert len(d.scenarios) == 13
    assert [r.group for r in d.scenarios].count("extreme") == 3
    assert d.scenarios[11] == ScenarioRow(-0.30, "up", 0.5, "extreme")
    assert d.static_discount is None and d.skew_shock is None and d.concentration is None
    assert d.vol_shock == VolShock(0.40, 0.25, 0.35, 0.15, 1.0, 30.0, 30.0, 0.30, 0.05)
    assert d.calendar_basis == CalendarBasis((7.0, 30.0, 90.0, 180.0), (0.004, 0.004, 0.008, 0.015, 0.025, 0.035))
    assert d.max_of_groups == MaxOfGroups(1.0, 0.0125, 1.3)
    assert (d.revaluation, d.combination, d.discount_options) == ("expiry_sum", "max_of_groups", True)
    eth = m.portfolio.by_underlying["ETH"]
    assert (eth.vol_shock.vol_up, eth.vol_shock.vol_down) == (0.55, 0.30)
    assert eth.replace(vol_shock=d.to_dict()["vol_shock"]) == d  # only the vol shocks differ
    s = m.standard
    assert (s.option_im_rate, s.option_im_floor, s.call_mm_rate, s.put_mm_rate) == (0.12, 0.08, 0.06, 0.06)
    assert (s.linear_im_rate, s.linear_mm_rate, s.max_loss_floor, s.option_value_in_collateral) == (0.04, 0.025, True, False)
    assert s.depeg_threshold is None and s.call_im_mm_multiple is None
    ed = m.engine_dict()
    assert ed["is_v1_portfolio"] is False and ed["is_v1_standard"] is False
    assert set(ed["portfolio"]["by_underlying"]) == {"ETH"}


def _calendar_book():
    """BTC index 60,000: a perpetual marked 60,000, a 90-day future marked 61,000, and a 30-day
    call; account 1 holds perp long / future short (a calendar spread), account 2 the call short."""
    valuation = 1_700_000_000 * 10**9
    day = 86_400 * 10**9
    instruments = pa.table({
        "instrument": ["BTC-PERP", "BTC-FUT-90D", "BTC-C-30D"],
        "kind": ["perpetual", "future", "option"],
        "underlying": ["BTC"] * 3,
        "multiplier": [1.0] * 3,
        "expiry": pa.array([None, valuation + 90 * day, valuation + 30 * day], pa.timestamp("ns")),
        "strike": pa.array([None, None, 62_000.0], pa.float64()),
        "option_type": pa.array([None, None, "call"], pa.utf8()),
        "initial_margin_rate": [0.1] * 3,
        "maintenance_margin_rate": [0.05] * 3,
        "initial_margin_floor": pa.array([None, None, 0.05], pa.float64()),
    })
    assets = pa.table({"asset": ["USD"], "price": [1.0], "initial_weight": [1.0], "maintenance_weight": [1.0],
                       "initial_liability_weight": [1.0], "maintenance_liability_weight": [1.0]})
    book = SimpleNamespace(instruments=instruments, assets=assets, risk_params=None, margin_tiers=None)
    positions = pa.table({"account_id": pa.array([1, 1, 2], pa.uint64()),
                          "instrument": ["BTC-PERP", "BTC-FUT-90D", "BTC-C-30D"],
                          "quantity": [100.0, -100.0, -10.0]})
    market = SimpleNamespace(
        index_prices=pa.table({"underlying": ["BTC"], "index_price": [60_000.0]}),
        marks=pa.table({"instrument": ["BTC-PERP", "BTC-FUT-90D", "BTC-C-30D"],
                        "mark_price": [60_000.0, 61_000.0, 2_000.0],
                        "implied_vol": pa.array([None, None, 0.6], pa.float64())}),
        valuation_time_ns=valuation,
    )
    return book, positions, market


def test_my_venue_runs_through_the_reference_engine():
    from margin_engine.reference.scenario_inputs import account_margins

    book, positions, market = _calendar_book()
    m = VARIANTS["my_venue"]
    with_basis = account_margins(book, positions, market, m.resolve(book.risk_params)[0])
    no_basis = account_margins(book, positions, market, me.Methodology.preset(
        "v1", portfolio=m, calendar_basis=False).resolve(None)[0])
    for margins in (with_basis, no_basis):
        assert all(math.isfinite(x) and x >= 0 for im_mm in margins.values() for x in im_mm)
    # the spread: 6,000,000 long perp delta vs 6,100,000 short 90-day delta, matched 6,000,000 at
    # the 90-day bucket's 1.5%: 90,000 of MM on top of the table's (the table sees 100 × 1,000 × move)
    assert with_basis[1][1] - no_basis[1][1] == pytest.approx(6_000_000 * 0.015, rel=1e-12)
    assert with_basis[1][0] == pytest.approx(1.3 * with_basis[1][1], rel=1e-12)
    assert with_basis[2][1] > 0.0125 * 10 * 60_000  # at least the short-option minimum


# --------------------------------------------------------------------------------------------
# Errors: key path, line, suggestion
# --------------------------------------------------------------------------------------------


def _line_of(text: str, needle: str, after: str | None = None) -> int:
    start = text.index(after) if after else 0
    return text[: text.index(needle, start)].count("\n") + 1


def _write(tmp_path: Path, text: str, suffix: str = ".toml") -> Path:
    p = tmp_path / f"venue{suffix}"
    p.write_text(text, encoding="utf-8")
    return p


def _raises(path: Path, column: str, *fragments: str) -> MarginInputError:
    with pytest.raises(MarginInputError) as info:
        me.Methodology.from_file(path)
    e = info.value
    assert e.table == "methodology" and e.column == column, str(e)
    for f in fragments:
        assert f in str(e), (f, str(e))
    return e


def test_misspelt_key_in_toml_names_key_line_and_suggestion(tmp_path):
    text = MY_VENUE.read_text(encoding="utf-8").replace("vol_up = 0.40", "vol_upp = 0.40")
    line = _line_of(text, "vol_upp")
    e = _raises(_write(tmp_path, text), "portfolio.vol_shock.vol_upp", f"line {line} of venue.toml", "did you mean vol_up")
    assert e.line == line


def test_misspelt_key_in_an_inline_scenario_row(tmp_path):
    text = MY_VENUE.read_text(encoding="utf-8")
    row = '{ spot_move = -0.08, vol_shock = "down", weight = 1.0,  group = "regular" }'
    text = text.replace(row, row.replace("weight", "weigth"))
    _raises(_write(tmp_path, text), "portfolio.scenarios[3].weigth", f"line {_line_of(text, 'weigth')} ", "did you mean weight")


def test_misspelt_key_in_an_array_of_tables_row_and_under_an_underlying(tmp_path):
    text = """name = "t"
[standard]
preset = "v1"

[portfolio]
[portfolio.vol_shock]
vol_up = 0.4
vol_down = 0.3
short_term_power = 0.3
long_term_power = 0.3

[[portfolio.scenarios]]
spot_move = -0.1

[[portfolio.scenarios]]
spot_move = 0.1
vol_shok = "up"
"""
    _raises(_write(tmp_path, text), "portfolio.scenarios[1].vol_shok", f"line {_line_of(text, 'vol_shok')} ", "did you mean vol_shock")
    text = text.replace("vol_shok", "vol_shock") + '\n[portfolio.underlyings."BTC-USD".loss_factors]\nmaintenanse = 0.9\n'
    _raises(_write(tmp_path, text), "portfolio.underlyings.BTC-USD.loss_factors.maintenanse",
            f"line {_line_of(text, 'maintenanse')} ", "did you mean maintenance")
    good = me.Methodology.from_file(_write(tmp_path, text.replace("maintenanse", "maintenance")))
    assert good.portfolio.by_underlying["BTC-USD"].loss_factors.maintenance == 0.9


def test_misspelt_key_in_json(tmp_path):
    m = VARIANTS["my_venue"]
    m.to_file(tmp_path / "v.json")
    text = (tmp_path / "v.json").read_text(encoding="utf-8")
    # the vol_up of the default's vol_shock (the one after "vol_shock": {), not the ETH patch's
    text = text.replace('"vol_up"', '"vol_upp"', 1)
    assert text.index('"vol_upp"') > text.index('"vol_shock": {')
    line = _line_of(text, '"vol_upp"')
    e = _raises(_write(tmp_path, text, ".json"), "portfolio.vol_shock.vol_upp", f"line {line} of venue.json", "did you mean vol_up")
    assert e.line == line
    # a row of the scenario list, by its index
    text = (tmp_path / "v.json").read_text(encoding="utf-8")
    pos = [i.start() for i in re.finditer('"weight"', text)][4]
    text = text[:pos] + '"wieght"' + text[pos + len('"weight"'):]
    _raises(_write(tmp_path, text, ".json"), "portfolio.scenarios[4].wieght", f"line {_line_of(text, 'wieght')} ")


def test_json_key_given_twice(tmp_path):
    text = '{"name": "x", "preset": "v1",\n "standard": {"put_mm_rate": 0.1,\n "put_mm_rate": 0.2}}'
    _raises(_write(tmp_path, text, ".json"), "standard.put_mm_rate", "given twice", "line 3")


@pytest.mark.parametrize(
    "old, new, column, fragment",
    [
        ("vol_up = 0.40", 'vol_up = "high"', "portfolio.vol_shock.vol_up", "expected a number"),
        ("vol_up = 0.40", "vol_up = true", "portfolio.vol_shock.vol_up", "expected a number"),
        ("dte_floor_days = 1.0", "dte_floor_days = 0.0", "portfolio.vol_shock.dte_floor_days", "must be > 0"),
        ("weight = 0.5, ", "weight = -0.5, ", "portfolio.scenarios[11].weight", "must be >= 0"),
        ("spot_move = -0.45", "spot_move = -1.5", "portfolio.scenarios[10].spot_move", "> -1"),
        ('vol_shock = "up",   weight = 0.35, group = "extreme" }', 'vol_shock = "sideways",   weight = 0.35, group = "extreme" }',
         "portfolio.scenarios[10].vol_shock", "must be one of"),
        ("bucket_rates = [0.004, 0.004, 0.008, 0.015, 0.025, 0.035]", "bucket_rates = [0.004, 0.008]",
         "portfolio.calendar_basis.bucket_rates", "needs 6 rates"),
        ('combination = "max_of_groups"', 'combination = "sum"', "portfolio.combination", "must be one of"),
        ("discount_options = true", "discount_options = 1", "portfolio.discount_options", "true or false"),
        ("put_mm_rate = 0.06", 'put_mm_rate = "six"', "standard.put_mm_rate", "expected a number"),
        ("put_mm_mark_rate = 0.05", "put_mm_mark_rate = -0.05", "standard.put_mm_mark_rate", ">= 0"),
        ("max_loss_floor = true", "max_loss_floor = 1", "standard.max_loss_floor", "true or false"),
        ("linear_mm_rate = 0.025", "linear_mm_rate = false", "standard.linear_im_rate", "set together"),
        ("[portfolio.vol_shock]", "[portfolio.vol_shock]\nvol_up = 0.4\n[portfolio.x]", "portfolio.x", "unknown key"),
        ("static_discount = false ", "static_discount = 3 ", "portfolio.static_discount", "expected a table"),
        ('name = "my_venue"\n', 'name = "my_venue"\nstandrd = 1\n', "standrd", "did you mean standard"),
    ],
)
def test_bad_values_name_their_key_and_line(tmp_path, old, new, column, fragment):
    text = MY_VENUE.read_text(encoding="utf-8")
    assert old in text
    text = text.replace(old, new, 1)
    e = _raises(_write(tmp_path, text), column, fragment)
    assert e.line is not None and f"line {e.line} of venue.toml" in str(e)


def test_the_line_is_the_offending_one(tmp_path):
    text = MY_VENUE.read_text(encoding="utf-8").replace("put_mm_mark_rate = 0.05", "put_mm_mark_rate = -0.05")
    _raises(_write(tmp_path, text), "standard.put_mm_mark_rate", f"line {_line_of(text, 'put_mm_mark_rate = -')} ")
    text = MY_VENUE.read_text(encoding="utf-8").replace("weight = 0.5, ", "weight = -0.5, ")
    _raises(_write(tmp_path, text), "portfolio.scenarios[11].weight", f"line {_line_of(text, 'weight = -0.5')} ")


@pytest.mark.parametrize(
    "text, column, fragment",
    [
        ('name = "x"\npreset = "v2"\n', "preset", "unknown preset"),
        ('name = "x"\npreset = "derive_pmrm"\n', "preset", "did you mean derive_pmrm2"),
        ('name = "x"\n[portfolio]\nrecipe = "v11"\n[standard]\npreset = "v1"\n', "portfolio.recipe", "unknown recipe 'v11'; did you mean v1"),
        ('name = "x"\n[portfolio]\nrecipe = "v1"\npreset = "v1"\n[standard]\n', "portfolio.recipe", "not both"),
        ('name = "x"\n[portfolio]\nrecipe = "v1"\n', "standard", "missing"),
        ('name = "x"\n[standard]\npreset = "v1"\n', "portfolio", "missing"),
        ('[portfolio]\nrecipe = "v1"\n[standard]\n', "name", "missing"),
        ('name = "x"\n[standard]\n[portfolio]\nscenarios = [{spot_move = 0.1}]\n', "portfolio.vol_shock", "missing"),
        ('name = "x"\n[standard]\n[portfolio]\nscenarios = [{spot_move = 0.1}]\n[portfolio.vol_shock]\nvol_up = 1\n',
         "portfolio.vol_shock.vol_down", "missing"),
        ('name = "x"\n[standard]\n[portfolio]\nrecipe = "v1"\n[portfolio.underlyings.BTC]\nbasis_rate_scale = 2\n',
         "portfolio.underlyings.BTC", "v1 recipe reads"),
        ('name = "x"\n[standard]\n[portfolio]\nrecipe = "exchange"\n[portfolio.underlyings.BTC]\nbasis_rate_scal = 2\n',
         "portfolio.underlyings.BTC.basis_rate_scal", "did you mean basis_rate_scale"),
        ('name = "x"\n[standard]\n[portfolio]\nrecipe = "exchange"\n[portfolio.underlyings.BTC]\nliquidity_notional = 0\n',
         "portfolio.underlyings.BTC.liquidity_notional", "> 0"),
        ('name = "x"\n[standard]\n[portfolio]\nrecipe = "v1"\nstatic_discount = {}\n', "portfolio.static_discount",
         "needs revaluation expiry_sum"),
        ('name = "x"\npreset = "v1"\n[portfolio.max_of_groups]\nim_factor = 0\n', "portfolio.max_of_groups.im_factor", "> 0"),
        ('name = "x"\npreset = "v1"\n[standard]\noracle_factor = 2\n', "standard.oracle_factor", "in [0, 1]"),
        ("name = 3\npreset = \"v1\"\n", "name", "non-empty string"),
    ],
)
def test_unknown_names_and_missing_parts(tmp_path, text, column, fragment):
    e = _raises(_write(tmp_path, text), column, fragment)
    assert e.line is None or e.line <= text.count("\n") + 1


def test_not_a_file_of_ours(tmp_path):
    with pytest.raises(MarginInputError, match="not valid TOML"):
        me.Methodology.from_file(_write(tmp_path, "name = \n"))
    with pytest.raises(MarginInputError, match="not valid JSON"):
        me.Methodology.from_file(_write(tmp_path, "{", ".json"))
    with pytest.raises(MarginInputError, match=r"\.toml or \.json"):
        me.Methodology.from_file(_write(tmp_path, "", ".yaml"))
    with pytest.raises(MarginInputError, match="cannot read"):
        me.Methodology.from_file(tmp_path / "missing.toml")
    with pytest.raises(MarginInputError, match=r"\.toml or \.json"):
        VARIANTS["v1"].to_file(tmp_path / "m.txt")


def test_python_overrides_errors():
    with pytest.raises(MarginInputError, match="unknown preset 'v3'") as info:
        me.Methodology.preset("v3")
    assert info.value.column == "preset"
    with pytest.raises(MarginInputError, match="unknown override; did you mean vol_shock") as info:
        me.Methodology.preset("v1", vol_shok={"vol_up": 0.5})
    assert info.value.column == "vol_shok"
    with pytest.raises(MarginInputError, match="did you mean maintenance") as info:
        me.Methodology.preset("derive_pmrm2", **{"loss_factors.maintenanse": 0.8})
    assert info.value.column == "portfolio.loss_factors.maintenanse"
    with pytest.raises(MarginInputError) as info:
        me.Methodology.preset("derive_pmrm2", **{"loss_factors.maintenance": -1})
    assert info.value.column == "portfolio.loss_factors.maintenance"
    with pytest.raises(MarginInputError) as info:
        me.Methodology.preset("v1", **{"standard.put_mm_rate": "x"})
    assert info.value.column == "standard.put_mm_rate"
    with pytest.raises(MarginInputError) as info:
        me.Methodology.preset("v1", portfolio=3.0)
    assert info.value.column == "portfolio"
    with pytest.raises(MarginInputError):
        me.Methodology("", portfolio="v1")


# --------------------------------------------------------------------------------------------
# Overrides compose
# --------------------------------------------------------------------------------------------


def test_overrides_compose(tmp_path):
    both = me.Methodology.preset("derive_standard", portfolio="derive_pmrm2")
    assert both == me.Methodology("derive_standard", portfolio=derive_pmrm2(), standard=DERIVE_STANDARD)
    assert both == me.Methodology.preset("derive_pmrm2", standard="derive_standard", name="derive_standard")
    assert both.portfolio == VARIANTS["derive_pmrm2"].portfolio and both.standard == VARIANTS["derive_standard"].standard

    dotted = me.Methodology.preset("derive_pmrm2", **{"loss_factors.maintenance": 0.7, "vol_shock.vol_up": 0.6})
    nested = me.Methodology.preset("derive_pmrm2", loss_factors={"maintenance": 0.7}, vol_shock={"vol_up": 0.6})
    assert dotted == nested
    assert dotted.portfolio.default == derive_pmrm2().replace(
        loss_factors={"initial": 1.0, "maintenance": 0.7}, vol_shock={**derive_pmrm2().to_dict()["vol_shock"], "vol_up": 0.6})
    text = 'name = "derive_pmrm2"\npreset = "derive_pmrm2"\n[portfolio.loss_factors]\nmaintenance = 0.7\n' \
           '[portfolio.vol_shock]\nvol_up = 0.6\n'
    assert me.Methodology.from_file(_write(tmp_path, text)) == dotted

    # a part switched off, a standard parameter, and both through the portfolio= / standard= parts
    off = me.Methodology.preset("derive_pmrm2", static_discount=False, put_mm_rate=0.1)
    assert off.portfolio.default.static_discount is None and off.standard == StandardParams(name="v1", put_mm_rate=0.1)
    assert off == me.Methodology.preset("v1", portfolio="derive_pmrm2", name="derive_pmrm2",
                                        **{"portfolio.static_discount": None, "standard.put_mm_rate": 0.1})

    # overrides on a recipe apply to every underlying the book has, after its own row; the
    # exchange preset's calibrated scan ranges (presets/data/exchange_scan_ranges.json, checked
    # against a recalibration in test_calibrated_presets.py) replace the row's price_range
    risk = pa.table({"underlying": ["BTC", "ETH"], "price_range": [0.2, 0.25], "vol_up": [0.6, 0.7]})
    patched = me.Methodology.preset("exchange", **{"vol_shock.vol_down": 0.2}, underlyings={"ETH": {"basis_rate_scale": 3}})
    resolved, _ = patched.resolve(risk)
    calibrated = exchange_scan_ranges()
    for u, row in (("BTC", RiskParams(price_range=0.2, vol_up=0.6)), ("ETH", RiskParams(price_range=0.25, vol_up=0.7))):
        want = exchange_methodology(row, basis_rate_scale=3.0 if u == "ETH" else 1.0, price_range=calibrated[u])
        assert resolved.by_underlying[u].scenarios[0].spot_move == -calibrated[u]
        assert resolved.by_underlying[u] == want.replace(vol_shock={**want.to_dict()["vol_shock"], "vol_down": 0.2})
    assert resolved.default.vol_shock.vol_down == 0.2 and resolved.default.vol_shock.vol_up == DEFAULT_RISK_PARAMS.vol_up
    again = me.Methodology.preset("exchange", underlyings={"ETH": {"basis_rate_scale": 3}}, **{"vol_shock.vol_down": 0.2})
    assert again == patched


# --------------------------------------------------------------------------------------------
# resolve / engine_dict
# --------------------------------------------------------------------------------------------


def test_engine_dict_of_v1_is_v1_methodology_of_each_row():
    risk = pa.table({
        "underlying": ["ETH", "BTC", "SOL"],
        "price_range": [0.2, 0.15, None],
        "price_steps": pa.array([11, 21, 5], pa.int64()),
        "vol_up": [0.5, None, 0.9],
        "extreme_move": [2.0, 3.0, 4.0],
        "im_factor": [1.1, 1.25, 1.5],
    })
    rows = {
        "ETH": RiskParams(price_range=0.2, price_steps=11, vol_up=0.5, extreme_move=2.0, im_factor=1.1),
        "BTC": RiskParams(price_range=0.15, price_steps=21, extreme_move=3.0, im_factor=1.25),
        "SOL": RiskParams(price_steps=5, vol_up=0.9, extreme_move=4.0, im_factor=1.5),
    }
    d = me.Methodology.preset("v1").engine_dict(risk)
    assert json.loads(json.dumps(d, allow_nan=False)) == d
    assert set(d) == {"name", "is_v1_portfolio", "portfolio", "standard", "is_v1_standard"}
    assert d["name"] == "v1" and d["is_v1_portfolio"] is True and d["is_v1_standard"] is True
    assert d["portfolio"]["default"] == v1_methodology(DEFAULT_RISK_PARAMS).to_dict()
    assert d["portfolio"]["by_underlying"] == {u: v1_methodology(p).to_dict() for u, p in rows.items()}
    assert list(d["portfolio"]["by_underlying"]) == sorted(rows)
    assert d["standard"] == V1.to_dict()
    assert len(d["portfolio"]["by_underlying"]["SOL"]["scenarios"]) == 5 * 3 + 2

    dstd = me.Methodology.preset("derive_standard").engine_dict(risk)
    assert dstd["is_v1_portfolio"] is True and dstd["is_v1_standard"] is False
    assert dstd["portfolio"] == d["portfolio"] and dstd["standard"] == DERIVE_STANDARD.to_dict()
    assert me.Methodology("mine", standard=StandardParams(name="mine")).engine_dict()["is_v1_standard"] is True

    for name in ("exchange", "derive_pmrm2"):
        assert me.Methodology.preset(name).engine_dict(risk)["is_v1_portfolio"] is False
    patched = me.Methodology.preset("v1", **{"max_of_groups.im_factor": 2.0}).engine_dict(risk)
    assert patched["is_v1_portfolio"] is False
    assert {u: m["max_of_groups"]["im_factor"] for u, m in patched["portfolio"]["by_underlying"].items()} == dict.fromkeys(rows, 2.0)
    pmrm2 = me.Methodology.preset("derive_pmrm2").engine_dict(risk)
    assert pmrm2["portfolio"] == {"default": derive_pmrm2().to_dict(), "by_underlying": {}}


# --------------------------------------------------------------------------------------------
# describe()
# --------------------------------------------------------------------------------------------

_ROW = re.compile(r"^\s+(\d+)\s+([+-]?[\d.e+-]+)%\s+(\w+)\s+([\d.e+-]+)\s+(\w+)$")
_PAIR = re.compile(r"(\w+) = (from instrument|\[[^\]]*\]|[^,\s]+)")


def _parsed(value: str) -> object:
    if value in ("true", "false"):
        return value == "true"
    if value in ("off", "from instrument"):
        return None
    if value.startswith("["):
        return [float(x) for x in value[1:-1].split(",") if x.strip()]
    try:
        return float(value)
    except ValueError:
        return value


def _close(a: object, b: object) -> bool:
    if isinstance(b, bool) or b is None or isinstance(b, str):
        return a == b
    if isinstance(b, (list, tuple)):
        return isinstance(a, list) and len(a) == len(b) and all(_close(x, y) for x, y in zip(a, b))
    return isinstance(a, float) and math.isclose(a, float(b), rel_tol=1e-9, abs_tol=1e-12)


def _check_section(lines: list[str], title: str, meth: ScenarioMethodology) -> None:
    start = next(i for i, line in enumerate(lines) if line.startswith(f"  {title}: scenario methodology {meth.name!r}"))
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("  ") and not lines[i].startswith("   ")), len(lines))
    section = lines[start:end]
    rows = [m.groups() for m in map(_ROW.match, section) if m]
    assert len(rows) == len(meth.scenarios)
    for (i, move, shock, weight, group), row in zip(rows, meth.scenarios, strict=True):
        assert math.isclose(float(move) / 100, row.spot_move, rel_tol=1e-9, abs_tol=1e-12), (i, move, row)
        assert (shock, group) == (row.vol_shock, row.group)
        assert math.isclose(float(weight), row.weight, rel_tol=1e-9)
    for key in ScenarioMethodology._PARTS:
        k = next(j for j, line in enumerate(section) if f"({key}):" in line)
        part = getattr(meth, key)
        if part is None:
            assert section[k].rstrip().endswith(f"({key}): off"), section[k]
            continue
        assert "off" not in section[k].split(f"({key}):")[1][:5]
        shown = dict(_PAIR.findall(section[k + 1]))
        for f in fields(part):
            assert f.name in shown, (key, f.name, section[k + 1])
            assert _close(_parsed(shown[f.name]), getattr(part, f.name)), (key, f.name, shown[f.name])
    text = "\n".join(section)
    for switch in ("revaluation", "combination", "discount_options", "collateral_haircuts_as_contingency"):
        assert _close(_parsed(re.search(rf"{switch} = (\w+)", text).group(1)), getattr(meth, switch)), switch


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_describe_shows_every_number(name):
    m = VARIANTS[name]
    risk = pa.table({"underlying": ["BTC"], "price_range": [0.2], "price_steps": pa.array([5], pa.int64())})
    text = m.describe(risk)
    lines = text.splitlines()
    assert lines[0] == f"Methodology {m.name!r}"
    resolved, standard = m.resolve(risk)
    _check_section(lines, "every underlying" if not resolved.by_underlying else "default", resolved.default)
    for u, meth in resolved.by_underlying.items():
        _check_section(lines, f"underlying {u}", meth)
    std = lines[next(i for i, line in enumerate(lines) if line.startswith("Standard margin")):]
    assert std[0] == f"Standard margin (per position): {standard.name!r}"
    shown = dict(_PAIR.findall("\n".join(std[1:])))
    for f in fields(standard):
        if f.name != "name":
            assert _close(_parsed(shown[f.name]), getattr(standard, f.name)), (f.name, shown.get(f.name))
    assert repr(m).startswith(f"Methodology({m.name!r}, portfolio=Portfolio(")
    assert len(repr(m)) < 200


def test_line_location_ignores_comments_strings_and_inline_tables(tmp_path):
    """Text that looks like a key or a table inside comments, strings and inline tables does
    not mislead the line of the offending key."""
    text = '''name = """a name with
[portfolio.vol_shock]
vol_upp = 1 inside a string"""   # vol_upp = 2 in a comment
preset = "v1"
[portfolio]
loss_factors = { initial = 1.0, maintenance = 0.9 }
# [portfolio.vol_shock] in a comment
[portfolio.vol_shock]
vol_down = 0.2
vol_upp = 0.5
'''
    _raises(_write(tmp_path, text), "portfolio.vol_shock.vol_upp", "line 10 of venue.toml", "did you mean vol_up")
    text = text.replace("vol_upp = 0.5", "vol_up = 0.5").replace("maintenance = 0.9", "maintenanc = 0.9")
    _raises(_write(tmp_path, text), "portfolio.loss_factors.maintenanc", "line 6 of venue.toml", "did you mean maintenance")


def test_portfolio_parts_are_validated_and_pickle():
    with pytest.raises(MarginInputError, match="unknown recipe"):
        Portfolio(recipe="v2")
    with pytest.raises(MarginInputError, match="needs a default"):
        Portfolio()
    with pytest.raises(MarginInputError, match="did you mean vol_up"):
        Portfolio(recipe="v1", patch={"vol_shock": {"vol_upp": 1.0}})
    with pytest.raises(MarginInputError, match="give no default"):
        Portfolio(recipe="v1", default=derive_pmrm2())
    for m in VARIANTS.values():
        assert pickle.loads(pickle.dumps(m.portfolio)) == m.portfolio
    # normalized at construction: an int and a float of one value are one methodology
    one = Portfolio(recipe="exchange", recipe_args={"BTC": {"basis_rate_scale": 2}}, patch={"max_of_groups": {"im_factor": 2}})
    two = Portfolio(recipe="exchange", recipe_args={"BTC": {"basis_rate_scale": 2.0}}, patch={"max_of_groups": {"im_factor": 2.0}})
    assert one == two and hash(one) == hash(two)


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_the_rust_scenario_engine_reads_every_engine_dict(name):
    """Every scenario methodology of `engine_dict` (through JSON, as a plain dict) is accepted by
    the compiled scenario engine, and gives the reference's margin on a small portfolio."""
    from margin_engine import _core
    from margin_engine.reference.scenarios import LinearHolding, ScenarioPortfolio, margin_scenarios

    risk = pa.table({"underlying": ["BTC"], "price_range": [0.2]})
    d = json.loads(json.dumps(VARIANTS[name].engine_dict(risk), allow_nan=False))
    resolved, _ = VARIANTS[name].resolve(risk)
    pf = ScenarioPortfolio(spot=100.0, perp_quantity=3.0, perp_mark=100.0, cash=50.0,
                           linears=[LinearHolding(quantity=-2.0, mark=101.0, seconds_to_expiry=90 * 86_400.0)])
    for key, meth in [("default", resolved.default), *resolved.by_underlying.items()]:
        plain = d["portfolio"]["default"] if key == "default" else d["portfolio"]["by_underlying"][key]
        got = _core.scenario_margin(plain, pf.to_dict())
        want = margin_scenarios(pf, meth)
        assert got["maintenance_margin"] == pytest.approx(want.maintenance_margin, rel=1e-12, abs=1e-9)
        assert got["initial_margin"] == pytest.approx(want.initial_margin, rel=1e-12, abs=1e-9)
