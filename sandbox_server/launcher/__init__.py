"""How an execution's process starts, how it is isolated, and how its tree is stopped.

The one narrow seam between the execution logic and the operating system:
`Launcher.start()` takes a command, a working folder, an environment, the
channel fds and the session uid, and returns a `Process`. Every isolation
step and limit is applied here, by oasis-init, inside the child it forks;
warm pools go behind the same interface.
"""

from __future__ import annotations

import asyncio
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
from .process import ExecProcess, Process
from .warm import PoolState, WarmPool

__all__ = [
    "BuildError",
    "IsolationUnavailable",
    "LaunchSpec",
    "Launcher",
    "PoolState",
    "Process",
    "WarmStart",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class WarmStart:
    """What a warm pool needs to serve a start in place of exec'ing its argv."""

    runtime: str
    channel: tuple[int, int]
    """The prelude's channel fds (the last two arguments of argv)."""
    packages: Path
    """The session's own installed packages: a warm start is declined when they
    hold a module the pool preloaded."""


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
    warm: WarmStart | None = None
    """Set when a warm process of this runtime may serve the start (SANDBOX_LAUNCHER=warm)."""


class IsolationUnavailable(StartError):
    """The host cannot provide the isolation level the configuration demands."""


class Launcher:
    """Starts processes under oasis-init with the isolation the host allows."""

    def __init__(self, init_binary: Path, policy: Policy) -> None:
        self._init = str(init_binary)
        self.init_binary = init_binary
        self.policy = policy
        self.egress: Egress | None = None
        """Makes egress-only networks (sessions under egress; installers unless the network is host)."""
        self.pools: dict[str, WarmPool] = {}
        """Warm pools by runtime name (none under SANDBOX_LAUNCHER=cold)."""

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
        pool = self.pools.get(spec.warm.runtime) if spec.warm is not None else None
        if pool is not None and spec.warm is not None:
            forked = await pool.start(
                options_for=lambda parent, extra: self._options_fd(spec, parent, extra),
                cwd=spec.cwd,
                pass_fds=self._pass_fds(spec),
                channel=spec.warm.channel,
                packages=spec.warm.packages,
            )
            if forked is not None:
                return forked
        # The options travel through a memfd, not the command line: the code can
        # read /proc/1/cmdline, which must not show env values or host paths.
        options = self._options_fd(spec, os.getpid(), 0)
        try:
            proc = await self._spawn(spec, options, (options, *self._pass_fds(spec)))
        finally:
            os.close(options)
        return ExecProcess(proc)

    def _options_fd(self, spec: LaunchSpec, parent_pid: int, extra_memory: int) -> int:
        """oasis-init's options for `spec`, in a memfd.

        `parent_pid` is the process that starts oasis-init (it exits at once if
        that one is gone); a warm child's address-space limit counts from what
        the zygote had mapped (`extra_memory`), so the code gets the same room."""
        memory = spec.memory + extra_memory if spec.memory is not None else None
        args = self.policy.init_args(
            uid=spec.uid,
            workspace=spec.cwd,
            memory=memory,
            netns_fd=spec.netns_fd,
            tmp_size=spec.tmp_size,
        )
        for folder in spec.cgroups:
            args += ["--cgroup", folder]
        args += ["--server-pid", str(parent_pid)]
        for name, value in spec.env.items():
            args += ["--env", f"{name}={value}"]
        return _options_fd(args)

    @staticmethod
    def _pass_fds(spec: LaunchSpec) -> tuple[int, ...]:
        return (*spec.pass_fds, *([spec.netns_fd] if spec.netns_fd is not None else []))

    def pool_states(self) -> list[PoolState]:
        return [pool.state() for pool in self.pools.values()]

    async def close(self) -> None:
        """Stop the warm pools (their zygotes and anything still forked from them)."""
        for pool in self.pools.values():
            await pool.close()

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
