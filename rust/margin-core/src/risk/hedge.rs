//! Minimum-margin hedges: for each account and underlying, the quantity of a linear hedge
//! instrument (perpetual or future) that minimizes the account's margin.
//!
//! Portfolio model (§4): with hedge quantity `x`, every scenario P&L is `P_s + x · h_s` (`h` the
//! hedge's risk array), so the underlying's margin is
//! `MM_u(x) = max(0, short_min, max_regular(−P_s − x h_s), cover · max_extreme(−P_s − x h_s))`,
//! a maximum of affine functions of `x`: convex and piecewise linear. Its exact minimum is found
//! on the upper envelope of those lines (sorted by slope, convex-hull trick): the vertex where the
//! envelope's slope turns from negative to non-negative, or — when a flat piece is optimal — the
//! point of that piece closest to `x = 0` (the smallest trade). No grid, no tolerance.
//!
//! Standard model (§3): a hedge position is margined on its own, so the best trade is to close
//! whatever the account already holds of the hedge instrument (`x = −q_h`).

use rayon::prelude::*;

use crate::book::Book;
use crate::engine::{Inputs, Model};
use crate::greeks::instrument_greeks;
use crate::market::Market;
use crate::portfolio::{self, group_by_underlying, RiskArrays};
use crate::results::AccountRow;
use crate::standard;
use crate::valuation::{net_positions, NetPosition, Scratch};

/// Which margin the hedge minimizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Objective {
    Maintenance,
    Initial,
}

/// A line `intercept + slope · x`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Line {
    pub slope: f64,
    pub intercept: f64,
}

impl Line {
    fn at(&self, x: f64) -> f64 {
        self.intercept + self.slope * x
    }
}

/// `max_k lines_k(x)`.
pub fn max_at(lines: &[Line], x: f64) -> f64 {
    lines.iter().map(|l| l.at(x)).fold(f64::NEG_INFINITY, f64::max)
}

/// Exact minimizer of `F(x) = max_k lines_k(x)`: returns `(x*, F(x*))`, with `x*` the minimizer
/// closest to 0 when the minimum is attained on an interval. `lines` is reordered. If `F` is
/// unbounded below (no line with slope ≥ 0 on one side), the minimizer closest to 0 does not
/// exist and `(0, F(0))` is returned; callers always include a constant line, so this is moot.
pub fn minimize_max_affine(lines: &mut Vec<Line>) -> (f64, f64) {
    if lines.is_empty() {
        return (0.0, f64::NEG_INFINITY);
    }
    // Upper envelope: slopes ascending; among equal slopes only the highest line matters.
    // (−0.0 and 0.0 are one slope: normalize, or total ordering would split them.)
    for l in lines.iter_mut() {
        l.slope += 0.0;
    }
    lines.sort_by(|a, b| a.slope.total_cmp(&b.slope).then(b.intercept.total_cmp(&a.intercept)));
    lines.dedup_by(|later, earlier| later.slope == earlier.slope);
    let cross = |a: &Line, b: &Line| (a.intercept - b.intercept) / (b.slope - a.slope);
    let mut hull: Vec<Line> = Vec::with_capacity(lines.len());
    for l in lines.iter() {
        while hull.len() >= 2 && cross(&hull[hull.len() - 2], l) <= cross(&hull[hull.len() - 2], &hull[hull.len() - 1]) {
            hull.pop();
        }
        hull.push(*l);
    }
    // The envelope's pieces run left to right in slope order; find where the slope turns ≥ 0.
    let x = match hull.iter().position(|l| l.slope >= 0.0) {
        None => 0.0,
        Some(0) if hull[0].slope > 0.0 => 0.0,
        Some(k) if hull[k].slope == 0.0 => {
            let left = if k == 0 { f64::NEG_INFINITY } else { cross(&hull[k - 1], &hull[k]) };
            let right = if k + 1 == hull.len() { f64::INFINITY } else { cross(&hull[k], &hull[k + 1]) };
            // (rounding can leave `left` a hair above `right`: take the left end then)
            if 0.0 < left {
                left
            } else if 0.0 > right {
                right
            } else {
                0.0
            }
        }
        Some(k) => cross(&hull[k - 1], &hull[k]),
    };
    (x, max_at(lines, x))
}

/// One hedge suggestion.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HedgeRow {
    pub account_id: u64,
    pub underlying: u32,
    pub hedge_instrument: u32,
    /// Contracts of the hedge instrument to add (negative = sell).
    pub quantity: f64,
    pub margin_before: f64,
    pub margin_after: f64,
    /// Contracts that would make the account's delta in the underlying zero.
    pub delta_neutral_quantity: f64,
}

