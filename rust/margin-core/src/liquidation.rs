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
use crate::results::{AccountRow, Status};
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
    // Healthy and margin-call accounts have no shortfall: they sort by status, then by id, which
    // is their input order already. Only the (few) accounts with a shortfall need a sort.
    let mut order = Vec::with_capacity(rows.len());
    let by_status = |status: Status| rows.iter().enumerate().filter(move |(_, r)| r.status() == status).map(|(i, _)| i);
    for status in [Status::Bankrupt, Status::Liquidatable] {
        let mut group: Vec<(f64, usize)> = by_status(status).map(|i| (shortfall(&rows[i]), i)).collect();
        group.par_sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        order.extend(group.into_iter().map(|(_, i)| i));
    }
    for status in [Status::MarginCall, Status::Healthy] {
        order.extend(by_status(status));
    }
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

/// Grid points of a walk: levels −100..=100, stored at index `GRID_LEVELS + level`.
const POINTS: usize = 2 * GRID_LEVELS + 1;

/// Index price, marks, linked asset prices and (portfolio) risk arrays at each grid point of one
/// underlying, computed once per call. Per-instrument and per-asset values are laid out
/// grid-contiguous (`[id × POINTS + g]`) so an account's walk reads them sequentially.
struct UnderlyingGrid {
    spot: Vec<f64>,
    mark: Vec<f64>,
    asset_price: Vec<f64>,
    risk: Vec<RiskArrays>,
}

fn build_grids(book: &Book, market: &Market, model: Model) -> Vec<UnderlyingGrid> {
    let n_underlyings = book.underlyings.names.len();
    let n_instruments = book.instruments.len();
    let n_assets = book.assets.price.len();
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
            let mut grid = UnderlyingGrid {
                spot: Vec::with_capacity(POINTS),
                mark: vec![0.0; n_instruments * POINTS],
                asset_price: vec![0.0; n_assets * POINTS],
                risk: Vec::new(),
            };
            for (g, (spot, mark, asset_price, risk)) in points.into_iter().enumerate() {
                grid.spot.push(spot);
                for (id, m) in mark.iter().enumerate() {
                    grid.mark[id * POINTS + g] = *m;
                }
                for (a, p) in asset_price.iter().enumerate() {
                    grid.asset_price[a * POINTS + g] = *p;
                }
                grid.risk.extend(risk);
            }
            grid
        })
        .collect()
}

/// Where along one side of the walk the account first falls below maintenance, given the
/// excess at grid level `j` (1..=100) of that side.
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

/// Per-thread buffers of the distance walk.
#[derive(Default)]
struct DistanceScratch {
    net: Scratch,
    grouped: Vec<(u32, NetPosition)>,
    /// (underlying, start, end) of each group in `grouped`, with its base value and margin.
    groups: Vec<(u32, usize, usize, f64, f64)>,
    /// Base weighted-maintenance value and linked underlying of each balance row.
    balances: Vec<(f64, Option<u32>, usize, f64)>,
    exposed: Vec<u32>,
    excess: Vec<f64>,
    pnl: Vec<f64>,
}

/// Distance to liquidation of every account × underlying it is exposed to (a netted position in
/// it, or a non-zero balance of an asset linked to it). Rows by account, then underlying id.
pub fn distances(book: &Book, market: &Market, inputs: &Inputs, model: Model, rows: &[AccountRow]) -> Result<Vec<DistanceRow>> {
    let grids = build_grids(book, market, model);
    let base_risk = (model == Model::Portfolio).then(|| RiskArrays::new(book, market));
    let chunks: Vec<Vec<DistanceRow>> = inputs
        .slots
        .par_chunks(256)
        .zip(rows.par_chunks(256))
        .map(|(slots, rows)| {
            let mut s = DistanceScratch::default();
            let mut out = Vec::new();
            for (slot, row) in slots.iter().zip(rows) {
                account_distances(book, market, inputs, model, &grids, base_risk.as_ref(), slot, row, &mut s, &mut out);
            }
            out
        })
        .collect();
    Ok(chunks.into_iter().flatten().collect())
}

