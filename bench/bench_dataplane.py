"""The data plane's costs, on the e2e topology (tests/e2e/topology.py), same run baselines.

Run as root: ``.venv/bin/python -m bench.bench_dataplane`` (``--quick`` for fewer
rounds; ``--skip-e2e`` to leave out part 2, which runs the e2e test). Parts:

1. **Flows per second from a host namespace**: a TCP connect + one echoed line +
   close (and a UDP exchange) through ``Egress.connect`` from the host's slices,
   with the guard table loaded and return traffic steered by the gateway,
   against plain ``socket.create_connection()`` from the host's own link
   address in the same process; rounds alternate, the ratio is the median of
   per-round ratios.
2. **Apply → enforcing**: ``make e2e``'s scenario with extra plans
   (``PORTSLICE_E2E_EXTRA_PLANS``), timing each apply (API call) until the
   touched agents acked it enforced, and until the gateway acked it; p50, p95.
3. **A gateway update with 100,000 slices** (200 IPs × 500 slices over four
   hosts, 200,000 nft map elements with the ICMP map): how long one update
   takes, against 1,000 slices in the same run, while two hosts keep a
   connection exchanging a line every 50 ms through the updates: any reply
   that did not come back to its sender (a misroute, a reset) is counted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.e2e.topology import (
    CHATTY_CLIENT,
    ECHO_PORT,
    ORIGIN_IP,
    DataPlane,
    GatewayDriver,
    data_plane,
    steering,
)

REPO = Path(__file__).resolve().parents[1]
SLICE = ("198.51.100.7", 20000, 29999)

# Runs in the host namespace: enforce a bundle holding SLICE, then time both ways.
FLOWS = """
import json, socket, statistics, sys, time
from agent.bundle import Bundle, BundleSlice
from agent.egress import Egress
from agent.enforce import enforce
ip = sys.argv[1]
lo, hi, rounds, batch = map(int, sys.argv[2:6])
bundle = Bundle("bench", "fra1", 1, 1, 0, 0, (BundleSlice(ip, lo, hi, "active", "p", "w", "DE"),),
                "kid", "token", ("198.51.100.0/24",))
assert enforce(bundle, manage_port_range=True, manage_nftables=True).ok
egress, origin = Egress(bundle), ("203.0.113.1", 7)
def exchange(sock, proto):
    if proto == "tcp":
        sock.sendall(b"x\\n"); assert sock.recv(100)
    else:
        sock.send(b"x"); assert sock.recv(100)
def portslice(proto):
    with egress.connect(origin, proto, timeout=5) as s:
        exchange(s, proto)
def plain(proto):
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    with socket.socket(socket.AF_INET, kind) as s:
        s.settimeout(5); s.connect(origin); exchange(s, proto)
result = {}
for proto in ("tcp", "udp"):
    ratios, ours, theirs = [], [], []
    for r in range(rounds):
        pair = []
        for fn in ((portslice, plain) if r % 2 == 0 else (plain, portslice)):
            start = time.perf_counter()
            for _ in range(batch):
                fn(proto)
            pair.append((fn, batch / (time.perf_counter() - start)))
        rate = dict((fn.__name__, v) for fn, v in pair)
        ours.append(rate["portslice"]); theirs.append(rate["plain"])
        ratios.append(rate["plain"] / rate["portslice"])
    result[proto] = {"portslice_per_s": statistics.median(ours),
                     "plain_per_s": statistics.median(theirs),
                     "cost_ratio": statistics.median(ratios)}
