//! Exact k nearest neighbours (Euclidean), and the leaf index that both the kNN search and the
//! Boruvka MST (`super::boruvka`) search with.
//!
//! Why a flat list of leaves and not a deep tree: in ~100 dimensions a ball tree prunes little
//! below the leaf level, while a leaf of ~100 points makes the inner loop a long, SIMD-friendly
//! scan of contiguous rows. Leaves come from recursive balanced bisection (the line through two
//! far-apart points, split at the median), so a leaf is a compact ball; the centre-to-centre
//! distances and a per-leaf visiting order (nearest leaves first) are computed once.
//!
//! Why two precisions: every distance that decides a result is the exact f64 one
//! (`prim::euclidean`: the sum of squared f32 -> f64 differences *in column order*, then `sqrt`,
//! bit for bit scikit-learn's `EuclideanDistance64`, so that core distances and MST weights, and
//! hence exact ties, are scikit-learn's own values). `Kernels::exact` (8 partial sums, 1 ulp
//! away at times) serves only bounds: leaf centres, radii, centre-to-centre distances.
//! Candidates are screened first with an f32 squared distance summed from differences (`sq4`),
//! whose error has a rigorous *relative* bound (`Kernels::rel`: every term is positive, so the
//! sum's relative error is at most about D units of f32 round-off). A candidate is dropped only
//! when even the most favourable rounding puts it beyond the cutoff, so screening never changes
//! a result. The f32 path is 2-3x faster
//! and is dispatched to AVX2+FMA at run time where the CPU has it.

use super::prim::euclidean;
use crate::matrix::Matrix;
use anyhow::{Result, ensure};
use rayon::prelude::*;

/// Target leaf size; leaves hold between half of it and all of it.
const LEAF_SIZE: usize = 128;
/// Leaves are enlarged for very large inputs so that the leaf-by-leaf tables stay small.
const MAX_LEAVES: usize = 2048;
/// Absolute slack on f32 squared distances: covers underflow of tiny differences.
const ABS_SLACK: f64 = 1e-30;

/// `<row - c, u>` for four rows: (c, u, rows).
type Proj4 = fn(&[f32], &[f32], [&[f32]; 4]) -> [f32; 4];

/// The SIMD kernels, chosen once for the running CPU.
#[derive(Clone, Copy)]
pub(crate) struct Kernels {
    /// f32 squared distances from `q` to four rows, with the error bound `rel`.
    pub sq4: fn(&[f32], [&[f32]; 4]) -> [f32; 4],
    /// An f64 distance for bounds (partial sums: may differ from `prim::euclidean` by an ulp).
    pub exact: fn(&[f32], &[f32]) -> f64,
    /// f32 projections `<row - c, u>` of four rows, error below `rel * |row - c| * |u|`.
    pub proj4: Proj4,
    /// Relative error bound of `sq4` (generous: twice the worst case, plus f64 round-off).
    pub rel: f64,
}

impl Kernels {
    pub fn new(dim: usize) -> Self {
        // Recursive summation of n positive terms has relative error below (n + 2) u, u = 2^-24;
        // f32::EPSILON is 2u, so this is twice that, plus room for f64 round-off in the exact
        // distances the screen is compared against.
        let rel = (dim as f64 + 8.0) * f64::from(f32::EPSILON) + 1e-9;
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Self {
                    sq4: simd::sq4_avx2,
                    exact: simd::exact_avx2,
                    proj4: simd::proj4_avx2,
                    rel,
                };
            }
        }
        Self {
            sq4: sq4_generic::<false>,
            exact: exact_generic,
            proj4: proj4_generic::<false>,
            rel,
        }
    }

    /// Whether an f32 squared distance `s` may belong to a pair whose exact distance is
    /// `<= cutoff` (never false for such a pair).
    #[inline]
    pub fn may_be_within(&self, s: f32, cutoff: f64) -> bool {
        f64::from(s) <= cutoff * cutoff * (1.0 + self.rel) + ABS_SLACK
    }

    /// A lower bound on the exact distance of a pair whose f32 squared distance is `s`.
    #[inline]
    pub fn lower_bound(&self, s: f32) -> f64 {
        ((f64::from(s) - ABS_SLACK).max(0.0) / (1.0 + self.rel)).sqrt()
    }
}

/// Shrinks a lower bound computed in f64 by far more than its round-off, so that a bound never
/// exceeds the exact f64 distance it stands for.
#[inline]
pub(crate) fn safe_lb(x: f64) -> f64 {
    x - x.abs() * 1e-10 - 1e-300
}

