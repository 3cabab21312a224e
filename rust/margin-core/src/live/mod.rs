//! A live risk book (methodology v2 §11): the state of every account kept in memory, changed by
//! batches of events, each batch re-margining only the accounts it reaches.
//!
//! - [`state`]: accounts (position rows, balances, resting orders) and their last margin rows;
//! - [`index`]: accounts per instrument and per underlying, to find who a market move reaches;
//! - [`events`]: fills, transfers, orders and market updates read from Arrow tables;
//! - [`journal`]: the append-only journal, snapshots and recovery.
//!
//! A batch is applied in three steps: *staged* (every row checked against the state; the
//! accounts it changes copied and changed, or the market moved, and those accounts margined in
//! parallel, all without touching the state), *journaled* (appended and synced), *committed*
//! (moved into the state). A batch with any bad row fails in the first step: nothing of it is
//! applied or journaled. Every margin row comes from [`state::margin_account`], the engine's
//! own per-account path, so [`LiveBook::margin`] is bit-identical to `me.margin` on the tables
//! rebuilt from the same events (docs/live.md).

pub mod events;
pub mod index;
pub mod journal;
pub mod state;

use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use rayon::prelude::*;
use rustc_hash::FxHashMap;

use crate::book::{Book, Kind};
use crate::engine::{Inputs, Model, Pricing};
use crate::error::{InputError, Offenders, Result};
use crate::market::{Market, MarketTables};
use crate::portfolio::{instrument_array_at, RiskArrays};
use crate::results::{margin_batch, AccountRow, Status};
use crate::table::{Key, Table};
use crate::whatif::{self, Row, WhatIf};

use events::{Batch, Fill, MarketUpdate, Order, Transfer};
use journal::Journal;
use state::{balance_bound, margin_account, Account, PositionRow, RestingOrder, Scratch, State};

/// The live book's options.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Config {
    pub model: Model,
    /// `false`: a transfer out that would leave the asset's balance below 0 is rejected.
    pub allow_negative_balances: bool,
    /// The asset option premiums and fees settle in (`None`: the book's quote asset).
    pub premium_asset: Option<u32>,
}

/// An error of the live book: bad input (nothing applied), or the journal could not be written.
#[derive(Debug, Clone, PartialEq)]
pub enum LiveError {
    Input(InputError),
    Io(String),
}

impl From<InputError> for LiveError {
    fn from(e: InputError) -> Self {
        LiveError::Input(e)
    }
}

impl std::fmt::Display for LiveError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LiveError::Input(e) => e.fmt(f),
            LiveError::Io(e) => write!(f, "live book journal: {e}"),
        }
    }
}

/// An account whose status changed (`before` is `None` for an account the batch created).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Change {
    pub account_id: u64,
    pub before: Option<Status>,
    pub after: AccountRow,
}

/// What a batch did: the status changes (by account id), how many accounts were re-margined,
/// how many events the batch held, and its sequence number in the journal.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    pub changes: Vec<Change>,
    pub remargined: usize,
    pub events: usize,
    pub seq: u64,
}

/// The market as `me.Market` holds it, the parsed tables ([`MarketTables`]: every row of
/// `index_prices` and `marks` with all their columns, the `expiry_feeds`), changed in place by
/// updates; the resolved [`Market`] is always made from it by `me.Market`'s own path
/// ([`Market::resolve`]), so whatever the engine derives from the market (confidences, expiry
/// feeds, the quote asset's peg) stays consistent with it.
#[derive(Debug, Clone)]
pub struct MarketState {
    pub tables: MarketTables,
    /// The `expiry_feeds` table as given (column names, batches): kept whole, so that snapshots
    /// and `market()` hand it back bit for bit (the parsed rows keep `forward − fixed`).
    pub feeds: Option<(Vec<String>, Vec<RecordBatch>)>,
    index_row: FxHashMap<String, usize>,
    mark_row: FxHashMap<Key, usize>,
}

impl MarketState {
    pub fn new(tables: MarketTables, feeds: Option<(Vec<String>, Vec<RecordBatch>)>) -> MarketState {
        let index_row = tables.underlyings.iter().enumerate().map(|(r, u)| (u.clone(), r)).collect();
        let mark_row = tables.instruments.iter().enumerate().map(|(r, k)| (k.clone(), r)).collect();
        MarketState { tables, feeds, index_row, mark_row }
    }

