"""A tensor-parallel worker that dies under `nanovllm serve`.

The server runs TP 2 with worker processes on the CPU (the tiny Qwen3 fixture with its
own tokenizer: 4 attention and 2 KV heads split over 2 ranks). Killing rank 1 with
SIGKILL must be noticed at once, even with no request in flight: /health turns 503
with the reason, a stream in flight ends with an error event, and the server rebuilds
the group and serves again; with `--tp-max-restarts 0` it exits non-zero by itself, and a
SIGTERM while the group is broken exits non-zero too.

The server is tests/openai's `Server` (through reliability_helpers) on another fixture: the
binary is `target/debug/nanovllm` (override with NANOVLLM_BIN); build it first with
`cargo build -p nanovllm-cli`.
"""

import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from reliability_helpers import REPO, Server


class TpServer(Server):
    """`nanovllm serve` with TP 2 over worker processes; `url` once it listens."""

    def __init__(self, *extra_args: str):
        super().__init__(
            "--num-kvcache-blocks", "256",
            "--tensor-parallel-size", "2",
            "--tp-mode", "processes",
            "--dist-init-addr", "127.0.0.1:0",
            # A dead rank is noticed by its closed sockets; this only bounds a silent one.
            "--tp-timeout-secs", "20",
            *extra_args,
            model=REPO / "fixtures" / "qwen3-tiny",
            tokenizer=None,
        )

    def worker_pids(self) -> list[int]:
        """The server's children whose command line says `worker` (its TP ranks)."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            # The fields after the parenthesised name: state, ppid, ...
            fields = stat.rsplit(")", 1)[1].split()
            if int(fields[1]) == self.process.pid and b"worker" in cmdline and fields[0] != "Z":
                pids.append(int(entry.name))
        return pids

    def rank1_pid(self) -> int:
        pids = self.worker_pids()
        assert len(pids) == 1, f"expected one worker process (rank 1), found {pids}"
        return pids[0]


def http(method: str, url: str, body: dict | None = None, timeout: float = 30) -> tuple[int, str]:
    data = None if body is None else json.dumps(body).encode()
    headers = {} if body is None else {"content-type": "application/json"}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def complete(server: TpServer, max_tokens: int = 4) -> tuple[int, str]:
    return http("POST", f"{server.url}/v1/completions",
                {"prompt": "The capital of France is", "max_tokens": max_tokens, "temperature": 0})


def metric(server: TpServer, name: str) -> float:
    status, text = http("GET", f"{server.url}/metrics")
    assert status == 200, text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} not in /metrics")


def wait_for(what: str, predicate, timeout_s: float, server: TpServer, interval_s: float = 0.01):
    """Polls `predicate` until it returns a truthy value, which it returns."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval_s)
    raise AssertionError(f"{what} within {timeout_s} s; server log:\n{server.stderr()}")


def kill_rank1_during_a_stream(server: TpServer) -> tuple[int, list[str]]:
    """Starts a long stream, SIGKILLs rank 1 after its first chunk; returns the killed pid and
    the stream's `data:` payloads (read to the end, bounded by the socket timeout)."""
    pid = server.rank1_pid()
    body = json.dumps({"prompt": "Once upon a time", "max_tokens": 480, "ignore_eos": True,
                       "temperature": 0, "stream": True}).encode()
    request = urllib.request.Request(f"{server.url}/v1/completions", data=body, method="POST",
                                     headers={"content-type": "application/json"})
    events = []
    with urllib.request.urlopen(request, timeout=20) as response:
        assert response.status == 200
        killed = False
        for raw in response:
            line = raw.decode().strip()
            if not line.startswith("data:"):
                continue
            events.append(line[len("data:"):].strip())
            if not killed:
                os.kill(pid, signal.SIGKILL)
                killed = True
    return pid, events


