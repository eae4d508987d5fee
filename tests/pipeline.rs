//! The one-team pipeline end to end on real files and a real SQLite store: reruns change
//! nothing, appended rows add only themselves, bad rows are quarantined with reasons, and the
//! demo's planted problems come out as Tasks.

use segclust::demo::{DemoParams, generate_with_truth};
use segclust::device::Device;
use segclust::labeling::FallbackLabeler;
use segclust::pipeline::{PipelineConfig, run_team};
use segclust::segment::RawSegment;
use segclust::source::{Source, write_segments};
use segclust::store::Store;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

const NOW: i64 = 1_764_000_000_000;
const DIM: usize = 384;

fn demo(segments: usize, seed: u64) -> (Vec<RawSegment>, Vec<Option<usize>>) {
    let p = DemoParams {
        seed,
        segments,
        dim: DIM,
        users: 150,
        ..DemoParams::default()
    };
    generate_with_truth(&p, NOW)
}

fn config() -> PipelineConfig {
    PipelineConfig {
        dim: Some(DIM),
        ..PipelineConfig::default()
    }
}

struct Env {
    _dir: tempfile::TempDir,
    file: std::path::PathBuf,
    store: Store,
    device: Arc<Device>,
}

async fn env(rows: &[RawSegment]) -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("segments.parquet");
    write_segments(&file, rows).expect("write segments");
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    let store = Store::connect(&url).await.expect("sqlite store");
    Env {
        _dir: dir,
        file,
        store,
        device: Arc::new(Device::cpu()),
    }
}

impl Env {
    async fn run(&self) -> Vec<segclust::pipeline::BatchReport> {
        self.run_with(&config()).await
    }

    async fn run_with(&self, cfg: &PipelineConfig) -> Vec<segclust::pipeline::BatchReport> {
        let source = Arc::new(Source::open_file(&self.file, 1).expect("open source"));
        run_team(
            &source,
            &self.store,
            &self.device,
            &FallbackLabeler,
            1,
            cfg,
            NOW,
        )
        .await
        .expect("run")
    }

    /// Everything a run leaves behind, in a comparable form.
    async fn snapshot(
        &self,
    ) -> (
        Vec<(i64, String, i64, i64)>,
        Vec<(String, i64)>,
        Option<String>,
    ) {
        let tasks = self.store.tasks(1).await.expect("tasks");
        let mut links = Vec::new();
        for t in &tasks {
            for l in self.store.links(1, t.id).await.expect("links") {
                links.push((l.document_id, t.id));
            }
        }
        links.sort();
        let wm = self
            .store
            .watermark(1)
            .await
            .expect("watermark")
            .map(|w| format!("{}/{}", w.inserted_at_ms, w.document_id));
        let tasks = tasks
            .into_iter()
            .map(|t| (t.id, t.title, t.segment_count, t.distinct_user_count))
            .collect();
        (tasks, links, wm)
    }
}

#[tokio::test]
async fn rerun_is_a_no_op() {
    let (rows, _) = demo(600, 3);
    let env = env(&rows).await;
    let first = env.run().await;
    assert_eq!(first.iter().map(|r| r.segments_read).sum::<usize>(), 600);
    let before = env.snapshot().await;
    assert!(!before.0.is_empty(), "the demo must produce Tasks");
    assert!(before.2.is_some(), "the watermark must be set");
    let second = env.run().await;
    assert!(
        second.is_empty(),
        "nothing is new after the watermark: {second:?}"
    );
    assert_eq!(env.snapshot().await, before);
}

#[tokio::test]
async fn appended_rows_add_only_themselves() {
    let (mut rows, _) = demo(800, 5);
    rows.sort_by(|a, b| {
        (a.inserted_at_ms, &a.document_id).cmp(&(b.inserted_at_ms, &b.document_id))
    });
    let later = rows.split_off(500);
    let env = env(&rows).await;
    env.run().await;
    let (tasks_before, links_before, _) = env.snapshot().await;
    let carried: HashSet<String> = env
        .store
        .carry_over(1, 0, usize::MAX)
        .await
        .expect("carry over")
        .ids
        .into_iter()
        .collect();
    // Append: rewrite the file with the old rows plus new ones, as a growing export would.
    let all: Vec<RawSegment> = rows.iter().chain(&later).cloned().collect();
    write_segments(&env.file, &all).expect("rewrite");
    let reports = env.run().await;
    assert_eq!(
        reports.iter().map(|r| r.segments_read).sum::<usize>(),
        300,
        "only appended rows are read"
    );
    let (tasks_after, links_after, _) = env.snapshot().await;
    let old: HashSet<_> = links_before.iter().cloned().collect();
    // Old links are untouched; every new link is an appended row or an earlier noise row that
    // was carried over and now found company.
    assert!(old.iter().all(|l| links_after.contains(l)));
    let appended: HashSet<&str> = later.iter().map(|r| r.document_id.as_str()).collect();
    for (doc, _) in links_after.iter().filter(|l| !old.contains(*l)) {
        assert!(
            appended.contains(doc.as_str()) || carried.contains(doc),
            "{doc} was linked twice or out of nowhere"
        );
    }
    let docs: Vec<&String> = links_after.iter().map(|(d, _)| d).collect();
    assert_eq!(
        docs.len(),
        docs.iter().collect::<HashSet<_>>().len(),
        "a document is linked once"
    );
    assert!(tasks_after.len() >= tasks_before.len());
}

