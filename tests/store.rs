//! The Task store against both backends: every test runs once on SQLite (a file in a tempdir) and
//! once on PostgreSQL (`SEGCLUST_TEST_PG`, default `postgres://postgres@127.0.0.1:5432/test`), each
//! run in its own database file or schema so that tests run in parallel. PostgreSQL being
//! unreachable fails the PostgreSQL runs; it does not skip them.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use segclust::labeling::Label;
use segclust::segment::{Quarantine, Watermark};
use segclust::store::{
    BatchCommit, CentroidUpdate, LabelSource, MapPoint, NewLink, NewTask, PriorityFn, RunFigures,
    RunRecord, Store, StoredMapPoint, TaskAggregates, TaskRef, UnlinkedSegment,
};
use sqlx::Connection;
use sqlx::postgres::PgConnection;

const DEFAULT_PG: &str = "postgres://postgres@127.0.0.1:5432/test";
const TEAM: i64 = 7;
const NOW: i64 = 1_700_000_000_000;
const DAY_MS: i64 = 86_400_000;

#[derive(Clone, Copy, Debug)]
enum Backend {
    Sqlite,
    Postgres,
}

/// A fresh, empty database for one test; `finish` removes it.
struct TestDb {
    url: String,
    _dir: Option<tempfile::TempDir>,
    pg_schema: Option<(String, String)>,
}

impl TestDb {
    async fn new(backend: Backend) -> TestDb {
        match backend {
            Backend::Sqlite => {
                let dir = tempfile::tempdir().expect("cannot create a tempdir for the SQLite test");
                let url = format!("sqlite://{}", dir.path().join("store.db").display());
                TestDb {
                    url,
                    _dir: Some(dir),
                    pg_schema: None,
                }
            }
            Backend::Postgres => {
                let base = std::env::var("SEGCLUST_TEST_PG").unwrap_or_else(|_| DEFAULT_PG.into());
                static N: AtomicUsize = AtomicUsize::new(0);
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.subsec_nanos())
                    .unwrap_or(0);
                let schema = format!(
                    "segclust_test_{}_{}_{nanos}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                );
                let mut admin = PgConnection::connect(&base).await.unwrap_or_else(|e| {
                    panic!(
                        "PostgreSQL is unreachable at {} ({e}). These tests need it: start \
                         PostgreSQL or point SEGCLUST_TEST_PG at a server where the user may \
                         create schemas.",
                        segclust::store::redact_url(&base)
                    )
                });
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
                    .execute(&mut admin)
                    .await
                    .expect("cannot create a test schema in PostgreSQL");
                admin.close().await.ok();
                let sep = if base.contains('?') { '&' } else { '?' };
                let url = format!("{base}{sep}options[search_path]={schema}");
                TestDb {
                    url,
                    _dir: None,
                    pg_schema: Some((base, schema)),
                }
            }
        }
    }

    async fn store(&self) -> Store {
        Store::connect(&self.url)
            .await
            .expect("store should open and migrate")
    }

    async fn finish(self, store: Store) {
        store.close().await;
        // Drop removes the schema.
    }
}

impl Drop for TestDb {
    /// Also runs when a test panics, so failed runs leave no schemas behind. Drop cannot await,
    /// and the test's runtime may be unwinding: use a thread with its own small runtime.
    fn drop(&mut self) {
        let Some((base, schema)) = self.pg_schema.take() else {
            return;
        };
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let mut admin = PgConnection::connect(&base).await?;
                // A panicking test may leave a transaction holding locks: do not wait forever.
                sqlx::query("SET lock_timeout = '10s'")
                    .execute(&mut admin)
                    .await?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "DROP SCHEMA IF EXISTS {schema} CASCADE"
                )))
                .execute(&mut admin)
                .await?;
                admin.close().await?;
                Ok::<_, anyhow::Error>(())
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) && !std::thread::panicking() {
            panic!("could not drop the test schema");
        }
    }
}

/// Runs each listed async test fn once per backend.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Backend::Sqlite).await
            })*
        }
        mod postgres {
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Backend::Postgres).await
            })*
        }
    };
}

on_both_backends!(
    migrations_apply_and_reconnect_is_idempotent,
    commit_creates_tasks_with_exact_aggregates,
    joining_an_existing_task_updates_centroid_counts_and_priority,
    rerunning_a_batch_changes_nothing,
    watermark_round_trips_and_never_moves_back,
    failed_commit_writes_nothing,
    link_to_missing_or_foreign_task_rolls_back,
    centroid_bytes_round_trip_exactly,
    carry_over_window_excludes_linked_and_pruned,
    quarantine_keeps_first_reason_per_team,
    linked_ids_across_many_chunks,
    refresh_priorities_and_relabel,
    concurrent_commits_all_land,
    run_row_and_descriptions_commit_with_the_batch,
);

