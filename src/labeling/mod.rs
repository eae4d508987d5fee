//! Titles and descriptions for new Tasks.
//!
//! - [`fallback`]: the deterministic label, written offline or after the LLM failed.
//! - [`llm`]: labels from any OpenAI-compatible chat API (OpenAI, vLLM, Ollama, llama.cpp).
//! - [`prompt`]: what the LLM is asked, and the validation of what it answers.
//! - [`config`]: [`LlmConfig`] and its command-line flags.
//! - [`relabel`]: the `relabel` command, which replaces labels of existing Tasks.
//!
//! Segment descriptions are untrusted text (anyone who can get text on a recorded screen can put
//! words into them). They only ever reach an LLM as quoted data, and whatever comes back is
//! validated, stripped of control characters and cut to the store's limits, so a description can
//! change a label's text and nothing else.

pub mod config;
pub mod fallback;
pub mod llm;
pub mod prompt;
pub mod relabel;

use std::fmt;
use std::future::Future;
use std::str::FromStr;

use futures::StreamExt;
use serde::{Deserialize, Serialize};

pub use config::{LlmArgs, LlmConfig};
pub use fallback::{FallbackLabeler, fallback_label};
pub use llm::{LlmLabeler, LlmStats};

/// Longest title the store keeps, in characters.
pub const MAX_TITLE_CHARS: usize = 255;
/// Longest description the store keeps, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 2000;
/// How many descriptions a labeler is given.
pub const MAX_DESCRIPTIONS: usize = 5;

/// What a labeler gets for one new Task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LabelRequest {
    /// Up to [`MAX_DESCRIPTIONS`] segment descriptions closest to the centroid, from distinct
    /// sessions, closest first.
    pub descriptions: Vec<String>,
    pub segment_count: usize,
    pub distinct_users: usize,
    pub mean_impact: f64,
}

/// Who wrote a label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LabelSource {
    Llm,
    /// Deterministic, written without an LLM; to be relabelled when one is available.
    Fallback,
}

impl LabelSource {
    pub fn as_str(self) -> &'static str {
        match self {
            LabelSource::Llm => "llm",
            LabelSource::Fallback => "fallback",
        }
    }
}

impl fmt::Display for LabelSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for LabelSource {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "llm" => Ok(LabelSource::Llm),
            "fallback" => Ok(LabelSource::Fallback),
            _ => anyhow::bail!("unknown label source {s:?}: expected llm or fallback"),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Label {
    /// At most [`MAX_TITLE_CHARS`] characters, starting with a verb.
    pub title: String,
    /// At most [`MAX_DESCRIPTION_CHARS`] characters.
    pub description: String,
    pub source: LabelSource,
    /// The LLM's judgement whether the segments show a problem to fix (false: ordinary use).
    /// None for fallback labels. Stored with the Task (`tasks.actionable`).
    pub actionable: Option<bool>,
}

impl Label {
    /// The label with control characters removed and both texts cut to the store's limits: the
    /// last guard before anything a labeler wrote reaches the store.
    pub fn clamped(self) -> Label {
        Label {
            title: truncate_chars(&sanitize(&self.title), MAX_TITLE_CHARS).to_string(),
            description: truncate_chars(&sanitize(&self.description), MAX_DESCRIPTION_CHARS)
                .to_string(),
            ..self
        }
    }
}

/// Writes a label for a new Task. Implementations must return labels within the length limits
/// (use [`truncate_chars`]) and must treat the descriptions as data, never as instructions.
pub trait Labeler: Send + Sync {
    fn label(&self, req: &LabelRequest) -> impl Future<Output = anyhow::Result<Label>> + Send;

