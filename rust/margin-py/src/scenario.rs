//! `scenario_margin(methodology, portfolio)`: the methodology-driven scenario engine
//! (`margin_core::methodology`) on the plain dicts of the Python reference
//! (`ScenarioMethodology.to_dict()`, `ScenarioPortfolio.to_dict()`).
//!
//! Only the parsing of those dicts lives here; a missing key takes the reference's default, a
//! value of the wrong type is a `MarginInputError` naming it.

use margin_core::methodology::*;
use margin_core::InputError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList};

use crate::{input_error, run_with_gil};

fn err(table: &str, key: &str, problem: impl Into<String>) -> InputError {
    InputError::new(table, key, problem)
}

/// A dict field reader that names the table and the key in its errors.
struct Fields<'py> {
    table: &'static str,
    prefix: String,
    dict: Bound<'py, PyDict>,
}

impl<'py> Fields<'py> {
    fn name(&self, key: &str) -> String {
        if self.prefix.is_empty() { key.to_string() } else { format!("{}.{}", self.prefix, key) }
    }

    fn raw(&self, key: &str) -> Result<Option<Bound<'py, PyAny>>, InputError> {
        match self.dict.get_item(key) {
            Ok(Some(v)) if !v.is_none() => Ok(Some(v)),
            Ok(_) => Ok(None),
            Err(e) => Err(err(self.table, &self.name(key), e.to_string())),
        }
    }

    fn f64_or(&self, key: &str, default: f64) -> Result<f64, InputError> {
        Ok(self.opt_f64(key)?.unwrap_or(default))
    }

    fn f64(&self, key: &str) -> Result<f64, InputError> {
        self.opt_f64(key)?.ok_or_else(|| err(self.table, &self.name(key), "missing"))
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>, InputError> {
        match self.raw(key)? {
            None => Ok(None),
            Some(v) => {
                if v.is_instance_of::<pyo3::types::PyBool>() {
                    return Err(err(self.table, &self.name(key), "expected a number, got a bool"));
                }
                v.extract::<f64>().map(Some).map_err(|_| err(self.table, &self.name(key), format!("expected a number, got {v}")))
            }
        }
    }

    fn bool_or(&self, key: &str, default: bool) -> Result<bool, InputError> {
        match self.raw(key)? {
            None => Ok(default),
            Some(v) => v
                .extract::<bool>()
                .map_err(|_| err(self.table, &self.name(key), format!("expected true or false, got {v}"))),
        }
    }

    fn string_or(&self, key: &str, default: &str) -> Result<String, InputError> {
        match self.raw(key)? {
            None => Ok(default.to_string()),
            Some(v) => v.extract::<String>().map_err(|_| err(self.table, &self.name(key), format!("expected a string, got {v}"))),
        }
    }

    fn i64_or(&self, key: &str, default: i64) -> Result<i64, InputError> {
        match self.raw(key)? {
            None => Ok(default),
            Some(v) => v.extract::<i64>().map_err(|_| err(self.table, &self.name(key), format!("expected an integer, got {v}"))),
        }
    }

    fn sub(&self, key: &str) -> Result<Option<Fields<'py>>, InputError> {
        match self.raw(key)? {
            None => Ok(None),
            Some(v) => Ok(Some(Fields::of(self.table, self.name(key), v)?)),
        }
    }

    fn of(table: &'static str, prefix: String, v: Bound<'py, PyAny>) -> Result<Fields<'py>, InputError> {
        let dict = v.cast_into::<PyDict>().map_err(|_| err(table, &prefix, "expected a table (dict)"))?;
        Ok(Fields { table, prefix, dict })
    }

    fn list(&self, key: &str) -> Result<Vec<Bound<'py, PyAny>>, InputError> {
        match self.raw(key)? {
            None => Ok(Vec::new()),
            Some(v) => {
                let l = v.cast_into::<PyList>().map_err(|_| err(self.table, &self.name(key), "expected a list"))?;
                Ok(l.iter().collect())
            }
        }
    }

    fn f64_list(&self, key: &str) -> Result<Vec<f64>, InputError> {
        self.list(key)?
            .iter()
            .map(|v| v.extract::<f64>().map_err(|_| err(self.table, &self.name(key), format!("expected a number, got {v}"))))
            .collect()
    }
}

