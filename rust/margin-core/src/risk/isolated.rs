//! Isolated margin (docs/methodology.md "Isolated margin", docs/liquidation.md §8).
//!
//! An isolated position is margined alone: the caller (the Python API) hands each isolated
//! (account, instrument) over as an account of its own, holding that position's rows and its
//! isolated collateral as a balance of the quote asset. [`isolated_margin`] margins those
//! accounts with the engine, optionally charges maintenance on the entry notional
//! ([`MaintenanceBasis::Entry`], Bybit-style), and finds each position's liquidation price:
//!
//! - perpetuals and futures under the standard model: closed form, bracket by bracket of the
//!   tier schedule (the margin is piecewise linear in the price);
//! - options, and every position under the portfolio model: the bracketing root of
//!   [`nearest_root`] (a walk in 1% steps from the index price, then bisection to 1e-12) of the
//!   excess plus the status rule's tolerance `1e-9 × max(1, MM)`: where the position's status
//!   turns liquidatable, so that rounding noise around an excess of 0 is no crossing.
//!
//! Liquidation prices are index prices of the underlying (the axis of the stress tests and the
//! liquidation distances: perpetual and future marks move with the index by the same factor),
//! searched on [1e-8, 100] × the index price; `None` where the margin excess does not cross 0.

use rayon::prelude::*;

use crate::book::{Book, Bracket};
use crate::engine::{self, check_v1_portfolio, Inputs, Model};
use crate::error::{InputError, Offenders, Result};
use crate::market::Market;
use crate::portfolio::{self, RiskArrays};
use crate::results::{AccountRow, STATUS_TOLERANCE};
use crate::standard::position_margin_at;
use crate::stress::stressed_mark;
use crate::valuation::{net_positions, NetPosition, Scratch};

/// The notional the maintenance margin of an isolated perpetual or future is charged on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaintenanceBasis {
    /// `|q| × multiplier × mark` (the engine's rule, §3).
    Mark,
    /// `|Σ q × entry_price| × multiplier` over the position's rows, a row without an entry price
    /// counted at the mark (Bybit / KuCoin isolated positions). The initial margin stays on the
    /// mark notional.
    Entry,
}

impl MaintenanceBasis {
    pub fn parse(s: &str) -> Result<MaintenanceBasis> {
        match s {
            "mark" => Ok(MaintenanceBasis::Mark),
            "entry" => Ok(MaintenanceBasis::Entry),
            other => Err(InputError::new("arguments", "maintenance_basis", format!("must be 'mark' or 'entry', got {other:?}"))),
        }
    }
}

/// The lowest and highest index price searched, relative to the current index price.
pub const LOWEST_PRICE: f64 = 1e-8;
pub const HIGHEST_PRICE: f64 = 100.0;
/// The root finder's walk step (relative) and its bisection tolerance (relative).
const WALK_STEP: f64 = 1.01;
const ROOT_TOLERANCE: f64 = 1e-12;

/// One isolated position's margin row and liquidation price (an index price).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IsolatedRow {
    pub row: AccountRow,
    pub liquidation_price: Option<f64>,
}

/// Margin rows and liquidation prices of isolated positions, one per account of `inputs` (each
/// account is one isolated position; see the module doc). `risk`: the portfolio model's arrays
/// of this market (`None`: standard model).
pub fn isolated_margin(
    book: &Book,
    market: &Market,
    inputs: &Inputs,
    model: Model,
    risk: Option<&RiskArrays>,
    basis: MaintenanceBasis,
) -> Result<Vec<IsolatedRow>> {
    check_supported(book, market, inputs, model, basis)?;
    let rows = engine::margin_with_risk(book, market, inputs, risk)?;
    Ok(inputs
        .slots
        .par_iter()
        .zip(rows.par_iter())
        .with_min_len(64)
        .map_init(Scratch::default, |scratch, (slot, row)| {
            net_positions(slot.positions(), &inputs.positions, book, market, scratch);
            let Some(p) = scratch.net.first().copied() else {
                return IsolatedRow { row: *row, liquidation_price: None };
            };
            let mut row = *row;
            let entry_mm = match basis {
                MaintenanceBasis::Mark => None,
                MaintenanceBasis::Entry => Some(entry_maintenance(book, market, inputs, slot.positions(), &p)),
            };
            if let Some(mm) = entry_mm {
                row.maintenance_margin = mm;
            }
            // the balances' part of collateral: constant under a move of the underlying
            let collateral = row.collateral_maintenance - p.value - scratch.closed_pnl;
            let liquidation_price = liquidation_price(book, market, model, &p, collateral, entry_mm);
            IsolatedRow { row, liquidation_price }
        })
        .collect())
}

