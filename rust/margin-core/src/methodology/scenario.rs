//! The scenario engine: per-expiry precomputes, the P&L of every row, the worst loss, the
//! contingencies and the combination into IM and MM.
//!
//! Each step follows `python/margin_engine/reference/scenarios.py` and adds its terms in the
//! same order, so the two engines agree to the last few bits of rounding.


use super::params::*;
use crate::black76;
use crate::error::{InputError, Result};

pub const SECONDS_PER_DAY: f64 = 86_400.0;
pub const SECONDS_PER_YEAR: f64 = 365.0 * SECONDS_PER_DAY;

/// Numbers computed once per expiry and read by every row.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct ExpiryPrecompute {
    pub mtm: f64,
    pub discount: f64,
    pub vol_up: f64,
    pub vol_down: f64,
    pub static_long: f64,
    pub static_short: f64,
    pub basis_up_pnl: f64,
    pub basis_down_pnl: f64,
    pub basis_charge: f64,
}

/// Charges added to the scenario loss (each >= 0).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Contingencies {
    pub perp_maintenance: f64,
    pub perp_initial: f64,
    pub option_maintenance: f64,
    pub option_initial: f64,
    pub collateral_maintenance: f64,
    pub collateral_initial: f64,
    pub confidence: f64,
    pub calendar_basis: f64,
    pub concentration: f64,
}

impl Contingencies {
    /// Everything the MM charges.
    pub fn maintenance(&self) -> f64 {
        self.perp_maintenance + self.option_maintenance + self.collateral_maintenance + self.calendar_basis + self.concentration
    }

    /// What the IM charges beyond [`Contingencies::maintenance`].
    pub fn initial_extra(&self) -> f64 {
        self.perp_initial + self.option_initial + self.collateral_initial + self.confidence
    }
}

/// The engine's answer for one portfolio (signed margins: negative means a shortfall).
#[derive(Debug, Clone, PartialEq)]
pub struct ScenarioMargin {
    pub initial_margin: f64,
    pub maintenance_margin: f64,
    pub mark_to_market: f64,
    pub cash: f64,
    pub scenario_pnl: Vec<f64>,
    /// Lowest P&L per group, groups in order of first appearance in the table.
    pub worst_by_group: Vec<(String, f64)>,
    pub basis_contingency: f64,
    pub worst_loss: f64,
    pub worst_scenario: Option<usize>,
    pub contingencies: Contingencies,
    pub initial_loss_factor: f64,
    pub maintenance_loss_factor: f64,
    pub expiries: Vec<ExpiryPrecompute>,
    pub initial_requirement: f64,
    pub maintenance_requirement: f64,
}

// ------------------------------------------------------------------------------------------
// Pricing
// ------------------------------------------------------------------------------------------

/// Undiscounted Black-76 value; intrinsic value when the time, `σ√t` or the forward is not
/// positive (a forward pushed to or below zero by an extreme move has no log-moneyness).
fn b76_price(forward: f64, strike: f64, years: f64, vol: f64, is_call: bool) -> f64 {
    if years <= 0.0 || forward <= 0.0 {
        return black76::price(forward, strike, 0.0, vol, is_call);
    }
    black76::price(forward, strike, years, vol, is_call)
}

fn b76_delta(forward: f64, strike: f64, years: f64, vol: f64, is_call: bool) -> f64 {
    if years <= 0.0 || forward <= 0.0 {
        return black76::greeks(forward, strike, 0.0, vol, is_call).delta;
    }
    black76::greeks(forward, strike, years, vol, is_call).delta
}

fn option_value(forward: f64, strike: f64, years: f64, vol: f64, is_call: bool, discount: f64) -> f64 {
    discount * b76_price(forward, strike, years, vol, is_call)
}

// ------------------------------------------------------------------------------------------
// Step 1: per expiry
// ------------------------------------------------------------------------------------------

/// `exp(−max(r, 0) t)` when options are discounted, else 1.
pub fn discount_factor(e: &ExpiryHolding, m: &ScenarioMethodology) -> f64 {
    if !m.discount_options {
        return 1.0;
    }
    (-e.rate.max(0.0) * e.years()).exp()
}

/// The `(up, down)` vol multipliers of an expiry.
pub fn vol_shock_factors(e: &ExpiryHolding, m: &ScenarioMethodology) -> (f64, f64) {
    let p = &m.vol_shock;
    let days = e.days();
    let tau = p.reference_days / days.max(p.dte_floor_days);
    let power = if days <= p.term_threshold_days { p.short_term_power } else { p.long_term_power };
    let scale = tau.powf(power);
    (1.0 + p.vol_up * scale, p.down_floor.max(1.0 - p.vol_down * scale))
}

/// `(long, short)` scales of a positive / negative shocked expiry value.
pub fn static_discount_factors(e: &ExpiryHolding, discount: f64, m: &ScenarioMethodology) -> (f64, f64) {
    let Some(sd) = &m.static_discount else { return (1.0, 1.0) };
    let t = e.years();
    let r = e.rate.max(0.0);
    let long = sd.long_base * (-t * (r * sd.long_rate_mult + sd.long_rate_add)).exp();
    let mut short = sd.short_base / (-t * (r * sd.short_rate_mult + sd.short_rate_add)).exp();
    if sd.cap_short_at_inverse_discount {
        short = short.min(1.0 / discount);
    }
    (long, short)
}

/// Which value of one option contract a step reads: at the current forward and vols, at the
/// basis contingency's two moves, or under row `r` of the table (the evaluation's own
/// arguments follow, so that a [`DirectValues`] pricer needs no table).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Eval {
    Mtm,
    BasisUp(f64),
    BasisDown(f64),
    Row { row: usize, spot_factor: f64, vol_factor: f64, min_vol: f64 },
}

