"""install_package for one execution: the runtime's installer in the session's sandbox.

The installer runs as the session's uid in the session's cgroup, with a
network of its own that reaches only the package index, whatever the
session's network policy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

from .cgroups import RunGroup
from .config import Config
from .errors import RequestError, invalid
from .launcher import Launcher, LaunchSpec
from .launcher.network import installer_network
from .runtimes import Runtime

MAX_PENDING_INSTALLS = 8
"""install_package calls one execution may have running or waiting; more are refused."""


class Installer:
    """Runs one execution's package installs, one at a time."""

    def __init__(
        self,
        *,
        runtime: Runtime,
        config: Config,
        launcher: Launcher,
        workspace: Path,
        uid: int | None,
        path: str,
        start_group: Callable[[], Awaitable[RunGroup | None]],
        oom_hint: str,
    ) -> None:
        self._runtime = runtime
        self._config = config
        self._launcher = launcher
        self._workspace = workspace
        self._uid = uid
        self._path = path
        self._start_group = start_group
        self._oom_hint = oom_hint
        # One installer at a time, and only a few waiting: each installer is
        # a new process tree, so a flood of requests must not fork one each.
        self._lock = asyncio.Lock()
        self._pending = 0

    def reserve(self) -> bool:
        """Count one more install in; False when MAX_PENDING_INSTALLS are already pending."""
        if self._pending >= MAX_PENDING_INSTALLS:
            return False
        self._pending += 1
        return True

    async def install(self, package: str) -> str:
        """Install a reserved package; the error text for the code, empty on success."""
        runtime = self._runtime
        try:
            if not runtime.install_base:
                raise invalid(f"no package installer is available for {runtime.name}")
            argv = runtime.install_argv(
                package, self._workspace, self._config, self._launcher.policy.network
            )
            async with self._lock:
                return await self._run(argv)
        except RequestError as exc:
            return exc.message
        except OSError as exc:  # no network for the installer: it says why
            return str(exc)
        finally:
            self._pending -= 1

    async def _run(self, argv: list[str]) -> str:
        # Not the request's env: PIP_* and npm_config_* variables would steer
        # the installer, which has the network even under SANDBOX_NETWORK=none.
        env = {"PATH": self._path, "HOME": "/tmp", "LANG": "C.UTF-8"}
        launcher = self._launcher
        async with installer_network(launcher.egress, self._runtime.index_hosts) as network:
            # The session's caps hold for its installer too.
            group = await self._start_group()
            try:
                process = await launcher.start(
                    LaunchSpec(
                        argv=argv,
                        cwd=self._workspace,
                        env=env,
                        uid=self._uid,
                        memory=self._runtime.address_space,
                        # npm works in a private staging folder under /tmp.
                        tmp_size=self._config.limits.workspace_size,
                        netns_fd=network.fd if network else None,
                        cgroups=group.folders if group else (),
                    )
                )
            except BaseException:
                if group is not None:
                    await group.finish()
                raise
            try:
                out, err = await asyncio.gather(_tail(process.stdout), _tail(process.stderr))
                code = await process.wait()
            finally:
                await process.kill()
                usage = await group.finish() if group is not None else None
        if code == 0:
            return ""
        text = (err or out).decode(errors="replace").strip()
        text = text[-2000:] or f"the installer exited with code {code}"
        if usage is not None and usage.oom_killed:
            text = f"{self._oom_hint}\n{text}"
        return text


async def _tail(stream: asyncio.StreamReader, keep: int = 64 * 1024) -> bytes:
    """The last `keep` bytes of a stream, read to its end in bounded memory."""
    kept = b""
    while chunk := await stream.read(64 * 1024):
        kept = (kept + chunk)[-keep:]
    return kept
