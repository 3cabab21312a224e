//! The book margined along simulated price paths (docs/calibration.md, "Forecast"): every
//! account under every (path, day) market in one pass, summarized as the forecast needs it.
//!
//! A scenario is one moved market ([`crate::stress`]: index prices, linear marks and linked
//! collateral move, option marks are Black-76 repriced); scenario `s` is day `s % days` of path
//! `s / days`. Each account's row under a scenario is exactly the row
//! `liquidation_scan(stress=)` gives ([`Pricing::account_in`] in the moved market), so what is
//! summed here is what a loop of bulk scans would sum, without building, sorting and handing
//! over a table per scenario, and with each account's positions netted once (at today's market,
//! as every scenario nets them) rather than once per scenario.
//!
//! Per scenario: the number of accounts on margin call, liquidatable (bankrupt included) and
//! bankrupt, the total shortfall and the total margin call amount `Σ max(IM − collateral_initial,
//! 0)`. Per account: on how many paths it is liquidatable on the last day, on how many on any
//! day, and its shortfall summed over all scenarios.
//!
//! **Same numbers on any thread count.** Accounts are cut into fixed chunks of [`CHUNK`] slots;
//! each chunk sums its accounts in slot order, and the chunks' sums are added in chunk order.
//! Counts are integers. Scenarios are handled in blocks of whole paths, so the moved markets
//! (and, for the portfolio model, their risk arrays) held at once stay small whatever the number
//! of paths: at most [`BLOCK`] scenarios, and no more than fit in [`BLOCK_BYTES`] (at least one
//! path). An account is margined under every scenario of a block in turn, so a block's moved
//! markets are read once per account: kept within a cache's size they are read from cache, where a
//! block of 64 portfolio-model markets of the generated book (1.1 MB of risk arrays each) is read
//! from memory and costs twice as much per scenario. The block size changes no number: each
//! account's and each scenario's sums are made in scenario order whatever the blocks.

use rayon::prelude::*;

use crate::book::Book;
use crate::engine::{check_duplicates, check_orders_supported, check_size_rates, report_overflow, AccountScratch, Inputs, Model, Pricing, Stress};
use crate::error::{InputError, Result};
use crate::liquidation::shortfall;
use crate::market::Market;
use crate::portfolio::RiskArrays;
use crate::results::Status;
use crate::stress::{stress_asset_prices, stress_market};
use crate::valuation::{net_positions, NetPosition};

/// Accounts summed together before their sums are added in order.
pub const CHUNK: usize = 512;
/// Largest number of scenarios margined per pass over the accounts.
pub const BLOCK: usize = 64;
/// Largest size of a block's moved markets (prices and risk arrays), unless one path alone is
/// larger: about what a core's share of the cache holds.
pub const BLOCK_BYTES: usize = 4 << 20;

/// Per-scenario totals, in scenario order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ScenarioTotals {
    pub margin_call: Vec<u64>,
    /// Liquidatable or bankrupt.
    pub liquidatable: Vec<u64>,
    pub bankrupt: Vec<u64>,
    pub shortfall: Vec<f64>,
    pub call_amount: Vec<f64>,
}

impl ScenarioTotals {
    fn zeros(n: usize) -> ScenarioTotals {
        ScenarioTotals { margin_call: vec![0; n], liquidatable: vec![0; n], bankrupt: vec![0; n], shortfall: vec![0.0; n], call_amount: vec![0.0; n] }
    }

    /// Adds `other` (the totals of `other.len()` scenarios starting at `start`), in place.
    fn add(&mut self, start: usize, other: &ScenarioTotals) {
        for k in 0..other.shortfall.len() {
            self.margin_call[start + k] += other.margin_call[k];
            self.liquidatable[start + k] += other.liquidatable[k];
            self.bankrupt[start + k] += other.bankrupt[k];
            self.shortfall[start + k] += other.shortfall[k];
            self.call_amount[start + k] += other.call_amount[k];
        }
    }
}

