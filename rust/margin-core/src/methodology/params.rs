//! Parameters of the scenario engine: the Rust mirror of `ScenarioMethodology`
//! (`python/margin_engine/methodology_params.py`) and of the holdings it is applied to.
//!
//! Parts that a methodology may switch off are `Option`s. [`ScenarioMethodology::check`] makes
//! the few structural checks the engine relies on (range checks of each number belong to the
//! Python side, which builds these values).

use crate::error::{InputError, Result};

/// How a scenario row moves implied vols.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VolShockKind {
    None,
    Up,
    Down,
    SkewLinear,
    SkewAbs,
}

impl VolShockKind {
    pub fn parse(s: &str) -> Result<Self> {
        Ok(match s {
            "none" => VolShockKind::None,
            "up" => VolShockKind::Up,
            "down" => VolShockKind::Down,
            "skew_linear" => VolShockKind::SkewLinear,
            "skew_abs" => VolShockKind::SkewAbs,
            other => {
                return Err(InputError::new(
                    "methodology",
                    "scenarios.vol_shock",
                    format!("must be one of none, up, down, skew_linear, skew_abs, got {other:?}"),
                ))
            }
        })
    }

    pub fn is_skew(self) -> bool {
        matches!(self, VolShockKind::SkewLinear | VolShockKind::SkewAbs)
    }
}

/// One row of the scenario table: a relative spot move, a vol state, a weight on its P&L and
/// a reporting group (`regular`, `extreme`, `skew`, `basis`).
#[derive(Debug, Clone, PartialEq)]
pub struct ScenarioRow {
    pub spot_move: f64,
    pub vol_shock: VolShockKind,
    pub weight: f64,
    pub group: String,
    /// `group == "extreme"`, set by [`ScenarioRow::new`]: the combination reads it for every
    /// row of every portfolio.
    pub extreme: bool,
}

impl ScenarioRow {
    pub fn new(spot_move: f64, vol_shock: VolShockKind, weight: f64, group: String) -> ScenarioRow {
        let extreme = group == "extreme";
        ScenarioRow { spot_move, vol_shock, weight, group, extreme }
    }

    /// `1 + spot_move`.
    pub fn spot_factor(&self) -> f64 {
        1.0 + self.spot_move
    }
}

/// The scenario table: its rows, and beside them the columns that every portfolio's pass over
/// the rows reads, kept contiguous (built with the table, which cannot change after; the rows
/// are read through `Deref` as a slice).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ScenarioTable {
    rows: Vec<ScenarioRow>,
    /// `spot_factor() − 1` of each row: what a perpetual's mark and a coin's value move by.
    factor_moves: Vec<f64>,
    weights: Vec<f64>,
    extreme: Vec<bool>,
    skew: Vec<bool>,
    /// The first regular (not extreme) row and the first extreme row.
    first_regular: Option<usize>,
    first_extreme: Option<usize>,
    /// `Some(k)` when rows `..k` are the regular ones and rows `k..` the extreme ones.
    classes_split: Option<usize>,
}

impl ScenarioTable {
    pub fn new(rows: Vec<ScenarioRow>) -> ScenarioTable {
        ScenarioTable {
            factor_moves: rows.iter().map(|r| r.spot_factor() - 1.0).collect(),
            weights: rows.iter().map(|r| r.weight).collect(),
            extreme: rows.iter().map(|r| r.extreme).collect(),
            skew: rows.iter().map(|r| r.vol_shock.is_skew()).collect(),
            first_regular: rows.iter().position(|r| !r.extreme),
            first_extreme: rows.iter().position(|r| r.extreme),
            classes_split: {
                let k = rows.iter().take_while(|r| !r.extreme).count();
                rows[k..].iter().all(|r| r.extreme).then_some(k)
            },
            rows,
        }
    }

    /// `spot_factor() − 1` per row.
    pub fn factor_moves(&self) -> &[f64] {
        &self.factor_moves
    }

    /// `weight` per row.
    pub fn weights(&self) -> &[f64] {
        &self.weights
    }

    /// `extreme` per row.
    pub fn extreme(&self) -> &[bool] {
        &self.extreme
    }

    /// Whether each row is a skew row.
    pub fn skew(&self) -> &[bool] {
        &self.skew
    }

    /// The first regular row and the first extreme row (`None`: the table has none).
    pub fn first_of_each_class(&self) -> (Option<usize>, Option<usize>) {
        (self.first_regular, self.first_extreme)
    }

    /// `Some(k)` when the regular rows are rows `..k` and the extreme rows `k..` (v1's grid and
    /// the presets list them so), `None` when the classes interleave.
    pub fn classes_split(&self) -> Option<usize> {
        self.classes_split
    }
}

impl From<Vec<ScenarioRow>> for ScenarioTable {
    fn from(rows: Vec<ScenarioRow>) -> Self {
        ScenarioTable::new(rows)
    }
}

impl std::ops::Deref for ScenarioTable {
    type Target = [ScenarioRow];
    fn deref(&self) -> &[ScenarioRow] {
        &self.rows
    }
}

