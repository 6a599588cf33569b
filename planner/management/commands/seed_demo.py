"""A believable demo inventory: three datacenters, several purposes and countries.

Addresses come from the documentation ranges (RFC 5737), one /24 per
datacenter, so nothing here is routable. The inventory goes through the same
import service as a file would, and each datacenter gets its first plan applied.
"""

from __future__ import annotations

import ipaddress
import math
import random
from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from planner.audit import acting_as
from planner.inventory_io import InventoryRecord
from planner.models import Datacenter
from planner.services.inventory import inventory_import
from planner.services.plans import plan_apply_current

# code, name, country, region, city, egress /24, machine count, pools (purpose, country, slice size)
DATACENTERS: list[tuple[str, str, str, str, str, str, int, list[tuple[str, str, int]]]] = [
    (
        "fra1",
        "Frankfurt 1",
        "DE",
        "DE-HE",
        "Frankfurt am Main",
        "192.0.2.0/24",
        120,
        [
            ("warp", "DE", 2048),
            ("warp", "FR", 2048),
            ("warp", "NL", 4096),
            ("cdn", "DE", 2048),
            ("internal", "DE", 8192),
        ],
    ),
    (
        "lhr1",
        "London 1",
        "GB",
        "GB-LND",
        "London",
        "198.51.100.0/24",
        60,
        [("warp", "GB", 2048), ("warp", "IE", 4096), ("cdn", "GB", 2048), ("internal", "GB", 8192)],
    ),
    (
        "sjc1",
        "San Jose 1",
        "US",
        "US-CA",
        "San Jose",
        "203.0.113.0/24",
        30,
        [("warp", "US", 2048), ("warp", "CA", 2048), ("cdn", "US", 1024), ("internal", "US", 4096)],
    ),
]
HEADROOM_IPS = 1  # per pool, so a few machines can join before a pool runs short


def demo_records(seed: int = 42) -> list[InventoryRecord]:
    rng = random.Random(seed)
    records: list[InventoryRecord] = []
    for index, (code, name, country, region, city, prefix, count, pools) in enumerate(DATACENTERS):
        records.append(
            InventoryRecord(
                "datacenters",
                code,
                {"code": code, "name": name, "country": country, "region": region, "city": city},
            )
        )
        weights = [2 if rng.random() < 0.1 else 1 for _ in range(count)]
        addresses = iter(ipaddress.ip_network(prefix))
        next(addresses)  # leave .0 alone: some tools still treat it as the network
        pool_keys = []
        for purpose, pool_country, size in pools:
            home = pool_country == country
            geo = {
                "datacenter": code,
                "purpose": purpose,
                "country": pool_country,
                "region": region if home else "",
                "city": city if home else "",
            }
            records.append(InventoryRecord("pools", code, {**geo, "slice_size": size}))
            pool_keys.append(
                "/".join(
                    v for v in (code, purpose, geo["country"], geo["region"], geo["city"]) if v
                )
            )
            per_ip = 64512 // size
            for _ in range(math.ceil(sum(weights) / per_ip) + HEADROOM_IPS):
                records.append(
                    InventoryRecord("ips", code, {**geo, "address": str(next(addresses))})
                )
        for number, weight in enumerate(weights, start=1):
            records.append(
                InventoryRecord(
                    "machines",
                    code,
                    {
                        "hostname": f"{code}-m{number:03d}.example.net",
                        "datacenter": code,
                        "address": f"10.{index + 1}.{number // 250}.{number % 250 + 2}",
                        "weight": weight,
                        "pools": pool_keys,
                    },
                )
            )
    return records


class Command(BaseCommand):
    help = "Create a demo inventory (3 datacenters, pools, IPs, machines)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--if-empty", action="store_true", help="do nothing when any datacenter exists"
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["if_empty"] and Datacenter.objects.exists():
            self.stdout.write("inventory not empty: demo not seeded")
            return
        with acting_as("system:seed_demo"):
            counts = inventory_import(records=demo_records())
            for datacenter in Datacenter.objects.all():
                plan_apply_current(datacenter=datacenter, reason="demo: first plan")
        self.stdout.write(
            "seeded demo: "
            + ", ".join(f"{n} {k}" for k, n in counts.items())
            + ", and applied a first plan in each datacenter"
        )