    /// The state of the tables [`MarketState::tables`] exports (a snapshot's market).
    pub fn from_batches(index: &RecordBatch, marks: &RecordBatch, valuation_ns: i64, feeds: Option<(Vec<String>, Vec<RecordBatch>)>) -> Result<MarketState> {
        let names = |b: &RecordBatch| b.schema().fields().iter().map(|f| f.name().clone()).collect::<Vec<String>>();
        let (index_names, mark_names) = (names(index), names(marks));
        let (index, marks) = ([index.clone()], [marks.clone()]);
        let mut tables = MarketTables::new(&Table::new("index_prices", &index_names, &index), &Table::new("marks", &mark_names, &marks), valuation_ns)?;
        if let Some((names, batches)) = &feeds {
            tables = tables.with_expiry_feeds(&Table::new("expiry_feeds", names, batches))?;
        }
        Ok(MarketState::new(tables, feeds))
    }

    /// The market resolved against the book, exactly as `me.margin` resolves `me.Market`.
    pub fn resolve(&self, book: &Book) -> Result<Market> {
        Market::resolve(book, &self.tables)
    }

    pub fn valuation_ns(&self) -> i64 {
        self.tables.valuation_ns
    }

    /// Replaces the values an update names; a key not in the tables gets a new row (confidence
    /// 1, no supplied Greeks).
    fn apply(&mut self, update: &MarketUpdate) {
        let t = &mut self.tables;
        for (name, price) in &update.index_prices {
            match self.index_row.get(name) {
                Some(r) => t.index_price[*r] = *price,
                None => {
                    self.index_row.insert(name.clone(), t.underlyings.len());
                    t.underlyings.push(name.clone());
                    t.index_price.push(*price);
                    t.index_confidence.push(1.0);
                }
            }
        }
        for (key, mark, vol) in &update.marks {
            let vol = (!vol.is_nan()).then_some(*vol);
            match self.mark_row.get(key) {
                Some(r) => {
                    t.mark_price[*r] = *mark;
                    if vol.is_some() {
                        t.implied_vol[*r] = vol;
                    }
                }
                None => {
                    self.mark_row.insert(key.clone(), t.instruments.len());
                    t.instruments.push(key.clone());
                    t.mark_price.push(*mark);
                    t.implied_vol.push(vol);
                    t.mark_confidence.push(1.0);
                    if let Some(g) = &mut t.greeks {
                        g.push(None);
                    }
                    // a new instrument's open interest is unknown: its own rate
                    if let Some(oi) = &mut t.open_interest {
                        oi.push(f64::NAN);
                    }
                }
            }
        }
        if let Some(ns) = update.valuation_ns {
            t.valuation_ns = ns;
        }
    }

    /// `index_prices` (`underlying, index_price, confidence`) and `marks` (`instrument,
    /// mark_price, implied_vol, confidence`, and `delta, gamma, vega, theta` when supplied): the
    /// tables' rows, in their order.
    pub fn tables(&self, book: &Book) -> (RecordBatch, RecordBatch) {
        let t = &self.tables;
        let index = RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("underlying", DataType::Utf8, false),
                Field::new("index_price", DataType::Float64, false),
                Field::new("confidence", DataType::Float64, false),
            ])),
            vec![
                Arc::new(StringArray::from(t.underlyings.iter().map(String::as_str).collect::<Vec<_>>())),
                Arc::new(Float64Array::from(t.index_price.clone())),
                Arc::new(Float64Array::from(t.index_confidence.clone())),
            ],
        )
        .expect("columns match the schema");
        let int_keys = t.instruments.first().map_or(book.instruments.index.is_int(), |k| matches!(k, Key::Int(_)));
        let keys: ArrayRef = if int_keys {
            Arc::new(Int64Array::from(t.instruments.iter().map(|k| if let Key::Int(i) = k { *i } else { 0 }).collect::<Vec<_>>()))
        } else {
            Arc::new(StringArray::from(t.instruments.iter().map(|k| if let Key::Str(s) = k { s.as_str() } else { "" }).collect::<Vec<_>>()))
        };
        let mut fields = vec![
            Field::new("instrument", if int_keys { DataType::Int64 } else { DataType::Utf8 }, false),
            Field::new("mark_price", DataType::Float64, false),
            Field::new("implied_vol", DataType::Float64, true),
            Field::new("confidence", DataType::Float64, false),
        ];
        let mut columns: Vec<ArrayRef> = vec![
            keys,
            Arc::new(Float64Array::from(t.mark_price.clone())),
            Arc::new(Float64Array::from(t.implied_vol.clone())),
            Arc::new(Float64Array::from(t.mark_confidence.clone())),
        ];
        if let Some(g) = &t.greeks {
            let greek = |f: fn(&crate::market::SuppliedGreeks) -> f64| -> ArrayRef { Arc::new(Float64Array::from(g.iter().map(|x| x.as_ref().map(f)).collect::<Vec<_>>())) };
            for (name, column) in [("delta", greek(|x| x.delta)), ("gamma", greek(|x| x.gamma)), ("vega", greek(|x| x.vega)), ("theta", greek(|x| x.theta))] {
                fields.push(Field::new(name, DataType::Float64, true));
                columns.push(column);
            }
        }
        let marks = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).expect("columns match the schema");
        (index, marks)
    }
}

