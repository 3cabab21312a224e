//! Liquidation scan, distance to liquidation and the liquidation map (docs/methodology.md §8).
//!
//! The scan is the margin run sorted by severity. The grid walk here (±0.5% steps out to ±50%,
//! linear interpolation) gives the liquidation map its levels and is kept as
//! `liquidation_distance_grid`; distances themselves are the exact roots of [`crate::roots`].
//! The walk moves one underlying at a time. The walk goes one underlying after the other:
//! for underlying `u`, the marks (and, for the portfolio model, risk arrays) at every grid point
//! are computed for the instruments of `u` that some account holds, and for the assets linked to
//! `u`, then every account exposed to `u` re-adds only what the move changes: its positions in
//! `u`, its collateral linked to `u`, and `u`'s margin. Everything else of the account is summed
//! once. Memory is that of one underlying's held instruments × 201 points at a time, however
//! many instruments and underlyings the book lists.

use rayon::prelude::*;

use crate::accounts::AccountSlot;
use crate::book::Book;
use crate::engine::{Inputs, Model};
use crate::error::Result;
use crate::market::Market;
use crate::portfolio::{group_by_underlying, instrument_array_at, positions_margin_of, scenarios, Scenario};
use crate::results::{AccountRow, Status};
use crate::standard::position_margin_at;
use crate::stress::{inverse_value_at, moved_price, stressed_mark};
use crate::valuation::{net_positions, notional_at, value_balance, NetPosition, Scratch};

/// Grid step of the distance walk.
pub const GRID_STEP: f64 = 0.005;
/// Grid points on each side (±0.5% × 100 = ±50%).
pub const GRID_LEVELS: usize = 100;

/// `max(0, MM − collateral_maintenance)`, and 0 for an account that meets maintenance within
/// the status tolerance (its status says it is not short; a shortfall of rounding noise would
/// only reorder the scan's healthy accounts by it).
pub fn shortfall(row: &AccountRow) -> f64 {
    if crate::results::meets(row.collateral_maintenance, row.maintenance_margin) {
        return 0.0;
    }
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

/// How a distance was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// The grid walk: first grid point below maintenance, linear interpolation.
    Grid,
    /// Exact root of a piecewise linear excess (linear books): [`crate::roots`].
    ClosedForm,
    /// Exact root bracketed on the sample axis and refined: [`crate::roots`].
    Bracketed,
    /// Below maintenance now: move 0 on both sides, nothing searched.
    Liquidatable,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Grid => "grid",
            Method::ClosedForm => "closed_form",
            Method::Bracketed => "bracketed",
            Method::Liquidatable => "liquidatable",
        }
    }
}

/// One account × underlying distance (docs/methodology.md §8).
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
    pub method: Method,
}

/// Grid points of a walk: levels −100..=100, stored at index `GRID_LEVELS + level`.
const POINTS: usize = 2 * GRID_LEVELS + 1;

/// Marker of an instrument no account holds (or an asset linked to no underlying).
const NONE: u32 = u32::MAX;

/// What the walk can touch, numbered per underlying: the instruments that appear in some
/// position row (`held[u]`, in instrument-id order) and the assets linked to each underlying
/// (`linked[u]`); `instrument_slot[id]` / `asset_slot[a]` is the place in its underlying's list.
struct Slots {
    held: Vec<Vec<u32>>,
    instrument_slot: Vec<u32>,
    linked: Vec<Vec<u32>>,
    asset_slot: Vec<u32>,
}

impl Slots {
    fn new(book: &Book, inputs: &Inputs) -> Slots {
        let n_underlyings = book.underlyings.names.len();
        let used = inputs.positions.used_instruments(book.instruments.len());
        let mut held = vec![Vec::new(); n_underlyings];
        let mut instrument_slot = vec![NONE; used.len()];
        for (id, _) in used.iter().enumerate().filter(|(_, used)| **used) {
            let list: &mut Vec<u32> = &mut held[book.instruments.underlying[id] as usize];
            instrument_slot[id] = list.len() as u32;
            list.push(id as u32);
        }
        let mut linked = vec![Vec::new(); n_underlyings];
        let mut asset_slot = vec![NONE; book.assets.underlying.len()];
        for (a, u) in book.assets.underlying.iter().enumerate() {
            if let Some(u) = u {
                let list: &mut Vec<u32> = &mut linked[*u as usize];
                asset_slot[a] = list.len() as u32;
                list.push(a as u32);
            }
        }
        Slots { held, instrument_slot, linked, asset_slot }
    }
}

