"""Baseline: the STANDARD model (METHODOLOGY §2, §3, §6) as one polars lazy query.

How a competent quant writes it in polars: the Arrow tables become LazyFrames (zero copy), the
instrument attributes are joined onto the position rows, netting is a ``group_by`` over
(account, instrument), margin tiers are pivoted to one wide row per instrument (at most a few
brackets) and picked with a ``when/then`` chain, short options get the §3 formula, and account
sums are ``group_by(account_id)`` joined (full) with the collateral sums of the balances.
Polars runs on all cores.
"""

from __future__ import annotations

from typing import Any

import polars as pl
import pyarrow as pa

from ._common import MARGIN_SCHEMA, table


def _frame(obj: Any) -> pl.DataFrame:
    return pl.from_arrow(table(obj))  # type: ignore[return-value]


def _key_to_str(lf: pl.LazyFrame, name: str) -> pl.LazyFrame:
    """Keys of the small tables as plain strings (they may arrive dictionary-encoded)."""
    return lf.with_columns(pl.col(name).cast(pl.String))


def _key_like(small: pl.LazyFrame, name: str, big: pl.LazyFrame) -> pl.LazyFrame:
    """Cast the key of a small table to the key type of a big one, so that a dictionary-encoded
    (Categorical) key of the big table is joined and grouped on its integer codes, never
    decoded to strings."""
    dtype = big.collect_schema()[name]
    return small.with_columns(pl.col(name).cast(dtype if dtype == pl.Categorical else pl.String))


def _brackets(book: Any, instruments: pl.DataFrame) -> tuple[pl.DataFrame, int]:
    """One wide row per linear instrument: floors ``f{b}``, rates ``imr{b}``/``mmr{b}`` and the
    continuity offsets ``imc{b}``/``mmc{b}`` (methodology-notes §3), ``b = 0..width-1``."""
    linear = instruments.filter(pl.col("kind") != "option").select(
        "instrument",
        pl.lit(0.0).alias("notional_floor"),
        pl.col("initial_margin_rate"),
        pl.col("maintenance_margin_rate"),
    )
    tiers_t = table(getattr(book, "margin_tiers", None))
    if tiers_t is not None and tiers_t.num_rows:
        tiers = _frame(tiers_t).with_columns(pl.col("instrument").cast(pl.String)).select(linear.columns)
        starts_at_zero = tiers.filter(pl.col("notional_floor") == 0.0).select("instrument")
        # the instrument's own rates form an implicit bracket at 0 unless its tiers start at 0
        brackets = pl.concat([linear.join(starts_at_zero, on="instrument", how="anti"), tiers])
    else:
        brackets = linear
    prev = lambda c: pl.col(c).shift(1).over("instrument")
    brackets = (
        brackets.sort("instrument", "notional_floor")
        .with_columns(
            b=pl.int_range(pl.len()).over("instrument"),
            imc=(pl.col("notional_floor") * (pl.col("initial_margin_rate") - prev("initial_margin_rate"))),
            mmc=(pl.col("notional_floor") * (pl.col("maintenance_margin_rate") - prev("maintenance_margin_rate"))),
        )
        .with_columns(
            pl.col("imc").fill_null(0.0).cum_sum().over("instrument"),
            pl.col("mmc").fill_null(0.0).cum_sum().over("instrument"),
        )
    )
    width = int(brackets["b"].max()) + 1  # type: ignore[arg-type]
    wide = brackets.filter(pl.col("b") == 0).select(
        "instrument", imr0="initial_margin_rate", mmr0="maintenance_margin_rate", imc0="imc", mmc0="mmc"
    )
    for b in range(1, width):
        wide = wide.join(
            brackets.filter(pl.col("b") == b).select(
                "instrument",
                **{
                    f"f{b}": "notional_floor",
                    f"imr{b}": "initial_margin_rate",
                    f"mmr{b}": "maintenance_margin_rate",
                    f"imc{b}": "imc",
                    f"mmc{b}": "mmc",
                },
            ),
            on="instrument",
            how="left",
        )
    return wide, width


def _tiered(kind: str, width: int) -> pl.Expr:
    """``notional × r_b − cum_b`` for the bracket with the largest floor ≤ notional."""
    n = pl.col("notional")
    expr = n * pl.col(f"{kind}r0") - pl.col(f"{kind}c0")
    for b in range(1, width):  # later brackets win: wrap from the lowest up
        expr = pl.when(pl.col(f"f{b}") <= n).then(n * pl.col(f"{kind}r{b}") - pl.col(f"{kind}c{b}")).otherwise(expr)
    return expr


