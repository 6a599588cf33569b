"""Live sockets per slice and per 64-port bucket, reported to the planner every few seconds.

Counts come from one sock_diag dump per slice and protocol, filtered in the
kernel by source address and source port range (:mod:`agent.sockdiag`), so the
cost grows with the sockets of this host's slices, not with every socket on the
machine. Counted: TCP sockets in ESTABLISHED and *connected* UDP sockets (an
unconnected UDP socket holds no 4-tuple). Only sockets of the agent's own
network namespace are seen.

Buckets are aligned on absolute port numbers (``port // 64 * 64``), not on the
slice, so the planner's heatmap of an IP lines up across machines.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Final, Protocol

import contract
from agent.bundle import Bundle, BundleSlice
from agent.enforce import live_slices
from agent.sockdiag import TCP_ESTABLISHED, SockDiag, family_of

log = logging.getLogger(__name__)

BUCKET_SIZE: Final = contract.BUCKET_SIZE
_ESTABLISHED: Final = 1 << TCP_ESTABLISHED


class UsageObserver(Protocol):
    def usage(self, slices: list[SliceUsage]) -> None: ...


@dataclass(frozen=True, slots=True)
class SliceUsage:
    """Sockets using one slice: totals per protocol, and TCP+UDP per bucket."""

    ip: str
    lo: int
    hi: int
    tcp: int
    udp: int
    #: ``{bucket_lo: sockets}`` with only non-empty buckets.
    buckets: dict[int, int]

    def as_dict(self) -> dict[str, Any]:
        # JSON object keys are strings: the bucket's first port in decimal.
        return {
            "ip": self.ip,
            "lo": self.lo,
            "hi": self.hi,
            "tcp": self.tcp,
            "udp": self.udp,
            "buckets": {str(lo): count for lo, count in sorted(self.buckets.items())},
        }


def bucket_of(port: int) -> int:
    return port - port % BUCKET_SIZE


def _sports(diag: SockDiag, item: BundleSlice, protocol: int) -> list[int]:
    return diag.dump_sports(
        family=family_of(item.ip),
        protocol=protocol,
        states=_ESTABLISHED,
        src=item.ip,
        sport_range=(item.lo, item.hi),
    )


def measure(slices: Iterable[BundleSlice], diag: SockDiag) -> list[SliceUsage]:
    """Socket counts for each slice (one TCP and one UDP dump each)."""
    usage = []
    for item in slices:
        tcp = _sports(diag, item, socket.IPPROTO_TCP)
        udp = _sports(diag, item, socket.IPPROTO_UDP)
        buckets = Counter(bucket_of(port) for port in (*tcp, *udp))
        usage.append(SliceUsage(item.ip, item.lo, item.hi, len(tcp), len(udp), dict(buckets)))
    return usage


def usage_kwargs(hostname: str, bundle: Bundle, usage: list[SliceUsage], at: float) -> dict:
    """The kwargs of ``planner.record_usage`` (see :mod:`agent.worker`), checked by the contract."""
    return contract.usage_message(
        hostname=hostname,
        serial=bundle.serial,
        at=at,
        slices=[item.as_dict() for item in usage],
    )


class UsageReporter(threading.Thread):
    """A daemon thread: measure now, then every ``interval`` seconds, and ``send`` the report.

    ``current`` returns the applied bundle (``None`` before the first); ``send``
    publishes the kwargs and may raise (broker down): the error is logged and
    the next round tries again with fresh numbers.
    """

    def __init__(
        self,
        *,
        hostname: str,
        current: Callable[[], Bundle | None],
        send: Callable[[dict], None],
        interval: float,
        observer: UsageObserver | None = None,
    ) -> None:
        super().__init__(name="portslice-usage", daemon=True)
        self.hostname = hostname
        self.current = current
        self.send = send
        self.interval = interval
        self.observer = observer
        self._stop_event = threading.Event()
        self._send_failing = False

    def stop(self) -> None:
        self._stop_event.set()

    def run(self) -> None:
        with SockDiag() as diag:
            while True:
                self.report_once(diag)
                if self._stop_event.wait(self.interval):
                    return

    def report_once(self, diag: SockDiag) -> dict | None:
        bundle = self.current()
        if bundle is None:
            return None
        try:
            usage = measure(live_slices(bundle), diag)
        except OSError as error:
            log.warning("sock_diag failed, usage not measured: %s", error)
            return None
        if self.observer is not None:
            self.observer.usage(usage)
        report = usage_kwargs(self.hostname, bundle, usage, time.time())
        self._send(report)
        return report

    def _send(self, report: dict) -> None:
        try:
            self.send(report)
        except Exception as error:  # the broker's errors vary by transport
            if not self._send_failing:
                log.warning("usage report not sent (will keep trying): %s", error)
            self._send_failing = True
            return
        if self._send_failing:
            log.info("usage reports are reaching the broker again")
        self._send_failing = False