pub fn key_type(book: &Book) -> DataType {
    if book.instruments.index.is_int() {
        DataType::Int64
    } else {
        DataType::Utf8
    }
}

/// The book keys of instrument ids, as an Arrow column of the book's key type.
pub fn instrument_keys(book: &Book, ids: impl Iterator<Item = u32>) -> ArrayRef {
    let ids: Vec<u32> = ids.collect(); // Arrow's from_iter_values needs a known length
    let ids = ids.into_iter();
    let ins = &book.instruments;
    if ins.index.is_int() {
        Arc::new(Int64Array::from_iter_values(ids.map(|i| match &ins.keys[i as usize] {
            Key::Int(k) => *k,
            Key::Str(_) => 0,
        })))
    } else {
        Arc::new(StringArray::from_iter_values(ids.map(|i| ins.labels[i as usize].as_str())))
    }
}

/// The accounts a staged batch changes: each one's index in the state (`None`: a new account),
/// its new rows, and its new margin row.
struct StagedAccounts {
    accounts: Vec<(Option<u32>, Account)>,
    rows: Vec<AccountRow>,
}

/// A staged market update.
struct StagedMarket {
    state: MarketState,
    market: Market,
    risk: Option<RiskArrays>,
    touched: Vec<u32>,
    rows: Vec<AccountRow>,
}

enum Staged {
    Accounts(StagedAccounts),
    Market(StagedMarket),
}

/// The accounts of a batch being staged: copies of existing accounts, or new ones.
struct Staging<'a> {
    state: &'a State,
    slot: FxHashMap<u64, usize>,
    accounts: Vec<(Option<u32>, Account)>,
}

impl<'a> Staging<'a> {
    fn new(state: &'a State) -> Self {
        Staging { state, slot: FxHashMap::default(), accounts: Vec::new() }
    }

    fn exists(&self, id: u64) -> bool {
        self.slot.get(&id).is_some_and(|s| self.accounts[*s].1.exists()) || self.state.index_of(id).is_some()
    }

    /// The account's staged copy (made on first use; a new empty account when `create`).
    fn account(&mut self, id: u64, create: bool) -> Option<&mut Account> {
        if let Some(s) = self.slot.get(&id) {
            return Some(&mut self.accounts[*s].1);
        }
        let copy = match self.state.index_of(id) {
            Some(i) => (Some(i), self.state.accounts[i as usize].clone()),
            None if create => (None, Account::new(id)),
            None => return None,
        };
        self.slot.insert(id, self.accounts.len());
        self.accounts.push(copy);
        self.accounts.last_mut().map(|a| &mut a.1)
    }
}

fn first_error(checks: Vec<(Offenders, &str, &str, &str)>) -> Result<()> {
    for (offenders, table, column, problem) in checks {
        offenders.into_result(table, column, problem)?;
    }
    Ok(())
}

/// The live book: book, market, state, and the journal when durable.
pub struct LiveBook {
    pub book: Arc<Book>,
    pub config: Config,
    pub market_state: MarketState,
    pub market: Market,
    pub risk: Option<RiskArrays>,
    pub state: State,
    /// Batches applied since the book was created (the journal's sequence number).
    pub seq: u64,
    pub journal: Option<Journal>,
    /// Recovery: batches change the accounts but nothing is margined until
    /// [`LiveBook::margin_all`] (replayed batches were checked when first applied).
    deferred: bool,
}

impl LiveBook {
    /// A live book of the accounts in `inputs` (read and checked as `me.margin` reads them) at
    /// `market`, with resting `orders`.
    pub fn new(book: Arc<Book>, market: MarketState, inputs: &Inputs, orders: Vec<Order>, config: Config) -> Result<LiveBook> {
        // the live state's fills and journal carry funding-free positions only
        if inputs.positions.unsettled_funding.is_some() {
            return Err(crate::error::InputError::new("positions", "unsettled_funding", "LiveBook does not carry unsettled_funding yet: settle funding into balances (apply_transfers) or use me.margin"));
        }
        let mut duplicates = Offenders::default();
        let accounts: Vec<Account> = inputs
            .slots
            .par_iter()
            .with_min_len(1024)
            .map(|slot| {
                let p = &inputs.positions;
                let mut positions: Vec<PositionRow> = slot
                    .positions()
                    .map(|r| PositionRow {
                        instrument: p.instrument.get(r),
                        quantity: p.quantity[r],
                        entry_price: p.entry_price.as_ref().map_or(f64::NAN, |e| e[r]),
                    })
                    .collect();
                positions.sort_by_key(|r| r.instrument); // stable: each instrument's rows keep their order
                let b = &inputs.balances;
                let mut balances: Vec<(u32, f64)> = slot.balances().map(|r| (b.asset[r], b.amount[r])).collect();
                balances.sort_by_key(|b| b.0);
                Account { id: slot.account_id, positions, balances, orders: Vec::new() }
            })
            .collect();
        for a in &accounts {
            if let Some(w) = a.balances.windows(2).find(|w| w[0].0 == w[1].0) {
                duplicates.push(|| format!("account {} asset '{}'", a.id, book.assets.labels[w[0].0 as usize]));
            }
        }
        duplicates.into_result("balances", "asset", "duplicate (account_id, asset) key")?;
        let mut live = Self::from_accounts(book, market, accounts, config, true)?;
        if !orders.is_empty() {
            live.apply_unjournaled(Batch::PlaceOrders(orders))?;
        }
        Ok(live)
    }

