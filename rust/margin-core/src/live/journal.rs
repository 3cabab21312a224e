//! Durability: an append-only journal of the applied batches, atomic snapshots, and recovery.
//!
//! A journal directory holds (besides the book, written by the Python layer):
//! - `snapshot-<seq>.me`: the whole state after batch `seq`, written to `snapshot.tmp`, synced,
//!   renamed, and the directory synced;
//! - `journal-<first seq>.log`: the batches after the snapshot, one record each, appended and
//!   synced (`fdatasync`) before the call that applied the batch returns.
//!
//! Every record and every snapshot section is a frame: `"MEJ1"`, the payload's length (u32 LE),
//! its CRC-32C (u32 LE), the payload. A journal payload is the batch's sequence number (u64 LE),
//! its kind (u8), the number of tables (u8), and each table as a length (u32 LE) and an Arrow IPC
//! stream of one record batch. A crash can leave only the last record partly written (each append
//! is synced before the next begins): on open, a last frame that is cut short or fails its
//! checksum is dropped and the file truncated to the last whole record; a bad frame followed by
//! good data is corruption and refuses to open. Recovery: the newest snapshot, then every record
//! after it, in order, each sequence number the next.

use std::fs::{self, File, OpenOptions};
use std::io::{Cursor, Write};
use std::os::fd::{FromRawFd, IntoRawFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, UInt32Type, UInt64Type};
use arrow_array::{Array, ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray, UInt32Array, UInt64Array};
use arrow_ipc::reader::StreamReader;
use arrow_ipc::writer::StreamWriter;

use crate::book::Book;
use crate::engine::Model;
use crate::table::Key;

use super::events::{Batch, Fill, MarketUpdate, Order, Transfer};
use super::state::{Account, PositionRow, RestingOrder};
use super::{Config, LiveBook, LiveError, MarketState};

const MAGIC: &[u8; 4] = b"MEJ1";
const HEADER: usize = 12;
const FORMAT: u32 = 1;

// --- CRC-32C (Castagnoli), table driven ---

const fn crc_table() -> [u32; 256] {
    let mut table = [0u32; 256];
    let mut i = 0;
    while i < 256 {
        let mut c = i as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 { 0x82F6_3B78 ^ (c >> 1) } else { c >> 1 };
            k += 1;
        }
        table[i] = c;
        i += 1;
    }
    table
}

static CRC_TABLE: [u32; 256] = crc_table();

pub fn crc32c(bytes: &[u8]) -> u32 {
    !bytes.iter().fold(!0u32, |c, b| CRC_TABLE[((c ^ *b as u32) & 0xFF) as usize] ^ (c >> 8))
}

// --- fault injection for the crash tests ---

/// A pause at a named point of the durable path: notify `fd` with `"P <name>\n"`, then sleep,
/// so that a test can kill the process while it is there. Off unless a test sets it.
struct FailPoint {
    name: String,
    delay_us: u64,
    fd: i32,
}

static FAILPOINT: Mutex<Option<FailPoint>> = Mutex::new(None);

/// Test hook: pause at the point `name` (`journal_write`: a record half written; `journal_sync`:
/// written, before the sync; `snapshot_write`: the temporary file half written;
/// `snapshot_rename`: synced, before the rename; `snapshot_dirsync`: renamed, before the directory
/// sync and the journal's rotation). `None` clears it.
#[doc(hidden)]
pub fn set_failpoint(point: Option<(String, u64, i32)>) {
    *FAILPOINT.lock().unwrap_or_else(|e| e.into_inner()) = point.map(|(name, delay_us, fd)| FailPoint { name, delay_us, fd });
}

fn failpoint(name: &str) {
    let guard = FAILPOINT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = guard.as_ref().filter(|p| p.name == name) {
        // SAFETY: the fd is the test's pipe, open for the life of the process; it is handed back
        // with into_raw_fd, never closed here
        let mut f = unsafe { File::from_raw_fd(p.fd) };
        let _ = f.write_all(format!("P {name}\n").as_bytes());
        let _ = f.flush();
        let _ = f.into_raw_fd();
        std::thread::sleep(std::time::Duration::from_micros(p.delay_us));
    }
}

