"""A model held in a child process, so that a native crash, a runaway allocation or a decode that
never ends costs one request instead of the server.

`Isolated(load)` starts `python -m codec.core.isolated`, which calls `load()` once (any picklable
callable that returns the model) and then, for each `call(fn, *args, **kwargs)`, runs
`fn(model, *args, **kwargs)` and sends back the result or the exception it raised (re-raised in
the caller as the same type). `fn` must be importable by name (a module-level function), and so
must every argument and result (they are pickled). Calls run one at a time.

Limits, applied whatever the request asks for:
- memory: the child's RLIMIT_DATA (its heap and every private writable mapping: what CPU tensors
  and arrays use; not the GPU's memory, nor the shared libraries it maps) is `memory_mb`, so an
  allocation over it fails inside the child as MemoryError instead of taking the machine's memory.
  RLIMIT_AS would also count the address space the CUDA driver reserves without using it;
- time: a call that has not answered after `timeout_s` gets the child killed and raises
  WorkerTimeout.
A child that dies (segfault, abort, SIGKILL, the kernel's OOM killer) raises WorkerDied in the
call that was running; either way the next call starts a fresh child, which loads the model again.
"""

from __future__ import annotations

import atexit
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection

log = logging.getLogger(__name__)


class WorkerError(RuntimeError):
    """The model process could not answer; the message is meant for the person who asked."""


class WorkerDied(WorkerError):
    pass


class WorkerTimeout(WorkerError):
    pass


class Isolated:
    def __init__(self, load, memory_mb: float | None = None, timeout_s: float | None = None, name: str = "model"):
        self.load, self.memory_mb, self.timeout_s, self.name = load, memory_mb, timeout_s, name
        self._proc: subprocess.Popen | None = None
        self._conn: Connection | None = None
        self._loaded = False  # the child's model is loaded
        self._lock = threading.Lock()  # one call at a time, and one start
        self.starts = 0  # how many children were started (1 + restarts)
        atexit.register(self.close)

    @property
    def ready(self) -> bool:
        """A child is running with its model loaded."""
        return self._loaded and self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.ready else None

    def start(self) -> None:
        """Start the child and wait until its model is loaded (no-op when one is ready); the
        load's exception, if it fails, is raised here."""
        with self._lock:
            self._start()

    def call(self, fn, *args, progress=None, **kwargs):
        """`fn(model, *args, **kwargs)` in the child; `progress`, when given, is passed to `fn`
        as the keyword argument `progress`: a callable whose every call is repeated here."""
        with self._lock:
            self._start()
            try:
                self._conn.send(("call", fn, args, kwargs, progress is not None))
            except OSError:  # it died since the last call
                self._died()
            deadline = None if self.timeout_s is None else time.monotonic() + self.timeout_s
            while True:
                kind, *payload = self._receive(deadline)
                if kind == "progress":
                    p_args, p_kwargs = payload
                    progress(*p_args, **p_kwargs)
                elif kind == "result":
                    return payload[0]
                else:  # "error"
                    raise payload[0]

    def close(self) -> None:
        """Stop the child (at exit, or to free its memory)."""
        self._kill()

    def _start(self) -> None:
        if self.ready:
            return
        self._kill()
        parent, child = socket.socketpair()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        self._proc = subprocess.Popen([sys.executable, "-m", "codec.core.isolated", str(child.fileno())],
                                      pass_fds=[child.fileno()], env=env)
        child.close()
        self._conn = Connection(parent.detach())
        self.starts += 1
        log.info("%s process %d started (memory limit %s MB, time limit %s s per call)",
                 self.name, self._proc.pid, self.memory_mb, self.timeout_s)
        self._conn.send(("load", self.load, self.memory_mb))
        kind, *payload = self._receive(deadline=None)  # loading is not limited: a large model takes a while
        if kind == "error":
            self._kill()
            raise payload[0]
        self._loaded = True

    def _receive(self, deadline: float | None):
        try:
            while not self._conn.poll(None if deadline is None else max(0.0, deadline - time.monotonic())):
                if deadline is not None and time.monotonic() >= deadline:
                    self._kill()
                    raise WorkerTimeout(f"This took longer than the limit of {self.timeout_s:g} s and was stopped.")
            return self._conn.recv()
        except (EOFError, OSError):
            self._died()

    def _died(self):
        code = self._kill()
        how = f"signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit code {code}"
        log.error("%s process died (%s)", self.name, how)
        raise WorkerDied("The model process stopped while working on this request (it is restarted for the "
                         "next one); if this file or image keeps failing, it is probably malformed.") from None

    def _kill(self) -> int | None:
        """Kill the child (if any) and return its exit status (negative: the signal that ended it)."""
        proc, conn, self._proc, self._conn, self._loaded = self._proc, self._conn, None, None, False
        if conn is not None:
            conn.close()
        if proc is None:
            return None
        if proc.poll() is None:
            proc.kill()
        return proc.wait()


# ------------------------------------------------------------------------------------------------
# The child


def _serve(conn: Connection) -> None:
    _, load, memory_mb = conn.recv()
    if memory_mb:
        limit = int(memory_mb * 2**20)
        resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
    try:
        model = load()
    except BaseException as exc:  # noqa: BLE001 - every failure goes back to the parent
        conn.send(("error", _sendable(exc)))
        return
    conn.send(("ready",))
    while True:
        try:
            _, fn, args, kwargs, with_progress = conn.recv()
        except EOFError:  # the parent closed the connection: nothing more to do
            return
        if with_progress:
            kwargs["progress"] = lambda *a, **kw: conn.send(("progress", a, kw))
        try:
            conn.send(("result", fn(model, *args, **kwargs)))
        except Exception as exc:  # noqa: BLE001 - raised again in the parent
            conn.send(("error", _sendable(exc)))


def _sendable(exc: BaseException) -> BaseException:
    """`exc` with the child's traceback as a note (the parent logs it), as a type that survives
    pickling. torch's CPU allocator reports an allocation refused by the memory limit as a
    RuntimeError ("... can't allocate memory ..."); it goes back as the MemoryError it is."""
    import pickle

    if isinstance(exc, RuntimeError) and "can't allocate memory" in str(exc):
        exc = MemoryError(str(exc))
    exc.add_note("In the model process:\n" + "".join(traceback.format_exception(exc)))
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001 - an exception type that cannot be rebuilt from its args
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def _exit_with_parent() -> None:
    """Exit when the parent is gone (even if it was SIGKILLed), however busy the model is."""
    parent = os.getppid()
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s[worker]: %(message)s")
    threading.Thread(target=_exit_with_parent, daemon=True).start()
    _serve(Connection(int(sys.argv[1])))