/// How the engine gets an option contract's numbers: computed on the spot ([`DirectValues`]),
/// or read from values computed once per instrument and market (`account::InstrumentValues`).
/// Both give the same bits: a cache stores what [`DirectValues`] computes for one contract.
pub trait OptionValues {
    /// Value of one contract (before quantity and multiplier): discounted Black-76 on the
    /// variable forward × the evaluation's spot factor plus the fixed part, vol × its factor
    /// (kept at or above its minimum).
    fn value(&self, e: &ExpiryHolding, o: &OptionHolding, discount: f64, eval: Eval) -> f64;
    /// Value of one contract under skew row `row` (smile tilted by log-moneyness).
    fn skewed(&self, e: &ExpiryHolding, o: &OptionHolding, discount: f64, linear: bool, s: &SkewShock, row: usize) -> f64;
    /// `risk_array` revaluation: the contract's P&L (multiplier included) under `row`.
    fn contract_pnl(&self, e: &ExpiryHolding, pre: &ExpiryPrecompute, o: &OptionHolding, row: &ScenarioRow, r: usize, m: &ScenarioMethodology) -> f64;
    /// Black-76 delta of one contract on the current forward.
    fn delta(&self, e: &ExpiryHolding, o: &OptionHolding) -> f64;
    /// The expiry's [`ExpiryFactors`] (a cache reads them by its first option's instrument).
    fn expiry_factors(&self, e: &ExpiryHolding, m: &ScenarioMethodology) -> ExpiryFactors {
        expiry_factors(e, m)
    }
    /// The contract's numbers under rows `0..rows` when they are stored (what `value`,
    /// `skewed` or `contract_pnl` would read, row by row), so that a portfolio's rows are
    /// summed holding by holding over one slice; `None`: ask per row.
    fn rows(&self, _o: &OptionHolding, _rows: usize) -> Option<&[f64]> {
        None
    }
    /// A linear contract's P&L under rows `0..rows` ([`linear_contract_pnl`], row by row) when
    /// stored; `None`: compute per row.
    fn linear_rows(&self, _l: &LinearHolding, _rows: usize) -> Option<&[f64]> {
        None
    }
}

/// Computes every value from the holding.
pub struct DirectValues;

impl OptionValues for DirectValues {
    fn value(&self, e: &ExpiryHolding, o: &OptionHolding, discount: f64, eval: Eval) -> f64 {
        let (spot_factor, vol_factor, min_vol) = match eval {
            Eval::Mtm => (1.0, 1.0, 0.0),
            Eval::BasisUp(f) | Eval::BasisDown(f) => (f, 1.0, 0.0),
            Eval::Row { spot_factor, vol_factor, min_vol, .. } => (spot_factor, vol_factor, min_vol),
        };
        let forward = e.forward_variable * spot_factor + e.forward_fixed;
        let vol = min_vol.max(o.vol * vol_factor);
        option_value(forward, o.strike, e.years(), vol, o.is_call, discount)
    }

    fn skewed(&self, e: &ExpiryHolding, o: &OptionHolding, discount: f64, linear: bool, s: &SkewShock, _row: usize) -> f64 {
        let years = e.years();
        let root_t = years.sqrt();
        let cap = if linear { s.linear_cap + s.linear_cap_slope * root_t } else { s.abs_cap + s.abs_cap_slope * root_t };
        let k_star = s.min_k_star.max(root_t * s.width_scale * (s.vol_level + s.vol_level_slope * root_t));
        let forward = e.forward();
        let mut k = (o.strike / forward).ln();
        if !linear {
            k = k.abs();
        }
        let tilt = if k >= 0.0 { cap.min(k * cap / k_star) } else { (-cap).max(k * cap / k_star) };
        let vol = o.vol * 0.0f64.max(1.0 + tilt);
        option_value(forward, o.strike, years, vol, o.is_call, discount)
    }

    fn contract_pnl(&self, e: &ExpiryHolding, pre: &ExpiryPrecompute, o: &OptionHolding, row: &ScenarioRow, _r: usize, m: &ScenarioMethodology) -> f64 {
        let vol = match row.vol_shock {
            VolShockKind::Up => m.vol_shock.min_shocked_vol_up.max(o.vol * pre.vol_up),
            VolShockKind::Down => o.vol * pre.vol_down,
            _ => o.vol,
        };
        let years = e.years();
        let forward = e.forward_variable * row.spot_factor() + e.forward_fixed;
        let shocked = option_value(forward, o.strike, years, vol, o.is_call, pre.discount);
        let current = option_value(e.forward(), o.strike, years, o.vol, o.is_call, pre.discount);
        o.multiplier * (shocked - current)
    }

    fn delta(&self, e: &ExpiryHolding, o: &OptionHolding) -> f64 {
        b76_delta(e.forward(), o.strike, e.years(), o.vol, o.is_call)
    }
}

/// Value of the expiry's options under `eval`.
pub fn expiry_value_with(e: &ExpiryHolding, discount: f64, eval: Eval, v: &impl OptionValues) -> f64 {
    let mut total = 0.0;
    for o in &e.options {
        total += o.quantity * o.multiplier * v.value(e, o, discount, eval);
    }
    total
}

/// Value of the expiry's options, the variable forward scaled by `spot_factor`, every vol by
/// `vol_factor` (and kept at or above `min_vol`).
pub fn expiry_value(e: &ExpiryHolding, discount: f64, spot_factor: f64, vol_factor: f64, min_vol: f64) -> f64 {
    expiry_value_with(e, discount, Eval::Row { row: usize::MAX, spot_factor, vol_factor, min_vol }, &DirectValues)
}

/// Value of the expiry's options with the smile tilted by log-moneyness, on the current forward.
fn skewed_expiry_value(e: &ExpiryHolding, discount: f64, linear: bool, s: &SkewShock, row: usize, v: &impl OptionValues) -> f64 {
    let mut total = 0.0;
    for o in &e.options {
        total += o.quantity * o.multiplier * v.skewed(e, o, discount, linear, s, row);
    }
    total
}

/// `(up P&L, down P&L, charge)` of the basis contingency of one expiry (charge <= 0).
pub fn basis_contingency(e: &ExpiryHolding, mtm: f64, discount: f64, m: &ScenarioMethodology) -> (f64, f64, f64) {
    basis_contingency_with(e, mtm, discount, m, &DirectValues)
}

fn basis_contingency_with(e: &ExpiryHolding, mtm: f64, discount: f64, m: &ScenarioMethodology, v: &impl OptionValues) -> (f64, f64, f64) {
    let Some(bc) = &m.basis_contingency else { return (0.0, 0.0, 0.0) };
    let up = expiry_value_with(e, discount, Eval::BasisUp(1.0 + bc.spot_up), v) - mtm;
    let down = expiry_value_with(e, discount, Eval::BasisDown(1.0 + bc.spot_down), v) - mtm;
    let charge = up.min(down).min(0.0) * (bc.add_factor + bc.mult_factor * e.years());
    (up, down, charge)
}

pub fn precompute_expiry(e: &ExpiryHolding, m: &ScenarioMethodology) -> ExpiryPrecompute {
    precompute_expiry_with(e, m, &DirectValues)
}

/// What an expiry's numbers take from its time to expiry and rate alone (no holding): the same
/// for every account holding the expiry.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExpiryFactors {
    pub discount: f64,
    pub vol_up: f64,
    pub vol_down: f64,
    pub static_long: f64,
    pub static_short: f64,
}

pub fn expiry_factors(e: &ExpiryHolding, m: &ScenarioMethodology) -> ExpiryFactors {
    let discount = discount_factor(e, m);
    let (vol_up, vol_down) = vol_shock_factors(e, m);
    let (static_long, static_short) = static_discount_factors(e, discount, m);
    ExpiryFactors { discount, vol_up, vol_down, static_long, static_short }
}

