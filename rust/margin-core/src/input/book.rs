//! The book: instruments, collateral assets, underlyings with their risk parameters, and margin
//! tiers (methodology §1, §3, §4). Validated once, reused by every call.

use crate::methodology::BookMethodology;
use crate::error::{Offenders, Result};
use crate::table::{Domain, Key, KeyIndex, Table};

/// What kind of contract an instrument is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Perpetual,
    Future,
    Option,
}

impl Kind {
    /// Linear contracts (perpetuals, futures): margin on notional, P&L = q × mult × Δmark.
    pub fn is_linear(self) -> bool {
        !matches!(self, Kind::Option)
    }
}

/// One notional bracket of a tier schedule, with the cumulative deduction that makes the margin
/// continuous across brackets (`margin = notional × rate − cum`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bracket {
    pub notional_floor: f64,
    pub initial_margin_rate: f64,
    pub maintenance_margin_rate: f64,
    pub initial_cum: f64,
    pub maintenance_cum: f64,
}

/// A tiered margin schedule of one instrument (brackets sorted by floor, the first at 0).
#[derive(Debug, Clone, PartialEq)]
pub struct Tiers {
    pub brackets: Vec<Bracket>,
}

impl Tiers {
    /// Builds the schedule from (floor, imr, mmr) brackets sorted by floor; when no bracket
    /// starts at 0 the instrument's own rates form the first one.
    pub fn new(base_imr: f64, base_mmr: f64, sorted: &[(f64, f64, f64)]) -> Tiers {
        let mut brackets: Vec<Bracket> = Vec::with_capacity(sorted.len() + 1);
        if sorted.first().is_none_or(|b| b.0 > 0.0) {
            brackets.push(Bracket {
                notional_floor: 0.0,
                initial_margin_rate: base_imr,
                maintenance_margin_rate: base_mmr,
                initial_cum: 0.0,
                maintenance_cum: 0.0,
            });
        }
        for &(floor, imr, mmr) in sorted {
            let (initial_cum, maintenance_cum) = match brackets.last() {
                None => (0.0, 0.0),
                Some(p) => (
                    p.initial_cum + floor * (imr - p.initial_margin_rate),
                    p.maintenance_cum + floor * (mmr - p.maintenance_margin_rate),
                ),
            };
            brackets.push(Bracket {
                notional_floor: floor,
                initial_margin_rate: imr,
                maintenance_margin_rate: mmr,
                initial_cum,
                maintenance_cum,
            });
        }
        Tiers { brackets }
    }

    /// (IM, MM) of a position of this notional: the bracket with the largest floor ≤ notional.
    pub fn margin(&self, notional: f64) -> (f64, f64) {
        let i = self.brackets.partition_point(|b| b.notional_floor <= notional).saturating_sub(1);
        let b = &self.brackets[i];
        (
            notional * b.initial_margin_rate - b.initial_cum,
            notional * b.maintenance_margin_rate - b.maintenance_cum,
        )
    }
}

/// The instruments table, column by column, indexed by dense instrument id (= row).
#[derive(Debug, Clone)]
pub struct Instruments {
    pub keys: Vec<Key>,
    /// Keys as text, for messages and outputs.
    pub labels: Vec<String>,
    pub index: KeyIndex,
    pub kind: Vec<Kind>,
    pub underlying: Vec<u32>,
    pub multiplier: Vec<f64>,
    pub expiry_ns: Vec<Option<i64>>,
    /// NaN for non-options.
    pub strike: Vec<f64>,
    pub is_call: Vec<bool>,
    pub initial_margin_rate: Vec<f64>,
    pub maintenance_margin_rate: Vec<f64>,
    /// 0 for non-options.
    pub initial_margin_floor: Vec<f64>,
    pub tiers: Vec<Option<Tiers>>,
    /// Inverse (coin-margined) contracts: `settlement = 'inverse'` (all false without the column).
    pub inverse: Vec<bool>,
    /// The asset an inverse contract settles in (a key of `assets`, linked to the contract's
    /// underlying); `None` for linear contracts.
    pub settlement_asset: Vec<Option<u32>>,
    /// Optional `imf_factor` column (0 when absent): Drift's size premium on the margin rates of
    /// a perpetual or future, `rate(size) = max(rate, 0.8 × rate + imf_factor × sqrt(size))`,
    /// size `|q| × multiplier` in units of the underlying (see [`size_premium_rate`]).
    pub imf_factor: Vec<f64>,
    /// Optional `open_interest_lower_cap` / `open_interest_upper_cap` columns (NaN when absent
    /// or null): dYdX's open-interest-scaled initial margin rate, caps in USD of open notional.
    pub open_interest_lower_cap: Vec<f64>,
    pub open_interest_upper_cap: Vec<f64>,
}

