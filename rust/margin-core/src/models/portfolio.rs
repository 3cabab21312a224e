//! Portfolio (risk-based) margin (methodology §4).
//!
//! 1. Risk arrays: each instrument is revalued once per call under every scenario of its
//!    underlying (spot moves × vol states, plus two extreme moves), giving a per-contract P&L
//!    vector stored scenario-contiguous.
//! 2. Per account and underlying, the scenario P&L is the sparse product `P_s = Σ q × array_s`
//!    over its netted positions, accumulated in a per-thread scratch of one account's scenarios
//!    (never an accounts × scenarios matrix).
//! 3. `MM_u = max(scan loss, extreme loss × cover, short-option minimum)`, `IM_u = im_factor × MM_u`.

use std::sync::Arc;

use arrow_array::{ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, Schema};
use rayon::prelude::*;

use crate::black76;
use crate::book::{Book, RiskParams};
use crate::market::Market;
use crate::table::Key;
use crate::valuation::NetPosition;

/// Volatility state of a scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolState {
    Down,
    Unchanged,
    Up,
}

impl VolState {
    pub fn as_str(self) -> &'static str {
        match self {
            VolState::Down => "down",
            VolState::Unchanged => "none",
            VolState::Up => "up",
        }
    }
}

/// One scenario of an underlying's grid.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scenario {
    /// Relative spot move.
    pub spot_move: f64,
    pub vol: VolState,
    pub extreme: bool,
}

/// The scenarios of one underlying: regular `s = 3k + v` (k = spot step, v = down/none/up),
/// then the extreme down and up moves.
pub fn scenarios(p: &RiskParams) -> Vec<Scenario> {
    let n = p.price_steps;
    let r = p.price_range;
    let mut out = Vec::with_capacity(3 * n + 2);
    for k in 0..n {
        let spot_move = -r + 2.0 * r * k as f64 / (n - 1) as f64;
        for vol in [VolState::Down, VolState::Unchanged, VolState::Up] {
            out.push(Scenario { spot_move, vol, extreme: false });
        }
    }
    for sign in [-1.0, 1.0] {
        out.push(Scenario { spot_move: sign * p.extreme_move * r, vol: VolState::Unchanged, extreme: true });
    }
    out
}

/// Shocked implied vol of an option in a vol state (§4).
pub fn shocked_vol(p: &RiskParams, vol: f64, time_to_expiry: f64, state: VolState) -> f64 {
    let dte = time_to_expiry * 365.0;
    let shift = (30.0 / dte.max(1.0)).powf(p.vol_term_exponent);
    match state {
        VolState::Unchanged => vol,
        VolState::Up => vol * (1.0 + p.vol_up * shift),
        VolState::Down => vol * (1.0 - p.vol_down * shift).max(0.01),
    }
}

/// Per-contract scenario P&L of every instrument with market data.
pub struct RiskArrays {
    /// Scenarios per underlying id.
    pub scenarios: Vec<Vec<Scenario>>,
    /// Start of each instrument's array in `pnl` (`None`: no mark or index price).
    pub offset: Vec<Option<usize>>,
    pub pnl: Vec<f64>,
    /// Under a book's scenario methodology: each option's values under its table, computed
    /// once per market (v1's arrays above are then not built).
    pub scenario_values: Option<crate::methodology::account::InstrumentValues>,
}

impl RiskArrays {
    pub fn new(book: &Book, market: &Market) -> RiskArrays {
        Self::build(book, market, None)
    }

    /// Risk arrays of the instruments of one underlying only (the others get none).
    pub fn for_underlying(book: &Book, market: &Market, underlying: usize) -> RiskArrays {
        Self::build(book, market, Some(underlying))
    }

    fn build(book: &Book, market: &Market, only: Option<usize>) -> RiskArrays {
        let ins = &book.instruments;
        if let Some(methodology) = &book.methodology.portfolio {
            return RiskArrays {
                scenarios: vec![Vec::new(); book.underlyings.names.len()],
                offset: vec![None; ins.len()],
                pnl: Vec::new(),
                scenario_values: Some(crate::methodology::account::InstrumentValues::new(book, market, methodology)),
            };
        }
        let scenarios: Vec<Vec<Scenario>> = book.underlyings.risk.iter().map(scenarios).collect();
        let mut offset = Vec::with_capacity(ins.len());
        let mut total = 0;
        for id in 0..ins.len() {
            let u = ins.underlying[id] as usize;
            if market.mark_price[id].is_nan() || market.index_price[u].is_nan() || only.is_some_and(|o| o != u) {
                offset.push(None);
            } else {
                offset.push(Some(total));
                total += scenarios[u].len();
            }
        }
        let arrays: Vec<Vec<f64>> = (0..ins.len())
            .into_par_iter()
            .map(|id| match offset[id] {
                None => Vec::new(),
                Some(_) => instrument_array(book, market, id, &scenarios[ins.underlying[id] as usize]),
            })
            .collect();
        RiskArrays { scenarios, offset, pnl: arrays.concat(), scenario_values: None }
    }

