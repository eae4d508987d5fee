//! One team, one batch: source -> validate -> normalize -> reduce -> cluster -> rescue -> match ->
//! label -> commit. Everything a batch decides is committed in one transaction at the end, so a
//! crash anywhere before it loses nothing and a rerun makes the same decisions.

use crate::cli::NumericArgs;
use crate::cluster::{Clustering, HdbscanParams};
use crate::device::Device;
use crate::failpoint;
use crate::impact::{self, ImpactWeights};
use crate::labeling::{LabelRequest, Labeler, label_all};
use crate::matching::{self, Target, TaskCentroid};
use crate::matrix::{Matrix, cosine_distance_unit};
use crate::priority::{self, PriorityWeights};
use crate::reduce::PcaParams;
use crate::segment::{Quarantine, Segment};
use crate::source::Source;
use crate::store::{BatchCommit, NewLink, NewTask, Store, TaskRef, UnlinkedSegment};
use anyhow::{Context, Result};
use clap::Args;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
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
    /// Most carried-over segments a batch takes, the most recent first.
    pub carry_over_max_segments: usize,
    pub impact: ImpactWeights,
    pub priority: PriorityWeights,
    /// Read only segments inserted before this (ms since the epoch): the end of a backfill
    /// window. None: everything after the watermark.
    pub until_ms: Option<i64>,
    /// Leave segments inserted before this alone (ms since the epoch): the start of a backfill.
    pub from_ms: Option<i64>,
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
            carry_over_max_segments: 50_000,
            impact: ImpactWeights::default(),
            priority: PriorityWeights::default(),
            until_ms: None,
            from_ms: None,
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
    /// Unlinked segments of the carry-over window left out of this batch by
    /// `carry_over_max_segments` (they stay eligible until they leave the window).
    pub carry_over_left_out: usize,
    pub quarantined: usize,
    /// Of `quarantined`, identical copies of rows already accepted (at-least-once delivery).
    pub redelivered: usize,
    pub clustered: usize,
    pub clusters: usize,
    pub noise: usize,
    pub rescued: usize,
    pub tasks_created: usize,
    pub tasks_updated: usize,
    pub links: usize,
    pub read_s: f64,
    pub numeric_s: f64,
    /// Matching clusters and noise to Tasks (impact and coherence checks included).
    pub match_s: f64,
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
    let never = AtomicBool::new(false);
    let run = TeamRun {
        team,
        now_ms,
        stop: &never,
        on_batch: &|_| {},
    };
    run_team_with(source, store, device, labeler, cfg, run).await
}

/// One team's run as the coordinator drives it.
pub struct TeamRun<'a> {
    pub team: i64,
    pub now_ms: i64,
    /// Checked before every batch: once set, no new batch starts.
    pub stop: &'a AtomicBool,
    /// Called after every committed batch (metrics, progress bars).
    pub on_batch: &'a (dyn Fn(&BatchReport) + Send + Sync),
}

/// [`run_team`] with a stop flag and a per-batch hook.
pub async fn run_team_with(
    source: &Arc<Source>,
    store: &Store,
    device: &Arc<Device>,
    labeler: &impl Labeler,
    cfg: &PipelineConfig,
    run: TeamRun<'_>,
) -> Result<Vec<BatchReport>> {
    let team = run.team;
    // The span is attached to the future (not entered on this thread), so it stays right across
    // awaits on a multi-threaded runtime.
    async {
        let mut reports = Vec::new();
        while !run.stop.load(Ordering::SeqCst) {
            let r = run_batch(source, store, device, labeler, team, cfg, run.now_ms).await?;
            let done = r.segments_read + r.quarantined == 0 || r.segments_read < cfg.batch_size;
            if r.segments_read + r.quarantined > 0 {
                (run.on_batch)(&r);
                reports.push(r);
            }
            if done {
                break;
            }
        }
        Ok(reports)
    }
    .instrument(team_span(team))
    .await
}

