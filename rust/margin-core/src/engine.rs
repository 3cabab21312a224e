//! Orchestration: validated inputs in, one row per account out, in parallel over accounts.
//!
//! Every account is computed by one thread from its own rows, summing in a fixed order, and
//! results are written in account order: the output is bit-identical for any thread count.

use std::sync::Mutex;

use rayon::prelude::*;

use crate::accounts::AccountSlot;
use crate::book::Book;
use crate::error::{InputError, Offenders, Result};
use crate::greeks::{account_greeks, instrument_greeks, GreeksRow};
use crate::market::Market;
use crate::methodology::account::{account_requirements, ScenarioScratch};
use crate::portfolio::{self, RiskArrays};
use crate::results::{AccountRow, MarginColumns, OUTPUT_BLOCK};
use crate::accounts::AccountSlot as Slot;
use crate::orders::{order_margin, OrderScratch};
use crate::rows::{account_slots, Balances, Orders, Positions};
use crate::standard;
use crate::stress::revalue;
use crate::table::Table;
use crate::trace::Phases;
use crate::valuation::{closed_inverse_pnl, net_positions, value_balances, BalanceScratch, Collateral, Scratch};

/// Which margin model to apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Model {
    Standard,
    Portfolio,
}

/// Runs `work` on a pool of `threads` threads (the global pool when `None`).
pub fn with_threads<T: Send>(threads: Option<usize>, work: impl FnOnce() -> T + Send) -> Result<T> {
    match threads {
        None => Ok(work()),
        Some(0) => Err(InputError::new("arguments", "threads", "threads must be >= 1")),
        Some(n) => {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(n)
                .build()
                .map_err(|e| InputError::new("arguments", "threads", format!("cannot start {n} threads: {e}")))?;
            Ok(pool.install(work))
        }
    }
}

/// Accounts in one call: a result's `status` column holds at most 12 bytes an account behind
/// 32-bit offsets.
pub const MAX_ACCOUNTS: usize = i32::MAX as usize / 12;

/// Positions and balances read, validated and grouped by account.
pub struct Inputs<'a> {
    pub positions: Positions<'a>,
    pub balances: Balances<'a>,
    pub slots: Vec<AccountSlot>,
    /// Resting orders (§10): they add to initial margin only. `None`: no orders table.
    pub orders: Option<Orders<'a>>,
}

impl<'a> Inputs<'a> {
    pub fn new(book: &Book, market: &Market, positions: Option<&Table<'a>>, balances: Option<&Table<'a>>) -> Result<Inputs<'a>> {
        let mut phases = Phases::start();
        let positions = match positions {
            Some(t) => Positions::from_table(t, book)?,
            None => Positions::empty(),
        };
        phases.lap("positions read");
        market.check_covers(book, || positions.used_instruments(book.instruments.len()))?;
        phases.lap("market covers positions");
        let balances = match balances {
            Some(t) => Balances::from_table(t, book)?,
            None => Balances::empty(),
        };
        phases.lap("balances read");
        let slots = account_slots(&positions, &balances);
        phases.lap("account slots");
        if slots.len() > MAX_ACCOUNTS {
            return Err(InputError::new(
                "positions",
                "account_id",
                format!("{} accounts in one call; at most {MAX_ACCOUNTS} (the status column's utf8 offsets are 32-bit): stream in batches", slots.len()),
            ));
        }
        Ok(Inputs { positions, balances, slots, orders: None })
    }

    /// These inputs with the optional `orders` table (§10): validated, its instruments checked
    /// against the market, and an account that has orders but no position or balance row added
    /// (its orders still require initial margin).
    pub fn with_orders(mut self, book: &Book, market: &Market, orders: Option<&Table<'a>>) -> Result<Inputs<'a>> {
        let Some(t) = orders else { return Ok(self) };
        let orders = Orders::from_table(t, book)?;
        market.check_covers(book, || orders.used_instruments(book.instruments.len()))?;
        let missing: Vec<u64> = {
            let mut k = 0;
            let slots = &self.slots;
            orders
                .accounts()
                .iter()
                .copied()
                .filter(|id| {
                    while k < slots.len() && slots[k].account_id < *id {
                        k += 1;
                    }
                    !(k < slots.len() && slots[k].account_id == *id)
                })
                .collect()
        };
        if !missing.is_empty() {
            let mut merged = Vec::with_capacity(self.slots.len() + missing.len());
            let mut extra = missing.into_iter().peekable();
            for slot in self.slots.drain(..) {
                while let Some(id) = extra.next_if(|id| *id < slot.account_id) {
                    merged.push(Slot::new(id, 0..0, 0..0));
                }
                merged.push(slot);
            }
            merged.extend(extra.map(|id| Slot::new(id, 0..0, 0..0)));
            self.slots = merged;
        }
        self.orders = Some(orders);
        Ok(self)
    }

    /// Whether any resting order is present.
    pub fn has_orders(&self) -> bool {
        self.orders.as_ref().is_some_and(|o| !o.is_empty())
    }
}

