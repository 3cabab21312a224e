"""The public API's surface (issue 12, "one vocabulary" and "the package must describe itself"):
keyword-only options, ``what_if(book, positions, balances, market, trades, *, model)``,
``output="polars"``, docstrings that list every column read and returned, and a ``_core.pyi``
that matches the compiled module."""

from __future__ import annotations

import ast
import inspect
import re
import sys
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import margin_engine as me
from margin_engine import _core, api, synthetic

pl = pytest.importorskip("polars")

STUB = Path(api.__file__).with_name("_core.pyi")

# Public functions of api.py: the tables (positional) they take, in order.
TABLE_ARGS = {
    "margin": ["book", "positions", "balances", "market"],
    "greeks": ["book", "positions", "market"],
    "liquidation_scan": ["book", "positions", "balances", "market"],
    "liquidation_distance": ["book", "positions", "balances", "market"],
    "liquidation_map": ["book", "positions", "balances", "market"],
    "liquidation_prices": ["book", "positions", "balances", "market"],
    "liquidation_plan": ["book", "positions", "balances", "market"],
    "isolated_margin": ["book", "positions", "isolated_collateral", "market"],
    "optimal_hedge": ["book", "positions", "balances", "market", "hedge_instruments"],
    "risk_arrays": ["book", "market"],
    "what_if": ["book", "positions", "balances", "market", "trades"],
}
TABLE_FUNCTIONS = [name for name in TABLE_ARGS if name != "what_if"]


@pytest.fixture(scope="module")
def generated() -> dict[str, Any]:
    b = synthetic.generate(300)
    book = me.Book(b.instruments, b.assets, None, b.margin_tiers)
    market = me.Market(b.index_prices, b.marks, b.valuation_time)
    hedges = [k for k, kind in zip(b.instruments.column("instrument").to_pylist(), b.instruments.column("kind").to_pylist()) if kind == "perpetual"]
    return {"raw": b, "book": book, "market": market, "positions": b.positions, "balances": b.balances,
            "hedge_instruments": hedges[:2], "trades": [(hedges[0], 1.0)], "isolated_collateral": None}


def _args(name: str, g: dict[str, Any]) -> list[Any]:
    return [g[a] for a in TABLE_ARGS[name]]


def _call(name: str, g: dict[str, Any], **options: Any) -> Any:
    if name == "liquidation_plan":
        options.setdefault("stress", {"BTC": -0.3})  # someone to liquidate
    return getattr(me, name)(*_args(name, g), **options)


