//! The Task store: Tasks, their segment links, per-team watermarks, quarantined rows and the
//! carry-over of unlinked (noise) segments. SQLite is the embedded default, PostgreSQL the
//! production store; both hold the same schema (`migrations/sqlite`, `migrations/postgres`: the
//! same tables, only type names differ) and run the same SQL.
//!
//! How one body of SQL serves two backends: the queries live once, in `sql.rs`, in a `Repo<DB>`
//! generic over `sqlx::Database`; [`Store`] is a two-variant enum over `Repo<Sqlite>` and
//! `Repo<Postgres>` that dispatches each call. We did not use `sqlx::Any`: it needs its own
//! feature, erases types (blobs, i64 vs i32) and cannot run the embedded migrations per dialect.
//! The SQL is written in the common subset: `$N` placeholders (SQLite accepts them), `RETURNING`,
//! `ON CONFLICT`, row-value comparison, `QueryBuilder` for multi-row inserts and `IN` lists.
//!
//! Timestamps are milliseconds since the Unix epoch (`*_ms`, BIGINT) so that both backends store
//! and compare them identically. Centroids are little-endian f32 bytes.
//!
//! Counts and impact of a Task are never incremented: every commit recomputes them from the links
//! in SQL, so a rerun of the same batch (after a crash, or by an overlapping worker) cannot drift
//! them; links are unique per `(team_id, document_id)`.

mod lock;
mod sql;

pub use lock::TeamLock;

use std::collections::HashSet;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, Postgres};
use sqlx::sqlite::{
    Sqlite, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection};

use crate::retry::RetryPolicy;
pub use crate::segment::{Quarantine, Watermark};
use sql::Repo;

pub use crate::labeling::LabelSource;

/// A recurring problem, as stored.
#[derive(Clone, Debug, PartialEq)]
pub struct Task {
    pub id: i64,
    pub team_id: i64,
    pub title: String,
    pub description: String,
    pub label_source: LabelSource,
    /// The LLM's judgement: false when the segments show ordinary use rather than a problem;
    /// None when not judged (fallback labels).
    pub actionable: Option<bool>,
    pub priority_score: f64,
    /// critical / high / medium / low, as the priority function named it.
    pub priority_level: String,
    /// Mean impact of the linked segments.
    pub impact: f64,
    /// Number of linked segments.
    pub segment_count: i64,
    /// Distinct sessions among the linked segments.
    pub occurrence_count: i64,
    /// Distinct users (`distinct_id`) among the linked segments.
    pub distinct_user_count: i64,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// L2-normalized mean of the linked segments' embeddings (original space).
    pub centroid: Vec<f32>,
    /// How many segments `centroid` averages, for count-weighted updates.
    pub centroid_weight: i64,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// One segment linked to a Task.
#[derive(Clone, Debug, PartialEq)]
pub struct Link {
    pub task_id: i64,
    pub team_id: i64,
    pub document_id: String,
    pub session_id: String,
    pub distinct_id: String,
    /// Cosine distance to the Task centroid at link time.
    pub distance: f64,
    /// The segment's impact.
    pub impact: f64,
    pub timestamp_ms: i64,
    pub created_at_ms: i64,
    /// The segment's description ('' for links stored before descriptions were kept).
    pub content: String,
}

/// What priority is computed from; recomputed from the links on every commit.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskAggregates {
    pub task_id: i64,
    pub segment_count: i64,
    pub occurrence_count: i64,
    pub distinct_user_count: i64,
    pub impact: f64,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
}

/// Scores a Task at `now_ms` (second argument): `(score, level)`. Supplied by the caller so that
/// the store holds no policy (weights, half-life and level cut-offs live in `priority`).
pub type PriorityFn = dyn Fn(&TaskAggregates, i64) -> (f64, String) + Send + Sync;

/// A Task created by this batch.
#[derive(Clone, Debug, PartialEq)]
pub struct NewTask {
    pub title: String,
    pub description: String,
    pub label_source: LabelSource,
    pub actionable: Option<bool>,
    pub centroid: Vec<f32>,
    pub centroid_weight: i64,
}

