//! A segments file: Parquet, or JSON Lines with the same fields, mirroring ClickHouse's
//! `document_embeddings` (see DESIGN.md, "Stores").
//!
//! | field       | Parquet type                                         | JSON Lines                        | if missing        |
//! |-------------|------------------------------------------------------|-----------------------------------|-------------------|
//! | team_id     | any integer                                          | integer, or integer as a string   | `--team`          |
//! | document_id | string                                               | string                            | row rejected      |
//! | content     | string                                               | string                            | row rejected      |
//! | metadata    | string (JSON text)                                   | JSON text, or a JSON object       | left to validation|
//! | timestamp   | Timestamp(s/ms/us/ns), Date64, or Int64 ms           | integer ms, RFC 3339, or          | = inserted_at     |
//! | inserted_at | same                                                 | `YYYY-MM-DD hh:mm:ss[.fff]` (UTC) | = timestamp       |
//! | embedding   | list, large_list or fixed_size_list of float32/64    | array of numbers                  | row rejected      |
//!
//! A Parquet file that lacks a required column, or has one of an unusable type, is an error at
//! `open`. A row that cannot be read (malformed JSON, a null or missing required field, a value
//! of the wrong type) becomes a `rejected` entry whose reason names the file and the line
//! (JSON Lines, 1-based) or row index (Parquet, 0-based); it is never dropped silently.
//!
//! Memory: a file may hold 200k x 3072 embeddings (2.4 GB), more than a page needs. A first pass
//! reads only the key columns (team_id, document_id, timestamp, inserted_at: Parquet column
//! projection; JSON Lines parsing that skips the other fields) into a small sorted index, cached
//! until the file's size or modification time changes. A page is chosen from the index, and
//! embeddings are then read only for its rows (Parquet: only the row groups that hold them, with
//! a row selection inside; JSON Lines: seeking to the recorded byte offsets of its lines).
//!
//! Rows whose key fields are broken but that still have a time get a position (their
//! document_id, or `<file name>:<line>` when it is missing), so they are reported once, in
//! order, by the page that covers them. Rows with no usable time at all cannot be placed after
//! any watermark: they are reported with every page read from the start of a team's stream
//! (`after` = None), which is where a backfill or a first run begins.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail};
use arrow_array::builder::{Float32Builder, ListBuilder};
use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date64Type, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type,
    TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use arrow_array::{
    Array, ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReaderBuilder, RowSelection};
use parquet::arrow::arrow_writer::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::Deserialize;
use serde_json::Value;

use super::SourcePage;
use crate::segment::{Quarantine, RawSegment, Watermark};

/// Rows decoded per Arrow batch when reading embeddings: 256 x 3072 f32 = 3 MB at a time.
const EMBEDDING_BATCH_ROWS: usize = 256;
/// Rows per batch in the key pass (keys are small).
const KEY_BATCH_ROWS: usize = 8192;
/// Target size of a written Parquet row group; small enough that a page reads few extra rows,
/// large enough for good compression.
const ROW_GROUP_BYTES: usize = 32 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Parquet,
    Jsonl,
}

impl Format {
    fn of(path: &Path) -> Result<Self> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("parquet") => Ok(Format::Parquet),
            Some("jsonl" | "ndjson") => Ok(Format::Jsonl),
            _ => bail!(
                "{}: unknown segments file type; use a .parquet, .jsonl or .ndjson file",
                path.display()
            ),
        }
    }
}

/// A Parquet or JSON Lines segments file; see the module docs.
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    format: Format,
    default_team: i64,
    index: Mutex<Option<Arc<KeyIndex>>>,
    deadline: Duration,
}

/// How long one read of a file may take before it is given up (`Source` enforces it): a
/// minute, plus a second for every 20 MB, at least 15x what parsing needs on a 2-core host.
/// The parquet crate can spin for many minutes on some damaged files (found by `tools/fuzz.sh`:
/// a corrupted page header makes it skip billions of levels); this turns that into an error.
fn read_deadline(file_bytes: u64) -> Duration {
    Duration::from_secs(60 + file_bytes / 20_000_000)
}

/// The rows of one team's sorted key list after `after` and before `until_ms`.
fn window<'a>(
    team_rows: &'a [KeyEntry],
    after: Option<&Watermark>,
    until_ms: Option<i64>,
) -> &'a [KeyEntry] {
    let start = match after {
        Some(w) => team_rows.partition_point(|e| !is_after(w, e)),
        None => 0,
    };
    let rest = &team_rows[start..];
    match until_ms {
        Some(u) => {
            let end =
                rest.partition_point(|e| e.pos.as_ref().is_some_and(|p| p.inserted_at_ms < u));
            &rest[..end]
        }
        None => rest,
    }
}

/// Where a row lives in the file.
#[derive(Clone, Copy, Debug)]
enum Loc {
    /// Parquet: 0-based row index over the whole file.
    Row(usize),
    /// JSON Lines: 1-based line number, byte offset and length of the line.
    Line {
        number: usize,
        offset: u64,
        len: usize,
    },
}

