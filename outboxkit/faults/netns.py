"""A network namespace joined to the host by a veth pair, with nftables rules that drop packets.

Processes run inside with `prefix` (`ip netns exec NAME …`); they reach the host at
`host_ip`, where a `FaultProxy(listen_host=host_ip)` forwards to a server on loopback. Rules
added in the namespace drop (never reject) packets to and from one host port, all of them
(a partition) or a random share (loss); `heal()` removes them. Needs root, `ip` (iproute2)
and `nft` (nftables): `unavailable()` says why not, else None.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field

TABLE = "outboxkit_faults"


def unavailable() -> str | None:
    """Why namespaces with nftables rules cannot be used here, or None if they can."""
    if os.geteuid() != 0:
        return "network namespaces and nftables need root"
    for tool, package in (("ip", "iproute2"), ("nft", "nftables")):
        if shutil.which(tool) is None:
            return f"`{tool}` is missing (Debian package {package}: scripts/install-brokers)"
    probe = NetworkNamespace()
    try:
        probe.create()
        probe.drop(9, percent=50)
        probe.heal()
    except (OSError, subprocess.CalledProcessError) as exc:
        detail = getattr(exc, "stderr", "") or str(exc)
        return f"cannot set up a namespace with nftables rules: {detail.strip()}"
    finally:
        probe.delete()
    return None


@dataclass
class NetworkNamespace:
    """`create()`, run processes with `prefix`, `drop(port)` / `heal()`, then `delete()`."""

    tag: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    subnet: int = field(default_factory=lambda: random.randrange(0, 16384))
    created: bool = False

    @property
    def name(self) -> str:
        return f"obk-{self.tag}"

    @property
    def host_ip(self) -> str:
        # a /30 out of 10.213.0.0/16: host .1, namespace .2
        return f"10.213.{self.subnet // 64}.{(self.subnet % 64) * 4 + 1}"

    @property
    def namespace_ip(self) -> str:
        return f"10.213.{self.subnet // 64}.{(self.subnet % 64) * 4 + 2}"

    @property
    def prefix(self) -> tuple[str, ...]:
        """Run a command inside: `(*ns.prefix, command, …)`."""
        return ("ip", "netns", "exec", self.name)

    def create(self) -> NetworkNamespace:
        host_if, inner_if = f"obkh{self.tag}", f"obkn{self.tag}"
        _run("ip", "netns", "add", self.name)
        self.created = True
        _run("ip", "link", "add", host_if, "type", "veth", "peer", "name", inner_if)
        _run("ip", "link", "set", inner_if, "netns", self.name)
        _run("ip", "addr", "add", f"{self.host_ip}/30", "dev", host_if)
        _run("ip", "link", "set", host_if, "up")
        _run(*self.prefix, "ip", "addr", "add", f"{self.namespace_ip}/30", "dev", inner_if)
        _run(*self.prefix, "ip", "link", "set", inner_if, "up")
        _run(*self.prefix, "ip", "link", "set", "lo", "up")
        return self

    def drop(self, port: int, *, percent: int = 100) -> None:
        """Drop `percent` % of the TCP packets between the namespace and host port `port`,
        both ways (replacing earlier rules)."""
        if not 0 < percent <= 100:
            raise ValueError("percent must be in 1..100")
        chance = "" if percent == 100 else f"numgen random mod 100 < {percent} "
        rules = (
            f"table inet {TABLE} {{\n"
            "  chain out {\n"
            "    type filter hook output priority 0;\n"
            f"    ip daddr {self.host_ip} tcp dport {port} {chance}drop\n"
            "  }\n"
            "  chain in {\n"
            "    type filter hook input priority 0;\n"
            f"    ip saddr {self.host_ip} tcp sport {port} {chance}drop\n"
            "  }\n"
            "}\n"
        )
        self.heal()
        command = [*self.prefix, "nft", "-f", "-"]
        subprocess.run(command, input=rules, text=True, capture_output=True, check=True)

    def heal(self) -> None:
        """Remove the drop rules."""
        subprocess.run(
            [*self.prefix, "nft", "delete", "table", "inet", TABLE],
            capture_output=True,
            check=False,
        )

    def delete(self) -> None:
        """Remove the namespace and the veth pair (deleting one end deletes both)."""
        if not self.created:
            return
        subprocess.run(["ip", "link", "del", f"obkh{self.tag}"], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)
        self.created = False


def _run(*command: str) -> None:
    subprocess.run(list(command), capture_output=True, text=True, check=True)
