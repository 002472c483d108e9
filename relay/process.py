"""Run a relay as a process: signals, the ops HTTP server, a bounded drain."""

from __future__ import annotations

import asyncio
import logging
import signal

from outboxkit.outbox.bounded import drain, run_or_exit
from outboxkit.relay.ops_http import OpsServer, Readiness
from outboxkit.relay.runner import Relay
from outboxkit.relay.settings import RelaySettings

log = logging.getLogger("outboxkit.relay")


async def serve(settings: RelaySettings) -> None:
    """Run a relay until SIGTERM/SIGINT, then drain the batch in flight and exit.

    Raises `DatabaseUnavailable`, `BrokerUnavailable` or `SchemaNotMigrated` at start-up,
    and `ShutdownStuck` if the relay outlives both the drain and its cancellation.
    """
    relay = Relay(settings)
    await relay.start()
    ops = None
    if settings.http_port is not None:
        ops = OpsServer(relay.metrics, lambda: _readiness(relay))
        port = await ops.start(settings.http_host, settings.http_port)
        log.info("serving /healthz /readyz /metrics on %s:%d", settings.http_host, port)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, relay.stop)
    log.info(
        "relay %s started: schema %s, batch size %d",
        settings.relay_id,
        settings.schema,
        settings.batch_size,
    )
    task = asyncio.create_task(relay.run())
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        relay.stop()
    finally:
        try:
            # An abandoned batch is simply republished later.
            await drain(task, settings.shutdown_timeout, what="the relay's batch", log=log)
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
            if ops is not None:
                await ops.close()
    log.info("relay %s stopped", settings.relay_id)


async def _readiness(relay: Relay) -> Readiness:
    checks = relay.health()
    ready = checks["database"] == "ok" and checks["broker"] == "ok"
    return Readiness(ready=ready, checks=checks)


def run(settings: RelaySettings) -> None:
    """Run a relay in this thread until SIGTERM/SIGINT (the sync entry point).

    A relay stuck in its shutdown ends the process at once (exit code 70).
    """
    run_or_exit(serve(settings))
