//! `margin_engine._core`: thin pyo3 bindings over `margin-core`.
//!
//! Each function: extract Arrow inputs through the PyCapsule interface (zero-copy), release the
//! GIL, call the core, turn its `InputError` into `MarginInputError` and any panic into a
//! `RuntimeError` (a panic never crosses the FFI boundary), and return Arrow tables.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use arrow_array::RecordBatch;
use margin_core::book::{Book as CoreBook, BookTables};
use margin_core::engine::{self, Inputs, Model};
use margin_core::market::{Market as CoreMarket, MarketTables};
use margin_core::methodology::BookMethodology;
use margin_core::portfolio::{risk_arrays_batch, RiskArrays};
use margin_core::table::Table;
use margin_core::trace::Phases;
use margin_core::{black76 as b76, hedge, isolated, liquidation, plan, results, roots, stress, InputError};
use numpy::{PyArray1, PyReadonlyArray1};
use pyo3::exceptions::{PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3_arrow::input::AnyRecordBatch;
use pyo3_arrow::PyTable;

mod live;
mod scenario;
mod standard_rules;
mod whatif;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pyo3::create_exception!(
    _core,
    MarginInputError,
    PyValueError,
    "Bad input: names the table, the column and up to 10 offending keys or rows."
);

/// An input table held by Rust: its batches and column names.
pub(crate) struct OwnedTable {
    name: &'static str,
    names: Vec<String>,
    batches: Vec<RecordBatch>,
}

impl OwnedTable {
    pub(crate) fn read(obj: &Bound<'_, PyAny>, name: &'static str) -> PyResult<OwnedTable> {
        let not_arrow = |detail: String| {
            input_error(
                obj.py(),
                &InputError::new(
                    name,
                    "*",
                    format!(
                        "expected an Arrow table (pyarrow, polars, or any object with __arrow_c_stream__ / __arrow_c_array__), got {}{detail}",
                        obj.get_type().name().map(|n| n.to_string()).unwrap_or_default()
                    ),
                ),
            )
        };
        let any: AnyRecordBatch = obj.extract().map_err(|e| not_arrow(format!(" ({e})")))?;
        let table = any.into_table().map_err(|e| not_arrow(format!(" ({})", PyErr::from(e))))?;
        let (batches, schema) = table.into_inner();
        let names = schema.fields().iter().map(|f| f.name().clone()).collect();
        Ok(OwnedTable { name, names, batches })
    }

    pub(crate) fn table(&self) -> Table<'_> {
        Table::new(self.name, &self.names, &self.batches)
    }
}

fn read_optional(obj: Option<&Bound<'_, PyAny>>, name: &'static str) -> PyResult<Option<OwnedTable>> {
    match obj {
        Some(o) if !o.is_none() => Ok(Some(OwnedTable::read(o, name)?)),
        _ => Ok(None),
    }
}

/// `MarginInputError(message)` with `.table`, `.column`, `.problem`, `.offenders`, `.count`.
pub(crate) fn input_error(py: Python<'_>, e: &InputError) -> PyErr {
    let err = MarginInputError::new_err(e.to_string());
    let value = err.value(py);
    let _ = value.setattr("table", &e.table);
    let _ = value.setattr("column", &e.column);
    let _ = value.setattr("problem", &e.problem);
    let _ = value.setattr("offenders", e.examples.clone());
    let _ = value.setattr("count", e.count);
    err
}

/// Runs core work without the GIL; input errors and panics become Python exceptions.
pub(crate) fn run<T: Send>(py: Python<'_>, work: impl FnOnce() -> Result<T, InputError> + Send) -> PyResult<T> {
    settle(py, py.detach(|| catch_unwind(AssertUnwindSafe(work))))
}

/// [`run`] keeping the GIL: for work of a few microseconds (one account), where releasing and
/// re-acquiring the GIL would cost more than the work.
pub(crate) fn run_with_gil<T>(py: Python<'_>, work: impl FnOnce() -> Result<T, InputError>) -> PyResult<T> {
    settle(py, catch_unwind(AssertUnwindSafe(work)))
}

