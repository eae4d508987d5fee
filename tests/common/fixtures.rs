//! The scikit-learn fixtures (tests/fixtures/hdbscan, written by tools/make_fixtures.py), the
//! adjusted Rand index and a spanning-tree check, shared by the parity tests of the CPU and the
//! GPU paths.
#![allow(dead_code)]

use segclust::cluster::{HdbscanParams, MstEdge, Selection};
use segclust::matrix::Matrix;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Deserialize)]
pub struct Fixture {
    pub name: String,
    pub rows: usize,
    pub cols: usize,
    pub sklearn_version: String,
    pub runs: Vec<Run>,
}

#[derive(Deserialize)]
pub struct Run {
    pub min_cluster_size: usize,
    pub min_samples: usize,
    pub selection: Selection,
    pub epsilon: f64,
    pub allow_single_cluster: bool,
    pub tie_sensitive: bool,
    pub probabilities_tie_sensitive: bool,
    pub labels: Vec<i64>,
    pub probabilities: Vec<f64>,
    pub stable_labels: Option<Vec<i64>>,
    pub stable_probabilities: Option<Vec<f64>>,
    pub hdbscan_labels: Option<Vec<i64>>,
}

impl Run {
    pub fn params(&self) -> HdbscanParams {
        HdbscanParams {
            min_cluster_size: self.min_cluster_size,
            min_samples: self.min_samples,
            selection: self.selection,
            epsilon: self.epsilon,
            allow_single_cluster: self.allow_single_cluster,
        }
    }

    pub fn describe(&self, name: &str) -> String {
        format!(
            "{name} mcs={} ms={} {:?} eps={} single={}",
            self.min_cluster_size,
            self.min_samples,
            self.selection,
            self.epsilon,
            self.allow_single_cluster
        )
    }
}

/// SEGCLUST_FIXTURES where set: prebuilt test executables run on a GPU host from another
/// checkout path than the one they were built in (tools/gpu_check.sh sets it).
pub fn fixture_dir() -> PathBuf {
    std::env::var_os("SEGCLUST_FIXTURES").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/hdbscan"),
        PathBuf::from,
    )
}

pub fn fixtures() -> Vec<(Fixture, Matrix)> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(fixture_dir())
        .unwrap_or_else(|e| {
            panic!(
                "reading {:?} ({e}): run tools/make_fixtures.py, or set SEGCLUST_FIXTURES",
                fixture_dir()
            )
        })
        .map(|e| e.expect("readable directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    names.sort();
    assert!(
        names.len() >= 10,
        "expected the committed fixtures, found {}",
        names.len()
    );
    names
        .into_iter()
        .map(|json| {
            let text = std::fs::read_to_string(&json).expect("readable fixture");
            let fx: Fixture = serde_json::from_str(&text).expect("well-formed fixture JSON");
            let x = read_npy_f32(&fixture_dir().join(format!("{}.x.npy", fx.name)));
            assert_eq!(
                (x.rows(), x.cols()),
                (fx.rows, fx.cols),
                "{}: shape",
                fx.name
            );
            (fx, x)
        })
        .collect()
}

/// Minimal .npy reader: version 1.0/2.0 header, little-endian f32, C order, 2-D.
pub fn read_npy_f32(path: &Path) -> Matrix {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        &bytes[..6],
        b"\x93NUMPY",
        "{}: not a .npy file",
        path.display()
    );
    let (header_len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 => (
            u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
            12,
        ),
        v => panic!("{}: unsupported .npy version {v}", path.display()),
    };
    let header = std::str::from_utf8(&bytes[start..start + header_len]).expect("ASCII header");
    assert!(
        header.contains("'descr': '<f4'"),
        "{}: not float32: {header}",
        path.display()
    );
    assert!(
        header.contains("'fortran_order': False"),
        "{}: not C order",
        path.display()
    );
    let shape = header
        .split("'shape': (")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .expect("shape in header");
    let dims: Vec<usize> = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().expect("integer dimension"))
        .collect();
    assert_eq!(
        dims.len(),
        2,
        "{}: expected a 2-D array, shape {shape}",
        path.display()
    );
    let data: Vec<f32> = bytes[start + header_len..]
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    Matrix::new(dims[0], dims[1], data).expect("data length matches the shape")
}

/// The same bits: serde_json's `float_roundtrip` feature (Cargo.toml) parses the fixtures'
/// shortest round-trip decimals back to exactly the f64 scikit-learn wrote, and every MST
/// builder sums distances in column order, so comparisons here are exact.
pub fn same_bits(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

/// Two MSTs of one graph have the same sorted weights, whichever equal edges each kept.
pub fn same_mst_weights(a: &[MstEdge], b: &[MstEdge]) -> bool {
    let sorted = |m: &[MstEdge]| {
        let mut w: Vec<f64> = m.iter().map(|e| e.weight).collect();
        w.sort_by(f64::total_cmp);
        w
    };
    same_bits(&sorted(a), &sorted(b))
}

/// The end of a test over every fixture run: at least the committed fixtures' runs were
/// checked, and none failed (all failures listed, not just the first).
pub fn assert_fixture_runs(what: &str, runs: usize, failures: &[String]) {
    eprintln!("{what}: {runs} fixture runs checked");
    assert!(
        runs >= 100,
        "{what}: expected the committed fixtures' runs, got {runs}"
    );
    assert!(
        failures.is_empty(),
        "{what}: {} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Adjusted Rand index as scikit-learn computes it (pair confusion matrix; 1.0 when the two
/// labelings never disagree on a pair). Noise (-1) is an ordinary label, as in scikit-learn.
pub fn ari(a: &[i64], b: &[i64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let n = a.len() as i128;
    let mut cells: HashMap<(i64, i64), i128> = HashMap::new();
    let mut rows: HashMap<i64, i128> = HashMap::new();
    let mut cols: HashMap<i64, i128> = HashMap::new();
    for (&x, &y) in a.iter().zip(b) {
        *cells.entry((x, y)).or_default() += 1;
        *rows.entry(x).or_default() += 1;
        *cols.entry(y).or_default() += 1;
    }
    let sum_sq = sum_sq_counts(&cells);
    let tp = sum_sq - n;
    let fp = sum_sq_counts(&cols) - sum_sq;
    let fn_ = sum_sq_counts(&rows) - sum_sq;
    let tn = n * n - fp - fn_ - sum_sq;
    if fn_ == 0 && fp == 0 {
        return 1.0;
    }
    2.0 * (tp * tn - fn_ * fp) as f64 / ((tp + fn_) * (fn_ + tn) + (tp + fp) * (fp + tn)) as f64
}

fn sum_sq_counts<K>(counts: &HashMap<K, i128>) -> i128 {
    counts.values().map(|c| c * c).sum()
}

/// `mst` has n - 1 edges and no cycle.
pub fn assert_spanning_tree(n: usize, mst: &[MstEdge]) {
    assert_eq!(mst.len(), n - 1, "a spanning tree has n - 1 edges");
    let mut parent: Vec<usize> = (0..n).collect();
    fn find(p: &mut [usize], mut x: usize) -> usize {
        while p[x] != x {
            p[x] = p[p[x]];
            x = p[x];
        }
        x
    }
    for e in mst {
        let (a, b) = (
            find(&mut parent, e.a as usize),
            find(&mut parent, e.b as usize),
        );
        assert_ne!(a, b, "edge {e:?} closes a cycle");
        parent[a] = b;
    }
}