/// A priority that depends on every input, so that a stale aggregate shows in the score.
fn test_priority() -> Arc<PriorityFn> {
    Arc::new(|a: &TaskAggregates, now_ms: i64| {
        let days = (now_ms - a.last_seen_ms) as f64 / DAY_MS as f64;
        let score = 1000.0 * a.distinct_user_count as f64
            + 100.0 * a.occurrence_count as f64
            + a.segment_count as f64
            + a.impact
            - days;
        let level = if a.distinct_user_count >= 2 {
            "high"
        } else {
            "low"
        };
        (score, level.to_string())
    })
}

fn centroid(seed: u32, dim: usize) -> Vec<f32> {
    (0..dim)
        .map(|i| ((seed as f32 + 1.0) * (i as f32 + 0.5)).sin())
        .collect()
}

fn link(task: TaskRef, doc: &str, session: &str, user: &str, impact: f64, ts: i64) -> NewLink {
    NewLink {
        task,
        document_id: doc.into(),
        session_id: session.into(),
        distinct_id: user.into(),
        distance: 0.125,
        impact,
        timestamp_ms: ts,
        content: format!("segment {doc} of session {session}"),
    }
}

fn new_task(title: &str, seed: u32) -> NewTask {
    NewTask {
        title: title.into(),
        description: format!("{title}: what users see"),
        label_source: LabelSource::Fallback,
        actionable: None,
        centroid: centroid(seed, 16),
        centroid_weight: 0,
    }
}

fn empty_batch() -> BatchCommit {
    BatchCommit {
        team_id: TEAM,
        now_ms: NOW,
        new_tasks: vec![],
        centroid_updates: vec![],
        links: vec![],
        quarantined: vec![],
        unlinked: vec![],
        carry_over_prune_before_ms: NOW - 7 * DAY_MS,
        watermark: None,
        priority: test_priority(),
        run: None,
    }
}

/// Two new Tasks: A has three segments from two sessions of one user, B two sessions of two users.
fn two_task_batch() -> BatchCommit {
    let mut nt_a = new_task("Fix checkout error", 1);
    nt_a.centroid_weight = 3;
    let mut nt_b = new_task("Investigate slow search", 2);
    nt_b.centroid_weight = 2;
    BatchCommit {
        new_tasks: vec![nt_a, nt_b],
        links: vec![
            link(TaskRef::New(0), "s1:0:10", "s1", "u1", 0.2, NOW - 3000),
            link(TaskRef::New(0), "s1:10:20", "s1", "u1", 0.4, NOW - 1000),
            link(TaskRef::New(0), "s2:0:10", "s2", "u1", 0.9, NOW - 2000),
            link(TaskRef::New(1), "s3:0:10", "s3", "u2", 0.0, NOW - 500),
            link(TaskRef::New(1), "s4:0:10", "s4", "u3", 0.6, NOW - 400),
        ],
        watermark: Some(Watermark {
            inserted_at_ms: NOW - 10,
            document_id: "s4:0:10".into(),
        }),
        ..empty_batch()
    }
}

async fn migrations_apply_and_reconnect_is_idempotent(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    assert_eq!(
        store.backend(),
        match backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    );
    assert!(store.tasks(TEAM).await.unwrap().is_empty());
    assert!(store.teams().await.unwrap().is_empty());
    assert_eq!(store.watermark(TEAM).await.unwrap(), None);
    store.commit_batch(&two_task_batch()).await.unwrap();
    store.close().await;

    // Reconnecting re-runs the migrator: it must neither fail nor wipe data.
    let again = db.store().await;
    let again2 = db.store().await;
    assert_eq!(again.tasks(TEAM).await.unwrap().len(), 2);
    assert_eq!(again2.teams().await.unwrap(), vec![TEAM]);
    again2.close().await;
    db.finish(again).await;
}