/// Relative size of the rounding in a margin excess: a sum and difference of values, margins
/// and scenario losses, each exact to a few ulps, so it is known to about 1e-15 of the
/// account's size; 1e-12 leaves a wide margin.
pub const ROUNDING: f64 = 1e-12;

/// How far below 0 an account's excess must go to count as a crossing: [`ROUNDING`] × its size
/// now (`|collateral_maintenance| + maintenance_margin + notional` of the underlying moved). An
/// account whose excess only rests on 0 (long options with no other collateral: its
/// maintenance margin is the whole value it can lose) has no liquidation price, though the
/// excess it computes is ±1e-13 along the axis.
pub fn rounding_level(row: &AccountRow, notional: f64) -> f64 {
    ROUNDING * (row.collateral_maintenance.abs() + row.maintenance_margin.abs() + notional.abs())
}

/// Where along one side of the walk the account first falls below maintenance, given the
/// excess at grid level `j` (1..=100) of that side: the first level with `e < −level` (below 0
/// by more than rounding, [`rounding_level`]), interpolated on the line through it and the level
/// before (the line of `e + level` when the level before is itself a little below 0).
fn walk(base_excess: f64, side: f64, level: f64, mut excess_at: impl FnMut(usize) -> f64) -> (Option<f64>, Option<u32>) {
    if base_excess < 0.0 {
        return (Some(0.0), Some(0));
    }
    let mut previous = base_excess;
    for j in 1..=GRID_LEVELS {
        let e = excess_at(j);
        if e < -level {
            let shift = if previous >= 0.0 { 0.0 } else { level };
            let (ea, eb) = (previous + shift, e + shift);
            let (m_a, m_b) = (side * grid_move(j as i32 - 1), side * grid_move(j as i32));
            return (Some(m_a + (m_b - m_a) * ea / (ea - eb)), Some(j as u32));
        }
        previous = e;
    }
    (None, None)
}

/// Portfolio risk arrays of one underlying's held instruments at the current market: the
/// underlying's scenarios, which held instruments have an array (a mark and an index price), and
/// the arrays one after the other in slot order.
#[derive(Default)]
struct HeldRisk {
    scenarios: Vec<Scenario>,
    has_array: Vec<bool>,
    base: Vec<f64>,
}

impl HeldRisk {
    fn new(book: &Book, market: &Market, u: usize, held: &[u32]) -> HeldRisk {
        let scenarios = scenarios(&book.underlyings.risk[u]);
        let spot = market.index_price[u];
        let has_array = held.iter().map(|id| !(market.mark_price[*id as usize].is_nan() || spot.is_nan())).collect();
        let base = held_arrays(book, market, held, spot, 0.0, held.iter().map(|id| market.mark_price[*id as usize]), &scenarios);
        HeldRisk { scenarios, has_array, base }
    }

    /// The array of the instrument in `slot` within `arrays` (laid out as `base`): empty when
    /// the instrument has no market data, as [`crate::portfolio::RiskArrays::array`].
    fn array<'a>(&self, arrays: &'a [f64], slot: u32) -> &'a [f64] {
        let (n, slot) = (self.scenarios.len(), slot as usize);
        if self.has_array[slot] {
            &arrays[slot * n..(slot + 1) * n]
        } else {
            &[]
        }
    }
}

/// Risk arrays of the instruments `held` at index price `spot` and these marks, one after the
/// other (zeros where an instrument has no market data; [`HeldRisk::array`] skips those), with
/// inverse contracts' settlement coins moved by `m` with their underlying.
fn held_arrays(book: &Book, market: &Market, held: &[u32], spot: f64, m: f64, marks: impl Iterator<Item = f64>, scenarios: &[Scenario]) -> Vec<f64> {
    let mut out = Vec::with_capacity(held.len() * scenarios.len());
    for (id, mark) in held.iter().zip(marks) {
        let settlement = moved_price(market.settlement_price[*id as usize], m);
        if mark.is_nan() || spot.is_nan() {
            out.resize(out.len() + scenarios.len(), 0.0);
        } else {
            instrument_array_at(book, market, *id as usize, spot, mark, settlement, scenarios, &mut out);
        }
    }
    out
}

