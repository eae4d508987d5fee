//! Condensed tree: the single-linkage tree with splits that shed fewer than `min_cluster_size`
//! points turned into points "falling out" of the surviving cluster.
//!
//! A port of scikit-learn's `_condense_tree` and `_compute_stability`
//! (`sklearn/cluster/_hdbscan/_tree.pyx`) that keeps their exact row order: the tree is walked
//! breadth first from the root and the points of a pruned subtree are emitted in breadth-first
//! order. The order is not cosmetic: stabilities are float sums taken in row order, and
//! scikit-learn's `max_lambdas` (membership probabilities) reads runs of equal parents, so a
//! different order would change probabilities in the last bits or more.
//! Everything is iterative (explicit queues): single-linkage trees are often chains of depth N.

use super::linkage::SingleLinkageTree;

/// One row of the condensed tree. Points are `0..n`, clusters `n..`, the root is `n`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct CondensedEdge {
    pub parent: usize,
    pub child: usize,
    /// 1 / distance of the split (infinity for distance 0, as in scikit-learn).
    pub lambda: f64,
    /// 1 for a point, the cluster's size for a cluster child.
    pub size: usize,
}

#[derive(Clone, Debug, PartialEq)]
pub struct CondensedTree {
    /// Number of points.
    pub n: usize,
    /// Rows in scikit-learn's order. Empty when there is nothing to condense (n < 2).
    pub edges: Vec<CondensedEdge>,
}

impl CondensedTree {
    /// The root cluster's id (scikit-learn's `root_cluster`): clusters are numbered from `n`.
    pub fn root(&self) -> usize {
        self.n
    }

    /// Number of cluster nodes, root included (0 for an empty tree).
    pub fn num_clusters(&self) -> usize {
        self.edges
            .iter()
            .map(|e| e.parent + 1 - self.n)
            .max()
            .unwrap_or(0)
    }
}

/// scikit-learn's `_condense_tree(hierarchy, min_cluster_size)`.
///
/// An incomplete tree (fewer than n - 1 merges: the MST given was not spanning) cannot be
/// condensed; it yields an empty tree, hence all noise, and an error in the log.
pub fn condense(tree: &SingleLinkageTree, min_cluster_size: usize) -> CondensedTree {
    let n = tree.n;
    if n < 2 || !tree.is_complete() {
        if n >= 2 {
            tracing::error!(
                points = n,
                merges = tree.merges.len(),
                "single-linkage tree is not spanning; every point is labelled noise"
            );
        }
        return CondensedTree {
            n,
            edges: Vec::new(),
        };
    }
    let root = 2 * (n - 1);
    let mut relabel = vec![0usize; root + 1];
    relabel[root] = n;
    let mut next_label = n + 1;
    let mut edges = Vec::with_capacity(2 * n);

    // Breadth-first over the internal nodes that survive. scikit-learn walks every node and
    // skips the ignored ones; dropping pruned subtrees from the queue keeps the relative order.
    let mut queue = vec![root];
    let mut head = 0;
    let mut sub_queue = Vec::new();
    while head < queue.len() {
        let node = queue[head];
        head += 1;
        let m = tree.merges[node - n];
        let (left, right) = (m.left, m.right);
        let lambda = if m.distance > 0.0 {
            1.0 / m.distance
        } else {
            f64::INFINITY
        };
        let left_count = tree.size_of(left);
        let right_count = tree.size_of(right);
        let parent = relabel[node];
        let mut fall_out = |sub_root: usize, edges: &mut Vec<CondensedEdge>| {
            bfs_points(tree, sub_root, &mut sub_queue, |p| {
                edges.push(CondensedEdge {
                    parent,
                    child: p,
                    lambda,
                    size: 1,
                })
            });
        };

        match (
            left_count >= min_cluster_size,
            right_count >= min_cluster_size,
        ) {
            (true, true) => {
                for (child, count) in [(left, left_count), (right, right_count)] {
                    relabel[child] = next_label;
                    next_label += 1;
                    edges.push(CondensedEdge {
                        parent,
                        child: relabel[child],
                        lambda,
                        size: count,
                    });
                    if child >= n {
                        queue.push(child);
                    }
                }
            }
            (false, false) => {
                fall_out(left, &mut edges);
                fall_out(right, &mut edges);
            }
            (false, true) => {
                relabel[right] = parent;
                fall_out(left, &mut edges);
                if right >= n {
                    queue.push(right);
                }
            }
            (true, false) => {
                relabel[left] = parent;
                fall_out(right, &mut edges);
                if left >= n {
                    queue.push(left);
                }
            }
        }
    }
    CondensedTree { n, edges }
}

/// Calls `emit` for the points under `sub_root` in breadth-first order
/// (scikit-learn's `bfs_from_hierarchy` filtered to points).
fn bfs_points(
    tree: &SingleLinkageTree,
    sub_root: usize,
    queue: &mut Vec<usize>,
    mut emit: impl FnMut(usize),
) {
    let n = tree.n;
    queue.clear();
    queue.push(sub_root);
    let mut head = 0;
    while head < queue.len() {
        let node = queue[head];
        head += 1;
        if node < n {
            emit(node);
        } else {
            let m = tree.merges[node - n];
            queue.push(m.left);
            queue.push(m.right);
        }
    }
}

