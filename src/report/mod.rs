//! `segclust report`: one self-contained HTML file a product team can open anywhere (no network at
//! view time, no JavaScript): the Tasks by priority with their trend and most central
//! descriptions, a 2-D map of the latest batch, and the figures of recent runs.
//!
//! `gather` reads everything from the store (descriptions are stored with the links, so the
//! report needs no access to the segments source); `html` renders it, escaping every piece of
//! stored text: descriptions are written by an AI from what users did and are untrusted.

pub mod html;
pub mod map;
pub mod record;
pub mod sparkline;

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

use crate::impact::ImpactWeights;
use crate::pipeline::StoreArgs;
use crate::priority::PriorityWeights;
use crate::store::{Link, Run, Store, Task};

const DAY_MS: i64 = 86_400_000;
/// Longest trend a sparkline shows, in days (the most recent ones).
pub const MAX_TREND_DAYS: usize = 30;

const EXAMPLES: &str = "Examples:
  segclust report --team 1 --out report.html
  segclust report --store sqlite://segclust-demo.db --team 1 --out /tmp/r.html --tasks 20
  segclust report --store postgres://segclust@db/segclust --team 42 --out team42.html";

#[derive(Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct ReportArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[arg(long, default_value_t = 1)]
    pub team: i64,
    /// The HTML file to write (replaced if it exists).
    #[arg(long, default_value = "segclust-report.html")]
    pub out: PathBuf,
    /// At most this many Tasks, highest priority first.
    #[arg(long, default_value_t = 50)]
    pub tasks: usize,
    /// Most central descriptions shown per Task (one per session).
    #[arg(long, default_value_t = 3)]
    pub descriptions: usize,
    /// Recent runs listed with their figures.
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// Current time as ms since the epoch, for the recency term; default: the clock.
    #[arg(long)]
    pub now_ms: Option<i64>,
}

/// Everything the page shows.
#[derive(Clone, Debug)]
pub struct ReportData {
    pub team: i64,
    pub now_ms: i64,
    /// All Tasks of the team (before the limit), for the headline counts.
    pub total_tasks: usize,
    pub tasks: Vec<TaskView>,
    /// First day (UTC midnight, ms) of the trend window shared by every sparkline.
    pub trend_start_ms: i64,
    pub trend_days: usize,
    /// Newest first.
    pub runs: Vec<Run>,
}

/// One Task as the report shows it.
#[derive(Clone, Debug)]
pub struct TaskView {
    /// Rescored at `now_ms`.
    pub task: Task,
    /// Most central linked segments, one per session.
    pub central: Vec<Link>,
    /// Occurrences (distinct sessions) per day of the trend window.
    pub daily: Vec<u32>,
    pub mix: ImpactMix,
}

/// How many of a Task's segments show each kind of harm (a segment can show several).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ImpactMix {
    pub segments: usize,
    pub failure: usize,
    pub confusion: usize,
    pub abandonment: usize,
    /// Segments with no sign of harm.
    pub none: usize,
    /// Impacts that no combination of the default weights gives (stored with other weights).
    pub unknown: usize,
}

impl ImpactMix {
    pub fn of(links: &[Link], w: &ImpactWeights) -> Self {
        let mut m = ImpactMix {
            segments: links.len(),
            ..Default::default()
        };
        for l in links {
            match harms(l.impact, w) {
                Some([false, false, false]) => m.none += 1,
                Some([f, c, a]) => {
                    m.failure += usize::from(f);
                    m.confusion += usize::from(c);
                    m.abandonment += usize::from(a);
                }
                None => m.unknown += 1,
            }
        }
        m
    }
}

/// Which kinds of harm (failure, confusion, abandonment) sum to `impact`: links keep only the
/// score, and with the default weights (0.4, 0.3, 0.2) every subset has a distinct sum.
pub fn harms(impact: f64, w: &ImpactWeights) -> Option<[bool; 3]> {
    (0u8..8).find_map(|bits| {
        let has = [bits & 1 != 0, bits & 2 != 0, bits & 4 != 0];
        let sum = [w.failure, w.confusion, w.abandonment]
            .iter()
            .zip(has)
            .filter(|(_, h)| *h)
            .map(|(v, _)| v)
            .sum::<f64>()
            .min(1.0);
        ((sum - impact).abs() < 1e-9).then_some(has)
    })
}

/// Reads what the report shows for `team` at `now_ms`.
pub async fn gather(
    store: &Store,
    team: i64,
    now_ms: i64,
    max_tasks: usize,
    descriptions: usize,
    max_runs: usize,
) -> Result<ReportData> {
    let mut tasks = store.tasks(team).await?;
    let total_tasks = tasks.len();
    crate::tasks_cmd::rescore(&mut tasks, now_ms, &PriorityWeights::default());
    // Tasks the LLM judged ordinary use go last, marked, still by priority among themselves.
    tasks.sort_by_key(|t| t.actionable == Some(false));
    tasks.truncate(max_tasks);

    let last = tasks.iter().map(|t| t.last_seen_ms).max().unwrap_or(now_ms);
    let first = tasks.iter().map(|t| t.first_seen_ms).min().unwrap_or(last);
    let last_day = last.div_euclid(DAY_MS);
    let first_day = first
        .div_euclid(DAY_MS)
        .max(last_day - MAX_TREND_DAYS as i64 + 1);
    let trend_days = usize::try_from(last_day - first_day + 1).unwrap_or(1);
    let trend_start_ms = first_day * DAY_MS;

    let weights = ImpactWeights::default();
    let mut views = Vec::with_capacity(tasks.len());
    for task in tasks {
        let links = store.links(team, task.id).await?;
        let daily = occurrences_per_day(&links, trend_start_ms, trend_days);
        let mix = ImpactMix::of(&links, &weights);
        let central = most_central(links, descriptions);
        views.push(TaskView {
            task,
            central,
            daily,
            mix,
        });
    }
    Ok(ReportData {
        team,
        now_ms,
        total_tasks,
        tasks: views,
        trend_start_ms,
        trend_days,
        runs: store.runs(team, max_runs).await?,
    })
}

