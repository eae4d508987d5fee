//! GPU vs CPU parity, plus the NVRTC compile check of the kernels.
//!
//! Without a usable GPU the parity test prints a loud SKIPPED line and passes, so this file
//! runs everywhere; tools/gpu_check.sh runs the prebuilt binary on the GPU machine.
//! Env: SEGCLUST_GPU_BIG=1 adds the 50k and 200k row MST cases; SEGCLUST_NVRTC_LIB_DIR (set by
//! tools/check_kernels.sh) turns on the NVRTC compile test on machines without a GPU.

#[path = "common/fixtures.rs"]
mod fixtures;

use fixtures::{
    ari, assert_fixture_runs, assert_spanning_tree, fixtures, same_bits, same_mst_weights,
};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use segclust::cluster::{self, HdbscanParams, MstEdge, Selection, TieOrder, prim};
use segclust::gpu::kernel_cache::Origin;
use segclust::gpu::{Gpu, KernelCache, KernelOptions, Screen, canary, compile_kernels};
use segclust::matrix::Matrix;
use segclust::reduce::{self, PcaParams};
use std::time::Instant;

#[test]
fn kernels_compile_with_nvrtc() {
    let Ok(dir) = std::env::var("SEGCLUST_NVRTC_LIB_DIR") else {
        eprintln!(
            "NVRTC compile test SKIPPED: set SEGCLUST_NVRTC_LIB_DIR (tools/check_kernels.sh does)"
        );
        return;
    };
    // sm_75 (T4) has no TF32 tensor cores: the kernels must still compile there, without them.
    for cc in [(9, 0), (8, 0), (7, 5)] {
        let ptx = compile_kernels(Some(cc), &KernelOptions::default())
            .unwrap_or_else(|e| panic!("NVRTC from {dir}: {e:#}"));
        let src = ptx.to_src();
        for entry in [
            "nearest_candidates",
            "leaf_candidates",
            "leaf_candidates_tf32",
        ] {
            assert!(
                src.contains(&format!(".entry {entry}")),
                "PTX lacks the kernel entry {entry}"
            );
        }
        assert!(
            src.contains(&format!(".target sm_{}{}", cc.0, cc.1)),
            "PTX for the wrong target"
        );
        assert_eq!(
            src.contains("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32"),
            cc.0 >= 8,
            "the TF32 screen's mma.sync in the PTX for sm_{}{}",
            cc.0,
            cc.1
        );
    }
    launch_bounds_are_a_build_option();
    kernel_cache_is_filled_ahead_of_time_and_read_back();
}

/// The directives between a kernel's `.entry` and its body (launch bounds among them).
fn entry_directives<'a>(ptx: &'a str, entry: &str) -> &'a str {
    let at = ptx
        .find(&format!(".entry {entry}("))
        .unwrap_or_else(|| panic!("no .entry {entry}"));
    let rest = &ptx[at..];
    &rest[..rest.find('{').unwrap_or(rest.len())]
}

/// `SEGCLUST_GPU_NVRTC_OPTIONS=-DLS_MIN_BLOCKS_TF32=5` reaches the TF32 kernel as launch
/// bounds, and only that kernel; without it no kernel has any.
fn launch_bounds_are_a_build_option() {
    let plain = compile_kernels(Some((9, 0)), &KernelOptions::default()).unwrap();
    let tuned = KernelOptions::parse("-DLS_MIN_BLOCKS_TF32=5").unwrap();
    let tuned = compile_kernels(Some((9, 0)), &tuned).unwrap();
    let (plain, tuned) = (plain.to_src(), tuned.to_src());
    for entry in ["leaf_candidates", "leaf_candidates_tf32"] {
        assert!(
            !entry_directives(&plain, entry).contains(".minnctapersm"),
            "{entry} has launch bounds by default"
        );
    }
    let tf32 = entry_directives(&tuned, "leaf_candidates_tf32");
    assert!(tf32.contains(".maxntid 128, 1, 1"), "{tf32}");
    assert!(tf32.contains(".minnctapersm 5"), "{tf32}");
    assert!(!entry_directives(&tuned, "leaf_candidates").contains(".minnctapersm"));
}

