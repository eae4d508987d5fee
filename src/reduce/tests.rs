//! Tests of the randomized PCA against an exact f64 SVD, plus the timing/quality harness
//! (`#[ignore]`d; see `pca_timing`).

use super::*;
use faer::Mat;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use rayon::prelude::*;

/// N x D rows = offset + sum_r sigma_r a_ir b_r + noise, with random orthonormal-ish factors.
/// `sigmas` sets the signal spectrum; the offset makes the centring matter.
fn low_rank_plus_noise(n: usize, d: usize, sigmas: &[f32], noise: f32, seed: u64) -> Matrix {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut gauss =
        |len: usize| -> Vec<f32> { (0..len).map(|_| StandardNormal.sample(&mut rng)).collect() };
    let a = gauss(n * sigmas.len());
    let b = gauss(d * sigmas.len());
    let offset = gauss(d);
    let e = gauss(n * d);
    let mut data = vec![0.0f32; n * d];
    for i in 0..n {
        for j in 0..d {
            let mut v = 3.0 + offset[j] + noise * e[i * d + j];
            for (r, s) in sigmas.iter().enumerate() {
                v += s * a[i * sigmas.len() + r] * b[j * sigmas.len() + r] / (d as f32).sqrt();
            }
            data[i * d + j] = v;
        }
    }
    Matrix::new(n, d, data).expect("shape is consistent")
}

/// Exact SVD of the explicitly centred matrix, in f64: (singular values, V as D x r).
fn exact(x: &Matrix) -> (Vec<f64>, Mat<f64>) {
    let (n, d) = (x.rows(), x.cols());
    let mut mean = vec![0.0f64; d];
    for i in 0..n {
        for (m, &v) in mean.iter_mut().zip(x.row(i)) {
            *m += f64::from(v) / n as f64;
        }
    }
    let xc = Mat::<f64>::from_fn(n, d, |i, j| f64::from(x.row(i)[j]) - mean[j]);
    let svd = xc.thin_svd().expect("reference SVD converges");
    (
        svd.S().column_vector().iter().copied().collect(),
        svd.V().to_owned(),
    )
}

/// Mean squared cosine of the principal angles between span(components) and the first k exact
/// axes: 1.0 = same subspace.
fn subspace_agreement(components: &Matrix, v_exact: &Mat<f64>) -> f64 {
    let k = components.rows();
    let mut sum = 0.0;
    for a in 0..k {
        for b in 0..k {
            let dot: f64 = components
                .row(a)
                .iter()
                .enumerate()
                .map(|(j, &c)| f64::from(c) * v_exact[(j, b)])
                .sum();
            sum += dot * dot;
        }
    }
    sum / k as f64
}

fn params(k: usize, q: usize) -> PcaParams {
    PcaParams {
        components: k,
        oversampling: 10,
        power_iterations: q,
        seed: 7,
    }
}

#[test]
fn singular_values_and_axes_match_exact_svd() {
    let sigmas = [40.0, 30.0, 22.0, 15.0, 11.0, 8.0, 6.0, 4.0];
    let x = low_rank_plus_noise(600, 150, &sigmas, 0.01, 1);
    let (s_ref, v_ref) = exact(&x);
    let pca = pca_cpu(&x, &params(8, 4)).unwrap();
    assert_eq!(pca.singular_values.len(), 8);
    for (i, (&s, &r)) in pca.singular_values.iter().zip(&s_ref).enumerate() {
        let rel = (f64::from(s) - r).abs() / r;
        assert!(
            rel < 1e-4,
            "singular value {i}: {s} vs exact {r} (rel {rel:e})"
        );
    }
    let agree = subspace_agreement(&pca.components, &v_ref);
    assert!(agree > 1.0 - 1e-5, "subspace agreement {agree}");
    // Each axis individually matches the exact one up to sign.
    for c in 0..8 {
        let dot: f64 = pca
            .components
            .row(c)
            .iter()
            .enumerate()
            .map(|(j, &v)| f64::from(v) * v_ref[(j, c)])
            .sum();
        assert!(dot.abs() > 1.0 - 1e-4, "axis {c}: |cos| = {}", dot.abs());
    }
}

