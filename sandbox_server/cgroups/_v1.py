"""cgroup v1: one folder per hierarchy (memory, pids, and cpuacct and freezer where mounted)."""

from __future__ import annotations

import contextlib
import errno
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

    def make_server(self, rel: str) -> None:
        for root in self.roots:
            (root / own(rel)).mkdir()

    def make_session(self, rel: str, *, memory: int, pids: int) -> None:
        self.make_server(rel)
        v1_limits(self.bases["memory"] / rel, self.bases["pids"] / rel, memory=memory, pids=pids)

    def session_folders(self, rel: str) -> tuple[Path, ...]:
        return tuple(root / rel for root in self._session_roots)

    def make_run(self, session: str, run: str) -> tuple[tuple[str, ...], int]:
        folders = [str(folder) for folder in self.session_folders(session)]
        cpu = self.bases.get("cpuacct")
        if cpu is not None:
            (cpu / own(session) / run).mkdir()
            folders.append(str(cpu / session / run))
        return tuple(folders), self.oom_kills(session)

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
        freezer = self.bases.get("freezer")
        if freezer is not None:
            with contextlib.suppress(FileNotFoundError):
                write(freezer / rel / "freezer.state", "THAWED")

    def set_frozen(self, rel: str, frozen: bool) -> None:
        freezer = self.bases.get("freezer")
        if freezer is None:
            raise CgroupError(errno.ENOTSUP, "the freezer cgroup hierarchy is not mounted here")
        state = freezer / own(rel) / "freezer.state"
        want = "FROZEN" if frozen else "THAWED"
        write(state, want)
        wait_for(lambda: read(state).strip() == want, f"{want.lower()} {rel}")