/// Refuses what the isolated kernels do not model: a scenario or generalized standard
/// methodology (the roots follow v1's rules), entry-based maintenance of options or under the
/// portfolio model, and an account of more than one instrument (a caller's mistake).
fn check_supported(book: &Book, market: &Market, inputs: &Inputs, model: Model, basis: MaintenanceBasis) -> Result<()> {
    check_v1_portfolio(book, model, "isolated_margin")?;
    if model == Model::Standard && book.methodology.standard.is_some() {
        return Err(InputError::new(
            "arguments",
            "model",
            format!(
                "isolated_margin follows v1's standard rules; the book's methodology '{}' is not supported there yet",
                book.methodology.name
            ),
        ));
    }
    if basis == MaintenanceBasis::Entry && model == Model::Portfolio {
        return Err(InputError::new("arguments", "maintenance_basis", "maintenance_basis='entry' applies to the standard model only"));
    }
    let mut options = Offenders::default();
    let mut mixed = Offenders::default();
    let mut unmodelled = Offenders::default();
    let mut scratch = Scratch::default();
    for slot in &inputs.slots {
        net_positions(slot.positions(), &inputs.positions, book, market, &mut scratch);
        if scratch.net.len() > 1 {
            mixed.push(|| format!("account {}", slot.account_id));
        }
        for p in &scratch.net {
            let c = &book.contracts[p.instrument as usize];
            if c.inverse || c.imf_factor > 0.0 {
                unmodelled.push(|| format!("'{}'", book.instruments.labels[p.instrument as usize]));
            }
        }
        if basis == MaintenanceBasis::Entry {
            if let Some(p) = scratch.net.first() {
                if !book.contracts[p.instrument as usize].kind.is_linear() {
                    options.push(|| format!("'{}'", book.instruments.labels[p.instrument as usize]));
                }
            }
        }
    }
    mixed.into_result("positions", "instrument", "an isolated account holds one instrument")?;
    unmodelled.into_result(
        "positions",
        "margin_mode",
        "isolated margin of inverse (coin-settled) contracts or of contracts with a size premium (imf_factor) is not modelled yet: hold them cross",
    )?;
    options.into_result("positions", "instrument", "maintenance_basis='entry' applies to perpetuals and futures, not options")
}

/// Maintenance margin on the entry notional `|Σ q × entry| × multiplier` (rows without an entry
/// price at the mark), through the instrument's tiers or rates.
fn entry_maintenance(book: &Book, market: &Market, inputs: &Inputs, rows: std::ops::Range<usize>, p: &NetPosition) -> f64 {
    let id = p.instrument as usize;
    let mark = market.mark_price[id];
    let positions = &inputs.positions;
    let worth: f64 = rows
        .map(|r| {
            let entry = positions.entry_price.as_ref().map_or(f64::NAN, |e| e[r]);
            positions.quantity[r] * if entry.is_nan() { mark } else { entry }
        })
        .sum();
    let entry_notional = worth.abs() * book.contracts[id].multiplier;
    margin_on_notional(book, id, entry_notional).1
}

/// (IM, MM) of a linear instrument on a notional: its tiers, else its two rates.
fn margin_on_notional(book: &Book, id: usize, notional: f64) -> (f64, f64) {
    let c = &book.contracts[id];
    match &book.instruments.tiers[id] {
        Some(tiers) if c.tiered => tiers.margin(notional),
        _ => (notional * c.initial_margin_rate, notional * c.maintenance_margin_rate),
    }
}

