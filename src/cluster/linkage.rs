//! Single-linkage tree from the MST, as scikit-learn's `_process_mst` + `make_single_linkage`.
//!
//! scikit-learn sorts the MST edges with `np.argsort` (numpy's default introsort, which is not
//! stable) and then merges them in that order with a union-find. Only the order of edges of
//! exactly equal weight is left open by that sort, and there the answer depends on the MST
//! builder: which of several equally light edges it kept, and in which order. Two orders:
//!
//! - [`TieOrder::AsGiven`]: a stable sort, so equal edges keep the builder's order. With
//!   `prim::mst` that is Prim's visiting order, scikit-learn's own; the parity fixtures mark the
//!   runs where even that differs from scikit-learn's labels (`tie_sensitive`).
//! - [`TieOrder::Canonical`]: equal edges are replaced by a merge order that depends only on the
//!   graph, not on the MST builder. Every MST of a graph joins the same sets at each weight
//!   (the components of the edges at most that heavy), so merging those sets in an order
//!   computed from the sets alone gives one tree whichever exact MST came in. The CPU's
//!   Boruvka and the GPU's kernels therefore give identical labels, ties included.
//!
//! The canonical order, within one weight: the sets that one new component is made of are
//! merged one by one, largest first (ties by lowest point index), into the first. Small sets
//! that tie with a large one then fall out of the cluster the large sets form, as they would if
//! they were a hair farther away, instead of pairing up into a cluster of their own.
//! Components formed at the same weight are emitted in order of their lowest point. For a run
//! of exact duplicates this is the chain Prim builds. Every merge, tied or not, puts the larger
//! set (then the one with the lower point) on the left, since the builders orient edges
//! differently and the left child is walked first when the tree is condensed (which fixes
//! cluster ids and the order of float sums).

use super::MstEdge;

/// scikit-learn's single-linkage array: row i merges nodes `left` and `right` at `distance`
/// into node `n + i`, which holds `size` points. Nodes below `n` are the points.
#[derive(Clone, Debug, PartialEq)]
pub struct SingleLinkageTree {
    pub n: usize,
    pub merges: Vec<Merge>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Merge {
    pub left: usize,
    pub right: usize,
    pub distance: f64,
    pub size: usize,
}

impl SingleLinkageTree {
    /// True when the merges join all `n` points into one tree (a spanning tree was given).
    pub fn is_complete(&self) -> bool {
        self.n >= 1 && self.merges.len() + 1 == self.n
    }

    /// Number of points under node `node`.
    pub fn size_of(&self, node: usize) -> usize {
        if node < self.n {
            1
        } else {
            self.merges[node - self.n].size
        }
    }
}

/// How edges of exactly equal weight are merged (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TieOrder {
    /// In the order the MST builder gave them: scikit-learn's, for `prim::mst`'s edges.
    AsGiven,
    /// In an order fixed by the graph alone, the same for every exact MST.
    Canonical,
}

impl TieOrder {
    /// The order `cluster::hdbscan_cpu` and `Device::hdbscan` use for `n` rows: scikit-learn's
    /// where every path builds the MST with Prim (up to `PRIM_MAX_ROWS`), canonical above, where
    /// the CPU and the GPU build it differently and must still agree.
    pub fn for_rows(n: usize) -> Self {
        if n <= super::PRIM_MAX_ROWS {
            TieOrder::AsGiven
        } else {
            TieOrder::Canonical
        }
    }
}

/// Builds the single-linkage tree of `n` points from MST edges (any order).
///
/// Edges are sorted by weight (stable), then merged with a union-find that names each merged
/// set by its newest node, exactly like scikit-learn's `UnionFind.fast_find`. Runs of equal
/// weight are merged as `ties` says; in the given order `left` is the set of the edge's `a`
/// endpoint and `right` the set of `b`, as in scikit-learn.
pub fn single_linkage(n: usize, mut mst: Vec<MstEdge>, ties: TieOrder) -> SingleLinkageTree {
    // Rayon's parallel sort is stable too: the same order as `sort_by`, on every core.
    use rayon::slice::ParallelSliceMut;
    mst.par_sort_by(|x, y| x.weight.total_cmp(&y.weight));
    for e in &mst {
        let (a, b) = (e.a as usize, e.b as usize);
        assert!(a < n && b < n, "MST edge ({a}, {b}) outside {n} points");
    }
    let mut uf = UnionFind::new(n);
    let mut merges = Vec::with_capacity(mst.len());
    let mut start = 0;
    while start < mst.len() {
        let w = mst[start].weight;
        let len = mst[start..]
            .iter()
            .take_while(|e| e.weight.total_cmp(&w).is_eq())
            .count();
        let level = &mst[start..start + len];
        start += len;
        if ties == TieOrder::AsGiven {
            for e in level {
                let (ra, rb) = (uf.find(e.a as usize), uf.find(e.b as usize));
                merges.push(uf.merge(ra, rb, w, n + merges.len()));
            }
        } else if let [e] = level {
            // One edge: canonical_level's answer without its tables.
            let (ra, rb) = (uf.find(e.a as usize), uf.find(e.b as usize));
            let (ra, rb) = if uf.canonical_key(ra) <= uf.canonical_key(rb) {
                (ra, rb)
            } else {
                (rb, ra)
            };
            merges.push(uf.merge(ra, rb, w, n + merges.len()));
        } else {
            for (ra, rb) in canonical_level(&mut uf, level) {
                let (ra, rb) = (uf.find(ra), uf.find(rb));
                merges.push(uf.merge(ra, rb, w, n + merges.len()));
            }
        }
    }
    SingleLinkageTree { n, merges }
}

