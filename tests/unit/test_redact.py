"""Credentials never reach logs, error messages or reprs (outbox/redact.py and its users).

The table of every DSN and URL form is tests/support/secrets.py; the relay's /readyz and
logs are looked at in tests/integration/test_secrets.py.
"""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import unquote

import pytest

from outboxkit import outbox
from outboxkit.brokers import Subscription, create_consumer, create_publisher
from outboxkit.brokers.postgres import publisher as postgres_publisher
from outboxkit.cli import main
from outboxkit.inbox.settings import ConsumerSettings
from outboxkit.outbox import db
from outboxkit.outbox.redact import (
    HARMLESS_OPTIONS,
    UNPARSEABLE,
    redact_dsn,
    redact_message,
    redact_text,
)
from outboxkit.relay.settings import RelaySettings
from tests.support.secrets import SECRET, broker_urls, postgres_dsns
from tests.support.url_parsers import PARSERS, parser_for

BROKER_URLS = broker_urls()
DSNS = postgres_dsns()
UNREACHABLE = postgres_dsns("127.0.0.1", 1)


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        (
            "postgresql://app:s3cret@db.internal:5432/orders",
            "postgresql://app:***@db.internal:5432/orders",
        ),
        ("postgresql://app:p@ss:w0rd@db/orders", "postgresql://app:***@db/orders"),
        ("postgresql://app:p#ss?x@db/orders", "postgresql://app:***@db/orders"),
        ("amqp://guest:pa?ss#wo/rd@rabbit/vhost", "amqp://guest:***@rabbit/vhost"),
        ("amqp://guest:s3cret@rabbit/vhost", "amqp://guest:***@rabbit/vhost"),
        ("postgresql://app@db/orders", "postgresql://app@db/orders"),
        ("nats://t0ken@nats:4222", "nats://***@nats:4222"),
        ("pulsar://:t0ken@h", "pulsar://:***@h"),
        ("postgresql://db/orders?sslmode=require", "postgresql://db/orders?sslmode=require"),
        (
            "postgresql://db/orders?user=app&password=s3cret&sslmode=require",
            "postgresql://db/orders?user=app&password=***&sslmode=require",
        ),
        (
            "https://fn.example/api/in?code=s3cret&team=a&outboxkit_timeout=3",
            "https://fn.example/api/in?code=***&team=***&outboxkit_timeout=3",
        ),
        ("https://blob.example/x?sig=s3cret#frag", "https://blob.example/x?sig=***#***"),
        ("https://h/x?bare-t0ken&%00=x", "https://h/x?***&***=***"),
        # an `@` in the query: what comes before it may be a password, so it goes too
        ("https://h/x?email=a@b.example&token=t", "https://***@***"),
        (
            "host=db user=app password=s3cret dbname=orders",
            "user=app password=*** dbname=orders host=db",
        ),
        ("host=db password='s3 cr\\'et://x' dbname=x", "password=*** dbname=x host=db"),
        ("host=db dbname=orders sslmode=require", "dbname=orders host=db sslmode=require"),
        ("host=db PASSWORD = s3cret", UNPARSEABLE),
        ("host=db password=s3cret bogus", UNPARSEABLE),
        ("postgresql://app:s3cret@[::1/orders", UNPARSEABLE),
        ("nats://h\n?stream=x", "nats://h\\x0a?stream=x"),
    ],
)
def test_what_is_shown(dsn: str, expected: str) -> None:
    assert redact_dsn(dsn) == expected


@pytest.mark.parametrize("dsn", [*DSNS.values(), *BROKER_URLS.values()], ids=[*DSNS, *BROKER_URLS])
def test_no_form_of_dsn_or_url_shows_its_secret(dsn: str) -> None:
    shown = redact_dsn(dsn)
    assert SECRET not in shown
    assert shown.isprintable()


@pytest.mark.parametrize("url", BROKER_URLS.values(), ids=BROKER_URLS)
def test_broker_url_errors_and_reprs_never_show_the_secret(url: str) -> None:
    parser = parser_for(url)
    for side in parser.sides:
        try:
            options = side(url)
        except outbox.ConfigurationError as exc:
            assert SECRET not in str(exc)
            continue
        parser.use(options)
        assert SECRET not in repr(options)
        assert SECRET not in options.display


