"""cgroup v2: the server's own cgroup as a delegated subtree with the memory and pids controllers."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

from ._discover import SERVER_LEAF
from ._tree import (
    REQUIRED,
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

_MOVE_ROUNDS = 20


def v2_limits(folder: Path, *, memory: int, pids: int) -> None:
    """A v2 session's caps: memory (tmpfs pages included) without swap, and processes."""
    write(folder / "memory.max", str(memory))
    swap = folder / "memory.swap.max"
    if swap.exists():  # only with swap accounting
        write(swap, "0")
    write(folder / "pids.max", str(pids))


class V2Tree(Tree):
    mechanism = Mechanism.V2

    def __init__(self, base: Path) -> None:
        self.base = base
        self.roots = (base,)

    def prepare(self) -> None:
        enabled = read(self.base / "cgroup.subtree_control").split()
        missing = [c for c in REQUIRED if c not in enabled]
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
        write(self.base / "cgroup.subtree_control", " ".join(f"+{c}" for c in missing))

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
            pids = read(self.base / "cgroup.procs").split()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    write(leaf / "cgroup.procs", pid)
        raise CgroupError(errno.EBUSY, f"processes keep appearing in {self.base}")

    def make_server(self, rel: str) -> None:
        folder = self.base / own(rel)
        folder.mkdir()
        write(folder / "cgroup.subtree_control", " ".join(f"+{c}" for c in REQUIRED))

    def make_session(self, rel: str, *, memory: int, pids: int) -> None:
        # The session enables no controller for its runs: their memory and
        # processes are charged to it, where the caps are.
        folder = self.base / own(rel)
        folder.mkdir()
        v2_limits(folder, memory=memory, pids=pids)

    def session_folders(self, rel: str) -> tuple[Path, ...]:
        return (self.base / rel,)

    def make_run(self, session: str, run: str) -> tuple[tuple[str, ...], int]:
        folder = self.base / own(session) / run
        folder.mkdir()
        return (str(folder),), self.oom_kills(session)

    def oom_kills(self, session: str) -> int:
        return keyed(read(self.base / session / "memory.events")).get("oom_kill", 0)

    def cpu_time(self, run: str) -> float:
        # cpu.stat's usage_usec is there without the cpu controller.
        return keyed(read(self.base / run / "cpu.stat")).get("usage_usec", 0) / 1e6

    def kill(self, rel: str) -> None:
        folder = self.base / own(rel)

        def populated() -> bool:
            return bool(keyed(read(folder / "cgroup.events")).get("populated", 0))

        if not folder.exists() or not populated():
            return
        if (folder / "cgroup.kill").exists():  # Linux 5.14+: the whole subtree, frozen or not
            write(folder / "cgroup.kill", "1")
            wait_for(lambda: not populated(), f"emptying {rel}")
        else:
            kill_loop([folder])

    def signal_kill(self, rel: str) -> None:
        folder = self.base / own(rel)
        try:
            write(folder / "cgroup.kill", "1")  # Linux 5.14+: the whole subtree at once
        except FileNotFoundError:
            if not folder.is_dir():
                raise
            signal_all(folder)

    def run_folder(self, rel: str) -> Path:
        return self.base / own(rel)

    def set_frozen(self, rel: str, frozen: bool) -> None:
        self.request_frozen(rel, frozen)
        wait_for(
            lambda: self.is_frozen(rel) is frozen, f"{'freezing' if frozen else 'thawing'} {rel}"
        )

    can_freeze_runs = True

    def request_frozen(self, rel: str, frozen: bool) -> None:
        write(self.base / own(rel) / "cgroup.freeze", "1" if frozen else "0")

    def is_frozen(self, rel: str) -> bool:
        return bool(keyed(read(self.base / own(rel) / "cgroup.events")).get("frozen", 0))
