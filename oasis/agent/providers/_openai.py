"""A provider for any OpenAI-compatible chat completions API, on the official `openai` SDK.

Works with the hosted API and with vLLM, Ollama, LM Studio and other compatible
servers. Settings come from arguments, else from OPENAI_BASE_URL,
OPENAI_API_KEY and OPENAI_MODEL (read here and nowhere else).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .._errors import AgentDefinitionError, ProviderError
from .._messages import (
    AssistantMessage,
    Message,
    ModelResponse,
    SystemMessage,
    ToolCallPart,
    ToolDefinition,
    ToolMessage,
    Usage,
    UserMessage,
)

if TYPE_CHECKING:
    from openai import AsyncOpenAI
    from openai.types.chat import (
        ChatCompletion,
        ChatCompletionMessageParam,
        ChatCompletionToolUnionParam,
    )

DEFAULT_MODEL = "gpt-4o-mini"


class OpenAIProvider:
    """Chat completions with tool calling. An async context manager; `aclose()` is idempotent."""

    def __init__(
        self,
        model: str | None = None,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        client: AsyncOpenAI | None = None,
        temperature: float | None = None,
        max_tokens: int | None = None,
        timeout: float = 120.0,
        max_retries: int = 2,
        extra_body: Mapping[str, Any] | None = None,
    ) -> None:
        """
        Args:
            model: model name; default OPENAI_MODEL, else gpt-4o-mini.
            base_url: API root such as http://localhost:11434/v1; default OPENAI_BASE_URL,
                else the hosted OpenAI API.
            api_key: default OPENAI_API_KEY; optional for a self-hosted base_url.
            client: an AsyncOpenAI to use as is (the settings above are then ignored).
            timeout: seconds per request; max_retries: the SDK's own retries.
        """
        self.model = model or os.environ.get("OPENAI_MODEL") or DEFAULT_MODEL
        self.temperature = temperature
        self.max_tokens = max_tokens
        self.extra_body = dict(extra_body or {})
        self._owns_client = client is None
        self._closed = False
        if client is not None:
            self._client = client
            self.base_url = str(client.base_url)
            return
        try:
            from openai import AsyncOpenAI
        except ImportError:
            raise AgentDefinitionError(
                "OpenAIProvider needs the openai package: pip install 'oasis-sandbox[openai]'"
            ) from None
        self.base_url = base_url or os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1"
        key = api_key or os.environ.get("OPENAI_API_KEY")
        if not key:
            if base_url is None and not os.environ.get("OPENAI_BASE_URL"):
                raise AgentDefinitionError(
                    "OpenAIProvider: no API key; pass api_key= or set OPENAI_API_KEY "
                    "(or point OPENAI_BASE_URL at a self-hosted server that needs none)"
                )
            key = "unused"  # self-hosted servers (Ollama, vLLM) accept any key
        self._client = AsyncOpenAI(
            api_key=key, base_url=self.base_url, timeout=timeout, max_retries=max_retries
        )

    async def request(
        self, messages: Sequence[Message], tools: Sequence[ToolDefinition]
    ) -> ModelResponse:
        import openai

        options: dict[str, Any] = {}
        if tools:
            options["tools"] = [_tool_param(t) for t in tools]
        if self.temperature is not None:
            options["temperature"] = self.temperature
        if self.max_tokens is not None:
            options["max_tokens"] = self.max_tokens
        if self.extra_body:
            options["extra_body"] = self.extra_body
        try:
            completion = await self._client.chat.completions.create(
                model=self.model, messages=[_message_param(m) for m in messages], **options
            )
        except openai.APIStatusError as exc:
            raise ProviderError(
                f"{self.model} at {self.base_url}: the API answered {exc.status_code}: {_api_message(exc)}",
                status_code=exc.status_code,
            ) from exc
        except openai.APIConnectionError as exc:
            raise ProviderError(f"cannot reach the API at {self.base_url}: {exc}") from exc
        except openai.OpenAIError as exc:
            raise ProviderError(f"{self.model} at {self.base_url}: {exc}") from exc
        return _response(completion)

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._owns_client:
            await self._client.close()

    async def __aenter__(self) -> OpenAIProvider:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"OpenAIProvider(model={self.model!r}, base_url={self.base_url!r})"


def _tool_param(tool: ToolDefinition) -> ChatCompletionToolUnionParam:
    return {
        "type": "function",
        "function": {
            "name": tool.name,
            "description": tool.description,
            "parameters": tool.parameters,
        },
    }


def _message_param(message: Message) -> ChatCompletionMessageParam:
    if isinstance(message, SystemMessage):
        return {"role": "system", "content": message.content}
    if isinstance(message, UserMessage):
        return {"role": "user", "content": message.content}
    if isinstance(message, AssistantMessage):
        if not message.tool_calls:
            return {"role": "assistant", "content": message.content}
        return {
            "role": "assistant",
            "content": message.content or None,
            "tool_calls": [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {
                        "name": call.name,
                        "arguments": call.args
                        if isinstance(call.args, str)
                        else json.dumps(call.args),
                    },
                }
                for call in message.tool_calls
            ],
        }
    assert isinstance(message, ToolMessage)
    content = f"Error: {message.content}" if message.is_error else message.content
    return {"role": "tool", "tool_call_id": message.call_id, "content": content}


def _response(completion: ChatCompletion) -> ModelResponse:
    if not completion.choices:
        raise ProviderError(f"{completion.model}: the API returned no choices")
    choice = completion.choices[0]
    calls: list[ToolCallPart] = []
    for call in choice.message.tool_calls or []:
        if call.type != "function":
            continue
        raw = call.function.arguments or ""
        args: dict[str, Any] | str = raw
        try:
            parsed = json.loads(raw) if raw.strip() else {}
        except ValueError:
            parsed = None
        if isinstance(parsed, dict):
            args = parsed
        calls.append(ToolCallPart(id=call.id, name=call.function.name, args=args))
    usage = Usage(requests=1)
    if completion.usage is not None:
        usage = Usage(
            requests=1,
            input_tokens=completion.usage.prompt_tokens,
            output_tokens=completion.usage.completion_tokens,
        )
    return ModelResponse(
        text=choice.message.content or "",
        tool_calls=calls,
        usage=usage,
        model=completion.model,
        finish_reason=choice.finish_reason or "",
    )


def _api_message(exc: Any) -> str:
    """The error text an OpenAI-compatible server put in its body, else the SDK's message."""
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
    return str(getattr(exc, "message", exc))
