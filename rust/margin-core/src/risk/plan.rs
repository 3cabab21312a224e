//! Liquidation plans: which positions to close, how much, and who pays (see docs/liquidation.md).
//!
//! For every account below maintenance (liquidatable or bankrupt):
//! 1. Rank its netted positions by maintenance margin freed per unit of notional (closing the
//!    whole position, everything else held), most first, scores compared to 2^-40; ties by
//!    instrument id. The ranking is fixed at the start.
//! 2. Close them in that order at mark, each fully or — for the last one — partially: the
//!    smallest fraction (found by bisection, always erring on the safe side) that brings
//!    `collateral_maintenance ≥ (1 + buffer) × MM`. Stop as soon as that holds.
//! 3. Each close pays `liquidation_fee × closed notional` (never more than the maintenance
//!    collateral left, so a fee alone never makes an account bankrupt), split
//!    `liquidator_share` to the liquidator, the rest to the insurance fund.
//! 4. An account whose equity is still negative after its plan is bankrupt: its deficit is drawn
//!    from the insurance fund (accounts in id order, after all fees have been paid in); what the
//!    fund cannot cover is bad debt, attributed to underlyings in proportion to the notional the
//!    account closed in each.
//! Closing at mark turns a position's value into cash at full weight, so collateral changes only
//! by the fee.

use rayon::prelude::*;

use crate::accounts::AccountSlot;
use crate::book::Book;
use crate::engine::{Inputs, Model};
use crate::market::Market;
use crate::portfolio::{self, RiskArrays};
use crate::results::AccountRow;
use crate::standard;
use crate::valuation::{net_positions, NetPosition, Scratch};

/// Parameters of a liquidation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PlanParams {
    /// Fee as a fraction of closed notional.
    pub liquidation_fee: f64,
    /// Share of the fee paid to the liquidator (the rest goes to the insurance fund).
    pub liquidator_share: f64,
    /// Target after liquidation: `collateral_maintenance ≥ (1 + buffer) × MM`.
    pub buffer: f64,
    /// Insurance fund balance before the liquidations.
    pub insurance_fund: f64,
}

/// One close of a plan.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Close {
    pub account_id: u64,
    pub step: u32,
    pub instrument: u32,
    pub quantity_before: f64,
    /// Signed quantity traded to close (opposite sign to the position).
    pub quantity_closed: f64,
    pub fraction: f64,
    pub mark_price: f64,
    pub notional: f64,
    pub fee: f64,
    /// Value of the whole position before the close (its P&L or option value), at the marks used.
    pub value_before: f64,
}

/// An account's liquidation outcome.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    pub before: AccountRow,
    pub equity_after: f64,
    pub collateral_maintenance_after: f64,
    pub maintenance_margin_after: f64,
    pub fees: f64,
    pub closed_notional: f64,
    /// `max(0, −equity_after)`.
    pub deficit: f64,
    pub covered_by_insurance: f64,
    pub bad_debt: f64,
}

/// The whole liquidation: closes, outcomes, and the insurance fund's and bad debt's tallies.
#[derive(Debug, Clone, Default)]
pub struct Liquidation {
    pub closes: Vec<Close>,
    pub outcomes: Vec<Outcome>,
    /// Per underlying id: notional closed, and bad debt attributed.
    pub closed_notional_by_underlying: Vec<f64>,
    pub bad_debt_by_underlying: Vec<f64>,
    pub liquidator_fees: f64,
    pub insurance_fees: f64,
    pub insurance_fund_after: f64,
}

/// A score rounded to a multiple of 2^-40 (about 1e-12): scores that are equal mathematically
/// but a few ulps apart (every lone perpetual scores R under the portfolio model; linear
/// contracts with one margin rate score that rate) tie, and the instrument id decides. Scaling by
/// a power of two is exact, so the key is the same wherever the score is.
fn ranking_key(score: f64) -> f64 {
    let scaled = score * 1_099_511_627_776.0; // 2^40
    if scaled.is_finite() {
        (scaled + 0.5).floor()
    } else {
        scaled
    }
}