async fn commit_creates_tasks_with_exact_aggregates(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let batch = two_task_batch();
    let s = store.commit_batch(&batch).await.unwrap();
    assert_eq!(s.tasks_created, 2);
    assert_eq!(s.tasks_updated, 0);
    assert_eq!(s.links_inserted, 5);
    assert_eq!(s.links_skipped, 0);
    assert!(s.watermark_advanced);
    let ids: Vec<i64> = s.new_task_ids.iter().map(|i| i.expect("kept")).collect();
    assert_ne!(ids[0], ids[1]);

    let a = store
        .task(TEAM, ids[0])
        .await
        .unwrap()
        .expect("task A stored");
    assert_eq!(a.title, "Fix checkout error");
    assert_eq!(a.label_source, LabelSource::Fallback);
    assert_eq!(a.segment_count, 3);
    assert_eq!(
        a.occurrence_count, 2,
        "two segments of session s1 are one occurrence"
    );
    assert_eq!(
        a.distinct_user_count, 1,
        "two sessions of user u1 are one user"
    );
    assert!(
        (a.impact - 0.5).abs() < 1e-12,
        "mean of 0.2, 0.4, 0.9: {}",
        a.impact
    );
    assert_eq!((a.first_seen_ms, a.last_seen_ms), (NOW - 3000, NOW - 1000));
    assert_eq!(a.centroid_weight, 3);
    assert_eq!((a.created_at_ms, a.updated_at_ms), (NOW, NOW));
    let aggs = TaskAggregates {
        task_id: a.id,
        segment_count: 3,
        occurrence_count: 2,
        distinct_user_count: 1,
        impact: a.impact,
        first_seen_ms: NOW - 3000,
        last_seen_ms: NOW - 1000,
    };
    let (score, level) = test_priority()(&aggs, NOW);
    assert_eq!(a.priority_score, score);
    assert_eq!(a.priority_level, level);

    let b = store
        .task(TEAM, ids[1])
        .await
        .unwrap()
        .expect("task B stored");
    assert_eq!(
        (b.segment_count, b.occurrence_count, b.distinct_user_count),
        (2, 2, 2)
    );
    assert!((b.impact - 0.3).abs() < 1e-12);
    assert_eq!(b.priority_level, "high");

    let links = store.links(TEAM, ids[0]).await.unwrap();
    let docs: Vec<&str> = links.iter().map(|l| l.document_id.as_str()).collect();
    assert_eq!(docs, ["s1:0:10", "s2:0:10", "s1:10:20"], "oldest first");
    assert!(
        links
            .iter()
            .all(|l| l.task_id == ids[0] && l.team_id == TEAM)
    );
    assert_eq!(links[1].impact, 0.9);
    assert_eq!(links[1].distance, 0.125);
    assert_eq!(links[1].created_at_ms, NOW);

    // Another team sees nothing of it.
    assert!(store.tasks(TEAM + 1).await.unwrap().is_empty());
    assert_eq!(store.task(TEAM + 1, ids[0]).await.unwrap(), None);
    assert_eq!(store.teams().await.unwrap(), vec![TEAM]);
    db.finish(store).await;
}

