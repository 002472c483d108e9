"""Webhook signatures (brokers.http.signature): the v2 recipe as documented, what it binds,
the v1 fallback for rolling upgrades, and fuzzed hostile signatures."""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from outboxkit.brokers.http import options as http_url
from outboxkit.brokers.http.signature import (
    SignatureRefused,
    Verifier,
    canonical_v2,
    parse_content_digest,
    signature_headers,
)
from outboxkit.outbox.ids import uuid7
from outboxkit.outbox.message import BYTES_CONTENT_TYPE, Message
from tests.support import hostile

NOW = 1_750_000_000


def tricky() -> Message:
    return Message(
        message_id=uuid7(),
        topic="orders/é 100%.created",
        payload=bytes(range(256)),
        key=" clé: 50% ",
        headers={"X-Trace": "  a b  ", "é": "ü%20", "traceparent": "00-ab-01", "": "empty"},
        content_type=BYTES_CONTENT_TYPE,
        created_at=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
    )


def signed(message: Message, secrets: list[bytes], **options: object) -> dict[str, str]:
    headers = http_url.envelope_headers(message) | {"outboxkit-attempt": "1"}
    return headers | signature_headers(secrets, NOW, headers, message.payload, **options)  # type: ignore[arg-type]


def refusal(
    verifier: Verifier, headers: dict[str, str], body: bytes, now: float = NOW
) -> str | None:
    try:
        verifier.verify(headers, body, now=now)
    except SignatureRefused as exc:
        return str(exc)
    return None


def test_the_documented_v2_recipe_done_by_hand() -> None:
    message = tricky()
    headers = signed(message, [b"one"])
    digest = hashlib.sha256(message.payload).digest()
    assert headers["content-digest"] == f"sha-256=:{base64.b64encode(digest).decode()}:"

    def ns(data: bytes) -> bytes:
        return str(len(data)).encode() + b":" + data + b","

    fields = sorted(
        (name.encode(), value.encode())
        for name, value in headers.items()
        if name in ("content-type", "idempotency-key")
        or (name.startswith("outboxkit-") and name != "outboxkit-signature")
    )
    canonical = (
        ns(b"outboxkit-v2") + ns(str(NOW).encode()) + ns(b"POST") + ns(str(len(fields)).encode())
    )
    for name, value in fields:
        canonical += ns(name) + ns(value)
    canonical += ns(digest.hex().encode())
    expected = hmac.new(b"one", canonical, hashlib.sha256).hexdigest()
    assert headers["outboxkit-signature"] == f"t={NOW},v2={expected}"
    names = {name for name, _ in fields}
    assert {b"outboxkit-attempt", b"outboxkit-created-at", b"content-type"} <= names
    assert any(name.startswith(b"outboxkit-header-") for name in names)


def test_v2_binds_every_envelope_field_user_header_and_the_body() -> None:
    message = tricky()
    headers = signed(message, [b"one"])
    verifier = Verifier([b"one"])
    assert refusal(verifier, headers, message.payload) is None
    for name in headers:
        if name == "outboxkit-signature":
            continue
        changed = headers | {name: headers[name] + "0"}
        assert refusal(verifier, changed, message.payload) is not None, name
        if name != "content-digest":
            removed = {k: v for k, v in headers.items() if k != name}
            assert refusal(verifier, removed, message.payload) is not None, name
    for extra in ("outboxkit-header-x", "outboxkit-anything", "idempotency-key"):
        duplicated = [*headers.items(), (extra, "%00")]
        with pytest.raises(SignatureRefused):
            verifier.verify(duplicated, message.payload, now=NOW)
    assert (
        refusal(verifier, headers | {"outboxkit-attempt": "99"}, message.payload)
        == "signature mismatch"
    )
    assert refusal(verifier, headers, message.payload + b"x") is not None
    # Headers outside the envelope are not signed: proxies add and change those.
    assert (
        refusal(
            verifier,
            headers | {"user-agent": "proxy", "x-forwarded-for": "1.2.3.4"},
            message.payload,
        )
        is None
    )


