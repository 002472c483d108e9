"""Fixtures for the acceptance tests: the CLI as a subprocess against real servers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.integration.brokers import nats_server
from tests.support.relay_process import RelayProcesses

__all__ = ["nats_server", "relays"]


@pytest.fixture
async def relays(tmp_path: Path) -> AsyncIterator[RelayProcesses]:
    """Starts `outboxkit relay` subprocesses; every one still running is killed afterwards."""
    processes = RelayProcesses(tmp_path)
    try:
        yield processes
    finally:
        await processes.reap_all()
