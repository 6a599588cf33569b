"""The shared prefixes every bundle lists: the fewest prefixes covering exactly the
datacenter's egress addresses, computed from integers for speed."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from planner.selectors import collapsed_prefixes

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
