//! What every input from outside must keep, whatever its bytes: no panic, and no row lost.
//!
//! One function per kind of input segclust reads from outside (a segments file, a `.npy`
//! file, a model's answer, a config file). Each returns `Err` naming the broken property; a
//! panic inside is itself a failure. The fuzz targets in `fuzz/fuzz_targets/` call these under
//! libFuzzer (`tools/fuzz.sh`), and `tests/fuzz_inputs.rs` replays the committed seeds and
//! regressions and a seeded mutation loop through the same functions on stable Rust, in CI.
//!
//! Included with `#[path]` by both, so it holds no `use` of test-only crates.

#![allow(dead_code)] // each includer uses some of the functions

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use segclust::config::{Config, parse_duration};
use segclust::guard::Panicked;
use segclust::impact::{ImpactWeights, impact};
use segclust::labeling::prompt::{TITLE_WORDS, check_answer, user_message};
use segclust::labeling::{LabelRequest, MAX_DESCRIPTION_CHARS, MAX_DESCRIPTIONS, MAX_TITLE_CHARS};
use segclust::labeling::{sanitize, truncate_words};
use segclust::npy;
use segclust::source::{FileSource, Source};
use segclust::validate::validate;

/// The team rows without a `team_id` are given, as `--team` would.
const DEFAULT_TEAM: i64 = 1;
/// Rows per page: small, so that paging, and rows sharing a position, are exercised.
const PAGE: usize = 3;
/// Each read's deadline: inputs are a few KB, so a read this long is spinning.
const DEADLINE: Duration = Duration::from_secs(2);

/// A file of this process's own, removed when dropped (libFuzzer runs one input at a time).
pub struct Scratch(PathBuf);

impl Scratch {
    pub fn new(ext: &str, bytes: &[u8]) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("segclust-fuzz-{}-{n}.{ext}", std::process::id()));
        if let Err(e) = std::fs::write(&path, bytes) {
            panic!("cannot write the scratch file {}: {e}", path.display());
        }
        Self(path)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A segments file (`ext`: "jsonl" or "parquet"). Opening or reading may fail with an error;
/// when reading works, every row of the file must come back exactly once, as a row or as a
/// rejected record, across the pages of all teams; validation must account for every row it
/// is given; and what it accepts must be finite, non-zero, of one dimension, with an impact in
/// [0, 1]. Returns the number of rows read.
pub fn segments_file(bytes: &[u8], ext: &str) -> Result<usize, String> {
    // One runtime for the process, as in a run: a read given up at its deadline leaves its
    // thread to finish on its own, and nothing waits for it.
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    let runtime = RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .unwrap_or_else(|e| panic!("no tokio runtime: {e}"))
    });
    runtime.block_on(read_all(bytes, ext))
}

