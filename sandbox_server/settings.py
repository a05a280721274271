"""Every SANDBOX_* setting in one table: its default and what it does.

`oasis-sandbox serve --help` prints it; a test checks that every variable the
server reads is here and in the README, so the three never drift apart.
`config.load` parses and validates the values.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Setting:
    name: str
    default: str
    help: str


SETTINGS = (
    Setting("SANDBOX_GRPC_ADDR", "127.0.0.1:50051", "gRPC listen address (host:port)"),
    Setting("SANDBOX_ADDR", "127.0.0.1:9000", "HTTP API listen address (:9000 = all interfaces)"),
    Setting("SANDBOX_WORKSPACE", "/var/sandbox", "root of session workspaces; one server each"),
    Setting("SANDBOX_PYTHON_BIN", ".runtime/python", "Python that runs user code"),
    Setting("SANDBOX_NODE_BIN", "node on PATH", "Node.js that runs user code"),
    Setting("SANDBOX_MAX_CONCURRENT", "4", "executions at once; one more is refused"),
    Setting("SANDBOX_MAX_SESSIONS", "256", "named sessions at once; one more is refused"),
    Setting("SANDBOX_SESSION_TTL", "1h", "idle sessions are removed after this"),
    Setting("SANDBOX_MAX_OUTPUT", "512KiB", "logs kept per execution"),
    Setting("SANDBOX_MAX_RESULT", "2MiB", "size of the set_result value"),
    Setting("SANDBOX_DEFAULT_TIMEOUT", "30s", "wall time of an execution that names none"),
    Setting("SANDBOX_MAX_TIMEOUT", "300s", "longer requested timeouts are clamped to this"),
    Setting("SANDBOX_SHUTDOWN_GRACE", "10s", "on SIGTERM, running executions get this long"),
    Setting("SANDBOX_PIP_INDEX_URL", "PyPI", "where install_package gets Python packages"),
    Setting("SANDBOX_NPM_REGISTRY", "npm's", "where installPackage gets Node.js packages"),
    Setting(
        "SANDBOX_ISOLATION", "namespaces", "the weakest isolation accepted: namespaces, uid, none"
    ),
    Setting("SANDBOX_ALLOW_INSECURE", "0", "1 permits SANDBOX_ISOLATION=none (development only)"),
    Setting("SANDBOX_NETWORK", "egress", "what the code reaches: egress, none or host"),
    Setting("SANDBOX_NETWORK_ALLOW", "none", "private IPv4 ranges the code may reach under egress"),
    Setting("SANDBOX_NETWORK_DENY", "none", "more IPv4 ranges the code never reaches"),
    Setting("SANDBOX_AUTH_TOKEN", "none", "bearer token every client must send"),
    Setting("SANDBOX_ALLOWED_HOSTS", "none", "more Host names for the HTTP API"),
    Setting("SANDBOX_MAX_CONNECTIONS", "1024", "client connections each listener holds"),
    Setting("SANDBOX_TLS_CERT", "none", "TLS certificate for gRPC (with SANDBOX_TLS_KEY)"),
    Setting("SANDBOX_TLS_KEY", "none", "TLS private key for gRPC"),
    Setting("SANDBOX_TLS_CLIENT_CA", "none", "require client certificates signed by this CA"),
    Setting("SANDBOX_MAX_CODE_SIZE", "1MiB", "largest code accepted"),
    Setting("SANDBOX_MAX_INPUT_FILES", "100", "input files per request"),
    Setting("SANDBOX_INIT_BIN", "built on first start", "a prebuilt oasis-init"),
    Setting("SANDBOX_LAUNCHER", "warm", "warm: fork Python runs from a preloaded zygote; cold"),
    Setting("SANDBOX_PRELOAD", "none", "more modules the warm zygote imports (comma-separated)"),
    Setting(
        "SANDBOX_SPARES", "2", "processes started ahead per runtime for runs without a session"
    ),
    Setting(
        "SANDBOX_SESSION_SPARES", "8", "at most this many started ahead for sessions' next runs"
    ),
    Setting("SANDBOX_STATEFUL", "1", "keep_state executions keep a live interpreter per session"),
    Setting(
        "SANDBOX_MAX_STATES", "32", "live interpreters at once (least recently used ended first)"
    ),
    Setting(
        "SANDBOX_STATE_IDLE", "15m", "a live interpreter ends after this long without an execution"
    ),
    Setting("SANDBOX_CPU_TIME", "60s", "CPU time per execution"),
    Setting("SANDBOX_MEMORY", "1GiB", "memory per process"),
    Setting("SANDBOX_SESSION_MEMORY", "MEMORY + WORKSPACE_SIZE", "memory of a session's cgroup"),
    Setting("SANDBOX_MAX_PROCESSES", "64", "processes and threads per session"),
    Setting("SANDBOX_MAX_OPEN_FILES", "1024", "open files per process"),
    Setting("SANDBOX_MAX_FILE_SIZE", "512MiB", "largest file the code can write"),
    Setting("SANDBOX_WORKSPACE_SIZE", "1GiB", "bytes a session workspace may hold"),
    Setting("SANDBOX_WORKSPACE_FILES", "20000", "files a session workspace may hold"),
    Setting("SANDBOX_TMP_SIZE", "64MiB", "the private /tmp and /dev/shm of an execution"),
    Setting("SANDBOX_MAX_OUTPUT_FILES", "32", "files one set_result may return"),
    Setting("SANDBOX_MAX_OUTPUT_SIZE", "1GiB", "bytes the files of one set_result may total"),
)


def describe() -> str:
    """The table as `serve --help` shows it."""
    width = max(len(setting.name) for setting in SETTINGS)
    rows = [
        f"  {setting.name:<{width}}  {setting.help} (default: {setting.default})"
        for setting in SETTINGS
    ]
    return "settings (environment variables):\n" + "\n".join(rows)