/// What the key pass learned about one row.
#[derive(Clone, Debug)]
struct KeyEntry {
    team: i64,
    /// `(inserted_at, document_id)`; `None` when the row has no usable time.
    pos: Option<Watermark>,
    timestamp_ms: i64,
    loc: Loc,
    /// Why the row is rejected already (its key fields are broken).
    error: Option<String>,
}

impl KeyEntry {
    fn document_id(&self, file_name: &str) -> String {
        match (&self.pos, self.loc) {
            (Some(p), _) => p.document_id.clone(),
            (None, Loc::Line { number, .. }) => format!("{file_name}:{number}"),
            (None, Loc::Row(i)) => format!("{file_name}:row{i}"),
        }
    }
}

/// The key pass over a whole file, for one version (size + mtime) of it.
#[derive(Debug)]
struct KeyIndex {
    stamp: (u64, Option<SystemTime>),
    /// Positioned rows, sorted by (team, position).
    placed: Vec<KeyEntry>,
    /// Rows with no usable time, in file order.
    unplaced: Vec<KeyEntry>,
}

impl FileSource {
    /// Opens a segments file, choosing the format by extension. For Parquet, checks now that
    /// the required columns exist with usable types, so a wrong file fails before any batch.
    pub fn open(path: impl AsRef<Path>, default_team: i64) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let format = Format::of(&path)?;
        let file = File::open(&path)
            .with_context(|| format!("opening segments file {}", path.display()))?;
        let size = file.metadata().map_or(0, |m| m.len());
        if format == Format::Parquet {
            parquet_guard(&path, || {
                let builder = ParquetRecordBatchReaderBuilder::try_new(file)
                    .with_context(|| format!("{}: not a readable Parquet file", path.display()))?;
                ParquetColumns::find(&path, builder.schema()).map(drop)
            })?;
        }
        Ok(Self {
            path,
            format,
            default_team,
            index: Mutex::new(None),
            deadline: read_deadline(size),
        })
    }

    /// Another deadline for each read (see [`read_deadline`]).
    pub fn with_deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Up to `limit` rows of `team` strictly after `after` (and inserted before `until_ms` when
    /// given), ordered by `(inserted_at_ms, document_id)`. Rows sharing the last row's exact
    /// position are included too (only exact duplicates), so paging can never skip one.
    pub fn read_after(
        &self,
        team: i64,
        after: Option<&Watermark>,
        until_ms: Option<i64>,
        limit: usize,
    ) -> Result<SourcePage> {
        let index = self.index()?;
        let rest = window(index.team(team), after, until_ms);
        let mut end = limit.min(rest.len());
        if end > 0 {
            while end < rest.len() && rest[end].pos == rest[end - 1].pos {
                end += 1;
            }
        }
        let chosen: Vec<&KeyEntry> = rest[..end].iter().collect();
        let mut page = self.load(&chosen)?;
        page.last = chosen.last().and_then(|e| e.pos.clone());
        if after.is_none() {
            let name = self.file_name();
            page.rejected.extend(
                index
                    .unplaced
                    .iter()
                    .filter(|e| e.team == team)
                    .map(|e| self.quarantine(e, &name, e.error.as_deref().unwrap_or(""))),
            );
        }
        Ok(page)
    }

    /// Rows of `team` whose document_id is in `ids`, in `(inserted_at, document_id)` order.
    /// `last` is always `None`: re-reading old rows must not move a watermark.
    pub fn read_by_ids(&self, team: i64, ids: &[String]) -> Result<SourcePage> {
        let index = self.index()?;
        let wanted: HashSet<&str> = ids.iter().map(String::as_str).collect();
        let chosen: Vec<&KeyEntry> = index
            .team(team)
            .iter()
            .filter(|e| e.error.is_none())
            .filter(|e| {
                e.pos
                    .as_ref()
                    .is_some_and(|p| wanted.contains(p.document_id.as_str()))
            })
            .collect();
        self.load(&chosen)
    }

    /// Rows of `team` after `after` and before `until_ms`.
    pub fn count(
        &self,
        team: i64,
        after: Option<&Watermark>,
        until_ms: Option<i64>,
    ) -> Result<u64> {
        let index = self.index()?;
        Ok(window(index.team(team), after, until_ms).len() as u64)
    }

    /// Distinct team ids in the file, ascending.
    pub fn teams(&self) -> Result<Vec<i64>> {
        let index = self.index()?;
        let mut teams: Vec<i64> = index
            .placed
            .iter()
            .chain(&index.unplaced)
            .map(|e| e.team)
            .collect();
        teams.sort_unstable();
        teams.dedup();
        Ok(teams)
    }

    fn file_name(&self) -> String {
        self.path.file_name().map_or_else(
            || self.path.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        )
    }

    fn quarantine(&self, e: &KeyEntry, file_name: &str, why: &str) -> Quarantine {
        Quarantine {
            team_id: e.team,
            document_id: e.document_id(file_name),
            reason: format!("{} {}: {why}", self.path.display(), describe(e.loc)),
        }
    }

    /// The key index for the file as it is now, rebuilt when its size or mtime changed.
    fn index(&self) -> Result<Arc<KeyIndex>> {
        let meta = std::fs::metadata(&self.path)
            .with_context(|| format!("reading segments file {}", self.path.display()))?;
        let stamp = (meta.len(), meta.modified().ok());
        let mut cached = self.index.lock().map_err(|_| {
            anyhow::anyhow!("segments file index lock poisoned by an earlier panic")
        })?;
        if let Some(idx) = cached.as_ref().filter(|i| i.stamp == stamp) {
            return Ok(Arc::clone(idx));
        }
        let entries = match self.format {
            Format::Parquet => parquet_guard(&self.path, || self.parquet_keys())?,
            Format::Jsonl => self.jsonl_keys()?,
        };
        let (mut placed, unplaced): (Vec<_>, Vec<_>) =
            entries.into_iter().partition(|e| e.pos.is_some());
        placed.sort_by(|a, b| (a.team, &a.pos).cmp(&(b.team, &b.pos)));
        tracing::debug!(
            path = %self.path.display(),
            rows = placed.len() + unplaced.len(),
            "indexed segments file"
        );
        let idx = Arc::new(KeyIndex {
            stamp,
            placed,
            unplaced,
        });
        *cached = Some(Arc::clone(&idx));
        Ok(idx)
    }

    /// Reads the full rows for `chosen` (in position order) and returns them in that order;
    /// rows with key errors, or whose other fields do not parse, become `rejected`.
    fn load(&self, chosen: &[&KeyEntry]) -> Result<SourcePage> {
        let name = self.file_name();
        // Rows to read, in file order for sequential I/O; slot = index into `chosen`.
        let mut to_read: Vec<usize> = (0..chosen.len())
            .filter(|&k| chosen[k].error.is_none())
            .collect();
        to_read.sort_by_key(|&k| match chosen[k].loc {
            Loc::Row(i) => i as u64,
            Loc::Line { offset, .. } => offset,
        });
        let mut slots: Vec<Option<Result<Body, String>>> = vec![None; chosen.len()];
        match self.format {
            Format::Parquet => parquet_guard(&self.path, || {
                self.parquet_bodies(chosen, &to_read, &mut slots)
            })?,
            Format::Jsonl => self.jsonl_bodies(chosen, &to_read, &mut slots)?,
        }
        let mut page = SourcePage::default();
        for (e, slot) in chosen.iter().zip(slots) {
            let body = match (&e.error, slot) {
                (Some(err), _) => Err(err.clone()),
                (None, Some(b)) => b,
                (None, None) => bail!(
                    "{}: {} was not found on the second read; the file changed during the run, retry",
                    self.path.display(),
                    describe(e.loc)
                ),
            };
            match (body, &e.pos) {
                (Ok(b), Some(pos)) => page.rows.push(RawSegment {
                    team_id: e.team,
                    document_id: pos.document_id.clone(),
                    content: b.content,
                    metadata: b.metadata,
                    timestamp_ms: e.timestamp_ms,
                    inserted_at_ms: pos.inserted_at_ms,
                    embedding: b.embedding,
                }),
                (Ok(_), None) => unreachable!("rows without a position carry an error"),
                (Err(why), _) => page.rejected.push(self.quarantine(e, &name, &why)),
            }
        }
        Ok(page)
    }

    // ----- Parquet -----

    fn parquet_builder(&self) -> Result<ParquetRecordBatchReaderBuilder<File>> {
        let file = File::open(&self.path)
            .with_context(|| format!("opening segments file {}", self.path.display()))?;
        ParquetRecordBatchReaderBuilder::try_new(file)
            .with_context(|| format!("{}: not a readable Parquet file", self.path.display()))
    }

    fn parquet_keys(&self) -> Result<Vec<KeyEntry>> {
        let builder = self.parquet_builder()?;
        let cols = ParquetColumns::find(&self.path, builder.schema())?;
        let key_cols: Vec<usize> = [
            cols.team_id,
            Some(cols.document_id),
            cols.timestamp,
            cols.inserted_at,
        ]
        .into_iter()
        .flatten()
        .collect();
        let mask = ProjectionMask::roots(builder.parquet_schema(), key_cols);
        let reader = builder
            .with_projection(mask)
            .with_batch_size(KEY_BATCH_ROWS)
            .build()
            .with_context(|| format!("{}: reading key columns", self.path.display()))?;
        let name = self.file_name();
        let mut out = Vec::new();
        for batch in reader {
            let batch =
                batch.with_context(|| format!("{}: reading key columns", self.path.display()))?;
            let col = |column: &str| batch.column_by_name(column);
            let (team, doc, ts, ins) = (
                col("team_id"),
                col("document_id").context("document_id column vanished from a batch")?,
                col("timestamp"),
                col("inserted_at"),
            );
            for i in 0..batch.num_rows() {
                let row = out.len();
                let team = team.and_then(|c| int_at(c, i)).unwrap_or(self.default_team);
                let doc = str_at(doc, i).filter(|s| !s.is_empty());
                let ts = ts.and_then(|c| millis_at(c, i));
                let ins = ins.and_then(|c| millis_at(c, i));
                out.push(make_entry(
                    team,
                    doc.map(str::to_string),
                    ts,
                    ins,
                    Loc::Row(row),
                    &name,
                ));
            }
        }
        Ok(out)
    }

    fn parquet_bodies(
        &self,
        chosen: &[&KeyEntry],
        to_read: &[usize],
        slots: &mut [Option<Result<Body, String>>],
    ) -> Result<()> {
        if to_read.is_empty() {
            return Ok(());
        }
        let builder = self.parquet_builder()?;
        let cols = ParquetColumns::find(&self.path, builder.schema())?;
        // Row groups holding a wanted row, and the wanted rows' positions within them.
        let group_sizes: Vec<usize> = builder
            .metadata()
            .row_groups()
            .iter()
            .map(|g| usize::try_from(g.num_rows()).unwrap_or(0))
            .collect();
        let mut group_starts = Vec::with_capacity(group_sizes.len());
        let mut acc = 0usize;
        for &n in &group_sizes {
            group_starts.push(acc);
            acc += n;
        }
        let rows: Vec<usize> = to_read
            .iter()
            .map(|&k| match chosen[k].loc {
                Loc::Row(i) => i,
                Loc::Line { .. } => unreachable!("Parquet entries are located by row"),
            })
            .collect();
        let mut groups: Vec<usize> = Vec::new();
        let mut ranges = Vec::new();
        let mut kept_before = 0usize; // rows in the groups kept so far
        for &r in &rows {
            let g = group_starts.partition_point(|&s| s <= r).saturating_sub(1);
            if groups.last() != Some(&g) {
                if let Some(&prev) = groups.last() {
                    kept_before += group_sizes[prev];
                }
                groups.push(g);
            }
            let local = kept_before + (r - group_starts[g]);
            ranges.push(local..local + 1);
        }
        let total: usize = groups.iter().map(|&g| group_sizes[g]).sum();
        let selection = RowSelection::from_consecutive_ranges(ranges.into_iter(), total);
        let mask = ProjectionMask::roots(
            builder.parquet_schema(),
            [cols.content, cols.metadata, cols.embedding],
        );
        let reader = builder
            .with_projection(mask)
            .with_row_groups(groups)
            .with_row_selection(selection)
            .with_batch_size(EMBEDDING_BATCH_ROWS)
            .build()
            .with_context(|| format!("{}: reading rows", self.path.display()))?;
        let mut next = 0usize;
        for batch in reader {
            let batch = batch.with_context(|| format!("{}: reading rows", self.path.display()))?;
            let body = BatchBody::new(&batch)?;
            for i in 0..batch.num_rows() {
                let Some(&k) = to_read.get(next) else {
                    bail!(
                        "{}: more rows than selected came back; the file changed during the run, retry",
                        self.path.display()
                    );
                };
                slots[k] = Some(body.row(i));
                next += 1;
            }
        }
        Ok(())
    }

    // ----- JSON Lines -----

    fn jsonl_keys(&self) -> Result<Vec<KeyEntry>> {
        let file = File::open(&self.path)
            .with_context(|| format!("opening segments file {}", self.path.display()))?;
        let mut reader = BufReader::with_capacity(1 << 20, file);
        let name = self.file_name();
        let mut out = Vec::new();
        let mut buf = Vec::new();
        let mut offset = 0u64;
        let mut number = 0usize;
        loop {
            buf.clear();
            let n = reader
                .read_until(b'\n', &mut buf)
                .with_context(|| format!("reading {}", self.path.display()))?;
            if n == 0 {
                break;
            }
            number += 1;
            let loc = Loc::Line {
                number,
                offset,
                len: n,
            };
            offset += n as u64;
            if buf.iter().all(u8::is_ascii_whitespace) {
                continue; // blank lines are not rows
            }
            out.push(self.jsonl_key(&buf, loc, &name));
        }
        Ok(out)
    }

    fn jsonl_key(&self, line: &[u8], loc: Loc, name: &str) -> KeyEntry {
        let keys: KeyRow = match serde_json::from_slice(line) {
            Ok(k) => k,
            Err(err) => {
                return KeyEntry {
                    team: self.default_team,
                    pos: None,
                    timestamp_ms: 0,
                    loc,
                    error: Some(format!("not a valid JSON object: {err}")),
                };
            }
        };
        let mut errors = Vec::new();
        let team = match keys.team_id.as_ref().map(json_team) {
            None | Some(Ok(None)) => self.default_team,
            Some(Ok(Some(t))) => t,
            Some(Err(e)) => {
                errors.push(e);
                self.default_team
            }
        };
        let doc = match keys.document_id {
            Some(Value::String(s)) if !s.is_empty() => Some(s),
            None | Some(Value::Null) => {
                errors.push("document_id is missing".to_string());
                None
            }
            Some(Value::String(_)) => {
                errors.push("document_id is empty".to_string());
                None
            }
            Some(other) => {
                errors.push(format!("document_id is not a string: {other}"));
                None
            }
        };
        let mut time = |field: &str, v: Option<Value>| match v.as_ref().map(json_millis) {
            None | Some(Ok(None)) => None,
            Some(Ok(Some(ms))) => Some(ms),
            Some(Err(e)) => {
                errors.push(format!("{field}: {e}"));
                None
            }
        };
        let ts = time("timestamp", keys.timestamp);
        let ins = time("inserted_at", keys.inserted_at);
        let mut entry = make_entry(team, doc, ts, ins, loc, name);
        if !errors.is_empty() {
            entry.error = Some(errors.join("; "));
        }
        entry
    }

    fn jsonl_bodies(
        &self,
        chosen: &[&KeyEntry],
        to_read: &[usize],
        slots: &mut [Option<Result<Body, String>>],
    ) -> Result<()> {
        if to_read.is_empty() {
            return Ok(());
        }
        let mut file = File::open(&self.path)
            .with_context(|| format!("opening segments file {}", self.path.display()))?;
        let mut buf = Vec::new();
        for &k in to_read {
            let Loc::Line { offset, len, .. } = chosen[k].loc else {
                unreachable!("JSON Lines entries are located by line");
            };
            buf.resize(len, 0);
            file.seek(SeekFrom::Start(offset))
                .and_then(|_| file.read_exact(&mut buf))
                .with_context(|| {
                    format!(
                        "{}: re-reading {}; the file changed during the run, retry",
                        self.path.display(),
                        describe(chosen[k].loc)
                    )
                })?;
            slots[k] = Some(parse_body_line(&buf));
        }
        Ok(())
    }
}

