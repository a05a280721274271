"""Input files into the workspace, output files back with MIME types, and what is refused."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import grpc
import pytest

from oasis.sandbox.v1 import sandbox_pb2 as pb
from oasis.sandbox.v1 import sandbox_pb2_grpc as pb_grpc

from ..helpers import RawExecution, execute_error, start_message
from ..sandbox_client import SandboxClient

RUNTIMES = ["python", "node"]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(data: bytes) -> tuple[int, int]:
    """Check a PNG chunk by chunk (CRCs, decodable pixels) and return (width, height)."""
    assert data.startswith(PNG_SIGNATURE)
    offset, chunks, idat = 8, [], b""
    width = height = 0
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in {kind!r}"
        chunks.append(kind)
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            idat += body
        offset += 12 + length
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND"
    pixels = zlib.decompress(idat)
    assert len(pixels) > height * width  # at least one byte per pixel plus filters
    return width, height


async def test_matplotlib_png(client: SandboxClient) -> None:
    """The documented visualization pattern: pandas data, a matplotlib chart, a real PNG returned."""
    code = """
import matplotlib
import matplotlib.pyplot as plt
import pandas as pd
df = pd.DataFrame({"month": ["Jan", "Feb", "Mar"], "sales": [120, 340, 210]})
fig, ax = plt.subplots(figsize=(4, 3), dpi=50)
ax.bar(df["month"], df["sales"])
fig.savefig("charts/sales.png")
set_result({"best": df.loc[df.sales.idxmax(), "month"]}, files=["charts/sales.png"])
"""
    outcome = await client.run("import os\nos.makedirs('charts')\n" + code, timeout=120)
    assert outcome.status == "OK", outcome.result.error
    assert outcome.output == {"best": "Feb"}
    [entry] = outcome.result.files
    assert entry.name == "charts/sales.png"
    assert entry.mime == "image/png"
    assert entry.size == len(entry.data) > 1000
    assert png_size(entry.data) == (200, 150)


OUTPUTS = {
    "python": """
import json, os
os.makedirs("out/deep", exist_ok=True)
open("report.csv", "w").write("a,b\\n1,2\\n")
open("data.json", "w").write(json.dumps({"x": 1}))
open("noext_png", "wb").write(bytes.fromhex("89504e470d0a1a0a") + b"rest")
open("noext_text", "w").write("just words")
open("noext_bin", "wb").write(bytes(range(256)))
open("out/deep/notes.txt", "w").write("deep")
open("empty.txt", "w").close()
set_result("ok", files=["report.csv", "data.json", "noext_png", "noext_text", "noext_bin",
                        os.path.abspath("out/deep/notes.txt"), "empty.txt"])
""",
    "node": """
const fs = require('fs');
const path = require('path');
fs.mkdirSync('out/deep', {recursive: true});
fs.writeFileSync('report.csv', 'a,b\\n1,2\\n');
fs.writeFileSync('data.json', JSON.stringify({x: 1}));
fs.writeFileSync('noext_png', Buffer.concat([Buffer.from('89504e470d0a1a0a', 'hex'), Buffer.from('rest')]));
fs.writeFileSync('noext_text', 'just words');
fs.writeFileSync('noext_bin', Buffer.from([...Array(256).keys()]));
fs.writeFileSync('out/deep/notes.txt', 'deep');
fs.writeFileSync('empty.txt', '');
setResult('ok', ['report.csv', 'data.json', 'noext_png', 'noext_text', 'noext_bin',
                 path.resolve('out/deep/notes.txt'), 'empty.txt']);
""",
}


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_output_files_and_mime_types(client: SandboxClient, runtime: str) -> None:
    """Listed files come back with their bytes and a MIME type by extension, then by content."""
    outcome = await client.run(OUTPUTS[runtime], runtime=runtime)
    assert outcome.status == "OK", outcome.result.error
    files = {f.name: f for f in outcome.result.files}
    assert {name: f.mime for name, f in files.items()} == {
        "report.csv": "text/csv",
        "data.json": "application/json",
        "noext_png": "image/png",
        "noext_text": "text/plain",
        "noext_bin": "application/octet-stream",
        "out/deep/notes.txt": "text/plain",
        "empty.txt": "text/plain",
    }
    assert files["report.csv"].data == b"a,b\n1,2\n"
    assert files["noext_bin"].data == bytes(range(256))
    assert files["out/deep/notes.txt"].data == b"deep"
    assert files["empty.txt"].size == 0 and files["empty.txt"].data == b""
    assert all(f.size == len(f.data) for f in files.values())


BAD_OUTPUTS = {
    "python": """
