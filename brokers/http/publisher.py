"""HTTP webhook publisher (httpx): each message is one POST, acked on a 2xx answer.

URL: the endpoint itself, `http[s]://[user:password@]host[:port]/path[?query]`; `{topic}` in
the path becomes the topic, as one percent-encoded path segment
(`http://hooks.internal/events/{topic}`), a user and password
become HTTP Basic auth, and query parameters named `outboxkit_*` are options, removed from
the URL (the endpoint's own parameters are sent as written). See `http.options` for the
headers and `http.signature` for the signature scheme. Options:

- `outboxkit_timeout=10`: seconds for one POST, from connecting to the end of the answer.
- `outboxkit_connect_timeout=5`: seconds to open a connection (capped by the timeout).
- `outboxkit_concurrency=16`: POSTs in flight at once (and pooled keep-alive connections).
- `outboxkit_secret_env=NAME`: sign every request (`Outboxkit-Signature`) with the secret(s)
  in the environment variable NAME, read by `connect()`. Never put a secret in the URL.
- `outboxkit_sign=v2`: the signature scheme(s). `v1,v2` adds the old `v1` signature for
  receivers that are not upgraded yet (they ignore `v2`); drop it once they are.
- `outboxkit_max_bytes=10485760`: a larger payload is rejected (dead-lettered) unsent.
- `outboxkit_retry_status=404,409`: 4xx statuses to retry instead of dead-lettering.
- `outboxkit_ca_file=/path/ca.pem`: trust this CA for `https://` (default: the system's).

The consumer's options (`outboxkit_listen`, `outboxkit_tolerance`, `outboxkit_hold_timeout`,
`outboxkit_accept_v1`, `outboxkit_insecure_no_auth`, `outboxkit_max_connections`,
`outboxkit_max_buffered_bytes`) are accepted and ignored, so one URL can serve both sides.

Answers: 2xx acked. 408, 425, 429, 5xx, a timeout or a connection lost mid-request: retry
(the relay owns the backoff; a `Retry-After` is only quoted in the error). Any other 4xx:
rejected, the message is dead-lettered (a 422 from our consumer means "no handler for this
topic"). 401, 403 and 407 (credentials or signature refused) and 3xx (the endpoint moved)
concern every message alike, so they count as `unreachable`: the relay pauses instead of
dead-lettering the whole outbox while someone fixes the configuration. A refused connection,
a DNS failure or a connect timeout is `unreachable` too; once one happens, the rest of the
batch is not attempted. Messages that have not started within `outboxkit_timeout` of the
call (a slow endpoint) are `unreachable` as well: back-pressure, not a failure of theirs. So
one call lasts at most about twice `outboxkit_timeout`: keep that below the relay's
`publish_timeout` (30 s), which otherwise abandons the whole batch.

`Outboxkit-Attempt` counts the POSTs of a message by this publisher that reached the
endpoint (1 again after a restart of the relay; an outage does not count): a hint for the
receiver's dead-lettering, the inbox dedups anyway. Every request
carries `Idempotency-Key: <message id>`: the endpoint must dedup (our consumer and
`webhook_app` do, through the inbox), as an HTTP endpoint cannot tell a retry from a new
message otherwise. There is no broker-side dedup.

Order per key holds: the relay hands over at most one message per key per call and sends the
next one only after this one was answered 2xx.

Connections: `outboxkit_concurrency` lanes, each an httpx transport holding one HTTP/1.1
keep-alive connection, each posting the batch's next message in turn. Not one shared pool:
httpcore's pool re-checks every pooled connection (a socket poll each) whenever it assigns a
request, so its cost per request grows with the pool and 16 shared connections were slower
on loopback than 4. The transports are driven directly, without `httpx.AsyncClient`: no
redirects, cookies or environment proxies, and no INFO log line per request with the URL
(whose query string may carry an endpoint's token). `connect()` checks that the host accepts
TCP connections; later the lanes reconnect by themselves.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
import time
from collections import OrderedDict
from collections.abc import Sequence
from uuid import UUID

import httpx

from outboxkit.brokers.http import options as http_url
from outboxkit.brokers.http.options import ATTEMPT, HttpOptions
from outboxkit.brokers.http.signature import signature_headers
from outboxkit.brokers.publishing import Capabilities, Outcome
from outboxkit.outbox.errors import BrokerUnavailable, ConfigurationError, InvalidMessage
from outboxkit.outbox.message import Message

_RETRY_STATUSES = frozenset({408, 425, 429})
_AUTH_STATUSES = frozenset({401, 403, 407})
_MAX_TRACKED = 100_000  # messages whose POST count is remembered
_SNIPPET_BYTES = 2048  # of an error answer's body, quoted in the error
_SNIPPET_CHARS = 200

Prepared = tuple[str, dict[str, str], bytes]
_NOT_SENT = Outcome.unreachable("not sent")  # a placeholder, replaced before returning


def parse_url(url: str) -> HttpOptions:
    """`HttpOptions` from a webhook URL; `ConfigurationError` for anything malformed."""
    return http_url.parse_url(url)


class HttpPublisher:
    """POSTs messages to one webhook endpoint over one keep-alive connection pool."""

    def __init__(self, options: HttpOptions) -> None:
        self.options = options
        self.capabilities = Capabilities(
            ordered_per_key=True, broker_dedup=False, max_message_bytes=options.max_bytes
        )
        self._lanes: list[httpx.AsyncHTTPTransport] = []
        self._secrets: list[bytes] = []
        self._posts: OrderedDict[UUID, int] = OrderedDict()
        timeout = options.timeout
        self._timeouts = httpx.Timeout(
            timeout, connect=min(options.connect_timeout, timeout)
        ).as_dict()
        self._authorization: str | None = None
        if options.user is not None:
            pair = f"{options.user}:{options.password or ''}".encode()
            self._authorization = "Basic " + base64.b64encode(pair).decode()
        self._lock = asyncio.Lock()

    async def connect(self) -> None:
        """Read the signing secret, check the endpoint accepts connections, open the pool."""
        async with self._lock:
            if self._lanes:
                return
            self._secrets = self.options.secrets()
            tls = self._tls()
            await self._probe()
            one = httpx.Limits(max_connections=1, max_keepalive_connections=1)
            self._lanes = [
                httpx.AsyncHTTPTransport(verify=tls, limits=one, retries=0)
                for _ in range(self.options.concurrency)
            ]

    def _tls(self) -> ssl.SSLContext:
        """One TLS context for all lanes (the system's CAs, or `outboxkit_ca_file`)."""
        try:
            if self.options.ca_file is None:
                return httpx.create_ssl_context()
            return ssl.create_default_context(cafile=self.options.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigurationError(
                f"cannot load outboxkit_ca_file {self.options.ca_file}: {exc}"
            ) from None

    async def _probe(self) -> None:
        o = self.options
        try:
            async with asyncio.timeout(min(o.connect_timeout, o.timeout)):
                _, writer = await asyncio.open_connection(o.host, o.port)
        except (OSError, TimeoutError) as exc:
            reason = "timed out" if isinstance(exc, TimeoutError) else o.scrub(exc)
            raise BrokerUnavailable(
                f"cannot reach the webhook endpoint {o.display}: {reason}"
            ) from exc
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    async def publish(self, batch: Sequence[Message]) -> list[Outcome]:
        """POST the batch, `outboxkit_concurrency` at a time; one outcome per message."""
        if not batch:
            return []
        try:
            await self.connect()
        except (BrokerUnavailable, ConfigurationError) as exc:
            return [Outcome.unreachable(str(exc))] * len(batch)
        loop = asyncio.get_running_loop()
        start_by = loop.time() + self.options.timeout
        outcomes: list[Outcome] = []
        requests: dict[int, Prepared] = {}
        outage: list[str] = []
        for index, message in enumerate(batch):
            prepared = self._prepare(message)
            if isinstance(prepared, Outcome):
                outcomes.append(prepared)
            else:
                outcomes.append(_NOT_SENT)
                requests[index] = prepared
        todo = iter(requests.items())

        async def lane(transport: httpx.AsyncHTTPTransport) -> None:
            for index, prepared in todo:
                if outage:
                    outcomes[index] = Outcome.unreachable(outage[0])
                    continue
                if loop.time() > start_by:
                    outcomes[index] = Outcome.unreachable(
                        f"not sent: {self.options.display} did not take the batch within "
                        f"{self.options.timeout:g}s"
                    )
                    continue
                outcome = await self._post(transport, batch[index], prepared)
                if outcome.unavailable and not outage:
                    outage.append(outcome.error or "endpoint unavailable")
                outcomes[index] = outcome

        await asyncio.gather(*(lane(t) for t in self._lanes[: len(requests)]))
        return outcomes

    def _prepare(self, message: Message) -> Outcome | Prepared:
        """The URL, headers and body of `message`'s POST, or why it can never be sent."""
        size, limit = len(message.payload), self.options.max_bytes
        if size > limit:
            return Outcome.reject(f"payload is {size} bytes; outboxkit_max_bytes is {limit}")
        try:
            headers = http_url.envelope_headers(message)
        except InvalidMessage as exc:
            return Outcome.reject(str(exc))
        headers["user-agent"] = "outboxkit"
        if self._authorization is not None:
            headers["authorization"] = self._authorization
        return self.options.url_for(message.topic), headers, message.payload

    async def _post(
        self, transport: httpx.AsyncHTTPTransport, message: Message, prepared: Prepared
    ) -> Outcome:
        url, headers, body = prepared
        message_id = message.message_id
        posts = self._posts.get(message_id, 0) + 1
        headers[ATTEMPT] = str(posts)
        if self._secrets:  # signed last: the signature covers every envelope header
            headers |= signature_headers(
                self._secrets, int(time.time()), headers, body, versions=self.options.sign
            )
        request = httpx.Request(
            "POST", url, headers=headers, content=body, extensions={"timeout": self._timeouts}
        )
        try:
            async with asyncio.timeout(self.options.timeout):
                response = await transport.handle_async_request(request)
                try:
                    snippet = await _snippet(response)
                finally:
                    await response.aclose()
        except TimeoutError:
            outcome = Outcome.retry(f"no answer within {self.options.timeout:g}s")
            return self._count(message_id, posts, outcome)
        except httpx.HTTPError as exc:
            return self._count(message_id, posts, self._failed(exc))
        return self._count(message_id, posts, self._answered(response, snippet))

    def _count(self, message_id: UUID, posts: int, outcome: Outcome) -> Outcome:
        """Remember `posts` for the next `Outboxkit-Attempt`, unless the message is settled
        or never reached the endpoint (an outage must not age a message)."""
        if outcome.acked or not outcome.retriable:
            self._posts.pop(message_id, None)
        elif not outcome.unavailable:
            self._posts.pop(message_id, None)
            self._posts[message_id] = posts
            if len(self._posts) > _MAX_TRACKED:
                self._posts.popitem(last=False)
        return outcome

    def _answered(self, response: httpx.Response, snippet: str) -> Outcome:
        status = response.status_code
        if 200 <= status < 300:
            return Outcome.ok()
        error = f"{self.options.display} answered {status}"
        if retry_after := response.headers.get("retry-after"):
            error += f" (Retry-After: {retry_after[:40]})"
        if snippet:
            error += f": {self.options.scrub(snippet)}"
        if status in _AUTH_STATUSES:
            return Outcome.unreachable(f"credentials or signature refused: {error}")
        if 300 <= status < 400:
            return Outcome.unreachable(f"redirected, update the URL: {error}")
        if 400 <= status < 500 and status not in _RETRY_STATUSES | self.options.retry_status:
            return Outcome.reject(error)
        return Outcome.retry(error)

    def _failed(self, exc: httpx.HTTPError) -> Outcome:
        """The outcome for a request that got no HTTP answer."""
        detail = f"{type(exc).__name__}: {self.options.scrub(exc)}"
        where = self.options.display
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.ProxyError):
            return Outcome.unreachable(f"cannot connect to {where}: {detail}")
        if isinstance(exc, httpx.UnsupportedProtocol):
            return Outcome.unreachable(f"cannot post to {where}: {detail}")
        if isinstance(exc, httpx.LocalProtocolError):  # the message cannot be put into HTTP
            return Outcome.reject(f"cannot send to {where}: {detail}")
        if isinstance(exc, httpx.TimeoutException):
            return Outcome.retry(f"no answer from {where}: {detail}")
        return Outcome.retry(f"connection to {where} failed: {detail}")

    async def close(self) -> None:
        """Close the connection pool; safe to call twice."""
        async with self._lock:
            lanes, self._lanes = self._lanes, []
        for transport in lanes:
            await transport.aclose()


async def _snippet(response: httpx.Response) -> str:
    """The beginning of a non-2xx answer's body, on one line (read fully when small, so
    the connection can be kept alive)."""
    if 200 <= response.status_code < 300:
        await response.aread()
        return ""
    data = b""
    async for chunk in response.aiter_bytes():
        data += chunk
        if len(data) > _SNIPPET_BYTES:
            break
    text = " ".join(data[:_SNIPPET_BYTES].decode("utf-8", "replace").split())
    return text[:_SNIPPET_CHARS]


def create(url: str) -> HttpPublisher:
    """A publisher for an `http://` or `https://` URL (see the module docstring)."""
    return HttpPublisher(parse_url(url))
