//! Exact liquidation prices (docs/liquidation.md §3): the roots of `margin_excess(m) = 0` for one
//! underlying moved alone, as [`crate::stress`] moves it, over the whole price axis.
//!
//! For an account and an underlying `u` it is exposed to, `e(m) = e_now + C_u(m) − C_u(0)`, where
//! `e_now` is the account's margin excess at the current market (its margin row) and `C_u(m)` is
//! what the move of `u` changes: the weighted maintenance value of its collateral linked to `u`,
//! the value of its positions in `u`, minus their maintenance margin, all at the moved market.
//! Everything else of the account does not depend on the move of `u`.
//!
//! The axis is `m ∈ (−1, 99]`: down to price 0 (exclusive), up to 100× the index. On each side
//! the root is the FIRST crossing moving away from the current price: the smallest `|m|` where
//! `e` goes below 0 by more than rounding ([`rounding_level`]: an excess that rests on 0 to the
//! last digits, as a long-options-only account's does, is not a crossing).
//!
//! - **Closed form** (`Method::ClosedForm`): when every position in `u` is a perpetual or a
//!   future, `e(m)` is piecewise linear in the price. Under the standard model the pieces are cut
//!   only where a position's notional crosses a `margin_tiers` floor (a bracket's margin is
//!   `notional × rate − cum`, linear in the price); linked collateral is `amount × price × (1 +
//!   m) × weight`, linear. Under the v1 portfolio model every scenario P&L of a linear contract
//!   is `q × mult × mark × (1 + m) × shock`, so `MM_u(m) = (1 + m) × MM_u(0)`: one piece. The
//!   root is found by evaluating `e` at the breakpoints in order outward and solving the one
//!   linear piece whose end is below 0.
//! - **Bracketed** (`Method::Bracketed`, options): `e` is sampled on [`axis`] outward from the
//!   current price (0.5% steps out to ±50%, then steps of 5% of the price out to 100× and down
//!   to 0.1%, then price 0) and the first sample below 0 brackets the root with the previous
//!   one; the Illinois variant of regula falsi refines it to [`TOLERANCE`] relative in the price.
//!
//! Under a book methodology that the incremental `C_u` does not follow (a scenario methodology
//! with the portfolio model, standard rules with the standard model) `e(m)` is the whole
//! account margined by [`Pricing::account`] in the moved market ([`crate::stress`]), the same
//! row `liquidation_scan(stress=)` gives; always bracketed (the rules may bend the excess). The
//! moved markets at the axis points are built once per underlying and shared by its accounts.

use rayon::prelude::*;

use crate::accounts::AccountSlot;
use crate::book::Book;
use crate::engine::{AccountScratch, Inputs, Model, Pricing, Stress};
use crate::liquidation::{rounding_level, DistanceRow, Method, GRID_LEVELS, GRID_STEP};
use crate::market::Market;
use crate::portfolio::{group_by_underlying, instrument_array_at, positions_margin_of, scenarios, Scenario};
use crate::results::AccountRow;
use crate::standard::position_margin_at;
use crate::portfolio::RiskArrays;
use crate::stress::{inverse_value_at, moved_price, stress_asset_prices, stress_market, stressed_mark};
use crate::valuation::{net_positions, notional_at, value_balance, NetPosition, Scratch};

/// Largest move up: 100× the index price.
pub const MAX_MOVE_UP: f64 = 99.0;
/// Sample axis near the price: steps of 1% out to ±10% (`NEAR_STEPS`), then of 2.5% out to ±30%
/// (`MIDDLE_STEPS`); beyond, price ratios growing by `OUTER_STEP` (up) or shrinking by it (down).
pub const NEAR_STEP: f64 = 0.01;
pub const NEAR_STEPS: usize = 10;
pub const MIDDLE_STEP: f64 = 0.025;
pub const MIDDLE_STEPS: usize = 8;
/// Relative price step of the sample axis beyond ±30%.
pub const OUTER_STEP: f64 = 0.15;
/// Lowest sampled price ratio above 0 on the way down (then [`LAST_DOWN`]).
pub const LOWEST_RATIO: f64 = 1e-3;
/// The last sample down: a price of 1e-12 of the index, not 0 itself (an inverse contract's coin
/// P&L is unbounded at 0; every other value is continuous there).
pub const LAST_DOWN: f64 = -1.0 + 1e-12;
/// Width of the final bracket relative to the price `S (1 + m)` (and at least 1e-15 of `S`).
pub const TOLERANCE: f64 = 1e-10;

