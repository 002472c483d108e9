"""A throw-away RabbitMQ node from Debian's `rabbitmq-server` package, on loopback.

The node gets its own name (`outboxkit-<port>@localhost`), its own Erlang port mapper (epmd)
and distribution port, and keeps its Mnesia store, logs, config and Erlang cookie in a
temporary directory, so several nodes (and a system RabbitMQ) can run side by side.
Everything listens on 127.0.0.1 only; the management plugin is off.

The package's `rabbitmq-server` wrapper insists on running as the `rabbitmq` user (via `su`)
from `/var/lib/rabbitmq`; we call the real script under it directly instead, as that user
when we are root (the directory is handed to it), with a fully specified environment.

The node's `max_message_size` is `MAX_MESSAGE_BYTES` (16 MiB, below RabbitMQ 3.10's 128 MiB
default). Its only user is `outboxkit`, with a random password (it has URL-reserved
characters on purpose: `url` quotes them); there is no `guest`.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from urllib.parse import quote

from outboxkit.devservers.ports import free_port

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
USER = "outboxkit"
_SERVICE_USER = "rabbitmq"  # the package's user; `nobody` if it is missing
_SBIN_CANDIDATES = (
    "/usr/lib/rabbitmq/bin",  # Debian: symlinks to the versioned sbin directory
    "/usr/lib/rabbitmq/sbin",
    "/usr/local/sbin",
)
_AMQP_HEADER = b"AMQP\x00\x00\x09\x01"
_FRAME_METHOD = 1


def _script(name: str) -> str:
    for directory in _SBIN_CANDIDATES:
        candidate = Path(directory) / name
        if candidate.exists() and os.access(candidate, os.X_OK):
            return str(candidate)
    raise RuntimeError(
        f"{name} not found (looked in {', '.join(_SBIN_CANDIDATES)}): install the "
        "rabbitmq-server package (scripts/install-brokers)"
    )


def _run_as() -> pwd.struct_passwd | None:
    """The account the node runs as: None (ourselves) unless we are root."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(_SERVICE_USER)
    except KeyError:
        return pwd.getpwnam("nobody")