/// scikit-learn's `_compute_stability`: for each cluster (index `id - n`), the sum over its
/// rows of `(lambda - birth lambda) * size`, accumulated in row order.
pub fn compute_stability(tree: &CondensedTree) -> Vec<f64> {
    let n = tree.n;
    let clusters = tree.num_clusters();
    let mut births = vec![f64::NAN; clusters];
    for e in &tree.edges {
        if e.child >= n {
            births[e.child - n] = e.lambda;
        }
    }
    if clusters > 0 {
        births[0] = 0.0;
    }
    let mut stability = vec![0.0f64; clusters];
    for e in &tree.edges {
        let c = e.parent - n;
        stability[c] += (e.lambda - births[c]) * e.size as f64;
    }
    stability
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::MstEdge;
    use crate::cluster::linkage::{TieOrder, single_linkage};

    fn chain(weights: &[f64]) -> SingleLinkageTree {
        let edges = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| MstEdge {
                a: i as u32,
                b: i as u32 + 1,
                weight: w,
            })
            .collect();
        single_linkage(weights.len() + 1, edges, TieOrder::AsGiven)
    }

    fn rows(t: &CondensedTree) -> Vec<(usize, usize, f64, usize)> {
        t.edges
            .iter()
            .map(|e| (e.parent, e.child, e.lambda, e.size))
            .collect()
    }

    #[test]
    fn two_pairs_split_into_two_clusters() {
        // 0-1 at 1, 2-3 at 1 (tie kept in order), 1-2 at 4: the root splits into {0,1}, {2,3}.
        let t = condense(&chain(&[1.0, 4.0, 1.0]), 2);
        assert_eq!(
            rows(&t),
            vec![
                (4, 5, 0.25, 2),
                (4, 6, 0.25, 2),
                (5, 0, 1.0, 1),
                (5, 1, 1.0, 1),
                (6, 2, 1.0, 1),
                (6, 3, 1.0, 1),
            ]
        );
        assert_eq!(t.num_clusters(), 3);
        // Root: born at 0, two children of size 2 at 0.25. Leaves: (1 - 0.25) * 2.
        assert_eq!(compute_stability(&t), vec![1.0, 1.5, 1.5]);
    }

    #[test]
    fn small_children_fall_out_of_the_surviving_cluster() {
        // 0-1 at 1, 1-2 at 2, 2-3 at 3, min size 3: point 3 falls out at 1/3, then the
        // {0,1,2} node splits into two small sides and all three fall out at 1/2.
        let t = condense(&chain(&[1.0, 2.0, 3.0]), 3);
        assert_eq!(
            rows(&t),
            vec![
                (4, 3, 1.0 / 3.0, 1),
                (4, 0, 0.5, 1),
                (4, 1, 0.5, 1),
                (4, 2, 0.5, 1)
            ]
        );
        assert_eq!(t.num_clusters(), 1);
        assert_eq!(compute_stability(&t), vec![1.0 / 3.0 + 0.5 + 0.5 + 0.5]);
    }

    #[test]
    fn zero_distance_gives_infinite_lambda() {
        let t = condense(&chain(&[0.0, 2.0]), 2);
        assert_eq!(
            rows(&t),
            vec![
                (3, 2, 0.5, 1),
                (3, 0, f64::INFINITY, 1),
                (3, 1, f64::INFINITY, 1)
            ]
        );
        assert_eq!(compute_stability(&t), vec![f64::INFINITY]);
    }

    #[test]
    fn pruned_subtrees_emit_points_breadth_first() {
        // ((0,1),(2,3)) joined at 3, point 4 joining last at 5, min size 5: both sides of the
        // root are small, so the left subtree's points come out breadth first, then point 4.
        let edges = vec![
            MstEdge {
                a: 0,
                b: 1,
                weight: 1.0,
            },
            MstEdge {
                a: 2,
                b: 3,
                weight: 1.0,
            },
            MstEdge {
                a: 1,
                b: 2,
                weight: 3.0,
            },
            MstEdge {
                a: 3,
                b: 4,
                weight: 5.0,
            },
        ];
        let t = condense(&single_linkage(5, edges, TieOrder::AsGiven), 5);
        let children: Vec<usize> = t.edges.iter().map(|e| e.child).collect();
        // Both sides small at the root: left subtree {0,1,2,3} in BFS order, then 4.
        assert_eq!(children, vec![0, 1, 2, 3, 4]);
        assert!(t.edges.iter().all(|e| e.parent == 5 && e.lambda == 0.2));
    }

    #[test]
    fn incomplete_tree_condenses_to_nothing() {
        let t = condense(&single_linkage(3, Vec::new(), TieOrder::AsGiven), 2);
        assert!(t.edges.is_empty());
        assert_eq!(t.num_clusters(), 0);
        assert!(compute_stability(&t).is_empty());
    }

    #[test]
    fn deep_chain_of_a_million_points_condenses_without_recursion() {
        let n = 1_000_000usize;
        let weights: Vec<f64> = (0..n - 1).map(|i| 1.0 + (i % 1000) as f64).collect();
        let t = condense(&chain(&weights), 2);
        assert_eq!(t.edges.iter().filter(|e| e.child < n).count(), n);
        assert!(compute_stability(&t).iter().all(|s| s.is_finite()));
    }
}