/// Index price, held marks, linked asset prices and (portfolio) held risk arrays of one
/// underlying at each grid point `g`. Marks and asset prices are laid out grid-contiguous
/// (`[slot × POINTS + g]`) so an account's walk reads them sequentially; `risk[g]` holds the
/// risk arrays at grid point `g`, laid out as [`HeldRisk::base`].
struct UnderlyingGrid {
    spot: Vec<f64>,
    mark: Vec<f64>,
    asset_price: Vec<f64>,
    risk: Vec<Vec<f64>>,
}

impl UnderlyingGrid {
    /// The grid of underlying `u`, for its held instruments and linked assets. A move of `u`
    /// changes the marks of `u`'s instruments and the prices of assets linked to `u` only; each
    /// value is the one [`crate::stress::stress_market`], [`crate::stress::stress_asset_prices`]
    /// and [`crate::portfolio::RiskArrays`] give in the moved market.
    fn new(book: &Book, market: &Market, u: usize, held: &[u32], linked: &[u32], risk: Option<&HeldRisk>) -> UnderlyingGrid {
        let base_spot = market.index_price[u];
        let points: Vec<(f64, Vec<f64>, Vec<f64>)> = (-(GRID_LEVELS as i32)..=GRID_LEVELS as i32)
            .into_par_iter()
            .map(|j| {
                let m = grid_move(j);
                let spot = moved_price(base_spot, m);
                let marks: Vec<f64> = held.iter().map(|id| stressed_mark(book, market, *id as usize, m, spot)).collect();
                let arrays = match risk {
                    Some(r) => held_arrays(book, market, held, spot, m, marks.iter().copied(), &r.scenarios),
                    None => Vec::new(),
                };
                (spot, marks, arrays)
            })
            .collect();
        let mut grid = UnderlyingGrid {
            spot: Vec::with_capacity(POINTS),
            mark: vec![0.0; held.len() * POINTS],
            asset_price: vec![0.0; linked.len() * POINTS],
            risk: Vec::with_capacity(if risk.is_some() { POINTS } else { 0 }),
        };
        for (g, (spot, marks, arrays)) in points.into_iter().enumerate() {
            let m = grid_move(g as i32 - GRID_LEVELS as i32);
            grid.spot.push(spot);
            for (slot, mark) in marks.iter().enumerate() {
                grid.mark[slot * POINTS + g] = *mark;
            }
            for (slot, a) in linked.iter().enumerate() {
                grid.asset_price[slot * POINTS + g] = moved_price(book.assets.price[*a as usize], m);
            }
            if risk.is_some() {
                grid.risk.push(arrays);
            }
        }
        grid
    }

    /// Floats held: what the walk of one underlying keeps in memory.
    fn floats(&self) -> usize {
        self.spot.len() + self.mark.len() + self.asset_price.len() + self.risk.iter().map(Vec::len).sum::<usize>()
    }
}

/// For each underlying `u`, the accounts (indices into `inputs.slots`, ascending) with a
/// position row in an instrument of `u` or a non-zero balance of an asset linked to `u`: those
/// its walk visits (a position that nets to 0 drops out there). `(starts, accounts)`: the
/// accounts of `u` are `accounts[starts[u]..starts[u + 1]]`.
fn accounts_by_underlying(book: &Book, inputs: &Inputs) -> (Vec<usize>, Vec<u32>) {
    const CHUNK: usize = 4096;
    let n_underlyings = book.underlyings.names.len();
    let pairs: Vec<Vec<(u32, u32)>> = inputs
        .slots
        .par_chunks(CHUNK)
        .enumerate()
        .map(|(c, slots)| {
            let mut out = Vec::new();
            let mut touched = Vec::new();
            for (i, slot) in slots.iter().enumerate() {
                touched.clear();
                touched.extend(slot.positions().map(|r| book.instruments.underlying[inputs.positions.instrument.get(r) as usize]));
                for r in slot.balances() {
                    if let (Some(u), true) = (book.assets.underlying[inputs.balances.asset[r] as usize], inputs.balances.amount[r] != 0.0) {
                        touched.push(u);
                    }
                }
                touched.sort_unstable();
                touched.dedup();
                let account = (c * CHUNK + i) as u32;
                out.extend(touched.iter().map(|u| (*u, account)));
            }
            out
        })
        .collect();
    let mut starts = vec![0usize; n_underlyings + 1];
    for (u, _) in pairs.iter().flatten() {
        starts[*u as usize + 1] += 1;
    }
    for u in 0..n_underlyings {
        starts[u + 1] += starts[u];
    }
    let mut next = starts.clone();
    let mut accounts = vec![0u32; starts[n_underlyings]];
    for (u, account) in pairs.iter().flatten() {
        accounts[next[*u as usize]] = *account;
        next[*u as usize] += 1;
    }
    (starts, accounts)
}

