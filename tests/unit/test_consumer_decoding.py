"""Each consumer's decoding of its broker's native message, against hostile input.

The decoders are pure functions over what the client library hands over (a nats-py `Msg`, a
confluent-kafka `Message`, AMQP header tables, Redis stream fields, an SQS ReceiveMessage
entry, Pulsar properties): whatever they get, they return a well-formed message or a
`Malformed` that can be stored, and never raise.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import uuid
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from confluent_kafka import Message as KafkaRecord
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.msg import Msg

from outboxkit.brokers.kafka import consumer as kafka
from outboxkit.brokers.kafka.options import parse_url as kafka_options
from outboxkit.brokers.nats import consumer as nats
from outboxkit.brokers.pulsar import consumer as pulsar
from outboxkit.brokers.rabbitmq import consumer as rabbitmq
from outboxkit.brokers.redis import consumer as redis
from outboxkit.brokers.redis.options import PAYLOAD_FIELD
from outboxkit.brokers.sqs import consumer as sqs
from outboxkit.brokers.sqs.options import ATTRIBUTE
from outboxkit.outbox import envelope
from outboxkit.outbox.envelope import Malformed
from outboxkit.outbox.message import Message
from tests.support import hostile
from tests.support.malformed import (
    Bad,
    as_text,
    corpus,
    malformed_problem,
    message_problem,
    raw_envelope,
)

NATS_FILTERS = nats.Filters.of("p.", ["*"])
KAFKA_OPTIONS = kafka_options("kafka://127.0.0.1:9092?topic_prefix=p.")


def envelope_fields(message_id: uuid.UUID) -> dict[str, str]:
    return as_text(raw_envelope(message_id))


def _lenient_bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")


def _encodable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _either(message: Message | None, malformed: Malformed | None) -> Message | Malformed:
    found = message or malformed
    assert found is not None
    return found


def _nats(fields: Mapping[Any, Any], payload: bytes) -> Message | Malformed:
    msg = Msg(_client=None, subject="p.conf.raw", data=payload, headers=dict(fields))  # type: ignore[arg-type]
    delivery = nats.decode(msg, NATS_FILTERS)
    return _either(delivery.message, delivery.malformed)


def _kafka(fields: Mapping[Any, Any], payload: bytes) -> Message | Malformed:
    headers = [(k, v.encode() if isinstance(v, str) else v) for k, v in fields.items()]
    record = KafkaRecord(topic="p.conf.raw", partition=0, offset=7, value=payload, headers=headers)
    return _either(*kafka.decode(record, KAFKA_OPTIONS))


def _amqp(fields: Mapping[Any, Any], payload: bytes) -> Message | Malformed:
    return rabbitmq.decode_amqp(fields, payload, routing_key="conf.raw")


def _redis(fields: Mapping[Any, Any], payload: bytes) -> Message | Malformed:
    raw = {(k.encode() if isinstance(k, str) else k): v for k, v in fields.items()}
    raw = {k: (v.encode() if isinstance(v, str) else v) for k, v in raw.items()}
    return redis.decode_entry(raw | {PAYLOAD_FIELD.encode(): payload})


def _sqs(fields: Mapping[Any, Any], payload: bytes) -> Message | Malformed:
    attribute = json.dumps({"v": 1, "body": "text", "headers": as_text(fields)})
    raw = {
        "Body": payload.decode(),
        "MessageAttributes": {ATTRIBUTE: {"DataType": "String", "StringValue": attribute}},
    }
    return sqs.decode_sqs(raw)


def _pulsar(fields: Mapping[Any, Any], payload: bytes) -> Message | Malformed:
    return pulsar.decode_properties(dict(fields), payload, "conf.raw")


Decoder = Callable[[Mapping[Any, Any], bytes], Message | Malformed]
# name, decoder, whether its client carries only text
DECODERS: list[tuple[str, Decoder, bool]] = [
    ("NATS message decoding (outboxkit.brokers.nats.consumer.decode)", _nats, True),
    ("Kafka record decoding (outboxkit.brokers.kafka.consumer.decode)", _kafka, False),
    ("AMQP delivery decoding (outboxkit.brokers.rabbitmq.consumer.decode_amqp)", _amqp, False),
    ("Redis entry decoding (outboxkit.brokers.redis.consumer.decode_entry)", _redis, False),
    ("SQS message decoding (outboxkit.brokers.sqs.consumer.decode_sqs)", _sqs, False),
    (
        "Pulsar message decoding (outboxkit.brokers.pulsar.consumer.decode_properties)",
        _pulsar,
        True,
    ),
]
_ids = [name.split(" ")[0] for name, _, _ in DECODERS]


class MalformedDelivery(Exception):
    """A decoder's refusal, raised only to be counted as one by `hostile.attempt`."""


