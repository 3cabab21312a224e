//! One account under a scenario methodology: its netted positions (and, when haircuts are
//! contingencies, its collateral coins) turned into one [`ScenarioPortfolio`] per underlying,
//! margined by [`margin_scenarios`], the requirements summed over underlyings in id (name) order.
//!
//! The twin of `python/margin_engine/reference/scenario_inputs.py`; the same holdings in the
//! same order, so both engines agree to rounding:
//! - options grouped by expiry in order of first appearance (positions are in instrument order),
//!   each expiry on its `expiry_feeds` forward (or on the index: no fixed part, no rate), with the
//!   expiry's confidence the lowest of its feed's and its options' marks';
//! - perpetuals and futures as linear holdings on their marks, with their marks' confidences;
//! - under `collateral_haircuts_as_contingency`, every balance other than the quote asset as a
//!   coin: in the portfolio of its linked underlying (moving with it); an unlinked coin in the
//!   portfolio of the account's first underlying (name order) with positions or linked coins
//!   (its confidence charge reads that index feed's confidence, as on a one-underlying venue),
//!   or, for an account with neither, in a portfolio of coins alone (haircut and confidence
//!   charges). Haircuts are `1 − weight` (borrows:
//!   `1 − liability weight`, negative, so that the charge on a negative value is positive); the
//!   initial haircut is what the IM charges beyond the maintenance one.

use crate::book::{Book, Kind};
use crate::market::{ExpiryFeed, Market};
use crate::rows::Balances;
use crate::valuation::NetPosition;

use super::book::ScenarioByUnderlying;
use super::params::*;
use super::scenario::{expiry_factors, linear_contract_pnl, scenario_requirements, ExpiryFactors, ScenarioBuffers, precompute_expiry_with, row_eval, DirectValues, Eval, ExpiryPrecompute, OptionValues};

/// The key of an account's portfolio of coins linked to no underlying it trades.
pub const UNLINKED: u32 = u32::MAX;

/// Per-thread buffers: the account's holdings grouped by underlying.
#[derive(Default)]
pub struct ScenarioScratch {
    /// `(underlying, index into net or balance rows)`, sorted: the account's underlyings in order.
    keys: Vec<(u32, u32)>,
    /// The expiry (ns) of each of `portfolio.expiries`.
    expiry_ns: Vec<i64>,
    portfolio: ScenarioPortfolio,
    /// Expiry holdings of earlier portfolios, kept for their option vectors' capacity.
    spare: Vec<ExpiryHolding>,
    buffers: ScenarioBuffers,
}

/// Seconds from the valuation time to `expiry_ns` (0 once expired), as the reference counts
/// them: integer nanoseconds first, then / 1e9.
fn seconds_to(expiry_ns: i64, valuation_ns: i64) -> f64 {
    (expiry_ns as i128 - valuation_ns as i128).max(0) as f64 / 1e9
}

/// The `(initial, maintenance)` requirements of one account: the sums over its underlyings.
/// `balance_rows` are the account's balance rows in asset order (as `value_balances` sorted
/// them), read only when haircuts are contingencies; `asset_price` the (possibly stressed)
/// asset prices.
#[allow(clippy::too_many_arguments)]
pub fn account_requirements(
    book: &Book,
    market: &Market,
    methodology: &ScenarioByUnderlying,
    net: &[NetPosition],
    balances: &Balances,
    balance_rows: &[(u32, u32)],
    asset_price: &[f64],
    values: Option<&InstrumentValues>,
    scratch: &mut ScenarioScratch,
) -> (f64, f64) {
    let (mut im, mut mm) = (0.0, 0.0);
    let mut buffers = std::mem::take(&mut scratch.buffers);
    for_each_portfolio(book, market, methodology, net, balances, balance_rows, asset_price, scratch, |_, p, m| {
        // the methodology was checked when the book was built: no structural error is left
        let result = match values {
            Some(v) => scenario_requirements(p, m, v, &mut buffers),
            None => scenario_requirements(p, m, &DirectValues, &mut buffers),
        };
        let (i, mnt) = result.unwrap_or((f64::NAN, f64::NAN));
        im += i;
        mm += mnt;
    });
    scratch.buffers = buffers;
    (im, mm)
}

