//! Risk questions asked of margined accounts.
//!
//! - [`stress`]: the book under moved markets;
//! - [`liquidation`]: the grid walk of distances, the bulk scan and the map (§8);
//! - [`roots`]: exact liquidation prices (roots of the margin excess over the price axis);
//! - [`plan`]: liquidation plans (what to close, in which order);
//! - [`paths`]: the book margined along simulated price paths, summarized (the forecast);
//! - [`hedge`]: hedges that lower margin;
//! - [`isolated`]: isolated positions margined alone, and their liquidation prices;
//! - [`whatif`]: one account before and after a trade, for order entry.

pub mod hedge;
pub mod isolated;
pub mod liquidation;
pub mod paths;
pub mod plan;
pub mod roots;
pub mod stress;
pub mod whatif;