#[test]
fn noisy_tail_is_close_with_power_iterations() {
    // A slowly decaying spectrum (no gap at k): the hard case for a randomized SVD.
    let sigmas: Vec<f32> = (0..40).map(|r| 30.0 / (1.0 + r as f32).sqrt()).collect();
    let x = low_rank_plus_noise(500, 200, &sigmas, 0.3, 2);
    let (s_ref, _) = exact(&x);
    let k = 20;
    let err = |q| {
        let pca = pca_cpu(&x, &params(k, q)).unwrap();
        let captured: f64 = pca
            .singular_values
            .iter()
            .map(|&s| f64::from(s).powi(2))
            .sum();
        let best: f64 = s_ref[..k].iter().map(|s| s * s).sum();
        1.0 - captured / best
    };
    let (e0, e4) = (err(0), err(4));
    assert!(
        e4 >= -1e-5,
        "captured more variance than the exact top-k: {e4}"
    );
    assert!(
        e4 < 2e-3,
        "4 power iterations leave {e4} of the top-k variance"
    );
    assert!(e4 < e0, "power iterations did not help: {e0} -> {e4}");
}

#[test]
fn distances_are_preserved_when_rank_is_at_most_k() {
    // Rank 5 after centring, k = 8: the projection is an isometry on the rows.
    let x = low_rank_plus_noise(300, 64, &[10.0, 8.0, 6.0, 4.0, 2.0], 0.0, 3);
    let pca = pca_cpu(&x, &params(8, 2)).unwrap();
    let dist = |m: &Matrix, a: usize, b: usize| -> f64 {
        m.row(a)
            .iter()
            .zip(m.row(b))
            .map(|(&p, &q)| f64::from(p - q).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    let mut rng = StdRng::seed_from_u64(0);
    for _ in 0..200 {
        let (a, b) = (rng.random_range(0..300), rng.random_range(0..300));
        let (orig, proj) = (dist(&x, a, b), dist(&pca.projected, a, b));
        assert!(
            (orig - proj).abs() <= 1e-4 * orig.max(1.0),
            "rows {a},{b}: {orig} vs {proj}"
        );
    }
}

#[test]
fn scores_are_centred_orthogonal_and_consistent() {
    let x = low_rank_plus_noise(400, 80, &[20.0, 10.0, 5.0, 2.0], 0.5, 4);
    let pca = pca_cpu(&x, &params(10, 3)).unwrap();
    let (n, k) = (pca.projected.rows(), pca.projected.cols());
    assert_eq!((n, k), (400, 10));
    for c in 0..k {
        let col: Vec<f64> = (0..n).map(|i| f64::from(pca.projected.row(i)[c])).collect();
        let mean = col.iter().sum::<f64>() / n as f64;
        let norm = col.iter().map(|v| v * v).sum::<f64>().sqrt();
        // The rows sit around 3 + offset, far from 0: without centring the mean would be O(1).
        assert!(mean.abs() < 1e-5 * norm.max(1.0), "column {c} mean {mean}");
        // s_c = ||Q^T X_c v_c|| <= ||X_c v_c||, with equality up to the sketch's error, which
        // is tiny on the 4 signal directions and small on the noise ones.
        let s = f64::from(pca.singular_values[c]);
        let tol = if c < 4 { 1e-4 } else { 2e-2 };
        assert!(
            norm >= s * (1.0 - 1e-5) && norm <= s * (1.0 + tol),
            "column {c}: norm {norm} vs s {s}"
        );
    }
    let mut prev = f32::INFINITY;
    for c in 0..k {
        let row = pca.components.row(c);
        let len: f64 = row.iter().map(|&v| f64::from(v).powi(2)).sum();
        assert!((len - 1.0).abs() < 1e-5);
        let max = (0..n)
            .map(|i| pca.projected.row(i)[c])
            .fold(0.0f32, |m, v| if v.abs() > m.abs() { v } else { m });
        assert!(
            max > 0.0,
            "score column {c}: largest-magnitude entry must be positive"
        );
        assert!(pca.singular_values[c] <= prev);
        prev = pca.singular_values[c];
    }
    // transform() on the fitted rows reproduces `projected` exactly.
    assert_eq!(pca.transform(&x).unwrap(), pca.projected);
    assert!(pca.transform(&Matrix::zeros(3, 79)).is_err());
}

#[test]
fn deterministic_for_a_seed_and_any_thread_count() {
    // 5000 rows: three GEMM blocks, so the parallel split is exercised.
    let x = low_rank_plus_noise(5000, 48, &[9.0, 7.0, 5.0, 3.0], 0.2, 5);
    let p = params(12, 2);
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| pca_cpu(&x, &p).unwrap())
    };
    let a = run(1);
    for threads in [1, 2, 3] {
        let b = run(threads);
        assert_eq!(a.projected, b.projected, "{threads} threads");
        assert_eq!(a.components, b.components);
        assert_eq!(a.singular_values, b.singular_values);
        assert_eq!(a.mean, b.mean);
    }
    let other = pca_cpu(
        &x,
        &PcaParams {
            seed: 8,
            ..p.clone()
        },
    )
    .unwrap();
    assert_ne!(other.projected, a.projected, "the seed must matter");
    for (s, t) in a.singular_values.iter().zip(&other.singular_values).take(4) {
        assert!(
            (s - t).abs() < 1e-3 * s,
            "signal singular values must not depend on the seed"
        );
    }
}

