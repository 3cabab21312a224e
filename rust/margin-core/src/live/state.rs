//! The live book's state: each account's position rows and balances, its resting orders, and
//! its last margin row.
//!
//! An account's rows are kept as `me.margin` would read them from the tables rebuilt from the
//! events (docs/live.md, "From events to rows"): the position rows of one instrument in the
//! order they arrived (the initial table's rows, then one row per fill), instruments in id order;
//! one balance per asset, in asset-id order. Netting sums the rows of one instrument in row order
//! and instruments in id order (pricing::valuation), and balances are valued in asset-id order,
//! so this order gives exactly the sums of the rebuilt tables. Rows are never merged: a row's P&L
//! at a new mark, `q × mult × (mark − entry)`, summed row by row, is not bit-equal to any
//! compacted form.

use std::borrow::Cow;

use rustc_hash::FxHashMap;

use crate::accounts::AccountSlot;
use crate::book::Book;
use crate::engine::{AccountScratch, Pricing};
use crate::results::AccountRow;
use crate::rows::{Balances, InstrumentIds, Orders, Positions};

use super::index::Exposure;

/// One position row: a row of the initial positions table or a fill.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PositionRow {
    pub instrument: u32,
    pub quantity: f64,
    /// NaN: null (the row's P&L is settled; the initial table had no entry price for it).
    pub entry_price: f64,
}

/// A resting order (kept, journaled and snapshotted; see docs/live.md on issue 14).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RestingOrder {
    pub order_id: u64,
    pub instrument: u32,
    pub quantity: f64,
    pub price: f64,
}

/// One account's rows.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Account {
    pub id: u64,
    /// By instrument id; the rows of one instrument in arrival order.
    pub positions: Vec<PositionRow>,
    /// `(asset id, amount)`, by asset id, one per asset.
    pub balances: Vec<(u32, f64)>,
    /// In placement order.
    pub orders: Vec<RestingOrder>,
}

impl Account {
    pub fn new(id: u64) -> Account {
        Account { id, ..Account::default() }
    }

    /// Appends a row after the account's last row of the same instrument.
    pub fn add_position(&mut self, row: PositionRow) {
        let at = self.positions.partition_point(|r| r.instrument <= row.instrument);
        self.positions.insert(at, row);
    }

    pub fn balance(&self, asset: u32) -> Option<f64> {
        self.balances.binary_search_by_key(&asset, |b| b.0).ok().map(|i| self.balances[i].1)
    }

    /// `amount += delta` for the asset's balance, or a new balance of `delta`.
    pub fn add_to_balance(&mut self, asset: u32, delta: f64) {
        match self.balances.binary_search_by_key(&asset, |b| b.0) {
            Ok(i) => self.balances[i].1 += delta,
            Err(i) => self.balances.insert(i, (asset, delta)),
        }
    }

    /// Whether the account appears in `me.margin`'s output (it has a position or a balance row).
    pub fn exists(&self) -> bool {
        !self.positions.is_empty() || !self.balances.is_empty()
    }
}

/// Per-thread buffers: the account's rows copied into the tables the engine reads.
pub struct Scratch {
    positions: Positions<'static>,
    balances: Balances<'static>,
    orders: Orders<'static>,
    account: AccountScratch,
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch {
            positions: Positions::one_account(Vec::new(), Vec::new(), Some(Vec::new())),
            balances: Balances::one_account(Vec::new(), Vec::new()),
            orders: Orders::one_account(Vec::new(), Vec::new(), Vec::new()),
            account: AccountScratch::default(),
        }
    }
}

/// The account's margin row, computed by the engine's own per-account path
/// ([`Pricing::account`], as `me.margin` computes it) on the account's rows. Entry prices are
/// always passed, NaN for null: the engine reads a null entry as "P&L settled", which adds
/// exactly what a table without the column adds (nothing).
pub fn margin_account(pricing: &Pricing, a: &Account, s: &mut Scratch) -> AccountRow {
    if let InstrumentIds::Dense(ids) = &mut s.positions.instrument {
        ids.clear();
        ids.extend(a.positions.iter().map(|r| r.instrument));
    }
    let q = s.positions.quantity.to_mut();
    q.clear();
    q.extend(a.positions.iter().map(|r| r.quantity));
    let e = s.positions.entry_price.get_or_insert_with(|| Cow::Owned(Vec::new())).to_mut();
    e.clear();
    e.extend(a.positions.iter().map(|r| r.entry_price));
    s.balances.asset.clear();
    s.balances.asset.extend(a.balances.iter().map(|b| b.0));
    let amount = s.balances.amount.to_mut();
    amount.clear();
    amount.extend(a.balances.iter().map(|b| b.1));
    let slot = AccountSlot::new(a.id, 0..a.positions.len(), 0..a.balances.len());
    // resting orders add their initial margin (crate::orders), as `me.margin(orders=)` does
    let orders = if a.orders.is_empty() {
        None
    } else {
        s.orders.instrument.clear();
        s.orders.instrument.extend(a.orders.iter().map(|o| o.instrument));
        let q = s.orders.quantity.to_mut();
        q.clear();
        q.extend(a.orders.iter().map(|o| o.quantity));
        let p = s.orders.price.to_mut();
        p.clear();
        p.extend(a.orders.iter().map(|o| o.price));
        Some((&s.orders, 0..a.orders.len()))
    };
    // balances are one per asset by construction: the duplicate error cannot arise
    pricing
        .account_full(&slot, &s.positions, &s.balances, 0.0, orders, &mut s.account)
        .unwrap_or_else(|_| AccountRow::new(a.id, Default::default(), f64::NAN, f64::NAN, f64::NAN))
}

