"""``python -m agent``: run the agent, or inspect it without a broker.

::

    python -m agent [--config FILE] run
    python -m agent [--config FILE] status [--json]
    python -m agent [--config FILE] verify TOKEN_FILE [--json]
    python -m agent [--config FILE] connect HOST:PORT [--proto tcp|udp] [--pool P]
                                           [--purpose P] [--country CC]
    python -m agent gateway --datacenter CODE     (configured by $PORTSLICE_GATEWAY_*)

Exit status: 0 on success, 1 when the answer is "no" (a rejected token, no
usable state, a refused connection), 2 for a configuration error.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from agent import enforce
from agent.addresses import AddressError, local_addresses
from agent.bundle import Bundle, BundleRejected, KeyFileError, decode_unverified, load_keys, verify
from agent.config import AgentConfig, ConfigError, load_config
from agent.egress import Egress, NoSliceAvailable, netns_port_range
from agent.fdpass import format_address, parse_destination
from agent.service import read_status
from agent.state import StateCorrupt, StateStore


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m agent", description="portslice host agent")
    parser.add_argument("--config", help="TOML config file (default: $PORTSLICE_AGENT_CONFIG)")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="apply bundles from the broker, enforce, report")
    run.add_argument("--loglevel", default="INFO")
    status = commands.add_parser("status", help="the stored bundle and its enforcement")
    status.add_argument("--json", action="store_true")
    check = commands.add_parser("verify", help="verify a token file against the trusted keys")
    check.add_argument("file", type=Path)
    check.add_argument("--json", action="store_true")
    connect = commands.add_parser("connect", help="connect from a slice and print the ports")
    connect.add_argument("dst", help="IP:PORT or [IPv6]:PORT")
    connect.add_argument("--proto", choices=("tcp", "udp"), default="tcp")
    for name in ("pool", "purpose", "country"):
        connect.add_argument(f"--{name}")
    gateway = commands.add_parser("gateway", help="steer return traffic per the planner's table")
    gateway.add_argument(
        "--datacenter", help="the datacenter code (else $PORTSLICE_GATEWAY_DATACENTER)"
    )
    gateway.add_argument("--loglevel", default="INFO")
    return parser


def bundle_summary(bundle: Bundle) -> dict[str, Any]:
    return {
        "hostname": bundle.hostname,
        "datacenter": bundle.datacenter,
        "serial": bundle.serial,
        "revision": bundle.revision,
        "issued_at": bundle.issued_at,
        "expires_at": bundle.expires_at,
        "kid": bundle.kid,
        "slices": [
            {
                "ip": s.ip,
                "lo": s.lo,
                "hi": s.hi,
                "state": s.state,
                "pool": s.pool,
                "purpose": s.purpose,
                "country": s.country,
            }
            for s in bundle.slices
        ],
    }


def _stored(config: AgentConfig) -> dict[str, Any]:
    store = StateStore(config.state_dir)
    try:
        keys = load_keys(config.keys_path)
        bundle = store.load_verified(keys=keys, hostname=config.hostname, now=time.time())
    except (StateCorrupt, BundleRejected, KeyFileError) as error:
        return {"verified": False, "problem": str(error), "bundle": _unverified(store)}
    if bundle is None:
        return {"verified": False, "problem": "no bundle stored yet", "bundle": None}
    return {"verified": True, "problem": "", "bundle": bundle_summary(bundle)}


def _unverified(store: StateStore) -> dict[str, Any] | None:
    try:
        state = store.load()
        return None if state is None else bundle_summary(decode_unverified(state.token))
    except (StateCorrupt, BundleRejected):
        return None


def _missing_now(stored: dict[str, Any]) -> list[str] | str:
    """Egress addresses of the stored bundle's slices not on this host now (or why unknown)."""
    if stored["bundle"] is None:
        return []
    try:
        local = local_addresses()
    except AddressError as error:
        return str(error)
    wanted = {s["ip"] for s in stored["bundle"]["slices"]}
    return sorted(wanted - local)


def _live(stored: dict[str, Any]) -> dict[str, Any]:
    """What the kernel of this network namespace holds right now."""
    low, high = netns_port_range()
    unavailable = enforce.nft_unavailable()
    live: dict[str, Any] = {
        "netns_port_range": [low, high],
        "missing_addresses": _missing_now(stored),
    }
    if unavailable:
        live["nftables"] = {"readable": False, "detail": unavailable}
    else:
        live["nftables"] = {
            "readable": True,
            "table_present": enforce.table_present(),
            "counters": {name: list(value) for name, value in enforce.read_counters().items()},
        }
    return live


