import math
import re

import pytest

from relay.metrics import (
    BATCH_SECONDS_BUCKETS,
    Histogram,
    RelayMetrics,
    escape_label_value,
    format_value,
)

EXPECTED = """\
# HELP outboxkit_relay_published_total Messages durably acknowledged by the broker.
# TYPE outboxkit_relay_published_total counter
outboxkit_relay_published_total{topic="order.created"} 3
outboxkit_relay_published_total{topic="order.paid"} 1
# HELP outboxkit_relay_failed_total Retriable publish failures.
# TYPE outboxkit_relay_failed_total counter
outboxkit_relay_failed_total{topic="order.paid"} 2
# HELP outboxkit_relay_dead_lettered_total Messages moved to the dead-letter table.
# TYPE outboxkit_relay_dead_lettered_total counter
outboxkit_relay_dead_lettered_total{topic="order.paid"} 1
# HELP outboxkit_relay_backlog_messages Pending outbox rows.
# TYPE outboxkit_relay_backlog_messages gauge
outboxkit_relay_backlog_messages 7
# HELP outboxkit_relay_oldest_pending_age_seconds Age of the oldest pending outbox row.
# TYPE outboxkit_relay_oldest_pending_age_seconds gauge
outboxkit_relay_oldest_pending_age_seconds 1.5
# HELP outboxkit_relay_owned_partitions Partitions owned by this relay instance.
# TYPE outboxkit_relay_owned_partitions gauge
outboxkit_relay_owned_partitions 4
# HELP outboxkit_relay_dead_letters Rows in the dead-letter table.
# TYPE outboxkit_relay_dead_letters gauge
outboxkit_relay_dead_letters 12
# HELP outboxkit_relay_up 1 while the relay process is running.
# TYPE outboxkit_relay_up gauge
outboxkit_relay_up 1
# HELP outboxkit_relay_batch_publish_seconds Duration of one publish(batch) call.
# TYPE outboxkit_relay_batch_publish_seconds histogram
outboxkit_relay_batch_publish_seconds_bucket{le="0.1"} 1
outboxkit_relay_batch_publish_seconds_bucket{le="1.0"} 2
outboxkit_relay_batch_publish_seconds_bucket{le="+Inf"} 3
outboxkit_relay_batch_publish_seconds_sum 4.5625
outboxkit_relay_batch_publish_seconds_count 3
"""


def test_renders_a_small_registry_exactly() -> None:
    metrics = RelayMetrics(batch_buckets=(1.0, 0.1))  # unsorted on purpose
    metrics.published("order.paid")
    metrics.published_counts({"order.created": 2})
    metrics.published("order.created")
    metrics.failed("order.paid", 2)
    metrics.dead_lettered("order.paid")
    metrics.set_backlog(7)
    metrics.set_oldest_pending_age(1.5)
    metrics.set_owned_partitions(4)
    metrics.set_dead_letters(12)
    for seconds in (0.0625, 0.5, 4.0):
        metrics.observe_batch(seconds)
    assert metrics.render() == EXPECTED


def test_a_fresh_registry_renders_every_family_with_zero_gauges() -> None:
    text = RelayMetrics().render()
    assert text.count("# TYPE ") == 9
    assert "outboxkit_relay_backlog_messages 0\n" in text
    assert "outboxkit_relay_up 1\n" in text
    assert "{topic=" not in text
    assert 'outboxkit_relay_batch_publish_seconds_bucket{le="+Inf"} 0\n' in text


def test_counter_names_end_in_total() -> None:
    text = RelayMetrics().render()
    counters = re.findall(r"^# TYPE (\S+) counter$", text, re.MULTILINE)
    assert len(counters) == 3
    assert all(name.endswith("_total") for name in counters)


def test_a_topic_label_is_escaped() -> None:
    metrics = RelayMetrics()
    metrics.published('evil"topic\\with\nnewline')
    assert (
        'outboxkit_relay_published_total{topic="evil\\"topic\\\\with\\nnewline"} 1\n'
        in metrics.render()
    )


@pytest.mark.parametrize(
    ("raw", "escaped"),
    [
        ("plain", "plain"),
        ('a"b', 'a\\"b'),
        ("a\\b", "a\\\\b"),
        ("a\nb", "a\\nb"),
        ('\\"', '\\\\\\"'),  # backslash first, so a quote's escape is not doubled
    ],
)
def test_escape_label_value(raw: str, escaped: str) -> None:
    assert escape_label_value(raw) == escaped


def test_histogram_buckets_are_cumulative_and_inclusive() -> None:
    histogram = Histogram((0.1, 1.0, 10.0))
    for value in (0.05, 0.1, 0.5, 1.0, 20.0):
        histogram.observe(value)
    assert histogram.cumulative() == [(0.1, 2), (1.0, 4), (10.0, 4), (math.inf, 5)]
    assert histogram.count == 5
    assert histogram.sum == pytest.approx(21.65)


def test_default_histogram_renders_sum_count_and_monotonic_buckets() -> None:
    metrics = RelayMetrics()
    for seconds in (0.0003, 0.002, 0.002, 0.3, 30.0):
        metrics.observe_batch(seconds)
    text = metrics.render()
    buckets = re.findall(r'_bucket\{le="([^"]+)"\} (\d+)', text)
    assert [le for le, _ in buckets] == [*map(repr, BATCH_SECONDS_BUCKETS), "+Inf"]
    counts = [int(n) for _, n in buckets]
    assert counts == sorted(counts)
    assert counts[0] == 1
    assert counts[-1] == 5
    assert "outboxkit_relay_batch_publish_seconds_count 5\n" in text
    sum_line = re.search(r"_sum (\S+)\n", text)
    assert sum_line is not None
    assert float(sum_line.group(1)) == pytest.approx(30.3043)


def test_counters_refuse_to_decrease() -> None:
    metrics = RelayMetrics()
    with pytest.raises(ValueError, match="cannot decrease"):
        metrics.published("t", -1)
    with pytest.raises(ValueError, match="cannot decrease"):
        metrics.published_counts({"t": -2})


@pytest.mark.parametrize(
    ("value", "text"),
    [(3, "3"), (0.25, "0.25"), (math.inf, "+Inf"), (-math.inf, "-Inf"), (math.nan, "NaN")],
)
def test_format_value(value: float, text: str) -> None:
    assert format_value(value) == text
