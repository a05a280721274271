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


class BuildError(StartError):
    pass


def ensure_init_binary(cache_dir: Path, prebuilt: Path | None = None) -> Path:
    """`prebuilt` (SANDBOX_INIT_BIN) when given, else a build cached in `cache_dir`."""
    if prebuilt is not None:
        if not os.access(prebuilt, os.X_OK):
            raise BuildError(f"SANDBOX_INIT_BIN: {str(prebuilt)!r} is not an executable file")
        return prebuilt
    source = SOURCE.read_bytes()
    target = cache_dir / f"oasis-init-{hashlib.sha256(source).hexdigest()[:12]}"
    if os.access(target, os.X_OK):
        return target
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        raise BuildError(
            "no C compiler to build oasis-init: install gcc or set SANDBOX_INIT_BIN "
            "to a binary built from sandbox_server/launcher/oasis_init.c"
        )
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(f".{os.getpid()}.tmp")
    done = subprocess.run(
        [compiler, "-O2", "-Wall", "-o", str(partial), str(SOURCE)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise BuildError(f"building oasis-init failed:\n{done.stderr.strip()}")
    partial.chmod(0o755)
    partial.replace(target)
    return target
