"""Test-only planner keys and a signer that builds bundles the way the planner must."""

from __future__ import annotations

import json
from typing import Any

from joserfc import jws
from joserfc.jwk import OKPKey

from agent import bundle

HOSTNAME = "edge-fra1-07"
NOW = 1_750_000_000


def generate_key() -> OKPKey:
    """A fresh Ed25519 private key (the planner's side)."""
    return OKPKey.generate_key("Ed25519")


def public(key: OKPKey) -> OKPKey:
    return OKPKey.import_key(key.as_dict(private=False))


def trusted(*keys: OKPKey) -> dict[str, OKPKey]:
    """The agent's view: public keys by RFC 7638 thumbprint."""
    return {key.thumbprint(): public(key) for key in keys}


def slice_claim(ip: str = "198.51.100.7", lo: int = 40000, hi: int = 40063, **extra: Any):
    claim = {
        "ip": ip,
        "lo": lo,
        "hi": hi,
        "state": "active",
        "pool": "warp-de",
        "purpose": "warp",
        "country": "DE",
    }
    claim.update(extra)
    return claim


def claims(**overrides: Any) -> dict[str, Any]:
    """Valid claims for :data:`HOSTNAME` at :data:`NOW`; keyword arguments replace claims."""
    base: dict[str, Any] = {
        "iss": bundle.ISSUER,
        "aud": bundle.AUDIENCE,
        "sub": HOSTNAME,
        "iat": NOW - 10,
        "exp": NOW + 3600,
        "serial": 7,
        "revision": 3,
        "datacenter": "fra1",
        "slices": [slice_claim(), slice_claim(lo=50000, hi=50255, state="draining")],
    }
    base.update(overrides)
    return base


def sign(
    payload: dict[str, Any] | bytes,
    key: OKPKey,
    *,
    kid: str | None = None,
    alg: str = "EdDSA",
    header: dict[str, Any] | None = None,
) -> str:
    """A JWS compact token over ``payload`` (claims dict or raw bytes) signed by ``key``."""
    protected = {"alg": alg, "kid": key.thumbprint() if kid is None else kid, "typ": "JWT"}
    protected.update(header or {})
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return jws.serialize_compact(protected, body, key, registry=bundle._REGISTRY)
