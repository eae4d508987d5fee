//! Timeouts and bounded retries for calls to the outside world (ClickHouse, PostgreSQL).
//!
//! Every external call gets a deadline, so a hung server costs one team one timeout instead of
//! the whole run. Reads are retried with exponential backoff; writes are not retried here: the
//! batch commit is a single transaction, and retrying a commit whose acknowledgement was lost
//! could apply it twice, so a failed commit fails the team and the next run starts over from
//! the unchanged (or the committed) watermark.

use std::future::Future;
use std::time::Duration;

use anyhow::{Result, anyhow};
use serde::Deserialize;

use crate::config::{LONGEST_SECS, seconds};

/// How hard to try an external call.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub attempts: u32,
    /// Deadline of one attempt, in seconds.
    pub timeout_s: f64,
    /// Wait before the second attempt, in seconds; doubled for each later one.
    pub backoff_s: f64,
    /// Longest wait between attempts, in seconds.
    pub max_backoff_s: f64,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 4,
            timeout_s: 120.0,
            backoff_s: 0.5,
            max_backoff_s: 10.0,
        }
    }
}

impl RetryPolicy {
    /// Every field out of range, as (field, why). A config file is checked with this before a
    /// run; the methods below still saturate, so a policy built elsewhere cannot panic either.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        if self.attempts == 0 {
            p.push((
                "attempts",
                "is 0; use 1 or more (the first attempt counts)".into(),
            ));
        }
        for (field, v, least) in [
            ("timeout_s", self.timeout_s, f64::MIN_POSITIVE),
            ("backoff_s", self.backoff_s, 0.0),
            ("max_backoff_s", self.max_backoff_s, 0.0),
        ] {
            if !(v >= least && seconds(v).is_some()) {
                let least = if least > 0.0 { "above 0" } else { "0 or more" };
                p.push((
                    field,
                    format!("is {v}; use {least} seconds, at most ten years"),
                ));
            }
        }
        p
    }

    pub fn timeout(&self) -> Duration {
        seconds(self.timeout_s.max(0.001)).unwrap_or(Duration::from_secs_f64(LONGEST_SECS))
    }

    /// The wait after failed attempt `n` (1-based).
    fn backoff(&self, n: u32) -> Duration {
        let factor = 2f64.powi(n.saturating_sub(1).min(30) as i32);
        let wait = (self.backoff_s * factor).min(self.max_backoff_s);
        seconds(wait.max(0.0)).unwrap_or(Duration::ZERO)
    }

    /// Runs `call` until it succeeds, each attempt under the deadline, at most `attempts` times.
    /// `what` names the call in logs and in the final error ("reading team 7 from ClickHouse").
    pub async fn run<T, F, Fut>(&self, what: &str, mut call: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let attempts = self.attempts.max(1);
        let mut last = anyhow!("{what}: no attempt made");
        for n in 1..=attempts {
            let err = match tokio::time::timeout(self.timeout(), call()).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) => e,
                Err(_) => anyhow!("timed out after {:.1} s", self.timeout_s),
            };
            if n < attempts {
                let wait = self.backoff(n);
                tracing::warn!(
                    attempt = n,
                    of = attempts,
                    retry_in_s = wait.as_secs_f64(),
                    "{what} failed: {err:#}"
                );
                tokio::time::sleep(wait).await;
            }
            last = err;
        }
        Err(last.context(format!("{what} failed {attempts} time(s)")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn fast(attempts: u32) -> RetryPolicy {
        RetryPolicy {
            attempts,
            timeout_s: 0.05,
            backoff_s: 0.001,
            max_backoff_s: 0.002,
        }
    }

    #[tokio::test]
    async fn retries_until_success() {
        let calls = AtomicU32::new(0);
        let v = fast(3)
            .run("flaky", || async {
                if calls.fetch_add(1, Ordering::SeqCst) < 2 {
                    anyhow::bail!("not yet")
                }
                Ok(42)
            })
            .await;
        assert_eq!(v.ok(), Some(42));
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn gives_up_after_the_last_attempt_and_says_why() {
        let calls = AtomicU32::new(0);
        let err = fast(2)
            .run("reading team 7", || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(anyhow!("connection refused"))
            })
            .await
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        assert!(err.contains("reading team 7 failed 2 time(s)"), "{err}");
        assert!(err.contains("connection refused"), "{err}");
    }

    #[tokio::test]
    async fn a_hung_call_times_out() {
        let err = fast(1)
            .run("hung", || async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                Ok(())
            })
            .await
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(err.contains("timed out"), "{err}");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let p = RetryPolicy {
            backoff_s: 1.0,
            max_backoff_s: 3.0,
            ..RetryPolicy::default()
        };
        assert_eq!(p.backoff(1), Duration::from_secs(1));
        assert_eq!(p.backoff(2), Duration::from_secs(2));
        assert_eq!(p.backoff(3), Duration::from_secs(3));
    }

    #[test]
    fn policies_out_of_range_saturate_instead_of_panicking() {
        let p = RetryPolicy {
            attempts: 0,
            timeout_s: f64::INFINITY,
            backoff_s: f64::NAN,
            max_backoff_s: 1e300,
        };
        let fields: Vec<&str> = p.problems().into_iter().map(|(f, _)| f).collect();
        assert_eq!(
            fields,
            ["attempts", "timeout_s", "backoff_s", "max_backoff_s"]
        );
        assert_eq!(p.timeout(), Duration::from_secs_f64(LONGEST_SECS));
        assert_eq!(p.backoff(1), Duration::ZERO, "a wait out of range is none");
        assert!(RetryPolicy::default().problems().is_empty());
    }
}
