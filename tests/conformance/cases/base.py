"""What the conformance suite needs to know about a broker."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol


class BrokerServer(Protocol):
    """A real broker server started for the session."""

    def fresh_url(self) -> str:
        """A broker URL whose destinations (stream, queue, topic…) no other test uses."""

    def stop(self) -> None:
        """Stop the server (for the outage test)."""

    def start(self) -> None:
        """Start it again on the same address."""


@dataclass(frozen=True)
class BrokerCase:
    """One broker under test.

    - `server`: starts the real server for the session (a context manager).
    - `unreachable_url`: a URL with the user `u` and password `s3cr3t-pw` pointing at a port
      nothing listens on, for the credentials test.
    - `keeps_messages_across_restart`: False for in-memory servers; the outage test then only
      checks what was published after the restart.
    - `missing`: why the server cannot run here, or None.
    """

    name: str
    server: Callable[[], AbstractContextManager[BrokerServer]]
    unreachable_url: str
    keeps_messages_across_restart: bool = True


ServerFactory = Callable[[], Iterator[BrokerServer]]
