"""Consume messages effectively exactly once: the dedup row and the handler's writes commit
together, and the broker is acked only after that commit.

    from outboxkit.inbox import Inbox
    ib = Inbox(consumer="billing")

    @ib.handler("order.created")
    def create_invoice(tx, message): ...

    with conn.transaction():
        ib.handle(conn, message)      # False if it was handled before

Run it against a broker with `outboxkit consume --app pkg.module:ib …` or `ConsumerRunner`.
"""

from outboxkit.inbox.failures import NoHandler
from outboxkit.inbox.inbox import Inbox
from outboxkit.inbox.retention import parse_duration, prune
from outboxkit.inbox.runner import ConsumerRunner
from outboxkit.inbox.settings import ConsumerSettings, Mode

__all__ = [
    "ConsumerRunner",
    "ConsumerSettings",
    "Inbox",
    "Mode",
    "NoHandler",
    "parse_duration",
    "prune",
]