/// Drift's size premium on a rate (perp margin ratios, borrow liability weights):
/// `max(rate, 0.8 × rate + imf × sqrt(size))`; `rate` itself when `imf` is 0.
#[inline(always)]
pub fn size_premium_rate(rate: f64, imf: f64, size: f64) -> f64 {
    if imf > 0.0 {
        rate.max(0.8 * rate + imf * size.sqrt())
    } else {
        rate
    }
}

/// dYdX's open-interest-scaled initial margin rate: `base + s × (1 − base)` with
/// `s = clamp((OI − lower) / (upper − lower), 0, 1)` (`s = 1` from OI >= upper on, `0` up to OI <=
/// lower), OI the instrument's open notional in USD. `base` above 1 is left as it is.
#[inline]
pub fn open_interest_rate(base: f64, lower: f64, upper: f64, open_interest: f64) -> f64 {
    let s = if open_interest >= upper {
        1.0
    } else if open_interest <= lower {
        0.0
    } else {
        (open_interest - lower) / (upper - lower)
    };
    base + s * (1.0 - base).max(0.0)
}

impl Instruments {
    /// Whether any instrument is inverse (coin-settled).
    pub fn has_inverse(&self) -> bool {
        self.inverse.iter().any(|i| *i)
    }

    /// Whether any instrument has open-interest caps (the market's `open_interest` then scales
    /// its initial margin rate).
    pub fn has_open_interest_caps(&self) -> bool {
        self.open_interest_lower_cap.iter().any(|c| !c.is_nan())
    }

    /// Whether any instrument's rates depend on position size or open interest.
    pub fn has_size_rates(&self) -> bool {
        self.imf_factor.iter().any(|f| *f > 0.0) || self.has_open_interest_caps()
    }

    pub fn len(&self) -> usize {
        self.kind.len()
    }
    pub fn is_empty(&self) -> bool {
        self.kind.is_empty()
    }
}

/// One instrument's contract terms in one cache line: what the per-position loops (netting, the
/// standard model) read, gathered from the [`Instruments`] columns, where the same values stay
/// for everything else. A position then costs one line here and one in the market's marks,
/// rather than one line per column.
#[derive(Debug, Clone, Copy, PartialEq)]
#[repr(C, align(64))]
pub struct Contract {
    pub multiplier: f64,
    pub initial_margin_rate: f64,
    pub maintenance_margin_rate: f64,
    /// NaN for non-options.
    pub strike: f64,
    /// 0 for non-options.
    pub initial_margin_floor: f64,
    pub underlying: u32,
    pub kind: Kind,
    pub is_call: bool,
    /// A tier schedule replaces the two rates (`Instruments::tiers`).
    pub tiered: bool,
    /// Coin-settled (`Instruments::inverse`): values and margins in the settlement coin.
    pub inverse: bool,
    /// Drift's size premium (`Instruments::imf_factor`), 0 = none.
    pub imf_factor: f64,
}

impl Contract {
    fn all(ins: &Instruments) -> Vec<Contract> {
        (0..ins.len())
            .map(|i| Contract {
                multiplier: ins.multiplier[i],
                initial_margin_rate: ins.initial_margin_rate[i],
                maintenance_margin_rate: ins.maintenance_margin_rate[i],
                strike: ins.strike[i],
                initial_margin_floor: ins.initial_margin_floor[i],
                underlying: ins.underlying[i],
                kind: ins.kind[i],
                is_call: ins.is_call[i],
                tiered: ins.tiers[i].is_some(),
                inverse: ins.inverse[i],
                imf_factor: ins.imf_factor[i],
            })
            .collect()
    }
}

