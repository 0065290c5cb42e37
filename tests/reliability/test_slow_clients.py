"""Slow clients: a connection that sends half a request head and stalls, and a
client that stops reading its stream, slow nobody else and cannot hold the
server's shutdown."""

import signal
import socket
import subprocess
import time

from reliability_helpers import MODEL_NAME, Server, address, metrics, post_json, timed, wait_until

HEADER_TIMEOUT_S = 2
STALLED_CONNECTIONS = 8
# Seconds a server may take to exit once nothing holds it (a debug build, a busy machine).
EXIT_SLACK_S = 15
# A stalled connection costs the others nothing: the bound only absorbs machine noise.
MAX_SLOWDOWN = 5.0


def small_completions(url: str, count: int = 5) -> None:
    for _ in range(count):
        status, out = post_json(url, "/v1/completions", {
            "model": MODEL_NAME, "prompt": "Hello", "max_tokens": 8, "temperature": 0,
            "ignore_eos": True})
        assert status == 200, out


def test_a_stalled_request_head_neither_slows_others_nor_holds_shutdown():
    server = Server("--http-header-timeout-s", str(HEADER_TIMEOUT_S))
    stalled = []
    try:
        small_completions(server.url, 1)  # warm up
        alone = min(timed(lambda: small_completions(server.url)) for _ in range(2))
        for _ in range(STALLED_CONNECTIONS):
            sock = socket.create_connection(address(server.url), timeout=30)
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: test\r\nContent-Le")
            stalled.append(sock)
        attacked = min(timed(lambda: small_completions(server.url)) for _ in range(2))
        print(f"stalled heads: victim {attacked:.3f} s beside them, {alone:.3f} s alone: ratio {attacked / alone:.2f}")
        assert attacked / alone < MAX_SLOWDOWN, (attacked, alone)

        # The stalled heads are in progress: shutdown waits for them at most the header timeout.
        start = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        try:
            code = server.process.wait(timeout=HEADER_TIMEOUT_S + EXIT_SLACK_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"SIGTERM did not stop the server within {HEADER_TIMEOUT_S + EXIT_SLACK_S} s "
                f"with stalled request heads: {server.stderr()}")
        assert code == 0, server.stderr()
        elapsed = time.monotonic() - start
        assert elapsed < HEADER_TIMEOUT_S + EXIT_SLACK_S, elapsed
        # The server closed the stalled connections.
        for sock in stalled:
            sock.settimeout(5)
            try:
                assert sock.recv(4096) is not None
            except (ConnectionResetError, socket.timeout):
                pass
    finally:
        for sock in stalled:
            sock.close()
        server.kill()


def test_a_second_signal_exits_at_once_despite_a_stuck_client():
    # A request whose head arrived but whose body stalls is in flight: the first signal
    # waits for it (the graceful shutdown finishes what it accepted); the second must not.
    # (A client that stopped reading its stream holds the server the same way, once the
    # stream outgrows the socket buffers, which takes megabytes.)
    server = Server()
    sock = None
    try:
        sock = socket.create_connection(address(server.url), timeout=30)
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: test\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"prompt\": ")
        # The head is read (the connection counts as busy) once a request is seen by /metrics.
        wait_until(lambda: metrics(server.url) is not None, timeout_s=10, what="/metrics")
        server.process.send_signal(signal.SIGTERM)
        time.sleep(1.0)
        assert server.process.poll() is None, (
            f"the first signal did not wait for the request in flight: {server.stderr()}")
        start = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=EXIT_SLACK_S)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"a second SIGTERM did not stop the server within {EXIT_SLACK_S} s: {server.stderr()}")
        assert time.monotonic() - start < EXIT_SLACK_S
    finally:
        if sock is not None:
            sock.close()
        server.kill()
