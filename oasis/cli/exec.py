"""`oasis-sandbox exec`: run a file of code on a running sandbox from the terminal.

Logs stream to the terminal as the code prints them (its stdout to stdout,
its stderr to stderr); then the set_result value is printed to stdout as
JSON, and a summary, the error and saved files are reported on stderr. The
exit status is 0 when the code succeeded, 1 when it failed (error, timeout,
kill), 2 when the sandbox refused or could not be reached (or the command
line was wrong), 3 when it succeeded but a returned file was not saved under
--out, 130 on Ctrl-C.

Returned names come from untrusted code, so `--out` writes only inside DIR:
never through a link, never an existing file unless --force, never in `.git`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from .. import _safefs as safefs
from .._net import host_port
from .._safefs import UnsafePath
from .._types import CodeFile, CodeRequest, CodeResult, DispatchResult, LogChunk, ToolCall
from ..code import GrpcOptions, GrpcRunner, MiB
from ..errors import OasisError

DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_PORT = 50051
MAX_FILE_SIZE = 100 * MiB
"""Returned files up to this size are saved; larger ones are reported only."""
_NODE_SUFFIXES = {".js", ".mjs", ".cjs"}
# O_EXCL: an existing file or planted link is never touched; 0o644: never executable.
_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


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
        "--keep-state",
        action="store_true",
        help="run in the session's live interpreter: variables of earlier --keep-state runs "
        "are there, and this run's stay (needs --session)",
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
        "--target",
        default=os.environ.get("OASIS_SANDBOX_TARGET", DEFAULT_TARGET),
        metavar="HOST:PORT",
        help=f"port {DEFAULT_PORT} when left out (default: $OASIS_SANDBOX_TARGET or "
        f"{DEFAULT_TARGET})",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get("OASIS_SANDBOX_TOKEN"),
        help="bearer token, for a server with SANDBOX_AUTH_TOKEN (default: $OASIS_SANDBOX_TOKEN)",
    )
    parser.add_argument(
        "--tls-ca", type=Path, metavar="PEM", help="use TLS, trusting this CA for the server"
    )
    parser.add_argument(
        "--tls-cert",
        type=Path,
        metavar="PEM",
        help="client certificate (mutual TLS; with --tls-key)",
    )
    parser.add_argument("--tls-key", type=Path, metavar="PEM", help="the client certificate's key")
    parser.add_argument(
        "--out", type=Path, metavar="DIR", help="save files returned by set_result here"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="replace files that already exist under --out (links are replaced, not followed)",
    )
    parser.add_argument(
        "--timeout", type=float, metavar="S", help="seconds the code may run (server default 30)"
    )


def run(args: argparse.Namespace) -> int:
    """Execute the parsed `exec` command; returns the process exit status."""
    logging.basicConfig(level=logging.WARNING, format="[oasis] %(message)s")
    logging.getLogger("oasis.code").setLevel(logging.INFO)  # shows retries
    try:
        target = parse_target(args.target)
        options = _connection(args)
        request = _request(args)
    except (OSError, ValueError) as exc:
        print(f"oasis-sandbox exec: {exc}", file=sys.stderr)
        return 2
    try:
        result = asyncio.run(_execute(target, request, options))
    except KeyboardInterrupt:
        print("\n[oasis] interrupted; the execution was cancelled", file=sys.stderr)
        return 130
    except OasisError as exc:
        code = getattr(exc, "code", "")
        print(f"oasis-sandbox exec: {code + ': ' if code else ''}{exc}", file=sys.stderr)
        return 2
    all_saved = _report(result, args.out, force=args.force, keep_state=args.keep_state)
    if not result.ok:
        return 1
    return 0 if all_saved else 3


def parse_target(target: str) -> str:
    """`host:port` (port 50051 when left out), IPv6 in brackets; ValueError says what is wrong."""
    usage = (
        f"--target {target!r} is not host:port, such as {DEFAULT_TARGET} or [::1]:{DEFAULT_PORT}"
    )
    if "/" in target:  # a URL (http://, grpc://, dns:///) or a path
        raise ValueError(usage)
    try:
        host, port = host_port(target, default_port=DEFAULT_PORT)
    except ValueError:
        raise ValueError(usage) from None
    if host is None or port == 0:
        raise ValueError(f"{usage}: it needs a host and a port above 0")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _connection(args: argparse.Namespace) -> GrpcOptions:
    """GrpcRunner's options: the token and the TLS files given on the command line."""
    if (args.tls_cert is None) != (args.tls_key is None):
        raise ValueError("--tls-cert and --tls-key go together")
    return GrpcOptions(
        max_file_size=MAX_FILE_SIZE,
        token=args.token or None,
        root_certificates=args.tls_ca.read_bytes() if args.tls_ca else None,
        certificate_chain=args.tls_cert.read_bytes() if args.tls_cert else None,
        private_key=args.tls_key.read_bytes() if args.tls_key else None,
    )