@dataclass
class RabbitMQServer:
    """`start()` (or `with`), `stop()`, `start()` again on the same port and store."""

    port: int = 0
    base_dir: Path | None = None
    password: str = ""
    tls: bool = False  # also listen for amqps:// on `tls_port`, with a throw-away CA
    tls_port: int = 0
    _process: subprocess.Popen[bytes] | None = None
    _dist_port: int = 0
    _epmd_port: int = 0

    def __post_init__(self) -> None:
        if not self.port:
            self.port = free_port()
        if self.tls and not self.tls_port:
            self.tls_port = free_port()
        self._dist_port = free_port()
        self._epmd_port = free_port()
        if not self.password:
            # URL-reserved characters on purpose: clients must quote them.
            self.password = f"pw@:/{secrets.token_hex(8)}"
        if self.base_dir is None:
            self.base_dir = Path(tempfile.mkdtemp(prefix="outboxkit-rabbitmq-"))

    @property
    def node(self) -> str:
        return f"outboxkit-{self.port}@localhost"

    @property
    def url(self) -> str:
        """`amqp://outboxkit:<password>@127.0.0.1:<port>/`, the password percent-quoted."""
        return f"amqp://{USER}:{quote(self.password, safe='')}@127.0.0.1:{self.port}/"

    @property
    def tls_url(self) -> str:
        """The `amqps://` URL (`tls=True`), trusting the node's CA (`cafile=`)."""
        if not self.tls:
            raise RuntimeError("this RabbitMQServer was made without tls=True")
        return (
            f"amqps://{USER}:{quote(self.password, safe='')}@localhost:{self.tls_port}/"
            f"?cafile={quote(str(self.ca_file), safe='')}"
        )

    @property
    def ca_file(self) -> Path:
        assert self.base_dir is not None
        return self.base_dir / "tls" / "ca.pem"

    @property
    def log_file(self) -> Path:
        assert self.base_dir is not None
        return self.base_dir / "log" / f"{self.node}.log"

    def start(self, timeout: float = 120.0) -> RabbitMQServer:
        """Start the node and wait until it answers the AMQP handshake."""
        if self._process is not None and self._process.poll() is None:
            return self
        self._prepare()
        account = _run_as()
        self._process = subprocess.Popen(
            [_script("rabbitmq-server")],
            cwd=self.base_dir,
            env=self._env(account),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            user=account.pw_uid if account else None,
            group=account.pw_gid if account else None,
            extra_groups=[] if account else None,
            start_new_session=True,  # a Ctrl-C in the terminal must not reach the node
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                code = self._process.returncode
                self._process = None
                raise RuntimeError(f"rabbitmq-server exited with {code}: {self._log_tail()}")
            if self._answers_amqp():
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"rabbitmq-server did not start within {timeout:g}s: {self._log_tail()}")

    def stop(self) -> None:
        """Stop the node (gracefully: SIGTERM), keeping its store for a later `start()`."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()  # the script turns it into an orderly shutdown of the VM
        try:
            process.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)  # the script and the VM it started
            process.wait()
        # The VM may outlive the script for a moment; its port must be free for a restart.
        deadline = time.monotonic() + 30
        while self._listening() and time.monotonic() < deadline:
            time.sleep(0.1)

    def cleanup(self) -> None:
        """Stop the node and its epmd, and delete the directory."""
        self.stop()
        subprocess.run(
            ["epmd", "-kill"],
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **self._epmd_env()},
            capture_output=True,
            check=False,
            timeout=10,
        )
        if self.base_dir is not None:
            shutil.rmtree(self.base_dir, ignore_errors=True)

    def __enter__(self) -> RabbitMQServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    # -- internals -------------------------------------------------------------------------

    def _epmd_env(self) -> dict[str, str]:
        return {"ERL_EPMD_ADDRESS": "127.0.0.1", "ERL_EPMD_PORT": str(self._epmd_port)}

    def _env(self, account: pwd.struct_passwd | None) -> dict[str, str]:
        assert self.base_dir is not None
        base = self.base_dir
        return {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "HOME": str(base),  # where Erlang finds the node's cookie
            "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8",
            "USER": account.pw_name if account else os.environ.get("USER", ""),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self._dist_port),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"),
            "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(base / "advanced.config"),
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_PID_FILE": str(base / "rabbitmq.pid"),
            "ERL_CRASH_DUMP": str(base / "erl_crash.dump"),
            **self._epmd_env(),
        }

    def _prepare(self) -> None:
        assert self.base_dir is not None
        base = self.base_dir
        for sub in ("mnesia", "log"):
            (base / sub).mkdir(parents=True, exist_ok=True)
        config = {
            "listeners.tcp.default": f"127.0.0.1:{self.port}",
            "max_message_size": str(MAX_MESSAGE_BYTES),
            "default_user": USER,
            "default_pass": self.password,
            "default_permissions.configure": ".*",
            "default_permissions.read": ".*",
            "default_permissions.write": ".*",
            "default_user_tags.administrator": "true",
            # A laptop or CI disk must not trip the free-space alarm (it blocks publishers).
            "disk_free_limit.absolute": "1MB",
            "log.console": "false",
            "log.file.level": "warning",
        }
        if self.tls:
            tls = self._certificates()
            config |= {
                "listeners.ssl.default": f"127.0.0.1:{self.tls_port}",
                "ssl_options.cacertfile": str(tls / "ca.pem"),
                "ssl_options.certfile": str(tls / "server.pem"),
                "ssl_options.keyfile": str(tls / "server.key"),
                "ssl_options.verify": "verify_none",
                "ssl_options.fail_if_no_peer_cert": "false",
            }
        (base / "rabbitmq.conf").write_text("".join(f"{k} = {v}\n" for k, v in config.items()))
        (base / "rabbitmq-env.conf").write_text("")
        (base / "enabled_plugins").write_text("[].\n")
        cookie = base / ".erlang.cookie"
        if not cookie.exists():
            cookie.write_text(secrets.token_hex(16).upper())
        cookie.chmod(0o400)
        self._chown(base)

    def _certificates(self) -> Path:
        """A CA and a server certificate for localhost/127.0.0.1 (openssl), made once."""
        assert self.base_dir is not None
        tls = self.base_dir / "tls"
        if (tls / "server.pem").exists():
            return tls
        tls.mkdir(exist_ok=True)
        (tls / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        openssl = shutil.which("openssl")
        if openssl is None:
            raise RuntimeError("tls=True needs the openssl command")
        for command in (
            "req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=outboxkit-test-ca"
            " -keyout ca.key -out ca.pem",
            "req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout server.key -out server.csr",
            "x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2"
            " -extfile san.ext -out server.pem",
        ):
            done = subprocess.run(
                [openssl, *command.split()], cwd=tls, capture_output=True, text=True, check=False
            )
            if done.returncode != 0:
                raise RuntimeError(f"openssl {command.split()[0]} failed: {done.stderr.strip()}")
        return tls

    def _chown(self, base: Path) -> None:
        account = _run_as()
        if account is None:
            return
        for root, dirs, files in os.walk(base):
            for name in (*dirs, *files):
                os.chown(os.path.join(root, name), account.pw_uid, account.pw_gid)
        os.chown(base, account.pw_uid, account.pw_gid)
        for parent in base.resolve().parents:
            if not parent.stat().st_mode & 0o001:
                raise RuntimeError(
                    f"RabbitMQ runs as {account.pw_name!r} and cannot reach {base}: "
                    f"{parent} is not traversable by others"
                )

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def _answers_amqp(self) -> bool:
        """Whether the node answers an AMQP 0-9-1 header with a Connection.Start frame."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as sock:
                sock.settimeout(2.0)
                sock.sendall(_AMQP_HEADER)
                first = sock.recv(1)
                return first == bytes([_FRAME_METHOD])
        except OSError:
            return False

    def _log_tail(self) -> str:
        assert self.base_dir is not None
        texts = []
        for path in sorted((self.base_dir / "log").glob("*.log")):
            try:
                texts.append(path.read_text(errors="replace")[-2000:])
            except OSError:
                continue
        return "\n".join(texts) or "(no log)"
