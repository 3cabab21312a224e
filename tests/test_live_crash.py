"""Crash test of the live book's journal (docs/live.md, "Durability").

A child process applies a deterministic sequence of batches to a journaled ``LiveBook``,
snapshotting every few batches, and acknowledges each batch on a pipe after the call returns.
The parent kills it with SIGKILL (60 times): at random moments, and at named points of the
durable path (a journal record half written, a record written but not yet synced, a snapshot
half written, synced but not renamed, renamed but the folder not synced), where the child pauses
and says so on the pipe. After every kill the parent reopens the folder and checks the book
against an in-memory book that applied the same batches: it equals the book after the last
acknowledged batch, or after the one in flight when the kill came after that batch's record was
whole; never anything in between. The next child carries on from the reopened folder.
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa

import margin_engine as me
from test_live_book import assert_same_bits

KILLS = 60
PHASES = ("journal_write", "journal_sync", "snapshot_write", "snapshot_rename", "snapshot_dirsync")
SNAPSHOT_EVERY = 4
ACCOUNTS = 12


def book_and_state():
    instruments = pa.table({
        "instrument": ["BTC-PERP", "BTC-C", "BTC-P", "ETH-PERP"], "kind": ["perpetual", "option", "option", "perpetual"],
        "underlying": ["BTC", "BTC", "BTC", "ETH"], "multiplier": [1.0, 1.0, 1.0, 1.0],
        "expiry": pa.array([None, 1_800_000_000_000_000_000, 1_800_000_000_000_000_000, None], pa.timestamp("ns", "UTC")),
        "strike": [None, 60_000.0, 40_000.0, None], "option_type": [None, "call", "put", None],
        "initial_margin_rate": [0.02, 0.15, 0.15, 0.05], "maintenance_margin_rate": [0.01, 0.075, 0.075, 0.025],
        "initial_margin_floor": [None, 0.1, 0.1, None]})
    assets = pa.table({"asset": ["USD", "BTC"], "price": [1.0, 50_000.0], "initial_weight": [1.0, 0.9],
                       "maintenance_weight": [1.0, 0.95], "initial_liability_weight": [1.0, 1.1],
                       "maintenance_liability_weight": [1.0, 1.05], "underlying": [None, "BTC"]})
    book = me.Book(instruments, assets)
    market = me.Market(pa.table({"underlying": ["BTC", "ETH"], "index_price": [50_000.0, 3_000.0]}),
                       pa.table({"instrument": ["BTC-PERP", "BTC-C", "BTC-P", "ETH-PERP"],
                                 "mark_price": [50_000.0, 1_000.0, 400.0, 3_000.0], "implied_vol": [None, 0.6, 0.7, None]}),
                       1_700_000_000_000_000_000)
    rng = random.Random(0)
    positions = pa.table({"account_id": pa.array(range(ACCOUNTS), pa.uint64()),
                          "instrument": [rng.choice(["BTC-PERP", "BTC-C", "ETH-PERP"]) for _ in range(ACCOUNTS)],
                          "quantity": [rng.choice([1.0, -1.0, 2.0]) for _ in range(ACCOUNTS)]})
    balances = pa.table({"account_id": pa.array(range(ACCOUNTS), pa.uint64()), "asset": ["USD"] * ACCOUNTS,
                         "amount": [rng.uniform(500.0, 20_000.0) for _ in range(ACCOUNTS)]})
    return book, market, positions, balances


def apply_batch(live, seq: int) -> None:
    """Batch number ``seq`` (1, 2, ...) of the sequence: the same for every process."""
    rng = random.Random(seq)
    kind = seq % 6
    if kind in (1, 4):
        n = rng.randint(1, 20)
        live.apply_fills(pa.table({
            "account_id": pa.array([rng.randrange(ACCOUNTS + 3) for _ in range(n)], pa.uint64()),
            "instrument": [rng.choice(["BTC-PERP", "BTC-C", "BTC-P", "ETH-PERP"]) for _ in range(n)],
            "quantity": [rng.choice([1.0, -1.0, 0.5, -0.25]) for _ in range(n)],
            "price": [rng.uniform(300.0, 52_000.0) for _ in range(n)],
            "fee": [rng.choice([0.0, 0.5]) for _ in range(n)]}))
    elif kind == 2:
        live.apply_transfers(pa.table({"account_id": pa.array([rng.randrange(ACCOUNTS)], pa.uint64()), "asset": ["USD"],
                                       "amount": [rng.uniform(-1_000.0, 1_000.0)]}))
    elif kind == 3:
        live.place_orders(pa.table({"order_id": pa.array([seq * 10, seq * 10 + 1], pa.uint64()),
                                    "account_id": pa.array([rng.randrange(ACCOUNTS)] * 2, pa.uint64()),
                                    "instrument": ["BTC-PERP", "ETH-PERP"], "quantity": [1.0, -2.0], "price": [49_000.0, 3_100.0]}))
    elif kind == 5:
        live.cancel_orders([(seq - 2) * 10])  # placed by batch seq - 2 (kind 3)
    else:
        live.update_market(
            index_prices=pa.table({"underlying": ["BTC"], "index_price": [rng.uniform(40_000.0, 60_000.0)]}),
            marks=pa.table({"instrument": ["BTC-PERP", "BTC-C"], "mark_price": [rng.uniform(40_000.0, 60_000.0), rng.uniform(200.0, 3_000.0)],
                            "implied_vol": [None, rng.uniform(0.3, 0.9)]}))


def child(folder: str, fd: int, phase: str, delay_us: int) -> None:
    out = os.fdopen(fd, "w", buffering=1)
    if not os.path.exists(os.path.join(folder, "book")):
        book, market, positions, balances = book_and_state()
        live = me.LiveBook(book, market, positions, balances, model="portfolio", journal=folder)
    else:
        live = me.LiveBook.open(folder)
    out.write(f"R {live.seq}\n")
    if phase != "none":
        me._core.LiveBook._set_failpoint(phase, delay_us, fd)
    while True:
        apply_batch(live, live.seq + 1)
        out.write(f"A {live.seq}\n")
        if live.seq % SNAPSHOT_EVERY == 0:
            live.snapshot()
            out.write(f"S {live.seq}\n")


class Pipe:
    def __init__(self, fd: int):
        self.fd, self.buffer, self.lines = fd, b"", []

    def read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return False
        chunk = os.read(self.fd, 65536)
        if not chunk:
            return False
        self.buffer += chunk
        *whole, self.buffer = self.buffer.split(b"\n")
        self.lines.extend(w.decode() for w in whole)
        return True

    def wait_for(self, predicate, deadline: float) -> bool:
        while time.monotonic() < deadline:
            if any(predicate(line) for line in self.lines):
                return True
            self.read(0.05)
        return False


ZYGOTE = """
import os, sys
sys.path.insert(0, sys.argv[1])
import test_live_crash as t   # margin_engine imported once; each child is a fork of this process
fd = int(sys.argv[2])
for line in sys.stdin:
    folder, phase, delay_us = line.split()
    pid = os.fork()
    if pid == 0:
        try:
            t.child(folder, fd, phase, int(delay_us))
        finally:
            os._exit(1)
    print(pid, flush=True)
    os.waitpid(pid, 0)
    print("reaped", flush=True)
