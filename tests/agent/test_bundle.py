"""One test per rejection reason of agent.bundle.verify, plus key loading."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from pathlib import Path

import pytest
from joserfc.jwk import OKPKey

from agent import bundle
from agent.bundle import BundleRejected, KeyFileError, load_keys, verify
from tests.agent.keys import HOSTNAME, NOW, claims, generate_key, sign, slice_claim, trusted

KEY = generate_key()
KEYS = trusted(KEY)


def check(token: str | bytes, *, last_serial: int = 6, now: float = NOW) -> bundle.Bundle:
    return verify(token, keys=KEYS, hostname=HOSTNAME, last_serial=last_serial, now=now)


def rejected(token: str | bytes, reason: str, **kwargs: float) -> BundleRejected:
    with pytest.raises(BundleRejected) as caught:
        check(token, **kwargs)  # type: ignore[arg-type]
    assert caught.value.reason == reason, caught.value
    return caught.value


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: dict, payload: dict, signature: bytes = b"") -> str:
    return (
        f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}.{b64(signature)}"
    )


def test_it_accepts_a_good_bundle() -> None:
    good = check(sign(claims(), KEY))
    assert (good.hostname, good.serial, good.revision, good.datacenter) == (HOSTNAME, 7, 3, "fra1")
    assert good.kid == KEY.thumbprint()
    assert [(s.lo, s.hi, s.state) for s in good.slices] == [
        (40000, 40063, "active"),
        (50000, 50255, "draining"),
    ]
    assert good.slices[0].size == 64 and good.slices[0].active


def test_it_rejects_a_bad_signature() -> None:
    header, payload, signature = sign(claims(), KEY).split(".")
    forged = b64(json.dumps(claims(serial=99)).encode())
    error = rejected(f"{header}.{forged}.{signature}", bundle.BAD_SIGNATURE)
    assert KEY.thumbprint() in error.detail


def test_it_rejects_a_key_it_does_not_trust() -> None:
    stranger = generate_key()
    error = rejected(sign(claims(), stranger), bundle.UNKNOWN_KID)
    assert stranger.thumbprint() in error.detail


def test_it_rejects_a_trusted_kid_on_another_keys_signature() -> None:
    rejected(sign(claims(), generate_key(), kid=KEY.thumbprint()), bundle.BAD_SIGNATURE)


@pytest.mark.parametrize("alg", ["none", "HS256", "RS256", "Ed25519", "ES256"])
def test_it_rejects_any_alg_but_eddsa(alg: str) -> None:
    header = {"alg": alg, "kid": KEY.thumbprint(), "typ": "JWT"}
    error = rejected(hand_made(header, claims()), bundle.BAD_ALG)
    assert alg in error.detail


def test_it_rejects_hs256_keyed_with_the_public_key() -> None:
    # The classic confusion attack: an HMAC "signed" with the public key as secret.
    header = {"alg": "HS256", "kid": KEY.thumbprint(), "typ": "JWT"}
    unsigned = hand_made(header, claims()).rsplit(".", 1)[0]
    secret = KEY.as_bytes(private=False)
    mac = hmac.new(secret, unsigned.encode(), hashlib.sha256).digest()
    rejected(f"{unsigned}.{b64(mac)}", bundle.BAD_ALG)


def test_it_rejects_a_missing_alg() -> None:
    rejected(hand_made({"kid": KEY.thumbprint()}, claims()), bundle.BAD_ALG)


def test_it_rejects_another_issuer() -> None:
    error = rejected(sign(claims(iss="someone-else"), KEY), bundle.BAD_ISSUER)
    assert "someone-else" in error.detail


@pytest.mark.parametrize("aud", ["portslice-planner", ["other"], "x"])
def test_it_rejects_another_audience(aud: object) -> None:
    rejected(sign(claims(aud=aud), KEY), bundle.BAD_AUDIENCE)


def test_it_accepts_an_audience_list_naming_the_agent() -> None:
    assert check(sign(claims(aud=["x", bundle.AUDIENCE]), KEY)).serial == 7


def test_it_rejects_a_bundle_for_another_host() -> None:
    error = rejected(sign(claims(sub="edge-fra1-08"), KEY), bundle.WRONG_HOST)
    assert "edge-fra1-08" in error.detail and HOSTNAME in error.detail


def test_it_rejects_an_expired_bundle() -> None:
    rejected(sign(claims(exp=NOW), KEY), bundle.EXPIRED)


def test_it_rejects_a_bundle_issued_in_the_future_beyond_the_skew() -> None:
    rejected(sign(claims(iat=NOW + 61), KEY), bundle.NOT_YET_VALID)
    assert check(sign(claims(iat=NOW + 60), KEY)).issued_at == NOW + 60


@pytest.mark.parametrize("serial", [6, 5, 0])
def test_it_rejects_a_serial_not_above_the_last_applied(serial: int) -> None:
    error = rejected(sign(claims(serial=serial), KEY), bundle.STALE_SERIAL)
    assert f"serial={serial}" in error.detail


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"serial": "8"}, "serial"),
        ({"serial": True}, "serial"),
        ({"revision": 1.5}, "revision"),
        ({"exp": None}, "exp"),
        ({"datacenter": 3}, "datacenter"),
        ({"slices": {}}, "slices"),
        ({"slices": [slice_claim(lo=40010, hi=40000)]}, "lo=40010 > hi=40000"),
        ({"slices": [slice_claim(lo=0)]}, "slices[0].lo=0"),
        ({"slices": [slice_claim(hi=65536)]}, "slices[0].hi=65536"),
        ({"slices": [slice_claim(ip="198.51.100.300")]}, "slices[0].ip"),
        ({"slices": [slice_claim(state="retired")]}, "slices[0].state"),
        ({"slices": [slice_claim(pool=None)]}, "slices[0].pool"),
        ({"slices": ["198.51.100.7"]}, "slices[0]"),
        ({"shared": "198.51.100.0/29"}, "shared="),
        ({"shared": ["198.51.100.0/29", 7]}, "shared[1]=7"),
        ({"shared": ["198.51.100.1/29"]}, "shared[0]='198.51.100.1/29' is not an IP prefix"),
        ({"shared": ["198.51.100.0/33"]}, "shared[0]"),
        ({"shared": ["10.0.0.0/32"] * 4097}, "shared has 4097 prefixes, limit 4096"),
    ],
)
def test_it_rejects_schema_faults_naming_the_field(change: dict, field: str) -> None:
    error = rejected(sign(claims(**change), KEY), bundle.BAD_SCHEMA)
    assert field in error.detail


def test_it_reads_the_shared_prefixes_normalized() -> None:
    good = check(sign(claims(shared=["198.51.100.0/29", "2001:DB8::7/128"]), KEY))
    assert good.shared == ("198.51.100.0/29", "2001:db8::7/128")


def test_a_bundle_without_shared_prefixes_guards_its_slices_only() -> None:
    assert check(sign(claims(), KEY)).shared == ()


def test_it_rejects_a_missing_claim() -> None:
    payload = claims()
    del payload["datacenter"]
    error = rejected(sign(payload, KEY), bundle.BAD_SCHEMA)
    assert error.detail == "datacenter is missing"


def test_it_rejects_a_payload_that_is_not_a_json_object() -> None:
    rejected(sign(b"[1, 2]", KEY), bundle.BAD_SCHEMA)
    rejected(sign(b"not json", KEY), bundle.BAD_SCHEMA)


def test_it_rejects_overlapping_slices_on_one_ip() -> None:
    slices = [slice_claim(lo=40000, hi=40063), slice_claim(lo=40063, hi=40100)]
    error = rejected(sign(claims(slices=slices), KEY), bundle.OVERLAP)
    assert "198.51.100.7" in error.detail


def test_it_allows_the_same_ports_on_different_ips_and_spellings_of_one_ipv6() -> None:
    apart = [slice_claim(ip="198.51.100.7"), slice_claim(ip="198.51.100.8")]
    assert len(check(sign(claims(slices=apart), KEY)).slices) == 2
    same = [slice_claim(ip="2001:db8::7"), slice_claim(ip="2001:DB8:0::7", lo=40063, hi=40070)]
    rejected(sign(claims(slices=same), KEY), bundle.OVERLAP)


def test_it_rejects_overlapping_slices_written_as_ipv4_and_ipv4_mapped_ipv6() -> None:
    both = [
        slice_claim(ip="192.0.2.1", lo=40000, hi=40063),
        slice_claim(ip="::ffff:192.0.2.1", lo=40032, hi=40100),
    ]
    error = rejected(sign(claims(slices=both), KEY), bundle.OVERLAP)
    assert "192.0.2.1 40000-40063 overlaps 40032-40100" in error.detail


def test_it_reads_an_ipv4_mapped_address_as_the_ipv4_address() -> None:
    mapped = [slice_claim(ip="::ffff:192.0.2.1", lo=40000, hi=40063)]
    assert [s.ip for s in check(sign(claims(slices=mapped), KEY)).slices] == ["192.0.2.1"]
    assert bundle.canonical_ip("::FFFF:c000:0201") == "192.0.2.1"
    assert bundle.canonical_ip("2001:DB8:0::7") == "2001:db8::7"


def test_it_rejects_an_oversize_token_before_parsing() -> None:
    rejected("x" * (bundle.MAX_TOKEN_BYTES + 1), bundle.OVERSIZE)
    rejected(b"." * (bundle.MAX_TOKEN_BYTES + 1), bundle.OVERSIZE)


def test_it_accepts_a_big_bundle_under_the_limit() -> None:
    slices = [slice_claim(lo=1024 + 64 * i, hi=1024 + 64 * i + 63) for i in range(1000)]
    token = sign(claims(slices=slices), KEY)
    assert 100_000 < len(token) < bundle.MAX_TOKEN_BYTES
    assert len(check(token).slices) == 1000


@pytest.mark.parametrize("token", ["", "abc", "a.b", "a.b.c.d", "!!.??.**", "é.é.é", 42, None])
def test_it_rejects_what_is_not_a_jws(token: object) -> None:
    rejected(token, bundle.MALFORMED)  # type: ignore[arg-type]


def test_it_rejects_unexpected_header_parameters() -> None:
    error = rejected(sign(claims(), KEY, header={"jwk": KEY.as_dict(private=False)}), "malformed")
    assert "jwk" in error.detail


def test_a_good_bundle_applies_after_a_rejected_one() -> None:
    last_serial = 6
    with pytest.raises(BundleRejected):
        check(sign(claims(serial=8, sub="other-host"), KEY), last_serial=last_serial)
    applied = check(sign(claims(serial=8), KEY), last_serial=last_serial)
    assert applied.serial == 8
    rejected(sign(claims(serial=8), KEY), bundle.STALE_SERIAL, last_serial=applied.serial)


# --- load_keys ---------------------------------------------------------------------------


def public_jwk(key: OKPKey, **extra: str) -> dict:
    return {**key.as_dict(private=False), **extra}


def test_load_keys_reads_a_jwks_file_keyed_by_thumbprint(tmp_path: Path) -> None:
    other = generate_key()
    path = tmp_path / "keys.json"
    path.write_text(
        json.dumps({"keys": [public_jwk(KEY, kid=KEY.thumbprint()), public_jwk(other)]})
    )
    keys = load_keys(path)
    assert set(keys) == {KEY.thumbprint(), other.thumbprint()}
    assert check(sign(claims(), KEY)).serial == 7
    assert verify(sign(claims(), other), keys=keys, hostname=HOSTNAME, last_serial=0, now=NOW)


def test_load_keys_reads_a_directory_of_pem_files(tmp_path: Path) -> None:
    (tmp_path / "planner.pem").write_bytes(KEY.as_pem(private=False))
    (tmp_path / "notes.txt").write_text("ignored")
    assert list(load_keys(tmp_path)) == [KEY.thumbprint()]


@pytest.mark.parametrize(
    "entry",
    [
        public_jwk(KEY, kid="my-key"),  # kid is not the thumbprint
        KEY.as_dict(private=True),  # private key material
        OKPKey.generate_key("Ed448").as_dict(private=False),
    ],
)
def test_load_keys_refuses_unusable_keys(tmp_path: Path, entry: dict) -> None:
    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": [entry]}))
    with pytest.raises(KeyFileError):
        load_keys(path)


def test_load_keys_refuses_an_empty_set(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError):
        load_keys(tmp_path)
