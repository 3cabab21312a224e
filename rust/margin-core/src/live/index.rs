//! Which accounts a market move reaches: accounts per instrument and per underlying.
//!
//! An account is listed under an instrument when it has any position row in it (a position
//! that nets to 0 still carries the P&L of its rows, which moves with the mark), and under an
//! underlying when it has a row in one of that underlying's instruments or a balance of an asset
//! linked to it. Rows and balances are never removed, so the lists only grow; each holds an
//! account once.

use crate::book::Book;

use super::state::Account;

#[derive(Debug, Default, Clone)]
pub struct Exposure {
    /// Account indexes per instrument id.
    pub by_instrument: Vec<Vec<u32>>,
    /// Account indexes per underlying id.
    pub by_underlying: Vec<Vec<u32>>,
}

/// The instruments of an account's position rows and resting orders (ascending, once each): a
/// resting order's margin moves with its instrument's mark, held or not.
fn instruments(a: &Account) -> Vec<u32> {
    let mut out: Vec<u32> = a.positions.iter().map(|r| r.instrument).chain(a.orders.iter().map(|o| o.instrument)).collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// The underlyings an account is exposed to (ascending, once each).
pub fn underlyings(book: &Book, a: &Account) -> Vec<u32> {
    let mut out: Vec<u32> = instruments(a).into_iter().map(|i| book.instruments.underlying[i as usize]).collect();
    out.extend(a.balances.iter().filter_map(|(asset, _)| book.assets.underlying[*asset as usize]));
    out.sort_unstable();
    out.dedup();
    out
}

impl Exposure {
    pub fn new(book: &Book) -> Exposure {
        Exposure {
            by_instrument: vec![Vec::new(); book.instruments.len()],
            by_underlying: vec![Vec::new(); book.underlyings.names.len()],
        }
    }

    /// Lists account `i` (now `after`, before `before`) under what `after` holds and `before` did not.
    pub fn add(&mut self, book: &Book, i: u32, before: Option<&Account>, after: &Account) {
        let mut old = before.map(instruments).unwrap_or_default();
        for id in instruments(after) {
            if old.binary_search(&id).is_err() {
                self.by_instrument[id as usize].push(i);
            }
        }
        old = before.map(|b| underlyings(book, b)).unwrap_or_default();
        for u in underlyings(book, after) {
            if old.binary_search(&u).is_err() {
                self.by_underlying[u as usize].push(i);
            }
        }
    }

    /// The accounts exposed to any of these underlyings or instruments, once each.
    pub fn touched(&self, n_accounts: usize, underlyings: &[u32], instruments: &[u32]) -> Vec<u32> {
        let lists: Vec<&Vec<u32>> = underlyings
            .iter()
            .map(|u| &self.by_underlying[*u as usize])
            .chain(instruments.iter().map(|i| &self.by_instrument[*i as usize]))
            .filter(|l| !l.is_empty())
            .collect();
        match lists.len() {
            0 => Vec::new(),
            1 => lists[0].clone(),
            _ => {
                let mut seen = vec![false; n_accounts];
                let mut out = Vec::new();
                for list in lists {
                    for a in list {
                        if !std::mem::replace(&mut seen[*a as usize], true) {
                            out.push(*a);
                        }
                    }
                }
                out
            }
        }
    }
}
