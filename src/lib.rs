//! segclust: recurring user problems from session-replay segments.
//!
//! The modules follow the pipeline (see README.md and DESIGN.md): `source` -> `validate` ->
//! `reduce` -> `cluster` -> `impact` -> `matching` -> `labeling` -> `priority` -> `store`, driven
//! for one team by `pipeline`. `device` is the one numeric interface over the CPU and `gpu`.

/// `println!` for command output: returns the `io::Error` instead of panicking when stdout is
/// closed early (`segclust tasks | head`); `cli::main` treats a broken pipe as a normal end.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

pub mod bench;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod coordinator;
pub mod demo;
pub mod device;
pub mod evaluate;
pub mod failpoint;
mod fnv;
pub mod gpu;
pub mod guard;
pub mod impact;
pub mod labeling;
pub mod matching;
pub mod matrix;
pub mod metrics;
pub mod npy;
pub mod pipeline;
pub mod priority;
pub mod reduce;
pub mod report;
pub mod retry;
pub mod segment;
pub mod source;
pub mod store;
pub mod tasks_cmd;
pub mod validate;