    /// The book of these accounts (each once, rows in state order), margined in parallel.
    /// The book of these accounts (each once, rows in state order), margined in parallel unless
    /// `margin` is false (recovery: then [`LiveBook::margin_all`] after the replay).
    pub(crate) fn from_accounts(book: Arc<Book>, market_state: MarketState, accounts: Vec<Account>, config: Config, margin: bool) -> Result<LiveBook> {
        // fills, realized P&L and the journal are linear: inverse contracts are refused
        if book.instruments.has_inverse() {
            return Err(crate::error::InputError::new("instruments", "settlement", "LiveBook does not support inverse (coin-settled) contracts yet; use me.margin"));
        }
        crate::engine::check_size_rates(&book, config.model == Model::Portfolio)?;
        let market = market_state.resolve(&book)?;
        let risk = match (config.model, margin) {
            (Model::Portfolio, true) => Some(RiskArrays::new(&book, &market)),
            _ => None,
        };
        let mut live = LiveBook { market_state, market, risk, state: State::new(&book), book, config, seq: 0, journal: None, deferred: !margin };
        let rows = if margin {
            let rows = live.margin_of(&accounts);
            check_rows(&live.book, "positions", accounts.iter().zip(&rows))?;
            rows
        } else {
            accounts.iter().map(placeholder).collect()
        };
        live.state.reserve(accounts.len());
        let book = live.book.clone();
        for (a, row) in accounts.into_iter().zip(rows) {
            live.state.push(&book, a, row);
        }
        Ok(live)
    }

    /// Ends recovery: the risk arrays of the current market, then every account margined.
    pub(crate) fn margin_all(&mut self) -> Result<()> {
        self.deferred = false;
        self.risk = match self.config.model {
            Model::Standard => None,
            Model::Portfolio => Some(RiskArrays::new(&self.book, &self.market)),
        };
        let rows = self.margin_of(&self.state.accounts);
        check_rows(&self.book, "positions", self.state.accounts.iter().zip(&rows))?;
        self.state.rows = rows;
        Ok(())
    }