#[inline(always)]
fn sq4_generic<const FMA: bool>(q: &[f32], r: [&[f32]; 4]) -> [f32; 4] {
    let d = q.len();
    let (r0, r1, r2, r3) = (&r[0][..d], &r[1][..d], &r[2][..d], &r[3][..d]);
    let mut acc = [[0f32; 8]; 4];
    let chunks = q
        .chunks_exact(8)
        .zip(r0.chunks_exact(8))
        .zip(r1.chunks_exact(8))
        .zip(r2.chunks_exact(8))
        .zip(r3.chunks_exact(8));
    for ((((a, b0), b1), b2), b3) in chunks {
        for j in 0..8 {
            let x = a[j];
            let t0 = x - b0[j];
            let t1 = x - b1[j];
            let t2 = x - b2[j];
            let t3 = x - b3[j];
            if FMA {
                acc[0][j] = t0.mul_add(t0, acc[0][j]);
                acc[1][j] = t1.mul_add(t1, acc[1][j]);
                acc[2][j] = t2.mul_add(t2, acc[2][j]);
                acc[3][j] = t3.mul_add(t3, acc[3][j]);
            } else {
                acc[0][j] += t0 * t0;
                acc[1][j] += t1 * t1;
                acc[2][j] += t2 * t2;
                acc[3][j] += t3 * t3;
            }
        }
    }
    let tail = d - d % 8;
    let mut out = [0f32; 4];
    for (i, rr) in [r0, r1, r2, r3].into_iter().enumerate() {
        let a = &acc[i];
        let mut s = ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
        for j in tail..d {
            let t = q[j] - rr[j];
            s += t * t;
        }
        out[i] = s;
    }
    out
}

#[inline(always)]
fn exact_generic(a: &[f32], b: &[f32]) -> f64 {
    let b = &b[..a.len()];
    let mut acc = [0f64; 8];
    for (x, y) in a.chunks_exact(8).zip(b.chunks_exact(8)) {
        let x: &[f32; 8] = x.try_into().expect("chunks of 8");
        let y: &[f32; 8] = y.try_into().expect("chunks of 8");
        for j in 0..8 {
            let t = f64::from(x[j]) - f64::from(y[j]);
            acc[j] += t * t;
        }
    }
    let mut s = ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
    let tail = a.len() - a.len() % 8;
    for j in tail..a.len() {
        let t = f64::from(a[j]) - f64::from(b[j]);
        s += t * t;
    }
    s.sqrt()
}

/// f32 projections `<row - c, u>` of four rows (error below `rel * |row - c| * |u|`).
#[inline(always)]
fn proj4_generic<const FMA: bool>(c: &[f32], u: &[f32], r: [&[f32]; 4]) -> [f32; 4] {
    let d = c.len();
    let u = &u[..d];
    let (r0, r1, r2, r3) = (&r[0][..d], &r[1][..d], &r[2][..d], &r[3][..d]);
    let mut acc = [[0f32; 8]; 4];
    let chunks = c
        .chunks_exact(8)
        .zip(u.chunks_exact(8))
        .zip(r0.chunks_exact(8))
        .zip(r1.chunks_exact(8))
        .zip(r2.chunks_exact(8))
        .zip(r3.chunks_exact(8));
    for (((((cc, uu), b0), b1), b2), b3) in chunks {
        for j in 0..8 {
            let (x, w) = (cc[j], uu[j]);
            let t = [b0[j] - x, b1[j] - x, b2[j] - x, b3[j] - x];
            for i in 0..4 {
                if FMA {
                    acc[i][j] = t[i].mul_add(w, acc[i][j]);
                } else {
                    acc[i][j] += t[i] * w;
                }
            }
        }
    }
    let tail = d - d % 8;
    let mut out = [0f32; 4];
    for (i, rr) in [r0, r1, r2, r3].into_iter().enumerate() {
        let a = &acc[i];
        let mut s = ((a[0] + a[4]) + (a[1] + a[5])) + ((a[2] + a[6]) + (a[3] + a[7]));
        for j in tail..d {
            s += (rr[j] - c[j]) * u[j];
        }
        out[i] = s;
    }
    out
}

#[cfg(target_arch = "x86_64")]
mod simd {
    //! The same kernels compiled for AVX2+FMA; `Kernels::new` hands them out only after
    //! `is_x86_feature_detected!` confirmed both features.

    #[target_feature(enable = "avx2,fma")]
    fn sq4_impl(q: &[f32], r: [&[f32]; 4]) -> [f32; 4] {
        super::sq4_generic::<true>(q, r)
    }

    #[target_feature(enable = "avx2,fma")]
    fn exact_impl(a: &[f32], b: &[f32]) -> f64 {
        super::exact_generic(a, b)
    }

