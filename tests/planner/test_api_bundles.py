"""Signed bundles: they verify with the published JWKS, tampering breaks them,
rotation keeps the old key published, serials only go up."""

from __future__ import annotations

import base64
import json
import threading
import time
from pathlib import Path

import pytest
from django.db import connection
from joserfc import jws
from joserfc.errors import BadSignatureError
from joserfc.jwk import KeySet
from rest_framework.test import APIClient

from agent.bundle import BundleRejected, load_keys, verify
from planner.models import ConfigBundle, Machine, PortSlice
from planner.services.bundles import bundles_build
from planner.services.keys import signing_key_retire, signing_key_rotate
from tests.planner.conftest import Site
from tests.planner.factories import make_datacenter, make_ip, make_pool

pytestmark = pytest.mark.django_db
OWN = "edge0.fra1.example.net"


def _bundle(client: APIClient, host: str = OWN) -> str:
    response = client.get(f"/api/v1/machines/{host}/bundle", HTTP_ACCEPT="application/jose")
    assert response.status_code == 200 and response["Content-Type"].startswith("application/jose")
    return response.content.decode()


def _jwks(client: APIClient) -> dict[str, object]:
    return client.get("/api/v1/keys").json()


def test_a_fetched_bundle_verifies_with_the_jwks(clients: dict[str, APIClient]) -> None:
    token = _bundle(clients["agent"])
    keys = KeySet.import_key_set(_jwks(clients["agent"]))  # type: ignore[arg-type]
    obj = jws.deserialize_compact(token, keys, algorithms=["EdDSA"])
    claims = json.loads(obj.payload)
    assert obj.headers()["alg"] == "EdDSA" and obj.headers()["kid"] in {
        k["kid"]
        for k in _jwks(clients["agent"])["keys"]  # type: ignore[attr-defined]
    }
    assert (claims["iss"], claims["aud"], claims["sub"]) == (
        "portslice-planner",
        "portslice-agent",
        OWN,
    )
    stored = PortSlice.objects.filter(machine__hostname=OWN)
    assert [(s["ip"], s["lo"], s["hi"]) for s in claims["slices"]] == [
        (s.ip.address, s.lo, s.hi) for s in stored.order_by("ip__address", "lo")
    ]
    assert claims["slices"][0]["pool"] == "fra1/warp/DE" and claims["datacenter"] == "fra1"


def test_one_changed_payload_byte_breaks_the_signature(clients: dict[str, APIClient]) -> None:
    header, payload, signature = _bundle(clients["agent"]).split(".")
    raw = bytearray(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    raw[raw.index(b"edge0")] ^= 0x01  # edge0 -> ddge0
    forged = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    keys = KeySet.import_key_set(_jwks(clients["agent"]))  # type: ignore[arg-type]
    with pytest.raises(BadSignatureError):
        jws.deserialize_compact(f"{header}.{forged}.{signature}", keys, algorithms=["EdDSA"])


def test_the_agent_accepts_what_the_planner_signs(
    clients: dict[str, APIClient], tmp_path: Path
) -> None:
    """The bundle contract (docs/design.md), end to end: planner signs, agent code verifies."""
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps(_jwks(clients["agent"])))
    bundle = verify(
        _bundle(clients["agent"]),
        keys=load_keys(jwks_file),
        hostname=OWN,
        last_serial=0,
        now=time.time(),
    )
    assert bundle.serial == Machine.objects.get(hostname=OWN).bundle_serial
    with pytest.raises(BundleRejected) as caught:
        verify(
            _bundle(clients["agent"]),
            keys=load_keys(jwks_file),
            hostname="edge1.example.net",
            last_serial=0,
            now=time.time(),
        )
    assert caught.value.reason == "wrong_host"


