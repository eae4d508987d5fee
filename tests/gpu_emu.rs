//! The GPU MST's host algorithm with the real CUDA kernels, run on the CPU.
//!
//! kernels/*.cu are compiled with the system C++ compiler against tests/kernel_emu/cuda_shim.h
//! (one thread per CUDA thread, real barriers) and driven through the same `NearestKernels`
//! interface as the CUDA backend, so the kernels' logic, the leaf tables and every proof in
//! `gpu::mst` are checked on machines without a GPU. Speed is not: that needs the device.
//! A missing C++ compiler fails these tests (CI installs one); it never skips them.

use libloading::{Library, Symbol};
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
#[path = "common/fixtures.rs"]
mod fixtures;

use fixtures::{ari, assert_fixture_runs, assert_spanning_tree, fixtures, same_mst_weights};
use segclust::cluster::{self, HdbscanParams, MstEdge, Selection, TieOrder, prim};
use segclust::demo::{DemoParams, generate};
use segclust::device::{Accelerator, Device};
use segclust::gpu::leaves::{Components, MAX_LEAF};
use segclust::gpu::{
    GpuMstParams, LeafFound, LeafParams, LeafTables, NearestKernels, Screen, canary, mst_with,
};
use segclust::labeling::FallbackLabeler;
use segclust::matrix::Matrix;
use segclust::pipeline::{PipelineConfig, run_team};
use segclust::reduce::{self, Pca, PcaParams};
use segclust::source::{Source, write_segments};
use segclust::store::Store;
use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};

type NearestFn = unsafe extern "C" fn(
    u32,
    u32,
    *const f32,
    i32,
    i32,
    *const i32,
    i32,
    *const i32,
    *const f32,
    i32,
    *mut f32,
    *mut i32,
);
type LeafFn = unsafe extern "C" fn(
    u32,
    u32,
    *const f32,
    i32,
    *const i32,
    *const i32,
    *const i32,
    *const i32,
    *const f32,
    *const f32,
    i32,
    *const f32,
    *const i32,
    *const f32,
    *const i32,
    *const f32,
    *const i32,
    *const f32,
    *mut i32,
    *const f32,
    *const f32,
    *const f32,
    *const f32,
    f32,
    *const f32,
    f32,
    i32,
    i32,
    i32,
    i32,
    *mut f32,
    *mut i32,
    *mut f32,
    *mut i32,
);

/// Compiles tests/kernel_emu/emu.cpp (which includes kernels/*.cu) once per test run.
fn library() -> &'static Library {
    static LIB: OnceLock<Library> = OnceLock::new();
    LIB.get_or_init(|| {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("segclust_kernel_emu.so");
        let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".to_string());
        // -march=native: built and run on this machine; fmaf becomes one instruction (the
        // same correctly rounded result), and ISO C++ mode keeps other expressions unfused.
        let status = Command::new(&cxx)
            .args([
                "-std=c++20",
                "-O2",
                "-march=native",
                "-shared",
                "-fPIC",
                "-pthread",
            ])
            .args(["-Wall", "-Wno-unknown-pragmas", "-Werror"])
            .arg("-o")
            .arg(&out)
            .arg(root.join("tests/kernel_emu/emu.cpp"))
            .status()
            .unwrap_or_else(|e| panic!("running the C++ compiler `{cxx}` (set CXX): {e}"));
        assert!(status.success(), "compiling the kernel emulator failed");
        // SAFETY: the library is ours, built just above; its initializers only set up statics.
        unsafe { Library::new(&out) }.unwrap_or_else(|e| panic!("loading {out:?}: {e}"))
    })
}

/// Rows the emulated launches on this thread measured in the difference form since the last
/// call (`emu_take_exact_rows`).
fn take_exact_rows() -> usize {
    // SAFETY: the symbol has the signature of emu_take_exact_rows in emu.cpp.
    let n = unsafe {
        let f: Symbol<unsafe extern "C" fn() -> u64> = library()
            .get(b"emu_take_exact_rows")
            .expect("emu_take_exact_rows");
        f()
    };
    usize::try_from(n).expect("a count")
}

/// `NearestKernels` on the emulated kernels; counts the rows each kernel was asked about, so
/// the tests can tell whether the leaf search did its share.
#[derive(Default)]
struct Emu {
    x: Vec<f32>,
    n: usize,
    d: usize,
    start: Vec<i32>,
    cand: Vec<i32>,
    cand_lb2: Vec<f32>,
    rest_lb2: Vec<f32>,
    m: usize,
    centres: Vec<f32>,
    radius: Vec<f32>,
    tc_lo: Vec<f32>,
    tc_hi: Vec<f32>,
    slack: f32,
    norm2: Vec<f32>,
    screen_err: f32,
    screen_err_tf32: f32,
    /// Dot products on the (emulated) tensor cores, as on sm_80 and later.
    tf32: bool,
    /// The Boruvka round's tables (`set_components`).
    round: Option<Components>,
    comp_best2: Vec<i32>,
    leaf_queries: usize,
    /// Rows the leaf search's screen let through to the difference form (`exact_dist2`).
    exact_rows: usize,
    brute_queries: usize,
    /// Query-row pairs the kNN leaf search measured (the kernel's own count).
    knn_pairs: usize,
    /// The same for the Boruvka rounds' leaf searches, all rounds together: per block, the
    /// rows of its leaf times the rows it measured (what its tiles load) ...
    boruvka_pairs: usize,
    /// ... and its rows that still query times the rows measured (what the threads compute:
    /// a thread without a query skips the distances).
    boruvka_active_pairs: usize,
    /// ... and what a GPU's warps compute: a warp computes for all its 32 threads when one of
    /// them still queries, and not at all when none does.
    boruvka_warp_pairs: usize,
    /// Per Boruvka leaf-search call: (queries, pairs computed).
    boruvka_calls: Vec<(usize, usize)>,
    /// Boruvka searches over two labels: a giant component's edge looked up from outside.
    giant_searches: usize,
    /// Blocks that run at once in Boruvka searches (None: one after another).
    wave: Option<usize>,
}

