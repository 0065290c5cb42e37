//! What the GPU test files (`cuda_*`, run on other machines by `cargo xtask gpu-check`)
//! share: the skip-or-fail rule when no GPU is present, and where the fixtures are.

use std::path::PathBuf;

/// Whether a GPU is here; prints why not and returns false, or panics under
/// `NANOVLLM_REQUIRE_GPU=1` (set by `cargo xtask gpu-check`'s run.sh), where a missing
/// GPU must fail the run instead of skipping it.
pub fn gpu_available(test: &str) -> bool {
    if nanovllm_kernels::cuda::is_available() {
        return true;
    }
    let why = "no CUDA device (libcuda missing or no GPU visible)";
    if std::env::var("NANOVLLM_REQUIRE_GPU").as_deref() == Ok("1") {
        panic!("{test}: {why}, but NANOVLLM_REQUIRE_GPU=1");
    }
    eprintln!("skipped: {test}: {why}");
    false
}

/// The repository root: `NANOVLLM_REPO_ROOT` when set (a gpu-check bundle on another
/// machine), else relative to this crate.
pub fn bundle_root() -> PathBuf {
    match std::env::var_os("NANOVLLM_REPO_ROOT") {
        Some(root) => PathBuf::from(root),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."),
    }
}
