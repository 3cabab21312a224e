"""Tests of `margin_engine.synthetic`: schema, keys, determinism, realism and round trips."""

from __future__ import annotations

import datetime as dt
import importlib.util
import itertools
import math
import pathlib
import sys

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

try:
    from margin_engine import synthetic
except ImportError:  # the Rust extension is not built: the module itself is standalone
    _path = pathlib.Path(__file__).parents[1] / "python" / "margin_engine" / "synthetic.py"
    _spec = importlib.util.spec_from_file_location("margin_engine_synthetic", _path)
    synthetic = importlib.util.module_from_spec(_spec)
    sys.modules[_spec.name] = synthetic
    _spec.loader.exec_module(synthetic)

ACCOUNTS = 20_000

UTC_NS = pa.timestamp("ns", tz="UTC")
SCHEMAS = {
    "instruments": pa.schema([
        ("instrument", pa.string()), ("kind", pa.string()), ("underlying", pa.string()),
        ("multiplier", pa.float64()), ("expiry", UTC_NS), ("strike", pa.float64()),
        ("option_type", pa.string()), ("initial_margin_rate", pa.float64()),
        ("maintenance_margin_rate", pa.float64()), ("initial_margin_floor", pa.float64())]),
    "assets": pa.schema([
        ("asset", pa.string()), ("price", pa.float64()), ("initial_weight", pa.float64()),
        ("maintenance_weight", pa.float64()), ("initial_liability_weight", pa.float64()),
        ("maintenance_liability_weight", pa.float64()), ("size_premium", pa.float64()),
        ("underlying", pa.string())]),
    "margin_tiers": pa.schema([
        ("instrument", pa.string()), ("notional_floor", pa.float64()),
        ("initial_margin_rate", pa.float64()), ("maintenance_margin_rate", pa.float64())]),
    "positions": pa.schema([
        ("account_id", pa.uint64()), ("instrument", pa.dictionary(pa.int32(), pa.string())),
        ("quantity", pa.float64()), ("entry_price", pa.float64())]),
    "balances": pa.schema([
        ("account_id", pa.uint64()), ("asset", pa.dictionary(pa.int32(), pa.string())),
        ("amount", pa.float64())]),
    "index_prices": pa.schema([("underlying", pa.string()), ("index_price", pa.float64())]),
    "marks": pa.schema([
        ("instrument", pa.string()), ("mark_price", pa.float64()), ("implied_vol", pa.float64())]),
}


@pytest.fixture(scope="module")
def book():
    return synthetic.generate(ACCOUNTS, seed=11)


def _np(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).to_numpy()


def _codes(table: pa.Table, name: str, keys: pa.Table, key: str) -> np.ndarray:
    """Dictionary column -> row ids in the key table."""
    col = table.column(name).combine_chunks()
    remap = pc.index_in(col.dictionary, value_set=keys.column(key)).to_numpy(zero_copy_only=False)
    return remap[col.indices.to_numpy()]


# ----------------------------------------------------------------------------------------------
# Determinism and shape
# ----------------------------------------------------------------------------------------------

def test_same_seed_same_tables_and_different_seed_differs(book):
    again = synthetic.generate(ACCOUNTS, seed=11)
    assert again == book
    for name in synthetic.TABLE_NAMES:
        assert again.tables[name].equals(book.tables[name]), name
    other = synthetic.generate(ACCOUNTS, seed=12)
    assert not other.positions.equals(book.positions)
    assert not other.balances.equals(book.balances)


def test_schemas(book):
    for name, schema in SCHEMAS.items():
        assert book.tables[name].schema.equals(schema), name
    assert book.valuation_time == dt.datetime(2026, 11, 25, 8, tzinfo=dt.timezone.utc)
    assert book.valuation_time.tzinfo is not None
    assert book.valuation_time_ns == int(book.valuation_time.timestamp()) * 10**9
    assert book.nbytes == sum(t.nbytes for t in book.tables.values())


def test_progress_reports_steps():
    steps: list[str] = []
    synthetic.generate(200, seed=1, progress=steps.append)
    assert steps[0] == "instruments" and "positions" in steps and "balances" in steps


# ----------------------------------------------------------------------------------------------
# Keys and referential integrity
# ----------------------------------------------------------------------------------------------