/// Reads a segments file the way a run does: through `Source`, each read under a deadline.
async fn read_all(bytes: &[u8], ext: &str) -> Result<usize, String> {
    let file = Scratch::new(ext, bytes);
    let Ok(source) = FileSource::open(file.path(), DEFAULT_TEAM) else {
        return Ok(0); // a clear error: the file is refused as a whole
    };
    let source = Source::File(Arc::new(source.with_deadline(DEADLINE)));
    let teams = match source.teams().await {
        Ok(teams) => teams,
        Err(e) => return refused(e).map(|()| 0),
    };
    let expected = match ext {
        "jsonl" => Some(
            bytes
                .split(|&b| b == b'\n')
                .filter(|l| !l.iter().all(u8::is_ascii_whitespace))
                .count(),
        ),
        _ => parquet_rows(file.path()),
    };
    let mut seen = 0usize;
    let weights = ImpactWeights::default();
    for team in teams {
        let mut after = None;
        let mut rows = Vec::new();
        let mut pages = 0usize;
        loop {
            pages += 1;
            if pages > bytes.len() + 2 {
                return Err(format!("team {team}: paging does not end"));
            }
            let page = match source.read_after(team, after.as_ref(), None, PAGE).await {
                Ok(page) => page,
                // A damaged body: an error, and nothing was committed.
                Err(e) => return refused(e).map(|()| seen),
            };
            if let Some(r) = page.rows.iter().find(|r| r.team_id != team) {
                return Err(format!(
                    "team {team}'s page holds a row of team {}",
                    r.team_id
                ));
            }
            seen += page.rows.len() + page.rejected.len();
            rows.extend(page.rows);
            match page.last {
                Some(last) => {
                    if after.as_ref().is_some_and(|a| *a >= last) {
                        return Err(format!("team {team}: the watermark went back or stood"));
                    }
                    after = Some(last);
                }
                None => break,
            }
        }
        let ids: BTreeSet<String> = rows.iter().map(|r| r.document_id.clone()).collect();
        let wanted: Vec<String> = ids.iter().cloned().collect();
        let again = source.read_by_ids(team, &wanted).await;
        if let Err(e) = &again
            && e.downcast_ref::<Panicked>().is_some()
        {
            return Err(format!("reading by id panicked: {e:#}"));
        }
        if let Ok(again) = again {
            let back: BTreeSet<String> = again.rows.into_iter().map(|r| r.document_id).collect();
            if back != ids {
                return Err(format!(
                    "team {team}: reading {} rows back by id gave {} ids",
                    ids.len(),
                    back.len()
                ));
            }
        }
        let given = rows.len();
        let v = validate(rows, None);
        if v.segments.len() + v.quarantined.len() != given {
            return Err(format!(
                "validation of {given} rows kept {} and quarantined {}",
                v.segments.len(),
                v.quarantined.len()
            ));
        }
        if v.embeddings.rows() != v.segments.len() {
            return Err("accepted segments and embedding rows differ in number".into());
        }
        for i in 0..v.embeddings.rows() {
            let row = v.embeddings.row(i);
            if row.iter().any(|x| !x.is_finite()) || row.iter().all(|&x| x == 0.0) {
                return Err(format!("accepted row {i} is not finite and non-zero"));
            }
        }
        for s in &v.segments {
            let score = impact(&s.content, &s.metadata, &weights).score;
            if !(0.0..=1.0).contains(&score) {
                return Err(format!("impact {score} outside [0, 1]"));
            }
        }
    }
    if let Some(expected) = expected
        && seen != expected
    {
        return Err(format!(
            "the file holds {expected} rows, the pages gave back {seen}"
        ));
    }
    Ok(seen)
}

/// A read refused with an error is fine, unless the error is a panic on the reader's thread
/// (which a run survives, but which is a bug all the same).
fn refused(e: anyhow::Error) -> Result<(), String> {
    match e.downcast_ref::<Panicked>() {
        Some(_) => Err(format!("a read panicked: {e:#}")),
        None => Ok(()),
    }
}

/// Rows in a Parquet file by its row groups (what a reader reads), when the footer reads.
fn parquet_rows(path: &Path) -> Option<usize> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let reader = SerializedFileReader::new(std::fs::File::open(path).ok()?).ok()?;
    let groups = reader.metadata().row_groups().iter();
    groups.map(|g| usize::try_from(g.num_rows()).ok()).sum()
}

/// A `.npy` file: each reader may refuse it; what `read_matrix` accepts has the shape it says
/// and survives a write and a read back bit for bit.
pub fn npy_file(bytes: &[u8]) -> Result<(), String> {
    let file = Scratch::new("npy", bytes);
    let _ = npy::read_i64(file.path());
    let _ = npy::read_f64(file.path());
    let Ok(m) = npy::read_matrix(file.path()) else {
        return Ok(());
    };
    if m.as_slice().len() != m.rows() * m.cols() {
        return Err("matrix data does not match its shape".into());
    }
    let copy = Scratch::new("npy", &[]);
    npy::write_matrix(copy.path(), &m).map_err(|e| format!("writing back: {e:#}"))?;
    let back = npy::read_matrix(copy.path()).map_err(|e| format!("reading back: {e:#}"))?;
    let same = back.rows() == m.rows()
        && back.cols() == m.cols()
        && back
            .as_slice()
            .iter()
            .zip(m.as_slice())
            .all(|(a, b)| a.to_bits() == b.to_bits());
    if !same {
        return Err("a matrix written and read back changed".into());
    }
    Ok(())
}

