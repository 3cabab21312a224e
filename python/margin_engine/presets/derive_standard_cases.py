"""Derive standard-manager test cases turned into margin-engine inputs.

Derive (derivexyz/v2-core) publishes 28 cases for its standard manager in
`test/risk-managers/unit-tests/StandardManager/test-cases.json`, in 1e18 fixed point. The copy in
`tests/data/derive/standard_manager_test_cases.json` wraps each as
`{id, source, published_inputs, published_expected}`. `case_inputs(case)` builds, from one case,
the tables the engine reads (instruments, assets, positions, balances, index prices, marks, a
valuation time) and the extra market data of the generalized standard margin
(`reference.standard_rules.MarketFeeds`: forwards, feed confidences, the stable's price).

How the published scenario maps onto our inputs, following the set-up of Derive's harness
(`TestStandardManager_Cases.t.sol`):

- one account (id 1); an ETH and a BTC market, each with a perpetual (`ETH-PERP`, `BTC-PERP`),
  options and a wrapped base asset (`wETH`, `wBTC`, linked to its underlying); cash in `USDC`;
- index prices `ETHSpotPrice`, `BTCSpotPrice`; perpetual marks `PerpPrice`; the perpetual's
  unrealized P&L is `q × (mark − LastEntry)`, its unsettled funding
  `−q × (GlobalFundingIndex − AccountFundingIndex)`, which is realized cash and so is added to
  the USDC balance (`DeriveStandardCase.unsettled_funding` keeps it for reporting);
- expiries in seconds from the valuation time; the forward of an expiry is the `Forwards` entry
  of its feed, except within an hour of expiry (`FeedExpiries < 3600`), where the harness feeds the
  settlement price (`SettlementPriceETH/BTC`) instead; when several feed entries name the same
  (underlying, expiry), the last one holds, as in the harness's mock feeds (confidences likewise);
- option marks are Black-76 on that forward with the case's vol (`OptionVols`), undiscounted,
  time in years of 365 days, with `margin_engine.reference.black76_scalar`;
- instruments carry the preset's rates (option IM rate/floor and MM rates, perpetual rates), so
  the book reads the same under either the preset's overrides or the instrument columns.

Nothing here is Derive's code: it is a reading of the published inputs.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pyarrow as pa

from margin_engine.io import BookTables
from margin_engine.reference.black76 import black76_scalar
from margin_engine.reference.standard_params import DERIVE_STANDARD
from margin_engine.reference.standard_rules import MarketFeeds

__all__ = [
    "ACCOUNT_ID",
    "DeriveStandardCase",
    "FIXED_POINT",
    "NEAR_EXPIRY_SECONDS",
    "VALUATION_TIME_S",
    "case_inputs",
    "case_tables",
    "from_fixed",
    "load_cases",
    "published_figures",
]

FIXED_POINT = 10**18
"""Derive's fixed-point unit: the JSON's integers are value × 1e18."""
VALUATION_TIME_S = 1_700_000_000
"""Our valuation time (any instant works: the cases give expiries relative to it)."""
NEAR_EXPIRY_SECONDS = 3600
"""Feeds expiring sooner than this use the settlement price as their forward (harness rule)."""
SECONDS_PER_YEAR = 31_536_000
ACCOUNT_ID = 1
UNDERLYINGS = ("ETH", "BTC")
QUOTE = "USDC"


def from_fixed(value: Any) -> float:
    """A 1e18 fixed-point number (int, or float for the few floats in the file) as a float."""
    if value is None:
        return 0.0
    if isinstance(value, int):
        return value / FIXED_POINT
    return float(value) / FIXED_POINT


def load_cases(path: str | Path) -> list[dict[str, Any]]:
    """The cases of a JSON file in the wrapped format above."""
    cases: list[dict[str, Any]] = json.loads(Path(path).read_text(encoding="utf-8"))
    return cases


def published_figures(case: dict[str, Any]) -> dict[str, float]:
    """The case's published results (`Result` of the source), converted from 1e18."""
    return {name: from_fixed(value) for name, value in case["published_expected"].items()}


