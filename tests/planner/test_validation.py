"""Each validation rule: one accepted value, one rejected, and the field it names."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from django.core.exceptions import ValidationError
from django.db import models

from planner.models import Datacenter, EgressIP, EgressPool, Machine
from tests.planner.factories import make_datacenter, make_pool

pytestmark = pytest.mark.django_db


def datacenter(**fields: Any) -> Datacenter:
    return Datacenter(**{"code": "fra1", "name": "Frankfurt", "country": "DE", **fields})


def pool(**fields: Any) -> EgressPool:
    return EgressPool(
        **{"datacenter": make_datacenter(), "purpose": "warp", "country": "DE", **fields}
    )


def egress_ip(**fields: Any) -> EgressIP:
    return EgressIP(**{"address": "192.0.2.7", "pool": make_pool(), **fields})


def machine(**fields: Any) -> Machine:
    return Machine(
        **{
            "hostname": "m1.example.net",
            "datacenter": make_datacenter(),
            "address": "10.0.0.2",
            **fields,
        }
    )


RULES: list[tuple[str, Callable[..., models.Model], str, dict[str, Any], dict[str, Any]]] = [
    # (rule, builder, field named in the error, accepted, rejected)
    ("country alpha-2", datacenter, "country", {"country": "DE"}, {"country": "XX"}),
    ("country upper case", datacenter, "country", {"country": "FR"}, {"country": "fr"}),
    ("country not alpha-3", pool, "country", {"country": "NL"}, {"country": "NLD"}),
    ("region ISO 3166-2", datacenter, "region", {"region": "DE-HE"}, {"region": "DE-XX"}),
    (
        "region in country",
        datacenter,
        "region",
        {"country": "US", "region": "US-CA"},
        {"country": "DE", "region": "US-CA"},
    ),
    (
        "pool region in country",
        pool,
        "region",
        {"country": "GB", "region": "GB-LND"},
        {"country": "FR", "region": "GB-LND"},
    ),
    (
        "IPv4 host address",
        egress_ip,
        "address",
        {"address": "198.51.100.7"},
        {"address": "198.51.100.0/24"},
    ),
    (
        "IPv6 host address",
        egress_ip,
        "address",
        {"address": "2001:db8::7"},
        {"address": "2001:db8::zz"},
    ),
    (
        "no unspecified address",
        egress_ip,
        "address",
        {"address": "203.0.113.9"},
        {"address": "0.0.0.0"},
    ),
    (
        "no multicast address",
        egress_ip,
        "address",
        {"address": "203.0.113.10"},
        {"address": "224.0.0.5"},
    ),
    ("no loopback address", egress_ip, "address", {"address": "2001:db8::8"}, {"address": "::1"}),
    ("usable_lo at least 1024", egress_ip, "usable_lo", {"usable_lo": 1024}, {"usable_lo": 1023}),
    ("usable_hi at most 65535", egress_ip, "usable_hi", {"usable_hi": 65535}, {"usable_hi": 65536}),
    (
        "usable_lo <= usable_hi",
        egress_ip,
        "usable_hi",
        {"usable_lo": 2048, "usable_hi": 2048},
        {"usable_lo": 4096, "usable_hi": 4095},
    ),
    (
        "reserved inside usable",
        egress_ip,
        "reserved_ports",
        {"usable_lo": 2048, "reserved_ports": [2048, 3128]},
        {"usable_lo": 2048, "reserved_ports": [1080]},
    ),
    (
        "reserved are ports",
        egress_ip,
        "reserved_ports",
        {"reserved_ports": [5000]},
        {"reserved_ports": ["http"]},
    ),
    (
        "RFC 1123 hostname",
        machine,
        "hostname",
        {"hostname": "edge-01.fra1.example.net"},
        {"hostname": "-edge.example.net"},
    ),
    (
        "hostname label length",
        machine,
        "hostname",
        {"hostname": "a" * 63 + ".net"},
        {"hostname": "a" * 64 + ".net"},
    ),
    ("hostname characters", machine, "hostname", {"hostname": "m2"}, {"hostname": "m_2"}),
    ("machine address", machine, "address", {"address": "2001:db8::2"}, {"address": "10.0.0.0/8"}),
    (
        "egress address not IPv4-mapped",
        egress_ip,
        "address",
        {"address": "192.0.2.1"},
        {"address": "::ffff:192.0.2.1"},
    ),
    (
        "machine address not IPv4-mapped",
        machine,
        "address",
        {"address": "10.0.0.2"},
        {"address": "::ffff:10.0.0.2"},
    ),
    ("weight at least 1", machine, "weight", {"weight": 1}, {"weight": 0}),
    ("slice size at most 64512", pool, "slice_size", {"slice_size": 64512}, {"slice_size": 64513}),
    (
        "max slices >= slices",
        pool,
        "max_slices_per_machine",
        {"slices_per_machine": 2, "max_slices_per_machine": 2},
        {"slices_per_machine": 2, "max_slices_per_machine": 1},
    ),
]


@pytest.mark.parametrize(
    ("rule", "build", "field", "good", "bad"), RULES, ids=[r[0] for r in RULES]
)
def test_it_accepts_the_good_and_names_the_field_of_the_bad(
    rule: str,
    build: Callable[..., models.Model],
    field: str,
    good: dict[str, Any],
    bad: dict[str, Any],
) -> None:
    build(**good).full_clean()
    with pytest.raises(ValidationError) as caught:
        build(**bad).full_clean()
    assert field in caught.value.message_dict, caught.value.message_dict


def test_the_error_quotes_the_bad_value() -> None:
    with pytest.raises(ValidationError) as caught:
        datacenter(country="XX").full_clean()
    assert "'XX'" in " ".join(caught.value.message_dict["country"])


def test_an_ipv4_mapped_egress_address_is_refused_naming_the_value_and_the_ipv4_form() -> None:
    with pytest.raises(ValidationError) as caught:
        egress_ip(address="::ffff:192.0.2.1").full_clean()
    message = " ".join(caught.value.message_dict["address"])
    assert "'::ffff:192.0.2.1'" in message and "write it as 192.0.2.1" in message


def test_hostnames_are_stored_lower_case() -> None:
    host = machine(hostname="Edge-01.Example.NET.")
    host.full_clean()
    assert host.hostname == "edge-01.example.net"


def test_reserved_ports_are_sorted_and_deduplicated() -> None:
    ip = egress_ip(reserved_ports=[5000, 3128, 5000])
    ip.full_clean()
    assert ip.reserved_ports == [3128, 5000]


def test_egress_addresses_are_unique() -> None:
    egress_ip(address="192.0.2.50").save()
    with pytest.raises(ValidationError) as caught:
        egress_ip(address="192.0.2.50").full_clean()
    assert "address" in caught.value.message_dict


def test_saving_a_stale_machine_keeps_its_counters() -> None:
    from tests.planner.factories import make_machine

    machine = make_machine("stale.example.net")
    Machine.objects.filter(pk=machine.pk).update(bundle_serial=7, applied_serial=6)
    machine.weight = 3
    machine.save()
    fresh = Machine.objects.get(pk=machine.pk)
    assert (fresh.weight, fresh.bundle_serial, fresh.applied_serial) == (3, 7, 6)


def test_two_pools_whose_keys_would_read_the_same_are_refused() -> None:
    from planner import constants
    from tests.planner.factories import make_datacenter, make_pool

    dc = make_datacenter(code="ams1", country="NL")
    make_pool(datacenter=dc, country="NL", region="NL-NH")
    with pytest.raises(ValidationError) as caught:
        make_pool(datacenter=dc, country="NL", city="NL-NH")
    assert caught.value.message_dict["city"] == [
        constants.ERR_POOL_KEY % {"key": "ams1/warp/NL/NL-NH"}
    ]


def test_a_loopback_egress_address_is_refused_unless_the_demo_allows_it(settings: Any) -> None:
    assert settings.DEMO_LOOPBACK_EGRESS is False  # the default: production refuses it
    with pytest.raises(ValidationError) as caught:
        egress_ip(address="127.51.100.240").full_clean()
    assert "'127.51.100.240'" in " ".join(caught.value.message_dict["address"])
    settings.DEMO_LOOPBACK_EGRESS = True
    egress_ip(address="127.51.100.240").full_clean()
    with pytest.raises(ValidationError):  # IPv6 loopback stays refused: no demo uses it
        egress_ip(address="::1").full_clean()
