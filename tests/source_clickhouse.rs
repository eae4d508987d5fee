//! The ClickHouse source against two ClickHouse engines: Debian's 18.16 as a real server
//! (SEGCLUST_TEST_CLICKHOUSE), and a current release (26.9, SEGCLUST_TEST_CLICKHOUSE_CURRENT)
//! with production's exact table, whose engine is chDB behind tools/clickhouse_current.py. The
//! same SQL must work on both: the source reads the table's types and picks its conversions.
//! tools/test.sh starts both. Each test makes its own database. No server means a failing
//! test, never a skipped one.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use segclust::device::Device;
use segclust::labeling::FallbackLabeler;
use segclust::pipeline::{PipelineConfig, run_team};
use segclust::retry::RetryPolicy;
use segclust::segment::Watermark;
use segclust::source::{ClickHouseConfig, Source, primary_key_use};
use segclust::store::Store;
use serde::Serialize;

/// The two ClickHouse engines every source test runs against.
#[derive(Clone, Copy, Debug)]
enum Server {
    /// Debian's clickhouse-server 18.16, a real server (tools/clickhouse.sh start). Its table
    /// has the types 18.16 offers: DateTime (seconds) and String for the filter columns.
    Debian,
    /// A current ClickHouse (26.9, chDB behind tools/clickhouse_current.py) with production's
    /// exact table: DateTime64(3, 'UTC'), LowCardinality(String) filters, a
    /// ReplacingMergeTree ordered by (team_id, toDate(timestamp), ...).
    Current,
}

impl Server {
    fn url(self) -> String {
        let var = match self {
            Server::Debian => "SEGCLUST_TEST_CLICKHOUSE",
            Server::Current => "SEGCLUST_TEST_CLICKHOUSE_CURRENT",
        };
        std::env::var(var).unwrap_or_else(|_| {
            panic!(
                "{var} is not set: run the tests with tools/test.sh, which starts ClickHouse 18.16 \
                 (Debian package clickhouse-server) and a current ClickHouse engine (chdb-core \
                 from PyPI) with `tools/clickhouse.sh start` and `start-current`, or start them \
                 and set {var} to their HTTP URLs"
            )
        })
    }

    fn client(self) -> clickhouse::Client {
        clickhouse::Client::default()
            .with_url(self.url())
            .with_validation(false)
    }

    /// Milliseconds between the test rows' distinct insertion times: whole seconds where the
    /// column is DateTime, a quarter second where it is DateTime64(3), so that sub-second
    /// order is tested where it exists.
    fn tick_ms(self) -> i64 {
        match self {
            Server::Debian => 1000,
            Server::Current => 250,
        }
    }

