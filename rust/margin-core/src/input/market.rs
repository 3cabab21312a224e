//! Market data: index prices per underlying, marks (and implied vols, optionally Greeks) per
//! instrument, and the valuation time (methodology §1).
//!
//! [`MarketTables`] is parsed and validated once, independently of any book; [`Market`] is that
//! data resolved against a [`Book`] into dense arrays indexed by instrument / underlying id.

use crate::book::{Book, Kind};
use crate::error::{InputError, Offenders, Result};
use crate::table::{Domain, Key, KeyIndex, Table};

/// Seconds in the methodology's year of 365 days.
pub const SECONDS_PER_YEAR: f64 = 31_536_000.0;

/// Years from `valuation_ns` to `expiry_ns`, floored at 0: `max(e − v, 0) / 1e9 / 31_536_000`.
pub fn time_to_expiry(expiry_ns: i64, valuation_ns: i64) -> f64 {
    let diff = (expiry_ns as i128 - valuation_ns as i128).max(0);
    diff as f64 / 1e9 / SECONDS_PER_YEAR
}

/// Supplied Greeks of one instrument (used instead of Black-76 when the marks table has them).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SuppliedGreeks {
    pub delta: f64,
    pub gamma: f64,
    pub vega: f64,
    pub theta: f64,
}

/// The market tables, validated on their own.
#[derive(Debug, Clone)]
pub struct MarketTables {
    pub underlyings: Vec<String>,
    pub index_price: Vec<f64>,
    pub instruments: Vec<Key>,
    pub mark_price: Vec<f64>,
    pub implied_vol: Vec<Option<f64>>,
    pub greeks: Option<Vec<Option<SuppliedGreeks>>>,
    pub valuation_ns: i64,
    /// Optional `confidence` column of `index_prices` (1 when absent): the feed's own
    /// confidence in [0, 1], read by a methodology's oracle-confidence add-on.
    pub index_confidence: Vec<f64>,
    /// Optional `confidence` column of `marks` (1 when absent).
    pub mark_confidence: Vec<f64>,
    /// Optional `open_interest` column of `marks`: the instrument's open notional in USD (open
    /// interest × oracle price, as dYdX measures it), NaN where null; `None` without the column.
    pub open_interest: Option<Vec<f64>>,
    /// Rows of the optional `expiry_feeds` table.
    pub expiry_feeds: Vec<ExpiryFeedRow>,
}

/// One row of `expiry_feeds`: the forward of one (underlying, expiry), its fixed part (the part
/// of a settlement average already fixed), the rate options of that expiry are discounted at,
/// and the feed's confidence.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpiryFeedRow {
    pub underlying: String,
    pub expiry_ns: i64,
    pub feed: ExpiryFeed,
}

/// The market data of one expiry read by the scenario engine.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExpiryFeed {
    /// The part of the forward that moves with the index.
    pub forward_variable: f64,
    pub forward_fixed: f64,
    pub rate: f64,
    pub confidence: f64,
}

impl ExpiryFeed {
    /// v1's view without a feed: the forward is the index, nothing fixed, no rate, confidence 1.
    pub fn on_index(index_price: f64) -> ExpiryFeed {
        ExpiryFeed { forward_variable: index_price, forward_fixed: 0.0, rate: 0.0, confidence: 1.0 }
    }

    pub fn forward(&self) -> f64 {
        self.forward_variable + self.forward_fixed
    }
}

