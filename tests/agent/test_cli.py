"""``python -m agent status | verify | connect``: usable without a broker."""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from joserfc.jwk import OKPKey

from agent.state import StateStore
from tests.agent import keys, netlab
from tests.agent.netlab import PEER_PORT, PEER_V4, SHARED_V4
from tests.support import need_root


@dataclass
class Setup:
    tmp: Path
    key: OKPKey
    config: Path

    def token(self, serial: int = 7, **overrides: object) -> str:
        now = int(time.time())
        claims = keys.claims(
            iat=now,
            exp=now + 3600,
            serial=serial,
            slices=[keys.slice_claim(SHARED_V4, 40000, 40063)],
            **overrides,
        )
        return keys.sign(claims, self.key)

    def agent(
        self, *args: str, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [netlab.PYTHON, "-m", "agent", *args],
            capture_output=True,
            text=True,
            cwd=netlab.ROOT,
            env={**os.environ, "PORTSLICE_AGENT_CONFIG": str(self.config), **(env or {})},
            timeout=60,
            check=False,
        )


@pytest.fixture
def setup(tmp_path: Path) -> Setup:
    key = keys.generate_key()
    netlab.write_jwks(tmp_path / "keys.json", keys.public(key))
    config = netlab.write_agent_config(
        tmp_path / "agent.toml",
        hostname=keys.HOSTNAME,
        keys_path=tmp_path / "keys.json",
        state_dir=tmp_path / "state",
    )
    return Setup(tmp_path, key, config)


def test_verify_prints_the_claims_of_a_good_token(setup: Setup) -> None:
    path = setup.tmp / "bundle.jws"
    path.write_text(setup.token(serial=12) + "\n")
    result = setup.agent("verify", str(path), "--json")
    assert result.returncode == 0, result.stderr
    bundle = json.loads(result.stdout)["bundle"]
    assert bundle["serial"] == 12 and bundle["hostname"] == keys.HOSTNAME
    assert bundle["slices"][0]["lo"] == 40000


def test_verify_prints_the_reason_and_exits_1(setup: Setup) -> None:
    path = setup.tmp / "bundle.jws"
    path.write_text(setup.token(sub="someone-else"))
    result = setup.agent("verify", str(path))
    assert result.returncode == 1
    assert result.stdout.startswith("rejected: wrong_host: sub='someone-else'")

    path.write_text(keys.sign(keys.claims(), keys.generate_key()))
    result = setup.agent("verify", str(path), "--json")
    assert result.returncode == 1
    assert json.loads(result.stdout)["reason"] == "unknown_kid"


def test_status_shows_the_stored_bundle_without_a_broker(setup: Setup) -> None:
    StateStore(setup.tmp / "state").save(setup.token(serial=9), 9)
    result = setup.agent("status", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["stored"]["verified"] is True
    assert report["stored"]["bundle"]["serial"] == 9
    assert report["enforcement"] is None  # no agent has enforced it yet

    human = setup.agent("status")
    assert "serial 9 revision 3 (verified)" in human.stdout
    assert "198.51.100.7 40000-40063 active" in human.stdout


def test_status_does_not_trust_a_state_file_it_cannot_verify(setup: Setup) -> None:
    StateStore(setup.tmp / "state").save(keys.sign(keys.claims(), keys.generate_key()), 7)
    result = setup.agent("status", "--json")
    assert result.returncode == 1
    stored = json.loads(result.stdout)["stored"]
    assert stored["verified"] is False and "unknown_kid" in stored["problem"]
    assert stored["bundle"]["serial"] == 7  # shown, for the operator, but not trusted


def test_a_bad_setting_exits_2_naming_it(setup: Setup) -> None:
    result = setup.agent("status", env={"PORTSLICE_AGENT_USAGE_INTERVAL": "often"})
    assert result.returncode == 2
    assert "usage_interval='often' is invalid" in result.stderr


@pytest.fixture
def netns(tmp_path: Path) -> Iterator[netlab.Netns]:
    need_root()
    with netlab.netns_pair() as (host, peer):
        netlab.start_peer_server(peer, tmp_path / "peer.log")
        yield host


def test_connect_uses_the_applied_slice(setup: Setup, netns: netlab.Netns) -> None:
    StateStore(setup.tmp / "state").save(setup.token(serial=9), 9)
    env_config = f"PORTSLICE_AGENT_CONFIG={setup.config}"
    result = netns.run(
        "env", env_config, f"PORTSLICE_RUN_DIR={setup.tmp / 'run'}",
        netlab.PYTHON, "-m", "agent", "connect", f"{PEER_V4}:{PEER_PORT}",
        "--proto", "udp", "--country", "DE",
    )  # fmt: skip
    local, arrow, remote, proto = result.stdout.split()
    ip, port = local.rsplit(":", 1)
    assert (ip, arrow, remote, proto) == (SHARED_V4, "->", f"{PEER_V4}:{PEER_PORT}", "udp")
    assert 40000 <= int(port) <= 40063

    refused = netns.run(
        "env", env_config, netlab.PYTHON, "-m", "agent", "connect", f"{PEER_V4}:{PEER_PORT}",
        "--country", "FR", check=False,
    )  # fmt: skip
    assert refused.returncode == 1 and "no active IPv4 slice" in refused.stderr
