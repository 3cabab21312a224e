//! Standard model (methodology §3): every netted position charged on its own.
//!
//! An inverse (coin-settled) contract is charged in its coin, then converted at the settlement
//! coin's price: a perpetual or future on its coin notional `|q| × mult / mark` (tiers read coin
//! notional too, as venues' risk limits for inverse contracts do); a short coin-settled option,
//! Deribit's rule per contract, `IM = mark + max(imr − OTM/S, floor)` and `MM = mark + mmr`, in
//! coin (`mark` in coin, `OTM/S` the out-of-the-money amount as a share of the index).

use crate::book::{size_premium_rate, Book, Kind};
use crate::market::Market;
use crate::valuation::NetPosition;

/// (initial margin, maintenance margin) of one netted position.
#[inline(always)]
pub fn position_margin(book: &Book, market: &Market, p: &NetPosition) -> (f64, f64) {
    let id = p.instrument as usize;
    let spot = market.index_price[book.contracts[id].underlying as usize];
    position_margin_in(book, market, id, p.quantity, market.mark_price[id], spot)
}

/// [`position_margin_at`] in this market: the settlement coin's price of an inverse contract,
/// and the market's open-interest-scaled initial margin rate of instrument `id` where it has one
/// (dYdX, `Market::initial_margin_rate`).
#[inline(always)]
pub fn position_margin_in(book: &Book, market: &Market, id: usize, quantity: f64, mark: f64, spot: f64) -> (f64, f64) {
    let settlement_price = market.settlement_price[id];
    match &market.initial_margin_rate {
        None => position_margin_at(book, id, quantity, mark, spot, settlement_price),
        Some(rates) => position_margin_with(book, id, quantity, mark, spot, settlement_price, rates[id]),
    }
}

/// (IM, MM) of `quantity` contracts of instrument `id` at this mark, index price and (inverse
/// contracts only) settlement coin price, at the instrument's own initial margin rate
/// (maintenance margin never depends on open interest).
#[inline(always)]
pub fn position_margin_at(book: &Book, id: usize, quantity: f64, mark: f64, spot: f64, settlement_price: f64) -> (f64, f64) {
    position_margin_with(book, id, quantity, mark, spot, settlement_price, book.contracts[id].initial_margin_rate)
}

/// [`position_margin_at`] with `initial_rate` as a linear contract's initial margin rate.
#[inline(always)]
fn position_margin_with(book: &Book, id: usize, quantity: f64, mark: f64, spot: f64, settlement_price: f64, initial_rate: f64) -> (f64, f64) {
    let c = &book.contracts[id];
    if c.inverse {
        return inverse_position_margin(book, id, quantity, mark, spot, settlement_price, initial_rate);
    }
    if c.kind.is_linear() {
        let notional = quantity.abs() * c.multiplier * mark;
        if c.tiered {
            if let Some(tiers) = &book.instruments.tiers[id] {
                return tiers.margin(notional);
            }
        }
        if c.imf_factor > 0.0 {
            // Drift's size premium, on both rates, size in units of the underlying
            let size = quantity.abs() * c.multiplier;
            let im = size_premium_rate(initial_rate, c.imf_factor, size);
            let mm = size_premium_rate(c.maintenance_margin_rate, c.imf_factor, size);
            return (notional * im, notional * mm);
        }
        return (notional * initial_rate, notional * c.maintenance_margin_rate);
    }
    debug_assert_eq!(c.kind, Kind::Option);
    let strike = c.strike;
    let out_of_the_money = if c.is_call { (strike - spot).max(0.0) } else { (spot - strike).max(0.0) };
    let im_per_contract = mark + (c.initial_margin_rate * spot - out_of_the_money).max(c.initial_margin_floor * spot);
    let mm_per_contract = mark + c.maintenance_margin_rate * spot;
    let contracts = quantity.abs() * c.multiplier;
    // long option: premium paid, its value is in equity. Long and short options come in no
    // predictable order, so both are computed and one selected rather than branched on.
    let long = quantity > 0.0;
    (select(long, 0.0, contracts * im_per_contract), select(long, 0.0, contracts * mm_per_contract))
}

/// (IM, MM) in USD of an inverse position: its coin margin times the coin's price.
#[cold]
fn inverse_position_margin(book: &Book, id: usize, quantity: f64, mark: f64, spot: f64, settlement_price: f64, initial_rate: f64) -> (f64, f64) {
    let c = &book.contracts[id];
    if c.kind.is_linear() {
        let coin_notional = quantity.abs() * c.multiplier / mark;
        let (im, mm) = match (c.tiered, &book.instruments.tiers[id]) {
            (true, Some(tiers)) => tiers.margin(coin_notional),
            _ => (coin_notional * initial_rate, coin_notional * c.maintenance_margin_rate),
        };
        return (im * settlement_price, mm * settlement_price);
    }
    if quantity > 0.0 {
        return (0.0, 0.0); // long option: premium paid, its value is in equity
    }
    let out_of_the_money = if c.is_call { (c.strike - spot).max(0.0) } else { (spot - c.strike).max(0.0) };
    let im_per_contract = mark + (c.initial_margin_rate - out_of_the_money / spot).max(c.initial_margin_floor);
    let mm_per_contract = mark + c.maintenance_margin_rate;
    let contracts = quantity.abs() * c.multiplier;
    (contracts * im_per_contract * settlement_price, contracts * mm_per_contract * settlement_price)
}

/// `if condition { a } else { b }`, written so that it compiles to a select, not a branch.
#[inline(always)]
fn select(condition: bool, a: f64, b: f64) -> f64 {
    let mask = (condition as u64).wrapping_neg();
    f64::from_bits((a.to_bits() & mask) | (b.to_bits() & !mask))
}
