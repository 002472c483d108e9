"""The relay's metrics, kept and rendered by `prometheus-client`.

One `RelayMetrics` per relay, each with a registry of its own (several relays in one process,
as in tests, do not share or collide). The relay's hot path calls its counting methods once
per batch, not per message; the ops server calls `render()` on a scrape.

    metrics = RelayMetrics()
    metrics.published_counts({"order.created": 40, "order.paid": 2})
    metrics.observe_batch(0.012)
    metrics.set_backlog(1_250)
    text = metrics.render()

prometheus-client brings the exposition conventions (escaping, `_total` and `_created`
samples, `+Inf` buckets) and the process collectors (`process_*`: CPU, memory, open file
descriptors; `python_*`: GC and platform), instead of a renderer of our own.

The only label is `topic`. Topics are user data (escaped by the library); they are also the
only source of cardinality, bounded by the application's set of topics. No metric carries a
DSN, broker URL or any other connection detail, so a scrape can never leak credentials: keep
it that way when adding metrics.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

#: Upper bounds (seconds) of the batch publish histogram; `+Inf` is implied.
BATCH_SECONDS_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

CONTENT_TYPE = CONTENT_TYPE_LATEST
"""The HTTP content type of `RelayMetrics.render()`'s output."""

_PREFIX = "outboxkit_relay_"


class RelayMetrics:
    """The relay's counters, gauges and histogram; `render()` gives the Prometheus text.

    Counters are labelled by topic. Gauges start at 0 until the relay sets them.
    `process=False` leaves out the process and Python collectors (for tests comparing text).
    """

    def __init__(
        self, batch_buckets: Iterable[float] = BATCH_SECONDS_BUCKETS, *, process: bool = True
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        if process:
            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                self.registry.register(collector)
        topic = ["topic"]
        self._published = self._counter(
            "published", "Messages durably acknowledged by the broker.", topic
        )
        self._failed = self._counter("failed", "Retriable publish failures.", topic)
        self._dead_lettered = self._counter(
            "dead_lettered", "Messages moved to the dead-letter table.", topic
        )
        self._backlog = self._gauge("backlog_messages", "Pending outbox rows.")
        self._oldest_pending_age = self._gauge(
            "oldest_pending_age_seconds", "Age of the oldest pending outbox row."
        )
        self._owned_partitions = self._gauge(
            "owned_partitions", "Partitions owned by this relay instance."
        )
        self._dead_letters = self._gauge("dead_letters", "Rows in the dead-letter table.")
        self._gauge("up", "1 while the relay process is running.").set(1)
        self._batch_seconds = Histogram(
            _PREFIX + "batch_publish_seconds",
            "Duration of one publish(batch) call.",
            buckets=sorted(batch_buckets),
            registry=self.registry,
        )

    # Counters: the hot path (once per batch).

    def published(self, topic: str, n: int = 1) -> None:
        """Count `n` messages of `topic` the broker durably acknowledged."""
        _add(self._published, topic, n)

    def published_counts(self, counts: Mapping[str, int]) -> None:
        """Count a whole batch's acknowledgements at once, as `{topic: n}`."""
        for topic, n in counts.items():
            _add(self._published, topic, n)

    def failed(self, topic: str, n: int = 1) -> None:
        """Count `n` retriable publish failures of `topic`."""
        _add(self._failed, topic, n)

    def dead_lettered(self, topic: str, n: int = 1) -> None:
        """Count `n` messages of `topic` moved to the dead-letter table."""
        _add(self._dead_lettered, topic, n)

    def observe_batch(self, seconds: float) -> None:
        """Record how long one `publish(batch)` call took."""
        self._batch_seconds.observe(seconds)

    # Gauges: set from the relay's periodic housekeeping.

    def set_backlog(self, messages: int) -> None:
        """Set the number of pending (not yet published) outbox rows."""
        self._backlog.set(messages)

    def set_oldest_pending_age(self, seconds: float) -> None:
        """Set the age of the oldest pending row; 0 when nothing is pending."""
        self._oldest_pending_age.set(seconds)

    def set_owned_partitions(self, n: int) -> None:
        """Set how many partitions this relay instance currently owns."""
        self._owned_partitions.set(n)

    def set_dead_letters(self, rows: int) -> None:
        """Set the number of rows in the dead-letter table."""
        self._dead_letters.set(rows)

    # Exposition.

    def render(self) -> str:
        """The registry in the Prometheus text exposition format."""
        return generate_latest(self.registry).decode("utf-8")

    def _counter(self, name: str, help_text: str, labels: list[str]) -> Counter:
        return Counter(_PREFIX + name, help_text, labels, registry=self.registry)

    def _gauge(self, name: str, help_text: str) -> Gauge:
        return Gauge(_PREFIX + name, help_text, registry=self.registry)


def _add(counter: Counter, topic: str, n: int) -> None:
    if n < 0:
        raise ValueError(f"a counter cannot decrease (got {n})")
    child = counter.labels(topic=topic)  # a topic seen once shows, even at 0
    if n:
        child.inc(n)
