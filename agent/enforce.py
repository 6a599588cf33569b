"""Make the kernel hold this host to its slices: the netns port range and an nftables guard.

Three parts, each reported as ``on``, ``off`` (not managed here, with the reason)
or ``failed`` (tried and could not):

* **port range** — ``IP_LOCAL_PORT_RANGE`` only narrows the network namespace's
  ``net.ipv4.ip_local_port_range``; a bound outside it is silently ignored
  (docs/design.md). Every live slice must lie inside the netns range, widened by
  :func:`agent.egress.ensure_netns_port_range` when ``manage_port_range`` is on.
  If it cannot be made to cover them the bundle is *not* applied. In exact-range
  mode (:mod:`agent.exact`) the range is instead set to exactly the active
  slices' one range, and a bundle whose active slices are not one range is
  refused the same way, with the reason.
* **nftables** — a table of our own, ``inet portslice``, that drops egress TCP
  and UDP from a shared IP whose source port lies outside this host's live
  slices (active and draining), counting drops per protocol and packets per
  slice in named counters. The shared IPs are *every* egress address of the
  datacenter (the bundle's ``shared`` prefixes) plus the addresses of the
  slices: a host is held off its neighbours' ports on addresses where it has
  no slice too, and with no slice at all (after a drain ends) it may send from
  none of them. A TCP SYN from outside the slices is answered with a reset
  (``reject with tcp reset``), so ``connect()`` fails at once with
  ``ECONNREFUSED``; other TCP segments and UDP are dropped, which makes
  ``send``/``sendto`` fail with ``EPERM``. The table is replaced in
  one ``nft -f`` transaction (``table`` + ``delete table`` + the definition):
  the kernel applies all of it or none, so a failed apply leaves the previous
  ruleset in place.

* **addresses** — every egress address the host holds a slice on must be
  local (:mod:`agent.addresses`); with ``add_addresses`` the agent adds the
  missing ones on ``lo``. A missing address fails this part (and so the
  ack), but does not undo the other two: the guard and the port range are
  right whatever the addresses.

Why the ``output`` hook and not ``postrouting``: the guard is for this host's
own sockets, and ``output`` sees every locally generated packet with its final
source address (the route lookup that picks an unbound socket's source runs
before the hook). A drop there makes the offending ``sendto``/``connect`` fail
with ``EPERM`` in the process that chose the wrong port, which is where the bug
is. ``postrouting`` would also see forwarded packets: on a host that routes for
others (a gateway, a hypervisor) it would drop the *other* owners' egress from
the same shared IP, whose ports are by design outside this host's slices. It
would also see packets after SNAT, which only matters if containers are
masqueraded onto a shared IP — that needs ``snat to IP:lo-hi`` pinned to a
slice, a separate setup the agent does not manage.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from agent.addresses import (
    LOOPBACK_EGRESS_RANGE,
    AddressError,
    add_on_loopback,
    missing_addresses,
    slice_addresses,
)
from agent.bundle import Bundle, BundleSlice
from agent.egress import ensure_netns_port_range, netns_port_range, set_netns_port_range
from agent.exact import NotOneRange, RouteSourceError, exact_range, set_route_source

log = logging.getLogger(__name__)

TABLE: Final = "portslice"
FAMILY: Final = "inet"
DROP_COUNTERS: Final = ("dropped_tcp", "dropped_udp")
# The dynamic sets (one per IP version) counting drops per shared source address.
DROPS_BY_ADDRESS: Final = "dropped_by_address"
NFT_TIMEOUT: Final = 30.0

ON: Final = "on"
OFF: Final = "off"
FAILED: Final = "failed"

_CAP_NET_ADMIN: Final = 12
_NAME_JUNK: Final = re.compile(r"[^A-Za-z0-9]")


class EnforcementError(Exception):
    """nft refused the ruleset (or could not be run); the previous ruleset stays."""


@dataclass(frozen=True, slots=True)
class Part:
    """One part of enforcement: ``state`` is on, off or failed; ``detail`` says why."""

    state: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"state": self.state, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class Enforcement:
    """What :func:`enforce` did for one bundle."""

    serial: int
    port_range: Part
    nftables: Part
    addresses: Part = Part(OFF, "not checked")
    #: Egress addresses of the slices that this host does not hold.
    missing: tuple[str, ...] = ()

    def parts(self) -> dict[str, Part]:
        return {
            "port_range": self.port_range,
            "nftables": self.nftables,
            "addresses": self.addresses,
        }

    @property
    def ok(self) -> bool:
        """True unless a part failed: ``off`` (not managed, not possible here) is not a failure."""
        return all(part.state != FAILED for part in self.parts().values())

    @property
    def kernel_refused(self) -> bool:
        """The port range or the ruleset failed: the kernel still holds the previous state."""
        return FAILED in (self.port_range.state, self.nftables.state)

    @property
    def errors(self) -> str:
        failed = [
            f"{name}: {part.detail}" for name, part in self.parts().items() if part.state == FAILED
        ]
        return "; ".join(failed)

    def as_dict(self) -> dict[str, object]:
        document: dict[str, object] = {"serial": self.serial}
        document.update({name: part.as_dict() for name, part in self.parts().items()})
        document["missing_addresses"] = list(self.missing)
        return document


# --- the ruleset -----------------------------------------------------------------------------


def live_slices(bundle: Bundle) -> tuple[BundleSlice, ...]:
    """Slices whose ports are this host's: active and draining alike."""
    return tuple(s for s in bundle.slices if s.state in ("active", "draining"))


