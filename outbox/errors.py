"""The exceptions outboxkit raises. Every one derives from `OutboxkitError`.

OutboxkitError                    root; `retriable` says whether trying again may succeed
├── ConfigurationError            bad settings, DSN, URL or CLI input
├── InvalidMessage                refused before anything was written
│   ├── InvalidTopic              empty, too long, or no route for it
│   ├── InvalidHeaders            headers that are not a str -> str map
│   ├── PayloadNotSerializable    the payload does not encode as JSON
│   ├── PayloadTooLarge           over the configured maximum size
│   └── MalformedEnvelope         a delivered envelope is broken (outbox.envelope)
├── TransactionRequired           the connection would not make the write transactional
├── UnsupportedConnection         not a psycopg 3 / SQLAlchemy-on-psycopg transaction
├── MigrationError                the schema cannot be brought up to date
│   ├── ChecksumMismatch          an applied migration file was changed since
│   └── SchemaNotMigrated         the outboxkit tables are missing or out of date
├── DatabaseUnavailable           cannot reach PostgreSQL (retriable)
├── ShutdownStuck                 a relay or consumer outlived its drain and cancellation
└── PublishError                  a broker refused or failed a message
    ├── BrokerUnavailable         cannot reach the broker (retriable)
    └── MessageRejected           permanently refused: dead-letter it (not retriable)
"""

from __future__ import annotations


class OutboxkitError(Exception):
    """Something went wrong in outboxkit."""

    retriable: bool = False

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or type(self).__name__).strip())


class ConfigurationError(OutboxkitError):
    """The configuration is invalid."""


class InvalidMessage(OutboxkitError):
    """The message is invalid and was not written."""


class InvalidTopic(InvalidMessage):
    """The topic is empty, too long, or has no route."""


class InvalidHeaders(InvalidMessage):
    """Headers must map str to str."""


class PayloadNotSerializable(InvalidMessage):
    """The payload cannot be encoded as JSON."""


class PayloadTooLarge(InvalidMessage):
    """The encoded payload is larger than the configured maximum."""


class TransactionRequired(OutboxkitError):
    """Writing to the outbox needs an open transaction, not an autocommit connection."""


class UnsupportedConnection(OutboxkitError):
    """Expected a psycopg 3 connection or a SQLAlchemy 2 session/connection on psycopg 3."""


class MigrationError(OutboxkitError):
    """The database schema cannot be migrated."""


class ChecksumMismatch(MigrationError):
    """An applied migration was changed after it was applied."""


class SchemaNotMigrated(MigrationError):
    """The outboxkit tables are missing or older than this outboxkit: run `outboxkit migrate`."""


class DatabaseUnavailable(OutboxkitError):
    """PostgreSQL cannot be reached."""

    retriable = True


class ShutdownStuck(OutboxkitError):
    """A relay or consumer outlived both its drain and its cancellation: left behind.

    Some client libraries swallow a cancellation; the process entry points then exit at
    once with `exit_code`. Nothing is lost: unacked work is delivered again.
    """

    exit_code = 70  # EX_SOFTWARE
    retriable = False


class PublishError(OutboxkitError):
    """The broker did not accept the message."""

    retriable = True


class BrokerUnavailable(PublishError):
    """The broker cannot be reached."""

    retriable = True


class MessageRejected(PublishError):
    """The broker rejected the message permanently."""

    retriable = False
