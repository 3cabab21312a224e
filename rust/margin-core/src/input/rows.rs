//! Positions and balances as the kernels see them: keys mapped to dense ids, rows grouped by
//! account (stable), and one [`AccountSlot`] per account present in either table.

use std::borrow::Cow;

use rayon::prelude::*;

use crate::accounts::{gather, group_by_account, merge_accounts, AccountSlot, Grouping};
use crate::book::Book;
use crate::error::{InputError, Offenders, Result};
use crate::table::{Domain, Table};
use crate::trace::Phases;

/// The instrument of each position row.
pub enum InstrumentIds<'a> {
    /// Dense instrument ids, one per row.
    Dense(Vec<u32>),
    /// A dictionary column read in place: per row a code, per code a dense instrument id.
    Coded { codes: Cow<'a, [u32]>, ids: Vec<u32> },
}

impl InstrumentIds<'_> {
    /// The instrument id of row `r`.
    #[inline]
    pub fn get(&self, r: usize) -> u32 {
        match self {
            InstrumentIds::Dense(ids) => ids[r],
            InstrumentIds::Coded { codes, ids } => ids[codes[r] as usize],
        }
    }

    fn reordered(self, order: Option<&[u32]>) -> Self {
        match (self, order) {
            (this, None) => this,
            (InstrumentIds::Dense(ids), Some(_)) => InstrumentIds::Dense(gather(&ids, order)),
            (InstrumentIds::Coded { codes, ids }, Some(_)) => InstrumentIds::Coded { codes: Cow::Owned(gather(&codes, order)), ids },
        }
    }
}

/// Position rows in account order.
pub struct Positions<'a> {
    pub instrument: InstrumentIds<'a>,
    pub quantity: Cow<'a, [f64]>,
    pub entry_price: Option<Cow<'a, [f64]>>,
    /// Optional `unsettled_funding` (USD, finite; null read as 0): funding accrued but not yet
    /// paid into balances, added to the account's P&L.
    pub unsettled_funding: Option<Cow<'a, [f64]>>,
    accounts: Vec<u64>,
    starts: Vec<usize>,
}

/// Balance rows in account order.
pub struct Balances<'a> {
    pub asset: Vec<u32>,
    pub amount: Cow<'a, [f64]>,
    accounts: Vec<u64>,
    starts: Vec<usize>,
}

fn reorder<'a>(values: Cow<'a, [f64]>, order: Option<&[u32]>) -> Cow<'a, [f64]> {
    match order {
        None => values,
        Some(_) => Cow::Owned(gather(&values, order)),
    }
}

fn check_row_count(t: &Table) -> Result<()> {
    t.check_unique_column_names()?;
    if t.num_rows() >= u32::MAX as usize {
        return Err(InputError::new(t.name, "account_id", "more than 4,294,967,294 rows in one call; stream the table in batches"));
    }
    Ok(())
}

