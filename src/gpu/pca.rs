//! Randomized PCA on cuBLAS, with only l x l and l x D work on the host.
//!
//! Layout: the row-major N x D input is, to column-major cuBLAS, the D x N matrix X^T with
//! leading dimension D. Every tall matrix here is likewise kept as its column-major transpose
//! (an N x l row-major Y is the l x N column-major Y^T, leading dimension l), so no transposes
//! are ever materialized. Centring is implicit: X_c W = X W - 1 (mu^T W), a rank-1 GEMM.
//! Re-orthonormalization is CholeskyQR2 (Gram matrix on the device, f64 Cholesky on the host);
//! if the sketch is too ill-conditioned for that in f32 the batch fails over to the CPU rather
//! than return a worse basis.

use super::Inner;
use crate::matrix::Matrix;
use crate::reduce::{Pca, PcaParams};
use anyhow::{Result, anyhow, bail};
use cudarc::cublas::sys::cublasOperation_t::{CUBLAS_OP_N, CUBLAS_OP_T};
use cudarc::cublas::{CudaBlas, Gemm, GemmConfig, sys::cublasOperation_t};
use cudarc::driver::{CudaSlice, CudaStream, DevicePtr, DevicePtrMut};
use std::sync::Arc;

/// The CPU path's D x l Gaussian test matrix (`reduce::gaussian_test_matrix`), laid out row-major
/// for upload, so both paths sketch the same subspace from one generator.
pub fn gaussian_test_matrix(d: usize, l: usize, seed: u64) -> Vec<f32> {
    let m = crate::reduce::gaussian_test_matrix(d, l, seed);
    let m = &m;
    (0..d)
        .flat_map(|i| (0..l).map(move |j| m[(i, j)]))
        .collect()
}

struct Ctx<'a> {
    blas: &'a CudaBlas,
    stream: &'a Arc<CudaStream>,
    n: usize,
    d: usize,
    x: CudaSlice<f32>,
    ones: CudaSlice<f32>,
    mu: CudaSlice<f32>,
}

#[allow(clippy::too_many_arguments)]
fn gemm<A: DevicePtr<f32>, B: DevicePtr<f32>, C: DevicePtrMut<f32>>(
    blas: &CudaBlas,
    (transa, transb): (cublasOperation_t, cublasOperation_t),
    (m, n, k): (usize, usize, usize),
    alpha: f32,
    (a, lda): (&A, usize),
    (b, ldb): (&B, usize),
    beta: f32,
    (c, ldc): (&mut C, usize),
    what: &str,
) -> Result<()> {
    let i = |v: usize| {
        i32::try_from(v).map_err(|_| anyhow!("{what}: dimension {v} exceeds cuBLAS' 32-bit sizes"))
    };
    let cfg = GemmConfig {
        transa,
        transb,
        m: i(m)?,
        n: i(n)?,
        k: i(k)?,
        alpha,
        lda: i(lda)?,
        ldb: i(ldb)?,
        beta,
        ldc: i(ldc)?,
    };
    // SAFETY: every caller passes buffers at least as long as (m, n, k, ld*) imply.
    unsafe { blas.gemm(cfg, a, b, c) }.map_err(|e| anyhow!("cuBLAS SGEMM ({what}): {e:?}"))
}