/// The sample moves of one side (`side` −1 down, +1 up), outward from the current price:
/// `±0.01 j` (j = 1..=10), `±(0.10 + 0.025 j)` (j = 1..=8), then price ratios `1.3 × 1.15^k` below
/// 100 and 100 itself (up) or `0.7 × 0.85^k` above 0.001 and then 1e-12 of the price (down), each ratio the
/// previous one times the factor. About 50 points up and 60 down: the sampling only brackets the
/// first crossing (refined to [`TOLERANCE`]); a dip below maintenance narrower than the spacing
/// can be stepped over (docs/liquidation.md §3).
pub fn axis(side: f64) -> Vec<f64> {
    let mut out: Vec<f64> = (1..=NEAR_STEPS).map(|j| side * NEAR_STEP * j as f64).collect();
    let near = NEAR_STEP * NEAR_STEPS as f64;
    out.extend((1..=MIDDLE_STEPS).map(|j| side * (near + MIDDLE_STEP * j as f64)));
    outer(out, 1.0 + side * (near + MIDDLE_STEP * MIDDLE_STEPS as f64), side)
}

/// The portfolio model's axis: the former grid's 0.5% steps out to ±50% (its excess, a worst
/// loss over scenarios, can dip below maintenance and come back within a few percent of the
/// price, which the sparse axis steps over), then the same outer ratios.
pub fn dense_axis(side: f64) -> Vec<f64> {
    let out: Vec<f64> = (1..=GRID_LEVELS).map(|j| side * GRID_STEP * j as f64).collect();
    outer(out, 1.0 + side * GRID_STEP * GRID_LEVELS as f64, side)
}

/// `out` continued outward from the price ratio `r` by the outer ratios, then the last point.
fn outer(mut out: Vec<f64>, mut r: f64, side: f64) -> Vec<f64> {
    let factor = 1.0 + side * OUTER_STEP;
    loop {
        r *= factor;
        if (side > 0.0 && r >= 1.0 + MAX_MOVE_UP) || (side < 0.0 && r <= LOWEST_RATIO) {
            break;
        }
        out.push(r - 1.0);
    }
    out.push(if side > 0.0 { MAX_MOVE_UP } else { LAST_DOWN });
    out
}

/// What a move of one underlying touches in one account: its netted positions in it and its
/// balances of assets linked to it.
struct Exposure<'s> {
    u: usize,
    positions: &'s [(u32, NetPosition)],
    linked: &'s [(usize, f64)],
    /// Inverse positions of the account that netted to 0: `(instrument, coin P&L)` (those of `u`
    /// move with its coin).
    closed_coins: &'s [(u32, f64)],
}

/// Shared by every account.
struct Context<'a> {
    book: &'a Book,
    market: &'a Market,
    /// Portfolio: each underlying's scenarios.
    scenarios: Option<Vec<Vec<Scenario>>>,
    up: Vec<f64>,
    down: Vec<f64>,
}

#[derive(Default)]
struct RootScratch {
    net: Scratch,
    grouped: Vec<(u32, NetPosition)>,
    /// The account's exposed underlyings.
    exposed: Vec<u32>,
    linked_u: Vec<(usize, f64)>,
    arrays: Vec<f64>,
    pnl: Vec<f64>,
    breakpoints: Vec<f64>,
}

