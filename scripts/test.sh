#!/usr/bin/env bash
# The project's test command (README): every crate's unit, property and golden
# tests on the CPU, then every criterion benchmark once in quick test mode so
# the benchmarks keep compiling and running, then the tests of `nanovllm serve`
# through the official `openai` Python client (tests/openai; they need
# `pip install openai pytest`, which .ci/run does; outside CI they are skipped
# with a note when those packages are missing).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo test --workspace
cargo bench -p benches -- --test

cargo build -p nanovllm-cli
if python3 -c "import openai, pytest" 2>/dev/null; then
    NANOVLLM_BIN="$PWD/target/debug/nanovllm" python3 -m pytest -p no:cacheprovider tests/openai -q
elif [ "${CI:-}" = "true" ]; then
    echo "error: the openai client tests need python3 with openai and pytest (pip install openai pytest)" >&2
    exit 1
else
    echo "note: skipping tests/openai: python3 lacks openai or pytest (pip install openai pytest)" >&2
fi
