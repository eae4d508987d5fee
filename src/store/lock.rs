//! Per-team locks, so that several workers (on one machine or many) never process one team at
//! the same time: a PostgreSQL session-level advisory lock, or for SQLite an exclusive lock on
//! a file next to the database. Both are released by the operating system or the server when
//! the holder dies, so a crashed worker never leaves a team locked.
//!
//! The commit is correct without the lock (links are unique per team, aggregates recomputed),
//! but two workers on one team would each create Tasks for the same new clusters; the lock is
//! what makes "one worker per team" true.

use std::fs::{File, OpenOptions, TryLockError};
use std::path::PathBuf;

use anyhow::{Context, Result};
use sqlx::{Connection, PgConnection};

use super::{Inner, Store};

/// The advisory lock key: 64 bits of md5("segclust:<schema>:<team>"). Advisory locks are per
/// database, so the store's schema is part of the key: two deployments (or test runs) that
/// share a database through different schemas never block each other, and the prefix keeps
/// clear of other applications' keys.
const PG_TRY_LOCK: &str = "SELECT pg_try_advisory_lock(('x' || substr(md5('segclust:' || \
     current_schema() || ':' || $1::text), 1, 16))::bit(64)::bigint)";

/// A held team lock; dropping it releases the lock.
#[derive(Debug)]
pub enum TeamLock {
    /// A dedicated connection (not from the pool) holding `pg_advisory_lock`: closing it, or
    /// the process dying, ends the session and frees the lock.
    Postgres(PgConnection),
    /// An open lock file with an exclusive `flock`.
    File(File, PathBuf),
    /// An in-memory SQLite store belongs to one process: nothing to lock.
    Process,
}

impl TeamLock {
    /// Releases the lock now (dropping it does too; this waits for PostgreSQL to confirm).
    pub async fn release(self) {
        match self {
            TeamLock::Postgres(conn) => {
                if let Err(e) = conn.close().await {
                    tracing::debug!("closing a team lock connection: {e}");
                }
            }
            TeamLock::File(file, _) => drop(file),
            TeamLock::Process => {}
        }
    }
}

impl Store {
    /// Takes `team`'s lock if no other worker holds it: `Ok(None)` means another worker has it.
    pub async fn try_lock_team(&self, team: i64) -> Result<Option<TeamLock>> {
        match &self.inner {
            Inner::Postgres(repo) => {
                let mut conn = repo
                    .pool
                    .acquire()
                    .await
                    .with_context(|| {
                        format!("connecting to {} to lock team {team}", self.display_url)
                    })?
                    .detach();
                let got: bool = sqlx::query_scalar(PG_TRY_LOCK)
                    .bind(team)
                    .fetch_one(&mut conn)
                    .await
                    .with_context(|| format!("taking the advisory lock of team {team}"))?;
                if got {
                    Ok(Some(TeamLock::Postgres(conn)))
                } else {
                    conn.close().await.ok();
                    Ok(None)
                }
            }
            Inner::Sqlite(_) => {
                let Some(db) = &self.sqlite_path else {
                    return Ok(Some(TeamLock::Process));
                };
                let mut name = db.as_os_str().to_owned();
                name.push(format!(".team-{team}.lock"));
                let path = PathBuf::from(name);
                let file = OpenOptions::new()
                    .create(true)
                    .truncate(false)
                    .write(true)
                    .open(&path)
                    .with_context(|| format!("opening the lock file {}", path.display()))?;
                match file.try_lock() {
                    Ok(()) => Ok(Some(TeamLock::File(file, path))),
                    Err(TryLockError::WouldBlock) => Ok(None),
                    Err(TryLockError::Error(e)) => {
                        Err(e).with_context(|| format!("locking {}", path.display()))
                    }
                }
            }
        }
    }

    /// Team ids from an operator's SQL query against the store (`teams.query` in the config):
    /// the first column of every row, as an integer.
    pub async fn query_team_ids(&self, sql: &str) -> Result<Vec<i64>> {
        let what = format!("running teams.query against {}", self.display_url);
        let mut ids: Vec<i64> = match &self.inner {
            Inner::Postgres(r) => sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
                .fetch_all(&r.pool)
                .await
                .context(what)?,
            Inner::Sqlite(r) => sqlx::query_scalar(sqlx::AssertSqlSafe(sql.to_string()))
                .fetch_all(&r.pool)
                .await
                .context(what)?,
        };
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }
}