    /// A fresh database with a `document_embeddings` table shaped as described above.
    async fn fresh_db(self) -> String {
        static N: AtomicUsize = AtomicUsize::new(0);
        let db = format!(
            "segclust_test_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        self.exec(&format!("CREATE DATABASE {db}")).await;
        let ddl = match self {
            Server::Debian => format!(
                "CREATE TABLE {db}.document_embeddings (team_id Int64, product String, \
                 document_type String, rendering String, model_name String, document_id String, \
                 timestamp DateTime, inserted_at DateTime, content String, metadata String, \
                 embedding Array(Float64)) ENGINE = MergeTree ORDER BY (team_id, inserted_at, document_id)"
            ),
            // Production's DDL (PostHog's posthog_document_embeddings), with small granules so
            // that a few hundred test rows span many of them.
            Server::Current => format!(
                "CREATE TABLE {db}.document_embeddings (team_id Int64, \
                 product LowCardinality(String), document_type LowCardinality(String), \
                 model_name LowCardinality(String), rendering LowCardinality(String), \
                 document_id String, timestamp DateTime64(3, 'UTC'), \
                 inserted_at DateTime64(3, 'UTC'), content String, metadata String, \
                 embedding Array(Float64)) ENGINE = ReplacingMergeTree(inserted_at) \
                 ORDER BY (team_id, toDate(timestamp), product, document_type, model_name, \
                 rendering, cityHash64(document_id)) SETTINGS index_granularity = 8"
            ),
        };
        self.exec(&ddl).await;
        db
    }

    /// Runs a statement that returns nothing (DDL, SYSTEM); any error fails the test.
    async fn exec(self, sql: &str) {
        self.client()
            .query(sql)
            .execute()
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }

    async fn insert(self, db: &str, rows: &[ChRow]) {
        self.insert_into(db, "document_embeddings", rows).await
    }

    async fn insert_into(self, db: &str, table: &str, rows: &[ChRow]) {
        let c = self.client().with_database(db);
        match self {
            Server::Debian => {
                let mut ins = c.insert::<RowSeconds>(table).await.unwrap();
                for r in rows {
                    ins.write(&RowSeconds::from(r)).await.expect("write row");
                }
                ins.end().await.expect("end insert");
            }
            Server::Current => {
                let mut ins = c.insert::<ChRow>(table).await.unwrap();
                for r in rows {
                    ins.write(r).await.expect("write row");
                }
                ins.end().await.expect("end insert");
            }
        }
    }

    fn config(self, db: &str) -> ClickHouseConfig {
        ClickHouseConfig {
            url: self.url(),
            database: db.into(),
            ids_per_query: 3,
            retry: RetryPolicy {
                attempts: 2,
                timeout_s: 30.0,
                backoff_s: 0.05,
                max_backoff_s: 0.1,
            },
            ..ClickHouseConfig::default()
        }
    }
}

/// Each named test, once per server: `name::clickhouse_18_16` and `name::clickhouse_current`.
macro_rules! on_both_servers {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test]
            async fn clickhouse_18_16() {
                super::$name(super::Server::Debian).await
            }
            #[tokio::test]
            async fn clickhouse_current() {
                super::$name(super::Server::Current).await
            }
        }
    )*};
}

on_both_servers!(
    an_ingestion_lag_bounds_reads_by_timestamp_and_the_check_counts_what_it_would_skip,
    pages_follow_the_watermark_without_skips_or_repeats,
    by_ids_across_chunks_and_windows,
    wrong_table_or_column_names_what_is_missing,
    pipeline_from_clickhouse_into_postgres,
    config_check_connects_and_says_what_it_found,
);

/// A row of the test table, in its column order (RowBinary is positional), with times as
/// DateTime64(3) takes them: epoch milliseconds.
#[derive(clickhouse::Row, Serialize, Clone, Debug)]
struct ChRow {
    team_id: i64,
    product: String,
    document_type: String,
    rendering: String,
    model_name: String,
    document_id: String,
    timestamp: i64,
    inserted_at: i64,
    content: String,
    metadata: String,
    embedding: Vec<f64>,
}

/// The same row for a DateTime table: seconds (the tests give 18.16 whole seconds only).
#[derive(clickhouse::Row, Serialize)]
struct RowSeconds {
    team_id: i64,
    product: String,
    document_type: String,
    rendering: String,
    model_name: String,
    document_id: String,
    timestamp: u32,
    inserted_at: u32,
    content: String,
    metadata: String,
    embedding: Vec<f64>,
}

impl From<&ChRow> for RowSeconds {
    fn from(r: &ChRow) -> Self {
        let seconds = |ms: i64| {
            assert_eq!(ms % 1000, 0, "a DateTime column holds whole seconds");
            u32::try_from(ms / 1000).expect("a DateTime")
        };
        RowSeconds {
            team_id: r.team_id,
            product: r.product.clone(),
            document_type: r.document_type.clone(),
            rendering: r.rendering.clone(),
            model_name: r.model_name.clone(),
            document_id: r.document_id.clone(),
            timestamp: seconds(r.timestamp),
            inserted_at: seconds(r.inserted_at),
            content: r.content.clone(),
            metadata: r.metadata.clone(),
            embedding: r.embedding.clone(),
        }
    }
}

