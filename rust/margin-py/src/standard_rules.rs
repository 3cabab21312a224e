//! `standard_rules_margin(book, market, positions, balances, params, feeds=None, threads=None)`:
//! the generalized standard margin (`margin_core::standard_rules`) of every account, for tests
//! and for the comparison with `margin_engine.reference.standard_rules`.
//!
//! `params` is `dataclasses.asdict(StandardParams)`: every field present, none unknown, each of
//! its type (a missing, unknown or mistyped field is a `MarginInputError` on table
//! `methodology`, column `standard.<field>`), then `StandardRules::check`. `feeds` is
//! `dataclasses.asdict(MarketFeeds)` or None: `forwards`, `forward_confidence`,
//! `vol_confidence` keyed by `(underlying, expiry_ns)`, `index_confidence` by underlying,
//! `mark_confidence` by instrument key, and `stable_price`; a missing field takes v1's value, an
//! unknown one is an error, keys the book does not know are ignored (as the market ignores
//! instruments it does not price).

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::{ArrayRef, Float64Array, RecordBatch, UInt64Array};
use margin_core::book::{Book as CoreBook, Kind};
use margin_core::market::Market as CoreMarket;
use margin_core::standard_rules::{margin_accounts, Feeds, StandardAccount, StandardRules};
use margin_core::table::Key;
use margin_core::InputError;
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict};
use pyo3_arrow::PyTable;

use crate::{input_error, to_table, with_accounts, Book, Market};

const M: &str = "methodology";
const F: &str = "feeds";

fn field_err(key: &str, problem: impl Into<String>) -> InputError {
    InputError::new(M, &format!("standard.{key}"), problem)
}

/// The `StandardRules` of `dataclasses.asdict(StandardParams)`.
pub(crate) fn parse_rules(obj: &Bound<'_, PyAny>) -> Result<StandardRules, InputError> {
    let dict = obj
        .cast::<PyDict>()
        .map_err(|_| InputError::new(M, "standard", "expected a dict (dataclasses.asdict(StandardParams))"))?;
    for key in dict.keys() {
        let name = key.extract::<String>().unwrap_or_else(|_| key.to_string());
        if !StandardRules::FIELDS.contains(&name.as_str()) {
            return Err(field_err(&name, format!("unknown parameter (known: {})", StandardRules::FIELDS.join(", "))));
        }
    }
    let get = |key: &str| -> Result<Bound<'_, PyAny>, InputError> {
        dict.get_item(key).map_err(|e| field_err(key, e.to_string()))?.ok_or_else(|| field_err(key, "missing"))
    };
    let opt = |key: &str| -> Result<Option<f64>, InputError> {
        let v = get(key)?;
        if v.is_none() {
            return Ok(None);
        }
        if v.is_instance_of::<PyBool>() {
            return Err(field_err(key, format!("expected a number, got {v}")));
        }
        v.extract::<f64>().map(Some).map_err(|_| field_err(key, format!("expected a number, got {}", v.repr().map(|r| r.to_string()).unwrap_or_default())))
    };
    let num = |key: &str| -> Result<f64, InputError> { opt(key)?.ok_or_else(|| field_err(key, "expected a number, got None")) };
    let flag = |key: &str| -> Result<bool, InputError> {
        let v = get(key)?;
        if !v.is_instance_of::<PyBool>() {
            return Err(field_err(key, format!("expected true or false, got {}", v.repr().map(|r| r.to_string()).unwrap_or_default())));
        }
        Ok(v.is_truthy().unwrap_or(false))
    };
    let name = get("name")?;
    let rules = StandardRules {
        name: name.extract::<String>().map_err(|_| field_err("name", format!("expected a string, got {name}")))?,
        option_im_rate: opt("option_im_rate")?,
        option_im_floor: opt("option_im_floor")?,
        call_mm_rate: opt("call_mm_rate")?,
        put_mm_rate: opt("put_mm_rate")?,
        put_mm_mark_rate: num("put_mm_mark_rate")?,
        put_im_mm_multiple: opt("put_im_mm_multiple")?,
        call_im_mm_multiple: opt("call_im_mm_multiple")?,
        linear_im_rate: opt("linear_im_rate")?,
        linear_mm_rate: opt("linear_mm_rate")?,
        max_loss_floor: flag("max_loss_floor")?,
        unpaired_call_im_scale: num("unpaired_call_im_scale")?,
        unpaired_call_mm_scale: num("unpaired_call_mm_scale")?,
        option_value_in_collateral: flag("option_value_in_collateral")?,
        base_asset_margin_factor: opt("base_asset_margin_factor")?,
        base_asset_im_scale: num("base_asset_im_scale")?,
        depeg_threshold: opt("depeg_threshold")?,
        depeg_factor: num("depeg_factor")?,
        oracle_factor: num("oracle_factor")?,
        oracle_linear_threshold: opt("oracle_linear_threshold")?,
        oracle_option_threshold: opt("oracle_option_threshold")?,
        oracle_base_threshold: opt("oracle_base_threshold")?,
    };
    rules.check()?;
    Ok(rules)
}