/// Maintenance margin of the account's positions, each scaled by `1 − closed[i]`.
struct MarginOf<'a> {
    book: &'a Book,
    market: &'a Market,
    risk: Option<&'a RiskArrays>,
    scratch: portfolio::Scratch,
    scaled: Vec<NetPosition>,
}

impl MarginOf<'_> {
    fn maintenance(&mut self, net: &[NetPosition], closed: &[f64]) -> f64 {
        self.scaled.clear();
        for (p, c) in net.iter().zip(closed) {
            let remaining = 1.0 - c;
            if remaining > 0.0 {
                self.scaled.push(NetPosition { quantity: p.quantity * remaining, ..*p });
            }
        }
        match self.risk {
            Some(risk) => portfolio::account_margin(self.book, self.market, risk, &self.scaled, &mut self.scratch).1,
            None => self.scaled.iter().map(|p| standard::position_margin(self.book, self.market, p).1).sum(),
        }
    }
}

/// Liquidation plans for every account below maintenance (`rows` from the margin run, in slot
/// order).
///
/// With `stressed` (a moved market, see [`crate::stress`]), positions are netted at `base` and
/// revalued to the stressed marks, and everything is priced in the stressed market.
pub fn liquidate(
    book: &Book,
    base: &Market,
    stressed: Option<&Market>,
    inputs: &Inputs,
    model: Model,
    rows: &[AccountRow],
    params: &PlanParams,
) -> Liquidation {
    let market = stressed.unwrap_or(base);
    let risk = (model == Model::Portfolio).then(|| RiskArrays::new(book, market));
    let targets: Vec<(&AccountSlot, &AccountRow)> = inputs
        .slots
        .iter()
        .zip(rows)
        .filter(|(_, r)| r.needs_liquidation())
        .collect();
    let plans: Vec<(Vec<Close>, Outcome)> = targets
        .par_iter()
        .with_min_len(64)
        .map_init(
            || (Scratch::default(), MarginOf { book, market, risk: risk.as_ref(), scratch: Default::default(), scaled: vec![] }),
            |(scratch, margin_of), (slot, row)| {
                net_at(book, base, stressed, slot, inputs, scratch);
                plan_account(book, market, &scratch.net, row, params, margin_of)
            },
        )
        .collect();

    let mut out = Liquidation {
        closed_notional_by_underlying: vec![0.0; book.underlyings.names.len()],
        bad_debt_by_underlying: vec![0.0; book.underlyings.names.len()],
        ..Default::default()
    };
    for (closes, outcome) in &plans {
        for c in closes {
            let u = book.instruments.underlying[c.instrument as usize] as usize;
            out.closed_notional_by_underlying[u] += c.notional;
            out.liquidator_fees += c.fee * params.liquidator_share;
            out.insurance_fees += c.fee - c.fee * params.liquidator_share;
        }
        let _ = outcome;
    }
    // The fund: its balance plus the fees paid in, then drawn by deficits in account-id order.
    let mut fund = params.insurance_fund + out.insurance_fees;
    for (closes, mut outcome) in plans {
        if outcome.deficit > 0.0 {
            let covered = outcome.deficit.min(fund.max(0.0));
            fund -= covered;
            outcome.covered_by_insurance = covered;
            outcome.bad_debt = outcome.deficit - covered;
            if outcome.bad_debt > 0.0 {
                attribute_bad_debt(book, &closes, &outcome, &mut out.bad_debt_by_underlying);
            }
        }
        out.closes.extend(closes);
        out.outcomes.push(outcome);
    }
    out.insurance_fund_after = fund;
    out
}

/// Nets an account's positions at `base` and revalues them to `stressed` marks if given.
fn net_at(book: &Book, base: &Market, stressed: Option<&Market>, slot: &AccountSlot, inputs: &Inputs, scratch: &mut Scratch) {
    net_positions(slot.positions(), &inputs.positions, book, base, scratch);
    if let Some(stressed) = stressed {
        for p in scratch.net.iter_mut() {
            *p = crate::stress::revalue(book, base, stressed, p);
        }
    }
}

