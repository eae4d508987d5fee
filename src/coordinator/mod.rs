//! Many teams: which teams to run, how many at once, one worker per team, and what to do when
//! a team fails or the process is asked to stop.
//!
//! A round runs every enabled team once, `concurrency` at a time. Each team is processed under
//! its lock (`Store::try_lock_team`); a team another worker holds is skipped, not waited for.
//! A failing team is logged and counted and the others go on; its failed batch committed
//! nothing, so its watermark stays where it was. On SIGTERM/SIGINT no new team or batch
//! starts; batches in hand finish within the grace period or are abandoned before their
//! commit (the commit is one transaction, so abandoning it leaves nothing half-written).
//!
//! `cmd.rs` holds the `run`, `schedule`, `backfill` and `config` commands built on this.

pub mod cmd;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Result;
use tokio::task::JoinSet;
use tracing::Instrument;

use crate::config::TeamsConfig;
use crate::device::Device;
use crate::labeling::ConfiguredLabeler;
use crate::labeling::relabel::relabel_team;
use crate::metrics::Metrics;
use crate::pipeline::{BatchReport, PipelineConfig, TeamRun, run_team_with};
use crate::source::Source;
use crate::store::Store;

/// Set when the process is asked to stop; checked before every team and every batch.
#[derive(Clone, Debug, Default)]
pub struct Shutdown(Arc<AtomicBool>);

impl Shutdown {
    pub fn requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    pub fn request(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn flag(&self) -> &AtomicBool {
        &self.0
    }

    /// Sets the flag on SIGTERM or SIGINT (Ctrl-C). A second signal is left to its default
    /// action only after the grace period: the round then abandons what is in hand.
    pub fn on_signals(&self) -> Result<()> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        let me = self.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => tracing::warn!("SIGTERM: finishing the batches in hand, starting nothing new"),
                _ = int.recv() => tracing::warn!("SIGINT: finishing the batches in hand, starting nothing new"),
            }
            me.request();
        });
        Ok(())
    }
}

/// How one team's turn in a round ended.
#[derive(Debug)]
pub enum TeamOutcome {
    /// Caught up (or reached the end of the window); one report per committed batch.
    Done(Vec<BatchReport>),
    /// Another worker holds the team's lock.
    Locked,
    /// Failed after retries; batches before the failing one stay committed.
    Failed {
        reports: Vec<BatchReport>,
        error: String,
    },
    /// Stopped by shutdown before or between batches, or abandoned mid-batch after the grace
    /// period (nothing of that batch was committed).
    Stopped(Vec<BatchReport>),
}

impl TeamOutcome {
    pub fn reports(&self) -> &[BatchReport] {
        match self {
            TeamOutcome::Done(r) | TeamOutcome::Stopped(r) => r,
            TeamOutcome::Failed { reports, .. } => reports,
            TeamOutcome::Locked => &[],
        }
    }
}

/// Everything a round needs; shared by the concurrent teams.
pub struct Coordinator {
    pub source: Arc<Source>,
    pub store: Store,
    pub device: Arc<Device>,
    pub labeler: Arc<ConfiguredLabeler>,
    pub pipeline: PipelineConfig,
    pub concurrency: usize,
    pub lock: bool,
    pub metrics: Arc<Metrics>,
    pub shutdown: Shutdown,
    /// How long batches in hand may run on after shutdown was requested.
    pub grace: Duration,
    /// Advanced by every committed batch's segments (backfill).
    pub progress: Option<indicatif::ProgressBar>,
}

impl Coordinator {
    /// The enabled teams: the configured list, the configured store query, or every team the
    /// source has.
    pub async fn enabled_teams(&self, teams: &TeamsConfig) -> Result<Vec<i64>> {
        if let Some(list) = &teams.list {
            let mut l = list.clone();
            l.sort_unstable();
            l.dedup();
            return Ok(l);
        }
        if let Some(q) = &teams.query {
            return self.store.query_team_ids(q).await;
        }
        self.source.teams().await
    }

