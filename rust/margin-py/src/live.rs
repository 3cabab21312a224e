//! `LiveBook`: thin binding of `margin_core::live` (the live risk book, docs/live.md).
//!
//! Batches run without the GIL (they may sync a journal); `check_order` and `account` keep it
//! (microseconds of work, where releasing the GIL would cost more).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use margin_core::engine::Inputs;
use margin_core::live::{self, events, Changes, Config, LiveBook as CoreLive, LiveError, MarketState};
use margin_core::table::Key;
use margin_core::InputError;
use pyo3::exceptions::{PyOSError, PyRuntimeError};
use pyo3::prelude::*;
use pyo3::types::PyString;
use pyo3_arrow::PyTable;

use crate::whatif::{AccountMargin, WhatIf};
use crate::{input_error, parse_model, to_table, Book, Market, OwnedTable};

fn panic_error(panic: Box<dyn std::any::Any + Send>) -> PyErr {
    let msg = panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into());
    PyRuntimeError::new_err(format!("margin-engine internal error (please report): {msg}"))
}

fn live_error(py: Python<'_>, e: LiveError) -> PyErr {
    match e {
        LiveError::Input(e) => input_error(py, &e),
        LiveError::Io(e) => PyOSError::new_err(e),
    }
}

/// Runs `work` without the GIL; input errors become `MarginInputError`, journal errors `OSError`.
fn run_live<T: Send>(py: Python<'_>, work: impl FnOnce() -> Result<T, LiveError> + Send) -> PyResult<T> {
    match py.detach(|| catch_unwind(AssertUnwindSafe(work))) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(live_error(py, e)),
        Err(panic) => Err(panic_error(panic)),
    }
}

fn read_table(obj: &Bound<'_, PyAny>, name: &'static str) -> PyResult<OwnedTable> {
    OwnedTable::read(obj, name)
}

/// A live risk book: accounts held in Rust, changed by batches of events.
#[pyclass(module = "margin_engine._core", frozen)]
pub struct LiveBook {
    inner: Mutex<CoreLive>,
}

type ChangesTuple = (PyTable, usize, usize, u64);

fn changes(c: Changes) -> PyResult<ChangesTuple> {
    Ok((to_table(live::changes_batch(&c.changes))?, c.remargined, c.events, c.seq))
}

impl LiveBook {
    fn lock(&self) -> MutexGuard<'_, CoreLive> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn apply(&self, py: Python<'_>, read: impl FnOnce(&margin_core::book::Book) -> Result<events::Batch, InputError> + Send) -> PyResult<ChangesTuple> {
        let c = run_live(py, || {
            let mut live = self.lock();
            let batch = read(&live.book)?;
            live.apply(batch)
        })?;
        changes(c)
    }
}

#[pymethods]
impl LiveBook {
    #[new]
    #[pyo3(signature = (book, market, positions, balances, orders=None, model="standard", allow_negative_balances=true, premium_asset=None, journal=None, expiry_feeds=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        book: &Book,
        market: &Market,
        positions: &Bound<'_, PyAny>,
        balances: &Bound<'_, PyAny>,
        orders: Option<&Bound<'_, PyAny>>,
        model: &str,
        allow_negative_balances: bool,
        premium_asset: Option<String>,
        journal: Option<PathBuf>,
        expiry_feeds: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<LiveBook> {
        let model = parse_model(model)?;
        let positions = read_table(positions, "positions")?;
        let balances = read_table(balances, "balances")?;
        let orders = orders.filter(|o| !o.is_none()).map(|o| read_table(o, "orders")).transpose()?;
        // the market's expiry feeds as given (the parsed ones are in the market's tables)
        let feeds = expiry_feeds.filter(|o| !o.is_none()).map(|o| read_table(o, "expiry_feeds")).transpose()?;
        let shared = book.inner.clone();
        let premium_asset = match premium_asset {
            None => None,
            Some(a) => Some(shared.assets.index.get_str(&a).ok_or_else(|| {
                input_error(py, &InputError::new("arguments", "premium_asset", format!("unknown asset '{a}' (not in the book)")))
            })?),
        };
        let config = Config { model, allow_negative_balances, premium_asset };
        let live = run_live(py, || {
            let resolved = market.resolve(&shared, false)?;
            let inputs = Inputs::new(&shared, &resolved.market, Some(&positions.table()), Some(&balances.table()))?;
            let orders = match &orders {
                Some(o) => events::read_orders(&o.table(), &shared)?,
                None => Vec::new(),
            };
            let state = MarketState::new(market.inner.as_ref().clone(), feeds.map(|f| (f.names, f.batches)));
            let mut live = CoreLive::new(shared.clone(), state, &inputs, orders, config)?;
            if let Some(dir) = &journal {
                live.create_journal(dir)?;
            }
            Ok(live)
        })?;
        Ok(LiveBook { inner: Mutex::new(live) })
    }

