//! Compiled kernels kept on disk, so that a process does not run NVRTC again for kernels an
//! earlier one (or the image build, `segclust kernels`) already compiled.
//!
//! A CronJob starts a fresh process every 30 minutes; without a cache each start pays NVRTC's
//! compile, and needs libnvrtc at all. With the cache filled at image build time, the run needs
//! only the driver (and cuBLAS for the PCA).
//!
//! One file per (kernel source, target architecture, build options): its name carries a hash
//! of them, so an upgraded binary never loads an older binary's kernels, nor a tuning run's
//! variant (`SEGCLUST_GPU_NVRTC_OPTIONS`) the default ones. The file's first line is a checksum
//! of the rest, so a truncated or altered file is recompiled rather than handed to the driver.
//! A PTX the driver still rejects (one compiled by a newer NVRTC than the driver knows) is
//! recompiled by `Gpu::open` and overwritten. Failing to write the cache is a warning, never
//! an error: the kernels are in memory either way.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use cudarc::nvrtc::Ptx;

use super::{KERNEL_SOURCE, KernelOptions, compile_kernels};
use crate::fnv::fnv1a;

/// Where the kernels came from (logged, and checked by the tests).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Cache,
    Compiled,
}

/// Where compiled kernels are kept (`None` keeps nothing), and the options they are built with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KernelCache {
    dir: Option<PathBuf>,
    options: KernelOptions,
}

impl KernelCache {
    pub fn at(dir: impl Into<PathBuf>) -> Self {
        Self::in_dir(Some(dir.into()))
    }

    pub fn off() -> Self {
        Self::in_dir(None)
    }

    /// Kernels built with the default options (none beyond the architecture).
    fn in_dir(dir: Option<PathBuf>) -> Self {
        Self {
            dir,
            options: KernelOptions::default(),
        }
    }

    /// The same cache, for kernels built with `options` (a file of their own).
    pub fn with_options(self, options: KernelOptions) -> Self {
        Self { options, ..self }
    }

    /// What `--kernel-cache` means: empty for the user's cache directory
    /// (`$XDG_CACHE_HOME/segclust/kernels`, else `$HOME/.cache/segclust/kernels`), `off` for
    /// none, anything else a directory.
    pub fn from_setting(setting: &str) -> Self {
        match setting.trim() {
            "off" => Self::off(),
            "" => {
                let base = std::env::var_os("XDG_CACHE_HOME")
                    .filter(|v| !v.is_empty())
                    .map(PathBuf::from)
                    .or_else(|| {
                        std::env::var_os("HOME")
                            .filter(|v| !v.is_empty())
                            .map(|h| PathBuf::from(h).join(".cache"))
                    });
                Self::in_dir(base.map(|b| b.join("segclust").join("kernels")))
            }
            dir => Self::at(dir),
        }
    }

    pub fn dir(&self) -> Option<&Path> {
        self.dir.as_deref()
    }

    /// The file for `compute_XY` kernels of this binary's source and the cache's options.
    pub fn file(&self, (major, minor): (i32, i32)) -> Option<PathBuf> {
        let mut key = format!("{}\0compute_{major}{minor}", KERNEL_SOURCE);
        // Without options the key is what it always was: caches filled before keep working.
        for opt in self.options.as_slice() {
            key.push('\0');
            key.push_str(opt);
        }
        let key = fnv1a(key.as_bytes());
        self.dir
            .as_ref()
            .map(|d| d.join(format!("segclust-compute_{major}{minor}-{key:016x}.ptx")))
    }

    /// The kernels for `cc`: from the cache when a sound copy is there, else compiled (and
    /// kept, when possible).
    pub fn kernels(&self, cc: (i32, i32)) -> Result<(Ptx, Origin)> {
        if let Some(ptx) = self.read(cc) {
            return Ok((Ptx::from_src(ptx), Origin::Cache));
        }
        self.compile(cc)
    }

    /// Compiles with NVRTC and keeps the result, whatever the cache holds.
    pub fn compile(&self, cc: (i32, i32)) -> Result<(Ptx, Origin)> {
        let text = compiled_text(cc, &self.options)?;
        if let Err(e) = self.write(cc, &text) {
            tracing::warn!("could not keep the compiled kernels: {e:#}");
        }
        Ok((Ptx::from_src(text), Origin::Compiled))
    }

    /// The cached PTX for `cc`, if its file is there and whole.
    fn read(&self, cc: (i32, i32)) -> Option<String> {
        let path = self.file(cc)?;
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::warn!("reading cached kernels {}: {e}; compiling", path.display());
                return None;
            }
        };
        match unwrap_checked(&text) {
            Ok(ptx) => Some(ptx.to_string()),
            Err(e) => {
                tracing::warn!(
                    "cached kernels {} are unusable ({e}); compiling",
                    path.display()
                );
                None
            }
        }
    }

    /// Writes atomically (a temporary name, then a rename), so a reader sees the old file, no
    /// file, or the whole new one, even with several processes starting at once.
    fn write(&self, cc: (i32, i32), ptx: &str) -> Result<Option<PathBuf>> {
        let Some(path) = self.file(cc) else {
            return Ok(None);
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the kernel cache {}", dir.display()))?;
        let tmp = path.with_extension(format!("ptx.{}.tmp", std::process::id()));
        std::fs::write(&tmp, wrap_checked(ptx))
            .with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("moving {}", path.display()))?;
        Ok(Some(path))
    }
}

