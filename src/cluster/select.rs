//! Cluster selection, labels and membership probabilities: a port of scikit-learn's
//! `_get_clusters`, `epsilon_search`, `_do_labelling` and `get_probabilities`
//! (`sklearn/cluster/_hdbscan/_tree.pyx`), including its quirks, so that labels (ids included)
//! and probabilities come out the same:
//!
//! - cluster ids are numbered in increasing condensed-tree id order;
//! - the root, when selected together with other clusters, labels its own points as noise;
//! - a point's probability is relative to the death lambda of its selected cluster as
//!   scikit-learn's `max_lambdas` computes it: from the *last* run of consecutive rows of that
//!   cluster in the condensed tree, not from all of its rows.
//!
//! scikit-learn does the tree walks with `np.isin` scans and recursion (quadratic on deep trees);
//! here every step is a linear pass over the clusters, using that a child's id is always larger
//! than its parent's.

use super::condense::{CondensedTree, compute_stability};
use super::{Clustering, HdbscanParams, Selection};

/// Clusters of the condensed tree as index arrays (cluster `c` is tree id `n + c`; 0 is the root).
struct ClusterTree {
    /// Parent cluster index (the root points to itself).
    parent: Vec<usize>,
    /// Lambda at which the cluster was born (0 for the root, which has no row).
    birth: Vec<f64>,
    /// Child clusters, CSR: `children[child_start[c]..child_start[c + 1]]`.
    child_start: Vec<usize>,
    children: Vec<usize>,
}

impl ClusterTree {
    fn new(tree: &CondensedTree, clusters: usize) -> Self {
        let n = tree.n;
        let mut parent: Vec<usize> = (0..clusters).collect();
        let mut birth = vec![0.0; clusters];
        let mut child_start = vec![0usize; clusters + 1];
        let cluster_rows = || tree.edges.iter().filter(|e| e.size > 1 && e.child >= n);
        for e in cluster_rows() {
            parent[e.child - n] = e.parent - n;
            birth[e.child - n] = e.lambda;
            child_start[e.parent - n + 1] += 1;
        }
        for c in 0..clusters {
            child_start[c + 1] += child_start[c];
        }
        let mut fill = child_start.clone();
        let mut children = vec![0usize; child_start[clusters]];
        for e in cluster_rows() {
            let slot = &mut fill[e.parent - n];
            children[*slot] = e.child - n;
            *slot += 1;
        }
        Self {
            parent,
            birth,
            child_start,
            children,
        }
    }

    fn children(&self, c: usize) -> &[usize] {
        &self.children[self.child_start[c]..self.child_start[c + 1]]
    }

    fn has_splits(&self) -> bool {
        !self.children.is_empty()
    }
}