const M: &str = "methodology";
const P: &str = "portfolio";

fn vol_shock(f: &Fields<'_>) -> Result<VolShock, InputError> {
    Ok(VolShock {
        vol_up: f.f64("vol_up")?,
        vol_down: f.f64("vol_down")?,
        short_term_power: f.f64("short_term_power")?,
        long_term_power: f.f64("long_term_power")?,
        dte_floor_days: f.f64_or("dte_floor_days", 1.0)?,
        term_threshold_days: f.f64_or("term_threshold_days", 30.0)?,
        reference_days: f.f64_or("reference_days", 30.0)?,
        min_shocked_vol_up: f.f64_or("min_shocked_vol_up", 0.0)?,
        down_floor: f.f64_or("down_floor", 0.0)?,
    })
}

/// The Rust methodology of a `ScenarioMethodology.to_dict()`.
pub(crate) fn methodology(obj: &Bound<'_, PyAny>) -> Result<ScenarioMethodology, InputError> {
    let f = Fields::of(M, String::new(), obj.clone())?;
    let mut scenarios = Vec::new();
    for row in f.list("scenarios")? {
        let r = Fields::of(M, "scenarios".into(), row)?;
        scenarios.push(ScenarioRow::new(
            r.f64("spot_move")?,
            VolShockKind::parse(&r.string_or("vol_shock", "none")?)?,
            r.f64_or("weight", 1.0)?,
            r.string_or("group", "regular")?,
        ));
    }
    let vs = f.sub("vol_shock")?.ok_or_else(|| err(M, "vol_shock", "missing"))?;
    let loss_factors = match f.sub("loss_factors")? {
        Some(l) => LossFactors { initial: l.f64_or("initial", 1.0)?, maintenance: l.f64_or("maintenance", 1.0)? },
        None => LossFactors { initial: 1.0, maintenance: 1.0 },
    };
    let skew_shock = match f.sub("skew_shock")? {
        Some(s) => Some(SkewShock {
            linear_cap: s.f64("linear_cap")?,
            linear_cap_slope: s.f64("linear_cap_slope")?,
            abs_cap: s.f64("abs_cap")?,
            abs_cap_slope: s.f64("abs_cap_slope")?,
            min_k_star: s.f64("min_k_star")?,
            width_scale: s.f64("width_scale")?,
            vol_level: s.f64("vol_level")?,
            vol_level_slope: s.f64("vol_level_slope")?,
        }),
        None => None,
    };
    let static_discount = match f.sub("static_discount")? {
        Some(s) => Some(StaticDiscount {
            long_base: s.f64_or("long_base", 1.0)?,
            long_rate_mult: s.f64_or("long_rate_mult", 0.0)?,
            long_rate_add: s.f64_or("long_rate_add", 0.0)?,
            short_base: s.f64_or("short_base", 1.0)?,
            short_rate_mult: s.f64_or("short_rate_mult", 0.0)?,
            short_rate_add: s.f64_or("short_rate_add", 0.0)?,
            cap_short_at_inverse_discount: s.bool_or("cap_short_at_inverse_discount", true)?,
        }),
        None => None,
    };
    let basis_contingency = match f.sub("basis_contingency")? {
        Some(b) => Some(BasisContingency {
            spot_up: b.f64("spot_up")?,
            spot_down: b.f64("spot_down")?,
            add_factor: b.f64("add_factor")?,
            mult_factor: b.f64("mult_factor")?,
        }),
        None => None,
    };
    let position_contingency = match f.sub("position_contingency")? {
        Some(p) => Some(PositionContingency {
            perp_maintenance: p.f64_or("perp_maintenance", 0.0)?,
            perp_initial: p.f64_or("perp_initial", 0.0)?,
            option_maintenance: p.f64_or("option_maintenance", 0.0)?,
            option_initial: p.f64_or("option_initial", 0.0)?,
        }),
        None => None,
    };
    let confidence_contingency = match f.sub("confidence_contingency")? {
        Some(c) => Some(ConfidenceContingency { threshold: c.f64_or("threshold", 0.0)?, scale: c.f64_or("scale", 1.0)? }),
        None => None,
    };
    let peg_loss = match f.sub("peg_loss")? {
        Some(p) => Some(PegLoss { threshold: p.f64_or("threshold", 0.0)?, factor: p.f64_or("factor", 0.0)? }),
        None => None,
    };
    let max_of_groups = match f.sub("max_of_groups")? {
        Some(g) => Some(MaxOfGroups {
            extreme_cover: g.f64("extreme_cover")?,
            short_option_minimum: g.f64("short_option_minimum")?,
            im_factor: g.f64("im_factor")?,
        }),
        None => None,
    };
    let calendar_basis = match f.sub("calendar_basis")? {
        Some(c) => Some(CalendarBasis { bucket_edges_days: c.f64_list("bucket_edges_days")?, bucket_rates: c.f64_list("bucket_rates")? }),
        None => None,
    };
    let concentration = match f.sub("concentration")? {
        Some(c) => Some(Concentration { rate: c.f64("rate")?, liquidity_notional: c.f64("liquidity_notional")? }),
        None => None,
    };
    let revaluation = match f.string_or("revaluation", "expiry_sum")?.as_str() {
        "expiry_sum" => Revaluation::ExpirySum,
        "risk_array" => Revaluation::RiskArray,
        other => return Err(err(M, "revaluation", format!("must be one of expiry_sum, risk_array, got {other:?}"))),
    };
    let combination = match f.string_or("combination", "loss_factor")?.as_str() {
        "loss_factor" => Combination::LossFactor,
        "max_of_groups" => Combination::MaxOfGroups,
        other => return Err(err(M, "combination", format!("must be one of loss_factor, max_of_groups, got {other:?}"))),
    };
    Ok(ScenarioMethodology {
        name: f.string_or("name", "")?,
        scenarios: ScenarioTable::new(scenarios),
        vol_shock: vol_shock(&vs)?,
        loss_factors,
        skew_shock,
        static_discount,
        basis_contingency,
        position_contingency,
        confidence_contingency,
        peg_loss,
        discount_options: f.bool_or("discount_options", true)?,
        collateral_haircuts_as_contingency: f.bool_or("collateral_haircuts_as_contingency", true)?,
        max_of_groups,
        calendar_basis,
        concentration,
        revaluation,
        combination,
    })
}

