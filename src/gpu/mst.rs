//! Exact mutual-reachability MST: device candidates, f64 proofs on the host, Boruvka rounds.
//!
//! The device only ever proposes *candidates*: every f32 key has a relative error below
//! `rel_err`, so a query's last kept key bounds, from below, the exact key of every row it
//! visited and did not keep, and the leaf kernel reports a listed bound for every row it did not
//! visit. Those bounds, not the f32 answers, decide whether a result is proven. What the leaf
//! search cannot prove goes to the brute-force kernel, and what that cannot prove is computed
//! exactly on the host. Ties: any minimum-weight edge is accepted; the union-find skips an edge
//! that would close a cycle (only possible among equal weights).
//!
//! The algorithm is written against `NearestKernels`, so the same host code runs with CUDA
//! (`CudaKernels`) and, in tests/gpu_emu.rs, with the same kernel source compiled for the CPU.

use super::check_finite;
use super::leaves::{Components, LeafParams, LeafTables, MAX_LEAF};
use crate::cluster::MstEdge;
use crate::cluster::boruvka::{Cand, NONE, UnionFind};
use crate::matrix::Matrix;
use anyhow::{Result, bail};
use rayon::prelude::*;

/// Most candidates one query may keep (`MAX_KEEP` and `LS_MAX_KEEP` in the kernels).
pub const MAX_KEEP: usize = 64;
/// Threads per block of `nearest_candidates` (the kernel works with any block size).
pub const BLOCK: u32 = 128;
/// Queries per brute-force launch: bounds one launch's run time and its output buffers.
const QUERY_CHUNK: usize = 1 << 16;
/// Query leaves per leaf-search launch, for the same reason.
const LEAF_CHUNK: usize = 4096;
/// Extra neighbours fetched beyond what the core distance needs: they let more points prove
/// their Boruvka edge from the kNN list alone.
const KNN_EXTRA: usize = 8;

/// The device side of the MST: two candidate kernels over rows loaded once per batch.
/// Outputs are ascending per query; `-1` indices mark empty or sentinel slots.
pub trait NearestKernels {
    /// Loads the rows (n x d, row-major, in position order) and the leaf tables.
    fn load(&mut self, rows: &[f32], d: usize, leaves: &LeafTables) -> Result<()>;
    /// The Boruvka state used by later calls with `boruvka = true`: the round's components,
    /// and per component the squared cutoff known so far (the kernel lowers it as it finds
    /// edges).
    fn set_components(&mut self, c: &Components, comp_cut2: &[f32]) -> Result<()>;
    /// `leaf_candidates` (kernels/leaf_search.cu) for `qleaves`, walking at most `walk` listed
    /// leaves and stopping once every query's `need`-th key is settled; `qpos` holds
    /// `MAX_LEAF` entries per query leaf, its query positions first and -1 after them, and
    /// `cutoff2` one value per position. Keys and indices come `MAX_LEAF * keep` per query
    /// leaf, `unseen2` `MAX_LEAF`, in the order of `qpos`.
    #[allow(clippy::too_many_arguments)]
    fn leaf_candidates(
        &mut self,
        qleaves: &[i32],
        qpos: &[i32],
        cutoff2: &[f32],
        boruvka: bool,
        walk: usize,
        need: usize,
        keep: usize,
    ) -> Result<LeafFound>;
    /// `nearest_candidates` (kernels/nearest.cu): `keep` keys and indices per query position.
    fn nearest_candidates(
        &mut self,
        queries: &[i32],
        boruvka: bool,
        keep: usize,
    ) -> Result<(Vec<f32>, Vec<i32>)>;
}

/// `NearestKernels` with a clock on every call: the calls return only once their results are
/// on the host, so what they take is the device's share of the MST (kernels and transfers),
/// and the rest of `mst_with`'s time is the host's. The host's share does not shrink with a
/// faster GPU, so it is logged apart.
struct Timed<'a, K: NearestKernels + ?Sized> {
    dev: &'a mut K,
    spent: std::time::Duration,
}