/// Labels and probabilities for `params` (selection method, epsilon, allow_single_cluster).
pub fn labels(tree: &CondensedTree, params: &HdbscanParams) -> Clustering {
    let n = tree.n;
    let clusters = tree.num_clusters();
    if clusters == 0 {
        return Clustering::all_noise(n);
    }
    let ct = ClusterTree::new(tree, clusters);
    let allow_single = params.allow_single_cluster;
    let epsilon = params.epsilon;
    // scikit-learn's `node_list`: every cluster, the root only with allow_single_cluster.
    let in_list = |c: usize| c != 0 || allow_single;

    let selected: Vec<bool> = match params.selection {
        Selection::Eom => {
            let mut stability = compute_stability(tree);
            let mut kept = vec![false; clusters];
            for c in (0..clusters).rev().filter(|&c| in_list(c)) {
                let subtree: f64 = ct.children(c).iter().map(|&k| stability[k]).sum();
                if subtree > stability[c] {
                    stability[c] = subtree;
                } else {
                    kept[c] = true;
                }
            }
            // A kept cluster clears every descendant, whatever they decided: a cluster is
            // selected when it is kept and no listed ancestor is.
            let mut blocked = vec![false; clusters];
            let mut selected = vec![false; clusters];
            for c in 0..clusters {
                if c != 0 {
                    let p = ct.parent[c];
                    blocked[c] = blocked[p] || (in_list(p) && kept[p]);
                }
                selected[c] = in_list(c) && kept[c] && !blocked[c];
            }
            if epsilon != 0.0 && ct.has_splits() {
                let eom: Vec<usize> = (0..clusters).filter(|&c| selected[c]).collect();
                let chosen = if eom == [0] {
                    if allow_single { eom } else { Vec::new() }
                } else {
                    epsilon_search(&ct, &eom, epsilon, allow_single)
                };
                selected = mark(clusters, &chosen);
            }
            (0..clusters).map(|c| selected[c] && in_list(c)).collect()
        }
        Selection::Leaf => {
            // With no split at all there are no leaves and scikit-learn selects nothing.
            let leaves: Vec<usize> = if ct.has_splits() {
                (0..clusters)
                    .filter(|&c| ct.children(c).is_empty())
                    .collect()
            } else {
                Vec::new()
            };
            let chosen = if epsilon != 0.0 {
                epsilon_search(&ct, &leaves, epsilon, allow_single)
            } else {
                leaves
            };
            let selected = mark(clusters, &chosen);
            (0..clusters).map(|c| selected[c] && in_list(c)).collect()
        }
    };

    let label_of_cluster = cluster_labels(&selected);
    let n_selected = label_of_cluster.iter().filter(|l| l.is_some()).count();

    // The selected cluster each cluster's points go to (scikit-learn's union-find in
    // `_do_labelling` links every unselected child to its parent, so the top of a component is
    // a selected cluster or the root).
    let mut owner = vec![0usize; clusters];
    for c in 1..clusters {
        owner[c] = if selected[c] { c } else { owner[ct.parent[c]] };
    }

    let single_root = n_selected == 1 && allow_single;
    let root_threshold = if !single_root {
        f64::INFINITY
    } else if epsilon != 0.0 {
        1.0 / epsilon
    } else {
        tree.edges
            .iter()
            .filter(|e| e.parent == n)
            .map(|e| e.lambda)
            .fold(f64::NEG_INFINITY, f64::max)
    };

    let mut labels = vec![-1i64; n];
    let mut point_row = vec![usize::MAX; n];
    for (i, e) in tree.edges.iter().enumerate() {
        if e.child >= n {
            continue;
        }
        point_row[e.child] = i;
        let top = owner[e.parent - n];
        labels[e.child] = if top != 0 {
            label_of_cluster[top].expect("owners are selected clusters")
        } else if single_root && e.lambda >= root_threshold {
            // scikit-learn looks the root up in its label map; when the single selected
            // cluster is not the root it would fail there, and we say noise instead.
            label_of_cluster[0].unwrap_or(-1)
        } else {
            -1
        };
    }

    let deaths = max_lambdas(tree, clusters);
    let cluster_of_label: Vec<usize> = (0..clusters).filter(|&c| selected[c]).collect();
    let mut probabilities = vec![0.0; n];
    for p in 0..n {
        let Ok(label) = usize::try_from(labels[p]) else {
            continue;
        };
        let lambda = tree.edges[point_row[p]].lambda;
        let max_lambda = deaths[cluster_of_label[label]];
        probabilities[p] = if max_lambda == 0.0 || lambda.is_infinite() {
            1.0
        } else {
            lambda.min(max_lambda) / max_lambda
        };
    }
    Clustering {
        labels,
        probabilities,
    }
}

/// Label ids in increasing cluster-id order, like scikit-learn's `sorted(clusters)`.
fn cluster_labels(selected: &[bool]) -> Vec<Option<i64>> {
    let mut next = 0i64;
    selected
        .iter()
        .map(|&s| {
            s.then(|| {
                next += 1;
                next - 1
            })
        })
        .collect()
}

fn mark(clusters: usize, chosen: &[usize]) -> Vec<bool> {
    let mut v = vec![false; clusters];
    for &c in chosen {
        v[c] = true;
    }
    v
}

