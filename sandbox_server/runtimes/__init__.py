"""The languages code can be written in, and how each one is started.

A `Runtime` knows its interpreter, the prelude that hosts the user's code,
the start message that prelude expects, and how packages are installed into
a session. Interpreters are probed once at server start.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
import subprocess
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ..config import Config
from ..errors import StartError, invalid
from ..isolation import Limits, Network

PRELUDES = Path(__file__).with_name("preludes")

# Where a session's own packages live, inside its workspace.
PACKAGES_DIR = ".oasis"

_PYTHON_PACKAGE = re.compile(
    r"^[A-Za-z0-9][A-Za-z0-9._\-]*(\[[A-Za-z0-9._,\-]+\])?([=<>!~]{1,3}[A-Za-z0-9.*+!\-,=<>~]*)?$"
)
_NODE_PACKAGE = re.compile(
    r"^(@[a-z0-9][a-z0-9._\-~]*/)?[a-z0-9][a-z0-9._\-~]*(@[A-Za-z0-9.^~<>=*+\-]+)?$"
)
# pip and npm take a name that ends like an archive as a local file (relative
# to the working folder or the npm prefix, both of which the code can write).
_ARCHIVE_NAME = re.compile(
    r"\.(zip|whl|tar|tgz|tbz|txz|tlz|tar\.(gz|bz2|xz|lz|lzma))(\[[^\]]*\])?$|"
    r"\.(zip|whl|tar|tgz|tbz|txz|tlz|tar\.(gz|bz2|xz|lz|lzma))[=<>!~@]",
    re.IGNORECASE,
)


MALLOC_ENV = {"MALLOC_ARENA_MAX": "2"}
"""glibc reserves 64 MiB of address space for each thread's malloc arena (up to 8
per core): under RLIMIT_AS, some threads would exhaust the memory limit."""


class RuntimeUnavailable(StartError):
    pass


@dataclass(frozen=True, kw_only=True)
class Runtime:
    name: str
    version: str
    argv: tuple[str, ...]
    """Command that starts the prelude; the channel fd number is appended."""
    env: dict[str, str] = field(default_factory=dict)
    """Variables this runtime adds to the code's environment."""
    path_dirs: tuple[str, ...] = ()
    """Folders put first on the code's PATH."""
    site_paths: tuple[str, ...] = ()
    install_base: tuple[str, ...] = ()
    package_pattern: re.Pattern[str] = _PYTHON_PACKAGE
    readable: tuple[str, ...] = ()
    """Host paths the sandboxed interpreter must be able to read."""
    address_space: int | None = None
    """RLIMIT_AS for the code's processes, or None."""
    index_hosts: tuple[str, ...] = ()
    """Hosts the package installer downloads from: its only routes out under egress and none."""

    def start_message(
        self,
        code: str,
        workspace: Path,
        execution_id: str,
        *,
        env: Mapping[str, str],
        keep_state: bool = False,
    ) -> dict[str, object]:
        """What the prelude runs. The request's env travels here, not at the process
        start: a process may be started before its request arrives. `keep_state`:
        the prelude stays for the session's next start message (a live interpreter)."""
        packages = workspace / PACKAGES_DIR
        common = {"type": "start", "code": code, "env": dict(env), "keep_state": keep_state}
        if self.name == "python":
            return {**common, "sys_path": [str(packages / "python"), *self.site_paths]}
        return {**common, "module": str(packages / f"run-{execution_id}.mjs")}

    def install_argv(
        self, package: str, workspace: Path, config: Config, network: Network
    ) -> list[str]:
        """The installer command for one package; the name is an argument, never shell text."""
        if (
            len(package) > 214
            or not self.package_pattern.fullmatch(package)
            or _ARCHIVE_NAME.search(package)
        ):
            raise invalid(f"{package!r} is not a valid {self.name} package name")
        packages = workspace / PACKAGES_DIR
        # The installer has the network even when the code has none: then it
        # must not run the package's own code (setup.py, npm install scripts).
        no_network = network is Network.NONE
        if self.name == "python":
            index = ["--index-url", config.pip_index_url] if config.pip_index_url else []
            parts = urllib.parse.urlsplit(config.pip_index_url or "")
            if parts.scheme == "http" and parts.hostname:
                # The operator chose a plain-HTTP index; pip trusts only localhost's by default.
                index += ["--trusted-host", parts.hostname]
            wheels = ["--only-binary=:all:"] if no_network else []
            target = ["--target", str(packages / "python")]
            return [*self.install_base, *target, *index, *wheels, "--", package]
        registry = ["--registry", config.npm_registry] if config.npm_registry else []
        scripts = ["--ignore-scripts"] if no_network else []
        # Registry packages only: a dependency given as a URL, git repository,
        # file or folder would fetch from anywhere (npm 11 follows them by default).
        scripts += [f"--allow-{kind}=none" for kind in ("remote", "git", "file", "directory")]
        # install_base is `node npm_install.cjs`, then npm and its options; the
        # target folder comes first (the script installs out of the code's reach).
        node, script, *npm = self.install_base
        return [node, script, str(packages), *npm, *registry, *scripts, "--", package]