impl Emu {
    /// Runs `emu_leaf_candidates` for `qleaves`, whose outputs start at block `first` of `out`,
    /// with `comp_best2` as the components' shared cutoffs.
    #[allow(clippy::too_many_arguments)]
    fn leaf_blocks(
        &self,
        qleaves: &[i32],
        qpos: &[i32],
        first: usize,
        cutoff2: &[f32],
        boruvka: bool,
        comp_best2: &mut [i32],
        walk: usize,
        need: usize,
        keep: usize,
        out: &mut LeafFound,
    ) {
        let (null_i, null_f) = (std::ptr::null::<i32>(), std::ptr::null::<f32>());
        let (comp, core2, leaf_comp, leaf_core2_lo, tile_one_comp, tile_core2_lo, best2) =
            match (boruvka, &self.round) {
                (true, Some(r)) => (
                    r.comp.as_ptr(),
                    r.core2.as_ptr(),
                    r.leaf_comp.as_ptr(),
                    r.leaf_core2_lo.as_ptr(),
                    r.tile_one_comp.as_ptr(),
                    r.tile_core2_lo.as_ptr(),
                    comp_best2.as_mut_ptr(),
                ),
                (true, None) => panic!("a Boruvka search before set_components"),
                (false, _) => (
                    null_i,
                    null_f,
                    null_i,
                    null_f,
                    null_i,
                    null_f,
                    std::ptr::null_mut(),
                ),
            };
        let keys = &mut out.keys[first * MAX_LEAF * keep..];
        let idx = &mut out.idx[first * MAX_LEAF * keep..];
        let unseen2 = &mut out.unseen2[first * MAX_LEAF..];
        let rows = &mut out.rows[first..];
        assert!(rows.len() >= qleaves.len());
        // SAFETY: the symbol has the signature of emu_leaf_candidates in emu.cpp, and every
        // pointer covers what the kernel indexes (tables as loaded, outputs from block `first`
        // on, as allocated for all blocks).
        unsafe {
            let f: Symbol<LeafFn> = library()
                .get(b"emu_leaf_candidates")
                .expect("emu_leaf_candidates");
            f(
                qleaves.len() as u32,
                MAX_LEAF as u32,
                self.x.as_ptr(),
                self.d as i32,
                self.start.as_ptr(),
                qleaves.as_ptr(),
                qpos[first * MAX_LEAF..].as_ptr(),
                self.cand.as_ptr(),
                self.cand_lb2.as_ptr(),
                self.rest_lb2.as_ptr(),
                self.m as i32,
                cutoff2.as_ptr(),
                comp,
                core2,
                leaf_comp,
                leaf_core2_lo,
                tile_one_comp,
                tile_core2_lo,
                best2,
                self.centres.as_ptr(),
                self.radius.as_ptr(),
                self.tc_lo.as_ptr(),
                self.tc_hi.as_ptr(),
                self.slack,
                self.norm2.as_ptr(),
                if self.tf32 {
                    self.screen_err_tf32
                } else {
                    self.screen_err
                },
                i32::from(self.tf32),
                walk.min(i32::MAX as usize) as i32,
                need as i32,
                keep as i32,
                keys.as_mut_ptr(),
                idx.as_mut_ptr(),
                unseen2.as_mut_ptr(),
                rows.as_mut_ptr(),
            );
        }
    }
}

impl NearestKernels for Emu {
    fn load(&mut self, rows: &[f32], d: usize, t: &LeafTables) -> anyhow::Result<()> {
        self.x = rows.to_vec();
        self.d = d;
        self.n = rows.len() / d;
        self.start = t.start.clone();
        self.cand = t.cand.clone();
        self.cand_lb2 = t.cand_lb2.clone();
        self.rest_lb2 = t.rest_lb2.clone();
        self.m = t.m;
        self.centres = t.centres.clone();
        self.radius = t.radius.clone();
        self.tc_lo = t.tc_lo.clone();
        self.tc_hi = t.tc_hi.clone();
        self.slack = t.slack;
        self.norm2 = t.norm2.clone();
        self.screen_err = t.screen_err;
        self.screen_err_tf32 = t.screen_err_tf32;
        Ok(())
    }

    fn set_components(&mut self, c: &Components, comp_cut2: &[f32]) -> anyhow::Result<()> {
        assert_eq!(c.comp.len(), self.n);
        assert_eq!(c.tile_core2_lo.len(), self.n);
        assert_eq!(c.leaf_comp.len(), self.start.len() - 1);
        self.comp_best2 = comp_cut2.iter().map(|c| c.to_bits() as i32).collect();
        self.giant_searches += usize::from(comp_cut2.len() == 2 && self.n > 2);
        self.round = Some(c.clone());
        Ok(())
    }

    fn leaf_candidates(
        &mut self,
        qleaves: &[i32],
        qpos: &[i32],
        cutoff2: &[f32],
        boruvka: bool,
        walk: usize,
        need: usize,
        keep: usize,
    ) -> anyhow::Result<LeafFound> {
        assert_eq!(cutoff2.len(), self.n);
        let blocks = qleaves.len();
        assert_eq!(qpos.len(), blocks * MAX_LEAF);
        for (&l, ps) in qleaves.iter().zip(qpos.chunks(MAX_LEAF)) {
            let (s, e) = (self.start[l as usize], self.start[l as usize + 1]);
            let k = ps.iter().take_while(|&&p| p >= 0).count();
            assert!(ps[k..].iter().all(|&p| p == -1), "queries not packed first");
            assert!(
                ps[..k].iter().all(|p| (s..e).contains(p)),
                "a query outside its leaf"
            );
        }
        let mut out = LeafFound {
            keys: vec![f32::NAN; blocks * MAX_LEAF * keep],
            idx: vec![-2; blocks * MAX_LEAF * keep],
            unseen2: vec![f32::NAN; blocks * MAX_LEAF],
            rows: vec![-1; blocks],
        };
        // On a GPU the blocks of one wave run at once: what one publishes through
        // `comp_best2` reaches only the blocks of later waves. `wave: None` runs the blocks
        // one after another (each sees every earlier block's edges), as the plain emulator
        // does.
        let wave = if boruvka { self.wave } else { None };
        match wave {
            None => {
                let mut shared = std::mem::take(&mut self.comp_best2);
                self.leaf_blocks(
                    qleaves,
                    qpos,
                    0,
                    cutoff2,
                    boruvka,
                    &mut shared,
                    walk,
                    need,
                    keep,
                    &mut out,
                );
                self.comp_best2 = shared;
            }
            Some(w) => {
                let mut first = 0;
                for chunk in qleaves.chunks(w.max(1)) {
                    let seen = self.comp_best2.clone();
                    let mut published = seen.clone();
                    for (i, &l) in chunk.iter().enumerate() {
                        let mut own = seen.clone();
                        self.leaf_blocks(
                            &[l],
                            qpos,
                            first + i,
                            cutoff2,
                            boruvka,
                            &mut own,
                            walk,
                            need,
                            keep,
                            &mut out,
                        );
                        published
                            .iter_mut()
                            .zip(&own)
                            .for_each(|(p, &o)| *p = (*p).min(o));
                    }
                    self.comp_best2 = published;
                    first += chunk.len();
                }
            }
        }
        self.exact_rows += take_exact_rows();
        let mut call = (0, 0);
        for ((&l, &rows), ps) in qleaves.iter().zip(&out.rows).zip(qpos.chunks(MAX_LEAF)) {
            let (s, e) = (
                self.start[l as usize] as usize,
                self.start[l as usize + 1] as usize,
            );
            let rows = usize::try_from(rows).expect("a row count");
            let queries = |ps: &[i32]| {
                ps.iter()
                    .filter(|&&p| p >= 0 && cutoff2[p as usize] > 0.0)
                    .count()
            };
            let active = queries(ps);
            self.leaf_queries += active;
            if boruvka {
                self.boruvka_pairs += (e - s) * rows;
                self.boruvka_active_pairs += active * rows;
                let warps = ps.chunks(32).filter(|w| queries(w) > 0).count();
                self.boruvka_warp_pairs += 32 * warps * rows;
                call.0 += active;
                call.1 += active * rows;
            } else {
                self.knn_pairs += (e - s) * rows;
            }
        }
        if boruvka {
            self.boruvka_calls.push(call);
        }
        Ok(out)
    }

