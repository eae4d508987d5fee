//! One team, one batch: source -> validate -> normalize -> reduce -> cluster -> rescue -> match ->
//! label -> commit. Everything a batch decides is committed in one transaction at the end, so a
//! crash anywhere before it loses nothing and a rerun makes the same decisions.

use crate::cli::NumericArgs;
use crate::cluster::{Clustering, HdbscanParams};
use crate::device::Device;
use crate::impact::{self, ImpactWeights};
use crate::labeling::{ConfiguredLabeler, LabelRequest, Labeler, LlmArgs, label_all};
use crate::matching::{self, Target, TaskCentroid};
use crate::matrix::{Matrix, cosine_distance_unit};
use crate::priority::{self, PriorityWeights};
use crate::reduce::PcaParams;
use crate::segment::{Quarantine, Segment};
use crate::source::Source;
use crate::store::{BatchCommit, NewLink, NewTask, Store, TaskRef, UnlinkedSegment};
use anyhow::{Context, Result};
use clap::Args;
use std::collections::HashSet;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;
use tracing::Instrument;

const DAY_MS: i64 = 86_400_000;

/// Every constant of DESIGN.md that one team's batch uses.
#[derive(Clone, Debug)]
pub struct PipelineConfig {
    pub batch_size: usize,
    /// Embedding dimension every row must have; None = the batch's most common dimension.
    pub dim: Option<usize>,
    pub pca: Option<PcaParams>,
    pub hdbscan: HdbscanParams,
    pub task_match_threshold: f64,
    pub high_impact_noise_threshold: f64,
    pub carry_over_days: i64,
    pub impact: ImpactWeights,
    pub priority: PriorityWeights,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            batch_size: 50_000,
            dim: Some(3072),
            pca: Some(PcaParams::default()),
            hdbscan: HdbscanParams::default(),
            task_match_threshold: 0.3,
            high_impact_noise_threshold: 0.3,
            carry_over_days: 7,
            impact: ImpactWeights::default(),
            priority: PriorityWeights::default(),
        }
    }
}

/// What one batch did: the figures a run prints and logs.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct BatchReport {
    pub team_id: i64,
    pub segments_read: usize,
    pub already_linked: usize,
    pub carried_over: usize,
    pub quarantined: usize,
    pub clustered: usize,
    pub clusters: usize,
    pub noise: usize,
    pub rescued: usize,
    pub tasks_created: usize,
    pub tasks_updated: usize,
    pub links: usize,
    pub read_s: f64,
    pub numeric_s: f64,
    pub label_s: f64,
    pub commit_s: f64,
}

/// Processes `team` until the source has nothing after the watermark. Returns one report a batch.
pub async fn run_team(
    source: &Arc<Source>,
    store: &Store,
    device: &Arc<Device>,
    labeler: &impl Labeler,
    team: i64,
    cfg: &PipelineConfig,
    now_ms: i64,
) -> Result<Vec<BatchReport>> {
    // The span is attached to the future (not entered on this thread), so it stays right across
    // awaits on a multi-threaded runtime.
    async {
        let mut reports = Vec::new();
        loop {
            let r = run_batch(source, store, device, labeler, team, cfg, now_ms).await?;
            let done = r.segments_read + r.quarantined == 0 || r.segments_read < cfg.batch_size;
            if r.segments_read + r.quarantined > 0 {
                reports.push(r);
            }
            if done {
                return Ok(reports);
            }
        }
    }
    .instrument(tracing::info_span!("team", team))
    .await
}

