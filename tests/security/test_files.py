"""Server-side file handling in a workspace the code controls.

The server reads output files and writes input files as root, in the host's
view of the filesystem, where a link the code planted points at the host's
own files. It must never follow such a link, open a FIFO, return a hard link,
read a huge sparse file, or let a name or session id climb out of its folder.
"""

from __future__ import annotations

import contextlib
import os
import stat
from pathlib import Path

import grpc
import pytest
from aiohttp import ClientSession
from yarl import URL

from oasis.sandbox.v1 import sandbox_pb2 as pb
from oasis.sandbox.v1 import sandbox_pb2_grpc as pb_grpc
from sandbox_server.server import SandboxServer

from ..conftest import StartServer
from ..helpers import eventually, execute_error, rpc_error, start_message
from ..sandbox_client import Outcome, SandboxClient
from .conftest import client_for, session_path

SHADOW = Path("/etc/shadow")


def shadow_leaked(outcome: Outcome) -> bool:
    """Whether the start of the host's /etc/shadow is anywhere in what the server sent."""
    sent = b"".join(response.SerializeToString() for response in outcome.responses)
    return SHADOW.read_bytes()[:40] in sent


async def test_output_symlink_to_etc_shadow_is_refused(client: SandboxClient) -> None:
    """Absolute and relative links to /etc/shadow listed as outputs are refused; its bytes never leave."""
    code = (
        "import os\n"
        "os.symlink('/etc/shadow', 'shadow')\n"
        "os.symlink('../' * 30 + 'etc/shadow', 'relative')\n"
        "set_result('listed', files=['shadow', 'relative', os.path.abspath('shadow')])\n"
    )
    outcome = await client.run(code)
    assert outcome.status == "ERROR"
    assert outcome.output == "listed"
    assert list(outcome.result.files) == []
    for name in ("shadow", "relative"):
        assert f"{name!r} is a symbolic link" in outcome.result.error
    assert not shadow_leaked(outcome)


async def test_output_through_a_linked_folder_is_refused(client: SandboxClient) -> None:
    """A name whose folder is a link (to /etc, or up and out of the workspace) is refused."""
    code = (
        "import os\n"
        "os.symlink('/etc', 'etc')\n"
        "os.symlink('../' * 30, 'up')\n"
        "os.makedirs('real')\n"
        "os.symlink('/etc', 'real/inner')\n"
        "set_result('listed', files=['etc/shadow', 'up/etc/shadow', 'real/inner/hostname'])\n"
    )
    outcome = await client.run(code)
    assert outcome.status == "ERROR"
    assert list(outcome.result.files) == []
    assert outcome.result.error.count("is not a plain folder") == 3
    assert not shadow_leaked(outcome)


async def test_output_fifo_is_refused_without_hanging(client: SandboxClient) -> None:
    """A FIFO listed as an output is refused at once: the server never blocks opening it."""
    code = "import os\nos.mkfifo('fifo')\nset_result('listed', files=['fifo'])"
    outcome = await client.run(code, timeout=30)
    assert outcome.status == "ERROR"
    assert "'fifo' is not a regular file" in outcome.result.error
    assert list(outcome.result.files) == []


async def test_output_hard_link_is_refused(client: SandboxClient) -> None:
    """A hard-linked file is refused, and a hard link to a host file cannot even be made."""
    code = (
        "import os\n"
        "open('plain.txt', 'w').write('data')\n"
        "os.link('plain.txt', 'hard.txt')\n"
        "try:\n"
        "    os.link('/etc/hosts', 'hosts')\n"
        "    outside = 'linked'\n"
        "except OSError as exc:\n"
        "    outside = type(exc).__name__\n"
        "set_result(outside, files=['hard.txt'])\n"
    )
    outcome = await client.run(code)
    assert outcome.status == "ERROR"
    assert "'hard.txt' is a hard link" in outcome.result.error
    assert list(outcome.result.files) == []
    assert outcome.output != "linked"


SPARSE = "open('sparse.bin', 'wb').truncate(50 << 30)\nset_result('made', files=['sparse.bin'])"


async def test_sparse_50_gib_file_cannot_be_made_by_default(client: SandboxClient) -> None:
    """With the default 512 MiB file size limit, a 50 GiB sparse file cannot even be created."""
    outcome = await client.run(SPARSE)
    assert outcome.status == "ERROR"
    assert "file size limit of 512 MiB exceeded" in outcome.result.error
    assert list(outcome.result.files) == []


