//! Greeks aggregation (methodology §7): per account × underlying, Σ q · multiplier · Greek.
//!
//! An inverse perpetual or future has delta `1 / mark` per contract (a contract of face value
//! `mult` USD is `mult / mark` coins of the underlying: its USD value moves like that many
//! coins); a coin-settled option has its Black-76 Greeks, as its USD value is the Black-76 price
//! when the coin is worth its index.

use crate::black76;
use crate::book::{Book, Kind};
use crate::market::{Market, SuppliedGreeks};
use crate::valuation::{notional, NetPosition};

/// Per-contract Greeks of every instrument, computed once per call: Black-76 for options (or the
/// supplied ones), delta 1 for perpetuals and futures. Instruments without market data get 0.
pub fn instrument_greeks(book: &Book, market: &Market) -> Vec<SuppliedGreeks> {
    let ins = &book.instruments;
    (0..ins.len())
        .map(|id| {
            if ins.kind[id].is_linear() {
                // an inverse contract of face value mult USD holds mult / mark coins of exposure
                let delta = if ins.inverse[id] { 1.0 / market.mark_price[id] } else { 1.0 };
                return SuppliedGreeks { delta, gamma: 0.0, vega: 0.0, theta: 0.0 };
            }
            if let Some(Some(g)) = market.greeks.as_ref().map(|g| g[id]) {
                return g;
            }
            let spot = market.index_price[ins.underlying[id] as usize];
            let vol = market.implied_vol[id];
            if spot.is_nan() || vol.is_nan() {
                return SuppliedGreeks { delta: 0.0, gamma: 0.0, vega: 0.0, theta: 0.0 };
            }
            let g = black76::greeks(spot, ins.strike[id], market.time_to_expiry[id], vol, ins.is_call[id]);
            SuppliedGreeks { delta: g.delta, gamma: g.gamma, vega: g.vega, theta: g.theta }
        })
        .collect()
}

/// One output row of `greeks`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GreeksRow {
    pub account_id: u64,
    pub underlying: u32,
    pub delta: f64,
    pub delta_usd: f64,
    pub gamma: f64,
    pub gamma_usd: f64,
    pub vega: f64,
    pub theta: f64,
    pub long_notional: f64,
    pub short_notional: f64,
}

/// Appends one row per underlying of the account's netted positions (sorted by underlying id).
pub fn account_greeks(
    account_id: u64,
    net: &[NetPosition],
    book: &Book,
    market: &Market,
    per_contract: &[SuppliedGreeks],
    out: &mut Vec<GreeksRow>,
) {
    let ins = &book.instruments;
    let first = out.len();
    for p in net {
        let id = p.instrument as usize;
        let u = ins.underlying[id];
        let row = match out[first..].iter_mut().find(|r| r.underlying == u) {
            Some(r) => r,
            None => {
                out.push(GreeksRow {
                    account_id,
                    underlying: u,
                    delta: 0.0,
                    delta_usd: 0.0,
                    gamma: 0.0,
                    gamma_usd: 0.0,
                    vega: 0.0,
                    theta: 0.0,
                    long_notional: 0.0,
                    short_notional: 0.0,
                });
                out.last_mut().expect("just pushed")
            }
        };
        let g = &per_contract[id];
        let size = p.quantity * ins.multiplier[id];
        row.delta += size * g.delta;
        row.gamma += size * g.gamma;
        row.vega += size * g.vega;
        row.theta += size * g.theta;
        if p.quantity > 0.0 {
            row.long_notional += notional(book, market, p);
        } else {
            row.short_notional += notional(book, market, p);
        }
        debug_assert!(ins.kind[id] == Kind::Option || ins.inverse[id] || g.delta == 1.0);
    }
    out[first..].sort_unstable_by_key(|r| r.underlying);
    for row in &mut out[first..] {
        let spot = market.index_price[row.underlying as usize];
        row.delta_usd = row.delta * spot;
        row.gamma_usd = row.gamma * spot * spot / 100.0;
    }
}