impl KeyIndex {
    /// The positioned rows of one team, in position order.
    fn team(&self, team: i64) -> &[KeyEntry] {
        let lo = self.placed.partition_point(|e| e.team < team);
        let hi = self.placed.partition_point(|e| e.team <= team);
        &self.placed[lo..hi]
    }
}

/// The parquet crate still panics on some damaged files (a data page that names a dictionary
/// the column chunk lacks, found by `tools/fuzz.sh`). A segments file is outside input: it gets
/// an error that names it, never a crash. What a failed read was filling is dropped with it.
fn parquet_guard<T>(path: &Path, read: impl FnOnce() -> Result<T>) -> Result<T> {
    crate::guard::catch(read).map_err(|e| {
        if e.is::<crate::guard::Panicked>() {
            anyhow::anyhow!(
                "{}: the Parquet reader failed on this file ({e}); the file is damaged: \
                 write it again",
                path.display()
            )
        } else {
            e
        }
    })
}

/// True when `e` comes strictly after watermark `w`.
fn is_after(w: &Watermark, e: &KeyEntry) -> bool {
    e.pos
        .as_ref()
        .is_some_and(|p| w.is_before(p.inserted_at_ms, &p.document_id))
}

fn describe(loc: Loc) -> String {
    match loc {
        Loc::Row(i) => format!("row index {i}"),
        Loc::Line { number, .. } => format!("line {number}"),
    }
}