@pytest.mark.timeout(60)
async def test_sparse_50_gib_output_file_is_refused_unread(start_server: StartServer) -> None:
    """Where the file size limit allows it, a 50 GiB sparse output is refused by the output size limit."""
    server = await start_server(SANDBOX_MAX_FILE_SIZE="64GiB")
    async with client_for(server) as client:
        outcome = await client.run(SPARSE, timeout=30)
    assert outcome.output == "made"
    assert outcome.status == "ERROR"
    assert f"{50 << 30} bytes" in outcome.result.error
    assert "SANDBOX_MAX_OUTPUT_SIZE" in outcome.result.error
    assert list(outcome.result.files) == []
    assert not any(r.WhichOneof("kind") == "file_chunk" for r in outcome.responses)


async def test_input_file_over_a_planted_link_does_not_write_through(
    server: SandboxServer, client: SandboxClient, stub: pb_grpc.SandboxStub, tmp_path: Path
) -> None:
    """An input file lands where an earlier run planted links to host paths; the targets stay untouched."""
    outside = tmp_path / "outside.txt"
    outside.write_text("original")
    outside_dir = tmp_path / "outside-dir"
    outside_dir.mkdir()
    plant = (
        f"import os\nos.symlink({str(outside)!r}, 'data.txt')\n"
        f"os.symlink({str(outside_dir)!r}, 'folder')\n"
        f"os.symlink({str(outside)!r}, 'chunked.txt')\n"
    )
    assert (await client.run(plant, session_id="planter")).status == "OK"

    read_back = "import os\nset_result([os.path.islink('data.txt'), open('data.txt').read()])"
    overwrite = await client.run(
        read_back, session_id="planter", files=[pb.File(name="data.txt", data=b"from the client")]
    )
    assert overwrite.status == "OK", overwrite.result.error
    assert overwrite.output == [False, "from the client"]
    assert outside.read_text() == "original"

    # Through a linked folder: refused outright.
    error = await execute_error(
        stub,
        start_message(
            "set_result(1)",
            session_id="planter",
            files=[pb.File(name="folder/new.txt", data=b"escaped")],
        ),
    )
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a plain folder" in error.details()
    assert list(outside_dir.iterdir()) == []

    # A chunked upload takes the same path: a fresh file renamed over the link.
    chunked = await client.run(
        "set_result(open('chunked.txt').read())",
        session_id="planter",
        files=[pb.File(name="chunked.txt", size=7)],
        after_start=[
            pb.ExecuteRequest(
                file_chunk=pb.FileChunk(name="chunked.txt", data=b"chunked", eof=True)
            )
        ],
    )
    assert chunked.output == "chunked", chunked.result.error
    assert outside.read_text() == "original"
    workspace = session_path(server, "planter")
    assert stat.S_ISREG(os.lstat(workspace / "chunked.txt").st_mode)


BAD_SESSION_IDS = ["..", "../escape", "a/b", "/abs", ".hidden", "-dash", "x" * 129, "a\0b", "ä"]


def listing(root: Path) -> list[str]:
    """Everything under the workspace root, but the scratch workspaces of processes
    started ahead (made and used by the server as runs come)."""
    found = []
    for path in root.rglob("*"):
        parts = path.relative_to(root).parts
        if parts[0] == "scratch" and len(parts) > 1 and parts[1].startswith("spare."):
            continue
        found.append(str(path.relative_to(root)))
    return sorted(found)