impl Context<'_> {
    /// `C_u(m)`: weighted linked collateral + position values − maintenance margin of `u`'s
    /// positions, at the market with `u` moved by `m`.
    /// `cached`: `m` is axis point `k` of `side`, whose marks and arrays are in the cache.
    fn contribution(&self, x: &Exposure, m: f64, cached: Option<(&AxisValues, usize, usize)>, arrays: &mut Vec<f64>, pnl: &mut Vec<f64>) -> f64 {
        let (book, market) = (self.book, self.market);
        let ins = &book.instruments;
        let mut c = 0.0;
        for &(id, coin) in x.closed_coins {
            if ins.underlying[id as usize] as usize == x.u {
                c += coin * moved_price(market.settlement_price[id as usize], m);
            }
        }
        for &(a, amount) in x.linked {
            c += value_balance(book, a, amount, moved_price(book.assets.price[a], m)).weighted_maintenance;
        }
        let spot = moved_price(market.index_price[x.u], m);
        let mut margin = 0.0;
        arrays.clear();
        for (_, p) in x.positions {
            let id = p.instrument as usize;
            let at = cached.map(|(cache, side, k)| (cache, side, k * cache.held + cache.slot[id] as usize));
            let mark = match at {
                Some((cache, side, i)) => cache.marks[side][i],
                None => stressed_mark(book, market, id, m, spot),
            };
            let size = p.quantity * ins.multiplier[id];
            // an inverse contract: coin value at the moved mark, converted at the coin price moved with u
            let coin_price = moved_price(market.settlement_price[id], m);
            c += match (ins.inverse[id], ins.kind[id].is_linear()) {
                (true, _) => inverse_value_at(book, market, id, p, mark, coin_price).0,
                (false, true) => p.value + size * (mark - market.mark_price[id]),
                (false, false) => size * mark,
            };
            match (&self.scenarios, at) {
                (None, _) => margin += position_margin_at(book, id, p.quantity, mark, spot, coin_price).1,
                (Some(_), Some((cache, side, i))) => arrays.extend_from_slice(&cache.arrays[side][i * cache.n_scenarios..(i + 1) * cache.n_scenarios]),
                (Some(s), None) => instrument_array_at(book, market, id, spot, mark, coin_price, &s[x.u], arrays),
            }
        }
        if let Some(s) = &self.scenarios {
            if !x.positions.is_empty() {
                let s = &s[x.u];
                let n = s.len();
                let with_arrays = x.positions.iter().enumerate().map(|(k, (_, p))| (p, &arrays[k * n..(k + 1) * n]));
                margin = positions_margin_of(book, spot, s, x.u, with_arrays, pnl).maintenance_margin;
            }
        }
        c - margin
    }

    /// Moves where a linear position's notional crosses a tier floor, on the side of `side`,
    /// sorted outward from 0 (the closed form's breakpoints).
    fn breakpoints(&self, x: &Exposure, side: f64, out: &mut Vec<f64>) {
        out.clear();
        let ins = &self.book.instruments;
        // under the v1 portfolio model a linear book's margin is one linear piece: no breakpoints
        let tiered = if self.scenarios.is_some() { &[][..] } else { x.positions };
        for (_, p) in tiered {
            let id = p.instrument as usize;
            if let Some(tiers) = &ins.tiers[id] {
                let notional = p.quantity.abs() * ins.multiplier[id] * self.market.mark_price[id];
                if !(notional > 0.0) {
                    continue;
                }
                for b in &tiers.brackets {
                    let m = b.notional_floor / notional - 1.0;
                    let inside = if side > 0.0 { m > 0.0 && m < MAX_MOVE_UP } else { m < 0.0 && m > -1.0 };
                    if inside {
                        out.push(m);
                    }
                }
            }
        }
        out.sort_unstable_by(|a, b| a.abs().total_cmp(&b.abs()));
        out.dedup();
        out.push(if side > 0.0 { MAX_MOVE_UP } else { -1.0 });
    }
}

/// The first crossing below 0 along `points` (moves outward from 0, where the excess is
/// `e0 ≥ 0`), from the excess `e(m)`: the first point with `e < −level` (below 0 by more than
/// rounding, [`rounding_level`]) and the point before it bracket the crossing, solved as a
/// linear piece (`closed`) or refined by [`refine`]. When the point before is itself a little
/// below 0 (an excess resting on 0 to rounding, then falling), the crossing solved for is that
/// of `e + level`. `None` when `e` stays ≥ −level at every point.
fn first_crossing(e0: f64, points: &[f64], closed: bool, level: f64, mut e: impl FnMut(f64) -> f64) -> Option<f64> {
    let (mut a, mut ea) = (0.0, e0);
    for &b in points {
        let eb = e(b);
        if eb < -level {
            let shift = if ea >= 0.0 { 0.0 } else { level };
            let (ea, eb) = (ea + shift, eb + shift);
            if closed {
                let root = a + (b - a) * ea / (ea - eb);
                return Some(clamp_between(root, a, b));
            }
            return Some(refine(a, ea, b, eb, |m| e(m) + shift));
        }
        a = b;
        ea = eb;
    }
    None
}

/// `x` inside the closed interval spanned by `a` and `b`.
fn clamp_between(x: f64, a: f64, b: f64) -> f64 {
    let (lo, hi) = if a < b { (a, b) } else { (b, a) };
    if x.is_nan() {
        return b;
    }
    x.clamp(lo, hi)
}

