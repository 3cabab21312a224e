//! Account results (methodology §6) and their Arrow form.

use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, RecordBatch, StringArray, UInt64Array};
use arrow_buffer::{Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use rayon::prelude::*;
use arrow_schema::{DataType, Field, Schema, SchemaRef};

use crate::book::Book;
use crate::error::{InputError, Result};
use crate::greeks::GreeksRow;
use crate::valuation::Collateral;

/// An account's standing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    Healthy,
    MarginCall,
    Liquidatable,
    Bankrupt,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Healthy => "healthy",
            Status::MarginCall => "margin_call",
            Status::Liquidatable => "liquidatable",
            Status::Bankrupt => "bankrupt",
        }
    }
}

/// Relative tolerance of the status rule: collateral `c` meets a requirement `r` when
/// `c >= r - 1e-9 × max(1, r)`. An account of long options and no cash sits exactly at
/// maintenance in exact arithmetic; its status must not ride on the last bits of `erfc`.
pub const STATUS_TOLERANCE: f64 = 1e-9;

/// Whether collateral `c` meets the requirement `r` (see [`STATUS_TOLERANCE`]).
#[inline]
pub fn meets(c: f64, r: f64) -> bool {
    c >= r - STATUS_TOLERANCE * r.max(1.0)
}

/// One account's valuation and margin.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AccountRow {
    pub account_id: u64,
    pub equity: f64,
    pub collateral_initial: f64,
    pub collateral_maintenance: f64,
    pub initial_margin: f64,
    pub maintenance_margin: f64,
}

impl AccountRow {
    /// §2.6: equity and collateral are the balances plus the positions' P&L and option value.
    pub fn new(account_id: u64, c: Collateral, pnl: f64, initial_margin: f64, maintenance_margin: f64) -> Self {
        AccountRow {
            account_id,
            equity: c.cash + pnl,
            collateral_initial: c.weighted_initial + pnl,
            collateral_maintenance: c.weighted_maintenance + pnl,
            initial_margin,
            maintenance_margin,
        }
    }

    /// Below maintenance or bankrupt: the accounts a liquidation engine takes over.
    pub fn needs_liquidation(&self) -> bool {
        matches!(self.status(), Status::Liquidatable | Status::Bankrupt)
    }

    pub fn free_collateral(&self) -> f64 {
        self.collateral_initial - self.initial_margin
    }

    pub fn margin_excess(&self) -> f64 {
        self.collateral_maintenance - self.maintenance_margin
    }

    /// `collateral_maintenance / MM`, `None` when MM = 0 (or so small that the ratio overflows).
    pub fn health(&self) -> Option<f64> {
        let h = self.collateral_maintenance / self.maintenance_margin;
        (self.maintenance_margin != 0.0 && h.is_finite()).then_some(h)
    }

    /// Bankrupt (equity < 0), else liquidatable (maintenance not met), else margin call
    /// (initial not met), else healthy. A requirement is met within [`meets`]'s tolerance.
    pub fn status(&self) -> Status {
        if self.equity < 0.0 {
            Status::Bankrupt
        } else if !meets(self.collateral_maintenance, self.maintenance_margin) {
            Status::Liquidatable
        } else if !meets(self.collateral_initial, self.initial_margin) {
            Status::MarginCall
        } else {
            Status::Healthy
        }
    }

    pub fn is_finite(&self) -> bool {
        [
            self.equity,
            self.collateral_initial,
            self.collateral_maintenance,
            self.initial_margin,
            self.maintenance_margin,
            self.free_collateral(),
            self.margin_excess(),
        ]
        .iter()
        .all(|v| v.is_finite())
    }
}

fn f64_field(name: &str) -> Field {
    Field::new(name, DataType::Float64, false)
}

/// The schema of `margin` results.
pub fn margin_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("account_id", DataType::UInt64, false),
        f64_field("equity"),
        f64_field("collateral_initial"),
        f64_field("collateral_maintenance"),
        f64_field("initial_margin"),
        f64_field("maintenance_margin"),
        f64_field("free_collateral"),
        f64_field("margin_excess"),
        Field::new("health", DataType::Float64, true),
        Field::new("status", DataType::Utf8, false),
    ]))
}

