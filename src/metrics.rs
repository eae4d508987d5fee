//! Figures a scraper can read: a Prometheus text-format file (`--metrics-file`, or
//! `[metrics] file`), rewritten atomically after every team and at the end of a run, for
//! node_exporter's textfile collector or anything that reads files. A CronJob run is short, so
//! the file rather than an endpoint: it outlives the process.
//!
//! Counters count since the process started (one run, or one `schedule` process); each team's
//! series carries a `team` label.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result};

use crate::pipeline::BatchReport;

/// Per-team totals.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TeamFigures {
    pub batches: u64,
    pub segments_read: u64,
    pub carried_over: u64,
    pub carry_over_left_out: u64,
    pub quarantined: u64,
    pub redelivered: u64,
    pub clusters: u64,
    pub noise: u64,
    pub tasks_created: u64,
    pub tasks_updated: u64,
    pub links: u64,
    pub read_s: f64,
    pub numeric_s: f64,
    pub match_s: f64,
    pub label_s: f64,
    pub commit_s: f64,
    pub succeeded: u64,
    pub failed: u64,
    pub skipped_locked: u64,
}

/// The device's figures (`crate::device::Device`).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GpuFigures {
    pub fallbacks: u64,
    pub skips: u64,
    /// Whether the next batch goes to the GPU; `None` when no GPU was opened (no gauge then,
    /// so a CPU-only deployment does not look like a GPU that is down).
    pub up: Option<bool>,
}

#[derive(Debug, Default)]
struct State {
    teams: BTreeMap<i64, TeamFigures>,
    gpu: GpuFigures,
    runs: u64,
    last_run_end_s: f64,
    last_run_duration_s: f64,
    extra: BTreeMap<String, (String, f64)>,
}

/// Shared by the coordinator's concurrent teams.
#[derive(Debug, Default)]
pub struct Metrics {
    state: Mutex<State>,
    file: Option<PathBuf>,
}

