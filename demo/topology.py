"""The demo's network namespaces: one per agent, a gateway that steers, an origin.

::

    agent ns (one per demo machine)      gateway ns                origin ns
    lo: the shared egress IPs   --veth-- 192.0.2.4i+1 ... 192.0.2.249 --veth-- 192.0.2.250
    default via the gateway              steering: nft marks +      lo: 203.0.113.1, :80
                                         ip rules, from the plan

Every agent sources its connections from the *same* egress IPs; the origin
answers to those IPs, and the gateway sends each answer to the machine that
owns the destination port, by the planner's steering table, as a load balancer
would (nftables marks and policy routing; see planner/steering.py). Names
carry a random suffix; :meth:`Topology.remove` deletes every namespace, and
with them their nftables tables and links.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

ORIGIN = "203.0.113.1"
_GW_ORIGIN, _ORIGIN_GW = "192.0.2.249", "192.0.2.250"


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def in_netns(ns: str, *argv: str) -> list[str]:
    return ["ip", "netns", "exec", ns, *argv]


def agent_link(index: int) -> tuple[str, str]:
    """(gateway side, agent side) of agent ``index``'s /30: the agent's side is its
    machine address, the next hop the steering table names."""
    return f"192.0.2.{4 * index + 1}", f"192.0.2.{4 * index + 2}"


@dataclass
class Topology:
    """The namespaces of one demo run; ``record`` lets a later run remove leftovers."""

    record: Path
    suffix: str = field(default_factory=lambda: secrets.token_hex(3))
    namespaces: list[str] = field(default_factory=list)

    @property
    def gateway(self) -> str:
        return f"psDgw{self.suffix}"

    @property
    def origin(self) -> str:
        return f"psDor{self.suffix}"

    def agent_ns(self, index: int) -> str:
        return f"psDa{index}{self.suffix}"

    def _add(self, name: str) -> None:
        ip("netns", "add", name)
        self.namespaces.append(name)
        self.record.write_text(json.dumps(self.namespaces))
        ip("-n", name, "link", "set", "lo", "up")

    def build(self, egress_ips: list[str], agents: int) -> None:
        self._add(self.gateway)
        self._add(self.origin)
        for key in ("net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0"):
            subprocess.run(in_netns(self.gateway, "sysctl", "-qw", key), check=True)
        self._link(self.gateway, _GW_ORIGIN, self.origin, _ORIGIN_GW, "o")
        ip("-n", self.origin, "addr", "add", f"{ORIGIN}/32", "dev", "lo")
        ip("-n", self.origin, "route", "add", "default", "via", _GW_ORIGIN)
        ip("-n", self.gateway, "route", "add", f"{ORIGIN}/32", "via", _ORIGIN_GW)
        for address in egress_ips:  # answers nobody steers are dropped, not looped
            ip("-n", self.gateway, "route", "add", "unreachable", f"{address}/32")
        for index in range(agents):
            ns = self.agent_ns(index)
            self._add(ns)
            gw_side, agent_side = agent_link(index)
            self._link(self.gateway, gw_side, ns, agent_side, str(index))
            for address in egress_ips:
                ip("-n", ns, "addr", "add", f"{address}/32", "dev", "lo")
            ip("-n", ns, "route", "add", "default", "via", gw_side, "src", agent_side)

    def _link(self, left: str, left_ip: str, right: str, right_ip: str, tag: str) -> None:
        a, b = f"psDl{tag}{self.suffix}", f"psDr{tag}{self.suffix}"
        ip("link", "add", a, "netns", left, "type", "veth", "peer", "name", b, "netns", right)
        for ns, dev, address in ((left, a, left_ip), (right, b, right_ip)):
            ip("-n", ns, "addr", "add", f"{address}/30", "dev", dev)
            ip("-n", ns, "link", "set", dev, "up")
            subprocess.run(
                in_netns(ns, "sysctl", "-qw", f"net.ipv4.conf.{dev}.rp_filter=0"), check=True
            )

    def steer(self, script: str) -> None:
        """Load a steering table into the gateway: the planner's re-runnable script
        (routes and rules added when missing, the nft table in one transaction)."""
        subprocess.run(in_netns(self.gateway, "sh", "-s"), input=script, text=True,
                       check=True, capture_output=True)  # fmt: skip

    def remove(self) -> None:
        remove_recorded(self.record)


def remove_recorded(record: Path) -> list[str]:
    """Delete the namespaces a run recorded (this one, or one that was killed)."""
    try:
        names = json.loads(record.read_text())
    except (OSError, ValueError):
        return []
    for name in names:
        ip("netns", "del", name, check=False)
    record.unlink(missing_ok=True)
    return list(names)
