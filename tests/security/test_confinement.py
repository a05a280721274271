"""What the code can see and touch: its own uid, a read-only system, its own processes, nothing of the server.

Each test lets the code look around from inside and report, then checks the
report (and, where it can, the host side too).
"""

from __future__ import annotations

import asyncio
import os
import secrets
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from oasis import CodeRequest, tool_dispatcher
from oasis.code import GrpcRunner
from sandbox_server.isolation import INIT_UID
from sandbox_server.server import SandboxServer

from ..conftest import StartServer
from ..sandbox_client import SandboxClient
from .conftest import StartProcess, client_for, session_path

RUNTIMES = ["python", "node"]
WHOAMI = {
    "python": "import os\nset_result([os.getuid(), os.getgid(), os.getgroups(), os.geteuid()])",
    "node": "setResult([process.getuid(), process.getgid(), process.getgroups(), process.geteuid()]);",
}


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_code_runs_as_its_own_non_root_uid_per_session(
    client: SandboxClient, runtime: str
) -> None:
    """Sessions and scratch runs each get a distinct non-root uid with no groups; a session keeps its own."""
    seen = {}
    for session in ("uid-a", "uid-b", "", "uid-a"):
        outcome = await client.run(WHOAMI[runtime], runtime=runtime, session_id=session)
        uid, gid, groups, euid = outcome.output
        # Node's getgroups() adds the effective gid; there are no supplementary groups.
        assert uid == euid == gid and set(groups) <= {gid}
        assert uid >= 1_000_000_000
        seen.setdefault(session or "scratch", uid)
        assert seen[session or "scratch"] == uid
    assert len(set(seen.values())) == 3


WRITABLE = """
import os
cwd = os.getcwd()
writable = []
for top, dirs, _ in os.walk('/'):
    # Below the private /tmp and /dev/shm is the run's own (the prelude keeps a folder
    # there), except the way to the workspace.
    if top.startswith(('/proc', cwd + '/')) or (
        top.startswith(('/tmp/', '/dev/shm/')) and not (cwd + '/').startswith(top + '/')
    ):
        dirs[:] = []
        continue
    if top.count('/') >= 3:  # deep enough, except on the way to the workspace
        dirs[:] = [d for d in dirs if cwd.startswith(os.path.join(top, d) + '/') or os.path.join(top, d) == cwd]
    probe = os.path.join(top, '.oasis-write-probe')
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except OSError:
        continue
    os.unlink(probe)
    writable.append(top)
blocked = {}
for target in ('/etc/hosts', '/usr/bin/env', '/proc/sys/kernel/hostname', '/proc/1/oom_score_adj'):
    try:
        open(target, 'a').close()
        blocked[target] = 'writable'
    except OSError as exc:
        blocked[target] = type(exc).__name__
set_result({'cwd': cwd, 'writable': sorted(writable), 'blocked': blocked})
"""


async def test_only_the_workspace_and_private_tmp_are_writable(client: SandboxClient) -> None:
    """A walk of the whole view finds only the workspace, /tmp and /dev/shm writable; system files are not."""
    outcome = await client.run(WRITABLE, session_id="writer", timeout=60)
    report = outcome.output
    assert report["writable"] == sorted([report["cwd"], "/tmp", "/dev/shm"]), outcome.result.error
    assert "writable" not in report["blocked"].values()


VIEW = """
import os, socket, subprocess, time
child = subprocess.Popen(['sleep', '30'])
pids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())
names = {p: open(f'/proc/{p}/comm').read().strip() for p in pids}
child.kill()
top = sorted(os.listdir('/'))
set_result({'pids': pids, 'me': os.getpid(), 'child': child.pid, 'names': names,
            'hostname': socket.gethostname(), 'uname': os.uname().nodename, 'top': top,
            'server_visible': os.path.exists(f"/proc/{os.environ['SERVER_PID']}/environ")})
"""


async def test_code_sees_only_its_own_processes_and_hostname(client: SandboxClient) -> None:
    """/proc lists only the run's init, the code and its child; the hostname is "sandbox"."""
    outcome = await client.run(VIEW, env={"SERVER_PID": str(os.getpid())})
    view = outcome.output
    assert view is not None, outcome.result.error
    assert view["pids"] == sorted([1, view["me"], view["child"]])
    assert view["names"]["1"].startswith("oasis-init")
    assert view["hostname"] == view["uname"] == "sandbox"
    assert not view["server_visible"]
    # A minimal root: no /home, /root, /var, /sys or /boot.
    assert not {"home", "root", "var", "sys", "boot", "srv", "opt"} & set(view["top"])