    fn nearest_candidates(
        &mut self,
        queries: &[i32],
        boruvka: bool,
        keep: usize,
    ) -> anyhow::Result<(Vec<f32>, Vec<i32>)> {
        self.brute_queries += queries.len();
        let nq = queries.len();
        let mut keys = vec![f32::NAN; nq * keep];
        let mut idx = vec![-2; nq * keep];
        let (comp, core2) = match (boruvka, &self.round) {
            (true, Some(r)) => (r.comp.as_ptr(), r.core2.as_ptr()),
            (true, None) => panic!("a Boruvka search before set_components"),
            (false, _) => (std::ptr::null(), std::ptr::null()),
        };
        let block = 64u32;
        // SAFETY: as above, for emu_nearest_candidates.
        unsafe {
            let f: Symbol<NearestFn> = library()
                .get(b"emu_nearest_candidates")
                .expect("emu_nearest_candidates");
            f(
                nq.div_ceil(block as usize) as u32,
                block,
                self.x.as_ptr(),
                self.n as i32,
                self.d as i32,
                queries.as_ptr(),
                nq as i32,
                comp,
                core2,
                keep as i32,
                keys.as_mut_ptr(),
                idx.as_mut_ptr(),
            );
        }
        Ok((keys, idx))
    }
}

/// `n` points around Gaussian centres of different spreads, plus a share of uniform noise.
fn blobs(n: usize, d: usize, clusters: usize, noise: f64, seed: u64) -> Matrix {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let centres: Vec<Vec<f32>> = (0..clusters)
        .map(|_| (0..d).map(|_| rng.random_range(-10.0f32..10.0)).collect())
        .collect();
    let mut data = Vec::with_capacity(n * d);
    for _ in 0..n {
        if rng.random_bool(noise) {
            data.extend((0..d).map(|_| rng.random_range(-12.0f32..12.0)));
            continue;
        }
        let c = &centres[rng.random_range(0..clusters)];
        let spread = 0.2 + 0.8 * rng.random::<f32>();
        data.extend(c.iter().map(|&m| {
            let z: f32 = StandardNormal.sample(&mut rng);
            m + spread * z
        }));
    }
    Matrix::new(n, d, data).expect("shape")
}

/// The emulated GPU MST against the CPU's: a spanning tree with the same weights (every MST of
/// a graph has the same sorted weights), and the same HDBSCAN labels and probabilities, ties
/// included: in the canonical order of equal merges (`TieOrder`) which equal edges each path
/// kept does not matter.
///
/// Both screens run: the tensor cores' (TF32) must give the very same tree, edge for edge, and
/// the same work counts, since the screen only decides which rows are measured exactly and the
/// lists it leaves are bit-for-bit the FP32 screen's. Returns the FP32 run.
fn check(x: &Matrix, min_samples: usize, params: &GpuMstParams) -> Emu {
    let (f32_run, without) = check_tree(Emu::default(), x, min_samples, params);
    let mut tf32 = Emu {
        tf32: true,
        ..Emu::default()
    };
    let with_tensor_cores = mst_with(&mut tf32, x, min_samples, params).expect("TF32 MST");
    assert_eq!(
        edges(&with_tensor_cores),
        edges(&without),
        "the TF32 screen changed the tree"
    );
    assert_eq!(
        (tf32.leaf_queries, tf32.brute_queries, tf32.knn_pairs),
        (
            f32_run.leaf_queries,
            f32_run.brute_queries,
            f32_run.knn_pairs
        ),
        "the TF32 screen changed what the kernels were asked"
    );
    assert_eq!(tf32.boruvka_calls, f32_run.boruvka_calls);
    f32_run
}

/// An MST's edges as comparable tuples (weights by their bits).
fn edges(mst: &[MstEdge]) -> Vec<(u32, u32, u64)> {
    mst.iter()
        .map(|e| (e.a.min(e.b), e.a.max(e.b), e.weight.to_bits()))
        .collect()
}

fn check_with(emu: Emu, x: &Matrix, min_samples: usize, params: &GpuMstParams) -> Emu {
    check_tree(emu, x, min_samples, params).0
}

/// `check_with`, also returning the emulated GPU's tree.
fn check_tree(
    mut emu: Emu,
    x: &Matrix,
    min_samples: usize,
    params: &GpuMstParams,
) -> (Emu, Vec<MstEdge>) {
    let gpu = mst_with(&mut emu, x, min_samples, params).expect("emulated GPU MST");
    let cpu = cluster::mst_cpu(x, min_samples).expect("CPU MST");
    let n = x.rows();
    assert_spanning_tree(n, &gpu);
    assert!(
        same_mst_weights(&gpu, &cpu),
        "MST weights differ from the CPU's"
    );
    for min_cluster_size in [2, 5] {
        for selection in [Selection::Leaf, Selection::Eom] {
            let hp = HdbscanParams {
                min_samples,
                min_cluster_size,
                selection,
                ..HdbscanParams::default()
            };
            let what = format!("min_cluster_size {min_cluster_size}, {selection:?}");
            let lg = cluster::labels_with_ties(n, gpu.clone(), TieOrder::Canonical, &hp);
            let lc = cluster::labels_with_ties(n, cpu.clone(), TieOrder::Canonical, &hp);
            assert_eq!(lg.labels, lc.labels, "labels differ ({what})");
            assert_eq!(
                lg.probabilities, lc.probabilities,
                "probabilities differ ({what})"
            );
        }
    }
    (emu, gpu)
}

#[test]
fn scikit_learn_fixtures_through_the_emulated_gpu() {
    // The same bar as the CPU's fast path in tests/sklearn_parity.rs: MST weights equal to
    // Prim's to the bit; in the canonical order of equal merges, the labels and probabilities
    // of Prim's MST on every run; scikit-learn's labels (ARI 1) and probabilities on every run
    // that is not tie-sensitive. Small leaves and short lists, so that every fallback runs.
    let params = GpuMstParams {
        leaves: LeafParams {
            leaf_size: 32,
            list_len: 8,
        },
        boruvka_keep: 2,
    };
    let (mut runs, mut failures) = (0, Vec::new());
    for (fx, x) in fixtures() {
        let mut msts: HashMap<usize, (Vec<MstEdge>, Vec<MstEdge>)> = HashMap::new();
        for run in &fx.runs {
            let what = run.describe(&fx.name);
            let (mst, exact) = msts.entry(run.min_samples).or_insert_with(|| {
                let mut emu = Emu::default();
                let gpu = mst_with(&mut emu, &x, run.min_samples, &params)
                    .unwrap_or_else(|e| panic!("{what}: emulated GPU MST failed: {e:#}"));
                if x.rows() >= 2 {
                    assert_spanning_tree(x.rows(), &gpu);
                }
                let exact = prim::mst(&x, run.min_samples);
                if !same_mst_weights(&gpu, &exact) {
                    failures.push(format!("{what}: MST weights differ from Prim's"));
                }
                let mut tensor_cores = Emu {
                    tf32: true,
                    ..Emu::default()
                };
                let tf32 = mst_with(&mut tensor_cores, &x, run.min_samples, &params)
                    .unwrap_or_else(|e| panic!("{what}: emulated TF32 MST failed: {e:#}"));
                if edges(&tf32) != edges(&gpu) {
                    failures.push(format!("{what}: the TF32 screen changed the tree"));
                }
                (gpu, exact)
            });
            let params = run.params();
            let got =
                cluster::labels_with_ties(x.rows(), mst.clone(), TieOrder::Canonical, &params);
            let cpu =
                cluster::labels_with_ties(x.rows(), exact.clone(), TieOrder::Canonical, &params);
            if got != cpu {
                failures.push(format!("{what}: canonical labels differ from Prim's MST's"));
            }
            runs += 1;
            if run.tie_sensitive {
                continue;
            }
            let score = ari(&got.labels, &run.labels);
            if score != 1.0 {
                failures.push(format!("{what}: ARI {score} vs scikit-learn"));
            }
            if !run.probabilities_tie_sensitive {
                let diff = got
                    .probabilities
                    .iter()
                    .zip(&run.probabilities)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0, f64::max);
                if diff > 1e-9 {
                    failures.push(format!("{what}: probabilities differ by {diff}"));
                }
            }
        }
    }
    assert_fixture_runs("emulated GPU", runs, &failures);
}

