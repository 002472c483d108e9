"""The relay's metrics: what a Prometheus scrape reads, parsed back with prometheus-client's
own parser rather than compared as text (the library owns the exposition format)."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from outboxkit.relay.metrics import BATCH_SECONDS_BUCKETS, RelayMetrics


def samples(metrics: RelayMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(metrics.render()):
        for sample in family.samples:
            assert isinstance(sample, Sample)
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def families(metrics: RelayMetrics) -> dict[str, str]:
    return {f.name: f.type for f in text_string_to_metric_families(metrics.render())}


def test_a_small_registry_reads_back_exactly() -> None:
    metrics = RelayMetrics(batch_buckets=(1.0, 0.1), process=False)  # unsorted on purpose
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
    got = samples(metrics)
    relay = "outboxkit_relay_"
    assert got[(relay + "published_total", (("topic", "order.created"),))] == 3
    assert got[(relay + "published_total", (("topic", "order.paid"),))] == 1
    assert got[(relay + "failed_total", (("topic", "order.paid"),))] == 2
    assert got[(relay + "dead_lettered_total", (("topic", "order.paid"),))] == 1
    assert got[(relay + "backlog_messages", ())] == 7
    assert got[(relay + "oldest_pending_age_seconds", ())] == 1.5
    assert got[(relay + "owned_partitions", ())] == 4
    assert got[(relay + "dead_letters", ())] == 12
    assert got[(relay + "up", ())] == 1
    histogram = relay + "batch_publish_seconds"
    assert got[(histogram + "_bucket", (("le", "0.1"),))] == 1
    assert got[(histogram + "_bucket", (("le", "1.0"),))] == 2
    assert got[(histogram + "_bucket", (("le", "+Inf"),))] == 3
    assert got[(histogram + "_sum", ())] == 4.5625
    assert got[(histogram + "_count", ())] == 3


def test_the_families_and_their_types() -> None:
    found = families(RelayMetrics(process=False))
    relay = {
        name: kind
        for name, kind in found.items()
        # the text format shows a histogram's `_created` as a gauge family of its own
        if name.startswith("outboxkit_relay_") and not name.endswith("_created")
    }
    assert relay == {
        "outboxkit_relay_published": "counter",
        "outboxkit_relay_failed": "counter",
        "outboxkit_relay_dead_lettered": "counter",
        "outboxkit_relay_backlog_messages": "gauge",
        "outboxkit_relay_oldest_pending_age_seconds": "gauge",
        "outboxkit_relay_owned_partitions": "gauge",
        "outboxkit_relay_dead_letters": "gauge",
        "outboxkit_relay_up": "gauge",
        "outboxkit_relay_batch_publish_seconds": "histogram",
    }


def test_a_fresh_registry_has_zero_gauges_and_no_topics() -> None:
    metrics = RelayMetrics()
    text = metrics.render()
    got = samples(metrics)
    assert got[("outboxkit_relay_backlog_messages", ())] == 0
    assert got[("outboxkit_relay_batch_publish_seconds_bucket", (("le", "+Inf"),))] == 0
    assert "topic=" not in text


def test_the_process_collectors_are_there() -> None:
    found = families(RelayMetrics())
    assert "process_resident_memory_bytes" in found  # Linux: from /proc
    assert "python_info" in found
    assert "process_resident_memory_bytes" not in families(RelayMetrics(process=False))


def test_counters_have_created_timestamps() -> None:
    metrics = RelayMetrics(process=False)
    metrics.published("t")
    got = samples(metrics)
    assert got[("outboxkit_relay_published_created", (("topic", "t"),))] > 0


def test_two_relays_in_one_process_do_not_share_counts() -> None:
    first, second = RelayMetrics(), RelayMetrics()
    first.published("t", 5)
    assert ("outboxkit_relay_published_total", (("topic", "t"),)) not in samples(second)


def test_a_hostile_topic_label_reads_back_unchanged() -> None:
    metrics = RelayMetrics(process=False)
    topic = 'evil"topic\\with\nnewline'
    metrics.published(topic)
    assert samples(metrics)[("outboxkit_relay_published_total", (("topic", topic),))] == 1


def test_default_buckets_are_cumulative() -> None:
    metrics = RelayMetrics(process=False)
    for seconds in (0.0003, 0.002, 0.002, 0.3, 30.0):
        metrics.observe_batch(seconds)
    got = samples(metrics)
    name = "outboxkit_relay_batch_publish_seconds_bucket"
    counts = [got[(name, (("le", repr(b)),))] for b in BATCH_SECONDS_BUCKETS]
    assert counts == sorted(counts) and counts[0] == 1
    assert got[(name, (("le", "+Inf"),))] == 5
    assert got[("outboxkit_relay_batch_publish_seconds_sum", ())] == pytest.approx(30.3043)


def test_counters_refuse_to_decrease() -> None:
    metrics = RelayMetrics(process=False)
    with pytest.raises(ValueError, match="cannot decrease"):
        metrics.published("t", -1)
    with pytest.raises(ValueError, match="cannot decrease"):
        metrics.published_counts({"t": -2})
