"""`margin_engine.vol.svi_implied_vol`: raw SVI slices to implied vols.

Checked against the implied vols Derive publishes beside its SVI slices (`MarkVol` of every
option in tests/data/derive/pmrm2_portfolio_cases_1_to_71.json, derivexyz/v2-core @
7736900d, PMRM_2 portfolio cases), and against the formula written out by hand.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from margin_engine import MarginInputError
from margin_engine.vol import svi_implied_vol, svi_total_variance

CASES = json.loads((Path(__file__).parent / "data" / "derive" / "pmrm2_portfolio_cases_1_to_71.json").read_text())


def _published_options():
    for case in CASES:
        scenario = case["published_inputs"]["Scenario"]
        feeds = {f["FeedExpiry"]: f for f in scenario["OptionFeeds"]}
        for option in scenario["Options"]:
            yield case["id"], feeds[option["Expiry"]], option


def test_matches_derive_published_mark_vols() -> None:
    """Every published option's `MarkVol` (320 options), to 1e-12 relative, from its expiry's
    SVI slice with Derive's wing guards (k within ±4·sqrt(a + bσ)) over the slice's own time.
    Derive's case generator capped total variance at 20 (three deep-wing strikes of one
    1-hour-old slice with σ = 200 hit it); the on-chain SVI caps at 144, where those options'
    prices are saturated anyway."""
    checked = 0
    for _, feed, option in _published_options():
        p = feed["SVIparam"]
        params = tuple(float(x) for x in p[:5])
        vol = svi_implied_vol(params, float(p[5]), option["Strike"], float(p[6]), k_bound_scale=4.0, max_total_variance=20.0)
        assert math.isclose(vol, option["MarkVol"], rel_tol=1e-12), (option, vol)
        checked += 1
    assert checked == 320


def test_raw_formula_by_hand() -> None:
    """w(k) = a + b(ρ(k − m) + sqrt((k − m)² + σ²)); vol = sqrt(w / t); vectorized over strikes."""
    params = {"a": 0.04, "b": 0.1, "rho": -0.3, "m": 0.05, "sigma": 0.2}
    forward, t = 100.0, 0.5
    strikes = np.array([60.0, 100.0, 150.0])
    vols = svi_implied_vol(params, forward, strikes, t)
    for strike, vol in zip(strikes, vols, strict=True):
        k = math.log(strike / forward)
        w = 0.04 + 0.1 * (-0.3 * (k - 0.05) + math.sqrt((k - 0.05) ** 2 + 0.04))
        assert vol == pytest.approx(math.sqrt(w / t), rel=1e-15)
        assert svi_total_variance(params, k) == pytest.approx(w, rel=1e-15)
    assert isinstance(svi_implied_vol(params, forward, 100.0, t), float)


def test_k_bound_clamps_the_wings() -> None:
    """With a k bound, strikes beyond ±bound·sqrt(a + bσ) get the vol at the bound."""
    params = (0.01, 0.05, 0.0, 0.0, 0.1)
    bound = 2.0 * math.sqrt(0.01 + 0.05 * 0.1)
    far, edge = svi_implied_vol(params, 100.0, [100.0 * math.exp(5 * bound), 100.0 * math.exp(bound)], 1.0, k_bound_scale=2.0)
    assert far == pytest.approx(edge, rel=1e-14)
    unbounded = svi_implied_vol(params, 100.0, 100.0 * math.exp(5 * bound), 1.0)
    assert unbounded > far


@pytest.mark.parametrize(
    ("params", "forward", "strikes", "expiry", "column"),
    [
        ((0.04, -0.1, 0.0, 0.0, 0.1), 100.0, 100.0, 1.0, "b"),
        ((0.04, 0.1, 1.0, 0.0, 0.1), 100.0, 100.0, 1.0, "rho"),
        ((0.04, 0.1, 0.0, 0.0, 0.0), 100.0, 100.0, 1.0, "sigma"),
        ((0.04, 0.1, 0.0, 0.0, 0.1), 0.0, 100.0, 1.0, "forward"),
        ((0.04, 0.1, 0.0, 0.0, 0.1), 100.0, [100.0, -1.0], 1.0, "strikes"),
        ((0.04, 0.1, 0.0, 0.0, 0.1), 100.0, 100.0, 0.0, "expiry"),
        ((-1.0, 0.1, 0.0, 0.0, 0.1), 100.0, 100.0, 1.0, "params"),
        ({"a": 0.04, "b": 0.1, "rho": 0.0, "m": 0.0, "sigma": 0.1, "nu": 1}, 100.0, 100.0, 1.0, "nu"),
        ((0.04, 0.1, 0.0, 0.0), 100.0, 100.0, 1.0, "params"),
    ],
)
def test_bad_input_names_the_parameter(params, forward, strikes, expiry, column) -> None:
    """Bad SVI input is a MarginInputError naming the parameter (a negative total variance
    names the strikes)."""
    with pytest.raises(MarginInputError, match=rf"svi\.{column}"):
        svi_implied_vol(params, forward, strikes, expiry)