async fn joining_an_existing_task_updates_centroid_counts_and_priority(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let first = store.commit_batch(&two_task_batch()).await.unwrap();
    let a_id = first.new_task_ids[0].unwrap();

    let moved = centroid(9, 16);
    let later = BatchCommit {
        now_ms: NOW + 1000,
        centroid_updates: vec![CentroidUpdate {
            task_id: a_id,
            centroid: moved.clone(),
            centroid_weight: 5,
        }],
        links: vec![
            // A new user in a new session, and one more segment of known session s2.
            link(
                TaskRef::Existing(a_id),
                "s9:0:10",
                "s9",
                "u9",
                0.5,
                NOW + 500,
            ),
            link(
                TaskRef::Existing(a_id),
                "s2:10:20",
                "s2",
                "u1",
                0.0,
                NOW - 5000,
            ),
        ],
        ..empty_batch()
    };
    let s = store.commit_batch(&later).await.unwrap();
    assert_eq!(
        (s.tasks_created, s.tasks_updated, s.links_inserted),
        (0, 1, 2)
    );
    let a = store.task(TEAM, a_id).await.unwrap().unwrap();
    assert_eq!(a.centroid, moved);
    assert_eq!(a.centroid_weight, 5);
    assert_eq!(
        (a.segment_count, a.occurrence_count, a.distinct_user_count),
        (5, 3, 2)
    );
    assert!((a.impact - (0.2 + 0.4 + 0.9 + 0.5 + 0.0) / 5.0).abs() < 1e-12);
    assert_eq!((a.first_seen_ms, a.last_seen_ms), (NOW - 5000, NOW + 500));
    assert_eq!(a.priority_level, "high");
    assert_eq!((a.created_at_ms, a.updated_at_ms), (NOW, NOW + 1000));
    // Task B was not touched.
    let b = store
        .task(TEAM, first.new_task_ids[1].unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(b.updated_at_ms, NOW);
    db.finish(store).await;
}

async fn rerunning_a_batch_changes_nothing(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let first = store.commit_batch(&two_task_batch()).await.unwrap();
    let a_id = first.new_task_ids[0].unwrap();
    let join = BatchCommit {
        centroid_updates: vec![CentroidUpdate {
            task_id: a_id,
            centroid: centroid(5, 16),
            centroid_weight: 4,
        }],
        links: vec![link(
            TaskRef::Existing(a_id),
            "s8:0:1",
            "s8",
            "u8",
            1.0,
            NOW,
        )],
        unlinked: vec![UnlinkedSegment {
            document_id: "n1".into(),
            inserted_at_ms: NOW,
            timestamp_ms: NOW,
        }],
        quarantined: vec![Quarantine {
            team_id: TEAM,
            document_id: "bad".into(),
            reason: "NaN".into(),
        }],
        ..empty_batch()
    };
    store.commit_batch(&join).await.unwrap();
    let tasks_before = store.tasks(TEAM).await.unwrap();
    let links_before = store.links(TEAM, a_id).await.unwrap();

    let again = store.commit_batch(&two_task_batch()).await.unwrap();
    assert_eq!(again.links_inserted, 0);
    assert_eq!(again.links_skipped, 5);
    assert_eq!(
        again.tasks_created, 0,
        "a rerun must not create Tasks without segments"
    );
    assert_eq!(again.new_task_ids, vec![None, None]);
    assert!(!again.watermark_advanced);
    let again = store.commit_batch(&join).await.unwrap();
    assert_eq!((again.links_inserted, again.tasks_updated), (0, 0));
    assert_eq!((again.quarantined, again.unlinked_added), (0, 0));

    assert_eq!(
        store.tasks(TEAM).await.unwrap(),
        tasks_before,
        "counts, centroids unchanged"
    );
    assert_eq!(store.links(TEAM, a_id).await.unwrap(), links_before);
    assert_eq!(store.quarantined(TEAM).await.unwrap().len(), 1);
    assert_eq!(
        store.carry_over(TEAM, 0, usize::MAX).await.unwrap().ids,
        ["n1"]
    );
    db.finish(store).await;
}

async fn watermark_round_trips_and_never_moves_back(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    assert_eq!(store.watermark(TEAM).await.unwrap(), None);
    let wm = |t: i64, d: &str| Watermark {
        inserted_at_ms: t,
        document_id: d.into(),
    };
    let steps = [
        (wm(100, "b"), true),
        (wm(100, "b"), false),
        (wm(100, "a"), false),
        (wm(99, "z"), false),
        (wm(100, "c"), true),
        (wm(200, "a"), true),
        // Byte order, as Rust's String orders: "B" (0x42) sorts before "a" (0x61).
        (wm(200, "B"), false),
        (wm(200, "aa"), true),
    ];
    let mut max: Option<Watermark> = None;
    for (w, advances) in steps {
        let s = store
            .commit_batch(&BatchCommit {
                watermark: Some(w.clone()),
                ..empty_batch()
            })
            .await
            .unwrap();
        assert_eq!(s.watermark_advanced, advances, "{w:?}");
        max = max.max(Some(w));
        assert_eq!(store.watermark(TEAM).await.unwrap(), max);
    }
    // A batch without a watermark leaves it alone; other teams have none.
    store.commit_batch(&empty_batch()).await.unwrap();
    assert_eq!(store.watermark(TEAM).await.unwrap(), Some(wm(200, "aa")));
    assert_eq!(store.watermark(TEAM + 1).await.unwrap(), None);
    assert_eq!(store.teams().await.unwrap(), vec![TEAM]);
    db.finish(store).await;
}

async fn failed_commit_writes_nothing(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let mut bad = two_task_batch();
    bad.quarantined = vec![Quarantine {
        team_id: TEAM,
        document_id: "q".into(),
        reason: "r".into(),
    }];
    bad.unlinked = vec![UnlinkedSegment {
        document_id: "n".into(),
        inserted_at_ms: NOW,
        timestamp_ms: NOW,
    }];
    // The last link names a new Task the batch does not create; the Tasks are inserted first.
    bad.links
        .push(link(TaskRef::New(2), "s5:0:1", "s5", "u5", 0.1, NOW));
    let err = store.commit_batch(&bad).await.expect_err("must fail");
    assert!(format!("{err:#}").contains("new task #2"), "{err:#}");

    assert!(store.tasks(TEAM).await.unwrap().is_empty());
    assert!(
        store
            .linked_ids(TEAM, &["s1:0:10".into()])
            .await
            .unwrap()
            .is_empty()
    );
    assert!(store.quarantined(TEAM).await.unwrap().is_empty());
    assert!(
        store
            .carry_over(TEAM, 0, usize::MAX)
            .await
            .unwrap()
            .ids
            .is_empty()
    );
    assert_eq!(store.watermark(TEAM).await.unwrap(), None);
    assert!(store.teams().await.unwrap().is_empty());

    // The same batch without the bad link then commits in full.
    bad.links.pop();
    let s = store.commit_batch(&bad).await.unwrap();
    assert_eq!(
        (
            s.tasks_created,
            s.links_inserted,
            s.quarantined,
            s.unlinked_added
        ),
        (2, 5, 1, 1)
    );
    db.finish(store).await;
}

async fn link_to_missing_or_foreign_task_rolls_back(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let first = store.commit_batch(&two_task_batch()).await.unwrap();
    let a_id = first.new_task_ids[0].unwrap();
    let before = store.tasks(TEAM).await.unwrap();

    // A database-side failure (foreign key) after Tasks and links were written in the transaction.
    let mut bad = two_task_batch();
    bad.links = vec![
        link(TaskRef::New(0), "x1", "sx", "ux", 0.5, NOW),
        link(TaskRef::Existing(a_id), "x2", "sx", "ux", 0.5, NOW),
        link(TaskRef::Existing(a_id + 1000), "x3", "sx", "ux", 0.5, NOW),
    ];
    bad.watermark = Some(Watermark {
        inserted_at_ms: NOW + 1,
        document_id: "x3".into(),
    });
    assert!(store.commit_batch(&bad).await.is_err());
    assert_eq!(store.tasks(TEAM).await.unwrap(), before);
    assert!(
        store
            .linked_ids(TEAM, &["x1".into(), "x2".into()])
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        store.watermark(TEAM).await.unwrap(),
        two_task_batch().watermark
    );

    // A Task id of another team is refused too (links reference (task id, team)).
    let other = BatchCommit {
        team_id: TEAM + 1,
        links: vec![link(TaskRef::Existing(a_id), "y1", "sy", "uy", 0.5, NOW)],
        ..empty_batch()
    };
    assert!(store.commit_batch(&other).await.is_err());
    assert!(
        store
            .linked_ids(TEAM + 1, &["y1".into()])
            .await
            .unwrap()
            .is_empty()
    );

    // A centroid update naming another team's Task does not touch it.
    let cu = BatchCommit {
        team_id: TEAM + 1,
        new_tasks: vec![new_task("t", 3)],
        links: vec![link(TaskRef::New(0), "y2", "sy", "uy", 0.5, NOW)],
        centroid_updates: vec![CentroidUpdate {
            task_id: a_id,
            centroid: centroid(4, 16),
            centroid_weight: 9,
        }],
        ..empty_batch()
    };
    // Updates apply only to Tasks that gained links in this (team's) commit.
    store.commit_batch(&cu).await.unwrap();
    assert_eq!(store.tasks(TEAM).await.unwrap(), before);
    db.finish(store).await;
}

async fn centroid_bytes_round_trip_exactly(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let mut c: Vec<f32> = centroid(11, 3072);
    c[0] = -0.0;
    c[1] = f32::MIN_POSITIVE / 3.0; // subnormal
    c[2] = f32::MAX;
    c[3] = f32::EPSILON;
    c[4] = f32::from_bits(0x7fc0_1234); // NaN with payload
    let batch = BatchCommit {
        new_tasks: vec![NewTask {
            centroid: c.clone(),
            actionable: Some(true),
            ..new_task("big", 0)
        }],
        links: vec![link(TaskRef::New(0), "d", "s", "u", 0.0, NOW)],
        ..empty_batch()
    };
    let id = store.commit_batch(&batch).await.unwrap().new_task_ids[0].unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
    let t = store.task(TEAM, id).await.unwrap().unwrap();
    assert_eq!(bits(&t.centroid), bits(&c));
    assert_eq!(t.actionable, Some(true), "stored as the labeler judged");
    assert_eq!(
        bits(&store.tasks(TEAM).await.unwrap()[0].centroid),
        bits(&c)
    );

    let mut c2 = c.clone();
    c2.reverse();
    let upd = BatchCommit {
        centroid_updates: vec![CentroidUpdate {
            task_id: id,
            centroid: c2.clone(),
            centroid_weight: 2,
        }],
        links: vec![link(TaskRef::Existing(id), "d2", "s", "u", 0.0, NOW)],
        ..empty_batch()
    };
    store.commit_batch(&upd).await.unwrap();
    assert_eq!(
        bits(&store.task(TEAM, id).await.unwrap().unwrap().centroid),
        bits(&c2)
    );
    db.finish(store).await;
}

async fn carry_over_window_excludes_linked_and_pruned(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let un = |d: &str, ts: i64| UnlinkedSegment {
        document_id: d.into(),
        inserted_at_ms: ts + 1,
        timestamp_ms: ts,
    };
    let b1 = BatchCommit {
        unlinked: vec![
            un("old", NOW - 10 * DAY_MS),
            un("x", NOW - 3 * DAY_MS),
            un("y", NOW - DAY_MS),
            un("z", NOW),
        ],
        carry_over_prune_before_ms: NOW - 30 * DAY_MS,
        ..empty_batch()
    };
    let s = store.commit_batch(&b1).await.unwrap();
    assert_eq!((s.unlinked_added, s.unlinked_pruned), (4, 0));
    assert_eq!(
        store
            .carry_over(TEAM, NOW - 7 * DAY_MS, usize::MAX)
            .await
            .unwrap()
            .ids,
        ["x", "y", "z"]
    );
    assert_eq!(
        store
            .carry_over(TEAM, NOW - DAY_MS, usize::MAX)
            .await
            .unwrap()
            .ids,
        ["y", "z"]
    );
    assert!(
        store
            .carry_over(TEAM + 1, 0, usize::MAX)
            .await
            .unwrap()
            .ids
            .is_empty()
    );
    // Capped: the most recent, still oldest first, and how many more the window holds.
    let capped = store.carry_over(TEAM, NOW - 7 * DAY_MS, 2).await.unwrap();
    assert_eq!(
        (capped.ids, capped.left_out),
        (vec!["y".to_string(), "z".into()], 1)
    );
    let exact = store.carry_over(TEAM, NOW - 7 * DAY_MS, 3).await.unwrap();
    assert_eq!((exact.ids.len(), exact.left_out), (3, 0));

    // Next batch: y joins a Task, z is noise again (already present), the 7-day window prunes "old".
    let b2 = BatchCommit {
        new_tasks: vec![new_task("t", 1)],
        links: vec![
            link(TaskRef::New(0), "y", "sy", "uy", 0.5, NOW - DAY_MS),
            link(TaskRef::New(0), "w", "sw", "uw", 0.5, NOW),
        ],
        unlinked: vec![un("z", NOW)],
        ..empty_batch()
    };
    let s = store.commit_batch(&b2).await.unwrap();
    assert_eq!(s.unlinked_added, 0, "z is already carried over");
    assert_eq!(
        s.unlinked_pruned, 2,
        "old (out of window) and y (now linked)"
    );
    assert_eq!(
        store.carry_over(TEAM, 0, usize::MAX).await.unwrap().ids,
        ["x", "z"]
    );
    db.finish(store).await;
}

async fn quarantine_keeps_first_reason_per_team(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let q = |d: &str, r: &str| Quarantine {
        team_id: TEAM,
        document_id: d.into(),
        reason: r.into(),
    };
    let b = BatchCommit {
        quarantined: vec![
            q("a", "embedding has NaN at 3"),
            q("data.jsonl:7", "missing document_id"),
        ],
        ..empty_batch()
    };
    assert_eq!(store.commit_batch(&b).await.unwrap().quarantined, 2);
    let again = BatchCommit {
        now_ms: NOW + 1,
        quarantined: vec![
            q("a", "a different reason"),
            q("b", "wrong dimension 12, expected 3072"),
        ],
        ..empty_batch()
    };
    assert_eq!(store.commit_batch(&again).await.unwrap().quarantined, 1);
    let mut got = store.quarantined(TEAM).await.unwrap();
    got.sort_by(|x, y| x.document_id.cmp(&y.document_id));
    assert_eq!(
        got,
        vec![
            q("a", "embedding has NaN at 3"),
            q("b", "wrong dimension 12, expected 3072"),
            q("data.jsonl:7", "missing document_id"),
        ]
    );
    assert!(store.quarantined(TEAM + 1).await.unwrap().is_empty());

    // A row of another team in this team's batch is a caller bug, refused whole.
    let mixed = BatchCommit {
        quarantined: vec![
            q("c", "r"),
            Quarantine {
                team_id: TEAM + 1,
                ..q("d", "r")
            },
        ],
        ..empty_batch()
    };
    assert!(store.commit_batch(&mixed).await.is_err());
    assert_eq!(store.quarantined(TEAM).await.unwrap().len(), 3);
    db.finish(store).await;
}

async fn linked_ids_across_many_chunks(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    // More links and ids than one multi-row statement holds.
    let n = 1234;
    let batch = BatchCommit {
        new_tasks: vec![new_task("many", 1)],
        links: (0..n)
            .map(|i| {
                let d = format!("sess{}:{i}:{}", i % 97, i + 1);
                link(
                    TaskRef::New(0),
                    &d,
                    &format!("sess{}", i % 97),
                    &format!("u{}", i % 13),
                    0.25,
                    NOW - i,
                )
            })
            .collect(),
        ..empty_batch()
    };
    let s = store.commit_batch(&batch).await.unwrap();
    assert_eq!(s.links_inserted, n as usize);
    let t = store
        .task(TEAM, s.new_task_ids[0].unwrap())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (t.segment_count, t.occurrence_count, t.distinct_user_count),
        (n, 97, 13)
    );

    let asked: Vec<String> = (0..2 * n)
        .step_by(3)
        .map(|i| format!("sess{}:{i}:{}", i % 97, i + 1))
        .collect();
    let want: HashSet<String> = asked
        .iter()
        .filter(|d| {
            d.split(':')
                .nth(1)
                .and_then(|x| x.parse::<i64>().ok())
                .unwrap()
                < n
        })
        .cloned()
        .collect();
    assert!(!want.is_empty() && want.len() < asked.len());
    assert_eq!(store.linked_ids(TEAM, &asked).await.unwrap(), want);
    assert!(store.linked_ids(TEAM + 1, &asked).await.unwrap().is_empty());
    assert!(store.linked_ids(TEAM, &[]).await.unwrap().is_empty());
    db.finish(store).await;
}