/// A model's answer: whatever it is, an accepted label is within the store's limits, free of
/// control characters, and titled with an allowed number of words; what the strict check
/// accepts, the lenient last attempt accepts unchanged.
pub fn llm_answer(text: &str) -> Result<(), String> {
    let strict = check_answer(text, false);
    let lenient = check_answer(text, true);
    for (mode, answer) in [("strict", &strict), ("lenient", &lenient)] {
        let Ok(a) = answer else { continue };
        if a.title.chars().count() > MAX_TITLE_CHARS
            || a.description.chars().count() > MAX_DESCRIPTION_CHARS
        {
            return Err(format!("{mode}: a label over the store's limits"));
        }
        if a.title
            .chars()
            .chain(a.description.chars())
            .any(char::is_control)
        {
            return Err(format!("{mode}: a control character in the label"));
        }
        let words = a.title.split_whitespace().count();
        let fewest = if mode == "strict" {
            *TITLE_WORDS.start()
        } else {
            3
        };
        if words < fewest || words > *TITLE_WORDS.end() {
            return Err(format!("{mode}: a title of {words} words"));
        }
    }
    if let Ok(s) = &strict
        && lenient.as_ref() != Ok(s)
    {
        return Err("the lenient check changed an answer the strict one accepted".into());
    }
    Ok(())
}

/// Segment descriptions (split on NUL): the prompt's data block is the only one in the message,
/// is valid JSON once its markers are removed, and holds exactly the first non-empty sanitized
/// descriptions, cut to length. Nothing a description says can close the block.
pub fn prompt(text: &str) -> Result<(), String> {
    let descriptions: Vec<String> = text.split('\0').map(str::to_string).collect();
    let req = LabelRequest {
        descriptions: descriptions.clone(),
        segment_count: descriptions.len(),
        distinct_users: 1,
        mean_impact: 0.5,
    };
    let message = user_message(&req);
    if message.matches("<data>").count() != 1 || message.matches("</data>").count() != 1 {
        return Err("the message holds more than one data marker".into());
    }
    let (_, rest) = message.split_once("<data>\n").ok_or("no opening marker")?;
    let (data, tail) = rest.split_once("\n</data>").ok_or("no closing marker")?;
    if !tail.is_empty() {
        return Err("text after the data block".into());
    }
    let value: serde_json::Value =
        serde_json::from_str(data).map_err(|e| format!("the data block is not JSON: {e}"))?;
    let sent: Vec<String> = value["segment_descriptions"]
        .as_array()
        .ok_or("no descriptions in the data block")?
        .iter()
        .map(|v| v.as_str().unwrap_or_default().to_string())
        .collect();
    let want: Vec<String> = descriptions
        .iter()
        .map(|d| sanitize(d))
        .filter(|d| !d.is_empty())
        .take(MAX_DESCRIPTIONS)
        .map(|d| truncate_words(&d, segclust::labeling::prompt::MAX_SENT_DESCRIPTION_CHARS))
        .collect();
    if sent != want {
        return Err("the data block does not hold the sanitized descriptions".into());
    }
    Ok(())
}

/// A config file: parsing may refuse it with an error; an accepted config answers every
/// question a run asks of it.
pub fn config_text(text: &str) -> Result<(), String> {
    let _ = parse_duration(text);
    let Ok(cfg) = Config::parse(text, "fuzz.toml", &[]) else {
        return Ok(());
    };
    let _ = cfg.problems();
    let _ = cfg.pipeline();
    let _ = cfg.interval();
    let _ = cfg.backfill_window();
    let _ = cfg.clustering.gpu_options();
    Ok(())
}
