"""Differential tests: the Rust engine against the pure-Python reference, on random valid books
(hypothesis, >= 200 examples per model function). Agreement to 1e-9 relative (1e-9 absolute near
zero), status and keys exactly."""

from __future__ import annotations

import numpy as np
from conftest import assert_tables_close, engine_objects
from hypothesis import given
from strategies import black76_arrays, books

import margin_engine as me
from margin_engine import reference


@given(books())
def test_standard_margin_matches_reference(example):
    book, market = engine_objects(example)
    got = me.margin(book, example["positions"], example["balances"], market, model="standard")
    want = reference.margin(book, example["positions"], example["balances"], market, model="standard")
    assert_tables_close(got, want)


@given(books())
def test_portfolio_margin_matches_reference(example):
    book, market = engine_objects(example)
    got = me.margin(book, example["positions"], example["balances"], market, model="portfolio")
    want = reference.margin(book, example["positions"], example["balances"], market, model="portfolio")
    assert_tables_close(got, want)


@given(books())
def test_greeks_match_reference(example):
    book, market = engine_objects(example)
    got = me.greeks(book, example["positions"], market)
    want = reference.greeks(book, example["positions"], market)
    assert_tables_close(got, want)


@given(books(max_accounts=3))
def test_risk_arrays_match_reference(example):
    book, market = engine_objects(example)
    assert_tables_close(me.risk_arrays(book, market), reference.risk_arrays(book, market))


@given(black76_arrays())
def test_black76_matches_reference(arrays):
    got = me.black76(*arrays)
    want = reference.black76(*arrays)
    for name in got._fields:
        np.testing.assert_allclose(getattr(got, name), getattr(want, name), rtol=1e-9, atol=1e-12, err_msg=name)
