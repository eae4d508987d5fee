//! The commands that process teams: `run`, `schedule`, `backfill`, `demo`, and `config`.
//!
//! Each builds one [`Config`] (defaults < `--config` file < `SEGCLUST__*` env < flags given on
//! the command line), then a [`Coordinator`] from it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{ArgMatches, Args, Subcommand};

use super::{Coordinator, Shutdown, TeamOutcome};
use crate::config::{Config, SourceKind};
use crate::device::Device;
use crate::labeling::{ConfiguredLabeler, LlmArgs};
use crate::metrics::Metrics;
use crate::pipeline::{BatchReport, PipelineArgs};
use crate::segment::Watermark;
use crate::source::Source;
use crate::store::Store;

/// Where to read, where to write, and the constants: shared by run, schedule, backfill.
#[derive(Args, Debug, Clone)]
pub struct SetupArgs {
    /// Configuration file (TOML): every constant, the source, the store, the teams. See
    /// segclust.example.toml; flags given here override it.
    #[arg(long, env = "SEGCLUST_CONFIG")]
    pub config: Option<PathBuf>,
    /// Segments file (.parquet or .jsonl) to read new segments from [config: source.path].
    #[arg(long, env = "SEGCLUST_SOURCE")]
    pub source: Option<PathBuf>,
    /// Read segments from ClickHouse at this HTTP URL instead of a file [config:
    /// source.clickhouse.url]; the password comes from SEGCLUST_CLICKHOUSE_PASSWORD.
    #[arg(long, env = "SEGCLUST_CLICKHOUSE_URL", conflicts_with = "source")]
    pub clickhouse: Option<String>,
    /// Where Tasks live: sqlite://PATH or postgres://USER@HOST/DB [config: store.url; default
    /// sqlite://segclust.db].
    #[arg(long, env = "SEGCLUST_STORE")]
    pub store: Option<String>,
    /// Write Prometheus text-format metrics to this file [config: metrics.file].
    #[arg(long, env = "SEGCLUST_METRICS_FILE")]
    pub metrics_file: Option<PathBuf>,
    /// Teams processed at once [config: coordinator.concurrency; default 2].
    #[arg(long)]
    pub concurrency: Option<usize>,
    /// Do not take per-team locks (only for experiments: two workers could then process one
    /// team at the same time).
    #[arg(long)]
    pub no_lock: bool,
    /// Seconds batches in hand may run on after SIGTERM before they are abandoned (nothing of
    /// an abandoned batch is committed).
    #[arg(long, default_value_t = 60.0, value_parser = grace_seconds)]
    pub grace_s: f64,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    #[command(flatten)]
    pub llm: LlmArgs,
}

/// `--grace-s`: refused at parse time unless it is a usable number of seconds.
fn grace_seconds(s: &str) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|e| format!("{e}"))?;
    match crate::config::seconds(v) {
        Some(_) => Ok(v),
        None => Err(format!("{v} is not 0 or more seconds, at most ten years")),
    }
}

impl SetupArgs {
    /// `--grace-s` as a duration (its parser already refused what `seconds` cannot hold).
    fn grace(&self) -> Duration {
        crate::config::seconds(self.grace_s).unwrap_or_default()
    }

    /// The merged configuration. `m` are this command's parsed arguments, used to tell a flag
    /// given on the command line (which wins over the file) from its default (which does not).
    pub fn config(&self, m: &ArgMatches) -> Result<Config> {
        crate::failpoint::check()?;
        let mut cfg = Config::load(self.config.as_deref())?;
        if let Some(p) = &self.source {
            cfg.source.kind = SourceKind::File;
            cfg.source.path = p.clone();
        }
        if let Some(u) = &self.clickhouse {
            cfg.source.kind = SourceKind::Clickhouse;
            cfg.source.clickhouse.url = u.clone();
        }
        if let Some(s) = &self.store {
            cfg.store.url = s.clone();
        }
        if let Some(f) = &self.metrics_file {
            cfg.metrics.file = Some(f.clone());
        }
        if let Some(c) = self.concurrency {
            cfg.coordinator.concurrency = c;
        }
        if self.no_lock {
            cfg.coordinator.lock = false;
        }
        self.pipeline.apply(&mut cfg, m);
        apply_llm_flags(&self.llm, &mut cfg, m);
        let problems = cfg.problems();
        if let Some((key, why)) = problems.first() {
            bail!("invalid setting {key}: {why}");
        }
        Ok(cfg)
    }
}