import os
open("good.txt", "w").write("fine")
os.symlink("{outside}", "link_out.txt")
os.symlink(os.path.dirname("{outside}"), "link_dir")
open("linked_source.txt", "w").write("another name for me")
os.link("linked_source.txt", "hard.txt")
os.mkfifo("pipe")
os.mkdir("folder")
set_result("partial", files=["good.txt", "missing.txt", "/etc/hostname", "../escape.txt",
                             "link_out.txt", "link_dir/outside.txt", "hard.txt", "pipe", "folder"])
""",
    "node": """
const fs = require('fs');
const path = require('path');
const { execFileSync } = require('child_process');
fs.writeFileSync('good.txt', 'fine');
fs.symlinkSync('{outside}', 'link_out.txt');
fs.symlinkSync(path.dirname('{outside}'), 'link_dir');
fs.writeFileSync('linked_source.txt', 'another name for me');
fs.linkSync('linked_source.txt', 'hard.txt');
execFileSync('mkfifo', ['pipe']);
fs.mkdirSync('folder');
setResult('partial', ['good.txt', 'missing.txt', '/etc/hostname', '../escape.txt',
                      'link_out.txt', 'link_dir/outside.txt', 'hard.txt', 'pipe', 'folder']);
""",
}


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_unreturnable_files_are_reported(
    client: SandboxClient, runtime: str, tmp_path: Path
) -> None:
    """Missing files, files outside the workspace, links, FIFOs and folders are named in the error, not dropped."""
    # The code sees no host folder it could write to: its "outside" file lives in
    # its private /tmp (outside the workspace), where it can also hard-link from.
    outside = "/tmp/secret/outside.txt"
    setup = {
        "python": "import os\nos.makedirs('/tmp/secret')\nopen('/tmp/secret/outside.txt', 'w').write('server secret')\n",
        "node": "require('fs').mkdirSync('/tmp/secret');\nrequire('fs').writeFileSync('/tmp/secret/outside.txt', 'server secret');\n",
    }[runtime]
    code = setup + BAD_OUTPUTS[runtime].replace("{outside}", outside)
    outcome = await client.run(code, runtime=runtime)
    assert outcome.status == "ERROR"
    assert outcome.output == "partial"
    assert [(f.name, f.data) for f in outcome.result.files] == [("good.txt", b"fine")]
    error = outcome.result.error
    lines = [line for line in error.splitlines() if line.startswith("output file not returned")]
    assert len(lines) == 8, error
    for name in [
        "missing.txt",
        "/etc/hostname",
        "../escape.txt",
        "link_out.txt",
        "link_dir",
        "hard.txt",
        "pipe",
        "folder",
    ]:
        assert name in error, name
    assert "server secret" not in str(outcome.result)


INPUTS = {
    "python": """
import os
set_result({
    "top": open("top.txt").read(),
    "nested": open("a/b/c/nested.csv").read(),
    "binary": list(open("bin/data.bin", "rb").read()),
    "empty": os.path.getsize("empty.txt"),
    "dot": open("x/y.txt").read(),
})
""",
    "node": """
