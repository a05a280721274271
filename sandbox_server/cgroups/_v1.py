"""cgroup v1: one folder per hierarchy (memory, pids, and cpuacct and freezer where mounted)."""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Mapping
from pathlib import Path

from ._tree import (
    CgroupError,
    Mechanism,
    Tree,
    keyed,
    kill_loop,
    own,
    read,
    signal_all,
    wait_for,
    write,
)


def v1_limits(memory_folder: Path, pids_folder: Path, *, memory: int, pids: int) -> None:
    """A v1 session's caps: memory (tmpfs pages included) without swap, and processes."""
    write(memory_folder / "memory.limit_in_bytes", str(memory))
    memsw = memory_folder / "memory.memsw.limit_in_bytes"
    if memsw.exists():
        # Memory plus swap equal to memory: no swap. Written second, as it may
        # never be below memory.limit_in_bytes.
        write(memsw, str(memory))
    else:
        with contextlib.suppress(OSError):
            write(memory_folder / "memory.swappiness", "0")
    write(pids_folder / "pids.max", str(pids))


class V1Tree(Tree):
    mechanism = Mechanism.V1

    def __init__(self, bases: Mapping[str, Path]) -> None:
        self.bases = dict(bases)
        self.roots = tuple(dict.fromkeys(self.bases.values()))
        cpu = self.bases.get("cpuacct")
        self._session_roots = tuple(root for root in self.roots if root != cpu)
        # A run has a group of its own only in cpuacct (make_run); the others are the session's.
        self.kills_runs = cpu is not None
        self.can_freeze_runs = "freezer" in self.bases

    def make_server(self, rel: str) -> None:
        for root in self.roots:
            (root / own(rel)).mkdir()

    def make_session(self, rel: str, *, memory: int, pids: int) -> None:
        self.make_server(rel)
        v1_limits(self.bases["memory"] / rel, self.bases["pids"] / rel, memory=memory, pids=pids)

    def session_folders(self, rel: str) -> tuple[Path, ...]:
        return tuple(root / rel for root in self._session_roots)

    def make_run(self, session: str, run: str) -> tuple[tuple[str, ...], int]:
        # A run's own group: in cpuacct (its CPU time, its processes) and in the
        # freezer (a live interpreter is frozen between executions).
        own_roots = self._run_roots()
        folders = [str(root / session) for root in self.roots if root not in own_roots]
        for root in own_roots:
            (root / own(session) / run).mkdir()
            folders.append(str(root / session / run))
        return tuple(folders), self.oom_kills(session)

    def _run_roots(self) -> tuple[Path, ...]:
        found = (self.bases.get("cpuacct"), self.bases.get("freezer"))
        return tuple(dict.fromkeys(root for root in found if root is not None))

    def oom_kills(self, session: str) -> int:
        text = read(self.bases["memory"] / session / "memory.oom_control")
        return keyed(text).get("oom_kill", 0)

    def cpu_time(self, run: str) -> float:
        cpu = self.bases.get("cpuacct")
        if cpu is None:
            return 0.0
        return int(read(cpu / run / "cpuacct.usage")) / 1e9

    def kill(self, rel: str) -> None:
        folders = [root / own(rel) for root in self.roots]
        # v1 freezer: a frozen process dies of SIGKILL only once thawed.
        kill_loop(folders, after_first=lambda: self._thaw_quietly(rel))

    def signal_kill(self, rel: str) -> None:
        signal_all(self.run_folder(rel))

    def run_folder(self, rel: str) -> Path:
        cpu = self.bases.get("cpuacct")
        if cpu is None:
            raise CgroupError(errno.ENOENT, "without cpuacct, a run has no group of its own")
        return cpu / own(rel)

    def _thaw_quietly(self, rel: str) -> None:
        """Thaw the group and every group below it (a live interpreter's run is frozen
        on its own, which thawing its parent does not undo)."""
        freezer = self.bases.get("freezer")
        if freezer is not None:
            for folder, _, _ in os.walk(freezer / own(rel)):
                with contextlib.suppress(FileNotFoundError):
                    write(Path(folder) / "freezer.state", "THAWED")

    def set_frozen(self, rel: str, frozen: bool) -> None:
        self.request_frozen(rel, frozen)
        wait_for(
            lambda: self.is_frozen(rel) is frozen, f"{'freezing' if frozen else 'thawing'} {rel}"
        )

    def request_frozen(self, rel: str, frozen: bool) -> None:
        write(self._freezer_state(rel), "FROZEN" if frozen else "THAWED")

    def is_frozen(self, rel: str) -> bool:
        return read(self._freezer_state(rel)).strip() == "FROZEN"

    def _freezer_state(self, rel: str) -> Path:
        freezer = self.bases.get("freezer")
        if freezer is None:
            raise CgroupError(errno.ENOTSUP, "the freezer cgroup hierarchy is not mounted here")
        return freezer / own(rel) / "freezer.state"
