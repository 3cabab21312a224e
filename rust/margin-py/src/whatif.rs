//! `what_if`: one account's margin before and after trades, for order entry.
//!
//! The hot path reads plain Python objects (a dict `{instrument: quantity}` or a list of
//! `(instrument, quantity[, price])` tuples) straight into ids and floats, with the market
//! resolved once per (book, market) pair and cached on the `Market`. Arrow tables are accepted
//! too, for convenience, through the same readers as the bulk functions.

use margin_core::book::Book as CoreBook;
use margin_core::engine::Pricing;
use margin_core::results::AccountRow;
use margin_core::table::{Domain, Key, KeyIndex};
use margin_core::whatif::{self as core_whatif, Row};
use margin_core::{InputError, error::Offenders};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use crate::{parse_model, run_with_gil, Book, Market, OwnedTable};

/// One account's valuation and margin (the columns of `margin_engine.margin`).
#[pyclass(module = "margin_engine._core", frozen, get_all)]
pub struct AccountMargin {
    equity: f64,
    collateral_initial: f64,
    collateral_maintenance: f64,
    initial_margin: f64,
    maintenance_margin: f64,
    free_collateral: f64,
    margin_excess: f64,
    health: Option<f64>,
    status: &'static str,
}

impl From<&AccountRow> for AccountMargin {
    fn from(r: &AccountRow) -> Self {
        AccountMargin {
            equity: r.equity,
            collateral_initial: r.collateral_initial,
            collateral_maintenance: r.collateral_maintenance,
            initial_margin: r.initial_margin,
            maintenance_margin: r.maintenance_margin,
            free_collateral: r.free_collateral(),
            margin_excess: r.margin_excess(),
            health: r.health(),
            status: r.status().as_str(),
        }
    }
}

#[pymethods]
impl AccountMargin {
    fn __repr__(&self) -> String {
        format!(
            "AccountMargin(status={:?}, equity={}, initial_margin={}, maintenance_margin={}, free_collateral={})",
            self.status, self.equity, self.initial_margin, self.maintenance_margin, self.free_collateral
        )
    }
}

/// The account before and after the trades.
#[pyclass(module = "margin_engine._core", frozen, get_all)]
pub struct WhatIf {
    before: Py<AccountMargin>,
    after: Py<AccountMargin>,
    /// Value realized by trading away from the mark: `Σ quantity × multiplier × (mark − price)`.
    trade_pnl: f64,
    /// Option premium moved into cash: `−Σ quantity × multiplier × price` over option trades.
    premium: f64,
    /// After free collateral ≥ 0, or the trade reduces risk (IM does not rise, free collateral
    /// does not fall).
    accepted: bool,
    initial_margin_change: f64,
    maintenance_margin_change: f64,
}

#[pymethods]
impl WhatIf {
    fn __repr__(&self, py: Python<'_>) -> String {
        format!(
            "WhatIf(accepted={}, initial_margin_change={}, before={}, after={})",
            if self.accepted { "True" } else { "False" },
            self.initial_margin_change,
            self.before.get().__repr__(),
            self.after.bind(py).get().__repr__()
        )
    }
}

/// An instrument or asset key of the book from a Python `str` (or `int` for integer-keyed
/// books); `Err(text)` when it is not in the book or of the wrong type.
fn key_id(key: &Bound<'_, PyAny>, index: &KeyIndex) -> Result<u32, String> {
    if let Ok(s) = key.cast::<PyString>() {
        let s = s.to_str().map_err(|_| "a string that is not valid UTF-8".to_string())?;
        return index.get_str(s).ok_or_else(|| format!("'{s}'"));
    }
    match key.extract::<i64>() {
        Ok(i) if !key.is_instance_of::<pyo3::types::PyBool>() => index.get(&Key::Int(i)).ok_or_else(|| i.to_string()),
        _ => Err(format!("{} (not a str{})", key.repr().map(|r| r.to_string()).unwrap_or_default(), if index.is_int() { " or int" } else { "" })),
    }
}

fn float_of(value: &Bound<'_, PyAny>) -> Option<f64> {
    if value.is_instance_of::<pyo3::types::PyBool>() {
        return None;
    }
    value.extract::<f64>().ok()
}

/// The input table of what-if rows, or an error naming its column and offending rows.
struct RowReader<'a> {
    table: &'static str,
    key_column: &'static str,
    price_column: &'static str,
    index: &'a KeyIndex,
}