/// One batch of at most `cfg.batch_size` new segments.
pub async fn run_batch(
    source: &Arc<Source>,
    store: &Store,
    device: &Arc<Device>,
    labeler: &impl Labeler,
    team: i64,
    cfg: &PipelineConfig,
    now_ms: i64,
) -> Result<BatchReport> {
    let mut report = BatchReport {
        team_id: team,
        ..Default::default()
    };

    // Read: new rows after the watermark, then the carried-over unlinked rows by id.
    let t = Instant::now();
    let watermark = store.watermark(team).await?;
    let src = Arc::clone(source);
    let limit = cfg.batch_size;
    let page = tokio::task::spawn_blocking(move || src.read_after(team, watermark.as_ref(), limit))
        .await
        .context("source reader thread failed")??;
    report.segments_read = page.rows.len();
    let mut quarantined: Vec<Quarantine> = page.rejected;
    if page.rows.is_empty() && quarantined.is_empty() {
        return Ok(report);
    }
    let new_ids: Vec<String> = page.rows.iter().map(|r| r.document_id.clone()).collect();
    let linked = store.linked_ids(team, &new_ids).await?;
    let new_set: HashSet<&str> = new_ids.iter().map(String::as_str).collect();
    let mut rows: Vec<_> = page
        .rows
        .into_iter()
        .filter(|r| !linked.contains(&r.document_id))
        .collect();
    report.already_linked = report.segments_read - rows.len();
    let new_count = rows.len();
    let carry_ids: Vec<String> = store
        .carry_over(team, now_ms - cfg.carry_over_days * DAY_MS)
        .await?
        .into_iter()
        .filter(|id| !new_set.contains(id.as_str()))
        .collect();
    if !carry_ids.is_empty() {
        let src = Arc::clone(source);
        let ids = carry_ids.clone();
        let carried = tokio::task::spawn_blocking(move || src.read_by_ids(team, &ids))
            .await
            .context("source reader thread failed")??;
        report.carried_over = carried.rows.len();
        rows.extend(carried.rows);
    }
    report.read_s = t.elapsed().as_secs_f64();

    // Validate (quarantine with reasons), normalize, reduce, cluster: the numeric core runs on a
    // blocking thread so the runtime stays responsive.
    let t = Instant::now();
    let dim = cfg.dim;
    let pca = cfg.pca.clone();
    let hdbscan = cfg.hdbscan.clone();
    let dev = Arc::clone(device);
    let (validated, clustering) = tokio::task::spawn_blocking(move || -> Result<_> {
        let mut v = crate::validate::validate(rows, dim);
        v.embeddings.normalize_rows();
        let clustering = cluster(&dev, &v.embeddings, pca.as_ref(), &hdbscan)?;
        Ok((v, clustering))
    })
    .await
    .context("numeric thread failed")??;
    quarantined.extend(validated.quarantined);
    report.quarantined = quarantined.len();
    report.clustered = validated.segments.len();
    report.numeric_s = t.elapsed().as_secs_f64();
    let segments = validated.segments;
    let unit = validated.embeddings;
    let carried_set: HashSet<&str> = carry_ids.iter().map(String::as_str).collect();
    let is_new: Vec<bool> = segments
        .iter()
        .map(|s| !carried_set.contains(s.document_id.as_str()))
        .collect();
    debug_assert!(is_new.iter().filter(|&&n| n).count() <= new_count);

    // Impact, clusters, matching.
    let impacts: Vec<f64> = segments
        .iter()
        .map(|s| impact::impact(&s.content, &s.metadata, &cfg.impact).score)
        .collect();
    let (clusters, noise) = groups(&clustering);
    let (clusters, noise) = matching::coherent(
        &unit,
        clusters,
        noise,
        cfg.task_match_threshold,
        cfg.hdbscan.min_cluster_size,
    );
    report.clusters = clusters.len();
    report.noise = noise.len();
    let tasks = store.tasks(team).await?;
    let centroids: Vec<TaskCentroid> = tasks
        .iter()
        .map(|t| TaskCentroid {
            task_id: t.id,
            centroid: t.centroid.clone(),
            weight: t.centroid_weight,
        })
        .collect();
    let threshold = cfg.high_impact_noise_threshold;
    let plan = matching::plan(
        &unit,
        &clusters,
        &noise,
        |r| impacts[r] > threshold,
        &centroids,
        cfg.task_match_threshold,
    );
    report.rescued = plan
        .new_tasks
        .iter()
        .filter(|g| g.members.len() == 1)
        .count();

    // Labels for new Tasks only, fetched concurrently (at most the labeler's bound in flight),
    // in the Tasks' order; a Task the LLM fails on gets the fallback label.
    let t = Instant::now();
    let requests: Vec<LabelRequest> = plan
        .new_tasks
        .iter()
        .map(|g| label_request(&segments, &unit, &g.members, &g.centroid, &impacts))
        .collect();
    let labels = label_all(labeler, &requests).await;
    let new_tasks: Vec<NewTask> = plan
        .new_tasks
        .iter()
        .zip(labels)
        .map(|(g, label)| NewTask {
            title: label.title,
            description: label.description,
            label_source: label.source,
            centroid: g.centroid.clone(),
            centroid_weight: g.members.len() as i64,
        })
        .collect();
    report.label_s = t.elapsed().as_secs_f64();

    // Links, with the distance to the centroid the segment's Task ends the batch with.
    let centroid_of = |target: &Target| -> &[f32] {
        match target {
            Target::New(j) => &plan.new_tasks[*j].centroid,
            Target::Existing(id) => plan
                .updated
                .iter()
                .find(|u| u.task_id == *id)
                .map(|u| u.centroid.as_slice())
                .unwrap_or(&[]),
        }
    };
    let mut linked_rows = HashSet::new();
    let links: Vec<NewLink> = plan
        .links
        .iter()
        .map(|(r, target)| {
            linked_rows.insert(*r);
            let s = &segments[*r];
            NewLink {
                task: match target {
                    Target::New(j) => TaskRef::New(*j),
                    Target::Existing(id) => TaskRef::Existing(*id),
                },
                document_id: s.document_id.clone(),
                session_id: s.session_id.clone(),
                distinct_id: s.distinct_id.clone(),
                distance: cosine_distance_unit(unit.row(*r), centroid_of(target)),
                impact: impacts[*r],
                timestamp_ms: s.timestamp_ms,
            }
        })
        .collect();
    let unlinked: Vec<UnlinkedSegment> = segments
        .iter()
        .enumerate()
        .filter(|(r, _)| is_new[*r] && !linked_rows.contains(r))
        .map(|(_, s)| UnlinkedSegment {
            document_id: s.document_id.clone(),
            inserted_at_ms: s.inserted_at_ms,
            timestamp_ms: s.timestamp_ms,
        })
        .collect();

    let t = Instant::now();
    let weights = cfg.priority;
    let batch = BatchCommit {
        team_id: team,
        now_ms,
        new_tasks,
        centroid_updates: plan
            .updated
            .iter()
            .map(|u| crate::store::CentroidUpdate {
                task_id: u.task_id,
                centroid: u.centroid.clone(),
                centroid_weight: u.weight,
            })
            .collect(),
        links,
        quarantined,
        unlinked,
        carry_over_prune_before_ms: now_ms - cfg.carry_over_days * DAY_MS,
        watermark: page.last,
        priority: Arc::new(move |a: &crate::store::TaskAggregates, now: i64| {
            let s = priority::score(
                a.distinct_user_count as u64,
                a.impact,
                a.last_seen_ms,
                now,
                &weights,
            );
            (s, priority::Level::from_score(s).as_str().to_string())
        }),
    };
    let summary = store.commit_batch(&batch).await?;
    report.commit_s = t.elapsed().as_secs_f64();
    report.tasks_created = summary.tasks_created;
    report.tasks_updated = summary.tasks_updated;
    report.links = summary.links_inserted;
    tracing::info!(
        read = report.segments_read,
        quarantined = report.quarantined,
        clusters = report.clusters,
        created = report.tasks_created,
        updated = report.tasks_updated,
        links = report.links,
        "batch committed"
    );
    Ok(report)
}

