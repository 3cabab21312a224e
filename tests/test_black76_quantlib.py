"""`me.black76` against QuantLib's Black formula (METHODOLOGY §5: r = 0, forward = index price).

QuantLib is an independent implementation, so this pins the engine's Black-76 (and, through the
differential tests, the reference's) to a third party on a grid of moneyness K/F in 0.5..2,
vols 0.05..2, expiries 1 day..3 years, several forward levels, calls and puts.

How each quantity is obtained from QuantLib (``ql.BlackCalculator(payoff, F, stdDev, discount)``
with ``stdDev = σ√T`` and ``discount = 1.0``, i.e. r = 0):

- price:  ``ql.blackFormula(type, K, F, σ√T)`` and ``BlackCalculator.value()`` (both checked).
- delta:  ``BlackCalculator.delta(F)``: with discount 1 the spot *is* the forward, so this is
  ∂price/∂F = N(d1) (call) / N(d1) − 1 (put); cross-checked against ``deltaForward()``.
- gamma:  ``BlackCalculator.gamma(F)`` = n(d1) / (F σ√T).
- vega:   ``BlackCalculator.vega(T)`` is ∂price/∂σ per unit of vol (= F n(d1) √T); the engine
  quotes it per vol point, so we compare with ``vega(T) / 100``.
- theta:  ``BlackCalculator.theta(F, T)`` is
  ``−(ln(discount)·value + ln(F/spot)·spot·delta + ½·σ²T·spot²·gamma) / T``; with discount 1 and
  spot = F the first two terms vanish and it is −½σ²F²·n(d1)/(Fσ√T) = −F n(d1) σ / (2√T) per
  year, the §5 theta. The engine quotes it per calendar day, so we compare with
  ``theta(F, T) / 365`` (= ``thetaPerDay``). As an independent cross-check that does not depend
  on QuantLib's theta conventions we also use the exact r = 0 identity
  ``theta_year = −vega_unit × σ / (2T)`` (since vega_unit = F n(d1) √T), with QuantLib's vega(T).

Tolerances are 1e-10 absolute on dimensionless quantities: price / F, delta, gamma × F × σ√T
(= n(d1) ≤ 0.4), vega / (F √T / 100) (= n(d1)), theta / (F σ / (2√T) / 365) (= n(d1)).

At T = 0 (and after expiry, T < 0, which §1 clamps to 0) §5 prescribes the intrinsic value,
delta 1/0 for a call (F > K / else) and −1/0 for a put (F < K / else), gamma = vega = theta = 0.
QuantLib's price with stdDev = 0 is the intrinsic value and is compared; QuantLib's Greeks at
stdDev = 0 follow its own conventions (e.g. an at-the-money delta of ±0.5), so the §5 Greeks are
asserted directly.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

import margin_engine as me

ql = pytest.importorskip("QuantLib")

TOL = 1e-10

FORWARDS = (0.37, 100.0, 64_250.0)
MONEYNESS = (0.5, 0.6, 0.75, 0.9, 0.97, 1.0, 1.03, 1.1, 1.25, 1.5, 1.75, 2.0)  # K / F
VOLS = (0.05, 0.1, 0.2, 0.35, 0.5, 0.8, 1.2, 1.6, 2.0)
EXPIRY_DAYS = (1, 2, 7, 14, 30, 91, 182, 365, 730, 1095)


def _grid() -> tuple[np.ndarray, ...]:
    rows = list(itertools.product(FORWARDS, MONEYNESS, VOLS, EXPIRY_DAYS, (True, False)))
    f = np.array([r[0] for r in rows])
    k = np.array([r[0] * r[1] for r in rows])
    v = np.array([r[2] for r in rows])
    t = np.array([r[3] / 365.0 for r in rows])
    c = np.array([r[4] for r in rows])
    return f, k, t, v, c


def _quantlib(forward: float, strike: float, time: float, vol: float, is_call: bool) -> dict[str, float]:
    """Price and §5 Greeks (per vol point, per calendar day) from QuantLib, r = 0."""
    option_type = ql.Option.Call if is_call else ql.Option.Put
    std_dev = vol * math.sqrt(time)
    calc = ql.BlackCalculator(ql.PlainVanillaPayoff(option_type, strike), forward, std_dev, 1.0)
    vega_unit = calc.vega(time)
    return {
        "price_formula": ql.blackFormula(option_type, strike, forward, std_dev, 1.0),
        "price": calc.value(),
        "delta": calc.delta(forward),
        "delta_forward": calc.deltaForward(),
        "gamma": calc.gamma(forward),
        "vega": vega_unit / 100.0,
        "theta": calc.theta(forward, time) / 365.0,
        "theta_per_day": calc.thetaPerDay(forward, time),
        "theta_from_vega": -vega_unit * vol / (2.0 * time) / 365.0,
    }


@pytest.fixture(scope="module")
def grid_results():
    f, k, t, v, c = _grid()
    got = me.black76(f, k, t, v, c)
    want = [_quantlib(*args) for args in zip(f.tolist(), k.tolist(), t.tolist(), v.tolist(), c.tolist())]
    return (f, k, t, v, c), got, want


def _check(name: str, got: np.ndarray, want: np.ndarray, scale: np.ndarray, inputs) -> None:
    err = np.abs(got - want) / scale
    worst = int(np.argmax(err))
    f, k, t, v, c = inputs
    assert err[worst] <= TOL, (
        f"{name}: scaled error {err[worst]:.3e} at F={f[worst]}, K={k[worst]}, T={t[worst]}, "
        f"vol={v[worst]}, call={c[worst]}: got {got[worst]!r}, QuantLib {want[worst]!r}"
    )


def test_grid_size(grid_results):
    inputs, got, _ = grid_results
    assert got.price.shape == inputs[0].shape
    assert inputs[0].size == len(FORWARDS) * len(MONEYNESS) * len(VOLS) * len(EXPIRY_DAYS) * 2


def test_price_matches_quantlib(grid_results):
    inputs, got, want = grid_results
    f = inputs[0]
    _check("price vs blackFormula", got.price, np.array([w["price_formula"] for w in want]), f, inputs)
    _check("price vs BlackCalculator", got.price, np.array([w["price"] for w in want]), f, inputs)


def test_delta_matches_quantlib(grid_results):
    inputs, got, want = grid_results
    ones = np.ones_like(inputs[0])
    _check("delta", got.delta, np.array([w["delta"] for w in want]), ones, inputs)
    _check("delta vs deltaForward", got.delta, np.array([w["delta_forward"] for w in want]), ones, inputs)


def test_gamma_matches_quantlib(grid_results):
    inputs, got, want = grid_results
    f, _, t, v, _ = inputs
    scale = 1.0 / (f * v * np.sqrt(t))  # gamma × F σ√T = n(d1) is dimensionless
    _check("gamma", got.gamma, np.array([w["gamma"] for w in want]), scale, inputs)


def test_vega_matches_quantlib(grid_results):
    inputs, got, want = grid_results
    f, _, t, _, _ = inputs
    scale = f * np.sqrt(t) / 100.0  # vega / scale = n(d1)
    _check("vega per vol point", got.vega, np.array([w["vega"] for w in want]), scale, inputs)


def test_theta_matches_quantlib(grid_results):
    inputs, got, want = grid_results
    f, _, t, v, _ = inputs
    scale = f * v / (2.0 * np.sqrt(t)) / 365.0  # theta / scale = −n(d1)
    _check("theta per day", got.theta, np.array([w["theta"] for w in want]), scale, inputs)
    _check("theta vs thetaPerDay", got.theta, np.array([w["theta_per_day"] for w in want]), scale, inputs)
    _check("theta vs −vega·σ/(2T)", got.theta, np.array([w["theta_from_vega"] for w in want]), scale, inputs)


def test_put_call_parity_and_signs(grid_results):
    """r = 0: C − P = F − K, delta_C − delta_P = 1, equal gamma, vega and theta."""
    (f, k, _t, _v, c), got, _ = grid_results
    calls, puts = np.flatnonzero(c), np.flatnonzero(~c)
    assert np.array_equal(f[calls], f[puts]) and np.array_equal(k[calls], k[puts])
    np.testing.assert_allclose((got.price[calls] - got.price[puts]) / f[calls], 1.0 - k[calls] / f[calls], atol=TOL)
    np.testing.assert_allclose(got.delta[calls] - got.delta[puts], 1.0, atol=TOL)
    for name in ("gamma", "vega", "theta"):
        np.testing.assert_array_equal(getattr(got, name)[calls], getattr(got, name)[puts], err_msg=name)
    # >= / <= rather than strict: far out of the money at 1 day and 5% vol, n(d1) underflows to 0.
    assert (got.price >= 0).all() and (got.gamma >= 0).all() and (got.vega >= 0).all() and (got.theta <= 0).all()


# ------------------------------------------------------------------------------------------------
# At expiry (§5): intrinsic value and step deltas
# ------------------------------------------------------------------------------------------------

EXPIRY_CASES = [
    # forward, strike, is_call, price, delta
    (110.0, 100.0, True, 10.0, 1.0),
    (100.0, 100.0, True, 0.0, 0.0),  # at the money: F > K is false, so delta 0
    (90.0, 100.0, True, 0.0, 0.0),
    (110.0, 100.0, False, 0.0, 0.0),
    (100.0, 100.0, False, 0.0, 0.0),  # at the money: F < K is false, so delta 0
    (90.0, 100.0, False, 10.0, -1.0),
    (64_250.0, 32_125.0, True, 32_125.0, 1.0),
    (64_250.0, 128_500.0, False, 64_250.0, -1.0),
]


@pytest.mark.parametrize("time", [0.0, -1.0 / 365.0, -2.0])
@pytest.mark.parametrize(("forward", "strike", "is_call", "price", "delta"), EXPIRY_CASES)
def test_at_expiry(forward, strike, is_call, price, delta, time):
    for vol in (0.05, 0.8, 2.0):
        got = me.black76(forward, strike, time, vol, is_call)
        assert float(got.price) == price
        assert float(got.delta) == delta
        assert float(got.gamma) == 0.0
        assert float(got.vega) == 0.0
        assert float(got.theta) == 0.0
        option_type = ql.Option.Call if is_call else ql.Option.Put
        assert abs(float(got.price) - ql.blackFormula(option_type, strike, forward, 0.0, 1.0)) <= TOL * forward


def test_vectorized_at_expiry_mixed_with_live():
    """T = 0 elements do not disturb their live neighbours in one vectorized call."""
    f = np.array([100.0, 100.0, 100.0, 100.0])
    k = np.array([90.0, 90.0, 110.0, 110.0])
    t = np.array([0.0, 30 / 365, 0.0, 30 / 365])
    v = np.full(4, 0.6)
    c = np.array([True, True, False, False])
    got = me.black76(f, k, t, v, c)
    assert got.price[0] == 10.0 and got.delta[0] == 1.0 and got.gamma[0] == 0.0
    assert got.price[2] == 10.0 and got.delta[2] == -1.0 and got.theta[2] == 0.0
    for i in (1, 3):
        want = _quantlib(f[i], k[i], t[i], v[i], bool(c[i]))
        assert abs(got.price[i] - want["price"]) <= TOL * f[i]
        assert abs(got.delta[i] - want["delta"]) <= TOL
        assert got.gamma[i] > 0.0