HUNT = {
    "python": """
import os, subprocess
canary = os.environ.get('CANARY_PREFIX', '') + 'oasis-canary-'
found = []
if any(canary in f'{k}={v}' for k, v in os.environ.items()):
    found.append('os.environ')
if canary.encode() in subprocess.run(['env'], capture_output=True).stdout:
    found.append('child env')
denied = []
for pid in ['self', '1'] + [p for p in os.listdir('/proc') if p.isdigit()]:
    for name in ('environ', 'cmdline'):
        try:
            if canary.encode() in open(f'/proc/{pid}/{name}', 'rb').read():
                found.append(f'/proc/{pid}/{name}')
        except OSError as exc:
            denied.append(f'/proc/{pid}/{name}: {type(exc).__name__}')
for top in ('/etc', '/tmp', '/dev/shm', os.getcwd()):
    for folder, _, files in os.walk(top):
        for name in files:
            try:
                with open(os.path.join(folder, name), 'rb') as f:
                    if canary.encode() in f.read(1 << 20):
                        found.append(os.path.join(folder, name))
            except OSError:
                pass
set_result({'found': found, 'denied': denied})
""",
    "node": """
const fs = require('fs');
const canary = 'oasis-canary-';
const found = [];
const denied = [];
if (Object.entries(process.env).some(([k, v]) => `${k}=${v}`.includes(canary))) found.push('process.env');
const childEnv = require('child_process').execFileSync('env').toString();
if (childEnv.includes(canary)) found.push('child env');
for (const pid of ['self', '1', ...fs.readdirSync('/proc').filter((p) => /^\\d+$/.test(p))]) {
  for (const name of ['environ', 'cmdline']) {
    try {
      if (fs.readFileSync(`/proc/${pid}/${name}`).includes(canary)) found.push(`/proc/${pid}/${name}`);
    } catch (err) {
      denied.push(`/proc/${pid}/${name}: ${err.code}`);
    }
  }
}
setResult({ found, denied });
""",
}


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_server_environment_canary_is_not_reachable_in_process(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch, runtime: str
) -> None:
    """A secret in the server's environment (os.environ) reaches neither the code's env nor its children's."""
    monkeypatch.setenv("OASIS_SECRET_CANARY", f"oasis-canary-{secrets.token_hex(8)}")
    server = await start_server()
    async with client_for(server) as client:
        outcome = await client.run(HUNT[runtime], runtime=runtime, timeout=60)
    assert outcome.output is not None, outcome.result.error
    assert outcome.output["found"] == []
    # The namespace's init (root) keeps its environment to itself.
    assert any(d.startswith("/proc/1/environ") for d in outcome.output["denied"])


def environ_of(pid: int) -> bytes:
    return Path(f"/proc/{pid}/environ").read_bytes()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_server_process_secrets_are_not_reachable(
    server_process: StartProcess, runtime: str
) -> None:
    """The server process's own environment (a canary and its auth token) cannot be found by any code."""
    token = f"oasis-canary-token-{secrets.token_hex(8)}"
    server = server_process(
        OASIS_SECRET_CANARY=f"oasis-canary-{secrets.token_hex(8)}", SANDBOX_AUTH_TOKEN=token
    )
    assert b"oasis-canary-" in environ_of(server.proc.pid)
    async with GrpcRunner(server.address, token=token, timeout=60) as runner:
        result = await runner.run(
            CodeRequest(code=HUNT[runtime], runtime=runtime), tool_dispatcher({})
        )
    assert result.output is not None, result.error
    assert result.output["found"] == []