    /// How many [`Labeler::label`] calls [`label_all`] keeps in flight at once.
    fn max_in_flight(&self) -> usize {
        1
    }
}

/// Labels of `reqs`, in their order. At most [`Labeler::max_in_flight`] requests run at once;
/// a request that fails gets the fallback label, so one bad answer never fails a batch.
pub async fn label_all(labeler: &impl Labeler, reqs: &[LabelRequest]) -> Vec<Label> {
    let in_flight = labeler.max_in_flight().max(1);
    // The futures are built up front by a named async fn (not an async closure inside the
    // stream), which keeps the whole future `Send` for the coordinator's spawned team tasks.
    let each: Vec<_> = reqs.iter().map(|req| label_one(labeler, req)).collect();
    futures::stream::iter(each)
        // `buffered` (not `buffer_unordered`) yields in the input order whatever order the
        // answers arrive in, so the labels line up with the Tasks.
        .buffered(in_flight)
        .collect()
        .await
}

async fn label_one(labeler: &impl Labeler, req: &LabelRequest) -> Label {
    match labeler.label(req).await {
        Ok(label) => label.clamped(),
        Err(e) => {
            tracing::warn!("labelling a Task failed, it gets the fallback label: {e:#}");
            fallback_label(req)
        }
    }
}

/// The labeler a command runs with: the LLM when an endpoint or key is configured, otherwise the
/// offline fallback.
pub enum ConfiguredLabeler {
    Fallback(FallbackLabeler),
    /// Boxed: the fallback variant is empty.
    Llm(Box<LlmLabeler>),
}

impl ConfiguredLabeler {
    /// Builds the labeler for `cfg` and says once in the log which one it is. Without an endpoint
    /// and without a key nothing touches the network.
    pub fn from_config(cfg: &LlmConfig) -> anyhow::Result<Self> {
        if cfg.endpoint().is_none() {
            tracing::info!(
                "no LLM endpoint or API key configured (--llm-base-url, SEGCLUST_LLM_BASE_URL, \
                 SEGCLUST_LLM_API_KEY or OPENAI_API_KEY): new Tasks get deterministic fallback \
                 labels and no network call is made"
            );
            return Ok(ConfiguredLabeler::Fallback(FallbackLabeler));
        }
        Ok(ConfiguredLabeler::Llm(Box::new(LlmLabeler::new(cfg)?)))
    }

    pub fn is_llm(&self) -> bool {
        matches!(self, ConfiguredLabeler::Llm(_))
    }

    /// Request and token counters of the LLM labeler; None for the fallback.
    pub fn stats(&self) -> Option<LlmStats> {
        match self {
            ConfiguredLabeler::Fallback(_) => None,
            ConfiguredLabeler::Llm(l) => Some(l.stats()),
        }
    }

    /// Logs the LLM counters at info level (nothing for the fallback).
    pub fn log_stats(&self) {
        if let Some(s) = self.stats() {
            tracing::info!(
                requests = s.requests,
                failures = s.failures,
                retries = s.retries,
                fallbacks = s.fallbacks,
                prompt_tokens = s.prompt_tokens,
                completion_tokens = s.completion_tokens,
                "LLM labelling"
            );
        }
    }
}

impl Labeler for ConfiguredLabeler {
    async fn label(&self, req: &LabelRequest) -> anyhow::Result<Label> {
        match self {
            ConfiguredLabeler::Fallback(f) => f.label(req).await,
            ConfiguredLabeler::Llm(l) => l.label(req).await,
        }
    }

    fn max_in_flight(&self) -> usize {
        match self {
            ConfiguredLabeler::Fallback(f) => f.max_in_flight(),
            ConfiguredLabeler::Llm(l) => l.max_in_flight(),
        }
    }
}

/// Removes control and invisible formatting characters (bidi overrides, zero-width) and
/// collapses runs of whitespace to one space.
pub fn sanitize(text: &str) -> String {
    let invisible = |c: char| {
        c.is_control()
            || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}')
    };
    text.split(|c: char| c.is_whitespace() || c.is_control())
        .map(|w| w.chars().filter(|&c| !invisible(c)).collect::<String>())
        .filter(|w| !w.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The first `max_chars` characters of `s` (never splitting a character).
pub fn truncate_chars(s: &str, max_chars: usize) -> &str {
    match s.char_indices().nth(max_chars) {
        Some((at, _)) => &s[..at],
        None => s,
    }
}

/// `s` cut to at most `max_chars` characters at a word boundary, with "..." when it was cut.
pub fn truncate_words(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        return s.to_string();
    }
    let budget = max_chars.saturating_sub(3);
    let head = truncate_chars(s, budget);
    // Back to the last space, unless that would drop most of the text (one very long word).
    let cut = match head.rfind(' ') {
        Some(at) if at >= head.len() / 2 => &head[..at],
        _ => head,
    };
    format!("{}...", cut.trim_end_matches([' ', ',', ';', ':']))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(descriptions: &[&str]) -> LabelRequest {
        LabelRequest {
            descriptions: descriptions.iter().map(|s| s.to_string()).collect(),
            segment_count: 3,
            distinct_users: 2,
            mean_impact: 0.5,
        }
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate_chars("héllo", 2), "hé");
        assert_eq!(truncate_chars("héllo", 10), "héllo");
        assert_eq!(truncate_chars("", 3), "");
        assert_eq!(truncate_chars("abc", 0), "");
    }

