"""One direction between the packages: `sandbox_server` may use `oasis`, never the reverse."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from .conftest import REPO

IN_PROCESS_SERVER = REPO / "oasis" / "demo" / "_in_process.py"
"""The one module allowed to import the server: the demo's fallback sandbox."""

# A finder that refuses sandbox_server, as on a machine where only the client is installed.
HIDE_SERVER = """
import importlib.abc, sys
class Hidden(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "sandbox_server" or name.startswith("sandbox_server."):
            raise ModuleNotFoundError(f"No module named {name!r} (hidden)", name=name)
        return None
sys.meta_path.insert(0, Hidden())
"""


def _imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_no_client_module_imports_the_server_but_the_demos_in_process_sandbox() -> None:
    offenders = {
        str(path.relative_to(REPO)): sorted(
            m for m in modules if m.split(".")[0] == "sandbox_server"
        )
        for path in sorted((REPO / "oasis").rglob("*.py"))
        if path != IN_PROCESS_SERVER and (modules := _imported_modules(path))
    }
    offenders = {path: found for path, found in offenders.items() if found}
    assert offenders == {}
    # The check sees imports inside functions too: the allowed module has some.
    assert "sandbox_server.server" in _imported_modules(IN_PROCESS_SERVER)


def _run(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60
    )


def test_the_client_loads_and_works_with_the_server_package_hidden(tmp_path: Path) -> None:
    script = HIDE_SERVER + (
        "import oasis, oasis.code, oasis.agent, oasis.agent.providers, oasis.demo\n"
        "import oasis.cli.exec as cli\n"
        "oasis.code.HTTPRunner  # the lazily loaded runner\n"
        f"cli.save_file(__import__('pathlib').Path({str(tmp_path)!r}), 'a/b.txt', b'ok')\n"
        "try:\n"
        "    import sandbox_server\n"
        "except ModuleNotFoundError:\n"
        "    print('hidden')\n"
    )
    done = _run(script)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "hidden"  # the finder really hid the server
    assert (tmp_path / "a" / "b.txt").read_bytes() == b"ok"


def test_the_command_loads_server_modules_only_to_serve() -> None:
    script = (
        "import json, sys\n"
        "from sandbox_server.cli import main\n"
        "try:\n"
        "    main(['exec', '--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('sandbox_server'))))\n"
    )
    done = _run(script)
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded == ["sandbox_server", "sandbox_server.cli", "sandbox_server.settings"]