const T0_MS: i64 = 1_700_000_000_000;

fn row(team: i64, id: &str, inserted_ms: i64, emb: Vec<f64>) -> ChRow {
    ChRow {
        team_id: team,
        product: "session-replay".into(),
        document_type: "video-segment".into(),
        rendering: "video-analysis".into(),
        model_name: "text-embedding-3-large-3072".into(),
        document_id: id.into(),
        timestamp: inserted_ms - 5000,
        inserted_at: inserted_ms,
        content: format!("user {id} clicked submit? nothing happened"),
        metadata: format!(r#"{{"session_id":"s-{id}","distinct_id":"u-{id}"}}"#),
        embedding: emb,
    }
}

/// `n` rows spread over teams 1, 2 and 3 in turn, `tick_ms` apart, ids `{prefix}000`, ...
fn three_teams(n: usize, prefix: &str, tick_ms: i64) -> Vec<ChRow> {
    (0..n)
        .map(|i| {
            let t = T0_MS + i as i64 * tick_ms;
            row(1 + (i % 3) as i64, &format!("{prefix}{i:03}"), t, emb(i))
        })
        .collect()
}

fn emb(i: usize) -> Vec<f64> {
    (0..8)
        .map(|j| ((i * 8 + j) as f64 * 0.37).sin() + 0.01)
        .collect()
}

async fn pages_follow_the_watermark_without_skips_or_repeats(server: Server) {
    let db = server.fresh_db().await;
    let tick = server.tick_ms();
    // 25 rows of team 1 with many sharing a second, one of team 2, and rows the filters drop.
    let mut rows: Vec<ChRow> = (0..25)
        .map(|i| {
            row(
                1,
                &format!("d{:02}", 24 - i),
                T0_MS + (i / 4) as i64 * tick,
                emb(i),
            )
        })
        .collect();
    rows.push(row(2, "other-team", T0_MS + tick, emb(99)));
    let mut wrong_model = row(1, "wrong-model", T0_MS + 2 * tick, emb(98));
    wrong_model.model_name = "text-embedding-ada-002".into();
    let mut wrong_product = row(1, "wrong-product", T0_MS + 2 * tick, emb(97));
    wrong_product.product = "error-tracking".into();
    rows.extend([wrong_model, wrong_product]);
    server.insert(&db, &rows).await;

    let src = Source::clickhouse(server.config(&db)).unwrap();
    assert_eq!(src.teams().await.unwrap(), vec![1, 2]);
    assert_eq!(src.count(1, None, None).await.unwrap(), 25);

    let mut want: Vec<(i64, String)> = rows[..25]
        .iter()
        .map(|r| (r.inserted_at, r.document_id.clone()))
        .collect();
    want.sort();
    let mut got = Vec::new();
    let mut after: Option<Watermark> = None;
    loop {
        let page = src.read_after(1, after.as_ref(), None, 7).await.unwrap();
        if page.rows.is_empty() {
            assert!(page.last.is_none());
            break;
        }
        assert!(page.rows.len() <= 7);
        for r in &page.rows {
            assert_eq!(r.team_id, 1);
            assert_eq!(r.timestamp_ms, r.inserted_at_ms - 5000);
            got.push((r.inserted_at_ms, r.document_id.clone()));
        }
        after = page.last;
    }
    assert_eq!(
        got, want,
        "every row once, in (inserted_at, document_id) order"
    );

    // Embeddings arrive as f32 of the stored f64 values; metadata and content as stored.
    let page = src.read_by_ids(1, &["d24".to_string()]).await.unwrap();
    assert_eq!(page.rows.len(), 1);
    let r = &page.rows[0];
    let expect: Vec<f32> = emb(0).iter().map(|&x| x as f32).collect();
    assert_eq!(r.embedding, expect);
    assert!(r.metadata.contains("\"distinct_id\":\"u-d24\""));
    assert!(
        r.content.contains("submit?"),
        "a '?' in data is not a bind placeholder"
    );
    assert!(
        page.last.is_none(),
        "re-reading by id never moves a watermark"
    );
}

async fn by_ids_across_chunks_and_windows(server: Server) {
    let db = server.fresh_db().await;
    let tick = server.tick_ms();
    let rows: Vec<ChRow> = (0..10)
        .map(|i| row(5, &format!("x{i}"), T0_MS + i as i64 * tick, emb(i)))
        .collect();
    server.insert(&db, &rows).await;
    let src = Source::clickhouse(server.config(&db)).unwrap();
    // ids_per_query = 3: four queries; unknown ids are simply absent.
    let ids: Vec<String> = ["x9", "x1", "x4", "x7", "x2", "x8", "nope", "x0"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let page = src.read_by_ids(5, &ids).await.unwrap();
    let got: Vec<&str> = page.rows.iter().map(|r| r.document_id.as_str()).collect();
    assert_eq!(got, ["x0", "x1", "x2", "x4", "x7", "x8", "x9"]);
    // A backfill window: rows inserted before until_ms only.
    let until = T0_MS + 3 * tick;
    let page = src.read_after(5, None, Some(until), 100).await.unwrap();
    assert_eq!(page.rows.len(), 3);
    assert_eq!(src.count(5, None, Some(until)).await.unwrap(), 3);
    let w = page.last.clone().unwrap();
    assert_eq!(src.count(5, Some(&w), None).await.unwrap(), 7);
}

async fn wrong_table_or_column_names_what_is_missing(server: Server) {
    let db = server.fresh_db().await;
    let config = |db: &str| server.config(db);
    let cfg = ClickHouseConfig {
        table: "no_such_table".into(),
        ..config(&db)
    };
    let err = Source::clickhouse(cfg)
        .unwrap()
        .read_after(1, None, None, 10)
        .await
        .unwrap_err();
    assert!(format!("{err:#}").contains("no table"), "{err:#}");

    let mut cfg = config(&db);
    cfg.columns.embedding = "vector".into();
    let err = Source::clickhouse(cfg)
        .unwrap()
        .read_after(1, None, None, 10)
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("no column \"vector\""),
        "{err:#}"
    );

    let mut cfg = config(&db);
    cfg.filters = BTreeMap::from([("product; DROP".to_string(), "x".to_string())]);
    assert!(
        Source::clickhouse(cfg).is_err(),
        "names are checked before any query"
    );
}

#[tokio::test]
async fn an_unreachable_server_fails_after_bounded_retries() {
    // A port nobody listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cfg = ClickHouseConfig {
        url: format!("http://127.0.0.1:{port}"),
        retry: RetryPolicy {
            attempts: 3,
            timeout_s: 2.0,
            backoff_s: 0.01,
            max_backoff_s: 0.02,
        },
        ..ClickHouseConfig::default()
    };
    let t = std::time::Instant::now();
    let err = Source::clickhouse(cfg)
        .unwrap()
        .read_after(1, None, None, 10)
        .await
        .unwrap_err();
    let msg = format!("{err:#}");
    assert!(msg.contains("failed 3 time(s)"), "{msg}");
    assert!(t.elapsed().as_secs_f64() < 10.0);
}

