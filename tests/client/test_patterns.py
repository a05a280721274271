"""The documented usage patterns, through GrpcRunner, in Python and Node.js."""

from __future__ import annotations

import asyncio
import hashlib
import os
import struct
import zlib
from typing import Any

import pytest

from oasis import CodeFile, CodeRequest, Status, tool_dispatcher
from oasis.code import GrpcRunner

RUNTIMES = ["python", "node"]


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height of a well-formed PNG; fails on a bad signature or chunk CRC."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", data[:16]
    offset, size, chunks = 8, (0, 0), []
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert zlib.crc32(kind + body) == crc, f"bad CRC in {kind!r}"
        if kind == b"IHDR":
            size = struct.unpack(">II", body[:8])
        chunks.append(kind)
        offset += 12 + length
    assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND", chunks
    return size


CHAIN = {
    "python": """
hits = call_tool("search", {"query": "solar panels"})
doc = call_tool("fetch", {"doc_id": hits[0]["id"]})
summary = call_tool("summarize", {"text": doc["body"]})
print("summary:", summary)
set_result({"title": doc["title"], "summary": summary})
""",
    "node": """
const hits = await callTool("search", {query: "solar panels"});
const doc = await callTool("fetch", {doc_id: hits[0].id});
const summary = await callTool("summarize", {text: doc.body});
console.log("summary:", summary);
setResult({title: doc.title, summary});
""",
}


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_sequential_chain(runner: GrpcRunner, runtime: str) -> None:
    calls: list[str] = []

    def search(query: str) -> list[dict[str, Any]]:
        calls.append(f"search:{query}")
        return [{"id": "d7", "score": 0.9}, {"id": "d2", "score": 0.4}]

    async def fetch(doc_id: str) -> dict[str, str]:
        calls.append(f"fetch:{doc_id}")
        return {"title": f"Doc {doc_id}", "body": "Panels turn light into power. " * 3}

    def summarize(text: str) -> str:
        calls.append("summarize")
        return text.split(".")[0]  # a plain string: sent as is, not JSON

    dispatch = tool_dispatcher({"search": search, "fetch": fetch, "summarize": summarize})
    result = await runner.run(CodeRequest(code=CHAIN[runtime], runtime=runtime), dispatch)

    assert result.status is Status.OK, result.error
    assert result.output == {"title": "Doc d7", "summary": "Panels turn light into power"}
    assert calls == ["search:solar panels", "fetch:d7", "summarize"]
    assert result.logs == "summary: Panels turn light into power\n"


CONDITIONAL = {
    "python": """
stock = call_tool("check_stock", {"item": ITEM})
if stock["available"] >= 2:
    receipt = call_tool("order", {"item": ITEM, "quantity": 2})
    set_result({"ordered": receipt})
else:
    call_tool("notify", {"message": f"{ITEM} is low: {stock['available']}"})
    set_result({"ordered": None})
""",
    "node": """
const stock = await callTool("check_stock", {item: ITEM});
if (stock.available >= 2) {
  const receipt = await callTool("order", {item: ITEM, quantity: 2});
  setResult({ordered: receipt});
} else {
  await callTool("notify", {message: `${ITEM} is low: ${stock.available}`});
  setResult({ordered: null});
}
""",
}


@pytest.mark.parametrize("runtime", RUNTIMES)
@pytest.mark.parametrize(("item", "expected_calls"), [("apples", ["order"]), ("pears", ["notify"])])
async def test_conditional(
    runner: GrpcRunner, runtime: str, item: str, expected_calls: list[str]
) -> None:
    stock = {"apples": 10, "pears": 1}
    calls: list[str] = []

    def order(item: str, quantity: int) -> str:
        calls.append("order")
        return f"receipt-{item}-{quantity}"

    def notify(message: str) -> dict[str, bool]:
        calls.append("notify")
        assert message == "pears is low: 1"
        return {"sent": True}

    dispatch = tool_dispatcher(
        {"check_stock": lambda item: {"available": stock[item]}, "order": order, "notify": notify}
    )
    declare = f"ITEM = {item!r}\n" if runtime == "python" else f"const ITEM = {item!r};\n"
    result = await runner.run(
        CodeRequest(code=declare + CONDITIONAL[runtime], runtime=runtime), dispatch
    )

    assert result.status is Status.OK, result.error
    assert calls == expected_calls
    assert result.output == {"ordered": "receipt-apples-2" if item == "apples" else None}


