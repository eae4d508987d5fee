//! Named points where a test can stop the process, to prove that a crash at any step loses and
//! duplicates nothing (tests/crash.rs).
//!
//! With `SEGCLUST_FAILPOINT=<name>` (or `<name>:<n>`, the n-th time the point is reached, so a
//! test can let earlier batches commit) in the environment, the process reaches the point, writes
//! `segclust: failpoint <name> reached` to stderr and waits there for ever, so that the test can
//! SIGKILL it at exactly that step (a real kill: no destructors, no rollback by the process
//! itself, the open transaction abandoned mid-flight). Without the variable a point costs one
//! load of a cached value.
//!
//! The wait is a future that never completes, not a parked thread: the rest of the process
//! goes on, so a SIGTERM there takes the real shutdown path (the grace period runs out and the
//! coordinator drops the batch in hand, with its open transaction) and tests/crash.rs can
//! check what that leaves behind.
//!
//! Points: `after_fetch`, `after_cluster`, `after_label` (pipeline), `in_commit` (inside the
//! store's transaction, after every write and before COMMIT).

use std::io::Write;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable that arms a failpoint.
pub const ENV: &str = "SEGCLUST_FAILPOINT";

/// Every point the code has; anything else in [`ENV`] is an error at start-up.
pub const POINTS: &[&str] = &["after_fetch", "after_cluster", "after_label", "in_commit"];

/// The armed point and on which arrival (1-based) it fires.
fn armed() -> Option<&'static (String, u64)> {
    static ARMED: OnceLock<Option<(String, u64)>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let v = std::env::var(ENV).ok().filter(|v| !v.is_empty())?;
            Some(match v.split_once(':') {
                Some((name, n)) => (name.to_string(), n.parse().unwrap_or(0)),
                None => (v, 1),
            })
        })
        .as_ref()
}

/// Checks the variable once at start-up, so a typo cannot silently disarm a crash test.
pub fn check() -> anyhow::Result<()> {
    match armed() {
        Some((p, n)) if !POINTS.contains(&p.as_str()) || *n == 0 => anyhow::bail!(
            "{ENV}={p:?}:{n} is not a failpoint; use NAME or NAME:N (N >= 1), NAME one of {}",
            POINTS.join(", ")
        ),
        _ => Ok(()),
    }
}

/// Waits here for ever when `name` is armed and this is the arrival it waits for.
pub async fn hit(name: &str) {
    static ARRIVALS: AtomicU64 = AtomicU64::new(0);
    let Some((armed, nth)) = armed() else {
        return;
    };
    if armed == name && ARRIVALS.fetch_add(1, Ordering::SeqCst) + 1 == *nth {
        {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "segclust: failpoint {name} reached");
            let _ = err.flush();
        }
        std::future::pending::<()>().await;
    }
}