/// The account's portfolios in underlying order (`u32::MAX`: coins alone), each handed to
/// `visit` with its methodology.
#[allow(clippy::too_many_arguments)]
pub fn for_each_portfolio(
    book: &Book,
    market: &Market,
    methodology: &ScenarioByUnderlying,
    net: &[NetPosition],
    balances: &Balances,
    balance_rows: &[(u32, u32)],
    asset_price: &[f64],
    scratch: &mut ScenarioScratch,
    mut visit: impl FnMut(u32, &ScenarioPortfolio, &ScenarioMethodology),
) {
    let ins = &book.instruments;
    let coins = methodology.haircuts_as_contingency();
    let quote = book.assets.quote_asset();
    const COIN: u32 = 1 << 31;
    scratch.keys.clear();
    for (i, p) in net.iter().enumerate() {
        scratch.keys.push((ins.underlying[p.instrument as usize], i as u32));
    }
    if coins {
        // an unlinked coin joins the account's first underlying with positions or linked coins
        // (its charges read that spot feed's confidence, as on a one-underlying venue), or stands alone
        let linked = balance_rows
            .iter()
            .filter(|&&(asset, row)| Some(asset) != quote && balances.amount[row as usize] != 0.0)
            .filter_map(|&(asset, _)| book.assets.underlying[asset as usize]);
        let first = scratch.keys.iter().map(|k| k.0).chain(linked).min().unwrap_or(UNLINKED);
        for (k, &(asset, row)) in balance_rows.iter().enumerate() {
            if Some(asset) == quote || balances.amount[row as usize] == 0.0 {
                continue; // cash, or no coin
            }
            let u = book.assets.underlying[asset as usize].unwrap_or(first);
            scratch.keys.push((u, COIN | k as u32));
        }
    }
    // stable: positions (instrument order) before coins (asset order) within an underlying
    scratch.keys.sort_unstable();
    let mut start = 0;
    while start < scratch.keys.len() {
        let u = scratch.keys[start].0;
        let end = start + scratch.keys[start..].iter().take_while(|k| k.0 == u).count();
        let keys = std::mem::take(&mut scratch.keys);
        let p = &mut scratch.portfolio;
        reset(p, &mut scratch.spare);
        scratch.expiry_ns.clear();
        if u == UNLINKED {
            p.spot = 0.0;
            p.spot_confidence = 1.0;
        } else {
            p.spot = market.index_price[u as usize];
            if p.spot.is_nan() {
                p.spot = 0.0; // coins alone (positions have index prices): the spot only sizes positions
            }
            p.spot_confidence = market.index_confidence[u as usize];
        }
        p.stable_price = market.quote_usd_price;
        for &(_, k) in &keys[start..end] {
            if k & COIN != 0 {
                let (asset, row) = balance_rows[(k & !COIN) as usize];
                let (a, r) = (asset as usize, row as usize);
                let amount = balances.amount[r];
                if amount == 0.0 {
                    continue;
                }
                let w = &book.assets;
                let (mm_haircut, im_haircut) = if amount > 0.0 {
                    (1.0 - w.maintenance_weight[a], w.maintenance_weight[a] - w.initial_weight[a])
                } else {
                    (1.0 - w.maintenance_liability_weight[a], w.maintenance_liability_weight[a] - w.initial_liability_weight[a])
                };
                p.collaterals.push(CollateralHolding {
                    name: String::new(),
                    value: amount * asset_price[a],
                    risk_cancelling: w.underlying[a] == Some(u),
                    maintenance_haircut: mm_haircut,
                    initial_haircut: im_haircut,
                    confidence: w.price_confidence[a],
                });
                continue;
            }
            let pos = &net[k as usize];
            let id = pos.instrument as usize;
            match ins.kind[id] {
                Kind::Perpetual | Kind::Future => p.linears.push(linear_holding(book, market, id, pos.quantity)),
                Kind::Option => {
                    let expiry_ns = ins.expiry_ns[id].unwrap_or(0);
                    let option = option_holding(book, market, id, pos.quantity);
                    let confidence = market.mark_confidence[id];
                    match scratch.expiry_ns.iter().position(|&e| e == expiry_ns) {
                        Some(e) => {
                            let e = &mut p.expiries[e];
                            e.options.push(option);
                            e.confidence = e.confidence.min(confidence);
                        }
                        None => {
                            let mut e = expiry_holding(book, market, id, scratch.spare.pop().map(|e| e.options));
                            e.confidence = e.confidence.min(confidence);
                            e.options.push(option);
                            p.expiries.push(e);
                            scratch.expiry_ns.push(expiry_ns);
                        }
                    }
                }
            }
        }
        scratch.keys = keys;
        let m = if u == UNLINKED { &methodology.default } else { methodology.for_underlying(u as usize) };
        visit(u, &scratch.portfolio, m);
        start = end;
    }
}

