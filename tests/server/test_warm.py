"""The warm launcher: Python executions forked from a preloaded zygote.

Correctness only (speed is `make bench`): a warm child is as fresh and as
confined as a cold start, a session's own packages win over preloaded ones,
the pool survives its zygote dying, and nothing outlives the server.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from pathlib import Path
from typing import Any

import grpc
import pytest

from oasis.sandbox.v1 import sandbox_pb2 as pb
from sandbox_server.config import ConfigError, load
from sandbox_server.server import SandboxServer

from ..conftest import StartServer
from ..helpers import eventually
from ..sandbox_client import SandboxClient

ZYGOTE = "python_zygote.py"


async def pool(client: SandboxClient) -> pb.GetInfoResponse.Pool:
    info = await client.stub.GetInfo(pb.GetInfoRequest())
    assert info.launcher == "warm"
    (python,) = info.pools
    return python


async def ready_pool(client: SandboxClient) -> pb.GetInfoResponse.Pool:
    async def ready() -> pb.GetInfoResponse.Pool | None:
        state = await pool(client)
        return state if state.ready else None

    # The zygote imports numpy, pandas and matplotlib: seconds on a busy machine.
    result: pb.GetInfoResponse.Pool = await eventually(ready, timeout=90, what="a ready zygote")
    return result


def zygotes() -> set[int]:
    """Zygote processes started by this test process's servers."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        parent = int(stat.rpartition(")")[2].split()[1])
        if any(part.endswith(ZYGOTE.encode()) for part in cmdline) and parent == os.getpid():
            found.add(int(entry))
    return found


async def spares(client: SandboxClient) -> pb.GetInfoResponse.Spares:
    info = await client.stub.GetInfo(pb.GetInfoRequest())
    (python,) = (state for state in info.spares if state.runtime == "python")
    return python


NO_SPARES = {"SANDBOX_SPARES": "0", "SANDBOX_SESSION_SPARES": "0"}


@pytest.fixture(params=["fork", "spares"])
async def warm(
    request: pytest.FixtureRequest, start_server: StartServer
) -> tuple[SandboxServer, SandboxClient]:
    """A warm server that forks each start when its request arrives (`fork`), or
    that has processes forked ahead waiting for them (`spares`, the default)."""
    settings = NO_SPARES if request.param == "fork" else {}
    server = await start_server(SANDBOX_LAUNCHER="warm", **settings)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    client = SandboxClient(channel)
    await ready_pool(client)
    if request.param == "spares":
        await eventually(lambda: _waiting(client), timeout=60, what="spare processes to be started")
    return server, client


async def _not_ready(client: SandboxClient) -> bool:
    return not (await pool(client)).ready


async def _waiting(client: SandboxClient) -> bool:
    return (await spares(client)).waiting >= 2


async def run_ok(client: SandboxClient, code: str, session_id: str = "") -> object:
    return await run_ok_with(client, code, session_id=session_id)


async def run_ok_with(client: SandboxClient, code: str, **request: Any) -> object:
    outcome = await client.run(code, **request)
    assert outcome.status == "OK", outcome.result.error or outcome.result.logs
    return outcome.output


async def test_executions_are_served_warm_with_the_stack_preloaded(
    warm: tuple[SandboxServer, SandboxClient],
) -> None:
    _, client = warm
    before, spares_before = await pool(client), await spares(client)
    assert {"numpy", "pandas", "matplotlib"} <= set(before.preloaded)
    code = (
        "import sys, os\n"
        "set_result({'pandas': 'pandas' in sys.modules, 'pid': os.getpid(), 'uid': os.getuid(),"
        " 'main': sorted(k for k in vars(sys.modules['__main__']) if k[0] != '_' and k not in ('os', 'sys'))})"
    )
    output = await run_ok(client, code)
    assert isinstance(output, dict)
    # Imported before the code asked; still pid 2 of its own namespace under a session uid.
    assert output["pandas"] is True
    assert output["pid"] == 2
    assert output["uid"] != 0
    # A fresh __main__: only what the prelude gives the code.
    assert output["main"] == ["call_tool", "call_tools_parallel", "install_package", "set_result"]
    after, spares_after = await pool(client), await spares(client)
    assert after.cold_starts == before.cold_starts
    if spares_before.waiting:  # forked ahead, and replaced
        assert spares_after.served == spares_before.served + 1
    else:
        assert after.warm_starts == before.warm_starts + 1
        assert spares_after.served == 0


