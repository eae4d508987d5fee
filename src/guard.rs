//! Panics inside code we do not own, turned into errors.
//!
//! A driver binding (cudarc) or a file format crate (parquet, on some damaged files; found by
//! fuzzing, `tools/fuzz.sh`) may panic where it should return an error. Where such code reads
//! outside input or drives a device, a panic must cost one batch or one file, with a reason,
//! not the process: the callers here wrap those calls with [`catch`].

use std::any::Any;
use std::cell::Cell;
use std::panic::{AssertUnwindSafe, catch_unwind};

use anyhow::Result;

thread_local! {
    /// Whether this thread is inside [`catch`], whose caller reports the panic itself.
    static CATCHING: Cell<bool> = const { Cell::new(false) };
}

/// Keeps the default panic report (message, location, backtrace on stderr) for real bugs, but
/// turns a panic that [`catch`] handles into a debug log line: the caller already reports it
/// as an error with a reason, and a backtrace beside it would read as a crash. Called once by
/// the CLI at start.
pub fn install_panic_hook() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if CATCHING.with(Cell::get) {
            tracing::debug!("caught a panic, reported as an error: {info}");
        } else {
            default(info);
        }
    }));
}

/// The error a caught panic becomes, with the panic's message.
#[derive(Debug, thiserror::Error)]
#[error("panicked: {0}")]
pub struct Panicked(pub String);

/// Runs `f`; a panic inside becomes a [`Panicked`] error. Only for code whose state a panic
/// cannot leave half-updated for later callers (or whose state is dropped, or poisoned behind
/// a mutex, with it).
pub fn catch<T>(f: impl FnOnce() -> Result<T>) -> Result<T> {
    let outer = CATCHING.with(|c| c.replace(true));
    let outcome = catch_unwind(AssertUnwindSafe(f));
    CATCHING.with(|c| c.set(outer));
    outcome.unwrap_or_else(|payload| Err(Panicked::from(payload).into()))
}

impl From<Box<dyn Any + Send>> for Panicked {
    /// From a panic's payload (`catch_unwind`'s, or a joined thread's).
    fn from(payload: Box<dyn Any + Send>) -> Self {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".to_string());
        Panicked(what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_becomes_an_error_with_its_message() {
        let err = catch::<()>(|| panic!("dictionary page missing")).unwrap_err();
        assert_eq!(err.to_string(), "panicked: dictionary page missing");
        assert!(err.is::<Panicked>());
        let n = 3;
        let err = catch::<()>(|| panic!("{n} pages")).unwrap_err();
        assert_eq!(err.to_string(), "panicked: 3 pages");
        assert_eq!(catch(|| Ok(5)).unwrap(), 5);
    }
}
