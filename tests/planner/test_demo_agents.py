"""The quick start's demo datacenter: its exact-range machine gets one range on an aligned pool."""

from __future__ import annotations

from pathlib import Path

import pytest

from planner.management.commands import demo_agents
from planner.models import Datacenter, EgressPool, Machine, PlanRevision, PortSlice
from planner.services.keys import signing_key_generate
from planner.services.plans import plan_apply_current

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def signing_key(key_dir: Path) -> None:
    signing_key_generate()


def _ranges(hostname: str) -> set[tuple[str, int, int]]:
    return set(
        PortSlice.objects.filter(machine__hostname=hostname, state="active").values_list(
            "ip__address", "lo", "hi"
        )
    )


def test_it_gives_the_exact_range_machine_one_range_on_an_aligned_pool() -> None:
    datacenter = demo_agents.demo_datacenter_ensure(usable_lo=1024)
    machine = Machine.objects.get(hostname=demo_agents.UNMODIFIED)
    (pool,) = machine.pools.all()
    assert pool.aligned and pool.datacenter == datacenter
    (held,) = _ranges(demo_agents.UNMODIFIED)
    assert held[0] == demo_agents.UNMODIFIED_IP and held[2] - held[1] + 1 == 256
    for hostname, _profile in demo_agents.MACHINES:
        assert _ranges(hostname), f"{hostname} has no slice"
    revisions = PlanRevision.objects.count()
    demo_agents.demo_datacenter_ensure(usable_lo=1024)  # the next make run: nothing new
    assert PlanRevision.objects.count() == revisions


def test_a_demo_datacenter_from_before_gets_the_machine_and_a_plan() -> None:
    datacenter = demo_agents._demo_inventory(1024)
    plan_apply_current(datacenter=datacenter, reason="an older demo's first plan")
    assert not EgressPool.objects.filter(aligned=True).exists()
    again = demo_agents.demo_datacenter_ensure(usable_lo=1024)
    assert again == Datacenter.objects.get(code=demo_agents.CODE)
    assert len(_ranges(demo_agents.UNMODIFIED)) == 1