/// The span of one team's work. The coordinator opens it already (around the team's lock and
/// metrics), and a second one inside would print every line as `team:team: ... team=1 team=1`;
/// a caller that runs a team directly gets its own.
fn team_span(team: i64) -> tracing::Span {
    let current = tracing::Span::current();
    if current.metadata().is_some_and(|m| m.name() == "team") {
        current
    } else {
        tracing::info_span!("team", team)
    }
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
    let started_at_ms = chrono::Utc::now().timestamp_millis();
    let mut report = BatchReport {
        team_id: team,
        ..Default::default()
    };

    // Read: new rows after the watermark, then the carried-over unlinked rows by id.
    let t = Instant::now();
    let mut watermark = store.watermark(team).await?;
    if let Some(f) = cfg.from_ms {
        // Watermark (from, "") sorts before every row inserted at `from` or later.
        let floor = crate::segment::Watermark {
            inserted_at_ms: f,
            document_id: String::new(),
        };
        watermark = Some(watermark.map_or(floor.clone(), |w| w.max(floor)));
    }
    let page = source
        .read_after(team, watermark.as_ref(), cfg.until_ms, cfg.batch_size)
        .await?;
    report.segments_read = page.rows.len();
    let mut quarantined: Vec<Quarantine> = page.rejected;
    let unreadable = quarantined.len();
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
    let since_ms = now_ms - cfg.carry_over_days * DAY_MS;
    let carry = if cfg.carry_over_max_segments == 0 {
        crate::store::CarryOver::default()
    } else {
        store
            .carry_over(team, since_ms, cfg.carry_over_max_segments)
            .await?
    };
    report.carry_over_left_out = carry.left_out;
    if carry.left_out > 0 {
        tracing::warn!(
            left_out = carry.left_out,
            max = cfg.carry_over_max_segments,
            "more unlinked segments in the carry-over window than a batch takes: the most \
             recent are clustered again, the rest wait for a later batch or leave the window \
             (raise matching.carry_over_max_segments, or shorten carry_over_days)"
        );
    }
    let carry_ids: Vec<String> = carry
        .ids
        .into_iter()
        .filter(|id| !new_set.contains(id.as_str()))
        .collect();
    if !carry_ids.is_empty() {
        let carried = source.read_by_ids(team, &carry_ids).await?;
        report.carried_over = carried.rows.len();
        rows.extend(carried.rows);
    }
    report.read_s = t.elapsed().as_secs_f64();
    failpoint::hit("after_fetch").await;

    // Validate (quarantine with reasons), normalize, reduce, cluster: the numeric core runs on a
    // blocking thread so the runtime stays responsive.
    let t = Instant::now();
    let dim = cfg.dim;
    let pca = cfg.pca.clone();
    let hdbscan = cfg.hdbscan.clone();
    let dev = Arc::clone(device);
    let (validated, (clustering, map_coords)) =
        tokio::task::spawn_blocking(move || -> Result<_> {
            let mut v = crate::validate::validate(rows, dim);
            v.embeddings.normalize_rows();
            let clustering = cluster(&dev, &v.embeddings, pca.as_ref(), &hdbscan)?;
            Ok((v, clustering))
        })
        .await
        .context("numeric thread failed")??;
    report.redelivered = validated
        .quarantined
        .iter()
        .filter(|q| crate::validate::is_redelivery(q))
        .count();
    quarantined.extend(validated.quarantined);
    report.quarantined = quarantined.len();
    report.clustered = validated.segments.len();
    report.numeric_s = t.elapsed().as_secs_f64();
    failpoint::hit("after_cluster").await;
    let segments = validated.segments;
    let unit = validated.embeddings;
    let carried_set: HashSet<&str> = carry_ids.iter().map(String::as_str).collect();
    let is_new: Vec<bool> = segments
        .iter()
        .map(|s| !carried_set.contains(s.document_id.as_str()))
        .collect();
    debug_assert!(is_new.iter().filter(|&&n| n).count() <= new_count);

    // Impact, clusters, matching.
    let t = Instant::now();
    let impacts: Vec<f64> = {
        use rayon::prelude::*;
        segments
            .par_iter()
            .map(|s| impact::impact(&s.content, &s.metadata, &cfg.impact).score)
            .collect()
    };
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
    if plan.unmatchable > 0 && unit.rows() > 0 {
        tracing::warn!(
            tasks = plan.unmatchable,
            dim = unit.cols(),
            "Tasks whose centroids have another dimension (made with another embedding model?) \
             or NaN or infinite values (a corrupt row) are not matched; their problems will be \
             filed again as new Tasks"
        );
    }
    report.rescued = plan
        .new_tasks
        .iter()
        .filter(|g| g.members.len() == 1)
        .count();
    // Each linked row's distance to the centroid its Task ends the batch with: stored with the
    // link, and for a new Task also what picks the descriptions its label is made from.
    let updated: HashMap<i64, &[f32]> = plan
        .updated
        .iter()
        .map(|u| (u.task_id, u.centroid.as_slice()))
        .collect();
    let centroid_of = |target: &Target| -> &[f32] {
        match target {
            Target::New(j) => &plan.new_tasks[*j].centroid,
            Target::Existing(id) => updated.get(id).copied().unwrap_or(&[]),
        }
    };
    let link_distance: Vec<f64> = {
        use rayon::prelude::*;
        plan.links
            .par_iter()
            .map(|(r, target)| cosine_distance_unit(unit.row(*r), centroid_of(target)))
            .collect()
    };
    let mut row_distance = vec![f64::NAN; unit.rows()];
    for ((r, _), &d) in plan.links.iter().zip(&link_distance) {
        row_distance[*r] = d;
    }
    report.match_s = t.elapsed().as_secs_f64();

    // Labels for new Tasks only, fetched concurrently (at most the labeler's bound in flight),
    // in the Tasks' order; a Task the LLM fails on gets the fallback label.
    let t = Instant::now();
    let requests: Vec<LabelRequest> = plan
        .new_tasks
        .iter()
        .map(|g| label_request(&segments, &g.members, &row_distance, &impacts))
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
            actionable: label.actionable,
            centroid: g.centroid.clone(),
            centroid_weight: g.members.len() as i64,
        })
        .collect();
    report.label_s = t.elapsed().as_secs_f64();
    failpoint::hit("after_label").await;

    let mut linked_rows = HashSet::new();
    let links: Vec<NewLink> = plan
        .links
        .iter()
        .zip(link_distance)
        .map(|((r, target), distance)| {
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
                distance,
                impact: impacts[*r],
                timestamp_ms: s.timestamp_ms,
                content: s.content.clone(),
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

    let run = run_record(
        &report,
        started_at_ms,
        &quarantined,
        unreadable,
        &map_coords,
        &segments,
        &clusters,
        &plan.links,
    );
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
        run: Some(run),
    };
    let summary = store.commit_batch(&batch).await?;
    report.commit_s = t.elapsed().as_secs_f64();
    report.tasks_created = summary.tasks_created;
    report.tasks_updated = summary.tasks_updated;
    report.links = summary.links_inserted;
    tracing::info!(
        read = report.segments_read,
        quarantined = report.quarantined,
        redelivered = report.redelivered,
        clusters = report.clusters,
        created = report.tasks_created,
        updated = report.tasks_updated,
        links = report.links,
        "batch committed"
    );
    Ok(report)
}

