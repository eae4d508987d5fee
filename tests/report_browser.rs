//! The HTML report in a real browser: demo segments plus one segment whose description carries
//! a script and an image with an onerror handler go through `segclust run` into a SQLite store,
//! `segclust report` writes the page, and headless Chromium (Debian package `chromium`) loads it.
//! The rendered DOM must hold the Task cards and the map's points, and the hostile description
//! must be there as text: no element it describes exists and nothing it carries ran.
//!
//! Chromium missing fails the test with the install line; it is never skipped.

mod common;
use common::segclust;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use segclust::demo::{DemoParams, generate};
use segclust::segment::RawSegment;
use segclust::source::write_segments;

const NOW: i64 = 1_764_000_000_000;
const DIM: usize = 384;
const HOSTILE: &str = "User clicked Pay and the page crashed with an error \
    <script>window.__pwned=1;document.title='PWNED'</script>\
    <img src=x onerror=\"document.body.setAttribute('data-pwned','1')\">";

/// `CHROMIUM` if set, else `chromium` or `chromium-browser` on PATH.
fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("CHROMIUM") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser"] {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "headless Chromium is needed for the report's browser test and was not found on PATH. \
         Install the Debian package: `apt-get install -y chromium` (or set CHROMIUM to its path)."
    );
}

/// Runs Chromium headless with `args` and the page, returning stdout; fails after 120 s.
fn run_chromium(profile: &Path, args: &[&str], page: &Path) -> String {
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(format!("file://{}", page.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("could not start chromium");
    let mut stdout = child.stdout.take().expect("piped stdout");
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).map(|_| s)
    });
    let start = Instant::now();
    loop {
        match child.try_wait().expect("waiting for chromium") {
            Some(status) => {
                assert!(status.success(), "chromium exited with {status}");
                break;
            }
            None if start.elapsed() > Duration::from_secs(120) => {
                let _ = child.kill();
                panic!("chromium did not finish within 120 s");
            }
            None => std::thread::sleep(Duration::from_millis(100)),
        }
    }
    reader
        .join()
        .expect("reader thread")
        .expect("chromium's output is UTF-8")
}

/// Demo rows plus the hostile one: a one-off crash in a direction of its own, so it is noise
/// with impact above 0.3 and becomes a single-segment Task whose description the report shows.
fn segments() -> Vec<RawSegment> {
    let p = DemoParams {
        seed: 11,
        segments: 400,
        dim: DIM,
        users: 80,
        problems: 8,
        ..DemoParams::default()
    };
    let mut rows = generate(&p, NOW);
    let embedding: Vec<f32> = (0..DIM)
        .map(|i| ((i as f32 * 12.9898).sin() * 43_758.547).fract())
        .collect();
    rows.push(RawSegment {
        team_id: 1,
        document_id: "hostile-session:0:30".into(),
        content: HOSTILE.into(),
        metadata: r#"{"session_id":"hostile-session","distinct_id":"hostile-user"}"#.into(),
        timestamp_ms: NOW - 3_600_000,
        inserted_at_ms: NOW - 3_600_000,
        embedding,
    });
    rows
}

#[test]
fn report_renders_tasks_and_map_and_shows_hostile_text_as_text() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = dir.path().join("segments.parquet");
    write_segments(&source, &segments()).expect("write segments");
    let store = format!("sqlite://{}", dir.path().join("store.db").display());
    let now = NOW.to_string();
    let src = source.display().to_string();
    segclust(&[
        "run", "--source", &src, "--store", &store, "--team", "1", "--dim", "384", "--now-ms",
        &now, "--device", "cpu",
    ]);
    let page = dir.path().join("report.html");
    let out = page.display().to_string();
    segclust(&[
        "report",
        "--store",
        &store,
        "--team",
        "1",
        "--out",
        &out,
        "--now-ms",
        &now,
        "--descriptions",
        "5",
    ]);
    let json = segclust(&[
        "tasks", "--store", &store, "--team", "1", "--json", "--limit", "500",
    ]);
    let tasks: Vec<serde_json::Value> = serde_json::from_str(&json).expect("tasks --json");
    assert!(
        tasks.len() >= 5,
        "the demo should make several Tasks: {json}"
    );

    let html = std::fs::read_to_string(&page).expect("report written");
    assert!(
        !html.contains("<script"),
        "the report itself carries no script"
    );
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no external assets"
    );

    let profile = dir.path().join("chromium-profile");
    let dom = run_chromium(&profile, &["--dump-dom"], &page);
    assert!(
        dom.contains("Tasks by priority"),
        "the page did not render: {dom:.2000}"
    );

    // Every Task is a card, highest priority first, with its title as text.
    assert_eq!(
        dom.matches("<article class=\"task\"").count(),
        tasks.len().min(50)
    );
    let card = |i: usize| {
        let id = tasks[i]["id"].as_i64().expect("id");
        dom.find(&format!("<article class=\"task\" id=\"task-{id}\""))
            .unwrap_or_else(|| panic!("no card for Task {id}"))
    };
    assert!(card(0) < card(1) && card(1) < card(2), "cards by priority");
    assert!(dom.contains("id=\"cluster-map\""), "the map renders");
    for t in &tasks {
        let title = t["title"].as_str().expect("title");
        assert!(
            dom.contains(
                &segclust::report::html::esc(title)
                    .replace("&#39;", "'")
                    .replace("&quot;", "\"")
            ),
            "title {title:?} missing from the DOM"
        );
    }
    // The map: clustered points in colour and noise in grey.
    let pts = dom.matches("<circle class=\"pt\"").count();
    let noise = dom.matches("<circle class=\"noise\"").count();
    assert!(
        pts >= 20 && noise >= 1,
        "map points: {pts} clustered, {noise} noise"
    );
    assert!(dom.contains("<polyline"), "sparklines render");

    // The hostile description is visible text, and nothing it describes exists or ran.
    assert!(
        dom.contains("&lt;script&gt;window.__pwned=1;document.title='PWNED'&lt;/script&gt;"),
        "the script must show as text"
    );
    assert!(
        dom.contains("&lt;img src=x onerror="),
        "the img must show as text"
    );
    assert!(
        !dom.contains("<script"),
        "no script element may exist in the DOM"
    );
    assert!(!dom.contains("<img"), "no img element may exist in the DOM");
    assert!(!dom.contains("data-pwned=\"1\""), "the onerror handler ran");
    assert!(!dom.contains("<title>PWNED"), "the script ran");

    let shot = dir.path().join("report.png");
    run_chromium(
        &profile,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1280,1600",
        ],
        &page,
    );
    let png = std::fs::read(&shot).expect("chromium wrote the screenshot");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "a PNG");
    assert!(
        png.len() > 30_000,
        "a rendered report compresses to more than a blank page: {} bytes",
        png.len()
    );
}
