//! The leaf tables that let `kernels/leaf_search.cu` skip most of the rows: the rows grouped
//! into compact leaves (the CPU index's 2-means split), and for every leaf the leaves nearest
//! to it, in ascending order of a rigorous lower bound on the squared distance between any of
//! their points. Built on the host in f64; only the bounds' direction matters for correctness
//! (they are rounded down), their tightness only for speed.

use crate::cluster::knn::{Kernels, split};
use crate::matrix::Matrix;
use anyhow::{Result, ensure};
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par};
use rayon::prelude::*;

/// Most rows in a leaf: the kernel runs one thread per row of its query leaf (`LS_MAX_LEAF`).
pub const MAX_LEAF: usize = 128;

/// How the rows are grouped and how far each leaf's candidate list reaches.
#[derive(Clone, Debug)]
pub struct LeafParams {
    /// Target rows per leaf, at most `MAX_LEAF`.
    pub leaf_size: usize,
    /// Candidate leaves listed per leaf, at most; a query whose search would need more is
    /// finished by the brute-force kernel. The default lists every leaf while the lists fit
    /// in `LIST_BYTES` (see there for why).
    pub list_len: usize,
}

impl Default for LeafParams {
    fn default() -> Self {
        Self {
            leaf_size: MAX_LEAF,
            list_len: usize::MAX,
        }
    }
}

/// What the candidate lists may take (8 bytes an entry, leaves x list length), on the host
/// and on the device: 2 GiB lists all 16,384 leaves of each leaf, about 1.5 million rows of
/// 2-means leaves.
///
/// Lists cut short were the default once (512 leaves), on the idea that leaves far down a list
/// are far away. In ~100 dimensions they are not: most leaves' balls overlap, so the bound of
/// the first unlisted leaf is 0 and a query the list does not settle goes to the brute-force
/// kernel. On the bench's 1,000,000 x 100 projection (12,610 leaves), 69% of the rows' nearest
/// neighbours lay past what a 512-leaf list proves, and 61% past a 4,096-leaf one
/// (`gpu_emu::list_reach_at_scale`): the kNN pass and every Boruvka round would have been
/// mostly brute force. A full list is always provable, and the walk still skips leaf by leaf
/// with each query's own bound, which is far tighter than the leaves' bound.
pub const LIST_BYTES: usize = 2 << 30;

/// The shortest list the budget cuts a list to.
const MIN_LIST: usize = 512;

/// Rows per tile of the leaf kernel (`TILE_C` in kernels/tile.cuh): the unit of its skips.
pub const TILE_ROWS: usize = 32;

/// One Boruvka round as the leaf kernel reads it: components and squared core distances per
/// position, and per leaf and per tile of `TILE_ROWS` positions (stored at the tile's first
/// position) the one component of all its rows or -1, and a bound below its rows' squared core
/// distances. The kernel passes over a leaf or tile of the query's own component, and over one
/// whose cores alone outweigh the query's best edge.
#[derive(Clone, Debug)]
pub struct Components {
    pub comp: Vec<i32>,
    pub core2: Vec<f32>,
    pub leaf_comp: Vec<i32>,
    pub leaf_core2_lo: Vec<f32>,
    pub tile_one_comp: Vec<i32>,
    pub tile_core2_lo: Vec<f32>,
}

/// Leaves over *positions*: position `i` is the caller's row `perm[i]`, and leaf `l` holds
/// positions `start[l]..start[l + 1]`.
#[derive(Debug)]
pub struct LeafTables {
    pub perm: Vec<u32>,
    pub start: Vec<i32>,
    /// Entries per leaf in `cand` and `cand_lb2`.
    pub m: usize,
    /// `cand[l * m + j]`: the j-th nearest leaf to leaf l by bound (l itself among the first);
    /// -1 pads lists of fewer than `m` leaves.
    pub cand: Vec<i32>,
    /// The squared-distance lower bound of each listed leaf, rounded down to f32.
    pub cand_lb2: Vec<f32>,
    /// A bound for every leaf left out of l's list (infinite when none is).
    pub rest_lb2: Vec<f32>,
    /// Leaf centres as f32 rows (leaves x d), for the kernel's per-query bound.
    pub centres: Vec<f32>,
    /// Per leaf, a bound (rounded up) on the distance of its rows to its f32 centre.
    pub radius: Vec<f32>,
    /// Per position, bounds below and above on the row's distance to its leaf's centre; within
    /// a leaf the rows go farthest first.
    pub tc_lo: Vec<f32>,
    pub tc_hi: Vec<f32>,
    /// Relative error bound of the kernel's f32 distance from a row to a centre.
    pub slack: f32,
    /// Per position, the row's squared norm (f32), for the kernel's dot-form screen.
    pub norm2: Vec<f32>,
    /// Bound on how far the dot-form key |p|^2 + |o|^2 - 2 p.o, as the kernel computes it,
    /// lies above the difference-form key, per unit of |p|^2 + |o|^2.
    pub screen_err: f32,
    /// The same with the dot products on the tensor cores (TF32 inputs).
    pub screen_err_tf32: f32,
}

