"""The shared prefixes every bundle lists: the fewest prefixes covering exactly the
datacenter's egress addresses, computed from integers for speed."""

from __future__ import annotations

import ipaddress

import pytest
from django.db import transaction
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planner.models import EgressIP
from planner.selectors import collapsed_prefixes, shared_prefixes
from tests.planner.factories import make_pool

# Small ranges so that runs, gaps and prefix boundaries all occur often.
V4 = st.integers(0, 600).map(lambda n: str(ipaddress.IPv4Address(0xC0000200 + n)))
V6 = st.integers(0, 600).map(lambda n: str(ipaddress.IPv6Address((0x20010DB8 << 96) + n)))


@given(st.lists(st.one_of(V4, V6), max_size=300))
def test_it_gives_what_ipaddress_collapse_gives(addresses: list[str]) -> None:
    v4 = [ipaddress.IPv4Network(a) for a in addresses if ":" not in a]
    v6 = [ipaddress.IPv6Network(a) for a in addresses if ":" in a]
    expected = [
        *(str(p) for p in ipaddress.collapse_addresses(v4)),
        *(str(p) for p in ipaddress.collapse_addresses(v6)),
    ]
    assert collapsed_prefixes(addresses) == expected


def test_it_covers_a_whole_block_with_one_prefix_and_keeps_a_stray_address() -> None:
    block = [f"198.51.100.{n}" for n in range(256)]
    assert collapsed_prefixes([*block, "203.0.113.7", "2001:db8::1"]) == [
        "198.51.100.0/24",
        "203.0.113.7/32",
        "2001:db8::1/128",
    ]


@pytest.mark.django_db
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(st.one_of(V4, V6), max_size=120, unique=True),
    st.lists(st.integers(0, 600), max_size=40, unique=True),
)
def test_the_database_finds_the_same_prefixes_per_datacenter(
    addresses: list[str], other: list[int]
) -> None:
    """On PostgreSQL the IPv4 runs come from a window over the ``inet`` column; another
    datacenter's addresses, interleaved with these, must not join their runs."""
    ours, theirs = make_pool(), make_pool()
    theirs_addresses = [str(ipaddress.IPv4Address(0xC0000200 + 601 + n)) for n in other]
    with transaction.atomic():
        EgressIP.objects.bulk_create(
            [
                *(EgressIP(address=a, pool=ours) for a in addresses),
                *(EgressIP(address=a, pool=theirs) for a in theirs_addresses),
            ]
        )
        found = shared_prefixes(datacenter_ids=[ours.datacenter_id, theirs.datacenter_id])
        transaction.set_rollback(True)
    expected = {
        dc: collapsed_prefixes(found_addresses)
        for dc, found_addresses in (
            (ours.datacenter_id, addresses),
            (theirs.datacenter_id, theirs_addresses),
        )
        if found_addresses
    }
    assert found == expected