/// Per-account results, in slot order (the accounts of `inputs.slots`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AccountTotals {
    pub account_id: Vec<u64>,
    /// Paths on which the account is liquidatable (or bankrupt) on the last day.
    pub liquidatable_last: Vec<u32>,
    /// Paths on which it is liquidatable (or bankrupt) on at least one day.
    pub liquidatable_any: Vec<u32>,
    /// Its shortfall summed over every scenario, in scenario order.
    pub shortfall: Vec<f64>,
}

/// One moved market: prices, linked asset prices, and (portfolio model) its risk arrays.
struct MovedMarket {
    market: Market,
    asset_price: Vec<f64>,
    risk: Option<RiskArrays>,
}

impl MovedMarket {
    /// What an account's margin may read of it, in bytes.
    fn bytes(&self) -> usize {
        self.market.bytes() + 8 * self.asset_price.len() + self.risk.as_ref().map_or(0, RiskArrays::bytes)
    }
}

/// Every account of `inputs` under every scenario of `moves` (`moves[s]`: the move of each book
/// underlying, in book order, as [`crate::stress::moves_by_underlying`] gives it), `days`
/// scenarios a path.
pub fn stressed_paths(book: &Book, market: &Market, inputs: &Inputs, model: Model, moves: &[Vec<f64>], days: usize) -> Result<(ScenarioTotals, AccountTotals)> {
    stressed_paths_in_blocks(book, market, inputs, model, moves, days, None)
}

/// [`stressed_paths`] with `paths_per_block` paths a block (`None`: as many as [`BLOCK`] and
/// [`BLOCK_BYTES`] allow); the results do not depend on it (the tests check they do not).
#[allow(clippy::too_many_arguments)]
pub fn stressed_paths_in_blocks(
    book: &Book,
    market: &Market,
    inputs: &Inputs,
    model: Model,
    moves: &[Vec<f64>],
    days: usize,
    paths_per_block: Option<usize>,
) -> Result<(ScenarioTotals, AccountTotals)> {
    let n_u = book.underlyings.names.len();
    if days == 0 || !moves.len().is_multiple_of(days) {
        return Err(InputError::new("arguments", "days", format!("{} scenarios are not whole paths of {days} days", moves.len())));
    }
    if let Some(s) = moves.iter().position(|m| m.len() != n_u) {
        return Err(InputError::new("arguments", "moves", format!("scenario {s} has {} moves, the book has {n_u} underlyings", moves[s].len())));
    }
    check_orders_supported(book, inputs, model == Model::Portfolio)?;
    check_size_rates(book, model == Model::Portfolio)?;
    let n = inputs.slots.len();
    let mut totals = ScenarioTotals::zeros(moves.len());
    let mut accounts = AccountTotals {
        account_id: inputs.slots.iter().map(|s| s.account_id).collect(),
        liquidatable_last: vec![0; n],
        liquidatable_any: vec![0; n],
        shortfall: vec![0.0; n],
    };
    let moved = |m: &Vec<f64>| {
        let moved = stress_market(book, market, m);
        let risk = (model == Model::Portfolio).then(|| RiskArrays::new(book, &moved));
        MovedMarket { asset_price: stress_asset_prices(book, m), market: moved, risk }
    };
    // every moved market of a book has the same size: the first is built, measured, and kept
    // for the first block
    let mut first = moves.first().map(moved);
    let paths_per_block = match (paths_per_block, &first) {
        (Some(p), _) => p.max(1),
        (None, None) => 1,
        (None, Some(m)) => (BLOCK.min(BLOCK_BYTES / m.bytes().max(1)) / days).max(1),
    };
    let mut duplicates: Vec<(u64, u32)> = Vec::new();
    let mut overflowed: Vec<u64> = Vec::new();
    for first_path in (0..moves.len() / days).step_by(paths_per_block) {
        let start = first_path * days;
        let end = (start + paths_per_block * days).min(moves.len());
        let built = usize::from(start == 0 && first.is_some());
        let mut block: Vec<MovedMarket> = first.take().into_iter().collect();
        block.par_extend(moves[start + built..end].par_iter().map(moved));
        let chunks: Vec<ChunkResult> = inputs
            .slots
            .par_chunks(CHUNK)
            .zip(accounts.liquidatable_last.par_chunks_mut(CHUNK))
            .zip(accounts.liquidatable_any.par_chunks_mut(CHUNK))
            .zip(accounts.shortfall.par_chunks_mut(CHUNK))
            .map_init(AccountScratch::default, |scratch, (((slots, last), any), short)| {
                chunk(book, market, inputs, &block, days, slots, last, any, short, scratch)
            })
            .collect();
        for c in chunks {
            totals.add(start, &c.totals);
            duplicates.extend(c.duplicates);
            overflowed.extend(c.overflowed);
        }
        if !duplicates.is_empty() {
            break;
        }
    }
    check_duplicates(book, duplicates)?;
    if !overflowed.is_empty() {
        overflowed.sort_unstable();
        overflowed.dedup();
        report_overflow(overflowed)?;
    }
    Ok((totals, accounts))
}

