"""The cgroups module: finding the hierarchies, the control files it writes, its groups' life.

cgroup v2 cannot be exercised on the development host (its v2 mount has no
controllers), so the v2 path and file logic runs against a fake folder tree
standing for `/`; the last tests use this host's real cgroups when it has them.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path

import pytest

from sandbox_server import cgroups
from sandbox_server.cgroups import Cgroups, Mechanism, find_v1, find_v2, keyed

from ..helpers import eventually

V2_MOUNT = "41 31 0:38 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n"
V1_MOUNTS = (
    "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n"
    "35 31 0:32 /docker/abc /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
    "37 31 0:34 / /sys/fs/cgroup/freezer rw - cgroup cgroup rw,freezer\n"
    "39 31 0:36 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n"
    "41 31 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"
)
V1_CGROUP = (
    "9:pids:/docker/abc\n"
    "6:freezer:/docker/abc\n"
    "4:memory:/docker/abc\n"
    "2:cpu,cpuacct:/docker/abc\n"
    "0::/\n"
)


def group(path: Path, files: dict[str, str] | None = None) -> Path:
    """A fake cgroup folder with these control files."""
    path.mkdir(parents=True, exist_ok=True)
    for name, text in (files or {}).items():
        (path / name).write_text(text)
    return path


# -- finding the hierarchies -------------------------------------------------


def test_v2_base_is_the_servers_own_cgroup(tmp_path: Path) -> None:
    own = group(tmp_path / "sys/fs/cgroup/kubepods.slice/pod-1/cri-x.scope")
    (own / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma\n")
    text = "0::/kubepods.slice/pod-1/cri-x.scope\n"
    assert find_v2(text, V2_MOUNT, tmp_path) == own
    # Started from the leaf an earlier server moved into: the base is its parent.
    assert find_v2(text.strip() + "/oasis-server\n", V2_MOUNT, tmp_path) == own


def test_v2_in_a_cgroup_namespace(tmp_path: Path) -> None:
    root = group(tmp_path / "sys/fs/cgroup", {"cgroup.controllers": "memory pids\n"})
    assert find_v2("0::/\n", V2_MOUNT, tmp_path) == root


def test_v2_needs_memory_and_pids_and_a_visible_path(tmp_path: Path) -> None:
    group(tmp_path / "sys/fs/cgroup", {"cgroup.controllers": "cpu memory\n"})
    assert find_v2("0::/\n", V2_MOUNT, tmp_path) is None
    group(tmp_path / "sys/fs/cgroup", {"cgroup.controllers": "memory pids\n"})
    assert find_v2("0::/../elsewhere\n", V2_MOUNT, tmp_path) is None
    assert find_v2("4:memory:/x\n", V2_MOUNT, tmp_path) is None  # no v2 line at all
    # A hybrid host's v2 mount without controllers (this development host).
    group(tmp_path / "sys/fs/cgroup/unified", {"cgroup.controllers": "hugetlb\n"})
    assert find_v2("0::/\n", V1_MOUNTS, tmp_path) is None


def test_v1_bases_follow_each_mounts_root(tmp_path: Path) -> None:
    bases = find_v1(V1_CGROUP, V1_MOUNTS, tmp_path)
    hierarchy = tmp_path / "sys/fs/cgroup"
    assert bases == {
        "cpuacct": hierarchy / "cpu,cpuacct/docker/abc",
        # This mount shows /docker/abc as its root: our group is the mount point.
        "memory": hierarchy / "memory",
        "freezer": hierarchy / "freezer/docker/abc",
        "pids": hierarchy / "pids/docker/abc",
    }


def test_v1_needs_memory_and_pids(tmp_path: Path) -> None:
    no_pids = "\n".join(line for line in V1_MOUNTS.splitlines() if "pids" not in line)
    assert find_v1(V1_CGROUP, no_pids, tmp_path) == {}


def test_v1_cpuacct_sharing_the_memory_hierarchy_is_not_used(tmp_path: Path) -> None:
    mounts = "35 31 0:32 / /sys/fs/cgroup/mc rw - cgroup cgroup rw,memory,cpuacct\n" + (
        "39 31 0:36 / /sys/fs/cgroup/pids rw - cgroup cgroup rw,pids\n"
    )
    bases = find_v1("5:memory,cpuacct:/a\n3:pids:/a\n", mounts, tmp_path)
    assert set(bases) == {"memory", "pids"}


def test_mount_points_with_spaces(tmp_path: Path) -> None:
    mounts = "41 31 0:38 / /sys/fs/cg\\040two rw - cgroup2 cgroup2 rw\n"
    base = group(tmp_path / "sys/fs/cg two", {"cgroup.controllers": "memory pids"})
    assert find_v2("0::/\n", mounts, tmp_path) == base


# -- control files -----------------------------------------------------------


def test_keyed_files() -> None:
    assert keyed("low 0\nhigh 0\nmax 12\noom 2\noom_kill 1\n")["oom_kill"] == 1
    assert keyed("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")["oom_kill"] == 3
    assert keyed("usage_usec 1500\nuser_usec 1000\nsystem_usec 500\n")["usage_usec"] == 1500
    assert keyed("populated 0\nfrozen 1\n") == {"populated": 0, "frozen": 1}


def test_v2_session_limits(tmp_path: Path) -> None:
    # Empty fakes: a write to a real control file replaces its whole value.
    folder = group(tmp_path / "s", {"memory.max": "", "memory.swap.max": "", "pids.max": ""})
    cgroups.v2_limits(folder, memory=384 << 20, pids=24)
    assert (folder / "memory.max").read_text() == str(384 << 20)
    assert (folder / "memory.swap.max").read_text() == "0"
    assert (folder / "pids.max").read_text() == "24"
    # Without swap accounting there is no memory.swap.max to write.
    bare = group(tmp_path / "bare", {"memory.max": "", "pids.max": ""})
    cgroups.v2_limits(bare, memory=1 << 30, pids=8)
    assert not (bare / "memory.swap.max").exists()


def test_v1_session_limits(tmp_path: Path) -> None:
    memory = group(
        tmp_path / "memory/s",
        {"memory.limit_in_bytes": "", "memory.memsw.limit_in_bytes": ""},
    )
    pids = group(tmp_path / "pids/s", {"pids.max": ""})
    cgroups.v1_limits(memory, pids, memory=1 << 30, pids=64)
    assert (memory / "memory.limit_in_bytes").read_text() == str(1 << 30)
    assert (memory / "memory.memsw.limit_in_bytes").read_text() == str(1 << 30)
    assert (pids / "pids.max").read_text() == "64"
    # No memsw (swap accounting off): swappiness 0 instead.
    plain = group(tmp_path / "memory/t", {"memory.limit_in_bytes": "", "memory.swappiness": ""})
    cgroups.v1_limits(plain, pids, memory=1 << 30, pids=64)
    assert (plain / "memory.swappiness").read_text() == "0"


def test_missing_control_files_are_errors_not_new_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        cgroups.v2_limits(group(tmp_path / "s"), memory=1 << 30, pids=8)
    assert not (tmp_path / "s/memory.max").exists()


def delegate(folder: Path) -> Path:
    """Mark a fake cgroup as systemd marks one with Delegate=yes."""
    try:
        os.setxattr(folder, "trusted.delegate", b"1")
    except OSError as exc:
        pytest.skip(f"no trusted xattrs here: {exc}")
    return folder


def test_v2_prepare_enables_controllers_in_an_empty_group(tmp_path: Path) -> None:
    base = group(
        tmp_path / "own",
        {"cgroup.type": "domain\n", "cgroup.procs": "", "cgroup.subtree_control": "cpu\n"},
    )
    cgroups.V2Tree(delegate(base)).prepare()
    assert (base / "cgroup.subtree_control").read_text() == "+memory +pids"


def test_v2_prepare_never_rearranges_a_cgroup_not_delegated(tmp_path: Path) -> None:
    """A systemd scope or a runtime's cgroup above a container: not ours to change."""
    base = group(
        tmp_path / "own",
        {"cgroup.type": "domain\n", "cgroup.procs": "1\n", "cgroup.subtree_control": ""},
    )
    with pytest.raises(cgroups.CgroupError, match="not delegated"):
        cgroups.V2Tree(base).prepare()
    assert not (base / cgroups.SERVER_LEAF).exists()
    assert (base / "cgroup.subtree_control").read_text() == ""


