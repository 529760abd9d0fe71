"""codec.core.isolated: a model in a child process survives what would kill a server -- a segfault, an
allocation over the memory limit, a call that never ends -- and the next call gets a fresh child.

The "model" here is a plain dict (the worker is generic over the model; the app's use with the
real codec is tested through the server in tests/ui/test_ui_worker.py). The functions the child
runs are this module's, imported there by name."""

from __future__ import annotations

import ctypes
import functools
import os
import signal
import subprocess
import sys
import time

import pytest

from codec.core.isolated import Isolated, WorkerDied, WorkerTimeout


# -- what the child runs: fn(model, *args) -------------------------------------------------------
def remember(model: dict, key, value):
    model[key] = value
    return os.getpid()


def recall(model: dict, key):
    return model[key]


def count_to(model: dict, n: int, progress=None):
    for i in range(n):
        progress(i, of=n)
    return n


def segfault(model: dict):
    ctypes.string_at(0)  # reads address 0: SIGSEGV


def sleep(model: dict, seconds: float):
    time.sleep(seconds)


def allocate(model: dict, megabytes: int):
    return len(bytearray(megabytes * 2**20))


def load_failing():
    raise FileNotFoundError("no weights here")


@pytest.fixture
def worker():
    w = Isolated(functools.partial(dict, loaded=True), memory_mb=256, timeout_s=2, name="test model")
    yield w
    w.close()


def test_calls_keep_the_model_and_pass_results_progress_and_errors(worker):
    pid = worker.call(remember, "a", [1, 2])
    assert pid != os.getpid() and worker.pid == pid
    assert worker.call(recall, "a") == [1, 2]
    assert worker.call(recall, "loaded") is True  # the model load() built, kept between calls
    seen = []
    assert worker.call(count_to, 3, progress=lambda i, of: seen.append((i, of))) == 3
    assert seen == [(0, 3), (1, 3), (2, 3)]
    with pytest.raises(KeyError) as info:  # the child's exception, same type, its traceback as a note
        worker.call(recall, "missing")
    assert any("In the model process" in note and "recall" in note for note in info.value.__notes__)
    assert worker.starts == 1


def test_a_segfault_costs_one_call_and_the_next_gets_a_fresh_process(worker):
    first = worker.call(remember, "a", 1)
    with pytest.raises(WorkerDied, match="stopped while working"):
        worker.call(segfault)
    assert not worker.ready
    second = worker.call(remember, "b", 2)
    assert second != first and worker.starts == 2
    with pytest.raises(KeyError):  # a fresh model: what the old process held is gone
        worker.call(recall, "a")


def test_a_process_killed_between_calls_costs_at_most_one_call(worker):
    """Killed while idle: the next call either finds it gone and starts a fresh one, or (when the
    kill has not landed yet) fails with WorkerDied, which a caller may simply retry. Which of the
    two depends on timing, so both are accepted; either way one fresh process serves the rest."""
    pid = worker.call(remember, "a", 1)
    os.kill(pid, signal.SIGKILL)
    try:
        worker.call(remember, "b", 2)
    except WorkerDied:
        pass
    assert worker.call(remember, "b", 2) != pid and worker.starts == 2
    with pytest.raises(KeyError):  # what the killed process held is gone
        worker.call(recall, "a")


def test_a_call_over_the_time_limit_is_stopped(worker):
    pid = worker.call(remember, "a", 1)
    started = time.monotonic()
    with pytest.raises(WorkerTimeout, match="limit of 2 s"):
        worker.call(sleep, 60)
    waited = time.monotonic() - started
    print(f"timed out after {waited:.2f} s (limit 2 s)")
    assert waited < 30  # the 60 s call was cut; nowhere near its end
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # that process is gone
    assert worker.call(remember, "a", 2) != pid


def test_an_allocation_over_the_memory_limit_fails_inside_the_process(worker):
    pid = worker.call(remember, "a", 1)
    with pytest.raises(MemoryError):
        worker.call(allocate, 1024)  # 1 GB, over the 256 MB limit
    assert worker.call(allocate, 64) == 64 * 2**20  # the same process carries on
    assert worker.pid == pid and worker.call(recall, "a") == 1


def test_torch_allocations_over_the_limit_become_memory_errors():
    w = Isolated(dict, memory_mb=1024, timeout_s=60)
    try:
        with pytest.raises(MemoryError, match="allocate"):
            w.call(_torch_empty, 2048)
    finally:
        w.close()


def _torch_empty(model, megabytes: int):
    import torch

    return torch.empty(megabytes * 2**20, dtype=torch.uint8).sum()


def test_a_failed_load_is_raised_to_the_caller():
    w = Isolated(load_failing)
    try:
        with pytest.raises(FileNotFoundError, match="no weights here"):
            w.start()
        assert not w.ready
    finally:
        w.close()


PARENT = """
import functools, sys, time
from codec.core.isolated import Isolated
from tests.codec.test_codec_isolated import remember
w = Isolated(functools.partial(dict))
print(w.call(remember, "a", 1), flush=True)
time.sleep(60)
"""


def test_the_process_exits_when_its_parent_is_killed():
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True,
                              cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    try:
        child = int(parent.stdout.readline())
        parent.kill()
        parent.wait()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                break
            if _zombie(child):
                break
            time.sleep(0.1)
        else:
            os.kill(child, signal.SIGKILL)
            pytest.fail("the model process outlived its parent by 10 s")
    finally:
        parent.kill()


def _zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True