/// Bound on |p.o - p.o on the tensor cores| per unit of |p||o|, for rows of d columns.
///
/// `tile_products_tf32` (kernels/tile.cuh) rounds each input to TF32 (to nearest, 11
/// significant bits: 2^-11 relative), so each product errs by at most 2^-10 + 2^-22 relative;
/// products of TF32 values are exact in f32. The tensor cores then add them up, at most d
/// additions on any path into a sum, each truncating (2^-23 relative to what it adds; 2^-21
/// here, four times that, for the hardware's alignment of the terms within a step). The sum of
/// |p_i o_i| is at most |p||o| (Cauchy-Schwarz). TF32 has f32's exponent range, so no
/// underflow or overflow is added beyond what the f32 screen already has.
pub(crate) fn tf32_dot_err(d: usize) -> f64 {
    let inputs = 2f64.powi(-10) + 2f64.powi(-22);
    inputs + d as f64 * 2f64.powi(-21) * (1.0 + inputs)
}

impl LeafTables {
    pub fn build(x: &Matrix, p: &LeafParams) -> Result<Self> {
        let (n, d) = (x.rows(), x.cols());
        ensure!(
            (1..=MAX_LEAF).contains(&p.leaf_size),
            "leaf size {} is outside 1..={MAX_LEAF}",
            p.leaf_size
        );
        let kern = Kernels::new(d);
        let started = std::time::Instant::now();
        let leaves = if n == 0 {
            Vec::new()
        } else {
            split(x, (0..n as u32).collect(), p.leaf_size, &kern)
        };
        tracing::debug!(
            leaves = leaves.len(),
            seconds = started.elapsed().as_secs_f64(),
            "GPU MST: rows split into leaves"
        );
        Self::from_leaves(x, leaves, p.list_len)
    }