#[allow(clippy::too_many_arguments)]
fn account_distances(
    book: &Book,
    market: &Market,
    inputs: &Inputs,
    model: Model,
    grids: &[UnderlyingGrid],
    base_risk: Option<&RiskArrays>,
    slot: &crate::accounts::AccountSlot,
    row: &AccountRow,
    s: &mut DistanceScratch,
    out: &mut Vec<DistanceRow>,
) {
    let ins = &book.instruments;
    let assets = &book.assets;
    net_positions(slot.positions(), &inputs.positions, book, market, &mut s.net);
    group_by_underlying(book, &s.net.net, &mut s.grouped);

    // Base value and maintenance margin of each underlying's positions.
    s.groups.clear();
    let mut start = 0;
    while start < s.grouped.len() {
        let u = s.grouped[start].0;
        let end = start + s.grouped[start..].iter().take_while(|(g, _)| *g == u).count();
        let positions = &s.grouped[start..end];
        let value: f64 = positions.iter().map(|(_, p)| p.value).sum();
        let spot = market.index_price[u as usize];
        let margin = match base_risk {
            Some(risk) => portfolio::positions_margin(book, spot, risk, u as usize, positions.iter().map(|(_, p)| p), &mut s.pnl)
                .maintenance_margin,
            None => positions
                .iter()
                .map(|(_, p)| {
                    let id = p.instrument as usize;
                    position_margin_at(book, id, p.quantity, market.mark_price[id], spot).1
                })
                .sum(),
        };
        s.groups.push((u, start, end, value, margin));
        start = end;
    }
    s.balances.clear();
    s.exposed.clear();
    s.exposed.extend(s.groups.iter().map(|g| g.0));
    for r in slot.balances() {
        let a = inputs.balances.asset[r] as usize;
        let amount = inputs.balances.amount[r];
        let weighted = value_balance(book, a, amount, assets.price[a]).weighted_maintenance;
        s.balances.push((weighted, assets.underlying[a], a, amount));
        if let (Some(u), true) = (assets.underlying[a], amount != 0.0) {
            s.exposed.push(u);
        }
    }
    s.exposed.sort_unstable();
    s.exposed.dedup();

    let base_excess = row.margin_excess();
    for &u in &s.exposed {
        let grid = &grids[u as usize];
        // Everything the move of `u` leaves unchanged.
        let mut other = 0.0;
        for (weighted, linked, _, _) in &s.balances {
            if *linked != Some(u) {
                other += weighted;
            }
        }
        let mut positions: &[(u32, NetPosition)] = &[];
        for &(g, start, end, value, margin) in &s.groups {
            if g == u {
                positions = &s.grouped[start..end];
            } else {
                other += value - margin;
            }
        }
        let notional: f64 = positions
            .iter()
            .map(|(_, p)| p.quantity.abs() * ins.multiplier[p.instrument as usize] * market.mark_price[p.instrument as usize])
            .sum();
        let (move_down, level_down, move_up, level_up) = if base_excess < 0.0 {
            (Some(0.0), Some(0), Some(0.0), Some(0))
        } else {
            // Excess at every grid point g: collateral linked to u and u's positions revalued.
            s.excess.clear();
            s.excess.resize(POINTS, other);
            for (_, linked, a, amount) in &s.balances {
                if *linked == Some(u) {
                    let prices = &grid.asset_price[a * POINTS..(a + 1) * POINTS];
                    for (e, price) in s.excess.iter_mut().zip(prices) {
                        *e += value_balance(book, *a, *amount, *price).weighted_maintenance;
                    }
                }
            }
            for (_, p) in positions {
                let id = p.instrument as usize;
                let marks = &grid.mark[id * POINTS..(id + 1) * POINTS];
                let size = p.quantity * ins.multiplier[id];
                if ins.kind[id].is_linear() {
                    let base_mark = market.mark_price[id];
                    for (e, mark) in s.excess.iter_mut().zip(marks) {
                        *e += p.value + size * (mark - base_mark);
                    }
                } else {
                    for (e, mark) in s.excess.iter_mut().zip(marks) {
                        *e += size * mark;
                    }
                }
                if model == Model::Standard {
                    for (g, (e, mark)) in s.excess.iter_mut().zip(marks).enumerate() {
                        *e -= position_margin_at(book, id, p.quantity, *mark, grid.spot[g]).1;
                    }
                }
            }
            let excess = &s.excess;
            let pnl = &mut s.pnl;
            let mut excess_at = |g: usize| -> f64 {
                match model {
                    Model::Standard => excess[g],
                    Model::Portfolio => {
                        let margin = portfolio::positions_margin(
                            book,
                            grid.spot[g],
                            &grid.risk[g],
                            u as usize,
                            positions.iter().map(|(_, p)| p),
                            pnl,
                        );
                        excess[g] - margin.maintenance_margin
                    }
                }
            };
            let (move_down, level_down) = walk(base_excess, -1.0, |j| excess_at(GRID_LEVELS - j));
            let (move_up, level_up) = walk(base_excess, 1.0, |j| excess_at(GRID_LEVELS + j));
            (move_down, level_down, move_up, level_up)
        };
        out.push(DistanceRow {
            account_id: slot.account_id,
            underlying: u,
            move_down,
            move_up,
            level_down,
            level_up,
            notional,
            collateral_maintenance: row.collateral_maintenance,
        });
    }
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