fn cluster(
    device: &Device,
    unit: &Matrix,
    pca: Option<&PcaParams>,
    params: &HdbscanParams,
) -> Result<Clustering> {
    if unit.rows() < crate::cluster::MIN_ROWS_TO_CLUSTER {
        return Ok(Clustering::all_noise(unit.rows()));
    }
    match pca {
        Some(p) => device.hdbscan(&device.pca(unit, p)?.projected, params),
        None => device.hdbscan(unit, params),
    }
}

/// Rows by cluster label (ascending label, rows ascending), and the noise rows.
fn groups(c: &Clustering) -> (Vec<Vec<usize>>, Vec<usize>) {
    let mut clusters = vec![Vec::new(); c.n_clusters()];
    let mut noise = Vec::new();
    for (r, &l) in c.labels.iter().enumerate() {
        match usize::try_from(l) {
            Ok(l) => clusters[l].push(r),
            Err(_) => noise.push(r),
        }
    }
    (clusters, noise)
}

/// Up to 5 member descriptions closest to the centroid, one per session.
fn label_request(
    segments: &[Segment],
    unit: &Matrix,
    members: &[usize],
    centroid: &[f32],
    impacts: &[f64],
) -> LabelRequest {
    let mut by_distance: Vec<(f64, usize)> = members
        .iter()
        .map(|&r| (cosine_distance_unit(unit.row(r), centroid), r))
        .collect();
    by_distance.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let mut sessions = HashSet::new();
    let descriptions = by_distance
        .iter()
        .filter(|(_, r)| sessions.insert(segments[*r].session_id.as_str()))
        .take(5)
        .map(|(_, r)| segments[*r].content.clone())
        .collect();
    let users: HashSet<&str> = members
        .iter()
        .map(|&r| segments[r].distinct_id.as_str())
        .collect();
    LabelRequest {
        descriptions,
        segment_count: members.len(),
        distinct_users: users.len(),
        mean_impact: members.iter().map(|&r| impacts[r]).sum::<f64>() / members.len().max(1) as f64,
    }
}

