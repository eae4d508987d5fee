//! The configuration file: every constant of DESIGN.md, the source, the store, the teams and
//! the coordinator, in one TOML file (`--config segclust.toml`, env `SEGCLUST_CONFIG`).
//!
//! Precedence, lowest first: built-in defaults, the file, environment overrides
//! (`SEGCLUST__<SECTION>__<KEY>=value`, e.g. `SEGCLUST__CLUSTERING__MIN_SAMPLES=5`), then flags
//! given on the command line. `segclust config check` validates a file and says what is wrong
//! in plain words, with the key and its line; `segclust config show` prints the merged result.
//! `segclust.example.toml` at the repo root lists every key with its default.
//!
//! Secrets never live in the file: the store URL may be given by `SEGCLUST_STORE` and the
//! ClickHouse password is read from the variable named by `source.clickhouse.password_env`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::cluster::{HdbscanParams, Selection};
use crate::device::DeviceChoice;
use crate::impact::ImpactWeights;
use crate::pipeline::PipelineConfig;
use crate::priority::PriorityWeights;
use crate::reduce::PcaParams;
use crate::retry::RetryPolicy;
use crate::source::ClickHouseConfig;

/// Prefix of environment overrides; sections and keys are separated by `__`.
pub const ENV_PREFIX: &str = "SEGCLUST__";

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub source: SourceConfig,
    pub store: StoreConfig,
    pub teams: TeamsConfig,
    pub coordinator: CoordinatorConfig,
    pub clustering: ClusteringConfig,
    pub matching: MatchingConfig,
    pub impact: ImpactConfig,
    pub priority: PriorityConfig,
    pub metrics: MetricsConfig,
    /// The LLM endpoint (`[llm]`); the API key comes from the environment only.
    pub llm: crate::labeling::LlmConfig,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A local Parquet or JSON Lines segments file.
    #[default]
    File,
    /// ClickHouse `document_embeddings`.
    Clickhouse,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourceConfig {
    pub kind: SourceKind,
    /// The segments file, for `kind = "file"`.
    pub path: PathBuf,
    /// Page size: at most this many new segments a batch.
    pub batch_size: usize,
    pub clickhouse: ClickHouseConfig,
}

