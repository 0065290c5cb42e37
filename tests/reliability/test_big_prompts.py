"""Big prompts: tokenizing runs off the async runtime's worker threads, and a
prompt too long to ever fit the context is refused before tokenizing, so
multi-megabyte prompts leave /health (and everyone else) fast."""

import threading
import time

from reliability_helpers import MODEL_NAME, http, post_json

# The victim: a batch of PROBES sequential /health requests; its time under attack is the
# slowest batch while the attack lasts (a frozen runtime shows as one very slow batch).
PROBES = 20
# Bounds the probing under attack (count and time), whatever the server does.
MAX_PROBES = 5000
MAX_ATTACK_S = 120
# Without the fix, /health waited for whole tokenizations (a ratio of 626 measured: 3.7 s
# against 6 ms); with it the probes only share the CPU (ratios of 1 to 5 measured). The
# bound absorbs that sharing on a busy 2-core machine.
MAX_SLOWDOWN = 20.0


def probe_health(url: str) -> float:
    """Seconds PROBES sequential /health requests take."""
    start = time.monotonic()
    for _ in range(PROBES):
        status, _ = http("GET", f"{url}/health")
        assert status == 200
    return time.monotonic() - start


def test_health_stays_fast_while_big_prompts_are_tokenized_or_refused(shared_server):
    url = shared_server.url
    probe_health(url)  # warm up
    alone = sorted(probe_health(url) for _ in range(5))[2]
    words = "lorem ipsum dolor sit amet, consectetur adipiscing elit. "
    huge = words * (3_000_000 // len(words))  # 3 MB: more than 512 tokens can hold
    big = words * (400_000 // len(words))  # 400 kB: tokenized, then found too long
    results = []

    def send(path: str, body: dict) -> None:
        results.append(post_json(url, path, body))

    requests = [
        ("/v1/completions", {"model": MODEL_NAME, "prompt": huge, "max_tokens": 1}),
        ("/v1/completions", {"model": MODEL_NAME, "prompt": [huge, "x"], "max_tokens": 1}),
        ("/v1/chat/completions", {"model": MODEL_NAME, "max_tokens": 1,
                                  "messages": [{"role": "user", "content": huge}]}),
        ("/v1/completions", {"model": MODEL_NAME, "prompt": big, "max_tokens": 1}),
        ("/v1/completions", {"model": MODEL_NAME, "prompt": big, "max_tokens": 1}),
    ]
    threads = [threading.Thread(target=send, args=r) for r in requests]
    for t in threads:
        t.start()
    # Probe for as long as the attack lasts.
    latencies = []
    deadline = time.monotonic() + MAX_ATTACK_S
    while any(t.is_alive() for t in threads) and len(latencies) < MAX_PROBES:
        assert time.monotonic() < deadline, "the big prompts were not answered in time"
        latencies.append(probe_health(url))
    for t in threads:
        t.join(timeout=MAX_ATTACK_S)
    attacked = max(latencies, default=0.0)
    assert len(results) == len(requests)
    for status, out in results:
        assert status == 400, out
        assert out["error"]["code"] == "context_length_exceeded", out
    print(f"big prompts: {PROBES} /health requests take {attacked * 1000:.1f} ms at worst under attack "
          f"({len(latencies)} batches), {alone * 1000:.1f} ms alone: ratio {attacked / alone:.2f}")
    assert attacked / alone < MAX_SLOWDOWN, (attacked, alone)
