"""Live interpreters: a session's Python or Node.js process kept between its
keep_state executions, so that variables, imports and open objects persist.

A live interpreter is an ordinary run's process (same uid, namespaces,
seccomp, rlimits and session cgroup) whose prelude, told `keep_state`, waits
for the next start message instead of exiting. Between executions nothing of
it runs: its run cgroup is frozen, and every other process of that cgroup
(the code's children) is killed when an execution ends. Which processes are the
interpreter's own (its supervisors and itself) is read from the run cgroup
once, when the prelude says it is ready and before any code has run.

`LiveStates` holds them per (session, runtime): at most one execution in each
at a time, at most `max_states` at once (the least recently used ends first),
and each ended after `idle` seconds without an execution. Why a state ended
is kept, so the session's next keep_state execution can say so.

RLIMIT_CPU counts a process's whole life, and the server may not change the
limits of another user's process here (no CAP_SYS_RESOURCE in every
container): a live interpreter is started without a CPU rlimit worth the
name, and its executions (execution.py) are each held to SANDBOX_CPU_TIME by
watching the run cgroup's CPU time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

from .cgroups import RunGroup
from .errors import Code, RequestError
from .prestart import Launched

log = logging.getLogger(__name__)

Key = tuple[str, str]
"""(session id, runtime name)"""

_OWN_PROCESSES = 3
"""oasis-init, the pid namespace's init and the interpreter (or a box's two and a warm child)."""
_SETTLE_WAIT = 1.0
"""Seconds to wait for the code's killed processes to exit before the run is frozen."""
_REMEMBERED_LOSSES = 10_000


@dataclass(frozen=True)
class StatefulInfo:
    """What GetInfo reports of live interpreters."""

    enabled: bool
    reason: str
    max_states: int
    idle: float
    live: int


@dataclass(eq=False)
class LiveState:
    """One session's live interpreter of one runtime."""

    key: Key
    path: Path
    """The session's workspace (the state ends when it goes)."""
    launched: Launched
    group: RunGroup
    pidfd: int
    """The interpreter itself (a pidfd names it even once its pid is reused)."""
    pid: int
    keep: frozenset[int]
    """Its supervisors and itself: the processes of the run cgroup that are not the code's."""
    last_used: float = field(default_factory=time.monotonic)
    settling: asyncio.Task[None] | None = None
    """Making sure the interpreter is stopped after its last execution answered."""

    @classmethod
    def adopt(cls, key: Key, path: Path, launched: Launched) -> LiveState:
        """Take a started process whose prelude said it is ready (no code has run
        in it yet): what its run cgroup holds now is the interpreter's own."""
        assert launched.group is not None
        keep = frozenset(launched.group.procs())
        if len(keep) > _OWN_PROCESSES:
            raise OSError(f"the new interpreter's run holds {len(keep)} processes, not its own")
        pid = _interpreter(launched.process.pid, keep)
        pidfd = os.pidfd_open(pid)
        return cls(key, path, launched, launched.group, pidfd, pid, keep)

    @property
    def alive(self) -> bool:
        return self.launched.alive

    async def resume(self) -> float:
        """Let it run again (once the last execution's freeze has settled); the CPU
        time its run has used so far."""
        if self.settling is not None:
            await self.settling
        self.group.rebase()
        before = self.group.cpu_time()
        self.group.thaw()
        self._signal(signal.SIGCONT)
        return before

    def interrupt(self) -> None:
        """SIGINT: KeyboardInterrupt in Python; Node.js stops waiting for the evaluation."""
        self._signal(signal.SIGINT)

    def suspend(self) -> None:
        """Stop the interpreter and kill the code's other processes, now; `settling`
        then freezes the run once they are gone. The execution answers in between;
        the next one waits for it (`resume`).

        SIGSTOP first: a process with a stop pending cannot fork. The freezer
        then holds it: a stopped process is woken by a SIGCONT the code can arrange
        for itself (a child's exit signal, a timer), a frozen one is not. The
        killed processes are let die first: one frozen with SIGKILL pending
        lingers until the thaw (cgroup v1)."""
        self._signal(signal.SIGSTOP)
        self.group.kill_others(self.keep)
        self.last_used = time.monotonic()
        self.settling = asyncio.create_task(self._settle(), name=f"settle-state-{self.key[0]}")

    async def _settle(self) -> None:
        try:
            deadline = time.monotonic() + _SETTLE_WAIT
            while self.group.procs() - self.keep and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.001)  # killed processes leave the cgroup as they exit
            # Not waited for: a task caught mid-stop may stay "freezing" until it next
            # wakes (seen: a second of v1 FREEZING), and freezes then, before it runs.
            self.group.freeze()
            # Anything forked by a thread that had not stopped yet (it dies at the thaw).
            self.group.kill_others(self.keep)
        except OSError:
            log.exception("could not settle the live interpreter of session %s", self.key[0])

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(self.pidfd, sig)

    async def end(self) -> None:
        """Kill the interpreter and its run. A frozen process dies of SIGKILL only once
        thawed (cgroup v1): it is thawed with the signal pending, so it runs no more code."""
        if self.settling is not None:
            self.settling.cancel()
            await asyncio.gather(self.settling, return_exceptions=True)
        self._signal(signal.SIGKILL)
        with contextlib.suppress(OSError):
            self.group.thaw()
        try:
            await self.launched.discard()
        finally:
            if self.pidfd >= 0:
                os.close(self.pidfd)
                self.pidfd = -1


