//! Validation: turns untrusted source rows into segments plus one embedding matrix, setting
//! bad rows aside with a reason instead of failing the batch.
//!
//! | rule (checked in this order)    | outcome                                                          |
//! |---------------------------------|------------------------------------------------------------------|
//! | document_id empty               | quarantined: "document_id is empty"                              |
//! | embedding empty                 | quarantined: "embedding is empty"                                |
//! | embedding dimension != expected | quarantined: "embedding has G dimensions, expected E"            |
//! | embedding value NaN or infinite | quarantined: "embedding value at index I is NaN" (first one)     |
//! | embedding all zeros             | quarantined: "embedding is a zero vector" (it has no direction)  |
//! | metadata not a JSON object      | quarantined: "metadata is not a JSON object: ..."                |
//! | metadata has no distinct_id     | quarantined: "metadata has no distinct_id" (users uncountable)   |
//! | metadata has no session_id      | taken from a document_id shaped `{session_id}:{start}:{end}`;    |
//! |                                 | quarantined when the document_id is not shaped so                |
//! | document_id already accepted    | quarantined: "duplicate document_id in batch: ..." (first copy   |
//! |                                 | kept), saying whether it is an identical copy (a redelivery, as  |
//! |                                 | at-least-once ingestion makes) or another version of the row     |
//!
//! The expected dimension is the caller's (the model's, or the dimension of existing Task
//! centroids) or, when none is given, the most common dimension in the batch, so one stray row
//! of another model cannot set the dimension for everyone else. Ties go to the dimension seen
//! first.
//!
//! session_id and distinct_id may be JSON strings or numbers (numbers are used as their decimal
//! text); empty strings count as missing. Duplicates are checked last, against rows already
//! accepted: a bad first copy does not cost the good second copy its place.
//!
//! Embeddings are not normalized here (the pipeline does that on the matrix). Memory: each row's
//! embedding is copied into the matrix buffer and dropped at once, so live allocations stay at
//! about one copy of the batch's embeddings. The buffer is reserved for the worst case up front;
//! pages never written are never touched, and the excess is released at the end. (Resident
//! memory can still show the page twice: the allocator keeps the freed row buffers for reuse by
//! the next page instead of returning them to the OS.)

use std::collections::HashMap;

use serde_json::Value;

use crate::matrix::Matrix;
use crate::segment::{Quarantine, RawSegment, Segment};

/// The accepted rows of a batch (`segments[i]` is row `i` of `embeddings`) and the rest.
#[derive(Debug)]
pub struct Validated {
    pub segments: Vec<Segment>,
    pub embeddings: Matrix,
    pub quarantined: Vec<Quarantine>,
}

/// Validates a batch; see the module table for the rules. Never fails: every row ends up either
/// in `segments` or in `quarantined`.
pub fn validate(rows: Vec<RawSegment>, expected_dim: Option<usize>) -> Validated {
    let dim = expected_dim.unwrap_or_else(|| most_common_dim(&rows));
    let mut data: Vec<f32> = Vec::with_capacity(rows.len().saturating_mul(dim));
    let mut segments = Vec::new();
    let mut quarantined = Vec::new();
    // document_id -> its row in `segments` (and in `data`).
    let mut accepted_ids: HashMap<String, usize> = HashMap::new();

    for row in rows {
        let checked = check(&row, dim).and_then(|ok| match accepted_ids.get(&row.document_id) {
            Some(&i) => Err(duplicate_reason(
                &row,
                &ok.2,
                &segments[i],
                &data[i * dim..][..dim],
            )),
            None => Ok(ok),
        });
        match checked {
            Ok((session_id, distinct_id, metadata)) => {
                data.extend_from_slice(&row.embedding);
                let RawSegment {
                    team_id,
                    document_id,
                    content,
                    timestamp_ms,
                    inserted_at_ms,
                    ..
                } = row; // the embedding is dropped here
                accepted_ids.insert(document_id.clone(), segments.len());
                segments.push(Segment {
                    team_id,
                    document_id,
                    session_id,
                    distinct_id,
                    content,
                    timestamp_ms,
                    inserted_at_ms,
                    metadata,
                });
            }
            Err(reason) => quarantined.push(Quarantine {
                team_id: row.team_id,
                document_id: row.document_id,
                reason,
            }),
        }
    }
    data.shrink_to_fit();
    let embeddings = Matrix::new(segments.len(), dim, data)
        .expect("one row of exactly `dim` values was pushed per accepted segment");
    Validated {
        segments,
        embeddings,
        quarantined,
    }
}

