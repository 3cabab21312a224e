//! Generalized standard (per position) margin (METHODOLOGY-v2 §9.2): §3 plus the rules real
//! venues publish, each switched and sized by a [`StandardRules`] value, never a separate code
//! path. The Rust twin of `python/margin_engine/reference/standard_rules.py` (parameters:
//! `reference/standard_params.py`): the same steps, in the same order of summation, so both
//! agree bit for bit on the same inputs; with [`StandardRules::v1`] the requirements are
//! [`crate::standard::position_margin`]'s sums exactly and collateral is
//! [`crate::valuation::value_balances`]' exactly.
//!
//! The rules, for one account:
//! 1. **Short-option charge** per contract (longs are charged nothing):
//!    `IM = mark + max(im_rate × S − OTM, im_floor × S)`; calls `MM = mark + call_mm_rate × S`;
//!    puts `MM = mark + max(put_mm_rate × S, put_mm_mark_rate × mark)`; then, where set,
//!    `IM ≥ k × MM` (`put_im_mm_multiple`, `call_im_mm_multiple`); times `|q| × multiplier`.
//! 2. **Perpetuals and futures**: `notional × rate` (v1: the instrument's rate and tiers).
//! 3. **Per-expiry max-loss floor**: the options of one (underlying, expiry) are charged
//!    `min(Σ rule-1 charges, L + u × forward × N)`, `L` the largest settlement loss of the
//!    expiry's payoff over {0} ∪ its strikes, `N` the net short calls, `u` the unpaired-call scale.
//! 4. **Collateral**: without `option_value_in_collateral` no option adds its value to
//!    collateral (a short's mark is counted once, in its charge; equity still holds it); with
//!    `base_asset_margin_factor` a held asset linked to an underlying counts
//!    `amount × price × factor` (× `base_asset_im_scale` for initial) instead of its weights.
//! 5. **IM add-ons** per underlying: the stable-coin depeg add-on and the oracle-confidence
//!    add-ons (perpetuals / futures, option expiries, base assets).
//!
//! Summation order (the reference's): the account's charges in instrument-id order, an expiry's
//! floored charge at the place of its first option; then, per underlying in id (= sorted name)
//! order, `depeg + ((oracle_linear + oracle_option) + oracle_base)`, added when non-zero.
//! Balances in asset-id order, positions' P&L in instrument-id order then the closed P&L.
//!
//! # Calling the kernel
//! [`account_margin`] margins one account from what `engine::Pricing::account_with` already
//! has: the netted positions (`valuation::net_positions`, instrument-id order) and closed P&L,
//! the balances valued by `valuation::value_balances` together with the (asset, row) pairs it
//! leaves sorted in its scratch, and the asset prices it valued them at. It allocates nothing
//! once its [`RulesScratch`] has grown (keep one per thread). [`StandardAccount::row`] is the
//! account's [`AccountRow`].
//!
//! # Market feeds
//! The rules read market data v1 does not: forwards per expiry, feed confidences, the stable
//! coin's price. [`Feeds`] takes them as plain per-instrument / per-underlying slices; `None`
//! gives v1's implicit value (forward = index price, confidence 1, stable price 1). To carry
//! them itself the market would need, per instrument id, the forward of an option's expiry and
//! that expiry's forward and vol confidences (an `expiry_feeds` table keyed by (underlying,
//! expiry) spread onto the options), the mark feed's confidence of perpetuals / futures (a
//! `confidence` column of `marks`), per underlying the index feed's confidence (a `confidence`
//! column of `index_prices`), and the USD price of the stable coin cash is held in. The market
//! now carries all but a separate vol confidence: [`Feeds::of_market`] reads them from it (one
//! confidence per expiry serves as the forward's and the vols': the rule reads their minimum).

use std::sync::Mutex;

use rayon::prelude::*;

use crate::book::{Book, Contract, Kind};
use crate::engine::Inputs;
use crate::error::{InputError, Offenders, Result};
use crate::market::Market;
use crate::results::AccountRow;
use crate::rows::Balances;
use crate::standard;
use crate::valuation::{net_positions, value_balance, value_balances, BalanceScratch, Collateral, NetPosition, Scratch};

/// Every parameter of the generalized standard margin: the mirror of the reference's
/// `StandardParams`, field for field (`None` where the Python side has `None`). Build one with
/// [`StandardRules::v1`], [`StandardRules::derive_standard`] or field by field, then
/// [`StandardRules::check`] it once.
#[derive(Debug, Clone, PartialEq)]
pub struct StandardRules {
    /// A label shown in reports; no effect on any number.
    pub name: String,
    /// Short-option IM rate; `None`: the instrument's `initial_margin_rate`.
    pub option_im_rate: Option<f64>,
    /// Short-option IM floor rate; `None`: the instrument's `initial_margin_floor`.
    pub option_im_floor: Option<f64>,
    /// Short-call MM rate; `None`: the instrument's `maintenance_margin_rate`.
    pub call_mm_rate: Option<f64>,
    /// Short-put MM rate; `None`: the instrument's `maintenance_margin_rate`.
    pub put_mm_rate: Option<f64>,
    /// Short-put MM alternative on the mark, `max(put_mm_rate × S, rate × mark)`; 0 = off.
    pub put_mm_mark_rate: f64,
    /// Short-put `IM ≥ k × MM`; `None` = off.
    pub put_im_mm_multiple: Option<f64>,
    /// Short-call `IM ≥ k × MM`; `None` = off.
    pub call_im_mm_multiple: Option<f64>,
    /// Perpetual / future IM rate on notional, replacing the instrument's rate and tiers.
    pub linear_im_rate: Option<f64>,
    /// Perpetual / future MM rate on notional (set with `linear_im_rate`).
    pub linear_mm_rate: Option<f64>,
    /// Rule 3, the per-expiry max-loss floor.
    pub max_loss_floor: bool,
    /// IM charge per net short call of an expiry, in forwards.
    pub unpaired_call_im_scale: f64,
    /// MM charge per net short call of an expiry, in forwards.
    pub unpaired_call_mm_scale: f64,
    /// Options' value `q × mult × mark` in collateral (v1) or not (Derive).
    pub option_value_in_collateral: bool,
    /// Maintenance collateral factor of a held asset linked to an underlying; `None`: weights.
    pub base_asset_margin_factor: Option<f64>,
    /// Initial collateral of such an asset: `× factor × scale`.
    pub base_asset_im_scale: f64,
    /// Depeg add-on threshold on the stable's price; `None` = off.
    pub depeg_threshold: Option<f64>,
    /// Size of the depeg add-on.
    pub depeg_factor: f64,
    /// Size of the oracle-confidence add-ons.
    pub oracle_factor: f64,
    /// Confidence threshold of perpetuals / futures; `None` = off.
    pub oracle_linear_threshold: Option<f64>,
    /// Confidence threshold per option expiry; `None` = off.
    pub oracle_option_threshold: Option<f64>,
    /// Confidence threshold of base assets; `None` = off.
    pub oracle_base_threshold: Option<f64>,
}

impl Default for StandardRules {
    fn default() -> Self {
        StandardRules::v1()
    }
}

fn bad(field: &str, problem: impl Into<String>) -> InputError {
    InputError::new("methodology", &format!("standard.{field}"), problem)
}