/// Term-scaled vol multipliers: `τ = reference_days / max(days, dte_floor_days)`,
/// `up = 1 + vol_up τ^p`, `down = max(down_floor, 1 − vol_down τ^p)`.
#[derive(Debug, Clone, PartialEq)]
pub struct VolShock {
    pub vol_up: f64,
    pub vol_down: f64,
    pub short_term_power: f64,
    pub long_term_power: f64,
    pub dte_floor_days: f64,
    pub term_threshold_days: f64,
    pub reference_days: f64,
    pub min_shocked_vol_up: f64,
    pub down_floor: f64,
}

/// Smile tilt by log-moneyness for the skew rows.
#[derive(Debug, Clone, PartialEq)]
pub struct SkewShock {
    pub linear_cap: f64,
    pub linear_cap_slope: f64,
    pub abs_cap: f64,
    pub abs_cap_slope: f64,
    pub min_k_star: f64,
    pub width_scale: f64,
    pub vol_level: f64,
    pub vol_level_slope: f64,
}

/// Sign-dependent scale of an expiry's shocked option value.
#[derive(Debug, Clone, PartialEq)]
pub struct StaticDiscount {
    pub long_base: f64,
    pub long_rate_mult: f64,
    pub long_rate_add: f64,
    pub short_base: f64,
    pub short_rate_mult: f64,
    pub short_rate_add: f64,
    pub cap_short_at_inverse_discount: bool,
}

/// Multipliers of the worst loss for the IM and the MM.
#[derive(Debug, Clone, PartialEq)]
pub struct LossFactors {
    pub initial: f64,
    pub maintenance: f64,
}

/// The forward (basis) contingency: each expiry revalued at two spot moves.
#[derive(Debug, Clone, PartialEq)]
pub struct BasisContingency {
    pub spot_up: f64,
    pub spot_down: f64,
    pub add_factor: f64,
    pub mult_factor: f64,
}

/// Size charges on the perpetual and on naked short options.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PositionContingency {
    pub perp_maintenance: f64,
    pub perp_initial: f64,
    pub option_maintenance: f64,
    pub option_initial: f64,
}

/// Charge on exposures whose feeds report a low confidence (IM only).
#[derive(Debug, Clone, PartialEq)]
pub struct ConfidenceContingency {
    pub threshold: f64,
    pub scale: f64,
}

/// Extra IM loss factor when the quote stable coin trades below its peg threshold.
#[derive(Debug, Clone, PartialEq)]
pub struct PegLoss {
    pub threshold: f64,
    pub factor: f64,
}

/// The v1 combination rule's parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct MaxOfGroups {
    pub extreme_cover: f64,
    pub short_option_minimum: f64,
    pub im_factor: f64,
}

/// Calendar-basis add-on: expiry buckets and one rate per bucket (perpetual bucket first).
#[derive(Debug, Clone, PartialEq)]
pub struct CalendarBasis {
    pub bucket_edges_days: Vec<f64>,
    pub bucket_rates: Vec<f64>,
}

/// Concentration add-on against the notional the market absorbs.
#[derive(Debug, Clone, PartialEq)]
pub struct Concentration {
    pub rate: f64,
    pub liquidity_notional: f64,
}

/// How a row's P&L is summed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revaluation {
    /// Each expiry revalued as a whole (static discount and skew rule act on its total).
    ExpirySum,
    /// Per-contract risk arrays times quantities, in the holdings' `order`.
    RiskArray,
}

/// How worst losses become margin.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Combination {
    /// `factor × worst + equity − contingencies` (signed).
    LossFactor,
    /// `max(scan, cover × extreme, short minimum) + add-ons`, `IM = im_factor × MM`.
    MaxOfGroups,
}

/// Everything the scenario engine reads.
#[derive(Debug, Clone, PartialEq)]
pub struct ScenarioMethodology {
    pub name: String,
    pub scenarios: ScenarioTable,
    pub vol_shock: VolShock,
    pub loss_factors: LossFactors,
    pub skew_shock: Option<SkewShock>,
    pub static_discount: Option<StaticDiscount>,
    pub basis_contingency: Option<BasisContingency>,
    pub position_contingency: Option<PositionContingency>,
    pub confidence_contingency: Option<ConfidenceContingency>,
    pub peg_loss: Option<PegLoss>,
    pub discount_options: bool,
    pub collateral_haircuts_as_contingency: bool,
    pub max_of_groups: Option<MaxOfGroups>,
    pub calendar_basis: Option<CalendarBasis>,
    pub concentration: Option<Concentration>,
    pub revaluation: Revaluation,
    pub combination: Combination,
}

fn bad(column: &str, problem: impl Into<String>) -> InputError {
    InputError::new("methodology", column, problem)
}