fn settle<T>(py: Python<'_>, outcome: std::thread::Result<Result<T, InputError>>) -> PyResult<T> {
    match outcome {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(input_error(py, &e)),
        Err(panic) => {
            let msg = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_else(|| "unknown panic".into());
            Err(PyRuntimeError::new_err(format!("margin-engine internal error (please report): {msg}")))
        }
    }
}

/// Reads positions (and balances), then, without the GIL and on `threads` threads, resolves the
/// market against the book, groups the rows by account and runs `work` on them.
#[allow(clippy::too_many_arguments)]
fn with_accounts<T: Send>(
    py: Python<'_>,
    book: &Book,
    market: &Market,
    positions: &Bound<'_, PyAny>,
    balances: Option<&Bound<'_, PyAny>>,
    threads: Option<usize>,
    work: impl FnOnce(&CoreBook, &CoreMarket, &Inputs) -> Result<T, InputError> + Send,
) -> PyResult<T> {
    with_accounts_and_orders(py, book, market, positions, balances, None, threads, work)
}

/// [`with_accounts`] with an optional `orders` table (§10) read into the inputs.
#[allow(clippy::too_many_arguments)]
fn with_accounts_and_orders<T: Send>(
    py: Python<'_>,
    book: &Book,
    market: &Market,
    positions: &Bound<'_, PyAny>,
    balances: Option<&Bound<'_, PyAny>>,
    orders: Option<&Bound<'_, PyAny>>,
    threads: Option<usize>,
    work: impl FnOnce(&CoreBook, &CoreMarket, &Inputs) -> Result<T, InputError> + Send,
) -> PyResult<T> {
    let orders = orders.map(|o| OwnedTable::read(o, "orders")).transpose()?;
    let mut phases = Phases::start();
    let positions = OwnedTable::read(positions, "positions")?;
    let balances = balances.map(|b| OwnedTable::read(b, "balances")).transpose()?;
    phases.lap("Arrow tables imported");
    let book = book.inner.clone();
    run(py, || {
        engine::with_threads(threads, || {
            let market = market.resolve(&book, false)?.market;
            phases.lap("market resolved");
            let balances = balances.as_ref().map(|b| b.table());
            let orders = orders.as_ref().map(|o| o.table());
            let inputs = Inputs::new(&book, &market, Some(&positions.table()), balances.as_ref())?.with_orders(&book, &market, orders.as_ref())?;
            let out = work(&book, &market, &inputs);
            phases.lap("work done (incl. output arrays)");
            drop(inputs);
            phases.lap("inputs dropped");
            out
        })?
    })
}

fn to_table(batch: RecordBatch) -> PyResult<PyTable> {
    let schema = batch.schema();
    PyTable::try_new(vec![batch], schema)
}

/// A validated book: instruments, assets, risk parameters and margin tiers.
#[pyclass(module = "margin_engine._core", frozen)]
pub(crate) struct Book {
    pub(crate) inner: Arc<CoreBook>,
}