/// Size- and open-interest-dependent rates (`imf_factor`, open-interest caps) are rates of the
/// standard model's perpetuals and futures: the portfolio model, and standard rules that replace
/// the instruments' linear rates (`linear_im_rate`), refuse a book that has them rather than
/// ignore them.
pub fn check_size_rates(book: &Book, portfolio_model: bool) -> Result<()> {
    if portfolio_model && book.methodology.portfolio.is_some() && book.assets.liability_imf_factor.iter().any(|f| *f > 0.0) {
        return Err(InputError::new(
            "assets",
            "liability_imf_factor",
            format!(
                "a borrow size premium is not honoured by the scenario methodology '{}' (it reads the liability weights as haircuts): use model=\"standard\" or a v1 book",
                book.methodology.name
            ),
        ));
    }
    if !book.instruments.has_size_rates() {
        return Ok(());
    }
    let replaced = book.methodology.standard.as_ref().is_some_and(|r| r.linear_im_rate.is_some());
    if portfolio_model || replaced {
        let why = if portfolio_model { "the portfolio model margins perpetuals and futures by its scenarios, not by rates".to_string() } else {
            format!("the book's methodology '{}' replaces the instruments' linear rates", book.methodology.name)
        };
        return Err(InputError::new(
            "instruments",
            "imf_factor",
            format!("size- and open-interest-dependent rates (imf_factor, open_interest_lower_cap / open_interest_upper_cap) apply to the standard model's rates only; {why} (use model=\"standard\" with a v1 book, or drop those columns)"),
        ));
    }
    Ok(())
}

/// Orders are margined by v1's standard and portfolio models; a book whose methodology replaces
/// the model the call uses refuses them rather than ignoring them.
pub fn check_orders_supported(book: &Book, inputs: &Inputs, portfolio_model: bool) -> Result<()> {
    check_orders_model(book, portfolio_model, inputs.has_orders())
}

/// [`check_orders_supported`] for a caller that knows whether it has orders.
pub fn check_orders_model(book: &Book, portfolio_model: bool, has_orders: bool) -> Result<()> {
    if !has_orders {
        return Ok(());
    }
    let replaced = if portfolio_model { book.methodology.portfolio.is_some() } else { book.methodology.standard.is_some() };
    if replaced {
        return Err(InputError::new(
            "orders",
            "quantity",
            format!(
                "resting orders are margined under v1's standard and portfolio models only; the book's methodology '{}' does not margin them yet (omit orders, or use a v1 book)",
                book.methodology.name
            ),
        ));
    }
    Ok(())
}

/// Margin of every account under `model` (§3 / §4, with §2 collateral and §6 status).
pub fn margin(book: &Book, market: &Market, inputs: &Inputs, model: Model) -> Result<Vec<AccountRow>> {
    margin_under(book, market, None, inputs, model)
}

/// A moved market: the stressed market data and collateral asset prices (see [`crate::stress`]).
pub struct Stress<'m> {
    pub market: &'m Market,
    pub asset_price: &'m [f64],
}

/// [`margin`] under an optional stress: positions are netted and valued at the `base` market,
/// revalued to the stressed marks, then margined in the stressed market.
pub fn margin_under(book: &Book, base: &Market, stress: Option<Stress>, inputs: &Inputs, model: Model) -> Result<Vec<AccountRow>> {
    let market = stress.as_ref().map_or(base, |s| s.market);
    let mut phases = Phases::start();
    let risk = match model {
        Model::Standard => None,
        Model::Portfolio => Some(RiskArrays::new(book, market)),
    };
    phases.lap("risk arrays");
    margin_rows(book, base, stress.as_ref(), risk.as_ref(), inputs)
}

