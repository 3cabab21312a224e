"""A realistic synthetic exchange book, deterministic by seed and fast.

``generate(accounts, seed)`` returns a :class:`SyntheticBook`: the input tables of
docs/methodology.md §1 (instruments, assets, margin_tiers, positions, balances, index_prices,
marks) plus the valuation time. One million accounts (about ten million position rows) take a
few seconds: everything that scales with rows or accounts is vectorised numpy; Python loops run
only over the ~2,000 instruments. This module does not import the rest of ``margin_engine``.

The generative model
--------------------
Market.
    Ten underlyings (BTC ~ 90,000, ETH ~ 3,000, SOL ~ 150, XRP, BNB, DOGE, AVAX, LINK, ADA,
    TON) with fixed index prices. Each has a perpetual (``BTC-PERP``) and dated futures
    (``BTC-25DEC26``); BTC, ETH and SOL carry full option chains (``BTC-25DEC26-100000-C``):
    weeklies, monthlies and quarterlies out to ~13 months, strikes on a "nice" ladder (fine near
    the money, coarse in the wings) from 40% to 250% of spot, narrower for short expiries. About
    2,000 instruments. Expiries are Fridays 08:00 UTC; the valuation time is Wednesday
    2026-11-25 08:00 UTC. Perpetual marks sit a few basis points off the index, futures carry
    an annual basis, options are priced by Black-76 (r = 0, forward = index price,
    docs/methodology.md §5) off a smile ``σ = atm(T) · (1 + skew·z + curv·z²)`` with ``z = ln(K/F)/√T``.
    Margin tiers (risk-limit brackets) exist for the perpetuals and futures of BTC, ETH and SOL.

Accounts.
    Ids are random large uint64 (a sorted random walk with large gaps, from just below 2**32
    upward, so 32-bit truncation bugs show). Each account has a type: perpetual trader (few
    rows, perpetuals only), options trader focused on one of BTC/ETH/SOL (its futures and
    options), diversified pro (anything, many rows), or idle (balances, no positions). Rows
    per account are heavy tailed (mostly 1-5, some hundreds, ~10 on average); position sizes
    are log-normal in USD (an account size effect times a row effect, $100 to $10M) converted
    to whole contracts.

Positions.
    Instruments are drawn by popularity (perpetuals, near expiries and near-the-money options
    dominate; deep wings are rare). The draws of an account are generated already *sorted* by
    instrument (order statistics of uniforms via normalised exponential spacings, mapped through
    the popularity CDF restricted to the account's instrument range), so repeated draws of the
    same instrument are adjacent: they become fills of one position (some partly closing, some
    closing it exactly to a net of zero) and netting needs no sort. Some options and pro
    accounts add hedged structures (covered calls, protective puts, collars, straddles,
    verticals, futures calendars); their ~0.5M legs are sorted on their own and merged in.
    Entry prices scatter around the mark (heavy tailed).

Health.
    The standard-model margin (§3, with tiers, on the netted positions) and the unrealised P&L
    + option value of every account are computed exactly with numpy. Each account then gets a
    target status (~90% healthy, ~5% margin call, ~3% liquidatable, ~1% bankrupt) and the
    collateral that realises it: healthy accounts hold ``g × IM`` of initial-weighted
    collateral (g log-uniform in 1.05-10), margin calls and liquidatable accounts ``h × MM``
    of maintenance-weighted collateral (h between 1 and IM/MM, or below 1), bankrupt accounts
    a small deposit plus a loss larger than it (their entry prices are moved against them).
    When an account's P&L makes its target unreachable, entry prices are shifted (up to 25%) or
    the account falls back to healthy. Collateral is spread over 1-3 assets (stables, BTC, ETH,
    SOL, XRP), solved exactly for the weighted value including the size premium; a few percent
    of accounts borrow an asset (negative amount).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import pathlib
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

__all__ = ["TABLE_NAMES", "VALUATION_TIME", "MechanicsBook", "SyntheticBook", "black76", "generate", "with_mechanics"]

VALUATION_TIME = dt.datetime(2026, 11, 25, 8, 0, tzinfo=dt.timezone.utc)
TABLE_NAMES = ("instruments", "assets", "margin_tiers", "positions", "balances",
               "index_prices", "marks")

_YEAR_NS = 365 * 86_400 * 10**9
_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")


# ----------------------------------------------------------------------------------------------
# Static market description
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Underlying:
    name: str
    index: float
    linear_multiplier: float       # contract size of perpetual / futures, in underlying units
    option_multiplier: float       # contract size of options (0: no options)
    imr: float                     # perpetual / futures rates (first tier)
    mmr: float
    popularity: float              # share of random position draws
    atm_vol: float                 # at-the-money implied vol (1 month)
    basis: float                   # annual futures basis
    futures: tuple[int, int, int]  # (weeklies, monthlies, quarterlies) of futures
    options: tuple[int, int, int]  # (weeklies, monthlies, quarterlies) of options
    tier_scale: float = 0.0        # risk-limit brackets: floors × tier_scale (0: no tiers)


_UNDERLYINGS = (  # name, index, multipliers, imr, mmr, popularity, vol, basis, expiries, tiers
    _Underlying("BTC", 90e3, 0.001, 0.01, 0.02, 0.01, 0.36, 0.50, 0.07, (1, 3, 5), (4, 4, 5), 1.0),
    _Underlying("ETH", 3e3, 0.01, 0.1, 0.025, 0.0125, 0.24, 0.65, 0.08, (1, 3, 5), (4, 4, 5), 0.5),
    _Underlying("SOL", 150.0, 0.1, 1.0, 0.04, 0.02, 0.13, 0.85, 0.10, (0, 1, 3), (3, 4, 3), 0.25),
    _Underlying("XRP", 2.2, 10.0, 0.0, 0.05, 0.025, 0.06, 0.90, 0.10, (0, 0, 2), (0, 0, 0)),
    _Underlying("BNB", 650.0, 0.01, 0.0, 0.05, 0.025, 0.04, 0.70, 0.08, (0, 0, 2), (0, 0, 0)),
    _Underlying("DOGE", 0.32, 100.0, 0.0, 0.10, 0.05, 0.05, 1.00, 0.12, (0, 0, 2), (0, 0, 0)),
    _Underlying("AVAX", 35.0, 1.0, 0.0, 0.10, 0.05, 0.03, 1.00, 0.12, (0, 0, 2), (0, 0, 0)),
    _Underlying("LINK", 20.0, 1.0, 0.0, 0.10, 0.05, 0.03, 0.95, 0.12, (0, 0, 2), (0, 0, 0)),
    _Underlying("ADA", 0.9, 100.0, 0.0, 0.10, 0.05, 0.03, 0.95, 0.12, (0, 0, 2), (0, 0, 0)),
    _Underlying("TON", 5.5, 10.0, 0.0, 0.10, 0.05, 0.03, 0.95, 0.12, (0, 0, 2), (0, 0, 0)),
)

# Risk-limit brackets (floors in USD for BTC; scaled by `tier_scale`) and rate multipliers.
_TIER_FLOORS = (0.0, 1e6, 5e6, 2e7)
_TIER_RATE_FACTORS = (1.0, 2.0, 4.0, 7.5)

_OPTION_IMR, _OPTION_MMR, _OPTION_FLOOR = 0.15, 0.075, 0.10

# Strike ladder: (moneyness low, moneyness high, step as a fraction of spot, rounded to 1-2-2.5-5).
_STRIKE_BANDS = ((0.9, 1.1, 0.0125), (0.7, 1.45, 0.05), (0.4, 2.5, 0.1))

# asset, price (None: index of the same-named underlying), initial/maintenance weight,
# initial/maintenance liability weight, size premium, amount decimals, linked underlying.
_ASSETS = (
    ("USD", 1.0, 1.0, 1.0, 1.0, 1.0, 0.0, 2, None),
    ("USDC", 0.9999, 0.98, 0.99, 1.02, 1.01, 0.0, 2, None),
    ("USDT", 1.0003, 0.95, 0.97, 1.05, 1.03, 0.0, 2, None),
    ("BTC", None, 0.90, 0.95, 1.10, 1.05, 1e-4, 8, "BTC"),
    ("ETH", None, 0.85, 0.92, 1.15, 1.08, 2e-4, 8, "ETH"),
    ("SOL", None, 0.75, 0.85, 1.25, 1.15, 5e-4, 6, "SOL"),
    ("XRP", None, 0.65, 0.80, 1.35, 1.20, 1e-3, 4, "XRP"),
)
# Probability of an asset being an account's primary collateral, and of it being an extra one.
_ASSET_PRIMARY = (0.08, 0.44, 0.24, 0.12, 0.08, 0.03, 0.01)
_ASSET_EXTRA = (0.02, 0.22, 0.18, 0.14, 0.10, 0.05, 0.02)

# Account types: perpetual trader, focused options trader, diversified pro, idle.
_TYPE_SHARES = (0.55, 0.30, 0.135, 0.015)
_PERP, _FOCUSED, _PRO, _IDLE = range(4)
_TYPE_LOG10_SIZE = (3.3, 3.6, 4.2, 3.4)       # median USD size of one row, log10
_TYPE_STRUCTURE_PROB = (0.0, 0.25, 0.5, 0.0)  # chance of holding hedged structures

# Target statuses (of accounts with positions).
_STATUS_SHARES = (0.902, 0.05, 0.033, 0.015)
_HEALTHY, _MARGIN_CALL, _LIQUIDATABLE, _BANKRUPT = range(4)
_MAX_ENTRY_SHIFT = 0.25


@dataclasses.dataclass(frozen=True)
class _Market:
    """Instrument-level arrays (one entry per instrument, in table order) and the static tables."""

    instruments: pa.Table
    assets: pa.Table
    margin_tiers: pa.Table
    index_prices: pa.Table
    marks: pa.Table
    names: list[str]
    und: np.ndarray            # underlying id
    kind: np.ndarray           # 0 perpetual, 1 future, 2 option
    is_call: np.ndarray
    mult: np.ndarray
    strike: np.ndarray
    t_years: np.ndarray
    mark: np.ndarray
    spot: np.ndarray           # index price of the underlying
    imr: np.ndarray
    mmr: np.ndarray
    popularity: np.ndarray     # sampling weight
    tier_floor: np.ndarray     # (n, 4): bracket floors, +inf padded
    tier_im_rate: np.ndarray   # (n, 4)
    tier_mm_rate: np.ndarray
    tier_im_cum: np.ndarray    # (n, 4): continuity offsets (cum_b of the notes)
    tier_mm_cum: np.ndarray
    perp_of: np.ndarray        # per underlying: perpetual instrument id
    block: np.ndarray          # per underlying: [first, end) ids of its futures and options
    n_perps: int
    futures_of: list[np.ndarray]   # per underlying: futures ids by expiry
    chains: _Chains


@dataclasses.dataclass(frozen=True)
class _Chains:
    """Option chains flattened for vectorised strike lookup (one chain per underlying × expiry)."""

    key: np.ndarray        # chain_id * 8 + K/S, sorted
    call: np.ndarray       # instrument id of the call at that strike
    put: np.ndarray
    lo: np.ndarray         # per chain: [lo, hi) range in `key`
    hi: np.ndarray
    und: np.ndarray        # per chain: underlying id
    t_years: np.ndarray    # per chain
    by_und: list[np.ndarray]   # per underlying: its chain ids, by expiry
    hedge_future: np.ndarray   # per chain: the future closest in expiry (-1 if none)


# ----------------------------------------------------------------------------------------------
# Calendar and strike helpers
# ----------------------------------------------------------------------------------------------

def _last_friday(year: int, month: int) -> dt.date:
    nxt = dt.date(year + month // 12, month % 12 + 1, 1)
    last = nxt - dt.timedelta(days=1)
    return last - dt.timedelta(days=(last.weekday() - 4) % 7)


def _expiries(weeklies: int, monthlies: int, quarterlies: int) -> list[dt.datetime]:
    """Friday 08:00 UTC expiries after the valuation time: the union of the three schedules."""
    start = VALUATION_TIME.date()
    first_friday = start + dt.timedelta(days=(4 - start.weekday()) % 7 or 7)
    dates = {first_friday + dt.timedelta(weeks=i) for i in range(weeklies)}
    months = [(start.year + (start.month - 1 + i) // 12, (start.month - 1 + i) % 12 + 1)
              for i in range(36)]
    lasts = [_last_friday(y, m) for y, m in months if _last_friday(y, m) > start]
    dates |= set(lasts[:monthlies])
    dates |= set([d for d in lasts if d.month % 3 == 0][:quarterlies])
    return [dt.datetime(d.year, d.month, d.day, 8, tzinfo=dt.timezone.utc) for d in sorted(dates)]


def _expiry_code(expiry: dt.datetime) -> str:
    return f"{expiry.day}{_MONTHS[expiry.month - 1]}{expiry.year % 100:02d}"


def _nice_step(x: float) -> float:
    """Round a step to 1, 2, 2.5 or 5 times a power of ten (nearest in log terms)."""
    exponent = math.floor(math.log10(x))
    mantissa = x / 10**exponent
    best = min((1.0, 2.0, 2.5, 5.0, 10.0), key=lambda m: abs(math.log(mantissa / m)))
    return best * 10**exponent


def _strike_ladder(spot: float) -> np.ndarray:
    strikes: set[float] = set()
    for lo, hi, fraction in _STRIKE_BANDS:
        step = _nice_step(spot * fraction)
        first = math.ceil(lo * spot / step)
        last = math.floor(hi * spot / step)
        strikes.update(round(k * step, 10) for k in range(first, last + 1))
    return np.array(sorted(strikes))


def _strike_text(strike: float) -> str:
    return str(int(strike)) if float(strike).is_integer() else f"{strike:.10g}"


def _norm_cdf(x: np.ndarray) -> np.ndarray:
    """Standard normal CDF, elementwise (numpy has no erf; used on ~2,000 values)."""
    values = [0.5 * math.erfc(-v / math.sqrt(2.0)) for v in np.ravel(x)]
    return np.array(values).reshape(np.shape(x))


def black76(forward, strike, t_years, vol, is_call):
    """Black-76 price with r = 0 (docs/methodology.md §5), vectorised over numpy arrays; T > 0."""
    forward, strike, t_years, vol = (np.asarray(a, dtype=np.float64)
                                     for a in (forward, strike, t_years, vol))
    sd = vol * np.sqrt(t_years)
    d1 = (np.log(forward / strike) + 0.5 * sd * sd) / sd
    d2 = d1 - sd
    call = forward * _norm_cdf(d1) - strike * _norm_cdf(d2)
    put = strike * _norm_cdf(-d2) - forward * _norm_cdf(-d1)
    return np.where(is_call, call, put)


def _smile(atm_vol: np.ndarray, moneyness_log: np.ndarray, t_years: np.ndarray) -> np.ndarray:
    """Implied vol by log-moneyness and expiry: short-dated premium, put skew, convex wings."""
    atm = atm_vol * (0.92 + 0.30 * np.exp(-t_years / 0.05))
    z = moneyness_log / np.sqrt(np.maximum(t_years, 0.02))
    return np.clip(atm * (1.0 - 0.06 * z + 0.05 * z * z), 0.25, 2.0)


# ----------------------------------------------------------------------------------------------
# Market: instruments, marks, tiers, assets
# ----------------------------------------------------------------------------------------------

def _instrument_row(name, kind, und, expiry, strike, option_type) -> dict:
    u = _UNDERLYINGS[und]
    option = kind == "option"
    return {"instrument": name, "kind": kind, "und": und, "expiry": expiry, "strike": strike,
            "option_type": option_type,
            "imr": _OPTION_IMR if option else u.imr, "mmr": _OPTION_MMR if option else u.mmr,
            "mult": u.option_multiplier if option else u.linear_multiplier}


def _instrument_rows(valuation_ns: int) -> list[dict]:
    """One dict per instrument: perpetuals first, then per underlying its futures and options."""
    rows = [_instrument_row(f"{u.name}-PERP", "perpetual", i, None, None, None)
            for i, u in enumerate(_UNDERLYINGS)]
    for i, u in enumerate(_UNDERLYINGS):
        for expiry in _expiries(*u.futures):
            rows.append(_instrument_row(f"{u.name}-{_expiry_code(expiry)}", "future", i, expiry,
                                        None, None))
        if not u.option_multiplier:
            continue
        ladder = _strike_ladder(u.index)
        for expiry in _expiries(*u.options):
            t = (int(expiry.timestamp()) * 10**9 - valuation_ns) / _YEAR_NS
            width = max(3.2 * u.atm_vol * math.sqrt(t), math.log(1.3))
            lo, hi = max(0.4, math.exp(-width)), min(2.5, math.exp(width))
            for strike in ladder[(ladder >= lo * u.index) & (ladder <= hi * u.index)]:
                for option_type in ("call", "put"):
                    name = (f"{u.name}-{_expiry_code(expiry)}-{_strike_text(strike)}-"
                            f"{option_type[0].upper()}")
                    rows.append(_instrument_row(name, "option", i, expiry, float(strike),
                                                option_type))
    return rows


def _popularity(kind, und, t_years, log_moneyness, is_call, vol) -> np.ndarray:
    """Sampling weight per instrument: perpetuals and near, near-the-money options dominate."""
    share = np.array([u.popularity for u in _UNDERLYINGS])[und]
    has_options = np.array([u.option_multiplier > 0 for u in _UNDERLYINGS])[und]
    weight = np.zeros(len(kind))
    perp = kind == 0
    weight[perp] = np.where(has_options[perp], 0.45, 0.85)

    def spread(mask, raw, total):
        for u in np.unique(und[mask]):
            sel = mask & (und == u)
            weight[sel] = raw[sel] / raw[sel].sum() * total[sel]

    fut = kind == 1
    spread(fut, np.exp(-t_years / 0.25), np.where(has_options, 0.10, 0.15))
    opt = kind == 2
    sd = vol * np.sqrt(np.maximum(t_years, 7 / 365))
    otm = np.where(is_call, log_moneyness >= 0, log_moneyness <= 0)
    raw = ((np.exp(-t_years / 0.12) + 0.04)
           * (np.exp(-0.5 * (log_moneyness / (0.7 * sd)) ** 2) + 0.004) * np.where(otm, 1.5, 1.0))
    spread(opt, raw, np.full(len(kind), 0.45))
    return weight * share


def _tiers(names, und, kind, imr, mmr):
    """Risk-limit brackets for the perpetuals and futures of underlyings with a tier scale."""
    n = len(names)
    floor = np.full((n, 4), np.inf)
    floor[:, 0] = 0.0
    im_rate = np.repeat(imr[:, None], 4, axis=1)
    mm_rate = np.repeat(mmr[:, None], 4, axis=1)
    table = {"instrument": [], "notional_floor": [], "initial_margin_rate": [],
             "maintenance_margin_rate": []}
    for i in range(n):
        scale = _UNDERLYINGS[und[i]].tier_scale
        if kind[i] == 2 or scale == 0:
            continue
        for b, (f, factor) in enumerate(zip(_TIER_FLOORS, _TIER_RATE_FACTORS)):
            floor[i, b] = f * scale
            im_rate[i, b] = imr[i] * factor
            mm_rate[i, b] = mmr[i] * factor
            table["instrument"].append(names[i])
            table["notional_floor"].append(f * scale)
            table["initial_margin_rate"].append(im_rate[i, b])
            table["maintenance_margin_rate"].append(mm_rate[i, b])
    finite = np.where(np.isfinite(floor), floor, 0.0)
    # cum_b = cum_{b-1} + f_b (r_b - r_{b-1}): margin = notional * r_b - cum_b is continuous.
    im_cum = np.concatenate([np.zeros((n, 1)), np.cumsum(finite[:, 1:] * np.diff(im_rate), 1)], 1)
    mm_cum = np.concatenate([np.zeros((n, 1)), np.cumsum(finite[:, 1:] * np.diff(mm_rate), 1)], 1)
    schema = pa.schema([("instrument", pa.string()), ("notional_floor", pa.float64()),
                        ("initial_margin_rate", pa.float64()),
                        ("maintenance_margin_rate", pa.float64())])
    return pa.table(table, schema=schema), floor, im_rate, mm_rate, im_cum, mm_cum


def _assets_table() -> pa.Table:
    index = {u.name: u.index for u in _UNDERLYINGS}
    rows = list(zip(*_ASSETS))
    return pa.table({
        "asset": pa.array(rows[0], pa.string()),
        "price": pa.array([p if p is not None else index[a] for a, p in zip(rows[0], rows[1])],
                          pa.float64()),
        "initial_weight": pa.array(rows[2], pa.float64()),
        "maintenance_weight": pa.array(rows[3], pa.float64()),
        "initial_liability_weight": pa.array(rows[4], pa.float64()),
        "maintenance_liability_weight": pa.array(rows[5], pa.float64()),
        "size_premium": pa.array(rows[6], pa.float64()),
        "underlying": pa.array(rows[8], pa.string()),
    })


def _chains(und, kind, is_call, strike, spot, t_years, expiry_ns, futures_of) -> _Chains:
    """Index the option chains for nearest-strike lookups (loops over instruments only)."""
    opt = np.flatnonzero(kind == 2)
    chain_keys = sorted({(int(und[i]), int(expiry_ns[i])) for i in opt})
    chain_id = {k: c for c, k in enumerate(chain_keys)}
    entries: dict[tuple[int, float], list[int]] = {}
    for i in opt:
        c = chain_id[(int(und[i]), int(expiry_ns[i]))]
        entries.setdefault((c, strike[i] / spot[i]), [-1, -1])[0 if is_call[i] else 1] = i
    items = sorted(entries.items())
    key = np.array([c * 8.0 + m for (c, m), _ in items])
    call = np.array([v[0] for _, v in items])
    put = np.array([v[1] for _, v in items])
    chain_of_entry = np.array([c for (c, _), _ in items])
    n_chains = len(chain_keys)
    lo = np.searchsorted(chain_of_entry, np.arange(n_chains), "left")
    hi = np.searchsorted(chain_of_entry, np.arange(n_chains), "right")
    c_und = np.array([u for u, _ in chain_keys])
    c_t = np.array([t_years[call[lo[c]]] for c in range(n_chains)])
    hedge = np.full(n_chains, -1)
    for c in range(n_chains):
        fut = futures_of[c_und[c]]
        if len(fut):
            hedge[c] = fut[np.argmin(np.abs(t_years[fut] - c_t[c]))]
    by_und = [np.flatnonzero(c_und == u) for u in range(len(_UNDERLYINGS))]
    return _Chains(key, call, put, lo, hi, c_und, c_t, by_und, hedge)


def _market(rng: np.random.Generator, valuation_ns: int) -> _Market:
    rows = _instrument_rows(valuation_ns)
    n = len(rows)
    names = [r["instrument"] for r in rows]
    und = np.array([r["und"] for r in rows])
    kind = np.array([{"perpetual": 0, "future": 1, "option": 2}[r["kind"]] for r in rows])
    is_call = np.array([r["option_type"] == "call" for r in rows])
    mult = np.array([r["mult"] for r in rows])
    strike = np.array([r["strike"] if r["strike"] is not None else np.nan for r in rows])
    expiry_ns = np.array([int(r["expiry"].timestamp()) * 10**9 if r["expiry"] else 0 for r in rows],
                         dtype=np.int64)
    t_years = np.where(kind > 0, (expiry_ns - valuation_ns) / _YEAR_NS, 0.0)
    imr = np.array([r["imr"] for r in rows])
    mmr = np.array([r["mmr"] for r in rows])
    spot = np.array([u.index for u in _UNDERLYINGS])[und]
    atm = np.array([u.atm_vol for u in _UNDERLYINGS])[und]

    # Marks: perpetuals a few bp off the index, futures with an annual basis, options by Black-76.
    noise = rng.standard_normal(n)
    basis = np.array([u.basis for u in _UNDERLYINGS])[und]
    mark = np.where(kind == 0, spot * (1 + 3e-4 * noise),
                    spot * np.exp(basis * t_years) * (1 + 5e-4 * noise))
    opt = kind == 2
    log_m = np.zeros(n)
    log_m[opt] = np.log(strike[opt] / spot[opt])
    vol = np.full(n, np.nan)
    vol[opt] = _smile(atm[opt], log_m[opt], t_years[opt])
    mark[opt] = black76(spot[opt], strike[opt], t_years[opt], vol[opt], is_call[opt])

    tiers, t_floor, t_im, t_mm, t_im_cum, t_mm_cum = _tiers(names, und, kind, imr, mmr)
    expiry_arr = pa.array([r["expiry"] for r in rows], pa.timestamp("ns", tz="UTC"))
    instruments = pa.table({
        "instrument": pa.array(names, pa.string()),
        "kind": pa.array([r["kind"] for r in rows], pa.string()),
        "underlying": pa.array([_UNDERLYINGS[u].name for u in und], pa.string()),
        "multiplier": pa.array(mult, pa.float64()),
        "expiry": expiry_arr,
        "strike": pa.array([r["strike"] for r in rows], pa.float64()),
        "option_type": pa.array([r["option_type"] for r in rows], pa.string()),
        "initial_margin_rate": pa.array(imr, pa.float64()),
        "maintenance_margin_rate": pa.array(mmr, pa.float64()),
        "initial_margin_floor": pa.array([_OPTION_FLOOR if k == 2 else None for k in kind],
                                         pa.float64()),
    })
    marks = pa.table({
        "instrument": pa.array(names, pa.string()),
        "mark_price": pa.array(mark, pa.float64()),
        "implied_vol": pa.array(vol, pa.float64(), from_pandas=True),
    })
    index_prices = pa.table({
        "underlying": pa.array([u.name for u in _UNDERLYINGS], pa.string()),
        "index_price": pa.array([u.index for u in _UNDERLYINGS], pa.float64()),
    })
    futures_of = [np.flatnonzero((kind == 1) & (und == u)) for u in range(len(_UNDERLYINGS))]
    # per underlying, its futures and options are contiguous (after all perpetuals)
    dated = [np.flatnonzero((kind > 0) & (und == u)) for u in range(len(_UNDERLYINGS))]
    block = np.array([[d[0], d[-1] + 1] for d in dated])
    return _Market(
        instruments=instruments, assets=_assets_table(), margin_tiers=tiers,
        index_prices=index_prices, marks=marks, names=names, und=und, kind=kind,
        is_call=is_call, mult=mult, strike=strike, t_years=t_years, mark=mark, spot=spot,
        imr=imr, mmr=mmr, popularity=_popularity(kind, und, t_years, log_m, is_call, vol),
        tier_floor=t_floor, tier_im_rate=t_im, tier_mm_rate=t_mm, tier_im_cum=t_im_cum,
        tier_mm_cum=t_mm_cum, perp_of=np.flatnonzero(kind == 0), block=block,
        n_perps=int((kind == 0).sum()), futures_of=futures_of,
        chains=_chains(und, kind, is_call, strike, spot, t_years, expiry_ns, futures_of))


# ----------------------------------------------------------------------------------------------
# Accounts and positions
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class _Accounts:
    ids: np.ndarray          # uint64, sorted
    kind: np.ndarray         # account type
    focus: np.ndarray        # underlying id of focused traders (others: -1)
    log10_size: np.ndarray   # log10 of the median USD size of one position row
    n_rows: np.ndarray       # random position draws


def _accounts(rng: np.random.Generator, n: int) -> _Accounts:
    gaps = rng.geometric(1 / 5000, size=n).astype(np.uint64)
    # Random large ids with gaps (mean 5,000): they cross 2**32 after ~1,000 accounts.
    ids = np.uint64(2**32 - 5_000_000) + np.cumsum(gaps, dtype=np.uint64)
    kind = rng.choice(4, size=n, p=_TYPE_SHARES)
    focus_share = np.array([u.popularity if u.option_multiplier else 0 for u in _UNDERLYINGS])
    focus = np.where(kind == _FOCUSED,
                     rng.choice(len(_UNDERLYINGS), size=n, p=focus_share / focus_share.sum()), -1)
    whale = rng.random(n) < 0.01
    log10_size = (np.array(_TYPE_LOG10_SIZE)[kind] + 0.5 * rng.standard_normal(n) + 1.0 * whale)
    median_rows = np.array([1.0, 5.5, 17.0, 0.0])[kind]
    sigma_rows = np.array([0.0, 1.1, 1.25, 0.0])[kind]
    lognormal_rows = np.rint(median_rows * np.exp(sigma_rows * rng.standard_normal(n)))
    n_rows = np.where(kind == _PERP, rng.geometric(0.38, size=n), lognormal_rows)
    n_rows = np.clip(n_rows, 1, 500).astype(np.int64)
    n_rows[kind == _IDLE] = 0
    return _Accounts(ids, kind, focus, log10_size, n_rows)


def _sorted_uniforms(rng, counts: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """For each account i, `counts[i]` sorted uniforms on (lo[i], hi[i]), concatenated.

    Normalised exponential spacings: with E_1..E_{n+1} iid exponential, the partial sums
    (E_1 + ... + E_j) / (E_1 + ... + E_{n+1}), j = 1..n, are the order statistics of n
    uniforms. The (n+1)-th exponential of each account is drawn separately."""
    c = np.cumsum(rng.standard_exponential(int(counts.sum())))
    ends = np.cumsum(counts)
    upto = np.where(ends > 0, c[np.maximum(ends - 1, 0)] if len(c) else 0.0, 0.0)
    before = np.concatenate([[0.0], upto[:-1]])         # partial sum before each account
    total = upto - before + rng.standard_exponential(len(counts))
    slope = (hi - lo) / total
    c *= np.repeat(slope, counts)
    c += np.repeat(lo - before * slope, counts)
    return c


def _inverse_cdf(cdf: np.ndarray, u: np.ndarray, bins: int = 1 << 16) -> np.ndarray:
    """First i with cdf[i] > u, for u in [0, 1) (a guide table: faster than searchsorted)."""
    cdf = cdf.copy()
    cdf[-1] = 2.0                        # u < 1 always maps inside the table
    guide = np.searchsorted(cdf, np.arange(bins) / bins, side="right")
    idx = guide[(u * bins).astype(np.intp)]
    todo = np.flatnonzero(cdf[idx] <= u)
    while todo.size:
        idx[todo] += 1
        todo = todo[cdf[idx[todo]] <= u[todo]]
    return idx


def _row_sizes(rng, m: _Market, log10_size: np.ndarray, instr: np.ndarray) -> np.ndarray:
    """Whole contracts for a USD size of ~10**log10_size (row noise added), $100 to $10M."""
    log10_usd = log10_size.astype(np.float32)
    log10_usd += np.float32(0.45) * rng.standard_normal(len(instr), dtype=np.float32)
    np.clip(log10_usd, 2.0, 7.0, out=log10_usd)
    usd = np.exp(log10_usd * np.float32(math.log(10)))
    unit = (m.mult * m.spot).astype(np.float32)
    return np.maximum(np.float32(1), np.rint(usd / unit[instr])).astype(np.float64)


def _random_rows(rng, m: _Market, acc: _Accounts):
    """Random position rows, sorted by (account, instrument), with fills. Returns acct, instr, q."""
    n_acc = len(acc.ids)
    cdf = np.cumsum(m.popularity) / m.popularity.sum()
    cdf_before = np.concatenate([[0.0], cdf[:-1]])
    # Each account draws from a contiguous instrument range: perpetuals (perpetual traders),
    # the futures and options of one underlying (focused traders), or everything.
    lo = np.zeros(n_acc, dtype=np.int64)
    hi = np.full(n_acc, len(cdf), dtype=np.int64)
    hi[acc.kind == _PERP] = m.n_perps
    focused = acc.kind == _FOCUSED
    lo[focused] = m.block[acc.focus[focused], 0]
    hi[focused] = m.block[acc.focus[focused], 1]

    acct = np.repeat(np.arange(n_acc), acc.n_rows)
    u = _sorted_uniforms(rng, acc.n_rows, cdf_before[lo], cdf[hi - 1])
    instr = _inverse_cdf(cdf, u)
    del u
    q = _row_sizes(rng, m, np.repeat(acc.log10_size, acc.n_rows), instr)
    new = _run_starts(acct, instr)
    q *= _fill_signs(rng, m, instr, new)
    _close_some_runs(rng, q, new)
    return acct, instr, q


def _run_starts(acct: np.ndarray, instr: np.ndarray) -> np.ndarray:
    """True where a new (account, instrument) run starts (rows sorted by both)."""
    new = np.empty(len(acct), dtype=bool)
    new[:1] = True
    np.not_equal(instr[1:], instr[:-1], out=new[1:])
    new[1:] |= acct[1:] != acct[:-1]
    return new


def _fill_signs(rng, m: _Market, instr, new) -> np.ndarray:
    """Sign per row: one direction per (account, instrument) run; later fills reverse 15%."""
    starts = np.flatnonzero(new)
    p_long = np.where(m.kind == 2, 0.5, 0.56)[instr[starts]]
    run_sign = np.where(rng.random(len(starts)) < p_long, 1.0, -1.0)
    sign = np.repeat(run_sign, np.diff(starts, append=len(instr)))
    flip = rng.random(len(instr), dtype=np.float32) < 0.15
    flip &= ~new
    return np.where(flip, -sign, sign)


def _close_some_runs(rng, q, new) -> None:
    """In 10% of multi-fill runs the last fill closes the position exactly (net zero)."""
    starts = np.flatnonzero(new)
    ends = np.append(starts[1:], len(q)) - 1
    close = (ends > starts) & (rng.random(len(starts), dtype=np.float32) < 0.10)
    before_last = np.add.reduceat(q, starts) - q[ends]
    close &= before_last != 0
    q[ends[close]] = -before_last[close]


def _nearest_option(ch: _Chains, chain, moneyness, call: bool) -> np.ndarray:
    pos = np.searchsorted(ch.key, chain * 8.0 + moneyness)
    left = np.clip(pos - 1, ch.lo[chain], ch.hi[chain] - 1)
    right = np.clip(pos, ch.lo[chain], ch.hi[chain] - 1)
    target = chain * 8.0 + moneyness
    pick = np.where(np.abs(ch.key[left] - target) <= np.abs(ch.key[right] - target), left, right)
    return (ch.call if call else ch.put)[pick]


def _structure_rows(rng, m: _Market, acc: _Accounts):
    """Hedged structures of options and pro accounts. Returns acct, instr, q (unsorted legs)."""
    ch = m.chains
    n_acc = len(acc.ids)
    has = rng.random(n_acc) < np.array(_TYPE_STRUCTURE_PROB)[acc.kind]
    count = np.where(has, rng.geometric(0.6, size=n_acc), 0)
    owner = np.repeat(np.arange(n_acc), count)
    s = len(owner)
    option_und = np.array([u for u, x in enumerate(_UNDERLYINGS) if x.option_multiplier])
    share = np.array([_UNDERLYINGS[u].popularity for u in option_und])
    und = np.where(acc.focus[owner] >= 0, acc.focus[owner],
                   option_und[rng.choice(len(option_und), size=s, p=share / share.sum())])
    # expiry: near ones more likely; chains of an underlying are sorted by expiry
    n_chain = np.array([len(ch.by_und[u]) for u in range(len(_UNDERLYINGS))])[und]
    first_chain = np.array([c[0] if len(c) else 0 for c in ch.by_und])[und]
    e = np.minimum(rng.geometric(0.3, size=s) - 1, n_chain - 1)
    chain = first_chain + e
    unit = m.mult * m.spot
    opt_q = np.maximum(1.0, np.rint(10.0 ** np.clip(acc.log10_size[owner] + 0.2 + 0.4 *
                                                    rng.standard_normal(s), 2, 7)
                                    / unit[ch.call[ch.lo[chain]]]))
    use_perp = (rng.random(s) < 0.5) | (ch.hedge_future[chain] < 0)
    hedge = np.where(use_perp, m.perp_of[und], ch.hedge_future[chain])
    hedge_q = opt_q * np.rint(m.mult[ch.call[ch.lo[chain]]] / m.mult[hedge])
    shape = rng.choice(6, size=s, p=(0.25, 0.15, 0.10, 0.20, 0.15, 0.15))
    legs = []

    def mny(lo_, hi_):
        return lo_ + (hi_ - lo_) * rng.random(s)

    def leg(sel, instr, q):
        legs.append((owner[sel], instr[sel], q[sel]))

    sign = np.where(rng.random(s) < 0.5, 1.0, -1.0)
    call_hi, put_lo, atm = mny(1.05, 1.3), mny(0.75, 0.95), mny(0.97, 1.03)
    # 0 covered call: long hedge, short OTM call
    sel = shape == 0
    leg(sel, hedge, hedge_q)
    leg(sel, _nearest_option(ch, chain, call_hi, True), -opt_q)
    # 1 protective put: long hedge, long OTM put
    sel = shape == 1
    leg(sel, hedge, hedge_q)
    leg(sel, _nearest_option(ch, chain, put_lo, False), opt_q)
    # 2 collar: long hedge, long OTM put, short OTM call
    sel = shape == 2
    leg(sel, hedge, hedge_q)
    leg(sel, _nearest_option(ch, chain, put_lo, False), opt_q)
    leg(sel, _nearest_option(ch, chain, call_hi, True), -opt_q)
    # 3 straddle (long or short): call and put at the same strike
    sel = shape == 3
    leg(sel, _nearest_option(ch, chain, atm, True), sign * opt_q)
    leg(sel, _nearest_option(ch, chain, atm, False), sign * opt_q)
    # 4 vertical: long call near the money, short a further OTM call (or the put mirror)
    sel = shape == 4
    calls = rng.random(s) < 0.6
    leg(sel & calls, _nearest_option(ch, chain, atm, True), opt_q)
    leg(sel & calls, _nearest_option(ch, chain, call_hi, True), -opt_q)
    leg(sel & ~calls, _nearest_option(ch, chain, atm, False), opt_q)
    leg(sel & ~calls, _nearest_option(ch, chain, put_lo, False), -opt_q)
    # 5 futures calendar: short the nearer future, long a later one (same size)
    sel = shape == 5
    n_fut = np.array([len(f) for f in m.futures_of])[und]
    sel &= n_fut >= 2
    near = rng.integers(0, np.maximum(n_fut - 1, 1))
    far = near + 1 + rng.integers(0, np.maximum(n_fut - near - 1, 1))
    fut_table = np.full((len(_UNDERLYINGS), max(len(f) for f in m.futures_of)), -1)
    for u, f in enumerate(m.futures_of):
        fut_table[u, :len(f)] = f
    far = np.minimum(far, n_fut - 1)
    leg(sel, fut_table[und, near], -hedge_q * sign)
    leg(sel, fut_table[und, far], hedge_q * sign)

    acct = np.concatenate([x[0] for x in legs])
    instr = np.concatenate([x[1] for x in legs]).astype(np.int64)
    q = np.concatenate([x[2] for x in legs])
    return acct, instr, q


def _merge_sorted(key_a, key_b):
    """Positions of a and b in the stable merge of two sorted key arrays."""
    pos_b = np.searchsorted(key_a, key_b, side="right") + np.arange(len(key_b))
    is_b = np.zeros(len(key_a) + len(key_b), dtype=bool)
    is_b[pos_b] = True
    return np.flatnonzero(~is_b), pos_b


@dataclasses.dataclass
class _Positions:
    acct: np.ndarray      # account index (rows sorted by account, then instrument)
    instr: np.ndarray
    quantity: np.ndarray
    entry: np.ndarray


def _positions(rng, m: _Market, acc: _Accounts) -> _Positions:
    acct_a, instr_a, q_a = _random_rows(rng, m, acc)
    acct_b, instr_b, q_b = _structure_rows(rng, m, acc)
    n_instr = len(m.names)
    key_b = acct_b.astype(np.int64) * n_instr + instr_b
    order_b = np.argsort(key_b, kind="stable")
    key_a = acct_a.astype(np.int64) * n_instr + instr_a
    pos_a, pos_b = _merge_sorted(key_a, key_b[order_b])
    del key_a
    total = len(pos_a) + len(pos_b)
    acct = np.empty(total, dtype=np.intp)
    instr = np.empty(total, dtype=np.intp)
    q = np.empty(total)
    for out, xa, xb in ((acct, acct_a, acct_b), (instr, instr_a, instr_b), (q, q_a, q_b)):
        out[pos_a] = xa
        out[pos_b] = xb[order_b]
    # Entry prices: heavy-tailed scatter around the mark (2% for linear, 25% for options).
    shock = rng.standard_normal(total, dtype=np.float32)
    shock *= np.sqrt(rng.standard_exponential(total, dtype=np.float32))
    shock *= np.where(m.kind == 2, 0.25, 0.02).astype(np.float32)[instr]
    np.clip(shock, -0.6, 0.6, out=shock)
    entry = m.mark[instr] * np.exp(shock)
    return _Positions(acct, instr, q, entry)


# ----------------------------------------------------------------------------------------------
# Standard-model estimate (§3, tiered) on netted positions
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass
class _Risk:
    starts: np.ndarray            # first row of each netted (account, instrument) group
    group_instr: np.ndarray
    group_acct: np.ndarray
    net: np.ndarray
    linear_notional: np.ndarray   # per account, over non-zero linear nets
    pnl: np.ndarray               # per account: upnl + option value
    im: np.ndarray
    mm: np.ndarray


def _tiered(m: _Market, instr, notional, rate, cum):
    """notional × r_b − cum_b for the bracket b with the largest floor <= notional."""
    floors = m.tier_floor[:, 1:]
    bracket = ((notional >= floors[instr, 0]).astype(np.intp) + (notional >= floors[instr, 1])
               + (notional >= floors[instr, 2]))
    flat = instr * rate.shape[1] + bracket
    return notional * rate.ravel()[flat] - cum.ravel()[flat]


def _standard_estimate(m: _Market, pos: _Positions, n_acc: int) -> _Risk:
    """Exact §2/§3 figures per account (standard model with tiers), numpy only."""
    starts = np.flatnonzero(_run_starts(pos.acct, pos.instr))
    gi, ga = pos.instr[starts], pos.acct[starts]
    net = np.add.reduceat(pos.quantity, starts)
    contract_value = m.mult * m.mark
    # value: upnl of perpetuals / futures (sum over fills), mark value of options
    row_upnl = pos.quantity * np.where(m.kind < 2, m.mult, 0.0)[pos.instr]
    row_upnl *= m.mark[pos.instr] - pos.entry
    value = np.add.reduceat(row_upnl, starts)
    del row_upnl
    value[net == 0] = 0.0
    opt = np.flatnonzero(m.kind[gi] == 2)
    value[opt] = net[opt] * contract_value[gi[opt]]

    lin = np.flatnonzero((m.kind[gi] < 2) & (net != 0))
    li = gi[lin]
    notional = np.abs(net[lin]) * contract_value[li]
    lin_im = notional * m.imr[li]
    lin_mm = notional * m.mmr[li]
    tiered = np.flatnonzero(np.isfinite(m.tier_floor[li, 1]))
    lin_im[tiered] = _tiered(m, li[tiered], notional[tiered], m.tier_im_rate, m.tier_im_cum)
    lin_mm[tiered] = _tiered(m, li[tiered], notional[tiered], m.tier_mm_rate, m.tier_mm_cum)

    # short options: per-contract margin of §3, computed once per instrument
    otm = np.where(m.is_call, np.maximum(m.strike - m.spot, 0), np.maximum(m.spot - m.strike, 0))
    short_im = m.mult * (m.mark + np.maximum(m.imr * m.spot - otm, _OPTION_FLOOR * m.spot))
    short_mm = m.mult * (m.mark + m.mmr * m.spot)
    short = opt[net[opt] < 0]
    si = gi[short]
    opt_im = -net[short] * short_im[si]
    opt_mm = -net[short] * short_mm[si]

    la, sa = ga[lin], ga[short]
    return _Risk(
        starts=starts, group_instr=gi, group_acct=ga, net=net,
        linear_notional=np.bincount(la, notional, minlength=n_acc),
        pnl=np.bincount(ga, value, minlength=n_acc),
        im=np.bincount(la, lin_im, minlength=n_acc) + np.bincount(sa, opt_im, minlength=n_acc),
        mm=np.bincount(la, lin_mm, minlength=n_acc) + np.bincount(sa, opt_mm, minlength=n_acc))


# ----------------------------------------------------------------------------------------------
# Collateral
# ----------------------------------------------------------------------------------------------

def _asset_params():
    cols = list(zip(*_ASSETS))
    index = {u.name: u.index for u in _UNDERLYINGS}
    price = np.array([p if p is not None else index[a] for a, p in zip(cols[0], cols[1])])
    return (price, np.array(cols[2]), np.array(cols[3]), np.array(cols[4]), np.array(cols[5]),
            np.array(cols[6]), np.array(cols[7]))


def _amount_for_value(target, price, weight, premium):
    """Amount x with x · price · min(weight, 1.1 / (1 + premium·√x)) = target (exact)."""
    x = target / (price * weight)
    capped = (premium > 0) & (1.1 / (1 + premium * np.sqrt(x)) < weight)
    t, p, sp = target[capped], price[capped], premium[capped]
    y = (t * sp + np.sqrt(t * t * sp * sp + 4.4 * p * t)) / (2.2 * p)
    x[capped] = y * y
    return x


def _balances(rng, acc_n: int, value: np.ndarray, initial_basis: np.ndarray):
    """Collateral worth `value` (weighted: initial weights where `initial_basis`, else
    maintenance) spread over 1-3 assets, with borrows for a few percent of accounts.

    Returns (acct, asset, amount) sorted by account then asset id, no duplicates."""
    price, iw, mw, ilw, mlw, premium, decimals = _asset_params()
    n_assets = len(price)
    funded = value > 0
    primary = rng.choice(n_assets, size=acc_n, p=_ASSET_PRIMARY)
    held = rng.random((acc_n, n_assets)) < np.array(_ASSET_EXTRA)
    held[np.arange(acc_n), primary] = True
    held &= funded[:, None]
    share = rng.standard_exponential((acc_n, n_assets)) * held
    share[np.arange(acc_n), primary] *= 3.0
    share /= np.maximum(share.sum(axis=1, keepdims=True), 1e-300)

    # Borrow one of USDC, USDT, BTC, ETH (if not held): 10% to 60% of the weighted value.
    borrow_asset = rng.choice([1, 2, 3, 4], size=acc_n)
    borrows = funded & (rng.random(acc_n) < 0.045) & ~held[np.arange(acc_n), borrow_asset]
    borrow_usd = np.where(borrows, value * rng.uniform(0.1, 0.6, acc_n), 0.0)
    liability_w = np.where(initial_basis, ilw[borrow_asset], mlw[borrow_asset])
    positive_value = value + borrow_usd * liability_w

    acct, asset = np.nonzero(held)
    weight = np.where(initial_basis[acct], iw[asset], mw[asset])
    amount = _amount_for_value(positive_value[acct] * share[acct, asset], price[asset], weight,
                               premium[asset])
    b_acct = np.flatnonzero(borrows)
    b_asset = borrow_asset[b_acct]
    b_amount = -borrow_usd[b_acct] / price[b_asset]
    # merge the borrow rows (sorted by account) after-the-fact into the (account, asset) order
    key = acct * n_assets + asset
    pos_a, pos_b = _merge_sorted(key, b_acct * n_assets + b_asset)
    out_acct = np.empty(len(key) + len(b_acct), dtype=np.int64)
    out_asset = np.empty_like(out_acct)
    out_amount = np.empty(len(out_acct))
    out_acct[pos_a], out_acct[pos_b] = acct, b_acct
    out_asset[pos_a], out_asset[pos_b] = asset, b_asset
    out_amount[pos_a], out_amount[pos_b] = amount, b_amount
    scale = 10.0 ** decimals[out_asset]
    out_amount = np.rint(out_amount * scale) / scale
    keep = out_amount != 0
    return out_acct[keep], out_asset[keep], out_amount[keep]


def _cash(acc_n, acct, asset, amount) -> np.ndarray:
    price = _asset_params()[0]
    return np.bincount(acct, amount * price[asset], minlength=acc_n)


def _targets(rng, acc: _Accounts, risk: _Risk):
    """Draw a target status per account and plan how to reach it.

    Returns (status, value, initial_basis, shift): the weighted collateral to deposit (under
    initial weights where `initial_basis`, else maintenance weights) and the P&L change to
    book by moving entry prices (bankrupt accounts get theirs once their cash is known)."""
    n = len(acc.ids)
    im, mm, pnl = risk.im, risk.mm, risk.pnl
    has_linear = risk.linear_notional > 0
    status = rng.choice(4, size=n, p=_STATUS_SHARES)
    status[mm <= 0] = _HEALTHY
    status[(status == _BANKRUPT) & ~has_linear] = _LIQUIDATABLE

    g = np.exp(rng.uniform(math.log(1.05), math.log(10.0), n))
    ratio = np.divide(im, mm, out=np.ones(n), where=mm > 0)
    h_call = 1.02 + (0.97 * ratio - 1.02) * rng.random(n)
    h_liq = rng.uniform(0.15, 0.97, n)
    h = np.where(status == _MARGIN_CALL, h_call, h_liq)
    status[(status == _MARGIN_CALL) & (h_call <= 1.02)] = _LIQUIDATABLE

    # Idle accounts hold cash unrelated to margin; others keep at least a small cushion.
    cushion = (im + 0.2 * np.abs(pnl)) * 10.0 ** rng.uniform(-1.0, 0.0, n) + 1.0
    idle = acc.kind == _IDLE
    value = np.where(idle, 10.0 ** rng.normal(3.4, 0.9, n), g * im - pnl)
    initial_basis = status == _HEALTHY
    distressed = (status == _MARGIN_CALL) | (status == _LIQUIDATABLE)
    value = np.where(distressed, h * mm - pnl, value)

    # Unreachable distress (P&L already covers the target): shift entries to book a loss.
    deposit = rng.uniform(0.2, 1.0, n) * mm
    forced = distressed & (value < 0.05 * mm)
    shift = np.where(forced, h * mm - deposit - pnl, 0.0)
    value = np.where(forced, deposit, value)
    bankrupt = status == _BANKRUPT
    value = np.where(bankrupt, rng.uniform(0.2, 2.0, n) * mm, value)
    # (the bankrupt shift is set exactly once the cash is known; estimate it here)
    planned = np.where(bankrupt, -1.3 * value - pnl, shift)
    too_far = (forced | bankrupt) & (np.abs(planned) > _MAX_ENTRY_SHIFT * risk.linear_notional)
    fallback = too_far | (forced & ~has_linear)
    status[fallback] = _HEALTHY
    initial_basis |= fallback
    value = np.where(fallback, g * im - pnl, value)
    shift[fallback] = 0.0
    # Healthy accounts keep at least a small cash cushion; when their P&L alone covers
    # g × IM, 15% of them hold no balance at all.
    low = (status == _HEALTHY) & ~idle & (value < cushion)
    none = low & (value <= 0) & (rng.random(n) < 0.15)
    value = np.where(low, np.where(none, 0.0, cushion), value)
    return status, value, initial_basis, shift


def _shift_entries(m: _Market, pos: _Positions, risk: _Risk, shift: np.ndarray) -> None:
    """Move entry prices of an account's live linear positions so its P&L changes by `shift`.

    Each netted position takes a share of the change proportional to its notional; all its
    fills move by the same price offset."""
    per_notional = np.divide(shift, risk.linear_notional, out=np.zeros_like(shift),
                             where=risk.linear_notional > 0)
    groups = np.flatnonzero((per_notional[risk.group_acct] != 0) & (risk.net != 0)
                            & (m.kind[risk.group_instr] < 2))
    gi = risk.group_instr[groups]
    offset = -per_notional[risk.group_acct[groups]] * np.sign(risk.net[groups]) * m.mark[gi]
    ends = np.append(risk.starts[1:], len(pos.entry))
    lengths = ends[groups] - risk.starts[groups]
    rows = np.repeat(risk.starts[groups] - np.cumsum(lengths) + lengths, lengths) + np.arange(
        lengths.sum())
    pos.entry[rows] += np.repeat(offset, lengths)


# ----------------------------------------------------------------------------------------------
# The book
# ----------------------------------------------------------------------------------------------

@dataclasses.dataclass(eq=False)
class SyntheticBook:
    """Generated input tables of docs/methodology.md §1 plus the valuation time."""

    instruments: pa.Table
    assets: pa.Table
    margin_tiers: pa.Table
    positions: pa.Table
    balances: pa.Table
    index_prices: pa.Table
    marks: pa.Table
    valuation_time: dt.datetime
    valuation_time_ns: int

    @property
    def tables(self) -> dict[str, pa.Table]:
        return {name: getattr(self, name) for name in TABLE_NAMES}

    @property
    def nbytes(self) -> int:
        """Total in-memory size of the input tables (bytes)."""
        return sum(t.nbytes for t in self.tables.values())

    def __eq__(self, other) -> bool:
        if not isinstance(other, SyntheticBook):
            return NotImplemented
        return (self.valuation_time_ns == other.valuation_time_ns
                and all(a.equals(b) for a, b in zip(self.tables.values(),
                                                     other.tables.values())))

    def write_parquet(self, directory) -> pathlib.Path:
        """One ``<table>.parquet`` per table plus ``meta.json`` (the valuation time)."""
        path = pathlib.Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        for name, table in self.tables.items():
            pq.write_table(table, path / f"{name}.parquet")
        meta = {"valuation_time": self.valuation_time.isoformat(),
                "valuation_time_ns": self.valuation_time_ns}
        (path / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        return path

    @classmethod
    def read_parquet(cls, directory) -> SyntheticBook:
        path = pathlib.Path(directory)
        meta = json.loads((path / "meta.json").read_text())
        tables = {name: pq.read_table(path / f"{name}.parquet").combine_chunks()
                  for name in TABLE_NAMES}
        tables["positions"] = _unify_dictionary(tables["positions"], "instrument",
                                                tables["instruments"].column("instrument"))
        tables["balances"] = _unify_dictionary(tables["balances"], "asset",
                                               tables["assets"].column("asset"))
        ns = int(meta["valuation_time_ns"])
        when = dt.datetime.fromtimestamp(ns // 10**9, dt.timezone.utc).replace(
            microsecond=(ns % 10**9) // 1000)
        return cls(**tables, valuation_time=when, valuation_time_ns=ns)


def _unify_dictionary(table: pa.Table, column: str, names: pa.ChunkedArray) -> pa.Table:
    """Re-encode a string column against the key table (dictionary = all keys, int32 indices)."""
    col = table.column(column)
    dictionary = names.combine_chunks()
    if (pa.types.is_dictionary(col.type) and col.num_chunks == 1
            and col.chunk(0).dictionary.equals(dictionary)):
        return table
    values = col.cast(pa.string()) if pa.types.is_dictionary(col.type) else col
    indices = pc.index_in(values, value_set=dictionary).cast(pa.int32())
    encoded = pa.DictionaryArray.from_arrays(indices.combine_chunks(), dictionary)
    return table.set_column(table.schema.get_field_index(column), column, encoded)


def _dictionary_column(codes: np.ndarray, names) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)),
                                          pa.array(names, pa.string()))


def generate(accounts: int = 1_000_000, seed: int = 7, *, shuffle: bool = False,
             progress: Callable[[str], None] | None = None) -> SyntheticBook:
    """Generate a synthetic exchange book of `accounts` accounts (see the module docstring).

    The same (accounts, seed, shuffle) always gives identical tables. Position and balance
    rows are sorted by account_id (positions then by instrument id) unless `shuffle`, which
    permutes both tables' rows deterministically."""
    if accounts < 1:
        raise ValueError("accounts must be >= 1")
    say = progress or (lambda _msg: None)
    seed_seq = np.random.SeedSequence(seed)
    market_rng, book_rng, shuffle_rng = (np.random.default_rng(s) for s in seed_seq.spawn(3))
    valuation_ns = int(VALUATION_TIME.timestamp()) * 10**9

    say("instruments")
    m = _market(market_rng, valuation_ns)
    say("accounts")
    acc = _accounts(book_rng, accounts)
    say("positions")
    pos = _positions(book_rng, m, acc)
    say("margin estimate")
    risk = _standard_estimate(m, pos, accounts)
    say("balances")
    _status, value, initial_basis, shift = _targets(book_rng, acc, risk)
    b_acct, b_asset, b_amount = _balances(book_rng, accounts, value, initial_basis)
    bankrupt = _status == _BANKRUPT
    if bankrupt.any():
        # Bankrupt: a loss larger than the cash, 2% to 50% beyond it.
        cash = _cash(accounts, b_acct, b_asset, b_amount)
        loss = cash * book_rng.uniform(1.02, 1.5, accounts) + 1.0
        shift = np.where(bankrupt, -loss - risk.pnl, shift)
    _shift_entries(m, pos, risk, shift)

    say("tables")
    positions = pa.table({
        "account_id": pa.array(acc.ids[pos.acct], pa.uint64()),
        "instrument": _dictionary_column(pos.instr, m.names),
        "quantity": pa.array(pos.quantity, pa.float64()),
        "entry_price": pa.array(pos.entry, pa.float64()),
    })
    balances = pa.table({
        "account_id": pa.array(acc.ids[b_acct], pa.uint64()),
        "asset": _dictionary_column(b_asset, [a[0] for a in _ASSETS]),
        "amount": pa.array(b_amount, pa.float64()),
    })
    if shuffle:
        say("shuffle")
        positions = positions.take(shuffle_rng.permutation(positions.num_rows))
        balances = balances.take(shuffle_rng.permutation(balances.num_rows))
    return SyntheticBook(
        instruments=m.instruments, assets=m.assets, margin_tiers=m.margin_tiers,
        positions=positions, balances=balances, index_prices=m.index_prices, marks=m.marks,
        valuation_time=VALUATION_TIME, valuation_time_ns=valuation_ns)