/// More unlinked segments in the carry-over window than `carry_over_max_segments`: the batch
/// takes the most recent, and reports how many it left out.
#[tokio::test]
async fn carry_over_takes_the_most_recent_up_to_its_cap() {
    let (mut rows, _) = demo(800, 5);
    rows.sort_by(|a, b| {
        (a.inserted_at_ms, &a.document_id).cmp(&(b.inserted_at_ms, &b.document_id))
    });
    let later = rows.split_off(500);
    let env = env(&rows).await;
    // A tight threshold and no rescue leave many noise rows unlinked.
    let cfg = PipelineConfig {
        task_match_threshold: 0.1,
        high_impact_noise_threshold: 1.0,
        ..config()
    };
    env.run_with(&cfg).await;
    let window = NOW - 7 * 86_400_000;
    let waiting = env
        .store
        .carry_over(1, window, usize::MAX)
        .await
        .expect("carry over")
        .ids;
    assert!(
        waiting.len() >= 4,
        "only {} rows left unlinked",
        waiting.len()
    );
    let cap = waiting.len() / 2;
    let all: Vec<RawSegment> = rows.iter().chain(&later).cloned().collect();
    write_segments(&env.file, &all).expect("rewrite");
    let reports = env
        .run_with(&PipelineConfig {
            carry_over_max_segments: cap,
            ..cfg
        })
        .await;
    assert_eq!(reports.len(), 1, "{reports:?}");
    assert_eq!(reports[0].carried_over, cap);
    assert_eq!(reports[0].carry_over_left_out, waiting.len() - cap);
    // The oldest waited: none of them was linked by this batch.
    let (_, links, _) = env.snapshot().await;
    let linked: HashSet<&str> = links.iter().map(|(d, _)| d.as_str()).collect();
    let times: HashMap<&str, i64> = rows
        .iter()
        .map(|r| (r.document_id.as_str(), r.timestamp_ms))
        .collect();
    let mut by_age: Vec<&String> = waiting.iter().collect();
    by_age.sort_by_key(|d| (times[d.as_str()], d.to_string()));
    assert!(
        by_age[..waiting.len() - cap]
            .iter()
            .all(|d| !linked.contains(d.as_str())),
        "a row left out of the carry-over was linked"
    );
}

#[tokio::test]
async fn bad_rows_are_quarantined_and_the_rest_goes_through() {
    let (mut rows, _) = demo(300, 9);
    let good = rows.len();
    let mut bad = |f: &dyn Fn(&mut RawSegment), id: &str| {
        let mut r = rows[0].clone();
        r.document_id = id.to_string();
        f(&mut r);
        rows.push(r);
    };
    bad(&|r| r.embedding[3] = f32::NAN, "bad-nan:0:1");
    bad(&|r| r.embedding[5] = f32::INFINITY, "bad-inf:0:1");
    bad(
        &|r| r.embedding.iter_mut().for_each(|x| *x = 0.0),
        "bad-zero:0:1",
    );
    bad(&|r| r.embedding.truncate(100), "bad-dim:0:1");
    bad(&|r| r.metadata = "{not json".into(), "bad-meta:0:1");
    let dup = rows[1].clone();
    rows.push(dup);
    let env = env(&rows).await;
    let reports = env.run().await;
    let q = env.store.quarantined(1).await.expect("quarantined");
    let reasons: HashMap<&str, &str> = q
        .iter()
        .map(|q| (q.document_id.as_str(), q.reason.as_str()))
        .collect();
    for id in [
        "bad-nan:0:1",
        "bad-inf:0:1",
        "bad-zero:0:1",
        "bad-dim:0:1",
        "bad-meta:0:1",
        rows[1].document_id.as_str(),
    ] {
        let reason = reasons
            .get(id)
            .unwrap_or_else(|| panic!("{id} not quarantined: {reasons:?}"));
        assert!(!reason.is_empty());
    }
    assert_eq!(
        reports.iter().map(|r| r.clustered).sum::<usize>(),
        good,
        "every good row is clustered"
    );
    assert!(!env.store.tasks(1).await.expect("tasks").is_empty());
}