/// The optional `expiry_feeds` table: `underlying`, `expiry` (timestamp), `forward` (> 0),
/// `forward_fixed` (optional, >= 0 and <= forward, default 0: all fixed at expiry), `rate` (optional, finite, default
/// 0), `confidence` (optional, in [0, 1], default 1); one row per (underlying, expiry).
pub fn read_expiry_feeds(t: &Table) -> Result<Vec<ExpiryFeedRow>> {
    t.check_unique_column_names()?;
    let u = t.column("underlying")?;
    u.check_no_nulls()?;
    let underlyings: Vec<String> = u.strings_nullable()?.into_iter().map(|s| s.unwrap_or_default()).collect();
    let e = t.column("expiry")?;
    e.check_no_nulls()?;
    let expiries: Vec<i64> = e.timestamps_ns()?.into_iter().map(|x| x.unwrap_or(0)).collect();
    let labels: Vec<String> = underlyings.iter().zip(&expiries).map(|(u, e)| format!("{u} @ {e} ns")).collect();
    let t = t.with_labels(&labels);
    let forward = t.column("forward")?.f64s(Domain::Price)?.into_owned();
    let n = labels.len();
    let or = |name: &str, domain: Domain, default: f64| -> Result<Vec<f64>> {
        Ok(match t.optional_column(name) {
            Some(c) => c.f64s(domain)?.into_owned(),
            None => vec![default; n],
        })
    };
    let fixed = or("forward_fixed", Domain::NonNegative, 0.0)?;
    let rate = or("rate", Domain::Finite, 0.0)?;
    let confidence = or("confidence", Domain::UnitInterval, 1.0)?;
    let mut bad = Offenders::default();
    let mut seen = std::collections::HashSet::new();
    let mut dup = Offenders::default();
    let mut rows = Vec::with_capacity(n);
    for i in 0..n {
        if fixed[i] > forward[i] {
            bad.push(|| labels[i].clone());
        }
        if !seen.insert((underlyings[i].clone(), expiries[i])) {
            dup.push(|| labels[i].clone());
        }
        rows.push(ExpiryFeedRow {
            underlying: underlyings[i].clone(),
            expiry_ns: expiries[i],
            feed: ExpiryFeed { forward_variable: forward[i] - fixed[i], forward_fixed: fixed[i], rate: rate[i], confidence: confidence[i] },
        });
    }
    bad.into_result(t.name, "forward_fixed", "the fixed part must be at most the forward")?;
    dup.into_result(t.name, "expiry", "duplicate (underlying, expiry)")?;
    Ok(rows)
}

impl MarketTables {
    pub fn new(index_prices: &Table, marks: &Table, valuation_ns: i64) -> Result<MarketTables> {
        index_prices.check_unique_column_names()?;
        marks.check_unique_column_names()?;
        let underlyings_col = index_prices.column("underlying")?;
        underlyings_col.check_no_nulls()?;
        let underlyings: Vec<String> =
            underlyings_col.strings_nullable()?.into_iter().map(|s| s.unwrap_or_default()).collect();
        let keys: Vec<Key> = underlyings.iter().map(|u| Key::Str(u.clone())).collect();
        KeyIndex::build(&keys, index_prices.name, "underlying")?;
        let index_price = index_prices.with_labels(&underlyings).column("index_price")?.f64s(Domain::Price)?.into_owned();

        let instruments = marks.column("instrument")?.keys()?;
        KeyIndex::build(&instruments, marks.name, "instrument")?;
        // bare keys: error messages quote them (`'BTC-PERP'`)
        let labels: Vec<String> = instruments
            .iter()
            .map(|k| match k {
                Key::Str(s) => s.clone(),
                Key::Int(i) => i.to_string(),
            })
            .collect();
        let m = marks.with_labels(&labels);
        let mark_price = m.column("mark_price")?.f64s(Domain::NonNegative)?.into_owned();
        let implied_vol = match m.optional_column("implied_vol") {
            Some(c) => c.f64s_nullable(Domain::Positive)?,
            None => vec![None; labels.len()],
        };
        let greek_names = ["delta", "gamma", "vega", "theta"];
        let present: Vec<&str> = greek_names.iter().copied().filter(|g| m.has_column(g)).collect();
        let greeks = if present.is_empty() {
            None
        } else if present.len() < 4 {
            let absent: Vec<&str> = greek_names.iter().copied().filter(|g| !m.has_column(g)).collect();
            return Err(InputError::new(
                marks.name,
                absent[0],
                format!("supplied Greeks need all of delta, gamma, vega, theta; missing {}", absent.join(", ")),
            ));
        } else {
            let cols = greek_names
                .iter()
                .map(|g| m.column(g)?.f64s_nullable(Domain::Finite))
                .collect::<Result<Vec<_>>>()?;
            Some(
                (0..labels.len())
                    .map(|i| match (cols[0][i], cols[1][i], cols[2][i], cols[3][i]) {
                        (Some(delta), Some(gamma), Some(vega), Some(theta)) => {
                            Some(SuppliedGreeks { delta, gamma, vega, theta })
                        }
                        _ => None,
                    })
                    .collect(),
            )
        };
        let index_confidence = match index_prices.with_labels(&underlyings).optional_column("confidence") {
            Some(c) => c.f64s(Domain::UnitInterval)?.into_owned(),
            None => vec![1.0; underlyings.len()],
        };
        let mark_confidence = match m.optional_column("confidence") {
            Some(c) => c.f64s(Domain::UnitInterval)?.into_owned(),
            None => vec![1.0; labels.len()],
        };
        let open_interest = match m.optional_column("open_interest") {
            Some(c) => Some(c.f64s_null_as_nan(Domain::NonNegative)?.into_owned()),
            None => None,
        };
        Ok(MarketTables {
            underlyings,
            index_price,
            instruments,
            mark_price,
            implied_vol,
            greeks,
            valuation_ns,
            index_confidence,
            mark_confidence,
            open_interest,
            expiry_feeds: Vec::new(),
        })
    }