@dataclass(frozen=True)
class DeriveStandardCase:
    """Our inputs for one published case: the engine's tables (`tables.book()` and
    `tables.market()` give `me.Book` / `me.Market`) and the feeds of the generalized rules."""

    case_id: str
    tables: BookTables
    feeds: MarketFeeds
    unsettled_funding: dict[str, float] = field(default_factory=dict)
    """Perpetual key -> its unsettled funding (already in the USDC balance)."""
    cash: float = 0.0
    """The case's cash balance before funding."""

    @property
    def valuation_time_ns(self) -> int:
        return VALUATION_TIME_S * 1_000_000_000

    def reference_book(self) -> SimpleNamespace:
        """A duck-typed book for `margin_engine.reference`."""
        return SimpleNamespace(
            instruments=self.tables.instruments, assets=self.tables.assets, risk_params=None, margin_tiers=None
        )

    def reference_market(self) -> SimpleNamespace:
        """A duck-typed market for `margin_engine.reference`."""
        return SimpleNamespace(
            index_prices=self.tables.index_prices, marks=self.tables.marks, valuation_time_ns=self.valuation_time_ns
        )


def _underlying_index(name: str) -> int:
    if name not in UNDERLYINGS:
        raise ValueError(f"case names an unknown underlying {name!r} (expected ETH or BTC)")
    return UNDERLYINGS.index(name)


def _feeds(inputs: dict[str, Any]) -> tuple[dict[tuple[str, int], float], dict[tuple[str, int], float]]:
    """Forward and forward confidence per (underlying, expiry in seconds), last entry winning."""
    underlyings = inputs["OptionUnderlying"]
    forwards: dict[tuple[str, int], float] = {}
    confidences: dict[tuple[str, int], float] = {}
    for i, expiry in enumerate(inputs["FeedExpiries"]):
        underlying = underlyings[i]
        if expiry < NEAR_EXPIRY_SECONDS:
            forward = from_fixed(inputs[f"SettlementPrice{underlying}"])
        else:
            forward = from_fixed(inputs["Forwards"][i])
        forwards[(underlying, int(expiry))] = forward
        confidences[(underlying, int(expiry))] = from_fixed(inputs["ForwardConfidences"][i])
    return forwards, confidences


def _option_key(underlying: str, expiry_s: int, strike: float, is_call: bool) -> str:
    return f"{underlying}-{expiry_s}-{strike!r}-{'C' if is_call else 'P'}"


