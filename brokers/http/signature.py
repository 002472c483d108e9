"""Webhook signatures (`Outboxkit-Signature`): scheme `v2`, and `v1` for rolling upgrades.

Pure (hashlib and hmac only), shared by the HTTP publisher, which signs, and the HTTP
consumer, which verifies. `outboxkit_secret_env=NAME` names the environment variable
holding the secret; it may hold several separated by whitespace: the publisher signs with
each (one `v2=` per secret) and the receiver accepts any, so a secret rotates without
downtime.

A signed request carries two headers:

    Content-Digest: sha-256=:<base64 of the SHA-256 of the body>:      (RFC 9530)
    Outboxkit-Signature: t=<unix seconds>,v2=<hex HMAC-SHA256>[,v2=<hex>...]

`v2` is the lower-case hex HMAC-SHA256, keyed with the secret, of the *canonical string*:
a sequence of netstrings, `ns(x) = <decimal byte length of x> ":" x ","` (so `ns(b"POST")`
is `4:POST,`), in this order:

    ns("outboxkit-v2") ns(t) ns(method) ns(n)
    ns(name_1) ns(value_1) ... ns(name_n) ns(value_n)
    ns(hex SHA-256 of the body)

- `t`: the `t=` value, decimal; `method`: the request method (always `POST`);
- the n *signed fields*: every header named `Content-Type`, `Idempotency-Key` or starting
  with `Outboxkit-`, except `Outboxkit-Signature` itself: every envelope field (message id,
  topic, key, created-at, attempt, content type) and every user header
  (`Outboxkit-Header-*`). Names in lower case, values exactly as sent (the bytes on the
  wire, without surrounding blanks; ours are ASCII), sorted by name, then value, bytewise.
  A header sent twice counts twice;
- the body digest in lower-case hex (64 characters).

The length prefixes make the framing unambiguous whatever a value holds, and `n` binds
which fields exist: adding, removing or changing any signed header, the body or the
timestamp breaks the signature. The path is not signed: proxies and ASGI mounts rewrite it,
and the only thing outboxkit reads from it, the topic, is a signed field that must agree
with the path's. Use one secret per receiving endpoint, so a request signed for one cannot
be replayed to another.

To verify (`Verifier`): take the first `Outboxkit-Signature`, split it on `,`, read `t` and
every `v2`; refuse if `|now - t|` exceeds the tolerance (300 s by default: the replay
window; the receiver's inbox dedups replays inside it); compute the canonical string from
the request as received, taking the body digest from `Content-Digest`, and compare its HMAC
with each `v2` in constant time. This authenticates the request *before* its body is read;
once read, the body must hash to the digest the signature covered.

`v1` (outboxkit before v2) is `t=<t>,v1=<hex>`, the HMAC of
`f"{t}\\n{message_id}\\n{topic}\\n{key}\\n".encode() + body` with the `Outboxkit-Message-Id`,
`Outboxkit-Topic` and `Outboxkit-Key` values as sent ("" without a key). It leaves the
content type, the attempt, the created-at and every user header unsigned, so a receiver
accepts it only with `accept_v1` (`outboxkit_accept_v1=true`), meant for a rolling upgrade.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from outboxkit.outbox.errors import OutboxkitError

SIGNATURE = "outboxkit-signature"
CONTENT_DIGEST = "content-digest"
VERSIONS = ("v1", "v2")
DEFAULT_VERSIONS = ("v2",)

_SIGNED_NAMES = frozenset({"content-type", "idempotency-key"})
_SIGNED_PREFIX = "outboxkit-"
_HEX_DIGEST = re.compile(r"[0-9a-f]{64}")
_MAX_SIGNATURE_CHARS = 4096  # room for dozens of secrets; a longer header is hostile
_MAX_TIMESTAMP_DIGITS = 15

Headers = Mapping[str, str] | Iterable[tuple[str, str]]


class SignatureRefused(OutboxkitError):
    """The request's signature is missing, malformed, outside the tolerance or wrong."""


def netstring(data: bytes) -> bytes:
    """`data` framed as a netstring: `<length>:<data>,`."""
    return b"%d:%s," % (len(data), data)