/// The collateral assets table, indexed by dense asset id (= row).
#[derive(Debug, Clone)]
pub struct Assets {
    pub labels: Vec<String>,
    pub index: KeyIndex,
    pub price: Vec<f64>,
    pub initial_weight: Vec<f64>,
    pub maintenance_weight: Vec<f64>,
    pub initial_liability_weight: Vec<f64>,
    pub maintenance_liability_weight: Vec<f64>,
    pub size_premium: Vec<f64>,
    /// Optional `liability_imf_factor` column (0 when absent): Drift's size premium on a borrow's
    /// liability weights, `max(w, 0.8 × w + factor × sqrt(|amount|))` (see
    /// [`size_premium_rate`]); distinct from `size_premium`, which discounts held assets.
    pub liability_imf_factor: Vec<f64>,
    pub underlying: Vec<Option<u32>>,
    /// Optional `price_confidence` column (1 when absent): the confidence in [0, 1] of the
    /// asset's price feed, read by a methodology's oracle-confidence add-on.
    pub price_confidence: Vec<f64>,
}

impl Assets {
    /// The quote asset, in which option premiums settle when no other is named: the first asset
    /// of the table priced exactly 1 and linked to no underlying (USD, or a dollar stable coin).
    pub fn quote_asset(&self) -> Option<u32> {
        (0..self.labels.len()).find(|&a| self.price[a] == 1.0 && self.underlying[a].is_none()).map(|a| a as u32)
    }
}

/// Portfolio-model parameters of one underlying (§4).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RiskParams {
    pub price_range: f64,
    pub price_steps: usize,
    pub vol_up: f64,
    pub vol_down: f64,
    pub vol_term_exponent: f64,
    pub extreme_move: f64,
    pub extreme_cover: f64,
    pub short_option_minimum: f64,
    pub im_factor: f64,
}

impl Default for RiskParams {
    fn default() -> Self {
        RiskParams {
            price_range: 0.15,
            price_steps: 21,
            vol_up: 0.45,
            vol_down: 0.30,
            vol_term_exponent: 0.3,
            extreme_move: 3.0,
            extreme_cover: 0.33,
            short_option_minimum: 0.01,
            im_factor: 1.25,
        }
    }
}

/// Underlyings, numbered in sorted name order.
#[derive(Debug, Clone)]
pub struct Underlyings {
    pub names: Vec<String>,
    pub index: KeyIndex,
    pub risk: Vec<RiskParams>,
}

/// A validated book.
#[derive(Debug, Clone)]
pub struct Book {
    pub instruments: Instruments,
    /// The instruments' terms again, one cache line per instrument (see [`Contract`]).
    pub contracts: Vec<Contract>,
    pub assets: Assets,
    pub underlyings: Underlyings,
    /// The methodology the models follow (default: v1, §3 and §4 exactly).
    pub methodology: BookMethodology,
}

/// The input tables of a book.
pub struct BookTables<'a> {
    pub instruments: Table<'a>,
    pub assets: Table<'a>,
    pub risk_params: Option<Table<'a>>,
    pub margin_tiers: Option<Table<'a>>,
}

fn labels_of(keys: &[Key]) -> Vec<String> {
    keys.iter()
        .map(|k| match k {
            Key::Str(s) => s.clone(),
            Key::Int(i) => i.to_string(),
        })
        .collect()
}

fn required_strings(t: &Table, column: &str) -> Result<Vec<String>> {
    let col = t.column(column)?;
    col.check_no_nulls()?;
    Ok(col.strings_nullable()?.into_iter().map(|s| s.unwrap_or_default()).collect())
}

/// Rows (by label) where `bad(row)` holds, as an error.
fn check_rows(t: &str, column: &str, problem: &str, labels: &[String], bad: impl Fn(usize) -> bool) -> Result<()> {
    let mut o = Offenders::default();
    for (i, l) in labels.iter().enumerate() {
        if bad(i) {
            o.push(|| format!("'{l}'"));
        }
    }
    o.into_result(t, column, problem)
}

