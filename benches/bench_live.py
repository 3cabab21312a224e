"""Benchmarks of the live book (docs/live.md, "Numbers"); not part of ``make test`` or ``make bench``.

    .venv/bin/python benches/bench_live.py [--accounts 1000000] [--model portfolio] [--journal-events 1000000]

On the generated exchange book (``margin_engine.synthetic``), beside the baseline of re-running
``me.margin`` on the whole book: building the live book; a BTC index move (re-margining every
BTC-exposed account) and one index move per underlying (the cost against the number of exposed
accounts); a batch of 10,000 fills; a single fill; ``check_order`` latency from Python (median
and p99 over many calls, beside ``me.what_if`` on the same rows); and with a journal: a single
fill and a 10,000-fill batch each synced, a snapshot, and opening (snapshot + replay) a journal
of ``--journal-events`` fills. Prints a Markdown table and writes JSON to
benches/results/live-<accounts>-<model>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import margin_engine as me
from margin_engine import synthetic


def timed(f, repeat: int = 1):
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = f()
        best = min(best, time.perf_counter() - t0)
    return best, out


def fills(rng, accounts, instruments, marks, n):
    idx = rng.integers(0, len(instruments), n)
    return pa.table({
        "account_id": pa.array(rng.choice(accounts, n), pa.uint64()),
        "instrument": pa.array(instruments[idx]),
        "quantity": pa.array(rng.choice([-2.0, -1.0, 1.0, 2.0], n)),
        "price": pa.array(marks[idx] * rng.uniform(0.99, 1.01, n)),
    })


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--accounts", type=int, default=1_000_000)
    ap.add_argument("--model", choices=["standard", "portfolio"], default="portfolio")
    ap.add_argument("--journal-events", type=int, default=1_000_000)
    ap.add_argument("--journal-dir", type=Path, default=None, help="where the journal goes (default: a temporary folder)")
    ap.add_argument("--check-orders", type=int, default=100_000)
    args = ap.parse_args()
    rows: list[tuple[str, float, str]] = []

    def record(name, seconds, note=""):
        rows.append((name, seconds, note))
        print(f"{name:58s} {seconds * 1e3:12.3f} ms  {note}", flush=True)

    g = synthetic.generate(args.accounts, seed=7)
    book = me.Book(g.instruments, g.assets, None, g.margin_tiers)
    market = me.Market(g.index_prices, g.marks, g.valuation_time_ns)
    me.margin(book, g.positions, g.balances, market, model=args.model)  # warm: market resolved, risk arrays cached
    t, full = timed(lambda: me.margin(book, g.positions, g.balances, market, model=args.model), 3)
    record(f"baseline: me.margin, whole book ({full.num_rows:,} accounts)", t)
    t, live = timed(lambda: me.LiveBook(book, market, g.positions, g.balances, model=args.model))
    record("LiveBook built from the tables", t, f"{live.num_accounts:,} accounts, {g.positions.num_rows:,} rows")
    assert live.margin().equals(full)

    index = dict(zip(g.index_prices.column("underlying").to_pylist(), g.index_prices.column("index_price").to_pylist()))
    for k, u in enumerate(sorted(index, key=lambda u: u != "BTC")):
        moved = pa.table({"underlying": [u], "index_price": [index[u] * (0.97 if k % 2 == 0 else 1.03)]})
        t, ch = timed(lambda: live.update_market(index_prices=moved))
        record(f"index move {u}", t, f"{ch.remargined:,} accounts re-margined, {ch.changed:,} status changes")
    # the BTC move with the marks of every BTC perpetual and future moved alongside
    ins = g.instruments
    btc_linear = ins.filter(pc.and_(pc.equal(ins.column("underlying"), "BTC"), pc.not_equal(ins.column("kind"), "option")))
    names = btc_linear.column("instrument")
    m = g.marks.filter(pc.is_in(g.marks.column("instrument"), value_set=names))
    marks = pa.table({"instrument": m.column("instrument"), "mark_price": pc.multiply(m.column("mark_price"), 0.98)})
    t, ch = timed(lambda: live.update_market(index_prices=pa.table({"underlying": ["BTC"], "index_price": [index["BTC"] * 0.98]}), marks=marks))
    record("BTC index and BTC linear marks -2%", t, f"{ch.remargined:,} accounts, {ch.changed:,} status changes")
    one_mark = pa.table({"instrument": [names[0].as_py()], "mark_price": [m.column("mark_price")[0].as_py() * 1.001]})
    t, ch = timed(lambda: live.update_market(marks=one_mark), 5)
    record(f"one mark ({names[0].as_py()})", t, f"{ch.remargined:,} accounts")

    rng = np.random.default_rng(1)
    accounts = np.asarray(full.column("account_id"))
    mk = dict(zip(g.marks.column("instrument").to_pylist(), g.marks.column("mark_price").to_pylist()))
    instruments = np.array(ins.column("instrument").to_pylist(), dtype=object)
    mark_arr = np.array([mk[i] for i in instruments])
    batch = fills(rng, accounts, instruments, mark_arr, 10_000)
    t, ch = timed(lambda: live.apply_fills(batch))
    record("10,000 fills", t, f"{ch.remargined:,} accounts")
    singles = [fills(rng, accounts, instruments, mark_arr, 1) for _ in range(300)]
    times = []
    for f in singles:
        t0 = time.perf_counter()
        live.apply_fills(f)
        times.append(time.perf_counter() - t0)
    record("one fill (median of 300)", statistics.median(times), f"p99 {np.percentile(times, 99) * 1e6:.0f} us")

    # check_order latency from Python, on accounts with positions
    acc = accounts[rng.integers(0, len(accounts), args.check_orders)].tolist()
    ins_list = instruments[rng.integers(0, len(instruments), args.check_orders)].tolist()
    price = [mk[i] for i in ins_list]
    check = live.check_order
    lat = np.empty(args.check_orders)
    for k in range(args.check_orders):
        t0 = time.perf_counter_ns()
        check(acc[k], ins_list[k], 1.0, price[k])
        lat[k] = time.perf_counter_ns() - t0
    record("check_order from Python (median)", float(np.median(lat)) / 1e9,
           f"p99 {np.percentile(lat, 99) / 1e3:.2f} us, mean {lat.mean() / 1e3:.2f} us over {args.check_orders:,} calls")
    # me.what_if on the same account's rows (the stateless call needs the rows passed in)
    pos = live.positions()
    bal = live.balances()
    a0 = acc[0]
    prow = pos.filter(pc.equal(pos.column("account_id"), a0))
    p_rows = list(zip(prow.column("instrument").to_pylist(), prow.column("quantity").to_pylist(), prow.column("entry_price").to_pylist()))
    brow = bal.filter(pc.equal(bal.column("account_id"), a0))
    b_rows = dict(zip(brow.column("asset").to_pylist(), brow.column("amount").to_pylist()))
    wl = []
    for k in range(2_000):
        t0 = time.perf_counter_ns()
        me.what_if(book, p_rows, b_rows, market, [(ins_list[k], 1.0, price[k])], model=args.model)
        wl.append(time.perf_counter_ns() - t0)
    record("me.what_if with the account's rows passed in (median)", float(np.median(wl)) / 1e9, f"{len(p_rows)} position rows")
    t, _ = timed(lambda: live.margin(), 3)
    record("live.margin() (the table of every account's last row)", t)

    # durability
    base = args.journal_dir or Path(tempfile.mkdtemp(prefix="live-bench-"))
    folder = base / "live"
    shutil.rmtree(folder, ignore_errors=True)
    t, dlive = timed(lambda: me.LiveBook(book, market, g.positions, g.balances, model=args.model, journal=folder))
    record("LiveBook with journal= (writes the first snapshot)", t)
    times = []
    for f in singles[:100]:
        t0 = time.perf_counter()
        dlive.apply_fills(f)
        times.append(time.perf_counter() - t0)
    record("one fill, journaled and synced (median of 100)", statistics.median(times), f"p99 {np.percentile(times, 99) * 1e3:.2f} ms")
    t, _ = timed(lambda: dlive.apply_fills(batch))
    record("10,000 fills, journaled and synced", t)
    t, _ = timed(lambda: dlive.snapshot())
    record("snapshot", t, f"{sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) / 1e6:.0f} MB in the folder")
    per_batch = 1_000
    t0 = time.perf_counter()
    for _ in range(args.journal_events // per_batch):
        dlive.apply_fills(fills(rng, accounts, instruments, mark_arr, per_batch))
    record(f"journaling {args.journal_events:,} fills in batches of {per_batch:,}", time.perf_counter() - t0)
    del dlive
    t, reopened = timed(lambda: me.LiveBook.open(folder))
    record(f"LiveBook.open: snapshot + replay of {args.journal_events:,} journaled fills", t, f"seq {reopened.seq:,}")
    shutil.rmtree(base if args.journal_dir is None else folder, ignore_errors=True)

    out = Path(__file__).parent / "results" / f"live-{args.accounts}-{args.model}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"accounts": args.accounts, "model": args.model, "cpus": os.cpu_count(),
                               "rows": [{"name": n, "seconds": s, "note": note} for n, s, note in rows]}, indent=1))
    print(f"\n| step | time | note |\n|---|---:|---|")
    for n, s, note in rows:
        print(f"| {n} | {s * 1e3:,.3f} ms | {note} |")


if __name__ == "__main__":
    main()