/// Compiles the kernels for `cc` into `cache` whatever it holds (`segclust kernels`); returns
/// the file written.
pub fn fill(cache: &KernelCache, cc: (i32, i32)) -> Result<PathBuf> {
    if cache.dir().is_none() {
        bail!("no kernel cache directory: give one with --kernel-cache DIR")
    }
    // The write's own error, not a look for the file afterwards: an older file proves nothing.
    cache
        .write(cc, &compiled_text(cc, &cache.options)?)?
        .context("no kernel cache directory")
}

/// The kernels for `cc` compiled by NVRTC, as PTX text.
fn compiled_text(cc: (i32, i32), options: &KernelOptions) -> Result<String> {
    let ptx = compile_kernels(Some(cc), options)?;
    let bytes = ptx
        .as_bytes()
        .context("NVRTC returned no PTX image")?
        .split(|&b| b == 0)
        .next()
        .unwrap_or_default();
    String::from_utf8(bytes.to_vec()).context("NVRTC's PTX is not UTF-8")
}

const HEADER: &str = "// segclust kernel cache, fnv1a-64 of the rest: ";

fn wrap_checked(ptx: &str) -> String {
    format!("{HEADER}{:016x}\n{ptx}", fnv1a(ptx.as_bytes()))
}

fn unwrap_checked(text: &str) -> std::result::Result<&str, String> {
    let (first, rest) = text.split_once('\n').ok_or("no header line")?;
    let sum = first.strip_prefix(HEADER).ok_or("no checksum header")?;
    let want = u64::from_str_radix(sum, 16).map_err(|_| "a malformed checksum")?;
    if fnv1a(rest.as_bytes()) != want {
        return Err("the checksum does not match: truncated or altered".into());
    }
    if rest.contains('\0') {
        return Err("a NUL byte in the PTX".into());
    }
    Ok(rest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_named_by_source_and_architecture() {
        let c = KernelCache::at("/k");
        let a = c.file((9, 0)).unwrap();
        assert!(a.starts_with("/k"));
        assert_ne!(a, c.file((8, 0)).unwrap());
        assert_eq!(a, KernelCache::at("/k").file((9, 0)).unwrap());
        assert_eq!(KernelCache::off().file((9, 0)), None);
        assert_eq!(KernelCache::from_setting("off"), KernelCache::off());
        assert_eq!(KernelCache::from_setting(" /x/y "), KernelCache::at("/x/y"));
    }

    #[test]
    fn build_options_get_files_of_their_own() {
        let plain = KernelCache::at("/k");
        // The name without options is the one caches filled by earlier builds carry.
        let before = fnv1a(format!("{KERNEL_SOURCE}\0compute_90").as_bytes());
        assert_eq!(
            plain.file((9, 0)).unwrap(),
            PathBuf::from(format!("/k/segclust-compute_90-{before:016x}.ptx"))
        );
        let five = KernelOptions::parse("-DLS_MIN_BLOCKS_TF32=5").unwrap();
        let six = KernelOptions::parse("-DLS_MIN_BLOCKS_TF32=6").unwrap();
        let a = plain
            .clone()
            .with_options(five.clone())
            .file((9, 0))
            .unwrap();
        assert_ne!(a, plain.file((9, 0)).unwrap());
        assert_ne!(a, plain.clone().with_options(six).file((9, 0)).unwrap());
        assert_eq!(
            a,
            KernelCache::at("/k")
                .with_options(five)
                .file((9, 0))
                .unwrap()
        );
    }

    #[test]
    fn a_damaged_file_is_not_used() {
        let dir = tempfile::tempdir().unwrap();
        let c = KernelCache::at(dir.path());
        let ptx = ".version 8.8\n.target sm_90\n.entry leaf_candidates()\n{\n}\n";
        let path = c.write((9, 0), ptx).unwrap().unwrap();
        assert_eq!(c.read((9, 0)).as_deref(), Some(ptx));
        let whole = std::fs::read_to_string(&path).unwrap();
        // Truncated (a writer killed mid-file without the rename cannot leave this, but a
        // full disk or a hand edit can), altered, and headerless copies are all refused.
        for bad in [
            whole[..whole.len() - 3].to_string(),
            whole.replace("sm_90", "sm_80"),
            ptx.to_string(),
            String::new(),
        ] {
            std::fs::write(&path, bad).unwrap();
            assert_eq!(c.read((9, 0)), None);
        }
        assert_eq!(KernelCache::off().read((9, 0)), None);
        // No temporary files are left beside the cache file.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1);
    }
}