/// [`margin`] with the portfolio model's risk arrays already computed for this market (`None`:
/// the standard model), e.g. cached across calls by the caller.
pub fn margin_with_risk(book: &Book, market: &Market, inputs: &Inputs, risk: Option<&RiskArrays>) -> Result<Vec<AccountRow>> {
    margin_rows(book, market, None, risk, inputs)
}

/// [`margin_with_risk`] written straight into the output columns, block by block: the same rows,
/// without holding a vector of them beside the output (48 bytes an account).
pub fn margin_columns(book: &Book, market: &Market, inputs: &Inputs, risk: Option<&RiskArrays>) -> Result<MarginColumns> {
    let mut phases = Phases::start();
    check_orders_supported(book, inputs, risk.is_some())?;
    check_size_rates(book, risk.is_some())?;
    let mut columns = MarginColumns::new(inputs.slots.len());
    let duplicates: Mutex<Vec<(u64, u32)>> = Mutex::new(Vec::new());
    let overflowed: Mutex<Vec<u64>> = Mutex::new(Vec::new());
    let pricing = Pricing { book, base: market, stress: None, risk };
    columns.blocks().into_par_iter().zip(inputs.slots.par_chunks(OUTPUT_BLOCK)).for_each_init(
        AccountScratch::default,
        |scratch, (mut block, slots)| {
            for (i, slot) in slots.iter().enumerate() {
                let row = pricing.account_in(slot, inputs, scratch).unwrap_or_else(|asset| {
                    duplicates.lock().unwrap_or_else(|e| e.into_inner()).push((slot.account_id, asset));
                    AccountRow::new(slot.account_id, Collateral::default(), 0.0, 0.0, 0.0)
                });
                if !row.is_finite() {
                    overflowed.lock().unwrap_or_else(|e| e.into_inner()).push(row.account_id);
                }
                block.put(i, &row);
            }
        },
    );
    phases.lap("accounts margined into the output columns");
    check_duplicates(book, duplicates.into_inner().unwrap_or_else(|e| e.into_inner()))?;
    report_overflow(overflowed.into_inner().unwrap_or_else(|e| e.into_inner()))?;
    Ok(columns)
}

fn margin_rows(book: &Book, base: &Market, stress: Option<&Stress>, risk: Option<&RiskArrays>, inputs: &Inputs) -> Result<Vec<AccountRow>> {
    let mut phases = Phases::start();
    check_orders_supported(book, inputs, risk.is_some())?;
    check_size_rates(book, risk.is_some())?;
    // a repeated (account, asset) balance is rare: noted on the side, reported after the loop
    let duplicates: Mutex<Vec<(u64, u32)>> = Mutex::new(Vec::new());
    let rows: Vec<AccountRow> = inputs
        .slots
        .par_iter()
        .with_min_len(256)
        .map_init(AccountScratch::default, |scratch, slot| {
            let priced = Pricing { book, base, stress, risk };
            priced.account_in(slot, inputs, scratch).unwrap_or_else(|asset| {
                duplicates.lock().unwrap_or_else(|e| e.into_inner()).push((slot.account_id, asset));
                AccountRow::new(slot.account_id, Collateral::default(), 0.0, 0.0, 0.0)
            })
        })
        .collect();
    phases.lap("accounts margined");
    check_duplicates(book, duplicates.into_inner().unwrap_or_else(|e| e.into_inner()))?;
    check_finite(&rows)?;
    phases.lap("duplicates and finiteness checked");
    Ok(rows)
}

pub(crate) fn check_duplicates(book: &Book, mut duplicates: Vec<(u64, u32)>) -> Result<()> {
    duplicates.sort_unstable(); // found by many threads: report in account order
    let mut dup = Offenders::default();
    for (account_id, asset) in duplicates {
        dup.push(|| format!("account {account_id} asset '{}'", book.assets.labels[asset as usize]));
    }
    dup.into_result("balances", "asset", "duplicate (account_id, asset) key")
}

/// Per-thread buffers for margining accounts one after another without allocating.
#[derive(Default)]
pub struct AccountScratch {
    pub net: Scratch,
    balances: BalanceScratch,
    portfolio: portfolio::Scratch,
    scenario: ScenarioScratch,
    rules: crate::standard_rules::RulesScratch,
    orders: OrderScratch,
}

/// Everything needed to margin one account: the book, the market positions are valued at, an
/// optional stress, and the risk arrays under the portfolio model (`None`: standard model).
#[derive(Clone, Copy)]
pub struct Pricing<'a> {
    pub book: &'a Book,
    pub base: &'a Market,
    pub stress: Option<&'a Stress<'a>>,
    pub risk: Option<&'a RiskArrays>,
}

