//! Standard model (methodology §3): every netted position charged on its own.

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

/// [`position_margin_at`] with the market's open-interest-scaled initial margin rate of
/// instrument `id` where it has one (dYdX, `Market::initial_margin_rate`).
#[inline(always)]
pub fn position_margin_in(book: &Book, market: &Market, id: usize, quantity: f64, mark: f64, spot: f64) -> (f64, f64) {
    match &market.initial_margin_rate {
        None => position_margin_at(book, id, quantity, mark, spot),
        Some(rates) => position_margin_with(book, id, quantity, mark, spot, rates[id]),
    }
}

/// (IM, MM) of `quantity` contracts of instrument `id` at this mark and index price (the
/// instrument's own initial margin rate: maintenance margin never depends on open interest).
#[inline(always)]
pub fn position_margin_at(book: &Book, id: usize, quantity: f64, mark: f64, spot: f64) -> (f64, f64) {
    position_margin_with(book, id, quantity, mark, spot, book.contracts[id].initial_margin_rate)
}

/// [`position_margin_at`] with `initial_rate` as a linear contract's initial margin rate.
#[inline(always)]
fn position_margin_with(book: &Book, id: usize, quantity: f64, mark: f64, spot: f64, initial_rate: f64) -> (f64, f64) {
    let c = &book.contracts[id];
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

/// `if condition { a } else { b }`, written so that it compiles to a select, not a branch.
#[inline(always)]
fn select(condition: bool, a: f64, b: f64) -> f64 {
    let mask = (condition as u64).wrapping_neg();
    f64::from_bits((a.to_bits() & mask) | (b.to_bits() & !mask))
}
