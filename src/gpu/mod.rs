//! CUDA backend: randomized PCA on cuBLAS and the exact mutual-reachability MST with NVRTC
//! kernels (a leaf-pruned search, and brute force for what it leaves open), for
//! `crate::device::Device`.
//!
//! Why it is shaped this way:
//! - cudarc loads libcuda, NVRTC and cuBLAS at run time, so one binary runs on machines with
//!   and without a GPU. `Gpu::open` probes the libraries before touching them (creating a
//!   context without libcuda panics) and every failure afterwards is an `Err`: the `Device`
//!   then redoes the batch on the CPU, so nothing here may panic or abort on bad luck
//!   (no device, too little memory, a driver that rejects the PTX).
//! - The GPU never decides the answer of the MST on its own: the kernels return f32
//!   *candidates*, the host recomputes them in f64 and proves with an error bound that no
//!   unseen edge can be lighter; where the proof fails the host computes that point exactly.
//!   So the GPU MST has the same total weight as the CPU one by construction.
//! - PCA follows `reduce` (centre implicitly, Gaussian test matrix drawn on the host from the
//!   seed, power iterations re-orthonormalized, small SVD on the host, `svd_flip`-like signs),
//!   so CPU and GPU scores agree to float tolerance. The algorithm (`pca.rs`) is written
//!   against a small BLAS interface that `blas.rs` implements on cuBLAS and its tests on the
//!   host, so its memory plan (X resident, or streamed when it does not fit) and its
//!   re-orthonormalization fallbacks are tested without a GPU.

mod blas;
pub mod canary;
pub mod kernel_cache;
mod launch;
pub mod leaves;
pub mod mst;
mod pca;

pub use kernel_cache::KernelCache;
pub use leaves::{LeafParams, LeafTables};
pub use mst::{GpuMstParams, LeafFound, NearestKernels, mst_with};
pub use pca::bytes_besides_rows as pca_bytes_besides_rows;
pub use pca::largest_resident_rows;

use crate::cluster::MstEdge;
use crate::matrix::Matrix;
use crate::reduce::{Pca, PcaParams};
use anyhow::{Context, Result, anyhow, bail};
use cudarc::cublas::CudaBlas;
use cudarc::driver::{CudaContext, CudaFunction, CudaStream};
use cudarc::nvrtc::{CompileOptions, Ptx};
use std::sync::{Arc, Mutex};

/// CUDA C++ source of the kernels, one translation unit, compiled by NVRTC when the GPU is
/// opened (tests/kernel_emu/emu.cpp compiles the same files for the CPU). NVRTC has no include
/// path here, so the shared tile code goes first.
pub const KERNEL_SOURCE: &str = concat!(
    include_str!("../../kernels/tile.cuh"),
    "\n",
    include_str!("../../kernels/nearest.cu"),
    "\n",
    include_str!("../../kernels/leaf_search.cu")
);

/// Build options for the kernels beyond the architecture: speed knobs, so a GPU host with no
/// Rust toolchain can time variants of one binary (`SEGCLUST_GPU_NVRTC_OPTIONS`, e.g.
/// `-DLS_MIN_BLOCKS_TF32=5`, which puts `__launch_bounds__(128, 5)` on the tensor-core search).
/// Only knobs that cannot change an answer are taken: the kernels' tuning macros
/// ([`KernelOptions::KNOBS`]) with a whole number, and `--maxrregcount=N`. `--use_fast_math`,
/// say, would change the arithmetic that the proofs' rounding bounds assume. The options are
/// part of the kernel cache's key.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelOptions(Vec<String>);

