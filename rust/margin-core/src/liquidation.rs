//! Liquidation scan, distance to liquidation and the liquidation map (methodology §8).
//!
//! The scan is the margin run sorted by severity. Distances walk a grid of moves of one
//! underlying at a time (±0.5% steps out to ±50%): every grid point's marks (and, for the
//! portfolio model, risk arrays) are computed once per call, then each account re-adds only what
//! the move changes: its positions in that underlying, its collateral linked to it, and that
//! underlying's margin. Everything else of the account is summed once.

use rayon::prelude::*;

use crate::book::Book;
use crate::engine::{Inputs, Model};
use crate::error::Result;
use crate::market::Market;
use crate::portfolio::{self, group_by_underlying, RiskArrays};
use crate::results::AccountRow;
use crate::standard::position_margin_at;
use crate::stress::{stress_asset_prices, stress_market};
use crate::valuation::{net_positions, value_balance, NetPosition, Scratch};

/// Grid step of the distance walk.
pub const GRID_STEP: f64 = 0.005;
/// Grid points on each side (±0.5% × 100 = ±50%).
pub const GRID_LEVELS: usize = 100;

/// `max(0, MM − collateral_maintenance)`.
pub fn shortfall(row: &AccountRow) -> f64 {
    (row.maintenance_margin - row.collateral_maintenance).max(0.0)
}

/// Scan order: most severe status first, then largest shortfall, then account id.
pub fn scan_order(rows: &[AccountRow]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.par_sort_by(|a, b| {
        let (ra, rb) = (&rows[*a], &rows[*b]);
        rb.status()
            .cmp(&ra.status())
            .then(shortfall(rb).total_cmp(&shortfall(ra)))
            .then(ra.account_id.cmp(&rb.account_id))
    });
    order
}

/// The move of grid level `j` (negative = down).
pub fn grid_move(j: i32) -> f64 {
    GRID_STEP * j as f64
}

/// One account × underlying distance (§8).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DistanceRow {
    pub account_id: u64,
    pub underlying: u32,
    pub move_down: Option<f64>,
    pub move_up: Option<f64>,
    /// Grid level (1..=100) of the first point past liquidation on each side; 0 when the account
    /// is liquidatable already.
    pub level_down: Option<u32>,
    pub level_up: Option<u32>,
    /// The account's notional in this underlying, and its maintenance collateral (for the map).
    pub notional: f64,
    pub collateral_maintenance: f64,
}

/// Marks, index price, linked asset prices and (portfolio) risk arrays at each grid point of
/// one underlying. Index `GRID_LEVELS + j` holds level `j` (−100..=100).
struct UnderlyingGrid {
    spot: Vec<f64>,
    /// Per grid point, marks of every instrument (only this underlying's move).
    mark: Vec<Vec<f64>>,
    asset_price: Vec<Vec<f64>>,
    risk: Vec<RiskArrays>,
}

fn build_grids(book: &Book, market: &Market, model: Model) -> Vec<UnderlyingGrid> {
    let n_underlyings = book.underlyings.names.len();
    (0..n_underlyings)
        .map(|u| {
            let points: Vec<(f64, Vec<f64>, Vec<f64>, Option<RiskArrays>)> = (-(GRID_LEVELS as i32)..=GRID_LEVELS as i32)
                .into_par_iter()
                .map(|j| {
                    let mut moves = vec![0.0; n_underlyings];
                    moves[u] = grid_move(j);
                    let stressed = stress_market(book, market, &moves);
                    let risk = (model == Model::Portfolio).then(|| RiskArrays::for_underlying(book, &stressed, u));
                    (stressed.index_price[u], stressed.mark_price, stress_asset_prices(book, &moves), risk)
                })
                .collect();
            let mut grid = UnderlyingGrid { spot: vec![], mark: vec![], asset_price: vec![], risk: vec![] };
            for (spot, mark, asset_price, risk) in points {
                grid.spot.push(spot);
                grid.mark.push(mark);
                grid.asset_price.push(asset_price);
                grid.risk.extend(risk);
            }
            grid
        })
        .collect()
}

