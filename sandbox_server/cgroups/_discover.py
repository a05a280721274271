"""Finding the server's own cgroup in each hierarchy, from /proc/self/cgroup and mountinfo."""

from __future__ import annotations

import re
from pathlib import Path

from ._tree import REQUIRED, read

SERVER_LEAF = "oasis-server"
"""Where a v2 server moves the processes of its own cgroup (the no-internal-process rule)."""
_V1_CONTROLLERS = ("memory", "pids", "cpuacct", "freezer")


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
            controllers = read(base / "cgroup.controllers").split()
        except OSError:
            continue
        if all(c in controllers for c in REQUIRED):
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
    if not all(c in bases for c in REQUIRED):
        return {}
    cpu = bases.get("cpuacct")
    if cpu is not None and any(p == cpu for c, p in bases.items() if c != "cpuacct"):
        # Runs get a group only in the cpuacct hierarchy; sharing it with memory
        # would charge their memory to the run, not the session.
        del bases["cpuacct"]
    return bases
