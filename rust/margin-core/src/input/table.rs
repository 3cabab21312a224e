//! Reading input columns out of Arrow record batches, with validation at the boundary.
//!
//! A [`Table`] is a named list of record batches (a chunked table, as it arrives through the
//! Arrow C stream interface). A [`Column`] reads one column across all chunks. Readers are
//! zero-copy where Arrow's layout already is what the kernels want (a single `float64` or
//! `uint64`/`int64` chunk) and copy otherwise. Every reader rejects what the methodology does not
//! allow (nulls, NaN/inf, out-of-range values, wrong types, unknown keys) with an [`InputError`]
//! that names the table, the column and the offending rows or keys.

use std::borrow::Cow;

use arrow_array::cast::AsArray;
use arrow_array::types::*;
use arrow_array::{Array, ArrayAccessor, ArrayRef, ArrowPrimitiveType, PrimitiveArray, RecordBatch};
use arrow_buffer::ArrowNativeType;
use arrow_schema::{DataType, TimeUnit};
use rayon::prelude::*;
use rustc_hash::FxHashMap;

use crate::error::{InputError, Offenders, Result};

/// Rows per parallel task when mapping large key columns.
const PAR_BLOCK: usize = 1 << 16;

/// A chunked input table, by name.
#[derive(Clone, Copy)]
pub struct Table<'a> {
    pub name: &'static str,
    batches: &'a [RecordBatch],
    column_names: &'a [String],
    /// Per-row labels (the table's keys) used in error messages instead of row numbers.
    labels: Option<&'a [String]>,
}

impl<'a> Table<'a> {
    /// `column_names` are the schema's field names (passed in so an empty table still has them).
    pub fn new(name: &'static str, column_names: &'a [String], batches: &'a [RecordBatch]) -> Self {
        Table { name, batches, column_names, labels: None }
    }

    /// Errors will name rows by these labels (one per row) instead of by row number.
    pub fn with_labels(mut self, labels: &'a [String]) -> Self {
        self.labels = Some(labels);
        self
    }

    pub fn num_rows(&self) -> usize {
        self.batches.iter().map(|b| b.num_rows()).sum()
    }

    pub fn has_column(&self, name: &str) -> bool {
        self.column_names.iter().any(|c| c == name)
    }

    /// The column, or an error naming it as missing.
    pub fn column(&self, name: &str) -> Result<Column<'a>> {
        self.optional_column(name).ok_or_else(|| {
            InputError::new(
                self.name,
                name,
                format!("missing column (the table has: {})", self.column_names.join(", ")),
            )
        })
    }

    pub fn optional_column(&self, name: &str) -> Option<Column<'a>> {
        let position = self.column_names.iter().position(|c| c == name)?;
        let mut chunks = Vec::with_capacity(self.batches.len());
        let mut offset = 0;
        for batch in self.batches {
            let array = batch.column(position);
            if !array.is_empty() {
                chunks.push((offset, array));
            }
            offset += batch.num_rows();
        }
        Some(Column {
            table: self.name,
            name: self.column_names[position].clone(),
            chunks,
            len: offset,
            labels: self.labels,
        })
    }

    /// Rejects columns the table must not have twice (Arrow allows duplicate field names).
    pub fn check_unique_column_names(&self) -> Result<()> {
        let mut seen = std::collections::HashSet::new();
        for c in self.column_names {
            if !seen.insert(c) {
                return Err(InputError::new(self.name, c, "column appears more than once"));
            }
        }
        Ok(())
    }
}

/// The allowed range of a numeric column.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Domain {
    Finite,
    Positive,
    NonNegative,
    UnitInterval,
    AtLeastOne,
    /// A price: finite and > 0, and not subnormal (below 2.2e-308 no price is meaningful, and
    /// its reciprocal overflows).
    Price,
}

impl Domain {
    pub fn contains(self, v: f64) -> bool {
        match self {
            Domain::Finite => v.is_finite(),
            Domain::Positive => v.is_finite() && v > 0.0,
            Domain::NonNegative => v.is_finite() && v >= 0.0,
            Domain::UnitInterval => (0.0..=1.0).contains(&v),
            Domain::AtLeastOne => v.is_finite() && v >= 1.0,
            Domain::Price => v.is_finite() && v >= f64::MIN_POSITIVE,
        }
    }

    fn problem(self) -> &'static str {
        match self {
            Domain::Finite => "values must be finite numbers (NaN or infinite found)",
            Domain::Positive => "values must be finite and > 0",
            Domain::NonNegative => "values must be finite and >= 0",
            Domain::UnitInterval => "values must be in [0, 1]",
            Domain::AtLeastOne => "values must be finite and >= 1",
            Domain::Price => "values must be finite and > 0 (and not subnormal, below 2.2e-308)",
        }
    }
}

