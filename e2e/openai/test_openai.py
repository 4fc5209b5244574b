"""The official openai Python SDK against a real `rbee serve` (see run.sh)."""
import asyncio
import json
import os
import re
import time
import typing
import urllib.request

import openai
import pydantic
import pytest

BASE = os.environ["RBEE_BASE_URL"]
MODEL = os.environ["RBEE_MODEL"]
# rbee accepts any key on loopback; the SDK insists on one.
client = openai.OpenAI(base_url=BASE, api_key="sk-anything", max_retries=0, timeout=120)


def metric(sample):
    with urllib.request.urlopen(BASE.removesuffix("/v1") + "/metrics") as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.split()[-1])
    return None


def test_list_models_shows_the_fixture():
    ids = [m.id for m in client.models.list()]
    assert MODEL in ids
    assert client.models.retrieve(MODEL).id == MODEL


def test_chat_answers_with_usage():
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8)
    assert r.object == "chat.completion"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens > 0


def test_stream_with_usage():
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "system", "content": "You are brief."}, {"role": "user", "content": "Name a colour."}],
            max_tokens=10,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert len({c.id for c in chunks}) == 1 and len({c.created for c in chunks}) == 1
    *body, last = chunks
    assert last.choices == [] and last.usage.completion_tokens > 0
    assert all(c.usage is None for c in body)
    assert [c.choices[0].finish_reason for c in body if c.choices[0].finish_reason] in (["stop"], ["length"])
    text = "".join(c.choices[0].delta.content or "" for c in body)
    assert text


def test_stop_string_ends_the_text_unsent():
    r = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=10, temperature=0, stop=["capital"])
    assert r.choices[0].text == " the "
    assert r.choices[0].finish_reason == "stop"


def test_same_seed_same_text():
    def once(seed):
        r = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Write a word."}], max_tokens=12, temperature=1.0, seed=seed
        )
        return r.choices[0].message.content

    assert once(42) == once(42)


def test_max_tokens_ends_with_length():
    r = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Tell me a long story."}], max_completion_tokens=5
    )
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 5


def test_error_classes():
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert e.value.code == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], temperature=5)
    assert e.value.param == "temperature"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=MODEL, messages=[])
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "x"}], n=17)
    assert e.value.param == "n"
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model=MODEL, prompt="bee " * 9000, max_tokens=1)
    assert e.value.code == "context_length_exceeded"
    assert re.search(r"\d+ tokens.*holds 8192", e.value.message)


def test_four_concurrent_streams():
    aclient = openai.AsyncOpenAI(base_url=BASE, api_key="sk-anything", max_retries=0, timeout=120)

    async def one(i):
        stream = await aclient.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"Count to {i + 3}."}],
            max_tokens=8,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = [c async for c in stream]
        return chunks[-1].usage.completion_tokens

    async def all_four():
        try:
            return await asyncio.gather(*(one(i) for i in range(4)))
        finally:
            await aclient.close()

    assert asyncio.run(all_four()) == [8, 8, 8, 8]


def test_disconnect_mid_stream_frees_the_slot():
    cancelled = metric('rbee_generations_total{reason="cancelled"}') or 0
    stream = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Write a very long story."}], max_tokens=4000, stream=True
    )
    it = iter(stream)
    next(it), next(it), next(it)
    assert metric(f'rbee_slots_busy{{model="{MODEL}"}}') >= 1
    stream.close()
    deadline = time.time() + 30
    while metric(f'rbee_slots_busy{{model="{MODEL}"}}') != 0:
        assert time.time() < deadline, "the slot stayed busy after the client left"
        time.sleep(0.02)
    while metric('rbee_generations_total{reason="cancelled"}') != cancelled + 1:
        assert time.time() < deadline
        time.sleep(0.02)


CHAT_MODEL = os.environ["RBEE_CHAT_MODEL"]


class City(pydantic.BaseModel):
    name: str
    country: str
    population_millions: int


def test_structured_output_parses_into_a_pydantic_model():
    # The SDK sends the model's JSON schema with strict: true and parses the
    # answer with pydantic; rbee holds the answer to the schema.
    r = client.chat.completions.parse(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "Give the name, country and population in millions of Paris."}],
        response_format=City,
        max_tokens=120,
        temperature=0,
    )
    city = r.choices[0].message.parsed
    assert isinstance(city, City), r.choices[0].message.content
    assert city.name and city.country
    assert r.choices[0].finish_reason == "stop"


