//! The GPU PCA's algorithm on a host `Linalg`: the same GEMM calls cuBLAS gets, with every
//! operand bounds-checked and every allocation counted against a chosen amount of "device"
//! memory, so the memory plan and the fallbacks are tested without a GPU.

use super::*;
use crate::reduce::pca_cpu;
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatMut, MatRef, Par};
use rand::{Rng, SeedableRng, rngs::StdRng};
use rand_distr::StandardNormal;
use std::cell::Cell;
use std::rc::Rc;

/// Bytes allocated now.
#[derive(Default)]
struct Usage {
    now: Cell<usize>,
}

struct HostBuf {
    data: Vec<f32>,
    usage: Rc<Usage>,
}

impl Drop for HostBuf {
    fn drop(&mut self) {
        let u = &self.usage;
        u.now.set(u.now.get() - self.data.len() * 4);
    }
}

struct HostLinalg {
    /// "Device" memory: allocations beyond it fail, as cudaMalloc would.
    memory: usize,
    usage: Rc<Usage>,
    /// Floats uploaded into existing buffers (X's rows), to count passes over X.
    staged: Cell<usize>,
}

impl HostLinalg {
    fn new(memory: usize) -> Self {
        Self {
            memory,
            usage: Rc::default(),
            staged: Cell::new(0),
        }
    }
}

/// Floats a column-major rows x cols matrix with leading dimension `ld` spans.
fn span(rows: usize, cols: usize, ld: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (cols - 1) * ld + rows
    }
}

fn operand<'a>(
    (buf, off, ld): Operand<'a, HostBuf>,
    rows: usize,
    cols: usize,
    what: &str,
) -> Result<MatRef<'a, f32>> {
    let end = off + span(rows, cols, ld);
    if ld < rows.max(1) || end > buf.data.len() {
        bail!(
            "{what}: {rows} x {cols} at {off} with ld {ld} exceeds a buffer of {}",
            buf.data.len()
        );
    }
    Ok(MatRef::from_column_major_slice_with_stride(
        &buf.data[off..end],
        rows,
        cols,
        ld,
    ))
}

impl Linalg for HostLinalg {
    type Buf = HostBuf;

    fn alloc(&self, len: usize) -> Result<HostBuf> {
        let u = &self.usage;
        let now = u.now.get() + len * 4;
        if now > self.memory {
            bail!("out of memory: {now} bytes of {}", self.memory);
        }
        u.now.set(now);
        Ok(HostBuf {
            data: vec![0.0; len],
            usage: self.usage.clone(),
        })
    }

    fn upload(&self, host: &[f32]) -> Result<HostBuf> {
        let mut b = self.alloc(host.len())?;
        b.data.copy_from_slice(host);
        Ok(b)
    }

    fn upload_into(&self, host: &[f32], dst: &mut HostBuf, off: usize) -> Result<()> {
        let Some(to) = dst.data.get_mut(off..off + host.len()) else {
            bail!(
                "upload of {} floats at {off} overruns the buffer",
                host.len()
            );
        };
        to.copy_from_slice(host);
        self.staged.set(self.staged.get() + host.len());
        Ok(())
    }

    fn download(&self, buf: &HostBuf) -> Result<Vec<f32>> {
        Ok(buf.data.clone())
    }

    fn gemm(
        &self,
        g: Gemm,
        a: Operand<'_, HostBuf>,
        b: Operand<'_, HostBuf>,
        (c, c_off, ldc): (&mut HostBuf, usize, usize),
    ) -> Result<()> {
        let (ar, ac) = if g.trans_a { (g.k, g.m) } else { (g.m, g.k) };
        let (br, bc) = if g.trans_b { (g.n, g.k) } else { (g.k, g.n) };
        let a = operand(a, ar, ac, g.what)?;
        let b = operand(b, br, bc, g.what)?;
        let (a, b) = (
            if g.trans_a { a.transpose() } else { a },
            if g.trans_b { b.transpose() } else { b },
        );
        let end = c_off + span(g.m, g.n, ldc);
        if ldc < g.m.max(1) || end > c.data.len() {
            bail!("{}: C overruns its buffer", g.what);
        }
        let cv =
            MatMut::from_column_major_slice_with_stride_mut(&mut c.data[c_off..end], g.m, g.n, ldc);
        // The algorithm only overwrites (beta 0) or accumulates (beta 1).
        let accum = match g.beta {
            0.0 => Accum::Replace,
            1.0 => Accum::Add,
            beta => bail!("{}: beta {beta} is not used by the algorithm", g.what),
        };
        matmul(cv, accum, a, b, g.alpha, Par::Seq);
        Ok(())
    }

    fn free_bytes(&self) -> Result<usize> {
        Ok(self.memory - self.usage.now.get())
    }
}

