//! Exact HDBSCAN, one module per stage, matching scikit-learn's `sklearn.cluster.HDBSCAN`:
//!
//! - `knn`: exact k nearest neighbours, hence core distances (the point itself counts as the first);
//! - `boruvka`: minimum spanning tree of the complete mutual-reachability graph;
//! - `prim`: a dense O(N^2) Prim, the small-input path and the oracle the fast path is tested against;
//! - `simd`: the f32 distance kernels the searches screen with (portable, AVX2, AVX-512, NEON);
//! - `linkage`: single-linkage tree from the MST;
//! - `condense`: condensed tree for `min_cluster_size`;
//! - `select`: leaf / excess-of-mass selection, epsilon, labels and probabilities.

pub mod boruvka;
pub mod condense;
pub mod knn;
pub mod linkage;
pub mod prim;
pub mod select;
pub mod simd;

pub use linkage::TieOrder;

use crate::matrix::Matrix;
use anyhow::Result;

/// How clusters are chosen from the condensed tree.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Selection {
    /// The leaves of the condensed tree: many small, tight clusters (the Python system's choice).
    Leaf,
    /// Excess of mass: the most stable clusters, fewer and larger.
    Eom,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct HdbscanParams {
    pub min_cluster_size: usize,
    /// scikit-learn's convention: the point itself counts, so 2 means "nearest other point".
    pub min_samples: usize,
    pub selection: Selection,
    /// `cluster_selection_epsilon`: clusters split below this distance are merged back.
    pub epsilon: f64,
    pub allow_single_cluster: bool,
}

impl Default for HdbscanParams {
    fn default() -> Self {
        Self {
            min_cluster_size: 2,
            min_samples: 2,
            selection: Selection::Leaf,
            epsilon: 0.0,
            allow_single_cluster: false,
        }
    }
}

/// One edge of the mutual-reachability minimum spanning tree.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MstEdge {
    pub a: u32,
    pub b: u32,
    /// Mutual-reachability distance, computed in f64 from the f32 coordinates.
    pub weight: f64,
}

/// The result of a clustering: `labels[i]` is a cluster id `0..n_clusters` or -1 for noise.
#[derive(Clone, Debug, PartialEq)]
pub struct Clustering {
    pub labels: Vec<i64>,
    pub probabilities: Vec<f64>,
}

impl Clustering {
    pub fn all_noise(n: usize) -> Self {
        Self {
            labels: vec![-1; n],
            probabilities: vec![0.0; n],
        }
    }

    pub fn n_clusters(&self) -> usize {
        self.labels
            .iter()
            .copied()
            .max()
            .map_or(0, |m| (m + 1).max(0) as usize)
    }
}

/// Fewer rows than this are not clustered: every row is noise (DESIGN.md).
pub const MIN_ROWS_TO_CLUSTER: usize = 3;

/// Up to this many rows the CPU uses the dense Prim port of scikit-learn, which visits points in
/// scikit-learn's order and so also breaks exact distance ties the way it does; above it, the
/// Boruvka fast path (exact too, but free to pick another of several equally minimal trees),
/// whose equal-weight merges are put in the canonical order (`linkage::TieOrder`).
pub const PRIM_MAX_ROWS: usize = 1_000;

/// The exact MST on the CPU: dense Prim for small inputs, the fast Boruvka path for large ones.
pub fn mst_cpu(x: &Matrix, min_samples: usize) -> Result<Vec<MstEdge>> {
    if x.rows() <= PRIM_MAX_ROWS {
        anyhow::ensure!(
            x.as_slice().iter().all(|v| v.is_finite()),
            "the input has NaN or infinite values; validation should have quarantined those rows"
        );
        return Ok(prim::mst(x, min_samples));
    }
    boruvka::mst(x, min_samples)
}

/// Labels and probabilities from an MST: single linkage, condensing, selection. Equal-weight
/// merges go in `TieOrder::for_rows(n)`: scikit-learn's order for Prim's small inputs, the
/// canonical one above, so that every exact MST builder (CPU or GPU) gives the same labels.
pub fn labels_from_mst(n: usize, mst: Vec<MstEdge>, params: &HdbscanParams) -> Clustering {
    labels_with_ties(n, mst, TieOrder::for_rows(n), params)
}

/// [`labels_from_mst`] with the order of equal-weight merges chosen by the caller.
pub fn labels_with_ties(
    n: usize,
    mst: Vec<MstEdge>,
    ties: TieOrder,
    params: &HdbscanParams,
) -> Clustering {
    // The host's share after any MST (the GPU's included): timed, since at 1M rows it counts
    // against the same budget as the kernels.
    let started = std::time::Instant::now();
    let tree = linkage::single_linkage(n, mst, ties);
    let linked = started.elapsed().as_secs_f64();
    let condensed = condense::condense(&tree, params.min_cluster_size);
    let condensed_at = started.elapsed().as_secs_f64();
    let clustering = select::labels(&condensed, params);
    tracing::debug!(
        rows = n,
        linkage_seconds = linked,
        condense_seconds = condensed_at - linked,
        select_seconds = started.elapsed().as_secs_f64() - condensed_at,
        "labels from the MST"
    );
    clustering
}

/// HDBSCAN on the CPU. The device-agnostic entry point is `crate::device::Device::hdbscan`.
pub fn hdbscan_cpu(x: &Matrix, params: &HdbscanParams) -> Result<Clustering> {
    params.validate(x.rows())?;
    if x.rows() < MIN_ROWS_TO_CLUSTER {
        return Ok(Clustering::all_noise(x.rows()));
    }
    let mst = mst_cpu(x, params.min_samples)?;
    Ok(labels_from_mst(x.rows(), mst, params))
}

impl HdbscanParams {
    /// Rejects settings scikit-learn rejects, with a message that names the flag.
    pub fn validate(&self, _n: usize) -> Result<()> {
        anyhow::ensure!(
            self.min_cluster_size >= 2,
            "--min-cluster-size must be at least 2 (got {})",
            self.min_cluster_size
        );
        anyhow::ensure!(
            self.min_samples >= 1,
            "--min-samples must be at least 1 (got {})",
            self.min_samples
        );
        anyhow::ensure!(
            self.epsilon >= 0.0 && self.epsilon.is_finite(),
            "--epsilon must be a finite number >= 0 (got {})",
            self.epsilon
        );
        Ok(())
    }
}
