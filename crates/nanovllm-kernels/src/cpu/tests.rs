//! Runs the backend-agnostic op suite (`crate::testing`) on the CPU backend.

crate::backend_test_suite!(crate::cpu::CpuBackend::new());