def counter_name(item: BundleSlice) -> str:
    """``slice_198_51_100_7_40000_40063``: the named counter of one slice."""
    return "slice_" + _NAME_JUNK.sub("_", f"{item.ip}_{item.lo}_{item.hi}")


def _element(item: BundleSlice) -> str:
    ports = str(item.lo) if item.lo == item.hi else f"{item.lo}-{item.hi}"
    return f"{item.ip} . {ports}"


def _elements(items: Iterable[str]) -> str:
    listed = ", ".join(items)
    return f" elements = {{ {listed} }};" if listed else ""


def guarded_prefixes(bundle: Bundle, version: int) -> list[str]:
    """The shared prefixes of IP ``version`` to guard: the bundle's ``shared`` claim and the
    addresses of its slices (a bundle from before the claim still guards those), collapsed."""
    networks = [ipaddress.ip_network(p) for p in bundle.shared]
    networks += [ipaddress.ip_network(s.ip) for s in bundle.slices]
    same_version: Any = [n for n in networks if n.version == version]  # one version: collapsible
    return [str(n) for n in ipaddress.collapse_addresses(same_version)]


def _family_block(
    version: int, shared: list[str], slices: list[BundleSlice]
) -> tuple[list[str], list[str]]:
    """Sets/maps and rules of one IP version (``ip``/``ipv4_addr`` or ``ip6``/``ipv6_addr``)."""
    v, addr_type, match = (4, "ipv4_addr", "ip") if version == 4 else (6, "ipv6_addr", "ip6")
    allowed = ", ".join(_element(s) for s in slices)
    counters = ", ".join(f'{_element(s)} : "{counter_name(s)}"' for s in slices)
    definitions = [
        f"set shared_v{v} {{ type {addr_type}; flags interval;{_elements(shared)} }}",
        f"set allowed_v{v} {{ type {addr_type} . inet_service; flags interval;"
        f"{_elements([allowed] if allowed else [])} }}",
        f"map slice_counters_v{v} {{ type {addr_type} . inet_service : counter; flags interval;"
        f"{_elements([counters] if counters else [])} }}",
        # Drops per shared source address: only addresses in shared_v4/v6 reach it.
        f"set {DROPS_BY_ADDRESS}_v{v} {{ type {addr_type}; size 65536; flags dynamic; counter; }}",
    ]
    guard = f"{match} saddr @shared_v{v} meta l4proto {{ tcp, udp }}"
    outside = f"{match} saddr . th sport != @allowed_v{v}"
    count_address = f"update @{DROPS_BY_ADDRESS}_v{v} {{ {match} saddr }}"
    rules = [
        # A SYN from outside the slices gets a reset, so connect() fails at once with
        # ECONNREFUSED instead of retransmitting until ETIMEDOUT.
        f"{match} saddr @shared_v{v} tcp flags & (syn | ack) == syn {outside} "
        f"{count_address} "
        'counter name "dropped_tcp" reject with tcp reset',
        f"{guard} {outside} {count_address} counter name meta l4proto map @dropped drop",
        f"{guard} counter name {match} saddr . th sport map @slice_counters_v{v}",
    ]
    return definitions, rules