#[test]
fn small_leaves_and_short_lists_exercise_every_fallback() {
    // Leaves of 24 rows and lists of 6 leaves: many queries run off the end of their list and
    // go to the brute-force kernel, some to the host.
    let x = blobs(1500, 12, 6, 0.1, 11);
    let params = GpuMstParams {
        leaves: LeafParams {
            leaf_size: 24,
            list_len: 6,
        },
        boruvka_keep: 2,
    };
    for ms in [1, 2, 5] {
        let emu = check(&x, ms, &params);
        assert!(
            emu.brute_queries > 0,
            "the brute-force path was not exercised"
        );
        assert!(
            emu.giant_searches > 0,
            "no round looked up a giant component's edge from outside"
        );
    }
}

#[test]
fn default_tables_prove_most_rows_in_the_leaf_search() {
    let x = blobs(4000, 24, 12, 0.05, 5);
    let emu = check(&x, 2, &GpuMstParams::default());
    assert!(
        emu.leaf_queries >= 4000,
        "the kNN pass did not use the leaf search"
    );
    let share = emu.knn_pairs as f64 / (4000.0 * 4000.0);
    eprintln!(
        "kNN leaf search measured {:.1}% of the brute-force pairs; brute force took {} queries",
        100.0 * share,
        emu.brute_queries
    );
    assert!(
        share < 0.6,
        "the leaf search measured {share:.2} of all pairs"
    );
    assert!(
        emu.brute_queries * 10 < emu.leaf_queries,
        "the brute-force kernel did {} of {} queries' work: the leaf search proves too little",
        emu.brute_queries,
        emu.leaf_queries
    );
}

/// A measurement's knob from the environment, or its default.
fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A measurement's log on stderr, filtered by `SEGCLUST_LOG` (e.g. `segclust::gpu=debug` for
/// the GPU MST's stages and rounds).
fn log_from_env() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("SEGCLUST_LOG"))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
}

/// What the pipeline feeds the kernels at the bench's sizes: the PCA projection of
/// `synthetic_embeddings(n, 3072)`, kept in `target/tmp/` (minutes to make at 1M rows).
fn bench_projection(n: usize) -> Matrix {
    let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-pca-{n}.npy"));
    if let Ok(y) = segclust::npy::read_matrix(&cache) {
        return y;
    }
    let (x, _) = segclust::bench::synthetic_embeddings(n, 3072, 42);
    let y = reduce::pca_cpu(&x, &PcaParams::default())
        .expect("PCA")
        .projected;
    segclust::npy::write_matrix(&cache, &y).expect("cache the projection");
    y
}

#[test]
fn the_start_up_check_passes_on_the_emulated_kernels() {
    // `Gpu::open` keeps the tensor cores only if both screens give the same tree on the
    // canary's rows: a correct kernel must pass it (a broken one is shown to fail it by
    // mutating the fragment layout; see STATUS.md, session 16).
    let rows = canary::rows();
    let agree = canary::screens_agree(|screen| {
        let mut emu = Emu {
            tf32: screen == Screen::Tf32,
            ..Emu::default()
        };
        mst_with(&mut emu, &rows, 2, &GpuMstParams::default())
    });
    assert!(agree.expect("the emulated MSTs"), "the screens disagree");
}

/// A measurement, not a check: the host's share after the MST (single linkage, condensing,
/// selection), which a GPU MST leaves to the CPU and which counts against the 10 s bar at 1M.
/// The MST is the CPU's exact one of `SEGCLUST_EMU_ROWS` points in 3-D, in clusters of about
/// 25 (the bench's 1M run found about 100,000 clusters), so that it is quick to make; the
/// stages' cost depends on n and the tree's shape, not on the dimension. Logs each stage with
/// `SEGCLUST_LOG=segclust::cluster=debug`.
/// `SEGCLUST_LOG=segclust::cluster=debug SEGCLUST_EMU_ROWS=1000000 cargo test --release --test
/// gpu_emu labels_at_scale -- --ignored --nocapture`
#[test]
#[ignore = "a measurement (a minute at 1M rows), not a check"]
fn labels_at_scale() {
    let n: usize = env_or("SEGCLUST_EMU_ROWS", 1_000_000);
    let reps: usize = env_or("SEGCLUST_EMU_REPS", 3);
    log_from_env();
    let x = blobs(n, 3, n / 25, 0.05, 17);
    let started = std::time::Instant::now();
    let mst = cluster::mst_cpu(&x, 2).expect("CPU MST");
    eprintln!(
        "{n} x 3: exact MST on the CPU in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let params = HdbscanParams {
        min_samples: 2,
        min_cluster_size: 5,
        ..HdbscanParams::default()
    };
    for rep in 0..reps {
        let started = std::time::Instant::now();
        let c = cluster::labels_with_ties(n, mst.clone(), TieOrder::Canonical, &params);
        let clusters = c.labels.iter().copied().max().map_or(0, |m| m + 1);
        eprintln!(
            "run {rep}: labels from the MST in {:.2} s ({clusters} clusters)",
            started.elapsed().as_secs_f64()
        );
    }
}

