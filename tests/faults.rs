//! Faults, with the real binary and real servers: an unreachable ClickHouse or PostgreSQL fails
//! after bounded retries with a message that says what and why; a team whose commit PostgreSQL
//! rejects mid-run fails cleanly (nothing of it written, watermark untouched) while the other
//! teams go on, and the exit code and output name the failed team.

use std::path::Path;
use std::process::{Command, Output};

use segclust::demo::{DemoParams, generate};
use segclust::source::write_segments;
use segclust::store::Store;

const NOW: i64 = 1_764_000_000_000;
const DIM: usize = 32;
const BIN: &str = env!("CARGO_BIN_EXE_segclust");

fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

fn segclust(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("SEGCLUST_CONFIG")
        .env_remove("SEGCLUST_FAILPOINT")
        .env("SEGCLUST_LOG", "warn")
        // Fast retries: 2 attempts, short deadlines.
        .env("SEGCLUST__SOURCE__CLICKHOUSE__RETRY__ATTEMPTS", "2")
        .env("SEGCLUST__SOURCE__CLICKHOUSE__RETRY__TIMEOUT_S", "3")
        .env("SEGCLUST__SOURCE__CLICKHOUSE__RETRY__BACKOFF_S", "0.05")
        .env("SEGCLUST__STORE__RETRY__ATTEMPTS", "2")
        .env("SEGCLUST__STORE__RETRY__TIMEOUT_S", "5")
        .env("SEGCLUST__STORE__RETRY__BACKOFF_S", "0.05")
        .output()
        .expect("start segclust")
}

fn text(o: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn write_teams(path: &Path, teams: &[i64]) {
    let rows: Vec<_> = teams
        .iter()
        .flat_map(|&t| {
            generate(
                &DemoParams {
                    seed: t as u64,
                    team_id: t,
                    segments: 300,
                    dim: DIM,
                    users: 40,
                    problems: 8,
                    ..DemoParams::default()
                },
                NOW,
            )
        })
        .collect();
    write_segments(path, &rows).expect("write segments");
}

#[test]
fn unreachable_clickhouse_fails_the_team_after_retries_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("s.db").display());
    let url = format!("http://127.0.0.1:{}", closed_port());
    let out = segclust(&[
        "run",
        "--clickhouse",
        &url,
        "--store",
        &store,
        "--team",
        "3",
        "--device",
        "cpu",
    ]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("team 3: FAILED"), "{t}");
    assert!(t.contains("failed 2 time(s)"), "{t}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s = rt.block_on(Store::connect(&store)).unwrap();
    assert_eq!(rt.block_on(s.watermark(3)).unwrap(), None);
    assert!(rt.block_on(s.tasks(3)).unwrap().is_empty());
}

#[test]
fn unreachable_postgres_is_a_clear_error_after_retries() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.parquet");
    write_teams(&file, &[1]);
    let store = format!("postgres://postgres@127.0.0.1:{}/test", closed_port());
    let out = segclust(&[
        "run",
        "--source",
        file.to_str().unwrap(),
        "--store",
        &store,
        "--dim",
        &DIM.to_string(),
    ]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("cannot connect to the PostgreSQL store"), "{t}");
    assert!(t.contains("failed 2 time(s)"), "{t}");
}

/// A Parquet file that makes the parquet crate panic (found by fuzzing): the run fails with one
/// error naming the file, not a crash, and no panic report on stderr beside it.
#[test]
fn a_damaged_parquet_file_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("damaged.parquet");
    let found = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fuzz/regressions/segments_parquet/dictionary-page-missing.parquet"
    );
    std::fs::copy(found, &file).unwrap();
    let store = format!("sqlite://{}", dir.path().join("s.db").display());
    let out = segclust(&[
        "run",
        "--source",
        file.to_str().unwrap(),
        "--store",
        &store,
        "--all-teams",
    ]);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(
        t.contains("damaged.parquet: the Parquet reader failed on this file"),
        "{t}"
    );
    assert!(t.contains("write it again"), "{t}");
    assert!(
        !t.contains("panicked at"),
        "a caught panic reads as a crash: {t}"
    );
}

