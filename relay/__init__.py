"""The relay: a sidecar that forwards committed outbox messages to a broker at least once.

    from outboxkit.relay import RelaySettings, run
    run(RelaySettings(dsn="postgresql://…", broker_url="nats://127.0.0.1:4222"))

or, inside your own event loop, `await relay.serve(settings)` (signals, HTTP, drain) or
`await relay.Relay(settings).run()` (just the loop; call `.stop()` to end it).
"""

from outboxkit.relay.process import run, serve
from outboxkit.relay.runner import Relay
from outboxkit.relay.semantics import Semantics, TopicSemantics
from outboxkit.relay.settings import RelaySettings

__all__ = ["Relay", "RelaySettings", "Semantics", "TopicSemantics", "run", "serve"]
