//! The segments-file source and validation, on real files in a temp dir.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use arrow_array::builder::{FixedSizeListBuilder, Float64Builder, LargeListBuilder, ListBuilder};
use arrow_array::{ArrayRef, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use segclust::segment::{RawSegment, Watermark};
use segclust::source::{FileSource, Source, SourcePage, write_segments};
use segclust::validate::validate;

fn meta(session: &str, user: &str) -> String {
    format!(r#"{{"session_id":"{session}","distinct_id":"{user}"}}"#)
}

fn row(team: i64, id: &str, ts: i64, ins: i64, embedding: Vec<f32>) -> RawSegment {
    RawSegment {
        team_id: team,
        document_id: id.to_string(),
        content: format!("user clicked around in {id}"),
        metadata: meta(id.split(':').next().unwrap_or(id), "user-1"),
        timestamp_ms: ts,
        inserted_at_ms: ins,
        embedding,
    }
}

/// Pseudo-random but reproducible embedding values with fractional parts that stress the
/// float text round trip.
fn emb(seed: usize, dim: usize) -> Vec<f32> {
    (0..dim)
        .map(|j| ((seed * 31 + j * 17) % 101) as f32 / 7.3 - 6.0 + 1e-4 * j as f32)
        .collect()
}

/// 60 rows over two teams; inserted_at takes only 4 values, so most rows share it with others,
/// and document ids are not in time order.
fn sample() -> Vec<RawSegment> {
    (0..60)
        .map(|i| {
            let team = if i % 3 == 0 { 2 } else { 1 };
            let id = format!("s{}:{}:{}", (i * 7) % 13, i * 1000, i * 1000 + 999);
            row(
                team,
                &id,
                1_000 + i as i64,
                5_000 + (i as i64 * 5) % 4,
                emb(i, 8),
            )
        })
        .collect()
}

fn sorted_team(rows: &[RawSegment], team: i64) -> Vec<RawSegment> {
    let mut v: Vec<_> = rows.iter().filter(|r| r.team_id == team).cloned().collect();
    v.sort_by(|a, b| (a.inserted_at_ms, &a.document_id).cmp(&(b.inserted_at_ms, &b.document_id)));
    v
}

fn ids(rows: &[RawSegment]) -> Vec<String> {
    rows.iter().map(|r| r.document_id.clone()).collect()
}

/// Walks a team's stream page by page, returning every page.
fn walk(src: &FileSource, team: i64, limit: usize) -> Vec<SourcePage> {
    let mut pages = Vec::new();
    let mut after: Option<Watermark> = None;
    loop {
        let page = src.read_after(team, after.as_ref(), None, limit).unwrap();
        let Some(last) = page.last.clone() else {
            assert!(page.rows.is_empty());
            break;
        };
        if let Some(prev) = &after {
            assert!(&last > prev, "the watermark must move forward");
        }
        after = Some(last);
        pages.push(page);
    }
    pages
}

fn write_arrow(path: &Path, batch: RecordBatch, max_group_rows: Option<usize>) {
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(max_group_rows)
        .build();
    let mut w = ArrowWriter::try_new(
        std::fs::File::create(path).unwrap(),
        batch.schema(),
        Some(props),
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

#[test]
fn parquet_and_jsonl_round_trip_in_watermark_order() {
    let dir = tempfile::tempdir().unwrap();
    let rows = sample();
    for name in ["s.parquet", "s.jsonl", "s.NDJSON"] {
        let path = dir.path().join(name);
        write_segments(&path, &rows).unwrap();
        let src = FileSource::open(&path, 99).unwrap();
        for team in [1, 2] {
            let page = src.read_after(team, None, None, 1000).unwrap();
            assert!(page.rejected.is_empty(), "{name}: {:?}", page.rejected);
            let want = sorted_team(&rows, team);
            // Exact equality, embeddings included: f32 text from serde_json reads back exactly.
            assert_eq!(page.rows, want, "{name} team {team}");
            let last = want.last().unwrap();
            assert_eq!(
                page.last,
                Some(Watermark {
                    inserted_at_ms: last.inserted_at_ms,
                    document_id: last.document_id.clone()
                })
            );
        }
        assert_eq!(src.teams().unwrap(), vec![1, 2]);
        // Through the enum as the pipeline uses it.
        let source = Source::open_file(&path, 99).unwrap();
        let rt = tokio::runtime::Runtime::new().unwrap();
        let page = rt.block_on(source.read_after(2, None, None, 3)).unwrap();
        assert_eq!(page.rows.len(), 3);
        let team2 = sorted_team(&rows, 2).len() as u64;
        assert_eq!(rt.block_on(source.count(2, None, None)).unwrap(), team2);
    }
}

#[test]
fn paging_over_shared_timestamps_neither_skips_nor_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let rows = sample();
    for name in ["p.parquet", "p.jsonl"] {
        let path = dir.path().join(name);
        write_segments(&path, &rows).unwrap();
        let src = FileSource::open(&path, 0).unwrap();
        for limit in [1, 2, 3, 7, 40, 1000] {
            let pages = walk(&src, 1, limit);
            let got: Vec<String> = pages.iter().flat_map(|p| ids(&p.rows)).collect();
            assert_eq!(got, ids(&sorted_team(&rows, 1)), "{name} limit {limit}");
            for p in &pages {
                assert!(p.rows.len() <= limit, "sample has no exact duplicate keys");
            }
        }
        // Resuming from a watermark in the middle of a run of equal inserted_at values.
        let all = sorted_team(&rows, 1);
        let k = (1..all.len() - 1)
            .find(|&k| {
                all[k - 1].inserted_at_ms == all[k].inserted_at_ms
                    && all[k].inserted_at_ms == all[k + 1].inserted_at_ms
            })
            .expect("sample has runs of three equal inserted_at");
        let mid = &all[k];
        let w = Watermark {
            inserted_at_ms: mid.inserted_at_ms,
            document_id: mid.document_id.clone(),
        };
        let page = src.read_after(1, Some(&w), None, 1000).unwrap();
        assert_eq!(ids(&page.rows), ids(&all[k + 1..]));
        assert!(
            src.read_after(1, Some(&w), None, 0)
                .unwrap()
                .rows
                .is_empty()
        );
    }
}

#[test]
fn parquet_paging_reads_the_right_rows_across_many_row_groups() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("groups.parquet");
    let rows: Vec<RawSegment> = (0..1000)
        .map(|i| {
            // File order is not time order, so pages pick rows from scattered row groups.
            let ins = ((i * 389) % 1000) as i64 / 3;
            row(1 + (i % 2) as i64, &format!("d{i:04}"), ins, ins, emb(i, 4))
        })
        .collect();
    // Write with small row groups (37 rows) so selections cross group boundaries.
    let tmp = dir.path().join("tmp.parquet");
    write_segments(&tmp, &rows).unwrap();
    let src_batch = {
        let f = std::fs::File::open(&tmp).unwrap();
        let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
            .unwrap()
            .with_batch_size(100_000)
            .build()
            .unwrap();
        r.map(|b| b.unwrap()).next().unwrap()
    };
    write_arrow(&path, src_batch, Some(37));
    let src = FileSource::open(&path, 0).unwrap();
    for team in [1, 2] {
        let want = sorted_team(&rows, team);
        let got: Vec<RawSegment> = walk(&src, team, 64)
            .into_iter()
            .flat_map(|p| p.rows)
            .collect();
        assert_eq!(got, want);
    }
    let pick: Vec<String> = ["d0999", "d0000", "d0500", "d0037", "d0036", "nope"]
        .map(String::from)
        .to_vec();
    let by_id = src.read_by_ids(1, &pick).unwrap();
    let mut got = ids(&by_id.rows);
    got.sort();
    assert_eq!(got, vec!["d0000", "d0036", "d0500"]); // even ids are team 1
    assert_eq!(
        by_id
            .rows
            .iter()
            .find(|r| r.document_id == "d0500")
            .unwrap()
            .embedding,
        emb(500, 4)
    );
}

#[test]
fn team_filtering_and_read_by_ids() {
    let dir = tempfile::tempdir().unwrap();
    let rows = sample();
    for name in ["t.parquet", "t.jsonl"] {
        let path = dir.path().join(name);
        write_segments(&path, &rows).unwrap();
        let src = FileSource::open(&path, 0).unwrap();
        assert!(src.read_after(3, None, None, 100).unwrap().rows.is_empty());
        let team2 = src.read_after(2, None, None, 100).unwrap();
        assert!(team2.rows.iter().all(|r| r.team_id == 2));
        assert_eq!(team2.rows.len(), 20);

        let wanted = vec![
            rows[0].document_id.clone(), // team 2
            rows[3].document_id.clone(), // team 2
            rows[1].document_id.clone(), // team 1: must not come back for team 2
            "missing:0:1".to_string(),
        ];
        let page = src.read_by_ids(2, &wanted).unwrap();
        let got: HashSet<String> = ids(&page.rows).into_iter().collect();
        let want: HashSet<String> = [rows[0].document_id.clone(), rows[3].document_id.clone()]
            .into_iter()
            .collect();
        assert_eq!(got, want, "{name}");
        assert_eq!(page.last, None, "read_by_ids must not move a watermark");
        let r0 = page
            .rows
            .iter()
            .find(|r| r.document_id == rows[0].document_id)
            .unwrap();
        assert_eq!(r0, &rows[0]);
    }
}

#[test]
fn jsonl_defaults_rfc3339_times_and_metadata_objects() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.jsonl");
    let lines = [
        // No team_id, no inserted_at: team = --team, inserted_at = timestamp.
        r#"{"document_id":"a:0:1","content":"c","metadata":"{\"session_id\":\"a\",\"distinct_id\":\"u\"}","timestamp":1700000000000,"embedding":[1,2]}"#,
        // RFC 3339 times, metadata as an object, team as a quoted integer.
        r#"{"team_id":"7","document_id":"b:0:1","content":"c","metadata":{"session_id":"b","distinct_id":"u"},"timestamp":"2023-11-14T22:13:20Z","inserted_at":"2023-11-14T23:13:20.250+01:00","embedding":[3,4]}"#,
        "",
        r#"{"team_id":7,"document_id":"c:0:1","content":"c","metadata":"{}","timestamp":"2023-11-14 22:13:20.5","embedding":[5,6]}"#,
    ];
    std::fs::write(&path, lines.join("\n")).unwrap();
    let src = FileSource::open(&path, 7).unwrap();
    assert_eq!(src.teams().unwrap(), vec![7]);
    let page = src.read_after(7, None, None, 10).unwrap();
    assert!(page.rejected.is_empty(), "{:?}", page.rejected);
    let [a, b, c] = &page.rows[..] else {
        panic!("expected 3 rows, got {:?}", page.rows)
    };
    assert_eq!((a.document_id.as_str(), a.team_id), ("a:0:1", 7));
    assert_eq!(
        (a.timestamp_ms, a.inserted_at_ms),
        (1_700_000_000_000, 1_700_000_000_000)
    );
    assert_eq!(
        (b.timestamp_ms, b.inserted_at_ms),
        (1_700_000_000_000, 1_700_000_000_250)
    );
    assert_eq!(c.inserted_at_ms, 1_700_000_000_500);
    let m: serde_json::Value = serde_json::from_str(&b.metadata).unwrap();
    assert_eq!(m["session_id"], "b");
    assert_eq!(b.embedding, vec![3.0, 4.0]);
}

#[test]
fn jsonl_bad_lines_are_rejected_with_line_numbers_and_the_rest_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.jsonl");
    let good = |id: &str, t: i64| {
        format!(
            r#"{{"team_id":1,"document_id":"{id}","content":"c","metadata":"{{}}","timestamp":{t},"embedding":[1.5,2]}}"#
        )
    };
    let lines = [
        good("a:0:1", 10),
        r#"{"team_id":1,"document_id":"#.to_string(), // line 2: truncated JSON
        good("b:0:1", 20),
        r#"{"team_id":1,"content":"c","timestamp":25,"embedding":[1]}"#.to_string(), // 4: no id
        r#"{"team_id":1,"document_id":"e:0:1","content":"c","timestamp":30,"embedding":[1,null]}"#
            .to_string(), // 5: null in embedding
        good("f:0:1", 40),
        r#"{"team_id":1,"document_id":"g:0:1","content":"c","timestamp":"soon","embedding":[1]}"#
            .to_string(), // 7: bad time
    ];
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let src = FileSource::open(&path, 1).unwrap();
    let page = src.read_after(1, None, None, 100).unwrap();
    assert_eq!(ids(&page.rows), vec!["a:0:1", "b:0:1", "f:0:1"]);
    let reasons: Vec<&str> = page.rejected.iter().map(|q| q.reason.as_str()).collect();
    assert_eq!(reasons.len(), 4, "{reasons:#?}");
    for (line, needle) in [
        (2, "not a valid JSON"),
        (4, "document_id"),
        (5, "index 1"),
        (7, "timestamp"),
    ] {
        let tag = format!("bad.jsonl line {line}:");
        assert!(
            reasons
                .iter()
                .any(|r| r.contains(&tag) && r.contains(needle)),
            "no rejection for line {line} mentioning {needle:?} in {reasons:#?}"
        );
    }
    // Line 4 has a time, so it is placed (under a synthetic id) and moves the watermark; line 5
    // keeps its own id.
    assert!(page.rejected.iter().any(|q| q.document_id == "bad.jsonl:4"));
    assert!(page.rejected.iter().any(|q| q.document_id == "e:0:1"));

    // Paging one row at a time: rejected rows with a position take a page of their own and the
    // watermark moves past them; unplaceable lines (2, 7) come only with the first page.
    let pages = walk(&src, 1, 1);
    let per_page: Vec<(usize, usize)> = pages
        .iter()
        .map(|p| (p.rows.len(), p.rejected.len()))
        .collect();
    assert_eq!(per_page, vec![(1, 2), (1, 0), (0, 1), (0, 1), (1, 0)]);
}

