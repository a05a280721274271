"""What a sandbox server says about itself (`GrpcRunner.info()`)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, kw_only=True)
class SandboxLimits:
    """Limits the server enforces on every execution."""

    max_concurrent: int
    """Executions that may run at once; one more fails with CapacityExhausted."""
    default_timeout: float
    """Seconds an execution may run when the request sets no timeout."""
    max_timeout: float
    """Longer timeouts are clamped to this many seconds."""
    max_output: int
    """Bytes of logs the server keeps per execution."""
    max_result: int
    """Bytes of the set_result value."""
    session_ttl: float
    """Seconds an idle session's workspace is kept."""


@dataclass(frozen=True, kw_only=True)
class SandboxInfo:
    """The runtimes, limits and isolation a sandbox server provides."""

    runtimes: dict[str, str] = field(default_factory=dict)
    """Runtime name ("python", "node") to its version."""
    limits: SandboxLimits
    isolation: str
    """"none", "uid" or "namespaces"."""
    version: str
    """The server's version."""
