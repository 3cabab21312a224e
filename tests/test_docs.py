"""The package describes itself (issue 12): the README's "Use" snippet runs as written, the
docstring examples of api.py pass, the methodology ships in docs/ and nothing in the package or
the docs points at a spec file that does not ship with it."""

from __future__ import annotations

import doctest
import re
from pathlib import Path

import pytest

import margin_engine as me
from margin_engine import api, synthetic

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
METHODOLOGY = DOCS / "methodology.md"

# What a user of the package never has: the project's internal spec folder.
FORBIDDEN = [re.compile(p) for p in (r"METHODOLOGY", r"\.\./shared", r"spec/")]


def _shipped_text_files() -> list[Path]:
    files = [README, *sorted((ROOT / "python").rglob("*")), *sorted(DOCS.rglob("*"))]
    return [f for f in files if f.is_file() and f.suffix in {".py", ".pyi", ".md", ".txt", ".toml", ".rst"}]


def test_nothing_points_at_a_spec_that_does_not_ship():
    """Finding "the docs and 12 docstrings point at a methodology file that ships with nothing":
    no file under python/ or docs/ (nor the README) names METHODOLOGY(.md), ../shared or spec/."""
    hits = []
    for path in _shipped_text_files():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if any(p.search(line) for p in FORBIDDEN):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not hits, "\n".join(hits)


def _readme_use_block() -> str:
    text = README.read_text(encoding="utf-8")
    use = text[text.index("## Use\n"):]
    use = use[: use.index("\n## ", 1)]
    blocks = re.findall(r"```python\n(.*?)```", use, flags=re.S)
    assert len(blocks) == 1, "the Use section has one python block"
    return blocks[0]


def test_readme_use_snippet_runs_as_written():
    """Finding "a 'Use' snippet that runs as written (a doctest)": the README's python block,
    run as a doctest, every shown result checked."""
    block = _readme_use_block()
    test = doctest.DocTestParser().get_doctest(block, {}, "README.md#use", str(README), 0)
    assert len(test.examples) >= 15
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} README examples failed (output above)"


def test_readme_use_snippet_calls_every_public_function():
    block = _readme_use_block()
    called = set(re.findall(r"\bme\.([a-z_0-9]+)\(", block))
    for name in ("margin", "greeks", "liquidation_scan", "liquidation_distance", "liquidation_map",
                 "liquidation_plan", "optimal_hedge", "what_if", "black76", "margin_batches"):
        assert name in called, name


def test_api_docstring_examples_pass():
    """Finding "docstrings with runnable examples": ``doctest.testmod`` on api.py (the module
    tour, Book, black76, what_if) has examples and none fails."""
    result = doctest.testmod(api, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.attempted >= 20
    assert result.failed == 0


def test_methodology_ships_in_docs_and_links_what_it_does_not_repeat():
    text = METHODOLOGY.read_text(encoding="utf-8")
    for section in range(1, 10):
        assert re.search(rf"^## §{section} ", text, flags=re.M), f"§{section}"
    for page in ("methodology-notes.md", "liquidation.md", "optimization.md", "errors.md"):
        assert f"]({page})" in text, page


def test_methodology_describes_every_input_column():
    """docs/methodology.md §1 names every column of every input table (the generated exchange
    book has them all), the risk parameters and the supplied Greeks."""
    text = METHODOLOGY.read_text(encoding="utf-8")
    b = synthetic.generate(20)
    columns = set()
    for table in b.tables.values():
        columns |= set(table.column_names)
    columns |= {"price_range", "price_steps", "vol_up", "vol_down", "vol_term_exponent", "extreme_move",
                "extreme_cover", "short_option_minimum", "im_factor", "delta", "gamma", "vega", "theta"}
    missing = sorted(c for c in columns if f"`{c}`" not in text and f"`{c}` " not in text)
    assert not missing, missing


def test_methodology_states_the_settled_points():
    """The settled points of methodology version 2 are rules of docs/methodology.md, in the
    form the engine implements."""
    text = " ".join(METHODOLOGY.read_text(encoding="utf-8").split())
    for rule in (
        "collateral_maintenance ≥ MM − 1e-9 × max(1, MM)",  # status tolerance, maintenance
        "collateral_initial ≥ IM − 1e-9 × max(1, IM)",  # and initial
        "`nearest_move = 0` and `nearest_underlying = null`",  # already liquidatable
        "the book does not know are ignored",  # market data may cover more than the book
        "null on a row means that row's P&L is already settled",  # entry_price nulls
        "net to 0 and still carry",  # P&L of rows that net to zero
        "`−quantity × mult × price` against a position worth `quantity × mult × mark`",  # what-if
        "a perpetual-only book needs no `expiry` column",
    ):
        assert rule in text, rule


@pytest.mark.parametrize("page", sorted(p.name for p in DOCS.glob("*.md")) + ["../README.md"])
def test_relative_links_in_the_docs_resolve(page):
    path = (DOCS / page).resolve()
    text = path.read_text(encoding="utf-8")
    broken = []
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if re.match(r"[a-z]+://", target):
            continue
        if not (path.parent / target).exists():
            broken.append(target)
    assert not broken, broken


def test_package_docstring_points_at_shipped_docs():
    assert "docs/methodology.md" in (me.__doc__ or "")
