"""Per-session resource control with cgroups: memory and process caps, CPU time, freezing.

Probed at start, best first; the one in use is GetInfo's `resource_control`:

  cgroup v2  the server's own cgroup (`0::/path` in /proc/self/cgroup) as a
             delegated subtree that offers the memory and pids controllers
  cgroup v1  the memory and pids hierarchies (cpuacct and freezer where mounted)
  rlimits    neither works here: memory is capped per process only

Layout (the same relative folders in each v1 hierarchy):

  <own cgroup>/oasis-<pidns>-<pid>-<token>/   this server: its pid namespace and pid
  |                                           let a later server judge it dead, the
  |                                           token keeps two servers apart
  +-- <n>-<label>/                            a session: memory and pids are capped
      |                                       here, for all its processes and the
      |                                       tmpfs pages they wrote, together
      +-- run-<n>/                            one execution or installer: its CPU time
  <own cgroup>/oasis-server/                  v2 only: the processes of our own cgroup
                                              move here, since a v2 group that hands
                                              controllers to children may hold none

A session's memory is charged to its own group, not to one per run: an OOM
kill is read from the session's counter (before and after the run), and a
run costs one small folder instead of a memory cgroup that the kernel keeps
for as long as the files the run wrote.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import itertools
import logging
import os
import re
import secrets
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["CgroupError", "Cgroups", "Mechanism", "RunGroup", "SessionGroup", "Usage"]

_PREFIX = "oasis-"
SERVER_LEAF = "oasis-server"
"""Where a v2 server moves the processes of its own cgroup (the no-internal-process rule)."""
_SERVER_NAME = re.compile(r"oasis-(\d+)-(\d+)-[0-9a-f]+")
_V1_CONTROLLERS = ("memory", "pids", "cpuacct", "freezer")
_REQUIRED = ("memory", "pids")
_KILL_ROUNDS = 200
_RMDIR_ROUNDS = 100
_MOVE_ROUNDS = 20
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


def _read(path: Path) -> str:
    with open(path, encoding="ascii") as file:
        return file.read()


def _write(path: Path, value: str) -> None:
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


def _procs(folder: Path) -> set[int]:
    """The processes in a cgroup and all its descendants."""
    found: set[int] = set()
    for dirpath, _, _ in os.walk(folder):
        with contextlib.suppress(FileNotFoundError):
            found.update(int(pid) for pid in _read(Path(dirpath) / "cgroup.procs").split())
    return found


def _kill_loop(folders: list[Path], *, after_first: Callable[[], None] = lambda: None) -> None:
    """SIGKILL whatever is in `folders` until they are empty (bounded)."""
    for attempt in range(_KILL_ROUNDS):
        pids: set[int] = set()
        for folder in folders:
            pids |= _procs(folder)
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


def _rmdir_tree(folder: Path) -> None:
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


def _wait_for(check: Callable[[], bool], what: str) -> None:
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


def _own(rel: str) -> str:
    # A guard against ever killing in (or removing) anything but our own groups.
    if not rel.startswith(_PREFIX) or ".." in rel.split("/"):
        raise ValueError(f"not a cgroup of this server: {rel!r}")
    return rel


# -- finding the hierarchies -------------------------------------------------


def _unescape(text: str) -> str:
    """Undo mountinfo's octal escapes (a space is \\040)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), text)


def _mounts(mountinfo: str, fstype: str) -> list[tuple[str, str, set[str]]]:
    """(root inside the hierarchy, mount point, super options) of each mount of `fstype`."""
    found = []
    for line in mountinfo.splitlines():
        left, sep, right = line.partition(" - ")
        fields, tail = left.split(), right.split()
        if sep and len(fields) >= 5 and len(tail) >= 3 and tail[0] == fstype:
            found.append((_unescape(fields[3]), _unescape(fields[4]), set(tail[2].split(","))))
    return found


def _inside(own: str, mount_root: str) -> str | None:
    """`own` relative to a mount's root, or None when the mount does not show it."""
    if ".." in own.split("/"):  # outside our cgroup namespace
        return None
    if mount_root == "/":
        return own.strip("/")
    if own == mount_root or own.startswith(mount_root.rstrip("/") + "/"):
        return own[len(mount_root) :].strip("/")
    return None


