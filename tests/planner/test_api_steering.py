"""The steering table, as JSON and as an nftables script, agrees with the slices."""

from __future__ import annotations

import re
import subprocess
import uuid
from pathlib import Path

import pytest
from rest_framework.test import APIClient

from planner.models import PortSlice
from planner.steering import MARK_BASE
from tests.planner.conftest import Site
from tests.support import need, need_root

pytestmark = pytest.mark.django_db


def _db_rows() -> set[tuple[str, int, int, str, str, str]]:
    return {
        (s.ip.address, s.lo, s.hi, s.machine.hostname, s.machine.address, s.state)
        for s in PortSlice.objects.select_related("ip", "machine")
    }


def test_the_json_table_lists_every_live_slice(clients: dict[str, APIClient], site: Site) -> None:
    site.machines[1].state = "retired"
    site.machines[1].save()
    preview = clients["alice"].post("/api/v1/datacenters/fra1/plan/preview").json()
    clients["alice"].post(
        "/api/v1/datacenters/fra1/plan/apply",
        {"inputs_digest": preview["inputs_digest"]},
        format="json",
    )
    body = clients["lb"].get("/api/v1/datacenters/fra1/steering").json()
    assert body["revision"] == 2
    rows = {
        (r["ip"], r["lo"], r["hi"], r["machine"], r["next_hop"], r["state"]) for r in body["slices"]
    }
    assert rows == _db_rows()
    draining = [r for r in body["slices"] if r["state"] == "draining"]
    assert [r["machine"] for r in draining] == ["edge1.fra1.example.net"]  # still steers


def _nft(clients: dict[str, APIClient]) -> str:
    response = clients["lb"].get("/api/v1/datacenters/fra1/steering?format=nft")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/plain")
    return response.content.decode()


def test_the_nft_script_maps_each_slice_to_its_machines_mark(
    clients: dict[str, APIClient],
) -> None:
    script = _nft(clients)
    marks = clients["lb"].get("/api/v1/datacenters/fra1/steering").json()["marks"]
    found = {
        (ip, int(lo), int(hi), int(mark, 16))
        for ip, lo, hi, mark in re.findall(r"([0-9a-f.:]+) \. (\d+)-(\d+) : (0x[0-9a-f]+)", script)
    }
    expected = {(ip, lo, hi, marks[host]) for ip, lo, hi, host, _, _ in _db_rows()}
    assert found == expected and min(marks.values()) > MARK_BASE
    for host, mark in marks.items():
        hop = next(r[4] for r in _db_rows() if r[3] == host)
        assert f"#   ip rule add fwmark {mark:#x} table {mark}" in script
        assert f"#   ip route replace default via {hop} table {mark}" in script


def test_the_nft_script_is_valid_for_the_kernel(
    clients: dict[str, APIClient], tmp_path: Path
) -> None:
    need_root()
    need(subprocess.run(["which", "nft"], capture_output=True).returncode == 0, "needs nft")
    script = tmp_path / "steer.nft"
    script.write_text(_nft(clients))
    namespace = f"psS{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", namespace], check=True)
    try:
        run = ["ip", "netns", "exec", namespace, "nft"]
        subprocess.run([*run, "-f", str(script)], check=True, capture_output=True, text=True)
        listed = subprocess.run(
            [*run, "list", "map", "inet", "portslice_steer", "steer_v4"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        assert "192.0.2.1 . " in listed
    finally:
        subprocess.run(["ip", "netns", "delete", namespace], check=True)


def test_a_load_balancer_token_bound_to_a_datacenter_sees_only_it(site: Site) -> None:
    from planner.choices import TokenKind
    from planner.services.tokens import api_token_create
    from tests.planner.factories import make_datacenter

    make_datacenter(code="lhr1", country="GB")
    _, key = api_token_create(
        name="lb-fra1", kind=TokenKind.LOAD_BALANCER, datacenter=site.datacenter
    )
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    assert client.get("/api/v1/datacenters/fra1/steering").status_code == 200
    assert client.get("/api/v1/datacenters/lhr1/steering").status_code == 403
    assert client.get("/api/v1/machines").status_code == 403
