"""Session workspaces: where they live, who is using them, when they go.

A named session keeps its workspace across executions until it has been idle
for the TTL or is deleted; an execution without a session gets a scratch
workspace that is removed when it ends. A workspace with a running execution
is never evicted or deleted.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .errors import Code, RequestError, invalid
from .safefs import remove_tree

log = logging.getLogger(__name__)

SESSION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_session_id(session_id: str) -> None:
    if not SESSION_ID.match(session_id):
        raise invalid(
            f"invalid session_id {session_id[:140]!r}: use 1-128 characters from "
            "A-Z a-z 0-9 . _ -, starting with a letter or digit"
        )


@dataclass
class _Session:
    path: Path
    active: int = 0
    last_used: float = field(default_factory=time.monotonic)


class Workspaces:
    """Creates, leases, evicts and deletes workspaces under one root folder."""

    def __init__(self, root: Path, *, ttl: float) -> None:
        self._sessions_dir = root / "sessions"
        self._scratch_dir = root / "scratch"
        self._trash_dir = root / "trash"
        self._ttl = ttl
        self._sessions: dict[str, _Session] = {}
        self._sweeper: asyncio.Task[None] | None = None

    async def start(self) -> None:
        for folder in (self._sessions_dir, self._scratch_dir, self._trash_dir):
            folder.mkdir(parents=True, exist_ok=True, mode=0o711)
        # Leftovers of a previous run: scratch and trash are garbage; sessions
        # are kept and get a fresh TTL.
        for folder in (self._scratch_dir, self._trash_dir):
            for entry in os.listdir(folder):
                await remove_tree(folder / entry)
        for entry in os.listdir(self._sessions_dir):
            if SESSION_ID.match(entry):
                self._sessions[entry] = _Session(self._sessions_dir / entry)
        self._sweeper = asyncio.create_task(self._sweep_forever(), name="workspace-sweeper")

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
            self._sweeper = None

    @asynccontextmanager
    async def lease(self, session_id: str, execution_id: str) -> AsyncIterator[Path]:
        """The workspace for one execution, held for as long as the context is open."""
        if not session_id:
            path = self._scratch_dir / execution_id
            path.mkdir(mode=0o755)
            try:
                yield path
            finally:
                await self._discard(path)
            return
        check_session_id(session_id)
        session = self._sessions.get(session_id)
        if session is None:
            session = self._sessions[session_id] = _Session(self._sessions_dir / session_id)
        session.path.mkdir(mode=0o755, exist_ok=True)
        session.active += 1
        try:
            yield session.path
        finally:
            session.active -= 1
            session.last_used = time.monotonic()

    async def delete(self, session_id: str) -> bool:
        """Remove a session's workspace; False when there was none."""
        check_session_id(session_id)
        session = self._sessions.get(session_id)
        if session is None:
            return False
        if session.active:
            raise RequestError(
                Code.FAILED_PRECONDITION,
                f"session {session_id!r} has a running execution; delete it after the execution ends",
            )
        del self._sessions[session_id]
        await self._discard(session.path)
        return True

    def is_known(self, session_id: str) -> bool:
        return session_id in self._sessions

    async def _discard(self, path: Path) -> None:
        # Rename first so the name is free at once, then delete at leisure.
        trash = self._trash_dir / f"{path.name}.{secrets.token_hex(4)}"
        try:
            os.rename(path, trash)
        except FileNotFoundError:
            return
        try:
            await remove_tree(trash)
        except OSError:
            log.exception("could not remove workspace %s", trash)

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
            await self._discard(session.path)
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