    /// The size of the arrays (or of the scenario methodology's option values), in bytes.
    pub fn bytes(&self) -> usize {
        8 * self.pnl.len() + self.scenario_values.as_ref().map_or(0, |v| v.bytes())
    }

    /// An error naming the instruments whose scenario P&L overflows float64.
    pub fn check_finite(&self, book: &Book) -> crate::Result<()> {
        let mut bad = crate::error::Offenders::default();
        for id in 0..book.instruments.len() {
            if !self.array(book, id).iter().all(|v| v.is_finite()) {
                bad.push(|| format!("'{}'", book.instruments.labels[id]));
            }
        }
        bad.into_result("instruments", "multiplier", "scenario P&L overflows float64 (check multipliers and marks)")
    }

    /// The risk array of an instrument (empty if it has no market data).
    pub fn array(&self, book: &Book, instrument: usize) -> &[f64] {
        match self.offset[instrument] {
            None => &[],
            Some(o) => &self.pnl[o..o + self.scenarios[book.instruments.underlying[instrument] as usize].len()],
        }
    }
}

/// Per-contract P&L of one instrument under each scenario: `mult × mark × m` for linear
/// contracts; `mult × (B76(S(1+m), K, T, σ') − B76(S, K, T, σ))` for options. An inverse
/// contract's array is its coin P&L in the scenario times the moved coin price `P (1 + m)`:
/// `mult × (1/mark − 1/(mark (1+m))) × P (1+m)` for a perpetual or future,
/// `mult × (B76(S(1+m), σ')/(S(1+m)) − B76(S, σ)/S) × P (1+m)` for a coin-settled option.
fn instrument_array(book: &Book, market: &Market, id: usize, scenarios: &[Scenario]) -> Vec<f64> {
    let spot = market.index_price[book.instruments.underlying[id] as usize];
    let mut out = Vec::with_capacity(scenarios.len());
    instrument_array_at(book, market, id, spot, market.mark_price[id], market.settlement_price[id], scenarios, &mut out);
    out
}

/// [`instrument_array`] at index price `spot`, mark `mark` and settlement coin price
/// `settlement_price` (read for inverse contracts only; expiry and implied vol from `market`),
/// appended to `out`: the array of a moved market without building that market.
#[allow(clippy::too_many_arguments)]
pub fn instrument_array_at(book: &Book, market: &Market, id: usize, spot: f64, mark: f64, settlement_price: f64, scenarios: &[Scenario], out: &mut Vec<f64>) {
    let ins = &book.instruments;
    let u = ins.underlying[id] as usize;
    let multiplier = ins.multiplier[id];
    if ins.inverse[id] {
        inverse_array_at(book, market, id, spot, mark, settlement_price, scenarios, out);
        return;
    }
    if ins.kind[id].is_linear() {
        out.extend(scenarios.iter().map(|s| multiplier * mark * s.spot_move));
        return;
    }
    let params = &book.underlyings.risk[u];
    let (strike, time, vol, is_call) = (ins.strike[id], market.time_to_expiry[id], market.implied_vol[id], ins.is_call[id]);
    let base = black76::price(spot, strike, time, vol, is_call);
    out.extend(scenarios.iter().map(|s| {
        let shocked = shocked_vol(params, vol, time, s.vol);
        multiplier * (black76::price(spot * (1.0 + s.spot_move), strike, time, shocked, is_call) - base)
    }));
}

/// [`instrument_array_at`] of an inverse contract: coin P&L per scenario × the moved coin price.
#[allow(clippy::too_many_arguments)]
fn inverse_array_at(book: &Book, market: &Market, id: usize, spot: f64, mark: f64, settlement_price: f64, scenarios: &[Scenario], out: &mut Vec<f64>) {
    let ins = &book.instruments;
    let multiplier = ins.multiplier[id];
    if ins.kind[id].is_linear() {
        // mult × (1/mark − 1/(mark (1+m))) × P (1+m), written so that it stays finite at m = −1
        out.extend(scenarios.iter().map(|s| multiplier * settlement_price * s.spot_move / mark));
        return;
    }
    let params = &book.underlyings.risk[ins.underlying[id] as usize];
    let (strike, time, vol, is_call) = (ins.strike[id], market.time_to_expiry[id], market.implied_vol[id], ins.is_call[id]);
    let base = black76::price(spot, strike, time, vol, is_call) / spot;
    out.extend(scenarios.iter().map(|s| {
        let shocked = shocked_vol(params, vol, time, s.vol);
        // mult × (B76(S')/S' − B76(S)/S) × P (1+m) with S' = S (1+m), finite at m = −1
        let moved = black76::price(spot * (1.0 + s.spot_move), strike, time, shocked, is_call);
        multiplier * settlement_price * (moved / spot - base * (1.0 + s.spot_move))
    }));
}

