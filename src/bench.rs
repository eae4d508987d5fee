//! `segclust bench`: times PCA and HDBSCAN separately on synthetic clustered embeddings and, in
//! the same run, the Python reference (scikit-learn) on the very same input, printing ratios.
//!
//! Same-run ratios are what count on a shared machine: absolute seconds drift with load, the
//! ratio between two programs timed back to back on one input much less.

use crate::cluster::HdbscanParams;
use crate::device::Device;
use crate::matrix::Matrix;
use crate::reduce::PcaParams;
use anyhow::{Context, Result};
use rand::{Rng, SeedableRng, rngs::StdRng};
use rand_distr::StandardNormal;
use rayon::prelude::*;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// Synthetic embeddings shaped like replay descriptions: `n / 25` problems of skewed sizes
/// (a few large, a long tail), 20% unrelated noise rows, every row unit length.
/// Rows are generated in parallel from per-row seeds, so the data does not depend on threads.
pub fn synthetic_embeddings(n: usize, dim: usize, seed: u64) -> (Matrix, Vec<i64>) {
    let clusters = (n / 25).max(1);
    let mut rng = StdRng::seed_from_u64(seed);
    let centers: Vec<Vec<f32>> = (0..clusters)
        .map(|_| gaussian_unit(&mut rng, dim))
        .collect();
    let truth = pick_problems(n, clusters, &mut rng);
    let mut data = vec![0.0f32; n * dim];
    data.par_chunks_mut(dim).enumerate().for_each(|(i, row)| {
        let mut r = StdRng::seed_from_u64(seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
        match truth[i] {
            -1 => row.copy_from_slice(&gaussian_unit(&mut r, dim)),
            c => {
                // Spread so members sit at cosine distance ~0.1 from their centre.
                let s = 0.5 / (dim as f32).sqrt();
                for (v, &m) in row.iter_mut().zip(&centers[c as usize]) {
                    *v = m + s * r.sample::<f32, _>(StandardNormal);
                }
            }
        }
        crate::matrix::normalize(row);
    });
    (
        Matrix::new(n, dim, data).expect("shape is n x dim by construction"),
        truth,
    )
}

/// Each row's problem, or -1 for noise: Zipf-like sizes (problem c has weight 1/(c+1)), 20% of
/// rows noise. A binary search over the cumulative weights: a walk along them cost O(clusters)
/// a row, which at the millions of rows a GPU takes was minutes of one core before the bench.
fn pick_problems(n: usize, clusters: usize, rng: &mut StdRng) -> Vec<i64> {
    let cumulative: Vec<f64> = (0..clusters)
        .scan(0.0, |sum, c| {
            *sum += 1.0 / (c as f64 + 1.0);
            Some(*sum)
        })
        .collect();
    let total = cumulative.last().copied().unwrap_or(0.0);
    (0..n)
        .map(|_| {
            if rng.random::<f64>() < 0.2 {
                return -1;
            }
            let u = rng.random::<f64>() * total;
            cumulative.partition_point(|&s| s < u).min(clusters - 1) as i64
        })
        .collect()
}

fn gaussian_unit(rng: &mut StdRng, dim: usize) -> Vec<f32> {
    let mut v: Vec<f32> = (0..dim).map(|_| rng.sample(StandardNormal)).collect();
    crate::matrix::normalize(&mut v);
    v
}

/// One line of the table.
#[derive(Clone, Debug, serde::Serialize)]
pub struct BenchRow {
    pub n: usize,
    pub dim: usize,
    pub device: String,
    pub pca_s: f64,
    pub hdbscan_s: f64,
    pub clusters: usize,
    pub sklearn_pca_s: Option<f64>,
    pub sklearn_hdbscan_s: Option<f64>,
    /// With `--compare-cpu`: the CPU path on the same input, timed in the same run.
    pub cpu: Option<CpuComparison>,
    /// Stages the device handed to the CPU (a GPU failure, or a GPU resting after failures):
    /// their seconds are the CPU's, not the device's.
    pub on_cpu_instead: Vec<String>,
}

/// The CPU path beside the device's, for the GPU bars (speed-up at one size, same labels).
#[derive(Clone, Debug, serde::Serialize)]
pub struct CpuComparison {
    pub pca_s: f64,
    /// HDBSCAN on the device's projection, so the labels can be compared exactly.
    pub hdbscan_s: f64,
    /// The CPU's labels equal the device's, ids included.
    pub same_labels: bool,
}

pub struct BenchOptions {
    pub sizes: Vec<usize>,
    pub dim: usize,
    pub pca: PcaParams,
    pub hdbscan: HdbscanParams,
    /// Python with scikit-learn for the reference, or None to skip it.
    pub python: Option<String>,
    /// Largest N for which scikit-learn's HDBSCAN is run (it is O(N^2) in 100 dims).
    pub sklearn_hdbscan_max_n: usize,
    /// Where to keep each size's input and PCA projection, if anywhere.
    pub save_inputs: Option<std::path::PathBuf>,
    /// Also time the CPU path on each input (`CpuComparison`).
    pub compare_cpu: bool,
    /// After `sizes`, the largest batch the GPU takes whole (`largest_that_fits`).
    pub largest_that_fits: bool,
}

/// Host bytes a bench row needs besides its own floats and its share of the problems' centres:
/// the projection, the GPU MST's copy of it, lists and labels. Generous on purpose: running
/// out of host memory kills the process, where a smaller batch only measures a little less.
const HOST_BYTES_PER_ROW_BESIDES_X: usize = 4096;

/// The largest batch of `opts.dim`-wide rows the GPU takes whole
/// (`Device::largest_gpu_batch`), within 80% of the host's available memory.
pub fn largest_that_fits(device: &Device, opts: &BenchOptions) -> Result<usize> {
    let gpu_rows = device.largest_gpu_batch(opts.dim, &opts.pca)?;
    // X, and the centres synthetic_embeddings draws: one per 25 rows.
    let per_row = opts.dim * 4 + opts.dim * 4 / 25 + HOST_BYTES_PER_ROW_BESIDES_X;
    let host = available_host_memory();
    let host_rows = host.map(|bytes| bytes / 5 * 4 / per_row);
    let n = host_rows.map_or(gpu_rows, |h| h.min(gpu_rows));
    tracing::info!(
        gpu_rows,
        host_rows,
        host_available_mib = host.map(|b| b >> 20),
        n,
        "largest batch that fits: {}",
        match host_rows {
            Some(h) if h < gpu_rows => "host memory is the limit",
            Some(_) => "GPU memory is the limit",
            None => "GPU memory (host memory unknown: no MemAvailable in /proc/meminfo)",
        }
    );
    if n < 2 {
        anyhow::bail!(
            "not even two rows of {} columns fit (GPU: {gpu_rows} rows, host: {host_rows:?})",
            opts.dim
        );
    }
    Ok(n)
}

/// MemAvailable from /proc/meminfo, in bytes (None off Linux or when it cannot be read).
fn available_host_memory() -> Option<usize> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    parse_mem_available(&text)
}