impl RowReader<'_> {
    fn error(&self, column: &str, problem: &str, offenders: Offenders) -> InputError {
        InputError::new(self.table, column, problem).with_offenders(offenders)
    }

    /// `(key, quantity[, price])` rows from a dict, a sequence of tuples, or an Arrow table.
    fn read(&self, obj: Option<&Bound<'_, PyAny>>) -> Result<Vec<Row>, InputError> {
        let Some(obj) = obj.filter(|o| !o.is_none()) else { return Ok(Vec::new()) };
        if obj.hasattr("__arrow_c_stream__").unwrap_or(false) || obj.hasattr("__arrow_c_array__").unwrap_or(false) {
            return self.read_arrow(obj);
        }
        let mut rows = Vec::new();
        let (mut unknown, mut bad_value, mut bad_shape) = (Offenders::default(), Offenders::default(), Offenders::default());
        let mut push = |i: usize, key: &Bound<'_, PyAny>, quantity: &Bound<'_, PyAny>, price: Option<Bound<'_, PyAny>>| {
            let id = key_id(key, self.index).map_err(|k| unknown.push(|| format!("row {i}: {k}")));
            let q = float_of(quantity);
            if q.is_none() {
                bad_value.push(|| format!("row {i}: quantity {}", quantity.repr().map(|r| r.to_string()).unwrap_or_default()));
            }
            let p = match price.filter(|p| !p.is_none()) {
                None => Some(None),
                Some(p) => match float_of(&p) {
                    Some(v) => Some(Some(v)),
                    None => {
                        bad_value.push(|| format!("row {i}: {} {}", self.price_column, p.repr().map(|r| r.to_string()).unwrap_or_default()));
                        None
                    }
                },
            };
            if let (Ok(instrument), Some(quantity), Some(price)) = (id, q, p) {
                rows.push(Row { instrument, quantity, price });
            }
        };
        if let Ok(dict) = obj.cast::<PyDict>() {
            for (i, (key, value)) in dict.iter().enumerate() {
                push(i, &key, &value, None);
            }
        } else {
            let items = obj.try_iter().map_err(|_| {
                InputError::new(
                    self.table,
                    "*",
                    format!(
                        "expected a dict {{{}: quantity}}, a list of ({}, quantity[, {}]) tuples or an Arrow table, got {}",
                        self.key_column,
                        self.key_column,
                        self.price_column,
                        obj.get_type().name().map(|n| n.to_string()).unwrap_or_default()
                    ),
                )
            })?;
            for (i, item) in items.enumerate() {
                let item = item.map_err(|e| InputError::new(self.table, "*", e.to_string()))?;
                let fields: Vec<Bound<'_, PyAny>> = match item.try_iter() {
                    Ok(it) if !item.is_instance_of::<PyString>() => it.filter_map(|f| f.ok()).collect(),
                    _ => Vec::new(),
                };
                match fields.len() {
                    2 => push(i, &fields[0], &fields[1], None),
                    3 => push(i, &fields[0], &fields[1], Some(fields[2].clone())),
                    _ => bad_shape.push(|| format!("row {i}: {}", item.repr().map(|r| r.to_string()).unwrap_or_default())),
                }
            }
        }
        let shape = format!("rows must be ({}, quantity) or ({}, quantity, {}) tuples", self.key_column, self.key_column, self.price_column);
        bad_shape.into_result(self.table, "*", &shape)?;
        unknown.into_result(self.table, self.key_column, &format!("unknown {} (not in the book)", self.key_column))?;
        if !bad_value.is_empty() {
            return Err(self.error("quantity", "values must be numbers (int or float)", bad_value));
        }
        Ok(rows)
    }

    fn read_arrow(&self, obj: &Bound<'_, PyAny>) -> Result<Vec<Row>, InputError> {
        let owned = OwnedTable::read(obj, self.table).map_err(|e| InputError::new(self.table, "*", e.to_string()))?;
        let t = owned.table();
        if let Some(ids) = t.optional_column("account_id") {
            let ids = ids.account_ids()?;
            if ids.windows(2).any(|w| w[0] != w[1]) {
                return Err(InputError::new(self.table, "account_id", "what_if takes the rows of one account; found several account_id values"));
            }
        }
        if self.table == "positions" && t.optional_column("unsettled_funding").is_some() {
            // the one-account path has no funding term: refused rather than ignored
            return Err(InputError::new(self.table, "unsettled_funding", "what_if does not read unsettled_funding yet: settle it into the balances passed, or use me.margin"));
        }
        let keys = t.column(self.key_column)?.map_keys(self.index, self.key_column)?;
        let quantity = t.column("quantity")?.f64s(Domain::Finite)?;
        let price = match t.optional_column(self.price_column) {
            Some(c) => c.f64s_nullable(Domain::NonNegative)?,
            None => vec![None; keys.len()],
        };
        Ok(keys.iter().zip(quantity.iter()).zip(price).map(|((k, q), p)| Row { instrument: *k, quantity: *q, price: p }).collect())
    }
}