impl Book {
    pub fn new(tables: BookTables) -> Result<Book> {
        let BookTables { instruments, assets, risk_params, margin_tiers } = tables;
        for t in [Some(&instruments), Some(&assets), risk_params.as_ref(), margin_tiers.as_ref()].into_iter().flatten() {
            t.check_unique_column_names()?;
        }

        // Keys first, so every later error can name rows by key.
        let instrument_keys = instruments.column("instrument")?.keys()?;
        let instrument_index = KeyIndex::build(&instrument_keys, "instruments", "instrument")?;
        let instrument_labels = labels_of(&instrument_keys);
        let asset_keys = assets.column("asset")?.keys()?;
        let asset_index = KeyIndex::build(&asset_keys, "assets", "asset")?;
        let asset_labels = labels_of(&asset_keys);
        let instruments_t = instruments.with_labels(&instrument_labels);
        let assets_t = assets.with_labels(&asset_labels);

        // Underlyings: the union of every table's, in sorted name order.
        let instrument_underlying = required_strings(&instruments_t, "underlying")?;
        let asset_underlying = match assets_t.optional_column("underlying") {
            Some(c) => c.strings_nullable()?,
            None => vec![None; asset_labels.len()],
        };
        let risk_underlying = match &risk_params {
            Some(r) => required_strings(r, "underlying")?,
            None => Vec::new(),
        };
        let mut names: Vec<String> = instrument_underlying
            .iter()
            .chain(asset_underlying.iter().flatten())
            .chain(risk_underlying.iter())
            .cloned()
            .collect();
        names.sort_unstable();
        names.dedup();
        let underlying_keys: Vec<Key> = names.iter().map(|n| Key::Str(n.clone())).collect();
        let underlying_index = KeyIndex::build(&underlying_keys, "underlyings", "underlying")?;
        let id_of = |n: &str| underlying_index.get_str(n).unwrap_or(0);

        let risk = match &risk_params {
            Some(r) => parse_risk_params(r, &risk_underlying, &names, &id_of)?,
            None => vec![RiskParams::default(); names.len()],
        };

        let mut instruments = parse_instruments(&instruments_t, &instrument_labels)?;
        instruments.underlying = instrument_underlying.iter().map(|n| id_of(n)).collect();
        instruments.keys = instrument_keys;
        instruments.index = instrument_index;
        if let Some(t) = margin_tiers {
            attach_tiers(&mut instruments, &t)?;
        }
        check_rows(
            "instruments",
            "imf_factor",
            "a size premium (imf_factor > 0) or open-interest caps do not combine with margin tiers: use one or the other",
            &instrument_labels,
            |i| instruments.tiers[i].is_some() && (instruments.imf_factor[i] > 0.0 || !instruments.open_interest_lower_cap[i].is_nan()),
        )?;

        let mut assets = parse_assets(&assets_t, &asset_labels)?;
        assets.index = asset_index;
        assets.underlying = asset_underlying.iter().map(|u| u.as_deref().map(id_of)).collect();
        parse_settlement(&instruments_t, &mut instruments, &assets)?;

        let contracts = Contract::all(&instruments);
        Ok(Book {
            instruments,
            contracts,
            assets,
            underlyings: Underlyings { names, index: underlying_index, risk },
            methodology: BookMethodology::default(),
        })
    }
}

impl Book {
    /// A book methodology (generalized standard rules, scenario tables) values every contract
    /// as linear: with inverse contracts in the book it is refused rather than followed with
    /// wrong numbers.
    pub fn check_methodology_settlement(&self) -> Result<()> {
        if self.methodology.standard.is_none() && self.methodology.portfolio.is_none() {
            return Ok(());
        }
        let ins = &self.instruments;
        check_rows(
            "instruments",
            "settlement",
            &format!("the methodology '{}' does not support inverse (coin-settled) contracts yet; use the v1 models (no methodology)", self.methodology.name),
            &ins.labels,
            |i| ins.inverse[i],
        )
    }
}