if __name__ == "__main__":  # pragma: no cover - manual timing
    import sys

    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
    t0 = time.perf_counter()
    book = generate(n, progress=lambda s: print(f"  {time.perf_counter() - t0:6.2f}s {s}"))
    print(f"generated {n:,} accounts in {time.perf_counter() - t0:.2f}s")
    for name, table in book.tables.items():
        print(f"  {name:13s} {table.num_rows:>12,} rows {table.nbytes / 1e6:10.1f} MB")
    print(f"  total {book.nbytes / 1e6:.1f} MB")


# ---------------------------------------------------------------------------------------------
# Exchange account mechanics (docs/methodology.md §10) on top of a generated book
# ---------------------------------------------------------------------------------------------

#: Inverse perpetuals added by :func:`with_mechanics`: (name, underlying, contract value in USD).
INVERSE_PERPETUALS = (("BTC-USD-INVERSE", "BTC", 10.0), ("ETH-USD-INVERSE", "ETH", 10.0))


@dataclasses.dataclass(frozen=True)
class MechanicsBook:
    """A generated book with the exchange mechanics of docs/methodology.md §10 mixed in (see
    :func:`with_mechanics`): the tables of :class:`SyntheticBook` (instruments with
    ``settlement`` / ``settlement_asset``, positions with ``margin_mode`` and
    ``unsettled_funding``) plus ``orders`` and ``isolated_collateral``."""

    instruments: pa.Table
    assets: pa.Table
    margin_tiers: pa.Table
    positions: pa.Table
    balances: pa.Table
    index_prices: pa.Table
    marks: pa.Table
    orders: pa.Table
    isolated_collateral: pa.Table
    valuation_time: dt.datetime
    valuation_time_ns: int
    #: How many accounts / rows each mechanic touched (for the demo's summary).
    counts: dict


