"""Run a consumer as a process: load the app, handle signals, drain in-flight deliveries."""

from __future__ import annotations

import asyncio
import importlib
import logging
import signal
import sys

from outboxkit.inbox.inbox import Inbox
from outboxkit.inbox.runner import ConsumerRunner
from outboxkit.inbox.settings import ConsumerSettings
from outboxkit.outbox.bounded import drain, run_or_exit
from outboxkit.outbox.errors import ConfigurationError

log = logging.getLogger("outboxkit.inbox")


def load_inbox(spec: str) -> Inbox:
    """The `Inbox` named by `package.module:attribute`."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ConfigurationError(f"--app {spec!r}: expected package.module:attribute")
    if "" not in sys.path:
        sys.path.insert(0, "")  # like `python -m`: the working directory is importable
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"--app {spec!r}: cannot import {module_name}: {exc}") from None
    found = getattr(module, attribute, None)
    if not isinstance(found, Inbox):
        raise ConfigurationError(f"--app {spec!r}: {attribute} is not an inbox.Inbox")
    return found


async def serve(inbox: Inbox, settings: ConsumerSettings) -> ConsumerRunner:
    """Consume until SIGTERM/SIGINT; in-flight deliveries are finished and acked first.

    Raises `ShutdownStuck` if the consumer outlives both the drain and its cancellation.
    """
    runner = ConsumerRunner(inbox, settings)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, runner.stop)
    log.info("consumer %s started (%s mode)", inbox.consumer, settings.mode.value)
    task = asyncio.create_task(runner.run())
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        runner.stop()
    finally:
        try:
            # Abandoned deliveries were not acked: the broker delivers them again.
            await drain(task, settings.shutdown_timeout, what="the consumer", log=log)
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(signum)
    log.info(
        "consumer %s stopped: %d handled, %d duplicates, %d dead-lettered, "
        "%d malformed (%d dead-lettered, %d dropped)",
        inbox.consumer,
        runner.handled,
        runner.duplicates,
        runner.dead_lettered,
        runner.malformed_dead_lettered + runner.malformed_dropped,
        runner.malformed_dead_lettered,
        runner.malformed_dropped,
    )
    return runner


def run(inbox: Inbox, settings: ConsumerSettings) -> None:
    """Sync entry point: consume in this thread until SIGTERM/SIGINT.

    A consumer stuck in its shutdown ends the process at once (exit code 70).
    """
    run_or_exit(serve(inbox, settings))