impl<'a> Positions<'a> {
    /// Reads and validates the positions table (`account_id, instrument, quantity[, entry_price]`).
    pub fn from_table(t: &Table<'a>, book: &Book) -> Result<Positions<'a>> {
        check_row_count(t)?;
        let mut phases = Phases::start();
        let ids = t.column("account_id")?.account_ids()?;
        phases.lap("positions: account_id");
        let column = t.column("instrument")?;
        let instrument = match column.dictionary_codes(&book.instruments.index)? {
            Some((codes, ids)) => InstrumentIds::Coded { codes, ids },
            None => InstrumentIds::Dense(column.map_keys(&book.instruments.index, "instrument")?),
        };
        phases.lap("positions: instrument keys");
        let quantity = t.column("quantity")?.f64s(Domain::Finite)?;
        let entry_price = match t.optional_column("entry_price") {
            // null: the row's P&L is already settled (read as NaN, skipped when netting)
            Some(c) => Some(c.f64s_null_as_nan(Domain::NonNegative)?),
            None => None,
        };
        if let (Some(entry), true) = (&entry_price, book.instruments.has_inverse()) {
            // an inverse perpetual's or future's coin P&L is q × mult × (1/entry − 1/mark):
            // entry must be > 0 (options ignore entry prices)
            let mut bad = Offenders::default();
            for (r, e) in entry.iter().enumerate() {
                let id = instrument.get(r) as usize;
                if *e == 0.0 && book.instruments.inverse[id] && book.instruments.kind[id].is_linear() {
                    bad.push(|| format!("row {r}"));
                }
            }
            bad.into_result(t.name, "entry_price", "an inverse perpetual's or future's entry_price must be > 0 (or null)")?;
        }
        let unsettled_funding = match t.optional_column("unsettled_funding") {
            Some(c) => Some(c.f64s_null_as_zero(Domain::Finite)?),
            None => None,
        };
        phases.lap("positions: quantity, entry_price");
        let Grouping { order, accounts, starts } = group_by_account(&ids);
        let order = order.as_deref();
        phases.lap("positions: grouped by account");
        Ok(Positions {
            instrument: instrument.reordered(order),
            quantity: reorder(quantity, order),
            entry_price: entry_price.map(|e| reorder(e, order)),
            unsettled_funding: unsettled_funding.map(|f| reorder(f, order)),
            accounts,
            starts,
        })
    }

    /// Which instruments any position row references (to check the market covers them).
    pub fn used_instruments(&self, n_instruments: usize) -> Vec<bool> {
        let mark = |mut used: Vec<bool>, ids: &[u32]| {
            for i in ids {
                used[*i as usize] = true;
            }
            used
        };
        let or = |a: Vec<bool>, b: Vec<bool>| a.iter().zip(&b).map(|(x, y)| *x | *y).collect::<Vec<bool>>();
        match &self.instrument {
            InstrumentIds::Dense(ids) => {
                ids.par_chunks(1 << 16).fold(|| vec![false; n_instruments], mark).reduce(|| vec![false; n_instruments], or)
            }
            InstrumentIds::Coded { codes, ids } => {
                let used_codes = codes.par_chunks(1 << 16).fold(|| vec![false; ids.len()], mark).reduce(|| vec![false; ids.len()], or);
                let mut used = vec![false; n_instruments];
                for (code, id) in ids.iter().enumerate() {
                    if used_codes[code] {
                        used[*id as usize] = true;
                    }
                }
                used
            }
        }
    }

    /// The rows of a single account (account id 0), in the given order (see [`crate::whatif`]).
    pub fn one_account(instrument: Vec<u32>, quantity: Vec<f64>, entry_price: Option<Vec<f64>>) -> Positions<'static> {
        let n = instrument.len();
        Positions {
            instrument: InstrumentIds::Dense(instrument),
            quantity: Cow::Owned(quantity),
            entry_price: entry_price.map(Cow::Owned),
            unsettled_funding: None,
            accounts: vec![0],
            starts: vec![0, n],
        }
    }

    pub fn empty() -> Positions<'static> {
        Positions { instrument: InstrumentIds::Dense(Vec::new()), quantity: Cow::Owned(Vec::new()), entry_price: None, unsettled_funding: None, accounts: Vec::new(), starts: vec![0] }
    }
}

impl<'a> Balances<'a> {
    /// Reads and validates the balances table (`account_id, asset, amount`).
    pub fn from_table(t: &Table<'a>, book: &Book) -> Result<Balances<'a>> {
        check_row_count(t)?;
        let mut phases = Phases::start();
        let ids = t.column("account_id")?.account_ids()?;
        let asset = t.column("asset")?.map_keys(&book.assets.index, "asset")?;
        let amount = t.column("amount")?.f64s(Domain::Finite)?;
        phases.lap("balances: columns");
        let Grouping { order, accounts, starts } = group_by_account(&ids);
        let order = order.as_deref();
        let balances = Balances {
            asset: match order {
                None => asset,
                Some(_) => gather(&asset, order),
            },
            amount: reorder(amount, order),
            accounts,
            starts,
        };
        phases.lap("balances: order, runs");
        balances.check_magnitude(book)?;
        phases.lap("balances: magnitude checked");
        Ok(balances)
    }

    /// Rejects accounts whose balances, valued at the assets' prices (and liability weights),
    /// overflow float64: `Σ |amount| × price × max(1, liability weights)` must be finite. It bounds
    /// every collateral sum of §2.5 (weights are <= 1, liability weights >= 1), so a finite bound
    /// means the kernels cannot produce inf or NaN from balances.
    fn check_magnitude(&self, book: &Book) -> Result<()> {
        let a = &book.assets;
        let bound = |k: usize| -> f64 {
            (self.starts[k]..self.starts[k + 1])
                .map(|r| {
                    let id = self.asset[r] as usize;
                    let w = a.initial_liability_weight[id].max(a.maintenance_liability_weight[id]).max(1.0);
                    self.amount[r].abs() * a.price[id] * w
                })
                .sum()
        };
        // fast path: the largest row bound times the most rows any account has is finite
        let per_unit: Vec<f64> = (0..a.price.len())
            .map(|id| a.price[id] * a.initial_liability_weight[id].max(a.maintenance_liability_weight[id]).max(1.0))
            .collect();
        let largest_row = self
            .amount
            .par_iter()
            .zip(self.asset.par_iter())
            .with_min_len(1 << 14)
            .map(|(x, id)| x.abs() * per_unit[*id as usize])
            .reduce(|| 0.0, f64::max);
        let most_rows = self.starts.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
        if (largest_row * most_rows as f64).is_finite() {
            return Ok(());
        }
        let n = self.accounts.len();
        if (0..n).into_par_iter().with_min_len(1024).all(|k| bound(k).is_finite()) {
            return Ok(());
        }
        let mut bad = Offenders::default();
        for k in (0..n).filter(|k| !bound(*k).is_finite()) {
            bad.push(|| format!("account {}", self.accounts[k]));
        }
        bad.into_result(
            "balances",
            "amount",
            "values too large: the account's collateral (amount × asset price) overflows float64",
        )
    }

    /// The balances of a single account (account id 0).
    pub fn one_account(asset: Vec<u32>, amount: Vec<f64>) -> Balances<'static> {
        let n = asset.len();
        Balances { asset, amount: Cow::Owned(amount), accounts: vec![0], starts: vec![0, n] }
    }