#[test]
fn components_are_capped_at_rows_minus_one_and_dim() {
    let shape = |n, d, k| {
        let x = low_rank_plus_noise(n, d, &[3.0, 2.0], 0.5, 6);
        let pca = pca_cpu(&x, &params(k, 2)).unwrap();
        assert_eq!(pca.components.rows(), pca.projected.cols());
        assert_eq!(pca.components.cols(), d);
        assert_eq!(pca.singular_values.len(), pca.projected.cols());
        assert_eq!(pca.projected.rows(), n);
        pca.projected.cols()
    };
    assert_eq!(shape(5, 50, 100), 4);
    assert_eq!(shape(50, 3, 100), 3);
    assert_eq!(shape(2, 10, 100), 1);
    assert_eq!(shape(1, 10, 100), 0);
    assert_eq!(shape(0, 10, 100), 0);
    assert_eq!(shape(30, 10, 0), 0);
    assert_eq!(shape(11, 11, 10), 10);

    // N = 2: one axis along the difference; scores are +-half the distance.
    let x = Matrix::new(2, 3, vec![1.0, 2.0, 3.0, 3.0, 2.0, 3.0]).unwrap();
    let pca = pca_cpu(&x, &params(100, 4)).unwrap();
    assert!((pca.singular_values[0] - 2f32.sqrt()).abs() < 1e-6);
    assert!((pca.projected.row(0)[0] + pca.projected.row(1)[0]).abs() < 1e-6);
    assert!(((pca.projected.row(0)[0] - pca.projected.row(1)[0]).abs() - 2.0).abs() < 1e-6);
}

#[test]
fn identical_rows_give_zero_scores() {
    let row = [0.5f32, -0.25, 1.0, 2.0];
    let x = Matrix::new(6, 4, row.repeat(6)).unwrap();
    let pca = pca_cpu(&x, &params(3, 2)).unwrap();
    assert_eq!(pca.mean, row.to_vec());
    assert!(pca.projected.as_slice().iter().all(|v| v.abs() < 1e-6));
    assert!(pca.singular_values.iter().all(|v| v.abs() < 1e-6));
}

#[test]
fn non_finite_input_is_an_error() {
    let mut x = low_rank_plus_noise(10, 4, &[1.0], 0.1, 7);
    x.row_mut(3)[2] = f32::NAN;
    let err = pca_cpu(&x, &params(3, 2)).unwrap_err();
    assert!(format!("{err:#}").contains("NaN"));
}

// ---------------------------------------------------------------------------------------------
// Timing and quality harness (ignored). Example:
//   SEGCLUST_PCA_N=50000 SEGCLUST_PCA_ITERS=2,4,7 SEGCLUST_PCA_EXACT=1 \
//     cargo test --lib reduce::tests::pca_timing -- --ignored --nocapture

