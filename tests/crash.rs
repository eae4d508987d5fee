//! Exactly once, proved with real processes: the `segclust` binary is SIGKILLed at every step
//! boundary (after fetch, after clustering, after labeling, inside the commit transaction), on
//! the first and on a later batch, then rerun; the store must end with exactly the Tasks and
//! links of an uninterrupted run. A SIGTERM with a batch in hand that outlives the grace period
//! abandons that batch (inside the commit: its open transaction) and exits promptly; the rerun
//! again equals an uninterrupted run. And two workers started together on the same teams
//! process each team once (the per-team lock) and link every segment once.
//!
//! Both stores: SQLite (a file) and PostgreSQL (SEGCLUST_TEST_PG, a schema per test).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use segclust::demo::{DemoParams, generate};
use segclust::segment::RawSegment;
use segclust::source::write_segments;
use segclust::store::Store;

const NOW: i64 = 1_764_000_000_000;
const DIM: usize = 48;
const BIN: &str = env!("CARGO_BIN_EXE_segclust");

fn rows(teams: &[i64], per_team: usize) -> Vec<RawSegment> {
    teams
        .iter()
        .flat_map(|&t| {
            generate(
                &DemoParams {
                    seed: 100 + t as u64,
                    team_id: t,
                    segments: per_team,
                    dim: DIM,
                    users: 60,
                    problems: 12,
                    ..DemoParams::default()
                },
                NOW,
            )
        })
        .collect()
}

/// A store URL for one test: a SQLite file in `dir`, or a fresh PostgreSQL schema.
async fn store_url(backend: &str, dir: &Path, name: &str) -> String {
    match backend {
        "sqlite" => format!("sqlite://{}", dir.join(format!("{name}.db")).display()),
        _ => {
            static N: AtomicUsize = AtomicUsize::new(0);
            let base = std::env::var("SEGCLUST_TEST_PG")
                .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
            let schema = format!(
                "segclust_crash_{}_{}_{name}",
                std::process::id(),
                N.fetch_add(1, Ordering::SeqCst)
            );
            let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&base)
                .await
                .expect("PostgreSQL at SEGCLUST_TEST_PG (tools/test.sh finds or starts it)");
            sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
                .execute(&mut admin)
                .await
                .expect("create schema");
            let sep = if base.contains('?') { '&' } else { '?' };
            format!("{base}{sep}options[search_path]={schema}")
        }
    }
}

