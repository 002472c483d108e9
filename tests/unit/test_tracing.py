"""W3C trace context from the active OpenTelemetry span is captured at write time."""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider

from outboxkit import outbox
from outboxkit.outbox.tracing import current_trace_headers


def tracer() -> trace.Tracer:
    # A provider of our own: the global one stays untouched for other tests.
    return TracerProvider().get_tracer("outboxkit-tests")


def test_active_span_adds_traceparent() -> None:
    with tracer().start_as_current_span("place-order") as span:
        built = outbox.message("order.created", {"id": 1}, headers={"x-tenant": "acme"})
    context = span.get_span_context()
    assert context.trace_flags.sampled
    assert built.headers == {
        "traceparent": (
            f"00-{context.trace_id:032x}-{context.span_id:016x}-{int(context.trace_flags):02x}"
        ),
        "x-tenant": "acme",
    }


def test_tracestate_travels_too() -> None:
    state = trace.TraceState([("vendor", "opaque")])
    parent = trace.NonRecordingSpan(
        trace.SpanContext(
            trace_id=0x0AF7651916CD43DD8448EB211C80319C,
            span_id=0xB7AD6B7169203331,
            is_remote=True,
            trace_flags=trace.TraceFlags(trace.TraceFlags.SAMPLED),
            trace_state=state,
        )
    )
    with trace.use_span(parent):
        headers = current_trace_headers()
    assert headers == {
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        "tracestate": "vendor=opaque",
    }


def test_no_span_no_trace_headers() -> None:
    assert current_trace_headers() == {}
    assert outbox.message("order.created", {"id": 1}).headers == {}


def test_user_traceparent_wins_over_the_active_span() -> None:
    mine = "00-11111111111111111111111111111111-2222222222222222-00"
    with tracer().start_as_current_span("outer"):
        built = outbox.message("t", {}, headers={"traceparent": mine})
    assert built.headers["traceparent"] == mine
