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
from .process import BoxedProcess, ExecProcess, Process
from .warm import PoolState, WarmPool
from .zygote import child_fds

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
    cpu_time: float | None = None
    """RLIMIT_CPU in seconds, when not the per-execution limit (a live interpreter's)."""


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
        warm = spec.warm
        pool = self.pools.get(warm.runtime) if warm is not None else None
        if warm is not None and pool is not None:
            if pool.accepts(warm.packages) and self._boxes:
                boxed = await self._start_boxed(spec, warm, pool)
                if boxed is not None:
                    return boxed
            else:
                pool.decline()
        # The options travel through a memfd, not the command line: the code can
        # read /proc/1/cmdline, which must not show env values or host paths.
        options = self._options_fd(spec, os.getpid(), 0)
        try:
            proc = await self._spawn(spec.argv, spec.cwd, options, self._pass_fds(spec))
        finally:
            os.close(options)
        return ExecProcess(proc)

    @property
    def _boxes(self) -> bool:
        """Whether warm children can run here: they enter namespaces that oasis-init
        --box builds for them, so below level `namespaces` every start is cold."""
        return self.level is Level.NAMESPACES and self.policy.pid_namespace

    async def _start_boxed(
        self, spec: LaunchSpec, warm: WarmStart, pool: WarmPool
    ) -> Process | None:
        """oasis-init --box builds the run's namespaces and root, then a forked
        child enters them; None (a cold start follows) when either step fails."""
        box_options = self._options_fd(spec, os.getpid(), 0, box=True)
        try:
            # The box gets the session's network to join, and nothing of the channel.
            network = (spec.netns_fd,) if spec.netns_fd is not None else ()
            proc = await self._spawn(["box"], spec.cwd, box_options, network)
        finally:
            os.close(box_options)
        box = ExecProcess(proc)
        namespaces: list[int] = []
        child: Process | None = None
        try:
            init_pid = await _box_ready(box)
            if init_pid is None:
                pool.decline()
                return None
            namespaces = _open_namespaces(init_pid, supervisor=box.pid)
            pidns, *entered = namespaces
            passed = (*spec.pass_fds, *entered)
            # Renumbered low in the child: the server's own numbers may run past 1000.
            number = child_fds(passed)
            child = await pool.start(
                options_for=lambda parent, extra: self._options_fd(
                    spec, parent, extra, enter=[number[fd] for fd in entered]
                ),
                cwd=spec.cwd,
                pass_fds=passed,
                channel=(number[warm.channel[0]], number[warm.channel[1]]),
                packages=warm.packages,
                box_pid_namespace=pidns,
            )
            return BoxedProcess(box, child) if child is not None else None
        except OSError as exc:
            log.warning("warm box failed, starting cold: %s", exc)
            pool.decline()
            return None
        finally:
            for fd in namespaces:
                os.close(fd)
            if child is None:
                await box.kill()

    def _options_fd(
        self,
        spec: LaunchSpec,
        parent_pid: int,
        extra_memory: int,
        *,
        box: bool = False,
        enter: Sequence[int] = (),
    ) -> int:
        """oasis-init's options for `spec`, in a memfd.

        `parent_pid` is the process that starts oasis-init (it exits at once if
        that one is gone); a warm child's address-space limit counts from what
        the zygote had mapped (`extra_memory`), so the code gets the same room.
        `box`: the options of an oasis-init --box; `enter`: a warm child's way
        into one (namespace fds; the box already joined the session's network)."""
        memory = spec.memory + extra_memory if spec.memory is not None else None
        args = self.policy.init_args(
            uid=spec.uid,
            workspace=spec.cwd,
            memory=memory,
            netns_fd=None if enter else spec.netns_fd,
            tmp_size=spec.tmp_size,
            cpu_time=spec.cpu_time,
        )
        for folder in spec.cgroups:
            args += ["--cgroup", folder]
        args += ["--server-pid", str(parent_pid)]
        if box:
            return _options_fd([*args, "--box"])
        for fd in enter:
            args += ["--enter-ns", str(fd)]
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
        self, argv: Sequence[str], cwd: Path, options: int, pass_fds: tuple[int, ...]
    ) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            # Named plainly: its path would tell the code where workspaces live on the host.
            "oasis-init",
            "--args-fd",
            str(options),
            "--",
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            cwd=cwd,
            # oasis-init runs as root before any isolation: the dynamic loader
            # must see no LD_PRELOAD or the like. The code's variables travel
            # as --env and are applied only when the code itself is exec'd.
            env={},
            pass_fds=(options, *pass_fds),
            start_new_session=True,
            executable=self._init,
        )

    async def kill_uid(self, uid: int) -> None:
        """Kill every process of a session uid (the clean-up of level `uid`)."""
        if self.level is Level.UID:
            await asyncio.to_thread(_kill_uid, uid)


# A box is a few mounts and forks of a small program: seconds mean it is stuck.
_BOX_READY_TIMEOUT = 10.0
# The order a warm child enters them: the mount namespace last, as it moves its root.
_ENTERED_NAMESPACES = ("net", "ipc", "uts", "cgroup", "mnt")


async def _box_ready(box: ExecProcess) -> int | None:
    """The pid of the box's init once oasis-init --box has built it; None if it failed."""
    try:
        line = await asyncio.wait_for(box.stdout.readline(), _BOX_READY_TIMEOUT)
    except TimeoutError:
        line = b""
    word, _, pid = line.decode(errors="replace").partition(" ")
    if word == "ready" and pid.strip().isdigit():
        return int(pid)
    problem = (await box.stderr.read(4096)).decode(errors="replace").strip() if not line else ""
    log.warning("warm box did not start (%s); starting cold", problem or repr(line))
    return None


def _open_namespaces(pid: int, *, supervisor: int) -> list[int]:
    """The box init's pid namespace, then the ones a warm child enters, as open fds.

    The pid is pinned first (a pidfd), checked to be the box supervisor's child,
    and checked alive after the opens: were it reused, the child would enter
    some other process's namespaces."""
    opened: list[int] = []
    pinned = os.pidfd_open(pid)
    try:
        if _parent_of(pid) != supervisor:
            raise OSError(f"process {pid} is not the box's init")
        for kind in ("pid", *_ENTERED_NAMESPACES):
            opened.append(os.open(f"/proc/{pid}/ns/{kind}", os.O_RDONLY | os.O_CLOEXEC))
        signal.pidfd_send_signal(pinned, 0)  # still the same process: the opens were its own
        kinds = ("pid", *_ENTERED_NAMESPACES)
        for kind, fd in zip(kinds, opened, strict=True):
            own = os.stat(f"/proc/self/ns/{kind}").st_ino
            if kind in ("pid", "mnt") and os.fstat(fd).st_ino == own:
                raise OSError(f"the box shares the server's {kind} namespace")
    except BaseException:
        for fd in opened:
            os.close(fd)
        raise
    finally:
        os.close(pinned)
    return opened


def _parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/status", "rb") as status:
        for line in status:
            if line.startswith(b"PPid:"):
                return int(line.split()[1])
    return 0


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