/// Illinois (modified regula falsi) on `[a, b]` with `e(a) ≥ 0 > e(b)`, until the bracket is
/// narrower than [`TOLERANCE`] × the price ratio `1 + m` (or 1e-15): a bracket is kept at every
/// step, so it converges to a crossing inside `[a, b]`; a step that lands outside the bracket
/// (rounding) or fails to halve it twice running is replaced by bisection.
fn refine(mut a: f64, mut ea: f64, mut b: f64, mut eb: f64, mut e: impl FnMut(f64) -> f64) -> f64 {
    let mut last_kept_a = None::<bool>;
    let mut width = (b - a).abs();
    let mut slow = 0;
    for _ in 0..300 {
        let ratio = 1.0 + a.min(b).max(-1.0);
        if (b - a).abs() <= (TOLERANCE * ratio).max(1e-15) {
            break;
        }
        let mut c = b - eb * (b - a) / (eb - ea);
        if slow >= 2 || !(c - a.min(b) > 0.0 && a.max(b) - c > 0.0) {
            c = 0.5 * (a + b);
            slow = 0;
        }
        let ec = e(c);
        if ec == 0.0 {
            return c;
        }
        if ec > 0.0 {
            a = c;
            ea = ec;
            if last_kept_a == Some(true) {
                eb *= 0.5;
            }
            last_kept_a = Some(true);
        } else {
            b = c;
            eb = ec;
            if last_kept_a == Some(false) {
                ea *= 0.5;
            }
            last_kept_a = Some(false);
        }
        let w = (b - a).abs();
        slow = if w > 0.5 * width { slow + 1 } else { 0 };
        width = w;
    }
    // the false-position point of the last bracket (exact for a linear piece)
    clamp_between(b - eb * (b - a) / (eb - ea), a, b)
}

/// Grid level of an exact move, as the map and the grid walk count it: the first level past it
/// (`ceil(|m| / 0.005)`, at least 1), `None` beyond ±50%.
fn level_of(m: Option<f64>) -> Option<u32> {
    let m = m?;
    let j = (m.abs() / GRID_STEP).ceil().max(1.0);
    (j <= GRID_LEVELS as f64).then_some(j as u32)
}

/// The distance row of one account × underlying from its roots.
fn distance_row(account_id: u64, u: u32, (move_down, move_up, method): (Option<f64>, Option<f64>, Method), notional: f64, row: &AccountRow) -> DistanceRow {
    let (level_down, level_up) = match method {
        Method::Liquidatable => (Some(0), Some(0)),
        _ => (level_of(move_down), level_of(move_up)),
    };
    DistanceRow { account_id, underlying: u, move_down, move_up, level_down, level_up, notional, collateral_maintenance: row.collateral_maintenance, method }
}

/// Exact distance to liquidation of every account × underlying it is exposed to (a netted
/// position in it, or a non-zero balance of an asset linked to it), rows by account then
/// underlying id; `rows` are the accounts' margin rows at the current market (in
/// `inputs.slots` order). Accounts below maintenance now get move 0 on both sides
/// (`Method::Liquidatable`).
///
/// Underlyings are taken one at a time: what the accounts exposed to `u` share (the held
/// instruments of `u` valued at every axis point; under a book methodology, the moved markets)
/// is built once, used by those accounts in parallel, and dropped before the next underlying.
pub fn exact_distances(book: &Book, market: &Market, inputs: &Inputs, model: Model, rows: &[AccountRow]) -> Vec<DistanceRow> {
    let ins = &book.instruments;
    let n_underlyings = book.underlyings.names.len();
    let full = needs_full_account(book, model);
    let scenarios = (model == Model::Portfolio && !full).then(|| book.underlyings.risk.iter().map(scenarios).collect());
    let (up, down) = if model == Model::Portfolio { (dense_axis(1.0), dense_axis(-1.0)) } else { (axis(1.0), axis(-1.0)) };
    let ctx = Context { book, market, scenarios, up, down };
    let used = inputs.positions.used_instruments(ins.len());
    if !full {
        return incremental_distances(&ctx, inputs, rows, &used);
    }
    let exposures = exposures(book, market, inputs);
    let mut touched = vec![false; n_underlyings];
    for u in exposures.iter().flatten() {
        touched[*u as usize] = true;
    }
    let mut out: Vec<(usize, DistanceRow)> = Vec::new();
    for u in (0..n_underlyings).filter(|u| touched[*u]) {
        let accounts: Vec<usize> = (0..inputs.slots.len()).into_par_iter().filter(|i| exposures[*i].binary_search(&(u as u32)).is_ok()).collect();
        let build = |points: &[f64]| -> Vec<Moved> { points.par_iter().map(|m| Moved::new(book, market, model, u, *m)).collect() };
        let at = [build(&ctx.down), build(&ctx.up)];
        let found: Vec<(usize, DistanceRow)> = accounts
            .par_iter()
            .map_init(AccountScratch::default, |scratch, &i| (i, full_account_row(&ctx, model, inputs, u, &at, &inputs.slots[i], &rows[i], scratch)))
            .collect();
        out.extend(found);
    }
    // found underlying by underlying: a stable sort by account keeps each account's in order
    out.par_sort_by_key(|(i, _)| *i);
    out.into_iter().map(|(_, d)| d).collect()
}