/// LLM flags given on the command line (or by env) win over the file's `[llm]`; the key always
/// comes from the environment.
fn apply_llm_flags(a: &LlmArgs, cfg: &mut Config, m: &ArgMatches) {
    let given = |id: &str| crate::config::given_on_command_line(m, id);
    let flags = a.config();
    let l = &mut cfg.llm;
    if given("llm_base_url") {
        l.base_url = flags.base_url;
    }
    if given("llm_model") {
        l.model = flags.model;
    }
    if given("llm_concurrency") {
        l.concurrency = flags.concurrency;
    }
    if given("llm_timeout_secs") {
        l.timeout_secs = flags.timeout_secs;
    }
    if given("llm_max_attempts") {
        l.max_attempts = flags.max_attempts;
    }
    if given("llm_response_format") {
        l.response_format = flags.response_format;
    }
    l.api_key = flags.api_key;
}

/// Opens the source, store and device and builds the coordinator.
pub async fn coordinator(
    cfg: &Config,
    default_team: i64,
    grace: Duration,
    shutdown: Shutdown,
) -> Result<Arc<Coordinator>> {
    let source = Arc::new(match cfg.source.kind {
        SourceKind::File => Source::open_file(&cfg.source.path, default_team)?,
        SourceKind::Clickhouse => Source::clickhouse(cfg.source.clickhouse.clone())?,
    });
    let url = cfg.store.url.clone();
    let store = cfg
        .store
        .retry
        .run(
            &format!("connecting to the store {}", crate::store::redact_url(&url)),
            || Store::connect(&url),
        )
        .await?
        .with_retry(cfg.store.retry.clone());
    let device = Arc::new(Device::open(
        cfg.clustering.device,
        &cfg.clustering.gpu_options(),
    )?);
    tracing::info!(
        source = %source.describe(),
        store = %crate::store::redact_url(&cfg.store.url),
        device = %device.name(),
        "ready"
    );
    Ok(Arc::new(Coordinator {
        source,
        store,
        device,
        labeler: Arc::new(ConfiguredLabeler::from_config(&cfg.llm)?),
        pipeline: cfg.pipeline(),
        concurrency: cfg.coordinator.concurrency,
        lock: cfg.coordinator.lock,
        metrics: Arc::new(Metrics::new(cfg.metrics.file.clone())),
        shutdown,
        grace,
        progress: None,
    }))
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub setup: SetupArgs,
    /// Team to process (also the team of file rows without team_id).
    #[arg(long, default_value_t = 1)]
    pub team: i64,
    /// Process every enabled team (config `[teams]`: a list, a SQL query against the store,
    /// or by default every team the source has).
    #[arg(long)]
    pub all_teams: bool,
}

pub async fn run_cmd(a: RunArgs, m: &ArgMatches) -> Result<ExitCode> {
    let cfg = a.setup.config(m)?;
    let shutdown = Shutdown::default();
    shutdown.on_signals()?;
    let grace = a.setup.grace();
    let c = coordinator(&cfg, a.team, grace, shutdown).await?;
    let teams = if a.all_teams {
        c.enabled_teams(&cfg.teams).await?
    } else {
        vec![a.team]
    };
    let now = a.setup.pipeline.now_ms();
    let started = Instant::now();
    let outcomes = c.round(&teams, now).await;
    c.labeler.log_stats();
    c.metrics.run_finished(
        chrono::Utc::now().timestamp_millis() as f64 / 1000.0,
        started.elapsed().as_secs_f64(),
    );
    if let Err(e) = c.metrics.write() {
        tracing::warn!("{e:#}");
    }
    Ok(print_outcomes(&outcomes))
}

/// One line per team and batch; the exit code says whether any team failed.
fn print_outcomes(outcomes: &[(i64, TeamOutcome)]) -> ExitCode {
    let mut failed = Vec::new();
    for (team, o) in outcomes {
        print_reports(*team, o.reports());
        match o {
            TeamOutcome::Done(r) if r.is_empty() => {
                println!("team {team}: nothing new after the watermark")
            }
            TeamOutcome::Done(_) => {}
            TeamOutcome::Locked => println!("team {team}: skipped, another worker holds it"),
            TeamOutcome::Stopped(_) => {
                println!(
                    "team {team}: stopped by a shutdown request; the next run goes on from its watermark"
                )
            }
            TeamOutcome::Failed { error, .. } => {
                println!("team {team}: FAILED: {error}");
                failed.push(*team);
            }
        }
    }
    if failed.is_empty() {
        ExitCode::SUCCESS
    } else {
        tracing::error!(?failed, "{} team(s) failed", failed.len());
        ExitCode::FAILURE
    }
}

