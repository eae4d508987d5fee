//! `NearestKernels` on CUDA: the rows and leaf tables live on the device for the batch, and
//! each call uploads only its small per-call arrays (queries, cutoffs, components).

use super::leaves::{Components, LeafTables, MAX_LEAF};
use super::mst::{BLOCK, LeafFound, NearestKernels};
use super::{Inner, Screen};
use anyhow::{Result, anyhow};
use cudarc::driver::{CudaSlice, DeviceRepr, LaunchConfig, PushKernelArg, ValidAsZeroBits};

/// The batch's device buffers.
struct Loaded {
    x: CudaSlice<f32>,
    n: i32,
    d: i32,
    leaf_start: CudaSlice<i32>,
    cand: CudaSlice<i32>,
    cand_lb2: CudaSlice<f32>,
    rest_lb2: CudaSlice<f32>,
    m: i32,
    centres: CudaSlice<f32>,
    radius: CudaSlice<f32>,
    tc_lo: CudaSlice<f32>,
    tc_hi: CudaSlice<f32>,
    slack: f32,
    norm2: CudaSlice<f32>,
    screen_err: f32,
    screen_err_tf32: f32,
}

/// One Boruvka round's state (`Components` on the device).
struct Round {
    comp: CudaSlice<i32>,
    core2: CudaSlice<f32>,
    leaf_comp: CudaSlice<i32>,
    leaf_core2_lo: CudaSlice<f32>,
    tile_one_comp: CudaSlice<i32>,
    tile_core2_lo: CudaSlice<f32>,
    /// Squared cutoffs per component as f32 bits, lowered by the kernel (atomicMin).
    comp_best2: CudaSlice<i32>,
}

pub(crate) struct CudaKernels<'a> {
    g: &'a Inner,
    loaded: Option<Loaded>,
    comps: Option<Round>,
}

impl<'a> CudaKernels<'a> {
    pub(crate) fn new(g: &'a Inner) -> Self {
        Self {
            g,
            loaded: None,
            comps: None,
        }
    }
}

fn upload<T: DeviceRepr>(g: &Inner, v: &[T], what: &str) -> Result<CudaSlice<T>> {
    g.stream
        .clone_htod(v)
        .map_err(|e| anyhow!("uploading {what} ({} values): {e:?}", v.len()))
}

fn zeros<T: DeviceRepr + ValidAsZeroBits>(
    g: &Inner,
    len: usize,
    what: &str,
) -> Result<CudaSlice<T>> {
    g.stream
        .alloc_zeros::<T>(len)
        .map_err(|e| anyhow!("allocating {what} ({len} values): {e:?}"))
}

fn download<T: DeviceRepr + Default + Clone>(
    g: &Inner,
    v: &CudaSlice<T>,
    what: &str,
) -> Result<Vec<T>> {
    g.stream
        .clone_dtoh(v)
        .map_err(|e| anyhow!("a kernel failed, or downloading {what} failed: {e:?}"))
}

fn i32_of(v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| anyhow!("size {v} exceeds the kernels' 32-bit indices"))
}

fn missing(what: &str) -> anyhow::Error {
    anyhow!("no {what} on the GPU (internal error)")
}

