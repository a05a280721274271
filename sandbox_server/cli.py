"""The `oasis-sandbox` command: `serve` runs the service."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from oasis import demo as demo_command

from . import __version__, exec_command, logs_ratelimit, settings
from . import config as config_module
from .errors import StartError
from .server import serve


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

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logs_ratelimit.install()  # a fault that repeats fast must not flood the log
    if args.command == "serve":
        try:
            config = config_module.load()
            asyncio.run(serve(config))
        except (StartError, OSError) as exc:  # OSError: e.g. SANDBOX_ADDR cannot be bound
            print(f"oasis-sandbox: {exc}", file=sys.stderr)
            return 2
    return 0