/// The new centroid of an existing Task that this batch's segments joined.
#[derive(Clone, Debug, PartialEq)]
pub struct CentroidUpdate {
    pub task_id: i64,
    pub centroid: Vec<f32>,
    pub centroid_weight: i64,
}

/// The Task a link points at: one already stored, or one created by the same commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskRef {
    Existing(i64),
    /// Index into [`BatchCommit::new_tasks`].
    New(usize),
}

#[derive(Clone, Debug, PartialEq)]
pub struct NewLink {
    pub task: TaskRef,
    pub document_id: String,
    pub session_id: String,
    pub distinct_id: String,
    pub distance: f64,
    pub impact: f64,
    pub timestamp_ms: i64,
    /// The segment's description, kept so that reports need no access to the source.
    pub content: String,
}

/// A batch's figures, as stored in `runs`.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct RunFigures {
    pub segments_read: i64,
    pub already_linked: i64,
    pub carried_over: i64,
    pub quarantined: i64,
    pub clustered: i64,
    pub clusters: i64,
    pub noise: i64,
    pub rescued: i64,
    pub tasks_created: i64,
    pub tasks_updated: i64,
    pub links: i64,
    pub read_s: f64,
    pub numeric_s: f64,
    /// Matching clusters and noise to Tasks.
    pub match_s: f64,
    pub label_s: f64,
    pub commit_s: f64,
}

/// One row of a batch on its 2-D map (the first two PCA axes).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MapPoint {
    pub x: f32,
    pub y: f32,
    /// HDBSCAN cluster of the row in its batch; -1 = noise.
    pub cluster: i32,
    /// The Task the row was linked to, if any.
    pub task: Option<TaskRef>,
}

/// What a batch records about itself; written by [`Store::commit_batch`] in the batch's own
/// transaction, so a run row exists exactly when the batch's Tasks and links do.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RunRecord {
    pub started_at_ms: i64,
    /// `tasks_created`, `tasks_updated`, `links` and `commit_s` are filled in by the commit
    /// (the values given here are ignored): only the commit knows them.
    pub figures: RunFigures,
    /// Quarantine reason -> rows, most frequent first.
    pub quarantine_reasons: Vec<(String, i64)>,
    pub map: Vec<MapPoint>,
}

/// A stored batch run.
#[derive(Clone, Debug, PartialEq)]
pub struct Run {
    pub id: i64,
    pub team_id: i64,
    pub started_at_ms: i64,
    pub finished_at_ms: i64,
    /// The batch's notion of now (pinned by `--now-ms`, else the clock).
    pub now_ms: i64,
    pub figures: RunFigures,
    /// Most frequent first.
    pub quarantine_reasons: Vec<(String, i64)>,
    pub map: Vec<StoredMapPoint>,
}

/// A map point as stored: Tasks created by the batch are resolved to their ids.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct StoredMapPoint {
    pub x: f32,
    pub y: f32,
    pub cluster: i32,
    pub task_id: Option<i64>,
}

/// A noise segment linked to no Task, kept so that later batches can cluster it again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnlinkedSegment {
    pub document_id: String,
    pub inserted_at_ms: i64,
    pub timestamp_ms: i64,
}

/// The unlinked segments a batch clusters again ([`Store::carry_over`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CarryOver {
    /// Oldest first (by timestamp, then document_id).
    pub ids: Vec<String>,
    /// Unlinked segments in the window beyond the cap: the oldest ones.
    pub left_out: usize,
}