/// `segclust kernels` fills a cache with NVRTC's PTX; a process then takes the kernels from
/// there without compiling, and a damaged file is compiled again and repaired.
fn kernel_cache_is_filled_ahead_of_time_and_read_back() {
    let bin = env!("CARGO_BIN_EXE_segclust");
    if !std::path::Path::new(bin).exists() {
        // A prebuilt test executable carried to another host (tools/gpu_check.sh).
        eprintln!("kernel cache test SKIPPED: {bin} is not on this host");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_segclust"))
        .args([
            "kernels",
            "--arch",
            "9.0",
            "--arch",
            "8.0",
            "--kernel-cache",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cache = KernelCache::at(dir.path());
    for cc in [(9, 0), (8, 0)] {
        let file = cache.file(cc).unwrap();
        assert!(stdout.contains(&file.display().to_string()), "{stdout}");
        let (ptx, origin) = cache.kernels(cc).unwrap();
        assert_eq!(origin, Origin::Cache);
        assert_eq!(
            ptx.to_src(),
            compile_kernels(Some(cc), &KernelOptions::default())
                .unwrap()
                .to_src()
        );
    }
    let file = cache.file((9, 0)).unwrap();
    let whole = std::fs::read(&file).unwrap();
    std::fs::write(&file, &whole[..whole.len() / 2]).unwrap();
    assert_eq!(cache.kernels((9, 0)).unwrap().1, Origin::Compiled);
    assert_eq!(
        std::fs::read(&file).unwrap(),
        whole,
        "the damaged file is rewritten"
    );
    assert_eq!(cache.kernels((9, 0)).unwrap().1, Origin::Cache);

    let bad = std::process::Command::new(bin)
        .args(["kernels", "--arch", "nine", "--kernel-cache"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not a compute capability"));

    // A tuning build gets a file of its own, beside the default one, which stays as it was.
    let knob = "-DLS_MIN_BLOCKS_TF32=5";
    let out = std::process::Command::new(bin)
        .args(["kernels", "--arch", "9.0", "--kernel-cache"])
        .arg(dir.path())
        .env(KernelOptions::ENV, knob)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tuned = cache
        .clone()
        .with_options(KernelOptions::parse(knob).unwrap());
    let tuned_file = tuned.file((9, 0)).unwrap();
    assert_ne!(tuned_file, file);
    let (ptx, origin) = tuned.kernels((9, 0)).unwrap();
    assert_eq!(origin, Origin::Cache);
    assert!(entry_directives(&ptx.to_src(), "leaf_candidates_tf32").contains(".minnctapersm 5"));
    assert_eq!(std::fs::read(&file).unwrap(), whole);
    let bad = std::process::Command::new(bin)
        .args(["kernels", "--arch", "9.0", "--kernel-cache"])
        .arg(dir.path())
        .env(KernelOptions::ENV, "--use_fast_math")
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("only speed knobs"));
}

/// `n` points around `clusters` well-separated Gaussian centres in `d` dimensions.
fn blobs(n: usize, d: usize, clusters: usize, seed: u64) -> Matrix {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let centres: Vec<Vec<f32>> = (0..clusters)
        .map(|_| (0..d).map(|_| rng.random_range(-10.0f32..10.0)).collect())
        .collect();
    let mut data = Vec::with_capacity(n * d);
    for _ in 0..n {
        let c = &centres[rng.random_range(0..clusters)];
        let spread = 0.3 + 0.7 * rng.random::<f32>();
        data.extend(c.iter().map(|&m| {
            let z: f32 = StandardNormal.sample(&mut rng);
            m + spread * z
        }));
    }
    Matrix::new(n, d, data).expect("shape")
}

/// Rows with a decaying spectrum (well-separated singular values) plus a little noise.
fn spectral(n: usize, d: usize, rank: usize, seed: u64) -> Matrix {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut g = || -> f32 { StandardNormal.sample(&mut rng) };
    let basis: Vec<Vec<f32>> = (0..rank).map(|_| (0..d).map(|_| g()).collect()).collect();
    let mut data = vec![0.0f32; n * d];
    for i in 0..n {
        let row = &mut data[i * d..(i + 1) * d];
        for (r, b) in basis.iter().enumerate() {
            let coef = 10.0 * 0.85f32.powi(r as i32) * g();
            row.iter_mut().zip(b).for_each(|(v, &bv)| *v += coef * bv);
        }
        row.iter_mut().for_each(|v| *v += 0.01 * g() + 3.0);
    }
    Matrix::new(n, d, data).expect("shape")
}

fn total(mst: &[MstEdge]) -> f64 {
    mst.iter().map(|e| e.weight).sum()
}

/// Independent oracle: dense Prim on mutual reachability, all in f64.
fn prim_weight(x: &Matrix, min_samples: usize) -> f64 {
    let n = x.rows();
    let d2 = |a: usize, b: usize| -> f64 {
        x.row(a)
            .iter()
            .zip(x.row(b))
            .map(|(&p, &q)| (f64::from(p) - f64::from(q)).powi(2))
            .sum()
    };
    let core: Vec<f64> = (0..n)
        .map(|p| {
            let mut v: Vec<f64> = (0..n).map(|q| d2(p, q)).collect();
            v.sort_by(f64::total_cmp);
            v[min_samples - 1].sqrt()
        })
        .collect();
    let mut best = vec![f64::INFINITY; n];
    let mut done = vec![false; n];
    let mut cur = 0;
    let mut sum = 0.0;
    for _ in 1..n {
        done[cur] = true;
        let mut next = usize::MAX;
        for q in 0..n {
            if done[q] {
                continue;
            }
            let w = core[cur].max(core[q]).max(d2(cur, q).sqrt());
            best[q] = best[q].min(w);
            if next == usize::MAX || best[q] < best[next] {
                next = q;
            }
        }
        sum += best[next];
        cur = next;
    }
    sum
}

#[test]
fn gpu_matches_cpu() {
    let kernels = tempfile::tempdir().unwrap();
    let cache = KernelCache::at(kernels.path());
    let gpu = match Gpu::open(&cache) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("\n========\nGPU parity suite SKIPPED: no usable GPU ({e:#})\n========\n");
            return;
        }
    };
    assert_eq!(gpu.kernels_from(), Origin::Compiled);
    // A second process (here a second handle) loads the kept kernels without NVRTC.
    let started = Instant::now();
    let again = Gpu::open(&cache).expect("second handle on the GPU, kernels from the cache");
    assert_eq!(again.kernels_from(), Origin::Cache);
    eprintln!(
        "opened the GPU with cached kernels in {:.3}s",
        started.elapsed().as_secs_f64()
    );
    drop(again);
    eprintln!("GPU parity suite on {}", gpu.name());
    if gpu.tensor_cores() && std::env::var("SEGCLUST_GPU_SCREEN").is_err() {
        assert_eq!(
            gpu.screen(),
            Screen::Tf32,
            "the tensor cores' screen failed its start-up check (see the log)"
        );
    }
    mst_against_oracle(&gpu);
    fixtures_parity(&gpu);
    // Batches run on other threads than the one that opened the GPU.
    std::thread::scope(|s| {
        s.spawn(|| {
            let x = spectral(300, 40, 20, 1);
            gpu.pca(
                &x,
                &PcaParams {
                    components: 10,
                    ..PcaParams::default()
                },
            )
            .expect("PCA on another thread");
            gpu.mst(&x, 2).expect("MST on another thread");
        });
    });
    pca_against_exact_svd(&gpu);
    pca_parity(&gpu);
    pca_streamed(&gpu);
    let mut sizes = vec![1_000, 10_000];
    if std::env::var("SEGCLUST_GPU_BIG").is_ok_and(|v| v == "1") {
        sizes.extend([50_000, 200_000]);
    }
    for n in sizes {
        mst_parity(&gpu, n);
    }
    // Where the device has tensor cores, the MST parts again with the FP32 screen: the same
    // bar, and the very same tree as the TF32 screen's.
    if gpu.screen() == Screen::Tf32 {
        let mut gpu = gpu;
        let x = blobs(20_000, 32, 25, 77);
        // The start-up check's comparison, on a larger problem; it leaves the FP32 screen on.
        let agree = canary::screens_agree(|screen| {
            gpu.set_screen(screen)?;
            gpu.mst(&x, 3)
        });
        assert!(
            agree.expect("GPU MSTs with both screens"),
            "the screens' trees differ"
        );
        assert_eq!(gpu.screen(), Screen::F32);
        eprintln!("GPU parity suite, MST parts again on {}", gpu.name());
        mst_against_oracle(&gpu);
        fixtures_parity(&gpu);
        mst_parity(&gpu, 10_000);
    }
}

/// Sign-insensitive relative difference of two columns.
fn col_diff(a: &[f64], b: &[f64]) -> f64 {
    let norm = b.iter().map(|v| v * v).sum::<f64>().sqrt();
    let diff = |s: f64| {
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - s * y).powi(2))
            .sum::<f64>()
            .sqrt()
    };
    diff(1.0).min(diff(-1.0)) / norm
}

