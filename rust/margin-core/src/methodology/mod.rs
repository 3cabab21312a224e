//! The scenario (portfolio) margin engine driven by a methodology given as data (issue 13).
//!
//! [`params`] holds the parameter structs (one optional part per `Option`), [`scenario`] the
//! engine. It is the Rust twin of `python/margin_engine/reference/scenarios.py`: the same steps,
//! in the same order of summation, so both agree to rounding. [`book`] holds a book's
//! methodology (one scenario methodology per underlying) and [`account`] turns one account's
//! netted positions into the engine's portfolios; [`crate::engine`] calls it under the
//! portfolio model when the book has a scenario methodology.

pub mod account;
pub mod book;
pub mod params;
pub mod scenario;

pub use book::*;
pub use params::*;
pub use scenario::*;