/// A measurement, not a check: what the TF32 screen's wider error bound costs. The tensor
/// cores make the dot products many times faster, but every row the screen lets through is
/// measured again in the difference form, one thread at a time. For sampled query leaves, the
/// kNN pass's leaf search (need 2, keep 10, as `mst_with` asks) with each screen: the rows
/// measured (tiles loaded, the same for both) and the rows measured again, on the bench's
/// projection and on tight blobs far from the origin, where |p|^2 is largest against the keys.
/// Also checks that both screens return the same lists.
/// `SEGCLUST_EMU_ROWS=20000 cargo test --release --test gpu_emu tf32_screen_cost -- --ignored
/// --nocapture`
#[test]
#[ignore = "a measurement, not a check"]
fn tf32_screen_cost_at_scale() {
    let n: usize = env_or("SEGCLUST_EMU_ROWS", 20_000);
    let sampled: usize = env_or("SEGCLUST_EMU_LEAVES", 24);
    let bench = bench_projection(n);
    let blobs = blobs(n, bench.cols(), 40, 0.05, 3);
    for (what, x) in [("bench projection", &bench), ("blobs", &blobs)] {
        let t = LeafTables::build(x, &LeafParams::default()).expect("tables");
        let xp = in_positions(x, &t);
        let step = (t.leaves() / sampled.max(1)).max(1);
        let qleaves: Vec<i32> = (0..t.leaves() as i32).step_by(step).collect();
        let queries: usize = qleaves
            .iter()
            .map(|&l| (t.start[l as usize + 1] - t.start[l as usize]) as usize)
            .sum();
        let mut lists = Vec::new();
        for tf32 in [false, true] {
            let mut emu = Emu {
                tf32,
                ..Emu::default()
            };
            emu.load(xp.as_slice(), xp.cols(), &t).expect("load");
            let started = std::time::Instant::now();
            let out = emu
                .leaf_candidates(
                    &qleaves,
                    &every_row(&t, &qleaves),
                    &vec![f32::INFINITY; n],
                    false,
                    usize::MAX,
                    2,
                    10,
                )
                .expect("leaf search");
            let measured: usize = qleaves
                .iter()
                .zip(&out.rows)
                .map(|(&l, &r)| {
                    (t.start[l as usize + 1] - t.start[l as usize]) as usize * r as usize
                })
                .sum();
            eprintln!(
                "{what}, {n} x {}, {} query leaves ({queries} rows), {} screen: {measured} \
                 pairs measured, {} measured again ({:.3}%), {:.1} s emulated",
                x.cols(),
                qleaves.len(),
                if tf32 { "TF32" } else { "FP32" },
                emu.exact_rows,
                100.0 * emu.exact_rows as f64 / measured.max(1) as f64,
                started.elapsed().as_secs_f64()
            );
            lists.push((out.keys, out.idx));
        }
        assert!(lists[0] == lists[1], "{what}: the screens' lists differ");
        // What sets the screen's margin (|p|^2 + |o|^2) against the keys it must decide, and
        // what it would be if the rows were taken relative to their leaf's centre.
        let mean = |v: &mut dyn Iterator<Item = f64>| {
            let (s, c) = v.fold((0.0, 0usize), |(s, c), x| (s + x, c + 1));
            s / c.max(1) as f64
        };
        let norm2 = mean(&mut t.norm2.iter().map(|&v| f64::from(v)));
        let leaf_of = t.leaf_of_positions();
        let centred2 = mean(&mut (0..n).map(|p| {
            let c = &t.centres[leaf_of[p] as usize * x.cols()..][..x.cols()];
            xp.row(p)
                .iter()
                .zip(c)
                .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
                .sum::<f64>()
        }));
        let keep = 10;
        let second = mean(
            &mut lists[0]
                .0
                .chunks(keep)
                .filter(|k| k[1].is_finite())
                .map(|k| f64::from(k[1])),
        );
        eprintln!(
            "{what}: mean |p|^2 {norm2:.3}, mean |p - leaf centre|^2 {centred2:.3}, mean \
             2nd-nearest key {second:.3}"
        );
    }
}

/// A measurement, not a check of speed: the kernels' work on what the pipeline feeds them (the
/// PCA projection of the bench's synthetic embeddings), in query-row pairs, the unit of a GPU
/// kernel's time. Prints the shares of brute force; checks the result like every test here.
/// `SEGCLUST_EMU_ROWS=20000 cargo test --release --test gpu_emu work_at_scale -- --ignored
/// --nocapture`
#[test]
#[ignore]
fn work_at_scale() {
    let n: usize = env_or("SEGCLUST_EMU_ROWS", 20_000);
    let y = bench_projection(n);
    // An H100 runs 132 SMs x 4 blocks of `leaf_candidates` (128 threads, 128 registers) at once.
    let wave: usize = env_or("SEGCLUST_EMU_WAVE", 528);
    let emu = Emu {
        wave: (wave > 0).then_some(wave),
        ..Emu::default()
    };
    log_from_env();
    let started = std::time::Instant::now();
    let emu = check_with(emu, &y, 2, &GpuMstParams::default());
    let all = (n * n) as f64;
    eprintln!(
        "{n} x {}, Boruvka blocks in waves of {wave}: {} leaves; kNN leaf search {:.2}% of \
         the brute-force pairs, Boruvka leaf searches {:.2}% loaded, {:.2}% computed ({:.2}% \
         by whole warps; all rounds), brute force {} queries ({:.2}%); {:.0} s emulated",
        y.cols(),
        emu.start.len() - 1,
        100.0 * emu.knn_pairs as f64 / all,
        100.0 * emu.boruvka_pairs as f64 / all,
        100.0 * emu.boruvka_active_pairs as f64 / all,
        100.0 * emu.boruvka_warp_pairs as f64 / all,
        emu.brute_queries,
        100.0 * (emu.brute_queries * n) as f64 / all,
        started.elapsed().as_secs_f64()
    );
    for (i, &(queries, pairs)) in emu.boruvka_calls.iter().enumerate() {
        eprintln!(
            "  Boruvka leaf search {}: {queries} queries, {:.2}% of all pairs",
            i + 1,
            100.0 * pairs as f64 / all
        );
    }
}

#[test]
fn duplicates_and_a_single_leaf_are_exact() {
    // Exact ties (every row twice) and fewer rows than one leaf.
    let base = blobs(40, 5, 3, 0.0, 2);
    let mut data = base.as_slice().to_vec();
    data.extend_from_slice(base.as_slice());
    let x = Matrix::new(80, 5, data).expect("shape");
    for ms in [1, 2, 3] {
        check(&x, ms, &GpuMstParams::default());
    }
}

/// Every row of each leaf of `qleaves` as a query, in position order (`leaf_candidates`' qpos).
fn every_row(t: &LeafTables, qleaves: &[i32]) -> Vec<i32> {
    let mut qpos = vec![-1; qleaves.len() * MAX_LEAF];
    for (b, &l) in qleaves.iter().enumerate() {
        for (i, p) in (t.start[l as usize]..t.start[l as usize + 1]).enumerate() {
            qpos[b * MAX_LEAF + i] = p;
        }
    }
    qpos
}

/// Rows of `x` in the tables' position order, as the kernels see them.
fn in_positions(x: &Matrix, t: &LeafTables) -> Matrix {
    let mut rows = Vec::with_capacity(x.rows() * x.cols());
    for &r in &t.perm {
        rows.extend_from_slice(x.row(r as usize));
    }
    Matrix::new(x.rows(), x.cols(), rows).expect("shape")
}

/// The leaf kernel's contract, row by row: every row not in a query's list has an exact key of
/// at least min(last kept key less its rounding, the reported bound). `xp` is in position
/// order; `comp` and `core2` are used in Boruvka mode. Returns the rows checked.
fn assert_bound_contract(
    xp: &Matrix,
    t: &LeafTables,
    qleaves: &[i32],
    out: &LeafFound,
    keep: usize,
    boruvka: Option<(&[i32], &[f32])>,
) -> usize {
    let (n, d) = (xp.rows(), xp.cols());
    let rel = 2.0 * (d as f64 + 8.0) * f64::from(f32::EPSILON);
    let d2 = |a: usize, b: usize| -> f64 {
        xp.row(a)
            .iter()
            .zip(xp.row(b))
            .map(|(&u, &v)| (f64::from(u) - f64::from(v)).powi(2))
            .sum()
    };
    let mut checked = 0;
    for (block, &l) in qleaves.iter().enumerate() {
        let l = l as usize;
        for p in t.start[l] as usize..t.start[l + 1] as usize {
            let s = block * MAX_LEAF + (p - t.start[l] as usize);
            let ks = &out.keys[s * keep..(s + 1) * keep];
            let is = &out.idx[s * keep..(s + 1) * keep];
            assert!(ks.windows(2).all(|w| w[0] <= w[1]), "keys not ascending");
            let bound = (f64::from(ks[keep - 1]) * (1.0 - rel)).min(f64::from(out.unseen2[s]));
            for o in 0..n {
                if is.contains(&(o as i32)) || boruvka.is_some_and(|(c, _)| c[o] == c[p]) {
                    continue;
                }
                let key = match boruvka {
                    Some((_, core2)) => d2(p, o).max(f64::from(core2[p])).max(f64::from(core2[o])),
                    None => d2(p, o),
                };
                assert!(
                    key >= bound,
                    "row {o} left out of {p}'s list (Boruvka: {}) at {key} below the bound {bound}",
                    boruvka.is_some()
                );
                checked += 1;
            }
        }
    }
    checked
}