impl StandardRules {
    /// Field names in declaration order (the keys of the reference's `asdict(StandardParams)`).
    pub const FIELDS: [&'static str; 22] = [
        "name",
        "option_im_rate",
        "option_im_floor",
        "call_mm_rate",
        "put_mm_rate",
        "put_mm_mark_rate",
        "put_im_mm_multiple",
        "call_im_mm_multiple",
        "linear_im_rate",
        "linear_mm_rate",
        "max_loss_floor",
        "unpaired_call_im_scale",
        "unpaired_call_mm_scale",
        "option_value_in_collateral",
        "base_asset_margin_factor",
        "base_asset_im_scale",
        "depeg_threshold",
        "depeg_factor",
        "oracle_factor",
        "oracle_linear_threshold",
        "oracle_option_threshold",
        "oracle_base_threshold",
    ];

    /// Methodology §3 exactly: instrument rates and tiers, no floor, options in collateral.
    pub fn v1() -> Self {
        StandardRules {
            name: "v1".into(),
            option_im_rate: None,
            option_im_floor: None,
            call_mm_rate: None,
            put_mm_rate: None,
            put_mm_mark_rate: 0.0,
            put_im_mm_multiple: None,
            call_im_mm_multiple: None,
            linear_im_rate: None,
            linear_mm_rate: None,
            max_loss_floor: false,
            unpaired_call_im_scale: 1.0,
            unpaired_call_mm_scale: 1.0,
            option_value_in_collateral: true,
            base_asset_margin_factor: None,
            base_asset_im_scale: 1.0,
            depeg_threshold: None,
            depeg_factor: 0.0,
            oracle_factor: 0.0,
            oracle_linear_threshold: None,
            oracle_option_threshold: None,
            oracle_base_threshold: None,
        }
    }

    /// Derive's standard manager as configured for its 28 published cases (the values and
    /// their provenance are the reference's `DERIVE_STANDARD`).
    pub fn derive_standard() -> Self {
        StandardRules {
            name: "derive_standard".into(),
            option_im_rate: Some(0.15),
            option_im_floor: Some(0.10),
            call_mm_rate: Some(0.075),
            put_mm_rate: Some(0.075),
            put_mm_mark_rate: 0.075,
            put_im_mm_multiple: Some(1.05),
            call_im_mm_multiple: None,
            linear_im_rate: Some(0.065),
            linear_mm_rate: Some(0.05),
            max_loss_floor: true,
            unpaired_call_im_scale: 1.2,
            unpaired_call_mm_scale: 1.1,
            option_value_in_collateral: false,
            base_asset_margin_factor: Some(0.1),
            base_asset_im_scale: 1.0,
            depeg_threshold: Some(0.98),
            depeg_factor: 1.2,
            oracle_factor: 0.4,
            oracle_linear_threshold: Some(0.4),
            oracle_option_threshold: Some(0.4),
            oracle_base_threshold: Some(0.4),
        }
    }

    /// Every number field with its name, in declaration order (`None` for an unset option).
    fn numbers(&self) -> [(&'static str, Option<f64>); 19] {
        [
            ("option_im_rate", self.option_im_rate),
            ("option_im_floor", self.option_im_floor),
            ("call_mm_rate", self.call_mm_rate),
            ("put_mm_rate", self.put_mm_rate),
            ("put_mm_mark_rate", Some(self.put_mm_mark_rate)),
            ("put_im_mm_multiple", self.put_im_mm_multiple),
            ("call_im_mm_multiple", self.call_im_mm_multiple),
            ("linear_im_rate", self.linear_im_rate),
            ("linear_mm_rate", self.linear_mm_rate),
            ("unpaired_call_im_scale", Some(self.unpaired_call_im_scale)),
            ("unpaired_call_mm_scale", Some(self.unpaired_call_mm_scale)),
            ("base_asset_margin_factor", self.base_asset_margin_factor),
            ("base_asset_im_scale", Some(self.base_asset_im_scale)),
            ("depeg_threshold", self.depeg_threshold),
            ("depeg_factor", Some(self.depeg_factor)),
            ("oracle_factor", Some(self.oracle_factor)),
            ("oracle_linear_threshold", self.oracle_linear_threshold),
            ("oracle_option_threshold", self.oracle_option_threshold),
            ("oracle_base_threshold", self.oracle_base_threshold),
        ]
    }

    /// The structural rules of the reference's `StandardParams.__post_init__`, checked in its
    /// order: every number finite and ≥ 0; factors, scales and thresholds in [0, 1]; a set
    /// IM/MM multiple > 0; the two linear rates set together. The error names
    /// `methodology.standard.<field>`.
    pub fn check(&self) -> Result<()> {
        let numbers = self.numbers();
        for (name, value) in numbers {
            if let Some(v) = value {
                if !(v.is_finite() && v >= 0.0) {
                    return Err(bad(name, format!("must be a finite number >= 0, got {v}")));
                }
            }
        }
        let unit = [
            "base_asset_margin_factor",
            "base_asset_im_scale",
            "depeg_threshold",
            "oracle_linear_threshold",
            "oracle_option_threshold",
            "oracle_base_threshold",
            "oracle_factor",
        ];
        for name in unit {
            let value = numbers.iter().find(|(n, _)| *n == name).and_then(|(_, v)| *v);
            if let Some(v) = value {
                if v > 1.0 {
                    return Err(bad(name, format!("must be in [0, 1], got {v}")));
                }
            }
        }
        for (name, value) in [("put_im_mm_multiple", self.put_im_mm_multiple), ("call_im_mm_multiple", self.call_im_mm_multiple)] {
            if value == Some(0.0) {
                return Err(bad(name, "must be > 0 (use null to switch the rule off)"));
            }
        }
        if self.linear_im_rate.is_none() != self.linear_mm_rate.is_none() {
            return Err(bad("linear_im_rate", "linear_im_rate and linear_mm_rate are set together or not at all"));
        }
        Ok(())
    }

    /// Whether any IM add-on (rule 5) is switched on.
    fn has_addons(&self) -> bool {
        self.depeg_threshold.is_some()
            || self.oracle_linear_threshold.is_some()
            || self.oracle_option_threshold.is_some()
            || self.oracle_base_threshold.is_some()
    }

    /// Whether the options must be grouped by expiry (the floor, or the per-expiry oracle add-on).
    fn needs_expiries(&self) -> bool {
        self.max_loss_floor || self.oracle_option_threshold.is_some()
    }
}

/// The market data only the generalized rules read, as plain slices (see the module docs);
/// `None` is v1's implicit value. All options of one (underlying, expiry) must carry the same
/// forward and confidences (the kernel reads those of the expiry's first option).
#[derive(Debug, Clone, Copy)]
pub struct Feeds<'a> {
    /// Per instrument id: the forward of an option's expiry, NaN where none is given (and for
    /// other instruments); `None` or NaN: the index price.
    pub forward: Option<&'a [f64]>,
    /// Per underlying id: the index feed's confidence in [0, 1]; `None`: 1.
    pub index_confidence: Option<&'a [f64]>,
    /// Per instrument id: the mark feed's confidence of a perpetual / future; `None`: 1.
    pub mark_confidence: Option<&'a [f64]>,
    /// Per instrument id: the confidence of an option expiry's forward; `None`: 1.
    pub forward_confidence: Option<&'a [f64]>,
    /// Per instrument id: the lowest confidence of an option expiry's vols; `None`: 1.
    pub vol_confidence: Option<&'a [f64]>,
    /// USD price of the stable coin cash is held in (the depeg add-on).
    pub stable_price: f64,
}