    #[target_feature(enable = "avx2,fma")]
    fn proj4_impl(c: &[f32], u: &[f32], r: [&[f32]; 4]) -> [f32; 4] {
        super::proj4_generic::<true>(c, u, r)
    }

    pub fn proj4_avx2(c: &[f32], u: &[f32], r: [&[f32]; 4]) -> [f32; 4] {
        // SAFETY: as below.
        unsafe { proj4_impl(c, u, r) }
    }

    pub fn sq4_avx2(q: &[f32], r: [&[f32]; 4]) -> [f32; 4] {
        // SAFETY: only reachable through `Kernels::new`, after AVX2 and FMA were detected.
        unsafe { sq4_impl(q, r) }
    }

    pub fn exact_avx2(a: &[f32], b: &[f32]) -> f64 {
        // SAFETY: as above.
        unsafe { exact_impl(a, b) }
    }
}

/// Points regrouped into compact leaves; everything is indexed by *position* (row order inside
/// `data`), `perm` maps a position back to the caller's row.
pub(crate) struct LeafIndex {
    pub n: usize,
    /// Row length in `data` and `centres`: the dimension rounded up to a multiple of 8 and
    /// zero-padded, so the kernels never run their scalar tail (at 100 dimensions that tail was
    /// a quarter of `sq4`'s instructions); zeros change no sum, f32 or f64, sequential or not.
    pub stride: usize,
    pub kern: Kernels,
    /// position -> original row.
    pub perm: Vec<u32>,
    /// The rows in position order (a copy, for contiguous scans), `stride` values each.
    pub data: Vec<f32>,
    /// Leaf `l` holds positions `start[l]..start[l + 1]`.
    pub start: Vec<usize>,
    pub leaf_of: Vec<u32>,
    /// Upper bound on the distance of any of the leaf's points to its centre.
    pub radius: Vec<f64>,
    pub max_radius: f64,
    /// Exact distance of each position to its own leaf's centre.
    pub to_centre: Vec<f64>,
    /// `cc[q * leaves + r]`: distance between the centres of leaves q and r.
    pub cc: Vec<f64>,
    /// `order[q * leaves + i]`: the i-th nearest leaf to leaf q (by centre distance; q first).
    pub order: Vec<u32>,
    /// Leaf centres, f32 rows of `stride` values.
    pub centres: Vec<f32>,
}

impl LeafIndex {
    pub fn build(x: &Matrix) -> Result<Self> {
        let (n, dim) = (x.rows(), x.cols());
        ensure!(
            n <= u32::MAX as usize,
            "{n} rows are more than this clustering supports (2^32 - 1)"
        );
        ensure!(
            x.as_slice().iter().all(|v| v.is_finite()),
            "the matrix to cluster holds NaN or infinite values; validate the input first"
        );
        let kern = Kernels::new(dim);
        let stride = dim.next_multiple_of(8);
        let leaf_size = LEAF_SIZE.max((2 * n).div_ceil(MAX_LEAVES));
        let leaves = if n == 0 {
            Vec::new()
        } else {
            split(x, (0..n as u32).collect(), leaf_size, &kern)
        };
        let nl = leaves.len();
        // Centres are stored as f32 rows so that the same kernels serve them; distances to them
        // are measured exactly from the stored centre, so the bounds hold whatever the rounding.
        let centres: Vec<f32> = leaves
            .par_iter()
            .flat_map_iter(|leaf| {
                let mut c = vec![0f64; dim];
                for &p in leaf {
                    for (cj, &v) in c.iter_mut().zip(x.row(p as usize)) {
                        *cj += f64::from(v);
                    }
                }
                let cnt = leaf.len() as f64;
                c.into_iter()
                    .map(move |v| (v / cnt) as f32)
                    .chain(std::iter::repeat_n(0.0, stride - dim))
            })
            .collect();
        let centre = |l: usize| &centres[l * stride..l * stride + dim];
        // Within a leaf, points go by distance to the centre, farthest first, so that the
        // pivot bound |d(p, centre) - d(o, centre)| rules out a prefix and a suffix at once.
        let sorted: Vec<Vec<(f64, u32)>> = leaves
            .par_iter()
            .enumerate()
            .map(|(l, leaf)| {
                let mut v: Vec<(f64, u32)> = leaf
                    .iter()
                    .map(|&p| ((kern.exact)(x.row(p as usize), centre(l)), p))
                    .collect();
                v.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                v
            })
            .collect();
        drop(leaves);
        let mut perm = Vec::with_capacity(n);
        let mut to_centre = Vec::with_capacity(n);
        let mut start = vec![0];
        for leaf in &sorted {
            perm.extend(leaf.iter().map(|v| v.1));
            to_centre.extend(leaf.iter().map(|v| v.0));
            start.push(perm.len());
        }
        let mut data = Vec::with_capacity(n * stride);
        for &p in &perm {
            data.extend_from_slice(x.row(p as usize));
            data.resize(data.len() + stride - dim, 0.0);
        }
        let mut leaf_of = vec![0u32; n];
        for l in 0..nl {
            leaf_of[start[l]..start[l + 1]].fill(l as u32);
        }
        let radius: Vec<f64> = (0..nl)
            .map(|l| sorted[l].first().map_or(0.0, |v| v.0) * (1.0 + 1e-12))
            .collect();
        let max_radius = radius.iter().fold(0.0f64, |m, &r| m.max(r));
        let cc: Vec<f64> = (0..nl * nl)
            .into_par_iter()
            .map(|i| {
                let (q, r) = (i / nl, i % nl);
                if q == r {
                    0.0
                } else {
                    (kern.exact)(centre(q), centre(r))
                }
            })
            .collect();
        let order: Vec<u32> = (0..nl)
            .into_par_iter()
            .flat_map_iter(|q| {
                let mut o: Vec<u32> = (0..nl as u32).collect();
                o.sort_by(|&a, &b| {
                    cc[q * nl + a as usize]
                        .total_cmp(&cc[q * nl + b as usize])
                        .then(a.cmp(&b))
                });
                // The leaf itself first, even when another centre coincides with its own.
                if let Some(i) = o.iter().position(|&l| l as usize == q) {
                    o[..=i].rotate_right(1);
                }
                o.into_iter()
            })
            .collect();
        Ok(Self {
            n,
            stride,
            kern,
            perm,
            data,
            start,
            leaf_of,
            radius,
            max_radius,
            to_centre,
            cc,
            order,
            centres,
        })
    }

