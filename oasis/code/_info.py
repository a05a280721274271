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
    cpu_time: float = 0.0
    """Seconds of CPU time per execution."""
    memory: int = 0
    """Bytes of memory per process."""
    max_processes: int = 0
    """Processes and threads per session."""
    max_open_files: int = 0
    max_file_size: int = 0
    workspace_size: int = 0
    """Bytes a session workspace may hold."""
    workspace_files: int = 0
    tmp_size: int = 0
    max_output_files: int = 0
    """Files one set_result may return."""
    max_output_size: int = 0
    """Total bytes of the files one set_result may return."""
    max_code_size: int = 0
    max_input_files: int = 0
    session_memory: int = 0
    """Bytes a session's processes and files may use together; 0 when not enforced."""


@dataclass(frozen=True, kw_only=True)
class SandboxStateful:
    """Whether runs may keep a live interpreter per session (`CodeRequest.keep_state`)."""

    enabled: bool
    reason: str = ""
    """Why not, when not enabled."""
    max_states: int = 0
    """Live interpreters at once; the least recently used is ended first."""
    idle_timeout: float = 0.0
    """Seconds a live interpreter is kept without a run."""
    live: int = 0
    """Live interpreters now."""


@dataclass(frozen=True, kw_only=True)
class SandboxInfo:
    """The runtimes, limits and isolation a sandbox server provides."""

    runtimes: dict[str, str] = field(default_factory=dict)
    """Runtime name ("python", "node") to its version."""
    limits: SandboxLimits
    isolation: str
    """"none", "uid" or "namespaces"."""
    network: str = ""
    """"host" or "none": what the code can reach."""
    version: str
    """The server's version."""
    resource_control: str = ""
    """"cgroup v2", "cgroup v1" or "rlimits": how session memory and processes are capped."""
    stateful: SandboxStateful = SandboxStateful(enabled=False)
    """Stateful sessions: on or off, and the live interpreters' limits."""
