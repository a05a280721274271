"""oasis-init builds without a single warning, with the flags the server builds it with."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from sandbox_server.launcher.build import FLAGS, SOURCE


def test_oasis_init_compiles_with_warnings_as_errors(tmp_path: Path) -> None:
    assert {"-Wall", "-Wextra"} <= set(FLAGS)
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler")
    done = subprocess.run(
        [compiler, *FLAGS, "-Werror", "-o", str(tmp_path / "oasis-init"), SOURCE],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