/// Reads the balances (`{asset: amount}`, `(asset, amount)` tuples or an Arrow table).
fn read_balances(book: &CoreBook, obj: Option<&Bound<'_, PyAny>>) -> Result<Vec<(u32, f64)>, InputError> {
    let reader = RowReader { table: "balances", key_column: "asset", price_column: "price", index: &book.assets.index };
    if let Some(o) = obj.filter(|o| o.hasattr("__arrow_c_stream__").unwrap_or(false) || o.hasattr("__arrow_c_array__").unwrap_or(false)) {
        let owned = OwnedTable::read(o, "balances").map_err(|e| InputError::new("balances", "*", e.to_string()))?;
        let t = owned.table();
        let assets = t.column("asset")?.map_keys(&book.assets.index, "asset")?;
        let amount = t.column("amount")?.f64s(Domain::Finite)?;
        return Ok(assets.into_iter().zip(amount.iter().copied()).collect());
    }
    let rows = reader.read(obj)?;
    Ok(rows.into_iter().map(|r| (r.instrument, r.quantity)).collect())
}

/// Margin of one account before and after `trades` (see `margin_engine.what_if`).
#[pyfunction]
#[pyo3(signature = (book, market, positions, balances, trades, model="standard", premium_asset=None, orders=None))]
#[allow(clippy::too_many_arguments)]
pub fn what_if(
    py: Python<'_>,
    book: &Book,
    market: &Market,
    positions: Option<&Bound<'_, PyAny>>,
    balances: Option<&Bound<'_, PyAny>>,
    trades: Option<&Bound<'_, PyAny>>,
    model: &str,
    premium_asset: Option<&Bound<'_, PyAny>>,
    orders: Option<&Bound<'_, PyAny>>,
) -> PyResult<WhatIf> {
    let portfolio = matches!(parse_model(model)?, margin_core::engine::Model::Portfolio);
    let core_book = &book.inner;
    let index = &core_book.instruments.index;
    let read = || -> Result<_, InputError> {
        let positions = RowReader { table: "positions", key_column: "instrument", price_column: "entry_price", index }.read(positions)?;
        let trades = RowReader { table: "trades", key_column: "instrument", price_column: "price", index }.read(trades)?;
        let orders = RowReader { table: "orders", key_column: "instrument", price_column: "price", index }.read(orders)?;
        let balances = read_balances(core_book, balances)?;
        let premium_asset = match premium_asset.filter(|a| !a.is_none()) {
            None => None,
            Some(a) => Some(key_id(a, &core_book.assets.index).map_err(|k| {
                let mut bad = Offenders::default();
                bad.push(|| k.clone());
                InputError::new("arguments", "premium_asset", "unknown asset (not in the book)").with_offenders(bad)
            })?),
        };
        Ok((positions, balances, trades, premium_asset, orders))
    };
    let w = run_with_gil(py, || {
        let (positions, balances, trades, premium_asset, orders) = read()?;
        margin_core::engine::check_size_rates(core_book, portfolio)?;
        let resolved = market.resolve(core_book, portfolio)?;
        // `resolve` hands out risk arrays only to the portfolio model
        let pricing = Pricing { book: core_book, base: &resolved.market, stress: None, risk: resolved.risk.as_deref() };
        core_whatif::what_if_with_orders(&pricing, &positions, &balances, &trades, premium_asset, &orders)
    })?;
    WhatIf::of(py, &w)
}

impl WhatIf {
    /// The Python object of a core what-if (also `LiveBook.check_order`'s result).
    pub(crate) fn of(py: Python<'_>, w: &core_whatif::WhatIf) -> PyResult<WhatIf> {
        Ok(WhatIf {
            before: Py::new(py, AccountMargin::from(&w.before))?,
            after: Py::new(py, AccountMargin::from(&w.after))?,
            trade_pnl: w.trade_pnl,
            premium: w.premium,
            accepted: w.accepted(),
            initial_margin_change: w.after.initial_margin - w.before.initial_margin,
            maintenance_margin_change: w.after.maintenance_margin - w.before.maintenance_margin,
        })
    }
}