async fn refresh_priorities_and_relabel(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let s = store.commit_batch(&two_task_batch()).await.unwrap();
    let a_id = s.new_task_ids[0].unwrap();
    let before = store.task(TEAM, a_id).await.unwrap().unwrap();

    let f = test_priority();
    assert_eq!(
        store
            .refresh_priorities(TEAM, NOW, f.as_ref())
            .await
            .unwrap(),
        0,
        "nothing decayed yet"
    );
    let later = NOW + 14 * DAY_MS;
    assert_eq!(
        store
            .refresh_priorities(TEAM, later, f.as_ref())
            .await
            .unwrap(),
        2
    );
    let after = store.task(TEAM, a_id).await.unwrap().unwrap();
    assert!((before.priority_score - after.priority_score - 14.0).abs() < 1e-6);
    assert_eq!(after.updated_at_ms, before.updated_at_ms);
    assert_eq!(
        store
            .refresh_priorities(TEAM, later, f.as_ref())
            .await
            .unwrap(),
        0
    );

    assert_eq!(before.actionable, None, "fallback labels are not judged");
    let label = |title: &str, description: &str, actionable| Label {
        title: title.into(),
        description: description.into(),
        source: LabelSource::Llm,
        actionable,
    };
    let routine = label(
        "Review dashboard browsing",
        "Users look around.",
        Some(false),
    );
    assert!(
        store
            .update_label(TEAM, a_id, &routine, later)
            .await
            .unwrap()
    );
    let t = store.task(TEAM, a_id).await.unwrap().unwrap();
    assert_eq!(
        (t.title.as_str(), t.description.as_str()),
        ("Review dashboard browsing", "Users look around.")
    );
    assert_eq!(
        (t.label_source, t.actionable, t.updated_at_ms),
        (LabelSource::Llm, Some(false), later)
    );
    let fix = label("Fix 500 on checkout", "Users see an error.", Some(true));
    assert!(store.update_label(TEAM, a_id, &fix, later).await.unwrap());
    let t = store.task(TEAM, a_id).await.unwrap().unwrap();
    assert_eq!(
        (t.title.as_str(), t.actionable),
        ("Fix 500 on checkout", Some(true))
    );
    assert!(
        !store
            .update_label(TEAM + 1, a_id, &fix, later)
            .await
            .unwrap()
    );
    assert!(
        !store
            .update_label(TEAM, a_id + 99, &fix, later)
            .await
            .unwrap()
    );
    db.finish(store).await;
}

