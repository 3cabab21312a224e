//! Pricing: what positions and collateral are worth now.
//!
//! - [`valuation`]: netting per account × instrument and collateral with haircuts (§2);
//! - [`black76`]: option prices on the index (§5);
//! - [`greeks`]: per-contract and per-account × underlying Greeks (§7).

pub mod black76;
pub mod greeks;
pub mod valuation;
