//! Orchestration: validated inputs in, one row per account out, in parallel over accounts.
//!
//! Every account is computed by one thread from its own rows, summing in a fixed order, and
//! results are written in account order: the output is bit-identical for any thread count.

use rayon::prelude::*;

use crate::accounts::AccountSlot;
use crate::book::Book;
use crate::error::{InputError, Offenders, Result};
use crate::greeks::{account_greeks, instrument_greeks, GreeksRow};
use crate::market::Market;
use crate::portfolio::{self, RiskArrays};
use crate::results::AccountRow;
use crate::rows::{account_slots, Balances, Positions};
use crate::standard;
use crate::stress::revalue;
use crate::table::Table;
use crate::valuation::{net_positions, value_balances, BalanceScratch, Collateral, Scratch};

/// Which margin model to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    Standard,
    Portfolio,
}

/// Runs `work` on a pool of `threads` threads (the global pool when `None`).
pub fn with_threads<T: Send>(threads: Option<usize>, work: impl FnOnce() -> T + Send) -> Result<T> {
    match threads {
        None => Ok(work()),
        Some(0) => Err(InputError::new("arguments", "threads", "threads must be >= 1")),
        Some(n) => {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .map_err(|e| InputError::new("arguments", "threads", format!("cannot start {n} threads: {e}")))?;
            Ok(pool.install(work))
        }
    }
}

/// Positions and balances read, validated and grouped by account.
pub struct Inputs<'a> {
    pub positions: Positions<'a>,
    pub balances: Balances<'a>,
    pub slots: Vec<AccountSlot>,
}

impl<'a> Inputs<'a> {
    pub fn new(book: &Book, market: &Market, positions: Option<&Table<'a>>, balances: Option<&Table<'a>>) -> Result<Inputs<'a>> {
        let positions = match positions {
            Some(t) => Positions::from_table(t, book)?,
            None => Positions::empty(),
        };
        market.check_covers(book, &positions.used_instruments(book.instruments.len()))?;
        let balances = match balances {
            Some(t) => Balances::from_table(t, book)?,
            None => Balances::empty(),
        };
        let slots = account_slots(&positions, &balances);
        Ok(Inputs { positions, balances, slots })
    }
}

/// Margin of every account under `model` (§3 / §4, with §2 collateral and §6 status).
pub fn margin(book: &Book, market: &Market, inputs: &Inputs, model: Model) -> Result<Vec<AccountRow>> {
    margin_under(book, market, None, inputs, model)
}

/// A moved market: the stressed market data and collateral asset prices (see [`crate::stress`]).
pub struct Stress<'m> {
    pub market: &'m Market,
    pub asset_price: &'m [f64],
}

/// [`margin`] under an optional stress: positions are netted and valued at the `base` market,
/// revalued to the stressed marks, then margined in the stressed market.
pub fn margin_under(book: &Book, base: &Market, stress: Option<Stress>, inputs: &Inputs, model: Model) -> Result<Vec<AccountRow>> {
    let (market, asset_price) = match &stress {
        Some(s) => (s.market, s.asset_price),
        None => (base, &book.assets.price[..]),
    };
    let risk = match model {
        Model::Standard => None,
        Model::Portfolio => Some(RiskArrays::new(book, market)),
    };
    let rows: Vec<(AccountRow, u32)> = inputs
        .slots
        .par_iter()
        .with_min_len(256)
        .map_init(
            || (Scratch::default(), BalanceScratch::default(), portfolio::Scratch::default()),
            |(scratch, balance_scratch, portfolio_scratch), slot| {
                net_positions(slot.positions.clone(), &inputs.positions, book, base, scratch);
                if stress.is_some() {
                    for p in scratch.net.iter_mut() {
                        *p = revalue(book, base, market, p);
                    }
                }
                let (collateral, duplicate) =
                    match value_balances(slot.balances.clone(), &inputs.balances, book, asset_price, balance_scratch) {
                        Ok(c) => (c, u32::MAX),
                        Err(asset) => (Collateral::default(), asset),
                    };
                let (initial_margin, maintenance_margin) = match &risk {
                    None => scratch.net.iter().fold((0.0, 0.0), |(im, mm), p| {
                        let (i, m) = standard::position_margin(book, market, p);
                        (im + i, mm + m)
                    }),
                    Some(risk) => portfolio::account_margin(book, market, risk, &scratch.net, portfolio_scratch),
                };
                let pnl: f64 = scratch.net.iter().fold(0.0, |s, p| s + p.value);
                let row = AccountRow::new(slot.account_id, collateral, pnl, initial_margin, maintenance_margin);
                (row, duplicate)
            },
        )
        .collect();
    check_duplicates(book, &rows)?;
    let rows: Vec<AccountRow> = rows.into_iter().map(|(r, _)| r).collect();
    check_finite(&rows)?;
    Ok(rows)
}

fn check_duplicates(book: &Book, rows: &[(AccountRow, u32)]) -> Result<()> {
    let mut dup = Offenders::default();
    for (row, asset) in rows {
        if *asset != u32::MAX {
            dup.push(|| format!("account {} asset '{}'", row.account_id, book.assets.labels[*asset as usize]));
        }
    }
    dup.into_result("balances", "asset", "duplicate (account_id, asset) key")
}

/// Sums of finite inputs can still overflow (e.g. 1e308 quantities): report, never return inf.
fn check_finite(rows: &[AccountRow]) -> Result<()> {
    let mut bad = Offenders::default();
    for r in rows {
        if !r.is_finite() {
            bad.push(|| format!("account {}", r.account_id));
        }
    }
    bad.into_result(
        "positions",
        "quantity",
        "values too large: the account's valuation or margin overflows float64 (check quantities, amounts and prices)",
    )
}

/// Greeks per account × underlying (§7).
pub fn greeks(book: &Book, market: &Market, inputs: &Inputs) -> Result<Vec<GreeksRow>> {
    let per_contract = instrument_greeks(book, market);
    let chunks: Vec<Vec<GreeksRow>> = inputs
        .slots
        .par_chunks(4096)
        .map_init(Scratch::default, |scratch, slots| {
            let mut out = Vec::with_capacity(slots.len());
            for slot in slots {
                net_positions(slot.positions.clone(), &inputs.positions, book, market, scratch);
                account_greeks(slot.account_id, &scratch.net, book, market, &per_contract, &mut out);
            }
            out
        })
        .collect();
    let rows: Vec<GreeksRow> = chunks.into_iter().flatten().collect();
    let mut bad = Offenders::default();
    for r in &rows {
        let values = [r.delta, r.delta_usd, r.gamma, r.gamma_usd, r.vega, r.theta, r.long_notional, r.short_notional];
        if !values.iter().all(|v| v.is_finite()) {
            bad.push(|| format!("account {}", r.account_id));
        }
    }
    bad.into_result("positions", "quantity", "values too large: Greeks overflow float64")?;
    Ok(rows)
}
