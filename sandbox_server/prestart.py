"""Processes started ahead of the executions that will use them.

Most of a short run's time goes into starting its process: the run's cgroup,
the box of namespaces, the fork or exec of the interpreter. None of it depends
on the request, whose code and env travel in the start message. So under
SANDBOX_LAUNCHER=warm a process is started ahead and waits for that message:
for runs without a session, a few per runtime, each with a scratch workspace
of its own; for a session, one after each of its runs (its uid, its workspace
and its network are known by then). A spare serves one execution, as any
process does, and is replaced in the background.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections import OrderedDict
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .cgroups import RunGroup
from .channel import Pipes, open_pipes
from .launcher import Launcher, LaunchSpec, Process, WarmStart
from .runtimes import PACKAGES_DIR, Runtime
from .sessions import Workspace, Workspaces

log = logging.getLogger(__name__)

_BASE_PATH = "/usr/local/bin:/usr/bin:/bin"
_CLOSE_WAIT = 10.0
# How long a spare waits for its runtime's warm pool to come up (its imports).
_POOL_WAIT = 60.0
# How long a session's run waits for its spare still starting before starting its own.
_PREPARING_WAIT = 0.25


@dataclass(eq=False)
class Launched:
    """A started process, its side of the channel and its cgroup: all a run needs."""

    process: Process
    group: RunGroup | None
    pipes: Pipes
    """The server's side of the channel to the prelude."""

    @property
    def alive(self) -> bool:
        return self.process.alive

    def claim(self) -> None:
        """The run starts now: only what happens from here is its own."""
        if self.group is not None:
            self.group.rebase()

    async def discard(self) -> None:
        """Kill the unused process and release what it held."""
        try:
            await self.process.kill()
        finally:
            self.pipes.close()
            if self.group is not None:
                await self.group.finish()


def code_path(runtime: Runtime) -> str:
    return ":".join([*runtime.path_dirs, _BASE_PATH])


def base_env(runtime: Runtime, workspace: Path) -> dict[str, str]:
    """The code's environment before the request's own variables (sent with the code)."""
    return {"PATH": code_path(runtime), "HOME": str(workspace), "LANG": "C.UTF-8", **runtime.env}


async def launch(
    *,
    runtime: Runtime,
    launcher: Launcher,
    workspaces: Workspaces,
    workspace: Workspace,
    env: Mapping[str, str] | None = None,
    cpu_time: float | None = None,
) -> Launched:
    """Start `runtime`'s prelude for one run in `workspace`; it waits for its start message.

    `env`: the request's variables, when it is known (they travel in the start
    message too; given here, they also hold for the interpreter's own start, as
    LD_LIBRARY_PATH or LC_ALL must). `cpu_time`: RLIMIT_CPU, when not the
    per-execution limit."""
    # The channel is a pair of pipes rather than a socket: a runtime can
    # reopen a pipe through /proc/self/fd as close-on-exec and close the
    # inherited number, so the code's child processes never get it (Node
    # has no other way to stop a socket fd from leaking into children).
    to_code, to_server = os.pipe(), os.pipe()
    theirs = (to_code[0], to_server[1])
    if workspace.uid is not None:
        # Reopening through /proc checks the pipe's owner: make it the session's.
        for fd in theirs:
            os.fchown(fd, workspace.uid, workspace.uid)
    group: RunGroup | None = None
    try:
        network = await workspaces.network(workspace)
        group = await start_group(workspaces, workspace)
        process = await launcher.start(
            LaunchSpec(
                argv=[*runtime.argv, *map(str, theirs)],
                cwd=workspace.path,
                env={**base_env(runtime, workspace.path), **(env or {})},
                pass_fds=theirs,
                uid=workspace.uid,
                memory=runtime.address_space,
                netns_fd=network.fd if network else None,
                cgroups=group.folders if group else (),
                cpu_time=cpu_time,
                warm=WarmStart(
                    runtime=runtime.name,
                    channel=theirs,
                    packages=workspace.path / PACKAGES_DIR / runtime.name,
                ),
            )
        )
    except BaseException:
        os.close(to_code[1])
        os.close(to_server[0])
        if group is not None:
            await group.finish()
        raise
    finally:
        for fd in theirs:
            os.close(fd)
    try:
        pipes = await open_pipes(to_server[0], to_code[1])
    except BaseException:
        await process.kill()
        if group is not None:
            await group.finish()
        raise
    return Launched(process, group, pipes)


async def start_group(workspaces: Workspaces, workspace: Workspace) -> RunGroup | None:
    """A run's cgroup inside its session's: the session's caps, this run's CPU time."""
    session = await workspaces.cgroup(workspace)
    return await session.start_run() if session is not None else None


