//! Randomized PCA for the GPU, written against `Linalg` (column-major SGEMM on device buffers)
//! so the algorithm itself (the passes over X, the memory plan, the re-orthonormalization and
//! its fallbacks) runs in CI on a host implementation; `blas.rs` implements it on cuBLAS.
//!
//! Layout: the row-major N x D input is, to column-major BLAS, the D x N matrix X^T with
//! leading dimension D, and a block of its rows is a contiguous piece of that. Every tall matrix
//! here is likewise kept as its column-major transpose (an N x l row-major Y is the l x N
//! column-major Y^T, leading dimension l), so no transposes are ever materialized. Centring is
//! implicit: X_c W = X W - 1 (mu^T W), a rank-1 GEMM.
//!
//! Memory: the N x l sketches always live on the device; X does too when it fits (uploaded
//! once, in pieces, through pinned buffers). When it does not, X is streamed: each of the
//! 2q + 4 passes uploads it again block by block, so a batch larger than device memory is
//! slower, never an error.
//!
//! Re-orthonormalization is CholeskyQR2 (Gram matrix on the device, f64 Cholesky of the l x l
//! Gram on the host). When the sketch is too ill-conditioned for an f32 Gram, a shifted first
//! pass (shifted CholeskyQR3, Fukaya et al. 2020) still keeps the work on the device; only a
//! numerically rank-deficient sketch goes to a Householder QR on the host. Any orthonormal
//! basis of the same span gives the same components, so these choices move the result only by
//! rounding.

use crate::matrix::Matrix;
use crate::reduce::{Pca, PcaParams, effective_components};
use anyhow::{Result, anyhow, bail};

/// One column-major SGEMM, C = alpha op(A) op(B) + beta C, in cuBLAS' terms: op(A) is m x k,
/// op(B) k x n, C m x n.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Gemm {
    pub trans_a: bool,
    pub trans_b: bool,
    pub m: usize,
    pub n: usize,
    pub k: usize,
    pub alpha: f32,
    pub beta: f32,
    /// Names the product in errors.
    pub what: &'static str,
}

/// A matrix operand: its buffer, the offset in floats where it starts, its leading dimension.
pub(crate) type Operand<'a, B> = (&'a B, usize, usize);

/// What the randomized SVD needs from a device. Buffers hold f32.
pub(crate) trait Linalg {
    type Buf;
    /// A zeroed buffer of `len` floats.
    fn alloc(&self, len: usize) -> Result<Self::Buf>;
    fn upload(&self, host: &[f32]) -> Result<Self::Buf>;
    /// Copies `host` into `dst` starting at float `off`.
    fn upload_into(&self, host: &[f32], dst: &mut Self::Buf, off: usize) -> Result<()>;
    fn download(&self, buf: &Self::Buf) -> Result<Vec<f32>>;
    fn gemm(
        &self,
        g: Gemm,
        a: Operand<'_, Self::Buf>,
        b: Operand<'_, Self::Buf>,
        c: (&mut Self::Buf, usize, usize),
    ) -> Result<()>;
    /// Bytes the device can still allocate.
    fn free_bytes(&self) -> Result<usize>;
}

/// Left free for cuBLAS' workspace and the allocator's rounding.
const HEADROOM: usize = 256 << 20;
/// A streamed block is at least this many rows (or all of them), so that per-block overheads
/// stay small next to the transfer.
const MIN_BLOCK_ROWS: usize = 256;
/// The shift of the shifted CholeskyQR pass, relative to the Gram matrix's trace: large enough
/// to dominate the rounding of an f32 Gram over a million rows, small enough that the next
/// plain pass accepts every direction a float sketch can resolve.
const SHIFT: f64 = 1e-4;

/// How the PCA went, for the log and the tests.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct PcaStats {
    /// Rows of X per block on the device: N when X is resident.
    pub block_rows: usize,
    /// Re-orthonormalizations that needed the shifted pass.
    pub shifted: usize,
    /// Re-orthonormalizations done on the host.
    pub host_qr: usize,
}

/// X on the device: all of it, or one block at a time.
struct Rows<'x, B> {
    x: &'x [f32],
    n: usize,
    d: usize,
    block: usize,
    buf: B,
}

impl<B> Rows<'_, B> {
    fn resident(&self) -> bool {
        self.block >= self.n
    }

    /// Calls `f(block, first_row, rows)` for X block by block (once, for a resident X).
    fn each<L: Linalg<Buf = B>>(
        &mut self,
        la: &L,
        mut f: impl FnMut(&B, usize, usize) -> Result<()>,
    ) -> Result<()> {
        if self.resident() {
            return f(&self.buf, 0, self.n);
        }
        let mut start = 0;
        while start < self.n {
            let rows = self.block.min(self.n - start);
            la.upload_into(
                &self.x[start * self.d..(start + rows) * self.d],
                &mut self.buf,
                0,
            )?;
            f(&self.buf, start, rows)?;
            start += rows;
        }
        Ok(())
    }
}

