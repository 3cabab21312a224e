"""The live book's event semantics in plain Python: the tables ``margin`` reads, rebuilt event by
event (``docs/live.md``, "From events to rows"). The differential tests margin these tables with
``margin_engine.margin`` and compare with ``margin_engine.LiveBook.margin`` bit for bit.

- A fill appends the position row ``(account_id, instrument, quantity, entry_price = price)``.
  An option fill's premium ``−(quantity × multiplier × price)`` and the fee move the premium
  asset's balance by ``(premium − fee) / asset price`` (a linear fill without a fee moves none).
- A transfer adds ``amount`` to the (account, asset) balance, a new balance row if there is none.
- Orders are kept by id, in placement order; they add their initial margin (``orders_table`` is
  the ``orders`` table ``margin`` reads). A market update replaces index prices, marks and (when
  given) vols.
- A batch with any bad row changes nothing (``ValueError`` naming the first problem).
"""

from __future__ import annotations

import math
from typing import Any

import pyarrow as pa


class ReferenceLiveBook:
    """Rows, balances, orders and market of a live book, kept as plain Python values."""

    def __init__(self, book: Any, market: Any, positions: Any, balances: Any, *,
                 allow_negative_balances: bool = True, premium_asset: str | None = None):
        ins = book.instruments.to_pylist()
        key_type = book.instruments.column("instrument").type
        self.key_type = key_type.value_type if pa.types.is_dictionary(key_type) else key_type
        if pa.types.is_integer(self.key_type):
            self.key_type = pa.int64()
        self.kind = {r["instrument"]: r["kind"] for r in ins}
        self.multiplier = {r["instrument"]: float(r["multiplier"]) for r in ins}
        self.underlying = {r["instrument"]: r["underlying"] for r in ins}
        assets = book.assets.to_pylist()
        self.asset_price = {r["asset"]: float(r["price"]) for r in assets}
        if premium_asset is None:
            premium_asset = next((r["asset"] for r in assets if r["price"] == 1.0 and r.get("underlying") is None), None)
        self.premium_asset = premium_asset
        self.allow_negative_balances = allow_negative_balances
        entry = "entry_price" in positions.column_names
        self.positions = [
            (r["account_id"], r["instrument"], float(r["quantity"]), r["entry_price"] if entry else None)
            for r in positions.to_pylist()
        ]
        self.balances = {(r["account_id"], r["asset"]): float(r["amount"]) for r in balances.to_pylist()}
        # every row and column of the market's tables, changed in place (a new key: a new row)
        self.index_schema, self.mark_schema = market.index_prices.schema, market.marks.schema
        self.index_rows = {r["underlying"]: r for r in market.index_prices.to_pylist()}
        self.mark_rows = {r["instrument"]: r for r in market.marks.to_pylist()}
        self.expiry_feeds = market.expiry_feeds
        self.valuation_ns = market.valuation_time_ns
        self.orders: dict[int, tuple[int, str, float, float]] = {}

    def accounts(self) -> set[int]:
        return {p[0] for p in self.positions} | {k[0] for k in self.balances}

    @staticmethod
    def _price_ok(p: float) -> bool:
        return math.isfinite(p) and p >= 0.0

    def apply_fills(self, fills: list[dict]) -> None:
        for i, f in enumerate(fills):
            if f["instrument"] not in self.kind:
                raise ValueError(f"fills row {i}: unknown instrument")
            if not math.isfinite(f["quantity"]) or not self._price_ok(f["price"]) or not math.isfinite(f.get("fee", 0.0)):
                raise ValueError(f"fills row {i}: bad number")
            if f["instrument"] not in self.marks or self.underlying[f["instrument"]] not in self.index:
                raise ValueError(f"fills row {i}: no market")
            if (self.kind[f["instrument"]] == "option" or f.get("fee", 0.0) != 0.0) and self.premium_asset is None:
                raise ValueError(f"fills row {i}: a premium or fee without a premium asset")
        for f in fills:
            instrument, q, p, fee = f["instrument"], float(f["quantity"]), float(f["price"]), float(f.get("fee", 0.0))
            self.positions.append((f["account_id"], instrument, q, p))
            option = self.kind[instrument] == "option"
            if option or fee != 0.0:
                premium = -(q * self.multiplier[instrument] * p) if option else 0.0
                key = (f["account_id"], self.premium_asset)
                delta = (premium - fee) / self.asset_price[self.premium_asset]
                self.balances[key] = self.balances[key] + delta if key in self.balances else delta

    def apply_transfers(self, transfers: list[dict]) -> None:
        known = self.accounts()
        balances = dict(self.balances)
        for i, t in enumerate(transfers):
            if t["asset"] not in self.asset_price or not math.isfinite(t["amount"]):
                raise ValueError(f"transfers row {i}: bad asset or amount")
            if t["amount"] < 0 and t["account_id"] not in known:
                raise ValueError(f"transfers row {i}: unknown account")
            key = (t["account_id"], t["asset"])
            after = balances.get(key, 0.0) + t["amount"]
            if t["amount"] < 0 and not self.allow_negative_balances and after < 0:
                raise ValueError(f"transfers row {i}: overdraw")
            balances[key] = balances[key] + t["amount"] if key in balances else t["amount"]
            known.add(t["account_id"])
        self.balances = balances

    def place_orders(self, orders: list[dict]) -> None:
        known = self.accounts()
        ids = [o["order_id"] for o in orders]
        if len(set(ids)) != len(ids) or any(i in self.orders for i in ids):
            raise ValueError("orders: repeated or resting order id")
        for i, o in enumerate(orders):
            if o["account_id"] not in known or o["instrument"] not in self.kind:
                raise ValueError(f"orders row {i}: unknown account or instrument")
            if not math.isfinite(o["quantity"]) or o["quantity"] == 0 or not (math.isfinite(o["price"]) and o["price"] > 0):
                raise ValueError(f"orders row {i}: bad number")
        for o in orders:
            self.orders[o["order_id"]] = (o["account_id"], o["instrument"], float(o["quantity"]), float(o["price"]))

    def cancel_orders(self, ids: list[int]) -> None:
        if len(set(ids)) != len(ids) or any(i not in self.orders for i in ids):
            raise ValueError("order_ids: unknown or repeated order id")
        for i in ids:
            del self.orders[i]

    @property
    def index(self) -> dict[str, float]:
        return {k: float(r["index_price"]) for k, r in self.index_rows.items()}

    @property
    def marks(self) -> dict[Any, float]:
        return {k: float(r["mark_price"]) for k, r in self.mark_rows.items()}

    def update_market(self, index_prices: dict[str, float] | None = None,
                      marks: dict[str, tuple[float, float | None]] | None = None,
                      valuation_ns: int | None = None) -> None:
        index_prices, marks = index_prices or {}, marks or {}
        if any(not (math.isfinite(p) and p > 0) for p in index_prices.values()):
            raise ValueError("index_prices: bad price")
        for name, (mark, vol) in marks.items():
            if not self._price_ok(mark) or (vol is not None and not (math.isfinite(vol) and vol > 0)):
                raise ValueError(f"marks {name}: bad number")
            row = self.mark_rows.get(name, {})
            if self.kind.get(name) == "option" and vol is None and row.get("implied_vol") is None:
                raise ValueError(f"marks {name}: an option needs an implied vol")
        for name, price in index_prices.items():
            row = self.index_rows.setdefault(name, {"underlying": name, "confidence": 1.0})
            row["index_price"] = price
        for name, (mark, vol) in marks.items():
            row = self.mark_rows.setdefault(name, {"instrument": name, "confidence": 1.0})
            row["mark_price"] = mark
            if vol is not None:
                row["implied_vol"] = vol
        if valuation_ns is not None:
            self.valuation_ns = valuation_ns

    # --- the tables of the current state ---

    def positions_table(self) -> pa.Table:
        cols = list(zip(*self.positions)) if self.positions else [[], [], [], []]
        return pa.table({
            "account_id": pa.array(cols[0], pa.uint64()),
            "instrument": pa.array(cols[1], self.key_type),
            "quantity": pa.array(cols[2], pa.float64()),
            "entry_price": pa.array(cols[3], pa.float64()),
        })

    def balances_table(self) -> pa.Table:
        keys = list(self.balances)
        return pa.table({
            "account_id": pa.array([k[0] for k in keys], pa.uint64()),
            "asset": pa.array([k[1] for k in keys], pa.string()),
            "amount": pa.array([self.balances[k] for k in keys], pa.float64()),
        })

    def orders_table(self) -> pa.Table:
        """The resting orders as the ``orders`` table of ``margin`` (placement order)."""
        rows = list(self.orders.values())
        return pa.table({
            "account_id": pa.array([r[0] for r in rows], pa.uint64()),
            "instrument": pa.array([r[1] for r in rows], self.key_type),
            "quantity": pa.array([r[2] for r in rows], pa.float64()),
            "price": pa.array([r[3] for r in rows], pa.float64()),
        })

    def account_rows(self, account_id: int) -> tuple[pa.Table, dict[str, float]]:
        """The account's position rows and balances (as ``what_if`` takes them)."""
        rows = [p for p in self.positions if p[0] == account_id]
        positions = pa.table({
            "instrument": pa.array([r[1] for r in rows], self.key_type),
            "quantity": pa.array([r[2] for r in rows], pa.float64()),
            "entry_price": pa.array([r[3] for r in rows], pa.float64()),
        })
        return positions, {k[1]: v for k, v in self.balances.items() if k[0] == account_id}

    def market_tables(self) -> tuple[pa.Table, pa.Table, int]:
        """``index_prices`` and ``marks`` with every row and column kept (a ``confidence`` column
        added, 1 where a table had none: the engine's default), and the valuation time."""
        def table(rows: dict, schema: pa.Schema) -> pa.Table:
            fields = list(schema) + ([] if "confidence" in schema.names else [pa.field("confidence", pa.float64())])
            rows = [{**r, "confidence": r.get("confidence", 1.0)} for r in rows.values()]
            return pa.Table.from_pylist(rows, schema=pa.schema(fields))
        return table(self.index_rows, self.index_schema), table(self.mark_rows, self.mark_schema), self.valuation_ns