# Variables read once, as the interpreter starts (the loader, the C library,
# Node's own options): a request that sets one gets a process started for it.
_START_ONLY_PREFIXES = ("LD_", "LC_", "MALLOC_", "GLIBC_", "NODE_", "UV_", "OPENSSL_", "PYTHON")
_START_ONLY_NAMES = frozenset({"LANG", "LANGUAGE", "TZ", "TMPDIR"})


def servable(env: Mapping[str, str]) -> bool:
    """Whether a process started ahead can run a request with this env (applied
    once the request arrives), or one must be started with it."""
    return not any(
        name.startswith(_START_ONLY_PREFIXES) or name in _START_ONLY_NAMES for name in env
    )


@dataclass(frozen=True)
class SpareState:
    """What GetInfo reports of one runtime's spares."""

    runtime: str
    waiting: int
    served: int


@dataclass(eq=False)
class _Spare:
    workspace: Workspace
    launched: Launched

    async def drop(self, workspaces: Workspaces, *, scratch: bool) -> None:
        try:
            await self.launched.discard()
        finally:
            if scratch:
                await workspaces.discard_scratch(self.workspace)


class Spares:
    """Started processes waiting for their executions, by runtime and workspace.

    `scratch`: how many wait per runtime for runs without a session;
    `sessions`: at most how many wait for sessions' next runs (the least
    recently prepared goes first). Both bound the idle memory."""

    def __init__(
        self,
        runtimes: dict[str, Runtime],
        launcher: Launcher,
        workspaces: Workspaces,
        *,
        scratch: int,
        sessions: int,
    ) -> None:
        self._runtimes = runtimes
        self._launcher = launcher
        self._workspaces = workspaces
        self._scratch_size = scratch
        self._session_size = sessions
        self._scratch: dict[str, list[_Spare]] = {name: [] for name in runtimes}
        self._filling: dict[str, int] = dict.fromkeys(runtimes, 0)
        self._sessions: OrderedDict[tuple[str, Path], _Spare] = OrderedDict()
        self._preparing: dict[tuple[str, Path], asyncio.Task[None]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = asyncio.Event()
        self._served = dict.fromkeys(runtimes, 0)

    def open(self) -> None:
        for runtime in self._runtimes.values():
            self.replenish(runtime)

    # -- runs without a session ----------------------------------------------

    def take_scratch(self, runtime: Runtime) -> tuple[Workspace, Launched] | None:
        """A scratch workspace with a process waiting in it, or None (then more
        are started at once: none waits)."""
        queue = self._scratch[runtime.name]
        while queue:
            spare = queue.pop(0)
            # usable() is checked by the run itself, once its input files are in.
            if spare.launched.alive:
                self._served[runtime.name] += 1
                return spare.workspace, spare.launched
            self._background(spare.drop(self._workspaces, scratch=True), "drop-spare")
        self.replenish(runtime)
        return None

    def replenish(self, runtime: Runtime) -> None:
        """Start what `runtime`'s runs without a session lack, in the background.

        Called when a run that took one ends: started earlier, the new one
        would compete with that run for the CPU."""
        missing = (
            self._scratch_size - len(self._scratch[runtime.name]) - self._filling[runtime.name]
        )
        for _ in range(max(missing, 0) if not self._closing.is_set() else 0):
            self._filling[runtime.name] += 1
            self._background(self._make_scratch(runtime), f"spare-{runtime.name}")

    async def _make_scratch(self, runtime: Runtime) -> None:
        try:
            workspace = await self._workspaces.create_scratch("spare")
            try:
                launched = await self._launch(runtime, workspace)
            except BaseException:
                await self._workspaces.discard_scratch(workspace)
                raise
            if launched is None:
                await self._workspaces.discard_scratch(workspace)
                return
            spare = _Spare(workspace, launched)
            if self._closing.is_set():
                await spare.drop(self._workspaces, scratch=True)
            else:
                self._scratch[runtime.name].append(spare)
        finally:
            self._filling[runtime.name] -= 1

    # -- sessions ---------------------------------------------------------------

    async def take(self, runtime: Runtime, workspace: Workspace) -> Launched | None:
        """The process waiting for this session's next run of `runtime`, or None.

        One still starting is waited for a moment: it is further along than a new
        start would be (unless it waits for a zygote coming up)."""
        key = (runtime.name, workspace.path)
        preparing = self._preparing.get(key)
        if preparing is not None:
            await asyncio.wait([preparing], timeout=_PREPARING_WAIT)
        spare = self._sessions.pop(key, None)
        if spare is None:
            return None
        launched = spare.launched
        if spare.workspace == workspace and launched.alive:  # usable(): by the run
            self._served[runtime.name] += 1
            return launched
        self._background(launched.discard(), "drop-spare")
        return None

    def prepare(self, runtime: Runtime, workspace: Workspace) -> None:
        """Start a process for the session's next run of `runtime`, in the background."""
        key = (runtime.name, workspace.path)
        if (
            self._closing.is_set()
            or self._session_size <= 0
            or key in self._sessions
            or key in self._preparing
            # A session deleted meanwhile: its release has already run.
            or not self._workspaces.holds(workspace)
        ):
            return
        task = self._background(self._make_for_session(runtime, workspace, key), "spare-session")
        self._preparing[key] = task

    async def _make_for_session(
        self, runtime: Runtime, workspace: Workspace, key: tuple[str, Path]
    ) -> None:
        try:
            launched = await self._launch(runtime, workspace)
        finally:
            self._preparing.pop(key, None)
        if launched is None:
            return
        if self._closing.is_set():
            await launched.discard()
            return
        self._sessions[key] = _Spare(workspace, launched)
        while len(self._sessions) > self._session_size:
            _, oldest = self._sessions.popitem(last=False)
            self._background(oldest.launched.discard(), "drop-spare")

    async def release(self, path: Path) -> None:
        """The workspace at `path` goes away: stop what waits in it (before its files do)."""
        # Both tables are cleared before any await: a start ending meanwhile
        # cannot add to them (its session no longer `holds`), nor make a key vanish.
        tasks = [self._preparing.pop(key) for key in list(self._preparing) if key[1] == path]
        spares = [self._sessions.pop(key) for key in list(self._sessions) if key[1] == path]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for spare in spares:
            try:
                await spare.launched.discard()
            except Exception:  # the workspace's cgroup removal still kills what is left
                log.exception("could not stop a spare process in %s", path)

    # -- both -------------------------------------------------------------------

    def usable(self, runtime: Runtime, workspace: Workspace, launched: Launched) -> bool:
        """Whether the process is what a start now would give: preloaded exactly
        when the warm pool is up and the workspace's own packages shadow nothing
        it preloaded (they may have come since: installed, or sent as files)."""
        pool = self._launcher.pools.get(runtime.name)
        if pool is None:
            return True
        packages = workspace.path / PACKAGES_DIR / runtime.name
        return launched.process.preloaded == pool.accepts(packages)

    async def _launch(self, runtime: Runtime, workspace: Workspace) -> Launched | None:
        """A process for a run to come; None when the spares closed meanwhile."""
        pool = self._launcher.pools.get(runtime.name)
        if pool is not None and not pool.ready:
            # Made while the pool starts, a spare would be cold and then unused.
            waits = {
                asyncio.ensure_future(pool.wait_ready()),
                asyncio.ensure_future(self._closing.wait()),
            }
            try:
                await asyncio.wait(waits, timeout=_POOL_WAIT, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
        if self._closing.is_set():
            return None
        return await launch(
            runtime=runtime,
            launcher=self._launcher,
            workspaces=self._workspaces,
            workspace=workspace,
        )

    def _background(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("%s failed", task.get_name(), exc_info=error)

    def states(self) -> tuple[SpareState, ...]:
        waiting = {name: len(queue) for name, queue in self._scratch.items()}
        for name, _ in self._sessions:
            waiting[name] += 1
        return tuple(SpareState(name, waiting[name], self._served[name]) for name in self._runtimes)

    async def close(self) -> None:
        """Stop every waiting process and the starts under way."""
        self._closing.set()
        # Starts under way end by themselves in moments (and drop what they
        # made); cancelled only if stuck. Drops they scheduled are waited for too.
        for _ in range(3):
            if not self._tasks:
                break
            _, stuck = await asyncio.wait(set(self._tasks), timeout=_CLOSE_WAIT)
            for task in stuck:
                task.cancel()
            await asyncio.gather(*stuck, return_exceptions=True)
        waiting = [spare for queue in self._scratch.values() for spare in queue]
        for queue in self._scratch.values():
            queue.clear()
        sessions = list(self._sessions.values())
        self._sessions.clear()
        results = await asyncio.gather(
            *(spare.drop(self._workspaces, scratch=True) for spare in waiting),
            *(spare.launched.discard() for spare in sessions),
            return_exceptions=True,
        )
        for error in results:
            if isinstance(error, BaseException):
                log.error("could not stop a spare process", exc_info=error)