pub fn precompute_expiry_with(e: &ExpiryHolding, m: &ScenarioMethodology, v: &impl OptionValues) -> ExpiryPrecompute {
    let ExpiryFactors { discount, vol_up, vol_down, static_long, static_short } = v.expiry_factors(e, m);
    let mtm = expiry_value_with(e, discount, Eval::Mtm, v);
    let (basis_up_pnl, basis_down_pnl, basis_charge) = basis_contingency_with(e, mtm, discount, m, v);
    ExpiryPrecompute { mtm, discount, vol_up, vol_down, static_long, static_short, basis_up_pnl, basis_down_pnl, basis_charge }
}

// ------------------------------------------------------------------------------------------
// Step 2: row P&L
// ------------------------------------------------------------------------------------------

/// The evaluation of row `r` for an expiry's options.
pub fn row_eval(pre: &ExpiryPrecompute, row: &ScenarioRow, r: usize, m: &ScenarioMethodology) -> Eval {
    let (vol_factor, min_vol) = match row.vol_shock {
        VolShockKind::Up => (pre.vol_up, m.vol_shock.min_shocked_vol_up),
        VolShockKind::Down => (pre.vol_down, 0.0),
        _ => (1.0, 0.0),
    };
    Eval::Row { row: r, spot_factor: row.spot_factor(), vol_factor, min_vol }
}

/// One contract's value under row `r` (see [`shocked_expiry_value`]).
fn shocked_option_value(e: &ExpiryHolding, o: &OptionHolding, pre: &ExpiryPrecompute, row: &ScenarioRow, r: usize, m: &ScenarioMethodology, v: &impl OptionValues) -> Result<f64> {
    Ok(match row.vol_shock {
        VolShockKind::SkewLinear | VolShockKind::SkewAbs => v.skewed(e, o, pre.discount, row.vol_shock == VolShockKind::SkewLinear, skew_shock_of(m)?, r),
        _ => v.value(e, o, pre.discount, row_eval(pre, row, r, m)),
    })
}

fn skew_shock_of(m: &ScenarioMethodology) -> Result<&SkewShock> {
    m.skew_shock
        .as_ref()
        .ok_or_else(|| InputError::new("methodology", "skew_shock", "the scenario table has skew rows but no skew_shock parameters"))
}

fn shocked_expiry_value(e: &ExpiryHolding, pre: &ExpiryPrecompute, row: &ScenarioRow, r: usize, m: &ScenarioMethodology, v: &impl OptionValues) -> Result<f64> {
    Ok(match row.vol_shock {
        VolShockKind::SkewLinear | VolShockKind::SkewAbs => {
            let s = skew_shock_of(m)?;
            skewed_expiry_value(e, pre.discount, row.vol_shock == VolShockKind::SkewLinear, s, r, v)
        }
        _ => expiry_value_with(e, pre.discount, row_eval(pre, row, r, m), v),
    })
}

/// One linear contract's P&L under `row`: `multiplier × mark × spot_move`.
pub fn linear_contract_pnl(lin: &LinearHolding, row: &ScenarioRow) -> f64 {
    lin.multiplier * lin.mark * row.spot_move
}

/// `expiry_sum` revaluation of one row, times its weight.
pub fn scenario_pnl(p: &ScenarioPortfolio, pres: &[ExpiryPrecompute], row: &ScenarioRow, m: &ScenarioMethodology) -> Result<f64> {
    scenario_pnl_with(p, pres, row, usize::MAX, m, &DirectValues)
}

fn scenario_pnl_with(p: &ScenarioPortfolio, pres: &[ExpiryPrecompute], row: &ScenarioRow, r: usize, m: &ScenarioMethodology, v: &impl OptionValues) -> Result<f64> {
    let mv = row.spot_factor() - 1.0;
    let mut pnl = if p.perp_quantity != 0.0 { p.perp_quantity * (mv * p.perp_mark) * row.weight } else { 0.0 };
    for lin in &p.linears {
        pnl += lin.quantity * linear_contract_pnl(lin, row) * row.weight;
    }
    for (e, pre) in p.expiries.iter().zip(pres) {
        let mut shocked = shocked_expiry_value(e, pre, row, r, m, v)?;
        shocked *= if shocked >= 0.0 { pre.static_long } else { pre.static_short };
        let mut expiry_pnl = (shocked - pre.mtm) * row.weight;
        if row.vol_shock.is_skew() {
            expiry_pnl = -expiry_pnl.abs();
        }
        pnl += expiry_pnl;
    }
    for c in &p.collaterals {
        if c.risk_cancelling {
            pnl += c.value * mv * row.weight;
        }
    }
    Ok(pnl)
}

/// A holding in the account's order, by index into the portfolio: an option (its expiry's
/// index and its own) or a linear holding. Indices rather than references so that the list can
/// live in [`ScenarioBuffers`] from one portfolio to the next.
#[derive(Debug, Clone, Copy)]
enum Held {
    Option(u32, u32),
    Linear(u32),
}

/// A held item resolved against its portfolio.
enum HeldRef<'a> {
    Option(usize, &'a OptionHolding),
    Linear(&'a LinearHolding),
}

impl Held {
    #[inline(always)]
    fn resolve(self, p: &ScenarioPortfolio) -> HeldRef<'_> {
        match self {
            Held::Option(e, o) => HeldRef::Option(e as usize, &p.expiries[e as usize].options[o as usize]),
            Held::Linear(l) => HeldRef::Linear(&p.linears[l as usize]),
        }
    }
}

/// Options then linear holdings, stably sorted by `order`, into `items` (cleared first) with
/// their keys beside them (the sort reads no holding).
fn ordered_holdings(p: &ScenarioPortfolio, items: &mut Vec<(i64, Held)>) {
    items.clear();
    for (i, e) in p.expiries.iter().enumerate() {
        items.extend(e.options.iter().enumerate().map(|(k, o)| (o.order, Held::Option(i as u32, k as u32))));
    }
    items.extend(p.linears.iter().enumerate().map(|(k, l)| (l.order, Held::Linear(k as u32))));
    if !items.is_sorted_by_key(|(order, _)| *order) {
        items.sort_by_key(|(order, _)| *order);
    }
}

/// `pnls[r] += q × values[r]` for every row.
#[inline]
fn add_scaled(pnls: &mut [f64], q: f64, values: &[f64]) {
    for (pnl, &x) in pnls.iter_mut().zip(values) {
        *pnl += q * x;
    }
}