impl<K: NearestKernels + ?Sized> Timed<'_, K> {
    fn timed<T>(&mut self, call: impl FnOnce(&mut K) -> T) -> T {
        let started = std::time::Instant::now();
        let out = call(&mut *self.dev);
        self.spent += started.elapsed();
        out
    }
}

impl<K: NearestKernels + ?Sized> NearestKernels for Timed<'_, K> {
    fn load(&mut self, rows: &[f32], d: usize, leaves: &LeafTables) -> Result<()> {
        self.timed(|k| k.load(rows, d, leaves))
    }

    fn set_components(&mut self, c: &Components, comp_cut2: &[f32]) -> Result<()> {
        self.timed(|k| k.set_components(c, comp_cut2))
    }

    fn leaf_candidates(
        &mut self,
        qleaves: &[i32],
        qpos: &[i32],
        cutoff2: &[f32],
        boruvka: bool,
        walk: usize,
        need: usize,
        keep: usize,
    ) -> Result<LeafFound> {
        self.timed(|k| k.leaf_candidates(qleaves, qpos, cutoff2, boruvka, walk, need, keep))
    }

    fn nearest_candidates(
        &mut self,
        queries: &[i32],
        boruvka: bool,
        keep: usize,
    ) -> Result<(Vec<f32>, Vec<i32>)> {
        self.timed(|k| k.nearest_candidates(queries, boruvka, keep))
    }
}

/// What `leaf_candidates` returns (see `NearestKernels::leaf_candidates`).
pub struct LeafFound {
    pub keys: Vec<f32>,
    pub idx: Vec<i32>,
    pub unseen2: Vec<f32>,
    /// Per query leaf, the candidate rows its block measured (work, for the log and tests).
    pub rows: Vec<i32>,
}

/// Tuning of the GPU MST; the answer does not depend on it, only the work does.
#[derive(Clone, Debug)]
pub struct GpuMstParams {
    pub leaves: LeafParams,
    /// Candidates kept per query in Boruvka rounds.
    pub boruvka_keep: usize,
}

impl Default for GpuMstParams {
    fn default() -> Self {
        Self {
            leaves: LeafParams::default(),
            boruvka_keep: 4,
        }
    }
}

/// Relative error bound of an f32 squared distance over `d` dimensions (each difference and
/// square rounds, then `d` additions), doubled for safety.
pub(crate) fn rel_err(d: usize) -> f64 {
    2.0 * (d as f64 + 8.0) * f64::from(f32::EPSILON)
}

/// A lower bound on the exact value of an f32 squared key (`inf` stays `inf`).
fn lower(key: f32, rel: f64) -> f64 {
    (f64::from(key) * (1.0 - rel)).max(0.0)
}

/// The smallest f32 cutoff whose `lower` is still at least `w2`: keys at or above it cannot
/// belong to an edge lighter than `w2`.
fn cutoff_above(w2: f64, rel: f64) -> f32 {
    if !w2.is_finite() {
        return f32::INFINITY;
    }
    let c = (w2 * (1.0 + 3.0 * rel)) as f32;
    c.next_up()
}

fn dist2(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(&x, &y)| {
            let t = f64::from(x) - f64::from(y);
            t * t
        })
        .sum()
}

fn to_i32(v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| anyhow::anyhow!("size {v} exceeds the kernels' 32-bit indices"))
}

/// Exact k-th smallest squared distance from row `p` (k >= 1, the point itself counted).
fn exact_kth2(x: &Matrix, p: usize, k: usize) -> f64 {
    let mut all: Vec<f64> = (0..x.rows()).map(|q| dist2(x.row(p), x.row(q))).collect();
    let (_, kth, _) = all.select_nth_unstable_by(k - 1, f64::total_cmp);
    *kth
}