/// The index price at which the position's margin excess crosses 0 (see the module doc).
/// `collateral`: its balances' maintenance value; `entry_mm`: a fixed maintenance margin
/// (entry basis) instead of the model's.
pub fn liquidation_price(book: &Book, market: &Market, model: Model, p: &NetPosition, collateral: f64, entry_mm: Option<f64>) -> Option<f64> {
    let id = p.instrument as usize;
    let c = &book.contracts[id];
    let u = c.underlying as usize;
    let spot = market.index_price[u];
    let mark = market.mark_price[id];
    if !(spot > 0.0) || mark.is_nan() {
        return None;
    }
    let (lo, hi) = (spot * LOWEST_PRICE, spot * HIGHEST_PRICE);
    if c.kind.is_linear() && model == Model::Standard {
        if !(mark > 0.0) {
            return None;
        }
        // the mark moves with the index: x = mark × S / spot
        let x = linear_root(book, id, p, mark, collateral, entry_mm)?;
        let s = x * spot / mark;
        return (lo..=hi).contains(&s).then_some(s);
    }
    // below 0 by more than the status rule's tolerance: rounding noise of a position that sits at
    // its maintenance (a long option far out of the money) is no crossing
    let short_of_maintenance = |s: f64| {
        let (excess, mm) = excess_at(book, market, model, p, collateral, entry_mm, s);
        excess + STATUS_TOLERANCE * mm.max(1.0)
    };
    nearest_root(short_of_maintenance, spot, lo, hi)
}

/// (Margin excess, maintenance margin) of one position at index price `s` (its mark moved as in
/// a stress test).
fn excess_at(book: &Book, market: &Market, model: Model, p: &NetPosition, collateral: f64, entry_mm: Option<f64>, s: f64) -> (f64, f64) {
    let id = p.instrument as usize;
    let c = &book.contracts[id];
    let u = c.underlying as usize;
    let spot = market.index_price[u];
    let m = s / spot - 1.0;
    let moved_mark = stressed_mark(book, market, id, m, s);
    let value = if c.kind.is_linear() {
        p.value + p.quantity * c.multiplier * (moved_mark - market.mark_price[id])
    } else {
        p.quantity * c.multiplier * moved_mark
    };
    let mm = match (entry_mm, model) {
        (Some(mm), _) => mm,
        (None, Model::Standard) => position_margin_at(book, id, p.quantity, moved_mark, s, f64::NAN).1, // linear: no settlement coin
        (None, Model::Portfolio) => {
            let scenarios = portfolio::scenarios(&book.underlyings.risk[u]);
            let mut array = Vec::with_capacity(scenarios.len());
            portfolio::instrument_array_at(book, market, id, s, moved_mark, f64::NAN, &scenarios, &mut array);
            let mut pnl = Vec::new();
            let moved = NetPosition { value, ..*p };
            portfolio::positions_margin_of(book, s, &scenarios, u, std::iter::once((&moved, &array[..])), &mut pnl).maintenance_margin
        }
    };
    (collateral + value - mm, mm)
}

/// The mark `x > 0` at which `collateral + value + q·mult·(x − mark) = MM(x)` for a perpetual or
/// future, MM on the notional `|q|·mult·x` (bracket by bracket: `MM = N × rate − cum`) or fixed
/// (`entry_mm`). Excess is monotone in `x` (its slope is `q·mult − |q|·mult·rate`, rates < 1),
/// so at most one bracket holds a root.
fn linear_root(book: &Book, id: usize, p: &NetPosition, mark: f64, collateral: f64, entry_mm: Option<f64>) -> Option<f64> {
    let c = &book.contracts[id];
    let (q, mult) = (p.quantity, c.multiplier);
    // collateral + value − q·mult·mark: the excess's part that does not move with x
    let fixed = collateral + p.value - q * mult * mark;
    if let Some(mm) = entry_mm {
        let x = (mm - fixed) / (q * mult);
        return (x > 0.0 && x.is_finite()).then_some(x);
    }
    let own = [Bracket {
        notional_floor: 0.0,
        initial_margin_rate: c.initial_margin_rate,
        maintenance_margin_rate: c.maintenance_margin_rate,
        initial_cum: 0.0,
        maintenance_cum: 0.0,
    }];
    let brackets: &[Bracket] = match &book.instruments.tiers[id] {
        Some(t) if c.tiered => &t.brackets,
        _ => &own,
    };
    for (k, b) in brackets.iter().enumerate() {
        let ceiling = brackets.get(k + 1).map_or(f64::INFINITY, |n| n.notional_floor);
        let slope = mult * (q.abs() * b.maintenance_margin_rate - q);
        if slope == 0.0 {
            continue;
        }
        let x = (fixed + b.maintenance_cum) / slope;
        let notional = q.abs() * mult * x;
        // a root on a bracket's edge belongs to both brackets (the margin is continuous there)
        let slack = 1e-12 * notional.abs().max(1.0);
        if x > 0.0 && x.is_finite() && notional >= b.notional_floor - slack && notional < ceiling + slack {
            return Some(x);
        }
    }
    None
}