    /// The tables for leaves chosen by the caller (each row in exactly one leaf of at most
    /// `MAX_LEAF` rows). `build` chooses them by 2-means; tests pick shapes that the split
    /// would never make, to drive the kernel into particular skips.
    pub fn from_leaves(x: &Matrix, leaves: Vec<Vec<u32>>, list_len: usize) -> Result<Self> {
        let (n, d) = (x.rows(), x.cols());
        ensure!(list_len >= 1, "the candidate list needs at least one leaf");
        ensure!(
            n < i32::MAX as usize,
            "{n} rows exceed the kernels' 32-bit indices"
        );
        let mut seen = vec![false; n];
        for leaf in &leaves {
            ensure!(
                (1..=MAX_LEAF).contains(&leaf.len()),
                "a leaf of {} rows is outside 1..={MAX_LEAF}",
                leaf.len()
            );
            for &r in leaf {
                let r = r as usize;
                ensure!(
                    r < n && !seen[r],
                    "row {r} is missing from x or in two leaves"
                );
                seen[r] = true;
            }
        }
        ensure!(seen.iter().all(|&s| s), "some rows are in no leaf");
        let nl = leaves.len();
        // Centres are rounded to f32 once and then used as exact points: every bound below is
        // measured from the same centre the kernel sees.
        let centres: Vec<Vec<f64>> = leaves
            .par_iter()
            .map(|leaf| {
                let mut c = vec![0f64; d];
                for &r in leaf {
                    for (cj, &v) in c.iter_mut().zip(x.row(r as usize)) {
                        *cj += f64::from(v);
                    }
                }
                c.iter_mut()
                    .for_each(|v| *v = f64::from((*v / leaf.len() as f64) as f32));
                c
            })
            .collect();
        // Rows farthest from the centre first (the kernel's tile bounds rely on it), with
        // their distances; f64 distances are exact to ~1e-15 relative, the factors cover that.
        let sorted: Vec<Vec<(f64, u32)>> = leaves
            .par_iter()
            .zip(&centres)
            .map(|(leaf, c)| {
                let mut v: Vec<(f64, u32)> = leaf
                    .iter()
                    .map(|&r| {
                        let s: f64 = x
                            .row(r as usize)
                            .iter()
                            .zip(c)
                            .map(|(&v, &cj)| (f64::from(v) - cj).powi(2))
                            .sum();
                        (s.sqrt(), r)
                    })
                    .collect();
                v.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
                v
            })
            .collect();
        drop(leaves);
        let radius: Vec<f64> = sorted
            .iter()
            .map(|v| v.first().map_or(0.0, |e| e.0) * (1.0 + 1e-9))
            .collect();
        let mut perm = Vec::with_capacity(n);
        let (mut tc_lo, mut tc_hi) = (Vec::with_capacity(n), Vec::with_capacity(n));
        let mut start = Vec::with_capacity(nl + 1);
        start.push(0i32);
        for leaf in &sorted {
            for &(dist, r) in leaf {
                perm.push(r);
                tc_lo.push(f32_down(dist * (1.0 - 1e-9)));
                tc_hi.push(f32_up(dist * (1.0 + 1e-9)));
            }
            start.push(perm.len() as i32);
        }
        let budget = (LIST_BYTES / (8 * nl.max(1))).max(MIN_LIST);
        let m = list_len.min(budget).min(nl.max(1));
        let started = std::time::Instant::now();
        let (cand, cand_lb2, rest_lb2) = candidate_lists(&centres, &radius, d, m);
        tracing::debug!(
            list_len = m,
            seconds = started.elapsed().as_secs_f64(),
            "GPU MST: candidate lists built"
        );
        let centres32: Vec<f32> = centres.iter().flatten().map(|&v| v as f32).collect();
        let radius32: Vec<f32> = radius.iter().map(|&r| f32_up(r)).collect();
        // An f32 squared distance errs by at most rel_err(d) relative; its square root by half
        // that, and the kernel's few roundings after it by far less than the 2e-6.
        let slack = (super::mst::rel_err(d) + 2e-6) as f32;
        // The f32 dot product errs by at most about (d + 2) units of roundoff of |p||o| <=
        // (|p|^2 + |o|^2) / 2, the norms and the final sum by a few more, and the difference
        // form by (d + 2) units of the distance <= 2 (|p|^2 + |o|^2): (3d + 10) units in all.
        // `rel_err` is 4 (d + 8) units; twice that leaves a wide margin.
        let screen_err = (2.0 * super::mst::rel_err(d)) as f32;
        // On the tensor cores the rows are taken relative to the query leaf's centre c, in
        // f32: p' = fl(p - c), o' = fl(o - c), and the norms in the screen are theirs. p'.o'
        // errs by at most tf32_dot_err |p'||o'| more, so the key (-2 p'.o') by
        // 2 tf32_dot_err |p'||o'| <= tf32_dot_err (|p'|^2 + |o'|^2); twice that again. The
        // subtractions' rounding moves p' - o' from p - o by at most 2^-24 (|p'| + |o'|) per
        // unit, so the squared distance by at most 2^-22 (|p'|^2 + |o'|^2); 2^-20 covers it.
        // The f32 terms are as in `screen_err`, with p' and o' for p and o.
        let screen_err_tf32 =
            (2.0 * super::mst::rel_err(d) + 2.0 * tf32_dot_err(d) + 2f64.powi(-20)) as f32;
        let norm2: Vec<f32> = perm
            .par_iter()
            .map(|&r| {
                let s: f64 = x
                    .row(r as usize)
                    .iter()
                    .map(|&v| f64::from(v).powi(2))
                    .sum();
                s as f32
            })
            .collect();
        Ok(Self {
            perm,
            start,
            m,
            cand,
            cand_lb2,
            rest_lb2,
            centres: centres32,
            radius: radius32,
            tc_lo,
            tc_hi,
            slack,
            norm2,
            screen_err,
            screen_err_tf32,
        })
    }

