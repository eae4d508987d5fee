//! Task priority: how many people a problem hurts, how badly, and how recently.
//!
//! The formula is the Python system's, kept as the default:
//! `users * ln(1 + distinct users) + impact * mean impact + recency * 0.5^(days since last / half life)`.
//! Two things differ on purpose: callers pass the exact number of distinct users (the Python
//! system added per-cluster counts and overcounted), and the score is meant to be recomputed
//! against the current time whenever Tasks are listed or refreshed, so recency actually decays
//! (the Python system froze it at write time).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

const MS_PER_DAY: f64 = 86_400_000.0;

/// Weights of the three terms and the recency half-life.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PriorityWeights {
    pub users: f64,
    pub impact: f64,
    pub recency: f64,
    pub half_life_days: f64,
}

impl Default for PriorityWeights {
    fn default() -> Self {
        Self {
            users: 1.0,
            impact: 0.5,
            recency: 0.3,
            half_life_days: 7.0,
        }
    }
}

/// Priority score of a Task. `last_seen_ms` in the future counts as "now" (clock skew between
/// recorders must not push a score above its maximum). A `half_life_days` that is not a positive
/// number means no decay window: the recency term is full at the moment of the last occurrence
/// and zero after it. A non-finite `mean_impact` counts as 0.
pub fn score(
    distinct_users: u64,
    mean_impact: f64,
    last_seen_ms: i64,
    now_ms: i64,
    w: &PriorityWeights,
) -> f64 {
    let days_since = (now_ms.saturating_sub(last_seen_ms) as f64 / MS_PER_DAY).max(0.0);
    let decay = if w.half_life_days > 0.0 && w.half_life_days.is_finite() {
        0.5_f64.powf(days_since / w.half_life_days)
    } else if days_since == 0.0 {
        1.0
    } else {
        0.0
    };
    let impact = if mean_impact.is_finite() {
        mean_impact
    } else {
        0.0
    };
    w.users * (distinct_users as f64).ln_1p() + w.impact * impact + w.recency * decay
}

/// Priority level shown to people, from the score.
///
/// The cut-offs are set for the default weights, where the users term dominates (`ln(1+u)`:
/// 1 user 0.69, 2 users 1.10, 5 users 1.79, 10 users 2.40, 20 users 3.04, 33 users 3.53), impact
/// adds up to 0.5 (a plain failure, impact 0.4, adds 0.2) and recency up to 0.3 (0.15 a week
/// after the last occurrence). What each level means, with examples at the edge:
///
/// | level | score | meaning | examples (users, mean impact, days since last) -> score |
/// |---|---|---|---|
/// | critical | >= 3.5 | many users, failing, now | (20, 0.4, 0) -> 3.55; (33, 0.0, 60) -> 3.53; (20, 0.4, 7) -> 3.40 is high |
/// | high | >= 2.5 | a pattern worth this sprint | (8, 0.4, 0) -> 2.70; (12, 0.0, 60) -> 2.56; (6, 0.4, 0) -> 2.45 is medium |
/// | medium | >= 1.5 | recurring, watch it | (2, 0.4, 0) -> 1.60; (4, 0.0, 60) -> 1.61; (3, 0.0, 60) -> 1.39 is low |
/// | low | < 1.5 | seen once or rarely | any single user: at most 0.69 + 0.5 + 0.3 = 1.49 |
///
/// So one user's problem is always low, even a crash: it is tracked (and rescued from noise
/// when its impact is high) but it is not yet a pattern. A second user with a recent failure
/// makes it medium. With non-default weights the levels keep these cut-offs, so they shift
/// meaning; scale the cut-offs with the weights if you change them a lot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Critical,
    High,
    Medium,
    Low,
}

impl Level {
    pub const CRITICAL_MIN: f64 = 3.5;
    pub const HIGH_MIN: f64 = 2.5;
    pub const MEDIUM_MIN: f64 = 1.5;

    /// Most to least urgent.
    pub const ALL: [Level; 4] = [Level::Critical, Level::High, Level::Medium, Level::Low];