def render_ruleset(bundle: Bundle) -> str:
    """The ``nft -f`` script that replaces table ``inet portslice`` for ``bundle``, atomically."""
    slices = sorted(live_slices(bundle), key=lambda s: (s.version, s.ip, s.lo))
    lines = [
        f"# portslice agent: bundle serial {bundle.serial}, revision {bundle.revision}",
        f"table {FAMILY} {TABLE}",
        f"delete table {FAMILY} {TABLE}",
        f"table {FAMILY} {TABLE} {{",
    ]
    lines += [f"\tcounter {name} {{ }}" for name in DROP_COUNTERS]
    lines += [f"\tcounter {counter_name(s)} {{ }}" for s in slices]
    lines.append(
        '\tmap dropped { type inet_proto : counter; elements = { tcp : "dropped_tcp", '
        'udp : "dropped_udp" }; }'
    )
    rules: list[str] = []
    for version in (4, 6):
        definitions, family_rules = _family_block(
            version,
            guarded_prefixes(bundle, version),
            [s for s in slices if s.version == version],
        )
        lines += [f"\t{line}" for line in definitions]
        rules += family_rules
    lines.append("\tchain egress {")
    lines.append("\t\ttype filter hook output priority filter; policy accept;")
    lines += [f"\t\t{rule}" for rule in rules]
    lines += ["\t}", "}", ""]
    return "\n".join(lines)


# --- nft ---------------------------------------------------------------------------------------


def nft_unavailable() -> str | None:
    """Why nft cannot be used here, or ``None`` if it can (binary found, CAP_NET_ADMIN held)."""
    if shutil.which("nft") is None:
        return "the nft command is not installed"
    if not _has_net_admin():
        return "the agent lacks CAP_NET_ADMIN (run it as root)"
    return None


def _has_net_admin() -> bool:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("CapEff:"):
                    return bool(int(line.split()[1], 16) >> _CAP_NET_ADMIN & 1)
    except OSError:
        pass
    return os.geteuid() == 0


