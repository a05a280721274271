"""A keep_state execution's run: its code goes to the session's live interpreter.

`LiveRun` is `Run` (execution.py) with another beginning and end: the process
is the session's live interpreter (states.py), made by the first keep_state
execution and woken for each later one; the code is done when the prelude
reports `idle`, and the interpreter is then stopped instead of torn down. Like
`Run`, it reads the execution's state directly: the two are one state machine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
import time
from pathlib import Path

from .channel import PreludeChannel
from .execution import DRAIN_AFTER_EXIT, Execution, Run, clip, seconds_text
from .launcher import Process
from .launcher.process import unread_bytes
from .model import LogEvent, Result, Status, Stream
from .outputs import MAX_ERROR
from .states import LiveState

log = logging.getLogger(__name__)


class LiveRun(Run):
    """A keep_state execution: its code runs in the session's live interpreter
    (states.py), which is made on the first one and stopped after each.

    The code is done when the prelude reports `idle`; a timeout or cancel first
    interrupts it (SIGINT) and kills the interpreter only if it does not stop
    within `_INTERRUPT_GRACE`.
    """

    def __init__(
        self,
        execution: Execution,
        channel: PreludeChannel,
        workspace: Path,
        started: float,
        state: LiveState | None,
        lost: str,
    ) -> None:
        super().__init__(execution, channel, workspace, started)
        self.state = state
        self.lost = lost
        """Why the session's earlier state is gone ("" when there was none)."""
        assert execution._states is not None and execution.state_key is not None
        self.states = execution._states
        self.key = execution.state_key
        self.pumps: list[asyncio.Task[None]] = []

    async def execute(self) -> Result | None:
        ex = self.ex
        deadline = self.started + ex.timeout
        kept = False
        state = self.state
        try:
            if self.lost:
                await self._notice(
                    f"[sandbox] this execution starts with an empty interpreter: the session's "
                    f"earlier state is gone ({self.lost})\n"
                )
            if state is None:
                try:
                    state = self.state = await self._new_state(deadline)
                except _NotStarted as exc:
                    return Result(
                        status=exc.status,
                        exit_code=-1,
                        error=exc.message,
                        duration=time.monotonic() - self.started,
                    )
            else:
                self.channel.attach(state.launched.pipes)
            before = await state.resume()
            ending = await self._run_code(state, deadline, before)
            if ending is None:  # idle: the interpreter keeps its state
                state.suspend()
                await self._drained(state.launched.process)
                kept = True
                usage = state.group.usage()
                usage = dataclasses.replace(usage, cpu_time=usage.cpu_time - before)
                result = await self._result(self.exit_report, self.timed_out, usage)
                self.states.free(self.key, ex.execution_id)
                notes = []
                if self.timed_out or self.stopped:
                    notes.append("the code was interrupted, and the interpreter keeps its state")
                return self._with_notes(dataclasses.replace(result, state_kept=True), notes)
            self.states.lose(self.key, state, ending)
            process = state.launched.process
            await process.kill()
            await asyncio.wait(self.pumps[:2], timeout=DRAIN_AFTER_EXIT)
            usage = await state.group.finish()
            # Killed for its CPU time, it is reported as the rlimit would have ended it.
            code = -signal.SIGXCPU if self.cpu_exceeded else process.returncode
            result = await self._result(code, self.timed_out, usage)
            return self._with_notes(result, [f"the interpreter's state is lost: {ending}"])
        finally:
            for task in self.pumps:
                task.cancel()
            await asyncio.gather(*self.pumps, return_exceptions=True)
            self.channel.detach()
            if state is not None and not kept:
                self.states.lose(self.key, state, "its execution ended abnormally")
                await asyncio.shield(state.end())
            self.states.free(self.key, ex.execution_id)

    def _with_notes(self, result: Result, notes: list[str]) -> Result:
        """The result, its error saying what became of the state (and, when the code
        failed in a fresh interpreter, why the earlier state was gone)."""
        if result.status is not Status.OK and self.lost:
            notes.append(
                f"this execution started with an empty interpreter: the session's earlier "
                f"state is gone ({self.lost})"
            )
        if not notes:
            return result
        error = "\n".join(filter(None, [result.error, *(f"Note: {note}." for note in notes)]))
        return dataclasses.replace(result, error=clip(error, MAX_ERROR))

    async def _notice(self, text: str) -> None:
        live = self.logs.add(Stream.STDERR, text.encode())
        if live:
            await self.ex._events.put(LogEvent(Stream.STDERR, live))

    async def _new_state(self, deadline: float) -> LiveState:
        """A process for the session's interpreter, taken over once its prelude is ready."""
        ex = self.ex
        assert ex._lease is not None
        # Not a spare: those have the per-execution RLIMIT_CPU, which would count
        # the interpreter's whole life (`_watch_cpu` holds each execution to it).
        # Without the request's env: no code may run before the prelude says it is
        # ready (NODE_OPTIONS, LD_PRELOAD ...), for what runs then is taken for the
        # interpreter's own. The env reaches the code with each start message.
        launched = await self._launch(env=None, cpu_time=_LIVE_CPU_RLIMIT)
        try:
            if launched.group is None:
                raise RuntimeError("a live interpreter needs a run cgroup")
            self.channel.attach(launched.pipes)
            await self._ready(deadline)
            launched.claim()
            state = LiveState.adopt(self.key, ex._lease.path, launched)
            self.states.add(state)
        except BaseException:
            self.channel.detach()
            await launched.discard()
            raise
        return state

    async def _ready(self, deadline: float) -> None:
        """Until the new interpreter's prelude says it is ready; _NotStarted if it does
        not, or the execution is stopped or times out first."""
        ex = self.ex
        name = ex.execution_id
        reading = asyncio.create_task(self.channel.read(), name=f"ready-{name}")
        stopping = asyncio.create_task(ex._stop.wait(), name=f"stop-{name}")
        try:
            await asyncio.wait(
                {reading, stopping},
                timeout=max(deadline - time.monotonic(), 0),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for task in (reading, stopping):
                task.cancel()
            await asyncio.gather(reading, stopping, return_exceptions=True)
        if reading.done() and not reading.cancelled():
            try:
                message = reading.result()
            except (ValueError, RecursionError) as exc:
                message = {"error": str(exc)}
            if message is not None and message.get("type") == "ready":
                return
            raise _NotStarted(Status.ERROR, f"the interpreter did not start (it sent {message!r})")
        if ex._stop_status is not None:
            raise _NotStarted(ex._stop_status, ex._stop_error)
        if ex._abort is not None:
            raise _NotStarted(Status.ERROR, ex._abort.message)
        raise _NotStarted(
            Status.TIMEOUT,
            f"execution timed out after {seconds_text(ex.timeout)} s while its interpreter started",
        )

    timed_out = False
    stopped = False

    async def _run_code(self, state: LiveState, deadline: float, before: float) -> str | None:
        """Run the code; None when the interpreter is idle again, else why it must end."""
        ex = self.ex
        process = state.launched.process
        name = ex.execution_id
        self.pumps = [
            asyncio.create_task(self._pump(process.stdout, Stream.STDOUT), name=f"stdout-{name}"),
            asyncio.create_task(self._pump(process.stderr, Stream.STDERR), name=f"stderr-{name}"),
            asyncio.create_task(self._serve_channel(), name=f"channel-{name}"),
        ]
        self._spawn(self._watch_cpu(state, before), "cpu")
        try:
            self.channel.send(
                ex._runtime.start_message(
                    ex.spec.code, self.workspace, ex.execution_id, env=ex.spec.env, keep_state=True
                )
            )
            end = await self._until(process, deadline)
            if end == "idle":
                return None
            if end == "exit":
                if self.cpu_exceeded:
                    return f"it used more than the {seconds_text(ex._config.limits.cpu_time)} s of CPU time an execution may use"
                return _exit_reason(await process.wait())
            # A timeout or a stop: interrupt, and keep the state if the code stops in time.
            self.timed_out, self.stopped = end == "timeout", end == "stop"
            # Sent again until the code stops: one that came before the prelude had
            # read its start message is dropped (it may be a late one of the last
            # execution); the prelude raises only one KeyboardInterrupt per execution.
            grace_end = time.monotonic() + _INTERRUPT_GRACE
            while end == "timeout" or end == "stop":
                state.interrupt()
                end = await self._until(
                    process, min(time.monotonic() + _INTERRUPT_EVERY, grace_end)
                )
                if time.monotonic() >= grace_end:
                    break
            if end == "idle":
                return None
            if end == "exit":
                return _exit_reason(await process.wait())
            return (
                f"it did not stop within {seconds_text(_INTERRUPT_GRACE)} s of the interrupt "
                "(KeyboardInterrupt in Python), so it was killed"
            )
        finally:
            for task in [self.pumps[2], *self.side_tasks]:
                task.cancel()
            await asyncio.gather(self.pumps[2], *self.side_tasks, return_exceptions=True)

    async def _watch_cpu(self, state: LiveState, before: float) -> None:
        """Kill the interpreter once this execution's CPU time passes the limit."""
        limit = self.ex._config.limits.cpu_time
        while True:  # the kernel signals nothing at a count: poll
            await asyncio.sleep(_CPU_WATCH_INTERVAL)
            if state.group.cpu_time() - before > limit:
                break
        self.cpu_exceeded = True
        await state.launched.process.kill()

    cpu_exceeded = False

    async def _until(self, process: Process, deadline: float) -> str:
        """Wait for "idle", "exit", "stop" or "timeout" (whichever comes first)."""
        name = self.ex.execution_id
        waits = {
            asyncio.create_task(self.idle.wait(), name=f"idle-{name}"): "idle",
            asyncio.create_task(process.wait(), name=f"exit-{name}"): "exit",
        }
        if not self.stopped and not self.timed_out:
            waits[asyncio.create_task(self.ex._stop.wait(), name=f"stop-{name}")] = "stop"
        try:
            done, _ = await asyncio.wait(
                waits,
                timeout=max(deadline - time.monotonic(), 0),
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for task in waits:
                task.cancel()
            await asyncio.gather(*waits, return_exceptions=True)
        for kind in ("idle", "exit", "stop"):  # an idle report wins over a stop arriving with it
            if any(waits[task] == kind for task in done):
                return kind
        return "timeout"

    async def _drained(self, process: Process) -> None:
        """Wait until the pumps have delivered all the (stopped) code wrote, then stop them."""
        try:
            for _ in range(_DRAIN_ROUNDS):
                if not self._holds_output(process):
                    await asyncio.sleep(0)
                    await asyncio.sleep(0)  # a pump woken by the last bytes runs first
                    if not self._holds_output(process):
                        return
                await asyncio.sleep(0.001)
            log.warning("execution %s: its logs did not drain in time", self.ex.execution_id)
        finally:
            for task in self.pumps[:2]:
                task.cancel()
            await asyncio.gather(*self.pumps[:2], return_exceptions=True)

    def _holds_output(self, process: Process) -> bool:
        return (
            any(self.pumping.values())
            or unread_bytes(process.stdout) > 0
            or unread_bytes(process.stderr) > 0
        )


class _NotStarted(Exception):
    """A new live interpreter did not get ready: the execution ends with this status."""

    def __init__(self, status: Status, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


_LIVE_CPU_RLIMIT = 10**8
"""A live interpreter's RLIMIT_CPU (seconds): its whole life, so in effect none."""
_CPU_WATCH_INTERVAL = 0.1
_INTERRUPT_GRACE = 2.0
_INTERRUPT_EVERY = 0.25
"""Seconds interrupted code of a live interpreter gets to stop before it is killed."""
_DRAIN_ROUNDS = 500


def _exit_reason(code: int) -> str:
    if code < 0 and -code in signal.Signals._value2member_map_:
        return f"the interpreter was killed by signal {signal.Signals(-code).name}"
    return f"the interpreter exited with code {code}"