def decoded(parser: str, decode: Callable[[], Message | Malformed]) -> Message | Malformed:
    """`decode()`, counted: a `Malformed` as refused, an exception as a crash (re-raised)."""
    found: Message | Malformed | None = None
    with hostile.attempt(parser, refused=(MalformedDelivery,)):
        found = decode()
        if isinstance(found, Malformed):
            raise MalformedDelivery
    assert found is not None
    return found


def _check(found: Message | Malformed, payload: bytes) -> None:
    if isinstance(found, Message):
        assert message_problem(found) is None, message_problem(found)
    else:
        assert isinstance(found, Malformed), found
        assert malformed_problem(found) is None, malformed_problem(found)
        assert found.payload == payload


# Every decoder with every corpus entry its client can carry (NATS and Pulsar clients carry
# only UTF-8 text: the byte-level entries cannot reach their decoders at all).
_CARRIED = [
    pytest.param(parser, decode, bad, id=f"{parser.split(' ')[0]}-{bad.name}")
    for parser, decode, text_only in DECODERS
    for bad in corpus()
    if bad.text_only or not text_only
]


@pytest.mark.hostile
@pytest.mark.parametrize(("parser", "decode", "bad"), _CARRIED)
def test_the_corpus_is_malformed_for_every_decoder(parser: str, decode: Decoder, bad: Bad) -> None:
    found = decoded(parser, lambda: decode(bad.fields, bad.payload))
    assert isinstance(found, Malformed), f"{bad.name} accepted: {found}"
    assert malformed_problem(found) is None, malformed_problem(found)
    assert found.message_id == bad.message_id
    assert found.payload == bad.payload


@pytest.mark.parametrize(("parser", "decode", "text_only"), DECODERS, ids=_ids)
def test_a_well_formed_envelope_decodes(parser: str, decode: Decoder, text_only: bool) -> None:
    message_id = uuid.uuid4()
    found = decode(envelope_fields(message_id), b'{"ok": 1}')
    assert isinstance(found, Message), found
    assert (found.message_id, found.topic, found.key) == (message_id, "conf.raw", "k1")
    assert dict(found.headers) == {"x-user": "u"}


# -- fuzzing -------------------------------------------------------------------------------

_char = st.one_of(
    st.characters(),
    st.characters(categories=["Cs"]),
    st.sampled_from(["\x00", "\n", "\x7f", " ", "é"]),
)
_text = st.one_of(st.text(_char, max_size=30), st.builds(lambda n: "x" * n, st.integers(0, 9000)))
_utf8 = st.text(st.characters(codec="utf-8"), max_size=30)
_id_like = st.one_of(st.just(str(uuid.uuid4())), _text)
_names = st.one_of(st.sampled_from(sorted(envelope.RESERVED)), _text)


