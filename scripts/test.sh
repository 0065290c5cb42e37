#!/usr/bin/env bash
# The project's test command (README): every crate's unit, property and golden
# tests on the CPU, then every criterion benchmark once in quick test mode so
# the benchmarks keep compiling and running.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace
cargo bench -p benches -- --test