impl<'a> Feeds<'a> {
    /// Every feed `market` carries: each option's expiry forward and confidence (kept per
    /// instrument by the market), the index and mark confidences, and the quote asset's USD price
    /// as the stable coin's.
    pub fn of_market(market: &'a Market) -> Feeds<'a> {
        Feeds {
            forward: Some(&market.expiry_forward),
            index_confidence: Some(&market.index_confidence),
            mark_confidence: Some(&market.mark_confidence),
            forward_confidence: Some(&market.expiry_confidence),
            vol_confidence: None,
            stable_price: market.quote_usd_price,
        }
    }
}

impl Default for Feeds<'_> {
    fn default() -> Self {
        Feeds { forward: None, index_confidence: None, mark_confidence: None, forward_confidence: None, vol_confidence: None, stable_price: 1.0 }
    }
}

impl Feeds<'_> {
    /// Lengths against the book (instruments / underlyings), forwards NaN or finite and > 0,
    /// confidences in [0, 1], the stable price finite and ≥ 0. Errors name table `feeds`.
    pub fn check(&self, book: &Book) -> Result<()> {
        let n_ins = book.instruments.len();
        let n_und = book.underlyings.names.len();
        let columns: [(&str, Option<&[f64]>, usize, bool); 5] = [
            ("forward", self.forward, n_ins, false),
            ("index_confidence", self.index_confidence, n_und, true),
            ("mark_confidence", self.mark_confidence, n_ins, true),
            ("forward_confidence", self.forward_confidence, n_ins, true),
            ("vol_confidence", self.vol_confidence, n_ins, true),
        ];
        for (name, values, len, confidence) in columns {
            let Some(values) = values else { continue };
            if values.len() != len {
                return Err(InputError::new("feeds", name, format!("expected {len} values (one per {}), got {}", if len == n_und { "underlying" } else { "instrument" }, values.len())));
            }
            let ok = |v: f64| if confidence { (0.0..=1.0).contains(&v) } else { v.is_nan() || (v.is_finite() && v > 0.0) };
            if let Some(v) = values.iter().find(|v| !ok(**v)) {
                let want = if confidence { "a confidence in [0, 1]" } else { "a finite price > 0" };
                return Err(InputError::new("feeds", name, format!("expected {want}, got {v}")));
            }
        }
        if !(self.stable_price.is_finite() && self.stable_price >= 0.0) {
            return Err(InputError::new("feeds", "stable_price", format!("expected a finite price >= 0, got {}", self.stable_price)));
        }
        Ok(())
    }
}

#[inline(always)]
fn at(values: Option<&[f64]>, i: usize, default: f64) -> f64 {
    values.map_or(default, |v| v[i])
}

/// Python's `min(a, b)`: `a` unless `b < a`.
#[inline(always)]
fn py_min(a: f64, b: f64) -> f64 {
    if b < a {
        b
    } else {
        a
    }
}

/// Python's `max(a, b)`: `a` unless `b > a`.
#[inline(always)]
fn py_max(a: f64, b: f64) -> f64 {
    if b > a {
        b
    } else {
        a
    }
}

/// `(1 − c) × factor × amount` when the confidence `c` is below the threshold, else 0.
#[inline(always)]
fn oracle_addon(threshold: Option<f64>, confidence: f64, factor: f64, amount: f64) -> f64 {
    match threshold {
        Some(t) if confidence < t => (1.0 - confidence) * factor * amount,
        _ => 0.0,
    }
}

/// Rule 1 `(IM, MM)` of a short option of `quantity < 0` contracts.
#[inline]
pub fn short_option_charge(c: &Contract, quantity: f64, mark: f64, spot: f64, rules: &StandardRules) -> (f64, f64) {
    let im_rate = rules.option_im_rate.unwrap_or(c.initial_margin_rate);
    let im_floor = rules.option_im_floor.unwrap_or(c.initial_margin_floor);
    // as `standard::position_margin_at`, so that v1 is its result bit for bit
    let out_of_the_money = if c.is_call { (c.strike - spot).max(0.0) } else { (spot - c.strike).max(0.0) };
    let im_per_contract = mark + (im_rate * spot - out_of_the_money).max(im_floor * spot);
    let (mm_per_contract, multiple) = if c.is_call {
        (mark + rules.call_mm_rate.unwrap_or(c.maintenance_margin_rate) * spot, rules.call_im_mm_multiple)
    } else {
        let rate = rules.put_mm_rate.unwrap_or(c.maintenance_margin_rate);
        let mm = if rules.put_mm_mark_rate > 0.0 {
            mark + py_max(rate * spot, rules.put_mm_mark_rate * mark)
        } else {
            mark + rate * spot
        };
        (mm, rules.put_im_mm_multiple)
    };
    let contracts = quantity.abs() * c.multiplier;
    let mut im = contracts * im_per_contract;
    let mm = contracts * mm_per_contract;
    if let Some(k) = multiple {
        im = py_max(im, k * mm);
    }
    (im, mm)
}

/// Rules 1 and 2 `(IM, MM)` of one netted position, before any floor.
#[inline]
pub fn isolated_charge(book: &Book, market: &Market, rules: &StandardRules, p: &NetPosition) -> (f64, f64) {
    let id = p.instrument as usize;
    let c = &book.contracts[id];
    let mark = market.mark_price[id];
    let spot = market.index_price[c.underlying as usize];
    if c.kind.is_linear() {
        return match (rules.linear_im_rate, rules.linear_mm_rate) {
            (Some(im_rate), Some(mm_rate)) => {
                let notional = p.quantity.abs() * c.multiplier * mark;
                (notional * im_rate, notional * mm_rate)
            }
            _ => standard::position_margin_in(book, market, id, p.quantity, mark, spot),
        };
    }
    if p.quantity > 0.0 {
        return (0.0, 0.0);
    }
    short_option_charge(c, p.quantity, mark, spot, rules)
}

/// The settlement value of an expiry's options (positions `members` of `net`) if the
/// underlying settles at `price`: `Σ q × mult × intrinsic(price)`, in the given order.
#[inline]
fn expiry_payoff(book: &Book, net: &[NetPosition], members: &[(u32, i64, u32)], price: f64) -> f64 {
    let mut total = 0.0;
    for &(_, _, k) in members {
        let p = &net[k as usize];
        let c = &book.contracts[p.instrument as usize];
        let intrinsic = if c.is_call { py_max(price - c.strike, 0.0) } else { py_max(c.strike - price, 0.0) };
        total += p.quantity * c.multiplier * intrinsic;
    }
    total
}

/// Rule 3 for the options of one (underlying, expiry).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ExpiryCharge {
    pub underlying: u32,
    pub expiry_ns: i64,
    /// Index in the account's positions of the expiry's first option (instrument-id order).
    pub first: u32,
    pub forward: f64,
    /// Σ rule-1 charges of the expiry's options, in instrument-id order.
    pub isolated_im: f64,
    pub isolated_mm: f64,
    /// `L ≥ 0` (computed under the floor only).
    pub max_loss: f64,
    /// `N ≥ 0`, net short calls (under the floor only).
    pub unpaired_calls: f64,
    /// Σ |q| × mult over the expiry's short options.
    pub short_contracts: f64,
    pub floor_im: f64,
    pub floor_mm: f64,
    /// The expiry's charge: `min(isolated, floor)` under the floor, else the isolated sum.
    pub im: f64,
    pub mm: f64,
}

