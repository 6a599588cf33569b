"""The UI's fixture datacenter, with numbers the tests can work out by hand.

fra1 has two pools:
- warp/DE, 8,192-port slices: 192.0.2.1 (port 60000 reserved, so its top slot
  57344-65535 is unusable: 6 slots) and 192.0.2.2 (7 slots); served by edge0,
  edge1 and edge2: 13 slots, 3 taken, 10 free.
- cdn/FR, 4,096-port slices: 198.51.100.1 (15 slots); served by edge0 only.
edge0 reports 4,096 sockets on its warp slice (50 %) and 1,024 on its cdn slice (25 %).
Users: alice (superuser = admin), bob (operator), vera (viewer), charlie (no role).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from django.contrib.auth.models import Group, User
from django.utils import timezone

from planner.models import Datacenter, EgressPool, Machine, PortSlice
from planner.services.keys import signing_key_generate
from planner.services.plans import plan_apply_current
from planner.services.reports import usage_record
from tests.planner.factories import make_datacenter, make_ip, make_machine, make_pool

PASSWORD = "Ui-test-Pa55word"
WARP_IPS = ("192.0.2.1", "192.0.2.2")
CDN_IP = "198.51.100.1"
RESERVED_PORT = 60000
WARP_SOCKETS, CDN_SOCKETS = 4096, 1024


@dataclass
class UiSite:
    datacenter: Datacenter
    warp: EgressPool
    cdn: EgressPool
    machines: list[Machine]

    def slice_of(self, hostname: str, pool: EgressPool) -> PortSlice:
        return PortSlice.objects.get(machine__hostname=hostname, ip__pool=pool)


def build_ui_site() -> UiSite:
    dc = make_datacenter(code="fra1", name="Frankfurt 1")
    warp = make_pool(datacenter=dc, purpose="warp", country="DE", slice_size=8192)
    cdn = make_pool(datacenter=dc, purpose="cdn", country="FR", slice_size=4096)
    make_ip(WARP_IPS[0], pool=warp, reserved_ports=[RESERVED_PORT])
    make_ip(WARP_IPS[1], pool=warp)
    make_ip(CDN_IP, pool=cdn)
    machines = []
    for n in range(3):
        machine = make_machine(
            f"edge{n}.fra1.example.net", datacenter=dc, address=f"10.9.0.{n + 2}"
        )
        machine.pools.add(warp)
        machines.append(machine)
    machines[0].pools.add(cdn)
    signing_key_generate()
    plan_apply_current(datacenter=dc, reason="first plan")
    site = UiSite(dc, warp, cdn, machines)
    now = timezone.now()
    warp_slice, cdn_slice = (
        site.slice_of(machines[0].hostname, warp),
        site.slice_of(machines[0].hostname, cdn),
    )
    for at in (now - timedelta(minutes=2), now):
        usage_record(
            hostname=machines[0].hostname,
            at=at,
            slices=[
                _report(warp_slice, WARP_SOCKETS),
                _report(cdn_slice, CDN_SOCKETS),
            ],
        )
    return site


def _report(slice_: PortSlice, sockets: int) -> dict[str, object]:
    # Spread evenly over the 64-port buckets, as an agent's per-bucket counts would be.
    buckets = (slice_.hi - slice_.lo + 1) // 64
    per_bucket = sockets // buckets
    return {
        "ip": slice_.ip.address,
        "lo": slice_.lo,
        "hi": slice_.hi,
        "tcp": sockets,
        "udp": 0,
        "buckets": {str(slice_.lo + 64 * n): per_bucket for n in range(buckets)},
    }


def make_users() -> dict[str, User]:
    users = {"alice": User.objects.create_superuser("alice", password=PASSWORD)}
    for name, role in (("bob", "operator"), ("vera", "viewer"), ("charlie", None)):
        user = User.objects.create_user(name, password=PASSWORD)
        if role:
            user.groups.add(Group.objects.get_or_create(name=role)[0])
        users[name] = user
    return users
