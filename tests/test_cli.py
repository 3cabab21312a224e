"""The ``margin-engine`` command line (issue 12): results are written atomically, every failure
is one line on stderr and exit status 2 (checked before any work where it can be), dataset
folders are read as input, and the parser describes itself (``--version``, help on every
option, ``--quiet`` anywhere, progress on long steps).

Most cases call :func:`margin_engine.cli.main` in-process; signals and broken pipes run the
command in a subprocess."""

from __future__ import annotations

import argparse
import errno
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import margin_engine as me
from margin_engine import api, cli, synthetic
from margin_engine import io as me_io
from margin_engine.io import BookTables, read_book, write_book

CLI = [sys.executable, "-m", "margin_engine.cli"]


def _tables(g) -> BookTables:
    return BookTables(
        instruments=g.instruments, assets=g.assets, positions=g.positions, balances=g.balances,
        index_prices=g.index_prices, marks=g.marks, valuation_time=g.valuation_time, margin_tiers=g.margin_tiers,
    )  # fmt: skip


@pytest.fixture(scope="module")
def generated():
    return synthetic.generate(600, seed=21)


@pytest.fixture
def book(tmp_path, generated) -> Path:
    d = tmp_path / "book"
    write_book(_tables(generated), d)
    return d


def _bad_book(tmp_path: Path, generated, row: int) -> Path:
    """The book with a NaN quantity at position row ``row``."""
    d = tmp_path / "bad"
    q = generated.positions.column("quantity").to_pylist()
    q[row] = float("nan")
    t = _tables(generated)
    t.positions = generated.positions.set_column(2, "quantity", pa.array(q))
    write_book(t, d)
    return d


def run(argv, capsys) -> tuple[int, str, str]:
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def _temps(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if ".tmp" in p.name)


def assert_one_line_error(status: int, err: str, *needles: str) -> None:
    assert status == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], lines[0]


# --------------------------------------------------------------------------------------------
# Finding 1: results written to a temporary file and renamed on success only
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True], ids=["run", "run-stream"])
def test_finding_1_a_failed_run_keeps_the_previous_good_result(tmp_path, book, generated, capsys, stream):
    """Issue 12 finding 1: a failing run overwrote (destroyed) the previous good result in place."""
    out = tmp_path / "results.parquet"
    assert run(["--quiet", "run", book, "--out", out], capsys)[0] == 0
    good = out.read_bytes()
    bad = _bad_book(tmp_path, generated, generated.positions.num_rows - 3)
    extra = ["--stream", "--rows-per-slice", "500"] if stream else []
    status, _, err = run(["--quiet", "run", bad, "--out", out, *extra], capsys)
    assert_one_line_error(status, err, "positions.quantity")
    assert out.read_bytes() == good
    assert _temps(tmp_path) == []


def test_finding_1_a_stream_with_a_bad_value_in_a_later_batch_leaves_no_output(tmp_path, generated, capsys):
    """Issue 12 finding 1: a failed ``run --stream`` left a valid, readable partial file (the
    slices before the bad one); now nothing is left, and the error names the stream row."""
    row = generated.positions.num_rows - 3
    bad = _bad_book(tmp_path, generated, row)
    out = tmp_path / "streamed.parquet"
    status, _, err = run(["--quiet", "run", bad, "--out", out, "--stream", "--rows-per-slice", "500"], capsys)
    assert_one_line_error(status, err, "positions.quantity", f"row {row}")
    assert not out.exists()
    assert _temps(tmp_path) == []


def test_finding_1_ctrl_c_mid_stream_leaves_neither_a_partial_file_nor_a_temp(tmp_path, book, capsys, monkeypatch):
    """Issue 12 finding 1: Ctrl-C during ``run --stream`` after a slice was written."""
    from margin_engine import streaming

    real = streaming.margin_batches

    def interrupted(*args, **kwargs):
        parts = real(*args, **kwargs)
        yield next(parts)
        raise KeyboardInterrupt

    monkeypatch.setattr(streaming, "margin_batches", interrupted)
    out = tmp_path / "streamed.parquet"
    status, _, err = run(["--quiet", "run", book, "--out", out, "--stream", "--rows-per-slice", "500"], capsys)
    assert status == 130 and "interrupted" in err and "Traceback" not in err
    assert not out.exists() and _temps(tmp_path) == []


