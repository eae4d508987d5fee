//! Where segments come from: a local segments file ([`FileSource`]: Parquet or JSON Lines, the
//! embedded default and the format for experiments) or ClickHouse ([`ClickHouseSource`],
//! `document_embeddings`, production). The pipeline only talks to [`Source`] and its four
//! methods: `read_after` (a page strictly after a watermark, in `(inserted_at, document_id)`
//! order, optionally bounded above for backfill windows), `read_by_ids` (re-reading
//! carried-over unlinked segments), `teams` and `count`.
//!
//! The file reader is synchronous and runs on a blocking thread; ClickHouse is read over HTTP
//! on the runtime. Every page is bounded (at most `limit` rows).

mod clickhouse;
mod file;

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};

pub use clickhouse::{ClickHouseColumns, ClickHouseConfig, ClickHouseSource, primary_key_use};
pub use file::{FileSource, write_segments};

use crate::segment::{Quarantine, RawSegment, Watermark};

/// One page read from a source.
#[derive(Debug, Default)]
pub struct SourcePage {
    /// Rows that parsed, in `(inserted_at, document_id)` order. Still untrusted: they go to
    /// `validate` next.
    pub rows: Vec<RawSegment>,
    /// Rows that could not be parsed at all, each with a reason naming the file and line or row.
    pub rejected: Vec<Quarantine>,
    /// Position of the last row this page covered, parsed or rejected, so the caller can move
    /// its watermark past rejected rows too. `None` when the page covered no positioned row
    /// (and always for `read_by_ids`, which must never move a watermark).
    pub last: Option<Watermark>,
}

/// A source of segments. See the module docs.
#[derive(Debug)]
pub enum Source {
    File(Arc<FileSource>),
    ClickHouse(Box<ClickHouseSource>),
}

impl Source {
    /// Opens a segments file (`.parquet`, `.jsonl` or `.ndjson`); rows without a team_id belong
    /// to `default_team`.
    pub fn open_file(path: impl AsRef<Path>, default_team: i64) -> Result<Self> {
        Ok(Source::File(Arc::new(FileSource::open(
            path,
            default_team,
        )?)))
    }

    pub fn clickhouse(cfg: ClickHouseConfig) -> Result<Self> {
        Ok(Source::ClickHouse(Box::new(ClickHouseSource::new(cfg)?)))
    }

    /// For logs and errors: which file or server, never a password.
    pub fn describe(&self) -> String {
        match self {
            Source::File(f) => format!("segments file {}", f.path().display()),
            Source::ClickHouse(c) => c.describe(),
        }
    }

    /// Up to `limit` rows of `team` strictly after `after` (and inserted before `until_ms`
    /// when given), in `(inserted_at, document_id)` order.
    pub async fn read_after(
        &self,
        team: i64,
        after: Option<&Watermark>,
        until_ms: Option<i64>,
        limit: usize,
    ) -> Result<SourcePage> {
        match self {
            Source::File(f) => {
                let (f, after) = (Arc::clone(f), after.cloned());
                blocking(f, move |f| {
                    f.read_after(team, after.as_ref(), until_ms, limit)
                })
                .await
            }
            Source::ClickHouse(c) => c.read_after(team, after, until_ms, limit).await,
        }
    }

    /// Rows of `team` whose document_id is in `ids`, in `(inserted_at, document_id)` order.
    pub async fn read_by_ids(&self, team: i64, ids: &[String]) -> Result<SourcePage> {
        match self {
            Source::File(f) => {
                let (f, ids) = (Arc::clone(f), ids.to_vec());
                blocking(f, move |f| f.read_by_ids(team, &ids)).await
            }
            Source::ClickHouse(c) => c.read_by_ids(team, ids).await,
        }
    }

