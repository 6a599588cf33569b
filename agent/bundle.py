"""Verify the signed config bundle the planner sends (docs/design.md).

A bundle is a JWS in compact serialization (RFC 7515) signed with EdDSA over
Ed25519 (RFC 8037). Its protected header is ``{"alg": "EdDSA", "kid": KID,
"typ": "JWT"}`` where KID is the RFC 7638 thumbprint of the planner's public
key (``OKPKey.thumbprint()``). Its claims::

    iss "portslice-planner"   aud "portslice-agent"   sub <hostname>
    iat, exp   int seconds    serial int (> last applied)   revision int
    datacenter str
    slices [{"ip", "lo", "hi", "state": "active"|"draining", "pool", "purpose", "country"}]
    shared ["198.51.100.0/29", "2001:db8::7/128", ...]   (optional)

``shared`` lists every egress address of the datacenter that hosts share, as
collapsed prefixes: the guard (:mod:`agent.enforce`) drops egress from any of
them outside this host's slices, including addresses the host holds no slice
on. A bundle without it (from a planner older than the claim) guards the
addresses of its own slices only.

:func:`verify` checks all of it and returns a :class:`Bundle`, or raises
:class:`BundleRejected` with one of the reason constants below. The order of
checks: size (before any parsing), JWS shape, header (``alg``, ``kid``),
signature, then claims — nothing in the payload is interpreted before the
signature holds.

joserfc 1.8 warns that RFC 9864 deprecates the name "EdDSA" in favour of
"Ed25519"; the contract still says "EdDSA", so :data:`_REGISTRY` admits that one
name (and only Ed25519 keys) without the warning. Moving the contract to
"Ed25519" is a one-line change on each side.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from joserfc import jws
from joserfc.errors import JoseError, MissingAlgorithmError, UnsupportedAlgorithmError
from joserfc.jwk import OKPKey

import contract

ISSUER: Final = contract.ISSUER
AUDIENCE: Final = contract.AGENT_AUDIENCE
ALGORITHM: Final = "EdDSA"
MAX_TOKEN_BYTES: Final = 1 << 20
#: How far in the future ``iat`` may be before the bundle counts as not yet valid.
CLOCK_SKEW: Final = 60
SLICE_STATES: Final = frozenset({"active", "draining"})
#: At most this many prefixes in ``shared`` (the planner collapses addresses into prefixes).
MAX_SHARED_PREFIXES: Final = 4096
_HEADER_KEYS: Final = frozenset({"alg", "kid", "typ"})

# Rejection reasons (BundleRejected.reason); the agent reports them verbatim.
BAD_SIGNATURE: Final = "bad_signature"
UNKNOWN_KID: Final = "unknown_kid"
BAD_ALG: Final = "bad_alg"
BAD_ISSUER: Final = "bad_issuer"
BAD_AUDIENCE: Final = "bad_audience"
WRONG_HOST: Final = "wrong_host"
EXPIRED: Final = "expired"
NOT_YET_VALID: Final = "not_yet_valid"
STALE_SERIAL: Final = "stale_serial"
BAD_SCHEMA: Final = "bad_schema"
OVERLAP: Final = "overlap"
OVERSIZE: Final = "oversize"
MALFORMED: Final = "malformed"
REASONS: Final = frozenset(
    {
        BAD_SIGNATURE,
        UNKNOWN_KID,
        BAD_ALG,
        BAD_ISSUER,
        BAD_AUDIENCE,
        WRONG_HOST,
        EXPIRED,
        NOT_YET_VALID,
        STALE_SERIAL,
        BAD_SCHEMA,
        OVERLAP,
        OVERSIZE,
        MALFORMED,
    }
)


class BundleRejected(Exception):
    """The bundle failed a check; ``reason`` is one of :data:`REASONS`."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class KeyFileError(Exception):
    """A trusted-keys file or directory that cannot be used."""


@dataclass(frozen=True, slots=True)
class BundleSlice:
    """One port slice of this host: ``lo``..``hi`` inclusive on ``ip``."""

    ip: str
    lo: int
    hi: int
    state: str
    pool: str
    purpose: str
    country: str

    @property
    def size(self) -> int:
        return self.hi - self.lo + 1

    @property
    def active(self) -> bool:
        return self.state == "active"

    @property
    def version(self) -> int:
        """4 or 6, the IP version of :attr:`ip`."""
        return ipaddress.ip_address(self.ip).version


@dataclass(frozen=True, slots=True)
class Bundle:
    """A verified bundle; ``hostname``, ``issued_at``, ``expires_at`` are sub, iat, exp."""

    hostname: str
    datacenter: str
    serial: int
    revision: int
    issued_at: int
    expires_at: int
    slices: tuple[BundleSlice, ...]
    kid: str
    token: str
    #: The datacenter's shared egress prefixes (normalized, e.g. ``198.51.100.0/29``).
    shared: tuple[str, ...] = ()


