//! Backend-agnostic op tests (feature `testing`; always compiled for this crate's tests).
//!
//! Every test body takes a `&dyn Backend`: it builds fixed-seed random inputs on the
//! host, uploads them, runs one op, reads the result back and compares it against a
//! plain naive reference written here (loops, f64 accumulation, full softmax). The CPU
//! backend runs them in `cpu::tests` (directly, and through [`PrimitiveOnly`] so that the
//! trait's default methods are tested too); another backend runs the very same bodies
//! with `nanovllm_kernels::backend_test_suite!(MyBackend::new())` inside a test file
//! (the CUDA backend: `tests/cuda_vs_reference.rs`).
//!
//! Inputs are rounded to the backend's activation dtype (and weights / cache to theirs)
//! *before* the reference sees them, so a tolerance only covers the op's own arithmetic.
//! Each test states its f32 tolerance; on a backend whose activations are narrower the
//! checks widen by that dtype's rounding step ([`check::Tol::for_backend`]).
//! Test bodies panic (via `assert!`) on failure, like any test.
//!
//! [`gpu`] holds the workspace's one rule for tests that find no GPU.

pub mod check;
pub mod dense;
pub mod errors;
mod fake_graphs;
pub mod gpu;
pub mod moe;
pub mod paged;
mod primitive_only;
pub mod quant;
pub mod reference;
pub mod rng;
pub mod sampling;

pub use fake_graphs::FakeGraphs;
pub use primitive_only::{Bf16Logits, PrimitiveOnly};

/// Expands to one `#[test]` per test body, each running it on `$backend` (an expression
/// evaluated afresh in every test, e.g. `CpuBackend::new()`).
///
/// `backend_test_suite!(with: run)` is for devices that may be absent: each test calls
/// `run(|backend| body(backend))`, and `run` decides whether the body runs, e.g.
/// [`testing::gpu::with_gpu`](crate::testing::gpu) (which opens cuda:0, or applies the
/// skip rule).
#[macro_export]
macro_rules! backend_test_suite {
    (with: $run:expr $(,)?) => {
        $crate::backend_test_suite!(@list [with $run]);
    };
    ($backend:expr $(,)?) => {
        $crate::backend_test_suite!(@list [on $backend]);
    };
    (@list $how:tt) => {
        $crate::backend_test_suite!(@tests $how;
            dense::matmul_f32_weights,
            dense::matmul_bf16_weights,
            dense::matmul_f16_weights,
            dense::embedding_all_table_dtypes,
            dense::embedding_shard_masks_other_ranks_ids,
            dense::copy_from_host_overwrites,
            dense::rms_norm_matches_reference,
            dense::add_rms_norm_updates_residual,
            dense::rope_neox_matches_reference,
            dense::silu_mul_matches_reference,
            dense::add_inplace_adds,
            dense::add_bias_matches_reference,
            dense::split_last_dim_copies_columns,
            dense::index_rows_gathers,
            quant::matmul_int8_g32_weights,
            quant::matmul_int4_g32_weights,
            quant::matmul_fp8_g128_weights,
            quant::byte_backed_tensors_round_trip,
            quant::matmul_rejects_bad_quantized_weights,
            paged::store_kv_writes_slots_skips_minus_one,
            paged::prefill_attention_matches_reference,
            paged::prefill_attention_bf16_cache,
            paged::prefill_attention_long_sequences,
            paged::decode_attention_matches_reference,
            paged::decode_attention_bf16_cache,
            paged::decode_matches_prefill_last_token,
            paged::decode_zero_context_gives_zeros,
            moe::route_matches_reference,
            moe::route_picks_largest_and_breaks_ties_by_lower_id,
            moe::route_rejects_bad_inputs,
            moe::experts_f32_weights,
            moe::experts_bf16_weights,
            moe::experts_f16_weights,
            moe::experts_skip_unpicked_experts,
            moe::experts_zero_tokens,
            moe::experts_reject_bad_inputs,
            errors::matmul_rejects_bad_inputs,
            errors::embedding_rejects_out_of_range_ids,
            errors::rope_rejects_bad_inputs,
            errors::dense_ops_reject_bad_shapes,
            errors::add_bias_rejects_bad_inputs,
            errors::store_kv_rejects_bad_slots,
            errors::prefill_attention_rejects_bad_metadata,
            errors::decode_attention_rejects_bad_metadata,
            sampling::greedy_matches_reference_exactly,
            sampling::greedy_ties_nan_and_rows_without_a_finite_logit,
            sampling::processing_matches_reference,
            sampling::sampled_tokens_match_reference,
            sampling::sampled_distribution_fits_chi_square,
            sampling::seeded_rows_do_not_depend_on_their_batch,
            sampling::filter_edge_cases,
            sampling::logprobs_match_reference,
            sampling::token_logprobs_match_reference,
            sampling::invalid_inputs_are_errors,
        );
    };
    (@tests [with $run:expr]; $($module:ident :: $name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                ($run)(|backend| $crate::testing::$module::$name(backend));
            }
        )*
    };
    (@tests [on $backend:expr]; $($module:ident :: $name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let backend = $backend;
                $crate::testing::$module::$name(&backend);
            }
        )*
    };
}
