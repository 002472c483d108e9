"""`sqs://` broker URLs, queue names and the wire format, shared by the SQS publisher and consumer.

Pure code: no import of aiobotocore or botocore here (the write path never imports a broker
client). The publisher (`sqs.publisher`) and the consumer (`sqs.consumer`) read the
same options the same way, name and create queues the same way, and agree on the wire format.

URL: `sqs://[ACCESS_KEY:SECRET@][host[:port]][?option=value&...]`

- With a host, the client talks to that endpoint (moto, LocalStack, a VPC endpoint):
  `sqs://AK:SECRET@127.0.0.1:5000?region=us-east-1&tls=false&queue=orders`.
- Without one, to AWS's endpoint for the region: `sqs://?region=eu-west-1&queue=orders`.
- Without credentials, botocore's default chain finds them (environment, shared config and
  credentials files, container or instance role). Both parts or neither: percent-encode a
  secret's `/` and `+` (`%2F`, `%2B`). The secret never appears in errors or logs.

Options (defaults in brackets):

- `region` [botocore's configured region; `us-east-1` when a host is given and none is set].
- `tls` [true]: https to the endpoint host; `tls=false` for a local plain-HTTP server.
- `queue` [`outboxkit`]: the one queue every topic goes to (the topic travels in the envelope).
- `queue_prefix` [none]: instead, one queue per topic, named `queue_prefix + topic` with `.`
  turned into `-` and any other character but letters, digits, `-`, `_` into `_` (so
  `orders.created` and `orders-created` share a queue, which is harmless: the topic travels
  in the envelope). A name over SQS's 80 characters is cut and ends in a hash of the topic.
  Cannot be combined with `queue`.
- `fifo` [false, or true when `queue` ends in `.fifo`]: FIFO queues (names end in `.fifo`,
  added if missing). The MessageGroupId is the message key (keys that SQS does not accept as
  a group id, or longer than 128 characters, become a hash of the key), so messages of one
  key are delivered in order; the MessageDeduplicationId is the message id, so SQS drops a
  republished message for 5 minutes.
- `keyless_group` [empty]: the group of keyless messages in a FIFO queue. Empty: each keyless
  message is its own group (no order among them, no head-of-line blocking, as the relay
  promises no order for them anyway); a name: all keyless messages in that one ordered group.
- `create` [true]: create missing queues (on connect, and in `queue_prefix` mode when a new
  topic is first published). Queues are created with a 14-day retention, the `visibility`
  timeout and, for FIFO, `FifoQueue=true`; an existing queue is never altered. With
  `create=false` the queues must exist: a missing `queue` makes the broker `unreachable` for
  the relay (nothing is wrong with the messages), a missing per-topic queue rejects the
  messages of that topic (a misrouted topic is permanent for them).
- `visibility` [30]: seconds a received message stays invisible to other receivers; the
  consumer keeps extending it while the message is being handled.
- `rescan` [30]: seconds between listings of the queues in `queue_prefix` mode (the consumer
  of a wildcard pattern discovers the queues of new topics this way).
- `timeout` [10]: seconds to wait for an answer to each call (a receive waits this long on
  top of its long poll). `connect_timeout` [5]: seconds to open a connection.

One URL serves both the relay and the consumer.

Guarantees: a standard queue promises no order and may deliver a message twice (the inbox
absorbs duplicates); a FIFO queue delivers the messages of one group (key) in order, one
group's next message only once the previous one was deleted, and drops a message id seen in
the last 5 minutes. SQS has no consumer groups: a queue (or a `queue_prefix`) feeds ONE inbox
consumer; fanning one topic out to several consumers (SNS to several queues) is not built in.

IAM permissions: the relay needs `sqs:GetQueueUrl` and `sqs:SendMessage` (plus
`sqs:CreateQueue` with `create=true`); the consumer `sqs:GetQueueUrl`, `sqs:ReceiveMessage`,
`sqs:DeleteMessage`, `sqs:ChangeMessageVisibility` (plus `sqs:CreateQueue` with `create=true`,
and `sqs:ListQueues` for wildcard patterns with `queue_prefix`); and the KMS key's use for
queues encrypted with SSE-KMS.

Wire format: the body is the payload as text when it is UTF-8 that SQS accepts (no control
characters but tab and line feed), else its base64 (SQS bodies must be Unicode text). The
envelope (message id, topic, key, content type, created_at and every user header) travels as
ONE string message attribute, `outboxkit`, holding JSON (`{"v":1,"body":"text"|"base64"|
"empty","headers":{...}}`): SQS allows only 10 message attributes, with restricted names,
and user headers are free-form. A message is at most 256 KiB (262144 bytes), body plus
attribute, as SQS counts it; a larger one is rejected before sending.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from outboxkit.brokers.url import scrub
from outboxkit.brokers.url_options import Option, OptionTable
from outboxkit.brokers.url_values import BOOL, converter, integer, non_empty, number
from outboxkit.outbox.envelope import from_headers, to_headers
from outboxkit.outbox.errors import ConfigurationError, InvalidMessage
from outboxkit.outbox.message import Message

DEFAULT_QUEUE = "outboxkit"
LOCAL_REGION = "us-east-1"
ATTRIBUTE = "outboxkit"
MAX_MESSAGE_BYTES = 262_144
MAX_QUEUE_NAME = 80
FIFO_SUFFIX = ".fifo"
BATCH_ENTRIES = 10
MAX_VISIBILITY = 43_200  # SQS's limit, in seconds (12 hours)
RETENTION = 1_209_600  # 14 days, SQS's maximum: messages waiting for a consumer are kept

_NAME = re.compile(r"[A-Za-z0-9_-]+")
_NOT_IN_NAME = re.compile(r"[^A-Za-z0-9_-]")
# What SQS accepts in a body (XML 1.0 characters), less \r, which XML readers may turn into \n.
_NOT_TEXT = re.compile("[^\t\n\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# A MessageGroupId: up to 128 letters, digits and ASCII punctuation.
_GROUP_ID = re.compile(r"[!-~]{1,128}")


@dataclass(frozen=True, kw_only=True)
class SqsOptions:
    """The connection and queue settings parsed from an `sqs://` URL."""

    display: str
    endpoint_url: str | None = None  # None: AWS's endpoint for the region
    region: str | None = None  # None: botocore's configured region
    access_key: str | None = None
    secret_key: str | None = field(default=None, repr=False)
    queue: str = DEFAULT_QUEUE
    queue_prefix: str | None = None
    fifo: bool = False
    keyless_group: str = ""
    create: bool = True
    visibility: int = 30
    rescan: float = 30.0
    timeout: float = 10.0
    connect_timeout: float = 5.0

    def client_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of botocore's `create_client("sqs", ...)` (not the config)."""
        kwargs: dict[str, Any] = {"region_name": self.region, "endpoint_url": self.endpoint_url}
        if self.access_key is not None:
            kwargs["aws_access_key_id"] = self.access_key
            kwargs["aws_secret_access_key"] = self.secret_key
        return kwargs

    def queue_attributes(self) -> dict[str, str]:
        """The attributes of a queue we create; publisher and consumer create queues alike."""
        attributes = {
            "VisibilityTimeout": str(self.visibility),
            "MessageRetentionPeriod": str(RETENTION),
        }
        if self.fifo:
            attributes["FifoQueue"] = "true"
        return attributes

    def queue_for(self, topic: str) -> str:
        """The name of the queue `topic` goes to."""
        if self.queue_prefix is None:
            return self.queue
        return queue_name(self.queue_prefix, topic, fifo=self.fifo)

    def scrub(self, error: object) -> str:
        """`error` as text with the secret key (percent-encoded or not) masked."""
        # A secret of a few characters would mask half the text and protect nothing.
        return scrub(error, (self.secret_key,), min_length=4)