fn print_reports(team: i64, reports: &[BatchReport]) {
    for r in reports {
        println!(
            "team {team}: {} segments read ({} carried over{}, {} quarantined), {} clusters, {} noise ({} rescued) -> {} Tasks created, {} updated, {} links  [read {:.2}s, numeric {:.2}s, match {:.2}s, labels {:.2}s, commit {:.2}s]",
            r.segments_read,
            r.carried_over,
            if r.carry_over_left_out > 0 {
                format!(", {} more left out", r.carry_over_left_out)
            } else {
                String::new()
            },
            r.quarantined,
            r.clusters,
            r.noise,
            r.rescued,
            r.tasks_created,
            r.tasks_updated,
            r.links,
            r.read_s,
            r.numeric_s,
            r.match_s,
            r.label_s,
            r.commit_s
        );
    }
}

#[derive(Args, Debug)]
pub struct ScheduleArgs {
    #[command(flatten)]
    pub setup: SetupArgs,
    /// Time between the starts of two rounds, e.g. 30m, 1h [config: coordinator.interval].
    #[arg(long)]
    pub interval: Option<String>,
    /// Stop after this many rounds (default: until SIGTERM).
    #[arg(long)]
    pub rounds: Option<u64>,
}

pub async fn schedule_cmd(a: ScheduleArgs, m: &ArgMatches) -> Result<ExitCode> {
    let mut cfg = a.setup.config(m)?;
    if let Some(i) = &a.interval {
        cfg.coordinator.interval = i.clone();
    }
    let interval = cfg.interval()?;
    let shutdown = Shutdown::default();
    shutdown.on_signals()?;
    let grace = a.setup.grace();
    let c = coordinator(&cfg, 1, grace, shutdown.clone()).await?;
    let mut round = 0u64;
    let mut any_failed = false;
    while !shutdown.requested() && a.rounds.is_none_or(|n| round < n) {
        round += 1;
        let started = Instant::now();
        let teams = match c.enabled_teams(&cfg.teams).await {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(
                    round,
                    "cannot list the enabled teams, retrying next round: {e:#}"
                );
                Vec::new()
            }
        };
        tracing::info!(round, teams = teams.len(), "round starts");
        let now = chrono::Utc::now().timestamp_millis();
        let outcomes = c.round(&teams, now).await;
        any_failed |= print_outcomes(&outcomes) != ExitCode::SUCCESS;
        c.metrics.run_finished(
            chrono::Utc::now().timestamp_millis() as f64 / 1000.0,
            started.elapsed().as_secs_f64(),
        );
        if let Err(e) = c.metrics.write() {
            tracing::warn!("{e:#}");
        }
        if a.rounds.is_some_and(|n| round >= n) {
            break;
        }
        let next = started + interval;
        tracing::info!(
            in_s = next.saturating_duration_since(Instant::now()).as_secs(),
            "next round"
        );
        while Instant::now() < next && !shutdown.requested() {
            tokio::time::sleep(Duration::from_millis(200).min(next - Instant::now().min(next)))
                .await;
        }
    }
    c.labeler.log_stats();
    tracing::info!(rounds = round, "schedule stopped");
    Ok(if any_failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[derive(Args, Debug)]
pub struct BackfillArgs {
    #[command(flatten)]
    pub setup: SetupArgs,
    /// The team to backfill.
    #[arg(long)]
    pub team: i64,
    /// Start of history to process (RFC 3339, YYYY-MM-DD, or epoch milliseconds); rows inserted
    /// before it are left alone. Default: the team's watermark, or the beginning.
    #[arg(long)]
    pub from: Option<String>,
    /// End of history to process (exclusive; same formats). Default: now.
    #[arg(long)]
    pub to: Option<String>,
    /// Window length, e.g. 1d, 6h [config: coordinator.backfill_window]. Each window is
    /// processed as if the job ran at its end (carry-over and recency relative to it).
    #[arg(long)]
    pub window: Option<String>,
}

pub async fn backfill_cmd(a: BackfillArgs, m: &ArgMatches) -> Result<ExitCode> {
    let mut cfg = a.setup.config(m)?;
    if let Some(w) = &a.window {
        cfg.coordinator.backfill_window = w.clone();
    }
    let window_ms = i64::try_from(cfg.backfill_window()?.as_millis()).unwrap_or(i64::MAX);
    let from_ms = a.from.as_deref().map(parse_time).transpose()?;
    let to_ms = match a.to.as_deref() {
        Some(t) => parse_time(t)?,
        None => chrono::Utc::now().timestamp_millis(),
    };
    let shutdown = Shutdown::default();
    shutdown.on_signals()?;
    let grace = a.setup.grace();
    let c = coordinator(&cfg, a.team, grace, shutdown.clone()).await?;
    let team = a.team;

    // Where history starts for this team: after its watermark, and not before --from.
    let watermark = c.store.watermark(team).await?;
    let floor = from_ms.map(|f| Watermark {
        inserted_at_ms: f,
        document_id: String::new(),
    });
    let after = match (watermark, floor) {
        (Some(w), Some(f)) => Some(w.max(f)),
        (w, f) => w.or(f),
    };
    let total = c.source.count(team, after.as_ref(), Some(to_ms)).await?;
    let start_ms = after.as_ref().map_or(i64::MIN, |w| w.inserted_at_ms);
    tracing::info!(team, total, "backfill: {total} segments to process");
    let bar = indicatif::ProgressBar::new(total).with_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} team {msg} [{elapsed_precise}] {wide_bar} {pos}/{len} segments ({per_sec}, eta {eta})",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(team.to_string());
    let mut c = Arc::into_inner(c).context("coordinator still shared")?;
    c.progress = Some(bar.clone());
    c.pipeline.from_ms = from_ms;
    let mut c = Arc::new(c);

    // Windows end at multiples of the window length after the first row, up to --to.
    let first = if start_ms == i64::MIN {
        first_row_ms(&c.source, team, from_ms, to_ms).await?
    } else {
        Some(start_ms)
    };
    let mut failed = false;
    let mut windows = 0;
    if let Some(first) = first {
        let mut end = first.saturating_add(window_ms).min(to_ms);
        loop {
            windows += 1;
            let mut inner = Arc::into_inner(c).context("coordinator still shared")?;
            inner.pipeline.until_ms = Some(end);
            c = Arc::new(inner);
            let outcome = c.team(team, end).await;
            print_reports(team, outcome.reports());
            match outcome {
                TeamOutcome::Done(_) => {}
                TeamOutcome::Locked => {
                    bar.abandon_with_message(format!("{team}: another worker holds this team"));
                    bail!("team {team} is locked by another worker; try again later");
                }
                TeamOutcome::Stopped(_) => {
                    bar.abandon_with_message(format!("{team}: stopped"));
                    println!(
                        "backfill of team {team} stopped; rerun the same command to resume from the watermark"
                    );
                    return Ok(ExitCode::SUCCESS);
                }
                TeamOutcome::Failed { error, .. } => {
                    println!(
                        "backfill of team {team} FAILED in the window ending {}: {error}",
                        fmt_ms(end)
                    );
                    failed = true;
                    break;
                }
            }
            if end >= to_ms {
                break;
            }
            end = end.saturating_add(window_ms).min(to_ms);
        }
    }
    bar.finish();
    let f = c.metrics.team(team);
    println!(
        "backfill of team {team}: {} windows, {} batches, {} segments, {} Tasks created, {} updated, {} links  [read {:.1}s, numeric {:.1}s, match {:.1}s, labels {:.1}s, commit {:.1}s]",
        windows,
        f.batches,
        f.segments_read,
        f.tasks_created,
        f.tasks_updated,
        f.links,
        f.read_s,
        f.numeric_s,
        f.match_s,
        f.label_s,
        f.commit_s
    );
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// inserted_at of the team's first row in [from, to), if any.
async fn first_row_ms(
    source: &Source,
    team: i64,
    from_ms: Option<i64>,
    to_ms: i64,
) -> Result<Option<i64>> {
    let after = from_ms.map(|f| Watermark {
        inserted_at_ms: f,
        document_id: String::new(),
    });
    let page = source
        .read_after(team, after.as_ref(), Some(to_ms), 1)
        .await?;
    Ok(page
        .rows
        .first()
        .map(|r| r.inserted_at_ms)
        .or(page.last.map(|w| w.inserted_at_ms)))
}

/// RFC 3339, a date (UTC midnight), or epoch milliseconds.
pub fn parse_time(s: &str) -> Result<i64> {
    let s = s.trim();
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(ms);
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        && let Some(t) = d.and_hms_opt(0, 0, 0)
    {
        return Ok(t.and_utc().timestamp_millis());
    }
    bail!(
        "{s:?} is not a time: use RFC 3339 (2026-11-24T10:00:00Z), a date (2026-11-24) or epoch milliseconds"
    )
}

fn fmt_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(|| ms.to_string(), |t| t.to_rfc3339())
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Validate a configuration file and say what is wrong, with the key and its line.
    /// With --connect, also try what a run needs, as a run would: read the source's schema
    /// and teams (on ClickHouse: how each column is read, and whether a team's reads are
    /// served by the table's primary key), connect to the store (creating or migrating its
    /// tables), and open the device. Exit status 1 when anything fails; WARNING lines do not
    /// fail it. The LLM endpoint is named, not contacted (a request costs tokens).
    #[command(
        after_help = "Example:\n  SEGCLUST_CLICKHOUSE_PASSWORD=... segclust config check --config segclust.toml --connect"
    )]
    Check {
        /// The file to check.
        #[arg(long, env = "SEGCLUST_CONFIG")]
        config: PathBuf,
        /// Also connect to the source, the store and the device.
        #[arg(long)]
        connect: bool,
        /// With --connect: this segments file instead of the config's, as `run --source` reads.
        #[arg(long, env = "SEGCLUST_SOURCE")]
        source: Option<PathBuf>,
        /// With --connect: ClickHouse at this HTTP URL instead, as `run --clickhouse` reads.
        #[arg(long, env = "SEGCLUST_CLICKHOUSE_URL", conflicts_with = "source")]
        clickhouse: Option<String>,
        /// With --connect: this store instead of the config's, as `run --store` writes.
        #[arg(long, env = "SEGCLUST_STORE")]
        store: Option<String>,
    },
    /// Print the merged configuration (file + SEGCLUST__* overrides) as the job would use it.
    Show {
        #[arg(long, env = "SEGCLUST_CONFIG")]
        config: Option<PathBuf>,
    },
}