    pub fn leaves(&self) -> usize {
        self.start.len().saturating_sub(1)
    }

    /// The round's tables for components `comp` and squared core distances `core2` (both per
    /// position; `core2[p]` is the f32 nearest to the exact value, so one step down from it
    /// is below the exact value).
    pub fn components(&self, comp: Vec<i32>, core2: Vec<f32>) -> Components {
        let n = comp.len();
        let one = |s: &[i32]| {
            if s.iter().all(|&c| c == s[0]) {
                s[0]
            } else {
                -1
            }
        };
        let lo = |s: &[f32]| {
            s.iter()
                .copied()
                .fold(f32::INFINITY, f32::min)
                .next_down()
                .max(0.0)
        };
        let (mut leaf_comp, mut leaf_core2_lo) = (Vec::new(), Vec::new());
        let (mut tile_one_comp, mut tile_core2_lo) = (vec![-1; n], vec![0.0; n]);
        for l in 0..self.leaves() {
            let (a, b) = (self.start[l] as usize, self.start[l + 1] as usize);
            leaf_comp.push(one(&comp[a..b]));
            leaf_core2_lo.push(lo(&core2[a..b]));
            for t in (a..b).step_by(TILE_ROWS) {
                let e = (t + TILE_ROWS).min(b);
                tile_one_comp[t] = one(&comp[t..e]);
                tile_core2_lo[t] = lo(&core2[t..e]);
            }
        }
        Components {
            comp,
            core2,
            leaf_comp,
            leaf_core2_lo,
            tile_one_comp,
            tile_core2_lo,
        }
    }

    pub fn leaf_of_positions(&self) -> Vec<u32> {
        let mut of = vec![0u32; self.perm.len()];
        for l in 0..self.leaves() {
            of[self.start[l] as usize..self.start[l + 1] as usize].fill(l as u32);
        }
        of
    }
}

/// The largest f32 not above `v` (v >= 0).
fn f32_down(v: f64) -> f32 {
    let f = v as f32;
    if f64::from(f) > v { f.next_down() } else { f }
}

/// The smallest f32 not below `v` (v >= 0).
fn f32_up(v: f64) -> f32 {
    let f = v as f32;
    if f64::from(f) < v { f.next_up() } else { f }
}

type Lists = (Vec<i32>, Vec<f32>, Vec<f32>);

/// A non-negative f32 and a leaf as one integer that orders like (value, leaf).
fn packed(v: f32, leaf: usize) -> u64 {
    (u64::from(v.to_bits()) << 32) | leaf as u64
}

