"""One execution from start to result: the per-run state machine.

An Execution owns its deadline, its process, the channel to the prelude
running inside that process, and the ordered stream of events for the
client. Adapters (gRPC service, HTTP facade) feed it tool results, input file
chunks and cancel requests, and relay the events it yields.

The end of a run is decided by the process exit, the deadline or a stop
request, never by EOF on the log pipes alone: a grandchild that keeps a pipe
open must not keep the run alive. A prelude may report its exit code before
it exits; once that report and EOF on both log pipes are in, the run's
processes are sent SIGKILL through its cgroup and the client gets its result
at once, while their teardown (milliseconds for a child of a large zygote)
finishes in the background, still counted by shutdown and session deletion.

Longer than our usual ~450 lines on purpose: `Execution` (what adapters call)
and `Run` (one process from launch to result) are one state machine, and
`Run` reads the execution's state (it writes only to its event queue).
Apart, they would need that state as a public surface. The parts with a job
of their own live beside it: channel.py, installer.py, outputs.py, and
live_run.py (a keep_state execution's `Run`).
"""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any

from oasis import _safefs as safefs

from . import outputs
from .cgroups import RunGroup, Usage
from .channel import MAX_TOOL_ARGS, PreludeChannel
from .config import Config
from .errors import RequestError, invalid
from .installer import MAX_PENDING_INSTALLS, Installer
from .isolation import describe_size, limit_hint
from .launcher import Launcher, Process
from .logs import LogCollector
from .model import (
    Event,
    ExecutionSpec,
    LogEvent,
    OutputFile,
    Result,
    Started,
    Status,
    Stream,
    ToolCallEvent,
)
from .outputs import MAX_ERROR
from .prestart import Launched, Spares, code_path, launch, servable, start_group
from .runtimes import Runtime
from .sessions import Workspace, Workspaces
from .states import LiveState, LiveStates

log = logging.getLogger(__name__)

MAX_PENDING_CALLS = 256
"""Tool calls one execution may have outstanding at once."""
DRAIN_AFTER_EXIT = 0.5


class _End:
    """Marks the end of the event queue."""