// --- frames ---

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The next frame at `at`: `Ok(Some((payload, end)))`, `Ok(None)` at the end of the data, or
/// `Err(at)` for a frame cut short or failing its checksum.
fn read_frame(data: &[u8], at: usize) -> Result<Option<(&[u8], usize)>, usize> {
    if at == data.len() {
        return Ok(None);
    }
    if data.len() - at < HEADER || &data[at..at + 4] != MAGIC {
        return Err(at);
    }
    let len = u32::from_le_bytes(data[at + 4..at + 8].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(data[at + 8..at + 12].try_into().expect("4 bytes"));
    let end = at + HEADER + len;
    if end > data.len() || crc32c(&data[at + HEADER..end]) != crc {
        return Err(at);
    }
    Ok(Some((&data[at + HEADER..end], end)))
}

fn ipc(batch: &RecordBatch) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    let mut w = StreamWriter::try_new(&mut out, &batch.schema()).map_err(|e| e.to_string())?;
    w.write(batch).map_err(|e| e.to_string())?;
    w.finish().map_err(|e| e.to_string())?;
    drop(w);
    Ok(out)
}

fn from_ipc(bytes: &[u8]) -> Result<RecordBatch, String> {
    let mut reader = StreamReader::try_new(Cursor::new(bytes), None).map_err(|e| e.to_string())?;
    match reader.next() {
        Some(b) => b.map_err(|e| e.to_string()),
        None => Err("an IPC stream without a record batch".into()),
    }
}

fn batch(columns: Vec<(&str, ArrayRef)>) -> RecordBatch {
    RecordBatch::try_from_iter(columns).expect("columns of equal length")
}

/// Payload of tables: count (u8), then each as length (u32 LE) and IPC bytes.
fn tables_payload(head: &[u8], tables: &[RecordBatch]) -> Result<Vec<u8>, String> {
    let mut out = head.to_vec();
    out.push(tables.len() as u8);
    for t in tables {
        let bytes = ipc(t)?;
        out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
        out.extend_from_slice(&bytes);
    }
    Ok(out)
}

fn read_tables(data: &[u8]) -> Result<Vec<RecordBatch>, String> {
    let bad = || "a malformed table section".to_string();
    let n = *data.first().ok_or_else(bad)? as usize;
    let mut at = 1;
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let len = u32::from_le_bytes(data.get(at..at + 4).ok_or_else(bad)?.try_into().expect("4 bytes")) as usize;
        at += 4;
        out.push(from_ipc(data.get(at..at + len).ok_or_else(bad)?)?);
        at += len;
    }
    Ok(out)
}

fn col<'a>(b: &'a RecordBatch, name: &str) -> Result<&'a ArrayRef, String> {
    b.column_by_name(name).ok_or_else(|| format!("a section without column {name}"))
}

fn u64s(b: &RecordBatch, name: &str) -> Result<Vec<u64>, String> {
    Ok(col(b, name)?.as_primitive_opt::<UInt64Type>().ok_or("wrong column type")?.values().to_vec())
}

fn u32s(b: &RecordBatch, name: &str) -> Result<Vec<u32>, String> {
    Ok(col(b, name)?.as_primitive_opt::<UInt32Type>().ok_or("wrong column type")?.values().to_vec())
}

fn f64s(b: &RecordBatch, name: &str) -> Result<Vec<f64>, String> {
    Ok(col(b, name)?.as_primitive_opt::<Float64Type>().ok_or("wrong column type")?.values().to_vec())
}

fn i64s(b: &RecordBatch, name: &str) -> Result<Vec<i64>, String> {
    Ok(col(b, name)?.as_primitive_opt::<Int64Type>().ok_or("wrong column type")?.values().to_vec())
}

// collected first: Arrow's from_iter_values needs an iterator of known length
fn u64_col(v: impl Iterator<Item = u64>) -> ArrayRef {
    Arc::new(UInt64Array::from(v.collect::<Vec<u64>>()))
}
fn u32_col(v: impl Iterator<Item = u32>) -> ArrayRef {
    Arc::new(UInt32Array::from(v.collect::<Vec<u32>>()))
}
fn f64_col(v: impl Iterator<Item = f64>) -> ArrayRef {
    Arc::new(Float64Array::from(v.collect::<Vec<f64>>()))
}

