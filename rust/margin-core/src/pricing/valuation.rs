//! Netting and valuation (methodology §2): net positions per (account, instrument), unrealized
//! P&L and option value, and collateral under the initial / maintenance weight sets.

use std::ops::Range;

use crate::book::{size_premium_rate, Book, Kind};
use crate::market::Market;
use crate::rows::{Balances, Positions};

/// One netted position of an account.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct NetPosition {
    pub instrument: u32,
    /// `q = Σ quantity` over the account's rows of this instrument (never exactly 0 here).
    pub quantity: f64,
    /// Unrealized P&L (linear contracts with entry prices) or option value `q × mult × mark`,
    /// in USD (an inverse contract's coin value times its settlement coin's price).
    pub value: f64,
    /// An inverse contract's value in its settlement coin (0 for linear contracts): what a
    /// move revalues before converting at the moved coin price.
    pub coin: f64,
}

/// Reusable per-thread buffers, so that no account allocates.
#[derive(Default)]
pub struct Scratch {
    /// `instrument << 32 | row`: sorting these orders rows by instrument, then input order.
    rows: Vec<u64>,
    pub net: Vec<NetPosition>,
    /// P&L not carried by an open position's value: that of the account's linear positions
    /// that net to exactly 0 (realized but not yet settled, it stays in equity and collateral
    /// though the position carries no margin) and the rows' `unsettled_funding`.
    pub closed_pnl: f64,
    /// Inverse positions that net to exactly 0 with P&L: `(instrument, P&L in its settlement
    /// coin)`, in instrument-id order. Their USD value moves with the coin, so it is converted
    /// where the coin's price is known ([`closed_inverse_pnl`]), not summed into `closed_pnl`.
    pub closed_inverse: Vec<(u32, f64)>,
}

/// The USD value of `closed` (see [`Scratch::closed_inverse`]) at the market's settlement prices.
#[inline]
pub fn closed_inverse_pnl(closed: &[(u32, f64)], market: &Market) -> f64 {
    closed.iter().fold(0.0, |s, (id, coin)| s + coin * market.settlement_price[*id as usize])
}

/// Nets the account's position rows into `scratch.net`, in instrument-id order. Rows of one
/// instrument are summed in input order; a net of exactly 0 is dropped (§2.1), its P&L summed
/// into `scratch.closed_pnl` (in instrument-id order).
#[inline]
pub fn net_positions(rows: Range<usize>, positions: &Positions, book: &Book, market: &Market, scratch: &mut Scratch) {
    scratch.net.clear();
    scratch.closed_pnl = 0.0;
    scratch.closed_inverse.clear();
    // exports sorted by (account, instrument) are netted in one pass over the rows
    if net_sorted_rows(rows.clone(), positions, book, market, &mut scratch.net, &mut scratch.closed_pnl, &mut scratch.closed_inverse) {
        return;
    }
    scratch.net.clear();
    scratch.closed_pnl = 0.0;
    scratch.closed_inverse.clear();
    scratch.rows.clear();
    scratch.rows.extend(rows.map(|r| (positions.instrument.get(r) as u64) << 32 | r as u64));
    scratch.rows.sort_unstable();
    for group in scratch.rows.chunk_by(|a, b| a >> 32 == b >> 32) {
        let mut net = Netting::start((group[0] >> 32) as u32, book, market);
        for key in group {
            net.add((key & 0xFFFF_FFFF) as usize, positions);
        }
        net.finish(book, market, &mut scratch.net, &mut scratch.closed_pnl, &mut scratch.closed_inverse);
    }
}

/// Nets rows that are in instrument order, in one pass; `false` (with `net` partly filled) as
/// soon as a row's instrument comes before the previous row's.
#[inline(always)]
fn net_sorted_rows(
    rows: Range<usize>,
    positions: &Positions,
    book: &Book,
    market: &Market,
    net: &mut Vec<NetPosition>,
    closed_pnl: &mut f64,
    closed_inverse: &mut Vec<(u32, f64)>,
) -> bool {
    let Some(first) = rows.clone().next() else { return true };
    let mut current = Netting::start(positions.instrument.get(first), book, market);
    for r in rows {
        let id = positions.instrument.get(r);
        if id != current.instrument {
            if id < current.instrument {
                return false;
            }
            current.finish(book, market, net, closed_pnl, closed_inverse);
            current = Netting::start(id, book, market);
        }
        current.add(r, positions);
    }
    current.finish(book, market, net, closed_pnl, closed_inverse);
    true
}

