"""`nats://` broker URLs and subjects, shared by the NATS publisher and consumer.

Pure parsing: no import of the `nats` client here (the write path never imports a broker
client), so the publisher (`nats.publisher`) and the consumer (`nats.consumer`)
read the same options the same way, and create a missing stream the same way.

URL: `nats://[user:password@ | token@]host[:port][?option=value&...]`; the options every
side accepts are in `COMMON_OPTIONS` (documented in `nats.publisher`). A side adds its
own options by subclassing `NatsOptions` and passing their converters to `parse_url`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar
from urllib.parse import parse_qsl, unquote, urlsplit

from outboxkit.brokers.url import NETLOC_PROBLEM, STRAY_AT, finite_float, shown_name, stray_at
from outboxkit.outbox.errors import ConfigurationError
from outboxkit.outbox.redact import redact_dsn

DEFAULT_PORT = 4222
STORAGE_TYPES = ("file", "memory")
_BAD_SUBJECT_CHARS = re.compile(r"[\s\x00-\x1f]")
_TRUE, _FALSE = {"1", "true", "yes", "on"}, {"0", "false", "no", "off"}

Converter = Callable[[str], object]


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


OptionsT = TypeVar("OptionsT", bound=NatsOptions)


# Options of the consumer that the publisher accepts and ignores, so that one URL
# (OUTBOXKIT_BROKER) can serve both the relay and the consumer.
CONSUMER_ONLY = frozenset({"ack_wait", "max_deliver"})


def parse_url(
    url: str,
    kind: type[OptionsT],
    extra: Mapping[str, Converter] | None = None,
    ignored: frozenset[str] = frozenset(),
) -> OptionsT:
    """`kind` from a broker URL; `ConfigurationError` for anything malformed or unknown.

    `extra` converts the options only `kind` has (besides `COMMON_OPTIONS`); names in
    `ignored` are accepted and dropped.
    """
    converters = {**COMMON_OPTIONS, **(extra or {})}
    shown = display(url)
    if stray_at(url):
        raise ConfigurationError(f"invalid NATS URL {shown}: {STRAY_AT}")
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port or DEFAULT_PORT
    except ValueError:
        raise ConfigurationError(f"invalid NATS URL {shown}: {NETLOC_PROBLEM}") from None
    if parts.scheme != "nats" or not host:
        raise ConfigurationError(f"expected nats://host[:port], got {shown}")
    user = unquote(parts.username) if parts.username else None
    password = unquote(parts.password) if parts.password is not None else None
    fields: dict[str, Any] = {}
    try:
        for name, raw in parse_qsl(parts.query, keep_blank_values=True):
            if name in ignored:
                continue
            if name not in converters:
                _unknown(name, converters)
            fields[name] = converters[name](raw)
        options = kind(
            server=f"nats://{host}:{port}" if ":" not in host else f"nats://[{host}]:{port}",
            display=shown,
            user=user if password is not None else None,
            password=password,
            token=user if password is None else None,
            **fields,
        )
    except ValueError as exc:
        raise ConfigurationError(f"invalid option in {shown}: {exc}") from None
    if not options.subjects and not options.subject_prefix and options.create_stream:
        raise ConfigurationError(
            f"{shown}: an empty subject_prefix needs subjects=... for the stream "
            "(JetStream refuses a catch-all '>')"
        )
    return options


def _unknown(name: str, converters: Mapping[str, Converter]) -> NoReturn:
    raise ValueError(f"unknown option {shown_name(name)}; known: {', '.join(sorted(converters))}")


def to_bool(raw: str) -> bool:
    """`true`/`false` (also 1/0, yes/no, on/off)."""
    if raw.lower() in _TRUE | _FALSE:
        return raw.lower() in _TRUE
    raise ValueError(f"expected true or false, got {raw!r}")


def non_negative(kind: type[int] | Callable[[str], float]) -> Converter:
    """A converter to `kind` (`int`, `finite_float`) refusing negative numbers."""

    def convert(raw: str) -> object:
        value = kind(raw)
        if value < 0:
            raise ValueError(f"expected a number >= 0, got {raw!r}")
        return value

    return convert


def _storage(raw: str) -> str:
    if raw not in STORAGE_TYPES:
        raise ValueError(f"storage must be one of {', '.join(STORAGE_TYPES)}, got {raw!r}")
    return raw


COMMON_OPTIONS: dict[str, Converter] = {
    "stream": str,
    "subject_prefix": str,
    "subjects": lambda raw: tuple(s.strip() for s in raw.split(",") if s.strip()),
    "create_stream": to_bool,
    "duplicate_window": non_negative(finite_float),
    "max_age": non_negative(finite_float),
    "replicas": non_negative(int),
    "storage": _storage,
    "timeout": non_negative(finite_float),
    "connect_timeout": non_negative(int),
    "reconnect_wait": non_negative(int),
}


def display(url: str) -> str:
    """The URL for messages: no password, and no bare token either (`redact_dsn`)."""
    return redact_dsn(url)


def scrub(error: object, options: NatsOptions) -> str:
    """`error` as text with the URL's password and token masked."""
    text = str(error) or type(error).__name__
    for secret in (options.password, options.token):
        if secret:
            text = text.replace(secret, "***")
    return text


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
