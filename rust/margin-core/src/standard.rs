//! Standard model (methodology §3): every netted position charged on its own.

use crate::book::{Book, Kind};
use crate::market::Market;
use crate::valuation::NetPosition;

/// (initial margin, maintenance margin) of one netted position.
#[inline]
pub fn position_margin(book: &Book, market: &Market, p: &NetPosition) -> (f64, f64) {
    let id = p.instrument as usize;
    let spot = market.index_price[book.instruments.underlying[id] as usize];
    position_margin_at(book, id, p.quantity, market.mark_price[id], spot)
}

/// (IM, MM) of `quantity` contracts of instrument `id` at this mark and index price.
#[inline]
pub fn position_margin_at(book: &Book, id: usize, quantity: f64, mark: f64, spot: f64) -> (f64, f64) {
    let ins = &book.instruments;
    if ins.kind[id].is_linear() {
        let notional = quantity.abs() * ins.multiplier[id] * mark;
        return match &ins.tiers[id] {
            Some(tiers) => tiers.margin(notional),
            None => (notional * ins.initial_margin_rate[id], notional * ins.maintenance_margin_rate[id]),
        };
    }
    debug_assert_eq!(ins.kind[id], Kind::Option);
    if quantity > 0.0 {
        return (0.0, 0.0); // long option: premium paid, its value is in equity
    }
    let strike = ins.strike[id];
    let out_of_the_money = if ins.is_call[id] { (strike - spot).max(0.0) } else { (spot - strike).max(0.0) };
    let im_per_contract =
        mark + (ins.initial_margin_rate[id] * spot - out_of_the_money).max(ins.initial_margin_floor[id] * spot);
    let mm_per_contract = mark + ins.maintenance_margin_rate[id] * spot;
    let contracts = quantity.abs() * ins.multiplier[id];
    (contracts * im_per_contract, contracts * mm_per_contract)
}