impl Pricing<'_> {
    /// One account's row (§2, §3 or §4, §6) from its rows in `positions` and `balances`, plus
    /// `extra_pnl` (realized P&L not in the rows, e.g. of a what-if trade). `Err(asset)` names a
    /// repeated balance asset.
    pub fn account(&self, slot: &AccountSlot, positions: &Positions, balances: &Balances, scratch: &mut AccountScratch) -> std::result::Result<AccountRow, u32> {
        self.account_with(slot, positions, balances, 0.0, scratch)
    }

    /// [`Pricing::account`] of a slot of `inputs`, with its resting orders when there are any.
    pub fn account_in(&self, slot: &AccountSlot, inputs: &Inputs, scratch: &mut AccountScratch) -> std::result::Result<AccountRow, u32> {
        let orders = inputs.orders.as_ref().map(|o| (o, o.rows_of(slot.account_id)));
        self.account_full(slot, &inputs.positions, &inputs.balances, 0.0, orders, scratch)
    }

    pub fn account_with(
        &self,
        slot: &AccountSlot,
        positions: &Positions,
        balances: &Balances,
        extra_pnl: f64,
        scratch: &mut AccountScratch,
    ) -> std::result::Result<AccountRow, u32> {
        self.account_full(slot, positions, balances, extra_pnl, None, scratch)
    }

    /// [`Pricing::account_with`] plus the account's resting orders `(orders, its rows)`: their
    /// initial margin (`crate::orders`) is added to the positions' (v1 models only: see
    /// [`check_orders_supported`]).
    pub fn account_full(
        &self,
        slot: &AccountSlot,
        positions: &Positions,
        balances: &Balances,
        extra_pnl: f64,
        orders: Option<(&Orders, std::ops::Range<usize>)>,
        scratch: &mut AccountScratch,
    ) -> std::result::Result<AccountRow, u32> {
        net_positions(slot.positions(), positions, self.book, self.base, &mut scratch.net);
        self.account_netted(slot, balances, extra_pnl, orders, scratch)
    }

    /// [`Pricing::account_full`] of an account whose positions are already netted at the base
    /// market in `scratch.net` (by [`net_positions`]): a caller margining one account under many
    /// stresses nets it once and restores `scratch.net.net` before each call (a stress revalues
    /// the netted positions in place).
    pub fn account_netted(
        &self,
        slot: &AccountSlot,
        balances: &Balances,
        extra_pnl: f64,
        orders: Option<(&Orders, std::ops::Range<usize>)>,
        scratch: &mut AccountScratch,
    ) -> std::result::Result<AccountRow, u32> {
        let book = self.book;
        let (market, asset_price) = match self.stress {
            Some(s) => (s.market, s.asset_price),
            None => (self.base, &book.assets.price[..]),
        };
        if self.stress.is_some() {
            for p in scratch.net.net.iter_mut() {
                *p = revalue(book, self.base, market, p);
            }
        }
        let mut collateral = value_balances(slot.balances(), balances, book, asset_price, &mut scratch.balances)?;
        let net = &scratch.net.net;
        if let (None, Some(rules)) = (self.risk, &book.methodology.standard) {
            // the generalized standard rules (they may change collateral too)
            use crate::standard_rules::{account_margin, AccountInputs, Feeds};
            let inputs = AccountInputs {
                net,
                closed_pnl: scratch.net.closed_pnl,
                extra_pnl,
                balances,
                sorted_balances: &scratch.balances,
                asset_price,
                collateral,
            };
            let feeds = Feeds::of_market(market);
            return Ok(account_margin(book, market, rules, &feeds, &inputs, &mut scratch.rules).row(slot.account_id));
        }
        let (mut initial_margin, maintenance_margin) = match (self.risk, &book.methodology.portfolio) {
            (None, _) => net.iter().fold((0.0, 0.0), |(im, mm), p| {
                let (i, m) = standard::position_margin(book, market, p);
                (im + i, mm + m)
            }),
            (Some(risk), None) => portfolio::account_margin(book, market, risk, net, &mut scratch.portfolio),
            (Some(risk), Some(scenarios)) => {
                if scenarios.haircuts_as_contingency() {
                    // collateral at its full value: the haircuts are charged in the requirements
                    collateral.weighted_initial = collateral.cash;
                    collateral.weighted_maintenance = collateral.cash;
                }
                let values = risk.scenario_values.as_ref();
                account_requirements(book, market, scenarios, net, balances, &scratch.balances, asset_price, values, &mut scratch.scenario)
            }
        };
        if let Some((orders, rows)) = orders {
            initial_margin += order_margin(book, market, self.risk, net, orders, rows, &mut scratch.orders);
        }
        // open positions' P&L and option value, then the P&L of positions that netted to 0
        let mut pnl: f64 = net.iter().fold(extra_pnl, |s, p| s + p.value) + scratch.net.closed_pnl;
        if !scratch.net.closed_inverse.is_empty() {
            // coin P&L of inverse positions that netted to 0, at the (possibly moved) coin price
            pnl += closed_inverse_pnl(&scratch.net.closed_inverse, market);
        }
        Ok(AccountRow::new(slot.account_id, collateral, pnl, initial_margin, maintenance_margin))
    }
}

