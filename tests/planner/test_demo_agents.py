"""``manage.py demo_agents``: as root, its exact-range machine gets one range on an aligned
pool; without root: loopback egress addresses inside the host's
ephemeral range, allowed only by DEMO_LOOPBACK_EGRESS; a banner that promises only
what the mode does; what reaches ``make run``'s output. And ``demo.foreground``:
Ctrl-C is the normal end of ``make run``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.core.exceptions import ValidationError

from planner.management.commands import demo_agents as demo
from planner.models import Datacenter, EgressIP, EgressPool, Machine, PlanRevision, PortSlice
from planner.services.keys import signing_key_generate
from planner.services.plans import plan_apply_current
from tests.e2e.loop import ROOT

pytestmark = pytest.mark.django_db

AGENT = "demo-a.demo1.example.net"
LOOPBACK = demo.Mode(False, demo.LOOPBACK_EGRESS_IPS, (32768, 60999), ("127.0.0.1", 41000))
AS_ROOT = demo.Mode(True, demo.EGRESS_IPS, (1024, 65535), (demo.ORIGIN, 80))


def _ranges(hostname: str) -> set[tuple[str, int, int]]:
    return set(
        PortSlice.objects.filter(machine__hostname=hostname, state="active").values_list(
            "ip__address", "lo", "hi"
        )
    )


def test_as_root_the_exact_range_machine_gets_one_range_on_an_aligned_pool(
    key_dir: Path,
) -> None:
    signing_key_generate()
    datacenter = demo.demo_datacenter_ensure(mode=AS_ROOT)
    machine = Machine.objects.get(hostname=demo.UNMODIFIED)
    (pool,) = machine.pools.all()
    assert pool.aligned and pool.datacenter == datacenter
    (held,) = _ranges(demo.UNMODIFIED)
    assert held[0] == demo.UNMODIFIED_IP and held[2] - held[1] + 1 == 256
    for each in demo.MACHINES:
        assert _ranges(each.hostname), f"{each.hostname} has no slice"
    revisions = PlanRevision.objects.count()
    demo.demo_datacenter_ensure(mode=AS_ROOT)  # the next make run: nothing new
    assert PlanRevision.objects.count() == revisions


def test_a_demo_datacenter_from_before_gets_the_machine_and_a_plan(key_dir: Path) -> None:
    signing_key_generate()
    datacenter = demo._demo_inventory(AS_ROOT)
    plan_apply_current(datacenter=datacenter, reason="an older demo's first plan")
    assert not EgressPool.objects.filter(aligned=True).exists()
    again = demo.demo_datacenter_ensure(mode=AS_ROOT)
    assert again == Datacenter.objects.get(code=demo.CODE)
    assert len(_ranges(demo.UNMODIFIED)) == 1


def test_without_root_there_is_no_exact_range_machine(settings: Any, key_dir: Path) -> None:
    settings.DEMO_LOOPBACK_EGRESS = True
    signing_key_generate()
    demo.demo_datacenter_ensure(mode=LOOPBACK)
    assert not Machine.objects.filter(hostname=demo.UNMODIFIED).exists()


def test_without_root_the_demo_plans_loopback_slices_inside_the_ephemeral_range(
    settings: Any, key_dir: Path
) -> None:
    settings.DEMO_LOOPBACK_EGRESS = True
    datacenter = demo.demo_datacenter_ensure(mode=LOOPBACK)
    addresses = set(EgressIP.objects.values_list("address", flat=True))
    assert addresses == {"127.51.100.240", "127.51.100.241"}
    slices = PortSlice.objects.filter(ip__pool__datacenter=datacenter)
    assert slices.count() == 3
    assert all(32768 <= s.lo <= s.hi <= 60999 for s in slices)


def test_without_the_allowance_the_loopback_inventory_is_refused_whole(
    settings: Any, key_dir: Path
) -> None:
    assert settings.DEMO_LOOPBACK_EGRESS is False
    with pytest.raises(ValidationError, match="127.51.100.240"):
        demo.demo_datacenter_ensure(mode=LOOPBACK)
    assert not Datacenter.objects.exists()  # nothing half-written


def test_the_banner_without_root_says_what_is_off_and_promises_no_guard() -> None:
    banner = LOOPBACK.banner
    assert "127.51.100.240-241" in banner and "127.0.0.1:41000" in banner
    assert "32768-60999" in banner and "OFF: the nftables guard and the gateway" in banner
    assert "no traffic" not in banner and "nftables guard ON" in demo.PRIVILEGED


@pytest.mark.parametrize(
    ("name", "line", "shown"),
    [
        (AGENT, "2026-12-05 00:55:53,120 agent.worker startup: failed", True),
        (AGENT, "[2026-12-05 00:55:58,096: ERROR/MainProcess] lost", True),
        (
            "demo-a.demo1.example.net",
            "[2026-12-05 00:55:58,096: WARNING/MainProcess] No host",
            False,
        ),
        (AGENT, " -------------- agent@demo-a v5.7.0 (collider)", False),
        (f"traffic {AGENT}", "traffic: 127.51.100.240:32768-32831: refused", True),
        ("origin", "listening", True),
        ("origin", "   ", False),
    ],
)
def test_make_run_shows_agent_warnings_and_errors_not_celerys_banner(
    name: str, line: str, shown: bool
) -> None:
    assert demo._worth_showing(name, line) is shown


@pytest.mark.parametrize(
    ("script", "status"),
    [
        ("kill -INT $$", 0),  # Ctrl-C: the normal end of make run
        ("exit 130", 0),  # honcho's status after Ctrl-C
        ("exit 3", 3),
        ("kill -TERM $$", 143),
    ],
)
def test_foreground_makes_ctrl_c_a_normal_end_and_keeps_other_statuses(
    script: str, status: int
) -> None:
    # A new session: no controlling terminal, as in CI (the pty case is tests/e2e).
    done = subprocess.run([sys.executable, "-m", "demo.foreground", "sh", "-c", script],
                          cwd=ROOT, start_new_session=True, timeout=30)  # fmt: skip
    assert done.returncode == status
