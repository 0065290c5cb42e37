"""Reasoning replies through the official `openai` client. Qwen3's chat template writes
`<think>`, so the qwen3 reasoning parser is on by default. Random weights never think,
so these tests check the reply's shape (content a string, no reasoning_content) with
thinking on and off, streamed and not; the splitting itself is tested on recorded model
outputs, split at every point, by the Rust unit tests (serve::reasoning,
serve::chat_output)."""

from conftest import MODEL_NAME

MESSAGES = [{"role": "user", "content": "What is 2 + 2?"}]


def reasoning_of(message_or_delta):
    return getattr(message_or_delta, "reasoning_content", None)


def test_reply_shape_with_thinking_on_and_off(client):
    for extra in ({}, {"chat_template_kwargs": {"enable_thinking": False}}, {"enable_thinking": False}):
        kwargs = dict(model=MODEL_NAME, messages=MESSAGES, max_tokens=12, temperature=0,
                      extra_body={"ignore_eos": True, **extra})
        full = client.chat.completions.create(**kwargs)
        message = full.choices[0].message
        assert isinstance(message.content, str) and message.content
        assert reasoning_of(message) is None
        assert full.choices[0].finish_reason == "length"
        chunks = list(client.chat.completions.create(stream=True, **kwargs))
        deltas = [c.choices[0].delta for c in chunks if c.choices]
        assert "".join(d.content or "" for d in deltas) == message.content
        assert all(reasoning_of(d) is None for d in deltas)