def _nft(*args: str, script: str | None = None) -> str:
    try:
        result = subprocess.run(
            ["nft", *args],
            input=script,
            capture_output=True,
            text=True,
            timeout=NFT_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise EnforcementError(f"nft {' '.join(args)}: {error}") from None
    if result.returncode != 0:
        message = result.stderr.strip() or f"exit status {result.returncode}"
        raise EnforcementError(f"nft {' '.join(args)}: {message}")
    return result.stdout


def apply_ruleset(text: str) -> None:
    """Load an ``nft -f`` script in one transaction; :class:`EnforcementError` if refused."""
    _nft("-f", "-", script=text)


def remove_ruleset() -> None:
    """Delete table ``inet portslice`` if it exists (in one transaction, so never half)."""
    _nft("-f", "-", script=f"table {FAMILY} {TABLE}\ndelete table {FAMILY} {TABLE}\n")


def table_present() -> bool:
    try:
        _nft("list", "table", FAMILY, TABLE)
    except EnforcementError:
        return False
    return True


def read_counters() -> dict[str, tuple[int, int]]:
    """``{counter name: (packets, bytes)}`` of table ``inet portslice``; empty if it is absent."""
    try:
        output = _nft("-j", "list", "counters", "table", FAMILY, TABLE)
    except EnforcementError:
        return {}
    counters: dict[str, tuple[int, int]] = {}
    for item in json.loads(output).get("nftables", []):
        counter = item.get("counter")
        if counter and counter.get("table") == TABLE:
            counters[counter["name"]] = (int(counter["packets"]), int(counter["bytes"]))
    return counters


# Most shared addresses the metrics list with zero drops (collapsed prefixes can be big).
ZERO_DROPS_LIMIT: Final = 1024


def guarded_addresses(bundle: Bundle) -> list[str]:
    """The shared addresses the guard covers, its own slices' first, at most
    :data:`ZERO_DROPS_LIMIT` of them: a drop counter starts at zero for each, so the
    first drop shows as an increase."""
    found = dict.fromkeys(slice_item.ip for slice_item in bundle.slices)
    for prefix in bundle.shared:
        for address in ipaddress.ip_network(prefix):
            if len(found) >= ZERO_DROPS_LIMIT:
                return list(found)
            found.setdefault(str(address))
    return list(found)[:ZERO_DROPS_LIMIT]


def read_drops_by_address() -> dict[str, int]:
    """``{shared address: packets dropped}`` since the table was last replaced; empty
    if it is absent. Only addresses that dropped something are listed."""
    drops: dict[str, int] = {}
    for version in (4, 6):
        try:
            output = _nft("-j", "list", "set", FAMILY, TABLE, f"{DROPS_BY_ADDRESS}_v{version}")
        except EnforcementError:
            continue
        for item in json.loads(output).get("nftables", []):
            for element in item.get("set", {}).get("elem", []):
                found = element.get("elem", {})
                if isinstance(found.get("val"), str) and "counter" in found:
                    drops[found["val"]] = int(found["counter"]["packets"])
    return drops


# --- enforcement --------------------------------------------------------------------------------


def _port_range_part(bundle: Bundle, *, manage: bool) -> Part:
    ranges = [(s.lo, s.hi) for s in live_slices(bundle)]
    if not ranges:
        return Part(ON, "no live slices")
    need_lo, need_hi = min(lo for lo, _ in ranges), max(hi for _, hi in ranges)
    if manage:
        ensure_netns_port_range(ranges)  # logs why when it cannot widen
    low, high = netns_port_range()
    if low <= need_lo and need_hi <= high:
        return Part(ON, f"netns port range {low}-{high} covers the slices ({need_lo}-{need_hi})")
    why = "could not be widened (see the agent log)" if manage else "manage_port_range is off"
    return Part(
        FAILED, f"netns port range {low}-{high} does not cover slices {need_lo}-{need_hi}; {why}"
    )


def _exact_range_part(bundle: Bundle, *, manage: bool, route_source: str | None) -> Part:
    """Exact-range mode (:mod:`agent.exact`): the netns range is the active range, no wider."""
    if not any(s.state == "active" for s in bundle.slices):
        # A machine leaving: nothing to narrow to. Refusing would keep the previous
        # bundle's guard, which still allows its slices; applying lets it end with them.
        low, high = netns_port_range()
        return Part(ON, f"exact: no active slice; netns port range {low}-{high} left as it is")
    try:
        lo, hi = exact_range(bundle)
    except NotOneRange as why:
        return Part(FAILED, f"exact-range mode refused: {why}; the previous range stays")
    active_ips = {ipaddress.ip_address(s.ip) for s in bundle.slices if s.state == "active"}
    if route_source is not None and ipaddress.ip_address(route_source) not in active_ips:
        return Part(FAILED, f"route_source {route_source} holds no active slice of this host")
    low, high = netns_port_range()
    if (low, high) != (lo, hi):
        if not manage:
            return Part(
                FAILED,
                f"netns port range {low}-{high} is not the active range {lo}-{hi}; "
                "exact-range mode needs manage_port_range",
            )
        try:
            set_netns_port_range(lo, hi)
        except OSError as error:
            return Part(FAILED, f"cannot set the netns port range to {lo}-{hi}: {error}")
    count = len(active_ips)
    detail = f"exact: netns port range is the active range {lo}-{hi} on {count} IP"
    detail += "" if count == 1 else "s"
    draining = sum(1 for s in bundle.slices if s.state == "draining")
    if draining:
        detail += f"; {draining} draining slices left out (the guard still allows them)"
    if route_source is not None:
        try:
            detail += "; " + set_route_source(route_source)
        except RouteSourceError as error:
            return Part(FAILED, f"{detail}; {error}")
    return Part(ON, detail)


def _nftables_part(bundle: Bundle, *, manage: bool) -> Part:
    if not manage:
        return Part(OFF, "manage_nftables is off")
    reason = nft_unavailable()
    if reason is not None:
        return Part(OFF, reason)
    try:
        apply_ruleset(render_ruleset(bundle))
    except EnforcementError as error:
        return Part(FAILED, f"previous ruleset kept: {error}")
    count = len(live_slices(bundle))
    prefixes = guarded_prefixes(bundle, 4) + guarded_prefixes(bundle, 6)
    return Part(
        ON, f"table {FAMILY} {TABLE} guards {len(prefixes)} shared prefixes, {count} slices"
    )


def addresses_part(
    bundle: Bundle, *, add: bool, loopback_egress: bool = False
) -> tuple[Part, tuple[str, ...]]:
    """Whether the slices' egress addresses are local (added on ``lo`` first when ``add``;
    with ``loopback_egress`` any in 127.0.0.0/8 is local without adding)."""
    wanted = slice_addresses(bundle)
    if not wanted:
        return Part(ON, "no slice addresses to hold"), ()
    try:
        missing = missing_addresses(bundle, loopback_egress=loopback_egress)
        if missing and add:
            add_on_loopback(missing)
            log.warning("added egress addresses on lo: %s", ", ".join(missing))
            missing = missing_addresses(bundle, loopback_egress=loopback_egress)
    except AddressError as error:
        return Part(FAILED, str(error)), ()
    if missing:
        hint = "" if add else " (add them, or set add_addresses = true)"
        detail = f"not on this host: {', '.join(missing)}{hint}; connects from them fail"
        return Part(FAILED, detail), tuple(missing)
    if loopback_egress and any(
        ipaddress.ip_address(address) in LOOPBACK_EGRESS_RANGE for address in wanted
    ):
        return Part(ON, f"all {len(wanted)} egress addresses are local (loopback_egress)"), ()
    return Part(ON, f"all {len(wanted)} egress addresses are local"), ()


def enforce(
    bundle: Bundle,
    *,
    manage_port_range: bool,
    manage_nftables: bool,
    add_addresses: bool = False,
    loopback_egress: bool = False,
    exact: bool = False,
    route_source: str | None = None,
) -> Enforcement:
    """Bring the port range, the nftables guard and the egress addresses in line with
    ``bundle``; never raises for what the host refuses, it reports it.

    ``exact`` sets the port range to exactly the active range instead of widening
    it over the live slices, and ``route_source`` (exact mode only) gives the
    default route that ``src`` (see :mod:`agent.exact`).
    """
    if exact:
        port_range = _exact_range_part(bundle, manage=manage_port_range, route_source=route_source)
    else:
        port_range = _port_range_part(bundle, manage=manage_port_range)
    if port_range.state == FAILED:
        # Guarding slices the kernel cannot honour would block this host's egress outright.
        return Enforcement(bundle.serial, port_range, Part(OFF, "not applied: port range failed"))
    nftables = _nftables_part(bundle, manage=manage_nftables)
    addresses, missing = addresses_part(bundle, add=add_addresses, loopback_egress=loopback_egress)
    return Enforcement(bundle.serial, port_range, nftables, addresses, missing)
