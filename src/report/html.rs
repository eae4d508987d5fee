//! Renders [`ReportData`] as one HTML page: inline CSS and SVG, no scripts, no external assets,
//! so it opens offline and can be mailed or attached to a ticket as it is.
//!
//! Every piece of stored text (titles, descriptions, ids, quarantine reasons) goes through
//! [`esc`]: segment descriptions are AI-written from what users did, so a description containing
//! markup or a script must show as text. Numbers and colours are produced here.

use std::collections::HashMap;
use std::fmt::Write;

use super::{ImpactMix, ReportData, TaskView, map, sparkline};
use crate::store::Run;
use crate::tasks_cmd::format_ms;

/// Text safe inside an element or a quoted attribute value.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + s.len() / 8);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const CSS: &str = "
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif; margin: 0;
       color: #1d2330; background: #f4f5f8; }
header { background: #1d2330; color: #fff; padding: 18px 32px; }
header h1 { margin: 0 0 4px; font-size: 20px; }
header .sub { color: #b9c0d0; font-size: 13px; }
main { max-width: 1180px; margin: 0 auto; padding: 20px 32px 48px; }
h2 { font-size: 17px; margin: 28px 0 10px; }
.chips span { display: inline-block; margin: 8px 8px 0 0; padding: 3px 10px; border-radius: 12px;
              background: #2c3446; font-size: 12px; }
.task { background: #fff; border-radius: 8px; padding: 14px 18px; margin: 0 0 12px;
        box-shadow: 0 1px 2px rgba(0,0,0,.08); border-left: 5px solid var(--c); }
.task h3 { margin: 0; font-size: 15px; display: flex; gap: 10px; align-items: baseline; }
.task h3 .id { color: #7a8396; font-weight: normal; font-size: 12px; }
.lvl { font-size: 11px; text-transform: uppercase; letter-spacing: .04em; padding: 2px 8px;
       border-radius: 10px; color: #fff; font-weight: 600; }
.lvl.critical { background: #c62828; } .lvl.high { background: #ef6c00; }
.lvl.medium { background: #f9a825; color: #3a2c00; } .lvl.low { background: #90a4ae; }
.src { font-size: 11px; color: #7a8396; }
.desc { margin: 6px 0 8px; color: #3a4254; }
.row { display: flex; flex-wrap: wrap; gap: 18px; align-items: center; }
.metric b { display: block; font-size: 15px; } .metric { font-size: 11px; color: #7a8396; }
.mix { display: flex; flex-direction: column; gap: 2px; font-size: 11px; color: #5a6275; min-width: 190px; }
.bar { display: inline-block; height: 7px; border-radius: 3px; vertical-align: middle; margin-right: 6px; }
.bar.failure { background: #e15759; } .bar.confusion { background: #f28e2b; }
.bar.abandonment { background: #b07aa1; } .bar.none { background: #c4c4c4; }
.quotes { margin: 10px 0 0; padding: 0; list-style: none; }
.quotes li { margin: 4px 0; padding: 6px 10px; background: #f6f7fa; border-radius: 6px;
             font-size: 13px; white-space: pre-wrap; overflow-wrap: anywhere; }
.quotes .meta { display: block; color: #8a92a4; font-size: 11px; }
.mapbox { background: #fff; border-radius: 8px; padding: 14px; display: flex; gap: 18px;
          flex-wrap: wrap; box-shadow: 0 1px 2px rgba(0,0,0,.08); }
.legend { font-size: 12px; max-width: 360px; } .side { display: flex; flex-direction: column; gap: 10px; }
.bar.stage { background: #4e79a7; } .legend li { margin: 3px 0; list-style: none; }
.legend ul { padding: 0; margin: 6px 0; }
.dot { display: inline-block; width: 10px; height: 10px; border-radius: 50%; margin-right: 6px;
       vertical-align: middle; }
table { border-collapse: collapse; background: #fff; width: 100%; font-size: 12px;
        box-shadow: 0 1px 2px rgba(0,0,0,.08); border-radius: 8px; overflow: hidden; }
th, td { padding: 6px 8px; text-align: right; border-bottom: 1px solid #eceef3; }
th { background: #eef0f5; font-weight: 600; } td:first-child, th:first-child { text-align: left; }
.reasons { font-size: 12px; color: #5a6275; } .empty { color: #7a8396; font-style: italic; }
footer { color: #8a92a4; font-size: 11px; margin-top: 30px; }
";

/// The whole page.
pub fn render(d: &ReportData) -> String {
    let mut o = String::with_capacity(64 * 1024);
    let _ = write!(
        o,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">\
         <title>segclust report · team {}</title><style>{CSS}</style></head><body>",
        d.team
    );
    header(&mut o, d);
    o.push_str("<main>");
    map_section(&mut o, d);
    tasks(&mut o, d);
    runs(&mut o, &d.runs);
    let _ = write!(
        o,
        "<footer>Generated by segclust {} at {} UTC. Priority = ln(1 + users) + 0.5 × mean impact + \
         0.3 × 0.5^(days since last seen / 7), as of the generation time. Descriptions are \
         AI-written from session replays and shown as plain text.</footer></main></body></html>",
        env!("CARGO_PKG_VERSION"),
        format_ms(d.now_ms)
    );
    o.push('\n');
    o
}

fn header(o: &mut String, d: &ReportData) {
    let mut levels: HashMap<&str, usize> = HashMap::new();
    for t in &d.tasks {
        *levels.entry(t.task.priority_level.as_str()).or_default() += 1;
    }
    let _ = write!(
        o,
        "<header><h1>Recurring user problems · team {}</h1><div class=\"sub\">{} Tasks, as of {} UTC",
        d.team,
        d.total_tasks,
        format_ms(d.now_ms)
    );
    if let Some(r) = d.runs.first() {
        let _ = write!(o, " · last run {} UTC", format_ms(r.finished_at_ms));
    }
    o.push_str("</div><div class=\"chips\">");
    for level in ["critical", "high", "medium", "low"] {
        let n = levels.get(level).copied().unwrap_or(0);
        let _ = write!(o, "<span>{n} {level}</span>");
    }
    if d.tasks.len() < d.total_tasks {
        let _ = write!(o, "<span>top {} shown</span>", d.tasks.len());
    }
    o.push_str("</div></header>");
}

fn tasks(o: &mut String, d: &ReportData) {
    let _ = write!(
        o,
        "<h2 id=\"tasks\">Tasks by priority</h2><p class=\"reasons\">Trend: occurrences \
         (distinct sessions) per day, {} to {} (UTC).</p>",
        format_day(d.trend_start_ms),
        format_day(d.trend_start_ms + (d.trend_days as i64 - 1) * super::DAY_MS)
    );
    if d.tasks.is_empty() {
        let _ = write!(
            o,
            "<p class=\"empty\">No Tasks yet for team {}: run <code>segclust run</code> first.</p>",
            d.team
        );
    }
    for v in &d.tasks {
        task_card(o, v);
    }
}

fn task_card(o: &mut String, v: &TaskView) {
    let t = &v.task;
    let level = match t.priority_level.as_str() {
        l @ ("critical" | "high" | "medium" | "low") => l,
        _ => "low",
    };
    let _ = write!(
        o,
        "<article class=\"task\" id=\"task-{id}\" data-task-id=\"{id}\" style=\"--c: {color}\">\
         <h3><span class=\"lvl {level}\">{level}</span><span class=\"title\">{title}</span>\
         <span class=\"id\">#{id} · score {score:.2}</span></h3>",
        id = t.id,
        color = map::task_color(t.id),
        title = esc(&t.title),
        score = t.priority_score,
    );
    if !t.description.is_empty() {
        let _ = write!(o, "<p class=\"desc\">{}</p>", esc(&t.description));
    }
    o.push_str("<div class=\"row\">");
    let metric = |o: &mut String, value: String, name: &str| {
        let _ = write!(o, "<span class=\"metric\"><b>{value}</b>{name}</span>");
    };
    metric(o, t.distinct_user_count.to_string(), "users");
    metric(o, t.occurrence_count.to_string(), "occurrences");
    metric(o, t.segment_count.to_string(), "segments");
    metric(o, format!("{:.2}", t.impact), "mean impact");
    metric(o, format_ms(t.first_seen_ms), "first seen (UTC)");
    metric(o, format_ms(t.last_seen_ms), "last seen (UTC)");
    mix(o, &v.mix);
    o.push_str(&sparkline::svg(&v.daily, 180, 36));
    let routine = if t.actionable == Some(false) {
        " · routine use, not a problem (LLM)"
    } else {
        ""
    };
    let _ = write!(
        o,
        "<span class=\"src\">label: {}{routine}</span></div>",
        t.label_source.as_str()
    );
    if !v.central.is_empty() {
        o.push_str("<ul class=\"quotes\">");
        for l in &v.central {
            let _ = write!(
                o,
                "<li class=\"quote\">{}<span class=\"meta\">session {} · user {} · {} UTC · distance {:.3}</span></li>",
                esc(&l.content),
                esc(&l.session_id),
                esc(&l.distinct_id),
                format_ms(l.timestamp_ms),
                l.distance
            );
        }
        o.push_str("</ul>");
    }
    o.push_str("</article>");
}

fn mix(o: &mut String, m: &ImpactMix) {
    if m.segments == 0 {
        return;
    }
    o.push_str("<span class=\"mix\" title=\"share of segments showing each kind of harm\">");
    for (name, n) in [
        ("failure", m.failure),
        ("confusion", m.confusion),
        ("abandonment", m.abandonment),
        ("none", m.none),
    ] {
        let pct = 100.0 * n as f64 / m.segments as f64;
        let _ = write!(
            o,
            "<span><span class=\"bar {name}\" style=\"width: {:.0}px\"></span>{name} {pct:.0}%</span>",
            (pct * 0.8).max(1.0)
        );
    }
    if m.unknown > 0 {
        let _ = write!(o, "<span>{} with other weights</span>", m.unknown);
    }
    o.push_str("</span>");
}

fn map_section(o: &mut String, d: &ReportData) {
    o.push_str("<h2 id=\"map\">Latest batch</h2>");
    let Some(run) = d.runs.iter().find(|r| !r.map.is_empty()) else {
        o.push_str(
            "<p class=\"empty\">No map yet: maps are recorded by runs of this version and need \
             at least 3 segments in a batch.</p>",
        );
        return;
    };
    let clustered = run.map.iter().filter(|p| p.cluster >= 0).count();
    let _ = write!(
        o,
        "<p class=\"reasons\">Run {} ({} UTC): {} of its {} segments on the first two PCA axes; \
         {clustered} in clusters (coloured by their Task), {} noise (grey). Nearby points have \
         similar descriptions.</p><div class=\"mapbox\">",
        run.id,
        format_ms(run.started_at_ms),
        run.map.len(),
        run.figures.clustered,
        run.map.len() - clustered
    );
    o.push_str(&map::svg(&run.map, 600, 400));
    o.push_str("<div class=\"side\">");
    latest_run(o, run);
    // Legend: the Tasks with most points on the map, with their titles where known.
    let mut per_task: HashMap<i64, usize> = HashMap::new();
    for p in run.map.iter().filter(|p| p.cluster >= 0) {
        if let Some(id) = p.task_id {
            *per_task.entry(id).or_default() += 1;
        }
    }
    let mut legend: Vec<(i64, usize)> = per_task.into_iter().collect();
    legend.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    let titles: HashMap<i64, &str> = d
        .tasks
        .iter()
        .map(|v| (v.task.id, v.task.title.as_str()))
        .collect();
    o.push_str("<div class=\"legend\"><b>Largest Tasks on the map</b><ul>");
    for (id, n) in legend.iter().take(12) {
        let title = titles
            .get(id)
            .map_or_else(|| format!("Task {id}"), |t| esc(t));
        let _ = write!(
            o,
            "<li><span class=\"dot\" style=\"background: {}\"></span><a href=\"#task-{id}\">#{id}</a> \
             {title} <span class=\"src\">({n} points)</span></li>",
            map::task_color(*id)
        );
    }
    let _ = write!(
        o,
        "<li><span class=\"dot\" style=\"background: {}\"></span>noise</li></ul></div></div>",
        map::NOISE
    );
    o.push_str("</div>");
}

/// The latest run in numbers, with its time per stage as bars.
fn latest_run(o: &mut String, r: &Run) {
    let f = &r.figures;
    let _ = write!(
        o,
        "<div class=\"legend\"><b>This batch</b><ul><li>{} segments read, {} carried over, {} \
         quarantined</li><li>{} clusters, {} noise ({} rescued as Tasks)</li><li>{} Tasks \
         created, {} updated, {} segments linked</li></ul>",
        f.segments_read,
        f.carried_over,
        f.quarantined,
        f.clusters,
        f.noise,
        f.rescued,
        f.tasks_created,
        f.tasks_updated,
        f.links
    );
    let stages = [
        ("read", f.read_s),
        ("numeric", f.numeric_s),
        ("match", f.match_s),
        ("labels", f.label_s),
        ("commit", f.commit_s),
    ];
    let total: f64 = stages.iter().map(|s| s.1).sum();
    let _ = write!(o, "<b>Time per stage ({total:.2} s)</b><ul>");
    for (name, secs) in stages {
        let share = if total > 0.0 { secs / total } else { 0.0 };
        let _ = write!(
            o,
            "<li><span class=\"bar stage\" style=\"width: {:.0}px\"></span>{name} {secs:.2} s</li>",
            (share * 160.0).max(1.0)
        );
    }
    o.push_str("</ul></div>");
}

fn runs(o: &mut String, runs: &[Run]) {
    o.push_str("<h2 id=\"runs\">Recent runs</h2>");
    if runs.is_empty() {
        o.push_str("<p class=\"empty\">No runs recorded yet.</p>");
        return;
    }
    o.push_str(
        "<table><thead><tr><th>started (UTC)</th><th>segments</th><th>carried over</th>\
         <th>quarantined</th><th>clusters</th><th>noise</th><th>rescued</th><th>Tasks created</th>\
         <th>Tasks updated</th><th>links</th><th>read s</th><th>numeric s</th><th>match s</th>\
         <th>labels s</th><th>commit s</th><th>total s</th></tr></thead><tbody>",
    );
    for r in runs {
        let f = &r.figures;
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td>{}</td><td>{:.2}</td><td>{:.2}</td><td>{:.2}</td>\
             <td>{:.2}</td><td>{:.2}</td><td>{:.2}</td></tr>",
            format_ms(r.started_at_ms),
            f.segments_read,
            f.carried_over,
            f.quarantined,
            f.clusters,
            f.noise,
            f.rescued,
            f.tasks_created,
            f.tasks_updated,
            f.links,
            f.read_s,
            f.numeric_s,
            f.match_s,
            f.label_s,
            f.commit_s,
            f.read_s + f.numeric_s + f.match_s + f.label_s + f.commit_s
        );
    }
    o.push_str("</tbody></table>");
    let mut any = false;
    for r in runs.iter().filter(|r| !r.quarantine_reasons.is_empty()) {
        if !any {
            o.push_str("<h2>Quarantined segments</h2>");
            any = true;
        }
        let _ = write!(
            o,
            "<p class=\"reasons\">Run of {} UTC:</p><ul class=\"reasons\">",
            format_ms(r.started_at_ms)
        );
        for (reason, n) in &r.quarantine_reasons {
            let _ = write!(o, "<li>{n} × {}</li>", esc(reason));
        }
        o.push_str("</ul>");
    }
}

fn format_day(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d").to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::labeling::LabelSource;
    use crate::store::{Link, Run, RunFigures, StoredMapPoint, Task};

    const EVIL: &str = "<script>alert(1)</script><img src=x onerror=alert(2)>\"'&";

    #[test]
    fn every_stored_text_is_escaped_in_the_page() {
        let task = Task {
            id: 4,
            team_id: 1,
            title: EVIL.into(),
            description: EVIL.into(),
            label_source: LabelSource::Llm,
            actionable: Some(false),
            priority_score: 9.0,
            priority_level: EVIL.into(),
            impact: 0.4,
            segment_count: 1,
            occurrence_count: 1,
            distinct_user_count: 1,
            first_seen_ms: 0,
            last_seen_ms: 0,
            centroid: vec![1.0],
            centroid_weight: 1,
            created_at_ms: 0,
            updated_at_ms: 0,
        };
        let link = Link {
            task_id: 4,
            team_id: 1,
            document_id: EVIL.into(),
            session_id: EVIL.into(),
            distinct_id: EVIL.into(),
            distance: 0.1,
            impact: 0.4,
            timestamp_ms: 0,
            created_at_ms: 0,
            content: EVIL.into(),
        };
        let run = Run {
            id: 1,
            team_id: 1,
            started_at_ms: 0,
            finished_at_ms: 0,
            now_ms: 0,
            figures: RunFigures::default(),
            quarantine_reasons: vec![(EVIL.into(), 1)],
            map: vec![StoredMapPoint {
                x: 0.0,
                y: 0.0,
                cluster: 0,
                task_id: Some(4),
            }],
        };
        let data = ReportData {
            team: 1,
            now_ms: 0,
            total_tasks: 1,
            tasks: vec![TaskView {
                task,
                central: vec![link],
                daily: vec![1],
                mix: ImpactMix::default(),
            }],
            trend_start_ms: 0,
            trend_days: 1,
            runs: vec![run],
        };
        let page = render(&data);
        assert!(
            !page.contains("<script") && !page.contains("<img"),
            "{page}"
        );
        // Title, description, quote, session, user, legend, reason: each shown as text.
        assert!(page.matches(&esc(EVIL)).count() >= 7, "{page}");
        assert!(
            page.contains("class=\"lvl low\""),
            "unknown levels fall back to low"
        );
    }

    #[test]
    fn markup_in_text_is_escaped() {
        assert_eq!(
            esc("<script>alert('x')</script> & \"q\""),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }
}