/// n x d rows U diag(sigma) V^T + noise, with Gaussian U and a random orthonormal V.
fn spectrum(n: usize, d: usize, sigma: &[f64], noise: f64, seed: u64) -> Matrix {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut gauss =
        |r: usize, c: usize| Mat::<f64>::from_fn(r, c, |_, _| rng.sample::<f64, _>(StandardNormal));
    let u = gauss(n, sigma.len());
    let v = gauss(d, sigma.len()).qr().compute_thin_Q();
    let e = gauss(n, d);
    let mut x = Matrix::zeros(n, d);
    for i in 0..n {
        for j in 0..d {
            let s: f64 = (0..sigma.len())
                .map(|t| u[(i, t)] * sigma[t] * v[(j, t)])
                .sum();
            x.row_mut(i)[j] = (s + noise * e[(i, j)]) as f32;
        }
    }
    x
}

fn params(k: usize) -> PcaParams {
    PcaParams {
        components: k,
        ..PcaParams::default()
    }
}

/// Generous memory: X stays resident.
const PLENTY: usize = 1 << 30;

fn run(la: &HostLinalg, x: &Matrix, p: &PcaParams) -> (Pca, PcaStats) {
    randomized_pca(la, x, p).unwrap_or_else(|e| panic!("{e:#}"))
}