/// Everything one batch of one team writes, committed in one transaction by
/// [`Store::commit_batch`].
#[derive(Clone)]
pub struct BatchCommit {
    pub team_id: i64,
    /// Written to created_at/updated_at, and passed to `priority`.
    pub now_ms: i64,
    pub new_tasks: Vec<NewTask>,
    /// Applied only to Tasks that gain at least one new link in this commit, so that a rerun
    /// does not apply the same weighted update twice.
    pub centroid_updates: Vec<CentroidUpdate>,
    /// Inserted unless the team already links that document_id (then skipped, not an error).
    pub links: Vec<NewLink>,
    /// Kept with their first reason; `team_id` must equal the batch's.
    pub quarantined: Vec<Quarantine>,
    /// Added unless already present.
    pub unlinked: Vec<UnlinkedSegment>,
    /// Unlinked rows with `timestamp_ms` before this are deleted (end of the carry-over window);
    /// so are unlinked rows that are now linked.
    pub carry_over_prune_before_ms: i64,
    /// Moves the team's watermark forward; a watermark at or before the stored one is ignored.
    pub watermark: Option<Watermark>,
    pub priority: Arc<PriorityFn>,
    /// The batch's figures and map for the report (`runs` table); None writes no run row.
    pub run: Option<RunRecord>,
}

impl fmt::Debug for BatchCommit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BatchCommit")
            .field("team_id", &self.team_id)
            .field("now_ms", &self.now_ms)
            .field("new_tasks", &self.new_tasks.len())
            .field("centroid_updates", &self.centroid_updates.len())
            .field("links", &self.links.len())
            .field("quarantined", &self.quarantined.len())
            .field("unlinked", &self.unlinked.len())
            .field(
                "carry_over_prune_before_ms",
                &self.carry_over_prune_before_ms,
            )
            .field("watermark", &self.watermark)
            .field("run", &self.run.is_some())
            .finish_non_exhaustive()
    }
}

/// What a commit changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommitSummary {
    pub tasks_created: usize,
    /// Existing Tasks that gained links or a new centroid.
    pub tasks_updated: usize,
    /// The id given to each of `new_tasks`, in order; `None` where every one of its links was
    /// already stored (a rerun), in which case the Task was not kept.
    pub new_task_ids: Vec<Option<i64>>,
    pub links_inserted: usize,
    /// Links whose document_id the team already had.
    pub links_skipped: usize,
    /// Quarantine rows newly recorded (repeats keep their first reason and are not counted).
    pub quarantined: usize,
    pub unlinked_added: usize,
    pub unlinked_pruned: usize,
    pub watermark_advanced: bool,
}

/// Handle to the Task store; cheap to clone (it wraps a connection pool).
#[derive(Clone)]
pub struct Store {
    inner: Inner,
    /// Deadline and retries of reads; a commit gets the deadline only.
    retry: RetryPolicy,
    /// The SQLite database file, next to which team lock files live (None: PostgreSQL or
    /// an in-memory database).
    sqlite_path: Option<std::path::PathBuf>,
    /// The URL with any password replaced, for messages.
    display_url: String,
}

#[derive(Clone)]
enum Inner {
    Sqlite(Repo<Sqlite>),
    Postgres(Repo<Postgres>),
}

impl fmt::Debug for Store {
    /// Never prints connect options: PostgreSQL's carry the password.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.backend())
            .field("url", &self.display_url)
            .finish()
    }
}

/// Runs the same generic body against whichever backend this store holds.
macro_rules! dispatch {
    ($self:expr, $repo:ident => $body:expr) => {
        match &$self.inner {
            Inner::Sqlite($repo) => $body,
            Inner::Postgres($repo) => $body,
        }
    };
}

/// A store read under the store's deadline and retry policy (reads only: see `crate::retry`).
macro_rules! read {
    ($self:expr, $what:expr, $repo:ident => $body:expr) => {{
        let what: String = $what;
        $self
            .retry
            .run(&what, || async { Ok(dispatch!($self, $repo => $body)?) })
            .await
    }};
}

/// Large batches make statements with tens of thousands of parameters that legitimately take a
/// second; sqlx would log each at WARN with its whole text. Keep them at DEBUG.
const SLOW_STATEMENT: Duration = Duration::from_secs(2);
const SLOW_STATEMENT_LEVEL: log::LevelFilter = log::LevelFilter::Debug;

/// How long a writer waits for SQLite's lock before failing; batches commit in well under this.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(30);
const PG_MAX_CONNECTIONS: u32 = 8;
const PG_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(30);

