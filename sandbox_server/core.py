"""The sandbox core: validates requests, admits them, and runs executions.

Both adapters (the gRPC service and the HTTP facade) go through `Sandbox`;
neither holds execution logic of its own.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import uuid
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path

from oasis import _safefs as safefs

from . import __version__
from .cgroups import Cgroups
from .config import Config
from .errors import Code, RequestError, invalid
from .execution import Execution
from .isolation import Level, Network, Policy, readable_roots
from .launcher import IsolationUnavailable, Launcher, PoolState
from .launcher.build import LIBRARY_NAME, BuildError, ensure_init_library
from .launcher.network import Egress, NetworkUnavailable, write_resolv_conf
from .launcher.warm import python_pool
from .model import ExecutionSpec, Status
from .prestart import Spares, SpareState
from .runtimes import PRELUDES, Runtime, probe_all
from .sessions import ID, Workspaces, check_session_id
from .states import LiveStates, StatefulInfo

log = logging.getLogger(__name__)

_REMEMBERED_IDS = 100_000
_MAX_ENV_VARS = 128
_MAX_ENV_BYTES = 64 * 1024
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class Info:
    runtimes: dict[str, str]
    config: Config
    isolation: str
    version: str
    stateful: StatefulInfo
    resource_control: str = "rlimits"
    """How session memory and processes are capped: "cgroup v2", "cgroup v1" or "rlimits"."""
    pools: tuple[PoolState, ...] = ()
    spares: tuple[SpareState, ...] = ()


class Sandbox:
    def __init__(
        self,
        config: Config,
        runtimes: dict[str, Runtime],
        launcher: Launcher,
        workspaces: Workspaces,
        spares: Spares | None = None,
        states: LiveStates | None = None,
    ) -> None:
        self.config = config
        self.runtimes = runtimes
        self._launcher = launcher
        self._workspaces = workspaces
        self._spares = spares
        self._states = states or LiveStates(
            enabled=False, reason="not started", max_states=0, idle=0.0
        )
        self._running: set[Execution] = set()
        self._admitted_ids: OrderedDict[str, None] = OrderedDict()
        self._idle = asyncio.Event()
        self._idle.set()
        self.draining = False

    @classmethod
    async def start(cls, config: Config) -> Sandbox:
        """Probe runtimes and isolation; IsolationUnavailable when below SANDBOX_ISOLATION."""
        runtimes = await asyncio.to_thread(probe_all, config)
        workspaces = Workspaces(
            config.workspace_root,
            ttl=config.session_ttl,
            limits=config.limits,
            max_sessions=config.max_sessions,
        )
        await workspaces.start()
        try:
            launcher = await asyncio.to_thread(_create_launcher, config, runtimes, workspaces.quota)
            await _choose_network(config, launcher)
        except BaseException:
            await workspaces.close()
            raise
        workspaces.per_session_uid = launcher.level >= Level.UID
        if launcher.level is Level.NONE:
            log.warning(
                "ISOLATION IS OFF (SANDBOX_ISOLATION=none): code runs as this server's own "
                "user, with its rights and files; for development only"
            )
        if launcher.policy.network is Network.EGRESS:
            workspaces.egress = launcher.egress
        spares = None
        if config.launcher == "warm" and launcher.level is Level.NAMESPACES:
            # Warm children enter namespaces built for them: below that level, all start cold.
            await _open_warm_pools(config, runtimes, launcher)
            spares = Spares(
                runtimes,
                launcher,
                workspaces,
                scratch=config.spares,
                sessions=config.session_spares,
            )
            spares.open()
        states = LiveStates(
            enabled=config.stateful and _can_keep_state(workspaces.cgroups),
            reason=_stateful_off_reason(config, workspaces.cgroups),
            max_states=config.max_states,
            idle=config.state_idle,
        )
        states.open()

        async def release(path: Path) -> None:
            # First: nothing started in a workspace may outlive it.
            await states.release_workspace(path)
            if spares is not None:
                await spares.release(path)

        workspaces.on_release = release
        return cls(config, runtimes, launcher, workspaces, spares, states)

    async def close(self) -> None:
        try:
            await self._states.close()
            if self._spares is not None:
                await self._spares.close()
        finally:
            try:
                await self._launcher.close()
            finally:
                await self._workspaces.close()

    @property
    def isolation(self) -> str:
        return self._launcher.level.label

    @property
    def network(self) -> Network:
        return self._launcher.policy.network

    @property
    def cgroups(self) -> Cgroups:
        return self._workspaces.cgroups

    def info(self) -> Info:
        return Info(
            runtimes={name: rt.version for name, rt in self.runtimes.items()},
            config=self.config,
            isolation=self.isolation,
            version=__version__,
            resource_control=self.cgroups.mechanism.value,
            pools=tuple(self._launcher.pool_states()),
            spares=self._spares.states() if self._spares is not None else (),
            stateful=self._states.info(),
        )

    def open(self, spec: ExecutionSpec) -> Execution:
        """Validate and admit one execution; RequestError when it cannot run."""
        runtime = self._validate(spec)
        self.check_admission()
        execution_id = spec.execution_id or uuid.uuid4().hex
        if spec.keep_state:
            # Before the id is remembered: a busy session's refusal may be retried.
            self._states.reserve((spec.session_id, runtime.name), execution_id)
        if spec.execution_id:
            try:
                self._remember(spec.execution_id)
            except RequestError:
                self._states.free((spec.session_id, runtime.name), execution_id)
                raise
        timeout = self.config.default_timeout if spec.timeout is None else spec.timeout
        execution = Execution(
            spec,
            execution_id=execution_id,
            timeout=min(timeout, self.config.max_timeout),
            runtime=runtime,
            config=self.config,
            launcher=self._launcher,
            workspaces=self._workspaces,
            spares=self._spares,
            states=self._states,
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
        # One that has answered only waits for its killed processes to be reaped.
        running = sum(not execution.answered for execution in self._running)
        if running >= self.config.max_concurrent:
            raise RequestError(
                Code.RESOURCE_EXHAUSTED,
                f"capacity reached: {running} executions are running "
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
        if execution.state_key is not None:
            self._states.free(execution.state_key, execution.execution_id)
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
        if spec.execution_id and not ID.fullmatch(spec.execution_id):
            raise invalid(
                f"invalid execution_id {spec.execution_id[:140]!r}: use 1-128 characters "
                "from A-Z a-z 0-9 . _ -, starting with a letter or digit"
            )
        if spec.session_id:
            check_session_id(spec.session_id)
        elif spec.keep_state:
            raise invalid(
                "keep_state needs a session_id: the live interpreter belongs to a session "
                "(set session_id, or leave keep_state unset for a one-off execution)"
            )
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
            if not _ENV_NAME.fullmatch(name):
                raise invalid(f"environment variable name {name!r} is not valid")
            if "\0" in value:
                raise invalid(f"environment variable {name} contains a NUL byte")
        return runtime

    async def delete_workspace(self, session_id: str) -> bool:
        return await self._workspaces.delete(session_id)

    async def reset_state(self, session_id: str) -> bool:
        """End the session's live interpreters, keeping its files; False when it had none."""
        check_session_id(session_id)
        return await self._states.reset(session_id)

    async def shutdown(self, grace: float, hurry: asyncio.Event | None = None) -> None:
        """Refuse new work, give running executions `grace` seconds (or until `hurry` is
        set), then kill them."""
        self.draining = True
        waiters = [asyncio.create_task(self._idle.wait(), name="shutdown-idle")]
        if hurry is not None:
            waiters.append(asyncio.create_task(hurry.wait(), name="shutdown-hurry"))
        try:
            await asyncio.wait(waiters, timeout=grace, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            await asyncio.gather(*waiters, return_exceptions=True)
        if not self._idle.is_set():
            for execution in list(self._running):
                execution.stop(
                    Status.KILLED, "the sandbox server is shutting down; the execution was stopped"
                )
            try:
                await asyncio.wait_for(self._idle.wait(), 5.0)
            except TimeoutError:
                log.warning("%d executions did not stop in time", len(self._running))


def _can_keep_state(cgroups: Cgroups) -> bool:
    return cgroups.kills_runs and cgroups.freezes_runs


def _stateful_off_reason(config: Config, cgroups: Cgroups) -> str:
    if not config.stateful:
        return "stateful sessions are turned off on this server (SANDBOX_STATEFUL=0)"
    if not (cgroups.kills_runs and cgroups.freezes_runs):
        return (
            "this host gives a run no cgroup of its own that can be frozen (cgroup v2 with "
            "the pids and memory controllers, or v1 with cpuacct and freezer), which a live "
            "interpreter needs: its code's processes end with each execution, and nothing "
            "of it runs between them"
        )
    return ""


def _create_launcher(config: Config, runtimes: dict[str, Runtime], quota: bool) -> Launcher:
    readable = [str(PRELUDES)]
    for runtime in runtimes.values():
        readable += runtime.readable
    policy = Policy(
        level=config.isolation,
        pid_namespace=True,
        limits=config.limits,
        # Settled after the level is known (_choose_network); probes run without a network.
        network=Network.NONE,
        readable=readable_roots(readable),
    )
    python = runtimes["python"]
    if config.isolation >= Level.UID and os.geteuid() == 0:
        # Session uids must be able to reach the interpreter: say so, not "isolation failed".
        for runtime in runtimes.values():
            closed = closed_to_others(runtime.argv[0])
            if closed:
                variable = f"SANDBOX_{runtime.name.upper()}_BIN"
                raise IsolationUnavailable(
                    f"{variable}: {runtime.argv[0]} cannot be run by the sandbox's users: "
                    f"{closed}. Point {variable} at an interpreter other users can read "
                    "(`make install` builds .runtime/python for this)"
                )
    probe = [python.argv[0], "-I", "-S", "-c", f"open({python.argv[-1]!r}).close()"]
    # `namespaces` promises a size-capped workspace: without tmpfs mounts, `uid` is the best.
    strongest = Level.NAMESPACES if quota else Level.UID
    return Launcher.create(
        config.workspace_root / "bin",
        policy,
        minimum=config.isolation,
        probe_argv=probe,
        strongest=strongest,
        prebuilt_init=config.init_bin,
    )


async def _open_warm_pools(
    config: Config, runtimes: dict[str, Runtime], launcher: Launcher
) -> None:
    """Start the Python zygote in the background; until it is ready, runs start cold."""
    try:
        library = await asyncio.to_thread(
            ensure_init_library, config.workspace_root / "bin", config.init_bin
        )
    except BuildError as exc:
        log.warning("SANDBOX_LAUNCHER=warm: %s; every execution starts cold", exc)
        return
    if library is None:
        log.warning(
            "SANDBOX_LAUNCHER=warm: no %s beside SANDBOX_INIT_BIN; every execution starts cold",
            LIBRARY_NAME,
        )
        return
    pool = python_pool(runtimes["python"], library, config.preload)
    launcher.pools[pool.runtime] = pool
    pool.open()


async def _choose_network(config: Config, launcher: Launcher) -> None:
    """Settle SANDBOX_NETWORK against what this host can give; fail closed when asked for more.

    Unset, it is egress where slirp4netns works, else none (never host, which
    would hand the code the server's own ports).
    """
    wanted = config.network
    egress: Egress | None = None
    if launcher.level < Level.NAMESPACES:
        if wanted in (Network.EGRESS, Network.NONE):
            raise IsolationUnavailable(
                f"SANDBOX_NETWORK={wanted.value} needs isolation level `namespaces`, and this "
                f"host gives `{launcher.level.label}`: set SANDBOX_NETWORK=host (with a token)"
            )
        chosen = Network.HOST
    elif wanted is Network.HOST:
        chosen = Network.HOST
    else:
        candidate = Egress(
            launcher.init_binary, allow=config.network_allow, deny=config.network_deny
        )
        try:
            await candidate.probe()
            egress = candidate
        except NetworkUnavailable as exc:
            if wanted is Network.EGRESS:
                raise IsolationUnavailable(f"SANDBOX_NETWORK=egress: {exc}") from None
            log.warning(
                "the code gets no network (SANDBOX_NETWORK=none) and install_package cannot "
                "reach a package index: egress networks need slirp4netns (%s)",
                exc,
            )
        chosen = wanted or (Network.EGRESS if egress else Network.NONE)
    if chosen is Network.HOST and not config.auth_token:
        log.warning(
            "SANDBOX_NETWORK=host without SANDBOX_AUTH_TOKEN: sandboxed code shares this "
            "host's network and reaches every local service; set a token"
        )
    resolv_conf = None
    if egress is not None:  # installers resolve index names under `none` too
        resolv_conf = str(write_resolv_conf(config.workspace_root / "etc"))
    launcher.policy = replace(launcher.policy, network=chosen, resolv_conf=resolv_conf)
    launcher.egress = egress


def closed_to_others(path: str) -> str | None:
    """Why a user other than the owner cannot run `path` (a folder on the way without
    the search bit for others, or the file not readable and executable), or None."""
    for candidate in dict.fromkeys([os.path.abspath(path), os.path.realpath(path)]):
        current = Path(candidate)
        for folder in reversed(current.parents):
            mode = folder.stat().st_mode
            if not mode & 0o001:
                return f"{folder} is closed to other users (mode {mode & 0o777:o})"
        mode = current.stat().st_mode
        if mode & 0o005 != 0o005 and current == Path(os.path.realpath(path)):
            return (
                f"{current} is not readable and executable by other users (mode {mode & 0o777:o})"
            )
    return None
