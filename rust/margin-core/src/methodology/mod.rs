//! The scenario (portfolio) margin engine driven by a methodology given as data (issue 13).
//!
//! [`params`] holds the parameter structs (one optional part per `Option`), [`scenario`] the
//! engine. It is the Rust twin of `python/margin_engine/reference/scenarios.py`: the same steps,
//! in the same order of summation, so both agree to rounding. It is not yet wired into the
//! book-level engine ([`crate::engine`]).

pub mod params;
pub mod scenario;

pub use params::*;
pub use scenario::*;