struct Ctx<'a, 'x, L: Linalg> {
    la: &'a L,
    rows: Rows<'x, L::Buf>,
    n: usize,
    d: usize,
    ones: L::Buf,
    mu: L::Buf,
    stats: PcaStats,
}

fn gemm(
    trans_a: bool,
    trans_b: bool,
    (m, n, k): (usize, usize, usize),
    what: &'static str,
) -> Gemm {
    Gemm {
        trans_a,
        trans_b,
        m,
        n,
        k,
        alpha: 1.0,
        beta: 0.0,
        what,
    }
}

impl<L: Linalg> Ctx<'_, '_, L> {
    /// Column means of X, accumulated block by block.
    fn mean(&mut self) -> Result<()> {
        let (la, d, n) = (self.la, self.d, self.n);
        let (ones, mu) = (&self.ones, &mut self.mu);
        self.rows.each(la, |xb, start, rows| {
            let g = Gemm {
                alpha: 1.0 / n as f32,
                beta: if start == 0 { 0.0 } else { 1.0 },
                ..gemm(false, false, (d, 1, rows), "mean")
            };
            la.gemm(g, (xb, 0, d), (ones, 0, rows), (mu, 0, d))
        })
    }

    /// (X_c W)^T for W = D x w given as W^T (w x D column-major, i.e. W row-major): w x N.
    fn xc_times(&mut self, w_t: &L::Buf, w: usize) -> Result<L::Buf> {
        let (la, n, d) = (self.la, self.n, self.d);
        let mut y = la.alloc(w * n)?;
        self.rows.each(la, |xb, start, rows| {
            let g = gemm(false, false, (w, rows, d), "X W");
            la.gemm(g, (w_t, 0, w), (xb, 0, d), (&mut y, start * w, w))
        })?;
        let mut c = la.alloc(w)?;
        let g = gemm(false, false, (w, 1, d), "W^T mu");
        la.gemm(g, (w_t, 0, w), (&self.mu, 0, d), (&mut c, 0, w))?;
        let g = Gemm {
            alpha: -1.0,
            beta: 1.0,
            ..gemm(false, false, (w, n, 1), "centre X W")
        };
        la.gemm(g, (&c, 0, w), (&self.ones, 0, 1), (&mut y, 0, w))?;
        Ok(y)
    }

    /// (X_c^T Q)^T for Q = N x l given as Q^T (l x N column-major): l x D.
    fn xct_times(&mut self, q_t: &L::Buf, l: usize) -> Result<L::Buf> {
        let (la, n, d) = (self.la, self.n, self.d);
        let mut z = la.alloc(l * d)?;
        self.rows.each(la, |xb, start, rows| {
            let g = Gemm {
                beta: if start == 0 { 0.0 } else { 1.0 },
                ..gemm(false, true, (l, d, rows), "Q^T X")
            };
            la.gemm(g, (q_t, start * l, l), (xb, 0, d), (&mut z, 0, l))
        })?;
        let mut s = la.alloc(l)?;
        let g = gemm(false, false, (l, 1, n), "Q^T 1");
        la.gemm(g, (q_t, 0, l), (&self.ones, 0, n), (&mut s, 0, l))?;
        let g = Gemm {
            alpha: -1.0,
            beta: 1.0,
            ..gemm(false, false, (l, d, 1), "centre Q^T X")
        };
        la.gemm(g, (&s, 0, l), (&self.mu, 0, 1), (&mut z, 0, l))?;
        Ok(z)
    }

    /// Orthonormal columns spanning the rows x l matrix given as its transpose (l x rows):
    /// CholeskyQR2, or shifted CholeskyQR3 when the plain first pass declines, or a host QR
    /// when even that cannot be trusted.
    fn orth(&mut self, a_t: L::Buf, rows: usize, l: usize) -> Result<L::Buf> {
        let (mut cur, plain_passes) = match self.cholesky_pass(&a_t, rows, l, 0.0)? {
            Some(q) => (q, 1),
            None => match self.cholesky_pass(&a_t, rows, l, SHIFT)? {
                Some(q) => {
                    self.stats.shifted += 1;
                    (q, 2)
                }
                None => {
                    self.stats.host_qr += 1;
                    return self.host_qr(&a_t, rows, l);
                }
            },
        };
        drop(a_t);
        for _ in 0..plain_passes {
            match self.cholesky_pass(&cur, rows, l, 0.0)? {
                Some(q) => cur = q,
                None => {
                    self.stats.host_qr += 1;
                    return self.host_qr(&cur, rows, l);
                }
            }
        }
        Ok(cur)
    }