/// Bytes of axis values held at once by [`incremental_distances`]: underlyings are taken in
/// batches whose caches fit (one batch on most books).
const CACHE_BUDGET: usize = 256 << 20;

/// Accounts taken together per batch of underlyings under the incremental evaluator.
const ACCOUNT_CHUNK: usize = 1024;

/// [`exact_distances`] with the incremental evaluator: the axis values of a batch of
/// underlyings are built first; then each account is netted and grouped once and its row on
/// every underlying of the batch it is exposed to is found (in underlying order, so the rows
/// come out by account, then underlying).
fn incremental_distances(ctx: &Context, inputs: &Inputs, rows: &[AccountRow], used: &[bool]) -> Vec<DistanceRow> {
    let book = ctx.book;
    let ins = &book.instruments;
    let n_underlyings = book.underlyings.names.len();
    let points = ctx.up.len() + ctx.down.len();
    let bytes = |u: usize| {
        let held = (0..ins.len()).filter(|id| used[*id] && ins.underlying[*id] as usize == u).count();
        let n_scenarios = ctx.scenarios.as_ref().map_or(0, |s| s[u].len());
        held * points * (1 + n_scenarios) * 8
    };
    let mut batches: Vec<Vec<usize>> = Vec::new();
    let mut size = 0;
    for u in 0..n_underlyings {
        let b = bytes(u);
        if batches.is_empty() || size + b > CACHE_BUDGET {
            batches.push(Vec::new());
            size = 0;
        }
        batches.last_mut().expect("pushed above").push(u);
        size += b;
    }
    let mut out: Vec<(usize, DistanceRow)> = Vec::new();
    for batch in &batches {
        let mut in_batch = vec![false; n_underlyings];
        for &u in batch {
            in_batch[u] = true;
        }
        let caches: Vec<Option<AxisValues>> = (0..n_underlyings).map(|u| in_batch[u].then(|| AxisValues::new(ctx, u, used))).collect();
        let found: Vec<Vec<(usize, DistanceRow)>> = inputs
            .slots
            .par_chunks(ACCOUNT_CHUNK)
            .enumerate()
            .map_init(RootScratch::default, |s, (c, slots)| {
                let mut found = Vec::new();
                for (k, slot) in slots.iter().enumerate() {
                    let i = c * ACCOUNT_CHUNK + k;
                    net_positions(slot.positions(), &inputs.positions, book, ctx.market, &mut s.net);
                    group_by_underlying(book, &s.net.net, &mut s.grouped);
                    exposed_underlyings(book, inputs, slot, s.grouped.iter().map(|(u, _)| *u), &mut s.exposed);
                    for j in 0..s.exposed.len() {
                        let u = s.exposed[j] as usize;
                        if let Some(cache) = &caches[u] {
                            found.push((i, account_row(ctx, cache, inputs, u, slot, &rows[i], s)));
                        }
                    }
                }
                found
            })
            .collect();
        out.extend(found.into_iter().flatten());
    }
    if batches.len() > 1 {
        // found batch by batch: a stable sort by account keeps each account's in order
        out.par_sort_by_key(|(i, _)| *i);
    }
    out.into_iter().map(|(_, d)| d).collect()
}

/// An account's exposed underlyings, ascending, from its grouped netted positions and its
/// balances (the linked underlyings of non-zero balances).
fn exposed_underlyings(book: &Book, inputs: &Inputs, slot: &AccountSlot, held: impl Iterator<Item = u32>, out: &mut Vec<u32>) {
    out.clear();
    out.extend(held);
    for r in slot.balances() {
        let a = inputs.balances.asset[r] as usize;
        if let (Some(u), true) = (book.assets.underlying[a], inputs.balances.amount[r] != 0.0) {
            out.push(u);
        }
    }
    out.sort_unstable();
    out.dedup();
}

/// Each account's exposed underlyings, ascending.
fn exposures(book: &Book, market: &Market, inputs: &Inputs) -> Vec<Vec<u32>> {
    let ins = &book.instruments;
    inputs
        .slots
        .par_iter()
        .map_init(Scratch::default, |net, slot| {
            net_positions(slot.positions(), &inputs.positions, book, market, net);
            let mut exposed = Vec::new();
            exposed_underlyings(book, inputs, slot, net.net.iter().map(|p| ins.underlying[p.instrument as usize]), &mut exposed);
            exposed
        })
        .collect()
}

