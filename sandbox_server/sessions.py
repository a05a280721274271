"""Session workspaces: where they live, who is using them, when they go.

A named session keeps its workspace across executions until it has been idle
for the TTL or is deleted; an execution without a session gets a scratch
workspace that is removed when it ends. A workspace with a running execution
is never evicted or deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import re
import secrets
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, TypeVar

from oasis._safefs import remove_tree

from . import mounts
from .cgroups import Cgroups, SessionGroup
from .errors import Code, InUse, RequestError, invalid
from .isolation import UID_BASE, UID_BLOCK, UID_COUNT, Limits
from .launcher.network import Egress, SessionNetwork

log = logging.getLogger(__name__)

T = TypeVar("T")

ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""A session or execution id: safe as a file name, and short."""


def check_session_id(session_id: str) -> None:
    if not ID.fullmatch(session_id):
        raise invalid(
            f"invalid session_id {session_id[:140]!r}: use 1-128 characters from "
            "A-Z a-z 0-9 . _ -, starting with a letter or digit"
        )


@dataclass(frozen=True)
class Workspace:
    """A leased workspace: where the code runs and which uid owns it."""

    path: Path
    uid: int | None
    """The session's own uid, or None when sessions share the server's (level `none`)."""


class _PerWorkspace(Generic[T]):
    """One resource per workspace (its network, its cgroup): made on first use, by one
    caller even when executions of a session start together, and kept until popped."""

    def __init__(self, make: Callable[[Path], Awaitable[T | None]]) -> None:
        self._make = make
        self._made: dict[Path, T] = {}
        self._locks: dict[Path, asyncio.Lock] = {}

    async def get(self, path: Path) -> T | None:
        async with self._locks.setdefault(path, asyncio.Lock()):
            found = self._made.get(path)
            if found is None:
                found = await self._make(path)
                if found is not None:
                    self._made[path] = found
            return found

    def pop(self, path: Path) -> T | None:
        self._locks.pop(path, None)
        return self._made.pop(path, None)


@dataclass
class _Session:
    workspace: Workspace
    running: set[str] = field(default_factory=set)
    """Executions holding the workspace that have not answered yet."""
    settling: set[str] = field(default_factory=set)
    """Executions that have answered and are tearing their killed processes down."""
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    """Set whenever `settling` is empty."""
    last_used: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.settled.set()

    @property
    def active(self) -> bool:
        return bool(self.running or self.settling)

    def leave(self, execution_id: str) -> None:
        self.running.discard(execution_id)
        self.settling.discard(execution_id)
        if not self.settling:
            self.settled.set()
        self.last_used = time.monotonic()