fn parse_instruments(t: &Table, labels: &[String]) -> Result<Instruments> {
    let kind_names = required_strings(t, "kind")?;
    let mut bad_kind = Offenders::default();
    let kind: Vec<Kind> = kind_names
        .iter()
        .zip(labels)
        .map(|(k, l)| match k.as_str() {
            "perpetual" => Kind::Perpetual,
            "future" => Kind::Future,
            "option" => Kind::Option,
            _ => {
                bad_kind.push(|| format!("'{l}' = '{k}'"));
                Kind::Perpetual
            }
        })
        .collect();
    bad_kind.into_result(t.name, "kind", "kind must be 'perpetual', 'future' or 'option'")?;
    let is_option = |i: usize| kind[i] == Kind::Option;

    let multiplier = t.column("multiplier")?.f64s(Domain::Positive)?.into_owned();
    // optional: a book of perpetuals needs no expiry column
    let expiry_ns = match t.optional_column("expiry") {
        Some(c) => c.timestamps_ns()?,
        None => vec![None; labels.len()],
    };
    check_rows(t.name, "expiry", "futures and options need an expiry", labels, |i| {
        kind[i] != Kind::Perpetual && expiry_ns[i].is_none()
    })?;
    let strike_opt = match t.optional_column("strike") {
        Some(c) => c.f64s_nullable(Domain::Positive)?,
        None => vec![None; labels.len()],
    };
    check_rows(t.name, "strike", "options need a strike > 0", labels, |i| is_option(i) && strike_opt[i].is_none())?;
    let option_type = match t.optional_column("option_type") {
        Some(c) => c.strings_nullable()?,
        None => vec![None; labels.len()],
    };
    check_rows(t.name, "option_type", "options need option_type 'call' or 'put'", labels, |i| {
        is_option(i) && !matches!(option_type[i].as_deref(), Some("call") | Some("put"))
    })?;
    let initial_margin_rate = t.column("initial_margin_rate")?.f64s(Domain::NonNegative)?.into_owned();
    let maintenance_margin_rate = t.column("maintenance_margin_rate")?.f64s(Domain::Positive)?.into_owned();
    check_rows(t.name, "initial_margin_rate", "initial_margin_rate must be >= maintenance_margin_rate", labels, |i| {
        initial_margin_rate[i] < maintenance_margin_rate[i]
    })?;
    let floor_opt = match t.optional_column("initial_margin_floor") {
        Some(c) => c.f64s_nullable(Domain::NonNegative)?,
        None => vec![None; labels.len()],
    };
    check_rows(t.name, "initial_margin_floor", "options need an initial_margin_floor >= 0", labels, |i| {
        is_option(i) && floor_opt[i].is_none()
    })?;
    let n = labels.len();
    let imf_factor = match t.optional_column("imf_factor") {
        Some(c) => c.f64s_null_as_nan(Domain::NonNegative)?.iter().map(|f| if f.is_nan() { 0.0 } else { *f }).collect(),
        None => vec![0.0; n],
    };
    check_rows(t.name, "imf_factor", "a size premium applies to perpetuals and futures only (null or 0 for options)", labels, |i| {
        is_option(i) && imf_factor[i] > 0.0
    })?;
    let caps = |name: &str| -> Result<Option<Vec<f64>>> {
        t.optional_column(name).map(|c| c.f64s_null_as_nan(Domain::NonNegative).map(|v| v.into_owned())).transpose()
    };
    let (open_interest_lower_cap, open_interest_upper_cap) = match (caps("open_interest_lower_cap")?, caps("open_interest_upper_cap")?) {
        (None, None) => (vec![f64::NAN; n], vec![f64::NAN; n]),
        (Some(lower), Some(upper)) => {
            check_rows(t.name, "open_interest_upper_cap", "open-interest caps come in pairs: both null or both set", labels, |i| {
                lower[i].is_nan() != upper[i].is_nan()
            })?;
            check_rows(t.name, "open_interest_upper_cap", "open_interest_upper_cap must be >= open_interest_lower_cap", labels, |i| {
                upper[i] < lower[i]
            })?;
            check_rows(t.name, "open_interest_lower_cap", "open-interest caps apply to perpetuals and futures only (null for options)", labels, |i| {
                is_option(i) && !lower[i].is_nan()
            })?;
            (lower, upper)
        }
        (Some(_), None) => return Err(crate::error::InputError::new(t.name, "open_interest_upper_cap", "missing: open_interest_lower_cap needs open_interest_upper_cap")),
        (None, Some(_)) => return Err(crate::error::InputError::new(t.name, "open_interest_lower_cap", "missing: open_interest_upper_cap needs open_interest_lower_cap")),
    };

    Ok(Instruments {
        keys: Vec::new(),
        labels: labels.to_vec(),
        index: KeyIndex::Str(Default::default()),
        underlying: Vec::new(),
        multiplier,
        expiry_ns,
        strike: (0..n).map(|i| if is_option(i) { strike_opt[i].unwrap_or(f64::NAN) } else { f64::NAN }).collect(),
        is_call: (0..n).map(|i| option_type[i].as_deref() == Some("call")).collect(),
        initial_margin_floor: (0..n).map(|i| if is_option(i) { floor_opt[i].unwrap_or(0.0) } else { 0.0 }).collect(),
        initial_margin_rate,
        maintenance_margin_rate,
        tiers: vec![None; n],
        inverse: vec![false; n],
        settlement_asset: vec![None; n],
        kind,
        imf_factor,
        open_interest_lower_cap,
        open_interest_upper_cap,
    })
}

