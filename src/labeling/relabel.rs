//! `segclust relabel`: new labels for existing Tasks, from the LLM.
//!
//! A Task's links carry each segment's distance to the Task's centroid and its description, so
//! the most central segments and what they say are known without re-clustering or the source.
//! Only links stored before descriptions were kept (content '') are read back from a source, by
//! document id, when one is given. The request is then the same as for a new Task: up to five
//! descriptions from distinct sessions, closest first, and the Task's metrics.
//!
//! Only an LLM label is written: when the LLM gives none for a Task, the Task keeps the label it
//! had (a fallback label stays marked as such, an older LLM label is not downgraded). `run`
//! calls [`relabel_team`] for fallback-labelled Tasks before each team's batches.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Result, bail};
use clap::Args;
use serde::Serialize;

use super::{
    ConfiguredLabeler, LabelRequest, LabelSource, Labeler, LlmArgs, MAX_DESCRIPTIONS, label_all,
};
use crate::pipeline::StoreArgs;
use crate::source::Source;
use crate::store::{Link, Store, Task};

/// Links looked at per Task: more than [`MAX_DESCRIPTIONS`] in case some have no description.
const CANDIDATES_PER_TASK: usize = 4 * MAX_DESCRIPTIONS;

#[derive(Args, Debug)]
pub struct RelabelArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    /// Segments file the Tasks were made from. Needed only for stores older than the link
    /// descriptions (links made then have none; they are read back from this file by id).
    #[arg(long, env = "SEGCLUST_SOURCE")]
    pub source: Option<PathBuf>,
    /// Team whose Tasks are relabelled.
    #[arg(long, default_value_t = 1)]
    pub team: i64,
    /// Relabel only Tasks whose label was written without an LLM.
    #[arg(long)]
    pub only_fallback: bool,
    /// Current time as ms since the epoch (the Tasks' updated_at); default: the clock.
    #[arg(long)]
    pub now_ms: Option<i64>,
    #[command(flatten)]
    pub llm: LlmArgs,
}

/// What a relabelling did for one team.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RelabelReport {
    pub team_id: i64,
    /// Tasks selected (all, or the fallback-labelled ones).
    pub considered: usize,
    /// Tasks that got a new LLM label.
    pub relabelled: usize,
    /// Tasks that kept their label because the LLM gave none.
    pub kept: usize,
    /// Tasks with no description to label from (old links, and no source that still has them).
    pub no_descriptions: usize,
}

/// Relabels the team's Tasks (only fallback-labelled ones with `only_fallback`) with `labeler`,
/// which should be an LLM labeler: only LLM labels are written. `source` serves only links
/// stored without their description.
pub async fn relabel_team(
    source: Option<&Arc<Source>>,
    store: &Store,
    labeler: &impl Labeler,
    team: i64,
    only_fallback: bool,
    now_ms: i64,
) -> Result<RelabelReport> {
    let tasks: Vec<Task> = store
        .tasks(team)
        .await?
        .into_iter()
        .filter(|t| !only_fallback || t.label_source == LabelSource::Fallback)
        .collect();
    let mut report = RelabelReport {
        team_id: team,
        considered: tasks.len(),
        ..Default::default()
    };
    if tasks.is_empty() {
        return Ok(report);
    }
    let mut candidates = Vec::with_capacity(tasks.len());
    for t in &tasks {
        candidates.push(central_links(store.links(team, t.id).await?));
    }
    let missing: Vec<String> = candidates
        .iter()
        .flatten()
        .filter(|l| l.content.trim().is_empty())
        .map(|l| l.document_id.clone())
        .collect();
    let from_source: HashMap<String, String> = match source {
        Some(source) if !missing.is_empty() => source
            .read_by_ids(team, &missing)
            .await?
            .rows
            .into_iter()
            .map(|r| (r.document_id, r.content))
            .collect(),
        _ => HashMap::new(),
    };
    let description = |l: &Link| -> Option<String> {
        let d = if l.content.trim().is_empty() {
            from_source.get(&l.document_id)?
        } else {
            &l.content
        };
        (!d.trim().is_empty()).then(|| d.clone())
    };

    let mut chosen: Vec<(&Task, LabelRequest)> = Vec::new();
    for (task, links) in tasks.iter().zip(&candidates) {
        let descriptions: Vec<String> = links
            .iter()
            .filter_map(description)
            .take(MAX_DESCRIPTIONS)
            .collect();
        if descriptions.is_empty() {
            report.no_descriptions += 1;
            continue;
        }
        chosen.push((
            task,
            LabelRequest {
                descriptions,
                segment_count: usize::try_from(task.segment_count).unwrap_or(0),
                distinct_users: usize::try_from(task.distinct_user_count).unwrap_or(0),
                mean_impact: task.impact,
            },
        ));
    }
    let requests: Vec<LabelRequest> = chosen.iter().map(|(_, r)| r.clone()).collect();
    let labels = label_all(labeler, &requests).await;
    for ((task, _), label) in chosen.iter().zip(labels) {
        if label.source != LabelSource::Llm {
            report.kept += 1;
            continue;
        }
        let found = store.update_label(team, task.id, &label, now_ms).await?;
        if found {
            report.relabelled += 1;
        }
    }
    Ok(report)
}