/// Per-thread scratch: the account's netted positions grouped by underlying, and one
/// underlying's scenario P&L.
#[derive(Default)]
pub struct Scratch {
    grouped: Vec<(u32, NetPosition)>,
    pnl: Vec<f64>,
}

/// Margin of one underlying's scenario P&L (§4).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct UnderlyingMargin {
    pub scan_loss: f64,
    pub extreme_loss: f64,
    pub short_option_minimum: f64,
    pub maintenance_margin: f64,
}

/// `MM_u = max(scan_loss, extreme_loss, short_min)` from the scenario P&L of one underlying.
pub fn underlying_margin(params: &RiskParams, scenarios: &[Scenario], pnl: &[f64], short_option_minimum: f64) -> UnderlyingMargin {
    // [`scenarios`] lists the regular scenarios first, then the extreme ones: each worst case
    // is then the minimum of a contiguous slice
    let regular = scenarios.partition_point(|s| !s.extreme);
    let (worst_regular, worst_extreme) = if scenarios[regular..].iter().all(|s| s.extreme) {
        (minimum(&pnl[..regular]), minimum(&pnl[regular..]))
    } else {
        let worst = |extreme: bool| scenarios.iter().zip(pnl).filter(|(s, _)| s.extreme == extreme).fold(f64::INFINITY, |w, (_, p)| w.min(*p));
        (worst(false), worst(true))
    };
    let scan_loss = (-worst_regular).max(0.0);
    let extreme_loss = params.extreme_cover * (-worst_extreme).max(0.0);
    UnderlyingMargin {
        scan_loss,
        extreme_loss,
        short_option_minimum,
        maintenance_margin: scan_loss.max(extreme_loss).max(short_option_minimum),
    }
}

/// The smallest of `values` (`inf` if none), in eight independent lanes: one running minimum
/// would make every comparison wait for the previous one. The minimum does not depend on the
/// order the values are compared in.
#[inline]
fn minimum(values: &[f64]) -> f64 {
    let mut lanes = [f64::INFINITY; 8];
    let chunks = values.chunks_exact(8);
    let rest = chunks.remainder();
    for chunk in chunks {
        for (lane, v) in lanes.iter_mut().zip(chunk) {
            *lane = lane.min(*v);
        }
    }
    for (lane, v) in lanes.iter_mut().zip(rest) {
        *lane = lane.min(*v);
    }
    lanes.iter().fold(f64::INFINITY, |w, v| w.min(*v))
}

/// Margin of the netted positions of one underlying `u` (all in `u`, in instrument order):
/// `P_s = Σ q × array_s` accumulated in `pnl`, then [`underlying_margin`].
#[inline]
pub fn positions_margin<'p>(
    book: &Book,
    spot: f64,
    risk: &RiskArrays,
    u: usize,
    positions: impl Iterator<Item = &'p NetPosition>,
    pnl: &mut Vec<f64>,
) -> UnderlyingMargin {
    let arrays = positions.map(|p| (p, risk.array(book, p.instrument as usize)));
    positions_margin_of(book, spot, &risk.scenarios[u], u, arrays, pnl)
}

/// [`positions_margin`] of positions given with their risk arrays (of `scenarios`, the
/// scenarios of `u`), wherever those arrays are kept.
#[inline]
pub fn positions_margin_of<'p, 'a>(
    book: &Book,
    spot: f64,
    scenarios: &[Scenario],
    u: usize,
    positions: impl Iterator<Item = (&'p NetPosition, &'a [f64])>,
    pnl: &mut Vec<f64>,
) -> UnderlyingMargin {
    let ins = &book.instruments;
    let params = &book.underlyings.risk[u];
    pnl.clear();
    pnl.resize(scenarios.len(), 0.0);
    let mut short_minimum = 0.0;
    for (p, array) in positions {
        let id = p.instrument as usize;
        let q = p.quantity;
        for (a, r) in pnl.iter_mut().zip(array) {
            *a += q * r;
        }
        if !ins.kind[id].is_linear() && q < 0.0 {
            short_minimum += q.abs() * ins.multiplier[id] * spot * params.short_option_minimum;
        }
    }
    underlying_margin(params, scenarios, pnl, short_minimum)
}

/// Groups netted positions (in instrument order) by underlying, keeping instrument order
/// within each group: `(underlying, position)` pairs sorted by underlying.
pub fn group_by_underlying(book: &Book, net: &[NetPosition], grouped: &mut Vec<(u32, NetPosition)>) {
    grouped.clear();
    grouped.extend(net.iter().map(|p| (book.instruments.underlying[p.instrument as usize], *p)));
    grouped.sort_by_key(|(u, p)| (*u, p.instrument));
}

