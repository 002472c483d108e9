"""A throw-away Redis server (Debian's `redis-server`) with an append-only file.

It binds 127.0.0.1 only, wants a password, keeps its AOF in a temporary directory (so a
restart on the same port finds its streams again: `appendonly yes`, `appendfsync everysec`,
no RDB snapshots), and caps a bulk string at `max_bulk` (16 MiB, not Redis' 512 MiB) so
that tests of the size limit stay small. With `tls=True` it serves TLS only, with a
self-signed certificate for 127.0.0.1 made by the `openssl` command (`ca_file`).
Redis runs as root without complaint, so no user switch is needed.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import socket
import ssl
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

from outboxkit.devservers.ports import free_port


def _binary() -> str:
    found = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if found is None:
        raise RuntimeError("redis-server not found: `apt-get install redis-server`")
    return found


def _command(*args: str) -> bytes:
    """One command in the Redis protocol."""
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        raw = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
    return b"".join(parts)


@dataclass
class RedisServer:
    """redis-server on 127.0.0.1 with its AOF in a temporary directory."""

    port: int = 0
    data_dir: Path | None = None
    password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    max_bulk: str = "16mb"
    tls: bool = False
    appendfsync: str = "everysec"
    extra_args: tuple[str, ...] = ()
    _process: subprocess.Popen[bytes] | None = None
    _owns_dir: bool = False

    def __post_init__(self) -> None:
        if not self.port:
            self.port = free_port()
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="outboxkit-redis-"))
            self._owns_dir = True

    @property
    def ca_file(self) -> Path:
        assert self.data_dir is not None
        return self.data_dir / "tls" / "cert.pem"

    @property
    def url(self) -> str:
        """The broker URL (with the password; TLS URLs trust `ca_file`)."""
        scheme = "rediss" if self.tls else "redis"
        base = f"{scheme}://:{quote(self.password, safe='')}@127.0.0.1:{self.port}/0"
        return f"{base}?ssl_ca_certs={quote(str(self.ca_file))}" if self.tls else base

    @property
    def log_file(self) -> Path:
        assert self.data_dir is not None
        return self.data_dir / "redis.log"

    def start(self, timeout: float = 20.0) -> RedisServer:
        """Start the server and wait until it answers PING (its AOF loaded)."""
        assert self.data_dir is not None
        args = [
            _binary(),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--save", "",
            "--requirepass", self.password,
            "--proto-max-bulk-len", self.max_bulk,
            "--logfile", str(self.log_file),
            "--daemonize", "no",
        ]  # fmt: skip
        if self.tls:
            self._make_certificate()
            args += [
                "--port", "0",
                "--tls-port", str(self.port),
                "--tls-cert-file", str(self.ca_file),
                "--tls-key-file", str(self.ca_file.with_name("key.pem")),
                "--tls-ca-cert-file", str(self.ca_file),
                "--tls-auth-clients", "no",
            ]  # fmt: skip
        else:
            args += ["--port", str(self.port)]
        self._process = subprocess.Popen(
            [*args, *self.extra_args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"redis-server exited with {self._process.returncode}: {self._log_tail()}"
                )
            if self._answers():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("redis-server did not start in time")

    def _answers(self) -> bool:
        try:
            sock = socket.create_connection(("127.0.0.1", self.port), timeout=1)
        except OSError:
            return False
        try:
            if self.tls:
                context = ssl.create_default_context(cafile=str(self.ca_file))
                sock = context.wrap_socket(sock, server_hostname="127.0.0.1")
            sock.sendall(_command("AUTH", self.password) + _command("PING"))
            reply = b""
            while reply.count(b"\r\n") < 2:
                chunk = sock.recv(4096)
                if not chunk:
                    return False
                reply += chunk
            return reply.endswith(b"+PONG\r\n")  # not -LOADING while it reads the AOF
        except OSError:
            return False
        finally:
            sock.close()

    def _make_certificate(self) -> None:
        if self.ca_file.exists():
            return
        self.ca_file.parent.mkdir(exist_ok=True)
        command = [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
            "-keyout", str(self.ca_file.with_name("key.pem")), "-out", str(self.ca_file),
        ]  # fmt: skip
        subprocess.run(command, check=True, capture_output=True)

    def _log_tail(self) -> str:
        try:
            return " | ".join(self.log_file.read_text().splitlines()[-5:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        """Stop the server (its AOF is flushed on the way out); `start()` finds the data again."""
        process, deadline = self._process, time.monotonic() + 20
        while process is not None and process.poll() is None:
            if time.monotonic() > deadline:
                process.kill()
                process.wait()
                break
            # Redis ignores a SIGTERM while it writes its first AOF (e.g. a replica after
            # its initial sync: "Writing initial AOF, can't exit"): ask again.
            process.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(0.5)
        self._process = None

    def kill(self) -> None:
        """SIGKILL the server, as a crash would: no shutdown, no final fsync."""
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()
        self._process = None

    def restart(self) -> None:
        """Stop then start again on the same port and data."""
        self.stop()
        self.start()

    def cleanup(self) -> None:
        """Stop the server and delete its data (if the directory was ours)."""
        self.stop()
        if self._owns_dir and self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()
