"""Amazon SQS publisher (aiobotocore): a message is acked once SendMessageBatch listed it as
successful (SQS stores it redundantly before answering).

URL and options: see `sqs.options` (`sqs://[key:secret@][host[:port]]?queue=...`; `region`,
`tls`, `queue`, `queue_prefix`, `fifo`, `keyless_group`, `create`, `visibility`, `timeout`,
`connect_timeout`; the consumer's `rescan` is accepted too).

A batch is grouped by queue and cut into SendMessageBatch calls of at most 10 entries and
256 KiB; the calls run concurrently. Each message carries its envelope in one `outboxkit`
string attribute and its payload as the body (base64 when it is not text SQS accepts); a
message over 256 KiB as SQS counts it is rejected before sending. FIFO queues get
MessageGroupId = key and MessageDeduplicationId = message id (see `sqs.options`).

What the answers mean:

- an entry listed as successful: acked. An entry listed as failed: rejected (dead-lettered)
  when SQS says the sender is at fault, retried otherwise; an entry in neither list: retried.
- a whole call refused for a reason of its own (a 4xx other than those below): each entry is
  sent again on its own, so that only the offending one is rejected.
- throttling, 5xx, or no answer within `timeout`: retried (the message may have been stored:
  a republish is a duplicate the inbox absorbs, and a FIFO queue drops it).
- connection refused or failed, connect timeout, bad or missing credentials, access denied,
  or the queue of `queue=` missing with `create=false`: `unreachable` (the relay pauses and
  counts no attempt). A queue that vanished (a restarted local server) is looked up, or
  created, again and the call repeated once.
- in `queue_prefix` mode with `create=false`, a topic whose queue does not exist: rejected.

There is no connection to keep: every call opens or reuses a pooled HTTP connection, so after
an outage the next `publish` simply succeeds. botocore's own retries are off (the relay
retries), which keeps an outage's answer quick and bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

import botocore.exceptions
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from outboxkit.brokers.publishing import Capabilities, Outcome
from outboxkit.brokers.sqs import options as sqs_url
from outboxkit.brokers.sqs.options import BATCH_ENTRIES, MAX_MESSAGE_BYTES, Encoded, SqsOptions
from outboxkit.outbox.errors import BrokerUnavailable, ConfigurationError
from outboxkit.outbox.message import Message

_log = logging.getLogger(__name__)

_CONCURRENT_CALLS = 16
_MAX_ROUTES = 10_000  # queue URLs remembered
# No answer in time: the message may or may not be stored.
_TIMEOUTS = (TimeoutError, botocore.exceptions.ReadTimeoutError)
# The broker cannot be reached, or will not talk to us whatever we send.
_DOWN = (
    botocore.exceptions.ConnectionError,
    botocore.exceptions.HTTPClientError,
    botocore.exceptions.NoCredentialsError,
    botocore.exceptions.PartialCredentialsError,
    botocore.exceptions.CredentialRetrievalError,
)
# Whatever a call can fail with; anything else is a programming error and propagates.
_FAILURES = (TimeoutError, botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)
Entry = tuple[int, dict[str, Any], int]  # batch index, SendMessageBatch entry, size


def parse_url(url: str) -> SqsOptions:
    """`SqsOptions` from a broker URL; `ConfigurationError` for anything malformed."""
    return sqs_url.parse_url(url)


def client_config(options: SqsOptions, read_timeout: float) -> AioConfig:
    """Timeouts on every call, no retries inside botocore, a pool for concurrent calls."""
    return AioConfig(
        connect_timeout=options.connect_timeout,
        read_timeout=read_timeout,
        retries={"total_max_attempts": 1, "mode": "standard"},
        max_pool_connections=64,
        user_agent_extra="outboxkit",
    )


def entry_outcome(failure: dict[str, Any]) -> Outcome:
    """The outcome of an entry SendMessageBatch listed as failed."""
    error = f"SQS refused the message: {failure.get('Code')}: {failure.get('Message', '')}"
    return Outcome.reject(error) if failure.get("SenderFault") else Outcome.retry(error)


class SqsPublisher:
    """Publishes to one SQS queue, or one queue per topic, through one aiobotocore client."""

    def __init__(self, options: SqsOptions) -> None:
        self.options = options
        self.capabilities = Capabilities(
            ordered_per_key=options.fifo,
            broker_dedup=options.fifo,
            max_message_bytes=MAX_MESSAGE_BYTES,
        )
        self._client: Any = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._urls: dict[str, str] = {}  # queue name -> queue URL
        self._lock = asyncio.Lock()
        self._calls = asyncio.Semaphore(_CONCURRENT_CALLS)

    # -- connecting ----------------------------------------------------------------------

    async def connect(self) -> None:
        """Create the client and check the queue (creating it if allowed)."""
        async with self._lock:
            if self._client is None:
                await self._open()

    async def _open(self) -> None:
        o = self.options
        stack = contextlib.AsyncExitStack()
        try:
            creating = get_session().create_client(
                "sqs", config=client_config(o, o.timeout), **o.client_kwargs()
            )
            client = await stack.enter_async_context(creating)
        except botocore.exceptions.BotoCoreError as exc:  # no region, unknown profile...
            await stack.aclose()
            raise ConfigurationError(f"SQS client for {o.display}: {o.scrub(exc)}") from None
        try:
            # Per-topic queues are looked up when first used; nothing to check before (a
            # ListQueues would need a permission the relay has no other use for).
            if o.queue_prefix is None:
                async with asyncio.timeout(2 * self._deadline()):
                    if await sqs_url.ensure_queue(client, o.queue, o) is None:
                        raise ConfigurationError(
                            f"SQS queue {o.queue} does not exist at {o.display} and create=false"
                        )
        except (ConfigurationError, BrokerUnavailable):
            await stack.aclose()
            raise
        except _FAILURES as exc:
            await stack.aclose()
            raise BrokerUnavailable(f"cannot reach SQS at {o.display}: {self._why(exc)}") from None
        self._client, self._stack = client, stack

    # -- publishing ----------------------------------------------------------------------

    async def publish(self, batch: Sequence[Message]) -> list[Outcome]:
        """Send the batch in concurrent SendMessageBatch calls; one outcome per message."""
        if not batch:
            return []
        try:
            await self.connect()
        except (BrokerUnavailable, ConfigurationError) as exc:
            # Nothing is wrong with the messages: the relay pauses and tries again later.
            return [Outcome.unreachable(str(exc))] * len(batch)
        outcomes: list[Outcome | None] = [None] * len(batch)
        by_queue: dict[str, list[Entry]] = {}
        for index, message in enumerate(batch):
            entry = self._entry(index, message)
            if isinstance(entry, Outcome):
                outcomes[index] = entry
            else:
                by_queue.setdefault(self.options.queue_for(message.topic), []).append(entry)
        sends = [self._send_queue(name, entries) for name, entries in by_queue.items()]
        for results in await asyncio.gather(*sends):
            for index, outcome in results:
                outcomes[index] = outcome
        missing = Outcome.retry("no answer from SQS for this message")
        return [outcome or missing for outcome in outcomes]

    def _entry(self, index: int, message: Message) -> Entry | Outcome:
        """The SendMessageBatch entry for `message`, or why it can never be sent."""
        encoded: Encoded = sqs_url.encode(message)
        if encoded.size > MAX_MESSAGE_BYTES:
            return Outcome.reject(
                f"message is {encoded.size} bytes as SQS counts it (body and envelope "
                f"attribute); the SQS limit is {MAX_MESSAGE_BYTES}"
            )
        entry: dict[str, Any] = {
            "Id": str(index),
            "MessageBody": encoded.body,
            "MessageAttributes": {
                sqs_url.ATTRIBUTE: {"DataType": "String", "StringValue": encoded.attribute}
            },
        }
        if self.options.fifo:
            entry["MessageGroupId"] = sqs_url.group_id(message, self.options.keyless_group)
            entry["MessageDeduplicationId"] = str(message.message_id)
        return index, entry, encoded.size

    async def _send_queue(self, name: str, entries: list[Entry]) -> list[tuple[int, Outcome]]:
        """Send `entries` to queue `name`: resolve its URL, then send all chunks at once."""
        try:
            url = await self._queue_url(name)
        except _FAILURES as exc:
            outcome = self._call_failed(exc, f"looking up SQS queue {name}")
            return [(index, outcome) for index, _, _ in entries]
        if url is None:
            outcome = self._no_queue(name)
            return [(index, outcome) for index, _, _ in entries]
        chunks = _chunks(entries)
        if self.options.fifo and _groups_repeat(entries):
            # Two messages of one group in different concurrent calls could swap places.
            results = [await self._send_chunk(name, url, chunk) for chunk in chunks]
        else:
            results = await asyncio.gather(*(self._send_chunk(name, url, c) for c in chunks))
        return [pair for result in results for pair in result]

    async def _queue_url(self, name: str) -> str | None:
        url = self._urls.get(name)
        if url is None:
            async with asyncio.timeout(2 * self._deadline()):  # one to three calls
                url = await sqs_url.ensure_queue(self._client, name, self.options)
            if url is not None and len(self._urls) < _MAX_ROUTES:
                self._urls[name] = url
        return url

    def _no_queue(self, name: str) -> Outcome:
        error = f"SQS queue {name} does not exist at {self.options.display} and create=false"
        if self.options.queue_prefix is None:
            return Outcome.unreachable(error)  # the one queue: every message waits for it
        return Outcome.reject(error)  # this topic has nowhere to go

    async def _send_chunk(
        self, name: str, url: str, chunk: list[Entry], *, again: bool = True
    ) -> list[tuple[int, Outcome]]:
        """One SendMessageBatch call; each entry's outcome."""
        indexes = [index for index, _, _ in chunk]
        try:
            async with self._calls, asyncio.timeout(self._deadline()):
                response = await self._client.send_message_batch(
                    QueueUrl=url, Entries=[entry for _, entry, _ in chunk]
                )
        except botocore.exceptions.ClientError as exc:
            kind = sqs_url.classify(exc)
            if kind == "missing" and again:
                self._urls.pop(name, None)  # vanished (a restarted local server): look again
                return await self._send_queue_once(name, chunk)
            if kind == "refused" and len(chunk) > 1:
                # The call as a whole was refused: find the offending entry by sending each
                # on its own, so that only it is rejected.
                singles = [self._send_chunk(name, url, [e], again=again) for e in chunk]
                return [pair for result in await asyncio.gather(*singles) for pair in result]
            outcome = self._call_failed(exc, f"sending to SQS queue {name}")
            return [(index, outcome) for index in indexes]
        except _FAILURES as exc:
            outcome = self._call_failed(exc, f"sending to SQS queue {name}")
            return [(index, outcome) for index in indexes]
        results: list[tuple[int, Outcome]] = []
        for success in response.get("Successful") or ():
            results.append((int(success["Id"]), Outcome.ok()))
        for failure in response.get("Failed") or ():
            results.append((int(failure["Id"]), entry_outcome(failure)))
        return results

    async def _send_queue_once(self, name: str, chunk: list[Entry]) -> list[tuple[int, Outcome]]:
        try:
            url = await self._queue_url(name)
        except _FAILURES as exc:
            outcome = self._call_failed(exc, f"looking up SQS queue {name}")
            return [(index, outcome) for index, _, _ in chunk]
        if url is None:
            outcome = self._no_queue(name)
            return [(index, outcome) for index, _, _ in chunk]
        return await self._send_chunk(name, url, chunk, again=False)

    def _call_failed(self, exc: BaseException, doing: str) -> Outcome:
        """The outcome of the messages of a call that failed as a whole."""
        error = f"{doing} at {self.options.display}: {self._why(exc)}"
        if isinstance(exc, _TIMEOUTS):
            return Outcome.retry(error)
        if isinstance(exc, _DOWN):
            return Outcome.unreachable(error)
        if isinstance(exc, botocore.exceptions.ClientError):
            kind = sqs_url.classify(exc)
            if kind == "transient":
                return Outcome.retry(error)
            if kind in ("denied", "missing"):
                return Outcome.unreachable(error)
            return Outcome.reject(error)
        if isinstance(exc, botocore.exceptions.ParamValidationError):
            return Outcome.reject(error)
        if isinstance(exc, botocore.exceptions.BotoCoreError):
            return Outcome.unreachable(error)
        raise exc

    def _why(self, exc: BaseException) -> str:
        if isinstance(exc, TimeoutError):
            return f"no answer within {self._deadline():g}s"
        if isinstance(exc, botocore.exceptions.ClientError):
            return self.options.scrub(sqs_url.describe(exc))
        return self.options.scrub(f"{type(exc).__name__}: {exc}")

    def _deadline(self) -> float:
        # botocore's own timeouts fire first; this guards against anything they miss.
        return self.options.timeout + self.options.connect_timeout + 1

    async def close(self) -> None:
        """Close the client; safe to call twice."""
        stack, self._stack, self._client = self._stack, None, None
        self._urls.clear()
        if stack is not None:
            try:
                async with asyncio.timeout(5):
                    await stack.aclose()
            except (TimeoutError, OSError, botocore.exceptions.BotoCoreError) as exc:
                _log.debug("closing the SQS client: %r", exc)


def _chunks(entries: list[Entry]) -> list[list[Entry]]:
    """SendMessageBatch calls: at most 10 entries and 256 KiB each, in order."""
    chunks: list[list[Entry]] = []
    size = 0
    for entry in entries:
        if not chunks or len(chunks[-1]) == BATCH_ENTRIES or size + entry[2] > MAX_MESSAGE_BYTES:
            chunks.append([])
            size = 0
        chunks[-1].append(entry)
        size += entry[2]
    return chunks


def _groups_repeat(entries: list[Entry]) -> bool:
    groups = [entry["MessageGroupId"] for _, entry, _ in entries]
    return len(set(groups)) < len(groups)


def create(url: str) -> SqsPublisher:
    """A publisher for an `sqs://` URL (see `sqs.options` for its options)."""
    return SqsPublisher(parse_url(url))