/// Exact lightest mutual-reachability edge from `p` to another component (host fallback).
fn exact_min_edge(x: &Matrix, core: &[f64], comp: &[u32], p: usize) -> Cand {
    let mut best = NONE;
    for q in 0..x.rows() {
        if comp[q] == comp[p] {
            continue;
        }
        let floor = core[p].max(core[q]);
        if floor > best.w {
            continue;
        }
        let w = floor.max(dist2(x.row(p), x.row(q)).sqrt());
        best.keep_least(Cand::new(w, p, q));
    }
    best
}

/// One query's candidates: (position, f32 key) ascending, and what bounds every row not among
/// them: every measured row left out has a key of at least `last` (up to its rounding), every
/// row not measured a squared distance of at least `unseen2`.
struct Found {
    list: Vec<(usize, f32)>,
    last: f32,
    /// The kernel's bound on the rows it did not measure.
    unseen2: f32,
}

impl Found {
    fn unseen2(&self, rel: f64) -> f64 {
        lower(self.last, rel).min(f64::from(self.unseen2))
    }
}

/// What one leaf search asks of the kernel (see `NearestKernels::leaf_candidates`).
#[derive(Clone, Copy)]
struct Ask {
    boruvka: bool,
    walk: usize,
    need: usize,
    keep: usize,
}

/// Runs the leaf search for the leaves holding `queries` (positions); returns one `Found`
/// per query, in the order of `queries`.
fn leaf_search<K: NearestKernels + ?Sized>(
    dev: &mut K,
    leaf_of: &[u32],
    queries: &[usize],
    cutoff2: &[f32],
    ask: Ask,
) -> Result<Vec<Found>> {
    let Ask {
        boruvka,
        walk,
        need,
        keep,
    } = ask;
    // One block per leaf that holds queries, its queries packed into the first threads (in
    // position order): in Boruvka few rows of a leaf still search, and a warp with none of
    // them skips the arithmetic. `slot[i]`: the block and thread of `queries[i]`.
    let mut order: Vec<usize> = (0..queries.len()).collect();
    order.sort_unstable_by_key(|&i| queries[i]);
    let mut qleaves: Vec<i32> = Vec::new();
    let mut qpos: Vec<i32> = Vec::new();
    let mut slot = vec![(0usize, 0usize); queries.len()];
    let mut in_block = 0;
    for &i in &order {
        let p = queries[i];
        let l = leaf_of[p] as i32;
        if qleaves.last() != Some(&l) {
            qleaves.push(l);
            qpos.resize(qleaves.len() * MAX_LEAF, -1);
            in_block = 0;
        }
        if in_block == MAX_LEAF {
            bail!("more than {MAX_LEAF} queries in leaf {l} (a query given twice?)");
        }
        let b = qleaves.len() - 1;
        qpos[b * MAX_LEAF + in_block] = to_i32(p)?;
        slot[i] = (b, in_block);
        in_block += 1;
    }
    let mut pairs = 0usize;
    let mut outs = Vec::new();
    for (ci, chunk) in qleaves.chunks(LEAF_CHUNK).enumerate() {
        let first = ci * LEAF_CHUNK;
        let pos = &qpos[first * MAX_LEAF..(first + chunk.len()) * MAX_LEAF];
        let out = dev.leaf_candidates(chunk, pos, cutoff2, boruvka, walk, need, keep)?;
        if out.keys.len() != chunk.len() * MAX_LEAF * keep
            || out.idx.len() != out.keys.len()
            || out.unseen2.len() != chunk.len() * MAX_LEAF
            || out.rows.len() != chunk.len()
        {
            bail!("leaf_candidates returned buffers of the wrong size");
        }
        for (b, ps) in pos.chunks(MAX_LEAF).enumerate() {
            let queries = ps.iter().filter(|&&p| p >= 0).count();
            pairs += queries * usize::try_from(out.rows[b]).unwrap_or(0);
        }
        outs.push(out);
    }
    let n = leaf_of.len();
    tracing::debug!(
        "leaf search: {} queries in {} leaves measured {pairs} pairs ({:.2}% of brute force)",
        queries.len(),
        qleaves.len(),
        100.0 * pairs as f64 / (queries.len() as f64 * n as f64)
    );
    slot.par_iter()
        .map(|&(b, thread)| {
            let out = &outs[b / LEAF_CHUNK];
            let s = (b % LEAF_CHUNK) * MAX_LEAF + thread;
            let ks = &out.keys[s * keep..(s + 1) * keep];
            let is = &out.idx[s * keep..(s + 1) * keep];
            let mut list = Vec::with_capacity(keep);
            for (&q, &k) in is.iter().zip(ks) {
                if q >= 0 {
                    if q as usize >= n {
                        bail!("leaf_candidates returned row {q} of {n}");
                    }
                    list.push((q as usize, k));
                }
            }
            Ok(Found {
                list,
                // A real row, or the cutoff sentinel (infinite in kNN) the list started with.
                last: ks[keep - 1],
                unseen2: out.unseen2[s],
            })
        })
        .collect()
}

