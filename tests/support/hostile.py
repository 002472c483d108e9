"""Counting what hostile-input tests try, so RELIABILITY.md can report it.

Each fuzz test (Hypothesis) or corpus test feeds one input to one parser inside `attempt`:

    with hostile.attempt("NATS URL options", refused=(ConfigurationError,)) as outcome:
        options = parse(url)
    if outcome.accepted:
        ...  # assert the accepted value is well-formed

An exception listed in `refused` is the parser saying no (counted, swallowed); any other
exception is a crash (counted, re-raised so the test fails). `hostile.lost(name, n)` records
messages a test found missing (it also fails the test). The counts are written as JSON to
`$OUTBOXKIT_HOSTILE_TALLY` at the end of the pytest session (see tests/conftest.py), which
`scripts/hostile_report.py` turns into RELIABILITY.md's "hostile input" section.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hypothesis import HealthCheck, settings

ENV = "OUTBOXKIT_HOSTILE_TALLY"
# Bounded by count, not by time, and the same examples on every run (derandomize).
EXAMPLES = int(os.environ.get("OUTBOXKIT_HOSTILE_EXAMPLES", "500"))
fuzz = settings(
    max_examples=EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@dataclass
class Counts:
    tried: int = 0
    refused: int = 0
    crashes: int = 0
    lost: int = 0
    reasons: dict[str, int] = field(default_factory=dict)


_tally: dict[str, Counts] = {}


@dataclass
class Outcome:
    accepted: bool = False
    refused: BaseException | None = None


@contextmanager
def attempt(parser: str, *, refused: tuple[type[BaseException], ...] = ()) -> Iterator[Outcome]:
    """Run one hostile input through `parser`; see the module docstring."""
    counts = _tally.setdefault(parser, Counts())
    counts.tried += 1
    outcome = Outcome()
    try:
        yield outcome
    except refused as exc:
        counts.refused += 1
        name = type(exc).__name__
        counts.reasons[name] = counts.reasons.get(name, 0) + 1
        outcome.refused = exc
        return
    except BaseException:
        counts.crashes += 1
        raise
    outcome.accepted = True


def tried(parser: str, *, refused: bool, reason: str | None = None) -> None:
    """Record one input whose outcome a test decided itself (e.g. a broker round trip)."""
    counts = _tally.setdefault(parser, Counts())
    counts.tried += 1
    if refused:
        counts.refused += 1
        if reason:
            counts.reasons[reason] = counts.reasons.get(reason, 0) + 1


def lost(parser: str, count: int) -> None:
    """Record `count` well-formed messages that went missing; fails the test if any."""
    counts = _tally.setdefault(parser, Counts())
    counts.lost += count
    assert count == 0, f"{parser}: {count} well-formed message(s) lost"


def write_tally() -> None:
    """Merge this session's counts into `$OUTBOXKIT_HOSTILE_TALLY`, if set."""
    target = os.environ.get(ENV)
    if not target or not _tally:
        return
    path = Path(target)
    merged: dict[str, dict[str, object]] = {}
    if path.exists():
        merged = json.loads(path.read_text())
    for name, counts in _tally.items():
        before = merged.get(name)
        if isinstance(before, dict):
            for field_name in ("tried", "refused", "crashes", "lost"):
                value = before.get(field_name, 0)
                assert isinstance(value, int)
                setattr(counts, field_name, getattr(counts, field_name) + value)
        merged[name] = asdict(counts)
    path.write_text(json.dumps(merged, indent=2, sort_keys=True))
