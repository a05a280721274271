"""SANDBOX_* configuration: defaults, durations, and errors that name the variable."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from sandbox_server import config as config_module
from sandbox_server.errors import StartError
from sandbox_server.isolation import Network
from sandbox_server.launcher import IsolationUnavailable
from sandbox_server.settings import SETTINGS

from ..conftest import REPO, StartServer, runtime_python
from ..helpers import eventually
from .conftest import StartProcess, wait_exit


def load(tmp_path: Path, **env: str) -> config_module.Config:
    values = {"SANDBOX_WORKSPACE": str(tmp_path / "ws"), "SANDBOX_PYTHON_BIN": runtime_python()}
    values.update(env)
    return config_module.load(values)


def test_defaults(tmp_path: Path) -> None:
    """The defaults the issue fixes."""
    config = load(tmp_path)
    assert config.grpc_addr == "127.0.0.1:50051"
    assert config.max_concurrent == 4
    assert config.session_ttl == 3600
    assert config.max_output == 512 * 1024
    assert config.default_timeout == 30 and config.max_timeout == 300
    assert config.shutdown_grace == 10
    assert config.workspace_root == tmp_path / "ws" and config.workspace_root.is_dir()
    assert config.pip_index_url is None and config.npm_registry is None


@pytest.mark.parametrize(
    ("text", "seconds"), [("90s", 90), ("30m", 1800), ("2h", 7200), ("90", 90), ("250ms", 0.25)]
)
def test_durations(tmp_path: Path, text: str, seconds: float) -> None:
    """SANDBOX_SESSION_TTL accepts 90s, 30m and 2h (and plain seconds)."""
    assert load(tmp_path, SANDBOX_SESSION_TTL=text).session_ttl == seconds


def test_values_are_read(tmp_path: Path) -> None:
    """Each variable lands in the configuration."""
    config = load(
        tmp_path,
        SANDBOX_GRPC_ADDR="0.0.0.0:6000",
        SANDBOX_MAX_CONCURRENT="9",
        SANDBOX_MAX_OUTPUT="1MiB",
        SANDBOX_SHUTDOWN_GRACE="3s",
        SANDBOX_PIP_INDEX_URL="http://pypi.internal/simple",
        SANDBOX_NPM_REGISTRY="http://npm.internal/",
        SANDBOX_NODE_BIN="node",
    )
    assert config.grpc_addr == "0.0.0.0:6000"
    assert config.max_concurrent == 9
    assert config.max_output == 1024 * 1024
    assert config.shutdown_grace == 3
    assert config.pip_index_url == "http://pypi.internal/simple"
    assert config.npm_registry == "http://npm.internal/"
    assert config.node_bin is not None and Path(config.node_bin).is_absolute()


def test_interpreters_are_resolved_to_absolute_paths(tmp_path: Path) -> None:
    """A bare name is resolved once (a PATH shim would cost every start)."""
    config = load(tmp_path, SANDBOX_PYTHON_BIN=Path(sys.executable).name)
    assert Path(config.python_bin).is_absolute()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("SANDBOX_GRPC_ADDR", "no-port"),
        ("SANDBOX_GRPC_ADDR", "127.0.0.1:port"),
        ("SANDBOX_WORKSPACE", "/etc/hostname/below-a-file"),
        ("SANDBOX_PYTHON_BIN", "/no/such/python3"),
        ("SANDBOX_NODE_BIN", "/no/such/node"),
        ("SANDBOX_MAX_CONCURRENT", "four"),
        ("SANDBOX_MAX_CONCURRENT", "0"),
        ("SANDBOX_MAX_CONCURRENT", "-2"),
        ("SANDBOX_MAX_CONCURRENT", "2.5"),
        ("SANDBOX_SESSION_TTL", "soon"),
        ("SANDBOX_SESSION_TTL", "1 fortnight"),
        ("SANDBOX_SESSION_TTL", "0"),
        ("SANDBOX_SESSION_TTL", "-5m"),
        ("SANDBOX_MAX_OUTPUT", "lots"),
        ("SANDBOX_MAX_OUTPUT", "0"),
        ("SANDBOX_SHUTDOWN_GRACE", "later"),
        ("SANDBOX_DEFAULT_TIMEOUT", "x"),
        ("SANDBOX_MAX_TIMEOUT", "x"),
        ("SANDBOX_NETWORK", "bridge"),
        ("SANDBOX_NETWORK_ALLOW", "10.0.0.0/8,not-a-range"),
        ("SANDBOX_NETWORK_ALLOW", "fd00::/8"),
        ("SANDBOX_MAX_SESSIONS", "0"),
        ("SANDBOX_MAX_CONNECTIONS", "many"),
    ],
)
def test_invalid_values_name_the_variable(tmp_path: Path, name: str, value: str) -> None:
    """A value the server cannot use raises ConfigError whose message starts with the variable's name."""
    with pytest.raises(config_module.ConfigError) as caught:
        load(tmp_path, **{name: value})
    assert str(caught.value).startswith(name), str(caught.value)


