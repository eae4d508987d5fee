//! Building blocks of the randomized SVD: products with the implicitly centred input, QR
//! re-orthonormalization, the small SVD, and the seeded Gaussian test matrix.
//!
//! The input X (N x D, f32, row-major) is never copied or centred in memory: every product with
//! the centred matrix X_c = X - 1 mu^T is a product with X plus a rank-one correction,
//! `X_c W = X W - 1 (mu^T W)` and `X_c^T Q = X^T Q - mu (1^T Q)`. Nothing but N x l and D x l
//! panels (l = k + oversampling) is ever allocated, so the PCA adds only a few percent to the
//! input's memory.
//!
//! Determinism: the big products are cut into blocks of `ROW_BLOCK` rows whose boundaries depend
//! only on N, each block is one sequential faer GEMM, and the partial sums of `X^T Q` are added
//! along a fixed binary tree. Rayon decides only *which thread* computes a block, never how
//! the arithmetic is grouped, so the result is bit-identical for any thread count. (faer's own
//! `Par::rayon` splits work by the thread count, which would make results depend on it.) The
//! small QR and SVD run sequentially for the same reason.

use faer::dyn_stack::{MemBuffer, MemStack};
use faer::linalg::householder::{
    apply_block_householder_sequence_on_the_left_in_place_scratch,
    apply_block_householder_sequence_on_the_left_in_place_with_conj,
};
use faer::linalg::matmul::matmul;
use faer::linalg::qr::no_pivoting::factor::{
    qr_in_place, qr_in_place_scratch, recommended_block_size,
};
use faer::linalg::svd::{ComputeSvdVectors, svd, svd_scratch};
use faer::prelude::{Reborrow, ReborrowMut};
use faer::{Accum, Conj, Mat, MatMut, MatRef, Par};
use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;

/// Rows per leaf GEMM. Large enough for faer to run near peak (a 2048 x 3072 x 110 product is
/// 1.4 GFLOP), small enough to balance 25 blocks over a few cores at N = 50,000.
pub(crate) const ROW_BLOCK: usize = 2048;

/// The seeded Gaussian test matrix Omega (D x l): `StdRng::seed_from_u64(seed)` standard
/// normals drawn in row-major order (entry (i, j) is draw i * l + j). The GPU path makes the same
/// draw, so both sketch the same subspace and agree to float tolerance.
pub fn gaussian_test_matrix(d: usize, l: usize, seed: u64) -> Mat<f32> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut omega = Mat::<f32>::zeros(d, l);
    for i in 0..d {
        for j in 0..l {
            omega[(i, j)] = StandardNormal.sample(&mut rng);
        }
    }
    omega
}

/// Column means of X (row-major, `d` columns) and the total sum of squares of X_c, accumulated
/// in f64 over fixed row blocks (so again independent of the thread count).
pub(crate) fn column_stats(data: &[f32], d: usize) -> (Vec<f64>, f64) {
    let n = data.len().checked_div(d).unwrap_or(0);
    if n == 0 {
        return (vec![0.0; d], 0.0);
    }
    let (sum, sumsq) = column_sums_rec(data, d);
    let nf = n as f64;
    let mean: Vec<f64> = sum.iter().map(|s| s / nf).collect();
    // sum (x - mu)^2 = sum x^2 - n mu^2 per column; clamp the rounding below zero.
    let total = sumsq
        .iter()
        .zip(&mean)
        .map(|(s2, m)| (s2 - nf * m * m).max(0.0))
        .sum();
    (mean, total)
}

