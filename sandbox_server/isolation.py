"""Isolation levels and per-execution limits, turned into oasis-init options.

Levels, strongest first:
  namespaces  per-session uid; own pid, mount, ipc, uts (and with
              SANDBOX_NETWORK=none, net) namespaces; a minimal read-only view
              of the system; seccomp; rlimits; a size-capped workspace
  uid         per-session uid, rlimits and seccomp, where namespaces are blocked
  none        the server's own uid: development only (SANDBOX_ALLOW_INSECURE=1)

The server probes what the host allows at start and fails closed when the
level asked for (SANDBOX_ISOLATION, the minimum) cannot be reached.
"""

from __future__ import annotations

import enum
import os
from dataclasses import dataclass
from pathlib import Path


class Network(enum.Enum):
    """What the code's network namespace can reach (SANDBOX_NETWORK)."""

    EGRESS = "egress"
    """A network namespace per session with outbound access through a user-mode
    stack (slirp4netns): public addresses only, never the host, its loopback,
    link-local or private ranges (unless allowed by SANDBOX_NETWORK_ALLOW)."""
    NONE = "none"
    """Only the execution's own loopback."""
    HOST = "host"
    """The server's own network: unsafe without a token (the code can reach every local port)."""

    @classmethod
    def parse(cls, text: str) -> Network:
        try:
            return cls(text.strip().lower())
        except ValueError:
            raise ValueError(f"{text!r} is not one of egress, none, host") from None


class Level(enum.IntEnum):
    NONE = 0
    UID = 1
    NAMESPACES = 2

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: str) -> Level:
        try:
            return cls[text.strip().upper()]
        except KeyError:
            raise ValueError(f"{text!r} is not one of namespaces, uid, none") from None


@dataclass(frozen=True, kw_only=True)
class Limits:
    """What one execution may use; every field is enforced and reported by GetInfo."""

    cpu_time: float = 60.0
    """Seconds of CPU time per execution."""
    memory: int = 1024**3
    """Bytes of address space (Python) or heap (Node.js) per process."""
    processes: int = 64
    """Processes and threads per session uid."""
    open_files: int = 1024
    file_size: int = 512 * 1024**2
    """Largest single file the code can write."""
    workspace_size: int = 1024**3
    """Bytes a session workspace may hold (a size-capped tmpfs where possible)."""
    workspace_files: int = 20_000
    """Files and folders a session workspace may hold."""
    tmp_size: int = 64 * 1024**2
    """The private /tmp and /dev/shm of one execution."""
    output_files: int = 32
    """Files one set_result may return."""
    output_size: int = 1024**3
    """Total bytes of the files one set_result may return."""
    session_memory: int = 2 * 1024**3
    """Bytes all of a session's processes and the files they wrote to tmpfs (workspace,
    /tmp) may hold together, where cgroups work; by default memory + workspace_size."""


UID_BASE = 1_000_000_000
"""Session uids start here: far above any user a host or a container assigns."""
UID_COUNT = 2_000_000_000
INIT_UID = UID_BASE - 2
"""The uid pid 1 of every sandbox drops to: no session's, and no host process has it."""
UID_BLOCK = 100_000
"""Each server takes its session uids from one random block of the range, so
two servers on one host (whose rlimits count per uid) are unlikely to meet."""


@dataclass(frozen=True, kw_only=True)
class Policy:
    """How every process of an execution is wrapped: the oasis-init arguments."""

    level: Level
    pid_namespace: bool
    limits: Limits
    network: Network
    resolv_conf: str | None = None
    """The sandbox's /etc/resolv.conf inside an egress network (slirp4netns's DNS)."""
    readable: tuple[str, ...] = ()
    """Host folders the code needs to read (runtimes, preludes), bound read-only."""

    def init_args(
        self,
        *,
        uid: int | None,
        workspace: Path,
        memory: int | None,
        netns_fd: int | None = None,
        tmp_size: int | None = None,
        cpu_time: float | None = None,
    ) -> list[str]:
        """`netns_fd`: join this network namespace (a session's egress network);
        without it the code gets the host's network (HOST) or its own loopback.
        `cpu_time`: RLIMIT_CPU in seconds, when not the per-execution limit."""
        args: list[str] = ["--pidns"] if self.pid_namespace else []
        if self.level is Level.NONE:
            return args
        limits = self.limits
        if self.level is Level.NAMESPACES:
            args += ["--ipcns", "--utsns", "--root", "--tmp-size", str(tmp_size or limits.tmp_size)]
            if netns_fd is not None:
                args += ["--join-netns", str(netns_fd)]
                if self.resolv_conf:
                    args += ["--resolv-conf", self.resolv_conf]
            elif self.network is not Network.HOST:
                args.append("--netns")
            for path in self.readable:
                args += ["--ro", path]
            args += ["--rw", str(workspace)]
        if uid is not None:
            args += ["--uid", str(uid), "--gid", str(uid), "--init-uid", str(INIT_UID)]
        args += [
            "--rlimit", f"cpu={max(int(cpu_time or limits.cpu_time), 1)}",
            "--rlimit", f"nproc={limits.processes}",
            "--rlimit", f"nofile={limits.open_files}",
            "--rlimit", f"fsize={limits.file_size}",
            "--seccomp",
        ]  # fmt: skip
        if memory is not None:
            args += ["--rlimit", f"as={memory}"]
        return args


def describe_size(size: int) -> str:
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if size >= factor and size % (factor // 8) == 0:
            return f"{size / factor:g} {unit}"
    return f"{size} bytes"


def limit_hint(text: str, limits: Limits, *, signal_name: str | None = None) -> str | None:
    """Name the limit a failure ran into, from the signal or the error text."""
    if signal_name == "SIGXCPU":
        return f"CPU time limit of {limits.cpu_time:g} s exceeded"
    if signal_name == "SIGXFSZ" or "File too large" in text:
        return f"file size limit of {describe_size(limits.file_size)} exceeded"
    if any(
        sign in text
        for sign in (
            "MemoryError",
            "out of memory",
            "Reached heap limit",
            "Array buffer allocation failed",  # a Node.js Buffer beyond RLIMIT_AS
            "Cannot allocate memory",
        )
    ):
        return f"memory limit of {describe_size(limits.memory)} exceeded"
    if "No space left on device" in text or "ENOSPC" in text:
        return (
            f"workspace quota exceeded (at most {describe_size(limits.workspace_size)} and "
            f"{limits.workspace_files} files per session, {describe_size(limits.tmp_size)} in /tmp)"
        )
    if "Too many open files" in text or "EMFILE" in text:
        return f"open file limit of {limits.open_files} reached"
    if (
        "can't start new thread" in text
        or "Resource temporarily unavailable" in text
        or "EAGAIN" in text
    ):
        return f"process and thread limit of {limits.processes} per session reached"
    return None


def readable_roots(paths: list[str]) -> tuple[str, ...]:
    """The folders to bind read-only so these files work inside the new root.

    System folders (/usr, /lib ...) are always there; anything else is bound
    at its top-most folder that is not a system one, e.g. /opt/oasis/runtime.
    """
    system = ("/usr/", "/bin/", "/sbin/", "/lib/", "/lib64/", "/etc/")
    roots: list[str] = []
    for path in paths:
        real = os.path.realpath(path)
        if real.startswith(system):
            continue
        roots.append(real)
    roots.sort()
    # Drop folders already inside another one.
    kept: list[str] = []
    for root in roots:
        if not any(root == k or root.startswith(k + "/") for k in kept):
            kept.append(root)
    return tuple(kept)
