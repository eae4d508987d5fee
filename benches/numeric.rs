//! Criterion benchmarks of the numeric core on synthetic clustered embeddings.
//! `cargo bench --bench numeric`; the same-run comparison with scikit-learn is `segclust bench`.

use criterion::{Criterion, criterion_group, criterion_main};
use segclust::bench::synthetic_embeddings;
use segclust::cluster::{HdbscanParams, hdbscan_cpu};
use segclust::gpu::{LeafParams, LeafTables};
use segclust::reduce::{PcaParams, pca_cpu};
use std::hint::black_box;

fn pca(c: &mut Criterion) {
    let mut g = c.benchmark_group("pca_3072_to_100");
    g.sample_size(10);
    for n in [2_000usize, 10_000] {
        let (x, _) = synthetic_embeddings(n, 3072, 42);
        g.bench_function(format!("n={n}"), |b| {
            b.iter(|| pca_cpu(black_box(&x), &PcaParams::default()).map(|p| p.projected.rows()))
        });
    }
    g.finish();
}

fn hdbscan(c: &mut Criterion) {
    let mut g = c.benchmark_group("hdbscan_100d");
    g.sample_size(10);
    for n in [2_000usize, 10_000] {
        let (x, _) = synthetic_embeddings(n, 3072, 42);
        let y = match pca_cpu(&x, &PcaParams::default()) {
            Ok(p) => p.projected,
            Err(e) => panic!("PCA failed in the benchmark setup: {e:#}"),
        };
        g.bench_function(format!("n={n}"), |b| {
            b.iter(|| hdbscan_cpu(black_box(&y), &HdbscanParams::default()).map(|c| c.n_clusters()))
        });
    }
    g.finish();
}

/// The host's share of the GPU MST: grouping the rows into leaves and listing each leaf's
/// nearest leaves. It runs before any kernel, so at a million rows it is part of the 10 s bar.
fn gpu_leaf_tables(c: &mut Criterion) {
    let mut g = c.benchmark_group("gpu_leaf_tables_100d");
    g.sample_size(10);
    for n in [20_000usize, 200_000] {
        let (x, _) = synthetic_embeddings(n, 100, 42);
        g.bench_function(format!("n={n}"), |b| {
            b.iter(|| LeafTables::build(black_box(&x), &LeafParams::default()).map(|t| t.leaves()))
        });
    }
    g.finish();
}

/// Matching one batch's clusters when none joins another: every pair of new clusters is
/// compared once (the closest-first merge's first pass), as many as a 50,000-row batch makes.
fn matching_plan(c: &mut Criterion) {
    let mut g = c.benchmark_group("matching_plan_3072d");
    g.sample_size(10);
    for k in [1_000usize, 3_000] {
        // Rows in pairs: each pair's centroid is a random direction, far from every other.
        let (x, _) = synthetic_embeddings(k * 2, 3072, 42);
        let clusters: Vec<Vec<usize>> = (0..k).map(|i| vec![2 * i, 2 * i + 1]).collect();
        let noise: Vec<usize> = Vec::new();
        g.bench_function(format!("clusters={}", clusters.len()), |b| {
            b.iter(|| {
                segclust::matching::plan(&x, black_box(&clusters), &noise, |_| false, &[], 0.3)
                    .new_tasks
                    .len()
            })
        });
    }
    g.finish();
}

/// A batch's noise rows against a team's existing Tasks, none close: each row is compared with
/// every Task. The Tasks a team keeps grow over time; a 50,000-row batch has thousands of noise
/// rows.
fn matching_noise(c: &mut Criterion) {
    let mut g = c.benchmark_group("matching_noise_3072d");
    g.sample_size(10);
    let (rows, _) = synthetic_embeddings(5_000, 3072, 42);
    let noise: Vec<usize> = (0..rows.rows()).collect();
    for t in [1_000usize, 3_000] {
        let (far, _) = synthetic_embeddings(t, 3072, 7);
        let tasks: Vec<segclust::matching::TaskCentroid> = (0..t)
            .map(|i| segclust::matching::TaskCentroid {
                task_id: i as i64,
                centroid: far.row(i).to_vec(),
                weight: 1,
            })
            .collect();
        g.bench_function(format!("noise=5000/tasks={t}"), |b| {
            b.iter(|| {
                segclust::matching::plan(&rows, &[], black_box(&noise), |_| false, &tasks, 0.3)
                    .links
                    .len()
            })
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    pca,
    hdbscan,
    gpu_leaf_tables,
    matching_plan,
    matching_noise
);
criterion_main!(benches);