def test_finding_1_sigterm_mid_stream_removes_the_temp_and_keeps_the_old_result(tmp_path, book):
    """Issue 12 finding 1: SIGTERM during ``run --stream`` (a handler raises, so cleanup runs)."""
    out = tmp_path / "streamed.parquet"
    out.write_bytes(b"previous result")
    script = (
        "import sys, time\n"
        "from margin_engine import streaming, cli\n"
        "real = streaming.margin_batches\n"
        "def slow(*a, **k):\n"
        "    for part in real(*a, **k):\n"
        "        yield part\n"
        "        time.sleep(60)\n"
        "streaming.margin_batches = slow\n"
        "sys.exit(cli.main(sys.argv[1:]))\n"
    )
    argv = ["--quiet", "run", str(book), "--out", str(out), "--stream", "--rows-per-slice", "500"]
    proc = subprocess.Popen([sys.executable, "-c", script, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not any(p.stat().st_size > 0 for p in tmp_path.glob(".streamed.parquet.*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # inside the sleep after the first slice
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "terminated" in err and "Traceback" not in err
    assert out.read_bytes() == b"previous result"
    assert _temps(tmp_path) == []


def _fail_after_writing(path_arg: int):
    """A stand-in writer that writes half a file to its path argument, then fails."""

    def writer(*args, **kwargs):
        Path(args[path_arg]).write_bytes(b"partial")
        raise OSError(errno.EIO, "Input/output error")

    return writer


@pytest.mark.parametrize(
    "command, target, patch",
    [
        (["scan", "{book}", "--out", "{t}/scan.parquet", "--plan", "{t}/plan.parquet"], "scan.parquet", ("api", "liquidation_plan")),
        (["scan", "{book}", "--plan", "{t}/plan.parquet"], "plan.closes.parquet", ("api", "liquidation_plan")),
        (["scan", "{book}", "--map", "{t}/map.png"], "map.png", ("charts", "liquidation_map_png")),
        (["report", "{book}", "--out", "{t}/report.html", "--hedge"], "report.html", ("report", "write_html")),
        (["generate", "--accounts", "50", "--out", "{t}/gen"], "gen/positions.parquet", ("io", "_write_book_files")),
    ],
    ids=["scan-out", "scan-plan", "scan-map", "report", "generate"],
)
def test_finding_1_every_writer_keeps_the_old_result_when_the_command_fails(tmp_path, book, capsys, monkeypatch, command, target, patch):
    """Issue 12 finding 1: scan --out/--plan/--map, report --out and generate --out each write
    to a temporary file (directory) and leave the previous result as it was on failure."""
    import margin_engine.charts as charts
    import margin_engine.report as report

    modules = {"api": api, "charts": charts, "report": report, "io": me_io}
    old = tmp_path / target
    old.parent.mkdir(parents=True, exist_ok=True)
    old.write_bytes(b"previous result")
    for name in ("plan.closes.parquet", "plan.accounts.parquet"):
        (tmp_path / name).write_bytes(b"previous result") if "plan" in target else None
    if patch == ("api", "liquidation_plan"):
        def failing(*args, **kwargs):
            raise me.MarginInputError("plan: failed on purpose")
        monkeypatch.setattr(api, "liquidation_plan", failing)
    else:
        monkeypatch.setattr(modules[patch[0]], patch[1], _fail_after_writing(1))
    argv = [a.format(book=book, t=tmp_path) for a in command]
    status, _, err = run(["--quiet", *argv], capsys)
    assert_one_line_error(status, err)
    assert old.read_bytes() == b"previous result"
    assert not (tmp_path / "scan.parquet").exists() or target == "scan.parquet"
    assert _temps(tmp_path) == []


def test_finding_1_generate_replaces_a_book_atomically_and_drops_stale_tables(tmp_path, generated, capsys):
    """Issue 12 finding 1: generate --out over an existing book gives exactly the new book."""
    d = tmp_path / "gen"
    t = _tables(generated)
    t.risk_params = pa.table({"underlying": ["BTC"]})  # an optional table the new book lacks
    write_book(t, d)
    assert (d / "risk_params.parquet").exists()
    assert run(["--quiet", "generate", "--accounts", "40", "--out", d], capsys)[0] == 0
    assert not (d / "risk_params.parquet").exists()
    assert read_book(d).balances.equals(synthetic.generate(40, seed=7).balances)
    assert _temps(tmp_path) == []


def test_finding_1_results_get_ordinary_permissions(tmp_path, book, capsys):
    """Issue 12 finding 1: the renamed temporary file must not keep mkstemp's private 0600 mode."""
    out = tmp_path / "r.parquet"
    assert run(["--quiet", "run", book, "--out", out], capsys)[0] == 0
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask


# --------------------------------------------------------------------------------------------
# Finding 2: every failure one line and exit 2, checked before any work
# --------------------------------------------------------------------------------------------


@pytest.fixture
def no_work(monkeypatch):
    """Fails the test if a command starts reading its book (the checks must come first)."""

    def forbidden(*args, **kwargs):
        raise AssertionError("work started before the output was checked")

    monkeypatch.setattr(cli, "read_book", forbidden)


@pytest.mark.parametrize(
    "output, needle",
    [("{t}/missing/r.parquet", "does not exist"), ("{t}", "is a directory")],
    ids=["directory-missing", "is-a-directory"],
)
@pytest.mark.parametrize("command", ["run", "scan", "report"])
def test_finding_2_unwritable_output_is_one_line_before_any_work(tmp_path, book, capsys, no_work, output, needle, command):
    """Issue 12 finding 2: an output in a missing directory, or that is a directory, failed after the work (with a traceback)."""
    status, _, err = run(["--quiet", command, book, "--out", output.format(t=tmp_path)], capsys)
    assert_one_line_error(status, err, "cannot write", needle)


def test_finding_2_read_only_directory_is_one_line_before_any_work(tmp_path, book, capsys, no_work, monkeypatch):
    """Issue 12 finding 2: a read-only output directory (as root, chmod does not stop writes: the temp file's creation fails instead)."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:
        import tempfile

        def read_only(*args, **kwargs):
            raise OSError(errno.EROFS, "Read-only file system")

        monkeypatch.setattr(tempfile, "mkstemp", read_only)
    try:
        status, _, err = run(["--quiet", "run", book, "--out", ro / "r.parquet"], capsys)
    finally:
        ro.chmod(0o755)
    assert_one_line_error(status, err, "cannot write", str(ro / "r.parquet"))


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs (as root where mounts are allowed), else skip."""
    mount = tmp_path / "small"
    mount.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "--lazy", str(mount)], check=False)  # a failed writer may still hold a file open


def test_finding_2_disk_full_is_one_line(tmp_path, book, capsys, monkeypatch):
    """Issue 12 finding 2: ENOSPC while writing gave a traceback (here from a mocked writer)."""

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "Error writing bytes to file. Detail: [errno 28] No space left on device")

    monkeypatch.setattr(pq, "write_table", full)
    out = tmp_path / "r.parquet"
    status, _, err = run(["--quiet", "run", book, "--out", out], capsys)
    assert_one_line_error(status, err, f"cannot write {out}", "no space left on device")
    assert _temps(tmp_path) == []


@pytest.mark.parametrize("stream", [False, True], ids=["run", "run-stream"])
def test_finding_2_a_really_full_disk_is_one_line_and_keeps_the_old_result(small_disk, book, capsys, stream):
    """Issue 12 finding 2: a full file system (a 64 KiB tmpfs): one line, old result kept, no temp."""
    out = small_disk / "r.parquet"
    out.write_bytes(b"previous result")
    with open(small_disk / "filler", "wb", buffering=0) as filler:  # fill it up to the last block
        with pytest.raises(OSError):
            while True:
                filler.write(b"x" * 1024)
    status, _, err = run(["--quiet", "run", book, "--out", out, *(["--stream"] if stream else [])], capsys)
    assert_one_line_error(status, err, f"cannot write {out}", "no space left on device")
    assert out.read_bytes() == b"previous result" and _temps(small_disk) == []
    assert sorted(p.name for p in small_disk.iterdir()) == ["filler", "r.parquet"]


def test_finding_2_disk_full_while_streaming_is_one_line_and_leaves_nothing(tmp_path, book, capsys, monkeypatch):
    """Issue 12 finding 2: ENOSPC from the stream's writer: one line, no partial file or temp."""

    class FullWriter:
        def __init__(self, *args, **kwargs):
            pass

        def write_table(self, table):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            pass

    monkeypatch.setattr(pq, "ParquetWriter", FullWriter)
    out = tmp_path / "s.parquet"
    status, _, err = run(["--quiet", "run", book, "--out", out, "--stream"], capsys)
    assert_one_line_error(status, err, f"cannot write {out}", "no space left on device")
    assert not out.exists() and _temps(tmp_path) == []


def _corrupt(path: Path, how: str) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2] if how == "truncated" else b"not parquet at all" * 10)