class LiveStates:
    def __init__(self, *, enabled: bool, reason: str, max_states: int, idle: float) -> None:
        self.enabled = enabled
        self.reason = reason
        """Why keep_state is refused, when not `enabled`."""
        self._max = max_states
        self._idle = idle
        self._states: OrderedDict[Key, LiveState] = OrderedDict()
        """Least recently used first."""
        self._busy: dict[Key, str] = {}
        """The execution running in each state (or about to make it)."""
        self._lost: OrderedDict[Key, str] = OrderedDict()
        self._ending: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        self._closed = False

    def open(self) -> None:
        if self.enabled:
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="state-sweeper")

    def info(self) -> StatefulInfo:
        return StatefulInfo(self.enabled, self.reason, self._max, self._idle, len(self._states))

    # -- one execution's turn ---------------------------------------------------

    def reserve(self, key: Key, execution_id: str) -> None:
        """Claim the state of `key` for one execution; RequestError when it cannot run."""
        if not self.enabled:
            raise RequestError(
                Code.FAILED_PRECONDITION, f"keep_state is not available: {self.reason}"
            )
        running = self._busy.get(key)
        if running is not None:
            raise RequestError(
                Code.FAILED_PRECONDITION,
                f"session {key[0]!r} is busy: execution {running!r} is running in its live "
                f"{key[1]} interpreter; send the next keep_state execution after it ends",
            )
        self._busy[key] = execution_id

    def free(self, key: Key, execution_id: str) -> None:
        """The execution is over with the state (idempotent)."""
        if self._busy.get(key) == execution_id:
            del self._busy[key]

    def take(self, key: Key) -> tuple[LiveState | None, str]:
        """The live state of `key`, or None and why the last one ended ("" if never made)."""
        state = self._states.get(key)
        if state is not None and not state.alive:
            self._forget(key, "the interpreter exited between executions")
            self._end_later(state)
            state = None
        if state is not None:
            self._states.move_to_end(key)
            return state, ""
        return None, self._lost.pop(key, "")

    def add(self, state: LiveState) -> None:
        """Register a new live state, ending the least recently used beyond the cap."""
        if self._closed:
            raise RequestError(Code.UNAVAILABLE, "the sandbox server is shutting down")
        while len(self._states) >= self._max:
            victim = next((k for k in self._states if k not in self._busy), None)
            if victim is None:
                raise RequestError(
                    Code.RESOURCE_EXHAUSTED,
                    f"all {self._max} live interpreters are running executions "
                    "(SANDBOX_MAX_STATES); retry later",
                )
            self._end_later(
                self._forget(
                    victim,
                    f"it was ended to make room: at most {self._max} live interpreters are "
                    "kept (SANDBOX_MAX_STATES), and this one was the least recently used",
                )
            )
        self._states[state.key] = state

    async def end(self, key: Key, reason: str) -> bool:
        """End the live state of `key`; False when there was none."""
        state = self._states.get(key)
        if state is None:
            return False
        await self._forget(key, reason).end()
        return True

    # -- whole sessions ---------------------------------------------------------

    async def reset(self, session_id: str) -> bool:
        """End the session's live states (its files stay); False when it had none."""
        keys = [key for key in self._states if key[0] == session_id]
        for key in keys:
            if key in self._busy:
                raise RequestError(
                    Code.FAILED_PRECONDITION,
                    f"session {session_id!r} is busy: execution {self._busy[key]!r} runs in its "
                    "live interpreter; reset it after the execution ends",
                )
        # Forgotten before any await: an execution starting meanwhile makes a new one.
        states = [self._forget(key, "it was reset (ResetState)") for key in keys]
        for state in states:
            await state.end()
        return bool(states)

    async def release_workspace(self, path: Path) -> None:
        """The workspace at `path` goes away: its states end first."""
        keys = [key for key, state in self._states.items() if state.path == path]
        for key in keys:
            await self.end(key, "the session's workspace was removed (deleted or expired)")

    async def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        states = list(self._states.values())
        self._states.clear()
        await asyncio.gather(*(state.end() for state in states), return_exceptions=True)
        await asyncio.gather(*self._ending, return_exceptions=True)

    # -- ending ------------------------------------------------------------------

    def _forget(self, key: Key, reason: str) -> LiveState:
        state = self._states.pop(key)
        self._lost[key] = reason
        self._lost.move_to_end(key)
        while len(self._lost) > _REMEMBERED_LOSSES:
            self._lost.popitem(last=False)
        log.info("live %s interpreter of session %s ended: %s", key[1], key[0], reason)
        return state

    def lose(self, key: Key, state: LiveState, reason: str) -> None:
        """A state that died or was killed during an execution (its run ends it)."""
        if self._states.get(key) is state:
            self._forget(key, reason)

    def _end_later(self, state: LiveState) -> None:
        task = asyncio.create_task(state.end(), name=f"end-state-{state.key[0]}")
        self._ending.add(task)
        task.add_done_callback(self._ending.discard)

    async def _sweep_forever(self) -> None:
        interval = min(max(self._idle / 4, 0.05), 30.0)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for key, state in list(self._states.items()):
                if key not in self._busy and now - state.last_used >= self._idle:
                    reason = f"it was idle for {self._idle:g} s (SANDBOX_STATE_IDLE)"
                    self._end_later(self._forget(key, reason))


def _interpreter(started: int, keep: frozenset[int]) -> int:
    """The end of the chain of `keep` processes from the one the launcher started:
    oasis-init, the pid namespace's init, the interpreter (a warm child is itself
    the end). Start times cannot tell them apart: they count in 10 ms ticks."""
    parents = {pid: int(_stat_fields(pid)[1]) for pid in keep}
    current = started
    for _ in range(len(keep)):
        children = [pid for pid, parent in parents.items() if parent == current]
        if len(children) != 1:
            break
        current = children[0]
    if current not in keep:
        raise OSError(f"the interpreter started as {started} is not in its run's cgroup")
    return current


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name (which may hold spaces): field 3 onwards."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        text = stat.read().decode()
    return text[text.rindex(")") + 2 :].split()