def test_the_worked_example_in_the_docs_is_right() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "webhooks.md").read_text()
    message_id = "0190b8a1-7c3e-7000-8000-000000000001"
    headers = {
        "content-type": "application/json",
        "idempotency-key": message_id,
        "outboxkit-message-id": message_id,
        "outboxkit-topic": "orders.created",
        "outboxkit-key": "order-42",
        "outboxkit-created-at": "2025-06-15T12:00:00+00:00",
        "outboxkit-attempt": "1",
        "outboxkit-header-traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "user-agent": "outboxkit",
    }
    body = b'{"order_id":42}'
    canonical = canonical_v2(1_750_000_000, "POST", headers, hashlib.sha256(body).digest())
    assert canonical.decode() in docs
    for name, value in signature_headers([b"whsec-example"], 1_750_000_000, headers, body).items():
        assert f"{name.title()}: {value}" in docs


def test_the_head_is_checked_before_the_body() -> None:
    message = tricky()
    headers = signed(message, [b"one"])
    check = Verifier([b"one"]).head(headers, now=NOW)  # no body needed
    check.check(message.payload)
    with pytest.raises(SignatureRefused, match="Content-Digest"):
        check.check(b"another body")
    no_digest = {k: v for k, v in headers.items() if k != "content-digest"}
    with pytest.raises(SignatureRefused, match="Content-Digest"):
        Verifier([b"one"]).head(no_digest, now=NOW)


def test_rotation_tolerance_and_malformed_signatures() -> None:
    message = tricky()
    headers = signed(message, [b"old", b"new"])
    body = message.payload
    assert refusal(Verifier([b"new"]), headers, body) is None
    assert refusal(Verifier([b"old"]), headers, body) is None
    assert refusal(Verifier([b"other"]), headers, body) == "signature mismatch"
    assert "tolerance" in str(
        refusal(Verifier([b"new"], tolerance=300), headers, body, now=NOW + 301)
    )
    assert "tolerance" in str(
        refusal(Verifier([b"new"], tolerance=300), headers, body, now=NOW - 301)
    )
    unsigned = {k: v for k, v in headers.items() if k != "outboxkit-signature"}
    assert refusal(Verifier([b"new"]), unsigned, body) == "missing signature"
    for junk in (
        "v2=é,t=x",
        "t=1,t=2,v2=" + "0" * 64,
        "t=1",
        "t=1,v2=abc",
        "t=" + "9" * 16 + ",v2=" + "0" * 64,
    ):
        assert (
            refusal(Verifier([b"new"]), headers | {"outboxkit-signature": junk}, body)
            == "malformed signature"
        )


def v1_signed(message: Message, secret: bytes) -> dict[str, str]:
    """A request as outboxkit signed it before v2 (the documented v1 recipe, by hand)."""
    headers = http_url.envelope_headers(message) | {"outboxkit-attempt": "1"}
    content = (
        f"{NOW}\n{headers['outboxkit-message-id']}\n{headers['outboxkit-topic']}\n"
        f"{headers.get('outboxkit-key', '')}\n".encode()
        + message.payload
    )
    digest = hmac.new(secret, content, hashlib.sha256).hexdigest()
    return headers | {"outboxkit-signature": f"t={NOW},v1={digest}"}


def test_v1_is_refused_unless_accepted_for_an_upgrade() -> None:
    message = tricky()
    old = v1_signed(message, b"one")
    assert "v1" in str(refusal(Verifier([b"one"]), old, message.payload))
    upgrading = Verifier([b"one"], accept_v1=True)
    assert refusal(upgrading, old, message.payload) is None
    assert refusal(upgrading, old, message.payload + b"x") == "signature mismatch"
    assert (
        refusal(upgrading, old | {"outboxkit-topic": "x"}, message.payload) == "signature mismatch"
    )
    # A publisher signing both is verified by either kind of receiver.
    both = signed(message, [b"one"], versions=("v1", "v2"))
    assert both["outboxkit-signature"].split(",")[1] == old["outboxkit-signature"].split(",")[1]
    assert refusal(Verifier([b"one"]), both, message.payload) is None
    assert refusal(upgrading, both, message.payload) is None


