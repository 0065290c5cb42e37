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

/// A pool job that runs at least this long is followed by a heap trim.
const HEAVY_JOB: std::time::Duration = std::time::Duration::from_millis(50);

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
            let start = std::time::Instant::now();
            let out = job();
            if start.elapsed() >= HEAVY_JOB {
                // A job this long allocated in proportion to a huge input (tokenizing uses
                // ~200 bytes per prompt byte); hand that memory back rather than keep it
                // resident until the engine next goes idle. A trim costs about a millisecond.
                nanovllm_core::host_memory::release_free_heap();
            }
            out
        })
        .await
        .map_err(|e| ApiError::Internal(format!("a request's CPU work failed: {e}")))
    }
}