// --- batches as journal records ---

/// The record of batch `seq`.
pub fn encode_batch(seq: u64, b: &Batch) -> Result<Vec<u8>, String> {
    let (kind, tables): (u8, Vec<RecordBatch>) = match b {
        Batch::Fills(f) => (
            1,
            vec![batch(vec![
                ("account_id", u64_col(f.iter().map(|x| x.account_id))),
                ("instrument", u32_col(f.iter().map(|x| x.instrument))),
                ("quantity", f64_col(f.iter().map(|x| x.quantity))),
                ("price", f64_col(f.iter().map(|x| x.price))),
                ("fee", f64_col(f.iter().map(|x| x.fee))),
            ])],
        ),
        Batch::Transfers(t) => (
            2,
            vec![batch(vec![
                ("account_id", u64_col(t.iter().map(|x| x.account_id))),
                ("asset", u32_col(t.iter().map(|x| x.asset))),
                ("amount", f64_col(t.iter().map(|x| x.amount))),
            ])],
        ),
        Batch::PlaceOrders(o) => (
            3,
            vec![batch(vec![
                ("order_id", u64_col(o.iter().map(|x| x.order_id))),
                ("account_id", u64_col(o.iter().map(|x| x.account_id))),
                ("instrument", u32_col(o.iter().map(|x| x.instrument))),
                ("quantity", f64_col(o.iter().map(|x| x.quantity))),
                ("price", f64_col(o.iter().map(|x| x.price))),
            ])],
        ),
        Batch::CancelOrders(ids) => (4, vec![batch(vec![("order_id", u64_col(ids.iter().copied()))])]),
        Batch::Market(m) => (
            5,
            vec![
                batch(vec![
                    ("underlying", Arc::new(StringArray::from(m.index_prices.iter().map(|x| x.0.as_str()).collect::<Vec<_>>())) as ArrayRef),
                    ("index_price", f64_col(m.index_prices.iter().map(|x| x.1))),
                ]),
                batch(vec![
                    ("key_int", Arc::new(Int64Array::from(m.marks.iter().map(|x| if let Key::Int(i) = x.0 { Some(i) } else { None }).collect::<Vec<_>>())) as ArrayRef),
                    ("key_str", Arc::new(StringArray::from(m.marks.iter().map(|x| if let Key::Str(s) = &x.0 { Some(s.as_str()) } else { None }).collect::<Vec<_>>())) as ArrayRef),
                    ("mark_price", f64_col(m.marks.iter().map(|x| x.1))),
                    ("implied_vol", f64_col(m.marks.iter().map(|x| x.2))),
                ]),
                batch(vec![("valuation_ns", Arc::new(Int64Array::from_iter_values(m.valuation_ns)) as ArrayRef)]),
            ],
        ),
    };
    let mut head = seq.to_le_bytes().to_vec();
    head.push(kind);
    tables_payload(&head, &tables)
}