def test_keys_unique_and_referenced(book):
    instruments = book.instruments.column("instrument").to_pylist()
    assert len(set(instruments)) == len(instruments)
    assert book.marks.column("instrument").to_pylist() == instruments
    assets = book.assets.column("asset").to_pylist()
    assert len(set(assets)) == len(assets)
    underlyings = book.index_prices.column("underlying").to_pylist()
    assert len(set(underlyings)) == len(underlyings)
    assert set(book.instruments.column("underlying").to_pylist()) == set(underlyings)
    linked = {u for u in book.assets.column("underlying").to_pylist() if u is not None}
    assert linked <= set(underlyings)
    tiers = book.margin_tiers.to_pylist()
    assert len({(t["instrument"], t["notional_floor"]) for t in tiers}) == len(tiers)


def test_every_position_instrument_exists(book):
    col = book.positions.column("instrument").combine_chunks()
    assert col.null_count == 0
    assert col.dictionary.equals(book.instruments.column("instrument").combine_chunks())
    idx = col.indices.to_numpy()
    assert idx.min() >= 0 and idx.max() < book.instruments.num_rows


def test_balances_no_duplicates_and_known_assets(book):
    codes = _codes(book.balances, "asset", book.assets, "asset")
    assert (codes >= 0).all()
    key = _np(book.balances, "account_id").astype(np.float64) * 16 + codes
    assert len(np.unique(key)) == book.balances.num_rows
    assert (_np(book.balances, "amount") != 0).all()


# ----------------------------------------------------------------------------------------------
# Market realism
# ----------------------------------------------------------------------------------------------

def test_instruments(book):
    ins = book.instruments
    n = ins.num_rows
    assert 1_800 <= n <= 2_300
    kind = np.array(ins.column("kind").to_pylist())
    assert set(kind) == {"perpetual", "future", "option"}
    opt = kind == "option"
    assert ins.column("expiry").is_null().to_numpy(zero_copy_only=False).tolist() == list(
        kind == "perpetual")
    assert ins.column("strike").is_null().to_numpy(zero_copy_only=False).tolist() == list(~opt)
    assert ins.column("option_type").is_null().to_numpy(zero_copy_only=False).tolist() == list(~opt)
    assert ins.column("initial_margin_floor").is_null().to_numpy(
        zero_copy_only=False).tolist() == list(~opt)
    assert set(ins.filter(pc.equal(ins.column("kind"), "option"))
               .column("option_type").to_pylist()) == {"call", "put"}
    expiry = ins.column("expiry").cast(pa.int64()).to_numpy(zero_copy_only=False)
    assert (expiry[kind != "perpetual"] > book.valuation_time_ns).all()
    years = (expiry[opt].max() - book.valuation_time_ns) / (365 * 86_400e9)
    assert 0.8 < years < 1.5
    imr, mmr = _np(ins, "initial_margin_rate"), _np(ins, "maintenance_margin_rate")
    assert (mmr > 0).all() and (imr >= mmr).all()
    assert (_np(ins, "multiplier") > 0).all()
    names = ins.column("instrument").to_pylist()
    assert {"BTC-PERP", "ETH-PERP", "SOL-PERP", "BTC-25DEC26"} <= set(names)
    assert "BTC-25DEC26-100000-C" in names and "BTC-25DEC26-100000-P" in names
    for und, lo, hi in (("BTC", 80_000, 100_000), ("ETH", 2_500, 3_500), ("SOL", 120, 180)):
        price = book.index_prices.filter(pc.equal(book.index_prices.column("underlying"), und))
        assert lo < price.column("index_price")[0].as_py() < hi
        strikes = ins.filter(pc.and_(pc.equal(ins.column("underlying"), und),
                                     pc.equal(ins.column("kind"), "option"))).column("strike")
        spot = (lo + hi) / 2
        assert pc.min(strikes).as_py() <= 0.45 * spot and pc.max(strikes).as_py() >= 2.2 * spot


def test_margin_tiers_are_increasing_brackets_of_linear_instruments(book):
    kinds = dict(zip(book.instruments.column("instrument").to_pylist(),
                     book.instruments.column("kind").to_pylist()))
    by_instrument: dict[str, list[tuple]] = {}
    for t in book.margin_tiers.to_pylist():
        assert kinds[t["instrument"]] in ("perpetual", "future")
        by_instrument.setdefault(t["instrument"], []).append(
            (t["notional_floor"], t["initial_margin_rate"], t["maintenance_margin_rate"]))
    assert {"BTC-PERP", "ETH-PERP", "SOL-PERP"} <= set(by_instrument)
    for brackets in by_instrument.values():
        assert brackets[0][0] == 0.0 and len(brackets) >= 3
        for (f0, i0, m0), (f1, i1, m1) in itertools.pairwise(brackets):
            assert f1 > f0 and i1 > i0 and m1 > m0 and i1 >= m1


