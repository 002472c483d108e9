"""UUIDv7 message ids."""

from __future__ import annotations

import itertools
import threading
import time
import uuid

from outboxkit.outbox.ids import uuid7


def test_version_and_variant_bits() -> None:
    for _ in range(1000):
        value = uuid7()
        assert value.version == 7
        assert value.variant == uuid.RFC_4122


def test_timestamp_is_unix_milliseconds() -> None:
    before_ms = time.time_ns() // 1_000_000
    value = uuid7()
    # A burst of ids may borrow the next millisecond, so only the lower bound is exact.
    assert value.int >> 80 >= before_ms


def test_strictly_increasing_within_a_process() -> None:
    ids = [uuid7() for _ in range(100_000)]
    assert all(a < b for a, b in itertools.pairwise(ids))
    assert len(set(ids)) == len(ids)


def test_unique_and_increasing_across_threads() -> None:
    per_thread = 5_000
    results: list[list[uuid.UUID]] = [[] for _ in range(8)]
    start = threading.Barrier(len(results))

    def make(out: list[uuid.UUID]) -> None:
        start.wait()
        out.extend(uuid7() for _ in range(per_thread))

    threads = [threading.Thread(target=make, args=(out,)) for out in results]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    every = [value for out in results for value in out]
    assert len(set(every)) == len(results) * per_thread
    for out in results:
        assert out == sorted(out)