/// The dimension most rows have (empty embeddings ignored); 0 for a batch with none.
fn most_common_dim(rows: &[RawSegment]) -> usize {
    let mut counts: HashMap<usize, (usize, usize)> = HashMap::new(); // dim -> (count, first seen)
    for (i, r) in rows.iter().enumerate() {
        let len = r.embedding.len();
        if len > 0 {
            counts.entry(len).or_insert((0, i)).0 += 1;
        }
    }
    counts
        .into_iter()
        .max_by(|(_, (ca, fa)), (_, (cb, fb))| ca.cmp(cb).then(fb.cmp(fa)))
        .map_or(0, |(dim, _)| dim)
}

/// The reason given to an identical copy of an accepted row. Such copies are normal under
/// at-least-once delivery, so the metrics count them apart from bad rows (`is_redelivery`).
pub const REDELIVERED: &str =
    "duplicate document_id in batch: an identical copy (a redelivery; the first copy was kept)";

/// Whether a quarantine record is only a redelivered copy (nothing was wrong with the data).
pub fn is_redelivery(q: &Quarantine) -> bool {
    q.reason == REDELIVERED
}

/// Why a second row with an accepted document_id is set aside. An identical copy is what an
/// at-least-once ingestion path (Kafka into a ReplacingMergeTree, before its merge) delivers;
/// a different one is another version of the document. Operators read the two differently.
fn duplicate_reason(
    row: &RawSegment,
    metadata: &Value,
    kept: &Segment,
    kept_emb: &[f32],
) -> String {
    let same_embedding = row.embedding.len() == kept_emb.len()
        && row
            .embedding
            .iter()
            .zip(kept_emb)
            .all(|(a, b)| a.to_bits() == b.to_bits());
    let identical = same_embedding
        && row.content == kept.content
        && *metadata == kept.metadata
        && row.timestamp_ms == kept.timestamp_ms
        && row.inserted_at_ms == kept.inserted_at_ms;
    if identical {
        REDELIVERED.into()
    } else {
        "duplicate document_id in batch: another version of the row (the first copy was kept)"
            .into()
    }
}

/// Applies the rules to one row; on success returns (session_id, distinct_id, parsed metadata).
/// Duplicates are the caller's to find (they need the rows accepted so far).
fn check(row: &RawSegment, dim: usize) -> Result<(String, String, Value), String> {
    if row.document_id.is_empty() {
        return Err("document_id is empty".into());
    }
    let e = &row.embedding;
    if e.is_empty() {
        return Err("embedding is empty".into());
    }
    if e.len() != dim {
        return Err(format!(
            "embedding has {} dimensions, expected {dim}",
            e.len()
        ));
    }
    if let Some((i, v)) = e.iter().enumerate().find(|(_, v)| !v.is_finite()) {
        return Err(format!("embedding value at index {i} is {v}"));
    }
    if e.iter().all(|&v| v == 0.0) {
        return Err("embedding is a zero vector (it has no direction to cluster by)".into());
    }
    let metadata: Value = match serde_json::from_str(&row.metadata) {
        Ok(v @ Value::Object(_)) => v,
        Ok(other) => {
            return Err(format!(
                "metadata is not a JSON object (found {})",
                json_kind(&other)
            ));
        }
        Err(err) => return Err(format!("metadata is not a JSON object: {err}")),
    };
    let Some(distinct_id) = id_field(&metadata, "distinct_id") else {
        return Err("metadata has no distinct_id (needed to count affected users)".into());
    };
    let session_id = match id_field(&metadata, "session_id") {
        Some(s) => s,
        None => session_from_document_id(&row.document_id).ok_or_else(|| {
            format!(
                "metadata has no session_id and document_id '{}' is not shaped {{session_id}}:{{start}}:{{end}}",
                row.document_id
            )
        })?,
    };
    Ok((session_id, distinct_id, metadata))
}

