"""The sandbox core: validates requests, admits them, and runs executions.

Both adapters (the gRPC service and the HTTP facade) go through `Sandbox`;
neither holds execution logic of its own.
"""

from __future__ import annotations

import asyncio
import logging
import re
import uuid
from collections import OrderedDict
from dataclasses import dataclass

from . import __version__, safefs
from .config import Config
from .errors import Code, RequestError, invalid
from .execution import Execution
from .isolation import Level, Policy, readable_roots
from .launcher import Launcher
from .model import ExecutionSpec, Status
from .runtimes import PRELUDES, Runtime, probe_all
from .sessions import Workspaces, check_session_id

log = logging.getLogger(__name__)

_REMEMBERED_IDS = 100_000
_MAX_ENV_VARS = 128
_MAX_ENV_BYTES = 64 * 1024
_EXECUTION_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Info:
    runtimes: dict[str, str]
    config: Config
    isolation: str
    version: str


class Sandbox:
    def __init__(
        self,
        config: Config,
        runtimes: dict[str, Runtime],
        launcher: Launcher,
        workspaces: Workspaces,
    ) -> None:
        self.config = config
        self.runtimes = runtimes
        self._launcher = launcher
        self._workspaces = workspaces
        self._running: set[Execution] = set()
        self._admitted_ids: OrderedDict[str, None] = OrderedDict()
        self._idle = asyncio.Event()
        self._idle.set()
        self.draining = False

    @classmethod
    async def start(cls, config: Config) -> Sandbox:
        """Probe runtimes and isolation; IsolationUnavailable when below SANDBOX_ISOLATION."""
        runtimes = await asyncio.to_thread(probe_all, config)
        workspaces = Workspaces(config.workspace_root, ttl=config.session_ttl, limits=config.limits)
        await workspaces.start()
        try:
            launcher = await asyncio.to_thread(_create_launcher, config, runtimes, workspaces.quota)
        except BaseException:
            await workspaces.close()
            raise
        workspaces.per_session_uid = launcher.level >= Level.UID
        return cls(config, runtimes, launcher, workspaces)

    async def close(self) -> None:
        await self._workspaces.close()

    @property
    def isolation(self) -> str:
        return self._launcher.level.label

    def info(self) -> Info:
        return Info(
            runtimes={name: rt.version for name, rt in self.runtimes.items()},
            config=self.config,
            isolation=self.isolation,
            version=__version__,
        )

    def open(self, spec: ExecutionSpec) -> Execution:
        """Validate and admit one execution; RequestError when it cannot run."""
        runtime = self._validate(spec)
        self.check_admission()
        if spec.execution_id:
            self._remember(spec.execution_id)
        timeout = self.config.default_timeout if spec.timeout is None else spec.timeout
        execution = Execution(
            spec,
            execution_id=spec.execution_id or uuid.uuid4().hex,
            timeout=min(timeout, self.config.max_timeout),
            runtime=runtime,
            config=self.config,
            launcher=self._launcher,
            workspaces=self._workspaces,
            on_close=self._closed,
        )
        self._running.add(execution)
        self._idle.clear()
        return execution

    def check_admission(self) -> None:
        """RequestError when a new execution would be refused now (shutting down, or full)."""
        if self.draining:
            raise RequestError(
                Code.UNAVAILABLE, "the sandbox server is shutting down; retry on another instance"
            )
        if len(self._running) >= self.config.max_concurrent:
            raise RequestError(
                Code.RESOURCE_EXHAUSTED,
                f"capacity reached: {len(self._running)} executions are running "
                f"(SANDBOX_MAX_CONCURRENT={self.config.max_concurrent}); retry later",
            )

    def _remember(self, execution_id: str) -> None:
        """Admit each client-chosen id once, so that a client's retry can never run code twice.

        A retry that reaches us after an earlier attempt was admitted (its
        `started` lost with the connection) is refused with ALREADY_EXISTS.
        """
        if execution_id in self._admitted_ids:
            raise RequestError(
                Code.ALREADY_EXISTS,
                f"execution_id {execution_id!r} was already admitted; an execution is never run "
                "twice (use a new execution_id to run the code again)",
            )
        self._admitted_ids[execution_id] = None
        if len(self._admitted_ids) > _REMEMBERED_IDS:
            self._admitted_ids.popitem(last=False)

    def _closed(self, execution: Execution) -> None:
        self._running.discard(execution)
        if not self._running:
            self._idle.set()

    def _validate(self, spec: ExecutionSpec) -> Runtime:
        if not spec.code.strip():
            raise invalid("code is empty")
        if len(spec.code.encode()) > self.config.max_code_size:
            raise invalid(
                f"code is larger than {self.config.max_code_size} bytes (SANDBOX_MAX_CODE_SIZE)"
            )
        if len(spec.files) > self.config.max_input_files:
            raise invalid(
                f"{len(spec.files)} input files; at most {self.config.max_input_files} are accepted "
                "(SANDBOX_MAX_INPUT_FILES)"
            )
        runtime = self.runtimes.get(spec.runtime or "python")
        if runtime is None:
            raise invalid(
                f"unsupported runtime: {spec.runtime}; supported: {', '.join(self.runtimes)}"
            )
        if spec.execution_id and not _EXECUTION_ID.match(spec.execution_id):
            raise invalid(
                f"invalid execution_id {spec.execution_id[:140]!r}: use 1-128 characters "
                "from A-Z a-z 0-9 . _ -, starting with a letter or digit"
            )
        if spec.session_id:
            check_session_id(spec.session_id)
        if spec.timeout is not None and spec.timeout <= 0:
            raise invalid("timeout must be positive")
        names: set[str] = set()
        for file in spec.files:
            try:
                parts = safefs.split_name(file.name)
            except safefs.UnsafePath as exc:
                raise invalid(f"input file: {exc}") from None
            normalized = "/".join(parts)
            if normalized in names:
                raise invalid(f"input file {file.name!r} is given twice")
            names.add(normalized)
            if file.size < 0:
                raise invalid(f"input file {file.name!r} has a negative size")
        if (
            len(spec.env) > _MAX_ENV_VARS
            or sum(len(k) + len(v) for k, v in spec.env.items()) > _MAX_ENV_BYTES
        ):
            raise invalid(
                f"env: at most {_MAX_ENV_VARS} variables and {_MAX_ENV_BYTES} bytes in all"
            )
        for name, value in spec.env.items():
            if not _ENV_NAME.match(name):
                raise invalid(f"environment variable name {name!r} is not valid")
            if "\0" in value:
                raise invalid(f"environment variable {name} contains a NUL byte")
        return runtime

    async def delete_workspace(self, session_id: str) -> bool:
        return await self._workspaces.delete(session_id)

    async def shutdown(self, grace: float) -> None:
        """Refuse new work, give running executions `grace` seconds, then kill them."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), grace)
        except TimeoutError:
            for execution in list(self._running):
                execution.stop(
                    Status.KILLED, "the sandbox server is shutting down; the execution was stopped"
                )
            try:
                await asyncio.wait_for(self._idle.wait(), 5.0)
            except TimeoutError:
                log.warning("%d executions did not stop in time", len(self._running))


def _create_launcher(config: Config, runtimes: dict[str, Runtime], quota: bool) -> Launcher:
    readable = [str(PRELUDES)]
    for runtime in runtimes.values():
        readable += runtime.readable
    policy = Policy(
        level=config.isolation,
        pid_namespace=True,
        limits=config.limits,
        network=config.network,
        readable=readable_roots(readable),
    )
    python = runtimes["python"]
    probe = [python.argv[0], "-I", "-S", "-c", f"open({python.argv[-1]!r}).close()"]
    # `namespaces` promises a size-capped workspace: without tmpfs mounts, `uid` is the best.
    strongest = Level.NAMESPACES if quota else Level.UID
    return Launcher.create(
        config.workspace_root / "bin",
        policy,
        minimum=config.isolation,
        probe_argv=probe,
        strongest=strongest,
    )
