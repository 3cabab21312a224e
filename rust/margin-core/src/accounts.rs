//! Grouping input rows by account without a comparison sort.
//!
//! Positions and balances arrive in any row order with arbitrary `u64` account ids. We order row
//! numbers by account with a stable LSD radix sort over only the bits in which the ids differ
//! (input already sorted by account — the common case for exchange exports — costs one pass and
//! no copy), then cut the sorted rows into one run per account. Stability keeps each account's
//! rows in input order, which fixes the order of every later sum.

use std::ops::Range;

use rayon::prelude::*;

/// Bits per radix digit: 2^11 counters fit in L1.
const RADIX_BITS: u32 = 11;

/// Row numbers in stable account order, or `None` if the ids are already non-decreasing.
fn order_by_account(ids: &[u64]) -> Option<Vec<u32>> {
    if ids.par_windows(2).all(|w| w[0] <= w[1]) {
        return None;
    }
    let first = ids[0];
    let varying = ids.par_iter().map(|id| id ^ first).reduce(|| 0, |a, b| a | b);
    let bits = 64 - varying.leading_zeros();
    let mut keys: Vec<u64> = ids.to_vec();
    let mut rows: Vec<u32> = (0..ids.len() as u32).collect();
    let mut keys_tmp = vec![0u64; ids.len()];
    let mut rows_tmp = vec![0u32; ids.len()];
    let buckets = 1usize << RADIX_BITS;
    let mask = (buckets - 1) as u64;
    let mut shift = 0;
    while shift < bits {
        let mut counts = vec![0usize; buckets];
        for k in &keys {
            counts[((k >> shift) & mask) as usize] += 1;
        }
        let mut total = 0;
        for c in counts.iter_mut() {
            let n = *c;
            *c = total;
            total += n;
        }
        for (k, r) in keys.iter().zip(&rows) {
            let d = ((k >> shift) & mask) as usize;
            keys_tmp[counts[d]] = *k;
            rows_tmp[counts[d]] = *r;
            counts[d] += 1;
        }
        std::mem::swap(&mut keys, &mut keys_tmp);
        std::mem::swap(&mut rows, &mut rows_tmp);
        shift += RADIX_BITS;
    }
    Some(rows)
}

/// Gathers `values` into the order `order` (or borrows them when there is no reordering).
pub fn gather<T: Copy + Send + Sync>(values: &[T], order: Option<&[u32]>) -> Vec<T> {
    match order {
        None => values.to_vec(),
        Some(o) => o.par_iter().with_min_len(1 << 14).map(|r| values[*r as usize]).collect(),
    }
}

/// Rows grouped by account: the reordering (`None`: the rows already are in account order),
/// the distinct account ids ascending, and where each one's run of rows starts in the reordered
/// rows (`starts` has one more entry: the end).
#[derive(Debug, PartialEq)]
pub struct Grouping {
    pub order: Option<Vec<u32>>,
    pub accounts: Vec<u64>,
    pub starts: Vec<usize>,
}

/// Groups rows by account id: one pass when the ids are already non-decreasing (the runs are
/// found while checking the order), a stable radix sort otherwise.
pub fn group_by_account(ids: &[u64]) -> Grouping {
    if let Some((accounts, starts)) = sorted_runs(ids) {
        return Grouping { order: None, accounts, starts };
    }
    let order = order_by_account(ids);
    let sorted = gather(ids, order.as_deref());
    let (accounts, starts) = sorted_runs(&sorted).expect("radix order sorts the ids");
    Grouping { order, accounts, starts }
}

/// The distinct account ids and the starts of their runs, or `None` if the ids are not
/// non-decreasing. Blocks are scanned in parallel; each finds its run starts as a bit mask
/// (branch-free, one bit a row), then reads the set bits.
fn sorted_runs(ids: &[u64]) -> Option<(Vec<u64>, Vec<usize>)> {
    const BLOCK: usize = 1 << 16;
    let n = ids.len();
    let parts: Option<Vec<(Vec<u64>, Vec<usize>)>> = (0..n.div_ceil(BLOCK))
        .into_par_iter()
        .map(|b| {
            let (lo, hi) = (b * BLOCK, ((b + 1) * BLOCK).min(n));
            let mut sorted = true;
            let mut count = 0;
            let mut masks = vec![0u64; (hi - lo).div_ceil(64)];
            for (w, mask) in masks.iter_mut().enumerate() {
                let base = lo + w * 64;
                // row 0 always starts a run; every other row when its id differs from the last
                let (from, to) = (base.max(1), (base + 64).min(hi));
                let previous = &ids[from - 1..to - 1];
                let current = &ids[from..to];
                let shift = from - base;
                for (k, (p, c)) in previous.iter().zip(current).enumerate() {
                    sorted &= p <= c;
                    *mask |= u64::from(p != c) << (k + shift);
                }
                *mask |= u64::from(base == 0);
                count += mask.count_ones() as usize;
            }
            let mut accounts = Vec::with_capacity(count);
            let mut starts = Vec::with_capacity(count);
            for (w, mask) in masks.iter().enumerate() {
                let mut m = *mask;
                while m != 0 {
                    let r = lo + w * 64 + m.trailing_zeros() as usize;
                    accounts.push(ids[r]);
                    starts.push(r);
                    m &= m - 1;
                }
            }
            sorted.then_some((accounts, starts))
        })
        .collect();
    let parts = parts?;
    let total = parts.iter().map(|(a, _)| a.len()).sum::<usize>();
    let mut accounts = Vec::with_capacity(total);
    let mut starts = Vec::with_capacity(total + 1);
    for (a, s) in parts {
        accounts.extend_from_slice(&a);
        starts.extend_from_slice(&s);
    }
    starts.push(n);
    Some((accounts, starts))
}