def test_v2_prepare_moves_processes_to_the_leaf_first(tmp_path: Path) -> None:
    base = group(
        tmp_path / "own",
        {"cgroup.type": "domain\n", "cgroup.procs": "1\n", "cgroup.subtree_control": ""},
    )
    delegate(base)
    group(base / cgroups.SERVER_LEAF, {"cgroup.procs": ""})
    # A fake folder never empties as the kernel would: the move is tried, then refused.
    with pytest.raises(cgroups.CgroupError):
        cgroups.V2Tree(base).prepare()
    assert (base / cgroups.SERVER_LEAF / "cgroup.procs").read_text() == "1"
    assert (base / "cgroup.subtree_control").read_text() == ""


def test_v2_prepare_leaves_the_root_and_enabled_groups_alone(tmp_path: Path) -> None:
    # The root cgroup (no cgroup.type) may hold processes and still enable controllers.
    root = group(tmp_path / "root", {"cgroup.procs": "1\n", "cgroup.subtree_control": ""})
    cgroups.V2Tree(root).prepare()
    assert (root / "cgroup.subtree_control").read_text() == "+memory +pids"
    assert not (root / cgroups.SERVER_LEAF).exists()
    done = group(
        tmp_path / "done", {"cgroup.type": "domain", "cgroup.subtree_control": "memory pids"}
    )
    cgroups.V2Tree(done).prepare()
    assert (done / "cgroup.subtree_control").read_text() == "memory pids"