/// Builds a key entry from what was read: a missing inserted_at takes the timestamp (and the
/// other way round); a missing document_id is an error but keeps a synthetic position.
fn make_entry(
    team: i64,
    doc: Option<String>,
    ts: Option<i64>,
    ins: Option<i64>,
    loc: Loc,
    file_name: &str,
) -> KeyEntry {
    let inserted = ins.or(ts);
    let mut error = None;
    if doc.is_none() {
        error = Some("document_id is missing or empty".to_string());
    }
    let pos = match inserted {
        Some(ms) => Some(Watermark {
            inserted_at_ms: ms,
            document_id: doc.unwrap_or_else(|| match loc {
                Loc::Line { number, .. } => format!("{file_name}:{number}"),
                Loc::Row(i) => format!("{file_name}:row{i}"),
            }),
        }),
        None => {
            let why = "neither timestamp nor inserted_at is set".to_string();
            error = Some(match error {
                Some(e) => format!("{e}; {why}"),
                None => why,
            });
            None
        }
    };
    KeyEntry {
        team,
        pos,
        timestamp_ms: ts.or(ins).unwrap_or(0),
        loc,
        error,
    }
}

/// The non-key fields of a row.
#[derive(Clone, Debug)]
struct Body {
    content: String,
    metadata: String,
    embedding: Vec<f32>,
}