impl Metrics {
    pub fn new(file: Option<PathBuf>) -> Self {
        Self {
            state: Mutex::default(),
            file,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn batch(&self, r: &BatchReport) {
        let mut s = self.state();
        let t = s.teams.entry(r.team_id).or_default();
        t.batches += 1;
        t.segments_read += r.segments_read as u64;
        t.carried_over += r.carried_over as u64;
        t.carry_over_left_out += r.carry_over_left_out as u64;
        t.quarantined += r.quarantined as u64;
        t.redelivered += r.redelivered as u64;
        t.clusters += r.clusters as u64;
        t.noise += r.noise as u64;
        t.tasks_created += r.tasks_created as u64;
        t.tasks_updated += r.tasks_updated as u64;
        t.links += r.links as u64;
        t.read_s += r.read_s;
        t.numeric_s += r.numeric_s;
        t.match_s += r.match_s;
        t.label_s += r.label_s;
        t.commit_s += r.commit_s;
    }

    pub fn team_succeeded(&self, team: i64) {
        self.state().teams.entry(team).or_default().succeeded += 1;
    }

    pub fn team_failed(&self, team: i64) {
        self.state().teams.entry(team).or_default().failed += 1;
    }

    pub fn team_skipped(&self, team: i64) {
        self.state().teams.entry(team).or_default().skipped_locked += 1;
    }

    pub fn set_gpu(&self, figures: GpuFigures) {
        self.state().gpu = figures;
    }

    /// A counter from another part (e.g. the LLM labeler): name, help, value.
    pub fn set_extra(&self, name: &str, help: &str, value: f64) {
        self.state()
            .extra
            .insert(name.to_string(), (help.to_string(), value));
    }

    pub fn run_finished(&self, end_unix_s: f64, duration_s: f64) {
        let mut s = self.state();
        s.runs += 1;
        s.last_run_end_s = end_unix_s;
        s.last_run_duration_s = duration_s;
    }

    pub fn team(&self, team: i64) -> TeamFigures {
        self.state().teams.get(&team).cloned().unwrap_or_default()
    }

    /// The Prometheus text exposition of everything counted so far.
    pub fn render(&self) -> String {
        let s = self.state();
        let mut out = String::new();
        type Field = fn(&TeamFigures) -> f64;
        let per_team: [(&str, &str, &str, Field); 14] = [
            (
                "segclust_batches_total",
                "counter",
                "Batches committed.",
                |t| t.batches as f64,
            ),
            (
                "segclust_segments_read_total",
                "counter",
                "New segments read from the source.",
                |t| t.segments_read as f64,
            ),
            (
                "segclust_segments_carried_over_total",
                "counter",
                "Unlinked segments of the carry-over window clustered again with a batch.",
                |t| t.carried_over as f64,
            ),
            (
                "segclust_carry_over_left_out_total",
                "counter",
                "Unlinked segments of the carry-over window left out of a batch by \
                 matching.carry_over_max_segments (counted again each batch that leaves them out).",
                |t| t.carry_over_left_out as f64,
            ),
            (
                "segclust_segments_quarantined_total",
                "counter",
                "Segments set aside with a reason (bad data, or another version of a row), \
                 not counting identical redelivered copies.",
                |t| t.quarantined.saturating_sub(t.redelivered) as f64,
            ),
            (
                "segclust_segments_redelivered_total",
                "counter",
                "Identical copies of rows already read (at-least-once delivery; kept out of \
                 the clustering, recorded in the quarantine table).",
                |t| t.redelivered as f64,
            ),
            (
                "segclust_clusters_total",
                "counter",
                "Clusters found (after coherence checks).",
                |t| t.clusters as f64,
            ),
            (
                "segclust_noise_segments_total",
                "counter",
                "Segments left as noise by HDBSCAN.",
                |t| t.noise as f64,
            ),
            (
                "segclust_tasks_created_total",
                "counter",
                "Tasks created.",
                |t| t.tasks_created as f64,
            ),
            (
                "segclust_tasks_updated_total",
                "counter",
                "Existing Tasks that gained segments.",
                |t| t.tasks_updated as f64,
            ),
            (
                "segclust_links_total",
                "counter",
                "Segment-to-Task links inserted.",
                |t| t.links as f64,
            ),
            (
                "segclust_team_runs_succeeded_total",
                "counter",
                "Team runs that committed everything they read.",
                |t| t.succeeded as f64,
            ),
            (
                "segclust_team_runs_failed_total",
                "counter",
                "Team runs that failed (watermark untouched by the failed batch).",
                |t| t.failed as f64,
            ),
            (
                "segclust_team_runs_skipped_total",
                "counter",
                "Team runs skipped because another worker held the team's lock.",
                |t| t.skipped_locked as f64,
            ),
        ];
        for (name, kind, help, f) in per_team {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (team, t) in &s.teams {
                let _ = writeln!(out, "{name}{{team=\"{team}\"}} {}", f(t));
            }
        }
        let name = "segclust_stage_seconds_total";
        let _ = writeln!(
            out,
            "# HELP {name} Time spent per pipeline stage.\n# TYPE {name} counter"
        );
        for (team, t) in &s.teams {
            for (stage, v) in [
                ("read", t.read_s),
                ("numeric", t.numeric_s),
                ("match", t.match_s),
                ("label", t.label_s),
                ("commit", t.commit_s),
            ] {
                let _ = writeln!(out, "{name}{{team=\"{team}\",stage=\"{stage}\"}} {v}");
            }
        }
        for (name, kind, help, v) in [
            (
                "segclust_gpu_fallbacks_total",
                "counter",
                "GPU stages (PCA or MST) the GPU failed or could not take, redone on the CPU.",
                s.gpu.fallbacks as f64,
            ),
            (
                "segclust_gpu_skips_total",
                "counter",
                "Stages run on the CPU without trying the GPU, because it was resting after \
                 failures or lost.",
                s.gpu.skips as f64,
            ),
            (
                "segclust_runs_total",
                "counter",
                "Coordinator rounds finished.",
                s.runs as f64,
            ),
            (
                "segclust_last_run_end_timestamp_seconds",
                "gauge",
                "When the last round finished (Unix time).",
                s.last_run_end_s,
            ),
            (
                "segclust_last_run_duration_seconds",
                "gauge",
                "How long the last round took.",
                s.last_run_duration_s,
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
            );
        }
        if let Some(up) = s.gpu.up {
            let name = "segclust_gpu_up";
            let _ = writeln!(
                out,
                "# HELP {name} 1 when the next batch goes to the GPU, 0 while it rests after \
                 failures or is lost for this process.\n# TYPE {name} gauge\n{name} {}",
                u8::from(up)
            );
        }
        for (name, (help, v)) in &s.extra {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        out
    }

    /// Rewrites the metrics file, if one is configured (write to a temporary name, then
    /// rename, so a scraper never reads half a file).
    pub fn write(&self) -> Result<()> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        write_atomic(path, &self.render())
    }
}

fn write_atomic(path: &Path, text: &str) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, text)
        .with_context(|| format!("writing the metrics file {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("moving the metrics file into place at {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_per_team_series_and_writes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("segclust.prom");
        let m = Metrics::new(Some(path.clone()));
        m.batch(&BatchReport {
            team_id: 7,
            segments_read: 120,
            quarantined: 5,
            redelivered: 2,
            carried_over: 30,
            carry_over_left_out: 6,
            clusters: 9,
            tasks_created: 4,
            links: 100,
            numeric_s: 1.5,
            match_s: 0.25,
            ..Default::default()
        });
        m.team_succeeded(7);
        m.team_failed(8);
        m.set_gpu(GpuFigures {
            fallbacks: 2,
            skips: 5,
            up: None,
        });
        assert!(!m.render().contains("segclust_gpu_up"), "no GPU, no gauge");
        m.set_gpu(GpuFigures {
            fallbacks: 2,
            skips: 5,
            up: Some(false),
        });
        m.write().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(text.contains("\nsegclust_gpu_skips_total 5\n"), "{text}");
        assert!(text.contains("# TYPE segclust_gpu_up gauge\nsegclust_gpu_up 0\n"));
        assert!(
            text.contains("segclust_segments_read_total{team=\"7\"} 120"),
            "{text}"
        );
        assert!(text.contains("segclust_segments_quarantined_total{team=\"7\"} 3"));
        assert!(text.contains("segclust_segments_redelivered_total{team=\"7\"} 2"));
        assert!(text.contains("segclust_segments_carried_over_total{team=\"7\"} 30"));
        assert!(text.contains("segclust_carry_over_left_out_total{team=\"7\"} 6"));
        assert!(text.contains("segclust_tasks_created_total{team=\"7\"} 4"));
        assert!(text.contains("segclust_team_runs_failed_total{team=\"8\"} 1"));
        assert!(
            text.contains("\nsegclust_gpu_fallbacks_total 2\n"),
            "{text}"
        );
        assert!(text.contains("segclust_stage_seconds_total{team=\"7\",stage=\"numeric\"} 1.5"));
        assert!(text.contains("segclust_stage_seconds_total{team=\"7\",stage=\"match\"} 0.25"));
        // Every sample line is `name{labels} value` or `name value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = line.rsplit_once(' ').unwrap();
            assert!(v.parse::<f64>().is_ok(), "{line}");
        }
    }
}