impl Store {
    /// Opens the store named by `url` and brings its schema up to date.
    ///
    /// `sqlite://PATH` (created if missing; `sqlite::memory:` for a throwaway store) or
    /// `postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?options[search_path]=SCHEMA]`.
    pub async fn connect(url: &str) -> Result<Store> {
        let display_url = redact_url(url);
        let scrub = |e: &dyn fmt::Display| scrub_secret(&e.to_string(), url);
        let inner = if url.starts_with("sqlite:") {
            let opts = SqliteConnectOptions::from_str(url)
                .map_err(|e| {
                    anyhow::anyhow!("invalid SQLite store URL {display_url}: {}", scrub(&e))
                })?
                .log_slow_statements(SLOW_STATEMENT_LEVEL, SLOW_STATEMENT)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                // NORMAL is durable across application crashes in WAL mode; only an OS crash can
                // lose the last commits, which the watermark then simply replays.
                .synchronous(SqliteSynchronous::Normal)
                .busy_timeout(SQLITE_BUSY_TIMEOUT)
                .foreign_keys(true);
            let mut pool = SqlitePoolOptions::new();
            if url.contains(":memory:") {
                // Every connection to :memory: is a separate database: keep exactly one, forever.
                pool = pool
                    .max_connections(1)
                    .idle_timeout(None)
                    .max_lifetime(None);
            }
            // Open one connection directly first, for the same fast failure as PostgreSQL's.
            let probe = opts.connect().await.map_err(|e| {
                anyhow::anyhow!(
                    "cannot open the SQLite store {display_url}: {} (check that the directory exists and is writable)",
                    scrub(&e)
                )
            })?;
            probe.close().await.ok();
            let pool = pool.connect_with(opts).await.map_err(|e| {
                anyhow::anyhow!("cannot open the SQLite store {display_url}: {}", scrub(&e))
            })?;
            sqlx::migrate!("./migrations/sqlite")
                .run(&pool)
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "migrating the SQLite store {display_url} failed: {}",
                        scrub(&e)
                    )
                })?;
            Inner::Sqlite(Repo::new(pool, "BEGIN IMMEDIATE"))
        } else if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            let opts = PgConnectOptions::from_str(url)
                .map_err(|e| {
                    anyhow::anyhow!("invalid PostgreSQL store URL {display_url}: {}", scrub(&e))
                })?
                .log_slow_statements(SLOW_STATEMENT_LEVEL, SLOW_STATEMENT);
            // One direct connection first: the pool would retry a refused connection until its
            // acquire timeout, while this fails at once with the driver's reason.
            let probe = opts.connect().await.map_err(|e| {
                anyhow::anyhow!(
                    "cannot connect to the PostgreSQL store {display_url}: {} (is the server running and the URL right?)",
                    scrub(&e)
                )
            })?;
            probe.close().await.ok();
            let pool = PgPoolOptions::new()
                .max_connections(PG_MAX_CONNECTIONS)
                .acquire_timeout(PG_ACQUIRE_TIMEOUT)
                .connect_with(opts)
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "cannot connect to the PostgreSQL store {display_url}: {}",
                        scrub(&e)
                    )
                })?;
            sqlx::migrate!("./migrations/postgres")
                .run(&pool)
                .await
                .map_err(|e| {
                    anyhow::anyhow!(
                        "migrating the PostgreSQL store {display_url} failed: {}",
                        scrub(&e)
                    )
                })?;
            Inner::Postgres(Repo::new(pool, "BEGIN"))
        } else {
            bail!(
                "unsupported store URL {display_url}: use sqlite://PATH or postgres://USER@HOST/DB"
            );
        };
        tracing::debug!(url = %display_url, "store connected and migrated");
        let sqlite_path = match &inner {
            Inner::Sqlite(_) if !url.contains(":memory:") => SqliteConnectOptions::from_str(url)
                .ok()
                .map(|o| o.get_filename().to_path_buf()),
            _ => None,
        };
        Ok(Store {
            inner,
            display_url,
            retry: RetryPolicy::default(),
            sqlite_path,
        })
    }

    /// The same store with another deadline/retry policy for its reads.
    pub fn with_retry(mut self, retry: RetryPolicy) -> Store {
        self.retry = retry;
        self
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        match self.inner {
            Inner::Sqlite(_) => "sqlite",
            Inner::Postgres(_) => "postgres",
        }
    }

    /// Closes the pool, waiting for connections to finish (lets tests drop their schema).
    pub async fn close(&self) {
        dispatch!(self, r => r.pool.close().await)
    }

    pub async fn watermark(&self, team: i64) -> Result<Option<Watermark>> {
        read!(self, format!("reading the watermark of team {team}"), r => r.watermark(team).await)
    }

    /// All Tasks of a team with their centroids (for matching), by id.
    pub async fn tasks(&self, team: i64) -> Result<Vec<Task>> {
        read!(self, format!("reading the tasks of team {team}"), r => r.tasks(team).await)
    }

    pub async fn task(&self, team: i64, id: i64) -> Result<Option<Task>> {
        read!(self, format!("reading task {id} of team {team}"), r => r.task(team, id).await)
    }

    /// Links of one Task, oldest segment first.
    pub async fn links(&self, team: i64, task_id: i64) -> Result<Vec<Link>> {
        read!(self, format!("reading the links of task {task_id} of team {team}"), r => r.links(team, task_id).await)
    }

    /// Every linked segment of a team with its Task, by document_id (for `segclust evaluate`).
    pub async fn task_of_segments(&self, team: i64) -> Result<Vec<(String, i64)>> {
        read!(self, format!("reading the links of team {team}"), r => r.task_of_segments(team).await)
    }

    /// Which of `ids` the team already links to a Task.
    pub async fn linked_ids(&self, team: i64, ids: &[String]) -> Result<HashSet<String>> {
        read!(self, format!("looking up linked segments of team {team}"), r => r.linked_ids(team, ids).await)
    }

    /// Unlinked document_ids with `timestamp_ms >= since_ms`: the `max` most recent, given
    /// oldest first, and how many more there are.
    pub async fn carry_over(&self, team: i64, since_ms: i64, max: usize) -> Result<CarryOver> {
        read!(self, format!("reading carried-over segments of team {team}"), r => r.carry_over(team, since_ms, max).await)
    }

    /// Quarantined rows of a team, in the order they were recorded.
    pub async fn quarantined(&self, team: i64) -> Result<Vec<Quarantine>> {
        read!(self, format!("reading quarantined segments of team {team}"), r => r.quarantined(team).await)
    }

    /// The team's most recent batch runs, newest first.
    pub async fn runs(&self, team: i64, limit: usize) -> Result<Vec<Run>> {
        dispatch!(self, r => r.runs(team, limit).await)
            .with_context(|| format!("reading the runs of team {team}"))
    }

    /// Teams that have a watermark or Tasks.
    pub async fn teams(&self) -> Result<Vec<i64>> {
        read!(self, "listing teams in the store".to_string(), r => r.teams().await)
    }

    /// Writes one batch in one transaction: all of it or, on any error, nothing.
    ///
    /// Order inside: new Tasks, links (existing document_ids skipped), centroid updates of Tasks
    /// that gained links, removal of new Tasks that gained none (a rerun), aggregates and
    /// priority of every touched Task recomputed from its links, quarantine, unlinked rows and
    /// their pruning, watermark, and the batch's run row (`batch.run`).
    pub async fn commit_batch(&self, batch: &BatchCommit) -> Result<CommitSummary> {
        let team = batch.team_id;
        let summary = tokio::time::timeout(self.retry.timeout(), async {
            dispatch!(self, r => r.commit_batch(batch).await)
        })
        .await
        .map_err(|_| {
            anyhow::anyhow!(
                "timed out after {:.0} s (the transaction was abandoned)",
                self.retry.timeout_s
            )
        })
        .and_then(|r| r)
        .with_context(|| format!("committing a batch of team {team} (nothing was written)"))?;
        tracing::debug!(team, ?summary, "batch committed");
        Ok(summary)
    }

    /// Recomputes every Task's priority at `now_ms` (recency decays while nothing happens) and
    /// stores the ones that changed; returns how many changed.
    pub async fn refresh_priorities(
        &self,
        team: i64,
        now_ms: i64,
        priority: &PriorityFn,
    ) -> Result<usize> {
        dispatch!(self, r => r.refresh_priorities(team, now_ms, priority).await)
            .with_context(|| format!("refreshing priorities of team {team}"))
    }

    /// Replaces a Task's label (title, description, source, actionable); returns false when
    /// the team has no such Task.
    pub async fn update_label(
        &self,
        team: i64,
        id: i64,
        label: &crate::labeling::Label,
        now_ms: i64,
    ) -> Result<bool> {
        dispatch!(self, r => r.update_label(team, id, label, now_ms).await)
            .with_context(|| format!("relabelling task {id} of team {team}"))
    }
}