/// The optional `settlement` (`linear` default, `inverse`) and `settlement_asset` columns: an
/// inverse contract names the coin it settles in, an asset linked to the contract's own
/// underlying (so that under a move of the underlying its coin moves with it).
fn parse_settlement(t: &Table, instruments: &mut Instruments, assets: &Assets) -> Result<()> {
    let labels = instruments.labels.clone();
    let Some(column) = t.optional_column("settlement") else {
        if let Some(c) = t.optional_column("settlement_asset") {
            // accepted without `settlement` (every contract linear), but still a key of assets
            let named = c.strings_nullable()?;
            check_rows(t.name, "settlement_asset", "not a key of assets", &labels, |i| {
                named[i].as_deref().is_some_and(|a| assets.index.get_str(a).is_none())
            })?;
        }
        return Ok(());
    };
    let settlement = column.strings_nullable()?;
    check_rows(t.name, "settlement", "settlement must be 'linear' or 'inverse' (null = linear)", &labels, |i| {
        !matches!(settlement[i].as_deref(), None | Some("linear") | Some("inverse"))
    })?;
    let inverse: Vec<bool> = settlement.iter().map(|s| s.as_deref() == Some("inverse")).collect();
    let named = match t.optional_column("settlement_asset") {
        Some(c) => c.strings_nullable()?,
        None => vec![None; labels.len()],
    };
    check_rows(t.name, "settlement_asset", "inverse contracts need a settlement_asset", &labels, |i| {
        inverse[i] && named[i].is_none()
    })?;
    let asset_of = |i: usize| named[i].as_deref().and_then(|a| assets.index.get_str(a));
    check_rows(t.name, "settlement_asset", "not a key of assets", &labels, |i| named[i].is_some() && asset_of(i).is_none())?;
    check_rows(
        t.name,
        "settlement_asset",
        "an inverse contract's settlement asset must be linked (assets.underlying) to the contract's own underlying",
        &labels,
        |i| inverse[i] && asset_of(i).is_some_and(|a| assets.underlying[a as usize] != Some(instruments.underlying[i])),
    )?;
    instruments.settlement_asset = (0..labels.len()).map(|i| if inverse[i] { asset_of(i) } else { None }).collect();
    instruments.inverse = inverse;
    Ok(())
}