struct ChunkResult {
    totals: ScenarioTotals,
    duplicates: Vec<(u64, u32)>,
    overflowed: Vec<u64>,
}

/// One chunk of accounts under one block of scenarios (whole paths of `days`).
#[allow(clippy::too_many_arguments)]
fn chunk(
    book: &Book,
    market: &Market,
    inputs: &Inputs,
    block: &[MovedMarket],
    days: usize,
    slots: &[crate::accounts::AccountSlot],
    last: &mut [u32],
    any: &mut [u32],
    short: &mut [f64],
    scratch: &mut AccountScratch,
) -> ChunkResult {
    let mut out = ChunkResult { totals: ScenarioTotals::zeros(block.len()), duplicates: Vec::new(), overflowed: Vec::new() };
    let stresses: Vec<Stress> = block.iter().map(|m| Stress { market: &m.market, asset_price: &m.asset_price }).collect();
    let pricings: Vec<Pricing> = block
        .iter()
        .zip(&stresses)
        .map(|(m, stress)| Pricing { book, base: market, stress: Some(stress), risk: m.risk.as_ref() })
        .collect();
    let mut netted: Vec<NetPosition> = Vec::new();
    for (i, slot) in slots.iter().enumerate() {
        // netted once at today's market; each scenario revalues a copy
        net_positions(slot.positions(), &inputs.positions, book, market, &mut scratch.net);
        netted.clone_from(&scratch.net.net);
        let orders = inputs.orders.as_ref().map(|o| (o, o.rows_of(slot.account_id)));
        let mut liquidatable_on_path = false;
        for (k, pricing) in pricings.iter().enumerate() {
            scratch.net.net.clone_from(&netted);
            let row = match pricing.account_netted(slot, &inputs.balances, 0.0, orders.clone(), scratch) {
                Ok(row) => row,
                Err(asset) => {
                    out.duplicates.push((slot.account_id, asset));
                    break;
                }
            };
            if !row.is_finite() {
                out.overflowed.push(slot.account_id);
                continue;
            }
            let status = row.status();
            let liquidatable = matches!(status, Status::Liquidatable | Status::Bankrupt);
            let t = &mut out.totals;
            match status {
                Status::MarginCall => t.margin_call[k] += 1,
                Status::Bankrupt => {
                    t.bankrupt[k] += 1;
                    t.liquidatable[k] += 1;
                }
                Status::Liquidatable => t.liquidatable[k] += 1,
                Status::Healthy => {}
            }
            let s = shortfall(&row);
            t.shortfall[k] += s;
            short[i] += s;
            t.call_amount[k] += (row.initial_margin - row.collateral_initial).max(0.0);
            liquidatable_on_path |= liquidatable;
            if (k + 1).is_multiple_of(days) {
                last[i] += u32::from(liquidatable);
                any[i] += u32::from(liquidatable_on_path);
                liquidatable_on_path = false;
            }
        }
    }
    out
}
