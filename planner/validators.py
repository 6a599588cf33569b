"""Field validators: each raises ``ValidationError`` quoting the bad value.

Countries and regions are checked against pycountry's ISO 3166 tables, so a
geofeed we publish never carries a code a geolocation provider would reject.
"""

from __future__ import annotations

import ipaddress

import pycountry
from django.conf import settings
from django.core.exceptions import ValidationError

from contract import gateway_name_problem, hostname_problem
from planner import constants


def validate_country(value: str) -> None:
    if len(value) != 2 or value != value.upper() or not pycountry.countries.get(alpha_2=value):
        raise ValidationError(constants.ERR_COUNTRY, code="country", params={"value": value})


def validate_region(value: str) -> None:
    if not value:
        return
    if value != value.upper() or pycountry.subdivisions.get(code=value) is None:
        raise ValidationError(constants.ERR_REGION, code="region", params={"value": value})


def validate_region_in_country(*, region: str, country: str) -> None:
    """Raise a ``region`` field error when the subdivision is of another country."""
    if region and not region.startswith(f"{country}-"):
        raise ValidationError(
            {
                "region": ValidationError(
                    constants.ERR_REGION_COUNTRY,
                    code="region_country",
                    params={"region": region, "country": country},
                )
            }
        )


def validate_hostname(value: str) -> None:
    """The contract's check (one rule for both sides); one trailing dot, the
    absolute form, is allowed here because ``Machine.save`` strips it."""
    why = hostname_problem(value.removesuffix(".") if isinstance(value, str) else value)
    if why:
        raise ValidationError(
            constants.ERR_HOSTNAME, code="hostname", params={"value": value, "why": why}
        )


def validate_gateway_name(value: str) -> None:
    """The name a gateway acks with, as the contract checks it."""
    why = gateway_name_problem(value)
    if why:
        raise ValidationError(
            constants.ERR_GATEWAY_NAME, code="gateway_name", params={"value": value, "why": why}
        )


def _demo_loopback(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """An IPv4 loopback address while ``DEMO_LOOPBACK_EGRESS`` is on (the quick start
    without root sends from 127.0.0.0/8); never otherwise."""
    return settings.DEMO_LOOPBACK_EGRESS and address.version == 4 and address.is_loopback


def validate_host_address(value: str) -> None:
    """Accept a single unicast IPv4 or IPv6 address, never a prefix or a special one."""
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        why = "a prefix, not one address" if "/" in value else "not an IP address"
        raise ValidationError(
            constants.ERR_HOST_ADDRESS, code="address", params={"value": value, "why": why}
        ) from None
    for flag in ("is_unspecified", "is_multicast", "is_loopback", "is_link_local"):
        if flag == "is_loopback" and _demo_loopback(address):
            continue
        if getattr(address, flag):
            raise ValidationError(
                constants.ERR_HOST_ADDRESS,
                code="address",
                params={"value": value, "why": flag.removeprefix("is_").replace("_", "-")},
            )
    # ::ffff:192.0.2.1 is 192.0.2.1 to the kernel: storing both spellings would
    # let two slices overlap on one address unnoticed (unique and exclusion
    # constraints compare the text). One spelling only: the IPv4 one.
    mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
    if mapped is not None:
        raise ValidationError(
            constants.ERR_HOST_ADDRESS,
            code="address",
            params={"value": value, "why": f"IPv4-mapped; write it as {mapped}"},
        )


def validate_usable_port(value: int) -> None:
    if not constants.USABLE_LO <= value <= constants.USABLE_HI:
        raise ValidationError(
            constants.ERR_USABLE_BOUNDS,
            code="usable_port",
            params={"lo": constants.USABLE_LO, "hi": constants.USABLE_HI, "value": value},
        )
