"""oasis-init builds without a single warning, strict flags on (the server builds it with -Wall)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from sandbox_server.launcher.build import SOURCE


def test_oasis_init_compiles_with_extra_warnings_as_errors(tmp_path: Path) -> None:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler")
    done = subprocess.run(
        [compiler, "-O2", "-Wall", "-Wextra", "-Werror", "-o", str(tmp_path / "oasis-init"), SOURCE],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
