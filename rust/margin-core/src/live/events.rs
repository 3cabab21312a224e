//! Events as the live book receives them: read from Arrow tables and checked row by row (types,
//! keys, finite numbers, price ranges). Checks against the state (unknown accounts and orders,
//! overdrafts, instruments without market data) are made when the batch is staged
//! (`live::LiveBook`). A batch with any bad row is rejected whole.

use rustc_hash::FxHashSet;

use crate::book::Book;
use crate::error::{InputError, Offenders, Result};
use crate::table::{Domain, Key, Table};

/// A trade of `quantity` contracts at `price`, paying `fee` (USD, negative = a rebate).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fill {
    pub account_id: u64,
    pub instrument: u32,
    pub quantity: f64,
    pub price: f64,
    pub fee: f64,
}

/// `amount` units of `asset` into (`> 0`) or out of (`< 0`) an account.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transfer {
    pub account_id: u64,
    pub asset: u32,
    pub amount: f64,
}

/// An order placed to rest on the book.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Order {
    pub order_id: u64,
    pub account_id: u64,
    pub instrument: u32,
    pub quantity: f64,
    pub price: f64,
}

/// A partial market update: new index prices, new marks (and implied vols), a new valuation time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MarketUpdate {
    /// (underlying, index price): every row, the book's underlyings or not (as `me.Market`
    /// keeps them: a row named like the quote asset is its peg)
    pub index_prices: Vec<(String, f64)>,
    /// (instrument key, mark price, implied vol; NaN = none given, keep the row's vol)
    pub marks: Vec<(Key, f64, f64)>,
    pub valuation_ns: Option<i64>,
}

/// One applied call: the unit of atomicity and of the journal.
#[derive(Debug, Clone, PartialEq)]
pub enum Batch {
    Fills(Vec<Fill>),
    Transfers(Vec<Transfer>),
    PlaceOrders(Vec<Order>),
    CancelOrders(Vec<u64>),
    Market(MarketUpdate),
}