#[tokio::test]
async fn connect_errors_are_actionable_and_hide_the_password() {
    let err = Store::connect("mysql://u:pw@h/db")
        .await
        .expect_err("unsupported scheme");
    let msg = format!("{err:#}");
    assert!(msg.contains("sqlite://") && !msg.contains("pw@"), "{msg}");

    // Nothing listens on port 1.
    let err = Store::connect("postgres://alice:hunter2secret@127.0.0.1:1/db")
        .await
        .expect_err("unreachable server");
    let msg = format!("{err:#} {err:?}");
    assert!(!msg.contains("hunter2secret"), "{msg}");
    assert!(msg.contains("alice:***@127.0.0.1:1"), "{msg}");

    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no/such/dir/store.db");
    let err = Store::connect(&format!("sqlite://{}", missing.display()))
        .await
        .expect_err("no dir");
    assert!(format!("{err:#}").contains("SQLite"), "{err:#}");
}

#[tokio::test]
async fn store_futures_are_send() {
    // The pipeline runs teams on spawned tasks; a !Send future would not compile there.
    fn assert_send<T: Send>(_: &T) {}
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&format!("sqlite://{}", dir.path().join("s.db").display()))
        .await
        .unwrap();
    let batch = empty_batch();
    let f = store.commit_batch(&batch);
    assert_send(&f);
    f.await.unwrap();
    let handle = tokio::spawn(async move {
        let ids = vec!["a".to_string()];
        store.linked_ids(TEAM, &ids).await.map(|s| s.len())
    });
    assert_eq!(handle.await.unwrap().unwrap(), 0);
}

