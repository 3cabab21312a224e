//! Initial margin of resting orders (docs/methodology.md §10, "Open orders").
//!
//! The worst case of Drift's and Mango's open-order margin: per *group* of an account's
//! positions, either every bid fills or every ask fills, whichever requires more, and the fill's
//! loss against the mark is charged too. A group is what the model margins on its own: one
//! instrument under the standard model, one underlying under the portfolio model (the bids, or
//! the asks, of all that underlying's instruments fill together and are revalued through the
//! scenarios with the positions). For one group `g`:
//!
//! ```text
//! B_i = Σ bids of instrument i, A_i = Σ asks (summed in input order)
//! fill_loss(side) = Σ over the side's orders of max(0, q × mult × (price − mark))
//! addon_g = max(0, IM_g(q + B) − IM_g(q) + fill_loss(bids), IM_g(q + A) − IM_g(q) + fill_loss(asks))
//! ```
//!
//! `IM_g` is the group's initial margin alone (standard: the position's; portfolio: `im_factor_u
//! × MM_u` of the underlying's positions). The account's initial margin is its positions' plus
//! `Σ_g addon_g`, groups in id order. A bid below the mark (an ask above it) has no fill loss:
//! it fills only once the market has come to it. Maintenance margin never sees orders.
//!
//! The Rust twin of `python/margin_engine/reference/orders.py`, with the same summation order.

use std::ops::Range;

use crate::book::Book;
use crate::market::Market;
use crate::portfolio::{positions_margin, RiskArrays};
use crate::rows::Orders;
use crate::standard::position_margin_in;
use crate::valuation::NetPosition;

/// Per-thread buffers: the account's order rows sorted by (group, instrument, row), and one
/// group's positions with a side filled.
#[derive(Default)]
pub struct OrderScratch {
    rows: Vec<(u32, u32, u32)>,
    filled: Vec<NetPosition>,
    /// Per instrument of one group: (instrument, Σ bids, Σ asks).
    sides: Vec<(u32, f64, f64)>,
    pnl: Vec<f64>,
}

/// The loss of an order filling at `price` against the mark: `max(0, q × mult × (price − mark))`.
#[inline]
pub fn fill_loss(quantity: f64, multiplier: f64, price: f64, mark: f64) -> f64 {
    (quantity * multiplier * (price - mark)).max(0.0)
}

/// The extra initial margin of the account's orders `rows` (see the module docs), `net` its
/// netted positions in instrument-id order, `risk` the portfolio model's arrays (`None`:
/// standard model). 0 without orders.
pub fn order_margin(
    book: &Book,
    market: &Market,
    risk: Option<&RiskArrays>,
    net: &[NetPosition],
    orders: &Orders,
    rows: Range<usize>,
    scratch: &mut OrderScratch,
) -> f64 {
    if rows.is_empty() {
        return 0.0;
    }
    let ins = &book.instruments;
    let group_of = |id: u32| if risk.is_some() { ins.underlying[id as usize] } else { id };
    scratch.rows.clear();
    scratch.rows.extend(rows.map(|r| (group_of(orders.instrument[r]), orders.instrument[r], r as u32)));
    scratch.rows.sort_unstable();
    let mut total = 0.0;
    let mut start = 0;
    while start < scratch.rows.len() {
        let g = scratch.rows[start].0;
        let end = start + scratch.rows[start..].partition_point(|r| r.0 == g);
        // per instrument of the group: its sides
        scratch.sides.clear();
        for &(_, id, r) in &scratch.rows[start..end] {
            let q = orders.quantity[r as usize];
            if scratch.sides.last().is_none_or(|s| s.0 != id) {
                scratch.sides.push((id, 0.0, 0.0));
            }
            let s = scratch.sides.last_mut().expect("pushed");
            if q > 0.0 {
                s.1 += q;
            } else {
                s.2 += q;
            }
        }
        let sides = side_losses(book, market, orders, &scratch.rows[start..end]);
        total += match risk {
            None => {
                let (id, bids, asks) = scratch.sides[0];
                instrument_addon(book, market, net, id, bids, asks, sides)
            }
            Some(risk) => underlying_addon(book, market, risk, net, g, &scratch.sides, sides, &mut scratch.filled, &mut scratch.pnl),
        };
        start = end;
    }
    total
}