/// PostgreSQL rejects team 6's links (a trigger raises inside the commit): team 6 fails with
/// nothing written, team 5 goes through; with the fault gone, a rerun finishes team 6.
#[tokio::test]
async fn a_team_whose_commit_fails_mid_run_leaves_no_trace_and_the_others_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.parquet");
    write_teams(&file, &[5, 6]);
    let base = std::env::var("SEGCLUST_TEST_PG")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let schema = format!("segclust_faults_{}", std::process::id());
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&base)
        .await
        .expect("PostgreSQL at SEGCLUST_TEST_PG");
    let exec = |q: String| sqlx::query(sqlx::AssertSqlSafe(q));
    exec(format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .execute(&mut admin)
        .await
        .unwrap();
    exec(format!("CREATE SCHEMA {schema}"))
        .execute(&mut admin)
        .await
        .unwrap();
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options[search_path]={schema}");
    Store::connect(&url).await.unwrap().close().await; // migrate
    exec(format!(
        "CREATE FUNCTION {schema}.reject() RETURNS trigger LANGUAGE plpgsql AS \
         $$ BEGIN RAISE EXCEPTION 'injected fault for team %', NEW.team_id; END $$"
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    exec(format!(
        "CREATE TRIGGER reject_team_6 BEFORE INSERT ON {schema}.task_segment_links \
         FOR EACH ROW WHEN (NEW.team_id = 6) EXECUTE FUNCTION {schema}.reject()"
    ))
    .execute(&mut admin)
    .await
    .unwrap();

    let args = [
        "run",
        "--source",
        file.to_str().unwrap(),
        "--store",
        &url,
        "--all-teams",
        "--dim",
        &DIM.to_string(),
        "--now-ms",
        &NOW.to_string(),
        "--device",
        "cpu",
    ];
    let out = segclust(&args);
    let t = text(&out);
    assert_eq!(out.status.code(), Some(1), "{t}");
    assert!(t.contains("team 5: 300 segments read"), "{t}");
    assert!(t.contains("team 6: FAILED"), "{t}");
    assert!(t.contains("injected fault for team 6"), "{t}");
    let store = Store::connect(&url).await.unwrap();
    assert!(store.watermark(5).await.unwrap().is_some());
    assert!(!store.tasks(5).await.unwrap().is_empty());
    assert_eq!(
        store.watermark(6).await.unwrap(),
        None,
        "watermark untouched"
    );
    assert!(
        store.tasks(6).await.unwrap().is_empty(),
        "nothing of team 6 written"
    );
    assert!(store.quarantined(6).await.unwrap().is_empty());

    exec(format!(
        "DROP TRIGGER reject_team_6 ON {schema}.task_segment_links"
    ))
    .execute(&mut admin)
    .await
    .unwrap();
    let out = segclust(&args);
    let t = text(&out);
    assert!(out.status.success(), "{t}");
    assert!(t.contains("team 6: 300 segments read"), "{t}");
    assert!(t.contains("team 5: nothing new"), "{t}");
    assert!(!store.tasks(6).await.unwrap().is_empty());
    store.close().await;
    exec(format!("DROP SCHEMA {schema} CASCADE"))
        .execute(&mut admin)
        .await
        .unwrap();
}

/// `schedule` finishes its round, then SIGTERM during the wait for the next one stops it at
/// once, cleanly (exit 0), with everything of the round committed.
#[test]
fn schedule_stops_on_sigterm_between_rounds() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.parquet");
    write_teams(&file, &[1]);
    let store = format!("sqlite://{}", dir.path().join("s.db").display());
    let mut child = Command::new(BIN)
        .args([
            "schedule",
            "--source",
            file.to_str().unwrap(),
            "--store",
            &store,
            "--interval",
            "1h",
            "--dim",
            &DIM.to_string(),
            "--device",
            "cpu",
        ])
        .env_remove("SEGCLUST_CONFIG")
        .env("SEGCLUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start segclust");
    let stdout = child.stdout.take().unwrap();
    let line = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find(|l| l.starts_with("team 1:"))
        .expect("a round's report");
    assert!(line.contains("300 segments read"), "{line}");
    let t = std::time::Instant::now();
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(t.elapsed().as_secs_f64() < 10.0, "stopped promptly");
    assert!(err.contains("SIGTERM"), "{err}");
    assert!(err.contains("schedule stopped"), "{err}");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let s = rt.block_on(Store::connect(&store)).unwrap();
    assert!(rt.block_on(s.watermark(1)).unwrap().is_some());
}

/// `config check --connect` tries every part even when one fails, says which failed and why,
/// and exits 1: here the file source is fine and PostgreSQL does not answer.
#[test]
fn config_check_connect_names_the_part_that_fails() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s.parquet");
    write_teams(&file, &[4, 5]);
    // `config check --connect` on the segments file and `store`; its output and success.
    let check = |name: &str, store: &str| {
        let cfg = dir.path().join(name);
        std::fs::write(
            &cfg,
            format!(
                "[source]\nkind = \"file\"\npath = \"{}\"\n[store]\nurl = \"{store}\"\n\
                 [clustering]\ndevice = \"cpu\"\n",
                file.display()
            ),
        )
        .unwrap();
        let out = segclust(&[
            "config",
            "check",
            "--connect",
            "--config",
            cfg.to_str().unwrap(),
        ]);
        (out.status.success(), text(&out))
    };
    let pg = format!("postgres://segclust:hunter2@127.0.0.1:{}/x", closed_port());
    let (ok, t) = check("pg.toml", &pg);
    assert!(!ok, "{t}");
    assert!(t.contains("600 segments of 2 team(s)"), "{t}");
    assert!(t.contains("FAIL store:"), "{t}");
    assert!(t.contains("device: cpu"), "{t}");
    assert!(
        !t.contains("hunter2"),
        "the password is never printed:\n{t}"
    );

    // The same file with a SQLite store passes.
    let sqlite = format!("sqlite://{}", dir.path().join("s.db").display());
    let (ok, t) = check("sqlite.toml", &sqlite);
    assert!(ok, "{t}");
}
