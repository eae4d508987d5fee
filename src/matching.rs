//! Matching clusters to Tasks: one recurring problem, one Task.
//!
//! Centroids live in the original embedding space (L2-normalized rows), not the PCA space, so
//! they stay comparable across batches whose PCA bases differ. A cluster joins the nearest
//! existing Task within `threshold` cosine distance; new clusters within `threshold` of each
//! other become one new Task (merged closest pair first, until no two are that close), so a
//! problem split by HDBSCAN in one batch is not filed twice. Every decision is made in a fixed
//! order (clusters as given, Tasks by id, merges by distance then index), so a rerun of the same
//! batch assigns exactly the same way.

use crate::matrix::{Matrix, cosine_distance_unit, normalize};

/// The mean of the member rows of `unit_rows` (already unit length), normalized again.
pub fn centroid(unit_rows: &Matrix, members: &[usize]) -> Vec<f32> {
    let mut acc = vec![0.0f64; unit_rows.cols()];
    for &i in members {
        for (a, &x) in acc.iter_mut().zip(unit_rows.row(i)) {
            *a += f64::from(x);
        }
    }
    unit_from_f64(&acc)
}

/// The count-weighted mean of two centroids, normalized: how a Task's centroid absorbs a cluster.
pub fn merge_centroids(a: &[f32], wa: i64, b: &[f32], wb: i64) -> Vec<f32> {
    let (wa, wb) = (wa.max(0) as f64, wb.max(0) as f64);
    let acc: Vec<f64> = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| wa * f64::from(x) + wb * f64::from(y))
        .collect();
    unit_from_f64(&acc)
}

fn unit_from_f64(acc: &[f64]) -> Vec<f32> {
    let mut v: Vec<f32> = acc.iter().map(|&x| x as f32).collect();
    normalize(&mut v);
    v
}

/// Sends cluster members farther than `threshold` (cosine) from their cluster's centroid in the
/// original space back to noise; a cluster left with fewer than `min_size` members dissolves.
///
/// Why: PCA keeps no direction for a problem seen once, so unrelated one-off segments (say four
/// different crashes) all project near the origin of the reduced space and HDBSCAN groups them.
/// In the original space they are far apart, and a Task must describe one problem. Members sent
/// back to noise still get matched, rescued or carried over like any other noise.
pub fn coherent(
    unit_rows: &Matrix,
    clusters: Vec<Vec<usize>>,
    mut noise: Vec<usize>,
    threshold: f64,
    min_size: usize,
) -> (Vec<Vec<usize>>, Vec<usize>) {
    let mut kept = Vec::with_capacity(clusters.len());
    for members in clusters {
        let c = centroid(unit_rows, &members);
        let (near, far): (Vec<usize>, Vec<usize>) = members
            .into_iter()
            .partition(|&r| cosine_distance_unit(unit_rows.row(r), &c) <= threshold);
        noise.extend(far);
        if near.len() >= min_size.max(1) {
            kept.push(near);
        } else {
            noise.extend(near);
        }
    }
    noise.sort_unstable();
    (kept, noise)
}

/// An existing Task as matching sees it.
#[derive(Clone, Debug)]
pub struct TaskCentroid {
    pub task_id: i64,
    pub centroid: Vec<f32>,
    pub weight: i64,
}

/// A group of batch rows that should end up in one Task.
#[derive(Clone, Debug)]
pub struct Group {
    pub members: Vec<usize>,
    pub centroid: Vec<f32>,
}

/// Where a group went.
#[derive(Clone, Debug, PartialEq)]
pub enum Target {
    Existing(i64),
    /// Index into `Plan::new_tasks`.
    New(usize),
}

/// The outcome of matching one batch.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// New Tasks: their members and centroid (weight = members.len()).
    pub new_tasks: Vec<Group>,
    /// Existing Tasks that grew: (task_id, new centroid, new weight), in task-id order.
    pub updated: Vec<TaskCentroid>,
    /// (row, target) for every row that gets linked.
    pub links: Vec<(usize, Target)>,
}

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

impl Plan {
    /// Makes `g` a new Task and links its members to it.
    fn start_task(&mut self, g: Group) {
        let j = self.new_tasks.len();
        self.links
            .extend(g.members.iter().map(|&r| (r, Target::New(j))));
        self.new_tasks.push(g);
    }
}

