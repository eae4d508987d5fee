//! `segclust evaluate`: how well a team's Tasks recover problems known in advance.
//!
//! Parity with scikit-learn says the clustering is computed right; it cannot say whether the
//! Tasks are the right ones for a given embedding model and thresholds. For that a team labels
//! some segments by hand (or uses the demo's ground truth, `segclust demo --truth`) and compares
//! what the store holds after a run with those labels. The store is read as it is, so the score
//! covers everything a run does after clustering too: rescue of high-impact noise, matching to
//! earlier Tasks across batches, carry-over.
//!
//! The truth is a JSON Lines file, one object per labelled segment:
//! `{"document_id": "...", "problem": "Checkout Pay button does nothing"}`, with `"problem":
//! null` for a segment that shows no problem (ordinary use). Problem names are free text; only
//! equality matters.
//!
//! Definitions (segments below are labelled segments only):
//! - A Task is *about* the label most of its segments carry (ordinary use counts as a label;
//!   ties go to a problem, then to the smaller name), so every Task is about exactly one thing.
//! - A problem is *found* when at least one Task is about it. Tasks beyond the first about one
//!   problem are *duplicates*: the same problem reported twice, which matching should prevent.
//! - A Task is *mixed* when it holds segments of two or more problems.
//! - *Segments in their Task*: the share of problem segments linked to a Task about their own
//!   problem (unlinked ones, and ones swallowed by another problem's Task, count against it).
//! - B-cubed precision and recall and the adjusted Rand index compare the partition of problem
//!   segments into Tasks with the partition into problems; an unlinked segment is a cluster of
//!   its own. Ordinary segments are left out of these (they are many unrelated activities, not
//!   one class) and are scored by the two counts of their own.

use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::pipeline::StoreArgs;
use crate::store::Store;

const EXAMPLES: &str = "Examples:
  segclust demo --source /tmp/d.parquet --store sqlite:///tmp/d.db --truth /tmp/truth.jsonl
  segclust evaluate --store sqlite:///tmp/d.db --truth /tmp/truth.jsonl
  segclust evaluate --store postgres://segclust@db/segclust --team 7 --truth labelled.jsonl --problems
  bash tools/quality/run.sh      # the demo with a real embedding model (all-MiniLM-L6-v2)

The truth file is JSON Lines: {\"document_id\": \"...\", \"problem\": \"name\" or null}.";

#[derive(Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct EvaluateArgs {
    #[command(flatten)]
    pub store: StoreArgs,
    #[arg(long, default_value_t = 1)]
    pub team: i64,
    /// The known problem of each labelled segment: JSON Lines of {"document_id": ...,
    /// "problem": "name" or null for ordinary use}.
    #[arg(long)]
    pub truth: PathBuf,
    /// Also one line per problem: its segments, where they went, how many Tasks it got.
    #[arg(long)]
    pub problems: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// One line of a truth file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Labelled {
    pub document_id: String,
    /// `None`: the segment shows ordinary use, no problem.
    pub problem: Option<String>,
}

#[derive(Deserialize)]
struct Line {
    document_id: String,
    /// Outer `None`: the key is missing; `Some(None)`: `null`, ordinary use.
    #[serde(default, deserialize_with = "present")]
    problem: Option<Option<String>>,
}

fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Option::<String>::deserialize(d).map(Some)
}