def parse_url(url: str) -> SqsOptions:
    """`SqsOptions` from a broker URL; `ConfigurationError` for anything malformed or unknown."""
    parts = TABLE.split(url)
    parts.refuse_path("name the queue with ?queue=..., not in the path")
    access_key, secret_key = parts.user or None, parts.password or None
    if (access_key is None) != (secret_key is None):
        raise parts.error("give both an access key and a secret, or neither")
    fields = TABLE.read_url(parts)
    tls = fields.pop("tls", None)
    endpoint = None
    if parts.host is not None:
        endpoint = f"{'http' if tls is False else 'https'}://{parts.host}"
        fields.setdefault("region", LOCAL_REGION)
    elif tls is not None:
        raise parts.error("tls= only applies to an endpoint host")
    _check_queues(fields, parts.shown)
    return SqsOptions(
        display=parts.shown,
        endpoint_url=endpoint,
        access_key=access_key,
        secret_key=secret_key,
        **fields,
    )


def _check_queues(fields: dict[str, Any], shown: str) -> None:
    """Validate and complete `queue`, `queue_prefix` and `fifo` in place."""
    queue, prefix, fifo = fields.get("queue"), fields.get("queue_prefix"), fields.get("fifo")
    if queue is not None and prefix is not None:
        raise ConfigurationError(f"{shown}: give queue= or queue_prefix=, not both")
    if prefix is not None:
        if not _NAME.fullmatch(prefix) or len(prefix) > MAX_QUEUE_NAME - 15:
            raise ConfigurationError(
                f"{shown}: queue_prefix must be 1 to 65 letters, digits, '-' or '_'"
            )
        fields["fifo"] = bool(fifo)
        return
    queue = queue or DEFAULT_QUEUE
    if queue.endswith(FIFO_SUFFIX):
        if fifo is False:
            raise ConfigurationError(f"{shown}: queue {queue!r} is a FIFO queue but fifo=false")
        fifo = True
    elif fifo:
        queue += FIFO_SUFFIX
    base = queue.removesuffix(FIFO_SUFFIX) if fifo else queue
    if not _NAME.fullmatch(base) or len(queue) > MAX_QUEUE_NAME:
        raise ConfigurationError(
            f"{shown}: queue names have 1 to 80 letters, digits, '-' or '_' "
            f"(FIFO: ending in {FIFO_SUFFIX}), got {queue!r}"
        )
    fields["queue"], fields["fifo"] = queue, bool(fifo)