fn parse_mem_available(meminfo: &str) -> Option<usize> {
    let kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))?
        .trim()
        .strip_suffix("kB")?
        .trim()
        .parse::<usize>()
        .ok()?;
    kib.checked_mul(1024)
}

pub fn run(device: &Device, opts: &BenchOptions, workdir: &Path) -> Result<Vec<BenchRow>> {
    let mut rows = Vec::new();
    let mut sizes = opts.sizes.clone();
    if opts.largest_that_fits {
        sizes.push(largest_that_fits(device, opts)?);
    }
    for n in sizes {
        let span = tracing::info_span!("bench", n, dim = opts.dim);
        let _g = span.enter();
        let (x, _) = synthetic_embeddings(n, opts.dim, 42);
        let handed_over = || device.gpu_fallbacks() + device.gpu_skips();
        let mut on_cpu_instead = Vec::new();
        let before = handed_over();
        let t = Instant::now();
        let pca = device.pca(&x, &opts.pca)?;
        let pca_s = t.elapsed().as_secs_f64();
        if handed_over() > before {
            on_cpu_instead.push("PCA".to_string());
        }
        let before = handed_over();
        let t = Instant::now();
        let clustering = device.hdbscan(&pca.projected, &opts.hdbscan)?;
        let hdbscan_s = t.elapsed().as_secs_f64();
        if handed_over() > before {
            on_cpu_instead.push("HDBSCAN".to_string());
        }
        if let Some(dir) = &opts.save_inputs {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("could not create {}", dir.display()))?;
            let stem = dir.join(format!("synthetic-{n}x{}", opts.dim));
            crate::npy::write_matrix(stem.with_extension("npy"), &x)?;
            crate::npy::write_matrix(stem.with_extension("pca.npy"), &pca.projected)?;
        }
        tracing::info!(
            pca_s,
            hdbscan_s,
            clusters = clustering.n_clusters(),
            "segclust done"
        );
        let mut row = BenchRow {
            n,
            dim: opts.dim,
            device: device.name(),
            pca_s,
            hdbscan_s,
            clusters: clustering.n_clusters(),
            sklearn_pca_s: None,
            sklearn_hdbscan_s: None,
            cpu: None,
            on_cpu_instead,
        };
        if opts.compare_cpu {
            row.cpu = Some(compare_cpu(&x, &pca.projected, &clustering, opts)?);
        }
        if let Some(py) = &opts.python {
            let path = workdir.join(format!("bench-{n}x{}.npy", opts.dim));
            crate::npy::write_matrix(&path, &x)?;
            drop(x);
            let (p, h) = sklearn(py, &path, opts, n > opts.sklearn_hdbscan_max_n)?;
            row.sklearn_pca_s = Some(p);
            row.sklearn_hdbscan_s = h;
            let _ = std::fs::remove_file(&path);
        }
        rows.push(row);
    }
    Ok(rows)
}

