//! The one error a caller of the core can cause: bad input.
//!
//! Every check names the table, the column, what is wrong, and up to [`MAX_EXAMPLES`] offending
//! keys or row numbers (plus how many there are in all), so the message alone lets a user find
//! and fix the data.

use std::fmt;

/// How many offending keys or rows an error lists.
pub const MAX_EXAMPLES: usize = 10;

/// Bad input: the table and column it is in, the problem, and the offenders.
#[derive(Debug, Clone, PartialEq)]
pub struct InputError {
    pub table: String,
    pub column: String,
    pub problem: String,
    /// Up to [`MAX_EXAMPLES`] offending keys or rows, in input order.
    pub examples: Vec<String>,
    /// How many offenders there are in all.
    pub count: usize,
}

impl InputError {
    pub fn new(table: &str, column: &str, problem: impl Into<String>) -> Self {
        InputError {
            table: table.to_string(),
            column: column.to_string(),
            problem: problem.into(),
            examples: Vec::new(),
            count: 0,
        }
    }

    pub fn with_offenders(mut self, offenders: Offenders) -> Self {
        self.examples = offenders.examples;
        self.count = offenders.count;
        self
    }
}

impl fmt::Display for InputError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}: {}", self.table, self.column, self.problem)?;
        if self.count > 0 {
            write!(f, " ({} offending", self.count)?;
            if self.count > self.examples.len() {
                write!(f, ", first {}", self.examples.len())?;
            }
            write!(f, ": {})", self.examples.join(", "))?;
        }
        Ok(())
    }
}

impl std::error::Error for InputError {}

pub type Result<T, E = InputError> = std::result::Result<T, E>;

/// Collects offenders while a check runs: counts all, keeps the first few (formatted lazily).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Offenders {
    pub count: usize,
    pub examples: Vec<String>,
}

impl Offenders {
    pub fn push(&mut self, describe: impl FnOnce() -> String) {
        self.count += 1;
        if self.examples.len() < MAX_EXAMPLES {
            self.examples.push(describe());
        }
    }

    /// Appends another collector that saw later rows (keeps input order).
    pub fn extend(&mut self, later: Offenders) {
        self.count += later.count;
        for e in later.examples {
            if self.examples.len() < MAX_EXAMPLES {
                self.examples.push(e);
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// `Ok(())` when nothing was found, else the error built from these offenders.
    pub fn into_result(self, table: &str, column: &str, problem: &str) -> Result<()> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(InputError::new(table, column, problem).with_offenders(self))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_names_table_column_and_offenders() {
        let mut o = Offenders::default();
        for i in 0..15 {
            o.push(|| format!("row {i}"));
        }
        let e = InputError::new("positions", "quantity", "NaN or infinite values").with_offenders(o);
        let msg = e.to_string();
        assert!(msg.starts_with("positions.quantity: NaN or infinite values (15 offending, first 10: row 0, row 1"));
        assert_eq!(e.examples.len(), MAX_EXAMPLES);
    }
}

/// A float as an offender shows it: plain decimals in the everyday range, scientific notation
/// for the very small and very large (`5e-324`, not 324 digits).
pub fn show_value(v: f64) -> String {
    if v == 0.0 || !v.is_finite() || (1e-6..1e16).contains(&v.abs()) {
        format!("{v}")
    } else {
        format!("{v:e}")
    }
}