#[test]
fn parquet_from_arrow_with_float64_lists_and_microsecond_times() {
    let dir = tempfile::tempdir().unwrap();
    let n = 5;
    let vals = |i: usize| vec![i as f64 + 0.25, -(i as f64), 1e-3];
    // Three list encodings of the same float64 values.
    let mut list = ListBuilder::new(Float64Builder::new());
    let mut large = LargeListBuilder::new(Float64Builder::new());
    let mut fixed = FixedSizeListBuilder::new(Float64Builder::new(), 3);
    for i in 0..n {
        list.values().append_slice(&vals(i));
        list.append(true);
        large.values().append_slice(&vals(i));
        large.append(true);
        fixed.values().append_slice(&vals(i));
        fixed.append(true);
    }
    let embeddings: [ArrayRef; 3] = [
        Arc::new(list.finish()),
        Arc::new(large.finish()),
        Arc::new(fixed.finish()),
    ];
    for (k, embedding) in embeddings.into_iter().enumerate() {
        // No team_id and no inserted_at column; timestamps in microseconds (pandas-like).
        let schema = Arc::new(Schema::new(vec![
            Field::new("document_id", DataType::Utf8, true),
            Field::new("content", DataType::Utf8, true),
            Field::new("metadata", DataType::Utf8, true),
            Field::new(
                "timestamp",
                DataType::Timestamp(TimeUnit::Microsecond, None),
                true,
            ),
            Field::new("embedding", embedding.data_type().clone(), true),
        ]));
        let docs: Vec<Option<String>> = (0..n)
            .map(|i| (i != 3).then(|| format!("s{i}:0:1")))
            .collect();
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(docs)),
                Arc::new(StringArray::from(vec!["content"; n])),
                Arc::new(StringArray::from(vec![meta("s", "u"); n])),
                Arc::new(TimestampMicrosecondArray::from(
                    (0..n)
                        .map(|i| 1_000_999 * (n - i) as i64)
                        .collect::<Vec<_>>(),
                )),
                embedding,
            ],
        )
        .unwrap();
        let path = dir.path().join(format!("f64_{k}.parquet"));
        write_arrow(&path, batch, None);
        let src = FileSource::open(&path, 42).unwrap();
        assert_eq!(src.teams().unwrap(), vec![42]);
        let page = src.read_after(42, None, None, 100).unwrap();
        // Time order is the reverse of file order; the null document_id (row 3) is rejected.
        assert_eq!(
            ids(&page.rows),
            vec!["s4:0:1", "s2:0:1", "s1:0:1", "s0:0:1"]
        );
        let r0 = page.rows.last().unwrap();
        assert_eq!(r0.embedding, vec![0.25f32, 0.0, 1e-3]);
        assert_eq!(r0.timestamp_ms, 5_004, "5,004,995 us floor to 5,004 ms");
        assert_eq!(r0.inserted_at_ms, r0.timestamp_ms);
        assert_eq!(page.rejected.len(), 1);
        assert!(
            page.rejected[0]
                .reason
                .contains(&format!("f64_{k}.parquet row index 3")),
            "{:?}",
            page.rejected
        );
        let v = validate(page.rows, None);
        assert_eq!(v.embeddings.cols(), 3);
        assert_eq!(v.segments.len(), 4);
    }
}

