//! The production source: segment embeddings in ClickHouse's `document_embeddings`.
//!
//! One SQL dialect for old and new servers: the queries avoid server-side `{name:Type}`
//! parameters, `DateTime64`-only functions and tuple comparison, because the ClickHouse the
//! tests run against (Debian's 18.16) has none of them, while production runs a current
//! release. Values are always bound client-side by the `clickhouse` crate (escaped); table and
//! column names come from configuration, are checked to be plain identifiers and are quoted.
//!
//! Column types differ between deployments (`DateTime` or `DateTime64(3)` or epoch
//! milliseconds; `Array(Float32)` or `Array(Float64)`), so the source reads the table's schema
//! from `system.columns` once and picks the conversion for each column. Rows always arrive
//! with millisecond timestamps and `f32` embeddings, whatever the table stores.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use clickhouse::Client;
use serde::Deserialize;
use tokio::sync::OnceCell;

use super::SourcePage;
use crate::retry::RetryPolicy;
use crate::segment::{RawSegment, Watermark};

/// Where and how to read segments from ClickHouse (`[source.clickhouse]` in the config file).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClickHouseConfig {
    /// HTTP(S) endpoint, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    pub database: String,
    pub table: String,
    pub user: String,
    /// Name of the environment variable that holds the password. The password itself is
    /// never read from the config file, logged or stored.
    pub password_env: String,
    /// `column = value` equality filters every query applies. The defaults select the video
    /// segments of one embedding model, as the Python system did.
    pub filters: BTreeMap<String, String>,
    pub columns: ClickHouseColumns,
    /// Row ids per query when carried-over segments are re-read by id.
    pub ids_per_query: usize,
    /// Off by default. A promise that no row is inserted more than this long after its
    /// `timestamp` (e.g. "2d"), which lets page reads skip the days before
    /// `watermark - lag` on a table ordered or partitioned by time, instead of scanning the
    /// team's whole history each run. A row that breaks the promise and arrives after the
    /// watermark is never read; `segclust config check --connect` counts such rows.
    pub max_ingestion_lag: Option<String>,
    pub retry: RetryPolicy,
}

impl Default for ClickHouseConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8123".into(),
            database: "default".into(),
            table: "document_embeddings".into(),
            user: "default".into(),
            password_env: "SEGCLUST_CLICKHOUSE_PASSWORD".into(),
            filters: BTreeMap::from([
                ("product".into(), "session-replay".into()),
                ("document_type".into(), "video-segment".into()),
                ("rendering".into(), "video-analysis".into()),
                ("model_name".into(), "text-embedding-3-large-3072".into()),
            ]),
            columns: ClickHouseColumns::default(),
            ids_per_query: 2_000,
            max_ingestion_lag: None,
            retry: RetryPolicy::default(),
        }
    }
}

/// Column names of the segments table.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClickHouseColumns {
    pub team_id: String,
    pub document_id: String,
    pub content: String,
    pub metadata: String,
    pub timestamp: String,
    pub inserted_at: String,
    pub embedding: String,
}

impl Default for ClickHouseColumns {
    fn default() -> Self {
        Self {
            team_id: "team_id".into(),
            document_id: "document_id".into(),
            content: "content".into(),
            metadata: "metadata".into(),
            timestamp: "timestamp".into(),
            inserted_at: "inserted_at".into(),
            embedding: "embedding".into(),
        }
    }
}

/// One row as the queries below shape it.
#[derive(clickhouse::Row, Deserialize)]
struct Row {
    team_id: i64,
    document_id: String,
    content: String,
    metadata: String,
    timestamp_ms: i64,
    inserted_at_ms: i64,
    embedding: Vec<f32>,
}

impl From<Row> for RawSegment {
    fn from(r: Row) -> Self {
        RawSegment {
            team_id: r.team_id,
            document_id: r.document_id,
            content: r.content,
            metadata: r.metadata,
            timestamp_ms: r.timestamp_ms,
            inserted_at_ms: r.inserted_at_ms,
            embedding: r.embedding,
        }
    }
}