    /// Distinct team ids present in the source, ascending.
    pub async fn teams(&self) -> Result<Vec<i64>> {
        match self {
            Source::File(f) => {
                let f = Arc::clone(f);
                blocking(f, |f| f.teams()).await
            }
            Source::ClickHouse(c) => c.teams().await,
        }
    }

    /// Rows of `team` after `after` and before `until_ms`: the size of a backfill, for its
    /// progress bar.
    pub async fn count(
        &self,
        team: i64,
        after: Option<&Watermark>,
        until_ms: Option<i64>,
    ) -> Result<u64> {
        match self {
            Source::File(f) => {
                let (f, after) = (Arc::clone(f), after.cloned());
                blocking(f, move |f| f.count(team, after.as_ref(), until_ms)).await
            }
            Source::ClickHouse(c) => c.count(team, after, until_ms).await,
        }
    }
}

impl Source {
    /// What `segclust config check --connect` says of the source (see
    /// [`ClickHouseSource::check`]); an error means the job could not read it.
    pub async fn check(&self) -> Result<Vec<String>> {
        match self {
            Source::File(_) => {
                let teams = self.teams().await?;
                let mut lines = vec![format!("{} opens", self.describe())];
                let mut total = 0;
                for &t in &teams {
                    total += self.count(t, None, None).await?;
                }
                lines.push(format!("  {total} segments of {} team(s)", teams.len()));
                if teams.is_empty() {
                    lines.push("WARNING: the file holds no segments".into());
                }
                Ok(lines)
            }
            Source::ClickHouse(c) => c.check().await,
        }
    }
}

/// Runs one read of a segments file on the blocking pool, under the file's deadline. A read
/// past it is given up with an error, and its thread is left to finish on its own: a thread
/// cannot be stopped, and the CLI's runtime does not wait for it at exit.
async fn blocking<T: Send + 'static>(
    file: Arc<FileSource>,
    read: impl FnOnce(&FileSource) -> Result<T> + Send + 'static,
) -> Result<T> {
    let (deadline, path) = (file.deadline(), file.path().to_path_buf());
    let reading = tokio::task::spawn_blocking(move || read(&file));
    match tokio::time::timeout(deadline, reading).await {
        Ok(Ok(read)) => read,
        // A panic stays recognizable as one (`guard::Panicked`): the fuzz properties look for it.
        Ok(Err(e)) if e.is_panic() => Err(anyhow::Error::new(crate::guard::Panicked::from(
            e.into_panic(),
        )))
        .context("the source reader thread panicked"),
        Ok(Err(e)) => Err(e).context("the source reader thread failed"),
        Err(_) => bail!(
            "{}: a read took over {deadline:?} and was given up. A damaged Parquet file can make \
             the reader spin: check the file, or write it again",
            path.display(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn file(deadline: Duration) -> (tempfile::TempDir, Arc<FileSource>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.jsonl");
        std::fs::write(&path, "").unwrap();
        let f = FileSource::open(&path, 1).unwrap();
        (dir, Arc::new(f.with_deadline(deadline)))
    }

    #[tokio::test]
    async fn a_panic_on_the_reader_thread_stays_a_panic() {
        // A deadline no loaded host reaches: the panic, not the deadline, is under test.
        let (_dir, f) = file(Duration::from_secs(60));
        let err = blocking(f, |_| -> Result<()> { panic!("bad page") })
            .await
            .unwrap_err();
        let p = err.downcast_ref::<crate::guard::Panicked>();
        assert_eq!(p.map(|p| p.0.as_str()), Some("bad page"), "{err:#}");
    }

    #[tokio::test]
    async fn a_read_past_its_deadline_is_given_up() {
        let (_dir, f) = file(Duration::from_millis(200));
        let started = std::time::Instant::now();
        let err = blocking(f, |_| -> Result<()> {
            std::thread::sleep(Duration::from_secs(3));
            Ok(())
        })
        .await
        .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(
            format!("{err:#}").contains("s.jsonl: a read took over 200ms"),
            "{err:#}"
        );
    }
}
