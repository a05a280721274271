"""The `oasis-sandbox` command: a thin dispatcher.

`exec` and `demo` are client commands (`oasis.cli.exec`, `oasis.demo`); the
server's modules are imported only when `serve` runs, so the client commands
never load the service (and `serve` never depends on how they are built).
"""

from __future__ import annotations

import argparse
import sys

from oasis import demo as demo_command
from oasis.cli import exec as exec_command

from . import __version__, settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="oasis-sandbox", description="Oasis code sandbox for LLM agents"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "serve",
        help="run the sandbox service (configured by SANDBOX_* variables)",
        description="Run the sandbox service until SIGTERM or Ctrl-C (twice: stop runs now).",
        epilog=settings.describe(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    exec_command.add_parser(commands)
    demo_command.add_parser(commands)
    args = parser.parse_args(argv)
    if args.command == "exec":
        return exec_command.run(args)
    if args.command == "demo":
        return demo_command.run(args)
    return _serve()


def _serve() -> int:
    import asyncio
    import logging

    from . import config, logs_ratelimit
    from .errors import StartError
    from .server import serve

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logs_ratelimit.install()  # a fault that repeats fast must not flood the log
    try:
        asyncio.run(serve(config.load()))
    except (StartError, OSError) as exc:  # OSError: e.g. SANDBOX_ADDR cannot be bound
        print(f"oasis-sandbox: {exc}", file=sys.stderr)
        return 2
    return 0
