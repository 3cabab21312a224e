"""Margin optimizers for one owner's accounts: collateral allocation and rebalancing.

- :func:`allocate_collateral` splits a pool of assets between sub-accounts (isolated margin
  accounts, or accounts at several venues) so that the *least healthy* account is as healthy as
  possible, then keeps as much of the pool free as it can, preferring to post high-haircut assets.
  Two linear programs, solved exactly by HiGHS (``scipy.optimize.linprog(method="highs")``).
- :func:`rebalance` finds few transfers of a settlement asset that lift every account to a target
  health, optionally only when a volatility trigger fires. Greedy (best fit, at most n − 1
  transfers) or exact (a small mixed-integer program).

The minimum-margin hedge of every account, :func:`margin_engine.optimal_hedge`, lives in the Rust
core. The mathematics, exactness and limits of all three are in ``docs/optimization.md``.

scipy (with HiGHS) is needed by :func:`allocate_collateral` and by ``rebalance(method="exact")``
only (``pip install 'margin-engine[optimize]'``); it is imported when they are called.

Accounts are keyed by ``account_id`` in every input and output table, as in the rest of the
package; the results' tables are ``pyarrow.Table`` (``polars.DataFrame`` with
``output="polars"``).
"""

from __future__ import annotations

import bisect
import dataclasses
import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np
import pyarrow as pa

from margin_engine._inputs import arrow_table, as_output, check_output, input_error

__all__ = [
    "CollateralAllocation",
    "RebalancePlan",
    "allocate_collateral",
    "rebalance",
]

# HiGHS works to a primal feasibility tolerance of 1e-7 on the (health-scaled) rows; the second
# stage keeps the first stage's optimum up to this relative slack so that it is always feasible.
_STAGE2_SLACK = 1e-7


# ----------------------------------------------------------------------------------------------
# Input helpers
# ----------------------------------------------------------------------------------------------


def _table(obj: Any, name: str) -> pa.Table:
    if isinstance(obj, Mapping) and not isinstance(obj, dict):
        obj = dict(obj)
    return arrow_table(obj, name)


def _require(table: pa.Table, name: str, columns: tuple[str, ...]) -> None:
    for column in columns:
        if column not in table.column_names:
            renamed = " (renamed from `account`: accounts are keyed by account_id everywhere)" if (
                column == "account_id" and "account" in table.column_names
            ) else ""
            raise input_error(name, column, f"missing column{renamed} (have {', '.join(table.column_names)})")


def _floats(table: pa.Table, name: str, column: str, keys: list[Any], default: float | None = None) -> np.ndarray:
    if column not in table.column_names:
        if default is None:
            raise input_error(name, column, "missing column")
        return np.full(table.num_rows, float(default))
    col = table.column(column)
    if col.null_count:
        bad = [f"{keys[i]!r}" for i, v in enumerate(col.to_pylist()) if v is None]
        raise input_error(name, column, "null value", bad[:10])
    try:
        values = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)
    except (TypeError, ValueError, pa.ArrowInvalid) as e:
        raise input_error(name, column, f"not numeric ({e})") from e
    bad = [f"{keys[i]!r} = {values[i]!r}" for i in np.flatnonzero(~np.isfinite(values))]
    if bad:
        raise input_error(name, column, "not finite", bad[:10])
    return values


def _keys(table: pa.Table, name: str, column: str) -> list[Any]:
    keys = table.column(column).to_pylist()
    if any(k is None for k in keys):
        raise input_error(name, column, "null key", [f"row {i}" for i, k in enumerate(keys) if k is None][:10])
    seen: set[Any] = set()
    dup = []
    for k in keys:
        if k in seen:
            dup.append(repr(k))
        seen.add(k)
    if dup:
        raise input_error(name, column, "duplicate key", dup[:10])
    return keys


def _key_type(table: pa.Table, column: str) -> pa.DataType:
    t = table.schema.field(column).type
    return t.value_type if pa.types.is_dictionary(t) else t