/// `nearest_candidates` over `queries` in launches of `QUERY_CHUNK`; one `Found` per query
/// (the brute-force kernel visits every row, so only the last key bounds the rest).
fn brute_search<K: NearestKernels + ?Sized>(
    dev: &mut K,
    n: usize,
    queries: &[usize],
    boruvka: bool,
    keep: usize,
) -> Result<Vec<Found>> {
    let mut found = Vec::with_capacity(queries.len());
    for chunk in queries.chunks(QUERY_CHUNK) {
        let q: Vec<i32> = chunk.iter().map(|&p| to_i32(p)).collect::<Result<_>>()?;
        let (keys, idx) = dev.nearest_candidates(&q, boruvka, keep)?;
        if keys.len() != q.len() * keep || idx.len() != keys.len() {
            bail!("nearest_candidates returned buffers of the wrong size");
        }
        for t in 0..q.len() {
            let (ks, is) = (
                &keys[t * keep..(t + 1) * keep],
                &idx[t * keep..(t + 1) * keep],
            );
            let mut list = Vec::with_capacity(keep);
            for (&r, &k) in is.iter().zip(ks) {
                if r >= 0 {
                    if r as usize >= n {
                        bail!("nearest_candidates returned row {r} of {n}");
                    }
                    list.push((r as usize, k));
                }
            }
            found.push(Found {
                list,
                last: ks[keep - 1],
                unseen2: f32::INFINITY,
            });
        }
    }
    Ok(found)
}

/// One point's kNN result: neighbours (position, exact distance) ascending, its exact core
/// distance, and a lower bound on the distance of every point not in the list.
type KnnRow = (Vec<(u32, f64)>, f64, f64);

/// Turns candidates into a proven kNN row, or None when the bounds cannot prove the core.
fn prove_knn(x: &Matrix, p: usize, f: &Found, min_samples: usize, rel: f64) -> Option<KnnRow> {
    let mut list: Vec<(u32, f64)> = f
        .list
        .iter()
        .map(|&(q, _)| (q as u32, dist2(x.row(p), x.row(q))))
        .collect();
    list.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
    let unseen2 = f.unseen2(rel);
    if list.len() < min_samples || list[min_samples - 1].1 > unseen2 {
        return None;
    }
    let core = list[min_samples - 1].1.sqrt();
    for e in &mut list {
        e.1 = e.1.sqrt();
    }
    Some((list, core, unseen2.sqrt()))
}

/// From p's kNN list: its lightest edge to a row of another label, whether that is proven p's
/// lightest, and a lower bound on every edge of p the list does not hold.
fn list_edge(knn: &[KnnRow], core: &[f64], label: &[u32], p: usize) -> (Cand, bool, f64) {
    let (list, cp, unseen) = &knn[p];
    let mut best = NONE;
    for &(q, dq) in list {
        let q = q as usize;
        if label[q] != label[p] {
            best.keep_least(Cand::new(cp.max(core[q]).max(dq), p, q));
        }
    }
    let lb = cp.max(*unseen);
    let proven = !best.is_none() && best.w <= lb;
    (best, proven, lb)
}

