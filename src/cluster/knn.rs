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
//! Candidates are screened first in f32, in the dot-product form `|q|^2 + |r|^2 - 2 <q, r>`
//! (`Kernels::panel`), with squared norms shrunk by a rigorous bound on that form's error
//! (relative to `|q|^2 + |r|^2`, `Kernels::norm_shrink`). A candidate is dropped only when even
//! the most favourable rounding puts it beyond the cutoff, so screening never changes a result;
//! the few that pass are measured exactly, four at a time (`prim::euclidean4`).
//!
//! How a scan runs (`scan`): per pair of leaves (q, r), leaf-level bounds pick the queries of q
//! that may find something in r; those go in groups of six, sorted by distance to r's centre,
//! over the union of their contiguous pivot ranges, through `Kernels::panel`: six queries by a
//! panel of 16 rows stored dimension-major, a GEMM micro-kernel's shape (AVX-512 or AVX2+FMA
//! intrinsics, whichever the CPU has, or NEON on aarch64; `super::simd`). It replaced a 4 x 2
//! kernel on differences, which ran at about 7 of 16 possible pair-dimensions per cycle.
//! Per-candidate bounds were tried and dropped: on 50,000 clustered rows they kept 95% of the
//! kNN candidates, and testing them cost more than the distances they saved.

use super::prim::euclidean4;
use super::simd::{
    Exact, GROUP, LANES, PanelFn, Proj4, Sq4, exact_generic, panel_generic, panel_variants,
    proj4_generic, sq4_generic,
};
use crate::matrix::{Matrix, dot64, norm64};
use anyhow::{Result, ensure};
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par};
use rayon::prelude::*;
use std::sync::OnceLock;

/// Target leaf size; leaves hold between half of it and all of it.
const LEAF_SIZE: usize = 128;
/// Leaves are enlarged for very large inputs so that the leaf-by-leaf tables stay small.
const MAX_LEAVES: usize = 2048;
/// Absolute slack on f32 squared distances: covers underflow of tiny differences.
const ABS_SLACK: f64 = 1e-30;

/// The widest SIMD the CPU kernels may use: `SEGCLUST_SIMD=portable|neon|avx2|avx512` caps what
/// run-time detection would pick, levels ordered by vector width (a cap names a level, so
/// `neon` on x86 means the portable kernels). For benchmarks (timing the AVX2 kernels on an
/// AVX-512 host stands in for an AVX2-only one; `portable` against the intrinsics) and for
/// hosts where AVX-512 lowers the clock more than it gains. Every level gives the same answers:
/// the screens are rigorous for all of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum SimdLevel {
    Portable,
    Neon,
    Avx2,
    Avx512,
}

fn simd_level(panel_name: &str) -> SimdLevel {
    match panel_name {
        "avx512" => SimdLevel::Avx512,
        "avx2" => SimdLevel::Avx2,
        "neon" => SimdLevel::Neon,
        _ => SimdLevel::Portable,
    }
}