/// ClickHouse into PostgreSQL through the real pipeline: Tasks come out, a rerun is a no-op.
async fn pipeline_from_clickhouse_into_postgres(server: Server) {
    let db = server.fresh_db().await;
    let base = std::env::var("SEGCLUST_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    // Three tight groups of 6 segments from distinct users, plus spread noise.
    let mut rows = Vec::new();
    for g in 0..3usize {
        for k in 0..6usize {
            let mut e = vec![0.0f64; 16];
            e[g] = 1.0;
            e[8 + k % 8] = 0.02 * (k as f64 + 1.0);
            rows.push(row(
                9,
                &format!("g{g}-{k}"),
                T0_MS + (g * 6 + k) as i64 * server.tick_ms(),
                e,
            ));
        }
    }
    server.insert(&db, &rows).await;
    let schema = format!("segclust_ch_{}_{server:?}", std::process::id()).to_lowercase();
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&base)
        .await
        .expect("PostgreSQL at SEGCLUST_TEST_PG");
    for q in [
        format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
        format!("CREATE SCHEMA {schema}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(q))
            .execute(&mut admin)
            .await
            .unwrap();
    }
    let sep = if base.contains('?') { '&' } else { '?' };
    let store = Store::connect(&format!("{base}{sep}options[search_path]={schema}"))
        .await
        .unwrap();
    let source = Arc::new(Source::clickhouse(server.config(&db)).unwrap());
    let device = Arc::new(Device::cpu());
    let cfg = PipelineConfig {
        dim: Some(16),
        pca: None,
        ..PipelineConfig::default()
    };
    let now = 1_700_000_100_000;
    let reports = run_team(&source, &store, &device, &FallbackLabeler, 9, &cfg, now)
        .await
        .unwrap();
    assert_eq!(reports.iter().map(|r| r.segments_read).sum::<usize>(), 18);
    let tasks = store.tasks(9).await.unwrap();
    assert_eq!(tasks.len(), 3, "{tasks:#?}");
    let mut linked = HashSet::new();
    for t in &tasks {
        for l in store.links(9, t.id).await.unwrap() {
            assert!(linked.insert(l.document_id.clone()));
        }
    }
    assert_eq!(linked.len(), 18);
    let again = run_team(&source, &store, &device, &FallbackLabeler, 9, &cfg, now)
        .await
        .unwrap();
    assert!(again.is_empty(), "a rerun reads nothing new: {again:?}");
    assert_eq!(store.tasks(9).await.unwrap().len(), 3);
    store.close().await;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
        .execute(&mut admin)
        .await
        .unwrap();
}

/// `EXPLAIN indexes = 1` of `sql` on `server`, and what it says of the primary key's use
/// (keys, granules read, granules in all); no primary key use fails the test.
async fn primary_key_plan(server: Server, sql: &str) -> (Vec<String>, (Vec<String>, usize, usize)) {
    let plan: Vec<String> = server
        .client()
        .query(&format!("EXPLAIN indexes = 1 {sql}"))
        .fetch_all()
        .await
        .unwrap();
    let used = primary_key_use(&plan)
        .unwrap_or_else(|| panic!("no primary key use in the plan:\n{}", plan.join("\n")));
    (plan, used)
}

/// On production's table a team's reads touch only that team's granules: the team condition
/// segclust writes (`toInt64(team_id) = ?`) is one the primary key can serve. The SQL checked
/// is exactly what the source sent, taken from the engine's statement log, and the engine that
/// answers is the one production runs (EXPLAIN indexes = 1 does not exist in 18.16).
#[tokio::test]
async fn team_reads_use_the_primary_key_on_a_current_server() {
    let server = Server::Current;
    let db = server.fresh_db().await;
    let rows = three_teams(300, "p", 1);
    server.insert(&db, &rows).await;
    let src = Source::clickhouse(server.config(&db)).unwrap();
    let page = src.read_after(2, None, None, 40).await.unwrap();
    assert_eq!(page.rows.len(), 40);
    let after = page.last.clone().unwrap();
    assert_eq!(src.count(2, Some(&after), None).await.unwrap(), 60);
    let ids: Vec<String> = page.rows[..5]
        .iter()
        .map(|r| r.document_id.clone())
        .collect();
    assert_eq!(src.read_by_ids(2, &ids).await.unwrap().rows.len(), 5);

    let log = std::env::var("SEGCLUST_TEST_CLICKHOUSE_CURRENT_LOG")
        .expect("SEGCLUST_TEST_CLICKHOUSE_CURRENT_LOG (tools/clickhouse.sh start-current)");
    let sent: Vec<String> = std::fs::read_to_string(&log)
        .expect("the current engine's statement log")
        .lines()
        .filter(|l| l.starts_with("SELECT") && l.contains(&format!("`{db}`.")))
        .map(str::to_string)
        .collect();
    for kind in ["LIMIT", "count()", " IN ("] {
        let sql = sent
            .iter()
            .find(|l| l.contains(kind) && !l.contains("DISTINCT"))
            .unwrap_or_else(|| panic!("no {kind} read of {db} in the log: {sent:#?}"));
        let (plan, (keys, read, total)) = primary_key_plan(server, sql).await;
        assert_eq!(
            keys.first().map(String::as_str),
            Some("team_id"),
            "the primary key must serve the team condition: {sql}\n{}",
            plan.join("\n")
        );
        assert!(
            total >= 30 && read * 2 < total,
            "a team's read should skip the other teams' granules: {read}/{total}\n{sql}\n{}",
            plan.join("\n")
        );
    }
}

/// `segclust config check --config F --connect` with the real binary: a config that points at
/// the server's table, a SQLite store in a temporary directory, the CPU.
fn config_check(server: Server, db: &str, table: &str) -> (bool, String) {
    config_check_with(server, db, table, "")
}

/// `config_check` with more `[source.clickhouse]` lines.
fn config_check_with(server: Server, db: &str, table: &str, more: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("segclust.toml");
    std::fs::write(
        &cfg,
        format!(
            "[source]\nkind = \"clickhouse\"\n[source.clickhouse]\nurl = \"{}\"\n\
             database = \"{db}\"\ntable = \"{table}\"\n{more}\n[source.clickhouse.retry]\n\
             attempts = 1\n[store]\nurl = \"sqlite://{}\"\n[clustering]\ndevice = \"cpu\"\n",
            server.url(),
            dir.path().join("s.db").display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_segclust"))
        .args(["config", "check", "--connect", "--config"])
        .arg(&cfg)
        .env_remove("SEGCLUST_CONFIG")
        .output()
        .expect("run segclust");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

async fn config_check_connects_and_says_what_it_found(server: Server) {
    let db = server.fresh_db().await;
    let rows = three_teams(60, "c", server.tick_ms());
    server.insert(&db, &rows).await;
    let (ok, out) = config_check(server, &db, "document_embeddings");
    assert!(ok, "{out}");
    assert!(out.contains("answers: ClickHouse"), "{out}");
    assert!(out.contains("3 team(s) have rows where"), "{out}");
    assert!(
        out.contains("device: cpu") && out.contains("connected, tables up to date"),
        "{out}"
    );
    assert!(out.contains("\n  kernel cache: "), "{out}");
    match server {
        Server::Debian => assert!(out.contains("index use not checked"), "{out}"),
        Server::Current => assert!(
            out.contains("team 1's reads are served by the primary key (team_id"),
            "{out}"
        ),
    }
    assert!(!out.contains("WARNING"), "{out}");

    let (ok, out) = config_check(server, &db, "no_such_table");
    assert!(!ok, "a missing table fails the check:\n{out}");
    assert!(
        out.contains("FAIL source:") && out.contains("no table"),
        "{out}"
    );
    assert!(
        out.contains("device: cpu"),
        "later parts are still checked:\n{out}"
    );
}

/// `max_ingestion_lag` lets a page read skip rows whose timestamp lies more than the lag before
/// the watermark: rows that keep the promise are all read, as without it; a row that breaks it
/// and arrives after the watermark is not read (the documented price), and `config check`
/// counts it. On production's table (ordered by `toDate(timestamp)` after the team) the
/// bound prunes the old days' granules: checked on the exact SQL sent.
async fn an_ingestion_lag_bounds_reads_by_timestamp_and_the_check_counts_what_it_would_skip(
    server: Server,
) {
    const DAY_MS: i64 = 86_400_000;
    let db = server.fresh_db().await;
    // 240 rows of team 1 over the 30 days before T0, each inserted 5 s after its timestamp.
    let history: Vec<ChRow> = (0..240)
        .map(|i| {
            row(
                1,
                &format!("h{i:03}"),
                T0_MS - (240 - i) * DAY_MS / 8,
                emb(i as usize),
            )
        })
        .collect();
    server.insert(&db, &history).await;
    let with_lag = ClickHouseConfig {
        max_ingestion_lag: Some("2d".into()),
        ..server.config(&db)
    };
    let lagged = Source::clickhouse(with_lag).unwrap();
    let plain = Source::clickhouse(server.config(&db)).unwrap();
    // Without a watermark the lag plays no part: the whole history is read.
    let first = lagged.read_after(1, None, None, 1000).await.unwrap();
    assert_eq!(first.rows.len(), 240);
    let wm = first.last.clone().unwrap();

    // After the watermark: 10 rows that keep the promise, and one inserted 10 days late.
    let tick = server.tick_ms();
    let mut fresh: Vec<ChRow> = (0..10)
        .map(|i| {
            row(
                1,
                &format!("f{i:02}"),
                T0_MS + (i + 1) * tick,
                emb(100 + i as usize),
            )
        })
        .collect();
    let mut late = row(1, "late", T0_MS + 20 * tick, emb(200));
    late.timestamp = late.inserted_at - 10 * DAY_MS;
    fresh.push(late);
    server.insert(&db, &fresh).await;

    let ids = |p: &segclust::source::SourcePage| -> Vec<String> {
        p.rows.iter().map(|r| r.document_id.clone()).collect()
    };
    let got = lagged.read_after(1, Some(&wm), None, 1000).await.unwrap();
    let all = plain.read_after(1, Some(&wm), None, 1000).await.unwrap();
    assert_eq!(ids(&all).len(), 11);
    assert_eq!(ids(&got), ids(&all)[..10].to_vec(), "all but the late row");
    assert_eq!(lagged.count(1, Some(&wm), None).await.unwrap(), 10);
    assert_eq!(plain.count(1, Some(&wm), None).await.unwrap(), 11);

    let (ok, out) = config_check_with(
        server,
        &db,
        "document_embeddings",
        "max_ingestion_lag = \"2d\"",
    );
    assert!(ok, "a warning does not fail the check:\n{out}");
    assert!(
        out.contains("WARNING: 1 row(s) were inserted more than max_ingestion_lag (2d)"),
        "{out}"
    );
    let (ok, out) = config_check_with(
        server,
        &db,
        "document_embeddings",
        "max_ingestion_lag = \"2 days\"",
    );
    assert!(
        !ok && out.contains("source.clickhouse.max_ingestion_lag"),
        "{out}"
    );

    if let Server::Current = server {
        // The same page read, sent with and without the bound: the bound reads fewer granules.
        let log = std::env::var("SEGCLUST_TEST_CLICKHOUSE_CURRENT_LOG")
            .expect("SEGCLUST_TEST_CLICKHOUSE_CURRENT_LOG (tools/clickhouse.sh start-current)");
        let sent = std::fs::read_to_string(&log).expect("the current engine's statement log");
        let page_read = |bounded: bool| -> String {
            sent.lines()
                .rev()
                .find(|l| {
                    l.starts_with("SELECT")
                        && l.contains(&format!("`{db}`."))
                        && l.contains("LIMIT")
                        && l.contains(" OR (")
                        && l.contains("fromUnixTimestamp64Milli") == bounded
                })
                .unwrap_or_else(|| panic!("no page read (bounded: {bounded}) of {db} in the log"))
                .to_string()
        };
        let mut granules = Vec::new();
        for bounded in [false, true] {
            let sql = page_read(bounded);
            let (_, (_, read, total)) = primary_key_plan(server, &sql).await;
            granules.push((read, total));
        }
        let ((plain_read, total), (bounded_read, _)) = (granules[0], granules[1]);
        assert!(
            bounded_read * 3 <= plain_read && plain_read <= total,
            "the bound should skip the old days: {bounded_read} vs {plain_read} of {total} granules"
        );
    }
}

/// A table not ordered by team first makes every run scan it whole: the check says so.
#[tokio::test]
async fn config_check_warns_when_the_primary_key_does_not_serve_team_reads() {
    let server = Server::Current;
    let db = server.fresh_db().await;
    server
        .exec(&format!(
            "CREATE TABLE {db}.by_time AS {db}.document_embeddings \
             ENGINE = MergeTree ORDER BY (inserted_at, document_id) SETTINGS index_granularity = 8"
        ))
        .await;
    let rows = three_teams(60, "w", 1);
    server.insert_into(&db, "by_time", &rows).await;
    let (ok, out) = config_check(server, &db, "by_time");
    assert!(ok, "a warning does not fail the check:\n{out}");
    assert!(
        out.contains("WARNING: team 1's reads are not served by the table's primary key"),
        "{out}"
    );
}

/// At-least-once ingestion (Kafka into production's ReplacingMergeTree) can leave an identical
/// copy of a row until the table merges: the run links the document once and quarantines the
/// copy as a redelivery, while a changed row with the same id is quarantined as another version.
#[tokio::test]
async fn a_redelivered_row_is_linked_once_and_named_as_such() {
    let server = Server::Current;
    let db = server.fresh_db().await;
    let mut rows: Vec<ChRow> = (0..12)
        .map(|i| {
            let mut e = vec![0.0f64; 16];
            e[i % 3] = 1.0;
            e[8 + i % 8] = 0.02 * (i as f64 + 1.0);
            row(4, &format!("r{i:02}"), T0_MS + i as i64 * 250, e)
        })
        .collect();
    let mut changed = rows[5].clone();
    changed.content = "a regenerated description".into();
    rows.extend([rows[3].clone(), changed]);
    // Separate inserts make separate parts, as separate Kafka deliveries do; merges are
    // stopped so that the copies are still there when the run reads, as before a real merge.
    server
        .exec(&format!("SYSTEM STOP MERGES {db}.document_embeddings"))
        .await;
    server.insert(&db, &rows[..12]).await;
    server.insert(&db, &rows[12..]).await;

    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&format!("sqlite://{}", dir.path().join("s.db").display()))
        .await
        .unwrap();
    let source = Arc::new(Source::clickhouse(server.config(&db)).unwrap());
    let cfg = PipelineConfig {
        dim: Some(16),
        pca: None,
        ..PipelineConfig::default()
    };
    let device = Arc::new(Device::cpu());
    let now = T0_MS + 100_000;
    let reports = run_team(&source, &store, &device, &FallbackLabeler, 4, &cfg, now)
        .await
        .unwrap();
    assert_eq!(reports.iter().map(|r| r.segments_read).sum::<usize>(), 14);
    // The metrics count the copy apart from bad rows: only the changed row is "quarantined".
    let metrics = segclust::metrics::Metrics::new(None);
    for r in &reports {
        metrics.batch(r);
    }
    let figures = metrics.team(4);
    assert_eq!((figures.quarantined, figures.redelivered), (2, 1));
    let text = metrics.render();
    assert!(text.contains("segclust_segments_quarantined_total{team=\"4\"} 1\n"));
    assert!(text.contains("segclust_segments_redelivered_total{team=\"4\"} 1\n"));
    let mut q: Vec<(String, String)> = store
        .quarantined(4)
        .await
        .unwrap()
        .into_iter()
        .map(|q| (q.document_id, q.reason))
        .collect();
    q.sort();
    assert_eq!(q.len(), 2, "{q:?}");
    assert_eq!(q[0].0, "r03");
    assert!(q[0].1.contains("an identical copy (a redelivery"), "{q:?}");
    assert_eq!(q[1].0, "r05");
    assert!(q[1].1.contains("another version of the row"), "{q:?}");
    let mut linked = HashSet::new();
    for t in store.tasks(4).await.unwrap() {
        for l in store.links(4, t.id).await.unwrap() {
            assert!(linked.insert(l.document_id), "a document linked twice");
        }
    }
    assert!(
        linked.contains("r03") && linked.contains("r05"),
        "{linked:?}"
    );
    store.close().await;
}