#[test]
fn parquet_missing_or_mistyped_column_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.parquet");
    let schema = Arc::new(Schema::new(vec![
        Field::new("document_id", DataType::Utf8, false),
        Field::new("content", DataType::Utf8, false),
        Field::new("metadata", DataType::Utf8, false),
        Field::new("timestamp", DataType::Utf8, false),
    ]));
    let s = || Arc::new(StringArray::from(vec!["x"])) as ArrayRef;
    let batch = RecordBatch::try_new(schema, vec![s(), s(), s(), s()]).unwrap();
    write_arrow(&path, batch, None);
    let err = format!("{:#}", FileSource::open(&path, 1).unwrap_err());
    assert!(err.contains("'timestamp' has type Utf8"), "{err}");

    let schema = Arc::new(Schema::new(vec![
        Field::new("document_id", DataType::Utf8, false),
        Field::new("content", DataType::Utf8, false),
        Field::new("metadata", DataType::Utf8, false),
    ]));
    let batch = RecordBatch::try_new(schema, vec![s(), s(), s()]).unwrap();
    write_arrow(&path, batch, None);
    let err = format!("{:#}", FileSource::open(&path, 1).unwrap_err());
    assert!(
        err.contains("no column 'embedding'") && err.contains("m.parquet"),
        "{err}"
    );

    let err = format!(
        "{:#}",
        FileSource::open(dir.path().join("x.csv"), 1).unwrap_err()
    );
    assert!(err.contains(".parquet, .jsonl or .ndjson"), "{err}");
    std::fs::write(dir.path().join("junk.parquet"), b"not parquet").unwrap();
    assert!(FileSource::open(dir.path().join("junk.parquet"), 1).is_err());
}