impl Default for SourceConfig {
    fn default() -> Self {
        Self {
            kind: SourceKind::File,
            path: "segments.parquet".into(),
            batch_size: 50_000,
            clickhouse: ClickHouseConfig::default(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite://PATH` or `postgres://USER@HOST/DB`; a password belongs in `SEGCLUST_STORE`.
    pub url: String,
    /// Deadlines and retries of store reads (the commit itself is never retried).
    pub retry: RetryPolicy,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: "sqlite://segclust.db".into(),
            retry: RetryPolicy::default(),
        }
    }
}

/// Which teams `run --all-teams`, `schedule` and friends process.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TeamsConfig {
    /// A fixed list of team ids.
    pub list: Option<Vec<i64>>,
    /// A SQL query against the store that returns one integer column of team ids.
    pub query: Option<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// Teams processed at once (their numeric cores still take turns on the GPU).
    pub concurrency: usize,
    /// Time between the starts of two `schedule` rounds, e.g. "30m", "1h", "90s".
    pub interval: String,
    /// Hold a per-team lock (PostgreSQL advisory lock; SQLite lock file) so that concurrent
    /// workers never process one team twice. Turn off only for experiments.
    pub lock: bool,
    /// Backfill window length, e.g. "1d".
    pub backfill_window: String,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        Self {
            concurrency: 2,
            interval: "30m".into(),
            lock: true,
            backfill_window: "1d".into(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusteringConfig {
    /// Embedding dimension every segment must have (0: the batch's most common dimension).
    pub dim: usize,
    /// PCA target dimension (capped at min(N-1, D)); 0 skips PCA.
    pub pca_components: usize,
    pub power_iterations: usize,
    pub seed: u64,
    pub min_cluster_size: usize,
    /// scikit-learn's convention: the point itself counts.
    pub min_samples: usize,
    pub selection: Selection,
    pub epsilon: f64,
    pub device: DeviceChoice,
    /// Most GPU memory, in MiB, one batch may plan with; 0: all that is free.
    pub gpu_memory_mib: u64,
    /// Where compiled CUDA kernels are kept: "" for the user's cache directory, "off", or a
    /// directory (an image can ship one filled by `segclust kernels`).
    pub kernel_cache: String,
}

impl ClusteringConfig {
    pub fn gpu_options(&self) -> crate::device::GpuOptions {
        crate::device::GpuOptions::new(self.gpu_memory_mib, &self.kernel_cache)
    }
}

impl Default for ClusteringConfig {
    fn default() -> Self {
        Self {
            dim: 3072,
            pca_components: 100,
            power_iterations: PcaParams::default().power_iterations,
            seed: 0,
            min_cluster_size: 2,
            min_samples: 2,
            selection: Selection::Leaf,
            epsilon: 0.0,
            device: DeviceChoice::Auto,
            gpu_memory_mib: 0,
            kernel_cache: String::new(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MatchingConfig {
    pub task_match_threshold: f64,
    pub high_impact_noise_threshold: f64,
    pub carry_over_days: i64,
    /// At most this many carried-over segments join a batch, the most recent first: the
    /// unlinked segments of a week can outnumber a batch many times over, and the numeric core
    /// must stay sized by the batch.
    pub carry_over_max_segments: usize,
}

impl Default for MatchingConfig {
    fn default() -> Self {
        Self {
            task_match_threshold: 0.3,
            high_impact_noise_threshold: 0.3,
            carry_over_days: 7,
            carry_over_max_segments: 50_000,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImpactConfig {
    pub failure: f64,
    pub confusion: f64,
    pub abandonment: f64,
}

impl Default for ImpactConfig {
    fn default() -> Self {
        let w = ImpactWeights::default();
        Self {
            failure: w.failure,
            confusion: w.confusion,
            abandonment: w.abandonment,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PriorityConfig {
    pub users: f64,
    pub impact: f64,
    pub recency: f64,
    pub half_life_days: f64,
}

impl Default for PriorityConfig {
    fn default() -> Self {
        let w = PriorityWeights::default();
        Self {
            users: w.users,
            impact: w.impact,
            recency: w.recency,
            half_life_days: w.half_life_days,
        }
    }
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Prometheus text-format file written after every team and at the end of a run (for
    /// node_exporter's textfile collector or any scraper that reads files).
    pub file: Option<PathBuf>,
}

impl Config {
    /// Reads `path` (or the defaults when None) and applies environment overrides.
    pub fn load(path: Option<&Path>) -> Result<Config> {
        let (text, name) = match path {
            Some(p) => (
                std::fs::read_to_string(p)
                    .with_context(|| format!("reading the config file {}", p.display()))?,
                p.display().to_string(),
            ),
            None => (String::new(), "(defaults)".into()),
        };
        let overrides: Vec<(String, String)> = std::env::vars()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX))
            .collect();
        Self::parse(&text, &name, &overrides)
    }

    /// Parses a config text, then applies `SEGCLUST__SECTION__KEY` overrides, then checks
    /// every value. Errors name the file, the key and its line.
    pub fn parse(text: &str, name: &str, overrides: &[(String, String)]) -> Result<Config> {
        // Deserialize the text alone first: its errors carry a span, from which the key and its
        // line are named up front.
        let cfg: Config = toml::from_str(text).map_err(|e| {
            let at = e
                .span()
                .and_then(|sp| key_at(text, sp.start))
                .map_or_else(String::new, |(key, line)| format!(" {key} (line {line}):"));
            anyhow::anyhow!("{name}:{at} {e}")
        })?;
        let cfg = if overrides.is_empty() {
            cfg
        } else {
            let mut table: toml::Table =
                toml::from_str(text).map_err(|e| anyhow::anyhow!("{name}: {e}"))?;
            for (var, value) in overrides {
                apply_override(&mut table, var, value)?;
            }
            Config::deserialize(table).map_err(|e| {
                anyhow::anyhow!(
                    "{name} with the environment overrides ({}): {e}",
                    overrides
                        .iter()
                        .map(|(k, _)| k.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            })?
        };
        let problems = cfg.problems();
        if !problems.is_empty() {
            let mut msg = format!("{name}: {} problem(s):", problems.len());
            for (key, why) in &problems {
                let at = line_of(text, key).map_or_else(String::new, |l| format!(" (line {l})"));
                let _ = write!(msg, "\n  {key}{at}: {why}");
            }
            bail!(msg);
        }
        Ok(cfg)
    }

    /// Every value that is out of range, as (dotted key, why).
    pub fn problems(&self) -> Vec<(String, String)> {
        let mut p = Vec::new();
        let mut bad = |key: &str, why: String| p.push((key.to_string(), why));
        let c = &self.clustering;
        if c.min_cluster_size < 2 {
            bad(
                "clustering.min_cluster_size",
                format!("is {}; HDBSCAN needs at least 2", c.min_cluster_size),
            );
        }
        if c.min_samples < 1 {
            bad(
                "clustering.min_samples",
                "is 0; it counts the point itself, so it is at least 1".into(),
            );
        }
        if !(c.epsilon.is_finite() && c.epsilon >= 0.0) {
            bad(
                "clustering.epsilon",
                format!("is {}; use a distance >= 0", c.epsilon),
            );
        }
        let m = &self.matching;
        for (key, v) in [
            ("matching.task_match_threshold", m.task_match_threshold),
            (
                "matching.high_impact_noise_threshold",
                m.high_impact_noise_threshold,
            ),
        ] {
            if !(v.is_finite() && (0.0..=2.0).contains(&v)) {
                bad(
                    key,
                    format!("is {v}; a cosine distance lies between 0 and 2"),
                );
            }
        }
        if m.carry_over_days < 0 {
            bad(
                "matching.carry_over_days",
                format!("is {}; use 0 or more days", m.carry_over_days),
            );
        }
        for (key, v) in [
            ("impact.failure", self.impact.failure),
            ("impact.confusion", self.impact.confusion),
            ("impact.abandonment", self.impact.abandonment),
            ("priority.users", self.priority.users),
            ("priority.impact", self.priority.impact),
            ("priority.recency", self.priority.recency),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                bad(key, format!("is {v}; weights are finite and >= 0"));
            }
        }
        if !(self.priority.half_life_days.is_finite() && self.priority.half_life_days > 0.0) {
            bad(
                "priority.half_life_days",
                format!(
                    "is {}; use a positive number of days",
                    self.priority.half_life_days
                ),
            );
        }
        if self.source.batch_size < 3 {
            bad(
                "source.batch_size",
                format!(
                    "is {}; batches of fewer than 3 segments are never clustered",
                    self.source.batch_size
                ),
            );
        }
        if self.coordinator.concurrency == 0 {
            bad("coordinator.concurrency", "is 0; use 1 or more".into());
        }
        for (key, v) in [
            ("coordinator.interval", &self.coordinator.interval),
            (
                "coordinator.backfill_window",
                &self.coordinator.backfill_window,
            ),
        ] {
            if let Err(e) = parse_duration(v) {
                bad(key, format!("{e:#}"));
            }
        }
        for (key, retry) in [
            ("store.retry", &self.store.retry),
            ("source.clickhouse.retry", &self.source.clickhouse.retry),
        ] {
            for (field, why) in retry.problems() {
                bad(&format!("{key}.{field}"), why);
            }
        }
        let url = &self.store.url;
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            bad(
                "store.url",
                format!(
                    "{:?} is neither sqlite://PATH nor postgres://USER@HOST/DB",
                    crate::store::redact_url(url)
                ),
            );
        }
        if self.teams.list.is_some() && self.teams.query.is_some() {
            bad(
                "teams.query",
                "is set together with teams.list; keep one of them".into(),
            );
        }
        if self.source.kind == SourceKind::Clickhouse {
            let ch = &self.source.clickhouse;
            if !(ch.url.starts_with("http://") || ch.url.starts_with("https://")) {
                bad(
                    "source.clickhouse.url",
                    format!("{:?} must start with http:// or https://", ch.url),
                );
            }
            if let Some(Err(e)) = ch.max_ingestion_lag.as_deref().map(parse_duration) {
                bad("source.clickhouse.max_ingestion_lag", format!("{e:#}"));
            }
        }
        p
    }

    pub fn pipeline(&self) -> PipelineConfig {
        let c = &self.clustering;
        PipelineConfig {
            batch_size: self.source.batch_size.max(1),
            dim: (c.dim > 0).then_some(c.dim),
            pca: (c.pca_components > 0).then(|| PcaParams {
                components: c.pca_components,
                power_iterations: c.power_iterations,
                seed: c.seed,
                ..PcaParams::default()
            }),
            hdbscan: HdbscanParams {
                min_cluster_size: c.min_cluster_size,
                min_samples: c.min_samples,
                selection: c.selection,
                epsilon: c.epsilon,
                allow_single_cluster: false,
            },
            task_match_threshold: self.matching.task_match_threshold,
            high_impact_noise_threshold: self.matching.high_impact_noise_threshold,
            carry_over_days: self.matching.carry_over_days,
            carry_over_max_segments: self.matching.carry_over_max_segments,
            impact: ImpactWeights {
                failure: self.impact.failure,
                confusion: self.impact.confusion,
                abandonment: self.impact.abandonment,
            },
            priority: PriorityWeights {
                users: self.priority.users,
                impact: self.priority.impact,
                recency: self.priority.recency,
                half_life_days: self.priority.half_life_days,
            },
            until_ms: None,
            from_ms: None,
        }
    }

    pub fn interval(&self) -> Result<Duration> {
        parse_duration(&self.coordinator.interval).context("coordinator.interval")
    }

    pub fn backfill_window(&self) -> Result<Duration> {
        parse_duration(&self.coordinator.backfill_window).context("coordinator.backfill_window")
    }
}

/// True when the flag `id` was given on the command line or by its env var, not left at its
/// default: only such flags override the config file. `m`: the command's own matches.
pub fn given_on_command_line(m: &clap::ArgMatches, id: &str) -> bool {
    use clap::parser::ValueSource;
    matches!(
        m.try_get_raw(id)
            .ok()
            .flatten()
            .and_then(|_| m.value_source(id)),
        Some(ValueSource::CommandLine | ValueSource::EnvVariable)
    )
}

/// `SEGCLUST__CLUSTERING__MIN_SAMPLES=5` sets `clustering.min_samples = 5`. The value is read
/// as a TOML value when it parses as one (numbers, booleans, arrays), else as a string.
fn apply_override(table: &mut toml::Table, var: &str, value: &str) -> Result<()> {
    let path: Vec<String> = var
        .trim_start_matches(ENV_PREFIX)
        .split("__")
        .map(str::to_ascii_lowercase)
        .collect();
    if path.iter().any(String::is_empty) {
        bail!("environment override {var}: use SEGCLUST__<SECTION>__<KEY>=value");
    }
    let parsed: toml::Value = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let (last, parents) = path
        .split_last()
        .context("empty environment override name")?;
    let mut t = table;
    for key in parents {
        let entry = t
            .entry(key.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        t = entry
            .as_table_mut()
            .with_context(|| format!("environment override {var}: {key} is not a section"))?;
    }
    t.insert(last.clone(), parsed);
    Ok(())
}

/// The dotted key set on the line holding byte `offset`, and that line (1-based).
fn key_at(text: &str, offset: usize) -> Option<(String, usize)> {
    let line_no = text.get(..offset)?.matches('\n').count() + 1;
    let mut section = String::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if let Some(h) = l.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            section = h.trim().to_string();
        }
        if i + 1 == line_no {
            let (k, _) = l.split_once('=')?;
            let k = k.trim();
            return Some((
                if section.is_empty() {
                    k.to_string()
                } else {
                    format!("{section}.{k}")
                },
                line_no,
            ));
        }
    }
    None
}

/// The 1-based line where a dotted key (`section.sub.key`) is set in the text, if it is.
fn line_of(text: &str, dotted: &str) -> Option<usize> {
    let (section, key) = dotted.rsplit_once('.').unwrap_or(("", dotted));
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if let Some(h) = l.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
            current = h.trim().to_string();
            continue;
        }
        let Some((k, _)) = l.split_once('=') else {
            continue;
        };
        let k = k.trim();
        let full = if current.is_empty() {
            k.to_string()
        } else {
            format!("{current}.{k}")
        };
        if full == dotted || (current == section && k == key) {
            return Some(i + 1);
        }
    }
    None
}

/// The longest duration any setting takes, in seconds (ten years). Longer ones are mistakes,
/// and would overflow the clock arithmetic they feed (`Instant + Duration`, epoch milliseconds).
pub const LONGEST_SECS: f64 = 10.0 * 365.0 * 86_400.0;

/// `secs` as a duration, when it is a finite number of seconds from 0 to [`LONGEST_SECS`].
pub fn seconds(secs: f64) -> Option<Duration> {
    (secs.is_finite() && (0.0..=LONGEST_SECS).contains(&secs))
        .then(|| Duration::from_secs_f64(secs))
}

/// "30m", "1h", "90s", "2d", "500ms" or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .with_context(|| format!("{s:?} is not a duration; write e.g. 30m, 1h, 90s or 1d"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        u => bail!("{s:?}: unknown unit {u:?}; use ms, s, m, h or d"),
    };
    if !(secs.is_finite() && secs > 0.0) {
        bail!("{s:?} is not a positive duration");
    }
    seconds(secs).with_context(|| format!("{s:?} is longer than ten years; write e.g. 30m or 7d"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_design_md_constants() {
        let c = Config::parse("", "x", &[]).unwrap();
        let p = c.pipeline();
        assert_eq!(p.hdbscan.min_cluster_size, 2);
        assert_eq!(p.hdbscan.min_samples, 2);
        assert_eq!(p.hdbscan.selection, Selection::Leaf);
        assert_eq!(p.task_match_threshold, 0.3);
        assert_eq!(p.high_impact_noise_threshold, 0.3);
        assert_eq!(p.pca.map(|p| p.components), Some(100));
        assert_eq!(p.priority.half_life_days, 7.0);
        assert_eq!(p.carry_over_days, 7);
        assert_eq!(c.interval().unwrap(), Duration::from_secs(1800));
    }

    #[test]
    fn the_example_file_is_valid_and_complete() {
        let text = include_str!("../segclust.example.toml");
        let c = Config::parse(text, "segclust.example.toml", &[]).unwrap();
        assert_eq!(c.clustering.min_samples, 2);
        assert_eq!(c.source.clickhouse.table, "document_embeddings");
    }

    #[test]
    fn a_wrong_type_names_the_key_and_the_line() {
        let text = "[clustering]\nmin_cluster_size = 2\nmin_samples = \"two\"\n";
        let err = format!("{:#}", Config::parse(text, "bad.toml", &[]).unwrap_err());
        assert!(err.contains("bad.toml"), "{err}");
        assert!(err.contains("clustering.min_samples (line 3)"), "{err}");
    }

    #[test]
    fn an_unknown_key_is_rejected_with_its_line() {
        let text = "[matching]\ntask_match_treshold = 0.2\n";
        let err = format!("{:#}", Config::parse(text, "t.toml", &[]).unwrap_err());
        assert!(
            err.contains("matching.task_match_treshold (line 2)"),
            "{err}"
        );
    }

    #[test]
    fn out_of_range_values_name_key_and_line() {
        let text = "[coordinator]\nconcurrency = 0\ninterval = \"soon\"\n\n[matching]\ntask_match_threshold = 3.5\n";
        let err = format!("{:#}", Config::parse(text, "r.toml", &[]).unwrap_err());
        assert!(err.contains("coordinator.concurrency (line 2)"), "{err}");
        assert!(err.contains("coordinator.interval (line 3)"), "{err}");
        assert!(
            err.contains("matching.task_match_threshold (line 6)"),
            "{err}"
        );
    }

    #[test]
    fn retry_policies_out_of_range_are_refused() {
        // TOML spells infinity and NaN; either used to panic at the first retry.
        let text = "[store.retry]\ntimeout_s = inf\nbackoff_s = nan\n\n[source.clickhouse.retry]\nattempts = 0\nmax_backoff_s = 1e300\n";
        let err = format!("{:#}", Config::parse(text, "r.toml", &[]).unwrap_err());
        for key in [
            "store.retry.timeout_s (line 2)",
            "store.retry.backoff_s (line 3)",
            "source.clickhouse.retry.attempts (line 6)",
            "source.clickhouse.retry.max_backoff_s (line 7)",
        ] {
            assert!(err.contains(key), "{key}: {err}");
        }
    }

    #[test]
    fn environment_overrides_win_over_the_file() {
        let text = "[clustering]\nmin_samples = 3\n";
        let env = [
            (
                "SEGCLUST__CLUSTERING__MIN_SAMPLES".to_string(),
                "5".to_string(),
            ),
            (
                "SEGCLUST__STORE__URL".to_string(),
                "postgres://u@h/db".to_string(),
            ),
            ("SEGCLUST__TEAMS__LIST".to_string(), "[1, 2]".to_string()),
            (
                "SEGCLUST__CLUSTERING__GPU_MEMORY_MIB".to_string(),
                "2048".to_string(),
            ),
        ];
        let c = Config::parse(text, "f", &env).unwrap();
        assert_eq!(c.clustering.min_samples, 5);
        assert_eq!(c.clustering.gpu_memory_mib, 2048);
        assert_eq!(c.store.url, "postgres://u@h/db");
        assert_eq!(c.teams.list, Some(vec![1, 2]));
        let bad = [(
            "SEGCLUST__CLUSTERING__MIN_SAMPLES".to_string(),
            "many".to_string(),
        )];
        assert!(Config::parse(text, "f", &bad).is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30m").unwrap(), Duration::from_secs(1800));
        assert_eq!(parse_duration("90").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("5 weeks").is_err());
        assert!(parse_duration("").is_err());
        // Found by fuzzing (tests/fuzz_inputs.rs): this used to panic in Duration's arithmetic.
        let err = parse_duration("19223372036854775807d").unwrap_err();
        assert!(
            format!("{err:#}").contains("longer than ten years"),
            "{err:#}"
        );
        assert!(parse_duration("3650d").is_ok());
    }
}