fn attribute_bad_debt(book: &Book, closes: &[Close], outcome: &Outcome, by_underlying: &mut [f64]) {
    if outcome.closed_notional > 0.0 {
        for c in closes {
            let u = book.instruments.underlying[c.instrument as usize] as usize;
            by_underlying[u] += outcome.bad_debt * (c.notional / outcome.closed_notional);
        }
    } else if let Some(u) = by_underlying.first_mut() {
        // nothing was closed (a collateral-only account): report it under the first underlying
        *u += outcome.bad_debt;
    }
}

/// Plans one account.
fn plan_account(
    book: &Book,
    market: &Market,
    net: &[NetPosition],
    row: &AccountRow,
    params: &PlanParams,
    margin_of: &mut MarginOf,
) -> (Vec<Close>, Outcome) {
    let ins = &book.instruments;
    let n = net.len();
    let notional: Vec<f64> = net
        .iter()
        .map(|p| p.quantity.abs() * ins.multiplier[p.instrument as usize] * market.mark_price[p.instrument as usize])
        .collect();
    let mut closed = vec![0.0; n];
    let full_margin = margin_of.maintenance(net, &closed);
    // Rank by margin freed per unit of notional, closing each position alone.
    let mut ranked: Vec<(f64, usize)> = (0..n)
        .map(|i| {
            closed[i] = 1.0;
            let freed = full_margin - margin_of.maintenance(net, &closed);
            closed[i] = 0.0;
            let score = if notional[i] > 0.0 {
                freed / notional[i]
            } else if freed > 0.0 {
                f64::INFINITY
            } else {
                0.0
            };
            (score, i)
        })
        .collect();
    ranked.sort_by(|a, b| ranking_key(b.0).total_cmp(&ranking_key(a.0)).then(net[a.1].instrument.cmp(&net[b.1].instrument)));

    let target = 1.0 + params.buffer;
    let mut equity = row.equity;
    let mut collateral = row.collateral_maintenance;
    let mut margin = full_margin;
    let mut fees = 0.0;
    let mut closed_notional = 0.0;
    let mut closes = Vec::new();
    let meets = |collateral: f64, margin: f64, equity: f64| equity >= 0.0 && collateral >= target * margin;
    // the fee never takes maintenance collateral below zero (nor, as collateral ≤ equity, equity)
    let fee_for = |fraction: f64, i: usize, collateral: f64| (params.liquidation_fee * fraction * notional[i]).min(collateral.max(0.0));
    for (step, (_, i)) in ranked.into_iter().enumerate() {
        if meets(collateral, margin, equity) {
            break;
        }
        // Would closing all of it be enough? If so, the smallest sufficient fraction.
        closed[i] = 1.0;
        let margin_full = margin_of.maintenance(net, &closed);
        let fee_full = fee_for(1.0, i, collateral);
        let fraction = if meets(collateral - fee_full, margin_full, equity - fee_full) {
            let (mut lo, mut hi) = (0.0f64, 1.0f64);
            for _ in 0..60 {
                let mid = 0.5 * (lo + hi);
                closed[i] = mid;
                let fee = fee_for(mid, i, collateral);
                if meets(collateral - fee, margin_of.maintenance(net, &closed), equity - fee) {
                    hi = mid;
                } else {
                    lo = mid;
                }
            }
            hi
        } else {
            1.0
        };
        closed[i] = fraction;
        let fee = fee_for(fraction, i, collateral);
        margin = margin_of.maintenance(net, &closed);
        collateral -= fee;
        equity -= fee;
        fees += fee;
        let p = &net[i];
        closed_notional += fraction * notional[i];
        closes.push(Close {
            account_id: row.account_id,
            step: step as u32,
            instrument: p.instrument,
            quantity_before: p.quantity,
            quantity_closed: -p.quantity * fraction,
            fraction,
            mark_price: market.mark_price[p.instrument as usize],
            notional: fraction * notional[i],
            fee,
            value_before: p.value,
        });
    }
    let outcome = Outcome {
        before: *row,
        equity_after: equity,
        collateral_maintenance_after: collateral,
        maintenance_margin_after: margin,
        fees,
        closed_notional,
        deficit: (-equity).max(0.0),
        covered_by_insurance: 0.0,
        bad_debt: 0.0,
    };
    (closes, outcome)
}

