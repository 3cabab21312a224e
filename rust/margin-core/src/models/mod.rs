//! Margin models: how much an account's netted positions require.
//!
//! - [`standard`]: per-position rates (§3);
//! - [`standard_rules`]: the generalized standard margin, §3 plus venues' rules as parameters (§9.2);
//! - [`portfolio`]: v1's scenario grid evaluated by precomputed per-instrument risk arrays (§4).
//!
//! The methodology-driven scenario engine lives in [`crate::methodology`].

pub mod portfolio;
pub mod standard;
pub mod orders;
pub mod standard_rules;
