//! Fuzz target: margin-core's kernels over Arrow record batches built from the fuzz input.
//!
//! The input bytes drive a generator of the eight input tables (instruments, assets,
//! risk_params, margin_tiers, index_prices, marks, positions, balances) that is biased towards
//! valid books, so that the fuzzer gets past validation and into the kernels: every column has
//! its proper type and values in its proper range most of the time, keys mostly line up between
//! tables; but any column may be missing, doubled, all-null or of another Arrow type, any value
//! may be null, NaN, ±inf, ±0, negative, subnormal or huge, and tables are split into several
//! record batches (some empty). Then the whole pipeline runs, both margin models: `Book::new`,
//! `MarketTables::new`, `Market::resolve`, `Inputs::new`, `engine::margin`, `engine::greeks`,
//! `liquidation::distances` / `liquidation_map`, the scan order, a stress, liquidation plans, ADL
//! queues, hedges, risk arrays and every Arrow result batch.
//!
//! Any `Err` is fine (bad input is reported, not a crash); a panic is a crash.

#![no_main]

use std::sync::Arc;

use arbitrary::Unstructured;
use arrow_array::types::Int32Type;
use arrow_array::{
    ArrayRef, BooleanArray, DictionaryArray, Float32Array, Float64Array, Int32Array, Int64Array, Int8Array, LargeStringArray,
    NullArray, RecordBatch, RecordBatchOptions, StringArray, StringViewArray, TimestampMicrosecondArray,
    TimestampMillisecondArray, TimestampNanosecondArray, TimestampSecondArray, UInt32Array, UInt64Array, UInt8Array,
};
use arrow_schema::{Field, Schema};
use libfuzzer_sys::fuzz_target;
use margin_core::book::{Book, BookTables};
use margin_core::engine::{self, Inputs, Model};
use margin_core::market::{Market, MarketTables};
use margin_core::portfolio::{risk_arrays_batch, RiskArrays};
use margin_core::table::Table;
use margin_core::{hedge, liquidation, plan, results, stress};

const INSTRUMENT_KEYS: u8 = 8;
const ASSET_KEYS: u8 = 4;
const UNDERLYINGS: u8 = 4;
const ACCOUNTS: u64 = 12;
const VALUATION_NS: i64 = 1_750_000_000_000_000_000;
const DAY_NS: i64 = 86_400_000_000_000;

/// What a column means, which decides its proper type and the values it usually holds.
#[derive(Clone, Copy)]
enum Sem {
    /// An instrument key; `true`: row i's key is usually i (a key column of its own table).
    Instrument(bool),
    Asset(bool),
    Underlying(bool),
    Kind,
    OptionType,
    /// An account id; `true`: usually row / ASSET_KEYS (balances: one row per account × asset).
    Account(bool),
    /// A float usually in [lo, hi].
    Float(f64, f64),
    /// `price_steps`: usually a small odd integer.
    Steps,
    /// A timestamp, usually within two years of the valuation time.
    Timestamp,
}

/// A generated value, before it is put into an Arrow array of some type.
#[derive(Clone, Debug)]
enum Value {
    Null,
    Float(f64),
    Int(i128),
    Text(String),
}

impl Value {
    fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Null => None,
            Value::Float(f) => Some(*f),
            Value::Int(i) => Some(*i as f64),
            Value::Text(s) => Some(s.len() as f64),
        }
    }
    fn as_i128(&self) -> Option<i128> {
        match self {
            Value::Null => None,
            Value::Float(f) => Some(if f.is_finite() { *f as i128 } else { 0 }),
            Value::Int(i) => Some(*i),
            Value::Text(s) => Some(s.len() as i128),
        }
    }
    fn as_text(&self) -> Option<String> {
        match self {
            Value::Null => None,
            Value::Float(f) => Some(format!("{f}")),
            Value::Int(i) => Some(format!("{i}")),
            Value::Text(s) => Some(s.clone()),
        }
    }
}

struct Gen<'a> {
    u: Unstructured<'a>,
    int_keys: bool,
}

