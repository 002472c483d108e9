"""`freeze` returns only once every thread of the process has stopped."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from outboxkit.devservers.freeze import _thread_states, freeze, thaw

_BUSY_THREADS = """
import threading, time
def spin():
    while True:
        pass
for _ in range(4):
    threading.Thread(target=spin, daemon=True).start()
time.sleep(600)
"""


@pytest.fixture
def busy_process() -> Iterator[subprocess.Popen[bytes]]:
    process = subprocess.Popen([sys.executable, "-c", _BUSY_THREADS])
    try:
        deadline = time.monotonic() + 10
        while len(_thread_states(process.pid)) < 5:
            assert time.monotonic() < deadline, "the child did not start its threads"
            time.sleep(0.01)
        yield process
    finally:
        thaw(process.pid)
        process.kill()
        process.wait()


def test_every_thread_is_stopped_when_freeze_returns(
    busy_process: subprocess.Popen[bytes],
) -> None:
    for _ in range(20):
        freeze(busy_process.pid)
        states = _thread_states(busy_process.pid)
        assert len(states) == 5 and set(states) <= {"T", "t"}, states
        thaw(busy_process.pid)


def test_a_thawed_process_runs_again(busy_process: subprocess.Popen[bytes]) -> None:
    freeze(busy_process.pid)
    thaw(busy_process.pid)
    deadline = time.monotonic() + 10
    while any(state in {"T", "t"} for state in _thread_states(busy_process.pid)):
        assert time.monotonic() < deadline, "the process stayed stopped"
        time.sleep(0.01)


def test_a_process_that_is_gone_is_an_error() -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    with pytest.raises(ProcessLookupError):
        freeze(process.pid)