fn reset(p: &mut ScenarioPortfolio, spare: &mut Vec<ExpiryHolding>) {
    p.cash = 0.0;
    p.perp_quantity = 0.0;
    p.perp_mark = 0.0;
    p.perp_unsettled = 0.0;
    spare.append(&mut p.expiries);
    p.collaterals.clear();
    p.linears.clear();
    p.perp_confidence = 1.0;
}

/// A perpetual's or future's holding as the account builder makes it (quantity `q`).
fn linear_holding(book: &Book, market: &Market, id: usize, q: f64) -> LinearHolding {
    let ins = &book.instruments;
    LinearHolding {
        quantity: q,
        mark: market.mark_price[id],
        multiplier: ins.multiplier[id],
        seconds_to_expiry: match (ins.kind[id], ins.expiry_ns[id]) {
            (Kind::Future, Some(e)) => Some(seconds_to(e, market.valuation_ns)),
            _ => None,
        },
        order: id as i64,
        days_to_expiry: (ins.kind[id] == Kind::Future).then_some(market.time_to_expiry[id] * 365.0),
        confidence: market.mark_confidence[id],
    }
}

/// One contract's holding as the account builder makes it (quantity `q`).
fn option_holding(book: &Book, market: &Market, id: usize, q: f64) -> OptionHolding {
    let ins = &book.instruments;
    OptionHolding { strike: ins.strike[id], is_call: ins.is_call[id], quantity: q, vol: market.implied_vol[id], multiplier: ins.multiplier[id], order: id as i64 }
}

/// The (empty) expiry holding of option `id`: its feed's forward (or the index), rate and
/// confidence, its time to expiry; `options`: a vector to reuse.
fn expiry_holding(book: &Book, market: &Market, id: usize, options: Option<Vec<OptionHolding>>) -> ExpiryHolding {
    let mut options = options.unwrap_or_default();
    options.clear();
    let u = book.instruments.underlying[id] as usize;
    let feed = market.expiry_feed[id].unwrap_or_else(|| ExpiryFeed::on_index(market.index_price[u]));
    ExpiryHolding {
        seconds_to_expiry: seconds_to(book.instruments.expiry_ns[id].unwrap_or(0), market.valuation_ns),
        forward_variable: feed.forward_variable,
        forward_fixed: feed.forward_fixed,
        rate: feed.rate,
        options,
        confidence: feed.confidence,
        days_to_expiry: Some(market.time_to_expiry[id] * 365.0),
    }
}

/// Every option's numbers under its underlying's methodology, computed once per market by
/// [`DirectValues`] on a one-contract holding, so that reading them gives the same bits:
/// per option `[mtm, basis up, basis down, delta, row 0, row 1, ...]` (a row: the contract's
/// value, or under `risk_array` revaluation its P&L with the multiplier); per perpetual and
/// future its [`linear_contract_pnl`] under each row.
#[derive(Debug, Clone, Default)]
pub struct InstrumentValues {
    /// Per instrument: where an option's numbers start in `values`.
    start: Vec<Option<u32>>,
    /// Per instrument: where a perpetual's or future's rows start in `values`.
    linear_start: Vec<Option<u32>>,
    values: Vec<f64>,
    /// Per instrument: its expiry's factors (the expiry built from this option, as an account's
    /// expiry is built from its first option).
    factors: Vec<Option<ExpiryFactors>>,
}

const HEAD: usize = 4;