/// The running net of one instrument's rows of an account: quantity and, for linear contracts
/// with entry prices, `Σ q × mult × (mark − entry)` summed in row order (an inverse contract:
/// `Σ q × mult × (1/entry − 1/mark)`, in coin), and the rows' unsettled funding.
struct Netting {
    instrument: u32,
    multiplier: f64,
    mark: f64,
    inverse: bool,
    quantity: f64,
    pnl: f64,
    funding: f64,
}

impl Netting {
    #[inline(always)]
    fn start(instrument: u32, book: &Book, market: &Market) -> Netting {
        let i = instrument as usize;
        let c = &book.contracts[i];
        Netting { instrument, multiplier: c.multiplier, mark: market.mark_price[i], inverse: c.inverse, quantity: 0.0, pnl: 0.0, funding: 0.0 }
    }

    #[inline(always)]
    fn add(&mut self, r: usize, positions: &Positions) {
        let q = positions.quantity[r];
        self.quantity += q;
        if let Some(entry) = &positions.entry_price {
            // a null entry price (read as NaN) is a row whose P&L is already settled
            let pnl = if self.inverse {
                q * self.multiplier * (1.0 / entry[r] - 1.0 / self.mark)
            } else {
                q * self.multiplier * (self.mark - entry[r])
            };
            self.pnl += if pnl.is_nan() { 0.0 } else { pnl };
        }
        if let Some(funding) = &positions.unsettled_funding {
            self.funding += funding[r]; // null read as 0
        }
    }

    /// Pushes the net position unless its quantity is exactly 0 (§2.1); the P&L of a linear
    /// position that nets to 0 goes to `closed_pnl` (an option's entry price carries no P&L),
    /// and so does the rows' unsettled funding, netted to 0 or not.
    #[inline(always)]
    fn finish(&self, book: &Book, market: &Market, net: &mut Vec<NetPosition>, closed_pnl: &mut f64, closed_inverse: &mut Vec<(u32, f64)>) {
        let id = self.instrument as usize;
        let option = book.contracts[id].kind == Kind::Option;
        if self.funding != 0.0 {
            *closed_pnl += self.funding;
        }
        if self.quantity == 0.0 {
            if !option && !self.inverse {
                *closed_pnl += self.pnl;
            } else if !option && self.pnl != 0.0 {
                closed_inverse.push((self.instrument, self.pnl));
            }
            return;
        }
        let position = if option {
            self.quantity * self.multiplier * self.mark
        } else {
            self.pnl // 0 without entry prices
        };
        let (value, coin) = if self.inverse { (position * market.settlement_price[id], position) } else { (position, 0.0) };
        net.push(NetPosition { instrument: self.instrument, quantity: self.quantity, value, coin });
    }
}

/// `|q| × multiplier × mark` (§2.2); an inverse contract's coin notional converted to USD at
/// its settlement coin's price (`|q| × mult / mark × price` for a perpetual or future,
/// `|q| × mult × mark × price` for a coin-settled option).
#[inline]
pub fn notional(book: &Book, market: &Market, p: &NetPosition) -> f64 {
    let id = p.instrument as usize;
    notional_at(book, id, p.quantity, market.mark_price[id], market.settlement_price[id])
}

/// [`notional`] of `quantity` contracts of `id` at this mark and settlement coin price (the
/// latter read for inverse contracts only).
#[inline]
pub fn notional_at(book: &Book, id: usize, quantity: f64, mark: f64, settlement_price: f64) -> f64 {
    let c = &book.contracts[id];
    match (c.inverse, c.kind.is_linear()) {
        (false, _) => quantity.abs() * c.multiplier * mark,
        (true, true) => quantity.abs() * c.multiplier / mark * settlement_price,
        (true, false) => quantity.abs() * c.multiplier * mark * settlement_price,
    }
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
#[inline(always)]
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
        // Drift's size premium on a borrow (0 = none: the weights themselves)
        let imf = a.liability_imf_factor[asset];
        Collateral {
            cash,
            weighted_initial: amount * price * size_premium_rate(a.initial_liability_weight[asset], imf, -amount),
            weighted_maintenance: amount * price * size_premium_rate(a.maintenance_liability_weight[asset], imf, -amount),
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
