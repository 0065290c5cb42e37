#!/usr/bin/env bash
# The project's test command (README): every crate's unit, property and golden
# tests on the CPU, then every criterion benchmark once in quick test mode so
# the benchmarks keep compiling and running, then the cuda-feature tests when nvcc
# is available (GPU tests skip without a GPU), then the tests of `nanovllm serve`
# through the official `openai` Python client (tests/openai; they need
# `pip install openai pytest`, which .ci/run does; outside CI they are skipped
# with a note when those packages are missing).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace
cargo bench -p benches -- --test

# The CUDA build: kernels compiled by nvcc, the crates' CUDA code, and its tests (without a
# GPU the GPU tests skip with a printed reason; CPU-side logic such as launch shapes, graph
# buckets and memory sizing runs everywhere). Needs nvcc (NVCC, CUDA_HOME or PATH; see the
# README); .ci/run installs it, elsewhere it is skipped with a note when nvcc is missing.
if [ -n "${NVCC:-}" ] || [ -n "${CUDA_HOME:-}" ] || command -v nvcc >/dev/null 2>&1; then
    cargo test --features cuda -p nanovllm-kernels -p nanovllm-models -p nanovllm-core
elif [ "${CI:-}" = "true" ]; then
    echo "error: CI builds the cuda feature: set NVCC (see .ci/run)" >&2
    exit 1
else
    echo "note: skipping the cuda-feature tests: no nvcc (set NVCC; see the README)" >&2
fi

cargo build -p nanovllm-cli
if python3 -c "import openai, pytest" 2>/dev/null; then
    NANOVLLM_BIN="$PWD/target/debug/nanovllm" python3 -m pytest -p no:cacheprovider tests/openai -q
    NANOVLLM_BIN="$PWD/target/debug/nanovllm" python3 -m pytest -p no:cacheprovider tests/reliability/test_worker_death.py -q
elif [ "${CI:-}" = "true" ]; then
    echo "error: the openai client tests need python3 with openai and pytest (pip install openai pytest)" >&2
    exit 1
else
    echo "note: skipping tests/openai: python3 lacks openai or pytest (pip install openai pytest)" >&2
fi
