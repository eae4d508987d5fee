//! Loads demo segments into a ClickHouse `document_embeddings` table, for backfill benchmarks
//! and trying the production path locally:
//!
//! ```sh
//! eval "$(bash tools/clickhouse.sh start)"
//! cargo run --release --example clickhouse_load -- "$SEGCLUST_TEST_CLICKHOUSE" bench 200000 14
//! segclust backfill --clickhouse "$SEGCLUST_TEST_CLICKHOUSE" ... --team 1
//! ```
//!
//! Arguments: URL, database, segments, days (default 14). The table is created with the
//! columns segclust reads by default (DateTime and Array(Float32), which every ClickHouse since
//! 18.x has); rows are written in RowBinary, 5,000 a request.

use anyhow::{Context, Result};
use segclust::demo::{DemoParams, generate};
use serde::Serialize;

#[derive(clickhouse::Row, Serialize)]
struct Row {
    team_id: i64,
    product: &'static str,
    document_type: &'static str,
    rendering: &'static str,
    model_name: &'static str,
    document_id: String,
    timestamp: u32,
    inserted_at: u32,
    content: String,
    metadata: String,
    embedding: Vec<f32>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let url = args
        .get(1)
        .context("usage: clickhouse_load URL DATABASE SEGMENTS [DAYS]")?;
    let db = args.get(2).context("missing DATABASE")?;
    let n: usize = args.get(3).context("missing SEGMENTS")?.parse()?;
    let days: usize = args.get(4).map_or(Ok(14), |d| d.parse())?;
    let now = chrono::Utc::now().timestamp_millis();
    let t = std::time::Instant::now();
    let rows = generate(
        &DemoParams {
            seed: 11,
            team_id: 1,
            segments: n,
            days,
            users: (n / 8).max(50),
            ..DemoParams::default()
        },
        now,
    );
    eprintln!(
        "generated {} segments in {:.1} s",
        rows.len(),
        t.elapsed().as_secs_f64()
    );
    let client = clickhouse::Client::default()
        .with_url(url)
        .with_validation(false);
    client
        .query(&format!("CREATE DATABASE IF NOT EXISTS {db}"))
        .execute()
        .await?;
    client
        .query(&format!(
            "CREATE TABLE IF NOT EXISTS {db}.document_embeddings (team_id Int64, \
             product String, document_type String, rendering String, model_name String, \
             document_id String, timestamp DateTime, inserted_at DateTime, content String, \
             metadata String, embedding Array(Float32)) ENGINE = MergeTree \
             ORDER BY (team_id, inserted_at, document_id)"
        ))
        .execute()
        .await?;
    let client = client.with_database(db);
    let t = std::time::Instant::now();
    for chunk in rows.chunks(5_000) {
        let mut ins = client.insert::<Row>("document_embeddings").await?;
        for r in chunk {
            ins.write(&Row {
                team_id: r.team_id,
                product: "session-replay",
                document_type: "video-segment",
                rendering: "video-analysis",
                model_name: "text-embedding-3-large-3072",
                document_id: r.document_id.clone(),
                timestamp: (r.timestamp_ms / 1000) as u32,
                inserted_at: (r.inserted_at_ms / 1000) as u32,
                content: r.content.clone(),
                metadata: r.metadata.clone(),
                embedding: r.embedding.clone(),
            })
            .await?;
        }
        ins.end().await?;
    }
    eprintln!(
        "inserted {} rows into {db}.document_embeddings in {:.1} s",
        rows.len(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