/// Sign-insensitive relative difference of score column `j`.
fn col_diff(a: &Matrix, b: &Matrix, j: usize) -> f64 {
    let col = |m: &Matrix| {
        (0..m.rows())
            .map(|i| f64::from(m.row(i)[j]))
            .collect::<Vec<_>>()
    };
    let (a, b) = (col(a), col(b));
    let norm = b.iter().map(|v| v * v).sum::<f64>().sqrt();
    let diff = |s: f64| {
        a.iter()
            .zip(&b)
            .map(|(x, y)| (x - s * y).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    diff(1.0).min(diff(-1.0)) / norm
}

/// The first `top` components agree with the CPU path's within `tol` (scores and singular
/// values), and the signs follow the same rule exactly.
fn assert_matches_cpu(g: &Pca, x: &Matrix, p: &PcaParams, top: usize, tol: f64) {
    let c = pca_cpu(x, p).expect("CPU PCA");
    assert_eq!(g.projected.cols(), c.projected.cols());
    for (a, b) in g.mean.iter().zip(&c.mean) {
        assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "mean {a} vs {b}");
    }
    for j in 0..top {
        let rel = col_diff(&g.projected, &c.projected, j);
        assert!(rel < tol, "score column {j}: relative difference {rel:e}");
        let (sg, sc) = (g.singular_values[j], c.singular_values[j]);
        assert!(
            f64::from((sg - sc).abs()) <= tol * f64::from(sc),
            "singular value {j}: {sg} vs {sc}"
        );
        let dot: f32 = g
            .components
            .row(j)
            .iter()
            .zip(c.components.row(j))
            .map(|(a, b)| a * b)
            .sum();
        assert!(dot > 0.99, "component {j}: dot with the CPU's is {dot}");
    }
}

#[test]
fn well_conditioned_data_stays_on_the_device_and_matches_the_cpu() {
    let sigma: Vec<f64> = (0..40).map(|i| 30.0 - 0.5 * i as f64).collect();
    let x = spectrum(1_500, 120, &sigma, 0.5, 1);
    let p = params(24);
    let la = HostLinalg::new(PLENTY);
    let (g, stats) = run(&la, &x, &p);
    assert_eq!(
        stats,
        PcaStats {
            block_rows: 1_500,
            shifted: 0,
            host_qr: 0
        }
    );
    // X went up once.
    assert_eq!(la.staged.get(), 1_500 * 120);
    assert_matches_cpu(&g, &x, &p, 24, 1e-3);
}

#[test]
fn x_too_large_for_the_device_is_streamed_in_blocks() {
    let sigma: Vec<f64> = (0..30).map(|i| 20.0 / (1.0 + i as f64)).collect();
    let (n, d) = (3_001, 200);
    let x = spectrum(n, d, &sigma, 0.2, 2);
    let p = params(16);
    let (resident, _) = run(&HostLinalg::new(PLENTY), &x, &p);
    // Room for the sketches and about 700 rows of X: five blocks, the last one short.
    // (Allocations past `memory` fail, so finishing proves the plan fits.)
    let memory = bytes_besides_rows(n, d, &p) + 700 * d * 4;
    let la = HostLinalg::new(memory);
    let (streamed, stats) = run(&la, &x, &p);
    assert_eq!(stats.block_rows, 700, "{stats:?}");
    // Every pass re-uploads X: mean, sketch, two per power iteration, B, scores.
    let passes = 2 * p.power_iterations + 4;
    assert_eq!(la.staged.get(), passes * n * d);
    for j in 0..16 {
        let rel = col_diff(&streamed.projected, &resident.projected, j);
        assert!(rel < 1e-4, "streamed vs resident column {j}: {rel:e}");
    }
    assert_matches_cpu(&streamed, &x, &p, 16, 1e-3);
}

#[test]
fn the_largest_resident_batch_fits_whole_and_one_more_row_streams() {
    let d = 200;
    let p = params(16);
    // Room for 1,500 rows and their sketches, and less than one more row's worth.
    let free = bytes_besides_rows(1_500, d, &p) + 1_500 * d * 4 + 1_000;
    assert_eq!(largest_resident_rows(free, d, &p), 1_500);
    let x = spectrum(1_501, d, &[9.0, 7.0, 5.0, 3.0], 0.2, 5);
    let first = Matrix::new(1_500, d, x.as_slice()[..1_500 * d].to_vec()).unwrap();
    // Allocations past `memory` fail, so finishing proves the plan fits.
    let (_, stats) = run(&HostLinalg::new(free), &first, &p);
    assert_eq!(stats.block_rows, 1_500, "resident: {stats:?}");
    let (_, stats) = run(&HostLinalg::new(free), &x, &p);
    assert!(stats.block_rows < 1_501, "one more row streams: {stats:?}");
    assert_eq!(largest_resident_rows(free / 1_000, d, &p), 0);
    // An 80 GB card holds millions of 3072-wide rows; the search stays exact that far.
    let h100 = 79 << 30;
    let n = largest_resident_rows(h100, 3_072, &PcaParams::default());
    let need = |n: usize| bytes_besides_rows(n, 3_072, &PcaParams::default()) + n * 3_072 * 4;
    assert!(
        need(n) <= h100 && need(n + 1) > h100 && n > 5_000_000,
        "{n}"
    );
}

#[test]
fn too_little_memory_for_the_sketches_is_an_error_not_a_crash() {
    let x = spectrum(2_000, 64, &[5.0, 4.0, 3.0], 0.1, 3);
    let la = HostLinalg::new(HEADROOM + 4 * 2_000 * 20);
    let err = randomized_pca(&la, &x, &params(10)).expect_err("cannot fit");
    let msg = format!("{err:#}");
    assert!(
        msg.contains("needs about") && msg.contains("MiB"),
        "unhelpful error: {msg}"
    );
}

#[test]
fn an_ill_conditioned_sketch_takes_the_shifted_pass_and_stays_on_the_device() {
    // Singular values falling by 10x every 8: the sketch's condition number passes 1,000,
    // past what one f32 Gram matrix resolves.
    let sigma: Vec<f64> = (0..48)
        .map(|i| 100.0 * 10f64.powf(-i as f64 / 8.0))
        .collect();
    let x = spectrum(2_000, 96, &sigma, 0.0, 4);
    let p = params(20);
    let (g, stats) = run(&HostLinalg::new(PLENTY), &x, &p);
    assert!(stats.shifted > 0, "{stats:?}");
    assert_eq!(stats.host_qr, 0, "{stats:?}");
    assert_matches_cpu(&g, &x, &p, 16, 1e-3);
}

#[test]
fn a_rank_deficient_sketch_is_orthonormalized_on_the_host() {
    // Rank 5 and 15 sketch columns: ten of them are rounding noise.
    let x = spectrum(400, 40, &[9.0, 7.0, 5.0, 3.0, 2.0], 0.0, 5);
    let p = PcaParams {
        oversampling: 5,
        ..params(10)
    };
    let (g, stats) = run(&HostLinalg::new(PLENTY), &x, &p);
    assert!(stats.host_qr > 0, "{stats:?}");
    assert_matches_cpu(&g, &x, &p, 5, 1e-3);
    let s = &g.singular_values;
    assert!(
        s[5..].iter().all(|&v| v <= 1e-4 * s[0]),
        "beyond the rank: {s:?}"
    );
}

#[test]
fn embedding_like_data_needs_no_fallback() {
    // What the pipeline feeds it: clustered unit-length embeddings with 20% noise.
    let (x, _) = crate::bench::synthetic_embeddings(4_000, 384, 7);
    let p = params(100);
    let (g, stats) = run(&HostLinalg::new(PLENTY), &x, &p);
    assert_eq!((stats.shifted, stats.host_qr), (0, 0), "{stats:?}");
    assert_matches_cpu(&g, &x, &p, 10, 1e-3);
}

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
    let rinv = cholesky_inverse_factor(&g, l, 0.0).unwrap();
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
fn cholesky_declines_rank_deficiency_unless_shifted() {
    let g = [1.0, 1.0, 1.0, 1.0];
    assert!(cholesky_inverse_factor(&g, 2, 0.0).is_err());
    assert!(cholesky_inverse_factor(&g, 2, SHIFT).is_ok());
    assert!(cholesky_inverse_factor(&[0.0; 4], 2, SHIFT).is_err());
}

#[test]
fn test_matrix_is_seeded() {
    assert_eq!(gaussian_test_matrix(3, 2, 5), gaussian_test_matrix(3, 2, 5));
    assert_ne!(gaussian_test_matrix(3, 2, 5), gaussian_test_matrix(3, 2, 6));
}