/// L2-normalized synthetic "embeddings" of dimension `d` with a cluster structure: a shared
/// direction (all embeddings of one model share one), 500 clusters whose centres have decaying
/// spread and Zipf-like sizes, and isotropic within-cluster noise. Generated straight into the
/// final buffer, in parallel, deterministically (one RNG per row block).
pub(crate) fn clustered_embeddings(n: usize, d: usize, seed: u64) -> Matrix {
    const CLUSTERS: usize = 500;
    let mut rng = StdRng::seed_from_u64(seed);
    let common: Vec<f32> = (0..d).map(|_| StandardNormal.sample(&mut rng)).collect();
    let centres: Vec<Vec<f32>> = (0..CLUSTERS)
        .map(|c| {
            let spread = 1.2 / (1.0 + c as f32 / 20.0).sqrt();
            (0..d)
                .map(|j| {
                    0.8 * common[j]
                        + spread * Distribution::<f32>::sample(&StandardNormal, &mut rng)
                })
                .collect()
        })
        .collect();
    let mut data = vec![0.0f32; n * d];
    data.par_chunks_mut(256 * d)
        .enumerate()
        .for_each(|(b, block)| {
            let mut rng =
                StdRng::seed_from_u64(seed ^ (b as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
            for row in block.chunks_mut(d) {
                let u: f64 = rng.random();
                let c = ((u * u * u) * CLUSTERS as f64) as usize % CLUSTERS;
                let noise = 0.6 + 0.4 * rng.random::<f32>();
                for (v, &m) in row.iter_mut().zip(&centres[c]) {
                    *v = m + noise * Distribution::<f32>::sample(&StandardNormal, &mut rng);
                }
                crate::matrix::normalize(row);
            }
        });
    Matrix::new(n, d, data).expect("shape is consistent")
}

/// Exact top-k of the centred covariance: (eigenvalues = s^2, axes D x k), via an f32 Gram
/// matrix X^T X (one big parallel GEMM), centred and eigendecomposed in f64.
fn exact_top_k(x: &Matrix, mean: &[f32], k: usize) -> (Vec<f64>, Mat<f64>) {
    let (n, d) = (x.rows(), x.cols());
    let xf = x.as_faer();
    let mut g = Mat::<f32>::zeros(d, d);
    faer::linalg::matmul::matmul(
        g.as_mut(),
        faer::Accum::Replace,
        xf.transpose(),
        xf,
        1.0f32,
        faer::Par::rayon(0),
    );
    let g64 = Mat::<f64>::from_fn(d, d, |i, j| {
        f64::from(g[(i, j)]) - n as f64 * f64::from(mean[i]) * f64::from(mean[j])
    });
    drop(g);
    let eig = g64
        .self_adjoint_eigen(faer::Side::Lower)
        .expect("eigendecomposition converges");
    // faer sorts eigenvalues in non-decreasing order: take the last k, largest first.
    let vals: Vec<f64> = eig.S().column_vector().iter().copied().collect();
    let idx: Vec<usize> = (0..k).map(|i| d - 1 - i).collect();
    let axes = Mat::<f64>::from_fn(d, k, |j, c| eig.U()[(j, idx[c])]);
    (idx.iter().map(|&i| vals[i]).collect(), axes)
}

#[test]
#[ignore = "timing harness: run with --ignored --nocapture"]
fn pca_timing() {
    let env =
        |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_string());
    let n: usize = env("SEGCLUST_PCA_N", "10000").parse().unwrap();
    let d: usize = env("SEGCLUST_PCA_D", "3072").parse().unwrap();
    let k: usize = env("SEGCLUST_PCA_K", "100").parse().unwrap();
    let iters: Vec<usize> = env("SEGCLUST_PCA_ITERS", "4")
        .split(',')
        .map(|s| s.trim().parse().unwrap())
        .collect();
    let repeats: usize = env("SEGCLUST_PCA_REPEATS", "1").parse().unwrap();
    let want_exact = env("SEGCLUST_PCA_EXACT", "0") == "1";

    let t = Instant::now();
    let x = clustered_embeddings(n, d, 42);
    eprintln!(
        "data {n} x {d}: generated in {:.2} s, threads {}",
        t.elapsed().as_secs_f64(),
        rayon::current_num_threads()
    );
    let reference = want_exact.then(|| {
        let t = Instant::now();
        let mean = pca_cpu(
            &x,
            &PcaParams {
                components: 0,
                ..PcaParams::default()
            },
        )
        .unwrap()
        .mean;
        let r = exact_top_k(&x, &mean, k.min(n - 1));
        eprintln!("exact top-{k} in {:.1} s", t.elapsed().as_secs_f64());
        r
    });
    for &q in &iters {
        let p = PcaParams {
            components: k,
            power_iterations: q,
            ..PcaParams::default()
        };
        let mut best = f64::INFINITY;
        let mut pca = None;
        for _ in 0..repeats {
            let t = Instant::now();
            let out = pca_cpu(&x, &p).unwrap();
            best = best.min(t.elapsed().as_secs_f64());
            pca = Some(out);
        }
        let pca = pca.unwrap();
        let mut line = format!("q={q}: {best:.3} s");
        if let Some((vals, axes)) = &reference {
            let kk = pca.singular_values.len();
            let captured: f64 = pca
                .singular_values
                .iter()
                .map(|&s| f64::from(s).powi(2))
                .sum();
            let best_var: f64 = vals[..kk].iter().sum();
            let sv_err: Vec<f64> = pca
                .singular_values
                .iter()
                .zip(vals)
                .map(|(&s, &l)| (f64::from(s) - l.sqrt()).abs() / l.sqrt())
                .collect();
            let head = sv_err[..kk.min(10)].iter().copied().fold(0.0, f64::max);
            let all = sv_err.iter().copied().fold(0.0, f64::max);
            line += &format!(
                ", variance captured / exact top-k = {:.6}, subspace agreement = {:.6}, \
                 max sv rel err top-10 = {head:.2e}, all-k = {all:.2e}",
                captured / best_var,
                subspace_agreement(&pca.components, axes),
            );
        }
        eprintln!("{line}");
    }
    // Peak resident memory of the whole process (input + PCA), against the input's own size.
    if let Ok(status) = std::fs::read_to_string("/proc/self/status")
        && let Some(line) = status.lines().find(|l| l.starts_with("VmHWM"))
    {
        eprintln!("{line} (input {} MiB)", n * d * 4 / (1 << 20));
    }
}

#[test]
#[ignore = "micro-benchmark of the building blocks: run with --ignored --nocapture"]
fn pca_parts_timing() {
    use super::rsvd;
    let n: usize = std::env::var("SEGCLUST_PCA_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10000);
    let (d, l) = (3072, 110);
    let x = clustered_embeddings(n, d, 42);
    let xf = x.as_faer();
    let time = |what: &str, f: &mut dyn FnMut()| {
        let mut best = f64::INFINITY;
        for _ in 0..3 {
            let t = Instant::now();
            f();
            best = best.min(t.elapsed().as_secs_f64());
        }
        let gflop = 2.0 * (n * d * l) as f64 / 1e9;
        eprintln!(
            "{what}: {best:.4} s ({:.1} GFLOP/s if one N x D x l GEMM)",
            gflop / best
        );
    };
    let (mean64, _) = rsvd::column_stats(x.as_slice(), d);
    let mean: Vec<f32> = mean64.iter().map(|&m| m as f32).collect();
    time("column stats", &mut || {
        rsvd::column_stats(x.as_slice(), d);
    });
    let w = rsvd::gaussian_test_matrix(d, l, 1);
    let mut y = Mat::<f32>::zeros(n, l);
    time("X_c W (blocked, seq leaves)", &mut || {
        rsvd::centred_mul(xf, &mean, w.as_ref(), y.as_mut())
    });
    time("X W (faer Par::rayon(0))", &mut || {
        faer::linalg::matmul::matmul(
            y.as_mut(),
            faer::Accum::Replace,
            xf,
            w.as_ref(),
            1.0f32,
            faer::Par::rayon(0),
        )
    });
    let q = y.clone();
    time("X_c^T Q (blocked tree)", &mut || {
        rsvd::centred_tmul(xf, &mean, q.as_ref());
    });
    let mut z = Mat::<f32>::zeros(d, l);
    time("X^T Q (faer Par::rayon(0))", &mut || {
        faer::linalg::matmul::matmul(
            z.as_mut(),
            faer::Accum::Replace,
            xf.transpose(),
            q.as_ref(),
            1.0f32,
            faer::Par::rayon(0),
        )
    });
    time("orthonormalize N x l", &mut || {
        let mut t = q.clone();
        rsvd::orthonormalize(&mut t);
    });
    time("sequential Householder thin Q, N x l", &mut || {
        let mut t = q.clone();
        rsvd::householder_thin_q(t.as_mut());
    });
    time("orthonormalize D x l", &mut || {
        let mut t = z.clone();
        rsvd::orthonormalize(&mut t);
    });
    time("thin SVD D x l", &mut || {
        rsvd::thin_svd(z.as_ref()).unwrap();
    });
}

#[test]
fn flip_makes_each_columns_largest_entry_positive() {
    let mut s = Matrix::new(2, 2, vec![1.0, -3.0, -2.0, 0.5]).unwrap();
    let mut comp = Matrix::new(2, 1, vec![1.0, 1.0]).unwrap();
    flip_signs(&mut s, &mut comp);
    assert_eq!(s.as_slice(), &[-1.0, 3.0, 2.0, -0.5]);
    assert_eq!(comp.as_slice(), &[-1.0, -1.0]);
    // Ties go to the first row: +2 comes before -2, so nothing flips.
    let mut s = Matrix::new(2, 1, vec![2.0, -2.0]).unwrap();
    let mut comp = Matrix::new(1, 1, vec![1.0]).unwrap();
    flip_signs(&mut s, &mut comp);
    assert_eq!(
        (s.as_slice(), comp.as_slice()),
        (&[2.0, -2.0][..], &[1.0][..])
    );
}
