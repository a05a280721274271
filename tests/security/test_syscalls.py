"""The seccomp filter: system calls that namespaces do not cover are refused.

Each call is made raw through ctypes (x86_64 numbers), so no library can
soften the answer; the code reports the errno it got.
"""

from __future__ import annotations

import platform

import pytest

from ..sandbox_client import SandboxClient

pytestmark = pytest.mark.skipif(
    platform.machine() != "x86_64", reason="raw syscall numbers are x86_64 ones"
)

PROBE = """
import ctypes, errno, os, socket
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
params = ctypes.create_string_buffer(120)

def call(*args):
    ctypes.set_errno(0)
    result = libc.syscall(*[ctypes.c_long(a) if isinstance(a, int) else a for a in args])
    if result == 0 and args[0] == 56:  # a clone that worked: the child leaves at once
        os._exit(0)
    return errno.errorcode.get(ctypes.get_errno(), 'ok') if result < 0 else 'allowed'

CLONE_NEWUSER, CLONE_NEWNET, CLONE_NEWNS, SIGCHLD = 0x10000000, 0x40000000, 0x00020000, 17
report = {
    'io_uring_setup': call(425, 8, params),
    'io_uring_setup (x32 ABI)': call(0x40000000 | 425, 8, params),
    'ptrace(TRACEME)': call(101, 0, 0, 0, 0),
    'ptrace(ATTACH, 1)': call(101, 16, 1, 0, 0),
    'keyctl': call(250, 0, -3, 0, 0, 0),
    'add_key': call(248, b'user', b'oasis', b'secret', 6, -3),
    'unshare(NEWUSER)': call(272, CLONE_NEWUSER),
    'unshare(NEWNET)': call(272, CLONE_NEWNET),
    'unshare(NEWNS)': call(272, CLONE_NEWNS),
    'clone(NEWUSER)': call(56, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0),
    'setns': call(308, 0, 0),
    'mount': call(165, b'none', b'/tmp', b'tmpfs', 0, 0),
    'bpf': call(321, 0, 0, 0),
    'perf_event_open': call(298, 0, 0, -1, -1, 0),
    'userfaultfd': call(323, 0),
    'process_vm_readv': call(310, 1, 0, 0, 0, 0, 0),
    'ioctl(TIOCSTI)': call(16, 1, 0x5412, params),  # unfiltered, a pipe answers ENOTTY
    'ioctl(TIOCLINUX)': call(16, 1, 0x541C, params),
}
try:
    socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM).close()
    report['socket(AF_VSOCK)'] = 'allowed'
except OSError as exc:
    report['socket(AF_VSOCK)'] = errno.errorcode[exc.errno]
set_result(report)
"""


async def test_dangerous_syscalls_are_refused(client: SandboxClient) -> None:
    """io_uring (also via x32), ptrace, keyrings, new namespaces, mount, bpf, perf, TIOCSTI, vsock: refused."""
    outcome = await client.run(PROBE)
    report = outcome.output
    assert report is not None, outcome.result.error
    # EPERM is the filter's answer; unconfined, most of these succeed or fail otherwise (EINVAL, EFAULT).
    expected = {name: "EPERM" for name in report} | {"socket(AF_VSOCK)": "EAFNOSUPPORT"}
    assert report == expected


# int 0x80 from a 64-bit process reaches the i386 syscall table, under other numbers.
I386 = """
import subprocess, sys
src = '''
import ctypes, mmap
code = bytes.fromhex("b8a9010000" "31db" "31c9" "cd80" "c3")  # eax=425 io_uring_setup; int 0x80; ret
page = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
page.write(code)
function = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(page)))
print("returned", function())
'''
done = subprocess.run([sys.executable, '-c', src], capture_output=True, text=True)
set_result({'code': done.returncode, 'stdout': done.stdout})
"""


async def test_i386_syscall_entry_kills_the_process(client: SandboxClient) -> None:
    """A syscall through the 32-bit entry (int 0x80) is not filtered by number: the process is killed."""
    outcome = await client.run(I386)
    report = outcome.output
    assert report is not None, outcome.result.error
    assert report["code"] == -31, report  # SIGSYS: SECCOMP_RET_KILL_PROCESS
    assert "returned" not in report["stdout"]