pub async fn config_cmd(c: ConfigCommand) -> Result<ExitCode> {
    match c {
        ConfigCommand::Check {
            config,
            connect,
            source,
            clickhouse,
            store,
        } => match Config::load(Some(&config)) {
            Ok(mut cfg) => {
                println!("{}: OK", config.display());
                // What `run` would use: its flags and their environment variables win.
                if let Some(p) = source {
                    cfg.source.kind = SourceKind::File;
                    cfg.source.path = p;
                }
                if let Some(u) = clickhouse {
                    cfg.source.kind = SourceKind::Clickhouse;
                    cfg.source.clickhouse.url = u;
                }
                if let Some(u) = store {
                    cfg.store.url = u;
                }
                if connect {
                    Ok(preflight(&cfg).await)
                } else {
                    Ok(ExitCode::SUCCESS)
                }
            }
            Err(e) => {
                println!("{e:#}");
                Ok(ExitCode::FAILURE)
            }
        },
        ConfigCommand::Show { config } => {
            let mut cfg = Config::load(config.as_deref())?;
            // The store URL may carry a password; the API key is never in `cfg` (env only).
            cfg.store.url = crate::store::redact_url(&cfg.store.url);
            println!("{cfg:#?}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `config check --connect`: everything a run opens, opened once, each failure said with what
/// to do. Each part is tried even when an earlier one failed, so one pass shows every problem.
async fn preflight(cfg: &Config) -> ExitCode {
    let mut failed = false;
    let mut fail = |what: &str, e: anyhow::Error| {
        failed = true;
        println!("FAIL {what}: {e:#}");
    };
    let source = match cfg.source.kind {
        SourceKind::File => Source::open_file(&cfg.source.path, 1),
        SourceKind::Clickhouse => Source::clickhouse(cfg.source.clickhouse.clone()),
    };
    match source {
        Ok(source) => match source.check().await {
            Ok(lines) => lines.iter().for_each(|l| println!("{l}")),
            Err(e) => fail("source", e),
        },
        Err(e) => fail("source", e),
    }
    let store_url = crate::store::redact_url(&cfg.store.url);
    match Store::connect(&cfg.store.url).await {
        Ok(store) => {
            println!("store {store_url}: connected, tables up to date");
            store.close().await;
        }
        Err(e) => fail("store", e),
    }
    let gpu = cfg.clustering.gpu_options();
    match Device::open(cfg.clustering.device, &gpu) {
        Ok(d) => println!("device: {}", d.name()),
        Err(e) => fail("device", e),
    }
    match gpu.kernel_cache.dir() {
        Some(dir) => println!("  kernel cache: {}", dir.display()),
        None => println!("  kernel cache: off (a GPU compiles its kernels at every start)"),
    }
    match &cfg.llm.base_url {
        Some(url) => println!(
            "labels: {url}, model {} (not contacted; a request costs tokens)",
            cfg.llm.model
        ),
        None => println!("labels: no LLM endpoint; new Tasks get the offline fallback label"),
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// The demo segments file; written first if it does not exist.
    #[arg(long, default_value = "demo-segments.parquet")]
    pub source: PathBuf,
    /// Store for the demo's Tasks.
    #[arg(long, default_value = "sqlite://segclust-demo.db")]
    pub store: String,
    /// Seed of the demo data.
    #[arg(long, default_value_t = 7)]
    pub demo_seed: u64,
    /// Segments in a new demo file (the same mix of problems and ordinary use at any size).
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub segments: u64,
    /// Also write the demo's ground truth here (JSON Lines: each segment's planted problem, or
    /// null for ordinary use), for `segclust evaluate`. Only with a new segments file.
    #[arg(long)]
    pub truth: Option<PathBuf>,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    #[command(flatten)]
    pub llm: LlmArgs,
}

pub async fn demo_cmd(a: DemoArgs, m: &ArgMatches) -> Result<ExitCode> {
    let team = 1;
    let now = a.pipeline.now_ms();
    if let Some(truth) = &a.truth
        && a.source.exists()
    {
        bail!(
            "--truth {} is written with a new segments file, and {} exists: remove it or pass \
             another --source",
            truth.display(),
            a.source.display()
        );
    }
    if !a.source.exists() {
        let p = crate::demo::DemoParams {
            seed: a.demo_seed,
            team_id: team,
            segments: a.segments as usize,
            ..Default::default()
        };
        let (rows, problems) = crate::demo::generate_with_truth(&p, now);
        crate::source::write_segments(&a.source, &rows)?;
        if let Some(truth) = &a.truth {
            write_truth(truth, &rows, &problems)?;
            println!("wrote the ground truth to {}", truth.display());
        }
        println!(
            "wrote {} demo segments to {}",
            rows.len(),
            a.source.display()
        );
    }
    let mut cfg = Config::load(None)?;
    cfg.source.path = a.source.clone();
    cfg.store.url = a.store.clone();
    a.pipeline.apply(&mut cfg, m);
    apply_llm_flags(&a.llm, &mut cfg, m);
    let c = coordinator(&cfg, team, Duration::from_secs(60), Shutdown::default()).await?;
    let outcomes = c.round(&[team], now).await;
    let code = print_outcomes(&outcomes);
    crate::tasks_cmd::list_cmd(crate::tasks_cmd::ListArgs::new(
        a.store,
        team,
        20,
        Some(now),
    ))
    .await?;
    Ok(code)
}

/// The demo's planted problem of every segment, by title, as `segclust evaluate` reads it.
fn write_truth(
    path: &Path,
    rows: &[crate::segment::RawSegment],
    problems: &[Option<usize>],
) -> Result<()> {
    use std::io::Write as _;
    let mut out = std::io::BufWriter::new(
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?,
    );
    for (r, p) in rows.iter().zip(problems) {
        let l = crate::evaluate::Labelled {
            document_id: r.document_id.clone(),
            problem: p.and_then(crate::demo::problem_title).map(str::to_string),
        };
        writeln!(out, "{}", serde_json::to_string(&l)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    out.flush()
        .with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(parse_time("1700000000000").unwrap(), 1_700_000_000_000);
        assert_eq!(parse_time("1970-01-02").unwrap(), 86_400_000);
        assert_eq!(parse_time("1970-01-01T00:00:01Z").unwrap(), 1000);
        assert!(parse_time("yesterday").is_err());
    }
}
