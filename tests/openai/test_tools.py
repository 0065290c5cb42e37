"""Tool calls through the official `openai` client: `tool_choice` "required" and named
functions (grammar-enforced: the arguments always parse and match the schema, whatever
the random weights generate), streamed tool-call deltas, "none" and "auto", tool results
through the chat template, and the 400s of malformed tools and choices.

The auto path's parsing is tested on recorded model outputs by the Rust unit tests
(serve::tool_parsers, serve::chat_output): random weights never write a call.

Every schema here is bounded (enums, integer ranges, maxLength, no extra properties), so
a constrained output always ends well within max_tokens."""

import json

import openai
import pytest

from conftest import API_KEY, MODEL_NAME, Server

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather forecast of a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "enum": ["Paris", "Tokyo", "Lima"]},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer", "minimum": 1, "maximum": 7},
            },
            "required": ["city", "unit", "days"],
            "additionalProperties": False,
        },
    },
}
SEARCH = {
    "type": "function",
    "function": {
        "name": "search",
        "description": "Searches the web.",
        "parameters": {
            "type": "object",
            "properties": {
                "query": {"type": "string", "maxLength": 12},
                "safe": {"type": "boolean"},
            },
            "required": ["query", "safe"],
            "additionalProperties": False,
        },
    },
}
TOOLS = [WEATHER, SEARCH]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
MESSAGES = [{"role": "user", "content": "What's the weather in Paris for the next 3 days?"}]
SEEDS = [0, 1, 2]
MAX_TOKENS = 200  # the fixture's context is 512 tokens and the prompt with the tools ~300


def check(value, schema, path="arguments"):
    """Asserts `value` is valid under `schema` (the subset of JSON Schema used here)."""
    kind = schema.get("type")
    if kind == "object":
        assert isinstance(value, dict), path
        assert set(schema["required"]) <= value.keys(), path
        if schema.get("additionalProperties") is False:
            assert value.keys() <= schema["properties"].keys(), path
        for key, item in value.items():
            check(item, schema["properties"][key], f"{path}.{key}")
    elif kind == "string":
        assert isinstance(value, str), path
        assert len(value) <= schema.get("maxLength", len(value)), path
    elif kind == "integer":
        assert isinstance(value, int) and not isinstance(value, bool), path
        assert schema.get("minimum", value) <= value <= schema.get("maximum", value), path
    elif kind == "boolean":
        assert isinstance(value, bool), path
    if "enum" in schema:
        assert value in schema["enum"], path


def check_calls(calls, names=None):
    assert calls, "no tool calls"
    ids = [c.id for c in calls]
    assert len(set(ids)) == len(ids)
    for call in calls:
        assert call.id.startswith("call_")
        assert call.type == "function"
        assert call.function.name in (names or SCHEMAS)
        check(json.loads(call.function.arguments), SCHEMAS[call.function.name])


def chat(client, **kwargs):
    return client.chat.completions.create(
        model=MODEL_NAME, messages=MESSAGES, tools=TOOLS, max_tokens=MAX_TOKENS, **kwargs)


def test_required_gives_one_valid_call_without_parallel_calls(client):
    for seed in SEEDS:
        out = chat(client, tool_choice="required", parallel_tool_calls=False, seed=seed, temperature=1)
        choice = out.choices[0]
        assert choice.finish_reason == "tool_calls", (seed, choice.message.content)
        assert choice.message.content is None
        assert len(choice.message.tool_calls) == 1
        check_calls(choice.message.tool_calls)


def test_required_parallel_calls_are_all_valid(client):
    made_calls = 0
    for seed in SEEDS:
        out = chat(client, tool_choice="required", seed=seed, temperature=1)
        choice = out.choices[0]
        if choice.finish_reason == "length":
            continue  # random weights may keep adding calls past max_tokens
        assert choice.finish_reason == "tool_calls", (seed, choice.message.content)
        check_calls(choice.message.tool_calls)
        made_calls += 1
    assert made_calls > 0, "every seed ran out of tokens"


def test_a_named_function_gives_its_valid_call(client):
    for name in SCHEMAS:
        for seed in SEEDS:
            out = chat(client, tool_choice={"type": "function", "function": {"name": name}},
                       seed=seed, temperature=1)
            choice = out.choices[0]
            assert choice.finish_reason == "tool_calls", (name, seed, choice.message.content)
            assert [c.function.name for c in choice.message.tool_calls] == [name]
            check_calls(choice.message.tool_calls, [name])