    pub fn leaves(&self) -> usize {
        self.radius.len()
    }

    #[inline]
    pub fn row(&self, p: usize) -> &[f32] {
        &self.data[p * self.stride..(p + 1) * self.stride]
    }

    /// A lower bound on the distance from position `p` (in leaf `q`) to any point of leaf `r`,
    /// by the triangle inequality through both centres.
    #[inline]
    pub fn leaf_lb(&self, p: usize, q: usize, r: usize) -> f64 {
        safe_lb(self.cc[q * self.leaves() + r] - self.to_centre[p] - self.radius[r])
    }

    pub fn centre(&self, r: usize) -> &[f32] {
        &self.centres[r * self.stride..(r + 1) * self.stride]
    }

    /// Exact distance from position `p` to the centre of leaf `r`.
    #[inline]
    pub fn to_leaf_centre(&self, p: usize, r: usize) -> f64 {
        if self.leaf_of[p] as usize == r {
            self.to_centre[p]
        } else {
            (self.kern.exact)(self.row(p), self.centre(r))
        }
    }

    /// The positions of leaf `r` that the pivot bound `|dpc - d(o, centre)|` (a lower bound on
    /// the distance to a point at distance `dpc` from the centre) does not rule out; `prune`
    /// must be monotone in the bound.
    #[inline]
    pub fn pivot_range(
        &self,
        r: usize,
        dpc: f64,
        prune: impl Fn(f64) -> bool,
    ) -> std::ops::Range<usize> {
        let (s, e) = (self.start[r], self.start[r + 1]);
        let tc = &self.to_centre[s..e];
        let a = tc.partition_point(|&t| prune(safe_lb(t - dpc)));
        let b = tc.partition_point(|&t| !prune(safe_lb(dpc - t)));
        s + a..s + b.max(a)
    }

    /// The same bound for the leaves after `r` in `q`'s order (they are no nearer): once it
    /// passes a cutoff, the scan can stop.
    #[inline]
    pub fn rest_lb(&self, p: usize, q: usize, r: usize) -> f64 {
        safe_lb(self.cc[q * self.leaves() + r] - self.to_centre[p] - self.max_radius)
    }
}

/// Bounds for the points of one leaf `q` against the points of another leaf `r`, computed once
/// per visited pair of leaves and shared by all of `q`'s queries (O(|r| D), against O(|r| D)
/// per query for the distances themselves).
///
/// Two bounds that the leaf radii cannot give in many dimensions:
/// - the projection on `u = centre(r) - centre(q)`: `d(p, o) >= <o - p, u> / |u|`. A cluster's
///   spread along one line is far smaller than its radius;
/// - the pivot `centre(q)`: `d(p, o) >= d(o, centre q) - d(p, centre q)`, which rules out the
///   points of a wide leaf (scattered noise) that lie far from `q`.
pub(crate) struct PairBounds {
    pub active: bool,
    u: Vec<f32>,
    unorm: f64,
    margin: f64,
    /// `(projection - margin) / |u|` per point of `r`.
    proj: Vec<f64>,
    dq: Vec<f64>,
    pmin: f64,
    dqmin: f64,
    start: usize,
}

