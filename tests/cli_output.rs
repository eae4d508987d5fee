//! Command output as a shell user or a scraper consumes it: `segclust tasks | head` must end
//! quietly when the reader goes away, the way Unix tools do, not with a panic message and a
//! failure status; `--metrics-file` must say what the run did, in Prometheus' text format.

mod common;
use common::segclust;
use std::process::{Command, Stdio};

use segclust::demo::{DemoParams, generate};
use segclust::source::write_segments;

const NOW: i64 = 1_764_000_000_000;

/// A demo segments file (64 dimensions, team 1) and a SQLite store beside it, in a temporary
/// directory.
struct Demo {
    dir: tempfile::TempDir,
    source: String,
    store: String,
    rows: usize,
}

impl Demo {
    fn new(seed: u64, segments: usize, users: usize, problems: usize) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let source = dir.path().join("segments.parquet");
        let p = DemoParams {
            seed,
            segments,
            dim: 64,
            users,
            problems,
            ..DemoParams::default()
        };
        let rows = generate(&p, NOW);
        write_segments(&source, &rows).expect("write segments");
        let store = format!("sqlite://{}", dir.path().join("store.db").display());
        Self {
            source: source.display().to_string(),
            store,
            rows: rows.len(),
            dir,
        }
    }
}

#[test]
fn tasks_ends_quietly_when_its_reader_closes_the_pipe() {
    let d = Demo::new(3, 400, 80, 8);
    let (src, store, now) = (d.source.clone(), d.store.clone(), NOW.to_string());
    segclust(&[
        "run", "--source", &src, "--store", &store, "--team", "1", "--dim", "64", "--now-ms", &now,
        "--device", "cpu",
    ]);
    let full = segclust(&["tasks", "--store", &store, "--team", "1", "--now-ms", &now]);
    assert!(
        full.lines().count() > 2,
        "the demo rows should make Tasks to list: {full}"
    );

    for extra in [&[][..], &["--json"][..]] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_segclust"))
            .args(["tasks", "--store", &store, "--team", "1", "--now-ms", &now])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("could not start segclust");
        // Close the read end before the process (still opening its store) writes a byte, as
        // `head -0` would: its first write fails with EPIPE.
        drop(child.stdout.take());
        let out = child.wait_with_output().expect("segclust tasks");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && !stderr.contains("panicked"),
            "tasks {extra:?} into a closed pipe: {} {stderr}",
            out.status
        );
    }
}

#[test]
fn logs_into_a_file_or_pipe_are_plain_text() {
    // The batch job's stderr is read by log collectors, not terminals: no colour escapes, and
    // a filter that does not parse is said in the log instead of silently meaning `info`.
    let d = Demo::new(5, 200, 40, 4);
    let now = NOW.to_string();
    for (i, (log, json)) in [("info", false), ("segclust=dbug,[", false), ("info", true)]
        .into_iter()
        .enumerate()
    {
        // A store of its own each time, so that every run commits a batch.
        let store = format!(
            "sqlite://{}",
            d.dir.path().join(format!("{i}.db")).display()
        );
        let mut args = vec![
            "run", "--source", &d.source, "--store", &store, "--team", "1", "--dim", "64",
            "--now-ms", &now, "--device", "cpu", "--log", log,
        ];
        if json {
            args.push("--log-json");
        }
        let out = Command::new(env!("CARGO_BIN_EXE_segclust"))
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .output()
            .expect("could not start segclust");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "run --log {log:?}: {stderr}");
        assert!(
            stderr.contains("INFO") || stderr.contains("\"level\":\"INFO\""),
            "run --log {log:?} logged nothing at info: {stderr}"
        );
        assert!(
            !stderr.contains('\u{1b}'),
            "escape codes in a log written to a pipe (--log {log:?}): {stderr:?}"
        );
        // One team span per line, not the coordinator's and the pipeline's both.
        let committed = stderr
            .lines()
            .find(|l| l.contains("batch committed"))
            .unwrap_or_else(|| panic!("no batch was committed: {stderr}"));
        let spans =
            committed.matches("team:").count() + committed.matches("\"name\":\"team\"").count();
        assert_eq!(
            spans,
            if json { 2 } else { 1 },
            "the team span, once (JSON: as `span` and in `spans`): {committed}"
        );
        let warned = stderr.contains("is not a log filter");
        assert_eq!(warned, log.contains('['), "--log {log:?}: {stderr}");
    }
}

/// The value of one sample line `name value` of a Prometheus text file.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn run_writes_what_it_did_to_the_metrics_file() {
    let d = Demo::new(5, 300, 60, 6);
    let (src, store, now) = (d.source.clone(), d.store.clone(), NOW.to_string());
    let prom = d.dir.path().join("segclust.prom");
    let prom_s = prom.display().to_string();
    let run = || {
        segclust(&[
            "run",
            "--source",
            &src,
            "--store",
            &store,
            "--team",
            "1",
            "--dim",
            "64",
            "--now-ms",
            &now,
            "--device",
            "cpu",
            "--metrics-file",
            &prom_s,
        ]);
        std::fs::read_to_string(&prom).expect("the metrics file")
    };
    let text = run();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (_, v) = line.rsplit_once(' ').expect("name value");
        assert!(v.parse::<f64>().is_ok(), "not a sample line: {line}");
    }
    let team = |name: &str| sample(&text, &format!("{name}{{team=\"1\"}}"));
    assert_eq!(team("segclust_segments_read_total"), Some(d.rows as f64));
    assert_eq!(team("segclust_team_runs_succeeded_total"), Some(1.0));
    assert!(
        team("segclust_batches_total").is_some_and(|b| b >= 1.0),
        "{text}"
    );
    let listed: serde_json::Value = serde_json::from_str(&segclust(&[
        "tasks",
        "--store",
        &store,
        "--team",
        "1",
        "--now-ms",
        &now,
        "--json",
        "--include-routine",
    ]))
    .expect("tasks --json");
    let tasks = listed.as_array().map_or(0, Vec::len);
    assert!(tasks > 0);
    assert_eq!(team("segclust_tasks_created_total"), Some(tasks as f64));
    assert_eq!(sample(&text, "segclust_runs_total"), Some(1.0));
    assert_eq!(sample(&text, "segclust_gpu_fallbacks_total"), Some(0.0));
    assert!(
        !text.contains("segclust_gpu_up"),
        "no GPU was opened, so no gauge that could read as a GPU down:\n{text}"
    );

    // A rerun is a new process: its counters start again, and it found nothing new.
    let text = run();
    let team = |name: &str| sample(&text, &format!("{name}{{team=\"1\"}}"));
    assert_eq!(team("segclust_segments_read_total"), Some(0.0));
    assert_eq!(team("segclust_tasks_created_total"), Some(0.0));
    assert_eq!(team("segclust_team_runs_succeeded_total"), Some(1.0));
}