impl NearestKernels for CudaKernels<'_> {
    fn load(&mut self, rows: &[f32], d: usize, t: &LeafTables) -> Result<()> {
        let g = self.g;
        let n = rows.len().checked_div(d).unwrap_or(0);
        // Per position besides the row: its norm and two distances to the centre, and a
        // round's component, core, cutoff and two tile entries (4 bytes each).
        let bytes = (rows.len() + t.cand.len() + t.cand_lb2.len() + t.centres.len()) * 4 + n * 32;
        g.ensure_free(bytes, &format!("the MST of {n} x {d}"))?;
        self.loaded = None;
        self.loaded = Some(Loaded {
            x: upload(g, rows, "the rows")?,
            n: i32_of(n)?,
            d: i32_of(d)?,
            leaf_start: upload(g, &t.start, "the leaf starts")?,
            cand: upload(g, &t.cand, "the candidate leaves")?,
            cand_lb2: upload(g, &t.cand_lb2, "the leaf bounds")?,
            rest_lb2: upload(g, &t.rest_lb2, "the leaf bounds")?,
            m: i32_of(t.m)?,
            centres: upload(g, &t.centres, "the leaf centres")?,
            radius: upload(g, &t.radius, "the leaf radii")?,
            tc_lo: upload(g, &t.tc_lo, "the distances to the centres")?,
            tc_hi: upload(g, &t.tc_hi, "the distances to the centres")?,
            slack: t.slack,
            norm2: upload(g, &t.norm2, "the row norms")?,
            screen_err: t.screen_err,
            screen_err_tf32: t.screen_err_tf32,
        });
        Ok(())
    }

    fn set_components(&mut self, c: &Components, comp_cut2: &[f32]) -> Result<()> {
        let g = self.g;
        // Non-negative floats order like their bits read as i32 (the kernel's atomicMin).
        let bits: Vec<i32> = comp_cut2.iter().map(|&c| c.to_bits() as i32).collect();
        self.comps = None;
        self.comps = Some(Round {
            comp: upload(g, &c.comp, "the components")?,
            core2: upload(g, &c.core2, "the core distances")?,
            leaf_comp: upload(g, &c.leaf_comp, "the leaf components")?,
            leaf_core2_lo: upload(g, &c.leaf_core2_lo, "the leaf core bounds")?,
            tile_one_comp: upload(g, &c.tile_one_comp, "the tile components")?,
            tile_core2_lo: upload(g, &c.tile_core2_lo, "the tile core bounds")?,
            comp_best2: upload(g, &bits, "the component cutoffs")?,
        });
        Ok(())
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
        let g = self.g;
        let l = self.loaded.as_ref().ok_or_else(|| missing("rows loaded"))?;
        let blocks = qleaves.len();
        if qpos.len() != blocks * MAX_LEAF {
            return Err(anyhow!(
                "{} query positions for {blocks} leaves",
                qpos.len()
            ));
        }
        let q_dev = upload(g, qleaves, "the query leaves")?;
        let pos_dev = upload(g, qpos, "the query positions")?;
        let cut_dev = upload(g, cutoff2, "the cutoffs")?;
        let mut out_key = zeros::<f32>(g, blocks * MAX_LEAF * keep, "candidate keys")?;
        let mut out_idx = zeros::<i32>(g, blocks * MAX_LEAF * keep, "candidate indices")?;
        let mut out_unseen = zeros::<f32>(g, blocks * MAX_LEAF, "candidate bounds")?;
        let mut out_rows = zeros::<i32>(g, blocks, "row counts")?;
        let (walk_i, need_i) = (i32_of(walk.min(i32::MAX as usize))?, i32_of(need)?);
        let keep_i = i32_of(keep)?;
        let null: u64 = 0;
        let cfg = LaunchConfig {
            grid_dim: (u32::try_from(blocks)?, 1, 1),
            block_dim: (MAX_LEAF as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let (kernel, screen_err) = match g.screen {
            Screen::F32 => (&g.leaf, &l.screen_err),
            Screen::Tf32 => (&g.leaf_tf32, &l.screen_err_tf32),
        };
        let mut b = g.stream.launch_builder(kernel);
        b.arg(&l.x)
            .arg(&l.d)
            .arg(&l.leaf_start)
            .arg(&q_dev)
            .arg(&pos_dev);
        b.arg(&l.cand).arg(&l.cand_lb2).arg(&l.rest_lb2).arg(&l.m);
        b.arg(&cut_dev);
        if boruvka {
            // The component cutoffs are written by the kernel: a mutable borrow.
            let c = self.comps.as_mut().ok_or_else(|| missing("components"))?;
            b.arg(&c.comp)
                .arg(&c.core2)
                .arg(&c.leaf_comp)
                .arg(&c.leaf_core2_lo);
            b.arg(&c.tile_one_comp).arg(&c.tile_core2_lo);
            b.arg(&mut c.comp_best2);
        } else {
            b.arg(&null).arg(&null).arg(&null).arg(&null);
            b.arg(&null).arg(&null).arg(&null);
        }
        b.arg(&l.centres).arg(&l.radius).arg(&l.tc_lo).arg(&l.tc_hi);
        b.arg(&l.slack).arg(&l.norm2).arg(screen_err);
        b.arg(&walk_i).arg(&need_i).arg(&keep_i);
        b.arg(&mut out_key).arg(&mut out_idx).arg(&mut out_unseen);
        b.arg(&mut out_rows);
        // SAFETY: the arguments follow the signature of leaf_candidates (and of
        // leaf_candidates_tf32, the same) in order (device slices for pointers, a null u64 for
        // absent ones, i32 and f32 for scalars), and every buffer has the length the kernel
        // indexes: outputs blocks x MAX_LEAF (x keep), tables as loaded, components and
        // cutoffs n each.
        unsafe { b.launch(cfg) }
            .map_err(|e| anyhow!("launching leaf_candidates ({blocks} leaves): {e:?}"))?;
        Ok(LeafFound {
            keys: download(g, &out_key, "candidate keys")?,
            idx: download(g, &out_idx, "candidate indices")?,
            unseen2: download(g, &out_unseen, "candidate bounds")?,
            rows: download(g, &out_rows, "row counts")?,
        })
    }

    fn nearest_candidates(
        &mut self,
        queries: &[i32],
        boruvka: bool,
        keep: usize,
    ) -> Result<(Vec<f32>, Vec<i32>)> {
        let g = self.g;
        let l = self.loaded.as_ref().ok_or_else(|| missing("rows loaded"))?;
        let nq = queries.len();
        let q_dev = upload(g, queries, "the queries")?;
        let mut out_key = zeros::<f32>(g, nq * keep, "candidate keys")?;
        let mut out_idx = zeros::<i32>(g, nq * keep, "candidate indices")?;
        let (nq_i, keep_i) = (i32_of(nq)?, i32_of(keep)?);
        let null: u64 = 0;
        let cfg = LaunchConfig {
            grid_dim: (u32::try_from(nq.div_ceil(BLOCK as usize))?, 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = g.stream.launch_builder(&g.nearest);
        b.arg(&l.x).arg(&l.n).arg(&l.d).arg(&q_dev).arg(&nq_i);
        if boruvka {
            let c = self.comps.as_ref().ok_or_else(|| missing("components"))?;
            b.arg(&c.comp).arg(&c.core2);
        } else {
            b.arg(&null).arg(&null);
        }
        b.arg(&keep_i).arg(&mut out_key).arg(&mut out_idx);
        // SAFETY: the arguments follow nearest_candidates' signature in order, and every
        // buffer has the length the kernel indexes (outputs nq x keep, rows n x d).
        unsafe { b.launch(cfg) }
            .map_err(|e| anyhow!("launching nearest_candidates ({nq} queries): {e:?}"))?;
        Ok((
            download(g, &out_key, "candidate keys")?,
            download(g, &out_idx, "candidate indices")?,
        ))
    }
}