fn column(rows: &[AccountRow], f: impl Fn(&AccountRow) -> f64 + Sync + Send) -> ArrayRef {
    let values: Vec<f64> = rows.par_iter().with_min_len(OUTPUT_BLOCK).map(f).collect();
    Arc::new(Float64Array::from(values))
}

/// Rows per parallel block when building output columns.
pub const OUTPUT_BLOCK: usize = 1 << 14;

/// A utf8 column of statuses (at most 12 bytes a row, and calls are limited to
/// `engine::MAX_ACCOUNTS` accounts, so the offsets fit).
fn status_column(statuses: &[Status]) -> ArrayRef {
    utf8_column(statuses, |s| s.as_str()).expect("at most engine::MAX_ACCOUNTS statuses of at most 12 bytes")
}

/// A utf8 column of `text(item)` per item: each block's lengths are summed first, then every
/// block writes its offsets and bytes into its own part of the buffers, in parallel. `None` when
/// the bytes would overflow the 32-bit offsets.
fn utf8_column<'t, T: Sync>(items: &[T], text: impl Fn(&T) -> &'t str + Sync) -> Option<ArrayRef> {
    let block_bytes: Vec<usize> = items.par_chunks(OUTPUT_BLOCK).map(|b| b.iter().map(|s| text(s).len()).sum()).collect();
    let total: usize = block_bytes.iter().sum();
    if total > i32::MAX as usize {
        return None;
    }
    let mut block_start = Vec::with_capacity(block_bytes.len());
    let mut at = 0;
    for b in &block_bytes {
        block_start.push(at);
        at += b;
    }
    let mut offsets = vec![0i32; items.len() + 1];
    let mut bytes = vec![0u8; total];
    let mut byte_blocks: Vec<&mut [u8]> = Vec::with_capacity(block_bytes.len());
    let mut rest = &mut bytes[..];
    for b in &block_bytes {
        let (head, tail) = rest.split_at_mut(*b);
        byte_blocks.push(head);
        rest = tail;
    }
    items
        .par_chunks(OUTPUT_BLOCK)
        .zip(offsets[1..].par_chunks_mut(OUTPUT_BLOCK))
        .zip(byte_blocks.into_par_iter().zip(block_start.par_iter()))
        .for_each(|((items, offsets), (bytes, start))| {
            let mut at = 0;
            for (item, end) in items.iter().zip(offsets.iter_mut()) {
                let s = text(item);
                bytes[at..at + s.len()].copy_from_slice(s.as_bytes());
                at += s.len();
                *end = (start + at) as i32;
            }
        });
    Some(Arc::new(StringArray::new(OffsetBuffer::new(ScalarBuffer::from(offsets)), Buffer::from_vec(bytes), None)))
}

/// The §6 columns of `margin`, allocated once and filled in place, block by block: the engine
/// writes each account's row straight into them ([`MarginBlock::put`]), so no vector of rows is
/// held beside the output.
pub struct MarginColumns {
    account_id: Vec<u64>,
    /// equity, collateral_initial, collateral_maintenance, initial_margin, maintenance_margin,
    /// free_collateral, margin_excess
    floats: [Vec<f64>; 7],
    health: Vec<f64>,
    health_valid: Vec<bool>,
    status: Vec<Status>,
}

/// The part of [`MarginColumns`] that holds one block of rows.
pub struct MarginBlock<'a> {
    account_id: &'a mut [u64],
    floats: Vec<&'a mut [f64]>,
    health: &'a mut [f64],
    health_valid: &'a mut [bool],
    status: &'a mut [Status],
}

impl MarginBlock<'_> {
    /// Writes `r` as row `i` of the block.
    #[inline]
    pub fn put(&mut self, i: usize, r: &AccountRow) {
        let values = [
            r.equity,
            r.collateral_initial,
            r.collateral_maintenance,
            r.initial_margin,
            r.maintenance_margin,
            r.free_collateral(),
            r.margin_excess(),
        ];
        for (column, v) in self.floats.iter_mut().zip(values) {
            column[i] = v;
        }
        self.account_id[i] = r.account_id;
        if let Some(h) = r.health() {
            self.health[i] = h;
            self.health_valid[i] = true;
        }
        self.status[i] = r.status();
    }
}