    pub fn pricing(&self) -> Pricing<'_> {
        Pricing { book: &self.book, base: &self.market, stress: None, risk: self.risk.as_ref() }
    }

    fn margin_of(&self, accounts: &[Account]) -> Vec<AccountRow> {
        let pricing = self.pricing();
        accounts.par_iter().with_min_len(64).map_init(Scratch::default, |s, a| margin_account(&pricing, a, s)).collect()
    }

    /// Applies a batch: staged, journaled (when durable), committed. Nothing of a rejected batch
    /// is applied or journaled.
    pub fn apply(&mut self, batch: Batch) -> std::result::Result<Changes, LiveError> {
        if batch.is_empty() {
            return Ok(Changes { seq: self.seq, ..Changes::default() });
        }
        let staged = self.stage(&batch)?;
        if let Some(journal) = &mut self.journal {
            journal.append(self.seq + 1, &batch).map_err(LiveError::Io)?;
        }
        Ok(self.commit(staged, batch.len()))
    }

    /// [`LiveBook::apply`] without the journal (recovery replays, initial orders).
    pub fn apply_unjournaled(&mut self, batch: Batch) -> Result<Changes> {
        if batch.is_empty() {
            return Ok(Changes { seq: self.seq, ..Changes::default() });
        }
        let staged = self.stage(&batch)?;
        Ok(self.commit(staged, batch.len()))
    }

    fn premium_asset(&self) -> Option<u32> {
        self.config.premium_asset.or_else(|| self.book.assets.quote_asset())
    }

    fn stage(&self, batch: &Batch) -> Result<Staged> {
        let mut staging = Staging::new(&self.state);
        let table = match batch {
            Batch::Fills(fills) => {
                self.stage_fills(fills, &mut staging)?;
                "fills"
            }
            Batch::Transfers(transfers) => {
                self.stage_transfers(transfers, &mut staging)?;
                "transfers"
            }
            Batch::PlaceOrders(orders) => {
                self.stage_orders(orders, &mut staging)?;
                "orders"
            }
            Batch::CancelOrders(ids) => {
                self.stage_cancels(ids, &mut staging)?;
                "order_ids"
            }
            Batch::Market(update) => return self.stage_market(update).map(Staged::Market),
        };
        let accounts = staging.accounts;
        if self.deferred {
            let rows = accounts.iter().map(|a| placeholder(&a.1)).collect();
            return Ok(Staged::Accounts(StagedAccounts { accounts, rows }));
        }
        let pricing = self.pricing();
        let rows: Vec<AccountRow> = accounts.par_iter().with_min_len(64).map_init(Scratch::default, |s, a| margin_account(&pricing, &a.1, s)).collect();
        check_rows(&self.book, table, accounts.iter().map(|a| &a.1).zip(&rows))?;
        Ok(Staged::Accounts(StagedAccounts { accounts, rows }))
    }

    /// A fill appends a position row `(quantity, entry_price = price)` to the account (a new
    /// account if unknown). An option's premium, `−quantity × multiplier × price`, and the fee
    /// move the balance of the premium asset by `(premium − fee) / asset price`; a linear
    /// contract's fill moves no cash (its P&L against the mark is in the new row).
    fn stage_fills(&self, fills: &[Fill], staging: &mut Staging) -> Result<()> {
        let (book, market) = (&*self.book, &self.market);
        let premium_asset = self.premium_asset();
        let (mut no_market, mut no_asset) = (Offenders::default(), Offenders::default());
        for (r, f) in fills.iter().enumerate() {
            let id = f.instrument as usize;
            if market.mark_price[id].is_nan() || market.index_price[book.instruments.underlying[id] as usize].is_nan() {
                no_market.push(|| format!("row {r}: '{}'", book.instruments.labels[id]));
                continue;
            }
            let option = book.instruments.kind[id] == Kind::Option;
            let moves_cash = option || f.fee != 0.0;
            if moves_cash && premium_asset.is_none() {
                no_asset.push(|| format!("row {r}"));
                continue;
            }
            let a = staging.account(f.account_id, true).expect("created");
            a.add_position(PositionRow { instrument: f.instrument, quantity: f.quantity, entry_price: f.price });
            if let (true, Some(asset)) = (moves_cash, premium_asset) {
                let premium = if option { -(f.quantity * book.instruments.multiplier[id] * f.price) } else { 0.0 };
                a.add_to_balance(asset, (premium - f.fee) / book.assets.price[asset as usize]);
            }
        }
        first_error(vec![
            (no_market, "fills", "instrument", "no mark or index price for the instrument (update the market first)"),
            (no_asset, "fills", "fee", "an option premium or a fee needs a premium asset: the book has no quote asset (an asset priced 1 without an underlying); name one with premium_asset="),
        ])
    }

    fn stage_transfers(&self, transfers: &[Transfer], staging: &mut Staging) -> Result<()> {
        let book = &*self.book;
        let (mut unknown, mut overdraw) = (Offenders::default(), Offenders::default());
        for (r, t) in transfers.iter().enumerate() {
            if t.amount < 0.0 && !staging.exists(t.account_id) {
                unknown.push(|| format!("row {r}: account {}", t.account_id));
                continue;
            }
            let a = staging.account(t.account_id, true).expect("created");
            let after = a.balance(t.asset).unwrap_or(0.0) + t.amount;
            if t.amount < 0.0 && !self.config.allow_negative_balances && after < 0.0 {
                overdraw.push(|| format!("row {r}: account {} asset '{}' to {after}", t.account_id, book.assets.labels[t.asset as usize]));
                continue;
            }
            a.add_to_balance(t.asset, t.amount);
        }
        first_error(vec![
            (unknown, "transfers", "account_id", "a transfer out of an unknown account"),
            (overdraw, "transfers", "amount", "the transfer would overdraw the balance (allow_negative_balances=False)"),
        ])
    }

    fn stage_orders(&self, orders: &[Order], staging: &mut Staging) -> Result<()> {
        // resting orders enter initial margin: a methodology that cannot margin them refuses
        crate::engine::check_orders_model(&self.book, self.config.model == Model::Portfolio, !orders.is_empty())?;
        let (mut resting, mut unknown) = (Offenders::default(), Offenders::default());
        for (r, o) in orders.iter().enumerate() {
            if self.state.orders.contains_key(&o.order_id) {
                resting.push(|| format!("row {r}: order {}", o.order_id));
                continue;
            }
            match staging.account(o.account_id, false) {
                None => unknown.push(|| format!("row {r}: account {}", o.account_id)),
                Some(a) => a.orders.push(RestingOrder { order_id: o.order_id, instrument: o.instrument, quantity: o.quantity, price: o.price }),
            }
        }
        first_error(vec![
            (resting, "orders", "order_id", "an order with this id is already resting"),
            (unknown, "orders", "account_id", "unknown account (an order needs an account with a position or a balance)"),
        ])
    }

    fn stage_cancels(&self, ids: &[u64], staging: &mut Staging) -> Result<()> {
        let mut unknown = Offenders::default();
        for (r, id) in ids.iter().enumerate() {
            let Some(i) = self.state.orders.get(id) else {
                unknown.push(|| format!("row {r}: order {id}"));
                continue;
            };
            let a = staging.account(self.state.accounts[*i as usize].id, false).expect("an order's account exists");
            a.orders.retain(|o| o.order_id != *id);
        }
        unknown.into_result("order_ids", "order_id", "no resting order with this id")
    }

    fn stage_market(&self, update: &MarketUpdate) -> Result<StagedMarket> {
        let book = &*self.book;
        let mut state = self.market_state.clone();
        state.apply(update);
        let market = state.resolve(book)?;
        // a new valuation time, or a new index price of the quote asset (its peg, read by
        // methodologies), reaches every account with positions or resting orders (an order's
        // fill loss against an option's mark moves with time even when the account holds nothing)
        let quote = book.assets.quote_asset().map(|a| book.assets.labels[a as usize].as_str());
        let all = update.valuation_ns.is_some_and(|ns| ns != self.market_state.valuation_ns())
            || update.index_prices.iter().any(|(name, _)| Some(name.as_str()) == quote);
        let moved: Vec<u32> = update.index_prices.iter().filter_map(|(name, _)| book.underlyings.index.get_str(name)).collect();
        let marked: Vec<u32> = update.marks.iter().filter_map(|(key, _, _)| book.instruments.index.get(key)).collect();
        if self.deferred {
            return Ok(StagedMarket { state, market, risk: None, touched: Vec::new(), rows: Vec::new() });
        }
        let risk = self.risk.as_ref().map(|risk| {
            let mut instruments = marked.clone();
            for (id, u) in book.instruments.underlying.iter().enumerate() {
                if moved.contains(u) {
                    instruments.push(id as u32);
                }
            }
            updated_risk(book, &market, risk, &instruments, all)
        });
        let touched = if all {
            (0..self.state.accounts.len() as u32)
                .filter(|i| {
                    let a = &self.state.accounts[*i as usize];
                    !a.positions.is_empty() || !a.orders.is_empty()
                })
                .collect()
        } else {
            self.state.exposure.touched(self.state.accounts.len(), &moved, &marked)
        };
        let pricing = Pricing { book, base: &market, stress: None, risk: risk.as_ref() };
        let accounts = &self.state.accounts;
        let rows: Vec<AccountRow> =
            touched.par_iter().with_min_len(64).map_init(Scratch::default, |s, i| margin_account(&pricing, &accounts[*i as usize], s)).collect();
        check_rows(book, "marks", touched.iter().map(|i| &accounts[*i as usize]).zip(&rows))?;
        Ok(StagedMarket { state, market, risk, touched, rows })
    }

    fn commit(&mut self, staged: Staged, events: usize) -> Changes {
        let mut changes = Vec::new();
        let remargined;
        match staged {
            Staged::Accounts(StagedAccounts { accounts, rows }) => {
                remargined = rows.len();
                let book = self.book.clone();
                for ((slot, account), row) in accounts.into_iter().zip(rows) {
                    let before = match slot {
                        Some(i) => {
                            let before = self.state.rows[i as usize].status();
                            self.state.replace(&book, i, account, row);
                            Some(before)
                        }
                        None => {
                            self.state.push(&book, account, row);
                            None
                        }
                    };
                    if before != Some(row.status()) {
                        changes.push(Change { account_id: row.account_id, before, after: row });
                    }
                }
            }
            Staged::Market(StagedMarket { state, market, risk, touched, rows }) => {
                remargined = rows.len();
                self.market_state = state;
                self.market = market;
                self.risk = risk;
                for (i, row) in touched.into_iter().zip(rows) {
                    let before = std::mem::replace(&mut self.state.rows[i as usize], row).status();
                    if before != row.status() {
                        changes.push(Change { account_id: row.account_id, before: Some(before), after: row });
                    }
                }
            }
        }
        changes.sort_unstable_by_key(|c| c.account_id);
        self.seq += 1;
        Changes { changes, remargined, events, seq: self.seq }
    }

    /// The pre-trade check of `quantity` contracts of `instrument` at `price` for the account, on
    /// its current rows: exactly `me.what_if` on those rows (resting orders do not enter margin
    /// until open-order margin exists; docs/live.md).
    pub fn check_order(&self, account_id: u64, instrument: u32, quantity: f64, price: f64) -> Result<WhatIf> {
        let trades = [Row { instrument, quantity, price: Some(price) }];
        let empty = Account::default();
        let a = self.state.index_of(account_id).map_or(&empty, |i| &self.state.accounts[i as usize]);
        let positions: Vec<Row> = a
            .positions
            .iter()
            .map(|r| Row { instrument: r.instrument, quantity: r.quantity, price: (!r.entry_price.is_nan()).then_some(r.entry_price) })
            .collect();
        let orders: Vec<Row> = a.orders.iter().map(|o| Row { instrument: o.instrument, quantity: o.quantity, price: Some(o.price) }).collect();
        whatif::what_if_with_orders(&self.pricing(), &positions, &a.balances, &trades, self.config.premium_asset, &orders)
    }

    /// Every account's last margin row, by account id: `me.margin`'s rows on the current state.
    pub fn margin(&mut self) -> RecordBatch {
        let order = self.state.in_id_order().to_vec();
        let rows: Vec<AccountRow> = order.iter().map(|i| self.state.rows[*i as usize]).collect();
        margin_batch(&rows)
    }

    pub fn account(&self, account_id: u64) -> Option<&AccountRow> {
        self.state.index_of(account_id).map(|i| &self.state.rows[i as usize])
    }

    /// The current position rows (`account_id, instrument, quantity, entry_price`), by account
    /// id, each account's rows in state order: the positions table `me.margin` reads.
    pub fn positions(&mut self) -> RecordBatch {
        let order = self.state.in_id_order().to_vec();
        let accounts = &self.state.accounts;
        let rows = || order.iter().flat_map(|i| accounts[*i as usize].positions.iter().map(move |r| (accounts[*i as usize].id, r)));
        let entry: Float64Array = rows().map(|(_, r)| Some(r.entry_price).filter(|e| !e.is_nan())).collect::<Vec<_>>().into();
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("account_id", DataType::UInt64, false),
                Field::new("instrument", key_type(&self.book), false),
                Field::new("quantity", DataType::Float64, false),
                Field::new("entry_price", DataType::Float64, true),
            ])),
            vec![
                Arc::new(UInt64Array::from(rows().map(|(id, _)| id).collect::<Vec<_>>())),
                instrument_keys(&self.book, rows().map(|(_, r)| r.instrument)),
                Arc::new(Float64Array::from(rows().map(|(_, r)| r.quantity).collect::<Vec<_>>())),
                Arc::new(entry),
            ],
        )
        .expect("columns match the schema")
    }

    /// The current balances (`account_id, asset, amount`), by account id then asset id.
    pub fn balances(&mut self) -> RecordBatch {
        let order = self.state.in_id_order().to_vec();
        let accounts = &self.state.accounts;
        let rows = || order.iter().flat_map(|i| accounts[*i as usize].balances.iter().map(move |b| (accounts[*i as usize].id, b)));
        let labels = &self.book.assets.labels;
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("account_id", DataType::UInt64, false),
                Field::new("asset", DataType::Utf8, false),
                Field::new("amount", DataType::Float64, false),
            ])),
            vec![
                Arc::new(UInt64Array::from(rows().map(|(id, _)| id).collect::<Vec<_>>())),
                Arc::new(StringArray::from(rows().map(|(_, b)| labels[b.0 as usize].as_str()).collect::<Vec<_>>())),
                Arc::new(Float64Array::from(rows().map(|(_, b)| b.1).collect::<Vec<_>>())),
            ],
        )
        .expect("columns match the schema")
    }

    /// The resting orders (`order_id, account_id, instrument, quantity, price`), by order id.
    pub fn orders(&self) -> RecordBatch {
        let mut orders: Vec<(u64, &RestingOrder)> =
            self.state.accounts.iter().flat_map(|a| a.orders.iter().map(move |o| (a.id, o))).collect();
        orders.sort_unstable_by_key(|(_, o)| o.order_id);
        RecordBatch::try_new(
            Arc::new(Schema::new(vec![
                Field::new("order_id", DataType::UInt64, false),
                Field::new("account_id", DataType::UInt64, false),
                Field::new("instrument", key_type(&self.book), false),
                Field::new("quantity", DataType::Float64, false),
                Field::new("price", DataType::Float64, false),
            ])),
            vec![
                Arc::new(UInt64Array::from_iter_values(orders.iter().map(|(_, o)| o.order_id))),
                Arc::new(UInt64Array::from_iter_values(orders.iter().map(|(id, _)| *id))),
                instrument_keys(&self.book, orders.iter().map(|(_, o)| o.instrument)),
                Arc::new(Float64Array::from_iter_values(orders.iter().map(|(_, o)| o.quantity))),
                Arc::new(Float64Array::from_iter_values(orders.iter().map(|(_, o)| o.price))),
            ],
        )
        .expect("columns match the schema")
    }
}