#[test]
fn changed_file_is_re_indexed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grow.jsonl");
    let rows = sample();
    write_segments(&path, &rows[..10]).unwrap();
    let src = FileSource::open(&path, 0).unwrap();
    let before = src.read_after(1, None, None, 1000).unwrap().rows.len();
    write_segments(&path, &rows).unwrap();
    let after = src.read_after(1, None, None, 1000).unwrap().rows.len();
    assert_eq!(before, sorted_team(&rows[..10], 1).len());
    assert_eq!(after, 40);
}

#[test]
fn validation_sets_aside_each_bad_kind_and_keeps_good_rows() {
    let good = |id: &str, seed: usize| row(1, id, 1, 1, emb(seed, 4));
    let mut nan = good("nan:0:1", 1);
    nan.embedding[2] = f32::NAN;
    let mut inf = good("inf:0:1", 2);
    inf.embedding[3] = f32::NEG_INFINITY;
    let mut short = good("short:0:1", 3);
    short.embedding.truncate(3);
    let mut zero = good("zero:0:1", 4);
    zero.embedding = vec![0.0; 4];
    let mut empty = good("empty:0:1", 5);
    empty.embedding.clear();
    let mut array_meta = good("arr:0:1", 6);
    array_meta.metadata = "[1,2]".into();
    let mut broken_meta = good("broken:0:1", 7);
    broken_meta.metadata = "{not json".into();
    let mut no_user = good("nouser:0:1", 8);
    no_user.metadata = r#"{"session_id":"x"}"#.into();
    let mut no_session = good("fromid:10:20", 9);
    no_session.metadata = r#"{"distinct_id":"u9"}"#.into();
    let mut no_session_bad_id = good("plainid", 10);
    no_session_bad_id.metadata = r#"{"distinct_id":"u10"}"#.into();
    let mut no_id = good("", 11);
    no_id.document_id.clear();
    let first = good("dup:0:1", 12);
    let second = good("dup:0:1", 13);

    let batch = vec![
        good("ok1:0:1", 20),
        nan,
        inf,
        short,
        zero,
        empty,
        array_meta,
        broken_meta,
        no_user,
        no_session,
        no_session_bad_id,
        no_id,
        first,
        second,
        good("ok2:0:1", 21),
    ];
    let v = validate(batch, None);
    let kept: Vec<&str> = v.segments.iter().map(|s| s.document_id.as_str()).collect();
    assert_eq!(kept, vec!["ok1:0:1", "fromid:10:20", "dup:0:1", "ok2:0:1"]);
    assert_eq!((v.embeddings.rows(), v.embeddings.cols()), (4, 4));
    // Rows of the matrix line up with the segments and are not normalized.
    assert_eq!(v.embeddings.row(0), emb(20, 4).as_slice());
    assert_eq!(
        v.embeddings.row(2),
        emb(12, 4).as_slice(),
        "first duplicate kept"
    );
    assert_eq!(v.segments[1].session_id, "fromid");
    assert_eq!(v.segments[1].distinct_id, "u9");
    assert_eq!(v.segments[0].metadata["distinct_id"], "user-1");

    let reason = |id: &str| -> String {
        let hits: Vec<_> = v
            .quarantined
            .iter()
            .filter(|q| q.document_id == id)
            .collect();
        assert_eq!(hits.len(), 1, "{id}: {:?}", v.quarantined);
        hits[0].reason.clone()
    };
    assert_eq!(v.quarantined.len(), 11);
    assert!(reason("nan:0:1").contains("index 2 is NaN"));
    assert!(reason("inf:0:1").contains("index 3 is -inf"));
    assert_eq!(
        reason("short:0:1"),
        "embedding has 3 dimensions, expected 4"
    );
    assert!(reason("zero:0:1").contains("zero vector"));
    assert!(reason("empty:0:1").contains("empty"));
    assert!(reason("arr:0:1").contains("not a JSON object"));
    assert!(reason("broken:0:1").contains("not a JSON object"));
    assert!(reason("nouser:0:1").contains("distinct_id"));
    assert!(reason("plainid").contains("session_id"));
    assert!(reason("").contains("document_id is empty"));
    assert!(reason("dup:0:1").contains("duplicate"));

    // An expected dimension from the caller overrides the batch's most common one.
    let v = validate(
        vec![good("a:0:1", 1), row(1, "b:0:1", 1, 1, emb(2, 5))],
        Some(5),
    );
    assert_eq!(v.segments.len(), 1);
    assert_eq!(v.segments[0].document_id, "b:0:1");
}