impl MarginColumns {
    pub fn new(rows: usize) -> MarginColumns {
        MarginColumns {
            account_id: vec![0; rows],
            floats: std::array::from_fn(|_| vec![0.0; rows]),
            health: vec![0.0; rows],
            health_valid: vec![false; rows],
            status: vec![Status::Healthy; rows],
        }
    }

    /// One [`MarginBlock`] per `OUTPUT_BLOCK` rows, in order.
    pub fn blocks(&mut self) -> Vec<MarginBlock<'_>> {
        let mut floats: Vec<_> = self.floats.iter_mut().map(|c| c.chunks_mut(OUTPUT_BLOCK)).collect();
        let mut health = self.health.chunks_mut(OUTPUT_BLOCK);
        let mut valid = self.health_valid.chunks_mut(OUTPUT_BLOCK);
        let mut status = self.status.chunks_mut(OUTPUT_BLOCK);
        self.account_id
            .chunks_mut(OUTPUT_BLOCK)
            .map(|account_id| MarginBlock {
                account_id,
                floats: floats.iter_mut().map(|c| c.next().expect("same length")).collect(),
                health: health.next().expect("same length"),
                health_valid: valid.next().expect("same length"),
                status: status.next().expect("same length"),
            })
            .collect()
    }

    pub fn into_batch(self) -> RecordBatch {
        let nulls = self.health_valid.contains(&false).then(|| NullBuffer::from(self.health_valid));
        let status = status_column(&self.status);
        let mut columns: Vec<ArrayRef> = vec![Arc::new(UInt64Array::from(self.account_id))];
        columns.extend(self.floats.into_iter().map(|c| Arc::new(Float64Array::from(c)) as ArrayRef));
        columns.push(Arc::new(Float64Array::new(ScalarBuffer::from(self.health), nulls)));
        columns.push(status);
        RecordBatch::try_new(margin_schema(), columns).expect("columns match the schema by construction")
    }
}

/// `margin` results as one record batch (§6 columns), from rows already computed.
pub fn margin_batch(rows: &[AccountRow]) -> RecordBatch {
    let mut columns = MarginColumns::new(rows.len());
    columns.blocks().into_par_iter().zip(rows.par_chunks(OUTPUT_BLOCK)).for_each(|(mut block, rows)| {
        for (i, r) in rows.iter().enumerate() {
            block.put(i, r);
        }
    });
    columns.into_batch()
}

/// The schema of `greeks` results.
pub fn greeks_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("account_id", DataType::UInt64, false),
        Field::new("underlying", DataType::Utf8, false),
        f64_field("delta"),
        f64_field("delta_usd"),
        f64_field("gamma"),
        f64_field("gamma_usd"),
        f64_field("vega"),
        f64_field("theta"),
        f64_field("long_notional"),
        f64_field("short_notional"),
    ]))
}

/// `greeks` results as one record batch (§7 columns).
pub fn greeks_batch(book: &Book, rows: &[GreeksRow]) -> Result<RecordBatch> {
    let column = |g: fn(&GreeksRow) -> f64| -> ArrayRef {
        Arc::new(Float64Array::from(rows.par_iter().with_min_len(1 << 14).map(g).collect::<Vec<f64>>()))
    };
    let names = &book.underlyings.names;
    let underlying = utf8_column(rows, |r| names[r.underlying as usize].as_str()).ok_or_else(|| {
        InputError::new("positions", "account_id", "too many account × underlying rows for one greeks table (utf8 offsets overflow): stream in batches")
    })?;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from(rows.par_iter().with_min_len(1 << 14).map(|r| r.account_id).collect::<Vec<u64>>())),
        underlying,
        column(|r| r.delta),
        column(|r| r.delta_usd),
        column(|r| r.gamma),
        column(|r| r.gamma_usd),
        column(|r| r.vega),
        column(|r| r.theta),
        column(|r| r.long_notional),
        column(|r| r.short_notional),
    ];
    Ok(RecordBatch::try_new(greeks_schema(), columns).expect("columns match the schema by construction"))
}

