"""The warm launcher's pool for Python: one zygote kept ready, restarted when it dies.

`WarmPool.start()` returns a forked, fully confined process, or None when
this start must be cold: the zygote is not ready (starting, restarting,
or failing), or the session installed its own copy of a preloaded package,
which a cold interpreter would import instead of the preloaded one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..runtimes import MALLOC_ENV, Runtime
from .process import ForkedProcess
from .zygote import Zygote, ZygoteUnavailable

log = logging.getLogger(__name__)

# The data stack the zygote imports and warms; SANDBOX_PRELOAD adds to it.
DEFAULT_PRELOAD = ("numpy", "pandas", "matplotlib", "matplotlib.pyplot")
# A cold-starting zygote imports the whole stack: seconds on a busy host.
_READY_TIMEOUT = 120.0
_RESTART_DELAYS = (0.5, 1.0, 2.0, 5.0, 15.0, 60.0)


@dataclass(frozen=True, kw_only=True)
class ZygoteSpec:
    """How to start a zygote: the runtime's interpreter and what it preloads."""

    python: str
    library: Path
    site_paths: Sequence[str]
    preload: Sequence[str]
    env: Mapping[str, str]


@dataclass(frozen=True)
class PoolState:
    """What GetInfo reports of a pool."""

    runtime: str
    ready: bool
    warm_starts: int
    cold_starts: int
    restarts: int
    preloaded: tuple[str, ...]


OptionsFor = Callable[[int, int], int]
"""(parent pid, extra address space) -> an fd holding oasis-init's options."""


class WarmPool:
    def __init__(self, runtime: str, spec: ZygoteSpec) -> None:
        self.runtime = runtime
        self._spec = spec
        self._zygote: Zygote | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._closing = False
        self._up = asyncio.Event()
        self.warm_starts = 0
        self.cold_starts = 0
        self.restarts = 0

    def open(self) -> None:
        """Start the zygote in the background: the server serves (cold) meanwhile."""
        self._keeper = asyncio.create_task(self._keep(), name=f"warm-pool-{self.runtime}")

    @property
    def ready(self) -> bool:
        return self._zygote is not None and self._zygote.alive

    async def wait_ready(self) -> None:
        """Return once a zygote serves starts."""
        await self._up.wait()

    def state(self) -> PoolState:
        zygote = self._zygote
        return PoolState(
            runtime=self.runtime,
            ready=self.ready,
            warm_starts=self.warm_starts,
            cold_starts=self.cold_starts,
            restarts=self.restarts,
            preloaded=zygote.preloaded if zygote is not None else (),
        )

    def accepts(self, packages: Path) -> bool:
        """Whether a start can be warm: the zygote is up, and the session's own
        packages (`packages`) hold none of the modules it preloaded."""
        zygote = self._zygote
        return zygote is not None and zygote.alive and not _shadows(packages, zygote.modules)

    def decline(self) -> None:
        """Count a start that went cold."""
        self.cold_starts += 1

    async def start(
        self,
        *,
        options_for: OptionsFor,
        cwd: Path,
        pass_fds: Sequence[int],
        channel: tuple[int, int],
        packages: Path,
        box_pid_namespace: int,
    ) -> ForkedProcess | None:
        """A forked child, or None (counted) when this start must be cold."""
        zygote = self._zygote
        if zygote is None or not self.accepts(packages):
            self.decline()
            return None
        options = options_for(zygote.pid, zygote.address_space)
        try:
            process = await zygote.fork(
                options_fd=options,
                cwd=cwd,
                pass_fds=pass_fds,
                channel=channel,
                box_pid_namespace=box_pid_namespace,
            )
        except ZygoteUnavailable as exc:
            log.warning("warm start failed, starting cold: %s", exc)
            self.decline()
            return None
        finally:
            os.close(options)
        self.warm_starts += 1
        return process

    async def _keep(self) -> None:
        """Keep one zygote running until close(); back off while starts fail."""
        failures = 0
        while not self._closing:
            try:
                zygote = await Zygote.start(
                    python=self._spec.python,
                    library=self._spec.library,
                    site_paths=self._spec.site_paths,
                    preload=self._spec.preload,
                    env=self._spec.env,
                    ready_timeout=_READY_TIMEOUT,
                )
            except ZygoteUnavailable as exc:
                delay = _RESTART_DELAYS[min(failures, len(_RESTART_DELAYS) - 1)]
                failures += 1
                log.warning("%s zygote: %s; retrying in %g s", self.runtime, exc, delay)
                await asyncio.sleep(delay)
                continue
            failures = 0
            self._zygote = zygote
            self._up.set()
            log.info(
                "%s zygote %d ready (preloaded: %s)",
                self.runtime,
                zygote.pid,
                ", ".join(zygote.preloaded) or "nothing",
            )
            code = await zygote.wait()
            self._zygote = None
            self._up.clear()
            if not self._closing:
                self.restarts += 1
                log.warning("%s zygote %d exited (%d); restarting", self.runtime, zygote.pid, code)
                await zygote.close()

    async def close(self) -> None:
        """Stop the zygote; executions it forked end with it (their parent died)."""
        self._closing = True
        zygote = self._zygote
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        if zygote is not None:
            await zygote.close()
        self._zygote = None


def python_pool(runtime: Runtime, library: Path, preload: Sequence[str]) -> WarmPool:
    """The pool for the Python runtime: its interpreter, site folders and data stack."""
    env = {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        # Thread pools do not survive a fork: the libraries start single-threaded.
        "OPENBLAS_NUM_THREADS": "1",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "NUMEXPR_MAX_THREADS": "1",
        "MPLBACKEND": "Agg",
        **MALLOC_ENV,
    }
    if "OASIS_MPL_CACHE" in runtime.env:
        # The prebuilt font cache, which the sandbox can read: matplotlib keeps this path.
        env["MPLCONFIGDIR"] = runtime.env["OASIS_MPL_CACHE"]
    spec = ZygoteSpec(
        python=runtime.argv[0],
        library=library,
        site_paths=runtime.site_paths,
        preload=tuple(dict.fromkeys([*DEFAULT_PRELOAD, *preload])),
        env=env,
    )
    return WarmPool(runtime.name, spec)


def _shadows(packages: Path, preloaded: frozenset[str]) -> bool:
    """Whether the session installed a package the zygote already imported."""
    try:
        names = os.listdir(packages)
    except OSError:
        return False
    return any(name.partition(".")[0].partition("-")[0] in preloaded for name in names)