/// Add-on sums of one underlying (rule 5).
#[derive(Debug, Clone, Copy, Default)]
struct UnderlyingSums {
    touched: bool,
    has_positions: bool,
    /// Σ |linear contracts| + Σ short option contracts, in instrument-id order.
    exposure: f64,
    oracle_linear: f64,
    oracle_option: f64,
    oracle_base: f64,
}

/// Per-thread buffers of [`account_margin`]: after the first accounts, nothing allocates.
#[derive(Debug, Default)]
pub struct RulesScratch {
    /// (underlying, expiry, position index) of the account's options, sorted: one run per expiry.
    options: Vec<(u32, i64, u32)>,
    /// Per position index: its expiry's index in `expiries` (options only).
    group_of: Vec<u32>,
    pub expiries: Vec<ExpiryCharge>,
    /// Per underlying id.
    underlyings: Vec<UnderlyingSums>,
    touched: Vec<u32>,
}

/// One account as the engine holds it when margining (see the module docs).
#[derive(Clone, Copy)]
pub struct AccountInputs<'a> {
    /// Netted positions, sorted by instrument id (`valuation::net_positions`).
    pub net: &'a [NetPosition],
    /// P&L of positions that netted to exactly 0 (`valuation::Scratch::closed_pnl`).
    pub closed_pnl: f64,
    /// Realized P&L not in the rows (what-if trades); starts the P&L sum, 0 otherwise.
    pub extra_pnl: f64,
    /// The balances' rows...
    pub balances: &'a Balances<'a>,
    /// ... as (asset id, row) pairs sorted by asset, as `value_balances` leaves its scratch.
    pub sorted_balances: &'a [(u32, u32)],
    /// Asset prices the balances are valued at (the book's, or a stress's).
    pub asset_price: &'a [f64],
    /// `value_balances`' result for these balances.
    pub collateral: Collateral,
}

/// One account under the generalized standard margin: the reference's
/// `AccountStandardMargin` at account level.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StandardAccount {
    pub initial_margin: f64,
    pub maintenance_margin: f64,
    /// The balances' collateral after rule 4 (the base-asset factor); `cash` is unchanged.
    pub collateral: Collateral,
    /// The P&L in collateral: `extra_pnl + Σ` positions' value (options only when
    /// `option_value_in_collateral`) `+ closed_pnl`.
    pub pnl: f64,
    pub equity: f64,
    pub collateral_initial: f64,
    pub collateral_maintenance: f64,
    /// `closed_pnl + Σ` perpetual / future P&L.
    pub upnl: f64,
    /// Σ `q × mult × mark` over option positions.
    pub option_value: f64,
    /// Σ over underlyings of the depeg add-on (in IM).
    pub depeg_im: f64,
    /// Σ over underlyings of the oracle-confidence add-ons (in IM).
    pub oracle_im: f64,
}

impl StandardAccount {
    /// The engine's account row (§6 status follows from it).
    pub fn row(&self, account_id: u64) -> AccountRow {
        AccountRow {
            account_id,
            equity: self.equity,
            collateral_initial: self.collateral_initial,
            collateral_maintenance: self.collateral_maintenance,
            initial_margin: self.initial_margin,
            maintenance_margin: self.maintenance_margin,
        }
    }
}

impl RulesScratch {
    fn touch(&mut self, u: u32) -> &mut UnderlyingSums {
        let s = &mut self.underlyings[u as usize];
        if !s.touched {
            s.touched = true;
            self.touched.push(u);
        }
        s
    }

    /// Rule 3's groups and charges: `expiries` in (underlying, expiry) order, `group_of` per option.
    fn expiry_charges(&mut self, book: &Book, market: &Market, rules: &StandardRules, feeds: &Feeds, net: &[NetPosition]) {
        self.options.clear();
        self.expiries.clear();
        if self.group_of.len() < net.len() {
            self.group_of.resize(net.len(), 0);
        }
        for (k, p) in net.iter().enumerate() {
            let id = p.instrument as usize;
            let c = &book.contracts[id];
            if c.kind == Kind::Option {
                let expiry = book.instruments.expiry_ns[id].unwrap_or(i64::MIN);
                self.options.push((c.underlying, expiry, k as u32));
            }
        }
        self.options.sort_unstable();
        let options = &self.options;
        let mut start = 0;
        while start < options.len() {
            let (u, e, first) = options[start];
            let mut end = start + 1;
            while end < options.len() && options[end].0 == u && options[end].1 == e {
                end += 1;
            }
            let members = &options[start..end];
            let spot = market.index_price[u as usize];
            let first_id = net[first as usize].instrument as usize;
            let forward = at(feeds.forward, first_id, f64::NAN);
            let forward = if forward.is_nan() { spot } else { forward };
            let mut charge = ExpiryCharge { underlying: u, expiry_ns: e, first, forward, ..Default::default() };
            let mut worst = 0.0;
            if rules.max_loss_floor {
                worst = py_min(0.0, expiry_payoff(book, net, members, 0.0));
            }
            let mut net_calls = 0.0;
            let g = self.expiries.len() as u32;
            for &(_, _, k) in members {
                self.group_of[k as usize] = g;
                let p = &net[k as usize];
                let (im, mm) = isolated_charge(book, market, rules, p);
                charge.isolated_im += im;
                charge.isolated_mm += mm;
                let c = &book.contracts[p.instrument as usize];
                if rules.max_loss_floor {
                    worst = py_min(worst, expiry_payoff(book, net, members, c.strike));
                }
                if c.is_call {
                    net_calls += p.quantity * c.multiplier;
                }
                if p.quantity < 0.0 {
                    charge.short_contracts += -p.quantity * c.multiplier;
                }
            }
            if rules.max_loss_floor {
                charge.max_loss = -worst;
                charge.unpaired_calls = py_max(-net_calls, 0.0);
                charge.floor_im = charge.max_loss + rules.unpaired_call_im_scale * charge.forward * charge.unpaired_calls;
                charge.floor_mm = charge.max_loss + rules.unpaired_call_mm_scale * charge.forward * charge.unpaired_calls;
                charge.im = py_min(charge.isolated_im, charge.floor_im);
                charge.mm = py_min(charge.isolated_mm, charge.floor_mm);
            } else {
                charge.im = charge.isolated_im;
                charge.mm = charge.isolated_mm;
            }
            self.expiries.push(charge);
            start = end;
        }
    }
}

