//! [`CpuPool`]: where handlers run CPU-heavy request work (tokenizing,
//! rendering chat templates, compiling stop strings), off the async runtime's
//! worker threads, so that a multi-megabyte prompt cannot stall `/health`,
//! `/metrics` or the streams of other clients.
//!
//! The work runs on tokio's blocking threads behind a semaphore: at most
//! `permits` jobs at once, the rest wait in FIFO order. Sized to the cores
//! minus one (at least one), so a burst of huge prompts always leaves a core to
//! the engine thread, which every running request depends on.

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::errors::ApiError;

#[derive(Clone, Debug)]
pub struct CpuPool {
    permits: Arc<Semaphore>,
}

impl CpuPool {
    pub fn new(permits: usize) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(permits.max(1))),
        }
    }

    /// The default size: the machine's cores minus one, at least one.
    pub fn for_this_machine() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        Self::new(cores.saturating_sub(1))
    }

    /// Runs `job` on a blocking thread once a permit is free. If the caller goes
    /// away (the client disconnected) before the job started, it never runs.
    pub async fn run<T, F>(&self, job: F) -> Result<T, ApiError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ApiError::Internal("the CPU pool is closed".into()))?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            job()
        })
        .await
        .map_err(|e| ApiError::Internal(format!("a request's CPU work failed: {e}")))
    }
}