/// (bid fill loss, ask fill loss) of a group's order rows, summed in (instrument, row) order.
fn side_losses(book: &Book, market: &Market, orders: &Orders, rows: &[(u32, u32, u32)]) -> (f64, f64) {
    let (mut bid, mut ask) = (0.0, 0.0);
    for &(_, id, r) in rows {
        let r = r as usize;
        let q = orders.quantity[r];
        let loss = fill_loss(q, book.contracts[id as usize].multiplier, orders.price[r], market.mark_price[id as usize]);
        if q > 0.0 {
            bid += loss;
        } else {
            ask += loss;
        }
    }
    (bid, ask)
}

/// `max(0, candidate_bid, candidate_ask)` as in the module docs.
#[inline]
fn worse(base: f64, with_bids: f64, with_asks: f64, (bid_loss, ask_loss): (f64, f64)) -> f64 {
    let bid = with_bids - base + bid_loss;
    let ask = with_asks - base + ask_loss;
    0.0f64.max(bid).max(ask)
}

/// Standard model: one instrument's position with all its bids, or all its asks, filled.
fn instrument_addon(book: &Book, market: &Market, net: &[NetPosition], id: u32, bids: f64, asks: f64, losses: (f64, f64)) -> f64 {
    let q = match net.binary_search_by_key(&id, |p| p.instrument) {
        Ok(k) => net[k].quantity,
        Err(_) => 0.0,
    };
    let i = id as usize;
    let mark = market.mark_price[i];
    let spot = market.index_price[book.contracts[i].underlying as usize];
    let im = |quantity: f64| position_margin_in(book, market, i, quantity, mark, spot).0;
    worse(im(q), im(q + bids), im(q + asks), losses)
}

/// Portfolio model: the underlying's positions with all its instruments' bids, or all asks, filled.
#[allow(clippy::too_many_arguments)]
fn underlying_addon(
    book: &Book,
    market: &Market,
    risk: &RiskArrays,
    net: &[NetPosition],
    u: u32,
    sides: &[(u32, f64, f64)],
    losses: (f64, f64),
    filled: &mut Vec<NetPosition>,
    pnl: &mut Vec<f64>,
) -> f64 {
    let ui = u as usize;
    let spot = market.index_price[ui];
    let factor = book.underlyings.risk[ui].im_factor;
    let mut im_with = |side: Option<bool>| -> f64 {
        // the underlying's positions (instrument order) merged with the side's order quantities
        filled.clear();
        let mut k = 0;
        let held = net.iter().filter(|p| book.instruments.underlying[p.instrument as usize] == u);
        for p in held {
            while k < sides.len() && sides[k].0 < p.instrument {
                push_side(filled, sides[k], 0.0, side);
                k += 1;
            }
            if k < sides.len() && sides[k].0 == p.instrument {
                push_side(filled, sides[k], p.quantity, side);
                k += 1;
            } else {
                filled.push(*p);
            }
        }
        while k < sides.len() {
            push_side(filled, sides[k], 0.0, side);
            k += 1;
        }
        factor * positions_margin(book, spot, risk, ui, filled.iter(), pnl).maintenance_margin
    };
    let base = im_with(None);
    let bids = im_with(Some(true));
    let asks = im_with(Some(false));
    worse(base, bids, asks, losses)
}

/// Pushes instrument `id`'s position `q` with the side's orders added (`None`: no fill).
#[inline]
fn push_side(filled: &mut Vec<NetPosition>, (id, bids, asks): (u32, f64, f64), q: f64, side: Option<bool>) {
    let quantity = match side {
        None => q,
        Some(true) => q + bids,
        Some(false) => q + asks,
    };
    filled.push(NetPosition { instrument: id, quantity, value: 0.0, coin: 0.0 });
}
