//! The one numeric interface: PCA and HDBSCAN on whichever device is present.
//!
//! Callers hold a `Device` and never branch on what it is. A GPU failure mid-batch (out of
//! memory, launch failure, lost device, or a panic in the GPU code) is logged, counted, and
//! the batch is redone on the CPU.
//!
//! A GPU that keeps failing is not tried on every batch: a failed attempt can cost minutes
//! (a 1M-row batch uploads 12 GB before a kernel fails) and a `schedule` process runs for
//! days. After each failure the device is asked whether it still works; a CUDA context that
//! hit a sticky error (illegal address, launch failure, uncorrectable ECC, a lost device)
//! fails every later call, so it is retired for the rest of the process. A device that still
//! answers but fails `BreakerParams::failures` stages (PCA or MST) in a row rests for
//! `BreakerParams::cooldown`, then gets one trial batch. Both are logged once and exported as
//! the `segclust_gpu_up` gauge.

use crate::cluster::{self, Clustering, HdbscanParams, MstEdge};
use crate::gpu::{Gpu, KernelCache};
use crate::matrix::Matrix;
use crate::reduce::{self, Pca, PcaParams};
use anyhow::{Result, bail};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// The GPU's side of the numeric interface: what a `Device` hands to an accelerator before
/// falling back to the CPU. CUDA ([`Gpu`]) is the production implementation; tests plug in
/// others (the CUDA kernels emulated on the CPU, a device that fails) to run the pipeline and
/// the fallback through this seam on machines without a GPU.
pub trait Accelerator: Send + Sync {
    fn name(&self) -> String;
    fn pca(&self, x: &Matrix, params: &PcaParams) -> Result<Pca>;
    /// The exact minimum spanning tree of the mutual-reachability graph.
    fn mst(&self, x: &Matrix, min_samples: usize) -> Result<Vec<MstEdge>>;
    /// Device memory a batch may plan with now (`segclust bench --largest-that-fits`).
    fn planning_memory(&self) -> Result<usize> {
        bail!("{} does not report its memory", self.name())
    }
    /// Asked after a failure: `Err` when the device cannot run anything any more (a sticky
    /// CUDA error, a poisoned handle), so later batches are not sent to it.
    fn health(&self) -> Result<()> {
        Ok(())
    }
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
    fn health(&self) -> Result<()> {
        Gpu::health(self)
    }
    fn planning_memory(&self) -> Result<usize> {
        Gpu::planning_memory(self)
    }
}

/// An accelerator's error for a batch it cannot take: more memory than it has, values its f32
/// arithmetic cannot bound, nothing to reduce. The batch goes to the CPU as after any failure,
/// but this says nothing about the device, so it does not count towards a rest and the device
/// is not asked whether it still works. (Found through `anyhow`'s context layers.)
#[derive(Debug)]
pub struct Unsuited(pub String);

impl std::fmt::Display for Unsuited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Unsuited {}

/// `Err(Unsuited(...))` with a formatted message.
#[macro_export]
macro_rules! unsuited {
    ($($arg:tt)*) => {
        return Err(anyhow::Error::new($crate::device::Unsuited(format!($($arg)*))))
    };
}

/// When a GPU that keeps failing stops getting batches (see the module's doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerParams {
    /// Failed GPU attempts in a row (PCA and MST each count) on a device that still answers,
    /// before it rests.
    pub failures: u32,
    /// How long it rests before one trial batch.
    pub cooldown: Duration,
}

impl Default for BreakerParams {
    fn default() -> Self {
        Self {
            failures: 3,
            cooldown: Duration::from_secs(15 * 60),
        }
    }
}

/// Whether the next batch will be offered to the GPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum GpuState {
    /// No GPU was opened (CPU by choice or by absence).
    Absent,
    Up,
    /// Failed `BreakerParams::failures` stages in a row; tried again after `until`.
    Resting {
        until: Instant,
    },
    /// Retired for the rest of the process: the device said it cannot run anything.
    Lost {
        reason: String,
    },
}