/// `(seq, batch)` of a record.
pub fn decode_batch(payload: &[u8]) -> Result<(u64, Batch), String> {
    if payload.len() < 9 {
        return Err("a record too short".into());
    }
    let seq = u64::from_le_bytes(payload[..8].try_into().expect("8 bytes"));
    let t = read_tables(&payload[9..])?;
    let one = |k: usize| t.get(k).ok_or_else(|| "a record without its table".to_string());
    let b = match payload[8] {
        1 => {
            let b = one(0)?;
            let (a, i, q, p, f) = (u64s(b, "account_id")?, u32s(b, "instrument")?, f64s(b, "quantity")?, f64s(b, "price")?, f64s(b, "fee")?);
            Batch::Fills((0..a.len()).map(|r| Fill { account_id: a[r], instrument: i[r], quantity: q[r], price: p[r], fee: f[r] }).collect())
        }
        2 => {
            let b = one(0)?;
            let (a, s, x) = (u64s(b, "account_id")?, u32s(b, "asset")?, f64s(b, "amount")?);
            Batch::Transfers((0..a.len()).map(|r| Transfer { account_id: a[r], asset: s[r], amount: x[r] }).collect())
        }
        3 => {
            let b = one(0)?;
            let (o, a, i, q, p) = (u64s(b, "order_id")?, u64s(b, "account_id")?, u32s(b, "instrument")?, f64s(b, "quantity")?, f64s(b, "price")?);
            Batch::PlaceOrders(
                (0..o.len()).map(|r| Order { order_id: o[r], account_id: a[r], instrument: i[r], quantity: q[r], price: p[r] }).collect(),
            )
        }
        4 => Batch::CancelOrders(u64s(one(0)?, "order_id")?),
        5 => {
            let (u, m, v) = (one(0)?, one(1)?, one(2)?);
            let names = col(u, "underlying")?.as_string_opt::<i32>().ok_or("wrong column type")?;
            let price = f64s(u, "index_price")?;
            let ints = col(m, "key_int")?.as_primitive_opt::<Int64Type>().ok_or("wrong column type")?;
            let strs = col(m, "key_str")?.as_string_opt::<i32>().ok_or("wrong column type")?;
            let (mark, vol) = (f64s(m, "mark_price")?, f64s(m, "implied_vol")?);
            let key = |r: usize| if ints.is_valid(r) { Key::Int(ints.value(r)) } else { Key::Str(strs.value(r).to_string()) };
            Batch::Market(MarketUpdate {
                index_prices: (0..price.len()).map(|r| (names.value(r).to_string(), price[r])).collect(),
                marks: (0..mark.len()).map(|r| (key(r), mark[r], vol[r])).collect(),
                valuation_ns: i64s(v, "valuation_ns")?.first().copied(),
            })
        }
        k => return Err(format!("a record of unknown kind {k}")),
    };
    Ok((seq, b))
}

// --- files ---

fn io<'a>(what: &str, path: &'a Path) -> impl Fn(std::io::Error) -> String + 'a {
    let what = what.to_string();
    move |e| format!("{what} {}: {e}", path.display())
}

fn sync_dir(dir: &Path) -> Result<(), String> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io("cannot sync the directory", dir))
}

fn numbered(dir: &Path, prefix: &str, suffix: &str) -> Result<Vec<(u64, PathBuf)>, String> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io("cannot read", dir))? {
        let entry = entry.map_err(io("cannot read", dir))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(n) = name.strip_prefix(prefix).and_then(|r| r.strip_suffix(suffix)).and_then(|n| n.parse::<u64>().ok()) {
            out.push((n, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

fn segment_path(dir: &Path, first: u64) -> PathBuf {
    dir.join(format!("journal-{first:020}.log"))
}

fn snapshot_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("snapshot-{seq:020}.me"))
}

/// A hash of what the journal's ids refer to: the book's instruments, assets and underlyings.
fn fingerprint(book: &Book) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |s: &str| {
        for b in s.bytes().chain([0xFF]) {
            h ^= b as u64;
            h = h.wrapping_mul(0x100_0000_01b3);
        }
    };
    for l in book.instruments.labels.iter().chain(&book.assets.labels).chain(&book.underlyings.names) {
        eat(l);
    }
    h
}

/// The open journal: the directory and the segment records are appended to.
pub struct Journal {
    dir: PathBuf,
    file: File,
    /// Sequence number of the segment's first record.
    first: u64,
    len: u64,
    /// An append failed and its bytes could not be removed: refuse further appends.
    broken: bool,
}

impl Journal {
    fn open_segment(dir: &Path, first: u64) -> Result<Journal, String> {
        let path = segment_path(dir, first);
        let file = OpenOptions::new().create(true).append(true).open(&path).map_err(io("cannot open", &path))?;
        file.sync_all().map_err(io("cannot sync", &path))?;
        sync_dir(dir)?;
        let len = file.metadata().map_err(io("cannot stat", &path))?.len();
        Ok(Journal { dir: dir.to_path_buf(), file, first, len, broken: false })
    }

    /// Appends the record of batch `seq` and syncs it.
    pub fn append(&mut self, seq: u64, b: &Batch) -> Result<(), String> {
        if self.broken {
            return Err("an earlier append failed; reopen the book (LiveBook.open) to recover".into());
        }
        let bytes = frame(&encode_batch(seq, b)?);
        let half = bytes.len() / 2;
        let result = (|| -> std::io::Result<()> {
            self.file.write_all(&bytes[..half])?;
            failpoint("journal_write");
            self.file.write_all(&bytes[half..])?;
            failpoint("journal_sync");
            self.file.sync_data()
        })();
        match result {
            Ok(()) => {
                self.len += bytes.len() as u64;
                Ok(())
            }
            Err(e) => {
                // take the partial record back out, so that the batch is not applied on reopen
                if self.file.set_len(self.len).and_then(|_| self.file.sync_data()).is_err() {
                    self.broken = true;
                }
                Err(format!("cannot append to {}: {e}", segment_path(&self.dir, self.first).display()))
            }
        }
    }
}

// --- snapshots ---

fn model_name(m: Model) -> &'static str {
    match m {
        Model::Standard => "standard",
        Model::Portfolio => "portfolio",
    }
}

