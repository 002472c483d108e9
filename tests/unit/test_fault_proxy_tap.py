"""The fault proxy's tap: cutting one connection at an exact chunk, against a real echo server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from outboxkit.faults.proxy import FaultProxy, Tap

received: list[bytes] = []


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(1024):
        received.append(data)
        writer.write(data)
        await writer.drain()
    writer.close()


@pytest.fixture
async def proxy() -> AsyncIterator[FaultProxy]:
    received.clear()
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    fault = await FaultProxy(server.sockets[0].getsockname()[1]).start()
    try:
        yield fault
    finally:
        await fault.close()
        server.close()
        await server.wait_closed()


def cut_on(action: str) -> Tap:
    def tap(connection: int, data: bytes, upstream: bool) -> str | None:
        return action if upstream and b"boom" in data else None

    return tap


async def exchange(port: int, *payloads: bytes) -> list[bytes | str]:
    """Send each payload and read the answer; "reset" once the connection is cut."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answers: list[bytes | str] = []
    try:
        for payload in payloads:
            writer.write(payload)
            await writer.drain()
            answer = await asyncio.wait_for(reader.read(1024), 10)  # a hang guard
            if not answer:
                answers.append("reset")
                break
            answers.append(answer)
    except ConnectionResetError:
        answers.append("reset")
    finally:
        writer.close()
    return answers


async def test_cut_drops_the_chunk_and_the_connection(proxy: FaultProxy) -> None:
    proxy.tap = cut_on("cut")
    assert await exchange(proxy.port, b"ok", b"boom") == [b"ok", "reset"]
    await asyncio.sleep(0.1)
    assert received == [b"ok"]  # the server never saw the chunk
    assert proxy.cuts["cut"] == 1
    assert await exchange(proxy.port, b"again") == [b"again"]  # other connections pass


async def test_cut_on_reply_forwards_then_swallows_the_answer(proxy: FaultProxy) -> None:
    proxy.tap = cut_on("cut_on_reply")
    assert await exchange(proxy.port, b"boom") == ["reset"]
    await asyncio.sleep(0.1)
    assert received == [b"boom"]  # the server did the work
    assert proxy.swallowed == [b"boom"]  # the client never heard of it
    assert proxy.cuts["cut_on_reply"] == 1


async def test_cut_after_forwards_then_cuts(proxy: FaultProxy) -> None:
    proxy.tap = cut_on("cut_after")
    assert await exchange(proxy.port, b"boom") == ["reset"]
    assert proxy.cuts["cut_after"] == 1
