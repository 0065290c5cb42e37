"""Stop strings: their count and size are capped, and the most a request may
send does not slow another client's stream (they are matched in the request's
own task, not on the engine thread)."""

import threading
import time

from reliability_helpers import MODEL_NAME, metrics, post_json, timed, wait_until

MAX_STOP_STRINGS = 1024
MAX_STOP_BYTES = 64 << 10
ATTACKERS = 4
CHOICES = 3  # per attacker: 12 attacking sequences beside the victim
VICTIM_TOKENS = 100
# Matching off the engine thread costs the victim nothing measurable (ratios of 0.93 to
# 1.19 measured); matching on the engine thread (before the fix) made it 1.45
# and 1.65 times slower here (debug build, 2 busy cores). Each time is the best of RUNS.
MAX_SLOWDOWN = 1.4
RUNS = 3


def test_too_many_stop_strings_are_refused(shared_server):
    status, out = post_json(shared_server.url, "/v1/completions", {
        "model": MODEL_NAME, "prompt": "Hi", "max_tokens": 4,
        "stop": [f"s{i}" for i in range(150_000)]})
    assert status == 400, out
    assert out["error"]["param"] == "stop", out
    assert "1024" in out["error"]["message"], out
    status, out = post_json(shared_server.url, "/v1/completions", {
        "model": MODEL_NAME, "prompt": "Hi", "max_tokens": 4, "stop": ["x" * (MAX_STOP_BYTES + 1)]})
    assert status == 400, out
    assert out["error"]["param"] == "stop", out


def victim(url: str) -> None:
    status, out = post_json(url, "/v1/completions", {
        "model": MODEL_NAME, "prompt": "The victim says", "max_tokens": VICTIM_TOKENS,
        "temperature": 0, "ignore_eos": True})
    assert status == 200, out
    assert out["usage"]["completion_tokens"] == VICTIM_TOKENS


def victim_time_beside(url: str, stop: list[str] | None) -> float:
    """The victim's time while ATTACKERS long requests (with `stop`) generate beside it."""
    # Idle first (the previous run's sequences are gone), so the attackers are all that runs.
    wait_until(lambda: metrics(url)["nanovllm_num_requests_running"] == 0,
               timeout_s=30, what="the server to be idle")
    results = []

    def attack(i: int) -> None:
        # Long enough that all of them are still running when the last one is admitted,
        # even on a busy machine where their tokenizing is serialised (one CPU-pool permit
        # on 2 cores).
        body = {"model": MODEL_NAME, "prompt": f"Attacker {i} writes", "max_tokens": 400,
                "n": CHOICES, "temperature": 0, "ignore_eos": True}
        if stop is not None:
            body["stop"] = stop
        results.append(post_json(url, "/v1/completions", body))

    threads = [threading.Thread(target=attack, args=(i,)) for i in range(ATTACKERS)]
    for t in threads:
        t.start()
    wait_until(lambda: metrics(url)["nanovllm_num_requests_running"] >= ATTACKERS * CHOICES,
               timeout_s=60, what="the attackers to run")
    elapsed = timed(lambda: victim(url))
    for t in threads:
        t.join(timeout=120)
    assert len(results) == ATTACKERS
    for status, out in results:
        assert status == 200, out
        assert [c["finish_reason"] for c in out["choices"]] == ["length"] * CHOICES, out
    return elapsed


def test_the_most_stop_strings_allowed_do_not_slow_another_stream(shared_server):
    url = shared_server.url
    # 1024 strings of 64 bytes: exactly the limits. They never occur in the text, but
    # each starts with a character that does, so partial matches keep being checked.
    stops = [f" never {i:057d}" for i in range(MAX_STOP_STRINGS)]
    assert sum(len(s.encode()) for s in stops) == MAX_STOP_BYTES
    victim(url)  # warm up
    control = min(victim_time_beside(url, None) for _ in range(RUNS))
    attacked = min(victim_time_beside(url, stops) for _ in range(RUNS))
    print(f"stop strings: victim {attacked:.3f} s beside them, {control:.3f} s without: ratio {attacked / control:.2f}")
    assert attacked / control < MAX_SLOWDOWN, (attacked, control)


def test_a_stop_string_ends_the_sequence_and_frees_its_blocks(shared_server):
    url = shared_server.url
    before = metrics(url)
    # Greedy text of the prompt, then a stop string from inside it.
    status, out = post_json(url, "/v1/completions", {
        "model": MODEL_NAME, "prompt": "Once upon a time", "max_tokens": 40,
        "temperature": 0, "ignore_eos": True})
    assert status == 200, out
    text = out["choices"][0]["text"]
    stop = text[10:14]
    cut = text.find(stop)
    status, out = post_json(url, "/v1/completions", {
        "model": MODEL_NAME, "prompt": "Once upon a time", "max_tokens": 400,
        "temperature": 0, "ignore_eos": True, "stop": ["never-generated", stop]})
    assert status == 200, out
    assert out["choices"][0]["text"] == text[:cut]
    assert out["choices"][0]["finish_reason"] == "stop"
    # The engine drops the sequence when told the stop string was found, just after the answer.
    key = 'nanovllm_request_finished_total{finish_reason="stop"}'
    wait_until(lambda: metrics(url)[key] - before[key] == 1, timeout_s=10,
               what="the stopped sequence to be counted as stopped")
    after = metrics(url)
    # It was stopped, not generated to its 400 tokens.
    generated = after["nanovllm_generation_tokens_total"] - before["nanovllm_generation_tokens_total"]
    assert generated < 40 + 100, generated
    deadline = time.monotonic() + 10
    while metrics(url)["nanovllm_kv_cache_blocks_free"] != metrics(url)["nanovllm_kv_cache_blocks_total"]:
        assert time.monotonic() < deadline, "the stopped sequence's blocks were not freed"
        time.sleep(0.02)