FAN_OUT = {
    "python": """
results = call_tools_parallel([("price", {"city": c}) for c in ["Oslo", "Lima", "Pune", "Kyiv"]])
set_result(results)
""",
    "node": """
const results = await callToolsParallel(["Oslo", "Lima", "Pune", "Kyiv"].map((c) => ["price", {city: c}]));
setResult(results);
""",
}


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_parallel_fan_out_answered_out_of_order(runner: GrpcRunner, runtime: str) -> None:
    cities = ["Oslo", "Lima", "Pune", "Kyiv"]
    arrived: list[str] = []
    answered: list[str] = []
    all_here = asyncio.Event()
    turn = {city: asyncio.Event() for city in cities}

    async def price(city: str) -> dict[str, Any]:
        arrived.append(city)
        if len(arrived) == len(cities):
            all_here.set()
            turn[cities[-1]].set()
        # Every call is outstanding at once, or this times out and the code sees an error.
        await asyncio.wait_for(all_here.wait(), 20)
        await turn[city].wait()
        answered.append(city)
        position = cities.index(city)
        if position:
            turn[cities[position - 1]].set()  # the answers go back last city first
        return {"city": city, "price": len(city) * 10 + position}

    result = await runner.run(
        CodeRequest(code=FAN_OUT[runtime], runtime=runtime), tool_dispatcher({"price": price})
    )

    assert result.status is Status.OK, result.error
    assert answered == cities[::-1]
    assert result.output == [{"city": c, "price": len(c) * 10 + i} for i, c in enumerate(cities)]


VISUALIZATION = {
    "python": """
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt

values = call_tool("get_series", {"name": "visits"})
fig, ax = plt.subplots(figsize=(4, 3), dpi=50)
ax.plot(range(len(values)), values)
ax.set_title("visits")
fig.savefig("charts/visits.png")
set_result({"points": len(values)}, files=["charts/visits.png"])
""",
    "node": r"""
const fs = require("fs");
const zlib = require("zlib");
function crc32(buf) {
  let crc = ~0;
  for (const b of buf) {
    crc ^= b;
    for (let k = 0; k < 8; k++) crc = crc & 1 ? (crc >>> 1) ^ 0xedb88320 : crc >>> 1;
  }
  return ~crc >>> 0;
}
function chunk(type, data) {
  const head = Buffer.alloc(4);
  head.writeUInt32BE(data.length);
  const body = Buffer.concat([Buffer.from(type), data]);
  const tail = Buffer.alloc(4);
  tail.writeUInt32BE(crc32(body));
  return Buffer.concat([head, body, tail]);
}
const values = await callTool("get_series", {name: "visits"});
const width = values.length * 10, height = 40;
const ihdr = Buffer.alloc(13);
ihdr.writeUInt32BE(width, 0);
ihdr.writeUInt32BE(height, 4);
ihdr[8] = 8;  // bit depth; colour type 0 = greyscale
const rows = [];
for (let y = 0; y < height; y++) {
  const row = Buffer.alloc(width + 1);
  for (let x = 0; x < width; x++) row[x + 1] = height - y <= values[Math.floor(x / 10)] ? 0 : 255;
  rows.push(row);
}
fs.mkdirSync("charts", {recursive: true});
fs.writeFileSync("charts/visits.png", Buffer.concat([
  Buffer.from([137, 80, 78, 71, 13, 10, 26, 10]),
  chunk("IHDR", ihdr), chunk("IDAT", zlib.deflateSync(Buffer.concat(rows))), chunk("IEND", Buffer.alloc(0)),
]));
setResult({points: values.length}, ["charts/visits.png"]);
""",
}


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_visualization_returns_a_png(runner: GrpcRunner, runtime: str) -> None:
    series = [3, 9, 4, 12, 30, 22, 17]
    code = VISUALIZATION[runtime]
    if runtime == "python":
        code = "import os\nos.makedirs('charts', exist_ok=True)\n" + code
    result = await runner.run(
        CodeRequest(code=code, runtime=runtime, timeout=60),
        tool_dispatcher({"get_series": lambda name: series}),
    )

    assert result.status is Status.OK, result.error
    assert result.output == {"points": len(series)}
    [chart] = result.files
    assert (chart.name, chart.mime) == ("charts/visits.png", "image/png")
    assert chart.size == len(chart.data)
    width, height = png_size(chart.data)
    assert (width, height) == ((200, 150) if runtime == "python" else (70, 40))