fn column_sums_rec(data: &[f32], d: usize) -> (Vec<f64>, Vec<f64>) {
    let n = data.len() / d;
    if n <= ROW_BLOCK {
        let mut sum = vec![0.0f64; d];
        let mut sumsq = vec![0.0f64; d];
        for row in data.chunks_exact(d) {
            for ((s, q), &v) in sum.iter_mut().zip(sumsq.iter_mut()).zip(row) {
                let v = f64::from(v);
                *s += v;
                *q += v * v;
            }
        }
        return (sum, sumsq);
    }
    let (x0, x1) = data.split_at(split_point(n) * d);
    let ((mut s0, mut q0), (s1, q1)) =
        rayon::join(|| column_sums_rec(x0, d), || column_sums_rec(x1, d));
    s0.iter_mut().zip(&s1).for_each(|(a, b)| *a += b);
    q0.iter_mut().zip(&q1).for_each(|(a, b)| *a += b);
    (s0, q0)
}

/// The split of `n > ROW_BLOCK` rows into two halves, on a block boundary.
fn split_point(n: usize) -> usize {
    (n.div_ceil(ROW_BLOCK) / 2) * ROW_BLOCK
}

/// `out = (X - 1 mu^T) W` for X (N x D), W (D x c); `out` is N x c with any layout.
pub(crate) fn centred_mul(
    x: MatRef<'_, f32>,
    mean: &[f32],
    w: MatRef<'_, f32>,
    out: MatMut<'_, f32>,
) {
    // shift = mu^T W, a 1 x c row subtracted from every row of X W.
    let mut shift = vec![0.0f32; w.ncols()];
    for (j, s) in shift.iter_mut().enumerate() {
        let col = w.col(j);
        let dot: f64 = mean
            .iter()
            .enumerate()
            .map(|(i, &m)| f64::from(m) * f64::from(col[i]))
            .sum();
        *s = dot as f32;
    }
    mul_rec(x, w, &shift, out);
}

fn mul_rec(x: MatRef<'_, f32>, w: MatRef<'_, f32>, shift: &[f32], mut out: MatMut<'_, f32>) {
    let n = x.nrows();
    if n <= ROW_BLOCK {
        matmul(out.rb_mut(), Accum::Replace, x, w, 1.0f32, Par::Seq);
        for (j, &s) in shift.iter().enumerate() {
            out.rb_mut().col_mut(j).iter_mut().for_each(|v| *v -= s);
        }
        return;
    }
    let mid = split_point(n);
    let (x0, x1) = x.split_at_row(mid);
    let (o0, o1) = out.split_at_row_mut(mid);
    rayon::join(|| mul_rec(x0, w, shift, o0), || mul_rec(x1, w, shift, o1));
}

/// `(X - 1 mu^T)^T Q` for X (N x D), Q (N x c): a D x c matrix.
pub(crate) fn centred_tmul(x: MatRef<'_, f32>, mean: &[f32], q: MatRef<'_, f32>) -> Mat<f32> {
    let mut out = tmul_rec(x, q);
    // Subtract mu (1^T Q). In exact arithmetic Q lies in the range of X_c, which is orthogonal
    // to 1, so this only removes the drift that rounding puts along the mean direction.
    for j in 0..q.ncols() {
        let colsum: f64 = q.col(j).iter().map(|&v| f64::from(v)).sum();
        let colsum = colsum as f32;
        for (i, v) in out.col_mut(j).iter_mut().enumerate() {
            *v -= mean[i] * colsum;
        }
    }
    out
}

fn tmul_rec(x: MatRef<'_, f32>, q: MatRef<'_, f32>) -> Mat<f32> {
    let n = x.nrows();
    if n <= ROW_BLOCK {
        let mut out = Mat::<f32>::zeros(x.ncols(), q.ncols());
        matmul(
            out.as_mut(),
            Accum::Replace,
            x.transpose(),
            q,
            1.0f32,
            Par::Seq,
        );
        return out;
    }
    let mid = split_point(n);
    let (x0, x1) = x.split_at_row(mid);
    let (q0, q1) = q.split_at_row(mid);
    let (mut a, b) = rayon::join(|| tmul_rec(x0, q0), || tmul_rec(x1, q1));
    a += &b;
    a
}

/// Rows per block of the tall-skinny QR. Fixed (not derived from the thread count) so that
/// the result is too.
const QR_BLOCK: usize = 8192;