    pub fn empty() -> Balances<'static> {
        Balances { asset: Vec::new(), amount: Cow::Owned(Vec::new()), accounts: Vec::new(), starts: vec![0] }
    }
}

/// Every account in positions or balances, ascending, with its rows in each.
pub fn account_slots(positions: &Positions, balances: &Balances) -> Vec<AccountSlot> {
    merge_accounts(&positions.accounts, &positions.starts, &balances.accounts, &balances.starts)
}

/// An orders table's `quantity` column: finite and non-zero (+ bid, − ask), offenders by row.
pub fn order_quantities<'a>(t: &Table<'a>) -> Result<Cow<'a, [f64]>> {
    let quantity = t.column("quantity")?.f64s(Domain::Finite)?;
    let mut zero = Offenders::default();
    for (r, q) in quantity.iter().enumerate() {
        if *q == 0.0 {
            zero.push(|| format!("row {r}"));
        }
    }
    zero.into_result(t.name, "quantity", "an order's quantity must be non-zero (+ bid, − ask)")?;
    Ok(quantity)
}

/// Resting orders (docs/methodology.md §10), rows in account order: `account_id, instrument,
/// quantity` (signed, + bid, − ask, never 0) and `price` (a limit price, > 0).
pub struct Orders<'a> {
    pub instrument: Vec<u32>,
    pub quantity: Cow<'a, [f64]>,
    pub price: Cow<'a, [f64]>,
    accounts: Vec<u64>,
    starts: Vec<usize>,
}

impl<'a> Orders<'a> {
    /// Reads and validates the orders table: unknown instruments, nulls, NaN, a zero quantity or
    /// a price that is not > 0 are errors naming the rows.
    pub fn from_table(t: &Table<'a>, book: &Book) -> Result<Orders<'a>> {
        check_row_count(t)?;
        let ids = t.column("account_id")?.account_ids()?;
        let instrument = t.column("instrument")?.map_keys(&book.instruments.index, "instrument")?;
        let quantity = order_quantities(t)?;
        let price = t.column("price")?.f64s(Domain::Price)?;
        let Grouping { order, accounts, starts } = group_by_account(&ids);
        let order = order.as_deref();
        Ok(Orders {
            instrument: match order {
                None => instrument,
                Some(_) => gather(&instrument, order),
            },
            quantity: reorder(quantity, order),
            price: reorder(price, order),
            accounts,
            starts,
        })
    }

    /// The rows of `account_id` (empty when it has no orders).
    pub fn rows_of(&self, account_id: u64) -> std::ops::Range<usize> {
        match self.accounts.binary_search(&account_id) {
            Ok(k) => self.starts[k]..self.starts[k + 1],
            Err(_) => 0..0,
        }
    }

    /// Accounts with orders, ascending.
    pub fn accounts(&self) -> &[u64] {
        &self.accounts
    }

    pub fn is_empty(&self) -> bool {
        self.instrument.is_empty()
    }

    /// Which instruments any order references (to check the market covers them).
    pub fn used_instruments(&self, n_instruments: usize) -> Vec<bool> {
        let mut used = vec![false; n_instruments];
        for i in &self.instrument {
            used[*i as usize] = true;
        }
        used
    }

    /// The orders of a single account (account id 0).
    pub fn one_account(instrument: Vec<u32>, quantity: Vec<f64>, price: Vec<f64>) -> Orders<'static> {
        let n = instrument.len();
        Orders { instrument, quantity: Cow::Owned(quantity), price: Cow::Owned(price), accounts: vec![0], starts: vec![0, n] }
    }
}
