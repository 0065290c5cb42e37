//! Criterion benchmarks live in `benches/benches/`; this library only holds
//! shared workload builders for them. Run `cargo bench -p benches`.
