//! `segclust tasks`: a team's Tasks by priority, with filters, and `tasks show ID`: one Task with
//! its linked segments, most central first.

use crate::labeling::LabelSource;
use crate::pipeline::StoreArgs;
use crate::priority::{self, Level, PriorityWeights};
use crate::store::{Link, Store, Task};
use anyhow::{Result, bail};
use clap::{Args, Subcommand, ValueEnum};

const TASKS_EXAMPLES: &str = "Examples:
  segclust tasks --store sqlite://segclust.db --team 1
  segclust tasks --level critical --level high --since 7d
  segclust tasks --label-source fallback --json      # Tasks still waiting for an LLM label
  segclust tasks --include-routine                   # also what the LLM judged ordinary use
  segclust tasks show 12 --store sqlite://segclust.db --team 1";

const SHOW_EXAMPLES: &str = "Examples:
  segclust tasks show 12                      # the Task and its 50 most central segments
  segclust tasks show 12 --limit 0 --json     # every linked segment, as JSON";

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, after_help = TASKS_EXAMPLES)]
pub struct TasksArgs {
    #[command(subcommand)]
    pub command: Option<TasksCommand>,
    #[command(flatten)]
    pub list: ListArgs,
}

#[derive(Subcommand, Debug)]
pub enum TasksCommand {
    /// One Task with its linked segments (session, user, time, distance, description).
    #[command(after_help = SHOW_EXAMPLES)]
    Show(ShowArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ListArgs {
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
    /// Only Tasks at these levels (repeat or comma-separate), as of now.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub level: Vec<LevelArg>,
    /// Only Tasks seen since: a duration back from now (30m, 12h, 7d, 2w), a date (2026-11-20),
    /// an RFC 3339 time, or ms since the epoch.
    #[arg(long, value_parser = parse_since_arg)]
    pub since: Option<Since>,
    /// Only Tasks labelled by the LLM or by the offline fallback.
    #[arg(long, value_enum)]
    pub label_source: Option<LabelSourceArg>,
    /// Also list Tasks whose LLM label says they show ordinary use rather than a problem to
    /// fix (`actionable: false`). They are left out by default, and the count left out is said.
    #[arg(long)]
    pub include_routine: bool,
    /// Current time as ms since the epoch, for the recency term and --since; default: the clock.
    #[arg(long)]
    pub now_ms: Option<i64>,
}

impl ListArgs {
    /// The plain listing: no filters, the default limit.
    pub fn new(store: String, team: i64, limit: usize, now_ms: Option<i64>) -> Self {
        ListArgs {
            store: StoreArgs { store },
            team,
            json: false,
            limit,
            level: Vec::new(),
            since: None,
            label_source: None,
            include_routine: false,
            now_ms,
        }
    }
}

#[derive(Args, Debug)]
pub struct ShowArgs {
    /// The Task's id (first column of `segclust tasks`).
    pub id: i64,
    #[command(flatten)]
    pub store: StoreArgs,
    #[arg(long, default_value_t = 1)]
    pub team: i64,
    /// At most this many segments, most central first (0: all).
    #[arg(long, default_value_t = 50)]
    pub limit: usize,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Current time as ms since the epoch, for the recency term; default: the clock.
    #[arg(long)]
    pub now_ms: Option<i64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LevelArg {
    Critical,
    High,
    Medium,
    Low,
}

impl LevelArg {
    fn level(self) -> Level {
        match self {
            LevelArg::Critical => Level::Critical,
            LevelArg::High => Level::High,
            LevelArg::Medium => Level::Medium,
            LevelArg::Low => Level::Low,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LabelSourceArg {
    Llm,
    Fallback,
}

/// `--since`: absolute, or relative to the command's "now" (known only after parsing).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Since {
    AtMs(i64),
    AgoMs(i64),
}

impl Since {
    pub fn at_ms(self, now_ms: i64) -> i64 {
        match self {
            Since::AtMs(t) => t,
            Since::AgoMs(d) => now_ms.saturating_sub(d),
        }
    }
}

fn parse_since_arg(s: &str) -> std::result::Result<Since, String> {
    parse_since(s).map_err(|e| e.to_string())
}

/// Parses `--since`; see [`ListArgs::since`] for the accepted forms.
pub fn parse_since(s: &str) -> Result<Since> {
    let s = s.trim();
    if let Ok(ms) = s.parse::<i64>() {
        return Ok(Since::AtMs(ms));
    }
    let units: [(&str, i64); 4] = [
        ("m", 60_000),
        ("h", 3_600_000),
        ("d", 86_400_000),
        ("w", 7 * 86_400_000),
    ];
    for (suffix, unit) in units {
        if let Some(n) = s.strip_suffix(suffix)
            && let Ok(n) = n.trim().parse::<i64>()
            && n >= 0
        {
            return Ok(Since::AgoMs(n.saturating_mul(unit)));
        }
    }
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(Since::AtMs(t.timestamp_millis()));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        && let Some(t) = d.and_hms_opt(0, 0, 0)
    {
        return Ok(Since::AtMs(t.and_utc().timestamp_millis()));
    }
    bail!(
        "cannot read --since {s:?}: use a duration back from now (30m, 12h, 7d, 2w), a date \
         (2026-11-20, UTC), an RFC 3339 time (2026-11-20T08:00:00Z) or ms since the epoch"
    )
}

/// The Tasks' priority at `now_ms`: recency decays when Tasks are shown, not only when written.
/// Sorted by priority, highest first (ties: oldest id first).
pub fn rescore(tasks: &mut [Task], now_ms: i64, w: &PriorityWeights) {
    for t in tasks.iter_mut() {
        t.priority_score = priority::score(
            t.distinct_user_count as u64,
            t.impact,
            t.last_seen_ms,
            now_ms,
            w,
        );
        t.priority_level = Level::from_score(t.priority_score).as_str().to_string();
    }
    tasks.sort_by(|a, b| {
        b.priority_score
            .total_cmp(&a.priority_score)
            .then(a.id.cmp(&b.id))
    });
}

/// What `select` kept, and how many Tasks it left out only for being routine.
pub struct Selection {
    pub tasks: Vec<Task>,
    pub routine_hidden: usize,
}

/// The team's Tasks as of `now_ms`, filtered and limited as `a` says.
pub fn select(mut tasks: Vec<Task>, a: &ListArgs, now_ms: i64) -> Selection {
    rescore(&mut tasks, now_ms, &PriorityWeights::default());
    let levels: Vec<&str> = a.level.iter().map(|l| l.level().as_str()).collect();
    let since = a.since.map(|s| s.at_ms(now_ms));
    let source = a.label_source.map(|s| match s {
        LabelSourceArg::Llm => LabelSource::Llm,
        LabelSourceArg::Fallback => LabelSource::Fallback,
    });
    tasks.retain(|t| {
        (levels.is_empty() || levels.contains(&t.priority_level.as_str()))
            && since.is_none_or(|s| t.last_seen_ms >= s)
            && source.is_none_or(|s| t.label_source == s)
    });
    let before = tasks.len();
    if !a.include_routine {
        tasks.retain(|t| t.actionable != Some(false));
    }
    let routine_hidden = before - tasks.len();
    tasks.truncate(a.limit);
    Selection {
        tasks,
        routine_hidden,
    }
}

fn now_or_clock(now_ms: Option<i64>) -> i64 {
    now_ms.unwrap_or_else(|| chrono::Utc::now().timestamp_millis())
}

pub async fn tasks_cmd(a: TasksArgs) -> Result<()> {
    match a.command {
        Some(TasksCommand::Show(s)) => show_cmd(s).await,
        None => list_cmd(a.list).await,
    }
}

pub async fn list_cmd(a: ListArgs) -> Result<()> {
    let store = Store::connect(&a.store.store).await?;
    let now = now_or_clock(a.now_ms);
    let Selection {
        tasks,
        routine_hidden,
    } = select(store.tasks(a.team).await?, &a, now);
    if a.json {
        let v: Vec<serde_json::Value> = tasks.iter().map(task_json).collect();
        crate::outln!("{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    crate::outln!(
        "{:>5}  {:<8}  {:>6}  {:>5}  {:>5}  {:>6}  {:<8}  title",
        "id",
        "level",
        "score",
        "users",
        "occ",
        "impact",
        "label"
    )?;
    for t in &tasks {
        crate::outln!(
            "{:>5}  {:<8}  {:>6.2}  {:>5}  {:>5}  {:>6.2}  {:<8}  {}",
            t.id,
            t.priority_level,
            t.priority_score,
            t.distinct_user_count,
            t.occurrence_count,
            t.impact,
            label_column(t),
            one_line(&t.title)
        )?;
    }
    if tasks.is_empty() {
        crate::outln!("(no Tasks for team {} match)", a.team)?;
    }
    if routine_hidden > 0 {
        crate::outln!(
            "({routine_hidden} more judged ordinary use by the LLM, not a problem: \
             --include-routine lists them)"
        )?;
    }
    Ok(())
}

/// The table's label column: the source, and "routine" for Tasks the LLM judged ordinary use.
fn label_column(t: &Task) -> &'static str {
    match (t.label_source, t.actionable) {
        (_, Some(false)) => "routine",
        (s, _) => s.as_str(),
    }
}

fn task_json(t: &Task) -> serde_json::Value {
    serde_json::json!({
        "id": t.id, "title": t.title, "description": t.description,
        "label_source": t.label_source.as_str(), "actionable": t.actionable,
        "priority": t.priority_score,
        "level": t.priority_level, "impact": t.impact, "segments": t.segment_count,
        "occurrences": t.occurrence_count, "users": t.distinct_user_count,
        "first_seen_ms": t.first_seen_ms, "last_seen_ms": t.last_seen_ms,
    })
}

/// Links most central first (smallest distance to the centroid; ties by time, then id).
pub fn by_centrality(mut links: Vec<Link>) -> Vec<Link> {
    links.sort_by(|a, b| {
        a.distance
            .total_cmp(&b.distance)
            .then(a.timestamp_ms.cmp(&b.timestamp_ms))
            .then_with(|| a.document_id.cmp(&b.document_id))
    });
    links
}

pub async fn show_cmd(a: ShowArgs) -> Result<()> {
    let store = Store::connect(&a.store.store).await?;
    let now = now_or_clock(a.now_ms);
    let Some(task) = store.task(a.team, a.id).await? else {
        bail!(
            "team {} has no Task {} (list them with `segclust tasks --team {}`)",
            a.team,
            a.id,
            a.team
        );
    };
    let mut one = [task];
    rescore(&mut one, now, &PriorityWeights::default());
    let [task] = one;
    let mut links = by_centrality(store.links(a.team, a.id).await?);
    let total = links.len();
    if a.limit > 0 {
        links.truncate(a.limit);
    }
    if a.json {
        let mut v = task_json(&task);
        v["segment_links"] = links
            .iter()
            .map(|l| {
                serde_json::json!({
                    "document_id": l.document_id, "session_id": l.session_id,
                    "distinct_id": l.distinct_id, "timestamp_ms": l.timestamp_ms,
                    "distance": l.distance, "impact": l.impact, "content": l.content,
                })
            })
            .collect();
        crate::outln!("{}", serde_json::to_string_pretty(&v)?)?;
        return Ok(());
    }
    crate::outln!("Task {}: {}", task.id, one_line(&task.title))?;
    crate::outln!(
        "level {} (score {:.2})  users {}  occurrences {}  segments {}  impact {:.2}  label {}",
        task.priority_level,
        task.priority_score,
        task.distinct_user_count,
        task.occurrence_count,
        task.segment_count,
        task.impact,
        task.label_source.as_str()
    )?;
    match task.actionable {
        Some(false) => crate::outln!("the LLM judged this ordinary use, not a problem to fix")?,
        Some(true) => crate::outln!("the LLM judged this a problem to fix")?,
        None => {}
    }
    crate::outln!(
        "first seen {}  last seen {}",
        format_ms(task.first_seen_ms),
        format_ms(task.last_seen_ms)
    )?;
    if !task.description.is_empty() {
        crate::outln!("\n{}", task.description)?;
    }
    crate::outln!(
        "\nsegments, most central first ({} of {total}):",
        links.len()
    )?;
    crate::outln!(
        "{:>8}  {:<17}  {:<20}  {:<16}  description",
        "distance",
        "time (UTC)",
        "session",
        "user"
    )?;
    for l in &links {
        crate::outln!(
            "{:>8.4}  {:<17}  {:<20}  {:<16}  {}",
            l.distance,
            format_ms(l.timestamp_ms),
            clip(&l.session_id, 20),
            clip(&l.distinct_id, 16),
            if l.content.is_empty() {
                "(not stored: linked before descriptions were kept)".to_string()
            } else {
                one_line(&l.content)
            }
        )?;
    }
    Ok(())
}

/// `YYYY-MM-DD HH:MM` in UTC.
pub fn format_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_else(|| format!("{ms} ms"))
}

/// Untrusted text on one terminal line: control characters (escape sequences, newlines) become
/// spaces so a description cannot rewrite the terminal.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn clip(s: &str, n: usize) -> String {
    let s = one_line(s);
    if s.chars().count() <= n {
        s
    } else {
        let mut out: String = s.chars().take(n.saturating_sub(1)).collect();
        out.push('…');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_accepts_durations_dates_and_times() {
        assert_eq!(parse_since("7d").ok(), Some(Since::AgoMs(7 * 86_400_000)));
        assert_eq!(parse_since("30m").ok(), Some(Since::AgoMs(1_800_000)));
        assert_eq!(parse_since("12345").ok(), Some(Since::AtMs(12_345)));
        assert_eq!(
            parse_since("2026-11-20").ok(),
            Some(Since::AtMs(1_795_132_800_000))
        );
        assert_eq!(
            parse_since("2026-11-20T01:00:00Z").ok(),
            Some(Since::AtMs(1_795_136_400_000))
        );
        let err = parse_since("last tuesday").map(|_| ()).unwrap_err();
        assert!(err.to_string().contains("7d"), "{err}");
        assert_eq!(Since::AgoMs(10).at_ms(100), 90);
    }

    fn task(id: i64, users: i64, last_seen_ms: i64, source: LabelSource) -> Task {
        Task {
            id,
            team_id: 1,
            title: format!("t{id}"),
            description: String::new(),
            label_source: source,
            actionable: None,
            priority_score: 0.0,
            priority_level: "low".into(),
            impact: 0.4,
            segment_count: users,
            occurrence_count: users,
            distinct_user_count: users,
            first_seen_ms: 0,
            last_seen_ms,
            centroid: vec![1.0],
            centroid_weight: 1,
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    #[test]
    fn filters_apply_to_the_rescored_tasks() {
        let day = 86_400_000;
        let now = 100 * day;
        let tasks = vec![
            task(1, 1, now, LabelSource::Fallback),
            task(2, 40, now - 20 * day, LabelSource::Llm),
            task(3, 10, now - day, LabelSource::Fallback),
        ];
        let mut a = ListArgs::new("sqlite::memory:".into(), 1, 50, None);
        let ids = |a: &ListArgs| -> Vec<i64> {
            let s = select(tasks.clone(), a, now);
            assert_eq!(s.routine_hidden, 0);
            s.tasks.iter().map(|t| t.id).collect()
        };
        assert_eq!(ids(&a), vec![2, 3, 1], "by priority");
        a.level = vec![LevelArg::Critical, LevelArg::High];
        assert_eq!(ids(&a), vec![2, 3]);
        a.since = Some(Since::AgoMs(7 * day));
        assert_eq!(ids(&a), vec![3]);
        a.level.clear();
        a.label_source = Some(LabelSourceArg::Fallback);
        assert_eq!(ids(&a), vec![3, 1]);
        a.limit = 1;
        assert_eq!(ids(&a), vec![3]);
    }

    #[test]
    fn routine_tasks_are_left_out_and_counted_unless_asked_for() {
        let day = 86_400_000;
        let now = 100 * day;
        let judged = |id, users, actionable| Task {
            actionable,
            ..task(id, users, now, LabelSource::Llm)
        };
        let tasks = vec![
            judged(1, 50, Some(false)),
            judged(2, 5, Some(true)),
            judged(3, 20, None),
            judged(4, 2, Some(false)),
        ];
        let mut a = ListArgs::new("sqlite::memory:".into(), 1, 50, None);
        let s = select(tasks.clone(), &a, now);
        let ids: Vec<i64> = s.tasks.iter().map(|t| t.id).collect();
        assert_eq!((ids, s.routine_hidden), (vec![3, 2], 2));
        // Filters first: a routine Task another filter drops is not counted as hidden.
        a.level = vec![LevelArg::Critical];
        assert_eq!(select(tasks.clone(), &a, now).routine_hidden, 1);
        a.level.clear();
        a.include_routine = true;
        let s = select(tasks.clone(), &a, now);
        let ids: Vec<i64> = s.tasks.iter().map(|t| t.id).collect();
        assert_eq!((ids, s.routine_hidden), (vec![1, 3, 2, 4], 0));
        assert_eq!(label_column(&tasks[0]), "routine");
        assert_eq!(label_column(&tasks[1]), "llm");
    }

    #[test]
    fn control_characters_never_reach_the_terminal() {
        assert_eq!(one_line("a\u{1b}[2Jb\nc"), "a [2Jb c");
        assert_eq!(clip("abcdef", 4), "abc…");
    }
}
