"""Every broker URL parser, by the name `hostile.attempt` counts it under, with the pure
calls an accepted options object must survive (what a publisher or consumer does next)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from outboxkit.brokers.http import options as http_url
from outboxkit.brokers.kafka import options as kafka_url
from outboxkit.brokers.nats import options as nats_url
from outboxkit.brokers.pulsar import options as pulsar_url
from outboxkit.brokers.rabbitmq import options as rabbitmq_url
from outboxkit.brokers.redis import options as redis_url
from outboxkit.brokers.sqs import options as sqs_url


@dataclass(frozen=True)
class UrlParser:
    name: str  # as counted in RELIABILITY.md
    schemes: tuple[str, ...]
    sides: tuple[Callable[[str], Any], ...]  # the publisher's and the consumer's reading
    options: tuple[str, ...]  # the option names it defines
    use: Callable[[Any], object]  # what a client does with accepted options


def _nats_use(o: nats_url.NatsOptions) -> object:
    return nats_url.stream_fields(o), nats_url.scrub("x", o)


def _amqp_use(o: rabbitmq_url.AmqpOptions) -> object:
    return o.scrub("x"), rabbitmq_url.describe(OSError("x"), o)


def _redis_use(o: redis_url.RedisOptions) -> object:
    return o.client_kwargs(), o.stream_for("t"), redis_url.scrub("x", o)


def _kafka_use(o: kafka_url.KafkaOptions) -> object:
    return o.client_config(), o.kafka_topic("t"), o.scrub("x")


def _sqs_use(o: sqs_url.SqsOptions) -> object:
    return o.client_kwargs(), o.queue_attributes(), o.queue_for("t"), o.scrub("x")


def _pulsar_use(o: pulsar_url.PulsarOptions) -> object:
    return o.client_settings(), o.operation_timeout, o.pulsar_topic("t"), o.scrub("x")


def _http_use(o: http_url.HttpOptions) -> object:
    return o.url_for("t"), o.listen_address, o.scrub("x")


PARSERS: tuple[UrlParser, ...] = (
    UrlParser(
        "NATS URL options",
        ("nats",),
        (
            lambda url: nats_url.parse_url(url, nats_url.NatsOptions, "publisher"),
            lambda url: nats_url.parse_url(url, nats_url.NatsConsumerOptions, "consumer"),
        ),
        nats_url.TABLE.names(),
        _nats_use,
    ),
    UrlParser(
        "RabbitMQ URL options",
        ("amqp", "amqps"),
        (rabbitmq_url.parse_url,),
        rabbitmq_url.TABLE.names(),
        _amqp_use,
    ),
    UrlParser(
        "Redis URL options",
        ("redis", "rediss"),
        (redis_url.parse_url,),
        redis_url.TABLE.names(),
        _redis_use,
    ),
    UrlParser(
        "Kafka URL options",
        ("kafka",),
        (
            lambda url: kafka_url.parse_url(url, "publisher"),
            lambda url: kafka_url.parse_url(url, "consumer"),
        ),
        kafka_url.TABLE.names(),
        _kafka_use,
    ),
    UrlParser(
        "SQS URL options",
        ("sqs",),
        (sqs_url.parse_url,),
        sqs_url.TABLE.names(),
        _sqs_use,
    ),
    UrlParser(
        "Pulsar URL options",
        ("pulsar", "pulsar+ssl"),
        (
            lambda url: pulsar_url.parse_url(url, "publisher"),
            lambda url: pulsar_url.parse_url(url, "consumer"),
        ),
        pulsar_url.TABLE.names(),
        _pulsar_use,
    ),
    UrlParser(
        "HTTP URL options",
        ("http", "https"),
        (http_url.parse_url,),
        http_url.TABLE.names(),
        _http_use,
    ),
)


def parser_for(url: str) -> UrlParser:
    """The parser of `url`'s scheme."""
    scheme = url.partition("://")[0].lower()
    return next(p for p in PARSERS if scheme in p.schemes)
