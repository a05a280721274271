"""LLM providers (OpenAI-compatible APIs: `pip install 'oasis-sandbox[openai]'`), and test doubles.

`ScriptedProvider` stands in for the LLM, `ScriptedRunner` for the sandbox.
"""

from ._openai import OpenAIProvider
from ._scripted import (
    CodeScriptFunction,
    CodeScriptItem,
    Request,
    ScriptedProvider,
    ScriptedRunner,
    ScriptFunction,
    ScriptItem,
    code_result,
    tool_calls,
)

__all__ = [
    "CodeScriptFunction",
    "CodeScriptItem",
    "OpenAIProvider",
    "Request",
    "ScriptFunction",
    "ScriptItem",
    "ScriptedProvider",
    "ScriptedRunner",
    "code_result",
    "tool_calls",
]