/// The fastest of `variants` (slowest first) within `cap`.
fn pick_panel<T>(
    variants: Vec<(&'static str, T, usize)>,
    cap: SimdLevel,
) -> Option<(&'static str, T, usize)> {
    variants.into_iter().rfind(|v| simd_level(v.0) <= cap)
}

/// `SEGCLUST_SIMD`, read once; unset or unknown means no cap (an unknown value is logged).
pub fn simd_cap() -> SimdLevel {
    static CAP: std::sync::OnceLock<SimdLevel> = std::sync::OnceLock::new();
    *CAP.get_or_init(|| match std::env::var("SEGCLUST_SIMD").as_deref() {
        Err(_) | Ok("") => SimdLevel::Avx512,
        Ok("portable") => SimdLevel::Portable,
        Ok("neon") => SimdLevel::Neon,
        Ok("avx2") => SimdLevel::Avx2,
        Ok("avx512") => SimdLevel::Avx512,
        Ok(other) => {
            tracing::warn!(
                "SEGCLUST_SIMD={other:?} is not portable, neon, avx2 or avx512; ignored"
            );
            SimdLevel::Avx512
        }
    })
}

/// The SIMD kernels, chosen once for the running CPU.
#[derive(Clone, Copy)]
pub(crate) struct Kernels {
    /// f32 squared distances from `q` to four rows, with the error bound `rel`.
    pub sq4: Sq4,
    /// The scans' workhorse: f32 screening values for up to six queries against up to
    /// `panels_per_call` panels of 16 rows stored dimension-major (`LeafIndex::panels`), in
    /// the dot-product form `n'(q) + n'(r) - 2 <q, r>`, where `n'` are squared norms shrunk by
    /// `norm_shrink`. Bit `l` of result `i` is set when query i's value for lane l is not above
    /// `th[i]` (a NaN passes). Like a GEMM micro-kernel it is FMA only, one broadcast per query
    /// and one load per row vector and dimension: twice the pair-dimensions per cycle of a
    /// difference form.
    pub panel: PanelFn,
    /// Panels `panel` takes at once: 2 with AVX-512 (twelve 16-lane accumulators), else 1.
    pub panels_per_call: usize,
    /// An f64 distance for bounds (partial sums: may differ from `prim::euclidean` by an ulp).
    pub exact: Exact,
    /// f32 projections `<row - c, u>` of four rows, error below `rel * |row - c| * |u|`.
    pub proj4: Proj4,
    /// Relative error bound of `sq4` (generous: twice the worst case, plus f64 round-off).
    pub rel: f64,
    /// `c` in `n' = (1 - c) |x|^2`: the panel screen's slack, relative to `|q|^2 + |r|^2`.
    pub norm_shrink: f64,
}

impl Kernels {
    pub fn new(dim: usize) -> Self {
        let rel = crate::matrix::f32_dot_rel(dim);
        // Why the panel screen's slack is 2 rel: the f32 dot product is off by at most
        // (D + 1) u sum |q_i r_i| (u = 2^-24) and 2 sum |q_i r_i| <= |q|^2 + |r|^2, so -2 <q, r>
        // is off by (D + 1) u (|q|^2 + |r|^2); the stored norms and the final adds cost under
        // 3 u (|q|^2 + |r|^2) more. 2 rel = 4 (D + 8) u exceeds both, so with the norms shrunk
        // by it a value exceeds the exact square only by its last rounding, which `screen`'s
        // margin covers.
        let norm_shrink = 2.0 * rel;
        let cap = simd_cap();
        // The fastest panel kernel this CPU runs (`panel_variants` lists them all) within the
        // cap.
        let (panel, panels_per_call) = pick_panel(panel_variants(), cap)
            .map_or((panel_generic::<false> as PanelFn, 1), |v| (v.1, v.2));
        let (sq4, exact, proj4) = Self::row_kernels(cap);
        Self {
            sq4,
            panel,
            panels_per_call,
            exact,
            proj4,
            rel,
            norm_shrink,
        }
    }

    /// `sq4`, `exact` and `proj4` for this CPU within `cap`.
    fn row_kernels(cap: SimdLevel) -> (Sq4, Exact, Proj4) {
        #[cfg(target_arch = "x86_64")]
        {
            use super::simd::x86;
            if cap >= SimdLevel::Avx2
                && std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return (x86::sq4_avx2, x86::exact_avx2, x86::proj4_avx2);
            }
        }
        // Every aarch64 CPU fuses multiply-adds in hardware, and the compiler vectorizes the
        // portable kernels with NEON once they use them.
        #[cfg(all(target_arch = "aarch64", target_feature = "neon"))]
        if cap >= SimdLevel::Neon {
            return (sq4_generic::<true>, exact_generic, proj4_generic::<true>);
        }
        (sq4_generic::<false>, exact_generic, proj4_generic::<false>)
    }

    /// The name of the panel kernel `new` picks on this CPU (for logs and benchmarks).
    pub(crate) fn panel_name() -> &'static str {
        pick_panel(panel_variants(), simd_cap()).map_or("portable", |v| v.0)
    }

    /// An f32 threshold for `sq4` and `panel` results: every pair whose exact distance is
    /// `<= cutoff` gets a value `<=` it.
    #[inline]
    pub fn screen(&self, cutoff: f64) -> f32 {
        let x = cutoff * cutoff * (1.0 + self.rel) + ABS_SLACK;
        let t = x as f32;
        if f64::from(t) < x { t.next_up() } else { t }
    }

    /// An upper bound on the exact distance of a pair whose f32 squared distance is `s`.
    #[inline]
    pub fn upper_bound(&self, s: f32) -> f64 {
        ((f64::from(s) + ABS_SLACK) / (1.0 - self.rel)).sqrt() * (1.0 + 1e-10)
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
    /// The rows again, dimension-major in panels of `LANES` (`panel`): leaf `l` owns panels
    /// `panel_start[l]..panel_start[l + 1]`, the first starting at its first position, the
    /// last padded with zero rows.
    pub panels: Vec<f32>,
    pub panel_start: Vec<usize>,
    /// Per panel lane: `(1 - norm_shrink) |row|^2` (0 for padding, NaN for every lane when some
    /// squared norm could overflow f32, which makes every pair pass to the exact distance).
    pub panel_norm: Vec<f32>,
    /// The same value per position, for the queries.
    pub norm: Vec<f32>,
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
        let (panels, panel_start, panel_norm, norm) = build_panels(&data, stride, &start, &kern);
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
            panels,
            panel_start,
            panel_norm,
            norm,
        })
    }

    /// Panels `i..i + count`, each `stride` dimensions of `LANES` values.
    #[inline]
    pub fn panels(&self, i: usize, count: usize) -> &[f32] {
        &self.panels[i * self.stride * LANES..(i + count) * self.stride * LANES]
    }

    #[inline]
    pub fn panel_norms(&self, i: usize, count: usize) -> &[f32] {
        &self.panel_norm[i * LANES..(i + count) * LANES]
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

    /// Bounds `(lo, hi)` on the distances from up to four positions to the centre of leaf `r`,
    /// from one f32 `sq4` (a quarter of the cost of four exact distances); a position of `r`
    /// itself gets its stored exact distance.
    #[inline]
    pub fn to_leaf_centre4(&self, ps: &[usize], r: usize) -> [(f64, f64); 4] {
        let row = |j: usize| self.row(ps[j.min(ps.len() - 1)]);
        let sq = (self.kern.sq4)(self.centre(r), [row(0), row(1), row(2), row(3)]);
        let mut out = [(0.0, 0.0); 4];
        for (j, &p) in ps.iter().enumerate().take(4) {
            out[j] = if self.leaf_of[p] as usize == r {
                (self.to_centre[p], self.to_centre[p])
            } else {
                (self.kern.lower_bound(sq[j]), self.kern.upper_bound(sq[j]))
            };
        }
        out
    }

    /// The positions of leaf `r` that the pivot bound does not rule out, for a query whose
    /// distance to the centre lies in `dpc = (lo, hi)`: a point at distance `t` from the centre
    /// is at least `t - hi` and `lo - t` away. `prune` must be monotone in the bound.
    #[inline]
    pub fn pivot_range(
        &self,
        r: usize,
        (lo, hi): (f64, f64),
        prune: impl Fn(f64) -> bool,
    ) -> std::ops::Range<usize> {
        let (s, e) = (self.start[r], self.start[r + 1]);
        let tc = &self.to_centre[s..e];
        let a = tc.partition_point(|&t| prune(safe_lb(t - hi)));
        let b = tc.partition_point(|&t| !prune(safe_lb(lo - t)));
        s + a..s + b.max(a)
    }

    /// The same bound for the leaves after `r` in `q`'s order (they are no nearer): once it
    /// passes a cutoff, the scan can stop.
    #[inline]
    pub fn rest_lb(&self, p: usize, q: usize, r: usize) -> f64 {
        safe_lb(self.cc[q * self.leaves() + r] - self.to_centre[p] - self.max_radius)
    }
}

