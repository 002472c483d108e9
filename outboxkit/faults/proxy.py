"""A small asyncio TCP proxy that injects network faults between a client and a server.

Modes (switchable at any time):
- `pass`: forward both ways.
- `latency`: forward with an added delay in each direction.
- `blackhole`: accept connections and read, but forward nothing and answer nothing.
- `stall`: forward nothing and read nothing more, so the sender's TCP window fills and its
  writes block (a peer that stopped reading: frozen process, full receive buffer).
- `refuse`: stop listening (connection refused) and cut every open connection.
- `drop_replies`: forward client → server, but swallow server → client bytes, then reset
  (the server did the work; the client never hears about it: a lost confirm).
`reset()` cuts every open connection at once (RST), in any mode.

A `tap` sees every chunk of every connection (`tap(connection, data, upstream)`, where
`connection` numbers the accepted connections and `upstream` is True for client → server)
and may cut that one connection right there: `"cut"` (RST without forwarding the chunk),
`"cut_after"` (forward it, then RST at once) or `"cut_on_reply"` (forward it, then RST when
the other side next sends anything, swallowing that). It can aim a fault at one exact step
of a protocol, e.g. at the COMMIT of a claim transaction. `cuts` counts the cuts by action,
`swallowed` keeps the start of each reply swallowed by `"cut_on_reply"`.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from outboxkit.devservers.ports import free_port

MODES = ("pass", "latency", "blackhole", "stall", "refuse", "drop_replies")
CUTS = ("cut", "cut_after", "cut_on_reply")
Tap = Callable[[int, bytes, bool], str | None]
"""`tap(connection, data, upstream)`: None to forward `data`, or one of `CUTS`."""


@dataclass(eq=False)
class _Link:
    client: asyncio.StreamWriter
    server: asyncio.StreamWriter | None
    number: int = 0
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    cut_on_reply_from_server: bool | None = None  # which side's next chunk cuts


class FaultProxy:
    """Listen on `listen_host`:`port` and forward to `target_host`:`target_port`."""

    def __init__(
        self,
        target_port: int,
        target_host: str = "127.0.0.1",
        port: int = 0,
        listen_host: str = "127.0.0.1",
    ) -> None:
        self.target = (target_host, target_port)
        self.listen_host = listen_host
        self.port = port or free_port()
        self.mode = "pass"
        self.delay = 0.0
        self.connections_seen = 0
        self.tap: Tap | None = None
        self.cuts: Counter[str] = Counter()
        self.swallowed: list[bytes] = []
        self._server: asyncio.AbstractServer | None = None
        self._links: set[_Link] = set()
        self._flowing = asyncio.Event()  # cleared while stalled
        self._flowing.set()

    async def start(self) -> FaultProxy:
        """Start listening."""
        self._server = await asyncio.start_server(self._accept, self.listen_host, self.port)
        return self

    async def close(self) -> None:
        """Stop listening and cut everything."""
        await self._stop_listening()
        self.reset()

    async def set_mode(self, mode: str, *, delay: float = 0.0) -> None:
        """Switch to `mode` (see the module docstring)."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; known: {', '.join(MODES)}")
        self.mode, self.delay = mode, delay
        if mode == "stall":
            self._flowing.clear()
        else:
            self._flowing.set()
        if mode == "refuse":
            await self._stop_listening()
            self.reset()
        elif self._server is None:
            await self.start()

    def reset(self) -> None:
        """Cut every open connection abruptly (TCP RST)."""
        for link in list(self._links):
            self._abort(link)

    # -- internals -------------------------------------------------------------------------

    async def _stop_listening(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 1)
            self._server = None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections_seen += 1
        link = _Link(client=writer, server=None, number=self.connections_seen)
        self._links.add(link)
        try:
            if self.mode == "blackhole":
                while await reader.read(65536):
                    pass
                return
            try:
                server_reader, server_writer = await asyncio.open_connection(*self.target)
            except OSError:
                return
            link.server = server_writer
            link.tasks = [
                asyncio.create_task(self._pump(reader, server_writer, link, upstream=True)),
                asyncio.create_task(self._pump(server_reader, writer, link, upstream=False)),
            ]
            await asyncio.wait(link.tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._abort(link)

    async def _pump(
        self,
        source: asyncio.StreamReader,
        sink: asyncio.StreamWriter,
        link: _Link,
        *,
        upstream: bool,
    ) -> None:
        with contextlib.suppress(OSError, asyncio.CancelledError):
            while data := await self._read(source):
                if self.mode == "blackhole":
                    continue
                if link.cut_on_reply_from_server is (not upstream):
                    self.swallowed.append(data[:64])
                    self._abort(link)
                    return
                action = self.tap(link.number, data, upstream) if self.tap else None
                if action == "cut":
                    self.cuts[action] += 1
                    self._abort(link)
                    return
                if action in ("cut_after", "cut_on_reply"):
                    self.cuts[action] += 1
                    sink.write(data)
                    await sink.drain()
                    if action == "cut_after":
                        self._abort(link)
                        return
                    link.cut_on_reply_from_server = upstream
                    continue
                if action is not None:
                    raise ValueError(f"unknown tap action {action!r}; known: {', '.join(CUTS)}")
                if self.mode == "drop_replies" and not upstream:
                    # the server answered; the client will never know
                    self.reset()
                    return
                if self.mode == "latency" and self.delay:
                    await asyncio.sleep(self.delay)
                sink.write(data)
                await sink.drain()

    async def _read(self, source: asyncio.StreamReader) -> bytes:
        """The next chunk, once the proxy is not stalled (a stalled proxy reads nothing)."""
        await self._flowing.wait()
        return await source.read(65536)

    def _abort(self, link: _Link) -> None:
        self._links.discard(link)
        for task in link.tasks:
            task.cancel()
        for writer in (link.client, link.server):
            if writer is None:
                continue
            sock = writer.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    # linger 0: close with RST, like a network failure
                    sock.setsockopt(
                        socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                    )
            writer.transport.abort()