    /// The level of a score; NaN is low.
    pub fn from_score(score: f64) -> Level {
        if score >= Self::CRITICAL_MIN {
            Level::Critical
        } else if score >= Self::HIGH_MIN {
            Level::High
        } else if score >= Self::MEDIUM_MIN {
            Level::Medium
        } else {
            Level::Low
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Critical => "critical",
            Level::High => "high",
            Level::Medium => "medium",
            Level::Low => "low",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Level {
    type Err = anyhow::Error;

    /// Case-insensitive, surrounding whitespace ignored.
    fn from_str(s: &str) -> anyhow::Result<Level> {
        let t = s.trim();
        Level::ALL
            .into_iter()
            .find(|l| l.as_str().eq_ignore_ascii_case(t))
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "unknown priority level {s:?}: expected one of critical, high, medium, low"
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;
    const NOW: i64 = 1_750_000_000_000;

    fn s(users: u64, impact: f64, days: f64) -> f64 {
        let last = NOW - (days * DAY as f64) as i64;
        score(users, impact, last, NOW, &PriorityWeights::default())
    }

    #[test]
    fn formula_matches_the_python_system() {
        let want = 1.0 * (1.0f64 + 7.0).ln() + 0.5 * 0.6 + 0.3 * 0.5f64.powf(3.0 / 7.0);
        assert!((s(7, 0.6, 3.0) - want).abs() < 1e-9);
        // One half-life halves the recency term.
        assert!((s(0, 0.0, 7.0) - 0.15).abs() < 1e-9);
        assert!((s(0, 0.0, 0.0) - 0.3).abs() < 1e-9);
    }

    #[test]
    fn more_users_more_impact_more_recent_rank_higher() {
        assert!(s(10, 0.4, 1.0) > s(9, 0.4, 1.0));
        assert!(s(10, 0.9, 1.0) > s(10, 0.4, 1.0));
        assert!(s(10, 0.4, 1.0) > s(10, 0.4, 2.0));
    }

    #[test]
    fn future_last_seen_is_clamped_and_bad_inputs_are_tame() {
        let w = PriorityWeights::default();
        assert_eq!(
            score(3, 0.2, NOW + DAY, NOW, &w),
            score(3, 0.2, NOW, NOW, &w)
        );
        assert_eq!(
            score(3, f64::NAN, NOW, NOW, &w),
            score(3, 0.0, NOW, NOW, &w)
        );
        let flat = PriorityWeights {
            half_life_days: 0.0,
            ..w
        };
        assert_eq!(score(0, 0.0, NOW, NOW, &flat), 0.3);
        assert_eq!(score(0, 0.0, NOW - 1, NOW, &flat), 0.0);
        assert!(score(0, 0.0, i64::MIN, i64::MAX, &w).is_finite());
    }

    #[test]
    fn documented_examples_land_in_their_levels() {
        let cases = [
            ((20, 0.4, 0.0), Level::Critical),
            ((33, 0.0, 60.0), Level::Critical),
            ((20, 0.4, 7.0), Level::High),
            ((8, 0.4, 0.0), Level::High),
            ((12, 0.0, 60.0), Level::High),
            ((6, 0.4, 0.0), Level::Medium),
            ((2, 0.4, 0.0), Level::Medium),
            ((4, 0.0, 60.0), Level::Medium),
            ((3, 0.0, 60.0), Level::Low),
            ((1, 1.0, 0.0), Level::Low),
        ];
        for ((u, i, d), want) in cases {
            assert_eq!(
                Level::from_score(s(u, i, d)),
                want,
                "{u} users, impact {i}, {d} days"
            );
        }
    }

    #[test]
    fn levels_are_ordered_by_score() {
        let mut last = Level::Critical;
        let mut x = 10.0;
        while x > -1.0 {
            let l = Level::from_score(x);
            let rank = |l: Level| Level::ALL.iter().position(|&m| m == l);
            assert!(rank(l) >= rank(last));
            last = l;
            x -= 0.01;
        }
        assert_eq!(Level::from_score(f64::NAN), Level::Low);
        assert_eq!(Level::from_score(Level::HIGH_MIN), Level::High);
    }

    #[test]
    fn text_round_trip() {
        for l in Level::ALL {
            assert_eq!(l.to_string().parse::<Level>().unwrap(), l);
            assert_eq!(
                serde_json::to_string(&l).unwrap(),
                format!("\"{}\"", l.as_str())
            );
        }
        assert_eq!(" HIGH ".parse::<Level>().unwrap(), Level::High);
        assert!("urgent".parse::<Level>().is_err());
    }
}