@pytest.mark.parametrize("how", ["truncated", "garbage"])
@pytest.mark.parametrize("table", ["positions", "marks"])
@pytest.mark.parametrize("command", [["run"], ["run", "--stream"], ["scan"], ["report", "--hedge"]], ids=" ".join)
def test_finding_2_corrupt_or_truncated_parquet_is_one_line(tmp_path, book, capsys, how, table, command):
    """Issue 12 finding 2: a corrupt or truncated Parquet input gave a pyarrow traceback."""
    _corrupt(book / f"{table}.parquet", how)
    status, _, err = run(["--quiet", command[0], book, *command[1:], "--out", tmp_path / "out.x"], capsys)
    assert_one_line_error(status, err, "bad input", f"{table}.parquet", "not a readable Parquet file")
    assert _temps(tmp_path) == [] and not (tmp_path / "out.x").exists()


@pytest.mark.parametrize(
    "meta, needle",
    [("{not json", "broken meta.json"), ('{"time": 1}', "broken meta.json"), ('{"valuation_time": "yesterday"}', "broken meta.json"),
     ("[1, 2]", "broken meta.json"), (None, "missing meta.json")],
    ids=["not-json", "no-key", "bad-date", "not-an-object", "missing"],
)  # fmt: skip
def test_finding_2_broken_or_missing_meta_json_is_one_line(tmp_path, book, capsys, meta, needle):
    """Issue 12 finding 2: a broken meta.json gave a JSONDecodeError / KeyError traceback."""
    if meta is None:
        (book / "meta.json").unlink()
    else:
        (book / "meta.json").write_text(meta)
    status, _, err = run(["--quiet", "scan", book], capsys)
    assert_one_line_error(status, err, "bad input", needle)