/// Best hedge per account × hedge instrument (for every account holding positions in the hedge's
/// underlying), in account order then hedge order.
pub fn optimal_hedges(
    book: &Book,
    market: &Market,
    inputs: &Inputs,
    model: Model,
    objective: Objective,
    hedges: &[u32],
    rows: &[AccountRow],
) -> Vec<HedgeRow> {
    let ins = &book.instruments;
    let risk = (model == Model::Portfolio).then(|| RiskArrays::new(book, market));
    let per_contract = instrument_greeks(book, market);
    let chunks: Vec<Vec<HedgeRow>> = inputs
        .slots
        .par_chunks(1024)
        .zip(rows.par_chunks(1024))
        .map(|(slots, rows)| {
            let mut scratch = Scratch::default();
            let mut grouped: Vec<(u32, NetPosition)> = Vec::new();
            let mut pnl = Vec::new();
            let mut lines = Vec::new();
            let mut out = Vec::new();
            for (slot, row) in slots.iter().zip(rows) {
                net_positions(slot.positions(), &inputs.positions, book, market, &mut scratch);
                group_by_underlying(book, &scratch.net, &mut grouped);
                let margin_before = match objective {
                    Objective::Maintenance => row.maintenance_margin,
                    Objective::Initial => row.initial_margin,
                };
                for &h in hedges {
                    let h = h as usize;
                    let u = ins.underlying[h];
                    let positions: Vec<NetPosition> = grouped.iter().filter(|(g, _)| *g == u).map(|(_, p)| *p).collect();
                    if positions.is_empty() {
                        continue;
                    }
                    let delta: f64 = positions
                        .iter()
                        .map(|p| p.quantity * ins.multiplier[p.instrument as usize] * per_contract[p.instrument as usize].delta)
                        .sum();
                    let delta_neutral_quantity = -delta / ins.multiplier[h];
                    let (quantity, before_u, after_u) = match &risk {
                        Some(risk) => portfolio_hedge(book, market, risk, u as usize, h, &positions, &mut pnl, &mut lines),
                        None => standard_hedge(book, market, h, &positions),
                    };
                    let factor = match (objective, model) {
                        (Objective::Initial, Model::Portfolio) => book.underlyings.risk[u as usize].im_factor,
                        _ => 1.0,
                    };
                    let (before_u, after_u) = match (objective, model) {
                        (Objective::Initial, Model::Standard) => (before_u.0, after_u.0),
                        _ => (factor * before_u.1, factor * after_u.1),
                    };
                    out.push(HedgeRow {
                        account_id: slot.account_id,
                        underlying: u,
                        hedge_instrument: h as u32,
                        quantity,
                        margin_before,
                        margin_after: margin_before - before_u + after_u,
                        delta_neutral_quantity,
                    });
                }
            }
            out
        })
        .collect();
    chunks.into_iter().flatten().collect()
}

/// (x*, (IM, MM) of the underlying before, (IM, MM) after) under the portfolio model; IM here is
/// left to the caller (`im_factor × MM`).
#[allow(clippy::too_many_arguments)]
fn portfolio_hedge(
    book: &Book,
    market: &Market,
    risk: &RiskArrays,
    u: usize,
    h: usize,
    positions: &[NetPosition],
    pnl: &mut Vec<f64>,
    lines: &mut Vec<Line>,
) -> (f64, (f64, f64), (f64, f64)) {
    let params = &book.underlyings.risk[u];
    let spot = market.index_price[u];
    let before = portfolio::positions_margin(book, spot, risk, u, positions.iter(), pnl);
    let hedge = risk.array(book, h);
    lines.clear();
    lines.push(Line { slope: 0.0, intercept: 0.0 });
    lines.push(Line { slope: 0.0, intercept: before.short_option_minimum });
    for ((s, p), r) in risk.scenarios[u].iter().zip(pnl.iter()).zip(hedge) {
        let cover = if s.extreme { params.extreme_cover } else { 1.0 };
        lines.push(Line { slope: -cover * r, intercept: -cover * p });
    }
    let (x, after) = minimize_max_affine(lines);
    // never report a trade that does not lower the margin (keeps x = 0 on ties with the current book)
    if after >= before.maintenance_margin {
        return (0.0, (0.0, before.maintenance_margin), (0.0, before.maintenance_margin));
    }
    (x, (0.0, before.maintenance_margin), (0.0, after))
}

