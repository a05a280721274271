"""Process, thread and CPU limits, and the end of every process a run started.

Bombs are held to the session's own process limit (RLIMIT_NPROC counts per
uid, and each session has its own uid), CPU spins end at the CPU limit, and
nothing a run started survives it: not a setsid'd grandchild, not code that
ignores SIGTERM. Survivors are looked for on the host by uid and pid namespace.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable

import grpc
import pytest

from oasis.sandbox.v1 import sandbox_pb2 as pb

from ..conftest import StartServer
from ..helpers import eventually, new_marker
from ..sandbox_client import SandboxClient
from .conftest import WHO_AM_I, StartProcess, client_for, execution_processes

RUNTIMES = ["python", "node"]
LIMIT = 64  # the default SANDBOX_MAX_PROCESSES
Queue = asyncio.Queue[pb.ExecuteRequest | None]


def forked_count(logs: str) -> int:
    return int(logs.split("forked ")[1].split()[0])


async def test_fork_bomb_stops_at_the_process_limit(client: SandboxClient) -> None:
    """Forking until refused stops just below 64 processes, with an error naming the limit."""
    code = WHO_AM_I["python"] + (
        "import json, time\n"
        "print(json.dumps(WHO), flush=True)\n"
        "n = 0\n"
        "try:\n"
        "    while True:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(300)\n"
        "            os._exit(0)\n"
        "        n += 1\n"
        "finally:\n"
        "    print('forked', n, flush=True)\n"
    )
    outcome = await client.run(code, timeout=60)
    assert outcome.status == "ERROR"
    assert f"process and thread limit of {LIMIT} per session reached" in outcome.result.error
    assert LIMIT - 16 <= forked_count(outcome.result.logs) < LIMIT
    who = json.loads(outcome.result.logs.splitlines()[0])
    assert execution_processes(who["uid"], who["ns"]) == []


async def test_thread_bomb_stops_at_the_process_limit(client: SandboxClient) -> None:
    """Threads count as processes: a thread bomb stops below 64 with the limit named."""
    code = (
        "import threading, time\n"
        "threading.stack_size(256 * 1024)\n"
        "n = 0\n"
        "try:\n"
        "    while True:\n"
        "        threading.Thread(target=time.sleep, args=(300,), daemon=True).start()\n"
        "        n += 1\n"
        "finally:\n"
        "    print('forked', n, flush=True)\n"
    )
    # The runtime caps malloc arenas: otherwise each thread reserves 64 MiB and the
    # memory limit stops it first.
    outcome = await client.run(code, timeout=60)
    assert outcome.status == "ERROR"
    assert f"process and thread limit of {LIMIT} per session reached" in outcome.result.error
    assert LIMIT - 16 <= forked_count(outcome.result.logs) < LIMIT


# Reports who it is, then every process forks forever (pausing when refused,
# so that two cores shared with other work stay usable).
FORK_BOMB = WHO_AM_I["python"] + (
    "import time\n"
    "call_tool('ready', WHO)\n"
    "while True:\n"
    "    try:\n"
    "        os.fork()\n"
    "    except OSError:\n"
    "        time.sleep(0.05)\n"
)


@pytest.mark.timeout(120)
async def test_two_fork_bombs_at_once_are_each_held_to_their_own_limit(
    client: SandboxClient, channel: grpc.aio.Channel
) -> None:
    """Two sessions bomb at once: each reaches its own 64, neither more; a third request still runs."""
    who: dict[str, tuple[int, str]] = {}
    queues: dict[str, Queue] = {}

    def keep_queue(session: str) -> Callable[..., None]:
        def on_response(_response: pb.ExecuteResponse, queue: Queue) -> None:
            queues[session] = queue

        return on_response

    def ready(session: str) -> Callable[..., str]:
        def tool(uid: int, ns: str) -> str:
            who[session] = (uid, ns)
            return "go"

        return tool

    bombs = {
        session: asyncio.create_task(
            client.run(
                FORK_BOMB,
                session_id=session,
                timeout=90,
                tools={"ready": ready(session)},
                on_response=keep_queue(session),
            )
        )
        for session in ("bomb-a", "bomb-b")
    }
    try:
        await eventually(lambda: len(who) == 2, timeout=30, what="both bombs started")
        assert who["bomb-a"][0] != who["bomb-b"][0]

        def counts() -> list[int]:
            return [len(execution_processes(uid, ns)) for uid, ns in who.values()]

        peak: list[int] = []

        def both_at_limit() -> bool:
            now = counts()
            peak.append(max(now))
            return min(now) >= LIMIT - 8

        await eventually(both_at_limit, timeout=60, what="both bombs at their limit")
        assert max(peak) <= LIMIT
        third = await client.run("set_result(sum(range(10)))", timeout=60)
        assert third.status == "OK", third.result.error
        assert third.output == 45
        assert max(counts()) <= LIMIT
    finally:
        for queue in queues.values():
            queue.put_nowait(pb.ExecuteRequest(cancel=pb.CancelExecution()))
        outcomes = await asyncio.gather(*bombs.values())
    assert [o.status for o in outcomes] == ["CANCELLED", "CANCELLED"]
    for uid, ns in who.values():
        assert execution_processes(uid, ns) == []


CPU_SPIN = {
    "python": "while True:\n    pass",
    "node": "while (true) {}",
}


@pytest.mark.timeout(90)
@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_cpu_spin_ends_at_the_cpu_limit(start_server: StartServer, runtime: str) -> None:
    """With SANDBOX_CPU_TIME=2s and a 40 s wall timeout, a busy loop is KILLED naming the CPU limit."""
    server = await start_server(SANDBOX_CPU_TIME="2s")
    async with client_for(server) as client:
        outcome = await client.run(CPU_SPIN[runtime], runtime=runtime, timeout=40)
    assert outcome.status in ("KILLED", "ERROR")
    assert "CPU time limit of 2 s exceeded" in outcome.result.error


IGNORE_SIGTERM = {
    "python": WHO_AM_I["python"]
    + (
        "import signal, subprocess, sys, time\n"
        "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
        "subprocess.Popen([sys.executable, '-c', "
        "'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)'])\n"
        "call_tool('ready', WHO)\n"
        "while True:\n"
        "    time.sleep(1)\n"
    ),
    "node": WHO_AM_I["node"]
    + (
        "process.on('SIGTERM', () => {});\n"
        "require('child_process').spawn(process.execPath, "
        "['-e', \"process.on('SIGTERM', () => {}); setInterval(() => {}, 1000)\"], { stdio: 'inherit' });\n"
        "await callTool('ready', WHO);\n"
        "await new Promise(() => setInterval(() => {}, 1000));\n"
    ),
}


@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_code_ignoring_sigterm_is_stopped_at_the_timeout(
    client: SandboxClient, runtime: str
) -> None:
    """Code and a child that both ignore SIGTERM end at the timeout, with nothing left behind."""
    seen: dict[str, tuple[int, str, int]] = {}

    def ready(uid: int, ns: str) -> str:
        seen["run"] = (uid, ns, len(execution_processes(uid, ns)))
        return "ok"

    outcome = await client.run(
        IGNORE_SIGTERM[runtime], runtime=runtime, timeout=6, tools={"ready": ready}
    )
    assert outcome.status == "TIMEOUT"
    assert "timed out after 6 s" in outcome.result.error
    uid, ns, alive = seen["run"]
    assert alive == 2  # the code and its child, before the timeout
    assert execution_processes(uid, ns) == []


# The shell exits at once; its setsid'd child (sleep) outlives it, re-parented.
GRANDCHILD = {
    "python": WHO_AM_I["python"]
    + (
        "import subprocess, time\n"
        "subprocess.run(['/bin/sh', '-c', 'setsid sleep 300 </dev/null >/dev/null 2>&1 &'], check=True)\n"
        "call_tool('ready', WHO)\n"
        "if MODE != 'exit':\n"
        "    time.sleep(300)\n"
    ),
    "node": WHO_AM_I["node"]
    + (
        "require('child_process').execFileSync('/bin/sh', "
        "['-c', 'setsid sleep 300 </dev/null >/dev/null 2>&1 &']);\n"
        "await callTool('ready', WHO);\n"
        "if (MODE !== 'exit') await new Promise((r) => setTimeout(r, 300000));\n"
    ),
}


@pytest.mark.parametrize("mode", ["exit", "timeout", "cancel"])
@pytest.mark.parametrize("runtime", RUNTIMES)
async def test_setsid_grandchild_does_not_outlive_the_run(
    client: SandboxClient, runtime: str, mode: str
) -> None:
    """A setsid'd grandchild orphaned by its parent is gone when the run ends: by exit, timeout or cancel."""
    marker = new_marker()
    seen: dict[str, tuple[int, str, list[int]]] = {}

    def on_response(response: pb.ExecuteResponse, queue: Queue) -> None:
        if response.WhichOneof("kind") != "tool_call":
            return
        args = json.loads(response.tool_call.args_json)
        uid, ns = args["uid"], args["ns"]
        seen["run"] = (uid, ns, execution_processes(uid, ns, marker))
        if mode == "cancel":
            queue.put_nowait(pb.ExecuteRequest(cancel=pb.CancelExecution()))

    code = GRANDCHILD[runtime].replace("MODE", repr(mode))
    outcome = await client.run(
        code,
        runtime=runtime,
        timeout=6 if mode == "timeout" else 60,
        env={"OASIS_TEST_MARKER": marker},
        tools={"ready": lambda **_: "ok"},
        on_response=on_response,
    )
    expected = {"exit": "OK", "timeout": "TIMEOUT", "cancel": "CANCELLED"}[mode]
    assert outcome.status == expected, outcome.result.error
    uid, ns, marked = seen["run"]
    assert len(marked) == 2, "the code and its setsid'd sleep were not both running"
    assert execution_processes(uid, ns, marker) == []


@pytest.mark.timeout(90)
async def test_nothing_survives_a_killed_server(server_process: StartProcess) -> None:
    """SIGKILL the server mid-run: the code and its setsid'd grandchild die with it."""
    marker = new_marker()
    server = server_process()
    seen: dict[str, tuple[int, str, int]] = {}
    ready = asyncio.Event()

    async def report(uid: int, ns: str) -> str:
        seen["run"] = (uid, ns, len(execution_processes(uid, ns, marker)))
        ready.set()
        await asyncio.sleep(120)  # never answered: the server dies first
        return "late"

    async with client_for(server) as client:
        code = GRANDCHILD["python"].replace("MODE", "'wait'")
        run = asyncio.create_task(
            client.run(code, env={"OASIS_TEST_MARKER": marker}, timeout=60, tools={"ready": report})
        )
        await asyncio.wait_for(ready.wait(), 30)
        server.proc.send_signal(signal.SIGKILL)
        with pytest.raises(grpc.aio.AioRpcError):
            await run
    uid, ns, running = seen["run"]
    assert running == 2  # the code and the setsid'd sleep
    await eventually(
        lambda: execution_processes(uid, ns, marker) == [],
        timeout=10,
        what="no process of the run left after the server died",
    )