@converter("empty, or 1 to 128 ASCII letters and punctuation")
def _group(raw: str) -> str:
    if raw and not _GROUP_ID.fullmatch(raw):
        raise ValueError(f"expected 1 to 128 ASCII letters/punctuation, got {raw!r}")
    return raw


TABLE = OptionTable(
    label="SQS",
    form="sqs://[key:secret@][host[:port]]",
    schemes={"sqs": None},
    kind=SqsOptions,
    host_required=False,
    options=(
        Option(
            "region",
            non_empty,
            "the AWS region",
            default="botocore's; `us-east-1` with a host",
        ),
        Option("tls", BOOL, "https to the endpoint host (false: plain HTTP)", default="true"),
        Option("queue", non_empty, "the one queue every topic goes to"),
        Option("queue_prefix", non_empty, "instead, one queue per topic: `queue_prefix + topic`"),
        Option("fifo", BOOL, "FIFO queues", default="false, true for a `.fifo` queue"),
        Option("keyless_group", _group, "FIFO group of keyless messages (empty: one each)"),
        Option("create", BOOL, "create missing queues (never altered)"),
        Option(
            "visibility",
            integer(1, MAX_VISIBILITY),
            "seconds a received message stays invisible (a queue we create)",
        ),
        Option(
            "rescan",
            number(0.1, 86_400),
            "seconds between listings of queue_prefix queues",
            side="consumer",
        ),
        Option("timeout", number(0.1, 3_600), "seconds to wait for each call's answer"),
        Option("connect_timeout", number(0.1, 3_600), "seconds to open a connection"),
    ),
)


# -- queue names ---------------------------------------------------------------------------


def sanitize(text: str) -> str:
    """`text` with `.` as `-` and every character SQS refuses in a queue name as `_`."""
    return _NOT_IN_NAME.sub("_", text.replace(".", "-"))


def queue_name(prefix: str, topic: str, *, fifo: bool) -> str:
    """The per-topic queue: `prefix + sanitize(topic)`, cut with a hash if too long."""
    room = MAX_QUEUE_NAME - (len(FIFO_SUFFIX) if fifo else 0)
    name = prefix + sanitize(topic)
    if len(name) > room:
        digest = hashlib.sha256(topic.encode()).hexdigest()[:8]
        name = f"{name[: room - 9]}-{digest}"
    return name + (FIFO_SUFFIX if fifo else "")


def name_prefix(prefix: str, literal: str, *, fifo: bool) -> str:
    """The ListQueues prefix covering every topic that starts with `literal`."""
    room = MAX_QUEUE_NAME - (len(FIFO_SUFFIX) if fifo else 0)
    return (prefix + sanitize(literal))[: room - 9]


def queue_name_of(url: str) -> str:
    """The name at the end of a queue URL."""
    return url.rstrip("/").rsplit("/", 1)[-1]


def group_id(message: Message, keyless_group: str) -> str:
    """The FIFO MessageGroupId of `message`: its key, or a hash of a key SQS would refuse."""
    key = message.key
    if key is None:
        return keyless_group or str(message.message_id)
    if _GROUP_ID.fullmatch(key):
        return key
    return "sha256-" + hashlib.sha256(key.encode()).hexdigest()


# -- the wire format -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Encoded:
    """A message as SQS gets it: body text, the envelope attribute, and SQS's size of both."""

    body: str
    attribute: str
    size: int


def encode(message: Message) -> Encoded:
    """The body and the `outboxkit` attribute for `message`."""
    body, encoding = _body(message.payload)
    envelope = {"v": 1, "body": encoding, "headers": to_headers(message)}
    attribute = json.dumps(envelope, ensure_ascii=True, separators=(",", ":"))
    # SQS counts the body, and each attribute's name, data type and value, in UTF-8 bytes.
    size = len(body.encode()) + len(ATTRIBUTE) + len("String") + len(attribute)
    return Encoded(body, attribute, size)