/// Standard model: close the account's position in the hedge instrument, if any.
fn standard_hedge(book: &Book, market: &Market, h: usize, positions: &[NetPosition]) -> (f64, (f64, f64), (f64, f64)) {
    match positions.iter().find(|p| p.instrument as usize == h) {
        None => (0.0, (0.0, 0.0), (0.0, 0.0)),
        Some(p) => (-p.quantity, standard::position_margin(book, market, p), (0.0, 0.0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn brute(lines: &[Line]) -> f64 {
        (-200_000..=200_000).map(|i| max_at(lines, i as f64 * 1e-3)).fold(f64::INFINITY, f64::min)
    }

    #[test]
    fn v_shape_minimum_is_the_vertex() {
        let mut lines = vec![Line { slope: -2.0, intercept: 4.0 }, Line { slope: 1.0, intercept: -2.0 }, Line { slope: 0.0, intercept: 0.0 }];
        let (x, f) = minimize_max_affine(&mut lines);
        assert_eq!(x, 2.0);
        assert_eq!(f, 0.0);
    }

    #[test]
    fn flat_optimum_picks_the_point_closest_to_zero() {
        let mut lines = vec![Line { slope: -1.0, intercept: -5.0 }, Line { slope: 1.0, intercept: -5.0 }, Line { slope: 0.0, intercept: 1.0 }];
        assert_eq!(minimize_max_affine(&mut lines), (0.0, 1.0));
        let mut lines = vec![Line { slope: -1.0, intercept: 5.0 }, Line { slope: 1.0, intercept: -20.0 }, Line { slope: 0.0, intercept: 1.0 }];
        let (x, f) = minimize_max_affine(&mut lines);
        assert_eq!((x, f), (4.0, 1.0));
    }

    #[test]
    fn negative_zero_slopes_do_not_hide_a_higher_flat_line() {
        let mut lines = vec![
            Line { slope: -0.0, intercept: -0.5 },
            Line { slope: 0.0, intercept: 0.01 },
            Line { slope: 1.0, intercept: -1.0 },
            Line { slope: -1.0, intercept: 1.0 },
        ];
        // |x − 1| ≤ 0.01 is the flat optimum at 0.01; the point of it closest to 0 is 0.99
        let (x, f) = minimize_max_affine(&mut lines);
        assert!((x - 0.99).abs() < 1e-12 && (f - 0.01).abs() < 1e-12, "{x} {f}");
    }

    #[test]
    fn matches_brute_force_on_pseudo_random_lines() {
        let mut seed = 12345u64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % 20_001) as f64 / 100.0 - 100.0
        };
        for _ in 0..50 {
            let mut lines: Vec<Line> = (0..12).map(|_| Line { slope: next() / 10.0, intercept: next() }).collect();
            lines.push(Line { slope: 0.0, intercept: 0.0 });
            let grid = brute(&lines);
            let (x, f) = minimize_max_affine(&mut lines.clone());
            assert!((max_at(&lines, x) - f).abs() < 1e-9);
            assert!(f <= grid + 1e-9, "exact {f} worse than grid {grid}");
            assert!(f >= grid - 1e-2, "exact {f} below grid {grid} by more than the grid step allows");
        }
    }
}

/// Hedge instruments by name: each must be in the book, linear (perpetual or future) and have a
/// mark; the same name twice is an error.
pub fn hedge_ids(book: &Book, market: &Market, names: &[String]) -> crate::Result<Vec<u32>> {
    use crate::error::Offenders;
    let ins = &book.instruments;
    let (mut unknown, mut not_linear, mut no_mark, mut twice) =
        (Offenders::default(), Offenders::default(), Offenders::default(), Offenders::default());
    let mut ids = Vec::with_capacity(names.len());
    for name in names {
        let key = match &ins.index {
            crate::table::KeyIndex::Int(_) => name.parse::<i64>().map(crate::table::Key::Int).unwrap_or(crate::table::Key::Str(name.clone())),
            crate::table::KeyIndex::Str(_) => crate::table::Key::Str(name.clone()),
        };
        match ins.index.get(&key) {
            None => unknown.push(|| format!("'{name}'")),
            Some(id) => {
                if !ins.kind[id as usize].is_linear() {
                    not_linear.push(|| format!("'{name}'"));
                } else if market.mark_price[id as usize].is_nan() || market.index_price[ins.underlying[id as usize] as usize].is_nan() {
                    no_mark.push(|| format!("'{name}'"));
                } else if ids.contains(&id) {
                    twice.push(|| format!("'{name}'"));
                } else {
                    ids.push(id);
                }
            }
        }
    }
    unknown.into_result("hedge_instruments", "instrument", "unknown instrument (not in the book)")?;
    not_linear.into_result("hedge_instruments", "instrument", "hedges must be perpetuals or futures")?;
    no_mark.into_result("hedge_instruments", "instrument", "no mark (or index price) for the hedge instrument")?;
    twice.into_result("hedge_instruments", "instrument", "hedge instrument given twice")?;
    Ok(ids)
}