/// scikit-learn's `epsilon_search`: clusters born below distance `epsilon` are replaced by
/// their nearest ancestor born above it (or the child of the root on that path, or the root
/// with allow_single_cluster). scikit-learn iterates a Python set; the result does not depend
/// on the order (each returned ancestor's subtree is marked processed, and ancestors found
/// from two leaves are either equal or disjoint), so we go in id order.
fn epsilon_search(
    ct: &ClusterTree,
    leaves: &[usize],
    epsilon: f64,
    allow_single: bool,
) -> Vec<usize> {
    let mut processed = vec![false; ct.parent.len()];
    let mut selected = Vec::new();
    let mut stack = Vec::new();
    for &leaf in leaves {
        if leaf == 0 {
            selected.push(leaf);
            continue;
        }
        let eps = 1.0 / ct.birth[leaf];
        if eps < epsilon {
            if !processed[leaf] {
                let top = traverse_upwards(ct, epsilon, leaf, allow_single);
                selected.push(top);
                stack.clear();
                stack.extend_from_slice(ct.children(top));
                while let Some(c) = stack.pop() {
                    processed[c] = true;
                    stack.extend_from_slice(ct.children(c));
                }
            }
        } else {
            selected.push(leaf);
        }
    }
    selected
}

/// scikit-learn's `traverse_upwards`, iteratively.
fn traverse_upwards(ct: &ClusterTree, epsilon: f64, mut leaf: usize, allow_single: bool) -> usize {
    loop {
        let parent = ct.parent[leaf];
        if parent == 0 {
            return if allow_single { parent } else { leaf };
        }
        let parent_eps = 1.0 / ct.birth[parent];
        if parent_eps > epsilon {
            return parent;
        }
        leaf = parent;
    }
}

