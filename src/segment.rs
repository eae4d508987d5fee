//! Segments as they come from a source, and the watermark that orders them.

use serde::{Deserialize, Serialize};

/// A row as read from a source, before validation. Everything here is untrusted input.
#[derive(Clone, Debug, PartialEq)]
pub struct RawSegment {
    pub team_id: i64,
    pub document_id: String,
    pub content: String,
    /// JSON text with at least `session_id` and `distinct_id`.
    pub metadata: String,
    pub timestamp_ms: i64,
    pub inserted_at_ms: i64,
    pub embedding: Vec<f32>,
}

/// A validated segment, without its embedding (that lives in a row of the batch's `Matrix`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    pub team_id: i64,
    pub document_id: String,
    pub session_id: String,
    pub distinct_id: String,
    pub content: String,
    pub timestamp_ms: i64,
    pub inserted_at_ms: i64,
    /// Parsed metadata, kept for impact rules that read structured fields.
    pub metadata: serde_json::Value,
}

/// Position in a team's stream: rows strictly after `(inserted_at_ms, document_id)` are new.
/// Ordering on the pair means rows sharing a timestamp are neither skipped nor repeated.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Watermark {
    pub inserted_at_ms: i64,
    pub document_id: String,
}

impl Watermark {
    /// True when a row at `(inserted_at_ms, document_id)` comes strictly after this watermark.
    pub fn is_before(&self, inserted_at_ms: i64, document_id: &str) -> bool {
        (self.inserted_at_ms, self.document_id.as_str()) < (inserted_at_ms, document_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermark_orders_by_time_then_id() {
        let w = Watermark {
            inserted_at_ms: 10,
            document_id: "b".into(),
        };
        assert!(w.is_before(10, "c"));
        assert!(!w.is_before(10, "b"));
        assert!(!w.is_before(10, "a"));
        assert!(w.is_before(11, "a"));
        assert!(!w.is_before(9, "z"));
    }
}

/// A row that was set aside instead of processed, with the reason a person can act on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quarantine {
    pub team_id: i64,
    /// The row's document_id, or `<file>:<line>` when the row has none.
    pub document_id: String,
    pub reason: String,
}
