//! margin-core: the margin engine's kernels over Arrow data. Knows nothing of Python.
//!
//! Read it in the order of the methodology:
//! - [`table`]: reading and validating input columns (zero-copy where possible);
//! - [`book`], [`market`]: the validated book and market data, keys mapped to dense ids;
//! - [`accounts`], [`rows`]: grouping rows by account (radix sort), one slot per account;
//! - [`valuation`]: netting and collateral (§2);
//! - [`standard`] (§3), [`portfolio`] (§4), [`black76`] (§5), [`greeks`] (§7);
//! - [`results`]: account rows, status (§6) and their Arrow form;
//! - [`engine`]: parallel orchestration, bit-identical for any thread count;
//! - [`whatif`]: one account before and after a trade, for order entry;
//! - [`methodology`]: the scenario engine driven by a methodology as data, not yet wired into [`engine`].

pub mod accounts;
pub mod black76;
pub mod book;
pub mod engine;
pub mod error;
pub mod greeks;
pub mod hedge;
pub mod liquidation;
pub mod market;
pub mod methodology;
pub mod plan;
pub mod portfolio;
pub mod results;
pub mod rows;
pub mod standard;
pub mod stress;
pub mod table;
pub mod trace;
pub mod valuation;
pub mod whatif;

pub use error::{InputError, Result};