/// The generalized standard margin of one account (rules 1-5, in the reference's order; see
/// the module docs for what the caller passes). `rules` must have passed
/// [`StandardRules::check`] and `feeds` [`Feeds::check`] against this book.
pub fn account_margin(book: &Book, market: &Market, rules: &StandardRules, feeds: &Feeds, account: &AccountInputs, scratch: &mut RulesScratch) -> StandardAccount {
    let net = account.net;
    let addons = rules.has_addons();
    if rules.needs_expiries() {
        scratch.expiry_charges(book, market, rules, feeds, net);
    }
    if addons && scratch.underlyings.len() < book.underlyings.names.len() {
        scratch.underlyings.resize(book.underlyings.names.len(), UnderlyingSums::default());
    }

    // Rules 1-3 in instrument-id order, an expiry's charge at its first option.
    let mut im = 0.0;
    let mut mm = 0.0;
    let mut upnl = account.closed_pnl;
    let mut option_value = 0.0;
    for (k, p) in net.iter().enumerate() {
        let c = &book.contracts[p.instrument as usize];
        if c.kind == Kind::Option {
            option_value += p.value;
            if rules.max_loss_floor {
                let expiry = &scratch.expiries[scratch.group_of[k] as usize];
                if expiry.first as usize == k {
                    im += expiry.im;
                    mm += expiry.mm;
                }
                continue;
            }
        } else {
            upnl += p.value;
        }
        let (p_im, p_mm) = isolated_charge(book, market, rules, p);
        im += p_im;
        mm += p_mm;
    }

    // Rule 4: collateral, balances in asset-id order.
    let collateral = match rules.base_asset_margin_factor {
        None => account.collateral,
        Some(factor) => {
            let mut total = Collateral::default();
            for &(asset, row) in account.sorted_balances {
                let a = asset as usize;
                let amount = account.balances.amount[row as usize];
                let price = account.asset_price[a];
                match book.assets.underlying[a] {
                    Some(u) if amount > 0.0 => {
                        total.cash += amount * price;
                        let value_m = amount * price * factor;
                        let value_i = value_m * rules.base_asset_im_scale;
                        if addons {
                            let threshold = if value_i != 0.0 { rules.oracle_base_threshold } else { None };
                            let confidence = at(feeds.index_confidence, u as usize, 1.0);
                            let addon = oracle_addon(threshold, confidence, rules.oracle_factor, amount * price);
                            scratch.touch(u).oracle_base += addon;
                        }
                        total.weighted_initial += value_i;
                        total.weighted_maintenance += value_m;
                    }
                    _ => {
                        let v = value_balance(book, a, amount, price);
                        total.cash += v.cash;
                        total.weighted_initial += v.weighted_initial;
                        total.weighted_maintenance += v.weighted_maintenance;
                    }
                }
            }
            total
        }
    };
    let mut pnl = account.extra_pnl;
    for p in net {
        if rules.option_value_in_collateral || book.contracts[p.instrument as usize].kind != Kind::Option {
            pnl += p.value;
        }
    }
    pnl += account.closed_pnl;

    // Rule 5: IM add-ons per underlying, in id (= sorted name) order.
    let mut depeg_im = 0.0;
    let mut oracle_im = 0.0;
    if addons {
        for (k, p) in net.iter().enumerate() {
            let id = p.instrument as usize;
            let c = &book.contracts[id];
            let u = c.underlying as usize;
            let spot = market.index_price[u];
            let index_confidence = at(feeds.index_confidence, u, 1.0);
            let size = p.quantity.abs() * c.multiplier;
            let expiry = (c.kind == Kind::Option && rules.oracle_option_threshold.is_some())
                .then(|| scratch.expiries[scratch.group_of[k] as usize])
                .filter(|e| e.first as usize == k);
            let s = scratch.touch(c.underlying);
            s.has_positions = true;
            if c.kind.is_linear() {
                s.exposure += size;
                let confidence = py_min(at(feeds.mark_confidence, id, 1.0), index_confidence);
                s.oracle_linear += oracle_addon(rules.oracle_linear_threshold, confidence, rules.oracle_factor, spot * size);
            } else if p.quantity < 0.0 {
                s.exposure += size;
            }
            if let Some(e) = expiry {
                let confidence = py_min(py_min(index_confidence, at(feeds.forward_confidence, id, 1.0)), at(feeds.vol_confidence, id, 1.0));
                s.oracle_option += oracle_addon(rules.oracle_option_threshold, confidence, rules.oracle_factor, spot * e.short_contracts);
            }
        }
        let depeg_rate = match rules.depeg_threshold {
            Some(t) if feeds.stable_price < t => Some((t - feeds.stable_price) * rules.depeg_factor),
            _ => None,
        };
        scratch.touched.sort_unstable();
        for &u in &scratch.touched {
            let s = &mut scratch.underlyings[u as usize];
            let depeg = match depeg_rate {
                Some(rate) if s.has_positions => rate * market.index_price[u as usize] * s.exposure,
                _ => 0.0,
            };
            let oracle = s.oracle_linear + s.oracle_option + s.oracle_base;
            let addon = depeg + oracle;
            if addon != 0.0 {
                im += addon;
            }
            depeg_im += depeg;
            oracle_im += oracle;
            *s = UnderlyingSums::default();
        }
        scratch.touched.clear();
    }

    let equity = if rules.option_value_in_collateral { collateral.cash + pnl } else { collateral.cash + pnl + option_value };
    StandardAccount {
        initial_margin: im,
        maintenance_margin: mm,
        collateral,
        pnl,
        equity,
        collateral_initial: collateral.weighted_initial + pnl,
        collateral_maintenance: collateral.weighted_maintenance + pnl,
        upnl,
        option_value,
        depeg_im,
        oracle_im,
    }
}