INPUT_FILES = {
    "python": """
import csv, hashlib
with open("data/sales.csv") as f:
    total = sum(int(row["amount"]) for row in csv.DictReader(f))
blob = open("blob.bin", "rb").read()
set_result({"total": total, "size": len(blob), "sha256": hashlib.sha256(blob).hexdigest()})
""",
    "node": """
const fs = require("fs");
const crypto = require("crypto");
const lines = fs.readFileSync("data/sales.csv", "utf8").trim().split("\\n").slice(1);
const total = lines.reduce((sum, line) => sum + Number(line.split(",")[1]), 0);
const blob = fs.readFileSync("blob.bin");
setResult({total, size: blob.length, sha256: crypto.createHash("sha256").update(blob).digest("hex")});
""",
}


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_input_files_small_and_chunked(runner: GrpcRunner, runtime: str) -> None:
    blob = os.urandom(2 * 1024 * 1024 + 12345)  # over 1 MiB: travels as chunks
    csv = b"region,amount\nnorth,120\nsouth,80\neast,7\n"
    request = CodeRequest(
        code=INPUT_FILES[runtime],
        runtime=runtime,
        files=[CodeFile(name="data/sales.csv", data=csv), CodeFile(name="blob.bin", data=blob)],
    )
    result = await runner.run(request, tool_dispatcher({}))

    assert result.status is Status.OK, result.error
    assert result.output == {
        "total": 207,
        "size": len(blob),
        "sha256": hashlib.sha256(blob).hexdigest(),
    }


async def test_many_small_input_files_stay_under_the_message_limit(runner: GrpcRunner) -> None:
    # Six files just under 1 MiB: together far over one 4 MiB message.
    files = [CodeFile(name=f"part{i}.bin", data=bytes([i]) * (1024 * 1024 - 10)) for i in range(6)]
    code = "import os\nset_result(sorted((n, os.path.getsize(n), open(n,'rb').read(1)[0]) for n in os.listdir('.') if n.startswith('part')))"
    result = await runner.run(CodeRequest(code=code, files=files), tool_dispatcher({}))

    assert result.status is Status.OK, result.error
    assert result.output == [[f"part{i}.bin", 1024 * 1024 - 10, i] for i in range(6)]


SESSION = {
    "python": (
        "open('notes.txt', 'w').write(call_tool('secret'))\nset_result('saved')",
        "import os\nset_result(open('notes.txt').read() if os.path.exists('notes.txt') else None)",
    ),
    "node": (
        "require('fs').writeFileSync('notes.txt', await callTool('secret'));\nsetResult('saved');",
        "const fs = require('fs');\nsetResult(fs.existsSync('notes.txt') ? fs.readFileSync('notes.txt', 'utf8') : null);",
    ),
}


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_session_persistence_and_deletion(runner: GrpcRunner, runtime: str) -> None:
    write, read = SESSION[runtime]
    session = f"client-{runtime}"
    dispatch = tool_dispatcher({"secret": lambda: "remember me"})

    first = await runner.run(CodeRequest(code=write, runtime=runtime, session_id=session), dispatch)
    assert (first.status, first.output) == (Status.OK, "saved"), first.error
    second = await runner.run(CodeRequest(code=read, runtime=runtime, session_id=session), dispatch)
    assert (second.status, second.output) == (Status.OK, "remember me"), second.error
    elsewhere = await runner.run(CodeRequest(code=read, runtime=runtime), dispatch)
    assert elsewhere.output is None  # a one-off workspace does not see the session's files

    assert await runner.delete_workspace(session) is True
    assert await runner.delete_workspace(session) is False
    after = await runner.run(CodeRequest(code=read, runtime=runtime, session_id=session), dispatch)
    assert (after.status, after.output) == (Status.OK, None), after.error
