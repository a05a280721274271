"""Runs one execution's Python code inside the sandbox.

Started as `python -I -S -u python_prelude.py IN OUT` (cold), or called as
`main(IN, OUT)` in a process forked from the warm zygote (python_zygote.py),
where IN and OUT are pipes from and to the server carrying JSON lines. The first line received is
the start message (code, import paths). The code gets call_tool,
call_tools_parallel, set_result and install_package as globals; stdout and
stderr are plain logs and are never parsed, so nothing the code prints can
speak for it.
"""

import json
import os
import sys
import threading

# Imports cost start time on every execution: traceback is loaded only on an
# error, and the module type comes from `sys` instead of `types`.

_reader = None  # the channel, opened by main()
_out = -1
_send_lock = threading.Lock()
_MAIN_THREAD = threading.get_ident()


def _open_channel(in_fd, out_fd):
    # Keep the channel off its well-known numbers and out of child processes
    # (os.dup makes non-inheritable copies).
    global _reader, _out
    _reader = os.fdopen(os.dup(in_fd), "rb")
    _out = os.dup(out_fd)
    os.close(in_fd)
    os.close(out_fd)


def _send(message):
    global _main_sending, _interrupt_deferred
    line = (json.dumps(message, default=_json_default, separators=(",", ":")) + "\n").encode()
    main = threading.get_ident() == _MAIN_THREAD
    with _send_lock:
        _main_sending = main
        try:
            view = memoryview(line)
            while view:
                view = view[os.write(_out, view) :]
        finally:
            _main_sending = False
    if main and _interrupt_deferred:  # held back: half a line would break the channel
        _interrupt_deferred = False
        _raise_interrupt()


class _Replies:
    """Routes replies from the server to the threads waiting for them."""

    def __init__(self):
        self._lock = threading.Lock()
        self._waiting = {}
        self._next_id = 0
        self._thread = None
        self._closed = None
        self._starts = None  # a live interpreter's next start messages (queue.Queue)
        self._main_reads = False  # the main thread reads the channel (next_start)

    def new_id(self):
        with self._lock:
            self._next_id += 1
            call_id = str(self._next_id)
            self._waiting[call_id] = [threading.Event(), None]
            self._ensure_reader()
            return call_id

    def _ensure_reader(self):
        if self._thread is None and not self._main_reads:
            self._thread = threading.Thread(target=self._read, name="oasis-channel", daemon=True)
            self._thread.start()

    def accept_starts(self):
        """A live interpreter: start messages of the next executions come on the channel."""
        import queue

        with self._lock:
            if self._starts is None:
                self._starts = queue.Queue()

    def next_start(self):
        """The next start message. The main thread reads the channel itself while no
        reader thread runs (none does until the code calls a tool): a thread hand-off
        less per execution. Replies it meets on the way go to their waiting threads."""
        with self._lock:
            self._main_reads = self._thread is None
        if not self._main_reads:
            start = self._starts.get()
        else:
            try:
                start = None
                for line in _reader:
                    message = json.loads(line)
                    if message.get("type") == "start":
                        start = message
                        break
                    self._deliver(message)
            finally:
                with self._lock:
                    self._main_reads = False
                    if self._waiting:  # a thread of the code waits for a reply
                        self._ensure_reader()
        if start is None:
            raise SystemExit(0)  # the channel closed: the state is over
        return start

    def _deliver(self, reply):
        with self._lock:
            slot = self._waiting.get(reply.get("id"))
        if slot is not None:
            slot[1] = reply
            slot[0].set()

    def wait(self, call_id):
        slot = self._waiting[call_id]
        slot[0].wait()
        with self._lock:
            del self._waiting[call_id]
        if slot[1] is None:
            raise RuntimeError(f"lost the connection to the sandbox server: {self._closed}")
        return slot[1]

    def discard(self, call_id):
        with self._lock:
            self._waiting.pop(call_id, None)

    def _read(self):
        import signal

        # The server's SIGINT must reach the main thread: one taken by this thread
        # would not wake the code from a sleep (a live interpreter's interrupt).
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        reason = "the channel was closed"
        try:
            for line in _reader:
                reply = json.loads(line)
                if reply.get("type") == "start" and self._starts is not None:
                    self._starts.put(reply)
                else:
                    self._deliver(reply)
        except Exception as exc:
            reason = repr(exc)
        with self._lock:
            self._closed = reason
            for slot in self._waiting.values():
                slot[0].set()
            if self._starts is not None:
                self._starts.put(None)


