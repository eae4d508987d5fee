//! `pca::Linalg` on cuBLAS, with uploads through pinned host memory.
//!
//! A pageable copy makes the driver stage the data through its own small pinned buffer, one
//! piece at a time, with the CPU waiting. Here large uploads go through two pinned buffers of
//! `STAGE_FLOATS`: the CPU fills one (all cores) while the DMA engine reads the other, so the
//! copy runs at the link's speed. That matters for X (12 GB at 1M x 3072), uploaded once, or
//! once per pass when it is streamed.

use super::Inner;
use super::pca::{Gemm, Linalg, Operand};
use anyhow::{Result, anyhow};
use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
use cudarc::cublas::{CudaBlas, Gemm as _, GemmConfig};
use cudarc::driver::{CudaSlice, PinnedHostSlice};
use rayon::prelude::*;
use std::cell::RefCell;

/// Floats per pinned staging buffer (64 MiB): large enough that each copy runs at full speed,
/// small enough that two cost little to pin.
const STAGE_FLOATS: usize = 16 << 20;

pub(super) struct CudaLinalg<'a> {
    g: &'a Inner,
    blas: &'a CudaBlas,
    /// Two pinned buffers, allocated on the first large upload; empty if pinning failed.
    staging: RefCell<Staging>,
}

#[derive(Default)]
struct Staging {
    bufs: Vec<PinnedHostSlice<f32>>,
    next: usize,
    tried: bool,
}

impl<'a> CudaLinalg<'a> {
    pub(super) fn new(g: &'a Inner, blas: &'a CudaBlas) -> Self {
        Self {
            g,
            blas,
            staging: RefCell::default(),
        }
    }

    /// Pins the two staging buffers once; a failure only means pageable copies.
    fn ensure_staging(&self, st: &mut Staging) {
        if st.tried {
            return;
        }
        st.tried = true;
        for _ in 0..2 {
            // SAFETY: the buffer's contents are uninitialized; every element of a buffer is
            // written (`fill_from`) before a copy reads it.
            match unsafe { self.g.ctx.alloc_pinned::<f32>(STAGE_FLOATS) } {
                Ok(b) => st.bufs.push(b),
                Err(e) => {
                    tracing::debug!("pinning staging buffers failed ({e:?}); pageable uploads");
                    st.bufs.clear();
                    return;
                }
            }
        }
    }
}

fn size(v: usize, what: &str) -> Result<i32> {
    i32::try_from(v).map_err(|_| anyhow!("{what}: dimension {v} exceeds cuBLAS' 32-bit sizes"))
}

fn fill_from(dst: &mut [f32], src: &[f32]) {
    dst.par_chunks_mut(1 << 16)
        .zip(src.par_chunks(1 << 16))
        .for_each(|(d, s)| d.copy_from_slice(s));
}

impl Linalg for CudaLinalg<'_> {
    type Buf = CudaSlice<f32>;

    fn alloc(&self, len: usize) -> Result<Self::Buf> {
        self.g
            .stream
            .alloc_zeros::<f32>(len)
            .map_err(|e| anyhow!("allocating {len} floats on the GPU: {e:?}"))
    }

    fn upload(&self, host: &[f32]) -> Result<Self::Buf> {
        let mut buf = self.alloc(host.len())?;
        self.upload_into(host, &mut buf, 0)?;
        Ok(buf)
    }

    fn upload_into(&self, host: &[f32], dst: &mut Self::Buf, off: usize) -> Result<()> {
        let stream = &self.g.stream;
        let err = |e| anyhow!("uploading {} floats to the GPU: {e:?}", host.len());
        let mut st = self.staging.borrow_mut();
        if host.len() >= STAGE_FLOATS {
            self.ensure_staging(&mut st);
        }
        for (i, piece) in host.chunks(STAGE_FLOATS).enumerate() {
            let at = off + i * STAGE_FLOATS;
            let mut view = dst.slice_mut(at..at + piece.len());
            if piece.len() < STAGE_FLOATS || st.bufs.is_empty() {
                stream.memcpy_htod(piece, &mut view).map_err(err)?;
                continue;
            }
            let which = st.next;
            st.next = (st.next + 1) % st.bufs.len();
            let pinned = &mut st.bufs[which];
            // Waits for this buffer's previous copy; the other buffer's may still be running.
            fill_from(pinned.as_mut_slice().map_err(err)?, piece);
            stream.memcpy_htod(pinned, &mut view).map_err(err)?;
        }
        Ok(())
    }

    fn download(&self, buf: &Self::Buf) -> Result<Vec<f32>> {
        self.g
            .stream
            .clone_dtoh(buf)
            .map_err(|e| anyhow!("downloading {} floats from the GPU: {e:?}", buf.len()))
    }

    fn gemm(
        &self,
        g: Gemm,
        (a, a_off, lda): Operand<'_, Self::Buf>,
        (b, b_off, ldb): Operand<'_, Self::Buf>,
        (c, c_off, ldc): (&mut Self::Buf, usize, usize),
    ) -> Result<()> {
        let op = |t: bool| if t { CUBLAS_OP_T } else { CUBLAS_OP_N };
        let cfg = GemmConfig {
            transa: op(g.trans_a),
            transb: op(g.trans_b),
            m: size(g.m, g.what)?,
            n: size(g.n, g.what)?,
            k: size(g.k, g.what)?,
            alpha: g.alpha,
            lda: size(lda, g.what)?,
            ldb: size(ldb, g.what)?,
            beta: g.beta,
            ldc: size(ldc, g.what)?,
        };
        let (a, b) = (a.slice(a_off..), b.slice(b_off..));
        let mut c = c.slice_mut(c_off..);
        // SAFETY: the algorithm in pca.rs passes offsets and leading dimensions that keep
        // every operand inside its buffer (the host implementation in its tests checks the
        // same calls against slice bounds).
        unsafe { self.blas.gemm(cfg, &a, &b, &mut c) }
            .map_err(|e| anyhow!("cuBLAS SGEMM ({}): {e:?}", g.what))
    }

    fn free_bytes(&self) -> Result<usize> {
        Ok(self.g.planning_memory()?.0)
    }
}