/// Oracle independent of the CPU path: an exact f64 SVD of the centred rows.
fn pca_against_exact_svd(gpu: &Gpu) {
    let (n, d, k) = (2_000, 128, 24);
    let x = spectral(n, d, 60, 42);
    let g = gpu
        .pca(
            &x,
            &PcaParams {
                components: k,
                ..PcaParams::default()
            },
        )
        .expect("GPU PCA");
    let mean: Vec<f64> = (0..d)
        .map(|j| (0..n).map(|i| f64::from(x.row(i)[j])).sum::<f64>() / n as f64)
        .collect();
    let xc = faer::Mat::<f64>::from_fn(n, d, |i, j| f64::from(x.row(i)[j]) - mean[j]);
    let svd = xc.thin_svd().expect("exact SVD");
    for j in 0..k {
        let exact: Vec<f64> = (0..n).map(|i| svd.U()[(i, j)] * svd.S()[j]).collect();
        let got: Vec<f64> = (0..n).map(|i| f64::from(g.projected.row(i)[j])).collect();
        let rel = col_diff(&got, &exact);
        assert!(rel < 1e-3, "GPU PCA column {j} vs exact SVD: {rel:e}");
        let (sg, se) = (f64::from(g.singular_values[j]), svd.S()[j]);
        assert!(
            (sg - se).abs() <= 1e-3 * se,
            "singular value {j}: {sg} vs exact {se}"
        );
        // svd_flip: the largest-magnitude score of each column is positive.
        let big = got
            .iter()
            .copied()
            .fold(0.0f64, |m, v| if v.abs() > m.abs() { v } else { m });
        assert!(big > 0.0, "column {j}: largest score {big} is not positive");
    }
    let norms: Vec<f64> = (0..k)
        .map(|j| {
            g.components
                .row(j)
                .iter()
                .map(|&v| f64::from(v).powi(2))
                .sum()
        })
        .collect();
    assert!(
        norms.iter().all(|&v| (v - 1.0).abs() < 1e-4),
        "components not unit length: {norms:?}"
    );
}