@pytest.mark.parametrize("name", ["nats", "amqp", "redis", "kafka", "sqs", "pulsar", "http"])
def test_well_formed_secrets_are_still_read(name: str) -> None:
    # Refusing what could leak must not refuse a password that is percent-encoded.
    url = BROKER_URLS[f"{name}-encoded"]
    for side in parser_for(url).sides:
        options = side(url)
        read = getattr(options, "password", None) or getattr(options, "secret_key", None)
        assert read == unquote(url.partition("://")[2].rpartition("@")[0].partition(":")[2])


def test_settings_reprs_leave_the_dsn_and_broker_url_out() -> None:
    dsn, broker = DSNS["url-hash"], BROKER_URLS["http-query-code"]
    for settings in (
        RelaySettings(dsn=dsn, broker_url=broker),
        ConsumerSettings(dsn=dsn, broker_url=broker),
    ):
        assert SECRET not in repr(settings)
        assert settings.dsn == dsn  # still there for whoever connects


def test_postgres_publisher_repr() -> None:
    url = f"postgresql://app:pa%23{SECRET}@127.0.0.1:1/x?consumer=c&sslpassword={SECRET}"
    publisher = postgres_publisher.create(url)
    assert SECRET not in repr(publisher)


def test_every_parser_option_is_shown_in_urls() -> None:
    # A new option must be added to HARMLESS_OPTIONS (or be a secret, and masked).
    defined = {name for parser in PARSERS for name in parser.options}
    defined |= postgres_publisher._OWN_PARAMS
    assert defined - HARMLESS_OPTIONS == set()


@pytest.mark.parametrize("dsn", UNREACHABLE.values(), ids=UNREACHABLE)
def test_connection_errors_never_show_the_secret(dsn: str) -> None:
    # libpq and psycopg quote pieces of the DSN (`host 'ss'`, `"pa%S3..."`); a password
    # with an unencoded `@` or `/` is misread, and the pieces are pieces of it.
    async def async_connect() -> Any:
        return await db.aconnect(dsn)

    for connect in (lambda: db.connect(dsn), lambda: asyncio.run(async_connect())):
        with pytest.raises((outbox.ConfigurationError, outbox.DatabaseUnavailable)) as caught:
            connect()
        assert SECRET not in str(caught.value)
        assert "\n" not in str(caught.value)


@pytest.mark.parametrize("form", ["url-at", "url-slash", "url-hash", "keywords-escaped"])
def test_outboxkit_status_never_shows_the_secret(
    form: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--dsn", UNREACHABLE[form]]) == 2
    out, err = capsys.readouterr()
    assert "cannot connect" in err
    assert SECRET not in out + err


def test_library_messages_keep_what_the_redacted_dsn_shows() -> None:
    dsn = "postgresql://app:pa@ss@127.0.0.1:1/orders"
    assert redact_message("failed to resolve host 'ss'", dsn) == "failed to resolve host '***'"
    assert (
        redact_message(
            'connection to server at "127.0.0.1", port 1 failed:\n\tIs "port" right?', dsn
        )
        == 'connection to server at "127.0.0.1", port 1 failed: Is "port" right?'
    )


def test_free_text_is_redacted() -> None:
    text = f"down: cannot reach http://u:{SECRET}@h/in?code={SECRET}: refused; password={SECRET}"
    assert (
        redact_text(text) == "down: cannot reach http://u:***@h/in?code=***: refused; password=***"
    )


@pytest.mark.parametrize("url", [f"nats://u:{SECRET}@[::1", f"amqp://{SECRET}@[h/vh"])
def test_choosing_a_broker_by_scheme_refuses_what_urlsplit_cannot_read(url: str) -> None:
    for create in (create_publisher, lambda u: create_consumer(u, Subscription("c", ["*"]))):
        with pytest.raises(outbox.ConfigurationError) as caught:
            create(url)
        assert SECRET not in str(caught.value)
