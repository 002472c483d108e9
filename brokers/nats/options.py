"""`nats://` broker URLs and subjects, shared by the NATS publisher and consumer.

Pure parsing: no import of the `nats` client here (the write path never imports a broker
client), so the publisher (`nats.publisher`) and the consumer (`nats.consumer`)
read the same options the same way, and create a missing stream the same way.

URL: `nats://[user:password@ | token@]host[:port][?option=value&...]`; the options are
in `TABLE` (documented in `nats.publisher` and `nats.consumer`, and in docs/brokers.md).
Each side checks every option and ignores those only the other side reads.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, TypeVar

from outboxkit.brokers.url import scrub as _scrub
from outboxkit.brokers.url_options import Option, OptionTable, Side
from outboxkit.brokers.url_values import BOOL, SECONDS, TEXT, choice, converter, integer, number
from outboxkit.outbox.redact import redact_dsn

DEFAULT_PORT = 4222
STORAGE_TYPES = ("file", "memory")
_BAD_SUBJECT_CHARS = re.compile(r"[\s\x00-\x1f]")


@dataclass(frozen=True, kw_only=True)
class NatsOptions:
    """The connection and stream settings parsed from a `nats://` URL."""

    server: str
    display: str
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    stream: str = "OUTBOXKIT"
    subject_prefix: str = "outboxkit."
    subjects: tuple[str, ...] = ()
    create_stream: bool = True
    duplicate_window: float = 120.0
    max_age: float = 0.0
    replicas: int = 1
    storage: str = "file"  # nats-py's StorageType is a str enum with these values
    timeout: float = 5.0
    connect_timeout: int = 5
    reconnect_wait: int = 2


@dataclass(frozen=True, kw_only=True)
class NatsConsumerOptions(NatsOptions):
    """A `nats://` URL's settings, with the consumer's own."""

    ack_wait: float = 30.0
    max_deliver: int = -1


OptionsT = TypeVar("OptionsT", bound=NatsOptions)


@converter("subjects, comma-separated")
def _subjects(raw: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in raw.split(",") if s.strip())


@converter("-1 or a whole number >= 1")
def _max_deliver(raw: str) -> int:
    value: int = integer()(raw)
    if value != -1 and value < 1:
        raise ValueError(f"expected -1 (no limit) or at least 1, got {raw!r}")
    return value


_DURATION = number(0)  # seconds, 0 allowed
TABLE = OptionTable(
    label="NATS",
    form="nats://host[:port]",
    schemes={"nats": DEFAULT_PORT},
    kind=NatsConsumerOptions,
    options=(
        Option("stream", TEXT, "the JetStream stream the messages go to"),
        Option("subject_prefix", TEXT, "a message's subject is `subject_prefix + topic`"),
        Option("subjects", _subjects, "the subjects of a stream we create (`<subject_prefix>>`)"),
        Option("create_stream", BOOL, "create the stream if missing (never altered)"),
        Option("duplicate_window", _DURATION, "seconds JetStream drops a republished message"),
        Option("max_age", _DURATION, "seconds a stream we create keeps messages (0: forever)"),
        Option("replicas", integer(0), "replicas of a stream we create"),
        Option("storage", choice(*STORAGE_TYPES), "storage of a stream we create"),
        Option("timeout", _DURATION, "seconds to wait for a PubAck or a stream call"),
        Option("connect_timeout", integer(0), "seconds to open a connection"),
        Option("reconnect_wait", integer(0), "seconds between reconnection attempts"),
        Option(
            "ack_wait",
            SECONDS,
            "seconds JetStream waits for an ack before it redelivers",
            side="consumer",
        ),
        Option(
            "max_deliver", _max_deliver, "deliveries before JetStream gives up", side="consumer"
        ),
    ),
)


def parse_url(url: str, kind: type[OptionsT], side: Side) -> OptionsT:
    """`kind` from a broker URL as `side` reads it; `ConfigurationError` for anything
    malformed or unknown."""
    parts = TABLE.split(url)
    parts.refuse_path()
    fields = TABLE.read_url(parts, side)
    user, password = parts.user or None, parts.password
    options = kind(
        server=f"nats://{parts.hosts[0]}",
        display=parts.shown,
        user=user if password is not None else None,
        password=password,
        token=user if password is None else None,
        **fields,
    )
    if not options.subjects and not options.subject_prefix and options.create_stream:
        raise parts.error(
            "an empty subject_prefix needs subjects=... for the stream "
            "(JetStream refuses a catch-all '>')"
        )
    return options


def display(url: str) -> str:
    """The URL for messages: no password, and no bare token either (`redact_dsn`)."""
    return redact_dsn(url)


def scrub(error: object, options: NatsOptions) -> str:
    """`error` as text with the URL's password and token masked."""
    return _scrub(error, (options.password, options.token))


def stream_fields(options: NatsOptions) -> dict[str, Any]:
    """Keyword arguments of nats-py's `StreamConfig` for a stream we create.

    The publisher and the consumer both create a missing stream with exactly these.
    """
    return {
        "name": options.stream,
        "subjects": list(options.subjects or (options.subject_prefix + ">",)),
        "duplicate_window": options.duplicate_window,
        "max_age": options.max_age,
        "num_replicas": options.replicas,
        "storage": options.storage,
    }


def subject_matches(pattern: str, subject: str) -> bool:
    """Whether `subject` falls under the subject `pattern` (with `*` and `>`)."""
    wanted, tokens = pattern.split("."), subject.split(".")
    for index, token in enumerate(wanted):
        if token == ">":
            return len(tokens) > index
        if index >= len(tokens) or token not in ("*", tokens[index]):
            return False
    return len(wanted) == len(tokens)


def valid_token(token: str) -> bool:
    """Whether `token` may appear, literally, between the dots of a subject."""
    return bool(token) and token not in ("*", ">") and _BAD_SUBJECT_CHARS.search(token) is None


def valid_subject(subject: str) -> bool:
    """Whether `subject` is a literal subject one may publish to (no wildcards)."""
    return all(valid_token(token) for token in subject.split("."))