def test_leftovers_of_dead_servers_only(tmp_path: Path) -> None:
    base = group(tmp_path / "own")
    ns = 4026531836
    dead = _dead_pid()
    names = {
        "dead": f"oasis-{ns}-{dead}-aa11",
        "alive": f"oasis-{ns}-{os.getpid()}-bb22",
        "other_ns": f"oasis-{ns + 1}-{dead}-cc33",
        "busy": f"oasis-{ns}-{dead}-dd44",
        "leaf": cgroups.SERVER_LEAF,
    }
    for name in names.values():
        group(base / name / "1-sessions-x")
    (base / names["busy"] / "1-sessions-x" / "cgroup.procs").write_text("4242\n")
    cgroups.V2Tree(base).remove_leftovers(ns)
    left = sorted(p.name for p in base.iterdir())
    assert left == sorted(v for k, v in names.items() if k != "dead")


def test_only_our_groups_are_ever_killed_or_removed(tmp_path: Path) -> None:
    tree = cgroups.V2Tree(group(tmp_path / "own"))
    for rel in ("", "x", "oasis-1-2-ab/../..", "../oasis-1-2-ab"):
        with pytest.raises(ValueError):
            tree.remove(rel)


def _gone(folders: Iterable[str | Path]) -> bool:
    return not any(os.path.exists(folder) for folder in folders)


def _dead_pid() -> int:
    child = subprocess.Popen(["true"])
    child.wait()
    return child.pid


# -- this host's own cgroups -------------------------------------------------


async def _host_cgroups() -> Cgroups:
    found = await Cgroups.start(memory=256 << 20, processes=32)
    if found.mechanism is Mechanism.NONE:
        pytest.skip("this host gives no usable cgroups")
    return found


