"""`margin-engine run DIR --methodology FILE|PRESET` (issue 13): a methodology written by hand in
TOML (docs/examples/my_venue.toml, not a preset) margins a book directory end to end, with the
same rows as `me.margin` under `Methodology.from_file`; a misspelt key is one line naming the key,
its line and the nearest known key, exit 2, before any work."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import margin_engine as me
from margin_engine import synthetic

MY_VENUE = Path(__file__).parent.parent / "docs" / "examples" / "my_venue.toml"


def _cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "margin_engine.cli", "--quiet", *argv], capture_output=True, text=True)


@pytest.fixture(scope="module")
def book_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("book")
    synthetic.generate(1500, seed=5).write_parquet(d)
    return d


def test_hand_written_toml_runs_end_to_end(book_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.parquet"
    proc = _cli("run", str(book_dir), "--model", "portfolio", "--methodology", str(MY_VENUE), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    got = pq.read_table(out)
    g = synthetic.SyntheticBook.read_parquet(book_dir)
    meth = me.Methodology.from_file(MY_VENUE)
    book = me.Book(g.instruments, g.assets, None, g.margin_tiers, methodology=meth)
    want = me.margin(book, g.positions, g.balances, me.Market(g.index_prices, g.marks, g.valuation_time_ns), model="portfolio")
    assert got.equals(want)
    plain = _cli("run", str(book_dir), "--model", "portfolio", "--out", str(tmp_path / "v1.parquet"))
    assert plain.returncode == 0
    assert not pq.read_table(tmp_path / "v1.parquet").equals(got)  # the file changed the numbers


def test_a_preset_by_name(book_dir: Path, tmp_path: Path) -> None:
    proc = _cli("run", str(book_dir), "--model", "portfolio", "--methodology", "exchange", "--out", str(tmp_path / "x.parquet"))
    assert proc.returncode == 0, proc.stderr


def test_a_misspelt_key_is_one_line_with_its_line_number(book_dir: Path, tmp_path: Path) -> None:
    text = MY_VENUE.read_text()
    assert "vol_up =" in text
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace("vol_up =", "vol_upp =", 1))
    line = next(i for i, ln in enumerate(bad.read_text().splitlines(), 1) if ln.lstrip().startswith("vol_upp"))
    out = tmp_path / "never.parquet"
    proc = _cli("run", str(book_dir), "--methodology", str(bad), "--out", str(out))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "vol_upp" in lines[0] and f"line {line}" in lines[0] and "did you mean vol_up" in lines[0]
    assert not out.exists()
    assert "Traceback" not in proc.stderr
