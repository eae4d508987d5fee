//! The command line: argument definitions and one function per command. `main.rs` only calls
//! `cli::main`.

use crate::bench::{self, BenchOptions};
use crate::cluster::{HdbscanParams, Selection};
use crate::device::{Device, DeviceChoice};
use crate::matrix::Matrix;
use crate::reduce::PcaParams;
use anyhow::{Context, Result};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

const ABOUT: &str = "Finds recurring user problems in session-replay segments and turns each into one prioritized Task.

segclust reads segments (an AI-written description and its embedding per replay video segment)
after a per-team watermark, clusters them with exact HDBSCAN on PCA-reduced embeddings, matches
clusters to the Tasks it already made, and commits Tasks, links and the watermark in one
transaction.";

const EXAMPLES: &str = "Examples:
  segclust demo                                   # demo data -> Tasks in segclust-demo.db, then list them
  segclust run --source segments.parquet --store sqlite://segclust.db --team 1
  segclust run --config segclust.toml --all-teams   # production: ClickHouse -> PostgreSQL, every team
  segclust tasks --store sqlite://segclust.db --team 1 --json
  segclust tasks show 12 --store sqlite://segclust.db --team 1
  segclust report --store sqlite://segclust.db --team 1 --out report.html
  segclust cluster --input X.npy --output labels.npy --selection eom
  segclust bench --sizes 2000,10000,50000";

#[derive(Parser, Debug)]
#[command(name = "segclust", version, about = ABOUT, after_help = EXAMPLES)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub log: LogArgs,
}

#[derive(Args, Debug)]
pub struct LogArgs {
    /// Log filter (tracing's EnvFilter syntax, e.g. `info`, `segclust=debug`). Env: SEGCLUST_LOG.
    #[arg(long, global = true, env = "SEGCLUST_LOG", default_value = "info")]
    pub log: String,
    /// Structured JSON logs on stderr instead of human-readable lines.
    #[arg(long, global = true)]
    pub log_json: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Cluster a matrix (.npy) or a segments file and write labels: the numeric core as a tool.
    #[command(after_help = CLUSTER_EXAMPLES)]
    Cluster(ClusterArgs),
    /// Process new segments of a team (or every enabled team): cluster, match, label, commit
    /// Tasks. The main job; run it every 30 minutes, or use `schedule`.
    #[command(after_help = RUN_EXAMPLES)]
    Run(crate::coordinator::cmd::RunArgs),
    /// Run every enabled team every interval (default 30m) until SIGTERM.
    #[command(after_help = SCHEDULE_EXAMPLES)]
    Schedule(crate::coordinator::cmd::ScheduleArgs),
    /// Process a team's history in bounded windows through the same code path; resumable.
    #[command(after_help = BACKFILL_EXAMPLES)]
    Backfill(crate::coordinator::cmd::BackfillArgs),
    /// Check or show a configuration file.
    #[command(subcommand, after_help = CONFIG_EXAMPLES)]
    Config(crate::coordinator::cmd::ConfigCommand),
    /// List a team's Tasks by priority (filters: level, since, label source), or show one.
    Tasks(crate::tasks_cmd::TasksArgs),
    /// Write a self-contained HTML report: Tasks, a map of the latest batch, run figures.
    Report(crate::report::ReportArgs),
    /// Write the demo segments file (if missing), run the main job on it and list the Tasks.
    #[command(after_help = DEMO_EXAMPLES)]
    Demo(crate::coordinator::cmd::DemoArgs),
    /// Time PCA and HDBSCAN on synthetic data, next to scikit-learn on the same input.
    #[command(after_help = BENCH_EXAMPLES)]
    Bench(BenchArgs),
    /// Score a team's Tasks against segments labelled with their known problem: problems found,
    /// duplicate and mixed Tasks, B-cubed and adjusted Rand.
    Evaluate(crate::evaluate::EvaluateArgs),
    /// Replace the labels of a team's Tasks with LLM labels (--only-fallback: offline ones only).
    #[command(after_help = RELABEL_EXAMPLES)]
    Relabel(crate::labeling::relabel::RelabelArgs),
    /// Print a shell completion script for bash, zsh, fish, elvish or PowerShell.
    #[command(after_help = COMPLETIONS_EXAMPLES)]
    Completions(CompletionsArgs),
    /// Compile the CUDA kernels with NVRTC into a kernel cache, ahead of time (needs libnvrtc,
    /// not a GPU): an image that ships the cache needs no compiler when it runs.
    #[command(after_help = KERNELS_EXAMPLES)]
    Kernels(KernelsArgs),
}