def _under(root: Path, mount_point: str, rel: str) -> Path:
    return root / mount_point.lstrip("/") / rel if rel else root / mount_point.lstrip("/")


def find_v2(cgroup_text: str, mountinfo: str, root: Path = Path("/")) -> Path | None:
    """The server's own v2 cgroup folder when it offers memory and pids, else None.

    `root` stands for `/` (tests point it at a fake tree).
    """
    own = next((line[3:] for line in cgroup_text.splitlines() if line.startswith("0::")), None)
    if own is None:
        return None
    for mount_root, point, _ in _mounts(mountinfo, "cgroup2"):
        rel = _inside(own, mount_root)
        if rel is None:
            continue
        base = _under(root, point, rel)
        if base.name == SERVER_LEAF:
            # We were started from the leaf an earlier server of ours moved into.
            base = base.parent
        try:
            controllers = _read(base / "cgroup.controllers").split()
        except OSError:
            continue
        if all(c in controllers for c in _REQUIRED):
            return base
    return None


def find_v1(cgroup_text: str, mountinfo: str, root: Path = Path("/")) -> dict[str, Path]:
    """The server's own folder in each v1 hierarchy we use; empty without memory and pids."""
    own: dict[str, str] = {}
    for line in cgroup_text.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3 and parts[1]:
            for controller in parts[1].split(","):
                own[controller] = parts[2]
    bases: dict[str, Path] = {}
    for mount_root, point, options in _mounts(mountinfo, "cgroup"):
        for controller in _V1_CONTROLLERS:
            if controller in options and controller in own and controller not in bases:
                rel = _inside(own[controller], mount_root)
                if rel is not None:
                    bases[controller] = _under(root, point, rel)
    if not all(c in bases for c in _REQUIRED):
        return {}
    cpu = bases.get("cpuacct")
    if cpu is not None and any(p == cpu for c, p in bases.items() if c != "cpuacct"):
        # Runs get a group only in the cpuacct hierarchy; sharing it with memory
        # would charge their memory to the run, not the session.
        del bases["cpuacct"]
    return bases


def v1_limits(memory_folder: Path, pids_folder: Path, *, memory: int, pids: int) -> None:
    """A v1 session's caps: memory (tmpfs pages included) without swap, and processes."""
    _write(memory_folder / "memory.limit_in_bytes", str(memory))
    memsw = memory_folder / "memory.memsw.limit_in_bytes"
    if memsw.exists():
        # Memory plus swap equal to memory: no swap. Written second, as it may
        # never be below memory.limit_in_bytes.
        _write(memsw, str(memory))
    else:
        with contextlib.suppress(OSError):
            _write(memory_folder / "memory.swappiness", "0")
    _write(pids_folder / "pids.max", str(pids))


def v2_limits(folder: Path, *, memory: int, pids: int) -> None:
    """A v2 session's caps: memory (tmpfs pages included) without swap, and processes."""
    _write(folder / "memory.max", str(memory))
    swap = folder / "memory.swap.max"
    if swap.exists():  # only with swap accounting
        _write(swap, "0")
    _write(folder / "pids.max", str(pids))


# -- the two mechanisms ------------------------------------------------------
# Paths (`rel`) are relative to the server's own cgroup and start with our
# server group's name: "oasis-…/3-sessions-foo/run-1".


class _Tree:
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

    def set_frozen(self, rel: str, frozen: bool) -> None:
        raise NotImplementedError

    def remove(self, rel: str) -> None:
        """Kill whatever is left in the group, then remove it and its descendants."""
        self.kill(rel)
        self._rmdir(rel)

    def _rmdir(self, rel: str) -> None:
        for root in self.roots:
            _rmdir_tree(root / _own(rel))

    def finish_run(self, session: str, run: str, oom_before: int) -> Usage:
        rel = f"{session}/{run}"
        self.kill(rel)
        usage = Usage(cpu_time=self.cpu_time(rel), oom_killed=self.oom_kills(session) > oom_before)
        self._rmdir(rel)
        return usage

    def remove_leftovers(self, pidns: int) -> None:
        """Remove groups of dead servers of ours: same pid namespace, pid gone, no process left."""
        names = {e.name for root in self.roots if root.is_dir() for e in root.iterdir()}
        for name in sorted(names):
            match = _SERVER_NAME.fullmatch(name)
            if not match or int(match[1]) != pidns or _alive(int(match[2])):
                continue
            if any(_procs(root / name) for root in self.roots):
                log.warning("cgroup %s of a dead server still holds processes; left alone", name)
                continue
            for root in self.roots:
                _rmdir_tree(root / name)
            log.info("removed cgroup %s of a server that is gone", name)


