"""Liquidation cascades: a shock, liquidations, market impact, repeat (docs/liquidation.md §8).

Each round makes liquidation plans in the market moved by the cumulative move so far, applies
them (closed fractions leave the positions; their value at the moved marks, less fees, is settled
into the account's ``settlement_asset`` balance; bankrupt accounts are closed out and removed after
the insurance fund and bad debt take their deficit), then moves each underlying by the linear
impact ``traded notional / depth`` of the perpetuals and futures the liquidations traded (sells
push the price down). Option closes do not move the price in this model.
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from margin_engine import api
from margin_engine._inputs import arrow_table, as_output, check_output, input_error


def _plain_keys(table: pa.Table, column: str) -> pa.Table:
    col = table.column(column)
    if pa.types.is_dictionary(col.type):
        col = pc.cast(col, col.type.value_type)
    return table.set_column(table.column_names.index(column), column, pc.cast(col, pa.utf8()) if not pa.types.is_string(col.type) else col)


def cascade(
    book: api.Book,
    positions: Any,
    balances: Any,
    market: api.Market,
    shock: dict[str, float],
    depth: dict[str, float],
    *,
    model: api.Model = "standard",
    liquidation_fee: float = 0.01,
    liquidator_share: float = 0.5,
    insurance_fund: float = 0.0,
    settlement_asset: str = "USD",
    max_rounds: int = 20,
    threads: int | None = None,
    output: api.Output = "arrow",
) -> Any:
    """Runs the cascade; one row per round and underlying: ``round, underlying, move`` (the
    cumulative move of the underlying's index price in that round), ``price`` (the moved index
    price), ``accounts_liquidated`` (accounts the round's plan liquidates, all underlyings),
    ``notional_closed`` (notional closed in that underlying, USD), ``bad_debt`` (USD) and
    ``insurance_fund`` (after the round).

    Reads ``positions`` (``account_id, instrument, quantity``, optional ``entry_price``),
    ``balances`` (``account_id, asset, amount``), the book's ``instruments`` (``instrument, kind,
    underlying, multiplier``; the rest as :func:`margin_engine.liquidation_plan` does), its
    ``assets`` (``asset``) and the market's ``index_prices`` (``underlying, index_price``) and
    ``marks``.

    ``shock``: ``{underlying: move}``, the first round's relative moves (``-0.15`` = −15%);
    ``depth``: ``{underlying: USD}``, the notional of linear contracts that moves that underlying
    by 100% (a round's move is ``signed traded notional / depth``; a move stops at −99%).
    ``model``, ``liquidation_fee``, ``liquidator_share``, ``insurance_fund`` are those of
    :func:`margin_engine.liquidation_plan`; the realized value of each close less its fee is
    settled into ``settlement_asset`` (an asset of the book). At most ``max_rounds`` rounds; the
    cascade stops when a round closes nothing or moves no price by more than 1e-6.
    ``output="polars"``: a polars DataFrame.
    """
    output = check_output(output)
    if settlement_asset not in book.assets.column("asset").to_pylist():
        raise input_error("arguments", "settlement_asset", "not an asset of the book", [repr(settlement_asset)])
    for u, d in depth.items():
        if not (isinstance(d, (int, float)) and d > 0):
            raise input_error("arguments", "depth", "depth must be > 0 (USD notional per 100% move)", [f"{u!r} = {d!r}"])
    instruments = book.instruments
    kind = dict(zip(map(str, instruments.column("instrument").to_pylist()), instruments.column("kind").to_pylist()))
    mult = dict(zip(map(str, instruments.column("instrument").to_pylist()), instruments.column("multiplier").to_pylist()))
    spot = dict(zip(market.index_prices.column("underlying").to_pylist(), market.index_prices.column("index_price").to_pylist()))
    int_keys = pa.types.is_integer(instruments.schema.field("instrument").type)
    pos = _plain_keys(arrow_table(positions, "positions"), "instrument")
    if "unsettled_funding" in pos.column_names:
        # the rounds rescale and drop position rows: funding on them would be lost or rescaled
        raise input_error(
            "positions", "unsettled_funding",
            "the cascade does not carry unsettled_funding yet: settle it into balances first", [],
        )
    if "entry_price" not in pos.column_names:
        pos = pos.append_column("entry_price", pa.array([None] * pos.num_rows, pa.float64()))
        has_entry = False
    else:
        has_entry = True
    bal = _plain_keys(arrow_table(balances, "balances"), "asset")
    moves = {u: float(m) for u, m in shock.items()}
    fund = float(insurance_fund)
    rows: list[dict[str, Any]] = []
    for rnd in range(max_rounds):
        p = pos if has_entry else pos.drop_columns(["entry_price"])
        if int_keys:
            i = p.column_names.index("instrument")
            p = p.set_column(i, "instrument", pc.cast(p.column("instrument"), pa.int64()))
        plan = api.liquidation_plan(
            book, p, bal, market, model=model, liquidation_fee=liquidation_fee,
            liquidator_share=liquidator_share, insurance_fund=fund, stress=moves or None, threads=threads,
        )
        bad = dict(zip(plan.underlyings.column("underlying").to_pylist(), plan.underlyings.column("bad_debt").to_pylist()))
        closed = dict(zip(plan.underlyings.column("underlying").to_pylist(), plan.underlyings.column("closed_notional").to_pylist()))
        for u in sorted(set(depth) | set(moves)):
            rows.append({
                "round": rnd, "underlying": u, "move": moves.get(u, 0.0), "price": spot.get(u, float("nan")) * (1 + moves.get(u, 0.0)),
                "accounts_liquidated": plan.accounts.num_rows, "notional_closed": closed.get(u, 0.0),
                "bad_debt": bad.get(u, 0.0), "insurance_fund": plan.insurance_fund_after,
            })
        if plan.closes.num_rows == 0:
            break
        fund = plan.insurance_fund_after
        closes = plan.closes
        # 1. closed fractions leave the positions (rows of one account x instrument scale together)
        frac = {(a, i): f for a, i, f in zip(*(closes.column(c).to_pylist() for c in ("account_id", "instrument", "fraction")))}
        keep = [1.0 - frac.get((a, i), 0.0) for a, i in zip(pos.column("account_id").to_pylist(), pos.column("instrument").to_pylist())]
        q = pos.column_names.index("quantity")
        pos = pos.set_column(q, "quantity", pc.multiply(pos.column("quantity"), pa.array(keep)))
        pos = pos.filter(pc.not_equal(pos.column("quantity"), 0.0))
        # 2. realized value less fees settles into the settlement asset; bankrupt accounts leave
        cash: dict[int, float] = {}
        for a, f, v, fee in zip(*(closes.column(c).to_pylist() for c in ("account_id", "fraction", "value_before", "fee"))):
            cash[a] = cash.get(a, 0.0) + f * v - fee
        gone = set(plan.accounts.filter(pc.equal(plan.accounts.column("status_after"), "bankrupt")).column("account_id").to_pylist())
        bal_rows = [r for r in bal.to_pylist() if r["account_id"] not in gone]
        settled = set()
        for r in bal_rows:
            if r["asset"] == settlement_asset and r["account_id"] in cash:
                r["amount"] += cash[r["account_id"]]
                settled.add(r["account_id"])
        bal_rows += [{"account_id": a, "asset": settlement_asset, "amount": c} for a, c in cash.items() if a not in settled and a not in gone]
        bal = pa.table({
            "account_id": pa.array([r["account_id"] for r in bal_rows], pa.uint64()),
            "asset": pa.array([r["asset"] for r in bal_rows], pa.utf8()),
            "amount": pa.array([r["amount"] for r in bal_rows], pa.float64()),
        }).sort_by("account_id")
        if gone:
            pos = pos.filter(pc.invert(pc.is_in(pos.column("account_id"), pa.array(list(gone), pos.schema.field("account_id").type))))
        # 3. market impact of the linear contracts traded
        impact: dict[str, float] = {}
        for i, u, q, mark in zip(*(closes.column(c).to_pylist() for c in ("instrument", "underlying", "quantity_closed", "mark_price"))):
            if kind[i] != "option" and u in depth:
                impact[u] = impact.get(u, 0.0) + q * mult[i] * mark / depth[u]
        if not any(abs(v) > 1e-6 for v in impact.values()):  # the cascade has died out
            break
        for u, v in impact.items():
            moves[u] = max(moves.get(u, 0.0) + v, -0.99)
    return as_output(pa.Table.from_pylist(rows, schema=_ROUNDS), output)


_ROUNDS = pa.schema(
    [
        ("round", pa.int64()),
        ("underlying", pa.string()),
        ("move", pa.float64()),
        ("price", pa.float64()),
        ("accounts_liquidated", pa.int64()),
        ("notional_closed", pa.float64()),
        ("bad_debt", pa.float64()),
        ("insurance_fund", pa.float64()),
    ]
)