impl KernelOptions {
    pub const ENV: &'static str = "SEGCLUST_GPU_NVRTC_OPTIONS";
    /// The macros kernels/leaf_search.cu reads for its launch bounds (unset: none).
    pub const KNOBS: [&'static str; 2] = ["LS_MIN_BLOCKS_F32", "LS_MIN_BLOCKS_TF32"];

    /// Whitespace-separated options; an error names the first one not taken and what is.
    pub fn parse(text: &str) -> Result<Self> {
        let number =
            |v: &str| !v.is_empty() && v.len() <= 6 && v.bytes().all(|b| b.is_ascii_digit());
        let mut out = Vec::new();
        for opt in text.split_whitespace() {
            let ok = if let Some(def) = opt.strip_prefix("-D") {
                def.split_once('=')
                    .is_some_and(|(name, value)| Self::KNOBS.contains(&name) && number(value))
            } else {
                opt.strip_prefix("--maxrregcount=").is_some_and(number)
            };
            if !ok {
                bail!(
                    "{}: {opt:?} is not taken; only speed knobs are: -D{}=N and --maxrregcount=N",
                    Self::ENV,
                    Self::KNOBS.join("=N, -D")
                );
            }
            out.push(opt.to_string());
        }
        Ok(Self(out))
    }

    /// From `SEGCLUST_GPU_NVRTC_OPTIONS`; none when it is unset.
    pub fn from_env() -> Result<Self> {
        match std::env::var(Self::ENV) {
            Ok(text) => Self::parse(&text),
            Err(std::env::VarError::NotPresent) => Ok(Self::default()),
            Err(e) => bail!("{}: {e}", Self::ENV),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// As NVRTC and the logs take them.
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

/// Compiles the kernels to PTX with NVRTC. Needs only the NVRTC library, no GPU or driver, so
/// tools/check_kernels.sh can check the run-time compile path on a machine without a GPU.
/// `compute_capability` picks `--gpu-architecture=compute_XY`; `None` means compute_90 (H100).
pub fn compile_kernels(
    compute_capability: Option<(i32, i32)>,
    extra: &KernelOptions,
) -> Result<Ptx> {
    // SAFETY: only tries to dlopen the library; no symbol is called.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        bail!(
            "the NVRTC library (libnvrtc.so) was not found; install the CUDA toolkit's NVRTC or \
             put its lib directory on LD_LIBRARY_PATH"
        );
    }
    let (major, minor) = compute_capability.unwrap_or((9, 0));
    let opts = CompileOptions {
        options: std::iter::once(format!("--gpu-architecture=compute_{major}{minor}"))
            .chain(extra.as_slice().iter().cloned())
            .collect(),
        name: Some("segclust_kernels.cu".to_string()),
        ..Default::default()
    };
    let compiled =
        std::panic::catch_unwind(|| cudarc::nvrtc::compile_ptx_with_opts(KERNEL_SOURCE, opts))
            .map_err(|_| anyhow!("NVRTC panicked while compiling kernels/*.cu"))?;
    compiled.map_err(|e| {
        anyhow!(
            "NVRTC could not compile kernels/*.cu for compute_{major}{minor} (options {:?}): {e:?}",
            extra.as_slice()
        )
    })
}

/// An opened GPU: context, stream, cuBLAS handle and the compiled kernels.
pub struct Gpu {
    /// What the logs and reports call it: device, architecture and screen.
    name: String,
    /// The driver's name for the device, and its architecture: `name` is made from them.
    device: String,
    compute_capability: (i32, i32),
    kernels_from: kernel_cache::Origin,
    /// One batch at a time: the stream and the cuBLAS handle are not for concurrent use, and a
    /// batch sizes its allocations against the free memory it sees.
    inner: Mutex<Inner>,
}

pub(crate) struct Inner {
    pub(crate) ctx: Arc<CudaContext>,
    pub(crate) stream: Arc<CudaStream>,
    /// None when libcublas is missing: the MST still runs on the GPU, PCA falls back.
    pub(crate) blas: Option<CudaBlas>,
    pub(crate) nearest: CudaFunction,
    pub(crate) leaf: CudaFunction,
    /// The same search with the tensor cores' screen (a trap before sm_80; never launched there).
    pub(crate) leaf_tf32: CudaFunction,
    /// Where the leaf search's dot products run: which of the two is launched.
    pub(crate) screen: Screen,
    /// Most bytes one batch plans to allocate (`Gpu::limit_memory`).
    pub(crate) memory_limit: Option<usize>,
}

/// Where the leaf search computes the dot products that screen its candidates
/// (kernels/leaf_search.cu). Either way the candidates it keeps are the same to the bit: the
/// screen only decides which rows are measured exactly, and its error bound covers the
/// arithmetic it ran on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Screen {
    /// FP32 fused multiply-adds, one query per thread: any GPU.
    F32,
    /// Tensor cores on TF32 inputs (sm_80 and later): many times the FP32 rate. The bound is
    /// about 2^-9 of |p - c|^2 + |o - c|^2 wide (c: the query leaf's centre), which on the
    /// bench's projection lets through as few rows as the FP32 screen.
    Tf32,
}

/// Whether a device of this compute capability has TF32 tensor cores (sm_80 and later).
fn has_tensor_cores(compute_capability: (i32, i32)) -> bool {
    compute_capability.0 >= 8
}

impl Screen {
    /// The tensor cores where the device has them, unless `SEGCLUST_GPU_SCREEN` (`f32` or
    /// `tf32`) says otherwise: the switch exists to compare the two on one device.
    pub fn choose(compute_capability: (i32, i32), env: Option<&str>) -> Result<Self> {
        let tensor_cores = has_tensor_cores(compute_capability);
        match env.map(str::trim) {
            None | Some("") => Ok(if tensor_cores { Self::Tf32 } else { Self::F32 }),
            Some("f32") => Ok(Self::F32),
            Some("tf32") if tensor_cores => Ok(Self::Tf32),
            Some("tf32") => bail!(
                "SEGCLUST_GPU_SCREEN=tf32 needs tensor cores with TF32 (sm_80 or later); this \
                 GPU is sm_{}{}: unset it or set it to f32",
                compute_capability.0,
                compute_capability.1
            ),
            Some(other) => bail!("SEGCLUST_GPU_SCREEN={other:?} is not f32 or tf32"),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::Tf32 => "tf32",
        }
    }
}

/// The tensor cores' screen if it passes the start-up check (`canary`), else FP32, said in the
/// log: a screen that disagrees would give wrong trees, not errors.
fn checked_screen(inner: &mut Inner, device: &str) -> Screen {
    let started = std::time::Instant::now();
    let rows = canary::rows();
    let agree = canary::screens_agree(|screen| {
        inner.screen = screen;
        let mut kernels = launch::CudaKernels::new(inner);
        mst_with(&mut kernels, &rows, 2, &GpuMstParams::default())
    });
    match agree {
        Ok(true) => {
            tracing::debug!(
                seconds = started.elapsed().as_secs_f64(),
                "the tensor cores' screen passed its start-up check"
            );
            Screen::Tf32
        }
        Ok(false) => {
            tracing::error!(
                "on {device}, the tensor cores' (TF32) screen gave another tree than the FP32 \
                 screen in the start-up check; using the FP32 screen. Please report this with \
                 the device and driver version."
            );
            Screen::F32
        }
        Err(e) => {
            tracing::warn!(
                "the start-up check of the tensor cores' screen failed ({e:#}); using the FP32 \
                 screen"
            );
            Screen::F32
        }
    }
}

fn describe(device: &str, cc: (i32, i32), screen: Screen) -> String {
    format!("{device} (sm_{}{}, {} screen)", cc.0, cc.1, screen.as_str())
}

impl Gpu {
    /// Opens device 0, with the kernels from `cache` or compiled by NVRTC (and kept there).
    pub fn open(cache: &KernelCache) -> Result<Self> {
        // SAFETY: these only try to dlopen the libraries.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            bail!("the CUDA driver library (libcuda.so) was not found: no NVIDIA driver installed");
        }
        let ctx = std::panic::catch_unwind(|| CudaContext::new(0))
            .map_err(|_| anyhow!("creating the CUDA context panicked"))?
            .map_err(|e| anyhow!("creating a CUDA context on device 0: {e:?}"))?;
        let name = ctx
            .name()
            .unwrap_or_else(|_| "unknown CUDA device".to_string());
        let cc = ctx
            .compute_capability()
            .map_err(|e| anyhow!("querying the compute capability of {name}: {e:?}"))?;
        // The environment's options, when set, take the place of the cache's own.
        let options = KernelOptions::from_env()?;
        let cache = if options.is_empty() {
            cache.clone()
        } else {
            let env = KernelOptions::ENV;
            tracing::info!(options = ?options.as_slice(), "kernels built with {env}");
            cache.clone().with_options(options)
        };
        let (module, kernels_from) = load_kernels(&ctx, &cache, cc, &name)?;
        let nearest = module
            .load_function("nearest_candidates")
            .map_err(|e| anyhow!("kernel nearest_candidates missing from the module: {e:?}"))?;
        let leaf = module
            .load_function("leaf_candidates")
            .map_err(|e| anyhow!("kernel leaf_candidates missing from the module: {e:?}"))?;
        let leaf_tf32 = module
            .load_function("leaf_candidates_tf32")
            .map_err(|e| anyhow!("kernel leaf_candidates_tf32 missing from the module: {e:?}"))?;
        let stream = ctx
            .new_stream()
            .map_err(|e| anyhow!("creating a CUDA stream: {e:?}"))?;
        // SAFETY: only tries to dlopen the library.
        let blas = if unsafe { cudarc::cublas::sys::is_culib_present() } {
            match CudaBlas::new(stream.clone()) {
                Ok(b) => Some(b),
                Err(e) => {
                    tracing::warn!("cuBLAS could not start ({e:?}); PCA will run on the CPU");
                    None
                }
            }
        } else {
            tracing::warn!("libcublas not found; PCA will run on the CPU");
            None
        };
        let screen = Screen::choose(cc, std::env::var("SEGCLUST_GPU_SCREEN").ok().as_deref())?;
        let mut inner = Inner {
            ctx,
            stream,
            blas,
            nearest,
            leaf,
            leaf_tf32,
            screen,
            memory_limit: None,
        };
        if screen == Screen::Tf32 {
            inner.screen = checked_screen(&mut inner, &name);
        }
        let device = name;
        let name = describe(&device, cc, inner.screen);
        Ok(Self {
            name,
            device,
            compute_capability: cc,
            kernels_from,
            inner: Mutex::new(inner),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether the kernels came from the cache or from NVRTC.
    pub fn kernels_from(&self) -> kernel_cache::Origin {
        self.kernels_from
    }

    /// Whether the device has TF32 tensor cores (sm_80 and later).
    pub fn tensor_cores(&self) -> bool {
        has_tensor_cores(self.compute_capability)
    }

    /// The leaf search's screen (`Screen::choose` picked it when the GPU was opened, and the
    /// start-up check kept it).
    pub fn screen(&self) -> Screen {
        self.inner.lock().map_or(Screen::F32, |i| i.screen)
    }

    /// Switches the leaf search's screen, for the parity suite and for comparisons on one
    /// device; TF32 needs sm_80 or later.
    pub fn set_screen(&mut self, screen: Screen) -> Result<()> {
        let chosen = Screen::choose(self.compute_capability, Some(screen.as_str()))?;
        let inner = self
            .inner
            .get_mut()
            .map_err(|_| anyhow!("an earlier GPU batch panicked; GPU disabled for this run"))?;
        inner.screen = chosen;
        self.name = describe(&self.device, self.compute_capability, chosen);
        Ok(())
    }

    /// The device memory a batch may plan with now (free, within [`Gpu::limit_memory`]'s cap).
    pub fn planning_memory(&self) -> Result<usize> {
        Ok(self.lock()?.planning_memory()?.0)
    }

    /// Caps the device memory a batch plans with (PCA and MST), below what the driver reports
    /// free: for a GPU shared with other jobs (`clustering.gpu_memory_mib`), and for the parity
    /// suite, which uses it to make the PCA stream X in blocks on a GPU that could hold it.
    pub fn limit_memory(&mut self, bytes: usize) {
        if let Ok(inner) = self.inner.get_mut() {
            inner.memory_limit = Some(bytes);
        }
    }

    pub fn pca(&self, x: &Matrix, p: &PcaParams) -> Result<Pca> {
        let inner = self.lock()?;
        let Some(blas) = inner.blas.as_ref() else {
            bail!("GPU PCA: cuBLAS is not available")
        };
        check_finite(x).context("GPU PCA")?;
        let started = std::time::Instant::now();
        let (pca, stats) =
            pca::randomized_pca(&blas::CudaLinalg::new(&inner, blas), x, p).context("GPU PCA")?;
        tracing::debug!(
            rows = x.rows(),
            dim = x.cols(),
            block_rows = stats.block_rows,
            shifted_cholesky_qr = stats.shifted,
            host_qr = stats.host_qr,
            seconds = started.elapsed().as_secs_f64(),
            "PCA (GPU, randomized SVD)"
        );
        Ok(pca)
    }

    pub fn mst(&self, x: &Matrix, min_samples: usize) -> Result<Vec<MstEdge>> {
        let inner = self.lock()?;
        let mut dev = launch::CudaKernels::new(&inner);
        mst_with(&mut dev, x, min_samples, &GpuMstParams::default()).context("GPU MST")
    }

    /// Whether the context can still run work. CUDA's sticky errors (an illegal address, a
    /// launch failure, an uncorrectable ECC error, a lost device) are returned by every later
    /// call in the context, so a synchronize and a memory query after a failure tell a broken
    /// device from a batch that was merely too large (a one-off error is not repeated, so it
    /// does not retire the device).
    pub fn health(&self) -> Result<()> {
        let inner = self.lock()?;
        // cudarc keeps the last error of a call that could not return one (a free in a drop)
        // and returns it from the next call; that one was the failed batch's, so it goes.
        if let Err(e) = inner.ctx.check_err() {
            tracing::debug!("an earlier CUDA call during the failed batch: {e:?}");
        }
        inner
            .stream
            .synchronize()
            .map_err(|e| anyhow!("synchronizing the CUDA stream: {e:?}"))?;
        inner
            .ctx
            .synchronize()
            .map_err(|e| anyhow!("synchronizing the CUDA context: {e:?}"))?;
        inner
            .ctx
            .mem_get_info()
            .map_err(|e| anyhow!("querying GPU memory: {e:?}"))?;
        Ok(())
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Inner>> {
        self.inner
            .lock()
            .map_err(|_| anyhow!("an earlier GPU batch panicked; GPU disabled for this run"))
    }
}

/// Loads the kernels for `cc`: the cached PTX when there is a sound copy and the driver takes
/// it; otherwise compiled by NVRTC now (and kept).
fn load_kernels(
    ctx: &Arc<CudaContext>,
    cache: &KernelCache,
    cc: (i32, i32),
    name: &str,
) -> Result<(Arc<cudarc::driver::CudaModule>, kernel_cache::Origin)> {
    let started = std::time::Instant::now();
    let (ptx, origin) = cache.kernels(cc)?;
    let (module, origin) = match ctx.load_module(ptx) {
        Ok(m) => (m, origin),
        Err(e) if origin == kernel_cache::Origin::Cache => {
            tracing::warn!("{name} rejected the cached kernels ({e:?}); compiling them again");
            let (ptx, origin) = cache.compile(cc)?;
            let m = ctx.load_module(ptx).map_err(|e| {
                anyhow!(
                    "loading the compiled kernels on {name} (driver too old for this PTX?): {e:?}"
                )
            })?;
            (m, origin)
        }
        Err(e) => {
            bail!("loading the compiled kernels on {name} (driver too old for this PTX?): {e:?}")
        }
    };
    let file = cache.file(cc);
    let kept = file
        .as_deref()
        .map_or("not kept".to_string(), |p| p.display().to_string());
    tracing::info!(
        from = ?origin,
        seconds = started.elapsed().as_secs_f64(),
        "kernels for compute_{}{} ready ({kept})",
        cc.0,
        cc.1
    );
    Ok((module, origin))
}

impl Inner {
    /// Bytes a batch may plan with, and the device's total: free memory, within
    /// `limit_memory`'s cap.
    pub(crate) fn planning_memory(&self) -> Result<(usize, usize)> {
        let (free, total) = self
            .ctx
            .mem_get_info()
            .map_err(|e| anyhow!("querying free GPU memory: {e:?}"))?;
        Ok((
            self.memory_limit.map_or(free, |limit| free.min(limit)),
            total,
        ))
    }

    /// Fails (so the batch goes to the CPU) unless `bytes` plus headroom fit in free memory.
    pub(crate) fn ensure_free(&self, bytes: usize, what: &str) -> Result<()> {
        let (free, total) = self.planning_memory()?;
        let need = bytes.saturating_add(256 << 20);
        if need > free {
            crate::unsuited!(
                "{what} needs about {} MiB of GPU memory, {} MiB of {} MiB free",
                need >> 20,
                free >> 20,
                total >> 20
            );
        }
        Ok(())
    }
}

/// Rejects input the f32 kernels cannot represent (NaN, infinities, values whose squared
/// distances would overflow f32, or whose smallest differences' squares would underflow it),
/// which would break the error bounds the proofs rely on. The CPU takes such a batch.
pub(crate) fn check_finite(x: &Matrix) -> Result<()> {
    use rayon::prelude::*;
    // Branch-free per chunk so it vectorizes (a scalar fold took 1 s at 100k x 3072).
    let (max_abs, bad) = x
        .as_slice()
        .par_chunks(1 << 16)
        .map(|c| {
            let (mut m, mut bad) = (0.0f32, false);
            for &v in c {
                let a = v.abs();
                bad |= !a.is_finite();
                m = m.max(a);
            }
            (m, bad)
        })
        .reduce(|| (0.0, false), |a, b| (a.0.max(b.0), a.1 | b.1));
    if bad {
        crate::unsuited!("input has NaN or infinite values");
    }
    // Squared distances reach 4 * d * max_abs^2; keep them far below f32::MAX.
    let limit = (1e36 / (4.0 * x.cols().max(1) as f64)).sqrt();
    if f64::from(max_abs) > limit {
        crate::unsuited!("input values up to {max_abs} are too large for f32 distances on the GPU");
    }
    // Two f32 values below m differ by a multiple of about m 2^-24 or not at all; below
    // m = 1e-10 the square of that step leaves f32's normal range (1.2e-38), where the kernels'
    // relative error bounds stop holding (and the tensor cores may flush to zero). All zeros
    // are fine: every product is exact.
    if max_abs > 0.0 && max_abs < 1e-10 {
        crate::unsuited!(
            "input values are all below {max_abs:e}: too small for f32 distances on the GPU"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_speed_knobs_are_taken_as_kernel_options() {
        let ok = KernelOptions::parse("  -DLS_MIN_BLOCKS_TF32=5\t--maxrregcount=96 ").unwrap();
        assert_eq!(
            ok.as_slice(),
            ["-DLS_MIN_BLOCKS_TF32=5", "--maxrregcount=96"].as_slice()
        );
        assert!(KernelOptions::parse("").unwrap().is_empty());
        for bad in [
            "--use_fast_math",
            "-DLS_MIN_BLOCKS_TF32",
            "-DLS_MIN_BLOCKS_TF32=",
            "-DLS_MIN_BLOCKS_TF32=five",
            "-DLS_MAX_LEAF=64 -DLS_=1",
            "-DTILE_C=16",
            "-DLS_X=1;",
            "-DLS_x=1",
            "--maxrregcount=",
            "--maxrregcount=9999999",
            "-G",
        ] {
            let e = KernelOptions::parse(bad).unwrap_err().to_string();
            assert!(e.contains("only speed knobs"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_tensor_core_screen_is_chosen_where_it_exists_and_never_forced_where_it_does_not() {
        assert_eq!(Screen::choose((9, 0), None).unwrap(), Screen::Tf32);
        assert_eq!(Screen::choose((8, 0), Some("")).unwrap(), Screen::Tf32);
        assert_eq!(Screen::choose((7, 5), None).unwrap(), Screen::F32);
        assert_eq!(Screen::choose((9, 0), Some("f32")).unwrap(), Screen::F32);
        assert_eq!(
            Screen::choose((8, 6), Some(" tf32 ")).unwrap(),
            Screen::Tf32
        );
        let old = Screen::choose((7, 5), Some("tf32"))
            .unwrap_err()
            .to_string();
        assert!(
            old.contains("sm_75") && old.contains("set it to f32"),
            "{old}"
        );
        let typo = Screen::choose((9, 0), Some("fp16"))
            .unwrap_err()
            .to_string();
        assert!(typo.contains("\"fp16\" is not f32 or tf32"), "{typo}");
    }

    #[test]
    fn check_finite_rejects_what_f32_kernels_cannot_bound() {
        let ok = Matrix::new(2, 2, vec![1.0, -2.0, 3.0, 0.5]).unwrap();
        assert!(check_finite(&ok).is_ok());
        for bad in [f32::NAN, f32::INFINITY, 1e20] {
            let m = Matrix::new(2, 2, vec![1.0, bad, 3.0, 0.5]).unwrap();
            assert!(check_finite(&m).is_err(), "{bad} accepted");
        }
        let tiny = Matrix::new(2, 2, vec![1e-12, -3e-11, 0.0, 2e-12]).unwrap();
        assert!(check_finite(&tiny).is_err(), "values below 1e-10 accepted");
        let small_but_normal = Matrix::new(2, 2, vec![1e-12, -3e-9, 0.0, 2e-12]).unwrap();
        assert!(check_finite(&small_but_normal).is_ok());
        let zeros = Matrix::new(2, 2, vec![0.0; 4]).unwrap();
        assert!(check_finite(&zeros).is_ok(), "all zeros rejected");
    }

    #[test]
    fn open_fails_cleanly_or_names_the_device() {
        // On a machine without a GPU this must be an Err, never a panic.
        match Gpu::open(&KernelCache::off()) {
            Ok(g) => assert!(!g.name().is_empty()),
            Err(e) => assert!(!format!("{e:#}").is_empty()),
        }
    }
}