/// Every leaf's `m` nearest leaves by the bound |c_q - c_r| - r_q - r_r (the triangle
/// inequality through both centres), with the centre distances from one f64 GEMM per chunk.
/// Written straight into the tables: at 1M rows the lists are 1.27 GB, and per-chunk lists
/// joined at the end held them twice.
fn candidate_lists(centres: &[Vec<f64>], radius: &[f64], d: usize, m: usize) -> Lists {
    let nl = centres.len();
    if nl == 0 {
        return (Vec::new(), Vec::new(), Vec::new());
    }
    let flat: Vec<f64> = centres.iter().flatten().copied().collect();
    let all = MatRef::from_row_major_slice(&flat, nl, d);
    let norm2: Vec<f64> = centres
        .iter()
        .map(|c| c.iter().map(|v| v * v).sum())
        .collect();
    const CHUNK: usize = 256;
    // Zeroed (fresh pages from the system, touched first by the chunks, in parallel); every
    // slot is written below.
    let mut cand = vec![0i32; nl * m];
    let mut cand_lb2 = vec![0f32; nl * m];
    let mut rest_lb2 = vec![0f32; nl];
    cand.par_chunks_mut(CHUNK * m)
        .zip(cand_lb2.par_chunks_mut(CHUNK * m))
        .zip(rest_lb2.par_chunks_mut(CHUNK))
        .enumerate()
        .for_each(|(ci, ((cand, cand_lb2), rest_lb2))| {
            let (a, b) = (ci * CHUNK, ((ci + 1) * CHUNK).min(nl));
            // Column q - a holds <c_r, c_q> for every r: faer's matrices are column-major, so
            // the scan below reads each list's products contiguously (a chunk's 256 x nl
            // transpose read one product per 2 KiB stride).
            let mut g = Mat::<f64>::zeros(nl, b - a);
            matmul(
                g.as_mut(),
                Accum::Replace,
                all,
                all.subrows(a, b - a).transpose(),
                1.0f64,
                Par::Seq,
            );
            // In ~100 dimensions most leaves' balls overlap, so most bounds are 0; among those
            // the nearest centres go first, where a walk finds its rows' neighbours early and
            // later leaves fall to the queries' own, tighter bounds (they used to go by leaf
            // number, an arbitrary order: kNN pairs at 10,000 rows 49.4% -> 39.8% of brute
            // force with this one). The leaves with a bound follow by bound. Each part is
            // ordered as (f32 value, leaf) by a radix sort on the value.
            let (mut touching, mut apart) = (Vec::with_capacity(nl), Vec::with_capacity(nl));
            let mut scratch = Vec::with_capacity(nl);
            for q in a..b {
                touching.clear();
                apart.clear();
                let dots = g.col_as_slice(q - a);
                for r in 0..nl {
                    // The f64 dot form errs by far less than 1e-12 of |c_q|^2 + |c_r|^2.
                    let s = norm2[q] + norm2[r];
                    let cc2 = if q == r {
                        0.0
                    } else {
                        (s - 2.0 * dots[r] - 1e-12 * s).max(0.0)
                    };
                    let lb = cc2.sqrt() - radius[q] - radius[r];
                    if lb > 0.0 {
                        apart.push(packed(f32_down(lb * lb), r));
                    } else {
                        touching.push(packed(cc2 as f32, r));
                    }
                }
                sort_packed(&mut touching, &mut scratch);
                sort_packed(&mut apart, &mut scratch);
                let leaf = |v: &u64| (*v & u64::from(u32::MAX)) as i32;
                let bound = |v: &u64| f32::from_bits((*v >> 32) as u32);
                let (to, to_lb2) = (
                    &mut cand[(q - a) * m..(q - a + 1) * m],
                    &mut cand_lb2[(q - a) * m..(q - a + 1) * m],
                );
                let listed = touching.len().min(m);
                let more = (m - listed).min(apart.len());
                for (slot, v) in to.iter_mut().zip(&touching[..listed]) {
                    *slot = leaf(v);
                }
                to_lb2[..listed].fill(0.0);
                for ((slot, lb2), v) in to[listed..]
                    .iter_mut()
                    .zip(&mut to_lb2[listed..])
                    .zip(&apart[..more])
                {
                    *slot = leaf(v);
                    *lb2 = bound(v);
                }
                // Pads, where fewer than m leaves exist (never with m <= nl, as built).
                to[listed + more..].fill(-1);
                to_lb2[listed + more..].fill(f32::INFINITY);
                rest_lb2[q - a] = if touching.len() > m {
                    0.0
                } else {
                    apart.get(m - listed).map_or(f32::INFINITY, bound)
                };
            }
        });
    (cand, cand_lb2, rest_lb2)
}