impl PairBounds {
    pub fn new() -> Self {
        Self {
            active: false,
            u: Vec::new(),
            unorm: 0.0,
            margin: 0.0,
            proj: Vec::new(),
            dq: Vec::new(),
            pmin: 0.0,
            dqmin: 0.0,
            start: 0,
        }
    }

    pub fn fill(&mut self, ix: &LeafIndex, q: usize, r: usize) {
        let nl = ix.leaves();
        let kern = &ix.kern;
        let cq = ix.centre(q);
        let (s, e) = (ix.start[r], ix.start[r + 1]);
        self.start = s;
        self.u.clear();
        self.u
            .extend(ix.centre(r).iter().zip(cq).map(|(&a, &b)| a - b));
        self.unorm = self
            .u
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>()
            .sqrt();
        self.active = q != r && self.unorm > 0.0;
        if !self.active {
            return;
        }
        // f32 projection error: below rel * |row - centre q| * |u| for both ends.
        self.margin =
            2.0 * kern.rel * (ix.cc[q * nl + r] + ix.radius[r] + ix.radius[q]) * self.unorm + 1e-30;
        self.proj.clear();
        self.dq.clear();
        for o in (s..e).step_by(4) {
            let id = |j: usize| ix.row((o + j).min(e - 1));
            let rows = [id(0), id(1), id(2), id(3)];
            let v = (kern.proj4)(cq, &self.u, rows);
            let d = (kern.sq4)(cq, rows);
            let m = 4.min(e - o);
            self.proj.extend(
                v[..m]
                    .iter()
                    .map(|&x| (f64::from(x) - self.margin) / self.unorm),
            );
            self.dq.extend(d[..m].iter().map(|&x| kern.lower_bound(x)));
        }
        self.pmin = self.proj.iter().fold(f64::INFINITY, |m, &v| m.min(v));
        self.dqmin = self.dq.iter().fold(f64::INFINITY, |m, &v| m.min(v));
    }

    /// Lower bound on the distance from query `p` to every point of `r` through the pivot
    /// (free: no distance computed).
    #[inline]
    pub fn pivot_lb(&self, ix: &LeafIndex, p: usize) -> f64 {
        if !self.active {
            return 0.0;
        }
        safe_lb(self.dqmin - ix.to_centre[p])
    }

    /// Projections of up to four queries at once (`out[j]` for `ps[j]`).
    pub fn query_proj4(&self, ix: &LeafIndex, q: usize, ps: &[usize], out: &mut [f64]) {
        if !self.active {
            out.iter_mut().for_each(|v| *v = 0.0);
            return;
        }
        let id = |j: usize| ix.row(ps[j.min(ps.len() - 1)]);
        let v = (ix.kern.proj4)(ix.centre(q), &self.u, [id(0), id(1), id(2), id(3)]);
        for (o, &x) in out.iter_mut().zip(&v[..ps.len()]) {
            *o = f64::from(x);
        }
    }

    /// Lower bound on the distance from query `p` (projection `pp`) to every point of `r`.
    #[inline]
    pub fn leaf_lb(&self, ix: &LeafIndex, p: usize, pp: f64) -> f64 {
        if !self.active {
            return 0.0;
        }
        let a = safe_lb(self.pmin - pp / self.unorm);
        a.max(self.pivot_lb(ix, p))
    }

    /// A cheap per-point filter for query `p` (projection `pp`) and cutoff `cut`: `skip(o)` is
    /// true only when a bound puts position `o` of `r` at a distance `>= cut` (`> cut` when
    /// `strict`).
    #[inline]
    pub fn filter(
        &self,
        ix: &LeafIndex,
        p: usize,
        pp: f64,
        cut: f64,
        strict: bool,
    ) -> PointFilter<'_> {
        if !self.active || !cut.is_finite() {
            return PointFilter {
                proj: &[],
                dq: &[],
                tp: f64::INFINITY,
                td: f64::INFINITY,
                start: self.start,
            };
        }
        // The bounds are `proj[o] - pp / |u|` and `dq[o] - to_centre[p]`; moving the query's
        // term to the threshold side costs one rounding, covered (with room to spare) by the
        // relative slack; strictness is kept by the same slack.
        let slack = 1e-9 * (cut.abs() + (pp / self.unorm).abs() + ix.to_centre[p] + 1e-300);
        let extra = if strict { slack } else { slack * 0.5 };
        PointFilter {
            proj: &self.proj,
            dq: &self.dq,
            tp: cut + pp / self.unorm + extra + self.pmin.abs() * 1e-9,
            td: cut + ix.to_centre[p] + extra + self.dqmin.abs() * 1e-9,
            start: self.start,
        }
    }
}

