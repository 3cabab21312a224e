//! What-if margin for order entry: one account's margin before and after a set of trades.
//!
//! The exchange's order gateway asks this for every order, so the path is built for one account:
//! no tables, no sorting of a book, no threads. The market (and, under the portfolio model, the
//! risk arrays) is resolved once by the caller and reused across calls ([`Pricing`]).
//!
//! Rules (docs/optimization.md, "What-if"):
//! - the account's positions and balances are margined exactly as [`crate::engine::margin`] would
//!   margin them as one account (netting §2.1, collateral §2.5, §3 or §4, status §6);
//! - each trade adds a position row of `quantity` contracts; a trade at `price` (default: the
//!   mark) moves cash by `−quantity × multiplier × price` against a position worth
//!   `quantity × multiplier × mark`. For an option that is the premium paid (or received)
//!   against the option's mark value, which the new position row carries; for a linear contract
//!   no cash changes hands and the row enters at the mark, so the trade adds
//!   `quantity × multiplier × (mark − price)` of unrealized P&L (full weight, as for any entry
//!   price). The premium moves the account's balance of the premium asset (the book's quote
//!   asset unless another is named), valued at that asset's weights like any balance: a premium
//!   paid on credit counts at the liability weight;
//! - a trade that closes a position keeps that position's P&L (netting keeps the P&L of rows
//!   that net to 0);
//! - when some position rows carry an entry price and others do not, a missing entry price is
//!   the mark (no unrealized P&L), as for a table without an `entry_price` column.
//! - an inverse (coin-settled) trade does the same in its coin: a perpetual or future at `price`
//!   adds `quantity × multiplier × (1/price − 1/mark)` coins of P&L (at the coin's price in
//!   USD), a coin-settled option's premium `quantity × multiplier × price` coins moves the
//!   account's balance of its settlement asset; their prices (and entry prices) must be > 0.

use crate::accounts::AccountSlot;
use crate::book::Kind;
use crate::engine::{AccountScratch, Pricing};
use crate::error::{InputError, Offenders, Result};
use crate::results::AccountRow;
use crate::rows::{Balances, Orders, Positions};

/// One position row or trade of the account: instrument id, contracts, and an entry price
/// (positions) or trade price (trades), `None` for the mark.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Row {
    pub instrument: u32,
    pub quantity: f64,
    pub price: Option<f64>,
}

/// The account's margin before and after the trades.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WhatIf {
    pub before: AccountRow,
    pub after: AccountRow,
    /// `Σ quantity × multiplier × (mark − price)` over the trades: value gained (or lost) by
    /// trading away from the mark, included in `after`.
    pub trade_pnl: f64,
    /// `−Σ quantity × multiplier × price` over the option trades: the premium paid (< 0) or
    /// received (> 0), in USD, moved into `after`'s balance of the premium asset.
    pub premium: f64,
}

impl WhatIf {
    /// Whether an exchange would accept the order: the account has free collateral after it, or
    /// the order reduces risk (initial margin does not rise and free collateral does not fall).
    pub fn accepted(&self) -> bool {
        let (b, a) = (&self.before, &self.after);
        a.free_collateral() >= 0.0 || (a.initial_margin <= b.initial_margin && a.free_collateral() >= b.free_collateral())
    }
}

fn check_rows(rows: &[Row], table: &'static str, price_column: &'static str) -> Result<()> {
    let mut quantity = Offenders::default();
    let mut price = Offenders::default();
    for (i, r) in rows.iter().enumerate() {
        if !r.quantity.is_finite() {
            quantity.push(|| format!("row {i} = {}", r.quantity));
        }
        if let Some(p) = r.price.filter(|p| !(p.is_finite() && *p >= 0.0)) {
            price.push(|| format!("row {i} = {p}"));
        }
    }
    quantity.into_result(table, "quantity", "values must be finite numbers (NaN or infinite found)")?;
    price.into_result(table, price_column, "values must be finite and >= 0")
}