impl InstrumentValues {
    pub fn new(book: &Book, market: &Market, methodology: &ScenarioByUnderlying) -> InstrumentValues {
        use rayon::prelude::*;
        let ins = &book.instruments;
        enum Values {
            Option(Vec<f64>, ExpiryFactors),
            Linear(Vec<f64>),
        }
        let per: Vec<Option<Values>> = (0..ins.len())
            .into_par_iter()
            .map(|id| {
                let u = ins.underlying[id] as usize;
                let m = methodology.for_underlying(u);
                if ins.kind[id] != Kind::Option {
                    let l = linear_holding(book, market, id, 1.0);
                    return Some(Values::Linear(m.scenarios.iter().map(|row| linear_contract_pnl(&l, row)).collect()));
                }
                if market.mark_price[id].is_nan() || market.index_price[u].is_nan() {
                    return None;
                }
                let mut e = expiry_holding(book, market, id, None);
                e.options.push(option_holding(book, market, id, 1.0));
                let o = &e.options[0];
                let pre: ExpiryPrecompute = precompute_expiry_with(&e, m, &DirectValues);
                let v = &DirectValues;
                let mut out = Vec::with_capacity(HEAD + m.scenarios.len());
                let (up, down) = m.basis_contingency.as_ref().map_or((1.0, 1.0), |b| (1.0 + b.spot_up, 1.0 + b.spot_down));
                out.push(v.value(&e, o, pre.discount, Eval::Mtm));
                out.push(v.value(&e, o, pre.discount, Eval::BasisUp(up)));
                out.push(v.value(&e, o, pre.discount, Eval::BasisDown(down)));
                out.push(v.delta(&e, o));
                for (r, row) in m.scenarios.iter().enumerate() {
                    out.push(match (m.revaluation, row.vol_shock, m.skew_shock.as_ref()) {
                        (Revaluation::RiskArray, _, _) => v.contract_pnl(&e, &pre, o, row, r, m),
                        (_, VolShockKind::SkewLinear, Some(s)) => v.skewed(&e, o, pre.discount, true, s, r),
                        (_, VolShockKind::SkewAbs, Some(s)) => v.skewed(&e, o, pre.discount, false, s, r),
                        _ => v.value(&e, o, pre.discount, row_eval(&pre, row, r, m)),
                    });
                }
                Some(Values::Option(out, expiry_factors(&e, m)))
            })
            .collect();
        let mut start = Vec::with_capacity(ins.len());
        let mut linear_start = Vec::with_capacity(ins.len());
        let mut factors = Vec::with_capacity(ins.len());
        let mut values = Vec::new();
        for p in per {
            let at = Some(values.len() as u32);
            let (s, l, f) = match p {
                None => (None, None, None),
                Some(Values::Option(v, f)) => {
                    values.extend(v);
                    (at, None, Some(f))
                }
                Some(Values::Linear(v)) => {
                    values.extend(v);
                    (None, at, None)
                }
            };
            start.push(s);
            linear_start.push(l);
            factors.push(f);
        }
        InstrumentValues { start, linear_start, values, factors }
    }

    /// The size of the stored values, in bytes.
    pub fn bytes(&self) -> usize {
        8 * self.values.len() + (self.start.len() + self.linear_start.len()) * std::mem::size_of::<Option<u32>>() + self.factors.len() * std::mem::size_of::<Option<ExpiryFactors>>()
    }

    #[inline]
    fn at(&self, o: &OptionHolding, k: usize) -> Option<f64> {
        let s = *self.start.get(usize::try_from(o.order).ok()?)?;
        self.values.get(s? as usize + k).copied()
    }
}

impl OptionValues for InstrumentValues {
    fn value(&self, e: &ExpiryHolding, o: &OptionHolding, discount: f64, eval: Eval) -> f64 {
        let k = match eval {
            Eval::Mtm => Some(0),
            Eval::BasisUp(_) => Some(1),
            Eval::BasisDown(_) => Some(2),
            Eval::Row { row, .. } => row.checked_add(HEAD),
        };
        k.and_then(|k| self.at(o, k)).unwrap_or_else(|| DirectValues.value(e, o, discount, eval))
    }

    fn skewed(&self, e: &ExpiryHolding, o: &OptionHolding, discount: f64, linear: bool, s: &SkewShock, row: usize) -> f64 {
        row.checked_add(HEAD).and_then(|k| self.at(o, k)).unwrap_or_else(|| DirectValues.skewed(e, o, discount, linear, s, row))
    }

    fn contract_pnl(&self, e: &ExpiryHolding, pre: &ExpiryPrecompute, o: &OptionHolding, row: &ScenarioRow, r: usize, m: &ScenarioMethodology) -> f64 {
        r.checked_add(HEAD).and_then(|k| self.at(o, k)).unwrap_or_else(|| DirectValues.contract_pnl(e, pre, o, row, r, m))
    }

    fn delta(&self, e: &ExpiryHolding, o: &OptionHolding) -> f64 {
        self.at(o, 3).unwrap_or_else(|| DirectValues.delta(e, o))
    }

    fn expiry_factors(&self, e: &ExpiryHolding, m: &ScenarioMethodology) -> ExpiryFactors {
        let first = e.options.first().and_then(|o| usize::try_from(o.order).ok());
        first.and_then(|id| self.factors.get(id).copied().flatten()).unwrap_or_else(|| expiry_factors(e, m))
    }

    fn rows(&self, o: &OptionHolding, rows: usize) -> Option<&[f64]> {
        let s = (*self.start.get(usize::try_from(o.order).ok()?)?)? as usize + HEAD;
        self.values.get(s..s + rows)
    }

    fn linear_rows(&self, l: &LinearHolding, rows: usize) -> Option<&[f64]> {
        let s = (*self.linear_start.get(usize::try_from(l.order).ok()?)?)? as usize;
        self.values.get(s..s + rows)
    }
}