_replies = _Replies()


def _decode(data):
    try:
        return json.loads(data)
    except ValueError:
        return data


def _to_json(value):
    return json.dumps(value, default=_json_default, separators=(",", ":"))


def _json_default(value):
    # numpy and pandas values are common results; make them plain.
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "isoformat"):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _start_call(name, args):
    if not isinstance(name, str) or not name:
        raise TypeError("call_tool: name must be a non-empty string")
    if args is None:
        args = {}
    call_id = _replies.new_id()
    try:
        _send({"type": "tool_call", "id": call_id, "name": name, "args": args})
    except BaseException:
        _replies.discard(call_id)
        raise
    return call_id


def _finish_call(name, call_id):
    reply = _replies.wait(call_id)
    if reply.get("error"):
        raise RuntimeError(f"tool {name!r} failed: {reply['error']}")
    return _decode(reply.get("data", ""))


def call_tool(name, args=None):
    """Call one of the application's tools and return its result."""
    return _finish_call(name, _start_call(name, args))


def call_tools_parallel(calls):
    """Call several tools at once; results come back in the order of `calls`."""
    pending = []
    for call in calls:
        if not isinstance(call, (list, tuple)) or len(call) not in (1, 2):
            raise TypeError("call_tools_parallel: each call must be (name, args)")
        name, args = call[0], call[1] if len(call) == 2 else None
        pending.append((name, _start_call(name, args)))
    results, first_error = [], None
    for name, call_id in pending:
        try:
            results.append(_finish_call(name, call_id))
        except RuntimeError as exc:
            first_error = first_error or exc
    if first_error is not None:
        raise first_error
    return results


def set_result(data, files=None):
    """Return `data` (JSON-serializable) and optionally workspace files to the caller."""
    if files is None:
        files = []
    if isinstance(files, (str, os.PathLike)) or not all(
        isinstance(f, (str, os.PathLike)) for f in files
    ):
        raise TypeError("set_result: files must be a list of file names")
    _send({"type": "result", "output": _to_json(data), "files": [os.fspath(f) for f in files]})


def install_package(name):
    """Install a package from the package index into this session's workspace."""
    if not isinstance(name, str) or not name:
        raise TypeError("install_package: name must be a non-empty string")
    call_id = _replies.new_id()
    try:
        _send({"type": "install", "id": call_id, "package": name})
    except BaseException:
        _replies.discard(call_id)
        raise
    reply = _replies.wait(call_id)
    if reply.get("error"):
        raise RuntimeError(f"install_package({name!r}) failed: {reply['error']}")
    import importlib

    importlib.invalidate_caches()


def _matplotlib_config():
    """A writable matplotlib config folder under /tmp (not the workspace, whose files
    are the user's), seeded with the prebuilt font cache: the prebuilt folder itself
    is read-only here, and matplotlib would complain on every import and rebuild it."""
    seed = os.environ.pop("OASIS_MPL_CACHE", None)
    if seed is None or "MPLCONFIGDIR" in os.environ:
        return
    target = f"/tmp/.oasis-matplotlib-{os.getuid()}"
    try:
        try:
            os.mkdir(target, 0o700)
        except FileExistsError:
            found = os.lstat(target)  # where /tmp is shared, take only our own real folder
            if not (found.st_mode & 0o170000 == 0o040000 and found.st_uid == os.getuid()):
                return
        for name in os.listdir(seed):
            copy = os.path.join(target, name)
            if not os.path.exists(copy):
                with open(os.path.join(seed, name), "rb") as src, open(copy, "wb") as dst:
                    dst.write(src.read())
    except OSError:
        return
    os.environ["MPLCONFIGDIR"] = target


def _drop_own_frames(report, traceback):
    """Remove this file's frames from a TracebackException and the ones it chains to."""
    seen = set()
    while report is not None and id(report) not in seen:
        seen.add(id(report))
        frames = [frame for frame in report.stack if frame.filename != __file__]
        report.stack = traceback.StackSummary.from_list(frames)
        report = report.__cause__ or report.__context__


def _warm_up():
    """Pay ahead what every run pays first. In a child of the zygote, the first
    write to a page copies it: compiling and running the code, and the JSON of
    its messages, touch a few hundred pages each run."""
    namespace = {}
    exec(compile("value = [str(n) for n in range(64)]", "<warm-up>", "exec"), namespace)
    json.loads(json.dumps({"type": "result", "output": namespace["value"], "files": []}))


