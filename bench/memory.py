"""Memory of a running server, read from /proc (Linux only).

PSS counts a page shared by n processes as 1/n in each, so summing it over a
process tree counts shared pages (the interpreter, preloaded libraries) once.
"""

from __future__ import annotations

import threading
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

_PROC = Path("/proc")


@dataclass(frozen=True, kw_only=True)
class ProcessMemory:
    pid: int
    name: str
    pss_kib: int
    rss_kib: int


def descendants(root: int) -> list[int]:
    """`root` and every process below it, parents first."""
    children: dict[int, list[int]] = defaultdict(list)
    for entry in _PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # exited meanwhile
        # The name in parentheses may itself hold spaces or parentheses.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children[ppid].append(int(entry.name))
    found, queue = [], [root]
    while queue:
        pid = queue.pop(0)
        found.append(pid)
        queue.extend(sorted(children.get(pid, ())))
    return found


def tree_memory(root: int) -> list[ProcessMemory]:
    """PSS and RSS of `root` and its descendants (processes that exit meanwhile are skipped)."""
    found = []
    for pid in descendants(root):
        try:
            rollup = _fields(_PROC / str(pid) / "smaps_rollup")
            name = (_PROC / str(pid) / "comm").read_text().strip()
        except OSError:
            continue
        found.append(
            ProcessMemory(pid=pid, name=name, pss_kib=rollup["Pss"], rss_kib=rollup["Rss"])
        )
    return found


def status(pid: int) -> dict[str, int]:
    """The kB fields of /proc/<pid>/status (VmRSS, VmHWM, ...)."""
    return _fields(_PROC / str(pid) / "status")


def reset_peak(pid: int) -> bool:
    """Reset the process's VmHWM to its current RSS; False where the kernel does not allow it."""
    try:
        (_PROC / str(pid) / "clear_refs").write_text("5")
    except OSError:
        return False
    return True


class PeakSampler:
    """Samples a process's VmRSS in a thread, so the peak between start and stop is known
    even where VmHWM cannot be reset."""

    def __init__(self, pid: int, *, interval: float = 0.005) -> None:
        self.pid = pid
        self.interval = interval
        self.peak_kib = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        while True:
            try:
                self.peak_kib = max(self.peak_kib, status(self.pid)["VmRSS"])
            except (OSError, KeyError):
                return
            if self._stop.wait(self.interval):
                return


def _fields(path: Path) -> dict[str, int]:
    """`Name:   123 kB` lines as {Name: 123}."""
    fields = {}
    for line in path.read_text().splitlines():
        name, _, rest = line.partition(":")
        value = rest.split()
        if len(value) == 2 and value[1] == "kB":
            fields[name] = int(value[0])
    return fields