print(json.dumps(result))
"""


def flows(plane: DataPlane, gateway: GatewayDriver, *, rounds: int, batch: int) -> dict[str, Any]:
    gateway.apply(steering(plane, {0: [SLICE]}, 1))
    host = plane.hosts[0].ns
    with tempfile.TemporaryDirectory() as run_dir:
        os.chmod(run_dir, 0o1777)
        done = host.run(
            "env", f"PORTSLICE_RUN_DIR={run_dir}", f"PYTHONPATH={REPO}", sys.executable, "-c",
            FLOWS, *map(str, SLICE), str(rounds), str(batch), timeout=900,
        )  # fmt: skip
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def bulk(slices: int, hosts: int, shift: int) -> dict[int, list[tuple[str, int, int]]]:
    """``slices`` slices of 128 ports on 198.51.100.10 and up, dealt to hosts (shifted)."""
    owners: dict[int, list[tuple[str, int, int]]] = {n: [] for n in range(hosts)}
    per_ip = 500
    for k in range(slices):
        ip = f"198.51.100.{10 + k // per_ip}"
        lo = 1024 + (k % per_ip) * 128
        owners[(k + shift) % hosts].append((ip, lo, lo + 127))
    return owners


def update_under_load(
    plane: DataPlane, gateway: GatewayDriver, slices: int, base: int
) -> dict[str, Any]:
    """Three updates of a ``slices``-slice table while hosts 1 and 2 chat: time, failures."""
    # Host 1 keeps SLICE (its guard from part 1 allows only that), host 2 the next ports.
    fixed = {0: [SLICE], 1: [("198.51.100.7", 30000, 39999)]}

    def table(shift: int, revision: int) -> dict[str, Any]:
        owners = bulk(slices, len(plane.hosts), shift)
        for n, extra in fixed.items():
            owners[n] = extra + owners[n]
        return steering(plane, owners, revision)

    first = table(0, base + 1)
    assert gateway.apply(first)["result"] == "applied"
    chatty = [
        subprocess.Popen(
            plane.hosts[n].ns.command(
                sys.executable,
                "-c",
                CHATTY_CLIENT,
                "198.51.100.7",
                str(port),
                ORIGIN_IP,
                str(ECHO_PORT),
                "0.05",
                "600",
            ),
            stdout=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
        )  # fmt: skip
        for n, port in ((0, 20007), (1, 30007))
    ]
    for process in chatty:
        assert process.stdout is not None and process.stdout.readline().strip() == "connected"
    seconds = []
    for shift in (1, 2, 3):
        result = gateway.apply(table(shift, base + 1 + shift))
        assert result["result"] == "applied", result
        seconds.append(result["seconds"])
    time.sleep(1.0)
    for process in chatty:
        process.terminate()
    reports = [json.loads(process.communicate(timeout=30)[0]) for process in chatty]
    return {"slices": slices, "update_seconds": seconds, "chatty": reports}


def apply_to_enforcing(extra_plans: int) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile("r", suffix=".jsonl") as timings:
        env = {**os.environ, "PORTSLICE_E2E_TIMINGS": timings.name,
               "PORTSLICE_E2E_EXTRA_PLANS": str(extra_plans)}  # fmt: skip
        env.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
        subprocess.run(
            [sys.executable, "-m", "pytest", "tests/e2e/test_dataplane.py", "-m", "e2e", "-q"],
            cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        samples = [json.loads(line) for line in Path(timings.name).read_text().splitlines()]
    result: dict[str, Any] = {}
    for what in ("agents", "gateway"):
        values = sorted(s["seconds"] for s in samples if s["what"] == what)
        cut = statistics.quantiles(values, n=20, method="inclusive")
        result[what] = {"n": len(values), "p50": statistics.median(values), "p95": cut[18]}
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip-e2e", action="store_true")
    args = parser.parse_args()
    rounds, batch, plans = (3, 100, 6) if args.quick else (7, 300, 20)
    report: dict[str, Any] = {
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, Linux {platform.release()}, "
        f"Python {platform.python_version()}, load {os.getloadavg()[0]:.1f}",
    }
    with tempfile.TemporaryDirectory() as tmp, data_plane(hosts=4, log_dir=Path(tmp)) as plane:
        gateway = GatewayDriver(plane, Path(tmp) / "gateway")
        report["flows"] = flows(plane, gateway, rounds=rounds, batch=batch)
        small = update_under_load(plane, gateway, 1_000, base=10)
        large = update_under_load(plane, gateway, 100_000, base=20)
    report["gateway_update"] = {
        "1000_slices_s": statistics.median(small["update_seconds"]),
        "100000_slices_s": statistics.median(large["update_seconds"]),
        "ratio": statistics.median(large["update_seconds"])
        / statistics.median(small["update_seconds"]),
        "chatty_during_100000": large["chatty"],
    }
    if not args.skip_e2e:
        report["apply_to_enforcing"] = apply_to_enforcing(plans)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