/// SQL pieces that depend on the table's column types, found once per source.
#[derive(Debug)]
struct Shape {
    /// `SELECT <select> FROM <from>`: the seven columns of [`Row`], in order.
    select: String,
    from: String,
    /// Expressions for the ordering key, usable in WHERE and ORDER BY.
    inserted_ms: String,
    document_id: String,
    team_id: String,
    /// `AND col = ? ...` for the configured filters (values bound per query).
    filters: String,
    /// The timestamp column in epoch ms, and `<column> >= <? epoch ms>` written on the raw
    /// column so that a key or partition on a function of it (`toDate(timestamp)`) can prune.
    timestamp_ms: String,
    timestamp_at_least: String,
}

pub struct ClickHouseSource {
    client: Client,
    cfg: ClickHouseConfig,
    /// `max_ingestion_lag` in ms.
    lag_ms: Option<i64>,
    shape: OnceCell<Shape>,
}

impl std::fmt::Debug for ClickHouseSource {
    // The client holds the password; never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClickHouseSource")
            .field("url", &self.cfg.url)
            .field(
                "table",
                &format!("{}.{}", self.cfg.database, self.cfg.table),
            )
            .finish_non_exhaustive()
    }
}

impl ClickHouseSource {
    /// Builds the client. Nothing is sent until the first read; a wrong table or column then
    /// fails with a message that names it.
    pub fn new(cfg: ClickHouseConfig) -> Result<Self> {
        for name in [&cfg.database, &cfg.table]
            .into_iter()
            .chain(cfg.filters.keys())
            .chain(cfg.columns.all())
        {
            check_identifier(name)?;
        }
        if !(cfg.url.starts_with("http://") || cfg.url.starts_with("https://")) {
            bail!(
                "ClickHouse url {:?} must start with http:// or https:// (the HTTP interface, port 8123 or 8443)",
                cfg.url
            );
        }
        let lag_ms = match &cfg.max_ingestion_lag {
            None => None,
            Some(lag) => {
                let d = crate::config::parse_duration(lag)
                    .context("source.clickhouse.max_ingestion_lag")?;
                Some(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            }
        };
        let mut client = Client::default()
            .with_url(&cfg.url)
            .with_user(&cfg.user)
            .with_database(&cfg.database)
            // RowBinaryWithNamesAndTypes (the validating format) does not exist before 22.x.
            .with_validation(false)
            .with_setting(
                "max_execution_time",
                format!("{}", cfg.retry.timeout_s.ceil().max(1.0)),
            );
        if let Ok(p) = std::env::var(&cfg.password_env)
            && !p.is_empty()
        {
            client = client.with_password(p);
        }
        Ok(Self {
            client,
            cfg,
            lag_ms,
            shape: OnceCell::new(),
        })
    }

    pub fn describe(&self) -> String {
        format!(
            "ClickHouse {} table {}.{}",
            crate::store::redact_url(&self.cfg.url),
            self.cfg.database,
            self.cfg.table
        )
    }

    async fn shape(&self) -> Result<&Shape> {
        self.shape
            .get_or_try_init(|| async {
                let types = self
                    .cfg
                    .retry
                    .run(
                        "reading the segments table's schema from ClickHouse",
                        || self.column_types(),
                    )
                    .await?;
                Shape::new(&self.cfg, &types)
            })
            .await
    }

    async fn column_types(&self) -> Result<BTreeMap<String, String>> {
        let rows: Vec<(String, String)> = self
            .client
            .query("SELECT name, type FROM system.columns WHERE database = ? AND table = ?")
            .bind(&self.cfg.database)
            .bind(&self.cfg.table)
            .fetch_all()
            .await
            .with_context(|| format!("querying system.columns on {}", self.describe()))?;
        Ok(rows.into_iter().collect())
    }

    /// Which parts a window's condition has (see [`Shape::window`]).
    fn window(&self, after: bool, until: bool) -> Window {
        Window {
            after,
            lag: after && self.lag_ms.is_some(),
            until,
        }
    }

    fn filter_values(&self) -> impl Iterator<Item = &String> {
        self.cfg.filters.values()
    }

    /// `sql` (written with [`Shape::window`]) with the window's values bound, in its order.
    fn bind_window(
        &self,
        sql: &str,
        team: i64,
        after: Option<&Watermark>,
        until_ms: Option<i64>,
    ) -> clickhouse::query::Query {
        let mut q = self.client.query(sql).bind(team);
        for v in self.filter_values() {
            q = q.bind(v);
        }
        if let Some(w) = after {
            q = q
                .bind(w.inserted_at_ms)
                .bind(w.inserted_at_ms)
                .bind(&w.document_id);
            if let Some(lag) = self.lag_ms {
                q = q.bind(w.inserted_at_ms.saturating_sub(lag));
            }
        }
        if let Some(u) = until_ms {
            q = q.bind(u);
        }
        q
    }

    /// Up to `limit` rows of `team` strictly after `after` and, when `until_ms` is given,
    /// inserted before it; in `(inserted_at, document_id)` order.
    pub async fn read_after(
        &self,
        team: i64,
        after: Option<&Watermark>,
        until_ms: Option<i64>,
        limit: usize,
    ) -> Result<SourcePage> {
        let s = self.shape().await?;
        let sql = s.page(self.window(after.is_some(), until_ms.is_some()));
        let what = format!(
            "reading team {team}'s new segments from {}",
            self.describe()
        );
        let rows = self
            .cfg
            .retry
            .run(&what, || async {
                let q = self.bind_window(&sql, team, after, until_ms);
                fetch(q.bind(limit as u64)).await
            })
            .await?;
        let last = rows.last().map(|r| Watermark {
            inserted_at_ms: r.inserted_at_ms,
            document_id: r.document_id.clone(),
        });
        Ok(SourcePage {
            rows,
            rejected: Vec::new(),
            last,
        })
    }

    /// Rows of `team` whose document_id is in `ids`, in `(inserted_at, document_id)` order.
    pub async fn read_by_ids(&self, team: i64, ids: &[String]) -> Result<SourcePage> {
        let s = self.shape().await?;
        let mut rows = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(self.cfg.ids_per_query.max(1)) {
            let marks = vec!["?"; chunk.len()].join(", ");
            let sql = format!(
                "SELECT {} FROM {} WHERE {} = ?{} AND {} IN ({marks})",
                s.select, s.from, s.team_id, s.filters, s.document_id
            );
            let what = format!(
                "re-reading {} carried-over segments of team {team} from {}",
                chunk.len(),
                self.describe()
            );
            let part = self
                .cfg
                .retry
                .run(&what, || async {
                    let mut q = self.client.query(&sql).bind(team);
                    for v in self.filter_values() {
                        q = q.bind(v);
                    }
                    for id in chunk {
                        q = q.bind(id);
                    }
                    fetch(q).await
                })
                .await?;
            rows.extend(part);
        }
        rows.sort_by(|a, b| {
            (a.inserted_at_ms, &a.document_id).cmp(&(b.inserted_at_ms, &b.document_id))
        });
        Ok(SourcePage {
            rows,
            rejected: Vec::new(),
            last: None,
        })
    }

    /// Distinct team ids that have segments, ascending.
    pub async fn teams(&self) -> Result<Vec<i64>> {
        let s = self.shape().await?;
        let sql = format!(
            "SELECT DISTINCT {t} FROM {} WHERE 1 = 1{} ORDER BY {t}",
            s.from,
            s.filters,
            t = s.team_id
        );
        let what = format!("listing teams in {}", self.describe());
        self.cfg
            .retry
            .run(&what, || async {
                let mut q = self.client.query(&sql);
                for v in self.filter_values() {
                    q = q.bind(v);
                }
                Ok(q.fetch_all::<i64>().await?)
            })
            .await
    }

    /// What `segclust config check --connect` says of this source: the server's version, how
    /// each column is read, the teams the filters select, and, where the server can EXPLAIN
    /// (not 18.16), whether a team's page read is served by the table's primary key. Lines
    /// starting with `WARNING:` need the operator's attention; an error means the job cannot
    /// read at all.
    pub async fn check(&self) -> Result<Vec<String>> {
        let version: String = self
            .client
            .query("SELECT version()")
            .fetch_one()
            .await
            .with_context(|| format!("connecting to {}", self.describe()))?;
        let mut lines = vec![format!("{} answers: ClickHouse {version}", self.describe())];
        let types = self.column_types().await?;
        // The reads below (`teams`) use the shape; build it once from these types.
        let s = self
            .shape
            .get_or_try_init(|| async { Shape::new(&self.cfg, &types) })
            .await?;
        let c = &self.cfg.columns;
        for (role, col) in [
            ("team id", &c.team_id),
            ("document id", &c.document_id),
            ("timestamp", &c.timestamp),
            ("inserted at", &c.inserted_at),
            ("embedding", &c.embedding),
        ] {
            let ty = types.get(col.as_str()).map_or("?", String::as_str);
            lines.push(format!("  {role}: `{col}` {ty}"));
        }
        let filters: Vec<String> = self
            .cfg
            .filters
            .iter()
            .map(|(k, v)| format!("{k} = {v:?}"))
            .collect();
        let teams = self.teams().await?;
        lines.push(format!(
            "  {} team(s) have rows where {}",
            teams.len(),
            if filters.is_empty() {
                "(no filters)".to_string()
            } else {
                filters.join(" AND ")
            }
        ));
        let Some(&team) = teams.first() else {
            lines.push(
                "WARNING: no rows match the filters: check source.clickhouse.filters and the table"
                    .into(),
            );
            return Ok(lines);
        };
        let explain = format!("EXPLAIN indexes = 1 {}", s.page(self.window(false, false)));
        let plan = self
            .bind_window(&explain, team, None, None)
            .bind(1u64)
            .fetch_all::<String>()
            .await;
        lines.push(match plan.as_deref().map(primary_key_use) {
            Ok(Some((keys, read, total))) if keys.first() == Some(&c.team_id) => format!(
                "  team {team}'s reads are served by the primary key ({}): {read} of {total} granules",
                keys.join(", ")
            ),
            Ok(_) => format!(
                "WARNING: team {team}'s reads are not served by the table's primary key, so every \
                 run scans the whole table: order the table by `{}` first",
                c.team_id
            ),
            // 18.16 and other servers before EXPLAIN indexes: nothing to say either way.
            Err(_) => "  index use not checked: this server has no EXPLAIN indexes".to_string(),
        });
        if let (Some(lag_ms), Some(lag)) = (self.lag_ms, &self.cfg.max_ingestion_lag) {
            let sql = format!(
                "SELECT toUInt64(count()) FROM {} WHERE 1 = 1{} AND {} < {} - toInt64(?)",
                s.from, s.filters, s.timestamp_ms, s.inserted_ms
            );
            let mut q = self.client.query(&sql);
            for v in self.filter_values() {
                q = q.bind(v);
            }
            let late: u64 = q
                .bind(lag_ms)
                .fetch_one()
                .await
                .context("counting rows inserted later than max_ingestion_lag")?;
            lines.push(if late == 0 {
                format!(
                    "  every row was inserted within max_ingestion_lag ({lag}) of its timestamp, \
                     so page reads skip the days before the watermark less {lag}"
                )
            } else {
                format!(
                    "WARNING: {late} row(s) were inserted more than max_ingestion_lag ({lag}) \
                     after their timestamp; a run skips such rows when they arrive after its \
                     watermark: raise source.clickhouse.max_ingestion_lag or remove it"
                )
            });
        }
        Ok(lines)
    }

    /// How many rows of `team` lie after `after` and before `until_ms` (for progress bars).
    pub async fn count(
        &self,
        team: i64,
        after: Option<&Watermark>,
        until_ms: Option<i64>,
    ) -> Result<u64> {
        let s = self.shape().await?;
        let sql = format!(
            "SELECT toUInt64(count()) FROM {} WHERE {}",
            s.from,
            s.window(self.window(after.is_some(), until_ms.is_some()))
        );
        let what = format!("counting team {team}'s segments in {}", self.describe());
        self.cfg
            .retry
            .run(&what, || async {
                let q = self.bind_window(&sql, team, after, until_ms);
                Ok(q.fetch_one::<u64>().await?)
            })
            .await
    }
}

/// Streams a query's rows into segments (no second copy of a page's embeddings).
async fn fetch(q: clickhouse::query::Query) -> Result<Vec<RawSegment>> {
    let mut cursor = q.fetch::<Row>()?;
    let mut rows = Vec::new();
    while let Some(row) = cursor.next().await? {
        rows.push(RawSegment::from(row));
    }
    Ok(rows)
}

impl ClickHouseColumns {
    fn all(&self) -> [&String; 7] {
        [
            &self.team_id,
            &self.document_id,
            &self.content,
            &self.metadata,
            &self.timestamp,
            &self.inserted_at,
            &self.embedding,
        ]
    }
}

impl Shape {
    fn new(cfg: &ClickHouseConfig, types: &BTreeMap<String, String>) -> Result<Shape> {
        let table = format!("{}.{}", cfg.database, cfg.table);
        if types.is_empty() {
            bail!(
                "ClickHouse has no table {table} (or it has no columns): set source.clickhouse.database and .table"
            );
        }
        let c = &cfg.columns;
        let ty = |name: &str| -> Result<&str> {
            types.get(name).map(String::as_str).with_context(|| {
                format!(
                    "table {table} has no column {name:?}: set source.clickhouse.columns (it has: {})",
                    types.keys().cloned().collect::<Vec<_>>().join(", ")
                )
            })
        };
        for f in cfg.filters.keys() {
            ty(f)?;
        }
        let q = quote;
        let team_id = format!("toInt64({})", q(&c.team_id));
        let document_id = format!("toString({})", q(&c.document_id));
        let text = |col: &str| format!("ifNull(toString({}), '')", q(col));
        let timestamp_kind = TimeKind::of(&c.timestamp, ty(&c.timestamp)?)?;
        let timestamp = timestamp_kind.millis(&c.timestamp);
        let timestamp_at_least = timestamp_kind.at_least_millis(&c.timestamp);
        let inserted_ms = TimeKind::of(&c.inserted_at, ty(&c.inserted_at)?)?.millis(&c.inserted_at);
        let embedding = match strip_wrappers(ty(&c.embedding)?) {
            "Array(Float32)" => q(&c.embedding),
            "Array(Float64)" => format!("arrayMap(x -> toFloat32(x), {})", q(&c.embedding)),
            other => bail!(
                "column {:?} of {table} is {other}; segclust reads Array(Float32) or Array(Float64)",
                c.embedding
            ),
        };
        ty(&c.content)?;
        ty(&c.metadata)?;
        let select = [
            team_id.clone(),
            document_id.clone(),
            text(&c.content),
            text(&c.metadata),
            timestamp.clone(),
            inserted_ms.clone(),
            embedding,
        ]
        .join(", ");
        let filters = cfg
            .filters
            .keys()
            .map(|k| format!(" AND {} = ?", q(k)))
            .collect();
        Ok(Shape {
            select,
            from: format!("{}.{}", q(&cfg.database), q(&cfg.table)),
            inserted_ms,
            document_id,
            team_id,
            filters,
            timestamp_ms: timestamp,
            timestamp_at_least,
        })
    }
}

impl Shape {
    /// A page of a team's rows in watermark order (`read_after`); bind with `bind_window`,
    /// then the row limit.
    fn page(&self, window: Window) -> String {
        format!(
            "SELECT {} FROM {} WHERE {} ORDER BY {}, {} LIMIT ?",
            self.select,
            self.from,
            self.window(window),
            self.inserted_ms,
            self.document_id
        )
    }