/// The Rust portfolio of a `ScenarioPortfolio.to_dict()`.
pub(crate) fn portfolio(obj: &Bound<'_, PyAny>) -> Result<ScenarioPortfolio, InputError> {
    let f = Fields::of(P, String::new(), obj.clone())?;
    let mut expiries = Vec::new();
    for e in f.list("expiries")? {
        let e = Fields::of(P, "expiries".into(), e)?;
        let mut options = Vec::new();
        for o in e.list("options")? {
            let o = Fields::of(P, "expiries.options".into(), o)?;
            options.push(OptionHolding {
                strike: o.f64("strike")?,
                is_call: o.bool_or("is_call", true)?,
                quantity: o.f64("quantity")?,
                vol: o.f64("vol")?,
                multiplier: o.f64_or("multiplier", 1.0)?,
                order: o.i64_or("order", 0)?,
            });
        }
        expiries.push(ExpiryHolding {
            seconds_to_expiry: e.f64("seconds_to_expiry")?,
            forward_variable: e.f64("forward_variable")?,
            forward_fixed: e.f64("forward_fixed")?,
            rate: e.f64("rate")?,
            options,
            confidence: e.f64_or("confidence", 1.0)?,
            days_to_expiry: e.opt_f64("days_to_expiry")?,
        });
    }
    let mut collaterals = Vec::new();
    for c in f.list("collaterals")? {
        let c = Fields::of(P, "collaterals".into(), c)?;
        collaterals.push(CollateralHolding {
            name: c.string_or("name", "")?,
            value: c.f64("value")?,
            risk_cancelling: c.bool_or("risk_cancelling", false)?,
            maintenance_haircut: c.f64_or("maintenance_haircut", 0.0)?,
            initial_haircut: c.f64_or("initial_haircut", 0.0)?,
            confidence: c.f64_or("confidence", 1.0)?,
        });
    }
    let mut linears = Vec::new();
    for l in f.list("linears")? {
        let l = Fields::of(P, "linears".into(), l)?;
        linears.push(LinearHolding {
            quantity: l.f64("quantity")?,
            mark: l.f64("mark")?,
            multiplier: l.f64_or("multiplier", 1.0)?,
            seconds_to_expiry: l.opt_f64("seconds_to_expiry")?,
            order: l.i64_or("order", 0)?,
            days_to_expiry: l.opt_f64("days_to_expiry")?,
            confidence: l.f64_or("confidence", 1.0)?,
        });
    }
    Ok(ScenarioPortfolio {
        spot: f.f64("spot")?,
        cash: f.f64_or("cash", 0.0)?,
        perp_quantity: f.f64_or("perp_quantity", 0.0)?,
        perp_mark: f.f64_or("perp_mark", 0.0)?,
        perp_unsettled: f.f64_or("perp_unsettled", 0.0)?,
        expiries,
        collaterals,
        linears,
        spot_confidence: f.f64_or("spot_confidence", 1.0)?,
        perp_confidence: f.f64_or("perp_confidence", 1.0)?,
        stable_price: f.f64_or("stable_price", 1.0)?,
    })
}

