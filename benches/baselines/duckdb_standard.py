"""Baseline: the STANDARD model (METHODOLOGY §2, §3, §6) as DuckDB SQL over the Arrow tables.

How a competent quant writes it in SQL: the Arrow tables are registered as views (zero copy),
netting is a ``GROUP BY account_id, instrument``, margin brackets get their continuity offsets
from window functions and are matched with an ``ASOF JOIN`` on the notional, account sums are a
second ``GROUP BY`` fully outer-joined with the collateral sums of the balances. DuckDB runs on
all cores.
"""

from __future__ import annotations

from typing import Any

import duckdb
import pyarrow as pa

from ._common import MARGIN_SCHEMA, table

_BRACKETS_FROM_TIERS = """
    SELECT instrument::VARCHAR AS instrument, notional_floor, initial_margin_rate, maintenance_margin_rate
    FROM margin_tiers
    UNION ALL
    -- the instrument's own rates form an implicit bracket at 0 unless its tiers start at 0
    SELECT instrument, 0.0, initial_margin_rate, maintenance_margin_rate
    FROM instruments i
    WHERE kind <> 'option'
      AND NOT EXISTS (SELECT 1 FROM margin_tiers t
                      WHERE t.instrument::VARCHAR = i.instrument AND t.notional_floor = 0.0)
"""

_BRACKETS_NO_TIERS = """
    SELECT instrument, 0.0 AS notional_floor, initial_margin_rate, maintenance_margin_rate
    FROM instruments WHERE kind <> 'option'
"""

_QUERY = """
WITH
raw_brackets AS ({brackets}),
steps AS (
    SELECT *,
        coalesce(notional_floor * (initial_margin_rate
            - lag(initial_margin_rate) OVER (PARTITION BY instrument ORDER BY notional_floor)), 0.0) AS im_step,
        coalesce(notional_floor * (maintenance_margin_rate
            - lag(maintenance_margin_rate) OVER (PARTITION BY instrument ORDER BY notional_floor)), 0.0) AS mm_step
    FROM raw_brackets
),
brackets AS (   -- cum_b = cum_(b-1) + f_b (r_b - r_(b-1))   (methodology-notes §3)
    SELECT instrument, notional_floor, initial_margin_rate AS imr, maintenance_margin_rate AS mmr,
        sum(im_step) OVER w AS im_cum, sum(mm_step) OVER w AS mm_cum
    FROM steps
    WINDOW w AS (PARTITION BY instrument ORDER BY notional_floor ROWS UNBOUNDED PRECEDING)
),
inst AS (
    SELECT i.instrument, i.kind = 'option' AS is_option, coalesce(i.option_type = 'call', false) AS is_call,
        i.multiplier, i.strike, i.initial_margin_rate AS imr, i.maintenance_margin_rate AS mmr,
        coalesce(i.initial_margin_floor, 0.0) AS im_floor, m.mark_price AS mark, x.index_price AS s
    FROM instruments i
    LEFT JOIN marks m ON m.instrument::VARCHAR = i.instrument
    LEFT JOIN index_prices x ON x.underlying = i.underlying
),
net AS (        -- §2.1, §2.3: q = Σ quantity, upnl = Σ quantity × multiplier × (mark − entry)
    SELECT p.account_id, p.instrument::VARCHAR AS instrument,
        sum(p.quantity) AS q,
        sum(CASE WHEN i.is_option THEN 0.0 ELSE {row_upnl} END) AS upnl
    FROM positions p JOIN inst i ON i.instrument = p.instrument::VARCHAR
    GROUP BY ALL
),
valued AS (
    SELECT n.account_id, n.q, n.upnl, i.*, abs(n.q) * i.multiplier AS size,
        abs(n.q) * i.multiplier * i.mark AS notional
    FROM net n JOIN inst i USING (instrument)
),
linear AS (     -- §3 perpetuals / futures: bracket with the largest floor <= notional
    SELECT v.account_id, v.q, v.upnl AS pnl,
        v.notional * b.imr - b.im_cum AS im, v.notional * b.mmr - b.mm_cum AS mm
    FROM valued v ASOF JOIN brackets b
        ON v.instrument = b.instrument AND v.notional >= b.notional_floor
    WHERE NOT v.is_option
),
options AS (    -- §2.4 option value; §3 short options (long options: 0)
    SELECT account_id, q, q * multiplier * mark AS pnl,
        CASE WHEN q < 0 THEN size * (mark + greatest(imr * s
            - CASE WHEN is_call THEN greatest(strike - s, 0.0) ELSE greatest(s - strike, 0.0) END,
            im_floor * s)) ELSE 0.0 END AS im,
        CASE WHEN q < 0 THEN size * (mark + mmr * s) ELSE 0.0 END AS mm
    FROM valued WHERE is_option
),
by_account AS ( -- a net of exactly 0 carries no margin, but its account still gets a row
    SELECT account_id,
        sum(CASE WHEN q <> 0 THEN im ELSE 0.0 END) AS im,
        sum(CASE WHEN q <> 0 THEN mm ELSE 0.0 END) AS mm,
        sum(pnl) AS pnl  -- a linear net of 0 keeps its rows' P&L; an option's value is 0 there
    FROM (SELECT * FROM linear UNION ALL SELECT * FROM options)
    GROUP BY account_id
),
collateral AS ( -- §2.5 weights, liability weights and size premium
    SELECT b.account_id,
        sum(b.amount * a.price) AS cash,
        sum(CASE WHEN b.amount > 0 THEN b.amount * a.price * {w_initial}
                 WHEN b.amount < 0 THEN b.amount * a.price * a.initial_liability_weight ELSE 0.0 END) AS wi,
        sum(CASE WHEN b.amount > 0 THEN b.amount * a.price * {w_maintenance}
                 WHEN b.amount < 0 THEN b.amount * a.price * a.maintenance_liability_weight ELSE 0.0 END) AS wm
    FROM balances b JOIN assets a ON a.asset = b.asset::VARCHAR
    GROUP BY b.account_id
),
totals AS (
    SELECT account_id::UBIGINT AS account_id,
        coalesce(c.cash, 0.0) + coalesce(m.pnl, 0.0) AS equity,
        coalesce(c.wi, 0.0) + coalesce(m.pnl, 0.0) AS collateral_initial,
        coalesce(c.wm, 0.0) + coalesce(m.pnl, 0.0) AS collateral_maintenance,
        coalesce(m.im, 0.0) AS initial_margin,
        coalesce(m.mm, 0.0) AS maintenance_margin
    FROM by_account m FULL OUTER JOIN collateral c USING (account_id)
)
SELECT account_id, equity, collateral_initial, collateral_maintenance, initial_margin, maintenance_margin,
    collateral_initial - initial_margin AS free_collateral,
    collateral_maintenance - maintenance_margin AS margin_excess,
    CASE WHEN maintenance_margin <> 0 THEN collateral_maintenance / maintenance_margin END AS health,
    CASE WHEN equity < 0 THEN 'bankrupt'
         WHEN collateral_maintenance < maintenance_margin THEN 'liquidatable'
         WHEN collateral_initial < initial_margin THEN 'margin_call'
         ELSE 'healthy' END AS status
FROM totals
ORDER BY account_id
"""