impl Ctx<'_> {
    fn alloc(&self, len: usize) -> Result<CudaSlice<f32>> {
        self.stream
            .alloc_zeros::<f32>(len)
            .map_err(|e| anyhow!("allocating {len} floats on the GPU: {e:?}"))
    }

    /// (X_c W)^T for W = D x w given as W^T (w x D column-major, i.e. W row-major): w x N.
    fn xc_times(&self, w_t: &CudaSlice<f32>, w: usize) -> Result<CudaSlice<f32>> {
        let (n, d) = (self.n, self.d);
        let mut y = self.alloc(w * n)?;
        gemm(
            self.blas,
            (CUBLAS_OP_N, CUBLAS_OP_N),
            (w, n, d),
            1.0,
            (w_t, w),
            (&self.x, d),
            0.0,
            (&mut y, w),
            "X W",
        )?;
        let mut c = self.alloc(w)?;
        gemm(
            self.blas,
            (CUBLAS_OP_N, CUBLAS_OP_N),
            (w, 1, d),
            1.0,
            (w_t, w),
            (&self.mu, d),
            0.0,
            (&mut c, w),
            "W^T mu",
        )?;
        gemm(
            self.blas,
            (CUBLAS_OP_N, CUBLAS_OP_N),
            (w, n, 1),
            -1.0,
            (&c, w),
            (&self.ones, 1),
            1.0,
            (&mut y, w),
            "centre X W",
        )?;
        Ok(y)
    }

    /// (X_c^T Q)^T for Q = N x l given as Q^T (l x N column-major): l x D.
    fn xct_times(&self, q_t: &CudaSlice<f32>, l: usize) -> Result<CudaSlice<f32>> {
        let (n, d) = (self.n, self.d);
        let mut z = self.alloc(l * d)?;
        gemm(
            self.blas,
            (CUBLAS_OP_N, CUBLAS_OP_T),
            (l, d, n),
            1.0,
            (q_t, l),
            (&self.x, d),
            0.0,
            (&mut z, l),
            "Q^T X",
        )?;
        let mut s = self.alloc(l)?;
        gemm(
            self.blas,
            (CUBLAS_OP_N, CUBLAS_OP_N),
            (l, 1, n),
            1.0,
            (q_t, l),
            (&self.ones, n),
            0.0,
            (&mut s, l),
            "Q^T 1",
        )?;
        gemm(
            self.blas,
            (CUBLAS_OP_N, CUBLAS_OP_N),
            (l, d, 1),
            -1.0,
            (&s, l),
            (&self.mu, 1),
            1.0,
            (&mut z, l),
            "centre Q^T X",
        )?;
        Ok(z)
    }

    /// Orthonormal columns for the rows x l matrix given as its transpose (l x rows):
    /// CholeskyQR2 on the device; a Householder QR on the host when the sketch is too
    /// ill-conditioned for a Gram matrix in f32 (singular values spanning more than ~300x).
    fn orth(&self, a_t: CudaSlice<f32>, rows: usize, l: usize) -> Result<CudaSlice<f32>> {
        match self.cholesky_qr2(&a_t, rows, l)? {
            Some(q_t) => Ok(q_t),
            None => self.host_qr(&a_t, rows, l),
        }
    }

    /// None when a Cholesky factorization is not trustworthy in f32.
    fn cholesky_qr2(
        &self,
        a_t: &CudaSlice<f32>,
        rows: usize,
        l: usize,
    ) -> Result<Option<CudaSlice<f32>>> {
        let mut cur: Option<CudaSlice<f32>> = None;
        for pass in 0..2 {
            let src = cur.as_ref().unwrap_or(a_t);
            let mut g = self.alloc(l * l)?;
            gemm(
                self.blas,
                (CUBLAS_OP_N, CUBLAS_OP_T),
                (l, l, rows),
                1.0,
                (src, l),
                (src, l),
                0.0,
                (&mut g, l),
                "Gram",
            )?;
            let g = self
                .stream
                .clone_dtoh(&g)
                .map_err(|e| anyhow!("downloading the Gram matrix: {e:?}"))?;
            let rinv = match cholesky_inverse_factor(&g, l) {
                Ok(r) => r,
                Err(e) => {
                    tracing::debug!(
                        "CholeskyQR pass {} declined ({e}); orthonormalizing on the host",
                        pass + 1
                    );
                    return Ok(None);
                }
            };
            let m = self
                .stream
                .clone_htod(&rinv)
                .map_err(|e| anyhow!("uploading R^-1: {e:?}"))?;
            let mut q_t = self.alloc(l * rows)?;
            gemm(
                self.blas,
                (CUBLAS_OP_N, CUBLAS_OP_N),
                (l, rows, l),
                1.0,
                (&m, l),
                (src, l),
                0.0,
                (&mut q_t, l),
                "Y R^-1",
            )?;
            cur = Some(q_t);
        }
        Ok(cur)
    }

    /// Thin Householder QR in f64 on the host (download, faer, upload).
    fn host_qr(&self, a_t: &CudaSlice<f32>, rows: usize, l: usize) -> Result<CudaSlice<f32>> {
        let flat = self
            .stream
            .clone_dtoh(a_t)
            .map_err(|e| anyhow!("downloading the sketch for QR: {e:?}"))?;
        // Column-major l x rows = row-major rows x l.
        let a = faer::Mat::<f64>::from_fn(rows, l, |i, j| f64::from(flat[i * l + j]));
        let q = a.qr().compute_thin_Q();
        let mut out = vec![0.0f32; rows * l];
        for i in 0..rows {
            for j in 0..l {
                out[i * l + j] = q[(i, j)] as f32;
            }
        }
        if out.iter().any(|v| !v.is_finite()) {
            bail!("host QR of the {rows} x {l} sketch produced non-finite values");
        }
        self.stream
            .clone_htod(&out)
            .map_err(|e| anyhow!("uploading the orthonormal basis: {e:?}"))
    }
}

