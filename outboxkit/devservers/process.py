"""The life cycle shared by dev servers that are one child process on a loopback port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from outboxkit.devservers.ports import free_port


class ProcessServer:
    """Start, wait until ready, stop, restart on the same port, clean up.

    Subclasses say what to run (`command()`), and may refine `environment()` and `ready()`
    (default: the port accepts TCP connections). Output goes to `<work_dir>/<name>.log`.
    """

    name = "server"

    def __init__(self, port: int = 0, work_dir: Path | None = None) -> None:
        self.port = port or free_port()
        self.work_dir = work_dir or Path(tempfile.mkdtemp(prefix=f"outboxkit-{self.name}-"))
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self._process: subprocess.Popen[bytes] | None = None

    # -- to refine -------------------------------------------------------------------------

    def command(self) -> list[str]:
        """The command line of the server."""
        raise NotImplementedError

    def environment(self) -> dict[str, str] | None:
        """The server's environment (None: ours)."""
        return None

    def ready(self) -> bool:
        """True once the server serves."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    # -- life cycle ------------------------------------------------------------------------

    @property
    def log_file(self) -> Path:
        return self.work_dir / f"{self.name}.log"

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 30.0) -> Self:
        """Start the server and wait until it is ready."""
        if self.running:
            return self
        with self.log_file.open("ab") as log:
            self._process = subprocess.Popen(
                self.command(),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.work_dir,
                env=self.environment(),
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited with {self._process.returncode}: {self.log_tail()}"
                )
            if self.ready():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not start in time: {self.log_tail()}")

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 10 s); `start()` reuses the port."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def restart(self) -> None:
        """Stop, then start again on the same port."""
        self.stop()
        self.start()

    def cleanup(self) -> None:
        """Stop the server and delete its directory."""
        self.stop()
        shutil.rmtree(self.work_dir, ignore_errors=True)

    def log_tail(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()