def _weight(column: str, has_premium: bool) -> str:
    if not has_premium:
        return f"a.{column}"
    return (f"CASE WHEN a.size_premium > 0 THEN least(a.{column}, "
            f"1.1 / (1.0 + a.size_premium * sqrt(b.amount))) ELSE a.{column} END")


def margin(book: Any, positions: Any, balances: Any, market: Any, connection: Any = None) -> pa.Table:
    """``me.margin(..., model="standard")`` in DuckDB SQL."""
    con = connection or duckdb.connect()
    tiers = table(getattr(book, "margin_tiers", None))
    pos = table(positions)
    assets = table(book.assets)
    views = {
        "instruments": table(book.instruments),
        "assets": assets,
        "positions": pos,
        "balances": table(balances),
        "index_prices": table(market.index_prices),
        "marks": table(market.marks),
    }
    has_tiers = tiers is not None and tiers.num_rows > 0
    if has_tiers:
        views["margin_tiers"] = tiers
    for name, t in views.items():
        con.register(name, t)
    has_premium = "size_premium" in assets.column_names
    sql = _QUERY.format(
        brackets=_BRACKETS_FROM_TIERS if has_tiers else _BRACKETS_NO_TIERS,
        row_upnl=("p.quantity * i.multiplier * (i.mark - p.entry_price)"
                  if "entry_price" in pos.column_names else "0.0"),
        w_initial=_weight("initial_weight", has_premium),
        w_maintenance=_weight("maintenance_weight", has_premium),
    )
    try:
        result = con.sql(sql).to_arrow_table()
    finally:
        if connection is None:
            con.close()
        else:
            for name in views:
                con.unregister(name)
    return result.cast(MARGIN_SCHEMA)