#[tokio::test]
async fn small_batches_are_not_clustered_but_not_lost() {
    let (rows, _) = demo(2, 11);
    let env = env(&rows).await;
    let reports = env.run().await;
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].clusters, 0);
    // Unless a row is high-impact (rescued), it waits in the carry-over set for later batches.
    let linked = reports[0].links;
    let carried = env
        .store
        .carry_over(1, 0, usize::MAX)
        .await
        .expect("carry over")
        .ids
        .len();
    assert_eq!(linked + carried, 2);
}

#[tokio::test]
async fn demo_problems_become_tasks() {
    let (rows, truth) = demo(1500, 21);
    let env = env(&rows).await;
    env.run().await;
    let (_, links, _) = env.snapshot().await;
    let task_of: HashMap<&str, i64> = links.iter().map(|(d, t)| (d.as_str(), *t)).collect();
    // For every planted problem seen at least 5 times, most of its segments share one Task.
    let mut by_problem: HashMap<usize, Vec<Option<i64>>> = HashMap::new();
    for (r, p) in rows.iter().zip(&truth) {
        if let Some(p) = p {
            by_problem
                .entry(*p)
                .or_default()
                .push(task_of.get(r.document_id.as_str()).copied());
        }
    }
    let mut checked = 0;
    for (p, tasks) in by_problem.iter().filter(|(_, t)| t.len() >= 5) {
        let mut counts: HashMap<Option<i64>, usize> = HashMap::new();
        tasks
            .iter()
            .for_each(|t| *counts.entry(*t).or_default() += 1);
        let (top, n) = counts
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(t, n)| (*t, *n))
            .unwrap_or((None, 0));
        assert!(top.is_some(), "problem {p}: most segments unlinked");
        assert!(
            n * 10 >= tasks.len() * 8,
            "problem {p}: only {n} of {} segments in one Task",
            tasks.len()
        );
        checked += 1;
    }
    assert!(
        checked >= 10,
        "the demo plants at least 10 frequent problems, saw {checked}"
    );
}

/// Each committed batch leaves one `runs` row with its figures, its quarantine reasons counted by
/// kind, and a map of every clustered row pointing at Tasks that exist; a rerun adds none.
#[tokio::test]
async fn each_batch_records_its_run_for_the_report() {
    let (mut rows, _) = demo(300, 5);
    for (i, at) in [3usize, 7].into_iter().enumerate() {
        let mut r = rows[i].clone();
        r.document_id = format!("bad-nan-{i}:0:1");
        r.embedding[at] = f32::NAN;
        rows.push(r);
    }
    let env = env(&rows).await;
    let reports = env.run().await;
    assert_eq!(reports.len(), 1);
    let runs = env.store.runs(1, 10).await.expect("runs");
    assert_eq!(runs.len(), 1, "one row per committed batch");
    let (r, f) = (&runs[0], &runs[0].figures);
    let b = &reports[0];
    assert_eq!(
        (
            f.segments_read,
            f.clustered,
            f.clusters,
            f.noise,
            f.quarantined
        ),
        (
            b.segments_read as i64,
            b.clustered as i64,
            b.clusters as i64,
            b.noise as i64,
            b.quarantined as i64
        )
    );
    assert_eq!(
        (f.tasks_created, f.tasks_updated, f.links),
        (
            b.tasks_created as i64,
            b.tasks_updated as i64,
            b.links as i64
        )
    );
    assert_eq!(
        r.quarantine_reasons,
        vec![("embedding value at index N is NaN".to_string(), 2)]
    );
    assert_eq!(
        r.map.len(),
        b.clustered,
        "under 5,000 rows every row is drawn"
    );
    let task_ids: HashSet<i64> = env
        .store
        .tasks(1)
        .await
        .expect("tasks")
        .iter()
        .map(|t| t.id)
        .collect();
    let linked = r.map.iter().filter_map(|p| p.task_id).collect::<Vec<_>>();
    assert_eq!(linked.len(), b.links, "every linked row carries its Task");
    assert!(linked.iter().all(|id| task_ids.contains(id)));
    assert_eq!(
        r.map.iter().filter(|p| p.cluster < 0).count(),
        b.noise,
        "noise rows are marked as noise"
    );
    assert!(
        r.map.iter().any(|p| p.x != 0.0) && r.map.iter().any(|p| p.y != 0.0),
        "rows sit on the PCA plane"
    );

    assert!(env.run().await.is_empty(), "nothing new");
    assert_eq!(env.store.runs(1, 10).await.expect("runs").len(), 1);
}