/// `url` with the password (userinfo or `password=` parameter) replaced by `***`.
pub fn redact_url(url: &str) -> String {
    match url_password(url) {
        Some(pw) if !pw.is_empty() => url.replace(pw, "***"),
        _ => url.to_string(),
    }
}

/// Removes the URL's password from any text (driver errors may echo connect options).
fn scrub_secret(text: &str, url: &str) -> String {
    match url_password(url) {
        Some(pw) if !pw.is_empty() => text.replace(pw, "***"),
        _ => text.to_string(),
    }
}

/// The password part of `scheme://user:password@host/...` or of a `password=` query parameter.
fn url_password(url: &str) -> Option<&str> {
    let rest = &url[url.find("://")? + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    if let Some(at) = authority.rfind('@')
        && let Some(colon) = authority[..at].find(':')
    {
        return Some(&authority[colon + 1..at]);
    }
    let query = &rest[rest.find('?')? + 1..];
    query
        .split('&')
        .find_map(|kv| kv.strip_prefix("password="))
        .map(|v| v.split('#').next().unwrap_or(v))
}

/// Little-endian f32 bytes, the stored form of a centroid (the same bytes as
/// `bytemuck::cast_slice` on little-endian machines, and portable to big-endian ones).
pub fn centroid_to_bytes(centroid: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(centroid.len() * 4);
    for v in centroid {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

pub fn centroid_from_bytes(bytes: &[u8]) -> Result<Vec<f32>> {
    if !bytes.len().is_multiple_of(4) {
        bail!(
            "stored centroid has {} bytes, not a whole number of f32 values; the tasks table is corrupt",
            bytes.len()
        );
    }
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_userinfo_password() {
        let u = "postgres://alice:s3cr%2Ft@db.example:5432/segclust?sslmode=require";
        let r = redact_url(u);
        assert!(!r.contains("s3cr"), "{r}");
        assert_eq!(
            r,
            "postgres://alice:***@db.example:5432/segclust?sslmode=require"
        );
        assert_eq!(redact_url("postgres://bob@h/db"), "postgres://bob@h/db");
        assert_eq!(
            redact_url("postgres://h/db?user=x&password=hunter2&sslmode=disable"),
            "postgres://h/db?user=x&password=***&sslmode=disable"
        );
        assert_eq!(redact_url("sqlite:///tmp/x.db"), "sqlite:///tmp/x.db");
    }

    #[test]
    fn centroid_bytes_are_little_endian_and_round_trip() {
        let c = vec![1.0f32, -0.0, f32::MIN_POSITIVE, 3.25e-7, f32::MAX];
        let b = centroid_to_bytes(&c);
        assert_eq!(&b[..4], &[0, 0, 0x80, 0x3f]);
        let back = centroid_from_bytes(&b).expect("whole f32s");
        assert_eq!(
            back.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
            c.iter().map(|v| v.to_bits()).collect::<Vec<_>>()
        );
        assert!(centroid_from_bytes(&b[..5]).is_err());
    }
}