// ---------------------------------------------------------------------------------------------
// Commands

#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    /// Where Tasks live: sqlite://PATH (embedded default) or postgres://USER@HOST/DB.
    #[arg(long, env = "SEGCLUST_STORE", default_value = "sqlite://segclust.db")]
    pub store: String,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Segments file (.parquet or .jsonl) to read new segments from.
    #[arg(long, env = "SEGCLUST_SOURCE", default_value = "segments.parquet")]
    pub source: PathBuf,
    #[command(flatten)]
    pub store: StoreArgs,
    /// Team to process (also the team of rows without team_id).
    #[arg(long, default_value_t = 1)]
    pub team: i64,
    /// Process every team found in the source, one after another.
    #[arg(long)]
    pub all_teams: bool,
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    #[command(flatten)]
    pub llm: LlmArgs,
}

#[derive(Args, Debug, Clone)]
pub struct PipelineArgs {
    /// At most this many new segments a batch; a run continues batch by batch until caught up.
    #[arg(long, default_value_t = 50_000)]
    pub batch_size: usize,
    /// Embedding dimension every segment must have (0: the batch's most common dimension).
    #[arg(long, default_value_t = 3072)]
    pub dim: usize,
    /// Max cosine distance for a cluster (or noise segment) to join an existing Task.
    #[arg(long, default_value_t = 0.3)]
    pub task_match_threshold: f64,
    /// Noise segments with impact above this get a Task of their own.
    #[arg(long, default_value_t = 0.3)]
    pub high_impact_noise_threshold: f64,
    /// Unlinked segments of this many days are clustered again with each new batch.
    #[arg(long, default_value_t = 7)]
    pub carry_over_days: i64,
    /// Half-life of the recency term of priority, in days.
    #[arg(long, default_value_t = 7.0)]
    pub recency_half_life_days: f64,
    /// Current time as ms since the epoch (for reproducible runs); default: the clock.
    #[arg(long)]
    pub now_ms: Option<i64>,
    #[command(flatten)]
    pub numeric: NumericArgs,
}

impl PipelineArgs {
    pub fn config(&self) -> PipelineConfig {
        PipelineConfig {
            batch_size: self.batch_size.max(1),
            dim: (self.dim > 0).then_some(self.dim),
            pca: (!self.numeric.no_reduce).then(|| self.numeric.pca()),
            hdbscan: self.numeric.hdbscan(),
            task_match_threshold: self.task_match_threshold,
            high_impact_noise_threshold: self.high_impact_noise_threshold,
            carry_over_days: self.carry_over_days,
            impact: ImpactWeights::default(),
            priority: PriorityWeights {
                half_life_days: self.recency_half_life_days,
                ..PriorityWeights::default()
            },
        }
    }

    fn now_ms(&self) -> i64 {
        self.now_ms
            .unwrap_or_else(|| chrono::Utc::now().timestamp_millis())
    }
}

