"""What the distributed front-ends (``margin_engine.spark``, ``margin_engine.dask``) share.

- Shipping the book and the markets: their tables as Arrow IPC bytes in one pickled payload
  (a :class:`~margin_engine.Book` holds a Rust object and does not pickle), identified by its
  SHA-256 digest; each worker process rebuilds the book and each market once, at first use, and
  keeps them keyed by the digest (and the market's key), for every later batch and task.
- The engine call of one slice of accounts, and its input errors with the slice's account range.

This module imports neither pyspark nor dask.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import os
import pickle
import re
from collections.abc import Callable
from typing import Any

import pyarrow as pa

from margin_engine import api
from margin_engine._core import MarginInputError
from margin_engine._inputs import input_error

OPS = ("margin", "liquidation_scan", "greeks")


def _ipc(table: pa.Table | None) -> bytes | None:
    if table is None:
        return None
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _from_ipc(blob: bytes | None) -> pa.Table | None:
    return None if blob is None else pa.ipc.open_stream(blob).read_all()


def _market_blob(market: api.Market) -> dict[str, Any]:
    return {"index_prices": _ipc(market.index_prices), "marks": _ipc(market.marks), "valuation_time_ns": market.valuation_time_ns}


def _book_blob(book: api.Book) -> dict[str, Any]:
    blob: dict[str, Any] = {name: _ipc(getattr(book, name)) for name in ("instruments", "assets", "risk_params", "margin_tiers")}
    blob["methodology"] = getattr(book, "methodology", None)  # a Methodology pickles (and is validated again)
    return blob


def payload(books: dict[Any, api.Book], markets: dict[Any, api.Market]) -> bytes:
    """The books' and the markets' tables, each by its key, as one pickled dict of Arrow IPC bytes."""
    blob = {"books": {k: _book_blob(b) for k, b in books.items()}, "markets": {k: _market_blob(m) for k, m in markets.items()}}
    return pickle.dumps(blob, protocol=pickle.HIGHEST_PROTOCOL)


@dataclasses.dataclass(frozen=True)
class Shipped:
    """A payload as the workers reach it: ``source`` is the bytes themselves or an object with a
    ``.value`` holding them (a Spark broadcast variable); ``digest`` keys the worker caches."""

    source: Any
    digest: str

    @classmethod
    def of(cls, data: bytes, wrap: Callable[[bytes], Any] | None = None) -> Shipped:
        return cls(data if wrap is None else wrap(data), hashlib.sha256(data).hexdigest())

    def payload(self) -> bytes:
        return self.source if isinstance(self.source, bytes) else self.source.value


# Worker side: per Python process, the decoded payloads, books and markets, by digest and key.
_CACHE_SIZE = 4
_DECODED: collections.OrderedDict[str, dict[str, Any]] = collections.OrderedDict()
_BOOKS: collections.OrderedDict[tuple[str, Any], api.Book] = collections.OrderedDict()
_MARKETS: collections.OrderedDict[tuple[str, Any], api.Market] = collections.OrderedDict()
_BUILDS: collections.Counter[str] = collections.Counter()  # books built per digest in this process


def _cached(cache: collections.OrderedDict, key: Any, make: Callable[[], Any], size: int) -> Any:
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    value = cache[key] = make()
    while len(cache) > size:
        cache.popitem(last=False)
    return value


def engine(shipped: Shipped, book_key: Any = None, market_key: Any = None) -> tuple[api.Book, api.Market]:
    """The book ``book_key`` and the market ``market_key`` of ``shipped``, each built at most
    once per process while it stays among the last ones used (a market resolves itself against
    a book at its first call and caches that, so the same objects are kept)."""
    decoded = _cached(_DECODED, shipped.digest, lambda: pickle.loads(shipped.payload()), _CACHE_SIZE)

    def build_book() -> api.Book:
        _BUILDS[shipped.digest] += 1
        blob = decoded["books"][book_key]
        tables = {name: _from_ipc(blob[name]) for name in ("instruments", "assets", "risk_params", "margin_tiers")}
        extra = {} if blob.get("methodology") is None else {"methodology": blob["methodology"]}
        return api.Book(tables["instruments"], tables["assets"], tables["risk_params"], tables["margin_tiers"], **extra)

    def build_market() -> api.Market:
        blob = decoded["markets"][market_key]
        return api.Market(_from_ipc(blob["index_prices"]), _from_ipc(blob["marks"]), blob["valuation_time_ns"])

    book = _cached(_BOOKS, (shipped.digest, book_key), build_book, 1024)
    market = _cached(_MARKETS, (shipped.digest, market_key), build_market, 1024)
    return book, market


def worker_stats(digest: str) -> dict[str, int]:
    """This process's id and how many books of ``digest`` it built (tests check it is 1 per book)."""
    return {"pid": os.getpid(), "builds": _BUILDS[digest]}