    /// Runs `teams` once each, at most `concurrency` at a time, in the given order of start.
    pub async fn round(self: &Arc<Self>, teams: &[i64], now_ms: i64) -> Vec<(i64, TeamOutcome)> {
        let sem = Arc::new(tokio::sync::Semaphore::new(self.concurrency.max(1)));
        let mut set = JoinSet::new();
        for (i, &team) in teams.iter().enumerate() {
            let me = Arc::clone(self);
            let sem = Arc::clone(&sem);
            set.spawn(async move {
                let _permit = sem.acquire_owned().await;
                let outcome = if me.shutdown.requested() {
                    TeamOutcome::Stopped(Vec::new())
                } else {
                    me.team(team, now_ms).await
                };
                (i, team, outcome)
            });
        }
        let mut results = Vec::with_capacity(teams.len());
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok(r) => results.push(r),
                Err(e) => tracing::error!("a team task panicked or was cancelled: {e}"),
            }
        }
        results.sort_by_key(|r| r.0);
        self.metrics.set_gpu(self.device.figures());
        if let Some(s) = self.labeler.stats() {
            for (name, help, v) in [
                (
                    "segclust_llm_requests_total",
                    "LLM HTTP requests sent.",
                    s.requests,
                ),
                (
                    "segclust_llm_failures_total",
                    "LLM attempts that gave no valid label.",
                    s.failures,
                ),
                (
                    "segclust_llm_retries_total",
                    "LLM attempts after the first for a Task.",
                    s.retries,
                ),
                (
                    "segclust_llm_fallbacks_total",
                    "New Tasks that got the fallback label.",
                    s.fallbacks,
                ),
                (
                    "segclust_llm_prompt_tokens_total",
                    "Prompt tokens reported by the LLM.",
                    s.prompt_tokens,
                ),
                (
                    "segclust_llm_completion_tokens_total",
                    "Completion tokens reported by the LLM.",
                    s.completion_tokens,
                ),
            ] {
                self.metrics.set_extra(name, help, v as f64);
            }
        }
        if let Err(e) = self.metrics.write() {
            tracing::warn!("{e:#}");
        }
        results.into_iter().map(|(_, t, o)| (t, o)).collect()
    }

    /// One team under its lock.
    pub async fn team(&self, team: i64, now_ms: i64) -> TeamOutcome {
        let span = tracing::info_span!("team", team);
        async {
            let lock = if self.lock {
                match self.store.try_lock_team(team).await {
                    Ok(Some(l)) => Some(l),
                    Ok(None) => {
                        tracing::info!("another worker holds this team; skipping it");
                        self.metrics.team_skipped(team);
                        return TeamOutcome::Locked;
                    }
                    Err(e) => {
                        tracing::error!("cannot lock the team: {e:#}");
                        self.metrics.team_failed(team);
                        return TeamOutcome::Failed {
                            reports: Vec::new(),
                            error: format!("{e:#}"),
                        };
                    }
                }
            } else {
                None
            };
            let outcome = self.team_locked(team, now_ms).await;
            if let Some(l) = lock {
                l.release().await;
            }
            for r in outcome.reports() {
                self.metrics.batch(r);
            }
            match &outcome {
                TeamOutcome::Done(_) => self.metrics.team_succeeded(team),
                TeamOutcome::Failed { error, .. } => {
                    tracing::error!("team failed; its watermark is where the last committed batch left it: {error}");
                    self.metrics.team_failed(team);
                }
                _ => {}
            }
            // A long backfill or a big team can take a while: the GPU's state goes out with
            // every team's figures, not only at the end of the round.
            self.metrics.set_gpu(self.device.figures());
            if let Err(e) = self.metrics.write() {
                tracing::warn!("{e:#}");
            }
            outcome
        }
        .instrument(span)
        .await
    }

    async fn team_locked(&self, team: i64, now_ms: i64) -> TeamOutcome {
        if self.labeler.is_llm() {
            // Fallback labels of earlier runs (LLM down or failing then) get their LLM label now.
            match relabel_team(
                Some(&self.source),
                &self.store,
                self.labeler.as_ref(),
                team,
                true,
                now_ms,
            )
            .await
            {
                Ok(r) if r.relabelled > 0 => {
                    tracing::info!("{} fallback labels replaced", r.relabelled)
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("relabelling fallback labels failed: {e:#}"),
            }
        }
        let committed = std::sync::Mutex::new(Vec::new());
        let on_batch = |r: &BatchReport| {
            if let Some(p) = &self.progress {
                p.inc(r.segments_read as u64);
            }
            committed
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(r.clone());
        };
        let run = TeamRun {
            team,
            now_ms,
            stop: self.shutdown.flag(),
            on_batch: &on_batch,
        };
        let mut fut = Box::pin(run_team_with(
            &self.source,
            &self.store,
            &self.device,
            self.labeler.as_ref(),
            &self.pipeline,
            run,
        ));
        // Run until done; once shutdown is requested, allow `grace` more, then drop the future
        // (abandoning an uncommitted batch; its transaction, if open, rolls back).
        let result = loop {
            tokio::select! {
                r = &mut fut => break Some(r),
                _ = tokio::time::sleep(Duration::from_millis(200)), if !self.shutdown.requested() => {}
                _ = tokio::time::sleep(self.grace), if self.shutdown.requested() => break None,
            }
        };
        drop(fut);
        let reports = committed.into_inner().unwrap_or_else(|p| p.into_inner());
        match result {
            Some(Ok(_)) if self.shutdown.requested() => TeamOutcome::Stopped(reports),
            Some(Ok(_)) => TeamOutcome::Done(reports),
            Some(Err(e)) => TeamOutcome::Failed {
                reports,
                error: format!("{e:#}"),
            },
            None => {
                tracing::warn!(
                    "grace period over: abandoning the batch in hand (nothing of it is committed)"
                );
                TeamOutcome::Stopped(reports)
            }
        }
    }
}