def _run(argv: list[str]) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except OSError as exc:
        raise RuntimeUnavailable(f"{argv[0]}: {exc.strerror}") from None
    if done.returncode != 0:
        raise RuntimeUnavailable(f"{argv[0]} failed: {done.stderr.strip()[-500:]}")
    return done.stdout.strip()


def _url_hosts(url: str | None, default: tuple[str, ...]) -> tuple[str, ...]:
    host = urllib.parse.urlsplit(url).hostname if url else None
    return (host,) if host else default


def probe_python(python_bin: str, limits: Limits, index_url: str | None = None) -> Runtime:
    info = json.loads(
        _run(
            [
                python_bin,
                "-I",
                "-c",
                "import json, sys, sysconfig; print(json.dumps({'version': sys.version.split()[0],"
                " 'prefix': sys.prefix, 'paths': [p for p in sys.path if p]}))",
            ]
        )
    )
    env = {"PYTHONUNBUFFERED": "1", "MPLBACKEND": "Agg", **MALLOC_ENV}
    # A font cache prepared by `make install` saves seconds on the first plot.
    mplconfig = Path(info["prefix"]).parent / "mplconfig"
    if mplconfig.is_dir():
        env["OASIS_MPL_CACHE"] = str(mplconfig)  # the prelude seeds a writable copy
    return Runtime(
        name="python",
        version=info["version"],
        # -I: ignore PYTHON* variables and the user site; -S: skip site.py and
        # .pth files (the paths are given explicitly); -u: live logs.
        argv=(python_bin, "-I", "-S", "-u", str(PRELUDES / "python_prelude.py")),
        env=env,
        path_dirs=(str(Path(python_bin).parent),),
        site_paths=tuple(info["paths"]),
        readable=(info["prefix"], *info["paths"], *env.get("OASIS_MPL_CACHE", "").split()),
        # RLIMIT_AS holds for Python, mmap included (RLIMIT_DATA does not).
        address_space=limits.memory,
        index_hosts=_url_hosts(index_url, ("pypi.org", "files.pythonhosted.org")),
        # -I and --isolated: the workspace is the installer's working folder
        # and HOME, and the code writes there; a planted pip/ package, .pth
        # file or pip.conf must not run in (or steer) the installer.
        install_base=(
            python_bin,
            "-I",
            "-m",
            "pip",
            "install",
            "--isolated",
            "--quiet",
            "--no-input",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--no-warn-script-location",
        ),
    )


def probe_node(node_bin: str, limits: Limits, registry: str | None = None) -> Runtime:
    version = _run([node_bin, "--version"]).lstrip("v")
    npm = shutil.which("npm", path=str(Path(node_bin).parent)) or shutil.which("npm")
    install_base: tuple[str, ...] = ()
    if npm:
        install_base = (
            node_bin,
            str(PRELUDES / "npm_install.cjs"),
            npm,
            "--no-audit",
            "--no-fund",
            "--no-update-notifier",
            "--loglevel=error",
        )
        # `--prefix` (the session's folder) would also move npm's global config
        # to PREFIX/etc/npmrc: keep reading the machine's own (CA file, registry).
        with contextlib.suppress(RuntimeUnavailable):
            install_base += (f"--globalconfig={_run([npm, 'config', 'get', 'globalconfig'])}",)
        if registry is None:
            with contextlib.suppress(RuntimeUnavailable):
                registry = _run([npm, "config", "get", "registry"])
    return Runtime(
        name="node",
        version=version,
        # V8 must be told its heap limit; RLIMIT_AS then only stops what lies
        # outside the heap (Buffers), with room for the ~1.25 GiB Node reserves.
        argv=(
            node_bin,
            f"--max-old-space-size={max(limits.memory // (1024 * 1024), 16)}",
            str(PRELUDES / "node_prelude.cjs"),
        ),
        path_dirs=(str(Path(node_bin).parent),),
        readable=(str(Path(node_bin).resolve().parent.parent), *([npm] if npm else [])),
        address_space=limits.memory + 2 * 1024**3,
        install_base=install_base,
        package_pattern=_NODE_PACKAGE,
        index_hosts=_url_hosts(registry, ("registry.npmjs.org",)),
    )


def probe_all(config: Config) -> dict[str, Runtime]:
    """The runtimes this server offers; Python is required, Node.js optional."""
    runtimes = {"python": probe_python(config.python_bin, config.limits, config.pip_index_url)}
    if config.node_bin:
        runtimes["node"] = probe_node(config.node_bin, config.limits, config.npm_registry)
    return runtimes
