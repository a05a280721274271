"""The warm Python launcher's zygote: pays the data stack's imports once, forks per execution.

Started by the server (exec'd, never forked from it: grpc and fork do not mix) as

    python -I -S -u python_zygote.py CONTROL_FD

and first reads its settings from CONTROL_FD: the library, the server's pid,
the site folders and what to preload (not on the command line, which every
child shares and the code can read). It runs as the server's user (root
under isolation) with a bare environment, imports the preload list,
warms their lazy paths, freezes the heap and then waits.

For each request on CONTROL_FD (a SOCK_SEQPACKET socket: one JSON message
per datagram, fds beside it), the server has already built the run's
namespaces and root with `oasis-init --box`, as a cold start would. The
zygote forks a child straight into the box's pid namespace; the child enters
the box's other namespaces and takes the program's last steps (cgroup,
rlimits, uid drop, seccomp) through liboasis-init.so's oasis_enter, with the
request's oasis-init options. So one fork of this large process is all a run
costs. The child runs the prelude in a fresh __main__ and exits.

    server -> zygote  {"library", "server_pid", "site_paths", "preload"}   once, first
                      {"id", "cwd", "targets", "channel"}
                        + fds [options, stdout, stderr, box's pid namespace, *targets]
    zygote -> server  {"ready", "modules", "address_space"}   once, after warming
                      {"id", "pid"} + [pidfd]  or  {"id", "error"}
                      {"id", "exit"}   the wait status, as an exit code (-N: signal N)

Every child shares this process's memory image and address layout, so nothing
secret may ever live here: the zygote reads no request content but fd numbers.
"""

import contextlib
import ctypes
import gc
import json
import os
import selectors
import signal
import socket
import sys

_MAX_MESSAGE = 64 * 1024
_MAX_FDS = 16
_CLONE_NEWPID = 0x20000000
# Received fds are parked above the numbers a request may target while the
# child arranges its table.
_PARK = 1000


def _log(text):
    sys.stderr.write(f"oasis-zygote: {text}\n")


def _preload(names):
    """Import and warm the data stack; returns the names that imported."""
    loaded = []
    for name in names:
        try:
            __import__(name)
        except Exception as exc:  # a missing optional package is not fatal
            _log(f"preload {name}: {exc!r}")
            continue
        loaded.append(name)
    _warm(loaded)
    return loaded


def _warm(loaded):
    """Run each library's lazy first-use paths once, so the children start warm."""
    if "pandas" in loaded:
        import pandas

        frame = pandas.DataFrame({"k": ["a", "b", "a"], "v": [1, 2, 3]})
        frame.groupby("k")["v"].sum().to_dict()
        frame.describe()
    if "matplotlib" in loaded:
        import io

        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots()
        axes.bar(["a", "b"], [1, 2])
        axes.set_title("warm")
        figure.savefig(io.BytesIO(), format="png")
        plt.close(figure)
    compile("x = [i * 2 for i in range(3)]\nprint(x)", "<warm>", "exec")


def _own_modules(site_paths):
    """Top-level modules imported from the site folders: the ones a session's own
    installed packages would shadow in a cold start."""
    names = set()
    roots = tuple(os.path.join(path, "") for path in site_paths)
    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None) or ""
        if path.startswith(roots):
            names.add(name.partition(".")[0])
    return sorted(names)


def _address_space():
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
    return 0


def _die_with_parent():
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def _send(control, message, fds=()):
    socket.send_fds(control, [json.dumps(message).encode()], list(fds))


class Zygote:
    def __init__(self, control, library, base_path):
        self.control = control
        # PyDLL: the GIL stays held across the call, as it is around os.fork.
        self.enter = ctypes.PyDLL(library).oasis_enter
        self.enter.restype = ctypes.POINTER(ctypes.c_char_p)
        self.setns = ctypes.CDLL(None, use_errno=True).setns
        self.own_pidns = os.open("/proc/self/ns/pid", os.O_RDONLY | os.O_CLOEXEC)
        self.base_path = base_path
        self.pid = os.getpid()
        self.children = {}  # pidfd -> (request id, pid)
        self.selector = selectors.DefaultSelector()
        self.selector.register(control, selectors.EVENT_READ)

    def serve(self):
        while True:
            for key, _ in self.selector.select():
                if key.fileobj is self.control:
                    if not self._receive():
                        return
                else:
                    self._reap(key.fd)

    def _receive(self):
        try:
            data, fds, flags, _ = socket.recv_fds(self.control, _MAX_MESSAGE, _MAX_FDS)
        except InterruptedError:
            return True
        if not data:
            return False  # the server closed the socket: children die with their parent
        try:
            request = json.loads(data)
            targets = request["targets"]
            if flags & socket.MSG_CTRUNC or len(fds) != 4 + len(targets):
                raise ValueError("the request's fds do not match its targets")
            if not all(isinstance(t, int) and 2 < t < _PARK for t in targets):
                raise ValueError(f"fd targets must lie between 3 and {_PARK - 1}")
            self._fork(request, fds)
        except Exception as exc:
            if os.getpid() != self.pid:
                os._exit(125)  # a child must never come back to serve requests
            _send(self.control, {"id": _request_id(data), "error": f"{type(exc).__name__}: {exc}"})
        finally:
            for fd in fds:
                os.close(fd)
        return True

    def _fork(self, request, fds):
        options, stdout, stderr, box_pidns, *passed = fds
        self._pid_namespace_for_children(box_pidns)
        try:
            pid = os.fork()
        except BaseException:
            self._pid_namespace_for_children(self.own_pidns)
            raise
        if pid == 0:
            _child(self, request, [options, stdout, stderr, *passed])  # never returns
        # Only here, never in the child: its own namespace is the box's now.
        self._pid_namespace_for_children(self.own_pidns)
        try:
            pidfd = os.pidfd_open(pid)
        except BaseException:
            _reap_now(pid)
            raise
        self.children[pidfd] = (request["id"], pid)
        self.selector.register(pidfd, selectors.EVENT_READ)
        _send(self.control, {"id": request["id"], "pid": pid}, [pidfd])

    def _pid_namespace_for_children(self, fd):
        if self.setns(fd, _CLONE_NEWPID) != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, f"setns(pid): {os.strerror(errno)}")

    def _reap(self, pidfd):
        request_id, pid = self.children.pop(pidfd)
        self.selector.unregister(pidfd)
        os.close(pidfd)
        _, status = os.waitpid(pid, 0)
        _send(self.control, {"id": request_id, "exit": os.waitstatus_to_exitcode(status)})