/// The canonical merges for one run of equal-weight edges, as pairs of points whose sets are
/// joined in this order (see the module docs). Only the sets the edges join are used, not the
/// edges themselves.
fn canonical_level(uf: &mut UnionFind, level: &[MstEdge]) -> Vec<(usize, usize)> {
    // The sets touched at this weight, numbered 0..k by their root, and joined by the edges.
    let ends: Vec<(usize, usize)> = level
        .iter()
        .map(|e| (uf.find(e.a as usize), uf.find(e.b as usize)))
        .collect();
    let mut sets: Vec<usize> = ends.iter().flat_map(|&(a, b)| [a, b]).collect();
    sets.sort_unstable();
    sets.dedup();
    let local = |root: usize| sets.partition_point(|&s| s < root);
    let mut joined = UnionFind::new(sets.len());
    for &(a, b) in &ends {
        let (la, lb) = (joined.find(local(a)), joined.find(local(b)));
        assert_ne!(la, lb, "MST edges form a cycle: not a spanning tree");
        joined.union(la, lb, 0);
    }
    // Each new component's sets, largest first, then by lowest point.
    let mut groups: Vec<Vec<usize>> = vec![Vec::new(); sets.len()];
    for (i, &root) in sets.iter().enumerate() {
        groups[joined.find(i)].push(root);
    }
    groups.retain(|g| !g.is_empty());
    for g in &mut groups {
        g.sort_by_key(|&r| uf.canonical_key(r));
    }
    groups.sort_by_key(|g| g.iter().map(|&r| uf.lowest[r]).min());
    groups
        .iter()
        .flat_map(|g| g[1..].iter().map(move |&r| (g[0], r)))
        .collect()
}

/// Union by size with path halving over the points; `label[root]` is the tree node that
/// currently stands for the set (a point, or `n + i` for the i-th merge), `lowest[root]` its
/// lowest point.
struct UnionFind {
    parent: Vec<usize>,
    size: Vec<usize>,
    label: Vec<usize>,
    lowest: Vec<usize>,
}

impl UnionFind {
    fn new(n: usize) -> Self {
        Self {
            parent: (0..n).collect(),
            size: vec![1; n],
            label: (0..n).collect(),
            lowest: (0..n).collect(),
        }
    }

    /// The canonical order of sets: largest first, then by lowest point.
    fn canonical_key(&self, root: usize) -> (std::cmp::Reverse<usize>, usize) {
        (std::cmp::Reverse(self.size[root]), self.lowest[root])
    }

    /// Joins the sets with roots `ra` (left) and `rb` (right) into tree node `node`.
    fn merge(&mut self, ra: usize, rb: usize, distance: f64, node: usize) -> Merge {
        assert_ne!(ra, rb, "MST edges form a cycle: not a spanning tree");
        let merge = Merge {
            left: self.label[ra],
            right: self.label[rb],
            distance,
            size: self.size[ra] + self.size[rb],
        };
        self.union(ra, rb, node);
        merge
    }

    fn find(&mut self, mut x: usize) -> usize {
        while self.parent[x] != x {
            self.parent[x] = self.parent[self.parent[x]];
            x = self.parent[x];
        }
        x
    }

