"""oasis-init and liboasis-init.so build without a single warning, with the server's flags."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from sandbox_server.launcher.build import FLAGS, SOURCE, ensure_init_binary, ensure_init_library


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


def test_the_library_builds_cleanly_and_exports_only_its_entry(tmp_path: Path) -> None:
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        pytest.skip("no C compiler")
    library = tmp_path / "liboasis-init.so"
    done = subprocess.run(
        [compiler, *FLAGS, "-Werror", "-shared", "-fPIC", "-DOASIS_LIBRARY", "-o", str(library), SOURCE],
        capture_output=True, text=True, check=False, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    symbols = subprocess.run(
        ["nm", "-D", "--defined-only", str(library)], capture_output=True, text=True, check=True
    ).stdout.split()
    assert [name for name in symbols if name.startswith("oasis")] == ["oasis_enter"]
    # The server's own build of it lands in the cache beside the binary.
    built = ensure_init_library(tmp_path / "cache")
    assert built is not None and built.name.startswith("liboasis-init-")


def test_a_box_without_its_own_pid_namespace_is_refused(tmp_path: Path) -> None:
    init = ensure_init_binary(tmp_path / "cache")
    done = subprocess.run(
        [str(init), "--box", "--", "box"], capture_output=True, text=True, check=False, timeout=30
    )
    assert done.returncode == 125
    assert "--box needs --pidns" in done.stderr
