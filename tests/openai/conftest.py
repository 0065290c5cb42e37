"""Fixtures for the tests of `nanovllm serve` through the official `openai` client.

Each server is a real `nanovllm serve` process on 127.0.0.1 with a port the OS
picks (`--port 0`; the server prints the address on stdout). The model is the
tiny Qwen3 fixture with the real vocabulary, `fixtures/qwen3-tiny-fullvocab`,
tokenized by the real Qwen3 tokenizer in `../shared/models/qwen3-tokenizer`.
Without that tokenizer the tests are skipped, except under CI=true where that
is a failure.

The binary is `target/debug/nanovllm` (override with NANOVLLM_BIN); build it
first with `cargo build -p nanovllm-cli`.
"""

import importlib
import json
import os
import queue
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest

REPO = Path(__file__).resolve().parents[2]
MODEL = REPO / "fixtures" / "qwen3-tiny-fullvocab"
TOKENIZER = REPO.parent / "shared" / "models" / "qwen3-tokenizer"
MODEL_NAME = "qwen3-tiny-fullvocab"
API_KEY = "test-key"
STARTUP_TIMEOUT_S = 60


def binary() -> Path:
    path = Path(os.environ.get("NANOVLLM_BIN", REPO / "target" / "debug" / "nanovllm"))
    if not path.is_file():
        pytest.fail(f"{path} not found: build it with `cargo build -p nanovllm-cli` (or set NANOVLLM_BIN)")
    return path


def require_tokenizer() -> None:
    if (TOKENIZER / "tokenizer.json").is_file():
        return
    message = f"the Qwen3 tokenizer is missing at {TOKENIZER}"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message} (CI=true requires it)")
    pytest.skip(message)


class Server:
    """A `nanovllm serve` process; `url` is its base URL once started."""

    def __init__(self, *extra_args: str, model: Path = MODEL, tokenizer: Path | None = TOKENIZER):
        """`tokenizer=None`: the model directory's own tokenizer."""
        if tokenizer is not None:
            require_tokenizer()
        args = [
            str(binary()), "serve",
            "--model", str(model),
            *(["--tokenizer", str(tokenizer)] if tokenizer is not None else []),
            "--device", "cpu",
            "--port", "0",
            "--kvcache-block-size", "16",
            *extra_args,
        ]
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
        self.process = subprocess.Popen(
            args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
        )
        self.stderr_lines: list[str] = []
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        lines: "queue.Queue[str | None]" = queue.Queue()
        threading.Thread(target=self._read_stdout, args=(lines,), daemon=True).start()
        try:
            line = lines.get(timeout=STARTUP_TIMEOUT_S)
        except queue.Empty:
            self.kill()
            raise RuntimeError(f"the server did not start in {STARTUP_TIMEOUT_S} s: {self.stderr()}")
        if line is None:
            self.process.wait(timeout=10)
            time.sleep(0.2)  # the stderr reader catches up
            raise RuntimeError(f"the server exited with {self.process.returncode}: {self.stderr()}")
        if "listening on " not in line:
            self.kill()
            raise RuntimeError(f"unexpected first line {line!r}: {self.stderr()}")
        self.url = line.split("listening on ", 1)[1].split()[0]

    def _read_stdout(self, lines: "queue.Queue[str | None]") -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            lines.put(line)
        lines.put(None)  # stdout closed: the server exited

    def _drain_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr_lines.append(line)

    def stderr(self) -> str:
        return "".join(self.stderr_lines[-50:])

    def interrupt(self) -> None:
        """Ctrl-C: the server drains the requests in flight, then exits."""
        self.process.send_signal(signal.SIGINT)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)

    def stop(self) -> int:
        """Ctrl-C and wait; returns the exit code."""
        if self.process.poll() is None:
            self.interrupt()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
                raise RuntimeError(f"the server did not stop within 30 s of Ctrl-C: {self.stderr()}")
        return self.process.returncode


def http(method: str, url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, str]:
    """A plain HTTP request (stdlib only): (status, body text), errors included."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def http_limits(max_connections: int):
    """A connection-pool `Limits` of the HTTP library the installed openai client uses
    (httpx, or its successor in newer releases)."""
    client_class = openai.DefaultAsyncHttpxClient.__mro__[1]
    library = importlib.import_module(client_class.__module__.split(".")[0])
    return library.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)


def metrics(url: str) -> dict[str, float]:
    """`/metrics` as {name-with-labels: value}."""
    status, text = http("GET", f"{url}/metrics")
    assert status == 200, text
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


@pytest.fixture(scope="session")
def reference() -> dict:
    return json.loads((MODEL / "reference.json").read_text())


@pytest.fixture(scope="session")
def server():
    """The main server: API key required, 64 KiB body limit, room for 128 sequences."""
    s = Server(
        "--api-key", API_KEY,
        "--max-body-bytes", "65536",
        "--num-kvcache-blocks", "2048",
        "--max-num-seqs", "128",
        "--max-waiting-requests", "512",
    )
    yield s
    code = s.stop()
    assert code == 0, f"the server exited with {code}: {s.stderr()}"


@pytest.fixture(scope="session")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=API_KEY, max_retries=0, timeout=60)


def post_json(server: "Server", path: str, body: dict, api_key: str | None = API_KEY) -> tuple[int, dict]:
    """POST a JSON body to `path` of `server` (with the API key unless `api_key=None`):
    (status, parsed body)."""
    headers = {"Content-Type": "application/json"}
    if api_key is not None:
        headers["Authorization"] = f"Bearer {api_key}"
    status, text = http("POST", f"{server.url}{path}", json.dumps(body).encode(), headers)
    return status, json.loads(text)
