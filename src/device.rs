//! The one numeric interface: PCA and HDBSCAN on whichever device is present.
//!
//! Callers hold a `Device` and never branch on what it is. A GPU failure mid-batch (out of
//! memory, launch failure, lost device, or a panic in the GPU code) is logged, counted, and
//! the batch is redone on the CPU.

use crate::cluster::{self, Clustering, HdbscanParams, MstEdge};
use crate::gpu::Gpu;
use crate::matrix::Matrix;
use crate::reduce::{self, Pca, PcaParams};
use anyhow::{Result, anyhow, bail};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};

/// The GPU's side of the numeric interface: what a `Device` hands to an accelerator before
/// falling back to the CPU. CUDA ([`Gpu`]) is the production implementation; tests plug in
/// others (the CUDA kernels emulated on the CPU, a device that fails) to run the pipeline and
/// the fallback through this seam on machines without a GPU.
pub trait Accelerator: Send + Sync {
    fn name(&self) -> String;
    fn pca(&self, x: &Matrix, params: &PcaParams) -> Result<Pca>;
    /// The exact minimum spanning tree of the mutual-reachability graph.
    fn mst(&self, x: &Matrix, min_samples: usize) -> Result<Vec<MstEdge>>;
}

impl Accelerator for Gpu {
    fn name(&self) -> String {
        Gpu::name(self).to_string()
    }
    fn pca(&self, x: &Matrix, params: &PcaParams) -> Result<Pca> {
        Gpu::pca(self, x, params)
    }
    fn mst(&self, x: &Matrix, min_samples: usize) -> Result<Vec<MstEdge>> {
        Gpu::mst(self, x, min_samples)
    }
}

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
    gpu: Option<Box<dyn Accelerator>>,
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
            gpu: gpu.map(|g| Box::new(g) as Box<dyn Accelerator>),
            gpu_fallbacks: AtomicU64::new(0),
            turn: std::sync::Mutex::new(()),
        })
    }

    /// A device whose GPU side is `accelerator` (tests; production opens CUDA with [`open`]).
    ///
    /// [`open`]: Device::open
    pub fn with_accelerator(accelerator: Box<dyn Accelerator>) -> Self {
        Self {
            gpu: Some(accelerator),
            gpu_fallbacks: AtomicU64::new(0),
            turn: std::sync::Mutex::new(()),
        }
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
            match guarded(|| gpu.pca(x, params)) {
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
            match guarded(|| gpu.mst(x, params.min_samples)) {
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

/// A panic in GPU code (a driver binding's, or ours) is one more GPU failure: the batch goes
/// to the CPU instead of taking its team down. Nothing the CPU path reads is shared with it:
/// the input is borrowed read-only, and the GPU's own state is behind its mutex, which the
/// panic poisons, so later batches go straight to the CPU (`Gpu::lock`).
fn guarded<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|payload| {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".to_string());
        Err(anyhow!("panicked: {what}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Selection;

    /// An accelerator that fails the way a GPU can: an error for the PCA (out of memory), a
    /// panic in the MST; or, with `healthy`, the CPU's own answers.
    struct Faulty {
        healthy: bool,
    }

    impl Accelerator for Faulty {
        fn name(&self) -> String {
            "faulty test device".into()
        }
        fn pca(&self, x: &Matrix, params: &PcaParams) -> Result<Pca> {
            if self.healthy {
                return reduce::pca_cpu(x, params);
            }
            bail!("CUDA_ERROR_OUT_OF_MEMORY")
        }
        fn mst(&self, x: &Matrix, min_samples: usize) -> Result<Vec<MstEdge>> {
            if self.healthy {
                return cluster::mst_cpu(x, min_samples);
            }
            panic!("an illegal memory access was encountered")
        }
    }

    fn data() -> Matrix {
        let (x, _) = crate::bench::synthetic_embeddings(cluster::PRIM_MAX_ROWS + 200, 24, 7);
        x
    }

    #[test]
    fn gpu_errors_and_panics_fall_back_to_the_cpu_and_are_counted() {
        let x = data();
        let pp = PcaParams {
            components: 8,
            ..PcaParams::default()
        };
        let hp = HdbscanParams {
            selection: Selection::Leaf,
            ..HdbscanParams::default()
        };
        let cpu = Device::cpu();
        let want_pca = cpu.pca(&x, &pp).unwrap();
        let want = cpu.hdbscan(&want_pca.projected, &hp).unwrap();

        let dev = Device::with_accelerator(Box::new(Faulty { healthy: false }));
        assert_eq!(dev.name(), "gpu (faulty test device)");
        let pca = dev.pca(&x, &pp).unwrap();
        assert_eq!(pca.projected.as_slice(), want_pca.projected.as_slice());
        assert_eq!(dev.gpu_fallbacks(), 1);
        let got = dev.hdbscan(&pca.projected, &hp).unwrap();
        assert_eq!(got.labels, want.labels);
        assert_eq!(dev.gpu_fallbacks(), 2, "the panic counts as a fallback");
        // Up to PRIM_MAX_ROWS rows the batch never goes to the accelerator.
        let small = Matrix::new(50, 8, pca.projected.as_slice()[..400].to_vec()).unwrap();
        dev.hdbscan(&small, &hp).unwrap();
        assert_eq!(dev.gpu_fallbacks(), 2);

        let ok = Device::with_accelerator(Box::new(Faulty { healthy: true }));
        assert_eq!(ok.hdbscan(&pca.projected, &hp).unwrap().labels, want.labels);
        assert_eq!(ok.gpu_fallbacks(), 0);
    }
}
