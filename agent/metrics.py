"""Prometheus metrics of the agent, served on ``metrics_address`` (default 127.0.0.1:9465).

==================================================  =======  ===================================
metric                                              type     labels
==================================================  =======  ===================================
``portslice_agent_applied_serial``                  gauge
``portslice_agent_bundle_rejections_total``         counter  ``reason``
``portslice_agent_slice_sockets``                   gauge    ``ip``, ``lo``, ``hi``, ``proto``
``portslice_agent_enforcement``                     enum     ``part`` (port_range, nftables,
                                                             addresses)
``portslice_agent_nft_dropped_packets_total``       counter  ``proto``
``portslice_agent_slice_packets_total``             counter  ``ip``, ``lo``, ``hi``
``portslice_agent_egress_address_missing``          gauge    ``ip``
``portslice_agent_guard_dropped_packets_total``     counter  ``ip`` (a shared address)
==================================================  =======  ===================================

``egress_address_missing`` is 1 for each slice address not on the host, checked
at scrape time (0 when it is there). The nft metrics are read from the
table's named counters (and, per shared address, its dynamic drop sets) at scrape time.
``guard_dropped_packets_total`` counts, per shared address, packets sent from
it outside this host's slices (a spoof, or a program not using the egress
library); with the guard on, each of the bundle's addresses (up to 1,024)
starts at 0, so the first drop is an increase an alert sees. They restart from zero when a new
bundle replaces the table, which Prometheus treats as a counter reset
(``rate()`` copes).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Enum, Gauge, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from agent import enforce
from agent.addresses import AddressError, local_addresses, slice_addresses
from agent.bundle import Bundle
from agent.enforce import Enforcement
from agent.usage import SliceUsage

PREFIX = "portslice_agent"


class _NftCollector(Collector):
    """nft counters of table ``inet portslice``, read when Prometheus scrapes."""

    def __init__(self, current: Callable[[], Bundle | None]) -> None:
        self.current = current

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        counters = enforce.read_counters()
        bundle = self.current()
        dropped = CounterMetricFamily(
            f"{PREFIX}_nft_dropped_packets",
            "Egress packets from a shared IP dropped for a source port outside this host's slices",
            labels=["proto"],
        )
        for name in enforce.DROP_COUNTERS:
            if name in counters:
                dropped.add_metric([name.removeprefix("dropped_")], counters[name][0])
        per_slice = CounterMetricFamily(
            f"{PREFIX}_slice_packets",
            "Egress packets sent from each slice",
            labels=["ip", "lo", "hi"],
        )
        for item in () if bundle is None else enforce.live_slices(bundle):
            packets = counters.get(enforce.counter_name(item))
            if packets is not None:
                per_slice.add_metric([item.ip, str(item.lo), str(item.hi)], packets[0])
        by_address = CounterMetricFamily(
            f"{PREFIX}_guard_dropped_packets",
            "Egress packets the guard dropped (or reset) per shared source address",
            labels=["ip"],
        )
        drops = enforce.read_drops_by_address()
        if bundle is not None and counters:  # the guard is on: its addresses start at 0
            for address in enforce.guarded_addresses(bundle):
                drops.setdefault(address, 0)
        for address, dropped_here in sorted(drops.items()):
            by_address.add_metric([address], dropped_here)
        yield dropped
        yield by_address
        yield per_slice
        yield self._addresses(bundle)

    @staticmethod
    def _addresses(bundle: Bundle | None) -> GaugeMetricFamily:
        family = GaugeMetricFamily(
            f"{PREFIX}_egress_address_missing",
            "1 when the egress address of a slice is not configured on this host",
            labels=["ip"],
        )
        if bundle is None:
            return family
        try:
            local = local_addresses()
        except AddressError:
            return family
        for address in slice_addresses(bundle):
            family.add_metric([address], 0 if address in local else 1)
        return family


class AgentMetrics:
    """The agent's metrics in their own registry (no process-global state)."""

    def __init__(self, current: Callable[[], Bundle | None] = lambda: None) -> None:
        self.registry = CollectorRegistry()
        self.applied_serial = Gauge(
            f"{PREFIX}_applied_serial", "Serial of the bundle applied", registry=self.registry
        )
        self.rejections = Counter(
            f"{PREFIX}_bundle_rejections",
            "Bundles rejected, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.slice_sockets = Gauge(
            f"{PREFIX}_slice_sockets",
            "Established TCP and connected UDP sockets in each slice",
            ["ip", "lo", "hi", "proto"],
            registry=self.registry,
        )
        self.enforcement = Enum(
            f"{PREFIX}_enforcement",
            "State of each part of enforcement",
            ["part"],
            states=[enforce.ON, enforce.OFF, enforce.FAILED],
            registry=self.registry,
        )
        self.registry.register(_NftCollector(current))

    # agent.service.Observer
    def rejected(self, reason: str) -> None:
        self.rejections.labels(reason=reason).inc()

    def enforced(self, bundle: Bundle, enforcement: Enforcement) -> None:
        for name, part in enforcement.parts().items():
            self.enforcement.labels(part=name).state(part.state)
        if not enforcement.kernel_refused:  # applied, even with an address missing
            self.applied_serial.set(bundle.serial)

    # agent.usage.UsageObserver
    def usage(self, slices: list[SliceUsage]) -> None:
        self.slice_sockets.clear()  # slices that left the bundle must not linger
        for item in slices:
            labels = {"ip": item.ip, "lo": str(item.lo), "hi": str(item.hi)}
            self.slice_sockets.labels(**labels, proto="tcp").set(item.tcp)
            self.slice_sockets.labels(**labels, proto="udp").set(item.udp)

    def serve(self, address: tuple[str, int]) -> None:
        """Serve ``/metrics`` on ``address`` from a daemon thread."""
        start_http_server(address[1], addr=address[0], registry=self.registry)
