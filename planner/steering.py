"""The steering table: which machine gets return traffic for (IP, port range).

A load balancer matches destination IP and port against the live slices
(draining ones keep steering to their old owner). ``render_nft`` writes the
same table as a script for a Linux gateway doing the balancer's job
(docs/design.md, kernel facts): an nftables map from ``daddr . dport`` intervals to a firewall
mark per machine, and ``ip rule`` / ``ip route`` lines sending each mark to
that machine's address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

MARK_BASE = 0x5000  # marks and route tables start here, clear of common ones
TABLE = "portslice_steer"
MATCH = "meta l4proto { tcp, udp }"


@dataclass(frozen=True, slots=True)
class SteeringRow:
    ip: str
    lo: int
    hi: int
    machine: str
    next_hop: str
    state: str


def machine_marks(rows: Sequence[SteeringRow]) -> dict[str, int]:
    """A mark per machine, by hostname order: stable for a given set of machines."""
    return {name: MARK_BASE + n for n, name in enumerate(sorted({r.machine for r in rows}), 1)}


def render_nft(rows: Sequence[SteeringRow], *, datacenter: str, revision: int) -> str:
    marks = machine_marks(rows)
    lines = [
        "#!/usr/sbin/nft -f",
        f"# portslice steering for {datacenter}, revision {revision}: {len(rows)} slices",
        f"table inet {TABLE}",
        f"delete table inet {TABLE}",
        f"table inet {TABLE} {{",
    ]
    by_family: dict[int, list[str]] = {4: [], 6: []}
    for r in rows:
        # The rows hold valid addresses (the database checked them): a colon is IPv6.
        by_family[6 if ":" in r.ip else 4].append(f"{r.ip} . {r.lo}-{r.hi} : {marks[r.machine]:#x}")
    for family, addr_type in ((4, "ipv4_addr"), (6, "ipv6_addr")):
        elements = by_family[family]
        lines.append(f"  map steer_v{family} {{")
        lines.append(f"    type {addr_type} . inet_service : mark; flags interval")
        if elements:
            lines.append("    elements = {\n      " + ",\n      ".join(elements) + "\n    }")
        lines.append("  }")
    lines += [
        "  chain prerouting {",
        "    type filter hook prerouting priority mangle; policy accept;",
        f"    {MATCH} meta nfproto ipv4 meta mark set ip daddr . th dport map @steer_v4",
        f"    {MATCH} meta nfproto ipv6 meta mark set ip6 daddr . th dport map @steer_v6",
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def render_ip_rules(rows: Sequence[SteeringRow]) -> str:
    """``ip rule`` and ``ip route`` lines: mark N goes to table N, whose default is the machine."""
    marks = machine_marks(rows)
    hops = {r.machine: r.next_hop for r in rows}
    lines = []
    for machine, mark in sorted(marks.items(), key=lambda item: item[1]):
        hop = hops[machine]
        ip = "ip -6" if ipaddress.ip_address(hop).version == 6 else "ip"
        lines.append(f"# {machine}")
        lines.append(
            f"{ip} rule add fwmark {mark:#x} table {mark} priority {1000 + mark - MARK_BASE}"
        )
        lines.append(f"{ip} route replace default via {hop} table {mark}")
    return "\n".join(lines) + "\n"


def render_gateway_script(rows: Sequence[SteeringRow], *, datacenter: str, revision: int) -> str:
    """The nft script, then the policy-routing lines commented out (run them with sh)."""
    rules = "".join(
        line + "\n" if line.startswith("#") else f"#   {line}\n"
        for line in render_ip_rules(rows).splitlines()
    )
    script = render_nft(rows, datacenter=datacenter, revision=revision)
    return script + "\n# policy routing (run with sh):\n" + rules


def steering_document(
    rows: Sequence[SteeringRow], *, datacenter: str, revision: int
) -> dict[str, object]:
    """The JSON steering table: every live slice, its machine and next hop, the marks."""
    return {
        "datacenter": datacenter,
        "revision": revision,
        "marks": machine_marks(rows),
        "slices": [
            {
                "ip": r.ip,
                "lo": r.lo,
                "hi": r.hi,
                "machine": r.machine,
                "next_hop": r.next_hop,
                "state": r.state,
            }
            for r in rows
        ],
    }