/// Replaces the columns of `y` (m x n, m >= n) by an orthonormal basis of their span.
/// Householder QR (not Cholesky-QR or Gram-Schmidt) because the power iterations make the panel
/// extremely ill-conditioned, and in f32 only Householder still returns orthonormal columns then
/// (also when the panel is rank deficient). Tall panels use TSQR: independent QRs of fixed row
/// blocks in parallel, then a QR of their stacked R factors; sequential faer QR of a
/// 50,000 x 110 panel would otherwise be a fifth of the PCA's time.
pub(crate) fn orthonormalize(y: &mut Mat<f32>) {
    let (m, n) = y.shape();
    debug_assert!(m >= n, "orthonormalize needs a tall panel");
    if n == 0 {
        return;
    }
    let blocks = m / QR_BLOCK;
    if blocks < 2 || n > QR_BLOCK / 2 {
        *y = householder_thin_q(y.as_mut());
        return;
    }
    // Row ranges: `blocks` blocks of QR_BLOCK rows, the last one taking the remainder.
    let ranges: Vec<(usize, usize)> = (0..blocks)
        .map(|b| {
            let end = if b + 1 == blocks {
                m
            } else {
                (b + 1) * QR_BLOCK
            };
            (b * QR_BLOCK, end)
        })
        .collect();
    // 1. Factor every block in place (Householder vectors below the diagonal, R above).
    let coeffs: Vec<Mat<f32>> = row_blocks_mut(y.as_mut(), &ranges)
        .into_par_iter()
        .map(|mut block| householder_factor(block.as_mut()))
        .collect();
    // 2. Q_s R = QR of the stacked n x n R factors.
    let mut stacked = Mat::<f32>::zeros(blocks * n, n);
    for (b, &(start, _)) in ranges.iter().enumerate() {
        for j in 0..n {
            for i in 0..=j {
                stacked[(b * n + i, j)] = y[(start + i, j)];
            }
        }
    }
    let q_s = householder_thin_q(stacked.as_mut());
    // 3. Q of block b = H_b [Q_s block b; 0].
    let mut q = Mat::<f32>::zeros(m, n);
    let y_ref = y.as_ref();
    row_blocks_mut(q.as_mut(), &ranges)
        .into_par_iter()
        .zip(coeffs.par_iter())
        .enumerate()
        .for_each(|(b, (mut out, coeff))| {
            out.as_mut()
                .subrows_mut(0, n)
                .copy_from(q_s.as_ref().subrows(b * n, n));
            let (start, end) = ranges[b];
            apply_householder(
                y_ref.subrows(start, end - start),
                coeff.as_ref(),
                out.as_mut(),
            );
        });
    *y = q;
}

fn row_blocks_mut<'a>(
    mut rest: MatMut<'a, f32>,
    ranges: &[(usize, usize)],
) -> Vec<MatMut<'a, f32>> {
    let mut out = Vec::with_capacity(ranges.len());
    for &(start, end) in ranges {
        let (head, tail) = rest.split_at_row_mut(end - start);
        out.push(head);
        rest = tail;
    }
    out
}

/// Householder QR of `a` in place; returns the block reflector coefficients.
fn householder_factor(a: MatMut<'_, f32>) -> Mat<f32> {
    let (m, n) = a.shape();
    let block = recommended_block_size::<f32>(m, n);
    let mut coeff = Mat::<f32>::zeros(block, m.min(n));
    let mut buf = MemBuffer::new(qr_in_place_scratch::<f32>(
        m,
        n,
        block,
        Par::Seq,
        Default::default(),
    ));
    qr_in_place(
        a,
        coeff.as_mut(),
        Par::Seq,
        MemStack::new(&mut buf),
        Default::default(),
    );
    coeff
}