impl Batch {
    /// Events (rows) in the batch.
    pub fn len(&self) -> usize {
        match self {
            Batch::Fills(f) => f.len(),
            Batch::Transfers(t) => t.len(),
            Batch::PlaceOrders(o) => o.len(),
            Batch::CancelOrders(c) => c.len(),
            Batch::Market(m) => m.index_prices.len() + m.marks.len() + usize::from(m.valuation_ns.is_some()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn f64s_or(t: &Table, name: &str, domain: Domain, default: f64) -> Result<Vec<f64>> {
    Ok(match t.optional_column(name) {
        Some(c) => c.f64s(domain)?.into_owned(),
        None => vec![default; t.num_rows()],
    })
}

/// `fills`: `account_id`, `instrument`, `quantity` (finite), `price` (finite, >= 0), optional `fee` (finite).
pub fn read_fills(t: &Table, book: &Book) -> Result<Vec<Fill>> {
    t.check_unique_column_names()?;
    let ids = t.column("account_id")?.account_ids()?;
    let instrument = t.column("instrument")?.map_keys(&book.instruments.index, "instrument")?;
    let quantity = t.column("quantity")?.f64s(Domain::Finite)?;
    let price = t.column("price")?.f64s(Domain::NonNegative)?;
    let fee = f64s_or(t, "fee", Domain::Finite, 0.0)?;
    Ok((0..ids.len())
        .map(|r| Fill { account_id: ids[r], instrument: instrument[r], quantity: quantity[r], price: price[r], fee: fee[r] })
        .collect())
}

/// `transfers`: `account_id`, `asset`, `amount` (finite; negative = out of the account).
pub fn read_transfers(t: &Table, book: &Book) -> Result<Vec<Transfer>> {
    t.check_unique_column_names()?;
    let ids = t.column("account_id")?.account_ids()?;
    let asset = t.column("asset")?.map_keys(&book.assets.index, "asset")?;
    let amount = t.column("amount")?.f64s(Domain::Finite)?;
    Ok((0..ids.len()).map(|r| Transfer { account_id: ids[r], asset: asset[r], amount: amount[r] }).collect())
}

fn unique_order_ids(table: &str, ids: &[u64]) -> Result<()> {
    let mut seen = FxHashSet::default();
    let mut dup = Offenders::default();
    for (r, id) in ids.iter().enumerate() {
        if !seen.insert(*id) {
            dup.push(|| format!("row {r} = {id}"));
        }
    }
    dup.into_result(table, "order_id", "an order id appears more than once in the batch")
}

/// `orders`: `order_id` (integer >= 0, unique), `account_id`, `instrument`, `quantity` (finite,
/// non-zero, signed), `price` (finite, > 0: a limit price, margined against the mark).
pub fn read_orders(t: &Table, book: &Book) -> Result<Vec<Order>> {
    t.check_unique_column_names()?;
    let order_id = t.column("order_id")?.account_ids()?;
    unique_order_ids(t.name, &order_id)?;
    let ids = t.column("account_id")?.account_ids()?;
    let instrument = t.column("instrument")?.map_keys(&book.instruments.index, "instrument")?;
    let quantity = crate::rows::order_quantities(t)?;
    let price = t.column("price")?.f64s(Domain::Price)?;
    Ok((0..ids.len())
        .map(|r| Order { order_id: order_id[r], account_id: ids[r], instrument: instrument[r], quantity: quantity[r], price: price[r] })
        .collect())
}

/// `order_ids`: `order_id` (integer >= 0, unique).
pub fn read_cancels(t: &Table) -> Result<Vec<u64>> {
    t.check_unique_column_names()?;
    let ids = t.column("order_id")?.account_ids()?.into_owned();
    unique_order_ids(t.name, &ids)?;
    Ok(ids)
}

/// A partial market update from `index_prices` (`underlying`, `index_price` > 0) and `marks`
/// (`instrument`, `mark_price` >= 0, optional `implied_vol` > 0 or null = unchanged). As for
/// `me.Market`, rows of underlyings and instruments the book does not know are kept (and do not
/// move its accounts), and a key may appear once per table.
pub fn read_market(index_prices: Option<&Table>, marks: Option<&Table>, valuation_ns: Option<i64>, book: &Book) -> Result<MarketUpdate> {
    let mut update = MarketUpdate { valuation_ns, ..MarketUpdate::default() };
    if let Some(t) = index_prices {
        t.check_unique_column_names()?;
        let c = t.column("underlying")?;
        c.check_no_nulls()?;
        let names: Vec<String> = c.strings_nullable()?.into_iter().map(|s| s.unwrap_or_default()).collect();
        let price = t.with_labels(&names).column("index_price")?.f64s(Domain::Price)?;
        let mut seen = FxHashSet::default();
        let mut dup = Offenders::default();
        for (name, p) in names.iter().zip(price.iter()) {
            if !seen.insert(name.as_str()) {
                dup.push(|| format!("'{name}'"));
            }
            update.index_prices.push((name.clone(), *p));
        }
        dup.into_result(t.name, "underlying", "an underlying appears more than once")?;
    }
    if let Some(t) = marks {
        t.check_unique_column_names()?;
        let keys = t.column("instrument")?.keys()?;
        if let Some(first) = keys.first() {
            if !book.instruments.is_empty() && matches!(first, Key::Int(_)) != book.instruments.index.is_int() {
                return Err(InputError::new(t.name, "instrument", "wrong key type: the book's instruments have keys of the other type"));
            }
        }
        let labels: Vec<String> = keys
            .iter()
            .map(|k| match k {
                Key::Str(s) => s.clone(),
                Key::Int(i) => i.to_string(),
            })
            .collect();
        let m = t.with_labels(&labels);
        let mark = m.column("mark_price")?.f64s(Domain::NonNegative)?;
        let vol = match m.optional_column("implied_vol") {
            Some(c) => c.f64s_nullable(Domain::Positive)?,
            None => vec![None; keys.len()],
        };
        let mut seen = FxHashSet::default();
        let mut dup = Offenders::default();
        for (r, key) in keys.iter().enumerate() {
            if !seen.insert(key) {
                dup.push(|| format!("'{}'", labels[r]));
            }
            update.marks.push((key.clone(), mark[r], vol[r].unwrap_or(f64::NAN)));
        }
        dup.into_result(t.name, "instrument", "an instrument appears more than once")?;
    }
    Ok(update)
}