class _V1(_Tree):
    mechanism = Mechanism.V1

    def __init__(self, bases: Mapping[str, Path]) -> None:
        self.bases = dict(bases)
        self.roots = tuple(dict.fromkeys(self.bases.values()))
        cpu = self.bases.get("cpuacct")
        self._session_roots = tuple(root for root in self.roots if root != cpu)

    def make_server(self, rel: str) -> None:
        for root in self.roots:
            (root / _own(rel)).mkdir()

    def make_session(self, rel: str, *, memory: int, pids: int) -> None:
        self.make_server(rel)
        v1_limits(self.bases["memory"] / rel, self.bases["pids"] / rel, memory=memory, pids=pids)

    def session_folders(self, rel: str) -> tuple[Path, ...]:
        return tuple(root / rel for root in self._session_roots)

    def make_run(self, session: str, run: str) -> tuple[tuple[str, ...], int]:
        folders = [str(folder) for folder in self.session_folders(session)]
        cpu = self.bases.get("cpuacct")
        if cpu is not None:
            (cpu / _own(session) / run).mkdir()
            folders.append(str(cpu / session / run))
        return tuple(folders), self.oom_kills(session)

    def oom_kills(self, session: str) -> int:
        text = _read(self.bases["memory"] / session / "memory.oom_control")
        return keyed(text).get("oom_kill", 0)

    def cpu_time(self, run: str) -> float:
        cpu = self.bases.get("cpuacct")
        if cpu is None:
            return 0.0
        return int(_read(cpu / run / "cpuacct.usage")) / 1e9

    def kill(self, rel: str) -> None:
        folders = [root / _own(rel) for root in self.roots]
        # v1 freezer: a frozen process dies of SIGKILL only once thawed.
        _kill_loop(folders, after_first=lambda: self._thaw_quietly(rel))

    def _thaw_quietly(self, rel: str) -> None:
        freezer = self.bases.get("freezer")
        if freezer is not None:
            with contextlib.suppress(FileNotFoundError):
                _write(freezer / rel / "freezer.state", "THAWED")

    def set_frozen(self, rel: str, frozen: bool) -> None:
        freezer = self.bases.get("freezer")
        if freezer is None:
            raise CgroupError(errno.ENOTSUP, "the freezer cgroup hierarchy is not mounted here")
        state = freezer / _own(rel) / "freezer.state"
        want = "FROZEN" if frozen else "THAWED"
        _write(state, want)
        _wait_for(lambda: _read(state).strip() == want, f"{want.lower()} {rel}")


