"""A bounded load test: 120 concurrent streaming clients through AsyncOpenAI,
a quarter of which hang up mid-stream. Every client that stays gets exactly
the greedy text; afterwards no sequence runs or waits, every KV block is free
(/metrics), and the server still answers."""

import asyncio
import time

import openai

from conftest import API_KEY, MODEL_NAME, http_limits, metrics

NUM_CLIENTS = 120
MAX_TOKENS = 24
# Clients that hang up ask for far more tokens than they wait for, so their sequences are
# still generating when the disconnect reaches the server (and must end as aborts).
HANG_UP_MAX_TOKENS = 400
PROMPTS = [f"Story number {i}:" for i in range(8)]
TIME_LIMIT_S = 240


async def run_load(url: str) -> None:
    # The client pools 100 connections by default: allow every client its own.
    http = openai.DefaultAsyncHttpxClient(limits=http_limits(NUM_CLIENTS + 8))
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=API_KEY, max_retries=0, timeout=120,
                                http_client=http)
    common = dict(model=MODEL_NAME, max_tokens=MAX_TOKENS, temperature=0, extra_body={"ignore_eos": True})

    # The expected text of each prompt, one at a time.
    expected = {}
    for prompt in PROMPTS:
        out = await client.completions.create(prompt=prompt, **common)
        expected[prompt] = out.choices[0].text

    async def one(i: int) -> str:
        prompt = PROMPTS[i % len(PROMPTS)]
        hang_up = i % 4 == 0
        params = dict(common, max_tokens=HANG_UP_MAX_TOKENS) if hang_up else common
        stream = await client.completions.create(prompt=prompt, stream=True, **params)
        text, chunks, finish = "", 0, None
        async for chunk in stream:
            chunks += 1
            if chunk.choices:
                text += chunk.choices[0].text
                finish = chunk.choices[0].finish_reason or finish
            if hang_up and chunks == 3:
                await stream.close()
                return "cancelled"
        assert finish == "length", (i, finish)
        assert text == expected[prompt], (i, text, expected[prompt])
        return "completed"

    # Watches how many sequences the server holds at once while the clients run.
    peak = 0
    running = True

    async def watch() -> None:
        nonlocal peak
        while running:
            m = await asyncio.to_thread(metrics, url)
            peak = max(peak, m["nanovllm_num_requests_running"] + m["nanovllm_num_requests_waiting"])
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    results = await asyncio.wait_for(
        asyncio.gather(*(one(i) for i in range(NUM_CLIENTS))), timeout=TIME_LIMIT_S
    )
    running = False
    await watcher
    assert peak >= 100, f"only {peak} sequences were in the server at once"
    assert results.count("cancelled") == NUM_CLIENTS // 4
    assert results.count("completed") == NUM_CLIENTS - NUM_CLIENTS // 4

    # The cancelled sequences are aborted: soon nothing runs and every block is free.
    deadline = time.monotonic() + 15
    while True:
        m = metrics(url)
        idle = (m["nanovllm_num_requests_running"] == 0
                and m["nanovllm_num_requests_waiting"] == 0
                and m["nanovllm_kv_cache_blocks_free"] == m["nanovllm_kv_cache_blocks_total"])
        if idle:
            break
        assert time.monotonic() < deadline, f"not idle 15 s after the load: {m}"
        await asyncio.sleep(0.1)
    assert m['nanovllm_request_finished_total{finish_reason="abort"}'] >= NUM_CLIENTS // 4

    # And it still answers.
    out = await client.completions.create(prompt=PROMPTS[0], **common)
    assert out.choices[0].text == expected[PROMPTS[0]]
    await client.close()


def test_many_concurrent_streams_some_hanging_up(server):
    asyncio.run(run_load(server.url))
