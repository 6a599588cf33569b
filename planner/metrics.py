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

from allocator import PoolHeadroom
from planner import selectors
from planner.choices import BundleStatus
from planner.models import ConfigBundle, Machine, PortSlice, RebalanceRun, ReportRejection
from planner.selectors import (
    draft_revisions,
    machine_status_counts,
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
        headroom = pool_headroom()
        yield from self._pools(headroom)
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
        yield from self._forecasts(headroom)
        yield from self._saturation()
        yield from self._delivery()

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
        statuses = GaugeMetricFamily(
            "portslice_machines_status",
            "Machines per status of their agent (only enforcing is healthy)",
            labels=["datacenter", "status"],
        )
        for dc, counts in machine_status_counts().items():
            for status, n in counts.items():
                statuses.add_metric([dc, status], n)
        yield statuses
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

    def _pools(self, headroom: list[PoolHeadroom]) -> Iterator[Metric]:
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
        for row in headroom:
            free.add_metric([row.pool], row.slots_free)
            unserved.add_metric([row.pool], row.machines_unserved)
            needed.add_metric([row.pool], row.ips_needed)
        yield from (free, unserved, needed)

    def _forecasts(self, headroom: list[PoolHeadroom]) -> Iterator[Metric]:
        """The exhaustion forecast (planner/forecast.py); a pool without enough
        history has no sample, a pool not running out has +Inf."""
        left = GaugeMetricFamily(
            "portslice_pool_exhaustion_seconds",
            "Seconds until the pool's forecast demand fills its slots (0: full now)",
            labels=["pool"],
        )
        needed = GaugeMetricFamily(
            "portslice_pool_forecast_ips_needed",
            f"More IPs the pool needs by the forecast horizon "
            f"({settings.FORECAST_HORIZON_DAYS} days)",
            labels=["pool"],
        )
        horizon = GaugeMetricFamily(
            "portslice_forecast_horizon_seconds",
            "How far ahead the forecast looks (FORECAST_HORIZON_DAYS): the alert's threshold",
        )
        horizon.add_metric([], settings.FORECAST_HORIZON_DAYS * 86400)
        yield horizon
        for pool, outlook in selectors.pool_outlooks_recent(headroom=headroom):
            if outlook.seconds_left is not None:
                left.add_metric([pool.key], outlook.seconds_left)
                needed.add_metric([pool.key], outlook.ips_needed)
        yield from (left, needed)

    def _saturation(self) -> Iterator[Metric]:
        high_water = GaugeMetricFamily(
            "portslice_pool_utilization_high_water_ratio",
            "Highest share of its ports any machine used in the pool over the rebalance window",
            labels=["pool"],
        )
        for pool, level in sorted(selectors.pool_high_water().items()):
            high_water.add_metric([pool], level)
        hot = GaugeMetricFamily(
            "portslice_pool_slices_hot",
            "Slices whose latest report is above the datacenter's hot threshold",
            labels=["pool"],
        )
        for pool, n in sorted(selectors.pool_slices_hot().items()):
            hot.add_metric([pool], n)
        yield from (high_water, hot)

    def _delivery(self) -> Iterator[Metric]:
        """Bundles and steering tables that have not reached their hosts yet."""
        oldest = GaugeMetricFamily(
            "portslice_bundle_oldest_unapplied_age_seconds",
            "Age of the oldest bundle signed but not yet applied by its agent",
            labels=["datacenter"],
        )
        for dc, age in sorted(selectors.bundle_oldest_unapplied().items()):
            oldest.add_metric([dc], age)
        backlog = GaugeMetricFamily(
            "portslice_reconcile_backlog_bundles",
            "Bundles reconcile would resend now",
            labels=["datacenter"],
        )
        for dc, n in sorted(selectors.reconcile_backlog().items()):
            backlog.add_metric([dc], n)
        never = GaugeMetricFamily(
            "portslice_machines_never_seen",
            "Machines (not retired) whose agent has never reported",
            labels=["datacenter"],
        )
        for dc, n in sorted(selectors.machines_never_seen_count().items()):
            never.add_metric([dc], n)
        lag = GaugeMetricFamily(
            "portslice_gateway_revision_lag",
            "Revisions the gateway's steering table is behind the datacenter's newest",
            labels=["datacenter", "gateway"],
        )
        for dc, name, behind in selectors.gateway_revision_lag():
            lag.add_metric([dc, name], behind)
        yield from (oldest, backlog, never, lag)


registry = CollectorRegistry(auto_describe=False)
registry.register(PlannerCollector())


def metrics_view(request: HttpRequest) -> HttpResponse:
    token = settings.METRICS_TOKEN
    if token:
        given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(given.encode(), token.encode()):
            return HttpResponse("metrics: bearer token required\n", status=401)
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