async def test_another_sessions_workspace_is_out_of_reach(
    server: SandboxServer, client: SandboxClient
) -> None:
    """Session B finds no trace of session A's files: not by A's path, not by walking its whole view."""
    secret = f"secret-{secrets.token_hex(8)}"
    owner = await client.run(
        f"import os\nopen('secret.txt', 'w').write({secret!r})\nset_result([os.getcwd(), os.getuid()])",
        session_id="alice",
    )
    alice_path, alice_uid = owner.output
    hunt = f"""
import os
attempts = {{}}
for path in [{alice_path!r} + '/secret.txt', {alice_path!r}, os.path.join(os.getcwd(), '..', 'alice')]:
    try:
        attempts[path] = open(path).read() if path.endswith('.txt') else os.listdir(path)
    except OSError as exc:
        attempts[path] = type(exc).__name__
hits = []
for folder, dirs, files in os.walk('/'):
    if folder.startswith('/proc'):
        dirs[:] = []
        continue
    hits += [os.path.join(folder, n) for n in files + dirs if n in ('alice', 'secret.txt')]
set_result({{'attempts': attempts, 'hits': hits,
             'siblings': os.listdir(os.path.dirname(os.getcwd()))}})
"""
    outcome = await client.run(hunt, session_id="mallory", timeout=60)
    report = outcome.output
    assert report is not None, outcome.result.error
    assert set(report["attempts"].values()) == {"FileNotFoundError"}
    assert report["hits"] == []
    assert report["siblings"] == ["mallory"]

    # The second wall, on the host: A's workspace is 0700 and A's own; B's uid cannot read it.
    workspace = session_path(server, "alice")
    info = workspace.stat()
    assert info.st_uid == alice_uid and info.st_mode & 0o077 == 0
    mallory_uid = session_path(server, "mallory").stat().st_uid
    cat = await asyncio.create_subprocess_exec(
        "/bin/cat",
        str(workspace / "secret.txt"),
        user=mallory_uid,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await cat.communicate()
    assert cat.returncode != 0 and secret.encode() not in out
    assert b"Permission denied" in err


SIGNAL_SERVER = """
import os, signal, subprocess
pid = int(os.environ['SERVER_PID'])
tried = {}
for name, target, sig in [('server 0', pid, 0), ('server TERM', pid, signal.SIGTERM),
                          ('server KILL', pid, signal.SIGKILL), ('init KILL', 1, signal.SIGKILL),
                          ('group KILL', -pid, signal.SIGKILL)]:
    try:
        os.kill(target, sig)
        tried[name] = 'sent'
    except OSError as exc:
        tried[name] = type(exc).__name__
# kill(-1): every process this uid may signal, except the caller (and init).
sleeper = subprocess.Popen(['sleep', '30'])
os.kill(-1, signal.SIGKILL)
tried['-1 KILL'] = 'killed own child' if sleeper.wait() == -signal.SIGKILL else 'child lived'
set_result(tried)
"""


@pytest.mark.timeout(120)
async def test_code_cannot_signal_the_server(server_process: StartProcess) -> None:
    """kill() of the server's pid, its group, the run's init, or -1 does not reach the server, which answers on."""
    server = server_process()
    async with client_for(server) as client:
        outcome = await client.run(SIGNAL_SERVER, env={"SERVER_PID": str(server.proc.pid)})
        tried = outcome.output
        assert tried is not None, outcome.result.error
        assert "sent" not in {v for k, v in tried.items() if k not in ("init KILL", "-1 KILL")}
        assert tried["-1 KILL"] == "killed own child"  # kill(-1) worked, within the run only
        assert tried["init KILL"] in ("PermissionError", "sent")  # sent to init is ignored
        assert server.proc.poll() is None
        after = await client.run("set_result('alive')")
        assert after.output == "alive"
    async with grpc.aio.insecure_channel(server.address) as channel:
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert server.proc.poll() is None


FDS = {
    "python": """
import os, subprocess, time
def fds(pid='self'):
    found = {}
    for name in os.listdir(f'/proc/{pid}/fd'):
        try:
            found[name] = os.readlink(f'/proc/{pid}/fd/{name}')
        except OSError:
            pass  # the listing's own fd, closed by now
    return found
child = subprocess.Popen(['sleep', '30'], close_fds=False)
# sleep opens files of its own while it starts (locale): a leak stays, those go.
for _ in range(100):
    seen = fds(child.pid)
    if len(seen) <= 3:
        break
    time.sleep(0.05)
report = {'code': fds(), 'child': seen}
child.kill()
set_result(report)
""",
    "node": """
const fs = require('fs');
const fds = (pid) => Object.fromEntries(fs.readdirSync(`/proc/${pid}/fd`).flatMap((n) => {
  try { return [[n, fs.readlinkSync(`/proc/${pid}/fd/${n}`)]]; } catch { return []; }
}));
const child = require('child_process').spawn('sleep', ['30'], { stdio: 'inherit' });
// sleep opens files of its own while it starts (locale): a leak stays, those go.
let seen = fds(child.pid);
for (let i = 0; i < 100 && Object.keys(seen).length > 3; i++) {
  await new Promise((resolve) => setTimeout(resolve, 50));
  seen = fds(child.pid);
}
const report = { child: seen };
child.kill();
setResult(report);
""",
}


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_no_file_descriptors_leak_into_the_code(client: SandboxClient, runtime: str) -> None:
    """The code holds stdin/out/err and the two channel pipes only; its children get just 0, 1 and 2."""
    outcome = await client.run(FDS[runtime], runtime=runtime)
    report = outcome.output
    assert report is not None, outcome.result.error
    assert sorted(report["child"]) == ["0", "1", "2"]
    assert report["child"]["0"] == "/dev/null"
    if runtime == "python":
        extra = {fd: target for fd, target in report["code"].items() if fd not in ("0", "1", "2")}
        assert len(extra) == 2 and all(t.startswith("pipe:") for t in extra.values()), extra


PID_ONE = """
import os
fields = dict(line.split(':', 1) for line in open('/proc/1/status') if ':' in line)
try:
    open('/proc/1/environ', 'rb').read()
    environ = 'readable'
except OSError as exc:
    environ = type(exc).__name__
set_result({
    'uids': fields['Uid'].split(),
    'caps': [fields[name].strip() for name in ('CapInh', 'CapPrm', 'CapEff', 'CapBnd')],
    'seccomp': fields['Seccomp'].strip(),
    'cmdline': open('/proc/1/cmdline', 'rb').read().decode(errors='replace'),
    'environ': environ,
})
"""


async def test_the_sandbox_init_has_no_privileges_and_shows_no_options(
    server: SandboxServer, client: SandboxClient
) -> None:
    """pid 1 of the sandbox runs as nobody, without capabilities, under seccomp; its command
    line shows neither the request's environment values nor host paths."""
    secret = f"value-{secrets.token_hex(8)}"
    outcome = await client.run(PID_ONE, env={"OASIS_PROBE": secret}, session_id="pid-one")
    report = outcome.output
    assert report is not None, outcome.result.error
    assert report["uids"] == [str(INIT_UID)] * 4
    assert report["caps"][:3] == ["0000000000000000"] * 3
    assert report["seccomp"] == "2"
    assert report["environ"] == "PermissionError"
    assert secret not in report["cmdline"]
    assert str(server.config.workspace_root) not in report["cmdline"]
    assert "--env" not in report["cmdline"] and "--rw" not in report["cmdline"]


SUBMOUNT = """
import os
folder = os.environ['FOLDER']
try:
    open(os.path.join(folder, 'planted'), 'w').write('x')
    write = 'written'
except OSError as exc:
    write = exc.strerror
options = [line.split()[5] for line in open('/proc/self/mountinfo') if line.split()[4] == folder]
set_result({'write': write, 'options': options, 'seen': sorted(os.listdir(folder))})
"""


async def test_file_systems_mounted_below_system_folders_are_read_only_too(
    start_server: StartServer,
) -> None:
    """A file system mounted under /usr on the host is read-only, nosuid and nodev inside."""
    if os.geteuid() != 0:
        pytest.skip("mounting needs root")
    folder = Path(f"/usr/local/oasis-submount-{secrets.token_hex(4)}")
    os.mkdir(folder)
    try:
        mounted = await asyncio.create_subprocess_exec(
            "mount", "-t", "tmpfs", "-o", "size=1m", "oasis-test", str(folder)
        )
        assert await mounted.wait() == 0
        (folder / "present").write_text("from the host")
        server = await start_server()
        async with client_for(server) as client:
            outcome = await client.run(SUBMOUNT, env={"FOLDER": str(folder)})
        report = outcome.output
        assert report is not None, outcome.result.error
        assert report["seen"] == ["present"]  # the submount is there, and so is its file
        assert report["write"] == "Read-only file system"
        assert report["options"] and all(
            {"ro", "nosuid", "nodev"} <= set(options.split(",")) for options in report["options"]
        ), report["options"]
        assert not (folder / "planted").exists()
    finally:
        unmounted = await asyncio.create_subprocess_exec("umount", "-l", str(folder))
        await unmounted.wait()
        os.rmdir(folder)
