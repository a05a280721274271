"""File access inside a folder whose contents untrusted code chose.

Shared by the server (workspaces) and the client (`oasis-sandbox exec --out`
saving returned files), so it lives in the lower package: `sandbox_server`
imports it from here, never the reverse.

User code can plant symlinks, FIFOs, devices and hard links anywhere in its
workspace, and the kernel's symlink protection may be off. So the server
never resolves a path in one go: it walks component by component from an open
directory fd with O_NOFOLLOW, refuses anything that is not a plain directory
or regular file, and writes by creating a fresh file and renaming it into
place (a rename replaces a planted link instead of writing through it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import stat
from pathlib import Path, PurePosixPath

MAX_NAME_BYTES = 4096

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePath(Exception):
    """A name or the thing it points at must not be touched; the message says why."""


def split_name(name: str) -> list[str]:
    """The components of a relative workspace file name, or UnsafePath."""
    if not name:
        raise UnsafePath("file name is empty")
    if "\0" in name:
        raise UnsafePath(f"file name {name!r} contains a NUL byte")
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        raise UnsafePath(f"file name is longer than {MAX_NAME_BYTES} bytes")
    if name.startswith("/"):
        raise UnsafePath(f"file name {name!r} is absolute; use a path relative to the workspace")
    parts = [part for part in PurePosixPath(name).parts if part != "."]
    if ".." in parts:
        raise UnsafePath(f"file name {name!r} contains '..'")
    if not parts:
        raise UnsafePath(f"file name {name!r} does not name a file")
    return parts


def open_parent(root_fd: int, parts: list[str], *, create: bool, owner: int | None = None) -> int:
    """Open the directory holding parts[-1], never following a link on the way.

    Folders it creates are given to `owner` (the session uid), like the file.
    """
    fd = os.dup(root_fd)
    try:
        for part in parts[:-1]:
            try:
                next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                if not create:
                    raise UnsafePath(f"folder {part!r} does not exist") from None
                os.mkdir(part, 0o755, dir_fd=fd)
                next_fd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                if owner is not None:
                    os.fchown(next_fd, owner, owner)
            except (NotADirectoryError, OSError) as exc:
                raise UnsafePath(
                    f"{part!r} is not a plain folder (a link or a file): {exc.strerror}"
                ) from None
            os.close(fd)
            fd = next_fd
        return fd
    except BaseException:
        os.close(fd)
        raise


class AtomicWriter:
    """Writes one workspace file through a fresh temp file renamed into place."""

    def __init__(self, root: Path, name: str, *, owner: int | None = None) -> None:
        self.name = name
        self._parts = split_name(name)
        root_fd = os.open(root, _DIR_FLAGS)
        try:
            self._dir_fd = open_parent(root_fd, self._parts, create=True, owner=owner)
        finally:
            os.close(root_fd)
        self._temp = f".oasis-upload-{secrets.token_hex(8)}"
        self._fd = os.open(self._temp, _CREATE_FLAGS, 0o644, dir_fd=self._dir_fd)
        if owner is not None:
            os.fchown(self._fd, owner, owner)
        self.size = 0

    def write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self.size += len(data)

    def commit(self) -> None:
        os.close(self._fd)
        self._fd = -1
        try:
            os.rename(self._temp, self._parts[-1], src_dir_fd=self._dir_fd, dst_dir_fd=self._dir_fd)
        except OSError as exc:
            self.abort()
            raise UnsafePath(f"cannot place {self.name!r}: {exc.strerror}") from None
        os.close(self._dir_fd)
        self._dir_fd = -1

    def abort(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        if self._dir_fd >= 0:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._temp, dir_fd=self._dir_fd)
            os.close(self._dir_fd)
            self._dir_fd = -1


def write_file(root: Path, name: str, data: bytes, *, owner: int | None = None) -> None:
    writer = AtomicWriter(root, name, owner=owner)
    try:
        writer.write(data)
    except BaseException:
        writer.abort()
        raise
    writer.commit()


def open_regular_file(root: Path, name: str) -> tuple[int, int]:
    """Open a workspace file for reading: (fd, size), or UnsafePath saying why not.

    Refuses links (symbolic, or hard links that may point at other files),
    FIFOs, sockets and devices.
    """
    parts = split_name(name)
    root_fd = os.open(root, _DIR_FLAGS)
    try:
        dir_fd = open_parent(root_fd, parts, create=False)
    finally:
        os.close(root_fd)
    try:
        try:
            fd = os.open(parts[-1], _READ_FLAGS, dir_fd=dir_fd)
        except FileNotFoundError:
            raise UnsafePath(f"{name!r} does not exist") from None
        except OSError as exc:
            if exc.errno == 40:  # ELOOP: the last component is a symlink
                raise UnsafePath(f"{name!r} is a symbolic link, not a file") from None
            raise UnsafePath(f"{name!r} cannot be opened: {exc.strerror}") from None
    finally:
        os.close(dir_fd)
    info = os.fstat(fd)
    problem = None
    if not stat.S_ISREG(info.st_mode):
        problem = f"{name!r} is not a regular file"
    elif info.st_nlink != 1:
        problem = f"{name!r} is a hard link; only plain files are returned"
    if problem:
        os.close(fd)
        raise UnsafePath(problem)
    os.set_blocking(fd, True)
    return fd, info.st_size


def to_workspace_name(root: Path, name: str) -> str:
    """Accept names relative to the workspace or absolute ones inside it."""
    if name.startswith("/"):
        path = PurePosixPath(name)
        try:
            return str(path.relative_to(root))
        except ValueError:
            raise UnsafePath(f"{name!r} lies outside the workspace") from None
    return name


async def remove_tree(path: Path) -> None:
    """Delete a folder that user code filled, however deep, never following links.

    GNU rm walks with fts, keeps no recursion stack and does not follow links;
    Python's rmtree can hit RecursionError on a very deep tree.
    """
    proc = await asyncio.create_subprocess_exec(
        "rm",
        "-rf",
        "--one-file-system",
        "--",
        str(path),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    _, err = await proc.communicate()
    if proc.returncode != 0:
        raise OSError(f"cannot remove {path}: {err.decode(errors='replace').strip()}")
