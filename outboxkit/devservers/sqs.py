"""A throw-away SQS endpoint: moto's stand-alone server (`moto[sqs]`, flask, flask-cors).

moto keeps everything in memory: a restart loses every queue and message (the adapters
create their queues again). It accepts any credentials and signs nothing it checks.
"""

from __future__ import annotations

import http.client
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from outboxkit.devservers.ports import free_port

ACCESS_KEY = "outboxkit-test"
SECRET_KEY = "outboxkit-test-secret"
REGION = "us-east-1"


@dataclass
class SqsServer:
    """`python -m moto.server` on 127.0.0.1, its log in a temporary directory."""

    port: int = 0
    work_dir: Path | None = None
    _process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        if not self.port:
            self.port = free_port()
        if self.work_dir is None:
            self.work_dir = Path(tempfile.mkdtemp(prefix="outboxkit-sqs-"))

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def url(self, **options: object) -> str:
        """An `sqs://` URL for this server with test credentials and `options`."""
        query = "&".join(
            f"{k}={v}" for k, v in ({"region": REGION, "tls": "false"} | options).items()
        )
        return f"sqs://{ACCESS_KEY}:{SECRET_KEY}@127.0.0.1:{self.port}?{query}"

    def start(self, timeout: float = 30.0) -> SqsServer:
        """Start the server and wait until it answers HTTP."""
        assert self.work_dir is not None
        if self._process is not None and self._process.poll() is None:
            return self
        log = (self.work_dir / "moto.log").open("ab")
        env = {**os.environ, "MOTO_DEFAULT_REGION": REGION, "HOME": str(self.work_dir)}
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.work_dir,
                env=env,
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"moto.server exited with {self._process.returncode}: {self._log_tail()}"
                )
            if self._answers():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"moto.server did not start in time: {self._log_tail()}")

    def _answers(self) -> bool:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=1)
        try:
            connection.request("GET", "/moto-api/")
            connection.getresponse().read()
            return True
        except OSError:
            return False
        finally:
            connection.close()

    def _log_tail(self) -> str:
        assert self.work_dir is not None
        try:
            return (self.work_dir / "moto.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Stop the server (everything it held is gone); `start()` again on the same port."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def cleanup(self) -> None:
        """Stop the server and delete its directory."""
        self.stop()
        if self.work_dir is not None:
            shutil.rmtree(self.work_dir, ignore_errors=True)

    def __enter__(self) -> SqsServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()