/// The links whose descriptions a label is written from: closest to the centroid first, one per
/// session, at most [`CANDIDATES_PER_TASK`].
fn central_links(mut links: Vec<Link>) -> Vec<Link> {
    links.sort_by(|a, b| {
        a.distance
            .total_cmp(&b.distance)
            .then_with(|| a.document_id.cmp(&b.document_id))
    });
    let mut sessions = HashSet::new();
    links
        .into_iter()
        .filter(|l| sessions.insert(l.session_id.clone()))
        .take(CANDIDATES_PER_TASK)
        .collect()
}

pub async fn relabel_cmd(a: RelabelArgs) -> Result<ExitCode> {
    let labeler = ConfiguredLabeler::from_config(&a.llm.config())?;
    if !labeler.is_llm() {
        bail!(
            "relabel needs an LLM: set --llm-base-url (SEGCLUST_LLM_BASE_URL) for a local \
             server, or an API key in SEGCLUST_LLM_API_KEY / OPENAI_API_KEY for OpenAI"
        );
    }
    let source = match &a.source {
        Some(path) => Some(Arc::new(Source::open_file(path, a.team)?)),
        None => None,
    };
    let store = Store::connect(&a.store.store).await?;
    let now = a
        .now_ms
        .unwrap_or_else(|| chrono::Utc::now().timestamp_millis());
    let r = relabel_team(
        source.as_ref(),
        &store,
        &labeler,
        a.team,
        a.only_fallback,
        now,
    )
    .await?;
    labeler.log_stats();
    crate::outln!(
        "team {}: {} of {} Tasks relabelled, {} kept their label (the LLM gave none), {} skipped \
         (no description stored{})",
        r.team_id,
        r.relabelled,
        r.considered,
        r.kept,
        r.no_descriptions,
        match &a.source {
            Some(p) => format!(" or in {}", p.display()),
            None => " and no --source given".to_string(),
        }
    )?;
    Ok(if r.kept == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(id: &str, session: &str, distance: f64) -> Link {
        Link {
            task_id: 1,
            team_id: 1,
            document_id: id.to_string(),
            session_id: session.to_string(),
            distinct_id: "u".to_string(),
            distance,
            impact: 0.0,
            timestamp_ms: 0,
            created_at_ms: 0,
            content: String::new(),
        }
    }

    #[test]
    fn central_links_are_closest_first_one_per_session() {
        let links = vec![
            link("c", "s2", 0.3),
            link("a", "s1", 0.1),
            link("b", "s1", 0.05),
            link("d", "s3", 0.1),
        ];
        let ids: Vec<String> = central_links(links)
            .into_iter()
            .map(|l| l.document_id)
            .collect();
        assert_eq!(ids, ["b", "d", "c"]);
    }
}