/// A key of a book table: instrument, asset or underlying.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Key {
    Str(String),
    Int(i64),
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Key::Str(s) => write!(f, "'{s}'"),
            Key::Int(i) => write!(f, "{i}"),
        }
    }
}

/// Maps keys to dense ids; built once per book table.
#[derive(Debug, Clone)]
pub enum KeyIndex {
    Str(FxHashMap<Box<str>, u32>),
    Int(FxHashMap<i64, u32>),
}

impl KeyIndex {
    /// Builds the index; the keys must be unique (the error lists the repeated ones).
    pub fn build(keys: &[Key], table: &str, column: &str) -> Result<KeyIndex> {
        let mut dup = Offenders::default();
        let index = if keys.iter().all(|k| matches!(k, Key::Int(_))) && !keys.is_empty() {
            let mut m = FxHashMap::default();
            for (i, k) in keys.iter().enumerate() {
                if let Key::Int(v) = k {
                    if m.insert(*v, i as u32).is_some() {
                        dup.push(|| k.to_string());
                    }
                }
            }
            KeyIndex::Int(m)
        } else {
            let mut m = FxHashMap::default();
            for (i, k) in keys.iter().enumerate() {
                if let Key::Str(s) = k {
                    if m.insert(s.clone().into_boxed_str(), i as u32).is_some() {
                        dup.push(|| k.to_string());
                    }
                }
            }
            KeyIndex::Str(m)
        };
        dup.into_result(table, column, "duplicate key")?;
        Ok(index)
    }

    pub fn get(&self, key: &Key) -> Option<u32> {
        match (self, key) {
            (KeyIndex::Str(m), Key::Str(s)) => m.get(s.as_str()).copied(),
            (KeyIndex::Int(m), Key::Int(i)) => m.get(i).copied(),
            _ => None,
        }
    }

    pub fn get_str(&self, key: &str) -> Option<u32> {
        match self {
            KeyIndex::Str(m) => m.get(key).copied(),
            KeyIndex::Int(_) => None,
        }
    }

    /// Whether the index holds integer keys (else strings).
    pub fn is_int(&self) -> bool {
        matches!(self, KeyIndex::Int(_))
    }
}

/// One column of a [`Table`], across its chunks.
pub struct Column<'a> {
    pub table: &'static str,
    pub name: String,
    /// (first row of the chunk, the chunk)
    chunks: Vec<(usize, &'a ArrayRef)>,
    pub len: usize,
    labels: Option<&'a [String]>,
}

impl<'a> Column<'a> {
    fn label(&self, row: usize) -> String {
        match self.labels {
            Some(l) => format!("'{}'", l[row]),
            None => format!("row {row}"),
        }
    }

    fn error(&self, problem: impl Into<String>) -> InputError {
        InputError::new(self.table, &self.name, problem)
    }

    fn type_error(&self, expected: &str) -> InputError {
        let got = self.chunks.first().map(|(_, a)| a.data_type().to_string()).unwrap_or_default();
        self.error(format!("wrong type: expected {expected}, got {got}"))
    }

    pub fn data_type(&self) -> Option<&DataType> {
        self.chunks.first().map(|(_, a)| a.data_type())
    }

    /// Rows whose value is null, as an error (or Ok when there are none).
    pub fn check_no_nulls(&self) -> Result<()> {
        let mut nulls = Offenders::default();
        for (offset, array) in &self.chunks {
            if array.logical_null_count() == 0 {
                continue;
            }
            if let Some(n) = array.logical_nulls() {
                for i in n.iter().enumerate().filter(|(_, valid)| !valid).map(|(i, _)| i) {
                    nulls.push(|| self.label(offset + i));
                }
            }
        }
        nulls.into_result(self.table, &self.name, "null values are not allowed")
    }

    /// Whether row `i` of a chunk is null.
    fn null_rows(&self) -> Vec<bool> {
        let mut out = vec![false; self.len];
        for (offset, array) in &self.chunks {
            if let Some(n) = array.logical_nulls() {
                for (i, valid) in n.iter().enumerate() {
                    out[offset + i] = !valid;
                }
            }
        }
        out
    }