    /// The tables with an `expiry_feeds` table.
    pub fn with_expiry_feeds(mut self, feeds: &Table) -> Result<MarketTables> {
        self.expiry_feeds = read_expiry_feeds(feeds)?;
        Ok(self)
    }
}

/// Market data resolved against a book: dense arrays, NaN where the market has no value.
#[derive(Debug, Clone)]
pub struct Market {
    /// Per underlying id.
    pub index_price: Vec<f64>,
    /// Per instrument id.
    pub mark_price: Vec<f64>,
    pub implied_vol: Vec<f64>,
    /// Years to expiry per instrument (0 for perpetuals).
    pub time_to_expiry: Vec<f64>,
    pub greeks: Option<Vec<Option<SuppliedGreeks>>>,
    pub valuation_ns: i64,
    /// Per underlying id: the index feed's confidence (1 without a `confidence` column).
    pub index_confidence: Vec<f64>,
    /// Per instrument id: the mark's confidence (1 without a `confidence` column).
    pub mark_confidence: Vec<f64>,
    /// Per instrument id: the `expiry_feeds` row of its (underlying, expiry), if any.
    pub expiry_feed: Vec<Option<ExpiryFeed>>,
    /// Per instrument id: its expiry feed's forward (NaN without a feed), kept in step with
    /// `expiry_feed` (the standard rules read it as a slice).
    pub expiry_forward: Vec<f64>,
    /// Per instrument id: its expiry feed's confidence (1 without a feed).
    pub expiry_confidence: Vec<f64>,
    /// The USD price of the book's quote asset: the index price of an `index_prices` row named
    /// like the quote asset (e.g. `USDC`), else 1. Read by a methodology's peg-loss add-on.
    pub quote_usd_price: f64,
    /// Per instrument id: the USD price of the coin an inverse contract settles in (the
    /// assets table's price, moved with the underlying under stress); NaN for linear contracts.
    pub settlement_price: Vec<f64>,
    /// Per instrument id: the initial margin rate scaled by open interest (dYdX,
    /// [`crate::book::open_interest_rate`]) for instruments with caps and an `open_interest`;
    /// the instrument's own rate elsewhere. `None` when no instrument is scaled: every rate is
    /// the book's.
    pub initial_margin_rate: Option<Vec<f64>>,
}

