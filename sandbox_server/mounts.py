"""The few mount operations the server needs, through libc.

Session workspaces are size- and inode-capped tmpfs mounts: the quota holds
whatever the code writes, and deleting a workspace is one unmount that never
walks (or follows links in) what the code left behind.

The calls block, so async code runs them through `off_loop`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")

_MS_NOSUID = 2
_MS_NODEV = 4
_MNT_DETACH = 2
_libc = ctypes.CDLL(None, use_errno=True)


def mount_tmpfs(path: Path, *, size: int, inodes: int, uid: int) -> None:
    options = f"size={size},nr_inodes={inodes},mode=0700,uid={uid},gid={uid}"
    if (
        _libc.mount(
            b"oasis-workspace",
            os.fsencode(path),
            b"tmpfs",
            _MS_NOSUID | _MS_NODEV,
            options.encode(),
        )
        != 0
    ):
        error = ctypes.get_errno()
        raise OSError(error, f"cannot mount a tmpfs on {path}: {os.strerror(error)}")


def unmount(path: Path) -> bool:
    """Detach a mount; False when nothing was mounted there."""
    if not os.path.ismount(path):
        return False
    return bool(_libc.umount2(os.fsencode(path), _MNT_DETACH) == 0)


def mounts_under(root: Path) -> list[Path]:
    """Mount points below `root`, deepest first."""
    prefix = str(root).rstrip("/") + "/"
    found = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as table:
        for line in table:
            # Field 5 is the mount point, with spaces and the like octal-escaped.
            point = line.split()[4].encode().decode("unicode_escape")
            if point.startswith(prefix):
                found.append(Path(point))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def unmount_under(root: Path) -> None:
    """Detach every mount below `root`, deepest first (leftovers of an earlier run)."""
    for point in mounts_under(root):
        unmount(point)


async def off_loop(call: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run a blocking mount call in a thread, keeping the event loop free.

    A cancel still waits for the call to end before it goes on: the caller's
    clean-up must see the mount done or not done, never in flight.
    """
    work = asyncio.create_task(asyncio.to_thread(call, *args, **kwargs), name=call.__name__)
    try:
        return await asyncio.shield(work)
    except asyncio.CancelledError:
        while not work.done():  # a second cancel must not end the wait either
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.wait([work])
        work.exception()  # seen: the caller gets the cancel, not a stray warning
        raise