/// `liquidation_scan` results: the margin columns plus `shortfall` in scan order, and with
/// distances, `nearest_move` and `nearest_underlying` per account.
pub fn scan_batch(book: &Book, rows: &[AccountRow], order: &[usize], nearest: Option<&[Option<(f64, Option<u32>)>]>) -> RecordBatch {
    let sorted: Vec<AccountRow> = order.iter().map(|i| rows[*i]).collect();
    let base = margin_batch(&sorted);
    let mut fields: Vec<Field> = base.schema().fields().iter().map(|f| f.as_ref().clone()).collect();
    let mut columns: Vec<ArrayRef> = base.columns().to_vec();
    fields.push(f64_field("shortfall"));
    columns.push(column(&sorted, crate::liquidation::shortfall));
    if let Some(nearest) = nearest {
        let names = &book.underlyings.names;
        fields.push(Field::new("nearest_move", DataType::Float64, true));
        fields.push(Field::new("nearest_underlying", DataType::Utf8, true));
        columns.push(Arc::new(order.iter().map(|i| nearest[*i].map(|n| n.0)).collect::<Float64Array>()));
        columns.push(Arc::new(
            order.iter().map(|i| nearest[*i].and_then(|n| n.1).map(|u| names[u as usize].as_str())).collect::<StringArray>(),
        ));
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).expect("columns match the schema by construction")
}