def _body(payload: bytes) -> tuple[str, str]:
    if not payload:
        return "-", "empty"  # SQS refuses an empty body
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and _NOT_TEXT.search(text) is None:
        return text, "text"
    return base64.b64encode(payload).decode("ascii"), "base64"


def attribute_value(attributes: Mapping[str, Any] | None) -> str | None:
    """The `outboxkit` string attribute from a received message's MessageAttributes."""
    value = (attributes or {}).get(ATTRIBUTE)
    if isinstance(value, Mapping) and isinstance(value.get("StringValue"), str):
        text: str = value["StringValue"]
        return text
    return None


def decode(body: str, attribute: str | None) -> Message:
    """The message a publisher sent; `InvalidMessage` if its envelope is missing or broken."""
    if attribute is None:
        raise InvalidMessage(f"no {ATTRIBUTE!r} message attribute: not sent by outboxkit")
    try:
        envelope = json.loads(attribute)
    except ValueError as exc:
        raise InvalidMessage(f"the {ATTRIBUTE!r} attribute is not JSON") from exc
    if not isinstance(envelope, dict) or envelope.get("v") != 1:
        raise InvalidMessage(f"unknown {ATTRIBUTE!r} envelope version")
    headers = envelope.get("headers")
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise InvalidMessage(f"the {ATTRIBUTE!r} headers are not a str -> str map")
    encoding = envelope.get("body")
    if encoding == "text":
        payload = body.encode()
    elif encoding == "empty":
        payload = b""
    elif encoding == "base64":
        try:
            payload = base64.b64decode(body, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InvalidMessage("the body is not valid base64") from exc
    else:
        raise InvalidMessage(f"unknown body encoding {encoding!r}")
    return from_headers(headers, payload)


# -- errors and queues (duck-typed: the caller passes its aiobotocore client) ---------------

MISSING_QUEUE = frozenset({"QueueDoesNotExist", "AWS.SimpleQueueService.NonExistentQueue"})
_QUEUE_EXISTS = frozenset({"QueueNameExists", "QueueAlreadyExists"})
_TRANSIENT = frozenset({
    "RequestThrottled", "ThrottlingException", "Throttling", "TooManyRequestsException",
    "ServiceUnavailable", "InternalError", "InternalFailure", "RequestTimeout",
    "KmsThrottled", "OverLimit",
})  # fmt: skip
# Refusals that concern every message alike (credentials, permissions, the queue's KMS key):
# the operator must act, and no message should use up its attempts meanwhile.
_DENIED = frozenset({
    "AccessDenied", "AccessDeniedException", "InvalidClientTokenId", "SignatureDoesNotMatch",
    "UnrecognizedClientException", "ExpiredToken", "ExpiredTokenException", "InvalidSecurity",
    "MissingAuthenticationToken", "IncompleteSignature", "RequestExpired", "OptInRequired",
    "KmsAccessDenied", "KmsDisabled", "KmsNotFound", "KmsInvalidState", "KmsInvalidKeyUsage",
    "KmsOptInRequired",
})  # fmt: skip


def error_codes(exc: BaseException) -> tuple[set[str], int]:
    """The error codes (SQS's JSON and query-compatible ones) and HTTP status of a ClientError."""
    response = getattr(exc, "response", None) or {}
    error = response.get("Error") or {}
    codes = {str(error[k]) for k in ("Code", "QueryErrorCode") if error.get(k)}
    status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0
    return codes, int(status)


def classify(exc: BaseException) -> str:
    """A ClientError as `missing` (queue), `transient`, `denied` or `refused` (this request)."""
    codes, status = error_codes(exc)
    if codes & MISSING_QUEUE:
        return "missing"
    if codes & _TRANSIENT or status >= 500 or status == 429:
        return "transient"
    if codes & _DENIED or status in (401, 403):
        return "denied"
    return "refused"


def describe(exc: BaseException) -> str:
    """A ClientError as `Code: message`."""
    response = getattr(exc, "response", None) or {}
    error = response.get("Error") or {}
    return f"{error.get('Code', type(exc).__name__)}: {error.get('Message', '')}".rstrip(": ")


async def ensure_queue(client: Any, name: str, options: SqsOptions) -> str | None:
    """The URL of queue `name`, created if missing and `options.create`; None if missing."""
    try:
        response = await client.get_queue_url(QueueName=name)
    except client.exceptions.ClientError as exc:
        if classify(exc) != "missing":
            raise
        if not options.create:
            return None
        try:
            response = await client.create_queue(
                QueueName=name, Attributes=options.queue_attributes()
            )
        except client.exceptions.ClientError as again:
            if not error_codes(again)[0] & _QUEUE_EXISTS:
                raise
            # created meanwhile with other attributes: use it as it is
            response = await client.get_queue_url(QueueName=name)
    return str(response["QueueUrl"])