// ----- Parquet columns -----

/// Indices of the columns we use in a Parquet file's top-level schema.
struct ParquetColumns {
    team_id: Option<usize>,
    document_id: usize,
    content: usize,
    metadata: usize,
    timestamp: Option<usize>,
    inserted_at: Option<usize>,
    embedding: usize,
}

impl ParquetColumns {
    /// Finds the columns and checks their types, with errors that say what to change.
    fn find(path: &Path, schema: &Schema) -> Result<Self> {
        let required = "document_id, content, metadata, embedding, and timestamp or inserted_at";
        let find = |name: &str, ok: fn(&DataType) -> bool, want: &str| -> Result<Option<usize>> {
            let Some((i, field)) = schema.column_with_name(name) else {
                return Ok(None);
            };
            if !ok(field.data_type()) {
                bail!(
                    "{}: column '{name}' has type {}, expected {want}",
                    path.display(),
                    field.data_type()
                );
            }
            Ok(Some(i))
        };
        let need = |name: &str, found: Option<usize>| {
            found.with_context(|| {
                format!(
                    "{}: no column '{name}' (a segments file needs {required})",
                    path.display()
                )
            })
        };
        const TIME: &str = "a timestamp or int64 milliseconds";
        let cols = Self {
            team_id: find("team_id", is_int, "an integer")?,
            document_id: need("document_id", find("document_id", is_str, "a string")?)?,
            content: need("content", find("content", is_str, "a string")?)?,
            metadata: need("metadata", find("metadata", is_str, "a string of JSON")?)?,
            timestamp: find("timestamp", is_time, TIME)?,
            inserted_at: find("inserted_at", is_time, TIME)?,
            embedding: need(
                "embedding",
                find("embedding", is_float_list, "a list of float32 or float64")?,
            )?,
        };
        if cols.timestamp.is_none() && cols.inserted_at.is_none() {
            bail!(
                "{}: no column 'timestamp' or 'inserted_at' (a segments file needs {required})",
                path.display()
            );
        }
        Ok(cols)
    }
}