def _mutated(base: dict[str, Any], values: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    changes = st.dictionaries(st.one_of(_names, st.sampled_from(sorted(base))), values, max_size=6)
    return changes.map(lambda c: base | c)


def _base() -> dict[str, Any]:
    return dict(envelope_fields(uuid.UUID(int=7)))


@pytest.mark.hostile
@hostile.fuzz
@given(headers=_mutated(_base(), st.one_of(_utf8, _id_like)), data=st.binary(max_size=32))
def test_nats_decoding(headers: dict[str, str], data: bytes) -> None:
    clean = {k: v for k, v in headers.items() if _encodable(k) and _encodable(v)}
    found = decoded(DECODERS[0][0], lambda: _nats(clean, data))
    _check(found, data)


@pytest.mark.hostile
@hostile.fuzz
@given(
    headers=st.lists(
        st.tuples(
            st.one_of(st.sampled_from(sorted(envelope.RESERVED)), _utf8),
            st.one_of(st.none(), st.binary(max_size=40), _id_like.map(_lenient_bytes)),
        ),
        max_size=8,
    ),
    base=st.booleans(),
    data=st.one_of(st.none(), st.binary(max_size=32)),
    topic=_utf8,
)
def test_kafka_decoding(
    headers: list[tuple[str, bytes | None]], base: bool, data: bytes | None, topic: str
) -> None:
    pairs = [(k, v.encode()) for k, v in _base().items()] if base else []
    record = KafkaRecord(topic=topic, partition=1, offset=3, value=data, headers=pairs + headers)
    found = decoded(DECODERS[1][0], lambda: _either(*kafka.decode(record, KAFKA_OPTIONS)))
    _check(found, data or b"")


_amqp_value = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(),
        st.decimals(allow_nan=False),
        st.datetimes(),
        st.binary(max_size=40),
        _text,
        _id_like,
    ),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(_utf8, inner, max_size=3)),
    max_leaves=6,
)


@pytest.mark.hostile
@hostile.fuzz
@given(
    headers=_mutated(_base(), _amqp_value),
    byte_names=st.dictionaries(st.binary(max_size=8), _amqp_value, max_size=2),
    routing_key=st.one_of(st.none(), _text, st.binary(max_size=20)),
    message_id=st.one_of(st.none(), _id_like, st.binary(max_size=20)),
    content_type=st.one_of(st.none(), _text, st.binary(max_size=20)),
    redelivered=st.one_of(st.none(), st.booleans()),
)
def test_amqp_decoding(
    headers: dict[Any, Any],
    byte_names: dict[bytes, Any],
    routing_key: object,
    message_id: object,
    content_type: object,
    redelivered: bool | None,
) -> None:
    table: dict[Any, Any] = headers | byte_names
    found = decoded(
        DECODERS[2][0],
        lambda: rabbitmq.decode_amqp(
            table,
            b"body",
            routing_key=routing_key,
            message_id=message_id,
            content_type=content_type,
        ),
    )
    _check(found, b"body")
    attempt = rabbitmq.attempt_from(table, redelivered)
    assert 1 <= attempt <= rabbitmq.MAX_ATTEMPT


@pytest.mark.hostile
@hostile.fuzz
@given(
    fields=_mutated(_base(), st.one_of(st.binary(max_size=40), _id_like.map(_lenient_bytes))),
    payload=st.one_of(st.none(), st.binary(max_size=32)),
)
def test_redis_decoding(fields: dict[Any, bytes], payload: bytes | None) -> None:
    raw = {_lenient_bytes(k) if isinstance(k, str) else k: v for k, v in fields.items()}
    raw = {k: (_lenient_bytes(v) if isinstance(v, str) else v) for k, v in raw.items()}
    if payload is not None:
        raw[PAYLOAD_FIELD.encode()] = payload
    found = decoded(DECODERS[3][0], lambda: redis.decode_entry(raw))
    _check(found, payload or b"")


