"""What the conformance suite needs to know about a broker."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from dataclasses import dataclass
from typing import Protocol, TypeVar


class BrokerServer(Protocol):
    """A real broker server started for the session."""

    def fresh_url(self) -> str:
        """A broker URL whose destinations (stream, queue, topic…) no other test uses."""

    def stop(self) -> None:
        """Stop the server (for the outage test)."""

    def start(self) -> None:
        """Start it again on the same address."""


class RawSender(Protocol):
    """The broker's own client, bypassing our publisher and its checks."""

    async def send(self, fields: Mapping[str, str | bytes], payload: bytes) -> None:
        """Send one message on the destination of `tests.support.malformed.RAW_TOPIC`, its
        envelope fields as the broker carries headers (bytes: sent as they are)."""


@dataclass(frozen=True)
class BrokerCase:
    """One broker under test.

    - `server`: starts the real server for the session (a context manager).
    - `unreachable_url`: a URL with the user `u` and password `s3cr3t-pw` pointing at a port
      nothing listens on, for the credentials test.
    - `keeps_messages_across_restart`: False for in-memory servers; the outage test then only
      checks what was published after the restart.
    - `raw`: a `RawSender` for a URL (None: the malformed-envelope corpus skips this broker);
      `raw_text_only`: its client sends only UTF-8 text; `raw_cannot`: what of the corpus
      its framing cannot carry (`tests.support.malformed.Bad.needs`).
    """

    name: str
    server: Callable[[], AbstractContextManager[BrokerServer]]
    unreachable_url: str
    keeps_messages_across_restart: bool = True
    raw: Callable[[str], AbstractAsyncContextManager[RawSender]] | None = None
    raw_text_only: bool = False
    raw_cannot: frozenset[str] = frozenset()


ServerFactory = Callable[[], Iterator[BrokerServer]]


class Startable(Protocol):
    """A dev server: what the cases need of it."""

    def start(self) -> object: ...

    def stop(self) -> None: ...

    def cleanup(self) -> None: ...


class Wrapped:
    """A dev server seen as a `BrokerServer`: `fresh_url` makes a URL from a unique tag."""

    def __init__(self, server: Startable, url_for: Callable[[str], str]) -> None:
        self.server = server
        self.url_for = url_for

    def fresh_url(self) -> str:
        return self.url_for(uuid.uuid4().hex[:10])

    def stop(self) -> None:
        self.server.stop()

    def start(self) -> None:
        self.server.start()


ServerT = TypeVar("ServerT", bound=Startable)


def wrapped(
    make: Callable[[], ServerT], url_for: Callable[[ServerT, str], str]
) -> Callable[[], AbstractContextManager[BrokerServer]]:
    """A `BrokerCase.server` factory: start `make()`, give tagged URLs, clean up after."""

    @contextlib.contextmanager
    def server() -> Iterator[BrokerServer]:
        running = make()
        running.start()
        try:
            yield Wrapped(running, lambda tag: url_for(running, tag))
        finally:
            running.cleanup()

    return server