/// The state as snapshot sections: meta, positions, balances, orders, index prices, marks, then
/// the batches of the expiry feeds as given.
fn snapshot_tables(live: &mut LiveBook) -> Vec<RecordBatch> {
    let order = live.state.in_id_order().to_vec();
    let accounts: Vec<&Account> = order.iter().map(|i| &live.state.accounts[*i as usize]).collect();
    let positions = || accounts.iter().flat_map(|a| a.positions.iter().map(move |r| (a.id, r)));
    let balances = || accounts.iter().flat_map(|a| a.balances.iter().map(move |b| (a.id, b)));
    let orders = || accounts.iter().flat_map(|a| a.orders.iter().map(move |o| (a.id, o)));
    let c = &live.config;
    let mut out = vec![
        batch(vec![
            ("format", u32_col([FORMAT].into_iter())),
            ("seq", u64_col([live.seq].into_iter())),
            ("model", Arc::new(StringArray::from_iter_values([model_name(c.model)])) as ArrayRef),
            ("allow_negative_balances", Arc::new(BooleanArray::from(vec![c.allow_negative_balances])) as ArrayRef),
            ("premium_asset", Arc::new(Int64Array::from_iter_values([c.premium_asset.map_or(-1, |a| a as i64)])) as ArrayRef),
            ("valuation_ns", Arc::new(Int64Array::from_iter_values([live.market_state.valuation_ns()])) as ArrayRef),
            ("expiry_feed_batches", u32_col([live.market_state.feeds.as_ref().map_or(0, |f| f.1.len() as u32)].into_iter())),
            ("expiry_feed_columns", Arc::new(StringArray::from(vec![live.market_state.feeds.as_ref().map(|f| f.0.join("\u{1f}"))])) as ArrayRef),
            ("fingerprint", u64_col([fingerprint(&live.book)].into_iter())),
        ]),
        batch(vec![
            ("account_id", u64_col(positions().map(|(id, _)| id))),
            ("instrument", u32_col(positions().map(|(_, r)| r.instrument))),
            ("quantity", f64_col(positions().map(|(_, r)| r.quantity))),
            ("entry_price", f64_col(positions().map(|(_, r)| r.entry_price))),
        ]),
        batch(vec![
            ("account_id", u64_col(balances().map(|(id, _)| id))),
            ("asset", u32_col(balances().map(|(_, b)| b.0))),
            ("amount", f64_col(balances().map(|(_, b)| b.1))),
        ]),
        batch(vec![
            ("account_id", u64_col(orders().map(|(id, _)| id))),
            ("order_id", u64_col(orders().map(|(_, o)| o.order_id))),
            ("instrument", u32_col(orders().map(|(_, o)| o.instrument))),
            ("quantity", f64_col(orders().map(|(_, o)| o.quantity))),
            ("price", f64_col(orders().map(|(_, o)| o.price))),
        ]),
    ];
    let (index, marks) = live.market_state.tables(&live.book);
    out.push(index);
    out.push(marks);
    if let Some((_, feeds)) = &live.market_state.feeds {
        out.extend(feeds.iter().cloned());
    }
    out
}

