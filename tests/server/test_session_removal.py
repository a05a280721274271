"""Removing a session's workspace: a slow or cancelled removal never holds up or breaks
later sessions. These drive the real `Workspaces` on real folders and tmpfs mounts; the
only thing held back is the removal step, so that each test can act while it is pending."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from sandbox_server import mounts, sessions
from sandbox_server.isolation import Limits
from sandbox_server.sessions import Workspaces


@pytest.fixture
async def workspaces(tmp_path: Path) -> AsyncIterator[Workspaces]:
    spaces = Workspaces(tmp_path / "root", ttl=600, limits=Limits())
    await spaces.start()
    try:
        yield spaces
    finally:
        await spaces.close()


async def used(spaces: Workspaces, session_id: str) -> Path:
    """Lease the session once (creating it when new) and leave a file in it."""
    async with spaces.lease(session_id, "exec") as workspace:
        (workspace.path / "data.txt").write_text("x")
        return workspace.path


async def test_a_slow_file_removal_holds_up_neither_that_id_nor_other_sessions(
    workspaces: Workspaces, monkeypatch: pytest.MonkeyPatch
) -> None:
    workspaces.quota = False  # plain folders: removal walks the files, as without tmpfs
    entered, release = asyncio.Event(), asyncio.Event()
    real_remove_tree: Callable[[Path], Awaitable[None]] = sessions.remove_tree

    async def slow_remove_tree(path: Path) -> None:
        entered.set()
        await release.wait()  # stands for a tree of a million files
        await real_remove_tree(path)

    monkeypatch.setattr(sessions, "remove_tree", slow_remove_tree)
    await used(workspaces, "a")
    deleting = asyncio.create_task(workspaces.delete("a"))
    async with asyncio.timeout(30):
        await entered.wait()
        # While the old files are still being deleted:
        other = await used(workspaces, "b")
        again = await used(workspaces, "a")

    assert not deleting.done()
    assert other.name == "b" and again.name == "a"
    assert (again / "data.txt").read_text() == "x"  # the new session's own file
    release.set()
    assert await deleting is True


async def test_a_delete_cancelled_during_the_unmount_leaves_the_id_usable(
    workspaces: Workspaces, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not workspaces.quota:
        pytest.skip("workspaces are not tmpfs mounts here")
    in_unmount, go_on = threading.Event(), threading.Event()
    real_unmount = mounts.unmount

    def held_unmount(path: Path) -> bool:
        in_unmount.set()
        go_on.wait(timeout=30)
        return real_unmount(path)

    path = await used(workspaces, "a")
    monkeypatch.setattr(mounts, "unmount", held_unmount)
    deleting = asyncio.create_task(workspaces.delete("a"))
    async with asyncio.timeout(30):
        await asyncio.to_thread(in_unmount.wait, 30)
        deleting.cancel()  # the client went away mid-delete
        go_on.set()
        with pytest.raises(asyncio.CancelledError):
            await deleting
    monkeypatch.setattr(mounts, "unmount", real_unmount)

    assert not path.exists()  # unmounted and removed together, cancel or not
    async with asyncio.timeout(30):
        again = await used(workspaces, "a")
    assert again == path