LEAVE_TRACES = """
import builtins, os, random, subprocess, sys, types
preloaded = "pandas" in sys.modules
import numpy, pandas
builtins.oasis_leak = 1
pandas.set_option("display.max_rows", 3)
json_dumps = __import__("json").dumps
__import__("json").dumps = lambda *a, **k: "patched"
sys.modules["oasis_leaky_module"] = types.ModuleType("oasis_leaky_module")
os.environ["OASIS_LEAK"] = "1"
open("/tmp/oasis-leak.txt", "w").write("left")
keep = open("/tmp/oasis-leak-fd.txt", "w")
os.set_inheritable(keep.fileno(), True)
subprocess.Popen(["sleep", "60"], start_new_session=True)
__import__("json").dumps = json_dumps
set_result([random.random(), float(numpy.random.random()), preloaded])
"""

FIND_TRACES = """
import builtins, json, os, random, sys
preloaded = "pandas" in sys.modules
import numpy, pandas
fds = []
for fd in os.listdir("/proc/self/fd"):
    try:
        fds.append(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        pass
set_result({
    "builtin": hasattr(builtins, "oasis_leak"),
    "pandas_option": pandas.get_option("display.max_rows"),
    "patched_json": json.dumps(1) == "patched",
    "module": "oasis_leaky_module" in sys.modules,
    "env": "OASIS_LEAK" in os.environ,
    "tmp_file": os.path.exists("/tmp/oasis-leak.txt"),
    "fd": any("oasis-leak" in target for target in fds),
    "processes": sorted(int(p) for p in os.listdir("/proc") if p.isdigit()),
    "random": [random.random(), float(numpy.random.random())],
    "preloaded": preloaded,
})
"""


@pytest.mark.parametrize(
    ("first", "second"),
    [("", ""), ("warm-one", "warm-one"), ("warm-alice", "warm-bob")],
    ids=["no-session", "same-session", "across-sessions"],
)
async def test_nothing_carries_over_between_warm_executions(
    warm: tuple[SandboxServer, SandboxClient], first: str, second: str
) -> None:
    _, client = warm
    seeds = await run_ok(client, LEAVE_TRACES, first)
    found = await run_ok(client, FIND_TRACES, second)
    assert isinstance(seeds, list) and isinstance(found, dict)
    assert seeds[2] and found.pop("preloaded"), "both runs must be warm"
    assert found.pop("pandas_option") == 60
    assert found.pop("processes") == [1, 2], "only the namespace's init and the code itself"
    fresh = found.pop("random")
    assert fresh[0] != seeds[0], "random was not reseeded"
    assert fresh[1] != seeds[1], "numpy.random was not reseeded"
    assert found == {
        "builtin": False,
        "patched_json": False,
        "module": False,
        "env": False,
        "tmp_file": False,
        "fd": False,
    }


SCAN_OWN_MEMORY = """
import re
found, scanned = [], 0
with open("/proc/self/maps") as maps, open("/proc/self/mem", "rb", 0) as mem:
    for line in maps:
        span, perms = line.split()[:2]
        if not perms.startswith("rw"):
            continue
        start, end = (int(x, 16) for x in span.split("-"))
        try:
            mem.seek(start)
            data = mem.read(end - start)
        except OSError:
            continue
        scanned += len(data)
        found += [m.decode() for m in re.findall(rb"--(?:enter-ns|cgroup|init-uid|rw)\\0", data)]
set_result({"found": sorted(set(found)), "scanned": scanned})
"""


async def test_the_options_do_not_stay_in_the_codes_memory(
    warm: tuple[SandboxServer, SandboxClient],
) -> None:
    """A cold start's options vanish with its exec; a warm child must wipe them (they
    name host folders and cgroups), and may read its own memory as after an exec."""
    _, client = warm
    output = await run_ok(client, SCAN_OWN_MEMORY)
    assert isinstance(output, dict)
    assert output["scanned"] > 50 * 2**20  # the zygote's heap was read, not skipped
    assert output["found"] == []


async def test_random_state_differs_between_children(
    warm: tuple[SandboxServer, SandboxClient],
) -> None:
    """Every child inherits the zygote's generators: each must be reseeded, not only changed."""
    _, client = warm
    code = "import random, numpy\nset_result([random.getrandbits(64), int(numpy.random.randint(2**62))])"
    draws = [await run_ok(client, code) for _ in range(4)]
    assert len({json.dumps(draw) for draw in draws}) == 4


