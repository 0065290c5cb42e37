"""Admission and allocation cases: what can never fit is refused up front with one clear
line, and no size a user gives can make the process abort (SIGABRT) or balloon.

- A request that could outgrow the whole KV cache is a 400 `context_length_exceeded` at
  admission (it used to be accepted and then fail mid-stream with a 500), and so is
  `max_tokens` = 2^64 - 1 (whose sum with the prompt once wrapped).
- `--kv-cache-memory-gib 5000` and a config with `hidden_size` 2^40 are one-line errors
  with a non-zero exit, not an abort.
- A 100 MB JSONL line is refused before tokenizing, with bounded memory (it once cost
  about 220 bytes of memory per input byte).
"""

import json
import resource
import shutil
import subprocess
import tempfile
from pathlib import Path

from reliability_helpers import REPO, Server, openai_conftest, post_json

TINY = REPO / "fixtures" / "qwen3-tiny"
# Every CLI case must finish within this (a hang is a failure, not a stuck suite).
CLI_TIMEOUT_S = 120


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(openai_conftest.binary()), *args],
        capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
    )


def assert_one_line_error(out: subprocess.CompletedProcess, needle: str) -> None:
    # A negative code is a signal (-6: SIGABRT); an error exits with a positive one.
    assert out.returncode > 0, f"exit {out.returncode}: {out.stderr}"
    errors = [line for line in out.stderr.splitlines() if line.startswith("error")]
    assert len(errors) == 1 and needle in errors[0], out.stderr


def test_requests_that_can_never_fit_are_refused_at_admission():
    # 8 blocks of 16 tokens: 128 tokens of KV cache, below the 512-token context.
    server = Server("--num-kvcache-blocks", "8")
    try:
        for body in (
            {"model": openai_conftest.MODEL_NAME, "prompt": "hello", "max_tokens": 300},
            {"model": openai_conftest.MODEL_NAME, "prompt": "hello", "max_tokens": 2**64 - 1},
        ):
            status, answer = post_json(server.url, "/v1/completions", body)
            assert status == 400, answer
            assert answer["error"]["code"] == "context_length_exceeded", answer
        # What fits still runs.
        status, answer = post_json(server.url, "/v1/completions", {
            "model": openai_conftest.MODEL_NAME, "prompt": "hello", "max_tokens": 8,
        })
        assert status == 200, answer
    finally:
        assert server.stop() == 0, server.stderr()


def test_a_kv_cache_larger_than_the_machine_is_an_error_not_an_abort():
    out = run_cli("generate", "--model", str(TINY), "--device", "cpu",
                  "--kv-cache-memory-gib", "5000", "--prompt", "hi", "--max-tokens", "1")
    assert_one_line_error(out, "--kv-cache-memory-gib")


def test_absurd_model_sizes_are_an_error_not_an_abort():
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        shutil.copytree(TINY, model)
        config = json.loads((model / "config.json").read_text())
        config["hidden_size"] = 2**40
        (model / "config.json").write_text(json.dumps(config))
        out = run_cli("generate", "--model", str(model), "--device", "cpu",
                      "--prompt", "hi", "--max-tokens", "1")
        assert_one_line_error(out, "hidden_size = 1099511627776 is larger than the engine supports")


def test_a_100_mb_jsonl_line_is_refused_with_bounded_memory():
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in.jsonl"
        with path.open("w") as f:
            f.write(json.dumps({"prompt": "hello", "max_tokens": 2}) + "\n")
            f.write('{"prompt": "' + "a" * (100 << 20) + '", "max_tokens": 2}\n')
        out = run_cli("generate", "--model", str(TINY), "--device", "cpu",
                      "--input", str(path), "--output", "-", "--kv-cache-memory-gib", "0.1")
        peak_mib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    # The good line runs; the huge one is reported, and the run says not all succeeded.
    assert out.returncode != 0 and out.returncode > 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert "text" in lines[0] and "cannot fit max_model_len" in lines[1]["error"], lines
    # ~220 bytes per input byte would be 22 GB; reading the line and its parsed string cost
    # a few hundred MB. (ru_maxrss is the largest of this process's children so far: the
    # suite's other children are small servers, so it bounds this run from above.)
    assert peak_mib < 1024, f"peak RSS {peak_mib:.0f} MiB"
