"""In-process metrics for the relay, rendered in the Prometheus text format (version 0.0.4).

One `RelayMetrics` per relay process. The relay's hot path calls its counting methods (plain
dict and int updates: no locks, since the relay runs on one asyncio event loop) and the ops
server calls `render()` on a scrape.

    metrics = RelayMetrics()
    metrics.published_counts({"order.created": 40, "order.paid": 2})
    metrics.observe_batch(0.012)
    metrics.set_backlog(1_250)
    text = metrics.render()

The only label is `topic`. Topics are user data, so label values are escaped; they are also
the only source of cardinality, bounded by the application's set of topics. No metric carries
a DSN, broker URL or any other connection detail, so a scrape can never leak credentials: keep
it that way when adding metrics.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping

#: Upper bounds (seconds) of the batch publish histogram; `+Inf` is implied.
BATCH_SECONDS_BUCKETS: tuple[float, ...] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
"""The HTTP content type of `RelayMetrics.render()`'s output."""

_PREFIX = "outboxkit_relay_"


class Histogram:
    """A fixed-bucket histogram: `observe` is a bisect and two additions."""

    def __init__(self, buckets: Iterable[float] = BATCH_SECONDS_BUCKETS) -> None:
        self.bounds: tuple[float, ...] = tuple(sorted(buckets))
        # Per-bucket (not cumulative) counts; the last slot is the +Inf bucket.
        self._counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """Record one observation (`le` is inclusive, as Prometheus defines it)."""
        self._counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def cumulative(self) -> list[tuple[float, int]]:
        """`(upper bound, observations <= bound)` pairs, ending with `(inf, count)`."""
        pairs: list[tuple[float, int]] = []
        running = 0
        for bound, n in zip((*self.bounds, math.inf), self._counts, strict=True):
            running += n
            pairs.append((bound, running))
        return pairs


class RelayMetrics:
    """The relay's counters, gauges and histogram; `render()` gives the Prometheus text.

    Counters are labelled by topic. Gauges start at 0 until the relay sets them.
    """

    def __init__(self, batch_buckets: Iterable[float] = BATCH_SECONDS_BUCKETS) -> None:
        self._published: dict[str, int] = {}
        self._failed: dict[str, int] = {}
        self._dead_lettered: dict[str, int] = {}
        self._backlog = 0
        self._oldest_pending_age = 0.0
        self._owned_partitions = 0
        self._dead_letters = 0
        self._batch_seconds = Histogram(batch_buckets)

    # Counters: the hot path.

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
        self._backlog = messages

    def set_oldest_pending_age(self, seconds: float) -> None:
        """Set the age of the oldest pending row; 0 when nothing is pending."""
        self._oldest_pending_age = seconds

    def set_owned_partitions(self, n: int) -> None:
        """Set how many partitions this relay instance currently owns."""
        self._owned_partitions = n

    def set_dead_letters(self, rows: int) -> None:
        """Set the number of rows in the dead-letter table."""
        self._dead_letters = rows

    # Exposition.

    def render(self) -> str:
        """The registry in the Prometheus text exposition format 0.0.4."""
        lines: list[str] = []
        lines += _counter(
            "published_total", "Messages durably acknowledged by the broker.", self._published
        )
        lines += _counter("failed_total", "Retriable publish failures.", self._failed)
        lines += _counter(
            "dead_lettered_total", "Messages moved to the dead-letter table.", self._dead_lettered
        )
        lines += _gauge("backlog_messages", "Pending outbox rows.", self._backlog)
        lines += _gauge(
            "oldest_pending_age_seconds",
            "Age of the oldest pending outbox row.",
            self._oldest_pending_age,
        )
        lines += _gauge(
            "owned_partitions", "Partitions owned by this relay instance.", self._owned_partitions
        )
        lines += _gauge("dead_letters", "Rows in the dead-letter table.", self._dead_letters)
        lines += _gauge("up", "1 while the relay process is running.", 1)
        lines += _histogram(
            "batch_publish_seconds", "Duration of one publish(batch) call.", self._batch_seconds
        )
        return "\n".join(lines) + "\n"


def _add(counts: dict[str, int], topic: str, n: int) -> None:
    if n < 0:
        raise ValueError(f"a counter cannot decrease (got {n})")
    counts[topic] = counts.get(topic, 0) + n


def _header(name: str, kind: str, help_text: str) -> list[str]:
    return [f"# HELP {name} {_escape_help(help_text)}", f"# TYPE {name} {kind}"]


def _counter(suffix: str, help_text: str, by_topic: Mapping[str, int]) -> list[str]:
    name = _PREFIX + suffix
    samples = [_sample(name, {"topic": t}, by_topic[t]) for t in sorted(by_topic)]
    return _header(name, "counter", help_text) + samples


def _gauge(suffix: str, help_text: str, value: float) -> list[str]:
    name = _PREFIX + suffix
    return [*_header(name, "gauge", help_text), _sample(name, {}, value)]


def _histogram(suffix: str, help_text: str, histogram: Histogram) -> list[str]:
    name = _PREFIX + suffix
    lines = _header(name, "histogram", help_text)
    for bound, count in histogram.cumulative():
        lines.append(_sample(f"{name}_bucket", {"le": format_value(bound)}, count))
    lines.append(_sample(f"{name}_sum", {}, histogram.sum))
    lines.append(_sample(f"{name}_count", {}, histogram.count))
    return lines


def _sample(name: str, labels: Mapping[str, str], value: float) -> str:
    if not labels:
        return f"{name} {format_value(value)}"
    pairs = ",".join(f'{k}="{escape_label_value(v)}"' for k, v in labels.items())
    return f"{name}{{{pairs}}} {format_value(value)}"


def escape_label_value(value: str) -> str:
    """Escape a label value: backslash, double quote and line feed."""
    return value.replace("\\", r"\\").replace('"', r"\"").replace("\n", r"\n")


def _escape_help(text: str) -> str:
    # HELP text escapes backslash and line feed only (quotes stay as they are).
    return text.replace("\\", r"\\").replace("\n", r"\n")


def format_value(value: float) -> str:
    """A sample value as Prometheus writes it: integers bare, `+Inf`, `-Inf`, `NaN`."""
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)