class _V2(_Tree):
    mechanism = Mechanism.V2

    def __init__(self, base: Path) -> None:
        self.base = base
        self.roots = (base,)

    def prepare(self) -> None:
        enabled = _read(self.base / "cgroup.subtree_control").split()
        missing = [c for c in _REQUIRED if c not in enabled]
        if not missing:
            return
        if (self.base / "cgroup.type").exists():
            # Not the root: only a group without processes may enable controllers
            # for its children. Moving our cgroup's processes one level down
            # changes no limit: those of our cgroup still hold them all.
            if not self._delegated():
                raise CgroupError(
                    errno.EPERM,
                    f"{self.base} is not delegated to the server: run it in a container with "
                    "its own cgroup namespace, or in a systemd unit with Delegate=yes",
                )
            self._evacuate()
        _write(self.base / "cgroup.subtree_control", " ".join(f"+{c}" for c in missing))

    def _delegated(self) -> bool:
        """Ours to rearrange: a container's own cgroup (the root of the cgroup mount it
        sees) or one systemd delegated (Delegate=yes marks it), never one that systemd
        or a container runtime manages above us."""
        if os.path.ismount(self.base):
            return True
        for name in ("trusted.delegate", "user.delegate"):
            with contextlib.suppress(OSError):
                if os.getxattr(self.base, name) == b"1":
                    return True
        return False

    def _evacuate(self) -> None:
        leaf = self.base / SERVER_LEAF
        leaf.mkdir(exist_ok=True)
        for _ in range(_MOVE_ROUNDS):
            pids = _read(self.base / "cgroup.procs").split()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    _write(leaf / "cgroup.procs", pid)
        raise CgroupError(errno.EBUSY, f"processes keep appearing in {self.base}")

    def make_server(self, rel: str) -> None:
        folder = self.base / _own(rel)
        folder.mkdir()
        _write(folder / "cgroup.subtree_control", " ".join(f"+{c}" for c in _REQUIRED))

    def make_session(self, rel: str, *, memory: int, pids: int) -> None:
        # The session enables no controller for its runs: their memory and
        # processes are charged to it, where the caps are.
        folder = self.base / _own(rel)
        folder.mkdir()
        v2_limits(folder, memory=memory, pids=pids)

    def session_folders(self, rel: str) -> tuple[Path, ...]:
        return (self.base / rel,)

    def make_run(self, session: str, run: str) -> tuple[tuple[str, ...], int]:
        folder = self.base / _own(session) / run
        folder.mkdir()
        return (str(folder),), self.oom_kills(session)

    def oom_kills(self, session: str) -> int:
        return keyed(_read(self.base / session / "memory.events")).get("oom_kill", 0)

    def cpu_time(self, run: str) -> float:
        # cpu.stat's usage_usec is there without the cpu controller.
        return keyed(_read(self.base / run / "cpu.stat")).get("usage_usec", 0) / 1e6

    def kill(self, rel: str) -> None:
        folder = self.base / _own(rel)

        def populated() -> bool:
            return bool(keyed(_read(folder / "cgroup.events")).get("populated", 0))

        if not folder.exists() or not populated():
            return
        if (folder / "cgroup.kill").exists():  # Linux 5.14+: the whole subtree, frozen or not
            _write(folder / "cgroup.kill", "1")
            _wait_for(lambda: not populated(), f"emptying {rel}")
        else:
            _kill_loop([folder])

    def set_frozen(self, rel: str, frozen: bool) -> None:
        folder = self.base / _own(rel)
        _write(folder / "cgroup.freeze", "1" if frozen else "0")
        _wait_for(
            lambda: keyed(_read(folder / "cgroup.events")).get("frozen", 0) == int(frozen),
            f"{'freezing' if frozen else 'thawing'} {rel}",
        )


def _open(memory: int, processes: int) -> tuple[_Tree, str] | None:
    """The first mechanism that works here, with this server's group made in it."""
    try:
        cgroup_text = Path("/proc/self/cgroup").read_text()
        mountinfo = Path("/proc/self/mountinfo").read_text()
        pidns = os.stat("/proc/self/ns/pid").st_ino
    except OSError as exc:
        log.warning("cgroups: cannot read this process's cgroups: %s", exc)
        return None
    trees: list[_Tree] = []
    base = find_v2(cgroup_text, mountinfo)
    if base is not None:
        trees.append(_V2(base))
    bases = find_v1(cgroup_text, mountinfo)
    if bases:
        trees.append(_V1(bases))
    for tree in trees:
        name = f"{_PREFIX}{pidns}-{os.getpid()}-{secrets.token_hex(3)}"
        try:
            tree.prepare()
            tree.remove_leftovers(pidns)
            tree.make_server(name)
            # Prove every step a session and a run take, once.
            probe = f"{name}/probe"
            tree.make_session(probe, memory=memory, pids=processes)
            _, oom = tree.make_run(probe, "run")
            tree.finish_run(probe, "run", oom)
            tree.remove(probe)
        except OSError as exc:
            log.warning("cgroups: %s cannot be used here: %s", tree.mechanism.value, exc)
            with contextlib.suppress(OSError, ValueError):
                tree.remove(name)
            continue
        return tree, name
    return None


# -- what the rest of the server uses ----------------------------------------