/// One output account: its id and its rows in the (account-sorted) positions and balances
/// (as `u32` row numbers: a call holds fewer than 2^32 rows, and a million slots take 24 MB
/// instead of 40).
#[derive(Debug, Clone, PartialEq)]
pub struct AccountSlot {
    pub account_id: u64,
    positions: Range<u32>,
    balances: Range<u32>,
}

impl AccountSlot {
    pub fn new(account_id: u64, positions: Range<usize>, balances: Range<usize>) -> AccountSlot {
        let narrow = |r: Range<usize>| r.start as u32..r.end as u32;
        AccountSlot { account_id, positions: narrow(positions), balances: narrow(balances) }
    }

    /// The account's rows in the positions.
    pub fn positions(&self) -> Range<usize> {
        self.positions.start as usize..self.positions.end as usize
    }

    /// The account's rows in the balances.
    pub fn balances(&self) -> Range<usize> {
        self.balances.start as usize..self.balances.end as usize
    }
}

/// Every account that has a position row or a balance row, ascending by id.
pub fn merge_accounts(
    position_accounts: &[u64],
    position_starts: &[usize],
    balance_accounts: &[u64],
    balance_starts: &[usize],
) -> Vec<AccountSlot> {
    let mut out = Vec::with_capacity(position_accounts.len().max(balance_accounts.len()));
    let (mut i, mut j) = (0, 0);
    let empty_p = position_starts.last().copied().unwrap_or(0);
    let empty_b = balance_starts.last().copied().unwrap_or(0);
    while i < position_accounts.len() || j < balance_accounts.len() {
        let p = position_accounts.get(i).copied();
        let b = balance_accounts.get(j).copied();
        let id = match (p, b) {
            (Some(p), Some(b)) => p.min(b),
            (Some(p), None) => p,
            (None, Some(b)) => b,
            (None, None) => break,
        };
        let positions = if p == Some(id) {
            i += 1;
            position_starts[i - 1]..position_starts[i]
        } else {
            empty_p..empty_p
        };
        let balances = if b == Some(id) {
            j += 1;
            balance_starts[j - 1]..balance_starts[j]
        } else {
            empty_b..empty_b
        };
        out.push(AccountSlot::new(id, positions, balances));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn radix_order_is_stable_and_sorted() {
        let ids = vec![5u64, u64::MAX, 3, 5, 0, 3, 1 << 40, 5];
        let order = order_by_account(&ids).unwrap();
        let sorted: Vec<u64> = order.iter().map(|r| ids[*r as usize]).collect();
        let mut expect = ids.clone();
        expect.sort();
        assert_eq!(sorted, expect);
        // stable: equal ids keep input order
        assert_eq!(order, vec![4, 2, 5, 0, 3, 7, 6, 1]);
        assert!(order_by_account(&[1, 1, 2]).is_none());
    }

    #[test]
    fn radix_matches_std_sort_on_pseudo_random_ids() {
        let mut x = 0x9E3779B97F4A7C15u64;
        let ids: Vec<u64> = (0..50_000)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % 7919 * 1_000_003
            })
            .collect();
        let order = order_by_account(&ids).unwrap();
        let mut expect: Vec<u32> = (0..ids.len() as u32).collect();
        expect.sort_by_key(|r| ids[*r as usize]);
        assert_eq!(order, expect);
    }

    #[test]
    fn runs_across_parallel_blocks_match_a_serial_scan() {
        // runs of 1..=7 rows, so boundaries fall on and around every 65,536-row block edge
        let ids: Vec<u64> = (0..300_000u64).flat_map(|a| std::iter::repeat_n(a * 3, (a % 7 + 1) as usize)).take(1 << 19).collect();
        let Grouping { order, accounts, starts } = group_by_account(&ids);
        assert!(order.is_none());
        let mut want_accounts = Vec::new();
        let mut want_starts = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            if i == 0 || ids[i - 1] != *id {
                want_accounts.push(*id);
                want_starts.push(i);
            }
        }
        want_starts.push(ids.len());
        assert_eq!((accounts, starts), (want_accounts, want_starts));
        assert_eq!(group_by_account(&[]), Grouping { order: None, accounts: vec![], starts: vec![0] });
    }

    #[test]
    fn merge_keeps_accounts_from_either_side() {
        let p = group_by_account(&[1, 1, 4]);
        let b = group_by_account(&[4, 2, 9, 4]);
        assert_eq!(b.order, Some(vec![1, 0, 3, 2]));
        let slots = merge_accounts(&p.accounts, &p.starts, &b.accounts, &b.starts);
        let ids: Vec<u64> = slots.iter().map(|s| s.account_id).collect();
        assert_eq!(ids, vec![1, 2, 4, 9]);
        assert_eq!(slots[0].positions(), 0..2);
        assert!(slots[0].balances().is_empty());
        assert_eq!(slots[2].positions(), 2..3);
        assert_eq!(slots[2].balances(), 1..3);
    }
}