def test_every_bundle_names_all_shared_addresses_of_its_datacenter(
    clients: dict[str, APIClient], site: Site, tmp_path: Path
) -> None:
    """Also the addresses the machine holds no slice on, collapsed into prefixes."""
    pool = site.datacenter.pools.get()
    for address in ("192.0.2.2", "192.0.2.3", "192.0.2.8"):
        make_ip(address, pool=pool)
    make_ip("198.51.100.9", pool=make_pool(datacenter=make_datacenter(code="ams1")))
    bundles_build(machines=site.machines)
    jwks_file = tmp_path / "jwks.json"
    jwks_file.write_text(json.dumps(_jwks(clients["agent"])))
    bundle = verify(
        _bundle(clients["agent"]), keys=load_keys(jwks_file), hostname=OWN, last_serial=0,
        now=time.time(),
    )  # fmt: skip
    assert bundle.shared == ("192.0.2.1/32", "192.0.2.2/31", "192.0.2.8/32", "2001:db8::1/128")


def test_rotation_keeps_the_old_key_published_until_retired(
    clients: dict[str, APIClient], site: Site
) -> None:
    old = _jwks(clients["vera"])["keys"][0]["kid"]  # type: ignore[index]
    new = signing_key_rotate().kid
    kids = {k["kid"] for k in _jwks(clients["vera"])["keys"]}  # type: ignore[attr-defined]
    assert kids == {old, new}
    old_token = _bundle(clients["vera"])
    bundles_build(machines=site.machines)
    assert jws.extract_compact(_bundle(clients["vera"]).encode()).headers()["kid"] == new
    # The old token still verifies during the rollover...
    jws.deserialize_compact(
        old_token,
        KeySet.import_key_set(_jwks(clients["vera"])),  # type: ignore[arg-type]
        algorithms=["EdDSA"],
    )
    signing_key_retire(kid=old)
    assert [k["kid"] for k in _jwks(clients["vera"])["keys"]] == [new]  # type: ignore[attr-defined]


def test_the_json_form_carries_serial_and_status(clients: dict[str, APIClient]) -> None:
    body = clients["agent"].get(f"/api/v1/machines/{OWN}/bundle", HTTP_ACCEPT="application/json")
    serial = Machine.objects.get(hostname=OWN).bundle_serial
    assert body.json()["serial"] == serial and body.json()["token"].count(".") == 2


def test_the_bundle_endpoint_is_throttled(clients: dict[str, APIClient], settings: object) -> None:
    from django.core.cache import cache
    from rest_framework.throttling import ScopedRateThrottle

    cache.clear()
    rates: dict[str, str | None] = {"bundle": "2/min", "steering": "2/min"}
    original = ScopedRateThrottle.THROTTLE_RATES
    ScopedRateThrottle.THROTTLE_RATES = rates
    try:
        codes = [
            clients["agent"].get(f"/api/v1/machines/{OWN}/bundle").status_code for _ in range(3)
        ]
    finally:
        ScopedRateThrottle.THROTTLE_RATES = original
        cache.clear()
    assert codes == [200, 200, 429]


@pytest.mark.django_db(transaction=True)
def test_serials_strictly_increase_under_concurrent_builds(postgres: None, site: Site) -> None:
    machine = site.machines[0]
    start = Machine.objects.get(pk=machine.pk).bundle_serial
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def build() -> None:
        try:
            barrier.wait()
            for _ in range(5):
                bundles_build(machines=[machine])
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=build) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors
    in_commit_order = list(
        ConfigBundle.objects.filter(machine=machine).order_by("pk").values_list("serial", flat=True)
    )
    assert len(in_commit_order) == 21 and in_commit_order[0] == start
    assert all(a < b for a, b in zip(in_commit_order, in_commit_order[1:], strict=False))
    assert Machine.objects.get(pk=machine.pk).bundle_serial == in_commit_order[-1]


def test_a_recreated_machine_never_reuses_a_serial(site: Site) -> None:
    """Its agent still holds the old serial on disk and would refuse anything not newer."""
    machine = site.machines[0]
    before = Machine.objects.get(pk=machine.pk).bundle_serial
    PortSlice.objects.filter(machine=machine).delete()
    machine.delete()
    again = Machine.objects.create(hostname=OWN, datacenter=site.datacenter, address="10.9.0.2")
    (bundle,) = bundles_build(machines=[again])
    assert bundle.serial > before
