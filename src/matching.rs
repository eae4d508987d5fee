//! Matching clusters to Tasks: one recurring problem, one Task.
//!
//! Centroids live in the original embedding space (L2-normalized rows), not the PCA space, so
//! they stay comparable across batches whose PCA bases differ. A cluster joins the nearest
//! existing Task within `threshold` cosine distance; new clusters within `threshold` of each
//! other become one new Task (merged closest pair first, until no two are that close), so a
//! problem split by HDBSCAN in one batch is not filed twice. Every decision is made in a fixed
//! order (clusters as given, Tasks by id, merges by distance then index), so a rerun of the same
//! batch assigns exactly the same way.
//!
//! The searches are screened (`screen.rs`): one f32 GEMM per block of queries rules out the
//! pairs that are provably too far apart, and exact f64 distances decide the rest, so the
//! screen changes the cost and never a decision (tested against the pairwise search kept in
//! `reference.rs`).

use crate::matrix::{Matrix, cosine_distance_unit, normalize};

#[cfg(test)]
mod reference;
mod screen;

use screen::{Block, Centroids, Screen};

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
    use rayon::prelude::*;
    let split: Vec<(Vec<usize>, Vec<usize>)> = clusters
        .into_par_iter()
        .map(|members| {
            let c = centroid(unit_rows, &members);
            members
                .into_iter()
                .partition(|&r| cosine_distance_unit(unit_rows.row(r), &c) <= threshold)
        })
        .collect();
    let mut kept = Vec::with_capacity(split.len());
    for (near, far) in split {
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

/// Whether a stored Task centroid can be matched with rows of `dim` values. One of another
/// length was made by another embedding model, so its distance to this batch's rows means
/// nothing; one with a NaN or infinite value (a corrupt row) would be at distance NaN or minus
/// infinity from everything and take in the whole batch. Neither is matched (the pipeline
/// warns with the count).
pub fn matchable(centroid: &[f32], dim: usize) -> bool {
    centroid.len() == dim && centroid.iter().all(|x| x.is_finite())
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
    /// Existing Tasks left out because their centroids cannot be matched (`matchable`).
    pub unmatchable: usize,
}

/// One batch's matching as it goes: the existing Tasks and the new groups as centroids the
/// screen can search, and the links so far.
struct Matcher {
    threshold: f64,
    tasks: Centroids,
    task_ids: Vec<i64>,
    weights: Vec<i64>,
    grown: Vec<bool>,
    unmatchable: usize,
    groups: Centroids,
    members: Vec<Vec<usize>>,
    links: Vec<(usize, Target)>,
}

/// One block's screens: of the existing Tasks, and of the new groups.
struct Screens {
    tasks: Screen,
    groups: Screen,
}

impl Matcher {
    fn new(tasks: &[TaskCentroid], dim: usize, threshold: f64) -> Self {
        let mut sorted: Vec<&TaskCentroid> = tasks
            .iter()
            .filter(|t| matchable(&t.centroid, dim))
            .collect();
        sorted.sort_by_key(|t| t.task_id);
        let mut centroids = Centroids::new(dim);
        for t in &sorted {
            centroids.push(&t.centroid);
        }
        Self {
            threshold,
            tasks: centroids,
            task_ids: sorted.iter().map(|t| t.task_id).collect(),
            weights: sorted.iter().map(|t| t.weight).collect(),
            grown: vec![false; sorted.len()],
            unmatchable: tasks.len() - sorted.len(),
            groups: Centroids::new(dim),
            members: Vec::new(),
            links: Vec::new(),
        }
    }

    /// Links `members` (the block's query `j` is their centroid) to the nearest existing Task
    /// within the threshold, else (where `new_groups`) to the nearest new group, moving that
    /// centroid; false where neither is close.
    fn absorb(
        &mut self,
        block: &Block,
        s: &Screens,
        j: usize,
        members: &[usize],
        new_groups: bool,
    ) -> bool {
        let c = block.query(j);
        let w = members.len() as i64;
        if let Some((i, _)) = s
            .tasks
            .nearest_within(block, j, c, &self.tasks, self.threshold)
        {
            let moved = merge_centroids(self.tasks.row(i), self.weights[i], c, w);
            self.tasks.set(i, &moved);
            // A stored weight is outside input: saturate rather than overflow.
            self.weights[i] = self.weights[i].saturating_add(w);
            self.grown[i] = true;
            let id = self.task_ids[i];
            self.links
                .extend(members.iter().map(|&r| (r, Target::Existing(id))));
            return true;
        }
        if !new_groups {
            return false;
        }
        if let Some((g, _)) = s
            .groups
            .nearest_within(block, j, c, &self.groups, self.threshold)
        {
            let moved = merge_centroids(self.groups.row(g), self.members[g].len() as i64, c, w);
            self.groups.set(g, &moved);
            self.members[g].extend_from_slice(members);
            self.links
                .extend(members.iter().map(|&r| (r, Target::New(g))));
            return true;
        }
        false
    }

    /// Makes `members` a new group (a new Task) with centroid `c`, and links them to it.
    fn start(&mut self, members: Vec<usize>, c: &[f32]) -> usize {
        let g = self.groups.push(c);
        self.links
            .extend(members.iter().map(|&r| (r, Target::New(g))));
        self.members.push(members);
        g
    }

    /// Runs `step(matcher, block, screens, i, j)` on queries `i` in `0..n` in order (`j`: the
    /// query's place in its block), in blocks, each screened against the Tasks (and, where
    /// `groups`, the new groups) as they are at the block's start. `block(range)` packs the
    /// range's query vectors.
    fn in_blocks(
        &mut self,
        n: usize,
        groups: bool,
        block: impl Fn(std::ops::Range<usize>) -> Block,
        mut step: impl FnMut(&mut Self, &Block, &mut Screens, usize, usize),
    ) {
        let mut start = 0;
        while start < n {
            let end = n.min(start + screen::block_rows(self.tasks.len() + self.groups.len()));
            let b = block(start..end);
            let mut s = Screens {
                tasks: Screen::new(&b, &mut self.tasks),
                groups: if groups {
                    Screen::new(&b, &mut self.groups)
                } else {
                    Screen::exact()
                },
            };
            for j in 0..end - start {
                step(self, &b, &mut s, start + j, j);
            }
            start = end;
        }
    }

    fn into_plan(self) -> Plan {
        let new_tasks = self
            .members
            .into_iter()
            .enumerate()
            .map(|(g, members)| Group {
                members,
                centroid: self.groups.row(g).to_vec(),
            })
            .collect();
        let updated = (0..self.task_ids.len())
            .filter(|&i| self.grown[i])
            .map(|i| TaskCentroid {
                task_id: self.task_ids[i],
                centroid: self.tasks.row(i).to_vec(),
                weight: self.weights[i],
            })
            .collect();
        Plan {
            new_tasks,
            updated,
            links: self.links,
            unmatchable: self.unmatchable,
        }
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
/// Tasks within the threshold of each other. Why not instead of it: it would change which
/// clusters end up together on data that one pass already handles well, and before the screen
/// its first step (every pair of 5,721 clusters, a 50,000-row demo batch) took 46 s. Each
/// group comes with whether it has moved (took in another), and goes back with that, updated.
fn agglomerate(groups: Vec<(Group, bool)>, threshold: f64) -> Vec<(Group, bool)> {
    merge_closest_first(groups, threshold, |groups| {
        let mut set = Centroids::new(groups.first().map_or(0, |g| g.centroid.len()));
        for g in groups {
            set.push(&g.centroid);
        }
        screen::close_pairs(&set, threshold)
    })
}

/// `agglomerate`, with its first step (every pair of groups strictly within the threshold, as
/// `(a, b, distance)` with `a < b`, in any order) given by `close_pairs`, so the tests' pairwise
/// oracle shares the rest.
fn merge_closest_first(
    groups: Vec<(Group, bool)>,
    threshold: f64,
    close_pairs: impl FnOnce(&[Group]) -> Vec<(usize, usize, f64)>,
) -> Vec<(Group, bool)> {
    use rayon::prelude::*;
    use std::collections::BinaryHeap;

    let (mut groups, mut moved): (Vec<Group>, Vec<bool>) = groups.into_iter().unzip();
    let k = groups.len();
    let mut heap: BinaryHeap<Merge> = close_pairs(&groups)
        .into_iter()
        .map(|(a, b, d)| Merge {
            d,
            a,
            b,
            stamps: (0, 0),
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
/// then attaches `noise` rows to an existing or new Task within `threshold` when one is close;
/// noise rows that match nothing are not linked. `rescue` rows (high-impact noise that matched
/// nothing) become single-row Tasks of their own.
///
/// Every comparison is decided by the exact distance, in a fixed order; the screen
/// (`screen.rs`) only spares the pairs it proves too far apart.
pub fn plan(
    unit_rows: &Matrix,
    clusters: &[Vec<usize>],
    noise: &[usize],
    rescue: impl Fn(usize) -> bool,
    tasks: &[TaskCentroid],
    threshold: f64,
) -> Plan {
    use rayon::prelude::*;
    let dim = unit_rows.cols();
    let mut m = Matcher::new(tasks, dim, threshold);

    // One pass in cluster order: a cluster joins the nearest existing Task, else the nearest
    // new group, else starts one. That is cheap where clusters merge a lot (each is compared
    // with the groups so far), but a group that grew has moved and may now be within the
    // threshold of a group made before it. So where any cluster joined a group, the groups
    // are then merged closest first until no two are within the threshold, and each merged
    // group gets one more look at the existing Tasks. `moved[j]`: new group j took in more
    // than its first cluster.
    let clusters: Vec<&Vec<usize>> = clusters.iter().filter(|c| !c.is_empty()).collect();
    let mut moved: Vec<bool> = Vec::new();
    m.in_blocks(
        clusters.len(),
        true,
        |range| {
            let cs: Vec<Vec<f32>> = clusters[range]
                .par_iter()
                .map(|members| centroid(unit_rows, members))
                .collect();
            Block::new(dim, cs.iter().map(Vec::as_slice))
        },
        |m, b, s, i, j| {
            let links_before = m.links.len();
            if !m.absorb(b, s, j, clusters[i], true) {
                let g = m.start(clusters[i].clone(), b.query(j));
                s.groups.started(b, g, j);
                moved.push(false);
            } else if let Some((_, Target::New(g))) = m.links.get(links_before) {
                moved[*g] = true;
            }
        },
    );
    if moved.contains(&true) {
        let members = std::mem::take(&mut m.members);
        let groups: Vec<(Group, bool)> = members
            .into_iter()
            .enumerate()
            .map(|(g, members)| Group {
                members,
                centroid: m.groups.row(g).to_vec(),
            })
            .zip(moved)
            .collect();
        m.groups = Centroids::new(dim);
        m.links.retain(|(_, t)| matches!(t, Target::Existing(_)));
        let merged = agglomerate(groups, threshold);
        m.in_blocks(
            merged.len(),
            false,
            |range| {
                Block::new(
                    dim,
                    merged[range].iter().map(|(g, _)| g.centroid.as_slice()),
                )
            },
            |m, b, s, i, j| {
                let (g, was_merged) = &merged[i];
                if !(*was_merged && m.absorb(b, s, j, &g.members, false)) {
                    m.start(g.members.clone(), &g.centroid);
                }
            },
        );
    }

    m.in_blocks(
        noise.len(),
        true,
        |range| Block::new(dim, noise[range].iter().map(|&r| unit_rows.row(r))),
        |m, b, s, i, j| {
            let r = noise[i];
            if !m.absorb(b, s, j, &[r], true) && rescue(r) {
                let g = m.start(vec![r], b.query(j));
                s.groups.started(b, g, j);
            }
        },
    );
    m.into_plan()
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

    /// Random problems at spreads that put many cluster, group and Task distances near the
    /// threshold, exact duplicates (ties), a Task not of unit length,
    /// and more clusters and noise rows than one block holds: the screened plan makes exactly
    /// the pairwise search's decisions, centroids bit for bit.
    #[test]
    fn screened_plan_equals_the_pairwise_one() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        for (dim, seed) in [(24usize, 1u64), (200, 2), (3072, 3)] {
            let mut rng = StdRng::seed_from_u64(seed);
            let problems: Vec<Vec<f32>> = (0..12)
                .map(|_| {
                    unit(
                        &(0..dim)
                            .map(|_| rng.random_range(-1.0f32..1.0))
                            .collect::<Vec<_>>(),
                    )
                })
                .collect();
            let mut data: Vec<f32> = Vec::new();
            let near = |data: &mut Vec<f32>, rng: &mut StdRng, p: usize, spread: f32| {
                let v: Vec<f32> = problems[p]
                    .iter()
                    .map(|&x| x + spread * rng.random_range(-1.0f32..1.0) / (dim as f32).sqrt())
                    .collect();
                data.extend(unit(&v));
            };
            let n_clusters = 150;
            let mut clusters = Vec::new();
            let mut row = 0;
            for c in 0..n_clusters {
                let (p, size) = (rng.random_range(0..12), rng.random_range(1..4));
                let spread = [0.3f32, 0.6, 0.9, 1.2][c % 4];
                clusters.push((row..row + size).collect::<Vec<usize>>());
                for _ in 0..size {
                    near(&mut data, &mut rng, p, spread);
                }
                row += size;
            }
            // Exact duplicates of earlier clusters: equal distances everywhere.
            for c in 0..10 {
                let members: Vec<usize> = clusters[c * 7].clone();
                let copy: Vec<usize> = (row..row + members.len()).collect();
                for &r in &members {
                    let v = data[r * dim..(r + 1) * dim].to_vec();
                    data.extend(v);
                }
                row += members.len();
                clusters.push(copy);
            }
            let noise: Vec<usize> = (row..row + 120).collect();
            for i in 0..120 {
                near(&mut data, &mut rng, i % 12, 1.0);
            }
            let m = Matrix::new(row + 120, dim, data).unwrap();
            let mut tasks: Vec<TaskCentroid> = (0..8)
                .map(|i| TaskCentroid {
                    task_id: 100 - i as i64,
                    centroid: centroid(&m, &clusters[i * 3]),
                    weight: 1 + i as i64,
                })
                .collect();
            tasks.push(TaskCentroid {
                task_id: 5,
                centroid: tasks[0].centroid.clone(),
                weight: 2,
            });
            tasks.push(TaskCentroid {
                task_id: 6,
                centroid: tasks[1].centroid.iter().map(|x| 2.0 * x).collect(),
                weight: 1,
            });
            for threshold in [0.2, 0.3, 0.45] {
                let rescue = |r: usize| r.is_multiple_of(3);
                let got = plan(&m, &clusters, &noise, rescue, &tasks, threshold);
                let want = reference::plan(&m, &clusters, &noise, rescue, &tasks, threshold);
                let at = format!("dim {dim}, threshold {threshold}");
                assert_eq!(got.links, want.links, "{at}");
                assert_eq!(got.new_tasks.len(), want.new_tasks.len(), "{at}");
                for (g, w) in got.new_tasks.iter().zip(&want.new_tasks) {
                    assert_eq!(g.members, w.members, "{at}");
                    assert_eq!(g.centroid, w.centroid, "{at}");
                }
                assert_eq!(got.updated.len(), want.updated.len(), "{at}");
                for (g, w) in got.updated.iter().zip(&want.updated) {
                    assert_eq!((g.task_id, g.weight), (w.task_id, w.weight), "{at}");
                    assert_eq!(g.centroid, w.centroid, "{at}");
                }
                // The data must exercise what the screen decides: merges, joins, rescues.
                let joined = got
                    .links
                    .iter()
                    .filter(|(_, t)| matches!(t, Target::Existing(_)))
                    .count();
                assert!(
                    joined > 0 && got.new_tasks.len() > 1,
                    "{at}: {joined} joined"
                );
            }
        }
    }

    /// A Task whose centroid has another length (another embedding model) is not matched, even
    /// where the common prefix is identical to the cluster's centroid.
    #[test]
    fn a_task_of_another_dimension_is_never_matched() {
        let m = rows(&[&[1.0, 0.0, 0.0, 0.0]]);
        let tasks = vec![TaskCentroid {
            task_id: 1,
            centroid: vec![1.0, 0.0],
            weight: 3,
        }];
        let p = plan(&m, &[vec![0]], &[], |_| false, &tasks, 0.3);
        assert_eq!(p.links, vec![(0, Target::New(0))]);
        assert!(p.updated.is_empty());
    }

    /// Stored centroids are outside input: a NaN, infinite or zero one is never matched and
    /// never panics, and a weight at i64::MAX saturates. (An infinite one was at distance minus
    /// infinity from every row, so it took them all.)
    #[test]
    fn broken_stored_centroids_are_never_matched() {
        let m = rows(&[&[1.0, 0.0, 0.0], &[1.0, 0.01, 0.0]]);
        let tasks = vec![
            TaskCentroid {
                task_id: 1,
                centroid: vec![f32::NAN, 0.0, 0.0],
                weight: 1,
            },
            TaskCentroid {
                task_id: 2,
                centroid: vec![f32::INFINITY, 0.0, 0.0],
                weight: 1,
            },
            TaskCentroid {
                task_id: 3,
                centroid: vec![0.0, 0.0, 0.0],
                weight: 1,
            },
            TaskCentroid {
                task_id: 4,
                centroid: vec![1.0, 0.0, 0.0],
                weight: i64::MAX,
            },
            // Another embedding model's: its prefix is the batch's rows exactly.
            TaskCentroid {
                task_id: 5,
                centroid: vec![1.0, 0.0, 0.0, 0.0],
                weight: 1,
            },
        ];
        let p = plan(&m, &[vec![0]], &[1], |_| false, &tasks, 0.3);
        assert_eq!(
            p.links,
            vec![(0, Target::Existing(4)), (1, Target::Existing(4))]
        );
        assert_eq!(p.updated.len(), 1);
        assert_eq!(p.updated[0].weight, i64::MAX);
        assert_eq!(p.unmatchable, 3, "NaN, infinite and another length");
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