fn pca_parity(gpu: &Gpu) {
    for (n, d, k) in [(3_000, 256, 32), (500, 64, 20)] {
        let x = spectral(n, d, 60, n as u64);
        let params = PcaParams {
            components: k,
            ..PcaParams::default()
        };
        let t = Instant::now();
        let g = gpu
            .pca(&x, &params)
            .unwrap_or_else(|e| panic!("GPU PCA {n} x {d}: {e:#}"));
        let tg = t.elapsed();
        let t = Instant::now();
        let c = reduce::pca_cpu(&x, &params).expect("CPU PCA");
        let tc = t.elapsed();
        eprintln!("PCA {n} x {d} -> {k}: gpu {tg:?}, cpu {tc:?}");
        assert_eq!(g.projected.rows(), n);
        assert_eq!(g.projected.cols(), k);
        assert_eq!(c.projected.cols(), k, "CPU PCA shape");
        for (a, b) in g.mean.iter().zip(&c.mean) {
            assert!((a - b).abs() <= 1e-4 * (1.0 + b.abs()), "mean {a} vs {b}");
        }
        for j in 0..k {
            let col = |m: &Matrix| (0..n).map(|i| f64::from(m.row(i)[j])).collect::<Vec<_>>();
            let (a, b) = (col(&g.projected), col(&c.projected));
            let rel = col_diff(&a, &b);
            assert!(
                rel < 1e-3,
                "PCA {n} x {d} column {j}: relative difference {rel:e}"
            );
            let (sg, sc) = (g.singular_values[j], c.singular_values[j]);
            assert!(
                (sg - sc).abs() <= 1e-3 * sc,
                "singular value {j}: {sg} vs {sc}"
            );
        }
    }
}