    /// One CholeskyQR pass, A R^-1 with G + shift * trace(G) I = R^T R; None when the
    /// factorization is not trustworthy in f32.
    fn cholesky_pass(
        &self,
        a_t: &L::Buf,
        rows: usize,
        l: usize,
        shift: f64,
    ) -> Result<Option<L::Buf>> {
        let la = self.la;
        let mut g = la.alloc(l * l)?;
        la.gemm(
            gemm(false, true, (l, l, rows), "Gram"),
            (a_t, 0, l),
            (a_t, 0, l),
            (&mut g, 0, l),
        )?;
        let g = la.download(&g)?;
        let rinv = match cholesky_inverse_factor(&g, l, shift) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!(shift, "CholeskyQR pass declined ({e})");
                return Ok(None);
            }
        };
        let m = la.upload(&rinv)?;
        let mut q_t = la.alloc(l * rows)?;
        la.gemm(
            gemm(false, false, (l, rows, l), "Y R^-1"),
            (&m, 0, l),
            (a_t, 0, l),
            (&mut q_t, 0, l),
        )?;
        Ok(Some(q_t))
    }

    /// Thin Householder QR in f64 on the host (download, faer, upload).
    fn host_qr(&self, a_t: &L::Buf, rows: usize, l: usize) -> Result<L::Buf> {
        let flat = self.la.download(a_t)?;
        // Column-major l x rows = row-major rows x l.
        let a = faer::Mat::<f64>::from_fn(rows, l, |i, j| f64::from(flat[i * l + j]));
        drop(flat);
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
        self.la.upload(&out)
    }
}

/// Device bytes the PCA needs besides X: ones, two tall N x l sketches plus one in flight, the
/// scores, the D-sized pieces, and headroom.
fn fixed_bytes(n: usize, d: usize, l: usize, k: usize) -> usize {
    (n.max(d) + 3 * n * l + n * k + 3 * d * l + d) * 4 + HEADROOM
}

/// Columns of the sketches: the components plus the oversampling, within the rank.
fn sketch_width(n: usize, d: usize, k: usize, p: &PcaParams) -> usize {
    (k + p.oversampling).min(n).min(d)
}

/// Device bytes an n x d PCA needs besides X (see `fixed_bytes`): a batch streams X in blocks
/// when its memory holds this but not X as well.
pub fn bytes_besides_rows(n: usize, d: usize, p: &PcaParams) -> usize {
    let k = effective_components(n, d, p.components);
    fixed_bytes(n, d, sketch_width(n, d, k, p), k)
}