/// [`walk`] down, then up, from `excess_at(g)` at grid point `g` (level `g − 100`):
/// `(move_down, level_down, move_up, level_up)`.
#[inline(always)]
fn walk_both_sides(base_excess: f64, level: f64, mut excess_at: impl FnMut(usize) -> f64) -> (Option<f64>, Option<u32>, Option<f64>, Option<u32>) {
    let (move_down, level_down) = walk(base_excess, -1.0, level, |j| excess_at(GRID_LEVELS - j));
    let (move_up, level_up) = walk(base_excess, 1.0, level, |j| excess_at(GRID_LEVELS + j));
    (move_down, level_down, move_up, level_up)
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

/// What every account's walk of one underlying shares.
struct Walk<'a> {
    book: &'a Book,
    market: &'a Market,
    inputs: &'a Inputs<'a>,
    model: Model,
    slots: &'a Slots,
    /// Portfolio: the held risk arrays of every underlying at the current market.
    risk: Option<&'a [HeldRisk]>,
}

/// Grids are built a batch of underlyings at a time, a batch holding at most this many floats
/// (256 MiB) unless one underlying alone needs more: a book whose held instruments all fit walks
/// every account once, a larger one walks the accounts of each batch in turn.
const GRID_BUDGET: usize = 1 << 25;

/// Distance to liquidation of every account × underlying it is exposed to (a netted position in
/// it, or a non-zero balance of an asset linked to it). Rows by account, then underlying id.
///
/// Underlyings are walked in batches: each batch's grids are built for the instruments of its
/// underlyings that some account holds, the accounts exposed to them walk them, and they are
/// dropped before the next batch.
pub fn distances(book: &Book, market: &Market, inputs: &Inputs, model: Model, rows: &[AccountRow]) -> Result<Vec<DistanceRow>> {
    distances_with(book, market, inputs, model, rows, GRID_BUDGET, |_| {})
}