/// Bounds for the points of one leaf `q` against the points of another leaf `r`, shared by all
/// of `q`'s queries; their minimums over r's points come from the `PairMemo` (one GEMM per
/// leaf r for all q), so a visit costs O(D), against O(|r| D) per query for the distances.
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
    /// Least `(projection - margin) / |u|` over the points of `r`.
    pmin: f64,
    /// Least lower bound on a distance from `centre(q)` to a point of `r`.
    dqmin: f64,
}

impl PairBounds {
    pub fn new() -> Self {
        Self {
            active: false,
            u: Vec::new(),
            unorm: 0.0,
            pmin: 0.0,
            dqmin: 0.0,
        }
    }

    /// Sets the bounds up for the pair (q, r); the two minimums over r's points come from the
    /// `PairMemo`, shared by the kNN search and all Boruvka rounds.
    pub fn fill(&mut self, ix: &LeafIndex, q: usize, r: usize, memo: &PairMemo) {
        let cq = ix.centre(q);
        self.u.clear();
        self.u
            .extend(ix.centre(r).iter().zip(cq).map(|(&a, &b)| a - b));
        [self.pmin, self.dqmin, self.unorm] = memo.get(ix, q, r);
        self.active = q != r && self.unorm > 0.0;
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
}

/// The smallest range that covers both (an empty range covers nothing).
pub(crate) fn cover(
    a: std::ops::Range<usize>,
    b: std::ops::Range<usize>,
) -> std::ops::Range<usize> {
    if a.is_empty() {
        b
    } else if b.is_empty() {
        a
    } else {
        a.start.min(b.start)..a.end.max(b.end)
    }
}

/// Measures up to `GROUP` queries `ps` against the positions `range`, a panel of `LANES` rows
/// at a time through `Kernels::panel`. A pair that passes query j's screen `screen(st, j)` is
/// measured exactly (`prim::euclidean4`, four pairs at a time) and handed to
/// `hit(st, j, o, distance)`, which decides; the screens are re-read after every batch, as the
/// cutoffs shrink. A query is never paired with itself.
///
/// There is deliberately no per-candidate test before the kernel: at six queries per row a
/// distance costs a few cycles, less than a test the branch predictor gets wrong; the caller
/// prunes by leaves and contiguous ranges.
pub(crate) fn scan<S>(
    ix: &LeafIndex,
    ps: &[usize],
    range: std::ops::Range<usize>,
    st: &mut S,
    screen: impl Fn(&S, usize) -> f32,
    mut hit: impl FnMut(&mut S, usize, usize, f64),
) {
    let m = ps.len();
    debug_assert!((1..=GROUP).contains(&m));
    if m == 0 || m > GROUP || range.is_empty() {
        return;
    }
    let qs: [&[f32]; GROUP] = std::array::from_fn(|j| ix.row(ps[j.min(m - 1)]));
    let qn: [f32; GROUP] = std::array::from_fn(|j| ix.norm[ps[j.min(m - 1)]]);
    let mut th = [0f32; GROUP];
    let refresh = |st: &S, th: &mut [f32; GROUP]| {
        for (j, t) in th.iter_mut().enumerate().take(m) {
            *t = screen(st, j);
        }
    };
    refresh(st, &mut th);
    let mut pend = [(0usize, 0usize); 4];
    let mut np = 0;
    let mut flush = |st: &mut S, pend: &[(usize, usize)], th: &mut [f32; GROUP]| {
        let pair = |i: usize| pend[i.min(pend.len() - 1)];
        let d = euclidean4(
            [0, 1, 2, 3].map(|i| qs[pair(i).0]),
            [0, 1, 2, 3].map(|i| ix.row(pair(i).1)),
        );
        for (&(j, o), &d) in pend.iter().zip(&d) {
            hit(st, j, o, d);
        }
        refresh(st, th);
    };
    let per_call = ix.kern.panels_per_call;
    let mut pos = range.start;
    while pos < range.end {
        // The range normally lies in one leaf; panels never cross a leaf's end.
        let r = ix.leaf_of[pos] as usize;
        let first = ix.start[r];
        let end = range.end.min(ix.start[r + 1]);
        let mut pan = ix.panel_start[r] + (pos - first) / LANES;
        let mut base = first + (pos - first) / LANES * LANES;
        while base < end {
            let count = (end - base).div_ceil(LANES).min(per_call);
            let lo = pos.max(base) - base;
            let hi = (end - base).min(count * LANES);
            let lanes = ((1u64 << hi) - (1u64 << lo)) as u32;
            let masks = (ix.kern.panel)(
                &qs[..m],
                &qn[..m],
                &th[..m],
                ix.panels(pan, count),
                ix.panel_norms(pan, count),
            );
            for (j, &mask) in masks.iter().enumerate().take(m) {
                let mut pass = mask & lanes;
                while pass != 0 {
                    let o = base + pass.trailing_zeros() as usize;
                    pass &= pass - 1;
                    if o == ps[j] {
                        continue;
                    }
                    pend[np] = (j, o);
                    np += 1;
                    if np == 4 {
                        flush(st, &pend, &mut th);
                        np = 0;
                    }
                }
            }
            base += count * LANES;
            pan += count;
        }
        pos = end;
    }
    if np > 0 {
        flush(st, &pend[..np], &mut th);
    }
}

/// Nodes with at least this many rows run their own passes over the rows in parallel; below
/// it a node is sequential and the recursion supplies the parallelism. Without this the first
/// levels of a million-row split ran on one core: a third of the split's time on 2 cores, most
/// of it on 16.
const PAR_SPLIT_ROWS: usize = 1 << 15;
/// Rows per parallel chunk: a fixed size, so sums (in chunk order) do not depend on threads.
const SPLIT_CHUNK: usize = 1 << 12;

/// Recursive bisection into leaves of at most `leaf` points (deterministic).
///
/// Each split is a few rounds of 2-means started from two far-apart points, so that a split
/// follows the gaps between clusters instead of cutting through them (a leaf straddling two
/// clusters has a radius that defeats every bound). A split that leaves one side nearly empty
/// (outliers) falls back to the median along the line between the two means.
pub(crate) fn split(x: &Matrix, idx: Vec<u32>, leaf: usize, kern: &Kernels) -> Vec<Vec<u32>> {
    if idx.len() <= leaf {
        return vec![idx];
    }
    let (side, ca, cb) = two_means(x, &idx, kern);
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

/// `split`'s 2-means for one node: the side of each row (true: `cb`'s) and the two means.
///
/// The arithmetic runs per chunk of `SPLIT_CHUNK` rows and sums chunks in order, so a large
/// node can run its chunks in parallel and still give the same split for any thread count.
/// Distances are f32 and a row's side is decided by the midpoint plane (one projection per
/// row); rounding can move a row at almost equal distance to the other side, which is a split
/// all the same: only its quality matters, never the answers built on the leaves.
fn two_means(x: &Matrix, idx: &[u32], kern: &Kernels) -> (Vec<bool>, Vec<f32>, Vec<f32>) {
    let dim = x.cols();
    let parallel = idx.len() >= PAR_SPLIT_ROWS;
    let row = |rows: &[u32], j: usize| x.row(rows[j.min(rows.len() - 1)] as usize);
    // The first row at the largest distance from `from`.
    let farthest = |from: &[f32]| -> u32 {
        let chunk_best = |c: &[u32]| {
            let mut best = (f32::NEG_INFINITY, c[0]);
            for (k, r4) in c.chunks(4).enumerate() {
                let d = (kern.sq4)(from, [row(r4, 0), row(r4, 1), row(r4, 2), row(r4, 3)]);
                for (j, &dj) in d.iter().take(r4.len()).enumerate() {
                    if dj > best.0 {
                        best = (dj, c[4 * k + j]);
                    }
                }
            }
            best
        };
        let per_chunk: Vec<(f32, u32)> = if parallel {
            idx.par_chunks(SPLIT_CHUNK).map(chunk_best).collect()
        } else {
            idx.chunks(SPLIT_CHUNK).map(chunk_best).collect()
        };
        let mut best = per_chunk[0];
        for &b in &per_chunk[1..] {
            if b.0 > best.0 {
                best = b;
            }
        }
        best.1
    };
    let a = farthest(x.row(idx[0] as usize));
    let b = farthest(x.row(a as usize));
    let mut ca: Vec<f32> = x.row(a as usize).to_vec();
    let mut cb: Vec<f32> = x.row(b as usize).to_vec();
    let mut side = vec![false; idx.len()];
    type Part = (Vec<f64>, Vec<f64>, usize, usize);
    for _ in 0..4 {
        // |r - cb| < |r - ca|  <=>  <r - ca, u> > |u|^2 / 2 with u = cb - ca.
        let u: Vec<f32> = cb.iter().zip(&ca).map(|(&p, &q)| p - q).collect();
        let half = 0.5 * u.iter().map(|&v| v * v).sum::<f32>();
        let assign = |(sides, rows): (&mut [bool], &[u32])| -> Part {
            let (mut sa, mut sb) = (vec![0f64; dim], vec![0f64; dim]);
            let (mut na, mut nb) = (0usize, 0usize);
            for (s4, r4) in sides.chunks_mut(4).zip(rows.chunks(4)) {
                let p = (kern.proj4)(&ca, &u, [row(r4, 0), row(r4, 1), row(r4, 2), row(r4, 3)]);
                for (j, s) in s4.iter_mut().enumerate() {
                    *s = p[j] > half;
                    let (acc, cnt) = if *s {
                        (&mut sb, &mut nb)
                    } else {
                        (&mut sa, &mut na)
                    };
                    *cnt += 1;
                    for (t, &v) in acc.iter_mut().zip(row(r4, j)) {
                        *t += f64::from(v);
                    }
                }
            }
            (sa, sb, na, nb)
        };
        let parts: Vec<Part> = if parallel {
            side.par_chunks_mut(SPLIT_CHUNK)
                .zip(idx.par_chunks(SPLIT_CHUNK))
                .map(assign)
                .collect()
        } else {
            side.chunks_mut(SPLIT_CHUNK)
                .zip(idx.chunks(SPLIT_CHUNK))
                .map(assign)
                .collect()
        };
        let (mut sa, mut sb) = (vec![0f64; dim], vec![0f64; dim]);
        let (mut na, mut nb) = (0usize, 0usize);
        for (pa, pb, part_na, part_nb) in parts {
            sa.iter_mut().zip(&pa).for_each(|(t, v)| *t += v);
            sb.iter_mut().zip(&pb).for_each(|(t, v)| *t += v);
            na += part_na;
            nb += part_nb;
        }
        if na == 0 || nb == 0 {
            break;
        }
        ca = sa.iter().map(|&v| (v / na as f64) as f32).collect();
        cb = sb.iter().map(|&v| (v / nb as f64) as f32).collect();
    }
    (side, ca, cb)
}

/// The panel copy of `data` (see `LeafIndex::panels`) and the shrunk squared norms.
type Panels = (Vec<f32>, Vec<usize>, Vec<f32>, Vec<f32>);

fn build_panels(data: &[f32], stride: usize, start: &[usize], kern: &Kernels) -> Panels {
    let n = data.len().checked_div(stride).unwrap_or(0);
    let sq: Vec<f64> = data
        .chunks_exact(stride.max(1))
        .map(|r| r.iter().map(|&v| f64::from(v) * f64::from(v)).sum())
        .collect();
    // Above this the sums could overflow f32 (the largest is 3.4e38): give up screening.
    let overflow = sq.iter().any(|&v| v > 1e36);
    let shrink = 1.0 - kern.norm_shrink;
    let norm: Vec<f32> = sq
        .iter()
        .map(|&v| {
            if overflow {
                f32::NAN
            } else {
                (v * shrink) as f32
            }
        })
        .collect();
    let mut panel_start = vec![0];
    for w in start.windows(2) {
        let last = panel_start.last().copied().unwrap_or(0);
        panel_start.push(last + (w[1] - w[0]).div_ceil(LANES));
    }
    let np = panel_start.last().copied().unwrap_or(0);
    let mut panels = vec![0f32; np * stride * LANES];
    let mut panel_norm = vec![if overflow { f32::NAN } else { 0.0 }; np * LANES];
    for (l, w) in start.windows(2).enumerate() {
        for (i, p) in (w[0]..w[1]).enumerate() {
            let (pan, lane) = (panel_start[l] + i / LANES, i % LANES);
            let dst = &mut panels[pan * stride * LANES..(pan + 1) * stride * LANES];
            for (t, &v) in data[p * stride..(p + 1) * stride].iter().enumerate() {
                dst[t * LANES + lane] = v;
            }
            panel_norm[pan * LANES + lane] = norm[p];
        }
    }
    debug_assert_eq!(norm.len(), n);
    (panels, panel_start, panel_norm, norm)
}

/// Exact nearest neighbours of every position: `k` per point, sorted by (distance, position),
/// the point itself excluded (its duplicates are not). Row `p` lives at `[p * k, (p + 1) * k)`.
pub(crate) struct PositionKnn {
    pub k: usize,
    pub idx: Vec<u32>,
    pub dist: Vec<f64>,
}

/// `PairBounds`' two minimums over the points `o` of leaf `r`, for every leaf `q`:
/// `(min <o - c_q, u> - margin) / |u|` with `u = c_r - c_q` as f32 (exactly the `u` the queries
/// project on), and the least lower bound on `|o - c_q|`; and `|u|` itself.
///
/// Why by column and from one GEMM: computed pair by pair, each minimum re-read r's rows from
/// memory (16% of HDBSCAN at 50k, load-bound). One product `G = R C^T` of r's rows with all the
/// leaf centres gives every `<o, c_q>`, hence `<o - c_q, u> = G[o][r] - G[o][q] - <c_q, u>` up to
/// the rounding of `u`, and `|o - c_q|^2 = |o|^2 + |c_q|^2 - 2 G[o][q]`. The margins: any f32
/// product sum is off by at most D u sum |a_i b_i| (u = 2^-24), `rel` is twice that and more,
/// and `u`'s own rounding moves `<o, u>` by at most u |o| |u|.
fn memo_column(ix: &LeafIndex, r: usize) -> Vec<[f64; 3]> {
    let nl = ix.leaves();
    let s = ix.stride;
    let (a, b) = (ix.start[r], ix.start[r + 1]);
    let m = b - a;
    let rows = MatRef::from_row_major_slice(&ix.data[a * s..b * s], m, s);
    let centres = MatRef::from_row_major_slice(&ix.centres, nl, s);
    let mut g = Mat::<f32>::zeros(m, nl);
    matmul(
        g.as_mut(),
        Accum::Replace,
        rows,
        centres.transpose(),
        1.0f32,
        Par::Seq,
    );
    let no2: Vec<f64> = (a..b).map(|o| dot64(ix.row(o), ix.row(o))).collect();
    let omax = no2.iter().fold(0.0f64, |x, &v| x.max(v)).sqrt();
    let rel = ix.kern.rel;
    let cr = ix.centre(r);
    let crn = norm64(cr);
    let mut u = vec![0f32; s];
    (0..nl)
        .map(|q| {
            let cq = ix.centre(q);
            u.iter_mut()
                .zip(cr.iter().zip(cq))
                .for_each(|(v, (&x, &y))| *v = x - y);
            let unorm = norm64(&u);
            if q == r || unorm == 0.0 {
                return [f64::NEG_INFINITY, 0.0, 0.0];
            }
            let cq_u = dot64(cq, &u);
            let cq2 = dot64(cq, cq);
            let (mut pmin, mut d2min) = (f64::INFINITY, f64::INFINITY);
            for (i, &n2) in no2.iter().enumerate() {
                let (gr, gq) = (f64::from(g[(i, r)]), f64::from(g[(i, q)]));
                pmin = pmin.min(gr - gq);
                // A lower bound on |o - c_q|^2: the f32 product's error is below
                // rel (|o|^2 + |c_q|^2) / 2.
                d2min = d2min.min(n2 + cq2 - 2.0 * gq - rel * (n2 + cq2));
            }
            // This side's error, and the query side's: `query_proj4` projects `p - c_q` in f32
            // (error below rel |p - c_q| |u|, and |p - c_q| <= radius q).
            let cnorm = crn + cq2.sqrt();
            let margin = 2.0 * rel * (omax * (cnorm + unorm) + ix.radius[q] * unorm) + 1e-30;
            [
                safe_lb((pmin - cq_u - margin) / unorm),
                safe_lb(d2min.max(0.0).sqrt()),
                unorm,
            ]
        })
        .collect()
}

/// `memo_column` for every leaf r, each computed the first time a search needs it (by the
/// task that needs it; the others wait), so a pair of leaves no search visits costs nothing.
pub(crate) struct PairMemo {
    cols: Vec<OnceLock<Vec<[f64; 3]>>>,
}

impl PairMemo {
    pub fn new(ix: &LeafIndex) -> Self {
        Self {
            cols: (0..ix.leaves()).map(|_| OnceLock::new()).collect(),
        }
    }

    /// `[pmin, dqmin, |u|]` for the pair (q, r) (`|u|` is 0 when the centres coincide, and
    /// for q = r).
    #[inline]
    pub fn get(&self, ix: &LeafIndex, q: usize, r: usize) -> [f64; 3] {
        self.cols[r].get_or_init(|| memo_column(ix, r))[q]
    }
}

/// All-points exact kNN over the index, `k <= n - 1`.
pub(crate) fn knn_positions(ix: &LeafIndex, k: usize, memo: &PairMemo) -> PositionKnn {
    let n = ix.n;
    debug_assert!(k < n.max(1));
    let per_leaf: Vec<(Vec<u32>, Vec<f64>)> = (0..ix.leaves())
        .into_par_iter()
        .map(|q| {
            let best = knn_leaf(ix, q, k, memo);
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

/// What a search from one leaf needs to say about its queries; `search_from_leaf` does the
/// rest. The kNN search and each Boruvka round are the two implementations.
pub(crate) trait LeafSearch {
    /// The queries: positions, all in the leaf searched from.
    fn queries(&self) -> &[u32];
    /// Whether a point at distance at least `lb` from query `i` can no longer change its
    /// result (its cutoff). Must be monotone in `lb`.
    fn prune(&self, i: usize, lb: f64) -> bool;
    /// Whether leaf `r`, at distance at least `lb` from query `i`, can be skipped. Besides
    /// the distance, a search may know that no point of `r` can matter (Boruvka: same
    /// component).
    fn skip_leaf(&self, i: usize, r: usize, lb: f64) -> bool {
        let _ = r;
        self.prune(i, lb)
    }
    /// The cutoff of query `i` (as a distance), for the f32 screen.
    fn cutoff(&self, i: usize) -> f64;
    /// Query `i` met position `o` at exact distance `d` (never itself; only pairs the screen
    /// could not rule out).
    fn hit(&mut self, i: usize, o: usize, d: f64);
}

/// Runs a search from leaf `q`: candidate leaves nearest first, each filtered by the leaf
/// bounds (ball, then pivot and projection, `PairBounds`), the surviving queries sorted by
/// distance to the candidate's centre and scanned `GROUP` at a time over the union of their
/// pivot ranges (`scan`). Stops when no query can find anything in the remaining leaves.
pub(crate) fn search_from_leaf<S: LeafSearch>(
    ix: &LeafIndex,
    q: usize,
    st: &mut S,
    memo: &PairMemo,
) {
    let nl = ix.leaves();
    let n = st.queries().len();
    let pos = |st: &S, i: usize| st.queries()[i] as usize;
    let mut pb = PairBounds::new();
    let mut active: Vec<usize> = Vec::with_capacity(n);
    let mut live: Vec<((f64, f64), usize)> = Vec::with_capacity(n);
    for &r in &ix.order[q * nl..(q + 1) * nl] {
        let r = r as usize;
        active.clear();
        let mut any_left = false;
        for i in 0..n {
            let p = pos(st, i);
            if st.prune(i, ix.rest_lb(p, q, r)) {
                continue;
            }
            any_left = true;
            if !st.skip_leaf(i, r, ix.leaf_lb(p, q, r)) {
                active.push(i);
            }
        }
        if !any_left {
            break;
        }
        if active.is_empty() {
            continue;
        }
        pb.fill(ix, q, r, memo);
        // Cheapest bounds first: the pivot bound is free; the projection and the distance to
        // r's centre cost one f32 product each, four queries at a time.
        active.retain(|&i| !st.prune(i, pb.pivot_lb(ix, pos(st, i))));
        let mut pps = [0f64; 4];
        live.clear();
        for chunk in active.chunks(4) {
            let mut ps = [0usize; 4];
            for (p, &i) in ps.iter_mut().zip(chunk) {
                *p = pos(st, i);
            }
            let ps = &ps[..chunk.len()];
            pb.query_proj4(ix, q, ps, &mut pps);
            let dpc = ix.to_leaf_centre4(ps, r);
            for (j, &i) in chunk.iter().enumerate() {
                if !st.prune(i, pb.leaf_lb(ix, ps[j], pps[j]))
                    && !st.prune(i, safe_lb(dpc[j].0 - ix.radius[r]))
                {
                    live.push((dpc[j], i));
                }
            }
        }
        // Queries at similar distances from r's centre share most of their pivot ranges.
        live.sort_by(|a, b| a.0.0.total_cmp(&b.0.0).then(a.1.cmp(&b.1)));
        for group in live.chunks(GROUP) {
            let mut ps = [0usize; GROUP];
            let mut is = [0usize; GROUP];
            let mut range = 0..0;
            for (j, &(dpc, i)) in group.iter().enumerate() {
                (ps[j], is[j]) = (pos(st, i), i);
                range = cover(range, ix.pivot_range(r, dpc, |lb| st.prune(i, lb)));
            }
            scan(
                ix,
                &ps[..group.len()],
                range,
                st,
                |st, j| ix.kern.screen(st.cutoff(is[j])),
                |st, j, o, d| st.hit(is[j], o, d),
            );
        }
    }
}

/// The kNN search from one leaf: every point's k nearest by (distance, position), sorted.
struct KnnSearch {
    k: usize,
    queries: Vec<u32>,
    best: Vec<Vec<(f64, u32)>>,
    /// Each list's k-th distance (infinite until it is full), read far more often than written.
    kth: Vec<f64>,
}

impl LeafSearch for KnnSearch {
    fn queries(&self) -> &[u32] {
        &self.queries
    }

    /// Strict: a point exactly at the k-th distance may still win on position.
    #[inline]
    fn prune(&self, i: usize, lb: f64) -> bool {
        lb > self.kth[i]
    }

    #[inline]
    fn cutoff(&self, i: usize) -> f64 {
        self.kth[i]
    }

    fn hit(&mut self, i: usize, o: usize, d: f64) {
        let k = self.k;
        let b = &mut self.best[i];
        let cand = (d, o as u32);
        if b.len() == k {
            if cand >= b[k - 1] {
                return;
            }
            b.pop();
        }
        let at = b.partition_point(|v| *v < cand);
        b.insert(at, cand);
        if b.len() == k {
            self.kth[i] = b[k - 1].0;
        }
    }
}

/// The k nearest (by (distance, position)) of every point of leaf `q`, each list sorted.
fn knn_leaf(ix: &LeafIndex, q: usize, k: usize, memo: &PairMemo) -> Vec<Vec<(f64, u32)>> {
    let (qs, qe) = (ix.start[q], ix.start[q + 1]);
    let mut st = KnnSearch {
        k,
        queries: (qs as u32..qe as u32).collect(),
        best: vec![Vec::with_capacity(k + 1); qe - qs],
        kth: vec![f64::INFINITY; qe - qs],
    };
    if k > 0 {
        search_from_leaf(ix, q, &mut st, memo);
    }
    st.best
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
    let pk = knn_positions(&ix, k, &PairMemo::new(&ix));
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

    #[test]
    fn the_simd_cap_picks_the_fastest_variant_within_it() {
        let all = || vec![("portable", 0, 1), ("avx2", 1, 1), ("avx512", 2, 2)];
        let name = |cap| pick_panel(all(), cap).map(|v| v.0);
        assert_eq!(name(SimdLevel::Avx512), Some("avx512"));
        assert_eq!(name(SimdLevel::Avx2), Some("avx2"));
        // A cap names a width: NEON's on x86 leaves the portable kernels.
        assert_eq!(name(SimdLevel::Neon), Some("portable"));
        assert_eq!(name(SimdLevel::Portable), Some("portable"));
        let arm = || vec![("portable", 0, 1), ("neon", 3, 1)];
        assert_eq!(
            pick_panel(arm(), SimdLevel::Avx512).map(|v| v.0),
            Some("neon")
        );
        assert_eq!(
            pick_panel(arm(), SimdLevel::Neon).map(|v| v.0),
            Some("neon")
        );
        assert_eq!(
            pick_panel(arm(), SimdLevel::Portable).map(|v| v.0),
            Some("portable")
        );
        // A CPU without AVX-512 under no cap: its best.
        let no512 = vec![("portable", 0, 1), ("avx2", 1, 1)];
        assert_eq!(
            pick_panel(no512, SimdLevel::Avx512).map(|v| v.0),
            Some("avx2")
        );
    }
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
    fn split_is_the_same_for_any_thread_count() {
        // Large enough that the first levels run their passes in parallel chunks.
        let x = random(PAR_SPLIT_ROWS + 5_000, 6, 21, false);
        let kern = Kernels::new(x.cols());
        let leaves = |threads: usize| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| split(&x, (0..x.rows() as u32).collect(), 128, &kern))
        };
        let one = leaves(1);
        assert!(one.iter().all(|l| (1..=128).contains(&l.len())));
        assert_eq!(one.iter().map(Vec::len).sum::<usize>(), x.rows());
        assert_eq!(one, leaves(3));
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
        assert!(s[0] <= k.screen(e));
        assert!(k.lower_bound(s[0]) <= e);
        assert_eq!(s[1], 0.0);
        assert!(
            core_distances(&Matrix::zeros(3, 2), 2)
                .unwrap()
                .iter()
                .all(|&c| c == 0.0)
        );
    }

    /// Every panel kernel this CPU runs (portable, AVX2, AVX-512), on one and two panels,
    /// stays within the error bound the screen allows for: on rows of every length class,
    /// wildly different scales, rows far from the origin (cancellation in the dot-product
    /// form) and every query count.
    #[test]
    fn panel_results_pass_the_screen_of_their_exact_distance() {
        let mut rng = StdRng::seed_from_u64(5);
        let variants = panel_variants();
        for d in [1usize, 7, 8, 13, 100, 104, 3072] {
            for scale in [1e-3f32, 1.0, 1e3] {
                for offset in [0.0f32, 20.0] {
                    let rows: Vec<Vec<f32>> = (0..2 * LANES)
                        .map(|_| {
                            (0..d)
                                .map(|_| (offset + rng.random_range(-1.0f32..1.0)) * scale)
                                .collect()
                        })
                        .collect();
                    let x = Matrix::new(rows.len(), d, rows.concat()).unwrap();
                    let ix = LeafIndex::build(&x).unwrap();
                    assert_eq!(ix.leaves(), 1);
                    let k = ix.kern;
                    // Queries: the first GROUP positions, against panels 0 and 1.
                    let qs: Vec<&[f32]> = (0..GROUP).map(|p| ix.row(p)).collect();
                    let qn: Vec<f32> = (0..GROUP).map(|p| ix.norm[p]).collect();
                    let exact =
                        |i: usize, l: usize| super::super::prim::euclidean(qs[i], ix.row(l));
                    let at = |m: usize, lane: usize, f: &dyn Fn(f64) -> f32| -> Vec<f32> {
                        (0..m).map(|i| f(exact(i, lane))).collect()
                    };
                    for (name, kernel, most) in &variants {
                        for count in 1..=*most {
                            for m in 1..=GROUP {
                                for lane in 0..count * LANES {
                                    let screens = at(m, lane, &|e| k.screen(e));
                                    // Well below the distance (by far more than the error
                                    // bound), for pairs not lost in the cancellation.
                                    let below = at(m, lane, &|e| (e * e * 0.99) as f32);
                                    let far = (0..m).all(|i| {
                                        let n = f64::from(ix.norm[i]) + f64::from(ix.norm[lane]);
                                        exact(i, lane).powi(2) > 1e3 * k.norm_shrink * n
                                    });
                                    let run = |th: &[f32]| {
                                        kernel(
                                            &qs[..m],
                                            &qn[..m],
                                            th,
                                            ix.panels(0, count),
                                            ix.panel_norms(0, count),
                                        )
                                    };
                                    let (pass, fail) = (run(&screens), run(&below));
                                    let what = format!(
                                        "{name} x{count}: d={d} scale={scale} offset={offset} \
                                         m={m} lane {lane}"
                                    );
                                    for i in 0..m {
                                        assert_eq!(pass[i] >> lane & 1, 1, "{what} query {i}");
                                        if far && i != lane {
                                            assert_eq!(fail[i] >> lane & 1, 0, "{what} query {i}");
                                        }
                                    }
                                    assert!(pass[m..].iter().all(|&v| v == 0), "{what}");
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// The memoized pair bounds (from one GEMM per leaf) never exceed a true distance: for
    /// every pair of leaves and every query and point, at several scales and far from the
    /// origin, where the dot-product form loses most digits to cancellation.
    #[test]
    fn pair_bounds_from_the_memo_are_lower_bounds() {
        for (scale, offset) in [(1.0f32, 0.0f32), (1e-3, 0.0), (1e3, 0.0), (1.0, 30.0)] {
            let mut rng = StdRng::seed_from_u64(9);
            let (n, d) = (700, 24);
            let data: Vec<f32> = (0..n * d)
                .map(|i| {
                    // A few clusters, so the projection bounds have something to prune.
                    let c = (i / d) % 5;
                    (offset + c as f32 * 0.7 + rng.random_range(-0.3f32..0.3)) * scale
                })
                .collect();
            let x = Matrix::new(n, d, data).unwrap();
            let ix = LeafIndex::build(&x).unwrap();
            let nl = ix.leaves();
            assert!(nl >= 4, "{nl} leaves");
            let memo = PairMemo::new(&ix);
            let mut pb = PairBounds::new();
            let mut pps = [0f64; 4];
            let mut pruned = 0usize;
            for q in 0..nl {
                for r in 0..nl {
                    pb.fill(&ix, q, r, &memo);
                    for p in ix.start[q]..ix.start[q + 1] {
                        pb.query_proj4(&ix, q, &[p], &mut pps);
                        let lb = pb.leaf_lb(&ix, p, pps[0]);
                        for o in ix.start[r]..ix.start[r + 1] {
                            let e = super::super::prim::euclidean(ix.row(p), ix.row(o));
                            assert!(lb <= e, "scale {scale} offset {offset}: {lb} > {e}");
                            if lb > 0.0 {
                                pruned += 1;
                            }
                        }
                    }
                    if pb.active {
                        let cq = ix.centre(q);
                        for o in ix.start[r]..ix.start[r + 1] {
                            let e = super::super::prim::euclidean(cq, ix.row(o));
                            assert!(pb.dqmin <= e, "dqmin {} > {e}", pb.dqmin);
                        }
                    }
                }
            }
            assert!(pruned > 0, "the bounds are not all trivial");
        }
    }

    /// Norms that could overflow f32 disable the screen (every pair is measured exactly)
    /// instead of dropping pairs.
    #[test]
    fn huge_rows_are_measured_not_dropped() {
        let x = Matrix::new(4, 2, vec![1e19, 0.0, 1e19, 1.0, -1e19, 0.0, 0.0, 0.0]).unwrap();
        let nb = knn(&x, 1).unwrap();
        assert_eq!(nb.indices[0], 1);
        assert_eq!(nb.distances[0], 1.0);
    }

    #[test]
    fn euclidean4_is_euclidean_to_the_bit() {
        let mut rng = StdRng::seed_from_u64(6);
        for d in [0usize, 1, 5, 100, 104] {
            let rows: Vec<Vec<f32>> = (0..8)
                .map(|_| (0..d).map(|_| rng.random_range(-3.0f32..3.0)).collect())
                .collect();
            let a = [&rows[0][..], &rows[1][..], &rows[2][..], &rows[3][..]];
            let b = [&rows[4][..], &rows[5][..], &rows[6][..], &rows[7][..]];
            let got = euclidean4(a, b);
            for i in 0..4 {
                let want = super::super::prim::euclidean(a[i], b[i]);
                assert_eq!(got[i].to_bits(), want.to_bits(), "d={d} pair {i}");
            }
        }
    }

    #[test]
    fn rejects_non_finite_input() {
        let x = Matrix::new(3, 1, vec![0.0, f32::NAN, 1.0]).unwrap();
        assert!(knn(&x, 1).is_err());
    }
}
