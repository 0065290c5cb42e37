"""Request fields and endpoints beyond the basics, through the official `openai`
client: ignored OpenAI fields, best_of, penalties, logit_bias, echo with logprobs,
structured output (response_format, structured_outputs, guided_*), /tokenize,
/detokenize and /version.

The model has random weights: tests on generated text hold for any output
(bounded schemas, several seeds, max_tokens large enough for the bounded grammar)."""

import json
import re

import openai
import pytest

from conftest import API_KEY, MODEL_NAME, http, post_json

GREEDY = {"temperature": 0}
IGNORE_EOS = {"ignore_eos": True}
# Chat replies that must be all content: no thinking for a reasoning parser to split off.
NO_THINKING = {"chat_template_kwargs": {"enable_thinking": False}}
PROMPT = "The quick brown fox"


def tokenize(server, **body) -> dict:
    status, out = post_json(server, "/tokenize", {"model": MODEL_NAME, **body})
    assert status == 200, out
    return out


# ---- accepted fields ----

def test_openai_fields_that_mean_nothing_here_are_accepted(client):
    out = client.completions.create(
        model=MODEL_NAME, prompt=PROMPT, max_tokens=2, user="u-1",
        extra_body={"store": False, "metadata": {"k": "v"}, "service_tier": "auto",
                    "response_format": {"type": "text"}, "guided_decoding_backend": "guidance"})
    assert out.usage.completion_tokens <= 2
    out = client.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "Hi"}], max_tokens=2,
        store=True, metadata={"k": "v"}, service_tier="auto", user="u-1",
        parallel_tool_calls=False, response_format={"type": "text"})
    assert out.choices[0].message.role == "assistant"


def test_best_of_equal_to_n_is_accepted(client):
    out = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=2, best_of=1)
    assert len(out.choices) == 1
    out = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=2, n=2, best_of=2)
    assert len(out.choices) == 2
    out = client.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "Hi"}], max_tokens=2,
        extra_body={"best_of": 1})
    assert len(out.choices) == 1
    for kwargs in [dict(best_of=2), dict(n=2, best_of=3)]:
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=2, **kwargs)
        assert e.value.body["param"] == "best_of"
        assert "best_of must equal n" in e.value.body["message"]


def test_unknown_fields_still_list_the_accepted_ones(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "x"}],
                                       extra_body={"frequency_penalti": 1})
    assert e.value.body["param"] == "frequency_penalti"
    for field in ["frequency_penalty", "logit_bias", "response_format", "parallel_tool_calls", "store"]:
        assert field in e.value.body["message"]


# ---- penalties and logit_bias ----

def repeats(tokens: list[str]) -> int:
    """Tokens that already occurred earlier in the output."""
    return len(tokens) - len(set(tokens))


@pytest.mark.parametrize("penalty", [{"frequency_penalty": 2.0}, {"presence_penalty": 2.0},
                                     {"repetition_penalty": 2.0}])
def test_penalties_reduce_repeats(client, penalty):
    def output_tokens(penalty: dict) -> list[str]:
        out = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=48, logprobs=0,
                                        extra_body={**IGNORE_EOS, **penalty}, **GREEDY)
        return out.choices[0].logprobs.tokens

    plain = repeats(output_tokens({}))
    # The random model loops under greedy decoding: there are repeats to remove.
    assert plain >= 16, plain
    penalised = repeats(output_tokens(penalty))
    assert penalised < plain / 2, (penalty, plain, penalised)


def test_logit_bias_forces_and_bans_tokens(client, server):
    [hello] = tokenize(server, prompt=" hello")["tokens"]
    out = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=5,
                                    logit_bias={str(hello): 100}, extra_body=IGNORE_EOS, **GREEDY)
    assert out.choices[0].text == " hello" * 5
    out = client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "Hi"}],
                                         max_tokens=3, logit_bias={str(hello): 100},
                                         extra_body={**IGNORE_EOS, **NO_THINKING}, **GREEDY)
    assert out.choices[0].message.content == " hello" * 3
    # Banning the greedy first token changes it.
    plain = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=1, logprobs=0,
                                      extra_body=IGNORE_EOS, **GREEDY)
    first = plain.choices[0].logprobs.tokens[0]
    [first_id] = tokenize(server, prompt=first)["tokens"]
    banned = client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=1,
                                       logit_bias={str(first_id): -100}, extra_body=IGNORE_EOS, **GREEDY)
    assert banned.choices[0].text != plain.choices[0].text


def test_bad_penalties_and_biases_are_400(client):
    for kwargs, param in [
        (dict(frequency_penalty=2.5), "frequency_penalty"),
        (dict(presence_penalty=-3), "presence_penalty"),
        (dict(extra_body={"repetition_penalty": 0}), "repetition_penalty"),
        (dict(logit_bias={"not-a-token": 1}), "logit_bias"),
        (dict(logit_bias={"999999999": 1}), "logit_bias"),
        (dict(logit_bias={"5": 101}), "logit_bias"),
    ]:
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=1, **kwargs)
        assert e.value.body["param"] == param, (kwargs, e.value.body)


# ---- echo ----

