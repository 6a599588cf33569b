"""Prometheus metrics at /metrics, computed from the database at scrape time.

Set ``METRICS_TOKEN`` (or ``METRICS_TOKEN_FILE``) to require
``Authorization: Bearer <token>`` from the scraper.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterator

from django.conf import settings
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from planner.choices import BundleStatus
from planner.models import ConfigBundle, Machine, PortSlice, RebalanceRun, ReportRejection
from planner.selectors import (
    draft_revisions,
    machines_never_seen_count,
    machines_stale_count,
    pool_headroom,
)


class PlannerCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        slices = GaugeMetricFamily(
            "portslice_slices", "Live port slices", labels=["datacenter", "state"]
        )
        for dc, state, n in (
            PortSlice.objects.values_list("ip__pool__datacenter__code", "state")
            .annotate(n=Count("id"))
            .order_by()
        ):
            slices.add_metric([dc, state], n)
        yield slices
        yield from self._pools()
        pending = GaugeMetricFamily(
            "portslice_bundles_pending",
            "Bundles signed but not yet acknowledged",
            labels=["status"],
        )
        for status in (BundleStatus.PENDING, BundleStatus.SENT):
            pending.add_metric([status], ConfigBundle.objects.filter(status=status).count())
        yield pending
        machines = GaugeMetricFamily("portslice_machines", "Machines", labels=["state"])
        for state, n in Machine.objects.values_list("state").annotate(n=Count("id")).order_by():
            machines.add_metric([state], n)
        yield machines
        yield from self._loop()

    def _loop(self) -> Iterator[Metric]:
        """The live loop: stale agents, refused reports, rebalance runs and drafts."""
        stale = GaugeMetricFamily(
            "portslice_machines_stale",
            f"Machines whose agent has been silent for {settings.AGENT_STALE_MINUTES} minutes",
            labels=["datacenter"],
        )
        for dc, n in machines_stale_count().items():
            stale.add_metric([dc], n)
        yield stale
        never = GaugeMetricFamily(
            "portslice_machines_never_seen",
            "Machines sent a bundle whose agent never reported (resends back off)",
            labels=["datacenter"],
        )
        for dc, n in machines_never_seen_count().items():
            never.add_metric([dc], n)
        yield never
        rejected = CounterMetricFamily(
            "portslice_reports_rejected",
            "Agent messages refused for breaking the contract (never stored)",
            labels=["kind", "field"],
        )
        for kind, field, n in ReportRejection.objects.values_list("kind", "field", "count"):
            rejected.add_metric([kind, field], n)
        yield rejected
        # A gauge, not a counter: runs past their retention are deleted, so the
        # number falls, and Prometheus reads a falling counter as a restart.
        runs = GaugeMetricFamily(
            "portslice_rebalance_runs_kept",
            "Rebalance runs in the kept history (falls as old runs expire)",
            labels=["datacenter", "outcome"],
        )
        for dc, outcome, n in (
            RebalanceRun.objects.values_list("datacenter__code", "outcome")
            .annotate(n=Count("id"))
            .order_by()
        ):
            runs.add_metric([dc, outcome], n)
        yield runs
        drafts = GaugeMetricFamily(
            "portslice_revisions_draft",
            "Draft revisions waiting for approval",
            labels=["datacenter"],
        )
        for dc, n in (
            draft_revisions().values_list("datacenter__code").annotate(n=Count("id")).order_by()
        ):
            drafts.add_metric([dc], n)
        yield drafts

    def _pools(self) -> Iterator[Metric]:
        free = GaugeMetricFamily(
            "portslice_pool_free_slots", "Slices a pool could still hand out", labels=["pool"]
        )
        unserved = GaugeMetricFamily(
            "portslice_pool_unserved_machines",
            "Active machines serving the pool that hold fewer slices than they are due",
            labels=["pool"],
        )
        needed = GaugeMetricFamily(
            "portslice_pool_ips_needed",
            "More IPs the pool needs to serve everyone",
            labels=["pool"],
        )
        for row in pool_headroom():
            free.add_metric([row.pool], row.slots_free)
            unserved.add_metric([row.pool], row.machines_unserved)
            needed.add_metric([row.pool], row.ips_needed)
        yield from (free, unserved, needed)


registry = CollectorRegistry(auto_describe=False)
registry.register(PlannerCollector())


def metrics_view(request: HttpRequest) -> HttpResponse:
    token = settings.METRICS_TOKEN
    if token:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            return HttpResponse("metrics: bearer token required\n", status=401)
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