def case_inputs(case: dict[str, Any]) -> DeriveStandardCase:
    """Our tables and feeds for one published case (see the module docstring)."""
    params = DERIVE_STANDARD
    assert params.linear_im_rate is not None and params.base_asset_margin_factor is not None
    inputs = case["published_inputs"]
    t0_ns = VALUATION_TIME_S * 1_000_000_000
    spots = {"ETH": from_fixed(inputs["ETHSpotPrice"]), "BTC": from_fixed(inputs["BTCSpotPrice"])}
    perp_prices = [from_fixed(p) for p in inputs["PerpPrice"]]
    confs = [[from_fixed(c) for c in row] for row in inputs["SpotPerpConfidences"]]
    forwards_s, forward_conf_s = _feeds(inputs)

    instruments: list[dict[str, Any]] = []
    marks: list[dict[str, Any]] = []
    positions: list[dict[str, Any]] = []
    vol_conf: dict[tuple[str, int], float] = {}

    # perpetuals: always listed, held when the case's balance is non-zero
    funding: dict[str, float] = {}
    for u in UNDERLYINGS:
        key = f"{u}-PERP"
        instruments.append(
            {
                "instrument": key, "kind": "perpetual", "underlying": u, "expiry": None, "strike": None,
                "option_type": None, "initial_margin_rate": params.linear_im_rate,
                "maintenance_margin_rate": params.linear_mm_rate, "initial_margin_floor": None,
            }
        )  # fmt: skip
        mark = perp_prices[_underlying_index(u)]
        marks.append({"instrument": key, "mark_price": mark, "implied_vol": None})
        quantity = from_fixed(inputs[f"Perps_{u}"])
        if quantity != 0.0:
            entry = from_fixed(inputs[f"LastEntry{u}"])
            positions.append({"instrument": key, "quantity": quantity, "entry_price": entry})
            rate = from_fixed(inputs[f"{u}GlobalFundingIndex"]) - from_fixed(inputs[f"Account{u}FundingIndex"])
            funding[key] = -quantity * rate

    # options
    seen: dict[str, int] = {}
    for i, underlying in enumerate(inputs["OptionUnderlying"]):
        _underlying_index(underlying)
        expiry_s = int(inputs["OptionExpiries"][i])
        strike = from_fixed(inputs["OptionStrikes"][i])
        is_call = int(inputs["OptionIsCall"][i]) == 1
        vol = from_fixed(inputs["OptionVols"][i])
        vol_conf[(underlying, expiry_s)] = from_fixed(inputs["OptionVolConfidences"][i])
        key = _option_key(underlying, expiry_s, strike, is_call)
        if key not in seen:
            seen[key] = len(instruments)
            instruments.append(
                {
                    "instrument": key, "kind": "option", "underlying": underlying,
                    "expiry": VALUATION_TIME_S + expiry_s, "strike": strike,
                    "option_type": "call" if is_call else "put",
                    "initial_margin_rate": params.option_im_rate,
                    "maintenance_margin_rate": params.call_mm_rate if is_call else params.put_mm_rate,
                    "initial_margin_floor": params.option_im_floor,
                }
            )  # fmt: skip
            forward = forwards_s.get((underlying, expiry_s), spots[underlying])
            price = black76_scalar(forward, strike, expiry_s / SECONDS_PER_YEAR, vol, is_call)[0]
            marks.append({"instrument": key, "mark_price": price, "implied_vol": vol})
        positions.append(
            {"instrument": key, "quantity": from_fixed(inputs["OptionAmounts"][i]), "entry_price": None}
        )

    # collateral: USDC cash (plus unsettled funding) and the wrapped base assets
    cash = from_fixed(inputs["Cash"])
    factor = params.base_asset_margin_factor
    assets = [
        {"asset": QUOTE, "price": 1.0, "initial_weight": 1.0, "maintenance_weight": 1.0, "underlying": None},
        {"asset": "wETH", "price": spots["ETH"], "initial_weight": factor * params.base_asset_im_scale,
         "maintenance_weight": factor, "underlying": "ETH"},
        {"asset": "wBTC", "price": spots["BTC"], "initial_weight": factor * params.base_asset_im_scale,
         "maintenance_weight": factor, "underlying": "BTC"},
    ]  # fmt: skip
    balances = [{"asset": QUOTE, "amount": cash + sum(funding.values())}]
    for asset, name in (("wETH", "wETH"), ("wBTC", "wBTC")):
        amount = from_fixed(inputs[name])
        if amount != 0.0:
            balances.append({"asset": asset, "amount": amount})

    feeds = MarketFeeds(
        forwards={(u, t0_ns + e * 1_000_000_000): f for (u, e), f in forwards_s.items()},
        stable_price=from_fixed(inputs["USDCValue"]),
        index_confidence={u: confs[_underlying_index(u)][0] for u in UNDERLYINGS},
        mark_confidence={f"{u}-PERP": confs[_underlying_index(u)][1] for u in UNDERLYINGS},
        forward_confidence={(u, t0_ns + e * 1_000_000_000): c for (u, e), c in forward_conf_s.items()},
        vol_confidence={(u, t0_ns + e * 1_000_000_000): c for (u, e), c in vol_conf.items()},
    )
    tables = BookTables(
        instruments=_instrument_table(instruments),
        assets=_asset_table(assets),
        positions=pa.table(
            {
                "account_id": pa.array([ACCOUNT_ID] * len(positions), pa.uint64()),
                "instrument": pa.array([p["instrument"] for p in positions], pa.utf8()),
                "quantity": pa.array([p["quantity"] for p in positions], pa.float64()),
                "entry_price": pa.array([p["entry_price"] for p in positions], pa.float64()),
            }
        ),
        balances=pa.table(
            {
                "account_id": pa.array([ACCOUNT_ID] * len(balances), pa.uint64()),
                "asset": pa.array([b["asset"] for b in balances], pa.utf8()),
                "amount": pa.array([b["amount"] for b in balances], pa.float64()),
            }
        ),
        index_prices=pa.table(
            {"underlying": pa.array(list(UNDERLYINGS)), "index_price": pa.array([spots[u] for u in UNDERLYINGS])}
        ),
        marks=pa.table(
            {
                "instrument": pa.array([m["instrument"] for m in marks], pa.utf8()),
                "mark_price": pa.array([m["mark_price"] for m in marks], pa.float64()),
                "implied_vol": pa.array([m["implied_vol"] for m in marks], pa.float64()),
            }
        ),
        valuation_time=dt.datetime.fromtimestamp(VALUATION_TIME_S, tz=dt.timezone.utc),
    )
    return DeriveStandardCase(case["id"], tables, feeds, funding, cash)


def _column(rows: Iterable[dict[str, Any]], name: str) -> list[Any]:
    return [row[name] for row in rows]