    fn float_chunk(&self, array: &'a ArrayRef) -> Result<Cow<'a, [f64]>> {
        macro_rules! convert {
            ($t:ty) => {
                Cow::Owned(array.as_primitive::<$t>().values().iter().map(|v| *v as f64).collect())
            };
        }
        Ok(match array.data_type() {
            DataType::Float64 => Cow::Borrowed(&array.as_primitive::<Float64Type>().values()[..]),
            DataType::Float32 => convert!(Float32Type),
            DataType::Int8 => convert!(Int8Type),
            DataType::Int16 => convert!(Int16Type),
            DataType::Int32 => convert!(Int32Type),
            DataType::Int64 => convert!(Int64Type),
            DataType::UInt8 => convert!(UInt8Type),
            DataType::UInt16 => convert!(UInt16Type),
            DataType::UInt32 => convert!(UInt32Type),
            DataType::UInt64 => convert!(UInt64Type),
            _ => return Err(self.type_error("float64")),
        })
    }

    /// The values as float64 (no nulls allowed), each checked against `domain`.
    /// Zero-copy for a single float64 chunk.
    pub fn f64s(&self, domain: Domain) -> Result<Cow<'a, [f64]>> {
        self.check_no_nulls()?;
        let values: Cow<'a, [f64]> = match self.chunks.len() {
            0 => {
                if let Some(dt) = self.data_type() {
                    if !dt.is_numeric() {
                        return Err(self.type_error("float64"));
                    }
                }
                Cow::Owned(Vec::new())
            }
            1 => self.float_chunk(self.chunks[0].1)?,
            _ => {
                let mut all = Vec::with_capacity(self.len);
                for (_, a) in &self.chunks {
                    all.extend_from_slice(&self.float_chunk(a)?);
                }
                Cow::Owned(all)
            }
        };
        // branch-free per block (vectorizes), blocks in parallel; the slow path finds offenders
        let valid = values.par_chunks(PAR_BLOCK).all(|block| block.iter().fold(true, |ok, v| ok & domain.contains(*v)));
        if !valid {
            let mut bad = Offenders::default();
            for (i, v) in values.iter().enumerate() {
                if !domain.contains(*v) {
                    bad.push(|| format!("{} = {}", self.label(i), crate::error::show_value(*v)));
                }
            }
            return Err(self.error(domain.problem()).with_offenders(bad));
        }
        Ok(values)
    }

    /// [`Column::f64s`], but nulls are allowed and read as NaN (the values themselves are still
    /// checked against `domain`, which NaN never meets). Zero-copy when there are no nulls.
    pub fn f64s_null_as_nan(&self, domain: Domain) -> Result<Cow<'a, [f64]>> {
        let has_nulls = self.chunks.iter().any(|(_, a)| a.data_type() == &DataType::Null || a.logical_null_count() > 0);
        if !has_nulls {
            return self.f64s(domain);
        }
        Ok(Cow::Owned(self.f64s_nullable(domain)?.into_iter().map(|v| v.unwrap_or(f64::NAN)).collect()))
    }

    /// Float values with nulls read as 0 (an amount that is absent is none), non-null values
    /// checked against `domain`.
    pub fn f64s_null_as_zero(&self, domain: Domain) -> Result<Cow<'a, [f64]>> {
        let has_nulls = self.chunks.iter().any(|(_, a)| a.data_type() == &DataType::Null || a.logical_null_count() > 0);
        if !has_nulls {
            return self.f64s(domain);
        }
        Ok(Cow::Owned(self.f64s_nullable(domain)?.into_iter().map(|v| v.unwrap_or(0.0)).collect()))
    }

    /// Float values with nulls as `None` (for small book tables). Non-null values are checked.
    pub fn f64s_nullable(&self, domain: Domain) -> Result<Vec<Option<f64>>> {
        let nulls = self.null_rows();
        let mut values = Vec::with_capacity(self.len);
        for (_, a) in &self.chunks {
            if a.data_type() == &DataType::Null {
                // an all-null column of no particular type (e.g. built from Python `None`s)
                values.extend(std::iter::repeat_n(f64::NAN, a.len()));
            } else {
                values.extend_from_slice(&self.float_chunk(a)?);
            }
        }
        let mut bad = Offenders::default();
        let out = values
            .iter()
            .zip(&nulls)
            .enumerate()
            .map(|(i, (v, null))| {
                if *null {
                    None
                } else {
                    if !domain.contains(*v) {
                        bad.push(|| format!("{} = {}", self.label(i), crate::error::show_value(*v)));
                    }
                    Some(*v)
                }
            })
            .collect();
        bad.into_result(self.table, &self.name, domain.problem())?;
        Ok(out)
    }

    /// Account ids as u64 (no nulls, no negatives). Zero-copy for a single uint64 or int64 chunk.
    pub fn account_ids(&self) -> Result<Cow<'a, [u64]>> {
        self.check_no_nulls()?;
        let mut negative = Offenders::default();
        let mut parts: Vec<Cow<'a, [u64]>> = Vec::with_capacity(self.chunks.len());
        for (offset, array) in &self.chunks {
            macro_rules! signed {
                ($t:ty) => {{
                    let v = array.as_primitive::<$t>().values();
                    if v.iter().any(|x| *x < 0) {
                        for (i, x) in v.iter().enumerate().filter(|(_, x)| **x < 0) {
                            negative.push(|| format!("{} = {x}", self.label(offset + i)));
                        }
                    }
                    v
                }};
            }
            let part: Cow<'a, [u64]> = match array.data_type() {
                DataType::UInt64 => Cow::Borrowed(&array.as_primitive::<UInt64Type>().values()[..]),
                DataType::Int64 => {
                    let v: &'a [i64] = signed!(Int64Type);
                    // SAFETY: i64 and u64 have the same size and alignment, and every value was
                    // checked to be >= 0 (if not, the error below is returned before use), so the
                    // bit patterns mean the same numbers.
                    Cow::Borrowed(unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u64, v.len()) })
                }
                DataType::Int32 => Cow::Owned(signed!(Int32Type).iter().map(|x| *x as u64).collect()),
                DataType::Int16 => Cow::Owned(signed!(Int16Type).iter().map(|x| *x as u64).collect()),
                DataType::Int8 => Cow::Owned(signed!(Int8Type).iter().map(|x| *x as u64).collect()),
                DataType::UInt32 => Cow::Owned(array.as_primitive::<UInt32Type>().values().iter().map(|x| *x as u64).collect()),
                DataType::UInt16 => Cow::Owned(array.as_primitive::<UInt16Type>().values().iter().map(|x| *x as u64).collect()),
                DataType::UInt8 => Cow::Owned(array.as_primitive::<UInt8Type>().values().iter().map(|x| *x as u64).collect()),
                _ => return Err(self.type_error("uint64 or int64")),
            };
            parts.push(part);
        }
        negative.into_result(self.table, &self.name, "account ids must be >= 0")?;
        Ok(match parts.len() {
            0 => Cow::Owned(Vec::new()),
            1 => parts.pop().unwrap_or_default(),
            _ => Cow::Owned(parts.iter().flat_map(|p| p.iter().copied()).collect()),
        })
    }

    /// All values as keys (for building a book table's index). Nulls are an error.
    pub fn keys(&self) -> Result<Vec<Key>> {
        self.check_no_nulls()?;
        let mut out = Vec::with_capacity(self.len);
        let mut too_big = Offenders::default();
        for (offset, array) in &self.chunks {
            if let Some(values) = int_values(array) {
                for (i, v) in values.into_iter().enumerate() {
                    match v {
                        Some(v) => out.push(Key::Int(v)),
                        None => {
                            too_big.push(|| format!("{} = {}", self.label(offset + i), key_text(array, i)));
                            out.push(Key::Int(-1));
                        }
                    }
                }
            } else if is_string_like(array.data_type()) {
                for s in self.strings_of(array)? {
                    out.push(Key::Str(s.unwrap_or_default()));
                }
            } else {
                return Err(self.type_error("utf8 or an integer type"));
            }
        }
        too_big.into_result(self.table, &self.name, "integer keys must fit in int64 (<= 9223372036854775807)")?;
        Ok(out)
    }

    /// Strings, nulls as `None` (utf8, large_utf8, utf8_view, dictionary of those).
    pub fn strings_nullable(&self) -> Result<Vec<Option<String>>> {
        let mut out = Vec::with_capacity(self.len);
        for (_, array) in &self.chunks {
            out.extend(self.strings_of(array)?);
        }
        Ok(out)
    }

    fn strings_of(&self, array: &ArrayRef) -> Result<Vec<Option<String>>> {
        fn collect<'x, A: ArrayAccessor<Item = &'x str>>(a: A) -> Vec<Option<String>> {
            (0..a.len()).map(|i| if a.is_valid(i) { Some(a.value(i).to_string()) } else { None }).collect()
        }
        Ok(match array.data_type() {
            DataType::Utf8 => collect(array.as_string::<i32>()),
            DataType::LargeUtf8 => collect(array.as_string::<i64>()),
            DataType::Utf8View => collect(array.as_string_view()),
            // an all-null column of no particular type (e.g. built from Python `None`s)
            DataType::Null => vec![None; array.len()],
            DataType::Dictionary(_, _) => {
                let dict = array.as_any_dictionary();
                let values = self.strings_of(dict.values())?;
                if values.is_empty() {
                    // an empty dictionary: every slot is null (normalized_keys would panic)
                    return Ok(vec![None; array.len()]);
                }
                let keys = dict.normalized_keys();
                let nulls = array.logical_nulls();
                keys.iter()
                    .enumerate()
                    .map(|(i, k)| {
                        if nulls.as_ref().is_some_and(|n| n.is_null(i)) {
                            None
                        } else {
                            values.get(*k).cloned().flatten()
                        }
                    })
                    .collect()
            }
            _ => return Err(self.type_error("utf8")),
        })
    }

    /// Maps every value to its dense id in `index`. Nulls and keys not in the index are errors
    /// (`what` names the kind of key, e.g. "instrument"). Large columns are mapped in parallel.
    pub fn map_keys(&self, index: &KeyIndex, what: &str) -> Result<Vec<u32>> {
        self.check_no_nulls()?;
        let mut ids = vec![0u32; self.len];
        let mut unknown = Offenders::default();
        for (offset, array) in &self.chunks {
            let out = &mut ids[*offset..*offset + array.len()];
            map_chunk(array, index, out)
                .ok_or_else(|| self.type_error(if index.is_int() { "int64 keys" } else { "utf8 keys" }))?;
            if out.contains(&MISSING) {
                for (i, _) in out.iter().enumerate().filter(|(_, id)| **id == MISSING) {
                    unknown.push(|| format!("{} ({})", key_text(array, i), self.label(offset + i)));
                }
            }
        }
        unknown.into_result(self.table, &self.name, &format!("unknown {what}"))?;
        Ok(ids)
    }

    /// A single-chunk dictionary column with 32-bit indices, read in place: its indices
    /// (borrowed) and the dense id of each dictionary value. `None` when the column is not of that
    /// shape, or any row's key is unknown (then [`Column::map_keys`] reads it and names the rows).
    pub fn dictionary_codes(&self, index: &KeyIndex) -> Result<Option<(Cow<'a, [u32]>, Vec<u32>)>> {
        self.check_no_nulls()?;
        let [(_, array)] = self.chunks[..] else { return Ok(None) };
        let Some(dict) = array.as_any_dictionary_opt() else { return Ok(None) };
        let values = dict.values();
        let mut value_ids = vec![0u32; values.len()];
        if map_chunk(values, index, &mut value_ids).is_none() {
            return Ok(None);
        }
        let keys = dict.keys();
        let codes: &'a [u32] = match keys.data_type() {
            DataType::UInt32 => &array.as_dictionary::<UInt32Type>().keys().values()[..],
            DataType::Int32 => {
                let v: &'a [i32] = &array.as_dictionary::<Int32Type>().keys().values()[..];
                // SAFETY: i32 and u32 have the same size and alignment. A negative index reads as
                // a number >= 2^31, beyond any dictionary, so the check below rejects it and the
                // slice is used only if every index is a valid non-negative one.
                unsafe { std::slice::from_raw_parts(v.as_ptr() as *const u32, v.len()) }
            }
            _ => return Ok(None),
        };
        let known = |c: &u32| value_ids.get(*c as usize).is_some_and(|id| *id != MISSING);
        if !codes.par_chunks(PAR_BLOCK).all(|b| b.iter().fold(true, |ok, c| ok & known(c))) {
            return Ok(None);
        }
        Ok(Some((Cow::Borrowed(codes), value_ids)))
    }

    /// Timestamps as nanoseconds since the epoch; nulls as `None`.
    pub fn timestamps_ns(&self) -> Result<Vec<Option<i64>>> {
        let mut out = Vec::with_capacity(self.len);
        let mut overflow = Offenders::default();
        for (offset, array) in &self.chunks {
            if array.data_type() == &DataType::Null {
                out.extend(std::iter::repeat_n(None, array.len()));
                continue;
            }
            let (values, scale): (&[i64], i64) = match array.data_type() {
                DataType::Timestamp(TimeUnit::Second, _) => (array.as_primitive::<TimestampSecondType>().values(), 1_000_000_000),
                DataType::Timestamp(TimeUnit::Millisecond, _) => (array.as_primitive::<TimestampMillisecondType>().values(), 1_000_000),
                DataType::Timestamp(TimeUnit::Microsecond, _) => (array.as_primitive::<TimestampMicrosecondType>().values(), 1_000),
                DataType::Timestamp(TimeUnit::Nanosecond, _) => (array.as_primitive::<TimestampNanosecondType>().values(), 1),
                _ => return Err(self.type_error("timestamp")),
            };
            for (i, v) in values.iter().enumerate() {
                if array.is_null(i) {
                    out.push(None);
                } else {
                    match v.checked_mul(scale) {
                        Some(ns) => out.push(Some(ns)),
                        None => {
                            overflow.push(|| self.label(offset + i));
                            out.push(None)
                        }
                    }
                }
            }
        }
        overflow.into_result(self.table, &self.name, "timestamp out of range")?;
        Ok(out)
    }
}