/// For the symmetric l x l Gram matrix `g` (either storage order), R^-1 of its Cholesky factor
/// G = R^T R, as a flat row-major l x l f32 array (= (R^-1)^T column-major, what the GEMM
/// Y R^-1 needs). Fails when G is not numerically positive definite in f32 terms.
fn cholesky_inverse_factor(g: &[f32], l: usize) -> Result<Vec<f32>, String> {
    let mut r = vec![0.0f64; l * l]; // upper triangular, row-major
    let max_diag = (0..l).map(|i| f64::from(g[i * l + i])).fold(0.0, f64::max);
    if max_diag <= 0.0 || !max_diag.is_finite() {
        return Err(format!(
            "Gram matrix diagonal is degenerate (max {max_diag})"
        ));
    }
    for i in 0..l {
        for j in i..l {
            let gij = 0.5 * (f64::from(g[i * l + j]) + f64::from(g[j * l + i]));
            let s = gij - (0..i).map(|k| r[k * l + i] * r[k * l + j]).sum::<f64>();
            if i == j {
                // f32 Gram entries carry ~1e-6 relative error; a pivot below that is noise.
                if s.is_nan() || s <= 1e-5 * max_diag {
                    return Err(format!(
                        "sketch is numerically rank-deficient in f32 (pivot {i} is {s:e} of {max_diag:e})"
                    ));
                }
                r[i * l + i] = s.sqrt();
            } else {
                r[i * l + j] = s / r[i * l + i];
            }
        }
    }
    // Invert the upper-triangular R by back substitution, column by column.
    let mut inv = vec![0.0f64; l * l];
    for j in 0..l {
        for i in (0..=j).rev() {
            let rhs = if i == j { 1.0 } else { 0.0 };
            let s = rhs
                - ((i + 1)..=j)
                    .map(|k| r[i * l + k] * inv[k * l + j])
                    .sum::<f64>();
            inv[i * l + j] = s / r[i * l + i];
        }
    }
    Ok(inv.into_iter().map(|v| v as f32).collect())
}

pub(super) fn pca(g: &Inner, x: &Matrix, p: &PcaParams) -> Result<Pca> {
    let Some(blas) = g.blas.as_ref() else {
        bail!("cuBLAS is not available")
    };
    let (n, d) = (x.rows(), x.cols());
    let k = p.components.min(n.saturating_sub(1)).min(d);
    if k == 0 {
        bail!(
            "nothing to reduce ({n} x {d} to {} components)",
            p.components
        );
    }
    super::check_finite(x)?;
    let l = (k + p.oversampling).min(n).min(d);
    // X, ones, two tall N x l buffers plus one in flight, two D x l, scores.
    let floats = n * d + n + 3 * n * l + 2 * d * l + n * k + d;
    g.ensure_free(floats * 4, &format!("PCA of {n} x {d}"))?;

    let stream = &g.stream;
    let up = |v: &[f32], what: &str| {
        stream
            .clone_htod(v)
            .map_err(|e| anyhow!("uploading {what}: {e:?}"))
    };
    let x_dev = up(x.as_slice(), "the input rows")?;
    let ones = up(&vec![1.0f32; n.max(d)], "a ones vector")?;
    let mut mu = stream
        .alloc_zeros::<f32>(d)
        .map_err(|e| anyhow!("allocating the mean: {e:?}"))?;
    gemm(
        blas,
        (CUBLAS_OP_N, CUBLAS_OP_N),
        (d, 1, n),
        1.0 / n as f32,
        (&x_dev, d),
        (&ones, n),
        0.0,
        (&mut mu, d),
        "mean",
    )?;
    let c = Ctx {
        blas,
        stream,
        n,
        d,
        x: x_dev,
        ones,
        mu,
    };

    let omega = up(&gaussian_test_matrix(d, l, p.seed), "the test matrix")?;
    let mut q_t = c.orth(c.xc_times(&omega, l)?, n, l)?;
    drop(omega);
    for _ in 0..p.power_iterations {
        let z_t = c.orth(c.xct_times(&q_t, l)?, d, l)?;
        q_t = c.orth(c.xc_times(&z_t, l)?, n, l)?;
    }
    // B = Q^T X_c (l x D); its transpose comes back row-major as D x l.
    let bt = c.xct_times(&q_t, l)?;
    drop(q_t);
    let bt = stream
        .clone_dtoh(&bt)
        .map_err(|e| anyhow!("downloading the projected sketch: {e:?}"))?;
    let b = faer::Mat::<f64>::from_fn(l, d, |i, j| f64::from(bt[j * l + i]));
    let svd = b
        .thin_svd()
        .map_err(|e| anyhow!("SVD of the {l} x {d} sketch did not converge: {e:?}"))?;
    let (v, s) = (svd.V(), svd.S());
    // Components row-major k x D; V row-major D x k (= V^T column-major) for the projection.
    let mut components = Matrix::zeros(k, d);
    let mut v_rm = vec![0.0f32; d * k];
    for j in 0..k {
        for i in 0..d {
            let val = v[(i, j)] as f32;
            components.row_mut(j)[i] = val;
            v_rm[i * k + j] = val;
        }
    }
    let singular_values: Vec<f32> = (0..k).map(|j| s[j] as f32).collect();
    let v_dev = up(&v_rm, "the principal axes")?;
    let scores_t = c.xc_times(&v_dev, k)?;
    let mut scores = stream
        .clone_dtoh(&scores_t)
        .map_err(|e| anyhow!("downloading the scores: {e:?}"))?;
    let mean = stream
        .clone_dtoh(&c.mu)
        .map_err(|e| anyhow!("downloading the mean: {e:?}"))?;
    flip_signs(&mut scores, &mut components, n, k);
    let projected = Matrix::new(n, k, scores)?;
    if projected.as_slice().iter().any(|v| !v.is_finite()) {
        bail!("the GPU produced non-finite scores");
    }
    Ok(Pca {
        projected,
        components,
        mean,
        singular_values,
    })
}