def test_echo_prepends_the_prompt(client, server):
    out = client.completions.create(model=MODEL_NAME, prompt=[PROMPT, "Hello"], max_tokens=3, echo=True,
                                    n=2, extra_body=IGNORE_EOS, **GREEDY)
    plain = client.completions.create(model=MODEL_NAME, prompt=[PROMPT, "Hello"], max_tokens=3,
                                      n=2, extra_body=IGNORE_EOS, **GREEDY)
    for echoed, generated, prompt in zip(out.choices, plain.choices, [PROMPT, PROMPT, "Hello", "Hello"]):
        assert echoed.text == prompt + generated.text
    # A token-id prompt echoes its text.
    ids = tokenize(server, prompt=PROMPT)["tokens"]
    out = client.completions.create(model=MODEL_NAME, prompt=ids, max_tokens=2, echo=True, **GREEDY)
    assert out.choices[0].text.startswith(PROMPT)
    # Streamed: the first chunk is the prompt, and the whole equals the full answer.
    chunks = list(client.completions.create(model=MODEL_NAME, prompt=PROMPT, max_tokens=3, echo=True,
                                            stream=True, extra_body=IGNORE_EOS, **GREEDY))
    assert chunks[0].choices[0].text == PROMPT
    assert "".join(c.choices[0].text for c in chunks if c.choices) == PROMPT + plain.choices[0].text


def test_echo_with_logprobs_scores_the_prompt(client, server):
    """The prompt tokens' entries come first (the first with null logprobs), and each
    equals what generating that position from the tokens before it gives."""
    ids = tokenize(server, prompt=PROMPT + " jumps over")["tokens"]
    k = 3
    out = client.completions.create(model=MODEL_NAME, prompt=ids, max_tokens=2, echo=True, logprobs=k,
                                    extra_body=IGNORE_EOS, **GREEDY)
    lp = out.choices[0].logprobs
    n = len(ids)
    assert len(lp.tokens) == n + 2
    assert "".join(lp.tokens[:n]) == PROMPT + " jumps over"
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert lp.text_offset[0] == 0
    for i in range(1, n + 2):
        assert lp.token_logprobs[i] <= 0
        assert lp.top_logprobs[i][lp.tokens[i]] == lp.token_logprobs[i]
    for i in range(1, n):
        step = client.completions.create(model=MODEL_NAME, prompt=ids[:i], max_tokens=1, logprobs=k,
                                         extra_body=IGNORE_EOS, **GREEDY)
        # The greedy step's top k are the same alternatives at the same position; the echo
        # entry also holds the prompt's own token.
        for token, logprob in step.choices[0].logprobs.top_logprobs[0].items():
            assert token in lp.top_logprobs[i], (i, token)
            assert abs(lp.top_logprobs[i][token] - logprob) < 1e-3, (i, token)
    # Streamed: the same entries, the prompt's first.
    chunks = list(client.completions.create(model=MODEL_NAME, prompt=ids, max_tokens=2, echo=True,
                                            logprobs=k, stream=True, extra_body=IGNORE_EOS, **GREEDY))
    first = chunks[0].choices[0].logprobs
    assert first.tokens == lp.tokens[:n]
    assert first.token_logprobs[0] is None
    streamed = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    assert streamed == lp.tokens


# ---- structured output ----

PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 8},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "member": {"type": "boolean"},
        "colour": {"enum": ["red", "green", "blue"]},
    },
    "required": ["name", "age", "member", "colour"],
    "additionalProperties": False,
}


def check_person(text: str) -> None:
    """`text` is a JSON document valid under PERSON (checked by hand: no jsonschema here)."""
    value = json.loads(text)
    assert isinstance(value, dict), text
    assert set(value) == {"name", "age", "member", "colour"}, text
    assert isinstance(value["name"], str) and len(value["name"]) <= 8, text
    assert isinstance(value["age"], int) and not isinstance(value["age"], bool), text
    assert 0 <= value["age"] <= 150, text
    assert isinstance(value["member"], bool), text
    assert value["colour"] in ["red", "green", "blue"], text


SCHEMA_FORMAT = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}


@pytest.mark.parametrize("seed", range(4))
def test_json_schema_outputs_parse_and_validate(client, seed):
    out = client.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "A person, as JSON."}],
        max_tokens=300, temperature=1.0, seed=seed, response_format=SCHEMA_FORMAT, extra_body=NO_THINKING)
    check_person(out.choices[0].message.content)
    assert out.choices[0].finish_reason == "stop"
    out = client.completions.create(model=MODEL_NAME, prompt="Person:", max_tokens=300, temperature=1.0,
                                    seed=seed, extra_body={"structured_outputs": {"json": PERSON}})
    check_person(out.choices[0].text)
    assert out.choices[0].finish_reason == "stop"


def test_json_schema_streamed(client):
    stream = client.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "A person."}], max_tokens=300,
        temperature=1.0, seed=11, stream=True, extra_body={"guided_json": PERSON, **NO_THINKING})
    check_person("".join(c.choices[0].delta.content or "" for c in stream if c.choices))


