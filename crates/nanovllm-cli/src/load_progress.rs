//! Building the engine with a progress bar on stderr while the checkpoint loads.
//!
//! The bar appears only once loading has taken [`SHOW_AFTER`] (a small model loads without
//! one), only where the load's total is known (one rank reading a safetensors checkpoint
//! whole), and never when [`crate::logging::progress_hidden`]. It is cleared at the last
//! byte, before the engine logs the rest of its start-up block, so log lines and the bar
//! never share a line.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use nanovllm_core::{EngineConfig, LLMEngine, LoadProgress};

use crate::logging::{progress_hidden, Verbosity};

/// How long a load runs before its bar appears.
const SHOW_AFTER: Duration = Duration::from_secs(1);

/// [`LLMEngine::with_load_progress`] with the bar described in the module doc.
pub fn build_engine(config: EngineConfig, verbosity: Verbosity) -> anyhow::Result<LLMEngine> {
    if progress_hidden(verbosity) {
        return Ok(LLMEngine::new(config)?);
    }
    let bar = LoadBar::new();
    let engine = LLMEngine::with_load_progress(config, &|p| bar.report(p));
    bar.finish();
    Ok(engine?)
}

/// A bar created on the first report after [`SHOW_AFTER`].
struct LoadBar {
    started: Instant,
    bar: OnceLock<ProgressBar>,
}

impl LoadBar {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            bar: OnceLock::new(),
        }
    }

    fn report(&self, progress: LoadProgress) {
        let Some(total) = progress.total_bytes else {
            return;
        };
        let bar = match self.bar.get() {
            Some(bar) => bar,
            None if self.started.elapsed() >= SHOW_AFTER => self.bar.get_or_init(|| {
                let bar = ProgressBar::new(total);
                bar.set_style(
                    ProgressStyle::with_template(
                        "Loading weights {bar:30} {bytes}/{total_bytes} [{elapsed_precise}, {bytes_per_sec}]",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
                );
                bar
            }),
            None => return,
        };
        bar.set_position(progress.bytes_read);
        if progress.bytes_read >= total {
            bar.finish_and_clear();
        }
    }

    /// Clears the bar if the load ended before its last byte (an error).
    fn finish(&self) {
        if let Some(bar) = self.bar.get() {
            bar.finish_and_clear();
        }
    }
}
