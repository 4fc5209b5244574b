"""LangChain and the OpenAI Agents SDK against a real `rbee serve` (see run.sh)."""
import os

import pydantic
from agents import Agent, ModelSettings, OpenAIChatCompletionsModel, Runner, function_tool, set_tracing_disabled
from langchain_openai import ChatOpenAI, OpenAIEmbeddings
from openai import AsyncOpenAI

BASE = os.environ["RBEE_BASE_URL"]
TOOL_MODEL = os.environ["RBEE_TOOL_MODEL"]
EMBED_MODEL = os.environ["RBEE_EMBED_MODEL"]

llm = ChatOpenAI(base_url=BASE, api_key="sk-anything", model=TOOL_MODEL, temperature=0, max_tokens=120, max_retries=0, timeout=300)


class GetWeather(pydantic.BaseModel):
    """The current weather in a city."""

    city: str


class Capital(pydantic.BaseModel):
    city: str
    country: str


def test_langchain_bind_tools_gives_parsed_tool_calls():
    m = llm.bind_tools([GetWeather]).invoke("What is the weather in Paris?")
    assert [(c["name"], c["args"]) for c in m.tool_calls] == [("GetWeather", {"city": "Paris"})]


def test_langchain_structured_output_by_schema_and_by_function_call():
    for method in ["json_schema", "function_calling"]:
        a = llm.with_structured_output(Capital, method=method).invoke("Which city is the capital of France? Give the city and its country.")
        assert isinstance(a, Capital) and a.city == "Paris", (method, a)


def test_langchain_embeddings():
    emb = OpenAIEmbeddings(base_url=BASE, api_key="sk-anything", model=EMBED_MODEL, check_embedding_ctx_length=False)
    docs = emb.embed_documents(["the hive", "a bee"])
    assert len(docs) == 2 and len(docs[0]) == 64
    assert max(abs(a - b) for a, b in zip(emb.embed_query("the hive"), docs[0])) < 1e-6


def test_an_agent_calls_a_function_tool_and_answers_from_its_result():
    set_tracing_disabled(True)  # no network to send traces to
    cities = []

    @function_tool
    def get_weather(city: str) -> str:
        """Returns the current weather in a city."""
        cities.append(city)
        return f"It is 21 degrees and sunny in {city}."

    model = OpenAIChatCompletionsModel(model=TOOL_MODEL, openai_client=AsyncOpenAI(base_url=BASE, api_key="sk-anything", max_retries=0))
    agent = Agent(
        name="weather",
        instructions="You answer questions about the weather. Use the get_weather tool, then answer in one sentence.",
        tools=[get_weather],
        model=model,
        model_settings=ModelSettings(temperature=0),
    )
    result = Runner.run_sync(agent, "What is the weather in Paris?")
    # This model may look the weather up more than once before it answers.
    assert cities and set(cities) == {"Paris"}, cities
    assert "21" in result.final_output and "sunny" in result.final_output.lower(), result.final_output