const KERNELS_EXAMPLES: &str = "Examples:
  segclust kernels --kernel-cache /opt/segclust/kernels                  # H100 (compute 9.0)
  segclust kernels --kernel-cache /opt/segclust/kernels --arch 8.0 --arch 9.0
  segclust run --all-teams --kernel-cache /opt/segclust/kernels          # loads them from there";

#[derive(Args, Debug)]
pub struct KernelsArgs {
    /// The cache to fill: a directory, or empty for $XDG_CACHE_HOME/segclust/kernels (else
    /// ~/.cache/segclust/kernels).
    #[arg(long, default_value = "", env = "SEGCLUST_KERNEL_CACHE")]
    pub kernel_cache: String,
    /// Compute capabilities to compile for, as MAJOR.MINOR (repeatable); a GPU runs the file
    /// of its own capability, and compiles one itself when it is missing.
    #[arg(long = "arch", value_parser = parse_arch, default_values_t = [Arch(9, 0)])]
    pub arch: Vec<Arch>,
}

/// A compute capability, e.g. 9.0 for the H100.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Arch(pub i32, pub i32);

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.0, self.1)
    }
}

fn parse_arch(s: &str) -> std::result::Result<Arch, String> {
    let bad = || format!("{s:?} is not a compute capability such as 9.0 or 8.6");
    let (major, minor) = s.split_once('.').ok_or_else(bad)?;
    let major: i32 = major.parse().map_err(|_| bad())?;
    let minor: i32 = minor.parse().map_err(|_| bad())?;
    if !(3..=20).contains(&major) || !(0..=9).contains(&minor) {
        return Err(bad());
    }
    Ok(Arch(major, minor))
}

fn kernels_cmd(a: KernelsArgs) -> Result<()> {
    let cache = crate::gpu::KernelCache::from_setting(&a.kernel_cache)
        .with_options(crate::gpu::KernelOptions::from_env()?);
    if a.kernel_cache.trim() == "off" {
        anyhow::bail!("--kernel-cache off keeps nothing: give the directory to fill");
    }
    for arch in &a.arch {
        let path = crate::gpu::kernel_cache::fill(&cache, (arch.0, arch.1))?;
        outln!("compute {arch}: {}", path.display())?;
    }
    Ok(())
}

const CLUSTER_EXAMPLES: &str = "Examples:
  segclust cluster --input X.npy --output labels.npy
  segclust cluster --input X.npy --output labels.npy --selection eom --min-samples 5 --probabilities p.npy
  segclust cluster --input segments.parquet --output labels.npy --team 1 --device cpu";

const RUN_EXAMPLES: &str = "Examples:
  segclust run --source segments.parquet --store sqlite://segclust.db --team 1
  segclust run --source segments.jsonl --store postgres://segclust@db/segclust --all-teams
  SEGCLUST_LOG=debug segclust run --source segments.parquet --batch-size 20000 --device cpu
  segclust run --config segclust.toml --all-teams --metrics-file /metrics/segclust.prom --log-json
  segclust run --clickhouse http://127.0.0.1:8123 --store postgres://segclust@db/segclust --team 7";

const SCHEDULE_EXAMPLES: &str = "Examples:
  segclust schedule --config segclust.toml                  # every enabled team every 30 minutes
  segclust schedule --config segclust.toml --interval 10m --concurrency 4
  segclust schedule --source segments.parquet --rounds 1    # one round, then exit";

const BACKFILL_EXAMPLES: &str = "Examples:
  segclust backfill --config segclust.toml --team 7 --from 2026-10-01 --to 2026-11-01
  segclust backfill --clickhouse http://127.0.0.1:8123 --store postgres://segclust@db/segclust --team 7 --window 6h
  segclust backfill --source history.parquet --team 1          # the whole file, 1-day windows; rerun to resume";

