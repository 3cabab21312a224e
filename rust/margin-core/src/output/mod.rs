//! Outputs: account rows, status (§6) and their Arrow form; phase timings.

pub mod results;
pub mod trace;
