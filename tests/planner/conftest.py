"""Named actors for the API tests: alice the admin, bob the operator, vera the
viewer, charlie with no role; plus an agent token and a load-balancer token."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.contrib.auth.models import Group, User
from rest_framework.test import APIClient

from planner import signing
from planner.choices import TokenKind
from planner.models import Datacenter, Machine
from planner.services.keys import signing_key_generate
from planner.services.plans import plan_apply_current
from planner.services.tokens import api_token_create
from tests.planner.factories import make_datacenter, make_ip, make_machine, make_pool


@pytest.fixture
def key_dir(settings: Any, tmp_path: Path) -> Path:
    settings.SIGNING_KEY_DIR = tmp_path / "keys"
    signing._loaded.clear()
    return settings.SIGNING_KEY_DIR


@dataclass
class Site:
    datacenter: Datacenter
    machines: list[Machine]


@pytest.fixture
def site(db: None, key_dir: Path) -> Site:
    """fra1: one pool, two IPs, three machines, a signing key and an applied plan."""
    dc = make_datacenter(code="fra1")
    pool = make_pool(datacenter=dc, slice_size=8192)
    make_ip("192.0.2.1", pool=pool)
    make_ip("2001:db8::1", pool=pool)
    machines = []
    for n in range(3):
        machine = make_machine(
            f"edge{n}.fra1.example.net", datacenter=dc, address=f"10.9.0.{n + 2}"
        )
        machine.pools.add(pool)
        machines.append(machine)
    signing_key_generate()
    plan_apply_current(datacenter=dc, reason="first plan")
    return Site(dc, machines)


def _user(name: str, role: str | None) -> User:
    user = User.objects.create_user(name, password="unused-Pa55")
    if role:
        # get_or_create: a transactional test before this one flushes the tables,
        # the role groups the data migration made included.
        user.groups.add(Group.objects.get_or_create(name=role)[0])
    return user


@pytest.fixture
def clients(db: None, site: Site) -> dict[str, APIClient]:
    """An API client per actor; user clients use real bearer tokens."""
    actors: dict[str, APIClient] = {"anonymous": APIClient()}
    alice = User.objects.create_superuser("alice", password="unused-Pa55")
    for name, user in [
        ("alice", alice),
        ("bob", _user("bob", "operator")),
        ("vera", _user("vera", "viewer")),
        ("charlie", _user("charlie", None)),
    ]:
        actors[name] = _bearer(api_token_create(name=name, kind=TokenKind.USER, user=user)[1])
    agent_key = api_token_create(name="agent", kind=TokenKind.AGENT, machine=site.machines[0])[1]
    actors["agent"] = _bearer(agent_key)
    actors["lb"] = _bearer(api_token_create(name="lb", kind=TokenKind.LOAD_BALANCER)[1])
    return actors


def _bearer(key: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    return client
