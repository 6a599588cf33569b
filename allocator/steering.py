"""The steering table and its rendering for a Linux gateway: pure, shared by planner and gateway.

A load balancer steers return traffic by (destination IP, destination port) to
the machine owning that port. A Linux gateway does it with nftables and policy
routing: a map from ``daddr . dport`` intervals to a firewall mark per machine,
and for each mark an ``ip rule`` sending it to a route table whose default
route is that machine.

Rules that let a gateway follow every plan without cutting a flow:

* A machine's mark is **stable for life**: the planner allocates it once and
  never renumbers or reuses it (``Machine.steering_mark``), so a machine
  joining or leaving changes no other machine's mark or route.
* The map is replaced in **one nft transaction**: a packet sees the old table
  or the new one, never a mix or an empty one.
* Order: routes and rules of every mark in use first (a mark never points
  nowhere), then the map, then the rules and tables of marks no longer used.
* Every step is **idempotent**: ``ip route replace``; an ``ip rule`` is added
  only when missing; all of ours share the priority :data:`RULE_PRIORITY`, so
  stale ones are found and removed.
* **ICMP errors** (destination unreachable, fragmentation needed, time
  exceeded; packet too big for IPv6) to a shared IP are steered by the source
  port in the quoted header (raw payload matches ``@th,224,16`` / ``@th,384,16``:
  the 8-byte ICMP header, a 20-byte IPv4 or 40-byte IPv6 header, then the
  quoted source port), so path-MTU discovery reaches the owning host. IPv4
  quoted headers with options are not matched.

:func:`render_script` is the ``?format=nft`` export (a ``sh`` script) and what
the portslice gateway runs.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

MARK_BASE: Final = 0x5000
#: The priority of every ``ip rule`` portslice adds (lookups before ``main`` at 32766).
RULE_PRIORITY: Final = 20480
TABLE: Final = "portslice_steer"
ICMP_V4_TYPES: Final = "destination-unreachable, time-exceeded, parameter-problem"
ICMP_V6_TYPES: Final = "destination-unreachable, packet-too-big, time-exceeded, parameter-problem"


class SteeringError(ValueError):
    """A steering document that cannot be applied; the message names the field."""


@dataclass(frozen=True, slots=True)
class SteeringRow:
    """One live slice: ``lo``..``hi`` of ``ip`` steers to ``machine`` at ``next_hop``."""

    ip: str
    lo: int
    hi: int
    machine: str
    next_hop: str
    state: str
    mark: int


@dataclass(frozen=True, slots=True)
class Route:
    """Policy routing of one mark: ``fwmark mark`` → table ``mark`` → default via ``next_hop``."""

    mark: int
    next_hop: str
    machine: str

    @property
    def version(self) -> int:
        return ipaddress.ip_address(self.next_hop).version


def routes(rows: Iterable[SteeringRow]) -> list[Route]:
    """One route per machine, by mark."""
    found = {row.mark: Route(row.mark, row.next_hop, row.machine) for row in rows}
    return [found[mark] for mark in sorted(found)]


def marks(rows: Iterable[SteeringRow]) -> dict[str, int]:
    return {row.machine: row.mark for row in rows}


# --- nft -----------------------------------------------------------------------------------


def _map(name: str, key: str, elements: list[str]) -> list[str]:
    lines = [f"  map {name} {{", f"    {key} : mark; flags interval"]
    if elements:
        lines.append("    elements = {\n      " + ",\n      ".join(elements) + "\n    }")
    return [*lines, "  }"]


def render_nft(rows: Sequence[SteeringRow], *, datacenter: str, revision: int) -> str:
    """The ``nft -f`` script replacing table ``inet portslice_steer`` in one transaction."""
    by_family: dict[int, list[str]] = {4: [], 6: []}
    for r in rows:
        # The rows hold valid addresses (checked upstream): a colon is IPv6.
        by_family[6 if ":" in r.ip else 4].append(f"{r.ip} . {r.lo}-{r.hi} : {r.mark:#x}")
    lines = [
        f"# portslice steering for {datacenter}, revision {revision}: {len(rows)} slices",
        f"table inet {TABLE}",
        f"delete table inet {TABLE}",
        f"table inet {TABLE} {{",
        *_map("steer_v4", "type ipv4_addr . inet_service", by_family[4]),
        *_map("steer_v6", "type ipv6_addr . inet_service", by_family[6]),
        # Raw payload keys: the quoted header's source port is not a named field.
        *_map("icmp_v4", "typeof ip daddr . @th,224,16", by_family[4]),
        *_map("icmp_v6", "typeof ip6 daddr . @th,384,16", by_family[6]),
        "  chain prerouting {",
        "    type filter hook prerouting priority mangle; policy accept;",
        "    meta l4proto { tcp, udp } meta nfproto ipv4 meta mark set "
        "ip daddr . th dport map @steer_v4",
        "    meta l4proto { tcp, udp } meta nfproto ipv6 meta mark set "
        "ip6 daddr . th dport map @steer_v6",
        # Quoted header: IPv4 without options (0x45), carrying TCP or UDP.
        f"    icmp type {{ {ICMP_V4_TYPES} }} @th,64,8 0x45 @th,136,8 {{ 6, 17 }} "
        "meta mark set ip daddr . @th,224,16 map @icmp_v4",
        f"    icmpv6 type {{ {ICMP_V6_TYPES} }} @th,112,8 {{ 6, 17 }} "
        "meta mark set ip6 daddr . @th,384,16 map @icmp_v6",
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"


# --- the whole update as one re-runnable sh script ---------------------------------------------


def _ip(version: int) -> str:
    return "ip -6" if version == 6 else "ip -4"


def _policy_lines(table: Sequence[Route]) -> list[str]:
    lines = []
    for route in table:
        ip, mark = _ip(route.version), route.mark
        rule = f"pref {RULE_PRIORITY} fwmark {mark:#x} lookup {mark}"
        lines += [
            f"# {route.machine}",
            f"{ip} route replace default via {route.next_hop} table {mark}",
            f"{ip} rule show {rule} | grep -q . || {ip} rule add {rule}",
        ]
    return lines


def _sysctl_lines(table: Sequence[Route]) -> list[str]:
    lines = [
        "sysctl -qw net.ipv4.ip_forward=1",
        "sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.default.rp_filter=0",
    ]
    if any(route.version == 6 for route in table):
        lines.append("sysctl -qw net.ipv6.conf.all.forwarding=1")
    hops = " ".join(sorted({r.next_hop for r in table if r.version == 4}))
    if hops:
        # rp_filter is the max of "all" and the link's own value: clear it on each
        # link towards a host, which is where the hosts' egress comes in.
        lines += [
            f"for hop in {hops}; do",
            '  dev=$(ip -4 route get "$hop" | sed -n "s/.* dev \\([^ ]*\\).*/\\1/p")',
            '  [ -z "$dev" ] || sysctl -qw "net.ipv4.conf.$dev.rp_filter=0"',
            "done",
        ]
    return lines


def _cleanup_lines(table: Sequence[Route]) -> list[str]:
    lines = []
    for version in (4, 6):
        keep = " ".join(str(r.mark) for r in table if r.version == version)
        ip = _ip(version)
        lines += [
            f'keep=" {keep} "',
            f"for t in $({ip} rule show pref {RULE_PRIORITY} | "
            "sed -n 's/.*lookup \\([0-9]*\\).*/\\1/p' | sort -u); do",
            '  case "$keep" in *" $t "*) continue ;; esac',
            f'  while {ip} rule del pref {RULE_PRIORITY} lookup "$t" 2>/dev/null; do :; done',
            f'  {ip} route flush table "$t"',
            "done",
        ]
    return lines


def render_script(rows: Sequence[SteeringRow], *, datacenter: str, revision: int) -> str:
    """The whole gateway update as one ``sh`` script, safe to run again and again."""
    table = routes(rows)
    lines = [
        "#!/bin/sh",
        f"# portslice steering for {datacenter}, revision {revision}: "
        f"{len(rows)} slices, {len(table)} machines.",
        "# Run as root on the gateway, as often as you like: each run brings it to this",
        "# table and removes what an earlier one left. Marks are stable per machine.",
        "# The gateway needs forwarding on, and rp_filter 0 on the links to the hosts",
        "# (their egress comes in from the shared IPs, which it routes elsewhere):",
        "# step 0 sets both.",
        "set -eu",
        "# 0. forwarding on, reverse-path filtering off",
        *_sysctl_lines(table),
        "# 1. a route table and a rule for each mark, before any packet carries it",
        *_policy_lines(table),
        "# 2. the steering maps, replaced in one nft transaction",
        "nft -f - <<'PORTSLICE_NFT'",
        render_nft(rows, datacenter=datacenter, revision=revision).rstrip("\n"),
        "PORTSLICE_NFT",
        "# 3. rules and tables of marks no longer in use",
        *_cleanup_lines(table),
    ]
    return "\n".join(lines) + "\n"


# --- the JSON document (the API's answer, the gateway's input) -------------------------------


def steering_document(
    rows: Sequence[SteeringRow], *, datacenter: str, revision: int
) -> dict[str, Any]:
    """The JSON steering table: every live slice, its machine and next hop, the marks."""
    return {
        "datacenter": datacenter,
        "revision": revision,
        "marks": marks(rows),
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


def _int(value: object, where: str, lo: int, hi: int) -> int:
    if type(value) is not int or not lo <= value <= hi:
        raise SteeringError(f"{where}={value!r} is not an integer in {lo}-{hi}")
    return value


def _address(value: object, where: str) -> str:
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        raise SteeringError(f"{where}={value!r} is not an IP address") from None


def _row(raw: Any, index: int, mark_of: Mapping[str, int]) -> SteeringRow:
    where = f"slices[{index}]"
    if not isinstance(raw, dict):
        raise SteeringError(f"{where}={raw!r} is not an object")
    machine = raw.get("machine")
    if not isinstance(machine, str) or machine not in mark_of:
        raise SteeringError(f"{where}.machine={machine!r} has no mark in marks")
    lo = _int(raw.get("lo"), f"{where}.lo", 1, 65535)
    hi = _int(raw.get("hi"), f"{where}.hi", lo, 65535)
    return SteeringRow(
        ip=_address(raw.get("ip"), f"{where}.ip"),
        lo=lo,
        hi=hi,
        machine=machine,
        next_hop=_address(raw.get("next_hop"), f"{where}.next_hop"),
        state=str(raw.get("state", "")),
        mark=mark_of[machine],
    )


def rows_from_document(document: Mapping[str, Any]) -> list[SteeringRow]:
    """The rows of a :func:`steering_document`, checked; :class:`SteeringError` if not sound."""
    raw_marks = document.get("marks")
    if not isinstance(raw_marks, dict):
        raise SteeringError(f"marks={raw_marks!r} is not an object")
    mark_of = {
        str(name): _int(mark, f"marks[{name!r}]", MARK_BASE + 1, 0xFFFFFFFF)
        for name, mark in raw_marks.items()
    }
    if len(set(mark_of.values())) != len(mark_of):
        raise SteeringError("marks: two machines share a mark")
    slices = document.get("slices")
    if not isinstance(slices, list):
        raise SteeringError(f"slices={slices!r} is not a list")
    return [_row(raw, index, mark_of) for index, raw in enumerate(slices)]