/// [`distances`] with batches of at most `budget` floats of grids, telling `grid_floats` the
/// size (in floats) of each underlying's grid as it is built.
fn distances_with(
    book: &Book,
    market: &Market,
    inputs: &Inputs,
    model: Model,
    rows: &[AccountRow],
    budget: usize,
    mut grid_floats: impl FnMut(usize),
) -> Result<Vec<DistanceRow>> {
    let n_underlyings = book.underlyings.names.len();
    let slots = Slots::new(book, inputs);
    let risk: Option<Vec<HeldRisk>> = (model == Model::Portfolio).then(|| {
        (0..n_underlyings)
            .into_par_iter()
            .map(|u| if slots.held[u].is_empty() { HeldRisk::default() } else { HeldRisk::new(book, market, u, &slots.held[u]) })
            .collect()
    });
    let walk = Walk { book, market, inputs, model, slots: &slots, risk: risk.as_deref() };
    // the underlyings some account may be exposed to: a held instrument, a linked asset's balance
    let mut touched: Vec<bool> = slots.held.iter().map(|h| !h.is_empty()).collect();
    for (a, amount) in inputs.balances.asset.iter().zip(inputs.balances.amount.iter()) {
        if let (Some(u), true) = (book.assets.underlying[*a as usize], *amount != 0.0) {
            touched[u as usize] = true;
        }
    }
    let walked: Vec<usize> = (0..n_underlyings).filter(|u| touched[*u]).collect();
    let size = |u: usize| {
        let scenarios = risk.as_ref().map_or(0, |r| r[u].scenarios.len());
        POINTS * (1 + slots.linked[u].len() + slots.held[u].len() * (1 + scenarios))
    };
    let mut batches: Vec<&[usize]> = Vec::new();
    let mut rest = &walked[..];
    while !rest.is_empty() {
        let mut total = size(rest[0]);
        let mut n = 1;
        while n < rest.len() && total + size(rest[n]) <= budget {
            total += size(rest[n]);
            n += 1;
        }
        batches.push(&rest[..n]);
        rest = &rest[n..];
    }
    // with several batches, each walks only the accounts exposed to its underlyings
    let by_underlying = (batches.len() > 1).then(|| accounts_by_underlying(book, inputs));
    let mut found: Vec<Vec<(u32, DistanceRow)>> = Vec::new();
    for batch in &batches {
        let mut grids: Vec<Option<UnderlyingGrid>> = (0..n_underlyings).map(|_| None).collect();
        for &u in batch.iter() {
            let grid = UnderlyingGrid::new(book, market, u, &slots.held[u], &slots.linked[u], risk.as_ref().map(|r| &r[u]));
            grid_floats(grid.floats());
            grids[u] = Some(grid);
        }
        // the accounts exposed to some underlying of the batch, ascending
        let batch_accounts: Vec<u32> = match &by_underlying {
            None => (0..inputs.slots.len() as u32).collect(),
            Some((starts, accounts)) => {
                let mut all: Vec<u32> = batch.iter().flat_map(|u| accounts[starts[*u]..starts[u + 1]].iter().copied()).collect();
                all.par_sort_unstable();
                all.dedup();
                all
            }
        };
        let chunks: Vec<Vec<(u32, DistanceRow)>> = batch_accounts
            .par_chunks(256)
            .map(|chunk| {
                let mut s = DistanceScratch::default();
                let mut out = Vec::new();
                for a in chunk {
                    let i = *a as usize;
                    account_distances(&walk, &grids, &inputs.slots[i], &rows[i], &mut s, |d| out.push((*a, d)));
                }
                out
            })
            .collect();
        found.extend(chunks);
    }
    if batches.len() <= 1 {
        // one pass over the accounts in order: the rows are in order already
        return Ok(found.into_iter().flatten().map(|(_, d)| d).collect());
    }
    // rows by account, then underlying: each account's rows were found in underlying order
    let mut starts = vec![0usize; inputs.slots.len() + 1];
    for (a, _) in found.iter().flatten() {
        starts[*a as usize + 1] += 1;
    }
    for a in 0..inputs.slots.len() {
        starts[a + 1] += starts[a];
    }
    let empty = DistanceRow {
        account_id: 0,
        underlying: 0,
        move_down: None,
        move_up: None,
        level_down: None,
        level_up: None,
        notional: 0.0,
        collateral_maintenance: 0.0,
        method: Method::Grid,
    };
    let mut out = vec![empty; starts[inputs.slots.len()]];
    for chunk in found {
        for (a, d) in chunk {
            out[starts[a as usize]] = d;
            starts[a as usize] += 1;
        }
    }
    Ok(out)
}

