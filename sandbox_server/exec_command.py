"""`oasis-sandbox exec`: run a file of code on a running sandbox from the terminal.

Logs stream to the terminal as the code prints them (its stdout to stdout,
its stderr to stderr); then the set_result value is printed to stdout as
JSON, and a summary, the error and saved files are reported on stderr. The
exit status is 0 when the code succeeded, 1 when it failed (error, timeout,
kill), 2 when the sandbox refused or could not be reached, 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path, PurePosixPath
from typing import Any

from oasis import CodeFile, CodeRequest, CodeResult, DispatchResult, LogChunk, ToolCall
from oasis.code import GrpcRunner, MiB
from oasis.errors import OasisError

DEFAULT_TARGET = "127.0.0.1:50051"
MAX_FILE_SIZE = 100 * MiB
"""Returned files up to this size are saved; larger ones are reported only."""
_NODE_SUFFIXES = {".js", ".mjs", ".cjs"}


def add_parser(commands: Any) -> None:
    """Register `exec` on the `oasis-sandbox` subcommands."""
    parser = commands.add_parser(
        "exec",
        help="run a file of code on a running sandbox and stream its logs",
        description="Run code on a running sandbox service over gRPC.",
    )
    parser.add_argument("source", metavar="FILE", help="the code to run, or - for stdin")
    parser.add_argument(
        "--runtime",
        choices=["python", "node"],
        help="default: node for .js/.mjs/.cjs files, else python",
    )
    parser.add_argument(
        "--session", default="", metavar="ID", help="run in this session's workspace"
    )
    parser.add_argument(
        "--file",
        dest="files",
        action="append",
        default=[],
        metavar="PATH",
        help="put this file into the workspace under its base name (repeatable)",
    )
    parser.add_argument(
        "--target", default=DEFAULT_TARGET, metavar="HOST:PORT", help=f"default {DEFAULT_TARGET}"
    )
    parser.add_argument(
        "--out", type=Path, metavar="DIR", help="save files returned by set_result here"
    )
    parser.add_argument(
        "--timeout", type=float, metavar="S", help="seconds the code may run (server default 30)"
    )


def run(args: argparse.Namespace) -> int:
    """Execute the parsed `exec` command; returns the process exit status."""
    logging.basicConfig(level=logging.WARNING, format="[oasis] %(message)s")
    logging.getLogger("oasis.code").setLevel(logging.INFO)  # shows retries
    try:
        request = _request(args)
    except OSError as exc:
        print(f"oasis-sandbox exec: {exc}", file=sys.stderr)
        return 2
    try:
        result = asyncio.run(_execute(args.target, request))
    except KeyboardInterrupt:
        print("\n[oasis] interrupted; the execution was cancelled", file=sys.stderr)
        return 130
    except OasisError as exc:
        code = getattr(exc, "code", "")
        print(f"oasis-sandbox exec: {code + ': ' if code else ''}{exc}", file=sys.stderr)
        return 2
    _report(result, args.out)
    return 0 if result.ok else 1


def _request(args: argparse.Namespace) -> CodeRequest:
    if args.source == "-":
        code = sys.stdin.read()
        runtime = args.runtime or "python"
    else:
        path = Path(args.source)
        code = path.read_text()
        runtime = args.runtime or ("node" if path.suffix in _NODE_SUFFIXES else "python")
    files = [CodeFile(name=Path(p).name, data=Path(p).read_bytes()) for p in args.files]
    return CodeRequest(
        code=code, runtime=runtime, session_id=args.session, timeout=args.timeout, files=files
    )


async def _no_tools(call: ToolCall) -> DispatchResult:
    return DispatchResult(
        content=f"no tools are available under `oasis-sandbox exec` (called {call.name!r})",
        is_error=True,
    )


async def _execute(target: str, request: CodeRequest) -> CodeResult:
    async with GrpcRunner(target, max_file_size=MAX_FILE_SIZE) as runner:
        async for event in runner.stream(request, _no_tools):
            if isinstance(event, LogChunk):
                out = sys.stderr if event.stream == "stderr" else sys.stdout
                out.buffer.write(event.data)
                out.flush()
            else:
                return event
    raise AssertionError("the stream ended without a result")


def _report(result: CodeResult, out: Path | None) -> None:
    if result.output is not None:
        print(json.dumps(result.output, indent=2, ensure_ascii=False))
    sys.stdout.flush()
    note = " (logs truncated)" if result.logs_truncated else ""
    print(
        f"[oasis] {result.status.value} · exit code {result.exit_code} · "
        f"{result.duration:.2f} s{note}",
        file=sys.stderr,
    )
    if result.error and result.error not in result.logs:  # a traceback was already printed live
        print(result.error.rstrip("\n"), file=sys.stderr)
    for file in result.files:
        described = f"{file.name} ({file.size} bytes, {file.mime or 'unknown type'})"
        if file.size and not file.data:
            print(f"[oasis] not saved, over {MAX_FILE_SIZE} bytes: {described}", file=sys.stderr)
        elif out is None:
            print(f"[oasis] returned {described}; pass --out DIR to save it", file=sys.stderr)
        else:
            target = _inside(out, file.name)
            if target is None:
                print(f"[oasis] not saved, unsafe name: {file.name!r}", file=sys.stderr)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(file.data)
            print(f"[oasis] saved {target} ({file.size} bytes, {file.mime})", file=sys.stderr)


def _inside(folder: Path, name: str) -> Path | None:
    """`folder/name`, or None when the name could leave the folder."""
    parts = PurePosixPath(name).parts
    if not parts or PurePosixPath(name).is_absolute() or any(p in ("..", "") for p in parts):
        return None
    return folder.joinpath(*parts)
