//! Exact mutual-reachability MST: GPU candidates, f64 proofs on the host, Boruvka rounds.
//!
//! Every f32 key from the kernel has a relative error below `REL_ERR` (see `rel_err`), so a
//! query's last kept key bounds, from below, the exact key of every candidate it did not keep.
//! That bound, not the f32 answer, is what decides whether a result is proven; unproven
//! points are computed exactly on the host. Ties: any minimum-weight edge is accepted; the
//! union-find skips an edge that would close a cycle (only possible among equal weights).

use super::{BLOCK, Inner, MAX_KEEP, check_finite};
use crate::cluster::MstEdge;
use crate::cluster::boruvka::{Cand, NONE, UnionFind};
use crate::matrix::Matrix;
use anyhow::{Result, anyhow, bail};
use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};
use rayon::prelude::*;

/// Queries per launch: bounds one launch's run time and its output buffers.
const QUERY_CHUNK: usize = 1 << 16;
/// Candidates kept per query in Boruvka rounds.
const BORUVKA_KEEP: usize = 8;
/// Extra neighbours fetched beyond what the core distance needs: they let more points prove
/// their Boruvka edge from the kNN list alone.
const KNN_EXTRA: usize = 8;

/// Relative error bound of an f32 squared distance over `d` dimensions (each difference and
/// square rounds, then `d` additions), doubled for safety.
fn rel_err(d: usize) -> f64 {
    2.0 * (d as f64 + 8.0) * f64::from(f32::EPSILON)
}