@pytest.mark.parametrize("accounts", ["0", "-3", "many"])
def test_finding_2_generate_needs_at_least_one_account(tmp_path, capsys, accounts):
    """Issue 12 finding 2: ``generate --accounts 0`` (or negative) was accepted (and failed later or wrote an empty book)."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(["generate", "--accounts", accounts, "--out", str(tmp_path / "gen")])
    err = capsys.readouterr().err
    assert_one_line_error(exit_.value.code, err, "--accounts")
    assert not (tmp_path / "gen").exists()


@pytest.mark.parametrize(
    "stress, needle",
    [([], "expected at least one argument"), (["BTC=-0.1", "BTC=-0.2"], "BTC is given twice"), (["BTC=abc"], "BTC=abc"),
     (["BTC"], "UNDERLYING=MOVE"), (["=0.1"], "UNDERLYING=MOVE"), (["BTC=nan"], "finite")],
    ids=["bare", "duplicated", "not-a-number", "no-equals", "no-name", "nan"],
)  # fmt: skip
def test_finding_2_bare_duplicated_or_malformed_stress_is_one_line_before_any_work(book, capsys, no_work, stress, needle):
    """Issue 12 finding 2: a bare ``--stress`` meant no stress, ``BTC=-0.1 BTC=-0.2`` kept the last silently."""
    try:
        status = cli.main(["--quiet", "scan", str(book), "--stress", *stress])
    except SystemExit as e:  # argparse's own usage error
        status = e.code
    assert_one_line_error(status, capsys.readouterr().err, needle)


def test_finding_2_usage_errors_are_one_line(capsys):
    """Issue 12 finding 2: argparse printed a usage block before its error."""
    for argv in (["scan"], ["run", "x", "--model", "other"], ["nosuch"], ["run", "x", "--threads", "0"], ["scan", "x", "--top", "-1"]):
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        assert_one_line_error(exit_.value.code, capsys.readouterr().err, "error:")


def test_finding_2_a_missing_book_directory_is_one_line(tmp_path, capsys):
    status, _, err = run(["--quiet", "run", tmp_path / "nope"], capsys)
    assert_one_line_error(status, err, "not a book directory")


def test_finding_2_broken_pipe_exits_quietly(book):
    """Issue 12 finding 2: ``margin-engine scan BOOK | head -1`` ended in a BrokenPipeError traceback."""
    proc = subprocess.Popen([*CLI, "--quiet", "scan", str(book), "--top", "100000"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert first.startswith(b"600 accounts")
    assert err == "" and proc.returncode == 0


def test_finding_2_broken_pipe_still_writes_the_results(tmp_path, book):
    """Issue 12 finding 2: a reader that goes away does not cost the result files."""
    out = tmp_path / "scan.parquet"
    proc = subprocess.Popen([*CLI, "--quiet", "scan", str(book), "--top", "100000", "--out", str(out)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.readline()
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and err == ""
    assert pq.read_table(out).num_rows == 600


# --------------------------------------------------------------------------------------------
# Finding 3: partitioned Parquet datasets as input
# --------------------------------------------------------------------------------------------


def _as_dataset_folders(book: Path, generated) -> Path:
    """The same book with positions as a folder of files (part-0, part-1, part-2, part-10: natural
    order matters to streaming) and balances hive-style (bucket=0/, bucket=1/, ...)."""
    d = book.parent / "partitioned"
    shutil.copytree(book, d)
    (d / "positions.parquet").unlink()
    (d / "balances.parquet").unlink()
    (d / "positions").mkdir()
    n = generated.positions.num_rows
    cuts = [0, n // 5, 2 * n // 5, 3 * n // 5, n]
    for name, (a, b) in zip(["part-0", "part-1", "part-2", "part-10"], zip(cuts, cuts[1:])):
        pq.write_table(generated.positions.slice(a, b - a), d / "positions" / f"{name}.parquet", row_group_size=97)
    (d / "positions" / "_SUCCESS").write_text("")
    ids = generated.balances.column("account_id").to_pylist()
    bounds = [0, len(ids) // 3, 2 * len(ids) // 3, len(ids)]
    for k, (a, b) in enumerate(zip(bounds, bounds[1:])):
        part = d / "balances" / f"bucket={k}"
        part.mkdir(parents=True)
        pq.write_table(generated.balances.slice(a, b - a), part / "data.parquet")
    return d


def test_finding_3_a_book_of_dataset_folders_reads_like_the_single_files(book, generated):
    """Issue 12 finding 3: a table given as a folder of Parquet files was not read."""
    d = _as_dataset_folders(book, generated)
    single, folders = read_book(book), read_book(d)
    assert folders.positions.equals(single.positions)
    assert folders.balances.drop_columns(["bucket"]).equals(single.balances)
    assert all(c.num_chunks == 1 for c in folders.positions.columns)


@pytest.mark.parametrize(
    "command, output",
    [(["run"], "r.parquet"), (["run", "--stream", "--rows-per-slice", "300"], "r.parquet"), (["scan", "--distance"], "s.parquet")],
    ids=["run", "run-stream", "scan"],
)
def test_finding_3_commands_on_dataset_folders_give_identical_results(tmp_path, book, generated, capsys, command, output):
    """Issue 12 finding 3: run, run --stream and scan on a partitioned book give the single-file book's results."""
    d = _as_dataset_folders(book, generated)
    results = []
    for source, name in ((book, "single"), (d, "folders")):
        out = tmp_path / f"{name}-{output}"
        status, _, err = run(["--quiet", command[0], source, *command[1:], "--out", out], capsys)
        assert status == 0, err
        results.append(pq.read_table(out))
    assert results[0].equals(results[1])


