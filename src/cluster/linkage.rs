//! Single-linkage tree from the MST, as scikit-learn's `_process_mst` + `make_single_linkage`.
//!
//! scikit-learn sorts the MST edges with `np.argsort` (numpy's default introsort, which is not
//! stable) and then merges them in that order with a union-find. Only the order of edges of
//! exactly equal weight is left open by that sort; we use a stable sort, so such edges keep the
//! order the MST builder produced them in (Prim's insertion order for `prim::mst`). Where ties
//! decide the shape of the tree the result can differ from scikit-learn's; the parity fixtures
//! mark the cases where that changes the labels.

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

/// Builds the single-linkage tree of `n` points from MST edges (any order).
///
/// Edges are sorted by weight (stable, see the module docs), then merged with a union-find that
/// names each merged set by its newest node, exactly like scikit-learn's `UnionFind.fast_find`
/// (`left` is the set of the edge's `a` endpoint, `right` the set of `b`).
pub fn single_linkage(n: usize, mut mst: Vec<MstEdge>) -> SingleLinkageTree {
    mst.sort_by(|x, y| x.weight.total_cmp(&y.weight));
    let mut uf = UnionFind::new(n);
    let mut merges = Vec::with_capacity(mst.len());
    for e in &mst {
        let (a, b) = (e.a as usize, e.b as usize);
        assert!(a < n && b < n, "MST edge ({a}, {b}) outside {n} points");
        let (ra, rb) = (uf.find(a), uf.find(b));
        assert_ne!(ra, rb, "MST edges form a cycle: not a spanning tree");
        let (left, right) = (uf.label[ra], uf.label[rb]);
        let size = uf.size[ra] + uf.size[rb];
        uf.union(ra, rb, n + merges.len());
        merges.push(Merge {
            left,
            right,
            distance: e.weight,
            size,
        });
    }
    SingleLinkageTree { n, merges }
}

/// Union by size with path halving over the points; `label[root]` is the tree node that
/// currently stands for the set (a point, or `n + i` for the i-th merge).
struct UnionFind {
    parent: Vec<usize>,
    size: Vec<usize>,
    label: Vec<usize>,
}

impl UnionFind {
    fn new(n: usize) -> Self {
        Self {
            parent: (0..n).collect(),
            size: vec![1; n],
            label: (0..n).collect(),
        }
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
        let t = single_linkage(4, vec![edge(1, 2, 5.0), edge(3, 2, 2.0), edge(0, 1, 1.0)]);
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
        let t = single_linkage(3, vec![edge(2, 1, 1.0), edge(0, 1, 1.0)]);
        assert_eq!((t.merges[0].left, t.merges[0].right), (2, 1));
        assert_eq!((t.merges[1].left, t.merges[1].right), (0, 3));
    }

    #[test]
    fn chain_of_a_million_points_is_fast_and_shallow() {
        let n = 1_000_000u32;
        let edges: Vec<MstEdge> = (1..n).map(|i| edge(i - 1, i, f64::from(i % 7))).collect();
        let t = single_linkage(n as usize, edges);
        assert!(t.is_complete());
        assert_eq!(t.merges.last().unwrap().size, n as usize);
    }
}