def call(op: str, options: dict[str, Any], book: api.Book, market: api.Market, positions: pa.Table, balances: pa.Table | None) -> pa.Table:
    """The in-memory function ``op`` on one slice of accounts."""
    if op == "greeks":
        return api.greeks(book, positions, market, **options)
    if op == "liquidation_scan":
        if "margin_mode" in positions.column_names:
            # the in-memory scan lists isolated positions beside accounts, with their collateral,
            # which a slice of accounts does not carry: refused rather than scanned without it
            raise input_error("positions", "margin_mode", "liquidation_scan on a cluster does not take isolated positions yet: scan the cross rows, or use me.liquidation_scan")
        return api.liquidation_scan(book, positions, balances, market, **options)
    # margin: a margin_mode column makes these the cross accounts, as in me.margin
    return api.margin(book, positions, balances, market, **options)


def call_in(where: str, op: str, options: dict[str, Any], book: api.Book, market: api.Market, positions: pa.Table, balances: pa.Table | None) -> pa.Table:
    """:func:`call`, an input error naming ``where`` (the slice's accounts and task) besides the
    engine's table, column and rows."""
    try:
        return call(op, options, book, market, positions, balances)
    except MarginInputError as e:
        raise _located(e, where, {"positions": positions, "balances": balances}.get(getattr(e, "table", None) or "")) from None


def _located(e: MarginInputError, where: str, table: pa.Table | None) -> MarginInputError:
    """``e`` with its ``row N`` offenders (rows of the slice, which mean nothing to the caller)
    named by their account, and ``where`` appended."""

    def account(m: re.Match) -> str:
        row = int(m[1])
        if table is None or row >= table.num_rows:
            return m[0]
        return f"account {table.column('account_id')[row].as_py()}"

    offenders = [re.sub(r"\brow (\d+)", account, o) for o in (getattr(e, "offenders", None) or [])]
    message = re.sub(r"\brow (\d+)", account, str(e))
    err = MarginInputError(f"{message} [in {where}]")
    err.table, err.column, err.problem = getattr(e, "table", None), getattr(e, "column", None), getattr(e, "problem", None)
    err.offenders, err.count = offenders, getattr(e, "count", len(offenders))
    return err


def options_of(op: str, book: Any, market: Any, model: Any, threads: Any, stress: Any = None, distance: Any = False) -> dict[str, Any]:
    """The checked keyword options of ``op`` (a bad one raises here, at the call, not in a task)."""
    from margin_engine._inputs import check_flag

    _, _, model, threads, _ = api._checked(book, market, model, threads, "arrow")
    if op == "greeks":
        return {"threads": threads}
    if op == "margin":
        return {"model": model, "threads": threads}
    distance = check_flag(distance, "distance")
    if distance and stress is not None:
        raise input_error("arguments", "distance", "distance=True is measured from the current market; pass stress=None")
    api._stress_pairs(stress)
    return {"model": model, "stress": None if stress is None else dict(stress), "distance": distance, "threads": threads}


def positive_int(value: Any, argument: str, optional: bool = False) -> int | None:
    if optional and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise input_error("arguments", argument, f"must be a positive integer{' or None' if optional else ''}, got {value!r}")
    return value


STATUS_RANK = ("bankrupt", "liquidatable", "margin_call", "healthy")  # the scan's queue order