def test_a_killed_worker_is_noticed_at_once_and_the_group_is_rebuilt():
    server = TpServer("--tp-max-restarts", "3")
    try:
        status, text = complete(server)
        assert status == 200, text
        status, text = http("GET", f"{server.url}/health")
        assert (status, json.loads(text)["status"]) == (200, "ok"), text

        # Idle: no request runs, yet the death is noticed and the worker reaped.
        pid = server.rank1_pid()
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        status, text = wait_for("/health turned 503", lambda: (
            lambda r: r if r[0] == 503 else None)(http("GET", f"{server.url}/health", timeout=5)),
            timeout_s=5, server=server)
        noticed_s = time.monotonic() - killed_at
        health = json.loads(text)
        assert health["status"] in ("recovering", "failed"), health
        assert "rank 1" in health["reason"] and "signal: 9" in health["reason"], health
        assert health["error"]["message"], health
        assert not Path(f"/proc/{pid}").exists(), "the killed worker is still a zombie"

        # Recovered: healthy again, a new rank 1, requests succeed.
        wait_for("/health back to 200", lambda: http("GET", f"{server.url}/health", timeout=5)[0] == 200,
                 timeout_s=20, server=server, interval_s=0.1)
        assert server.rank1_pid() != pid
        status, text = complete(server)
        assert status == 200, text
        assert json.loads(text)["choices"][0]["text"], text
        assert metric(server, "nanovllm_tp_restarts_total") == 1
        assert metric(server, "nanovllm_engine_healthy") == 1

        # Busy: a stream in flight ends with an error event instead of hanging.
        started = time.monotonic()
        _, events = kill_rank1_during_a_stream(server)
        assert time.monotonic() - started < 15
        errors = [json.loads(e) for e in events if e != "[DONE]" and "error" in json.loads(e)]
        assert errors, f"no error event in the stream: {events[-3:]}"
        assert "tensor-parallel" in errors[0]["error"]["message"] or "rank 1" in errors[0]["error"]["message"], errors
        wait_for("the second recovery", lambda: http("GET", f"{server.url}/health", timeout=5)[0] == 200,
                 timeout_s=20, server=server, interval_s=0.1)
        status, text = complete(server)
        assert status == 200, text
        assert metric(server, "nanovllm_tp_restarts_total") == 2
        print(f"noticed the idle death in {noticed_s:.3f} s")

        # Healthy again, so a signal is a clean stop.
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=30) == 0, server.stderr()
    finally:
        server.kill()


def test_a_signal_while_the_group_is_broken_exits_non_zero():
    server = TpServer("--tp-max-restarts", "3")
    try:
        status, text = complete(server)
        assert status == 200, text
        os.kill(server.rank1_pid(), signal.SIGKILL)
        wait_for("/health turned 503", lambda: http("GET", f"{server.url}/health", timeout=5)[0] == 503,
                 timeout_s=5, server=server)
        # Within the 1 s pause before the restart: the group is still broken.
        server.process.send_signal(signal.SIGTERM)
        try:
            code = server.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the server did not stop on SIGTERM: {server.stderr()}")
        assert code != 0, server.stderr()
        time.sleep(0.2)  # the stderr reader catches up with the last line
        assert "stopped while the tensor-parallel group was broken" in server.stderr(), server.stderr()
    finally:
        server.kill()


def test_with_no_restarts_left_the_server_exits_non_zero_by_itself():
    server = TpServer("--tp-max-restarts", "0")
    try:
        status, text = complete(server)
        assert status == 200, text
        pid = server.rank1_pid()
        os.kill(pid, signal.SIGKILL)
        try:
            code = server.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the server kept running without its worker: {server.stderr()}")
        assert code != 0, server.stderr()
        time.sleep(0.2)  # the stderr reader catches up with the last line
        log = server.stderr()
        assert "--tp-max-restarts 0" in log and "rank 1" in log, log
        assert not Path(f"/proc/{pid}").exists(), "the killed worker is still a zombie"
    finally:
        server.kill()