    /// The condition of a team's rows strictly after a watermark and before `until`:
    /// `team = ? AND <filters> [AND after (inserted, id) [AND timestamp >= ?]]
    /// [AND inserted < ?]`. Page reads and counts share it so they can never disagree about a
    /// window; `bind_window` binds it.
    fn window(&self, w: Window) -> String {
        let mut sql = format!("{} = ?{}", self.team_id, self.filters);
        if w.after {
            sql += &format!(
                " AND ({ms} > ? OR ({ms} = ? AND {id} > ?))",
                ms = self.inserted_ms,
                id = self.document_id
            );
            if w.lag {
                sql += &format!(" AND {}", self.timestamp_at_least);
            }
        }
        if w.until {
            sql += &format!(" AND {} < ?", self.inserted_ms);
        }
        sql
    }
}

/// The parts of a window's condition: after a watermark, with the ingestion-lag bound (only
/// after a watermark), before an insertion time.
#[derive(Clone, Copy, Debug)]
struct Window {
    after: bool,
    lag: bool,
    until: bool,
}

/// The primary key's columns and the granules it leaves to read, (keys, read, total), from
/// the lines of an `EXPLAIN indexes = 1` plan; None when the plan shows no primary key use.
pub fn primary_key_use(plan: &[String]) -> Option<(Vec<String>, usize, usize)> {
    // Lines are indented with the plan tree's box-drawing characters.
    let plan: Vec<&str> = plan
        .iter()
        .map(|l| {
            l.trim_start_matches(|c: char| c.is_whitespace() || "│├└─".contains(c))
                .trim_end()
        })
        .collect();
    let at = plan.iter().position(|l| *l == "PrimaryKey")?;
    let mut keys = Vec::new();
    let mut in_keys = false;
    for l in &plan[at + 1..] {
        if let Some(g) = l.strip_prefix("Granules:") {
            let (read, total) = g.trim().split_once('/')?;
            return Some((keys, read.parse().ok()?, total.parse().ok()?));
        }
        if *l == "Keys:" {
            in_keys = true;
        } else if l.contains(':') {
            in_keys = false;
        } else if in_keys {
            keys.push(l.to_string());
        }
    }
    None
}

/// `LowCardinality(...)`/`Nullable(...)` do not change how a value converts.
fn strip_wrappers(ty: &str) -> &str {
    let mut t = ty.trim();
    for w in ["LowCardinality(", "Nullable("] {
        if let Some(inner) = t.strip_prefix(w).and_then(|s| s.strip_suffix(')')) {
            t = inner;
        }
    }
    t
}

/// How a time column holds its instant; decides the SQL that reads it and bounds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TimeKind {
    DateTime64,
    DateTime,
    Date,
    /// Integer columns are taken to hold epoch milliseconds already.
    EpochMillis,
}

