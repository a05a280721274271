"""The demo's fallback sandbox, started inside the demo's own process.

THE ONE PLACE where `oasis` imports `sandbox_server`. The client library
otherwise depends only on the wire contract; tests/test_layering.py holds
every other module to that. The import is inside the function so that the
demo still loads where only the client is installed.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


async def start_in_process_sandbox(workspaces: Path, stack: contextlib.AsyncExitStack) -> int:
    """Start a sandbox on a free loopback port, stopped when `stack` closes; its gRPC port.

    Settings come from the SANDBOX_* variables as for `oasis-sandbox serve`
    (so SANDBOX_PYTHON_BIN, or the server's default interpreter, picks the
    code's Python), with loopback ports and a scratch workspace root.
    """
    from sandbox_server import config
    from sandbox_server.server import SandboxServer

    env = dict(os.environ)
    env.update(
        SANDBOX_GRPC_ADDR="127.0.0.1:0",
        SANDBOX_ADDR="127.0.0.1:0",
        SANDBOX_WORKSPACE=str(workspaces),
        SANDBOX_SHUTDOWN_GRACE="2s",
    )
    server = SandboxServer(config.load(env))
    await server.start()
    stack.push_async_callback(server.stop, 0)
    return server.port
