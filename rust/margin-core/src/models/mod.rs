//! Margin models: how much an account's netted positions require.
//!
//! - [`standard`]: per-position rates (§3);
//! - [`portfolio`]: v1's scenario grid evaluated by precomputed per-instrument risk arrays (§4).
//!
//! The methodology-driven scenario engine lives in [`crate::methodology`].

pub mod portfolio;
pub mod standard;
