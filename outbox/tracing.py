"""W3C trace context captured at write time, when OpenTelemetry is installed."""

from __future__ import annotations

try:
    from opentelemetry import propagate
except ImportError:  # pragma: no cover - optional dependency
    propagate = None  # type: ignore[assignment]

TRACE_HEADERS = ("traceparent", "tracestate")


def current_trace_headers() -> dict[str, str]:
    """`traceparent` (and `tracestate`) of the active span; empty without one."""
    if propagate is None:
        return {}
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    return {name: carrier[name] for name in TRACE_HEADERS if name in carrier}
