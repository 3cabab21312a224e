"""Derive's 28 published standard-manager cases under the `derive_standard` parameter set.

Source: derivexyz/v2-core @ 7736900d395703c4f675376caa4c315402943831,
`test/risk-managers/unit-tests/StandardManager/test-cases.json` (harness
`TestStandardManager_Cases.t.sol`; parameters from `test/config-test.sol::getSRMParams`,
`TestStandardManagerBase.t.sol` and the harness's `setUp`). Our copy, with provenance:
`tests/data/derive/standard_manager_test_cases.json` (README-standard.md beside it).

Each case runs through `margin_engine.presets.derive_standard_cases.case_inputs` and
`margin_engine.reference.standard_rules` with `DERIVE_STANDARD`. Derive's signed figures are
ours as `free_collateral` (IM) and `margin_excess` (MM). Every figure is held to 1e-8 relative
(Derive's own harness allows 1e-3); a published 0 must come out as 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import margin_engine as me
from margin_engine.presets.derive_standard_cases import case_inputs, load_cases, published_figures
from margin_engine.reference.standard_params import DERIVE_STANDARD, V1
from margin_engine.reference.standard_rules import AccountStandardMargin, standard_margin_rules

CASES_PATH = Path(__file__).parent / "data" / "derive" / "standard_manager_test_cases.json"
CASES = load_cases(CASES_PATH)
CASE_IDS = [case["id"] for case in CASES]
RELATIVE = 1e-8


def close(ours: float, published: float) -> bool:
    """Within 1e-8 relative of the published figure (exactly 0 when it is 0)."""
    return abs(ours - published) <= RELATIVE * abs(published)


def run(case: dict[str, Any]) -> AccountStandardMargin:
    inputs = case_inputs(case)
    [account] = standard_margin_rules(
        inputs.reference_book(),
        inputs.tables.positions,
        inputs.tables.balances,
        inputs.reference_market(),
        DERIVE_STANDARD,
        inputs.feeds,
    )
    return account


def ours(case: dict[str, Any]) -> dict[str, float]:
    """Our value of every published figure, in Derive's sign convention (a charge negative)."""
    inputs = case_inputs(case)
    account = run(case)
    underlyings = account.by_underlying
    figures = {
        "realIM": account.free_collateral,
        "realMM": account.margin_excess,
        "HandIM": account.free_collateral,
        "HandMM": account.margin_excess,
        "PortfolioMtM": account.equity,
        "Cash": inputs.cash,
        "UnrealizedPNL": account.upnl,
        "UnsettledFunding": sum(inputs.unsettled_funding.values()),
        "PerpMargin": -sum(u.linear_mm for u in underlyings.values()),
        "OracleConts": -sum(u.oracle_im for u in underlyings.values()),
        "DepegIMs": -sum(u.depeg_im for u in underlyings.values()),
        "BaseMargin": sum(u.base_collateral_maintenance for u in underlyings.values()),
    }
    for name in ("ETH", "BTC"):
        u = underlyings.get(name)
        figures[f"{name}OptionIM"] = -u.option_im if u else 0.0
        figures[f"{name}OptionMM"] = -u.option_mm if u else 0.0
        figures[f"{name}OptionIsolatedIM"] = -u.option_isolated_im if u else 0.0
        figures[f"{name}OptionIsolatedMM"] = -u.option_isolated_mm if u else 0.0
    return figures


def mismatches(got: dict[str, float], published: dict[str, float], names: list[str]) -> list[str]:
    return [f"{n}: ours {got[n]!r}, published {published[n]!r}" for n in names if not close(got[n], published[n])]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_case_initial_and_maintenance_margin(case: dict[str, Any]) -> None:
    """Derive's signed IM and MM (`Result.realIM`, `Result.realMM`, what its harness asserts)."""
    published = published_figures(case)
    got = ours(case)
    assert not mismatches(got, published, ["realIM", "realMM"])