fn run_args(source: &Path, store: &str) -> Vec<String> {
    [
        "run",
        "--source",
        &source.display().to_string(),
        "--store",
        store,
        "--all-teams",
        "--dim",
        &DIM.to_string(),
        "--batch-size",
        "150",
        "--concurrency",
        "1",
        "--now-ms",
        &NOW.to_string(),
        "--device",
        "cpu",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

fn segclust(args: &[String]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env_remove("SEGCLUST_FAILPOINT")
        .env_remove("SEGCLUST_CONFIG")
        .env("SEGCLUST_LOG", "warn");
    c
}

/// Runs to completion; returns stdout.
fn run_ok(args: &[String]) -> String {
    let out = segclust(args).output().expect("start segclust");
    assert!(
        out.status.success(),
        "segclust {args:?} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Starts `cmd` with `failpoint` armed and reads its stderr until the process reports reaching
/// the point; returns the process, waiting there, and the rest of its stderr.
#[allow(clippy::zombie_processes)] // the child is returned: the caller kills and waits for it
fn start_until_failpoint(
    mut cmd: Command,
    failpoint: &str,
) -> (std::process::Child, BufReader<std::process::ChildStderr>) {
    let mut child = cmd
        .env("SEGCLUST_FAILPOINT", failpoint)
        .stderr(Stdio::piped())
        .spawn()
        .expect("start segclust");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr"));
    let name = failpoint.split(':').next().unwrap_or(failpoint);
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        if stderr.read_line(&mut line).expect("read stderr") == 0 {
            let status = child.wait().expect("wait");
            panic!("segclust exited ({status}) without reaching failpoint {failpoint}:\n{seen}");
        }
        if line.contains(&format!("failpoint {name} reached")) {
            return (child, stderr);
        }
        seen += &line;
    }
}

/// Starts with `failpoint` armed, waits until the process reports reaching it, SIGKILLs it.
fn run_and_kill(args: &[String], failpoint: &str) {
    let mut cmd = segclust(args);
    cmd.stdout(Stdio::null());
    let (mut child, _stderr) = start_until_failpoint(cmd, failpoint);
    // Child::kill is SIGKILL on Unix: no destructors, no rollback by the process.
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("wait");
    assert!(!status.success());
}

/// Everything a run decides, independent of Task ids (PostgreSQL sequences skip ids that a
/// rolled-back transaction used): each Task as its set of linked segments with its figures.
type Snapshot = BTreeMap<i64, BTreeSet<(Vec<String>, String, i64, i64, String)>>;

async fn snapshot(url: &str, teams: &[i64]) -> Snapshot {
    let store = Store::connect(url).await.expect("open store");
    let mut snap = Snapshot::new();
    for &team in teams {
        let mut set = BTreeSet::new();
        for t in store.tasks(team).await.expect("tasks") {
            let mut docs: Vec<String> = store
                .links(team, t.id)
                .await
                .expect("links")
                .into_iter()
                .map(|l| l.document_id)
                .collect();
            docs.sort();
            set.insert((
                docs,
                t.title.clone(),
                t.segment_count,
                t.distinct_user_count,
                format!("{:.9}", t.priority_score),
            ));
        }
        let w = store.watermark(team).await.expect("watermark");
        set.insert((
            vec![format!("watermark {w:?}")],
            String::new(),
            0,
            0,
            String::new(),
        ));
        snap.insert(team, set);
    }
    store.close().await;
    snap
}

/// Panics with the Tasks that only one side has (the full snapshots are too long to read).
fn assert_same(got: &Snapshot, want: &Snapshot, what: &str) {
    if got == want {
        return;
    }
    let mut msg = format!("{what}\n");
    for (team, w) in want {
        let empty = BTreeSet::new();
        let g = got.get(team).unwrap_or(&empty);
        for t in w.difference(g) {
            msg += &format!(
                "  team {team} only uninterrupted: {:?} {} segs, first {:?}\n",
                t.1,
                t.2,
                t.0.first()
            );
        }
        for t in g.difference(w) {
            msg += &format!(
                "  team {team} only this run:      {:?} {} segs, first {:?}\n",
                t.1,
                t.2,
                t.0.first()
            );
        }
    }
    panic!("{msg}");
}

async fn kill_at_every_step(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file: PathBuf = dir.path().join("segments.parquet");
    let teams = [1, 2];
    write_segments(&file, &rows(&teams, 420)).unwrap();

    let reference = store_url(backend, dir.path(), "reference").await;
    run_ok(&run_args(&file, &reference));
    let want = snapshot(&reference, &teams).await;
    let tasks: usize = want.values().map(|s| s.len() - 1).sum();
    assert!(tasks >= 10, "the data should make Tasks: {want:#?}");

    for point in segclust::failpoint::POINTS {
        // First batch (nothing committed yet) and a later one (earlier batches committed).
        for nth in [1, 3] {
            let fp = format!("{point}:{nth}");
            let url = store_url(backend, dir.path(), &format!("{point}_{nth}")).await;
            run_and_kill(&run_args(&file, &url), &fp);
            run_ok(&run_args(&file, &url));
            let got = snapshot(&url, &teams).await;
            assert_same(
                &got,
                &want,
                &format!("{backend}: killed at {fp} then rerun differs from an uninterrupted run"),
            );
            // And a second rerun changes nothing.
            let out = run_ok(&run_args(&file, &url));
            assert!(!out.contains("segments read"), "{out}");
        }
    }
}

#[tokio::test]
async fn sqlite_kill_at_every_step_then_rerun_equals_uninterrupted() {
    kill_at_every_step("sqlite").await;
}

#[tokio::test]
async fn postgres_kill_at_every_step_then_rerun_equals_uninterrupted() {
    kill_at_every_step("postgres").await;
}

/// SIGTERM while a batch is held at a failpoint (a batch that will not finish in time): after
/// the grace period the coordinator drops the batch, with its open transaction when that is
/// inside the commit, and the process exits 0 at once saying so. No later team starts, nothing
/// of the dropped batch is written, the lock is released, and a rerun equals an uninterrupted
/// run.
async fn sigterm_abandons_the_batch_in_hand(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("segments.parquet");
    let teams = [1, 2];
    write_segments(&file, &rows(&teams, 420)).unwrap();
    let reference = store_url(backend, dir.path(), "reference").await;
    run_ok(&run_args(&file, &reference));
    let want = snapshot(&reference, &teams).await;

    // The third arrival is the third batch of the team that goes first: its first two are
    // committed by then.
    for point in ["after_cluster:3", "in_commit:3"] {
        let url = store_url(backend, dir.path(), &point.replace(':', "_")).await;
        let mut args = run_args(&file, &url);
        args.extend(["--grace-s".to_string(), "1".to_string()]);
        let mut cmd = segclust(&args);
        cmd.env("SEGCLUST_LOG", "info").stdout(Stdio::piped());
        let (mut child, mut stderr) = start_until_failpoint(cmd, point);
        let t = std::time::Instant::now();
        let term = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .expect("kill -TERM");
        assert!(term.success());
        let rest = std::thread::spawn(move || {
            let mut rest = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut rest);
            rest
        });
        // A process that does not stop is a failure, not a hung test.
        let status = loop {
            if let Some(status) = child.try_wait().expect("wait") {
                break status;
            }
            if t.elapsed().as_secs_f64() > 30.0 {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{point}: still running 30 s after SIGTERM with a 1 s grace period");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let waited = t.elapsed().as_secs_f64();
        let rest = rest.join().expect("stderr reader");
        let mut stdout = String::new();
        std::io::Read::read_to_string(&mut child.stdout.take().expect("stdout"), &mut stdout)
            .expect("read stdout");
        assert!(status.success(), "{point}: {status}\n{stdout}\n{rest}");
        assert!(
            waited < 8.0,
            "{point}: exited {waited:.1} s after SIGTERM, grace 1 s"
        );
        assert!(rest.contains("grace period over"), "{point}: {rest}");
        // Teams wait for the one slot in no fixed order: whichever went first had two batches
        // committed when its third was held; the other never started.
        let read = reads(&stdout);
        let first = *read.keys().next().expect("a team ran");
        let other = 3 - first;
        assert_eq!(
            read,
            BTreeMap::from([(first, 300)]),
            "{point}: two batches of one team commit, the other team never starts\n{stdout}"
        );
        assert!(
            stdout.contains(&format!("team {first}: stopped by a shutdown request"))
                && stdout.contains(&format!("team {other}: stopped by a shutdown request")),
            "{stdout}"
        );

        let before = Store::connect(&url).await.expect("open store");
        assert!(before.watermark(other).await.unwrap().is_none(), "{point}");
        let linked: i64 = {
            let mut n = 0;
            for t in before.tasks(first).await.unwrap() {
                n += before.links(first, t.id).await.unwrap().len() as i64;
            }
            n
        };
        assert!(
            linked > 0 && linked <= 300,
            "{point}: only batches 1 and 2 (300 segments) may be linked, found {linked}"
        );
        before.close().await;

        run_ok(&run_args(&file, &url));
        assert_same(
            &snapshot(&url, &teams).await,
            &want,
            &format!("{backend}: SIGTERM at {point} then rerun differs from an uninterrupted run"),
        );
    }
}

#[tokio::test]
async fn sqlite_sigterm_abandons_the_batch_in_hand() {
    sigterm_abandons_the_batch_in_hand("sqlite").await;
}

#[tokio::test]
async fn postgres_sigterm_abandons_the_batch_in_hand() {
    sigterm_abandons_the_batch_in_hand("postgres").await;
}

/// Segments read per team, from a run's stdout lines `team T: N segments read ...`.
fn reads(stdout: &str) -> BTreeMap<i64, usize> {
    let mut m = BTreeMap::new();
    for line in stdout.lines() {
        let Some(rest) = line.strip_prefix("team ") else {
            continue;
        };
        let Some((team, rest)) = rest.split_once(": ") else {
            continue;
        };
        let Some((n, _)) = rest.split_once(" segments read") else {
            continue;
        };
        if let (Ok(t), Ok(n)) = (team.parse::<i64>(), n.parse::<usize>()) {
            *m.entry(t).or_insert(0) += n;
        }
    }
    m
}

async fn two_workers(backend: &str) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("segments.parquet");
    let teams = [1, 2, 3, 4];
    let per_team = 450;
    write_segments(&file, &rows(&teams, per_team)).unwrap();
    let reference = store_url(backend, dir.path(), "reference").await;
    run_ok(&run_args(&file, &reference));
    let want = snapshot(&reference, &teams).await;

    let url = store_url(backend, dir.path(), "shared").await;
    // Migrate once first, so that the two workers race on teams, not on creating tables.
    Store::connect(&url).await.unwrap().close().await;
    let args = run_args(&file, &url);
    let a = segclust(&args).stdout(Stdio::piped()).spawn().unwrap();
    let b = segclust(&args).stdout(Stdio::piped()).spawn().unwrap();
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    assert!(a.status.success() && b.status.success());
    let (sa, sb) = (
        String::from_utf8_lossy(&a.stdout),
        String::from_utf8_lossy(&b.stdout),
    );
    let (ra, rb) = (reads(&sa), reads(&sb));
    for team in teams {
        let total = ra.get(&team).unwrap_or(&0) + rb.get(&team).unwrap_or(&0);
        assert_eq!(
            total, per_team,
            "team {team}'s segments were read {total} times in all (once each expected):\nworker A:\n{sa}\nworker B:\n{sb}"
        );
    }
    assert_same(
        &snapshot(&url, &teams).await,
        &want,
        &format!("{backend}: two workers differ from one"),
    );
}

#[tokio::test]
async fn sqlite_two_workers_process_each_team_once() {
    two_workers("sqlite").await;
}

#[tokio::test]
async fn postgres_two_workers_process_each_team_once() {
    two_workers("postgres").await;
}