#[test]
fn leaf_kernel_reports_a_bound_on_every_row_it_left_out() {
    // With need < keep the skips go by the need-th key, so only the reported bound covers the
    // rows skipped between it and the last kept key. Lists of 10 leaves run out (the bound of
    // the leaves left out then covers the rest); lists of every leaf leave only the skips'
    // bounds in the report, which is where a skip that reports too high a bound shows.
    let x = blobs(700, 9, 5, 0.5, 21);
    for list_len in [10, 1000] {
        for tf32 in [false, true] {
            reported_bounds_hold(&x, list_len, tf32);
        }
    }
}

fn reported_bounds_hold(x: &Matrix, list_len: usize, tf32: bool) {
    let n = x.rows();
    let params = LeafParams {
        leaf_size: 20,
        list_len,
    };
    let t = LeafTables::build(x, &params).expect("tables");
    let xp = in_positions(x, &t);
    let mut emu = Emu {
        tf32,
        ..Emu::default()
    };
    emu.load(xp.as_slice(), xp.cols(), &t).expect("load");
    // Components: runs of 50 positions; core distances: half the distance to row 0 for every
    // third position, a twentieth for the others, so that one tile holds cores far apart.
    let comp: Vec<i32> = (0..n).map(|p| (p / 50) as i32).collect();
    let core2: Vec<f32> = (0..n)
        .map(|p| {
            let d2: f64 = xp
                .row(p)
                .iter()
                .zip(xp.row(0))
                .map(|(&u, &v)| (f64::from(u) - f64::from(v)).powi(2))
                .sum();
            (d2 / if p % 3 == 0 { 4.0 } else { 400.0 }) as f32
        })
        .collect();
    let round = t.components(comp.clone(), core2.clone());
    let qleaves: Vec<i32> = (0..t.leaves() as i32).collect();
    // Boruvka keeps few candidates, as in production: the reported bound, not the last kept
    // key, then covers the rows its leaf and tile skips set aside.
    for (boruvka, need, keep) in [(false, 2, 64), (true, 1, 4), (true, 1, 1)] {
        emu.set_components(&round, &vec![f32::INFINITY; n])
            .expect("components");
        let out = emu
            .leaf_candidates(
                &qleaves,
                &every_row(&t, &qleaves),
                &vec![f32::INFINITY; n],
                boruvka,
                usize::MAX,
                need,
                keep,
            )
            .expect("leaf search");
        let modes = boruvka.then_some((comp.as_slice(), core2.as_slice()));
        let checked = assert_bound_contract(&xp, &t, &qleaves, &out, keep, modes);
        assert!(checked > n * n / 2, "too few rows checked");
    }
}

#[test]
fn leaf_kernel_lists_the_nearest_keys_to_the_bit() {
    // With every leaf listed and the whole list walked, each query's kNN list must hold the 8
    // smallest difference-form f32 keys over all rows, bit for bit: the dot-form screen and
    // the skips may pass over a row only when it could not have entered the list. Both
    // screens, on blobs near the origin, on the same rows moved far from it (|p|^2 dwarfs the
    // keys), and on tight groups of 16 scattered widely, each leaf taking one member of every
    // group: a row's 8 nearest keys are its group's, about 1e-6 apart, while the rows lie
    // tens from their leaf's centre, so the TF32 products' rounding, even relative to the
    // centre, is many times those keys, and a screen whose error bound were too narrow would
    // leave out group members.
    let near = blobs(700, 9, 5, 0.5, 21);
    let far = Matrix::new(
        near.rows(),
        near.cols(),
        near.as_slice().iter().map(|&v| v + 300.0).collect(),
    )
    .expect("shape");
    let mut rng = rand::rngs::StdRng::seed_from_u64(8);
    let mut groups = Vec::new();
    for _ in 0..44 {
        let centre: Vec<f32> = (0..9).map(|_| rng.random_range(-50.0f32..50.0)).collect();
        for _ in 0..16 {
            groups.extend(centre.iter().map(|&v| v + rng.random_range(-1e-3f32..1e-3)));
        }
    }
    let groups = Matrix::new(704, 9, groups).expect("shape");
    let across: Vec<Vec<u32>> = (0..16)
        .map(|member| (0..44).map(|g| g * 16 + member).collect())
        .collect();
    let params = LeafParams {
        leaf_size: 20,
        list_len: 1000,
    };
    for (x, t, what) in [
        (&near, LeafTables::build(&near, &params), "blobs"),
        (
            &far,
            LeafTables::build(&far, &params),
            "blobs far from the origin",
        ),
        (
            &groups,
            LeafTables::from_leaves(&groups, across, 1000),
            "groups",
        ),
    ] {
        let t = t.expect("tables");
        for tf32 in [false, true] {
            let measured = lists_hold_the_nearest_keys(x, &t, tf32);
            // The groups' leaves all overlap: only the others can skip.
            if what != "groups" {
                assert!(
                    measured < x.rows() * t.leaves(),
                    "{what}: nothing was skipped"
                );
            }
        }
    }
}

/// Checks one leaf search's kNN lists; returns the rows its blocks measured.
fn lists_hold_the_nearest_keys(x: &Matrix, t: &LeafTables, tf32: bool) -> usize {
    let (n, d) = (x.rows(), x.cols());
    let xp = in_positions(x, t);
    let mut emu = Emu {
        tf32,
        ..Emu::default()
    };
    emu.load(xp.as_slice(), d, t).expect("load");
    let keep = 8;
    let qleaves: Vec<i32> = (0..t.leaves() as i32).collect();
    let out = emu
        .leaf_candidates(
            &qleaves,
            &every_row(t, &qleaves),
            &vec![f32::INFINITY; n],
            false,
            usize::MAX,
            keep,
            keep,
        )
        .expect("leaf search");
    let key = |p: usize, o: usize| {
        xp.row(p)
            .iter()
            .zip(xp.row(o))
            .fold(0.0f32, |s, (&a, &b)| (a - b).mul_add(a - b, s))
    };
    for (block, &l) in qleaves.iter().enumerate() {
        let l = l as usize;
        for p in t.start[l] as usize..t.start[l + 1] as usize {
            let mut all: Vec<f32> = (0..n).map(|o| key(p, o)).collect();
            all.sort_by(f32::total_cmp);
            let s = block * MAX_LEAF + (p - t.start[l] as usize);
            let got = &out.keys[s * keep..(s + 1) * keep];
            assert_eq!(got, &all[..keep], "row {p}'s list (tf32 {tf32})");
            for (&o, &k) in out.idx[s * keep..(s + 1) * keep].iter().zip(got) {
                assert_eq!(
                    key(p, o as usize),
                    k,
                    "row {p}: the key of {o} (tf32 {tf32})"
                );
            }
        }
    }
    out.rows.iter().map(|&r| r as usize).sum()
}