class Cgroups:
    """This server's cgroups: the mechanism in use, and a group per session.

    Without a working mechanism (`rlimits`) it makes no groups and sessions
    fall back to the per-process rlimits.
    """

    def __init__(
        self, tree: _Tree | None = None, server: str = "", *, memory: int = 0, processes: int = 0
    ) -> None:
        self._tree = tree
        self._server = server
        self._memory = memory
        self._processes = processes
        self._ids = itertools.count(1)
        self._closed = False

    @classmethod
    async def start(cls, *, memory: int, processes: int) -> Cgroups:
        """Probe the host; `memory` and `processes` are each session's caps."""
        found = await asyncio.to_thread(_open, memory, processes)
        if found is None:
            log.warning(
                "no usable cgroups: memory is capped per process (rlimits), not per session"
            )
            return cls()
        tree, server = found
        return cls(tree, server, memory=memory, processes=processes)

    @property
    def mechanism(self) -> Mechanism:
        return Mechanism.NONE if self._tree is None else self._tree.mechanism

    @property
    def folders(self) -> tuple[Path, ...]:
        """This server's group in each hierarchy; empty without cgroups."""
        if self._tree is None:
            return ()
        return tuple(root / self._server for root in self._tree.roots)

    async def create(self, label: str) -> SessionGroup | None:
        """A new session group (None without cgroups); CgroupError when the host refuses."""
        if self._tree is None:
            return None
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", label)[:160]
        # The number keeps a recreated session apart from its predecessor still being removed.
        rel = f"{self._server}/{next(self._ids)}-{safe}"
        tree = self._tree
        try:
            await asyncio.to_thread(
                tree.make_session, rel, memory=self._memory, pids=self._processes
            )
        except OSError as exc:
            with contextlib.suppress(OSError):
                await asyncio.to_thread(tree.remove, rel)
            raise CgroupError(exc.errno, f"cannot create the session's cgroup: {exc}") from exc
        return SessionGroup(tree, rel)

    async def close(self) -> None:
        """Kill anything left in this server's groups and remove them; idempotent."""
        if self._tree is None or self._closed:
            return
        self._closed = True
        try:
            await asyncio.to_thread(self._tree.remove, self._server)
        except OSError:
            log.exception("could not remove cgroup %s", self._server)


class SessionGroup:
    """One session's cgroup: its memory and process caps hold for all its runs together."""

    def __init__(self, tree: _Tree, rel: str) -> None:
        self._tree = tree
        self._rel = rel
        self._runs = itertools.count(1)
        self._removed = False

    @property
    def folders(self) -> tuple[Path, ...]:
        """Where the session's caps are (one folder per v1 hierarchy, or the v2 one)."""
        return self._tree.session_folders(self._rel)

    async def start_run(self) -> RunGroup:
        """A group for one run (an execution or an installer), inside the session's."""
        name = f"run-{next(self._runs)}"
        folders, oom = await asyncio.to_thread(self._tree.make_run, self._rel, name)
        return RunGroup(self._tree, self._rel, name, folders, oom)

    async def freeze(self) -> None:
        """Stop every process of the session where it is (CgroupError without a freezer)."""
        await asyncio.to_thread(self._tree.set_frozen, self._rel, True)

    async def thaw(self) -> None:
        await asyncio.to_thread(self._tree.set_frozen, self._rel, False)

    async def remove(self) -> None:
        """Kill whatever is left of the session, then remove its groups; idempotent, never raises."""
        if self._removed:
            return
        self._removed = True
        try:
            await asyncio.to_thread(self._tree.remove, self._rel)
        except OSError:
            log.exception("could not remove cgroup %s", self._rel)


class RunGroup:
    """One run's group: pass `folders` to the launcher, call `finish()` when the run is over."""

    def __init__(
        self, tree: _Tree, session: str, name: str, folders: tuple[str, ...], oom_before: int
    ) -> None:
        self._tree = tree
        self._session = session
        self._name = name
        self.folders = folders
        self._oom_before = oom_before
        self._usage: Usage | None = None

    async def finish(self) -> Usage:
        """Kill what is left of the run, read what it used and remove its group; idempotent."""
        if self._usage is None:
            try:
                self._usage = await asyncio.to_thread(
                    self._tree.finish_run, self._session, self._name, self._oom_before
                )
            except OSError:
                log.exception("could not finish cgroup %s/%s", self._session, self._name)
                self._usage = Usage()
        return self._usage
