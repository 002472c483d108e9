"""A throw-away webhook spool on loopback: a durable store-and-forward hop, for tests.

HTTP webhooks have no broker: the relay POSTs straight to the receiver, and the sender's
outbox is the queue. The conformance suite is written for brokers, though: it publishes
before a consumer exists and consumes later. In its http case this spool stands where a
broker would, a webhook gateway in front of the receiver:

    publisher --POST--> spool (stores, then 200) --POST--> consumer (held until the ack)

Each POST to `http://127.0.0.1:<port><path>?forward=<host:port>[&...]` is stored in SQLite
(`synchronous=FULL`, committed in groups) and answered 200 only after the commit; then it
is forwarded, headers and body unchanged, to `http://<host:port><path>[?...]` (the
`forward` parameter removed; loopback addresses only) until that answers 2xx. Forwarding
keeps order per key: per target and `Outboxkit-Key` one request at a time, in arrival order
(keyless ones in parallel).
408, 425, 429, 5xx, timeouts and refused connections are retried after 0.05 s doubling to
1 s (or the `Retry-After`, up to 5 s); other answers drop the request (logged), and so does
being undeliverable for `ttl` seconds. Stopping the process keeps what it stored; a restart on the
same port forwards it. Signatures pass through untouched (the consumer verifies them), and
so does everything they cover, `Outboxkit-Attempt` included: the consumer counts the
deliveries it sees itself.

Run standalone: `python -m outboxkit.devservers.http --port 8099 --data /tmp/spool`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx

from outboxkit.brokers.http.consumer import AsgiServer, Receive, Scope, Send
from outboxkit.devservers.ports import free_port

log = logging.getLogger("outboxkit.spool")

_HOP_BY_HOP = frozenset(
    {
        "host",
        "content-length",
        "connection",
        "keep-alive",
        "transfer-encoding",
        "expect",
    }
)
_RETRY = frozenset({408, 425, 429})
_MAX_IN_FLIGHT = 64
_FORWARD_TIMEOUT = 30.0


@dataclass(eq=False)
class _Entry:
    seq: int
    target: str
    key: str | None
    headers: list[tuple[str, str]]
    body: bytes
    stored_at: float
    attempts: int = 0
    due: float = 0.0
    in_flight: bool = False


class Spool:
    """The spool's state: SQLite store, ASGI app receiving, loop forwarding."""

    def __init__(self, path: Path, ttl: float) -> None:
        self.ttl = ttl
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS spool (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
            "target TEXT NOT NULL, key TEXT, headers TEXT NOT NULL, body BLOB NOT NULL, "
            "stored_at REAL NOT NULL)"
        )
        self.pending: dict[int, _Entry] = {}
        for seq, target, key, headers, body, stored_at in self._db.execute(
            "SELECT seq, target, key, headers, body, stored_at FROM spool ORDER BY seq"
        ):
            pairs = [(str(n), str(v)) for n, v in json.loads(headers)]
            self.pending[seq] = _Entry(seq, target, key, pairs, bytes(body), stored_at)
        self._writes: list[tuple[_Entry, asyncio.Future[int]]] = []
        self._deletes: list[int] = []
        self._write_wanted = asyncio.Event()
        self._wake = asyncio.Event()
        self._wake.set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self._writes_closed = False

    # -- receiving ------------------------------------------------------------------------

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The ASGI app: store a POST, answer 200 after the commit."""
        if scope["type"] != "http":
            return
        body = b""
        while True:
            event = await receive()
            if event["type"] == "http.disconnect":
                return
            body += event.get("body", b"")
            if not event.get("more_body", False):
                break
        params = parse_qsl(bytes(scope["query_string"]).decode("latin-1"), keep_blank_values=True)
        forward = [v for n, v in params if n == "forward"]
        if scope["method"] != "POST" or len(forward) != 1 or not _loopback(forward[0]):
            await _reply(send, 400, {"error": "POST with one forward=127.0.0.1:port parameter"})
            return
        rest = urlencode([(n, v) for n, v in params if n != "forward"])
        path = bytes(scope["raw_path"]).decode("latin-1")
        target = f"http://{forward[0]}{path}" + (f"?{rest}" if rest else "")
        headers = [
            (bytes(n).decode("latin-1"), bytes(v).decode("latin-1")) for n, v in scope["headers"]
        ]
        key = next((v for n, v in headers if n == "outboxkit-key"), None)
        kept = [(n, v) for n, v in headers if n not in _HOP_BY_HOP]
        entry = _Entry(0, target, key, kept, body, time.time())
        seq = await self._store(entry)
        await _reply(send, 200, {"stored": seq})

    async def _store(self, entry: _Entry) -> int:
        done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._writes.append((entry, done))
        self._write_wanted.set()
        return await done

    async def write_loop(self) -> None:
        """Commit stored and forwarded requests in groups (one fsync per group), until
        `close_writes()` and nothing is left to write."""
        while True:
            await self._write_wanted.wait()
            self._write_wanted.clear()
            writes, self._writes = self._writes, []
            deletes, self._deletes = self._deletes, []
            if not writes and not deletes:
                if self._writes_closed:
                    return
                continue
            try:
                seqs = await asyncio.to_thread(self._commit, [e for e, _ in writes], deletes)
            except sqlite3.Error as exc:
                log.error("spool store failed: %r", exc)
                self._deletes += deletes
                for _, done in writes:
                    if not done.done():
                        done.set_exception(exc)
                continue
            for (entry, done), seq in zip(writes, seqs, strict=True):
                entry.seq = seq
                self.pending[seq] = entry
                if not done.done():
                    done.set_result(seq)
            if writes:
                self._wake.set()
            self._write_wanted.set()  # look again: more may have come during the commit

    def close_writes(self) -> None:
        """Let `write_loop` end once everything queued is committed."""
        self._writes_closed = True
        self._write_wanted.set()

    def _commit(self, entries: list[_Entry], deletes: list[int]) -> list[int]:
        seqs = []
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for e in entries:
                cursor = self._db.execute(
                    "INSERT INTO spool (target, key, headers, body, stored_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (e.target, e.key, json.dumps(e.headers), e.body, e.stored_at),
                )
                seqs.append(int(cursor.lastrowid or 0))
            self._db.executemany("DELETE FROM spool WHERE seq = ?", [(s,) for s in deletes])
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        return seqs

    # -- forwarding -----------------------------------------------------------------------

    async def forward_loop(self) -> None:
        """Forward what is due, the head of each key first, until `drain()`."""
        limits = httpx.Limits(max_connections=_MAX_IN_FLIGHT)
        async with httpx.AsyncClient(timeout=_FORWARD_TIMEOUT, limits=limits) as client:
            try:
                while not self._stopping:
                    wait = self._start_due(client)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await self._wake.wait()
                    self._wake.clear()
            finally:
                for task in self._tasks:
                    task.cancel()
                await asyncio.gather(*self._tasks, return_exceptions=True)

    async def drain(self, grace: float) -> None:
        """Start no more forwards; give those in flight `grace` seconds to be answered."""
        self._stopping = True
        self._wake.set()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=grace)

    def _start_due(self, client: httpx.AsyncClient) -> float:
        """Start the due forwards; seconds until the next one is due."""
        now, wall = time.monotonic(), time.time()
        blocked: set[tuple[str, str | None]] = {
            (e.target, e.key) for e in self.pending.values() if e.in_flight and e.key is not None
        }
        wait = 1.0
        for entry in list(self.pending.values()):
            if entry.in_flight:
                continue
            lane = (entry.target, entry.key)
            if entry.key is not None:
                if lane in blocked:
                    continue
                blocked.add(lane)  # the head of its key: the later ones wait for it
            if wall - entry.stored_at > self.ttl:
                log.warning(
                    "dropping #%d for %s: undelivered for %gs", entry.seq, entry.target, self.ttl
                )
                self._forget(entry)
                continue
            if entry.due > now:
                wait = min(wait, entry.due - now)
                continue
            if len(self._tasks) >= _MAX_IN_FLIGHT:
                break
            entry.in_flight = True
            task = asyncio.create_task(self._forward(client, entry))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return max(wait, 0.01)

    async def _forward(self, client: httpx.AsyncClient, entry: _Entry) -> None:
        entry.attempts += 1
        retry_after = 0.0
        try:
            response = await client.post(entry.target, content=entry.body, headers=entry.headers)
            status = response.status_code
            if 200 <= status < 300:
                self._forget(entry)
                return
            if 400 <= status < 500 and status not in _RETRY:
                log.warning("dropping #%d: %s answered %d", entry.seq, entry.target, status)
                self._forget(entry)
                return
            with contextlib.suppress(ValueError):
                retry_after = min(float(response.headers.get("retry-after", 0)), 5.0)
        except httpx.HTTPError as exc:
            log.debug("forwarding #%d to %s failed: %r", entry.seq, entry.target, exc)
        finally:
            entry.in_flight = False
            self._wake.set()
        backoff = min(0.05 * 2 ** (entry.attempts - 1), 1.0)
        entry.due = time.monotonic() + max(backoff, retry_after)

    def _forget(self, entry: _Entry) -> None:
        self.pending.pop(entry.seq, None)
        self._deletes.append(entry.seq)
        self._write_wanted.set()

    def close(self) -> None:
        """Close the store (after `write_loop` ended)."""
        self._db.close()


def _loopback(address: str) -> bool:
    """Whether `host:port` is on this machine: the spool forwards nowhere else."""
    host, _, port = address.rpartition(":")
    return host in ("127.0.0.1", "localhost", "[::1]") and port.isdigit()


async def _reply(send: Send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    start: MutableMapping[str, Any] = {
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json")],
    }
    await send(start)
    await send({"type": "http.response.body", "body": data})


async def serve(port: int, data: Path, ttl: float) -> None:
    """Run the spool on 127.0.0.1:`port` until SIGTERM or SIGINT."""
    spool = Spool(data / "spool.sqlite3", ttl)
    server = AsgiServer(spool.app, max_body=64 * 1024 * 1024)
    await server.start("127.0.0.1", port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    writer = asyncio.create_task(spool.write_loop())
    forwarder = asyncio.create_task(spool.forward_loop())
    log.info("spool listening on 127.0.0.1:%d with %d stored", port, len(spool.pending))
    try:
        await stop.wait()
    finally:
        await server.close(grace=1.0)
        await spool.drain(grace=2.0)
        forwarder.cancel()
        await asyncio.gather(forwarder, return_exceptions=True)
        spool.close_writes()
        await writer  # never cancelled mid-commit: what was answered 200 stays stored
        spool.close()
        log.info("spool stopped with %d stored", len(spool.pending))


def main(argv: list[str] | None = None) -> None:
    """`python -m outboxkit.devservers.http --port N --data DIR [--ttl SECONDS]`."""
    parser = argparse.ArgumentParser(description="a store-and-forward webhook spool (tests)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--ttl", type=float, default=300.0)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(serve(args.port, args.data, args.ttl))


@dataclass
class WebhookSpool:
    """The spool as a child process on 127.0.0.1, its store in a temporary directory."""

    port: int = 0
    data_dir: Path | None = None
    ttl: float = 300.0
    _process: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        if not self.port:
            self.port = free_port()
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="outboxkit-spool-"))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> WebhookSpool:
        """Start the spool and wait until it accepts connections."""
        assert self.data_dir is not None
        with open(self.data_dir / "spool.log", "ab") as output:
            self._process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "outboxkit.devservers.http",
                    "--port",
                    str(self.port),
                    "--data",
                    str(self.data_dir),
                    "--ttl",
                    str(self.ttl),
                ],
                stdout=output,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"the webhook spool exited with {self._process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return self
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("the webhook spool did not start in time")

    def stop(self) -> None:
        """Stop the spool, keeping its store (a later `start()` forwards what it holds)."""
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            try:
                self._process.wait(10)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        self._process = None

    def cleanup(self) -> None:
        """Stop the spool and delete its store."""
        self.stop()
        if self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def __enter__(self) -> WebhookSpool:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()


if __name__ == "__main__":
    main()
