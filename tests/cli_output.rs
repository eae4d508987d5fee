//! Command output as a shell user consumes it: `segclust tasks | head` must end quietly when the
//! reader goes away, the way Unix tools do, not with a panic message and a failure status.

mod common;
use common::segclust;
use std::process::{Command, Stdio};

use segclust::demo::{DemoParams, generate};
use segclust::source::write_segments;

const NOW: i64 = 1_764_000_000_000;

#[test]
fn tasks_ends_quietly_when_its_reader_closes_the_pipe() {
    let dir = tempfile::tempdir().expect("tempdir");
    let source = dir.path().join("segments.parquet");
    let p = DemoParams {
        seed: 3,
        segments: 400,
        dim: 64,
        users: 80,
        problems: 8,
        ..DemoParams::default()
    };
    write_segments(&source, &generate(&p, NOW)).expect("write segments");
    let store = format!("sqlite://{}", dir.path().join("store.db").display());
    let (src, now) = (source.display().to_string(), NOW.to_string());
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
