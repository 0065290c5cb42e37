"""`nanovllm serve` through the official `openai` client: completions and chat,
streamed and not, stop strings, logprobs, and every error code."""

import json

import openai
import pytest
from openai import OpenAI

from conftest import API_KEY, MODEL_NAME, Server, http, metrics

GREEDY = {"temperature": 0}
IGNORE_EOS = {"ignore_eos": True}


def test_models_lists_the_served_model(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL_NAME]


def test_greedy_completions_match_transformers(client, reference):
    for case in reference["text_cases"]:
        out = client.completions.create(
            model=MODEL_NAME,
            prompt=case["prompt"],
            max_tokens=len(case["greedy_token_ids"]),
            extra_body=IGNORE_EOS,
            **GREEDY,
        )
        assert out.choices[0].text == case["greedy_text"]
        assert out.choices[0].finish_reason == "length"
        assert out.usage.prompt_tokens == len(case["prompt_token_ids"])
        assert out.usage.completion_tokens == len(case["greedy_token_ids"])
        assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens


def test_streamed_completion_equals_the_full_one(client):
    kwargs = dict(model=MODEL_NAME, prompt="Hello, world!", max_tokens=20, n=2,
                  extra_body=IGNORE_EOS, **GREEDY)
    full = client.completions.create(**kwargs)
    stream = client.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs)
    texts = ["", ""]
    finishes = [None, None]
    usage = None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
            assert chunk.choices == []
        for choice in chunk.choices:
            texts[choice.index] += choice.text
            if choice.finish_reason is not None:
                finishes[choice.index] = choice.finish_reason
    assert texts == [c.text for c in full.choices]
    assert texts[0] == texts[1]  # greedy: both choices agree
    assert finishes == ["length", "length"]
    assert usage == full.usage


def test_streamed_chat_equals_the_full_one(client):
    messages = [{"role": "system", "content": "You are terse."},
                {"role": "user", "content": "Name three colours."}]
    kwargs = dict(model=MODEL_NAME, messages=messages, max_completion_tokens=16,
                  extra_body=IGNORE_EOS, **GREEDY)
    full = client.chat.completions.create(**kwargs)
    assert full.choices[0].message.role == "assistant"
    assert full.choices[0].finish_reason == "length"
    assert full.usage.completion_tokens == 16
    stream = client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs)
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[-1].usage == full.usage


def test_chat_template_kwargs_reach_the_template(client):
    messages = [{"role": "user", "content": "Hi"}]
    thinking = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=1, **GREEDY)
    no_thinking = client.chat.completions.create(
        model=MODEL_NAME, messages=messages, max_tokens=1,
        extra_body={"chat_template_kwargs": {"enable_thinking": False}}, **GREEDY)
    # "<think>\n\n</think>\n\n" is 4 more tokens in Qwen3's vocabulary.
    assert no_thinking.usage.prompt_tokens == thinking.usage.prompt_tokens + 4


def test_stop_strings_across_token_boundaries(client):
    # The per-token texts (logprobs) show where the token boundaries are.
    kwargs = dict(model=MODEL_NAME, prompt="The quick brown fox jumps over the lazy dog.",
                  max_tokens=12, extra_body=IGNORE_EOS, **GREEDY)
    full = client.completions.create(logprobs=0, **kwargs)
    text = full.choices[0].text
    tokens = full.choices[0].logprobs.tokens
    found = 0
    offset = 0
    for k in range(len(tokens) - 1):
        offset += len(tokens[k])
        left, right = tokens[k], tokens[k + 1]
        if len(left) < 2 or len(right) < 2:
            continue
        stop = left[-2:] + right[:2]
        # Skip boundaries inside a character split over byte tokens (their
        # pieces decode to U+FFFD), and stop strings that occur earlier.
        if "\ufffd" in stop or text.find(stop) != offset - 2:
            continue
        for stream in (False, True):
            out = client.completions.create(stop=["never-generated", stop], stream=stream, **kwargs)
            if stream:
                chunks = list(out)
                got = "".join(c.choices[0].text for c in chunks if c.choices)
                finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
            else:
                got, finish = out.choices[0].text, out.choices[0].finish_reason
            assert got == text[: offset - 2], (stop, stream)
            assert finish == "stop"
        found += 1
    assert found >= 2, f"too few token boundaries to test in {tokens}"