BREAKDOWN = [
    "HandIM", "HandMM", "PortfolioMtM", "Cash", "UnrealizedPNL", "UnsettledFunding", "PerpMargin",
    "OracleConts", "DepegIMs", "BaseMargin", "ETHOptionIM", "ETHOptionMM", "BTCOptionIM", "BTCOptionMM",
    "ETHOptionIsolatedIM", "ETHOptionIsolatedMM", "BTCOptionIsolatedIM", "BTCOptionIsolatedMM",
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_case_breakdown(case: dict[str, Any]) -> None:
    """Every other published margin figure: hand-checked totals, mark-to-market, P&L and
    funding, perpetual margin, oracle and depeg add-ons, base-asset margin, and per market the
    option IM/MM after the per-expiry floor and the isolated (unfloored) sums."""
    published = published_figures(case)
    got = ours(case)
    assert not mismatches(got, published, BREAKDOWN)


# The published `Option*Bounded*` columns are a diagnostic of Derive's case generator, not a
# margin figure (the harness never asserts them). Where they disagree with the floor that the
# published IM/MM use, the reason is given.
_BOUNDED_XFAIL = {
    "lyra_srm_Test23": "published ETHOptionBounded{IM,MM} = +100 is the expiry payoff's minimum "
    "before the floor's min(., 0) clip; the floor (and the published IM/MM, 0) use 0",
    "lyra_srm_Test24": "published ETHOptionBounded{IM,MM} (-1800.0018 / -1650.0016) price the unpaired "
    "call on the feed forward 1500.0015; the expiry is 900 s away, so the harness (and the published "
    "IM/MM) use the settlement price 1450.1687: ours -1740.2024 / -1595.1856",
    "lyra_srm_Test25": "published ETHOptionBounded{IM,MM} (-380.0002 / -365.0002) price the unpaired "
    "call on the feed forward 1500.0015; the expiry is 900 s away, so the published IM/MM use the "
    "settlement price 1450.1687: ours -374.0202 / -359.5186 (equal to the published ETHOptionIM/MM)",
    "lyra_srm_Test28": "published Bounded columns hold one expiry per market (the last in order of "
    "first appearance: ETH 900 s, -4600; BTC 7758000 s, 0), not the sum over expiries: ours ETH "
    "-122957.9996 / -119478.1663, BTC -608000 / -608000",
}


@pytest.mark.parametrize(
    "case",
    [
        pytest.param(c, marks=pytest.mark.xfail(strict=True, reason=_BOUNDED_XFAIL[c["id"]]))
        if c["id"] in _BOUNDED_XFAIL
        else c
        for c in CASES
    ],
    ids=CASE_IDS,
)
def test_case_max_loss_floor(case: dict[str, Any]) -> None:
    """`Option{IM,MM}Bounded` per market: Σ over expiries of the max-loss floor
    `L + unpaired_scale × forward × N` (rule 3)."""
    published = published_figures(case)
    account = run(case)
    got: dict[str, float] = {}
    for name in ("ETH", "BTC"):
        u = account.by_underlying.get(name)
        got[f"{name}OptionBoundedIM"] = -u.option_floor_im if u else 0.0
        got[f"{name}OptionBoundedMM"] = -u.option_floor_mm if u else 0.0
    assert not mismatches(got, published, sorted(got))


def test_fixture_is_the_published_file() -> None:
    """All 28 cases are present, each naming its source key, repository and commit."""
    assert len(CASES) == 28
    assert CASE_IDS == [f"lyra_srm_Test{i}" for i in range(1, 29)]
    for case in CASES:
        assert case["source"]["repo"] == "derivexyz/v2-core"
        assert case["source"]["commit"] == "7736900d395703c4f675376caa4c315402943831"
        assert case["id"] == f"lyra_srm_{case['source']['key']}"


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_case_tables_are_engine_inputs(case: dict[str, Any]) -> None:
    """The case's tables pass the engine's validation (`me.Book`, `me.Market`), and under v1
    the engine's standard margin equals the generalized rules with the `V1` set, bit for bit:
    the same book, two parameter sets."""
    inputs = case_inputs(case)
    tables = inputs.tables
    [row] = me.margin(tables.book(), tables.positions, tables.balances, tables.market(), model="standard").to_pylist()
    [account] = standard_margin_rules(
        inputs.reference_book(), tables.positions, tables.balances, inputs.reference_market(), V1
    )
    assert (row["initial_margin"], row["maintenance_margin"]) == (account.initial_margin, account.maintenance_margin)
    assert (row["collateral_initial"], row["collateral_maintenance"]) == (
        account.collateral_initial,
        account.collateral_maintenance,
    )
