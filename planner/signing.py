"""Ed25519 keys and JWS compact signing of config bundles (docs/design.md).

Private keys are PEM files (mode 0600) in ``settings.SIGNING_KEY_DIR``, one per
``kid``; the ``kid`` is the RFC 7638 thumbprint of the public key, so an agent
can check a JWKS entry against the key it names.

The JWS ``alg`` is ``EdDSA`` as RFC 8037 defines it and as the bundle contract fixes it
for the agents. RFC 9864 deprecates the polymorphic ``EdDSA`` in favour of
``Ed25519``, and joserfc warns; we keep ``EdDSA`` until every agent accepts
both, and silence only that one warning.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from django.conf import settings
from joserfc import jws
from joserfc.errors import SecurityWarning
from joserfc.jwk import OKPKey

import contract

ALG = "EdDSA"
ISSUER = contract.ISSUER
AUDIENCE = contract.AGENT_AUDIENCE

warnings.filterwarnings("ignore", message="EdDSA is deprecated", category=SecurityWarning)


class SigningKeyMissing(RuntimeError):
    """No usable private key: the message says which and where."""


def key_dir() -> Path:
    return Path(settings.SIGNING_KEY_DIR)


def private_key_path(kid: str) -> Path:
    return key_dir() / f"{kid}.pem"


def generate_key_file() -> tuple[str, dict[str, Any]]:
    """Make a key pair, write the private PEM (0600), return ``(kid, public_jwk)``."""
    key = OKPKey.generate_key("Ed25519")
    kid = key.thumbprint()
    directory = key_dir()
    directory.mkdir(parents=True, exist_ok=True)
    os.chmod(directory, 0o700)
    fd = os.open(private_key_path(kid), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.as_pem(private=True))
    public = {**key.as_dict(private=False), "kid": kid, "alg": ALG, "use": "sig"}
    return kid, public


_loaded: dict[str, OKPKey] = {}


def load_private_key(kid: str) -> OKPKey:
    if kid not in _loaded:
        path = private_key_path(kid)
        try:
            _loaded[kid] = OKPKey.import_key(path.read_bytes())
        except FileNotFoundError:
            raise SigningKeyMissing(f"private key for kid {kid} not found at {path}") from None
    return _loaded[kid]


def sign_claims(claims: dict[str, Any], *, kid: str) -> str:
    """A JWS compact token of ``claims`` (compact JSON), signed with key ``kid``."""
    payload = json.dumps(claims, separators=(",", ":"), sort_keys=True).encode()
    header = {"alg": ALG, "kid": kid, "typ": "JWT"}
    return jws.serialize_compact(header, payload, load_private_key(kid), algorithms=[ALG])


def jwks(public_keys: list[dict[str, Any]]) -> dict[str, Any]:
    """An RFC 7517 key set of the given public JWKs."""
    return {"keys": public_keys}