/// The held instruments of one underlying (those in some position row) valued at every axis
/// point of both sides: marks and, under the portfolio model, risk arrays. Only built when one
/// of them is an option (a linear book needs no sampling).
struct AxisValues {
    /// Instrument id → place among the held instruments of the underlying (NONE: not held).
    slot: Vec<u32>,
    held: usize,
    n_scenarios: usize,
    /// Per side (0 down, 1 up): `marks[side][k × held + slot]` at axis point `k`.
    marks: [Vec<f64>; 2],
    /// Per side: the risk array of `slot` at point `k` at `(k × held + slot) × n_scenarios`.
    arrays: [Vec<f64>; 2],
}

const NONE: u32 = u32::MAX;

impl AxisValues {
    fn new(ctx: &Context, u: usize, used: &[bool]) -> AxisValues {
        let (book, market) = (ctx.book, ctx.market);
        let ins = &book.instruments;
        let held: Vec<usize> = (0..ins.len()).filter(|id| used[*id] && ins.underlying[*id] as usize == u).collect();
        let mut slot = vec![NONE; ins.len()];
        if !held.iter().any(|id| !ins.kind[*id].is_linear() || ins.inverse[*id]) {
            return AxisValues { slot, held: 0, n_scenarios: 0, marks: [Vec::new(), Vec::new()], arrays: [Vec::new(), Vec::new()] };
        }
        for (k, id) in held.iter().enumerate() {
            slot[*id] = k as u32;
        }
        let scenarios: &[Scenario] = ctx.scenarios.as_ref().map_or(&[], |s| &s[u]);
        let side = |points: &[f64]| -> (Vec<f64>, Vec<f64>) {
            let per_point: Vec<(Vec<f64>, Vec<f64>)> = points
                .par_iter()
                .map(|m| {
                    let spot = moved_price(market.index_price[u], *m);
                    let marks: Vec<f64> = held.iter().map(|id| stressed_mark(book, market, *id, *m, spot)).collect();
                    let mut arrays = Vec::with_capacity(held.len() * scenarios.len());
                    if !scenarios.is_empty() {
                        for (id, mark) in held.iter().zip(&marks) {
                            instrument_array_at(book, market, *id, spot, *mark, moved_price(market.settlement_price[*id], *m), scenarios, &mut arrays);
                        }
                    }
                    (marks, arrays)
                })
                .collect();
            let (marks, arrays): (Vec<Vec<f64>>, Vec<Vec<f64>>) = per_point.into_iter().unzip();
            (marks.concat(), arrays.concat())
        };
        let (down_marks, down_arrays) = side(&ctx.down);
        let (up_marks, up_arrays) = side(&ctx.up);
        AxisValues { slot, held: held.len(), n_scenarios: scenarios.len(), marks: [down_marks, up_marks], arrays: [down_arrays, up_arrays] }
    }
}

/// An axis point: side (0 down, 1 up) and index into [`axis`].
type AxisPoint = Option<(usize, usize)>;