def with_mechanics(book: "SyntheticBook | Any", seed: int = 11, *, inverse_share: float = 0.2,
                   isolated_share: float = 0.05, order_share: float = 0.1,
                   funding_share: float = 0.3) -> MechanicsBook:
    """The generated ``book`` with cross, isolated and inverse accounts, open orders and funding.

    ``book``: a :class:`SyntheticBook` (or any object with its tables and ``valuation_time``).
    Deterministic by ``seed``; ``book``'s own tables are not changed (``generate`` stays the book
    every benchmark and test pins):

    - **inverse**: two coin-margined perpetuals, ``BTC-USD-INVERSE`` and ``ETH-USD-INVERSE``
      (contract value 10 USD, settled in BTC / ETH, the linear perpetual's rates), marked at the
      linear perpetual's mark; ``inverse_share`` of the accounts holding ``BTC-PERP`` /
      ``ETH-PERP`` hold the same USD exposure in the inverse contract instead (whole contracts,
      same entry price).
    - **isolated**: ``isolated_share`` of the accounts with a linear perpetual position take
      one of them isolated (``margin_mode = "isolated"`` on its rows), with its own collateral of
      ``k × IM`` USD, k log-uniform in 0.7–4 (so some are liquidatable on their own).
    - **orders**: ``order_share`` of the accounts with positions rest one to three limit orders
      on instruments they hold: bids 0.1–5% below and asks above the mark, a twentieth of them
      marketable (through the mark), sized 10–100% of the position.
    - **funding**: ``funding_share`` of the perpetual rows carry ``unsettled_funding``, ±0.05% of
      their notional at most (USD).
    """
    rng = np.random.default_rng(seed)
    ins = book.instruments
    names = ins.column("instrument").to_pylist()
    id_of = {nm: i for i, nm in enumerate(names)}
    linear_perp = {u: f"{u}-PERP" for _, u, _ in INVERSE_PERPETUALS}

    # instruments and marks: two inverse perpetuals, settlement columns on every row
    new_rows = []
    for name, u, value in INVERSE_PERPETUALS:
        base = ins.slice(id_of[linear_perp[u]], 1).to_pylist()[0]
        new_rows.append({**base, "instrument": name, "multiplier": value})
    instruments = pa.concat_tables([ins, pa.Table.from_pylist(new_rows, schema=ins.schema)])
    n_old = ins.num_rows
    instruments = instruments.append_column(
        "settlement", pa.array(["linear"] * n_old + ["inverse"] * len(INVERSE_PERPETUALS), pa.string()))
    instruments = instruments.append_column(
        "settlement_asset", pa.array([None] * n_old + [u for _, u, _ in INVERSE_PERPETUALS], pa.string()))
    all_names = instruments.column("instrument").to_pylist()
    mark_by_name = dict(zip(book.marks.column("instrument").to_pylist(), book.marks.column("mark_price").to_pylist()))
    mark_rows = [{"instrument": name, "mark_price": mark_by_name[linear_perp[u]], "implied_vol": None}
                 for name, u, _ in INVERSE_PERPETUALS]
    marks = pa.concat_tables([book.marks, pa.Table.from_pylist(mark_rows, schema=book.marks.schema)])
    # per instrument id (old and new): multiplier, IM rate, mark, perpetual?, inverse?
    mult = instruments.column("multiplier").to_numpy()
    imr = instruments.column("initial_margin_rate").to_numpy()
    mark = np.array([mark_by_name.get(nm, np.nan) for nm in all_names])
    perpetual = np.array([k == "perpetual" for k in instruments.column("kind").to_pylist()])
    inverse = np.arange(len(all_names)) >= n_old

    # positions by instrument id (sorted by account: account ranges by searchsorted)
    pos = book.positions
    acct = pos.column("account_id").to_numpy()
    col = pos.column("instrument").combine_chunks()
    codes = np.array([id_of[x] for x in col.dictionary.to_pylist()], np.int64)[col.indices.to_numpy()]
    qty = pos.column("quantity").to_numpy().copy()
    entry = pos.column("entry_price").to_numpy(zero_copy_only=False)
    n = len(qty)
    counts: dict = {}
    run = np.concatenate([[0], np.cumsum(acct[1:] != acct[:-1])])  # account index of each row

    # inverse: the BTC-PERP / ETH-PERP rows of some holders move to the inverse contract
    moved = 0
    for k, (name, u, value) in enumerate(INVERSE_PERPETUALS):
        old, new = id_of[linear_perp[u]], n_old + k
        rows = np.flatnonzero(codes == old)
        holders = np.unique(run[rows])
        chosen = holders[rng.random(holders.size) < inverse_share]
        sel = rows[np.isin(run[rows], chosen)]
        usd = qty[sel] * mult[old] * mark[old]
        contracts = np.round(usd / value)
        contracts = np.where(contracts == 0, np.sign(usd), contracts)
        qty[sel] = contracts
        codes[sel] = new
        moved += chosen.size
    counts["inverse_accounts"] = int(moved)

    # isolated: the first linear perpetual of some accounts, with its own collateral
    key = run * len(all_names) + codes  # (account, instrument)
    lin_perp_rows = np.flatnonzero(perpetual[codes] & ~inverse[codes])
    _, first = np.unique(run[lin_perp_rows], return_index=True)
    first_rows = lin_perp_rows[first]
    chosen_rows = first_rows[rng.random(first_rows.size) < isolated_share]
    iso_keys = key[chosen_rows]
    in_iso = np.isin(key, iso_keys)
    groups, inv = np.unique(key[in_iso], return_inverse=True)
    net = np.bincount(inv, weights=qty[in_iso], minlength=groups.size)
    keep = groups[net != 0]
    in_iso &= np.isin(key, keep)
    margin_mode = np.where(in_iso, "isolated", "cross")
    groups, inv = np.unique(key[in_iso], return_inverse=True)
    net = np.bincount(inv, weights=qty[in_iso], minlength=groups.size)
    first_row = np.flatnonzero(in_iso)[np.unique(inv, return_index=True)[1]]
    gid = codes[first_row]
    im = np.abs(net) * mult[gid] * mark[gid] * imr[gid]
    amount = im * np.exp(rng.uniform(np.log(0.7), np.log(4.0), groups.size))
    isolated_collateral = pa.table({
        "account_id": pa.array(acct[first_row], pa.uint64()),
        "instrument": pa.array([all_names[i] for i in gid], pa.string()),
        "amount": pa.array(amount, pa.float64()),
    })
    counts["isolated_positions"] = int(groups.size)

    # funding on perpetual rows (inverse ones included), USD: at most ±0.05% of the notional
    funded = perpetual[codes] & (rng.random(n) < funding_share)
    usd = np.abs(qty) * mult[codes] * np.where(inverse[codes], 1.0, mark[codes])
    funding = np.where(funded, usd * rng.uniform(-0.0005, 0.0005, n), 0.0)
    counts["funding_rows"] = int(funded.sum())

    # orders: one to three on rows of held cross instruments, resting around the mark
    n_accounts = int(run[-1]) + 1 if n else 0
    starts = np.searchsorted(run, np.arange(n_accounts))
    ends = np.searchsorted(run, np.arange(n_accounts), side="right")
    chosen = np.flatnonzero(rng.random(n_accounts) < order_share)
    per = rng.integers(1, 4, chosen.size)
    owner = np.repeat(chosen, per)
    r = starts[owner] + (rng.random(owner.size) * (ends[owner] - starts[owner])).astype(np.int64)
    ok = (margin_mode[r] == "cross") & (mark[codes[r]] > 0)
    r = r[ok]
    side = np.where(rng.random(r.size) < 0.5, 1.0, -1.0)
    away = rng.uniform(0.001, 0.05, r.size) * np.where(rng.random(r.size) < 0.05, -1.0, 1.0)
    size = np.maximum(1.0, np.round(np.abs(qty[r]) * rng.uniform(0.1, 1.0, r.size)))
    orders = pa.table({
        "account_id": pa.array(acct[r], pa.uint64()),
        "instrument": pa.array([all_names[i] for i in codes[r]], pa.string()),
        "quantity": pa.array(side * size, pa.float64()),
        "price": pa.array(mark[codes[r]] * (1.0 - side * away), pa.float64()),
    })
    counts["orders"] = int(r.size)
    counts["order_accounts"] = int(np.unique(acct[r]).size)

    positions = pa.table({
        "account_id": pos.column("account_id"),
        "instrument": pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()), pa.array(all_names, pa.string())),
        "quantity": pa.array(qty, pa.float64()),
        "entry_price": pa.array(entry, pa.float64()),
        "margin_mode": pa.array(margin_mode, pa.string()),
        "unsettled_funding": pa.array(funding, pa.float64()),
    })
    valuation_ns = getattr(book, "valuation_time_ns", None)
    if valuation_ns is None:
        valuation_ns = int(book.valuation_time.timestamp()) * 10**9
    return MechanicsBook(instruments, book.assets, book.margin_tiers, positions, book.balances,
                         book.index_prices, marks, orders, isolated_collateral,
                         book.valuation_time, valuation_ns, counts)