def status(config: AgentConfig, *, as_json: bool) -> int:
    stored = _stored(config)
    report: dict[str, Any] = {
        "hostname": config.hostname,
        "state_dir": str(config.state_dir),
        "stored": stored,
        "enforcement": read_status(config.state_dir),
        "live": _live(stored),
    }
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        _print_status(report)
    return 0 if report["stored"]["verified"] else 1


def _print_status(report: dict[str, Any]) -> None:
    stored, bundle = report["stored"], report["stored"]["bundle"]
    print(f"host        {report['hostname']}")
    if bundle is None:
        print(f"bundle      none ({stored['problem']})")
    else:
        trust = "verified" if stored["verified"] else f"NOT TRUSTED: {stored['problem']}"
        print(f"bundle      serial {bundle['serial']} revision {bundle['revision']} ({trust})")
        for s in bundle["slices"]:
            print(f"  slice     {s['ip']} {s['lo']}-{s['hi']} {s['state']} {s['pool']}")
    enforcement = report["enforcement"]
    if enforcement is None:
        print("enforced    nothing recorded")
    else:
        print(f"enforced    serial {enforcement['serial']} at {enforcement['at']}")
        for part in ("port_range", "nftables", "addresses"):
            if part in enforcement:
                print(f"  {part:<10}{enforcement[part]['state']}: {enforcement[part]['detail']}")
    live = report["live"]
    print(
        f"live        netns port range {live['netns_port_range'][0]}-{live['netns_port_range'][1]}"
    )
    missing = live["missing_addresses"]
    if missing:
        shown = missing if isinstance(missing, str) else ", ".join(missing)
        print(f"  addresses MISSING on this host: {shown}")
    nft = live["nftables"]
    if nft["readable"]:
        print(f"  nftables  table {'present' if nft['table_present'] else 'ABSENT'}")
        for name, (packets, _bytes) in sorted(nft["counters"].items()):
            print(f"  counter   {name} {packets} packets")
    else:
        print(f"  nftables  not readable: {nft['detail']}")


def verify_file(config: AgentConfig, path: Path, *, as_json: bool) -> int:
    """Verify as the agent would, except the serial: any serial passes (it is printed)."""
    keys = load_keys(config.keys_path)
    token = path.read_text().strip()
    try:
        bundle = verify(token, keys=keys, hostname=config.hostname, last_serial=-1, now=time.time())
    except BundleRejected as rejection:
        result = {"ok": False, "reason": rejection.reason, "detail": rejection.detail}
        print(json.dumps(result) if as_json else f"rejected: {rejection}")
        return 1
    summary = bundle_summary(bundle)
    print(json.dumps({"ok": True, "bundle": summary}, indent=2 if not as_json else None))
    return 0


def connect(config: AgentConfig, args: argparse.Namespace) -> int:
    """Connect from the applied bundle's slices in this process, print local → remote."""
    keys = load_keys(config.keys_path)
    egress = Egress.load(config.state_dir, keys=keys, hostname=config.hostname)
    filters = {name: getattr(args, name) for name in ("pool", "purpose", "country")}
    try:
        dst = parse_destination(args.dst)
        with egress.connect(dst, args.proto, timeout=10.0, **filters) as sock:
            print(f"{format_address(sock.getsockname())} -> {format_address(dst)} {args.proto}")
    except (ValueError, NoSliceAvailable, OSError) as error:
        print(f"connect failed: {error}", file=sys.stderr)
        return 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "gateway":
        return _gateway(args)
    try:
        config = load_config(args.config)
        if args.command == "run":
            logging.basicConfig(
                level=args.loglevel.upper(), format="%(asctime)s %(name)s %(message)s"
            )
            from agent.worker import run  # Celery is only needed to run

            return run(config, loglevel=args.loglevel.upper())
        if args.command == "status":
            return status(config, as_json=args.json)
        if args.command == "verify":
            return verify_file(config, args.file, as_json=args.json)
        return connect(config, args)
    except (ConfigError, KeyFileError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _gateway(args: argparse.Namespace) -> int:
    from agent import gateway

    try:
        config = gateway.load_gateway_config(datacenter=args.datacenter)
        logging.basicConfig(level=args.loglevel.upper(), format="%(asctime)s %(name)s %(message)s")
        return gateway.run(config, loglevel=args.loglevel.upper())
    except (ValueError, KeyFileError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