def _frozen(session: cgroups.SessionGroup, mechanism: Mechanism) -> bool:
    for folder in session.folders:
        if mechanism is Mechanism.V1 and (folder / "freezer.state").exists():
            return (folder / "freezer.state").read_text().strip() == "FROZEN"
        if mechanism is Mechanism.V2:
            return keyed((folder / "cgroup.events").read_text())["frozen"] == 1
    raise AssertionError("no freezer")


async def test_a_run_group_measures_freezes_and_kills() -> None:
    host = await _host_cgroups()
    try:
        session = await host.create("sessions-api")
        assert session is not None
        run = await session.start_run()
        # Joins the run's groups as oasis-init does, burns some CPU, then waits forever.
        script = 'for f in "$@"; do echo $$ > "$f/cgroup.procs"; done; i=0; while [ $i -lt 100000 ]; do i=$((i+1)); done; exec sleep 60'
        process = await asyncio.create_subprocess_exec("sh", "-c", script, "sh", *run.folders)
        await eventually(
            lambda: any(
                str(process.pid) in (Path(f) / "cgroup.procs").read_text() for f in run.folders
            ),
            what="the process in its run group",
        )
        await session.freeze()
        assert _frozen(session, host.mechanism)
        await session.thaw()
        assert not _frozen(session, host.mechanism)

        usage = await run.finish()
        assert await asyncio.wait_for(process.wait(), 10) == -9  # what was left is killed
        assert usage.cpu_time > 0
        assert not usage.oom_killed
        assert _gone(f for f in run.folders if f.endswith("/run-1"))
        assert await run.finish() is usage  # idempotent

        await session.remove()
        assert _gone(session.folders)
    finally:
        await host.close()
    assert _gone(host.folders)


# Three processes stamping CLOCK_MONOTONIC into a file, one line each per ms.
_STAMPER = """
import os, sys, time
os.fork(); os.fork()
while True:
    with open(sys.argv[1], "a") as out:
        out.write(f"{time.monotonic()}\\n")
    time.sleep(0.001)
"""


async def test_kill_now_stops_every_process_of_a_run_before_it_returns(
    tmp_path: Path,
) -> None:
    """Nothing of the run writes after kill_now returns, though their exits come later."""
    host = await _host_cgroups()
    try:
        session = await host.create("sessions-kill-now")
        assert session is not None
        run = await session.start_run()
        stamps = tmp_path / "stamps"
        script = 'for f in "$@"; do echo $$ > "$f/cgroup.procs"; done; exec python3 -c "$STAMPER" "$STAMPS"'
        process = await asyncio.create_subprocess_exec(
            "sh",
            "-c",
            script,
            "sh",
            *run.folders,
            env={**os.environ, "STAMPER": _STAMPER, "STAMPS": str(stamps)},
        )
        await eventually(
            lambda: stamps.exists() and len(stamps.read_text().split()) > 30,
            what="the stamping processes to run",
        )
        usage = run.kill_now()
        returned = time.monotonic()
        assert usage is not None and usage.cpu_time > 0
        assert await asyncio.wait_for(process.wait(), 10) == -9
        await run.finish()  # returns once the group is empty
        assert max(map(float, stamps.read_text().split())) < returned
        await session.remove()
    finally:
        await host.close()


async def test_a_dead_servers_groups_are_removed_at_start() -> None:
    host = await _host_cgroups()
    try:
        ns = os.stat("/proc/self/ns/pid").st_ino
        stale = f"oasis-{ns}-{_dead_pid()}-0badc0de"
        roots = [folder.parent for folder in host.folders]
        for root in roots:
            (root / stale / "1-sessions-old").mkdir(parents=True)
        again = await Cgroups.start(memory=256 << 20, processes=32)
        try:
            assert _gone(root / stale for root in roots)
            assert not _gone([host.folders[0]])  # a live server's are kept
        finally:
            await again.close()
    finally:
        await host.close()