#[pymethods]
impl Book {
    #[new]
    #[pyo3(signature = (instruments, assets, risk_params=None, margin_tiers=None, methodology=None))]
    fn new(
        py: Python<'_>,
        instruments: &Bound<'_, PyAny>,
        assets: &Bound<'_, PyAny>,
        risk_params: Option<&Bound<'_, PyAny>>,
        margin_tiers: Option<&Bound<'_, PyAny>>,
        methodology: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Book> {
        let instruments = OwnedTable::read(instruments, "instruments")?;
        let assets = OwnedTable::read(assets, "assets")?;
        let risk_params = read_optional(risk_params, "risk_params")?;
        let margin_tiers = read_optional(margin_tiers, "margin_tiers")?;
        let parts = match methodology {
            None => None,
            Some(m) => Some(scenario::book_methodology_parts(m).map_err(|e| input_error(py, &e))?),
        };
        let book = run(py, || {
            let mut book = CoreBook::new(BookTables {
                instruments: instruments.table(),
                assets: assets.table(),
                risk_params: risk_params.as_ref().map(|t| t.table()),
                margin_tiers: margin_tiers.as_ref().map(|t| t.table()),
            })?;
            if let Some((name, portfolio, standard)) = parts {
                book.methodology = BookMethodology::new(name, portfolio, standard, &book.underlyings.names)?;
                book.check_methodology_settlement()?;
            }
            Ok(book)
        })?;
        Ok(Book { inner: Arc::new(book) })
    }

    /// The methodology's name (`v1` without one).
    #[getter]
    fn methodology_name(&self) -> String {
        self.inner.methodology.name.clone()
    }

    /// Underlying names in id order (sorted).
    #[getter]
    fn underlyings(&self) -> Vec<String> {
        self.inner.underlyings.names.clone()
    }

    #[getter]
    fn num_instruments(&self) -> usize {
        self.inner.instruments.len()
    }
}

/// Market data validated on its own, resolved against a book on first use and cached for the
/// last book it was used with (with that book's risk arrays once the portfolio model asks).
#[pyclass(module = "margin_engine._core", frozen)]
pub(crate) struct Market {
    inner: Arc<MarketTables>,
    resolved: Mutex<Option<Resolved>>,
}

/// A market resolved against one book.
#[derive(Clone)]
struct Resolved {
    book: Arc<CoreBook>,
    market: Arc<CoreMarket>,
    risk: Option<Arc<RiskArrays>>,
}

impl Market {
    /// The market resolved against `book`, from the cache when it was last resolved against the
    /// same book, with its risk arrays if and only if `with_risk` (the portfolio model): a
    /// standard-model caller never sees risk arrays cached by an earlier portfolio call.
    /// Called without the GIL.
    pub(crate) fn resolve(&self, book: &Arc<CoreBook>, with_risk: bool) -> Result<Resolved, InputError> {
        let mut cache = self.resolved.lock().unwrap_or_else(|e| e.into_inner());
        let hit = cache.as_ref().is_some_and(|r| Arc::ptr_eq(&r.book, book));
        if !hit {
            let market = Arc::new(CoreMarket::resolve(book, &self.inner)?);
            *cache = Some(Resolved { book: book.clone(), market, risk: None });
        }
        let resolved = cache.as_mut().expect("filled above");
        if with_risk && resolved.risk.is_none() {
            resolved.risk = Some(Arc::new(RiskArrays::new(book, &resolved.market)));
        }
        let mut out = resolved.clone();
        if !with_risk {
            out.risk = None;
        }
        Ok(out)
    }
}

#[pymethods]
impl Market {
    #[new]
    #[pyo3(signature = (index_prices, marks, valuation_time_ns, expiry_feeds=None))]
    fn new(
        py: Python<'_>,
        index_prices: &Bound<'_, PyAny>,
        marks: &Bound<'_, PyAny>,
        valuation_time_ns: i64,
        expiry_feeds: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<Market> {
        let index_prices = OwnedTable::read(index_prices, "index_prices")?;
        let marks = OwnedTable::read(marks, "marks")?;
        let feeds = read_optional(expiry_feeds, "expiry_feeds")?;
        let tables = run(py, || {
            let tables = MarketTables::new(&index_prices.table(), &marks.table(), valuation_time_ns)?;
            match &feeds {
                Some(f) => tables.with_expiry_feeds(&f.table()),
                None => Ok(tables),
            }
        })?;
        Ok(Market { inner: Arc::new(tables), resolved: Mutex::new(None) })
    }

    #[getter]
    fn valuation_time_ns(&self) -> i64 {
        self.inner.valuation_ns
    }
}

pub(crate) fn parse_model(model: &str) -> PyResult<Model> {
    match model {
        "standard" => Ok(Model::Standard),
        "portfolio" => Ok(Model::Portfolio),
        other => Err(MarginInputError::new_err(format!("arguments.model: model must be 'standard' or 'portfolio', got {other:?}"))),
    }
}

/// Margin of every account (§6 columns).
#[pyfunction]
#[pyo3(signature = (book, market, positions, balances, model="standard", threads=None, orders=None))]
#[allow(clippy::too_many_arguments)]
fn margin(
    py: Python<'_>,
    book: &Book,
    market: &Market,
    positions: &Bound<'_, PyAny>,
    balances: &Bound<'_, PyAny>,
    model: &str,
    threads: Option<usize>,
    orders: Option<&Bound<'_, PyAny>>,
) -> PyResult<PyTable> {
    let model = parse_model(model)?;
    let (shared_book, cache) = (book.inner.clone(), market);
    let batch = with_accounts_and_orders(py, book, market, positions, Some(balances), orders, threads, |book, market, inputs| {
            // the portfolio model's risk arrays, computed once per (book, market) and cached
            let risk = match model {
                Model::Standard => None,
                Model::Portfolio => cache.resolve(&shared_book, true)?.risk,
            };
            let columns = engine::margin_columns(book, market, inputs, risk.as_deref())?;
            let mut phases = Phases::start();
            let batch = columns.into_batch();
            phases.lap("margin output columns");
            Ok(batch)
    })?;
    let mut phases = Phases::start();
    let t = to_table(batch);
    phases.lap("to pyarrow");
    t
}

/// Greeks per account × underlying (§7 columns).
#[pyfunction]
#[pyo3(signature = (book, market, positions, threads=None))]
fn greeks(py: Python<'_>, book: &Book, market: &Market, positions: &Bound<'_, PyAny>, threads: Option<usize>) -> PyResult<PyTable> {
    let batch = with_accounts(py, book, market, positions, None, threads, |book, market, inputs| {
            let rows = engine::greeks(&book, &market, &inputs)?;
            results::greeks_batch(&book, &rows)
    })?;
    to_table(batch)
}

/// A market moved by `stress` (underlying → relative move), or the market itself.
fn stressed(book: &CoreBook, market: &CoreMarket, stress: &Option<Vec<(String, f64)>>) -> Result<Option<(CoreMarket, Vec<f64>)>, InputError> {
    match stress {
        None => Ok(None),
        Some(named) => {
            let moves = stress::moves_by_underlying(book, named)?;
            Ok(Some((stress::stress_market(book, market, &moves), stress::stress_asset_prices(book, &moves))))
        }
    }
}

/// The liquidation scan (§8): margin columns plus `shortfall`, most severe first; optionally
/// under a stress and with each account's nearest liquidation move.
#[pyfunction]
#[pyo3(signature = (book, market, positions, balances, model="standard", stress=None, distance=false, threads=None, orders=None))]
#[allow(clippy::too_many_arguments)]
fn liquidation_scan(
    py: Python<'_>,
    book: &Book,
    market: &Market,
    positions: &Bound<'_, PyAny>,
    balances: &Bound<'_, PyAny>,
    model: &str,
    stress: Option<Vec<(String, f64)>>,
    distance: bool,
    threads: Option<usize>,
    orders: Option<&Bound<'_, PyAny>>,
) -> PyResult<PyTable> {
    let model = parse_model(model)?;
    if distance && stress.is_some() {
        return Err(MarginInputError::new_err("arguments.distance: distance=True is measured from the current market; pass stress=None"));
    }
    let batch = with_accounts_and_orders(py, book, market, positions, Some(balances), orders, threads, |book, market, inputs| {
            let moved = stressed(&book, &market, &stress)?;
            let stress = moved.as_ref().map(|(m, a)| engine::Stress { market: m, asset_price: a });
            let rows = engine::margin_under(&book, &market, stress, &inputs, model)?;
            let nearest = if distance {
                let d = roots::exact_distances(&book, &market, &inputs, model, &rows);
                Some(liquidation::nearest_by_account(&rows, &d))
            } else {
                None
            };
            let order = liquidation::scan_order(&rows);
            Ok(results::scan_batch(&book, &rows, &order, nearest.as_deref()))
    })?;
    to_table(batch)
}

/// Every account under every scenario of simulated paths (`moves[s][j]`: the move of
/// `underlyings[j]` in scenario `s`, `days` scenarios a path), summarized: per-scenario totals
/// and per-account path counts (see `margin_core::paths`).
#[pyfunction]
#[pyo3(signature = (book, market, positions, balances, underlyings, moves, days, model="standard", threads=None, paths_per_block=None))]
#[allow(clippy::too_many_arguments)]
fn stressed_paths(
    py: Python<'_>,
    book: &Book,
    market: &Market,
    positions: &Bound<'_, PyAny>,
    balances: &Bound<'_, PyAny>,
    underlyings: Vec<String>,
    moves: Vec<Vec<f64>>,
    days: usize,
    model: &str,
    threads: Option<usize>,
    paths_per_block: Option<usize>,
) -> PyResult<(PyTable, PyTable)> {
    let model = parse_model(model)?;
    let (totals, accounts) = with_accounts(py, book, market, positions, Some(balances), threads, |book, market, inputs| {
        let mut by_underlying = Vec::with_capacity(moves.len());
        for (s, row) in moves.iter().enumerate() {
            if row.len() != underlyings.len() {
                return Err(InputError::new("arguments", "moves", format!("scenario {s} has {} moves for {} underlyings", row.len(), underlyings.len())));
            }
            let named: Vec<(String, f64)> = underlyings.iter().cloned().zip(row.iter().copied()).collect();
            by_underlying.push(stress::moves_by_underlying(&book, &named)?);
        }
        let (totals, accounts) = margin_core::paths::stressed_paths_in_blocks(&book, &market, &inputs, model, &by_underlying, days, paths_per_block)?;
        Ok((results::scenario_totals_batch(&totals), results::account_totals_batch(&accounts)))
    })?;
    Ok((to_table(totals)?, to_table(accounts)?))
}

/// Distance to liquidation per account × underlying (§8): the exact roots (docs/liquidation.md §3).
#[pyfunction]
#[pyo3(signature = (book, market, positions, balances, model="standard", threads=None))]
fn liquidation_distance(
    py: Python<'_>,
    book: &Book,
    market: &Market,
    positions: &Bound<'_, PyAny>,
    balances: &Bound<'_, PyAny>,
    model: &str,
    threads: Option<usize>,
) -> PyResult<PyTable> {
    liquidation_walk(py, book, market, positions, balances, model, threads, Walked::Distance)
}

/// The former distance: the grid walk (±0.5% steps out to ±50%, linear interpolation), kept for
/// the benchmark against the exact roots and for the map.
#[pyfunction]
#[pyo3(signature = (book, market, positions, balances, model="standard", threads=None))]
fn liquidation_distance_grid(
    py: Python<'_>,
    book: &Book,
    market: &Market,
    positions: &Bound<'_, PyAny>,
    balances: &Bound<'_, PyAny>,
    model: &str,
    threads: Option<usize>,
) -> PyResult<PyTable> {
    liquidation_walk(py, book, market, positions, balances, model, threads, Walked::Grid)
}

/// Exact liquidation prices per account × underlying, with the index price and how each root
/// was found (`method`).
#[pyfunction]
#[pyo3(signature = (book, market, positions, balances, model="standard", threads=None))]
fn liquidation_prices(
    py: Python<'_>,
    book: &Book,
    market: &Market,
    positions: &Bound<'_, PyAny>,
    balances: &Bound<'_, PyAny>,
    model: &str,
    threads: Option<usize>,
) -> PyResult<PyTable> {
    liquidation_walk(py, book, market, positions, balances, model, threads, Walked::Prices)
}

/// The liquidation map: per underlying × grid level, accounts / notional / collateral crossing
/// into liquidation there.
#[pyfunction]
#[pyo3(signature = (book, market, positions, balances, model="standard", threads=None))]
fn liquidation_map(
    py: Python<'_>,
    book: &Book,
    market: &Market,
    positions: &Bound<'_, PyAny>,
    balances: &Bound<'_, PyAny>,
    model: &str,
    threads: Option<usize>,
) -> PyResult<PyTable> {
    liquidation_walk(py, book, market, positions, balances, model, threads, Walked::Map)
}

/// What a distance call returns.
#[derive(Clone, Copy, PartialEq)]
enum Walked {
    Distance,
    Grid,
    Prices,
    Map,
}

impl Walked {
    fn name(self) -> &'static str {
        match self {
            Walked::Distance => "liquidation_distance",
            Walked::Grid => "liquidation_distance_grid",
            Walked::Prices => "liquidation_prices",
            Walked::Map => "liquidation_map",
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn liquidation_walk(
    py: Python<'_>,
    book: &Book,
    market: &Market,
    positions: &Bound<'_, PyAny>,
    balances: &Bound<'_, PyAny>,
    model: &str,
    threads: Option<usize>,
    walked: Walked,
) -> PyResult<PyTable> {
    let model = parse_model(model)?;
    let batch = with_accounts(py, book, market, positions, Some(balances), threads, |book, market, inputs| {
            // the exact roots margin the whole account where the book's methodology needs it; the
            // grid walk (and the map built on it) reads v1's risk arrays directly
            if matches!(walked, Walked::Grid | Walked::Map) {
                engine::check_v1_portfolio(book, model, walked.name())?;
            }
            let rows = engine::margin(&book, &market, &inputs, model)?;
            Ok(match walked {
                Walked::Map => {
                    let d = liquidation::distances(&book, &market, &inputs, model, &rows)?;
                    results::map_batch(&book, &market.index_price, &liquidation::liquidation_map(&book, &d))
                }
                Walked::Grid => results::distance_batch(&book, &market.index_price, &liquidation::distances(&book, &market, &inputs, model, &rows)?),
                Walked::Distance => results::distance_batch(&book, &market.index_price, &roots::exact_distances(&book, &market, &inputs, model, &rows)),
                Walked::Prices => results::prices_batch(&book, &market.index_price, &roots::exact_distances(&book, &market, &inputs, model, &rows)),
            })
    })?;
    to_table(batch)
}

/// Liquidation plans (docs/liquidation.md): (closes, accounts, underlyings, adl) tables and the
/// fee / insurance fund totals.
#[pyfunction]
#[pyo3(signature = (book, market, positions, balances, model="standard", liquidation_fee=0.01, liquidator_share=0.5, buffer=0.0, insurance_fund=0.0, stress=None, threads=None))]
#[allow(clippy::too_many_arguments)]
fn liquidation_plan(
    py: Python<'_>,
    book: &Book,
    market: &Market,
    positions: &Bound<'_, PyAny>,
    balances: &Bound<'_, PyAny>,
    model: &str,
    liquidation_fee: f64,
    liquidator_share: f64,
    buffer: f64,
    insurance_fund: f64,
    stress: Option<Vec<(String, f64)>>,
    threads: Option<usize>,
) -> PyResult<(PyTable, PyTable, PyTable, PyTable, f64, f64, f64)> {
    let model = parse_model(model)?;
    let check = |name: &str, v: f64, ok: bool| -> PyResult<()> {
        if ok && v.is_finite() {
            Ok(())
        } else {
            Err(input_error(py, &InputError::new("arguments", name, format!("invalid value {v}"))))
        }
    };
    check("liquidation_fee", liquidation_fee, (0.0..1.0).contains(&liquidation_fee))?;
    check("liquidator_share", liquidator_share, (0.0..=1.0).contains(&liquidator_share))?;
    check("buffer", buffer, buffer >= 0.0)?;
    check("insurance_fund", insurance_fund, insurance_fund >= 0.0)?;
    let params = plan::PlanParams { liquidation_fee, liquidator_share, buffer, insurance_fund };
    let (batches, totals) = with_accounts(py, book, market, positions, Some(balances), threads, |book, market, inputs| {
            engine::check_v1_portfolio(book, model, "liquidation_plan")?;
            engine::check_no_inverse_positions(book, inputs, "liquidation_plan")?;
            let moved = stressed(&book, &market, &stress)?;
            let stress = moved.as_ref().map(|(m, a)| engine::Stress { market: m, asset_price: a });
            let rows = engine::margin_under(&book, &market, stress, &inputs, model)?;
            let stressed_market = moved.as_ref().map(|(m, _)| m);
            let liquidation = plan::liquidate(&book, &market, stressed_market, &inputs, model, &rows, &params);
            let adl = plan::adl_queues(&book, &market, stressed_market, &inputs, &rows, &liquidation);
            let totals = (liquidation.liquidator_fees, liquidation.insurance_fees, liquidation.insurance_fund_after);
            Ok((results::plan_batches(&book, &liquidation, &params, &adl), totals))
    })?;
    let [closes, accounts, underlyings, adl] = batches;
    Ok((to_table(closes)?, to_table(accounts)?, to_table(underlyings)?, to_table(adl)?, totals.0, totals.1, totals.2))
}

/// Isolated positions, each given as an account of its own (positions: its rows; balances: its
/// isolated collateral): the §6 columns plus `liquidation_price` (see margin_core::isolated).
#[pyfunction]
#[pyo3(signature = (book, market, positions, balances, model="standard", maintenance_basis="mark", threads=None))]
#[allow(clippy::too_many_arguments)]
fn isolated_margin(
    py: Python<'_>,
    book: &Book,
    market: &Market,
    positions: &Bound<'_, PyAny>,
    balances: &Bound<'_, PyAny>,
    model: &str,
    maintenance_basis: &str,
    threads: Option<usize>,
) -> PyResult<PyTable> {
    let model = parse_model(model)?;
    let basis = isolated::MaintenanceBasis::parse(maintenance_basis).map_err(|e| input_error(py, &e))?;
    let (shared_book, cache) = (book.inner.clone(), market);
    let batch = with_accounts(py, book, market, positions, Some(balances), threads, |book, market, inputs| {
        let risk = match model {
            Model::Standard => None,
            Model::Portfolio => {
                engine::check_v1_portfolio(book, model, "isolated_margin")?;
                cache.resolve(&shared_book, true)?.risk
            }
        };
        let rows = isolated::isolated_margin(book, market, inputs, model, risk.as_deref(), basis)?;
        Ok(isolated::isolated_batch(&rows))
    })?;
    to_table(batch)
}

/// Minimum-margin hedge per account × hedge instrument (exact; see margin_core::hedge).
#[pyfunction]
#[pyo3(signature = (book, market, positions, balances, hedge_instruments, model="portfolio", objective="maintenance", threads=None))]
#[allow(clippy::too_many_arguments)]
fn optimal_hedge(
    py: Python<'_>,
    book: &Book,
    market: &Market,
    positions: &Bound<'_, PyAny>,
    balances: &Bound<'_, PyAny>,
    hedge_instruments: Vec<String>,
    model: &str,
    objective: &str,
    threads: Option<usize>,
) -> PyResult<PyTable> {
    let model = parse_model(model)?;
    let objective = match objective {
        "maintenance" => hedge::Objective::Maintenance,
        "initial" => hedge::Objective::Initial,
        other => {
            return Err(MarginInputError::new_err(format!(
                "arguments.objective: objective must be 'maintenance' or 'initial', got {other:?}"
            )))
        }
    };
    let batch = with_accounts(py, book, market, positions, Some(balances), threads, |book, market, inputs| {
            engine::check_v1_portfolio(book, model, "optimal_hedge")?;
            engine::check_no_inverse_positions(book, inputs, "optimal_hedge")?;
            let hedges = hedge::hedge_ids(book, market, &hedge_instruments)?;
            let mut inverse = margin_core::error::Offenders::default();
            for (i, id) in hedges.iter().enumerate() {
                if book.instruments.inverse[*id as usize] {
                    inverse.push(|| format!("'{}'", hedge_instruments[i]));
                }
            }
            inverse.into_result("arguments", "hedge_instruments", "optimal_hedge does not support inverse (coin-settled) hedge instruments yet")?;
            let rows = engine::margin(&book, &market, &inputs, model)?;
            let hedges = hedge::optimal_hedges(&book, &market, &inputs, model, objective, &hedges, &rows);
            Ok(results::hedge_batch(&book, &hedges))
    })?;
    to_table(batch)
}

/// Per account × portfolio × scenario row, the weighted P&L under the book's scenario
/// methodology.
#[pyfunction]
#[pyo3(signature = (book, market, positions, balances, threads=None))]
fn scenario_losses(
    py: Python<'_>,
    book: &Book,
    market: &Market,
    positions: &Bound<'_, PyAny>,
    balances: &Bound<'_, PyAny>,
    threads: Option<usize>,
) -> PyResult<PyTable> {
    let batch = with_accounts(py, book, market, positions, Some(balances), threads, |book, market, inputs| {
        let rows = engine::scenario_losses(book, market, inputs)?;
        Ok(results::scenario_losses_batch(book, &rows))
    })?;
    to_table(batch)
}

/// Per-contract scenario P&L of every instrument with a mark (§4), long format.
#[pyfunction]
fn risk_arrays(py: Python<'_>, book: &Book, market: &Market) -> PyResult<PyTable> {
    let book = book.inner.clone();
    let batch = run(py, || {
        if book.methodology.portfolio.is_some() {
            let resolved = market.resolve(&book, false)?;
            let rows = engine::scenario_risk_arrays(&book, &resolved.market).unwrap_or_default();
            if let Some(&(id, _, _)) = rows.iter().find(|r| !r.2.is_finite()) {
                return Err(InputError::new("marks", "mark_price", format!("a scenario P&L overflows float64 for instrument '{}'", book.instruments.labels[id as usize])));
            }
            return Ok(results::scenario_risk_arrays_batch(&book, &rows));
        }
        let risk = market.resolve(&book, true)?.risk.expect("resolved with risk arrays");
        risk.check_finite(&book)?;
        Ok(risk_arrays_batch(&book, &risk))
    })?;
    to_table(batch)
}

type Arrays<'py> = (
    Bound<'py, PyArray1<f64>>,
    Bound<'py, PyArray1<f64>>,
    Bound<'py, PyArray1<f64>>,
    Bound<'py, PyArray1<f64>>,
    Bound<'py, PyArray1<f64>>,
);

/// Black-76 price, delta, gamma, vega, theta over equal-length float64 / bool arrays (§5).
#[pyfunction]
fn black76<'py>(
    py: Python<'py>,
    forward: PyReadonlyArray1<'py, f64>,
    strike: PyReadonlyArray1<'py, f64>,
    time: PyReadonlyArray1<'py, f64>,
    vol: PyReadonlyArray1<'py, f64>,
    is_call: PyReadonlyArray1<'py, bool>,
) -> PyResult<Arrays<'py>> {
    let (f, k, t, v, c) = (forward.as_slice()?, strike.as_slice()?, time.as_slice()?, vol.as_slice()?, is_call.as_slice()?);
    let n = f.len();
    if [k.len(), t.len(), v.len(), c.len()].iter().any(|l| *l != n) {
        return Err(PyValueError::new_err("black76: all inputs must have the same length"));
    }
    let g = run(py, || {
        b76::check_inputs(f, k, t, v)?;
        Ok(b76::greeks_batch(f, k, t, v, c))
    })?;
    let col = |x: fn(&b76::Greeks) -> f64| PyArray1::from_vec(py, g.iter().map(x).collect());
    Ok((col(|g| g.price), col(|g| g.delta), col(|g| g.gamma), col(|g| g.vega), col(|g| g.theta)))
}

#[pymodule]
fn _core(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("MarginInputError", m.py().get_type::<MarginInputError>())?;
    m.add_class::<Book>()?;
    m.add_class::<Market>()?;
    m.add_function(wrap_pyfunction!(margin, m)?)?;
    m.add_function(wrap_pyfunction!(greeks, m)?)?;
    m.add_function(wrap_pyfunction!(stressed_paths, m)?)?;
    m.add_function(wrap_pyfunction!(risk_arrays, m)?)?;
    m.add_function(wrap_pyfunction!(scenario_losses, m)?)?;
    m.add_function(wrap_pyfunction!(liquidation_scan, m)?)?;
    m.add_function(wrap_pyfunction!(liquidation_distance, m)?)?;
    m.add_function(wrap_pyfunction!(liquidation_distance_grid, m)?)?;
    m.add_function(wrap_pyfunction!(liquidation_prices, m)?)?;
    m.add_function(wrap_pyfunction!(liquidation_map, m)?)?;
    m.add_function(wrap_pyfunction!(liquidation_plan, m)?)?;
    m.add_function(wrap_pyfunction!(optimal_hedge, m)?)?;
    m.add_function(wrap_pyfunction!(isolated_margin, m)?)?;
    m.add_function(wrap_pyfunction!(black76, m)?)?;
    m.add_function(wrap_pyfunction!(whatif::what_if, m)?)?;
    m.add_function(wrap_pyfunction!(scenario::scenario_margin, m)?)?;
    m.add_function(wrap_pyfunction!(standard_rules::standard_rules_margin, m)?)?;
    m.add_class::<whatif::AccountMargin>()?;
    m.add_class::<whatif::WhatIf>()?;
    live::register(m)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