    /// The book in `journal`: its last snapshot and the journal's batches after it.
    #[staticmethod]
    fn open(py: Python<'_>, book: &Book, journal: PathBuf) -> PyResult<LiveBook> {
        let shared = book.inner.clone();
        let live = run_live(py, || CoreLive::open(&journal, shared))?;
        Ok(LiveBook { inner: Mutex::new(live) })
    }

    fn apply_fills(&self, py: Python<'_>, fills: &Bound<'_, PyAny>) -> PyResult<ChangesTuple> {
        let t = read_table(fills, "fills")?;
        self.apply(py, |book| Ok(events::Batch::Fills(events::read_fills(&t.table(), book)?)))
    }

    fn apply_transfers(&self, py: Python<'_>, transfers: &Bound<'_, PyAny>) -> PyResult<ChangesTuple> {
        let t = read_table(transfers, "transfers")?;
        self.apply(py, |book| Ok(events::Batch::Transfers(events::read_transfers(&t.table(), book)?)))
    }

    fn place_orders(&self, py: Python<'_>, orders: &Bound<'_, PyAny>) -> PyResult<ChangesTuple> {
        let t = read_table(orders, "orders")?;
        self.apply(py, |book| Ok(events::Batch::PlaceOrders(events::read_orders(&t.table(), book)?)))
    }

    fn cancel_orders(&self, py: Python<'_>, order_ids: &Bound<'_, PyAny>) -> PyResult<ChangesTuple> {
        let t = read_table(order_ids, "order_ids")?;
        self.apply(py, |_| Ok(events::Batch::CancelOrders(events::read_cancels(&t.table())?)))
    }

    #[pyo3(signature = (index_prices=None, marks=None, valuation_time_ns=None))]
    fn update_market(
        &self,
        py: Python<'_>,
        index_prices: Option<&Bound<'_, PyAny>>,
        marks: Option<&Bound<'_, PyAny>>,
        valuation_time_ns: Option<i64>,
    ) -> PyResult<ChangesTuple> {
        let index = index_prices.filter(|o| !o.is_none()).map(|o| read_table(o, "index_prices")).transpose()?;
        let marks = marks.filter(|o| !o.is_none()).map(|o| read_table(o, "marks")).transpose()?;
        self.apply(py, |book| {
            let (i, m) = (index.as_ref().map(|t| t.table()), marks.as_ref().map(|t| t.table()));
            Ok(events::Batch::Market(events::read_market(i.as_ref(), m.as_ref(), valuation_time_ns, book)?))
        })
    }

