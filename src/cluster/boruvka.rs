//! Exact minimum spanning tree of the complete mutual-reachability graph, by Boruvka rounds over
//! the leaf index of `super::knn`.
//!
//! Each round finds, for every component, its lightest outgoing edge, and adds them all. What
//! makes a round cheap is that most points never need a search:
//! - every point's exact k nearest neighbours are known (k = `LIST_K`, at least `min_samples - 1`).
//!   Any point not listed is at least `d_k(p)` away, so its mutual reachability from `p` is at
//!   least `lb(p) = max(core p, d_k p)`. If the best listed neighbour outside `p`'s component is
//!   no heavier than `lb(p)`, it *is* `p`'s best outgoing edge;
//! - a point whose `lb(p)` is not below its component's best candidate so far cannot improve it
//!   and is skipped;
//! - a point that had to search in an earlier round remembers the exact best edge it found:
//!   while its far end is still outside, it is still the best (the outside only shrinks), and
//!   once swallowed, its weight stays a lower bound;
//! - the remaining points search for their exact best outgoing edge, leaves nearest first,
//!   skipping leaves wholly inside their component, pruning by the leaf balls, by a projection
//!   on the line between leaf centres and a pivot bound (`knn::PairBounds`, memoized per pair
//!   of leaves across the kNN search and all rounds), by core distances, and screening in f32
//!   (`knn::scan`) before computing the exact f64 distance.
//!
//! Determinism: within a round, work is split by leaf (not by thread), each task starts from the
//! same round-start bests, and results are merged by the total order (weight, lower position,
//! higher position), so the tree does not depend on the number of threads. Ties between exactly
//! equal weights may pick a different (equally minimal) tree than Prim does.
//!
//! With `min_samples <= 2` mutual reachability is the plain distance (a core distance is the
//! distance to the nearest other point, never more than any pair's distance); no special path
//! is needed, the core distance bounds just never prune.

use super::MstEdge;
use super::knn::{LeafIndex, PairMemo, PositionKnn, knn_positions};
use crate::matrix::Matrix;
use anyhow::Result;
use rayon::prelude::*;

/// Neighbours listed per point: enough that most points prove their best edge in the early
/// rounds, few enough that the kNN stays cheap.
const LIST_K: usize = 16;

/// A candidate edge between positions, ordered by (weight, lo, hi). Shared with the GPU MST
/// (`gpu::mst`), so that both paths break ties between equal weights the same way.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Cand {
    pub w: f64,
    pub lo: u32,
    pub hi: u32,
}

/// No edge yet: heavier than every edge.
pub(crate) const NONE: Cand = Cand {
    w: f64::INFINITY,
    lo: u32::MAX,
    hi: u32::MAX,
};

impl Cand {
    pub(crate) fn new(w: f64, a: usize, b: usize) -> Self {
        let (lo, hi) = if a < b { (a, b) } else { (b, a) };
        Self {
            w,
            lo: lo as u32,
            hi: hi as u32,
        }
    }

    pub(crate) fn less(&self, o: &Cand) -> bool {
        self.w
            .total_cmp(&o.w)
            .then(self.lo.cmp(&o.lo))
            .then(self.hi.cmp(&o.hi))
            .is_lt()
    }

    /// Keeps the lesser of `self` and `c`.
    pub(crate) fn keep_least(&mut self, c: Cand) {
        if c.less(self) {
            *self = c;
        }
    }

    pub(crate) fn is_none(&self) -> bool {
        self.lo == u32::MAX
    }
}

/// The exact MST of the mutual-reachability graph of the rows of `x` (Euclidean), `N - 1` edges
/// sorted by (weight, a, b). `min_samples` follows scikit-learn (the point itself counts; values
/// above N are clamped to N, like `prim::mst`).
pub fn mst(x: &Matrix, min_samples: usize) -> Result<Vec<MstEdge>> {
    let n = x.rows();
    if n < 2 {
        return Ok(Vec::new());
    }
    anyhow::ensure!(
        x.as_slice().iter().all(|v| v.is_finite()),
        "the matrix to cluster holds NaN or infinite values; validate the input first"
    );
    let m = min_samples.clamp(1, n);
    // The f32 screen would overflow on astronomically large coordinates; such input (never
    // produced by normalization + PCA) takes the dense exact path instead.
    let max_abs = x.as_slice().iter().fold(0f32, |a, v| a.max(v.abs()));
    if 4.0 * f64::from(max_abs).powi(2) * x.cols() as f64 > 1e37 {
        tracing::warn!("coordinates up to {max_abs:e}: using the dense O(N^2) MST");
        let mut e = super::prim::mst(x, m);
        sort_edges(&mut e);
        return Ok(e);
    }
    let ix = LeafIndex::build(x)?;
    let k = LIST_K.max(m - 1).min(n - 1);
    let memo = PairMemo::new(&ix);
    let nn = knn_positions(&ix, k, &memo);
    let core: Vec<f64> = (0..n)
        .map(|p| if m == 1 { 0.0 } else { nn.dist[p * k + m - 2] })
        .collect();
    let mut edges: Vec<MstEdge> = boruvka(&ix, &nn, &core, &memo)
        .into_iter()
        .map(|c| MstEdge {
            a: ix.perm[c.lo as usize],
            b: ix.perm[c.hi as usize],
            weight: c.w,
        })
        .map(|e| {
            if e.a < e.b {
                e
            } else {
                MstEdge {
                    a: e.b,
                    b: e.a,
                    ..e
                }
            }
        })
        .collect();
    sort_edges(&mut edges);
    Ok(edges)
}