pub(crate) struct PointFilter<'a> {
    proj: &'a [f64],
    dq: &'a [f64],
    tp: f64,
    td: f64,
    start: usize,
}

impl PointFilter<'_> {
    #[inline]
    pub fn skip(&self, o: usize) -> bool {
        if self.proj.is_empty() {
            return false;
        }
        let i = o - self.start;
        self.proj[i] >= self.tp || self.dq[i] >= self.td
    }
}

/// Recursive bisection into leaves of at most `leaf` points (deterministic).
///
/// Each split is a few rounds of 2-means started from two far-apart points, so that a split
/// follows the gaps between clusters instead of cutting through them (a leaf straddling two
/// clusters has a radius that defeats every bound). A split that leaves one side nearly empty
/// (outliers) falls back to the median along the line between the two means.
fn split(x: &Matrix, idx: Vec<u32>, leaf: usize, kern: &Kernels) -> Vec<Vec<u32>> {
    if idx.len() <= leaf {
        return vec![idx];
    }
    let dim = x.cols();
    let farthest = |from: &[f32]| -> u32 {
        let mut best = (f64::NEG_INFINITY, idx[0]);
        for &i in &idx {
            let d = (kern.exact)(from, x.row(i as usize));
            if d > best.0 {
                best = (d, i);
            }
        }
        best.1
    };
    let a = farthest(x.row(idx[0] as usize));
    let b = farthest(x.row(a as usize));
    let mut ca: Vec<f32> = x.row(a as usize).to_vec();
    let mut cb: Vec<f32> = x.row(b as usize).to_vec();
    let mut side = vec![false; idx.len()];
    for _ in 0..4 {
        let (mut sa, mut sb) = (vec![0f64; dim], vec![0f64; dim]);
        let (mut na, mut nb) = (0usize, 0usize);
        for (s, &i) in side.iter_mut().zip(&idx) {
            let r = x.row(i as usize);
            let d = (kern.sq4)(r, [&ca, &cb, &ca, &cb]);
            *s = d[1] < d[0];
            let (acc, cnt) = if *s {
                (&mut sb, &mut nb)
            } else {
                (&mut sa, &mut na)
            };
            *cnt += 1;
            for (t, &v) in acc.iter_mut().zip(r) {
                *t += f64::from(v);
            }
        }
        if na == 0 || nb == 0 {
            break;
        }
        ca = sa.iter().map(|&v| (v / na as f64) as f32).collect();
        cb = sb.iter().map(|&v| (v / nb as f64) as f32).collect();
    }
    let nb = side.iter().filter(|&&s| s).count();
    let small = nb.min(idx.len() - nb);
    let (left, right): (Vec<u32>, Vec<u32>) = if small * 16 >= idx.len() {
        let l = idx
            .iter()
            .zip(&side)
            .filter(|(_, s)| !**s)
            .map(|(&i, _)| i)
            .collect();
        let r = idx
            .iter()
            .zip(&side)
            .filter(|(_, s)| **s)
            .map(|(&i, _)| i)
            .collect();
        (l, r)
    } else {
        let dir: Vec<f64> = cb
            .iter()
            .zip(&ca)
            .map(|(&u, &v)| f64::from(u) - f64::from(v))
            .collect();
        let mut keyed: Vec<(f64, u32)> = idx
            .iter()
            .map(|&i| {
                let r = x.row(i as usize);
                (r.iter().zip(&dir).map(|(&v, &w)| f64::from(v) * w).sum(), i)
            })
            .collect();
        let mid = keyed.len() / 2;
        keyed.select_nth_unstable_by(mid, |p, q| p.0.total_cmp(&q.0).then(p.1.cmp(&q.1)));
        let r = keyed[mid..].iter().map(|k| k.1).collect();
        keyed.truncate(mid);
        (keyed.into_iter().map(|k| k.1).collect(), r)
    };
    drop(idx);
    let (mut l, r) = if left.len() + right.len() > 8192 {
        rayon::join(
            || split(x, left, leaf, kern),
            || split(x, right, leaf, kern),
        )
    } else {
        (split(x, left, leaf, kern), split(x, right, leaf, kern))
    };
    l.extend(r);
    l
}