impl TimeKind {
    fn of(col: &str, ty: &str) -> Result<Self> {
        let t = strip_wrappers(ty);
        Ok(if t.starts_with("DateTime64") {
            Self::DateTime64
        } else if t.starts_with("DateTime") {
            Self::DateTime
        } else if t == "Date" {
            Self::Date
        } else if t.starts_with("Int") || t.starts_with("UInt") {
            Self::EpochMillis
        } else {
            bail!(
                "time column {col:?} is {ty}; segclust reads DateTime, DateTime64 or integer epoch milliseconds"
            )
        })
    }

    /// The column as epoch milliseconds, in SQL both old and new servers accept.
    fn millis(self, col: &str) -> String {
        let c = quote(col);
        match self {
            Self::DateTime64 => format!("toInt64(toUnixTimestamp64Milli({c}))"),
            Self::DateTime | Self::Date => format!("toInt64(toUnixTimestamp({c})) * 1000"),
            Self::EpochMillis => format!("toInt64({c})"),
        }
    }

    /// `<col> >= <a bound epoch-ms value>` on the raw column (never a conversion of it), so
    /// that the server can prune granules and partitions by a key on a monotonic function of
    /// the column. Rounded down where the column is coarser than ms, so that no row at the
    /// bound is left out.
    fn at_least_millis(self, col: &str) -> String {
        let c = quote(col);
        match self {
            Self::DateTime64 => format!("{c} >= fromUnixTimestamp64Milli(toInt64(?))"),
            Self::DateTime => format!("{c} >= toDateTime(intDiv(toInt64(?), 1000))"),
            // A day boundary depends on the server's time zone; one day more loses nothing.
            Self::Date => format!("{c} >= toDate(toDateTime(intDiv(toInt64(?), 1000))) - 1"),
            Self::EpochMillis => format!("{c} >= toInt64(?)"),
        }
    }
}

