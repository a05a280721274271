"""Every SANDBOX_* setting, parsed and validated in one place.

An invalid value stops the server at start with a message naming the variable.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from oasis._net import host_port
from oasis.code._wire import KiB, MiB

from .errors import StartError
from .isolation import Level, Limits, Network


class ConfigError(StartError):
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
    max_output: int = 512 * KiB
    """Bytes of logs kept (and streamed) per execution."""
    max_result: int = 2 * MiB
    """Bytes of the JSON value given to set_result."""
    default_timeout: float = 30.0
    max_timeout: float = 300.0
    shutdown_grace: float = 10.0
    """Seconds running executions get to finish on SIGTERM before they are killed."""
    pip_index_url: str | None = None
    npm_registry: str | None = None
    isolation: Level = Level.NAMESPACES
    """The weakest isolation level the server accepts; it fails closed below it."""
    allow_insecure: bool = False
    """SANDBOX_ALLOW_INSECURE=1: permit isolation level `none` (development only)."""
    network: Network | None = None
    """SANDBOX_NETWORK; None (unset): egress where the host can give it, else none."""
    network_allow: tuple[ipaddress.IPv4Network, ...] = ()
    """SANDBOX_NETWORK_ALLOW: private ranges the code may reach under egress."""
    network_deny: tuple[ipaddress.IPv4Network, ...] = ()
    """SANDBOX_NETWORK_DENY: more ranges the code never reaches (a container's outer host)."""
    limits: Limits = field(default_factory=Limits)
    max_code_size: int = 1 * MiB
    max_input_files: int = 100
    max_sessions: int = 256
    """Named sessions that may exist at once; one more is refused (RESOURCE_EXHAUSTED)."""
    max_connections: int = 1024
    """Client connections the HTTP facade holds at once (gRPC: streams per connection)."""
    allowed_hosts: tuple[str, ...] = ()
    """SANDBOX_ALLOWED_HOSTS: Host header values the HTTP facade accepts besides its
    listen address, loopback names and the machine's own name (DNS-rebinding defence)."""
    auth_token: str | None = None
    """SANDBOX_AUTH_TOKEN: clients must send `authorization: Bearer <token>`."""
    tls_cert: Path | None = None
    tls_key: Path | None = None
    init_bin: Path | None = None
    """SANDBOX_INIT_BIN: a prebuilt oasis-init (the container image sets it); else built once."""
    tls_client_ca: Path | None = None
    """With a CA, clients must present a certificate it signed (mutual TLS)."""
    launcher: str = "warm"
    """SANDBOX_LAUNCHER: `warm` forks Python executions from a preloaded zygote;
    `cold` starts a new interpreter for each (comparison and debugging)."""
    preload: tuple[str, ...] = ()
    """SANDBOX_PRELOAD: modules the warm zygote imports besides the data stack."""
    spares: int = 2
    """SANDBOX_SPARES: processes started ahead per runtime for runs without a session
    (warm launcher only); 0 starts each when its request arrives."""
    session_spares: int = 8
    """SANDBOX_SESSION_SPARES: at most this many processes started ahead for
    sessions' next runs, one per session and runtime (the least recent go first)."""
    stateful: bool = True
    """SANDBOX_STATEFUL: keep_state executions run in a session's live interpreter."""
    max_states: int = 32
    """SANDBOX_MAX_STATES: live interpreters at once; the least recently used is ended first."""
    state_idle: float = 900.0
    """SANDBOX_STATE_IDLE: seconds a live interpreter is kept without an execution."""


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}
_SIZE = re.compile(r"^\s*(\d+)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1, "k": KiB, "kb": KiB, "kib": KiB, "m": MiB, "mb": MiB, "mib": MiB}
_SIZE_UNITS.update({"g": 1024 * MiB, "gb": 1024 * MiB, "gib": 1024 * MiB})


def parse_duration(text: str) -> float:
    """Seconds from `90`, `90s`, `30m`, `2h` or `250ms`."""
    match = _DURATION.fullmatch(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration such as 90s, 30m or 2h")
    return float(match[1]) * _DURATION_UNITS[match[2]]


def parse_size(text: str) -> int:
    """Bytes from `524288`, `512KiB`, `4MiB` or `1G`."""
    match = _SIZE.fullmatch(text)
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

    default_timeout = parsed(
        "SANDBOX_DEFAULT_TIMEOUT", parse_duration, minimum=0.001, default=Config.default_timeout
    )
    max_timeout = parsed(
        "SANDBOX_MAX_TIMEOUT", parse_duration, minimum=0.001, default=Config.max_timeout
    )
    if default_timeout > max_timeout:
        raise ConfigError("SANDBOX_DEFAULT_TIMEOUT: must not exceed SANDBOX_MAX_TIMEOUT")

    max_output = parsed("SANDBOX_MAX_OUTPUT", parse_size, minimum=1, default=Config.max_output)
    max_result = parsed("SANDBOX_MAX_RESULT", parse_size, minimum=1, default=Config.max_result)
    if max_output + max_result > 3 * MiB:
        # Both travel in the final result message, which must stay under 4 MiB.
        raise ConfigError(
            "SANDBOX_MAX_OUTPUT + SANDBOX_MAX_RESULT: together they must not exceed 3MiB"
        )

    isolation = parsed("SANDBOX_ISOLATION", Level.parse, default=Config.isolation)
    allow_insecure = _flag("SANDBOX_ALLOW_INSECURE", get("SANDBOX_ALLOW_INSECURE"))
    if isolation is Level.NONE and not allow_insecure:
        raise ConfigError(
            "SANDBOX_ISOLATION: `none` runs untrusted code with the server's own rights; "
            "it is for development only and needs SANDBOX_ALLOW_INSECURE=1"
        )
    try:
        network = Network.parse(raw_network) if (raw_network := get("SANDBOX_NETWORK")) else None
    except ValueError as exc:
        raise ConfigError(f"SANDBOX_NETWORK: {exc}") from None
    network_allow = _networks("SANDBOX_NETWORK_ALLOW", get("SANDBOX_NETWORK_ALLOW"))
    network_deny = _networks("SANDBOX_NETWORK_DENY", get("SANDBOX_NETWORK_DENY"))

    limits = Limits(
        cpu_time=parsed("SANDBOX_CPU_TIME", parse_duration, minimum=1, default=Limits.cpu_time),
        memory=parsed("SANDBOX_MEMORY", parse_size, minimum=64 * MiB, default=Limits.memory),
        processes=parsed(
            "SANDBOX_MAX_PROCESSES", positive_int, minimum=8, default=Limits.processes
        ),
        open_files=parsed(
            "SANDBOX_MAX_OPEN_FILES", positive_int, minimum=64, default=Limits.open_files
        ),
        file_size=parsed(
            "SANDBOX_MAX_FILE_SIZE", parse_size, minimum=MiB, default=Limits.file_size
        ),
        workspace_size=parsed(
            "SANDBOX_WORKSPACE_SIZE", parse_size, minimum=MiB, default=Limits.workspace_size
        ),
        workspace_files=parsed(
            "SANDBOX_WORKSPACE_FILES", positive_int, minimum=100, default=Limits.workspace_files
        ),
        tmp_size=parsed("SANDBOX_TMP_SIZE", parse_size, minimum=MiB, default=Limits.tmp_size),
        output_files=parsed(
            "SANDBOX_MAX_OUTPUT_FILES", positive_int, minimum=1, default=Limits.output_files
        ),
        output_size=parsed(
            "SANDBOX_MAX_OUTPUT_SIZE", parse_size, minimum=1, default=Limits.output_size
        ),
    )
    # The session's tmpfs pages count against it: by default one process at its
    # address-space limit (which resident memory never exceeds) and a full workspace fit.
    limits = replace(
        limits,
        session_memory=parsed(
            "SANDBOX_SESSION_MEMORY",
            parse_size,
            minimum=64 * MiB,
            default=limits.memory + limits.workspace_size,
        ),
    )
    tls_cert, tls_key = (
        _file("SANDBOX_TLS_CERT", get("SANDBOX_TLS_CERT")),
        _file("SANDBOX_TLS_KEY", get("SANDBOX_TLS_KEY")),
    )
    if (tls_cert is None) != (tls_key is None):
        raise ConfigError("SANDBOX_TLS_CERT and SANDBOX_TLS_KEY: set both or neither")
    tls_client_ca = _file("SANDBOX_TLS_CLIENT_CA", get("SANDBOX_TLS_CLIENT_CA"))
    if tls_client_ca is not None and tls_cert is None:
        raise ConfigError("SANDBOX_TLS_CLIENT_CA: needs SANDBOX_TLS_CERT and SANDBOX_TLS_KEY")

    return Config(
        grpc_addr=grpc_addr,
        http_addr=http_addr,
        workspace_root=_workspace_root(get("SANDBOX_WORKSPACE")),
        python_bin=_executable("SANDBOX_PYTHON_BIN", get("SANDBOX_PYTHON_BIN"), default_python()),
        node_bin=_node_bin(get("SANDBOX_NODE_BIN")),
        max_concurrent=parsed(
            "SANDBOX_MAX_CONCURRENT", positive_int, minimum=1, default=Config.max_concurrent
        ),
        session_ttl=parsed(
            "SANDBOX_SESSION_TTL", parse_duration, minimum=0.001, default=Config.session_ttl
        ),
        max_output=max_output,
        max_result=max_result,
        default_timeout=default_timeout,
        max_timeout=max_timeout,
        shutdown_grace=parsed(
            "SANDBOX_SHUTDOWN_GRACE", parse_duration, default=Config.shutdown_grace
        ),
        pip_index_url=get("SANDBOX_PIP_INDEX_URL"),
        npm_registry=get("SANDBOX_NPM_REGISTRY"),
        isolation=isolation,
        allow_insecure=allow_insecure,
        network=network,
        network_allow=network_allow,
        network_deny=network_deny,
        limits=limits,
        max_code_size=parsed(
            "SANDBOX_MAX_CODE_SIZE", parse_size, minimum=1, default=Config.max_code_size
        ),
        max_input_files=parsed(
            "SANDBOX_MAX_INPUT_FILES", positive_int, minimum=1, default=Config.max_input_files
        ),
        max_sessions=parsed(
            "SANDBOX_MAX_SESSIONS", positive_int, minimum=1, default=Config.max_sessions
        ),
        max_connections=parsed(
            "SANDBOX_MAX_CONNECTIONS", positive_int, minimum=8, default=Config.max_connections
        ),
        allowed_hosts=tuple(
            host.strip().lower()
            for host in (get("SANDBOX_ALLOWED_HOSTS") or "").split(",")
            if host.strip()
        ),
        auth_token=get("SANDBOX_AUTH_TOKEN"),
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_client_ca=tls_client_ca,
        init_bin=Path(raw_init) if (raw_init := get("SANDBOX_INIT_BIN")) else None,
        launcher=_launcher(get("SANDBOX_LAUNCHER")),
        preload=_modules("SANDBOX_PRELOAD", get("SANDBOX_PRELOAD")),
        spares=parsed("SANDBOX_SPARES", positive_int, default=Config.spares),
        session_spares=parsed(
            "SANDBOX_SESSION_SPARES", positive_int, default=Config.session_spares
        ),
        stateful=get("SANDBOX_STATEFUL") is None
        or _flag("SANDBOX_STATEFUL", get("SANDBOX_STATEFUL")),
        max_states=parsed("SANDBOX_MAX_STATES", positive_int, minimum=1, default=Config.max_states),
        state_idle=parsed(
            "SANDBOX_STATE_IDLE", parse_duration, minimum=0.001, default=Config.state_idle
        ),
    )


def _launcher(value: str | None) -> str:
    mode = (value or Config.launcher).lower()
    if mode not in ("warm", "cold"):
        raise ConfigError(f"SANDBOX_LAUNCHER: {value!r} is not warm or cold")
    return mode


_MODULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def _modules(name: str, value: str | None) -> tuple[str, ...]:
    """A comma-separated list of importable module names."""
    found = []
    for item in filter(None, (part.strip() for part in (value or "").split(","))):
        if not _MODULE.fullmatch(item):
            raise ConfigError(f"{name}: {item!r} is not a module name such as scipy.stats")
        found.append(item)
    return tuple(found)


def _flag(name: str, value: str | None) -> bool:
    if value is None or value.lower() in ("0", "false", "no"):
        return False
    if value.lower() in ("1", "true", "yes"):
        return True
    raise ConfigError(f"{name}: {value!r} is not 1 or 0")


def _networks(name: str, value: str | None) -> tuple[ipaddress.IPv4Network, ...]:
    """A comma-separated list of IPv4 CIDRs (egress has no IPv6)."""
    found = []
    for item in filter(None, (part.strip() for part in (value or "").split(","))):
        try:
            found.append(ipaddress.IPv4Network(item, strict=False))
        except ValueError:
            raise ConfigError(
                f"{name}: {item!r} is not an IPv4 address or CIDR such as 10.1.2.0/24"
            ) from None
    return tuple(found)


def _file(name: str, value: str | None) -> Path | None:
    if value is None:
        return None
    path = Path(value)
    if not path.is_file() or not os.access(path, os.R_OK):
        raise ConfigError(f"{name}: {value!r} is not a readable file")
    return path


def _address(name: str, value: str) -> str:
    """`host:port` as given; an empty host means all interfaces."""
    try:
        host_port(value)
    except ValueError:
        raise ConfigError(
            f"{name}: {value!r} is not host:port (such as 127.0.0.1:9000 or :9000)"
        ) from None
    return value


def default_workspaces() -> tuple[Path, ...]:
    return (Path("/var/sandbox"), Path(tempfile.gettempdir()) / "oasis-sandbox")


def _workspace_root(value: str | None, candidates: tuple[Path, ...] | None = None) -> Path:
    if value is not None:
        path = Path(value).absolute()
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"SANDBOX_WORKSPACE: cannot create {path}: {exc.strerror}") from None
        return path
    for candidate in candidates or default_workspaces():
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


def default_python() -> str:
    """The interpreter `make install` builds for user code (numpy, pandas, matplotlib,
    readable by session users), else the server's own."""
    built = Path(__file__).resolve().parent.parent / ".runtime" / "python" / "bin" / "python"
    return str(built) if built.exists() else sys.executable


def _node_bin(value: str | None) -> str | None:
    if value is not None:
        return _executable("SANDBOX_NODE_BIN", value, value)
    found = shutil.which("node")
    return str(Path(found).resolve()) if found else None