/// Writes the snapshot of the state after batch `live.seq`, atomically.
fn write_snapshot(dir: &Path, live: &mut LiveBook) -> Result<(), String> {
    let bytes = frame(&tables_payload(&[], &snapshot_tables(live))?);
    let tmp = dir.join("snapshot.tmp");
    let mut f = File::create(&tmp).map_err(io("cannot create", &tmp))?;
    let half = bytes.len() / 2;
    f.write_all(&bytes[..half]).map_err(io("cannot write", &tmp))?;
    failpoint("snapshot_write");
    f.write_all(&bytes[half..]).map_err(io("cannot write", &tmp))?;
    f.sync_all().map_err(io("cannot sync", &tmp))?;
    drop(f);
    failpoint("snapshot_rename");
    let path = snapshot_path(dir, live.seq);
    fs::rename(&tmp, &path).map_err(io("cannot rename to", &path))?;
    failpoint("snapshot_dirsync");
    sync_dir(dir)
}

/// The accounts, market data and config of a snapshot file.
fn read_snapshot(path: &Path, book: &Book) -> Result<(u64, Config, MarketState, Vec<Account>), String> {
    let data = fs::read(path).map_err(io("cannot read", path))?;
    let corrupt = |why: &str| format!("{} is not a valid snapshot ({why})", path.display());
    let (payload, end) = match read_frame(&data, 0) {
        Ok(Some(f)) => f,
        _ => return Err(corrupt("bad checksum or cut short")),
    };
    if end != data.len() {
        return Err(corrupt("trailing bytes"));
    }
    let t = read_tables(payload).map_err(|e| corrupt(&e))?;
    if t.len() < 6 {
        return Err(corrupt("wrong number of sections"));
    }
    let meta = &t[0];
    if u32s(meta, "expiry_feed_batches")?.first().map(|n| *n as usize + 6) != Some(t.len()) {
        return Err(corrupt("wrong number of sections"));
    }
    if u32s(meta, "format")?.first() != Some(&FORMAT) {
        return Err(corrupt("unknown format version"));
    }
    if u64s(meta, "fingerprint")?.first() != Some(&fingerprint(book)) {
        return Err(format!("{} was written for another book (instruments, assets or underlyings differ)", path.display()));
    }
    let seq = u64s(meta, "seq")?[0];
    let model = match col(meta, "model")?.as_string_opt::<i32>().map(|s| s.value(0)) {
        Some("standard") => Model::Standard,
        Some("portfolio") => Model::Portfolio,
        _ => return Err(corrupt("unknown model")),
    };
    let allow_negative_balances = col(meta, "allow_negative_balances")?.as_boolean_opt().ok_or("wrong column type")?.value(0);
    let premium = i64s(meta, "premium_asset")?[0];
    let config = Config { model, allow_negative_balances, premium_asset: (premium >= 0).then_some(premium as u32) };
    let feed_columns = col(meta, "expiry_feed_columns")?.as_string_opt::<i32>().ok_or("wrong column type")?;
    let feeds = feed_columns.is_valid(0).then(|| (feed_columns.value(0).split('\u{1f}').map(String::from).collect::<Vec<_>>(), t[6..].to_vec()));
    let market = MarketState::from_batches(&t[4], &t[5], i64s(meta, "valuation_ns")?[0], feeds).map_err(|e| corrupt(&e.to_string()))?;
    // accounts in id order; each account's rows in state order
    let mut accounts: Vec<Account> = Vec::new();
    let mut slot: rustc_hash::FxHashMap<u64, usize> = rustc_hash::FxHashMap::default();
    let mut at = |accounts: &mut Vec<Account>, id: u64| -> usize {
        *slot.entry(id).or_insert_with(|| {
            accounts.push(Account::new(id));
            accounts.len() - 1
        })
    };
    let n_ins = book.instruments.len() as u32;
    let n_assets = book.assets.labels.len() as u32;
    let (ids, ins, q, e) = (u64s(&t[1], "account_id")?, u32s(&t[1], "instrument")?, f64s(&t[1], "quantity")?, f64s(&t[1], "entry_price")?);
    for r in 0..ids.len() {
        if ins[r] >= n_ins {
            return Err(corrupt("instrument id out of range"));
        }
        let i = at(&mut accounts, ids[r]);
        accounts[i].positions.push(PositionRow { instrument: ins[r], quantity: q[r], entry_price: e[r] });
    }
    let (ids, asset, amount) = (u64s(&t[2], "account_id")?, u32s(&t[2], "asset")?, f64s(&t[2], "amount")?);
    for r in 0..ids.len() {
        if asset[r] >= n_assets {
            return Err(corrupt("asset id out of range"));
        }
        let i = at(&mut accounts, ids[r]);
        accounts[i].balances.push((asset[r], amount[r]));
    }
    let (ids, oid, ins, q, p) = (u64s(&t[3], "account_id")?, u64s(&t[3], "order_id")?, u32s(&t[3], "instrument")?, f64s(&t[3], "quantity")?, f64s(&t[3], "price")?);
    for r in 0..ids.len() {
        if ins[r] >= n_ins {
            return Err(corrupt("instrument id out of range"));
        }
        let i = at(&mut accounts, ids[r]);
        accounts[i].orders.push(RestingOrder { order_id: oid[r], instrument: ins[r], quantity: q[r], price: p[r] });
    }
    accounts.sort_unstable_by_key(|a| a.id);
    Ok((seq, config, market, accounts))
}