/// Where along a side of the walk the account first falls below maintenance.
fn walk(base_excess: f64, side: f64, mut excess_at: impl FnMut(usize) -> f64) -> (Option<f64>, Option<u32>) {
    if base_excess < 0.0 {
        return (Some(0.0), Some(0));
    }
    let mut previous = base_excess;
    for j in 1..=GRID_LEVELS {
        let e = excess_at(j);
        if e < 0.0 {
            let (m_a, m_b) = (side * grid_move(j as i32 - 1), side * grid_move(j as i32));
            return (Some(m_a + (m_b - m_a) * previous / (previous - e)), Some(j as u32));
        }
        previous = e;
    }
    (None, None)
}

struct DistanceScratch {
    net: Scratch,
    grouped: Vec<(u32, NetPosition)>,
    pnl: Vec<f64>,
    underlyings: Vec<u32>,
}

/// Distance to liquidation of every account × underlying it is exposed to (a netted position in
/// it, or a non-zero balance of an asset linked to it). Rows by account, then underlying id.
pub fn distances(book: &Book, market: &Market, inputs: &Inputs, model: Model, rows: &[AccountRow]) -> Result<Vec<DistanceRow>> {
    let grids = build_grids(book, market, model);
    let base_risk = (model == Model::Portfolio).then(|| RiskArrays::new(book, market));
    let ins = &book.instruments;
    let assets = &book.assets;
    let chunks: Vec<Vec<DistanceRow>> = inputs
        .slots
        .par_chunks(512)
        .zip(rows.par_chunks(512))
        .map(|(slots, rows)| {
            let mut s = DistanceScratch { net: Scratch::default(), grouped: vec![], pnl: vec![], underlyings: vec![] };
            let mut out = Vec::new();
            for (slot, row) in slots.iter().zip(rows) {
                net_positions(slot.positions.clone(), &inputs.positions, book, market, &mut s.net);
                group_by_underlying(book, &s.net.net, &mut s.grouped);
                // exposed underlyings: positions, then linked non-zero balances
                s.underlyings.clear();
                s.underlyings.extend(s.grouped.iter().map(|(u, _)| *u));
                for r in slot.balances.clone() {
                    if let Some(u) = assets.underlying[inputs.balances.asset[r] as usize] {
                        if inputs.balances.amount[r] != 0.0 {
                            s.underlyings.push(u);
                        }
                    }
                }
                s.underlyings.sort_unstable();
                s.underlyings.dedup();
                let base_excess = row.margin_excess();
                for &u in &s.underlyings {
                    let u = u as usize;
                    let grid = &grids[u];
                    let in_u = |(pu, _): &&(u32, NetPosition)| *pu as usize == u;
                    // what the move does not change
                    let mut other = 0.0;
                    for r in slot.balances.clone() {
                        let a = inputs.balances.asset[r] as usize;
                        if assets.underlying[a] != Some(u as u32) {
                            other += value_balance(book, a, inputs.balances.amount[r], assets.price[a]).weighted_maintenance;
                        }
                    }
                    for (pu, p) in &s.grouped {
                        if *pu as usize != u {
                            other += p.value;
                        }
                    }
                    other -= match (&base_risk, model) {
                        (Some(risk), _) => s
                            .grouped
                            .chunk_by(|a, b| a.0 == b.0)
                            .filter(|g| g[0].0 as usize != u)
                            .map(|g| {
                                let gu = g[0].0 as usize;
                                portfolio::positions_margin(book, market.index_price[gu], risk, gu, g.iter().map(|(_, p)| p), &mut s.pnl)
                                    .maintenance_margin
                            })
                            .sum::<f64>(),
                        _ => s
                            .grouped
                            .iter()
                            .filter(|(pu, _)| *pu as usize != u)
                            .map(|(_, p)| {
                                let id = p.instrument as usize;
                                position_margin_at(book, id, p.quantity, market.mark_price[id], market.index_price[ins.underlying[id] as usize]).1
                            })
                            .sum::<f64>(),
                    };
                    let notional: f64 = s
                        .grouped
                        .iter()
                        .filter(in_u)
                        .map(|(_, p)| p.quantity.abs() * ins.multiplier[p.instrument as usize] * market.mark_price[p.instrument as usize])
                        .sum();
                    // margin excess at grid index g (= GRID_LEVELS + level)
                    let grouped = &s.grouped;
                    let pnl = &mut s.pnl;
                    let mut excess_at = |g: usize| -> f64 {
                        let marks = &grid.mark[g];
                        let mut linked = 0.0;
                        for r in slot.balances.clone() {
                            let a = inputs.balances.asset[r] as usize;
                            if assets.underlying[a] == Some(u as u32) {
                                linked += value_balance(book, a, inputs.balances.amount[r], grid.asset_price[g][a]).weighted_maintenance;
                            }
                        }
                        let mut value = 0.0;
                        let mut margin = 0.0;
                        for (_, p) in grouped.iter().filter(in_u) {
                            let id = p.instrument as usize;
                            value += if ins.kind[id].is_linear() {
                                p.value + p.quantity * ins.multiplier[id] * (marks[id] - market.mark_price[id])
                            } else {
                                p.quantity * ins.multiplier[id] * marks[id]
                            };
                            if model == Model::Standard {
                                margin += position_margin_at(book, id, p.quantity, marks[id], grid.spot[g]).1;
                            }
                        }
                        if model == Model::Portfolio {
                            margin = portfolio::positions_margin(
                                book,
                                grid.spot[g],
                                &grid.risk[g],
                                u,
                                grouped.iter().filter(in_u).map(|(_, p)| p),
                                pnl,
                            )
                            .maintenance_margin;
                        }
                        other + linked + value - margin
                    };
                    let (move_down, level_down) = walk(base_excess, -1.0, |j| excess_at(GRID_LEVELS - j));
                    let (move_up, level_up) = walk(base_excess, 1.0, |j| excess_at(GRID_LEVELS + j));
                    out.push(DistanceRow {
                        account_id: slot.account_id,
                        underlying: u as u32,
                        move_down,
                        move_up,
                        level_down,
                        level_up,
                        notional,
                        collateral_maintenance: row.collateral_maintenance,
                    });
                }
            }
            out
        })
        .collect();
    Ok(chunks.into_iter().flatten().collect())
}

