"""Exact-range mode: unmodified programs take their source ports from this host's slices.

A program that does not use portslice's library (nginx, Envoy, curl, a Go or
Java service) gets its source port from the kernel, which draws it from the
network namespace's ``net.ipv4.ip_local_port_range`` (IPv6 too). In a
namespace dedicated to one machine's workload the agent can set that range
to *exactly* the machine's active range, so every port the kernel picks lies
in a slice. That needs the active slices to be one range, the same on every
IP: what an aligned pool hands out (docs/design.md). Draining slices are left
out of the range (no new connection may start on them) but stay allowed by
the guard, so connections opened on them keep working until the drain ends.

Optionally the namespace's default route gets ``src`` set to a shared IP
(``route_source``), so programs that bind no address egress from it too
rather than from the machine's own address.

When the active slices are not one range the mode is refused, with the
reason, and the bundle is not applied (:mod:`agent.enforce` reports it in the
ack, ``python -m agent status`` and the metrics); the previous range stays.
"""

from __future__ import annotations

import ipaddress
import socket
from collections import defaultdict
from typing import Final

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from agent.bundle import Bundle

_MAIN_TABLE: Final = 254


class NotOneRange(Exception):
    """The active slices cannot be one port range; the message says why."""


class RouteSourceError(Exception):
    """The default route's source could not be set; the message says why."""


def exact_range(bundle: Bundle) -> tuple[int, int]:
    """The one ``(lo, hi)`` every active slice of ``bundle`` makes, on every IP alike.

    Adjacent slices of one IP merge (an aligned range of several slots is
    several slices). Raises :class:`NotOneRange` naming the IPs and ranges.
    """
    runs_by_ip: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for item in sorted(bundle.slices, key=lambda s: (s.ip, s.lo)):
        if item.state != "active":
            continue
        runs = runs_by_ip[item.ip]
        if runs and runs[-1][1] + 1 == item.lo:
            runs[-1] = (runs[-1][0], item.hi)
        else:
            runs.append((item.lo, item.hi))
    if not runs_by_ip:
        raise NotOneRange("this host holds no active slice")
    for address, runs in sorted(runs_by_ip.items()):
        if len(runs) > 1:
            listed = ", ".join(f"{lo}-{hi}" for lo, hi in runs)
            raise NotOneRange(f"{address} holds {listed}, not one range (is the pool aligned?)")
    ranges = {address: runs[0] for address, runs in runs_by_ip.items()}
    first, *others = sorted(ranges.items())
    for address, span in others:
        if span != first[1]:
            raise NotOneRange(
                f"{first[0]} holds {first[1][0]}-{first[1][1]} but {address} holds "
                f"{span[0]}-{span[1]}: not the same range on every IP (is the pool aligned?)"
            )
    return first[1]


def set_route_source(address: str) -> str:
    """Give the namespace's default route (of ``address``'s IP version) ``src address``.

    Keeps the route's gateway, device, metric and protocol. Returns what it did;
    raises :class:`RouteSourceError` when there is no default route or the
    kernel refuses (the address is not local, for one).
    """
    version = ipaddress.ip_address(address).version
    family, default = (socket.AF_INET, "0.0.0.0/0") if version == 4 else (socket.AF_INET6, "::/0")
    try:
        with IPRoute() as ipr:
            routes = ipr.get_default_routes(family=family, table=_MAIN_TABLE)
            if not routes:
                raise RouteSourceError(f"no IPv{version} default route to give src {address}")
            route = routes[0]
            if route.get_attr("RTA_PREFSRC") == address:
                return f"default route already has src {address}"
            ipr.route(
                "replace",
                dst=default,
                gateway=route.get_attr("RTA_GATEWAY"),
                oif=route.get_attr("RTA_OIF"),
                priority=route.get_attr("RTA_PRIORITY"),
                prefsrc=address,
                table=_MAIN_TABLE,
                proto=route["proto"],
            )
    except (OSError, NetlinkError) as error:
        raise RouteSourceError(f"cannot set src {address} on the default route: {error}") from None
    return f"default route src set to {address}"