impl LiveBook {
    /// Makes `dir` (existing, without a live book in it) this book's journal directory: writes
    /// the snapshot of the current state and opens the journal after it.
    pub fn create_journal(&mut self, dir: &Path) -> Result<(), LiveError> {
        if !numbered(dir, "snapshot-", ".me").map_err(LiveError::Io)?.is_empty() || !numbered(dir, "journal-", ".log").map_err(LiveError::Io)?.is_empty() {
            return Err(LiveError::Io(format!("{} already holds a live book: open it with LiveBook.open", dir.display())));
        }
        write_snapshot(dir, self).map_err(LiveError::Io)?;
        self.journal = Some(Journal::open_segment(dir, self.seq + 1).map_err(LiveError::Io)?);
        Ok(())
    }

    /// Writes the snapshot of the current state atomically, then starts a new journal segment
    /// after it and removes the older snapshots and segments (their batches are in the snapshot).
    pub fn snapshot(&mut self) -> Result<(), LiveError> {
        let Some(dir) = self.journal.as_ref().map(|j| j.dir.clone()) else {
            return Err(LiveError::Io("this live book has no journal (pass journal=DIR)".into()));
        };
        write_snapshot(&dir, self).map_err(LiveError::Io)?;
        let first = self.seq + 1;
        if self.journal.as_ref().is_some_and(|j| j.first != first) {
            self.journal = Some(Journal::open_segment(&dir, first).map_err(LiveError::Io)?);
        }
        let io = |e: String| LiveError::Io(e);
        for (n, path) in numbered(&dir, "journal-", ".log").map_err(io)? {
            if n != first {
                fs::remove_file(&path).map_err(|e| LiveError::Io(format!("cannot remove {}: {e}", path.display())))?;
            }
        }
        for (n, path) in numbered(&dir, "snapshot-", ".me").map_err(io)? {
            if n != self.seq {
                fs::remove_file(&path).map_err(|e| LiveError::Io(format!("cannot remove {}: {e}", path.display())))?;
            }
        }
        sync_dir(&dir).map_err(LiveError::Io)
    }