/// Distinct sessions per day from `start_ms`, `days` days; links outside are left out.
pub fn occurrences_per_day(links: &[Link], start_ms: i64, days: usize) -> Vec<u32> {
    let mut sessions: BTreeMap<usize, HashSet<&str>> = BTreeMap::new();
    for l in links {
        let day = (l.timestamp_ms - start_ms).div_euclid(DAY_MS);
        if let Ok(day) = usize::try_from(day)
            && day < days
        {
            sessions.entry(day).or_default().insert(&l.session_id);
        }
    }
    (0..days)
        .map(|d| sessions.get(&d).map_or(0, |s| s.len() as u32))
        .collect()
}

/// Up to `n` links closest to the centroid, one per session, with a description.
fn most_central(links: Vec<Link>, n: usize) -> Vec<Link> {
    let mut seen = HashSet::new();
    crate::tasks_cmd::by_centrality(links)
        .into_iter()
        .filter(|l| !l.content.is_empty() && seen.insert(l.session_id.clone()))
        .take(n)
        .collect()
}

pub async fn report_cmd(a: ReportArgs) -> Result<()> {
    let store = Store::connect(&a.store.store).await?;
    let now = a
        .now_ms
        .unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
    let data = gather(&store, a.team, now, a.tasks, a.descriptions, a.runs).await?;
    let page = html::render(&data);
    write_atomically(&a.out, page.as_bytes())?;
    println!(
        "wrote {} ({} Tasks, {} runs, {} KB)",
        a.out.display(),
        data.tasks.len(),
        data.runs.len(),
        page.len().div_ceil(1024)
    );
    Ok(())
}

/// Writes next to the target and renames, so a reader never sees half a report.
fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    let name = path
        .file_name()
        .with_context(|| format!("--out {} is not a file path", path.display()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    std::fs::write(&tmp, bytes).with_context(|| {
        format!(
            "could not write {} (does the directory exist and is it writable?)",
            tmp.display()
        )
    })?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("could not move {} to {}", tmp.display(), path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(session: &str, ts: i64, distance: f64, impact: f64, content: &str) -> Link {
        Link {
            task_id: 1,
            team_id: 1,
            document_id: format!("{session}:{ts}"),
            session_id: session.into(),
            distinct_id: "u".into(),
            distance,
            impact,
            timestamp_ms: ts,
            created_at_ms: 0,
            content: content.into(),
        }
    }

    #[test]
    fn impact_scores_decompose_into_kinds_of_harm() {
        let w = ImpactWeights::default();
        assert_eq!(harms(0.0, &w), Some([false, false, false]));
        assert_eq!(harms(0.4, &w), Some([true, false, false]));
        assert_eq!(harms(0.7, &w), Some([true, true, false]));
        assert_eq!(harms(0.9, &w), Some([true, true, true]));
        assert_eq!(harms(0.55, &w), None);
        let links = [
            link("a", 0, 0.1, 0.6, "x"),
            link("b", 0, 0.1, 0.0, "x"),
            link("c", 0, 0.1, 0.2, "x"),
        ];
        let m = ImpactMix::of(&links, &w);
        assert_eq!(
            (m.segments, m.failure, m.abandonment, m.confusion, m.none),
            (3, 1, 2, 0, 1)
        );
    }

    #[test]
    fn occurrences_count_sessions_per_day() {
        let links = [
            link("a", 10, 0.1, 0.0, "x"),
            link("a", 20, 0.1, 0.0, "x"),
            link("b", DAY_MS + 5, 0.1, 0.0, "x"),
            link("c", 3 * DAY_MS, 0.1, 0.0, "x"),
            link("d", -5, 0.1, 0.0, "x"),
        ];
        assert_eq!(occurrences_per_day(&links, 0, 3), vec![1, 1, 0]);
    }

    #[test]
    fn central_descriptions_come_one_per_session() {
        let links = vec![
            link("a", 0, 0.30, 0.0, "far"),
            link("a", 1, 0.05, 0.0, "a near"),
            link("a", 2, 0.06, 0.0, "a second"),
            link("b", 3, 0.10, 0.0, "b"),
            link("c", 4, 0.01, 0.0, ""),
        ];
        let c: Vec<String> = most_central(links, 5)
            .into_iter()
            .map(|l| l.content)
            .collect();
        assert_eq!(c, vec!["a near", "b"]);
    }
}