/// Margin of one account before and after `trades` (see the module docs). `balances` are
/// `(asset id, amount)`; option premiums settle in `premium_asset` (`None`: the book's
/// [`quote_asset`](crate::book::Assets::quote_asset)).
pub fn what_if(pricing: &Pricing, positions: &[Row], balances: &[(u32, f64)], trades: &[Row], premium_asset: Option<u32>) -> Result<WhatIf> {
    what_if_with_orders(pricing, positions, balances, trades, premium_asset, &[])
}

/// [`what_if`] of an account with resting `orders` (`price` their limit price): both `before`
/// and `after` include their initial margin (`crate::orders`), the trades do not cancel them.
pub fn what_if_with_orders(
    pricing: &Pricing,
    positions: &[Row],
    balances: &[(u32, f64)],
    trades: &[Row],
    premium_asset: Option<u32>,
    orders: &[Row],
) -> Result<WhatIf> {
    let (book, market) = (pricing.book, pricing.base);
    crate::engine::check_orders_model(book, pricing.risk.is_some(), !orders.is_empty())?;
    let (mut zero, mut price) = (Offenders::default(), Offenders::default());
    for (i, o) in orders.iter().enumerate() {
        if !(o.quantity.is_finite() && o.quantity != 0.0) {
            zero.push(|| format!("row {i} = {}", o.quantity));
        }
        if !o.price.is_some_and(|p| p.is_finite() && p > 0.0) {
            price.push(|| format!("row {i}"));
        }
    }
    zero.into_result("orders", "quantity", "an order's quantity must be finite and non-zero (+ bid, − ask)")?;
    price.into_result("orders", "price", "an order needs a limit price, finite and > 0")?;
    let resting = Orders::one_account(
        orders.iter().map(|o| o.instrument).collect(),
        orders.iter().map(|o| o.quantity).collect(),
        orders.iter().map(|o| o.price.unwrap_or(f64::NAN)).collect(),
    );
    check_rows(positions, "positions", "entry_price")?;
    check_rows(trades, "trades", "price")?;
    let mut amount = Offenders::default();
    for (i, (_, a)) in balances.iter().enumerate() {
        if !a.is_finite() {
            amount.push(|| format!("row {i} = {a}"));
        }
    }
    amount.into_result("balances", "amount", "values must be finite numbers (NaN or infinite found)")?;
    if positions.iter().chain(trades).chain(orders).any(|r| {
        let id = r.instrument as usize;
        market.mark_price[id].is_nan() || market.index_price[book.instruments.underlying[id] as usize].is_nan()
    }) {
        // the slow path names what is missing, as for the bulk functions
        market.check_covers(book, || {
            let mut used = vec![false; book.instruments.len()];
            for r in positions.iter().chain(trades).chain(orders) {
                used[r.instrument as usize] = true;
            }
            used
        })?;
    }

    let mut zero = Offenders::default();
    for (table, rows) in [("positions", positions), ("trades", trades)] {
        for (i, r) in rows.iter().enumerate() {
            let c = &book.contracts[r.instrument as usize];
            if c.inverse && c.kind.is_linear() && r.price == Some(0.0) {
                zero.push(|| format!("{table} row {i}"));
            }
        }
    }
    zero.into_result("trades", "price", "an inverse perpetual's or future's price (and entry_price) must be > 0")?;

    let mark = |r: &Row| market.mark_price[r.instrument as usize];
    let with_entry = positions.iter().any(|r| r.price.is_some());
    let rows = |n_trades: usize| {
        let all = positions.iter().chain(&trades[..n_trades]);
        let instrument = all.clone().map(|r| r.instrument).collect();
        let quantity = all.clone().map(|r| r.quantity).collect();
        // trade rows enter at the mark: their P&L against the trade price is added on the side
        let entry = with_entry.then(|| {
            positions.iter().map(|r| r.price.unwrap_or_else(|| mark(r))).chain(trades[..n_trades].iter().map(mark)).collect()
        });
        Positions::one_account(instrument, quantity, entry)
    };
    let is_option = |t: &Row| book.contracts[t.instrument as usize].kind == Kind::Option;
    let inverse = |t: &Row| book.contracts[t.instrument as usize].inverse;
    let coin_price = |t: &Row| market.settlement_price[t.instrument as usize];
    let value = |t: &Row, price: f64| t.quantity * book.instruments.multiplier[t.instrument as usize] * price;
    let price = |t: &Row| t.price.unwrap_or_else(|| mark(t));
    // a trade's P&L against the mark, in USD: an inverse perpetual's or future's in coin first
    let pnl = |t: &Row| match (inverse(t), is_option(t)) {
        (false, _) => value(t, mark(t) - price(t)),
        (true, false) => value(t, 1.0 / price(t) - 1.0 / mark(t)) * coin_price(t),
        (true, true) => value(t, mark(t) - price(t)) * coin_price(t),
    };
    let trade_pnl: f64 = trades.iter().fold(0.0, |s, t| s + pnl(t));
    let premium_usd = |t: &Row| if inverse(t) { value(t, price(t)) * coin_price(t) } else { value(t, price(t)) };
    let premium: f64 = trades.iter().filter(|t| is_option(t)).fold(0.0, |s, t| s - premium_usd(t));
    // what the trades add to the account beyond the rows: linear trades' P&L against the mark,
    // option trades' premium (their mark value is in the new rows)
    let linear_pnl: f64 = trades.iter().filter(|t| !is_option(t)).fold(0.0, |s, t| s + pnl(t));
    // the premium moves the account's balance of the premium asset (added to its row, or a new
    // row), so a premium that overdraws it is valued at the asset's liability weights
    let mut balances_after = balances.to_vec();
    // a coin-settled option's premium is paid in its settlement coin
    for t in trades.iter().filter(|t| is_option(t) && inverse(t)) {
        let asset = book.instruments.settlement_asset[t.instrument as usize].expect("inverse contracts name their settlement asset");
        let coins = -value(t, price(t));
        match balances_after.iter_mut().find(|b| b.0 == asset) {
            Some(b) => b.1 += coins,
            None => balances_after.push((asset, coins)),
        }
    }
    let linear_premium: f64 = trades.iter().filter(|t| is_option(t) && !inverse(t)).fold(0.0, |s, t| s - value(t, price(t)));
    if trades.iter().any(|t| is_option(t) && !inverse(t)) {
        let Some(asset) = premium_asset.or_else(|| book.assets.quote_asset()) else {
            return Err(InputError::new(
                "trades",
                "instrument",
                "an option trade's premium needs a quote asset: the book has no asset priced 1 without an underlying; name one with premium_asset=",
            ));
        };
        let price = book.assets.price[asset as usize];
        match balances_after.iter_mut().find(|b| b.0 == asset) {
            Some(b) => b.1 += linear_premium / price,
            None => balances_after.push((asset, linear_premium / price)),
        }
    }
    let table = |balances: &[(u32, f64)]| Balances::one_account(balances.iter().map(|b| b.0).collect(), balances.iter().map(|b| b.1).collect());
    let (balances, balances_after) = (table(balances), table(&balances_after));

    let mut scratch = AccountScratch::default();
    let mut margin = |positions: &Positions, balances: &Balances, extra_pnl: f64| -> Result<AccountRow> {
        let n = positions.quantity.len();
        let slot = AccountSlot::new(0, 0..n, 0..balances.amount.len());
        let resting = (!orders.is_empty()).then(|| (&resting, 0..orders.len()));
        let row = pricing.account_full(&slot, positions, balances, extra_pnl, resting, &mut scratch).map_err(|asset| {
            let mut duplicate = Offenders::default();
            duplicate.push(|| format!("'{}'", book.assets.labels[asset as usize]));
            InputError::new("balances", "asset", "duplicate asset in the account's balances").with_offenders(duplicate)
        })?;
        if !row.is_finite() {
            return Err(InputError::new(
                "positions",
                "quantity",
                "values too large: the account's valuation or margin overflows float64",
            ));
        }
        Ok(row)
    };
    let before = margin(&rows(0), &balances, 0.0)?;
    let after = margin(&rows(trades.len()), &balances_after, linear_pnl)?;
    Ok(WhatIf { before, after, trade_pnl, premium })
}