impl Gen<'_> {
    fn byte(&mut self) -> u8 {
        self.u.arbitrary::<u8>().unwrap_or(0)
    }
    fn below(&mut self, n: u8) -> u8 {
        if n == 0 {
            0
        } else {
            self.byte() % n
        }
    }
    fn unit(&mut self) -> f64 {
        f64::from(self.u.arbitrary::<u16>().unwrap_or(0)) / f64::from(u16::MAX)
    }
    fn raw_f64(&mut self) -> f64 {
        f64::from_bits(self.u.arbitrary::<u64>().unwrap_or(0))
    }
    fn raw_i64(&mut self) -> i64 {
        self.u.arbitrary::<i64>().unwrap_or(0)
    }

    /// A value outside what the column normally holds.
    fn special(&mut self) -> Value {
        match self.below(16) {
            0 | 1 => Value::Null,
            2 => Value::Float(f64::NAN),
            3 => Value::Float(f64::INFINITY),
            4 => Value::Float(f64::NEG_INFINITY),
            5 => Value::Float(-1.0),
            6 => Value::Float(0.0),
            7 => Value::Float(-0.0),
            8 => Value::Float(f64::MAX),
            9 => Value::Float(5e-324),
            10 => Value::Float(1e300),
            11 => Value::Int(i128::from(u64::MAX)),
            12 => Value::Int(i128::from(i64::MIN)),
            13 => Value::Float(self.raw_f64()),
            14 => Value::Text(["", "perpetual", "K1", "U0", "A0", "call", "\u{0}", "Ä"][self.below(8) as usize].into()),
            _ => Value::Int(i128::from(self.raw_i64())),
        }
    }

    fn key(&mut self, prefix: &str, n: u8, row: usize, own: bool) -> Value {
        let i = if own && self.below(8) != 7 { (row % n as usize) as u8 } else { self.below(n) };
        if prefix == "K" && self.int_keys {
            Value::Int(i128::from(i))
        } else {
            Value::Text(format!("{prefix}{i}"))
        }
    }

    fn value(&mut self, sem: Sem, row: usize) -> Value {
        // Rare cases take the high draws: an exhausted input (all zeros) gives ordinary values.
        if self.below(16) == 15 {
            return self.special();
        }
        match sem {
            Sem::Instrument(own) => self.key("K", INSTRUMENT_KEYS, row, own),
            Sem::Asset(own) => self.key("A", ASSET_KEYS, row, own),
            Sem::Underlying(own) => self.key("U", UNDERLYINGS, row, own),
            Sem::Kind => Value::Text(["perpetual", "future", "option", "option", "Option"][self.below(5) as usize].into()),
            Sem::OptionType => Value::Text(["call", "put", "call", "put", "straddle"][self.below(5) as usize].into()),
            Sem::Account(own) => match self.below(32) {
                31 => Value::Int(i128::from(u64::MAX - u64::from(self.byte()))),
                30 => Value::Int(i128::from(i64::MAX as u64 + 1)),
                29 | 28 => Value::Int(i128::from(u64::from(self.byte()) % ACCOUNTS)),
                _ if own => Value::Int((row / ASSET_KEYS as usize) as i128),
                _ => Value::Int(i128::from(u64::from(self.byte()) % ACCOUNTS)),
            },
            Sem::Float(lo, hi) => match self.below(8) {
                6 => Value::Float(lo),
                7 => Value::Float(hi),
                // an exhausted input (unit 0) gives the middle of the range
                _ => Value::Float(lo + (hi - lo) * ((self.unit() + 0.5) % 1.0)),
            },
            Sem::Steps => Value::Int(match self.below(8) {
                7 => 1001,
                6 => i128::from(self.byte()),
                _ => 3 + 2 * i128::from(self.below(20)),
            }),
            Sem::Timestamp => Value::Int(i128::from(match self.below(8) {
                7 => VALUATION_NS,
                6 => self.raw_i64(),
                5 => VALUATION_NS - i64::from(self.byte()) * 3_600_000_000_000,
                _ => VALUATION_NS + i64::from(self.u.arbitrary::<u16>().unwrap_or(0) % 730) * DAY_NS,
            })),
        }
    }

    /// An array of `values` of the column's proper type (`wrong`: of a random type instead).
    fn array(&mut self, sem: Sem, values: &[Value], wrong: bool) -> ArrayRef {
        let choice = if wrong { 100 + self.below(16) } else { self.below(16) };
        let floats = || values.iter().map(Value::as_f64).collect::<Vec<_>>();
        let ints = || values.iter().map(Value::as_i128).collect::<Vec<_>>();
        let texts = || values.iter().map(Value::as_text).collect::<Vec<_>>();
        let i64s = |v: Vec<Option<i128>>| v.into_iter().map(|x| x.map(|x| x as i64)).collect::<Vec<_>>();
        let u64s = |v: Vec<Option<i128>>| v.into_iter().map(|x| x.map(|x| x as u64)).collect::<Vec<_>>();
        let strings = |this: &mut Self, v: Vec<Option<String>>| -> ArrayRef {
            match this.below(4) {
                0 => Arc::new(LargeStringArray::from(v)),
                1 => Arc::new(StringViewArray::from(v)),
                2 => Arc::new(v.iter().map(|x| x.as_deref()).collect::<DictionaryArray<Int32Type>>()),
                _ => Arc::new(StringArray::from(v)),
            }
        };
        let timestamps = |this: &mut Self, v: Vec<Option<i64>>| -> ArrayRef {
            let tz: Option<Arc<str>> = if this.below(2) == 0 { None } else { Some("UTC".into()) };
            match this.below(4) {
                0 => Arc::new(TimestampSecondArray::from(v.into_iter().map(|x| x.map(|x| x / 1_000_000_000)).collect::<Vec<_>>()).with_timezone_opt(tz)),
                1 => Arc::new(TimestampMillisecondArray::from(v.into_iter().map(|x| x.map(|x| x / 1_000_000)).collect::<Vec<_>>()).with_timezone_opt(tz)),
                2 => Arc::new(TimestampMicrosecondArray::from(v.into_iter().map(|x| x.map(|x| x / 1_000)).collect::<Vec<_>>()).with_timezone_opt(tz)),
                _ => Arc::new(TimestampNanosecondArray::from(v).with_timezone_opt(tz)),
            }
        };
        let proper = match sem {
            Sem::Instrument(_) if self.int_keys => 0,
            Sem::Instrument(_) | Sem::Asset(_) | Sem::Underlying(_) | Sem::Kind | Sem::OptionType => 1,
            Sem::Account(_) => 2,
            Sem::Float(..) | Sem::Steps => 3,
            Sem::Timestamp => 4,
        };
        let kind = if wrong { choice - 100 } else { proper };
        match (kind, choice % 4) {
            // integers (keys, or numbers of an integer column)
            (0, _) | (5, _) => Arc::new(Int64Array::from(i64s(ints()))),
            (1, _) => strings(self, texts()),
            (2, 0) => Arc::new(Int64Array::from(i64s(ints()))),
            (2, 1) => Arc::new(Int32Array::from(ints().into_iter().map(|x| x.map(|x| x as i32)).collect::<Vec<_>>())),
            (2, 2) => Arc::new(UInt8Array::from(ints().into_iter().map(|x| x.map(|x| x as u8)).collect::<Vec<_>>())),
            (2, _) => Arc::new(UInt64Array::from(u64s(ints()))),
            (3, 3) => Arc::new(Float32Array::from(floats().into_iter().map(|x| x.map(|x| x as f32)).collect::<Vec<_>>())),
            (3, 1) if matches!(sem, Sem::Steps) => Arc::new(Int64Array::from(i64s(ints()))),
            (3, 1) => Arc::new(Int8Array::from(ints().into_iter().map(|x| x.map(|x| x as i8)).collect::<Vec<_>>())),
            (3, 2) => Arc::new(UInt32Array::from(ints().into_iter().map(|x| x.map(|x| x as u32)).collect::<Vec<_>>())),
            (3, _) => Arc::new(Float64Array::from(floats())),
            (4, _) => timestamps(self, i64s(ints())),
            (6, _) => Arc::new(BooleanArray::from(ints().into_iter().map(|x| x.map(|x| x % 2 == 0)).collect::<Vec<_>>())),
            (7, _) => Arc::new(NullArray::new(values.len())),
            (8, _) => Arc::new(UInt64Array::from(u64s(ints()))),
            (9, _) => Arc::new(Float64Array::from(floats())),
            (10, _) => Arc::new(arrow_array::Float16Array::from(
                floats().into_iter().map(|x| x.map(half::f16::from_f64)).collect::<Vec<_>>(),
            )),
            (11, _) => Arc::new(arrow_array::Date32Array::from(ints().into_iter().map(|x| x.map(|x| x as i32)).collect::<Vec<_>>())),
            (12, _) => Arc::new(arrow_array::BinaryArray::from(
                texts().iter().map(|x| x.as_deref().map(str::as_bytes)).collect::<Vec<_>>(),
            )),
            (13, _) => {
                let keys = Int32Array::from(ints().into_iter().map(|x| x.map(|x| (x as i32).rem_euclid(8))).collect::<Vec<_>>());
                let values = Arc::new(Int64Array::from((0..8).collect::<Vec<i64>>()));
                Arc::new(DictionaryArray::<Int32Type>::try_new(keys, values).expect("keys in range"))
            }
            _ => strings(self, texts()),
        }
    }

    /// A table with `columns` and `rows` rows, in 1 to 4 record batches.
    fn table(&mut self, columns: &[(&str, Sem)], rows: usize) -> (Vec<String>, Vec<RecordBatch>) {
        let mut fields = Vec::new();
        let mut arrays: Vec<ArrayRef> = Vec::new();
        for &(name, sem) in columns {
            let mode = self.byte();
            if (220..235).contains(&mode) {
                continue; // missing
            }
            let values: Vec<Value> = (0..rows).map(|r| self.value(sem, r)).collect();
            let name = if (250..=252).contains(&mode) { ["", "x", "Instrument"][self.below(3) as usize] } else { name };
            let array = if mode >= 253 { Arc::new(NullArray::new(rows)) as ArrayRef } else { self.array(sem, &values, (235..245).contains(&mode)) };
            fields.push(Field::new(name, array.data_type().clone(), true));
            arrays.push(array.clone());
            if (245..250).contains(&mode) {
                fields.push(Field::new(name, array.data_type().clone(), true));
                arrays.push(array);
            }
        }
        let names = fields.iter().map(|f| f.name().clone()).collect();
        let schema = Arc::new(Schema::new(fields));
        let options = RecordBatchOptions::new().with_row_count(Some(rows));
        let whole = RecordBatch::try_new_with_options(schema, arrays, &options).expect("consistent batch");
        let pieces = self.below(4) as usize;
        let mut cuts: Vec<usize> = (0..pieces).map(|_| self.below(rows as u8 + 1) as usize).collect();
        cuts.sort_unstable();
        let mut batches = Vec::new();
        let mut start = 0;
        for cut in cuts.into_iter().chain([rows]) {
            batches.push(whole.slice(start, cut - start));
            start = cut;
        }
        (names, batches)
    }
}