/// The distance rows of one account on each underlying it is exposed to whose grid is in
/// `grids` (`grids[u]`), in underlying order.
fn account_distances(
    w: &Walk,
    grids: &[Option<UnderlyingGrid>],
    slot: &AccountSlot,
    row: &AccountRow,
    s: &mut DistanceScratch,
    mut emit: impl FnMut(DistanceRow),
) {
    let (book, market, inputs) = (w.book, w.market, w.inputs);
    let assets = &book.assets;
    let instrument_slot = |p: &NetPosition| w.slots.instrument_slot[p.instrument as usize];
    net_positions(slot.positions(), &inputs.positions, book, market, &mut s.net);
    group_by_underlying(book, &s.net.net, &mut s.grouped);

    // Base value and maintenance margin of each underlying's positions.
    s.groups.clear();
    let mut start = 0;
    while start < s.grouped.len() {
        let g = s.grouped[start].0;
        let end = start + s.grouped[start..].iter().take_while(|(x, _)| *x == g).count();
        let positions = &s.grouped[start..end];
        let value: f64 = positions.iter().map(|(_, p)| p.value).sum();
        let spot = market.index_price[g as usize];
        let margin = match w.risk {
            Some(risk) => {
                let r = &risk[g as usize];
                let arrays = positions.iter().map(|(_, p)| (p, r.array(&r.base, instrument_slot(p))));
                positions_margin_of(book, spot, &r.scenarios, g as usize, arrays, &mut s.pnl).maintenance_margin
            }
            None => positions
                .iter()
                .map(|(_, p)| {
                    let id = p.instrument as usize;
                    position_margin_at(book, id, p.quantity, market.mark_price[id], spot, market.settlement_price[id]).1
                })
                .sum(),
        };
        s.groups.push((g, start, end, value, margin));
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
    for i in 0..s.exposed.len() {
        let u = s.exposed[i];
        if let Some(grid) = &grids[u as usize] {
            emit(walk_underlying(w, u, grid, slot, row, s));
        }
    }
}

/// The distance row of one account on underlying `u`, from the account's base values in `s`
/// (filled by [`account_distances`]).
fn walk_underlying(w: &Walk, u: u32, grid: &UnderlyingGrid, slot: &AccountSlot, row: &AccountRow, s: &mut DistanceScratch) -> DistanceRow {
    let (book, market, model) = (w.book, w.market, w.model);
    let ins = &book.instruments;
    let instrument_slot = |p: &NetPosition| w.slots.instrument_slot[p.instrument as usize];
    let base_excess = row.margin_excess();
    // Everything the move of `u` leaves unchanged, from the P&L of positions that netted to 0.
    let mut other = s.net.closed_pnl;
    for (id, coin) in &s.net.closed_inverse {
        if ins.underlying[*id as usize] != u {
            other += coin * market.settlement_price[*id as usize];
        }
    }
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
        .map(|(_, p)| {
            let id = p.instrument as usize;
            notional_at(book, id, p.quantity, market.mark_price[id], market.settlement_price[id])
        })
        .sum();
    let level = rounding_level(row, notional);
    let (move_down, level_down, move_up, level_up) = if base_excess < 0.0 {
        (Some(0.0), Some(0), Some(0.0), Some(0))
    } else {
        // Excess at every grid point g: collateral linked to u and u's positions revalued.
        s.excess.clear();
        s.excess.resize(POINTS, other);
        for (_, linked, a, amount) in &s.balances {
            if *linked == Some(u) {
                let k = w.slots.asset_slot[*a] as usize;
                let prices = &grid.asset_price[k * POINTS..(k + 1) * POINTS];
                for (e, price) in s.excess.iter_mut().zip(prices) {
                    *e += value_balance(book, *a, *amount, *price).weighted_maintenance;
                }
            }
        }
        // an inverse position of u that netted to 0 still holds coin P&L, moving with the coin
        for (id, coin) in &s.net.closed_inverse {
            let id = *id as usize;
            if ins.underlying[id] == u {
                for (g, e) in s.excess.iter_mut().enumerate() {
                    *e += coin * moved_price(market.settlement_price[id], grid_move(g as i32 - GRID_LEVELS as i32));
                }
            }
        }
        for (_, p) in positions {
            let id = p.instrument as usize;
            let k = instrument_slot(p) as usize;
            let marks = &grid.mark[k * POINTS..(k + 1) * POINTS];
            let size = p.quantity * ins.multiplier[id];
            if ins.inverse[id] {
                // coin value at the moved mark, at the coin price moved with u; its coin margin too
                for (g, (e, mark)) in s.excess.iter_mut().zip(marks).enumerate() {
                    let coin_price = moved_price(market.settlement_price[id], grid_move(g as i32 - GRID_LEVELS as i32));
                    *e += inverse_value_at(book, market, id, p, *mark, coin_price).0;
                    if model == Model::Standard {
                        *e -= position_margin_at(book, id, p.quantity, *mark, grid.spot[g], coin_price).1;
                    }
                }
                continue;
            }
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
                    *e -= position_margin_at(book, id, p.quantity, *mark, grid.spot[g], f64::NAN).1;
                }
            }
        }
        let excess = &s.excess;
        match w.risk {
            None => walk_both_sides(base_excess, level, |g| excess[g]),
            Some(risk) => {
                let r = &risk[u as usize];
                let pnl = &mut s.pnl;
                walk_both_sides(base_excess, level, |g| {
                    let arrays = positions.iter().map(|(_, p)| (p, r.array(&grid.risk[g], instrument_slot(p))));
                    excess[g] - positions_margin_of(book, grid.spot[g], &r.scenarios, u as usize, arrays, pnl).maintenance_margin
                })
            }
        }
    };
    DistanceRow {
        account_id: slot.account_id,
        underlying: u,
        move_down,
        move_up,
        level_down,
        level_up,
        notional,
        collateral_maintenance: row.collateral_maintenance,
        method: if base_excess < 0.0 { Method::Liquidatable } else { Method::Grid },
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

/// Each account's nearest liquidation, for the scan: `rows` in account order and `distances` as
/// [`distances`] returns them. An account below maintenance now (the walk's level 0) gets move 0
/// and no underlying: no move is "the" cause, it is liquidatable as it stands, whether or not
/// it is exposed to any underlying. Otherwise [`nearest`] with its underlying; `None` when no
/// move liquidates it (within ±50% for the grid walk's rows; on the whole axis for the exact
/// rows of [`crate::roots::exact_distances`], which the scan uses).
pub fn nearest_by_account(rows: &[AccountRow], distances: &[DistanceRow]) -> Vec<Option<(f64, Option<u32>)>> {
    let mut out = Vec::with_capacity(rows.len());
    let mut k = 0;
    for row in rows {
        let start = k;
        while k < distances.len() && distances[k].account_id == row.account_id {
            k += 1;
        }
        out.push(if row.margin_excess() < 0.0 {
            Some((0.0, None))
        } else {
            nearest(&distances[start..k]).map(|(m, u)| (m, Some(u)))
        });
    }
    out
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, Float64Array, RecordBatch, StringArray, UInt64Array};

    use super::*;
    use crate::book::BookTables;
    use crate::market::MarketTables;
    use crate::table::Table;

    fn batch(columns: Vec<(&str, ArrayRef)>) -> (Vec<String>, Vec<RecordBatch>) {
        let names = columns.iter().map(|(n, _)| n.to_string()).collect();
        (names, vec![RecordBatch::try_from_iter(columns).unwrap()])
    }

    fn strings(v: Vec<String>) -> ArrayRef {
        Arc::new(StringArray::from(v))
    }

    fn floats(v: Vec<f64>) -> ArrayRef {
        Arc::new(Float64Array::from(v))
    }

    /// A book of `n_underlyings` × `per` perpetuals (mark = index = 100, mmr 5%), instrument
    /// `I{k}` of underlying `U{k / per}`, and assets USD and COIN (price 100, linked to U000).
    fn perpetual_book(n_underlyings: usize, per: usize) -> (Book, Market) {
        let n = n_underlyings * per;
        let ids: Vec<String> = (0..n).map(|i| format!("I{i}")).collect();
        let (inames, ibatches) = batch(vec![
            ("instrument", strings(ids.clone())),
            ("kind", strings(vec!["perpetual".to_string(); n])),
            ("underlying", strings((0..n).map(|i| format!("U{:03}", i / per)).collect())),
            ("multiplier", floats(vec![1.0; n])),
            ("initial_margin_rate", floats(vec![0.10; n])),
            ("maintenance_margin_rate", floats(vec![0.05; n])),
        ]);
        let two = |a: f64, b: f64| floats(vec![a, b]);
        let (anames, abatches) = batch(vec![
            ("asset", strings(vec!["USD".into(), "COIN".into()])),
            ("price", two(1.0, 100.0)),
            ("initial_weight", two(1.0, 0.8)),
            ("maintenance_weight", two(1.0, 0.9)),
            ("initial_liability_weight", two(1.0, 1.2)),
            ("maintenance_liability_weight", two(1.0, 1.1)),
            ("underlying", Arc::new(StringArray::from(vec![None, Some("U000")])) as ArrayRef),
        ]);
        let book = Book::new(BookTables {
            instruments: Table::new("instruments", &inames, &ibatches),
            assets: Table::new("assets", &anames, &abatches),
            risk_params: None,
            margin_tiers: None,
        })
        .unwrap();
        let (xnames, xbatches) = batch(vec![
            ("underlying", strings((0..n_underlyings).map(|u| format!("U{u:03}")).collect())),
            ("index_price", floats(vec![100.0; n_underlyings])),
        ]);
        let (mnames, mbatches) = batch(vec![("instrument", strings(ids)), ("mark_price", floats(vec![100.0; n]))]);
        let tables = MarketTables::new(&Table::new("index_prices", &xnames, &xbatches), &Table::new("marks", &mnames, &mbatches), 0).unwrap();
        let market = Market::resolve(&book, &tables).unwrap();
        (book, market)
    }

    /// Position rows `(account, instrument index, quantity)` and balance rows `(account, asset,
    /// amount)` as tables (names and batches).
    #[allow(clippy::type_complexity)]
    fn rows_of(positions: &[(u64, usize, f64)], balances: &[(u64, &str, f64)]) -> ((Vec<String>, Vec<RecordBatch>), (Vec<String>, Vec<RecordBatch>)) {
        let p = batch(vec![
            ("account_id", Arc::new(UInt64Array::from(positions.iter().map(|r| r.0).collect::<Vec<_>>())) as ArrayRef),
            ("instrument", strings(positions.iter().map(|r| format!("I{}", r.1)).collect())),
            ("quantity", floats(positions.iter().map(|r| r.2).collect())),
        ]);
        let b = batch(vec![
            ("account_id", Arc::new(UInt64Array::from(balances.iter().map(|r| r.0).collect::<Vec<_>>())) as ArrayRef),
            ("asset", strings(balances.iter().map(|r| r.1.to_string()).collect())),
            ("amount", floats(balances.iter().map(|r| r.2).collect())),
        ]);
        (p, b)
    }

    /// Issue 12, "Memory and silent errors": the walk used to build a grid of every instrument
    /// under every underlying's moves (underlyings × instruments × 201 floats, 3.3 GB for one
    /// position in a 4,000-instrument, 500-underlying book). One account holding one perpetual in
    /// a book of 200 underlyings × 10 perpetuals must build one grid, of that one instrument.
    #[test]
    fn distance_grids_hold_only_what_accounts_hold() {
        let per = 10;
        let (book, market) = perpetual_book(200, per);
        // account 1: long 2 of U003's first perpetual, 20 USD: e(m) = 10 + 190 m
        let ((pnames, pbatches), (bnames, bbatches)) = rows_of(&[(1, 3 * per, 2.0)], &[(1, "USD", 20.0)]);
        let (pt, bt) = (Table::new("positions", &pnames, &pbatches), Table::new("balances", &bnames, &bbatches));
        let inputs = Inputs::new(&book, &market, Some(&pt), Some(&bt)).unwrap();
        for model in [Model::Standard, Model::Portfolio] {
            let rows = crate::engine::margin(&book, &market, &inputs, model).unwrap();
            let mut grids = Vec::new();
            let d = distances_with(&book, &market, &inputs, model, &rows, GRID_BUDGET, |floats| grids.push(floats)).unwrap();
            // one grid: the index price and the one held mark at 201 points (portfolio: plus
            // that instrument's 65 scenario P&L at each point)
            let scenarios = if model == Model::Portfolio { 65 } else { 0 };
            assert_eq!(grids, vec![POINTS * (2 + scenarios)], "{model:?}");
            assert_eq!(d.len(), 1);
            assert_eq!(d[0].underlying, 3);
            if model == Model::Standard {
                assert!((d[0].move_down.unwrap() + 10.0 / 190.0).abs() < 1e-12, "{:?}", d[0]);
            }
        }
    }

    /// Walking one underlying per batch (a budget of 0 floats) gives exactly the rows of walking
    /// them all in one batch: accounts on several underlyings, linked collateral (COIN on
    /// U000), a position that nets to 0 (exposure dropped), balance-only and liquidatable accounts.
    #[test]
    fn batches_of_underlyings_give_the_same_rows() {
        let (book, market) = perpetual_book(4, 3);
        let positions = [
            (1, 0, 2.0),
            (1, 4, -1.0),
            (1, 10, 0.5),
            (2, 5, 1.0),
            (2, 5, -1.0),
            (2, 7, 3.0),
            (3, 1, -2.0),
            (5, 11, 4.0),
        ];
        let balances = [(1, "USD", 40.0), (2, "USD", 25.0), (3, "COIN", 0.5), (4, "COIN", 1.0), (5, "USD", 1.0), (6, "USD", 3.0)];
        let ((pnames, pbatches), (bnames, bbatches)) = rows_of(&positions, &balances);
        let (pt, bt) = (Table::new("positions", &pnames, &pbatches), Table::new("balances", &bnames, &bbatches));
        let inputs = Inputs::new(&book, &market, Some(&pt), Some(&bt)).unwrap();
        for model in [Model::Standard, Model::Portfolio] {
            let rows = crate::engine::margin(&book, &market, &inputs, model).unwrap();
            let mut built = 0;
            let one = distances_with(&book, &market, &inputs, model, &rows, 0, |_| built += 1).unwrap();
            let all = distances(&book, &market, &inputs, model, &rows).unwrap();
            assert_eq!(one, all, "{model:?}");
            assert_eq!(built, 4);
            let pairs: Vec<(u64, u32)> = all.iter().map(|d| (d.account_id, d.underlying)).collect();
            assert_eq!(pairs, vec![(1, 0), (1, 1), (1, 3), (2, 2), (3, 0), (4, 0), (5, 3)], "{model:?}");
            assert!(all.iter().any(|d| d.level_down == Some(0)) && all.iter().any(|d| [d.move_down, d.move_up].iter().flatten().any(|m| *m != 0.0)), "{model:?} {all:?}");
        }
    }
}