/// The clustering and, for the report's map, each row on the first two PCA axes.
fn cluster(
    device: &Device,
    unit: &Matrix,
    pca: Option<&PcaParams>,
    params: &HdbscanParams,
) -> Result<(Clustering, Vec<[f32; 2]>)> {
    if unit.rows() < crate::cluster::MIN_ROWS_TO_CLUSTER {
        return Ok((Clustering::all_noise(unit.rows()), Vec::new()));
    }
    let _turn = device.turn();
    match pca {
        Some(p) => {
            let projected = device.pca(unit, p)?.projected;
            let c = device.hdbscan(&projected, params)?;
            Ok((c, crate::report::record::first_two_axes(&projected)))
        }
        None => {
            let c = device.hdbscan(unit, params)?;
            // Clustering without PCA still gets a map: a 2-component PCA just for it.
            let map_pca = PcaParams {
                components: 2,
                ..PcaParams::default()
            };
            let coords = match device.pca(unit, &map_pca) {
                Ok(p) => crate::report::record::first_two_axes(&p.projected),
                Err(e) => {
                    tracing::warn!("no 2-D map for this batch's report: {e:#}");
                    Vec::new()
                }
            };
            Ok((c, coords))
        }
    }
}

/// The batch's row for the `runs` table: its figures so far, quarantine reasons and map.
#[allow(clippy::too_many_arguments)]
fn run_record(
    report: &BatchReport,
    started_at_ms: i64,
    quarantined: &[Quarantine],
    unreadable: usize,
    map_coords: &[[f32; 2]],
    segments: &[Segment],
    clusters: &[Vec<usize>],
    links: &[(usize, Target)],
) -> crate::store::RunRecord {
    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    let mut cluster_of = vec![-1i32; segments.len()];
    for (c, rows) in clusters.iter().enumerate() {
        for &r in rows {
            cluster_of[r] = i32::try_from(c).unwrap_or(i32::MAX);
        }
    }
    let task_of = links
        .iter()
        .map(|(r, t)| {
            let t = match t {
                Target::New(j) => TaskRef::New(*j),
                Target::Existing(id) => TaskRef::Existing(*id),
            };
            (*r, t)
        })
        .collect();
    let ids: Vec<&str> = segments.iter().map(|s| s.document_id.as_str()).collect();
    crate::store::RunRecord {
        started_at_ms,
        figures: crate::store::RunFigures {
            segments_read: count(report.segments_read),
            already_linked: count(report.already_linked),
            carried_over: count(report.carried_over),
            quarantined: count(report.quarantined),
            clustered: count(report.clustered),
            clusters: count(report.clusters),
            noise: count(report.noise),
            rescued: count(report.rescued),
            read_s: report.read_s,
            numeric_s: report.numeric_s,
            match_s: report.match_s,
            label_s: report.label_s,
            ..Default::default()
        },
        quarantine_reasons: crate::report::record::quarantine_reasons(quarantined, unreadable),
        map: crate::report::record::map_points(map_coords, &ids, &cluster_of, &task_of),
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

/// Up to 5 member descriptions closest to the centroid (`distance`, per row), one per session.
fn label_request(
    segments: &[Segment],
    members: &[usize],
    distance: &[f64],
    impacts: &[f64],
) -> LabelRequest {
    let mut by_distance: Vec<(f64, usize)> = members.iter().map(|&r| (distance[r], r)).collect();
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
    /// At most this many of them join a batch, the most recent first (0: none).
    #[arg(long, default_value_t = 50_000)]
    pub carry_over_max_segments: usize,
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
    /// Writes the flags given on the command line (or by their env var) into `cfg`; flags left
    /// at their defaults leave the config file's values alone. `m`: this command's matches.
    pub fn apply(&self, cfg: &mut crate::config::Config, m: &clap::ArgMatches) {
        let given = |id: &str| crate::config::given_on_command_line(m, id);
        let n = &self.numeric;
        let (c, mt) = (&mut cfg.clustering, &mut cfg.matching);
        if given("batch_size") {
            cfg.source.batch_size = self.batch_size;
        }
        if given("dim") {
            c.dim = self.dim;
        }
        if given("pca_components") {
            c.pca_components = n.pca_components;
        }
        if n.no_reduce {
            c.pca_components = 0;
        }
        if given("power_iterations") {
            c.power_iterations = n.power_iterations;
        }
        if given("seed") {
            c.seed = n.seed;
        }
        if given("min_cluster_size") {
            c.min_cluster_size = n.min_cluster_size;
        }
        if given("min_samples") {
            c.min_samples = n.min_samples;
        }
        if given("selection") {
            c.selection = n.selection;
        }
        if given("epsilon") {
            c.epsilon = n.epsilon;
        }
        if given("device") {
            c.device = n.device;
        }
        if given("gpu_memory_mib") {
            c.gpu_memory_mib = n.gpu_memory_mib;
        }
        if given("kernel_cache") {
            c.kernel_cache = n.kernel_cache.clone();
        }
        if given("task_match_threshold") {
            mt.task_match_threshold = self.task_match_threshold;
        }
        if given("high_impact_noise_threshold") {
            mt.high_impact_noise_threshold = self.high_impact_noise_threshold;
        }
        if given("carry_over_days") {
            mt.carry_over_days = self.carry_over_days;
        }
        if given("carry_over_max_segments") {
            mt.carry_over_max_segments = self.carry_over_max_segments;
        }
        if given("recency_half_life_days") {
            cfg.priority.half_life_days = self.recency_half_life_days;
        }
    }

    pub fn now_ms(&self) -> i64 {
        self.now_ms
            .unwrap_or_else(|| chrono::Utc::now().timestamp_millis())
    }
}