"""


class Zygote:
    """A process that has imported margin_engine and forks one child per run (no rayon thread
    exists before the fork: the children start theirs), so that 60 kills do not pay 60 imports."""

    def __init__(self):
        self.r, w = os.pipe()
        self.proc = subprocess.Popen([sys.executable, "-c", ZYGOTE, str(Path(__file__).parent), str(w)],
                                     pass_fds=(w,), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        os.close(w)

    def run_and_kill(self, folder: Path, phase: str, rng: random.Random) -> tuple[list[str], str]:
        pipe = Pipe(self.r)
        self.proc.stdin.write(f"{folder} {phase} 40000\n")
        self.proc.stdin.flush()
        pid = int(self.proc.stdout.readline())
        deadline = time.monotonic() + 30
        try:
            assert pipe.wait_for(lambda line: line.startswith("R "), deadline), pipe.lines
            if phase == "none":
                time.sleep(rng.uniform(0.0, 0.15))
                where = "random"
            else:
                # the k-th pause at the phase (k = 1..2), killed while the child sleeps in it
                k = rng.randint(1, 2)
                assert pipe.wait_for(lambda _: sum(line == f"P {phase}" for line in pipe.lines) >= k, deadline), (phase, pipe.lines)
                where = phase
        finally:
            os.kill(pid, signal.SIGKILL)
            assert self.proc.stdout.readline().strip() == "reaped"
        while pipe.read(0.0):
            pass
        return pipe.lines, where

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(10)
        os.close(self.r)


def test_kill_minus_nine_loses_no_acknowledged_batch(tmp_path):
    folder = tmp_path / "live"
    book, market, positions, balances = book_and_state()
    reference = me.LiveBook(book, market, positions, balances, model="portfolio")
    rng = random.Random(1)
    acked = None
    seen = {p: 0 for p in (*PHASES, "random")}
    zygote = Zygote()
    for kill in range(KILLS):
        phase = PHASES[kill % len(PHASES)] if kill % 3 else "none"
        lines, where = zygote.run_and_kill(folder, phase, rng)
        acks = [int(line.split()[1]) for line in lines if line[0] in "RA"]
        acked = acks[-1]
        reopened = me.LiveBook.open(folder)
        in_flight = where in ("journal_sync", "random")
        allowed = {acked, acked + 1} if in_flight else {acked}
        if where == "journal_sync":
            allowed = {acked + 1}  # the record was whole when the process died: it is applied
        assert reopened.seq in allowed, (kill, where, acked, reopened.seq, lines[-5:])
        while reference.seq < reopened.seq:
            apply_batch(reference, reference.seq + 1)
        for table in ("margin", "positions", "balances", "orders"):
            assert_same_bits(getattr(reopened, table)(), getattr(reference, table)())
        seen[where] += 1
        del reopened
    zygote.close()
    assert all(n >= 4 for n in seen.values()), seen
    assert reference.seq > 20
