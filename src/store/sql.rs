//! The store's SQL, written once and compiled for both backends (see the module docs of
//! `store`). Every statement uses `$N` placeholders or `QueryBuilder` binds, never string
//! interpolation of values.

use std::collections::{BTreeSet, HashMap, HashSet};

use anyhow::{Context, Result, anyhow, bail};
use sqlx::postgres::PgQueryResult;
use sqlx::sqlite::SqliteQueryResult;
use sqlx::{
    ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, QueryBuilder, Row, Type,
};

use super::{
    BatchCommit, CarryOver, CommitSummary, Link, PriorityFn, Quarantine, Run, RunFigures,
    RunRecord, StoredMapPoint, Task, TaskAggregates, TaskRef, Watermark, centroid_from_bytes,
    centroid_to_bytes,
};

/// Most rows in one multi-row statement (bind limits: SQLite 32,766, PostgreSQL 65,535).
const MAX_ROWS: usize = 500;
// The widest rows (links) bind 10 values each.
const _: () = assert!(MAX_ROWS * 10 < 32_766);

/// Target size of one statement's bound values. sqlx 0.9.0 does not set TCP_NODELAY
/// (launchbadge/sqlx#4335): over TLS a message larger than one 16 KiB record leaves in pieces
/// and the last waits ~40 ms for a delayed ACK. With 500-row statements that made a 50k-link
/// commit take 5.5 s on a local PostgreSQL instead of 1 s; statements that fit one record avoid
/// the stall and cost only a round trip each.
const STATEMENT_BYTES: usize = 12 * 1024;

/// PostgreSQL's Bind message prefixes every value with its length.
const PARAM_OVERHEAD: usize = 4;
/// Encoded size of an i64 or f64 parameter.
const NUM: usize = PARAM_OVERHEAD + 8;

/// Rows per statement when no row takes more than `max_row_bytes` of bound values.
fn rows_per_statement(max_row_bytes: usize) -> usize {
    (STATEMENT_BYTES / max_row_bytes.max(1)).clamp(1, MAX_ROWS)
}

/// Bound bytes of the longest row, given each row's string parameters.
fn widest<'a, T: 'a>(
    rows: impl IntoIterator<Item = &'a T>,
    strings: impl Fn(&T) -> usize,
    fixed: usize,
) -> usize {
    fixed + rows.into_iter().map(strings).max().unwrap_or(0)
}

/// `rows_affected` is inherent on each backend's result type, not part of `sqlx::Database`.
pub(super) trait RowsAffected {
    fn affected(&self) -> u64;
}

impl RowsAffected for SqliteQueryResult {
    fn affected(&self) -> u64 {
        self.rows_affected()
    }
}

impl RowsAffected for PgQueryResult {
    fn affected(&self) -> u64 {
        self.rows_affected()
    }
}

/// One backend's pool plus the statement that opens a write transaction on it.
pub(super) struct Repo<DB: Database> {
    pub(super) pool: Pool<DB>,
    /// SQLite: `BEGIN IMMEDIATE` takes the write lock up front, so a concurrent writer waits on
    /// the busy timeout instead of failing on a read-to-write upgrade. PostgreSQL: `BEGIN`.
    begin_sql: &'static str,
}

impl<DB: Database> Clone for Repo<DB> {
    fn clone(&self) -> Self {
        Repo {
            pool: self.pool.clone(),
            begin_sql: self.begin_sql,
        }
    }
}

/// The columns `task_from_row` reads, in its order.
macro_rules! task_columns {
    () => {
        "id, team_id, title, description, label_source, priority_score, priority_level, impact, \
         segment_count, occurrence_count, distinct_user_count, first_seen_ms, last_seen_ms, \
         centroid, centroid_weight, created_at_ms, updated_at_ms, actionable"
    };
}

/// The columns of `runs` after `id`, in the order `insert_run` binds and `run_from_row` reads.
macro_rules! run_columns {
    () => {
        "id, team_id, started_at_ms, finished_at_ms, now_ms, segments_read, already_linked, \
         carried_over, quarantined, clustered, clusters, noise, rescued, tasks_created, \
         tasks_updated, links, read_s, numeric_s, label_s, commit_s, quarantine_reasons, map, \
         match_s"
    };
}