    fn union(&mut self, ra: usize, rb: usize, new_label: usize) {
        let (big, small) = if self.size[ra] >= self.size[rb] {
            (ra, rb)
        } else {
            (rb, ra)
        };
        self.parent[small] = big;
        self.size[big] += self.size[small];
        self.label[big] = new_label;
        self.lowest[big] = self.lowest[big].min(self.lowest[small]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edge(a: u32, b: u32, weight: f64) -> MstEdge {
        MstEdge { a, b, weight }
    }

    #[test]
    fn merges_in_weight_order_and_names_sets_by_newest_node() {
        // Points 0-1 (1.0), 2-3 (2.0), 1-2 (5.0), given out of order.
        let t = single_linkage(
            4,
            vec![edge(1, 2, 5.0), edge(3, 2, 2.0), edge(0, 1, 1.0)],
            TieOrder::AsGiven,
        );
        assert!(t.is_complete());
        let m: Vec<(usize, usize, f64, usize)> = t
            .merges
            .iter()
            .map(|m| (m.left, m.right, m.distance, m.size))
            .collect();
        assert_eq!(m, vec![(0, 1, 1.0, 2), (3, 2, 2.0, 2), (4, 5, 5.0, 4)]);
        assert_eq!(t.size_of(6), 4);
        assert_eq!(t.size_of(2), 1);
    }

    #[test]
    fn equal_weights_keep_their_input_order() {
        let t = single_linkage(3, vec![edge(2, 1, 1.0), edge(0, 1, 1.0)], TieOrder::AsGiven);
        assert_eq!((t.merges[0].left, t.merges[0].right), (2, 1));
        assert_eq!((t.merges[1].left, t.merges[1].right), (0, 3));
    }

    #[test]
    fn chain_of_a_million_points_is_fast_and_shallow() {
        let n = 1_000_000u32;
        let edges: Vec<MstEdge> = (1..n).map(|i| edge(i - 1, i, f64::from(i % 7))).collect();
        let t = single_linkage(n as usize, edges.clone(), TieOrder::AsGiven);
        assert!(t.is_complete());
        assert_eq!(t.merges.last().unwrap().size, n as usize);
        let t = single_linkage(n as usize, edges, TieOrder::Canonical);
        assert!(t.is_complete());
        assert_eq!(t.merges.last().unwrap().size, n as usize);
    }

    #[test]
    fn canonical_order_joins_the_largest_set_first_and_small_sets_last() {
        // Weight 1: A = {0, 1, 2}, B = {3, 4, 5, 6}; point 7 alone. Weight 2 joins all three,
        // given so that the builder's order would pair the single point with A first.
        let edges = vec![
            edge(0, 1, 1.0),
            edge(1, 2, 1.0),
            edge(3, 4, 1.0),
            edge(4, 5, 1.0),
            edge(5, 6, 1.0),
            edge(7, 0, 2.0),
            edge(2, 3, 2.0),
        ];
        let given = single_linkage(8, edges.clone(), TieOrder::AsGiven);
        assert_eq!((given.merges[5].left, given.merges[5].right), (7, 9));
        let t = single_linkage(8, edges, TieOrder::Canonical);
        assert!(t.is_complete());
        // Node 9 is A (merges 0-1), node 12 is B (merges 2-4).
        let top: Vec<(usize, usize, usize)> = t.merges[5..]
            .iter()
            .map(|m| (m.left, m.right, m.size))
            .collect();
        assert_eq!(top, vec![(12, 9, 7), (13, 7, 8)]);
    }

    /// A spanning tree of the graph by Kruskal, equal weights taken in the order given.
    fn kruskal(n: usize, graph: &[MstEdge]) -> Vec<MstEdge> {
        let mut sorted = graph.to_vec();
        sorted.sort_by(|x, y| x.weight.total_cmp(&y.weight));
        let mut uf = UnionFind::new(n);
        let mut tree = Vec::new();
        for e in sorted {
            let (ra, rb) = (uf.find(e.a as usize), uf.find(e.b as usize));
            if ra != rb {
                uf.union(ra, rb, 0);
                tree.push(e);
            }
        }
        tree
    }

    #[test]
    fn canonical_order_is_the_same_for_every_exact_mst() {
        use rand::seq::SliceRandom;
        use rand::{Rng, SeedableRng};
        // Complete graphs with weights from a handful of values: ties everywhere, so each
        // shuffle picks other equally minimal trees and gives their edges in another order.
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut given_differs = false;
        for n in [5usize, 12, 40, 90] {
            let mut graph = Vec::new();
            for a in 0..n as u32 {
                for b in a + 1..n as u32 {
                    graph.push(edge(a, b, f64::from(rng.random_range(1..5u8))));
                }
            }
            let first = kruskal(n, &graph);
            let want = single_linkage(n, first.clone(), TieOrder::Canonical);
            assert!(want.is_complete());
            for _ in 0..20 {
                graph.shuffle(&mut rng);
                let mut other = kruskal(n, &graph);
                other.shuffle(&mut rng);
                assert_eq!(
                    single_linkage(n, other.clone(), TieOrder::Canonical),
                    want,
                    "{n} points: another MST gave another canonical tree"
                );
                given_differs |= single_linkage(n, other, TieOrder::AsGiven)
                    != single_linkage(n, first.clone(), TieOrder::AsGiven);
            }
        }
        assert!(given_differs, "the graphs had no ambiguous ties to test");
    }
}
