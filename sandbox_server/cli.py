"""The `oasis-sandbox` command: `serve` runs the service."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from . import config as config_module
from .launcher import BuildError
from .runtimes import RuntimeUnavailable
from .server import serve


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="oasis-sandbox", description="Oasis code sandbox for LLM agents")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="run the sandbox service (configured by SANDBOX_* variables)")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.command == "serve":
        try:
            config = config_module.load()
            asyncio.run(serve(config))
        except (config_module.ConfigError, BuildError, RuntimeUnavailable, OSError) as exc:
            print(f"oasis-sandbox: {exc}", file=sys.stderr)
            return 2
    return 0