/// A lower bound on the exact value of an f32 squared key (`inf` stays `inf`).
fn lower(key: f32, rel: f64) -> f64 {
    (f64::from(key) * (1.0 - rel)).max(0.0)
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

/// One point's kNN result: neighbours (index, exact distance) ascending, its exact core
/// distance, and a lower bound on the distance of every point not in the list.
type KnnRow = (Vec<(u32, f64)>, f64, f64);

/// Runs the candidate kernel for `queries`, `keep` candidates each; returns (keys, indices),
/// `queries.len() * keep` each, ascending per query.
fn candidates(
    g: &Inner,
    x_dev: &CudaSlice<f32>,
    n: usize,
    d: usize,
    queries: &[i32],
    comp_core: Option<(&CudaSlice<i32>, &CudaSlice<f32>)>,
    keep: usize,
) -> Result<(Vec<f32>, Vec<i32>)> {
    let mut keys = Vec::with_capacity(queries.len() * keep);
    let mut idx = Vec::with_capacity(queries.len() * keep);
    let (n_i, d_i, keep_i) = (to_i32(n)?, to_i32(d)?, to_i32(keep)?);
    let null: u64 = 0;
    for chunk in queries.chunks(QUERY_CHUNK) {
        let nq = chunk.len();
        let nq_i = to_i32(nq)?;
        let q_dev = g
            .stream
            .clone_htod(chunk)
            .map_err(|e| anyhow!("uploading {nq} query indices: {e:?}"))?;
        let mut out_key = g
            .stream
            .alloc_zeros::<f32>(nq * keep)
            .map_err(|e| anyhow!("allocating candidate keys: {e:?}"))?;
        let mut out_idx = g
            .stream
            .alloc_zeros::<i32>(nq * keep)
            .map_err(|e| anyhow!("allocating candidate indices: {e:?}"))?;
        let cfg = LaunchConfig {
            grid_dim: (nq.div_ceil(BLOCK as usize) as u32, 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = g.stream.launch_builder(&g.nearest);
        b.arg(x_dev).arg(&n_i).arg(&d_i).arg(&q_dev).arg(&nq_i);
        match comp_core {
            Some((comp, core2)) => {
                b.arg(comp).arg(core2);
            }
            None => {
                b.arg(&null).arg(&null);
            }
        }
        b.arg(&keep_i).arg(&mut out_key).arg(&mut out_idx);
        // SAFETY: the argument list matches nearest_candidates' signature (pointers as device
        // slices or a null u64, ints as i32), and every buffer has the length the kernel indexes.
        unsafe { b.launch(cfg) }
            .map_err(|e| anyhow!("launching nearest_candidates ({nq} queries): {e:?}"))?;
        keys.extend(
            g.stream
                .clone_dtoh(&out_key)
                .map_err(|e| anyhow!("nearest_candidates failed or download failed: {e:?}"))?,
        );
        idx.extend(
            g.stream
                .clone_dtoh(&out_idx)
                .map_err(|e| anyhow!("downloading candidate indices: {e:?}"))?,
        );
    }
    Ok((keys, idx))
}

fn to_i32(v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| anyhow!("size {v} exceeds the kernels' 32-bit indices"))
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

/// The exact MST of the mutual-reachability graph (`min_samples` counts the point itself).
pub(super) fn mst(g: &Inner, x: &Matrix, min_samples: usize) -> Result<Vec<MstEdge>> {
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
    check_finite(x)?;
    let k = (min_samples.max(16) + KNN_EXTRA).min(MAX_KEEP).min(n);
    let mem = n * d * 4 + n * 8 + QUERY_CHUNK.min(n) * (MAX_KEEP * 8 + 4);
    g.ensure_free(mem, &format!("the MST of {n} x {d}"))?;
    let rel = rel_err(d);
    let x_dev = g
        .stream
        .clone_htod(x.as_slice())
        .map_err(|e| anyhow!("uploading {n} x {d} rows: {e:?}"))?;

    // 1. k nearest neighbours and core distances, proven or recomputed exactly.
    let all: Vec<i32> = (0..to_i32(n)?).collect();
    let (keys, idx) = candidates(g, &x_dev, n, d, &all, None, k)?;
    let knn: Vec<KnnRow> = (0..n)
        .into_par_iter()
        .map(|p| {
            let ks = &keys[p * k..(p + 1) * k];
            let is = &idx[p * k..(p + 1) * k];
            let mut list: Vec<(u32, f64)> = is
                .iter()
                .filter(|&&q| q >= 0)
                .map(|&q| (q as u32, dist2(x.row(p), x.row(q as usize))))
                .collect();
            list.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
            let unseen2 = if k == n {
                f64::INFINITY
            } else {
                lower(ks[k - 1], rel)
            };
            let (core2, unseen2) =
                if list.len() >= min_samples && list[min_samples - 1].1 <= unseen2 {
                    (list[min_samples - 1].1, unseen2)
                } else {
                    // Not proven (ties at the boundary): exact core, and the list proves nothing.
                    (exact_kth2(x, p, min_samples), 0.0)
                };
            for e in &mut list {
                e.1 = e.1.sqrt();
            }
            (list, core2.sqrt(), unseen2.sqrt())
        })
        .collect();
    let core: Vec<f64> = knn.iter().map(|t| t.1).collect();
    let core2_dev = {
        let c2: Vec<f32> = core.iter().map(|&c| (c * c) as f32).collect();
        g.stream
            .clone_htod(&c2)
            .map_err(|e| anyhow!("uploading core distances: {e:?}"))?
    };

    // 2. Boruvka rounds.
    let mut uf = UnionFind::new(n);
    let mut edges: Vec<MstEdge> = Vec::with_capacity(n - 1);
    let mut comp = vec![0u32; n];
    while edges.len() < n - 1 {
        for (p, c) in comp.iter_mut().enumerate() {
            *c = uf.find(p) as u32;
        }
        // From the kNN lists: an edge, whether it is proven p's lightest, and a lower bound.
        let local: Vec<(Cand, bool, f64)> = (0..n)
            .into_par_iter()
            .map(|p| {
                let (list, cp, unseen) = &knn[p];
                let mut best = NONE;
                for &(q, dq) in list {
                    let q = q as usize;
                    if comp[q] != comp[p] {
                        best.keep_least(Cand::new(cp.max(core[q]).max(dq), p, q));
                    }
                }
                let lb = cp.max(*unseen);
                let proven = !best.is_none() && best.w <= lb;
                (best, proven, lb)
            })
            .collect();
        let mut best = vec![NONE; n];
        for (p, (c, _, _)) in local.iter().enumerate() {
            best[comp[p] as usize].keep_least(*c);
        }
        let could_improve = |best: &[Cand], p: usize, lb: f64| {
            let b = &best[comp[p] as usize];
            b.is_none() || lb < b.w
        };
        let queries: Vec<i32> = (0..n)
            .filter(|&p| !local[p].1 && could_improve(&best, p, local[p].2))
            .map(|p| p as i32)
            .collect();
        let mut exact_needed: Vec<usize> = Vec::new();
        if !queries.is_empty() {
            let comp_i: Vec<i32> = comp.iter().map(|&c| c as i32).collect();
            let comp_dev = g
                .stream
                .clone_htod(&comp_i)
                .map_err(|e| anyhow!("uploading components: {e:?}"))?;
            let (keys, idx) = candidates(
                g,
                &x_dev,
                n,
                d,
                &queries,
                Some((&comp_dev, &core2_dev)),
                BORUVKA_KEEP,
            )?;
            let mut lbs = Vec::with_capacity(queries.len());
            for (t, &p) in queries.iter().enumerate() {
                let p = p as usize;
                let ks = &keys[t * BORUVKA_KEEP..(t + 1) * BORUVKA_KEEP];
                let is = &idx[t * BORUVKA_KEEP..(t + 1) * BORUVKA_KEEP];
                for &q in is.iter().filter(|&&q| q >= 0) {
                    let q = q as usize;
                    let w = core[p].max(core[q]).max(dist2(x.row(p), x.row(q)).sqrt());
                    best[comp[p] as usize].keep_least(Cand::new(w, p, q));
                }
                let full = is[BORUVKA_KEEP - 1] >= 0;
                let lb = if full {
                    core[p].max(lower(ks[BORUVKA_KEEP - 1], rel).sqrt())
                } else {
                    f64::INFINITY
                };
                lbs.push(lb);
            }
            for (t, &p) in queries.iter().enumerate() {
                if could_improve(&best, p as usize, lbs[t]) {
                    exact_needed.push(p as usize);
                }
            }
        }
        if !exact_needed.is_empty() {
            tracing::debug!(
                "GPU MST: {} points computed exactly on the host",
                exact_needed.len()
            );
            let found: Vec<Cand> = exact_needed
                .par_iter()
                .map(|&p| exact_min_edge(x, &core, &comp, p))
                .collect();
            for (&p, c) in exact_needed.iter().zip(found) {
                best[comp[p] as usize].keep_least(c);
            }
        }
        let before = edges.len();
        for c in best.iter().filter(|c| !c.is_none()) {
            if uf.union(c.lo as usize, c.hi as usize) {
                edges.push(MstEdge {
                    a: c.lo,
                    b: c.hi,
                    weight: c.w,
                });
            }
        }
        if edges.len() == before {
            bail!(
                "Boruvka made no progress with {} of {} edges (internal error)",
                edges.len(),
                n - 1
            );
        }
    }
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