    /// `me.what_if` of one trade on the account's current rows.
    fn check_order(&self, py: Python<'_>, account_id: u64, instrument: &Bound<'_, PyAny>, quantity: f64, price: f64) -> PyResult<WhatIf> {
        let live = self.lock();
        let index = &live.book.instruments.index;
        let id = if let Ok(s) = instrument.cast::<PyString>() {
            index.get_str(s.to_str()?)
        } else if let (Ok(i), false) = (instrument.extract::<i64>(), instrument.is_instance_of::<pyo3::types::PyBool>()) {
            index.get(&Key::Int(i))
        } else {
            None
        };
        let Some(id) = id else {
            let key = instrument.repr().map(|r| r.to_string()).unwrap_or_default();
            return Err(input_error(py, &InputError::new("trades", "instrument", format!("unknown instrument {key} (not in the book)"))));
        };
        let w = match catch_unwind(AssertUnwindSafe(|| live.check_order(account_id, id, quantity, price))) {
            Ok(Ok(w)) => w,
            Ok(Err(e)) => return Err(input_error(py, &e)),
            Err(panic) => return Err(panic_error(panic)),
        };
        drop(live);
        WhatIf::of(py, &w)
    }

    fn margin(&self, py: Python<'_>) -> PyResult<PyTable> {
        let batch = run_live(py, || Ok(self.lock().margin()))?;
        to_table(batch)
    }

    fn account(&self, py: Python<'_>, account_id: u64) -> PyResult<AccountMargin> {
        match self.lock().account(account_id) {
            Some(row) => Ok(AccountMargin::from(row)),
            None => Err(input_error(py, &InputError::new("arguments", "account_id", format!("unknown account {account_id}")))),
        }
    }

    fn snapshot(&self, py: Python<'_>) -> PyResult<()> {
        run_live(py, || self.lock().snapshot())
    }

    fn positions(&self, py: Python<'_>) -> PyResult<PyTable> {
        to_table(run_live(py, || Ok(self.lock().positions()))?)
    }

    fn balances(&self, py: Python<'_>) -> PyResult<PyTable> {
        to_table(run_live(py, || Ok(self.lock().balances()))?)
    }

    fn orders(&self, py: Python<'_>) -> PyResult<PyTable> {
        to_table(run_live(py, || Ok(self.lock().orders()))?)
    }

    /// `(index_prices, marks, valuation_time_ns, expiry_feeds or None)` of the current market.
    fn market_tables(&self, py: Python<'_>) -> PyResult<(PyTable, PyTable, i64, Option<PyTable>)> {
        let (index, marks, ns, feeds) = run_live(py, || {
            let live = self.lock();
            let (i, m) = live.market_state.tables(&live.book);
            Ok((i, m, live.market_state.valuation_ns(), live.market_state.feeds.clone()))
        })?;
        let feeds = match feeds {
            None => None,
            Some((_, batches)) => match batches.first() {
                Some(first) => Some(PyTable::try_new(batches.clone(), first.schema())?),
                None => None,
            },
        };
        Ok((to_table(index)?, to_table(marks)?, ns, feeds))
    }

    #[getter]
    fn seq(&self) -> u64 {
        self.lock().seq
    }

    #[getter]
    fn num_accounts(&self) -> usize {
        self.lock().state.accounts.len()
    }

    #[getter]
    fn model(&self) -> &'static str {
        match self.lock().config.model {
            margin_core::engine::Model::Standard => "standard",
            margin_core::engine::Model::Portfolio => "portfolio",
        }
    }

    #[getter]
    fn allow_negative_balances(&self) -> bool {
        self.lock().config.allow_negative_balances
    }

    #[getter]
    fn premium_asset(&self) -> Option<String> {
        let live = self.lock();
        live.config.premium_asset.map(|a| live.book.assets.labels[a as usize].clone())
    }

    #[getter]
    fn journal(&self) -> bool {
        self.lock().journal.is_some()
    }

    /// Test hook of the crash tests: pause at a named point of the durable path (see
    /// `margin_core::live::journal::set_failpoint`); `None` clears it.
    #[staticmethod]
    #[pyo3(signature = (name=None, delay_us=0, fd=-1))]
    fn _set_failpoint(name: Option<String>, delay_us: u64, fd: i32) {
        live::journal::set_failpoint(name.map(|n| (n, delay_us, fd)));
    }
}

/// Registers the live book's classes.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<LiveBook>()
}