def _begin(start):
    """Apply a start message's variables and import paths."""
    os.environ.update(start["env"])  # the request's own variables (MPLCONFIGDIR wins)
    sys.path.extend(p for p in start["sys_path"] if p not in sys.path)


def _new_main():
    main = type(sys)("__main__")
    sys.modules["__main__"] = main
    return main


def _execute(source, main):
    """Run one execution's code in `main`'s namespace; returns its exit code and
    whether it ended with KeyboardInterrupt (the server's interrupt, for a live one)."""
    main.__dict__.update(
        call_tool=call_tool,
        call_tools_parallel=call_tools_parallel,
        set_result=set_result,
        install_package=install_package,
    )
    filename = "<code>"
    try:
        exec(compile(source, filename, "exec"), main.__dict__)
    except SystemExit as exc:
        code = exc.code
        if code is None or isinstance(code, int):
            return code or 0, False
        print(code, file=sys.stderr)
        return 1, False
    except BaseException as exc:
        import linecache
        import traceback

        # Let the traceback quote the offending lines of the code.
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
        # Only the user's frames: this prelude's (the exec above, call_tool and the
        # like) show host paths and nothing of the code.
        report = traceback.TracebackException(type(exc), exc, exc.__traceback__)
        _drop_own_frames(report, traceback)
        text = "".join(report.format())
        sys.stderr.write(text)
        _send({"type": "error", "message": text})
        return 1, isinstance(exc, KeyboardInterrupt)
    return 0, False


def _run():
    import signal

    # Before the start message: a process may be started ahead of its request.
    _matplotlib_config()
    _warm_up()
    # Before "ready": a live interpreter's first interrupt may come at once.
    signal.signal(signal.SIGINT, _on_interrupt)
    _send({"type": "ready"})
    start = json.loads(_reader.readline())
    _begin(start)
    sys.argv = [""]
    main = _new_main()
    if start.get("keep_state"):
        _keep_state(start, main)  # never returns: the interpreter ends by a kill
    signal.signal(signal.SIGINT, signal.default_int_handler)
    return _execute(start["code"], main)[0]


# -- a session's live interpreter (keep_state) ----------------------------------

_running = False
"""An execution's code runs: the server's SIGINT (timeout, cancel) interrupts it."""
_interrupt_raised = False
_interrupt_deferred = False
_main_sending = False


def _on_interrupt(signum, frame):
    # The server sends SIGINT again until the code stops: one KeyboardInterrupt per
    # execution, none outside the code (a late one of the last execution) and none
    # in the middle of a channel message.
    global _interrupt_deferred
    if not _running or _interrupt_raised:
        return
    if _main_sending:
        _interrupt_deferred = True
        return
    _raise_interrupt()


def _raise_interrupt():
    global _interrupt_raised
    _interrupt_raised = True
    raise KeyboardInterrupt


def _keep_state(start, main):
    """Run each execution of the session in `main`; between them the server stops
    this process, and wakes it with the next start message."""
    import contextlib
    import signal

    global _running, _interrupt_raised, _interrupt_deferred
    _replies.accept_starts()
    while True:
        signal.signal(signal.SIGINT, _on_interrupt)  # the code may have changed it
        _interrupt_raised = _interrupt_deferred = False
        _running = True
        try:
            code, interrupted = _execute(start["code"], main)
        except KeyboardInterrupt:  # raised between the code's end and the flag
            code, interrupted = 1, True
        _running = False
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        _send({"type": "idle", "code": code & 0xFF, "interrupted": interrupted})
        start = _replies.next_start()
        _begin(start)


def report_exit(code):
    """Send the exit code, then let go of the log pipes and the channel.

    The server answers the client on this, while the process still exits: a
    child forked from the zygote takes milliseconds to unmap its memory, and
    the kernel closes its files only after that.
    """
    global _out
    try:
        _send({"type": "exit", "code": code & 0xFF})
        null = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    for fd in (1, 2):
        os.dup2(null, fd)
    os.close(null)
    with _send_lock:  # a daemon thread of the code may still be sending
        os.close(_out)
        _out = -1


def main(in_fd, out_fd):
    """Run one execution over the channel IN/OUT; returns the exit code."""
    _open_channel(in_fd, out_fd)
    return _run()


if __name__ == "__main__":
    _exit_code = main(int(sys.argv[1]), int(sys.argv[2]))
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(_exit_code)
