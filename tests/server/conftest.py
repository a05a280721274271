"""A sandbox server in its own process, started as an operator would: `python -m sandbox_server serve`."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ..conftest import runtime_python
from ..helpers import eventually, unmount_leftovers

REPO = Path(__file__).resolve().parents[2]
_LISTENING = re.compile(r"listening on \S+:(\d+) \(gRPC\)")


@dataclass
class ServerProcess:
    proc: subprocess.Popen[str]
    port: int = 0
    lines: list[str] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def rss_peak_reset(self) -> None:
        """Reset the kernel's peak-RSS mark (VmHWM) of the server process."""
        Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")

    def rss_peak(self) -> int:
        """Peak resident memory of the server process since the last reset, in bytes."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM in /proc status")

    def log_text(self) -> str:
        return "".join(self.lines)


StartProcess = Callable[..., ServerProcess]


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[StartProcess]:
    """Start `python -m sandbox_server serve` (or `command`) with SANDBOX_* overrides; SIGKILLed at teardown."""
    started: list[ServerProcess] = []

    def start(
        *, wait: bool = True, command: list[str] | None = None, **overrides: str
    ) -> ServerProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_")}
        env.update(
            SANDBOX_GRPC_ADDR="127.0.0.1:0",
            SANDBOX_ADDR="127.0.0.1:0",
            SANDBOX_WORKSPACE=str(tmp_path / f"proc-ws{len(started)}"),
            SANDBOX_PYTHON_BIN=runtime_python(),
            PYTHONUNBUFFERED="1",
        )
        env.update(overrides)
        proc = subprocess.Popen(
            command or [sys.executable, "-m", "sandbox_server", "serve"],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        server = ServerProcess(proc)
        started.append(server)
        ready = threading.Event()

        def pump() -> None:
            assert proc.stdout is not None
            for line in proc.stdout:
                server.lines.append(line)
                found = _LISTENING.search(line)
                if found and not server.port:
                    server.port = int(found[1])
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if wait:
            ready.wait(60)
            assert server.port, f"the server did not start:\n{server.log_text()}"
        return server

    yield start
    for server in started:
        if server.proc.poll() is None:
            server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(30)
    unmount_leftovers(tmp_path)


async def wait_exit(proc: subprocess.Popen[str], within: float) -> int:
    """The exit code of `proc`, which must end within `within` seconds."""
    await eventually(lambda: proc.poll() is not None, timeout=within, what="server process exit")
    assert proc.returncode is not None
    return proc.returncode
