"""Baseline: the STANDARD model (METHODOLOGY §2, §3, §6) in vectorized numpy.

How a competent quant writes it without an engine: keys to dense ids with Arrow's hash lookup
(``pc.index_in``; on dictionary columns only the dictionary is looked up), accounts with
``np.unique``, netting per (account, instrument) with ``np.unique`` over a combined int64 key
and ``np.bincount`` for the sums, tiers by comparing the notional against a small padded
(instrument × bracket) table, account sums with ``np.bincount``. Single threaded.

The helpers ``instrument_arrays``, ``net_positions``, ``collateral`` and ``finish`` are reused by
``numpy_portfolio``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ._common import MARGIN_SCHEMA, STATUSES, table

# ----------------------------------------------------------------------------------------------
# Keys
# ----------------------------------------------------------------------------------------------


def _index_in(values: pa.Array, keys: pa.Array) -> np.ndarray:
    if values.type != keys.type:
        keys = keys.cast(values.type)
    ids = pc.index_in(values, value_set=keys)
    if ids.null_count:
        missing = pc.filter(values, pc.is_null(ids)).unique().to_pylist()[:5]
        raise KeyError(f"unknown keys: {missing}")
    return ids.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


def key_ids(column: pa.ChunkedArray | pa.Array, keys: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """Dense ids (row in ``keys``) of a key column; dictionary chunks look up their dictionary only."""
    keys = keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    out = []
    for chunk in chunks:
        if pa.types.is_dictionary(chunk.type):
            dict_ids = _index_in(chunk.dictionary, keys)
            out.append(dict_ids[chunk.indices.to_numpy(zero_copy_only=False)])
        else:
            out.append(_index_in(chunk, keys))
    return np.concatenate(out) if out else np.empty(0, np.int64)


def f64(t: pa.Table, name: str, fill: float = np.nan) -> np.ndarray:
    col = t.column(name)
    if col.null_count:
        col = pc.fill_null(col, fill)
    return col.to_numpy().astype(np.float64, copy=False)


def account_ids(t: pa.Table) -> np.ndarray:
    col = t.column("account_id")
    if col.type != pa.uint64():
        col = col.cast(pa.uint64())
    return col.to_numpy()


# ----------------------------------------------------------------------------------------------
# Instruments, marks, tiers
# ----------------------------------------------------------------------------------------------


@dataclass
class Instruments:
    keys: pa.Array
    n: int
    is_option: np.ndarray
    is_call: np.ndarray
    und: np.ndarray          # underlying id (sorted names), -1 if no index price needed
    und_names: list[str]
    mult: np.ndarray
    strike: np.ndarray
    imr: np.ndarray
    mmr: np.ndarray
    floor: np.ndarray        # initial_margin_floor (0 when null)
    expiry_ns: np.ndarray    # int64, -1 when null
    mark: np.ndarray         # NaN when no mark
    vol: np.ndarray          # NaN when null
    spot: np.ndarray         # index price of the underlying (NaN when none)


def instrument_arrays(book: Any, market: Any, extra_underlyings: tuple[str, ...] = ()) -> Instruments:
    ins = table(book.instruments)
    keys = ins.column("instrument").combine_chunks()
    n = ins.num_rows
    is_option = pc.equal(ins.column("kind"), "option").to_numpy(zero_copy_only=False)
    if "option_type" in ins.column_names:
        is_call = pc.fill_null(pc.equal(ins.column("option_type"), "call"), False).to_numpy(zero_copy_only=False)
    else:
        is_call = np.zeros(n, bool)
    und_col = ins.column("underlying")
    names = sorted(set(und_col.to_pylist()) | set(extra_underlyings))  # underlyings in name order
    und = key_ids(und_col, pa.array(names, pa.utf8()))
    idx = table(market.index_prices)
    spot_by_und = np.full(len(names), np.nan)
    known = pc.fill_null(pc.index_in(idx.column("underlying"), value_set=pa.array(names, pa.utf8())), -1)
    known = known.to_numpy().astype(np.int64)
    ok = known >= 0
    spot_by_und[known[ok]] = f64(idx, "index_price")[ok]
    marks = table(market.marks)
    mark_row = pc.index_in(keys, value_set=marks.column("instrument").combine_chunks().cast(keys.type))
    has_mark = pc.is_valid(mark_row).to_numpy(zero_copy_only=False)
    mark_row = pc.fill_null(mark_row, 0).to_numpy().astype(np.int64)
    mark = np.where(has_mark, f64(marks, "mark_price")[mark_row] if marks.num_rows else np.nan, np.nan)
    if "implied_vol" in marks.column_names and marks.num_rows:
        vol = np.where(has_mark, f64(marks, "implied_vol")[mark_row], np.nan)
    else:
        vol = np.full(n, np.nan)
    if "expiry" in ins.column_names and pa.types.is_timestamp(ins.schema.field("expiry").type):
        expiry = pc.cast(pc.cast(ins.column("expiry"), pa.timestamp("ns", tz=ins.schema.field("expiry").type.tz)), pa.int64())
        expiry_ns = pc.fill_null(expiry, -1).to_numpy()
    else:
        expiry_ns = np.full(n, -1, np.int64)
    return Instruments(
        keys=keys,
        n=n,
        is_option=is_option,
        is_call=is_call,
        und=und,
        und_names=names,
        mult=f64(ins, "multiplier"),
        strike=f64(ins, "strike") if "strike" in ins.column_names else np.full(n, np.nan),
        imr=f64(ins, "initial_margin_rate"),
        mmr=f64(ins, "maintenance_margin_rate"),
        floor=f64(ins, "initial_margin_floor", 0.0) if "initial_margin_floor" in ins.column_names else np.zeros(n),
        expiry_ns=expiry_ns,
        mark=mark,
        vol=vol,
        spot=spot_by_und[und],
    )


@dataclass
class Tiers:
    floor: np.ndarray    # (n_instruments, B), +inf padded; column 0 is 0
    im_rate: np.ndarray  # (n_instruments, B)
    mm_rate: np.ndarray
    im_cum: np.ndarray   # continuity offsets cum_b
    mm_cum: np.ndarray


def tier_arrays(book: Any, ins: Instruments) -> Tiers:
    """Brackets per instrument (methodology-notes §3): the instrument's rates form an implicit
    bracket at 0 unless its tiers start at 0; ``cum_b = cum_{b-1} + f_b (r_b - r_{b-1})``."""
    tiers = table(getattr(book, "margin_tiers", None))
    brackets: dict[int, list[tuple[float, float, float]]] = {}
    if tiers is not None and tiers.num_rows:
        tid = key_ids(tiers.column("instrument"), ins.keys)
        fl, ir, mr = f64(tiers, "notional_floor"), f64(tiers, "initial_margin_rate"), f64(tiers, "maintenance_margin_rate")
        for i in np.lexsort((fl, tid)):  # a few rows: plain Python is the sensible tool here
            brackets.setdefault(int(tid[i]), []).append((fl[i], ir[i], mr[i]))
        for i, rows in brackets.items():
            if rows[0][0] > 0.0:
                rows.insert(0, (0.0, ins.imr[i], ins.mmr[i]))
    width = max((len(r) for r in brackets.values()), default=1)
    floor = np.full((ins.n, width), np.inf)
    floor[:, 0] = 0.0
    im_rate = np.repeat(ins.imr[:, None], width, axis=1)
    mm_rate = np.repeat(ins.mmr[:, None], width, axis=1)
    for i, rows in brackets.items():
        arr = np.asarray(rows)
        k = len(rows)
        floor[i, :k], im_rate[i, :k], mm_rate[i, :k] = arr[:, 0], arr[:, 1], arr[:, 2]
    im_cum = np.zeros_like(im_rate)
    mm_cum = np.zeros_like(mm_rate)
    for b in range(1, width):
        valid = np.isfinite(floor[:, b])
        f = np.where(valid, floor[:, b], 0.0)
        im_cum[:, b] = im_cum[:, b - 1] + f * (im_rate[:, b] - im_rate[:, b - 1])
        mm_cum[:, b] = mm_cum[:, b - 1] + f * (mm_rate[:, b] - mm_rate[:, b - 1])
    return Tiers(floor, im_rate, mm_rate, im_cum, mm_cum)


# ----------------------------------------------------------------------------------------------
# Netting (§2.1-2.4) and collateral (§2.5)
# ----------------------------------------------------------------------------------------------


@dataclass
class Netted:
    accounts: np.ndarray  # uint64, sorted: every account with a position or a balance
    acc: np.ndarray       # per netted position (q != 0): index into accounts
    ins: np.ndarray       # instrument id; rows sorted by (account, instrument)
    q: np.ndarray
    upnl: np.ndarray
    bal_acc: np.ndarray   # per balance row: index into accounts
    closed: np.ndarray    # per account: P&L of linear positions that net to exactly 0


def net_positions(positions: Any, balances: Any, ins: Instruments) -> Netted:
    pos = table(positions)
    bal = table(balances)
    pacc = account_ids(pos)
    pins = key_ids(pos.column("instrument"), ins.keys)
    qty = f64(pos, "quantity")
    # accounts of positions, then netting over a combined (account, instrument) key
    pacc_u, pinv = np.unique(pacc, return_inverse=True)
    key = pinv.astype(np.int64) * ins.n + pins
    nkey, kinv = np.unique(key, return_inverse=True)
    q = np.bincount(kinv, weights=qty, minlength=nkey.size)  # sums each key's rows in row order
    if "entry_price" in pos.column_names:
        linear = ~ins.is_option[pins]
        row_upnl = np.where(linear, qty * ins.mult[pins] * (ins.mark[pins] - f64(pos, "entry_price")), 0.0)
        upnl = np.bincount(kinv, weights=row_upnl, minlength=nkey.size)
    else:
        upnl = np.zeros(nkey.size)
    keep = q != 0.0  # a net of exactly 0 carries no margin, but keeps its rows' P&L (`closed`)
    bacc = account_ids(bal)
    accounts = np.concatenate([pacc_u, bacc])  # sorted union (np.union1d's hash path is slower)
    accounts.sort()
    accounts = accounts[np.r_[True, accounts[1:] != accounts[:-1]]]
    acc_of_pacc = np.searchsorted(accounts, pacc_u)
    closed = np.bincount(acc_of_pacc[nkey[~keep] // ins.n], weights=upnl[~keep], minlength=accounts.size)
    nkey = nkey[keep]
    return Netted(
        accounts=accounts,
        acc=acc_of_pacc[nkey // ins.n],
        ins=nkey % ins.n,
        q=q[keep],
        upnl=upnl[keep],
        bal_acc=np.searchsorted(accounts, bacc),
        closed=closed,
    )


def position_pnl(net: Netted, ins: Instruments) -> np.ndarray:
    """upnl (perpetuals, futures) or option value ``q × multiplier × mark`` (options)."""
    i = net.ins
    return np.where(ins.is_option[i], net.q * ins.mult[i] * ins.mark[i], net.upnl)


def collateral(book: Any, balances: Any, net: Netted) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per account ``(cash, weighted_initial, weighted_maintenance)`` (§2.5)."""
    assets = table(book.assets)
    bal = table(balances)
    a = key_ids(bal.column("asset"), assets.column("asset"))
    amount = f64(bal, "amount")
    price = f64(assets, "price")[a]
    premium = (f64(assets, "size_premium", 0.0) if "size_premium" in assets.column_names else np.zeros(assets.num_rows))[a]
    value = amount * price
    n = net.accounts.size
    cash = np.bincount(net.bal_acc, weights=value, minlength=n)
    long = amount > 0.0
    with np.errstate(invalid="ignore"):
        cap = np.where(long & (premium > 0.0), 1.1 / (1.0 + premium * np.sqrt(np.where(long, amount, 0.0))), np.inf)
    out = []
    for w, lw in (("initial_weight", "initial_liability_weight"), ("maintenance_weight", "maintenance_liability_weight")):
        weight = np.where(long, np.minimum(f64(assets, w)[a], cap), f64(assets, lw)[a])
        out.append(np.bincount(net.bal_acc, weights=np.where(amount != 0.0, value * weight, 0.0), minlength=n))
    return cash, out[0], out[1]