def test_logprobs(client):
    out = client.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "Hi"}], max_tokens=5,
        logprobs=True, top_logprobs=3, extra_body=IGNORE_EOS, **GREEDY)
    content = out.choices[0].logprobs.content
    assert len(content) == 5
    for entry in content:
        assert len(entry.top_logprobs) == 3
        assert entry.top_logprobs[0].logprob == entry.logprob  # greedy
        assert entry.logprob <= 0


def test_400_bad_requests(client, server):
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL_NAME, prompt="x", temperature=5)
    assert e.value.status_code == 400
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL_NAME, prompt="x", extra_body={"bogus_field": 1})
    assert e.value.body["param"] == "bogus_field"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL_NAME, prompt="hello " * 600, max_tokens=1)
    assert e.value.body["code"] == "context_length_exceeded"
    # Malformed JSON, sent by hand (the client always sends valid JSON).
    status, body = http("POST", f"{server.url}/v1/completions", b'{"prompt": ',
                        {"Authorization": f"Bearer {API_KEY}"})
    assert status == 400
    assert json.loads(body)["error"]["type"] == "invalid_request_error"


def test_401_without_the_right_key(server):
    wrong = OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        wrong.completions.create(model=MODEL_NAME, prompt="x", max_tokens=1)
    assert e.value.status_code == 401
    assert e.value.body["code"] == "invalid_api_key"


def test_404_unknown_model_and_route(client, server):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "x"}])
    assert e.value.body["code"] == "model_not_found"
    status, body = http("GET", f"{server.url}/v1/nothing-here", None,
                        {"Authorization": f"Bearer {API_KEY}"})
    assert status == 404
    assert "error" in json.loads(body)


def test_413_body_too_large(client):
    with pytest.raises(openai.APIStatusError) as e:
        client.completions.create(model=MODEL_NAME, prompt="x" * 100_000, max_tokens=1)
    assert e.value.status_code == 413
    assert e.value.body["code"] == "request_too_large"


def test_503_when_the_waiting_queue_is_full():
    s = Server("--max-num-seqs", "1", "--max-waiting-requests", "1", "--num-kvcache-blocks", "64")
    try:
        c = OpenAI(base_url=f"{s.url}/v1", api_key="none", max_retries=0, timeout=60)
        long = dict(model=MODEL_NAME, prompt="a b c", max_tokens=400, stream=True,
                    extra_body=IGNORE_EOS, **GREEDY)
        running = c.completions.create(**long)
        next(iter(running))  # a first token: it runs
        waiting = c.completions.create(**long)  # accepted: it waits for the slot
        with pytest.raises(openai.InternalServerError) as e:
            c.completions.create(model=MODEL_NAME, prompt="x", max_tokens=1)
        assert e.value.status_code == 503
        assert e.value.body["code"] == "server_overloaded"
        running.close()
        waiting.close()
    finally:
        assert s.stop() == 0, s.stderr()


def test_ctrl_c_drains_the_requests_in_flight():
    s = Server("--num-kvcache-blocks", "64")
    try:
        c = OpenAI(base_url=f"{s.url}/v1", api_key="none", max_retries=0, timeout=60)
        stream = c.completions.create(model=MODEL_NAME, prompt="Count:", max_tokens=60, stream=True,
                                      extra_body=IGNORE_EOS, **GREEDY)
        it = iter(stream)
        next(it)
        s.interrupt()
        rest = list(it)
        finishes = [ch.choices[0].finish_reason for ch in rest if ch.choices]
        assert finishes[-1] == "length", "the request in flight ran to its end"
        assert s.process.wait(timeout=30) == 0, s.stderr()
    finally:
        s.kill()


def test_metrics_after_the_requests(server):
    m = metrics(server.url)
    assert m['nanovllm_http_requests_total{status="200"}'] > 0
    assert m["nanovllm_generation_tokens_total"] > 0
    assert m["nanovllm_time_to_first_token_seconds_count"] > 0
