"""Consumer runner settings: a frozen value object with defaults and validation."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from outboxkit.outbox.errors import ConfigurationError
from outboxkit.outbox.identifiers import check_schema_name


class Mode(enum.StrEnum):
    """How the runner consumes."""

    IDEMPOTENT = "idempotent"  # dedup + handle in one transaction, then ack
    DURABLE = "durable"  # store and ack at once; inbox workers handle stored rows


@dataclass(frozen=True, kw_only=True)
class ConsumerSettings:
    """How one consumer runner runs.

    - `dsn` / `schema`: the consumer's database and the schema of the inbox tables.
    - `broker_url`: where messages come from (`nats://…`; `postgresql://…` when the relay
      writes straight into this database's inbox: then only the durable workers run).
    - `mode`: idempotent (default) or durable.
    - `concurrency`: deliveries handled at once (idempotent) / inbox workers (durable).
    - `batch_size`: messages fetched, stored or claimed at once.
    - `max_attempts`: handler attempts before a message is dead-lettered.
    - `backoff_base` / `backoff_max`: redelivery backoff in seconds.
    - `retention`: seconds a processed message's dedup key is kept: the dedup window.
      A redelivery older than this is handled again.
    - `keep_payload`: keep the payload of processed durable rows until they are pruned.
    - `prune_interval`: seconds between automatic prunes (0: never prune automatically).
    """

    # Both may hold a password: repr() leaves them out (show them with outbox.redact).
    dsn: str = field(repr=False)
    broker_url: str = field(repr=False)
    schema: str = "outboxkit"
    mode: Mode = Mode.IDEMPOTENT
    concurrency: int = 4
    batch_size: int = 100
    max_attempts: int = 5
    backoff_base: float = 0.5
    backoff_max: float = 60.0
    poll_interval: float = 0.2
    fetch_wait: float = 1.0
    retention: float = 7 * 86_400.0
    keep_payload: bool = False
    prune_interval: float = 600.0
    shutdown_timeout: float = 30.0
    # Test-only: SIGKILL ourselves at a named step (see outbox.faults).
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
        if not 1 <= self.concurrency <= 256:
            raise ConfigurationError("concurrency must be between 1 and 256")
        if not 1 <= self.batch_size <= 10_000:
            raise ConfigurationError("batch_size must be between 1 and 10000")
        if self.max_attempts < 1:
            raise ConfigurationError("max_attempts must be at least 1")
        if self.retention <= 0:
            raise ConfigurationError("retention must be positive")