def test_assets(book):
    a = {r["asset"]: r for r in book.assets.to_pylist()}
    assert {"USD", "USDC", "USDT", "BTC", "ETH", "SOL"} <= set(a)
    for r in a.values():
        assert 0 < r["initial_weight"] <= r["maintenance_weight"] <= 1
        assert 1 <= r["maintenance_liability_weight"] <= r["initial_liability_weight"]
        assert r["size_premium"] >= 0 and r["price"] > 0
    assert a["USDC"]["size_premium"] == 0 and a["USDC"]["underlying"] is None
    assert a["BTC"]["size_premium"] > 0 and a["BTC"]["underlying"] == "BTC"
    index = dict(zip(book.index_prices.column("underlying").to_pylist(),
                     book.index_prices.column("index_price").to_pylist()))
    assert a["BTC"]["price"] == index["BTC"]


def _black76(f: float, k: float, t: float, vol: float, call: bool) -> float:
    def n(x: float) -> float:
        return 0.5 * math.erfc(-x / math.sqrt(2))

    sd = vol * math.sqrt(t)
    d1 = (math.log(f / k) + 0.5 * sd * sd) / sd
    d2 = d1 - sd
    return f * n(d1) - k * n(d2) if call else k * n(-d2) - f * n(-d1)


def test_marks(book):
    ins, marks = book.instruments, book.marks
    index = dict(zip(book.index_prices.column("underlying").to_pylist(),
                     book.index_prices.column("index_price").to_pylist()))
    expiry = ins.column("expiry").cast(pa.int64()).to_pylist()
    iv = marks.column("implied_vol").to_pylist()
    mark = marks.column("mark_price").to_pylist()
    checked = 0
    for i, r in enumerate(ins.select(["kind", "underlying", "strike", "option_type"]).to_pylist()):
        s = index[r["underlying"]]
        if r["kind"] != "option":
            assert iv[i] is None
            assert abs(mark[i] / s - 1) < 0.12
            continue
        assert 0.3 < iv[i] < 1.6
        t = (expiry[i] - book.valuation_time_ns) / 1e9 / 31_536_000
        expected = _black76(s, r["strike"], t, iv[i], r["option_type"] == "call")
        assert mark[i] >= 0
        assert abs(mark[i] - expected) <= 1e-9 * max(1.0, expected)
        checked += 1
    assert checked > 1_500


# ----------------------------------------------------------------------------------------------
# Book realism
# ----------------------------------------------------------------------------------------------

def test_positions_shape(book):
    pos = book.positions
    ids = _np(pos, "account_id")
    assert (np.diff(ids.astype(np.float64)) >= 0).all()            # sorted by account
    accounts, rows = np.unique(ids, return_counts=True)
    assert 8 <= pos.num_rows / ACCOUNTS <= 12                      # ~10 rows per account
    assert np.median(rows) <= 5 and rows.max() >= 100              # heavy tailed
    assert (np.diff(accounts) > 1).mean() > 0.99                   # not contiguous ids
    assert ids.max() > 2**32
    q = _np(pos, "quantity")
    assert (q != 0).all() and (q > 0).any() and (q < 0).any()
    assert (_np(pos, "entry_price") > 0).all()
    # repeated (account, instrument) rows, some netting to exactly zero
    instr = _codes(pos, "instrument", book.instruments, "instrument")
    new = np.ones(len(ids), dtype=bool)
    new[1:] = (ids[1:] != ids[:-1]) | (instr[1:] != instr[:-1])
    assert 0.05 < 1 - new.mean() < 0.5
    net = np.add.reduceat(q, np.flatnonzero(new))
    assert 0 < (net == 0).mean() < 0.05