class Workspaces:
    """Creates, leases, evicts and deletes workspaces under one root folder.

    With `per_session_uid`, every workspace (named or scratch) gets a uid of
    its own that owns its files; with `quota`, each is a size-capped tmpfs, so
    one session cannot fill the disk or starve another. Where cgroups work,
    each also gets a cgroup capping the memory (tmpfs pages included) and
    processes of all its code together. Workspaces do not outlive the server:
    leftovers of an earlier run are removed at start.
    """

    def __init__(self, root: Path, *, ttl: float, limits: Limits, max_sessions: int = 256) -> None:
        self._root = root
        self._sessions_dir = root / "sessions"
        self._scratch_dir = root / "scratch"
        self._trash_dir = root / "trash"
        self._ttl = ttl
        self._limits = limits
        self._sessions: dict[str, _Session] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._next_uid = 0
        self._uid_block = UID_BASE + secrets.randbelow(UID_COUNT // UID_BLOCK) * UID_BLOCK
        self._uids_in_use: set[int] = set()
        self._max_sessions = max_sessions
        self._networks = _PerWorkspace(self._make_network)
        self._closing: set[asyncio.Task[None]] = set()
        self._creating = asyncio.Lock()
        self._removing: dict[Path, asyncio.Future[None]] = {}
        """Workspaces being discarded: a session made again waits for its old folder to go."""
        self.per_session_uid = False
        self.quota = False
        self._root_lock: int | None = None
        self.egress: Egress | None = None
        """Set when each workspace's code gets its own egress network (SANDBOX_NETWORK=egress)."""
        self.cgroups = Cgroups()
        """Per-session memory and process caps; probed by start() (rlimits only until then)."""
        self._groups = _PerWorkspace(self._make_group)
        self.on_release: Callable[[Path], Awaitable[None]] | None = None
        """Called first when a workspace goes away (processes started ahead in it stop)."""

    async def start(self) -> None:
        self._hold_root()
        try:
            for folder in (self._sessions_dir, self._scratch_dir, self._trash_dir):
                folder.mkdir(parents=True, exist_ok=True, mode=0o711)
            await self._remove_leftovers()
            self.quota = await asyncio.to_thread(self._quota_works)
            self.cgroups = await Cgroups.start(
                memory=self._limits.session_memory, processes=self._limits.processes
            )
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="workspace-sweeper")
        except BaseException:
            self._release_root()
            raise

    def _hold_root(self) -> None:
        """One server per workspace root: a second one would remove the first's live
        sessions as leftovers. The lock goes with the process, even when it is killed."""
        self._root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._root / ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise InUse(
                f"SANDBOX_WORKSPACE: {self._root} is in use by another sandbox server "
                f"(pid {holder}); give each server its own SANDBOX_WORKSPACE"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._root_lock = fd

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None
        for name in list(self._sessions):
            session = self._sessions.pop(name)
            await self._discard(session.workspace)
        await asyncio.gather(*self._closing, return_exceptions=True)
        if self.egress is not None:
            await self.egress.close()
        await self.cgroups.close()
        self._release_root()

    def _release_root(self) -> None:
        if self._root_lock is not None:
            os.close(self._root_lock)  # the next server may take the root
            self._root_lock = None

    @asynccontextmanager
    async def lease(
        self, session_id: str, execution_id: str, *, scratch: Workspace | None = None
    ) -> AsyncIterator[Workspace]:
        """The workspace for one execution, held for as long as the context is open.

        Without a session, a new scratch workspace, or `scratch` (one made by
        create_scratch); either is removed when the context ends."""
        if not session_id:
            workspace = scratch or await self.create_scratch(execution_id)
            try:
                yield workspace
            finally:
                await self._discard(workspace)
            return
        check_session_id(session_id)
        path = self._sessions_dir / session_id
        while (session := self._sessions.get(session_id)) is None:
            if (removing := self._removing.get(path)) is not None:
                # The same id, deleted a moment ago: wait until its name is free,
                # outside the lock, so other sessions are created meanwhile.
                await asyncio.shield(removing)
                continue
            # Creating awaits the mount: one creator at a time keeps a session made
            # once and the count exact; it is registered only once mounted.
            async with self._creating:
                if session_id not in self._sessions and path not in self._removing:
                    await self._new_session(session_id)
        session.running.add(execution_id)
        try:
            yield session.workspace
        finally:
            session.leave(execution_id)

    def settle(self, session_id: str, execution_id: str) -> None:
        """The execution has answered: only its teardown still holds the workspace,
        which a deletion waits for instead of refusing."""
        session = self._sessions.get(session_id)
        if session is not None and execution_id in session.running:
            session.running.discard(execution_id)
            session.settling.add(execution_id)
            session.settled.clear()

    async def create_scratch(self, name: str) -> Workspace:
        """A workspace of no session; `discard_scratch` removes it."""
        # The random part keeps two runs with the same client-chosen id apart.
        return await self._create(self._scratch_dir / f"{name}.{secrets.token_hex(4)}")

    async def discard_scratch(self, workspace: Workspace) -> None:
        await self._discard(workspace)

    def holds(self, workspace: Workspace) -> bool:
        """Whether `workspace` is a session's current one (not deleted or evicted)."""
        session = self._sessions.get(workspace.path.name)
        return session is not None and session.workspace == workspace

    async def delete(self, session_id: str) -> bool:
        """Remove a session's workspace; False when there was none."""
        check_session_id(session_id)
        first = self._sessions.get(session_id)
        while True:
            session = self._sessions.get(session_id)
            if session is None or session is not first:  # deleted (and made again) meanwhile
                return False
            if session.running:
                raise RequestError(
                    Code.FAILED_PRECONDITION,
                    f"session {session_id!r} has a running execution; delete it after the execution ends",
                )
            if not session.settling:
                break
            # Answered a moment ago: its killed processes are being reaped.
            await session.settled.wait()
        del self._sessions[session_id]
        await self._discard(session.workspace)
        return True

    async def network(self, workspace: Workspace) -> SessionNetwork | None:
        """The workspace's own egress network; None unless the network is egress."""
        return await self._networks.get(workspace.path)

    async def cgroup(self, workspace: Workspace) -> SessionGroup | None:
        """The workspace's own cgroup (memory and process caps for all its code together);
        None without cgroups."""
        return await self._groups.get(workspace.path)

    async def _make_network(self, path: Path) -> SessionNetwork | None:
        return await self.egress.take() if self.egress is not None else None

    async def _make_group(self, path: Path) -> SessionGroup | None:
        return await self.cgroups.create(f"{path.parent.name}-{path.name}")

    def is_known(self, session_id: str) -> bool:
        return session_id in self._sessions

    async def _new_session(self, session_id: str) -> _Session:
        if len(self._sessions) >= self._max_sessions:
            raise RequestError(
                Code.RESOURCE_EXHAUSTED,
                f"{len(self._sessions)} sessions exist (SANDBOX_MAX_SESSIONS="
                f"{self._max_sessions}); delete one you no longer need, or retry after "
                "idle sessions expire",
            )
        workspace = await self._create(self._sessions_dir / session_id)
        session = self._sessions[session_id] = _Session(workspace)
        return session

    async def _create(self, path: Path) -> Workspace:
        uid = self._allocate_uid() if self.per_session_uid else None
        try:
            await mounts.off_loop(self._make_folder, path, uid)
        except BaseException as exc:
            if uid is not None:
                self._uids_in_use.discard(uid)
            if isinstance(exc, asyncio.CancelledError):
                # off_loop let the call end: the folder may well exist.
                await mounts.off_loop(_remove_folder, path)
            raise
        return Workspace(path, uid)

    def _make_folder(self, path: Path, uid: int | None) -> None:
        """The workspace folder: a size-capped tmpfs with `quota`, else a plain folder."""
        path.mkdir(mode=0o700)
        try:
            if self.quota:
                limits = self._limits
                mounts.mount_tmpfs(
                    path, size=limits.workspace_size, inodes=limits.workspace_files, uid=uid or 0
                )
            elif uid is not None:
                os.chown(path, uid, uid)
        except BaseException:
            path.rmdir()
            raise

    def _allocate_uid(self) -> int:
        # Handed out in turn through this server's block, skipping any still
        # in use, so no file or process of an earlier session can be
        # inherited by a later one.
        for _ in range(UID_BLOCK):
            uid = self._uid_block + self._next_uid % UID_BLOCK
            self._next_uid += 1
            if uid not in self._uids_in_use:
                self._uids_in_use.add(uid)
                return uid
        raise RequestError(Code.RESOURCE_EXHAUSTED, f"all {UID_BLOCK} session uids are in use")

    def _quota_works(self) -> bool:
        probe = Path(tempfile.mkdtemp(prefix="quota-probe-", dir=self._trash_dir))
        try:
            mounts.mount_tmpfs(probe, size=1024 * 1024, inodes=16, uid=0)
        except OSError as exc:
            log.warning("workspaces cannot be size-capped tmpfs mounts here: %s", exc)
            return False
        finally:
            mounts.unmount(probe)
            probe.rmdir()
        return True

    async def _discard(self, workspace: Workspace) -> None:
        freed = asyncio.get_running_loop().create_future()
        self._removing[workspace.path] = freed
        trash = None
        try:
            trash = await self._release(workspace)
        finally:
            # The name is free (unmounted and removed, or renamed away): a new
            # session of the same id may start while the old files are deleted.
            del self._removing[workspace.path]
            freed.set_result(None)
        if trash is not None:
            try:
                await remove_tree(trash)
            except OSError:
                log.exception("could not remove workspace %s", trash)

    async def _release(self, workspace: Workspace) -> Path | None:
        """Stop the workspace's processes and free its name; the folder left to delete."""
        network = self._networks.pop(workspace.path)
        group = self._groups.pop(workspace.path)
        if network is not None:
            # Scheduled before any await, so a cancel cannot leak it; the kernel takes
            # 20-40 ms to tear its interface down, which stays off the client's path.
            closing = asyncio.create_task(
                network.close(), name=f"close-network-{workspace.path.name}"
            )
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
        try:
            if self.on_release is not None:
                await self.on_release(workspace.path)
            if group is not None:
                # First: no process of the session may outlive it (this never raises).
                await group.remove()
            # One thread call, so a cancel cannot split the unmount from the rmdir.
            return await mounts.off_loop(self._free_name, workspace.path)
        finally:
            if workspace.uid is not None:
                self._uids_in_use.discard(workspace.uid)

    def _free_name(self, path: Path) -> Path | None:
        """Unmount and remove `path`, or rename it to the trash; the trash folder, if any."""
        if mounts.unmount(path):
            # A tmpfs: unmounting freed everything, without walking user files.
            os.rmdir(path)
            return None
        # Rename so the name is free at once; the caller deletes the files at leisure.
        trash = self._trash_dir / f"{path.name}.{secrets.token_hex(4)}"
        try:
            os.rename(path, trash)
        except FileNotFoundError:
            return None
        return trash

    async def _remove_leftovers(self) -> None:
        await mounts.off_loop(mounts.unmount_under, self._root)
        for folder in (self._sessions_dir, self._scratch_dir, self._trash_dir):
            for entry in os.listdir(folder):
                await remove_tree(folder / entry)

    async def evict_idle(self) -> list[str]:
        evicted = []
        for name in list(self._sessions):
            # Checked again for each one: a lease may begin while we await a removal.
            session = self._sessions.get(name)
            if (
                session is None
                or session.active
                or time.monotonic() - session.last_used < self._ttl
            ):
                continue
            del self._sessions[name]
            await self._discard(session.workspace)
            evicted.append(name)
            log.info("evicted idle session %s", name)
        return evicted

    async def _sweep_forever(self) -> None:
        interval = min(max(self._ttl / 4, 0.05), 60.0)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.evict_idle()
            except Exception:
                log.exception("workspace sweep failed")


def _remove_folder(path: Path) -> None:
    """Undo `_make_folder` (the folder is still empty: no code has run in it)."""
    mounts.unmount(path)
    with contextlib.suppress(FileNotFoundError):
        path.rmdir()