def test_default_workspace_is_var_sandbox() -> None:
    """Without SANDBOX_WORKSPACE, root gets /var/sandbox (what `make run` uses)."""
    config = config_module.load({"SANDBOX_PYTHON_BIN": runtime_python()})
    assert config.workspace_root == Path("/var/sandbox")


def test_default_workspace_falls_back_to_the_temp_dir(tmp_path: Path) -> None:
    """When /var/sandbox cannot be created, the folder under the temp dir is used instead."""
    assert config_module.default_workspaces()[0] == Path("/var/sandbox")
    # Nothing can be created under a /proc file, whoever runs the test.
    unusable = Path("/proc/version/oasis-sandbox")
    fallback = tmp_path / "oasis-sandbox"
    chosen = config_module._workspace_root(None, candidates=(unusable, fallback))
    assert chosen == fallback
    assert fallback.is_dir()


def test_default_timeout_above_max(tmp_path: Path) -> None:
    """A default timeout above the maximum is a configuration error."""
    with pytest.raises(config_module.ConfigError, match="SANDBOX_DEFAULT_TIMEOUT"):
        load(tmp_path, SANDBOX_DEFAULT_TIMEOUT="10m", SANDBOX_MAX_TIMEOUT="5m")


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("name", "value"), [("SANDBOX_MAX_CONCURRENT", "many"), ("SANDBOX_SESSION_TTL", "forever")]
)
async def test_server_refuses_to_start_on_a_bad_value(
    server_process: StartProcess, name: str, value: str
) -> None:
    """`python -m sandbox_server serve` stops at start with a non-zero exit and a message naming the variable."""
    server = server_process(wait=False, **{name: value})
    assert await wait_exit(server.proc, 30) != 0
    await eventually(
        lambda: name in server.log_text(), timeout=10, what=f"{name} in the error output"
    )
    assert not server.port


def test_network_settings_are_read(tmp_path: Path) -> None:
    config = load(
        tmp_path, SANDBOX_NETWORK="Egress", SANDBOX_NETWORK_ALLOW="10.1.2.3, 192.168.0.0/24"
    )
    assert config.network is Network.EGRESS
    assert [str(net) for net in config.network_allow] == ["10.1.2.3/32", "192.168.0.0/24"]
    assert load(tmp_path).network is None  # unset: egress where the host can give it, else none


def test_session_memory_defaults_to_memory_plus_workspace(tmp_path: Path) -> None:
    assert load(tmp_path).limits.session_memory == 2 * 1024**3
    config = load(tmp_path, SANDBOX_MEMORY="256MiB", SANDBOX_WORKSPACE_SIZE="512MiB")
    assert config.limits.session_memory == 768 * 1024**2
    assert load(tmp_path, SANDBOX_SESSION_MEMORY="3GiB").limits.session_memory == 3 * 1024**3
    for bad in ("lots", "1MiB"):
        with pytest.raises(config_module.ConfigError, match=r"^SANDBOX_SESSION_MEMORY"):
            load(tmp_path, SANDBOX_SESSION_MEMORY=bad)