/// `risk_array` revaluation of every row into `pnls`: per row the perpetual, then each holding
/// in the account's order, then the risk-cancelling coins, the sum times the row's weight.
/// Holding by holding over all rows, each row's terms added in that order (as row by row).
fn risk_array_pnls(p: &ScenarioPortfolio, pres: &[ExpiryPrecompute], held: &[(i64, Held)], m: &ScenarioMethodology, v: &impl OptionValues, pnls: &mut Vec<f64>) {
    let rows = &m.scenarios;
    if p.perp_quantity != 0.0 {
        pnls.extend(rows.factor_moves().iter().map(|&mv| p.perp_quantity * (mv * p.perp_mark)));
    } else {
        pnls.resize(rows.len(), 0.0);
    }
    for (_, h) in held {
        match h.resolve(p) {
            HeldRef::Linear(l) => match v.linear_rows(l, rows.len()) {
                Some(values) => add_scaled(pnls, l.quantity, values),
                None => {
                    for (pnl, row) in pnls.iter_mut().zip(rows.iter()) {
                        *pnl += l.quantity * linear_contract_pnl(l, row);
                    }
                }
            },
            HeldRef::Option(i, o) => match v.rows(o, rows.len()) {
                Some(values) => add_scaled(pnls, o.quantity, values),
                None => {
                    for (r, (pnl, row)) in pnls.iter_mut().zip(rows.iter()).enumerate() {
                        *pnl += o.quantity * v.contract_pnl(&p.expiries[i], &pres[i], o, row, r, m);
                    }
                }
            },
        }
    }
    // coin by coin over the rows: each row still adds its coins in the portfolio's order
    for c in p.collaterals.iter().filter(|c| c.risk_cancelling) {
        for (pnl, &mv) in pnls.iter_mut().zip(rows.factor_moves()) {
            *pnl += c.value * mv;
        }
    }
    for (pnl, &w) in pnls.iter_mut().zip(rows.weights()) {
        *pnl *= w;
    }
}

