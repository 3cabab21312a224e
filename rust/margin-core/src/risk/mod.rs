//! Risk questions asked of margined accounts.
//!
//! - [`stress`]: the book under moved markets;
//! - [`liquidation`]: distance to liquidation and the bulk scan (§8);
//! - [`plan`]: liquidation plans (what to close, in which order);
//! - [`hedge`]: hedges that lower margin;
//! - [`isolated`]: isolated positions margined alone, and their liquidation prices;
//! - [`whatif`]: one account before and after a trade, for order entry.

pub mod hedge;
pub mod isolated;
pub mod liquidation;
pub mod plan;
pub mod stress;
pub mod whatif;