/// `((underlying, expiry_ns), value)` entries of a feed keyed by expiry.
type ExpiryValues = Vec<((String, i64), f64)>;
/// A dict's (key, value) pairs.
type Entries<'py> = Vec<(Bound<'py, PyAny>, Bound<'py, PyAny>)>;

/// The feeds as read from the dict, before they meet the book.
#[derive(Default)]
struct FeedMaps {
    forwards: ExpiryValues,
    index_confidence: Vec<(String, f64)>,
    mark_confidence: Vec<(Key, f64)>,
    forward_confidence: ExpiryValues,
    vol_confidence: ExpiryValues,
    stable_price: Option<f64>,
}

const FEED_FIELDS: [&str; 6] = ["forwards", "stable_price", "index_confidence", "mark_confidence", "forward_confidence", "vol_confidence"];

fn number(field: &str, key: &Bound<'_, PyAny>, v: &Bound<'_, PyAny>) -> Result<f64, InputError> {
    if v.is_instance_of::<PyBool>() {
        return Err(InputError::new(F, field, format!("{key}: expected a number, got {v}")));
    }
    v.extract::<f64>().map_err(|_| InputError::new(F, field, format!("{key}: expected a number, got {v}")))
}

fn entries<'py>(dict: &Bound<'py, PyDict>, field: &str) -> Result<Entries<'py>, InputError> {
    match dict.get_item(field).map_err(|e| InputError::new(F, field, e.to_string()))? {
        None => Ok(Vec::new()),
        Some(v) if v.is_none() => Ok(Vec::new()),
        Some(v) => {
            let d = v.cast::<PyDict>().map_err(|_| InputError::new(F, field, "expected a dict"))?;
            Ok(d.iter().collect())
        }
    }
}

fn expiry_map(dict: &Bound<'_, PyDict>, field: &str) -> Result<ExpiryValues, InputError> {
    entries(dict, field)?
        .into_iter()
        .map(|(k, v)| {
            let key = k.extract::<(String, i64)>().map_err(|_| InputError::new(F, field, format!("expected (underlying, expiry_ns) keys, got {k}")))?;
            Ok((key, number(field, &k, &v)?))
        })
        .collect()
}