/// Reads a truth file; every error names the file and the line.
pub fn read_truth(path: &Path) -> Result<Vec<Labelled>> {
    let file = std::fs::File::open(path)
        .with_context(|| format!("opening the truth file {}", path.display()))?;
    let mut out = Vec::new();
    let mut seen: HashMap<String, usize> = HashMap::new();
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let n = i + 1;
        let line = line.with_context(|| format!("{}:{n}: reading", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let expected = || {
            format!(
                "{}:{n}: expected {{\"document_id\": \"...\", \"problem\": \"name\" or null}}",
                path.display()
            )
        };
        let line: Line = serde_json::from_str(&line).with_context(expected)?;
        // A missing key is an error, not ordinary use: a misspelt "Problem" must not silently
        // turn a labelled problem into a no-problem segment.
        let Some(problem) = line.problem else {
            bail!("{}: the \"problem\" key is missing", expected());
        };
        let l = Labelled {
            document_id: line.document_id,
            problem,
        };
        if let Some(first) = seen.insert(l.document_id.clone(), n) {
            bail!(
                "{}:{n}: document_id {:?} is labelled twice (first on line {first}); keep one label \
                 per segment",
                path.display(),
                l.document_id
            );
        }
        out.push(l);
    }
    if out.is_empty() {
        bail!("the truth file {} labels no segment", path.display());
    }
    Ok(out)
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ProblemScore {
    pub problem: String,
    pub segments: usize,
    /// Linked to a Task about this problem.
    pub in_own_tasks: usize,
    /// Linked to a Task about something else.
    pub elsewhere: usize,
    pub unlinked: usize,
    /// Tasks about this problem (1 is right; 0 not found; more are duplicates).
    pub tasks: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Scores {
    pub segments: usize,
    pub problem_segments: usize,
    pub ordinary_segments: usize,
    /// Labelled segments linked to a Task.
    pub linked: usize,
    /// The team's links to segments the truth file does not label (not scored).
    pub unlabelled_links: usize,
    pub problems: usize,
    pub problems_found: usize,
    /// Problems with at least 2 labelled segments: what clustering can find (a single segment
    /// becomes a Task only by the high-impact rescue, or by matching an earlier Task).
    pub recurring_problems: usize,
    pub recurring_found: usize,
    /// Tasks holding at least one labelled segment.
    pub tasks: usize,
    pub problem_tasks: usize,
    pub ordinary_tasks: usize,
    pub duplicate_tasks: usize,
    pub mixed_tasks: usize,
    pub ordinary_in_problem_tasks: usize,
    pub segments_in_their_task: f64,
    pub bcubed_precision: f64,
    pub bcubed_recall: f64,
    pub bcubed_f1: f64,
    pub adjusted_rand_index: f64,
    pub per_problem: Vec<ProblemScore>,
    /// What each Task holding labelled segments is about (`None`: ordinary use), by Task id.
    pub task_about: BTreeMap<i64, Option<String>>,
    /// How far apart the Tasks' centroids are, by what they are about; `None` when the store's
    /// centroids were not given (or there are too many Tasks to compare every pair).
    pub separation: Option<Separation>,
}

/// Cosine distances between Task centroids, grouped by what the Tasks are about. A run puts a
/// cluster into an existing Task (and merges the new clusters of one batch) when their
/// centroids are nearer than the Task match threshold, so these distances say where that
/// threshold would have merged duplicates and where it would have merged different problems,
/// without a rerun. It is an estimate: Task centroids are averages over all batches, while a
/// run compares each batch's clusters as they come.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Separation {
    /// Distances between Tasks about the same problem, ascending: what a threshold must exceed
    /// to merge each duplicate.
    pub same_problem: Vec<f64>,
    /// The closest two Tasks about different problems.
    pub closest_different: Option<Pair>,
    /// The closest problem Task to an ordinary-use Task.
    pub closest_ordinary: Option<Pair>,
    pub sweep: Vec<SweepRow>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Pair {
    pub tasks: (i64, i64),
    pub about: (Option<String>, Option<String>),
    pub distance: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SweepRow {
    pub threshold: f64,
    /// Pairs of Tasks about the same problem nearer than the threshold (would be one Task).
    pub duplicates_merged: usize,
    /// Pairs of Tasks about different problems nearer than the threshold.
    pub problems_merged: usize,
    /// Pairs of a problem Task and an ordinary-use Task nearer than the threshold.
    pub ordinary_merged: usize,
}

/// Beyond this many Tasks the pairwise comparison is left out (it grows with the square).
pub const MOST_TASKS_COMPARED: usize = 5_000;

/// Thresholds the sweep reports, around the design's 0.3.
const SWEEP: [f64; 9] = [0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6];

/// Compares the centroids of every pair of Tasks in `about` (Tasks without a centroid in
/// `centroids` are left out).
pub fn separation(
    about: &BTreeMap<i64, Option<String>>,
    centroids: &HashMap<i64, Vec<f32>>,
) -> Option<Separation> {
    let tasks: Vec<(i64, &Option<String>, &[f32])> = about
        .iter()
        .filter_map(|(t, a)| centroids.get(t).map(|c| (*t, a, c.as_slice())))
        .collect();
    if tasks.len() > MOST_TASKS_COMPARED {
        return None;
    }
    let mut same = Vec::new();
    let mut different = Vec::new();
    let mut ordinary = Vec::new();
    let (mut closest_different, mut closest_ordinary): (Option<Pair>, Option<Pair>) = (None, None);
    for (i, (ta, aa, ca)) in tasks.iter().enumerate() {
        for (tb, ab, cb) in &tasks[i + 1..] {
            if ca.len() != cb.len() {
                continue;
            }
            let d = crate::matrix::cosine_distance_unit(ca, cb);
            let pair = || Pair {
                tasks: (*ta, *tb),
                about: ((*aa).clone(), (*ab).clone()),
                distance: d,
            };
            let (list, closest) = match (aa, ab) {
                (None, None) => continue,
                (Some(a), Some(b)) if a == b => {
                    same.push(d);
                    continue;
                }
                (Some(_), Some(_)) => (&mut different, &mut closest_different),
                _ => (&mut ordinary, &mut closest_ordinary),
            };
            list.push(d);
            if closest.as_ref().is_none_or(|c| d < c.distance) {
                *closest = Some(pair());
            }
        }
    }
    same.sort_by(f64::total_cmp);
    let within = |v: &[f64], t: f64| v.iter().filter(|&&d| d < t).count();
    let sweep = SWEEP
        .iter()
        .map(|&t| SweepRow {
            threshold: t,
            duplicates_merged: within(&same, t),
            problems_merged: within(&different, t),
            ordinary_merged: within(&ordinary, t),
        })
        .collect();
    Some(Separation {
        same_problem: same,
        closest_different,
        closest_ordinary,
        sweep,
    })
}

/// What a Task is about: its plurality label (`None`: ordinary use).
fn about<'a>(counts: &BTreeMap<Option<&'a str>, usize>) -> Option<&'a str> {
    // Ties go to a problem over ordinary use, then to the smaller name: `Some` sorts after
    // `None`, so compare with the option reversed into "problem first".
    counts
        .iter()
        .max_by(|(la, ca), (lb, cb)| {
            ca.cmp(cb)
                .then(la.is_some().cmp(&lb.is_some()))
                .then(lb.cmp(la))
        })
        .and_then(|(label, _)| *label)
}

fn pairs(n: usize) -> f64 {
    let n = n as f64;
    n * (n - 1.0) / 2.0
}

/// Adjusted Rand index of two partitions given as a contingency table (scikit-learn's
/// `adjusted_rand_score`, including its answer of 1 where both partitions are trivial).
fn adjusted_rand(cells: &HashMap<(usize, usize), usize>, rows: &[usize], cols: &[usize]) -> f64 {
    let n: usize = rows.iter().sum();
    let index: f64 = cells.values().map(|&c| pairs(c)).sum();
    let a: f64 = rows.iter().map(|&c| pairs(c)).sum();
    let b: f64 = cols.iter().map(|&c| pairs(c)).sum();
    let total = pairs(n);
    if total == 0.0 {
        return 1.0;
    }
    let expected = a * b / total;
    let max = (a + b) / 2.0;
    if max == expected {
        return 1.0;
    }
    (index - expected) / (max - expected)
}

/// Scores the team's links (`document_id` -> Task id) against the truth.
pub fn score(truth: &[Labelled], links: &HashMap<String, i64>) -> Scores {
    let labelled: HashMap<&str, Option<&str>> = truth
        .iter()
        .map(|l| (l.document_id.as_str(), l.problem.as_deref()))
        .collect();
    let unlabelled_links = links
        .keys()
        .filter(|d| !labelled.contains_key(d.as_str()))
        .count();

    // Per Task: how many labelled segments of each label it holds.
    let mut task_counts: BTreeMap<i64, BTreeMap<Option<&str>, usize>> = BTreeMap::new();
    for l in truth {
        if let Some(&t) = links.get(&l.document_id) {
            *task_counts
                .entry(t)
                .or_default()
                .entry(l.problem.as_deref())
                .or_default() += 1;
        }
    }
    let task_about: BTreeMap<i64, Option<&str>> =
        task_counts.iter().map(|(&t, c)| (t, about(c))).collect();

    let mut per: BTreeMap<&str, ProblemScore> = BTreeMap::new();
    for l in truth {
        let Some(p) = l.problem.as_deref() else {
            continue;
        };
        let s = per.entry(p).or_insert_with(|| ProblemScore {
            problem: p.to_string(),
            segments: 0,
            in_own_tasks: 0,
            elsewhere: 0,
            unlinked: 0,
            tasks: 0,
        });
        s.segments += 1;
        match links.get(&l.document_id) {
            None => s.unlinked += 1,
            Some(t) if task_about.get(t) == Some(&Some(p)) => s.in_own_tasks += 1,
            Some(_) => s.elsewhere += 1,
        }
    }
    for a in task_about.values().flatten() {
        if let Some(s) = per.get_mut(a) {
            s.tasks += 1;
        }
    }

    let problem_segments: usize = per.values().map(|s| s.segments).sum();
    let in_own: usize = per.values().map(|s| s.in_own_tasks).sum();
    let mixed_tasks = task_counts
        .values()
        .filter(|c| c.keys().filter(|l| l.is_some()).count() >= 2)
        .count();
    let ordinary_in_problem_tasks = task_counts
        .iter()
        .filter(|(t, _)| task_about[*t].is_some())
        .map(|(_, c)| c.get(&None).copied().unwrap_or(0))
        .sum();

    // The partition of problem segments: by problem (rows) and by Task (columns; an unlinked
    // segment is a column of its own).
    let problem_index: HashMap<&str, usize> =
        per.keys().enumerate().map(|(i, p)| (*p, i)).collect();
    let mut column_of_task: HashMap<i64, usize> = HashMap::new();
    let mut cols: Vec<usize> = Vec::new();
    let mut rows = vec![0usize; per.len()];
    let mut cells: HashMap<(usize, usize), usize> = HashMap::new();
    for l in truth {
        let Some(p) = l.problem.as_deref() else {
            continue;
        };
        let r = problem_index[p];
        let c = match links.get(&l.document_id) {
            Some(&t) => *column_of_task.entry(t).or_insert_with(|| {
                cols.push(0);
                cols.len() - 1
            }),
            None => {
                cols.push(0);
                cols.len() - 1
            }
        };
        rows[r] += 1;
        cols[c] += 1;
        *cells.entry((r, c)).or_default() += 1;
    }
    // B-cubed: for each segment, the share of its Task's problem segments that share its
    // problem (precision) and the share of its problem's segments in its Task (recall).
    let (mut bp, mut br) = (0.0, 0.0);
    for (&(r, c), &k) in &cells {
        bp += k as f64 * k as f64 / cols[c] as f64;
        br += k as f64 * k as f64 / rows[r] as f64;
    }
    let share = |x: f64, n: usize| if n == 0 { 0.0 } else { x / n as f64 };
    let bcubed_precision = share(bp, problem_segments);
    let bcubed_recall = share(br, problem_segments);
    let bcubed_f1 = if bcubed_precision + bcubed_recall == 0.0 {
        0.0
    } else {
        2.0 * bcubed_precision * bcubed_recall / (bcubed_precision + bcubed_recall)
    };

    let recurring = per.values().filter(|s| s.segments >= 2);
    Scores {
        segments: truth.len(),
        problem_segments,
        ordinary_segments: truth.len() - problem_segments,
        linked: truth
            .iter()
            .filter(|l| links.contains_key(&l.document_id))
            .count(),
        unlabelled_links,
        problems: per.len(),
        problems_found: per.values().filter(|s| s.tasks > 0).count(),
        recurring_problems: recurring.clone().count(),
        recurring_found: recurring.filter(|s| s.tasks > 0).count(),
        tasks: task_counts.len(),
        problem_tasks: task_about.values().filter(|a| a.is_some()).count(),
        ordinary_tasks: task_about.values().filter(|a| a.is_none()).count(),
        duplicate_tasks: per.values().map(|s| s.tasks.saturating_sub(1)).sum(),
        mixed_tasks,
        ordinary_in_problem_tasks,
        segments_in_their_task: share(in_own as f64, problem_segments),
        bcubed_precision,
        bcubed_recall,
        bcubed_f1,
        adjusted_rand_index: if problem_segments == 0 {
            0.0
        } else {
            adjusted_rand(&cells, &rows, &cols)
        },
        per_problem: per.into_values().collect(),
        task_about: task_about
            .iter()
            .map(|(&t, a)| (t, a.map(str::to_string)))
            .collect(),
        separation: None,
    }
}

pub async fn evaluate_cmd(a: EvaluateArgs) -> Result<()> {
    let truth = read_truth(&a.truth)?;
    let store = Store::connect(&a.store.store).await?;
    let links: HashMap<String, i64> = store.task_of_segments(a.team).await?.into_iter().collect();
    let centroids: HashMap<i64, Vec<f32>> = store
        .tasks(a.team)
        .await?
        .into_iter()
        .map(|t| (t.id, t.centroid))
        .collect();
    store.close().await;
    let mut s = score(&truth, &links);
    s.separation = separation(&s.task_about, &centroids);
    if a.json {
        crate::outln!("{}", serde_json::to_string_pretty(&s)?)?;
        return Ok(());
    }
    print_scores(a.team, &s, a.problems)
}

fn pct(x: f64) -> String {
    format!("{:.1}%", 100.0 * x)
}

fn print_scores(team: i64, s: &Scores, problems: bool) -> Result<()> {
    crate::outln!(
        "team {team}: {} labelled segments ({} show a problem, {} ordinary use), {} of them linked \
         to {} Tasks",
        s.segments,
        s.problem_segments,
        s.ordinary_segments,
        s.linked,
        s.tasks
    )?;
    if s.unlabelled_links > 0 {
        crate::outln!(
            "({} linked segments are not in the truth file and are not scored)",
            s.unlabelled_links
        )?;
    }
    let rows: [(&str, String, &str); 9] = [
        (
            "problems found",
            format!("{} of {}", s.problems_found, s.problems),
            "a Task is about the problem",
        ),
        (
            "recurring problems found",
            format!("{} of {}", s.recurring_found, s.recurring_problems),
            "problems with 2 or more segments",
        ),
        (
            "segments in their Task",
            pct(s.segments_in_their_task),
            "problem segments linked to a Task about their problem",
        ),
        (
            "duplicate Tasks",
            s.duplicate_tasks.to_string(),
            "Tasks beyond the first about one problem",
        ),
        (
            "mixed Tasks",
            s.mixed_tasks.to_string(),
            "Tasks holding two or more problems",
        ),
        (
            "ordinary-use Tasks",
            s.ordinary_tasks.to_string(),
            "Tasks mostly of segments that show no problem",
        ),
        (
            "ordinary segments in problem Tasks",
            s.ordinary_in_problem_tasks.to_string(),
            "",
        ),
        (
            "B-cubed precision / recall",
            format!("{:.3} / {:.3}", s.bcubed_precision, s.bcubed_recall),
            "problem segments; F1 below",
        ),
        (
            "B-cubed F1, adjusted Rand",
            format!("{:.3}, {:.3}", s.bcubed_f1, s.adjusted_rand_index),
            "1 = Tasks are exactly the problems",
        ),
    ];
    for (name, value, note) in rows {
        crate::outln!("  {name:<36} {value:<14} {note}")?;
    }
    match &s.separation {
        Some(sep) => print_separation(sep)?,
        None if s.tasks > MOST_TASKS_COMPARED => {
            crate::outln!("(Task centroids not compared: more than {MOST_TASKS_COMPARED} Tasks)")?
        }
        None => {}
    }
    if problems {
        crate::outln!()?;
        crate::outln!(
            "  {:>8} {:>8} {:>9} {:>8} {:>5}  problem",
            "segments",
            "in Task",
            "elsewhere",
            "unlinked",
            "Tasks"
        )?;
        let mut per = s.per_problem.clone();
        per.sort_by(|a, b| b.segments.cmp(&a.segments).then(a.problem.cmp(&b.problem)));
        for p in &per {
            crate::outln!(
                "  {:>8} {:>8} {:>9} {:>8} {:>5}  {}",
                p.segments,
                p.in_own_tasks,
                p.elsewhere,
                p.unlinked,
                p.tasks,
                p.problem
            )?;
        }
    }
    Ok(())
}

fn print_separation(sep: &Separation) -> Result<()> {
    let name = |a: &Option<String>| a.as_deref().unwrap_or("ordinary use").to_string();
    crate::outln!()?;
    crate::outln!(
        "Task centroids (cosine distance; a run merges what is nearer than --task-match-threshold, \
         0.3 by default):"
    )?;
    if let Some(d) = sep.same_problem.last() {
        crate::outln!(
            "  {} pairs of Tasks about one problem, {:.3} to {:.3} apart",
            sep.same_problem.len(),
            sep.same_problem[0],
            d
        )?;
    }
    for (what, pair) in [
        ("different problems", &sep.closest_different),
        ("a problem and ordinary use", &sep.closest_ordinary),
    ] {
        if let Some(p) = pair {
            crate::outln!(
                "  closest {what}: {:.3} (Task {} {:?}, Task {} {:?})",
                p.distance,
                p.tasks.0,
                name(&p.about.0),
                p.tasks.1,
                name(&p.about.1)
            )?;
        }
    }
    crate::outln!(
        "  {:>9} {:>18} {:>18} {:>18}",
        "threshold",
        "duplicates merged",
        "problems merged",
        "ordinary merged"
    )?;
    for r in &sep.sweep {
        crate::outln!(
            "  {:>9.2} {:>18} {:>18} {:>18}",
            r.threshold,
            format!("{} of {}", r.duplicates_merged, sep.same_problem.len()),
            r.problems_merged,
            r.ordinary_merged
        )?;
    }
    crate::outln!(
        "  (pairs of today's Tasks: an estimate of what another threshold would do; rerun and \
         evaluate to confirm)"
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn truth(rows: &[(&str, Option<&str>)]) -> Vec<Labelled> {
        rows.iter()
            .map(|(d, p)| Labelled {
                document_id: d.to_string(),
                problem: p.map(str::to_string),
            })
            .collect()
    }

    fn links(rows: &[(&str, i64)]) -> HashMap<String, i64> {
        rows.iter().map(|(d, t)| (d.to_string(), *t)).collect()
    }

    #[test]
    fn tasks_that_are_the_problems_score_one() {
        let t = truth(&[
            ("a1", Some("A")),
            ("a2", Some("A")),
            ("b1", Some("B")),
            ("b2", Some("B")),
            ("b3", Some("B")),
            ("o1", None),
        ]);
        let s = score(
            &t,
            &links(&[("a1", 1), ("a2", 1), ("b1", 2), ("b2", 2), ("b3", 2)]),
        );
        assert_eq!((s.problems, s.problems_found, s.tasks), (2, 2, 2));
        assert_eq!(
            (s.duplicate_tasks, s.mixed_tasks, s.ordinary_tasks),
            (0, 0, 0)
        );
        assert_eq!(s.segments_in_their_task, 1.0);
        assert_eq!((s.bcubed_precision, s.bcubed_recall), (1.0, 1.0));
        assert_eq!(s.adjusted_rand_index, 1.0);
        assert_eq!((s.linked, s.ordinary_segments), (5, 1));
    }

    /// Hand-computed: A = {a1..a4} split over Tasks 1 and 2 (a duplicate), B = {b1, b2} merged
    /// into Task 2 with a2 (mixed), b3 unlinked, one ordinary segment in Task 1 and two making
    /// Task 3 of their own.
    #[test]
    fn splits_merges_and_misses_are_counted_as_defined() {
        let t = truth(&[
            ("a1", Some("A")),
            ("a2", Some("A")),
            ("a3", Some("A")),
            ("a4", Some("A")),
            ("b1", Some("B")),
            ("b2", Some("B")),
            ("b3", Some("B")),
            ("o1", None),
            ("o2", None),
            ("o3", None),
        ]);
        let l = links(&[
            ("a1", 1),
            ("a3", 1),
            ("a4", 1),
            ("a2", 2),
            ("b1", 2),
            ("b2", 2),
            ("o1", 1),
            ("o2", 3),
            ("o3", 3),
            ("x9", 3), // not labelled
        ]);
        let s = score(&t, &l);
        // Task 1 is about A (3 A, 1 ordinary), Task 2 about B (2 B, 1 A), Task 3 ordinary.
        assert_eq!((s.problem_tasks, s.ordinary_tasks), (2, 1));
        assert_eq!(
            (s.problems_found, s.duplicate_tasks, s.mixed_tasks),
            (2, 0, 1)
        );
        assert_eq!(s.ordinary_in_problem_tasks, 1);
        assert_eq!(s.unlabelled_links, 1);
        assert_eq!(s.linked, 9);
        // a1, a3, a4 and b1, b2 are in their Task: 5 of 7.
        assert!((s.segments_in_their_task - 5.0 / 7.0).abs() < 1e-12);
        let a = &s.per_problem[0];
        assert_eq!(
            (a.segments, a.in_own_tasks, a.elsewhere, a.unlinked, a.tasks),
            (4, 3, 1, 0, 1)
        );
        let b = &s.per_problem[1];
        assert_eq!(
            (b.segments, b.in_own_tasks, b.elsewhere, b.unlinked, b.tasks),
            (3, 2, 0, 1, 1)
        );
        // Problem segments by Task: Task 1 {a1,a3,a4}, Task 2 {a2,b1,b2}, {b3} alone.
        // Precision: a1,a3,a4 1 each; a2 1/3; b1,b2 2/3 each; b3 1 -> (3 + 1/3 + 4/3 + 1) / 7.
        let p = (3.0 + 1.0 / 3.0 + 4.0 / 3.0 + 1.0) / 7.0;
        // Recall: a1,a3,a4 3/4 each; a2 1/4; b1,b2 2/3 each; b3 1/3 -> (9/4 + 1/4 + 4/3 + 1/3) / 7.
        let r = (9.0 / 4.0 + 1.0 / 4.0 + 4.0 / 3.0 + 1.0 / 3.0) / 7.0;
        assert!((s.bcubed_precision - p).abs() < 1e-12);
        assert!((s.bcubed_recall - r).abs() < 1e-12);
        // ARI: cells 3, 1, 2, 1 -> index 3 + 0 + 1 + 0 = 4; rows 4, 3 -> a = 6 + 3 = 9;
        // columns 3, 3, 1 -> b = 3 + 3 = 6; total C(7,2) = 21; expected 9 * 6 / 21 = 18/7;
        // max 7.5 -> (4 - 18/7) / (7.5 - 18/7) = (10/7) / (69/14) = 20/69.
        assert!((s.adjusted_rand_index - 20.0 / 69.0).abs() < 1e-12);
    }

    #[test]
    fn a_problem_split_in_two_tasks_is_a_duplicate_and_unfound_is_zero_tasks() {
        let t = truth(&[
            ("a1", Some("A")),
            ("a2", Some("A")),
            ("a3", Some("A")),
            ("a4", Some("A")),
            ("c1", Some("C")),
            ("c2", Some("C")),
            ("d1", Some("D")),
        ]);
        let s = score(&t, &links(&[("a1", 1), ("a2", 1), ("a3", 2), ("a4", 2)]));
        assert_eq!((s.problems, s.problems_found, s.duplicate_tasks), (3, 1, 1));
        assert_eq!((s.recurring_problems, s.recurring_found), (2, 1));
        assert_eq!(s.per_problem[1].tasks, 0);
        // Nothing was merged, so precision is perfect; recall is not.
        assert_eq!(s.bcubed_precision, 1.0);
        assert!(s.bcubed_recall < 1.0);
    }

    /// Three Tasks about A (two near, one farther), one about B, one ordinary, on the unit
    /// circle so the distances are 1 - cos(angle).
    #[test]
    fn separation_sorts_pairs_by_what_their_tasks_are_about() {
        let at = |deg: f64| {
            let r = deg.to_radians();
            vec![r.cos() as f32, r.sin() as f32]
        };
        let about: BTreeMap<i64, Option<String>> = [
            (1, Some("A")),
            (2, Some("A")),
            (3, Some("A")),
            (4, Some("B")),
            (5, None),
            (6, Some("C")), // no centroid: left out
        ]
        .into_iter()
        .map(|(t, a)| (t, a.map(str::to_string)))
        .collect();
        let centroids: HashMap<i64, Vec<f32>> = [
            (1, at(0.0)),
            (2, at(20.0)),
            (3, at(50.0)),
            (4, at(90.0)),
            (5, at(180.0)),
        ]
        .into_iter()
        .collect();
        let sep = separation(&about, &centroids).expect("few Tasks");
        let d = |deg: f64| 1.0 - deg.to_radians().cos();
        let close = |a: f64, b: f64| (a - b).abs() < 1e-6;
        // A-A pairs: 20, 30 and 50 degrees.
        assert_eq!(sep.same_problem.len(), 3);
        for (got, want) in sep.same_problem.iter().zip([20.0, 30.0, 50.0]) {
            assert!(close(*got, d(want)), "{got} vs {}", d(want));
        }
        let diff = sep.closest_different.expect("A and B");
        assert_eq!(diff.tasks, (3, 4));
        assert!(close(diff.distance, d(40.0)));
        let ord = sep.closest_ordinary.expect("ordinary");
        assert_eq!(ord.tasks, (4, 5));
        assert!(close(ord.distance, d(90.0)));
        // At 0.3 (about 45.6 degrees): two A-A pairs, one A-B pair (3-4 at 40 degrees).
        let row = sep.sweep.iter().find(|r| r.threshold == 0.3).expect("0.3");
        assert_eq!(
            (
                row.duplicates_merged,
                row.problems_merged,
                row.ordinary_merged
            ),
            (2, 1, 0)
        );
    }

    #[test]
    fn a_tie_goes_to_the_problem() {
        let t = truth(&[("a1", Some("A")), ("o1", None)]);
        let s = score(&t, &links(&[("a1", 1), ("o1", 1)]));
        assert_eq!((s.problem_tasks, s.ordinary_tasks), (1, 0));
        assert_eq!(s.ordinary_in_problem_tasks, 1);
    }

    #[test]
    fn truth_files_with_mistakes_are_errors_naming_the_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).expect("write");
            p
        };
        let ok = write(
            "ok.jsonl",
            "{\"document_id\": \"s:1\", \"problem\": \"A\"}\n\n{\"document_id\": \"s:2\", \"problem\": null}\n",
        );
        assert_eq!(read_truth(&ok).expect("reads").len(), 2);
        let twice = write(
            "twice.jsonl",
            "{\"document_id\": \"s:1\", \"problem\": \"A\"}\n{\"document_id\": \"s:1\", \"problem\": \"B\"}\n",
        );
        let e = format!(
            "{:#}",
            read_truth(&twice).expect_err("a segment labelled twice")
        );
        assert!(
            e.contains("twice.jsonl:2") && e.contains("first on line 1"),
            "{e}"
        );
        let bad = write(
            "bad.jsonl",
            "{\"document_id\": \"s:1\", \"problem\": null, \"note\": \"kept\"}\nnot json\n",
        );
        let e = format!("{:#}", read_truth(&bad).expect_err("not JSON"));
        assert!(e.contains("bad.jsonl:2"), "{e}");
        let typo = write(
            "typo.jsonl",
            "{\"document_id\": \"s:1\", \"Problem\": \"A\"}\n",
        );
        let e = format!("{:#}", read_truth(&typo).expect_err("no problem key"));
        assert!(e.contains("typo.jsonl:1") && e.contains("missing"), "{e}");
        let empty = write("empty.jsonl", "\n");
        assert!(read_truth(&empty).is_err());
        assert!(read_truth(&dir.path().join("missing.jsonl")).is_err());
    }
}