def margin(book: Any, positions: Any, balances: Any, market: Any) -> pa.Table:
    """``me.margin(..., model="standard")`` in polars."""
    instruments = _frame(book.instruments)
    wide, width = _brackets(book, instruments)
    marks = _key_to_str(_frame(market.marks).lazy(), "instrument").select("instrument", "mark_price")
    index = _frame(market.index_prices).lazy().select("underlying", "index_price")
    inst = (
        instruments.lazy()
        .select(
            "instrument",
            "underlying",
            "multiplier",
            "strike",
            "initial_margin_rate",
            "maintenance_margin_rate",
            pl.col("initial_margin_floor").fill_null(0.0),
            is_option=pl.col("kind") == "option",
            is_call=(pl.col("option_type") == "call").fill_null(False),
        )
        .join(marks, on="instrument", how="left")
        .join(index, on="underlying", how="left")
        .join(wide.lazy(), on="instrument", how="left")
    )
    pos = _frame(positions).lazy()
    inst = _key_like(inst, "instrument", pos)
    has_entry = "entry_price" in pos.collect_schema().names()
    rows = pos.join(inst.select("instrument", "multiplier", "mark_price", "is_option"), on="instrument")
    row_upnl = (
        pl.when(~pl.col("is_option"))
        .then(pl.col("quantity") * pl.col("multiplier") * (pl.col("mark_price") - pl.col("entry_price")))
        .otherwise(0.0)
        if has_entry
        else pl.lit(0.0)
    )
    net = (
        rows.group_by("account_id", "instrument")
        .agg(q=pl.col("quantity").sum(), upnl=row_upnl.sum())
        .join(inst, on="instrument")
        .with_columns(live=pl.col("q") != 0.0, size=pl.col("q").abs() * pl.col("multiplier"))
        .with_columns(notional=pl.col("size") * pl.col("mark_price"))
    )
    s, k = pl.col("index_price"), pl.col("strike")
    otm = pl.when(pl.col("is_call")).then(pl.max_horizontal(k - s, 0.0)).otherwise(pl.max_horizontal(s - k, 0.0))
    short_option = pl.col("is_option") & (pl.col("q") < 0.0)
    opt_im = pl.col("size") * (
        pl.col("mark_price")
        + pl.max_horizontal(pl.col("initial_margin_rate") * s - otm, pl.col("initial_margin_floor") * s)
    )
    opt_mm = pl.col("size") * (pl.col("mark_price") + pl.col("maintenance_margin_rate") * s)
    # a net of exactly 0 contributes nothing, but its account still gets a row
    live = pl.col("live")
    by_account = (
        net.with_columns(
            im=pl.when(~live).then(0.0).when(~pl.col("is_option")).then(_tiered("im", width))
            .when(short_option).then(opt_im).otherwise(0.0),
            mm=pl.when(~live).then(0.0).when(~pl.col("is_option")).then(_tiered("mm", width))
            .when(short_option).then(opt_mm).otherwise(0.0),
            # a linear net of 0 keeps its rows' P&L; an option's is its value, 0 at q = 0
            pnl=pl.when(pl.col("is_option"))
            .then(pl.col("q") * pl.col("multiplier") * pl.col("mark_price")).otherwise(pl.col("upnl")),
        )
        .group_by("account_id")
        .agg(pl.col("im").sum(), pl.col("mm").sum(), pl.col("pnl").sum())
    )
    assets = _frame(book.assets).lazy()
    if "size_premium" not in assets.collect_schema().names():
        assets = assets.with_columns(size_premium=pl.lit(0.0))
    amount = pl.col("amount")
    value = amount * pl.col("price")
    cap = 1.1 / (1.0 + pl.col("size_premium") * amount.clip(lower_bound=0.0).sqrt())

    def weighted(weight: str, liability: str) -> pl.Expr:
        w = pl.when(pl.col("size_premium") > 0.0).then(pl.min_horizontal(pl.col(weight), cap)).otherwise(pl.col(weight))
        return pl.when(amount > 0.0).then(value * w).when(amount < 0.0).then(value * pl.col(liability)).otherwise(0.0)

    bal = _frame(balances).lazy()
    collateral = (
        bal.join(_key_like(assets, "asset", bal), on="asset")
        .group_by("account_id")
        .agg(
            cash=value.sum(),
            wi=weighted("initial_weight", "initial_liability_weight").sum(),
            wm=weighted("maintenance_weight", "maintenance_liability_weight").sum(),
        )
    )
    mm = pl.col("maintenance_margin")
    im = pl.col("initial_margin")
    ci, cm, eq = pl.col("collateral_initial"), pl.col("collateral_maintenance"), pl.col("equity")
    result = (
        by_account.join(collateral, on="account_id", how="full", coalesce=True)
        .with_columns(pl.col("im", "mm", "pnl", "cash", "wi", "wm").fill_null(0.0))
        .select(
            "account_id",
            equity=pl.col("cash") + pl.col("pnl"),
            collateral_initial=pl.col("wi") + pl.col("pnl"),
            collateral_maintenance=pl.col("wm") + pl.col("pnl"),
            initial_margin="im",
            maintenance_margin="mm",
        )
        .with_columns(
            free_collateral=ci - im,
            margin_excess=cm - mm,
            health=pl.when(mm != 0.0).then(cm / mm),
            status=pl.when(eq < 0.0).then(pl.lit("bankrupt"))
            .when(cm < mm).then(pl.lit("liquidatable"))
            .when(ci < im).then(pl.lit("margin_call"))
            .otherwise(pl.lit("healthy")),
        )
        .sort("account_id")
        .collect()
    )
    return result.to_arrow().cast(MARGIN_SCHEMA)
