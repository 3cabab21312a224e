//! A book's methodology: which scenario methodology margins each underlying under the
//! portfolio model (`None`: v1's grid from the book's risk_params, evaluated by the risk-array
//! kernel of [`crate::portfolio`]), and which standard rules the standard model follows
//! (`None`: v1's §3, [`crate::standard`]; else [`crate::standard_rules`]).

use crate::error::{InputError, Result};

use super::params::ScenarioMethodology;
use crate::standard_rules::StandardRules;

/// One scenario methodology per underlying id, and the one for underlyings without their own.
#[derive(Debug, Clone, PartialEq)]
pub struct ScenarioByUnderlying {
    pub default: ScenarioMethodology,
    /// Indexed by underlying id; `None`: the default.
    pub by_underlying: Vec<Option<ScenarioMethodology>>,
}

impl ScenarioByUnderlying {
    pub fn for_underlying(&self, u: usize) -> &ScenarioMethodology {
        self.by_underlying.get(u).and_then(Option::as_ref).unwrap_or(&self.default)
    }

    /// Whether collateral haircuts are charged as contingencies (collateral then counts at its
    /// full value and the coins enter the scenario portfolios): one answer per book.
    pub fn haircuts_as_contingency(&self) -> bool {
        self.default.collateral_haircuts_as_contingency
    }
}

/// The methodology a book is margined under.
#[derive(Debug, Clone, PartialEq)]
pub struct BookMethodology {
    pub name: String,
    /// `None`: v1's portfolio model (§4) exactly as without a methodology.
    pub portfolio: Option<ScenarioByUnderlying>,
    /// `None`: v1's standard model (§3) exactly as without a methodology.
    pub standard: Option<StandardRules>,
}

impl Default for BookMethodology {
    fn default() -> Self {
        BookMethodology { name: "v1".into(), portfolio: None, standard: None }
    }
}

impl BookMethodology {
    /// `by_name`: per-underlying methodologies by underlying name, mapped to the book's ids
    /// (`underlyings` in id order); an unknown name is an error.
    pub fn new(
        name: String,
        portfolio: Option<(ScenarioMethodology, Vec<(String, ScenarioMethodology)>)>,
        standard: Option<StandardRules>,
        underlyings: &[String],
    ) -> Result<BookMethodology> {
        if let Some(rules) = &standard {
            rules.check()?;
        }
        let portfolio = match portfolio {
            None => None,
            Some((default, by_name)) => {
                default.check()?;
                let mut by_underlying = vec![None; underlyings.len()];
                for (u, m) in by_name {
                    m.check().map_err(|e| InputError::new(&e.table, &format!("portfolio.by_underlying.{u}.{}", e.column), e.problem.clone()))?;
                    if m.collateral_haircuts_as_contingency != default.collateral_haircuts_as_contingency {
                        return Err(InputError::new(
                            "methodology",
                            &format!("portfolio.by_underlying.{u}.collateral_haircuts_as_contingency"),
                            "collateral is valued one way per account: every underlying must agree with the default",
                        ));
                    }
                    // an underlying the book does not know is harmless (a venue-wide methodology)
                    if let Some(id) = underlyings.iter().position(|n| *n == u) {
                        by_underlying[id] = Some(m);
                    }
                }
                Some(ScenarioByUnderlying { default, by_underlying })
            }
        };
        Ok(BookMethodology { name, portfolio, standard })
    }
}
