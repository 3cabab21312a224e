"""The live risk book: accounts kept in memory (in Rust), changed by batches of events, each batch
re-margining only the accounts it reaches (``docs/live.md``).

A :class:`LiveBook` starts from the tables :func:`margin_engine.margin` reads and then takes
fills, transfers, resting orders and partial market updates as they come. Every margin row is
computed by the engine's own per-account path, so :meth:`LiveBook.margin` is bit-identical to
``me.margin`` on the tables rebuilt from the same events, and :meth:`LiveBook.check_order` to
``me.what_if`` on the account's current rows. With ``journal=DIR`` every batch is appended to an
Arrow IPC journal and synced to disk before the call returns; :meth:`LiveBook.open` restores the
last snapshot and replays the journal after it.

>>> import datetime as dt, pyarrow as pa, margin_engine as me
>>> book = me.Book(
...     pa.table({"instrument": ["BTC-PERP"], "kind": ["perpetual"], "underlying": ["BTC"],
...               "multiplier": [1.0], "initial_margin_rate": [0.02], "maintenance_margin_rate": [0.01]}),
...     pa.table({"asset": ["USD"], "price": [1.0], "initial_weight": [1.0], "maintenance_weight": [1.0],
...               "initial_liability_weight": [1.0], "maintenance_liability_weight": [1.0]}))
>>> market = me.Market(pa.table({"underlying": ["BTC"], "index_price": [50_000.0]}),
...                    pa.table({"instrument": ["BTC-PERP"], "mark_price": [50_000.0]}), "2025-01-01")
>>> live = me.LiveBook(book, market,
...     pa.table({"account_id": [1], "instrument": ["BTC-PERP"], "quantity": [1.0], "entry_price": [50_000.0]}),
...     pa.table({"account_id": [1], "asset": ["USD"], "amount": [1_000.0]}))
>>> live.account(1).status
'healthy'
>>> moved = live.update_market(marks=pa.table({"instrument": ["BTC-PERP"], "mark_price": [48_500.0]}))
>>> moved.table.select(["account_id", "status_before", "status_after"]).to_pylist()
[{'account_id': 1, 'status_before': 'healthy', 'status_after': 'bankrupt'}]
>>> live.apply_transfers(pa.table({"account_id": [1], "asset": ["USD"], "amount": [1_500.0]})).changed
1
>>> live.check_order(1, "BTC-PERP", 1.0, 48_500.0).accepted
True
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute
import pyarrow.ipc

from margin_engine import _core
from margin_engine._inputs import (
    arrow_input,
    as_output,
    check_flag,
    check_instance,
    check_model,
    check_output,
    input_error,
    timestamp_ns,
)
from margin_engine.api import AccountMargin, Book, Market, WhatIf

_BOOK_TABLES = ("instruments", "assets", "risk_params", "margin_tiers")
_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class Changes:
    """What one batch did.

    ``table``: one row per account whose status changed (by ``account_id``): ``account_id``,
    ``status_before`` (null for an account the batch created), ``status_after``, and the account's
    new row: ``equity``, ``collateral_initial``, ``collateral_maintenance``, ``initial_margin``,
    ``maintenance_margin``, ``free_collateral``, ``margin_excess``, ``health`` (the columns of
    :func:`margin_engine.margin`). ``remargined``: accounts the batch re-margined; ``events``:
    rows the batch held; ``seq``: the batch's number in the journal (batches applied since the
    book was created).
    """

    table: Any
    remargined: int
    events: int
    seq: int

    @property
    def changed(self) -> int:
        """Accounts whose status changed."""
        return int(self.table.num_rows)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_book(directory: Path, book: Book) -> None:
    """Writes the book's tables into ``directory/book`` atomically (a temporary folder, each file
    synced, renamed, the directory synced)."""
    final, tmp = directory / "book", directory / "book.tmp"
    if final.exists():
        raise input_error("arguments", "journal", f"{directory} already holds a live book: open it with LiveBook.open")
    tmp.mkdir(exist_ok=True)
    for name in _BOOK_TABLES:
        table = getattr(book, name)
        if table is None:
            continue
        path = tmp / f"{name}.arrow"
        with open(path, "wb") as f:
            with pa.ipc.new_file(f, table.schema) as writer:
                writer.write_table(table)
            f.flush()
            os.fsync(f.fileno())
    if book.methodology is not None:
        book.methodology.to_file(tmp / "methodology.toml")  # written and synced
    with open(tmp / "live.json", "w") as f:
        json.dump({"format": _FORMAT}, f)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)
    os.replace(tmp, final)
    _fsync_dir(directory)


def _read_book(directory: Path) -> Book:
    folder = directory / "book"
    if not (folder / "live.json").exists():
        raise input_error("arguments", "journal", f"{directory} holds no live book (no book/live.json)")
    with open(folder / "live.json") as f:
        if json.load(f).get("format") != _FORMAT:
            raise input_error("arguments", "journal", f"{directory}: unknown live book format")
    tables = {}
    for name in _BOOK_TABLES:
        path = folder / f"{name}.arrow"
        tables[name] = pa.ipc.open_file(pa.memory_map(str(path))).read_all() if path.exists() else None
    methodology = None
    if (folder / "methodology.toml").exists():
        from margin_engine.methodology import Methodology

        methodology = Methodology.from_file(folder / "methodology.toml")
    return Book(tables["instruments"], tables["assets"], tables["risk_params"], tables["margin_tiers"], methodology=methodology)


class LiveBook:
    """A live risk book over ``book``, starting from ``positions`` and ``balances`` (read as
    :func:`margin_engine.margin` reads them) at ``market``.

    Reads:

    - ``positions``: ``account_id``, ``instrument``, ``quantity``, optional ``entry_price``;
      ``balances``: ``account_id``, ``asset``, ``amount`` (as in :func:`margin_engine.margin`).
    - ``orders`` (optional): resting orders, ``order_id`` (integer >= 0, unique), ``account_id``
      (an account with a position or a balance), ``instrument``, ``quantity`` (signed, non-zero),
      ``price`` (> 0). They add to the account's initial margin as ``orders`` of
      :func:`margin_engine.margin` do (``docs/methodology.md``, "Open orders"), and
      :meth:`check_order` sees them.
    - book and market: as in :func:`margin_engine.margin` (the book's methodology included); the
      live book keeps every row and column of the market's ``index_prices`` and ``marks``, its
      ``expiry_feeds`` and valuation time, and changes them by :meth:`update_market`.

    Options (keyword-only): ``model`` (``"standard"`` or ``"portfolio"``); ``journal``: a folder
    (created if missing, must not hold a live book) for the journal and snapshots, or ``None``
    for a book in memory only; ``allow_negative_balances`` (default ``True``): ``False`` rejects a
    transfer out that would leave a balance below 0; ``premium_asset``: the asset option premiums
    and fees settle in (default the book's quote asset, the first asset priced 1 and linked to no
    underlying).

    Every batch method checks the whole batch first: a bad row (unknown instrument or asset, a
    transfer out of an unknown account, NaN/inf/negative price, an overdraft where forbidden, an
    unknown or repeated order id, a value that overflows) raises :class:`MarginInputError` naming
    the rows, and nothing of the batch is applied or journaled.
    """

    def __init__(
        self,
        book: Book,
        market: Market,
        positions: Any,
        balances: Any,
        *,
        orders: Any = None,
        model: str = "standard",
        journal: str | os.PathLike[str] | None = None,
        allow_negative_balances: bool = True,
        premium_asset: str | None = None,
    ):
        check_instance(book, Book, "book")
        check_instance(market, Market, "market")
        model = check_model(model)
        allow_negative_balances = check_flag(allow_negative_balances, "allow_negative_balances")
        # isolated positions are margined alone (me.isolated_margin); the live book is cross only
        from margin_engine.isolated import without_isolated

        positions = without_isolated(book, positions, "LiveBook")
        directory = None
        if journal is not None:
            directory = Path(journal)
            directory.mkdir(parents=True, exist_ok=True)
            _write_book(directory, book)
        self._book = book
        try:
            self._core = _core.LiveBook(
                book._core,
                market._core,
                arrow_input(positions, "positions"),
                arrow_input(balances, "balances"),
                None if orders is None else arrow_input(orders, "orders"),
                model,
                allow_negative_balances,
                premium_asset,
                None if directory is None else str(directory),
                market.expiry_feeds,
            )
        except BaseException:
            if directory is not None:  # nothing of a book that could not be made stays behind
                shutil.rmtree(directory / "book", ignore_errors=True)
            raise

    @classmethod
    def open(cls, journal: str | os.PathLike[str]) -> LiveBook:
        """The live book kept in ``journal``: its last snapshot, then every batch journaled after
        it (a record torn by a crash is dropped; it was never acknowledged)."""
        directory = Path(journal)
        book = _read_book(directory)
        self = cls.__new__(cls)
        self._book = book
        self._core = _core.LiveBook.open(book._core, str(directory))
        return self

    @staticmethod
    def _changes(result: tuple[Any, int, int, int]) -> Changes:
        table, remargined, events, seq = result
        return Changes(pa.table(table), remargined, events, seq)

    def apply_fills(self, fills: Any) -> Changes:
        """Applies trades. ``fills``: ``account_id``, ``instrument``, ``quantity`` (signed
        contracts, finite), ``price`` (finite, >= 0), optional ``fee`` (USD, finite; negative = a
        rebate). A fill adds a position row of ``quantity`` with ``entry_price = price`` (a new
        account if the id is unknown); an option fill also moves ``−quantity × multiplier ×
        price`` (the premium) and any fill ``−fee`` into the premium asset's balance (divided by
        its price). Re-margins the fills' accounts."""
        from margin_engine.isolated import has_margin_mode

        present, fills = has_margin_mode(fills)
        if present:
            raise input_error("fills", "margin_mode", "LiveBook does not model isolated positions yet: fills are cross")
        return self._changes(self._core.apply_fills(arrow_input(fills, "fills")))

    def apply_transfers(self, transfers: Any) -> Changes:
        """Deposits (``amount > 0``) and withdrawals (``amount < 0``). ``transfers``:
        ``account_id``, ``asset``, ``amount`` (finite, in units of the asset). A deposit may open
        an account; a withdrawal needs a known account, and with
        ``allow_negative_balances=False`` may not leave the balance below 0. Re-margins those
        accounts."""
        return self._changes(self._core.apply_transfers(arrow_input(transfers, "transfers")))

    def place_orders(self, orders: Any) -> Changes:
        """Adds resting orders (columns as ``orders`` of :class:`LiveBook`). They are kept,
        journaled and snapshotted, and add their initial margin to their account (the worse of
        all bids or all asks filling, ``docs/methodology.md`` "Open orders"); maintenance margin
        and liquidation never see them."""
        return self._changes(self._core.place_orders(arrow_input(orders, "orders")))

    def cancel_orders(self, order_ids: Any) -> Changes:
        """Removes resting orders: a table with ``order_id`` (each resting, once), or a list of ids."""
        if isinstance(order_ids, (list, tuple)):
            order_ids = pa.table({"order_id": pa.array(order_ids, pa.uint64())})
        return self._changes(self._core.cancel_orders(arrow_input(order_ids, "order_ids")))

    def update_market(self, *, index_prices: Any = None, marks: Any = None, valuation_time: Any = None) -> Changes:
        """A partial market update: ``index_prices`` (``underlying``, ``index_price`` > 0) and
        ``marks`` (``instrument``, ``mark_price`` >= 0, optional ``implied_vol`` > 0; a null or
        missing vol keeps the option's vol), either may be ``None``; ``valuation_time`` as in
        :class:`margin_engine.Market`. Rows of underlyings or instruments the book does not know
        are ignored. Re-margins the accounts exposed to what moved (a position row in a marked
        instrument; a row in, or a balance of an asset linked to, a moved underlying; every account
        with positions for a new valuation time)."""
        ns = None if valuation_time is None else timestamp_ns(valuation_time)
        return self._changes(
            self._core.update_market(
                None if index_prices is None else arrow_input(index_prices, "index_prices"),
                None if marks is None else arrow_input(marks, "marks"),
                ns,
            )
        )

    def check_order(self, account_id: int, instrument: Any, quantity: float, price: float) -> WhatIf:
        """The pre-trade check of buying (``quantity > 0``) or selling ``quantity`` contracts of
        ``instrument`` at ``price`` for the account: exactly :func:`margin_engine.what_if` on the
        account's current rows with the book's model and premium asset (``accepted``: free
        collateral >= 0 after the trade, or the trade reduces risk). Nothing is applied."""
        return self._core.check_order(account_id, instrument, quantity, price)

    def margin(self, *, output: str = "arrow") -> Any:
        """Every account's margin row, by ``account_id``: :func:`margin_engine.margin` on the
        current state (the same columns)."""
        return as_output(pa.table(self._core.margin()), check_output(output))

    def account(self, account_id: int) -> AccountMargin:
        """One account's current margin row (:class:`margin_engine.AccountMargin`)."""
        return self._core.account(account_id)

    def snapshot(self) -> None:
        """Writes the whole state to the journal folder atomically (a temporary file, synced,
        renamed, the folder synced) and starts a new journal after it."""
        self._core.snapshot()

    def positions(self, *, output: str = "arrow") -> Any:
        """The current position rows (``account_id``, ``instrument``, ``quantity``,
        ``entry_price``): the positions table ``me.margin`` would read for this state."""
        return as_output(pa.table(self._core.positions()), check_output(output))

    def balances(self, *, output: str = "arrow") -> Any:
        """The current balances (``account_id``, ``asset``, ``amount``)."""
        return as_output(pa.table(self._core.balances()), check_output(output))

    def orders(self, *, output: str = "arrow") -> Any:
        """The resting orders (``order_id``, ``account_id``, ``instrument``, ``quantity``, ``price``)."""
        return as_output(pa.table(self._core.orders()), check_output(output))

    def market(self) -> Market:
        """The current market as a :class:`margin_engine.Market`."""
        index_prices, marks, ns, feeds = self._core.market_tables()
        return Market(pa.table(index_prices), pa.table(marks), ns, expiry_feeds=None if feeds is None else pa.table(feeds))

    @property
    def book(self) -> Book:
        return self._book

    @property
    def seq(self) -> int:
        """Batches applied since the book was created."""
        return int(self._core.seq)

    @property
    def model(self) -> str:
        return str(self._core.model)

    @property
    def num_accounts(self) -> int:
        return int(self._core.num_accounts)

    def __repr__(self) -> str:
        return f"LiveBook({self.num_accounts} accounts, model={self.model!r}, seq={self.seq})"


