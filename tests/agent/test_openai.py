"""OpenAIProvider through the real openai SDK, against a fake OpenAI-compatible server on loopback."""

from __future__ import annotations

import json
import socket

import pytest

from oasis.agent import AgentDefinitionError, LLMAgent, ProviderError, Usage, tool
from oasis.agent.providers import OpenAIProvider

from ..fake_openai import FakeOpenAI, completion


@tool
def get_price(item: str) -> float:
    """Price of an item in euros."""
    return {"pear": 0.75}[item]


async def test_tool_calls_and_usage_through_the_sdk(fake: FakeOpenAI) -> None:
    fake.replies = [
        (
            200,
            completion(
                calls=[
                    ("call_a", "get_price", '{"item": "pear"}'),
                    ("call_b", "get_price", '{"item": "kiwi"}'),
                ],
                usage=(50, 7),
            ),
        ),
        (200, completion(calls=[("call_c", "get_price", '{"item": ')], usage=(80, 4))),
        (200, completion(content="A pear costs 0.75 EUR.", usage=(100, 9))),
    ]
    async with OpenAIProvider(
        "fake-model", base_url=fake.url, api_key="test-key", max_retries=0
    ) as provider:
        agent = LLMAgent("shop", "Prices.", provider, tools=[get_price])
        result = await agent.execute("What does a pear cost?")

    assert result.output == "A pear costs 0.75 EUR."
    assert result.usage == Usage(requests=3, input_tokens=230, output_tokens=20)
    assert fake.headers[0]["Authorization"] == "Bearer test-key"
    first = fake.received[0]
    assert first["model"] == "fake-model"
    assert [m["role"] for m in first["messages"]] == ["system", "user"]
    assert first["tools"] == [
        {
            "type": "function",
            "function": {
                "name": "get_price",
                "description": "Price of an item in euros.",
                "parameters": {
                    "type": "object",
                    "properties": {"item": {"type": "string"}},
                    "required": ["item"],
                    "additionalProperties": False,
                },
            },
        }
    ]
    second = fake.received[1]["messages"]
    assert [m["role"] for m in second] == ["system", "user", "assistant", "tool", "tool"]
    assert second[2]["tool_calls"][0] == {
        "id": "call_a",
        "type": "function",
        "function": {"name": "get_price", "arguments": '{"item": "pear"}'},
    }
    assert second[3] == {"role": "tool", "tool_call_id": "call_a", "content": "0.75"}
    assert second[4]["tool_call_id"] == "call_b"
    assert second[4]["content"] == "Error: KeyError: 'kiwi'"
    third = fake.received[2]["messages"]
    # Invalid JSON arguments are sent back as the model wrote them, with an error answer.
    assert third[5]["tool_calls"][0]["function"]["arguments"] == '{"item": '
    assert third[6]["content"].startswith("Error: the arguments are not a JSON object")


async def test_api_errors_become_provider_errors(fake: FakeOpenAI) -> None:
    fake.replies = [
        (
            404,
            {
                "error": {
                    "message": "The model `nope` does not exist",
                    "type": "invalid_request_error",
                }
            },
        ),
        (503, {"error": {"message": "overloaded, try later"}}),
    ]
    provider = OpenAIProvider("nope", base_url=fake.url, api_key="k", max_retries=0)
    agent = LLMAgent("a", "b", provider)
    with pytest.raises(
        ProviderError, match="answered 404: The model `nope` does not exist"
    ) as info:
        await agent.execute("hi")
    assert info.value.status_code == 404
    with pytest.raises(ProviderError, match="answered 503: overloaded") as info:
        await agent.execute("hi")
    assert info.value.status_code == 503
    await provider.aclose()
    await provider.aclose()


async def test_unreachable_server_is_a_provider_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with OpenAIProvider(
        "m", base_url=f"http://127.0.0.1:{port}/v1", api_key="k", max_retries=0
    ) as provider:
        with pytest.raises(ProviderError, match="cannot reach the API") as info:
            await LLMAgent("a", "b", provider).execute("hi")
    assert info.value.status_code is None


async def test_settings_from_the_environment(
    fake: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", fake.url)
    monkeypatch.setenv("OPENAI_API_KEY", "env-key")
    monkeypatch.setenv("OPENAI_MODEL", "env-model")
    fake.replies = [(200, completion(content="hello", usage=(3, 1)))]
    async with OpenAIProvider(max_retries=0) as provider:
        result = await LLMAgent("a", "b", provider).execute("hi")
    assert result.output == "hello"
    assert fake.received[0]["model"] == "env-model"
    assert fake.headers[0]["Authorization"] == "Bearer env-key"
    assert json.dumps(fake.received[0]).count("tools") == 0  # no tools: none are sent


async def test_a_missing_key_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_MODEL"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(AgentDefinitionError, match="OPENAI_API_KEY"):
        OpenAIProvider()
    # A self-hosted server needs no key.
    async with OpenAIProvider(base_url="http://127.0.0.1:1/v1") as provider:
        assert provider.model == "gpt-4o-mini"