/// A candidate merge: the groups' distance, then their indices, so that the heap pops the
/// closest pair first and breaks exact ties the same way in every run.
#[derive(PartialEq)]
struct Merge {
    d: f64,
    a: usize,
    b: usize,
    /// How many merges each group had taken when this distance was measured: a pair measured
    /// before either group last grew is stale.
    stamps: (u32, u32),
}

impl Eq for Merge {}

impl Ord for Merge {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        // Reversed: BinaryHeap is a max-heap and the closest pair must come first.
        o.d.total_cmp(&self.d)
            .then(o.a.cmp(&self.a))
            .then(o.b.cmp(&self.b))
    }
}

impl PartialOrd for Merge {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}

/// Merges groups whose centroids are within `threshold`, closest pair first, each merge
/// replacing the two by their count-weighted centroid, until no two groups are within
/// `threshold` (centroid linkage, stopped at the threshold).
///
/// Why after the one pass in cluster order: a group that later absorbs a cluster moves, and
/// can end up within the threshold of a group made before it, which one pass never looks at
/// again. On real embeddings (all-MiniLM-L6-v2 on the demo, `tools/quality/run.sh`) HDBSCAN's
/// leaf clusters split a problem by phrasing, and one pass left 4 pairs of the same problem's
/// Tasks within the threshold of each other. Why not instead of it: every pair is compared
/// first, which at 5,721 clusters (a 50,000-row demo batch) took 46 s, where one pass, whose
/// groups collapse to a few dozen, compares each cluster with those few. Each group comes with
/// whether it has moved (took in another), and goes back with that, updated.
fn agglomerate(groups: Vec<(Group, bool)>, threshold: f64) -> Vec<(Group, bool)> {
    use rayon::prelude::*;
    use std::collections::BinaryHeap;

    let (mut groups, mut moved): (Vec<Group>, Vec<bool>) = groups.into_iter().unzip();
    let k = groups.len();
    let mut heap: BinaryHeap<Merge> = (0..k)
        .into_par_iter()
        .flat_map_iter(|a| {
            let ca = &groups[a].centroid;
            let groups = &groups;
            (a + 1..k).filter_map(move |b| {
                let d = cosine_distance_unit(ca, &groups[b].centroid);
                (d < threshold).then_some(Merge {
                    d,
                    a,
                    b,
                    stamps: (0, 0),
                })
            })
        })
        .collect::<Vec<_>>()
        .into();
    let mut alive = vec![true; k];
    let mut stamp = vec![0u32; k];
    while let Some(m) = heap.pop() {
        if !(alive[m.a] && alive[m.b]) || (stamp[m.a], stamp[m.b]) != m.stamps {
            continue;
        }
        // The lower index survives, so the new Task's place follows its first cluster.
        let taken = std::mem::take(&mut groups[m.b].members);
        let centroid = merge_centroids(
            &groups[m.a].centroid,
            groups[m.a].members.len() as i64,
            &groups[m.b].centroid,
            taken.len() as i64,
        );
        let g = &mut groups[m.a];
        g.centroid = centroid;
        g.members.extend(taken);
        g.members.sort_unstable();
        alive[m.b] = false;
        stamp[m.a] += 1;
        moved[m.a] = true;
        let (a, c) = (m.a, &groups[m.a].centroid);
        let near: Vec<Merge> = (0..k)
            .into_par_iter()
            .filter(|&o| o != a && alive[o])
            .filter_map(|o| {
                let d = cosine_distance_unit(c, &groups[o].centroid);
                let (x, y) = (a.min(o), a.max(o));
                (d < threshold).then(|| Merge {
                    d,
                    a: x,
                    b: y,
                    stamps: (stamp[x], stamp[y]),
                })
            })
            .collect();
        heap.extend(near);
    }
    groups
        .into_iter()
        .zip(alive)
        .zip(moved)
        .filter_map(|((g, a), m)| a.then_some((g, m)))
        .collect()
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
            plan.start_task(Group {
                members: members.clone(),
                centroid: c,
            });
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
                plan.start_task(g);
            }
        }
    }
    for &r in noise {
        let c = unit_rows.row(r).to_vec();
        if !absorb(&mut plan, &mut tasks, &[r], &c, true) && rescue(r) {
            plan.start_task(Group {
                members: vec![r],
                centroid: c,
            });
        }
    }
    plan.updated = tasks
        .into_iter()
        .zip(grown)
        .filter_map(|(t, g)| g.then_some(t))
        .collect();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(v: &[f32]) -> Vec<f32> {
        let mut v = v.to_vec();
        normalize(&mut v);
        v
    }

    fn rows(vs: &[&[f32]]) -> Matrix {
        let data: Vec<f32> = vs.iter().flat_map(|v| unit(v)).collect();
        Matrix::new(vs.len(), vs[0].len(), data).unwrap()
    }

    #[test]
    fn centroid_is_normalized_mean() {
        let m = rows(&[&[1.0, 0.0], &[0.0, 1.0]]);
        let c = centroid(&m, &[0, 1]);
        let s = std::f32::consts::FRAC_1_SQRT_2;
        assert!((c[0] - s).abs() < 1e-6 && (c[1] - s).abs() < 1e-6);
    }

    #[test]
    fn merge_weights_by_count() {
        let c = merge_centroids(&[1.0, 0.0], 3, &[0.0, 1.0], 1);
        assert!((c[1] / c[0] - 1.0 / 3.0).abs() < 1e-6);
    }

    #[test]
    fn cluster_joins_nearest_existing_task_and_updates_it() {
        let m = rows(&[
            &[1.0, 0.05, 0.0],
            &[1.0, -0.05, 0.0],
            &[0.0, 0.0, 1.0],
            &[0.0, 0.1, 1.0],
        ]);
        let tasks = vec![
            TaskCentroid {
                task_id: 7,
                centroid: unit(&[0.0, 1.0, 0.0]),
                weight: 4,
            },
            TaskCentroid {
                task_id: 3,
                centroid: unit(&[1.0, 0.1, 0.0]),
                weight: 2,
            },
        ];
        let p = plan(&m, &[vec![0, 1], vec![2, 3]], &[], |_| false, &tasks, 0.3);
        assert_eq!(p.new_tasks.len(), 1);
        assert_eq!(p.new_tasks[0].members, vec![2, 3]);
        assert_eq!(p.updated.len(), 1);
        assert_eq!(p.updated[0].task_id, 3);
        assert_eq!(p.updated[0].weight, 4);
        assert!(
            p.links.contains(&(0, Target::Existing(3))) && p.links.contains(&(3, Target::New(0)))
        );
    }

    #[test]
    fn close_new_clusters_merge_and_far_ones_do_not() {
        let m = rows(&[
            &[1.0, 0.0, 0.0],
            &[1.0, 0.1, 0.0],
            &[1.0, 0.0, 0.1],
            &[0.0, 1.0, 0.0],
            &[0.1, 1.0, 0.0],
        ]);
        let p = plan(
            &m,
            &[vec![0, 1], vec![2], vec![3, 4]],
            &[],
            |_| false,
            &[],
            0.3,
        );
        assert_eq!(p.new_tasks.len(), 2);
        assert_eq!(p.new_tasks[0].members, vec![0, 1, 2]);
        assert_eq!(p.links.len(), 5);
    }

    #[test]
    fn groups_that_end_within_the_threshold_are_merged() {
        let at = |deg: f32| {
            let r = deg.to_radians();
            vec![r.cos(), r.sin()]
        };
        // Cluster 0 (one row at 0 degrees) and cluster 1 (five rows at 60) are 60 degrees apart:
        // not merged. Cluster 2 (five rows at 25) is within 45.6 of both; it is closest to
        // cluster 1 (35 degrees), so they merge first, at about 42.5 degrees, which is within
        // the threshold of cluster 0: one Task. One pass in cluster order made two: 0 took 2
        // (25 degrees, centroid then about 20.8), and 1, made before 2 grew 0, stayed apart.
        let mut vs: Vec<Vec<f32>> = vec![at(0.0)];
        vs.extend((0..5).map(|_| at(60.0)));
        vs.extend((0..5).map(|_| at(25.0)));
        let refs: Vec<&[f32]> = vs.iter().map(|v| v.as_slice()).collect();
        let m = rows(&refs);
        let clusters = vec![vec![0], vec![1, 2, 3, 4, 5], vec![6, 7, 8, 9, 10]];
        let p = plan(&m, &clusters, &[], |_| false, &[], 0.3);
        assert_eq!(p.new_tasks.len(), 1, "{:?}", p.new_tasks);
        assert_eq!(p.new_tasks[0].members, (0..11).collect::<Vec<_>>());
        // Any order of the clusters gives the same Task.
        let reversed: Vec<Vec<usize>> = clusters.iter().rev().cloned().collect();
        let q = plan(&m, &reversed, &[], |_| false, &[], 0.3);
        assert_eq!(q.new_tasks.len(), 1);
        // No two of the resulting new Tasks are ever within the threshold.
        let far = plan(
            &m,
            &[vec![0], vec![1, 2, 3, 4, 5]],
            &[],
            |_| false,
            &[],
            0.3,
        );
        assert_eq!(far.new_tasks.len(), 2);
        let d = cosine_distance_unit(&far.new_tasks[0].centroid, &far.new_tasks[1].centroid);
        assert!(d >= 0.3);
    }

    /// Two clusters each just outside the threshold of an existing Task (47 degrees from it;
    /// 0.3 is about 45.6) and 40 degrees from each other: they merge, and their merged centroid
    /// (43.5 degrees from the Task) joins it. One pass made a new Task of them.
    #[test]
    fn a_merged_group_near_an_existing_task_joins_it() {
        let (tilt, turn) = (47f32.to_radians(), 27.9f32.to_radians());
        let at = |b: f32| vec![tilt.sin() * b.cos(), tilt.sin() * b.sin(), tilt.cos()];
        let m = rows(&[&at(turn), &at(-turn)]);
        let tasks = vec![TaskCentroid {
            task_id: 9,
            centroid: vec![0.0, 0.0, 1.0],
            weight: 1,
        }];
        for r in 0..2 {
            assert!(cosine_distance_unit(m.row(r), &tasks[0].centroid) > 0.3);
        }
        assert!(cosine_distance_unit(m.row(0), m.row(1)) < 0.3);
        let p = plan(&m, &[vec![0], vec![1]], &[], |_| false, &tasks, 0.3);
        assert!(p.new_tasks.is_empty(), "{:?}", p.new_tasks);
        assert_eq!(
            p.links,
            vec![(0, Target::Existing(9)), (1, Target::Existing(9))]
        );
        assert_eq!(p.updated[0].weight, 3);
    }

    #[test]
    fn noise_joins_a_close_task_is_rescued_when_high_impact_or_dropped() {
        let m = rows(&[&[1.0, 0.0, 0.0], &[0.0, 1.0, 0.0], &[0.0, 0.0, 1.0]]);
        let tasks = vec![TaskCentroid {
            task_id: 1,
            centroid: unit(&[1.0, 0.1, 0.0]),
            weight: 5,
        }];
        let p = plan(&m, &[], &[0, 1, 2], |r| r == 1, &tasks, 0.3);
        assert_eq!(p.links, vec![(0, Target::Existing(1)), (1, Target::New(0))]);
        assert_eq!(p.new_tasks.len(), 1);
        assert_eq!(p.updated[0].weight, 6);
    }

    #[test]
    fn incoherent_members_go_back_to_noise() {
        // Two close rows, and three unrelated ones that a reduced space put together.
        let m = rows(&[
            &[1.0, 0.0, 0.0, 0.0, 0.0],
            &[1.0, 0.1, 0.0, 0.0, 0.0],
            &[0.0, 0.0, 1.0, 0.0, 0.0],
            &[0.0, 0.0, 0.0, 1.0, 0.0],
            &[0.0, 0.0, 0.0, 0.0, 1.0],
        ]);
        let (c, n) = coherent(&m, vec![vec![0, 1], vec![2, 3, 4]], vec![], 0.3, 2);
        assert_eq!(c, vec![vec![0, 1]]);
        assert_eq!(n, vec![2, 3, 4]);
    }

    #[test]
    fn threshold_is_strict() {
        // cosine distance exactly 1.0 between orthogonal vectors: threshold 1.0 must not match.
        let m = rows(&[&[1.0, 0.0]]);
        let tasks = vec![TaskCentroid {
            task_id: 1,
            centroid: vec![0.0, 1.0],
            weight: 1,
        }];
        let p = plan(&m, &[vec![0]], &[], |_| false, &tasks, 1.0);
        assert_eq!(p.new_tasks.len(), 1);
    }
}