#[test]
fn leaf_kernel_folds_a_skipped_leaf_into_its_bound() {
    // A ring of 16 rows (radius 10) around a tight blob of 16, and a far blob. The ring's leaf
    // and the centre blob's overlap (their pair bound is 0), yet every ring row is about 10 from
    // the blob, far beyond its neighbour on the ring (need = 2): the whole block skips the blob
    // leaf by its per-query bound, then stops at the far leaf. Only the skip's bound covers the
    // blob's rows, which are much nearer than the far leaf's bound. The far blob's block
    // stops at once: only the stop's bound covers the other leaves.
    let mut rows = Vec::new();
    for i in 0..16 {
        let a = i as f32 * std::f32::consts::TAU / 16.0;
        rows.extend([10.0 * a.cos(), 10.0 * a.sin()]);
    }
    for dx in [0.0f32, 100.0] {
        for i in 0..16 {
            rows.extend([dx + 0.01 * (i % 4) as f32, 0.01 * (i / 4) as f32]);
        }
    }
    let x = Matrix::new(48, 2, rows).expect("shape");
    let leaves: Vec<Vec<u32>> = vec![(0..16).collect(), (16..32).collect(), (32..48).collect()];
    let t = LeafTables::from_leaves(&x, leaves, 3).expect("tables");
    let xp = in_positions(&x, &t);
    let mut emu = Emu::default();
    emu.load(xp.as_slice(), 2, &t).expect("load");
    let keep = 64;
    let qleaves = [0, 2];
    let out = emu
        .leaf_candidates(
            &qleaves,
            &every_row(&t, &qleaves),
            &[f32::INFINITY; 48],
            false,
            usize::MAX,
            2,
            keep,
        )
        .expect("leaf search");
    assert_eq!(
        out.rows,
        vec![16, 16],
        "each block should measure only its own rows (the set-up is off)"
    );
    let checked = assert_bound_contract(&xp, &t, &qleaves, &out, keep, None);
    assert_eq!(
        checked,
        2 * 16 * 32,
        "every row of the other two leaves is left out"
    );
}

/// The emulated GPU behind the numeric interface (`device::Accelerator`): the MST through the
/// GPU's host code and the CUDA kernels compiled for the CPU. (The GPU PCA's algorithm is
/// tested over its host BLAS in src/gpu/pca; this one projects with the CPU's.)
struct EmulatedGpu {
    msts: Arc<AtomicUsize>,
}

impl Accelerator for EmulatedGpu {
    fn name(&self) -> String {
        "CUDA kernels emulated on the CPU (tf32 screen)".into()
    }
    fn pca(&self, x: &Matrix, params: &PcaParams) -> anyhow::Result<Pca> {
        reduce::pca_cpu(x, params)
    }
    fn mst(&self, x: &Matrix, min_samples: usize) -> anyhow::Result<Vec<MstEdge>> {
        self.msts.fetch_add(1, AtomicOrdering::SeqCst);
        // The screen an sm_80+ GPU uses by default.
        let mut tensor_cores = Emu {
            tf32: true,
            ..Emu::default()
        };
        mst_with(&mut tensor_cores, x, min_samples, &GpuMstParams::default())
    }
}