# --- replaying an event file (margin-engine live-replay) -----------------------------------------

_FAMILY = {"fill": 0, "transfer": 1, "order": 2, "cancel": 3, "index": 4, "mark": 4}
_COLUMNS = {
    0: ("account_id", "instrument", "quantity", "price", "fee"),
    1: ("account_id", "asset", "amount"),
    2: ("order_id", "account_id", "instrument", "quantity", "price"),
    3: ("order_id",),
}


def replay_events(live: LiveBook, events: Any, *, batch_rows: int = 10_000, on_batch: Any = None) -> int:
    """Applies an event table to ``live`` in order and returns the number of batches.

    ``events``: one row per event; ``event`` (utf8) is ``fill``, ``transfer``, ``order``,
    ``cancel``, ``index`` or ``mark``, and each kind reads its own columns (null elsewhere):
    ``fill``: ``account_id, instrument, quantity, price`` and optional ``fee``; ``transfer``:
    ``account_id, asset, amount``; ``order``: ``order_id, account_id, instrument, quantity,
    price``; ``cancel``: ``order_id``; ``index``: ``underlying, index_price``; ``mark``:
    ``instrument, mark_price`` and optional ``implied_vol``. Consecutive rows of one kind (index
    and mark rows together: one market update) form a batch of at most ``batch_rows`` rows; an
    optional integer ``batch`` column cuts batches where its value changes. ``on_batch(changes,
    rows_done, rows_total)`` is called after each batch."""
    import numpy as np

    t = events if isinstance(events, pa.Table) else pa.table(arrow_input(events, "events"))
    if "event" not in t.column_names:
        raise input_error("events", "event", f"missing column (the table has: {', '.join(t.column_names)})")
    kinds = t.column("event").to_pylist()
    bad = [f"row {i} = {k!r}" for i, k in enumerate(kinds) if k not in _FAMILY]
    if bad:
        raise input_error("events", "event", "unknown event kind (fill, transfer, order, cancel, index, mark)", bad)
    family = np.array([_FAMILY[k] for k in kinds], dtype=np.int8)
    cut = np.flatnonzero(np.diff(family) != 0) + 1
    if "batch" in t.column_names:
        b = np.asarray(t.column("batch").fill_null(-1).to_numpy(zero_copy_only=False))
        cut = np.union1d(cut, np.flatnonzero(np.diff(b) != 0) + 1)
    bounds = [0, *cut.tolist(), t.num_rows]
    batches = 0
    for start, end in zip(bounds[:-1], bounds[1:]):
        for lo in range(start, end, batch_rows):
            hi = min(end, lo + batch_rows)
            part = t.slice(lo, hi - lo)
            f = int(family[lo])
            if f == 4:
                kind = part.column("event")
                index = part.filter(pa.compute.equal(kind, "index"))
                marks = part.filter(pa.compute.equal(kind, "mark"))
                mark_cols = [c for c in ("instrument", "mark_price", "implied_vol") if c in part.column_names]
                changes = live.update_market(
                    index_prices=index.select(["underlying", "index_price"]) if index.num_rows else None,
                    marks=marks.select(mark_cols) if marks.num_rows else None,
                )
            else:
                columns = [c for c in _COLUMNS[f] if c in part.column_names or c != "fee"]
                missing = [c for c in columns if c not in part.column_names]
                if missing:
                    raise input_error("events", missing[0], f"missing column for {kinds[lo]} events")
                sub = part.select(columns)
                if f == 0 and "fee" in columns:
                    sub = sub.set_column(columns.index("fee"), "fee", pa.compute.fill_null(sub.column("fee"), 0.0))
                apply = (live.apply_fills, live.apply_transfers, live.place_orders, live.cancel_orders)[f]
                changes = apply(sub)
            batches += 1
            if on_batch is not None:
                on_batch(changes, hi, t.num_rows)
    return batches