/// The CPU path on the same rows: PCA on the input, then HDBSCAN on the device's projection
/// (the same work as on its own projection, and exactly comparable labels: both MSTs are exact
/// and equal merges go in the canonical order).
fn compare_cpu(
    x: &Matrix,
    projected: &Matrix,
    device_labels: &crate::cluster::Clustering,
    opts: &BenchOptions,
) -> Result<CpuComparison> {
    let _g = tracing::info_span!("cpu comparison").entered();
    let cpu = Device::cpu();
    let t = Instant::now();
    cpu.pca(x, &opts.pca)?;
    let pca_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let c = cpu.hdbscan(projected, &opts.hdbscan)?;
    let hdbscan_s = t.elapsed().as_secs_f64();
    let same_labels = c.labels == device_labels.labels;
    tracing::info!(pca_s, hdbscan_s, same_labels, "cpu comparison done");
    Ok(CpuComparison {
        pca_s,
        hdbscan_s,
        same_labels,
    })
}

fn sklearn(
    py: &str,
    x: &Path,
    opts: &BenchOptions,
    skip_hdbscan: bool,
) -> Result<(f64, Option<f64>)> {
    // The source tree's copy, or one beside the working directory (a prebuilt binary on a GPU host).
    let built = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/bench_sklearn.py");
    let script = if built.exists() {
        built
    } else {
        Path::new("tools/bench_sklearn.py").to_path_buf()
    };
    let mut cmd = Command::new(py);
    cmd.arg(&script)
        .arg(x)
        .args(["--components", &opts.pca.components.to_string()])
        .args([
            "--min-cluster-size",
            &opts.hdbscan.min_cluster_size.to_string(),
        ])
        .args(["--min-samples", &opts.hdbscan.min_samples.to_string()])
        .args([
            "--selection",
            if opts.hdbscan.selection == crate::cluster::Selection::Leaf {
                "leaf"
            } else {
                "eom"
            },
        ]);
    if skip_hdbscan {
        cmd.arg("--skip-hdbscan");
    }
    let out = cmd.output().with_context(|| {
        format!(
            "could not start {py} for the scikit-learn reference (pass --no-sklearn to skip it)"
        )
    })?;
    anyhow::ensure!(
        out.status.success(),
        "the scikit-learn reference failed (is scikit-learn installed? `pip install -r tools/requirements.txt`): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(line.trim())
        .context("unexpected output from tools/bench_sklearn.py")?;
    let pca = v["pca_s"]
        .as_f64()
        .context("no pca_s from tools/bench_sklearn.py")?;
    Ok((pca, v["hdbscan_s"].as_f64()))
}

/// The table printed by `segclust bench` (Markdown, so it can go straight into BENCHMARKS.md).
pub fn table(rows: &[BenchRow]) -> String {
    let ratio = |a: Option<f64>, b: f64| a.map_or("-".to_string(), |a| format!("{:.1}x", a / b));
    let secs = |a: Option<f64>| a.map_or("not run".to_string(), |a| format!("{a:.2}"));
    let mut s = String::from(
        "| N | D | device | PCA s | HDBSCAN s | total s | clusters | sklearn PCA s | sklearn HDBSCAN s | PCA speed-up | HDBSCAN speed-up | total speed-up |\n|---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let device = |r: &BenchRow| {
        if r.on_cpu_instead.is_empty() {
            r.device.clone()
        } else {
            format!("{} (on the CPU: {})", r.device, r.on_cpu_instead.join(", "))
        }
    };
    for r in rows {
        let total = r.pca_s + r.hdbscan_s;
        let sk_total = r.sklearn_pca_s.zip(r.sklearn_hdbscan_s).map(|(a, b)| a + b);
        s.push_str(&format!(
            "| {} | {} | {} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {} | {} | {} |\n",
            r.n,
            r.dim,
            device(r),
            r.pca_s,
            r.hdbscan_s,
            total,
            r.clusters,
            secs(r.sklearn_pca_s),
            secs(r.sklearn_hdbscan_s),
            ratio(r.sklearn_pca_s, r.pca_s),
            ratio(r.sklearn_hdbscan_s, r.hdbscan_s),
            ratio(sk_total, total),
        ));
    }
    if rows.iter().any(|r| r.cpu.is_some()) {
        s.push_str(
            "\n| N | device | total s | CPU PCA s | CPU HDBSCAN s | CPU total s | speed-up vs CPU | same labels |\n|---|---|---|---|---|---|---|---|\n",
        );
        for r in rows {
            let Some(c) = &r.cpu else { continue };
            let (total, cpu_total) = (r.pca_s + r.hdbscan_s, c.pca_s + c.hdbscan_s);
            s.push_str(&format!(
                "| {} | {} | {:.2} | {:.2} | {:.2} | {:.2} | {:.1}x | {} |\n",
                r.n,
                device(r),
                total,
                c.pca_s,
                c.hdbscan_s,
                cpu_total,
                cpu_total / total,
                if c.same_labels { "yes" } else { "NO" },
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes the bench's synthetic input (and its PCA projection) as .npy files, for timing
    /// `segclust cluster` and measuring its peak memory on exactly the data `bench` uses:
    /// `SEGCLUST_SYNTH_N=50000 SEGCLUST_SYNTH_OUT=/tmp/s50k cargo test --lib write_synthetic_npy
    /// -- --ignored` writes `/tmp/s50k.npy` (N x 3072) and `/tmp/s50k.pca.npy` (N x 100).
    #[test]
    #[ignore = "writes large files; run by hand for benchmarks"]
    fn write_synthetic_npy() {
        let n: usize = std::env::var("SEGCLUST_SYNTH_N").map_or(50_000, |v| {
            v.parse().expect("SEGCLUST_SYNTH_N is a row count")
        });
        let out = std::env::var("SEGCLUST_SYNTH_OUT").unwrap_or_else(|_| format!("/tmp/synth-{n}"));
        let (x, _) = synthetic_embeddings(n, 3072, 42);
        crate::npy::write_matrix(format!("{out}.npy"), &x).expect("write the input");
        if std::env::var("SEGCLUST_SYNTH_PCA").is_ok_and(|v| v == "1") {
            let p = crate::reduce::pca_cpu(&x, &PcaParams::default()).expect("PCA");
            crate::npy::write_matrix(format!("{out}.pca.npy"), &p.projected).expect("write PCA");
        }
    }

    /// The walk `pick_problems` replaced, kept to show the search picks the same problems (the
    /// benchmarks' data, and so their figures, stay comparable across versions).
    fn pick_problems_by_walking(n: usize, clusters: usize, rng: &mut StdRng) -> Vec<i64> {
        let weights: Vec<f64> = (0..clusters).map(|c| 1.0 / (c as f64 + 1.0)).collect();
        let total: f64 = weights.iter().sum();
        let mut truth = Vec::with_capacity(n);
        for _ in 0..n {
            if rng.random::<f64>() < 0.2 {
                truth.push(-1);
                continue;
            }
            let mut u = rng.random::<f64>() * total;
            let mut c = 0;
            while c + 1 < clusters && u > weights[c] {
                u -= weights[c];
                c += 1;
            }
            truth.push(c as i64);
        }
        truth
    }

    #[test]
    fn problems_are_picked_as_the_walk_picked_them() {
        for (n, clusters, seed) in [(200_000, 8_000, 42), (50_000, 1, 3), (30_000, 37, 9)] {
            let rng = StdRng::seed_from_u64(seed);
            let searched = pick_problems(n, clusters, &mut rng.clone());
            assert_eq!(
                searched,
                pick_problems_by_walking(n, clusters, &mut rng.clone())
            );
        }
    }

    #[test]
    fn synthetic_data_is_deterministic_unit_and_clustered() {
        let (a, truth) = synthetic_embeddings(500, 64, 7);
        let (b, _) = synthetic_embeddings(500, 64, 7);
        assert_eq!(a, b);
        for i in 0..a.rows() {
            let n: f32 = a.row(i).iter().map(|x| x * x).sum();
            assert!((n - 1.0).abs() < 1e-4);
        }
        let noise = truth.iter().filter(|&&t| t < 0).count();
        assert!(noise > 50 && noise < 150, "about 20% noise, got {noise}");
        // Members of one cluster are much closer to each other than to other clusters.
        let pair = |c: i64| {
            truth
                .iter()
                .enumerate()
                .filter(|(_, t)| **t == c)
                .map(|(i, _)| i)
                .take(2)
                .collect::<Vec<_>>()
        };
        let (p0, p1) = (pair(0), pair(1));
        let d = |i: usize, j: usize| crate::matrix::cosine_distance_unit(a.row(i), a.row(j));
        assert!(d(p0[0], p0[1]) < 0.5 && d(p0[0], p1[0]) > 0.7);
    }

    #[test]
    fn compare_cpu_times_the_cpu_path_and_checks_its_labels() {
        let opts = BenchOptions {
            sizes: vec![1_500],
            dim: 64,
            pca: PcaParams {
                components: 10,
                ..PcaParams::default()
            },
            hdbscan: HdbscanParams {
                min_samples: 3,
                ..HdbscanParams::default()
            },
            python: None,
            sklearn_hdbscan_max_n: 0,
            save_inputs: None,
            compare_cpu: true,
            largest_that_fits: false,
        };
        let dir = std::env::temp_dir();
        let rows = run(&Device::cpu(), &opts, &dir).expect("bench");
        let c = rows[0].cpu.as_ref().expect("the CPU comparison ran");
        assert!(c.same_labels, "the CPU disagrees with itself");
        assert!(c.pca_s > 0.0 && c.hdbscan_s > 0.0);
        let t = table(&rows);
        assert!(t.contains("| speed-up vs CPU | same labels |"), "{t}");
        assert!(
            t.lines().last().is_some_and(|l| l.ends_with("| yes |")),
            "{t}"
        );
        let mut rows = rows;
        rows[0].cpu = None;
        assert!(!table(&rows).contains("same labels"));
    }

    /// A GPU that fails every stage.
    struct Broken;

    impl crate::device::Accelerator for Broken {
        fn name(&self) -> String {
            "broken test device".into()
        }
        fn pca(&self, _: &Matrix, _: &PcaParams) -> Result<crate::reduce::Pca> {
            anyhow::bail!("CUDA_ERROR_LAUNCH_FAILED")
        }
        fn mst(&self, _: &Matrix, _: usize) -> Result<Vec<crate::cluster::MstEdge>> {
            anyhow::bail!("CUDA_ERROR_LAUNCH_FAILED")
        }
    }

    /// A GPU with `memory` bytes free that computes on the CPU.
    struct Roomy {
        memory: usize,
    }

    impl crate::device::Accelerator for Roomy {
        fn name(&self) -> String {
            "roomy test device".into()
        }
        fn pca(&self, x: &Matrix, p: &PcaParams) -> Result<crate::reduce::Pca> {
            crate::reduce::pca_cpu(x, p)
        }
        fn mst(&self, x: &Matrix, min_samples: usize) -> Result<Vec<crate::cluster::MstEdge>> {
            crate::cluster::mst_cpu(x, min_samples)
        }
        fn planning_memory(&self) -> Result<usize> {
            Ok(self.memory)
        }
    }

    #[test]
    fn the_largest_batch_is_sized_to_the_gpus_memory() {
        let pca = PcaParams {
            components: 8,
            ..PcaParams::default()
        };
        let opts = BenchOptions {
            sizes: Vec::new(),
            dim: 48,
            pca: pca.clone(),
            hdbscan: HdbscanParams::default(),
            python: None,
            sklearn_hdbscan_max_n: 0,
            save_inputs: None,
            compare_cpu: false,
            largest_that_fits: true,
        };
        // Room for 3,000 rows and their sketches (the host has far more than that).
        let memory = crate::gpu::pca_bytes_besides_rows(3_000, 48, &pca) + 3_000 * 48 * 4;
        let device = Device::with_accelerator(Box::new(Roomy { memory }));
        let rows = run(&device, &opts, &std::env::temp_dir()).expect("bench");
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].n, 3_000);
        assert!(
            rows[0].on_cpu_instead.is_empty(),
            "{:?}",
            rows[0].on_cpu_instead
        );
        let e = run(&Device::cpu(), &opts, &std::env::temp_dir()).unwrap_err();
        assert!(format!("{e:#}").contains("needs a usable GPU"), "{e:#}");
        let tiny = Device::with_accelerator(Box::new(Roomy { memory: 1_000 }));
        let e = largest_that_fits(&tiny, &opts).unwrap_err();
        assert!(format!("{e:#}").contains("not even two rows"), "{e:#}");
    }

    #[test]
    fn available_memory_is_read_from_meminfo() {
        let text = "MemTotal:       24589036 kB\nMemFree:  1 kB\nMemAvailable:   20000000 kB\n";
        assert_eq!(parse_mem_available(text), Some(20_000_000 * 1024));
        assert_eq!(parse_mem_available("MemTotal: 5 kB\n"), None);
        assert_eq!(parse_mem_available("MemAvailable: lots\n"), None);
        if cfg!(target_os = "linux") {
            assert!(available_host_memory().is_some_and(|b| b > 1 << 20));
        }
    }

    /// Seconds timed on the CPU after a GPU failure must not pass for the GPU's.
    #[test]
    fn stages_the_gpu_handed_to_the_cpu_are_marked() {
        let opts = BenchOptions {
            sizes: vec![crate::cluster::PRIM_MAX_ROWS + 100],
            dim: 32,
            pca: PcaParams {
                components: 8,
                ..PcaParams::default()
            },
            hdbscan: HdbscanParams::default(),
            python: None,
            sklearn_hdbscan_max_n: 0,
            save_inputs: None,
            compare_cpu: false,
            largest_that_fits: false,
        };
        let dir = std::env::temp_dir();
        let device = Device::with_accelerator(Box::new(Broken));
        let rows = run(&device, &opts, &dir).expect("bench");
        assert_eq!(rows[0].on_cpu_instead, ["PCA", "HDBSCAN"]);
        let t = table(&rows);
        assert!(
            t.contains("| gpu (broken test device) (on the CPU: PCA, HDBSCAN) |"),
            "{t}"
        );
        let rows = run(&Device::cpu(), &opts, &dir).expect("bench");
        assert!(rows[0].on_cpu_instead.is_empty());
        assert!(!table(&rows).contains("on the CPU"));
    }
}