fn parse_assets(t: &Table, labels: &[String]) -> Result<Assets> {
    let price = t.column("price")?.f64s(Domain::Price)?.into_owned();
    let initial_weight = t.column("initial_weight")?.f64s(Domain::UnitInterval)?.into_owned();
    let maintenance_weight = t.column("maintenance_weight")?.f64s(Domain::UnitInterval)?.into_owned();
    check_rows(t.name, "initial_weight", "initial_weight must be <= maintenance_weight", labels, |i| {
        initial_weight[i] > maintenance_weight[i]
    })?;
    let initial_liability_weight = t.column("initial_liability_weight")?.f64s(Domain::AtLeastOne)?.into_owned();
    let maintenance_liability_weight = t.column("maintenance_liability_weight")?.f64s(Domain::AtLeastOne)?.into_owned();
    check_rows(
        t.name,
        "maintenance_liability_weight",
        "maintenance_liability_weight must be <= initial_liability_weight",
        labels,
        |i| maintenance_liability_weight[i] > initial_liability_weight[i],
    )?;
    let size_premium = match t.optional_column("size_premium") {
        Some(c) => c.f64s(Domain::NonNegative)?.into_owned(),
        None => vec![0.0; labels.len()],
    };
    let liability_imf_factor = match t.optional_column("liability_imf_factor") {
        Some(c) => c.f64s_null_as_nan(Domain::NonNegative)?.iter().map(|f| if f.is_nan() { 0.0 } else { *f }).collect(),
        None => vec![0.0; labels.len()],
    };
    let price_confidence = match t.optional_column("price_confidence") {
        Some(c) => c.f64s(Domain::UnitInterval)?.into_owned(),
        None => vec![1.0; labels.len()],
    };
    Ok(Assets {
        labels: labels.to_vec(),
        index: KeyIndex::Str(Default::default()),
        price,
        initial_weight,
        maintenance_weight,
        initial_liability_weight,
        maintenance_liability_weight,
        size_premium,
        liability_imf_factor,
        underlying: Vec::new(),
        price_confidence,
    })
}

fn parse_risk_params(
    t: &Table,
    underlying: &[String],
    names: &[String],
    id_of: &dyn Fn(&str) -> u32,
) -> Result<Vec<RiskParams>> {
    let keys: Vec<Key> = underlying.iter().map(|u| Key::Str(u.clone())).collect();
    KeyIndex::build(&keys, "risk_params", "underlying")?;
    let t = t.with_labels(underlying);
    let mut risk = vec![RiskParams::default(); names.len()];
    let column = |name: &str, domain: Domain| -> Result<Option<Vec<f64>>> {
        t.optional_column(name).map(|c| c.f64s(domain).map(|v| v.into_owned())).transpose()
    };
    let set = |risk: &mut Vec<RiskParams>, values: Option<Vec<f64>>, apply: &dyn Fn(&mut RiskParams, f64)| {
        if let Some(values) = values {
            for (u, v) in underlying.iter().zip(values) {
                apply(&mut risk[id_of(u) as usize], v);
            }
        }
    };
    let price_range = column("price_range", Domain::Positive)?;
    if let Some(v) = &price_range {
        check_rows(t.name, "price_range", "price_range must be < 1", underlying, |i| v[i] >= 1.0)?;
    }
    set(&mut risk, price_range, &|r, v| r.price_range = v);
    let steps = column("price_steps", Domain::Positive)?;
    if let Some(v) = &steps {
        check_rows(t.name, "price_steps", "price_steps must be an odd integer in [3, 100001]", underlying, |i| {
            v[i] < 3.0 || v[i] > 100_001.0 || v[i].fract() != 0.0 || (v[i] as u64).is_multiple_of(2)
        })?;
    }
    set(&mut risk, steps, &|r, v| r.price_steps = v as usize);
    set(&mut risk, column("vol_up", Domain::NonNegative)?, &|r, v| r.vol_up = v);
    set(&mut risk, column("vol_down", Domain::NonNegative)?, &|r, v| r.vol_down = v);
    set(&mut risk, column("vol_term_exponent", Domain::NonNegative)?, &|r, v| r.vol_term_exponent = v);
    set(&mut risk, column("extreme_move", Domain::NonNegative)?, &|r, v| r.extreme_move = v);
    set(&mut risk, column("extreme_cover", Domain::NonNegative)?, &|r, v| r.extreme_cover = v);
    set(&mut risk, column("short_option_minimum", Domain::NonNegative)?, &|r, v| r.short_option_minimum = v);
    set(&mut risk, column("im_factor", Domain::AtLeastOne)?, &|r, v| r.im_factor = v);
    let mut too_far = Offenders::default();
    for (u, r) in names.iter().zip(&risk) {
        if r.extreme_move * r.price_range > 1.0 {
            too_far.push(|| format!("'{u}'"));
        }
    }
    too_far.into_result(t.name, "extreme_move", "extreme_move × price_range must be <= 1 (prices stay >= 0)")?;
    Ok(risk)
}

