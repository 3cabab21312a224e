//! Netting and valuation (methodology §2): net positions per (account, instrument), unrealized
//! P&L and option value, and collateral under the initial / maintenance weight sets.

use std::ops::Range;

use crate::book::{Book, Kind};
use crate::market::Market;
use crate::rows::{Balances, Positions};

/// One netted position of an account.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NetPosition {
    pub instrument: u32,
    /// `q = Σ quantity` over the account's rows of this instrument (never exactly 0 here).
    pub quantity: f64,
    /// Unrealized P&L (linear contracts with entry prices) or option value `q × mult × mark`.
    pub value: f64,
}

/// Reusable per-thread buffers, so that no account allocates.
#[derive(Default)]
pub struct Scratch {
    /// `instrument << 32 | row`: sorting these orders rows by instrument, then input order.
    rows: Vec<u64>,
    pub net: Vec<NetPosition>,
}

/// Nets the account's position rows into `scratch.net`, in instrument-id order. Rows of one
/// instrument are summed in input order; a net of exactly 0 is dropped (§2.1).
#[inline]
pub fn net_positions(rows: Range<usize>, positions: &Positions, book: &Book, market: &Market, scratch: &mut Scratch) {
    let ins = &book.instruments;
    scratch.net.clear();
    scratch.rows.clear();
    scratch.rows.extend(rows.map(|r| (positions.instrument.get(r) as u64) << 32 | r as u64));
    // exports sorted by (account, instrument) skip the sort
    if !scratch.rows.is_sorted() {
        scratch.rows.sort_unstable();
    }
    let q = &positions.quantity;
    for group in scratch.rows.chunk_by(|a, b| a >> 32 == b >> 32) {
        let id = (group[0] >> 32) as usize;
        let row = |key: &u64| (key & 0xFFFF_FFFF) as usize;
        let mut quantity = 0.0;
        for key in group {
            quantity += q[row(key)];
        }
        if quantity == 0.0 {
            continue;
        }
        let multiplier = ins.multiplier[id];
        let mark = market.mark_price[id];
        let value = if ins.kind[id] == Kind::Option {
            quantity * multiplier * mark
        } else if let Some(entry) = &positions.entry_price {
            let mut pnl = 0.0;
            for key in group {
                let r = row(key);
                pnl += q[r] * multiplier * (mark - entry[r]);
            }
            pnl
        } else {
            0.0
        };
        scratch.net.push(NetPosition { instrument: id as u32, quantity, value });
    }
}

/// `|q| × multiplier × mark` (§2.2).
#[inline]
pub fn notional(book: &Book, market: &Market, p: &NetPosition) -> f64 {
    let id = p.instrument as usize;
    p.quantity.abs() * book.instruments.multiplier[id] * market.mark_price[id]
}

/// An account's balances valued (§2.5): cash at full price and the two weighted sums.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Collateral {
    pub cash: f64,
    pub weighted_initial: f64,
    pub weighted_maintenance: f64,
}

/// Weight of a holding after the size premium (§2.5): `min(w, 1.1 / (1 + sp × sqrt(amount)))`.
#[inline]
pub fn size_adjusted_weight(weight: f64, size_premium: f64, amount: f64) -> f64 {
    if size_premium > 0.0 {
        weight.min(1.1 / (1.0 + size_premium * amount.sqrt()))
    } else {
        weight
    }
}

/// Values one balance: (cash, weighted initial, weighted maintenance), with `price` the asset's
/// price (passed in so stress scenarios can move it).
#[inline]
pub fn value_balance(book: &Book, asset: usize, amount: f64, price: f64) -> Collateral {
    let a = &book.assets;
    let cash = amount * price;
    if amount > 0.0 {
        let sp = a.size_premium[asset];
        Collateral {
            cash,
            weighted_initial: amount * price * size_adjusted_weight(a.initial_weight[asset], sp, amount),
            weighted_maintenance: amount * price * size_adjusted_weight(a.maintenance_weight[asset], sp, amount),
        }
    } else if amount < 0.0 {
        Collateral {
            cash,
            weighted_initial: amount * price * a.initial_liability_weight[asset],
            weighted_maintenance: amount * price * a.maintenance_liability_weight[asset],
        }
    } else {
        Collateral::default()
    }
}

/// Sums the account's balances in asset-id order. Returns the asset id of a repeated
/// (account, asset) pair as an error, to be reported by the caller.
#[inline]
pub fn value_balances(
    rows: Range<usize>,
    balances: &Balances,
    book: &Book,
    asset_price: &[f64],
    scratch: &mut Vec<(u32, u32)>,
) -> Result<Collateral, u32> {
    scratch.clear();
    scratch.extend(rows.map(|r| (balances.asset[r], r as u32)));
    scratch.sort_unstable();
    let mut total = Collateral::default();
    for (k, (asset, r)) in scratch.iter().enumerate() {
        if k > 0 && scratch[k - 1].0 == *asset {
            return Err(*asset);
        }
        let asset = *asset as usize;
        let v = value_balance(book, asset, balances.amount[*r as usize], asset_price[asset]);
        total.cash += v.cash;
        total.weighted_initial += v.weighted_initial;
        total.weighted_maintenance += v.weighted_maintenance;
    }
    Ok(total)
}

/// Scratch for balances, kept beside [`Scratch`].
pub type BalanceScratch = Vec<(u32, u32)>;
