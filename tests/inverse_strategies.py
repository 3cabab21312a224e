"""Hypothesis strategies for books mixing linear and inverse (coin-settled) contracts.

`inverse_books()` draws a `books()` example (strategies.py) and turns some of its perpetuals,
futures and options into inverse contracts settled in a coin asset linked to their underlying
(`COIN-<underlying>`, priced near the index), with coin balances for some accounts and,
sometimes, an `unsettled_funding` column on positions (nulls included). An inverse option's mark
becomes a coin price (its USD mark over the index, as Deribit quotes BTC options); an inverse
perpetual's or future's mark stays USD per coin, its multiplier a face value in USD. Everything
else of the example is kept, so the linear rules are exercised beside the inverse ones.

Self-contained like strategies.py (no margin_engine import).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa
from hypothesis import strategies as st
from strategies import Draw, books, log_uniform, reference_objects, with_topups


def coin_asset(underlying: str) -> str:
    """The settlement coin of `underlying`'s inverse contracts."""
    return f"COIN-{underlying}"


def _replace_column(table: pa.Table, name: str, values: list[Any], typ: pa.DataType) -> pa.Table:
    array = pa.array(values, typ)
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, array)
    return table.append_column(name, array)


@st.composite
def inverse_books(draw: Draw, max_accounts: int = 12, funding: bool | None = None) -> dict[str, Any]:
    """A `books()` example with some inverse contracts, coin collateral and funding."""
    example = dict(draw(books(max_accounts=max_accounts)))
    instruments = example["instruments"]
    keys = instruments.column("instrument").to_pylist()
    kinds = instruments.column("kind").to_pylist()
    underlyings = instruments.column("underlying").to_pylist()
    spots = dict(
        zip(
            example["index_prices"].column("underlying").to_pylist(),
            example["index_prices"].column("index_price").to_pylist(),
            strict=True,
        )
    )
    inverse = [u in spots and draw(st.integers(0, 2)) > 0 for u in underlyings]
    if not any(inverse):
        inverse[0] = underlyings[0] in spots
    settlement = ["inverse" if i else draw(st.sampled_from(["linear", None])) for i in inverse]
    coins = sorted({underlyings[i] for i, inv in enumerate(inverse) if inv})
    instruments = _replace_column(instruments, "settlement", settlement, pa.utf8())
    instruments = _replace_column(
        instruments,
        "settlement_asset",
        [coin_asset(underlyings[i]) if inv else None for i, inv in enumerate(inverse)],
        pa.utf8(),
    )
    example["instruments"] = instruments

    # an inverse option's mark is in coin: its USD mark over the index
    inverse_keys = {keys[i] for i, inv in enumerate(inverse) if inv}
    option_underlying = {keys[i]: underlyings[i] for i, k in enumerate(kinds) if k == "option"}
    marks = example["marks"]
    mark_keys = marks.column("instrument").to_pylist()
    prices = marks.column("mark_price").to_pylist()
    new_prices = [
        p / spots[option_underlying[k]] if k in inverse_keys and k in option_underlying else p
        for k, p in zip(mark_keys, prices, strict=True)
    ]
    example["marks"] = marks.set_column(marks.column_names.index("mark_price"), "mark_price", pa.array(new_prices, pa.float64()))

    # the coins, linked to their underlyings
    assets = example["assets"]
    if "underlying" not in assets.column_names:
        assets = assets.append_column("underlying", pa.array([None] * assets.num_rows, pa.utf8()))
    rows: dict[str, list[Any]] = {name: [] for name in assets.column_names}
    for u in coins:
        iw, mw = sorted(draw(st.lists(st.floats(0.5, 1.0), min_size=2, max_size=2)))
        mlw, ilw = sorted(draw(st.lists(st.floats(1.0, 1.5), min_size=2, max_size=2)))
        values = {
            "asset": coin_asset(u),
            "price": spots[u] * draw(st.one_of(st.just(1.0), st.floats(0.99, 1.01))),
            "initial_weight": iw,
            "maintenance_weight": mw,
            "initial_liability_weight": ilw,
            "maintenance_liability_weight": mlw,
            "size_premium": 0.0,
            "underlying": u,
        }
        for name in rows:
            rows[name].append(values.get(name))
    example["assets"] = pa.concat_tables([assets, pa.table(rows, schema=assets.schema)])

    # coin balances for some accounts
    balances = example["balances"]
    accounts = sorted(
        set(example["positions"].column("account_id").to_pylist()) | set(balances.column("account_id").to_pylist())
    )
    extra: list[tuple[int, str, float]] = []
    for a in accounts:
        for u in coins:
            if draw(st.booleans()):
                extra.append((a, coin_asset(u), draw(st.one_of(log_uniform(1e-4, 1e2), st.floats(-10.0, 10.0)))))
    if extra:
        more = pa.table(
            {"account_id": [e[0] for e in extra], "asset": [e[1] for e in extra], "amount": [e[2] for e in extra]},
            schema=balances.schema,
        )
        example["balances"] = pa.concat_tables([balances, more])

    # unsettled funding (USD), nulls = 0
    positions = example["positions"]
    if funding if funding is not None else draw(st.booleans()):
        values = [
            draw(st.one_of(st.none(), st.just(0.0), st.floats(-1e4, 1e4))) for _ in range(positions.num_rows)
        ]
        positions = positions.append_column("unsettled_funding", pa.array(values, pa.float64()))
    example["positions"] = positions
    return example


@st.composite
def near_inverse_books(draw: Draw, model: str = "standard", max_accounts: int = 6) -> dict[str, Any]:
    """An `inverse_books()` example with most accounts topped up to a little above maintenance
    (as test_liquidation's `near_books`), where the distance walk interpolates."""
    from margin_engine import reference  # the reference only: no extension needed

    example = draw(inverse_books(max_accounts=max_accounts))
    if draw(st.integers(0, 7)) == 0:
        return example
    book, market = reference_objects(example)
    rows = reference.margin(book, example["positions"], example["balances"], market, model=model).to_pylist()
    topups = []
    for r in rows:
        if r["maintenance_margin"] > 0.0 and draw(st.integers(0, 7)) > 0:
            target = r["maintenance_margin"] * (1.0 + draw(log_uniform(1e-3, 1.0)))
            topups.append((r["account_id"], target - r["collateral_maintenance"]))
    return with_topups(example, topups) if topups else example