/// Workers for different teams share one store (SQLite: one file, one writer at a time).
async fn concurrent_commits_all_land(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let mut handles = Vec::new();
    for team in 100..108 {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            for round in 0..3i64 {
                let batch = BatchCommit {
                    team_id: team,
                    new_tasks: vec![new_task("t", team as u32)],
                    links: (0..20)
                        .map(|i| {
                            let doc = format!("r{round}:{i}");
                            link(
                                TaskRef::New(0),
                                &doc,
                                &format!("s{i}"),
                                "u",
                                0.5,
                                NOW + round,
                            )
                        })
                        .collect(),
                    watermark: Some(Watermark {
                        inserted_at_ms: NOW + round,
                        document_id: format!("r{round}:19"),
                    }),
                    ..empty_batch()
                };
                store.commit_batch(&batch).await?;
            }
            anyhow::Ok(())
        }));
    }
    for h in handles {
        h.await.expect("task ran").expect("commit succeeded");
    }
    assert_eq!(store.teams().await.unwrap(), (100..108).collect::<Vec<_>>());
    for team in 100..108 {
        let tasks = store.tasks(team).await.unwrap();
        assert_eq!(tasks.len(), 3);
        assert!(
            tasks
                .iter()
                .all(|t| t.segment_count == 20 && t.occurrence_count == 20)
        );
        let wm = store.watermark(team).await.unwrap().unwrap();
        assert_eq!(
            (wm.inserted_at_ms, wm.document_id.as_str()),
            (NOW + 2, "r2:19")
        );
    }
    db.finish(store).await;
}

