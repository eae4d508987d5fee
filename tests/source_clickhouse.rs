//! The ClickHouse source against a real ClickHouse server (tools/clickhouse.sh starts Debian's
//! 18.16 for the test command; its URL arrives in SEGCLUST_TEST_CLICKHOUSE). Each test makes
//! its own database. No server means a failing test, never a skipped one.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use segclust::device::Device;
use segclust::labeling::FallbackLabeler;
use segclust::pipeline::{PipelineConfig, run_team};
use segclust::retry::RetryPolicy;
use segclust::segment::Watermark;
use segclust::source::{ClickHouseConfig, Source};
use segclust::store::Store;
use serde::Serialize;

fn server() -> String {
    std::env::var("SEGCLUST_TEST_CLICKHOUSE").unwrap_or_else(|_| {
        panic!(
            "SEGCLUST_TEST_CLICKHOUSE is not set: run the tests with tools/test.sh, which starts \
             a ClickHouse server (Debian package clickhouse-server), or start one and set it to its \
             HTTP URL"
        )
    })
}

fn client() -> clickhouse::Client {
    clickhouse::Client::default()
        .with_url(server())
        .with_validation(false)
}

/// A row of the test table, in its column order (RowBinary is positional).
#[derive(clickhouse::Row, Serialize, Clone, Debug)]
struct ChRow {
    team_id: i64,
    product: String,
    document_type: String,
    rendering: String,
    model_name: String,
    document_id: String,
    /// DateTime: seconds.
    timestamp: u32,
    inserted_at: u32,
    content: String,
    metadata: String,
    embedding: Vec<f64>,
}

fn row(team: i64, id: &str, inserted_s: u32, emb: Vec<f64>) -> ChRow {
    ChRow {
        team_id: team,
        product: "session-replay".into(),
        document_type: "video-segment".into(),
        rendering: "video-analysis".into(),
        model_name: "text-embedding-3-large-3072".into(),
        document_id: id.into(),
        timestamp: inserted_s.saturating_sub(5),
        inserted_at: inserted_s,
        content: format!("user {id} clicked submit? nothing happened"),
        metadata: format!(r#"{{"session_id":"s-{id}","distinct_id":"u-{id}"}}"#),
        embedding: emb,
    }
}

/// A fresh database with a `document_embeddings` table shaped like production's (DateTime and
/// Float64 where 18.16 lacks DateTime64).
async fn fresh_db() -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let db = format!(
        "segclust_test_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    let c = client();
    c.query(&format!("CREATE DATABASE {db}"))
        .execute()
        .await
        .expect("create database");
    c.query(&format!(
        "CREATE TABLE {db}.document_embeddings (team_id Int64, product String, \
         document_type String, rendering String, model_name String, document_id String, \
         timestamp DateTime, inserted_at DateTime, content String, metadata String, \
         embedding Array(Float64)) ENGINE = MergeTree ORDER BY (team_id, inserted_at, document_id)"
    ))
    .execute()
    .await
    .expect("create table");
    db
}

async fn insert(db: &str, rows: &[ChRow]) {
    let c = client().with_database(db);
    let mut ins = c
        .insert::<ChRow>("document_embeddings")
        .await
        .expect("insert");
    for r in rows {
        ins.write(r).await.expect("write row");
    }
    ins.end().await.expect("end insert");
}

fn config(db: &str) -> ClickHouseConfig {
    ClickHouseConfig {
        url: server(),
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

fn emb(i: usize) -> Vec<f64> {
    (0..8)
        .map(|j| ((i * 8 + j) as f64 * 0.37).sin() + 0.01)
        .collect()
}

#[tokio::test]
async fn pages_follow_the_watermark_without_skips_or_repeats() {
    let db = fresh_db().await;
    // 25 rows of team 1 with many sharing a second, one of team 2, and rows the filters drop.
    let mut rows: Vec<ChRow> = (0..25)
        .map(|i| {
            row(
                1,
                &format!("d{:02}", 24 - i),
                1_700_000_000 + (i / 4) as u32,
                emb(i),
            )
        })
        .collect();
    rows.push(row(2, "other-team", 1_700_000_001, emb(99)));
    let mut wrong_model = row(1, "wrong-model", 1_700_000_002, emb(98));
    wrong_model.model_name = "text-embedding-ada-002".into();
    let mut wrong_product = row(1, "wrong-product", 1_700_000_002, emb(97));
    wrong_product.product = "error-tracking".into();
    rows.extend([wrong_model, wrong_product]);
    insert(&db, &rows).await;

    let src = Source::clickhouse(config(&db)).unwrap();
    assert_eq!(src.teams().await.unwrap(), vec![1, 2]);
    assert_eq!(src.count(1, None, None).await.unwrap(), 25);

    let mut want: Vec<(i64, String)> = rows[..25]
        .iter()
        .map(|r| (r.inserted_at as i64 * 1000, r.document_id.clone()))
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

#[tokio::test]
async fn by_ids_across_chunks_and_windows() {
    let db = fresh_db().await;
    let rows: Vec<ChRow> = (0..10)
        .map(|i| row(5, &format!("x{i}"), 1_700_000_000 + i as u32 * 60, emb(i)))
        .collect();
    insert(&db, &rows).await;
    let src = Source::clickhouse(config(&db)).unwrap();
    // ids_per_query = 3: four queries; unknown ids are simply absent.
    let ids: Vec<String> = ["x9", "x1", "x4", "x7", "x2", "x8", "nope", "x0"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let page = src.read_by_ids(5, &ids).await.unwrap();
    let got: Vec<&str> = page.rows.iter().map(|r| r.document_id.as_str()).collect();
    assert_eq!(got, ["x0", "x1", "x2", "x4", "x7", "x8", "x9"]);
    // A backfill window: rows inserted before until_ms only.
    let until = (1_700_000_000 + 3 * 60) as i64 * 1000;
    let page = src.read_after(5, None, Some(until), 100).await.unwrap();
    assert_eq!(page.rows.len(), 3);
    assert_eq!(src.count(5, None, Some(until)).await.unwrap(), 3);
    let w = page.last.clone().unwrap();
    assert_eq!(src.count(5, Some(&w), None).await.unwrap(), 7);
}

#[tokio::test]
async fn wrong_table_or_column_names_what_is_missing() {
    let db = fresh_db().await;
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
#[tokio::test]
async fn pipeline_from_clickhouse_into_postgres() {
    let db = fresh_db().await;
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
                1_700_000_000 + (g * 6 + k) as u32,
                e,
            ));
        }
    }
    insert(&db, &rows).await;
    let schema = format!("segclust_ch_{}", std::process::id());
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
    let source = Arc::new(Source::clickhouse(config(&db)).unwrap());
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
