//! `NearestKernels` on CUDA: the rows and leaf tables live on the device for the batch, and
//! each call uploads only its small per-call arrays (queries, cutoffs, components).

use super::Inner;
use super::leaves::{LeafTables, MAX_LEAF};
use super::mst::{BLOCK, LeafFound, NearestKernels};
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
}

struct Components {
    comp: CudaSlice<i32>,
    core2: CudaSlice<f32>,
    leaf_comp: CudaSlice<i32>,
}

pub(crate) struct CudaKernels<'a> {
    g: &'a Inner,
    loaded: Option<Loaded>,
    comps: Option<Components>,
}

impl<'a> CudaKernels<'a> {
    pub(crate) fn new(g: &'a Inner) -> Self {
        Self {
            g,
            loaded: None,
            comps: None,
        }
    }

    fn upload<T: DeviceRepr>(&self, v: &[T], what: &str) -> Result<CudaSlice<T>> {
        self.g
            .stream
            .clone_htod(v)
            .map_err(|e| anyhow!("uploading {what} ({} values): {e:?}", v.len()))
    }

    fn zeros<T: DeviceRepr + ValidAsZeroBits>(
        &self,
        len: usize,
        what: &str,
    ) -> Result<CudaSlice<T>> {
        self.g
            .stream
            .alloc_zeros::<T>(len)
            .map_err(|e| anyhow!("allocating {what} ({len} values): {e:?}"))
    }

    fn download<T: DeviceRepr + Default + Clone>(
        &self,
        v: &CudaSlice<T>,
        what: &str,
    ) -> Result<Vec<T>> {
        self.g
            .stream
            .clone_dtoh(v)
            .map_err(|e| anyhow!("a kernel failed, or downloading {what} failed: {e:?}"))
    }

    fn loaded(&self) -> Result<&Loaded> {
        self.loaded
            .as_ref()
            .ok_or_else(|| anyhow!("no rows loaded on the GPU (internal error)"))
    }

    fn comps(&self) -> Result<&Components> {
        self.comps
            .as_ref()
            .ok_or_else(|| anyhow!("no components set on the GPU (internal error)"))
    }
}

fn i32_of(v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| anyhow!("size {v} exceeds the kernels' 32-bit indices"))
}

impl NearestKernels for CudaKernels<'_> {
    fn load(&mut self, rows: &[f32], d: usize, t: &LeafTables) -> Result<()> {
        let n = rows.len().checked_div(d).unwrap_or(0);
        let bytes = rows.len() * 4 + (t.cand.len() + t.cand_lb2.len()) * 4 + n * 16;
        self.g
            .ensure_free(bytes, &format!("the MST of {n} x {d}"))?;
        self.loaded = None;
        self.loaded = Some(Loaded {
            x: self.upload(rows, "the rows")?,
            n: i32_of(n)?,
            d: i32_of(d)?,
            leaf_start: self.upload(&t.start, "the leaf starts")?,
            cand: self.upload(&t.cand, "the candidate leaves")?,
            cand_lb2: self.upload(&t.cand_lb2, "the leaf bounds")?,
            rest_lb2: self.upload(&t.rest_lb2, "the leaf bounds")?,
            m: i32_of(t.m)?,
        });
        Ok(())
    }

    fn set_components(&mut self, comp: &[i32], core2: &[f32], leaf_comp: &[i32]) -> Result<()> {
        self.comps = None;
        self.comps = Some(Components {
            comp: self.upload(comp, "the components")?,
            core2: self.upload(core2, "the core distances")?,
            leaf_comp: self.upload(leaf_comp, "the leaf components")?,
        });
        Ok(())
    }

    fn leaf_candidates(
        &mut self,
        qleaves: &[i32],
        cutoff2: &[f32],
        boruvka: bool,
        keep: usize,
    ) -> Result<LeafFound> {
        let l = self.loaded()?;
        let blocks = qleaves.len();
        let q_dev = self.upload(qleaves, "the query leaves")?;
        let cut_dev = self.upload(cutoff2, "the cutoffs")?;
        let mut out_key = self.zeros::<f32>(blocks * MAX_LEAF * keep, "candidate keys")?;
        let mut out_idx = self.zeros::<i32>(blocks * MAX_LEAF * keep, "candidate indices")?;
        let mut out_unseen = self.zeros::<f32>(blocks * MAX_LEAF, "candidate bounds")?;
        let keep_i = i32_of(keep)?;
        let null: u64 = 0;
        let cfg = LaunchConfig {
            grid_dim: (u32::try_from(blocks)?, 1, 1),
            block_dim: (MAX_LEAF as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.g.stream.launch_builder(&self.g.leaf);
        b.arg(&l.x).arg(&l.d).arg(&l.leaf_start).arg(&q_dev);
        b.arg(&l.cand).arg(&l.cand_lb2).arg(&l.rest_lb2).arg(&l.m);
        b.arg(&cut_dev);
        if boruvka {
            let c = self.comps()?;
            b.arg(&c.comp).arg(&c.core2).arg(&c.leaf_comp);
        } else {
            b.arg(&null).arg(&null).arg(&null);
        }
        b.arg(&keep_i)
            .arg(&mut out_key)
            .arg(&mut out_idx)
            .arg(&mut out_unseen);
        // SAFETY: the arguments follow leaf_candidates' signature in order (device slices for
        // pointers, a null u64 for absent ones, i32 for ints), and every buffer has the length
        // the kernel indexes: outputs blocks x MAX_LEAF (x keep), tables as loaded.
        unsafe { b.launch(cfg) }
            .map_err(|e| anyhow!("launching leaf_candidates ({blocks} leaves): {e:?}"))?;
        Ok(LeafFound {
            keys: self.download(&out_key, "candidate keys")?,
            idx: self.download(&out_idx, "candidate indices")?,
            unseen2: self.download(&out_unseen, "candidate bounds")?,
        })
    }

    fn nearest_candidates(
        &mut self,
        queries: &[i32],
        boruvka: bool,
        keep: usize,
    ) -> Result<(Vec<f32>, Vec<i32>)> {
        let l = self.loaded()?;
        let nq = queries.len();
        let q_dev = self.upload(queries, "the queries")?;
        let mut out_key = self.zeros::<f32>(nq * keep, "candidate keys")?;
        let mut out_idx = self.zeros::<i32>(nq * keep, "candidate indices")?;
        let (nq_i, keep_i) = (i32_of(nq)?, i32_of(keep)?);
        let null: u64 = 0;
        let cfg = LaunchConfig {
            grid_dim: (u32::try_from(nq.div_ceil(BLOCK as usize))?, 1, 1),
            block_dim: (BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let mut b = self.g.stream.launch_builder(&self.g.nearest);
        b.arg(&l.x).arg(&l.n).arg(&l.d).arg(&q_dev).arg(&nq_i);
        if boruvka {
            let c = self.comps()?;
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
            self.download(&out_key, "candidate keys")?,
            self.download(&out_idx, "candidate indices")?,
        ))
    }
}
