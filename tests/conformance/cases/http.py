"""HTTP webhooks, end to end over real HTTP, with a durable store-and-forward hop.

    publisher --POST--> webhook spool --POST--> consumer (listening, held until the ack)

A webhook has no broker: the relay posts straight to the receiver, whose outbox-side queue
is the outbox itself. The suite, written for brokers, publishes before any consumer listens
(and in one test before any consumer exists), so the "server" of this case is the spool of
`outboxkit.devservers.http`: a separate process that stores each POST in SQLite before
answering 200 and forwards it, per key in order, to the consumer named in the URL. Its
`stop()`/`start()` kill and restart that process on the same port (the publisher sees
"connection refused": unreachable); what it stored survives.

Each `fresh_url()` names a new path on the spool and a new free port the consumer listens on:
the publisher posts to the spool (`forward=` is the spool's own query parameter, passed
through untouched by the publisher), the consumer binds `outboxkit_listen`. Every request is
signed with a secret from the environment and verified by the consumer.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import uuid
from collections.abc import Iterator

from outboxkit.devservers.http import WebhookSpool
from outboxkit.devservers.ports import free_port
from tests.conformance.cases.base import BrokerCase

SECRET_ENV = "OUTBOXKIT_CONFORMANCE_HTTP_SECRET"


class Server:
    def __init__(self) -> None:
        self.spool = WebhookSpool()

    def fresh_url(self) -> str:
        tag, port = uuid.uuid4().hex[:10], free_port()
        return (
            f"{self.spool.url}/c{tag}/{{topic}}?forward=127.0.0.1:{port}"
            f"&outboxkit_listen=127.0.0.1:{port}&outboxkit_secret_env={SECRET_ENV}"
            "&outboxkit_timeout=5"
        )

    def stop(self) -> None:
        self.spool.stop()

    def start(self) -> None:
        self.spool.start()


@contextlib.contextmanager
def server() -> Iterator[Server]:
    previous = os.environ.get(SECRET_ENV)
    os.environ[SECRET_ENV] = f"conformance-{secrets.token_hex(16)}"
    running = Server()
    try:
        running.start()
        yield running
    finally:
        running.spool.cleanup()
        if previous is None:
            os.environ.pop(SECRET_ENV, None)
        else:
            os.environ[SECRET_ENV] = previous


CASE = BrokerCase(
    name="http",
    server=server,
    unreachable_url="http://u:s3cr3t-pw@127.0.0.1:9/hooks?outboxkit_timeout=1",
)