/// Exact nearest neighbours of every position: `k` per point, sorted by (distance, position),
/// the point itself excluded (its duplicates are not). Row `p` lives at `[p * k, (p + 1) * k)`.
pub(crate) struct PositionKnn {
    pub k: usize,
    pub idx: Vec<u32>,
    pub dist: Vec<f64>,
}

/// All-points exact kNN over the index, `k <= n - 1`.
pub(crate) fn knn_positions(ix: &LeafIndex, k: usize) -> PositionKnn {
    let n = ix.n;
    debug_assert!(k < n.max(1));
    let nl = ix.leaves();
    let per_leaf: Vec<(Vec<u32>, Vec<f64>)> = (0..nl)
        .into_par_iter()
        .map(|q| {
            let best = knn_leaf(ix, q, k);
            let idx = best.iter().flat_map(|b| b.iter().map(|v| v.1)).collect();
            let dist = best.iter().flat_map(|b| b.iter().map(|v| v.0)).collect();
            (idx, dist)
        })
        .collect();
    let mut idx = Vec::with_capacity(n * k);
    let mut dist = Vec::with_capacity(n * k);
    for (i, d) in per_leaf {
        idx.extend(i);
        dist.extend(d);
    }
    PositionKnn { k, idx, dist }
}

/// The k nearest (by (distance, position)) of every point of leaf `q`, each list sorted.
fn knn_leaf(ix: &LeafIndex, q: usize, k: usize) -> Vec<Vec<(f64, u32)>> {
    let nl = ix.leaves();
    let (qs, qe) = (ix.start[q], ix.start[q + 1]);
    let mut best: Vec<Vec<(f64, u32)>> = vec![Vec::with_capacity(k + 1); qe - qs];
    if k == 0 {
        return best;
    }
    let kth = |b: &Vec<(f64, u32)>| {
        if b.len() < k {
            f64::INFINITY
        } else {
            b[k - 1].0
        }
    };
    let mut pb = PairBounds::new();
    let mut active: Vec<usize> = Vec::with_capacity(qe - qs);
    for &r in &ix.order[q * nl..(q + 1) * nl] {
        let r = r as usize;
        // Strict comparisons: a point exactly at the k-th distance may still win on position.
        active.clear();
        let mut any_left = false;
        for p in qs..qe {
            let t = kth(&best[p - qs]);
            if ix.rest_lb(p, q, r) > t {
                continue;
            }
            any_left = true;
            if ix.leaf_lb(p, q, r) <= t {
                active.push(p);
            }
        }
        if !any_left {
            break;
        }
        if active.is_empty() {
            continue;
        }
        pb.fill(ix, q, r);
        active.retain(|&p| pb.pivot_lb(ix, p) <= kth(&best[p - qs]));
        let mut pps = [0f64; 4];
        let mut pass: Vec<(usize, f64)> = Vec::with_capacity(active.len());
        for chunk in active.chunks(4) {
            pb.query_proj4(ix, q, chunk, &mut pps);
            for (j, &p) in chunk.iter().enumerate() {
                if pb.leaf_lb(ix, p, pps[j]) <= kth(&best[p - qs]) {
                    pass.push((p, pps[j]));
                }
            }
        }
        for &(p, pp) in &pass {
            let b = &mut best[p - qs];
            let mut t = kth(b);
            let dpc = ix.to_leaf_centre(p, r);
            if safe_lb(dpc - ix.radius[r]) > t {
                continue;
            }
            let pr = ix.row(p);
            let range = ix.pivot_range(r, dpc, |lb| lb > t);
            let filt = pb.filter(ix, p, pp, t, true);
            let mut buf = [0usize; 4];
            let mut nb = 0;
            let mut o = range.start;
            loop {
                let flush = o == range.end;
                if !flush {
                    let keep = o != p && !filt.skip(o);
                    o += 1;
                    if !keep {
                        continue;
                    }
                    buf[nb] = o - 1;
                    nb += 1;
                    if nb < 4 {
                        continue;
                    }
                } else if nb == 0 {
                    break;
                }
                for j in nb..4 {
                    buf[j] = buf[0];
                }
                let sq = (ix.kern.sq4)(
                    pr,
                    [
                        ix.row(buf[0]),
                        ix.row(buf[1]),
                        ix.row(buf[2]),
                        ix.row(buf[3]),
                    ],
                );
                for j in 0..nb {
                    if !ix.kern.may_be_within(sq[j], t) {
                        continue;
                    }
                    let ob = buf[j];
                    let cand = (euclidean(pr, ix.row(ob)), ob as u32);
                    if b.len() == k {
                        let last = b[k - 1];
                        if cand >= last {
                            continue;
                        }
                        b.pop();
                    }
                    let at = b.partition_point(|v| *v < cand);
                    b.insert(at, cand);
                    t = kth(b);
                }
                nb = 0;
                if flush {
                    break;
                }
            }
        }
    }
    best
}

