"""Every SANDBOX_* setting, parsed and validated in one place.

An invalid value stops the server at start with a message naming the variable.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

KIB = 1024
MIB = 1024 * KIB


class ConfigError(Exception):
    """A SANDBOX_* variable has a value the server cannot use."""


@dataclass(frozen=True, kw_only=True)
class Config:
    grpc_addr: str = "127.0.0.1:50051"
    """Where the gRPC service listens (host:port; port 0 picks a free one)."""
    http_addr: str = "127.0.0.1:9000"
    """Where the HTTP facade listens (host:port; an empty host means all interfaces)."""
    workspace_root: Path
    """Parent folder of all session workspaces."""
    python_bin: str
    """Absolute path of the interpreter that runs Python code."""
    node_bin: str | None
    """Absolute path of node, or None when Node.js is not available."""
    max_concurrent: int = 4
    """Executions running at once; one more is refused (no queueing)."""
    session_ttl: float = 3600.0
    """Seconds an idle session workspace is kept."""
    max_output: int = 512 * KIB
    """Bytes of logs kept (and streamed) per execution."""
    max_result: int = 2 * MIB
    """Bytes of the JSON value given to set_result."""
    default_timeout: float = 30.0
    max_timeout: float = 300.0
    shutdown_grace: float = 10.0
    """Seconds running executions get to finish on SIGTERM before they are killed."""
    pip_index_url: str | None = None
    npm_registry: str | None = None


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": KIB, "kb": KIB, "kib": KIB, "m": MIB, "mb": MIB, "mib": MIB}
_SIZE_UNITS.update({"g": 1024 * MIB, "gb": 1024 * MIB, "gib": 1024 * MIB})


def parse_duration(text: str) -> float:
    """Seconds from `90`, `90s`, `30m`, `2h` or `250ms`."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration such as 90s, 30m or 2h")
    return float(match[1]) * _DURATION_UNITS[match[2]]


def parse_size(text: str) -> int:
    """Bytes from `524288`, `512KiB`, `4MiB` or `1G`."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a size such as 524288, 512KiB or 4MiB")
    return int(match[1]) * _SIZE_UNITS[(match[2] or "").lower()]


def load(environ: Mapping[str, str] | None = None) -> Config:
    """Build the configuration from the environment (os.environ by default)."""
    env = os.environ if environ is None else environ

    def get(name: str) -> str | None:
        value = env.get(name, "").strip()
        return value or None

    def parsed(name: str, parse, *, minimum: float = 0, default):  # type: ignore[no-untyped-def]
        raw = get(name)
        if raw is None:
            return default
        try:
            value = parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{name}: {exc}") from None
        if value < minimum:
            raise ConfigError(f"{name}: must be at least {minimum}, got {raw!r}")
        return value

    def positive_int(text: str) -> int:
        if not text.isdigit():
            raise ValueError(f"{text!r} is not a whole number")
        return int(text)

    grpc_addr = _address("SANDBOX_GRPC_ADDR", get("SANDBOX_GRPC_ADDR") or Config.grpc_addr)
    http_addr = _address("SANDBOX_ADDR", get("SANDBOX_ADDR") or Config.http_addr)

    default_timeout = parsed("SANDBOX_DEFAULT_TIMEOUT", parse_duration, minimum=0.001, default=30.0)
    max_timeout = parsed("SANDBOX_MAX_TIMEOUT", parse_duration, minimum=0.001, default=300.0)
    if default_timeout > max_timeout:
        raise ConfigError("SANDBOX_DEFAULT_TIMEOUT: must not exceed SANDBOX_MAX_TIMEOUT")

    return Config(
        grpc_addr=grpc_addr,
        http_addr=http_addr,
        workspace_root=_workspace_root(get("SANDBOX_WORKSPACE")),
        python_bin=_executable("SANDBOX_PYTHON_BIN", get("SANDBOX_PYTHON_BIN"), sys.executable),
        node_bin=_node_bin(get("SANDBOX_NODE_BIN")),
        max_concurrent=parsed("SANDBOX_MAX_CONCURRENT", positive_int, minimum=1, default=4),
        session_ttl=parsed("SANDBOX_SESSION_TTL", parse_duration, minimum=0.001, default=3600.0),
        max_output=parsed("SANDBOX_MAX_OUTPUT", parse_size, minimum=1, default=512 * KIB),
        max_result=parsed("SANDBOX_MAX_RESULT", parse_size, minimum=1, default=2 * MIB),
        default_timeout=default_timeout,
        max_timeout=max_timeout,
        shutdown_grace=parsed("SANDBOX_SHUTDOWN_GRACE", parse_duration, default=10.0),
        pip_index_url=get("SANDBOX_PIP_INDEX_URL"),
        npm_registry=get("SANDBOX_NPM_REGISTRY"),
    )


def _address(name: str, value: str) -> str:
    """`host:port` as given; an empty host means all interfaces."""
    match = re.match(r"^(\[[0-9a-fA-F:]+\]|[^:\s]*):(\d{1,5})$", value)
    if not match or int(match[2]) > 65535:
        raise ConfigError(f"{name}: {value!r} is not host:port (such as 127.0.0.1:9000 or :9000)")
    return value


def _workspace_root(value: str | None) -> Path:
    if value is not None:
        path = Path(value).absolute()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"SANDBOX_WORKSPACE: cannot create {path}: {exc.strerror}") from None
        return path
    for candidate in (Path("/var/sandbox"), Path(tempfile.gettempdir()) / "oasis-sandbox"):
        try:
            candidate.mkdir(parents=True, exist_ok=True, mode=0o711)
        except OSError:
            continue
        if os.access(candidate, os.W_OK | os.X_OK):
            return candidate
    raise ConfigError("SANDBOX_WORKSPACE: neither /var/sandbox nor a temp folder is writable")


def _executable(name: str, value: str | None, default: str) -> str:
    """An absolute path, resolved once: a PATH shim (pyenv) costs ~90 ms per start."""
    chosen = value or default
    found = shutil.which(chosen)
    if found is None:
        raise ConfigError(f"{name}: {chosen!r} is not an executable file")
    return str(Path(found).absolute())


def _node_bin(value: str | None) -> str | None:
    if value is not None:
        return _executable("SANDBOX_NODE_BIN", value, value)
    found = shutil.which("node")
    return str(Path(found).resolve()) if found else None