@pytest.mark.hostile
@hostile.fuzz
@given(
    headers=_mutated(_base(), st.one_of(_id_like, st.integers(), st.none())),
    body=_text,
    encoding=st.sampled_from(["text", "base64", "empty", "zip", None]),
    version=st.sampled_from([1, 2, "1"]),
    mangle=st.sampled_from(["none", "not json", "deep", "list", "missing"]),
)
def test_sqs_decoding(
    headers: dict[str, Any], body: str, encoding: str | None, version: object, mangle: str
) -> None:
    attribute: str | None = json.dumps({"v": version, "body": encoding, "headers": headers})
    if mangle == "not json":
        attribute = "{" + (attribute or "")
    elif mangle == "deep":
        attribute = '{"v": 1, "headers": ' + "[" * 50_000 + "]" * 50_000 + "}"
    elif mangle == "list":
        attribute = json.dumps([headers])
    elif mangle == "missing":
        attribute = None
    raw: dict[str, Any] = {"Body": body, "MessageAttributes": {}}
    if attribute is not None:
        raw["MessageAttributes"] = {ATTRIBUTE: {"DataType": "String", "StringValue": attribute}}
    found = decoded(DECODERS[4][0], lambda: sqs.decode_sqs(raw))
    if isinstance(found, Message):
        assert message_problem(found) is None, message_problem(found)
    else:
        assert malformed_problem(found) is None, malformed_problem(found)


@pytest.mark.hostile
@hostile.fuzz
@given(
    properties=_mutated(_base(), st.one_of(_utf8, _id_like)),
    data=st.one_of(st.none(), st.binary(max_size=32)),
    topic=st.one_of(st.none(), _text),
)
def test_pulsar_decoding(properties: dict[str, str], data: bytes | None, topic: str | None) -> None:
    found = decoded(DECODERS[5][0], lambda: pulsar.decode_properties(properties, data, topic))
    _check(found, data or b"")


def test_a_kafka_header_without_a_value_is_empty() -> None:
    pairs = [(k, v.encode()) for k, v in _base().items()] + [("x-none", None)]
    record = KafkaRecord(topic="p.conf.raw", partition=0, offset=1, value=None, headers=pairs)
    message, _ = kafka.decode(record, KAFKA_OPTIONS)
    assert message is not None and message.headers["x-none"] == "" and message.payload == b""


def test_amqp_values_of_other_types_are_their_text() -> None:
    table = _base() | {"x-n": 3, "x-d": decimal.Decimal("1.5"), "x-t": dt.date(2026, 1, 2)}
    found = rabbitmq.decode_amqp(table, b"", routing_key=b"conf.raw")
    assert isinstance(found, Message)
    assert dict(found.headers) == {"x-user": "u", "x-n": "3", "x-d": "1.5", "x-t": "2026-01-02"}


def test_a_hostile_attempt_header_stays_in_range() -> None:
    assert rabbitmq.attempt_from({"outboxkit-attempt": "9" * 5000}, True) == 2
    assert rabbitmq.attempt_from({"outboxkit-attempt": str(2**40)}, False) == rabbitmq.MAX_ATTEMPT
    assert rabbitmq.attempt_from({"x-delivery-count": 2**40}, False) == rabbitmq.MAX_ATTEMPT


def test_a_redis_entry_without_payload_is_identified() -> None:
    message_id = uuid.uuid4()
    fields = {k.encode(): v.encode() for k, v in envelope_fields(message_id).items()}
    found = redis.decode_entry(fields)
    assert isinstance(found, Malformed) and found.message_id == message_id
    assert PAYLOAD_FIELD in found.reason


def test_an_sqs_envelope_with_a_number_header_is_identified() -> None:
    message_id = uuid.uuid4()
    attribute = json.dumps(
        {"v": 1, "body": "text", "headers": envelope_fields(message_id) | {"x-n": 3}}
    )
    raw = {"Body": "b", "MessageAttributes": {ATTRIBUTE: {"StringValue": attribute}}}
    found = sqs.decode_sqs(raw)
    assert isinstance(found, Malformed) and found.message_id == message_id
    assert found.headers["x-n"] == "3" and found.payload == b"b"
