"""A throw-away Pulsar-protocol broker: pulsar-lite, from the `pulsar-lite` wheel.

pulsar-lite is a small broker written in Rust that speaks the Pulsar binary protocol and
keeps topics, subscriptions and cursors in RocksDB under its `--db-path`, so a restart on
the same port finds them again. It is not Apache Pulsar (a JVM service no package source
here provides): good for the demo and the tests, never for production. Known gaps of
pulsar-lite 0.2, as the adapters' tests found them: no regex subscriptions
(GetTopicsOfNamespace goes unanswered), no delayed delivery (`deliver_after` is ignored), no
broker deduplication, any credentials accepted; one consumer per subscription across
clients (it tells them apart by the client-side consumer id); negative acks ignored on
Failover subscriptions and lost on a second redelivery on shared ones; its message size
limit is not told to clients (a bigger message drops the connection).

The server binds 127.0.0.1 only, with its Prometheus endpoint (0.0.0.0:8080 by default)
switched off, and keeps its store, its config file and its log in a temporary directory.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from outboxkit.devservers.freeze import freeze, thaw
from outboxkit.devservers.ports import free_port

_ENV_OVERRIDE = "PULSAR_LITE_BINARY"  # pulsar-lite's own variable for another binary


def _binary(scratch: Path) -> str:
    """The pulsar-lite executable: from $PULSAR_LITE_BINARY, the wheel, or PATH."""
    override = os.environ.get(_ENV_OVERRIDE)
    if override:
        return override
    # find_spec locates the wheel without importing it (its package starts nothing itself,
    # but importing it would import the pulsar client too).
    spec = importlib.util.find_spec("pulsar_lite")
    if spec is not None and spec.submodule_search_locations:
        bundled = Path(next(iter(spec.submodule_search_locations))) / "bin" / "pulsar-lite"
        if bundled.is_file():
            if os.access(bundled, os.X_OK):
                return str(bundled)
            # A wheel install may drop the exec bit: run a private executable copy.
            copy = scratch / "pulsar-lite"
            shutil.copyfile(bundled, copy)
            copy.chmod(copy.stat().st_mode | stat.S_IXUSR)
            return str(copy)
    found = shutil.which("pulsar-lite")
    if found is None:
        raise RuntimeError("pulsar-lite not found: `pip install pulsar-lite` (a test dependency)")
    return found


@dataclass
class PulsarLiteServer:
    """`pulsar-lite` on 127.0.0.1 with its RocksDB store in a temporary directory."""

    port: int = 0
    work_dir: Path | None = None
    max_message_bytes: int = 5 * 1024 * 1024
    log_level: str = "warn"
    _process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        if not self.port:
            self.port = free_port()
        if self.work_dir is None:
            self.work_dir = Path(tempfile.mkdtemp(prefix="outboxkit-pulsar-"))

    @property
    def url(self) -> str:
        """A `pulsar://` broker URL for this server (no options)."""
        return f"pulsar://127.0.0.1:{self.port}"

    @property
    def log_file(self) -> Path:
        assert self.work_dir is not None
        return self.work_dir / "pulsar-lite.log"

    def _config(self) -> Path:
        assert self.work_dir is not None
        config = self.work_dir / "pulsar-lite.toml"
        config.write_text(
            f'log_level = "{self.log_level}"\n'
            f"max_message_size_bytes = {self.max_message_bytes}\n"
            "[metrics]\n"
            "enabled = false\n"
        )
        return config

    def start(self, timeout: float = 20.0) -> PulsarLiteServer:
        """Start the broker and wait until it accepts connections."""
        assert self.work_dir is not None
        if self._process is not None and self._process.poll() is None:
            return self
        args = [
            _binary(self.work_dir),
            "--addr", f"127.0.0.1:{self.port}",
            "--db-path", str(self.work_dir / "store"),
            "--config", str(self._config()),
        ]  # fmt: skip
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(
                args,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.work_dir,
                env={**os.environ, "RUST_LOG": self.log_level},
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"pulsar-lite exited with {self._process.returncode}: {self._log_tail()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    pass
            except OSError:
                time.sleep(0.05)
                continue
            # It listens once its store is open; make sure the listener is ours.
            time.sleep(0.05)
            if self._process.poll() is None:
                return self
        self.stop()
        raise RuntimeError("pulsar-lite did not start in time")

    def stop(self, *, kill: bool = False) -> None:
        """Stop the broker (SIGTERM, or SIGKILL with `kill=True`); its store stays."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGCONT)  # a paused broker cannot act on SIGTERM
        process.send_signal(signal.SIGKILL if kill else signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def pause(self) -> None:
        """Freeze the broker (SIGSTOP, every thread stopped on return): connections stay
        open but nothing is answered."""
        if self._process is not None:
            freeze(self._process.pid)

    def resume(self) -> None:
        """Let a paused broker go on (SIGCONT)."""
        if self._process is not None:
            thaw(self._process.pid)

    def restart(self) -> None:
        """Stop, then start again on the same port with the same store."""
        self.stop()
        self.start()

    def cleanup(self) -> None:
        """Stop the broker and delete its directory."""
        self.stop()
        if self.work_dir is not None:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def _log_tail(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def __enter__(self) -> PulsarLiteServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()
