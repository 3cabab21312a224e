//! Inputs: Arrow columns read and validated, keys mapped to dense ids, rows grouped by account.
//!
//! - [`table`]: reading and validating input columns (zero-copy where possible);
//! - [`book`], [`market`]: the validated book (instruments, assets, risk parameters) and market
//!   data (index prices, marks, implied vols);
//! - [`rows`], [`accounts`]: positions and balances, grouped by account (radix sort), one slot per
//!   account.

pub mod accounts;
pub mod book;
pub mod market;
pub mod rows;
pub mod table;
