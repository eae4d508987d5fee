//! `segclust evaluate` end to end: the demo writes its ground truth beside its segments file,
//! the main job runs, and the scores of the store it left say the planted problems came back as
//! Tasks. The demo's stand-in embeddings put paraphrases of one problem close by construction,
//! so these are bars the pipeline must clear, not a measurement of a real embedding model's
//! quality (tools/quality/run.sh does that, with all-MiniLM-L6-v2).

mod common;
use common::segclust;
use std::process::Command;

const NOW: &str = "1764000000000";

#[test]
fn the_demo_with_its_truth_scores_its_planted_problems_as_found() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = dir.path().join("demo.parquet").display().to_string();
    let truth = dir.path().join("truth.jsonl").display().to_string();
    let store = format!("sqlite://{}", dir.path().join("demo.db").display());
    segclust(&[
        "demo", "--source", &source, "--store", &store, "--truth", &truth, "--now-ms", NOW,
        "--device", "cpu",
    ]);

    let json = segclust(&["evaluate", "--store", &store, "--truth", &truth, "--json"]);
    let s: serde_json::Value = serde_json::from_str(&json).expect("evaluate --json is JSON");
    let n = |k: &str| s[k].as_u64().unwrap_or_else(|| panic!("{k} in {json}"));
    let f = |k: &str| s[k].as_f64().unwrap_or_else(|| panic!("{k} in {json}"));
    // The demo's defaults: 3,000 segments, 30 problems of which 26 recur (22 frequent, 4 seen
    // twice) and 4 are single crashes (src/demo.rs), a quarter ordinary use.
    assert_eq!((n("segments"), n("problems")), (3000, 30), "{json}");
    assert_eq!(n("recurring_problems"), 26, "{json}");
    assert_eq!(n("ordinary_segments"), 750, "{json}");
    assert_eq!(
        n("unlabelled_links"),
        0,
        "every linked segment is in the truth"
    );
    // Every recurring problem is a Task, once, and no Task mixes two problems.
    assert_eq!(n("recurring_found"), 26, "{json}");
    assert_eq!(n("duplicate_tasks"), 0, "{json}");
    assert_eq!(n("mixed_tasks"), 0, "{json}");
    assert!(f("segments_in_their_task") >= 0.9, "{json}");
    assert!(f("bcubed_precision") >= 0.99, "{json}");
    assert!(f("adjusted_rand_index") >= 0.9, "{json}");
    // The per-problem lines add up to the totals.
    let per = s["per_problem"].as_array().expect("per_problem");
    assert_eq!(per.len(), 30);
    let total: u64 = per
        .iter()
        .map(|p| p["segments"].as_u64().unwrap_or(0))
        .sum();
    assert_eq!(total, n("problem_segments"));
    for p in per {
        let parts: u64 = ["in_own_tasks", "elsewhere", "unlinked"]
            .iter()
            .map(|k| p[*k].as_u64().unwrap_or(0))
            .sum();
        assert_eq!(Some(parts), p["segments"].as_u64(), "{p}");
    }

    let text = segclust(&[
        "evaluate",
        "--store",
        &store,
        "--truth",
        &truth,
        "--problems",
    ]);
    assert!(
        text.contains("recurring problems found") && text.contains("26 of 26"),
        "{text}"
    );
    assert!(
        text.contains("Checkout Pay button does nothing"),
        "--problems names each problem: {text}"
    );
}

#[test]
fn the_truth_is_only_written_with_a_new_segments_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = dir.path().join("demo.parquet");
    std::fs::write(&source, b"not parquet").expect("write");
    let truth = dir.path().join("truth.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_segclust"))
        .args(["demo", "--source"])
        .arg(&source)
        .arg("--truth")
        .arg(&truth)
        .args(["--store", "sqlite::memory:"])
        .output()
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("remove it or pass another --source"),
        "{stderr}"
    );
    assert!(
        !truth.exists(),
        "no truth for a file the demo did not write"
    );
}