fn is_int(t: &DataType) -> bool {
    t.is_integer()
}

fn is_str(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

fn is_time(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Timestamp(..) | DataType::Int64 | DataType::Date64
    )
}

fn is_float_list(t: &DataType) -> bool {
    match t {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            matches!(f.data_type(), DataType::Float32 | DataType::Float64)
        }
        _ => false,
    }
}

fn int_at(a: &ArrayRef, i: usize) -> Option<i64> {
    if a.is_null(i) {
        return None;
    }
    match a.data_type() {
        DataType::Int8 => Some(i64::from(a.as_primitive::<Int8Type>().value(i))),
        DataType::Int16 => Some(i64::from(a.as_primitive::<Int16Type>().value(i))),
        DataType::Int32 => Some(i64::from(a.as_primitive::<Int32Type>().value(i))),
        DataType::Int64 => Some(a.as_primitive::<Int64Type>().value(i)),
        DataType::UInt8 => Some(i64::from(a.as_primitive::<UInt8Type>().value(i))),
        DataType::UInt16 => Some(i64::from(a.as_primitive::<UInt16Type>().value(i))),
        DataType::UInt32 => Some(i64::from(a.as_primitive::<UInt32Type>().value(i))),
        DataType::UInt64 => i64::try_from(a.as_primitive::<UInt64Type>().value(i)).ok(),
        _ => None,
    }
}

fn millis_at(a: &ArrayRef, i: usize) -> Option<i64> {
    if a.is_null(i) {
        return None;
    }
    match a.data_type() {
        DataType::Timestamp(TimeUnit::Second, _) => a
            .as_primitive::<TimestampSecondType>()
            .value(i)
            .checked_mul(1000),
        DataType::Timestamp(TimeUnit::Millisecond, _) => {
            Some(a.as_primitive::<TimestampMillisecondType>().value(i))
        }
        DataType::Timestamp(TimeUnit::Microsecond, _) => Some(
            a.as_primitive::<TimestampMicrosecondType>()
                .value(i)
                .div_euclid(1_000),
        ),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => Some(
            a.as_primitive::<TimestampNanosecondType>()
                .value(i)
                .div_euclid(1_000_000),
        ),
        DataType::Int64 => Some(a.as_primitive::<Int64Type>().value(i)),
        DataType::Date64 => Some(a.as_primitive::<Date64Type>().value(i)),
        _ => None,
    }
}

fn str_at(a: &ArrayRef, i: usize) -> Option<&str> {
    if a.is_null(i) {
        return None;
    }
    match a.data_type() {
        DataType::Utf8 => Some(a.as_string::<i32>().value(i)),
        DataType::LargeUtf8 => Some(a.as_string::<i64>().value(i)),
        DataType::Utf8View => Some(a.as_string_view().value(i)),
        _ => None,
    }
}

/// The body columns of one Arrow batch.
struct BatchBody<'a> {
    content: &'a ArrayRef,
    metadata: &'a ArrayRef,
    embedding: &'a ArrayRef,
}

impl<'a> BatchBody<'a> {
    fn new(batch: &'a RecordBatch) -> Result<Self> {
        let col = |name: &str| {
            batch
                .column_by_name(name)
                .with_context(|| format!("column '{name}' vanished from a batch"))
        };
        Ok(Self {
            content: col("content")?,
            metadata: col("metadata")?,
            embedding: col("embedding")?,
        })
    }

    fn row(&self, i: usize) -> Result<Body, String> {
        let content = str_at(self.content, i)
            .ok_or("content is null")?
            .to_string();
        // A null metadata is passed on as JSON null: validation says what is wrong with it.
        let metadata = str_at(self.metadata, i).unwrap_or("null").to_string();
        let embedding = embedding_at(self.embedding, i)?;
        Ok(Body {
            content,
            metadata,
            embedding,
        })
    }
}

