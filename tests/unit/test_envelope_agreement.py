"""The write path and the consume path agree: whatever `outbox.write` accepts, every consumer's
envelope check accepts too (else a message we wrote would be dead-lettered on arrival)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from outboxkit import outbox
from outboxkit.outbox.envelope import from_headers, to_headers
from outboxkit.outbox.errors import InvalidMessage
from tests.support import hostile

texts = st.text(min_size=1, max_size=300) | st.sampled_from(["order-1", "é" * 600, "😀" * 300])


@pytest.mark.hostile
@hostile.fuzz
@given(
    topic=texts,
    key=st.none() | texts,
    headers=st.dictionaries(texts, st.text(max_size=200), max_size=5),
    content_type=st.none() | texts | st.sampled_from(["text/plain\r\nX: y", "a" * 300]),
)
def test_every_message_the_write_path_accepts_is_a_well_formed_envelope(
    topic: str, key: str | None, headers: dict[str, str], content_type: str | None
) -> None:
    with hostile.attempt("write path message checks", refused=(InvalidMessage,)) as outcome:
        message = outbox.message(
            topic, {"n": 1}, key=key, headers=headers, content_type=content_type
        )
    if not outcome.accepted:
        return
    decoded = from_headers(to_headers(message), message.payload)
    assert (decoded.message_id, decoded.topic, decoded.key) == (
        message.message_id,
        message.topic,
        message.key,
    )
    assert decoded.headers == message.headers
    assert decoded.content_type == message.content_type
