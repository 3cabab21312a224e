//! margin-core: the margin engine's kernels over Arrow data. Knows nothing of Python.
//!
//! Folders by concern, read in the order of the methodology:
//! - [`input`]: `table` (reading and validating columns), `book`, `market`, `rows`, `accounts`;
//! - [`pricing`]: `valuation` (netting and collateral, §2), `black76` (§5), `greeks` (§7);
//! - [`models`]: `standard` (§3), `portfolio` (§4, v1's risk arrays);
//! - [`methodology`]: a methodology as data (parameters, presets) and the one scenario engine it drives;
//! - [`risk`]: `stress`, `liquidation` (§8), `plan`, `hedge`, `isolated`, `whatif`;
//! - [`output`]: `results` (account rows, status §6, Arrow form), `trace`;
//! - [`live`]: the live risk book (state, exposure index, events, journal);
//! - [`engine`]: parallel orchestration, bit-identical for any thread count; [`error`].
//!
//! Each module is also reachable at the crate root (`margin_core::book`, `crate::portfolio`, ...).

pub mod engine;
pub mod error;
pub mod input;
pub mod live;
pub mod methodology;
pub mod models;
pub mod output;
pub mod pricing;
pub mod risk;

pub use error::{InputError, Result};
pub use input::{accounts, book, market, rows, table};
pub use models::{orders, portfolio, standard, standard_rules};
pub use output::{results, trace};
pub use pricing::{black76, greeks, valuation};
pub use risk::{hedge, isolated, liquidation, paths, plan, roots, stress, whatif};