@pytest.mark.parametrize("seed", range(3))
def test_regex_choice_grammar_and_json_object(client, seed):
    def complete(**constraint):
        out = client.completions.create(model=MODEL_NAME, prompt="Answer:", max_tokens=64,
                                        temperature=1.0, seed=seed, extra_body=constraint)
        return out.choices[0]

    choice = complete(guided_choice=["yes", "no", "maybe"])
    assert choice.text in ["yes", "no", "maybe"] and choice.finish_reason == "stop"
    choice = complete(structured_outputs={"choice": ["left", "right"]})
    assert choice.text in ["left", "right"]
    choice = complete(guided_regex=r"[a-z]{1,5}-[0-9]{2}")
    assert re.fullmatch(r"[a-z]{1,5}-[0-9]{2}", choice.text), choice.text
    choice = complete(structured_outputs={"regex": r"(cat|dog) [0-9]"})
    assert re.fullmatch(r"(cat|dog) [0-9]", choice.text), choice.text
    choice = complete(guided_grammar='start: "a" ("b" | "c") "d"')
    assert choice.text in ["abd", "acd"], choice.text
    choice = complete(response_format={"type": "json_object"})
    assert choice.text.lstrip().startswith("{"), choice.text
    if choice.finish_reason == "stop":
        assert isinstance(json.loads(choice.text), dict)


def test_bad_constraints_are_400(client):
    bad = [
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/$defs/missing"}}}},
        {"guided_regex": "a("},
        {"structured_outputs": {"grammar": "start: ("}},
    ]
    for body in bad:
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model=MODEL_NAME, prompt="x", max_tokens=4, extra_body=body)
        assert e.value.status_code == 400
        assert e.value.body["message"], body
    # Shapes are checked before the engine sees them, naming the field.
    for body, param in [
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"response_format": {"type": "json_object"}, "guided_regex": "a"}, "guided_regex"),
        ({"structured_outputs": {"regex": "a", "choice": ["b"]}}, "structured_outputs"),
        ({"guided_whitespace_pattern": " "}, "guided_whitespace_pattern"),
    ]:
        with pytest.raises(openai.BadRequestError) as e:
            client.completions.create(model=MODEL_NAME, prompt="x", max_tokens=4, extra_body=body)
        assert e.value.body["param"] == param, (body, e.value.body)


# ---- /tokenize, /detokenize, /version ----

def test_tokenize_round_trip(client, server):
    text = "Hello, world! Ünïcödé and 数字 123."
    out = tokenize(server, prompt=text)
    assert out["count"] == len(out["tokens"]) > 0
    assert out["max_model_len"] == 512
    assert out["token_strs"] is None
    status, back = post_json(server, "/detokenize", {"model": MODEL_NAME, "tokens": out["tokens"]})
    assert status == 200 and back == {"prompt": text}
    # The count is the prompt_tokens of a completion of the same prompt.
    completion = client.completions.create(model=MODEL_NAME, prompt=text, max_tokens=1)
    assert completion.usage.prompt_tokens == out["count"]
    strs = tokenize(server, prompt=text, return_token_strs=True, add_special_tokens=False)["token_strs"]
    assert len(strs) == out["count"]


def test_tokenize_chat_messages(client, server):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    out = tokenize(server, messages=messages, chat_template_kwargs={"enable_thinking": False})
    chat = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=1,
                                          extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert out["count"] == chat.usage.prompt_tokens == len(out["tokens"])
    status, back = post_json(server, "/detokenize", {"tokens": out["tokens"]})
    assert status == 200
    assert back["prompt"].startswith("<|im_start|>system\nBe brief.<|im_end|>")
    without_prompt = tokenize(server, messages=messages, add_generation_prompt=False)
    assert without_prompt["count"] < tokenize(server, messages=messages)["count"]


def test_tokenize_errors(server):
    for body, param in [
        ({"prompt": "x", "bogus": 1}, "bogus"),
        ({"prompt": "x", "messages": []}, "messages"),
        ({"prompt": "x", "add_generation_prompt": True}, "add_generation_prompt"),
        ({"prompt": 5}, "prompt"),
    ]:
        status, out = post_json(server, "/tokenize", body)
        assert status == 400 and out["error"]["param"] == param, (body, out)
    status, out = post_json(server, "/tokenize", {})
    assert status == 400 and "missing" in out["error"]["message"]
    status, out = post_json(server, "/detokenize", {"tokens": [999999999]})
    assert status == 400 and out["error"]["param"] == "tokens"
    status, out = post_json(server, "/tokenize", {"model": "other", "prompt": "x"})
    assert status == 404
    status, out = post_json(server, "/tokenize", {"prompt": "x"}, api_key=None)
    assert status == 401
    status, out = post_json(server, "/detokenize", {"tokens": [1]}, api_key="wrong")
    assert status == 401
    status, _ = http("POST", f"{server.url}/tokenize", b"x" * 70_000,
                     {"Authorization": f"Bearer {API_KEY}"})
    assert status == 413


def test_version(server):
    status, text = http("GET", f"{server.url}/version")
    assert status == 200
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", json.loads(text)["version"])
