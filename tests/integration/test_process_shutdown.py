"""`relay.serve` and `inbox.serve` end with `ShutdownStuck` when their work swallows the
cancellation that ends an overlong drain (as nats-py can), instead of hanging."""

from __future__ import annotations

import asyncio

import pytest

from outboxkit.devservers import NatsServer
from outboxkit.inbox import Inbox
from outboxkit.inbox.process import serve as serve_consumer
from outboxkit.inbox.runner import ConsumerRunner
from outboxkit.inbox.settings import ConsumerSettings
from outboxkit.outbox import bounded
from outboxkit.outbox.errors import ShutdownStuck
from outboxkit.relay import Relay, RelaySettings
from outboxkit.relay import serve as serve_relay
from tests.integration.brokers import unique_stream
from tests.support.cancellation import Swallowing


async def stuck_then_released(serving: asyncio.Task[object], stuck: Swallowing) -> None:
    """Stop `serving` (as SIGTERM would, via cancellation), expect `ShutdownStuck`, then
    release the stuck work and let it clean up (connections closed)."""
    await asyncio.wait_for(stuck.running.wait(), 30)
    serving.cancel()
    with pytest.raises(ShutdownStuck):
        await asyncio.wait_for(serving, 30)  # a hang guard
    stuck.release.set()
    left_behind = asyncio.all_tasks() - {asyncio.current_task()}
    _, pending = await asyncio.wait(left_behind, timeout=30)
    assert not pending


@pytest.fixture
def stuck(monkeypatch: pytest.MonkeyPatch) -> Swallowing:
    monkeypatch.setattr(bounded, "CANCEL_GRACE", 0.2)
    return Swallowing()


def broker_url(nats_server: NatsServer) -> str:
    stream = unique_stream()
    return f"{nats_server.url}?stream={stream}&subject_prefix={stream.lower()}."


async def test_a_relay_stuck_in_its_shutdown_raises(
    dsn: str, nats_server: NatsServer, stuck: Swallowing, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(Relay, "_loop", lambda relay: stuck.work())
    settings = RelaySettings(dsn=dsn, broker_url=broker_url(nats_server), shutdown_timeout=0.2)
    await stuck_then_released(asyncio.create_task(serve_relay(settings)), stuck)


async def test_a_consumer_stuck_in_its_shutdown_raises(
    dsn: str, nats_server: NatsServer, stuck: Swallowing, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ConsumerRunner, "_fetch_loop", lambda runner, consumer: stuck.work())
    ib = Inbox(consumer="billing")

    @ib.handler("orders.*")
    async def handle(tx: object, message: object) -> None:
        return None

    settings = ConsumerSettings(
        dsn=dsn, broker_url=broker_url(nats_server), shutdown_timeout=0.2, prune_interval=0
    )
    await stuck_then_released(asyncio.create_task(serve_consumer(ib, settings)), stuck)