/// A PCA whose rows do not fit the memory it may use streams them in blocks (and a resident
/// X of 184 MB goes up in pinned pieces): both must match the CPU.
fn pca_streamed(gpu: &Gpu) {
    let (n, d, k) = (60_000, 768, 32);
    let x = spectral(n, d, 60, 11);
    let params = PcaParams {
        components: k,
        ..PcaParams::default()
    };
    let resident = gpu.pca(&x, &params).expect("GPU PCA, resident");
    // What the PCA needs besides X, plus a third of X: X cannot be resident.
    let mut small = Gpu::open(&KernelCache::off()).expect("second handle on the GPU");
    small.limit_memory(segclust::gpu::pca_bytes_besides_rows(n, d, &params) + n * d * 4 / 3);
    let t = Instant::now();
    let streamed = small.pca(&x, &params).expect("GPU PCA, streamed");
    eprintln!("PCA {n} x {d} streamed in blocks: {:?}", t.elapsed());
    let cpu = reduce::pca_cpu(&x, &params).expect("CPU PCA");
    for j in 0..k {
        let col = |m: &Matrix| (0..n).map(|i| f64::from(m.row(i)[j])).collect::<Vec<_>>();
        let s = col(&streamed.projected);
        let rel = col_diff(&s, &col(&resident.projected));
        assert!(rel < 1e-4, "streamed vs resident column {j}: {rel:e}");
        let rel = col_diff(&s, &col(&cpu.projected));
        assert!(rel < 1e-3, "streamed vs CPU column {j}: {rel:e}");
    }
}

fn mst_against_oracle(gpu: &Gpu) {
    for (n, d, ms) in [(800, 8, 2), (800, 8, 5), (600, 40, 3), (300, 3, 1)] {
        let x = blobs(n, d, 6, (n + d + ms) as u64);
        let mst = gpu
            .mst(&x, ms)
            .unwrap_or_else(|e| panic!("GPU MST {n} x {d}: {e:#}"));
        assert_spanning_tree(n, &mst);
        let (w, oracle) = (total(&mst), prim_weight(&x, ms));
        assert!(
            (w - oracle).abs() <= 1e-9 * oracle,
            "{n} x {d} ms {ms}: GPU {w} vs Prim {oracle}"
        );
    }
    // Unsupported input is an Err (the Device then uses the CPU), never a panic.
    let x = blobs(100, 4, 2, 3);
    assert!(
        gpu.mst(&x, 60).is_err(),
        "min_samples beyond the kernel's list must be refused"
    );
    let mut bad = x.clone();
    bad.row_mut(5)[1] = f32::NAN;
    assert!(gpu.mst(&bad, 2).is_err() && gpu.pca(&bad, &PcaParams::default()).is_err());
    // Exact duplicates and ties must not break anything.
    let mut x = blobs(400, 4, 3, 9);
    for i in 0..100 {
        let r = x.row(i).to_vec();
        x.row_mut(i + 200).copy_from_slice(&r);
    }
    let mst = gpu.mst(&x, 3).expect("GPU MST with duplicates");
    assert_spanning_tree(400, &mst);
    let oracle = prim_weight(&x, 3);
    assert!((total(&mst) - oracle).abs() <= 1e-9 * oracle.max(1.0));
}

