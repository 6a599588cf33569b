from __future__ import annotations

import socket
import struct
from collections.abc import Iterator

import pytest

from agent.egress import IP_LOCAL_PORT_RANGE
from tests.agent.netns import Testbed, have_tools
from tests.support import need, need_root


def kernel_has_port_range_option() -> bool:
    with socket.socket() as probe:
        try:
            probe.setsockopt(socket.SOL_IP, IP_LOCAL_PORT_RANGE, struct.pack("=I", 0))
        except OSError:
            return False
    return True


@pytest.fixture
def testbed() -> Iterator[Testbed]:
    """A host and an origin namespace joined by veth, with a TCP listener on the origin."""
    need_root()
    need(have_tools(), "needs iproute2 (ip netns)")
    need(kernel_has_port_range_option(), "needs IP_LOCAL_PORT_RANGE (Linux >= 6.3)")
    bed = Testbed()
    try:
        bed.build()
        bed.start_listener()
        yield bed
    finally:
        bed.teardown()
