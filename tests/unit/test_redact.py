"""Credentials never reach logs or error messages."""

from __future__ import annotations

import pytest

import outbox
from outbox import db
from outbox.redact import redact_dsn


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        (
            "postgresql://app:s3cret@db.internal:5432/orders",
            "postgresql://app:***@db.internal:5432/orders",
        ),
        ("postgresql://app:p@ss:w0rd@db/orders", "postgresql://app:***@db/orders"),
        ("amqp://guest:s3cret@rabbit/vhost", "amqp://guest:***@rabbit/vhost"),
        ("postgresql://app@db/orders", "postgresql://app@db/orders"),
        ("postgresql://db/orders?sslmode=require", "postgresql://db/orders?sslmode=require"),
        (
            "postgresql://db/orders?user=app&password=s3cret&sslmode=require",
            "postgresql://db/orders?user=app&password=***&sslmode=require",
        ),
        (
            "https://hooks.example/in?token=s3cret&team=a",
            "https://hooks.example/in?token=***&team=a",
        ),
        ("https://blob.example/x?sig=s3cret", "https://blob.example/x?sig=***"),
    ],
)
def test_urls(dsn: str, expected: str) -> None:
    assert redact_dsn(dsn) == expected


@pytest.mark.parametrize(
    ("dsn", "expected"),
    [
        (
            "host=db user=app password=s3cret dbname=orders",
            "host=db user=app password=*** dbname=orders",
        ),
        ("host=db PASSWORD = s3cret", "host=db PASSWORD = ***"),
        ("host=db password='s3 cr\\'et' dbname=x", "host=db password=*** dbname=x"),
        ("host=db dbname=orders", "host=db dbname=orders"),
    ],
)
def test_keyword_dsns(dsn: str, expected: str) -> None:
    assert redact_dsn(dsn) == expected


def test_unparseable_url_is_hidden_entirely() -> None:
    assert "s3cret" not in redact_dsn("postgresql://app:s3cret@[::1/orders")


@pytest.mark.parametrize(
    "dsn",
    ["postgresql://app:s3cret@[::1/orders", "host=db password=s3cret bogus"],
    ids=["malformed-url", "malformed-keywords"],
)
async def test_unparseable_dsn_errors_never_quote_the_password(dsn: str) -> None:
    # libpq rejects these before any network access, quoting the URL in its message.
    with pytest.raises(outbox.ConfigurationError) as sync_error:
        db.connect(dsn)
    with pytest.raises(outbox.ConfigurationError) as async_error:
        await db.aconnect(dsn)
    for error in (sync_error.value, async_error.value):
        assert "s3cret" not in str(error)
        assert "\n" not in str(error)