/// `Σ |amount| × price × max(1, liability weights)`: finite means the engine's balance sums
/// cannot overflow (the bound `me.margin` checks, rows::Balances::check_magnitude).
pub fn balance_bound(book: &Book, a: &Account) -> f64 {
    let assets = &book.assets;
    a.balances
        .iter()
        .map(|(asset, amount)| {
            let id = *asset as usize;
            let w = assets.initial_liability_weight[id].max(assets.maintenance_liability_weight[id]).max(1.0);
            amount.abs() * assets.price[id] * w
        })
        .sum()
}

/// Every account, its last margin row, and the indexes over them.
#[derive(Default)]
pub struct State {
    pub accounts: Vec<Account>,
    /// `rows[i]`: the margin row of `accounts[i]` at the current market.
    pub rows: Vec<AccountRow>,
    pub by_id: FxHashMap<u64, u32>,
    /// Resting order id → account index.
    pub orders: FxHashMap<u64, u32>,
    pub exposure: Exposure,
    /// Account indexes by account id, when known to be current.
    sorted: Option<Vec<u32>>,
}

impl State {
    pub fn new(book: &Book) -> State {
        State { exposure: Exposure::new(book), ..State::default() }
    }

    pub fn reserve(&mut self, n: usize) {
        self.accounts.reserve(n);
        self.rows.reserve(n);
        self.by_id.reserve(n);
    }

    pub fn index_of(&self, id: u64) -> Option<u32> {
        self.by_id.get(&id).copied()
    }

    /// Adds a new account (its row filled in by the caller).
    pub fn push(&mut self, book: &Book, account: Account, row: AccountRow) -> u32 {
        let i = self.accounts.len() as u32;
        self.exposure.add(book, i, None, &account);
        for o in &account.orders {
            self.orders.insert(o.order_id, i);
        }
        self.by_id.insert(account.id, i);
        if let Some(sorted) = &mut self.sorted {
            if sorted.last().is_none_or(|last| self.accounts[*last as usize].id < account.id) {
                sorted.push(i);
            } else {
                self.sorted = None;
            }
        }
        self.accounts.push(account);
        self.rows.push(row);
        i
    }

    /// Replaces account `i` by its new version (same id).
    pub fn replace(&mut self, book: &Book, i: u32, account: Account, row: AccountRow) {
        let old = &self.accounts[i as usize];
        self.exposure.add(book, i, Some(old), &account);
        for o in &old.orders {
            self.orders.remove(&o.order_id);
        }
        for o in &account.orders {
            self.orders.insert(o.order_id, i);
        }
        self.accounts[i as usize] = account;
        self.rows[i as usize] = row;
    }

    /// Account indexes in account-id order (`me.margin`'s row order).
    pub fn in_id_order(&mut self) -> &[u32] {
        if self.sorted.is_none() {
            let mut order: Vec<u32> = (0..self.accounts.len() as u32).collect();
            order.sort_unstable_by_key(|i| self.accounts[*i as usize].id);
            self.sorted = Some(order);
        }
        self.sorted.as_deref().expect("filled above")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_stay_in_instrument_then_arrival_order() {
        let mut a = Account::new(7);
        let row = |instrument, quantity| PositionRow { instrument, quantity, entry_price: f64::NAN };
        for r in [row(3, 1.0), row(1, 2.0), row(3, 3.0), row(0, 4.0), row(1, 5.0)] {
            a.add_position(r);
        }
        let got: Vec<(u32, f64)> = a.positions.iter().map(|r| (r.instrument, r.quantity)).collect();
        assert_eq!(got, vec![(0, 4.0), (1, 2.0), (1, 5.0), (3, 1.0), (3, 3.0)]);
        a.add_to_balance(2, 5.0);
        a.add_to_balance(0, 1.0);
        a.add_to_balance(2, -1.5);
        assert_eq!(a.balances, vec![(0, 1.0), (2, 3.5)]);
        assert_eq!(a.balance(2), Some(3.5));
        assert_eq!(a.balance(1), None);
    }
}