/// One entry of an auto-deleveraging queue.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdlEntry {
    pub underlying: u32,
    pub rank: u32,
    pub account_id: u64,
    /// Net delta of the account in the underlying (underlying units): the side it holds.
    pub delta: f64,
    /// Unrealized P&L of its perpetuals and futures in the underlying over their notional.
    pub profit_ratio: f64,
    /// The account's total notional over its equity.
    pub leverage: f64,
    pub score: f64,
}

/// Auto-deleveraging queues for the underlyings left with bad debt: the accounts on the side
/// opposite to the bankrupt positions (net delta of the other sign) that are in profit, ranked by
/// `profit_ratio × leverage`, highest first (the way exchanges rank ADL queues). Accounts being
/// liquidated are not in the queue.
pub fn adl_queues(
    book: &Book,
    base: &Market,
    stressed: Option<&Market>,
    inputs: &Inputs,
    rows: &[AccountRow],
    liquidation: &Liquidation,
) -> Vec<AdlEntry> {
    let market = stressed.unwrap_or(base);
    let ins = &book.instruments;
    let n_underlyings = book.underlyings.names.len();
    let per_contract = crate::greeks::instrument_greeks(book, market);
    // the bankrupt side per underlying: sign of the bankrupt accounts' closed delta
    let mut bankrupt_delta = vec![0.0; n_underlyings];
    let bankrupt: std::collections::HashSet<u64> =
        liquidation.outcomes.iter().filter(|o| o.bad_debt > 0.0).map(|o| o.before.account_id).collect();
    for c in &liquidation.closes {
        if bankrupt.contains(&c.account_id) {
            let id = c.instrument as usize;
            bankrupt_delta[ins.underlying[id] as usize] += c.quantity_before * ins.multiplier[id] * per_contract[id].delta;
        }
    }
    let wanted: Vec<bool> = (0..n_underlyings).map(|u| liquidation.bad_debt_by_underlying[u] > 0.0 && bankrupt_delta[u] != 0.0).collect();
    if !wanted.iter().any(|w| *w) {
        return Vec::new();
    }
    let liquidated: std::collections::HashSet<u64> = liquidation.outcomes.iter().map(|o| o.before.account_id).collect();
    let mut entries: Vec<AdlEntry> = inputs
        .slots
        .par_iter()
        .zip(rows.par_iter())
        .filter(|(slot, _)| !liquidated.contains(&slot.account_id))
        .map_init(Scratch::default, |scratch, (slot, row)| {
            net_at(book, base, stressed, slot, inputs, scratch);
            let total_notional: f64 = scratch
                .net
                .iter()
                .map(|p| p.quantity.abs() * ins.multiplier[p.instrument as usize] * market.mark_price[p.instrument as usize])
                .sum();
            let leverage = if row.equity > 0.0 { total_notional / row.equity } else { 0.0 };
            let mut found = Vec::new();
            for u in (0..n_underlyings).filter(|u| wanted[*u]) {
                let (mut delta, mut pnl, mut linear_notional) = (0.0, 0.0, 0.0);
                for p in scratch.net.iter().filter(|p| ins.underlying[p.instrument as usize] as usize == u) {
                    let id = p.instrument as usize;
                    delta += p.quantity * ins.multiplier[id] * per_contract[id].delta;
                    if ins.kind[id].is_linear() {
                        pnl += p.value;
                        linear_notional += p.quantity.abs() * ins.multiplier[id] * market.mark_price[id];
                    }
                }
                if delta * bankrupt_delta[u] < 0.0 && pnl > 0.0 && linear_notional > 0.0 && leverage > 0.0 {
                    let profit_ratio = pnl / linear_notional;
                    found.push(AdlEntry {
                        underlying: u as u32,
                        rank: 0,
                        account_id: slot.account_id,
                        delta,
                        profit_ratio,
                        leverage,
                        score: profit_ratio * leverage,
                    });
                }
            }
            found
        })
        .flatten()
        .collect();
    entries.sort_by(|a, b| a.underlying.cmp(&b.underlying).then(b.score.total_cmp(&a.score)).then(a.account_id.cmp(&b.account_id)));
    let mut rank = 0;
    for i in 0..entries.len() {
        rank = if i > 0 && entries[i - 1].underlying == entries[i].underlying { rank + 1 } else { 1 };
        entries[i].rank = rank;
    }
    entries
}
