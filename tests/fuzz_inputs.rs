//! The fuzz properties (`fuzz/properties.rs`) on stable Rust, in CI: every committed seed and
//! regression, then a seeded mutation loop over each. libFuzzer explores far more
//! (`tools/fuzz.sh`); this keeps what it found fixed, and catches the plain regressions.

#[path = "../fuzz/properties.rs"]
mod properties;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::builder::{Float64Builder, ListBuilder};
use arrow_array::{ArrayRef, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow_array::{TimestampMicrosecondArray, TimestampSecondArray};
use arrow_schema::{DataType, Field, Schema, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::file::properties::WriterProperties;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use segclust::segment::RawSegment;

/// Values a mutation may splice in: the edges of JSON, numbers and text that parsers get wrong.
const TOKENS: &[&str] = &[
    "null",
    "\"",
    "\\",
    "1e999",
    "-1e999",
    "-0",
    "0.0",
    "9223372036854775807",
    "9223372036854775808",
    "-9223372036854775809",
    "1.5e-45",
    "3.5e38",
    "[]",
    "{}",
    "[[1]]",
    "true",
    "\"NaN\"",
    "\"\\u0000\"",
    "\"\\ud800\"",
    "\"\u{202e}\"",
    "\"\u{1F600}\"",
    "é",
    "\n",
    "\r\n",
    ",",
    ":",
    "\"team_id\":",
    "\"document_id\":",
    "\"timestamp\":",
    "\"inserted_at\":",
    "\"embedding\":",
    "\"metadata\":",
    "\"session_id\":",
    "\"1970-01-01 00:00:00\"",
    "\"9999-12-31T23:59:59.999Z\"",
    "\"2024-02-30 25:61:61\"",
    "<data>",
    "</data>",
    "```",
    "'",
    "=",
    "[",
    "]]",
    "\"5m\"",
    "\"0s\"",
    "\"99999999999999999999h\"",
];

/// Binary edges: lengths, offsets and counts that overflow or point outside the file.
const WORDS: &[u32] = &[
    0,
    1,
    2,
    3,
    4,
    7,
    8,
    0x7f,
    0x80,
    0xff,
    0xffff,
    0x7fff_ffff,
    u32::MAX,
];

fn mutate(rng: &mut StdRng, seed: &[u8], binary: bool) -> Vec<u8> {
    let mut b = seed.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let at = rng.random_range(0..=b.len());
        match rng.random_range(0..6) {
            0 if !b.is_empty() => {
                let i = rng.random_range(0..b.len());
                b[i] = rng.random();
            }
            1 if !b.is_empty() => {
                let end = rng.random_range(at..=b.len().min(at + 64));
                b.drain(at..end);
            }
            2 => {
                let end = rng.random_range(at..=b.len().min(at + 256));
                let copy = b[at..end].to_vec();
                let to = rng.random_range(0..=b.len());
                b.splice(to..to, copy);
            }
            3 if binary && b.len() >= 4 => {
                let i = rng.random_range(0..=b.len() - 4);
                let w = WORDS[rng.random_range(0..WORDS.len())];
                b[i..i + 4].copy_from_slice(&w.to_le_bytes());
            }
            3 | 4 => {
                let t = TOKENS[rng.random_range(0..TOKENS.len())].as_bytes();
                b.splice(at..at, t.iter().copied());
            }
            _ => b.truncate(at),
        }
    }
    b
}

fn seeds(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut out = Vec::new();
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for e in entries {
            let path = e.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            out.push((path, bytes));
        }
    }
    out.sort();
    out
}

/// Inputs once found failing: they need not reach the deep paths a seed is chosen for.
fn is_regression(path: &Path) -> bool {
    path.components().any(|c| c.as_os_str() == "regressions")
}

/// Runs `check` on every seed, then on `rounds` mutations of them; fails naming the input.
fn campaign(
    name: &str,
    seeds: &[(PathBuf, Vec<u8>)],
    rounds: usize,
    binary: bool,
    check: impl Fn(&[u8]) -> Result<(), String>,
) {
    assert!(!seeds.is_empty(), "{name}: no seeds");
    for (path, bytes) in seeds {
        if let Err(e) = check(bytes) {
            panic!("{name}: {} breaks a property: {e}", path.display());
        }
    }
    // Regressions are replayed, not mutated: some make the parquet crate spin until the read's
    // deadline, and mutations of them would mostly spin too.
    let parents: Vec<&[u8]> = seeds
        .iter()
        .filter(|(p, _)| !is_regression(p))
        .map(|(_, b)| b.as_slice())
        .collect();
    let mut rng = StdRng::seed_from_u64(0x5e9c1);
    for round in 0..rounds {
        let seed = parents[round % parents.len()];
        let input = mutate(&mut rng, seed, binary);
        if std::env::var_os("SEGCLUST_FUZZ_TRACE").is_some() {
            // For a hang: the input in hand is always on disk.
            let now = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-current.bin"));
            std::fs::write(&now, &input).unwrap();
            eprintln!("{name}: mutation {round}");
        }
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(&input)));
        let failure = match outcome {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => format!("breaks a property: {e}"),
            Err(_) => "panics (the message is above)".to_string(),
        };
        // Kept for a regression file: fuzz/regressions/<target>/.
        let saved = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{round}.bin"));
        std::fs::write(&saved, &input).unwrap();
        panic!(
            "{name}: mutation {round} {failure}; the input is in {}",
            saved.display()
        );
    }
}