def _reap_now(pid):
    """Kill and wait for a child nobody will hear of (its zombie would hold up its box)."""
    with contextlib.suppress(OSError):
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)


def _request_id(data):
    try:
        return json.loads(data).get("id")
    except Exception:
        return None


def _child(zygote, request, fds):
    """In the forked child: arrange the fds, enter the box, run the prelude, exit."""
    try:
        code = _run_child(zygote, request, fds)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    except BaseException as exc:
        try:
            _log(f"child failed: {exc!r}")
        finally:
            os._exit(125)
    os._exit(code)


def _run_child(zygote, request, fds):
    os.chdir(request["cwd"])
    parked = [_park(fd) for fd in fds]
    # Everything the zygote holds (control socket, selector, pidfds) goes.
    os.closerange(3, _PARK)
    options, stdout, stderr, *passed = parked
    null = os.open("/dev/null", os.O_RDONLY)
    if null != 0:
        os.dup2(null, 0)
        os.close(null)
    os.dup2(stdout, 1)
    os.dup2(stderr, 2)
    for fd, target in zip(passed, request["targets"], strict=True):
        os.dup2(fd, target)
    for fd in (stdout, stderr, *passed):
        os.close(fd)
    argv = [b"oasis-init", b"--args-fd", str(options).encode(), b"--", b"python"]
    env = zygote.enter(len(argv), (ctypes.c_char_p * (len(argv) + 1))(*argv, None))
    if 0 in os.getresuid() or 0 in os.getresgid():
        os._exit(125)  # oasis_enter checks this too: never run code with root left
    _become_fresh(zygote, env)
    import python_prelude

    in_fd, out_fd = request["channel"]
    code = python_prelude.main(in_fd, out_fd)
    _finalize()
    python_prelude.report_exit(code)
    return code


def _park(fd):
    import fcntl

    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, _PARK)


def _become_fresh(zygote, env):
    """What a new interpreter would have: its own environment, seeds and signals."""
    os.environ.clear()
    index = 0
    while env[index] is not None:
        name, _, value = env[index].decode("utf-8", "surrogateescape").partition("=")
        os.environ[name] = value
        index += 1
    sys.path[:] = zygote.base_path
    sys.argv = [""]
    sys.dont_write_bytecode = False
    signal.signal(signal.SIGINT, signal.default_int_handler)
    import random

    random.seed()
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()
    # The heap stays frozen: a collection over the zygote's objects would copy their pages.


def _finalize():
    """What interpreter shutdown does before exit: wait for threads, run atexit, flush."""
    import atexit
    import threading

    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def main():
    _die_with_parent()
    control = socket.socket(fileno=int(sys.argv[1]))
    settings = json.loads(control.recv(_MAX_MESSAGE) or b"{}")
    if os.getppid() != settings.get("server_pid"):
        return 1
    library = settings["library"]
    base_path = list(sys.path)
    sys.dont_write_bytecode = True  # no __pycache__ written as root beside the prelude
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import python_prelude  # noqa: F401  (imported once, here)

    sys.path.remove(os.path.dirname(os.path.abspath(__file__)))
    sites = [path for path in settings["site_paths"] if path not in base_path]
    sys.path.extend(sites)
    loaded = _preload(settings["preload"])
    threads = len(os.listdir("/proc/self/task"))
    if threads != 1:
        # A fork copies only the calling thread: a pool thread would be half-alive.
        _send(control, {"error": f"{threads} threads after the imports ({', '.join(loaded)})"})
        return 1
    gc.collect()
    gc.freeze()  # the children's garbage collector never touches (and copies) these pages
    _send(
        control,
        {
            "ready": True,
            "modules": _own_modules(sites),
            "preloaded": loaded,
            "address_space": _address_space(),
        },
    )
    Zygote(control, library, base_path).serve()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (BrokenPipeError, ConnectionResetError):
        sys.exit(0)  # the server went away (it is stopping): nothing left to serve