fn parse_feeds(obj: Option<&Bound<'_, PyAny>>) -> Result<FeedMaps, InputError> {
    let Some(obj) = obj.filter(|o| !o.is_none()) else { return Ok(FeedMaps::default()) };
    let dict = obj.cast::<PyDict>().map_err(|_| InputError::new(F, "*", "expected a dict (dataclasses.asdict(MarketFeeds)) or None"))?;
    for key in dict.keys() {
        let name = key.extract::<String>().unwrap_or_else(|_| key.to_string());
        if !FEED_FIELDS.contains(&name.as_str()) {
            return Err(InputError::new(F, &name, format!("unknown field (known: {})", FEED_FIELDS.join(", "))));
        }
    }
    let stable_price = match dict.get_item("stable_price").map_err(|e| InputError::new(F, "stable_price", e.to_string()))? {
        Some(v) if !v.is_none() => Some(number("stable_price", &v, &v)?),
        _ => None,
    };
    let index_confidence = entries(dict, "index_confidence")?
        .into_iter()
        .map(|(k, v)| {
            let name = k.extract::<String>().map_err(|_| InputError::new(F, "index_confidence", format!("expected underlying names as keys, got {k}")))?;
            Ok((name, number("index_confidence", &k, &v)?))
        })
        .collect::<Result<_, InputError>>()?;
    let mark_confidence = entries(dict, "mark_confidence")?
        .into_iter()
        .map(|(k, v)| {
            let key = if let Ok(s) = k.extract::<String>() {
                Key::Str(s)
            } else if let (false, Ok(i)) = (k.is_instance_of::<PyBool>(), k.extract::<i64>()) {
                Key::Int(i)
            } else {
                return Err(InputError::new(F, "mark_confidence", format!("expected instrument keys, got {k}")));
            };
            Ok((key, number("mark_confidence", &k, &v)?))
        })
        .collect::<Result<_, InputError>>()?;
    Ok(FeedMaps {
        forwards: expiry_map(dict, "forwards")?,
        index_confidence,
        mark_confidence,
        forward_confidence: expiry_map(dict, "forward_confidence")?,
        vol_confidence: expiry_map(dict, "vol_confidence")?,
        stable_price,
    })
}

/// The feeds spread onto the book's ids (per instrument / per underlying), as `Feeds` reads them.
struct FeedColumns {
    forward: Option<Vec<f64>>,
    index_confidence: Option<Vec<f64>>,
    mark_confidence: Option<Vec<f64>>,
    forward_confidence: Option<Vec<f64>>,
    vol_confidence: Option<Vec<f64>>,
    stable_price: f64,
}

impl FeedColumns {
    fn new(book: &CoreBook, maps: &FeedMaps) -> FeedColumns {
        let ins = &book.instruments;
        let per_option = |values: &[((String, i64), f64)], default: f64| -> Option<Vec<f64>> {
            if values.is_empty() {
                return None;
            }
            let by_key: HashMap<(u32, i64), f64> = values
                .iter()
                .filter_map(|((u, e), v)| book.underlyings.index.get_str(u).map(|u| ((u, *e), *v)))
                .collect();
            Some(
                (0..ins.len())
                    .map(|i| match (ins.kind[i], ins.expiry_ns[i]) {
                        (Kind::Option, Some(e)) => by_key.get(&(ins.underlying[i], e)).copied().unwrap_or(default),
                        _ => default,
                    })
                    .collect(),
            )
        };
        let index_confidence = (!maps.index_confidence.is_empty()).then(|| {
            let mut out = vec![1.0; book.underlyings.names.len()];
            for (name, c) in &maps.index_confidence {
                if let Some(u) = book.underlyings.index.get_str(name) {
                    out[u as usize] = *c;
                }
            }
            out
        });
        let mark_confidence = (!maps.mark_confidence.is_empty()).then(|| {
            let mut out = vec![1.0; ins.len()];
            for (key, c) in &maps.mark_confidence {
                if let Some(i) = ins.index.get(key) {
                    out[i as usize] = *c;
                }
            }
            out
        });
        FeedColumns {
            forward: per_option(&maps.forwards, f64::NAN),
            index_confidence,
            mark_confidence,
            forward_confidence: per_option(&maps.forward_confidence, 1.0),
            vol_confidence: per_option(&maps.vol_confidence, 1.0),
            stable_price: maps.stable_price.unwrap_or(1.0),
        }
    }