/// A component whose rows are more than this share of all rows has its lightest edge looked
/// up from the other side (see `Round::lightest_edges`).
const GIANT_SHARE: f64 = 0.5;

/// What one Boruvka round works with: the kernels, the batch in position order, its proven
/// kNN lists and core distances.
struct Round<'a, K: NearestKernels + ?Sized> {
    dev: &'a mut K,
    tables: &'a LeafTables,
    leaf_of: &'a [u32],
    x: &'a Matrix,
    knn: &'a [KnnRow],
    core: &'a [f64],
    core2: &'a [f32],
    rel: f64,
    keep: usize,
}

impl<K: NearestKernels + ?Sized> Round<'_, K> {
    /// Every component's lightest outgoing edge (indexed by the component label of `comp`,
    /// the union-find roots).
    ///
    /// Late rounds hold one giant component (most rows of the batch) among a few small ones.
    /// Its lightest edge is expensive to find from inside: an interior row must prove that no
    /// foreign row lies within the component's best edge, and at that (noise-level) radius it
    /// has its own component's rows all around, which no leaf bound sets aside. From outside
    /// it is cheap: every other row looks for its nearest row *of the giant* (a 2-component
    /// search: giant against the rest), which is close by. The giant's rows then do not
    /// search at all, and what the outside rows found also bounds their own components' edges.
    fn lightest_edges(mut self, comp: &[u32]) -> Result<Vec<Cand>> {
        let n = comp.len();
        let mut size = vec![0usize; n];
        comp.iter().for_each(|&c| size[c as usize] += 1);
        let (giant, giant_rows) = size
            .iter()
            .enumerate()
            .max_by_key(|&(c, &s)| (s, std::cmp::Reverse(c)))
            .map_or((0, 0), |(c, &s)| (c, s));
        let mut best = vec![NONE; n];
        let mut skip_giant = false;
        if giant_rows as f64 > GIANT_SHARE * n as f64 && giant_rows < n {
            let side: Vec<u32> = comp
                .iter()
                .map(|&c| u32::from(c as usize != giant))
                .collect();
            let outside: Vec<usize> = (0..n).filter(|&p| side[p] == 1).collect();
            // The giant's rows' lists give a first cutoff.
            let seed = (0..n)
                .into_par_iter()
                .filter(|&p| side[p] == 0)
                .map(|p| list_edge(self.knn, self.core, &side, p).0)
                .reduce(
                    || NONE,
                    |mut a, b| {
                        a.keep_least(b);
                        a
                    },
                );
            let mut two = [seed; 2];
            let found = self.search(&side, &outside, &mut two, "the giant's edge")?;
            best[giant] = two[0];
            best[giant].keep_least(two[1]);
            // An edge from p to the giant leaves p's component too.
            for (&p, c) in outside.iter().zip(found) {
                best[comp[p] as usize].keep_least(c);
            }
            skip_giant = true;
        }
        let queries: Vec<usize> = (0..n)
            .filter(|&p| !(skip_giant && comp[p] as usize == giant))
            .collect();
        tracing::debug!(
            "Boruvka round: {} components (largest {giant_rows} rows{}), {} rows may search",
            size.iter().filter(|&&s| s > 0).count(),
            if skip_giant {
                ", searched from outside"
            } else {
                ""
            },
            queries.len()
        );
        self.search(comp, &queries, &mut best, "components' edges")?;
        Ok(best)
    }

    /// For each row of `rows`, its lightest edge to a row of another label: from its kNN list
    /// where that proves it, else by the leaf kernel, brute force for what that leaves open,
    /// and the host for the rest; a row stops once its lower bound reaches its label's best
    /// edge so far. Updates `best` (per label; its entries also serve as starting cutoffs) and
    /// returns the lightest edge found for each row (`NONE` where it found none below the
    /// cutoff).
    fn search(
        &mut self,
        label: &[u32],
        rows: &[usize],
        best: &mut [Cand],
        what: &str,
    ) -> Result<Vec<Cand>> {
        let (x, core, rel) = (self.x, self.core, self.rel);
        // From the kNN lists: an edge, whether it is proven p's lightest, and a lower bound.
        let local: Vec<(Cand, bool, f64)> = rows
            .par_iter()
            .map(|&p| list_edge(self.knn, core, label, p))
            .collect();
        let mut mine: Vec<Cand> = local.iter().map(|l| l.0).collect();
        for (&p, (c, _, _)) in rows.iter().zip(&local) {
            best[label[p] as usize].keep_least(*c);
        }
        let could_improve = |best: &[Cand], p: usize, lb: f64| {
            let b = &best[label[p] as usize];
            b.is_none() || lb < b.w
        };
        // Queries as indices into `rows`.
        let mut queries: Vec<usize> = (0..rows.len())
            .filter(|&i| !local[i].1 && could_improve(best, rows[i], local[i].2))
            .collect();
        tracing::debug!(
            "GPU MST, {what}: {} rows, {} proven by their lists, {} queries",
            rows.len(),
            local.iter().filter(|l| l.1).count(),
            queries.len()
        );
        if queries.is_empty() {
            return Ok(mine);
        }
        let n = label.len();
        let label_i: Vec<i32> = label.iter().map(|&c| c as i32).collect();
        let comp_cut2: Vec<f32> = best
            .iter()
            .map(|b| cutoff_above(b.w.powi(2), rel))
            .collect();
        let tables = self.tables.components(label_i, self.core2.to_vec());
        self.dev.set_components(&tables, &comp_cut2)?;
        drop(tables);
        let mut cutoff2 = vec![0f32; n];
        for &i in &queries {
            let p = rows[i];
            cutoff2[p] = comp_cut2[label[p] as usize];
        }
        // Leaf search, then brute force for what it left open.
        for brute in [false, true] {
            if queries.is_empty() {
                break;
            }
            let positions: Vec<usize> = queries.iter().map(|&i| rows[i]).collect();
            let found = if brute {
                brute_search(&mut *self.dev, n, &positions, true, self.keep)?
            } else {
                let ask = Ask {
                    boruvka: true,
                    walk: usize::MAX,
                    need: 1,
                    keep: self.keep,
                };
                leaf_search(&mut *self.dev, self.leaf_of, &positions, &cutoff2, ask)?
            };
            // The exact weights of the candidates (f64 distances: most of the host's work in
            // a round) on all cores; the least of a set is the same in any order (`Cand` is
            // totally ordered), so merging them in query order keeps the answer fixed.
            let (found_best, lbs): (Vec<Cand>, Vec<f64>) = queries
                .par_iter()
                .zip(&found)
                .map(|(&i, f)| {
                    let p = rows[i];
                    let mut least = NONE;
                    for &(q, _) in &f.list {
                        let w = core[p].max(core[q]).max(dist2(x.row(p), x.row(q)).sqrt());
                        least.keep_least(Cand::new(w, p, q));
                    }
                    (least, core[p].max(f.unseen2(rel).sqrt()))
                })
                .unzip();
            for (&i, c) in queries.iter().zip(found_best) {
                mine[i].keep_least(c);
                best[label[rows[i]] as usize].keep_least(c);
            }
            let open: Vec<usize> = queries
                .iter()
                .zip(&lbs)
                .filter(|&(&i, &lb)| could_improve(best, rows[i], lb))
                .map(|(&i, _)| i)
                .collect();
            tracing::debug!(
                "GPU MST round: {} queries, {} left open by the {}",
                queries.len(),
                open.len(),
                if brute { "brute force" } else { "leaf search" }
            );
            queries = open;
        }
        if !queries.is_empty() {
            tracing::debug!(
                "GPU MST: {} points computed exactly on the host",
                queries.len()
            );
            let found: Vec<Cand> = queries
                .par_iter()
                .map(|&i| exact_min_edge(x, core, label, rows[i]))
                .collect();
            for (&i, c) in queries.iter().zip(found) {
                mine[i].keep_least(c);
                best[label[rows[i]] as usize].keep_least(c);
            }
        }
        Ok(mine)
    }
}