/// The run row is written by the batch's own commit: it resolves the map's new-Task references to
/// the ids the commit gave, takes the counts only the commit knows, and is absent when the commit
/// fails. Links keep their descriptions, markup and all.
async fn run_row_and_descriptions_commit_with_the_batch(backend: Backend) {
    let db = TestDb::new(backend).await;
    let store = db.store().await;
    let record = RunRecord {
        started_at_ms: NOW - 5_000,
        figures: RunFigures {
            segments_read: 6,
            clustered: 5,
            clusters: 2,
            noise: 1,
            quarantined: 1,
            read_s: 0.25,
            match_s: 0.125,
            // Ignored: the commit fills these in.
            tasks_created: 99,
            links: 99,
            ..RunFigures::default()
        },
        quarantine_reasons: vec![("embedding value at index N is NaN".into(), 1)],
        map: vec![
            MapPoint {
                x: 0.5,
                y: -0.25,
                cluster: 0,
                task: Some(TaskRef::New(1)),
            },
            MapPoint {
                x: 0.123456,
                y: 2.0,
                cluster: -1,
                task: None,
            },
        ],
    };
    let mut batch = two_task_batch();
    batch.links[0].content = "<script>window.__pwned=1</script> clicked Pay".into();
    batch.run = Some(record.clone());
    let summary = store.commit_batch(&batch).await.unwrap();
    let b_id = summary.new_task_ids[1].expect("task B kept");

    let runs = store.runs(TEAM, 10).await.unwrap();
    assert_eq!(runs.len(), 1);
    let r = &runs[0];
    assert_eq!(
        (r.team_id, r.started_at_ms, r.now_ms),
        (TEAM, NOW - 5_000, NOW)
    );
    assert_eq!(r.figures.tasks_created, 2);
    assert_eq!(r.figures.links, 5);
    assert_eq!(r.figures.tasks_updated, 0);
    assert_eq!(
        (
            r.figures.segments_read,
            r.figures.clusters,
            r.figures.read_s,
            r.figures.match_s
        ),
        (6, 2, 0.25, 0.125)
    );
    assert!(r.figures.commit_s >= 0.0 && r.finished_at_ms > 0);
    assert_eq!(r.quarantine_reasons, record.quarantine_reasons);
    assert_eq!(
        r.map,
        vec![
            StoredMapPoint {
                x: 0.5,
                y: -0.25,
                cluster: 0,
                task_id: Some(b_id)
            },
            StoredMapPoint {
                x: 0.1235,
                y: 2.0,
                cluster: -1,
                task_id: None
            },
        ]
    );
    let a_id = summary.new_task_ids[0].expect("task A kept");
    let links = store.links(TEAM, a_id).await.unwrap();
    assert!(
        links
            .iter()
            .any(|l| l.content == "<script>window.__pwned=1</script> clicked Pay"),
        "{links:?}"
    );

    // A failed commit leaves no run row behind.
    let mut bad = empty_batch();
    bad.links = vec![link(
        TaskRef::Existing(987_654),
        "x:0:1",
        "x",
        "u",
        0.0,
        NOW,
    )];
    bad.run = Some(record);
    assert!(store.commit_batch(&bad).await.is_err());
    assert_eq!(store.runs(TEAM, 10).await.unwrap().len(), 1);
    assert!(store.runs(TEAM + 1, 10).await.unwrap().is_empty());
    db.finish(store).await;
}
