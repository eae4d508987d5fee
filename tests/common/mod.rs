//! Helpers shared by the tests that run the `segclust` binary.

use std::process::Command;

/// Runs `segclust args`, requires success, and returns its stdout.
pub fn segclust(args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_segclust"))
        .args(args)
        .output()
        .expect("could not run segclust");
    assert!(
        out.status.success(),
        "segclust {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
