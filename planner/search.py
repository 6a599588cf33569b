"""Reads for the one search box: a host name, an egress IP or ``ip:port``.

Answers where to look (the datacenter page, with what to highlight) and, for a
port, who owns it: the machine whose live slice holds it, or why nobody does.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from planner.models import EgressIP, Machine, PortSlice

# Machines listed when a partial name matches several.
MATCHES_LISTED = 50
ERR_EMPTY = "Type a host name, an egress IP or IP:port."
ERR_PORT = "Port “{value}” in “{query}” is not a port number (0-65535)."
ERR_NO_MATCH = (
    "Nothing matches “{query}”: no machine by that name and no egress IP at that address."
)


@dataclass
class SearchAnswer:
    """Where a query leads: one datacenter to open with ``highlight``, or a list, or an error."""

    query: str
    datacenter: str = ""
    highlight: str = ""
    owner: str = ""  # ip:port: the machine whose slice holds the port
    why_nobody: str = ""  # ip:port nobody owns: free, reserved or unusable
    machines: list[Machine] = field(default_factory=list)
    error: str = ""


def search_resolve(*, query: str) -> SearchAnswer:
    """What ``query`` names: a machine (exact, else the one whose name contains it),
    an egress IP, or a port on one."""
    query = query.strip()
    answer = SearchAnswer(query=query)
    if not query:
        answer.error = ERR_EMPTY
        return answer
    address, port = _split_port(query)
    if address is not None:
        return _resolve_ip(answer, address, port)
    exact = Machine.objects.filter(hostname__iexact=query).select_related("datacenter").first()
    found = (
        [exact]
        if exact
        else list(
            Machine.objects.filter(hostname__icontains=query)
            .select_related("datacenter")
            .order_by("hostname")[: MATCHES_LISTED + 1]
        )
    )
    if len(found) == 1:
        answer.datacenter, answer.highlight = found[0].datacenter.code, found[0].hostname
    elif found:
        answer.machines = found
    else:
        answer.error = ERR_NO_MATCH.format(query=query)
    return answer


def _split_port(query: str) -> tuple[str | None, str | None]:
    """(address, port) when ``query`` is an IP or ip:port (``[v6]:port`` too), else Nones."""
    host, port = query, None
    if query.startswith("[") and "]:" in query:
        host, port = query[1:].split("]:", 1)
    elif query.count(":") == 1:
        host, port = query.split(":", 1)
    try:
        return str(ipaddress.ip_address(host)), port
    except ValueError:
        return None, None


def _resolve_ip(answer: SearchAnswer, address: str, port_text: str | None) -> SearchAnswer:
    ip = EgressIP.objects.filter(address=address).select_related("pool__datacenter").first()
    if ip is None:
        answer.error = ERR_NO_MATCH.format(query=answer.query)
        return answer
    answer.datacenter = ip.pool.datacenter.code
    if port_text is None:
        answer.highlight = address
        return answer
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        answer.error = ERR_PORT.format(value=port_text, query=answer.query)
        return answer
    port = int(port_text)
    answer.highlight = f"{address}:{port}"
    owner = (
        PortSlice.objects.filter(ip=ip, lo__lte=port, hi__gte=port)
        .select_related("machine")
        .first()
    )
    if owner is not None:
        answer.owner = owner.machine.hostname
    elif port in (ip.reserved_ports or ()):
        answer.why_nobody = "reserved"
    elif not ip.usable_lo <= port <= ip.usable_hi:
        answer.why_nobody = "unusable: outside the IP's usable range"
    else:
        answer.why_nobody = "free: no slice holds it"
    return answer