class _EdDSARegistry(jws.JWSRegistry):
    """Admits exactly ``EdDSA`` with Ed25519 keys, and tokens up to 1 MiB."""

    max_payload_length = MAX_TOKEN_BYTES
    max_header_length = 1024

    def get_alg(self, name: str) -> jws.JWSAlgModel:
        if name != ALGORITHM:
            raise UnsupportedAlgorithmError(f"Algorithm of '{name}' is not allowed")
        return self.algorithms[name]


_REGISTRY: Final = _EdDSARegistry(algorithms=[ALGORITHM])


def _reject(reason: str, detail: str) -> BundleRejected:
    return BundleRejected(reason, detail)


def _token_bytes(token: object, limit: int = MAX_TOKEN_BYTES) -> bytes:
    if isinstance(token, str):
        if len(token) > limit:
            raise _reject(OVERSIZE, f"token is {len(token)} characters, limit {limit}")
        try:
            return token.encode("ascii")
        except UnicodeEncodeError:
            raise _reject(MALFORMED, "token has non-ASCII characters") from None
    if isinstance(token, bytes):
        if len(token) > limit:
            raise _reject(OVERSIZE, f"token is {len(token)} bytes, limit {limit}")
        return token
    raise _reject(MALFORMED, f"token is a {type(token).__name__}, not str or bytes")


def _extract(raw: bytes, registry: jws.JWSRegistry = _REGISTRY) -> jws.CompactSignature:
    try:
        obj = jws.extract_compact(raw, registry=registry)
    except MissingAlgorithmError:
        raise _reject(BAD_ALG, "alg is missing from the header") from None
    except (JoseError, ValueError, TypeError, RecursionError) as error:
        raise _reject(MALFORMED, f"not a JWS compact token ({error})") from None
    if not isinstance(obj.headers(), dict):
        raise _reject(MALFORMED, "the protected header is not a JSON object")
    return obj


def _check_header(header: Mapping[str, Any], keys: Mapping[str, OKPKey]) -> OKPKey:
    extra = sorted(set(header) - _HEADER_KEYS)
    if extra:
        raise _reject(MALFORMED, f"unexpected header parameter {extra[0]!r}")
    alg = header.get("alg")
    if alg != ALGORITHM:
        raise _reject(BAD_ALG, f"alg={alg!r}, only {ALGORITHM!r} is accepted")
    if header.get("typ", "JWT") != "JWT":
        raise _reject(MALFORMED, f"typ={header['typ']!r}, expected 'JWT'")
    kid = header.get("kid")
    if not isinstance(kid, str) or kid not in keys:
        raise _reject(UNKNOWN_KID, f"kid={kid!r} is not a trusted key")
    return keys[kid]


def _check_signature(
    obj: jws.CompactSignature, key: OKPKey, registry: jws.JWSRegistry = _REGISTRY
) -> None:
    try:
        valid = jws.validate_compact(obj, key, registry=registry)
    except JoseError as error:
        raise _reject(BAD_SIGNATURE, f"signature check failed ({error})") from None
    if not valid:
        raise _reject(BAD_SIGNATURE, f"signature does not match key {obj.headers()['kid']!r}")


def _claims(payload: bytes | None) -> dict[str, Any]:
    try:
        claims = json.loads(payload or b"")
    except (ValueError, RecursionError):
        raise _reject(BAD_SCHEMA, "payload is not JSON") from None
    if not isinstance(claims, dict):
        raise _reject(BAD_SCHEMA, f"payload is a JSON {type(claims).__name__}, not an object")
    return claims


def _field(claims: Mapping[str, Any], name: str, kind: type, where: str = "") -> Any:
    """``claims[name]`` if present and of ``kind`` (a bool is not an int), else bad_schema."""
    value = claims.get(name)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    if name not in claims:
        raise _reject(BAD_SCHEMA, f"{where}{name} is missing")
    raise _reject(BAD_SCHEMA, f"{where}{name}={value!r} is not a {kind.__name__}")


def canonical_ip(text: str) -> str:
    """One spelling per address: compressed IPv6, and IPv4 for an IPv4-mapped
    IPv6 address (``::ffff:192.0.2.1`` is 192.0.2.1 to the kernel), so the
    overlap check and the guard see one address, not two."""
    address = ipaddress.ip_address(text)
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    return str(mapped or address)


