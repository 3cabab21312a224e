//! Grouping input rows by account without a comparison sort.
//!
//! Positions and balances arrive in any row order with arbitrary `u64` account ids. Input already
//! sorted by account (the common case for exchange exports) costs one pass and no copy: the runs
//! are found while checking the order. Otherwise row numbers are ordered by account with a
//! parallel, stable LSD radix sort over only the bits in which the ids can differ, and the sorted
//! rows cut into one run per account. Stability keeps each account's rows in input order, which
//! fixes the order of every later sum.

use std::ops::Range;

use rayon::prelude::*;

/// Bits per radix digit: 256 buckets a pass keep the scatter's write streams few enough for the
/// caches and the TLB.
const RADIX_BITS: u32 = 8;

/// Row numbers in stable account order, with the ids in that order. Ids are taken relative to
/// the smallest, so a pass is spent only on bits in which they can differ. When that offset and
/// the row number fit in 64 bits together they are sorted as one packed `u64` (row in the low
/// bits, so equal ids keep input order); otherwise as (offset, row) pairs.
fn order_by_account(ids: &[u64]) -> (Vec<u32>, Vec<u64>) {
    let (min, max) = ids.par_iter().fold(|| (u64::MAX, 0), |(lo, hi), id| (lo.min(*id), hi.max(*id))).reduce(
        || (u64::MAX, 0),
        |(lo, hi), (l, h)| (lo.min(l), hi.max(h)),
    );
    let key_bits = u64::BITS - (max - min).leading_zeros();
    let row_bits = u64::BITS - (ids.len() as u64).leading_zeros();
    if key_bits + row_bits <= u64::BITS {
        let row_mask = (1u64 << row_bits) - 1;
        let packed = ids.par_iter().enumerate().map(|(r, id)| (id - min) << row_bits | r as u64).collect();
        let sorted = radix_sort(packed, |v| v >> row_bits, key_bits);
        let order = sorted.par_iter().map(|v| (v & row_mask) as u32).collect();
        let ids = sorted.par_iter().map(|v| (v >> row_bits) + min).collect();
        return (order, ids);
    }
    let pairs = ids.par_iter().enumerate().map(|(r, id)| (id - min, r as u32)).collect();
    let sorted = radix_sort(pairs, |(key, _)| *key, key_bits);
    (sorted.par_iter().map(|(_, r)| *r).collect(), sorted.par_iter().map(|(key, _)| key + min).collect())
}

/// Stable LSD radix sort of `items` by the low `bits` bits of `key(item)`, in parallel: each
/// pass counts digits per chunk of the input, then every chunk scatters its items into its own
/// slices of the output (bucket by bucket, chunk after chunk: disjoint, so no locks and no
/// unsafe). The result depends only on the input, not on the number of chunks or threads.
fn radix_sort<T: Copy + Default + Send + Sync>(items: Vec<T>, key: impl Fn(&T) -> u64 + Sync, bits: u32) -> Vec<T> {
    const BUCKETS: usize = 1 << RADIX_BITS;
    let n = items.len();
    let chunk = n.div_ceil(rayon::current_num_threads()).max(1 << 16);
    let mut from = items;
    let mut to = vec![T::default(); n];
    let mut shift = 0;
    while shift < bits {
        let pass_shift = shift;
        let digit = |item: &T| ((key(item) >> pass_shift) as usize) & (BUCKETS - 1);
        let counts: Vec<[usize; BUCKETS]> = from
            .par_chunks(chunk)
            .map(|items| {
                let mut count = [0usize; BUCKETS];
                for item in items {
                    count[digit(item)] += 1;
                }
                count
            })
            .collect();
        shift += RADIX_BITS;
        if (0..BUCKETS).any(|d| counts.iter().map(|c| c[d]).sum::<usize>() == n) {
            continue; // every item has the same digit: the pass would not move anything
        }
        let mut outputs: Vec<Vec<&mut [T]>> = counts.iter().map(|_| Vec::with_capacity(BUCKETS)).collect();
        let mut rest: &mut [T] = &mut to;
        for d in 0..BUCKETS {
            for (c, count) in counts.iter().enumerate() {
                let (slice, tail) = std::mem::take(&mut rest).split_at_mut(count[d]);
                outputs[c].push(slice);
                rest = tail;
            }
        }
        from.par_chunks(chunk).zip(outputs).for_each(|(items, mut buckets)| {
            let mut filled = [0usize; BUCKETS];
            for item in items {
                let d = digit(item);
                buckets[d][filled[d]] = *item;
                filled[d] += 1;
            }
        });
        std::mem::swap(&mut from, &mut to);
    }
    from
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
    let (order, sorted) = order_by_account(ids);
    let (accounts, starts) = sorted_runs(&sorted).expect("radix order sorts the ids");
    Grouping { order: Some(order), accounts, starts }
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

    /// The order a stable comparison sort gives, to check the radix sort against.
    fn stable_order(ids: &[u64]) -> Vec<u32> {
        let mut order: Vec<u32> = (0..ids.len() as u32).collect();
        order.sort_by_key(|r| ids[*r as usize]);
        order
    }

    fn pseudo_random(n: usize, modulus: u64, scale: u64) -> Vec<u64> {
        let mut x = 0x9E3779B97F4A7C15u64;
        (0..n)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % modulus * scale
            })
            .collect()
    }

    #[test]
    fn radix_order_is_stable_and_sorted() {
        // ids across all 64 bits: sorted as (id, row) pairs
        let ids = vec![5u64, u64::MAX, 3, 5, 0, 3, 1 << 40, 5];
        let (order, sorted) = order_by_account(&ids);
        assert_eq!(order, vec![4, 2, 5, 0, 3, 7, 6, 1]); // stable: equal ids keep input order
        assert_eq!(sorted, order.iter().map(|r| ids[*r as usize]).collect::<Vec<_>>());
        assert_eq!(group_by_account(&[1, 1, 2]).order, None);
    }

    #[test]
    fn radix_matches_a_stable_sort_packed_and_as_pairs() {
        // 300,000 rows: several chunks of the parallel passes
        for (modulus, scale) in [(7919, 1_000_003), (u64::MAX, 1)] {
            let ids = pseudo_random(300_000, modulus, scale);
            let (order, sorted) = order_by_account(&ids);
            assert_eq!(order, stable_order(&ids));
            assert_eq!(sorted, order.iter().map(|r| ids[*r as usize]).collect::<Vec<_>>());
        }
    }

    #[test]
    fn disorder_only_across_a_block_edge_is_found() {
        // each 65,536-row block is sorted on its own; the second starts below the first's end
        let ids: Vec<u64> = (0..1u64 << 16).map(|r| 1_000 + r).chain((0..1u64 << 16).map(|r| r / 3)).collect();
        let g = group_by_account(&ids);
        let order = g.order.expect("not in account order");
        assert_eq!(order, stable_order(&ids));
        let sorted: Vec<u64> = order.iter().map(|r| ids[*r as usize]).collect();
        assert!(sorted.windows(2).all(|w| w[0] <= w[1]));
        let mut distinct = sorted.clone();
        distinct.dedup();
        assert_eq!(g.accounts, distinct);
        assert_eq!(g.starts.len(), distinct.len() + 1);
    }

    #[test]
    fn radix_order_is_the_same_for_any_thread_count() {
        let ids = pseudo_random(200_000, 1 << 30, 3);
        let on = |threads: usize| rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap().install(|| order_by_account(&ids));
        let one = on(1);
        for threads in [2, 3, 8] {
            assert_eq!(on(threads), one);
        }
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