/// scikit-learn's `max_lambdas`: per cluster, the largest lambda of the last run of
/// consecutive rows with that parent (see the module docs).
fn max_lambdas(tree: &CondensedTree, clusters: usize) -> Vec<f64> {
    let n = tree.n;
    let mut deaths = vec![0.0f64; clusters];
    let Some(first) = tree.edges.first() else {
        return deaths;
    };
    let mut current = first.parent;
    let mut max_lambda = first.lambda;
    for e in &tree.edges[1..] {
        if e.parent == current {
            if e.lambda > max_lambda {
                max_lambda = e.lambda;
            }
        } else {
            deaths[current - n] = max_lambda;
            current = e.parent;
            max_lambda = e.lambda;
        }
    }
    deaths[current - n] = max_lambda;
    deaths
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::MstEdge;
    use crate::cluster::condense::{CondensedEdge, condense};
    use crate::cluster::linkage::{TieOrder, single_linkage};

    fn params(selection: Selection, min_cluster_size: usize) -> HdbscanParams {
        HdbscanParams {
            min_cluster_size,
            min_samples: 1,
            selection,
            epsilon: 0.0,
            allow_single_cluster: false,
        }
    }

    /// Points on a line, MST = consecutive gaps (min_samples 1).
    fn on_line(xs: &[f64], p: &HdbscanParams) -> Clustering {
        let edges = xs
            .windows(2)
            .enumerate()
            .map(|(i, w)| MstEdge {
                a: i as u32,
                b: i as u32 + 1,
                weight: w[1] - w[0],
            })
            .collect();
        labels(
            &condense(
                &single_linkage(xs.len(), edges, TieOrder::AsGiven),
                p.min_cluster_size,
            ),
            p,
        )
    }

    #[test]
    fn two_groups_and_an_outlier() {
        let xs = [0.0, 1.0, 2.0, 10.0, 11.0, 12.0, 40.0];
        for sel in [Selection::Eom, Selection::Leaf] {
            let c = on_line(&xs, &params(sel, 3));
            assert_eq!(c.labels, vec![0, 0, 0, 1, 1, 1, -1], "{sel:?}");
            // Each point leaves its cluster at lambda 1 = the cluster's death: probability 1.
            assert_eq!(c.probabilities, vec![1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.0]);
        }
    }

    #[test]
    fn leaf_splits_where_eom_keeps_the_parent() {
        // Two far groups, each two pairs (gap 0.15) split at 0.2: the groups are more stable
        // than their pairs, so EOM keeps them whole and leaf selection splits them.
        let xs = [0.0, 0.15, 0.35, 0.5, 50.0, 50.15, 50.35, 50.5];
        let eom = on_line(&xs, &params(Selection::Eom, 2));
        let leaf = on_line(&xs, &params(Selection::Leaf, 2));
        assert_eq!(eom.n_clusters(), 2, "{:?}", eom.labels);
        assert_eq!(eom.labels[0], eom.labels[3]);
        assert_eq!(leaf.n_clusters(), 4, "{:?}", leaf.labels);
        assert_ne!(leaf.labels[0], leaf.labels[3]);
    }

    #[test]
    fn epsilon_merges_clusters_split_below_it() {
        let xs = [0.0, 0.15, 0.35, 0.5, 50.0, 50.15, 50.35, 50.5];
        let mut p = params(Selection::Leaf, 2);
        let plain = on_line(&xs, &p);
        p.epsilon = 1.0;
        let merged = on_line(&xs, &p);
        assert!(plain.labels[0] != plain.labels[3]);
        assert_eq!(merged.labels[0], merged.labels[3]);
        assert_ne!(merged.labels[0], merged.labels[4]);
        assert_eq!(merged.labels.iter().filter(|&&l| l < 0).count(), 0);
    }

    #[test]
    fn no_split_is_all_noise_unless_a_single_cluster_is_allowed() {
        let xs = [0.0, 1.0, 2.0, 3.0, 10.0];
        let mut p = params(Selection::Eom, 3);
        assert!(on_line(&xs, &p).labels.iter().all(|&l| l == -1));
        p.allow_single_cluster = true;
        let c = on_line(&xs, &p);
        // Root's largest lambda is 1 (gaps of 1); point 4 left at 1/7: noise.
        assert_eq!(c.labels, vec![0, 0, 0, 0, -1]);
        // Leaf selection with no split selects nothing, as in scikit-learn.
        p.selection = Selection::Leaf;
        assert!(on_line(&xs, &p).labels.iter().all(|&l| l == -1));
    }

    #[test]
    fn probability_uses_the_last_run_of_the_cluster() {
        // Hand-made rows: parent 3's rows come in two runs separated by a row of parent 4;
        // its death is the maximum of the last run only (scikit-learn's `max_lambdas`).
        let n = 3;
        let e = |parent, child, lambda, size| CondensedEdge {
            parent,
            child,
            lambda,
            size,
        };
        let tree = CondensedTree {
            n,
            edges: vec![e(3, 0, 4.0, 1), e(4, 2, 1.0, 1), e(3, 1, 2.0, 1)],
        };
        assert_eq!(max_lambdas(&tree, 2), vec![2.0, 1.0]);
    }

    #[test]
    fn zero_distance_duplicates_get_probability_one() {
        let xs = [0.0, 0.0, 0.0, 5.0, 5.0, 5.0];
        let c = on_line(&xs, &params(Selection::Leaf, 3));
        assert_eq!(c.labels, vec![0, 0, 0, 1, 1, 1]);
        assert_eq!(c.probabilities, vec![1.0; 6]);
    }

    #[test]
    fn a_million_points_in_one_second_or_so() {
        // Many small groups on a line: gaps 0.01 within groups of 10, 1 + i%13 between.
        let n = 1_000_000usize;
        let edges: Vec<MstEdge> = (1..n)
            .map(|i| MstEdge {
                a: (i - 1) as u32,
                b: i as u32,
                weight: if i % 10 == 0 {
                    1.0 + (i % 13) as f64
                } else {
                    0.01 * (1 + i % 7) as f64
                },
            })
            .collect();
        for sel in [Selection::Leaf, Selection::Eom] {
            let p = params(sel, 5);
            let t = std::time::Instant::now();
            let c = labels(
                &condense(&single_linkage(n, edges.clone(), TieOrder::AsGiven), 5),
                &p,
            );
            let secs = t.elapsed().as_secs_f64();
            assert_eq!(c.labels.len(), n);
            assert!(c.n_clusters() > 1000, "{sel:?}: {}", c.n_clusters());
            assert!(secs < 20.0, "{sel:?} took {secs} s");
        }
    }
}
