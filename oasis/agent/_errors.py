"""Errors of the agent layer.

    OasisError
    +-- AgentError                the agent layer's root
        +-- AgentDefinitionError  developer misuse, raised when an agent or tool is built
        +-- ProviderError         the LLM provider failed (HTTP status kept when known)
            +-- ScriptExhausted   a scripted double (provider or runner) has no answer left

A tool that fails is not an exception of the run: the LLM sees the error as the
tool's answer and may correct itself. Raise `oasis.ToolError` from a tool to
give the LLM a clean message without the exception type.
"""

from __future__ import annotations

from ..errors import OasisError


class AgentError(OasisError):
    """Root of the agent layer's exceptions."""


class AgentDefinitionError(AgentError, ValueError):
    """An agent, network or tool is defined wrongly (duplicate or reserved names, bad hints)."""


class ProviderError(AgentError):
    """The LLM provider failed; `status_code` is the HTTP status when the API answered."""

    def __init__(self, message: str, *, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status_code = status_code


class ScriptExhausted(ProviderError):
    """A ScriptedProvider (or ScriptedRunner) was asked for more answers than it was given.

    A ProviderError because the provider is the double it was made for; a
    ScriptedRunner raises it too, and the run shows it to the LLM as a tool error.
    """