    #[test]
    fn truncate_words_cuts_at_a_space_within_the_limit() {
        assert_eq!(truncate_words("short", 10), "short");
        let cut = truncate_words("the quick brown fox jumps over", 16);
        assert_eq!(cut, "the quick...");
        assert!(cut.chars().count() <= 16);
        let cut = truncate_words(&"é".repeat(50), 10);
        assert_eq!(cut.chars().count(), 10);
    }

    #[test]
    fn sanitize_collapses_whitespace_and_strips_invisibles() {
        assert_eq!(sanitize("  a\u{200B}b \r\n\tc\u{0000}d  "), "ab c d");
    }

    #[test]
    fn clamped_labels_fit_the_store() {
        let l = Label {
            title: format!("Fix \u{202E}{}", "x".repeat(400)),
            description: "d\u{0007} ".repeat(3000),
            source: LabelSource::Llm,
            actionable: Some(true),
        }
        .clamped();
        assert_eq!(l.title.chars().count(), MAX_TITLE_CHARS);
        assert!(l.description.chars().count() <= MAX_DESCRIPTION_CHARS);
        assert!(!l.title.contains('\u{202E}'));
        assert!(!l.description.contains('\u{0007}'));
    }

    #[test]
    fn source_text_round_trip() {
        for s in [LabelSource::Llm, LabelSource::Fallback] {
            assert_eq!(s.as_str().parse::<LabelSource>().unwrap(), s);
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{s}\""));
        }
        assert!("gpt".parse::<LabelSource>().is_err());
    }

    /// Fails every other request, and answers slowly so that answers arrive out of order.
    struct Flaky;

    impl Labeler for Flaky {
        fn label(&self, req: &LabelRequest) -> impl Future<Output = anyhow::Result<Label>> + Send {
            let first = req.descriptions.first().cloned().unwrap_or_default();
            async move {
                let n: u64 = first.parse()?;
                tokio::time::sleep(std::time::Duration::from_millis(40 - n * 4)).await;
                anyhow::ensure!(n.is_multiple_of(2), "odd request {n} fails");
                Ok(Label {
                    title: format!("Fix problem number {n} now"),
                    description: "d".into(),
                    source: LabelSource::Llm,
                    actionable: Some(true),
                })
            }
        }

        fn max_in_flight(&self) -> usize {
            4
        }
    }

    #[tokio::test]
    async fn label_all_keeps_the_order_and_falls_back_per_request() {
        let reqs: Vec<LabelRequest> = (0..10).map(|i| req(&[&i.to_string()])).collect();
        let labels = label_all(&Flaky, &reqs).await;
        assert_eq!(labels.len(), 10);
        for (i, l) in labels.iter().enumerate() {
            if i % 2 == 0 {
                assert_eq!(l.title, format!("Fix problem number {i} now"));
                assert_eq!(l.source, LabelSource::Llm);
            } else {
                assert_eq!(l, &fallback_label(&reqs[i]));
            }
        }
    }

    #[tokio::test]
    async fn no_endpoint_and_no_key_means_the_fallback() {
        let labeler = ConfiguredLabeler::from_config(&LlmConfig::default()).unwrap();
        assert!(!labeler.is_llm());
        assert!(labeler.stats().is_none());
        let r = req(&["User could not log in"]);
        assert_eq!(labeler.label(&r).await.unwrap(), fallback_label(&r));
    }
}