@pytest.mark.parametrize("session_id", BAD_SESSION_IDS)
async def test_traversal_in_session_ids_is_refused(
    server: SandboxServer, stub: pb_grpc.SandboxStub, session_id: str
) -> None:
    """Execute and DeleteWorkspace refuse session ids that are not plain names; nothing is created."""
    before = listing(server.config.workspace_root)
    error = await execute_error(stub, start_message("set_result(1)", session_id=session_id))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "invalid session_id" in error.details()
    error = await rpc_error(stub.DeleteWorkspace(pb.DeleteWorkspaceRequest(session_id=session_id)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert listing(server.config.workspace_root) == before


@pytest.mark.parametrize(
    "path", ["..", "../sessions/victim", "..%2Fvictim", "victim%2F..", "%2E%2E", "a%00b"]
)
async def test_traversal_in_http_workspace_path_is_refused(
    server: SandboxServer, client: SandboxClient, path: str
) -> None:
    """DELETE /workspace/<id> with a climbing or malformed id (sent unnormalized) is a 4xx and deletes nothing."""
    assert (await client.run("set_result(1)", session_id="victim")).output == 1
    root = server.config.workspace_root
    before = listing(root)
    async with ClientSession() as http:
        url = URL(f"http://127.0.0.1:{server.http_port}/workspace/{path}", encoded=True)
        async with http.delete(url) as response:
            assert 400 <= response.status < 500
    assert listing(root) == before
    assert session_path(server, "victim").is_dir()


def escaped(workspace_root: Path) -> bool:
    """Whether an escape.txt was written anywhere under the workspaces or in /etc."""
    planted = any(p.name == "escape.txt" for p in workspace_root.rglob("*"))
    return planted or os.path.lexists("/etc/escape.txt")


BAD_FILE_NAMES = ["../escape.txt", "../../escape.txt", "/etc/escape.txt", "a/../../escape.txt", ""]


@pytest.mark.parametrize("name", BAD_FILE_NAMES)
async def test_traversal_in_input_file_names_is_refused(
    server: SandboxServer, stub: pb_grpc.SandboxStub, name: str
) -> None:
    """Input file names that are absolute or climb with '..' are INVALID_ARGUMENT; nothing is written."""
    request = start_message("set_result(1)", session_id="names")
    request.start.files.append(pb.File(name=name, data=b"escaped"))
    error = await execute_error(stub, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not escaped(server.config.workspace_root)


async def test_traversal_in_output_file_names_is_refused(client: SandboxClient) -> None:
    """Output names that climb out of the workspace, or are absolute paths elsewhere, are refused."""
    code = (
        "open('inside.txt', 'w').write('ok')\n"
        "set_result(1, files=['../inside.txt', '/etc/hostname', 'x/../../etc/hosts', 'inside.txt'])\n"
    )
    outcome = await client.run(code)
    assert outcome.status == "ERROR"
    assert [f.name for f in outcome.result.files] == ["inside.txt"]
    assert outcome.result.error.count("output file not returned") == 3


DEEP_TREE = """
import os
here = os.getcwd()
for _ in range(3000):
    os.mkdir('d')
    os.chdir('d')
open('bottom.txt', 'w').write('deep')
os.chdir(here)
depth = 0
path_fd = os.open('.', os.O_RDONLY)
while 'd' in os.listdir(path_fd):
    next_fd = os.open('d', os.O_RDONLY, dir_fd=path_fd)
    os.close(path_fd)
    path_fd = next_fd
    depth += 1
set_result(depth)
"""


@pytest.mark.timeout(120)
async def test_3000_deep_tree_is_deleted_cleanly(
    server: SandboxServer, client: SandboxClient, stub: pb_grpc.SandboxStub
) -> None:
    """DeleteWorkspace removes a 3000-deep tree the code made, and the session starts empty again."""
    outcome = await client.run(DEEP_TREE, session_id="deep", timeout=90)
    assert outcome.output == 3000, outcome.result.error
    workspace = session_path(server, "deep")
    assert (workspace / "d").is_dir()
    response = await stub.DeleteWorkspace(pb.DeleteWorkspaceRequest(session_id="deep"))
    assert response.deleted
    assert not workspace.exists()
    fresh = await client.run("import os\nset_result(os.listdir('.'))", session_id="deep")
    assert fresh.output == []


@pytest.mark.timeout(120)
async def test_3000_deep_scratch_tree_and_leftovers_are_deleted(
    start_server: StartServer, tmp_path: Path
) -> None:
    """A scratch workspace's deep tree goes with the run; a deep tree left from a crash goes at start."""
    leftover = tmp_path / "ws0" / "trash" / "crashed"
    # Made one level at a time from an open folder: the full path is far beyond PATH_MAX.
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        for part in ("ws0", "trash", "crashed", *["d"] * 3000):
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, dir_fd=fd)
            next_fd = os.open(part, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = next_fd
    finally:
        os.close(fd)
    server = await start_server()
    assert not leftover.exists()
    async with client_for(server) as client:
        outcome = await client.run(DEEP_TREE, timeout=90)
    assert outcome.output == 3000, outcome.result.error
    scratch = server.config.workspace_root / "scratch"
    # What is left there are the empty workspaces of processes started ahead; the
    # run's own goes right after its result.
    await eventually(
        lambda: [path.name for path in scratch.iterdir() if any(path.iterdir())] == [],
        timeout=30,
        what="the scratch workspace to go",
    )