/// `liquidation_distance` results (§8).
pub fn distance_batch(book: &Book, spot: &[f64], rows: &[crate::liquidation::DistanceRow]) -> RecordBatch {
    let names = &book.underlyings.names;
    // null, not NaN, where the underlying has no index price (known only through linked collateral)
    let price = |m: Option<f64>, u: u32| m.map(|m| spot[u as usize] * (1.0 + m)).filter(|p| p.is_finite());
    let schema = Arc::new(Schema::new(vec![
        Field::new("account_id", DataType::UInt64, false),
        Field::new("underlying", DataType::Utf8, false),
        Field::new("move_down", DataType::Float64, true),
        Field::new("move_up", DataType::Float64, true),
        Field::new("liquidation_price_down", DataType::Float64, true),
        Field::new("liquidation_price_up", DataType::Float64, true),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from(rows.iter().map(|r| r.account_id).collect::<Vec<u64>>())),
        Arc::new(rows.iter().map(|r| Some(names[r.underlying as usize].as_str())).collect::<StringArray>()),
        Arc::new(rows.iter().map(|r| r.move_down).collect::<Float64Array>()),
        Arc::new(rows.iter().map(|r| r.move_up).collect::<Float64Array>()),
        Arc::new(rows.iter().map(|r| price(r.move_down, r.underlying)).collect::<Float64Array>()),
        Arc::new(rows.iter().map(|r| price(r.move_up, r.underlying)).collect::<Float64Array>()),
    ];
    RecordBatch::try_new(schema, columns).expect("columns match the schema by construction")
}

/// Exact liquidation prices: per account × underlying the index price now, the liquidation
/// prices and moves on each side, and how they were found.
pub fn prices_batch(book: &Book, spot: &[f64], rows: &[crate::liquidation::DistanceRow]) -> RecordBatch {
    let names = &book.underlyings.names;
    let index = |u: u32| Some(spot[u as usize]).filter(|p| p.is_finite());
    let price = |m: Option<f64>, u: u32| m.map(|m| spot[u as usize] * (1.0 + m)).filter(|p| p.is_finite());
    let schema = Arc::new(Schema::new(vec![
        Field::new("account_id", DataType::UInt64, false),
        Field::new("underlying", DataType::Utf8, false),
        Field::new("index_price", DataType::Float64, true),
        Field::new("liquidation_price_down", DataType::Float64, true),
        Field::new("liquidation_price_up", DataType::Float64, true),
        Field::new("move_down", DataType::Float64, true),
        Field::new("move_up", DataType::Float64, true),
        Field::new("method", DataType::Utf8, false),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from(rows.iter().map(|r| r.account_id).collect::<Vec<u64>>())),
        Arc::new(rows.iter().map(|r| Some(names[r.underlying as usize].as_str())).collect::<StringArray>()),
        Arc::new(rows.iter().map(|r| index(r.underlying)).collect::<Float64Array>()),
        Arc::new(rows.iter().map(|r| price(r.move_down, r.underlying)).collect::<Float64Array>()),
        Arc::new(rows.iter().map(|r| price(r.move_up, r.underlying)).collect::<Float64Array>()),
        Arc::new(rows.iter().map(|r| r.move_down).collect::<Float64Array>()),
        Arc::new(rows.iter().map(|r| r.move_up).collect::<Float64Array>()),
        Arc::new(rows.iter().map(|r| Some(r.method.as_str())).collect::<StringArray>()),
    ];
    RecordBatch::try_new(schema, columns).expect("columns match the schema by construction")
}

/// The liquidation map: per underlying and grid level, the accounts crossing into liquidation
/// there, with cumulative sums outward from the current price on each side.
pub fn map_batch(book: &Book, spot: &[f64], rows: &[crate::liquidation::MapRow]) -> RecordBatch {
    use crate::liquidation::grid_move;
    let names = &book.underlyings.names;
    // cumulative from level 0 outward, per underlying and side
    let mut cum_accounts = vec![0u64; rows.len()];
    let mut cum_notional = vec![0.0; rows.len()];
    // rows are laid out per underlying, levels ascending: walk each block from the centre
    let width = 2 * crate::liquidation::GRID_LEVELS + 1;
    for block in 0..rows.len() / width.max(1) {
        let centre = block * width + crate::liquidation::GRID_LEVELS;
        cum_accounts[centre] = rows[centre].accounts;
        cum_notional[centre] = rows[centre].notional;
        for k in 1..=crate::liquidation::GRID_LEVELS {
            for idx in [centre + k, centre - k] {
                let inner = if idx > centre { idx - 1 } else { idx + 1 };
                cum_accounts[idx] = cum_accounts[inner] + rows[idx].accounts;
                cum_notional[idx] = cum_notional[inner] + rows[idx].notional;
            }
        }
    }
    let schema = Arc::new(Schema::new(vec![
        Field::new("underlying", DataType::Utf8, false),
        Field::new("level", DataType::Int32, false),
        f64_field("move"),
        Field::new("price", DataType::Float64, true),
        Field::new("accounts", DataType::UInt64, false),
        f64_field("notional"),
        f64_field("collateral"),
        Field::new("cumulative_accounts", DataType::UInt64, false),
        f64_field("cumulative_notional"),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(rows.iter().map(|r| Some(names[r.underlying as usize].as_str())).collect::<StringArray>()),
        Arc::new(arrow_array::Int32Array::from(rows.iter().map(|r| r.level).collect::<Vec<i32>>())),
        Arc::new(Float64Array::from(rows.iter().map(|r| grid_move(r.level)).collect::<Vec<f64>>())),
        Arc::new(
            rows.iter()
                .map(|r| Some(spot[r.underlying as usize] * (1.0 + grid_move(r.level))).filter(|p| p.is_finite()))
                .collect::<Float64Array>(),
        ),
        Arc::new(UInt64Array::from(rows.iter().map(|r| r.accounts).collect::<Vec<u64>>())),
        Arc::new(Float64Array::from(rows.iter().map(|r| r.notional).collect::<Vec<f64>>())),
        Arc::new(Float64Array::from(rows.iter().map(|r| r.collateral).collect::<Vec<f64>>())),
        Arc::new(UInt64Array::from(cum_accounts)),
        Arc::new(Float64Array::from(cum_notional)),
    ];
    RecordBatch::try_new(schema, columns).expect("columns match the schema by construction")
}

/// Liquidation plan tables: the closes, each account's outcome, per-underlying totals and the
/// ADL queues.
pub fn plan_batches(
    book: &Book,
    liquidation: &crate::plan::Liquidation,
    params: &crate::plan::PlanParams,
    adl: &[crate::plan::AdlEntry],
) -> [RecordBatch; 4] {
    let names = &book.underlyings.names;
    let ins = &book.instruments;
    let c = &liquidation.closes;
    let f = |v: Vec<f64>| -> ArrayRef { Arc::new(Float64Array::from(v)) };
    let utf8 = |v: Vec<&str>| -> ArrayRef { Arc::new(v.into_iter().map(Some).collect::<StringArray>()) };
    let closes = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("account_id", DataType::UInt64, false),
            Field::new("step", DataType::UInt32, false),
            Field::new("instrument", DataType::Utf8, false),
            Field::new("underlying", DataType::Utf8, false),
            f64_field("quantity_before"),
            f64_field("quantity_closed"),
            f64_field("fraction"),
            f64_field("mark_price"),
            f64_field("notional"),
            f64_field("fee"),
            f64_field("liquidator_fee"),
            f64_field("insurance_fee"),
            f64_field("value_before"),
        ])),
        vec![
            Arc::new(UInt64Array::from(c.iter().map(|x| x.account_id).collect::<Vec<u64>>())),
            Arc::new(arrow_array::UInt32Array::from(c.iter().map(|x| x.step).collect::<Vec<u32>>())),
            utf8(c.iter().map(|x| ins.labels[x.instrument as usize].as_str()).collect()),
            utf8(c.iter().map(|x| names[ins.underlying[x.instrument as usize] as usize].as_str()).collect()),
            f(c.iter().map(|x| x.quantity_before).collect()),
            f(c.iter().map(|x| x.quantity_closed).collect()),
            f(c.iter().map(|x| x.fraction).collect()),
            f(c.iter().map(|x| x.mark_price).collect()),
            f(c.iter().map(|x| x.notional).collect()),
            f(c.iter().map(|x| x.fee).collect()),
            f(c.iter().map(|x| x.fee * params.liquidator_share).collect()),
            f(c.iter().map(|x| x.fee - x.fee * params.liquidator_share).collect()),
            f(c.iter().map(|x| x.value_before).collect()),
        ],
    )
    .expect("columns match the schema by construction");
    let o = &liquidation.outcomes;
    let target = 1.0 + params.buffer;
    let status_after = |x: &crate::plan::Outcome| {
        if x.equity_after < 0.0 {
            "bankrupt"
        } else if x.collateral_maintenance_after >= target * x.maintenance_margin_after {
            "restored"
        } else {
            "collateral_shortfall"
        }
    };
    let accounts = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("account_id", DataType::UInt64, false),
            Field::new("status_before", DataType::Utf8, false),
            Field::new("status_after", DataType::Utf8, false),
            f64_field("equity_before"),
            f64_field("equity_after"),
            f64_field("collateral_maintenance_before"),
            f64_field("collateral_maintenance_after"),
            f64_field("maintenance_margin_before"),
            f64_field("maintenance_margin_after"),
            f64_field("fees"),
            f64_field("closed_notional"),
            f64_field("deficit"),
            f64_field("covered_by_insurance"),
            f64_field("bad_debt"),
        ])),
        vec![
            Arc::new(UInt64Array::from(o.iter().map(|x| x.before.account_id).collect::<Vec<u64>>())),
            utf8(o.iter().map(|x| x.before.status().as_str()).collect()),
            utf8(o.iter().map(status_after).collect()),
            f(o.iter().map(|x| x.before.equity).collect()),
            f(o.iter().map(|x| x.equity_after).collect()),
            f(o.iter().map(|x| x.before.collateral_maintenance).collect()),
            f(o.iter().map(|x| x.collateral_maintenance_after).collect()),
            f(o.iter().map(|x| x.before.maintenance_margin).collect()),
            f(o.iter().map(|x| x.maintenance_margin_after).collect()),
            f(o.iter().map(|x| x.fees).collect()),
            f(o.iter().map(|x| x.closed_notional).collect()),
            f(o.iter().map(|x| x.deficit).collect()),
            f(o.iter().map(|x| x.covered_by_insurance).collect()),
            f(o.iter().map(|x| x.bad_debt).collect()),
        ],
    )
    .expect("columns match the schema by construction");
    let underlyings = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("underlying", DataType::Utf8, false),
            f64_field("closed_notional"),
            f64_field("bad_debt"),
        ])),
        vec![
            utf8(names.iter().map(|n| n.as_str()).collect()),
            f(liquidation.closed_notional_by_underlying.clone()),
            f(liquidation.bad_debt_by_underlying.clone()),
        ],
    )
    .expect("columns match the schema by construction");
    let adl_batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("underlying", DataType::Utf8, false),
            Field::new("rank", DataType::UInt32, false),
            Field::new("account_id", DataType::UInt64, false),
            f64_field("delta"),
            f64_field("profit_ratio"),
            f64_field("leverage"),
            f64_field("score"),
        ])),
        vec![
            utf8(adl.iter().map(|x| names[x.underlying as usize].as_str()).collect()),
            Arc::new(arrow_array::UInt32Array::from(adl.iter().map(|x| x.rank).collect::<Vec<u32>>())),
            Arc::new(UInt64Array::from(adl.iter().map(|x| x.account_id).collect::<Vec<u64>>())),
            f(adl.iter().map(|x| x.delta).collect()),
            f(adl.iter().map(|x| x.profit_ratio).collect()),
            f(adl.iter().map(|x| x.leverage).collect()),
            f(adl.iter().map(|x| x.score).collect()),
        ],
    )
    .expect("columns match the schema by construction");
    [closes, accounts, underlyings, adl_batch]
}

