"""A slice outside the netns port range is widened or reported, never used outside the slice."""

from __future__ import annotations

import shutil
import socket
import struct

from hypothesis import given
from hypothesis import strategies as st

from agent import egress
from tests.agent.conftest import kernel_has_port_range_option
from tests.agent.netns import EGRESS_V4, ORIGIN_PORT, ORIGINS_V4, Testbed, in_netns, run_worker
from tests.support import need

DEFAULT_RANGE = [32768, 60999]  # a new namespace's ip_local_port_range


def test_a_slice_below_the_netns_range_is_refused_then_works_once_widened(
    testbed: Testbed,
) -> None:
    result = run_worker(
        testbed.host,
        "widen_then_connect",
        source_ip=EGRESS_V4,
        lo=1024,
        hi=1087,
        dst=ORIGINS_V4[0],
        port=ORIGIN_PORT,
    )
    assert result["before"] == {
        "ports": [],
        "error": "RangeNotEnforced",
        "netns_range": DEFAULT_RANGE,
    }
    assert result["widened"] is True
    assert result["after"]["netns_range"] == [1024, 60999]
    assert result["after"]["error"] is None
    assert 1024 <= result["after"]["ports"][0] <= 1087


def test_a_slice_half_inside_the_netns_range_uses_only_the_overlap(testbed: Testbed) -> None:
    result = run_worker(
        testbed.host,
        "tcp_connect",
        source_ip=EGRESS_V4,
        lo=32700,
        hi=32799,
        dst=ORIGINS_V4[0],
        port=ORIGIN_PORT,
        count=200,
    )
    assert sorted(result["ports"]) == list(range(32768, 32800))
    assert result["error"] == "PortsExhausted"


def test_the_range_is_reported_when_it_cannot_be_widened(testbed: Testbed) -> None:
    need(shutil.which("unshare") is not None, "needs util-linux unshare")
    # /proc/sys read-only, as in a container without CAP_NET_ADMIN over its netns.
    script = (
        "mount --bind /proc/sys /proc/sys && mount -o remount,bind,ro /proc/sys && "
        "exec python -c 'from agent import egress; import sys; "
        "sys.exit(0 if egress.ensure_netns_port_range([(1024, 1087)]) is False else 1)'"
    )
    import subprocess

    from tests.agent.netns import PYTHON, REPO, child_env

    done = subprocess.run(
        in_netns(testbed.host, "unshare", "-m", "--propagation", "private", "sh", "-c",
                 script.replace("python", PYTHON)),
        cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "cannot be widened" in done.stderr


def test_a_range_narrowed_behind_the_cache_is_refused_once_the_cache_expires(
    testbed: Testbed,
) -> None:
    result = run_worker(
        testbed.host,
        "stale_range_check",
        source_ip=EGRESS_V4,
        lo=40000,
        hi=40063,
        dst=ORIGINS_V4[0],
        port=ORIGIN_PORT,
    )
    assert result["error"] == "RangeNotEnforced"
    assert "outside" in result["message"]
    assert all(40000 <= port <= 40063 for port in result["leftover_ports"])


@given(st.integers(1, 65535), st.integers(1, 65535))
def test_it_passes_any_slice_to_the_kernel_as_an_int(a: int, b: int) -> None:
    # connect_tcp hands IP_LOCAL_PORT_RANGE to setsockopt as a C int (CPython's
    # fast argument path), negative when hi >= 32768: the kernel must read back
    # exactly the u32 hi << 16 | lo.
    lo, hi = min(a, b), max(a, b)
    need(kernel_has_port_range_option(), "needs IP_LOCAL_PORT_RANGE (Linux >= 6.3)")
    _, value = egress._plan("127.0.0.1", lo, hi)
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_IP, egress.IP_LOCAL_PORT_RANGE, value)
        raw = sock.getsockopt(socket.SOL_IP, egress.IP_LOCAL_PORT_RANGE, 4)
    assert struct.unpack("=I", raw)[0] == hi << 16 | lo


_THREAD_IN_OTHER_NETNS = """
import ctypes, json, os, sys, threading
from agent import egress
egress.ensure_netns_port_range([(1024, 1087)])
egress._cached_netns_range()  # this thread's namespace now covers the slice, cached
outcome = {}

def in_other_namespace():
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(sys.argv[1], os.O_RDONLY)
    assert libc.setns(fd, 0x40000000) == 0, ctypes.get_errno()  # CLONE_NEWNET
    try:
        egress.connect_tcp(("192.0.2.9", 80), source_ip="198.51.100.7", port_range=(1024, 1087))
    except Exception as error:
        outcome["error"] = type(error).__name__

thread = threading.Thread(target=in_other_namespace)
thread.start()
thread.join()
print(json.dumps(outcome))
"""


def test_a_thread_in_another_namespace_is_checked_against_its_own_range(
    testbed: Testbed,
) -> None:
    import subprocess

    from tests.agent.netns import PYTHON, REPO, child_env, unique_name

    other = unique_name("n")
    testbed.add_namespace(other)  # a fresh namespace: 32768-60999, not the slice
    done = subprocess.run(
        in_netns(testbed.host, PYTHON, "-c", _THREAD_IN_OTHER_NETNS, f"/run/netns/{other}"),
        cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    # Not the other thread's cached range: refused before any connect is tried.
    assert done.stdout.strip().splitlines()[-1] == '{"error": "RangeNotEnforced"}'