/// The risk arrays after a market update: the arrays of `instruments` recomputed in place by
/// the function [`RiskArrays::new`] uses for each instrument, or all of them rebuilt when `all`
/// or when which instruments have market data changed (the arrays' layout).
fn updated_risk(book: &Book, market: &Market, risk: &RiskArrays, instruments: &[u32], all: bool) -> RiskArrays {
    let has_data = |id: usize| !market.mark_price[id].is_nan() && !market.index_price[book.instruments.underlying[id] as usize].is_nan();
    // a scenario methodology's option values (one pass over the options) are rebuilt whole
    if all || book.methodology.portfolio.is_some() || (0..book.instruments.len()).any(|id| risk.offset[id].is_some() != has_data(id)) {
        return RiskArrays::new(book, market);
    }
    let mut out = RiskArrays { scenarios: risk.scenarios.clone(), offset: risk.offset.clone(), pnl: risk.pnl.clone(), scenario_values: None };
    let mut ids = instruments.to_vec();
    ids.sort_unstable();
    ids.dedup();
    let arrays: Vec<(usize, Vec<f64>)> = ids
        .par_iter()
        .filter_map(|id| {
            let id = *id as usize;
            let offset = risk.offset[id]?;
            let u = book.instruments.underlying[id] as usize;
            let mut array = Vec::with_capacity(risk.scenarios[u].len());
            instrument_array_at(book, market, id, market.index_price[u], market.mark_price[id], market.settlement_price[id], &risk.scenarios[u], &mut array);
            Some((offset, array))
        })
        .collect();
    for (offset, array) in arrays {
        out.pnl[offset..offset + array.len()].copy_from_slice(&array);
    }
    out
}

