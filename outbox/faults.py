"""Deterministic crash points for the fault suite.

`crash_at = "after_publish:3"` (the relay's or the consumer's setting, or the
OUTBOXKIT_TEST_CRASH_AT variable read by the CLI at start-up) makes the process SIGKILL itself
the third time it reaches the step `after_publish`. Unset in production.

Relay steps: `after_claim`, `after_publish`, `before_commit` (settled, not committed),
`after_commit`. Consumer steps: `after_handle_commit` (inbox transaction committed, broker
not yet acked), `after_store_commit` (durable mode, stored but not acked).
"""

from __future__ import annotations

import os
import signal

STEPS = (
    "after_claim",
    "after_publish",
    "before_commit",
    "after_commit",
    "after_handle_commit",
    "after_store_commit",
)


class CrashPoints:
    """Counts the steps and kills the process at the configured one."""

    def __init__(self, spec: str | None) -> None:
        self._step: str | None = None
        self._remaining = 0
        if spec:
            step, _, count = spec.partition(":")
            if step not in STEPS:
                raise ValueError(f"unknown crash step {step!r}; known: {', '.join(STEPS)}")
            self._step, self._remaining = step, int(count or 1)

    def reached(self, step: str) -> None:
        """Called by the relay at each step; SIGKILLs the process at the chosen one."""
        if step != self._step:
            return
        self._remaining -= 1
        if self._remaining <= 0:
            os.kill(os.getpid(), signal.SIGKILL)