/// `expiry_sum` revaluation of every row into `pnls`, each row's terms added in
/// [`scenario_pnl`]'s order (perpetual, linear holdings, expiries, coins), term by term over
/// all rows; an expiry's shocked value summed option by option over all rows in `shocked`.
fn expiry_sum_pnls(p: &ScenarioPortfolio, pres: &[ExpiryPrecompute], m: &ScenarioMethodology, v: &impl OptionValues, pnls: &mut Vec<f64>, shocked: &mut Vec<f64>) -> Result<()> {
    let rows = &m.scenarios;
    let weights = rows.weights();
    if m.skew_shock.is_none() && !p.expiries.is_empty() && rows.iter().any(|r| r.vol_shock.is_skew()) {
        skew_shock_of(m)?;
    }
    if p.perp_quantity != 0.0 {
        pnls.extend(rows.factor_moves().iter().zip(weights).map(|(&mv, &w)| p.perp_quantity * (mv * p.perp_mark) * w));
    } else {
        pnls.resize(rows.len(), 0.0);
    }
    for lin in &p.linears {
        match v.linear_rows(lin, rows.len()) {
            Some(values) => {
                for ((pnl, &x), &w) in pnls.iter_mut().zip(values).zip(weights) {
                    *pnl += lin.quantity * x * w;
                }
            }
            None => {
                for (pnl, row) in pnls.iter_mut().zip(rows.iter()) {
                    *pnl += lin.quantity * linear_contract_pnl(lin, row) * row.weight;
                }
            }
        }
    }
    for (e, pre) in p.expiries.iter().zip(pres) {
        shocked.clear();
        shocked.resize(rows.len(), 0.0);
        for o in &e.options {
            match v.rows(o, rows.len()) {
                Some(values) => {
                    for (s, &x) in shocked.iter_mut().zip(values) {
                        *s += o.quantity * o.multiplier * x;
                    }
                }
                None => {
                    for (r, (s, row)) in shocked.iter_mut().zip(rows.iter()).enumerate() {
                        *s += o.quantity * o.multiplier * shocked_option_value(e, o, pre, row, r, m, v)?;
                    }
                }
            }
        }
        for ((pnl, &w), (&value, &skew)) in pnls.iter_mut().zip(weights).zip(shocked.iter().zip(rows.skew())) {
            let value = value * if value >= 0.0 { pre.static_long } else { pre.static_short };
            let mut expiry_pnl = (value - pre.mtm) * w;
            if skew {
                expiry_pnl = -expiry_pnl.abs();
            }
            *pnl += expiry_pnl;
        }
    }
    for c in p.collaterals.iter().filter(|c| c.risk_cancelling) {
        for ((pnl, &mv), &w) in pnls.iter_mut().zip(rows.factor_moves()).zip(weights) {
            *pnl += c.value * mv * w;
        }
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------
// Step 4: contingencies
// ------------------------------------------------------------------------------------------

/// Delta in the quote currency per expiry bucket (0: perpetuals and risk-cancelling coins), into
/// `out` as `(bucket, delta)` in bucket order (cleared first; an account has a few buckets, so a
/// sorted vector kept between portfolios rather than a map).
fn bucket_deltas(p: &ScenarioPortfolio, pres: &[ExpiryPrecompute], m: &ScenarioMethodology, v: &impl OptionValues, out: &mut Vec<(usize, f64)>) {
    let edges: &[f64] = m.calendar_basis.as_ref().map(|c| c.bucket_edges_days.as_slice()).unwrap_or(&[]);
    let bucket = |days: Option<f64>| match days {
        None => 0,
        Some(d) => 1 + edges.iter().take_while(|&&x| x < d).count(),
    };
    out.clear();
    let mut add = |b: usize, d: f64| match out.binary_search_by_key(&b, |e| e.0) {
        Ok(i) => out[i].1 += d,
        Err(i) => out.insert(i, (b, 0.0 + d)),
    };
    if p.perp_quantity != 0.0 {
        add(0, p.perp_quantity * p.perp_mark);
    }
    for l in &p.linears {
        add(bucket(l.days()), l.quantity * l.multiplier * l.mark);
    }
    for (e, pre) in p.expiries.iter().zip(pres) {
        let forward = e.forward();
        let b = bucket(Some(e.days()));
        for o in &e.options {
            let delta = v.delta(e, o);
            add(b, o.quantity * o.multiplier * pre.discount * delta * forward);
        }
    }
    for c in &p.collaterals {
        if c.risk_cancelling {
            add(0, c.value);
        }
    }
}

fn rate_of(cb: &CalendarBasis, bucket: usize) -> Result<f64> {
    cb.bucket_rates.get(bucket).copied().ok_or_else(|| {
        InputError::new("methodology", "calendar_basis.bucket_rates", format!("no rate for bucket {bucket}"))
    })
}

/// Long bucket deltas matched in proportion against short ones, at the larger bucket rate.
fn calendar_basis_charge(deltas: &[(usize, f64)], m: &ScenarioMethodology) -> Result<f64> {
    let Some(cb) = &m.calendar_basis else { return Ok(0.0) };
    let longs = || deltas.iter().filter(|(_, d)| *d > 0.0).map(|&(b, d)| (b, d));
    let shorts = || deltas.iter().filter(|(_, d)| *d < 0.0).map(|&(b, d)| (b, -d));
    if longs().next().is_none() || shorts().next().is_none() {
        return Ok(0.0);
    }
    let total_long: f64 = longs().fold(0.0, |a, (_, d)| a + d);
    let total_short: f64 = shorts().fold(0.0, |a, (_, d)| a + d);
    let scale = total_long.max(total_short);
    let mut charge = 0.0;
    for (i, li) in longs() {
        for (j, sj) in shorts() {
            charge += li * sj / scale * rate_of(cb, i)?.max(rate_of(cb, j)?);
        }
    }
    Ok(charge)
}

/// `rate × max(0, |net delta| − L)^1.5 / L^0.5`.
fn concentration_charge(deltas: &[(usize, f64)], m: &ScenarioMethodology) -> f64 {
    let Some(c) = &m.concentration else { return 0.0 };
    let net = deltas.iter().fold(0.0, |a, (_, d)| a + d);
    let excess = net.abs() - c.liquidity_notional;
    if excess <= 0.0 {
        return 0.0;
    }
    c.rate * excess * (excess / c.liquidity_notional).sqrt()
}

/// Shorts beyond the longs of the same strike (calls and puts together), summed over strikes.
fn naked_short_options(e: &ExpiryHolding) -> f64 {
    // strikes in order of first appearance (as the reference's dict), each strike's shorts and
    // longs summed in holding order; an expiry holds a few options, so the quadratic scan beats
    // a map (and allocates nothing)
    let options = &e.options;
    let mut naked = 0.0;
    for (i, o) in options.iter().enumerate() {
        if options[..i].iter().any(|p| p.strike == o.strike) {
            continue; // not the strike's first appearance
        }
        let (mut shorts, mut longs) = (0.0, 0.0);
        for p in std::iter::once(o).chain(options[i + 1..].iter().filter(|p| p.strike == o.strike)) {
            if p.quantity < 0.0 {
                shorts += p.quantity;
            } else if p.quantity > 0.0 {
                longs += p.quantity;
            }
        }
        naked += (-shorts - longs).max(0.0);
    }
    naked
}

fn confidence_charge(confidence: f64, notional: f64, m: &ScenarioMethodology) -> f64 {
    match &m.confidence_contingency {
        Some(cc) if confidence < cc.threshold => (1.0 - confidence) * cc.scale * notional,
        _ => 0.0,
    }
}

/// Every contingency of the portfolio.
pub fn contingencies(p: &ScenarioPortfolio, m: &ScenarioMethodology, pres: &[ExpiryPrecompute]) -> Result<Contingencies> {
    contingencies_with(p, m, pres, &DirectValues, &mut Vec::new())
}

fn contingencies_with(p: &ScenarioPortfolio, m: &ScenarioMethodology, pres: &[ExpiryPrecompute], v: &impl OptionValues, deltas: &mut Vec<(usize, f64)>) -> Result<Contingencies> {
    let mut out = Contingencies::default();
    let pc = m.position_contingency.as_ref();
    let mut book_confidence = p.spot_confidence;
    if p.perp_quantity != 0.0 {
        book_confidence = book_confidence.min(p.perp_confidence);
    }
    let mut perp_notional = p.perp_quantity.abs() * p.spot;
    // perpetuals held as linear holdings (a book's accounts) count as the net perpetual does
    for l in p.linears.iter().filter(|l| l.seconds_to_expiry.is_none()) {
        perp_notional += l.quantity.abs() * l.multiplier * p.spot;
        book_confidence = book_confidence.min(l.confidence);
    }
    if let Some(pc) = pc {
        out.perp_maintenance = perp_notional * pc.perp_maintenance;
        out.perp_initial = perp_notional * pc.perp_initial;
    }
    out.confidence += confidence_charge(book_confidence, perp_notional, m);
    for e in &p.expiries {
        if let Some(pc) = pc {
            let naked_notional = naked_short_options(e) * p.spot;
            out.option_maintenance += naked_notional * pc.option_maintenance;
            out.option_initial += naked_notional * pc.option_initial;
        }
        let gross = e.options.iter().fold(0.0, |a, o| a + o.quantity.abs()) * p.spot;
        out.confidence += confidence_charge(book_confidence.min(e.confidence), gross, m);
    }
    for c in &p.collaterals {
        if m.collateral_haircuts_as_contingency {
            out.collateral_maintenance += c.value * c.maintenance_haircut;
            out.collateral_initial += c.value * c.initial_haircut;
        }
        out.confidence += confidence_charge(p.spot_confidence.min(c.confidence), c.value, m);
    }
    if m.calendar_basis.is_some() || m.concentration.is_some() {
        bucket_deltas(p, pres, m, v, deltas);
        out.calendar_basis = calendar_basis_charge(deltas, m)?;
        out.concentration = concentration_charge(deltas, m);
    }
    Ok(out)
}

// ------------------------------------------------------------------------------------------
// Steps 3 and 5: worst loss and combination
// ------------------------------------------------------------------------------------------

/// The IM loss factor, raised by the peg loss below its threshold.
pub fn initial_loss_factor(p: &ScenarioPortfolio, m: &ScenarioMethodology) -> f64 {
    let mut factor = m.loss_factors.initial;
    if let Some(peg) = &m.peg_loss {
        if p.stable_price < peg.threshold {
            factor += (peg.threshold - p.stable_price) * peg.factor;
        }
    }
    factor
}

/// v1's short-option minimum over the short options, in the holdings' order.
fn short_option_minimum(p: &ScenarioPortfolio, held: &[(i64, Held)], rate: f64) -> f64 {
    let mut total = 0.0;
    for (_, h) in held {
        if let HeldRef::Option(_, o) = h.resolve(p) {
            if o.quantity < 0.0 {
                total += o.quantity.abs() * o.multiplier * p.spot * rate;
            }
        }
    }
    total
}

/// Python's `max(a, b)`: `a` unless `b` is larger.
fn first_max(a: f64, b: f64) -> f64 {
    if b > a { b } else { a }
}

/// The `max_of_groups` rule's `(IM, MM)` requirements.
/// The lowest row P&Ls: the worst loss (the basis charge unless a row is lower) and the lowest
/// P&L of the regular and of the extreme rows (Python's `min`: the first unless a later one is
/// smaller; `None` without such rows).
#[derive(Debug, Clone, Copy, PartialEq)]
struct RowMinima {
    worst: f64,
    regular: Option<f64>,
    extreme: Option<f64>,
}

/// Independent running minima: one running minimum makes every comparison wait for the
/// previous one, and this pass is a chain of 30 to 70 of them per portfolio.
const LANES: usize = 8;

impl RowMinima {
    /// [`RowMinima::in_order`], found in [`LANES`] independent lanes. The order values are
    /// compared in changes nothing but which of two equal zeros (0.0, −0.0) is kept and whether
    /// a leading NaN is kept: in those cases (a NaN basis, a class led by a NaN, a minimum of
    /// zero) the answer is the in-order pass's, so both give the same bits always.
    fn of(rows: &ScenarioTable, pnls: &[f64], basis: f64) -> RowMinima {
        let (regular, extreme) = match rows.classes_split() {
            // the classes are two slices: one running minimum each
            Some(k) if k <= pnls.len() => (lane_minimum(&pnls[..k]), lane_minimum(&pnls[k..])),
            _ => masked_lane_minima(rows.extreme(), pnls),
        };
        let (first_regular, first_extreme) = rows.first_of_each_class();
        let (first_regular, first_extreme) = (first_regular.and_then(|i| pnls.get(i).copied()), first_extreme.and_then(|i| pnls.get(i).copied()));
        let low = |w: f64, v: f64| if v < w { v } else { w };
        let fast = RowMinima {
            worst: low(low(basis, regular), extreme),
            regular: first_regular.map(|_| regular),
            extreme: first_extreme.map(|_| extreme),
        };
        let zero = |x: Option<f64>| x == Some(0.0);
        let nan = |x: Option<f64>| x.is_some_and(f64::is_nan);
        if basis.is_nan() || fast.worst == 0.0 || zero(fast.regular) || zero(fast.extreme) || nan(first_regular) || nan(first_extreme) {
            return RowMinima::in_order(rows, pnls, basis);
        }
        fast
    }

    /// The minima in one pass over the rows in table order: the rule the lanes reproduce.
    fn in_order(rows: &[ScenarioRow], pnls: &[f64], basis: f64) -> RowMinima {
        let mut worst = basis;
        let (mut regular, mut extreme) = (None::<f64>, None::<f64>);
        for (r, &v) in rows.iter().zip(pnls) {
            if v < worst {
                worst = v;
            }
            let low = if r.extreme { &mut extreme } else { &mut regular };
            match low {
                Some(w) if !(v < *w) => {}
                _ => *low = Some(v),
            }
        }
        RowMinima { worst, regular, extreme }
    }
}

/// The smallest of `values` that is not NaN (`+inf` if none), in [`LANES`] independent lanes.
#[inline]
fn lane_minimum(values: &[f64]) -> f64 {
    // `if v < w { v } else { w }`: a NaN `v` never replaces `w`
    let low = |w: f64, v: f64| if v < w { v } else { w };
    let mut lanes = [f64::INFINITY; LANES];
    let chunks = values.chunks_exact(LANES);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane = low(*lane, v);
        }
    }
    for (lane, &v) in lanes.iter_mut().zip(rest) {
        *lane = low(*lane, v);
    }
    lanes.into_iter().fold(f64::INFINITY, low)
}