/// The scikit-learn fixtures through the GPU MST (called directly: `Device::hdbscan` keeps
/// inputs this small on the CPU): Prim's weights to the bit and, in the canonical order of
/// equal merges, Prim's labels and probabilities on every run, ties included.
fn fixtures_parity(gpu: &Gpu) {
    let (mut runs, mut failures) = (0, Vec::new());
    for (fx, x) in fixtures() {
        let mut done = Vec::new();
        for run in &fx.runs {
            let what = run.describe(&fx.name);
            if x.rows() < 2 || done.contains(&run.min_samples) {
                continue;
            }
            done.push(run.min_samples);
            let g = match gpu.mst(&x, run.min_samples) {
                Ok(g) => g,
                Err(e) => {
                    failures.push(format!("{what}: GPU MST failed: {e:#}"));
                    continue;
                }
            };
            assert_spanning_tree(x.rows(), &g);
            let c = prim::mst(&x, run.min_samples);
            if !same_mst_weights(&g, &c) {
                failures.push(format!("{what}: GPU MST weights differ from Prim's"));
            }
            for r in fx.runs.iter().filter(|r| r.min_samples == run.min_samples) {
                let params = r.params();
                let lg =
                    cluster::labels_with_ties(x.rows(), g.clone(), TieOrder::Canonical, &params);
                let lc =
                    cluster::labels_with_ties(x.rows(), c.clone(), TieOrder::Canonical, &params);
                runs += 1;
                if lg != lc {
                    failures.push(format!(
                        "{}: GPU labels differ from the CPU's",
                        r.describe(&fx.name)
                    ));
                }
            }
        }
    }
    assert_fixture_runs("GPU fixtures", runs, &failures);
}

fn mst_parity(gpu: &Gpu, n: usize) {
    let d = 32;
    let mut x = blobs(n, d, 25, n as u64);
    // One row in twenty repeated exactly: ties at zero and at every distance to a copy.
    for i in 0..n / 20 {
        let r = x.row(i).to_vec();
        x.row_mut(n / 2 + i).copy_from_slice(&r);
    }
    for ms in [2, 5] {
        let t = Instant::now();
        let g = gpu
            .mst(&x, ms)
            .unwrap_or_else(|e| panic!("GPU MST {n}: {e:#}"));
        let tg = t.elapsed();
        let t = Instant::now();
        let c = cluster::mst_cpu(&x, ms).expect("CPU MST");
        let tc = t.elapsed();
        eprintln!("MST {n} x {d} min_samples {ms}: gpu {tg:?}, cpu {tc:?}");
        assert_spanning_tree(n, &g);
        assert!(
            same_mst_weights(&g, &c),
            "MST {n} ms {ms}: GPU weights differ from the CPU's"
        );
        for selection in [Selection::Leaf, Selection::Eom] {
            let params = HdbscanParams {
                min_cluster_size: 10,
                min_samples: ms,
                selection,
                ..HdbscanParams::default()
            };
            let lg = cluster::labels_with_ties(n, g.clone(), TieOrder::Canonical, &params);
            let lc = cluster::labels_with_ties(n, c.clone(), TieOrder::Canonical, &params);
            assert!(
                lg.labels == lc.labels,
                "MST {n} ms {ms} {selection:?}: labels differ (ARI {})",
                ari(&lg.labels, &lc.labels)
            );
            assert!(
                same_bits(&lg.probabilities, &lc.probabilities),
                "MST {n} ms {ms} {selection:?}: probabilities differ"
            );
        }
    }
}

/// Timings at production shapes (GPU only, no CPU comparison): SEGCLUST_GPU_TIMING=1.
#[test]
fn gpu_timing() {
    if std::env::var("SEGCLUST_GPU_TIMING").map_or(true, |v| v != "1") {
        return;
    }
    let gpu = match Gpu::open(&KernelCache::off()) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("GPU timing SKIPPED: no usable GPU ({e:#})");
            return;
        }
    };
    for n in [100_000, 300_000] {
        let x = blobs(n, 3072, 200, 5);
        let params = PcaParams::default();
        for run in 0..2 {
            let t = Instant::now();
            let p = gpu.pca(&x, &params).expect("GPU PCA");
            eprintln!(
                "PCA {n} x 3072 -> {} (run {run}): {:?}",
                p.projected.cols(),
                t.elapsed()
            );
            if run == 1 {
                let t = Instant::now();
                let mst = gpu.mst(&p.projected, 2).expect("GPU MST");
                eprintln!("MST {n} x {}: {:?}", p.projected.cols(), t.elapsed());
                assert_spanning_tree(n, &mst);
            }
        }
    }
}