impl<DB> Repo<DB>
where
    DB: Database,
    DB::QueryResult: RowsAffected,
    DB::Arguments: IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    usize: ColumnIndex<DB::Row>,
    i64: for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB> + Type<DB>,
    f64: for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB> + Type<DB>,
    String: for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB> + Type<DB>,
    Vec<u8>: for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB> + Type<DB>,
    for<'a> &'a str: Encode<'a, DB> + Type<DB>,
    Option<bool>: for<'q> Encode<'q, DB> + for<'r> Decode<'r, DB> + Type<DB>,
{
    pub(super) fn new(pool: Pool<DB>, begin_sql: &'static str) -> Self {
        Repo { pool, begin_sql }
    }

    pub(super) async fn watermark(&self, team: i64) -> Result<Option<Watermark>> {
        let row = sqlx::query(
            "SELECT watermark_inserted_at_ms, watermark_document_id FROM clustering_state \
             WHERE team_id = $1",
        )
        .bind(team)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| {
            Ok(Watermark {
                inserted_at_ms: r.try_get(0)?,
                document_id: r.try_get(1)?,
            })
        })
        .transpose()
    }

    pub(super) async fn tasks(&self, team: i64) -> Result<Vec<Task>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            task_columns!(),
            " FROM tasks WHERE team_id = $1 ORDER BY id"
        ))
        .bind(team)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(task_from_row::<DB>).collect()
    }

    pub(super) async fn task(&self, team: i64, id: i64) -> Result<Option<Task>> {
        let row = sqlx::query(concat!(
            "SELECT ",
            task_columns!(),
            " FROM tasks WHERE team_id = $1 AND id = $2"
        ))
        .bind(team)
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(task_from_row::<DB>).transpose()
    }

    pub(super) async fn task_of_segments(&self, team: i64) -> Result<Vec<(String, i64)>> {
        let rows = sqlx::query(
            "SELECT document_id, task_id FROM task_segment_links WHERE team_id = $1 \
             ORDER BY document_id",
        )
        .bind(team)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    pub(super) async fn links(&self, team: i64, task_id: i64) -> Result<Vec<Link>> {
        let rows = sqlx::query(
            "SELECT task_id, team_id, document_id, session_id, distinct_id, distance, impact, \
             timestamp_ms, created_at_ms, content FROM task_segment_links \
             WHERE team_id = $1 AND task_id = $2 ORDER BY timestamp_ms, document_id",
        )
        .bind(team)
        .bind(task_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Link {
                    task_id: r.try_get(0)?,
                    team_id: r.try_get(1)?,
                    document_id: r.try_get(2)?,
                    session_id: r.try_get(3)?,
                    distinct_id: r.try_get(4)?,
                    distance: r.try_get(5)?,
                    impact: r.try_get(6)?,
                    timestamp_ms: r.try_get(7)?,
                    created_at_ms: r.try_get(8)?,
                    content: r.try_get(9)?,
                })
            })
            .collect()
    }

    /// SQLite's `linked_ids` (see `Repo<Postgres>::linked_ids` for PostgreSQL's).
    pub(super) async fn linked_ids_in_chunks(
        &self,
        team: i64,
        ids: &[String],
    ) -> Result<HashSet<String>> {
        let mut out = HashSet::new();
        let per = rows_per_statement(widest(ids, |d| d.len(), PARAM_OVERHEAD));
        for chunk in ids.chunks(per) {
            let mut qb = QueryBuilder::<DB>::new(
                "SELECT document_id FROM task_segment_links WHERE team_id = ",
            );
            qb.push_bind(team).push(" AND document_id IN (");
            let mut list = qb.separated(", ");
            for id in chunk {
                list.push_bind(id.as_str());
            }
            qb.push(")");
            for row in qb.build().fetch_all(&self.pool).await? {
                out.insert(row.try_get::<String, _>(0)?);
            }
        }
        Ok(out)
    }

    pub(super) async fn carry_over(
        &self,
        team: i64,
        since_ms: i64,
        max: usize,
    ) -> Result<CarryOver> {
        macro_rules! unlinked_in_window {
            () => {
                "FROM unlinked_segments u \
                 WHERE u.team_id = $1 AND u.timestamp_ms >= $2 AND NOT EXISTS ( \
                   SELECT 1 FROM task_segment_links l \
                   WHERE l.team_id = u.team_id AND l.document_id = u.document_id)"
            };
        }
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let rows = sqlx::query(concat!(
            "SELECT u.document_id ",
            unlinked_in_window!(),
            " ORDER BY u.timestamp_ms DESC, u.document_id DESC LIMIT $3"
        ))
        .bind(team)
        .bind(since_ms)
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut ids = rows
            .iter()
            .map(|r| Ok(r.try_get(0)?))
            .collect::<Result<Vec<String>>>()?;
        ids.reverse();
        // Counted only when the cap was reached: the common case costs one query.
        let left_out = if ids.len() >= max {
            let row = sqlx::query(concat!("SELECT COUNT(*) ", unlinked_in_window!()))
                .bind(team)
                .bind(since_ms)
                .fetch_one(&self.pool)
                .await?;
            let all: i64 = row.try_get(0)?;
            usize::try_from(all).unwrap_or(0).saturating_sub(ids.len())
        } else {
            0
        };
        Ok(CarryOver { ids, left_out })
    }

    pub(super) async fn quarantined(&self, team: i64) -> Result<Vec<Quarantine>> {
        let rows = sqlx::query(
            "SELECT team_id, document_id, reason FROM quarantined_segments \
             WHERE team_id = $1 ORDER BY created_at_ms, document_id",
        )
        .bind(team)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(Quarantine {
                    team_id: r.try_get(0)?,
                    document_id: r.try_get(1)?,
                    reason: r.try_get(2)?,
                })
            })
            .collect()
    }

    pub(super) async fn runs(&self, team: i64, limit: usize) -> Result<Vec<Run>> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            run_columns!(),
            " FROM runs WHERE team_id = $1 ORDER BY id DESC LIMIT $2"
        ))
        .bind(team)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(run_from_row::<DB>).collect()
    }

    pub(super) async fn teams(&self) -> Result<Vec<i64>> {
        let rows = sqlx::query(
            "SELECT team_id FROM clustering_state UNION SELECT team_id FROM tasks ORDER BY 1",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }

    pub(super) async fn commit_batch(&self, b: &BatchCommit) -> Result<CommitSummary> {
        let team = b.team_id;
        let now = b.now_ms;
        let started = std::time::Instant::now();
        let mut summary = CommitSummary::default();
        // Dropping `tx` on any early return rolls everything back.
        let mut tx = self.pool.begin_with(self.begin_sql).await?;

        let mut new_ids = Vec::with_capacity(b.new_tasks.len());
        for t in &b.new_tasks {
            let row = sqlx::query(
                "INSERT INTO tasks (team_id, title, description, label_source, centroid, \
                 centroid_weight, created_at_ms, updated_at_ms, actionable) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8) RETURNING id",
            )
            .bind(team)
            .bind(t.title.as_str())
            .bind(t.description.as_str())
            .bind(t.label_source.as_str())
            .bind(centroid_to_bytes(&t.centroid))
            .bind(t.centroid_weight)
            .bind(now)
            .bind(t.actionable)
            .fetch_one(&mut *tx)
            .await
            .with_context(|| format!("creating task {:?}", t.title))?;
            new_ids.push(row.try_get::<i64, _>(0)?);
        }

        let mut resolved = Vec::with_capacity(b.links.len());
        for l in &b.links {
            let task_id = match l.task {
                TaskRef::Existing(id) => id,
                TaskRef::New(i) => *new_ids.get(i).ok_or_else(|| {
                    anyhow!(
                        "link of segment {} refers to new task #{i}, but the batch creates only {} \
                         (a bug in the caller)",
                        l.document_id,
                        new_ids.len()
                    )
                })?,
            };
            resolved.push((task_id, l));
        }
        // New links per Task: which Tasks this commit really changes.
        let mut gained: HashMap<i64, usize> = HashMap::new();
        let per = rows_per_statement(widest(
            &resolved,
            |(_, l)| {
                l.document_id.len() + l.session_id.len() + l.distinct_id.len() + l.content.len()
            },
            6 * NUM + 4 * PARAM_OVERHEAD,
        ));
        for chunk in resolved.chunks(per) {
            let mut qb = QueryBuilder::<DB>::new(
                "INSERT INTO task_segment_links (task_id, team_id, document_id, session_id, \
                 distinct_id, distance, impact, timestamp_ms, created_at_ms, content) ",
            );
            qb.push_values(chunk, |mut row, (task_id, l)| {
                row.push_bind(*task_id)
                    .push_bind(team)
                    .push_bind(l.document_id.as_str())
                    .push_bind(l.session_id.as_str())
                    .push_bind(l.distinct_id.as_str())
                    .push_bind(l.distance)
                    .push_bind(l.impact)
                    .push_bind(l.timestamp_ms)
                    .push_bind(now)
                    .push_bind(l.content.as_str());
            });
            qb.push(" ON CONFLICT (team_id, document_id) DO NOTHING RETURNING task_id");
            let rows = qb.build().fetch_all(&mut *tx).await.context(
                "inserting segment links (a link to a task that does not exist in this team fails here)",
            )?;
            for r in &rows {
                *gained.entry(r.try_get::<i64, _>(0)?).or_default() += 1;
            }
            summary.links_inserted += rows.len();
        }
        summary.links_skipped = resolved.len() - summary.links_inserted;

        let mut touched: BTreeSet<i64> = gained.keys().copied().collect();
        let mut updated_existing: HashSet<i64> = HashSet::new();
        for cu in &b.centroid_updates {
            if !gained.contains_key(&cu.task_id) {
                // Every segment behind this update is already linked: the update was applied
                // when they were (a rerun); applying it again would double-count its weight.
                continue;
            }
            let res = sqlx::query(
                "UPDATE tasks SET centroid = $1, centroid_weight = $2, updated_at_ms = $3 \
                 WHERE team_id = $4 AND id = $5",
            )
            .bind(centroid_to_bytes(&cu.centroid))
            .bind(cu.centroid_weight)
            .bind(now)
            .bind(team)
            .bind(cu.task_id)
            .execute(&mut *tx)
            .await?;
            if res.affected() != 1 {
                bail!(
                    "centroid update for task {} which team {team} does not have",
                    cu.task_id
                );
            }
            updated_existing.insert(cu.task_id);
        }

        let mut empty_new = Vec::new();
        for id in &new_ids {
            if gained.contains_key(id) {
                summary.tasks_created += 1;
                summary.new_task_ids.push(Some(*id));
            } else {
                // All its segments were linked by an earlier commit of the same batch.
                summary.new_task_ids.push(None);
                touched.remove(id);
                empty_new.push(*id);
            }
        }
        for chunk in empty_new.chunks(rows_per_statement(NUM)) {
            let mut qb = QueryBuilder::<DB>::new("DELETE FROM tasks WHERE team_id = ");
            qb.push_bind(team).push(" AND id IN (");
            let mut list = qb.separated(", ");
            for id in chunk {
                list.push_bind(*id);
            }
            qb.push(")");
            qb.build()
                .execute(&mut *tx)
                .await
                .context("dropping new tasks left without links")?;
        }
        let new_set: HashSet<i64> = new_ids.iter().copied().collect();
        updated_existing.extend(gained.keys().filter(|id| !new_set.contains(id)));
        summary.tasks_updated = updated_existing.len();
        touched.extend(updated_existing.iter().copied());

        let touched: Vec<i64> = touched.into_iter().collect();
        // The widest statement per chunk is the update: 8 numbers and the level per Task.
        let per = rows_per_statement(widest(&touched, |_| 16, 8 * NUM + PARAM_OVERHEAD));
        for chunk in touched.chunks(per) {
            let mut qb = QueryBuilder::<DB>::new(
                "SELECT task_id, COUNT(*), COUNT(DISTINCT session_id), COUNT(DISTINCT distinct_id), \
                 AVG(impact), MIN(timestamp_ms), MAX(timestamp_ms) FROM task_segment_links \
                 WHERE team_id = ",
            );
            qb.push_bind(team).push(" AND task_id IN (");
            let mut list = qb.separated(", ");
            for id in chunk {
                list.push_bind(*id);
            }
            qb.push(") GROUP BY task_id");
            let rows = qb
                .build()
                .fetch_all(&mut *tx)
                .await
                .context("recomputing task aggregates")?;
            let mut scored = Vec::with_capacity(rows.len());
            for r in &rows {
                let agg = TaskAggregates {
                    task_id: r.try_get(0)?,
                    segment_count: r.try_get(1)?,
                    occurrence_count: r.try_get(2)?,
                    distinct_user_count: r.try_get(3)?,
                    impact: r.try_get::<Option<f64>, _>(4)?.unwrap_or(0.0),
                    first_seen_ms: r.try_get(5)?,
                    last_seen_ms: r.try_get(6)?,
                };
                let (score, level) = (b.priority)(&agg, now);
                scored.push((agg, score, level));
            }
            if scored.is_empty() {
                continue;
            }
            // One statement for the chunk: `UPDATE .. FROM` a VALUES table (SQLite >= 3.33).
            let mut qb = QueryBuilder::<DB>::new(
                "WITH v (id, segment_count, occurrence_count, distinct_user_count, impact, \
                 first_seen_ms, last_seen_ms, priority_score, priority_level) AS (",
            );
            qb.push_values(&scored, |mut row, (agg, score, level)| {
                row.push_bind(agg.task_id)
                    .push_bind(agg.segment_count)
                    .push_bind(agg.occurrence_count)
                    .push_bind(agg.distinct_user_count)
                    .push_bind(agg.impact)
                    .push_bind(agg.first_seen_ms)
                    .push_bind(agg.last_seen_ms)
                    .push_bind(*score)
                    .push_bind(level.as_str());
            });
            qb.push(
                ") UPDATE tasks SET segment_count = v.segment_count, \
                 occurrence_count = v.occurrence_count, distinct_user_count = v.distinct_user_count, \
                 impact = v.impact, first_seen_ms = v.first_seen_ms, last_seen_ms = v.last_seen_ms, \
                 priority_score = v.priority_score, priority_level = v.priority_level, \
                 updated_at_ms = ",
            );
            qb.push_bind(now)
                .push(" FROM v WHERE tasks.team_id = ")
                .push_bind(team)
                .push(" AND tasks.id = v.id");
            let res = qb
                .build()
                .execute(&mut *tx)
                .await
                .context("updating task aggregates")?;
            if res.affected() as usize != scored.len() {
                bail!(
                    "updated {} of {} task aggregates",
                    res.affected(),
                    scored.len()
                );
            }
        }

        let per = rows_per_statement(widest(
            &b.quarantined,
            |q| q.document_id.len() + q.reason.len(),
            2 * NUM + 2 * PARAM_OVERHEAD,
        ));
        for chunk in b.quarantined.chunks(per) {
            if let Some(q) = chunk.iter().find(|q| q.team_id != team) {
                bail!(
                    "quarantined row {} belongs to team {}, not to the batch's team {team}",
                    q.document_id,
                    q.team_id
                );
            }
            let mut qb = QueryBuilder::<DB>::new(
                "INSERT INTO quarantined_segments (team_id, document_id, reason, created_at_ms) ",
            );
            qb.push_values(chunk, |mut row, q| {
                row.push_bind(team)
                    .push_bind(q.document_id.as_str())
                    .push_bind(q.reason.as_str())
                    .push_bind(now);
            });
            qb.push(" ON CONFLICT (team_id, document_id) DO NOTHING");
            let res = qb
                .build()
                .execute(&mut *tx)
                .await
                .context("recording quarantined rows")?;
            summary.quarantined += res.affected() as usize;
        }

        let per = rows_per_statement(widest(
            &b.unlinked,
            |u| u.document_id.len(),
            3 * NUM + PARAM_OVERHEAD,
        ));
        for chunk in b.unlinked.chunks(per) {
            let mut qb = QueryBuilder::<DB>::new(
                "INSERT INTO unlinked_segments (team_id, document_id, inserted_at_ms, timestamp_ms) ",
            );
            qb.push_values(chunk, |mut row, u| {
                row.push_bind(team)
                    .push_bind(u.document_id.as_str())
                    .push_bind(u.inserted_at_ms)
                    .push_bind(u.timestamp_ms);
            });
            qb.push(" ON CONFLICT (team_id, document_id) DO NOTHING");
            let res = qb
                .build()
                .execute(&mut *tx)
                .await
                .context("recording unlinked segments")?;
            summary.unlinked_added += res.affected() as usize;
        }
        let res = sqlx::query(
            "DELETE FROM unlinked_segments WHERE team_id = $1 AND (timestamp_ms < $2 OR EXISTS ( \
               SELECT 1 FROM task_segment_links l \
               WHERE l.team_id = unlinked_segments.team_id \
                 AND l.document_id = unlinked_segments.document_id))",
        )
        .bind(team)
        .bind(b.carry_over_prune_before_ms)
        .execute(&mut *tx)
        .await
        .context("pruning carried-over segments")?;
        summary.unlinked_pruned = res.affected() as usize;

        if let Some(w) = &b.watermark {
            let res = sqlx::query(
                "INSERT INTO clustering_state (team_id, watermark_inserted_at_ms, \
                 watermark_document_id, updated_at_ms) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (team_id) DO UPDATE SET \
                   watermark_inserted_at_ms = excluded.watermark_inserted_at_ms, \
                   watermark_document_id = excluded.watermark_document_id, \
                   updated_at_ms = excluded.updated_at_ms \
                 WHERE (excluded.watermark_inserted_at_ms, excluded.watermark_document_id) > \
                       (clustering_state.watermark_inserted_at_ms, \
                        clustering_state.watermark_document_id)",
            )
            .bind(team)
            .bind(w.inserted_at_ms)
            .bind(w.document_id.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await
            .context("advancing the watermark")?;
            summary.watermark_advanced = res.affected() == 1;
        }

        if let Some(run) = &b.run {
            insert_run(&mut tx, team, now, run, &summary, started).await?;
        }

        crate::failpoint::hit("in_commit").await;
        tx.commit().await.context("committing the transaction")?;
        Ok(summary)
    }

    pub(super) async fn refresh_priorities(
        &self,
        team: i64,
        now_ms: i64,
        priority: &PriorityFn,
    ) -> Result<usize> {
        let mut tx = self.pool.begin_with(self.begin_sql).await?;
        let rows = sqlx::query(
            "SELECT id, segment_count, occurrence_count, distinct_user_count, impact, \
             first_seen_ms, last_seen_ms, priority_score, priority_level \
             FROM tasks WHERE team_id = $1 ORDER BY id",
        )
        .bind(team)
        .fetch_all(&mut *tx)
        .await?;
        let mut changed = Vec::new();
        for r in &rows {
            let agg = TaskAggregates {
                task_id: r.try_get(0)?,
                segment_count: r.try_get(1)?,
                occurrence_count: r.try_get(2)?,
                distinct_user_count: r.try_get(3)?,
                impact: r.try_get(4)?,
                first_seen_ms: r.try_get(5)?,
                last_seen_ms: r.try_get(6)?,
            };
            let old_score: f64 = r.try_get(7)?;
            let old_level: String = r.try_get(8)?;
            let (score, level) = priority(&agg, now_ms);
            if score.to_bits() != old_score.to_bits() || level != old_level {
                changed.push((agg.task_id, score, level));
            }
        }
        // Recency is not an edit of the Task: updated_at_ms is left alone.
        let per = rows_per_statement(widest(
            &changed,
            |(_, _, level)| level.len(),
            2 * NUM + PARAM_OVERHEAD,
        ));
        for chunk in changed.chunks(per) {
            let mut qb =
                QueryBuilder::<DB>::new("WITH v (id, priority_score, priority_level) AS (");
            qb.push_values(chunk, |mut row, (id, score, level)| {
                row.push_bind(*id)
                    .push_bind(*score)
                    .push_bind(level.as_str());
            });
            qb.push(
                ") UPDATE tasks SET priority_score = v.priority_score, \
                 priority_level = v.priority_level FROM v WHERE tasks.team_id = ",
            );
            qb.push_bind(team).push(" AND tasks.id = v.id");
            qb.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(changed.len())
    }

    pub(super) async fn update_label(
        &self,
        team: i64,
        id: i64,
        label: &crate::labeling::Label,
        now_ms: i64,
    ) -> Result<bool> {
        let res = sqlx::query(
            "UPDATE tasks SET title = $1, description = $2, label_source = $3, actionable = $4, \
             updated_at_ms = $5 WHERE team_id = $6 AND id = $7",
        )
        .bind(label.title.as_str())
        .bind(label.description.as_str())
        .bind(label.source.as_str())
        .bind(label.actionable)
        .bind(now_ms)
        .bind(team)
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(res.affected() == 1)
    }
}

/// Writes the batch's run row inside its transaction. The figures only the commit knows (Tasks
/// created and updated, links, commit time up to here) come from `summary` and `started`.
async fn insert_run<DB>(
    tx: &mut sqlx::Transaction<'_, DB>,
    team: i64,
    now: i64,
    run: &RunRecord,
    summary: &CommitSummary,
    started: std::time::Instant,
) -> Result<()>
where
    DB: Database,
    DB::Arguments: IntoArguments<DB>,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    i64: for<'q> Encode<'q, DB> + Type<DB>,
    f64: for<'q> Encode<'q, DB> + Type<DB>,
    String: for<'q> Encode<'q, DB> + Type<DB>,
{
    let map: Vec<StoredMapPoint> = run
        .map
        .iter()
        .map(|p| StoredMapPoint {
            x: p.x,
            y: p.y,
            cluster: p.cluster,
            task_id: match p.task {
                Some(TaskRef::Existing(id)) => Some(id),
                Some(TaskRef::New(i)) => summary.new_task_ids.get(i).copied().flatten(),
                None => None,
            },
        })
        .collect();
    let reasons: serde_json::Map<String, serde_json::Value> = run
        .quarantine_reasons
        .iter()
        .map(|(k, v)| (k.clone(), (*v).into()))
        .collect();
    let f = &run.figures;
    let created = i64::try_from(summary.tasks_created).unwrap_or(i64::MAX);
    let updated = i64::try_from(summary.tasks_updated).unwrap_or(i64::MAX);
    let links = i64::try_from(summary.links_inserted).unwrap_or(i64::MAX);
    let commit_s = started.elapsed().as_secs_f64();
    let reasons = serde_json::Value::Object(reasons).to_string();
    let map = map_to_json(&map);
    let mut qb = QueryBuilder::<DB>::new(
        "INSERT INTO runs (team_id, started_at_ms, finished_at_ms, now_ms, segments_read, \
         already_linked, carried_over, quarantined, clustered, clusters, noise, rescued, \
         tasks_created, tasks_updated, links, read_s, numeric_s, label_s, commit_s, \
         quarantine_reasons, map, match_s) ",
    );
    qb.push_values(std::iter::once(()), |mut row, ()| {
        row.push_bind(team)
            .push_bind(run.started_at_ms)
            .push_bind(chrono::Utc::now().timestamp_millis())
            .push_bind(now)
            .push_bind(f.segments_read)
            .push_bind(f.already_linked)
            .push_bind(f.carried_over)
            .push_bind(f.quarantined)
            .push_bind(f.clustered)
            .push_bind(f.clusters)
            .push_bind(f.noise)
            .push_bind(f.rescued)
            .push_bind(created)
            .push_bind(updated)
            .push_bind(links)
            .push_bind(f.read_s)
            .push_bind(f.numeric_s)
            .push_bind(f.label_s)
            .push_bind(commit_s)
            .push_bind(reasons.clone())
            .push_bind(map.clone())
            .push_bind(f.match_s);
    });
    qb.build()
        .execute(&mut **tx)
        .await
        .context("recording the batch's run")?;
    Ok(())
}

/// `[[x, y, cluster, task_id|null], ...]` with coordinates at 4 decimals: a 5,000-point map stays
/// near 150 KB.
fn map_to_json(points: &[StoredMapPoint]) -> String {
    let rows: Vec<serde_json::Value> = points
        .iter()
        .map(|p| {
            let round = |v: f32| (f64::from(v) * 1e4).round() / 1e4;
            serde_json::json!([round(p.x), round(p.y), p.cluster, p.task_id])
        })
        .collect();
    serde_json::Value::Array(rows).to_string()
}

fn run_from_row<DB>(r: &DB::Row) -> Result<Run>
where
    DB: Database,
    usize: ColumnIndex<DB::Row>,
    i64: for<'r> Decode<'r, DB> + Type<DB>,
    f64: for<'r> Decode<'r, DB> + Type<DB>,
    String: for<'r> Decode<'r, DB> + Type<DB>,
{
    let id: i64 = r.try_get(0)?;
    let reasons: String = r.try_get(20)?;
    let reasons: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&reasons)
        .with_context(|| format!("run {id}: quarantine_reasons is not a JSON object"))?;
    let mut quarantine_reasons: Vec<(String, i64)> = reasons
        .into_iter()
        .map(|(k, v)| (k, v.as_i64().unwrap_or(0)))
        .collect();
    quarantine_reasons.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let map: String = r.try_get(21)?;
    let map: Vec<(f32, f32, i32, Option<i64>)> = serde_json::from_str(&map)
        .with_context(|| format!("run {id}: map is not a JSON array of [x, y, cluster, task]"))?;
    Ok(Run {
        id,
        team_id: r.try_get(1)?,
        started_at_ms: r.try_get(2)?,
        finished_at_ms: r.try_get(3)?,
        now_ms: r.try_get(4)?,
        figures: RunFigures {
            segments_read: r.try_get(5)?,
            already_linked: r.try_get(6)?,
            carried_over: r.try_get(7)?,
            quarantined: r.try_get(8)?,
            clustered: r.try_get(9)?,
            clusters: r.try_get(10)?,
            noise: r.try_get(11)?,
            rescued: r.try_get(12)?,
            tasks_created: r.try_get(13)?,
            tasks_updated: r.try_get(14)?,
            links: r.try_get(15)?,
            read_s: r.try_get(16)?,
            numeric_s: r.try_get(17)?,
            label_s: r.try_get(18)?,
            commit_s: r.try_get(19)?,
            match_s: r.try_get(22)?,
        },
        quarantine_reasons,
        map: map
            .into_iter()
            .map(|(x, y, cluster, task_id)| StoredMapPoint {
                x,
                y,
                cluster,
                task_id,
            })
            .collect(),
    })
}

fn task_from_row<DB>(r: &DB::Row) -> Result<Task>
where
    DB: Database,
    usize: ColumnIndex<DB::Row>,
    i64: for<'r> Decode<'r, DB> + Type<DB>,
    f64: for<'r> Decode<'r, DB> + Type<DB>,
    String: for<'r> Decode<'r, DB> + Type<DB>,
    Vec<u8>: for<'r> Decode<'r, DB> + Type<DB>,
    Option<bool>: for<'r> Decode<'r, DB> + Type<DB>,
{
    let id: i64 = r.try_get(0)?;
    let label: String = r.try_get(4)?;
    let centroid: Vec<u8> = r.try_get(13)?;
    Ok(Task {
        id,
        team_id: r.try_get(1)?,
        title: r.try_get(2)?,
        description: r.try_get(3)?,
        label_source: label.parse().with_context(|| format!("task {id}"))?,
        actionable: r.try_get(17)?,
        priority_score: r.try_get(5)?,
        priority_level: r.try_get(6)?,
        impact: r.try_get(7)?,
        segment_count: r.try_get(8)?,
        occurrence_count: r.try_get(9)?,
        distinct_user_count: r.try_get(10)?,
        first_seen_ms: r.try_get(11)?,
        last_seen_ms: r.try_get(12)?,
        centroid: centroid_from_bytes(&centroid).with_context(|| format!("task {id}"))?,
        centroid_weight: r.try_get(14)?,
        created_at_ms: r.try_get(15)?,
        updated_at_ms: r.try_get(16)?,
    })
}

impl Repo<sqlx::Sqlite> {
    /// Which of `ids` the team already links to a Task: `IN (...)` lists of bound values, in
    /// statements of `STATEMENT_BYTES` (SQLite has no array parameter).
    pub(super) async fn linked_ids(&self, team: i64, ids: &[String]) -> Result<HashSet<String>> {
        self.linked_ids_in_chunks(team, ids).await
    }
}

impl Repo<sqlx::Postgres> {
    /// Which of `ids` the team already links to a Task, in one statement with the ids as one
    /// `text[]` parameter. With chunked `IN (...)` lists of a few hundred binds, the lookup for
    /// a 15,000-id batch grew from 4 s to 50 s as a 200k backfill filled the table, although
    /// each chunk ran in about a millisecond in psql; with this statement the whole backfill's
    /// reads took 73 s instead of 357 s, flat per batch (BENCHMARKS.md, "Backfill").
    pub(super) async fn linked_ids(&self, team: i64, ids: &[String]) -> Result<HashSet<String>> {
        if ids.is_empty() {
            return Ok(HashSet::new());
        }
        let rows = sqlx::query(
            "SELECT document_id FROM task_segment_links \
             WHERE team_id = $1 AND document_id = ANY($2)",
        )
        .bind(team)
        .bind(ids)
        .fetch_all(&self.pool)
        .await
        .context("looking up linked segments")?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statements_stay_within_one_tls_record_and_the_bind_limits() {
        assert_eq!(rows_per_statement(0), MAX_ROWS);
        assert_eq!(
            rows_per_statement(STATEMENT_BYTES * 3),
            1,
            "a huge row still goes alone"
        );
        let link_row = widest(
            &["a".repeat(40)],
            |d| 3 * d.len(),
            6 * NUM + 3 * PARAM_OVERHEAD,
        );
        let rows = rows_per_statement(link_row);
        assert!(rows * link_row <= STATEMENT_BYTES && (rows + 1) * link_row > STATEMENT_BYTES);
    }
}