impl Market {
    /// The size of its per-instrument and per-underlying columns, in bytes (what margining an
    /// account may read; supplied Greeks not counted).
    pub fn bytes(&self) -> usize {
        let f64s = self.index_price.len() * 2
            + self.mark_price.len() * 7
            + self.initial_margin_rate.as_ref().map_or(0, Vec::len);
        8 * f64s + self.expiry_feed.len() * std::mem::size_of::<Option<ExpiryFeed>>()
    }

    pub fn resolve(book: &Book, tables: &MarketTables) -> Result<Market> {
        let ins = &book.instruments;
        // an exchange-wide feed may price more than this book: what the book does not know is
        // ignored; what positions need and the market lacks is an error (`check_covers`)
        let mut index_price = vec![f64::NAN; book.underlyings.names.len()];
        for (name, price) in tables.underlyings.iter().zip(&tables.index_price) {
            if let Some(u) = book.underlyings.index.get_str(name) {
                index_price[u as usize] = *price;
            }
        }

        let n = ins.len();
        let mut mark_price = vec![f64::NAN; n];
        let mut implied_vol = vec![f64::NAN; n];
        let mut greeks = tables.greeks.as_ref().map(|_| vec![None; n]);
        if let (Some(first), false) = (tables.instruments.first(), ins.is_empty()) {
            if matches!(first, Key::Int(_)) != ins.index.is_int() {
                let (got, want) = if ins.index.is_int() { ("utf8", "integer") } else { ("integer", "utf8") };
                return Err(InputError::new(
                    "marks",
                    "instrument",
                    format!("wrong type: {got} keys, but the book's instruments have {want} keys"),
                ));
            }
        }
        let mut no_vol = Offenders::default();
        let mut no_greeks = Offenders::default();
        for (row, key) in tables.instruments.iter().enumerate() {
            let Some(id) = ins.index.get(key) else { continue };
            let id = id as usize;
            mark_price[id] = tables.mark_price[row];
            if ins.kind[id] == Kind::Option {
                match tables.implied_vol[row] {
                    Some(v) => implied_vol[id] = v,
                    None => no_vol.push(|| key.to_string()),
                }
                if let (Some(out), Some(supplied)) = (greeks.as_mut(), tables.greeks.as_ref()) {
                    match supplied[row] {
                        Some(g) => out[id] = Some(g),
                        None => no_greeks.push(|| key.to_string()),
                    }
                }
            }
        }
        no_vol.into_result("marks", "implied_vol", "options need an implied_vol > 0")?;
        no_greeks.into_result("marks", "delta", "supplied Greeks are null for options")?;

        let time_to_expiry = ins
            .expiry_ns
            .iter()
            .zip(&ins.kind)
            .map(|(e, k)| match (k, e) {
                (Kind::Perpetual, _) | (_, None) => 0.0,
                (_, Some(e)) => time_to_expiry(*e, tables.valuation_ns),
            })
            .collect();
        let mut index_confidence = vec![1.0; book.underlyings.names.len()];
        for (name, c) in tables.underlyings.iter().zip(&tables.index_confidence) {
            if let Some(u) = book.underlyings.index.get_str(name) {
                index_confidence[u as usize] = *c;
            }
        }
        let mut mark_confidence = vec![1.0; n];
        for (row, key) in tables.instruments.iter().enumerate() {
            if let Some(id) = ins.index.get(key) {
                mark_confidence[id as usize] = tables.mark_confidence[row];
            }
        }
        let mut expiry_feed = vec![None; n];
        if !tables.expiry_feeds.is_empty() {
            let by_key: std::collections::HashMap<(u32, i64), ExpiryFeed> = tables
                .expiry_feeds
                .iter()
                .filter_map(|r| book.underlyings.index.get_str(&r.underlying).map(|u| ((u, r.expiry_ns), r.feed)))
                .collect();
            for (id, slot) in expiry_feed.iter_mut().enumerate() {
                if let (Kind::Future | Kind::Option, Some(e)) = (ins.kind[id], ins.expiry_ns[id]) {
                    *slot = by_key.get(&(ins.underlying[id], e)).copied();
                }
            }
        }
        let quote_usd_price = book
            .assets
            .quote_asset()
            .and_then(|a| tables.underlyings.iter().position(|u| *u == book.assets.labels[a as usize]))
            .map_or(1.0, |row| tables.index_price[row]);
        let expiry_forward = expiry_feed.iter().map(|f| f.map_or(f64::NAN, |f: ExpiryFeed| f.forward())).collect();
        let expiry_confidence = expiry_feed.iter().map(|f| f.map_or(1.0, |f: ExpiryFeed| f.confidence)).collect();
        let initial_margin_rate = match &tables.open_interest {
            Some(oi) if ins.has_open_interest_caps() => {
                let mut rates = ins.initial_margin_rate.clone();
                for (row, key) in tables.instruments.iter().enumerate() {
                    let Some(id) = ins.index.get(key) else { continue };
                    let id = id as usize;
                    let (lower, upper) = (ins.open_interest_lower_cap[id], ins.open_interest_upper_cap[id]);
                    if !lower.is_nan() && !oi[row].is_nan() {
                        rates[id] = crate::book::open_interest_rate(rates[id], lower, upper, oi[row]);
                    }
                }
                Some(rates)
            }
            _ => None,
        };
        Ok(Market {
            index_price,
            mark_price,
            implied_vol,
            time_to_expiry,
            greeks,
            valuation_ns: tables.valuation_ns,
            index_confidence,
            mark_confidence,
            expiry_feed,
            expiry_forward,
            expiry_confidence,
            quote_usd_price,
            settlement_price: ins.settlement_asset.iter().map(|a| a.map_or(f64::NAN, |a| book.assets.price[a as usize])).collect(),
            initial_margin_rate,
        })
    }