/// Peak resident memory of this process in MB (Linux; 0 elsewhere).
fn peak_mb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb / 1024)
}

/// Figures for a file of realistic width:
/// `cargo test --test source_file large_parquet -- --ignored --nocapture`.
/// Writes the file, then reads it in a child process (this test binary again) so the reading's
/// peak memory is measured on its own. Asserts only correctness.
#[test]
#[ignore = "writes a ~250 MB file; run by hand for timings"]
fn large_parquet_file_timings() {
    use std::time::Instant;
    let (n, dim) = (20_000usize, 3072usize);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.parquet");
    {
        let rows: Vec<RawSegment> = (0..n)
            .map(|i| {
                row(
                    1,
                    &format!("s{i}:0:1"),
                    i as i64,
                    (i / 3) as i64,
                    emb(i, dim),
                )
            })
            .collect();
        let t = Instant::now();
        write_segments(&path, &rows).unwrap();
        eprintln!(
            "write {n} x {dim} ({} MB file): {:?}, peak {} MB",
            std::fs::metadata(&path).unwrap().len() >> 20,
            t.elapsed(),
            peak_mb()
        );
    }
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "large_parquet_read_child",
            "--ignored",
            "--nocapture",
            "--exact",
        ])
        .env("SEGCLUST_BIG_FILE", &path)
        .status()
        .unwrap();
    assert!(status.success());
}

