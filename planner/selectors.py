"""Reads of the planner's tables, shaped for the views, the API and commands."""

from __future__ import annotations

from planner.inventory_io import GeofeedEntry
from planner.models import EgressIP


def geofeed_entries(*, datacenter: str | None = None) -> list[GeofeedEntry]:
    """Each egress IP with the geolocation of its pool."""
    ips = EgressIP.objects.select_related("pool")
    if datacenter:
        ips = ips.filter(pool__datacenter__code=datacenter)
    return [
        GeofeedEntry(ip.address, ip.pool.country, ip.pool.region, ip.pool.city)
        for ip in ips.order_by("address")
    ]
