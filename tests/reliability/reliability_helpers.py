"""Helpers of the reliability tests (a module of its own, not `conftest`, so that
it never clashes with tests/openai/conftest.py when both suites run together)."""

import importlib.util
import json
import socket
import time
import urllib.parse
from pathlib import Path

_spec = importlib.util.spec_from_file_location(
    "openai_suite_conftest", Path(__file__).resolve().parents[1] / "openai" / "conftest.py"
)
openai_conftest = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(openai_conftest)

REPO = openai_conftest.REPO
Server = openai_conftest.Server
http = openai_conftest.http
metrics = openai_conftest.metrics
MODEL_NAME = openai_conftest.MODEL_NAME


def post_json(url: str, path: str, body: dict) -> tuple[int, dict]:
    status, text = http("POST", f"{url}{path}", json.dumps(body).encode(),
                        {"Content-Type": "application/json"})
    return status, json.loads(text)


def address(url: str) -> tuple[str, int]:
    parsed = urllib.parse.urlparse(url)
    return parsed.hostname, parsed.port


def wait_until(predicate, timeout_s: float, what: str, interval_s: float = 0.01) -> None:
    """Polls `predicate` until it holds; fails after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(interval_s)


def timed(fn) -> float:
    start = time.monotonic()
    fn()
    return time.monotonic() - start