const fs = require('fs');
setResult({
  top: fs.readFileSync('top.txt', 'utf8'),
  nested: fs.readFileSync('a/b/c/nested.csv', 'utf8'),
  binary: [...fs.readFileSync('bin/data.bin')],
  empty: fs.statSync('empty.txt').size,
  dot: fs.readFileSync('x/y.txt', 'utf8'),
});
""",
}


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_input_files_are_in_the_workspace_before_the_code_starts(
    client: SandboxClient, runtime: str
) -> None:
    """Relative names with subfolders are written before the first line of the code runs."""
    files = [
        pb.File(name="top.txt", data="héllo".encode()),
        pb.File(name="a/b/c/nested.csv", data=b"x,y\n1,2\n"),
        pb.File(name="bin/data.bin", data=bytes([0, 255, 10, 13, 0])),
        pb.File(name="empty.txt"),
        pb.File(name="./x/./y.txt", data=b"dots"),
    ]
    outcome = await client.run(INPUTS[runtime], runtime=runtime, files=files)
    assert outcome.status == "OK", outcome.result.error
    assert outcome.output == {
        "top": "héllo",
        "nested": "x,y\n1,2\n",
        "binary": [0, 255, 10, 13, 0],
        "empty": 0,
        "dot": "dots",
    }


async def test_chunked_input_file(stub: pb_grpc.SandboxStub) -> None:
    """A file declared with its size and no data arrives through chunks before the code runs."""
    code = "set_result(open('up/load.bin', 'rb').read().decode())"
    request = start_message(code)
    request.start.files.append(pb.File(name="up/load.bin", size=11))
    request.start.files.append(pb.File(name="inline.txt", data=b"x"))
    execution = await RawExecution.begin(stub, request)
    for part, eof in ((b"hello ", False), (b"", False), (b"world", True)):
        await execution.send(
            pb.ExecuteRequest(file_chunk=pb.FileChunk(name="up/load.bin", data=part, eof=eof))
        )
    result = await execution.result()
    assert result.status == pb.ExecutionResult.OK, result.error
    assert result.output == '"hello world"'


async def test_input_file_replaces_a_planted_symlink(client: SandboxClient, tmp_path: Path) -> None:
    """An input file named like a symlink the code left behind replaces the link; its target is untouched."""
    outside = tmp_path / "outside.txt"
    outside.write_text("original")
    plant = await client.run(
        f"import os\nos.symlink({str(outside)!r}, 'target.txt')", session_id="plant-file"
    )
    assert plant.status == "OK", plant.result.error

    second = await client.run(
        "import os\nset_result([os.path.islink('target.txt'), open('target.txt').read()])",
        session_id="plant-file",
        files=[pb.File(name="target.txt", data=b"from the client")],
    )
    assert second.status == "OK", second.result.error
    assert second.output == [False, "from the client"]
    assert outside.read_text() == "original"


@pytest.mark.parametrize("chunked", [False, True])
async def test_input_file_is_never_written_through_a_symlinked_folder(
    client: SandboxClient, stub: pb_grpc.SandboxStub, tmp_path: Path, chunked: bool
) -> None:
    """A path through a folder symlink the code planted is refused; nothing lands outside the workspace."""
    outside = tmp_path / "outside_dir"
    outside.mkdir()
    plant = await client.run(
        f"import os\nos.symlink({str(outside)!r}, 'linkdir')", session_id="plant-dir"
    )
    assert plant.status == "OK", plant.result.error

    request = start_message("print('must not run')", session_id="plant-dir")
    if chunked:
        request.start.files.append(pb.File(name="linkdir/evil.txt", size=4))
        chunk = pb.ExecuteRequest(
            file_chunk=pb.FileChunk(name="linkdir/evil.txt", data=b"evil", eof=True)
        )
        error = await execute_error(stub, request, chunk)
    else:
        request.start.files.append(pb.File(name="linkdir/evil.txt", data=b"evil"))
        error = await execute_error(stub, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "linkdir" in error.details()
    assert list(outside.iterdir()) == []


async def test_output_file_written_by_a_child(client: SandboxClient) -> None:
    """Files made by child processes of the code are returned like any other."""
    code = "import subprocess\nsubprocess.run(['sh', '-c', 'echo from-child > child.txt'], check=True)\nset_result(1, files=['child.txt'])"
    outcome = await client.run(code)
    assert outcome.status == "OK", outcome.result.error
    assert outcome.file("child.txt") == b"from-child\n"


async def test_chunked_output_file_over_a_mib(client: SandboxClient) -> None:
    """A file over 1 MiB travels as chunks before the result, whose entry has name, mime and size only."""
    code = "open('big.csv', 'w').write('n\\n' + '1234567\\n' * 300_000)\nset_result(1, files=['big.csv'])"
    outcome = await client.run(code)
    assert outcome.status == "OK", outcome.result.error
    [entry] = outcome.result.files
    assert (entry.name, entry.mime, entry.size, entry.data) == (
        "big.csv",
        "text/csv",
        2 + 8 * 300_000,
        b"",
    )
    chunk_positions = [i for i, kind in enumerate(outcome.kinds()) if kind == "file_chunk"]
    assert len(chunk_positions) >= 3 and chunk_positions[-1] < len(outcome.responses) - 1
    chunks = [r.file_chunk for r in outcome.responses if r.WhichOneof("kind") == "file_chunk"]
    assert [c.eof for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert outcome.chunks["big.csv"] == b"n\n" + b"1234567\n" * 300_000