    fn feeds(&self) -> Feeds<'_> {
        Feeds {
            forward: self.forward.as_deref(),
            index_confidence: self.index_confidence.as_deref(),
            mark_confidence: self.mark_confidence.as_deref(),
            forward_confidence: self.forward_confidence.as_deref(),
            vol_confidence: self.vol_confidence.as_deref(),
            stable_price: self.stable_price,
        }
    }
}

/// The given values themselves, before they are spread (a bad value the book does not use is
/// still bad input).
fn check_feed_values(maps: &FeedMaps) -> Result<(), InputError> {
    let confidence = |field: &str, v: f64| {
        if (0.0..=1.0).contains(&v) {
            Ok(())
        } else {
            Err(InputError::new(F, field, format!("expected a confidence in [0, 1], got {v}")))
        }
    };
    for (_, v) in &maps.forwards {
        if !(v.is_finite() && *v > 0.0) {
            return Err(InputError::new(F, "forwards", format!("expected a finite price > 0, got {v}")));
        }
    }
    for (_, v) in &maps.index_confidence {
        confidence("index_confidence", *v)?;
    }
    for (_, v) in &maps.mark_confidence {
        confidence("mark_confidence", *v)?;
    }
    for (_, v) in &maps.forward_confidence {
        confidence("forward_confidence", *v)?;
    }
    for (_, v) in &maps.vol_confidence {
        confidence("vol_confidence", *v)?;
    }
    Ok(())
}

fn batch(rows: &[(u64, StandardAccount)]) -> Result<RecordBatch, InputError> {
    let col = |f: fn(u64, &StandardAccount) -> f64| -> ArrayRef { Arc::new(Float64Array::from(rows.iter().map(|(id, a)| f(*id, a)).collect::<Vec<f64>>())) };
    RecordBatch::try_from_iter(vec![
        ("account_id", Arc::new(UInt64Array::from(rows.iter().map(|r| r.0).collect::<Vec<u64>>())) as ArrayRef),
        ("equity", col(|_, a| a.equity)),
        ("collateral_initial", col(|_, a| a.collateral_initial)),
        ("collateral_maintenance", col(|_, a| a.collateral_maintenance)),
        ("initial_margin", col(|_, a| a.initial_margin)),
        ("maintenance_margin", col(|_, a| a.maintenance_margin)),
        ("free_collateral", col(|id, a| a.row(id).free_collateral())),
        ("margin_excess", col(|id, a| a.row(id).margin_excess())),
        ("upnl", col(|_, a| a.upnl)),
        ("option_value", col(|_, a| a.option_value)),
        ("depeg_im", col(|_, a| a.depeg_im)),
        ("oracle_im", col(|_, a| a.oracle_im)),
    ])
    .map_err(|e| InputError::new("output", "*", e.to_string()))
}

/// The generalized standard margin of every account in positions or balances, sorted by id.
#[pyfunction]
#[pyo3(signature = (book, market, positions, balances, params, feeds=None, threads=None))]
#[allow(clippy::too_many_arguments)]
pub fn standard_rules_margin(
    py: Python<'_>,
    book: &Book,
    market: &Market,
    positions: &Bound<'_, PyAny>,
    balances: &Bound<'_, PyAny>,
    params: &Bound<'_, PyAny>,
    feeds: Option<&Bound<'_, PyAny>>,
    threads: Option<usize>,
) -> PyResult<PyTable> {
    let rules = parse_rules(params).map_err(|e| input_error(py, &e))?;
    let maps = parse_feeds(feeds).map_err(|e| input_error(py, &e))?;
    check_feed_values(&maps).map_err(|e| input_error(py, &e))?;
    let batch = with_accounts(py, book, market, positions, Some(balances), threads, |book: &CoreBook, market: &CoreMarket, inputs| {
        let columns = FeedColumns::new(book, &maps);
        let rows = margin_accounts(book, market, inputs, &rules, &columns.feeds())?;
        batch(&rows)
    })?;
    to_table(batch)
}
