"""Outbox settings: a frozen value object with defaults and validation."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from outboxkit.outbox.errors import ConfigurationError
from outboxkit.outbox.identifiers import check_schema_name
from outboxkit.outbox.limits import MAX_TOPIC_BYTES

DEFAULT_SCHEMA = "outboxkit"
_CHANNEL_SAFE = re.compile(r"[^A-Za-z0-9_]")


def _compact_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


@dataclass(frozen=True, kw_only=True)
class OutboxSettings:
    """Where the outbox lives and what a message may be.

    - `schema`: the schema the migrations created the tables in.
    - `max_payload_bytes`: encoded payloads above this are refused (default 1 MiB).
    - `max_topic_length`: topics of more bytes of UTF-8 than this are refused (at most
      255, the limit the database CHECKs: a topic is indexed in the dead letters and the
      inbox).
    - `notify`: send a NOTIFY so relays wake at once (collapsed to one per transaction).
    - `allow_autocommit`: accept a psycopg connection in autocommit mode (opt-in: each write
      then commits alone, which defeats the pattern unless you know why you want it).
    - `json_dumps`: the JSON encoder, returning bytes.
    """

    schema: str = DEFAULT_SCHEMA
    max_payload_bytes: int = 1024 * 1024
    max_topic_length: int = MAX_TOPIC_BYTES
    notify: bool = True
    allow_autocommit: bool = False
    json_dumps: Callable[[Any], bytes] = field(default=_compact_json)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise `ConfigurationError` if a setting is out of range."""
        check_schema_name(self.schema)
        if self.max_payload_bytes <= 0:
            raise ConfigurationError("max_payload_bytes must be positive")
        if not 1 <= self.max_topic_length <= MAX_TOPIC_BYTES:
            raise ConfigurationError(
                f"max_topic_length (bytes of UTF-8) must be between 1 and {MAX_TOPIC_BYTES}"
            )

    @property
    def notify_channel(self) -> str:
        """The LISTEN/NOTIFY channel relays of this schema listen on."""
        return notify_channel(self.schema)


def notify_channel(schema: str) -> str:
    """Channel name for a schema: a plain string argument to pg_notify, never an identifier."""
    return ("outboxkit_" + _CHANNEL_SAFE.sub("_", schema))[:63]