/// Exact k nearest neighbours of every row, by original row index: `indices[i * k + j]` is the
/// j-th nearest other row of row i, `distances` the matching exact f64 distances (ascending).
pub struct Neighbours {
    pub k: usize,
    pub indices: Vec<u32>,
    pub distances: Vec<f64>,
}

/// Exact kNN of every row of `x` (Euclidean, the row itself excluded; `k` is capped at N - 1).
pub fn knn(x: &Matrix, k: usize) -> Result<Neighbours> {
    let n = x.rows();
    let k = k.min(n.saturating_sub(1));
    let ix = LeafIndex::build(x)?;
    let pk = knn_positions(&ix, k);
    let mut indices = vec![0u32; n * k];
    let mut distances = vec![0f64; n * k];
    for p in 0..n {
        let orig = ix.perm[p] as usize;
        for j in 0..k {
            indices[orig * k + j] = ix.perm[pk.idx[p * k + j] as usize];
            distances[orig * k + j] = pk.dist[p * k + j];
        }
    }
    Ok(Neighbours {
        k,
        indices,
        distances,
    })
}

/// Core distances (scikit-learn's convention: the `min_samples`-th nearest neighbour with the
/// point itself counted first, so 1 gives 0; `min_samples` above N is clamped to N like
/// `prim::core_distances`), by original row.
pub fn core_distances(x: &Matrix, min_samples: usize) -> Result<Vec<f64>> {
    let n = x.rows();
    let m = min_samples.clamp(1, n.max(1));
    if m == 1 {
        return Ok(vec![0.0; n]);
    }
    let nb = knn(x, m - 1)?;
    Ok((0..n).map(|i| nb.distances[i * nb.k + m - 2]).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng, rngs::StdRng};

    fn random(n: usize, d: usize, seed: u64, grid: bool) -> Matrix {
        let mut rng = StdRng::seed_from_u64(seed);
        let data = (0..n * d)
            .map(|_| {
                if grid {
                    rng.random_range(0..4) as f32
                } else {
                    rng.random_range(-1.0f32..1.0)
                }
            })
            .collect();
        Matrix::new(n, d, data).unwrap()
    }

    #[test]
    fn knn_matches_brute_force() {
        for (n, d, grid) in [
            (300, 5, false),
            (500, 100, false),
            (400, 2, true),
            (50, 1, false),
            (7, 3, false),
        ] {
            let x = random(n, d, n as u64 + d as u64, grid);
            let k = 10.min(n - 1);
            let nb = knn(&x, k).unwrap();
            for i in 0..n {
                let mut all: Vec<f64> = (0..n)
                    .filter(|&j| j != i)
                    .map(|j| super::super::prim::euclidean(x.row(i), x.row(j)))
                    .collect();
                all.sort_by(f64::total_cmp);
                for (j, &want) in all.iter().take(k).enumerate() {
                    let got = nb.distances[i * k + j];
                    assert!(
                        (got - want).abs() <= 1e-12 * (1.0 + want),
                        "n={n} d={d} row {i} nn {j}: {got} vs {want}"
                    );
                    let o = nb.indices[i * k + j] as usize;
                    assert_ne!(o, i);
                    let again = super::super::prim::euclidean(x.row(i), x.row(o));
                    assert!((again - got).abs() <= 1e-12 * (1.0 + got));
                }
            }
        }
    }

    #[test]
    fn screen_never_drops_a_closer_point() {
        let k = Kernels::new(3);
        let a = [1.0f32, 2.0, 3.0];
        let b = [1.0f32 + 1e-6, 2.0, 3.0 - 1e-6];
        let s = (k.sq4)(&a, [&b, &a, &b, &b]);
        let e = (k.exact)(&a, &b);
        assert!(k.may_be_within(s[0], e));
        assert!(k.lower_bound(s[0]) <= e);
        assert_eq!(s[1], 0.0);
        assert!(
            core_distances(&Matrix::zeros(3, 2), 2)
                .unwrap()
                .iter()
                .all(|&c| c == 0.0)
        );
    }

    #[test]
    fn rejects_non_finite_input() {
        let x = Matrix::new(3, 1, vec![0.0, f32::NAN, 1.0]).unwrap();
        assert!(knn(&x, 1).is_err());
    }
}