/// The whole pipeline on a device whose MST is the GPU's: the same Tasks, links and priorities
/// as on the CPU, and no fallback. Nothing above `Device` branches on what it runs on.
#[tokio::test]
async fn the_pipeline_on_the_emulated_gpu_makes_the_cpus_tasks() {
    const NOW: i64 = 1_764_000_000_000;
    let dim = 64;
    let rows = generate(
        &DemoParams {
            seed: 11,
            segments: cluster::PRIM_MAX_ROWS + 600,
            dim,
            users: 200,
            ..DemoParams::default()
        },
        NOW,
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("segments.parquet");
    write_segments(&file, &rows).unwrap();
    let cfg = PipelineConfig {
        dim: Some(dim),
        ..PipelineConfig::default()
    };
    let msts = Arc::new(AtomicUsize::new(0));
    let devices = [
        ("cpu", Device::cpu()),
        (
            "emulated-gpu",
            Device::with_accelerator(Box::new(EmulatedGpu { msts: msts.clone() })),
        ),
    ];
    let mut results = Vec::new();
    for (name, device) in devices {
        let url = format!(
            "sqlite://{}",
            dir.path().join(format!("{name}.db")).display()
        );
        let store = Store::connect(&url).await.unwrap();
        let source = Arc::new(Source::open_file(&file, 1).unwrap());
        let device = Arc::new(device);
        let reports = run_team(&source, &store, &device, &FallbackLabeler, 1, &cfg, NOW)
            .await
            .unwrap();
        assert_eq!(reports.len(), 1, "one batch of {} rows", rows.len());
        assert_eq!(device.gpu_fallbacks(), 0, "{name}");
        let mut tasks = BTreeSet::new();
        for t in store.tasks(1).await.unwrap() {
            let mut docs: Vec<String> = store
                .links(1, t.id)
                .await
                .unwrap()
                .into_iter()
                .map(|l| l.document_id)
                .collect();
            docs.sort();
            tasks.insert((
                docs,
                t.title,
                t.segment_count,
                t.distinct_user_count,
                format!("{:.9}", t.priority_score),
            ));
        }
        store.close().await;
        results.push(tasks);
    }
    assert_eq!(
        msts.load(AtomicOrdering::SeqCst),
        1,
        "the batch's MST ran on the emulated GPU"
    );
    assert!(results[0].len() >= 10, "the demo data makes Tasks");
    assert!(
        results[0] == results[1],
        "the emulated GPU's Tasks differ from the CPU's"
    );
}

/// How far the leaf kernel's candidate lists must reach on the bench's projection at the bars'
/// sizes (the other emulated tests run where every list holds every leaf). First without a
/// kernel: for a sample of rows, the exact squared distances to their nearest other row (what
/// `prove_knn` needs) and to their k-th (what the kNN walk settles), against the rigorous
/// bounds of their leaf's candidate list (the default, full where it fits): how many listed
/// leaves a walk must take before the list's bound passes the key. A list cut to L leaves
/// proves no row that needs more; such a row goes to the brute-force kernel, which compares it
/// with every row. Then the emulated kNN kernel for a sample of query leaves
/// (`SEGCLUST_EMU_LEAVES`, default 16), with full lists and with lists of 512. Run with
/// `SEGCLUST_EMU_ROWS=1000000 cargo test --release --test gpu_emu list_reach_at_scale --
/// --ignored --nocapture` (1M x 3072 needs about 15 GB; the projection is kept in
/// `target/tmp/` for the next run).
#[test]
#[ignore = "a measurement (minutes at 1M rows), not a check"]
fn list_reach_at_scale() {
    let n: usize = env_or("SEGCLUST_EMU_ROWS", 200_000);
    let samples: usize = env_or("SEGCLUST_EMU_SAMPLES", 2_000);
    let started = std::time::Instant::now();
    let y = bench_projection(n);
    eprintln!(
        "{n} x {} projection in {:.0} s",
        y.cols(),
        started.elapsed().as_secs_f64()
    );
    let tables_started = std::time::Instant::now();
    let t = LeafTables::build(&y, &LeafParams::default()).expect("tables");
    let long = t.m;
    let nl = t.leaves();
    let leaf_of = t.leaf_of_positions();
    let mut pos_of = vec![0usize; n];
    for (p, &r) in t.perm.iter().enumerate() {
        pos_of[r as usize] = p;
    }
    eprintln!(
        "{nl} leaves, lists of {long} (the default), built in {:.1} s",
        tables_started.elapsed().as_secs_f64()
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let rows: Vec<usize> = (0..samples).map(|_| rng.random_range(0..n)).collect();
    let k = 24;
    // (key of the nearest other row, key of the k-th nearest other row) per sampled row.
    let keys: Vec<(f32, f32)> = {
        use rayon::prelude::*;
        rows.par_iter()
            .map(|&r| {
                let q = y.row(r);
                let mut d2: Vec<f32> = (0..n)
                    .filter(|&o| o != r)
                    .map(|o| q.iter().zip(y.row(o)).map(|(a, b)| (a - b) * (a - b)).sum())
                    .collect();
                d2.select_nth_unstable_by(k - 1, f32::total_cmp);
                let kth = d2[k - 1];
                let first = d2[..k].iter().copied().fold(f32::INFINITY, f32::min);
                (first, kth)
            })
            .collect()
    };
    // Entries of the row's list a walk must take before the list's bound passes `key`, or
    // None when even the long list does not reach it.
    let needed = |r: usize, key: f32| -> Option<usize> {
        let l = leaf_of[pos_of[r]] as usize;
        let lb = &t.cand_lb2[l * t.m..(l + 1) * t.m];
        let taken = lb.partition_point(|&b| b <= key);
        (taken < t.m || t.rest_lb2[l] > key).then_some(taken)
    };
    for (what, pick) in [("nearest other row", 0usize), ("k-th nearest (k = 24)", 1)] {
        let mut need: Vec<Option<usize>> = rows
            .iter()
            .zip(&keys)
            .map(|(&r, &(a, b))| needed(r, if pick == 0 { a } else { b }))
            .collect();
        need.sort_by_key(|v| v.unwrap_or(usize::MAX));
        let beyond = |len: usize| {
            100.0 * need.iter().filter(|v| v.is_none_or(|m| m > len)).count() as f64
                / samples as f64
        };
        let pct = |q: f64| {
            need[((samples - 1) as f64 * q) as usize].map_or(format!(">{long}"), |v| v.to_string())
        };
        eprintln!(
            "{what}: leaves a walk needs, median {}, p90 {}, p99 {}; beyond 512: {:.1}%, \
             1024: {:.1}%, 2048: {:.1}%, 4096: {:.1}%, {long}: {:.1}%",
            pct(0.5),
            pct(0.9),
            pct(0.99),
            beyond(512),
            beyond(1024),
            beyond(2048),
            beyond(4096),
            beyond(long)
        );
    }
    // The kNN kernel itself (emulated) for a sample of query leaves: the pairs it measures
    // (per block: its rows times the rows it loads, as `work_at_scale` counts them), and the
    // queries it leaves unproven, each of which the brute-force kernel then compares with all
    // n rows.
    let sample_leaves: usize = env_or("SEGCLUST_EMU_LEAVES", 16);
    if sample_leaves == 0 {
        return;
    }
    let qleaves: Vec<i32> = (0..sample_leaves)
        .map(|_| rng.random_range(0..nl) as i32)
        .collect();
    let queries: usize = qleaves
        .iter()
        .map(|&l| (t.start[l as usize + 1] - t.start[l as usize]) as usize)
        .sum();
    let xp = in_positions(&y, &t);
    let open = vec![f32::INFINITY; n];
    let qpos = every_row(&t, &qleaves);
    // `need`: the key the walk settles before it stops; `mst_with` settles all k (its
    // Boruvka rounds then run mostly from the lists), 2 settles only the core distance.
    for (list_len, need) in [(usize::MAX, k), (usize::MAX, 2), (512, k)] {
        let tl = LeafTables::build(
            &y,
            &LeafParams {
                list_len,
                ..LeafParams::default()
            },
        )
        .expect("tables");
        // The split does not depend on the lists, so `qpos` and `xp` hold for these tables.
        assert_eq!(tl.perm, t.perm);
        let mut emu = Emu::default();
        emu.load(xp.as_slice(), xp.cols(), &tl).expect("load");
        let walk_started = std::time::Instant::now();
        let f = emu
            .leaf_candidates(&qleaves, &qpos, &open, false, usize::MAX, need, k)
            .expect("kernel");
        let unproven = qpos
            .iter()
            .enumerate()
            .filter(|&(slot, &p)| p >= 0 && f.keys[slot * k + 1] > f.unseen2[slot])
            .count();
        let pairs = emu.knn_pairs + unproven * n;
        eprintln!(
            "kNN kernel, lists of {}, settling key {need}: {sample_leaves} query leaves \
             ({queries} rows): the leaf \
             search measured {:.2}% of their brute-force pairs, {unproven} rows unproven \
             ({:.1}%); with their brute force {:.2}% ({:.0} s emulated)",
            tl.m,
            100.0 * emu.knn_pairs as f64 / (queries * n) as f64,
            100.0 * unproven as f64 / queries as f64,
            100.0 * pairs as f64 / (queries * n) as f64,
            walk_started.elapsed().as_secs_f64()
        );
    }
    eprintln!("{:.0} s in all", started.elapsed().as_secs_f64());
}

/// The host's share of the GPU MST before any kernel runs, at the bars' sizes: the leaf split
/// and the candidate lists on the bench's projection, built `SEGCLUST_EMU_REPS` times (default
/// 3), with a digest of the tables so two builds of the code can be shown to make the same
/// ones. `SEGCLUST_LOG=segclust::gpu=debug` splits each time into its stages. Run with
/// `SEGCLUST_EMU_ROWS=1000000 cargo test --release --test gpu_emu leaf_tables_at_scale --
/// --ignored --nocapture`.
#[test]
#[ignore = "a measurement (minutes at 1M rows), not a check"]
fn leaf_tables_at_scale() {
    use std::hash::{Hash, Hasher};
    let n: usize = env_or("SEGCLUST_EMU_ROWS", 200_000);
    let reps: usize = env_or("SEGCLUST_EMU_REPS", 3);
    log_from_env();
    let y = bench_projection(n);
    for rep in 0..reps {
        let started = std::time::Instant::now();
        let t = LeafTables::build(&y, &LeafParams::default()).expect("tables");
        let seconds = started.elapsed().as_secs_f64();
        let mut h = std::hash::DefaultHasher::new();
        t.perm.hash(&mut h);
        t.cand.hash(&mut h);
        for v in t.cand_lb2.iter().chain(&t.rest_lb2) {
            v.to_bits().hash(&mut h);
        }
        assert!(
            t.cand
                .iter()
                .all(|&c| c >= -1 && (c as i64) < t.leaves() as i64)
        );
        eprintln!(
            "{n} x {}: build {rep}: {} leaves, lists of {}, {seconds:.2} s, digest {:016x}",
            y.cols(),
            t.leaves(),
            t.m,
            h.finish()
        );
    }
}
