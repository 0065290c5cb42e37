//! `cargo xtask`: benchmarks and chores. Depends on nanovllm-core only.

fn main() {}