/// (IM, MM) of an account: `MM = Σ_u MM_u`, `IM = Σ_u im_factor_u × MM_u`, underlyings in id order.
pub fn account_margin(book: &Book, market: &Market, risk: &RiskArrays, net: &[NetPosition], scratch: &mut Scratch) -> (f64, f64) {
    group_by_underlying(book, net, &mut scratch.grouped);
    let mut im = 0.0;
    let mut mm = 0.0;
    for group in scratch.grouped.chunk_by(|a, b| a.0 == b.0) {
        let u = group[0].0 as usize;
        let spot = market.index_price[u];
        let m = positions_margin(book, spot, risk, u, group.iter().map(|(_, p)| p), &mut scratch.pnl).maintenance_margin;
        mm += m;
        im += book.underlyings.risk[u].im_factor * m;
    }
    (im, mm)
}

/// The risk arrays as a long table: one row per instrument (with market data) × scenario.
pub fn risk_arrays_batch(book: &Book, risk: &RiskArrays) -> RecordBatch {
    let ins = &book.instruments;
    let int_keys = ins.keys.first().is_some_and(|k| matches!(k, Key::Int(_)));
    let mut instrument_rows: Vec<usize> = Vec::new();
    let mut scenario = Vec::new();
    let mut spot_move = Vec::new();
    let mut vol_state = Vec::new();
    let mut extreme = Vec::new();
    let mut pnl = Vec::new();
    for id in 0..ins.len() {
        let u = ins.underlying[id] as usize;
        for (s, (sc, p)) in risk.scenarios[u].iter().zip(risk.array(book, id)).enumerate() {
            instrument_rows.push(id);
            scenario.push(s as i32);
            spot_move.push(sc.spot_move);
            vol_state.push(sc.vol.as_str());
            extreme.push(sc.extreme);
            pnl.push(*p);
        }
    }
    let instrument: ArrayRef = if int_keys {
        Arc::new(Int64Array::from(
            instrument_rows.iter().map(|id| if let Key::Int(i) = ins.keys[*id] { i } else { 0 }).collect::<Vec<i64>>(),
        ))
    } else {
        Arc::new(instrument_rows.iter().map(|id| Some(ins.labels[*id].as_str())).collect::<StringArray>())
    };
    let underlying: ArrayRef = Arc::new(
        instrument_rows.iter().map(|id| Some(book.underlyings.names[ins.underlying[*id] as usize].as_str())).collect::<StringArray>(),
    );
    let schema = Arc::new(Schema::new(vec![
        Field::new("instrument", if int_keys { DataType::Int64 } else { DataType::Utf8 }, false),
        Field::new("underlying", DataType::Utf8, false),
        Field::new("scenario", DataType::Int32, false),
        Field::new("move", DataType::Float64, false),
        Field::new("vol_state", DataType::Utf8, false),
        Field::new("extreme", DataType::Boolean, false),
        Field::new("pnl", DataType::Float64, false),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            instrument,
            underlying,
            Arc::new(Int32Array::from(scenario)),
            Arc::new(Float64Array::from(spot_move)),
            Arc::new(vol_state.into_iter().map(Some).collect::<StringArray>()),
            Arc::new(BooleanArray::from(extreme)),
            Arc::new(Float64Array::from(pnl)),
        ],
    )
    .expect("columns match the schema by construction")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_grid_has_63_regular_and_2_extreme_scenarios() {
        let s = scenarios(&RiskParams::default());
        assert_eq!(s.len(), 65);
        assert_eq!(s[0].spot_move, -0.15);
        assert!((s[3 * 10].spot_move).abs() < 1e-15);
        assert_eq!(s[62].spot_move, 0.15);
        assert_eq!(s[63].spot_move, -(3.0 * 0.15));
        assert!(s[64].extreme && s[64].spot_move == 3.0 * 0.15);
    }

    #[test]
    fn margin_is_the_worst_of_scan_extreme_and_minimum() {
        let p = RiskParams::default();
        let sc = scenarios(&RiskParams { price_steps: 3, ..p });
        // regular worst −10, extreme worst −40 → 0.33 × 40 = 13.2
        let pnl = [1.0, -10.0, 0.0, 0.0, 0.0, 0.0, 5.0, 5.0, 5.0, -40.0, 3.0];
        let m = underlying_margin(&p, &sc, &pnl, 2.0);
        assert_eq!(m.scan_loss, 10.0);
        assert!((m.extreme_loss - 13.2).abs() < 1e-12);
        assert_eq!(m.maintenance_margin, m.extreme_loss);
    }
}