fn sort_edges(e: &mut [MstEdge]) {
    e.sort_by(|x, y| {
        x.weight
            .total_cmp(&y.weight)
            .then(x.a.cmp(&y.a))
            .then(x.b.cmp(&y.b))
    });
}

/// Components of the growing forest (union by size, path halving).
pub(crate) struct UnionFind {
    parent: Vec<u32>,
    size: Vec<u32>,
}

impl UnionFind {
    pub(crate) fn new(n: usize) -> Self {
        Self {
            parent: (0..n as u32).collect(),
            size: vec![1; n],
        }
    }

    pub(crate) fn find(&mut self, mut a: usize) -> usize {
        while self.parent[a] as usize != a {
            let g = self.parent[self.parent[a] as usize];
            self.parent[a] = g;
            a = g as usize;
        }
        a
    }

    /// Joins the sets of `a` and `b`; false when they were one already.
    pub(crate) fn union(&mut self, a: usize, b: usize) -> bool {
        let (mut a, mut b) = (self.find(a), self.find(b));
        if a == b {
            return false;
        }
        if self.size[a] < self.size[b] {
            std::mem::swap(&mut a, &mut b);
        }
        self.parent[b] = a as u32;
        self.size[a] += self.size[b];
        true
    }
}

/// The Boruvka rounds, in position space.
fn boruvka(ix: &LeafIndex, nn: &PositionKnn, core: &[f64], memo: &PairMemo) -> Vec<Cand> {
    let n = ix.n;
    let nl = ix.leaves();
    let k = nn.k;
    // Mutual reachability to any unlisted point is at least this.
    let lb: Vec<f64> = (0..n)
        .map(|p| {
            if k + 1 >= n {
                f64::INFINITY
            } else {
                core[p].max(nn.dist[p * k + k - 1])
            }
        })
        .collect();
    let min_core: Vec<f64> = (0..nl)
        .map(|l| {
            core[ix.start[l]..ix.start[l + 1]]
                .iter()
                .fold(f64::INFINITY, |m, &c| m.min(c))
        })
        .collect();
    let mut uf = UnionFind::new(n);
    let mut comp = vec![0u32; n];
    // The exact best outgoing edge each point's last search found. While its far end stays
    // outside the point's component it is still the best (the outside only shrinks); once it
    // is swallowed, its weight remains a lower bound for everything still outside.
    let mut cache_w = vec![0f64; n];
    let mut cache_o = vec![u32::MAX; n];
    let mut tree = Vec::with_capacity(n - 1);
    let mut round = 0usize;
    while tree.len() + 1 < n {
        round += 1;
        for (p, c) in comp.iter_mut().enumerate() {
            *c = uf.find(p) as u32;
        }
        // A leaf wholly inside one component is skipped by that component's searches.
        let leaf_comp: Vec<u32> = (0..nl)
            .map(|l| {
                let c = &comp[ix.start[l]..ix.start[l + 1]];
                if c.iter().all(|&v| v == c[0]) {
                    c[0]
                } else {
                    u32::MAX
                }
            })
            .collect();
        // Best known edge per point, and whether it is proven to be the point's best.
        let known: Vec<(Cand, f64)> = (0..n)
            .into_par_iter()
            .map(|p| {
                let mut best = NONE;
                for j in 0..k {
                    let d = nn.dist[p * k + j];
                    if d > best.w {
                        break;
                    }
                    let o = nn.idx[p * k + j] as usize;
                    if comp[o] != comp[p] {
                        let c = Cand::new(core[p].max(core[o]).max(d), p, o);
                        if c.less(&best) {
                            best = c;
                        }
                    }
                }
                let o = cache_o[p] as usize;
                if o != u32::MAX as usize && comp[o] != comp[p] {
                    let c = Cand::new(cache_w[p], p, o);
                    if c.less(&best) {
                        best = c;
                    }
                }
                (best, lb[p].max(cache_w[p]))
            })
            .collect();
        let mut comp_best = vec![NONE; n];
        for (p, (cand, _)) in known.iter().enumerate() {
            comp_best[comp[p] as usize].keep_least(*cand);
        }
        // Points whose best edge is neither proven nor ruled out for their component.
        let need: Vec<u32> = (0..n)
            .filter(|&p| {
                let (cand, lower) = known[p];
                cand.w > lower && lower < comp_best[comp[p] as usize].w
            })
            .map(|p| p as u32)
            .collect();
        let mut by_leaf: Vec<Vec<u32>> = vec![Vec::new(); nl];
        for &p in &need {
            by_leaf[ix.leaf_of[p as usize] as usize].push(p);
        }
        let ctx = Context {
            comp: &comp,
            leaf_comp: &leaf_comp,
            core,
            min_core: &min_core,
            comp_best: &comp_best,
        };
        let found: Vec<(Cand, f64)> = by_leaf
            .par_iter()
            .enumerate()
            .filter(|(_, v)| !v.is_empty())
            .flat_map_iter(|(q, pts)| {
                let start: Vec<Cand> = pts.iter().map(|&p| known[p as usize].0).collect();
                search_leaf(ix, q, pts, &start, &ctx, memo)
            })
            .collect();
        let need: Vec<u32> = by_leaf.into_iter().flatten().collect();
        for (&p, (cand, lower)) in need.iter().zip(&found) {
            let p = p as usize;
            cache_w[p] = *lower;
            cache_o[p] = if cand.w > *lower || cand.lo == u32::MAX {
                u32::MAX
            } else if cand.lo as usize == p {
                cand.hi
            } else {
                cand.lo
            };
            comp_best[comp[p] as usize].keep_least(*cand);
        }
        let before = tree.len();
        for e in &comp_best {
            if e.lo != u32::MAX && uf.union(e.lo as usize, e.hi as usize) {
                tree.push(*e);
            }
        }
        tracing::debug!(
            round,
            searched = need.len(),
            added = tree.len() - before,
            "boruvka round"
        );
        assert!(
            tree.len() > before,
            "a Boruvka round always adds an edge while the graph is split"
        );
    }
    tree
}