async def test_a_session_package_shadowing_a_preloaded_one_is_imported(
    warm: tuple[SandboxServer, SandboxClient],
) -> None:
    """A session that installed its own pandas gets it: the warm path steps aside."""
    _, client = warm
    # What install_package would leave: the package in the session's own folder.
    plant = (
        "import os\n"
        "os.makedirs('.oasis/python/pandas', exist_ok=True)\n"
        "open('.oasis/python/pandas/__init__.py', 'w').write('OWN = \"session copy\"')\n"
        "set_result(True)"
    )
    await run_ok(client, plant, "own-pandas")
    # The session's next process may have been forked ahead, before the plant.
    output = await run_ok(
        client,
        "import sys\nnot_preloaded = 'pandas' not in sys.modules\n"
        "import pandas\nset_result([not_preloaded, getattr(pandas, 'OWN', None)])",
        "own-pandas",
    )
    assert output == [True, "session copy"]
    # Another session still gets the preloaded pandas, warm.
    other = await run_ok(client, "import sys\nset_result('pandas' in sys.modules)")
    assert other is True


async def test_an_input_file_shadowing_a_preloaded_module_is_imported(
    warm: tuple[SandboxServer, SandboxClient],
) -> None:
    """The session's own copy may arrive with the request itself: a process forked
    (or started ahead) with the preloaded pandas must not run that request."""
    _, client = warm
    own = pb.File(name=".oasis/python/pandas/__init__.py", data=b'OWN = "sent along"')
    output = await run_ok_with(
        client,
        "import sys\nnot_preloaded = 'pandas' not in sys.modules\n"
        "import pandas\nset_result([not_preloaded, getattr(pandas, 'OWN', None)])",
        files=[own],
    )
    assert output == [True, "sent along"]


async def test_the_pool_recovers_when_its_zygote_is_killed(
    warm: tuple[SandboxServer, SandboxClient],
) -> None:
    _, client = warm
    (zygote,) = zygotes()
    os.kill(zygote, signal.SIGKILL)
    # Once it has died (its children with it: a run that took one of them a
    # moment before fails as any run under a dying zygote does), the next
    # execution succeeds at once, cold while the zygote restarts.
    await eventually(lambda: _not_ready(client), what="the pool to see its zygote dead")
    assert await run_ok(client, "set_result(6 * 7)") == 42
    state = await ready_pool(client)
    assert state.restarts == 1
    assert zygotes() and zygote not in zygotes()
    # Warm again (spares forked from the dead zygote died with it).
    assert await run_ok(client, "import sys\nset_result('pandas' in sys.modules)") is True


async def test_an_execution_ends_when_its_zygote_dies_under_it(
    warm: tuple[SandboxServer, SandboxClient],
) -> None:
    _, client = warm
    (zygote,) = zygotes()
    started = asyncio.Event()
    running = asyncio.create_task(
        client.run(
            "import time\ncall_tool('started')\ntime.sleep(60)",
            tools={"started": lambda: started.set() or 1},
        )
    )
    await asyncio.wait_for(started.wait(), 30)
    os.kill(zygote, signal.SIGKILL)
    outcome = await asyncio.wait_for(running, 20)
    assert outcome.status != "OK"
    assert await run_ok(client, "set_result('after')") == "after"


async def test_shutdown_leaves_no_zygote_behind(start_server: StartServer) -> None:
    before = zygotes()
    server = await start_server(SANDBOX_LAUNCHER="warm")
    client = SandboxClient(grpc.aio.insecure_channel(f"127.0.0.1:{server.port}"))
    await ready_pool(client)
    started = zygotes() - before
    assert len(started) == 1
    await server.stop(grace=0)
    await eventually(lambda: not (zygotes() & started), what="the zygote to exit")


async def test_cold_launcher_starts_every_execution_fresh(start_server: StartServer) -> None:
    server = await start_server(SANDBOX_LAUNCHER="cold")
    client = SandboxClient(grpc.aio.insecure_channel(f"127.0.0.1:{server.port}"))
    info = await client.stub.GetInfo(pb.GetInfoRequest())
    assert (info.launcher, list(info.pools)) == ("cold", [])
    assert await run_ok(client, "import sys\nset_result('pandas' in sys.modules)") is False


def test_launcher_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="SANDBOX_LAUNCHER: 'tepid' is not warm or cold"):
        load({"SANDBOX_LAUNCHER": "tepid"})
    with pytest.raises(ConfigError, match="SANDBOX_PRELOAD: 'os;rm' is not a module name"):
        load({"SANDBOX_PRELOAD": "scipy, os;rm"})
    assert load({"SANDBOX_PRELOAD": "scipy, sklearn.linear_model"}).preload == (
        "scipy",
        "sklearn.linear_model",
    )
    assert load({}).launcher == "warm"
