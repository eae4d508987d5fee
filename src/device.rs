//! The one numeric interface: PCA and HDBSCAN on whichever device is present.
//!
//! Callers hold a `Device` and never branch on what it is. A GPU failure mid-batch (out of
//! memory, launch failure, lost device) is logged, counted, and the batch is redone on the CPU.

use crate::cluster::{self, Clustering, HdbscanParams};
use crate::gpu::Gpu;
use crate::matrix::Matrix;
use crate::reduce::{self, Pca, PcaParams};
use anyhow::{Result, bail};
use std::sync::atomic::{AtomicU64, Ordering};

/// What the user asked for with `--device`.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    serde::Serialize,
    serde::Deserialize,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// The GPU when one is usable, else the CPU (said once in the log).
    #[default]
    Auto,
    Cpu,
    /// The GPU or an error.
    Gpu,
}

pub struct Device {
    gpu: Option<Gpu>,
    gpu_fallbacks: AtomicU64,
    /// One numeric core at a time: teams processed concurrently overlap their I/O, but each
    /// PCA + HDBSCAN gets the whole GPU (or all CPU cores) to itself.
    turn: std::sync::Mutex<()>,
}

impl Device {
    /// `gpu_memory_mib`: the most GPU memory a batch may plan with (0: all that is free).
    pub fn open(choice: DeviceChoice, gpu_memory_mib: u64) -> Result<Self> {
        let mut gpu = match choice {
            DeviceChoice::Cpu => None,
            DeviceChoice::Auto => match Gpu::open() {
                Ok(gpu) => Some(gpu),
                Err(e) => {
                    tracing::info!("no usable GPU ({e:#}); using the CPU");
                    None
                }
            },
            DeviceChoice::Gpu => match Gpu::open() {
                Ok(gpu) => Some(gpu),
                Err(e) => bail!("--device gpu was asked for, but no GPU is usable: {e:#}"),
            },
        };
        if let Some(g) = &mut gpu {
            tracing::info!("using GPU: {}", g.name());
            if gpu_memory_mib > 0 {
                tracing::info!("batches plan with at most {gpu_memory_mib} MiB of GPU memory");
                g.limit_memory(
                    usize::try_from(gpu_memory_mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX),
                );
            }
        }
        Ok(Self {
            gpu,
            gpu_fallbacks: AtomicU64::new(0),
            turn: std::sync::Mutex::new(()),
        })
    }

    pub fn cpu() -> Self {
        Self {
            gpu: None,
            gpu_fallbacks: AtomicU64::new(0),
            turn: std::sync::Mutex::new(()),
        }
    }

    pub fn name(&self) -> String {
        match &self.gpu {
            Some(g) => format!("gpu ({})", g.name()),
            None => "cpu".to_string(),
        }
    }

    /// Waits for this caller's turn on the device; hold the guard for a whole numeric core.
    pub fn turn(&self) -> std::sync::MutexGuard<'_, ()> {
        // A panic in another team's numeric core leaves nothing shared half-written.
        self.turn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many batches fell back from the GPU to the CPU.
    pub fn gpu_fallbacks(&self) -> u64 {
        self.gpu_fallbacks.load(Ordering::Relaxed)
    }

    pub fn pca(&self, x: &Matrix, params: &PcaParams) -> Result<Pca> {
        if let Some(gpu) = &self.gpu {
            match gpu.pca(x, params) {
                Ok(p) => return Ok(p),
                Err(e) => self.fell_back("PCA", &e),
            }
        }
        reduce::pca_cpu(x, params)
    }

    pub fn hdbscan(&self, x: &Matrix, params: &HdbscanParams) -> Result<Clustering> {
        params.validate(x.rows())?;
        if x.rows() < cluster::MIN_ROWS_TO_CLUSTER {
            return Ok(Clustering::all_noise(x.rows()));
        }
        // Up to PRIM_MAX_ROWS the CPU's Prim MST costs less than a launch, and its order of
        // equal-weight merges is scikit-learn's, so small batches never leave the host.
        if let Some(gpu) = self
            .gpu
            .as_ref()
            .filter(|_| x.rows() > cluster::PRIM_MAX_ROWS)
        {
            match gpu.mst(x, params.min_samples) {
                Ok(mst) => return Ok(cluster::labels_from_mst(x.rows(), mst, params)),
                Err(e) => self.fell_back("HDBSCAN", &e),
            }
        }
        cluster::hdbscan_cpu(x, params)
    }

    fn fell_back(&self, stage: &str, e: &anyhow::Error) {
        self.gpu_fallbacks.fetch_add(1, Ordering::Relaxed);
        tracing::warn!("GPU {stage} failed ({e:#}); redoing this batch on the CPU");
    }
}