def test_content_digest_parsing() -> None:
    digest = hashlib.sha256(b"x").digest()
    good = base64.b64encode(digest).decode()
    assert parse_content_digest(f"sha-512=:AAAA:, sha-256=:{good}:") == digest
    for junk in (
        "",
        "sha-256=AAAA",
        f"sha-256=:{good}",
        "sha-256=:!!!!:",
        "sha-256=:AAAA:",
        "sha-256=:é:",
    ):
        assert parse_content_digest(junk) is None


# -- fuzzing ----------------------------------------------------------------------------

_NAMES = st.sampled_from(
    [
        "outboxkit-signature",
        "content-digest",
        "outboxkit-topic",
        "outboxkit-header-x",
        "content-type",
        "x",
    ]
) | st.text(max_size=12)
_SIGNATURES = st.text(max_size=200) | st.builds(
    lambda t, v, d: f"t={t},{v}={d}",
    st.integers(min_value=NOW - 400, max_value=NOW + 400),
    st.sampled_from(["v1", "v2", "v3", "V2"]),
    st.text(alphabet="0123456789abcdefABCDEF", min_size=60, max_size=66),
)


@pytest.mark.hostile
@hostile.fuzz
@given(
    st.lists(st.tuples(_NAMES, st.text(max_size=40)), max_size=8),
    _SIGNATURES,
    st.binary(max_size=64),
    st.booleans(),
)
def test_fuzzed_requests_never_crash_the_signature_check(
    headers: list[tuple[str, str]], signature: str, body: bytes, accept_v1: bool
) -> None:
    pairs = [("outboxkit-signature", signature), *headers]
    verifier = Verifier([b"one", b"two"], accept_v1=accept_v1)
    with hostile.attempt(
        "webhook signature check (http_signature.Verifier)", refused=(SignatureRefused,)
    ) as outcome:
        verifier.verify(pairs, body, now=NOW)
    assert not outcome.accepted  # a forged signature verified


_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)
_MESSAGES = st.builds(
    lambda topic, key, headers, payload: Message(
        message_id=uuid7(), topic=topic or "t", payload=payload, key=key, headers=headers
    ),
    _TEXT,
    st.none() | _TEXT,
    st.dictionaries(_TEXT, _TEXT, max_size=4),
    st.binary(max_size=100),
)


@pytest.mark.hostile
@hostile.fuzz
@given(_MESSAGES, st.data())
def test_a_v2_signature_verifies_and_any_single_change_breaks_it(
    message: Message, data: st.DataObject
) -> None:
    headers = signed(message, [b"secret"])
    verifier = Verifier([b"secret"])
    verifier.verify(headers, message.payload, now=NOW)
    body = message.payload
    change = data.draw(st.sampled_from(["value", "add", "remove", "body", "time"]))
    pairs = list(headers.items())
    signed_names = [n for n, _ in pairs if n not in ("outboxkit-signature", "content-digest")]
    if change == "value":
        name = data.draw(st.sampled_from(signed_names))
        new = data.draw(st.text(alphabet="abcdefghij%0123456789-", min_size=1, max_size=10))
        pairs = [(n, v + new if n == name else v) for n, v in pairs]
    elif change == "add":
        name = data.draw(st.sampled_from(["outboxkit-header-", "outboxkit-", ""]))
        name += data.draw(st.text(alphabet="abcxyz-", min_size=1, max_size=8))
        pairs.append((name if name.startswith("outboxkit-") else "idempotency-key", "v"))
    elif change == "remove":
        name = data.draw(st.sampled_from(signed_names))
        pairs = [(n, v) for n, v in pairs if n != name]
    elif change == "body":
        body = body + data.draw(st.binary(min_size=1, max_size=4))
    else:
        timestamp = data.draw(
            st.integers(min_value=NOW - 300, max_value=NOW + 300).filter(lambda t: t != NOW)
        )
        pairs = [(n, v.replace(f"t={NOW}", f"t={timestamp}")) for n, v in pairs]
    with hostile.attempt(
        "webhook signature check (http_signature.Verifier)", refused=(SignatureRefused,)
    ) as outcome:
        verifier.verify(pairs, body, now=NOW)
    assert outcome.refused is not None, change