/// The exact distance row of one account on underlying `u` (the incremental evaluator), from
/// its positions netted in `s.net` and grouped by underlying in `s.grouped`.
fn account_row(ctx: &Context, cache: &AxisValues, inputs: &Inputs, u: usize, slot: &AccountSlot, row: &AccountRow, s: &mut RootScratch) -> DistanceRow {
    let (book, market) = (ctx.book, ctx.market);
    let ins = &book.instruments;
    let start = s.grouped.partition_point(|(g, _)| (*g as usize) < u);
    let end = s.grouped.partition_point(|(g, _)| *g as usize <= u);
    let positions = &s.grouped[start..end];
    // balances in asset order, as the margin row sums them
    s.linked_u.clear();
    for r in slot.balances() {
        let a = inputs.balances.asset[r] as usize;
        let amount = inputs.balances.amount[r];
        if book.assets.underlying[a] == Some(u as u32) && amount != 0.0 {
            s.linked_u.push((a, amount));
        }
    }
    s.linked_u.sort_unstable_by_key(|(a, _)| *a);
    let x = Exposure { u, positions, linked: &s.linked_u, closed_coins: &s.net.closed_inverse };
    let notional: f64 = positions
        .iter()
        .map(|(_, p)| p.quantity.abs() * ins.multiplier[p.instrument as usize] * market.mark_price[p.instrument as usize])
        .sum();
    // inverse contracts' coin P&L is 1/price: not piecewise linear, bracketed
    let closed = positions.iter().all(|(_, p)| ins.kind[p.instrument as usize].is_linear() && !ins.inverse[p.instrument as usize])
        && !s.net.closed_inverse.iter().any(|(id, _)| ins.underlying[*id as usize] as usize == u);
    let e_now = row.margin_excess();
    let level = rounding_level(row, notional);
    let roots = if e_now < 0.0 {
        (Some(0.0), Some(0.0), Method::Liquidatable)
    } else {
        let (arrays, pnl, bp) = (&mut s.arrays, &mut s.pnl, &mut s.breakpoints);
        let base = ctx.contribution(&x, 0.0, None, arrays, pnl);
        let mut e = |m: f64, at: AxisPoint| e_now + (ctx.contribution(&x, m, at.map(|(side, k)| (cache, side, k)), arrays, pnl) - base);
        let mut side = |sign: f64| {
            if closed {
                ctx.breakpoints(&x, sign, bp);
                first_crossing(e_now, bp, true, level, |m| e(m, None))
            } else {
                let (side, points) = if sign > 0.0 { (1, &ctx.up) } else { (0, &ctx.down) };
                let mut k = 0;
                first_crossing(e_now, points, false, level, |m| {
                    // the axis points in order from the cache, then the refinement's own
                    if k < points.len() && points[k] == m {
                        k += 1;
                        e(m, Some((side, k - 1)))
                    } else {
                        e(m, None)
                    }
                })
            }
        };
        let down = side(-1.0);
        let up = side(1.0);
        (down, up, if closed { Method::ClosedForm } else { Method::Bracketed })
    };
    distance_row(slot.account_id, u as u32, roots, notional, row)
}

/// Whether the book's methodology changes the margin in ways the incremental evaluator (v1's
/// standard rates and tiers, v1's scenario grid) does not follow.
pub fn needs_full_account(book: &Book, model: Model) -> bool {
    match model {
        Model::Standard => book.methodology.standard.is_some(),
        Model::Portfolio => book.methodology.portfolio.is_some(),
    }
}

/// The market with underlying `u` moved by `m`, its linked assets' prices, and (portfolio) the
/// risk arrays or scenario values of that market.
struct Moved {
    market: Market,
    asset_price: Vec<f64>,
    risk: Option<RiskArrays>,
}

impl Moved {
    fn new(book: &Book, market: &Market, model: Model, u: usize, m: f64) -> Moved {
        let mut moves = vec![0.0; book.underlyings.names.len()];
        moves[u] = m;
        let moved = stress_market(book, market, &moves);
        let risk = (model == Model::Portfolio).then(|| RiskArrays::new(book, &moved));
        Moved { market: moved, asset_price: stress_asset_prices(book, &moves), risk }
    }
}

