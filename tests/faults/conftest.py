"""Fault scenarios: each gets a fresh World of real processes and reports one row.

Set OUTBOXKIT_RELIABILITY_ROWS to a file path to collect the rows (`outboxkit faults` does,
then renders RELIABILITY.md from them).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from outboxkit.faults.checker import Verdict
from outboxkit.faults.report import ScenarioRow, append
from outboxkit.faults.world import World

Report = Callable[..., None]


@pytest.fixture
async def world() -> AsyncIterator[World]:
    async with World() as running:
        yield running


@pytest.fixture
def report() -> Report:
    """`report(number, name, verdict, faults=..., recovery=...)` records the scenario's row."""

    def record(
        number: int,
        name: str,
        verdict: Verdict | None,
        *,
        faults: str,
        recovery: float = 0.0,
        messages: int | None = None,
        outcome: str | None = None,
    ) -> None:
        rows = os.environ.get("OUTBOXKIT_RELIABILITY_ROWS")
        if not rows:
            return
        row = ScenarioRow(
            number=number,
            name=name,
            messages=messages if messages is not None else (verdict.committed if verdict else 0),
            faults=faults,
            lost=verdict.lost if verdict else 0,
            double_processed=verdict.double_processed if verdict else 0,
            duplicates_delivered=verdict.duplicates_delivered if verdict else 0,
            recovery_seconds=recovery,
            outcome=outcome
            or (
                "pass" if verdict is None or verdict.ok else "fail: " + "; ".join(verdict.problems)
            ),
        )
        append(Path(rows), row)

    return record