def test_popular_instruments_dominate(book):
    instr = _codes(book.positions, "instrument", book.instruments, "instrument")
    counts = np.bincount(instr, minlength=book.instruments.num_rows)
    names = book.instruments.column("instrument").to_pylist()
    assert names[int(counts.argmax())] == "BTC-PERP"
    kind = np.array(book.instruments.column("kind").to_pylist())
    assert 0.2 < counts[kind == "perpetual"].sum() / counts.sum() < 0.7
    assert 0.2 < counts[kind == "option"].sum() / counts.sum() < 0.7
    # wings are rare: the least traded half of the instruments hold a small share of rows
    assert np.sort(counts)[: len(counts) // 2].sum() < 0.05 * counts.sum()


def test_notional_range(book):
    instr = _codes(book.positions, "instrument", book.instruments, "instrument")
    index = dict(zip(book.index_prices.column("underlying").to_pylist(),
                     book.index_prices.column("index_price").to_pylist()))
    spot = np.array([index[u] for u in book.instruments.column("underlying").to_pylist()])
    notional = (np.abs(_np(book.positions, "quantity"))
                * _np(book.instruments, "multiplier")[instr] * spot[instr])
    p1, p50, p99 = np.percentile(notional, [1, 50, 99])
    assert 50 < p1 < 1_000 and 1_000 < p50 < 50_000 and 100_000 < p99 < 2e7


def test_balances_shape(book):
    ids = _np(book.balances, "account_id")
    assert (np.diff(ids.astype(np.float64)) >= 0).all()
    accounts, per_account = np.unique(ids, return_counts=True)
    assert (per_account <= 3).mean() > 0.95 and (per_account >= 2).mean() > 0.2
    amount = _np(book.balances, "amount")
    borrowers = np.unique(ids[amount < 0])
    assert 0.01 < len(borrowers) / len(accounts) < 0.08
    with_positions = np.unique(_np(book.positions, "account_id"))
    idle = np.setdiff1d(accounts, with_positions)
    assert 0.005 < len(idle) / ACCOUNTS < 0.05


def test_health_distribution(book):
    status = _standard_status(book)
    share = {s: float(np.mean(status == s)) for s in
             ("healthy", "margin_call", "liquidatable", "bankrupt")}
    assert 0.85 < share["healthy"] < 0.95, share
    assert 0.03 < share["margin_call"] < 0.08, share
    assert 0.015 < share["liquidatable"] < 0.05, share
    assert 0.004 < share["bankrupt"] < 0.025, share


def _standard_status(book) -> np.ndarray:
    """Independent §2/§3/§6 status per account (numpy; tiers as methodology-notes §3)."""
    ins = book.instruments
    kind = np.array(ins.column("kind").to_pylist())
    mult = _np(ins, "multiplier")
    strike = ins.column("strike").fill_null(0.0).to_numpy()
    call = np.array([t == "call" for t in ins.column("option_type").to_pylist()])
    imr, mmr = _np(ins, "initial_margin_rate"), _np(ins, "maintenance_margin_rate")
    floor = ins.column("initial_margin_floor").fill_null(0.0).to_numpy()
    index = dict(zip(book.index_prices.column("underlying").to_pylist(),
                     book.index_prices.column("index_price").to_pylist()))
    spot = np.array([index[u] for u in ins.column("underlying").to_pylist()])
    mark = _np(book.marks, "mark_price")
    row = {name: i for i, name in enumerate(ins.column("instrument").to_pylist())}
    tiers: dict[int, list[tuple]] = {}
    for t in book.margin_tiers.to_pylist():
        tiers.setdefault(row[t["instrument"]], []).append(
            (t["notional_floor"], t["initial_margin_rate"], t["maintenance_margin_rate"]))

    pos = book.positions
    acc, q = _np(pos, "account_id"), _np(pos, "quantity")
    instr = _codes(pos, "instrument", ins, "instrument")
    entry = _np(pos, "entry_price")
    order = np.lexsort((instr, acc))
    acc, instr, q, entry = acc[order], instr[order], q[order], entry[order]
    new = np.ones(len(acc), dtype=bool)
    new[1:] = (acc[1:] != acc[:-1]) | (instr[1:] != instr[:-1])
    starts = np.flatnonzero(new)
    gi, ga, net = instr[starts], acc[starts], np.add.reduceat(q, starts)
    linear = kind[gi] != "option"
    upnl = np.add.reduceat(np.where(kind[instr] != "option",
                                    q * mult[instr] * (mark[instr] - entry), 0.0), starts)
    value = np.where(net == 0, 0.0, np.where(linear, upnl, net * mult[gi] * mark[gi]))
    notional = np.abs(net) * mult[gi] * mark[gi]
    im, mm = notional * imr[gi], notional * mmr[gi]
    for i, brackets in tiers.items():
        sel = gi == i
        for out, col in ((im, 1), (mm, 2)):
            cum, res = 0.0, notional[sel] * brackets[0][col]
            for prev, cur in itertools.pairwise(brackets):
                cum += cur[0] * (cur[col] - prev[col])
                res = np.where(notional[sel] >= cur[0], notional[sel] * cur[col] - cum, res)
            out[sel] = res
    s, k = spot[gi], strike[gi]
    otm = np.where(call[gi], np.maximum(k - s, 0), np.maximum(s - k, 0))
    short = np.where(~linear & (net < 0), -net * mult[gi], 0.0)
    im = np.where(linear, im, short * (mark[gi] + np.maximum(imr[gi] * s - otm, floor[gi] * s)))
    mm = np.where(linear, mm, short * (mark[gi] + mmr[gi] * s))

    bal, assets = book.balances, book.assets
    bacc, amount = _np(bal, "account_id"), _np(bal, "amount")
    a = _codes(bal, "asset", assets, "asset")
    price = _np(assets, "price")[a]
    premium = _np(assets, "size_premium")[a]

    def weighted(w: str, lw: str) -> np.ndarray:
        weight = _np(assets, w)[a]
        capped = np.minimum(weight, 1.1 / (1 + premium * np.sqrt(np.maximum(amount, 0))))
        weight = np.where(premium > 0, capped, weight)
        return np.where(amount > 0, amount * price * weight, amount * price * _np(assets, lw)[a])

    accounts = np.union1d(ga, bacc)
    gp, bp = np.searchsorted(accounts, ga), np.searchsorted(accounts, bacc)
    size = len(accounts)
    pnl = np.bincount(gp, value, size)
    equity = np.bincount(bp, amount * price, size) + pnl
    ci = np.bincount(bp, weighted("initial_weight", "initial_liability_weight"), size) + pnl
    cm = np.bincount(bp, weighted("maintenance_weight", "maintenance_liability_weight"),
                     size) + pnl
    total_im, total_mm = np.bincount(gp, im, size), np.bincount(gp, mm, size)
    return np.where(equity < 0, "bankrupt", np.where(
        cm < total_mm, "liquidatable", np.where(ci < total_im, "margin_call", "healthy")))


# ----------------------------------------------------------------------------------------------
# Shuffle and Parquet
# ----------------------------------------------------------------------------------------------

def _sorted_rows(table: pa.Table) -> pa.Table:
    plain = table.cast(pa.schema([
        pa.field(f.name, f.type.value_type if pa.types.is_dictionary(f.type) else f.type)
        for f in table.schema]))
    return plain.sort_by([(name, "ascending") for name in plain.column_names])


def test_shuffle_permutes_rows(book):
    small = synthetic.generate(3_000, seed=5)
    shuffled = synthetic.generate(3_000, seed=5, shuffle=True)
    for name in ("positions", "balances"):
        assert not shuffled.tables[name].equals(small.tables[name])
        assert _sorted_rows(shuffled.tables[name]).equals(_sorted_rows(small.tables[name]))
    ids = _np(shuffled.positions, "account_id").astype(np.float64)
    assert (np.diff(ids) < 0).any()
    for name in ("instruments", "assets", "margin_tiers", "index_prices", "marks"):
        assert shuffled.tables[name].equals(small.tables[name])
    assert synthetic.generate(3_000, seed=5, shuffle=True) == shuffled


def test_parquet_round_trip(book, tmp_path):
    book.write_parquet(tmp_path / "book")
    files = sorted(p.name for p in (tmp_path / "book").iterdir())
    assert files == sorted([f"{n}.parquet" for n in synthetic.TABLE_NAMES] + ["meta.json"])
    back = synthetic.SyntheticBook.read_parquet(tmp_path / "book")
    assert back == book
    for name in synthetic.TABLE_NAMES:
        assert back.tables[name].schema.equals(SCHEMAS[name]), name
        assert back.tables[name].equals(book.tables[name]), name
    assert back.valuation_time == book.valuation_time
    assert back.valuation_time_ns == book.valuation_time_ns


@pytest.mark.parametrize("accounts", [1, 2, 7, 50])
def test_tiny_books(accounts):
    for seed in range(3):
        small = synthetic.generate(accounts, seed=seed, shuffle=seed == 2)
        ids = np.union1d(_np(small.positions, "account_id"), _np(small.balances, "account_id"))
        assert 1 <= len(ids) <= accounts
        assert small.positions.schema.equals(SCHEMAS["positions"])
        assert small.balances.schema.equals(SCHEMAS["balances"])