fn contingencies_dict<'py>(py: Python<'py>, c: &Contingencies) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    d.set_item("perp_maintenance", c.perp_maintenance)?;
    d.set_item("perp_initial", c.perp_initial)?;
    d.set_item("option_maintenance", c.option_maintenance)?;
    d.set_item("option_initial", c.option_initial)?;
    d.set_item("collateral_maintenance", c.collateral_maintenance)?;
    d.set_item("collateral_initial", c.collateral_initial)?;
    d.set_item("confidence", c.confidence)?;
    d.set_item("calendar_basis", c.calendar_basis)?;
    d.set_item("concentration", c.concentration)?;
    d.set_item("maintenance", c.maintenance())?;
    d.set_item("initial_extra", c.initial_extra())?;
    Ok(d)
}

/// Scenario margin of one portfolio (a `ScenarioPortfolio.to_dict()`) under one methodology
/// (a `ScenarioMethodology.to_dict()`): a dict with `initial_margin`, `maintenance_margin`
/// (signed), the requirements, `scenario_pnl`, `worst_by_group`, `basis_contingency`,
/// `worst_loss`, `worst_scenario`, `contingencies`, the loss factors and the per-expiry
/// precomputes.
#[pyfunction]
pub fn scenario_margin<'py>(py: Python<'py>, methodology: &Bound<'py, PyAny>, portfolio: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyDict>> {
    let meth = self::methodology(methodology).map_err(|e| input_error(py, &e))?;
    let pf = self::portfolio(portfolio).map_err(|e| input_error(py, &e))?;
    let r = run_with_gil(py, || margin_scenarios(&pf, &meth))?;
    let d = PyDict::new(py);
    d.set_item("initial_margin", r.initial_margin)?;
    d.set_item("maintenance_margin", r.maintenance_margin)?;
    d.set_item("initial_requirement", r.initial_requirement)?;
    d.set_item("maintenance_requirement", r.maintenance_requirement)?;
    d.set_item("mark_to_market", r.mark_to_market)?;
    d.set_item("cash", r.cash)?;
    d.set_item("scenario_pnl", r.scenario_pnl.clone())?;
    let groups = PyDict::new(py);
    for (g, v) in &r.worst_by_group {
        groups.set_item(g, *v)?;
    }
    d.set_item("worst_by_group", groups)?;
    d.set_item("basis_contingency", r.basis_contingency)?;
    d.set_item("worst_loss", r.worst_loss)?;
    d.set_item("worst_scenario", r.worst_scenario)?;
    d.set_item("contingencies", contingencies_dict(py, &r.contingencies)?)?;
    d.set_item("initial_loss_factor", r.initial_loss_factor)?;
    d.set_item("maintenance_loss_factor", r.maintenance_loss_factor)?;
    let expiries = PyList::empty(py);
    for e in &r.expiries {
        let x = PyDict::new(py);
        x.set_item("mtm", e.mtm)?;
        x.set_item("discount", e.discount)?;
        x.set_item("vol_up", e.vol_up)?;
        x.set_item("vol_down", e.vol_down)?;
        x.set_item("static_long", e.static_long)?;
        x.set_item("static_short", e.static_short)?;
        x.set_item("basis_up_pnl", e.basis_up_pnl)?;
        x.set_item("basis_down_pnl", e.basis_down_pnl)?;
        x.set_item("basis_charge", e.basis_charge)?;
        expiries.append(x)?;
    }
    d.set_item("expiries", expiries)?;
    Ok(d)
}