def test_the_built_runtime_is_the_default_interpreter(tmp_path: Path) -> None:
    """Without SANDBOX_PYTHON_BIN, `oasis-sandbox serve` uses what `make install` built."""
    built = REPO / ".runtime" / "python" / "bin" / "python"
    if not built.exists():
        pytest.skip("make install has not built .runtime/python")
    values = {"SANDBOX_WORKSPACE": str(tmp_path)}
    assert config_module.load(values).python_bin == str(built)


async def test_an_interpreter_closed_to_session_users_is_named(
    start_server: StartServer, tmp_path: Path
) -> None:
    """An interpreter behind a 0700 folder fails the start with that folder and the variable
    named, not with advice to lower the isolation."""
    if os.geteuid() != 0:
        pytest.skip("per-session users need root")
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    (private / "python").symlink_to(runtime_python())
    with pytest.raises(IsolationUnavailable) as caught:
        await start_server(SANDBOX_PYTHON_BIN=str(private / "python"))
    message = str(caught.value)
    assert "SANDBOX_PYTHON_BIN" in message and "is closed to other users" in message
    assert "lower SANDBOX_ISOLATION" not in message


async def test_a_prebuilt_oasis_init_that_is_not_executable_is_named(
    start_server: StartServer, tmp_path: Path
) -> None:
    not_a_program = tmp_path / "oasis-init"
    not_a_program.write_text("")
    with pytest.raises(StartError, match="SANDBOX_INIT_BIN"):
        await start_server(SANDBOX_INIT_BIN=str(not_a_program))


def test_the_settings_table_shows_the_defaults_load_uses(tmp_path: Path) -> None:
    """settings.py writes each default as `serve --help` shows it; the value is the
    dataclass's, and the two must agree."""
    shown = {setting.name: setting.default for setting in SETTINGS}
    parse_duration, parse_size = config_module.parse_duration, config_module.parse_size
    config = load(tmp_path)
    limits = config.limits
    values = {
        "SANDBOX_GRPC_ADDR": (str, config.grpc_addr),
        "SANDBOX_ADDR": (str, config.http_addr),
        "SANDBOX_MAX_CONCURRENT": (int, config.max_concurrent),
        "SANDBOX_MAX_SESSIONS": (int, config.max_sessions),
        "SANDBOX_SESSION_TTL": (parse_duration, config.session_ttl),
        "SANDBOX_MAX_OUTPUT": (parse_size, config.max_output),
        "SANDBOX_MAX_RESULT": (parse_size, config.max_result),
        "SANDBOX_DEFAULT_TIMEOUT": (parse_duration, config.default_timeout),
        "SANDBOX_MAX_TIMEOUT": (parse_duration, config.max_timeout),
        "SANDBOX_SHUTDOWN_GRACE": (parse_duration, config.shutdown_grace),
        "SANDBOX_MAX_CONNECTIONS": (int, config.max_connections),
        "SANDBOX_MAX_CODE_SIZE": (parse_size, config.max_code_size),
        "SANDBOX_MAX_INPUT_FILES": (int, config.max_input_files),
        "SANDBOX_CPU_TIME": (parse_duration, limits.cpu_time),
        "SANDBOX_MEMORY": (parse_size, limits.memory),
        "SANDBOX_MAX_PROCESSES": (int, limits.processes),
        "SANDBOX_MAX_OPEN_FILES": (int, limits.open_files),
        "SANDBOX_MAX_FILE_SIZE": (parse_size, limits.file_size),
        "SANDBOX_WORKSPACE_SIZE": (parse_size, limits.workspace_size),
        "SANDBOX_WORKSPACE_FILES": (int, limits.workspace_files),
        "SANDBOX_TMP_SIZE": (parse_size, limits.tmp_size),
        "SANDBOX_MAX_OUTPUT_FILES": (int, limits.output_files),
        "SANDBOX_MAX_OUTPUT_SIZE": (parse_size, limits.output_size),
    }
    for name, (parse, value) in values.items():
        assert parse(shown[name]) == value, name
    assert shown["SANDBOX_ISOLATION"] == config.isolation.label