fn attach_tiers(instruments: &mut Instruments, t: &Table) -> Result<()> {
    let ids = t.column("instrument")?.map_keys(&instruments.index, "instrument")?;
    let floor = t.column("notional_floor")?.f64s(Domain::NonNegative)?;
    let imr = t.column("initial_margin_rate")?.f64s(Domain::NonNegative)?;
    let mmr = t.column("maintenance_margin_rate")?.f64s(Domain::Positive)?;
    let mut bad = Offenders::default();
    for i in 0..ids.len() {
        if imr[i] < mmr[i] {
            bad.push(|| format!("row {i}"));
        }
    }
    bad.into_result(t.name, "initial_margin_rate", "initial_margin_rate must be >= maintenance_margin_rate")?;
    let mut options = Offenders::default();
    for (i, id) in ids.iter().enumerate() {
        if instruments.kind[*id as usize] == Kind::Option {
            options.push(|| format!("'{}' (row {i})", instruments.labels[*id as usize]));
        }
    }
    options.into_result(t.name, "instrument", "tiers apply to perpetuals and futures only, not options")?;

    let mut rows: Vec<usize> = (0..ids.len()).collect();
    rows.sort_by(|a, b| ids[*a].cmp(&ids[*b]).then(floor[*a].total_cmp(&floor[*b])));
    let mut duplicate = Offenders::default();
    for w in rows.windows(2) {
        if ids[w[0]] == ids[w[1]] && floor[w[0]] == floor[w[1]] {
            duplicate.push(|| format!("'{}' floor {}", instruments.labels[ids[w[1]] as usize], floor[w[1]]));
        }
    }
    duplicate.into_result(t.name, "notional_floor", "duplicate (instrument, notional_floor)")?;
    for group in rows.chunk_by(|a, b| ids[*a] == ids[*b]) {
        let id = ids[group[0]] as usize;
        let brackets: Vec<(f64, f64, f64)> = group.iter().map(|&r| (floor[r], imr[r], mmr[r])).collect();
        instruments.tiers[id] = Some(Tiers::new(
            instruments.initial_margin_rate[id],
            instruments.maintenance_margin_rate[id],
            &brackets,
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiers_are_continuous() {
        let t = Tiers::new(0.02, 0.01, &[(1e6, 0.04, 0.02), (5e6, 0.10, 0.05)]);
        assert_eq!(t.brackets.len(), 3);
        for floor in [1e6, 5e6] {
            let below = t.margin(floor * (1.0 - 1e-12));
            let at = t.margin(floor);
            assert!((below.0 - at.0).abs() < 1e-3 && (below.1 - at.1).abs() < 1e-3);
        }
        assert_eq!(t.margin(5e5), (1e4, 5e3));
        // 2e6 in the second bracket: 2e6 × 0.02 − 1e6 × (0.02 − 0.01)
        assert_eq!(t.margin(2e6).1, 2e6 * 0.02 - 1e6 * 0.01);
    }

    #[test]
    fn tiers_with_a_zero_bracket_replace_the_base_rates() {
        let t = Tiers::new(0.5, 0.4, &[(0.0, 0.02, 0.01)]);
        assert_eq!(t.brackets.len(), 1);
        assert_eq!(t.margin(100.0), (2.0, 1.0));
    }
}