/// scikit-learn's `svd_flip` (U-based): the largest-magnitude entry of each score column
/// (score = U S, so the same entry as in U; the first one on ties) is made positive.
fn flip_signs(scores: &mut [f32], components: &mut Matrix, n: usize, k: usize) {
    for j in 0..k {
        let mut arg = 0;
        let mut max = -1.0f32;
        for i in 0..n {
            let a = scores[i * k + j].abs();
            if a > max {
                max = a;
                arg = i;
            }
        }
        if scores[arg * k + j] < 0.0 {
            for i in 0..n {
                scores[i * k + j] = -scores[i * k + j];
            }
            components.row_mut(j).iter_mut().for_each(|v| *v = -*v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cholesky_inverse_factor_orthonormalizes() {
        // Y (4 x 2) with Gram G = Y^T Y; Y R^-1 must have orthonormal columns.
        let y = [1.0f32, 2.0, 0.5, -1.0, 3.0, 0.0, 1.0, 1.0];
        let l = 2;
        let mut g = vec![0.0f32; 4];
        for i in 0..2 {
            for j in 0..2 {
                g[i * l + j] = (0..4).map(|r| y[r * 2 + i] * y[r * 2 + j]).sum();
            }
        }
        let rinv = cholesky_inverse_factor(&g, l).unwrap();
        let rinv = &rinv;
        let q: Vec<f32> = (0..4)
            .flat_map(|r| {
                (0..2).map(move |j| (0..2).map(|k| y[r * 2 + k] * rinv[k * l + j]).sum::<f32>())
            })
            .collect();
        for i in 0..2 {
            for j in 0..2 {
                let dot: f32 = (0..4).map(|r| q[r * 2 + i] * q[r * 2 + j]).sum();
                assert!(
                    (dot - if i == j { 1.0 } else { 0.0 }).abs() < 1e-5,
                    "{i}{j}: {dot}"
                );
            }
        }
    }

    #[test]
    fn cholesky_rejects_rank_deficient() {
        assert!(cholesky_inverse_factor(&[1.0, 1.0, 1.0, 1.0], 2).is_err());
    }

    #[test]
    fn flip_makes_largest_entry_positive() {
        let mut s = vec![1.0f32, -3.0, -2.0, 0.5];
        let mut comp = Matrix::new(2, 1, vec![1.0, 1.0]).unwrap();
        flip_signs(&mut s, &mut comp, 2, 2);
        assert_eq!(s, vec![-1.0, 3.0, 2.0, -0.5]);
        assert_eq!(comp.as_slice(), &[-1.0, -1.0]);
    }

    #[test]
    fn test_matrix_is_seeded() {
        assert_eq!(gaussian_test_matrix(3, 2, 5), gaussian_test_matrix(3, 2, 5));
        assert_ne!(gaussian_test_matrix(3, 2, 5), gaussian_test_matrix(3, 2, 6));
    }
}