const CONFIG_EXAMPLES: &str = "Examples:
  segclust config check --config segclust.toml     # exit 1 and name each bad key and its line
  SEGCLUST__CLUSTERING__MIN_SAMPLES=5 segclust config show --config segclust.toml";

const RELABEL_EXAMPLES: &str = "Examples:
  segclust relabel --team 1 --only-fallback --llm-base-url http://127.0.0.1:11434/v1 --llm-model qwen2.5:7b
  SEGCLUST_LLM_API_KEY=sk-... segclust relabel --team 1 --store postgres://segclust@db/segclust";

const DEMO_EXAMPLES: &str = "Examples:
  segclust demo                       # demo-segments.parquet -> sqlite://segclust-demo.db, then the Tasks
  segclust demo && segclust report --store sqlite://segclust-demo.db --out demo.html
  segclust demo --demo-seed 3 --source /tmp/demo3.parquet --store sqlite:///tmp/demo3.db";

const BENCH_EXAMPLES: &str = "Examples:
  segclust bench --sizes 2000,10000,50000
  segclust bench --sizes 50000 --no-sklearn --device gpu --json bench.json
  segclust bench --device gpu --no-sklearn --largest-that-fits";

const COMPLETIONS_EXAMPLES: &str = "Examples:
  segclust completions bash > ~/.local/share/bash-completion/completions/segclust
  segclust completions zsh > ~/.zfunc/_segclust        # with fpath+=~/.zfunc in ~/.zshrc
  segclust completions fish > ~/.config/fish/completions/segclust.fish";

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    /// The shell to write completions for.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// Options of the numeric core shared by `cluster`, `run` and `bench`.
#[derive(Args, Debug, Clone)]
pub struct NumericArgs {
    /// Reduce to this many dimensions with PCA (randomized SVD); capped at min(N-1, D).
    #[arg(long, default_value_t = 100)]
    pub pca_components: usize,
    /// Skip PCA and cluster the input as it is.
    #[arg(long)]
    pub no_reduce: bool,
    /// PCA power iterations (more: closer to the exact SVD, slower).
    #[arg(long, default_value_t = PcaParams::default().power_iterations)]
    pub power_iterations: usize,
    /// Seed of the randomized SVD.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// HDBSCAN min_cluster_size.
    #[arg(long, default_value_t = 2)]
    pub min_cluster_size: usize,
    /// HDBSCAN min_samples, scikit-learn's convention (the point itself counts).
    #[arg(long, default_value_t = 2)]
    pub min_samples: usize,
    /// How clusters are chosen from the condensed tree.
    #[arg(long, value_enum, default_value_t = Selection::Leaf)]
    pub selection: Selection,
    /// cluster_selection_epsilon: clusters split below this distance are merged back.
    #[arg(long, default_value_t = 0.0)]
    pub epsilon: f64,
    /// Where the numeric core runs: the GPU when usable (auto), or forced.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto, env = "SEGCLUST_DEVICE")]
    pub device: DeviceChoice,
    /// Most GPU memory, in MiB, one batch may plan with (0: all that is free), for a GPU
    /// shared with other jobs. Embeddings that do not fit are streamed to the GPU in blocks.
    #[arg(long, default_value_t = 0, env = "SEGCLUST_GPU_MEMORY_MIB")]
    pub gpu_memory_mib: u64,
    /// Where compiled CUDA kernels are kept between runs: a directory, `off`, or empty for
    /// $XDG_CACHE_HOME/segclust/kernels (else ~/.cache/segclust/kernels).
    #[arg(long, default_value = "", env = "SEGCLUST_KERNEL_CACHE")]
    pub kernel_cache: String,
}

impl NumericArgs {
    pub fn gpu_options(&self) -> crate::device::GpuOptions {
        crate::device::GpuOptions::new(self.gpu_memory_mib, &self.kernel_cache)
    }

    pub fn pca(&self) -> PcaParams {
        PcaParams {
            components: self.pca_components,
            power_iterations: self.power_iterations,
            seed: self.seed,
            ..PcaParams::default()
        }
    }

