"""LLM providers: OpenAI-compatible APIs (`pip install 'oasis-sandbox[openai]'`) and a scripted one."""

from ._openai import OpenAIProvider
from ._scripted import Request, ScriptedProvider, ScriptFunction, ScriptItem, tool_calls

__all__ = [
    "OpenAIProvider",
    "Request",
    "ScriptFunction",
    "ScriptItem",
    "ScriptedProvider",
    "tool_calls",
]