/// Integer values as i64 (`None` for a uint64 beyond `i64::MAX`), or `None` for a non-integer
/// array.
fn int_values(array: &ArrayRef) -> Option<Vec<Option<i64>>> {
    macro_rules! ints {
        ($t:ty) => {
            array.as_primitive::<$t>().values().iter().map(|v| Some(*v as i64)).collect()
        };
    }
    Some(match array.data_type() {
        DataType::Int8 => ints!(Int8Type),
        DataType::Int16 => ints!(Int16Type),
        DataType::Int32 => ints!(Int32Type),
        DataType::Int64 => ints!(Int64Type),
        DataType::UInt8 => ints!(UInt8Type),
        DataType::UInt16 => ints!(UInt16Type),
        DataType::UInt32 => ints!(UInt32Type),
        DataType::UInt64 => array.as_primitive::<UInt64Type>().values().iter().map(|v| i64::try_from(*v).ok()).collect(),
        DataType::Dictionary(_, v) if v.is_integer() => {
            let dict = array.as_any_dictionary();
            let values = int_values(dict.values())?;
            if values.is_empty() {
                return Some(vec![None; array.len()]);
            }
            dict.normalized_keys().iter().map(|k| values[*k]).collect()
        }
        _ => return None,
    })
}

/// Whether a column of this type holds strings (possibly dictionary-encoded).
fn is_string_like(dt: &DataType) -> bool {
    match dt {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View | DataType::Null => true,
        DataType::Dictionary(_, v) => is_string_like(v),
        _ => false,
    }
}