/// `optimal_hedge` results.
pub fn hedge_batch(book: &Book, rows: &[crate::hedge::HedgeRow]) -> RecordBatch {
    let names = &book.underlyings.names;
    let labels = &book.instruments.labels;
    let f = |v: Vec<f64>| -> ArrayRef { Arc::new(Float64Array::from(v)) };
    let schema = Arc::new(Schema::new(vec![
        Field::new("account_id", DataType::UInt64, false),
        Field::new("underlying", DataType::Utf8, false),
        Field::new("hedge_instrument", DataType::Utf8, false),
        f64_field("quantity"),
        f64_field("margin_before"),
        f64_field("margin_after"),
        f64_field("delta_neutral_quantity"),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from(rows.iter().map(|r| r.account_id).collect::<Vec<u64>>())),
        Arc::new(rows.iter().map(|r| Some(names[r.underlying as usize].as_str())).collect::<StringArray>()),
        Arc::new(rows.iter().map(|r| Some(labels[r.hedge_instrument as usize].as_str())).collect::<StringArray>()),
        f(rows.iter().map(|r| r.quantity).collect()),
        f(rows.iter().map(|r| r.margin_before).collect()),
        f(rows.iter().map(|r| r.margin_after).collect()),
        f(rows.iter().map(|r| r.delta_neutral_quantity).collect()),
    ];
    RecordBatch::try_new(schema, columns).expect("columns match the schema by construction")
}

/// The long table of [`crate::engine::scenario_losses`]: account_id, underlying (null: coins
/// linked to no traded underlying), scenario (row of the table), spot_move, vol_shock, weight,
/// group (of the row, from the underlying's methodology) and pnl.
pub fn scenario_losses_batch(book: &Book, rows: &[crate::engine::ScenarioLoss]) -> RecordBatch {
    use arrow_array::UInt32Array;
    let scenarios = book.methodology.portfolio.as_ref();
    let row_of = |r: &crate::engine::ScenarioLoss| {
        let m = match (scenarios, r.underlying) {
            (Some(s), Some(u)) => Some(s.for_underlying(u as usize)),
            (Some(s), None) => Some(&s.default),
            (None, _) => None,
        };
        m.and_then(|m| m.scenarios.get(r.scenario as usize))
    };
    let kind = |k: crate::methodology::VolShockKind| match k {
        crate::methodology::VolShockKind::None => "none",
        crate::methodology::VolShockKind::Up => "up",
        crate::methodology::VolShockKind::Down => "down",
        crate::methodology::VolShockKind::SkewLinear => "skew_linear",
        crate::methodology::VolShockKind::SkewAbs => "skew_abs",
    };
    let schema = Schema::new(vec![
        Field::new("account_id", DataType::UInt64, false),
        Field::new("underlying", DataType::Utf8, true),
        Field::new("scenario", DataType::UInt32, false),
        Field::new("spot_move", DataType::Float64, false),
        Field::new("vol_shock", DataType::Utf8, false),
        Field::new("weight", DataType::Float64, false),
        Field::new("group", DataType::Utf8, false),
        Field::new("pnl", DataType::Float64, false),
    ]);
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.account_id))),
        Arc::new(StringArray::from_iter(rows.iter().map(|r| r.underlying.map(|u| book.underlyings.names[u as usize].as_str())))),
        Arc::new(UInt32Array::from_iter_values(rows.iter().map(|r| r.scenario))),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| row_of(r).map_or(f64::NAN, |s| s.spot_move)))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| row_of(r).map_or("none", |s| kind(s.vol_shock))))),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| row_of(r).map_or(f64::NAN, |s| s.weight)))),
        Arc::new(StringArray::from_iter_values(rows.iter().map(|r| row_of(r).map_or("", |s| s.group.as_str())))),
        Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.pnl))),
    ];
    RecordBatch::try_new(Arc::new(schema), columns).expect("columns match the schema")
}

