//! Runs the backend-agnostic op suite (`crate::testing`) on the CPU backend, and again
//! through `PrimitiveOnly`, which leaves the trait's default methods (e.g. `add_rms_norm`
//! as `add_inplace` then `rms_norm`) un-overridden: the path a new backend starts on. The
//! sampling bodies also run through `Bf16Logits`, with bf16 logits as on CUDA.

crate::backend_test_suite!(crate::cpu::CpuBackend::new());

mod through_trait_defaults {
    crate::backend_test_suite!(crate::testing::PrimitiveOnly(crate::cpu::CpuBackend::new()));
}

mod bf16_logits {
    /// One `#[test]` per sampling body, on the CPU backend fed bf16 logits.
    macro_rules! sampling_with_bf16_logits {
        ($($name:ident),* $(,)?) => {
            $(
                #[test]
                fn $name() {
                    let backend = crate::testing::Bf16Logits(crate::cpu::CpuBackend::new());
                    crate::testing::sampling::$name(&backend);
                }
            )*
        };
    }

    sampling_with_bf16_logits!(
        greedy_matches_reference_exactly,
        greedy_ties_nan_and_rows_without_a_finite_logit,
        processing_matches_reference,
        sampled_tokens_match_reference,
        sampled_distribution_fits_chi_square,
        seeded_rows_do_not_depend_on_their_batch,
        filter_edge_cases,
        logprobs_match_reference,
        invalid_inputs_are_errors,
    );
}
