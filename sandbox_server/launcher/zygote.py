"""The server's end of a warm Python zygote (runtimes/preludes/python_zygote.py).

One `Zygote` is one running zygote process and the SOCK_SEQPACKET socket to
it: one JSON message per datagram, fds beside it (the protocol is described
in python_zygote.py). The zygote, not the server, is the parent of each
forked execution, so it reports their exits; the server signals them through
the pidfd the zygote sends with each pid.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import os
import signal
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path

from ..errors import StartError
from ..runtimes import PRELUDES
from .process import ForkedProcess, has_exited, pipe_reader

log = logging.getLogger(__name__)

PROGRAM = PRELUDES / "python_zygote.py"
_MAX_MESSAGE = 64 * 1024
# How long a fork request may take before the zygote counts as stuck.
_FORK_TIMEOUT = 10.0


def child_fds(fds: Sequence[int]) -> dict[int, int]:
    """The number each of `fds` gets in a forked child: 3, 4, 5, … in order."""
    return {fd: 3 + index for index, fd in enumerate(fds)}


class ZygoteUnavailable(StartError):
    """The zygote could not start or serve a fork; the execution starts cold instead."""


class Zygote:
    def __init__(self, proc: asyncio.subprocess.Process, control: socket.socket) -> None:
        self._proc = proc
        self._control = control
        self._ids = itertools.count(1)
        self._ready: asyncio.Future[dict[str, object]] = asyncio.get_running_loop().create_future()
        # Its failure is read by start(), unless start() was cancelled first.
        self._ready.add_done_callback(lambda ready: ready.cancelled() or ready.exception())
        self._forks: dict[int, asyncio.Future[tuple[int, int]]] = {}
        self._exits: dict[int, asyncio.Future[int]] = {}
        self._pidfds: dict[int, int] = {}  # request id -> pidfd, while the child runs
        self._lost = False
        # Polled by `alive`: asyncio learns of the exit only a moment later.
        try:
            self._pidfd = os.pidfd_open(proc.pid)
        except OSError:  # already gone
            self._pidfd = -1
        self.modules: frozenset[str] = frozenset()
        """Top-level modules the zygote imported from the runtime's site folders."""
        self.preloaded: tuple[str, ...] = ()
        self.address_space = 0
        """The zygote's mapped bytes, which every child starts with."""
        asyncio.get_running_loop().add_reader(control.fileno(), self._on_readable)

    @property
    def pid(self) -> int:
        return self._proc.pid

    @property
    def alive(self) -> bool:
        """Serving forks. When it has died, so have its children (their parent-death
        signal is sent before the zygote's pidfd turns readable)."""
        return not self._lost and self._pidfd >= 0 and not has_exited(self._pidfd)

    @classmethod
    async def start(
        cls,
        *,
        python: str,
        library: Path,
        site_paths: Sequence[str],
        preload: Sequence[str],
        env: Mapping[str, str],
        ready_timeout: float,
    ) -> Zygote:
        """Exec the zygote and wait until its imports are done and it is ready to fork."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            proc = await asyncio.create_subprocess_exec(
                python,
                "-I",
                "-S",
                "-u",
                str(PROGRAM),
                str(theirs.fileno()),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                env=dict(env),
                cwd="/",
                start_new_session=True,
            )
        except OSError as exc:
            ours.close()
            raise ZygoteUnavailable(f"cannot start the zygote: {exc}") from exc
        finally:
            theirs.close()
        settings = {
            "library": str(library),
            "server_pid": os.getpid(),
            "site_paths": list(site_paths),
            "preload": list(preload),
        }
        ours.send(json.dumps(settings).encode())  # the socket's buffer is empty: no wait
        ours.setblocking(False)
        zygote = cls(proc, ours)
        try:
            ready = await asyncio.wait_for(asyncio.shield(zygote._ready), ready_timeout)
        except BaseException as exc:
            await zygote.close()
            if isinstance(exc, TimeoutError):
                raise ZygoteUnavailable(
                    f"the zygote was not ready within {ready_timeout:g} s"
                ) from None
            raise
        zygote.modules = frozenset(map(str, ready.get("modules", ())))  # type: ignore[call-overload]
        zygote.preloaded = tuple(map(str, ready.get("preloaded", ())))  # type: ignore[call-overload]
        zygote.address_space = int(ready.get("address_space", 0))  # type: ignore[call-overload]
        return zygote

    async def fork(
        self,
        *,
        options_fd: int,
        cwd: Path,
        pass_fds: Sequence[int],
        channel: tuple[int, int],
        box_pid_namespace: int,
    ) -> ForkedProcess:
        """One child, forked into the pid namespace of an oasis-init --box, that
        enters the box (the --enter-ns fds among `pass_fds`) and runs the prelude
        over `channel`.

        `options_fd` holds oasis-init's options. The child gets `pass_fds` as
        fds 3, 4, 5, … in order (`child_fds`), whatever their numbers here:
        `channel` and the options name them by those numbers."""
        if not self.alive:
            raise ZygoteUnavailable("the zygote is not running")
        loop = asyncio.get_running_loop()
        request_id = next(self._ids)
        forked = self._forks[request_id] = loop.create_future()
        exited = self._exits[request_id] = loop.create_future()
        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            targets = list(child_fds(pass_fds).values())
            message = {"id": request_id, "cwd": str(cwd), "targets": targets}
            message["channel"] = list(channel)
            await self._send(message, [options_fd, out_w, err_w, box_pid_namespace, *pass_fds])
            os.close(out_w)
            os.close(err_w)
            out_w = err_w = -1
            pid, pidfd = await asyncio.wait_for(forked, _FORK_TIMEOUT)
        except BaseException as exc:
            self._forks.pop(request_id, None)
            self._exits.pop(request_id, None)
            for fd in (out_r, err_r, out_w, err_w):
                if fd >= 0:
                    os.close(fd)
            if isinstance(exc, (OSError, TimeoutError)):
                raise ZygoteUnavailable(f"the zygote did not fork: {exc!r}") from exc
            raise
        finally:
            self._forks.pop(request_id, None)
        output = (await pipe_reader(out_r), await pipe_reader(err_r))
        return ForkedProcess(pid, pidfd, exited, output)

    async def _send(self, message: dict[str, object], fds: Sequence[int]) -> None:
        data = json.dumps(message).encode()
        loop = asyncio.get_running_loop()
        while True:
            try:
                socket.send_fds(self._control, [data], list(fds))
                return
            except BlockingIOError:
                writable = loop.create_future()
                loop.add_writer(self._control.fileno(), writable.set_result, None)
                try:
                    await writable
                finally:
                    loop.remove_writer(self._control.fileno())

    def _on_readable(self) -> None:
        while not self._lost:
            try:
                data, fds, _, _ = socket.recv_fds(self._control, _MAX_MESSAGE, 4)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.warning("zygote %d: %s", self.pid, exc)
                data, fds = b"", []
            if not data:
                self._on_lost()
                return
            try:
                self._dispatch(json.loads(data), fds)
            except (ValueError, KeyError, TypeError) as exc:
                for fd in fds:
                    os.close(fd)
                log.warning("zygote %d sent a bad message (%s); stopping it", self.pid, exc)
                self._on_lost()
                with contextlib.suppress(ProcessLookupError):
                    self._proc.kill()

    def _dispatch(self, message: dict[str, object], fds: list[int]) -> None:
        request_id = message.get("id")
        if message.get("ready"):
            if not self._ready.done():
                self._ready.set_result(message)
            return
        if "exit" in message:
            assert isinstance(request_id, int)
            self._pidfds.pop(request_id, None)
            exited = self._exits.pop(request_id, None)
            if exited is not None and not exited.done():
                exited.set_result(int(message["exit"]))  # type: ignore[call-overload]
            return
        if request_id is None and "error" in message:
            # Before ready: the zygote could not warm (e.g. a thread after the imports).
            log.warning("zygote %d: %s", self.pid, message["error"])
            if not self._ready.done():
                self._ready.set_exception(ZygoteUnavailable(str(message["error"])))
            return
        assert isinstance(request_id, int)
        forked = self._forks.get(request_id)
        if "pid" in message and len(fds) == 1:
            if forked is None or forked.done():
                os.close(fds[0])  # its requester gave up; the child ends with its channel
                return
            # Registered here, before its exit can be read: _on_lost needs it.
            self._pidfds[request_id] = fds[0]
            forked.set_result((int(message["pid"]), fds[0]))  # type: ignore[call-overload]
            return
        for fd in fds:
            os.close(fd)
        if forked is not None and not forked.done():
            forked.set_exception(ZygoteUnavailable(f"fork refused: {message.get('error')}"))

    def _on_lost(self) -> None:
        """The zygote is gone: its children get SIGTERM from the kernel (their parent
        died); each exit is known once its pidfd turns readable."""
        if self._lost:
            return
        self._lost = True
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._control.fileno())
        if not self._ready.done():
            self._ready.set_exception(ZygoteUnavailable("the zygote exited while starting"))
        for forked in self._forks.values():
            if not forked.done():
                forked.set_exception(ZygoteUnavailable("the zygote exited"))
        for request_id, pidfd in self._pidfds.items():
            exited = self._exits.pop(request_id, None)
            if exited is not None and not exited.done():
                loop.add_reader(pidfd, self._on_orphan_exit, pidfd, exited)
        self._pidfds.clear()

    @staticmethod
    def _on_orphan_exit(pidfd: int, exited: asyncio.Future[int]) -> None:
        asyncio.get_running_loop().remove_reader(pidfd)
        if not exited.done():
            exited.set_result(-signal.SIGKILL)  # its real status went with the zygote

    async def wait(self) -> int:
        """Until the zygote process exits."""
        return await self._proc.wait()

    async def close(self, grace: float = 5.0) -> None:
        """Stop the zygote: closing its socket ends its loop; SIGKILL if it lingers."""
        self._on_lost()
        self._control.close()
        try:
            await asyncio.wait_for(self._proc.wait(), grace)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self._proc.kill()
            await self._proc.wait()
        finally:
            if self._pidfd >= 0:
                os.close(self._pidfd)
                self._pidfd = -1