def body_digest(body: bytes) -> bytes:
    """The SHA-256 of `body` (what `Content-Digest` carries and the v2 signature covers)."""
    return hashlib.sha256(body).digest()


def content_digest(digest: bytes) -> str:
    """The `Content-Digest` header value for a SHA-256 `digest`."""
    return f"sha-256=:{base64.b64encode(digest).decode()}:"


def signed_fields(headers: Headers) -> list[tuple[bytes, bytes]]:
    """The header fields v2 signs, as wire bytes, sorted (see the module docstring)."""
    fields = []
    for name, value in _pairs(headers):
        lower = name.lower()
        if lower == SIGNATURE or not (lower in _SIGNED_NAMES or lower.startswith(_SIGNED_PREFIX)):
            continue
        fields.append((_wire(lower), _wire(value.strip(" \t"))))
    fields.sort()
    return fields


def canonical_v2(timestamp: int, method: str, headers: Headers, digest: bytes) -> bytes:
    """The bytes the `v2` HMAC covers; `digest` is the body's SHA-256."""
    fields = signed_fields(headers)
    parts = [b"outboxkit-v2", b"%d" % timestamp, _wire(method), b"%d" % len(fields)]
    for name, value in fields:
        parts += [name, value]
    parts.append(digest.hex().encode())
    return b"".join(netstring(part) for part in parts)


def canonical_v1(timestamp: int, headers: Headers, body: bytes) -> bytes:
    """The bytes the `v1` HMAC covers (the old scheme; see the module docstring)."""
    first = _first_values(headers)
    message_id, topic, key = (
        first.get(n, "") for n in ("outboxkit-message-id", "outboxkit-topic", "outboxkit-key")
    )
    return f"{timestamp}\n{message_id}\n{topic}\n{key}\n".encode() + body


def signature_headers(
    secrets: Sequence[bytes],
    timestamp: int,
    headers: Headers,
    body: bytes,
    *,
    versions: Sequence[str] = DEFAULT_VERSIONS,
    method: str = "POST",
) -> dict[str, str]:
    """`Content-Digest` and `Outboxkit-Signature` for a request with these `headers`
    (every envelope header, the attempt included) and `body`."""
    digest = body_digest(body)
    items = [f"t={timestamp}"]
    for version in versions:
        if version == "v2":
            content = canonical_v2(timestamp, method, headers, digest)
        elif version == "v1":
            content = canonical_v1(timestamp, headers, body)
        else:
            raise ValueError(f"unknown signature version {version!r}")
        items += (f"{version}={_hmac(s, content)}" for s in secrets)
    return {CONTENT_DIGEST: content_digest(digest), SIGNATURE: ",".join(items)}


@dataclass(frozen=True)
class Signature:
    """A parsed `Outboxkit-Signature` value."""

    timestamp: int
    v1: tuple[str, ...]
    v2: tuple[str, ...]


def parse_signature(raw: str) -> Signature:
    """`raw` parsed; `SignatureRefused` unless it has one `t` and a well-formed digest.
    Items of unknown versions are ignored (a newer sender may add some)."""
    if len(raw) > _MAX_SIGNATURE_CHARS:
        raise SignatureRefused("malformed signature")
    timestamps: set[int] = set()
    found: dict[str, list[str]] = {"v1": [], "v2": []}
    for item in raw.split(","):
        name, _, value = item.strip(" \t").partition("=")
        if name == "t":
            if not (value.isascii() and value.isdigit()) or len(value) > _MAX_TIMESTAMP_DIGITS:
                raise SignatureRefused("malformed signature")
            timestamps.add(int(value))
        elif name in found and _HEX_DIGEST.fullmatch(value):
            found[name].append(value)
    if len(timestamps) != 1 or not (found["v1"] or found["v2"]):
        raise SignatureRefused("malformed signature")
    return Signature(timestamps.pop(), tuple(found["v1"]), tuple(found["v2"]))