    pub fn hdbscan(&self) -> HdbscanParams {
        HdbscanParams {
            min_cluster_size: self.min_cluster_size,
            min_samples: self.min_samples,
            selection: self.selection,
            epsilon: self.epsilon,
            allow_single_cluster: false,
        }
    }
}

#[derive(Args, Debug)]
pub struct ClusterArgs {
    /// N x D float32/float64 .npy, or a segments file (.parquet, .jsonl).
    #[arg(long)]
    pub input: PathBuf,
    /// Labels as an int64 .npy (-1 = noise).
    #[arg(long)]
    pub output: PathBuf,
    /// Membership probabilities as a float64 .npy.
    #[arg(long)]
    pub probabilities: Option<PathBuf>,
    /// L2-normalize rows first (always done for segments files, as the pipeline does).
    #[arg(long)]
    pub normalize: bool,
    /// Team to read from a segments file (rows without team_id belong to it).
    #[arg(long, default_value_t = 1)]
    pub team: i64,
    #[command(flatten)]
    pub numeric: NumericArgs,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Numbers of rows to time, comma separated.
    #[arg(long, value_delimiter = ',', default_value = "2000,10000,50000")]
    pub sizes: Vec<usize>,
    /// Embedding dimension of the synthetic data.
    #[arg(long, default_value_t = 3072)]
    pub dim: usize,
    /// Python interpreter with scikit-learn for the same-run reference.
    #[arg(long, default_value = "python3", env = "SEGCLUST_PYTHON")]
    pub python: String,
    /// Do not run the scikit-learn reference.
    #[arg(long)]
    pub no_sklearn: bool,
    /// Largest N at which scikit-learn's HDBSCAN is run (its time grows ~N^2 in 100 dims).
    #[arg(long, default_value_t = 10_000)]
    pub sklearn_hdbscan_max_n: usize,
    /// Also write the rows as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Keep each size's input and its PCA projection in this folder
    /// (`synthetic-NxD.npy`, `synthetic-NxD.pca.npy`), to time `segclust cluster --no-reduce`
    /// or another tool on exactly the same data.
    #[arg(long, value_name = "DIR")]
    pub save_inputs: Option<PathBuf>,
    /// Also run the CPU path on each input in the same run (PCA, then HDBSCAN on the device's
    /// projection) and print a second table: speed-up over the CPU and whether the labels are
    /// identical. This measures the GPU bars (tools/gpu_check.sh uses it at 200,000 rows).
    #[arg(long)]
    pub compare_cpu: bool,
    /// Instead of --sizes, time the largest N x --dim batch the GPU takes whole: its rows stay
    /// in GPU memory through the PCA (larger batches stream them in blocks), within 80% of this
    /// host's available memory. Needs --device gpu.
    #[arg(long, conflicts_with = "sizes")]
    pub largest_that_fits: bool,
    #[command(flatten)]
    pub numeric: NumericArgs,
}