impl ScenarioMethodology {
    /// The structural rules the engine depends on: a non-empty table, the parts that the
    /// chosen rows and rules read are present, and one calendar rate per bucket.
    pub fn check(&self) -> Result<()> {
        if self.scenarios.is_empty() {
            return Err(bad("scenarios", "the scenario table needs at least one row"));
        }
        let v = &self.vol_shock;
        if !(v.dte_floor_days > 0.0 && v.reference_days > 0.0) {
            return Err(bad("vol_shock.dte_floor_days", "dte_floor_days and reference_days must be > 0 (the floor divides)"));
        }
        let has_skew = self.scenarios.iter().any(|r| r.vol_shock.is_skew());
        if has_skew && self.skew_shock.is_none() {
            return Err(bad("skew_shock", "the scenario table has skew rows but no skew_shock parameters"));
        }
        if self.combination == Combination::MaxOfGroups && self.max_of_groups.is_none() {
            return Err(bad("max_of_groups", "combination max_of_groups needs the max_of_groups parameters"));
        }
        if self.revaluation == Revaluation::RiskArray {
            if self.static_discount.is_some() {
                return Err(bad("static_discount", "acts on an expiry's total: it needs revaluation expiry_sum"));
            }
            if has_skew {
                return Err(bad("scenarios", "skew rows act on an expiry's total: they need revaluation expiry_sum"));
            }
        }
        if let Some(cb) = &self.calendar_basis {
            if cb.bucket_rates.len() != cb.bucket_edges_days.len() + 2 {
                return Err(bad(
                    "calendar_basis.bucket_rates",
                    format!(
                        "needs {} rates (perpetual bucket, then one per dated bucket), got {}",
                        cb.bucket_edges_days.len() + 2,
                        cb.bucket_rates.len()
                    ),
                ));
            }
        }
        if let Some(c) = &self.concentration {
            if c.liquidity_notional.partial_cmp(&0.0) != Some(std::cmp::Ordering::Greater) {
                return Err(bad("concentration.liquidity_notional", "must be > 0 (it divides)"));
            }
        }
        Ok(())
    }
}

/// A net option position of one strike and type.
#[derive(Debug, Clone, PartialEq)]
pub struct OptionHolding {
    pub strike: f64,
    pub is_call: bool,
    pub quantity: f64,
    pub vol: f64,
    pub multiplier: f64,
    pub order: i64,
}

/// A perpetual or dated future beyond the one net perpetual.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearHolding {
    pub quantity: f64,
    pub mark: f64,
    pub multiplier: f64,
    pub seconds_to_expiry: Option<f64>,
    pub order: i64,
    pub days_to_expiry: Option<f64>,
    /// The mark's confidence (a perpetual's enters the oracle-confidence add-on).
    pub confidence: f64,
}

impl LinearHolding {
    /// Days to expiry (None for a perpetual).
    pub fn days(&self) -> Option<f64> {
        let s = self.seconds_to_expiry?;
        Some(self.days_to_expiry.unwrap_or(s.max(0.0) / super::scenario::SECONDS_PER_DAY))
    }
}

/// The options of one expiry with the market data they are revalued with.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpiryHolding {
    pub seconds_to_expiry: f64,
    pub forward_variable: f64,
    pub forward_fixed: f64,
    pub rate: f64,
    pub options: Vec<OptionHolding>,
    pub confidence: f64,
    pub days_to_expiry: Option<f64>,
}

impl ExpiryHolding {
    pub fn years(&self) -> f64 {
        self.seconds_to_expiry.max(0.0) / super::scenario::SECONDS_PER_YEAR
    }

    pub fn days(&self) -> f64 {
        self.days_to_expiry.unwrap_or(self.seconds_to_expiry.max(0.0) / super::scenario::SECONDS_PER_DAY)
    }

    pub fn forward(&self) -> f64 {
        self.forward_variable + self.forward_fixed
    }
}

/// A collateral coin valued in the quote currency.
#[derive(Debug, Clone, PartialEq)]
pub struct CollateralHolding {
    pub name: String,
    pub value: f64,
    pub risk_cancelling: bool,
    pub maintenance_haircut: f64,
    pub initial_haircut: f64,
    pub confidence: f64,
}

/// One account's holdings on one underlying.
#[derive(Debug, Clone, PartialEq)]
pub struct ScenarioPortfolio {
    pub spot: f64,
    pub cash: f64,
    pub perp_quantity: f64,
    pub perp_mark: f64,
    pub perp_unsettled: f64,
    pub expiries: Vec<ExpiryHolding>,
    pub collaterals: Vec<CollateralHolding>,
    pub linears: Vec<LinearHolding>,
    pub spot_confidence: f64,
    pub perp_confidence: f64,
    pub stable_price: f64,
}

impl Default for ScenarioPortfolio {
    fn default() -> Self {
        ScenarioPortfolio {
            spot: 0.0,
            cash: 0.0,
            perp_quantity: 0.0,
            perp_mark: 0.0,
            perp_unsettled: 0.0,
            expiries: Vec::new(),
            collaterals: Vec::new(),
            linears: Vec::new(),
            spot_confidence: 1.0,
            perp_confidence: 1.0,
            stable_price: 1.0,
        }
    }
}