/// The most rows of `d` columns whose PCA keeps X resident in `free` bytes of device memory,
/// with its sketches (`block_rows` gives all of them, nothing streams): the largest batch
/// `segclust bench --largest-that-fits` times. 0 when not even two rows fit.
pub fn largest_resident_rows(free: usize, d: usize, p: &PcaParams) -> usize {
    // The plan `randomized_pca` makes for n rows, asked whether it keeps all of them.
    let fits = |n: usize| {
        let k = effective_components(n, d, p.components);
        block_rows(n, d, sketch_width(n, d, k, p), k, free).is_ok_and(|rows| rows == n)
    };
    if !fits(2) {
        return 0;
    }
    // What a batch needs grows with its rows, so the largest that fits is found by bisection
    // between one that fits and one that cannot (X alone would not).
    let (mut lo, mut hi) = (2, free / (d * 4).max(1) + 1);
    while lo + 1 < hi {
        let mid = lo + (hi - lo) / 2;
        if fits(mid) {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

/// Rows of X per block: all N when X fits next to the sketches, else as many as fit.
fn block_rows(n: usize, d: usize, l: usize, k: usize, free: usize) -> Result<usize> {
    let fixed = fixed_bytes(n, d, l, k);
    let mib = |b: usize| b >> 20;
    let Some(left) = free.checked_sub(fixed) else {
        crate::unsuited!(
            "PCA of {n} x {d} needs about {} MiB of GPU memory for its sketches alone, {} MiB \
             free",
            mib(fixed),
            mib(free)
        );
    };
    let row_bytes = d * 4;
    if n * row_bytes <= left {
        return Ok(n);
    }
    let rows = left / row_bytes;
    if rows < MIN_BLOCK_ROWS {
        crate::unsuited!(
            "PCA of {n} x {d} needs about {} MiB of GPU memory to stream its rows, {} MiB free",
            mib(fixed + MIN_BLOCK_ROWS * row_bytes),
            mib(free)
        );
    }
    Ok(rows)
}

/// The randomized PCA of `x` on `la`, with `reduce::pca_cpu`'s parameters and conventions
/// (same test matrix, power iterations, `svd_flip` signs), so the two agree to float
/// tolerance. `x` must be finite (the caller checks).
pub(crate) fn randomized_pca<L: Linalg>(
    la: &L,
    x: &Matrix,
    p: &PcaParams,
) -> Result<(Pca, PcaStats)> {
    let (n, d) = (x.rows(), x.cols());
    let k = effective_components(n, d, p.components);
    if k == 0 {
        crate::unsuited!(
            "nothing to reduce ({n} x {d} to {} components)",
            p.components
        );
    }
    let l = sketch_width(n, d, k, p);
    let block = block_rows(n, d, l, k, la.free_bytes()?)?;
    let mut buf = la.alloc(block * d)?;
    if block >= n {
        la.upload_into(x.as_slice(), &mut buf, 0)?;
    }
    let ones = la.upload(&vec![1.0f32; n.max(d)])?;
    let mu = la.alloc(d)?;
    let mut c = Ctx {
        la,
        rows: Rows {
            x: x.as_slice(),
            n,
            d,
            block,
            buf,
        },
        n,
        d,
        ones,
        mu,
        stats: PcaStats {
            block_rows: block,
            ..PcaStats::default()
        },
    };
    c.mean()?;

    let omega = la.upload(&gaussian_test_matrix(d, l, p.seed))?;
    let y = c.xc_times(&omega, l)?;
    drop(omega);
    let mut q_t = c.orth(y, n, l)?;
    for _ in 0..p.power_iterations {
        let z = c.xct_times(&q_t, l)?;
        drop(q_t);
        let z_t = c.orth(z, d, l)?;
        let y = c.xc_times(&z_t, l)?;
        drop(z_t);
        q_t = c.orth(y, n, l)?;
    }
    // B = Q^T X_c (l x D); its transpose comes back row-major as D x l.
    let bt = c.xct_times(&q_t, l)?;
    drop(q_t);
    let bt = la.download(&bt)?;
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
    let v_dev = la.upload(&v_rm)?;
    let scores_t = c.xc_times(&v_dev, k)?;
    let mut projected = Matrix::new(n, k, la.download(&scores_t)?)?;
    let mean = la.download(&c.mu)?;
    crate::reduce::flip_signs(&mut projected, &mut components);
    if projected.as_slice().iter().any(|v| !v.is_finite()) {
        bail!("the GPU produced non-finite scores");
    }
    Ok((
        Pca {
            projected,
            components,
            mean,
            singular_values,
        },
        c.stats,
    ))
}

/// The CPU path's D x l Gaussian test matrix (`reduce::gaussian_test_matrix`), laid out row-major
/// for upload, so both paths sketch the same subspace from one generator.
pub fn gaussian_test_matrix(d: usize, l: usize, seed: u64) -> Vec<f32> {
    let m = crate::reduce::gaussian_test_matrix(d, l, seed);
    let m = &m;
    (0..d)
        .flat_map(|i| (0..l).map(move |j| m[(i, j)]))
        .collect()
}

/// For the symmetric l x l Gram matrix `g` (either storage order), R^-1 of the Cholesky factor
/// of G + shift * trace(G) I = R^T R, as a flat row-major l x l f32 array (= (R^-1)^T
/// column-major, what the GEMM Y R^-1 needs). Fails when that matrix is not numerically
/// positive definite in f32 terms.
fn cholesky_inverse_factor(g: &[f32], l: usize, shift: f64) -> Result<Vec<f32>, String> {
    let mut r = vec![0.0f64; l * l]; // upper triangular, row-major
    let max_diag = (0..l).map(|i| f64::from(g[i * l + i])).fold(0.0, f64::max);
    if max_diag <= 0.0 || !max_diag.is_finite() {
        return Err(format!(
            "Gram matrix diagonal is degenerate (max {max_diag})"
        ));
    }
    let add = shift * (0..l).map(|i| f64::from(g[i * l + i])).sum::<f64>();
    for i in 0..l {
        for j in i..l {
            let mut gij = 0.5 * (f64::from(g[i * l + j]) + f64::from(g[j * l + i]));
            if i == j {
                gij += add;
            }
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

#[cfg(test)]
mod tests;