/// The exact best outgoing edges (lightest mutual reachability to a point of another
/// component) of the positions `pts`, all in leaf `q`, starting from the known edges `start`.
///
/// Candidate leaves are visited nearest first. Besides the ball bounds, each visited leaf `r`
/// is projected on the line between the two leaf centres: in many dimensions the spread of a
/// cluster along that one line is far smaller than its radius, so `<o - p, u> / |u|` rules out
/// most pairs between distinct clusters that the triangle inequality cannot.
fn search_leaf(
    ix: &LeafIndex,
    q: usize,
    pts: &[u32],
    start: &[Cand],
    ctx: &Context<'_>,
    memo: &PairMemo,
) -> Vec<(Cand, f64)> {
    let comp_best = ctx.comp_best;
    let best = start.to_vec();
    // The best edge of each component met, shared by the task's points as a cutoff: a point
    // only matters to its component if it beats it.
    let mut shared: Vec<(u32, Cand)> = Vec::new();
    let slot: Vec<usize> = pts
        .iter()
        .map(|&p| {
            let c = ctx.comp[p as usize];
            match shared.iter().position(|v| v.0 == c) {
                Some(i) => i,
                None => {
                    shared.push((c, comp_best[c as usize]));
                    shared.len() - 1
                }
            }
        })
        .collect();
    for (i, b) in best.iter().enumerate() {
        if b.less(&shared[slot[i]].1) {
            shared[slot[i]].1 = *b;
        }
    }
    let mut st = EdgeSearch {
        pts,
        slot,
        ctx,
        best,
        shared,
    };
    super::knn::search_from_leaf(ix, q, &mut st, memo);
    // Every point outside was either measured or ruled out at the cutoff of the time, so the
    // final cutoff is a lower bound; the point's own edge is its exact best when it is the cutoff.
    (0..pts.len()).map(|i| (st.best[i], st.cut(i))).collect()
}

/// What a round knows of every position and leaf, shared read-only by its search tasks.
struct Context<'a> {
    comp: &'a [u32],
    /// The component of a leaf's points when they all share one, else `u32::MAX`.
    leaf_comp: &'a [u32],
    core: &'a [f64],
    /// Least core distance in each leaf.
    min_core: &'a [f64],
    /// Each component's best edge at the start of the round.
    comp_best: &'a [Cand],
}