/// The id written for a key that is not in the index.
const MISSING: u32 = u32::MAX;

/// A key as written in the input, for error messages.
fn key_text(array: &ArrayRef, i: usize) -> String {
    match array.data_type() {
        DataType::Utf8 => format!("'{}'", array.as_string::<i32>().value(i)),
        DataType::LargeUtf8 => format!("'{}'", array.as_string::<i64>().value(i)),
        DataType::Utf8View => format!("'{}'", array.as_string_view().value(i)),
        DataType::Dictionary(_, _) if array.as_any_dictionary().values().is_empty() => String::from("null"),
        DataType::Dictionary(_, _) => {
            let dict = array.as_any_dictionary();
            match dict.normalized_keys().get(i) {
                Some(k) if *k < dict.values().len() => key_text(dict.values(), *k),
                Some(k) => format!("dictionary key {k} (out of range)"),
                None => String::from("?"),
            }
        }
        DataType::UInt64 => array.as_primitive::<UInt64Type>().value(i).to_string(),
        _ => int_values(&array.slice(i, 1))
            .and_then(|v| v.first().copied().flatten())
            .map(|x| x.to_string())
            .unwrap_or_else(|| format!("row {i}")),
    }
}

/// Maps one chunk into `out` ([`MISSING`] for unknown keys); `None` when the chunk's type cannot
/// hold keys of this index.
fn map_chunk(array: &ArrayRef, index: &KeyIndex, out: &mut [u32]) -> Option<()> {
    match (array.data_type(), index) {
        (DataType::Utf8, KeyIndex::Str(m)) => map_strings(array.as_string::<i32>(), m, out),
        (DataType::LargeUtf8, KeyIndex::Str(m)) => map_strings(array.as_string::<i64>(), m, out),
        (DataType::Utf8View, KeyIndex::Str(m)) => map_strings(array.as_string_view(), m, out),
        (DataType::Dictionary(_, _), _) => {
            let dict = array.as_any_dictionary();
            let values = dict.values();
            let mut value_ids = vec![0u32; values.len()];
            map_chunk(values, index, &mut value_ids)?;
            let keys = dict.keys();
            macro_rules! remap {
                ($t:ty) => {
                    remap_dictionary(keys.as_primitive::<$t>(), &value_ids, out)
                };
            }
            match keys.data_type() {
                DataType::Int8 => remap!(Int8Type),
                DataType::Int16 => remap!(Int16Type),
                DataType::Int32 => remap!(Int32Type),
                DataType::Int64 => remap!(Int64Type),
                DataType::UInt8 => remap!(UInt8Type),
                DataType::UInt16 => remap!(UInt16Type),
                DataType::UInt32 => remap!(UInt32Type),
                DataType::UInt64 => remap!(UInt64Type),
                _ => return None,
            }
        }
        (_, KeyIndex::Int(m)) => {
            let values = int_values(array)?;
            for (slot, v) in out.iter_mut().zip(&values) {
                *slot = v.and_then(|v| m.get(&v).copied()).unwrap_or(MISSING);
            }
        }
        _ => return None,
    }
    Some(())
}

