//! Runs the backend-agnostic op suite (`crate::testing`) on the CPU backend, and again
//! through `PrimitiveOnly`, which leaves the trait's default methods (e.g. `add_rms_norm`
//! as `add_inplace` then `rms_norm`) un-overridden: the path a new backend starts on.

crate::backend_test_suite!(crate::cpu::CpuBackend::new());

mod through_trait_defaults {
    crate::backend_test_suite!(crate::testing::PrimitiveOnly(crate::cpu::CpuBackend::new()));
}