fn quote(identifier: &str) -> String {
    format!("`{identifier}`")
}

/// Names from configuration go into SQL text, so they must be plain identifiers.
fn check_identifier(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !ok {
        bail!(
            "ClickHouse name {name:?} in source.clickhouse is not a plain identifier (letters, digits, _)"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn types(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    fn production_types() -> BTreeMap<String, String> {
        types(&[
            ("team_id", "Int64"),
            ("product", "LowCardinality(String)"),
            ("document_type", "LowCardinality(String)"),
            ("rendering", "LowCardinality(String)"),
            ("model_name", "LowCardinality(String)"),
            ("document_id", "String"),
            ("timestamp", "DateTime64(3, 'UTC')"),
            ("inserted_at", "DateTime64(3, 'UTC')"),
            ("content", "String"),
            ("metadata", "String"),
            ("embedding", "Array(Float64)"),
        ])
    }

    #[test]
    fn picks_conversions_from_column_types() {
        let s = Shape::new(&ClickHouseConfig::default(), &production_types()).unwrap();
        assert!(
            s.inserted_ms
                .contains("toUnixTimestamp64Milli(`inserted_at`)")
        );
        assert!(
            s.select
                .contains("arrayMap(x -> toFloat32(x), `embedding`)")
        );
        assert_eq!(s.from, "`default`.`document_embeddings`");
        assert_eq!(s.filters.matches("= ?").count(), 4);

        let mut old = production_types();
        old.insert("inserted_at".into(), "DateTime".into());
        old.insert("embedding".into(), "Array(Float32)".into());
        let s = Shape::new(&ClickHouseConfig::default(), &old).unwrap();
        assert_eq!(
            s.inserted_ms,
            "toInt64(toUnixTimestamp(`inserted_at`)) * 1000"
        );
        assert!(s.select.ends_with("`embedding`"));
    }

    #[test]
    fn names_what_is_missing() {
        let mut t = production_types();
        t.remove("rendering");
        let err = Shape::new(&ClickHouseConfig::default(), &t).unwrap_err();
        assert!(format!("{err:#}").contains("no column \"rendering\""));
        let err = Shape::new(&ClickHouseConfig::default(), &BTreeMap::new()).unwrap_err();
        assert!(format!("{err:#}").contains("no table default.document_embeddings"));
        t = production_types();
        t.insert("embedding".into(), "String".into());
        assert!(Shape::new(&ClickHouseConfig::default(), &t).is_err());
    }

    #[test]
    fn reads_primary_key_use_from_an_explain_plan() {
        // As ClickHouse 26.9 prints it (abridged).
        let plan: Vec<String> = [
            "    │     └──ReadFromMergeTree (db.document_embeddings)",
            "    │           Indexes:",
            "    │             PrimaryKey",
            "    │               Keys:",
            "    │                 team_id",
            "    │                 product",
            "    │               Condition: (toInt64(team_id) in [2, 2])",
            "    │               Parts: 1/1",
            "    │               Granules: 13/38",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            primary_key_use(&plan),
            Some((vec!["team_id".into(), "product".into()], 13, 38))
        );
        assert_eq!(primary_key_use(&plan[..3]), None);
    }

    #[test]
    fn rejects_names_that_are_not_identifiers() {
        for bad in ["", "a b", "x;DROP TABLE t", "1abc", "a`b"] {
            assert!(check_identifier(bad).is_err(), "{bad:?}");
        }
        for good in ["document_embeddings", "_x1", "Team_ID"] {
            assert!(check_identifier(good).is_ok(), "{good:?}");
        }
        let cfg = ClickHouseConfig {
            table: "t; DROP TABLE x".into(),
            ..Default::default()
        };
        assert!(ClickHouseSource::new(cfg).is_err());
    }
}
