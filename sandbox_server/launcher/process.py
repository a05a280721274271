"""A running execution as the server sees it, whichever way it was started.

Every kind stops the same way: SIGTERM to the supervisor (oasis-init, or
under the warm launcher the oasis-init --box the child runs in), which kills
the whole tree and exits; SIGKILL after a second if it did not.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import fcntl
import logging
import os
import select
import signal
import struct
import termios
from dataclasses import dataclass

log = logging.getLogger(__name__)

# After asking the supervisor to stop the tree, how long before SIGKILL to it.
KILL_BACKSTOP = 1.0
# After SIGKILL, how long a warm child's exit report may take before it is
# killed directly (then counted as killed).
_KILLED_EXIT_TIMEOUT = 5.0


class Process(abc.ABC):
    """A running execution: its output pipes, its exit, and a tree-wide kill."""

    stdout: asyncio.StreamReader
    stderr: asyncio.StreamReader
    preloaded = False
    """Whether modules were imported before the code's own paths were known (warm)."""

    @property
    @abc.abstractmethod
    def pid(self) -> int: ...

    @property
    @abc.abstractmethod
    def returncode(self) -> int | None: ...

    @abc.abstractmethod
    async def wait(self) -> int:
        """The exit code, or -N when killed by signal N."""

    @property
    def alive(self) -> bool:
        """Not known to have exited (checked now, where that is cheap)."""
        return self.returncode is None

    @abc.abstractmethod
    def _signal(self, sig: int) -> None: ...

    @abc.abstractmethod
    def _release(self) -> None:
        """Let go of what the server holds for a process that has ended."""

    async def kill(self) -> None:
        """Stop every process of the execution, including setsid'd descendants.

        Called once the run is over, too: it then releases the output pipes."""
        try:
            await self._stop()
        finally:
            self._release()

    async def _stop(self) -> None:
        if self.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self._signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(self.wait()), KILL_BACKSTOP)
        except TimeoutError:
            log.warning("the supervisor %d did not stop its tree in time; killing it", self.pid)
            with contextlib.suppress(ProcessLookupError):
                self._signal(signal.SIGKILL)
            await self._wait_killed()

    async def _wait_killed(self) -> None:
        """After SIGKILL: the exit is certain and comes at once."""
        await self.wait()


class ExecProcess(Process):
    """oasis-init exec'd by the server: a child it waits for itself."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self._proc = proc
        assert proc.stdout is not None and proc.stderr is not None
        self.stdout = proc.stdout
        self.stderr = proc.stderr

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def returncode(self) -> int | None:
        return self._proc.returncode

    async def wait(self) -> int:
        return await self._proc.wait()

    def _signal(self, sig: int) -> None:
        self._proc.send_signal(sig)

    def _release(self) -> None:
        """Nothing: asyncio's subprocess transport closes the pipes itself."""


class ForkedProcess(Process):
    """A child of the warm zygote: signalled through its pidfd, its exit reported by
    the zygote (which alone can wait for it)."""

    def __init__(
        self,
        pid: int,
        pidfd: int,
        exit_code: asyncio.Future[int],
        output: tuple[PipeReader, PipeReader],
    ) -> None:
        self._pid = pid
        self._pidfd = pidfd
        self._exit = exit_code
        self._output = output
        self.stdout = output[0].reader
        self.stderr = output[1].reader
        exit_code.add_done_callback(lambda _: self._close_pidfd())

    @property
    def pid(self) -> int:
        return self._pid

    @property
    def returncode(self) -> int | None:
        if self._exit.done() and not self._exit.cancelled():
            return self._exit.result()
        return None

    async def wait(self) -> int:
        return await asyncio.shield(self._exit)

    @property
    def alive(self) -> bool:
        # The zygote's report of an exit may lag: a pidfd polls readable once the
        # process has ended (a spare whose zygote died must not be taken).
        return self.returncode is None and self._pidfd >= 0 and not has_exited(self._pidfd)

    def _signal(self, sig: int) -> None:
        # The pidfd names this process and no other, even once its pid is reused.
        if self._pidfd < 0:
            raise ProcessLookupError(self._pid)
        signal.pidfd_send_signal(self._pidfd, sig)

    def give_up(self) -> None:
        """Count it as killed without its exit report (logged by the caller)."""
        if not self._exit.done():
            self._exit.set_result(-signal.SIGKILL)

    def _close_pidfd(self) -> None:
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1

    def _release(self) -> None:
        if self.returncode is not None:
            for pipe in self._output:
                pipe.transport.close()


def unread_bytes(stream: asyncio.StreamReader) -> int:
    """Bytes written into the pipe under `stream` that the event loop has not read yet."""
    # asyncio offers no public way from a reader to its transport's pipe.
    transport = stream._transport  # type: ignore[attr-defined]
    pipe = transport.get_extra_info("pipe") if transport is not None else None
    if pipe is None or transport.is_closing():
        return 0
    count = fcntl.ioctl(pipe.fileno(), termios.FIONREAD, b"\0\0\0\0")
    return int(struct.unpack("i", count)[0])


def has_exited(pidfd: int) -> bool:
    """Whether the process has ended (a pidfd polls readable from then on)."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))


@dataclass(frozen=True)
class PipeReader:
    reader: asyncio.StreamReader
    transport: asyncio.BaseTransport


async def pipe_reader(fd: int) -> PipeReader:
    """An asyncio reader over the read end of a pipe (which it takes over)."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**16, loop=loop)
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader, loop=loop), os.fdopen(fd, "rb", buffering=0)
    )
    return PipeReader(reader, transport)


class BoxedProcess(Process):
    """A warm child inside namespaces that oasis-init --box built for it.

    The output and the exit are the child's; stopping goes through the box's
    supervisor, whose namespace takes the child (and anything it started)
    with it. The box itself is ended once the child is gone."""

    preloaded = True

    def __init__(self, box: ExecProcess, child: ForkedProcess) -> None:
        self._box = box
        self._child = child
        self.stdout = child.stdout
        self.stderr = child.stderr

    @property
    def pid(self) -> int:
        return self._child.pid

    @property
    def returncode(self) -> int | None:
        return self._child.returncode

    async def wait(self) -> int:
        return await self._child.wait()

    @property
    def alive(self) -> bool:
        return self._child.alive and self._box.returncode is None

    def _signal(self, sig: int) -> None:
        self._box._signal(sig)

    async def _wait_killed(self) -> None:
        # The box's end takes the child with it; should its exit still not be
        # reported (the zygote stuck), kill it directly, and never wait forever.
        for _ in range(2):
            try:
                await asyncio.wait_for(asyncio.shield(self.wait()), _KILLED_EXIT_TIMEOUT)
                return
            except TimeoutError:
                log.error("warm child %d did not exit after SIGKILL to its box", self.pid)
                with contextlib.suppress(ProcessLookupError):
                    self._child._signal(signal.SIGKILL)
        self._child.give_up()

    def _release(self) -> None:
        self._child._release()

    async def kill(self) -> None:
        try:
            await self._stop()
        finally:
            await self._box.kill()
            self._release()