    /// The book in `dir`: the newest snapshot, then the journal's batches after it (a torn last
    /// record dropped), with the journal open for appending.
    pub fn open(dir: &Path, book: Arc<Book>) -> Result<LiveBook, LiveError> {
        let e = LiveError::Io;
        let snapshots = numbered(dir, "snapshot-", ".me").map_err(e)?;
        let Some((_, path)) = snapshots.last() else {
            return Err(LiveError::Io(format!("{} holds no live book snapshot", dir.display())));
        };
        let (seq, config, market, accounts) = read_snapshot(path, &book).map_err(e)?;
        let _ = fs::remove_file(dir.join("snapshot.tmp"));
        // the replay changes accounts only; everything is margined once at the end
        let mut live = LiveBook::from_accounts(book, market, accounts, config, false)?;
        live.seq = seq;
        let segments = numbered(dir, "journal-", ".log").map_err(e)?;
        let last = segments.len().saturating_sub(1);
        for (k, (_, path)) in segments.iter().enumerate() {
            let bytes = fs::read(path).map_err(io("cannot read", path)).map_err(e)?;
            let mut at = 0;
            loop {
                match read_frame(&bytes, at) {
                    Ok(None) => break,
                    Ok(Some((payload, end))) => {
                        let (n, batch) = decode_batch(payload).map_err(|m| LiveError::Io(format!("{}: {m}", path.display())))?;
                        if n > live.seq {
                            if n != live.seq + 1 {
                                return Err(LiveError::Io(format!("{}: batch {n} follows batch {} (a gap in the journal)", path.display(), live.seq)));
                            }
                            live.apply_unjournaled(batch).map_err(|err| LiveError::Io(format!("{}: batch {n} does not apply: {err}", path.display())))?;
                        }
                        at = end;
                    }
                    Err(torn) => {
                        // a torn tail: only the last record of the last segment, nothing after it
                        // that reads as a record
                        let later = (torn + 1..bytes.len()).any(|p| read_frame(&bytes, p).is_ok_and(|f| f.is_some()));
                        if k != last || later {
                            return Err(LiveError::Io(format!("{}: corrupt record at byte {torn}", path.display())));
                        }
                        let f = OpenOptions::new().write(true).open(path).map_err(io("cannot open", path)).map_err(e)?;
                        f.set_len(torn as u64).and_then(|_| f.sync_all()).map_err(io("cannot truncate", path)).map_err(e)?;
                        break;
                    }
                }
            }
        }
        live.margin_all()?;
        let first = segments.last().map_or(live.seq + 1, |(n, _)| *n);
        live.journal = Some(Journal::open_segment(dir, first).map_err(e)?);
        Ok(live)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

    #[test]
    fn frames_detect_tears_and_flips() {
        let mut data = frame(b"hello");
        data.extend(frame(b"world!"));
        let (p, end) = read_frame(&data, 0).unwrap().unwrap();
        assert_eq!(p, b"hello");
        assert_eq!(read_frame(&data, end).unwrap().unwrap().0, b"world!");
        for cut in end + 1..data.len() {
            assert_eq!(read_frame(&data[..cut], end), Err(end));
        }
        let mut flipped = data.clone();
        flipped[end + HEADER + 2] ^= 1;
        assert_eq!(read_frame(&flipped, end), Err(end));
    }

    #[test]
    fn batches_round_trip_through_records() {
        let batches = vec![
            Batch::Fills(vec![Fill { account_id: 7, instrument: 2, quantity: -1.5, price: 100.0, fee: 0.25 }]),
            Batch::Transfers(vec![Transfer { account_id: u64::MAX, asset: 0, amount: -3.0 }]),
            Batch::PlaceOrders(vec![Order { order_id: 9, account_id: 7, instrument: 1, quantity: 2.0, price: 0.0 }]),
            Batch::CancelOrders(vec![9, 10]),
            Batch::Market(MarketUpdate { index_prices: vec![("BTC".into(), 5.0)], marks: vec![(Key::Int(-1), 2.0, f64::NAN)], valuation_ns: Some(-4) }),
            Batch::Market(MarketUpdate { index_prices: vec![], marks: vec![(Key::Str("X".into()), 2.0, 0.5)], valuation_ns: None }),
        ];
        for (seq, b) in batches.iter().enumerate() {
            let (n, back) = decode_batch(&encode_batch(seq as u64, b).unwrap()).unwrap();
            assert_eq!(n, seq as u64);
            match (b, &back) {
                (Batch::Market(x), Batch::Market(y)) => {
                    assert_eq!(x.index_prices, y.index_prices);
                    assert_eq!(x.valuation_ns, y.valuation_ns);
                    assert!(x.marks.iter().zip(&y.marks).all(|(a, b)| a.0 == b.0 && a.1 == b.1 && a.2.to_bits() == b.2.to_bits()));
                }
                _ => assert_eq!(b, &back),
            }
        }
    }
}
