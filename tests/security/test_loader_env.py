"""The request's env reaches only the sandboxed code, never the root supervisor before it."""

from __future__ import annotations

import shutil

import pytest

from ..sandbox_client import SandboxClient

EVIL_C = r"""
#include <stdio.h>
#include <unistd.h>
__attribute__((constructor)) static void report(void) {
    FILE *f = fopen("preload.log", "a");
    if (f) { fprintf(f, "uid=%d\n", (int)getuid()); fclose(f); }
}
"""


@pytest.mark.skipif(shutil.which("gcc") is None, reason="needs gcc to build the library")
async def test_ld_preload_in_env_runs_only_as_the_session(client: SandboxClient) -> None:
    """LD_PRELOAD in start.env must not load into oasis-init, which runs as root before the drop."""
    build = await client.run(
        "import subprocess\n"
        f"open('evil.c', 'w').write({EVIL_C!r})\n"
        "subprocess.run(['gcc', '-shared', '-fPIC', '-o', 'evil.so', 'evil.c'], check=True)\n"
        "import os\nset_result(os.getcwd())",
        session_id="preload",
    )
    assert build.status == "OK", build.result.error
    workspace = build.output

    # The env is the code's from its first line, so a program it starts loads the library.
    run = await client.run(
        "import subprocess\nsubprocess.run(['true'], check=True)\n"
        "set_result(open('preload.log').read())",
        session_id="preload",
        env={"LD_PRELOAD": f"{workspace}/evil.so"},
    )
    assert run.status == "OK", run.result.error
    uids = {int(line.removeprefix("uid=")) for line in run.output.split()}
    # The library did load (into the code's own program), and never as root.
    assert uids, "the preload never ran, so the test proves nothing"
    assert 0 not in uids