fn text_check(f: fn(&str) -> Result<(), String>) -> impl Fn(&[u8]) -> Result<(), String> {
    move |b| f(&String::from_utf8_lossy(b))
}

#[test]
fn segments_jsonl_keeps_every_row() {
    let seeds = seeds("segments_jsonl");
    // The seed is only useful while it reaches every kind of row it was written with.
    let rows = properties::segments_file(&seeds[0].1, "jsonl").unwrap();
    assert_eq!(
        rows, 14,
        "the mixed seed's non-blank lines, as rows or rejected records"
    );
    campaign("segments_jsonl", &seeds, 20_000, false, |b| {
        properties::segments_file(b, "jsonl").map(drop)
    });
}

#[test]
fn segments_parquet_keeps_every_row() {
    let mut seeds = seeds("segments_parquet");
    seeds.extend(parquet_seeds());
    for (path, bytes) in seeds.iter().filter(|(p, _)| !is_regression(p)) {
        let rows = properties::segments_file(bytes, "parquet").unwrap();
        assert!(
            rows > 0,
            "{} reads no rows: a seed must reach the readers",
            path.display()
        );
    }
    if let Some(dir) = std::env::var_os("SEGCLUST_FUZZ_SEEDS_OUT") {
        // tools/fuzz.sh seeds libFuzzer's Parquet corpus with the files built here.
        std::fs::create_dir_all(&dir).unwrap();
        for (path, bytes) in &seeds {
            std::fs::write(Path::new(&dir).join(path.file_name().unwrap()), bytes).unwrap();
        }
    }
    campaign("segments_parquet", &seeds, 10_000, true, |b| {
        properties::segments_file(b, "parquet").map(drop)
    });
}

#[test]
fn npy_files_never_panic_and_round_trip() {
    let seeds = seeds("npy");
    for (path, bytes) in seeds.iter().filter(|(p, _)| !is_regression(p)) {
        let file = properties::Scratch::new("npy", bytes);
        let readable = segclust::npy::read_matrix(file.path()).is_ok()
            || segclust::npy::read_i64(file.path()).is_ok();
        assert!(readable, "{} must be a readable seed", path.display());
    }
    campaign("npy", &seeds, 20_000, true, properties::npy_file);
}

#[test]
fn model_answers_stay_within_the_limits() {
    let seeds = seeds("llm_answer");
    let accepted = |name: &str, lenient: bool| {
        let (_, bytes) = seeds.iter().find(|(p, _)| p.ends_with(name)).unwrap();
        let text = String::from_utf8_lossy(bytes);
        segclust::labeling::prompt::check_answer(&text, lenient).is_ok()
    };
    // The seeds reach both outcomes, so the mutations start from either side of the checks.
    assert!(accepted("good.json", false));
    assert!(!accepted("fenced.txt", false));
    campaign(
        "llm_answer",
        &seeds,
        50_000,
        false,
        text_check(properties::llm_answer),
    );
}

#[test]
fn no_description_escapes_the_prompts_data_block() {
    campaign(
        "prompt",
        &seeds("prompt"),
        20_000,
        false,
        text_check(properties::prompt),
    );
}

#[test]
fn config_files_are_refused_with_an_error_or_answer_every_question() {
    let seeds = seeds("config");
    let (_, example) = seeds
        .iter()
        .find(|(p, _)| p.ends_with("example.toml"))
        .unwrap();
    let text = String::from_utf8_lossy(example);
    assert!(segclust::config::Config::parse(&text, "example.toml", &[]).is_ok());
    campaign(
        "config",
        &seeds,
        20_000,
        false,
        text_check(properties::config_text),
    );
}