/// Row `i` of a list / large_list / fixed_size_list column of float32 or float64, as f32.
fn embedding_at(a: &ArrayRef, i: usize) -> Result<Vec<f32>, String> {
    if a.is_null(i) {
        return Err("embedding is null".into());
    }
    let (values, start, end) = match a.data_type() {
        DataType::List(_) => {
            let l = a.as_list::<i32>();
            let o = l.value_offsets();
            (l.values(), o[i] as usize, o[i + 1] as usize)
        }
        DataType::LargeList(_) => {
            let l = a.as_list::<i64>();
            let o = l.value_offsets();
            (l.values(), o[i] as usize, o[i + 1] as usize)
        }
        DataType::FixedSizeList(_, _) => {
            let l = a.as_fixed_size_list();
            let start = l.value_offset_at(i);
            (l.values(), start, start + l.value_length() as usize)
        }
        other => return Err(format!("embedding has unsupported type {other}")),
    };
    if let Some(nulls) = values.nulls()
        && let Some(j) = (start..end).find(|&j| nulls.is_null(j))
    {
        return Err(format!("embedding value at index {} is null", j - start));
    }
    match values.data_type() {
        DataType::Float32 => Ok(values.as_primitive::<Float32Type>().values()[start..end].to_vec()),
        DataType::Float64 => Ok(values.as_primitive::<Float64Type>().values()[start..end]
            .iter()
            .map(|&x| x as f32)
            .collect()),
        other => Err(format!("embedding values have unsupported type {other}")),
    }
}

// ----- JSON Lines rows -----

/// The key fields of a line; every other field is skipped unparsed (serde ignores unknown
/// fields), so the key pass never materializes embeddings.
#[derive(Deserialize)]
struct KeyRow {
    team_id: Option<Value>,
    document_id: Option<Value>,
    timestamp: Option<Value>,
    inserted_at: Option<Value>,
}

/// The body fields of a line.
#[derive(Deserialize)]
struct BodyRow {
    content: Option<Value>,
    metadata: Option<Value>,
    embedding: Option<JsonEmbedding>,
}

/// An embedding array parsed straight into f32, naming the index of a non-number.
struct JsonEmbedding(Vec<f32>);

impl<'de> Deserialize<'de> for JsonEmbedding {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = JsonEmbedding;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an array of numbers")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<JsonEmbedding, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
                while let Some(v) = seq.next_element::<Value>()? {
                    match v.as_f64() {
                        Some(x) => out.push(x as f32),
                        None => {
                            return Err(serde::de::Error::custom(format!(
                                "embedding value at index {} is {v}, expected a number",
                                out.len()
                            )));
                        }
                    }
                }
                Ok(JsonEmbedding(out))
            }
        }
        d.deserialize_seq(V)
    }
}

fn parse_body_line(line: &[u8]) -> Result<Body, String> {
    let row: BodyRow =
        serde_json::from_slice(line).map_err(|e| format!("cannot read the row: {e}"))?;
    let content = match row.content {
        Some(Value::String(s)) => s,
        None | Some(Value::Null) => return Err("content is missing".into()),
        Some(other) => return Err(format!("content is not a string: {other}")),
    };
    // JSON text or an object; anything else is passed on for validation to name.
    let metadata = match row.metadata {
        Some(Value::String(s)) => s,
        Some(v) => v.to_string(),
        None => "null".to_string(),
    };
    let embedding = row.embedding.ok_or("embedding is missing")?.0;
    Ok(Body {
        content,
        metadata,
        embedding,
    })
}

/// team_id as an integer, or an integer in a string (ClickHouse quotes 64-bit integers in JSON).
fn json_team(v: &Value) -> Result<Option<i64>, String> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| format!("team_id {n} is not an integer")),
        Value::String(s) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| format!("team_id {s:?} is not an integer")),
        other => Err(format!("team_id is not an integer: {other}")),
    }
}

/// A time in ms since the epoch: integer ms, RFC 3339, or ClickHouse's `YYYY-MM-DD hh:mm:ss[.f]`
/// (taken as UTC).
fn json_millis(v: &Value) -> Result<Option<i64>, String> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| format!("{n} is not an integer number of milliseconds")),
        Value::String(s) => {
            if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
                return Ok(Some(t.timestamp_millis()));
            }
            chrono::NaiveDateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f")
                .map(|t| Some(t.and_utc().timestamp_millis()))
                .map_err(|_| {
                    format!(
                        "{s:?} is not an RFC 3339 time (e.g. 2024-05-01T12:00:00Z) or integer ms"
                    )
                })
        }
        other => Err(format!("{other} is not a time")),
    }
}

// ----- writing -----