#[derive(Debug, Default)]
struct Breaker {
    in_a_row: u32,
    resting_until: Option<Instant>,
    lost: Option<String>,
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

/// How to open a GPU (`clustering.gpu_memory_mib`, `clustering.kernel_cache`).
#[derive(Clone, Debug)]
pub struct GpuOptions {
    /// The most GPU memory a batch may plan with, in MiB (0: all that is free).
    pub memory_mib: u64,
    pub kernel_cache: KernelCache,
}

impl GpuOptions {
    /// From the settings as the config file and the flags spell them (`kernel_cache`: see
    /// [`KernelCache::from_setting`]).
    pub fn new(memory_mib: u64, kernel_cache: &str) -> Self {
        Self {
            memory_mib,
            kernel_cache: KernelCache::from_setting(kernel_cache),
        }
    }
}

impl Default for GpuOptions {
    fn default() -> Self {
        Self::new(0, "")
    }
}

pub struct Device {
    gpu: Option<Box<dyn Accelerator>>,
    gpu_fallbacks: AtomicU64,
    /// Batches that went straight to the CPU because the GPU was resting or lost.
    gpu_skips: AtomicU64,
    breaker_params: BreakerParams,
    breaker: Mutex<Breaker>,
    /// One numeric core at a time: teams processed concurrently overlap their I/O, but each
    /// PCA + HDBSCAN gets the whole GPU (or all CPU cores) to itself.
    turn: std::sync::Mutex<()>,
}

impl Device {
    pub fn open(choice: DeviceChoice, options: &GpuOptions) -> Result<Self> {
        let gpu_memory_mib = options.memory_mib;
        let mut gpu = match choice {
            DeviceChoice::Cpu => None,
            DeviceChoice::Auto => match Gpu::open(&options.kernel_cache) {
                Ok(gpu) => Some(gpu),
                Err(e) => {
                    tracing::info!("no usable GPU ({e:#}); using the CPU");
                    None
                }
            },
            DeviceChoice::Gpu => match Gpu::open(&options.kernel_cache) {
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
        Ok(Self::new(gpu.map(|g| Box::new(g) as Box<dyn Accelerator>)))
    }

    fn new(gpu: Option<Box<dyn Accelerator>>) -> Self {
        Self {
            gpu,
            gpu_fallbacks: AtomicU64::new(0),
            gpu_skips: AtomicU64::new(0),
            breaker_params: BreakerParams::default(),
            breaker: Mutex::default(),
            turn: std::sync::Mutex::new(()),
        }
    }

    /// A device whose GPU side is `accelerator` (tests; production opens CUDA with [`open`]).
    ///
    /// [`open`]: Device::open
    pub fn with_accelerator(accelerator: Box<dyn Accelerator>) -> Self {
        Self::new(Some(accelerator))
    }

    pub fn cpu() -> Self {
        Self::new(None)
    }

    /// Replaces the default [`BreakerParams`].
    pub fn with_breaker(mut self, params: BreakerParams) -> Self {
        self.breaker_params = params;
        self
    }

    pub fn name(&self) -> String {
        match &self.gpu {
            Some(g) => format!("gpu ({})", g.name()),
            None => format!(
                "cpu ({} kernels)",
                crate::cluster::knn::Kernels::panel_name()
            ),
        }
    }

    /// Waits for this caller's turn on the device; hold the guard for a whole numeric core.
    pub fn turn(&self) -> std::sync::MutexGuard<'_, ()> {
        // A panic in another team's numeric core leaves nothing shared half-written.
        self.turn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most rows of `dim` columns the GPU takes whole: X stays resident through the PCA
    /// (`gpu::largest_resident_rows`) in the memory free now. Host memory is the caller's to
    /// check. An error without a usable GPU.
    pub fn largest_gpu_batch(&self, dim: usize, pca: &PcaParams) -> Result<usize> {
        let Some(gpu) = &self.gpu else {
            bail!(
                "sizing a batch to the GPU's memory needs a usable GPU (--device gpu); this run \
                 is on the CPU"
            );
        };
        let free = gpu.planning_memory()?;
        Ok(crate::gpu::largest_resident_rows(free, dim, pca))
    }

    /// How many GPU stages (PCA or MST) ran on the CPU instead: the GPU failed them, or could
    /// not take the batch (`Unsuited`).
    pub fn gpu_fallbacks(&self) -> u64 {
        self.gpu_fallbacks.load(Ordering::Relaxed)
    }

    /// How many numeric stages went straight to the CPU because the GPU was resting or lost.
    pub fn gpu_skips(&self) -> u64 {
        self.gpu_skips.load(Ordering::Relaxed)
    }

    /// What the metrics file reports about the device.
    pub fn figures(&self) -> crate::metrics::GpuFigures {
        let state = self.gpu_state();
        crate::metrics::GpuFigures {
            fallbacks: self.gpu_fallbacks(),
            skips: self.gpu_skips(),
            up: (state != GpuState::Absent).then_some(state == GpuState::Up),
        }
    }

    pub fn gpu_state(&self) -> GpuState {
        if self.gpu.is_none() {
            return GpuState::Absent;
        }
        let b = self.breaker();
        match (&b.lost, b.resting_until) {
            (Some(reason), _) => GpuState::Lost {
                reason: reason.clone(),
            },
            (None, Some(until)) if Instant::now() < until => GpuState::Resting { until },
            _ => GpuState::Up,
        }
    }

    /// Ends a rest now, as if its cooldown had passed: the breaker's tests use a cooldown no
    /// slow host can outlast (under emulation, the CPU fallbacks between two checks outlasted
    /// 300 ms) and call this instead of sleeping through it.
    #[cfg(test)]
    fn end_rest(&self) {
        let mut b = self.breaker();
        if b.resting_until.is_some() {
            b.resting_until = Some(Instant::now());
        }
    }

    fn breaker(&self) -> std::sync::MutexGuard<'_, Breaker> {
        self.breaker.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The accelerator, unless there is none or the breaker keeps this batch from it.
    fn accelerator(&self) -> Option<&dyn Accelerator> {
        let gpu = self.gpu.as_deref()?;
        if matches!(self.gpu_state(), GpuState::Up) {
            Some(gpu)
        } else {
            self.gpu_skips.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    pub fn pca(&self, x: &Matrix, params: &PcaParams) -> Result<Pca> {
        if let Some(gpu) = self.accelerator() {
            match guarded(|| gpu.pca(x, params)) {
                Ok(p) => {
                    self.succeeded();
                    return Ok(p);
                }
                Err(e) => self.fell_back(gpu, "PCA", &e),
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
        let gpu = match self.gpu {
            Some(_) if x.rows() > cluster::PRIM_MAX_ROWS => self.accelerator(),
            _ => None,
        };
        if let Some(gpu) = gpu {
            match guarded(|| gpu.mst(x, params.min_samples)) {
                Ok(mst) => {
                    self.succeeded();
                    return Ok(cluster::labels_from_mst(x.rows(), mst, params));
                }
                Err(e) => self.fell_back(gpu, "HDBSCAN", &e),
            }
        }
        cluster::hdbscan_cpu(x, params)
    }

    fn succeeded(&self) {
        let mut b = self.breaker();
        b.in_a_row = 0;
        b.resting_until = None;
    }

    fn fell_back(&self, gpu: &dyn Accelerator, stage: &str, e: &anyhow::Error) {
        self.gpu_fallbacks.fetch_add(1, Ordering::Relaxed);
        if e.downcast_ref::<Unsuited>().is_some() {
            tracing::info!("GPU {stage}: {e:#}; this batch runs on the CPU");
            return;
        }
        tracing::warn!("GPU {stage} failed ({e:#}); redoing this batch on the CPU");
        let health = guarded(|| gpu.health());
        let mut b = self.breaker();
        if let Err(why) = health {
            let reason = format!("{why:#}");
            tracing::error!(
                "the GPU no longer works ({reason}); every later batch of this process runs on \
                 the CPU. Restart the process to use the GPU again"
            );
            b.lost = Some(reason);
            return;
        }
        b.in_a_row += 1;
        if b.in_a_row >= self.breaker_params.failures {
            let rest = self.breaker_params.cooldown;
            tracing::error!(
                "the GPU failed {} stages in a row; batches go to the CPU for the next {}s, \
                 then one is tried on the GPU again",
                b.in_a_row,
                rest.as_secs()
            );
            // `in_a_row` stays past the limit, so a failed trial batch sends it back to rest.
            b.resting_until = Some(Instant::now() + rest);
        }
    }
}

/// A panic in GPU code (a driver binding's, or ours) is one more GPU failure: the batch goes
/// to the CPU instead of taking its team down. Nothing the CPU path reads is shared with it:
/// the input is borrowed read-only, and the GPU's own state is behind its mutex, which the
/// panic poisons, so later batches go straight to the CPU (`Gpu::lock`).
fn guarded<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    crate::guard::catch(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Selection;

    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    /// An accelerator that fails the way a GPU can: an error for the PCA (out of memory), a
    /// panic in the MST; or, with `healthy`, the CPU's own answers. `calls` counts what it was
    /// asked; `lost` makes its health check fail, as a CUDA context with a sticky error does.
    #[derive(Default)]
    struct Faulty {
        healthy: Arc<AtomicBool>,
        lost: Arc<AtomicBool>,
        calls: Arc<AtomicU64>,
    }

    impl Faulty {
        fn healthy() -> Self {
            let f = Self::default();
            f.healthy.store(true, Ordering::Relaxed);
            f
        }
        fn handles(&self) -> (Arc<AtomicBool>, Arc<AtomicBool>, Arc<AtomicU64>) {
            (self.healthy.clone(), self.lost.clone(), self.calls.clone())
        }
    }

    impl Accelerator for Faulty {
        fn name(&self) -> String {
            "faulty test device".into()
        }
        fn pca(&self, x: &Matrix, params: &PcaParams) -> Result<Pca> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            if self.healthy.load(Ordering::Relaxed) {
                return reduce::pca_cpu(x, params);
            }
            bail!("CUDA_ERROR_OUT_OF_MEMORY")
        }
        fn mst(&self, x: &Matrix, min_samples: usize) -> Result<Vec<MstEdge>> {
            self.calls.fetch_add(1, Ordering::Relaxed);
            if self.healthy.load(Ordering::Relaxed) {
                return cluster::mst_cpu(x, min_samples);
            }
            panic!("an illegal memory access was encountered")
        }
        fn health(&self) -> Result<()> {
            if self.lost.load(Ordering::Relaxed) {
                bail!("CUDA_ERROR_ILLEGAL_ADDRESS")
            }
            Ok(())
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

        let dev = Device::with_accelerator(Box::new(Faulty::default()));
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

        let ok = Device::with_accelerator(Box::new(Faulty::healthy()));
        assert_eq!(ok.hdbscan(&pca.projected, &hp).unwrap().labels, want.labels);
        assert_eq!(ok.gpu_fallbacks(), 0);
        assert_eq!(ok.gpu_state(), GpuState::Up);
        assert_eq!(Device::cpu().gpu_state(), GpuState::Absent);
    }

    /// A healthy device too small for every batch; counts its health checks.
    struct TooSmall {
        health_checks: Arc<AtomicU64>,
    }

    impl Accelerator for TooSmall {
        fn name(&self) -> String {
            "small test device".into()
        }
        fn pca(&self, x: &Matrix, _: &PcaParams) -> Result<Pca> {
            crate::unsuited!(
                "PCA of {} rows needs more memory than this device has",
                x.rows()
            )
        }
        fn mst(&self, x: &Matrix, _: usize) -> Result<Vec<MstEdge>> {
            Err(anyhow::Error::new(Unsuited(format!("{} rows", x.rows()))).context("GPU MST"))
        }
        fn health(&self) -> Result<()> {
            self.health_checks.fetch_add(1, Ordering::Relaxed);
            Ok(())
        }
    }

    #[test]
    fn batches_a_device_cannot_take_do_not_count_against_it() {
        let (x, (pp, hp)) = (data(), params());
        let health_checks = Arc::new(AtomicU64::new(0));
        let dev = Device::with_accelerator(Box::new(TooSmall {
            health_checks: health_checks.clone(),
        }));
        let want = Device::cpu().pca(&x, &pp).unwrap();
        for _ in 0..5 {
            let pca = dev.pca(&x, &pp).unwrap();
            assert_eq!(pca.projected, want.projected);
            dev.hdbscan(&pca.projected, &hp).unwrap();
        }
        assert_eq!(dev.gpu_state(), GpuState::Up);
        assert_eq!((dev.gpu_fallbacks(), dev.gpu_skips()), (10, 0));
        assert_eq!(health_checks.load(Ordering::Relaxed), 0);
    }

    fn params() -> (PcaParams, HdbscanParams) {
        let pp = PcaParams {
            components: 8,
            ..PcaParams::default()
        };
        (pp, HdbscanParams::default())
    }

    #[test]
    fn a_device_that_stops_working_is_not_asked_again() {
        let (x, (pp, hp)) = (data(), params());
        let faulty = Faulty::default();
        let (healthy, lost, calls) = faulty.handles();
        let dev = Device::with_accelerator(Box::new(faulty));
        lost.store(true, Ordering::Relaxed);
        let want = Device::cpu().pca(&x, &pp).unwrap();
        assert_eq!(dev.pca(&x, &pp).unwrap().projected, want.projected);
        assert!(
            matches!(dev.gpu_state(), GpuState::Lost { ref reason } if reason.contains("ILLEGAL_ADDRESS")),
            "{:?}",
            dev.gpu_state()
        );
        assert_eq!((calls.load(Ordering::Relaxed), dev.gpu_fallbacks()), (1, 1));
        // Retired for good: even a device that would now work is not asked.
        healthy.store(true, Ordering::Relaxed);
        lost.store(false, Ordering::Relaxed);
        let projected = dev.pca(&x, &pp).unwrap().projected;
        assert_eq!(projected, want.projected);
        dev.hdbscan(&projected, &hp).unwrap();
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        assert_eq!((dev.gpu_fallbacks(), dev.gpu_skips()), (1, 2));
    }

    #[test]
    fn a_device_that_keeps_failing_rests_then_gets_one_trial() {
        let (x, (pp, hp)) = (data(), params());
        let faulty = Faulty::default();
        let (healthy, _, calls) = faulty.handles();
        let rest = Duration::from_secs(3600);
        let dev = Device::with_accelerator(Box::new(faulty)).with_breaker(BreakerParams {
            failures: 3,
            cooldown: rest,
        });
        let projected = dev.pca(&x, &pp).unwrap().projected;
        dev.hdbscan(&projected, &hp).unwrap();
        assert_eq!(
            dev.gpu_state(),
            GpuState::Up,
            "two failures in a row: still up"
        );
        let before = Instant::now();
        dev.pca(&x, &pp).unwrap();
        assert!(
            matches!(dev.gpu_state(), GpuState::Resting { until } if until >= before + rest),
            "rests for the cooldown: {:?}",
            dev.gpu_state()
        );
        assert_eq!(calls.load(Ordering::Relaxed), 3);
        dev.hdbscan(&projected, &hp).unwrap();
        dev.pca(&x, &pp).unwrap();
        assert_eq!(calls.load(Ordering::Relaxed), 3, "resting: not asked");
        assert_eq!((dev.gpu_fallbacks(), dev.gpu_skips()), (3, 2));

        // After the rest one failed trial is enough to send it back.
        dev.end_rest();
        assert_eq!(dev.gpu_state(), GpuState::Up);
        dev.pca(&x, &pp).unwrap();
        assert_eq!(calls.load(Ordering::Relaxed), 4);
        assert!(matches!(dev.gpu_state(), GpuState::Resting { .. }));

        // A trial that works closes the breaker: the count starts again from zero.
        dev.end_rest();
        healthy.store(true, Ordering::Relaxed);
        dev.pca(&x, &pp).unwrap();
        healthy.store(false, Ordering::Relaxed);
        dev.pca(&x, &pp).unwrap();
        dev.pca(&x, &pp).unwrap();
        assert_eq!(dev.gpu_state(), GpuState::Up);
        assert_eq!(calls.load(Ordering::Relaxed), 7);
        assert_eq!(dev.gpu_fallbacks(), 6);
    }

    /// The rest ends by the clock (the test above ends it by hand). Slowness only lets more
    /// time pass, so this cannot race.
    #[test]
    fn a_rest_ends_when_its_cooldown_has_passed() {
        let (x, (pp, _)) = (data(), params());
        let faulty = Faulty::default();
        let (_, _, calls) = faulty.handles();
        let rest = Duration::from_millis(50);
        let dev = Device::with_accelerator(Box::new(faulty)).with_breaker(BreakerParams {
            failures: 1,
            cooldown: rest,
        });
        dev.pca(&x, &pp).unwrap();
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        std::thread::sleep(rest);
        assert_eq!(dev.gpu_state(), GpuState::Up);
        dev.pca(&x, &pp).unwrap();
        assert_eq!(calls.load(Ordering::Relaxed), 2, "the trial after the rest");
    }
}