/// [`crate::engine::scenario_risk_arrays`] as a table: instrument, underlying, scenario, spot_move,
/// vol_shock, weight, group, pnl (per contract, multiplier included).
pub fn scenario_risk_arrays_batch(book: &Book, rows: &[(u32, u32, f64)]) -> RecordBatch {
    let losses: Vec<crate::engine::ScenarioLoss> = rows
        .iter()
        .map(|&(id, scenario, pnl)| crate::engine::ScenarioLoss {
            account_id: 0,
            underlying: Some(book.instruments.underlying[id as usize]),
            scenario,
            pnl,
        })
        .collect();
    let batch = scenario_losses_batch(book, &losses);
    let labels = StringArray::from_iter_values(rows.iter().map(|&(id, _, _)| book.instruments.labels[id as usize].as_str()));
    let mut fields: Vec<Field> = vec![Field::new("instrument", DataType::Utf8, false)];
    let mut columns: Vec<ArrayRef> = vec![Arc::new(labels)];
    for (f, c) in batch.schema().fields().iter().zip(batch.columns()).skip(1) {
        fields.push(f.as_ref().clone());
        columns.push(c.clone());
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).expect("columns match the schema")
}

/// [`crate::paths::stressed_paths`]'s per-scenario totals: `scenario` (path × days + day),
/// `margin_call`, `liquidatable` (bankrupt included), `bankrupt`, `shortfall`, `call_amount`.
pub fn scenario_totals_batch(t: &crate::paths::ScenarioTotals) -> RecordBatch {
    let n = t.shortfall.len() as u64;
    let schema = Arc::new(Schema::new(vec![
        Field::new("scenario", DataType::UInt64, false),
        Field::new("margin_call", DataType::UInt64, false),
        Field::new("liquidatable", DataType::UInt64, false),
        Field::new("bankrupt", DataType::UInt64, false),
        f64_field("shortfall"),
        f64_field("call_amount"),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from_iter_values(0..n)),
        Arc::new(UInt64Array::from(t.margin_call.clone())),
        Arc::new(UInt64Array::from(t.liquidatable.clone())),
        Arc::new(UInt64Array::from(t.bankrupt.clone())),
        Arc::new(Float64Array::from(t.shortfall.clone())),
        Arc::new(Float64Array::from(t.call_amount.clone())),
    ];
    RecordBatch::try_new(schema, columns).expect("columns match the schema by construction")
}

/// [`crate::paths::stressed_paths`]'s per-account results, in account order: `account_id`,
/// `liquidatable_last`, `liquidatable_any` (paths), `shortfall` (summed over the scenarios).
pub fn account_totals_batch(t: &crate::paths::AccountTotals) -> RecordBatch {
    use arrow_array::UInt32Array;
    let schema = Arc::new(Schema::new(vec![
        Field::new("account_id", DataType::UInt64, false),
        Field::new("liquidatable_last", DataType::UInt32, false),
        Field::new("liquidatable_any", DataType::UInt32, false),
        f64_field("shortfall"),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from(t.account_id.clone())),
        Arc::new(UInt32Array::from(t.liquidatable_last.clone())),
        Arc::new(UInt32Array::from(t.liquidatable_any.clone())),
        Arc::new(Float64Array::from(t.shortfall.clone())),
    ];
    RecordBatch::try_new(schema, columns).expect("columns match the schema by construction")
}