/// The reading half of `large_parquet_file_timings`; does nothing when run on its own.
#[test]
#[ignore = "child of large_parquet_file_timings"]
fn large_parquet_read_child() {
    use std::time::Instant;
    let Some(path) = std::env::var_os("SEGCLUST_BIG_FILE") else {
        return;
    };
    let src = FileSource::open(&path, 1).unwrap();
    let t = Instant::now();
    assert_eq!(src.teams().unwrap(), vec![1]);
    eprintln!("key pass: {:?}, peak {} MB", t.elapsed(), peak_mb());
    let t = Instant::now();
    let mut after = None;
    let mut total = 0;
    while let Some(last) = {
        let page = src.read_after(1, after.as_ref(), None, 5_000).unwrap();
        total += page.rows.len();
        page.last
    } {
        after = Some(last);
    }
    assert_eq!(total, 20_000);
    eprintln!(
        "all pages of 5000: {:?}, peak {} MB",
        t.elapsed(),
        peak_mb()
    );
    let t = Instant::now();
    let page = src.read_after(1, None, None, 5_000).unwrap();
    let v = validate(page.rows, None);
    assert_eq!(v.embeddings.rows(), 5_000);
    eprintln!(
        "one page + validate: {:?}, peak {} MB",
        t.elapsed(),
        peak_mb()
    );
}