class Execution:
    def __init__(
        self,
        spec: ExecutionSpec,
        *,
        execution_id: str,
        timeout: float,
        runtime: Runtime,
        config: Config,
        launcher: Launcher,
        workspaces: Workspaces,
        spares: Spares | None = None,
        states: LiveStates | None = None,
        on_close: Callable[[Execution], None],
    ) -> None:
        self.spec = spec
        self.execution_id = execution_id
        self.timeout = timeout
        self._runtime = runtime
        self._config = config
        self._launcher = launcher
        self._workspaces = workspaces
        self._spares = spares
        self._spare: Launched | None = None
        """A process started ahead for this run, until the run takes it."""
        self._states = states
        self.state_key = (spec.session_id, runtime.name) if spec.keep_state else None
        """keep_state: the live interpreter this execution runs in."""
        self._on_close = on_close
        # Bounded: a slow client slows the code down instead of filling memory.
        self._events: asyncio.Queue[Event | _End] = asyncio.Queue(maxsize=32)
        self._task: asyncio.Task[None] | None = None
        self._stop = asyncio.Event()
        self._stop_status: Status | None = None
        self._stop_error = ""
        self._abort: RequestError | None = None
        self._uploads = {f.name: f for f in spec.files if f.chunked}
        self._writers: dict[str, safefs.AtomicWriter] = {}
        self._uploads_done = asyncio.Event()
        self._workspace: Path | None = None
        self._workspace_ready = asyncio.Event()
        self._uid: int | None = None
        self._lease: Workspace | None = None
        self._channel: PreludeChannel | None = None  # set when the run starts
        self._closed = False
        self.answered = False
        """The client has its result; what is left is tearing killed processes down."""

    # -- what adapters call -------------------------------------------------

    async def events(self) -> AsyncIterator[Event]:
        """The run's events, ending with its Result; raises RequestError on a protocol error."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=f"execution-{self.execution_id}")
        while True:
            event = await self._events.get()
            if isinstance(event, _End):
                break
            yield event
            if isinstance(event, Result):
                return  # the teardown after it is none of the client's business
        if self._abort is not None:
            raise self._abort

    async def send_tool_result(self, call_id: str, data: str, error: str) -> None:
        channel = self._channel
        reply_id = channel.take_call(call_id) if channel is not None else None
        if channel is None or reply_id is None:
            raise invalid(f"tool_result for unknown call_id {call_id!r}")
        await channel.reply({"type": "tool_result", "id": reply_id, "data": data, "error": error})

    async def add_file_chunk(self, name: str, data: bytes, eof: bool) -> None:
        declared = self._uploads.get(name)
        if declared is None:
            raise invalid(
                f"file_chunk for {name!r}, which is not a pending input file "
                "(declare it in start.files with empty data and its size)"
            )
        writer = self._writers.get(name)
        if writer is None:
            await self._workspace_ready.wait()
            assert self._workspace is not None
            try:
                writer = await asyncio.to_thread(
                    safefs.AtomicWriter, self._workspace, name, owner=self._uid
                )
            except safefs.UnsafePath as exc:
                raise invalid(f"input file: {exc}") from None
            self._writers[name] = writer
        if writer.size + len(data) > declared.size:
            raise invalid(f"input file {name!r} is larger than its declared size {declared.size}")
        try:
            await asyncio.to_thread(writer.write, data)
        except OSError as exc:
            raise invalid(self._write_failure(name, exc)) from None
        if eof:
            if writer.size != declared.size:
                raise invalid(
                    f"input file {name!r}: received {writer.size} bytes, declared {declared.size}"
                )
            del self._uploads[name], self._writers[name]
            try:
                await asyncio.to_thread(writer.commit)
            except safefs.UnsafePath as exc:
                raise invalid(f"input file: {exc}") from None
            if not self._uploads:
                self._uploads_done.set()

    def _write_failure(self, name: str, error: OSError) -> str:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            limits = self._config.limits
            return (
                f"input file {name!r} does not fit the workspace quota of "
                f"{describe_size(limits.workspace_size)} and {limits.workspace_files} files "
                "(SANDBOX_WORKSPACE_SIZE, SANDBOX_WORKSPACE_FILES)"
            )
        return f"input file {name!r} could not be written: {error.strerror}"

    def requests_ended(self) -> None:
        """The client sent its last message: input files still missing never will arrive."""
        if self._uploads:
            self.fail(
                invalid(
                    f"the request stream ended before these input files were complete: {', '.join(sorted(self._uploads))}"
                )
            )

    def cancel(self) -> None:
        self.stop(Status.CANCELLED, "the execution was cancelled by the client")

    def stop(self, status: Status, error: str) -> None:
        """Stop the code now; the result gets this status and error."""
        if self._stop_status is None:
            self._stop_status, self._stop_error = status, error
        self._stop.set()

    def fail(self, error: RequestError) -> None:
        """The client broke the protocol: kill the code and end the RPC with this error."""
        if self._abort is None:
            self._abort = error
        self._stop.set()

    async def aclose(self) -> None:
        """Stop and clean up; the process tree and a scratch workspace are gone afterwards,
        or, once the result was given, are being torn down (`on_close` tells when done)."""
        if self._closed:
            return
        self._closed = True
        if self.answered and self._task is not None and not self._task.done():
            for writer in self._writers.values():
                writer.abort()
            self._task.add_done_callback(lambda _: self._on_close(self))
            return
        try:
            if self._task is not None:
                self._stop_error = self._stop_error or "the client went away"
                self._stop_status = self._stop_status or Status.CANCELLED
                self._stop.set()
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
            for writer in self._writers.values():
                writer.abort()
        finally:
            self._on_close(self)

    async def __aenter__(self) -> Execution:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- the run ------------------------------------------------------------

    async def _run(self) -> None:
        session_id = self.spec.session_id
        spares = self._spares if servable(self.spec.env) else None
        scratch = None
        taken = spares.take_scratch(self._runtime) if spares and not session_id else None
        if taken is not None:
            scratch, self._spare = taken
        try:
            async with self._workspaces.lease(
                session_id, self.execution_id, scratch=scratch
            ) as lease:
                try:
                    state, lost = None, ""
                    if self.state_key is not None:
                        assert self._states is not None
                        state, lost = self._states.take(self.state_key)
                    await self._events.put(
                        Started(
                            self.execution_id,
                            session_id,
                            self._runtime.name,
                            fresh_state=self.state_key is not None and state is None,
                            fresh_state_reason=lost,
                        )
                    )
                    self._workspace, self._uid, self._lease = lease.path, lease.uid, lease
                    if spares is not None and session_id and self.state_key is None:
                        self._spare = await spares.take(self._runtime, lease)
                    self._workspace_ready.set()
                    result = await self._prepare_and_execute(lease.path, state, lost)
                    if result is not None:
                        await self._answer(result)
                finally:
                    if self._spare is not None:  # the run ended before it started its code
                        await self._spare.discard()
                if spares is not None and session_id and self.state_key is None:
                    # After the teardown: a start would compete with sending the result.
                    spares.prepare(self._runtime, lease)
        except RequestError as exc:
            self.fail(exc)
        except Exception as exc:
            # A bug of ours must still end the stream with an answer, not a hang.
            log.exception("execution %s failed inside the server", self.execution_id)
            await self._answer(
                Result(status=Status.ERROR, exit_code=-1, error=f"internal sandbox error: {exc!r}")
            )
        finally:
            if scratch is not None and spares is not None:
                spares.replenish(self._runtime)  # the replacement of the one this run took
        # Not in a finally: when this task is cancelled nobody reads the queue any more.
        if not self.answered:
            await self._events.put(_End())

    async def _answer(self, result: Result) -> None:
        """Give the client its result (once; not after a protocol error)."""
        if self.answered or self._abort is not None:
            return
        # Set once the Result is queued, not before: a client leaving while the
        # queue is full must still cancel the task (aclose), not leave it blocked.
        await self._events.put(result)
        self.answered = True
        if self.spec.session_id:
            self._workspaces.settle(self.spec.session_id, self.execution_id)

    async def _prepare_and_execute(
        self, workspace: Path, state: LiveState | None, lost: str
    ) -> Result | None:
        started = time.monotonic()
        try:
            for file in self.spec.files:
                if not file.chunked:
                    try:
                        await asyncio.to_thread(
                            safefs.write_file, workspace, file.name, file.data, owner=self._uid
                        )
                    except OSError as exc:
                        raise invalid(self._write_failure(file.name, exc)) from None
        except safefs.UnsafePath as exc:
            raise invalid(f"input file: {exc}") from None
        if self._uploads:
            waiter = asyncio.create_task(
                self._uploads_done.wait(), name=f"uploads-{self.execution_id}"
            )
            stopper = asyncio.create_task(self._stop.wait(), name=f"stop-{self.execution_id}")
            try:
                await asyncio.wait(
                    {waiter, stopper},
                    timeout=self.timeout,
                    return_when=asyncio.FIRST_COMPLETED,
                )
            finally:
                waiter.cancel()
                stopper.cancel()
                await asyncio.gather(waiter, stopper, return_exceptions=True)
            if self._abort is not None:
                return None
            if not self._uploads_done.is_set():
                if self._stop_status is not None:
                    return self._stopped_result(started)
                raise invalid(f"input files never completed: {', '.join(sorted(self._uploads))}")
        # Kept after the run: a tool result may still arrive for a call it made.
        self._channel = PreludeChannel(
            call_prefix=self.execution_id, max_result=self._config.max_result
        )
        if self.state_key is not None:
            from .live_run import LiveRun  # it builds on Run, defined below

            return await LiveRun(self, self._channel, workspace, started, state, lost).execute()
        return await Run(self, self._channel, workspace, started).execute()

    def _stopped_result(self, started: float) -> Result:
        return Result(
            status=self._stop_status or Status.CANCELLED,
            exit_code=-1,
            error=self._stop_error,
            duration=time.monotonic() - started,
        )


class Run:
    """The part of an execution between starting the process and its result."""

    def __init__(
        self, execution: Execution, channel: PreludeChannel, workspace: Path, started: float
    ) -> None:
        self.ex = execution
        self.channel = channel
        self.workspace = workspace
        self.started = started
        self.logs = LogCollector(execution._config.max_output)
        self.output = ""
        self.output_files: list[str] = []
        self.traceback = ""
        self.protocol_error = ""
        self.exit_reported = asyncio.Event()
        self.exit_report = 0
        """The exit code the prelude reported before exiting (with `exit_reported`),
        or a live interpreter's once its code is done (`idle`)."""
        self.idle = asyncio.Event()
        """A live interpreter's code is done and it waits for the next start."""
        self.pumping = {Stream.STDOUT: False, Stream.STDERR: False}
        """A log pump holds output it has read and not yet delivered."""
        self.side_tasks: set[asyncio.Task[None]] = set()
        self.installer = Installer(
            runtime=execution._runtime,
            config=execution._config,
            launcher=execution._launcher,
            workspace=workspace,
            uid=execution._uid,
            path=self._path(),
            start_group=self._start_group,
            oom_hint=self._session_memory_hint(),
        )

    def _path(self) -> str:
        return code_path(self.ex._runtime)

    async def execute(self) -> Result | None:
        """The result, or None once it was given to the client (`Execution._answer`)."""
        ex = self.ex
        assert ex._lease is not None
        launched = ex._spare
        # Checked again: the input files just written may shadow a preloaded module.
        if launched is not None and not (
            ex._spares is not None and ex._spares.usable(ex._runtime, ex._lease, launched)
        ):
            ex._spare = None
            await launched.discard()
            launched = None
        if launched is not None:
            launched.claim()
            ex._spare = None  # the run's own from here (until then, Execution._run drops it)
        else:
            launched = await self._launch(env=ex.spec.env)
        process, group = launched.process, launched.group
        usage: Usage | None = None
        self.channel.attach(launched.pipes)
        deadline = self.started + ex.timeout
        # Not a TaskGroup: the pumps get a short drain after the exit and are then
        # cancelled, and a failing pump must not fail the run.
        name = ex.execution_id
        pumps = [
            asyncio.create_task(self._pump(process.stdout, Stream.STDOUT), name=f"stdout-{name}"),
            asyncio.create_task(self._pump(process.stderr, Stream.STDERR), name=f"stderr-{name}"),
            asyncio.create_task(self._serve_channel(), name=f"channel-{name}"),
        ]
        try:
            self.channel.send(
                ex._runtime.start_message(
                    ex.spec.code, self.workspace, ex.execution_id, env=ex.spec.env
                )
            )
            # Only with a run cgroup: it is what kills every process of the run at once.
            early = group is not None and group.can_kill_now
            done = self._code_done(pumps[:2]) if early else None
            timed_out = await self._wait(process, deadline, done)
            if group is not None and done is not None and done.done() and process.alive:
                usage = group.kill_now()
                if usage is None:  # could not kill: the exit decides after all
                    timed_out = await self._wait(process, deadline, None)
            if usage is not None:
                for task in self.side_tasks:
                    task.cancel()
                await ex._answer(await self._result(self.exit_report, False, usage))
            else:
                await asyncio.wait(pumps, timeout=DRAIN_AFTER_EXIT)
        finally:
            for task in [*pumps, *self.side_tasks]:
                task.cancel()
            await asyncio.gather(*pumps, *self.side_tasks, return_exceptions=True)
            await process.kill()
            self.channel.close()
            if ex._uid is not None and not ex.spec.session_id:
                # A scratch uid goes back to the pool: nothing of it may outlive the run.
                await ex._launcher.kill_uid(ex._uid)
            finished = await group.finish() if group is not None else None
        if usage is not None:  # answered above (or dropped after a protocol error)
            return None
        return await self._result(process.returncode, timed_out, finished)

    async def _launch(
        self, *, env: Mapping[str, str] | None, cpu_time: float | None = None
    ) -> Launched:
        """A process for this run, started now (`env`: the request's, for its start too)."""
        ex = self.ex
        assert ex._lease is not None
        return await launch(
            runtime=ex._runtime,
            launcher=ex._launcher,
            workspaces=ex._workspaces,
            workspace=ex._lease,
            env=env,
            cpu_time=cpu_time,
        )

    def _code_done(self, pumps: list[asyncio.Task[None]]) -> asyncio.Task[None]:
        """Done once the prelude has reported its exit code and both log pipes are at EOF:
        the code is over and its output complete, even though its process is still exiting."""

        async def done() -> None:
            await self.exit_reported.wait()
            await asyncio.wait(pumps)

        return asyncio.create_task(done(), name=f"done-{self.ex.execution_id}")

    async def _start_group(self) -> RunGroup | None:
        assert self.ex._lease is not None
        return await start_group(self.ex._workspaces, self.ex._lease)

    async def _wait(
        self, process: Process, deadline: float, code_done: asyncio.Task[None] | None
    ) -> bool:
        """Wait for the process to end by itself (or `code_done`) or be stopped; True on timeout."""
        name = self.ex.execution_id
        exit_task = asyncio.create_task(process.wait(), name=f"exit-{name}")
        stop_task = asyncio.create_task(self.ex._stop.wait(), name=f"stop-{name}")
        ends = {exit_task, stop_task} | ({code_done} if code_done is not None else set())
        try:
            done, _ = await asyncio.wait(
                ends,
                timeout=max(deadline - time.monotonic(), 0),
                return_when=asyncio.FIRST_COMPLETED,
            )
            if exit_task in done or code_done in done:
                return False
            await process.kill()
            await exit_task
            return not done
        finally:
            for task in ends:
                task.cancel()  # done by now, unless this task itself is being cancelled
            await asyncio.gather(*ends, return_exceptions=True)

    async def _pump(self, stream: asyncio.StreamReader, kind: Stream) -> None:
        while data := await stream.read(64 * 1024):
            self.pumping[kind] = True
            live = self.logs.add(kind, data)
            if live:
                await self.ex._events.put(LogEvent(kind, live))
            self.pumping[kind] = False

    async def _serve_channel(self) -> None:
        """Handle the prelude's messages until it closes the channel."""
        try:
            while (message := await self.channel.read()) is not None:
                await self._handle(message)
        except (ValueError, TypeError, KeyError, RecursionError, asyncio.LimitOverrunError) as exc:
            # RecursionError: a line nested thousands of levels deep (json.loads recurses).
            self.protocol_error = f"the code sent an invalid message on the sandbox channel ({exc})"
            self.ex.stop(Status.ERROR, self.protocol_error)

    async def _handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "tool_call":
            await self._tool_call(str(message["id"]), _text(message["name"]), message.get("args"))
        elif kind == "result":
            files = message.get("files", [])
            if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
                raise TypeError("result files must be a list of names")
            files = [_text(f) for f in files]
            output = _text(_string(message, "output"))
            if len(output.encode()) > self.ex._config.max_result:
                self.traceback = (
                    f"set_result value is {len(output.encode())} bytes, over the "
                    f"{self.ex._config.max_result} byte limit; return large data as a file instead"
                )
                output = ""
            self.output, self.output_files = output, files
        elif kind == "error":
            self.traceback = _text(_string(message, "message"))
        elif kind == "exit":
            self.exit_report = _exit_code(message)
            self.exit_reported.set()
        elif kind == "idle":
            self.exit_report = _exit_code(message)
            self.idle.set()
        elif kind == "ready":
            pass  # the prelude is up (read before the start by a live interpreter's first run)
        elif kind == "install":
            reply_id, package = str(message["id"]), str(message["package"])
            if self.installer.reserve():
                self._spawn(self._install(reply_id, package), "install")
            else:
                error = f"more than {MAX_PENDING_INSTALLS} install_package calls at once; wait for some to finish"
                await self.channel.reply({"type": "install_result", "id": reply_id, "error": error})
        else:
            raise ValueError(f"unknown message type {kind!r}")

    async def _tool_call(self, reply_id: str, name: str, args: Any) -> None:
        args_json = json.dumps(args if args is not None else {}, separators=(",", ":"))
        size = len(args_json) + len(name.encode(errors="replace"))
        if size > MAX_TOOL_ARGS:
            await self.channel.reply(
                {
                    "type": "tool_result",
                    "id": reply_id,
                    "error": f"the tool call (name and arguments) is {size} bytes; the limit is {MAX_TOOL_ARGS}",
                }
            )
            return
        if self.channel.pending_calls >= MAX_PENDING_CALLS:
            await self.channel.reply(
                {
                    "type": "tool_result",
                    "id": reply_id,
                    "error": f"too many tool calls at once: at most {MAX_PENDING_CALLS} may be outstanding",
                }
            )
            return
        call_id = self.channel.add_call(reply_id)
        await self.ex._events.put(ToolCallEvent(call_id, name, args_json))

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        task = asyncio.create_task(coro, name=f"{name}-{self.ex.execution_id}")
        self.side_tasks.add(task)
        task.add_done_callback(self.side_tasks.discard)

    async def _install(self, reply_id: str, package: str) -> None:
        error = await self.installer.install(package)
        await self.channel.reply({"type": "install_result", "id": reply_id, "error": error})

    def _session_memory_hint(self) -> str:
        size = describe_size(self.ex._config.limits.session_memory)
        return f"session memory limit of {size} exceeded (its processes and files together)"

    async def _result(
        self, returncode: int | None, timed_out: bool, usage: Usage | None = None
    ) -> Result:
        ex = self.ex
        code = returncode if returncode is not None else -1
        error = ""
        # The kernel's OOM kill in the session's cgroup names the limit better than any text.
        session_hint = (
            self._session_memory_hint() if usage is not None and usage.oom_killed else None
        )
        if timed_out:
            status, code = Status.TIMEOUT, -1
            error = f"execution timed out after {seconds_text(ex.timeout)} s"
        elif ex._stop_status is not None:
            status, code, error = ex._stop_status, -1, ex._stop_error
        elif code < 0:
            name = (
                signal.Signals(-code).name
                if -code in signal.Signals._value2member_map_
                else str(-code)
            )
            status, code = Status.KILLED, 128 - code
            error = f"the process was killed by signal {name}"
            hint = session_hint or limit_hint(
                self.logs.stderr_tail.decode(errors="replace"), ex._config.limits, signal_name=name
            )
            if hint:
                error = f"{hint}; {error}"
        elif code != 0:
            status = Status.ERROR
            error = self.traceback or f"the code exited with code {code}"
            tail = self.logs.stderr_tail.decode(errors="replace").strip()
            if not self.traceback and tail:
                error += f"; the end of its stderr:\n{tail}"
        else:
            status = Status.ERROR if self.traceback else Status.OK
            error = self.traceback
        if status is Status.ERROR and (
            hint := session_hint
            or limit_hint(error + self.logs.stderr_tail.decode(errors="replace"), ex._config.limits)
        ):
            error = f"{hint}\n{error}"
        logs = self.logs.text()
        files: list[OutputFile] = []
        if self.output_files and status is not Status.CANCELLED:
            # Inline file data shares the result message with everything else.
            files, problems = await outputs.collect_files(
                self.output_files,
                workspace=self.workspace,
                limits=ex._config.limits,
                room=outputs.inline_room(self.output, logs),
                emit=ex._events.put,
            )
            if problems:
                error = "\n".join(filter(None, [error, *problems]))
                if status is Status.OK:
                    status = Status.ERROR
        return Result(
            status=status,
            exit_code=code,
            output=self.output,
            logs=logs,
            logs_truncated=self.logs.truncated,
            error=clip(error, MAX_ERROR),
            files=tuple(files),
            duration=time.monotonic() - self.started,
            cpu_time=usage.cpu_time if usage is not None else 0.0,
        )


def _exit_code(message: dict[str, Any]) -> int:
    code = message["code"]
    if not isinstance(code, int) or isinstance(code, bool) or not 0 <= code <= 255:
        raise TypeError("the exit code must be an integer from 0 to 255")
    return code


def _string(message: dict[str, Any], key: str) -> str:
    value = message[key]
    if not isinstance(value, str):
        raise TypeError(f"{key!r} must be a string")
    return value


def _text(value: Any) -> str:
    """A string that protobuf can send: JSON may carry lone surrogates, UTF-8 cannot."""
    return str(value).encode("utf-8", "replace").decode("utf-8")


def clip(text: str, limit: int) -> str:
    """At most about `limit` UTF-8 bytes, keeping the start and the end (where a traceback says what failed)."""
    data = text.encode()
    if len(data) <= limit:
        return text
    head = data[: limit // 4].decode(errors="ignore")
    tail = data[len(data) - limit * 3 // 4 :].decode(errors="ignore")
    cut = len(data) - len(head.encode()) - len(tail.encode())
    return f"{head}\n[... {cut} bytes cut ...]\n{tail}"


def seconds_text(value: float) -> str:
    return f"{value:g}"
