"""The message: the same envelope from the outbox table to the consumer's inbox."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

JSON_CONTENT_TYPE = "application/json"
BYTES_CONTENT_TYPE = "application/octet-stream"


@dataclass(frozen=True, slots=True)
class Message:
    """An event travelling from a producer's outbox to a consumer's inbox.

    `payload` is the encoded body (JSON as UTF-8 unless `content_type` says otherwise);
    `json()` decodes it. `created_at`/`available_at` are the database's clock, set on write.
    """

    message_id: UUID
    topic: str
    payload: bytes
    key: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    content_type: str = JSON_CONTENT_TYPE
    created_at: datetime | None = None
    available_at: datetime | None = None
    # Requested delay before the message may be published; used only when writing.
    delay: timedelta | None = None

    def json(self) -> Any:
        """The payload decoded from JSON."""
        return json.loads(self.payload)
