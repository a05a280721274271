"""The oasis exception tree.

    OasisError                    the root: catch this to catch everything
    +-- SandboxError              the sandbox refused or failed a request
    |   +-- InvalidRequest        bad code, runtime, session id, file name ...
    |   +-- CapacityExhausted     the sandbox is at its concurrency limit
    |   +-- SandboxUnavailable    not reachable, or shutting down
    |   +-- Unauthenticated       missing or wrong token
    |   +-- FailedPrecondition    e.g. deleting a workspace that is in use
    |   +-- AlreadyExecuted       a retry found its execution already admitted
    +-- ToolError                 a tool failed (raised by tool_dispatcher users)

Failures of the user's code are not exceptions: they come back as a
CodeResult whose status says what happened.
"""

from __future__ import annotations


class OasisError(Exception):
    """Root of every exception this library raises."""


class SandboxError(OasisError):
    """A request to the sandbox failed.

    `code` is a gRPC status name ("RESOURCE_EXHAUSTED") for both runners;
    `http_status` is the HTTP status when the failure came as an HTTP answer.
    """

    def __init__(
        self, message: str, *, code: str = "UNKNOWN", http_status: int | None = None
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.http_status = http_status


class InvalidRequest(SandboxError):
    pass


class CapacityExhausted(SandboxError):
    pass


class SandboxUnavailable(SandboxError):
    pass


class Unauthenticated(SandboxError):
    pass


class FailedPrecondition(SandboxError):
    pass


class AlreadyExecuted(SandboxError):
    """The sandbox had already admitted this execution_id: the code may have run, and is not run again."""


class ToolError(OasisError):
    """A tool failed; the message is what the code (or the LLM) sees."""