/// Sorts `packed` entries pushed in ascending leaf order into (value, leaf) order, as
/// `sort_unstable` would: a stable LSD radix sort on the value's bits, 11 bits a pass, that
/// skips a pass whose digit every entry shares (the values of one list are mostly of one
/// magnitude, so their exponent bits are). Linear in the list: the 1M-row tables sort 159
/// million entries.
fn sort_packed(v: &mut Vec<u64>, scratch: &mut Vec<u64>) {
    const BITS: u32 = 11;
    debug_assert!(
        v.windows(2).all(|w| (w[0] as u32) < (w[1] as u32)),
        "leaves must come in ascending order"
    );
    scratch.clear();
    scratch.resize(v.len(), 0);
    let mut count = [0usize; 1 << BITS];
    for shift in (32..64).step_by(BITS as usize) {
        let digit = |e: u64| ((e >> shift) & ((1 << BITS) - 1)) as usize;
        count.fill(0);
        for &e in v.iter() {
            count[digit(e)] += 1;
        }
        if v.first().is_some_and(|&e| count[digit(e)] == v.len()) {
            continue;
        }
        let mut at = 0;
        for c in count.iter_mut() {
            at += std::mem::replace(c, at);
        }
        for &e in v.iter() {
            let c = &mut count[digit(e)];
            scratch[*c] = e;
            *c += 1;
        }
        std::mem::swap(v, scratch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn sizes_match_the_kernel_source() {
        // The host lays out tiles, leaves and candidate lists by these sizes and the kernels
        // read them by their own #defines: a tile table of fewer rows than the kernel's tile
        // would let it skip rows no bound covers.
        let source = super::super::KERNEL_SOURCE;
        let keep = super::super::mst::MAX_KEEP;
        for define in [
            format!("#define TILE_C {TILE_ROWS}\n"),
            format!("#define LS_MAX_LEAF {MAX_LEAF}\n"),
            format!("#define LS_MAX_KEEP {keep}\n"),
            format!("#define MAX_KEEP {keep}\n"),
        ] {
            assert!(
                source.contains(&define),
                "kernels/ lack `{}`",
                define.trim()
            );
        }
    }

    fn random(n: usize, d: usize, seed: u64) -> Matrix {
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let data = (0..n * d)
            .map(|i| rng.random_range(-1.0f32..1.0) + (i / d % 7) as f32 * 3.0)
            .collect();
        Matrix::new(n, d, data).expect("shape")
    }

    #[test]
    fn radix_order_is_the_packed_integers_order() {
        // The lists' order must not depend on how they are sorted: the kernel's walk, and so
        // the pairs it measures, follow it.
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut scratch = Vec::new();
        for len in [0usize, 1, 2, 7, 300, 5000] {
            for spread in [0u32, 3, 40, 2_000_000, u32::MAX] {
                // Values of one magnitude (the common case, passes skipped), a few distinct
                // ones (many ties, which leaf order must break), a wide range, and any finite
                // non-negative f32 (every digit differs).
                let base = rng.random_range(0.0f32..1e4);
                let mut v: Vec<u64> = (0..len)
                    .map(|leaf| {
                        let bits = if spread == u32::MAX {
                            rng.random_range(0..f32::MAX.to_bits())
                        } else {
                            base.to_bits() + rng.random_range(0..=spread)
                        };
                        packed(f32::from_bits(bits), leaf * 3)
                    })
                    .collect();
                let mut want = v.clone();
                want.sort_unstable();
                sort_packed(&mut v, &mut scratch);
                assert_eq!(v, want, "{len} entries, spread {spread}");
            }
        }
        let mut zeros: Vec<u64> = (0..100).map(|l| packed(0.0, l)).collect();
        let want = zeros.clone();
        sort_packed(&mut zeros, &mut scratch);
        assert_eq!(zeros, want);
    }

    #[test]
    fn listed_bounds_are_lower_bounds_and_ascending() {
        let x = random(900, 13, 3);
        let p = LeafParams {
            leaf_size: 32,
            list_len: 7,
        };
        let t = LeafTables::build(&x, &p).expect("tables");
        let nl = t.leaves();
        assert!(nl > p.list_len, "the test needs truncated lists");
        let mut seen = vec![false; x.rows()];
        for &r in &t.perm {
            assert!(!std::mem::replace(&mut seen[r as usize], true), "row twice");
        }
        assert!(seen.iter().all(|&s| s), "a row is missing");
        let rows = |l: usize| (t.start[l] as usize..t.start[l + 1] as usize).map(|i| t.perm[i]);
        let exact_min2 = |a: usize, b: usize| {
            let mut best = f64::INFINITY;
            for i in rows(a) {
                for j in rows(b) {
                    let s: f64 = x
                        .row(i as usize)
                        .iter()
                        .zip(x.row(j as usize))
                        .map(|(&u, &v)| (f64::from(u) - f64::from(v)).powi(2))
                        .sum();
                    best = best.min(s);
                }
            }
            best
        };
        let d = x.cols();
        for l in 0..nl {
            let c = &t.centres[l * d..(l + 1) * d];
            for i in t.start[l] as usize..t.start[l + 1] as usize {
                let r = x.row(t.perm[i] as usize);
                let dist = r
                    .iter()
                    .zip(c)
                    .map(|(&u, &v)| (f64::from(u) - f64::from(v)).powi(2))
                    .sum::<f64>()
                    .sqrt();
                assert!(f64::from(t.tc_lo[i]) <= dist && dist <= f64::from(t.tc_hi[i]));
                assert!(
                    dist <= f64::from(t.radius[l]),
                    "radius below a row's distance"
                );
                if i > t.start[l] as usize {
                    assert!(t.tc_hi[i] <= t.tc_hi[i - 1], "rows not farthest first");
                }
            }
        }
        for q in 0..nl {
            let list = &t.cand[q * t.m..(q + 1) * t.m];
            let lbs = &t.cand_lb2[q * t.m..(q + 1) * t.m];
            assert!(
                list.contains(&(q as i32)),
                "leaf {q} is not in its own list"
            );
            assert!(lbs.windows(2).all(|w| w[0] <= w[1]), "not ascending");
            for (&r, &lb) in list.iter().zip(lbs) {
                assert!(
                    f64::from(lb) <= exact_min2(q, r as usize),
                    "bound above the truth"
                );
            }
            let rest = f64::from(t.rest_lb2[q]);
            assert!(rest >= f64::from(lbs[t.m - 1]), "rest below the list");
            for r in (0..nl).filter(|r| !list.contains(&(*r as i32))) {
                assert!(rest <= exact_min2(q, r), "rest bound above the truth");
            }
        }
    }

    #[test]
    fn overlapping_leaves_are_listed_nearest_centre_first() {
        // In 100 dimensions random leaves' balls overlap: most bounds are 0, and the walk's
        // order among those is by centre distance (the leaf itself first).
        let (n, d) = (3000, 100);
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let data = (0..n * d).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let x = Matrix::new(n, d, data).expect("shape");
        let centre_d2 = |t: &LeafTables, a: usize, b: usize| -> f64 {
            let (ca, cb) = (
                &t.centres[a * d..(a + 1) * d],
                &t.centres[b * d..(b + 1) * d],
            );
            ca.iter()
                .zip(cb)
                .map(|(&u, &v)| (f64::from(u) - f64::from(v)).powi(2))
                .sum()
        };
        let small = LeafParams {
            leaf_size: 32,
            ..LeafParams::default()
        };
        let full = LeafTables::build(&x, &small).expect("tables");
        let nl = full.leaves();
        assert_eq!(full.m, nl, "the default lists every leaf while they fit");
        assert!(full.rest_lb2.iter().all(|r| r.is_infinite()));
        let mut zeros = 0;
        for q in 0..nl {
            let list = &full.cand[q * nl..(q + 1) * nl];
            let lbs = &full.cand_lb2[q * nl..(q + 1) * nl];
            assert_eq!(list[0], q as i32, "leaf {q} is not first in its own list");
            let touching = lbs.iter().take_while(|&&b| b == 0.0).count();
            zeros += touching;
            let dist: Vec<f64> = list[..touching]
                .iter()
                .map(|&r| centre_d2(&full, q, r as usize))
                .collect();
            // Ordered by the f32 rounding of each distance: equal up to one f32 step.
            assert!(
                dist.windows(2)
                    .all(|w| w[0] as f32 <= (w[1] as f32).next_up().next_up()),
                "leaf {q}: touching leaves not nearest centre first"
            );
            let mut sorted = list.to_vec();
            sorted.sort_unstable();
            assert!(
                sorted.iter().copied().eq(0..nl as i32),
                "leaf {q}: not every leaf"
            );
        }
        assert!(
            zeros > nl * nl / 2,
            "the test needs mostly overlapping leaves ({zeros} of {})",
            nl * nl
        );
        // Cut short, a list keeps the nearest of the touching leaves and proves nothing past.
        let short = LeafTables::build(
            &x,
            &LeafParams {
                list_len: 5,
                ..small
            },
        )
        .expect("tables");
        for q in 0..nl {
            let listed = &short.cand[q * 5..(q + 1) * 5];
            let full_list = &full.cand[q * nl..(q + 1) * nl];
            if full.cand_lb2[q * nl + 5] == 0.0 {
                assert_eq!(listed, &full_list[..5], "leaf {q}");
                assert_eq!(short.rest_lb2[q], 0.0);
            }
        }
    }
}