/// Writes segments as Parquet (snappy) or JSON Lines, by extension. Used by the demo generator,
/// tests, and to export data. JSON cannot hold NaN or infinity: such values are written as
/// null, which reading rejects.
pub fn write_segments(path: impl AsRef<Path>, rows: &[RawSegment]) -> Result<()> {
    let path = path.as_ref();
    let file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let result = match Format::of(path)? {
        Format::Parquet => write_parquet(file, rows),
        Format::Jsonl => write_jsonl(file, rows),
    };
    result.with_context(|| format!("writing {}", path.display()))
}

fn write_jsonl(file: File, rows: &[RawSegment]) -> Result<()> {
    #[derive(serde::Serialize)]
    struct Line<'a> {
        team_id: i64,
        document_id: &'a str,
        content: &'a str,
        metadata: &'a str,
        timestamp: i64,
        inserted_at: i64,
        embedding: &'a [f32],
    }
    let mut w = BufWriter::new(file);
    for r in rows {
        let line = Line {
            team_id: r.team_id,
            document_id: &r.document_id,
            content: &r.content,
            metadata: &r.metadata,
            timestamp: r.timestamp_ms,
            inserted_at: r.inserted_at_ms,
            embedding: &r.embedding,
        };
        serde_json::to_writer(&mut w, &line)?;
        w.write_all(b"\n")?;
    }
    w.flush()?;
    Ok(())
}

fn write_parquet(file: File, rows: &[RawSegment]) -> Result<()> {
    let item = Arc::new(Field::new_list_field(DataType::Float32, false));
    let time = DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into()));
    let schema = Arc::new(Schema::new(vec![
        Field::new("team_id", DataType::Int64, false),
        Field::new("document_id", DataType::Utf8, false),
        Field::new("content", DataType::Utf8, false),
        Field::new("metadata", DataType::Utf8, false),
        Field::new("timestamp", time.clone(), false),
        Field::new("inserted_at", time, false),
        Field::new("embedding", DataType::List(Arc::clone(&item)), false),
    ]));
    let dim = rows.first().map_or(1, |r| r.embedding.len().max(1));
    let group_rows = (ROW_GROUP_BYTES / (dim * 4)).clamp(1024, 1 << 20);
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(group_rows))
        .build();
    let mut writer = ArrowWriter::try_new(file, Arc::clone(&schema), Some(props))?;
    for chunk in rows.chunks(EMBEDDING_BATCH_ROWS.max(1024)) {
        let mut emb = ListBuilder::with_capacity(
            Float32Builder::with_capacity(chunk.iter().map(|r| r.embedding.len()).sum()),
            chunk.len(),
        )
        .with_field(Arc::clone(&item));
        for r in chunk {
            emb.values().append_slice(&r.embedding);
            emb.append(true);
        }
        let strings = |f: fn(&RawSegment) -> &str| -> ArrayRef {
            Arc::new(StringArray::from_iter_values(chunk.iter().map(f)))
        };
        let times = |f: fn(&RawSegment) -> i64| -> ArrayRef {
            Arc::new(
                TimestampMillisecondArray::from_iter_values(chunk.iter().map(f))
                    .with_timezone("UTC"),
            )
        };
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from_iter_values(
                    chunk.iter().map(|r| r.team_id),
                )),
                strings(|r| &r.document_id),
                strings(|r| &r.content),
                strings(|r| &r.metadata),
                times(|r| r.timestamp_ms),
                times(|r| r.inserted_at_ms),
                Arc::new(emb.finish()),
            ],
        )?;
        writer.write(&batch)?;
    }
    writer.close()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_times_accept_ms_rfc3339_and_clickhouse_text() {
        assert_eq!(
            json_millis(&Value::from(1_700_000_000_123i64)),
            Ok(Some(1_700_000_000_123))
        );
        assert_eq!(
            json_millis(&Value::from("2024-01-01T00:00:01.5+01:00")),
            Ok(Some(1_704_063_601_500))
        );
        assert_eq!(
            json_millis(&Value::from("2024-01-01 00:00:01.250")),
            Ok(Some(1_704_067_201_250))
        );
        assert!(json_millis(&Value::from("yesterday")).is_err());
        assert!(json_millis(&Value::from(1.5)).is_err());
        assert_eq!(json_millis(&Value::Null), Ok(None));
    }

    #[test]
    fn json_team_accepts_quoted_integers() {
        assert_eq!(json_team(&Value::from("42")), Ok(Some(42)));
        assert_eq!(json_team(&Value::from(-3)), Ok(Some(-3)));
        assert!(json_team(&Value::from("x")).is_err());
    }

    #[test]
    fn body_line_errors_name_the_problem() {
        let err = parse_body_line(br#"{"content":"c","embedding":[1,"x"]}"#).unwrap_err();
        assert!(err.contains("index 1"), "{err}");
        let err = parse_body_line(br#"{"embedding":[1]}"#).unwrap_err();
        assert!(err.contains("content is missing"), "{err}");
        let b =
            parse_body_line(br#"{"content":"c","metadata":{"a":1},"embedding":[1,2.5]}"#).unwrap();
        assert_eq!(b.metadata, r#"{"a":1}"#);
        assert_eq!(b.embedding, vec![1.0, 2.5]);
    }
}
