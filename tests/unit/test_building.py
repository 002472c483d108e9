"""Building and validating messages before anything touches the database."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import pytest

from outboxkit import outbox
from outboxkit.outbox.building import MAX_DELAY
from outboxkit.outbox.message import BYTES_CONTENT_TYPE, JSON_CONTENT_TYPE


def test_json_payload_is_compact_utf8() -> None:
    built = outbox.message("order.created", {"id": 42, "name": "Zoë", "tags": ["a", "b"]})
    assert built.payload == '{"id":42,"name":"Zoë","tags":["a","b"]}'.encode()
    assert built.content_type == JSON_CONTENT_TYPE
    assert built.json() == {"id": 42, "name": "Zoë", "tags": ["a", "b"]}
    assert built.message_id.version == 7


def test_fields_are_kept() -> None:
    built = outbox.message(
        "order.created", [1], key="order-1", headers={"x-tenant": "acme"}, delay=2.5
    )
    assert built.topic == "order.created"
    assert built.key == "order-1"
    assert built.headers == {"x-tenant": "acme"}
    assert built.delay == timedelta(seconds=2.5)
    assert built.created_at is None and built.available_at is None


@pytest.mark.parametrize("payload", [b"\x00\xff", bytearray(b"\x00\xff"), memoryview(b"\x00\xff")])
def test_bytes_payload_is_stored_as_is(payload: bytes | bytearray | memoryview) -> None:
    built = outbox.message("blob.stored", payload)
    assert built.payload == b"\x00\xff"
    assert type(built.payload) is bytes
    assert built.content_type == BYTES_CONTENT_TYPE


def test_explicit_content_type_wins() -> None:
    built = outbox.message("image.stored", b"\x89PNG", content_type="image/png")
    assert built.content_type == "image/png"


@pytest.mark.parametrize(
    "topic",
    ["", "   ", "order created", "order\tcreated", "order.created\n", "a\x00b", None, 42],
)
def test_invalid_topics(topic: Any) -> None:
    with pytest.raises(outbox.InvalidTopic):
        outbox.message(topic, {})


def test_topic_length_limit_is_configurable() -> None:
    assert outbox.message("t" * 255, {}).topic == "t" * 255
    with pytest.raises(outbox.InvalidTopic, match="256 bytes"):
        outbox.message("t" * 256, {})
    short = outbox.Outbox(max_topic_length=5)
    assert short.message("abcde", {}).topic == "abcde"
    with pytest.raises(outbox.InvalidTopic):
        short.message("abcdef", {})


@pytest.mark.parametrize(
    "payload",
    [{"when": object()}, {1, 2}, float("nan"), {"x": float("inf")}, [float("-inf")]],
)
def test_payload_not_serialisable(payload: Any) -> None:
    with pytest.raises(outbox.PayloadNotSerializable):
        outbox.message("t", payload)


def test_recursive_payload_is_not_serialisable() -> None:
    payload: list[Any] = []
    payload.append(payload)
    with pytest.raises(outbox.PayloadNotSerializable):
        outbox.message("t", payload)


def test_payload_size_limit_is_configurable() -> None:
    small = outbox.Outbox(max_payload_bytes=10)
    assert small.message("t", b"x" * 10).payload == b"x" * 10
    with pytest.raises(outbox.PayloadTooLarge, match="11 bytes"):
        small.message("t", b"x" * 11)
    # JSON is measured encoded: '"xxxxxxxxx"' is 11 bytes.
    with pytest.raises(outbox.PayloadTooLarge):
        small.message("t", "x" * 9)


def test_default_payload_limit_is_one_mebibyte() -> None:
    assert len(outbox.message("t", b"x" * 1024 * 1024).payload) == 1024 * 1024
    with pytest.raises(outbox.PayloadTooLarge):
        outbox.message("t", b"x" * (1024 * 1024 + 1))


@pytest.mark.parametrize(
    "headers",
    [
        {"n": 1},
        {1: "v"},
        {"n": None},
        {"": "v"},
        {"a\x00b": "v"},
        {"n": "v\x00"},
        [("n", "v")],
        "n=v",
    ],
)
def test_invalid_headers(headers: Any) -> None:
    with pytest.raises(outbox.InvalidHeaders):
        outbox.message("t", {}, headers=headers)


def test_headers_accept_any_mapping() -> None:
    class Frozen(Mapping[str, str]):
        def __getitem__(self, name: str) -> str:
            return {"a": "1"}[name]

        def __iter__(self) -> Any:
            return iter(["a"])

        def __len__(self) -> int:
            return 1

    assert outbox.message("t", {}, headers=Frozen()).headers == {"a": "1"}


@pytest.mark.parametrize(
    "delay",
    [
        -1,
        -0.001,
        timedelta(seconds=-1),
        float("nan"),
        float("inf"),
        1e300,
        MAX_DELAY + timedelta(seconds=1),
        True,
        "5",
        [1],
    ],
)
def test_invalid_delay(delay: Any) -> None:
    with pytest.raises(outbox.InvalidMessage, match="delay"):
        outbox.message("t", {}, delay=delay)


@pytest.mark.parametrize(
    ("delay", "expected"),
    [
        (0, timedelta(0)),
        (3, timedelta(seconds=3)),
        (timedelta(minutes=2), timedelta(minutes=2)),
        (MAX_DELAY, MAX_DELAY),
    ],
)
def test_valid_delay(delay: float | timedelta, expected: timedelta) -> None:
    assert outbox.message("t", {}, delay=delay).delay == expected


@pytest.mark.parametrize("key", [42, b"order-1", "k" * 1025])
def test_invalid_key(key: Any) -> None:
    with pytest.raises(outbox.InvalidMessage, match="key"):
        outbox.message("t", {}, key=key)


def test_every_error_is_an_outboxkit_error() -> None:
    for error in (
        outbox.InvalidTopic,
        outbox.InvalidHeaders,
        outbox.PayloadNotSerializable,
        outbox.PayloadTooLarge,
    ):
        assert issubclass(error, outbox.InvalidMessage)
        assert issubclass(error, outbox.OutboxkitError)
        assert not error.retriable


def test_custom_json_encoder() -> None:
    def dumps(value: Any) -> bytes:
        return json.dumps(value, sort_keys=True, indent=1).encode()

    built = outbox.Outbox(json_dumps=dumps).message("t", {"b": 1, "a": 2})
    assert built.payload == b'{\n "a": 2,\n "b": 1\n}'