def _slice(raw: object, index: int) -> BundleSlice:
    where = f"slices[{index}]."
    if not isinstance(raw, dict):
        raise _reject(BAD_SCHEMA, f"slices[{index}]={raw!r} is not an object")
    ip_text = _field(raw, "ip", str, where)
    try:
        ip = canonical_ip(ip_text)
    except ValueError:
        raise _reject(BAD_SCHEMA, f"{where}ip={ip_text!r} is not an IP address") from None
    lo = _field(raw, "lo", int, where)
    hi = _field(raw, "hi", int, where)
    for name, port in (("lo", lo), ("hi", hi)):
        if not 1 <= port <= 65535:
            raise _reject(BAD_SCHEMA, f"{where}{name}={port} is outside 1-65535")
    if lo > hi:
        raise _reject(BAD_SCHEMA, f"{where}lo={lo} > hi={hi}")
    state = _field(raw, "state", str, where)
    if state not in SLICE_STATES:
        raise _reject(BAD_SCHEMA, f"{where}state={state!r} is not active or draining")
    return BundleSlice(
        ip=ip,
        lo=lo,
        hi=hi,
        state=state,
        pool=_field(raw, "pool", str, where),
        purpose=_field(raw, "purpose", str, where),
        country=_field(raw, "country", str, where),
    )


def _check_overlap(slices: tuple[BundleSlice, ...]) -> None:
    ordered = sorted(slices, key=lambda s: (s.ip, s.lo))  # ip is already normalized
    for before, after in zip(ordered, ordered[1:], strict=False):
        if before.ip == after.ip and after.lo <= before.hi:
            raise _reject(
                OVERLAP,
                f"{before.ip} {before.lo}-{before.hi} overlaps {after.lo}-{after.hi}",
            )


def _slices(claims: Mapping[str, Any]) -> tuple[BundleSlice, ...]:
    raw = _field(claims, "slices", list)
    slices = tuple(_slice(item, index) for index, item in enumerate(raw))
    _check_overlap(slices)
    return slices


def _prefix(raw: object, index: int) -> str:
    if not isinstance(raw, str):
        raise _reject(BAD_SCHEMA, f"shared[{index}]={raw!r} is not a string")
    try:
        return str(ipaddress.ip_network(raw, strict=True))
    except ValueError:
        raise _reject(BAD_SCHEMA, f"shared[{index}]={raw!r} is not an IP prefix") from None


def _shared(claims: Mapping[str, Any]) -> tuple[str, ...]:
    if "shared" not in claims:
        return ()
    raw = _field(claims, "shared", list)
    if len(raw) > MAX_SHARED_PREFIXES:
        raise _reject(BAD_SCHEMA, f"shared has {len(raw)} prefixes, limit {MAX_SHARED_PREFIXES}")
    return tuple(_prefix(item, index) for index, item in enumerate(raw))


def _bundle(claims: Mapping[str, Any], *, kid: str, token: str) -> Bundle:
    return Bundle(
        hostname=_field(claims, "sub", str),
        datacenter=_field(claims, "datacenter", str),
        serial=_field(claims, "serial", int),
        revision=_field(claims, "revision", int),
        issued_at=_field(claims, "iat", int),
        expires_at=_field(claims, "exp", int),
        slices=_slices(claims),
        kid=kid,
        token=token,
        shared=_shared(claims),
    )


def _check_audience(claims: Mapping[str, Any]) -> None:
    # RFC 7519 §4.1.3: aud is a string or an array of strings.
    aud = claims.get("aud")
    if "aud" not in claims:
        raise _reject(BAD_SCHEMA, "aud is missing")
    if isinstance(aud, list) and all(isinstance(item, str) for item in aud):
        if AUDIENCE not in aud:
            raise _reject(BAD_AUDIENCE, f"aud={aud!r} does not include {AUDIENCE!r}")
    elif not isinstance(aud, str):
        raise _reject(BAD_SCHEMA, f"aud={aud!r} is not a string")
    elif aud != AUDIENCE:
        raise _reject(BAD_AUDIENCE, f"aud={aud!r}, expected {AUDIENCE!r}")


def _check_identity(claims: Mapping[str, Any], hostname: str) -> None:
    iss = _field(claims, "iss", str)
    if iss != ISSUER:
        raise _reject(BAD_ISSUER, f"iss={iss!r}, expected {ISSUER!r}")
    _check_audience(claims)
    sub = _field(claims, "sub", str)
    if sub != hostname:
        raise _reject(WRONG_HOST, f"sub={sub!r}, this host is {hostname!r}")


def _check_freshness(bundle: Bundle, *, last_serial: int, now: float, check_times: bool) -> None:
    if check_times and bundle.expires_at <= now:
        raise _reject(EXPIRED, f"exp={bundle.expires_at} is not after now={int(now)}")
    if check_times and bundle.issued_at > now + CLOCK_SKEW:
        raise _reject(
            NOT_YET_VALID, f"iat={bundle.issued_at} is more than {CLOCK_SKEW}s after now={int(now)}"
        )
    if bundle.serial <= last_serial:
        raise _reject(STALE_SERIAL, f"serial={bundle.serial} is not above {last_serial}")