/// [`lane_minimum`] of the regular and of the extreme rows when the classes interleave: each
/// value goes to its class's lane, the other class's lane sees `+inf` (which replaces nothing).
fn masked_lane_minima(extreme_rows: &[bool], values: &[f64]) -> (f64, f64) {
    let low = |w: f64, v: f64| if v < w { v } else { w };
    let (mut regular, mut extreme) = ([f64::INFINITY; LANES], [f64::INFINITY; LANES]);
    for (k, (&x, &v)) in extreme_rows.iter().zip(values).enumerate() {
        let (r, e) = if x { (f64::INFINITY, v) } else { (v, f64::INFINITY) };
        regular[k % LANES] = low(regular[k % LANES], r);
        extreme[k % LANES] = low(extreme[k % LANES], e);
    }
    (regular.into_iter().fold(f64::INFINITY, low), extreme.into_iter().fold(f64::INFINITY, low))
}

/// The row of the worst loss: the first row below the basis charge, then any row lower still
/// (`None`: no row is below the basis charge).
fn worst_row(pnls: &[f64], basis: f64) -> Option<usize> {
    let (mut worst, mut row) = (basis, None);
    for (i, &v) in pnls.iter().enumerate() {
        if v < worst {
            worst = v;
            row = Some(i);
        }
    }
    row
}

fn max_of_group_requirements(p: &ScenarioPortfolio, held: &[(i64, Held)], minima: &RowMinima, basis: f64, cont: &Contingencies, m: &ScenarioMethodology) -> Result<(f64, f64)> {
    let mg = m
        .max_of_groups
        .as_ref()
        .ok_or_else(|| InputError::new("methodology", "max_of_groups", "combination max_of_groups needs the max_of_groups parameters"))?;
    let (regular, extreme_low) = (minima.regular, minima.extreme);
    let mut scan = regular.map_or(0.0, |w| first_max(0.0, -w));
    if m.basis_contingency.is_some() {
        scan = first_max(scan, -basis);
    }
    let extreme = extreme_low.map_or(0.0, |w| mg.extreme_cover * first_max(0.0, -w));
    let short_min = short_option_minimum(p, held, mg.short_option_minimum);
    let mut mm = first_max(first_max(scan, extreme), short_min);
    let maintenance = cont.maintenance();
    if maintenance != 0.0 {
        mm += maintenance;
    }
    let mut im = mg.im_factor * mm;
    let extra = cont.initial_extra();
    if extra != 0.0 {
        im += extra;
    }
    Ok((im, mm))
}

/// Scenario margin of one portfolio under a methodology.
pub fn margin_scenarios(p: &ScenarioPortfolio, m: &ScenarioMethodology) -> Result<ScenarioMargin> {
    m.check()?;
    margin_scenarios_checked(p, m, &DirectValues)
}

/// [`margin_scenarios`] for a methodology already checked, reading option values from `v`.
pub fn margin_scenarios_checked(p: &ScenarioPortfolio, m: &ScenarioMethodology, v: &impl OptionValues) -> Result<ScenarioMargin> {
    let mut buffers = ScenarioBuffers::default();
    let c = evaluate(p, m, v, &mut buffers)?;
    let mut worst_by_group: Vec<(String, f64)> = Vec::new();
    for (row, &v) in m.scenarios.iter().zip(&buffers.pnls) {
        match worst_by_group.iter_mut().find(|(g, _)| *g == row.group) {
            Some((_, w)) => {
                if v < *w {
                    *w = v
                }
            }
            None => worst_by_group.push((row.group.clone(), v)),
        }
    }
    let worst_scenario = worst_row(&buffers.pnls, c.basis);
    Ok(ScenarioMargin {
        initial_margin: c.im,
        maintenance_margin: c.mm,
        mark_to_market: c.mtm,
        cash: p.cash,
        scenario_pnl: buffers.pnls,
        worst_by_group,
        basis_contingency: c.basis,
        worst_loss: c.worst,
        worst_scenario,
        contingencies: c.cont,
        initial_loss_factor: c.im_factor,
        maintenance_loss_factor: m.loss_factors.maintenance,
        expiries: buffers.pres,
        initial_requirement: c.im_req,
        maintenance_requirement: c.mm_req,
    })
}