/// Parquet files as segclust writes them, and as other writers might: nulls in every column,
/// narrower integers, seconds and microseconds, float64 embeddings with a null and a NaN, and
/// row groups of two rows so that pages straddle them.
fn parquet_seeds() -> Vec<(PathBuf, Vec<u8>)> {
    let ours: Vec<RawSegment> = (0..5)
        .map(|i| RawSegment {
            team_id: 1 + i % 2,
            document_id: format!("doc-{}", i / 2), // pairs share an id within a team's rows
            content: format!("User retries the upload, attempt {i}"),
            metadata: format!(r#"{{"session_id":"s{i}","distinct_id":"u{}"}}"#, i % 3),
            timestamp_ms: 1_700_000_000_000 + i,
            inserted_at_ms: 1_700_000_000_000 + i / 2,
            embedding: vec![0.5, -0.25, i as f32, 1.0],
        })
        .collect();
    let scratch = properties::Scratch::new("parquet", &[]);
    segclust::source::write_segments(scratch.path(), &ours).unwrap();
    let written = std::fs::read(scratch.path()).unwrap();

    let item = Arc::new(Field::new_list_field(DataType::Float64, true));
    let schema = Arc::new(Schema::new(vec![
        Field::new("team_id", DataType::Int32, true),
        Field::new("document_id", DataType::Utf8, true),
        Field::new("content", DataType::Utf8, true),
        Field::new("metadata", DataType::Utf8, true),
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Second, None),
            true,
        ),
        Field::new(
            "inserted_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Field::new("embedding", DataType::List(Arc::clone(&item)), true),
        Field::new("extra", DataType::Int64, true),
    ]));
    let mut emb = ListBuilder::new(Float64Builder::new()).with_field(Arc::clone(&item));
    for row in [
        Some(vec![Some(1.0), Some(0.0), Some(0.5)]),
        Some(vec![Some(1.0), None, Some(0.5)]),
        None,
        Some(vec![Some(f64::NAN), Some(1.0), Some(1.0)]),
        Some(vec![Some(1e300), Some(1.0), Some(1.0)]),
        Some(vec![Some(0.2), Some(0.3), Some(0.4)]),
    ] {
        match row {
            Some(values) => {
                for v in values {
                    emb.values().append_option(v);
                }
                emb.append(true);
            }
            None => emb.append(false),
        }
    }
    let meta = r#"{"session_id":"s","distinct_id":"u","crashed":true}"#;
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int32Array::from(vec![
            Some(3),
            None,
            Some(3),
            Some(4),
            Some(3),
            Some(3),
        ])),
        Arc::new(StringArray::from(vec![
            Some("x1"),
            Some("x2"),
            None,
            Some("x4"),
            Some(""),
            Some("x6"),
        ])),
        Arc::new(StringArray::from(vec![
            Some("Checkout crashes"),
            None,
            Some("c"),
            Some("c"),
            Some("c"),
            Some("Search is slow"),
        ])),
        Arc::new(StringArray::from(vec![
            Some(meta),
            Some(meta),
            None,
            Some("[1,2]"),
            Some(meta),
            Some("{}"),
        ])),
        Arc::new(TimestampSecondArray::from(vec![
            Some(1_700_000_000),
            Some(1_700_000_001),
            None,
            Some(-5),
            Some(1_700_000_004),
            None,
        ])),
        Arc::new(
            TimestampMicrosecondArray::from(vec![
                Some(1_700_000_000_000_000),
                None,
                None,
                Some(i64::MIN),
                Some(1_700_000_000_000_000),
                Some(1_700_000_005_000_000),
            ])
            .with_timezone("UTC"),
        ),
        Arc::new(emb.finish()),
        Arc::new(Int64Array::from(vec![
            None,
            Some(1),
            None,
            None,
            None,
            None,
        ])),
    ];
    let batch = RecordBatch::try_new(Arc::clone(&schema), columns).unwrap();
    let props = WriterProperties::builder()
        .set_max_row_group_row_count(Some(2))
        .build();
    let mut others = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut others, schema, Some(props)).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    vec![
        (PathBuf::from("written.parquet"), written),
        (PathBuf::from("nulls.parquet"), others),
    ]
}

#[test]
fn a_read_that_spins_is_given_up_at_its_deadline() {
    use segclust::source::{FileSource, Source};
    use std::time::Duration;
    // A page header that tells the parquet crate to skip billions of levels: it spins for
    // minutes. A run must get an error at the read's deadline instead of hanging.
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions/segments_parquet/page-header-spins.parquet");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .unwrap();
        let outcome = runtime.block_on(async {
            let file = FileSource::open(&path, 1)?.with_deadline(Duration::from_secs(1));
            let source = Source::File(Arc::new(file));
            for team in source.teams().await? {
                let mut after = None;
                while let Some(last) = source.read_after(team, after.as_ref(), None, 3).await?.last
                {
                    after = Some(last);
                }
            }
            anyhow::Ok(())
        });
        let _ = tx.send(outcome.map_err(|e| format!("{e:#}")));
        runtime.shutdown_background();
    });
    let outcome = rx.recv_timeout(Duration::from_secs(60));
    let err = outcome
        .expect("the read was not given up at its deadline")
        .expect_err("the file reads: it no longer spins, so it tests nothing");
    assert!(err.contains("took over 1s and was given up"), "{err}");
    assert!(err.contains("page-header-spins.parquet"), "{err}");
}