def finish(accounts: np.ndarray, cash, wi, wm, pnl, im, mm) -> pa.Table:
    """§6: the account rows from the per-account sums."""
    equity = cash + pnl
    ci = wi + pnl
    cm = wm + pnl
    no_mm = mm == 0.0
    with np.errstate(divide="ignore", invalid="ignore"):
        health = cm / np.where(no_mm, 1.0, mm)
    status = np.select([equity < 0.0, cm < mm, ci < im], [0, 1, 2], 3).astype(np.int8)
    return pa.Table.from_arrays(
        [
            pa.array(accounts, pa.uint64()),
            pa.array(equity),
            pa.array(ci),
            pa.array(cm),
            pa.array(im),
            pa.array(mm),
            pa.array(ci - im),
            pa.array(cm - mm),
            pa.array(health, mask=no_mm),
            pc.take(pa.array(STATUSES, pa.utf8()), pa.array(status)),
        ],
        schema=MARGIN_SCHEMA,
    )


# ----------------------------------------------------------------------------------------------
# Standard model (§3)
# ----------------------------------------------------------------------------------------------


def standard_position_margin(net: Netted, ins: Instruments, tiers: Tiers) -> tuple[np.ndarray, np.ndarray]:
    i = net.ins
    size = np.abs(net.q) * ins.mult[i]
    mark = ins.mark[i]
    im = np.zeros(i.size)
    mm = np.zeros(i.size)
    # perpetuals / futures: notional × rate, tiered (continuous across brackets) where tiers exist
    lin = np.flatnonzero(~ins.is_option[i])
    li = i[lin]
    notional = size[lin] * mark[lin]
    im[lin] = notional * ins.imr[li]
    mm[lin] = notional * ins.mmr[li]
    tiered = np.isfinite(tiers.floor[li, 1]) if tiers.floor.shape[1] > 1 else np.zeros(li.size, bool)
    t_rows, t_ins, t_notional = lin[tiered], li[tiered], notional[tiered]
    b = np.zeros(t_ins.size, np.int64)
    for col in range(1, tiers.floor.shape[1]):
        b += tiers.floor[t_ins, col] <= t_notional
    im[t_rows] = t_notional * tiers.im_rate[t_ins, b] - tiers.im_cum[t_ins, b]
    mm[t_rows] = t_notional * tiers.mm_rate[t_ins, b] - tiers.mm_cum[t_ins, b]
    # short options: per contract, times |q| × multiplier (long options: 0)
    so = np.flatnonzero(ins.is_option[i] & (net.q < 0.0))
    oi = i[so]
    spot, strike = ins.spot[oi], ins.strike[oi]
    otm = np.where(ins.is_call[oi], np.maximum(strike - spot, 0.0), np.maximum(spot - strike, 0.0))
    im[so] = size[so] * (mark[so] + np.maximum(ins.imr[oi] * spot - otm, ins.floor[oi] * spot))
    mm[so] = size[so] * (mark[so] + ins.mmr[oi] * spot)
    return im, mm


def margin(book: Any, positions: Any, balances: Any, market: Any) -> pa.Table:
    """``me.margin(..., model="standard")`` in numpy."""
    ins = instrument_arrays(book, market)
    tiers = tier_arrays(book, ins)
    net = net_positions(positions, balances, ins)
    n = net.accounts.size
    pos_im, pos_mm = standard_position_margin(net, ins, tiers)
    # rows are sorted by (account, instrument): bincount adds in instrument-id order
    im = np.bincount(net.acc, weights=pos_im, minlength=n)
    mm = np.bincount(net.acc, weights=pos_mm, minlength=n)
    pnl = np.bincount(net.acc, weights=position_pnl(net, ins), minlength=n) + net.closed
    cash, wi, wm = collateral(book, balances, net)
    return finish(net.accounts, cash, wi, wm, pnl, im, mm)