def _instrument_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.table(
        {
            "instrument": pa.array(_column(rows, "instrument"), pa.utf8()),
            "kind": pa.array(_column(rows, "kind"), pa.utf8()),
            "underlying": pa.array(_column(rows, "underlying"), pa.utf8()),
            "multiplier": pa.array([1.0] * len(rows), pa.float64()),
            "expiry": pa.array(_column(rows, "expiry"), pa.timestamp("s", tz="UTC")),
            "strike": pa.array(_column(rows, "strike"), pa.float64()),
            "option_type": pa.array(_column(rows, "option_type"), pa.utf8()),
            "initial_margin_rate": pa.array(_column(rows, "initial_margin_rate"), pa.float64()),
            "maintenance_margin_rate": pa.array(_column(rows, "maintenance_margin_rate"), pa.float64()),
            "initial_margin_floor": pa.array(_column(rows, "initial_margin_floor"), pa.float64()),
        }
    )


def _asset_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.table(
        {
            "asset": pa.array(_column(rows, "asset"), pa.utf8()),
            "price": pa.array(_column(rows, "price"), pa.float64()),
            "initial_weight": pa.array(_column(rows, "initial_weight"), pa.float64()),
            "maintenance_weight": pa.array(_column(rows, "maintenance_weight"), pa.float64()),
            "initial_liability_weight": pa.array([1.0] * len(rows), pa.float64()),
            "maintenance_liability_weight": pa.array([1.0] * len(rows), pa.float64()),
            "underlying": pa.array(_column(rows, "underlying"), pa.utf8()),
        }
    )


def case_tables(case: dict[str, Any]) -> Any:
    """`(book, market, positions, balances)` of one of Derive's published standard-manager cases,
    with the `derive_standard` methodology inside the book: `me.margin(book, positions, balances,
    market, model="standard")` gives Derive's signed IM in `free_collateral` and its signed MM in
    `margin_excess`.

    The generalized standard rules' feeds become market columns: the index confidences a
    `confidence` column of `index_prices`, the perpetuals' mark confidences one of `marks`, each
    (underlying, expiry)'s forward an `expiry_feeds` row whose confidence is the lowest of the
    forward's and the vol's (the rules read only that minimum), and the stable coin's dollar price
    an `index_prices` row named `USDC` (the book's quote asset), which the depeg add-on reads.
    `tests/test_methodology_engine.py` runs the 28 published cases through it.
    """
    import margin_engine as me
    from margin_engine.presets.derive import DeriveCase

    inputs = case_inputs(case)
    t, feeds = inputs.tables, inputs.feeds
    index = t.index_prices.to_pylist()
    index_prices = pa.table(
        {
            "underlying": pa.array([r["underlying"] for r in index] + [QUOTE], pa.string()),
            "index_price": pa.array([r["index_price"] for r in index] + [feeds.stable_price], pa.float64()),
            "confidence": pa.array([feeds.index_confidence[r["underlying"]] for r in index] + [1.0], pa.float64()),
        }
    )
    keys = t.marks.column("instrument").to_pylist()
    marks = t.marks.append_column(
        "confidence", pa.array([feeds.mark_confidence.get(k, 1.0) for k in keys], pa.float64())
    )
    t0_ns = inputs.valuation_time_ns
    expiries = sorted(set(feeds.forwards) | set(feeds.vol_confidence))
    rows = [
        (u, e, feeds.forwards.get((u, e)), min(feeds.forward_confidence.get((u, e), 1.0), feeds.vol_confidence.get((u, e), 1.0)))
        for u, e in expiries
    ]
    rows = [r for r in rows if r[2] is not None]
    expiry_feeds = pa.table(
        {
            "underlying": pa.array([r[0] for r in rows], pa.string()),
            "expiry": pa.array([r[1] for r in rows], pa.timestamp("ns", tz="UTC")),
            "forward": pa.array([r[2] for r in rows], pa.float64()),
            "confidence": pa.array([r[3] for r in rows], pa.float64()),
        }
    )
    missing_forward = [k for k in feeds.vol_confidence if k not in feeds.forwards]
    if missing_forward:
        # An option expiry without a forward feed is valued on the index (as the reference does);
        # its vol confidence alone would be lost with no feed row to carry it.
        raise ValueError(f"case {case['id']}: options expiring at {missing_forward} have no forward feed")
    book = me.Book(t.instruments, t.assets, methodology="derive_standard")
    market = me.Market(index_prices, marks, t0_ns, expiry_feeds=expiry_feeds)
    return DeriveCase(book, market, t.positions, t.balances)