/// The exact distance row of one account on underlying `u`, every point the whole account
/// margined in the moved market (`at`: the moved markets of the axis points, down then up).
#[allow(clippy::too_many_arguments)]
fn full_account_row(ctx: &Context, model: Model, inputs: &Inputs, u: usize, at: &[Vec<Moved>; 2], slot: &AccountSlot, row: &AccountRow, scratch: &mut AccountScratch) -> DistanceRow {
    let (book, market) = (ctx.book, ctx.market);
    let ins = &book.instruments;
    let e_now = row.margin_excess();
    net_positions(slot.positions(), &inputs.positions, book, market, &mut scratch.net);
    let notional: f64 = scratch
        .net
        .net
        .iter()
        .filter(|p| ins.underlying[p.instrument as usize] as usize == u)
        .map(|p| notional_at(book, p.instrument as usize, p.quantity, market.mark_price[p.instrument as usize], market.settlement_price[p.instrument as usize]))
        .sum();
    let level = rounding_level(row, notional);
    let excess = |moved: &Moved, scratch: &mut AccountScratch| -> f64 {
        let stress = Stress { market: &moved.market, asset_price: &moved.asset_price };
        let pricing = Pricing { book, base: market, stress: Some(&stress), risk: moved.risk.as_ref() };
        match pricing.account(slot, &inputs.positions, &inputs.balances, scratch) {
            Ok(r) => r.margin_excess(),
            Err(_) => f64::NAN, // a repeated balance: the margin row has reported it already
        }
    };
    let roots = if e_now < 0.0 {
        (Some(0.0), Some(0.0), Method::Liquidatable)
    } else {
        let side = |points: &[f64], at: &[Moved], scratch: &mut AccountScratch| {
            let mut k = 0;
            first_crossing(e_now, points, false, level, |m| {
                if k < points.len() && points[k] == m {
                    k += 1;
                    excess(&at[k - 1], scratch)
                } else {
                    excess(&Moved::new(book, market, model, u, m), scratch)
                }
            })
        };
        let down = side(&ctx.down, &at[0], scratch);
        let up = side(&ctx.up, &at[1], scratch);
        (down, up, Method::Bracketed)
    };
    distance_row(slot.account_id, u as u32, roots, notional, row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_axis_covers_price_zero_to_one_hundred_times() {
        let up = axis(1.0);
        let down = axis(-1.0);
        assert_eq!(up[NEAR_STEPS - 1], 0.1);
        assert!((up[NEAR_STEPS + MIDDLE_STEPS - 1] - 0.3).abs() < 1e-15);
        assert_eq!(*up.last().unwrap(), MAX_MOVE_UP);
        assert_eq!(*down.last().unwrap(), LAST_DOWN);
        assert!(up.windows(2).all(|w| w[1] > w[0]) && down.windows(2).all(|w| w[1] < w[0]));
        // beyond ±30%, consecutive prices at most 15% apart (down to 0.1% of the price)
        let k = NEAR_STEPS + MIDDLE_STEPS;
        assert!(up[k..].windows(2).all(|w| (1.0 + w[1]) / (1.0 + w[0]) <= 1.0 + OUTER_STEP + 1e-12));
        let n = down.len();
        assert!(down[k..n - 1].windows(2).all(|w| (1.0 + w[1]) / (1.0 + w[0]) >= 1.0 - OUTER_STEP - 1e-12));
        assert!(up.len() < 60 && down.len() < 70, "{} {}", up.len(), down.len());
    }

    #[test]
    fn illinois_finds_the_root_of_a_curve_to_the_tolerance() {
        let f = |m: f64| 0.3 - (1.0 + m).powi(3) * 0.2; // root at (1.5)^(1/3) - 1
        let root = first_crossing(f(0.0), &axis(1.0), false, 0.0, f).unwrap();
        let exact = 1.5f64.powf(1.0 / 3.0) - 1.0;
        assert!(((1.0 + root) - (1.0 + exact)).abs() <= 2e-10 * (1.0 + exact), "{root} {exact}");
    }

    #[test]
    fn the_first_crossing_is_taken_not_a_later_one() {
        // below 0 between 10% and 20% up, above again up to 60%, below beyond
        let f = |m: f64| -(m - 0.1) * (m - 0.2) * (m - 0.6);
        let root = first_crossing(f(0.0), &axis(1.0), false, 0.0, f).unwrap();
        assert!((root - 0.1).abs() <= 1e-10, "{root}");
    }

    /// ±1e-13 by the sample's index: rounding noise on an excess that is 0.
    fn noise(m: f64) -> f64 {
        if ((m * 1000.0).round() as i64) % 3 == 0 { -1e-13 } else { 1e-13 }
    }

    #[test]
    fn rounding_below_zero_is_not_a_crossing() {
        // an excess falling to 0 by 20% up and resting there, as noise: no crossing
        let level = 1e-12;
        let rests = |m: f64| if m < 0.2 { 100.0 * (0.2 - m) } else { noise(m) };
        assert_eq!(first_crossing(rests(0.0), &axis(1.0), false, level, rests), None);
        // the same, then falling from 40% up: the crossing is where it leaves 0, to rounding
        let falls = |m: f64| if m < 0.2 { 100.0 * (0.2 - m) } else if m < 0.4 { noise(m) } else { -100.0 * (m - 0.4) + noise(m) };
        let root = first_crossing(falls(0.0), &axis(1.0), false, level, falls).unwrap();
        assert!((root - 0.4).abs() <= 1e-10, "{root}");
        // without the level the first sample rounding below 0 was taken
        let noisy = first_crossing(falls(0.0), &axis(1.0), false, 0.0, falls).unwrap();
        assert!(noisy < 0.4 - 0.01, "{noisy}");
        // closed form: a line that reaches 0 and rests there, then falls
        let bp = [0.2, 0.3, 0.4, 0.5];
        let line = |m: f64| if m <= 0.2 { 100.0 * (0.2 - m) } else if m <= 0.4 { -1e-13 } else { -100.0 * (m - 0.4) - 1e-13 };
        let root = first_crossing(line(0.0), &bp, true, level, line).unwrap();
        assert!((root - 0.4).abs() <= 1e-12, "{root}");
    }

    #[test]
    fn an_excess_tending_to_zero_from_above_has_no_crossing() {
        let f = |m: f64| 1e-3 * (1.0 + m).powi(4);
        assert_eq!(first_crossing(f(0.0), &axis(-1.0), false, 1e-12, f), None);
    }
}