fn remap_dictionary<K: ArrowPrimitiveType>(keys: &PrimitiveArray<K>, value_ids: &[u32], out: &mut [u32]) {
    for (slot, k) in out.iter_mut().zip(keys.values().iter()) {
        *slot = value_ids.get(k.as_usize()).copied().unwrap_or(MISSING);
    }
}

fn map_strings<'x, A>(array: A, map: &FxHashMap<Box<str>, u32>, out: &mut [u32])
where
    A: ArrayAccessor<Item = &'x str> + Sync + Copy,
{
    out.par_chunks_mut(PAR_BLOCK).enumerate().for_each(|(b, block)| {
        let start = b * PAR_BLOCK;
        for (j, slot) in block.iter_mut().enumerate() {
            *slot = map.get(array.value(start + j)).copied().unwrap_or(MISSING);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{DictionaryArray, Float64Array, Int64Array, NullArray, StringArray, UInt64Array};
    use std::sync::Arc;

    fn batch(cols: Vec<(&str, ArrayRef)>) -> RecordBatch {
        RecordBatch::try_from_iter(cols).unwrap()
    }

    #[test]
    fn float_column_rejects_nan_and_names_rows() {
        let b = batch(vec![("q", Arc::new(Float64Array::from(vec![1.0, f64::NAN, 2.0])) as ArrayRef)]);
        let names = vec!["q".to_string()];
        let t = Table::new("positions", &names, std::slice::from_ref(&b));
        let err = t.column("q").unwrap().f64s(Domain::Finite).unwrap_err();
        assert_eq!(err.count, 1);
        assert!(err.examples[0].starts_with("row 1"));
    }

    #[test]
    fn int64_account_ids_are_zero_copy_and_negative_rejected() {
        let b = batch(vec![("a", Arc::new(Int64Array::from(vec![3, 1, 2])) as ArrayRef)]);
        let names = vec!["a".to_string()];
        let t = Table::new("positions", &names, std::slice::from_ref(&b));
        assert!(matches!(t.column("a").unwrap().account_ids().unwrap(), Cow::Borrowed(_)));
        let b = batch(vec![("a", Arc::new(Int64Array::from(vec![3, -1])) as ArrayRef)]);
        let t = Table::new("positions", &names, std::slice::from_ref(&b));
        assert!(t.column("a").unwrap().account_ids().is_err());
        let b = batch(vec![("a", Arc::new(UInt64Array::from(vec![u64::MAX])) as ArrayRef)]);
        let t = Table::new("positions", &names, std::slice::from_ref(&b));
        assert_eq!(t.column("a").unwrap().account_ids().unwrap()[0], u64::MAX);
    }

    #[test]
    fn keys_map_through_plain_and_dictionary_strings() {
        let index = KeyIndex::build(&[Key::Str("A".into()), Key::Str("B".into())], "instruments", "instrument").unwrap();
        let names = vec!["k".to_string()];
        let plain = batch(vec![("k", Arc::new(StringArray::from(vec!["B", "A", "B"])) as ArrayRef)]);
        let t = Table::new("positions", &names, std::slice::from_ref(&plain));
        assert_eq!(t.column("k").unwrap().map_keys(&index, "instrument").unwrap(), vec![1, 0, 1]);
        let dict: DictionaryArray<Int32Type> = vec!["B", "B", "A"].into_iter().collect();
        let d = batch(vec![("k", Arc::new(dict) as ArrayRef)]);
        let t = Table::new("positions", &names, std::slice::from_ref(&d));
        assert_eq!(t.column("k").unwrap().map_keys(&index, "instrument").unwrap(), vec![1, 1, 0]);
        let bad = batch(vec![("k", Arc::new(StringArray::from(vec!["A", "Z"])) as ArrayRef)]);
        let t = Table::new("positions", &names, std::slice::from_ref(&bad));
        let err = t.column("k").unwrap().map_keys(&index, "instrument").unwrap_err();
        assert_eq!(err.problem, "unknown instrument");
        assert_eq!(err.examples, vec!["'Z' (row 1)".to_string()]);
    }

    #[test]
    fn dictionary_codes_are_borrowed_only_when_every_used_key_is_known() {
        let index = KeyIndex::build(&[Key::Str("A".into()), Key::Str("B".into())], "instruments", "instrument").unwrap();
        let names = vec!["k".to_string()];
        let read = |keys: Vec<i32>| {
            let values: ArrayRef = Arc::new(StringArray::from(vec!["B", "Z", "A"]));
            let dict = DictionaryArray::<Int32Type>::try_new(keys.into(), values).unwrap();
            let b = batch(vec![("k", Arc::new(dict) as ArrayRef)]);
            let t = Table::new("positions", &names, std::slice::from_ref(&b));
            let column = t.column("k").unwrap();
            column.dictionary_codes(&index).unwrap().map(|(codes, ids)| (codes.into_owned(), ids))
        };
        // 'Z' is in the dictionary but no row uses it: fine, and the codes are the indices
        assert_eq!(read(vec![2, 0, 0]), Some((vec![2, 0, 0], vec![1, MISSING, 0])));
        // a row uses 'Z': not read in place, so map_keys reports the row
        assert_eq!(read(vec![2, 1]), None);
    }

    #[test]
    fn uint64_keys_beyond_int64_are_rejected_not_wrapped() {
        let names = vec!["k".to_string()];
        let b = batch(vec![("k", Arc::new(UInt64Array::from(vec![1, u64::MAX])) as ArrayRef)]);
        let t = Table::new("instruments", &names, std::slice::from_ref(&b));
        let err = t.column("k").unwrap().keys().unwrap_err();
        assert_eq!(err.examples, vec![format!("row 1 = {}", u64::MAX)]);
        // mapped against an integer index, such a key is unknown (not -1 or any other key)
        let index = KeyIndex::build(&[Key::Int(-1), Key::Int(1)], "instruments", "instrument").unwrap();
        let t = Table::new("positions", &names, std::slice::from_ref(&b));
        let err = t.column("k").unwrap().map_keys(&index, "instrument").unwrap_err();
        assert_eq!(err.examples, vec![format!("{} (row 1)", u64::MAX)]);
    }

    #[test]
    fn null_typed_columns_read_as_all_null() {
        let names = vec!["k".to_string()];
        let b = batch(vec![("k", Arc::new(NullArray::new(2)) as ArrayRef)]);
        let t = Table::new("instruments", &names, std::slice::from_ref(&b));
        let c = t.column("k").unwrap();
        assert_eq!(c.strings_nullable().unwrap(), vec![None, None]);
        assert_eq!(c.f64s_nullable(Domain::Positive).unwrap(), vec![None, None]);
        assert_eq!(c.timestamps_ns().unwrap(), vec![None, None]);
        assert_eq!(c.f64s(Domain::Finite).unwrap_err().problem, "null values are not allowed");
    }

    #[test]
    fn all_null_dictionary_with_empty_values_does_not_panic() {
        let names = vec!["k".to_string()];
        let keys = arrow_array::Int32Array::from(vec![None, None]);
        let dict = DictionaryArray::<Int32Type>::try_new(keys, Arc::new(StringArray::from(Vec::<&str>::new()))).unwrap();
        let b = batch(vec![("k", Arc::new(dict) as ArrayRef)]);
        let t = Table::new("assets", &names, std::slice::from_ref(&b));
        assert_eq!(t.column("k").unwrap().strings_nullable().unwrap(), vec![None, None]);
    }

    #[test]
    fn dictionary_encoded_integer_keys() {
        let names = vec!["k".to_string()];
        let keys = arrow_array::Int8Array::from(vec![1, 0, 1]);
        let dict = DictionaryArray::<Int8Type>::try_new(keys, Arc::new(Int64Array::from(vec![7, 9]))).unwrap();
        let b = batch(vec![("k", Arc::new(dict) as ArrayRef)]);
        let t = Table::new("instruments", &names, std::slice::from_ref(&b));
        assert_eq!(t.column("k").unwrap().keys().unwrap(), vec![Key::Int(9), Key::Int(7), Key::Int(9)]);
        let index = KeyIndex::build(&[Key::Int(7), Key::Int(9)], "instruments", "instrument").unwrap();
        assert_eq!(t.column("k").unwrap().map_keys(&index, "instrument").unwrap(), vec![1, 0, 1]);
    }

    #[test]
    fn non_key_types_are_a_type_error() {
        let names = vec!["k".to_string()];
        let b = batch(vec![("k", Arc::new(Float64Array::from(vec![1.5])) as ArrayRef)]);
        let t = Table::new("instruments", &names, std::slice::from_ref(&b));
        let err = t.column("k").unwrap().keys().unwrap_err();
        assert!(err.problem.starts_with("wrong type: expected utf8 or an integer type, got Float64"), "{}", err.problem);
    }

    #[test]
    fn duplicate_column_names_rejected() {
        let names = vec!["q".to_string(), "q".to_string()];
        let b = RecordBatch::try_new(
            Arc::new(arrow_schema::Schema::new(vec![
                arrow_schema::Field::new("q", DataType::Float64, false),
                arrow_schema::Field::new("q", DataType::Float64, false),
            ])),
            vec![Arc::new(Float64Array::from(vec![1.0])) as ArrayRef, Arc::new(Float64Array::from(vec![2.0])) as ArrayRef],
        )
        .unwrap();
        let t = Table::new("positions", &names, std::slice::from_ref(&b));
        assert_eq!(t.check_unique_column_names().unwrap_err().problem, "column appears more than once");
    }

    #[test]
    fn duplicate_keys_rejected() {
        let err = KeyIndex::build(&[Key::Str("A".into()), Key::Str("A".into())], "assets", "asset").unwrap_err();
        assert_eq!(err.problem, "duplicate key");
    }
}