/// The exact MST of the mutual-reachability graph (`min_samples` counts the point itself),
/// with the candidate kernels of `dev`. Edges are in the caller's row numbers.
pub fn mst_with<K: NearestKernels + ?Sized>(
    dev: &mut K,
    x: &Matrix,
    min_samples: usize,
    params: &GpuMstParams,
) -> Result<Vec<MstEdge>> {
    let (n, d) = (x.rows(), x.cols());
    if n < 2 {
        return Ok(Vec::new());
    }
    if min_samples == 0 || min_samples + KNN_EXTRA > MAX_KEEP {
        bail!(
            "min_samples {min_samples} is outside what the GPU kernels support (1..={})",
            MAX_KEEP - KNN_EXTRA
        );
    }
    if !(1..=MAX_KEEP).contains(&params.boruvka_keep) {
        bail!("boruvka_keep must be within 1..={MAX_KEEP}");
    }
    check_finite(x)?;
    to_i32(n)?;
    // As on the CPU (scikit-learn): more samples than rows means all of them.
    let min_samples = min_samples.min(n);
    let started = std::time::Instant::now();
    let mut timed = Timed {
        dev,
        spent: std::time::Duration::ZERO,
    };
    let dev = &mut timed;
    let tables = LeafTables::build(x, &params.leaves)?;
    tracing::debug!(
        leaves = tables.leaves(),
        seconds = started.elapsed().as_secs_f64(),
        "GPU MST: leaf tables built on the host"
    );
    let leaf_of = tables.leaf_of_positions();
    let mut rows = vec![0.0f32; n * d];
    rows.par_chunks_mut(d.max(1))
        .zip(&tables.perm)
        .for_each(|(to, &r)| to.copy_from_slice(x.row(r as usize)));
    // From here on everything is by position; `tables.perm` maps back at the end.
    let x = Matrix::new(n, d, rows)?;
    dev.load(x.as_slice(), d, &tables)?;
    let rel = rel_err(d);
    let k = (min_samples.max(16) + KNN_EXTRA).min(MAX_KEEP).min(n);

    // 1. k nearest neighbours and core distances: the leaf search, then brute force for what
    //    it could not prove, then the host for what neither could.
    //    The walk settles all k keys: the longer lists it proves let most Boruvka rounds run
    //    from the lists alone (settling only the core's key measured more pairs in total).
    let open = vec![f32::INFINITY; n];
    let all: Vec<usize> = (0..n).collect();
    let ask = Ask {
        boruvka: false,
        walk: usize::MAX,
        need: k,
        keep: k,
    };
    let found = leaf_search(dev, &leaf_of, &all, &open, ask)?;
    let mut knn: Vec<Option<KnnRow>> = found
        .par_iter()
        .enumerate()
        .map(|(p, f)| prove_knn(&x, p, f, min_samples, rel))
        .collect();
    let unproven: Vec<usize> = (0..n).filter(|&p| knn[p].is_none()).collect();
    tracing::debug!(
        "GPU kNN: {} of {n} rows proven by the leaf search",
        n - unproven.len()
    );
    if !unproven.is_empty() {
        let found = brute_search(dev, n, &unproven, false, k)?;
        let rows: Vec<KnnRow> = unproven
            .par_iter()
            .zip(&found)
            .map(|(&p, f)| {
                prove_knn(&x, p, f, min_samples, rel).unwrap_or_else(|| {
                    // Ties at the boundary: exact core, and the list proves nothing.
                    let core = exact_kth2(&x, p, min_samples).sqrt();
                    (Vec::new(), core, 0.0)
                })
            })
            .collect();
        for (&p, r) in unproven.iter().zip(rows) {
            knn[p] = Some(r);
        }
    }
    let knn: Vec<KnnRow> = knn.into_iter().map(|r| r.unwrap_or_default()).collect();
    let core: Vec<f64> = knn.iter().map(|t| t.1).collect();
    let core2: Vec<f32> = core.iter().map(|&c| (c * c) as f32).collect();

    tracing::debug!(
        seconds = started.elapsed().as_secs_f64(),
        device_seconds = dev.spent.as_secs_f64(),
        "GPU MST: core distances done"
    );

    // 2. Boruvka rounds.
    let mut uf = UnionFind::new(n);
    let mut edges: Vec<MstEdge> = Vec::with_capacity(n - 1);
    let mut comp = vec![0u32; n];
    while edges.len() < n - 1 {
        for (p, c) in comp.iter_mut().enumerate() {
            *c = uf.find(p) as u32;
        }
        let round_started = (std::time::Instant::now(), dev.spent);
        let round = Round {
            dev: &mut *dev,
            tables: &tables,
            leaf_of: &leaf_of,
            x: &x,
            knn: &knn,
            core: &core,
            core2: &core2,
            rel,
            keep: params.boruvka_keep,
        };
        let best = round.lightest_edges(&comp)?;
        let before = edges.len();
        for c in best.iter().filter(|c| !c.is_none()) {
            if uf.union(c.lo as usize, c.hi as usize) {
                let (a, b) = (tables.perm[c.lo as usize], tables.perm[c.hi as usize]);
                edges.push(MstEdge {
                    a: a.min(b),
                    b: a.max(b),
                    weight: c.w,
                });
            }
        }
        let device = dev.spent - round_started.1;
        tracing::debug!(
            edges = edges.len() - before,
            seconds = round_started.0.elapsed().as_secs_f64(),
            device_seconds = device.as_secs_f64(),
            "GPU MST: Boruvka round done"
        );
        if edges.len() == before {
            bail!(
                "Boruvka made no progress with {} of {} edges (internal error)",
                edges.len(),
                n - 1
            );
        }
    }
    let (all, device) = (started.elapsed(), timed.spent);
    tracing::debug!(
        seconds = all.as_secs_f64(),
        device_seconds = device.as_secs_f64(),
        host_seconds = all.saturating_sub(device).as_secs_f64(),
        "GPU MST: spanning tree done (device: kernel calls with their transfers; host: the rest)"
    );
    Ok(edges)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn f32_keys_respect_the_error_bound() {
        // The bound the proofs rely on: an f32 squared distance (summed in order, like the
        // kernel) never exceeds the exact one by more than `rel_err`.
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let d = 100;
        for _ in 0..2000 {
            let a: Vec<f32> = (0..d).map(|_| rng.random_range(-1.0f32..1.0)).collect();
            let b: Vec<f32> = a
                .iter()
                .map(|&v| v + rng.random_range(-1e-3f32..1e-3))
                .collect();
            let key = a
                .iter()
                .zip(&b)
                .fold(0.0f32, |s, (&x, &y)| (x - y).mul_add(x - y, s));
            let exact = dist2(&a, &b);
            assert!(lower(key, rel_err(d)) <= exact, "{key} vs {exact}");
        }
    }

    #[test]
    fn exact_min_edge_skips_own_component() {
        let x = Matrix::new(4, 1, vec![0.0, 1.0, 3.0, 10.0]).unwrap();
        let core = vec![1.0, 1.0, 2.0, 7.0];
        let comp = vec![0, 0, 2, 3];
        let e = exact_min_edge(&x, &core, &comp, 1);
        assert_eq!((e.lo, e.hi, e.w), (1, 2, 2.0));
    }
}
