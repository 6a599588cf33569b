"""Egress: connections from the applied bundle's active slices, chosen by pool/purpose/country."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import bundle
from agent.egress import Egress, NoSliceAvailable
from agent.state import StateStore
from tests.agent.keys import HOSTNAME, NOW, claims, generate_key, sign, slice_claim, trusted
from tests.agent.netns import EGRESS_V4, EGRESS_V6, ORIGIN_PORT, ORIGINS_V4, Testbed, run_worker

KEY = generate_key()
SLICES = [
    slice_claim(ip=EGRESS_V4, lo=40000, hi=40000),
    slice_claim(ip=EGRESS_V4, lo=40001, hi=40001),
    slice_claim(ip=EGRESS_V4, lo=40002, hi=40002, state="draining"),
    slice_claim(ip=EGRESS_V4, lo=40010, hi=40010, pool="corp-fr", purpose="internal", country="FR"),
    slice_claim(ip=EGRESS_V6, lo=40000, hi=40000),
]


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    StateStore(tmp_path).save(sign(claims(slices=SLICES, serial=12), KEY), 12)
    return tmp_path


def test_it_uses_only_active_matching_slices_and_moves_on_when_one_is_full(
    testbed: Testbed, state_dir: Path
) -> None:
    result = run_worker(
        testbed.host,
        "egress_connect",
        state_dir=str(state_dir),
        dst=ORIGINS_V4[0],
        port=53,
        proto="udp",
        count=5,
        pool="warp-de",
    )
    assert sorted(result["sources"]) == [[EGRESS_V4, 40000], [EGRESS_V4, 40001]]
    assert result["error"]["type"] == "PortsExhausted"
    assert "all 2 matching slices" in result["error"]["message"]


def test_it_filters_by_purpose_and_country_for_tcp(testbed: Testbed, state_dir: Path) -> None:
    result = run_worker(
        testbed.host,
        "egress_connect",
        state_dir=str(state_dir),
        dst=ORIGINS_V4[1],
        port=ORIGIN_PORT,
        proto="tcp",
        count=1,
        purpose="internal",
        country="FR",
    )
    assert result == {"sources": [[EGRESS_V4, 40010]], "error": None}


def test_it_names_the_filters_when_nothing_matches(state_dir: Path) -> None:
    egress = Egress.load(state_dir)
    with pytest.raises(NoSliceAvailable, match="country='US'.*serial 12"):
        egress.connect(("203.0.113.1", 80), country="US")
    with pytest.raises(NoSliceAvailable, match="IPv6 slice with pool='corp-fr'"):
        egress.connect(("2001:db8:1::1", 80), pool="corp-fr")


def test_it_says_when_no_bundle_was_applied(tmp_path: Path) -> None:
    with pytest.raises(NoSliceAvailable, match="no bundle"):
        Egress.load(tmp_path).connect(("203.0.113.1", 80))


def test_it_verifies_the_stored_bundle_when_given_keys(state_dir: Path) -> None:
    egress = Egress.load(state_dir, keys=trusted(KEY), hostname=HOSTNAME, now=NOW)
    assert egress.bundle is not None and egress.bundle.serial == 12
    with pytest.raises(bundle.BundleRejected):
        Egress.load(state_dir, keys=trusted(generate_key()), hostname=HOSTNAME, now=NOW)
    assert [s.lo for s in egress.slices(version=4, pool="warp-de")] == [40000, 40001]