/// The crossing of `f` between `>= 0` and `< 0` nearest to `x0` (in ratio `x / x0`) on `[lo, hi]`:
/// a walk from `x0` in steps of 1% up to `hi` and down to `lo`, side by side, finds the first
/// change of side on each side (0 counts as `>= 0`: an excess of exactly 0 is not liquidatable,
/// e.g. a long option whose mark floors at 0); the nearer one (fewer steps; on a tie the one of
/// smaller `|ln(x / x0)|`) is bisected to 1e-12 relative. `None` when `f` never changes side.
/// Two crossings within one step are not seen.
pub fn nearest_root(f: impl Fn(f64) -> f64, x0: f64, lo: f64, hi: f64) -> Option<f64> {
    let f0 = f(x0);
    let mut up = Some((x0, f0));
    let mut down = Some((x0, f0));
    let mut found: [Option<f64>; 2] = [None, None];
    let mut j = 1;
    while up.is_some() || down.is_some() {
        for (side, walk) in [(0usize, &mut down), (1, &mut up)] {
            let Some((x_prev, f_prev)) = *walk else { continue };
            let x = if side == 1 { (x0 * WALK_STEP.powi(j)).min(hi) } else { (x0 / WALK_STEP.powi(j)).max(lo) };
            let fx = f(x);
            if (fx < 0.0) != (f_prev < 0.0) {
                found[side] = Some(bisect(&f, x_prev, f_prev, x));
                *walk = None;
            } else if x == hi || x == lo {
                *walk = None;
            } else {
                *walk = Some((x, fx));
            }
        }
        if found.iter().any(Option::is_some) {
            break;
        }
        j += 1;
    }
    match found {
        [Some(d), Some(u)] => Some(if (u / x0).ln().abs() < (x0 / d).ln().abs() { u } else { d }),
        [d, u] => d.or(u),
    }
}

/// Bisection of `f` between `a` (where it is `fa`) and `b` (the other side of 0) to 1e-12 relative.
fn bisect(f: &impl Fn(f64) -> f64, a: f64, fa: f64, b: f64) -> f64 {
    let (mut a, mut fa, mut b) = (a, fa, b);
    for _ in 0..200 {
        if (b - a).abs() <= ROOT_TOLERANCE * a.abs().max(b.abs()) {
            break;
        }
        let mid = 0.5 * (a + b);
        let fm = f(mid);
        if (fm < 0.0) == (fa < 0.0) {
            a = mid;
            fa = fm;
        } else {
            b = mid;
        }
    }
    0.5 * (a + b)
}

/// `isolated_margin` results: the §6 columns of `margin` (account ids as given: the caller's
/// one-position accounts) plus `liquidation_price` (nullable float64).
pub fn isolated_batch(rows: &[IsolatedRow]) -> arrow_array::RecordBatch {
    use std::sync::Arc;
    use arrow_array::{ArrayRef, Float64Array, RecordBatch};
    use arrow_schema::{DataType, Field, Schema};
    let margin_rows: Vec<AccountRow> = rows.iter().map(|r| r.row).collect();
    let margin = crate::results::margin_batch(&margin_rows);
    let prices: ArrayRef = Arc::new(Float64Array::from(rows.iter().map(|r| r.liquidation_price).collect::<Vec<_>>()));
    let mut fields: Vec<Field> = margin.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new("liquidation_price", DataType::Float64, true));
    let mut columns = margin.columns().to_vec();
    columns.push(prices);
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).expect("columns match the schema by construction")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_root_finds_a_line_s_root() {
        let r = nearest_root(|x| x - 73.25, 100.0, 1e-6, 1e4).unwrap();
        assert!((r - 73.25).abs() < 1e-9);
        assert!(nearest_root(|x| x + 1.0, 100.0, 1e-6, 1e4).is_none());
    }

    #[test]
    fn nearest_root_prefers_the_nearer_crossing() {
        // roots at 50 and 180: 180/100 is nearer than 100/50 in ratio
        let r = nearest_root(|x| (x - 50.0) * (180.0 - x), 100.0, 1e-6, 1e4).unwrap();
        assert!((r - 180.0).abs() < 1e-9);
    }
}
