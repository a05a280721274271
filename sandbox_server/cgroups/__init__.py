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

The package: this module is what the server uses (`Cgroups`, `SessionGroup`,
`RunGroup`) and the probe; `_discover` finds the hierarchies; `_v1` and `_v2`
are the two versions behind the `Tree` interface of `_tree`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import re
import secrets
from pathlib import Path

from ._discover import SERVER_LEAF, find_v1, find_v2
from ._tree import PREFIX, CgroupError, Mechanism, Tree, Usage, keyed, log
from ._v1 import V1Tree, v1_limits
from ._v2 import V2Tree, v2_limits

__all__ = [
    "SERVER_LEAF",
    "CgroupError",
    "Cgroups",
    "Mechanism",
    "RunGroup",
    "SessionGroup",
    "Usage",
    "V1Tree",
    "V2Tree",
    "find_v1",
    "find_v2",
    "keyed",
    "v1_limits",
    "v2_limits",
]


def _open(memory: int, processes: int) -> tuple[Tree, str] | None:
    """The first mechanism that works here, with this server's group made in it."""
    try:
        cgroup_text = Path("/proc/self/cgroup").read_text()
        mountinfo = Path("/proc/self/mountinfo").read_text()
        pidns = os.stat("/proc/self/ns/pid").st_ino
    except OSError as exc:
        log.warning("cgroups: cannot read this process's cgroups: %s", exc)
        return None
    trees: list[Tree] = []
    base = find_v2(cgroup_text, mountinfo)
    if base is not None:
        trees.append(V2Tree(base))
    bases = find_v1(cgroup_text, mountinfo)
    if bases:
        trees.append(V1Tree(bases))
    for tree in trees:
        name = f"{PREFIX}{pidns}-{os.getpid()}-{secrets.token_hex(3)}"
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
        self, tree: Tree | None = None, server: str = "", *, memory: int = 0, processes: int = 0
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
    def kills_runs(self) -> bool:
        """Whether each run gets a group of its own that lists all its processes."""
        return self._tree is not None and self._tree.kills_runs

    @property
    def freezes_runs(self) -> bool:
        """Whether a run's group can be frozen on its own."""
        return self._tree is not None and self._tree.can_freeze_runs

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

    def __init__(self, tree: Tree, rel: str) -> None:
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
        self, tree: Tree, session: str, name: str, folders: tuple[str, ...], oom_before: int
    ) -> None:
        self._tree = tree
        self._session = session
        self._name = name
        self.folders = folders
        self._oom_before = oom_before
        self._usage: Usage | None = None

    def rebase(self) -> None:
        """Count the session's OOM kills from now: a group made ahead of its run must
        not blame it for one in another run meanwhile."""
        try:
            # On the loop: one small cgroupfs read, which a run's start waits for.
            self._oom_before = self._tree.oom_kills(self._session)
        except OSError:
            log.exception("could not read the OOM kills of cgroup %s", self._session)

    @property
    def can_kill_now(self) -> bool:
        """Whether the run has a group of its own that lists all its processes."""
        return self._tree.kills_runs

    def kill_now(self) -> Usage | None:
        """SIGKILL every process of the run, not waiting for their exits, and read
        what it used; None when that failed (then `finish` must be awaited first).

        Lets a run answer before its processes are torn down: a forked child of
        a large zygote takes milliseconds to exit. Called on the event loop: a
        few cgroupfs reads and kill()s, nothing that sleeps.
        """
        try:
            self._tree.signal_kill(f"{self._session}/{self._name}")
            return self._tree.run_usage(self._session, self._name, self._oom_before)
        except OSError:
            log.exception("could not kill cgroup %s/%s", self._session, self._name)
            return None

    # -- a live interpreter's group, kept across its executions (states.py) --

    def procs(self) -> set[int]:
        """The run's processes now (on the loop: one small cgroupfs read)."""
        return self._tree.run_procs(f"{self._session}/{self._name}")

    def freeze(self) -> None:
        """Freeze the run's processes (signals cannot wake them, unlike a SIGSTOP):
        each one freezes before it next runs."""
        self._tree.request_frozen(f"{self._session}/{self._name}", True)

    def thaw(self) -> None:
        self._tree.request_frozen(f"{self._session}/{self._name}", False)

    def kill_others(self, keep: frozenset[int]) -> None:
        """SIGKILL every process of the run but `keep`, not waiting for their exits."""
        self._tree.signal_kill_except(f"{self._session}/{self._name}", keep)

    def cpu_time(self) -> float:
        """Seconds of CPU time the run's processes used since its group was made."""
        return self._tree.cpu_time(f"{self._session}/{self._name}")

    def usage(self) -> Usage:
        """What the run used so far (CPU time since its group was made; OOM kills
        since `rebase`)."""
        return self._tree.run_usage(self._session, self._name, self._oom_before)

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