pub fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    init_logging(&cli.log);
    crate::guard::install_panic_hook();
    let sub = matches
        .subcommand()
        .map(|(_, m)| m.clone())
        .unwrap_or_default();
    match dispatch(cli.command, &sub) {
        Ok(code) => code,
        // The reader of our output went away (`segclust tasks | head`): not a failure.
        Err(e)
            if e.downcast_ref::<std::io::Error>()
                .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Colours only for a person at a terminal: the batch job's stderr goes to files, journald
/// and log collectors, where escape codes are noise around every field (they were written
/// there before). `NO_COLOR` (no-color.org) turns them off at a terminal too.
fn init_logging(args: &LogArgs) {
    use std::io::IsTerminal;
    let (filter, bad) = match tracing_subscriber::EnvFilter::try_new(&args.log) {
        Ok(f) => (f, None),
        Err(e) => (tracing_subscriber::EnvFilter::new("info"), Some(e)),
    };
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    if args.log_json {
        builder.json().init();
    } else {
        builder.with_target(false).compact().init();
    }
    // Said, not swallowed: a mistyped filter would otherwise hide the debug lines asked for.
    if let Some(e) = bad {
        tracing::warn!(
            "--log / SEGCLUST_LOG {:?} is not a log filter ({e}); logging at info. Examples: \
             `info`, `debug`, `info,segclust::gpu=debug`",
            args.log
        );
    }
}

/// `m`: the subcommand's own matches, so that commands can tell flags given on the command line
/// from defaults (flags override the config file; defaults do not).
fn dispatch(command: Command, m: &clap::ArgMatches) -> Result<ExitCode> {
    use crate::coordinator::cmd;
    match command {
        Command::Cluster(a) => cluster(a).map(|()| ExitCode::SUCCESS),
        Command::Bench(a) => bench_cmd(a).map(|()| ExitCode::SUCCESS),
        Command::Kernels(a) => kernels_cmd(a).map(|()| ExitCode::SUCCESS),
        Command::Run(a) => block_on(cmd::run_cmd(a, m)),
        Command::Schedule(a) => block_on(cmd::schedule_cmd(a, m)),
        Command::Backfill(a) => block_on(cmd::backfill_cmd(a, m)),
        Command::Config(c) => block_on(cmd::config_cmd(c)),
        Command::Tasks(a) => block_on(crate::tasks_cmd::tasks_cmd(a)).map(|()| ExitCode::SUCCESS),
        Command::Report(a) => block_on(crate::report::report_cmd(a)).map(|()| ExitCode::SUCCESS),
        Command::Evaluate(a) => {
            block_on(crate::evaluate::evaluate_cmd(a)).map(|()| ExitCode::SUCCESS)
        }
        Command::Completions(a) => {
            use clap::CommandFactory;
            clap_complete::generate(
                a.shell,
                &mut Cli::command(),
                "segclust",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo(a) => block_on(cmd::demo_cmd(a, m)),
        Command::Relabel(a) => block_on(crate::labeling::relabel::relabel_cmd(a)),
    }
}

/// Runs a command on a fresh runtime. Once the command's future is done, nothing left on the
/// runtime is needed: a batch abandoned at shutdown may still be clustering on a blocking
/// thread, and waiting for it (what dropping the runtime does) would stretch the grace period
/// by a whole numeric core. So the runtime is shut down without waiting.
fn block_on<T>(command: impl std::future::Future<Output = Result<T>>) -> Result<T> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("could not start the async runtime")?;
    let out = rt.block_on(command);
    rt.shutdown_background();
    out
}

fn load_input(a: &ClusterArgs) -> Result<Matrix> {
    let ext = a
        .input
        .extension()
        .and_then(|e| e.to_str())
        .unwrap_or_default();
    if ext == "npy" {
        let mut x = crate::npy::read_matrix(&a.input)?;
        if a.normalize {
            x.normalize_rows();
        }
        return Ok(x);
    }
    let source = crate::source::FileSource::open(&a.input, a.team)?;
    let page = source.read_after(a.team, None, None, usize::MAX)?;
    let v = crate::validate::validate(page.rows, None);
    let bad = page.rejected.len() + v.quarantined.len();
    if bad > 0 {
        tracing::warn!("{bad} rows set aside (unparseable or invalid); clustering the rest");
    }
    let mut x = v.embeddings;
    x.normalize_rows();
    Ok(x)
}

fn cluster(a: ClusterArgs) -> Result<()> {
    let t = Instant::now();
    let x = load_input(&a)?;
    let load_s = t.elapsed().as_secs_f64();
    let device = Device::open(a.numeric.device, &a.numeric.gpu_options())?;
    let t = Instant::now();
    let reduced = if a.numeric.no_reduce {
        None
    } else {
        Some(device.pca(&x, &a.numeric.pca())?.projected)
    };
    let pca_s = t.elapsed().as_secs_f64();
    let input = reduced.as_ref().unwrap_or(&x);
    let t = Instant::now();
    let c = device.hdbscan(input, &a.numeric.hdbscan())?;
    let hdbscan_s = t.elapsed().as_secs_f64();
    crate::npy::write_i64(&a.output, &c.labels)?;
    if let Some(p) = &a.probabilities {
        crate::npy::write_f64(p, &c.probabilities)?;
    }
    let noise = c.labels.iter().filter(|&&l| l < 0).count();
    let share = if c.labels.is_empty() {
        0.0
    } else {
        100.0 * noise as f64 / c.labels.len() as f64
    };
    println!(
        "rows {}  dims {} -> {}  clusters {}  noise {} ({share:.1}%)  device {}\n\
         time: load {load_s:.2}s  pca {pca_s:.2}s  hdbscan {hdbscan_s:.2}s\nlabels -> {}",
        x.rows(),
        x.cols(),
        input.cols(),
        c.n_clusters(),
        noise,
        device.name(),
        a.output.display()
    );
    Ok(())
}

fn bench_cmd(a: BenchArgs) -> Result<()> {
    let device = Device::open(a.numeric.device, &a.numeric.gpu_options())?;
    let opts = BenchOptions {
        sizes: if a.largest_that_fits {
            Vec::new()
        } else {
            a.sizes
        },
        largest_that_fits: a.largest_that_fits,
        dim: a.dim,
        pca: a.numeric.pca(),
        hdbscan: a.numeric.hdbscan(),
        python: (!a.no_sklearn).then_some(a.python),
        sklearn_hdbscan_max_n: a.sklearn_hdbscan_max_n,
        save_inputs: a.save_inputs,
        compare_cpu: a.compare_cpu,
    };
    let dir = tempfile_dir()?;
    let rows = bench::run(&device, &opts, &dir)?;
    if let Some(path) = &a.json {
        std::fs::write(path, serde_json::to_string_pretty(&rows)?)
            .with_context(|| format!("could not write {}", path.display()))?;
    }
    print!("{}", bench::table(&rows));
    let handed_over: Vec<String> = rows
        .iter()
        .filter(|r| !r.on_cpu_instead.is_empty())
        .map(|r| format!("{} at N = {}", r.on_cpu_instead.join(" and "), r.n))
        .collect();
    if a.numeric.device == DeviceChoice::Gpu && !handed_over.is_empty() {
        anyhow::bail!(
            "--device gpu, but the GPU handed {} to the CPU (the log says why): those rows \
             time the CPU, not the GPU",
            handed_over.join("; ")
        );
    }
    Ok(())
}

fn tempfile_dir() -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("segclust-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("could not create {}", dir.display()))?;
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn completions_cover_the_new_commands() {
        let mut out = Vec::new();
        clap_complete::generate(
            clap_complete::Shell::Bash,
            &mut Cli::command(),
            "segclust",
            &mut out,
        );
        let script = String::from_utf8(out).expect("UTF-8 script");
        for word in ["report", "show", "--label-source", "--since", "completions"] {
            assert!(
                script.contains(word),
                "{word} missing from bash completions"
            );
        }
    }

    #[test]
    fn tasks_takes_filters_or_a_show_subcommand() {
        let cli = Cli::try_parse_from(["segclust", "tasks", "--level", "critical,high"])
            .expect("filters parse");
        let Command::Tasks(a) = cli.command else {
            panic!("parsed as another command")
        };
        assert!(a.command.is_none());
        assert_eq!(a.list.level.len(), 2);
        let cli = Cli::try_parse_from(["segclust", "tasks", "show", "12", "--team", "3"])
            .expect("show parses");
        let Command::Tasks(a) = cli.command else {
            panic!("parsed as another command")
        };
        assert!(matches!(
            a.command,
            Some(crate::tasks_cmd::TasksCommand::Show(ref s)) if s.id == 12 && s.team == 3
        ));
    }

    #[test]
    fn numeric_flags_reach_the_parameters() {
        let cli = Cli::try_parse_from([
            "segclust",
            "cluster",
            "--input",
            "x.npy",
            "--output",
            "l.npy",
            "--selection",
            "eom",
            "--min-samples",
            "5",
            "--epsilon",
            "0.5",
            "--pca-components",
            "20",
            "--gpu-memory-mib",
            "512",
        ])
        .expect("valid command line");
        let Command::Cluster(a) = cli.command else {
            panic!("parsed as another command")
        };
        let h = a.numeric.hdbscan();
        assert_eq!(
            (h.selection, h.min_samples, h.epsilon),
            (Selection::Eom, 5, 0.5)
        );
        assert_eq!(a.numeric.pca().components, 20);
        assert_eq!(a.numeric.gpu_memory_mib, 512);
    }
}
