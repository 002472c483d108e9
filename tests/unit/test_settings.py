"""`OutboxSettings`: frozen, keyword-only, validated."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from outboxkit import outbox
from outboxkit.outbox.settings import OutboxSettings


def test_defaults() -> None:
    settings = OutboxSettings()
    assert settings.schema == "outboxkit"
    assert settings.max_payload_bytes == 1024 * 1024
    assert settings.max_topic_length == 255
    assert settings.notify is True
    assert settings.allow_autocommit is False
    assert settings.notify_channel == "outboxkit_outboxkit"


@pytest.mark.parametrize(
    "overrides",
    [
        {"schema": ""},
        {"schema": "s" * 64},
        {"schema": "é" * 32},  # 64 bytes in UTF-8
        {"schema": "a\x00b"},
        {"max_payload_bytes": 0},
        {"max_payload_bytes": -1},
        {"max_topic_length": 0},
        {"max_topic_length": 10_001},
    ],
)
def test_invalid_settings(overrides: dict[str, Any]) -> None:
    with pytest.raises(outbox.ConfigurationError):
        OutboxSettings(**overrides)
    with pytest.raises(outbox.ConfigurationError):
        outbox.Outbox(**overrides)


def test_longest_schema_name_is_accepted() -> None:
    assert OutboxSettings(schema="s" * 63).schema == "s" * 63


def test_frozen_and_keyword_only() -> None:
    settings = OutboxSettings()
    with pytest.raises(dataclasses.FrozenInstanceError):
        settings.schema = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        OutboxSettings("other")  # type: ignore[call-arg]


def test_outbox_overrides_build_on_given_settings() -> None:
    base = OutboxSettings(schema="billing", notify=False)
    box = outbox.Outbox(base, max_payload_bytes=10)
    assert box.settings == dataclasses.replace(base, max_payload_bytes=10)
    assert base.max_payload_bytes == 1024 * 1024


@pytest.mark.parametrize(
    ("schema", "channel"),
    [
        ("billing", "outboxkit_billing"),
        ('we"ird; DROP TABLE x --', "outboxkit_we_ird__DROP_TABLE_x___"),
        ("s" * 63, "outboxkit_" + "s" * 53),
    ],
)
def test_notify_channel_is_a_safe_name(schema: str, channel: str) -> None:
    assert OutboxSettings(schema=schema).notify_channel == channel