pub async fn run_cmd(a: RunArgs) -> Result<ExitCode> {
    let source = Arc::new(Source::open_file(&a.source, a.team)?);
    let store = Store::connect(&a.store.store).await?;
    let device = Arc::new(Device::open(a.pipeline.numeric.device)?);
    let teams = if a.all_teams {
        source.teams()?
    } else {
        vec![a.team]
    };
    let cfg = a.pipeline.config();
    let now = a.pipeline.now_ms();
    let labeler = ConfiguredLabeler::from_config(&a.llm.config())?;
    let mut failed = 0;
    for team in teams {
        if labeler.is_llm() {
            // Fallback labels of earlier runs (LLM down or failing then) get their LLM label now.
            let relabelled =
                crate::labeling::relabel::relabel_team(&source, &store, &labeler, team, true, now)
                    .await;
            match relabelled {
                Ok(r) if r.relabelled > 0 => {
                    tracing::info!(team, "{} fallback labels replaced", r.relabelled)
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(team, "relabelling fallback labels failed: {e:#}"),
            }
        }
        match run_team(&source, &store, &device, &labeler, team, &cfg, now).await {
            Ok(reports) => print_reports(team, &reports),
            Err(e) => {
                failed += 1;
                tracing::error!(team, "team failed, its watermark is unchanged: {e:#}");
            }
        }
    }
    labeler.log_stats();
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_reports(team: i64, reports: &[BatchReport]) {
    if reports.is_empty() {
        println!("team {team}: nothing new after the watermark");
    }
    for r in reports {
        println!(
            "team {team}: {} segments read ({} carried over, {} quarantined), {} clusters, {} noise ({} rescued) -> {} Tasks created, {} updated, {} links  [read {:.2}s, numeric {:.2}s, labels {:.2}s, commit {:.2}s]",
            r.segments_read,
            r.carried_over,
            r.quarantined,
            r.clusters,
            r.noise,
            r.rescued,
            r.tasks_created,
            r.tasks_updated,
            r.links,
            r.read_s,
            r.numeric_s,
            r.label_s,
            r.commit_s
        );
    }
}

#[derive(Args, Debug)]
pub struct TasksArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[arg(long, default_value_t = 1)]
    pub team: i64,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// At most this many Tasks (highest priority first).
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Current time as ms since the epoch, for the recency term; default: the clock.
    #[arg(long)]
    pub now_ms: Option<i64>,
}

pub async fn tasks_cmd(a: TasksArgs) -> Result<()> {
    let store = Store::connect(&a.store.store).await?;
    let now = a
        .now_ms
        .unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
    let w = PriorityWeights::default();
    let mut tasks = store.tasks(a.team).await?;
    // Recency decays when Tasks are listed, not only when they were written.
    for t in &mut tasks {
        t.priority_score = priority::score(
            t.distinct_user_count as u64,
            t.impact,
            t.last_seen_ms,
            now,
            &w,
        );
        t.priority_level = priority::Level::from_score(t.priority_score)
            .as_str()
            .to_string();
    }
    tasks.sort_by(|a, b| {
        b.priority_score
            .total_cmp(&a.priority_score)
            .then(a.id.cmp(&b.id))
    });
    tasks.truncate(a.limit);
    if a.json {
        let v: Vec<serde_json::Value> = tasks
            .iter()
            .map(|t| {
                serde_json::json!({
                    "id": t.id, "title": t.title, "description": t.description,
                    "label_source": t.label_source.as_str(), "priority": t.priority_score,
                    "level": t.priority_level, "impact": t.impact, "segments": t.segment_count,
                    "occurrences": t.occurrence_count, "users": t.distinct_user_count,
                    "first_seen_ms": t.first_seen_ms, "last_seen_ms": t.last_seen_ms,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    println!(
        "{:>5}  {:<8}  {:>6}  {:>5}  {:>5}  {:>6}  title",
        "id", "level", "score", "users", "occ", "impact"
    );
    for t in &tasks {
        println!(
            "{:>5}  {:<8}  {:>6.2}  {:>5}  {:>5}  {:>6.2}  {}",
            t.id,
            t.priority_level,
            t.priority_score,
            t.distinct_user_count,
            t.occurrence_count,
            t.impact,
            t.title
        );
    }
    if tasks.is_empty() {
        println!("(no Tasks for team {})", a.team);
    }
    Ok(())
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
    #[command(flatten)]
    pub pipeline: PipelineArgs,
    #[command(flatten)]
    pub llm: LlmArgs,
}

pub async fn demo_cmd(a: DemoArgs) -> Result<ExitCode> {
    let team = 1;
    let now = a.pipeline.now_ms();
    if !a.source.exists() {
        let p = crate::demo::DemoParams {
            seed: a.demo_seed,
            team_id: team,
            ..Default::default()
        };
        let rows = crate::demo::generate(&p, now);
        crate::source::write_segments(&a.source, &rows)?;
        println!(
            "wrote {} demo segments to {}",
            rows.len(),
            a.source.display()
        );
    }
    let code = run_cmd(RunArgs {
        source: a.source,
        store: StoreArgs {
            store: a.store.clone(),
        },
        team,
        all_teams: false,
        pipeline: a.pipeline,
        llm: a.llm,
    })
    .await?;
    tasks_cmd(TasksArgs {
        store: StoreArgs { store: a.store },
        team,
        json: false,
        limit: 20,
        now_ms: Some(now),
    })
    .await?;
    Ok(code)
}
