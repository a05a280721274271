"""How an execution's process starts, how it is isolated, and how its tree is stopped.

The one narrow seam between the execution logic and the operating system:
`Launcher.start()` takes a command, a working folder, an environment, the
channel fds and the session uid, and returns a `Process`. Every isolation
step and limit is applied here, by oasis-init, inside the child it forks;
warm pools go behind the same interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ..errors import StartError
from ..isolation import UID_BASE, Level, Policy
from .build import BuildError, ensure_init_binary
from .network import Egress

__all__ = ["BuildError", "IsolationUnavailable", "LaunchSpec", "Launcher", "Process"]

log = logging.getLogger(__name__)

# After asking oasis-init to stop the tree, how long before SIGKILL to it.
_KILL_BACKSTOP = 1.0


@dataclass(frozen=True, kw_only=True)
class LaunchSpec:
    argv: Sequence[str]
    cwd: Path
    env: Mapping[str, str]
    pass_fds: Sequence[int] = ()
    uid: int | None = None
    """The session's uid (ignored at isolation level `none`)."""
    netns_fd: int | None = None
    """An open network namespace to join (a session's egress network); None for the
    policy's default (the host's network, or the execution's own loopback)."""
    cgroups: tuple[str, ...] = ()
    """Cgroup folders (one per v1 hierarchy, or one v2 folder) the process tree runs in."""
    memory: int | None = None
    """Address-space limit in bytes, or None."""
    tmp_size: int | None = None
    """Size of the private /tmp, when not the policy's."""


class IsolationUnavailable(StartError):
    """The host cannot provide the isolation level the configuration demands."""


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
    """Starts processes under oasis-init with the isolation the host allows."""

    def __init__(self, init_binary: Path, policy: Policy) -> None:
        self._init = str(init_binary)
        self.init_binary = init_binary
        self.policy = policy
        self.egress: Egress | None = None
        """Makes egress-only networks (sessions under egress; installers unless the network is host)."""

    @property
    def level(self) -> Level:
        return self.policy.level

    @classmethod
    def create(
        cls,
        cache_dir: Path,
        policy: Policy,
        *,
        minimum: Level,
        probe_argv: Sequence[str],
        strongest: Level = Level.NAMESPACES,
        prebuilt_init: Path | None = None,
    ) -> Launcher:
        """Find the strongest level that works here; IsolationUnavailable below `minimum`.

        Each level is proven by running `probe_argv` (the Python runtime) under
        it, as a session uid would, so an unreadable interpreter fails here and
        not on the first request.
        """
        init = ensure_init_binary(cache_dir, prebuilt_init)
        pidns = _runs([str(init), "--pidns", "--", "/bin/true"]) is None
        reasons: list[str] = []
        for level in (Level.NAMESPACES, Level.UID, Level.NONE):
            candidate = cls(init, replace(policy, level=level, pid_namespace=pidns))
            if level > strongest:
                reasons.append(f"{level.label}: workspaces cannot be size-capped here")
                continue
            if level is Level.NAMESPACES and not pidns:
                reasons.append("namespaces: pid namespaces are not available")
                continue
            problem = candidate._probe(probe_argv)
            if problem is None:
                if level < minimum:
                    break
                return candidate
            reasons.append(f"{level.label}: {problem}")
        raise IsolationUnavailable(
            f"SANDBOX_ISOLATION: this host cannot provide isolation level `{minimum.label}` "
            f"({'; '.join(reasons)}). Run the server as root where pid, mount and network "
            "namespaces may be created (in a container: see README, Security). A lower "
            "SANDBOX_ISOLATION runs the code with less protection: it is not the fix."
        )

    def _probe(self, argv: Sequence[str]) -> str | None:
        with tempfile.TemporaryDirectory(prefix="oasis-probe-") as folder:
            uid = UID_BASE - 1
            if self.level is not Level.NONE:
                try:
                    os.chown(folder, uid, uid)
                except PermissionError:
                    return "the server cannot give files to other users (run it as root)"
            args = self.policy.init_args(uid=uid, workspace=Path(folder), memory=None)
            return _runs([self._init, *args, "--", *argv], cwd=folder)

    async def start(self, spec: LaunchSpec) -> Process:
        args = self.policy.init_args(
            uid=spec.uid,
            workspace=spec.cwd,
            memory=spec.memory,
            netns_fd=spec.netns_fd,
            tmp_size=spec.tmp_size,
        )
        for folder in spec.cgroups:
            args += ["--cgroup", folder]
        args += ["--server-pid", str(os.getpid())]
        for name, value in spec.env.items():
            args += ["--env", f"{name}={value}"]
        # The options travel through a memfd, not the command line: the code can
        # read /proc/1/cmdline, which must not show env values or host paths.
        options = _options_fd(args)
        pass_fds = (
            options,
            *spec.pass_fds,
            *([spec.netns_fd] if spec.netns_fd is not None else []),
        )
        try:
            proc = await self._spawn(spec, options, pass_fds)
        finally:
            os.close(options)
        return Process(proc)

    async def _spawn(
        self, spec: LaunchSpec, options: int, pass_fds: tuple[int, ...]
    ) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            # Named plainly: its path would tell the code where workspaces live on the host.
            "oasis-init",
            "--args-fd",
            str(options),
            "--",
            *spec.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=spec.cwd,
            # oasis-init runs as root before any isolation: the dynamic loader
            # must see no LD_PRELOAD or the like. The code's variables travel
            # as --env and are applied only when the code itself is exec'd.
            env={},
            pass_fds=pass_fds,
            start_new_session=True,
            executable=self._init,
        )

    async def kill_uid(self, uid: int) -> None:
        """Kill every process of a session uid (the clean-up of level `uid`)."""
        if self.level is Level.UID:
            await asyncio.to_thread(_kill_uid, uid)


def _options_fd(args: list[str]) -> int:
    """An in-memory file holding the NUL-separated options, read from offset 0."""
    fd = os.memfd_create("oasis-init-options", os.MFD_CLOEXEC)
    data = b"".join(arg.encode() + b"\0" for arg in args)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


def _runs(argv: list[str], cwd: str | None = None) -> str | None:
    """None when the command succeeds, else what went wrong."""
    try:
        done = subprocess.run(argv, capture_output=True, check=False, timeout=30, cwd=cwd)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    if done.returncode == 0:
        return None
    return done.stderr.decode(errors="replace").strip()[-300:] or f"exit status {done.returncode}"


def _kill_uid(uid: int) -> None:
    for _ in range(100):
        found = False
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/status", "rb") as status:
                    for line in status:
                        if line.startswith(b"Uid:"):
                            if int(line.split()[1]) == uid:
                                found = True
                                os.kill(int(entry), signal.SIGKILL)
                            break
            except (OSError, ValueError):
                continue
        if not found:
            return