def streamed_calls(client, **kwargs):
    """Accumulates a stream's tool-call deltas as a client does: {index: [id, name, arguments]}."""
    calls: dict[int, list] = {}
    finish = None
    content = ""
    for chunk in chat(client, stream=True, **kwargs):
        for choice in chunk.choices:
            content += choice.delta.content or ""
            for delta in choice.delta.tool_calls or []:
                if delta.index not in calls:
                    # The first delta of a call names it.
                    assert delta.id.startswith("call_") and delta.type == "function"
                    assert delta.function.name and delta.function.arguments == ""
                    calls[delta.index] = [delta.id, delta.function.name, ""]
                else:
                    assert delta.id is None and delta.function.name is None
                calls[delta.index][2] += delta.function.arguments or ""
            if choice.finish_reason is not None:
                finish = choice.finish_reason
    return calls, finish, content


def test_streamed_tool_calls_accumulate_to_the_full_answer(client):
    for kwargs in (
        {"tool_choice": "required", "parallel_tool_calls": False},
        {"tool_choice": {"type": "function", "function": {"name": "search"}}},
    ):
        for seed in SEEDS[:2]:
            full = chat(client, seed=seed, temperature=1, **kwargs).choices[0]
            calls, finish, content = streamed_calls(client, seed=seed, temperature=1, **kwargs)
            assert finish == "tool_calls" == full.finish_reason
            assert content == ""
            assert sorted(calls) == list(range(len(calls)))
            assert [(name, json.loads(args)) for _, name, args in calls.values()] == [
                (c.function.name, json.loads(c.function.arguments)) for c in full.message.tool_calls
            ]
            for _, name, args in calls.values():
                check(json.loads(args), SCHEMAS[name])


def test_none_and_auto_reply_with_text_on_random_weights(client):
    for tool_choice in ("none", "auto", None):
        extra = {} if tool_choice is None else {"tool_choice": tool_choice}
        out = client.chat.completions.create(
            model=MODEL_NAME, messages=MESSAGES, tools=TOOLS, max_tokens=8, temperature=0,
            extra_body={"ignore_eos": True}, **extra)
        choice = out.choices[0]
        # Random weights write no `<tool_call>`: the reply is text.
        assert choice.finish_reason == "length"
        assert isinstance(choice.message.content, str) and choice.message.content
        assert not choice.message.tool_calls


def test_tool_results_go_through_the_template(client):
    call = {"id": "call_abc", "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris", "unit": "celsius", "days": 3}'}}

    def prompt_tokens(result, arguments=None):
        assistant = {"role": "assistant", "content": None,
                     "tool_calls": [dict(call, function=dict(call["function"], **(arguments or {})))]}
        messages = MESSAGES + [assistant, {"role": "tool", "tool_call_id": "call_abc", "content": result}]
        out = client.chat.completions.create(model=MODEL_NAME, messages=messages, tools=TOOLS,
                                             max_tokens=1, temperature=0)
        return out.usage.prompt_tokens

    base = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, tools=TOOLS,
                                          max_tokens=1, temperature=0).usage.prompt_tokens
    short = prompt_tokens("sunny")
    long = prompt_tokens("sunny, 21 degrees, light wind from the west")
    assert base < short < long
    # Arguments sent as an object (not OpenAI's string) render too.
    as_object = prompt_tokens("sunny", {"arguments": {"city": "Paris", "unit": "celsius", "days": 3}})
    assert as_object > base


def bad_request(client, **kwargs):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, max_tokens=4, **kwargs)
    assert e.value.status_code == 400
    return e.value.body


def test_bad_tools_and_choices_are_400s_naming_the_field(client):
    body = bad_request(client, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}})
    assert body["param"] == "tool_choice.function.name"
    assert "nope" in body["message"] and "get_weather" in body["message"]
    assert bad_request(client, tool_choice="required")["param"] == "tool_choice"
    assert bad_request(client, tools=TOOLS, tool_choice="sometimes")["param"] == "tool_choice"
    assert bad_request(client, tools=[{"type": "function", "function": {}}])["param"] == "tools[0].function.name"
    assert bad_request(client, tools=[{"type": "function"}])["param"] == "tools[0].function"
    assert bad_request(client, extra_body={"tools": {"type": "function"}})["param"] == "tools"
    bad_params = [{"type": "function", "function": {"name": "f", "parameters": [1]}}]
    assert bad_request(client, tools=bad_params)["param"] == "tools[0].function.parameters"


def test_parser_flags():
    # Without a tool-call parser an explicit "auto" is refused; the default choice is text.
    s = Server("--api-key", API_KEY, "--tool-call-parser", "none", "--reasoning-parser", "none")
    try:
        c = openai.OpenAI(base_url=f"{s.url}/v1", api_key=API_KEY, max_retries=0, timeout=60)
        assert bad_request(c, tools=TOOLS, tool_choice="auto")["param"] == "tool_choice"
        out = c.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, tools=TOOLS, max_tokens=2)
        assert isinstance(out.choices[0].message.content, str)
    finally:
        assert s.stop() == 0, s.stderr()
    # vLLM's --enable-auto-tool-choice needs a parser.
    with pytest.raises(RuntimeError, match="--enable-auto-tool-choice"):
        Server("--tool-call-parser", "none", "--enable-auto-tool-choice")
