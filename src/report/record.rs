//! What a batch records about itself for the report: its quarantine reasons counted by kind and
//! a compact 2-D map of its rows. Built by `pipeline::run_batch` and written by the store in the
//! batch's commit.

use std::collections::{BTreeMap, HashMap};

use crate::fnv::fnv1a;
use crate::matrix::Matrix;
use crate::segment::Quarantine;
use crate::store::{MapPoint, TaskRef};

/// Most points a run's map keeps; a 5,000-point map is about 150 KB of JSON and draws at once.
pub const MAP_MAX_POINTS: usize = 5_000;

/// The first two columns of a PCA projection: the plane of greatest variance, the natural 2-D
/// view of what HDBSCAN clustered. Empty when the projection has fewer than two columns.
pub fn first_two_axes(projected: &Matrix) -> Vec<[f32; 2]> {
    if projected.cols() < 2 {
        return Vec::new();
    }
    (0..projected.rows())
        .map(|r| {
            let row = projected.row(r);
            [row[0], row[1]]
        })
        .collect()
}

/// The map of a batch: row `r` at `coords[r]`, in `cluster_of[r]` (-1 = noise), linked to
/// `task_of[r]`. More than [`MAP_MAX_POINTS`] rows are sampled by a hash of their document_id,
/// so the same rows are kept whatever their order, and reruns draw the same map.
pub fn map_points(
    coords: &[[f32; 2]],
    document_ids: &[&str],
    cluster_of: &[i32],
    task_of: &HashMap<usize, TaskRef>,
) -> Vec<MapPoint> {
    let n = coords.len().min(document_ids.len()).min(cluster_of.len());
    let mut rows: Vec<usize> = (0..n).collect();
    if n > MAP_MAX_POINTS {
        rows.sort_by_key(|&r| (fnv1a(document_ids[r].as_bytes()), r));
        rows.truncate(MAP_MAX_POINTS);
        rows.sort_unstable();
    }
    rows.into_iter()
        .map(|r| MapPoint {
            x: coords[r][0],
            y: coords[r][1],
            cluster: cluster_of[r],
            task: task_of.get(&r).copied(),
        })
        .collect()
}

/// Quarantined rows counted by kind of reason, most frequent first. `from_source` rows could not
/// be read at all; their reasons start with the file and line, which are cut off.
pub fn quarantine_reasons(rows: &[Quarantine], from_source: usize) -> Vec<(String, i64)> {
    let mut counts: BTreeMap<String, i64> = BTreeMap::new();
    for (i, q) in rows.iter().enumerate() {
        let kind = if i < from_source {
            let why = q.reason.split_once(": ").map_or(q.reason.as_str(), |x| x.1);
            format!("unreadable row ({})", reason_kind(why))
        } else {
            reason_kind(&q.reason)
        };
        *counts.entry(kind).or_default() += 1;
    }
    let mut out: Vec<(String, i64)> = counts.into_iter().collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    out
}

/// The kind of a reason: the text before any `": "` detail, quoted values elided and numbers
/// replaced by N, so that "value at index 3 is NaN" and "... index 7 ..." count together.
pub fn reason_kind(reason: &str) -> String {
    let head = reason.split_once(": ").map_or(reason, |x| x.0);
    let mut out = String::with_capacity(head.len());
    let mut in_quote = false;
    let mut last_digit = false;
    for c in head.chars() {
        if c == '\'' {
            if !in_quote {
                out.push_str("'…'");
            }
            in_quote = !in_quote;
            continue;
        }
        if in_quote {
            continue;
        }
        if c.is_ascii_digit() {
            if !last_digit {
                out.push('N');
            }
            last_digit = true;
            continue;
        }
        last_digit = false;
        out.push(c);
    }
    out.chars().take(160).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_of_one_kind_count_together() {
        let q = |reason: &str| Quarantine {
            team_id: 1,
            document_id: "d".into(),
            reason: reason.into(),
        };
        let rows = [
            q("f.jsonl line 3: not a valid JSON object: expected value at line 1 column 2"),
            q("embedding value at index 3 is NaN"),
            q("embedding value at index 17 is NaN"),
            q("metadata has no session_id and document_id 'abc' is not shaped {session_id}"),
        ];
        let r = quarantine_reasons(&rows, 1);
        assert_eq!(
            r,
            vec![
                ("embedding value at index N is NaN".to_string(), 2),
                (
                    "metadata has no session_id and document_id '…' is not shaped {session_id}"
                        .to_string(),
                    1
                ),
                ("unreadable row (not a valid JSON object)".to_string(), 1),
            ]
        );
    }

    #[test]
    fn large_maps_keep_the_same_rows_whatever_their_order() {
        let n = MAP_MAX_POINTS + 500;
        let ids: Vec<String> = (0..n).map(|i| format!("s{i}:0:10")).collect();
        let coords: Vec<[f32; 2]> = (0..n).map(|i| [i as f32, 0.0]).collect();
        let clusters = vec![-1; n];
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let a = map_points(&coords, &refs, &clusters, &HashMap::new());
        assert_eq!(a.len(), MAP_MAX_POINTS);
        let mut rev_refs = refs.clone();
        rev_refs.reverse();
        let rev_coords: Vec<[f32; 2]> = coords.iter().rev().copied().collect();
        let b = map_points(&rev_coords, &rev_refs, &clusters, &HashMap::new());
        let mut xa: Vec<u32> = a.iter().map(|p| p.x as u32).collect();
        let mut xb: Vec<u32> = b.iter().map(|p| p.x as u32).collect();
        xa.sort_unstable();
        xb.sort_unstable();
        assert_eq!(
            xa, xb,
            "the sample depends on document ids, not on row order"
        );
    }
}