/// Sums of finite inputs can still overflow (e.g. 1e308 quantities): report, never return inf.
fn check_finite(rows: &[AccountRow]) -> Result<()> {
    if rows.par_iter().with_min_len(1 << 14).all(AccountRow::is_finite) {
        return Ok(());
    }
    report_overflow(rows.iter().filter(|r| !r.is_finite()).map(|r| r.account_id).collect())
}

pub(crate) fn report_overflow(mut accounts: Vec<u64>) -> Result<()> {
    accounts.sort_unstable(); // found by many threads: report in account order
    let mut bad = Offenders::default();
    for account in accounts {
        bad.push(|| format!("account {account}"));
    }
    bad.into_result(
        "positions",
        "quantity",
        "values too large: the account's valuation or margin overflows float64 (check quantities, amounts and prices)",
    )
}

/// Greeks per account × underlying (§7).
pub fn greeks(book: &Book, market: &Market, inputs: &Inputs) -> Result<Vec<GreeksRow>> {
    let per_contract = instrument_greeks(book, market);
    let chunks: Vec<Vec<GreeksRow>> = inputs
        .slots
        .par_chunks(4096)
        .map_init(Scratch::default, |scratch, slots| {
            let mut out = Vec::with_capacity(slots.len());
            for slot in slots {
                net_positions(slot.positions(), &inputs.positions, book, market, scratch);
                account_greeks(slot.account_id, &scratch.net, book, market, &per_contract, &mut out);
            }
            out
        })
        .collect();
    let rows: Vec<GreeksRow> = chunks.into_iter().flatten().collect();
    let mut bad = Offenders::default();
    for r in &rows {
        let values = [r.delta, r.delta_usd, r.gamma, r.gamma_usd, r.vega, r.theta, r.long_notional, r.short_notional];
        if !values.iter().all(|v| v.is_finite()) {
            bad.push(|| format!("account {}", r.account_id));
        }
    }
    bad.into_result("positions", "quantity", "values too large: Greeks overflow float64")?;
    Ok(rows)
}

/// The kernels that read v1's risk arrays directly (the grid walk of the liquidation map,
/// liquidation plans, hedges) do not follow a scenario methodology yet (the exact distances of
/// [`crate::roots`] do: they margin the whole account in each moved market): under one, with the portfolio model, they
/// refuse rather than answer with v1's numbers.
pub fn check_v1_portfolio(book: &Book, model: Model, what: &str) -> Result<()> {
    match (&book.methodology.portfolio, model) {
        (Some(_), Model::Portfolio) => Err(InputError::new(
            "arguments",
            "model",
            format!(
                "{what} with the portfolio model follows v1's scenario grid only; the book's methodology '{}' is not supported there yet (use model=\"standard\", or liquidation_scan / margin with stress=)",
                book.methodology.name
            ),
        )),
        _ => Ok(()),
    }
}

/// Kernels that value every contract as linear (liquidation plans, hedges) refuse positions in
/// inverse (coin-settled) contracts rather than answer with a linear number.
pub fn check_no_inverse_positions(book: &Book, inputs: &Inputs, what: &str) -> Result<()> {
    let ins = &book.instruments;
    if !ins.has_inverse() {
        return Ok(());
    }
    let used = inputs.positions.used_instruments(ins.len());
    let mut bad = Offenders::default();
    for id in (0..ins.len()).filter(|i| used[*i] && ins.inverse[*i]) {
        bad.push(|| format!("'{}'", ins.labels[id]));
    }
    bad.into_result("positions", "instrument", &format!("{what} does not support inverse (coin-settled) contracts yet"))
}

