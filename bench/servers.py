"""Sandbox servers for the benchmark, each a separate `oasis-sandbox serve` process.

A separate process, not a SandboxServer on the harness's own event loop: the
client's work then never queues behind the server's (or the reverse), the
numbers are those of the service as deployed, and its memory (the server
and everything it started) can be told apart from the harness's.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path

from oasis.code import GrpcRunner, SandboxInfo
from oasis.errors import SandboxError
from sandbox_server.settings import SETTINGS

LAUNCHER_VARIABLE = "SANDBOX_LAUNCHER"
_START_TIMEOUT = 120.0
"""Seconds a server may take to answer GetInfo (the first start builds oasis-init)."""
_STOP_TIMEOUT = 20.0
_NOT_PASSED = ("SANDBOX_GRPC_ADDR", "SANDBOX_ADDR", "SANDBOX_WORKSPACE", "SANDBOX_AUTH_TOKEN")
"""Taken from the harness's environment never: the harness picks them, or cannot use them."""


def supported_modes() -> tuple[str, ...]:
    """The launcher modes this server can be asked for."""
    if any(setting.name == LAUNCHER_VARIABLE for setting in SETTINGS):
        return ("cold", "warm")
    return ("cold",)


def server_command() -> list[str]:
    """`oasis-sandbox serve` from the harness's own environment (the .venv)."""
    script = Path(sys.executable).parent / "oasis-sandbox"
    if script.exists():
        return [str(script), "serve"]
    return [sys.executable, "-m", "sandbox_server", "serve"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class ServerProcess:
    """One server process on free loopback ports with a temporary workspace root.

    `async with ServerProcess(label, overrides) as server:`; `server.info` once started.
    """

    def __init__(self, label: str, overrides: Mapping[str, str]) -> None:
        self.label = label
        self.overrides = dict(overrides)
        self.grpc_port = 0
        self.http_port = 0
        self.info: SandboxInfo | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._root = Path(tempfile.mkdtemp(prefix=f"oasis-bench-{_slug(label)}-"))
        self.log_path = self._root / "server.log"

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    @property
    def grpc_target(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    async def __aenter__(self) -> ServerProcess:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start the server and wait until it answers; one more try if a port was taken."""
        for attempt in range(2):
            try:
                await self._start_once()
                return
            except _Exited:
                if attempt == 1 or "in use" not in self._log_tail():
                    raise RuntimeError(
                        f"the {self.label} server exited at start:\n{self._log_tail()}"
                    ) from None

    async def _start_once(self) -> None:
        self.grpc_port, self.http_port = free_port(), free_port()
        workspace = self._root / "workspaces"
        workspace.mkdir(mode=0o711, exist_ok=True)
        workspace.chmod(0o711)  # session users cross it to reach their own workspace
        env = {k: v for k, v in os.environ.items() if k not in _NOT_PASSED}
        env.update(
            SANDBOX_GRPC_ADDR=self.grpc_target,
            SANDBOX_ADDR=f"127.0.0.1:{self.http_port}",
            SANDBOX_WORKSPACE=str(workspace),
            **self.overrides,
        )
        with self.log_path.open("ab") as log:
            self._process = await asyncio.create_subprocess_exec(
                *server_command(),
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )
        await self._wait_ready()

    async def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + _START_TIMEOUT
        async with GrpcRunner(self.grpc_target, timeout=2.0, max_retries=0) as runner:
            while True:
                if self._process.returncode is not None:
                    raise _Exited
                try:
                    self.info = await runner.info()
                    return
                except SandboxError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(
                            f"the {self.label} server did not answer within "
                            f"{_START_TIMEOUT:g} s:\n{self._log_tail()}"
                        ) from None
                    await asyncio.sleep(0.1)

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers; the workspace root is removed. Idempotent."""
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(_STOP_TIMEOUT):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
        if process is not None and process.returncode not in (0, None):
            print(
                f"note: the {self.label} server exited with {process.returncode}; "
                f"its log:\n{self._log_tail()}",
                file=sys.stderr,
            )
        await asyncio.to_thread(shutil.rmtree, self._root, ignore_errors=True)

    def _log_tail(self, lines: int = 20) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return "(no log)"


class _Exited(Exception):
    """The server process ended before it answered."""


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label)