/// A book methodology's portfolio part: `(default, [(underlying, methodology)])`.
pub(crate) type PortfolioParts = (ScenarioMethodology, Vec<(String, ScenarioMethodology)>);

/// The parts of `Methodology.engine_dict(risk_params)`: `{"name", "is_v1_portfolio",
/// "portfolio": {"default": ScenarioMethodology dict, "by_underlying": {name: dict}},
/// "is_v1_standard", "standard": StandardParams dict}`. A v1 part is `None` (the engine keeps
/// v1's kernels, bit for bit).
pub(crate) fn book_methodology_parts(
    obj: &Bound<'_, PyAny>,
) -> Result<(String, Option<PortfolioParts>, Option<margin_core::standard_rules::StandardRules>), InputError> {
    let f = Fields::of(M, String::new(), obj.clone())?;
    let name = f.string_or("name", "custom")?;
    let standard = if f.bool_or("is_v1_standard", true)? {
        None
    } else {
        let d = f.raw("standard")?.ok_or_else(|| err(M, "standard", "missing: the standard part (or is_v1_standard = true)"))?;
        Some(crate::standard_rules::parse_rules(&d)?)
    };
    if f.bool_or("is_v1_portfolio", false)? {
        return Ok((name, None, standard));
    }
    let Some(p) = f.sub("portfolio")? else {
        return Err(err(M, "portfolio", "missing: the portfolio part (or is_v1_portfolio = true)"));
    };
    let default = p.raw("default")?.ok_or_else(|| err(M, "portfolio.default", "missing"))?;
    let default = methodology(&default)?;
    let mut by_underlying = Vec::new();
    if let Some(map) = p.raw("by_underlying")? {
        let map = map.cast_into::<PyDict>().map_err(|_| err(M, "portfolio.by_underlying", "expected a dict of underlying -> methodology"))?;
        for (k, v) in map.iter() {
            let u: String = k.extract().map_err(|_| err(M, "portfolio.by_underlying", "keys must be underlying names"))?;
            by_underlying.push((u, methodology(&v)?));
        }
        by_underlying.sort_by(|a, b| a.0.cmp(&b.0));
    }
    Ok((name, Some((default, by_underlying)), standard))
}
