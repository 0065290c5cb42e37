//! The one rule for a test that needs a GPU and finds none, shared by every GPU test in
//! the workspace (the CUDA suite via `backend_test_suite!(with: ...)`, the kernels' and
//! the engine's `cuda_*` test files).
//!
//! Without a GPU such a test prints `skipped: <test>: <reason>` and passes, so that
//! `cargo test --features cuda` runs anywhere. Under `NANOVLLM_REQUIRE_GPU=1` (which
//! `cargo xtask gpu-check`'s run.sh sets on the GPU machine) the same situation fails the
//! test, naming the reason: there a skip would hide a broken setup.
//!
//! The rule itself, [`skip_or_fail`], is a pure function tested below on every build;
//! the helpers that probe for a device need the `cuda` feature.

/// The environment variable that turns a missing GPU from a skip into a failure.
pub const REQUIRE_GPU_VAR: &str = "NANOVLLM_REQUIRE_GPU";

/// The rule: a test named `test` cannot run for `reason`. `Ok(line)`: print `line` and
/// pass; `Err(message)`: fail with `message` (when `require`, i.e. a GPU must be there).
pub fn skip_or_fail(test: &str, reason: &str, require: bool) -> Result<String, String> {
    if require {
        Err(format!("{test}: {reason}, but {REQUIRE_GPU_VAR}=1"))
    } else {
        Ok(format!("skipped: {test}: {reason}"))
    }
}

/// Whether this run demands a GPU (`NANOVLLM_REQUIRE_GPU=1`).
pub fn gpu_required() -> bool {
    std::env::var(REQUIRE_GPU_VAR).as_deref() == Ok("1")
}

/// Applies [`skip_or_fail`] to the running test: prints the skip line, or panics.
pub fn skip(reason: &str) {
    match skip_or_fail(&current_test(), reason, gpu_required()) {
        Ok(line) => println!("{line}"),
        Err(message) => panic!("{message}"),
    }
}

/// The running test's name: libtest names each test's thread after it.
pub fn current_test() -> String {
    std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_string()
}

/// `true` when a CUDA device is usable; otherwise applies the rule ([`skip`]) and returns
/// `false`, so a test starts with `if !gpu_or_skip() { return; }`.
#[cfg(feature = "cuda")]
pub fn gpu_or_skip() -> bool {
    match crate::cuda::unavailable_reason() {
        None => true,
        Some(reason) => {
            skip(&format!("no CUDA device ({reason})"));
            false
        }
    }
}

/// Runs `body` on a fresh backend for cuda:0, or applies the rule when there is no GPU.
/// A GPU that is present but cannot be opened fails the test.
#[cfg(feature = "cuda")]
pub fn with_gpu(body: impl FnOnce(&crate::cuda::CudaBackend)) {
    if gpu_or_skip() {
        let backend = crate::cuda::CudaBackend::new(0)
            .unwrap_or_else(|e| panic!("{}: opening cuda:0: {e}", current_test()));
        body(&backend);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_the_requirement_a_missing_gpu_is_a_printed_skip() {
        assert_eq!(
            skip_or_fail("cuda_vs_cpu::decode", "no CUDA device (no driver)", false),
            Ok("skipped: cuda_vs_cpu::decode: no CUDA device (no driver)".to_string())
        );
    }

    #[test]
    fn under_nanovllm_require_gpu_a_missing_gpu_fails_naming_the_reason() {
        assert_eq!(
            skip_or_fail("cuda_vs_cpu::decode", "no CUDA device (no driver)", true),
            Err(
                "cuda_vs_cpu::decode: no CUDA device (no driver), but NANOVLLM_REQUIRE_GPU=1"
                    .to_string()
            )
        );
    }

    #[test]
    fn the_test_name_is_the_running_test() {
        assert!(
            current_test().ends_with("the_test_name_is_the_running_test"),
            "{}",
            current_test()
        );
    }
}
