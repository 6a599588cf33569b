"""Property tests: valid slice sets verify, every single mutation is rejected for its reason."""

from __future__ import annotations

import base64
import json

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from agent import bundle
from agent.bundle import BundleRejected, verify
from tests.agent.keys import HOSTNAME, NOW, claims, generate_key, sign, trusted

KEY = generate_key()
KEYS = trusted(KEY)
LAST_SERIAL = 100
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

IPS = ["198.51.100.7", "198.51.100.8", "203.0.113.9", "2001:db8::7"]


@st.composite
def slice_sets(draw: st.DrawFn) -> list[dict]:
    """Non-overlapping slices: per IP, sorted cut points taken in disjoint pairs."""
    slices = []
    for ip in draw(st.lists(st.sampled_from(IPS), min_size=1, max_size=3, unique=True)):
        cuts = draw(st.lists(st.integers(1, 65535), min_size=2, max_size=12, unique=True))
        cuts.sort()
        for lo, hi in zip(cuts[::2], cuts[1::2], strict=False):
            slices.append(
                {
                    "ip": ip,
                    "lo": lo,
                    "hi": hi,
                    "state": draw(st.sampled_from(["active", "draining"])),
                    "pool": draw(st.text(max_size=8)),
                    "purpose": draw(st.sampled_from(["warp", "internal", "untrusted"])),
                    "country": draw(st.sampled_from(["DE", "FR", "US", ""])),
                }
            )
    return draw(st.permutations(slices))


def verify_now(token: str | bytes, last_serial: int = LAST_SERIAL) -> bundle.Bundle:
    return verify(token, keys=KEYS, hostname=HOSTNAME, last_serial=last_serial, now=NOW)


def reason_of(token: str | bytes, last_serial: int = LAST_SERIAL) -> str:
    try:
        verify_now(token, last_serial)
    except BundleRejected as error:
        return error.reason
    return "accepted"


@SETTINGS
@given(slice_sets(), st.integers(LAST_SERIAL + 1, 2**53))
def test_valid_slice_sets_verify(slices: list[dict], serial: int) -> None:
    verified = verify_now(sign(claims(slices=slices, serial=serial), KEY))
    assert verified.serial == serial
    assert [(s.lo, s.hi, s.state, s.pool) for s in verified.slices] == [
        (s["lo"], s["hi"], s["state"], s["pool"]) for s in slices
    ]


@SETTINGS
@given(slice_sets(), st.data())
def test_flipping_any_payload_byte_breaks_the_signature(
    slices: list[dict], data: st.DataObject
) -> None:
    header, payload, signature = sign(claims(slices=slices, serial=101), KEY).split(".")
    raw = bytearray(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    index = data.draw(st.integers(0, len(raw) - 1))
    raw[index] ^= data.draw(st.integers(1, 255))
    mutated = base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()
    assert reason_of(f"{header}.{mutated}.{signature}") == bundle.BAD_SIGNATURE


@SETTINGS
@given(
    slice_sets(),
    st.sampled_from(
        [
            ("sub", "edge-fra1-99", bundle.WRONG_HOST),
            ("aud", "portslice-planner", bundle.BAD_AUDIENCE),
            ("iss", "portslice-agent", bundle.BAD_ISSUER),
            ("exp", NOW - 1, bundle.EXPIRED),
            ("iat", NOW + 3600, bundle.NOT_YET_VALID),
        ]
    ),
)
def test_changing_one_claim_is_rejected_for_that_claim(slices: list[dict], change: tuple) -> None:
    name, value, reason = change
    assert reason_of(sign(claims(slices=slices, serial=101, **{name: value}), KEY)) == reason


@SETTINGS
@given(slice_sets(), st.integers(-(2**31), LAST_SERIAL))
def test_a_serial_not_above_the_last_is_stale(slices: list[dict], serial: int) -> None:
    assert reason_of(sign(claims(slices=slices, serial=serial), KEY)) == bundle.STALE_SERIAL


@SETTINGS
@given(slice_sets(), st.data())
def test_an_inverted_slice_is_a_schema_fault(slices: list[dict], data: st.DataObject) -> None:
    index = data.draw(st.integers(0, len(slices) - 1))
    assume(slices[index]["lo"] < slices[index]["hi"])
    slices[index] = {**slices[index], "lo": slices[index]["hi"], "hi": slices[index]["lo"]}
    assert reason_of(sign(claims(slices=slices, serial=101), KEY)) == bundle.BAD_SCHEMA


@SETTINGS
@given(slice_sets(), st.data())
def test_an_overlapping_pair_is_rejected(slices: list[dict], data: st.DataObject) -> None:
    victim = data.draw(st.sampled_from(slices))
    port = data.draw(st.integers(victim["lo"], victim["hi"]))
    lo = data.draw(st.integers(1, port))
    hi = data.draw(st.integers(port, 65535))
    intruder = {**victim, "lo": lo, "hi": hi}
    at = data.draw(st.integers(0, len(slices)))
    mutated = [*slices[:at], intruder, *slices[at:]]
    assert reason_of(sign(claims(slices=mutated, serial=101), KEY)) == bundle.OVERLAP


garbage = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300),
    st.lists(st.text(alphabet="ABCdef0123-_=.", max_size=60), min_size=1, max_size=5).map(".".join),
    st.lists(st.binary(max_size=40), min_size=3, max_size=3).map(
        lambda parts: b".".join(base64.urlsafe_b64encode(p).rstrip(b"=") for p in parts)
    ),
    st.tuples(
        st.dictionaries(
            st.sampled_from(["alg", "kid", "typ", "crit", "b64"]),
            st.none() | st.booleans() | st.text(max_size=5) | st.integers(),
        ),
        st.recursive(
            st.none() | st.integers() | st.text(max_size=5),
            lambda c: st.lists(c) | st.dictionaries(st.text(max_size=4), c),
            max_leaves=8,
        ),
    ).map(
        lambda hp: (
            base64.urlsafe_b64encode(json.dumps(hp[0]).encode()).rstrip(b"=")
            + b"."
            + base64.urlsafe_b64encode(json.dumps(hp[1]).encode()).rstrip(b"=")
            + b".AAAA"
        )
    ),
)


@settings(max_examples=400, deadline=None)
@given(garbage)
def test_garbage_only_ever_raises_bundle_rejected(token: str | bytes) -> None:
    assert reason_of(token) in bundle.REASONS
