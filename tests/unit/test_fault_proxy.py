"""The fault proxy against a real echo server on loopback."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from outboxkit.faults.proxy import FaultProxy


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    received = 0
    while data := await reader.read(1024):
        received += len(data)
        writer.write(data)
        await writer.drain()
    writer.close()


@pytest.fixture
async def proxy() -> AsyncIterator[FaultProxy]:
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    fault = await FaultProxy(port).start()
    try:
        yield fault
    finally:
        await fault.close()
        server.close()
        await server.wait_closed()


async def roundtrip(port: int, payload: bytes = b"ping", within: float = 10.0) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.read(1024), within)
    finally:
        writer.close()


async def test_pass_forwards(proxy: FaultProxy) -> None:
    assert await roundtrip(proxy.port) == b"ping"


async def test_blackhole_never_answers(proxy: FaultProxy) -> None:
    await proxy.set_mode("blackhole")
    with pytest.raises(TimeoutError):
        await roundtrip(proxy.port, within=0.3)


async def test_refuse_then_recover(proxy: FaultProxy) -> None:
    await proxy.set_mode("refuse")
    with pytest.raises(OSError):
        await roundtrip(proxy.port)
    await proxy.set_mode("pass")
    assert await roundtrip(proxy.port) == b"ping"


async def test_drop_replies_resets_after_the_server_answered(proxy: FaultProxy) -> None:
    await proxy.set_mode("drop_replies")
    with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
        data = await roundtrip(proxy.port)
        if not data:  # EOF instead of RST on some kernels: still nothing delivered
            raise ConnectionResetError