const INSTRUMENTS: &[(&str, Sem)] = &[
    ("instrument", Sem::Instrument(true)),
    ("kind", Sem::Kind),
    ("underlying", Sem::Underlying(true)),
    ("multiplier", Sem::Float(0.001, 10.0)),
    ("expiry", Sem::Timestamp),
    ("strike", Sem::Float(1.0, 200_000.0)),
    ("option_type", Sem::OptionType),
    ("initial_margin_rate", Sem::Float(0.1, 0.5)),
    ("maintenance_margin_rate", Sem::Float(0.001, 0.1)),
    ("initial_margin_floor", Sem::Float(0.0, 0.2)),
];
const ASSETS: &[(&str, Sem)] = &[
    ("asset", Sem::Asset(true)),
    ("price", Sem::Float(0.01, 100_000.0)),
    ("initial_weight", Sem::Float(0.0, 0.8)),
    ("maintenance_weight", Sem::Float(0.8, 1.0)),
    ("initial_liability_weight", Sem::Float(1.2, 1.5)),
    ("maintenance_liability_weight", Sem::Float(1.0, 1.2)),
    ("size_premium", Sem::Float(0.0, 0.01)),
    ("underlying", Sem::Underlying(false)),
];
const RISK_PARAMS: &[(&str, Sem)] = &[
    ("underlying", Sem::Underlying(true)),
    ("price_range", Sem::Float(0.01, 0.3)),
    ("price_steps", Sem::Steps),
    ("vol_up", Sem::Float(0.0, 1.0)),
    ("vol_down", Sem::Float(0.0, 1.0)),
    ("vol_term_exponent", Sem::Float(0.0, 1.0)),
    ("extreme_move", Sem::Float(0.0, 3.0)),
    ("extreme_cover", Sem::Float(0.0, 1.0)),
    ("short_option_minimum", Sem::Float(0.0, 0.1)),
    ("im_factor", Sem::Float(1.0, 2.0)),
];
const MARGIN_TIERS: &[(&str, Sem)] = &[
    ("instrument", Sem::Instrument(false)),
    ("notional_floor", Sem::Float(0.0, 1e6)),
    ("initial_margin_rate", Sem::Float(0.1, 0.5)),
    ("maintenance_margin_rate", Sem::Float(0.001, 0.1)),
];
const INDEX_PRICES: &[(&str, Sem)] = &[("underlying", Sem::Underlying(true)), ("index_price", Sem::Float(0.01, 100_000.0))];
const MARKS: &[(&str, Sem)] = &[
    ("instrument", Sem::Instrument(true)),
    ("mark_price", Sem::Float(0.0, 100_000.0)),
    ("implied_vol", Sem::Float(0.01, 3.0)),
];
const GREEKS: &[(&str, Sem)] = &[
    ("delta", Sem::Float(-1.0, 1.0)),
    ("gamma", Sem::Float(0.0, 1.0)),
    ("vega", Sem::Float(0.0, 100.0)),
    ("theta", Sem::Float(-100.0, 0.0)),
];
const POSITIONS: &[(&str, Sem)] = &[
    ("account_id", Sem::Account(false)),
    ("instrument", Sem::Instrument(false)),
    ("quantity", Sem::Float(-60.0, 140.0)),
    ("entry_price", Sem::Float(0.0, 100_000.0)),
];
const BALANCES: &[(&str, Sem)] =
    &[("account_id", Sem::Account(true)), ("asset", Sem::Asset(true)), ("amount", Sem::Float(-10_000.0, 100_000.0))];

