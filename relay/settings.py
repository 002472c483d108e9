"""Relay settings: a frozen value object with defaults and validation."""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, field

from outboxkit.outbox.errors import ConfigurationError
from outboxkit.outbox.identifiers import check_schema_name
from outboxkit.outbox.limits import text_problem
from outboxkit.relay.semantics import Semantics, TopicSemantics

# Bytes of UTF-8; the CHECK on outbox_relays.relay_id (migration 0004) holds the same limit.
MAX_RELAY_ID_BYTES = 255


def _default_relay_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True, kw_only=True)
class RelaySettings:
    """How one relay runs.

    - `dsn` / `schema`: the service database and the schema of the outbox tables.
    - `broker_url`: the broker; its scheme picks the publisher (`nats://`, `postgresql://`…).
    - `batch_size`: messages claimed per transaction.
    - `poll_interval`: seconds between polls when no NOTIFY arrives (NOTIFY is only a hint).
    - `max_attempts`: publish attempts before a message is dead-lettered.
    - `backoff_base` / `backoff_max`: exponential backoff with full jitter, in seconds.
    - `heartbeat_interval` / `relay_ttl`: how often a relay reports alive, and after how
      long without a heartbeat the others take its partitions.
    - `semantics`: delivery semantics per topic pattern (default at least once).
    - `http_port`: serve /healthz, /readyz and /metrics here (None: no server).
    """

    # Both may hold a password: repr() leaves them out (show them with outbox.redact).
    dsn: str = field(repr=False)
    broker_url: str = field(repr=False)
    schema: str = "outboxkit"
    batch_size: int = 500
    poll_interval: float = 1.0
    max_attempts: int = 10
    backoff_base: float = 0.5
    backoff_max: float = 300.0
    heartbeat_interval: float = 1.0
    relay_ttl: float = 5.0
    semantics: TopicSemantics = field(default_factory=TopicSemantics)
    http_host: str = "127.0.0.1"
    http_port: int | None = None
    shutdown_timeout: float = 30.0
    publish_timeout: float = 30.0
    relay_id: str = field(default_factory=_default_relay_id)
    # Test-only: SIGKILL ourselves at a named step of the cycle (see relay.faults).
    crash_at: str | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise `ConfigurationError` if a setting is out of range."""
        if not self.dsn:
            raise ConfigurationError("a database DSN is required (--dsn / OUTBOXKIT_DSN)")
        if not self.broker_url:
            raise ConfigurationError("a broker URL is required (--broker / OUTBOXKIT_BROKER)")
        check_schema_name(self.schema)
        if not 1 <= self.batch_size <= 100_000:
            raise ConfigurationError("batch_size must be between 1 and 100000")
        if self.poll_interval <= 0:
            raise ConfigurationError("poll_interval must be positive")
        if self.max_attempts < 1:
            raise ConfigurationError("max_attempts must be at least 1")
        if self.backoff_base <= 0 or self.backoff_max < self.backoff_base:
            raise ConfigurationError("need 0 < backoff_base <= backoff_max")
        if self.heartbeat_interval <= 0 or self.relay_ttl <= 2 * self.heartbeat_interval:
            raise ConfigurationError("relay_ttl must exceed twice the heartbeat interval")
        if not self.relay_id:
            raise ConfigurationError("relay_id must not be empty")
        if problem := text_problem(self.relay_id, MAX_RELAY_ID_BYTES):
            raise ConfigurationError(f"relay_id {self.relay_id[:64]!r} {problem}")

    def semantics_for(self, topic: str) -> Semantics:
        """The delivery semantics configured for `topic`."""
        return self.semantics.for_topic(topic)
