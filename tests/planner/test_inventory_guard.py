"""Inventory edits never leave live slices silently outside what their IP allows.

Refused with 409 naming the slices, or written together with the plan that
drains them (``?plan=preview`` then ``?plan=apply&inputs_digest=…``).
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

import pytest
from rest_framework.test import APIClient

from planner.models import EgressIP, EgressPool, PlanRevision, PortSlice
from tests.planner.conftest import Site

pytestmark = pytest.mark.django_db

IP = "/api/v1/ips/192.0.2.1"


def _held_on(address: str) -> list[PortSlice]:
    return list(PortSlice.objects.filter(ip__address=address).order_by("lo"))


def _named(slices: list[PortSlice]) -> list[str]:
    return [f"{s.ip.address}:{s.lo}-{s.hi} ({s.machine.hostname})" for s in slices]


def _assert_refused(response: Any, slices: list[PortSlice]) -> None:
    body = response.json()
    assert response.status_code == 409, body
    assert body["slices"] == _named(slices)
    assert "?plan=preview" in body["detail"]


def test_a_reserved_port_inside_a_live_slice_is_refused(
    clients: dict[str, APIClient], site: Site
) -> None:
    first = _held_on("192.0.2.1")[0]
    response = clients["bob"].patch(IP, {"reserved_ports": [first.lo + 5]}, format="json")
    _assert_refused(response, [first])
    assert EgressIP.objects.get(address="192.0.2.1").reserved_ports == []


def test_a_reserved_port_in_free_space_is_accepted(
    clients: dict[str, APIClient], site: Site
) -> None:
    taken = {p for s in _held_on("192.0.2.1") for p in range(s.lo, s.hi + 1)}
    free = next(p for p in range(1024, 65536) if p not in taken)
    response = clients["bob"].patch(IP, {"reserved_ports": [free]}, format="json")
    assert response.status_code == 200, response.json()
    assert EgressIP.objects.get(address="192.0.2.1").reserved_ports == [free]


def test_a_usable_range_that_no_longer_covers_a_slice_is_refused(
    clients: dict[str, APIClient], site: Site
) -> None:
    held = _held_on("192.0.2.1")
    response = clients["bob"].patch(IP, {"usable_lo": held[-1].lo + 1}, format="json")
    _assert_refused(response, held)
    assert EgressIP.objects.get(address="192.0.2.1").usable_lo == 1024


def test_a_new_slice_size_for_a_pool_with_live_slices_is_refused(
    clients: dict[str, APIClient], site: Site
) -> None:
    pool = EgressPool.objects.get()
    response = clients["bob"].patch(f"/api/v1/pools/{pool.pk}", {"slice_size": 4096}, "json")
    everything = list(PortSlice.objects.order_by("ip__address", "lo"))
    assert response.status_code == 409 and len(response.json()["slices"]) == len(everything)
    assert EgressPool.objects.get().slice_size == 8192


def test_removing_an_ip_that_holds_slices_is_refused(
    clients: dict[str, APIClient], site: Site
) -> None:
    held = _held_on("192.0.2.1")
    response = clients["bob"].delete(IP)
    _assert_refused(response, held)
    assert EgressIP.objects.filter(address="192.0.2.1").exists()


def test_a_planned_edit_is_previewed_then_applied_and_its_slice_drains(
    clients: dict[str, APIClient], site: Site
) -> None:
    first = _held_on("192.0.2.1")[0]
    change = {"reserved_ports": [first.lo + 5]}
    preview = clients["bob"].patch(f"{IP}?plan=preview", change, format="json").json()["preview"]
    assert preview["ok"] and preview["diff"]["draining"] == 1
    assert EgressIP.objects.get(address="192.0.2.1").reserved_ports == []  # nothing written
    assert not PortSlice.objects.filter(state="draining").exists()
    # Viewers may look but not write; an operator applies.
    url = f"{IP}?plan=apply&inputs_digest={preview['inputs_digest']}"
    assert clients["vera"].patch(url, change, format="json").status_code == 403
    response = clients["bob"].patch(url, change, format="json")
    assert response.status_code == 200, response.json()
    assert response.json()["revision"]["number"] == 2
    assert EgressIP.objects.get(address="192.0.2.1").reserved_ports == [first.lo + 5]
    drained = PortSlice.objects.get(pk=first.pk)
    assert drained.state == "draining" and drained.machine == first.machine
    # Make-before-break: its owner has a new active slice clear of the reserved port.
    mine = list(PortSlice.objects.filter(machine=first.machine, state="active"))
    assert len(mine) == 1 and (mine[0].ip.address, mine[0].lo) != ("192.0.2.1", first.lo)
    _assert_steering_overlap_free(clients["lb"])


def test_a_planned_edit_with_a_stale_digest_is_refused_with_a_fresh_preview(
    clients: dict[str, APIClient], site: Site
) -> None:
    first = _held_on("192.0.2.1")[0]
    change = {"reserved_ports": [first.lo + 5]}
    stale = clients["bob"].patch(f"{IP}?plan=preview", change, format="json").json()["preview"]
    site.machines[2].state = "retired"  # the inventory moves on meanwhile
    site.machines[2].save()
    url = f"{IP}?plan=apply&inputs_digest={stale['inputs_digest']}"
    response = clients["alice"].patch(url, change, format="json")
    assert response.status_code == 409
    assert response.json()["preview"]["inputs_digest"] != stale["inputs_digest"]
    assert EgressIP.objects.get(address="192.0.2.1").reserved_ports == []
    assert PlanRevision.objects.count() == 1


def test_a_planned_removal_of_an_ip_frees_its_slices(
    clients: dict[str, APIClient], site: Site
) -> None:
    held = _held_on("192.0.2.1")
    preview = clients["bob"].delete(f"{IP}?plan=preview").json()["preview"]
    assert preview["diff"]["freed"] == len(held)
    assert EgressIP.objects.filter(address="192.0.2.1").exists()
    url = f"{IP}?plan=apply&inputs_digest={preview['inputs_digest']}"
    response = clients["alice"].delete(url)
    assert response.status_code == 200, response.json()
    assert not EgressIP.objects.filter(address="192.0.2.1").exists()
    assert not PortSlice.objects.filter(ip__address="192.0.2.1").exists()
    # Every machine is served again, from the IP that is left.
    owners = set(PortSlice.objects.filter(state="active").values_list("machine", flat=True))
    assert owners == {m.pk for m in site.machines}
    _assert_steering_overlap_free(clients["lb"])


def test_a_bad_plan_mode_names_the_parameter(clients: dict[str, APIClient], site: Site) -> None:
    response = clients["bob"].patch(f"{IP}?plan=now", {"state": "active"}, format="json")
    assert response.status_code == 400 and "now" in response.json()["plan"]


def _assert_steering_overlap_free(lb: APIClient) -> None:
    rows = lb.get("/api/v1/datacenters/fra1/steering").json()["slices"]
    for a, b in combinations(rows, 2):
        if a["ip"] == b["ip"]:
            assert a["hi"] < b["lo"] or b["hi"] < a["lo"], (a, b)


def test_an_edit_of_an_object_removed_meanwhile_is_a_conflict_not_a_crash(site: Site) -> None:
    from planner.services.inventory import InventoryConflict, model_save
    from tests.planner.factories import make_ip

    spare = make_ip("198.51.100.77", pool=EgressPool.objects.get())
    loaded = EgressIP.objects.get(pk=spare.pk)  # read by a PATCH before the DELETE commits
    spare.delete()
    with pytest.raises(InventoryConflict, match="removed by another change"):
        model_save(instance=loaded, values={"usable_lo": 2048})
    assert not EgressIP.objects.filter(address="198.51.100.77").exists()


def test_renaming_a_pool_re_signs_its_machines_bundles(
    clients: dict[str, APIClient], site: Site
) -> None:
    from agent.bundle import decode_unverified
    from planner.models import ConfigBundle

    pool = EgressPool.objects.get()
    before = ConfigBundle.objects.count()
    response = clients["bob"].patch(f"/api/v1/pools/{pool.pk}", {"city": "Offenbach"}, "json")
    assert response.status_code == 200, response.json()
    assert ConfigBundle.objects.count() == before + len(site.machines)
    for machine in site.machines:
        newest = ConfigBundle.objects.filter(machine=machine).latest("serial")
        pools = {item.pool for item in decode_unverified(newest.token).slices}
        assert pools == {"fra1/warp/DE/Offenbach"}


def test_moving_an_ip_with_live_slices_to_another_pool_is_refused(
    clients: dict[str, APIClient], site: Site
) -> None:
    from tests.planner.factories import make_pool

    other = make_pool(datacenter=site.datacenter, purpose="corp")
    held = _held_on("192.0.2.1")
    response = clients["bob"].patch(IP, {"pool": other.pk}, format="json")
    _assert_refused(response, held)
    assert EgressIP.objects.get(address="192.0.2.1").pool != other