def verify(
    token: str | bytes,
    *,
    keys: Mapping[str, OKPKey],
    hostname: str,
    last_serial: int,
    now: float,
    check_times: bool = True,
) -> Bundle:
    """Check a bundle end to end and return it, or raise :class:`BundleRejected`.

    ``keys`` maps kid to trusted public key (see :func:`load_keys`);
    ``last_serial`` is the serial last applied (``-1`` or ``0`` before the first);
    ``now`` is Unix time. ``check_times=False`` skips ``exp`` and ``iat``: only for
    reloading this host's own stored bundle, which was checked when it was first
    applied (fail static, see :meth:`agent.state.StateStore.load_verified`).
    """
    raw = _token_bytes(token)
    obj = _extract(raw)
    key = _check_header(obj.headers(), keys)
    _check_signature(obj, key)
    claims = _claims(obj.payload)
    _check_identity(claims, hostname)
    bundle = _bundle(claims, kid=obj.headers()["kid"], token=raw.decode("ascii"))
    _check_freshness(bundle, last_serial=last_serial, now=now, check_times=check_times)
    return bundle


def signed_claims(
    token: str | bytes, *, keys: Mapping[str, OKPKey], max_bytes: int
) -> dict[str, Any]:
    """The claims of any planner-signed JWS up to ``max_bytes`` (e.g. a gateway's steering
    table), after the same size, header and signature checks as :func:`verify`; the caller
    checks the claims. Raises :class:`BundleRejected`."""
    registry = _EdDSARegistry(algorithms=[ALGORITHM])
    registry.max_payload_length = max_bytes
    obj = _extract(_token_bytes(token, max_bytes), registry)
    _check_signature(obj, _check_header(obj.headers(), keys), registry)
    return _claims(obj.payload)


def decode_unverified(token: str) -> Bundle:
    """The bundle in ``token`` with its schema checked but NOT its signature or freshness.

    Only for a token this host already verified and stored itself (the egress
    library reading the agent's state without holding the keys).
    """
    obj = _extract(_token_bytes(token))
    kid = obj.headers().get("kid")
    return _bundle(_claims(obj.payload), kid=kid if isinstance(kid, str) else "", token=token)


def _public_ed25519(key: object, source: str) -> OKPKey:
    if not isinstance(key, OKPKey) or key.curve_name != "Ed25519":
        raise KeyFileError(f"{source}: not an Ed25519 key")
    if key.is_private:
        raise KeyFileError(f"{source}: holds a private key; the agent must only have public keys")
    return key


def _keys_from_jwks(path: Path) -> list[OKPKey]:
    try:
        document = json.loads(path.read_text())
        entries = document["keys"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise KeyFileError(f"{path}: not a JWKS file ({error})") from error
    keys = []
    for index, entry in enumerate(entries):
        source = f"{path} keys[{index}]"
        try:
            key = _public_ed25519(OKPKey.import_key(entry), source)
        except (JoseError, ValueError, TypeError) as error:
            raise KeyFileError(f"{source}: {error}") from error
        declared = entry.get("kid") if isinstance(entry, dict) else None
        if declared is not None and declared != key.thumbprint():
            raise KeyFileError(f"{source}: kid {declared!r} is not the key's RFC 7638 thumbprint")
        keys.append(key)
    return keys


def _keys_from_pem_dir(path: Path) -> list[OKPKey]:
    keys = []
    for pem in sorted(path.glob("*.pem")):
        try:
            key = OKPKey.import_key(pem.read_bytes())
        except (OSError, JoseError, ValueError, TypeError) as error:
            raise KeyFileError(f"{pem}: {error}") from error
        keys.append(_public_ed25519(key, str(pem)))
    return keys


def load_keys(path: str | os.PathLike[str]) -> dict[str, OKPKey]:
    """Trusted planner keys by kid (their RFC 7638 thumbprint).

    ``path`` is a JWKS JSON file (``{"keys": [...]}``) or a directory of ``*.pem``
    public keys. Only Ed25519 public keys are accepted; a private key, another
    key type, or a JWK whose ``kid`` is not its thumbprint raises
    :class:`KeyFileError`, as does finding no key at all.
    """
    path = Path(path)
    keys = _keys_from_pem_dir(path) if path.is_dir() else _keys_from_jwks(path)
    if not keys:
        raise KeyFileError(f"{path}: no keys")
    return {key.thumbprint(): key for key in keys}