/// `target = H target` for the reflectors stored below the diagonal of `basis` (the apply treats
/// that part as unit lower triangular and ignores R above it).
fn apply_householder(basis: MatRef<'_, f32>, coeff: MatRef<'_, f32>, target: MatMut<'_, f32>) {
    let mut buf = MemBuffer::new(
        apply_block_householder_sequence_on_the_left_in_place_scratch::<f32>(
            basis.nrows(),
            coeff.nrows(),
            target.ncols(),
        ),
    );
    apply_block_householder_sequence_on_the_left_in_place_with_conj(
        basis,
        coeff,
        Conj::No,
        target,
        Par::Seq,
        MemStack::new(&mut buf),
    );
}

/// Sequential thin Q of `a` (m x n, m >= n); `a` is overwritten by its factorization.
pub(crate) fn householder_thin_q(mut a: MatMut<'_, f32>) -> Mat<f32> {
    let (m, n) = a.shape();
    let coeff = householder_factor(a.rb_mut());
    let mut q = Mat::<f32>::identity(m, n);
    apply_householder(a.rb(), coeff.as_ref(), q.as_mut());
    q
}

/// Thin SVD of a small tall matrix `a` (m x n, m >= n): (U m x n, singular values, V n x n),
/// singular values in non-increasing order.
pub(crate) fn thin_svd(a: MatRef<'_, f32>) -> anyhow::Result<(Mat<f32>, Vec<f32>, Mat<f32>)> {
    let (m, n) = a.shape();
    let size = m.min(n);
    let mut u = Mat::<f32>::zeros(m, size);
    let mut v = Mat::<f32>::zeros(n, size);
    let mut s = faer::diag::Diag::<f32>::zeros(size);
    let mut buf = MemBuffer::new(svd_scratch::<f32>(
        m,
        n,
        ComputeSvdVectors::Thin,
        ComputeSvdVectors::Thin,
        Par::Seq,
        Default::default(),
    ));
    svd(
        a,
        s.as_mut(),
        Some(u.as_mut()),
        Some(v.as_mut()),
        Par::Seq,
        MemStack::new(&mut buf),
        Default::default(),
    )
    .map_err(|e| {
        anyhow::anyhow!(
            "the SVD of the {m} x {n} PCA sketch did not converge ({e:?}); the input likely \
             holds extreme values: check that embeddings were validated"
        )
    })?;
    let s = s.column_vector().iter().copied().collect();
    Ok((u, s, v))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn random(n: usize, d: usize, seed: u64) -> Mat<f32> {
        let g = gaussian_test_matrix(n, d, seed);
        Mat::from_fn(n, d, |i, j| g[(i, j)] + 0.5 * (j as f32 + 1.0))
    }

    fn row_major(m: &Mat<f32>) -> Vec<f32> {
        let mut v = Vec::with_capacity(m.nrows() * m.ncols());
        for i in 0..m.nrows() {
            for j in 0..m.ncols() {
                v.push(m[(i, j)]);
            }
        }
        v
    }

    #[test]
    fn centred_products_match_explicit_centring() {
        // 5000 rows: three leaf blocks, so the tree reduction is exercised.
        let (n, d, c) = (5000, 17, 4);
        let xm = random(n, d, 1);
        let data = row_major(&xm);
        let x = MatRef::from_row_major_slice(&data, n, d);
        let (mean64, total) = column_stats(&data, d);
        let mean: Vec<f32> = mean64.iter().map(|&m| m as f32).collect();
        let xc = Mat::<f64>::from_fn(n, d, |i, j| f64::from(xm[(i, j)]) - mean64[j]);
        let total_ref: f64 = xc
            .col_iter()
            .flat_map(|c| c.iter().map(|v| v * v).collect::<Vec<_>>())
            .sum();
        assert!(
            (total - total_ref).abs() < 1e-9 * total_ref,
            "{total} vs {total_ref}"
        );

        let w = gaussian_test_matrix(d, c, 2);
        let mut y = Mat::<f32>::zeros(n, c);
        centred_mul(x, &mean, w.as_ref(), y.as_mut());
        let w64 = Mat::<f64>::from_fn(d, c, |i, j| f64::from(w[(i, j)]));
        let y_ref = &xc * &w64;
        for i in 0..n {
            for j in 0..c {
                assert!(
                    (f64::from(y[(i, j)]) - y_ref[(i, j)]).abs() < 1e-4,
                    "({i},{j})"
                );
            }
        }

        let q = gaussian_test_matrix(n, c, 3);
        let z = centred_tmul(x, &mean, q.as_ref());
        let q64 = Mat::<f64>::from_fn(n, c, |i, j| f64::from(q[(i, j)]));
        let z_ref = xc.transpose() * &q64;
        for i in 0..d {
            for j in 0..c {
                let scale = z_ref[(i, j)].abs().max(70.0);
                assert!(
                    (f64::from(z[(i, j)]) - z_ref[(i, j)]).abs() < 1e-4 * scale,
                    "({i},{j})"
                );
            }
        }
    }

    /// Q^T Q = I within f32 tolerance.
    fn assert_orthonormal(q: &Mat<f32>) {
        let gram = q.transpose() * q;
        for i in 0..q.ncols() {
            for j in 0..q.ncols() {
                let want = if i == j { 1.0 } else { 0.0 };
                assert!(
                    (gram[(i, j)] - want).abs() < 1e-5,
                    "gram ({i},{j}) = {}",
                    gram[(i, j)]
                );
            }
        }
    }

    #[test]
    fn orthonormalize_gives_orthonormal_basis_of_the_span() {
        let (m, n) = (300, 12);
        let y0 = random(m, n, 4);
        let mut q = y0.clone();
        orthonormalize(&mut q);
        assert_orthonormal(&q);
        // The span is kept: projecting y0 onto Q reproduces it.
        let resid = &y0 - &q * (q.transpose() * &y0);
        assert!(resid.norm_l2() < 1e-4 * y0.norm_l2());
    }

    #[test]
    fn blocked_qr_of_a_tall_panel_is_orthonormal_and_keeps_the_span() {
        // Three QR blocks, the last with a remainder: the TSQR path.
        let (m, n) = (3 * QR_BLOCK + 100, 9);
        // Badly scaled columns, as after power iterations.
        let y0 = Mat::from_fn(m, n, |i, j| {
            let g = ((i * 7919 + j * 104729) % 1000) as f32 / 1000.0 - 0.5;
            g * 10f32.powi(-(j as i32) / 2) + if j == 0 { 0.0 } else { 1e-3 * (i % 13) as f32 }
        });
        let mut q = y0.clone();
        orthonormalize(&mut q);
        assert_orthonormal(&q);
        let resid = &y0 - &q * (q.transpose() * &y0);
        assert!(resid.norm_l2() < 1e-5 * y0.norm_l2(), "{}", resid.norm_l2());
        // Bit-identical whatever the thread count.
        for threads in [1, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            let mut again = y0.clone();
            pool.install(|| orthonormalize(&mut again));
            assert!(again == q, "{threads} threads changed the result");
        }
    }

    #[test]
    fn orthonormalize_survives_rank_deficiency() {
        let (m, n) = (200, 6);
        let base = random(m, 2, 5);
        // Every column is a combination of the same two vectors: rank 2.
        let y0 = Mat::from_fn(m, n, |i, j| base[(i, 0)] * (j as f32 + 1.0) - base[(i, 1)]);
        let mut q = y0;
        orthonormalize(&mut q);
        let gram = q.transpose() * &q;
        for i in 0..n {
            assert!((gram[(i, i)] - 1.0).abs() < 1e-4);
        }
    }

    #[test]
    fn test_matrix_is_a_seeded_row_major_draw() {
        let a = gaussian_test_matrix(50, 3, 9);
        let mut rng = StdRng::seed_from_u64(9);
        let draws: Vec<f32> = (0..150).map(|_| StandardNormal.sample(&mut rng)).collect();
        assert_eq!(a[(7, 2)], draws[7 * 3 + 2]);
        assert_eq!(a, gaussian_test_matrix(50, 3, 9));
        assert_ne!(a, gaussian_test_matrix(50, 3, 10));
    }
}