def _health(collateral: np.ndarray, mm: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(mm > 0, collateral / np.where(mm > 0, mm, 1.0), np.nan)


def _nullable(values: np.ndarray) -> pa.Array:
    return pa.array(values, pa.float64(), mask=np.isnan(values))


OPTIMIZE_EXTRA = "pip install 'margin-engine[optimize]'"


def _scipy(what: str) -> tuple[Any, Any]:
    """``(scipy.optimize, scipy.sparse)``; an :class:`ImportError` naming the extra to install
    when scipy is missing."""
    try:
        import scipy.optimize as opt
        import scipy.sparse as sp
    except ImportError as e:
        raise ImportError(f"{what} needs scipy >= 1.9 (HiGHS): {OPTIMIZE_EXTRA}") from e
    return opt, sp


# ----------------------------------------------------------------------------------------------
# Collateral allocation
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CollateralAllocation:
    """What :func:`allocate_collateral` chose.

    ``allocation``: one row per (account, asset) with something posted: ``account_id, asset,
    amount`` (asset units), ``value`` (amount × price, USD) and ``weighted_value``
    (× weight: what it adds to the account's collateral).
    ``accounts``: one row per sub-account, in input order: ``account_id, maintenance_margin,
    collateral_before, posted_value`` (weighted), ``collateral_after, health_before,
    health_after``.
    ``free``: one row per pool asset, in input order: ``asset, amount, posted, free,
    free_value, free_weighted_value``.
    ``max_min_health``: the optimum ``t*`` of the first program (the largest achievable smallest
    health); ``min_health_before`` / ``min_health_after``: the smallest health without / with
    the allocation (``min_health_after`` equals ``t*`` up to the solver tolerance, ~1e-7).
    """

    allocation: pa.Table
    accounts: pa.Table
    free: pa.Table
    max_min_health: float
    min_health_before: float
    min_health_after: float
    objective: str
    status: str


def _eligibility(requirements: pa.Table, eligible: Any, accounts: list[Any], assets: list[Any]) -> np.ndarray:
    """Boolean matrix accounts × assets of the pairs that may be posted."""
    n, m = len(accounts), len(assets)
    if eligible is None and "eligible_assets" not in requirements.column_names:
        return np.ones((n, m), dtype=bool)
    asset_index = {a: j for j, a in enumerate(assets)}
    account_index = {a: i for i, a in enumerate(accounts)}
    mask = np.zeros((n, m), dtype=bool)
    if "eligible_assets" in requirements.column_names:
        for i, allowed in enumerate(requirements.column("eligible_assets").to_pylist()):
            if allowed is None:
                mask[i, :] = True
                continue
            unknown = [repr(a) for a in allowed if a not in asset_index]
            if unknown:
                raise input_error(
                    "requirements", "eligible_assets", f"unknown asset for account {accounts[i]!r}", unknown[:10]
                )
            for a in allowed:
                mask[i, asset_index[a]] = True
    if eligible is not None:
        table = _table(eligible, "eligible")
        _require(table, "eligible", ("account_id", "asset"))
        listed = np.zeros(n, dtype=bool)
        pairs = np.zeros((n, m), dtype=bool)
        for acc, asset in zip(table.column("account_id").to_pylist(), table.column("asset").to_pylist()):
            if acc not in account_index:
                raise input_error("eligible", "account_id", "unknown account", [repr(acc)])
            if asset not in asset_index:
                raise input_error("eligible", "asset", "unknown asset", [repr(asset)])
            pairs[account_index[acc], asset_index[asset]] = True
            listed[account_index[acc]] = True
        if "eligible_assets" in requirements.column_names:
            mask &= np.where(listed[:, None], pairs, True)
        else:
            mask = np.where(listed[:, None], pairs, True)
    return mask


def allocate_collateral(
    pool: Any,
    requirements: Any,
    *,
    objective: Literal["max_min_health", "min_posted"] = "max_min_health",
    target_health: float | None = None,
    eligible: Any = None,
    output: Literal["arrow", "polars"] = "arrow",
) -> CollateralAllocation:
    """Split a pool of collateral between one owner's sub-accounts.

    ``pool`` (table or dict of columns): ``asset`` (unique), ``amount`` (≥ 0, asset units),
    ``price`` (> 0, USD), ``weight`` (collateral weight in [0, 1] = 1 − haircut, e.g. the
    asset's ``maintenance_weight``).
    ``requirements``: ``account_id`` (unique), ``maintenance_margin`` (> 0), optional
    ``collateral`` (weighted collateral already in the account, USD, default 0; may be
    negative) and optional ``eligible_assets`` (list of assets the account accepts, null = all).
    ``eligible``: optional table of allowed ``account_id, asset`` pairs (an account it does not
    list accepts every asset); combined with ``eligible_assets`` when both are given.
    ``output="polars"``: the result's tables as polars DataFrames. Needs scipy
    (``pip install 'margin-engine[optimize]'``).

    ``objective="max_min_health"`` (default) maximizes the smallest health
    ``h_i = (collateral_i + Σ_a x_ia·price_a·weight_a) / MM_i`` subject to
    ``Σ_i x_ia ≤ amount_a, x ≥ 0`` (first LP), then — with the smallest health held at its
    optimum — minimizes ``Σ x_ia·price_a·weight_a·(1 + weight_a)`` (second LP): post only what the
    optimum needs, and of that the highest-haircut assets first, so the least-haircut assets stay
    free. ``objective="min_posted"`` skips the first LP and holds every account at
    ``target_health`` instead (``status="infeasible"`` and nothing posted when the pool cannot).
    """
    output = check_output(output)
    opt, sp = _scipy("allocate_collateral")
    if objective not in ("max_min_health", "min_posted"):
        raise input_error(
            "arguments", "objective", f"objective must be 'max_min_health' or 'min_posted', got {objective!r}"
        )
    if objective == "min_posted":
        if target_health is None or isinstance(target_health, bool) or not math.isfinite(float(target_health)):
            raise input_error("arguments", "target_health", "objective='min_posted' needs a finite target_health")
        target_health = float(target_health)
    elif target_health is not None:
        raise input_error("arguments", "target_health", "target_health is only used with objective='min_posted'")

    pool_t = _table(pool, "pool")
    _require(pool_t, "pool", ("asset", "amount", "price", "weight"))
    assets = _keys(pool_t, "pool", "asset")
    amount = _floats(pool_t, "pool", "amount", assets)
    price = _floats(pool_t, "pool", "price", assets)
    weight = _floats(pool_t, "pool", "weight", assets)
    for column, values, ok in (
        ("amount", amount, amount >= 0),
        ("price", price, price > 0),
        ("weight", weight, (weight >= 0) & (weight <= 1)),
    ):
        if not ok.all():
            rule = {"amount": "must be >= 0", "price": "must be > 0", "weight": "must be in [0, 1]"}[column]
            raise input_error(
                "pool", column, rule, [f"{assets[j]!r} = {values[j]!r}" for j in np.flatnonzero(~ok)][:10]
            )

    req_t = _table(requirements, "requirements")
    _require(req_t, "requirements", ("account_id", "maintenance_margin"))
    accounts = _keys(req_t, "requirements", "account_id")
    mm = _floats(req_t, "requirements", "maintenance_margin", accounts)
    if not (mm > 0).all():
        raise input_error(
            "requirements",
            "maintenance_margin",
            "must be > 0",
            [f"{accounts[i]!r} = {mm[i]!r}" for i in np.flatnonzero(~(mm > 0))][:10],
        )
    existing = _floats(req_t, "requirements", "collateral", accounts, default=0.0)
    mask = _eligibility(req_t, eligible, accounts, assets)

    n, m = len(accounts), len(assets)
    capacity = amount * price * weight  # weighted USD value of each asset's whole pool
    mask &= (capacity > 0)[None, :]  # a zero-weight or empty asset never helps
    pair_i, pair_a = np.nonzero(mask)
    k = len(pair_i)

    # Variables: z_p = fraction of asset a's pool posted to account i (pair p), then t.
    # Account rows, scaled by 1/MM_i:  t − Σ_a z_ia·cap_a/MM_i ≤ existing_i/MM_i
    # Asset rows:                      Σ_i z_ia ≤ 1

    rows = np.concatenate([pair_i, np.arange(n)])
    cols = np.concatenate([np.arange(k), np.full(n, k)])
    vals = np.concatenate([-capacity[pair_a] / mm[pair_i], np.ones(n)])
    a_acc = sp.csr_matrix((vals, (rows, cols)), shape=(n, k + 1))
    a_asset = sp.csr_matrix((np.ones(k), (pair_a, np.arange(k))), shape=(m, k + 1))
    b_acc = existing / mm
    b_asset = np.ones(m)
    bounds = [(0.0, 1.0)] * k + [(None, None)]
    linprog = opt.linprog
    health_before = existing / mm

    status = "optimal"
    if objective == "max_min_health":
        if n == 0:
            t_star = math.inf
        else:
            c = np.zeros(k + 1)
            c[k] = -1.0
            res = linprog(
                c,
                A_ub=sp.vstack([a_acc, a_asset]).tocsr(),
                b_ub=np.concatenate([b_acc, b_asset]),
                bounds=bounds,
                method="highs",
            )
            if res.status != 0:  # pragma: no cover - the program is always feasible and bounded
                raise RuntimeError(f"allocate_collateral: first LP failed: {res.message}")
            t_star = float(res.x[k])
        t_hold = t_star - _STAGE2_SLACK * max(1.0, abs(t_star))
    else:
        t_star = float(target_health)  # type: ignore[arg-type]
        t_hold = t_star

    z = np.zeros(k)
    if n and k and math.isfinite(t_hold):
        # Second LP: t fixed (as a bound); minimize Σ z·cap·(1 + w).
        c2 = np.concatenate([capacity[pair_a] * (1.0 + weight[pair_a]), [0.0]])
        bounds2 = bounds[:-1] + [(t_hold, t_hold)]
        res2 = linprog(
            c2,
            A_ub=sp.vstack([a_acc, a_asset]).tocsr(),
            b_ub=np.concatenate([b_acc, b_asset]),
            bounds=bounds2,
            method="highs",
        )
        if res2.status == 0:
            z = np.clip(res2.x[:k], 0.0, 1.0)
        elif objective == "max_min_health":  # pragma: no cover - keep the first program's optimum
            z = np.clip(res.x[:k], 0.0, 1.0)
            status = "optimal_first_stage_only"
        elif res2.status == 2:
            status = "infeasible"
        else:  # pragma: no cover
            raise RuntimeError(f"allocate_collateral: second LP failed: {res2.message}")
    elif n and objective == "min_posted" and float(np.min(health_before)) < t_hold:
        status = "infeasible"

    # Amounts in asset units; never more than the pool (undo solver round-off per asset).
    x = z * amount[pair_a]
    posted = np.bincount(pair_a, weights=x, minlength=m)
    over = posted > amount
    if over.any():
        shrink = np.where(over, amount / np.where(posted > 0, posted, 1.0), 1.0)
        x = x * shrink[pair_a]
        posted = np.minimum(np.bincount(pair_a, weights=x, minlength=m), amount)
    keep = x > 0
    value = x * price[pair_a]
    weighted = value * weight[pair_a]
    posted_value = np.bincount(pair_i, weights=weighted, minlength=n)
    after = existing + posted_value
    health_after = after / mm

    account_type = _key_type(req_t, "account_id")
    asset_type = _key_type(pool_t, "asset")
    allocation = pa.table(
        {
            "account_id": pa.array([accounts[i] for i in pair_i[keep]], account_type),
            "asset": pa.array([assets[a] for a in pair_a[keep]], asset_type),
            "amount": pa.array(x[keep], pa.float64()),
            "value": pa.array(value[keep], pa.float64()),
            "weighted_value": pa.array(weighted[keep], pa.float64()),
        }
    )
    account_table = pa.table(
        {
            "account_id": pa.array(accounts, account_type),
            "maintenance_margin": pa.array(mm, pa.float64()),
            "collateral_before": pa.array(existing, pa.float64()),
            "posted_value": pa.array(posted_value, pa.float64()),
            "collateral_after": pa.array(after, pa.float64()),
            "health_before": pa.array(health_before, pa.float64()),
            "health_after": pa.array(health_after, pa.float64()),
        }
    )
    free_amount = np.maximum(amount - posted, 0.0)
    free = pa.table(
        {
            "asset": pa.array(assets, asset_type),
            "amount": pa.array(amount, pa.float64()),
            "posted": pa.array(posted, pa.float64()),
            "free": pa.array(free_amount, pa.float64()),
            "free_value": pa.array(free_amount * price, pa.float64()),
            "free_weighted_value": pa.array(free_amount * price * weight, pa.float64()),
        }
    )
    return CollateralAllocation(
        allocation=as_output(allocation, output),
        accounts=as_output(account_table, output),
        free=as_output(free, output),
        max_min_health=t_star,
        min_health_before=float(np.min(health_before)) if n else math.inf,
        min_health_after=float(np.min(health_after)) if n else math.inf,
        objective=objective,
        status=status,
    )


# ----------------------------------------------------------------------------------------------
# Rebalancing
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RebalancePlan:
    """What :func:`rebalance` decided.

    ``triggered``: whether the volatility trigger fired (always ``True`` without a trigger);
    ``breaches``: the underlyings whose volatility reached its threshold.
    ``feasible``: whether every account can reach the target (``shortfall`` = how much
    collateral the owner is missing when not). When not triggered, or infeasible, ``transfers``
    is empty and nothing moves.
    ``transfers``: ``from_account_id, to_account_id, amount`` (USD of the settlement asset), in
    the order they were chosen. ``accounts``: one row per account in input order: ``account_id,
    collateral_before, maintenance_margin, health_before, sent, received, collateral_after,
    health_after``.
    ``lower_bound``: a proven lower bound on the number of transfers any plan needs (each
    account below target needs as many incoming transfers as it takes the largest surpluses to
    cover its deficit); ``proven_minimal``: the plan meets that bound, or was solved exactly.
    """

    triggered: bool
    breaches: list[str]
    feasible: bool
    transfers: pa.Table
    accounts: pa.Table
    total_moved: float
    n_transfers: int
    lower_bound: int
    proven_minimal: bool
    shortfall: float
    method: str


def _breaches(trigger: Mapping[str, float] | None, vols: Mapping[str, float] | None) -> tuple[bool, list[str]]:
    if trigger is None:
        if vols is not None:
            raise input_error("arguments", "vols", "vols given without a trigger")
        return True, []
    if not isinstance(trigger, Mapping):
        raise input_error(
            "arguments", "trigger", f"expected a dict {{underlying: vol_threshold}}, got {type(trigger).__name__}"
        )
    if vols is None or not isinstance(vols, Mapping):
        raise input_error("arguments", "vols", "a trigger needs the current vols: vols={underlying: vol}")
    missing = [repr(u) for u in trigger if u not in vols]
    if missing:
        raise input_error("arguments", "vols", "no current vol for a trigger underlying", missing[:10])
    hit = []
    for u, threshold in trigger.items():
        th, v = float(threshold), float(vols[u])
        if not (math.isfinite(th) and math.isfinite(v)):
            raise input_error("arguments", "trigger", "thresholds and vols must be finite", [repr(u)])
        if v >= th:
            hit.append(str(u))
    return bool(hit), hit


def _lower_bound(deficits: np.ndarray, surpluses: np.ndarray, eps: float) -> int:
    """Σ_j k_j with k_j the fewest donors whose largest surpluses cover deficit j."""
    if deficits.size == 0:
        return 0
    top = np.cumsum(np.sort(surpluses)[::-1])
    if top.size == 0:
        return int(deficits.size)
    k = np.searchsorted(top, deficits - eps, side="left") + 1
    return int(np.minimum(k, top.size).sum())


def _greedy(deficits: np.ndarray, surpluses: np.ndarray, eps: float) -> list[tuple[int, int, float]]:
    """Recipients by deficit, largest first; each takes its whole remaining deficit from the
    donor with the smallest surplus that covers it (best fit), or else drains the largest donor
    and goes on. Every transfer completes a recipient or empties a donor."""
    # donors kept sorted by remaining surplus: parallel lists (surplus, donor index)
    order = np.argsort(surpluses, kind="stable")
    s_keys = [float(surpluses[d]) for d in order]
    s_ids = [int(d) for d in order]
    out: list[tuple[int, int, float]] = []
    for j in np.argsort(-deficits, kind="stable"):
        need = float(deficits[j])
        while need > eps and s_keys:
            pos = bisect.bisect_left(s_keys, need - eps)
            if pos < len(s_keys):  # best fit: the smallest surplus that covers the need
                donor, have = s_ids.pop(pos), s_keys.pop(pos)
                out.append((donor, int(j), need))
                rest = have - need
                if rest > eps:
                    at = bisect.bisect_left(s_keys, rest)
                    s_keys.insert(at, rest)
                    s_ids.insert(at, donor)
                need = 0.0
            else:  # nobody covers it alone: drain the largest donor
                donor, have = s_ids.pop(), s_keys.pop()
                out.append((donor, int(j), have))
                need -= have
    return out


def _exact(
    deficits: np.ndarray, surpluses: np.ndarray, time_limit: float | None
) -> tuple[list[tuple[int, int, float]], bool]:
    """Fewest transfers by a mixed-integer program (HiGHS): binary y_dr, flow f_dr ≤ u_dr·y_dr,
    Σ_d f_dr = deficit_r, Σ_r f_dr ≤ surplus_d, minimize Σ y."""
    opt, sp = _scipy("rebalance(method='exact')")
    Bounds, LinearConstraint, milp = opt.Bounds, opt.LinearConstraint, opt.milp  # noqa: N806

    nd, nr = surpluses.size, deficits.size
    p = nd * nr
    d_idx, r_idx = np.divmod(np.arange(p), nr)
    cap = np.minimum(surpluses[d_idx], deficits[r_idx])
    scale = max(float(deficits.max()), 1e-300)
    cap_s, need_s, have_s = cap / scale, deficits / scale, surpluses / scale
    # variables: f (p), y (p)
    c = np.concatenate([np.zeros(p), np.ones(p)])
    eye = sp.identity(p, format="csr")
    link = sp.hstack([eye, -sp.diags(cap_s)])  # f − cap·y ≤ 0
    recv = sp.hstack([sp.csr_matrix((np.ones(p), (r_idx, np.arange(p))), shape=(nr, p)), sp.csr_matrix((nr, p))])
    send = sp.hstack([sp.csr_matrix((np.ones(p), (d_idx, np.arange(p))), shape=(nd, p)), sp.csr_matrix((nd, p))])
    constraints = [
        LinearConstraint(link, -np.inf, 0.0),
        LinearConstraint(recv, need_s, need_s),
        LinearConstraint(send, -np.inf, have_s),
    ]
    integrality = np.concatenate([np.zeros(p), np.ones(p)])
    bounds = Bounds(np.zeros(2 * p), np.concatenate([cap_s, np.ones(p)]))
    options = {} if time_limit is None else {"time_limit": float(time_limit)}
    res = milp(c, constraints=constraints, integrality=integrality, bounds=bounds, options=options)
    if res.x is None:  # pragma: no cover - feasible by construction (checked before)
        raise RuntimeError(f"rebalance(method='exact'): {res.message}")
    flows = res.x[:p]
    used = np.flatnonzero((res.x[p:] > 0.5) & (flows > 1e-12))
    # Re-derive exact amounts: each recipient takes its deficit from its chosen donors, in
    # proportion to the solver's flows (so that it receives exactly its deficit).
    out = []
    for r in range(nr):
        pairs = [q for q in used if r_idx[q] == r]
        f = np.array([max(flows[q], 0.0) for q in pairs])
        total = f.sum()
        for q, fq in zip(pairs, f):
            amount = deficits[r] * (fq / total) if total > 0 else deficits[r] / len(pairs)
            if amount > 0:
                out.append((int(d_idx[q]), r, float(amount)))
    return out, res.status == 0


def rebalance(
    accounts: Any,
    *,
    target_health: float,
    trigger: Mapping[str, float] | None = None,
    vols: Mapping[str, float] | None = None,
    method: Literal["greedy", "exact"] = "greedy",
    time_limit: float | None = 10.0,
    output: Literal["arrow", "polars"] = "arrow",
) -> RebalancePlan:
    """Transfers between one owner's accounts that lift every account to ``target_health``.

    ``accounts`` (table or dict of columns): ``account_id`` (unique), ``collateral`` (weighted
    maintenance collateral, USD; e.g. ``collateral_maintenance`` of :func:`margin`),
    ``maintenance_margin`` (≥ 0). Other columns are ignored. Transfers move a settlement asset of weight 1 (USD), so moving
    ``a`` USD lowers the donor's collateral by ``a`` and raises the recipient's by ``a``.

    An account with ``MM > 0`` has ``deficit = target × MM − collateral`` when positive and
    otherwise a ``surplus`` it may give away; an account with ``MM = 0`` has no requirement and
    may give all its positive collateral. Feasible iff Σ surplus ≥ Σ deficit (with no ``MM = 0``
    account in debt: ``Σ collateral ≥ target × Σ MM``). Each recipient receives exactly its
    deficit and donors give at most their surplus, so the amount moved, Σ deficit, is the least
    possible; the number of transfers is minimized by ``method``: ``"greedy"`` (best fit, at most
    recipients + donors − 1 transfers, reports a lower bound) or ``"exact"`` (mixed-integer
    program, for small owners; ``time_limit`` seconds).

    ``trigger={underlying: vol_threshold}`` with ``vols={underlying: current_vol}``: rebalance
    only if ``vols[u] >= trigger[u]`` for at least one ``u``; otherwise nothing moves and
    ``triggered`` is ``False``. ``output="polars"``: the plan's tables as polars DataFrames.
    ``method="exact"`` needs scipy (``pip install 'margin-engine[optimize]'``).
    """
    if isinstance(target_health, bool) or not isinstance(target_health, (int, float, np.floating, np.integer)):
        raise input_error("arguments", "target_health", f"expected a number, got {target_health!r}")
    target = float(target_health)
    if not (math.isfinite(target) and target > 0):
        raise input_error("arguments", "target_health", f"must be finite and > 0, got {target_health!r}")
    if method not in ("greedy", "exact"):
        raise input_error("arguments", "method", f"method must be 'greedy' or 'exact', got {method!r}")
    output = check_output(output)
    if method == "exact":
        _scipy("rebalance(method='exact')")  # before any work
    triggered, breaches = _breaches(trigger, vols)

    table = _table(accounts, "accounts")
    _require(table, "accounts", ("account_id", "collateral", "maintenance_margin"))
    keys = _keys(table, "accounts", "account_id")
    coll = _floats(table, "accounts", "collateral", keys)
    mm = _floats(table, "accounts", "maintenance_margin", keys)
    if (mm < 0).any():
        raise input_error(
            "accounts",
            "maintenance_margin",
            "must be >= 0",
            [f"{keys[i]!r} = {mm[i]!r}" for i in np.flatnonzero(mm < 0)][:10],
        )
    n = len(keys)
    need = target * mm
    gap = coll - need
    is_recipient = (mm > 0) & (gap < 0)
    is_donor = gap > 0  # MM = 0 accounts with positive collateral included
    recipients = np.flatnonzero(is_recipient)
    donors = np.flatnonzero(is_donor)
    deficits = -gap[recipients]
    surpluses = gap[donors]
    total_deficit = float(deficits.sum())
    total_surplus = float(surpluses.sum())
    scale = max(float(np.abs(coll).max(initial=0.0)), float(need.max(initial=0.0)), 1.0)
    eps = 1e-12 * scale
    feasible = total_surplus >= total_deficit - eps * max(n, 1)
    shortfall = max(total_deficit - total_surplus, 0.0) if not feasible else 0.0
    lower = _lower_bound(deficits, surpluses, eps) if feasible else 0

    chosen: list[tuple[int, int, float]] = []
    proven = True
    if triggered and feasible and recipients.size:
        if method == "exact":
            chosen, proven = _exact(deficits, surpluses, time_limit)
            proven = proven or len(chosen) == lower
        else:
            chosen = _greedy(deficits, surpluses, eps)
            proven = len(chosen) == lower

    sent = np.zeros(n)
    received = np.zeros(n)
    for d, r, a in chosen:
        sent[donors[d]] += a
        received[recipients[r]] += a
    after = coll - sent + received
    key_type = _key_type(table, "account_id")
    transfers = pa.table(
        {
            "from_account_id": pa.array([keys[donors[d]] for d, _, _ in chosen], key_type),
            "to_account_id": pa.array([keys[recipients[r]] for _, r, _ in chosen], key_type),
            "amount": pa.array([a for _, _, a in chosen], pa.float64()),
        }
    )
    account_table = pa.table(
        {
            "account_id": pa.array(keys, key_type),
            "collateral_before": pa.array(coll, pa.float64()),
            "maintenance_margin": pa.array(mm, pa.float64()),
            "health_before": _nullable(_health(coll, mm)),
            "sent": pa.array(sent, pa.float64()),
            "received": pa.array(received, pa.float64()),
            "collateral_after": pa.array(after, pa.float64()),
            "health_after": _nullable(_health(after, mm)),
        }
    )
    return RebalancePlan(
        triggered=triggered,
        breaches=breaches,
        feasible=bool(feasible),
        transfers=as_output(transfers, output),
        accounts=as_output(account_table, output),
        total_moved=float(sum(a for _, _, a in chosen)),
        n_transfers=len(chosen),
        lower_bound=int(lower),
        proven_minimal=bool(proven and (triggered and feasible)),
        shortfall=float(shortfall),
        method=method,
    )
