"""Deliveries whose envelope is broken: dead letters when they carry an id, else dropped.

The runner hands every fetched batch's malformed deliveries here, after the batch's
well-formed messages were settled, whatever the broker and the mode. Those with a valid
message id become inbox dead letters in a transaction of their own (what could be kept of
them: the raw payload, the cleaned topic, key and headers; `attempts` 0; no dedup row, as
the id came in a broken envelope), the others are logged and counted; then all are acked.
Nothing here raises: a lost connection leaves them to be redelivered, and a statement the
database refuses (nothing of a `Malformed` should be) drops them, logged.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import psycopg

from outboxkit.brokers import Delivery, Malformed
from outboxkit.inbox.slots import Slot
from outboxkit.outbox.errors import DatabaseUnavailable
from outboxkit.outbox.limits import clean_text

log = logging.getLogger("outboxkit.inbox")

_RETRY_AFTER = 1.0  # seconds before a malformed delivery is redelivered (database down)


@dataclass
class Settled:
    """How many malformed deliveries were dead-lettered, and how many dropped."""

    dead_lettered: int = 0
    dropped: int = 0


async def settle(slot: Slot, deliveries: Sequence[Delivery]) -> Settled:
    """Dead-letter the malformed `deliveries` that carry an id, drop the others, ack all."""
    settled = Settled()
    if not deliveries:
        return settled
    found = [kept(d) for d in deliveries]
    buried = {id(m) for m in found if m.message_id is not None}
    if buried:
        try:
            await slot.bury_malformed([m for m in found if id(m) in buried])
        except (psycopg.Error, DatabaseUnavailable, ValueError) as exc:
            # Lost or refused is told from the connection's state, not the exception's class.
            if isinstance(exc, DatabaseUnavailable) or slot.connection_lost():
                log.warning(
                    "database unavailable (%s); malformed deliveries redelivered", clean_text(exc)
                )
                await slot.reset()
                for delivery in deliveries:
                    with contextlib.suppress(Exception):
                        await delivery.nak(_RETRY_AFTER)
                return settled
            log.error("could not dead-letter malformed deliveries: %s", clean_text(exc))
            buried = set()
    for delivery, malformed in zip(deliveries, found, strict=True):
        if id(malformed) in buried:
            settled.dead_lettered += 1
            log.error("malformed delivery %s dead-lettered: %s", malformed.message_id, malformed)
        else:
            settled.dropped += 1
            log.error("dropping a malformed delivery (no usable message id): %s", malformed)
        await delivery.ack()
    return settled


def kept(delivery: Delivery) -> Malformed:
    """What `delivery` keeps of its broken envelope (a bare reason keeps nothing else)."""
    found = delivery.malformed
    if isinstance(found, Malformed):
        return found
    return Malformed(clean_text(found or "the adapter gave no message and no reason"))
