"""The shared text limits and the cleaning of outside text (outbox/limits.py)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from outboxkit.outbox.limits import MAX_KEY_BYTES, clean_text, text_problem, utf8_length
from tests.support import hostile


def test_a_key_of_multibyte_characters_is_limited_in_bytes() -> None:
    assert text_problem("a" * MAX_KEY_BYTES, MAX_KEY_BYTES) is None
    problem = text_problem("😀" * 300, MAX_KEY_BYTES)  # 300 characters, 1,200 bytes
    assert problem is not None and "1200 bytes" in problem


@pytest.mark.parametrize("value", ["a\x00b", "line\nbreak", "tab\there", "\x7f", "\x85"])
def test_control_characters_are_refused(value: str) -> None:
    assert text_problem(value, 100) is not None


def test_newlines_may_be_allowed() -> None:
    assert text_problem("two\nlines", 100, allow_newlines=True) is None
    assert text_problem("nul\x00", 100, allow_newlines=True) is not None


def test_a_lone_surrogate_is_refused() -> None:
    problem = text_problem("a\udcffb", 100)
    assert problem is not None and "surrogate" in problem


def test_clean_text_escapes_and_bounds() -> None:
    assert clean_text("400 bad\x00request") == "400 bad\\x00request"
    assert clean_text("two\nlines\r") == "two\\x0alines\\x0d"
    assert clean_text("lone \udcff") == "lone \\udcff"
    cut = clean_text("é" * 5000, 100)
    assert utf8_length(cut) <= 100 and cut.endswith("…")


def test_clean_text_survives_a_hostile_str() -> None:
    class Hostile:
        def __str__(self) -> str:
            raise RuntimeError("no")

    assert clean_text(Hostile()) == "<unprintable Hostile: RuntimeError>"


@pytest.mark.hostile
@hostile.fuzz
@given(st.text(), st.integers(min_value=1, max_value=4000))
def test_clean_text_output_is_always_storable(value: str, max_bytes: int) -> None:
    with hostile.attempt("error text cleaning (outbox.limits.clean_text)"):
        cleaned = clean_text(value, max_bytes)
    assert utf8_length(cleaned) <= max(max_bytes, 3)
    assert text_problem(cleaned, max(max_bytes, 3)) is None
