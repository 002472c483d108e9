"""Freeze a child process for good: SIGSTOP, then wait until every thread has stopped.

`kill(pid, SIGSTOP)` returns before the process stops. The kernel wakes one thread to
start the group stop; on a busy machine another thread of the process that gets a CPU
first keeps running (and may answer a request) until then. A test that freezes a broker
and then expects silence must wait for the stop to be complete.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

_STOPPED_STATES = {"T", "t"}  # stopped by a signal, or by a tracer


def _thread_states(pid: int) -> list[str]:
    """The scheduler state letter of every thread of `pid` (empty once it has gone)."""
    states: list[str] = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue  # the thread ended meanwhile
        # The command name (field 2) is in parentheses and may contain spaces.
        states.append(text[text.rindex(")") + 2])
    return states


def freeze(pid: int, timeout: float = 10.0) -> None:
    """SIGSTOP `pid` and return once all its threads are stopped (`TimeoutError` if not)."""
    os.kill(pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout
    while True:
        states = _thread_states(pid)
        if states and all(state in _STOPPED_STATES for state in states):
            return
        if not states and not Path(f"/proc/{pid}").exists():
            raise ProcessLookupError(f"process {pid} is gone")
        if time.monotonic() > deadline:
            raise TimeoutError(f"process {pid} did not stop within {timeout:g}s: {states}")
        time.sleep(0.001)


def thaw(pid: int) -> None:
    """Let a frozen process go on (SIGCONT)."""
    os.kill(pid, signal.SIGCONT)