fn table<'a>(name: &'static str, t: &'a (Vec<String>, Vec<RecordBatch>)) -> Table<'a> {
    Table::new(name, &t.0, &t.1)
}

fn run(data: &[u8]) {
    let mut g = Gen { u: Unstructured::new(data), int_keys: false };
    g.int_keys = g.below(4) == 3;
    let with_risk_params = g.below(2) == 0;
    let with_tiers = g.below(2) == 0;
    let with_greeks = g.below(4) == 3;

    // Row counts first, so that a short input still has rows everywhere (an exhausted input
    // reads as zeros: the largest count minus 0).
    let mut rows = |most: u8| usize::from(most - g.below(most + 1));
    let mut counts = [rows(INSTRUMENT_KEYS), rows(ASSET_KEYS), rows(UNDERLYINGS), rows(6), rows(UNDERLYINGS), rows(INSTRUMENT_KEYS), rows(40), rows(16)];
    if g.below(4) != 3 {
        counts[5] = counts[0]; // usually one mark per instrument
    }
    let instruments = g.table(INSTRUMENTS, counts[0]);
    let assets = g.table(ASSETS, counts[1]);
    let risk_params = with_risk_params.then(|| g.table(RISK_PARAMS, counts[2]));
    let margin_tiers = with_tiers.then(|| g.table(MARGIN_TIERS, counts[3]));
    let index_prices = g.table(INDEX_PRICES, counts[4]);
    let marks_columns: Vec<(&str, Sem)> = MARKS.iter().chain(if with_greeks { GREEKS } else { &[] }).copied().collect();
    let marks = g.table(&marks_columns, counts[5]);
    let positions = g.table(POSITIONS, counts[6]);
    let balances = g.table(BALANCES, counts[7]);
    let valuation_ns = match g.below(8) {
        0 => g.raw_i64(),
        _ => VALUATION_NS,
    };
    let moves: Vec<(String, f64)> = (0..g.below(3))
        .map(|_| {
            let name = format!("U{}", g.below(UNDERLYINGS + 1));
            let v = if g.below(8) == 0 { g.raw_f64() } else { -0.9 + 1.8 * g.unit() };
            (name, v)
        })
        .collect();
    let params = plan::PlanParams {
        liquidation_fee: [0.0, 0.01, 0.5, 0.999][g.below(4) as usize],
        liquidator_share: [0.0, 0.5, 1.0][g.below(3) as usize],
        buffer: [0.0, 0.1, 1e300][g.below(3) as usize],
        insurance_fund: [0.0, 100.0, 1e308][g.below(3) as usize],
    };
    let hedge_names: Vec<String> = (0..g.below(3)).map(|_| g.below(INSTRUMENT_KEYS + 1).to_string()).collect();
    let hedge_names: Vec<String> =
        if g.int_keys { hedge_names } else { hedge_names.into_iter().map(|k| format!("K{k}")).collect() };

    let Ok(book) = Book::new(BookTables {
        instruments: table("instruments", &instruments),
        assets: table("assets", &assets),
        risk_params: risk_params.as_ref().map(|t| table("risk_params", t)),
        margin_tiers: margin_tiers.as_ref().map(|t| table("margin_tiers", t)),
    }) else {
        return;
    };
    let Ok(tables) = MarketTables::new(&table("index_prices", &index_prices), &table("marks", &marks), valuation_ns) else {
        return;
    };
    let Ok(market) = Market::resolve(&book, &tables) else {
        return;
    };
    let risk = RiskArrays::new(&book, &market);
    if risk.check_finite(&book).is_ok() {
        let _ = risk_arrays_batch(&book, &risk);
    }
    let positions_t = table("positions", &positions);
    let balances_t = table("balances", &balances);
    if let Ok(inputs) = Inputs::new(&book, &market, Some(&positions_t), None) {
        if let Ok(rows) = engine::greeks(&book, &market, &inputs) {
            let _ = results::greeks_batch(&book, &rows);
        }
    }
    let Ok(inputs) = Inputs::new(&book, &market, Some(&positions_t), Some(&balances_t)) else {
        return;
    };
    let moved = stress::moves_by_underlying(&book, &moves)
        .ok()
        .map(|m| (stress::stress_market(&book, &market, &m), stress::stress_asset_prices(&book, &m)));
    let hedges = hedge::hedge_ids(&book, &market, &hedge_names).ok();

    for model in [Model::Standard, Model::Portfolio] {
        let Ok(rows) = engine::margin(&book, &market, &inputs, model) else {
            continue;
        };
        let _ = results::margin_batch(&rows);
        let order = liquidation::scan_order(&rows);
        if let Ok(d) = liquidation::distances(&book, &market, &inputs, model, &rows) {
            let mut nearest = vec![None; rows.len()];
            let mut k = 0;
            for (i, row) in rows.iter().enumerate() {
                let start = k;
                while k < d.len() && d[k].account_id == row.account_id {
                    k += 1;
                }
                nearest[i] = liquidation::nearest(&d[start..k]);
            }
            let _ = results::scan_batch(&book, &rows, &order, Some(&nearest));
            let _ = results::distance_batch(&book, &market.index_price, &d);
            let _ = results::map_batch(&book, &market.index_price, &liquidation::liquidation_map(&book, &d));
        }
        if let Some(hedges) = &hedges {
            for objective in [hedge::Objective::Maintenance, hedge::Objective::Initial] {
                let h = hedge::optimal_hedges(&book, &market, &inputs, model, objective, hedges, &rows);
                let _ = results::hedge_batch(&book, &h);
            }
        }
        let plan_under = |stressed: Option<&(Market, Vec<f64>)>| {
            let s = stressed.map(|(m, a)| engine::Stress { market: m, asset_price: a });
            let Ok(rows) = engine::margin_under(&book, &market, s, &inputs, model) else {
                return;
            };
            let order = liquidation::scan_order(&rows);
            let _ = results::scan_batch(&book, &rows, &order, None);
            let stressed_market = stressed.map(|(m, _)| m);
            let liquidation = plan::liquidate(&book, &market, stressed_market, &inputs, model, &rows, &params);
            let adl = plan::adl_queues(&book, &market, stressed_market, &inputs, &rows, &liquidation);
            let _ = results::plan_batches(&book, &liquidation, &params, &adl);
        };
        plan_under(None);
        if moved.is_some() {
            plan_under(moved.as_ref());
        }
    }
}

fuzz_target!(|data: &[u8]| run(data));
