//! Standard model (methodology §3): every netted position charged on its own.

use crate::book::{Book, Kind};
use crate::market::Market;
use crate::valuation::{notional, NetPosition};

/// (initial margin, maintenance margin) of one netted position.
pub fn position_margin(book: &Book, market: &Market, p: &NetPosition) -> (f64, f64) {
    let ins = &book.instruments;
    let id = p.instrument as usize;
    if ins.kind[id].is_linear() {
        let notional = notional(book, market, p);
        return match &ins.tiers[id] {
            Some(tiers) => tiers.margin(notional),
            None => (notional * ins.initial_margin_rate[id], notional * ins.maintenance_margin_rate[id]),
        };
    }
    debug_assert_eq!(ins.kind[id], Kind::Option);
    if p.quantity > 0.0 {
        return (0.0, 0.0); // long option: premium paid, its value is in equity
    }
    let spot = market.index_price[ins.underlying[id] as usize];
    let strike = ins.strike[id];
    let mark = market.mark_price[id];
    let out_of_the_money = if ins.is_call[id] { (strike - spot).max(0.0) } else { (spot - strike).max(0.0) };
    let im_per_contract =
        mark + (ins.initial_margin_rate[id] * spot - out_of_the_money).max(ins.initial_margin_floor[id] * spot);
    let mm_per_contract = mark + ins.maintenance_margin_rate[id] * spot;
    let contracts = p.quantity.abs() * ins.multiplier[id];
    (contracts * im_per_contract, contracts * mm_per_contract)
}