@dataclass(frozen=True)
class BodyCheck:
    """What the body of a request whose head passed must still satisfy."""

    digest: bytes | None = None  # v2: the SHA-256 the signature covered
    v1: tuple[Sequence[bytes], int, tuple[str, ...], tuple[tuple[str, str], ...]] | None = None

    def check(self, body: bytes) -> None:
        """`SignatureRefused` unless `body` is the one the signature covered."""
        if self.digest is not None:
            if not hmac.compare_digest(body_digest(body), self.digest):
                raise SignatureRefused("the body does not match its Content-Digest")
            return
        assert self.v1 is not None
        secrets, timestamp, candidates, headers = self.v1
        if not _matches(secrets, canonical_v1(timestamp, headers, body), candidates):
            raise SignatureRefused("signature mismatch")


class Verifier:
    """Checks `Outboxkit-Signature`: `head(headers, now=...)` before the body is read gives
    the `BodyCheck` whose `check(body)` ends the verification; either raises
    `SignatureRefused` (answer 401)."""

    def __init__(
        self, secrets: Sequence[bytes], *, tolerance: float = 300.0, accept_v1: bool = False
    ) -> None:
        self.secrets = list(secrets)
        self.tolerance = tolerance
        self.accept_v1 = accept_v1

    def head(self, headers: Headers, *, now: float, method: str = "POST") -> BodyCheck:
        """Check the signature as far as the head allows; what the body must satisfy."""
        pairs = tuple(_pairs(headers))
        first = _first_values(pairs)
        raw = first.get(SIGNATURE)
        if not raw:
            raise SignatureRefused("missing signature")
        signature = parse_signature(raw)
        if not abs(now - signature.timestamp) <= self.tolerance:
            raise SignatureRefused("signature timestamp outside the tolerance")
        v1 = (self.secrets, signature.timestamp, signature.v1, pairs)
        if signature.v2:
            digest = parse_content_digest(first.get(CONTENT_DIGEST, ""))
            if digest is not None:
                content = canonical_v2(signature.timestamp, method, pairs, digest)
                if _matches(self.secrets, content, signature.v2):
                    return BodyCheck(digest=digest)
            if not (self.accept_v1 and signature.v1):
                if digest is None:
                    raise SignatureRefused("missing or malformed Content-Digest")
                raise SignatureRefused("signature mismatch")
        elif not self.accept_v1:
            raise SignatureRefused(
                "signature scheme v1 is refused: sign with v2 "
                "(outboxkit_accept_v1=true accepts v1 during an upgrade)"
            )
        return BodyCheck(v1=v1)

    def verify(self, headers: Headers, body: bytes, *, now: float, method: str = "POST") -> None:
        """Check a whole request; `SignatureRefused` if its signature fails."""
        self.head(headers, now=now, method=method).check(body)


def parse_content_digest(raw: str) -> bytes | None:
    """The SHA-256 in a `Content-Digest` value (`sha-256=:<base64>:`), or None."""
    for member in raw.split(","):
        name, _, value = member.strip(" \t").partition("=")
        if name != "sha-256" or len(value) < 2 or value[0] != ":" or value[-1] != ":":
            continue
        try:
            digest = base64.b64decode(value[1:-1].encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            return None
        return digest if len(digest) == hashlib.sha256().digest_size else None
    return None


def _hmac(secret: bytes, content: bytes) -> str:
    return hmac.new(secret, content, hashlib.sha256).hexdigest()


def _matches(secrets: Sequence[bytes], content: bytes, candidates: Sequence[str]) -> bool:
    found = False
    for secret in secrets:
        expected = _hmac(secret, content)
        for candidate in candidates:
            found |= hmac.compare_digest(expected, candidate)  # no early exit: constant time
    return found


def _pairs(headers: Headers) -> Iterable[tuple[str, str]]:
    return headers.items() if isinstance(headers, Mapping) else headers


def _first_values(headers: Headers) -> dict[str, str]:
    first: dict[str, str] = {}
    for name, value in _pairs(headers):
        first.setdefault(name.lower(), value)
    return first


def _wire(value: str) -> bytes:
    """A header value's bytes on the wire (HTTP/1.1 values are latin-1 at most)."""
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        raise SignatureRefused("a header value is not latin-1 text") from None
