//! The pairwise search matching made before its screen: every comparison exact, one pair at a
//! time. Kept for tests only, as the oracle the screened `plan` must agree with exactly. It
//! shares the closest-first merge after its first step (`merge_closest_first`), which the
//! screen never touched.

use super::{Group, Plan, Target, TaskCentroid, centroid, merge_centroids, merge_closest_first};
use crate::matrix::{Matrix, cosine_distance_unit};

/// Nearest centroid among `candidates` strictly within `threshold`; ties go to the earlier one.
fn nearest_within<'a>(
    c: &[f32],
    candidates: impl Iterator<Item = &'a [f32]>,
    threshold: f64,
) -> Option<(usize, f64)> {
    let mut best: Option<(usize, f64)> = None;
    for (i, t) in candidates.enumerate() {
        let d = cosine_distance_unit(c, t);
        if d < threshold && best.is_none_or(|(_, bd)| d < bd) {
            best = Some((i, d));
        }
    }
    best
}

fn start_task(plan: &mut Plan, g: Group) {
    let j = plan.new_tasks.len();
    plan.links
        .extend(g.members.iter().map(|&r| (r, Target::New(j))));
    plan.new_tasks.push(g);
}

/// `super::agglomerate` with its first step pair by pair.
fn agglomerate(groups: Vec<(Group, bool)>, threshold: f64) -> Vec<(Group, bool)> {
    merge_closest_first(groups, threshold, |groups| {
        let k = groups.len();
        (0..k)
            .flat_map(|a| (a + 1..k).map(move |b| (a, b)))
            .filter_map(|(a, b)| {
                let d = cosine_distance_unit(&groups[a].centroid, &groups[b].centroid);
                (d < threshold).then_some((a, b, d))
            })
            .collect()
    })
}

/// Matches `clusters` (groups of rows of `unit_rows`) to `tasks`, merging close new clusters,
/// then attaches `singles` (noise rows) to an existing or new Task within `threshold` when one is
/// close; noise rows that match nothing are not linked. `rescue` rows (high-impact noise that
/// matched nothing) become single-row Tasks of their own.
pub fn plan(
    unit_rows: &Matrix,
    clusters: &[Vec<usize>],
    noise: &[usize],
    rescue: impl Fn(usize) -> bool,
    tasks: &[TaskCentroid],
    threshold: f64,
) -> Plan {
    let mut tasks: Vec<TaskCentroid> = tasks.to_vec();
    tasks.sort_by_key(|t| t.task_id);
    let mut grown = vec![false; tasks.len()];
    let mut plan = Plan::default();

    // `new_groups: false` looks at the existing Tasks only.
    let mut absorb = |plan: &mut Plan,
                      tasks: &mut Vec<TaskCentroid>,
                      members: &[usize],
                      c: &[f32],
                      new_groups: bool| {
        let w = members.len() as i64;
        if let Some((i, _)) =
            nearest_within(c, tasks.iter().map(|t| t.centroid.as_slice()), threshold)
        {
            let t = &mut tasks[i];
            t.centroid = merge_centroids(&t.centroid, t.weight, c, w);
            t.weight += w;
            grown[i] = true;
            plan.links
                .extend(members.iter().map(|&r| (r, Target::Existing(t.task_id))));
            return true;
        }
        if !new_groups {
            return false;
        }
        if let Some((j, _)) = nearest_within(
            c,
            plan.new_tasks.iter().map(|g| g.centroid.as_slice()),
            threshold,
        ) {
            let g = &mut plan.new_tasks[j];
            g.centroid = merge_centroids(&g.centroid, g.members.len() as i64, c, w);
            g.members.extend_from_slice(members);
            plan.links
                .extend(members.iter().map(|&r| (r, Target::New(j))));
            return true;
        }
        false
    };

    // One pass in cluster order: a cluster joins the nearest existing Task, else the nearest
    // new group, else starts one. That is cheap where clusters merge a lot (each is compared
    // with the groups so far), but a group that grew has moved and may now be within the
    // threshold of a group made before it. So where any cluster joined a group, the groups
    // are then merged closest first until no two are within the threshold, and each merged
    // group gets one more look at the existing Tasks. `moved[j]`: new group j took in more
    // than its first cluster.
    let mut moved: Vec<bool> = Vec::new();
    for members in clusters.iter().filter(|m| !m.is_empty()) {
        let c = centroid(unit_rows, members);
        let links_before = plan.links.len();
        if !absorb(&mut plan, &mut tasks, members, &c, true) {
            start_task(
                &mut plan,
                Group {
                    members: members.clone(),
                    centroid: c,
                },
            );
            moved.push(false);
        } else if let Some((_, Target::New(j))) = plan.links.get(links_before) {
            moved[*j] = true;
        }
    }
    if moved.contains(&true) {
        let groups = std::mem::take(&mut plan.new_tasks);
        plan.links.retain(|(_, t)| matches!(t, Target::Existing(_)));
        for (g, merged) in agglomerate(groups.into_iter().zip(moved).collect(), threshold) {
            if !(merged && absorb(&mut plan, &mut tasks, &g.members, &g.centroid, false)) {
                start_task(&mut plan, g);
            }
        }
    }
    for &r in noise {
        let c = unit_rows.row(r).to_vec();
        if !absorb(&mut plan, &mut tasks, &[r], &c, true) && rescue(r) {
            start_task(
                &mut plan,
                Group {
                    members: vec![r],
                    centroid: c,
                },
            );
        }
    }
    plan.updated = tasks
        .into_iter()
        .zip(grown)
        .filter_map(|(t, g)| g.then_some(t))
        .collect();
    plan
}