/// The row of an account not margined yet (recovery).
fn placeholder(a: &Account) -> AccountRow {
    AccountRow::new(a.id, Default::default(), 0.0, 0.0, 0.0)
}

/// Rejects rows that overflow float64 (as `me.margin` does), and balances whose bound
/// overflows (`me.margin`'s balance check), naming the accounts.
fn check_rows<'a>(book: &Book, table: &str, rows: impl Iterator<Item = (&'a Account, &'a AccountRow)>) -> Result<()> {
    let (mut overflow, mut balances) = (Offenders::default(), Offenders::default());
    for (a, row) in rows {
        if !balance_bound(book, a).is_finite() {
            balances.push(|| format!("account {}", a.id));
        } else if !row.is_finite() {
            overflow.push(|| format!("account {}", a.id));
        }
    }
    first_error(vec![
        (balances, table, "amount", "values too large: the account's collateral (amount × asset price) overflows float64"),
        (overflow, table, "quantity", "values too large: the account's valuation or margin overflows float64 (check quantities, amounts and prices)"),
    ])
}

/// `Changes.table`: `account_id`, `status_before` (null for an account the batch created),
/// `status_after`, then the new row's `equity, collateral_initial, collateral_maintenance,
/// initial_margin, maintenance_margin, free_collateral, margin_excess, health`.
pub fn changes_batch(changes: &[Change]) -> RecordBatch {
    let f = |name: &str, v: &dyn Fn(&AccountRow) -> f64| -> (String, ArrayRef, bool) {
        (name.to_string(), Arc::new(Float64Array::from_iter_values(changes.iter().map(|c| v(&c.after)))), false)
    };
    let mut columns: Vec<(String, ArrayRef, bool)> = vec![
        ("account_id".into(), Arc::new(UInt64Array::from_iter_values(changes.iter().map(|c| c.account_id))), false),
        ("status_before".into(), Arc::new(StringArray::from_iter(changes.iter().map(|c| c.before.map(Status::as_str)))), true),
        ("status_after".into(), Arc::new(StringArray::from_iter_values(changes.iter().map(|c| c.after.status().as_str()))), false),
        f("equity", &|r| r.equity),
        f("collateral_initial", &|r| r.collateral_initial),
        f("collateral_maintenance", &|r| r.collateral_maintenance),
        f("initial_margin", &|r| r.initial_margin),
        f("maintenance_margin", &|r| r.maintenance_margin),
        f("free_collateral", &|r| r.free_collateral()),
        f("margin_excess", &|r| r.margin_excess()),
    ];
    columns.push(("health".into(), Arc::new(Float64Array::from_iter(changes.iter().map(|c| c.after.health()))), true));
    let schema = Schema::new(columns.iter().map(|(n, a, nullable)| Field::new(n, a.data_type().clone(), *nullable)).collect::<Vec<_>>());
    RecordBatch::try_new(Arc::new(schema), columns.into_iter().map(|c| c.1).collect()).expect("columns match the schema")
}