/// A non-empty string or a number from `metadata[key]`.
fn id_field(metadata: &Value, key: &str) -> Option<String> {
    match metadata.get(key)? {
        Value::String(s) if !s.trim().is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// `abc:1000:2000` -> `abc` (the session id may itself contain ':').
fn session_from_document_id(document_id: &str) -> Option<String> {
    let mut parts = document_id.rsplitn(3, ':');
    let (_end, _start, session) = (parts.next()?, parts.next()?, parts.next()?);
    (!session.is_empty()).then(|| session.to_string())
}

/// How a JSON value's type reads in an error message ("a string", "an array").
pub(crate) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(id: &str, meta: &str, emb: Vec<f32>) -> RawSegment {
        RawSegment {
            team_id: 1,
            document_id: id.into(),
            content: format!("content of {id}"),
            metadata: meta.into(),
            timestamp_ms: 5,
            inserted_at_ms: 6,
            embedding: emb,
        }
    }

    const META: &str = r#"{"session_id":"s1","distinct_id":"u1"}"#;

    #[test]
    fn most_common_dimension_wins_when_none_is_given() {
        let rows = vec![
            raw("a:0:1", META, vec![1.0; 4]),
            raw("b:0:1", META, vec![1.0; 3]),
            raw("c:0:1", META, vec![2.0; 3]),
        ];
        let v = validate(rows, None);
        assert_eq!(v.embeddings.cols(), 3);
        assert_eq!(v.segments.len(), 2);
        assert_eq!(v.embeddings.row(1), &[2.0; 3]);
        assert_eq!(v.quarantined.len(), 1);
        assert_eq!(
            v.quarantined[0].reason,
            "embedding has 4 dimensions, expected 3"
        );
    }

    #[test]
    fn session_falls_back_to_document_id_prefix() {
        let rows = vec![
            raw(
                "sess:with:colon:10:20",
                r#"{"distinct_id":7}"#,
                vec![1.0, 0.0],
            ),
            raw("nocolons", r#"{"distinct_id":"u"}"#, vec![1.0, 0.0]),
        ];
        let v = validate(rows, Some(2));
        assert_eq!(v.segments.len(), 1);
        assert_eq!(v.segments[0].session_id, "sess:with:colon");
        assert_eq!(v.segments[0].distinct_id, "7");
        assert!(v.quarantined[0].reason.contains("no session_id"));
    }

    #[test]
    fn empty_batch_and_all_bad_batch_give_empty_matrix() {
        let v = validate(Vec::new(), None);
        assert_eq!((v.embeddings.rows(), v.embeddings.cols()), (0, 0));
        let v = validate(vec![raw("a:0:1", "[]", vec![1.0])], Some(8));
        assert_eq!((v.embeddings.rows(), v.embeddings.cols()), (0, 8));
        assert_eq!(v.quarantined.len(), 1);
    }

    #[test]
    fn bad_first_copy_does_not_block_good_second_copy() {
        let rows = vec![
            raw("a:0:1", META, vec![f32::NAN, 1.0]),
            raw("a:0:1", META, vec![1.0, 1.0]),
            raw("a:0:1", META, vec![2.0, 1.0]),
        ];
        let v = validate(rows, Some(2));
        assert_eq!(v.segments.len(), 1);
        assert_eq!(v.embeddings.row(0), &[1.0, 1.0]);
        assert_eq!(v.quarantined[0].reason, "embedding value at index 0 is NaN");
        assert!(v.quarantined[1].reason.starts_with("duplicate document_id"));
        assert!(v.quarantined[1].reason.contains("another version"));
    }

    #[test]
    fn a_redelivered_copy_is_told_from_another_version() {
        let first = raw("a:0:1", META, vec![1.0, 2.0]);
        let mut content = first.clone();
        content.content.push('!');
        let mut inserted = first.clone();
        inserted.inserted_at_ms += 1;
        let rows = vec![
            first.clone(),
            first.clone(),
            raw("a:0:1", META, vec![1.0, 2.5]),
            content,
            inserted,
        ];
        let v = validate(rows, Some(2));
        assert_eq!(v.segments.len(), 1);
        assert_eq!(v.embeddings.row(0), &[1.0, 2.0]);
        let reasons: Vec<&str> = v.quarantined.iter().map(|q| q.reason.as_str()).collect();
        assert!(
            reasons[0].contains("an identical copy (a redelivery"),
            "{reasons:?}"
        );
        for r in &reasons[1..] {
            assert!(r.contains("another version of the row"), "{r}");
        }
    }
}