/// [`account_margin`] for every account of `inputs`, in parallel, in account order (the same
/// for any thread count): netting and balances as the engine does them, at the book's asset
/// prices. A repeated (account, asset) balance and a result that overflows are input errors,
/// as in [`crate::engine::margin`].
pub fn margin_accounts(book: &Book, market: &Market, inputs: &Inputs, rules: &StandardRules, feeds: &Feeds) -> Result<Vec<(u64, StandardAccount)>> {
    rules.check()?;
    feeds.check(book)?;
    let duplicates: Mutex<Vec<(u64, u32)>> = Mutex::new(Vec::new());
    let rows: Vec<(u64, StandardAccount)> = inputs
        .slots
        .par_iter()
        .with_min_len(256)
        .map_init(
            || (Scratch::default(), BalanceScratch::new(), RulesScratch::default()),
            |(net, sorted, scratch), slot| {
                net_positions(slot.positions(), &inputs.positions, book, market, net);
                let collateral = match value_balances(slot.balances(), &inputs.balances, book, &book.assets.price, sorted) {
                    Ok(c) => c,
                    Err(asset) => {
                        duplicates.lock().unwrap_or_else(|e| e.into_inner()).push((slot.account_id, asset));
                        return (slot.account_id, StandardAccount::default());
                    }
                };
                let account = AccountInputs {
                    net: &net.net,
                    closed_pnl: net.closed_pnl,
                    extra_pnl: 0.0,
                    balances: &inputs.balances,
                    sorted_balances: sorted,
                    asset_price: &book.assets.price,
                    collateral,
                };
                (slot.account_id, account_margin(book, market, rules, feeds, &account, scratch))
            },
        )
        .collect();
    let mut duplicates = duplicates.into_inner().unwrap_or_else(|e| e.into_inner());
    duplicates.sort_unstable();
    let mut dup = Offenders::default();
    for (account_id, asset) in duplicates {
        dup.push(|| format!("account {account_id} asset '{}'", book.assets.labels[asset as usize]));
    }
    dup.into_result("balances", "asset", "duplicate (account_id, asset) key")?;
    let mut overflow = Offenders::default();
    for (account_id, a) in &rows {
        if !(a.row(*account_id).is_finite() && a.upnl.is_finite() && a.option_value.is_finite() && a.depeg_im.is_finite() && a.oracle_im.is_finite()) {
            overflow.push(|| format!("account {account_id}"));
        }
    }
    overflow.into_result(
        "positions",
        "quantity",
        "values too large: the account's valuation or margin overflows float64 (check quantities, amounts and prices)",
    )?;
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, Float64Array, RecordBatch, StringArray, TimestampNanosecondArray, UInt64Array};

    use super::*;
    use crate::book::BookTables;
    use crate::engine::{self, Model};
    use crate::market::MarketTables;
    use crate::table::Table;

    const YEAR_NS: i64 = 31_536_000 * 1_000_000_000;

    fn batch(columns: Vec<(&str, ArrayRef)>) -> (Vec<String>, Vec<RecordBatch>) {
        let names = columns.iter().map(|(n, _)| n.to_string()).collect();
        (names, vec![RecordBatch::try_from_iter(columns).unwrap()])
    }

    fn strings(v: &[&str]) -> ArrayRef {
        Arc::new(StringArray::from(v.to_vec()))
    }

    fn opt_strings(v: &[Option<&str>]) -> ArrayRef {
        Arc::new(StringArray::from(v.to_vec()))
    }

    fn floats(v: &[f64]) -> ArrayRef {
        Arc::new(Float64Array::from(v.to_vec()))
    }

    fn opt_floats(v: &[Option<f64>]) -> ArrayRef {
        Arc::new(Float64Array::from(v.to_vec()))
    }

    /// ETH index 2000, BTC index 40000; one-year ETH options C2000 (mark 100), C2200 (40),
    /// P1800 (20), P2600 (650) at imr 0.15 / mmr 0.075 / floor 0.10; perpetuals ETH-PERP (mark
    /// 2010) and BTC-PERP (40000) at 0.10 / 0.05. Assets USD, wETH (2000, linked to ETH), wBTC
    /// (40000, linked to BTC), weights 0.8 / 0.9.
    const INSTRUMENTS: [&str; 6] = ["C2000", "C2200", "P1800", "P2600", "ETH-PERP", "BTC-PERP"];
    const MARKS: [f64; 6] = [100.0, 40.0, 20.0, 650.0, 2010.0, 40000.0];

    fn book_and_market() -> (Book, Market) {
        let option = |k: f64| Some(k);
        let (inames, ibatches) = batch(vec![
            ("instrument", strings(&INSTRUMENTS)),
            ("kind", strings(&["option", "option", "option", "option", "perpetual", "perpetual"])),
            ("underlying", strings(&["ETH", "ETH", "ETH", "ETH", "ETH", "BTC"])),
            ("multiplier", floats(&[1.0; 6])),
            ("expiry", Arc::new(TimestampNanosecondArray::from(vec![Some(YEAR_NS), Some(YEAR_NS), Some(YEAR_NS), Some(YEAR_NS), None, None]).with_timezone("UTC")) as ArrayRef),
            ("strike", opt_floats(&[option(2000.0), option(2200.0), option(1800.0), option(2600.0), None, None])),
            ("option_type", opt_strings(&[Some("call"), Some("call"), Some("put"), Some("put"), None, None])),
            ("initial_margin_rate", floats(&[0.15, 0.15, 0.15, 0.15, 0.10, 0.10])),
            ("maintenance_margin_rate", floats(&[0.075, 0.075, 0.075, 0.075, 0.05, 0.05])),
            ("initial_margin_floor", opt_floats(&[Some(0.1), Some(0.1), Some(0.1), Some(0.1), None, None])),
        ]);
        let (anames, abatches) = batch(vec![
            ("asset", strings(&["USD", "wETH", "wBTC"])),
            ("price", floats(&[1.0, 2000.0, 40000.0])),
            ("initial_weight", floats(&[1.0, 0.8, 0.8])),
            ("maintenance_weight", floats(&[1.0, 0.9, 0.9])),
            ("initial_liability_weight", floats(&[1.0, 1.2, 1.2])),
            ("maintenance_liability_weight", floats(&[1.0, 1.1, 1.1])),
            ("underlying", opt_strings(&[None, Some("ETH"), Some("BTC")])),
        ]);
        let book = Book::new(BookTables {
            instruments: Table::new("instruments", &inames, &ibatches),
            assets: Table::new("assets", &anames, &abatches),
            risk_params: None,
            margin_tiers: None,
        })
        .unwrap();
        let (xnames, xbatches) = batch(vec![("underlying", strings(&["ETH", "BTC"])), ("index_price", floats(&[2000.0, 40000.0]))]);
        let (mnames, mbatches) = batch(vec![
            ("instrument", strings(&INSTRUMENTS)),
            ("mark_price", floats(&MARKS)),
            ("implied_vol", opt_floats(&[Some(0.5), Some(0.5), Some(0.5), Some(0.5), None, None])),
        ]);
        let tables = MarketTables::new(&Table::new("index_prices", &xnames, &xbatches), &Table::new("marks", &mnames, &mbatches), 0).unwrap();
        let market = Market::resolve(&book, &tables).unwrap();
        (book, market)
    }

    type Rows = ((Vec<String>, Vec<RecordBatch>), (Vec<String>, Vec<RecordBatch>));

    fn rows_of(positions: &[(u64, &str, f64)], balances: &[(u64, &str, f64)]) -> Rows {
        let p = batch(vec![
            ("account_id", Arc::new(UInt64Array::from(positions.iter().map(|r| r.0).collect::<Vec<_>>())) as ArrayRef),
            ("instrument", strings(&positions.iter().map(|r| r.1).collect::<Vec<_>>())),
            ("quantity", floats(&positions.iter().map(|r| r.2).collect::<Vec<_>>())),
        ]);
        let b = batch(vec![
            ("account_id", Arc::new(UInt64Array::from(balances.iter().map(|r| r.0).collect::<Vec<_>>())) as ArrayRef),
            ("asset", strings(&balances.iter().map(|r| r.1).collect::<Vec<_>>())),
            ("amount", floats(&balances.iter().map(|r| r.2).collect::<Vec<_>>())),
        ]);
        (p, b)
    }

    /// Every account of the rows through the kernel, as `Pricing::account_with` would call it.
    fn run(book: &Book, market: &Market, rules: &StandardRules, feeds: &Feeds, positions: &[(u64, &str, f64)], balances: &[(u64, &str, f64)]) -> Vec<(u64, StandardAccount)> {
        rules.check().unwrap();
        feeds.check(book).unwrap();
        let ((pn, pb), (bn, bb)) = rows_of(positions, balances);
        let (pt, bt) = (Table::new("positions", &pn, &pb), Table::new("balances", &bn, &bb));
        let inputs = Inputs::new(book, market, Some(&pt), Some(&bt)).unwrap();
        let (mut net, mut sorted, mut scratch) = (Scratch::default(), Vec::new(), RulesScratch::default());
        inputs
            .slots
            .iter()
            .map(|slot| {
                net_positions(slot.positions(), &inputs.positions, book, market, &mut net);
                let collateral = value_balances(slot.balances(), &inputs.balances, book, &book.assets.price, &mut sorted).unwrap();
                let account = AccountInputs {
                    net: &net.net,
                    closed_pnl: net.closed_pnl,
                    extra_pnl: 0.0,
                    balances: &inputs.balances,
                    sorted_balances: &sorted,
                    asset_price: &book.assets.price,
                    collateral,
                };
                (slot.account_id, account_margin(book, market, rules, feeds, &account, &mut scratch))
            })
            .collect()
    }

    fn one(rules: &StandardRules, feeds: &Feeds, positions: &[(&str, f64)], balances: &[(&str, f64)]) -> StandardAccount {
        let (book, market) = book_and_market();
        let p: Vec<_> = positions.iter().map(|(i, q)| (1, *i, *q)).collect();
        let b: Vec<_> = balances.iter().map(|(a, x)| (1, *a, *x)).collect();
        let out = run(&book, &market, rules, feeds, &p, &b);
        assert_eq!(out.len(), 1);
        out[0].1
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * b.abs().max(1.0)
    }

    /// Rule 1: a deep in-the-money short put (K 2600, S 2000, mark 650), 2 contracts.
    /// MM/contract = 650 + max(0.075 × 2000, 0.3 × 650) = 650 + 195 = 845 → MM 1690;
    /// IM/contract = 650 + max(0.15 × 2000 − 0, 0.10 × 2000) = 950 → 1900 < 1.2 × 1690 = 2028.
    #[test]
    fn rule_1_short_put_mark_rate_and_im_multiple() {
        let rules = StandardRules { put_mm_rate: Some(0.075), put_mm_mark_rate: 0.3, put_im_mm_multiple: Some(1.2), ..StandardRules::v1() };
        let a = one(&rules, &Feeds::default(), &[("P2600", -2.0)], &[]);
        assert!(close(a.maintenance_margin, 1690.0), "{a:?}");
        assert!(close(a.initial_margin, 2028.0), "{a:?}");
        // without the two rules: v1's 2 × (650 + 150) and 2 × 950
        let v1 = one(&StandardRules::v1(), &Feeds::default(), &[("P2600", -2.0)], &[]);
        assert_eq!((v1.initial_margin, v1.maintenance_margin), (1900.0, 1600.0));
        // an out-of-the-money put (K 1800, mark 20): IM 20 + max(300 − 200, 200) = 220, MM
        // 20 + max(150, 6) = 170, 1.2 × 170 = 204 < 220
        let otm = one(&rules, &Feeds::default(), &[("P1800", -1.0)], &[]);
        assert!(close(otm.initial_margin, 220.0) && close(otm.maintenance_margin, 170.0), "{otm:?}");
    }

    /// Rule 2: short 3 ETH-PERP at 2010 (notional 6030) at 6.5% / 5%: IM 391.95, MM 301.5
    /// (v1: the instrument's 10% / 5%: 603, 301.5).
    #[test]
    fn rule_2_linear_rates_replace_the_instruments() {
        let rules = StandardRules { linear_im_rate: Some(0.065), linear_mm_rate: Some(0.05), ..StandardRules::v1() };
        let a = one(&rules, &Feeds::default(), &[("ETH-PERP", -3.0)], &[]);
        assert!(close(a.initial_margin, 391.95) && close(a.maintenance_margin, 301.5), "{a:?}");
        let v1 = one(&StandardRules::v1(), &Feeds::default(), &[("ETH-PERP", -3.0)], &[]);
        assert!(close(v1.initial_margin, 603.0) && close(v1.maintenance_margin, 301.5), "{v1:?}");
    }

    /// Rule 3: short 1 C2000 (isolated IM 100 + max(300 − 0, 200) = 400, MM 100 + 150 = 250)
    /// against long 1 C2200: the payoff is 0 at 0 and 2000, −200 at 2200, flat beyond: L = 200,
    /// N = 0, so IM = min(400, 200) and MM = min(250, 200). With long 0.5 C2200 only, L = 200
    /// again and N = 0.5 unpaired: on a forward of 2050, floor IM 200 + 0.1 × 2050 × 0.5 = 302.5
    /// (< 400), floor MM 200 + 0.05 × 2050 × 0.5 = 251.25 (> 250, the isolated sum stays).
    #[test]
    fn rule_3_per_expiry_max_loss_floor() {
        let rules = StandardRules { max_loss_floor: true, ..StandardRules::v1() };
        let spread = one(&rules, &Feeds::default(), &[("C2000", -1.0), ("C2200", 1.0)], &[]);
        assert_eq!((spread.initial_margin, spread.maintenance_margin), (200.0, 200.0));
        let off = one(&StandardRules::v1(), &Feeds::default(), &[("C2000", -1.0), ("C2200", 1.0)], &[]);
        assert_eq!((off.initial_margin, off.maintenance_margin), (400.0, 250.0));

        let rules = StandardRules { unpaired_call_im_scale: 0.1, unpaired_call_mm_scale: 0.05, ..rules };
        let forward = [2050.0; 6];
        let feeds = Feeds { forward: Some(&forward), ..Feeds::default() };
        let (book, market) = book_and_market();
        let out = run(&book, &market, &rules, &feeds, &[(1, "C2000", -1.0), (1, "C2200", 0.5)], &[]);
        let a = out[0].1;
        assert!(close(a.initial_margin, 302.5), "{a:?}");
        assert_eq!(a.maintenance_margin, 250.0);
    }

    /// Rule 4: 1000 USD and 2 wETH (2000 each) at a base factor 0.1 and IM scale 0.5: maintenance
    /// collateral 1000 + 400, initial 1000 + 200 (weights 0.9 / 0.8 ignored). A short C2000 (mark
    /// 100) outside collateral: equity = 1000 + 4000 − 100 = 4900, collateral without the −100.
    #[test]
    fn rule_4_base_asset_factor_and_option_value_out_of_collateral() {
        let rules = StandardRules { base_asset_margin_factor: Some(0.1), base_asset_im_scale: 0.5, option_value_in_collateral: false, ..StandardRules::v1() };
        let a = one(&rules, &Feeds::default(), &[("C2000", -1.0)], &[("USD", 1000.0), ("wETH", 2.0)]);
        assert_eq!(a.collateral_maintenance, 1400.0);
        assert_eq!(a.collateral_initial, 1200.0);
        assert_eq!(a.equity, 4900.0);
        assert_eq!(a.option_value, -100.0);
        // v1: weights, and the option's value in both collateral sums
        let v1 = one(&StandardRules::v1(), &Feeds::default(), &[("C2000", -1.0)], &[("USD", 1000.0), ("wETH", 2.0)]);
        assert_eq!((v1.collateral_maintenance, v1.collateral_initial, v1.equity), (1000.0 + 3600.0 - 100.0, 1000.0 + 3200.0 - 100.0, 4900.0));
        // a borrowed base asset keeps its liability weight
        let borrow = one(&rules, &Feeds::default(), &[], &[("USD", 10000.0), ("wETH", -1.0)]);
        assert_eq!(borrow.collateral_maintenance, 10000.0 - 2000.0 * 1.1);
    }

    /// Rule 5: stable at 0.95 under a 0.98 threshold, factor 1.2: rate 0.036 on ETH's exposure
    /// (3 perpetuals + 1 short call + 0 for the long put) = 0.036 × 2000 × 4 = 288. Oracle factor
    /// 0.4, thresholds 0.4: ETH-PERP's mark confidence 0.3 → 0.7 × 0.4 × 2000 × 3 = 1680; the
    /// expiry's forward confidence 0.2 → 0.8 × 0.4 × 2000 × 1 = 640; 0.5 wBTC on a BTC index of
    /// confidence 0.1 (factor 0.1) → 0.9 × 0.4 × 20000 = 7200; 1 wETH on ETH's 0.9: nothing.
    #[test]
    fn rule_5_depeg_and_oracle_addons() {
        let rules = StandardRules {
            depeg_threshold: Some(0.98),
            depeg_factor: 1.2,
            oracle_factor: 0.4,
            oracle_linear_threshold: Some(0.4),
            oracle_option_threshold: Some(0.4),
            oracle_base_threshold: Some(0.4),
            base_asset_margin_factor: Some(0.1),
            ..StandardRules::v1()
        };
        let index_confidence = [0.1, 0.9]; // BTC, ETH (ids in sorted name order)
        let mark_confidence = [1.0, 1.0, 1.0, 1.0, 0.3, 1.0];
        let forward_confidence = [0.2, 0.2, 0.2, 0.2, 1.0, 1.0];
        let feeds = Feeds {
            index_confidence: Some(&index_confidence),
            mark_confidence: Some(&mark_confidence),
            forward_confidence: Some(&forward_confidence),
            stable_price: 0.95,
            ..Feeds::default()
        };
        let (book, market) = book_and_market();
        assert_eq!(book.underlyings.names, ["BTC", "ETH"]);
        let positions = [(1, "C2000", -1.0), (1, "P1800", 1.0), (1, "ETH-PERP", -3.0)];
        let balances = [(1, "wBTC", 0.5), (1, "wETH", 1.0)];
        let a = run(&book, &market, &rules, &feeds, &positions, &balances)[0].1;
        let base = run(&book, &market, &StandardRules { base_asset_margin_factor: Some(0.1), ..StandardRules::v1() }, &feeds, &positions, &balances)[0].1;
        assert!(close(a.depeg_im, 288.0), "{a:?}");
        assert!(close(a.oracle_im, 1680.0 + 640.0 + 7200.0), "{a:?}");
        assert!(close(a.initial_margin - base.initial_margin, 288.0 + 1680.0 + 640.0 + 7200.0), "{a:?}");
        assert_eq!(a.maintenance_margin, base.maintenance_margin);
        // the stable at its peg and every confidence at 1: no add-on at all
        let calm = run(&book, &market, &rules, &Feeds::default(), &positions, &balances)[0].1;
        assert_eq!((calm.depeg_im, calm.oracle_im, calm.initial_margin), (0.0, 0.0, base.initial_margin));
    }

    /// `StandardRules::v1()` is the engine's standard model bit for bit: IM and MM are
    /// `standard::position_margin`'s sums, collateral and equity `value_balances`' and the P&L's,
    /// on a few hundred pseudo-random accounts (longs and shorts of every instrument, rows that
    /// net to 0, every asset, borrows).
    #[test]
    fn v1_is_the_standard_model_bit_for_bit() {
        let (book, market) = book_and_market();
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (seed >> 33) as f64 / (1u64 << 31) as f64
        };
        let (mut positions, mut balances) = (Vec::new(), Vec::new());
        for account in 0..300u64 {
            for _ in 0..(next() * 8.0) as usize {
                let q = ((next() - 0.5) * 20.0 * 8.0).round() / 8.0;
                positions.push((account, INSTRUMENTS[(next() * 6.0) as usize], q));
            }
            for asset in ["USD", "wETH", "wBTC"] {
                if next() < 0.5 {
                    balances.push((account, asset, (next() - 0.3) * 1e4));
                }
            }
        }
        let got = run(&book, &market, &StandardRules::v1(), &Feeds::default(), &positions, &balances);
        let ((pn, pb), (bn, bb)) = rows_of(&positions, &balances);
        let (pt, bt) = (Table::new("positions", &pn, &pb), Table::new("balances", &bn, &bb));
        let inputs = Inputs::new(&book, &market, Some(&pt), Some(&bt)).unwrap();
        let want = engine::margin(&book, &market, &inputs, Model::Standard).unwrap();
        assert_eq!(got.len(), want.len());
        let bits = |r: &AccountRow| [r.equity, r.collateral_initial, r.collateral_maintenance, r.initial_margin, r.maintenance_margin].map(f64::to_bits);
        for ((id, a), w) in got.iter().zip(&want) {
            assert_eq!(bits(&a.row(*id)), bits(w), "account {id}");
            assert_eq!(*id, w.account_id);
        }
        // the parallel loop is the per-account kernel, account for account
        let all = margin_accounts(&book, &market, &inputs, &StandardRules::v1(), &Feeds::default()).unwrap();
        assert_eq!(all, got);
    }

    /// A market without confidence columns or expiry feeds gives v1's feeds: the same figures
    /// as `Feeds::default()` under every rule.
    #[test]
    fn feeds_of_a_plain_market_are_the_defaults() {
        let (book, market) = book_and_market();
        let feeds = Feeds::of_market(&market);
        feeds.check(&book).unwrap();
        let positions = [(1, "C2000", -1.0), (1, "C2200", 0.5), (1, "ETH-PERP", 2.0), (2, "P2600", -1.0)];
        let balances = [(1, "wETH", 1.0), (2, "USD", 100.0)];
        let rules = StandardRules::derive_standard();
        assert_eq!(run(&book, &market, &rules, &feeds, &positions, &balances), run(&book, &market, &rules, &Feeds::default(), &positions, &balances));
    }

    #[test]
    fn check_names_the_bad_field() {
        assert!(StandardRules::v1().check().is_ok());
        assert!(StandardRules::derive_standard().check().is_ok());
        let cases = [
            (StandardRules { option_im_rate: Some(-0.1), ..StandardRules::v1() }, "standard.option_im_rate"),
            (StandardRules { put_mm_mark_rate: f64::NAN, ..StandardRules::v1() }, "standard.put_mm_mark_rate"),
            (StandardRules { base_asset_margin_factor: Some(1.5), ..StandardRules::v1() }, "standard.base_asset_margin_factor"),
            (StandardRules { oracle_factor: 2.0, ..StandardRules::v1() }, "standard.oracle_factor"),
            (StandardRules { put_im_mm_multiple: Some(0.0), ..StandardRules::v1() }, "standard.put_im_mm_multiple"),
            (StandardRules { linear_im_rate: Some(0.1), ..StandardRules::v1() }, "standard.linear_im_rate"),
            (StandardRules { unpaired_call_mm_scale: f64::INFINITY, ..StandardRules::v1() }, "standard.unpaired_call_mm_scale"),
        ];
        for (rules, column) in cases {
            let e = rules.check().unwrap_err();
            assert_eq!((e.table.as_str(), e.column.as_str()), ("methodology", column), "{e}");
        }
        let (book, _) = book_and_market();
        let short = [1.0; 2];
        let e = Feeds { mark_confidence: Some(&short), ..Feeds::default() }.check(&book).unwrap_err();
        assert_eq!(e.column, "mark_confidence");
        let e = Feeds { stable_price: f64::NAN, ..Feeds::default() }.check(&book).unwrap_err();
        assert_eq!(e.column, "stable_price");
    }
}