/// Nearest liquidation of an account over its underlyings: the signed move of smallest
/// magnitude (ties: the lower underlying id, then the down side).
pub fn nearest(rows: &[DistanceRow]) -> Option<(f64, u32)> {
    let mut best: Option<(f64, u32)> = None;
    for r in rows {
        for m in [r.move_down, r.move_up].into_iter().flatten() {
            if best.is_none_or(|(b, _)| m.abs() < b.abs()) {
                best = Some((m, r.underlying));
            }
        }
    }
    best
}

/// One row of the liquidation map: at this level of one underlying, how many accounts (and how
/// much notional in the underlying and maintenance collateral) cross into liquidation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MapRow {
    pub underlying: u32,
    pub level: i32,
    pub accounts: u64,
    pub notional: f64,
    pub collateral: f64,
}

/// Aggregates distances into the map: for every underlying and level −100..=100, the accounts
/// whose first crossing on that side is at that level (level 0: liquidatable already).
pub fn liquidation_map(book: &Book, distances: &[DistanceRow]) -> Vec<MapRow> {
    let n = book.underlyings.names.len();
    let width = 2 * GRID_LEVELS + 1;
    let mut map: Vec<MapRow> = (0..n * width)
        .map(|k| MapRow {
            underlying: (k / width) as u32,
            level: (k % width) as i32 - GRID_LEVELS as i32,
            accounts: 0,
            notional: 0.0,
            collateral: 0.0,
        })
        .collect();
    for d in distances {
        let mut add = |level: i32| {
            let cell = &mut map[d.underlying as usize * width + (level + GRID_LEVELS as i32) as usize];
            cell.accounts += 1;
            cell.notional += d.notional;
            cell.collateral += d.collateral_maintenance;
        };
        match (d.level_down, d.level_up) {
            (Some(0), _) | (_, Some(0)) => add(0),
            (down, up) => {
                if let Some(j) = down {
                    add(-(j as i32));
                }
                if let Some(j) = up {
                    add(j as i32);
                }
            }
        }
    }
    map
}