    /// Checks that every instrument flagged in `used()` has a mark and its underlying an index
    /// price: the data a position in it needs (`used` is only called when some have not).
    pub fn check_covers(&self, book: &Book, used: impl FnOnce() -> Vec<bool>) -> Result<()> {
        let ins = &book.instruments;
        // a market with a mark and an index price for every instrument of the book (the usual
        // case) covers any positions: no need to find which instruments they hold
        let priced = |id: usize| !self.mark_price[id].is_nan() && !self.index_price[ins.underlying[id] as usize].is_nan();
        // an inverse perpetual's or future's coin value is 1 / mark: its mark must be > 0
        let zero_inverse_mark = |id: usize| ins.inverse[id] && ins.kind[id].is_linear() && self.mark_price[id] == 0.0;
        if (0..ins.len()).all(|id| priced(id) && !zero_inverse_mark(id)) {
            return Ok(());
        }
        let used = used();
        let mut zero = Offenders::default();
        for id in (0..ins.len()).filter(|i| used[*i] && zero_inverse_mark(*i)) {
            zero.push(|| format!("'{}'", ins.labels[id]));
        }
        zero.into_result("marks", "mark_price", "an inverse perpetual or future needs a mark_price > 0 (its value in coin is contracts × multiplier / mark)")?;
        let mut no_mark = Offenders::default();
        let mut no_index = Offenders::default();
        let mut index_seen = vec![false; self.index_price.len()];
        for id in (0..ins.len()).filter(|i| used[*i]) {
            if self.mark_price[id].is_nan() {
                no_mark.push(|| format!("'{}'", ins.labels[id]));
            }
            let u = ins.underlying[id] as usize;
            if self.index_price[u].is_nan() && !index_seen[u] {
                index_seen[u] = true;
                no_index.push(|| format!("'{}'", book.underlyings.names[u]));
            }
        }
        no_mark.into_result("marks", "instrument", "no mark for an instrument that positions hold")?;
        no_index.into_result("index_prices", "underlying", "no index price for an underlying that positions hold")?;
        Ok(())
    }
}