/// Buffers reused from one portfolio to the next by [`scenario_requirements`].
#[derive(Debug, Default)]
pub struct ScenarioBuffers {
    pres: Vec<ExpiryPrecompute>,
    pnls: Vec<f64>,
    /// One expiry's shocked value per row.
    shocked: Vec<f64>,
    /// The holdings in the account's order, each with its sort key.
    held: Vec<(i64, Held)>,
    /// Delta per expiry bucket.
    deltas: Vec<(usize, f64)>,
}

/// The `(IM, MM)` requirements of [`margin_scenarios_checked`] alone, without allocating.
pub fn scenario_requirements(p: &ScenarioPortfolio, m: &ScenarioMethodology, v: &impl OptionValues, buffers: &mut ScenarioBuffers) -> Result<(f64, f64)> {
    let c = evaluate(p, m, v, buffers)?;
    Ok((c.im_req, c.mm_req))
}

/// What every caller of the engine reads.
struct Evaluated {
    mtm: f64,
    basis: f64,
    worst: f64,
    cont: Contingencies,
    im_factor: f64,
    im: f64,
    mm: f64,
    im_req: f64,
    mm_req: f64,
}

/// Steps 1 to 5; the per-expiry numbers and row P&L are left in `buffers`.
fn evaluate(p: &ScenarioPortfolio, m: &ScenarioMethodology, v: &impl OptionValues, buffers: &mut ScenarioBuffers) -> Result<Evaluated> {
    let pres = &mut buffers.pres;
    pres.clear();
    pres.extend(p.expiries.iter().map(|e| precompute_expiry_with(e, m, v)));
    let mut mtm = p.perp_unsettled + pres.iter().fold(0.0, |a, x| a + x.mtm);
    if m.collateral_haircuts_as_contingency {
        mtm += p.collaterals.iter().fold(0.0, |a, c| a + c.value);
    } else {
        mtm += p.collaterals.iter().fold(0.0, |a, c| a + c.value * (1.0 - c.maintenance_haircut));
    }

    // the holdings in the account's order, sorted once for the row P&L and the short minimum
    let held = &mut buffers.held;
    held.clear();
    if m.revaluation == Revaluation::RiskArray || m.combination == Combination::MaxOfGroups {
        ordered_holdings(p, held);
    }
    let pnls = &mut buffers.pnls;
    pnls.clear();
    match m.revaluation {
        Revaluation::RiskArray => risk_array_pnls(p, pres, held, m, v, pnls),
        Revaluation::ExpirySum => expiry_sum_pnls(p, pres, m, v, pnls, &mut buffers.shocked)?,
    }

    let basis = pres.iter().fold(0.0, |a, x| a + x.basis_charge);
    let minima = RowMinima::of(&m.scenarios, pnls, basis);
    let worst = minima.worst;

    let cont = contingencies_with(p, m, pres, v, &mut buffers.deltas)?;
    let im_factor = initial_loss_factor(p, m);
    let mm_factor = m.loss_factors.maintenance;
    let equity = mtm + p.cash;
    let (im, mm, im_req, mm_req) = match m.combination {
        Combination::MaxOfGroups => {
            let (im_req, mm_req) = max_of_group_requirements(p, held, &minima, basis, &cont, m)?;
            (equity - im_req, equity - mm_req, im_req, mm_req)
        }
        Combination::LossFactor => (
            worst * im_factor - cont.maintenance() - cont.initial_extra() + equity,
            worst * mm_factor - cont.maintenance() + equity,
            cont.maintenance() + cont.initial_extra() - worst * im_factor,
            cont.maintenance() - worst * mm_factor,
        ),
    };
    Ok(Evaluated { mtm, basis, worst, cont, im_factor, im, mm, im_req, mm_req })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(spot_move: f64, vol_shock: VolShockKind, weight: f64, group: &str) -> ScenarioRow {
        ScenarioRow::new(spot_move, vol_shock, weight, group.to_string())
    }

    fn methodology(scenarios: Vec<ScenarioRow>) -> ScenarioMethodology {
        ScenarioMethodology {
            name: "hand".into(),
            scenarios: ScenarioTable::new(scenarios),
            vol_shock: VolShock {
                vol_up: 0.5,
                vol_down: 0.3,
                short_term_power: 0.5,
                long_term_power: 0.2,
                dte_floor_days: 1.0,
                term_threshold_days: 30.0,
                reference_days: 30.0,
                min_shocked_vol_up: 0.0,
                down_floor: 0.0,
            },
            loss_factors: LossFactors { initial: 1.0, maintenance: 0.8 },
            skew_shock: None,
            static_discount: None,
            basis_contingency: None,
            position_contingency: None,
            confidence_contingency: None,
            peg_loss: None,
            discount_options: false,
            collateral_haircuts_as_contingency: true,
            max_of_groups: None,
            calendar_basis: None,
            concentration: None,
            revaluation: Revaluation::ExpirySum,
            combination: Combination::LossFactor,
        }
    }

    #[test]
    fn perpetual_down_move_with_loss_factors_and_contingency() {
        // 2 perps on a mark of 1,000: a −10% row loses 200 (weight 1), a +10% row at weight 0.5
        // gains 100; the worst loss is −200. Perp contingency 1% MM / 0.5% IM of |2| × spot 1,000.
        let mut m = methodology(vec![row(-0.1, VolShockKind::None, 1.0, "regular"), row(0.1, VolShockKind::None, 0.5, "extreme")]);
        m.position_contingency = Some(PositionContingency { perp_maintenance: 0.01, perp_initial: 0.005, ..Default::default() });
        let p = ScenarioPortfolio { spot: 1_000.0, cash: 500.0, perp_quantity: 2.0, perp_mark: 1_000.0, ..Default::default() };
        let r = margin_scenarios(&p, &m).unwrap();
        assert!((r.scenario_pnl[0] + 200.0).abs() < 1e-9 && (r.scenario_pnl[1] - 100.0).abs() < 1e-9);
        assert_eq!(r.worst_scenario, Some(0));
        assert!((r.contingencies.perp_maintenance - 20.0).abs() < 1e-12);
        assert!((r.contingencies.perp_initial - 10.0).abs() < 1e-12);
        // MM = 0.8 × (−200) − 20 + 500 = 320; IM = −200 − 20 − 10 + 500 = 270
        assert!((r.maintenance_margin - 320.0).abs() < 1e-9, "{}", r.maintenance_margin);
        assert!((r.initial_margin - 270.0).abs() < 1e-9, "{}", r.initial_margin);
        assert_eq!(r.worst_by_group, vec![("regular".to_string(), r.scenario_pnl[0]), ("extreme".to_string(), r.scenario_pnl[1])]);
    }

    #[test]
    fn one_call_is_revalued_with_black76_and_v1_rule() {
        // one short call; a +20% row with vols up: P&L = −(value at 1.2 F, vol × up − value now)
        let days = 10.0;
        let e = ExpiryHolding {
            seconds_to_expiry: days * SECONDS_PER_DAY,
            forward_variable: 100.0,
            forward_fixed: 0.0,
            rate: 0.0,
            options: vec![OptionHolding { strike: 100.0, is_call: true, quantity: -1.0, vol: 0.5, multiplier: 1.0, order: 0 }],
            confidence: 1.0,
            days_to_expiry: None,
        };
        let p = ScenarioPortfolio { spot: 100.0, expiries: vec![e], ..Default::default() };
        let mut m = methodology(vec![row(0.2, VolShockKind::Up, 1.0, "regular"), row(-0.3, VolShockKind::None, 1.0, "extreme")]);
        m.revaluation = Revaluation::RiskArray;
        m.combination = Combination::MaxOfGroups;
        m.max_of_groups = Some(MaxOfGroups { extreme_cover: 0.5, short_option_minimum: 0.1, im_factor: 1.25 });
        let t = days / 365.0;
        let up = 1.0 + 0.5 * (30.0f64 / days).powf(0.5);
        let now = black76::price(100.0, 100.0, t, 0.5, true);
        let shocked = black76::price(120.0, 100.0, t, 0.5 * up, true);
        let r = margin_scenarios(&p, &m).unwrap();
        let want = -(shocked - now);
        assert!((r.scenario_pnl[0] - want).abs() < 1e-12 * want.abs().max(1.0));
        // the scan loss beats both the extreme (a short call gains on a fall) and the 10 short minimum
        let mm_req = -want;
        assert!(mm_req > 10.0);
        assert!((r.maintenance_requirement - mm_req).abs() < 1e-12 * mm_req);
        assert!((r.initial_requirement - 1.25 * mm_req).abs() < 1e-12 * mm_req);
        assert!((r.maintenance_margin - (-now - mm_req)).abs() < 1e-9);
    }

    #[test]
    fn structural_errors_are_input_errors() {
        let m = methodology(vec![row(0.0, VolShockKind::SkewLinear, 1.0, "skew")]);
        let e = margin_scenarios(&ScenarioPortfolio::default(), &m).unwrap_err();
        assert_eq!(e.column, "skew_shock");
        let mut m = methodology(vec![row(0.1, VolShockKind::None, 1.0, "regular")]);
        m.calendar_basis = Some(CalendarBasis { bucket_edges_days: vec![7.0], bucket_rates: vec![0.01] });
        let e = margin_scenarios(&ScenarioPortfolio::default(), &m).unwrap_err();
        assert_eq!(e.column, "calendar_basis.bucket_rates");
        let m = methodology(Vec::new());
        assert!(margin_scenarios(&ScenarioPortfolio::default(), &m).is_err());
    }

    #[test]
    fn row_minima_in_lanes_give_the_in_order_bits() {
        // tables of 0 to 80 rows, values with ties, both zeros, NaN and
        // infinities: every field bit for bit
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let pool = [-3.5, -1.0, f64::NEG_INFINITY, -1.0e-300, -0.0, 0.0, 2.0, 7.25, f64::NAN, f64::INFINITY];
        let bits = |m: RowMinima| (m.worst.to_bits(), m.regular.map(f64::to_bits), m.extreme.map(f64::to_bits));
        for case in 0..20_000 {
            let n = (next() % 81) as usize;
            // half the tables regular rows then extreme ones (two slices), half interleaved
            let k = (next() % (n as u64 + 1)) as usize;
            let extreme = |i: usize, x: u64| if case % 2 == 0 { i >= k } else { x % 4 == 0 };
            let rows = ScenarioTable::new((0..n).map(|i| row(0.0, VolShockKind::None, 1.0, if extreme(i, next()) { "extreme" } else { "regular" })).collect());
            assert_eq!(rows.classes_split().is_some(), case % 2 == 0 || rows.extreme().windows(2).all(|w| w[0] <= w[1]));
            // a third of the tables from the pool, a third from its zeros, NaN and positives alone
            // (minima of zero, in either sign), a third from a plain range
            let pool: &[f64] = match case % 3 { 0 => &pool, 1 => &pool[4..], _ => &[] };
            let draw = |x: u64| if pool.is_empty() { (x % 2_000) as f64 / 7.0 - 150.0 } else { pool[(x % pool.len() as u64) as usize] };
            let pnls: Vec<f64> = (0..n).map(|_| draw(next())).collect();
            let basis = match next() % 3 { 0 => 0.0, 1 => draw(next()), _ => -draw(next()).abs() };
            let (fast, slow) = (RowMinima::of(&rows, &pnls, basis), RowMinima::in_order(&rows, &pnls, basis));
            assert_eq!(bits(fast), bits(slow), "case {case}: {pnls:?} basis {basis}");
        }
    }

    #[test]
    fn calendar_spread_is_charged_at_the_larger_rate() {
        // long 1 perp on 60,000, short 1 future of 60 days on 60,000: matched 60,000 at the
        // 60-day bucket's 2% = 1,200
        let mut m = methodology(vec![row(0.1, VolShockKind::None, 1.0, "regular")]);
        m.calendar_basis = Some(CalendarBasis { bucket_edges_days: vec![7.0, 30.0, 90.0], bucket_rates: vec![0.005, 0.005, 0.01, 0.02, 0.03] });
        let fut = LinearHolding { quantity: -1.0, mark: 60_000.0, multiplier: 1.0, seconds_to_expiry: Some(60.0 * SECONDS_PER_DAY), order: 1, days_to_expiry: None, confidence: 1.0 };
        let p = ScenarioPortfolio { spot: 60_000.0, perp_quantity: 1.0, perp_mark: 60_000.0, linears: vec![fut], ..Default::default() };
        let r = margin_scenarios(&p, &m).unwrap();
        assert!((r.contingencies.calendar_basis - 1_200.0).abs() < 1e-9);
        assert!(r.scenario_pnl[0].abs() < 1e-9);
    }
}
