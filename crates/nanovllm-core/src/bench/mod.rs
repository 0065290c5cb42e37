//! Throughput on nano-vLLM's bench.py workload, for `nanovllm bench` and
//! `cargo xtask bench` (both are thin argument parsers over [`run`]).
//!
//! - [`pyrandom`]: CPython's `random` (MT19937, `randint`) bit for bit, so the
//!   workload is bench.py's own: `WorkloadSpec::SEED` gives 142,827 prompt and
//!   133,966 output tokens over 256 sequences.
//! - [`workload`]: the [`WorkloadSpec`] (profile bounds) and the generated [`Workload`].
//! - [`run()`]: the engine run and its measurement, returning a [`BenchReport`],
//!   which prints as text (`Display`) and serialises as the `--json` schema.
//! - `BenchFlags` (feature `clap`): the flags both front ends share, so that they
//!   differ only in their engine flags and in `--model-config`'s default.

#[cfg(feature = "clap")]
mod flags;
pub mod pyrandom;
mod report;
mod run;
pub mod workload;

#[cfg(feature = "clap")]
pub use flags::BenchFlags;
pub use pyrandom::PyRandom;
pub use report::{peak_rss_mib, BenchReport, DecodeStepMs};
pub use run::{run, BenchOptions, BENCH_PY_TEMPERATURE};
pub use workload::{BenchProfile, Workload, WorkloadOverrides, WorkloadSpec, MAX_PROMPT_TOKEN_ID};
