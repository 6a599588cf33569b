"""The state store: round trips, corruption, fail-static reload, and crash-safe writes."""

from __future__ import annotations

import json
import os
import random
import signal
import time
from pathlib import Path

import pytest

from agent import bundle
from agent.bundle import BundleRejected
from agent.state import FILENAME, StateCorrupt, StateStore, StoredState
from tests.agent.keys import HOSTNAME, NOW, claims, generate_key, sign, trusted

KEY = generate_key()
KEYS = trusted(KEY)


def test_it_has_nothing_before_the_first_save(tmp_path: Path) -> None:
    assert StateStore(tmp_path / "state").load() is None


def test_it_round_trips_a_bundle_and_a_token(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    applied = bundle.verify(
        sign(claims(serial=9), KEY), keys=KEYS, hostname=HOSTNAME, last_serial=0, now=NOW
    )
    store.save(applied)
    assert store.load() == StoredState(token=applied.token, serial=9)
    store.save("opaque-token", 10)
    assert store.load() == StoredState(token="opaque-token", serial=10)
    assert [p.name for p in tmp_path.iterdir()] == [FILENAME]  # no temp files left


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{not json",
        b"[]",
        b'{"format": 2, "serial": 1, "token": "t", "sha256": ""}',
        b'{"format": 1, "serial": "1", "token": "t", "sha256": ""}',
    ],
)
def test_it_refuses_a_malformed_file(tmp_path: Path, content: bytes) -> None:
    (tmp_path / FILENAME).write_bytes(content)
    with pytest.raises(StateCorrupt):
        StateStore(tmp_path).load()


def test_it_refuses_a_file_edited_behind_its_back(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.save("token-a", 3)
    document = json.loads((tmp_path / FILENAME).read_text())
    document["serial"] = 4
    (tmp_path / FILENAME).write_text(json.dumps(document))
    with pytest.raises(StateCorrupt, match="checksum"):
        store.load()


def test_reload_keeps_an_expired_bundle_fail_static(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.save(sign(claims(serial=5, exp=NOW + 60), KEY), 5)
    later = NOW + 86_400
    reloaded = store.load_verified(keys=KEYS, hostname=HOSTNAME, now=later)
    assert reloaded is not None and reloaded.serial == 5
    # The same token arriving fresh from the broker would be refused.
    with pytest.raises(BundleRejected) as caught:
        bundle.verify(reloaded.token, keys=KEYS, hostname=HOSTNAME, last_serial=4, now=later)
    assert caught.value.reason == bundle.EXPIRED


def test_reload_still_checks_signature_key_and_host(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.save(sign(claims(serial=5), generate_key()), 5)
    with pytest.raises(BundleRejected) as caught:
        store.load_verified(keys=KEYS, hostname=HOSTNAME, now=NOW)
    assert caught.value.reason == bundle.UNKNOWN_KID
    store.save(sign(claims(serial=5, sub="other"), KEY), 5)
    with pytest.raises(BundleRejected) as caught:
        store.load_verified(keys=KEYS, hostname=HOSTNAME, now=NOW)
    assert caught.value.reason == bundle.WRONG_HOST


def test_reload_refuses_a_serial_that_is_not_the_tokens(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    store.save(sign(claims(serial=5), KEY), 6)
    with pytest.raises(StateCorrupt, match="serial"):
        store.load_verified(keys=KEYS, hostname=HOSTNAME, now=NOW)


def writer(directory: Path, size: int) -> None:
    """Save ever bigger serials forever; each token spells its serial and its length."""
    store = StateStore(directory)
    serial = 0
    while True:
        serial += 1
        body = str(serial) * (size // len(str(serial)) + 1)
        store.save(f"{serial}:{len(body)}:{body}", serial)


def check_whole(state: StoredState) -> None:
    serial, length, body = state.token.split(":", 2)
    assert int(serial) == state.serial
    assert int(length) == len(body) and body == str(state.serial) * (len(body) // len(serial))


def test_a_writer_killed_at_any_moment_leaves_the_old_or_the_new_state(tmp_path: Path) -> None:
    store = StateStore(tmp_path)
    rng = random.Random(5)
    last_serial = 0
    for round_ in range(40):
        pid = os.fork()
        if pid == 0:  # the child writes until killed
            try:
                writer(tmp_path, size=rng.choice([10_000, 300_000, 900_000]))
            finally:
                os._exit(0)
        time.sleep(rng.uniform(0, 0.04))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        state = store.load()
        if state is None:  # killed before its first save completed
            assert round_ == 0 or last_serial == 0
            continue
        check_whole(state)
        last_serial = state.serial
    assert last_serial > 0