@pytest.mark.parametrize("name", list(TABLE_ARGS))
def test_options_after_the_tables_are_keyword_only(name):
    """Finding "one vocabulary: keyword-only options": every parameter after the tables is
    keyword-only (the old API took ``model`` and ``threads`` positionally)."""
    params = list(inspect.signature(getattr(me, name)).parameters.values())
    positional = [p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert positional == TABLE_ARGS[name]
    rest = params[len(positional):]
    assert rest and all(p.kind is p.KEYWORD_ONLY for p in rest), [(p.name, p.kind) for p in rest]


@pytest.mark.parametrize("name", ["margin", "liquidation_scan", "liquidation_distance", "liquidation_map", "liquidation_plan", "what_if"])
def test_positional_model_is_a_type_error(name, generated):
    """``me.margin(book, p, b, m, "portfolio")`` is refused, not silently read."""
    with pytest.raises(TypeError):
        getattr(me, name)(*_args(name, generated), "portfolio")


def test_greeks_positional_threads_is_a_type_error(generated):
    with pytest.raises(TypeError):
        me.greeks(*_args("greeks", generated), 1)


def test_what_if_takes_positions_and_balances_by_the_vocabulary_names(generated):
    """Finding "what_if(book, positions, balances, ...)": the old ``account_positions`` /
    ``account_balances`` names are gone; ``positions=`` / ``balances=`` work."""
    g = generated
    w = me.what_if(g["book"], market=g["market"], positions=None, balances={"USDT": 1_000.0}, trades=g["trades"], model="standard")
    assert isinstance(w, me.WhatIf)
    assert list(inspect.signature(me.what_if).parameters)[:5] == TABLE_ARGS["what_if"]
    with pytest.raises(TypeError):
        me.what_if(g["book"], account_positions=None, account_balances=None, market=g["market"], trades=None)


@pytest.mark.parametrize("name", TABLE_FUNCTIONS)
def test_output_polars_is_the_arrow_result(name, generated):
    """Finding "output='polars' option": every table-returning function gives a polars
    DataFrame equal to its Arrow result."""
    arrow = _call(name, generated)
    polars = _call(name, generated, output="polars")
    if name == "liquidation_plan":
        pairs = [(getattr(arrow, t), getattr(polars, t)) for t in ("closes", "accounts", "underlyings", "adl")]
        assert arrow.accounts.num_rows > 0
        assert (arrow.liquidator_fees, arrow.insurance_fund_after) == (polars.liquidator_fees, polars.insurance_fund_after)
    else:
        pairs = [(arrow, polars)]
    for a, p in pairs:
        assert isinstance(a, pa.Table)
        assert isinstance(p, pl.DataFrame)
        assert p.columns == a.column_names
        assert p.equals(pl.from_arrow(a), null_equal=True)
        assert p.height == a.num_rows


def test_output_arrow_is_the_default_and_bad_outputs_are_refused(generated):
    arrow = _call("margin", generated, output="arrow")
    assert arrow.equals(_call("margin", generated))
    with pytest.raises(me.MarginInputError) as info:
        _call("margin", generated, output="pandas")
    assert (info.value.table, info.value.column) == ("arguments", "output")


def test_output_polars_without_polars_names_the_package(generated, monkeypatch):
    """Without polars installed, ``output="polars"`` says to install polars (before any work)."""
    monkeypatch.setitem(sys.modules, "polars", None)  # `import polars` now raises ImportError
    with pytest.raises(ImportError, match="polars"):
        _call("margin", generated, output="polars")
    with pytest.raises(ImportError, match="pip install polars"):
        api.as_output(pa.table({"a": [1]}), "polars")
    assert _call("margin", generated).num_rows > 0  # the default needs no polars


def test_as_output_is_zero_copy_for_numeric_columns():
    """``output="polars"`` reuses the Arrow buffers (no copy, no rechunking of chunked results)."""
    table = pa.concat_tables([pa.table({"x": pa.array([1.0, 2.0])}), pa.table({"x": pa.array([3.0])})])
    frame = api.as_output(table, "polars")
    assert frame["x"].to_list() == [1.0, 2.0, 3.0]
    polars_buffers = [c.to_arrow().buffers()[1].address for c in frame["x"].get_chunks()]
    assert polars_buffers == [c.buffers()[1].address for c in table.column("x").chunks]
    assert api.as_output(table, "arrow") is table


# --- docstrings that describe the package ------------------------------------------------------

def _documented(doc: str, column: str) -> bool:
    return f"``{column}``" in doc


@pytest.mark.parametrize("name", TABLE_FUNCTIONS)
def test_docstrings_list_every_output_column(name, generated):
    """Finding "every function's docstring lists the input columns it reads": and its output
    columns, checked against what the function returns (scan with ``distance=True`` too)."""
    doc = inspect.getdoc(getattr(me, name))
    if name == "liquidation_plan":
        plan = _call(name, generated)
        tables = [getattr(plan, t) for t in ("closes", "accounts", "underlyings", "adl")]
        doc = inspect.getdoc(me.LiquidationPlan)
    elif name == "liquidation_scan":
        tables = [_call(name, generated, distance=True)]
    else:
        tables = [_call(name, generated)]
    missing = [c for t in tables for c in t.column_names if not _documented(doc, c)]
    assert not missing, f"{name}: output columns not in the docstring: {missing}"


@pytest.mark.parametrize("name", list(TABLE_ARGS))
def test_docstrings_list_the_account_columns_read(name):
    doc = inspect.getdoc(getattr(me, name))
    columns = {"positions": ["account_id", "instrument", "quantity", "entry_price"], "balances": ["asset", "amount"]}
    if name == "what_if":
        columns = {"positions": ["instrument", "quantity", "entry_price"], "balances": ["asset", "amount"]}
    for table, names in columns.items():
        if table in TABLE_ARGS[name]:
            missing = [c for c in names if not _documented(doc, c)]
            assert not missing, f"{name}: {table} columns not in the docstring: {missing}"
    if name != "what_if":  # what_if's market columns are margin's
        for column in ("index_price", "mark_price"):
            assert _documented(doc, column), (name, column)
    if "positions" in TABLE_ARGS[name]:
        assert "optional ``entry_price``" in doc or "optional ``entry_price``" in doc.replace("\n", " ")


def test_book_and_market_docstrings_describe_every_column():
    """Every column of the generated exchange book, the risk parameters and the supplied Greeks
    is described in ``Book`` or ``Market``; no docstring sends the reader to a spec file."""
    b = synthetic.generate(20)
    book_columns = {
        "instruments": b.instruments.column_names,
        "assets": b.assets.column_names,
        "margin_tiers": b.margin_tiers.column_names,
        "risk_params": ["underlying", "price_range", "price_steps", "vol_up", "vol_down", "vol_term_exponent",
                        "extreme_move", "extreme_cover", "short_option_minimum", "im_factor"],
    }
    market_columns = {"index_prices": b.index_prices.column_names,
                      "marks": b.marks.column_names + ["delta", "gamma", "vega", "theta"]}
    for cls, tables in ((me.Book, book_columns), (me.Market, market_columns)):
        doc = inspect.getdoc(cls)
        for table, columns in tables.items():
            assert _documented(doc, table), (cls.__name__, table)
            missing = [c for c in columns if not _documented(doc, c)]
            assert not missing, f"{cls.__name__}: {table} columns not described: {missing}"
    assert "required for futures and options" in inspect.getdoc(me.Book)


def test_docstring_blocks_are_all_filled_in():
    names = [n for n in me.__all__ if callable(getattr(me, n, None))]
    for name in names:
        doc = inspect.getdoc(getattr(me, name)) or ""
        left = re.findall(r"^\s*\{[a-z_]+\}\s*$", doc, flags=re.M)
        assert not left, (name, left)


def test_every_public_name_has_a_docstring():
    for name in me.__all__:
        obj = getattr(me, name)
        if inspect.isfunction(obj) or inspect.isclass(obj):
            assert inspect.getdoc(obj), name


# --- _core.pyi ---------------------------------------------------------------------------------

def _stub() -> ast.Module:
    return ast.parse(STUB.read_text())


def _stub_params(fn: ast.FunctionDef) -> list[tuple[str, Any]]:
    args = fn.args
    names = [a.arg for a in args.posonlyargs + args.args if a.arg != "self"]
    defaults = [ast.literal_eval(d) for d in args.defaults]
    padded = [inspect.Parameter.empty] * (len(names) - len(defaults)) + defaults
    assert not args.kwonlyargs, f"{fn.name}: the compiled functions have no keyword-only parameters"
    return list(zip(names, padded))


def _compiled_params(obj: Any) -> list[tuple[str, Any]]:
    sig = inspect.signature(obj)
    return [(p.name, p.default) for p in sig.parameters.values()]


def test_core_stub_matches_the_compiled_functions():
    """Finding "_core.pyi in the public argument order": the stub lists exactly the compiled
    module's functions and classes, each with its real parameter names, order and defaults."""
    tree = _stub()
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    classes = {n.name: n for n in tree.body if isinstance(n, ast.ClassDef) and not n.name.startswith("_")}
    compiled = {n for n in dir(_core) if not n.startswith("_")}
    assert set(functions) | set(classes) == compiled
    for name, fn in functions.items():
        assert _stub_params(fn) == _compiled_params(getattr(_core, name)), name
    for name in ("Book", "Market"):
        init = next(n for n in classes[name].body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
        assert _stub_params(init) == _compiled_params(getattr(_core, name)), name
    for name, cls in classes.items():
        members = {n.name for n in cls.body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")}
        members |= {n.target.id for n in cls.body if isinstance(n, ast.AnnAssign)}
        real = {m for m in dir(getattr(_core, name)) if not m.startswith("_")}
        if name == "MarginInputError":
            real = {"table", "column", "problem", "offenders", "count"}
        assert members == real, (name, members ^ real)


def test_public_functions_call_the_core_in_its_order(generated):
    """api.py's public order (book, positions, balances, market) is mapped onto the core's
    (book, market, positions, balances): the same numbers either way."""
    g = generated
    public = me.margin(g["book"], g["positions"], g["balances"], g["market"], model="portfolio")
    core = pa.table(_core.margin(g["book"]._core, g["market"]._core, g["positions"], g["balances"], "portfolio", None))
    assert public.equals(core)


def test_perpetual_only_book_needs_no_expiry_column():
    """Finding "a perpetual-only book must not need an expiry column": a book without the
    column margins exactly like the same book with an all-null ``expiry``; a future still needs
    one."""
    columns = {"instrument": ["BTC-PERP", "ETH-PERP"], "kind": ["perpetual"] * 2, "underlying": ["BTC", "ETH"],
               "multiplier": [1.0, 1.0], "initial_margin_rate": [0.02, 0.03], "maintenance_margin_rate": [0.01, 0.015]}
    assets = pa.table({"asset": ["USD"], "price": [1.0], "initial_weight": [1.0], "maintenance_weight": [1.0],
                       "initial_liability_weight": [1.0], "maintenance_liability_weight": [1.0]})
    market = me.Market(pa.table({"underlying": ["BTC", "ETH"], "index_price": [50_000.0, 3_000.0]}),
                       pa.table({"instrument": ["BTC-PERP", "ETH-PERP"], "mark_price": [50_010.0, 2_999.0]}), 0)
    positions = pa.table({"account_id": [1, 1, 2], "instrument": ["BTC-PERP", "ETH-PERP", "ETH-PERP"], "quantity": [1.0, -3.0, 2.0]})
    balances = pa.table({"account_id": [1, 2], "asset": ["USD", "USD"], "amount": [1_000.0, 100.0]})
    without = me.Book(pa.table(columns), assets)
    with_nulls = me.Book(pa.table({**columns, "expiry": pa.array([None, None], pa.timestamp("ns", "UTC"))}), assets)
    for model in ("standard", "portfolio"):
        got = me.margin(without, positions, balances, market, model=model)
        assert got.equals(me.margin(with_nulls, positions, balances, market, model=model))
        assert got.num_rows == 2
    future = pa.table({**columns, "kind": ["future", "perpetual"]})
    with pytest.raises(me.MarginInputError) as info:
        me.Book(future, assets)
    assert (info.value.table, info.value.column) == ("instruments", "expiry")
