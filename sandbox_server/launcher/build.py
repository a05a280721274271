"""Builds oasis-init, the small C supervisor every execution starts under.

It is compiled once per source version into a cache folder, so a fresh clone
or an installed package needs nothing but a C compiler; SANDBOX_INIT_BIN may
name a prebuilt binary instead (as the container image does).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

from ..errors import StartError

SOURCE = Path(__file__).with_name("oasis_init.c")
FLAGS = ("-O2", "-Wall", "-Wextra")
"""The build on the serving host. CI adds -Werror (tests/server/test_oasis_init_source.py):
a warning there fails our build, while a newer compiler's new warning on an
operator's host must not stop the server from starting."""


class BuildError(StartError):
    pass


def ensure_init_binary(cache_dir: Path, prebuilt: Path | None = None) -> Path:
    """`prebuilt` (SANDBOX_INIT_BIN) when given, else a build cached in `cache_dir`."""
    if prebuilt is not None:
        if not os.access(prebuilt, os.X_OK):
            raise BuildError(f"SANDBOX_INIT_BIN: {str(prebuilt)!r} is not an executable file")
        return prebuilt
    return _build(cache_dir, "oasis-init", ())


def ensure_init_library(cache_dir: Path, prebuilt_init: Path | None = None) -> Path | None:
    """liboasis-init.so, the same steps for the warm launcher's forked children.

    Next to a prebuilt SANDBOX_INIT_BIN when there is one (None when it is
    missing: the server then starts every execution cold), else built like
    the binary.
    """
    if prebuilt_init is not None:
        beside = prebuilt_init.with_name(LIBRARY_NAME)
        return beside if beside.is_file() else None
    return _build(cache_dir, "liboasis-init", ("-shared", "-fPIC", "-DOASIS_LIBRARY"), ".so")


LIBRARY_NAME = "liboasis-init.so"


def _build(cache_dir: Path, name: str, extra: tuple[str, ...], suffix: str = "") -> Path:
    flags = (*FLAGS, *extra)
    # The flags are part of the key: changing them rebuilds, like changing the source.
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(flags).encode()).hexdigest()[:12]
    target = cache_dir / f"{name}-{key}{suffix}"
    if target.is_file():
        return target
    # CC stays here, not in config: it is the build tools' convention, not a server setting.
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise BuildError(
            f"no C compiler to build {name}: install gcc or set SANDBOX_INIT_BIN "
            "to a binary built from sandbox_server/launcher/oasis_init.c"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{os.getpid()}.tmp")
    done = subprocess.run(
        [compiler, *flags, "-o", str(partial), str(SOURCE)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise BuildError(f"building {name} failed:\n{done.stderr.strip()}")
    partial.chmod(0o755)
    partial.replace(target)
    return target
