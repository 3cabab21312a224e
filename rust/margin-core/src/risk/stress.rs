//! Market stress (docs/methodology.md §8): move underlyings by relative amounts and revalue.
//!
//! Under a move `m` of underlying `u`: its index price becomes `S (1 + m)`; perpetual and future
//! marks move by the same factor; option marks move by the Black-76 change
//! `B76(S (1 + m)) − B76(S)` at unchanged implied vol and expiry (floored at 0: a price never
//! goes negative); collateral assets linked to `u` move by `(1 + m)`. A netted position keeps its
//! current value plus the change of its mark (`q × mult × (mark' − mark)` for linear contracts,
//! `q × mult × mark'` for options), so P&L counts whether or not entry prices were given.
//!
//! Inverse (coin-settled) contracts are revalued in their coin, then converted at the moved
//! coin price (the settlement asset is linked to the contract's underlying, so it moves by
//! `(1 + m)` too): a perpetual or future keeps its coin P&L plus `q × mult × (1/mark − 1/mark')`;
//! a coin-settled option's coin mark moves by Black-76 in USD, `max(0, mark × S + B76(S') −
//! B76(S)) / S'`.

use crate::black76;
use crate::book::Book;
use crate::market::Market;
use crate::valuation::NetPosition;

/// The market with each underlying `u` moved by `moves[u]` (0 = unchanged).
pub fn stress_market(book: &Book, market: &Market, moves: &[f64]) -> Market {
    let ins = &book.instruments;
    let mut out = market.clone();
    for (u, m) in moves.iter().enumerate() {
        out.index_price[u] = moved_price(market.index_price[u], *m);
    }
    for id in 0..ins.len() {
        let u = ins.underlying[id] as usize;
        out.mark_price[id] = stressed_mark(book, market, id, moves[u], out.index_price[u]);
        if ins.inverse[id] {
            out.settlement_price[id] = moved_price(market.settlement_price[id], moves[u]);
        }
        // an expiry's forward moves with its index (its fixed part does not)
        if let Some(feed) = out.expiry_feed[id].as_mut() {
            feed.forward_variable = moved_price(feed.forward_variable, moves[u]);
            out.expiry_forward[id] = feed.forward();
        }
    }
    out
}

/// The mark of instrument `id` when its underlying moves by `m`, to index price `moved_spot`
/// (`S (1 + m)`, or `S` itself when `m` is 0): unchanged without a move or a mark.
#[inline]
pub fn stressed_mark(book: &Book, market: &Market, id: usize, m: f64, moved_spot: f64) -> f64 {
    let ins = &book.instruments;
    let mark = market.mark_price[id];
    if m == 0.0 || mark.is_nan() {
        return mark;
    }
    if ins.kind[id].is_linear() {
        mark * (1.0 + m)
    } else {
        let (strike, time, vol, call) = (ins.strike[id], market.time_to_expiry[id], market.implied_vol[id], ins.is_call[id]);
        let spot = market.index_price[ins.underlying[id] as usize];
        let before = black76::price(spot, strike, time, vol, call);
        let after = black76::price(moved_spot, strike, time, vol, call);
        if ins.inverse[id] {
            // a coin mark per coin: to USD at the index, moved, back to coin at the moved index
            (mark * spot + (after - before)).max(0.0) / moved_spot
        } else {
            (mark + (after - before)).max(0.0)
        }
    }
}

/// The index price of an underlying moved by `m` (unchanged when `m` is 0).
#[inline]
pub fn moved_price(price: f64, m: f64) -> f64 {
    if m != 0.0 {
        price * (1.0 + m)
    } else {
        price
    }
}

/// Collateral asset prices with assets linked to a moved underlying moved too.
pub fn stress_asset_prices(book: &Book, moves: &[f64]) -> Vec<f64> {
    let a = &book.assets;
    a.price
        .iter()
        .zip(&a.underlying)
        .map(|(price, u)| match u {
            Some(u) => moved_price(*price, moves[*u as usize]),
            None => *price,
        })
        .collect()
}

/// The position valued at `stressed` marks, from its value at `base` marks.
#[inline]
pub fn revalue(book: &Book, base: &Market, stressed: &Market, p: &NetPosition) -> NetPosition {
    let id = p.instrument as usize;
    let ins = &book.instruments;
    if ins.inverse[id] {
        let (value, coin) = inverse_value_at(book, base, id, p, stressed.mark_price[id], stressed.settlement_price[id]);
        return NetPosition { value, coin, ..*p };
    }
    let value = if ins.kind[id].is_linear() {
        p.value + p.quantity * ins.multiplier[id] * (stressed.mark_price[id] - base.mark_price[id])
    } else {
        p.quantity * ins.multiplier[id] * stressed.mark_price[id]
    };
    NetPosition { value, ..*p }
}

/// (USD value, coin value) of an inverse position valued at `base` when its mark becomes `mark`
/// and its settlement coin's price `coin_price`: a perpetual or future adds the coin P&L of the
/// move, `q × mult × (1/mark_base − 1/mark)`; an option is worth `q × mult × mark` coins.
#[inline]
pub fn inverse_value_at(book: &Book, base: &Market, id: usize, p: &NetPosition, mark: f64, coin_price: f64) -> (f64, f64) {
    let multiplier = book.instruments.multiplier[id];
    let coin = if book.instruments.kind[id].is_linear() {
        p.coin + p.quantity * multiplier * (1.0 / base.mark_price[id] - 1.0 / mark)
    } else {
        p.quantity * multiplier * mark
    };
    (coin * coin_price, coin)
}

/// Relative moves per underlying id from `(underlying name, move)` pairs: unknown underlyings,
/// repeated ones, and moves that are not finite or not above −100% are errors.
pub fn moves_by_underlying(book: &Book, named: &[(String, f64)]) -> crate::Result<Vec<f64>> {
    use crate::error::Offenders;
    let mut moves = vec![0.0; book.underlyings.names.len()];
    let mut seen = vec![false; moves.len()];
    let (mut unknown, mut repeated, mut bad) = (Offenders::default(), Offenders::default(), Offenders::default());
    for (name, m) in named {
        match book.underlyings.index.get_str(name) {
            None => unknown.push(|| format!("'{name}'")),
            Some(u) => {
                let u = u as usize;
                if seen[u] {
                    repeated.push(|| format!("'{name}'"));
                }
                seen[u] = true;
                if !(m.is_finite() && *m > -1.0) {
                    bad.push(|| format!("'{name}' = {m}"));
                }
                moves[u] = *m;
            }
        }
    }
    unknown.into_result("stress", "underlying", "unknown underlying (not in the book)")?;
    repeated.into_result("stress", "underlying", "underlying given twice")?;
    bad.into_result("stress", "move", "moves must be finite and > -1 (a relative change: -0.2 is a 20% drop)")?;
    Ok(moves)
}