/// A search task's running bests: each point's own, and each component's (shared by the
/// task's points of that component, `slot[i]`).
struct EdgeSearch<'a> {
    pts: &'a [u32],
    slot: Vec<usize>,
    ctx: &'a Context<'a>,
    best: Vec<Cand>,
    shared: Vec<(u32, Cand)>,
}

impl EdgeSearch<'_> {
    /// The weight a point's next candidate must beat: its own best or its component's.
    #[inline]
    fn cut(&self, i: usize) -> f64 {
        self.best[i].w.min(self.shared[self.slot[i]].1.w)
    }
}

impl super::knn::LeafSearch for EdgeSearch<'_> {
    fn queries(&self) -> &[u32] {
        self.pts
    }

    /// Not strict: of the edges exactly as heavy as the cutoff, the one met first stays. Any
    /// of them gives a tree of the same weights, and the search order does not depend on the
    /// number of threads.
    #[inline]
    fn prune(&self, i: usize, lb: f64) -> bool {
        lb >= self.cut(i)
    }

    #[inline]
    fn skip_leaf(&self, i: usize, r: usize, lb: f64) -> bool {
        let p = self.pts[i] as usize;
        let ctx = self.ctx;
        ctx.leaf_comp[r] == ctx.comp[p] || self.prune(i, ctx.core[p].max(ctx.min_core[r]).max(lb))
    }

    #[inline]
    fn cutoff(&self, i: usize) -> f64 {
        self.cut(i)
    }

    fn hit(&mut self, i: usize, o: usize, d: f64) {
        let p = self.pts[i] as usize;
        let (comp, core) = (self.ctx.comp, self.ctx.core);
        let w = core[p].max(core[o]);
        if comp[o] == comp[p] || w >= self.cut(i) {
            return;
        }
        let cand = Cand::new(w.max(d), p, o);
        if cand.less(&self.best[i]) {
            self.best[i] = cand;
            let s = self.slot[i];
            if cand.less(&self.shared[s].1) {
                self.shared[s].1 = cand;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};
    use rand_distr::{Distribution, Normal};

    #[test]
    fn union_find_joins_once() {
        let mut uf = UnionFind::new(4);
        assert!(uf.union(0, 1));
        assert!(uf.union(2, 3));
        assert!(!uf.union(1, 0));
        assert!(uf.union(1, 3));
        assert_eq!(uf.find(0), uf.find(2));
    }

    #[test]
    fn candidate_order_breaks_ties_by_ends() {
        let mut best = NONE;
        assert!(best.is_none());
        best.keep_least(Cand::new(1.0, 5, 3));
        best.keep_least(Cand::new(1.0, 4, 2));
        best.keep_least(Cand::new(2.0, 0, 1));
        assert_eq!(
            best,
            Cand {
                w: 1.0,
                lo: 2,
                hi: 4
            }
        );
    }

    /// The simplest possible oracle: O(N^2) Prim in f64, independent of everything above.
    fn oracle(x: &Matrix, min_samples: usize) -> Vec<f64> {
        let n = x.rows();
        let dist = |i: usize, j: usize| -> f64 {
            x.row(i)
                .iter()
                .zip(x.row(j))
                .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
                .sum::<f64>()
                .sqrt()
        };
        let m = min_samples.clamp(1, n);
        let core: Vec<f64> = (0..n)
            .map(|i| {
                let mut d: Vec<f64> = (0..n)
                    .map(|j| if i == j { 0.0 } else { dist(i, j) })
                    .collect();
                d.sort_by(f64::total_cmp);
                d[m - 1]
            })
            .collect();
        let mrd = |i: usize, j: usize| core[i].max(core[j]).max(dist(i, j));
        let mut in_tree = vec![false; n];
        let mut best = vec![f64::INFINITY; n];
        let mut w = Vec::new();
        let mut cur = 0;
        in_tree[0] = true;
        for _ in 1..n {
            for j in 0..n {
                if !in_tree[j] {
                    best[j] = best[j].min(mrd(cur, j));
                }
            }
            let next = (0..n)
                .filter(|&j| !in_tree[j])
                .min_by(|&a, &b| best[a].total_cmp(&best[b]))
                .unwrap();
            w.push(best[next]);
            in_tree[next] = true;
            cur = next;
        }
        w.sort_by(f64::total_cmp);
        w
    }

    fn check(x: &Matrix, min_samples: usize, what: &str) {
        let n = x.rows();
        let e = mst(x, min_samples).unwrap();
        assert_eq!(e.len(), n.saturating_sub(1), "{what}: edge count");
        // Spanning: the edges connect every point.
        let mut uf = UnionFind::new(n);
        for ed in &e {
            assert!((ed.a as usize) < n && (ed.b as usize) < n);
            assert!(
                uf.union(ed.a as usize, ed.b as usize),
                "{what}: edge closes a cycle"
            );
        }
        let want = oracle(x, min_samples);
        let mut got: Vec<f64> = e.iter().map(|e| e.weight).collect();
        got.sort_by(f64::total_cmp);
        // Distances are summed in column order like the oracle's (and scikit-learn's), so the
        // weights agree to the bit, not merely to a tolerance.
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(g.to_bits(), w.to_bits(), "{what}: weight {i}: {g} vs {w}");
        }
        let (sg, sw): (f64, f64) = (got.iter().sum(), want.iter().sum());
        assert!(
            (sg - sw).abs() <= 1e-9 * (1.0 + sw.abs()),
            "{what}: total {sg} vs {sw}"
        );
        let sp: f64 = super::super::prim::mst(x, min_samples)
            .iter()
            .map(|e| e.weight)
            .sum();
        assert!(
            (sg - sp).abs() <= 1e-9 * (1.0 + sp.abs()),
            "{what}: total {sg} vs prim {sp}"
        );
    }

    fn uniform(n: usize, d: usize, seed: u64) -> Matrix {
        let mut rng = StdRng::seed_from_u64(seed);
        Matrix::new(
            n,
            d,
            (0..n * d).map(|_| rng.random_range(-1.0f32..1.0)).collect(),
        )
        .unwrap()
    }

    fn blobs(n: usize, d: usize, centres: usize, noise: f64, seed: u64) -> Matrix {
        let mut rng = StdRng::seed_from_u64(seed);
        let c: Vec<f32> = (0..centres * d)
            .map(|_| rng.random_range(-10.0f32..10.0))
            .collect();
        let g = Normal::new(0.0f32, 1.0).unwrap();
        let mut data = Vec::with_capacity(n * d);
        for _ in 0..n {
            if rng.random_bool(noise) {
                data.extend((0..d).map(|_| rng.random_range(-10.0f32..10.0)));
            } else {
                let k = rng.random_range(0..centres);
                data.extend((0..d).map(|j| c[k * d + j] + g.sample(&mut rng)));
            }
        }
        Matrix::new(n, d, data).unwrap()
    }

    #[test]
    fn matches_prim_on_random_shapes() {
        for ms in [1, 2, 3, 5, 10] {
            check(
                &uniform(400, 8, ms as u64),
                ms,
                &format!("uniform 400x8 ms={ms}"),
            );
            check(
                &blobs(600, 20, 6, 0.1, ms as u64),
                ms,
                &format!("blobs 600x20 ms={ms}"),
            );
        }
        check(&uniform(300, 1, 7), 2, "1-dim");
        check(&uniform(150, 3072, 8), 3, "3072-dim");
        check(&uniform(3, 2, 9), 2, "three points");
        check(&uniform(40, 5, 10), 100, "min_samples above N");
    }

    #[test]
    fn matches_prim_with_ties_and_duplicates() {
        let mut rng = StdRng::seed_from_u64(11);
        // Integer grid: many exactly equal distances.
        let grid = Matrix::new(
            500,
            3,
            (0..1500).map(|_| rng.random_range(0..6) as f32).collect(),
        )
        .unwrap();
        // Each point repeated several times: zero distances and zero core distances.
        let base = uniform(60, 4, 12);
        let dup = base.select_rows(&(0..600).map(|i| i % 60).collect::<Vec<_>>());
        for ms in [1, 2, 3, 5, 10] {
            check(&grid, ms, &format!("grid ms={ms}"));
            check(&dup, ms, &format!("duplicates ms={ms}"));
        }
        check(&Matrix::zeros(300, 5), 2, "all identical");
    }

    #[test]
    fn is_deterministic_across_thread_counts() {
        let x = blobs(3000, 30, 12, 0.05, 13);
        let run = |t: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(t)
                .build()
                .unwrap()
                .install(|| mst(&x, 3).unwrap())
        };
        let one = run(1);
        assert_eq!(one, run(3));
        check(&x, 3, "blobs 3000x30");
    }

    #[test]
    fn rejects_non_finite_input() {
        let x = Matrix::new(3, 1, vec![0.0, f32::INFINITY, 1.0]).unwrap();
        assert!(mst(&x, 2).is_err());
        assert!(mst(&Matrix::zeros(1, 4), 2).unwrap().is_empty());
    }
}
