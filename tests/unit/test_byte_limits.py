"""Identifying text is limited in UTF-8 bytes where it is written or configured; outside
text (an endpoint's answer, a handler's exception) is cleaned once, where it enters."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from outboxkit import outbox
from outboxkit.brokers.postgres.publisher import create as postgres_publisher
from outboxkit.brokers.publishing import Outcome
from outboxkit.inbox import Inbox
from outboxkit.inbox.failures import error_text
from outboxkit.outbox.errors import ConfigurationError, InvalidHeaders, InvalidMessage, InvalidTopic
from outboxkit.outbox.limits import (
    MAX_ERROR_BYTES,
    MAX_HEADER_NAME_BYTES,
    MAX_HEADER_VALUE_BYTES,
    MAX_HEADERS,
    MAX_HEADERS_BYTES,
    MAX_KEY_BYTES,
    MAX_TOPIC_BYTES,
    text_problem,
    utf8_length,
)
from outboxkit.outbox.settings import OutboxSettings
from outboxkit.relay import RelaySettings
from tests.support import hostile

EMOJI = "\U0001f600"  # four bytes of UTF-8


# -- write side: keys, topics, headers -----------------------------------------------------


def test_a_key_of_1024_four_byte_characters_is_refused_at_write() -> None:
    """The reproduction: 1,024 characters passed the old character limit, and 4 KiB is over
    PostgreSQL's btree entry limit, so the key block insert failed after every publish."""
    with pytest.raises(InvalidMessage, match="4096 bytes of UTF-8; the maximum is 1024"):
        outbox.message("t", {}, key=EMOJI * 1024)
    assert outbox.message("t", {}, key=EMOJI * 256).key == EMOJI * 256  # 1,024 bytes
    with pytest.raises(InvalidMessage):
        outbox.message("t", {}, key=EMOJI * 256 + "a")


@pytest.mark.parametrize("key", ["a\x00b", "line\nbreak", "tab\there", "\x7f", "lone\udcff"])
def test_keys_refuse_control_characters_and_lone_surrogates(key: str) -> None:
    with pytest.raises(InvalidMessage, match="key"):
        outbox.message("t", {}, key=key)


def test_the_topic_limit_counts_bytes_and_stays_configurable() -> None:
    assert outbox.message("é" * 127, {}).topic == "é" * 127  # 254 bytes
    with pytest.raises(InvalidTopic, match="256 bytes"):
        outbox.message("é" * 128, {})
    short = outbox.Outbox(max_topic_length=4)
    assert short.message("éé", {}).topic == "éé"
    with pytest.raises(InvalidTopic, match="5 bytes"):
        short.message("ééa", {})


@pytest.mark.parametrize("topic", ["lone\udcff", "a\x85b", "a\u2028b"])
def test_topics_refuse_surrogates_and_odd_characters(topic: str) -> None:
    with pytest.raises(InvalidTopic):
        outbox.message(topic, {})


def test_max_topic_length_cannot_exceed_what_the_database_checks() -> None:
    assert OutboxSettings(max_topic_length=MAX_TOPIC_BYTES).max_topic_length == 255
    with pytest.raises(ConfigurationError, match="bytes"):
        OutboxSettings(max_topic_length=MAX_TOPIC_BYTES + 1)


@pytest.mark.parametrize(
    ("headers", "match"),
    [
        ({"é" * 128: "v"}, "256 bytes"),
        ({"n": EMOJI * (MAX_HEADER_VALUE_BYTES // 4 + 1)}, "value is"),
        ({"n": "two\nlines"}, "control character"),
        ({"n\udcff": "v"}, "surrogate"),
        ({f"h{i}": "v" for i in range(MAX_HEADERS + 1)}, "65 headers"),
        ({f"h{i}": "v" * 8000 for i in range(9)}, "bytes of UTF-8; the maximum is 65536"),
    ],
)
def test_headers_are_limited_in_bytes_and_count(headers: dict[str, str], match: str) -> None:
    with pytest.raises(InvalidHeaders, match=match):
        outbox.message("t", {}, headers=headers)


def test_an_error_never_quotes_a_huge_value_whole() -> None:
    with pytest.raises(InvalidMessage) as refused:
        outbox.message("t", {}, key="k" * 1_000_000)
    assert len(str(refused.value)) < 300


@pytest.mark.hostile
@hostile.fuzz
@given(
    topic=st.text(max_size=300),
    key=st.none() | st.text(max_size=1100),
    headers=st.dictionaries(st.text(max_size=300), st.text(max_size=50), max_size=4),
)
def test_whatever_is_written_fits_the_database(
    topic: str, key: str | None, headers: dict[str, str]
) -> None:
    refused = (InvalidMessage,)
    with hostile.attempt("message building (outbox.building)", refused=refused) as outcome:
        built = outbox.message(topic, {}, key=key, headers=headers)
    if outcome.accepted:
        assert text_problem(built.topic, MAX_TOPIC_BYTES) is None
        assert built.key is None or text_problem(built.key, MAX_KEY_BYTES) is None
        for name, value in built.headers.items():
            assert text_problem(name, MAX_HEADER_NAME_BYTES) is None
            assert text_problem(value, MAX_HEADER_VALUE_BYTES) is None
        assert sum(utf8_length(n) + utf8_length(v) for n, v in built.headers.items()) <= (
            MAX_HEADERS_BYTES
        )


# -- configured names ----------------------------------------------------------------------


def test_consumer_names_are_limited_in_bytes() -> None:
    assert Inbox(consumer="é" * 127).consumer == "é" * 127
    for bad in ["é" * 128, "", "a\x00b", "lone\udcff"]:
        with pytest.raises(ConfigurationError, match="consumer"):
            Inbox(consumer=bad)
    with pytest.raises(ConfigurationError, match="256 bytes"):
        postgres_publisher("postgresql://h/db?consumer=" + "%C3%A9" * 128)


def test_relay_ids_are_limited_in_bytes() -> None:
    base: dict[str, Any] = {"dsn": "postgresql://h/db", "broker_url": "test://x"}
    assert RelaySettings(**base, relay_id="é" * 127).relay_id == "é" * 127
    for bad in ["é" * 128, "", "a\nb"]:
        with pytest.raises(ConfigurationError, match="relay_id"):
            RelaySettings(**base, relay_id=bad)


# -- outside text: cleaned where it enters ---------------------------------------------------


@pytest.mark.parametrize("make", [Outcome.retry, Outcome.reject, Outcome.unreachable])
def test_every_outcome_error_is_cleaned_on_construction(make: Any) -> None:
    outcome = make("400 bad\x00request \udcff " + "x" * 1_000_000)
    assert outcome.error.startswith("400 bad\\x00request \\udcff xxx")
    assert utf8_length(outcome.error) <= MAX_ERROR_BYTES
    assert text_problem(outcome.error, MAX_ERROR_BYTES) is None
    # Built directly, not through a constructor: cleaned all the same.
    assert Outcome(acked=False, error="a\x00").error == "a\\x00"
    assert Outcome.ok().error is None


def test_a_handler_exception_is_stored_as_one_clean_bounded_line() -> None:
    text = error_text(ValueError("bad\x00 \udcff\n" + "é" * 1_000_000))
    assert text.startswith("ValueError: bad\\x00 \\udcff\\x0aééé")
    assert utf8_length(text) <= MAX_ERROR_BYTES and text_problem(text, MAX_ERROR_BYTES) is None

    class Hostile(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert error_text(Hostile()) == "Hostile: <unprintable Hostile: RuntimeError>"