def _request(args: argparse.Namespace) -> CodeRequest:
    if args.keep_state and not args.session:
        raise ValueError("--keep-state needs --session ID: the live interpreter is the session's")
    if args.source == "-":
        raw, name = sys.stdin.buffer.read(), "stdin"
        runtime = args.runtime or "python"
    else:
        path = Path(args.source)
        raw, name = path.read_bytes(), args.source
        runtime = args.runtime or ("node" if path.suffix in _NODE_SUFFIXES else "python")
    try:
        code = raw.decode("utf-8-sig")  # a byte-order mark is dropped, not run
    except UnicodeDecodeError as exc:
        raise ValueError(f"{name} is not UTF-8 text (invalid byte at offset {exc.start})") from None
    files = [CodeFile(name=Path(p).name, data=Path(p).read_bytes()) for p in args.files]
    return CodeRequest(
        code=code,
        runtime=runtime,
        session_id=args.session,
        timeout=args.timeout,
        files=files,
        keep_state=args.keep_state,
    )


async def _no_tools(call: ToolCall) -> DispatchResult:
    return DispatchResult(
        content=f"no tools are available under `oasis-sandbox exec` (called {call.name!r})",
        is_error=True,
    )


async def _execute(target: str, request: CodeRequest, options: GrpcOptions) -> CodeResult:
    async with GrpcRunner(target, **options) as runner:
        async for event in runner.stream(request, _no_tools):
            if isinstance(event, LogChunk):
                out = sys.stderr if event.stream == "stderr" else sys.stdout
                out.buffer.write(event.data)
                out.flush()
            else:
                return event
    raise AssertionError("the stream ended without a result")


def _report(result: CodeResult, out: Path | None, *, force: bool, keep_state: bool = False) -> bool:
    """Print the outcome and save the files; False when --out was given and a file was not saved."""
    if result.output is not None:
        print(json.dumps(result.output, indent=2, ensure_ascii=False))
    sys.stdout.flush()
    note = " (logs truncated)" if result.logs_truncated else ""
    if keep_state:
        note += " · state kept" if result.state_kept else " · state lost"
    print(
        f"[oasis] {result.status.value} · exit code {result.exit_code} · "
        f"{result.duration:.2f} s{note}",
        file=sys.stderr,
    )
    if result.fresh_state_reason:
        print(
            f"[oasis] started with an empty interpreter: {result.fresh_state_reason}",
            file=sys.stderr,
        )
    if result.error and result.error not in result.logs:  # a traceback was already printed live
        print(result.error.rstrip("\n"), file=sys.stderr)
    all_saved = True
    for file in result.files:
        described = f"{file.name!r} ({file.size} bytes, {file.mime or 'unknown type'})"
        if file.size and not file.data:
            problem = f"over {MAX_FILE_SIZE} bytes"
        elif out is None:
            print(f"[oasis] returned {described}; pass --out DIR to save it", file=sys.stderr)
            continue
        else:
            try:
                save_file(out, file.name, file.data, force=force)
            except (UnsafePath, OSError) as exc:
                problem = str(exc)
            else:
                print(f"[oasis] saved {out / file.name} ({file.size} bytes)", file=sys.stderr)
                continue
        print(f"[oasis] NOT SAVED {described}: {problem}", file=sys.stderr)
        all_saved = all_saved and out is None
    return all_saved


def save_file(folder: Path, name: str, data: bytes, *, force: bool = False) -> None:
    """Write `data` as `folder/name`, never outside folder; UnsafePath says why not.

    The name comes from the code: it is walked component by component from
    an fd on folder (safefs), so `..`, absolute names and links are refused.
    """
    parts = safefs.split_name(name)
    # A file in .git (config, hooks) runs commands on the user's next git call.
    if any(part.lower() == ".git" for part in parts):
        raise UnsafePath(f"{name!r} lies in a .git folder")
    folder.mkdir(parents=True, exist_ok=True)
    root = folder.resolve()  # folder itself is the user's choice: a link there is followed
    if force:
        # A fresh file renamed over the old one replaces a link instead of writing through it.
        safefs.write_file(root, name, data)
        return
    root_fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        dir_fd = safefs.open_parent(root_fd, parts, create=True)
    finally:
        os.close(root_fd)
    try:
        try:
            fd = os.open(parts[-1], _NEW_FILE, 0o644, dir_fd=dir_fd)
        except FileExistsError:
            raise UnsafePath(f"{name!r} already exists; pass --force to replace it") from None
        try:
            with open(fd, "wb") as target:
                target.write(data)
        except BaseException:
            os.unlink(parts[-1], dir_fd=dir_fd)
            raise
    finally:
        os.close(dir_fd)
