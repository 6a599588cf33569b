from __future__ import annotations

import io
import ipaddress

import pytest
from django.core.management import call_command

from planner.models import Datacenter, EgressIP, EgressPool, Machine

pytestmark = pytest.mark.django_db

DOCUMENTATION = [
    ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")
]


def test_it_seeds_a_believable_inventory() -> None:
    call_command("seed_demo", stdout=io.StringIO())
    assert Datacenter.objects.count() == 3
    for dc in Datacenter.objects.all():
        machines = Machine.objects.filter(datacenter=dc).count()
        assert 20 <= machines <= 150, (dc.code, machines)
        countries = set(EgressPool.objects.filter(datacenter=dc).values_list("country", flat=True))
        assert len(countries) >= 2, dc.code
    assert {p.purpose for p in EgressPool.objects.all()} >= {"cdn", "warp", "internal"}
    for address in EgressIP.objects.values_list("address", flat=True):
        assert any(ipaddress.ip_address(address) in net for net in DOCUMENTATION), address
    assert all(m.pools.exists() for m in Machine.objects.all())


def test_if_empty_leaves_an_existing_inventory_alone() -> None:
    call_command("seed_demo", stdout=io.StringIO())
    out = io.StringIO()
    call_command("seed_demo", "--if-empty", stdout=out)
    assert "not seeded" in out.getvalue()
    assert Datacenter.objects.count() == 3