def test_finding_3_a_dataset_file_with_another_schema_is_one_line(book, generated, capsys):
    """Issue 12 finding 3: one file of a dataset folder with another schema is named."""
    d = _as_dataset_folders(book, generated)
    pq.write_table(generated.positions.slice(0, 5).drop_columns(["entry_price"]), d / "positions" / "part-11.parquet")
    status, _, err = run(["--quiet", "run", d], capsys)
    assert_one_line_error(status, err, "part-11.parquet", "another schema")


def test_finding_3_both_a_file_and_a_folder_is_an_error(book, capsys):
    (book / "positions").mkdir()
    pq.write_table(pa.table({"x": [1]}), book / "positions" / "part-0.parquet")
    status, _, err = run(["--quiet", "run", book], capsys)
    assert_one_line_error(status, err, "both positions.parquet and the folder positions/")


# --------------------------------------------------------------------------------------------
# Finding 4: --version, help everywhere, --quiet anywhere, progress on long steps
# --------------------------------------------------------------------------------------------


def test_finding_4_version(capsys):
    """Issue 12 finding 4: there was no ``--version``."""
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"margin-engine {me.__version__}"


def _parsers(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _parsers(sub)


def test_finding_4_every_option_of_every_subcommand_has_help():
    """Issue 12 finding 4: options without help text (--accounts, --seed, --threads, ...)."""
    missing = [
        f"{p.prog} {action.dest}"
        for p in _parsers(cli.build_parser())
        for action in p._actions
        if not isinstance(action, argparse._HelpAction) and not (action.help or "").strip()
    ]
    assert missing == []
    subcommands = [p.prog for p in _parsers(cli.build_parser())]
    assert {f"margin-engine {c}" for c in ("demo", "generate", "run", "scan", "report")} <= set(subcommands)


@pytest.mark.parametrize("where", ["before", "after"])
def test_finding_4_quiet_is_accepted_before_or_after_the_subcommand(tmp_path, book, capsys, where):
    """Issue 12 finding 4: ``run BOOK --quiet`` was a usage error."""
    argv = ["--quiet", "run", book] if where == "before" else ["run", book, "--quiet"]
    status, out, err = run(argv, capsys)
    assert status == 0 and out.startswith("600 accounts") and err == ""
    status, _, err = run(["run", book], capsys)
    assert status == 0 and "margin, standard model" in err


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_finding_4_progress_spins_with_the_elapsed_time_on_a_terminal():
    """Issue 12 finding 4: a long step showed nothing until it ended."""
    term = _Terminal()
    progress = cli.Progress(stream=term, interval=0.02)
    with progress.step("distance to liquidation"):
        time.sleep(0.3)
    text = term.getvalue()
    frames = [f for f in text.split("\r") if "distance to liquidation" in f and "s" in f and any(c in f for c in cli.SPIN)]
    assert len(frames) >= 3, text
    assert "done in" in text
    plain = io.StringIO()  # not a terminal (a log file): no spinner frames
    with cli.Progress(stream=plain, interval=0.02).step("distance"):
        time.sleep(0.1)
    assert "\r" not in plain.getvalue() and plain.getvalue().count("\n") == 2


def test_finding_4_progress_bar_with_a_total():
    term = _Terminal()
    progress = cli.Progress(stream=term, interval=0.02)
    with progress.step("margin, streamed"):
        progress.advance(50, 100)
        time.sleep(0.15)
    assert " 50% " in term.getvalue() and "[###############...............]" in term.getvalue()


def test_finding_4_long_steps_each_have_a_progress_step(tmp_path, book, capsys):
    """Issue 12 finding 4: distance, map and plans each show as a step on stderr."""
    status, _, err = run(["scan", book, "--distance", "--map", tmp_path / "m.png", "--plan", tmp_path / "p.parquet"], capsys)
    assert status == 0, err
    for step in ("distance to liquidation", "liquidation map", "liquidation plans"):
        assert f"{step}" in err and "done in" in err, err
    status, _, err = run(["report", book, "--out", tmp_path / "r.html"], capsys)
    assert status == 0 and "optimal hedges" in err


def test_finding_2_generate_out_that_is_a_file_is_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    """Issue 12 finding 2: ``generate --out FILE`` (not a directory) failed after generating, with a traceback."""

    def forbidden(*args, **kwargs):
        raise AssertionError("generated before the output was checked")

    monkeypatch.setattr(synthetic, "generate", forbidden)
    target = tmp_path / "book"
    target.write_text("a file")
    status, _, err = run(["--quiet", "generate", "--accounts", "10", "--out", target], capsys)
    assert_one_line_error(status, err, "cannot write", "not a directory")
    assert target.read_text() == "a file" and _temps(tmp_path) == []