/// One scenario's P&L of one account's portfolio (see [`scenario_losses`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScenarioLoss {
    pub account_id: u64,
    /// Underlying id; `None`: the account's coins linked to no underlying it trades.
    pub underlying: Option<u32>,
    /// Row of the methodology's scenario table.
    pub scenario: u32,
    pub pnl: f64,
}

/// Per account, portfolio (underlying) and scenario row, the weighted P&L the scenario engine
/// finds under the book's scenario methodology (the losses its worst-loss rule reads), in
/// account order, then underlying id, then table row. Without a scenario methodology (v1) an
/// error: v1's per-contract arrays are `risk_arrays`.
pub fn scenario_losses(book: &Book, market: &Market, inputs: &Inputs) -> Result<Vec<ScenarioLoss>> {
    let Some(scenarios) = &book.methodology.portfolio else {
        return Err(InputError::new(
            "arguments",
            "methodology",
            "the book has no scenario methodology (v1): its per-contract scenario P&L is me.risk_arrays",
        ));
    };
    let duplicates: Mutex<Vec<(u64, u32)>> = Mutex::new(Vec::new());
    let chunks: Vec<Vec<ScenarioLoss>> = inputs
        .slots
        .par_chunks(1024)
        .map_init(AccountScratch::default, |scratch, slots| {
            let mut out = Vec::new();
            for slot in slots {
                net_positions(slot.positions(), &inputs.positions, book, market, &mut scratch.net);
                if let Err(asset) = value_balances(slot.balances(), &inputs.balances, book, &book.assets.price, &mut scratch.balances) {
                    duplicates.lock().unwrap_or_else(|e| e.into_inner()).push((slot.account_id, asset));
                    continue;
                }
                crate::methodology::account::for_each_portfolio(
                    book,
                    market,
                    scenarios,
                    &scratch.net.net,
                    &inputs.balances,
                    &scratch.balances,
                    &book.assets.price,
                    &mut scratch.scenario,
                    |u, p, m| {
                        let pnls = crate::methodology::margin_scenarios(p, m).map(|r| r.scenario_pnl).unwrap_or_default();
                        let underlying = (u != crate::methodology::account::UNLINKED).then_some(u);
                        for (i, pnl) in pnls.into_iter().enumerate() {
                            out.push(ScenarioLoss { account_id: slot.account_id, underlying, scenario: i as u32, pnl });
                        }
                    },
                );
            }
            out
        })
        .collect();
    check_duplicates(book, duplicates.into_inner().unwrap_or_else(|e| e.into_inner()))?;
    Ok(chunks.into_iter().flatten().collect())
}

/// Under a scenario methodology, the weighted P&L of one contract of each instrument with
/// market data held alone, per row of its underlying's scenario table: `(instrument, row, pnl)`
/// in instrument order. Rules that act on an expiry's total (static discount, skew rows) act on
/// that one contract. `None` without a scenario methodology (v1: see [`RiskArrays`]).
pub fn scenario_risk_arrays(book: &Book, market: &Market) -> Option<Vec<(u32, u32, f64)>> {
    let scenarios = book.methodology.portfolio.as_ref()?;
    let ins = &book.instruments;
    let balances = Balances::empty();
    let chunks: Vec<Vec<(u32, u32, f64)>> = (0..ins.len())
        .collect::<Vec<_>>()
        .par_chunks(256)
        .map_init(crate::methodology::account::ScenarioScratch::default, |scratch, ids| {
            let mut out = Vec::new();
            for &id in ids {
                let u = ins.underlying[id] as usize;
                if market.mark_price[id].is_nan() || market.index_price[u].is_nan() {
                    continue;
                }
                let one = [crate::valuation::NetPosition { instrument: id as u32, quantity: 1.0, value: 0.0, coin: 0.0 }];
                crate::methodology::account::for_each_portfolio(book, market, scenarios, &one, &balances, &[], &book.assets.price, scratch, |_, p, m| {
                    let pnls = crate::methodology::margin_scenarios(p, m).map(|r| r.scenario_pnl).unwrap_or_default();
                    out.extend(pnls.into_iter().enumerate().map(|(row, pnl)| (id as u32, row as u32, pnl)));
                });
            }
            out
        })
        .collect();
    Some(chunks.into_iter().flatten().collect())
}
