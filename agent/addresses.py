"""Are the egress addresses of this host's slices configured on it? Add them on ``lo`` if asked.

A slice on an address the host does not hold is unusable: every ``bind()`` to
it fails with ``EADDRNOTAVAIL`` ("Cannot assign requested address"). The agent
checks after each apply (and at every metrics scrape) and reports the missing
ones; with ``add_addresses`` on it adds them itself, as ``/32`` or ``/128`` on
the loopback device (IPv6 without duplicate address detection, which would
hold the address back for a second), where the return traffic steered to this
host is accepted as local.

Reads and writes go through rtnetlink (pyroute2), in the agent's own network
namespace.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from typing import Final

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from agent.bundle import Bundle

LOOPBACK: Final = "lo"
_IFA_F_NODAD: Final = 0x02
#: Linux answers on every address of this prefix (``lo`` holds 127.0.0.1/8 and a local
#: route for all of it), so any of them can be a source without root. Only an agent with
#: ``loopback_egress`` on (the demo without root) counts them as held; off by default, so
#: a production bundle naming one is reported missing like any other address.
LOOPBACK_EGRESS_RANGE: Final = ipaddress.ip_network("127.0.0.0/8")


class AddressError(Exception):
    """rtnetlink refused to list or add an address."""


def local_addresses() -> set[str]:
    """Every address configured on an interface of this network namespace, normalized."""
    try:
        with IPRoute() as ipr:
            return {
                str(ipaddress.ip_address(item.get_attr("IFA_ADDRESS")))
                for item in ipr.get_addr()
                if item.get_attr("IFA_ADDRESS")
            }
    except (OSError, NetlinkError) as error:
        raise AddressError(f"cannot list local addresses: {error}") from None


def slice_addresses(bundle: Bundle) -> list[str]:
    """The addresses of the bundle's live slices, sorted (IPv4 first)."""
    addresses = {ipaddress.ip_address(s.ip) for s in bundle.slices}
    return [str(a) for a in sorted(addresses, key=lambda a: (a.version, a))]


def missing_addresses(bundle: Bundle, *, loopback_egress: bool = False) -> list[str]:
    """Addresses of the bundle's slices that this host does not hold; with
    ``loopback_egress``, one in 127.0.0.0/8 is held (Linux answers on all of them)."""
    local = local_addresses()
    return [
        address
        for address in slice_addresses(bundle)
        if address not in local
        and not (loopback_egress and ipaddress.ip_address(address) in LOOPBACK_EGRESS_RANGE)
    ]


def add_on_loopback(addresses: Iterable[str]) -> None:
    """Add each address as a host route on ``lo``; one already there is not an error."""
    try:
        with IPRoute() as ipr:
            index = ipr.link_lookup(ifname=LOOPBACK)[0]
            for address in addresses:
                parsed = ipaddress.ip_address(address)
                extra = {"flags": _IFA_F_NODAD} if parsed.version == 6 else {}
                try:
                    ipr.addr("add", index=index, address=address, prefixlen=parsed.max_prefixlen,
                             **extra)  # fmt: skip
                except NetlinkError as error:
                    if error.code != 17:  # EEXIST: someone added it meanwhile
                        raise
    except (OSError, NetlinkError, IndexError) as error:
        raise AddressError(f"cannot add addresses on {LOOPBACK}: {error}") from None