def test_json_object_mode_streams_valid_json():
    stream = client.chat.completions.create(
        model=CHAT_MODEL,
        messages=[{"role": "user", "content": "Reply with a JSON object describing a cat."}],
        response_format={"type": "json_object"},
        max_tokens=150,
        temperature=0,
        stream=True,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    if finish == ["stop"]:
        assert isinstance(json.loads(text), dict), text
    else:
        assert finish == ["length"] and text.lstrip().startswith("{"), (finish, text)


def test_a_schema_that_cannot_be_enforced_under_strict_is_a_400():
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=CHAT_MODEL,
            messages=[{"role": "user", "content": "x"}],
            response_format={"type": "json_schema", "json_schema": {"name": "s", "strict": True, "schema": {"type": "array", "uniqueItems": True}}},
        )
    assert e.value.body["param"] == "response_format" and "uniqueItems" in e.value.body["message"]


TOOL_MODEL = os.environ["RBEE_TOOL_MODEL"]


class GetWeather(pydantic.BaseModel):
    """The current weather in a city."""

    city: str
    unit: typing.Literal["celsius", "fahrenheit"]


class Add(pydantic.BaseModel):
    """Adds two numbers."""

    a: float
    b: float


TOOLS = [openai.pydantic_function_tool(GetWeather), openai.pydantic_function_tool(Add)]
WEATHER = [{"role": "user", "content": "What is the weather like in Paris and in Berlin today?"}]


def test_tool_calls_parse_into_their_pydantic_models():
    # pydantic_function_tool marks the tools strict; parse() validates each
    # call's arguments against its model.
    r = client.chat.completions.parse(model=TOOL_MODEL, messages=WEATHER, tools=TOOLS, tool_choice="required", temperature=0, max_tokens=150)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.tool_calls
    for call in choice.message.tool_calls:
        assert isinstance(call.function.parsed_arguments, {"GetWeather": GetWeather, "Add": Add}[call.function.name])
    assert {c.function.parsed_arguments.city for c in choice.message.tool_calls if c.function.name == "GetWeather"} >= {"Paris"}


def test_streamed_tool_calls_assemble_in_the_sdk_as_the_whole_answer():
    kwargs = dict(model=TOOL_MODEL, messages=WEATHER, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "GetWeather"}}, temperature=0, max_tokens=150)
    whole = client.chat.completions.parse(**kwargs).choices[0].message
    with client.chat.completions.stream(**kwargs) as s:
        for _ in s:
            pass
        streamed = s.get_final_completion().choices[0].message
    assert [(c.function.name, json.loads(c.function.arguments)) for c in streamed.tool_calls] == [
        (c.function.name, json.loads(c.function.arguments)) for c in whole.tool_calls
    ]
    assert len(whole.tool_calls) == 1 and whole.tool_calls[0].function.parsed_arguments.city == "Paris"


def test_a_tool_the_request_does_not_offer_is_a_400():
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=TOOL_MODEL, messages=WEATHER, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "fly"}})
    assert e.value.body["param"] == "tool_choice"


EMBED_MODEL = os.environ["RBEE_EMBED_MODEL"]


def test_embeddings_come_back_as_unit_vectors_in_input_order():
    # The SDK asks for base64 and decodes it; floats are the same numbers.
    texts = ["the hive", "a bee", "honey"]
    r = client.embeddings.create(model=EMBED_MODEL, input=texts)
    assert [d.index for d in r.data] == [0, 1, 2]
    vecs = [d.embedding for d in r.data]
    assert all(len(v) == 64 and abs(sum(x * x for x in v) - 1) < 1e-4 for v in vecs)
    assert r.usage.prompt_tokens == r.usage.total_tokens > 0
    floats = client.embeddings.create(model=EMBED_MODEL, input="a bee", encoding_format="float").data[0].embedding
    assert max(abs(a - b) for a, b in zip(floats, vecs[1])) < 1e-6
    short = client.embeddings.create(model=EMBED_MODEL, input="a bee", dimensions=16).data[0].embedding
    assert len(short) == 16 and abs(sum(x * x for x in short) - 1) < 1e-4
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model=MODEL, input="x")
    assert e.value.body["param"] == "model" and "chat model" in e.value.body["message"]


def test_n_choices_share_one_prompt():
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Write about bees."}], n=3, max_tokens=8, seed=11, temperature=1)
    assert [c.index for c in r.choices] == [0, 1, 2]
    one = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "Write about bees."}], max_tokens=8, seed=12, temperature=1)
    assert r.choices[1].message.content == one.choices[0].message.content, "choice 1 samples with seed + 1"
    assert r.usage.prompt_tokens == one.usage.prompt_tokens, "the prompt counts once"
