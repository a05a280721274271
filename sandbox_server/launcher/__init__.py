"""How an execution's process starts and how its whole tree is stopped.

The one narrow seam between the execution logic and the operating system:
`Launcher.start()` takes a command, a working folder, an environment and the
channel socket, and returns a `Process`. Warm pools and OS-level isolation
go behind this interface without touching the rest of the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .build import BuildError, ensure_init_binary

__all__ = ["BuildError", "LaunchSpec", "Launcher", "Process"]

log = logging.getLogger(__name__)

# After asking oasis-init to stop the tree, how long before SIGKILL to it.
_KILL_BACKSTOP = 1.0


@dataclass(frozen=True, kw_only=True)
class LaunchSpec:
    argv: Sequence[str]
    cwd: Path
    env: Mapping[str, str]
    pass_fds: Sequence[int] = ()


class Process:
    """A running execution: its output pipes, its exit, and a tree-wide kill."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc
        assert proc.stdout is not None and proc.stderr is not None
        self.stdout: asyncio.StreamReader = proc.stdout
        self.stderr: asyncio.StreamReader = proc.stderr

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    async def wait(self) -> int:
        """The exit code, or -N when killed by signal N."""
        return await self._proc.wait()

    async def kill(self) -> None:
        """Stop every process of the execution, including setsid'd descendants."""
        if self._proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            # oasis-init kills the tree on SIGTERM and then exits.
            self._proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(self._proc.wait()), _KILL_BACKSTOP)
        except TimeoutError:
            log.warning("oasis-init %d did not stop its tree in time; killing it", self.pid)
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            await self._proc.wait()


class Launcher:
    """Starts processes under oasis-init, in their own pid namespace when the host allows."""

    def __init__(self, init_binary: Path, *, pid_namespace: bool) -> None:
        self._init = str(init_binary)
        self.pid_namespace = pid_namespace

    @classmethod
    def create(cls, cache_dir: Path) -> Launcher:
        init = ensure_init_binary(cache_dir)
        probe = subprocess.run(
            [str(init), "--pidns", "--", "/bin/true"], capture_output=True, check=False
        )
        if probe.returncode != 0:
            log.warning(
                "pid namespaces are not available (%s); process trees are tracked by subreaper",
                probe.stderr.decode(errors="replace").strip(),
            )
        return cls(init, pid_namespace=probe.returncode == 0)

    async def start(self, spec: LaunchSpec) -> Process:
        options = ["--pidns"] if self.pid_namespace else []
        proc = await asyncio.create_subprocess_exec(
            self._init,
            *options,
            "--",
            *spec.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=spec.cwd,
            env=dict(spec.env),
            pass_fds=tuple(spec.pass_fds),
            start_new_session=True,
        )
        return Process(proc)
