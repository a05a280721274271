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
    # The flags are part of the key: changing them rebuilds, like changing the source.
    key = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode()).hexdigest()[:12]
    target = cache_dir / f"oasis-init-{key}"
    if os.access(target, os.X_OK):
        return target
    # CC stays here, not in config: it is the build tools' convention, not a server setting.
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise BuildError(
            "no C compiler to build oasis-init: install gcc or set SANDBOX_INIT_BIN "
            "to a binary built from sandbox_server/launcher/oasis_init.c"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.tmp")
    done = subprocess.run(
        [compiler, *FLAGS, "-o", str(partial), str(SOURCE)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise BuildError(f"building oasis-init failed:\n{done.stderr.strip()}")
    partial.chmod(0o755)
    partial.replace(target)
    return target
