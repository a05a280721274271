"""What both cgroup versions share: the types, the control-file helpers, the `Tree` interface.

Paths (`rel`) are relative to the server's own cgroup and start with our
server group's name: "oasis-…/3-sessions-foo/run-1".
"""

from __future__ import annotations

import contextlib
import enum
import errno
import logging
import os
import re
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__package__)

PREFIX = "oasis-"
REQUIRED = ("memory", "pids")
_SERVER_NAME = re.compile(r"oasis-(\d+)-(\d+)-[0-9a-f]+")
_KILL_ROUNDS = 200
_RMDIR_ROUNDS = 100
_WAIT = 5.0
"""Seconds to wait for a group to freeze or to empty after cgroup.kill."""


class Mechanism(enum.Enum):
    V2 = "cgroup v2"
    V1 = "cgroup v1"
    NONE = "rlimits"


class CgroupError(OSError):
    """The host refused a cgroup operation, or it did not finish in time."""


@dataclass(frozen=True)
class Usage:
    """What one run used, read from its cgroup when it ends."""

    cpu_time: float = 0.0
    """Seconds of CPU time of all the run's processes (0 without CPU accounting)."""
    oom_killed: bool = False
    """The kernel killed a process of the session for its memory cap while the run lasted."""


# -- file helpers ------------------------------------------------------------


def read(path: Path) -> str:
    with open(path, encoding="ascii") as file:
        return file.read()


def write(path: Path, value: str) -> None:
    # No O_CREAT: a missing control file is an error, never a new plain file.
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def keyed(text: str) -> dict[str, int]:
    """A flat-keyed cgroup file (`key value` lines: memory.events, cpu.stat, memory.oom_control)."""
    values = {}
    for line in text.splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            values[key] = int(value)
    return values


def procs(folder: Path) -> set[int]:
    """The processes in a cgroup and all its descendants."""
    found: set[int] = set()
    for dirpath, _, _ in os.walk(folder):
        with contextlib.suppress(FileNotFoundError):
            found.update(int(pid) for pid in read(Path(dirpath) / "cgroup.procs").split())
    return found


def kill_loop(folders: list[Path], *, after_first: Callable[[], None] = lambda: None) -> None:
    """SIGKILL whatever is in `folders` until they are empty (bounded)."""
    for attempt in range(_KILL_ROUNDS):
        pids: set[int] = set()
        for folder in folders:
            pids |= procs(folder)
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if attempt == 0:
            after_first()
        # Killed processes stay listed until they have exited.
        time.sleep(min(0.001 * (attempt + 1), 0.02))
    raise CgroupError(errno.EBUSY, f"processes in {folders[0]} survived SIGKILL")


def signal_all(folder: Path, *, keep: frozenset[int] = frozenset()) -> None:
    """SIGKILL the processes in `folder` but those in `keep`, and return without
    waiting for their exits.

    A process with SIGKILL pending runs no more code and can no longer fork
    (fork fails while a fatal signal is pending), so a round that finds
    nobody new is the last. Only `folder` itself is read: nobody makes groups
    below a run's.
    """
    killed: set[int] = set(keep)
    for _ in range(_KILL_ROUNDS):
        pids = {int(pid) for pid in read(folder / "cgroup.procs").split()}
        fresh = pids - killed
        if not fresh:
            return
        for pid in fresh:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed |= fresh
    raise CgroupError(errno.EBUSY, f"processes in {folder} kept appearing under SIGKILL")


def rmdir_tree(folder: Path) -> None:
    """Remove a cgroup and its descendants, deepest first (missing ones are fine)."""
    for attempt in range(_RMDIR_ROUNDS):
        try:
            for dirpath, _, _ in list(os.walk(folder, topdown=False)):
                with contextlib.suppress(FileNotFoundError):
                    os.rmdir(dirpath)
            return
        except OSError as exc:
            # Busy for a moment while killed processes finish exiting.
            if exc.errno != errno.EBUSY or attempt == _RMDIR_ROUNDS - 1:
                raise
        time.sleep(0.01)


def wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + _WAIT
    while not check():
        if time.monotonic() > deadline:
            raise CgroupError(errno.ETIMEDOUT, f"{what} did not happen within {_WAIT:g} s")
        time.sleep(0.005)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def own(rel: str) -> str:
    # A guard against ever killing in (or removing) anything but our own groups.
    if not rel.startswith(PREFIX) or ".." in rel.split("/"):
        raise ValueError(f"not a cgroup of this server: {rel!r}")
    return rel


# -- the interface both versions implement -----------------------------------


class Tree:
    """One cgroup version's way of doing each step; blocking, so callers use a thread."""

    mechanism: Mechanism
    roots: tuple[Path, ...]
    """The server's own cgroup in each hierarchy used."""

    def prepare(self) -> None:
        """Make the server's own cgroup able to give controllers to children."""

    def make_server(self, rel: str) -> None:
        raise NotImplementedError

    def make_session(self, rel: str, *, memory: int, pids: int) -> None:
        raise NotImplementedError

    def session_folders(self, rel: str) -> tuple[Path, ...]:
        raise NotImplementedError

    def make_run(self, session: str, run: str) -> tuple[tuple[str, ...], int]:
        """Create a run's group: the folders its processes join, and the session's OOM kills so far."""
        raise NotImplementedError

    def oom_kills(self, session: str) -> int:
        raise NotImplementedError

    def cpu_time(self, run: str) -> float:
        raise NotImplementedError

    def kill(self, rel: str) -> None:
        raise NotImplementedError

    kills_runs = True
    """Whether signal_kill can work: a run has a group of its own."""

    def signal_kill(self, rel: str) -> None:
        """SIGKILL every process of a run's group now; their exits come later."""
        raise NotImplementedError

    def set_frozen(self, rel: str, frozen: bool) -> None:
        """Freeze or thaw a group (and all below it), and wait until it is done."""
        raise NotImplementedError

    can_freeze_runs = False
    """Whether a run's group can be frozen on its own (request_frozen)."""

    def request_frozen(self, rel: str, frozen: bool) -> None:
        """Start freezing or thawing a group; `is_frozen` tells when it is done."""
        raise NotImplementedError

    def is_frozen(self, rel: str) -> bool:
        raise NotImplementedError

    def run_folder(self, rel: str) -> Path:
        """The folder that lists a run's own processes (where `kills_runs`)."""
        raise NotImplementedError

    def run_procs(self, rel: str) -> set[int]:
        return {int(pid) for pid in read(self.run_folder(rel) / "cgroup.procs").split()}

    def signal_kill_except(self, rel: str, keep: frozenset[int]) -> None:
        """SIGKILL every process of a run's group but `keep`; their exits come later."""
        signal_all(self.run_folder(rel), keep=keep)

    def remove(self, rel: str) -> None:
        """Kill whatever is left in the group, then remove it and its descendants."""
        self.kill(rel)
        self._rmdir(rel)

    def _rmdir(self, rel: str) -> None:
        for root in self.roots:
            rmdir_tree(root / own(rel))

    def finish_run(self, session: str, run: str, oom_before: int) -> Usage:
        rel = f"{session}/{run}"
        self.kill(rel)
        usage = self.run_usage(session, run, oom_before)
        self._rmdir(rel)
        return usage

    def run_usage(self, session: str, run: str, oom_before: int) -> Usage:
        return Usage(
            cpu_time=self.cpu_time(f"{session}/{run}"),
            oom_killed=self.oom_kills(session) > oom_before,
        )

    def remove_leftovers(self, pidns: int) -> None:
        """Remove groups of dead servers of ours: same pid namespace, pid gone, no process left."""
        names = {e.name for root in self.roots if root.is_dir() for e in root.iterdir()}
        for name in sorted(names):
            match = _SERVER_NAME.fullmatch(name)
            if not match or int(match[1]) != pidns or _alive(int(match[2])):
                continue
            if any(procs(root / name) for root in self.roots):
                log.warning("cgroup %s of a dead server still holds processes; left alone", name)
                continue
            for root in self.roots:
                rmdir_tree(root / name)
            log.info("removed cgroup %s of a server that is gone", name)
